/*
 * JSON for the whole gateway: a reader builds a small tree in the request
 * pool (one parse per request), and a writer sizes a tree first and then
 * fills one buffer.  Numbers keep their original text so a rewritten body
 * differs from the client's only where it was changed.
 */

#include "ngx_http_smartflow_proxy.h"


typedef struct {
    u_char                  *p;       /* the next byte to read */
    u_char                  *start;
    u_char                  *end;
    ngx_pool_t              *pool;
    ngx_uint_t               escaped;  /* the last string had an escape */
} ngx_smartflow_json_reader_t;


static ngx_int_t ngx_smartflow_json_string(ngx_smartflow_json_reader_t *rd,
    ngx_str_t *s);
static ngx_int_t ngx_smartflow_json_utf8(ngx_smartflow_json_reader_t *rd,
    u_char **w);
static ngx_int_t ngx_smartflow_json_escaped(ngx_smartflow_json_reader_t *rd,
    u_char **w);
static ngx_int_t ngx_smartflow_json_hex4(u_char *p, uint32_t *cp);
static ngx_int_t ngx_smartflow_json_number(ngx_smartflow_json_reader_t *rd,
    ngx_str_t *s);
static size_t ngx_smartflow_json_size(ngx_smartflow_json_t *j);
static u_char *ngx_smartflow_json_write(u_char *p, ngx_smartflow_json_t *j);


#define ngx_sf_json_ws(c)                                                    \
    ((c) <= ' ' && ((c) == ' ' || (c) == '\n' || (c) == '\r' || (c) == '\t'))

/* the nodes the reader takes from the pool at a time */
#define NGX_SF_JSON_NODES  16

/*
 * A string known to need no escaping: empty, or its end was noted when it
 * was read or first measured (a string set to other text since has
 * another end).
 */
#define ngx_sf_json_plain(j, f)                                              \
    ((j)->f.len == 0                                                         \
     || ((j)->f##_plain != NULL && (j)->f##_plain == (j)->f.data + (j)->f.len))

#define ngx_sf_json_skip_ws(rd)                                              \
    while ((rd)->p < (rd)->end && ngx_sf_json_ws(*(rd)->p)) { (rd)->p++; }


/*
 * RFC 8259 JSON into a tree in the pool.  The input is copied once and
 * every string and number of the tree points into the copy: strings are
 * unescaped in place (an escape never grows), so a parse makes one copy
 * and one small allocation per value.  Strings must be valid UTF-8
 * (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF);
 * a \u escape of a lone surrogate becomes U+FFFD.  One value, with
 * nothing but white space after it.
 */

ngx_smartflow_json_t *
ngx_smartflow_json_parse(ngx_pool_t *pool, u_char *p, size_t len,
    ngx_str_t *err)
{
    return ngx_smartflow_json_parse_copy(pool, p, len, err, NULL);
}


/*
 * As ngx_smartflow_json_parse(), and the copy the tree points into is
 * given back (whether the text was JSON or not) for a caller that wipes
 * it: an unescaped string leaves bytes of its escaped text after it.
 */
ngx_smartflow_json_t *
ngx_smartflow_json_parse_copy(ngx_pool_t *pool, u_char *p, size_t len,
    ngx_str_t *err, ngx_str_t *copy)
{
    u_char                       c;
    ngx_str_t                    key, s;
    u_char                      *key_plain;
    ngx_uint_t                   depth, nspare;
    ngx_smartflow_json_t        *j, *parent, *root, *spare;
    ngx_smartflow_json_t        *stack[NGX_SMARTFLOW_JSON_MAX_DEPTH];
    ngx_smartflow_json_reader_t  rd;

    rd.pool = pool;

    if (copy) {
        /* nothing to wipe when even the copy could not be made */
        ngx_str_null(copy);
    }

    rd.start = ngx_pnalloc(pool, len ? len : 1);
    if (rd.start == NULL) {
        ngx_str_set(err, "out of memory");
        return NULL;
    }

    if (len) {
        ngx_memcpy(rd.start, p, len);
    }

    if (copy) {
        copy->data = rd.start;
        copy->len = len;
    }

    rd.p = rd.start;
    rd.end = rd.start + len;

    root = NULL;
    parent = NULL;
    depth = 0;
    ngx_str_null(&key);
    key_plain = NULL;
    spare = NULL;
    nspare = 0;

    for ( ;; ) {

        /* a value */

        ngx_sf_json_skip_ws(&rd);

        if (rd.p == rd.end) {
            goto invalid;
        }

        if (nspare == 0) {
            /* nodes are taken from the pool a few at a time */

            spare = ngx_palloc(pool, NGX_SF_JSON_NODES
                                     * sizeof(ngx_smartflow_json_t));
            if (spare == NULL) {
                goto nomem;
            }

            nspare = NGX_SF_JSON_NODES;
        }

        j = spare++;
        nspare--;

        j->key = key;
        j->key_plain = key_plain;
        j->str_plain = NULL;
        ngx_str_null(&j->str);
        j->child = NULL;
        j->last = NULL;
        j->next = NULL;
        j->nchild = 0;

        c = *rd.p;

        switch (c) {

        case '{':
        case '[':
            j->type = (c == '{') ? NGX_SMARTFLOW_JSON_OBJECT
                                 : NGX_SMARTFLOW_JSON_ARRAY;
            rd.p++;
            break;

        case '"':
            j->type = NGX_SMARTFLOW_JSON_STRING;

            if (ngx_smartflow_json_string(&rd, &j->str) != NGX_OK) {
                goto invalid;
            }

            if (!rd.escaped) {
                j->str_plain = j->str.data + j->str.len;
            }

            if (j->str.len == 0) {
                j->str.data = NULL;     /* callers read "" as unset */
            }

            break;

        case 't':
        case 'f':
        case 'n':
            if (c == 't' && rd.end - rd.p >= 4
                && ngx_strncmp(rd.p, "true", 4) == 0)
            {
                j->type = NGX_SMARTFLOW_JSON_TRUE;
                rd.p += 4;

            } else if (c == 'f' && rd.end - rd.p >= 5
                       && ngx_strncmp(rd.p, "false", 5) == 0)
            {
                j->type = NGX_SMARTFLOW_JSON_FALSE;
                rd.p += 5;

            } else if (c == 'n' && rd.end - rd.p >= 4
                       && ngx_strncmp(rd.p, "null", 4) == 0)
            {
                j->type = NGX_SMARTFLOW_JSON_NULL;
                rd.p += 4;

            } else {
                goto invalid;
            }

            break;

        default:
            j->type = NGX_SMARTFLOW_JSON_NUMBER;

            if (ngx_smartflow_json_number(&rd, &j->str) != NGX_OK) {
                goto invalid;
            }
        }

        if (parent == NULL) {
            root = j;

        } else {
            if (parent->last) {
                parent->last->next = j;

            } else {
                parent->child = j;
            }

            parent->last = j;
            parent->nchild++;
        }

        ngx_str_null(&key);
        key_plain = NULL;

        if (j->type == NGX_SMARTFLOW_JSON_OBJECT
            || j->type == NGX_SMARTFLOW_JSON_ARRAY)
        {
            if (depth == NGX_SMARTFLOW_JSON_MAX_DEPTH) {
                ngx_str_set(err, "JSON nested too deeply");
                return NULL;
            }

            stack[depth++] = j;
            parent = j;

            ngx_sf_json_skip_ws(&rd);

            if (rd.p < rd.end
                && *rd.p == (j->type == NGX_SMARTFLOW_JSON_OBJECT ? '}' : ']'))
            {
                /* empty: closed below */

            } else {
                if (j->type == NGX_SMARTFLOW_JSON_OBJECT) {
                    goto member;
                }

                continue;
            }
        }

        /* after a value: a comma, the end of its container, or the end */

        for ( ;; ) {
            ngx_sf_json_skip_ws(&rd);

            if (parent == NULL) {
                if (rd.p != rd.end) {
                    goto invalid;
                }

                return root;
            }

            if (rd.p == rd.end) {
                goto invalid;
            }

            c = *rd.p;

            if (c == ',') {
                rd.p++;

                if (parent->type == NGX_SMARTFLOW_JSON_OBJECT) {
                    ngx_sf_json_skip_ws(&rd);
                    goto member;
                }

                break;
            }

            if (c != (parent->type == NGX_SMARTFLOW_JSON_OBJECT ? '}' : ']'))
            {
                goto invalid;
            }

            rd.p++;
            depth--;
            parent = depth ? stack[depth - 1] : NULL;
        }

        continue;

    member:

        /* a member's name and its colon; the value follows */

        if (rd.p == rd.end || *rd.p != '"'
            || ngx_smartflow_json_string(&rd, &s) != NGX_OK)
        {
            goto invalid;
        }

        ngx_sf_json_skip_ws(&rd);

        if (rd.p == rd.end || *rd.p != ':') {
            goto invalid;
        }

        rd.p++;
        key = s;
        key_plain = rd.escaped ? NULL : s.data + s.len;
    }

invalid:

    err->data = ngx_pnalloc(pool, 64);
    if (err->data == NULL) {
        ngx_str_set(err, "invalid JSON");
        return NULL;
    }

    err->len = ngx_snprintf(err->data, 64, "invalid JSON near byte %uz",
                            (size_t) (rd.p - rd.start))
               - err->data;
    return NULL;

nomem:

    ngx_str_set(err, "out of memory");
    return NULL;
}


/* rd->p at the opening quote; s gets the unescaped text, in place */

static ngx_int_t
ngx_smartflow_json_string(ngx_smartflow_json_reader_t *rd, ngx_str_t *s)
{
    u_char  c, *w, *run;

    rd->p++;
    s->data = rd->p;
    w = rd->p;

    for ( ;; ) {
        run = rd->p;

        /* ASCII with nothing to unescape */

        rd->p = ngx_smartflow_json_run(rd->p, rd->end, 1);

        while (rd->p < rd->end) {
            c = *rd->p;

            if (c < 0x20 || c == '"' || c == '\\' || c >= 0x80) {
                break;
            }

            rd->p++;
        }

        if (w != run) {
            ngx_memmove(w, run, rd->p - run);
        }

        w += rd->p - run;

        if (rd->p == rd->end) {
            return NGX_ERROR;
        }

        c = *rd->p;

        if (c == '"') {
            rd->escaped = (w != rd->p);
            rd->p++;
            s->len = w - s->data;
            return NGX_OK;
        }

        if (c < 0x20) {
            return NGX_ERROR;
        }

        if (c == '\\') {
            if (ngx_smartflow_json_escaped(rd, &w) != NGX_OK) {
                return NGX_ERROR;
            }

            continue;
        }

        if (ngx_smartflow_json_utf8(rd, &w) != NGX_OK) {
            return NGX_ERROR;
        }
    }
}


/* one multibyte UTF-8 character, checked as RFC 3629 says, and copied */

static ngx_int_t
ngx_smartflow_json_utf8(ngx_smartflow_json_reader_t *rd, u_char **w)
{
    u_char      c, lo, hi;
    ngx_uint_t  i, n;

    c = *rd->p;
    lo = 0x80;
    hi = 0xbf;

    if (c >= 0xc2 && c <= 0xdf) {
        n = 1;

    } else if (c >= 0xe0 && c <= 0xef) {
        n = 2;

        if (c == 0xe0) {
            lo = 0xa0;         /* no overlong form */

        } else if (c == 0xed) {
            hi = 0x9f;         /* no surrogate */
        }

    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 3;

        if (c == 0xf0) {
            lo = 0x90;

        } else if (c == 0xf4) {
            hi = 0x8f;         /* nothing above U+10FFFF */
        }

    } else {
        return NGX_ERROR;
    }

    if ((size_t) (rd->end - rd->p) <= n) {
        return NGX_ERROR;
    }

    if (rd->p[1] < lo || rd->p[1] > hi) {
        return NGX_ERROR;
    }

    for (i = 2; i <= n; i++) {
        if ((rd->p[i] & 0xc0) != 0x80) {
            return NGX_ERROR;
        }
    }

    for (i = 0; i <= n; i++) {
        *(*w)++ = *rd->p++;
    }

    return NGX_OK;
}


/* rd->p at a backslash: the character it stands for, as UTF-8 */

static ngx_int_t
ngx_smartflow_json_escaped(ngx_smartflow_json_reader_t *rd, u_char **w)
{
    u_char    *d;
    uint32_t   cp, lo;

    if (rd->end - rd->p < 2) {
        return NGX_ERROR;
    }

    d = *w;

    switch (rd->p[1]) {
    case '"':  *d++ = '"'; break;
    case '\\': *d++ = '\\'; break;
    case '/':  *d++ = '/'; break;
    case 'b':  *d++ = '\b'; break;
    case 'f':  *d++ = '\f'; break;
    case 'n':  *d++ = '\n'; break;
    case 'r':  *d++ = '\r'; break;
    case 't':  *d++ = '\t'; break;

    case 'u':
        if (rd->end - rd->p < 6
            || ngx_smartflow_json_hex4(rd->p + 2, &cp) != NGX_OK)
        {
            return NGX_ERROR;
        }

        rd->p += 6;

        if (cp >= 0xd800 && cp <= 0xdbff
            && rd->end - rd->p >= 6 && rd->p[0] == '\\' && rd->p[1] == 'u'
            && ngx_smartflow_json_hex4(rd->p + 2, &lo) == NGX_OK
            && lo >= 0xdc00 && lo <= 0xdfff)
        {
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            rd->p += 6;

        } else if (cp >= 0xd800 && cp <= 0xdfff) {
            cp = 0xfffd;       /* a lone surrogate */
        }

        if (cp < 0x80) {
            *d++ = (u_char) cp;

        } else if (cp < 0x800) {
            *d++ = (u_char) (0xc0 | (cp >> 6));
            *d++ = (u_char) (0x80 | (cp & 0x3f));

        } else if (cp < 0x10000) {
            *d++ = (u_char) (0xe0 | (cp >> 12));
            *d++ = (u_char) (0x80 | ((cp >> 6) & 0x3f));
            *d++ = (u_char) (0x80 | (cp & 0x3f));

        } else {
            *d++ = (u_char) (0xf0 | (cp >> 18));
            *d++ = (u_char) (0x80 | ((cp >> 12) & 0x3f));
            *d++ = (u_char) (0x80 | ((cp >> 6) & 0x3f));
            *d++ = (u_char) (0x80 | (cp & 0x3f));
        }

        *w = d;
        return NGX_OK;

    default:
        return NGX_ERROR;
    }

    rd->p += 2;
    *w = d;

    return NGX_OK;
}


static ngx_int_t
ngx_smartflow_json_hex4(u_char *p, uint32_t *cp)
{
    u_char      c;
    ngx_uint_t  i;

    *cp = 0;

    for (i = 0; i < 4; i++) {
        c = p[i];

        if (c >= '0' && c <= '9') {
            c -= '0';

        } else {
            c |= 0x20;

            if (c < 'a' || c > 'f') {
                return NGX_ERROR;
            }

            c = c - 'a' + 10;
        }

        *cp = (*cp << 4) | c;
    }

    return NGX_OK;
}


/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?, kept as text */

static ngx_int_t
ngx_smartflow_json_number(ngx_smartflow_json_reader_t *rd, ngx_str_t *s)
{
    u_char  *p, *end;

    p = rd->p;
    end = rd->end;

    if (p < end && *p == '-') {
        p++;
    }

    if (p == end || *p < '0' || *p > '9') {
        return NGX_ERROR;
    }

    if (*p++ != '0') {
        while (p < end && *p >= '0' && *p <= '9') {
            p++;
        }
    }

    if (p < end && *p == '.') {
        p++;

        if (p == end || *p < '0' || *p > '9') {
            return NGX_ERROR;
        }

        while (p < end && *p >= '0' && *p <= '9') {
            p++;
        }
    }

    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;

        if (p < end && (*p == '+' || *p == '-')) {
            p++;
        }

        if (p == end || *p < '0' || *p > '9') {
            return NGX_ERROR;
        }

        while (p < end && *p >= '0' && *p <= '9') {
            p++;
        }
    }

    s->data = rd->p;
    s->len = p - rd->p;
    rd->p = p;

    return NGX_OK;
}


ngx_smartflow_json_t *
ngx_smartflow_json_get_n(ngx_smartflow_json_t *obj, char *key, size_t len)
{
    ngx_smartflow_json_t  *c;

    if (obj == NULL || obj->type != NGX_SMARTFLOW_JSON_OBJECT) {
        return NULL;
    }

    /* the last duplicate wins, as in most JSON readers */
    for (c = obj->child, obj = NULL; c; c = c->next) {
        if (c->key.len == len
            && (len == 0
                || (c->key.data[0] == (u_char) key[0]
                    && ngx_memcmp(c->key.data, key, len) == 0)))
        {
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

    j = ngx_palloc(pool, sizeof(ngx_smartflow_json_t));
    if (j == NULL) {
        return NULL;
    }

    /* every field is set here, as the reader sets them for its nodes */

    j->type = type;

    if (str) {
        j->str = *str;

    } else {
        ngx_str_null(&j->str);
    }

    ngx_str_null(&j->key);
    j->child = NULL;
    j->last = NULL;
    j->next = NULL;
    j->nchild = 0;
    j->key_plain = NULL;
    j->str_plain = NULL;

    return j;
}


void
ngx_smartflow_json_append_n(ngx_smartflow_json_t *parent, char *key,
    size_t len, ngx_smartflow_json_t *child)
{
    if (key) {
        child->key.data = (u_char *) key;
        child->key.len = len;
        child->key_plain = (u_char *) key + len;
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
        j->str_plain = NULL;
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

    for ( ;; ) {
        src = ngx_smartflow_json_plain(src, end);

        if (end - src < 8) {
            break;
        }

        n += ngx_smartflow_json_extra[*src++];
    }

    /* the last few bytes, one by one */

    while (src < end) {
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

        src = ngx_smartflow_json_plain(src, end);

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


/* a string's escaped length; a short one, a name most often, in line */

static ngx_inline size_t
ngx_smartflow_json_size_str(u_char *s, size_t len)
{
    size_t  i, n;

    if (len > 16) {
        return ngx_smartflow_json_escape_len(s, len);
    }

    for (n = len, i = 0; i < len; i++) {
        n += ngx_smartflow_json_extra[s[i]];
    }

    return n;
}


static size_t
ngx_smartflow_json_size(ngx_smartflow_json_t *j)
{
    size_t                 n, k;
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
        if (ngx_sf_json_plain(j, str)) {
            return 2 + j->str.len;
        }

        n = ngx_smartflow_json_size_str(j->str.data, j->str.len);

        if (n == j->str.len) {
            j->str_plain = j->str.data + j->str.len;
        }

        return 2 + n;
    default:
        break;
    }

    n = 2;

    for (c = j->child; c; c = c->next) {
        if (j->type == NGX_SMARTFLOW_JSON_OBJECT) {
            if (ngx_sf_json_plain(c, key)) {
                n += 3 + c->key.len;

            } else {
                k = ngx_smartflow_json_size_str(c->key.data, c->key.len);

                if (k == c->key.len) {
                    c->key_plain = c->key.data + c->key.len;
                }

                n += 3 + k;
            }
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

        if (j->str.len == 0) {
            /* str.data may be NULL */

        } else if (ngx_sf_json_plain(j, str)) {
            p = ngx_cpymem(p, j->str.data, j->str.len);

        } else {
            p = ngx_smartflow_json_escape(p, j->str.data, j->str.len);
        }

        *p++ = '"';
        return p;
    default:
        break;
    }

    *p++ = (j->type == NGX_SMARTFLOW_JSON_OBJECT) ? '{' : '[';

    for (c = j->child; c; c = c->next) {
        if (j->type == NGX_SMARTFLOW_JSON_OBJECT) {
            *p++ = '"';

            if (c->key.len == 0) {
                /* key.data may be NULL */

            } else if (ngx_sf_json_plain(c, key)) {
                p = ngx_cpymem(p, c->key.data, c->key.len);

            } else {
                p = ngx_smartflow_json_escape(p, c->key.data, c->key.len);
            }

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
