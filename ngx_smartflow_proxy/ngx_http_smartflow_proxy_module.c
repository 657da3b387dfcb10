/*
 * The proxy module: directives, configuration, $smartflow_* variables,
 * phase handler registration, and the request context that the cache,
 * policy and audit modules share with it.
 */

#include <openssl/evp.h>

#include "ngx_http_smartflow_keys.h"

#if (NGX_LINUX) && defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__)
#include <malloc.h>
#endif


static void ngx_http_smartflow_ctx_cleanup(void *data);
static ngx_int_t ngx_http_smartflow_init_process(ngx_cycle_t *cycle);
static ngx_int_t ngx_http_smartflow_str_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_smartflow_upstream_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_smartflow_stream_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_smartflow_uint_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_smartflow_anthropic_version_variable(
    ngx_http_request_t *r, ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_smartflow_add_variables(ngx_conf_t *cf);
static void *ngx_http_smartflow_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_smartflow_init_main_conf(ngx_conf_t *cf, void *conf);
static ngx_int_t ngx_http_smartflow_init_module(ngx_cycle_t *cycle);
static void *ngx_http_smartflow_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_smartflow_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_smartflow_master_key(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_smartflow_api(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_smartflow_breaker(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_smartflow_init(ngx_conf_t *cf);


static ngx_conf_enum_t  ngx_http_smartflow_apis[] = {
    { ngx_string("chat"), NGX_HTTP_SMARTFLOW_API_CHAT },
    { ngx_string("completions"), NGX_HTTP_SMARTFLOW_API_COMPLETIONS },
    { ngx_string("embeddings"), NGX_HTTP_SMARTFLOW_API_EMBEDDINGS },
    { ngx_string("messages"), NGX_HTTP_SMARTFLOW_API_MESSAGES },
    { ngx_string("models"), NGX_HTTP_SMARTFLOW_API_MODELS },
    { ngx_string("anthropic_models"),
      NGX_HTTP_SMARTFLOW_API_ANTHROPIC_MODELS },
    { ngx_string("health"), NGX_HTTP_SMARTFLOW_API_HEALTH },
    { ngx_string("admin_keys"), NGX_HTTP_SMARTFLOW_API_ADMIN_KEYS },
    { ngx_string("error"), NGX_HTTP_SMARTFLOW_API_ERROR },
    { ngx_string("anthropic_error"), NGX_HTTP_SMARTFLOW_API_ANTHROPIC_ERROR },
    { ngx_string("next"), NGX_HTTP_SMARTFLOW_API_NEXT },
    { ngx_string("attempt"), NGX_HTTP_SMARTFLOW_API_ATTEMPT },
    { ngx_string("admin_providers"), NGX_HTTP_SMARTFLOW_API_ADMIN_PROVIDERS },
    { ngx_null_string, 0 }
};


static ngx_conf_enum_t  ngx_http_smartflow_balance[] = {
    { ngx_string("weighted"), NGX_HTTP_SMARTFLOW_BALANCE_WEIGHTED },
    { ngx_string("least_in_flight"),
      NGX_HTTP_SMARTFLOW_BALANCE_LEAST_IN_FLIGHT },
    { ngx_null_string, 0 }
};


static ngx_conf_num_bounds_t  ngx_http_smartflow_max_attempts_bounds = {
    ngx_conf_check_num_bounds, 1, NGX_HTTP_SMARTFLOW_MAX_PLAN
};


static ngx_command_t  ngx_http_smartflow_commands[] = {

    { ngx_string("smartflow_master_key"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_smartflow_master_key,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("smartflow_provider"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_2MORE,
      ngx_http_smartflow_provider_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("smartflow_route"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_2MORE,
      ngx_http_smartflow_route_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("smartflow_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE2,
      ngx_http_smartflow_zone_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("smartflow_balance"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_smartflow_main_conf_t, balance),
      &ngx_http_smartflow_balance },

    { ngx_string("smartflow_max_attempts"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_smartflow_main_conf_t, max_attempts),
      &ngx_http_smartflow_max_attempts_bounds },

    { ngx_string("smartflow_breaker"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE12,
      ngx_http_smartflow_breaker,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("smartflow_keys_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE2|NGX_CONF_TAKE3|NGX_CONF_TAKE4,
      ngx_http_smartflow_keys_zone_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("smartflow_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_smartflow_redis_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("smartflow_price"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE3,
      ngx_http_smartflow_price_directive,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("smartflow_api"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_smartflow_api,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("smartflow_stream_max_bytes"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_off_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_smartflow_loc_conf_t, stream_max_bytes),
      NULL },

    { ngx_string("smartflow_stream_max_time"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_smartflow_loc_conf_t, stream_max_time),
      NULL },

    { ngx_string("smartflow_credentials_key"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_smartflow_credentials_key,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("smartflow_credentials_store"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE12,
      ngx_http_smartflow_credentials_store,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("smartflow_usage_trailers"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_smartflow_loc_conf_t, usage_trailers),
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_smartflow_proxy_module_ctx = {
    ngx_http_smartflow_add_variables,      /* preconfiguration */
    ngx_http_smartflow_init,               /* postconfiguration */

    ngx_http_smartflow_create_main_conf,   /* create main configuration */
    ngx_http_smartflow_init_main_conf,     /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_smartflow_create_loc_conf,    /* create location configuration */
    ngx_http_smartflow_merge_loc_conf      /* merge location configuration */
};


ngx_module_t  ngx_http_smartflow_proxy_module = {
    NGX_MODULE_V1,
    &ngx_http_smartflow_proxy_module_ctx,  /* module context */
    ngx_http_smartflow_commands,           /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    ngx_http_smartflow_init_module,        /* init module */
    ngx_http_smartflow_init_process,       /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_smartflow_keys_exit_process,  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


#define ngx_sf_ctx_off(field)  offsetof(ngx_http_smartflow_ctx_t, field)

static ngx_http_variable_t  ngx_http_smartflow_vars[] = {

    { ngx_string("smartflow_upstream"), NULL,
      ngx_http_smartflow_upstream_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("smartflow_upstream_host"), NULL,
      ngx_http_smartflow_upstream_variable, 1,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("smartflow_provider_auth"), NULL,
      ngx_http_smartflow_upstream_variable, 2,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("smartflow_provider_api_key"), NULL,
      ngx_http_smartflow_upstream_variable, 3,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("smartflow_gemini_api_key"), NULL,
      ngx_http_smartflow_upstream_variable, 6,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("smartflow_provider"), NULL,
      ngx_http_smartflow_upstream_variable, 4,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("smartflow_route"), NULL,
      ngx_http_smartflow_upstream_variable, 5,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("smartflow_anthropic_version"), NULL,
      ngx_http_smartflow_anthropic_version_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("smartflow_upstream_uri"), NULL,
      ngx_http_smartflow_str_variable, ngx_sf_ctx_off(upstream_uri),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("smartflow_upstream_body"), NULL,
      ngx_http_smartflow_str_variable, ngx_sf_ctx_off(upstream_body),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("smartflow_model"), NULL,
      ngx_http_smartflow_str_variable, ngx_sf_ctx_off(model),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("smartflow_upstream_model"), NULL,
      ngx_http_smartflow_str_variable, ngx_sf_ctx_off(upstream_model),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("smartflow_key_id"), NULL,
      ngx_http_smartflow_str_variable, ngx_sf_ctx_off(key_id),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("smartflow_team"), NULL,
      ngx_http_smartflow_str_variable, ngx_sf_ctx_off(team),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("smartflow_error_code"), NULL,
      ngx_http_smartflow_str_variable, ngx_sf_ctx_off(err_code),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("smartflow_stream"), NULL,
      ngx_http_smartflow_stream_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("smartflow_prompt_tokens"), NULL,
      ngx_http_smartflow_uint_variable, ngx_sf_ctx_off(prompt_tokens),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("smartflow_completion_tokens"), NULL,
      ngx_http_smartflow_uint_variable, ngx_sf_ctx_off(completion_tokens),
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("smartflow_cost"), NULL,
      ngx_http_smartflow_cost_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


/*
 * nginx empties r->ctx on internal redirects (error_page, named
 * locations), but the pipeline's work must survive them: the context is
 * also hung on a request pool cleanup, where it can always be found again.
 */
ngx_http_smartflow_ctx_t *
ngx_http_smartflow_get_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t        *cln;
    ngx_http_smartflow_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_smartflow_proxy_module);
    if (ctx) {
        return ctx;
    }

    for (cln = r->pool->cleanup; cln; cln = cln->next) {
        if (cln->handler == ngx_http_smartflow_ctx_cleanup) {
            ctx = cln->data;
            ngx_http_set_ctx(r, ctx, ngx_http_smartflow_proxy_module);
            return ctx;
        }
    }

    return NULL;
}


ngx_http_smartflow_ctx_t *
ngx_http_smartflow_create_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t        *cln;
    ngx_http_smartflow_ctx_t  *ctx;

    ctx = ngx_http_smartflow_get_ctx(r);
    if (ctx) {
        return ctx;
    }

    cln = ngx_pool_cleanup_add(r->pool, sizeof(ngx_http_smartflow_ctx_t));
    if (cln == NULL) {
        return NULL;
    }

    ctx = cln->data;
    ngx_memzero(ctx, sizeof(ngx_http_smartflow_ctx_t));

    /* the location the client's request is served by */
    ctx->loc_conf = r->loc_conf;

    cln->handler = ngx_http_smartflow_ctx_cleanup;

    ngx_http_set_ctx(r, ctx, ngx_http_smartflow_proxy_module);

    return ctx;
}


static void
ngx_http_smartflow_ctx_cleanup(void *data)
{
    ngx_http_smartflow_ctx_t  *ctx = data;

    /* the context lives in the pool; the handler marks it */

    if (ctx->pool) {
        ngx_destroy_pool(ctx->pool);
        ctx->pool = NULL;
    }

    if (ctx->event_pool) {
        ngx_destroy_pool(ctx->event_pool);
        ctx->event_pool = NULL;
    }
}


/*
 * The pool of the request's JSON trees, their text and the bodies written
 * from them: one block of NGX_HTTP_SMARTFLOW_POOL_SIZE, where the request
 * pool (4 KB by default) would grow by several blocks, a malloc and a free
 * each.  It is freed by the context's cleanup, which the request pool
 * runs after every cleanup added later, such as the upstream's.
 */
ngx_pool_t *
ngx_http_smartflow_pool(ngx_http_request_t *r, ngx_http_smartflow_ctx_t *ctx)
{
    if (ctx->pool == NULL) {
        ctx->pool = ngx_create_pool(NGX_HTTP_SMARTFLOW_POOL_SIZE,
                                    r->connection->log);
    }

    return ctx->pool;
}


/*
 * Records why a request is refused, logs it for the operator, and returns
 * the status; the error location turns the record into the client's JSON.
 */
ngx_int_t
ngx_http_smartflow_error(ngx_http_request_t *r, ngx_uint_t status,
    char *type, char *code, char *param, const char *fmt, ...)
{
    u_char                    *p;
    va_list                    args;
    ngx_uint_t                 level;
    ngx_http_smartflow_ctx_t  *ctx;
    u_char                     buf[NGX_MAX_ERROR_STR];

    va_start(args, fmt);
    p = ngx_vslprintf(buf, buf + sizeof(buf), fmt, args);
    va_end(args);

    /*
     * a request without credentials is routine (nginx's auth_basic does
     * not log it either, and "satisfy any" may still let it through)
     */
    level = (status == NGX_HTTP_UNAUTHORIZED && code
             && ngx_strcmp(code, "missing_api_key") == 0)
            ? NGX_LOG_INFO : NGX_LOG_ERR;

    ngx_log_error(level, r->connection->log, 0,
                  "smartflow proxy: %*s (status %ui%s%s)",
                  p - buf, buf, status, code ? ", code " : "",
                  code ? code : "");

    ctx = ngx_http_smartflow_create_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->err_status = status;
    ctx->err_message.len = p - buf;
    ctx->err_message.data = ngx_pnalloc(r->pool, p - buf);
    if (ctx->err_message.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(ctx->err_message.data, buf, p - buf);

    ctx->err_type.data = (u_char *) type;
    ctx->err_type.len = type ? ngx_strlen(type) : 0;
    ctx->err_code.data = (u_char *) code;
    ctx->err_code.len = code ? ngx_strlen(code) : 0;
    ctx->err_param.data = (u_char *) param;
    ctx->err_param.len = param ? ngx_strlen(param) : 0;

    return status;
}


/*
 * Sends a whole response from memory: JSON with its length, or an SSE
 * stream (chunked, flushed) as the providers send theirs.
 */
ngx_int_t
ngx_http_smartflow_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_uint_t sse, ngx_str_t *body)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    r->headers_out.status = status;

    if (sse) {
        ngx_str_set(&r->headers_out.content_type, "text/event-stream");
        r->headers_out.content_length_n = -1;

    } else {
        ngx_str_set(&r->headers_out.content_type, "application/json");
        r->headers_out.content_length_n = body->len;
    }

    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = NULL;

    ngx_http_clear_accept_ranges(r);
    ngx_http_clear_last_modified(r);
    ngx_http_clear_etag(r);

    if (r->method == NGX_HTTP_HEAD || body->len == 0) {
        r->header_only = 1;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = body->data;
    b->last = body->data + body->len;
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;
    b->flush = sse;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/* the value of a header by name, any case; the first non-empty one */
ngx_str_t *
ngx_http_smartflow_header_in(ngx_list_t *headers, char *name)
{
    size_t            len;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    len = ngx_strlen(name);
    part = &headers->part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return NULL;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == len && h[i].value.len
            && ngx_strncasecmp(h[i].key.data, (u_char *) name, len) == 0)
        {
            return &h[i].value;
        }
    }
}


/*
 * SHA-256 of one short string, on every request: the digest is fetched
 * from OpenSSL's providers once per process, not looked up per call.
 */
ngx_int_t
ngx_smartflow_sha256(u_char *data, size_t len, u_char *out)
{
    unsigned int  n;

    static EVP_MD      *md;
    static EVP_MD_CTX  *mdctx;

    if (md == NULL) {
        md = EVP_MD_fetch(NULL, "SHA256", NULL);
        mdctx = EVP_MD_CTX_new();

        if (md == NULL || mdctx == NULL) {
            EVP_MD_free(md);
            EVP_MD_CTX_free(mdctx);
            md = NULL;
            mdctx = NULL;
            return NGX_ERROR;
        }
    }

    if (EVP_DigestInit_ex(mdctx, md, NULL) != 1
        || EVP_DigestUpdate(mdctx, data, len) != 1
        || EVP_DigestFinal_ex(mdctx, out, &n) != 1)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_smartflow_register_stage(ngx_conf_t *cf, ngx_uint_t order,
    ngx_http_smartflow_stage_pt handler)
{
    ngx_uint_t                       i;
    ngx_http_smartflow_stage_t      *st, *s;
    ngx_http_smartflow_main_conf_t  *smcf;

    smcf = ngx_http_conf_get_module_main_conf(cf,
                                              ngx_http_smartflow_proxy_module);
    if (smcf == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow: load ngx_http_smartflow_proxy_module "
                           "before the other smartflow modules");
        return NGX_ERROR;
    }

    st = ngx_array_push(&smcf->stages);
    if (st == NULL) {
        return NGX_ERROR;
    }

    /* keep the array sorted by order, whatever the load order */
    s = smcf->stages.elts;

    for (i = smcf->stages.nelts - 1; i > 0 && s[i - 1].order > order; i--) {
        s[i] = s[i - 1];
    }

    s[i].order = order;
    s[i].handler = handler;

    return NGX_OK;
}


ngx_int_t
ngx_http_smartflow_register_tap(ngx_conf_t *cf,
    ngx_http_smartflow_tap_pt handler)
{
    ngx_http_smartflow_tap_pt       *tap;
    ngx_http_smartflow_main_conf_t  *smcf;

    smcf = ngx_http_conf_get_module_main_conf(cf,
                                              ngx_http_smartflow_proxy_module);
    if (smcf == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow: load ngx_http_smartflow_proxy_module "
                           "before the other smartflow modules");
        return NGX_ERROR;
    }

    tap = ngx_array_push(&smcf->taps);
    if (tap == NULL) {
        return NGX_ERROR;
    }

    *tap = handler;

    return NGX_OK;
}


static ngx_int_t
ngx_http_smartflow_str_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t                 *s;
    ngx_http_smartflow_ctx_t  *ctx;

    ctx = ngx_http_smartflow_get_ctx(r);

    if (ctx == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    s = (ngx_str_t *) ((char *) ctx + data);

    v->data = s->data;
    v->len = s->len;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


static ngx_int_t
ngx_http_smartflow_upstream_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t                      *s, cred;
    ngx_http_smartflow_ctx_t       *ctx;
    ngx_http_smartflow_provider_t  *pr;

    static ngx_str_t  empty = ngx_null_string;

    ctx = ngx_http_smartflow_get_ctx(r);

    if (ctx == NULL || ctx->provider == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    pr = ctx->provider;

    if ((data == 2 || data == 3 || data == 6)
        && ngx_http_smartflow_wipe_upstream(r, ctx) != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* a credential set through the admin API wins over the configured */
    if ((data == 2 && pr->type == NGX_HTTP_SMARTFLOW_PROVIDER_OPENAI)
        || (data == 3 && pr->type == NGX_HTTP_SMARTFLOW_PROVIDER_ANTHROPIC)
        || (data == 6 && pr->type == NGX_HTTP_SMARTFLOW_PROVIDER_GEMINI))
    {
        switch (ngx_http_smartflow_credentials_get(r, pr, &cred)) {

        case NGX_OK:
            v->data = cred.data;
            v->len = cred.len;
            v->valid = 1;
            v->no_cacheable = 1;
            v->not_found = 0;
            return NGX_OK;

        case NGX_ERROR:
            return NGX_ERROR;

        default:
            break;
        }
    }

    switch (data) {
    case 0: s = &pr->upstream; break;
    case 1: s = &pr->host; break;
    case 2: s = &pr->auth; break;
    case 3: s = (pr->type == NGX_HTTP_SMARTFLOW_PROVIDER_GEMINI)
                ? &empty : &pr->api_key; break;
    case 4: s = &pr->name; break;
    case 6: s = (pr->type == NGX_HTTP_SMARTFLOW_PROVIDER_GEMINI)
                ? &pr->api_key : &empty; break;
    default: s = &ctx->route->pattern; break;
    }

    v->data = s->data;
    v->len = s->len;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


static ngx_int_t
ngx_http_smartflow_uint_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char                    *p;
    ngx_http_smartflow_ctx_t  *ctx;

    ctx = ngx_http_smartflow_get_ctx(r);

    if (ctx == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    v->data = p;
    v->len = ngx_sprintf(p, "%ui", *(ngx_uint_t *) ((char *) ctx + data)) - p;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


static ngx_int_t
ngx_http_smartflow_stream_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_smartflow_ctx_t  *ctx;

    ctx = ngx_http_smartflow_get_ctx(r);

    if (ctx == NULL || ctx->json == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->data = (u_char *) (ctx->stream ? "1" : "0");
    v->len = 1;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


/*
 * The anthropic-version header for an Anthropic provider: the client's
 * own when it speaks Anthropic, else the version the translation targets.
 */
static ngx_int_t
ngx_http_smartflow_anthropic_version_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t                 *h;
    ngx_http_smartflow_ctx_t  *ctx;

    ctx = ngx_http_smartflow_get_ctx(r);

    if (ctx == NULL
        || ctx->wire_format != NGX_HTTP_SMARTFLOW_FORMAT_ANTHROPIC
        || ctx->provider == NULL)
    {
        v->not_found = 1;
        return NGX_OK;
    }

    v->data = (u_char *) "2023-06-01";
    v->len = sizeof("2023-06-01") - 1;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    if (ctx->client_format != NGX_HTTP_SMARTFLOW_FORMAT_ANTHROPIC) {
        return NGX_OK;
    }

    h = ngx_http_smartflow_header_in(&r->headers_in.headers,
                                     "anthropic-version");
    if (h) {
        v->data = h->data;
        v->len = h->len;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_smartflow_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_smartflow_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


static void *
ngx_http_smartflow_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_smartflow_main_conf_t  *smcf;

    smcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_smartflow_main_conf_t));
    if (smcf == NULL) {
        return NULL;
    }

    smcf->balance = NGX_CONF_UNSET_UINT;
    smcf->max_attempts = NGX_CONF_UNSET_UINT;
    smcf->breaker_failures = NGX_CONF_UNSET_UINT;
    smcf->breaker_cooldown = NGX_CONF_UNSET;

    if (ngx_array_init(&smcf->providers, cf->pool, 4, sizeof(void *))
        != NGX_OK
        || ngx_array_init(&smcf->routes, cf->pool, 8, sizeof(void *))
           != NGX_OK
        || ngx_array_init(&smcf->wildcards, cf->pool, 4, sizeof(void *))
           != NGX_OK
        || ngx_array_init(&smcf->taps, cf->pool, 4,
                          sizeof(ngx_http_smartflow_tap_pt)) != NGX_OK
        || ngx_array_init(&smcf->stages, cf->pool, 4,
                          sizeof(ngx_http_smartflow_stage_t))
           != NGX_OK
        || ngx_array_init(&smcf->prices, cf->pool, 4,
                          sizeof(ngx_smartflow_price_t))
           != NGX_OK)
    {
        return NULL;
    }

    return smcf;
}


static char *
ngx_http_smartflow_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_smartflow_main_conf_t *smcf = conf;

    ngx_conf_init_uint_value(smcf->balance,
                             NGX_HTTP_SMARTFLOW_BALANCE_WEIGHTED);
    ngx_conf_init_uint_value(smcf->max_attempts, 3);
    ngx_conf_init_uint_value(smcf->breaker_failures, 5);
    ngx_conf_init_value(smcf->breaker_cooldown, 30);

    if (ngx_http_smartflow_routes_init(cf, smcf) != NGX_OK
        || ngx_http_smartflow_credentials_check(cf, smcf) != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* in the master once the configuration is read: the state folders */
static ngx_int_t
ngx_http_smartflow_init_module(ngx_cycle_t *cycle)
{
    if (ngx_http_smartflow_keys_init_module(cycle) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_smartflow_credentials_init_module(cycle);
}


/*
 * A gateway's request takes blocks of 4 KB and more from malloc: bodies
 * written again, redacted text, answers assembled.  With glibc's
 * defaults, the frees at the end of a burst of requests leave more than
 * 128 KB free at the heap's top, which glibc gives back to the kernel;
 * the next burst takes it back a page fault at a time, which costs as
 * much as a detector's pass.  A worker keeps up to
 * NGX_HTTP_SMARTFLOW_HEAP_KEEP free instead.  Setting it turns off
 * glibc's own moving threshold for mapping large blocks on their own, so
 * that one is set too, where glibc's would settle after a few large
 * frees.
 */
#define NGX_HTTP_SMARTFLOW_HEAP_KEEP   (8 * 1024 * 1024)
#define NGX_HTTP_SMARTFLOW_HEAP_MMAP   (1024 * 1024)

static ngx_int_t
ngx_http_smartflow_init_process(ngx_cycle_t *cycle)
{
#if (NGX_LINUX) && defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__)
    /* another allocator preloaded may not take these: it keeps its own */
    if (mallopt(M_MMAP_THRESHOLD, NGX_HTTP_SMARTFLOW_HEAP_MMAP) == 0
        || mallopt(M_TRIM_THRESHOLD, NGX_HTTP_SMARTFLOW_HEAP_KEEP) == 0)
    {
        ngx_log_error(NGX_LOG_INFO, cycle->log, 0,
                      "smartflow: mallopt() refused, the allocator keeps "
                      "its own thresholds");
    }
#endif

    if (ngx_smartflow_shm_init_process(cycle) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_smartflow_keys_init_process(cycle);
}


static void *
ngx_http_smartflow_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_smartflow_loc_conf_t  *slcf;

    slcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_smartflow_loc_conf_t));
    if (slcf == NULL) {
        return NULL;
    }

    slcf->api = NGX_CONF_UNSET_UINT;
    slcf->stream_max_bytes = NGX_CONF_UNSET;
    slcf->stream_max_time = NGX_CONF_UNSET_MSEC;
    slcf->usage_trailers = NGX_CONF_UNSET;

    return slcf;
}


static char *
ngx_http_smartflow_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_smartflow_loc_conf_t *prev = parent;
    ngx_http_smartflow_loc_conf_t *conf = child;

    ngx_conf_merge_uint_value(conf->api, prev->api,
                              NGX_HTTP_SMARTFLOW_API_NONE);

    /* 0 means no cap */
    ngx_conf_merge_off_value(conf->stream_max_bytes, prev->stream_max_bytes,
                             64 * 1024 * 1024);
    ngx_conf_merge_value(conf->usage_trailers, prev->usage_trailers, 0);
    ngx_conf_merge_msec_value(conf->stream_max_time, prev->stream_max_time,
                              30 * 60 * 1000);

    return NGX_CONF_OK;
}


/* smartflow_master_key KEY | env:VAR; */
static char *
ngx_http_smartflow_master_key(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_smartflow_main_conf_t *smcf = conf;

    char       *env;
    ngx_str_t  *value;

    if (smcf->master_key.data) {
        return "is duplicate";
    }

    value = cf->args->elts;
    smcf->master_key = value[1];

    if (ngx_strncmp(value[1].data, "env:", 4) == 0) {
        env = getenv((char *) value[1].data + 4);

        if (env == NULL || *env == '\0') {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "smartflow_master_key: environment variable "
                               "\"%s\" is not set", value[1].data + 4);
            return NGX_CONF_ERROR;
        }

        smcf->master_key.data = (u_char *) env;
        smcf->master_key.len = ngx_strlen(env);
    }

    if (smcf->master_key.len < 16) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow_master_key must be at least "
                           "16 characters");
        return NGX_CONF_ERROR;
    }

    /* compared by hash: the check takes the same time for any key */
    if (ngx_smartflow_sha256(smcf->master_key.data, smcf->master_key.len,
                             smcf->master_hash)
        != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * smartflow_api chat|completions|embeddings|messages|models|
 *     anthropic_models|health|admin_keys|error|anthropic_error|next|
 *     attempt;
 */
static char *
ngx_http_smartflow_api(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_smartflow_loc_conf_t *slcf = conf;

    ngx_str_t                 *value;
    ngx_conf_enum_t           *e;
    ngx_http_core_loc_conf_t  *clcf;

    if (slcf->api != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    for (e = ngx_http_smartflow_apis; e->name.len; e++) {
        if (e->name.len == value[1].len
            && ngx_strncmp(e->name.data, value[1].data, value[1].len) == 0)
        {
            slcf->api = e->value;
            break;
        }
    }

    if (slcf->api == NGX_CONF_UNSET_UINT) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid smartflow_api \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (slcf->api == NGX_HTTP_SMARTFLOW_API_ADMIN_KEYS) {
        /* the path after the location's prefix names the key */
        if (clcf->named || clcf->noname
#if (NGX_PCRE)
            || clcf->regex
#endif
           )
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "smartflow_api admin_keys needs a prefix "
                               "location");
            return NGX_CONF_ERROR;
        }

        clcf->handler = ngx_http_smartflow_keys_api_handler;

    } else if (slcf->api == NGX_HTTP_SMARTFLOW_API_ADMIN_PROVIDERS) {
        if (clcf->named || clcf->noname
#if (NGX_PCRE)
            || clcf->regex
#endif
           )
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "smartflow_api admin_providers needs a "
                               "prefix location");
            return NGX_CONF_ERROR;
        }

        clcf->handler = ngx_http_smartflow_credentials_handler;

    } else if (slcf->api >= NGX_HTTP_SMARTFLOW_API_MODELS) {
        /* answered by the module itself */
        clcf->handler = ngx_http_smartflow_content_handler;
    }

    return NGX_CONF_OK;
}


/* smartflow_breaker failures=N [cooldown=TIME]; */
static char *
ngx_http_smartflow_breaker(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_smartflow_main_conf_t *smcf = conf;

    ngx_int_t    n;
    ngx_str_t   *value, v;
    ngx_uint_t   i;

    if (smcf->breaker_failures != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "failures=", 9) == 0) {
            n = ngx_atoi(value[i].data + 9, value[i].len - 9);
            if (n <= 0) {
                goto invalid;
            }

            smcf->breaker_failures = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "cooldown=", 9) == 0) {
            v.data = value[i].data + 9;
            v.len = value[i].len - 9;

            smcf->breaker_cooldown = ngx_parse_time(&v, 1);
            if (smcf->breaker_cooldown == (time_t) NGX_ERROR
                || smcf->breaker_cooldown == 0)
            {
                goto invalid;
            }

            continue;
        }

        goto invalid;
    }

    if (smcf->breaker_failures == NGX_CONF_UNSET_UINT) {
        smcf->breaker_failures = 5;
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid smartflow_breaker parameter \"%V\"",
                       &value[i]);
    return NGX_CONF_ERROR;
}


static ngx_int_t
ngx_http_smartflow_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_ACCESS_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_smartflow_access_handler;

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_PRECONTENT_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_smartflow_precontent_handler;

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_smartflow_log_handler;

    if (ngx_http_smartflow_keys_init(cf) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_http_smartflow_cost_init(cf) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_smartflow_filter_init(cf);
}
