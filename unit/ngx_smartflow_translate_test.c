/*
 * Unit tests for the OpenAI <-> Anthropic translation: requests, whole
 * responses, error bodies and streams, checked on the dumped JSON and on
 * the exact SSE bytes.  Prints TAP.  Built outside nginx, so the few
 * nginx core functions the code calls are provided below over malloc.
 *
 * Built and run by "make unit" (t/unit/001-translate.t runs it).
 */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "ngx_http_smartflow_translate.h"


/* the nginx core the translation uses */

typedef struct test_block_s  test_block_t;

struct test_block_s {
    test_block_t  *next;
};

static test_block_t  *test_blocks;


void *
ngx_pnalloc(ngx_pool_t *pool, size_t size)
{
    test_block_t  *b;

    b = malloc(sizeof(test_block_t) + size);
    if (b == NULL) {
        return NULL;
    }

    b->next = test_blocks;
    test_blocks = b;

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


static u_char *
test_put(u_char *buf, u_char *last, const char *s, size_t len)
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
            buf = test_put(buf, last, (char *) v->data, v->len);
            continue;

        case 's':
            s = va_arg(args, const char *);
            buf = test_put(buf, last, s,
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

        buf = test_put(buf, last, tmp, strlen(tmp));
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


static ngx_time_t           test_now = { 1700000000, 0, 0 };
volatile ngx_time_t        *ngx_cached_time = &test_now;


static void
test_free_all(void)
{
    test_block_t  *b, *next;

    for (b = test_blocks; b; b = next) {
        next = b->next;
        free(b);
    }

    test_blocks = NULL;
}


/* TAP */

static ngx_pool_t   test_pool;
static int          test_n;
static int          test_failed;


static void
ok(int cond, const char *name)
{
    test_n++;

    if (!cond) {
        test_failed++;
    }

    printf("%sok %d - %s\n", cond ? "" : "not ", test_n, name);
}


static ngx_smartflow_json_t *
J(const char *s)
{
    ngx_str_t              err;
    ngx_smartflow_json_t  *j;

    j = ngx_smartflow_json_parse(&test_pool, (u_char *) s, strlen(s), &err);
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

    if (ngx_smartflow_json_dump(&test_pool, j, &out) != NGX_OK) {
        abort();
    }

    s = ngx_pnalloc(&test_pool, out.len + 1);
    if (s == NULL) {
        abort();
    }

    memcpy(s, out.data, out.len);
    s[out.len] = '\0';

    return s;
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


static void
xinit(ngx_smartflow_xlate_t *x, char *model)
{
    memset(x, 0, sizeof(ngx_smartflow_xlate_t));

    x->pool = &test_pool;
    x->model.data = (u_char *) model;
    x->model.len = strlen(model);
}


static char *
xerr(ngx_smartflow_xlate_t *x)
{
    char  *s;

    s = ngx_pnalloc(&test_pool, x->err.len + 1);
    if (s == NULL) {
        abort();
    }

    if (x->err.len) {
        memcpy(s, x->err.data, x->err.len);
    }

    s[x->err.len] = '\0';

    return s;
}


/* streams */

typedef ngx_int_t (*test_stream_pt)(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, ngx_str_t *event,
    ngx_smartflow_json_t *data, ngx_array_t *out);

typedef ngx_int_t (*test_end_pt)(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, ngx_uint_t broken, ngx_array_t *out);

typedef struct {
    char        *event;
    char        *data;          /* NULL: OpenAI's [DONE] */
} test_event_t;

#define TEST_END_NONE    0
#define TEST_END_CLEAN   1
#define TEST_END_BROKEN  2


static char *
stream(test_stream_pt fn, test_end_pt end, ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, test_event_t *ev, ngx_uint_t n,
    ngx_uint_t how)
{
    char        *s, *p;
    size_t       len;
    ngx_str_t    name, *e;
    ngx_uint_t   i;
    ngx_array_t  out;

    if (ngx_array_init(&out, &test_pool, 2, sizeof(ngx_str_t)) != NGX_OK) {
        abort();
    }

    for (i = 0; i < n; i++) {
        name.data = (u_char *) ev[i].event;
        name.len = strlen(ev[i].event);

        if (fn(x, st, &name, ev[i].data ? J(ev[i].data) : NULL, &out)
            != NGX_OK)
        {
            printf("# stream function failed: %s\n", xerr(x));
            return "(failed)";
        }
    }

    if (how != TEST_END_NONE
        && end(x, st, how == TEST_END_BROKEN, &out) != NGX_OK)
    {
        printf("# stream end failed: %s\n", xerr(x));
        return "(failed)";
    }

    e = out.elts;
    len = 0;

    for (i = 0; i < out.nelts; i++) {
        len += e[i].len;
    }

    s = ngx_pnalloc(&test_pool, len + 1);
    if (s == NULL) {
        abort();
    }

    for (p = s, i = 0; i < out.nelts; i++) {
        memcpy(p, e[i].data, e[i].len);
        p += e[i].len;
    }

    *p = '\0';

    return s;
}


/*
 * Every event is "data: JSON\n\n" or "data: [DONE]\n\n" (OpenAI), or
 * "event: NAME\ndata: JSON\n\n" with data.type == NAME (Anthropic).
 */
static int
valid_sse(const char *s, int anthropic)
{
    char                  *end, *nl, *json;
    size_t                 nlen;
    ngx_str_t              err;
    ngx_smartflow_json_t  *j, *t;

    while (*s) {
        end = strstr(s, "\n\n");
        if (end == NULL) {
            printf("# unterminated event: %s\n", s);
            return 0;
        }

        nlen = 0;

        if (anthropic) {
            if (strncmp(s, "event: ", 7) != 0) {
                printf("# no event line: %.*s\n", (int) (end - s), s);
                return 0;
            }

            nl = strchr(s, '\n');
            nlen = nl - s - 7;
            json = nl + 1;

        } else {
            json = (char *) s;
        }

        if (strncmp(json, "data: ", 6) != 0) {
            printf("# no data line: %.*s\n", (int) (end - s), s);
            return 0;
        }

        json += 6;

        if (!anthropic && end - json == 6 && strncmp(json, "[DONE]", 6) == 0)
        {
            s = end + 2;
            continue;
        }

        j = ngx_smartflow_json_parse(&test_pool, (u_char *) json, end - json,
                                     &err);
        if (j == NULL) {
            printf("# invalid JSON: %.*s\n", (int) (end - json), json);
            return 0;
        }

        if (anthropic) {
            t = ngx_smartflow_json_get(j, "type");

            if (!ngx_smartflow_json_is_string(t) || t->str.len != nlen
                || memcmp(t->str.data, s + 7, nlen) != 0)
            {
                printf("# type differs from event name: %.*s\n",
                       (int) (end - s), s);
                return 0;
            }
        }

        s = end + 2;
    }

    return 1;
}


static int
count(const char *s, const char *needle)
{
    int  n;

    for (n = 0; (s = strstr(s, needle)) != NULL; s += strlen(needle)) {
        n++;
    }

    return n;
}


/* requests: OpenAI -> Anthropic */

static void
test_req_openai_basic(void)
{
    char                  *before;
    ngx_smartflow_xlate_t  x;
    ngx_smartflow_json_t  *in;

    xinit(&x, "gpt-4o");

    in = J("{\"model\":\"gpt-4o\",\"messages\":["
           "{\"role\":\"system\",\"content\":\"Be brief.\"},"
           "{\"role\":\"developer\",\"content\":[{\"type\":\"text\","
           "\"text\":\"Answer in French.\"}]},"
           "{\"role\":\"user\",\"content\":\"Hello\",\"name\":\"ann\"}],"
           "\"temperature\":0.2,\"top_p\":0.9,\"stop\":\"END\","
           "\"stream\":true,\"user\":\"u-42\",\"n\":1,"
           "\"presence_penalty\":0.5,\"logprobs\":false,"
           "\"response_format\":{\"type\":\"json_object\"},"
           "\"stream_options\":{\"include_usage\":true}}");
    before = D(in);

    is(D(ngx_smartflow_xlate_req_openai_to_anthropic(&x, in)),
       "{\"model\":\"gpt-4o\","
       "\"system\":\"Be brief.\\n\\nAnswer in French.\","
       "\"messages\":[{\"role\":\"user\",\"content\":\"Hello\"}],"
       "\"max_tokens\":4096,\"temperature\":0.2,\"top_p\":0.9,"
       "\"stop_sequences\":[\"END\"],\"stream\":true,"
       "\"metadata\":{\"user_id\":\"u-42\"}}",
       "oa->an: system+developer hoisted, default max_tokens, "
       "OpenAI-only fields dropped");

    is(D(in), before, "oa->an: the client's tree is left as it was");
}


static void
test_req_openai_merge_images(void)
{
    ngx_smartflow_xlate_t  x;

    xinit(&x, "m");

    is(D(ngx_smartflow_xlate_req_openai_to_anthropic(&x, J(
       "{\"model\":\"m\",\"max_tokens\":100,\"messages\":["
       "{\"role\":\"user\",\"content\":\"First\"},"
       "{\"role\":\"user\",\"content\":[{\"type\":\"text\","
       "\"text\":\"Look:\"},{\"type\":\"image_url\",\"image_url\":"
       "{\"url\":\"data:image/png;base64,iVBORw0KGgo=\"}},"
       "{\"type\":\"image_url\",\"image_url\":{\"url\":"
       "\"https://example.com/cat.jpg\",\"detail\":\"low\"}}]},"
       "{\"role\":\"assistant\",\"content\":\"A cat.\"},"
       "{\"role\":\"assistant\",\"content\":\"Anything else?\"},"
       "{\"role\":\"user\",\"content\":\"No\"}]}"))),
       "{\"model\":\"m\",\"messages\":["
       "{\"role\":\"user\",\"content\":["
       "{\"type\":\"text\",\"text\":\"First\"},"
       "{\"type\":\"text\",\"text\":\"Look:\"},"
       "{\"type\":\"image\",\"source\":{\"type\":\"base64\","
       "\"media_type\":\"image/png\",\"data\":\"iVBORw0KGgo=\"}},"
       "{\"type\":\"image\",\"source\":{\"type\":\"url\","
       "\"url\":\"https://example.com/cat.jpg\"}}]},"
       "{\"role\":\"assistant\",\"content\":["
       "{\"type\":\"text\",\"text\":\"A cat.\"},"
       "{\"type\":\"text\",\"text\":\"Anything else?\"}]},"
       "{\"role\":\"user\",\"content\":\"No\"}],\"max_tokens\":100}",
       "oa->an: same-role turns merged, data and http image URLs");

    xinit(&x, "m");

    ok(ngx_smartflow_xlate_req_openai_to_anthropic(&x, J(
       "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
       "\"image_url\",\"image_url\":{\"url\":\"ftp://x/y.png\"}}]}]}"))
       == NULL && strstr(xerr(&x), "image") != NULL,
       "oa->an: an image URL that is neither http(s) nor data is refused");

    xinit(&x, "m");

    has(D(ngx_smartflow_xlate_req_openai_to_anthropic(&x, J(
        "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
        "\"file\",\"file\":{\"filename\":\"a.pdf\",\"file_data\":"
        "\"data:application/pdf;base64,JVBERi0=\"}},{\"type\":\"text\","
        "\"text\":\"Summarise\",\"cache_control\":{\"type\":"
        "\"ephemeral\"}}]}]}"))),
        "\"content\":[{\"type\":\"document\",\"source\":{\"type\":"
        "\"base64\",\"media_type\":\"application/pdf\",\"data\":"
        "\"JVBERi0=\"}},{\"type\":\"text\",\"text\":\"Summarise\","
        "\"cache_control\":{\"type\":\"ephemeral\"}}]",
        "oa->an: inline PDF file -> document block, cache_control kept");
}


static void
test_req_openai_tools(void)
{
    char                  *out;
    ngx_smartflow_xlate_t  x;

    xinit(&x, "m");

    is(D(ngx_smartflow_xlate_req_openai_to_anthropic(&x, J(
       "{\"model\":\"m\",\"messages\":["
       "{\"role\":\"user\",\"content\":\"Weather in Paris and Rome?\"},"
       "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":["
       "{\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":"
       "\"get_weather\",\"arguments\":\"{\\\"location\\\":\\\"Paris\\\"}\"}},"
       "{\"id\":\"call_2\",\"type\":\"function\",\"function\":{\"name\":"
       "\"get_weather\",\"arguments\":\"not json\"}}]},"
       "{\"role\":\"tool\",\"tool_call_id\":\"call_1\","
       "\"content\":\"18C sunny\"},"
       "{\"role\":\"tool\",\"tool_call_id\":\"call_2\",\"content\":"
       "[{\"type\":\"text\",\"text\":\"22C\"}]},"
       "{\"role\":\"user\",\"content\":\"Thanks. Which is warmer?\"}],"
       "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":"
       "\"get_weather\",\"description\":\"Current weather\","
       "\"parameters\":{\"type\":\"object\",\"properties\":{\"location\":"
       "{\"type\":\"string\"}},\"required\":[\"location\"]}}},"
       "{\"type\":\"function\",\"function\":{\"name\":\"now\"}}],"
       "\"tool_choice\":\"required\",\"parallel_tool_calls\":false}"))),
       "{\"model\":\"m\",\"messages\":["
       "{\"role\":\"user\",\"content\":\"Weather in Paris and Rome?\"},"
       "{\"role\":\"assistant\",\"content\":["
       "{\"type\":\"tool_use\",\"id\":\"call_1\",\"name\":\"get_weather\","
       "\"input\":{\"location\":\"Paris\"}},"
       "{\"type\":\"tool_use\",\"id\":\"call_2\",\"name\":\"get_weather\","
       "\"input\":{}}]},"
       "{\"role\":\"user\",\"content\":["
       "{\"type\":\"tool_result\",\"tool_use_id\":\"call_1\","
       "\"content\":\"18C sunny\"},"
       "{\"type\":\"tool_result\",\"tool_use_id\":\"call_2\","
       "\"content\":[{\"type\":\"text\",\"text\":\"22C\"}]},"
       "{\"type\":\"text\",\"text\":\"Thanks. Which is warmer?\"}]}],"
       "\"max_tokens\":4096,"
       "\"tools\":[{\"name\":\"get_weather\",\"description\":"
       "\"Current weather\",\"input_schema\":{\"type\":\"object\","
       "\"properties\":{\"location\":{\"type\":\"string\"}},"
       "\"required\":[\"location\"]}},"
       "{\"name\":\"now\",\"input_schema\":{\"type\":\"object\","
       "\"properties\":{}}}],"
       "\"tool_choice\":{\"type\":\"any\","
       "\"disable_parallel_tool_use\":true}}",
       "oa->an: tool calls, tool results merged into the user turn, tools, "
       "tool_choice required, no parallel calls");

    /* a user text before the tool message: results still go first */
    xinit(&x, "m");

    has(D(ngx_smartflow_xlate_req_openai_to_anthropic(&x, J(
        "{\"messages\":[{\"role\":\"user\",\"content\":\"go\"},"
        "{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"c\",\"type\":"
        "\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},"
        "{\"role\":\"user\",\"content\":\"and hurry\"},"
        "{\"role\":\"tool\",\"tool_call_id\":\"c\",\"content\":\"done\"}]}"))),
        "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\","
        "\"tool_use_id\":\"c\",\"content\":\"done\"},{\"type\":\"text\","
        "\"text\":\"and hurry\"}]}",
        "oa->an: tool results are placed before the turn's text");

    xinit(&x, "m");
    out = D(ngx_smartflow_xlate_req_openai_to_anthropic(&x, J(
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],"
        "\"tool_choice\":{\"type\":\"function\",\"function\":"
        "{\"name\":\"f\"}},\"max_completion_tokens\":50,\"max_tokens\":10,"
        "\"stop\":[\"a\",\"b\"]}")));

    has(out, "\"tool_choice\":{\"type\":\"tool\",\"name\":\"f\"}",
        "oa->an: tool_choice function -> tool");
    has(out, "\"max_tokens\":50,", "oa->an: max_completion_tokens wins");
    has(out, "\"stop_sequences\":[\"a\",\"b\"]", "oa->an: stop array");

    xinit(&x, "m");
    has(D(ngx_smartflow_xlate_req_openai_to_anthropic(&x, J(
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
        "\"temperature\":1.4}"))),
        "\"max_tokens\":4096,\"temperature\":1}",
        "oa->an: temperature above 1 clamped");

    xinit(&x, "m");
    has(D(ngx_smartflow_xlate_req_openai_to_anthropic(&x, J(
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
        "\"temperature\":1.0e0}"))),
        "\"temperature\":1.0e0}", "oa->an: temperature 1 kept as sent");

    xinit(&x, "m");
    out = D(ngx_smartflow_xlate_req_openai_to_anthropic(&x, J(
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],"
        "\"tool_choice\":\"none\",\"parallel_tool_calls\":false}")));

    has(out, "\"tool_choice\":{\"type\":\"none\"}",
        "oa->an: tool_choice none, without disable_parallel_tool_use");

    xinit(&x, "m");
    out = D(ngx_smartflow_xlate_req_openai_to_anthropic(&x, J(
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
        "\"tool_choice\":\"auto\"}")));

    lacks(out, "tool_choice", "oa->an: tool_choice without tools dropped");
}


static void
test_req_openai_errors(void)
{
    ngx_smartflow_xlate_t  x;

    xinit(&x, "m");
    ok(ngx_smartflow_xlate_req_openai_to_anthropic(&x,
           J("{\"messages\":{}}")) == NULL
       && strstr(xerr(&x), "messages") != NULL,
       "oa->an: messages not an array");

    xinit(&x, "m");
    ok(ngx_smartflow_xlate_req_openai_to_anthropic(&x,
           J("{\"messages\":[{\"content\":\"hi\"}]}")) == NULL
       && strstr(xerr(&x), "role") != NULL,
       "oa->an: a message without a role");

    xinit(&x, "m");
    ok(ngx_smartflow_xlate_req_openai_to_anthropic(&x,
           J("{\"messages\":[\"hi\"]}")) == NULL,
       "oa->an: a message that is not an object");

    xinit(&x, "m");
    ok(ngx_smartflow_xlate_req_openai_to_anthropic(&x,
           J("{\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}"))
       == NULL && strstr(xerr(&x), "role") != NULL,
       "oa->an: an unknown role");

    xinit(&x, "m");
    ok(ngx_smartflow_xlate_req_openai_to_anthropic(&x,
           J("{\"messages\":[{\"role\":\"tool\",\"content\":\"x\"}]}"))
       == NULL && strstr(xerr(&x), "tool_call_id") != NULL,
       "oa->an: a tool message without tool_call_id");

    xinit(&x, "m");
    ok(ngx_smartflow_xlate_req_openai_to_anthropic(&x,
           J("{\"messages\":[{\"role\":\"system\",\"content\":\"x\"}]}"))
       == NULL,
       "oa->an: only a system message");

    xinit(&x, "m");
    ok(ngx_smartflow_xlate_req_openai_to_anthropic(&x, J("[1]")) == NULL,
       "oa->an: body not an object");

    xinit(&x, "m");
    ok(ngx_smartflow_xlate_req_openai_to_anthropic(&x,
           J("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
             "\"tools\":[{\"type\":\"function\",\"function\":{}}]}"))
       == NULL,
       "oa->an: a tool without a name");

    xinit(&x, "m");
    ok(ngx_smartflow_xlate_req_openai_to_anthropic(&x,
           J("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
             "\"input_audio\",\"input_audio\":{}}]}]}")) == NULL,
       "oa->an: an audio part");
}


/* requests: Anthropic -> OpenAI */

static void
test_req_anthropic(void)
{
    char                  *before;
    ngx_smartflow_xlate_t  x;
    ngx_smartflow_json_t  *in;

    xinit(&x, "claude-x");

    in = J("{\"model\":\"claude-x\",\"system\":[{\"type\":\"text\","
           "\"text\":\"You are terse.\"},{\"type\":\"text\",\"text\":"
           "\"Use metric.\",\"cache_control\":{\"type\":\"ephemeral\"}}],"
           "\"max_tokens\":512,\"stop_sequences\":[\"\\n\\nHuman:\"],"
           "\"temperature\":0.5,\"top_p\":0.8,\"top_k\":40,\"stream\":true,"
           "\"metadata\":{\"user_id\":\"u-7\"},\"messages\":["
           "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":"
           "\"What is this?\"},{\"type\":\"image\",\"source\":{\"type\":"
           "\"base64\",\"media_type\":\"image/jpeg\",\"data\":\"/9j/4AAQ\"}},"
           "{\"type\":\"image\",\"source\":{\"type\":\"url\",\"url\":"
           "\"https://example.com/a.png\"}}]},"
           "{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":"
           "\"Let me check.\"},{\"type\":\"tool_use\",\"id\":\"toolu_1\","
           "\"name\":\"lookup\",\"input\":{\"q\":\"a.png\",\"n\":2}}]},"
           "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\","
           "\"tool_use_id\":\"toolu_1\",\"content\":\"a logo\"},"
           "{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_2\","
           "\"content\":[{\"type\":\"text\",\"text\":\"line 1\"},"
           "{\"type\":\"text\",\"text\":\"line 2\"}],\"is_error\":true},"
           "{\"type\":\"text\",\"text\":\"And now?\"}]},"
           "{\"role\":\"assistant\",\"content\":\"It is a logo.\"}],"
           "\"tools\":[{\"name\":\"lookup\",\"description\":\"Look up\","
           "\"input_schema\":{\"type\":\"object\",\"properties\":{\"q\":"
           "{\"type\":\"string\"}}}},{\"name\":\"ping\"}],"
           "\"tool_choice\":{\"type\":\"any\","
           "\"disable_parallel_tool_use\":true}}");
    before = D(in);

    is(D(ngx_smartflow_xlate_req_anthropic_to_openai(&x, in)),
       "{\"model\":\"claude-x\",\"messages\":["
       "{\"role\":\"system\",\"content\":\"You are terse.\\n\\nUse metric.\"},"
       "{\"role\":\"user\",\"content\":["
       "{\"type\":\"text\",\"text\":\"What is this?\"},"
       "{\"type\":\"image_url\",\"image_url\":{\"url\":"
       "\"data:image/jpeg;base64,/9j/4AAQ\"}},"
       "{\"type\":\"image_url\",\"image_url\":{\"url\":"
       "\"https://example.com/a.png\"}}]},"
       "{\"role\":\"assistant\",\"content\":\"Let me check.\","
       "\"tool_calls\":[{\"id\":\"toolu_1\",\"type\":\"function\","
       "\"function\":{\"name\":\"lookup\",\"arguments\":"
       "\"{\\\"q\\\":\\\"a.png\\\",\\\"n\\\":2}\"}}]},"
       "{\"role\":\"tool\",\"tool_call_id\":\"toolu_1\","
       "\"content\":\"a logo\"},"
       "{\"role\":\"tool\",\"tool_call_id\":\"toolu_2\","
       "\"content\":\"line 1\\nline 2\"},"
       "{\"role\":\"user\",\"content\":\"And now?\"},"
       "{\"role\":\"assistant\",\"content\":\"It is a logo.\"}],"
       "\"max_tokens\":512,\"temperature\":0.5,\"top_p\":0.8,"
       "\"stop\":[\"\\n\\nHuman:\"],\"stream\":true,"
       "\"stream_options\":{\"include_usage\":true},"
       "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"lookup\","
       "\"description\":\"Look up\",\"parameters\":{\"type\":\"object\","
       "\"properties\":{\"q\":{\"type\":\"string\"}}}}},"
       "{\"type\":\"function\",\"function\":{\"name\":\"ping\","
       "\"parameters\":{\"type\":\"object\",\"properties\":{}}}}],"
       "\"tool_choice\":\"required\",\"parallel_tool_calls\":false,"
       "\"user\":\"u-7\"}",
       "an->oa: system blocks, images, tool_use, tool_result first, "
       "stream usage, tools, tool_choice any");

    is(D(in), before, "an->oa: the client's tree is left as it was");

    xinit(&x, "claude-x");
    has(D(ngx_smartflow_xlate_req_anthropic_to_openai(&x, J(
        "{\"model\":\"c\",\"system\":\"Sys\",\"max_tokens\":5,"
        "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},"
        "{\"role\":\"assistant\",\"content\":[{\"type\":\"thinking\","
        "\"thinking\":\"hmm\",\"signature\":\"s\"},{\"type\":\"tool_use\","
        "\"id\":\"t1\",\"name\":\"f\",\"input\":{}}]}],"
        "\"tools\":[{\"name\":\"f\",\"input_schema\":{\"type\":\"object\"}}],"
        "\"tool_choice\":{\"type\":\"tool\",\"name\":\"f\"},"
        "\"stream\":false}"))),
        "{\"model\":\"c\",\"messages\":[{\"role\":\"system\",\"content\":"
        "\"Sys\"},{\"role\":\"user\",\"content\":\"hi\"},{\"role\":"
        "\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"t1\","
        "\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":"
        "\"{}\"}}]}],\"max_tokens\":5,\"stream\":false,",
        "an->oa: system string, thinking dropped, content null with only "
        "tool calls, no stream_options when not streaming");

    xinit(&x, "claude-x");
    has(D(ngx_smartflow_xlate_req_anthropic_to_openai(&x, J(
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
        "\"tools\":[{\"name\":\"f\",\"input_schema\":{\"type\":\"object\"}}],"
        "\"tool_choice\":{\"type\":\"tool\",\"name\":\"f\"}}"))),
        "\"tool_choice\":{\"type\":\"function\",\"function\":"
        "{\"name\":\"f\"}}",
        "an->oa: tool_choice tool -> function");

    xinit(&x, "claude-x");
    ok(ngx_smartflow_xlate_req_anthropic_to_openai(&x,
           J("{\"max_tokens\":5}")) == NULL,
       "an->oa: no messages");

    xinit(&x, "claude-x");
    ok(ngx_smartflow_xlate_req_anthropic_to_openai(&x,
           J("{\"messages\":[{\"role\":\"system\",\"content\":\"x\"}]}"))
       == NULL && strstr(xerr(&x), "role") != NULL,
       "an->oa: a system role inside messages");

    xinit(&x, "claude-x");
    ok(ngx_smartflow_xlate_req_anthropic_to_openai(&x,
           J("{\"messages\":[{\"role\":\"user\"}]}")) == NULL,
       "an->oa: a message without content");

    xinit(&x, "claude-x");
    ok(ngx_smartflow_xlate_req_anthropic_to_openai(&x,
           J("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
             "\"tools\":[{\"type\":\"web_search_20250305\","
             "\"name\":\"web_search\"}]}")) == NULL,
       "an->oa: a server tool is refused");
}


/* whole responses */

static void
test_resp(void)
{
    char                  *out;
    ngx_smartflow_xlate_t  x;

    xinit(&x, "gpt-4o");

    is(D(ngx_smartflow_xlate_resp_anthropic_to_openai(&x, J(
       "{\"id\":\"msg_01ABC\",\"type\":\"message\",\"role\":\"assistant\","
       "\"model\":\"claude-3-5-sonnet\",\"content\":[{\"type\":\"text\","
       "\"text\":\"Hello\"},{\"type\":\"text\",\"text\":\" there\"}],"
       "\"stop_reason\":\"end_turn\",\"stop_sequence\":null,\"usage\":"
       "{\"input_tokens\":10,\"cache_creation_input_tokens\":2,"
       "\"cache_read_input_tokens\":5,\"output_tokens\":3}}"))),
       "{\"id\":\"chatcmpl-msg_01ABC\",\"object\":\"chat.completion\","
       "\"created\":1700000000,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,"
       "\"message\":{\"role\":\"assistant\",\"content\":\"Hello there\"},"
       "\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":17,"
       "\"completion_tokens\":3,\"total_tokens\":20,"
       "\"prompt_tokens_details\":{\"cached_tokens\":5}}}",
       "resp an->oa: text blocks joined, model named by the client, usage "
       "with cache");

    xinit(&x, "gpt-4o");

    is(D(ngx_smartflow_xlate_resp_anthropic_to_openai(&x, J(
       "{\"id\":\"msg_2\",\"content\":[{\"type\":\"tool_use\",\"id\":"
       "\"toolu_9\",\"name\":\"get_weather\",\"input\":{\"location\":"
       "\"Paris\"}}],\"stop_reason\":\"tool_use\",\"usage\":"
       "{\"input_tokens\":5,\"output_tokens\":7}}"))),
       "{\"id\":\"chatcmpl-msg_2\",\"object\":\"chat.completion\","
       "\"created\":1700000000,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,"
       "\"message\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":"
       "[{\"id\":\"toolu_9\",\"type\":\"function\",\"function\":{\"name\":"
       "\"get_weather\",\"arguments\":\"{\\\"location\\\":\\\"Paris\\\"}\"}}]},"
       "\"finish_reason\":\"tool_calls\"}],\"usage\":{\"prompt_tokens\":5,"
       "\"completion_tokens\":7,\"total_tokens\":12}}",
       "resp an->oa: tool_use only -> content null and tool_calls");

    xinit(&x, "gpt-4o");
    has(D(ngx_smartflow_xlate_resp_anthropic_to_openai(&x, J(
        "{\"id\":\"m\",\"content\":[{\"type\":\"text\",\"text\":\"a\"}],"
        "\"stop_reason\":\"max_tokens\"}"))),
        "\"finish_reason\":\"length\"", "resp an->oa: max_tokens -> length");

    xinit(&x, "gpt-4o");
    has(D(ngx_smartflow_xlate_resp_anthropic_to_openai(&x, J(
        "{\"id\":\"m\",\"content\":[],\"stop_reason\":\"refusal\"}"))),
        "\"content\":\"\"},\"finish_reason\":\"content_filter\"",
        "resp an->oa: refusal -> content_filter");

    xinit(&x, "gpt-4o");
    has(D(ngx_smartflow_xlate_resp_anthropic_to_openai(&x, J(
        "{\"id\":\"m\",\"content\":[{\"type\":\"text\",\"text\":\"a\"}],"
        "\"stop_reason\":\"stop_sequence\",\"stop_sequence\":\"END\"}"))),
        "\"finish_reason\":\"stop\"", "resp an->oa: stop_sequence -> stop");

    xinit(&x, "gpt-4o");
    ok(ngx_smartflow_xlate_resp_anthropic_to_openai(&x, J("[]")) == NULL,
       "resp an->oa: not an object");

    xinit(&x, "claude-client");

    is(D(ngx_smartflow_xlate_resp_openai_to_anthropic(&x, J(
       "{\"id\":\"chatcmpl-XYZ\",\"object\":\"chat.completion\",\"created\":1,"
       "\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"message\":{\"role\":"
       "\"assistant\",\"content\":\"Hi!\",\"refusal\":null},\"logprobs\":null,"
       "\"finish_reason\":\"length\"}],\"usage\":{\"prompt_tokens\":12,"
       "\"completion_tokens\":4,\"total_tokens\":16,"
       "\"prompt_tokens_details\":{\"cached_tokens\":2}}}"))),
       "{\"id\":\"msg_chatcmpl-XYZ\",\"type\":\"message\",\"role\":"
       "\"assistant\",\"model\":\"claude-client\",\"content\":[{\"type\":"
       "\"text\",\"text\":\"Hi!\"}],\"stop_reason\":\"max_tokens\","
       "\"stop_sequence\":null,\"usage\":{\"input_tokens\":10,"
       "\"cache_read_input_tokens\":2,\"output_tokens\":4}}",
       "resp oa->an: text, length -> max_tokens, cached tokens split out");

    xinit(&x, "claude-client");

    is(D(ngx_smartflow_xlate_resp_openai_to_anthropic(&x, J(
       "{\"id\":\"c1\",\"choices\":[{\"index\":0,\"message\":{\"role\":"
       "\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"call_a\","
       "\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
       "\"arguments\":\"{\\\"location\\\":\\\"Paris\\\"}\"}}]},"
       "\"finish_reason\":\"tool_calls\"}],\"usage\":{\"prompt_tokens\":8,"
       "\"completion_tokens\":6,\"total_tokens\":14}}"))),
       "{\"id\":\"msg_c1\",\"type\":\"message\",\"role\":\"assistant\","
       "\"model\":\"claude-client\",\"content\":[{\"type\":\"tool_use\","
       "\"id\":\"call_a\",\"name\":\"get_weather\",\"input\":{\"location\":"
       "\"Paris\"}}],\"stop_reason\":\"tool_use\",\"stop_sequence\":null,"
       "\"usage\":{\"input_tokens\":8,\"output_tokens\":6}}",
       "resp oa->an: tool_calls -> tool_use with parsed input");

    xinit(&x, "claude-client");
    out = D(ngx_smartflow_xlate_resp_openai_to_anthropic(&x, J(
        "{\"id\":\"c\",\"choices\":[{\"message\":{\"content\":\"\","
        "\"refusal\":\"I can't help with that.\"},"
        "\"finish_reason\":\"content_filter\"}]}")));
    has(out, "\"content\":[{\"type\":\"text\",\"text\":"
             "\"I can't help with that.\"}],\"stop_reason\":\"refusal\"",
        "resp oa->an: refusal text, content_filter -> refusal");
    has(out, "\"usage\":{\"input_tokens\":0,\"output_tokens\":0}",
        "resp oa->an: missing usage counts 0");

    xinit(&x, "claude-client");
    ok(ngx_smartflow_xlate_resp_openai_to_anthropic(&x,
           J("{\"id\":\"c\",\"choices\":[]}")) == NULL
       && strstr(xerr(&x), "choices") != NULL,
       "resp oa->an: no choices");
}


/* errors */

static void
test_errors(void)
{
    ngx_smartflow_xlate_t  x;

    xinit(&x, "m");

    is(D(ngx_smartflow_xlate_error_to_openai(&x, 529, J(
       "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\","
       "\"message\":\"Overloaded\"}}"))),
       "{\"error\":{\"message\":\"Overloaded\",\"type\":\"api_error\","
       "\"param\":null,\"code\":\"overloaded\"}}",
       "error an->oa: overloaded");

    is(D(ngx_smartflow_xlate_error_to_openai(&x, 401, J(
       "{\"type\":\"error\",\"error\":{\"type\":\"authentication_error\","
       "\"message\":\"invalid x-api-key\"}}"))),
       "{\"error\":{\"message\":\"invalid x-api-key\","
       "\"type\":\"invalid_request_error\",\"param\":null,"
       "\"code\":\"invalid_api_key\"}}",
       "error an->oa: authentication");

    is(D(ngx_smartflow_xlate_error_to_openai(&x, 400, J(
       "{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\","
       "\"message\":\"max_tokens: Field required\"}}"))),
       "{\"error\":{\"message\":\"max_tokens: Field required\","
       "\"type\":\"invalid_request_error\",\"param\":null,\"code\":null}}",
       "error an->oa: invalid request");

    is(D(ngx_smartflow_xlate_error_to_openai(&x, 502, NULL)),
       "{\"error\":{\"message\":\"The provider failed with HTTP status 502.\","
       "\"type\":\"api_error\",\"param\":null,\"code\":null}}",
       "error ->oa: no body");

    is(D(ngx_smartflow_xlate_error_to_openai(&x, 429, J(
       "{\"error\":{\"message\":\"Rate limit reached\",\"type\":"
       "\"requests\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}"))),
       "{\"error\":{\"message\":\"Rate limit reached\",\"type\":"
       "\"rate_limit_error\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}",
       "error oa->oa: rate limit, code kept");

    is(D(ngx_smartflow_xlate_error_to_anthropic(&x, 401, J(
       "{\"error\":{\"message\":\"Incorrect API key provided.\",\"type\":"
       "\"invalid_request_error\",\"param\":null,"
       "\"code\":\"invalid_api_key\"}}"))),
       "{\"type\":\"error\",\"error\":{\"type\":\"authentication_error\","
       "\"message\":\"Incorrect API key provided.\"}}",
       "error oa->an: 401 invalid_request_error -> authentication_error");

    is(D(ngx_smartflow_xlate_error_to_anthropic(&x, 404, J(
       "{\"error\":{\"message\":\"The model does not exist\",\"type\":"
       "\"invalid_request_error\",\"code\":\"model_not_found\"}}"))),
       "{\"type\":\"error\",\"error\":{\"type\":\"not_found_error\","
       "\"message\":\"The model does not exist\"}}",
       "error oa->an: 404");

    is(D(ngx_smartflow_xlate_error_to_anthropic(&x, 503, J(
       "{\"error\":{\"message\":\"The engine is currently overloaded\","
       "\"type\":\"server_error\",\"param\":null,\"code\":null}}"))),
       "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\","
       "\"message\":\"The engine is currently overloaded\"}}",
       "error oa->an: 503 server_error -> overloaded_error");

    is(D(ngx_smartflow_xlate_error_to_anthropic(&x, 413, NULL)),
       "{\"type\":\"error\",\"error\":{\"type\":\"request_too_large\","
       "\"message\":\"The provider failed with HTTP status 413.\"}}",
       "error ->an: 413 without a body");

    has(D(ngx_smartflow_xlate_error_to_anthropic(&x, 429, J(
        "{\"error\":{\"code\":429,\"message\":\"Resource has been "
        "exhausted\",\"status\":\"RESOURCE_EXHAUSTED\"}}"))),
        "{\"type\":\"rate_limit_error\",\"message\":\"Resource has been "
        "exhausted\"}",
        "error gemini->an: RESOURCE_EXHAUSTED");

    has(D(ngx_smartflow_xlate_error_to_anthropic(&x, 500, J(
        "{\"error\":\"boom\"}"))),
        "{\"type\":\"api_error\",\"message\":\"boom\"}",
        "error ->an: bare string error");

    has(D(ngx_smartflow_xlate_error_to_anthropic(&x, 418, J("[1,2]"))),
        "{\"type\":\"invalid_request_error\",\"message\":"
        "\"The provider failed with HTTP status 418.\"}",
        "error ->an: unknown 4xx, body not an object");
}


/* streams: Anthropic -> OpenAI */

#define AO_HEAD(id)                                                          \
    "data: {\"id\":\"chatcmpl-" id "\",\"object\":\"chat.completion.chunk\"," \
    "\"created\":1700000000,\"model\":\"gpt-4o\",\"choices\":"

#define AO_ROLE(id)                                                          \
    AO_HEAD(id) "[{\"index\":0,\"delta\":{\"role\":\"assistant\","           \
    "\"content\":\"\"},\"finish_reason\":null}]}\n\n"

#define AO_DELTA(id, delta)                                                  \
    AO_HEAD(id) "[{\"index\":0,\"delta\":" delta                             \
    ",\"finish_reason\":null}]}\n\n"

#define AO_FINISH(id, reason)                                                \
    AO_HEAD(id) "[{\"index\":0,\"delta\":{},\"finish_reason\":\"" reason     \
    "\"}]}\n\n"

#define AO_DONE  "data: [DONE]\n\n"


static test_event_t  an_text_stream[] = {
    { "message_start", "{\"type\":\"message_start\",\"message\":{\"id\":"
      "\"msg_01XY\",\"type\":\"message\",\"role\":\"assistant\",\"model\":"
      "\"claude\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,"
      "\"usage\":{\"input_tokens\":9,\"cache_creation_input_tokens\":0,"
      "\"cache_read_input_tokens\":0,\"output_tokens\":1}}}" },
    { "content_block_start", "{\"type\":\"content_block_start\",\"index\":0,"
      "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}" },
    { "ping", "{\"type\":\"ping\"}" },
    { "content_block_delta", "{\"type\":\"content_block_delta\",\"index\":0,"
      "\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}" },
    { "content_block_delta", "{\"type\":\"content_block_delta\",\"index\":0,"
      "\"delta\":{\"type\":\"text_delta\",\"text\":\" world\"}}" },
    { "content_block_stop", "{\"type\":\"content_block_stop\",\"index\":0}" },
    { "message_delta", "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":"
      "\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":2}}" },
    { "message_stop", "{\"type\":\"message_stop\"}" }
};


static test_event_t  an_tool_stream[] = {
    { "message_start", "{\"type\":\"message_start\",\"message\":{\"id\":"
      "\"msg_T\",\"usage\":{\"input_tokens\":20,\"cache_read_input_tokens\":4,"
      "\"output_tokens\":1}}}" },
    { "content_block_start", "{\"type\":\"content_block_start\",\"index\":0,"
      "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}" },
    { "content_block_delta", "{\"type\":\"content_block_delta\",\"index\":0,"
      "\"delta\":{\"type\":\"text_delta\",\"text\":\"Checking.\"}}" },
    { "content_block_stop", "{\"type\":\"content_block_stop\",\"index\":0}" },
    { "content_block_start", "{\"type\":\"content_block_start\",\"index\":1,"
      "\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_A\","
      "\"name\":\"get_weather\",\"input\":{}}}" },
    { "content_block_delta", "{\"type\":\"content_block_delta\",\"index\":1,"
      "\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}" },
    { "content_block_delta", "{\"type\":\"content_block_delta\",\"index\":1,"
      "\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":"
      "\"{\\\"location\\\": \\\"Pa\"}}" },
    { "content_block_delta", "{\"type\":\"content_block_delta\",\"index\":1,"
      "\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":"
      "\"ris\\\"}\"}}" },
    { "content_block_stop", "{\"type\":\"content_block_stop\",\"index\":1}" },
    { "content_block_start", "{\"type\":\"content_block_start\",\"index\":2,"
      "\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_B\","
      "\"name\":\"get_time\",\"input\":{}}}" },
    { "content_block_delta", "{\"type\":\"content_block_delta\",\"index\":2,"
      "\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}" },
    { "content_block_stop", "{\"type\":\"content_block_stop\",\"index\":2}" },
    { "message_delta", "{\"type\":\"message_delta\",\"delta\":"
      "{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},"
      "\"usage\":{\"output_tokens\":30}}" },
    { "message_stop", "{\"type\":\"message_stop\"}" }
};


static void
test_stream_anthropic_to_openai(void)
{
    char                          *out;
    ngx_smartflow_xlate_t          x;
    ngx_smartflow_xlate_stream_t   st;

    xinit(&x, "gpt-4o");
    memset(&st, 0, sizeof(st));
    st.include_usage = 1;

    out = stream(ngx_smartflow_xlate_stream_anthropic_to_openai,
                 ngx_smartflow_xlate_stream_end_openai, &x, &st,
                 an_text_stream, 8, TEST_END_CLEAN);

    is(out,
       AO_ROLE("msg_01XY")
       AO_DELTA("msg_01XY", "{\"content\":\"Hello\"}")
       AO_DELTA("msg_01XY", "{\"content\":\" world\"}")
       AO_FINISH("msg_01XY", "stop")
       AO_HEAD("msg_01XY") "[],\"usage\":{\"prompt_tokens\":9,"
       "\"completion_tokens\":2,\"total_tokens\":11}}\n\n"
       AO_DONE,
       "stream an->oa: text, usage chunk when asked, [DONE]");
    ok(valid_sse(out, 0), "stream an->oa: text stream is well-formed SSE");
    ok(st.input_tokens == 9 && st.output_tokens == 2 && st.done,
       "stream an->oa: usage carried in the state");

    xinit(&x, "gpt-4o");
    memset(&st, 0, sizeof(st));

    out = stream(ngx_smartflow_xlate_stream_anthropic_to_openai,
                 ngx_smartflow_xlate_stream_end_openai, &x, &st,
                 an_tool_stream, 14, TEST_END_CLEAN);

    is(out,
       AO_ROLE("msg_T")
       AO_DELTA("msg_T", "{\"content\":\"Checking.\"}")
       AO_DELTA("msg_T", "{\"tool_calls\":[{\"index\":0,\"id\":\"toolu_A\","
                "\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
                "\"arguments\":\"\"}}]}")
       AO_DELTA("msg_T", "{\"tool_calls\":[{\"index\":0,\"function\":"
                "{\"arguments\":\"{\\\"location\\\": \\\"Pa\"}}]}")
       AO_DELTA("msg_T", "{\"tool_calls\":[{\"index\":0,\"function\":"
                "{\"arguments\":\"ris\\\"}\"}}]}")
       AO_DELTA("msg_T", "{\"tool_calls\":[{\"index\":1,\"id\":\"toolu_B\","
                "\"type\":\"function\",\"function\":{\"name\":\"get_time\","
                "\"arguments\":\"\"}}]}")
       AO_DELTA("msg_T", "{\"tool_calls\":[{\"index\":1,\"function\":"
                "{\"arguments\":\"{}\"}}]}")
       AO_FINISH("msg_T", "tool_calls")
       AO_DONE,
       "stream an->oa: text then two tool calls with split arguments, "
       "no usage chunk unless asked");
    ok(valid_sse(out, 0), "stream an->oa: tool stream is well-formed SSE");
    ok(st.input_tokens == 24 && st.output_tokens == 30,
       "stream an->oa: cache reads counted as input");

    /* an error event mid-stream */
    xinit(&x, "gpt-4o");
    memset(&st, 0, sizeof(st));

    {
        test_event_t  ev[] = {
            an_text_stream[0], an_text_stream[1], an_text_stream[3],
            { "error", "{\"type\":\"error\",\"error\":{\"type\":"
              "\"overloaded_error\",\"message\":\"Overloaded\"}}" },
            an_text_stream[7]
        };

        out = stream(ngx_smartflow_xlate_stream_anthropic_to_openai,
                     ngx_smartflow_xlate_stream_end_openai, &x, &st,
                     ev, 5, TEST_END_CLEAN);
    }

    is(out,
       AO_ROLE("msg_01XY")
       AO_DELTA("msg_01XY", "{\"content\":\"Hello\"}")
       "data: {\"error\":{\"message\":\"Overloaded\",\"type\":\"api_error\","
       "\"param\":null,\"code\":\"overloaded\"}}\n\n"
       AO_DONE,
       "stream an->oa: error event -> error chunk and [DONE], nothing after");

    /* the connection drops */
    xinit(&x, "gpt-4o");
    memset(&st, 0, sizeof(st));

    out = stream(ngx_smartflow_xlate_stream_anthropic_to_openai,
                 ngx_smartflow_xlate_stream_end_openai, &x, &st,
                 an_tool_stream, 7, TEST_END_BROKEN);

    has(out,
        "{\"arguments\":\"{\\\"location\\\": \\\"Pa\"}}]},"
        "\"finish_reason\":null}]}\n\n"
        "data: {\"error\":{\"message\":\"The provider's stream ended before "
        "completion.\",\"type\":\"api_error\",\"param\":null,"
        "\"code\":\"upstream_stream_broken\"}}\n\n" AO_DONE,
        "stream an->oa: broken stream ends with an error chunk and [DONE]");
    ok(valid_sse(out, 0), "stream an->oa: broken stream is well-formed SSE");
    lacks(out, "finish_reason\":\"", "stream an->oa: no finish on a break");

    /* a clean end without message_stop, after message_delta */
    xinit(&x, "gpt-4o");
    memset(&st, 0, sizeof(st));

    out = stream(ngx_smartflow_xlate_stream_anthropic_to_openai,
                 ngx_smartflow_xlate_stream_end_openai, &x, &st,
                 an_text_stream, 7, TEST_END_CLEAN);

    has(out, AO_FINISH("msg_01XY", "stop") AO_DONE,
        "stream an->oa: missing message_stop after the stop reason: "
        "finished");

    /* a clean end before any stop reason is a truncation */
    xinit(&x, "gpt-4o");
    memset(&st, 0, sizeof(st));

    out = stream(ngx_smartflow_xlate_stream_anthropic_to_openai,
                 ngx_smartflow_xlate_stream_end_openai, &x, &st,
                 an_text_stream, 5, TEST_END_CLEAN);

    has(out, "\"code\":\"upstream_stream_broken\"}}\n\n" AO_DONE,
        "stream an->oa: clean end without a stop reason is an error");

    /* _end after done adds nothing */
    xinit(&x, "gpt-4o");
    memset(&st, 0, sizeof(st));

    out = stream(ngx_smartflow_xlate_stream_anthropic_to_openai,
                 ngx_smartflow_xlate_stream_end_openai, &x, &st,
                 an_text_stream, 8, TEST_END_BROKEN);

    ok(count(out, AO_DONE) == 1 && strstr(out, "error") == NULL,
       "stream an->oa: end after message_stop adds nothing");

    /* nothing at all */
    xinit(&x, "gpt-4o");
    memset(&st, 0, sizeof(st));

    out = stream(ngx_smartflow_xlate_stream_anthropic_to_openai,
                 ngx_smartflow_xlate_stream_end_openai, &x, &st,
                 NULL, 0, TEST_END_CLEAN);

    ok(valid_sse(out, 0) && count(out, "upstream_stream_broken") == 1,
       "stream an->oa: empty stream -> error chunk");
}


/* streams: OpenAI -> Anthropic */

#define OA_CHUNK(delta, finish)                                              \
    "{\"id\":\"chatcmpl-77\",\"object\":\"chat.completion.chunk\","          \
    "\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,"          \
    "\"delta\":" delta ",\"logprobs\":null,\"finish_reason\":" finish "}],"  \
    "\"usage\":null}"

#define OA_USAGE(p, c)                                                       \
    "{\"id\":\"chatcmpl-77\",\"object\":\"chat.completion.chunk\","          \
    "\"created\":1,\"model\":\"gpt-4o\",\"choices\":[],\"usage\":"           \
    "{\"prompt_tokens\":" p ",\"completion_tokens\":" c "}}"

#define AN_EV(name, rest)                                                    \
    "event: " name "\ndata: {\"type\":\"" name "\"" rest "}\n\n"

#define AN_START(id)                                                         \
    AN_EV("message_start", ",\"message\":{\"id\":\"" id "\",\"type\":"       \
          "\"message\",\"role\":\"assistant\",\"model\":\"claude-client\","  \
          "\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,"      \
          "\"usage\":{\"input_tokens\":0,\"output_tokens\":0}}")             \
    AN_EV("ping", "")

#define AN_TEXT_START(i)                                                     \
    AN_EV("content_block_start", ",\"index\":" i ",\"content_block\":"       \
          "{\"type\":\"text\",\"text\":\"\"}")

#define AN_TEXT(i, t)                                                        \
    AN_EV("content_block_delta", ",\"index\":" i ",\"delta\":{\"type\":"     \
          "\"text_delta\",\"text\":\"" t "\"}")

#define AN_TOOL_START(i, id, name)                                           \
    AN_EV("content_block_start", ",\"index\":" i ",\"content_block\":"       \
          "{\"type\":\"tool_use\",\"id\":\"" id "\",\"name\":\"" name "\","  \
          "\"input\":{}}")

#define AN_JSON(i, j)                                                        \
    AN_EV("content_block_delta", ",\"index\":" i ",\"delta\":{\"type\":"     \
          "\"input_json_delta\",\"partial_json\":\"" j "\"}")

#define AN_STOP(i)  AN_EV("content_block_stop", ",\"index\":" i)

#define AN_END(reason, in, out)                                              \
    AN_EV("message_delta", ",\"delta\":{\"stop_reason\":\"" reason "\","     \
          "\"stop_sequence\":null},\"usage\":{\"input_tokens\":" in ","      \
          "\"output_tokens\":" out "}")                                      \
    AN_EV("message_stop", "")


static test_event_t  oa_text_stream[] = {
    { "", OA_CHUNK("{\"role\":\"assistant\",\"content\":\"\","
                   "\"refusal\":null}", "null") },
    { "", OA_CHUNK("{\"content\":\"Hello\"}", "null") },
    { "", OA_CHUNK("{\"content\":\" world\"}", "null") },
    { "", OA_CHUNK("{}", "\"stop\"") },
    { "", OA_USAGE("9", "2") },
    { "", NULL }
};


static test_event_t  oa_tool_stream[] = {
    { "", OA_CHUNK("{\"role\":\"assistant\",\"content\":\"Let me see.\"}",
                   "null") },
    { "", OA_CHUNK("{\"tool_calls\":[{\"index\":0,\"id\":\"call_X\","
                   "\"type\":\"function\",\"function\":{\"name\":"
                   "\"get_weather\",\"arguments\":\"\"}}]}", "null") },
    { "", OA_CHUNK("{\"tool_calls\":[{\"index\":0,\"function\":"
                   "{\"arguments\":\"{\\\"loc\"}}]}", "null") },
    { "", OA_CHUNK("{\"tool_calls\":[{\"index\":0,\"function\":"
                   "{\"arguments\":\"ation\\\":\\\"Paris\\\"}\"}}]}",
                   "null") },
    { "", OA_CHUNK("{\"tool_calls\":[{\"index\":1,\"id\":\"call_Y\","
                   "\"type\":\"function\",\"function\":{\"name\":"
                   "\"get_time\",\"arguments\":\"{}\"}}]}", "null") },
    { "", OA_CHUNK("{}", "\"tool_calls\"") },
    { "", OA_USAGE("30", "12") },
    { "", NULL }
};


static void
test_stream_openai_to_anthropic(void)
{
    char                          *out;
    ngx_smartflow_xlate_t          x;
    ngx_smartflow_xlate_stream_t   st;

    xinit(&x, "claude-client");
    memset(&st, 0, sizeof(st));

    out = stream(ngx_smartflow_xlate_stream_openai_to_anthropic,
                 ngx_smartflow_xlate_stream_end_anthropic, &x, &st,
                 oa_text_stream, 6, TEST_END_CLEAN);

    is(out,
       AN_START("msg_chatcmpl-77")
       AN_TEXT_START("0")
       AN_TEXT("0", "Hello")
       AN_TEXT("0", " world")
       AN_STOP("0")
       AN_END("end_turn", "9", "2"),
       "stream oa->an: text, usage from the usage chunk");
    ok(valid_sse(out, 1), "stream oa->an: text stream is well-formed SSE");
    ok(st.input_tokens == 9 && st.output_tokens == 2 && st.done,
       "stream oa->an: usage carried in the state");

    xinit(&x, "claude-client");
    memset(&st, 0, sizeof(st));

    out = stream(ngx_smartflow_xlate_stream_openai_to_anthropic,
                 ngx_smartflow_xlate_stream_end_anthropic, &x, &st,
                 oa_tool_stream, 8, TEST_END_CLEAN);

    is(out,
       AN_START("msg_chatcmpl-77")
       AN_TEXT_START("0")
       AN_TEXT("0", "Let me see.")
       AN_STOP("0")
       AN_TOOL_START("1", "call_X", "get_weather")
       AN_JSON("1", "{\\\"loc")
       AN_JSON("1", "ation\\\":\\\"Paris\\\"}")
       AN_STOP("1")
       AN_TOOL_START("2", "call_Y", "get_time")
       AN_JSON("2", "{}")
       AN_STOP("2")
       AN_END("tool_use", "30", "12"),
       "stream oa->an: text then two tool calls, blocks switched and closed");
    ok(valid_sse(out, 1), "stream oa->an: tool stream is well-formed SSE");

    /* no [DONE]: a clean end finishes the message */
    xinit(&x, "claude-client");
    memset(&st, 0, sizeof(st));

    out = stream(ngx_smartflow_xlate_stream_openai_to_anthropic,
                 ngx_smartflow_xlate_stream_end_anthropic, &x, &st,
                 oa_text_stream, 4, TEST_END_CLEAN);

    has(out, AN_STOP("0") AN_END("end_turn", "0", "0"),
        "stream oa->an: no [DONE], clean end -> message_stop");
    ok(valid_sse(out, 1), "stream oa->an: no [DONE] is well-formed SSE");

    /* the connection drops */
    xinit(&x, "claude-client");
    memset(&st, 0, sizeof(st));

    out = stream(ngx_smartflow_xlate_stream_openai_to_anthropic,
                 ngx_smartflow_xlate_stream_end_anthropic, &x, &st,
                 oa_tool_stream, 3, TEST_END_BROKEN);

    is(out,
       AN_START("msg_chatcmpl-77")
       AN_TEXT_START("0")
       AN_TEXT("0", "Let me see.")
       AN_STOP("0")
       AN_TOOL_START("1", "call_X", "get_weather")
       AN_JSON("1", "{\\\"loc")
       AN_EV("error", ",\"error\":{\"type\":\"api_error\",\"message\":"
             "\"The provider's stream ended before completion.\"}"),
       "stream oa->an: broken stream ends with an error event");
    ok(valid_sse(out, 1), "stream oa->an: broken stream is well-formed SSE");
    lacks(out, "message_stop", "stream oa->an: no message_stop on a break");

    /* an error chunk mid-stream */
    xinit(&x, "claude-client");
    memset(&st, 0, sizeof(st));

    {
        test_event_t  ev[] = {
            oa_text_stream[0], oa_text_stream[1],
            { "", "{\"error\":{\"message\":\"Rate limit \\\"hit\\\"\","
                  "\"type\":\"requests\",\"code\":\"rate_limit_exceeded\"}}" },
            oa_text_stream[2], oa_text_stream[5]
        };

        out = stream(ngx_smartflow_xlate_stream_openai_to_anthropic,
                     ngx_smartflow_xlate_stream_end_anthropic, &x, &st,
                     ev, 5, TEST_END_CLEAN);
    }

    is(out,
       AN_START("msg_chatcmpl-77")
       AN_TEXT_START("0")
       AN_TEXT("0", "Hello")
       AN_EV("error", ",\"error\":{\"type\":\"rate_limit_error\",\"message\":"
             "\"Rate limit \\\"hit\\\"\"}"),
       "stream oa->an: error chunk -> error event, nothing after");

    /* tool calls without ids and without indexes (lenient servers) */
    xinit(&x, "claude-client");
    memset(&st, 0, sizeof(st));

    {
        test_event_t  ev[] = {
            { "", OA_CHUNK("{\"tool_calls\":[{\"function\":{\"name\":\"f\","
                           "\"arguments\":\"{\\\"a\\\":1}\"}}]}", "null") },
            { "", OA_CHUNK("{\"tool_calls\":[{\"id\":\"c2\",\"function\":"
                           "{\"name\":\"g\",\"arguments\":\"{}\"}}]}",
                           "\"tool_calls\"") },
            { "", NULL }
        };

        out = stream(ngx_smartflow_xlate_stream_openai_to_anthropic,
                     ngx_smartflow_xlate_stream_end_anthropic, &x, &st,
                     ev, 3, TEST_END_CLEAN);
    }

    has(out,
        AN_TOOL_START("0", "toolu_smartflow_0", "f")
        AN_JSON("0", "{\\\"a\\\":1}")
        AN_STOP("0")
        AN_TOOL_START("1", "c2", "g"),
        "stream oa->an: missing id generated, a new id starts a new block");

    /* nothing at all */
    xinit(&x, "claude-client");
    memset(&st, 0, sizeof(st));

    out = stream(ngx_smartflow_xlate_stream_openai_to_anthropic,
                 ngx_smartflow_xlate_stream_end_anthropic, &x, &st,
                 NULL, 0, TEST_END_CLEAN);

    is(out,
       AN_EV("error", ",\"error\":{\"type\":\"api_error\",\"message\":"
             "\"The provider's stream ended before completion.\"}"),
       "stream oa->an: empty stream -> error event");
}


/* provider strings are escaped in the client's events */

static void
test_stream_escaping(void)
{
    char                          *out, *p, *e;
    ngx_str_t                      err;
    ngx_smartflow_xlate_t          x;
    ngx_smartflow_json_t          *j, *v;
    ngx_smartflow_xlate_stream_t   st;

    static char  raw[] = "say \"hi\"\n\tand \\ \x01 caf\xc3\xa9";

    test_event_t  an[] = {
        { "message_start", "{\"type\":\"message_start\",\"message\":{\"id\":"
          "\"msg_\\\"q\",\"usage\":{\"input_tokens\":1}}}" },
        { "content_block_delta", "{\"type\":\"content_block_delta\","
          "\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":"
          "\"say \\\"hi\\\"\\n\\tand \\\\ \\u0001 caf\xc3\xa9\"}}" },
        { "message_delta", "{\"type\":\"message_delta\",\"delta\":"
          "{\"stop_reason\":\"end_turn\"}}" },
        { "message_stop", "{\"type\":\"message_stop\"}" }
    };

    test_event_t  oa[] = {
        { "", "{\"id\":\"x\\\"y\",\"choices\":[{\"delta\":{\"content\":"
              "\"say \\\"hi\\\"\\n\\tand \\\\ \\u0001 caf\xc3\xa9\"}}]}" },
        { "", NULL }
    };

    xinit(&x, "we\"ird\nmodel");
    memset(&st, 0, sizeof(st));

    out = stream(ngx_smartflow_xlate_stream_anthropic_to_openai,
                 ngx_smartflow_xlate_stream_end_openai, &x, &st,
                 an, 4, TEST_END_CLEAN);

    ok(valid_sse(out, 0), "escaping an->oa: still well-formed SSE");

    /* the second chunk carries the text: parse it back */
    v = NULL;
    p = strstr(out, "data: {\"id\"");
    p = p ? strstr(p + 1, "data: {\"id\"") : NULL;
    e = p ? strstr(p, "\n\n") : NULL;

    if (e) {
        j = ngx_smartflow_json_parse(&test_pool, (u_char *) p + 6,
                                     e - p - 6, &err);
        v = ngx_smartflow_json_get(j, "choices");
        v = v ? ngx_smartflow_json_get(
                    ngx_smartflow_json_get(v->child, "delta"), "content")
              : NULL;
    }

    ok(v && v->str.len == sizeof(raw) - 1
       && memcmp(v->str.data, raw, v->str.len) == 0,
       "escaping an->oa: text decodes back to the provider's bytes");
    has(out, "\"id\":\"chatcmpl-msg_\\\"q\"", "escaping an->oa: id escaped");
    has(out, "\"model\":\"we\\\"ird\\nmodel\"",
        "escaping an->oa: model escaped");

    xinit(&x, "m");
    memset(&st, 0, sizeof(st));

    out = stream(ngx_smartflow_xlate_stream_openai_to_anthropic,
                 ngx_smartflow_xlate_stream_end_anthropic, &x, &st,
                 oa, 2, TEST_END_CLEAN);

    ok(valid_sse(out, 1), "escaping oa->an: still well-formed SSE");
    has(out, "\"text\":\"say \\\"hi\\\"\\n\\tand \\\\ \\u0001 caf\xc3\xa9\"",
        "escaping oa->an: text escaped");
    has(out, "\"id\":\"msg_x\\\"y\"", "escaping oa->an: id escaped");
}


int
main(void)
{
    test_req_openai_basic();
    test_req_openai_merge_images();
    test_req_openai_tools();
    test_req_openai_errors();
    test_req_anthropic();
    test_resp();
    test_errors();
    test_stream_anthropic_to_openai();
    test_stream_openai_to_anthropic();
    test_stream_escaping();

    printf("1..%d\n", test_n);

    test_free_all();

    return test_failed ? 1 : 0;
}
