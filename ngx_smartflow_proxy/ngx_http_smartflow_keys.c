/*
 * Who is calling: the ACCESS phase handler.  A key comes as
 * "Authorization: Bearer KEY" (OpenAI's SDKs) or "x-api-key: KEY"
 * (Anthropic's); it is compared by SHA-256 digest in constant time.
 * Subrequests are skipped by nginx's access phase itself, and a refusal
 * is a plain status code, so "satisfy any" works as operators expect.
 */

#include <openssl/crypto.h>

#include "ngx_http_smartflow_proxy.h"


static ngx_int_t ngx_http_smartflow_find_key(ngx_http_request_t *r,
    ngx_str_t *key);


ngx_int_t
ngx_http_smartflow_access_handler(ngx_http_request_t *r)
{
    u_char                           digest[32];
    ngx_str_t                        key;
    ngx_http_smartflow_ctx_t        *ctx;
    ngx_http_smartflow_loc_conf_t   *slcf;
    ngx_http_smartflow_main_conf_t  *smcf;

    slcf = ngx_http_get_module_loc_conf(r, ngx_http_smartflow_proxy_module);

    if (slcf->api == NGX_HTTP_SMARTFLOW_API_NONE
        || slcf->api == NGX_HTTP_SMARTFLOW_API_HEALTH
        || slcf->api >= NGX_HTTP_SMARTFLOW_API_ERROR)
    {
        return NGX_DECLINED;
    }

    smcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_proxy_module);

    ctx = ngx_http_smartflow_create_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->api = slcf->api;
    ctx->client_format = ngx_http_smartflow_api_format(slcf->api);

    if (ctx->key_id.len) {
        /* already checked before an internal redirect */
        return NGX_OK;
    }

    if (ngx_http_smartflow_find_key(r, &key) != NGX_OK) {
        return ngx_http_smartflow_error(r, NGX_HTTP_UNAUTHORIZED,
                   "invalid_request_error", "missing_api_key", NULL,
                   "You didn't provide an API key. Send it as "
                   "\"Authorization: Bearer KEY\" or \"x-api-key: KEY\".");
    }

    if (smcf->master_key.len == 0) {
        return ngx_http_smartflow_error(r, NGX_HTTP_UNAUTHORIZED,
                   "invalid_request_error", "invalid_api_key", NULL,
                   "Incorrect API key provided: no smartflow_master_key "
                   "is configured on this gateway.");
    }

    if (ngx_smartflow_sha256(key.data, key.len, digest) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (CRYPTO_memcmp(digest, smcf->master_hash, 32) != 0) {
        /* show only a prefix, as the providers do */
        return ngx_http_smartflow_error(r, NGX_HTTP_UNAUTHORIZED,
                   "invalid_request_error", "invalid_api_key", NULL,
                   "Incorrect API key provided: %*s****.",
                   ngx_min(key.len, 6), key.data);
    }

    ctx->master = 1;
    ngx_str_set(&ctx->key_id, "master");

    return NGX_OK;
}


static ngx_int_t
ngx_http_smartflow_find_key(ngx_http_request_t *r, ngx_str_t *key)
{
    u_char     *p, *last;
    ngx_str_t  *h;

    if (r->headers_in.authorization) {
        p = r->headers_in.authorization->value.data;
        last = p + r->headers_in.authorization->value.len;

        if (last - p > 7 && ngx_strncasecmp(p, (u_char *) "Bearer ", 7) == 0)
        {
            for (p += 7; p < last && *p == ' '; p++) { /* void */ }

            if (p < last) {
                key->data = p;
                key->len = last - p;
                return NGX_OK;
            }
        }
    }

    h = ngx_http_smartflow_header_in(&r->headers_in.headers, "x-api-key");
    if (h) {
        *key = *h;
        return NGX_OK;
    }

    return NGX_DECLINED;
}
