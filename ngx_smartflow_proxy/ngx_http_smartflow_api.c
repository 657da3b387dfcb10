/*
 * What the module answers itself: GET /v1/models from the route table,
 * GET /health, and the error location that turns a refusal (the module's
 * own, or nginx's: 413, 502, 504 ...) into the client's JSON error.  Also
 * the LOG phase bookkeeping of provider results behind /health.
 */

#include "ngx_http_smartflow_proxy.h"


static ngx_int_t ngx_http_smartflow_models(ngx_http_request_t *r,
    ngx_uint_t api);
static ngx_int_t ngx_http_smartflow_health(ngx_http_request_t *r);
static ngx_int_t ngx_http_smartflow_error_page(ngx_http_request_t *r,
    ngx_uint_t api);
static size_t ngx_http_smartflow_health_deployments_len(ngx_array_t *routes);
static u_char *ngx_http_smartflow_health_deployments(u_char *p,
    ngx_array_t *routes, ngx_uint_t first);
static char *ngx_http_smartflow_anthropic_type(ngx_uint_t status);
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

    if (slcf->api == NGX_HTTP_SMARTFLOW_API_NEXT) {
        return ngx_http_smartflow_next(r);
    }

    if (slcf->api == NGX_HTTP_SMARTFLOW_API_ATTEMPT) {
        return ngx_http_smartflow_attempt(r);
    }

    if (slcf->api >= NGX_HTTP_SMARTFLOW_API_ERROR) {
        return ngx_http_smartflow_error_page(r, slcf->api);
    }

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        rc = ngx_http_smartflow_error(r, NGX_HTTP_NOT_ALLOWED,
                 "invalid_request_error", "method_not_allowed", NULL,
                 "Method %V is not allowed here; use GET.",
                 &r->method_name);

        return ngx_http_smartflow_refuse(r, rc,
                   slcf->api == NGX_HTTP_SMARTFLOW_API_ANTHROPIC_MODELS);
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (ngx_http_smartflow_started == 0) {
        ngx_http_smartflow_started = ngx_time();
    }

    if (slcf->api == NGX_HTTP_SMARTFLOW_API_MODELS
        || slcf->api == NGX_HTTP_SMARTFLOW_API_ANTHROPIC_MODELS)
    {
        return ngx_http_smartflow_models(r, slcf->api);
    }

    return ngx_http_smartflow_health(r);
}


/* the routed models in the client's list format, OpenAI's or Anthropic's */
static ngx_int_t
ngx_http_smartflow_models(ngx_http_request_t *r, ngx_uint_t api)
{
    size_t                           len;
    u_char                          *p;
    ngx_str_t                        json;
    ngx_tm_t                         tm;
    ngx_uint_t                       i, n, anthropic;
    ngx_http_smartflow_route_t     **rt;
    ngx_http_smartflow_main_conf_t  *smcf;

    smcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_proxy_module);
    rt = smcf->routes.elts;
    n = smcf->routes.nelts;
    anthropic = (api == NGX_HTTP_SMARTFLOW_API_ANTHROPIC_MODELS);

    len = 64;

    for (i = 0; i < n; i++) {
        len += sizeof("{\"id\":,\"object\":\"model\",\"created\":,"
                      "\"owned_by\":},") + sizeof("\"first_id\":,")
               + NGX_TIME_T_LEN + sizeof("1970-01-01T00:00:00Z")
               + 3 * (2 + ngx_smartflow_json_escape_len(
                              rt[i]->pattern.data, rt[i]->pattern.len))
               + 2 + ngx_smartflow_json_escape_len(
                         rt[i]->provider->name.data,
                         rt[i]->provider->name.len);
    }

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json.data = p;
    p = anthropic ? ngx_sf_cpymem(p, "{\"data\":[")
                  : ngx_sf_cpymem(p, "{\"object\":\"list\",\"data\":[");

    for (i = 0; i < n; i++) {
        if (i) {
            *p++ = ',';
        }

        if (anthropic) {
            p = ngx_sf_cpymem(p, "{\"type\":\"model\",\"id\":");
            p = ngx_http_smartflow_json_str(p, &rt[i]->pattern);
            p = ngx_sf_cpymem(p, ",\"display_name\":");
            p = ngx_http_smartflow_json_str(p, &rt[i]->pattern);
            p = ngx_sf_cpymem(p, ",\"created_at\":\"");
            ngx_gmtime(ngx_http_smartflow_started, &tm);
            p = ngx_sprintf(p, "%4d-%02d-%02dT%02d:%02d:%02dZ",
                            tm.ngx_tm_year, tm.ngx_tm_mon, tm.ngx_tm_mday,
                            tm.ngx_tm_hour, tm.ngx_tm_min, tm.ngx_tm_sec);
            p = ngx_sf_cpymem(p, "\"}");
            continue;
        }

        p = ngx_sf_cpymem(p, "{\"id\":");
        p = ngx_http_smartflow_json_str(p, &rt[i]->pattern);
        p = ngx_sprintf(p, ",\"object\":\"model\",\"created\":%T,"
                           "\"owned_by\":", ngx_http_smartflow_started);
        p = ngx_http_smartflow_json_str(p, &rt[i]->provider->name);
        *p++ = '}';
    }

    *p++ = ']';

    if (anthropic) {
        p = ngx_sf_cpymem(p, ",\"has_more\":false,\"first_id\":");
        p = n ? ngx_http_smartflow_json_str(p, &rt[0]->pattern)
              : ngx_sf_cpymem(p, "null");
        p = ngx_sf_cpymem(p, ",\"last_id\":");
        p = n ? ngx_http_smartflow_json_str(p, &rt[n - 1]->pattern)
              : ngx_sf_cpymem(p, "null");
    }

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

    len = 256 + smcf->providers.nelts * (256 + 2 * NGX_ATOMIC_T_LEN)
          + ngx_http_smartflow_health_deployments_len(&smcf->routes)
          + ngx_http_smartflow_health_deployments_len(&smcf->wildcards);

    if (smcf->zone) {
        len += ngx_smartflow_json_escape_len(smcf->zone->shm.name.data,
                                             smcf->zone->shm.name.len);
    }

    for (i = 0; i < smcf->providers.nelts; i++) {
        len += ngx_smartflow_json_escape_len(pr[i]->name.data,
                                             pr[i]->name.len)
               + ngx_smartflow_json_escape_len(pr[i]->upstream.data,
                                               pr[i]->upstream.len);
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

    p = ngx_sf_cpymem(p, "],\"deployments\":[");
    p = ngx_http_smartflow_health_deployments(p, &smcf->routes, 0);
    p = ngx_http_smartflow_health_deployments(p, &smcf->wildcards,
                                              smcf->routes.nelts);

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


static size_t
ngx_http_smartflow_health_deployments_len(ngx_array_t *routes)
{
    size_t                        len;
    ngx_uint_t                    i;
    ngx_http_smartflow_route_t  **head, *rt;

    head = routes->elts;
    len = 0;

    for (i = 0; i < routes->nelts; i++) {
        for (rt = head[i]; rt; rt = rt->next) {
            len += 160 + 4 * NGX_ATOMIC_T_LEN
                   + ngx_smartflow_json_escape_len(rt->pattern.data,
                                                   rt->pattern.len)
                   + ngx_smartflow_json_escape_len(rt->name.data,
                                                   rt->name.len);
        }
    }

    return len;
}


/* each deployment's breaker and load; "first" is 0 for the first list */
static u_char *
ngx_http_smartflow_health_deployments(u_char *p, ngx_array_t *routes,
    ngx_uint_t first)
{
    time_t                             now;
    ngx_uint_t                         i, n;
    ngx_http_smartflow_route_t       **head, *rt;
    ngx_smartflow_deployment_stats_t  *st;

    head = routes->elts;
    now = ngx_time();
    n = first;

    for (i = 0; i < routes->nelts; i++) {
        for (rt = head[i]; rt; rt = rt->next) {
            st = rt->stats;

            if (n++) {
                *p++ = ',';
            }

            p = ngx_sf_cpymem(p, "{\"model\":");
            p = ngx_http_smartflow_json_str(p, &rt->pattern);
            p = ngx_sf_cpymem(p, ",\"deployment\":");
            p = ngx_http_smartflow_json_str(p, &rt->name);
            p = ngx_sprintf(p, ",\"fallback\":%s,\"weight\":%ui",
                            rt->fallback ? "true" : "false", rt->weight);

            if (st) {
                p = ngx_sprintf(p, ",\"breaker\":\"%s\",\"in_flight\":%A,"
                                   "\"requests\":%uA,\"failures\":%uA",
                                st->open_until == 0 ? "closed"
                                : (time_t) st->open_until > now ? "open"
                                : "half-open",
                                (ngx_atomic_int_t) st->in_flight,
                                st->requests, st->failures);
            }

            *p++ = '}';
        }
    }

    return p;
}


static ngx_int_t
ngx_http_smartflow_error_page(ngx_http_request_t *r, ngx_uint_t api)
{
    ngx_uint_t                 status;
    ngx_http_smartflow_ctx_t  *ctx;

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

    r->err_status = 0;

    if (ctx) {
        ngx_http_smartflow_client_location(r, ctx);
    }

    return ngx_http_smartflow_refuse(r, status,
                               api == NGX_HTTP_SMARTFLOW_API_ANTHROPIC_ERROR);
}


/*
 * Sends a refusal as the client's JSON error: the module's own, recorded
 * by ngx_http_smartflow_error() with its own words, or nginx's (413, 502,
 * 504 ...) with the words of the table above.  Anthropic's format when
 * the client speaks it (or, before anything is known of the client, when
 * the location says so).
 */
ngx_int_t
ngx_http_smartflow_refuse(ngx_http_request_t *r, ngx_uint_t status,
    ngx_uint_t anthropic)
{
    size_t                               len;
    u_char                              *p;
    ngx_int_t                            rc;
    ngx_str_t                            json, type, code, message, param;
    ngx_uint_t                           level;
    ngx_http_smartflow_ctx_t            *ctx;
    ngx_http_smartflow_default_error_t  *e;

    ctx = ngx_http_smartflow_get_ctx(r);

    if (ctx) {
        anthropic = (ctx->client_format
                     == NGX_HTTP_SMARTFLOW_FORMAT_ANTHROPIC);
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

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
        /* the module's own refusal, with its own words, logged already */
        type = ctx->err_type;
        code = ctx->err_code;
        message = ctx->err_message;
        param = ctx->err_param;

    } else {
        /* nginx's own refusal (413, 502, 504 ...): say it once, for both */
        if (ctx && ctx->provider && status >= NGX_HTTP_BAD_GATEWAY) {
            p = ngx_pnalloc(r->pool,
                            message.len + ctx->provider->name.len + 32);
            if (p == NULL) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            message.len = ngx_sprintf(p, "%*s (provider \"%V\").",
                                      message.len - 1, message.data,
                                      &ctx->provider->name)
                          - p;
            message.data = p;

            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "smartflow proxy: provider \"%V\" failed for "
                          "model \"%V\" (status %ui), code %V",
                          &ctx->provider->name, &ctx->model, status, &code);

        } else {
            /* nginx logs a client's mistakes itself where they matter */
            level = (status >= NGX_HTTP_INTERNAL_SERVER_ERROR)
                    ? NGX_LOG_ERR : NGX_LOG_INFO;

            ngx_log_error(level, r->connection->log, 0,
                          "smartflow proxy: %V (status %ui, code %V)",
                          &message, status, &code);
        }

        if (ctx) {
            /* kept for the audit record */
            ctx->err_status = status;
            ctx->err_code = code;
        }
    }

    if (anthropic) {
        /* Anthropic names its error types by status, not by cause */
        type.data = (u_char *) ngx_http_smartflow_anthropic_type(status);
        type.len = ngx_strlen(type.data);
    }

    /* every string is escaped: a parameter may be a client's field name */
    len = sizeof("{\"type\":\"error\",\"error\":{\"message\":,\"type\":,"
                 "\"param\":,\"code\":}}") - 1
          + 2 + ngx_smartflow_json_escape_len(message.data, message.len)
          + 2 + ngx_smartflow_json_escape_len(type.data, type.len)
          + 4 + ngx_smartflow_json_escape_len(param.data, param.len)
          + 4 + ngx_smartflow_json_escape_len(code.data, code.len);

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json.data = p;

    if (anthropic) {
        p = ngx_sf_cpymem(p, "{\"type\":\"error\",\"error\":{\"type\":");
        p = ngx_http_smartflow_json_str(p, &type);
        p = ngx_sf_cpymem(p, ",\"message\":");
        p = ngx_http_smartflow_json_str(p, &message);

    } else {
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
    }

    *p++ = '}';
    *p++ = '}';
    json.len = p - json.data;

    if (ctx) {
        /* a refusal of the gateway's own: not a provider answer */
        ctx->own_response = 1;
    }

    return ngx_http_smartflow_send_json(r, status, &json);
}


ngx_int_t
ngx_http_smartflow_log_handler(ngx_http_request_t *r)
{
    ngx_uint_t                  status, failed;
    ngx_http_upstream_state_t  *state;
    ngx_http_smartflow_ctx_t   *ctx;

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
        ngx_http_smartflow_attempt_result(r, ctx, r->headers_out.status, 0);
        return NGX_OK;
    }

    if (!ctx->dispatched) {
        /*
         * refused before it left, answered by a stage, or refused by the
         * next deployment after @smartflow_next counted the one before
         */
        return NGX_OK;
    }

    ctx->dispatched = 0;

    if (ctx->route->stats) {
        (void) ngx_atomic_fetch_add(&ctx->route->stats->in_flight, -1);
    }

    if (r->upstream_states == NULL
        || r->upstream_states->nelts <= ctx->states)
    {
        /* it never reached the upstream module */
        return NGX_OK;
    }

    state = r->upstream_states->elts;
    state = &state[r->upstream_states->nelts - 1];
    status = state->status;

    if (status == 0
        && (r->connection->error
            || r->headers_out.status == NGX_HTTP_CLIENT_CLOSED_REQUEST))
    {
        /* the client left before the answer began: no word on its health */
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "smartflow proxy: the client closed the request "
                      "before deployment \"%V\" answered for model \"%V\", "
                      "not counted", &ctx->route->name, &ctx->model);
        return NGX_OK;
    }

    if (ctx->json_failed) {
        /* its answer could not be read: the client got a 502 for it */
        status = NGX_HTTP_BAD_GATEWAY;
    }

    failed = (status == 0 || status >= NGX_HTTP_INTERNAL_SERVER_ERROR);

    ngx_smartflow_shm_provider_result(ctx->provider,
                                      status ? status : NGX_HTTP_BAD_GATEWAY,
                                      failed);

    ngx_http_smartflow_attempt_result(r, ctx, status, 0);

    return NGX_OK;
}


static char *
ngx_http_smartflow_anthropic_type(ngx_uint_t status)
{
    switch (status) {
    case NGX_HTTP_UNAUTHORIZED:
        return "authentication_error";
    case NGX_HTTP_FORBIDDEN:
        return "permission_error";
    case NGX_HTTP_NOT_FOUND:
        return "not_found_error";
    case NGX_HTTP_REQUEST_ENTITY_TOO_LARGE:
        return "request_too_large";
    case NGX_HTTP_TOO_MANY_REQUESTS:
        return "rate_limit_error";
    case 529:
        return "overloaded_error";
    default:
        return status >= NGX_HTTP_INTERNAL_SERVER_ERROR
               ? "api_error" : "invalid_request_error";
    }
}


static u_char *
ngx_http_smartflow_json_str(u_char *p, ngx_str_t *s)
{
    *p++ = '"';
    p = ngx_smartflow_json_escape(p, s->data, s->len);
    *p++ = '"';

    return p;
}
