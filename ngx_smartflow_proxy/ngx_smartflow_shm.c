/*
 * The status zone (smartflow_zone): shared memory holding per-provider
 * counters and per-deployment breakers that every worker updates with
 * atomics and /health reads.  Slots are matched by name, so counters and
 * open breakers survive a reload; the slot of a name that no running
 * configuration has any more goes to a new name (see the rule below).
 */

#include "ngx_http_smartflow_proxy.h"


#define NGX_SMARTFLOW_SHM_PROVIDERS    64
#define NGX_SMARTFLOW_SHM_DEPLOYMENTS  256


/* a process that may write to the slots, and its configuration's number */
typedef struct {
    ngx_pid_t                         pid;
    ngx_uint_t                        generation;
} ngx_smartflow_shm_process_t;


typedef struct {
    ngx_uint_t                        generation;    /* the latest loaded */
    ngx_uint_t                        unlisted;      /* see init_process */
    ngx_smartflow_shm_process_t       processes[NGX_MAX_PROCESSES];

    /* per slot, the latest generation whose configuration names it */
    ngx_uint_t                        provider_gen[
                                          NGX_SMARTFLOW_SHM_PROVIDERS];
    ngx_uint_t                        deployment_gen[
                                          NGX_SMARTFLOW_SHM_DEPLOYMENTS];

    ngx_smartflow_provider_stats_t    providers[NGX_SMARTFLOW_SHM_PROVIDERS];
    ngx_smartflow_deployment_stats_t  deployments[
                                          NGX_SMARTFLOW_SHM_DEPLOYMENTS];
} ngx_smartflow_shm_t;


/* one table of slots, as init_zone walks it */
typedef struct {
    ngx_shm_zone_t                   *zone;
    u_char                           *base;
    ngx_uint_t                       *gen;
    size_t                            size;
    ngx_uint_t                        n;
    ngx_uint_t                        generation;    /* this configuration */
    ngx_uint_t                        oldest;        /* that may still run */
    ngx_uint_t                        take;          /* 0: by name only */
    char                             *what;
} ngx_smartflow_shm_slots_t;


static ngx_int_t ngx_smartflow_shm_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_uint_t ngx_smartflow_shm_oldest(ngx_shm_zone_t *shm_zone,
    ngx_smartflow_shm_t *sh);
static ngx_smartflow_shm_process_t *ngx_smartflow_shm_listed(
    ngx_smartflow_shm_t *sh, ngx_pid_t pid);
static void ngx_smartflow_shm_assign(ngx_http_smartflow_main_conf_t *smcf,
    ngx_smartflow_shm_t *sh, ngx_smartflow_shm_slots_t *sl);
static void ngx_smartflow_shm_routes(ngx_http_smartflow_main_conf_t *smcf,
    ngx_smartflow_shm_slots_t *sl, ngx_array_t *routes);
static ngx_uint_t ngx_smartflow_shm_refused(
    ngx_http_smartflow_main_conf_t *smcf, ngx_http_smartflow_route_t *rt);
static void *ngx_smartflow_shm_slot(ngx_smartflow_shm_slots_t *sl,
    ngx_str_t *name);


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


/*
 * When a slot may go to another name.  Each configuration loaded takes the
 * next generation number here and marks the slots its names use with it.
 * nginx's master loads a new configuration while the workers of the
 * running one, and those of earlier ones still finishing their requests
 * after earlier reloads (long streams), are alive and write to their
 * slots through the pointers their configuration holds.  So every worker
 * (and cache process) lists its pid with its configuration's generation
 * when it starts (ngx_smartflow_shm_init_process()), and the rule is:
 *
 *     a slot is free when it is empty, or when its generation is lower
 *     than that of every listed process still alive (kill(pid, 0)).
 *
 * Such a slot is named by no configuration any live process runs, nor by
 * the one being loaded (its names are looked up by name first, and a slot
 * found so is marked with the new generation before any slot is handed
 * over), so nothing writes to it any more: it is cleared and renamed.  A
 * reload that fails after this point leaves the running configuration's
 * processes listed, so its slots stay.  A child of the master not listed
 * yet (just forked) could run any configuration: then no slot is handed
 * over this time, only empty ones are taken.  Without a master (master_process
 * off) the one process stays listed with its first generation, so slots
 * are kept, never reused.  A slot still named keeps its counters.
 */
static ngx_int_t
ngx_smartflow_shm_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_smartflow_main_conf_t *smcf = shm_zone->data;

    ngx_slab_pool_t            *shpool;
    ngx_smartflow_shm_t        *sh;
    ngx_smartflow_shm_slots_t   sl;

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

    ngx_memzero(&sl, sizeof(ngx_smartflow_shm_slots_t));

    ngx_shmtx_lock(&shpool->mutex);

    sl.zone = shm_zone;
    sl.generation = ++sh->generation;
    sl.oldest = ngx_smartflow_shm_oldest(shm_zone, sh);

    smcf->zone_generation = sl.generation;

    /* names kept first, so that no slot still named is handed over */
    ngx_smartflow_shm_assign(smcf, sh, &sl);

    sl.take = 1;
    ngx_smartflow_shm_assign(smcf, sh, &sl);

    ngx_shmtx_unlock(&shpool->mutex);

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, shm_zone->shm.log, 0,
                   "smartflow zone \"%V\" generation %ui, oldest running %ui",
                   &shm_zone->shm.name, sl.generation, sl.oldest);

    return NGX_OK;
}


/* the oldest generation a live process may run; 0 when it is not known */
static ngx_uint_t
ngx_smartflow_shm_oldest(ngx_shm_zone_t *shm_zone, ngx_smartflow_shm_t *sh)
{
    ngx_int_t                     i;
    ngx_uint_t                    k, oldest;
    ngx_smartflow_shm_process_t  *p;

    oldest = sh->generation;

    for (k = 0; k < NGX_MAX_PROCESSES; k++) {
        p = &sh->processes[k];

        if (p->pid == 0) {
            continue;
        }

        if (!ngx_smartflow_process_alive(p->pid)) {
            p->pid = 0;
            continue;
        }

        oldest = ngx_min(oldest, p->generation);
    }

    if (sh->unlisted) {
        oldest = ngx_min(oldest, sh->unlisted);
    }

    /* the master's children, when there is a master */
    for (i = 0; i < ngx_last_process; i++) {
        if (ngx_processes[i].pid == -1 || ngx_processes[i].exited) {
            continue;
        }

        if (ngx_smartflow_shm_listed(sh, ngx_processes[i].pid) == NULL) {
            ngx_log_debug2(NGX_LOG_DEBUG_HTTP, shm_zone->shm.log, 0,
                           "smartflow zone \"%V\": process %P not listed "
                           "yet, no slot is reused",
                           &shm_zone->shm.name, ngx_processes[i].pid);
            return 0;
        }
    }

    return oldest;
}


static ngx_smartflow_shm_process_t *
ngx_smartflow_shm_listed(ngx_smartflow_shm_t *sh, ngx_pid_t pid)
{
    ngx_uint_t  k;

    for (k = 0; k < NGX_MAX_PROCESSES; k++) {
        if (sh->processes[k].pid == pid) {
            return &sh->processes[k];
        }
    }

    return NULL;
}


/* a process that cannot be signalled for want of rights is alive too */
ngx_uint_t
ngx_smartflow_process_alive(ngx_pid_t pid)
{
    return kill(pid, 0) == 0 || ngx_errno != NGX_ESRCH;
}


/*
 * A worker, a cache process or the one process without a master lists
 * itself with its configuration's generation (see the rule above).  A
 * pid seen again replaces its dead owner's entry.  When the table is full
 * (only if more processes than nginx may have are alive), the generation
 * is kept as "unlisted", which keeps its slots, and any newer, for good.
 */
ngx_int_t
ngx_smartflow_shm_init_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                       k;
    ngx_slab_pool_t                 *shpool;
    ngx_smartflow_shm_t             *sh;
    ngx_smartflow_shm_process_t     *p;
    ngx_http_smartflow_main_conf_t  *smcf;

    smcf = ngx_http_cycle_get_module_main_conf(cycle,
                                          ngx_http_smartflow_proxy_module);

    if (smcf == NULL || smcf->zone == NULL || smcf->zone->shm.addr == NULL) {
        return NGX_OK;
    }

    shpool = (ngx_slab_pool_t *) smcf->zone->shm.addr;
    sh = shpool->data;

    ngx_shmtx_lock(&shpool->mutex);

    p = ngx_smartflow_shm_listed(sh, ngx_pid);

    if (p == NULL) {
        p = ngx_smartflow_shm_listed(sh, 0);
    }

    for (k = 0; p == NULL && k < NGX_MAX_PROCESSES; k++) {
        if (!ngx_smartflow_process_alive(sh->processes[k].pid)) {
            p = &sh->processes[k];
        }
    }

    if (p) {
        p->pid = ngx_pid;
        p->generation = smcf->zone_generation;

    } else if (sh->unlisted == 0 || sh->unlisted > smcf->zone_generation) {
        sh->unlisted = smcf->zone_generation;
    }

    ngx_shmtx_unlock(&shpool->mutex);

    if (p == NULL) {
        ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                      "smartflow proxy: zone \"%V\" cannot list process %P, "
                      "its slots will not be reused",
                      &smcf->zone->shm.name, ngx_pid);
    }

    return NGX_OK;
}


/* a slot for every provider and every deployment of the configuration */
static void
ngx_smartflow_shm_assign(ngx_http_smartflow_main_conf_t *smcf,
    ngx_smartflow_shm_t *sh, ngx_smartflow_shm_slots_t *sl)
{
    ngx_uint_t                       i;
    ngx_http_smartflow_provider_t  **pr;

    sl->base = (u_char *) sh->providers;
    sl->gen = sh->provider_gen;
    sl->size = sizeof(sh->providers[0]);
    sl->n = NGX_SMARTFLOW_SHM_PROVIDERS;
    sl->what = "provider";

    pr = smcf->providers.elts;

    for (i = 0; i < smcf->providers.nelts; i++) {
        if (pr[i]->stats) {
            continue;
        }

        pr[i]->stats = ngx_smartflow_shm_slot(sl, &pr[i]->name);

        if (pr[i]->stats == NULL && sl->take) {
            ngx_log_error(NGX_LOG_WARN, sl->zone->shm.log, 0,
                          "smartflow proxy: zone \"%V\" has no slot left "
                          "for provider \"%V\" (all %ui are taken by the "
                          "running configurations): /health shows no "
                          "counters for it", &sl->zone->shm.name,
                          &pr[i]->name, sl->n);
        }
    }

    sl->base = (u_char *) sh->deployments;
    sl->gen = sh->deployment_gen;
    sl->size = sizeof(sh->deployments[0]);
    sl->n = NGX_SMARTFLOW_SHM_DEPLOYMENTS;
    sl->what = "deployment";

    ngx_smartflow_shm_routes(smcf, sl, &smcf->routes);
    ngx_smartflow_shm_routes(smcf, sl, &smcf->wildcards);
}


static void
ngx_smartflow_shm_routes(ngx_http_smartflow_main_conf_t *smcf,
    ngx_smartflow_shm_slots_t *sl, ngx_array_t *routes)
{
    ngx_uint_t                    i;
    ngx_http_smartflow_route_t  **head, *rt;

    head = routes->elts;

    for (i = 0; i < routes->nelts; i++) {
        for (rt = head[i]; rt; rt = rt->next) {
            if (rt->stats) {
                continue;
            }

            rt->stats = ngx_smartflow_shm_slot(sl, &rt->name);

            if (rt->stats == NULL && sl->take
                && !ngx_smartflow_shm_refused(smcf, rt))
            {
                ngx_log_error(NGX_LOG_WARN, sl->zone->shm.log, 0,
                              "smartflow proxy: zone \"%V\" has no slot "
                              "left for deployment \"%V\" (all %ui are "
                              "taken by the running configurations): it "
                              "has no circuit breaker and /health shows "
                              "no counters for it", &sl->zone->shm.name,
                              &rt->name, sl->n);
            }
        }
    }
}


/* was the route's name refused a slot already, for a route before it */
static ngx_uint_t
ngx_smartflow_shm_refused(ngx_http_smartflow_main_conf_t *smcf,
    ngx_http_smartflow_route_t *rt)
{
    ngx_uint_t                    i, l;
    ngx_array_t                  *lists[2];
    ngx_http_smartflow_route_t  **head, *r;

    lists[0] = &smcf->routes;
    lists[1] = &smcf->wildcards;

    for (l = 0; l < 2; l++) {
        head = lists[l]->elts;

        for (i = 0; i < lists[l]->nelts; i++) {
            for (r = head[i]; r; r = r->next) {
                if (r == rt) {
                    return 0;
                }

                if (r->stats == NULL && r->name.len == rt->name.len
                    && ngx_strncmp(r->name.data, rt->name.data,
                                   rt->name.len) == 0)
                {
                    return 1;
                }
            }
        }
    }

    return 0;
}


/*
 * The slot named so, marked with the new generation; or, when sl->take is
 * set, a free one (the rule above), cleared and named; or NULL.  Every
 * slot starts with its name.
 */
static void *
ngx_smartflow_shm_slot(ngx_smartflow_shm_slots_t *sl, ngx_str_t *name)
{
    u_char      *slot;
    size_t       len;
    ngx_uint_t   k, free;

    len = ngx_min(name->len, NGX_SMARTFLOW_SLOT_NAME - 1);
    free = sl->n;

    for (k = 0; k < sl->n; k++) {
        slot = sl->base + k * sl->size;

        if (slot[0] != '\0'
            && ngx_strncmp(slot, name->data, len) == 0 && slot[len] == '\0')
        {
            sl->gen[k] = sl->generation;
            return slot;
        }

        if (free == sl->n
            && (slot[0] == '\0' || sl->gen[k] < sl->oldest))
        {
            free = k;
        }
    }

    if (!sl->take || free == sl->n) {
        return NULL;
    }

    slot = sl->base + free * sl->size;

    if (slot[0] != '\0') {
        ngx_log_debug3(NGX_LOG_DEBUG_HTTP, sl->zone->shm.log, 0,
                       "smartflow zone %s slot of \"%s\" goes to \"%V\"",
                       sl->what, slot, name);
    }

    ngx_memzero(slot, sl->size);
    ngx_memcpy(slot, name->data, len);
    sl->gen[free] = sl->generation;

    return slot;
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
