/*
 * What the module answers itself: GET /v1/models from the route table,
 * GET /health, and the error location that turns a refusal (the module's
 * own, or nginx's: 413, 502, 504 ...) into the client's JSON error.  Also
 * the LOG phase bookkeeping of provider results behind /health.
 */

#include "ngx_http_smartflow_proxy.h"


static ngx_int_t ngx_http_smartflow_models(ngx_http_request_t *r);
static ngx_int_t ngx_http_smartflow_health(ngx_http_request_t *r);
static ngx_int_t ngx_http_smartflow_error_page(ngx_http_request_t *r);
static u_char *ngx_http_smartflow_json_str(u_char *p, ngx_str_t *s);


typedef struct {
    ngx_uint_t   status;
    char        *type;
    char        *code;
    char        *message;
} ngx_http_smartflow_default_error_t;


static ngx_http_smartflow_default_error_t  ngx_http_smartflow_errors[] = {
    { 400, "invalid_request_error", "bad_request",
      "The request could not be understood." },
    { 401, "invalid_request_error", "invalid_api_key",
      "Authentication is required." },
    { 403, "permission_error", "forbidden",
      "You do not have access to this resource." },
    { 404, "invalid_request_error", "not_found",
      "The requested resource was not found." },
    { 405, "invalid_request_error", "method_not_allowed",
      "This method is not allowed here." },
    { 408, "invalid_request_error", "request_timeout",
      "The request body did not arrive in time." },
    { 409, "invalid_request_error", "conflict",
      "The request conflicts with the current state." },
    { 413, "invalid_request_error", "request_too_large",
      "The request body is larger than this endpoint accepts." },
    { 429, "rate_limit_error", "rate_limit_exceeded",
      "Too many requests." },
    { 500, "api_error", "internal_error",
      "The gateway failed to process the request." },
    { 502, "api_error", "upstream_unreachable",
      "The provider could not be reached." },
    { 503, "api_error", "service_unavailable",
      "The service is temporarily unavailable." },
    { 504, "api_error", "upstream_timeout",
      "The provider did not answer in time." },
    { 0, "api_error", "error", "The request failed." }
};


static time_t  ngx_http_smartflow_started;


ngx_int_t
ngx_http_smartflow_content_handler(ngx_http_request_t *r)
{
    ngx_int_t                       rc;
    ngx_http_smartflow_loc_conf_t  *slcf;

    slcf = ngx_http_get_module_loc_conf(r, ngx_http_smartflow_proxy_module);

    if (slcf->api == NGX_HTTP_SMARTFLOW_API_ERROR) {
        return ngx_http_smartflow_error_page(r);
    }

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return ngx_http_smartflow_error(r, NGX_HTTP_NOT_ALLOWED,
                   "invalid_request_error", "method_not_allowed", NULL,
                   "Method %V is not allowed here; use GET.",
                   &r->method_name);
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (ngx_http_smartflow_started == 0) {
        ngx_http_smartflow_started = ngx_time();
    }

    if (slcf->api == NGX_HTTP_SMARTFLOW_API_MODELS) {
        return ngx_http_smartflow_models(r);
    }

    return ngx_http_smartflow_health(r);
}


static ngx_int_t
ngx_http_smartflow_models(ngx_http_request_t *r)
{
    size_t                           len;
    u_char                          *p;
    ngx_str_t                        json;
    ngx_uint_t                       i;
    ngx_http_smartflow_route_t     **rt;
    ngx_http_smartflow_main_conf_t  *smcf;

    smcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_proxy_module);
    rt = smcf->routes.elts;

    len = sizeof("{\"object\":\"list\",\"data\":[]}") - 1;

    for (i = 0; i < smcf->routes.nelts; i++) {
        len += sizeof("{\"id\":,\"object\":\"model\",\"created\":,"
                      "\"owned_by\":},") - 1
               + 2 + ngx_smartflow_json_escape_len(rt[i]->pattern.data,
                                                   rt[i]->pattern.len)
               + NGX_TIME_T_LEN
               + 2 + ngx_smartflow_json_escape_len(
                         rt[i]->provider->name.data,
                         rt[i]->provider->name.len);
    }

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json.data = p;
    p = ngx_sf_cpymem(p, "{\"object\":\"list\",\"data\":[");

    for (i = 0; i < smcf->routes.nelts; i++) {
        if (i) {
            *p++ = ',';
        }

        p = ngx_sf_cpymem(p, "{\"id\":");
        p = ngx_http_smartflow_json_str(p, &rt[i]->pattern);
        p = ngx_sprintf(p, ",\"object\":\"model\",\"created\":%T,"
                           "\"owned_by\":", ngx_http_smartflow_started);
        p = ngx_http_smartflow_json_str(p, &rt[i]->provider->name);
        *p++ = '}';
    }

    *p++ = ']';
    *p++ = '}';
    json.len = p - json.data;

    return ngx_http_smartflow_send_json(r, NGX_HTTP_OK, &json);
}


static ngx_int_t
ngx_http_smartflow_health(ngx_http_request_t *r)
{
    size_t                            len;
    u_char                           *p;
    ngx_str_t                         json;
    ngx_uint_t                        i, down, failures;
    ngx_slab_pool_t                  *shpool;
    ngx_http_smartflow_provider_t   **pr;
    ngx_smartflow_provider_stats_t   *st;
    ngx_http_smartflow_main_conf_t   *smcf;

    static char  *types[] = { "openai", "anthropic", "gemini", "echo" };

    smcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_proxy_module);
    pr = smcf->providers.elts;

    len = 256 + smcf->providers.nelts * (256 + 2 * NGX_ATOMIC_T_LEN);

    if (smcf->zone) {
        len += smcf->zone->shm.name.len * 2;
    }

    for (i = 0; i < smcf->providers.nelts; i++) {
        len += 2 * (pr[i]->name.len + pr[i]->upstream.len);
    }

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json.data = p;
    down = 0;

    p = ngx_sf_cpymem(p, "{\"providers\":[");

    for (i = 0; i < smcf->providers.nelts; i++) {
        st = pr[i]->stats;
        failures = st ? st->consecutive_failures : 0;

        if (failures >= 3) {
            down++;
        }

        p = ngx_cpymem(p, i ? ",{\"name\":" : "{\"name\":", i ? 9 : 8);
        p = ngx_http_smartflow_json_str(p, &pr[i]->name);
        p = ngx_sprintf(p, ",\"type\":\"%s\",\"upstream\":",
                        types[pr[i]->type]);
        p = ngx_http_smartflow_json_str(p, &pr[i]->upstream);
        p = ngx_sprintf(p, ",\"state\":\"%s\"",
                        st == NULL ? "unknown"
                        : failures >= 3 ? "down"
                        : failures ? "degraded" : "up");

        if (st) {
            p = ngx_sprintf(p, ",\"requests\":%uA,\"failures\":%uA,"
                               "\"last_status\":%uA",
                            st->requests, st->failures, st->last_status);
        }

        *p++ = '}';
    }

    p = ngx_sprintf(p, "],\"status\":\"%s\",\"version\":\"%s\",\"zones\":[",
                    down ? "degraded" : "ok", NGX_SMARTFLOW_VERSION);

    if (smcf->zone && smcf->zone->shm.addr) {
        shpool = (ngx_slab_pool_t *) smcf->zone->shm.addr;

        p = ngx_sf_cpymem(p, "{\"name\":");
        p = ngx_http_smartflow_json_str(p, &smcf->zone->shm.name);
        p = ngx_sprintf(p, ",\"size\":%uz,\"free_pages\":%ui}",
                        smcf->zone->shm.size, shpool->pfree);
    }

    *p++ = ']';
    *p++ = '}';
    json.len = p - json.data;

    return ngx_http_smartflow_send_json(r, NGX_HTTP_OK, &json);
}


static ngx_int_t
ngx_http_smartflow_error_page(ngx_http_request_t *r)
{
    size_t                               len;
    u_char                              *p;
    ngx_str_t                            json, type, code, message, param;
    ngx_uint_t                           status;
    ngx_http_smartflow_ctx_t            *ctx;
    ngx_http_smartflow_default_error_t  *e;

    /*
     * nginx leaves an unread body to the error_page target: a refusal in
     * the access phase would otherwise leave it to be read as the next
     * request on a keepalive connection
     */
    if (ngx_http_discard_request_body(r) != NGX_OK) {
        r->keepalive = 0;
    }

    ctx = ngx_http_smartflow_get_ctx(r);

    status = r->err_status ? r->err_status
             : (ctx && ctx->err_status) ? ctx->err_status
             : NGX_HTTP_NOT_FOUND;

    for (e = ngx_http_smartflow_errors; e->status; e++) {
        if (e->status == status) {
            break;
        }
    }

    type.data = (u_char *) e->type;
    type.len = ngx_strlen(e->type);
    code.data = (u_char *) e->code;
    code.len = ngx_strlen(e->code);
    message.data = (u_char *) e->message;
    message.len = ngx_strlen(e->message);
    ngx_str_null(&param);

    if (ctx && ctx->err_status == status) {
        /* the module's own refusal, with its own words */
        type = ctx->err_type;
        code = ctx->err_code;
        message = ctx->err_message;
        param = ctx->err_param;

    } else if (ctx) {
        /* nginx's own refusal: keep its code for the audit record */
        ctx->err_status = status;
        ctx->err_code = code;
    }

    if (ctx && ctx->provider && status >= NGX_HTTP_BAD_GATEWAY
        && message.data == (u_char *) e->message)
    {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "smartflow proxy: provider \"%V\" failed for model "
                      "\"%V\" (status %ui)", &ctx->provider->name,
                      &ctx->model, status);

        p = ngx_pnalloc(r->pool, message.len + ctx->provider->name.len + 32);
        if (p == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        message.len = ngx_sprintf(p, "%*s (provider \"%V\").",
                                  message.len - 1, message.data,
                                  &ctx->provider->name)
                      - p;
        message.data = p;
    }

    len = sizeof("{\"error\":{\"message\":,\"type\":,\"param\":,"
                 "\"code\":}}") - 1
          + 2 + ngx_smartflow_json_escape_len(message.data, message.len)
          + 2 + type.len
          + 4 + param.len
          + 4 + code.len;

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json.data = p;
    p = ngx_sf_cpymem(p, "{\"error\":{\"message\":");
    p = ngx_http_smartflow_json_str(p, &message);
    p = ngx_sf_cpymem(p, ",\"type\":");
    p = ngx_http_smartflow_json_str(p, &type);
    p = ngx_sf_cpymem(p, ",\"param\":");
    p = param.len ? ngx_http_smartflow_json_str(p, &param)
                  : ngx_sf_cpymem(p, "null");
    p = ngx_sf_cpymem(p, ",\"code\":");
    p = code.len ? ngx_http_smartflow_json_str(p, &code)
                 : ngx_sf_cpymem(p, "null");
    *p++ = '}';
    *p++ = '}';
    json.len = p - json.data;

    r->err_status = 0;

    return ngx_http_smartflow_send_json(r, status, &json);
}


ngx_int_t
ngx_http_smartflow_log_handler(ngx_http_request_t *r)
{
    ngx_uint_t                   status, failed;
    ngx_http_upstream_state_t   *state;
    ngx_http_smartflow_ctx_t    *ctx;

    ctx = ngx_http_smartflow_get_ctx(r);

    if (ctx == NULL || ctx->provider == NULL || ctx->provider->stats == NULL
        || !ctx->pipeline_done || ctx->counted)
    {
        return NGX_OK;
    }

    ctx->counted = 1;

    if (ctx->provider->type == NGX_HTTP_SMARTFLOW_PROVIDER_ECHO) {
        ngx_smartflow_shm_provider_result(ctx->provider,
                                          r->headers_out.status, 0);
        return NGX_OK;
    }

    if (r->upstream_states == NULL || r->upstream_states->nelts == 0) {
        /* refused before it left, or answered by a stage */
        return NGX_OK;
    }

    state = r->upstream_states->elts;
    state = &state[r->upstream_states->nelts - 1];
    status = state->status;

    failed = (status == 0 || status >= NGX_HTTP_INTERNAL_SERVER_ERROR);

    ngx_smartflow_shm_provider_result(ctx->provider,
                                      status ? status : NGX_HTTP_BAD_GATEWAY,
                                      failed);

    return NGX_OK;
}


static u_char *
ngx_http_smartflow_json_str(u_char *p, ngx_str_t *s)
{
    *p++ = '"';
    p = ngx_smartflow_json_escape(p, s->data, s->len);
    *p++ = '"';

    return p;
}
