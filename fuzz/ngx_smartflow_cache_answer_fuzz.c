/*
 * libFuzzer target for the MetaCache's one-pass reader of an OpenAI
 * answer (ngx_http_smartflow_cache_answer.c), against the JSON parser it
 * stands in for: whenever the reader accepts an input, the parser must
 * accept it too and find the same content and finish reason where the
 * store looks for them (one choice, its message's content a string, no
 * tool calls, no "error" member).  Built outside nginx, over malloc.
 */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "ngx_http_smartflow_cache.h"


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
    return buf + (max > 0 ? 1 : 0);
}


ngx_int_t
ngx_hextoi(u_char *line, size_t n)
{
    u_char     c, ch;
    ngx_int_t  value;

    if (n == 0) {
        return NGX_ERROR;
    }

    for (value = 0; n--; line++) {
        ch = *line;

        if (ch >= '0' && ch <= '9') {
            value = value * 16 + (ch - '0');
            continue;
        }

        c = (u_char) (ch | 0x20);

        if (c >= 'a' && c <= 'f') {
            value = value * 16 + (c - 'a' + 10);
            continue;
        }

        return NGX_ERROR;
    }

    return value;
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


/* what the store reads in the tree (ngx_http_smartflow_cache_whole) */
static int
fuzz_whole(ngx_smartflow_json_t *j, ngx_str_t *content, ngx_str_t *finish)
{
    ngx_smartflow_json_t  *c, *m, *b, *s, *f;

    if (j->type != NGX_SMARTFLOW_JSON_OBJECT
        || ngx_smartflow_json_get(j, "error"))
    {
        return 0;
    }

    c = ngx_smartflow_json_get(j, "choices");
    if (c == NULL || c->type != NGX_SMARTFLOW_JSON_ARRAY || c->nchild != 1) {
        return 0;
    }

    m = ngx_smartflow_json_get(c->child, "message");
    b = ngx_smartflow_json_get(m, "tool_calls");
    s = ngx_smartflow_json_get(m, "content");
    f = ngx_smartflow_json_get(c->child, "finish_reason");

    if ((b && b->type != NGX_SMARTFLOW_JSON_NULL
         && !(b->type == NGX_SMARTFLOW_JSON_ARRAY && b->nchild == 0))
        || !ngx_smartflow_json_is_string(s)
        || !ngx_smartflow_json_is_string(f))
    {
        return 0;
    }

    *content = s->str;
    *finish = f->str;

    return 1;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                *copy;
    ngx_str_t              err, text, reason, c2, f2;
    ngx_smartflow_json_t  *j;

    /* the reader must not read past the bytes it is given */
    copy = malloc(size ? size : 1);
    if (copy == NULL) {
        return 0;
    }

    memcpy(copy, data, size);

    if (ngx_smartflow_cache_answer_openai(NULL, copy, size, &text, &reason)
        == NGX_OK)
    {
        j = ngx_smartflow_json_parse(NULL, copy, size, &err);

        if (j == NULL) {
            fprintf(stderr, "accepted, but the parser refuses it: %.*s\n",
                    (int) size, (char *) data);
            abort();
        }

        if (!fuzz_whole(j, &c2, &f2)) {
            fprintf(stderr, "accepted, but the store would not read it\n");
            abort();
        }

        if (text.len != c2.len
            || (c2.len && memcmp(text.data, c2.data, c2.len) != 0)
            || reason.len != f2.len
            || (f2.len && memcmp(reason.data, f2.data, f2.len) != 0))
        {
            fprintf(stderr, "another content or finish reason: \"%.*s\" "
                    "\"%.*s\" against \"%.*s\" \"%.*s\"\n",
                    (int) text.len, text.data, (int) reason.len,
                    reason.data, (int) c2.len, c2.data, (int) f2.len,
                    f2.data);
            abort();
        }
    }

    free(copy);
    fuzz_free_all();

    return 0;
}
