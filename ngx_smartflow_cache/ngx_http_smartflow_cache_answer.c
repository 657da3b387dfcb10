/*
 * The short way to read an OpenAI chat.completion for the store: one pass
 * over the bytes that finds choices[0].message.content and finish_reason
 * and checks the rest is JSON, with no tree built.  It reads only the
 * plain case and says so (NGX_OK); anything else it leaves to the JSON
 * parser (NGX_DECLINED): escapes in member names, a surrogate or NUL in a
 * \u escape, nesting deeper than 32, a name of interest twice, an "error"
 * member, anything but one choice, tool calls, a content or finish reason
 * that is not a string.  What it accepts the parser accepts too, with the
 * same strings: the JSON grammar, no control character in a string,
 * UTF-8 lead and continuation bytes as yajl checks them.
 */

#include "ngx_http_smartflow_cache.h"


#define NGX_SMARTFLOW_CACHE_ANSWER_DEPTH  32


typedef struct {
    u_char                     *p;
    u_char                     *last;
} ngx_smartflow_cache_scan_t;


static ngx_int_t ngx_smartflow_cache_scan_choice(
    ngx_smartflow_cache_scan_t *s, ngx_str_t *content, ngx_str_t *finish);
static ngx_int_t ngx_smartflow_cache_scan_message(
    ngx_smartflow_cache_scan_t *s, ngx_str_t *content);
static ngx_int_t ngx_smartflow_cache_scan_key(ngx_smartflow_cache_scan_t *s,
    ngx_str_t *key);
static ngx_int_t ngx_smartflow_cache_scan_value(ngx_smartflow_cache_scan_t *s,
    ngx_uint_t depth);
static ngx_int_t ngx_smartflow_cache_scan_string(
    ngx_smartflow_cache_scan_t *s, ngx_str_t *raw);
static ngx_int_t ngx_smartflow_cache_scan_number(
    ngx_smartflow_cache_scan_t *s);
static ngx_int_t ngx_smartflow_cache_scan_word(ngx_smartflow_cache_scan_t *s,
    char *word, size_t len);
static ngx_int_t ngx_smartflow_cache_decode(ngx_pool_t *pool, ngx_str_t *raw,
    ngx_str_t *out);


#define ngx_sf_scan_ws(s)                                                    \
    while ((s)->p < (s)->last                                                \
           && (*(s)->p == ' ' || *(s)->p == '\n' || *(s)->p == '\r'          \
               || *(s)->p == '\t'))                                          \
    {                                                                        \
        (s)->p++;                                                            \
    }

#define ngx_sf_scan_is(s, c)  ((s)->p < (s)->last && *(s)->p == (c))

#define ngx_sf_key_is(k, lit)                                                \
    ((k)->len == sizeof(lit) - 1                                             \
     && ngx_strncmp((k)->data, lit, sizeof(lit) - 1) == 0)


/*
 * content and finish come decoded, from the pool; NGX_DECLINED: read the
 * answer with the JSON parser instead
 */
ngx_int_t
ngx_smartflow_cache_answer_openai(ngx_pool_t *pool, u_char *p, size_t len,
    ngx_str_t *content, ngx_str_t *finish)
{
    ngx_str_t                   key, text, reason;
    ngx_uint_t                  choices;
    ngx_smartflow_cache_scan_t  s;

    s.p = p;
    s.last = p + len;
    choices = 0;

    ngx_str_null(&text);
    ngx_str_null(&reason);

    ngx_sf_scan_ws(&s);

    if (!ngx_sf_scan_is(&s, '{')) {
        return NGX_DECLINED;
    }

    s.p++;
    ngx_sf_scan_ws(&s);

    if (ngx_sf_scan_is(&s, '}')) {
        return NGX_DECLINED;
    }

    for ( ;; ) {
        if (ngx_smartflow_cache_scan_key(&s, &key) != NGX_OK) {
            return NGX_DECLINED;
        }

        if (ngx_sf_key_is(&key, "error")) {
            return NGX_DECLINED;
        }

        if (ngx_sf_key_is(&key, "choices")) {
            if (choices++) {
                return NGX_DECLINED;
            }

            if (ngx_smartflow_cache_scan_choice(&s, &text, &reason)
                != NGX_OK)
            {
                return NGX_DECLINED;
            }

        } else if (ngx_smartflow_cache_scan_value(&s, 1) != NGX_OK) {
            return NGX_DECLINED;
        }

        ngx_sf_scan_ws(&s);

        if (ngx_sf_scan_is(&s, ',')) {
            s.p++;
            ngx_sf_scan_ws(&s);
            continue;
        }

        if (ngx_sf_scan_is(&s, '}')) {
            s.p++;
            break;
        }

        return NGX_DECLINED;
    }

    ngx_sf_scan_ws(&s);

    if (s.p != s.last || text.data == NULL || reason.data == NULL) {
        return NGX_DECLINED;
    }

    if (ngx_smartflow_cache_decode(pool, &text, content) != NGX_OK
        || ngx_smartflow_cache_decode(pool, &reason, finish) != NGX_OK)
    {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/* "choices": [ {one choice} ] */
static ngx_int_t
ngx_smartflow_cache_scan_choice(ngx_smartflow_cache_scan_t *s,
    ngx_str_t *content, ngx_str_t *finish)
{
    ngx_str_t   key;
    ngx_uint_t  message;

    ngx_sf_scan_ws(s);

    if (!ngx_sf_scan_is(s, '[')) {
        return NGX_DECLINED;
    }

    s->p++;
    ngx_sf_scan_ws(s);

    if (!ngx_sf_scan_is(s, '{')) {
        return NGX_DECLINED;
    }

    s->p++;
    ngx_sf_scan_ws(s);

    if (ngx_sf_scan_is(s, '}')) {
        return NGX_DECLINED;
    }

    message = 0;

    for ( ;; ) {
        if (ngx_smartflow_cache_scan_key(s, &key) != NGX_OK) {
            return NGX_DECLINED;
        }

        if (ngx_sf_key_is(&key, "message")) {
            if (message++
                || ngx_smartflow_cache_scan_message(s, content) != NGX_OK)
            {
                return NGX_DECLINED;
            }

        } else if (ngx_sf_key_is(&key, "finish_reason")) {
            ngx_sf_scan_ws(s);

            if (finish->data
                || ngx_smartflow_cache_scan_string(s, finish) != NGX_OK)
            {
                return NGX_DECLINED;
            }

        } else if (ngx_smartflow_cache_scan_value(s, 3) != NGX_OK) {
            return NGX_DECLINED;
        }

        ngx_sf_scan_ws(s);

        if (ngx_sf_scan_is(s, ',')) {
            s->p++;
            ngx_sf_scan_ws(s);
            continue;
        }

        if (ngx_sf_scan_is(s, '}')) {
            s->p++;
            break;
        }

        return NGX_DECLINED;
    }

    /* one choice only */
    ngx_sf_scan_ws(s);

    if (!ngx_sf_scan_is(s, ']')) {
        return NGX_DECLINED;
    }

    s->p++;

    return NGX_OK;
}


/* "message": {"content": "...", "tool_calls": null or [], ...} */
static ngx_int_t
ngx_smartflow_cache_scan_message(ngx_smartflow_cache_scan_t *s,
    ngx_str_t *content)
{
    ngx_str_t   key;
    ngx_uint_t  tools;

    ngx_sf_scan_ws(s);

    if (!ngx_sf_scan_is(s, '{')) {
        return NGX_DECLINED;
    }

    s->p++;
    ngx_sf_scan_ws(s);

    if (ngx_sf_scan_is(s, '}')) {
        return NGX_DECLINED;
    }

    tools = 0;

    for ( ;; ) {
        if (ngx_smartflow_cache_scan_key(s, &key) != NGX_OK) {
            return NGX_DECLINED;
        }

        ngx_sf_scan_ws(s);

        if (ngx_sf_key_is(&key, "content")) {
            if (content->data
                || ngx_smartflow_cache_scan_string(s, content) != NGX_OK)
            {
                return NGX_DECLINED;
            }

        } else if (ngx_sf_key_is(&key, "tool_calls")) {
            if (tools++) {
                return NGX_DECLINED;
            }

            if (ngx_sf_scan_is(s, 'n')) {
                if (ngx_smartflow_cache_scan_word(s, "null", 4) != NGX_OK) {
                    return NGX_DECLINED;
                }

            } else {
                if (!ngx_sf_scan_is(s, '[')) {
                    return NGX_DECLINED;
                }

                s->p++;
                ngx_sf_scan_ws(s);

                if (!ngx_sf_scan_is(s, ']')) {
                    return NGX_DECLINED;
                }

                s->p++;
            }

        } else if (ngx_smartflow_cache_scan_value(s, 4) != NGX_OK) {
            return NGX_DECLINED;
        }

        ngx_sf_scan_ws(s);

        if (ngx_sf_scan_is(s, ',')) {
            s->p++;
            ngx_sf_scan_ws(s);
            continue;
        }

        if (ngx_sf_scan_is(s, '}')) {
            s->p++;
            return NGX_OK;
        }

        return NGX_DECLINED;
    }
}


/* a member's name, without escapes, and the colon after it */
static ngx_int_t
ngx_smartflow_cache_scan_key(ngx_smartflow_cache_scan_t *s, ngx_str_t *key)
{
    if (ngx_smartflow_cache_scan_string(s, key) != NGX_OK
        || ngx_strlchr(key->data, key->data + key->len, '\\'))
    {
        return NGX_DECLINED;
    }

    ngx_sf_scan_ws(s);

    if (!ngx_sf_scan_is(s, ':')) {
        return NGX_DECLINED;
    }

    s->p++;

    return NGX_OK;
}


/* any value, checked and passed over */
static ngx_int_t
ngx_smartflow_cache_scan_value(ngx_smartflow_cache_scan_t *s,
    ngx_uint_t depth)
{
    u_char     c, close;
    ngx_str_t  str;

    ngx_sf_scan_ws(s);

    if (s->p == s->last) {
        return NGX_DECLINED;
    }

    c = *s->p;

    switch (c) {

    case '"':
        return ngx_smartflow_cache_scan_string(s, &str);

    case 't':
        return ngx_smartflow_cache_scan_word(s, "true", 4);

    case 'f':
        return ngx_smartflow_cache_scan_word(s, "false", 5);

    case 'n':
        return ngx_smartflow_cache_scan_word(s, "null", 4);

    case '{':
    case '[':
        break;

    default:
        return ngx_smartflow_cache_scan_number(s);
    }

    if (depth >= NGX_SMARTFLOW_CACHE_ANSWER_DEPTH) {
        return NGX_DECLINED;
    }

    close = (c == '{') ? '}' : ']';

    s->p++;
    ngx_sf_scan_ws(s);

    if (ngx_sf_scan_is(s, close)) {
        s->p++;
        return NGX_OK;
    }

    for ( ;; ) {
        if (c == '{') {
            if (ngx_smartflow_cache_scan_string(s, &str) != NGX_OK) {
                return NGX_DECLINED;
            }

            ngx_sf_scan_ws(s);

            if (!ngx_sf_scan_is(s, ':')) {
                return NGX_DECLINED;
            }

            s->p++;
        }

        if (ngx_smartflow_cache_scan_value(s, depth + 1) != NGX_OK) {
            return NGX_DECLINED;
        }

        ngx_sf_scan_ws(s);

        if (ngx_sf_scan_is(s, ',')) {
            s->p++;
            ngx_sf_scan_ws(s);
            continue;
        }

        if (ngx_sf_scan_is(s, close)) {
            s->p++;
            return NGX_OK;
        }

        return NGX_DECLINED;
    }
}


/*
 * A string, checked: raw is what lies between its quotes, escapes and
 * all.  No control character; escapes JSON knows; \u of neither a
 * surrogate nor NUL; UTF-8 sequences of a lead byte and its continuation
 * bytes.
 */
static ngx_int_t
ngx_smartflow_cache_scan_string(ngx_smartflow_cache_scan_t *s,
    ngx_str_t *raw)
{
    u_char      *p, *last, c;
    ngx_int_t    u;
    ngx_uint_t   n;

    p = s->p;
    last = s->last;

    if (p == last || *p != '"') {
        return NGX_DECLINED;
    }

    raw->data = ++p;

    while (p < last) {
        /* the plain run first: printable ASCII but the quote and escape */
        while (p < last && *p >= 0x20 && *p < 0x80 && *p != '"'
               && *p != '\\')
        {
            p++;
        }

        if (p == last) {
            break;
        }

        c = *p;

        if (c == '"') {
            raw->len = p - raw->data;
            s->p = p + 1;
            return NGX_OK;
        }

        if (c < 0x20) {
            return NGX_DECLINED;
        }

        if (c == '\\') {
            if (last - p < 2) {
                return NGX_DECLINED;
            }

            switch (p[1]) {

            case '"': case '\\': case '/': case 'b': case 'f': case 'n':
            case 'r': case 't':
                p += 2;
                continue;

            case 'u':
                if (last - p < 6) {
                    return NGX_DECLINED;
                }

                u = ngx_hextoi(p + 2, 4);

                if (u <= 0 || (u >= 0xd800 && u <= 0xdfff)) {
                    return NGX_DECLINED;
                }

                p += 6;
                continue;

            default:
                return NGX_DECLINED;
            }
        }

        /* c >= 0x80: a UTF-8 sequence */

        if ((c >> 5) == 0x06) {
            n = 1;

        } else if ((c >> 4) == 0x0e) {
            n = 2;

        } else if ((c >> 3) == 0x1e) {
            n = 3;

        } else {
            return NGX_DECLINED;
        }

        if ((size_t) (last - p) <= n) {
            return NGX_DECLINED;
        }

        for (p++; n; n--, p++) {
            if ((*p >> 6) != 0x02) {
                return NGX_DECLINED;
            }
        }
    }

    return NGX_DECLINED;
}


/* -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static ngx_int_t
ngx_smartflow_cache_scan_number(ngx_smartflow_cache_scan_t *s)
{
    u_char  *p, *last;

    p = s->p;
    last = s->last;

    if (p < last && *p == '-') {
        p++;
    }

    if (p == last || *p < '0' || *p > '9') {
        return NGX_DECLINED;
    }

    if (*p == '0') {
        p++;

    } else {
        while (p < last && *p >= '0' && *p <= '9') {
            p++;
        }
    }

    if (p < last && *p == '.') {
        p++;

        if (p == last || *p < '0' || *p > '9') {
            return NGX_DECLINED;
        }

        while (p < last && *p >= '0' && *p <= '9') {
            p++;
        }
    }

    if (p < last && (*p == 'e' || *p == 'E')) {
        p++;

        if (p < last && (*p == '+' || *p == '-')) {
            p++;
        }

        if (p == last || *p < '0' || *p > '9') {
            return NGX_DECLINED;
        }

        while (p < last && *p >= '0' && *p <= '9') {
            p++;
        }
    }

    /* what follows a number: a separator, a closer or a space */
    if (p < last && *p != ',' && *p != '}' && *p != ']' && *p != ' '
        && *p != '\n' && *p != '\r' && *p != '\t')
    {
        return NGX_DECLINED;
    }

    s->p = p;

    return NGX_OK;
}


static ngx_int_t
ngx_smartflow_cache_scan_word(ngx_smartflow_cache_scan_t *s, char *word,
    size_t len)
{
    if ((size_t) (s->last - s->p) < len
        || ngx_strncmp(s->p, word, len) != 0)
    {
        return NGX_DECLINED;
    }

    s->p += len;

    /* "nullx" is not null */
    if (s->p < s->last
        && ((*s->p >= 'a' && *s->p <= 'z') || (*s->p >= '0' && *s->p <= '9')))
    {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/* a checked string's escapes undone; \u as UTF-8 */
static ngx_int_t
ngx_smartflow_cache_decode(ngx_pool_t *pool, ngx_str_t *raw, ngx_str_t *out)
{
    u_char      *p, *last, *d;
    ngx_uint_t   u;

    if (ngx_strlchr(raw->data, raw->data + raw->len, '\\') == NULL) {
        *out = *raw;
        return NGX_OK;
    }

    d = ngx_pnalloc(pool, raw->len);
    if (d == NULL) {
        return NGX_ERROR;
    }

    out->data = d;
    p = raw->data;
    last = p + raw->len;

    while (p < last) {
        if (*p != '\\') {
            *d++ = *p++;
            continue;
        }

        switch (p[1]) {

        case 'b':
            *d++ = '\b';
            break;

        case 'f':
            *d++ = '\f';
            break;

        case 'n':
            *d++ = '\n';
            break;

        case 'r':
            *d++ = '\r';
            break;

        case 't':
            *d++ = '\t';
            break;

        case 'u':
            u = (ngx_uint_t) ngx_hextoi(p + 2, 4);

            if (u < 0x80) {
                *d++ = (u_char) u;

            } else if (u < 0x800) {
                *d++ = (u_char) (0xc0 | (u >> 6));
                *d++ = (u_char) (0x80 | (u & 0x3f));

            } else {
                *d++ = (u_char) (0xe0 | (u >> 12));
                *d++ = (u_char) (0x80 | ((u >> 6) & 0x3f));
                *d++ = (u_char) (0x80 | (u & 0x3f));
            }

            p += 6;
            continue;

        default:
            /* " \ / */
            *d++ = p[1];
        }

        p += 2;
    }

    out->len = d - out->data;

    return NGX_OK;
}
