/*
 * The PRECONTENT pipeline: read the client body without blocking, parse
 * it once, route it, run the stages the other modules registered (policy
 * on the input, then the cache) in their fixed order, and prepare what
 * proxy_pass needs through the $smartflow_* variables.
 */

#include "ngx_http_smartflow_proxy.h"


static void ngx_http_smartflow_body_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_smartflow_parse(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx);
static ngx_int_t ngx_http_smartflow_run_stages(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx);
static ngx_int_t ngx_http_smartflow_prepare_upstream(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx);
static void ngx_http_smartflow_pipeline_done(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_int_t rc);


static ngx_str_t  ngx_http_smartflow_op_paths[] = {
    ngx_null_string,
    ngx_string("/chat/completions"),
    ngx_string("/completions"),
    ngx_string("/embeddings")
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

    if (r->method != NGX_HTTP_POST) {
        return ngx_http_smartflow_error(r, NGX_HTTP_NOT_ALLOWED,
                   "invalid_request_error", "method_not_allowed", NULL,
                   "Method %V is not allowed here; use POST.",
                   &r->method_name);
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
    ctx->pipeline_done = 1;

    if (rc == NGX_OK) {
        /* the stages let it through: the echo provider or proxy_pass */
        if (ctx->provider->type == NGX_HTTP_SMARTFLOW_PROVIDER_ECHO) {
            ngx_http_finalize_request(r, ngx_http_smartflow_echo(r, ctx));
            return;
        }

        rc = ngx_http_smartflow_prepare_upstream(r, ctx);
    }

    if (rc == NGX_DONE) {
        /* a stage has answered the request itself */
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
    ngx_str_t                        err;
    ngx_smartflow_json_t            *j, *model;
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

    smcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_proxy_module);

    ctx->route = ngx_http_smartflow_route_find(smcf, &ctx->model);
    if (ctx->route == NULL) {
        return ngx_http_smartflow_error(r, NGX_HTTP_NOT_FOUND,
                   "invalid_request_error", "model_not_found", "model",
                   "The model `%V` does not exist or you do not have "
                   "access to it.", &ctx->model);
    }

    ctx->provider = ctx->route->provider;
    ctx->upstream_model = ctx->route->model.len ? ctx->route->model
                                                : ctx->model;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "smartflow proxy route \"%V\" -> provider \"%V\" "
                   "model \"%V\"", &ctx->model, &ctx->provider->name,
                   &ctx->upstream_model);

    return NGX_OK;
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
    ngx_str_t                      *op;
    ngx_http_smartflow_provider_t  *pr;

    pr = ctx->provider;
    op = &ngx_http_smartflow_op_paths[ctx->api];

    p = ngx_pnalloc(r->pool, pr->path.len + op->len);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->upstream_uri.data = p;
    ctx->upstream_uri.len = ngx_cpymem(ngx_cpymem(p, pr->path.data,
                                                  pr->path.len),
                                       op->data, op->len)
                            - p;

    if (ctx->route->model.len == 0) {
        /* nothing changes: the client's bytes go out as they came */
        ctx->upstream_body = ctx->body;
        return NGX_OK;
    }

    if (ngx_smartflow_json_set_str(r->pool, ctx->json, "model",
                                   &ctx->upstream_model)
        != NGX_OK
        || ngx_smartflow_json_dump(r->pool, ctx->json, &ctx->upstream_body)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return NGX_OK;
}
