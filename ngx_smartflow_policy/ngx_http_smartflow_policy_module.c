/*
 * The policy module: checks a request against the location's policy
 * before it goes anywhere, as a pipeline stage that runs ahead of the
 * cache.  Here: the model allow-list (smartflow_policy_models).
 */

#include "ngx_http_smartflow_proxy.h"


typedef struct {
    ngx_array_t  *models;            /* ngx_str_t, lower-cased globs */
} ngx_http_smartflow_policy_loc_conf_t;


static ngx_int_t ngx_http_smartflow_policy_stage(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx);
static void *ngx_http_smartflow_policy_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_smartflow_policy_merge_loc_conf(ngx_conf_t *cf,
    void *parent, void *child);
static char *ngx_http_smartflow_policy_models(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static ngx_int_t ngx_http_smartflow_policy_init(ngx_conf_t *cf);


static ngx_command_t  ngx_http_smartflow_policy_commands[] = {

    { ngx_string("smartflow_policy_models"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_smartflow_policy_models,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_smartflow_policy_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_smartflow_policy_init,        /* postconfiguration */

    NULL,                                  /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_smartflow_policy_create_loc_conf,
    ngx_http_smartflow_policy_merge_loc_conf
};


ngx_module_t  ngx_http_smartflow_policy_module = {
    NGX_MODULE_V1,
    &ngx_http_smartflow_policy_module_ctx, /* module context */
    ngx_http_smartflow_policy_commands,    /* module directives */
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
ngx_http_smartflow_policy_stage(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx)
{
    u_char                                 low[256];
    ngx_str_t                             *m;
    ngx_uint_t                             i;
    ngx_http_smartflow_policy_loc_conf_t  *plcf;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_smartflow_policy_module);

    if (plcf->models == NULL) {
        return NGX_DECLINED;
    }

    if (ctx->model.len <= sizeof(low)) {
        ngx_strlow(low, ctx->model.data, ctx->model.len);
        m = plcf->models->elts;

        for (i = 0; i < plcf->models->nelts; i++) {
            if (ngx_smartflow_glob(m[i].data, m[i].data + m[i].len,
                                   low, low + ctx->model.len))
            {
                return NGX_DECLINED;
            }
        }
    }

    return ngx_http_smartflow_error(r, NGX_HTTP_FORBIDDEN,
               "permission_error", "model_not_allowed", "model",
               "The model `%V` is not allowed by this endpoint's policy.",
               &ctx->model);
}


static void *
ngx_http_smartflow_policy_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_smartflow_policy_loc_conf_t  *plcf;

    plcf = ngx_pcalloc(cf->pool,
                       sizeof(ngx_http_smartflow_policy_loc_conf_t));
    if (plcf == NULL) {
        return NULL;
    }

    plcf->models = NGX_CONF_UNSET_PTR;

    return plcf;
}


static char *
ngx_http_smartflow_policy_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child)
{
    ngx_http_smartflow_policy_loc_conf_t *prev = parent;
    ngx_http_smartflow_policy_loc_conf_t *conf = child;

    ngx_conf_merge_ptr_value(conf->models, prev->models, NULL);

    return NGX_CONF_OK;
}


/* smartflow_policy_models GLOB ...; */
static char *
ngx_http_smartflow_policy_models(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_smartflow_policy_loc_conf_t *plcf = conf;

    ngx_str_t   *value, *m;
    ngx_uint_t   i;

    if (plcf->models != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    plcf->models = ngx_array_create(cf->pool, cf->args->nelts - 1,
                                    sizeof(ngx_str_t));
    if (plcf->models == NULL) {
        return NGX_CONF_ERROR;
    }

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {
        m = ngx_array_push(plcf->models);
        if (m == NULL) {
            return NGX_CONF_ERROR;
        }

        *m = value[i];
        ngx_strlow(m->data, m->data, m->len);
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_smartflow_policy_init(ngx_conf_t *cf)
{
    return ngx_http_smartflow_register_stage(cf,
                                             NGX_HTTP_SMARTFLOW_STAGE_POLICY,
                                             ngx_http_smartflow_policy_stage);
}
