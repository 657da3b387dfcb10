/*
 * Usage counts from a whole JSON answer that passes through untouched.
 * The answer is not checked, only lexed: strings (with their escapes),
 * numbers, literals and the brackets that give the depth, the state kept
 * from one buffer to the next.  Member names are read only at depth 1
 * ("usage", "usageMetadata") and inside that object at depth 2 (the
 * counts' names); a count is a whole non-negative number.  A byte no JSON
 * value can start with stops the reading, and the counts stay as found.
 * Deeper, and at depth 2 outside the usage object, nothing is read: the
 * lexer only follows strings and brackets there, skipping other bytes
 * by a table.
 */

#include "ngx_http_smartflow_proxy.h"


enum {
    NGX_SF_USAGE_BETWEEN = 0,
    NGX_SF_USAGE_STRING,
    NGX_SF_USAGE_NUMBER,
    NGX_SF_USAGE_LITERAL
};


/* a count above this is not one */
#define NGX_SF_USAGE_MAX       1000000000000ULL


static ngx_uint_t ngx_smartflow_usage_name(u_char *name, size_t len);
static void ngx_smartflow_usage_count(ngx_smartflow_usage_scan_t *us,
    ngx_uint_t field, ngx_uint_t value);


/* 1: a byte that matters where nothing is read (a quote or a bracket) */

static const u_char  ngx_smartflow_usage_bracket[256] = {
    ['"'] = 1, ['['] = 1, [']'] = 1, ['{'] = 1, ['}'] = 1
};


void
ngx_smartflow_usage_scan_init(ngx_smartflow_usage_scan_t *us)
{
    ngx_memzero(us, sizeof(ngx_smartflow_usage_scan_t));
}


void
ngx_smartflow_usage_scan(ngx_smartflow_usage_scan_t *us, u_char *p,
    size_t len)
{
    u_char      c, *end, *start;
    size_t      n, key_len;
    uint64_t    objects;
    ngx_uint_t  state, depth, value, field, name, escape, is_key, in_usage,
                expect_key, usage_next, number_ok;

    if (us->failed) {
        return;
    }

    if (p == NULL) {
        if (us->state == NGX_SF_USAGE_NUMBER && us->number_ok
            && us->depth == 2 && us->in_usage)
        {
            ngx_smartflow_usage_count(us, us->field, us->value);
        }

        us->field = 0;
        return;
    }

    /* the state lives in locals while a buffer is read */

    state = us->state;
    depth = us->depth;
    objects = us->objects;
    value = us->value;
    field = us->field;
    key_len = us->key_len;
    escape = us->escape;
    is_key = us->is_key;
    in_usage = us->in_usage;
    expect_key = us->expect_key;
    usage_next = us->usage_next;
    number_ok = us->number_ok;

    end = p + len;

    /* a token the last buffer ended in goes on */

    switch (state) {
    case NGX_SF_USAGE_STRING:
        goto string;
    case NGX_SF_USAGE_NUMBER:
        goto number;
    case NGX_SF_USAGE_LITERAL:
        goto literal;
    default:
        break;
    }

between:

    for ( ;; ) {

        if (depth > 2 || (depth == 2 && !in_usage)) {

            /* nothing is read here: on to the next quote or bracket */

            while (p < end && !ngx_smartflow_usage_bracket[*p]) {
                p++;
            }
        }

        if (p == end) {
            state = NGX_SF_USAGE_BETWEEN;
            goto done;
        }

        c = *p++;

        switch (c) {

        case ' ': case '\t': case '\r': case '\n':
            break;

        case '{':
        case '[':
            if (depth == 64) {
                goto failed;
            }

            depth++;

            if (c == '{') {
                objects |= (uint64_t) 1 << (depth - 1);
                expect_key = 1;

            } else {
                objects &= ~((uint64_t) 1 << (depth - 1));
                expect_key = 0;
            }

            if (depth == 2) {
                in_usage = usage_next;
            }

            usage_next = 0;
            field = 0;
            break;

        case '}':
        case ']':
            if (depth == 0) {
                goto failed;
            }

            if (depth == 2) {
                in_usage = 0;
            }

            depth--;
            expect_key = 0;
            field = 0;
            break;

        case ',':
            expect_key = depth && (objects & ((uint64_t) 1 << (depth - 1)));
            field = 0;
            break;

        case ':':
            expect_key = 0;
            break;

        case '"':
            /* only the names at depth 1 and inside usage are read */
            is_key = expect_key && (depth == 1 || (depth == 2 && in_usage));
            escape = 0;
            key_len = 0;

            if (!is_key) {
                field = 0;
            }

            goto string;

        case 't': case 'f': case 'n':
            field = 0;
            goto literal;

        default:
            if (c == '-' || (c >= '0' && c <= '9')) {
                number_ok = (c != '-');
                value = (c != '-') ? (ngx_uint_t) (c - '0') : 0;
                goto number;
            }

            /* not JSON after all: the counts stay as they are */
            goto failed;
        }
    }

string:

    /* the byte after a backslash that ended the last buffer */

    if (escape) {
        if (p == end) {
            goto cut;
        }

        escape = 0;
        p++;
    }

    if (!is_key) {

        /* nothing in a value string matters: on to its end */

        for ( ;; ) {
            p = ngx_smartflow_json_plain(p, end);

            if (p == end) {
                goto cut;
            }

            c = *p++;

            if (c == '"') {
                goto between;
            }

            if (c == '\\') {
                if (p == end) {
                    escape = 1;
                    goto cut;
                }

                p++;
            }

            /* a control byte, or one of the last few bytes */
        }
    }

    /* a member's name that may matter: read in place, or copied in pieces */

    for ( ;; ) {
        start = p;
        p = ngx_smartflow_json_plain(p, end);

        while (p < end && *p != '"' && *p != '\\') {
            p++;
        }

        n = p - start;

        if (p < end && *p == '"' && key_len == 0) {
            /* the whole name is in this buffer */
            p++;
            name = ngx_smartflow_usage_name(start, n);
            break;
        }

        if (key_len + n <= sizeof(us->key)) {
            ngx_memcpy(&us->key[key_len], start, n);
            key_len += n;

        } else {
            key_len = sizeof(us->key) + 1;
        }

        if (p == end) {
            goto cut;
        }

        if (*p++ == '"') {
            name = ngx_smartflow_usage_name(us->key, key_len);
            break;
        }

        /* no name looked for has an escape */
        key_len = sizeof(us->key) + 1;

        if (p == end) {
            escape = 1;
            goto cut;
        }

        p++;
    }

    expect_key = 0;
    field = 0;

    if (depth == 1) {
        usage_next = (name == 3);

    } else if (depth == 2 && in_usage && name < 3) {
        field = name;
    }

    goto between;

number:

    while (p < end) {
        c = *p;

        if (c >= '0' && c <= '9') {
            value = value * 10 + (c - '0');

            if (value > NGX_SF_USAGE_MAX) {
                number_ok = 0;
                value = 0;
            }

        } else if (c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') {
            number_ok = 0;

        } else {
            break;
        }

        p++;
    }

    if (p == end) {
        state = NGX_SF_USAGE_NUMBER;
        goto done;
    }

    /* the number ended; the byte after it is read between values */

    if (depth == 2 && in_usage && number_ok) {
        ngx_smartflow_usage_count(us, field, value);
    }

    field = 0;
    goto between;

literal:

    while (p < end && *p >= 'a' && *p <= 'z') {
        p++;
    }

    if (p == end) {
        state = NGX_SF_USAGE_LITERAL;
        goto done;
    }

    goto between;

cut:

    /* a string the end of this buffer cut */
    state = NGX_SF_USAGE_STRING;

done:

    us->state = state;
    us->depth = depth;
    us->objects = objects;
    us->value = value;
    us->field = field;
    us->key_len = key_len;
    us->escape = escape;
    us->is_key = is_key;
    us->in_usage = in_usage;
    us->expect_key = expect_key;
    us->usage_next = usage_next;
    us->number_ok = number_ok;

    return;

failed:

    us->failed = 1;
}


/* 1: a prompt count's name, 2: a completion count's, 3: the usage object's */

static ngx_uint_t
ngx_smartflow_usage_name(u_char *name, size_t len)
{
#define ngx_sf_usage_is(lit)  (ngx_memcmp(name, lit, sizeof(lit) - 1) == 0)

    switch (len) {

    case 5:
        return ngx_sf_usage_is("usage") ? 3 : 0;

    case 12:
        return ngx_sf_usage_is("input_tokens") ? 1 : 0;

    case 13:
        return ngx_sf_usage_is("usageMetadata") ? 3
               : ngx_sf_usage_is("prompt_tokens") ? 1
               : ngx_sf_usage_is("output_tokens") ? 2 : 0;

    case 16:
        return ngx_sf_usage_is("promptTokenCount") ? 1 : 0;

    case 17:
        return ngx_sf_usage_is("completion_tokens") ? 2 : 0;

    case 18:
        return ngx_sf_usage_is("thoughtsTokenCount") ? 2 : 0;

    case 20:
        return ngx_sf_usage_is("candidatesTokenCount") ? 2 : 0;

    case 23:
        return ngx_sf_usage_is("cache_read_input_tokens") ? 1 : 0;

    case 27:
        return ngx_sf_usage_is("cache_creation_input_tokens") ? 1 : 0;

    default:
        return 0;
    }

#undef ngx_sf_usage_is
}


static void
ngx_smartflow_usage_count(ngx_smartflow_usage_scan_t *us, ngx_uint_t field,
    ngx_uint_t value)
{
    if (field == 1) {
        us->prompt += value;

    } else if (field == 2) {
        us->completion += value;
    }
}
