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
    ngx_str_t                       *value, v, key;
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

        } else {
            pr->api_key.data = ngx_pstrdup(cf->pool, &key);
            if (pr->api_key.data == NULL) {
                return NGX_CONF_ERROR;
            }

            pr->api_key.len = key.len;
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


/* smartflow_route PATTERN PROVIDER [model=UPSTREAM_MODEL]; */
char *
ngx_http_smartflow_route_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_smartflow_main_conf_t *smcf = conf;

    ngx_str_t                    *value;
    ngx_http_smartflow_route_t   *rt, **prt;

    value = cf->args->elts;

    rt = ngx_pcalloc(cf->pool, sizeof(ngx_http_smartflow_route_t));
    if (rt == NULL) {
        return NGX_CONF_ERROR;
    }

    rt->pattern = value[1];
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

    if (cf->args->nelts == 4) {
        if (ngx_strncmp(value[3].data, "model=", 6) != 0
            || value[3].len == 6)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid smartflow route parameter \"%V\"",
                               &value[3]);
            return NGX_CONF_ERROR;
        }

        rt->model.data = value[3].data + 6;
        rt->model.len = value[3].len - 6;
    }

    prt = ngx_array_push(rt->wildcard ? &smcf->wildcards : &smcf->routes);
    if (prt == NULL) {
        return NGX_CONF_ERROR;
    }

    *prt = rt;

    return NGX_CONF_OK;
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
