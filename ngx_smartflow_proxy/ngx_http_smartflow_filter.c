/*
 * Response filters.  For a streamed completion the header filter turns
 * proxy buffering off for this one request (nginx's upstream reads
 * u->buffering only after the header filters ran) and tells any proxy in
 * front not to buffer either, so events reach the client as they come.
 */

#include "ngx_http_smartflow_proxy.h"


static ngx_int_t ngx_http_smartflow_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_smartflow_set_header(ngx_http_request_t *r,
    char *key, char *value);


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;


ngx_int_t
ngx_http_smartflow_filter_init(ngx_conf_t *cf)
{
    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_smartflow_header_filter;

    return NGX_OK;
}


static ngx_int_t
ngx_http_smartflow_header_filter(ngx_http_request_t *r)
{
    ngx_http_smartflow_ctx_t       *ctx;
    ngx_http_smartflow_loc_conf_t  *slcf;

    slcf = ngx_http_get_module_loc_conf(r, ngx_http_smartflow_proxy_module);

    if (r != r->main || slcf->api == NGX_HTTP_SMARTFLOW_API_NONE) {
        return ngx_http_next_header_filter(r);
    }

    ctx = ngx_http_smartflow_get_ctx(r);

    if (ctx == NULL || ctx->provider == NULL) {
        return ngx_http_next_header_filter(r);
    }

    if (ctx->stream && r->headers_out.status == NGX_HTTP_OK) {
        if (r->upstream) {
            r->upstream->buffering = 0;
        }

        if (ngx_http_smartflow_set_header(r, "X-Accel-Buffering", "no")
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        /* a provider says so itself; the built-in one needs saying */
        if (r->upstream == NULL
            && ngx_http_smartflow_set_header(r, "Cache-Control", "no-cache")
               != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return ngx_http_next_header_filter(r);
}


static ngx_int_t
ngx_http_smartflow_set_header(ngx_http_request_t *r, char *key, char *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key.data = (u_char *) key;
    h->key.len = ngx_strlen(key);
    h->value.data = (u_char *) value;
    h->value.len = ngx_strlen(value);

    return NGX_OK;
}
