/*
 * libFuzzer target for the gateway's JSON reader and writer: any input
 * must either be refused cleanly or parse into a tree whose dump parses
 * again into the same dump (the writer's output is valid JSON and stable).
 * The reader is also held against yajl's: whatever it accepts yajl
 * accepts, and whatever yajl accepts it accepts too, unless the input is
 * not strict UTF-8 (yajl lets overlong forms and surrogates through), has
 * a vertical tab or form feed (white space to yajl, not to RFC 8259) or
 * nests deeper than the reader's limit.  Built outside nginx, so the few
 * nginx core functions the JSON code calls are provided below over
 * malloc.
 */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include <yajl/yajl_parse.h>

#include "ngx_http_smartflow_proxy.h"


/* a pool is a list of malloc'd blocks, all freed together */
typedef struct fuzz_block_s  fuzz_block_t;

struct fuzz_block_s {
    fuzz_block_t  *next;
};

static fuzz_block_t  *fuzz_blocks;


void *
ngx_pnalloc(ngx_pool_t *pool, size_t size)
{
    fuzz_block_t  *b;

    b = malloc(sizeof(fuzz_block_t) + size);
    if (b == NULL) {
        return NULL;
    }

    b->next = fuzz_blocks;
    fuzz_blocks = b;

    return b + 1;
}


void *
ngx_palloc(ngx_pool_t *pool, size_t size)
{
    return ngx_pnalloc(pool, size);
}


void *
ngx_pcalloc(ngx_pool_t *pool, size_t size)
{
    void  *p;

    p = ngx_pnalloc(pool, size);
    if (p) {
        memset(p, 0, size);
    }

    return p;
}


u_char * ngx_cdecl
ngx_snprintf(u_char *buf, size_t max, const char *fmt, ...)
{
    /* only the parser's error text uses it; its content does not matter */
    return buf + (max > 0 ? 1 : 0);
}


static void
fuzz_free_all(void)
{
    fuzz_block_t  *b, *next;

    for (b = fuzz_blocks; b; b = next) {
        next = b->next;
        free(b);
    }

    fuzz_blocks = NULL;
}


/* yajl's verdict: values seen and the deepest nesting */

typedef struct {
    size_t  values;
    size_t  depth;
    size_t  max_depth;
} fuzz_yajl_t;


static int
fuzz_value(void *ctx)
{
    ((fuzz_yajl_t *) ctx)->values++;
    return 1;
}


static int
fuzz_boolean(void *ctx, int b)
{
    return fuzz_value(ctx);
}


static int
fuzz_text(void *ctx, const char *s, size_t len)
{
    return fuzz_value(ctx);
}


static int
fuzz_string(void *ctx, const unsigned char *s, size_t len)
{
    return fuzz_value(ctx);
}


static int
fuzz_open(void *ctx)
{
    fuzz_yajl_t  *y = ctx;

    y->values++;

    if (++y->depth > y->max_depth) {
        y->max_depth = y->depth;
    }

    return 1;
}


static int
fuzz_close(void *ctx)
{
    ((fuzz_yajl_t *) ctx)->depth--;
    return 1;
}


static yajl_callbacks  fuzz_callbacks = {
    fuzz_value, fuzz_boolean, NULL, NULL, fuzz_text, fuzz_string,
    fuzz_open, fuzz_string, fuzz_close, fuzz_open, fuzz_close
};


static int
fuzz_yajl_accepts(const uint8_t *data, size_t size, fuzz_yajl_t *y)
{
    int          ok;
    yajl_handle  h;

    memset(y, 0, sizeof(fuzz_yajl_t));

    h = yajl_alloc(&fuzz_callbacks, NULL, y);
    if (h == NULL) {
        abort();
    }

    ok = yajl_parse(h, data, size) == yajl_status_ok
         && yajl_complete_parse(h) == yajl_status_ok
         && y->values > 0;

    yajl_free(h);

    return ok;
}


/*
 * yajl, at the end of the input, takes an unfinished token after a whole
 * value ("true \"") for a token still to come and accepts; inside
 * brackets the same input is refused as ended early
 */
static int
fuzz_yajl_wrapped(const uint8_t *data, size_t size)
{
    int           ok;
    uint8_t      *w;
    fuzz_yajl_t   y;

    w = malloc(size + 2);
    if (w == NULL) {
        abort();
    }

    w[0] = '[';
    memcpy(w + 1, data, size);
    w[size + 1] = ']';

    ok = fuzz_yajl_accepts(w, size + 2, &y);

    free(w);

    return ok;
}


/* RFC 3629 UTF-8 over the whole input */
static int
fuzz_strict_utf8(const uint8_t *p, size_t size)
{
    size_t   i, n, k;
    uint8_t  c, lo, hi;

    for (i = 0; i < size; i += n + 1) {
        c = p[i];
        lo = 0x80;
        hi = 0xbf;

        if (c < 0x80) {
            n = 0;

        } else if (c >= 0xc2 && c <= 0xdf) {
            n = 1;

        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            lo = (c == 0xe0) ? 0xa0 : 0x80;
            hi = (c == 0xed) ? 0x9f : 0xbf;

        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            lo = (c == 0xf0) ? 0x90 : 0x80;
            hi = (c == 0xf4) ? 0x8f : 0xbf;

        } else {
            return 0;
        }

        if (n == 0) {
            continue;
        }

        if (i + n >= size || p[i + 1] < lo || p[i + 1] > hi) {
            return 0;
        }

        for (k = 2; k <= n; k++) {
            if ((p[i + k] & 0xc0) != 0x80) {
                return 0;
            }
        }
    }

    return 1;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                    yajl_ok;
    ngx_str_t              err, out1, out2;
    fuzz_yajl_t            y;
    ngx_smartflow_json_t  *j;

    j = ngx_smartflow_json_parse(NULL, (u_char *) data, size, &err);

    yajl_ok = fuzz_yajl_accepts(data, size, &y);

    if (j != NULL && !yajl_ok) {
        fprintf(stderr, "accepted what yajl refuses\n");
        abort();
    }

    if (j == NULL && yajl_ok && fuzz_strict_utf8(data, size)
        && y.max_depth <= NGX_SMARTFLOW_JSON_MAX_DEPTH
        && fuzz_yajl_wrapped(data, size)
        && memchr(data, '\v', size) == NULL
        && memchr(data, '\f', size) == NULL)
    {
        fprintf(stderr, "refused what yajl accepts: %.*s\n",
                (int) err.len, err.data);
        abort();
    }

    if (j != NULL) {
        if (ngx_smartflow_json_dump(NULL, j, &out1) != NGX_OK) {
            abort();
        }

        j = ngx_smartflow_json_parse(NULL, out1.data, out1.len, &err);
        if (j == NULL) {
            fprintf(stderr, "dump does not parse: %.*s\n",
                    (int) out1.len, out1.data);
            abort();
        }

        if (ngx_smartflow_json_dump(NULL, j, &out2) != NGX_OK
            || out1.len != out2.len
            || memcmp(out1.data, out2.data, out1.len) != 0)
        {
            fprintf(stderr, "dump is not stable\n");
            abort();
        }
    }

    fuzz_free_all();

    return 0;
}
