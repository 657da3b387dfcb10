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

    while (p < end) {

        switch (state) {

        case NGX_SF_USAGE_STRING:

            if (!is_key) {
                /* nothing in a value string matters: skip to its end */

                if (!escape) {
                    p = ngx_smartflow_json_plain(p, end);
                }

                while (p < end) {
                    c = *p++;

                    if (escape) {
                        escape = 0;

                    } else if (c == '\\') {
                        escape = 1;

                    } else if (c == '"') {
                        state = NGX_SF_USAGE_BETWEEN;
                        break;
                    }
                }

                continue;
            }

            while (p < end) {
                if (escape) {
                    escape = 0;
                    p++;
                    continue;
                }

                start = p;

                while (p < end && *p != '"' && *p != '\\') {
                    p++;
                }

                n = p - start;

                if (key_len + n <= sizeof(us->key)) {
                    ngx_memcpy(&us->key[key_len], start, n);
                    key_len += n;

                } else {
                    key_len = sizeof(us->key) + 1;
                }

                if (p == end) {
                    break;
                }

                if (*p++ == '\\') {
                    /* no name looked for has an escape */
                    escape = 1;
                    key_len = sizeof(us->key) + 1;
                    continue;
                }

                state = NGX_SF_USAGE_BETWEEN;
                break;
            }

            if (state == NGX_SF_USAGE_STRING) {
                continue;
            }

            /* a member's name, just read */

            name = ngx_smartflow_usage_name(us->key, key_len);
            expect_key = 0;
            field = 0;

            if (depth == 1) {
                usage_next = (name == 3);

            } else if (depth == 2 && in_usage && name < 3) {
                field = name;
            }

            continue;

        case NGX_SF_USAGE_NUMBER:

            while (p < end) {
                c = *p;

                if (c >= '0' && c <= '9') {
                    value = value * 10 + (c - '0');

                    if (value > NGX_SF_USAGE_MAX) {
                        number_ok = 0;
                        value = 0;
                    }

                } else if (c == '.' || c == 'e' || c == 'E' || c == '+'
                           || c == '-')
                {
                    number_ok = 0;

                } else {
                    break;
                }

                p++;
            }

            if (p == end) {
                continue;
            }

            /* the number ended; the byte is read again between values */

            if (depth == 2 && in_usage && number_ok) {
                ngx_smartflow_usage_count(us, field, value);
            }

            field = 0;
            state = NGX_SF_USAGE_BETWEEN;
            continue;

        case NGX_SF_USAGE_LITERAL:

            while (p < end && *p >= 'a' && *p <= 'z') {
                p++;
            }

            if (p < end) {
                state = NGX_SF_USAGE_BETWEEN;
            }

            continue;

        default: /* NGX_SF_USAGE_BETWEEN */
            break;
        }

        c = *p;

        if (depth > 2 || (depth == 2 && !in_usage)) {

            /* nothing is read here: on to the next quote or bracket */

            while (!ngx_smartflow_usage_bracket[c]) {
                if (++p == end) {
                    goto done;
                }

                c = *p;
            }
        }

        p++;

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
            state = NGX_SF_USAGE_STRING;
            is_key = expect_key && (depth == 1 || (depth == 2 && in_usage));
            escape = 0;
            key_len = 0;

            if (!is_key) {
                field = 0;
            }

            break;

        case 't': case 'f': case 'n':
            state = NGX_SF_USAGE_LITERAL;
            field = 0;
            break;

        default:
            if (c == '-' || (c >= '0' && c <= '9')) {
                state = NGX_SF_USAGE_NUMBER;
                number_ok = (c != '-');
                value = (c != '-') ? (ngx_uint_t) (c - '0') : 0;
                break;
            }

            /* not JSON after all: the counts stay as they are */
            goto failed;
        }
    }

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
    ngx_uint_t  i;

    static struct {
        ngx_str_t   name;
        ngx_uint_t  kind;
    }  names[] = {
        { ngx_string("usage"), 3 },
        { ngx_string("usageMetadata"), 3 },
        { ngx_string("prompt_tokens"), 1 },
        { ngx_string("input_tokens"), 1 },
        { ngx_string("cache_creation_input_tokens"), 1 },
        { ngx_string("cache_read_input_tokens"), 1 },
        { ngx_string("promptTokenCount"), 1 },
        { ngx_string("completion_tokens"), 2 },
        { ngx_string("output_tokens"), 2 },
        { ngx_string("candidatesTokenCount"), 2 },
        { ngx_string("thoughtsTokenCount"), 2 }
    };

    /* most names are none of these, and have none of their lengths */

    static uint32_t  lengths = (1 << 5) | (1 << 12) | (1 << 13) | (1 << 16)
                               | (1 << 17) | (1 << 18) | (1 << 20)
                               | (1 << 23) | (1 << 27);

    if (len > 27 || (lengths & (1 << len)) == 0) {
        return 0;
    }

    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (names[i].name.len == len
            && ngx_memcmp(names[i].name.data, name, len) == 0)
        {
            return names[i].kind;
        }
    }

    return 0;
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
