/*
 * The status zone (smartflow_zone): shared memory holding per-provider
 * counters and per-deployment breakers that every worker updates with
 * atomics and /health reads.  Slots are matched by name, so counters and
 * open breakers survive a reload.
 */

#include "ngx_http_smartflow_proxy.h"


#define NGX_SMARTFLOW_SHM_PROVIDERS    64
#define NGX_SMARTFLOW_SHM_DEPLOYMENTS  256


typedef struct {
    ngx_smartflow_provider_stats_t    providers[NGX_SMARTFLOW_SHM_PROVIDERS];
    ngx_smartflow_deployment_stats_t  deployments[
                                          NGX_SMARTFLOW_SHM_DEPLOYMENTS];
} ngx_smartflow_shm_t;


static ngx_int_t ngx_smartflow_shm_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static void *ngx_smartflow_shm_slot(ngx_shm_zone_t *shm_zone, u_char *base,
    size_t size, ngx_uint_t n, ngx_str_t *name);
static void ngx_smartflow_shm_routes(ngx_shm_zone_t *shm_zone,
    ngx_smartflow_shm_t *sh, ngx_array_t *routes);


/* smartflow_zone NAME SIZE; */
char *
ngx_http_smartflow_zone_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_smartflow_main_conf_t *smcf = conf;

    ssize_t     size;
    ngx_str_t  *value;

    if (smcf->zone) {
        return "is duplicate";
    }

    value = cf->args->elts;

    size = ngx_parse_size(&value[2]);

    if (size == NGX_ERROR
        || size < (ssize_t) (8 * ngx_pagesize + sizeof(ngx_smartflow_shm_t)))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow_zone \"%V\" is too small", &value[1]);
        return NGX_CONF_ERROR;
    }

    smcf->zone = ngx_shared_memory_add(cf, &value[1], size,
                                       &ngx_http_smartflow_proxy_module);
    if (smcf->zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (smcf->zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow_zone \"%V\" is already declared",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    smcf->zone->init = ngx_smartflow_shm_init_zone;
    smcf->zone->data = smcf;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_smartflow_shm_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_smartflow_main_conf_t *smcf = shm_zone->data;

    ngx_uint_t                        i;
    ngx_slab_pool_t                  *shpool;
    ngx_smartflow_shm_t              *sh;
    ngx_http_smartflow_provider_t   **pr;

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (data || shm_zone->shm.exists) {
        /* a reload: the counters are already there */
        sh = shpool->data;

    } else {
        sh = ngx_slab_calloc(shpool, sizeof(ngx_smartflow_shm_t));
        if (sh == NULL) {
            return NGX_ERROR;
        }

        shpool->data = sh;
    }

    pr = smcf->providers.elts;

    for (i = 0; i < smcf->providers.nelts; i++) {
        pr[i]->stats = ngx_smartflow_shm_slot(shm_zone,
                                              (u_char *) sh->providers,
                                              sizeof(sh->providers[0]),
                                              NGX_SMARTFLOW_SHM_PROVIDERS,
                                              &pr[i]->name);
    }

    ngx_smartflow_shm_routes(shm_zone, sh, &smcf->routes);
    ngx_smartflow_shm_routes(shm_zone, sh, &smcf->wildcards);

    return NGX_OK;
}


static void
ngx_smartflow_shm_routes(ngx_shm_zone_t *shm_zone, ngx_smartflow_shm_t *sh,
    ngx_array_t *routes)
{
    ngx_uint_t                    i;
    ngx_http_smartflow_route_t  **head, *rt;

    head = routes->elts;

    for (i = 0; i < routes->nelts; i++) {
        for (rt = head[i]; rt; rt = rt->next) {
            rt->stats = ngx_smartflow_shm_slot(shm_zone,
                                               (u_char *) sh->deployments,
                                               sizeof(sh->deployments[0]),
                                               NGX_SMARTFLOW_SHM_DEPLOYMENTS,
                                               &rt->name);
        }
    }
}


/* the slot named so, or a free one; every slot starts with its name */
static void *
ngx_smartflow_shm_slot(ngx_shm_zone_t *shm_zone, u_char *base, size_t size,
    ngx_uint_t n, ngx_str_t *name)
{
    u_char      *slot, *free;
    size_t       len;
    ngx_uint_t   k;

    len = ngx_min(name->len, NGX_SMARTFLOW_SLOT_NAME - 1);
    free = NULL;

    for (k = 0; k < n; k++) {
        slot = base + k * size;

        if (slot[0] == '\0') {
            free = free ? free : slot;
            continue;
        }

        if (ngx_strncmp(slot, name->data, len) == 0 && slot[len] == '\0') {
            return slot;
        }
    }

    if (free == NULL) {
        ngx_log_error(NGX_LOG_WARN, shm_zone->shm.log, 0,
                      "smartflow proxy: zone \"%V\" has no slot left for "
                      "\"%V\"", &shm_zone->shm.name, name);
        return NULL;
    }

    ngx_memcpy(free, name->data, len);
    free[len] = '\0';

    return free;
}


void
ngx_smartflow_shm_provider_result(ngx_http_smartflow_provider_t *p,
    ngx_uint_t status, ngx_uint_t failed)
{
    ngx_smartflow_provider_stats_t  *st;

    st = p->stats;

    (void) ngx_atomic_fetch_add(&st->requests, 1);
    st->last_status = status;

    if (failed) {
        (void) ngx_atomic_fetch_add(&st->failures, 1);
        (void) ngx_atomic_fetch_add(&st->consecutive_failures, 1);
        st->last_failure = ngx_time();

    } else {
        st->consecutive_failures = 0;
    }
}
