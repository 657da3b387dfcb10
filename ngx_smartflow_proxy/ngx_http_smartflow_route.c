/*
 * Providers and the model table: the smartflow_provider and
 * smartflow_route directives, and the lookup from a model name to the
 * route that serves it (exact names through a hash, then wildcard
 * patterns in configuration order).
 */

#include "ngx_http_smartflow_proxy.h"


static ngx_http_smartflow_provider_t *ngx_http_smartflow_provider_by_name(
    ngx_http_smartflow_main_conf_t *smcf, ngx_str_t *name);


static ngx_conf_enum_t  ngx_http_smartflow_provider_types[] = {
    { ngx_string("openai"), NGX_HTTP_SMARTFLOW_PROVIDER_OPENAI },
    { ngx_string("anthropic"), NGX_HTTP_SMARTFLOW_PROVIDER_ANTHROPIC },
    { ngx_string("gemini"), NGX_HTTP_SMARTFLOW_PROVIDER_GEMINI },
    { ngx_string("echo"), NGX_HTTP_SMARTFLOW_PROVIDER_ECHO },
    { ngx_null_string, 0 }
};


/*
 * smartflow_provider NAME type=openai|anthropic|gemini|echo
 *     [upstream=http://NAME] [host=HOST] [path=/v1] [key=KEY|key=env:VAR];
 */
char *
ngx_http_smartflow_provider_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_smartflow_main_conf_t *smcf = conf;

    char                            *env;
    u_char                          *p;
    ngx_str_t                       *value, v, key, cred;
    ngx_uint_t                       i, typed;
    ngx_conf_enum_t                 *e;
    ngx_http_smartflow_provider_t   *pr, **ppr;

    value = cf->args->elts;

    if (ngx_http_smartflow_provider_by_name(smcf, &value[1])) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "duplicate smartflow provider \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    pr = ngx_pcalloc(cf->pool, sizeof(ngx_http_smartflow_provider_t));
    if (pr == NULL) {
        return NGX_CONF_ERROR;
    }

    pr->name = value[1];
    ngx_str_null(&key);
    typed = 0;

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "type=", 5) == 0) {
            v.data = value[i].data + 5;
            v.len = value[i].len - 5;

            for (e = ngx_http_smartflow_provider_types; e->name.len; e++) {
                if (e->name.len == v.len
                    && ngx_strncmp(e->name.data, v.data, v.len) == 0)
                {
                    pr->type = e->value;
                    typed = 1;
                    break;
                }
            }

            if (!typed) {
                goto invalid;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "upstream=", 9) == 0) {
            pr->upstream.data = value[i].data + 9;
            pr->upstream.len = value[i].len - 9;

            if (ngx_strncmp(pr->upstream.data, "http://", 7) != 0
                && ngx_strncmp(pr->upstream.data, "https://", 8) != 0)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "smartflow provider \"%V\": upstream must "
                                   "start with http:// or https://",
                                   &pr->name);
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "host=", 5) == 0) {
            pr->host.data = value[i].data + 5;
            pr->host.len = value[i].len - 5;
            continue;
        }

        if (ngx_strncmp(value[i].data, "path=", 5) == 0) {
            pr->path.data = value[i].data + 5;
            pr->path.len = value[i].len - 5;

            /* "/v1/" and "/v1" mean the same base */
            while (pr->path.len && pr->path.data[pr->path.len - 1] == '/') {
                pr->path.len--;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "key=", 4) == 0) {
            key.data = value[i].data + 4;
            key.len = value[i].len - 4;

            if (ngx_strncmp(key.data, "env:", 4) == 0) {
                /* read while the master parses; workers keep the copy */
                env = getenv((char *) key.data + 4);
                key.len = env ? ngx_strlen(env) : 0;
                key.data = (u_char *) env;

            } else if (ngx_strncmp(key.data, "enc:v1:", 7) == 0
                       && ngx_http_smartflow_credentials_unseal(cf,
                                                    &pr->name, &key)
                          != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        goto invalid;
    }

    if (!typed) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow provider \"%V\" needs type=",
                           &pr->name);
        return NGX_CONF_ERROR;
    }

    if (pr->type != NGX_HTTP_SMARTFLOW_PROVIDER_ECHO
        && pr->upstream.len == 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow provider \"%V\" needs upstream=",
                           &pr->name);
        return NGX_CONF_ERROR;
    }

    if (pr->path.data == NULL) {
        /* where each provider's own API lives by default */
        if (pr->type == NGX_HTTP_SMARTFLOW_PROVIDER_GEMINI) {
            ngx_str_set(&pr->path, "/v1beta");

        } else if (pr->type != NGX_HTTP_SMARTFLOW_PROVIDER_ECHO) {
            ngx_str_set(&pr->path, "/v1");
        }
    }

    if (pr->host.len == 0 && pr->upstream.len) {
        /* Host defaults to the upstream's name */
        v = pr->upstream;
        p = ngx_strlchr(v.data, v.data + v.len, ':');
        pr->host.data = p + 3;
        pr->host.len = v.data + v.len - pr->host.data;
    }

    if (key.len) {
        if (pr->type == NGX_HTTP_SMARTFLOW_PROVIDER_OPENAI) {
            pr->auth.len = sizeof("Bearer ") - 1 + key.len;
            pr->auth.data = ngx_pnalloc(cf->pool, pr->auth.len);
            if (pr->auth.data == NULL) {
                return NGX_CONF_ERROR;
            }

            ngx_sprintf(pr->auth.data, "Bearer %V", &key);

            cred = pr->auth;

        } else {
            pr->api_key.data = ngx_pstrdup(cf->pool, &key);
            if (pr->api_key.data == NULL) {
                return NGX_CONF_ERROR;
            }

            pr->api_key.len = key.len;

            cred = pr->api_key;
        }

        /* the configuration's copy goes with it */
        if (ngx_http_smartflow_wipe_later(cf->pool, cred.data, cred.len)
            != NGX_OK)
        {
            return NGX_CONF_ERROR;
        }
    }

    ppr = ngx_array_push(&smcf->providers);
    if (ppr == NULL) {
        return NGX_CONF_ERROR;
    }

    *ppr = pr;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid smartflow provider parameter \"%V\"",
                       &value[i]);
    return NGX_CONF_ERROR;
}


/*
 * smartflow_route PATTERN PROVIDER [model=UPSTREAM_MODEL] [weight=N]
 *     [timeout=TIME] [fallback];
 *
 * A pattern named again adds a deployment of the same model: another
 * provider, key or upstream model, sharing the load by weight, or, with
 * "fallback", tried only after the others failed.  "timeout" bounds the
 * wait for this deployment's answer to begin; past it the attempt fails
 * as a timeout and the next deployment is tried.
 */
char *
ngx_http_smartflow_route_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_smartflow_main_conf_t *smcf = conf;

    u_char                       *p;
    ngx_str_t                    *value, v;
    ngx_int_t                     n;
    ngx_uint_t                    i;
    ngx_array_t                  *list;
    ngx_http_smartflow_route_t   *rt, *head, **prt;

    value = cf->args->elts;

    rt = ngx_pcalloc(cf->pool, sizeof(ngx_http_smartflow_route_t));
    if (rt == NULL) {
        return NGX_CONF_ERROR;
    }

    rt->pattern = value[1];
    rt->weight = 1;
    rt->wildcard = ngx_strlchr(value[1].data, value[1].data + value[1].len,
                               '*')
                   != NULL;

    rt->provider = ngx_http_smartflow_provider_by_name(smcf, &value[2]);
    if (rt->provider == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow route \"%V\" names unknown provider "
                           "\"%V\" (declare it first with smartflow_provider)",
                           &value[1], &value[2]);
        return NGX_CONF_ERROR;
    }

    for (i = 3; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "model=", 6) == 0
            && value[i].len > 6)
        {
            rt->model.data = value[i].data + 6;
            rt->model.len = value[i].len - 6;
            continue;
        }

        if (ngx_strncmp(value[i].data, "weight=", 7) == 0) {
            n = ngx_atoi(value[i].data + 7, value[i].len - 7);
            if (n <= 0 || n > 1000) {
                goto invalid;
            }

            rt->weight = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "timeout=", 8) == 0) {
            v.data = value[i].data + 8;
            v.len = value[i].len - 8;

            rt->timeout = ngx_parse_time(&v, 0);
            if (rt->timeout == (ngx_msec_t) NGX_ERROR || rt->timeout == 0) {
                goto invalid;
            }

            continue;
        }

        if (value[i].len == 8
            && ngx_strncmp(value[i].data, "fallback", 8) == 0)
        {
            rt->fallback = 1;
            continue;
        }

        goto invalid;
    }

    /* "provider/model", for the response header and the zone slot */
    rt->name.len = rt->provider->name.len + 1
                   + (rt->model.len ? rt->model.len : rt->pattern.len);
    rt->name.data = ngx_pnalloc(cf->pool, rt->name.len);
    if (rt->name.data == NULL) {
        return NGX_CONF_ERROR;
    }

    p = ngx_cpymem(rt->name.data, rt->provider->name.data,
                   rt->provider->name.len);
    *p++ = '/';
    ngx_memcpy(p, rt->model.len ? rt->model.data : rt->pattern.data,
               rt->model.len ? rt->model.len : rt->pattern.len);

    list = rt->wildcard ? &smcf->wildcards : &smcf->routes;
    prt = list->elts;

    for (i = 0; i < list->nelts; i++) {
        head = prt[i];

        if (head->pattern.len != rt->pattern.len
            || ngx_strncasecmp(head->pattern.data, rt->pattern.data,
                               rt->pattern.len)
               != 0)
        {
            continue;
        }

        for ( /* void */ ; head; head = head->next) {
            /* the same provider and upstream model twice is a mistake */
            if (head->provider == rt->provider
                && head->name.len == rt->name.len
                && ngx_strncasecmp(head->name.data, rt->name.data,
                                   rt->name.len)
                   == 0)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "duplicate smartflow route \"%V\"",
                                   &value[1]);
                return NGX_CONF_ERROR;
            }

            if (head->next == NULL) {
                head->next = rt;
                return NGX_CONF_OK;
            }
        }
    }

    prt = ngx_array_push(list);
    if (prt == NULL) {
        return NGX_CONF_ERROR;
    }

    *prt = rt;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid smartflow route parameter \"%V\"",
                       &value[i]);
    return NGX_CONF_ERROR;
}


ngx_int_t
ngx_http_smartflow_routes_init(ngx_conf_t *cf,
    ngx_http_smartflow_main_conf_t *smcf)
{
    size_t                        longest;
    ngx_int_t                     rc;
    ngx_str_t                     name;
    ngx_uint_t                    i;
    ngx_hash_init_t               hash;
    ngx_hash_keys_arrays_t        keys;
    ngx_http_smartflow_route_t  **rt;

    ngx_memzero(&keys, sizeof(ngx_hash_keys_arrays_t));
    keys.pool = cf->pool;
    keys.temp_pool = cf->temp_pool;

    if (ngx_hash_keys_array_init(&keys, NGX_HASH_SMALL) != NGX_OK) {
        return NGX_ERROR;
    }

    rt = smcf->routes.elts;
    longest = 0;

    for (i = 0; i < smcf->routes.nelts; i++) {
        longest = ngx_max(longest, rt[i]->pattern.len);

        /* lower-cased copy: model names match case-insensitively */
        name.len = rt[i]->pattern.len;
        name.data = ngx_pnalloc(cf->pool, name.len);
        if (name.data == NULL) {
            return NGX_ERROR;
        }

        ngx_strlow(name.data, rt[i]->pattern.data, name.len);

        rc = ngx_hash_add_key(&keys, &name, rt[i], NGX_HASH_READONLY_KEY);

        if (rc == NGX_BUSY) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "duplicate smartflow route \"%V\"",
                          &rt[i]->pattern);
            return NGX_ERROR;
        }

        if (rc != NGX_OK) {
            return NGX_ERROR;
        }
    }

    hash.hash = &smcf->route_hash;
    hash.key = ngx_hash_key;
    hash.max_size = 4096;
    /* a bucket holds at least the longest name (ngx_hash_elt_t layout) */
    hash.bucket_size = ngx_align(ngx_max(64, longest + 2 + 2 * sizeof(void *)),
                                 ngx_cacheline_size);
    hash.name = "smartflow_routes_hash";
    hash.pool = cf->pool;
    hash.temp_pool = NULL;

    return ngx_hash_init(&hash, keys.keys.elts, keys.keys.nelts);
}


ngx_http_smartflow_route_t *
ngx_http_smartflow_route_find(ngx_http_smartflow_main_conf_t *smcf,
    ngx_str_t *model)
{
    u_char                        low[256];
    ngx_uint_t                    i, key;
    ngx_http_smartflow_route_t   *rt, **wc;

    if (model->len == 0 || model->len > sizeof(low)) {
        return NULL;
    }

    key = ngx_hash_strlow(low, model->data, model->len);

    rt = ngx_hash_find(&smcf->route_hash, key, low, model->len);
    if (rt) {
        return rt;
    }

    wc = smcf->wildcards.elts;

    for (i = 0; i < smcf->wildcards.nelts; i++) {
        if (ngx_smartflow_glob(wc[i]->pattern.data,
                                    wc[i]->pattern.data + wc[i]->pattern.len,
                                    low, low + model->len))
        {
            return wc[i];
        }
    }

    return NULL;
}


/*
 * The order in which a request tries the deployments of its model: the
 * primary chosen by the balancer first, the other primaries, then the
 * fallbacks in configuration order; deployments whose breaker is open are
 * left out while another is available, one that cooled down is let
 * through as a single probe.  "force" keeps only one provider type.
 *
 * The probe of the first deployment is claimed here ("held" is the
 * claim, 0 if none); the others' are claimed only when their attempt is
 * sent: bit k of "half" says plan[k] needs it.
 */
ngx_uint_t
ngx_http_smartflow_route_plan(ngx_http_request_t *r,
    ngx_http_smartflow_main_conf_t *smcf, ngx_http_smartflow_route_t *head,
    ngx_str_t *force, ngx_http_smartflow_route_t **plan, ngx_uint_t *half,
    time_t *held)
{
    time_t                             claim[NGX_HTTP_SMARTFLOW_MAX_PLAN];
    ngx_uint_t                         n, k, i, j, best, total, pick, cap;
    ngx_uint_t                         usable[NGX_HTTP_SMARTFLOW_MAX_PLAN];
    ngx_http_smartflow_route_t        *rt, *all[NGX_HTTP_SMARTFLOW_MAX_PLAN];
    ngx_smartflow_deployment_stats_t  *st;

    static char  *types[] = { "openai", "anthropic", "gemini", "echo" };

    n = 0;
    *half = 0;
    *held = 0;

    for (rt = head; rt && n < NGX_HTTP_SMARTFLOW_MAX_PLAN; rt = rt->next) {
        if (force && force->len
            && (ngx_strlen(types[rt->provider->type]) != force->len
                || ngx_strncasecmp((u_char *) types[rt->provider->type],
                                   force->data, force->len)
                   != 0))
        {
            continue;
        }

        st = rt->stats;
        usable[n] = 1;
        claim[n] = 0;

        if (st && st->open_until) {
            /* cooled down: one request probes, the others wait */
            claim[n] = ngx_http_smartflow_route_probe(smcf, rt);

            if (claim[n] == 0) {
                usable[n] = 0;
            }
        }

        all[n++] = rt;
    }

    if (n == 0) {
        return 0;
    }

    for (i = 0, k = 0; i < n; i++) {
        k += usable[i];
    }

    if (k == 0) {
        /* every breaker is open: better a try than a certain failure */
        for (i = 0; i < n; i++) {
            usable[i] = 1;
        }
    }

    cap = ngx_min(smcf->max_attempts, NGX_HTTP_SMARTFLOW_MAX_PLAN);
    k = 0;

    /* the balancer's primary first */
    best = n;
    total = 0;

    for (i = 0; i < n; i++) {
        if (usable[i] && !all[i]->fallback) {
            total += all[i]->weight;
        }
    }

    if (total) {
        if (smcf->balance == NGX_HTTP_SMARTFLOW_BALANCE_LEAST_IN_FLIGHT) {
            for (i = 0; i < n; i++) {
                if (!usable[i] || all[i]->fallback) {
                    continue;
                }

                /* fewest requests in flight per unit of weight */
                if (best == n
                    || (all[i]->stats ? all[i]->stats->in_flight : 0)
                       * all[best]->weight
                       < (all[best]->stats ? all[best]->stats->in_flight : 0)
                         * all[i]->weight)
                {
                    best = i;
                }
            }

        } else {
            pick = ngx_random() % total;

            for (i = 0; i < n; i++) {
                if (!usable[i] || all[i]->fallback) {
                    continue;
                }

                if (pick < all[i]->weight) {
                    best = i;
                    break;
                }

                pick -= all[i]->weight;
            }
        }
    }

    if (best < n) {
        plan[k++] = all[best];
        usable[best] = 0;
    }

    /* then the other primaries, then the fallbacks */
    for (i = 0; i < n && k < cap; i++) {
        if (usable[i] && !all[i]->fallback) {
            plan[k++] = all[i];
        }
    }

    for (i = 0; i < n && k < cap; i++) {
        if (usable[i] && all[i]->fallback) {
            plan[k++] = all[i];
        }
    }

    /*
     * claimed to know the probe was free: kept for the first attempt,
     * given back for the later ones, which claim it when they are sent
     */
    for (i = 0; i < n; i++) {
        if (claim[i] == 0) {
            continue;
        }

        for (j = 0; j < k; j++) {
            if (plan[j] == all[i]) {
                break;
            }
        }

        if (j == 0) {
            *held = claim[i];
            continue;
        }

        if (j < k) {
            *half |= (ngx_uint_t) 1 << j;
        }

        ngx_http_smartflow_route_unprobe(all[i], claim[i]);
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "smartflow proxy plan: %ui of %ui deployments, "
                   "probes %ui", k, n, *half | (*held != 0));

    return k;
}


/*
 * Claims the single probe of a deployment whose breaker cooled down: the
 * claim's time, or 0 while it is open or another request probes it (a
 * claim not settled within a cool-down expires).
 */
time_t
ngx_http_smartflow_route_probe(ngx_http_smartflow_main_conf_t *smcf,
    ngx_http_smartflow_route_t *rt)
{
    time_t                             now;
    ngx_atomic_uint_t                  probe;
    ngx_smartflow_deployment_stats_t  *st;

    st = rt->stats;
    now = ngx_time();
    probe = st->probing;

    if ((time_t) st->open_until > now
        || (probe && (time_t) probe + smcf->breaker_cooldown > now)
        || !ngx_atomic_cmp_set(&st->probing, probe, now))
    {
        return 0;
    }

    return now;
}


/* gives back a probe claimed at "claim" and not settled by a result */
void
ngx_http_smartflow_route_unprobe(ngx_http_smartflow_route_t *rt,
    time_t claim)
{
    if (rt->stats) {
        (void) ngx_atomic_cmp_set(&rt->stats->probing, claim, 0);
    }
}


/*
 * The outcome of one attempt on a deployment, for its breaker: a 429 with
 * Retry-After rests it that long; failures in a row open it.
 */
void
ngx_http_smartflow_route_result(ngx_http_smartflow_main_conf_t *smcf,
    ngx_http_smartflow_route_t *rt, ngx_uint_t status, time_t retry_after)
{
    ngx_smartflow_deployment_stats_t  *st;

    st = rt->stats;

    if (st == NULL) {
        return;
    }

    (void) ngx_atomic_fetch_add(&st->requests, 1);
    st->probing = 0;

    if (status != 0 && status < NGX_HTTP_INTERNAL_SERVER_ERROR
        && status != NGX_HTTP_TOO_MANY_REQUESTS)
    {
        st->consecutive_failures = 0;
        st->open_until = 0;
        return;
    }

    (void) ngx_atomic_fetch_add(&st->failures, 1);

    if (status == NGX_HTTP_TOO_MANY_REQUESTS && retry_after > 0) {
        st->open_until = ngx_time() + ngx_min(retry_after, 3600);
        return;
    }

    if (ngx_atomic_fetch_add(&st->consecutive_failures, 1) + 1
        >= smcf->breaker_failures)
    {
        st->open_until = ngx_time() + smcf->breaker_cooldown;
    }
}


static ngx_http_smartflow_provider_t *
ngx_http_smartflow_provider_by_name(ngx_http_smartflow_main_conf_t *smcf,
    ngx_str_t *name)
{
    ngx_uint_t                       i;
    ngx_http_smartflow_provider_t  **pr;

    pr = smcf->providers.elts;

    for (i = 0; i < smcf->providers.nelts; i++) {
        if (pr[i]->name.len == name->len
            && ngx_strncmp(pr[i]->name.data, name->data, name->len) == 0)
        {
            return pr[i];
        }
    }

    return NULL;
}


/*
 * '*' matches any run of characters, anything else itself in any case;
 * the subject is expected in lower case.
 */
ngx_uint_t
ngx_smartflow_glob(u_char *p, u_char *pe, u_char *s, u_char *se)
{
    u_char  *star_p, *star_s;

    star_p = NULL;
    star_s = NULL;

    while (s < se) {
        if (p < pe && *p == '*') {
            star_p = ++p;
            star_s = s;
            continue;
        }

        if (p < pe && ngx_tolower(*p) == *s) {
            p++;
            s++;
            continue;
        }

        if (star_p == NULL) {
            return 0;
        }

        p = star_p;
        s = ++star_s;
    }

    while (p < pe && *p == '*') {
        p++;
    }

    return p == pe;
}
