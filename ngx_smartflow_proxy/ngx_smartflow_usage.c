/*
 * Usage counts from a whole JSON answer that passes through untouched:
 * yajl reads it incrementally as buffers go by, keeping no copy and no
 * tree, and notes only the token counts of the top-level "usage" (OpenAI,
 * Anthropic) or "usageMetadata" (Gemini) object.
 */

#include <yajl/yajl_parse.h>

#include "ngx_http_smartflow_proxy.h"


static int
ngx_smartflow_usage_on_number(void *ctx, const char *s, size_t len)
{
    ngx_int_t                   n;
    ngx_smartflow_usage_scan_t  *us = ctx;

    if (us->depth == 2 && us->in_usage && us->field) {
        n = ngx_atoi((u_char *) s, len);

        if (n != NGX_ERROR) {
            if (us->field == 1) {
                us->prompt += n;

            } else {
                us->completion += n;
            }
        }
    }

    us->field = 0;

    return 1;
}


static int
ngx_smartflow_usage_on_value(void *ctx)
{
    ngx_smartflow_usage_scan_t  *us = ctx;

    us->field = 0;

    return 1;
}


static int
ngx_smartflow_usage_on_bool(void *ctx, int b)
{
    return ngx_smartflow_usage_on_value(ctx);
}


static int
ngx_smartflow_usage_on_string(void *ctx, const unsigned char *s, size_t len)
{
    return ngx_smartflow_usage_on_value(ctx);
}


static int
ngx_smartflow_usage_on_key(void *ctx, const unsigned char *s, size_t len)
{
    ngx_smartflow_usage_scan_t  *us = ctx;

    static ngx_str_t  prompt[] = {
        ngx_string("prompt_tokens"), ngx_string("input_tokens"),
        ngx_string("cache_creation_input_tokens"),
        ngx_string("cache_read_input_tokens"),
        ngx_string("promptTokenCount"), ngx_null_string
    };

    static ngx_str_t  completion[] = {
        ngx_string("completion_tokens"), ngx_string("output_tokens"),
        ngx_string("candidatesTokenCount"), ngx_string("thoughtsTokenCount"),
        ngx_null_string
    };

    ngx_str_t  *k;

    us->field = 0;

    if (us->depth == 1) {
        us->usage_next = (len == 5 && ngx_strncmp(s, "usage", 5) == 0)
                         || (len == 13
                             && ngx_strncmp(s, "usageMetadata", 13) == 0);
        return 1;
    }

    if (us->depth != 2 || !us->in_usage) {
        return 1;
    }

    for (k = prompt; k->len; k++) {
        if (k->len == len && ngx_strncmp(k->data, s, len) == 0) {
            us->field = 1;
            return 1;
        }
    }

    for (k = completion; k->len; k++) {
        if (k->len == len && ngx_strncmp(k->data, s, len) == 0) {
            us->field = 2;
            return 1;
        }
    }

    return 1;
}


static int
ngx_smartflow_usage_on_start(void *ctx)
{
    ngx_smartflow_usage_scan_t  *us = ctx;

    us->depth++;

    if (us->depth == 2) {
        us->in_usage = us->usage_next;
    }

    us->usage_next = 0;
    us->field = 0;

    return 1;
}


static int
ngx_smartflow_usage_on_end(void *ctx)
{
    ngx_smartflow_usage_scan_t  *us = ctx;

    if (us->depth == 2) {
        us->in_usage = 0;
    }

    us->depth--;

    return 1;
}


static yajl_callbacks  ngx_smartflow_usage_callbacks = {
    ngx_smartflow_usage_on_value,
    ngx_smartflow_usage_on_bool,
    NULL,
    NULL,
    ngx_smartflow_usage_on_number,
    ngx_smartflow_usage_on_string,
    ngx_smartflow_usage_on_start,
    ngx_smartflow_usage_on_key,
    ngx_smartflow_usage_on_end,
    ngx_smartflow_usage_on_start,
    ngx_smartflow_usage_on_end
};


ngx_int_t
ngx_smartflow_usage_scan_init(ngx_pool_t *pool, ngx_smartflow_usage_scan_t *us)
{
    yajl_alloc_funcs  af;

    ngx_memzero(us, sizeof(ngx_smartflow_usage_scan_t));

    ngx_smartflow_yajl_pool_funcs(&af, pool);

    us->handle = yajl_alloc(&ngx_smartflow_usage_callbacks, &af, us);
    if (us->handle == NULL) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


void
ngx_smartflow_usage_scan(ngx_smartflow_usage_scan_t *us, u_char *p,
    size_t len)
{
    if (us->handle == NULL || us->failed) {
        return;
    }

    if ((p ? yajl_parse(us->handle, p, len)
           : yajl_complete_parse(us->handle))
        != yajl_status_ok)
    {
        /* not JSON after all: the counts stay as they are */
        us->failed = 1;
    }
}
