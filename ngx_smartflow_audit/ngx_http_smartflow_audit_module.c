/*
 * The audit module: in the LOG phase, one JSON record per gateway request
 * (who, which model and provider, outcome, sizes), copied out of the
 * request before its pool is freed and appended to the file named by
 * smartflow_audit_log.  The file is reopened with the other logs on
 * "nginx -s reopen".
 */

#include "ngx_http_smartflow_proxy.h"


typedef struct {
    ngx_open_file_t  *file;
} ngx_http_smartflow_audit_loc_conf_t;


static ngx_int_t ngx_http_smartflow_audit_handler(ngx_http_request_t *r);
static u_char *ngx_http_smartflow_audit_str(u_char *p, char *name,
    ngx_str_t *s);
static void *ngx_http_smartflow_audit_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_smartflow_audit_merge_loc_conf(ngx_conf_t *cf,
    void *parent, void *child);
static char *ngx_http_smartflow_audit_log(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_smartflow_audit_init(ngx_conf_t *cf);


static ngx_command_t  ngx_http_smartflow_audit_commands[] = {

    { ngx_string("smartflow_audit_log"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_smartflow_audit_log,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_smartflow_audit_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_smartflow_audit_init,         /* postconfiguration */

    NULL,                                  /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_smartflow_audit_create_loc_conf,
    ngx_http_smartflow_audit_merge_loc_conf
};


ngx_module_t  ngx_http_smartflow_audit_module = {
    NGX_MODULE_V1,
    &ngx_http_smartflow_audit_module_ctx,  /* module context */
    ngx_http_smartflow_audit_commands,     /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_int_t
ngx_http_smartflow_audit_handler(ngx_http_request_t *r)
{
    size_t                                len;
    u_char                               *p, *line;
    ssize_t                               n;
    ngx_str_t                             provider;
    ngx_http_smartflow_ctx_t             *ctx;
    ngx_http_smartflow_audit_loc_conf_t  *alcf;

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_smartflow_audit_module);

    if (alcf->file == NULL) {
        return NGX_OK;
    }

    ctx = ngx_http_smartflow_get_ctx(r);

    if (ctx == NULL || ctx->api == NGX_HTTP_SMARTFLOW_API_NONE) {
        return NGX_OK;
    }

    if (ctx->provider) {
        provider = ctx->provider->name;

    } else {
        ngx_str_null(&provider);
    }

    len = sizeof("{\"time\":\"\",\"status\":,\"key_id\":,\"model\":,"
                 "\"provider\":,\"stream\":false,\"request_bytes\":,"
                 "\"response_bytes\":,\"prompt_tokens\":,"
                 "\"completion_tokens\":,\"error\":}\n")
          + sizeof("1970-09-28T12:00:00+06:00") + 3 * NGX_OFF_T_LEN
          + 2 * NGX_INT_T_LEN
          + ngx_smartflow_json_escape_len(ctx->key_id.data, ctx->key_id.len)
          + ngx_smartflow_json_escape_len(ctx->model.data, ctx->model.len)
          + ngx_smartflow_json_escape_len(provider.data, provider.len)
          + ngx_smartflow_json_escape_len(ctx->err_code.data,
                                          ctx->err_code.len)
          + 4 * sizeof("null");

    line = ngx_pnalloc(r->pool, len);
    if (line == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(line, "{\"time\":\"%V\",\"status\":%ui",
                    &ngx_cached_http_log_iso8601, r->headers_out.status);
    p = ngx_http_smartflow_audit_str(p, "key_id", &ctx->key_id);
    p = ngx_http_smartflow_audit_str(p, "model", &ctx->model);
    p = ngx_http_smartflow_audit_str(p, "provider", &provider);
    p = ngx_sprintf(p, ",\"stream\":%s,\"request_bytes\":%O,"
                       "\"response_bytes\":%O,\"prompt_tokens\":%ui,"
                       "\"completion_tokens\":%ui",
                    ctx->stream ? "true" : "false", r->request_length,
                    r->connection->sent, ctx->prompt_tokens,
                    ctx->completion_tokens);
    p = ngx_http_smartflow_audit_str(p, "error", &ctx->err_code);
    *p++ = '}';
    *p++ = '\n';

    /* an append of a line, as access_log does */
    n = ngx_write_fd(alcf->file->fd, line, p - line);

    if (n != p - line) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, ngx_errno,
                      "smartflow audit: writing \"%V\" failed",
                      &alcf->file->name);
    }

    return NGX_OK;
}


static u_char *
ngx_http_smartflow_audit_str(u_char *p, char *name, ngx_str_t *s)
{
    p = ngx_sprintf(p, ",\"%s\":", name);

    if (s->len == 0) {
        return ngx_sf_cpymem(p, "null");
    }

    *p++ = '"';
    p = ngx_smartflow_json_escape(p, s->data, s->len);
    *p++ = '"';

    return p;
}


static void *
ngx_http_smartflow_audit_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_smartflow_audit_loc_conf_t  *alcf;

    alcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_smartflow_audit_loc_conf_t));
    if (alcf == NULL) {
        return NULL;
    }

    alcf->file = NGX_CONF_UNSET_PTR;

    return alcf;
}


static char *
ngx_http_smartflow_audit_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child)
{
    ngx_http_smartflow_audit_loc_conf_t *prev = parent;
    ngx_http_smartflow_audit_loc_conf_t *conf = child;

    ngx_conf_merge_ptr_value(conf->file, prev->file, NULL);

    return NGX_CONF_OK;
}


/* smartflow_audit_log PATH | off; */
static char *
ngx_http_smartflow_audit_log(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_smartflow_audit_loc_conf_t *alcf = conf;

    ngx_str_t  *value;

    if (alcf->file != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        alcf->file = NULL;
        return NGX_CONF_OK;
    }

    alcf->file = ngx_conf_open_file(cf->cycle, &value[1]);
    if (alcf->file == NULL) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_smartflow_audit_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_smartflow_audit_handler;

    return NGX_OK;
}
