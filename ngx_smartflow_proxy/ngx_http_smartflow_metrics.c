/*
 * The registry of metrics writers: each module that has counters of its
 * own (the cache's zones, for one) registers a writer at configuration
 * time, and the metrics endpoint (the audit module's GET /metrics) asks
 * every writer for its Prometheus text and appends it to its own.  The
 * writers are kept in the proxy module's main configuration, so a reload
 * builds the list anew with the new configuration.
 */

#include "ngx_http_smartflow_proxy.h"


ngx_int_t
ngx_http_smartflow_register_metrics(ngx_conf_t *cf,
    ngx_http_smartflow_metrics_pt writer)
{
    ngx_http_smartflow_metrics_pt   *w;
    ngx_http_smartflow_main_conf_t  *smcf;

    smcf = ngx_http_conf_get_module_main_conf(cf,
                                              ngx_http_smartflow_proxy_module);
    if (smcf == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow: load ngx_http_smartflow_proxy_module "
                           "before the other smartflow modules");
        return NGX_ERROR;
    }

    if (smcf->metrics.elts == NULL
        && ngx_array_init(&smcf->metrics, cf->pool, 2,
                          sizeof(ngx_http_smartflow_metrics_pt))
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    w = ngx_array_push(&smcf->metrics);
    if (w == NULL) {
        return NGX_ERROR;
    }

    *w = writer;

    return NGX_OK;
}


/* every writer's text, in the order they registered; empty: none */
ngx_int_t
ngx_http_smartflow_metrics(ngx_http_request_t *r, ngx_str_t *text)
{
    u_char                          *p;
    size_t                           len;
    ngx_str_t                       *parts;
    ngx_uint_t                       i, n;
    ngx_http_smartflow_metrics_pt   *w;
    ngx_http_smartflow_main_conf_t  *smcf;

    ngx_str_null(text);

    smcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_proxy_module);

    if (smcf == NULL || smcf->metrics.nelts == 0) {
        return NGX_OK;
    }

    n = smcf->metrics.nelts;
    w = smcf->metrics.elts;

    parts = ngx_palloc(r->pool, n * sizeof(ngx_str_t));
    if (parts == NULL) {
        return NGX_ERROR;
    }

    len = 0;

    for (i = 0; i < n; i++) {
        if (w[i](r, &parts[i]) != NGX_OK) {
            return NGX_ERROR;
        }

        len += parts[i].len;
    }

    if (n == 1) {
        *text = parts[0];
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    text->data = p;

    for (i = 0; i < n; i++) {
        p = ngx_cpymem(p, parts[i].data, parts[i].len);
    }

    text->len = len;

    return NGX_OK;
}


/* a label's value, escaped as the text format wants: at most twice as long */
u_char *
ngx_http_smartflow_metrics_label(u_char *p, ngx_str_t *value)
{
    u_char  *s, *last;

    last = value->data + value->len;

    for (s = value->data; s < last; s++) {
        switch (*s) {

        case '\\':
        case '"':
            *p++ = '\\';
            *p++ = *s;
            break;

        case '\n':
            *p++ = '\\';
            *p++ = 'n';
            break;

        default:
            *p++ = *s;
        }
    }

    return p;
}
