/*
 * The policy module: guardrails on a request before it goes anywhere, as
 * the pipeline stage that runs ahead of the cache.  This file holds the
 * directives, the configurations, the response header that summarises
 * the decisions and the $smartflow_policy variable; the groups, the
 * stage and the detectors have their own files.
 */

#include "ngx_http_smartflow_policy.h"


static ngx_int_t ngx_http_smartflow_policy_header_filter(
    ngx_http_request_t *r);
static ngx_int_t ngx_http_smartflow_policy_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_smartflow_policy_add_variables(ngx_conf_t *cf);
static void *ngx_http_smartflow_policy_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_smartflow_policy_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_smartflow_policy_merge_loc_conf(ngx_conf_t *cf,
    void *parent, void *child);
static char *ngx_http_smartflow_policy_models(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_smartflow_policy_use(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_smartflow_policy_admin(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static ngx_int_t ngx_http_smartflow_policy_init(ngx_conf_t *cf);


static ngx_command_t  ngx_http_smartflow_policy_commands[] = {

    { ngx_string("smartflow_policy_models"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_smartflow_policy_models,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("smartflow_policy_group"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_BLOCK|NGX_CONF_TAKE12,
      ngx_http_smartflow_policy_group_block,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("smartflow_policy_approvals"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE2|NGX_CONF_TAKE3|NGX_CONF_TAKE4,
      ngx_http_smartflow_policy_approvals,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("smartflow_policy_admin"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_smartflow_policy_admin,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("smartflow_policy"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_smartflow_policy_use,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_smartflow_policy_module_ctx = {
    ngx_http_smartflow_policy_add_variables, /* preconfiguration */
    ngx_http_smartflow_policy_init,        /* postconfiguration */

    ngx_http_smartflow_policy_create_main_conf,
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


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;


static ngx_int_t
ngx_http_smartflow_policy_header_filter(ngx_http_request_t *r)
{
    ngx_table_elt_t           *h;
    ngx_http_smartflow_ctx_t  *ctx;

    if (r != r->main) {
        return ngx_http_next_header_filter(r);
    }

    ctx = ngx_http_smartflow_get_ctx(r);

    if (ctx == NULL || ctx->policy_decisions.len == 0) {
        return ngx_http_next_header_filter(r);
    }

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "x-smartflow-policy");
    h->value = ctx->policy_decisions;

    return ngx_http_next_header_filter(r);
}


static ngx_int_t
ngx_http_smartflow_policy_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_smartflow_ctx_t  *ctx;

    ctx = ngx_http_smartflow_get_ctx(r);

    if (ctx == NULL || ctx->policy_decisions.len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->data = ctx->policy_decisions.data;
    v->len = ctx->policy_decisions.len;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;

    return NGX_OK;
}


static ngx_int_t
ngx_http_smartflow_policy_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var;

    static ngx_str_t  name = ngx_string("smartflow_policy");

    var = ngx_http_add_variable(cf, &name, NGX_HTTP_VAR_NOCACHEABLE);
    if (var == NULL) {
        return NGX_ERROR;
    }

    var->get_handler = ngx_http_smartflow_policy_variable;

    return NGX_OK;
}


static void *
ngx_http_smartflow_policy_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_smartflow_policy_main_conf_t  *pmcf;

    pmcf = ngx_pcalloc(cf->pool,
                       sizeof(ngx_http_smartflow_policy_main_conf_t));
    if (pmcf == NULL) {
        return NULL;
    }

    if (ngx_array_init(&pmcf->groups, cf->pool, 4,
                       sizeof(ngx_http_smartflow_policy_group_t *))
        != NGX_OK)
    {
        return NULL;
    }

    return pmcf;
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

    /*
     * set by ngx_pcalloc():
     *
     *     plcf->group_name = { 0, NULL };
     *     plcf->group = NULL;
     */

    plcf->models = NGX_CONF_UNSET_PTR;
    plcf->off = NGX_CONF_UNSET;

    return plcf;
}


static char *
ngx_http_smartflow_policy_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child)
{
    ngx_http_smartflow_policy_loc_conf_t *prev = parent;
    ngx_http_smartflow_policy_loc_conf_t *conf = child;

    ngx_http_smartflow_policy_main_conf_t  *pmcf;

    ngx_conf_merge_ptr_value(conf->models, prev->models, NULL);

    if (conf->off == NGX_CONF_UNSET && conf->group_name.len == 0) {
        conf->off = prev->off;
        conf->group_name = prev->group_name;
    }

    if (conf->off == 1 || conf->group_name.len == 0) {
        conf->group = NULL;
        return NGX_CONF_OK;
    }

    /* groups are all read by now, wherever they stand in the http block */
    pmcf = ngx_http_conf_get_module_main_conf(cf,
                                          ngx_http_smartflow_policy_module);

    conf->group = ngx_http_smartflow_policy_find(pmcf, &conf->group_name);

    if (conf->group == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "unknown policy group \"%V\"", &conf->group_name);
        return NGX_CONF_ERROR;
    }

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


/* smartflow_policy GROUP | off; */
static char *
ngx_http_smartflow_policy_use(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_smartflow_policy_loc_conf_t *plcf = conf;

    ngx_str_t  *value;

    if (plcf->off != NGX_CONF_UNSET || plcf->group_name.len) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len == 3 && ngx_strncmp(value[1].data, "off", 3) == 0) {
        plcf->off = 1;
        return NGX_CONF_OK;
    }

    plcf->off = 0;
    plcf->group_name = value[1];

    return NGX_CONF_OK;
}


/* smartflow_policy_admin; the Shield approval queue's admin API */
static char *
ngx_http_smartflow_policy_admin(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_smartflow_policy_admin_handler;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_smartflow_policy_init(ngx_conf_t *cf)
{
    if (ngx_smartflow_policy_detect_init() != NGX_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow policy: the detectors' patterns "
                           "could not be compiled");
        return NGX_ERROR;
    }

    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_smartflow_policy_header_filter;

    if (ngx_http_smartflow_register_output(cf,
                                           ngx_http_smartflow_policy_output)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_smartflow_register_stage(cf,
                                             NGX_HTTP_SMARTFLOW_STAGE_POLICY,
                                             ngx_http_smartflow_policy_stage);
}
