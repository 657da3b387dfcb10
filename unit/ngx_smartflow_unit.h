/*
 * What the unit programs share: the few nginx core functions the
 * translations call, provided over malloc (a pool that frees at exit,
 * arrays, ngx_sprintf, a fixed time), TAP output and the helpers the
 * checks are written with.  Each program includes it once, from the file
 * that holds its main().
 */

#ifndef _NGX_SMARTFLOW_UNIT_H_INCLUDED_
#define _NGX_SMARTFLOW_UNIT_H_INCLUDED_


#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "ngx_http_smartflow_translate.h"


/* the nginx core the translation uses */

typedef struct unit_block_s  unit_block_t;

struct unit_block_s {
    unit_block_t  *next;
};

static unit_block_t  *unit_blocks;
static size_t         unit_allocated;   /* bytes, for checks of growth */
static ngx_uint_t     unit_no_memory;   /* allocations fail while set */


void *
ngx_pnalloc(ngx_pool_t *pool, size_t size)
{
    unit_block_t  *b;

    if (unit_no_memory) {
        return NULL;
    }

    b = malloc(sizeof(unit_block_t) + size);
    if (b == NULL) {
        return NULL;
    }

    unit_allocated += size;

    b->next = unit_blocks;
    unit_blocks = b;

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


void *
ngx_array_push(ngx_array_t *a)
{
    void  *elt, *new;

    if (a->nelts == a->nalloc) {
        new = ngx_palloc(a->pool, 2 * (a->nalloc ? a->nalloc : 1) * a->size);
        if (new == NULL) {
            return NULL;
        }

        if (a->nelts) {
            memcpy(new, a->elts, a->nelts * a->size);
        }

        a->elts = new;
        a->nalloc = 2 * (a->nalloc ? a->nalloc : 1);
    }

    elt = (u_char *) a->elts + a->size * a->nelts;
    a->nelts++;

    return elt;
}


/*
 * The tree insert without the rebalancing: the orders the trees keep are
 * the same, and the unit programs' trees are small.
 */
void
ngx_rbtree_insert(ngx_rbtree_t *tree, ngx_rbtree_node_t *node)
{
    if (tree->root == tree->sentinel) {
        node->parent = NULL;
        node->left = tree->sentinel;
        node->right = tree->sentinel;
        ngx_rbt_black(node);
        tree->root = node;
        return;
    }

    tree->insert(tree->root, node, tree->sentinel);
}


static u_char *
unit_put(u_char *buf, u_char *last, const char *s, size_t len)
{
    while (len-- && buf < last) {
        *buf++ = *s++;
    }

    return buf;
}


/* the conversions the gateway's code uses; anything else aborts */
u_char *
ngx_vslprintf(u_char *buf, u_char *last, const char *fmt, va_list args)
{
    int         uns;
    char        tmp[64];
    size_t      slen;
    ngx_str_t  *v;
    const char *s;

    while (*fmt && buf < last) {

        if (*fmt != '%') {
            *buf++ = *fmt++;
            continue;
        }

        fmt++;
        uns = 0;
        slen = (size_t) -1;

        for ( ;; ) {
            if (*fmt == 'u') {
                uns = 1;
                fmt++;

            } else if (*fmt == '*') {
                slen = va_arg(args, size_t);
                fmt++;

            } else {
                break;
            }
        }

        switch (*fmt++) {

        case 'V':
            v = va_arg(args, ngx_str_t *);
            buf = unit_put(buf, last, (char *) v->data, v->len);
            continue;

        case 's':
            s = va_arg(args, const char *);
            buf = unit_put(buf, last, s,
                           slen == (size_t) -1 ? strlen(s) : slen);
            continue;

        case 'i':
            if (uns) {
                snprintf(tmp, sizeof(tmp), "%lu",
                         (unsigned long) va_arg(args, ngx_uint_t));
            } else {
                snprintf(tmp, sizeof(tmp), "%ld",
                         (long) va_arg(args, ngx_int_t));
            }
            break;

        case 'd':
            if (uns) {
                snprintf(tmp, sizeof(tmp), "%u", va_arg(args, u_int));
            } else {
                snprintf(tmp, sizeof(tmp), "%d", va_arg(args, int));
            }
            break;

        case 'z':
            if (uns) {
                snprintf(tmp, sizeof(tmp), "%zu", va_arg(args, size_t));
            } else {
                snprintf(tmp, sizeof(tmp), "%zd", va_arg(args, ssize_t));
            }
            break;

        case 'T':
            snprintf(tmp, sizeof(tmp), "%ld", (long) va_arg(args, time_t));
            break;

        case '%':
            tmp[0] = '%';
            tmp[1] = '\0';
            break;

        default:
            fprintf(stderr, "harness: unsupported format in \"%s\"\n", fmt);
            abort();
        }

        buf = unit_put(buf, last, tmp, strlen(tmp));
    }

    return buf;
}


u_char * ngx_cdecl
ngx_sprintf(u_char *buf, const char *fmt, ...)
{
    u_char   *p;
    va_list   args;

    va_start(args, fmt);
    p = ngx_vslprintf(buf, (void *) -1, fmt, args);
    va_end(args);

    return p;
}


u_char * ngx_cdecl
ngx_snprintf(u_char *buf, size_t max, const char *fmt, ...)
{
    u_char   *p;
    va_list   args;

    va_start(args, fmt);
    p = ngx_vslprintf(buf, buf + max, fmt, args);
    va_end(args);

    return p;
}


static ngx_time_t           unit_now = { 1700000000, 0, 0 };
volatile ngx_time_t        *ngx_cached_time = &unit_now;


/* TAP */

static ngx_pool_t   unit_pool;
static int          unit_n;
static int          unit_failed;


static void
ok(int cond, const char *name)
{
    unit_n++;

    if (!cond) {
        unit_failed++;
    }

    printf("%sok %d - %s\n", cond ? "" : "not ", unit_n, name);
}


static void
is(const char *got, const char *expected, const char *name)
{
    ok(strcmp(got, expected) == 0, name);

    if (strcmp(got, expected) != 0) {
        printf("#      got: %s\n# expected: %s\n", got, expected);
    }
}


static void
has(const char *got, const char *needle, const char *name)
{
    ok(strstr(got, needle) != NULL, name);

    if (strstr(got, needle) == NULL) {
        printf("#      got: %s\n#  missing: %s\n", got, needle);
    }
}


static void
lacks(const char *got, const char *needle, const char *name)
{
    ok(strstr(got, needle) == NULL, name);

    if (strstr(got, needle) != NULL) {
        printf("#      got: %s\n# unwanted: %s\n", got, needle);
    }
}


/* what a translation's _err helper gives when it did not refuse */
#define ACCEPTED  "(accepted)"


/* err, from an _err helper, says the translation was refused */
#define refused(err, name)  ok(strcmp(err, ACCEPTED) != 0, name)


static int
count(const char *s, const char *needle)
{
    int  n;

    for (n = 0; (s = strstr(s, needle)) != NULL; s += strlen(needle)) {
        n++;
    }

    return n;
}


/* the plan line, the memory back; the program's exit code */
static int
unit_done(void)
{
    unit_block_t  *b, *next;

    printf("1..%d\n", unit_n);

    for (b = unit_blocks; b; b = next) {
        next = b->next;
        free(b);
    }

    unit_blocks = NULL;

    return unit_failed ? 1 : 0;
}


/* trees and translations */

static ngx_smartflow_json_t *
J(const char *s)
{
    ngx_str_t              err;
    ngx_smartflow_json_t  *j;

    j = ngx_smartflow_json_parse(&unit_pool, (u_char *) s, strlen(s), &err);
    if (j == NULL) {
        fprintf(stderr, "harness: bad test JSON (%.*s): %s\n",
                (int) err.len, err.data, s);
        abort();
    }

    return j;
}


/* the dump as a C string, "(null)" for no tree */
static char *
D(ngx_smartflow_json_t *j)
{
    char       *s;
    ngx_str_t   out;

    if (j == NULL) {
        return "(null)";
    }

    if (ngx_smartflow_json_dump(&unit_pool, j, &out) != NGX_OK) {
        abort();
    }

    s = ngx_pnalloc(&unit_pool, out.len + 1);
    if (s == NULL) {
        abort();
    }

    memcpy(s, out.data, out.len);
    s[out.len] = '\0';

    return s;
}


static void
xinit(ngx_smartflow_xlate_t *x, char *model)
{
    memset(x, 0, sizeof(ngx_smartflow_xlate_t));

    x->pool = &unit_pool;
    x->model.data = (u_char *) model;
    x->model.len = strlen(model);
}


static char *
xerr(ngx_smartflow_xlate_t *x)
{
    char  *s;

    s = ngx_pnalloc(&unit_pool, x->err.len + 1);
    if (s == NULL) {
        abort();
    }

    if (x->err.len) {
        memcpy(s, x->err.data, x->err.len);
    }

    s[x->err.len] = '\0';

    return s;
}


typedef ngx_smartflow_json_t *(*unit_xlate_pt)(ngx_smartflow_xlate_t *x,
    ngx_smartflow_json_t *in);


/* one body through a translation, for a client of model: the dump */
static char *
unit_xlate(unit_xlate_pt fn, char *model, const char *body)
{
    ngx_smartflow_xlate_t  x;

    xinit(&x, model);

    return D(fn(&x, J(body)));
}


/* the error that refused the body, or ACCEPTED */
static char *
unit_xlate_err(unit_xlate_pt fn, char *model, const char *body)
{
    ngx_smartflow_xlate_t  x;

    xinit(&x, model);

    if (fn(&x, J(body)) != NULL) {
        return ACCEPTED;
    }

    return xerr(&x);
}


/* streams */

typedef ngx_int_t (*unit_end_pt)(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, ngx_uint_t broken, ngx_array_t *out);

#define UNIT_END_NONE    0
#define UNIT_END_CLEAN   1
#define UNIT_END_BROKEN  2


/* the stream's end, if how says it has one, then its events as one string */
static char *
unit_stream_end(unit_end_pt end, ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, ngx_array_t *out, ngx_uint_t how)
{
    char        *s, *p;
    size_t       len;
    ngx_str_t   *e;
    ngx_uint_t   i;

    if (how != UNIT_END_NONE
        && end(x, st, how == UNIT_END_BROKEN, out) != NGX_OK)
    {
        printf("# stream end failed: %s\n", xerr(x));
        return "(failed)";
    }

    e = out->elts;
    len = 0;

    for (i = 0; i < out->nelts; i++) {
        len += e[i].len;
    }

    s = ngx_pnalloc(&unit_pool, len + 1);
    if (s == NULL) {
        abort();
    }

    for (p = s, i = 0; i < out->nelts; i++) {
        memcpy(p, e[i].data, e[i].len);
        p += e[i].len;
    }

    *p = '\0';

    return s;
}


/* the n-th event's parsed data (from 0), of "data: " events */
static ngx_smartflow_json_t *
event_json(const char *s, int n)
{
    char       *end;
    ngx_str_t   err;

    for ( ;; ) {
        end = strstr(s, "\n\n");
        if (end == NULL) {
            return NULL;
        }

        if (n-- == 0) {
            return ngx_smartflow_json_parse(&unit_pool, (u_char *) s + 6,
                                            end - s - 6, &err);
        }

        s = end + 2;
    }
}


/* the OpenAI chunks a client gets, as the translation writes them */

#define HEAD(id, model)                                                      \
    "data: {\"id\":\"chatcmpl-" id "\",\"object\":\"chat.completion.chunk\"," \
    "\"created\":1700000000,\"model\":\"" model "\",\"choices\":"

#define ROLE(id, m)                                                          \
    HEAD(id, m) "[{\"index\":0,\"delta\":{\"role\":\"assistant\","           \
    "\"content\":\"\"},\"finish_reason\":null}]}\n\n"

#define DELTA(id, m, d)                                                      \
    HEAD(id, m) "[{\"index\":0,\"delta\":" d ",\"finish_reason\":null}]}\n\n"

#define FINISH(id, m, r)                                                     \
    HEAD(id, m) "[{\"index\":0,\"delta\":{},\"finish_reason\":\"" r          \
    "\"}]}\n\n"

#define USAGE(id, m, p, c, t)                                                \
    HEAD(id, m) "[],\"usage\":{\"prompt_tokens\":" p ",\"completion_tokens\":" \
    c ",\"total_tokens\":" t "}}\n\n"

#define DONE  "data: [DONE]\n\n"

#define BROKEN                                                               \
    "data: {\"error\":{\"message\":\"The provider's stream ended before "     \
    "completion.\",\"type\":\"api_error\",\"param\":null,"                   \
    "\"code\":\"upstream_stream_broken\"}}\n\n" DONE


#endif /* _NGX_SMARTFLOW_UNIT_H_INCLUDED_ */
