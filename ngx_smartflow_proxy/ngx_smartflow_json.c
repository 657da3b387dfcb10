/*
 * JSON for the whole gateway: yajl's streaming parser builds a small tree
 * in the request pool (one parse per request), and a writer sizes a tree
 * first and then fills one buffer.  Numbers keep their original text so a
 * rewritten body differs from the client's only where it was changed.
 */

#include <yajl/yajl_parse.h>

#include "ngx_http_smartflow_proxy.h"


typedef struct {
    ngx_pool_t              *pool;
    ngx_smartflow_json_t    *root;
    ngx_smartflow_json_t    *stack[NGX_SMARTFLOW_JSON_MAX_DEPTH];
    ngx_uint_t               depth;
    ngx_str_t                key;
    unsigned                 failed:1;
    unsigned                 too_deep:1;
} ngx_smartflow_json_parser_t;


static ngx_smartflow_json_t *ngx_smartflow_json_add(
    ngx_smartflow_json_parser_t *jp, ngx_smartflow_json_type_e type,
    const u_char *s, size_t len);
static int ngx_smartflow_json_on_null(void *ctx);
static int ngx_smartflow_json_on_boolean(void *ctx, int b);
static int ngx_smartflow_json_on_number(void *ctx, const char *s, size_t len);
static int ngx_smartflow_json_on_string(void *ctx, const unsigned char *s,
    size_t len);
static int ngx_smartflow_json_on_start_map(void *ctx);
static int ngx_smartflow_json_on_map_key(void *ctx, const unsigned char *s,
    size_t len);
static int ngx_smartflow_json_on_end(void *ctx);
static int ngx_smartflow_json_on_start_array(void *ctx);
static size_t ngx_smartflow_json_size(ngx_smartflow_json_t *j);
static u_char *ngx_smartflow_json_write(u_char *p, ngx_smartflow_json_t *j);


static void *ngx_smartflow_yajl_malloc(void *ctx, size_t size);
static void *ngx_smartflow_yajl_realloc(void *ctx, void *ptr, size_t size);
static void ngx_smartflow_yajl_free(void *ctx, void *ptr);


static yajl_callbacks  ngx_smartflow_json_callbacks = {
    ngx_smartflow_json_on_null,
    ngx_smartflow_json_on_boolean,
    NULL,
    NULL,
    ngx_smartflow_json_on_number,
    ngx_smartflow_json_on_string,
    ngx_smartflow_json_on_start_map,
    ngx_smartflow_json_on_map_key,
    ngx_smartflow_json_on_end,
    ngx_smartflow_json_on_start_array,
    ngx_smartflow_json_on_end
};


ngx_smartflow_json_t *
ngx_smartflow_json_parse(ngx_pool_t *pool, u_char *p, size_t len,
    ngx_str_t *err)
{
    yajl_handle                   h;
    yajl_status                   st;
    yajl_alloc_funcs              af;
    ngx_smartflow_json_parser_t   jp;

    ngx_memzero(&jp, sizeof(ngx_smartflow_json_parser_t));
    jp.pool = pool;

    /* yajl's own memory from the pool: no malloc per request */
    ngx_smartflow_yajl_pool_funcs(&af, pool);

    h = yajl_alloc(&ngx_smartflow_json_callbacks, &af, &jp);
    if (h == NULL) {
        ngx_str_set(err, "out of memory");
        return NULL;
    }

    st = yajl_parse(h, p, len);
    if (st == yajl_status_ok) {
        st = yajl_complete_parse(h);
    }

    if (st != yajl_status_ok || jp.root == NULL) {
        if (jp.too_deep) {
            ngx_str_set(err, "JSON nested too deeply");

        } else if (jp.failed) {
            ngx_str_set(err, "out of memory");

        } else {
            err->data = ngx_pnalloc(pool, 64);
            if (err->data == NULL) {
                ngx_str_set(err, "invalid JSON");

            } else {
                err->len = ngx_snprintf(err->data, 64,
                                        "invalid JSON near byte %uz",
                                        yajl_get_bytes_consumed(h))
                           - err->data;
            }
        }

        yajl_free(h);
        return NULL;
    }

    yajl_free(h);
    return jp.root;
}


ngx_smartflow_json_t *
ngx_smartflow_json_get(ngx_smartflow_json_t *obj, char *key)
{
    size_t                 len;
    ngx_smartflow_json_t  *c;

    if (obj == NULL || obj->type != NGX_SMARTFLOW_JSON_OBJECT) {
        return NULL;
    }

    len = ngx_strlen(key);

    /* the last duplicate wins, as in most JSON readers */
    for (c = obj->child, obj = NULL; c; c = c->next) {
        if (c->key.len == len && ngx_strncmp(c->key.data, key, len) == 0) {
            obj = c;
        }
    }

    return obj;
}


ngx_smartflow_json_t *
ngx_smartflow_json_new(ngx_pool_t *pool, ngx_smartflow_json_type_e type,
    ngx_str_t *str)
{
    ngx_smartflow_json_t  *j;

    j = ngx_pcalloc(pool, sizeof(ngx_smartflow_json_t));
    if (j == NULL) {
        return NULL;
    }

    j->type = type;

    if (str) {
        j->str = *str;
    }

    return j;
}


void
ngx_smartflow_json_append(ngx_smartflow_json_t *parent, char *key,
    ngx_smartflow_json_t *child)
{
    if (key) {
        child->key.data = (u_char *) key;
        child->key.len = ngx_strlen(key);
    }

    child->next = NULL;

    if (parent->last) {
        parent->last->next = child;

    } else {
        parent->child = child;
    }

    parent->last = child;
    parent->nchild++;
}


ngx_int_t
ngx_smartflow_json_set_str(ngx_pool_t *pool, ngx_smartflow_json_t *obj,
    char *key, ngx_str_t *value)
{
    ngx_smartflow_json_t  *j;

    j = ngx_smartflow_json_get(obj, key);

    if (j) {
        j->type = NGX_SMARTFLOW_JSON_STRING;
        j->str = *value;
        j->child = NULL;
        j->last = NULL;
        j->nchild = 0;
        return NGX_OK;
    }

    j = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_STRING, value);
    if (j == NULL) {
        return NGX_ERROR;
    }

    ngx_smartflow_json_append(obj, key, j);

    return NGX_OK;
}


ngx_int_t
ngx_smartflow_json_dump(ngx_pool_t *pool, ngx_smartflow_json_t *j,
    ngx_str_t *out)
{
    size_t   len;
    u_char  *p;

    len = ngx_smartflow_json_size(j);

    p = ngx_pnalloc(pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    out->data = p;
    out->len = ngx_smartflow_json_write(p, j) - p;

    return NGX_OK;
}


/*
 * What escaping adds to each byte: 1 for the two-character escapes, 5 for
 * the other control characters (\u00XX), 0 for the bytes written as they
 * are, which are nearly all: runs of them are found by the table and
 * copied whole.
 */
static const u_char  ngx_smartflow_json_extra[256] = {
    5, 5, 5, 5, 5, 5, 5, 5, 1, 1, 1, 5, 1, 1, 5, 5,
    5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5,
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0
    /* the rest, 0x60 to 0xff, are 0 */
};


/*
 * Whether 8 bytes need no escape: none below 0x20, no '"', no '\\'
 * (a byte is zero in v when v - 0x01 borrows from its top bit and the
 * byte had not that bit set)
 */
#define NGX_SF_JSON_ONES    0x0101010101010101ULL
#define NGX_SF_JSON_HIGHS   0x8080808080808080ULL

static ngx_inline ngx_uint_t
ngx_smartflow_json_plain8(u_char *p)
{
    uint64_t  x, q, b;

    ngx_memcpy(&x, p, 8);

    q = x ^ (NGX_SF_JSON_ONES * '"');
    b = x ^ (NGX_SF_JSON_ONES * '\\');

    return ((((x - NGX_SF_JSON_ONES * 0x20) & ~x)
             | ((q - NGX_SF_JSON_ONES) & ~q)
             | ((b - NGX_SF_JSON_ONES) & ~b))
            & NGX_SF_JSON_HIGHS) == 0;
}


size_t
ngx_smartflow_json_escape_len(u_char *src, size_t len)
{
    size_t   n;
    u_char  *end;

    n = len;

    if (len == 0) {
        return 0;       /* src may be NULL */
    }

    end = src + len;

    while (src < end) {
        if (end - src >= 8 && ngx_smartflow_json_plain8(src)) {
            src += 8;
            continue;
        }

        n += ngx_smartflow_json_extra[*src++];
    }

    return n;
}


u_char *
ngx_smartflow_json_escape(u_char *dst, u_char *src, size_t len)
{
    u_char  c, *end, *run;

    static u_char  hex[] = "0123456789abcdef";

    if (len == 0) {
        return dst;     /* src may be NULL */
    }

    end = src + len;

    while (src < end) {

        run = src;

        while (end - src >= 8 && ngx_smartflow_json_plain8(src)) {
            src += 8;
        }

        while (src < end && ngx_smartflow_json_extra[*src] == 0) {
            src++;
        }

        dst = ngx_cpymem(dst, run, src - run);

        if (src == end) {
            break;
        }

        c = *src++;
        *dst++ = '\\';

        switch (c) {
        case '"':  *dst++ = '"'; break;
        case '\\': *dst++ = '\\'; break;
        case '\n': *dst++ = 'n'; break;
        case '\r': *dst++ = 'r'; break;
        case '\t': *dst++ = 't'; break;
        case '\b': *dst++ = 'b'; break;
        case '\f': *dst++ = 'f'; break;

        default:
            *dst++ = 'u'; *dst++ = '0'; *dst++ = '0';
            *dst++ = hex[c >> 4];
            *dst++ = hex[c & 0xf];
        }
    }

    return dst;
}


static size_t
ngx_smartflow_json_size(ngx_smartflow_json_t *j)
{
    size_t                 n;
    ngx_smartflow_json_t  *c;

    switch (j->type) {
    case NGX_SMARTFLOW_JSON_NULL:
        return 4;
    case NGX_SMARTFLOW_JSON_TRUE:
        return 4;
    case NGX_SMARTFLOW_JSON_FALSE:
        return 5;
    case NGX_SMARTFLOW_JSON_NUMBER:
        return j->str.len;
    case NGX_SMARTFLOW_JSON_STRING:
        return 2 + ngx_smartflow_json_escape_len(j->str.data, j->str.len);
    default:
        break;
    }

    n = 2;

    for (c = j->child; c; c = c->next) {
        if (j->type == NGX_SMARTFLOW_JSON_OBJECT) {
            n += 3 + ngx_smartflow_json_escape_len(c->key.data, c->key.len);
        }

        n += ngx_smartflow_json_size(c) + (c->next ? 1 : 0);
    }

    return n;
}


static u_char *
ngx_smartflow_json_write(u_char *p, ngx_smartflow_json_t *j)
{
    ngx_smartflow_json_t  *c;

    switch (j->type) {
    case NGX_SMARTFLOW_JSON_NULL:
        return ngx_sf_cpymem(p, "null");
    case NGX_SMARTFLOW_JSON_TRUE:
        return ngx_sf_cpymem(p, "true");
    case NGX_SMARTFLOW_JSON_FALSE:
        return ngx_sf_cpymem(p, "false");
    case NGX_SMARTFLOW_JSON_NUMBER:
        return ngx_cpymem(p, j->str.data, j->str.len);
    case NGX_SMARTFLOW_JSON_STRING:
        *p++ = '"';
        p = ngx_smartflow_json_escape(p, j->str.data, j->str.len);
        *p++ = '"';
        return p;
    default:
        break;
    }

    *p++ = (j->type == NGX_SMARTFLOW_JSON_OBJECT) ? '{' : '[';

    for (c = j->child; c; c = c->next) {
        if (j->type == NGX_SMARTFLOW_JSON_OBJECT) {
            *p++ = '"';
            p = ngx_smartflow_json_escape(p, c->key.data, c->key.len);
            *p++ = '"';
            *p++ = ':';
        }

        p = ngx_smartflow_json_write(p, c);

        if (c->next) {
            *p++ = ',';
        }
    }

    *p++ = (j->type == NGX_SMARTFLOW_JSON_OBJECT) ? '}' : ']';

    return p;
}


static ngx_smartflow_json_t *
ngx_smartflow_json_add(ngx_smartflow_json_parser_t *jp,
    ngx_smartflow_json_type_e type, const u_char *s, size_t len)
{
    ngx_smartflow_json_t  *j, *parent;

    j = ngx_pcalloc(jp->pool, sizeof(ngx_smartflow_json_t));
    if (j == NULL) {
        jp->failed = 1;
        return NULL;
    }

    j->type = type;

    if (len) {
        j->str.data = ngx_pnalloc(jp->pool, len);
        if (j->str.data == NULL) {
            jp->failed = 1;
            return NULL;
        }

        ngx_memcpy(j->str.data, s, len);
        j->str.len = len;
    }

    if (jp->depth == 0) {
        jp->root = j;
        return j;
    }

    parent = jp->stack[jp->depth - 1];

    if (parent->type == NGX_SMARTFLOW_JSON_OBJECT) {
        j->key = jp->key;
        ngx_str_null(&jp->key);
    }

    if (parent->last) {
        parent->last->next = j;

    } else {
        parent->child = j;
    }

    parent->last = j;
    parent->nchild++;

    return j;
}


static int
ngx_smartflow_json_on_null(void *ctx)
{
    return ngx_smartflow_json_add(ctx, NGX_SMARTFLOW_JSON_NULL, NULL, 0)
           != NULL;
}


static int
ngx_smartflow_json_on_boolean(void *ctx, int b)
{
    return ngx_smartflow_json_add(ctx, b ? NGX_SMARTFLOW_JSON_TRUE
                                         : NGX_SMARTFLOW_JSON_FALSE,
                                  NULL, 0)
           != NULL;
}


static int
ngx_smartflow_json_on_number(void *ctx, const char *s, size_t len)
{
    return ngx_smartflow_json_add(ctx, NGX_SMARTFLOW_JSON_NUMBER,
                                  (const u_char *) s, len)
           != NULL;
}


static int
ngx_smartflow_json_on_string(void *ctx, const unsigned char *s, size_t len)
{
    return ngx_smartflow_json_add(ctx, NGX_SMARTFLOW_JSON_STRING, s, len)
           != NULL;
}


static int
ngx_smartflow_json_push(void *ctx, ngx_smartflow_json_type_e type)
{
    ngx_smartflow_json_t         *j;
    ngx_smartflow_json_parser_t  *jp = ctx;

    if (jp->depth == NGX_SMARTFLOW_JSON_MAX_DEPTH) {
        jp->too_deep = 1;
        return 0;
    }

    j = ngx_smartflow_json_add(jp, type, NULL, 0);
    if (j == NULL) {
        return 0;
    }

    jp->stack[jp->depth++] = j;

    return 1;
}


static int
ngx_smartflow_json_on_start_map(void *ctx)
{
    return ngx_smartflow_json_push(ctx, NGX_SMARTFLOW_JSON_OBJECT);
}


static int
ngx_smartflow_json_on_start_array(void *ctx)
{
    return ngx_smartflow_json_push(ctx, NGX_SMARTFLOW_JSON_ARRAY);
}


static int
ngx_smartflow_json_on_map_key(void *ctx, const unsigned char *s, size_t len)
{
    ngx_smartflow_json_parser_t  *jp = ctx;

    jp->key.data = ngx_pnalloc(jp->pool, len ? len : 1);
    if (jp->key.data == NULL) {
        jp->failed = 1;
        return 0;
    }

    ngx_memcpy(jp->key.data, s, len);
    jp->key.len = len;

    return 1;
}


static int
ngx_smartflow_json_on_end(void *ctx)
{
    ngx_smartflow_json_parser_t  *jp = ctx;

    jp->depth--;

    return 1;
}


/* yajl allocating from a pool; what it frees goes with the pool */

typedef struct {
    size_t  size;
} ngx_smartflow_pool_block_t;


static void *
ngx_smartflow_yajl_malloc(void *ctx, size_t size)
{
    ngx_smartflow_pool_block_t  *b;

    b = ngx_palloc(ctx, sizeof(ngx_smartflow_pool_block_t) + size);
    if (b == NULL) {
        return NULL;
    }

    b->size = size;

    return b + 1;
}


static void *
ngx_smartflow_yajl_realloc(void *ctx, void *ptr, size_t size)
{
    void                        *p;
    ngx_smartflow_pool_block_t  *b;

    p = ngx_smartflow_yajl_malloc(ctx, size);

    if (p && ptr) {
        b = (ngx_smartflow_pool_block_t *) ptr - 1;
        ngx_memcpy(p, ptr, ngx_min(b->size, size));
    }

    return p;
}


static void
ngx_smartflow_yajl_free(void *ctx, void *ptr)
{
    /* the pool frees everything with the request */
}


void
ngx_smartflow_yajl_pool_funcs(yajl_alloc_funcs *af, ngx_pool_t *pool)
{
    af->malloc = ngx_smartflow_yajl_malloc;
    af->realloc = ngx_smartflow_yajl_realloc;
    af->free = ngx_smartflow_yajl_free;
    af->ctx = pool;
}
