/*
 * Usage counts from a whole JSON answer that passes through untouched.
 * The answer is not checked, only lexed: strings (with their escapes),
 * numbers, literals and the brackets that give the depth, the state kept
 * from one buffer to the next.  Member names are read only at depth 1
 * ("usage", "usageMetadata") and inside that object at depth 2 (the
 * counts' names); a count is a whole non-negative number.  A byte no JSON
 * value can start with stops the reading, and the counts stay as found.
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


static void ngx_smartflow_usage_key(ngx_smartflow_usage_scan_t *us);
static void ngx_smartflow_usage_number(ngx_smartflow_usage_scan_t *us);


void
ngx_smartflow_usage_scan_init(ngx_smartflow_usage_scan_t *us)
{
    ngx_memzero(us, sizeof(ngx_smartflow_usage_scan_t));
}


void
ngx_smartflow_usage_scan(ngx_smartflow_usage_scan_t *us, u_char *p,
    size_t len)
{
    u_char  c, *end;

    if (us->failed) {
        return;
    }

    if (p == NULL) {
        if (us->state == NGX_SF_USAGE_NUMBER) {
            ngx_smartflow_usage_number(us);
        }

        return;
    }

    end = p + len;

    while (p < end) {
        c = *p;

        switch (us->state) {

        case NGX_SF_USAGE_STRING:

            if (!us->is_key) {
                /* nothing in a value string matters: skip to its end */

                if (!us->escape) {
                    p = ngx_smartflow_json_plain(p, end);
                }

                while (p < end) {
                    c = *p++;

                    if (us->escape) {
                        us->escape = 0;

                    } else if (c == '\\') {
                        us->escape = 1;

                    } else if (c == '"') {
                        us->state = NGX_SF_USAGE_BETWEEN;
                        break;
                    }
                }

                continue;
            }

            p++;

            if (us->escape) {
                us->escape = 0;
                continue;
            }

            if (c == '\\') {
                /* no name looked for has an escape */
                us->escape = 1;
                us->key_len = sizeof(us->key) + 1;
                continue;
            }

            if (c == '"') {
                us->state = NGX_SF_USAGE_BETWEEN;
                ngx_smartflow_usage_key(us);
                continue;
            }

            if (us->key_len < sizeof(us->key)) {
                us->key[us->key_len++] = c;

            } else {
                us->key_len = sizeof(us->key) + 1;
            }

            continue;

        case NGX_SF_USAGE_NUMBER:

            if (c >= '0' && c <= '9') {
                us->value = us->value * 10 + (c - '0');

                if (us->value > NGX_SF_USAGE_MAX) {
                    us->number_ok = 0;
                    us->value = 0;
                }

                p++;
                continue;
            }

            if (c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') {
                us->number_ok = 0;
                p++;
                continue;
            }

            /* the number ended; the byte is read again between values */
            ngx_smartflow_usage_number(us);
            us->state = NGX_SF_USAGE_BETWEEN;
            continue;

        case NGX_SF_USAGE_LITERAL:

            if (c >= 'a' && c <= 'z') {
                p++;
                continue;
            }

            us->state = NGX_SF_USAGE_BETWEEN;
            continue;

        default: /* NGX_SF_USAGE_BETWEEN */
            break;
        }

        p++;

        switch (c) {

        case ' ': case '\t': case '\r': case '\n':
            break;

        case '{':
        case '[':
            if (us->depth == 64) {
                us->failed = 1;
                return;
            }

            us->depth++;

            if (c == '{') {
                us->objects |= (uint64_t) 1 << (us->depth - 1);
                us->expect_key = 1;

            } else {
                us->objects &= ~((uint64_t) 1 << (us->depth - 1));
                us->expect_key = 0;
            }

            if (us->depth == 2) {
                us->in_usage = us->usage_next;
            }

            us->usage_next = 0;
            us->field = 0;
            break;

        case '}':
        case ']':
            if (us->depth == 0) {
                us->failed = 1;
                return;
            }

            if (us->depth == 2) {
                us->in_usage = 0;
            }

            us->depth--;
            us->expect_key = 0;
            us->field = 0;
            break;

        case ',':
            us->expect_key = us->depth
                             && (us->objects
                                 & ((uint64_t) 1 << (us->depth - 1)));
            us->field = 0;
            break;

        case ':':
            us->expect_key = 0;
            break;

        case '"':
            /* only the names at depth 1 and inside usage are read */
            us->state = NGX_SF_USAGE_STRING;
            us->is_key = us->expect_key
                         && (us->depth == 1
                             || (us->depth == 2 && us->in_usage));
            us->escape = 0;
            us->key_len = 0;

            if (!us->is_key) {
                us->field = 0;
            }

            break;

        case 't': case 'f': case 'n':
            us->state = NGX_SF_USAGE_LITERAL;
            us->field = 0;
            break;

        default:
            if (c == '-' || (c >= '0' && c <= '9')) {
                us->state = NGX_SF_USAGE_NUMBER;
                us->number_ok = (c != '-');
                us->value = (c != '-') ? (ngx_uint_t) (c - '0') : 0;
                break;
            }

            /* not JSON after all: the counts stay as they are */
            us->failed = 1;
            return;
        }
    }
}


/* a member's name, just read */

static void
ngx_smartflow_usage_key(ngx_smartflow_usage_scan_t *us)
{
    ngx_str_t  *k;

    static ngx_str_t  prompt[] = {
        ngx_string("prompt_tokens"), ngx_string("input_tokens"),
        ngx_string("cache_creation_input_tokens"),
        ngx_string("cache_read_input_tokens"),
        ngx_string("promptTokenCount"), ngx_null_string
    };

    static ngx_str_t  completion[] = {
        ngx_string("completion_tokens"), ngx_string("output_tokens"),
        ngx_string("candidatesTokenCount"), ngx_string("thoughtsTokenCount"),
        ngx_null_string
    };

    us->field = 0;
    us->expect_key = 0;

    if (us->depth == 1) {
        us->usage_next = (us->key_len == 5
                          && ngx_strncmp(us->key, "usage", 5) == 0)
                         || (us->key_len == 13
                             && ngx_strncmp(us->key, "usageMetadata", 13)
                                == 0);
        return;
    }

    if (us->depth != 2 || !us->in_usage) {
        return;
    }

    for (k = prompt; k->len; k++) {
        if (k->len == us->key_len
            && ngx_strncmp(k->data, us->key, us->key_len) == 0)
        {
            us->field = 1;
            return;
        }
    }

    for (k = completion; k->len; k++) {
        if (k->len == us->key_len
            && ngx_strncmp(k->data, us->key, us->key_len) == 0)
        {
            us->field = 2;
            return;
        }
    }
}


/* a number, just ended */

static void
ngx_smartflow_usage_number(ngx_smartflow_usage_scan_t *us)
{
    if (us->depth == 2 && us->in_usage && us->number_ok) {
        if (us->field == 1) {
            us->prompt += us->value;

        } else if (us->field == 2) {
            us->completion += us->value;
        }
    }

    us->field = 0;
}
