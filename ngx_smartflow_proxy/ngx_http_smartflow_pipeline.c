/*
 * The PRECONTENT pipeline: read the client body without blocking, parse
 * it once, route it, run the stages the other modules registered (policy
 * on the input, then the cache) in their fixed order, and prepare what
 * proxy_pass needs through the $smartflow_* variables.
 */

#include "ngx_http_smartflow_proxy.h"
#include "ngx_http_smartflow_translate.h"


static void ngx_http_smartflow_body_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_smartflow_parse(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx);
static ngx_int_t ngx_http_smartflow_run_stages(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx);
static ngx_int_t ngx_http_smartflow_prepare_upstream(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx);
static void ngx_http_smartflow_pipeline_done(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_int_t rc);
static ngx_int_t ngx_http_smartflow_gemini_uri(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx);
static ngx_int_t ngx_http_smartflow_use(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_http_smartflow_route_t *rt);
static void ngx_http_smartflow_dispatch(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx);
static ngx_int_t ngx_http_smartflow_hold_probe(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_http_smartflow_route_t *rt,
    time_t claim);
static void ngx_http_smartflow_probe_cleanup(void *data);
static void ngx_http_smartflow_attempt_timeout(ngx_event_t *ev);
static ngx_int_t ngx_http_smartflow_answer_echo(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx);
static ngx_str_t *ngx_http_smartflow_find_header(ngx_http_request_t *r,
    char *name);
static ngx_str_t *ngx_http_smartflow_upstream_header(ngx_http_request_t *r,
    char *name);


/* by API: the path under an OpenAI-format provider's base */
static ngx_str_t  ngx_http_smartflow_op_paths[] = {
    ngx_null_string,
    ngx_string("/chat/completions"),
    ngx_string("/completions"),
    ngx_string("/embeddings"),
    ngx_string("/chat/completions")
};


/* by provider type: the wire format it speaks */
static ngx_uint_t  ngx_http_smartflow_wire[] = {
    NGX_HTTP_SMARTFLOW_FORMAT_OPENAI,
    NGX_HTTP_SMARTFLOW_FORMAT_ANTHROPIC,
    NGX_HTTP_SMARTFLOW_FORMAT_GEMINI,
    NGX_HTTP_SMARTFLOW_FORMAT_OPENAI
};


ngx_int_t
ngx_http_smartflow_precontent_handler(ngx_http_request_t *r)
{
    ngx_int_t                       rc;
    ngx_http_smartflow_ctx_t       *ctx;
    ngx_http_smartflow_loc_conf_t  *slcf;

    slcf = ngx_http_get_module_loc_conf(r, ngx_http_smartflow_proxy_module);

    if (slcf->api == NGX_HTTP_SMARTFLOW_API_NONE
        || slcf->api >= NGX_HTTP_SMARTFLOW_API_MODELS)
    {
        return NGX_DECLINED;
    }

    ctx = ngx_http_smartflow_create_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ctx->pipeline_done) {
        return ctx->status;
    }

    if (ctx->body_requested) {
        /* re-entered while the body is still arriving */
        return NGX_DONE;
    }

    ctx->api = slcf->api;
    ctx->client_format = ngx_http_smartflow_api_format(slcf->api);

    if (r->method != NGX_HTTP_POST) {
        rc = ngx_http_smartflow_error(r, NGX_HTTP_NOT_ALLOWED,
                 "invalid_request_error", "method_not_allowed", NULL,
                 "Method %V is not allowed here; use POST.",
                 &r->method_name);

        ngx_http_finalize_request(r, ngx_http_smartflow_refuse(r, rc, 0));
        return NGX_DONE;
    }

    ctx->body_requested = 1;
    r->request_body_in_single_buf = 1;

    rc = ngx_http_read_client_request_body(r,
                                           ngx_http_smartflow_body_handler);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        if (rc == NGX_HTTP_REQUEST_ENTITY_TOO_LARGE) {
            return ngx_http_smartflow_error(r, rc, "invalid_request_error",
                       "request_too_large", NULL,
                       "Request body is larger than the %O bytes this "
                       "endpoint accepts.",
                       ((ngx_http_core_loc_conf_t *)
                         ngx_http_get_module_loc_conf(r, ngx_http_core_module))
                       ->client_max_body_size);
        }

        return rc;
    }

    ngx_http_finalize_request(r, NGX_DONE);
    return NGX_DONE;
}


static void
ngx_http_smartflow_body_handler(ngx_http_request_t *r)
{
    ngx_int_t                  rc;
    ngx_http_smartflow_ctx_t  *ctx;

    ctx = ngx_http_smartflow_get_ctx(r);

    rc = ngx_http_smartflow_read_body(r, ctx);

    if (rc == NGX_OK) {
        rc = ngx_http_smartflow_parse(r, ctx);
    }

    if (rc == NGX_OK) {
        ctx->stage = 0;
        rc = ngx_http_smartflow_run_stages(r, ctx);
    }

    if (rc == NGX_AGAIN) {
        /* a stage waits; it resumes the pipeline */
        return;
    }

    ngx_http_smartflow_pipeline_done(r, ctx, rc);
}


void
ngx_http_smartflow_pipeline_resume(ngx_http_request_t *r)
{
    ngx_int_t                  rc;
    ngx_http_smartflow_ctx_t  *ctx;

    ctx = ngx_http_smartflow_get_ctx(r);

    rc = ngx_http_smartflow_run_stages(r, ctx);

    if (rc != NGX_AGAIN) {
        ngx_http_smartflow_pipeline_done(r, ctx, rc);
    }
}


static void
ngx_http_smartflow_pipeline_done(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_int_t rc)
{
    ngx_str_t  name;

    ctx->pipeline_done = 1;

    if (rc == NGX_OK) {
        /* the stages let it through: to proxy_pass or the echo provider */
        rc = ngx_http_smartflow_prepare_upstream(r, ctx);

        if (rc == NGX_OK
            && ctx->provider->type == NGX_HTTP_SMARTFLOW_PROVIDER_ECHO)
        {
            ngx_http_finalize_request(r, ngx_http_smartflow_answer_echo(r,
                                                                     ctx));
            return;
        }

        if (rc == NGX_OK) {
            ngx_http_smartflow_dispatch(r, ctx);
            rc = ngx_http_smartflow_attempt_timer(r, ctx);
        }

        if (rc == NGX_OK && ctx->nplan > 1) {
            /* a failure may go on to the next deployment: intercept it */
            ngx_str_set(&name, "@smartflow_try");

            /*
             * each later attempt starts again with this redirect budget,
             * and runs with the configuration of the client's location
             * (ctx->loc_conf)
             */
            ctx->uri_changes = r->uri_changes;

            r->preserve_body = 1;
            (void) ngx_http_named_location(r, &name);
            ngx_http_finalize_request(r, NGX_DONE);
            return;
        }
    }

    if (rc == NGX_DONE) {
        /* a stage has answered the request itself */
        return;
    }

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        /*
         * the refusal is answered here, not through error_page: with
         * fallbacks, error_page serves the provider's failures instead
         */
        ngx_http_finalize_request(r, ngx_http_smartflow_refuse(r, rc, 0));
        return;
    }

    ctx->status = (rc == NGX_OK) ? NGX_DECLINED : rc;

    r->preserve_body = 1;
    r->write_event_handler = ngx_http_core_run_phases;
    ngx_http_core_run_phases(r);
}


/* the client body as one string, also for the admin API */
ngx_int_t
ngx_http_smartflow_read_body(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx)
{
    size_t        len;
    ssize_t       n;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        ngx_str_null(&ctx->body);
        return NGX_OK;
    }

    cl = r->request_body->bufs;

    if (cl->next == NULL && !cl->buf->in_file) {
        /* the usual case: one buffer in memory, used in place */
        ctx->body.data = cl->buf->pos;
        ctx->body.len = cl->buf->last - cl->buf->pos;
        return NGX_OK;
    }

    len = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;
        len += b->in_file ? (size_t) (b->file_last - b->file_pos)
                          : (size_t) (b->last - b->pos);
    }

    ctx->body.data = ngx_pnalloc(r->pool, len ? len : 1);
    if (ctx->body.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->body.len = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;

        if (!b->in_file) {
            ctx->body.len = ngx_cpymem(ctx->body.data + ctx->body.len,
                                       b->pos, b->last - b->pos)
                            - ctx->body.data;
            continue;
        }

        /* a body larger than client_body_buffer_size, in a local file */
        n = ngx_read_file(b->file, ctx->body.data + ctx->body.len,
                          b->file_last - b->file_pos, b->file_pos);

        if (n != b->file_last - b->file_pos) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "smartflow proxy: reading the buffered body "
                          "failed");
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ctx->body.len += n;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_smartflow_parse(ngx_http_request_t *r, ngx_http_smartflow_ctx_t *ctx)
{
    char                            *field;
    time_t                           held;
    ngx_int_t                        rc;
    ngx_str_t                        err, *force;
    ngx_smartflow_json_t            *j, *model;
    ngx_http_smartflow_route_t      *head;
    ngx_http_smartflow_main_conf_t  *smcf;

    if (ctx->body.len == 0) {
        return ngx_http_smartflow_error(r, NGX_HTTP_BAD_REQUEST,
                   "invalid_request_error", "invalid_json", NULL,
                   "The request body is empty; a JSON object is expected.");
    }

    j = ngx_smartflow_json_parse(r->pool, ctx->body.data, ctx->body.len,
                                 &err);
    if (j == NULL) {
        return ngx_http_smartflow_error(r, NGX_HTTP_BAD_REQUEST,
                   "invalid_request_error", "invalid_json", NULL,
                   "We could not parse the JSON body of your request: %V.",
                   &err);
    }

    if (j->type != NGX_SMARTFLOW_JSON_OBJECT) {
        return ngx_http_smartflow_error(r, NGX_HTTP_BAD_REQUEST,
                   "invalid_request_error", "invalid_json", NULL,
                   "The request body must be a JSON object.");
    }

    ctx->json = j;

    model = ngx_smartflow_json_get(j, "model");
    if (!ngx_smartflow_json_is_string(model) || model->str.len == 0) {
        return ngx_http_smartflow_error(r, NGX_HTTP_BAD_REQUEST,
                   "invalid_request_error", "missing_required_parameter",
                   "model", "You must provide a model parameter.");
    }

    ctx->model = model->str;

    switch (ctx->api) {
    case NGX_HTTP_SMARTFLOW_API_MESSAGES:
        j = ngx_smartflow_json_get(ctx->json, "max_tokens");
        if (j == NULL || j->type != NGX_SMARTFLOW_JSON_NUMBER) {
            return ngx_http_smartflow_error(r, NGX_HTTP_BAD_REQUEST,
                       "invalid_request_error", "missing_required_parameter",
                       "max_tokens", "max_tokens: Field required");
        }

        /* fall through */

    case NGX_HTTP_SMARTFLOW_API_CHAT:
        field = "messages";
        j = ngx_smartflow_json_get(ctx->json, field);
        if (j && j->type == NGX_SMARTFLOW_JSON_ARRAY && j->nchild) {
            j = j->child;
        } else {
            j = NULL;
        }
        break;

    case NGX_HTTP_SMARTFLOW_API_COMPLETIONS:
        field = "prompt";
        j = ngx_smartflow_json_get(ctx->json, field);
        break;

    default: /* embeddings */
        field = "input";
        j = ngx_smartflow_json_get(ctx->json, field);
        break;
    }

    if (j == NULL || j->type == NGX_SMARTFLOW_JSON_NULL) {
        return ngx_http_smartflow_error(r, NGX_HTTP_BAD_REQUEST,
                   "invalid_request_error", "missing_required_parameter",
                   field, "Missing required parameter: '%s'.", field);
    }

    j = ngx_smartflow_json_get(ctx->json, "stream");
    ctx->stream = (j && j->type == NGX_SMARTFLOW_JSON_TRUE);

    if (ctx->stream && ctx->client_format == NGX_HTTP_SMARTFLOW_FORMAT_OPENAI)
    {
        /* decided once: attempts may add include_usage to the request */
        j = ngx_smartflow_json_get(ngx_smartflow_json_get(ctx->json,
                                                          "stream_options"),
                                   "include_usage");
        ctx->hide_usage = (j == NULL || j->type != NGX_SMARTFLOW_JSON_TRUE);
    }

    smcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_proxy_module);

    head = ngx_http_smartflow_route_find(smcf, &ctx->model);
    if (head == NULL) {
        return ngx_http_smartflow_error(r, NGX_HTTP_NOT_FOUND,
                   "invalid_request_error", "model_not_found", "model",
                   "The model `%V` does not exist or you do not have "
                   "access to it.", &ctx->model);
    }

    force = ngx_http_smartflow_find_header(r, "x-smartflow-provider");

    ctx->nplan = ngx_http_smartflow_route_plan(r, smcf, head, force,
                                               ctx->plan, &ctx->half, &held);
    if (ctx->nplan == 0) {
        return ngx_http_smartflow_error(r, NGX_HTTP_BAD_REQUEST,
                   "invalid_request_error", "provider_not_available",
                   "model", "The model `%V` has no deployment on provider "
                   "\"%V\".", &ctx->model, force);
    }

    if (held
        && ngx_http_smartflow_hold_probe(r, ctx, ctx->plan[0], held)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_smartflow_use(r, ctx, ctx->plan[0]);
    if (rc != NGX_OK) {
        return rc;
    }

    return NGX_OK;
}


/* makes a deployment the one this attempt goes to */
static ngx_int_t
ngx_http_smartflow_use(ngx_http_request_t *r, ngx_http_smartflow_ctx_t *ctx,
    ngx_http_smartflow_route_t *rt)
{
    ctx->route = rt;
    ctx->provider = rt->provider;
    ctx->wire_format = ngx_http_smartflow_wire[ctx->provider->type];
    ctx->translate = (ctx->client_format != ctx->wire_format);
    ctx->upstream_model = rt->model.len ? rt->model : ctx->model;

    if (ctx->translate
        && (ctx->api == NGX_HTTP_SMARTFLOW_API_COMPLETIONS
            || ctx->api == NGX_HTTP_SMARTFLOW_API_EMBEDDINGS))
    {
        return ngx_http_smartflow_error(r, NGX_HTTP_BAD_REQUEST,
                   "invalid_request_error", "unsupported_model", "model",
                   "The model `%V` is served by provider \"%V\", which "
                   "does not offer this endpoint.",
                   &ctx->model, &ctx->provider->name);
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "smartflow proxy route \"%V\" -> deployment \"%V\" "
                   "attempt %ui", &ctx->model, &rt->name, ctx->attempt);

    return NGX_OK;
}


/*
 * The content of @smartflow_next, where a failed attempt lands (error_page
 * on 429 and 5xx with proxy_intercept_errors on): the breaker learns of
 * the failure and the request goes to the next deployment of its plan,
 * the last one without interception so its answer reaches the client.
 */
ngx_int_t
ngx_http_smartflow_next(ngx_http_request_t *r)
{
    time_t                           retry, claim;
    ngx_int_t                        rc;
    ngx_str_t                        name, *ra;
    ngx_uint_t                       status;
    ngx_http_smartflow_ctx_t        *ctx;
    ngx_http_smartflow_route_t      *rt;
    ngx_http_smartflow_main_conf_t  *smcf;

    ctx = ngx_http_smartflow_get_ctx(r);

    if (ctx == NULL || ctx->route == NULL
        || ctx->attempt + 1 >= ctx->nplan)
    {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "smartflow proxy: @smartflow_next reached without "
                      "a deployment left to try");
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    smcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_proxy_module);

    /* a refusal from here is logged and audited as the client's location */
    ngx_http_smartflow_client_location(r, ctx);

    status = r->err_status;
    r->err_status = 0;
    rt = ctx->route;
    retry = 0;

    if (status == NGX_HTTP_TOO_MANY_REQUESTS && r->upstream) {
        ra = ngx_http_smartflow_upstream_header(r, "retry-after");
        if (ra) {
            retry = ngx_atotm(ra->data, ra->len);
        }
    }

    if (ctx->unreadable) {
        /* a 200 the filters could not read, the 502 is the gateway's */
        ctx->unreadable = 0;

        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "smartflow proxy: deployment \"%V\" gave an answer "
                      "that could not be read for model \"%V\", trying the "
                      "next one", &rt->name, &ctx->model);

    } else {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "smartflow proxy: deployment \"%V\" answered %ui for "
                      "model \"%V\", trying the next one", &rt->name,
                      status, &ctx->model);
    }

    ngx_http_smartflow_attempt_result(r, ctx, status, retry);

    if (ctx->provider->stats) {
        ngx_smartflow_shm_provider_result(ctx->provider, status, 1);
    }

    if (rt->stats && ctx->dispatched) {
        (void) ngx_atomic_fetch_add(&rt->stats->in_flight, -1);
    }

    /* counted: the next deployment is not in flight until it is sent */
    ctx->dispatched = 0;
    ctx->attempt++;

    /* a deployment that cooled down goes to the one request probing it */
    while (ctx->half & ((ngx_uint_t) 1 << ctx->attempt)) {
        claim = ngx_http_smartflow_route_probe(smcf, ctx->plan[ctx->attempt]);

        if (claim) {
            if (ngx_http_smartflow_hold_probe(r, ctx, ctx->plan[ctx->attempt],
                                              claim)
                != NGX_OK)
            {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            break;
        }

        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "smartflow proxy: deployment \"%V\" is being probed "
                      "by another request, skipped for model \"%V\"",
                      &ctx->plan[ctx->attempt]->name, &ctx->model);

        if (ctx->attempt + 1 >= ctx->nplan) {
            /* nothing left to try; the failure's body was intercepted */
            rc = ngx_http_smartflow_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                     "api_error", "service_unavailable", NULL,
                     "Deployment \"%V\" of model `%V` failed (status %ui) "
                     "and no other is available now; try again later.",
                     &rt->name, &ctx->model, status);

            return ngx_http_smartflow_refuse(r, rc, 0);
        }

        ctx->attempt++;
    }

    rc = ngx_http_smartflow_use(r, ctx, ctx->plan[ctx->attempt]);
    if (rc == NGX_OK) {
        rc = ngx_http_smartflow_prepare_upstream(r, ctx);
    }

    if (rc != NGX_OK) {
        return ngx_http_smartflow_refuse(r, rc, 0);
    }

    if (ctx->provider->type == NGX_HTTP_SMARTFLOW_PROVIDER_ECHO) {
        return ngx_http_smartflow_answer_echo(r, ctx);
    }

    ngx_http_smartflow_dispatch(r, ctx);

    if (ngx_http_smartflow_attempt_timer(r, ctx) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ctx->attempt + 1 < ctx->nplan) {
        ngx_str_set(&name, "@smartflow_try");

    } else {
        ngx_str_set(&name, "@smartflow_last");
    }

    /*
     * an attempt costs two redirects (the error page to @smartflow_next,
     * then here); nginx allows ten in all, fewer than eight attempts
     * need.  The plan bounds the steps, so each starts with the budget
     * the first one had.
     */
    r->uri_changes = ctx->uri_changes;

    (void) ngx_http_named_location(r, &name);

    return NGX_DONE;
}


/*
 * The attempt goes to ctx->route: in flight until the LOG phase or
 * @smartflow_next counts it, and only then; its outcome is the upstream
 * state it adds after the ones of the attempts before it.
 */
static void
ngx_http_smartflow_dispatch(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx)
{
    if (ctx->route->stats) {
        (void) ngx_atomic_fetch_add(&ctx->route->stats->in_flight, 1);
    }

    ctx->dispatched = 1;
    ctx->states = r->upstream_states ? r->upstream_states->nelts : 0;
}


/*
 * The content of @smartflow_try and @smartflow_last (smartflow_api
 * attempt): the attempt is proxied with the configuration of the client's
 * location (its proxy timeouts, stream caps, trailers, audit log ...), as
 * a model with one deployment is.  An attempt that may still fall over
 * keeps the error pages of the named location, which hand a 429 or 5xx to
 * @smartflow_next, and has the provider's errors intercepted; the last one
 * answers as the client's location does.
 */
ngx_int_t
ngx_http_smartflow_attempt(ngx_http_request_t *r)
{
    void                      **loc_conf;
    ngx_int_t                   rc;
    ngx_uint_t                  attempt, last;
    ngx_http_upstream_conf_t   *ucf;
    ngx_http_smartflow_ctx_t   *ctx;
    ngx_http_core_loc_conf_t   *clcf, *named;

    ctx = ngx_http_smartflow_get_ctx(r);

    if (ctx == NULL || ctx->loc_conf == NULL || !ctx->dispatched) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "smartflow proxy: a \"smartflow_api attempt\" "
                      "location reached without an attempt to send");
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    named = ngx_http_get_module_loc_conf(r, ngx_http_core_module);
    clcf = ctx->loc_conf[ngx_http_core_module.ctx_index];

    if (clcf->handler == NULL) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "smartflow proxy: the location of model \"%V\" "
                      "has no proxy_pass for its attempts", &ctx->model);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    last = (ctx->attempt + 1 >= ctx->nplan);

    if (last) {
        r->loc_conf = ctx->loc_conf;

    } else {
        loc_conf = ngx_palloc(r->pool, sizeof(void *) * ngx_http_max_module);
        if (loc_conf == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        clcf = ngx_palloc(r->pool, sizeof(ngx_http_core_loc_conf_t));
        if (clcf == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_memcpy(loc_conf, ctx->loc_conf,
                   sizeof(void *) * ngx_http_max_module);

        *clcf = *(ngx_http_core_loc_conf_t *)
                 ctx->loc_conf[ngx_http_core_module.ctx_index];
        clcf->error_pages = named->error_pages;
        clcf->recursive_error_pages = 1;

        loc_conf[ngx_http_core_module.ctx_index] = clcf;
        r->loc_conf = loc_conf;
    }

    ngx_http_update_location_config(r);

    attempt = ctx->attempt;

    rc = clcf->handler(r);

    if (!last && ctx->attempt == attempt && r->upstream
        && !r->upstream->conf->intercept_errors)
    {
        /*
         * the provider's 429 and 5xx go to the error pages; the upstream
         * conf of the client's location is shared, the copy is the
         * request's own, read when the answer arrives
         */
        ucf = ngx_palloc(r->pool, sizeof(ngx_http_upstream_conf_t));
        if (ucf == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        *ucf = *r->upstream->conf;
        ucf->intercept_errors = 1;
        r->upstream->conf = ucf;
    }

    return rc;
}


/*
 * A request redirected to one of the module's named locations (an error
 * page, the next attempt) is the client location's still: its LOG phase
 * (access_log, smartflow_audit_log, smartflow_audit) and the filters of
 * the answer take that location's configuration, not the server's.
 */
void
ngx_http_smartflow_client_location(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx)
{
    if (r != r->main || ctx->loc_conf == NULL
        || r->loc_conf == ctx->loc_conf)
    {
        /* a subrequest (an embedder's call) keeps its own location */
        return;
    }

    r->loc_conf = ctx->loc_conf;
    ngx_http_update_location_config(r);
}


/*
 * The outcome of the attempt on ctx->route, for its breaker; a probe this
 * request held there is settled by it.
 */
void
ngx_http_smartflow_attempt_result(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_uint_t status, time_t retry_after)
{
    ngx_http_smartflow_main_conf_t  *smcf;

    smcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_proxy_module);

    ngx_http_smartflow_route_result(smcf, ctx->route, status, retry_after);

    if (ctx->probe == ctx->route) {
        ctx->probe = NULL;
    }
}


/*
 * The request holds the probe of a deployment that cooled down until the
 * attempt's result settles it; unsettled (the attempt never sent, the
 * client gone), it is given back when the request ends.
 */
static ngx_int_t
ngx_http_smartflow_hold_probe(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_http_smartflow_route_t *rt,
    time_t claim)
{
    ngx_pool_cleanup_t  *cln;

    if (!ctx->probe_cleanup) {
        cln = ngx_pool_cleanup_add(r->pool, 0);
        if (cln == NULL) {
            ngx_http_smartflow_route_unprobe(rt, claim);
            return NGX_ERROR;
        }

        cln->handler = ngx_http_smartflow_probe_cleanup;
        cln->data = ctx;
        ctx->probe_cleanup = 1;
    }

    if (ctx->probe) {
        /* not expected: one attempt at a time holds a probe */
        ngx_http_smartflow_route_unprobe(ctx->probe, ctx->probe_time);
    }

    ctx->probe = rt;
    ctx->probe_time = claim;

    return NGX_OK;
}


static void
ngx_http_smartflow_probe_cleanup(void *data)
{
    ngx_http_smartflow_ctx_t  *ctx = data;

    if (ctx->probe) {
        ngx_http_smartflow_route_unprobe(ctx->probe, ctx->probe_time);
        ctx->probe = NULL;
    }
}


/* the built-in provider's answer, or its refusal as the client's JSON */
static ngx_int_t
ngx_http_smartflow_answer_echo(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx)
{
    ngx_int_t  rc;

    rc = ngx_http_smartflow_echo(r, ctx);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return ngx_http_smartflow_refuse(r, rc, 0);
    }

    return rc;
}


/* a route's timeout= for this attempt: from dispatch to the answer */
ngx_int_t
ngx_http_smartflow_attempt_timer(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx)
{
    ngx_pool_cleanup_t  *cln;

    if (ctx->route->timeout == 0) {
        if (ctx->attempt_timer.timer_set) {
            ngx_del_timer(&ctx->attempt_timer);
        }

        return NGX_OK;
    }

    if (ctx->attempt_timer.handler == NULL) {
        cln = ngx_pool_cleanup_add(r->pool, 0);
        if (cln == NULL) {
            return NGX_ERROR;
        }

        cln->handler = ngx_http_smartflow_timer_cleanup;
        cln->data = &ctx->attempt_timer;

        ctx->attempt_timer.handler = ngx_http_smartflow_attempt_timeout;
        ctx->attempt_timer.data = r;
        ctx->attempt_timer.log = r->connection->log;
    }

    ngx_add_timer(&ctx->attempt_timer, ctx->route->timeout);

    return NGX_OK;
}


static void
ngx_http_smartflow_attempt_timeout(ngx_event_t *ev)
{
    ngx_http_request_t        *r;
    ngx_http_smartflow_ctx_t  *ctx;

    r = ev->data;
    ctx = ngx_http_smartflow_get_ctx(r);

    if (ctx == NULL || r->upstream == NULL || r->upstream->header_sent
        || r->upstream->peer.connection == NULL)
    {
        return;
    }

    ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                  "smartflow proxy: deployment \"%V\" did not answer "
                  "within its timeout of %M ms", &ctx->route->name,
                  ctx->route->timeout);

    ngx_http_smartflow_upstream_timeout(r);
}


static ngx_str_t *
ngx_http_smartflow_find_header(ngx_http_request_t *r, char *name)
{
    return ngx_http_smartflow_header_in(&r->headers_in.headers, name);
}


static ngx_str_t *
ngx_http_smartflow_upstream_header(ngx_http_request_t *r, char *name)
{
    return ngx_http_smartflow_header_in(&r->upstream->headers_in.headers,
                                        name);
}


static ngx_int_t
ngx_http_smartflow_run_stages(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx)
{
    ngx_int_t                        rc;
    ngx_http_smartflow_stage_t      *st;
    ngx_http_smartflow_main_conf_t  *smcf;

    smcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_proxy_module);
    st = smcf->stages.elts;

    while (ctx->stage < smcf->stages.nelts) {
        rc = st[ctx->stage++].handler(r, ctx);

        if (rc != NGX_DECLINED) {
            return rc;
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_smartflow_prepare_upstream(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx)
{
    u_char                         *p;
    ngx_str_t                      *op, messages;
    ngx_pool_t                     *pool;
    ngx_uint_t                      rewrite;
    ngx_smartflow_json_t           *j, *opts;
    ngx_smartflow_xlate_t           x;
    ngx_http_smartflow_provider_t  *pr;

    static ngx_str_t  t = ngx_string("true");

    /* a translation builds a second tree: it gets the pool of its own */
    pool = ctx->translate ? ngx_http_smartflow_pool(r, ctx) : r->pool;
    if (pool == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    pr = ctx->provider;
    ctx->upstream_json = ctx->json;
    rewrite = (ctx->route->model.len != 0);

    if (ctx->translate) {
        x.pool = pool;
        x.log = r->connection->log;
        x.model = ctx->model;
        ngx_str_null(&x.err);

        switch (ctx->wire_format) {
        case NGX_HTTP_SMARTFLOW_FORMAT_ANTHROPIC:
            ctx->upstream_json =
                ngx_smartflow_xlate_req_openai_to_anthropic(&x, ctx->json);
            break;

        case NGX_HTTP_SMARTFLOW_FORMAT_GEMINI:
            /* an Anthropic request goes through OpenAI's format */
            j = (ctx->client_format == NGX_HTTP_SMARTFLOW_FORMAT_ANTHROPIC)
                ? ngx_smartflow_xlate_req_anthropic_to_openai(&x, ctx->json)
                : ctx->json;

            ctx->upstream_json = j
                ? ngx_smartflow_xlate_req_openai_to_gemini(&x, j) : NULL;
            break;

        default:
            ctx->upstream_json =
                ngx_smartflow_xlate_req_anthropic_to_openai(&x, ctx->json);
        }

        if (ctx->upstream_json == NULL) {
            return ngx_http_smartflow_error(r, NGX_HTTP_BAD_REQUEST,
                       "invalid_request_error", "invalid_request", NULL,
                       "%V", &x.err);
        }

        rewrite = 1;
    }

    if (ctx->stream && ctx->hide_usage
        && ctx->wire_format == NGX_HTTP_SMARTFLOW_FORMAT_OPENAI
        && !ctx->translate
        && pr->type != NGX_HTTP_SMARTFLOW_PROVIDER_ECHO)
    {
        /* exact usage on streams: ask for it, hide it from the client */
        opts = ngx_smartflow_json_get(ctx->json, "stream_options");

        if (opts == NULL) {
            opts = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_OBJECT,
                                          NULL);
            if (opts == NULL) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            ngx_smartflow_json_append(ctx->json, "stream_options", opts);

        } else if (opts->type != NGX_SMARTFLOW_JSON_OBJECT) {
            /* null or anything else becomes an empty object, in place */
            opts->type = NGX_SMARTFLOW_JSON_OBJECT;
            ngx_str_null(&opts->str);
            opts->child = NULL;
            opts->last = NULL;
            opts->nchild = 0;
        }

        j = ngx_smartflow_json_get(opts, "include_usage");
        if (j) {
            j->type = NGX_SMARTFLOW_JSON_TRUE;

        } else {
            j = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_TRUE, &t);
            if (j == NULL) {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            ngx_smartflow_json_append(opts, "include_usage", j);
        }

        rewrite = 1;
    }

    if (ctx->wire_format == NGX_HTTP_SMARTFLOW_FORMAT_GEMINI) {
        /* Gemini names the model and the method in the path */
        if (ngx_http_smartflow_gemini_uri(r, ctx) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

    } else {
        if (ctx->wire_format == NGX_HTTP_SMARTFLOW_FORMAT_ANTHROPIC) {
            ngx_str_set(&messages, "/messages");
            op = &messages;

        } else {
            op = &ngx_http_smartflow_op_paths[ctx->api];
        }

        p = ngx_pnalloc(r->pool, pr->path.len + op->len);
        if (p == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ctx->upstream_uri.data = p;
        ctx->upstream_uri.len = ngx_cpymem(ngx_cpymem(p, pr->path.data,
                                                      pr->path.len),
                                           op->data, op->len)
                                - p;
    }

    if (!rewrite) {
        /* nothing changes: the client's bytes go out as they came */
        ctx->upstream_body = ctx->body;
        return NGX_OK;
    }

    if ((ctx->wire_format != NGX_HTTP_SMARTFLOW_FORMAT_GEMINI
         && ngx_smartflow_json_set_str(pool, ctx->upstream_json, "model",
                                       &ctx->upstream_model)
            != NGX_OK)
        || ngx_smartflow_json_dump(pool, ctx->upstream_json,
                                   &ctx->upstream_body)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return NGX_OK;
}


/* {base}/models/{model}:generateContent, or the SSE stream's method */
static ngx_int_t
ngx_http_smartflow_gemini_uri(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx)
{
    u_char                         *p;
    size_t                          len;
    ngx_str_t                       method;
    ngx_http_smartflow_provider_t  *pr;

    pr = ctx->provider;

    if (ctx->stream) {
        ngx_str_set(&method, ":streamGenerateContent?alt=sse");

    } else {
        ngx_str_set(&method, ":generateContent");
    }

    len = pr->path.len + sizeof("/models/") - 1
          + ctx->upstream_model.len
          + 2 * ngx_escape_uri(NULL, ctx->upstream_model.data,
                               ctx->upstream_model.len,
                               NGX_ESCAPE_URI_COMPONENT)
          + method.len;

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ctx->upstream_uri.data = p;

    p = ngx_cpymem(p, pr->path.data, pr->path.len);
    p = ngx_sf_cpymem(p, "/models/");
    p = (u_char *) ngx_escape_uri(p, ctx->upstream_model.data,
                                  ctx->upstream_model.len,
                                  NGX_ESCAPE_URI_COMPONENT);
    p = ngx_cpymem(p, method.data, method.len);

    ctx->upstream_uri.len = p - ctx->upstream_uri.data;

    return NGX_OK;
}
