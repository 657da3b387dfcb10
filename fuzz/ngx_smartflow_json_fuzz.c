/*
 * libFuzzer target for the gateway's JSON reader and writer: any input
 * must either be refused cleanly or parse into a tree whose dump parses
 * again into the same dump (the writer's output is valid JSON and stable).
 * Built outside nginx, so the few nginx core functions the JSON code
 * calls are provided below over malloc.
 */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

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


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ngx_str_t              err, out1, out2;
    ngx_smartflow_json_t  *j;

    j = ngx_smartflow_json_parse(NULL, (u_char *) data, size, &err);

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
