/*
 * libFuzzer target for the SSE reader: the events read from an input fed
 * in one piece must be exactly the events read when the same bytes come
 * in small pieces of varying size (events split across reads), and the
 * carry-over buffer must never exceed its bound.  Built outside nginx,
 * over the same malloc-backed pool shims as the JSON target.
 */

#include <stdio.h>
#include <stdlib.h>

#include "ngx_http_smartflow_proxy.h"


#define FUZZ_MAX_EVENTS  4096


typedef struct {
    ngx_uint_t  n;
    size_t      bytes;
    uint32_t    hash[FUZZ_MAX_EVENTS];
} fuzz_events_t;


/* a pool: every block it handed out, freed together after a run */
static void        *fuzz_blocks[FUZZ_MAX_EVENTS * 2];
static ngx_uint_t   fuzz_nblocks;


void *
ngx_pnalloc(ngx_pool_t *pool, size_t size)
{
    void  *p;

    if (fuzz_nblocks == sizeof(fuzz_blocks) / sizeof(void *)) {
        return NULL;
    }

    p = malloc(size ? size : 1);
    if (p) {
        fuzz_blocks[fuzz_nblocks++] = p;
    }

    return p;
}


ngx_int_t
ngx_pfree(ngx_pool_t *pool, void *p)
{
    ngx_uint_t  i;

    for (i = 0; i < fuzz_nblocks; i++) {
        if (fuzz_blocks[i] == p) {
            free(p);
            fuzz_blocks[i] = fuzz_blocks[--fuzz_nblocks];
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


static void
fuzz_free_all(void)
{
    while (fuzz_nblocks) {
        free(fuzz_blocks[--fuzz_nblocks]);
    }
}


static uint32_t
fuzz_hash(uint32_t h, ngx_str_t *s)
{
    size_t  i;

    for (i = 0; i < s->len; i++) {
        h = h * 31 + s->data[i];
    }

    return h * 17 + (uint32_t) s->len;
}


static ngx_int_t
fuzz_on_event(void *data, ngx_smartflow_sse_event_t *ev)
{
    fuzz_events_t  *fe = data;

    if (fe->n < FUZZ_MAX_EVENTS) {
        fe->hash[fe->n] = fuzz_hash(fuzz_hash(ev->comment, &ev->event),
                                    &ev->data);
    }

    fe->n++;
    fe->bytes += ev->raw.len;

    return NGX_OK;
}


static ngx_int_t
fuzz_read(const uint8_t *data, size_t size, size_t step, fuzz_events_t *fe)
{
    size_t               off, n;
    ngx_int_t            rc;
    ngx_smartflow_sse_t  sse;

    ngx_memzero(&sse, sizeof(ngx_smartflow_sse_t));
    sse.max = 1 << 20;
    rc = NGX_OK;

    for (off = 0; off < size && rc == NGX_OK; off += n) {
        n = step ? step + (off % 3) : size;
        n = (n > size - off) ? size - off : n;

        rc = ngx_smartflow_sse_feed(&sse, (u_char *) data + off, n,
                                    fuzz_on_event, fe);

        if (sse.len > sse.max || sse.len > sse.size) {
            abort();
        }
    }

    /* every byte is in an event or still waiting for its end */
    if (rc == NGX_OK && fe->bytes + sse.len != size) {
        fprintf(stderr, "bytes lost: %zu in events, %zu waiting, %zu in\n",
                fe->bytes, sse.len, size);
        abort();
    }

    return rc;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t         step;
    fuzz_events_t  whole, parts;

    if (size < 1) {
        return 0;
    }

    step = 1 + data[0] % 16;
    data++;
    size--;

    ngx_memzero(&whole, sizeof(fuzz_events_t));
    ngx_memzero(&parts, sizeof(fuzz_events_t));

    if (fuzz_read(data, size, 0, &whole) != NGX_OK
        || fuzz_read(data, size, step, &parts) != NGX_OK)
    {
        abort();
    }

    if (whole.n != parts.n
        || memcmp(whole.hash, parts.hash,
                  sizeof(uint32_t) * ngx_min(whole.n, FUZZ_MAX_EVENTS))
           != 0)
    {
        fprintf(stderr, "split reads gave %u events, whole gave %u\n",
                (unsigned) parts.n, (unsigned) whole.n);
        abort();
    }

    fuzz_free_all();

    return 0;
}
