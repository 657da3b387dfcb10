/*
 * A request's cost: the tokens the provider reported, priced by the first
 * smartflow_price glob that matches the model sent to it.  Exposed as
 * $smartflow_cost and, with smartflow_usage_trailers on, as HTTP trailers
 * after the answer's last byte, when the tokens are finally known:
 *
 *     x-smartflow-prompt-tokens: 71
 *     x-smartflow-completion-tokens: 45
 *     x-smartflow-cost-usd: 0.000038
 *
 * Trailers need a chunked (HTTP/1.1) or an HTTP/2 answer; an HTTP/1.0
 * client gets the answer without them.
 */

#include "ngx_http_smartflow_proxy.h"
#include "ngx_http_smartflow_keys.h"


#define NGX_HTTP_SMARTFLOW_MODEL_MAX  256


static ngx_int_t ngx_http_smartflow_cost_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_smartflow_cost_tap(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, u_char *p, size_t len, ngx_uint_t last);
static ngx_int_t ngx_http_smartflow_add_trailer(ngx_http_request_t *r,
    char *name, u_char *value, size_t len);


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;


ngx_int_t
ngx_http_smartflow_cost_init(ngx_conf_t *cf)
{
    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_smartflow_cost_header_filter;

    return ngx_http_smartflow_register_tap(cf, ngx_http_smartflow_cost_tap);
}


/*
 * The request's cost in micro-USD, rounded up to the next one so that a
 * small request is not free; NGX_DECLINED when no price matches.
 */
ngx_int_t
ngx_http_smartflow_cost(ngx_http_request_t *r, ngx_http_smartflow_ctx_t *ctx,
    uint64_t *micro)
{
    u_char                           low[NGX_HTTP_SMARTFLOW_MODEL_MAX];
    ngx_str_t                       *model;
    ngx_uint_t                       i;
    ngx_smartflow_price_t           *price;
    ngx_http_smartflow_main_conf_t  *smcf;

    smcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_proxy_module);

    model = ctx->upstream_model.len ? &ctx->upstream_model : &ctx->model;

    if (model->len == 0 || model->len > sizeof(low)) {
        return NGX_DECLINED;
    }

    ngx_strlow(low, model->data, model->len);
    price = smcf->prices.elts;

    for (i = 0; i < smcf->prices.nelts; i++) {
        if (ngx_smartflow_glob(price[i].glob.data,
                               price[i].glob.data + price[i].glob.len,
                               low, low + model->len))
        {
            *micro = ((uint64_t) ctx->prompt_tokens * price[i].in
                      + (uint64_t) ctx->completion_tokens * price[i].out
                      + 999999)
                     / 1000000;
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


/* "0.000038": micro-USD as dollars, always six decimals */
u_char *
ngx_http_smartflow_usd(u_char *p, uint64_t micro)
{
    return ngx_sprintf(p, "%uL.%06uL", micro / 1000000, micro % 1000000);
}


ngx_int_t
ngx_http_smartflow_cost_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char                    *p;
    uint64_t                   micro;
    ngx_http_smartflow_ctx_t  *ctx;

    ctx = ngx_http_smartflow_get_ctx(r);

    if (ctx == NULL || ctx->provider == NULL
        || ngx_http_smartflow_cost(r, ctx, &micro) != NGX_OK)
    {
        v->not_found = 1;
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, NGX_INT64_LEN + 8);
    if (p == NULL) {
        return NGX_ERROR;
    }

    v->data = p;
    v->len = ngx_http_smartflow_usd(p, micro) - p;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


static ngx_int_t
ngx_http_smartflow_cost_header_filter(ngx_http_request_t *r)
{
    ngx_http_smartflow_ctx_t       *ctx;
    ngx_http_smartflow_loc_conf_t  *slcf;

    if (r != r->main || r->header_only) {
        return ngx_http_next_header_filter(r);
    }

    slcf = ngx_http_get_module_loc_conf(r, ngx_http_smartflow_proxy_module);

    if (!slcf->usage_trailers) {
        return ngx_http_next_header_filter(r);
    }

    ctx = ngx_http_smartflow_get_ctx(r);

    /* an answer to a model request, not a refusal or a listing */
    if (ctx != NULL && ctx->provider != NULL && !ctx->own_response
        && r->headers_out.status == NGX_HTTP_OK)
    {
        r->expect_trailers = 1;
    }

    return ngx_http_next_header_filter(r);
}


static ngx_int_t
ngx_http_smartflow_cost_tap(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, u_char *p, size_t len, ngx_uint_t last)
{
    u_char    *s;
    uint64_t   micro;

    if (!last || !r->expect_trailers) {
        return NGX_OK;
    }

    s = ngx_pnalloc(r->pool, 3 * NGX_INT64_LEN + 8);
    if (s == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(s, "%ui", ctx->prompt_tokens);
    len = p - s;

    if (ngx_http_smartflow_add_trailer(r, "x-smartflow-prompt-tokens", s, len)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    s = p;
    p = ngx_sprintf(s, "%ui", ctx->completion_tokens);

    if (ngx_http_smartflow_add_trailer(r, "x-smartflow-completion-tokens", s,
                                       p - s)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_http_smartflow_cost(r, ctx, &micro) != NGX_OK) {
        /* no price for this model: its cost is unknown, not zero */
        return NGX_OK;
    }

    s = p;
    p = ngx_http_smartflow_usd(s, micro);

    return ngx_http_smartflow_add_trailer(r, "x-smartflow-cost-usd", s, p - s);
}


static ngx_int_t
ngx_http_smartflow_add_trailer(ngx_http_request_t *r, char *name,
    u_char *value, size_t len)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.trailers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->lowcase_key = NULL;
    h->key.data = (u_char *) name;
    h->key.len = ngx_strlen(name);
    h->value.data = value;
    h->value.len = len;

    return NGX_OK;
}
