/*
 * libFuzzer target for the gateway's JSON reader and writer: any input
 * must either be refused cleanly or parse into a tree whose dump parses
 * again into the same dump (the writer's output is valid JSON and stable).
 * The reader is also held against yajl's: whatever it accepts yajl
 * accepts, and whatever yajl accepts it accepts too, unless the input is
 * not strict UTF-8 (yajl lets overlong forms and surrogates through), has
 * a vertical tab or form feed (white space to yajl, not to RFC 8259) or
 * nests deeper than the reader's limit.  The usage lexer is held against
 * both: fed the input whole, byte by byte and (a short input) in two
 * pieces cut at every byte, it must give the same counts, and on input
 * the reader accepts, the counts the tree holds.  Built outside nginx, so
 * the few nginx core functions the JSON code calls are provided below
 * over malloc.
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


/* the usage counts as the lexer reads them, fed in pieces of "step" */

static void
fuzz_usage_lex(const uint8_t *data, size_t size, size_t step,
    ngx_smartflow_usage_scan_t *us)
{
    size_t  i, n;

    ngx_smartflow_usage_scan_init(us);

    for (i = 0; i < size; i += n) {
        n = (size - i < step) ? size - i : step;
        ngx_smartflow_usage_scan(us, (u_char *) data + i, n);
    }

    ngx_smartflow_usage_scan(us, NULL, 0);
}


/*
 * The counts a tree holds: in each top-level "usage" or "usageMetadata"
 * object, the whole numbers up to 10^12 under a count's name written
 * without an escape.  0: the tree nests too deep for the lexer.
 */

static int
fuzz_usage_tree(ngx_smartflow_json_t *j, ngx_uint_t depth,
    ngx_uint_t *prompt, ngx_uint_t *completion)
{
    size_t                 i, k;
    ngx_uint_t             v, kind;
    ngx_smartflow_json_t  *c, *u;

    static const char  *names[] = {
        "prompt_tokens", "input_tokens", "cache_creation_input_tokens",
        "cache_read_input_tokens", "promptTokenCount",
        "completion_tokens", "output_tokens", "candidatesTokenCount",
        "thoughtsTokenCount"
    };

    if (depth >= 64) {
        return 0;
    }

    for (c = j->child; c; c = c->next) {
        if (!fuzz_usage_tree(c, depth + 1, NULL, NULL)) {
            return 0;
        }
    }

    if (prompt == NULL || j->type != NGX_SMARTFLOW_JSON_OBJECT) {
        return 1;
    }

    for (u = j->child; u; u = u->next) {
        if (u->type != NGX_SMARTFLOW_JSON_OBJECT || u->key_plain == NULL
            || !((u->key.len == 5 && memcmp(u->key.data, "usage", 5) == 0)
                 || (u->key.len == 13
                     && memcmp(u->key.data, "usageMetadata", 13) == 0)))
        {
            continue;
        }

        for (c = u->child; c; c = c->next) {
            if (c->type != NGX_SMARTFLOW_JSON_NUMBER || c->key_plain == NULL
                || c->str.len > 13)
            {
                continue;
            }

            kind = 0;

            for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
                if (c->key.len == strlen(names[i])
                    && memcmp(c->key.data, names[i], c->key.len) == 0)
                {
                    kind = (i < 5) ? 1 : 2;
                }
            }

            for (v = 0, k = 0; k < c->str.len; k++) {
                if (c->str.data[k] < '0' || c->str.data[k] > '9') {
                    kind = 0;
                    break;
                }

                v = v * 10 + (c->str.data[k] - '0');
            }

            if (kind == 0 || v > 1000000000000ULL) {
                continue;
            }

            if (kind == 1) {
                *prompt += v;

            } else {
                *completion += v;
            }
        }
    }

    return 1;
}


static void
fuzz_usage(const uint8_t *data, size_t size, ngx_smartflow_json_t *j)
{
    size_t                      step;
    ngx_uint_t                  prompt, completion;
    ngx_smartflow_usage_scan_t  whole, piece;

    fuzz_usage_lex(data, size, size ? size : 1, &whole);

    /* byte by byte, and (a short input) in two pieces cut anywhere */

    for (step = 1; step < size; step++) {
        if (step == 1) {
            fuzz_usage_lex(data, size, 1, &piece);

        } else if (size <= 256) {
            ngx_smartflow_usage_scan_init(&piece);
            ngx_smartflow_usage_scan(&piece, (u_char *) data, step);
            ngx_smartflow_usage_scan(&piece, (u_char *) data + step,
                                     size - step);
            ngx_smartflow_usage_scan(&piece, NULL, 0);

        } else {
            break;
        }

        if (piece.prompt != whole.prompt
            || piece.completion != whole.completion
            || piece.failed != whole.failed)
        {
            fprintf(stderr, "usage differs when cut at %zu\n", step);
            abort();
        }
    }

    prompt = 0;
    completion = 0;

    if (j == NULL || !fuzz_usage_tree(j, 0, &prompt, &completion)) {
        return;
    }

    if (whole.failed || whole.prompt != prompt
        || whole.completion != completion)
    {
        fprintf(stderr, "usage %lu/%lu, the tree holds %lu/%lu%s\n",
                (unsigned long) whole.prompt,
                (unsigned long) whole.completion, (unsigned long) prompt,
                (unsigned long) completion, whole.failed ? ", failed" : "");
        abort();
    }
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

    fuzz_usage(data, size, j);

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
