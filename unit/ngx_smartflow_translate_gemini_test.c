/*
 * Unit tests for the OpenAI <-> Gemini translation: requests, whole
 * responses and alt=sse streams, checked on the dumped JSON and on the
 * exact SSE bytes.  Prints TAP.  Built outside nginx with ASan and UBSan,
 * so the few nginx core functions the code calls are provided below over
 * malloc.
 */

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "ngx_http_smartflow_translate.h"


/* the nginx core the translation uses */

typedef struct t_block_s  t_block_t;

struct t_block_s {
    t_block_t  *next;
};

static t_block_t  *t_blocks;


void *
ngx_pnalloc(ngx_pool_t *pool, size_t size)
{
    t_block_t  *b;

    b = malloc(sizeof(t_block_t) + size);
    if (b == NULL) {
        return NULL;
    }

    b->next = t_blocks;
    t_blocks = b;

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
    void  *elts;

    if (a->nelts == a->nalloc) {
        elts = ngx_palloc(a->pool, 2 * (a->nalloc + 1) * a->size);
        if (elts == NULL) {
            return NULL;
        }

        if (a->nelts) {
            memcpy(elts, a->elts, a->nelts * a->size);
        }

        a->elts = elts;
        a->nalloc = 2 * (a->nalloc + 1);
    }

    return (u_char *) a->elts + a->size * a->nelts++;
}


/* %V, %s, %i, %ui, %d, %ud, %z, %uz, %T: what the code prints */
u_char *
ngx_vslprintf(u_char *buf, u_char *last, const char *fmt, va_list args)
{
    int          uns;
    char         tmp[32];
    size_t       len;
    ngx_str_t   *v;
    const char  *s;

    while (*fmt && buf < last) {

        if (*fmt != '%') {
            *buf++ = *fmt++;
            continue;
        }

        fmt++;
        uns = (*fmt == 'u');

        if (uns) {
            fmt++;
        }

        s = tmp;

        switch (*fmt++) {
        case 'V':
            v = va_arg(args, ngx_str_t *);
            s = (const char *) v->data;
            len = v->len;
            break;

        case 's':
            s = va_arg(args, const char *);
            len = strlen(s);
            break;

        case 'i':
            len = uns ? snprintf(tmp, sizeof(tmp), "%lu",
                                 (unsigned long) va_arg(args, ngx_uint_t))
                      : snprintf(tmp, sizeof(tmp), "%ld",
                                 (long) va_arg(args, ngx_int_t));
            break;

        case 'd':
            len = uns ? snprintf(tmp, sizeof(tmp), "%u", va_arg(args, u_int))
                      : snprintf(tmp, sizeof(tmp), "%d", va_arg(args, int));
            break;

        case 'z':
            len = uns ? snprintf(tmp, sizeof(tmp), "%zu",
                                 va_arg(args, size_t))
                      : snprintf(tmp, sizeof(tmp), "%zd",
                                 va_arg(args, ssize_t));
            break;

        case 'T':
            len = snprintf(tmp, sizeof(tmp), "%ld",
                           (long) va_arg(args, time_t));
            break;

        default:
            fprintf(stderr, "harness: unsupported format \"%s\"\n", fmt - 1);
            abort();
        }

        while (len-- && buf < last) {
            *buf++ = *s++;
        }
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


static ngx_time_t      t_now = { 1700000000, 0, 0 };
volatile ngx_time_t   *ngx_cached_time = &t_now;


static void
t_free_all(void)
{
    t_block_t  *b, *next;

    for (b = t_blocks; b; b = next) {
        next = b->next;
        free(b);
    }

    t_blocks = NULL;
}


/* TAP and helpers */

static ngx_pool_t  t_pool;
static int         t_n;
static int         t_failed;


static void
ok(int cond, const char *name)
{
    t_n++;
    t_failed += !cond;

    printf("%sok %d - %s\n", cond ? "" : "not ", t_n, name);
}


static void
is(const char *got, const char *want, const char *name)
{
    ok(strcmp(got, want) == 0, name);

    if (strcmp(got, want) != 0) {
        printf("#      got: %s\n# expected: %s\n", got, want);
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


static int
count(const char *s, const char *needle)
{
    int  n;

    for (n = 0; (s = strstr(s, needle)) != NULL; s += strlen(needle)) {
        n++;
    }

    return n;
}


static ngx_smartflow_json_t *
J(const char *s)
{
    ngx_str_t              err;
    ngx_smartflow_json_t  *j;

    j = ngx_smartflow_json_parse(&t_pool, (u_char *) s, strlen(s), &err);
    if (j == NULL) {
        fprintf(stderr, "harness: bad test JSON (%.*s): %s\n",
                (int) err.len, err.data, s);
        abort();
    }

    return j;
}


/* a tree dumped as a C string, "(null)" for none */
static char *
D(ngx_smartflow_json_t *j)
{
    char       *s;
    ngx_str_t   out;

    if (j == NULL) {
        return "(null)";
    }

    if (ngx_smartflow_json_dump(&t_pool, j, &out) != NGX_OK) {
        abort();
    }

    s = ngx_pnalloc(&t_pool, out.len + 1);
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

    x->pool = &t_pool;
    x->model.data = (u_char *) model;
    x->model.len = strlen(model);
}


static char *
xerr(ngx_smartflow_xlate_t *x)
{
    char  *s;

    s = ngx_pcalloc(&t_pool, x->err.len + 1);
    if (s == NULL) {
        abort();
    }

    if (x->err.len) {
        memcpy(s, x->err.data, x->err.len);
    }

    return s;
}


static char *
req(const char *body)
{
    ngx_smartflow_xlate_t  x;

    xinit(&x, "gemini-client");

    return D(ngx_smartflow_xlate_req_openai_to_gemini(&x, J(body)));
}


/* the error a refused request gives, or "(accepted)" */
static char *
req_err(const char *body)
{
    ngx_smartflow_xlate_t  x;

    xinit(&x, "gemini-client");

    if (ngx_smartflow_xlate_req_openai_to_gemini(&x, J(body)) != NULL) {
        return "(accepted)";
    }

    return xerr(&x);
}


static char *
resp(const char *body)
{
    ngx_smartflow_xlate_t  x;

    xinit(&x, "gpt-4o");

    return D(ngx_smartflow_xlate_resp_gemini_to_openai(&x, J(body)));
}


/* streams: the events' data (NULL ends the list), then the end call */

#define T_END_NONE    0
#define T_END_CLEAN   1
#define T_END_BROKEN  2


static char *
stream(ngx_smartflow_xlate_t *x, ngx_smartflow_xlate_stream_t *st,
    const char **ev, ngx_uint_t how)
{
    char         *s, *p;
    size_t        len;
    ngx_str_t     name, *e;
    ngx_uint_t    i;
    ngx_array_t   out;

    if (ngx_array_init(&out, &t_pool, 2, sizeof(ngx_str_t)) != NGX_OK) {
        abort();
    }

    ngx_str_null(&name);

    for (i = 0; ev[i]; i++) {
        if (ngx_smartflow_xlate_stream_gemini_to_openai(x, st, &name,
                                                        J(ev[i]), &out)
            != NGX_OK)
        {
            printf("# stream function failed: %s\n", xerr(x));
            return "(failed)";
        }
    }

    if (how != T_END_NONE
        && ngx_smartflow_xlate_stream_end_gemini_openai(x, st,
                                                        how == T_END_BROKEN,
                                                        &out)
           != NGX_OK)
    {
        printf("# stream end failed: %s\n", xerr(x));
        return "(failed)";
    }

    e = out.elts;
    len = 0;

    for (i = 0; i < out.nelts; i++) {
        len += e[i].len;
    }

    s = ngx_pnalloc(&t_pool, len + 1);
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


static char *
stream1(const char *model, ngx_uint_t usage, const char **ev,
    ngx_uint_t how)
{
    ngx_smartflow_xlate_t          x;
    ngx_smartflow_xlate_stream_t   st;

    xinit(&x, (char *) model);
    memset(&st, 0, sizeof(st));
    st.include_usage = usage;

    return stream(&x, &st, ev, how);
}


/* each event "data: JSON\n\n" or "data: [DONE]\n\n", [DONE] last */
static int
valid_sse(const char *s)
{
    char       *end, *json;
    ngx_str_t   err;

    while (*s) {
        end = strstr(s, "\n\n");

        if (end == NULL || strncmp(s, "data: ", 6) != 0) {
            printf("# malformed event: %s\n", s);
            return 0;
        }

        json = (char *) s + 6;

        if (end - json == 6 && strncmp(json, "[DONE]", 6) == 0) {
            if (end[2] != '\0') {
                printf("# events after [DONE]: %s\n", end + 2);
                return 0;
            }

            return 1;
        }

        if (ngx_smartflow_json_parse(&t_pool, (u_char *) json, end - json,
                                     &err)
            == NULL)
        {
            printf("# invalid JSON: %.*s\n", (int) (end - json), json);
            return 0;
        }

        s = end + 2;
    }

    printf("# no [DONE]\n");
    return 0;
}


/* the n-th event's parsed data (from 0) */
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
            return ngx_smartflow_json_parse(&t_pool, (u_char *) s + 6,
                                            end - s - 6, &err);
        }

        s = end + 2;
    }
}


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


/* requests */

static void
test_req_basic(void)
{
    char                  *before;
    ngx_smartflow_json_t  *in;
    ngx_smartflow_xlate_t  x;

    in = J("{\"model\":\"gemini-2.5-flash\",\"messages\":["
           "{\"role\":\"system\",\"content\":\"Be brief.\"},"
           "{\"role\":\"developer\",\"content\":[{\"type\":\"text\","
           "\"text\":\"Answer in French.\"}]},"
           "{\"role\":\"user\",\"content\":\"Hello\",\"name\":\"ann\"}],"
           "\"temperature\":0.2,\"top_p\":0.9,\"max_tokens\":100,"
           "\"stop\":\"END\",\"seed\":7,\"n\":1,\"stream\":true,"
           "\"stream_options\":{\"include_usage\":true},\"user\":\"u-1\","
           "\"presence_penalty\":0.5,\"frequency_penalty\":0.1,"
           "\"logprobs\":false,\"parallel_tool_calls\":true}");
    before = D(in);

    xinit(&x, "gemini-2.5-flash");

    is(D(ngx_smartflow_xlate_req_openai_to_gemini(&x, in)),
       "{\"systemInstruction\":{\"parts\":[{\"text\":"
       "\"Be brief.\\n\\nAnswer in French.\"}]},"
       "\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"Hello\"}]}],"
       "\"generationConfig\":{\"temperature\":0.2,\"topP\":0.9,"
       "\"maxOutputTokens\":100,\"seed\":7,\"stopSequences\":[\"END\"]}}",
       "req: system and developer -> systemInstruction, generationConfig, "
       "no model, OpenAI-only fields dropped");

    is(D(in), before, "req: the client's tree is left as it was");

    is(req("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
           "\"max_tokens\":10,\"max_completion_tokens\":50,"
           "\"stop\":[\"a\",\"\",\"b\"],"
           "\"response_format\":{\"type\":\"json_object\"}}"),
       "{\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"x\"}]}],"
       "\"generationConfig\":{\"maxOutputTokens\":50,"
       "\"stopSequences\":[\"a\",\"b\"],"
       "\"responseMimeType\":\"application/json\"}}",
       "req: max_completion_tokens wins, stop array, json_object");

    is(req("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
           "\"response_format\":{\"type\":\"text\"},\"stop\":\"\"}"),
       "{\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"x\"}]}]}",
       "req: no generationConfig when nothing maps to it");

    is(req("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
           "\"response_format\":{\"type\":\"json_schema\",\"json_schema\":"
           "{\"name\":\"r\",\"strict\":true,\"schema\":{\"type\":\"object\","
           "\"properties\":{\"n\":{\"type\":\"integer\"}},"
           "\"required\":[\"n\"],\"additionalProperties\":false}}}}"),
       "{\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"x\"}]}],"
       "\"generationConfig\":{\"responseMimeType\":\"application/json\","
       "\"responseSchema\":{\"type\":\"object\",\"properties\":{\"n\":"
       "{\"type\":\"integer\"}},\"required\":[\"n\"]}}}",
       "req: json_schema -> responseSchema, cleaned");
}


static void
test_req_turns(void)
{
    is(req("{\"messages\":["
           "{\"role\":\"user\",\"content\":\"First\"},"
           "{\"role\":\"user\",\"content\":[{\"type\":\"text\","
           "\"text\":\"Look:\"},{\"type\":\"image_url\",\"image_url\":"
           "{\"url\":\"data:image/png;base64,iVBORw0KGgo=\"}},"
           "{\"type\":\"image_url\",\"image_url\":{\"url\":"
           "\"https://example.com/a/cat.WEBP?size=2#x\",\"detail\":\"low\"}},"
           "{\"type\":\"image_url\",\"image_url\":{\"url\":"
           "\"https://example.com/v1.2/photo\"}}]},"
           "{\"role\":\"assistant\",\"content\":\"A cat.\"},"
           "{\"role\":\"assistant\",\"content\":[{\"type\":\"text\","
           "\"text\":\"Anything else?\"}]},"
           "{\"role\":\"assistant\",\"content\":null},"
           "{\"role\":\"user\",\"content\":\"\"},"
           "{\"role\":\"user\",\"content\":\"No\"}]}"),
       "{\"contents\":["
       "{\"role\":\"user\",\"parts\":[{\"text\":\"First\"},"
       "{\"text\":\"Look:\"},"
       "{\"inlineData\":{\"mimeType\":\"image/png\","
       "\"data\":\"iVBORw0KGgo=\"}},"
       "{\"fileData\":{\"mimeType\":\"image/webp\",\"fileUri\":"
       "\"https://example.com/a/cat.WEBP?size=2#x\"}},"
       "{\"fileData\":{\"mimeType\":\"image/jpeg\",\"fileUri\":"
       "\"https://example.com/v1.2/photo\"}}]},"
       "{\"role\":\"model\",\"parts\":[{\"text\":\"A cat.\"},"
       "{\"text\":\"Anything else?\"}]},"
       "{\"role\":\"user\",\"parts\":[{\"text\":\"No\"}]}]}",
       "req: same-role turns merged, assistant -> model, data and http "
       "images, media type from the extension, empty turns skipped");

    is(req("{\"messages\":[{\"role\":\"user\",\"content\":["
           "{\"type\":\"file\",\"file\":{\"filename\":\"a.pdf\","
           "\"file_data\":\"data:application/pdf;base64,JVBERi0=\"}},"
           "{\"type\":\"input_audio\",\"input_audio\":{\"data\":\"UklG\","
           "\"format\":\"wav\"}},"
           "{\"type\":\"text\",\"text\":\"Summarise\"}]}]}"),
       "{\"contents\":[{\"role\":\"user\",\"parts\":["
       "{\"inlineData\":{\"mimeType\":\"application/pdf\","
       "\"data\":\"JVBERi0=\"}},"
       "{\"inlineData\":{\"mimeType\":\"audio/wav\",\"data\":\"UklG\"}},"
       "{\"text\":\"Summarise\"}]}]}",
       "req: inline file and audio -> inlineData");
}


static void
test_req_tools(void)
{
    char  *out;

    out = req("{\"messages\":["
              "{\"role\":\"user\",\"content\":\"Weather in Paris and Rome?\"},"
              "{\"role\":\"assistant\",\"content\":\"Checking.\","
              "\"tool_calls\":["
              "{\"id\":\"call_1\",\"type\":\"function\",\"function\":{"
              "\"name\":\"get_weather\",\"arguments\":"
              "\"{\\\"location\\\":\\\"Paris\\\"}\"}},"
              "{\"id\":\"call_2\",\"type\":\"function\",\"function\":{"
              "\"name\":\"get_time\",\"arguments\":\"not json\"}}]},"
              "{\"role\":\"tool\",\"tool_call_id\":\"call_1\","
              "\"content\":\"18C sunny\"},"
              "{\"role\":\"user\",\"content\":\"and hurry\"},"
              "{\"role\":\"tool\",\"tool_call_id\":\"call_2\",\"content\":"
              "\" {\\\"time\\\":\\\"12:00\\\",\\\"tz\\\":[1,2]}\"}],"
              "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":"
              "\"get_weather\",\"description\":\"Current weather\","
              "\"strict\":true,\"parameters\":{\"type\":\"object\","
              "\"properties\":{\"location\":{\"type\":\"string\"}},"
              "\"required\":[\"location\"]}}},"
              "{\"type\":\"function\",\"function\":{\"name\":\"get_time\","
              "\"parameters\":{\"type\":\"object\",\"properties\":{}}}},"
              "{\"type\":\"function\",\"function\":{\"name\":\"now\"}}],"
              "\"tool_choice\":\"required\"}");

    is(out,
       "{\"contents\":["
       "{\"role\":\"user\",\"parts\":[{\"text\":"
       "\"Weather in Paris and Rome?\"}]},"
       "{\"role\":\"model\",\"parts\":[{\"text\":\"Checking.\"},"
       "{\"functionCall\":{\"name\":\"get_weather\",\"args\":"
       "{\"location\":\"Paris\"}},"
       "\"thoughtSignature\":\"skip_thought_signature_validator\"},"
       "{\"functionCall\":{\"name\":\"get_time\",\"args\":{}}}]},"
       "{\"role\":\"user\",\"parts\":["
       "{\"functionResponse\":{\"name\":\"get_weather\",\"response\":"
       "{\"content\":\"18C sunny\"}}},"
       "{\"functionResponse\":{\"name\":\"get_time\",\"response\":"
       "{\"time\":\"12:00\",\"tz\":[1,2]}}},"
       "{\"text\":\"and hurry\"}]}],"
       "\"tools\":[{\"functionDeclarations\":["
       "{\"name\":\"get_weather\",\"description\":\"Current weather\","
       "\"parameters\":{\"type\":\"object\",\"properties\":{\"location\":"
       "{\"type\":\"string\"}},\"required\":[\"location\"]}},"
       "{\"name\":\"get_time\"},{\"name\":\"now\"}]}],"
       "\"toolConfig\":{\"functionCallingConfig\":{\"mode\":\"ANY\"}}}",
       "req: tool calls -> functionCall (first one signed), results -> "
       "functionResponse named from the call id, placed before the turn's "
       "text, JSON results as the response, empty schemas left out");

    has(req("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
            "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],"
            "\"tool_choice\":{\"type\":\"function\",\"function\":"
            "{\"name\":\"f\"}}}"),
        "\"toolConfig\":{\"functionCallingConfig\":{\"mode\":\"ANY\","
        "\"allowedFunctionNames\":[\"f\"]}}",
        "req: tool_choice function -> ANY with allowedFunctionNames");

    has(req("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
            "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],"
            "\"tool_choice\":\"none\"}"),
        "{\"functionCallingConfig\":{\"mode\":\"NONE\"}}",
        "req: tool_choice none -> NONE");

    has(req("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
            "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],"
            "\"tool_choice\":\"auto\"}"),
        "{\"functionCallingConfig\":{\"mode\":\"AUTO\"}}",
        "req: tool_choice auto -> AUTO");

    out = req("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
              "\"tools\":[],\"tool_choice\":\"auto\"}");
    lacks(out, "tools", "req: empty tools dropped");
    lacks(out, "toolConfig", "req: tool_choice without tools dropped");

    /* a tool id used twice: each result answers the latest call */
    out = req("{\"messages\":["
              "{\"role\":\"user\",\"content\":\"go\"},"
              "{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"call_0\","
              "\"type\":\"function\",\"function\":{\"name\":\"first\","
              "\"arguments\":\"{}\"}}]},"
              "{\"role\":\"tool\",\"tool_call_id\":\"call_0\","
              "\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
              "{\"type\":\"text\",\"text\":\"b\"}]},"
              "{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"call_0\","
              "\"type\":\"function\",\"function\":{\"name\":\"second\","
              "\"arguments\":{\"k\":1}}}]},"
              "{\"role\":\"tool\",\"tool_call_id\":\"call_0\","
              "\"content\":\"[1]\"},"
              "{\"role\":\"tool\",\"tool_call_id\":\"lost\","
              "\"name\":\"legacy\",\"content\":\"{broken\"}]}");

    has(out, "{\"functionResponse\":{\"name\":\"first\",\"response\":"
        "{\"content\":\"a\\nb\"}}}",
        "req: a result's text parts joined, name of the first call");
    has(out, "{\"functionCall\":{\"name\":\"second\",\"args\":{\"k\":1}}",
        "req: arguments given as an object are kept");
    has(out, "{\"functionResponse\":{\"name\":\"second\",\"response\":"
        "{\"content\":\"[1]\"}}},{\"functionResponse\":{\"name\":"
        "\"legacy\",\"response\":{\"content\":\"{broken\"}}}",
        "req: the latest call's name, a non-object JSON or broken JSON "
        "result as content, the message's own name as a fallback");
}


/* a $defs member whose four properties all refer to the next one */
#define LEVEL(a, b)                                                          \
    "\"" a "\":{\"type\":\"object\",\"properties\":{"                        \
    "\"p\":{\"$ref\":\"#/$defs/" b "\"},\"q\":{\"$ref\":\"#/$defs/" b "\"}," \
    "\"r\":{\"$ref\":\"#/$defs/" b "\"},\"s\":{\"$ref\":\"#/$defs/" b "\"}}},"


static void
test_req_schema(void)
{
    is(req("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
           "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\","
           "\"parameters\":{"
           "\"$schema\":\"http://json-schema.org/draft-07/schema#\","
           "\"type\":\"object\",\"additionalProperties\":false,"
           "\"properties\":{"
           "\"url\":{\"type\":\"string\",\"format\":\"uri\"},"
           "\"when\":{\"type\":\"string\",\"format\":\"date-time\"},"
           "\"additionalProperties\":{\"type\":[\"string\",\"null\"],"
           "\"default\":{\"additionalProperties\":1}},"
           "\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"object\","
           "\"properties\":{\"k\":{\"const\":\"v\",\"type\":\"string\"}},"
           "\"additionalProperties\":false},\"uniqueItems\":true},"
           "\"pick\":{\"anyOf\":[{\"$ref\":\"#/$defs/Color\"},"
           "{\"type\":\"null\"}]},"
           "\"shade\":{\"$ref\":\"#/definitions/Shade\","
           "\"description\":\"Which shade\"}},"
           "\"$defs\":{\"Color\":{\"type\":\"string\","
           "\"enum\":[\"red\",\"blue\"],\"$comment\":\"c\"}},"
           "\"definitions\":{\"Shade\":{\"type\":\"integer\","
           "\"description\":\"generic\",\"exclusiveMinimum\":0}}}}}]}"),
       "{\"contents\":[{\"role\":\"user\",\"parts\":[{\"text\":\"x\"}]}],"
       "\"tools\":[{\"functionDeclarations\":[{\"name\":\"f\","
       "\"parameters\":{\"type\":\"object\",\"properties\":{"
       "\"url\":{\"type\":\"string\"},"
       "\"when\":{\"type\":\"string\",\"format\":\"date-time\"},"
       "\"additionalProperties\":{\"type\":\"string\",\"nullable\":true,"
       "\"default\":{\"additionalProperties\":1}},"
       "\"tags\":{\"type\":\"array\",\"items\":{\"type\":\"object\","
       "\"properties\":{\"k\":{\"type\":\"string\"}}}},"
       "\"pick\":{\"anyOf\":[{\"type\":\"string\","
       "\"enum\":[\"red\",\"blue\"]},{\"type\":\"null\"}]},"
       "\"shade\":{\"type\":\"integer\",\"description\":\"Which shade\"}}}}"
       "]}]}",
       "req: schema cleaned at every depth, property names and values "
       "kept, type lists -> nullable, $refs inlined");

    ok(strstr(req_err("{\"messages\":[{\"role\":\"user\",\"content\":"
                      "\"x\"}],\"tools\":[{\"type\":\"function\","
                      "\"function\":{\"name\":\"f\",\"parameters\":{"
                      "\"type\":\"object\",\"properties\":{\"a\":"
                      "{\"$ref\":\"#/$defs/Nope\"}}}}}]}"),
              "$ref") != NULL,
       "req: a $ref to nothing is refused");

    ok(strstr(req_err("{\"messages\":[{\"role\":\"user\",\"content\":"
                      "\"x\"}],\"tools\":[{\"type\":\"function\","
                      "\"function\":{\"name\":\"f\",\"parameters\":{"
                      "\"type\":\"object\",\"properties\":{\"child\":"
                      "{\"$ref\":\"#\"}}}}}]}"),
              "too deeply") != NULL,
       "req: a recursive schema is refused, not expanded forever");

    /* each level refers four times to the next: 4^12 nodes unbounded */
    ok(strstr(req_err("{\"messages\":[{\"role\":\"user\",\"content\":"
                      "\"x\"}],\"tools\":[{\"type\":\"function\","
                      "\"function\":{\"name\":\"f\",\"parameters\":{"
                      "\"$ref\":\"#/$defs/L0\",\"$defs\":{"
                      LEVEL("L0", "L1") LEVEL("L1", "L2") LEVEL("L2", "L3")
                      LEVEL("L3", "L4") LEVEL("L4", "L5") LEVEL("L5", "L6")
                      LEVEL("L6", "L7") LEVEL("L7", "L8") LEVEL("L8", "L9")
                      LEVEL("L9", "L10") LEVEL("L10", "L11")
                      "\"L11\":{\"type\":\"string\"}}}}}]}"),
              "expand too far") != NULL,
       "req: $refs that multiply are stopped by the node budget");
}


static void
test_req_errors(void)
{
    ngx_smartflow_xlate_t  x;

    xinit(&x, "m");
    ok(ngx_smartflow_xlate_req_openai_to_gemini(&x, J("[1]")) == NULL
       && strstr(xerr(&x), "JSON object") != NULL,
       "req: a body that is not an object is refused");

    is(req_err("{\"model\":\"m\"}"), "'messages' must be an array",
       "req: no messages");
    ok(strstr(req_err("{\"messages\":[{\"role\":\"function\","
                      "\"content\":\"x\"}]}"),
              "role must be") != NULL,
       "req: an unknown role is refused");
    ok(strstr(req_err("{\"messages\":[{\"content\":\"x\"}]}"),
              "'role'") != NULL,
       "req: a message without a role is refused");
    ok(strstr(req_err("{\"messages\":[{\"role\":\"system\","
                      "\"content\":\"x\"}]}"),
              "no user or assistant") != NULL,
       "req: a system message alone is refused");
    ok(strstr(req_err("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"},"
                      "{\"role\":\"tool\",\"tool_call_id\":\"c9\","
                      "\"content\":\"r\"}]}"),
              "matches no earlier tool call") != NULL,
       "req: a result for an unknown call is refused");
    ok(strstr(req_err("{\"messages\":[{\"role\":\"tool\","
                      "\"content\":\"r\"}]}"),
              "tool_call_id") != NULL,
       "req: a result without tool_call_id is refused");
    ok(strstr(req_err("{\"messages\":[{\"role\":\"user\",\"content\":[{"
                      "\"type\":\"image_url\",\"image_url\":{\"url\":"
                      "\"ftp://x/y.png\"}}]}]}"),
              "image") != NULL,
       "req: an image that is neither http(s) nor data is refused");
    ok(strstr(req_err("{\"messages\":[{\"role\":\"user\",\"content\":[{"
                      "\"type\":\"image_url\",\"image_url\":{\"url\":"
                      "\"data:image/png,rawbytes\"}}]}]}"),
              "image") != NULL,
       "req: a data URL that is not base64 is refused");
    ok(strstr(req_err("{\"messages\":[{\"role\":\"user\",\"content\":[{"
                      "\"type\":\"file\",\"file\":{\"file_id\":\"f-1\"}}]}]}"),
              "inline files") != NULL,
       "req: a file by id is refused");
    ok(strstr(req_err("{\"messages\":[{\"role\":\"user\",\"content\":[{"
                      "\"type\":\"video\"}]}]}"),
              "not supported") != NULL,
       "req: an unknown part type is refused");
    ok(strstr(req_err("{\"messages\":[{\"role\":\"user\",\"content\":7}]}"),
              "string or an array") != NULL,
       "req: a content that is a number is refused");
    ok(strstr(req_err("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                      "\"n\":2}"),
              "'n' must be 1") != NULL,
       "req: n > 1 is refused");
    ok(strstr(req_err("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                      "\"tools\":[{\"type\":\"web_search\"}]}"),
              "only function tools") != NULL,
       "req: a non-function tool is refused");
    ok(strstr(req_err("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                      "\"tools\":[{\"type\":\"function\",\"function\":"
                      "{\"name\":\"f\"}}],\"tool_choice\":\"sometimes\"}"),
              "tool_choice") != NULL,
       "req: an unknown tool_choice is refused");
    ok(strstr(req_err("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                      "\"response_format\":{\"type\":\"yaml\"}}"),
              "response_format") != NULL,
       "req: an unknown response_format is refused");
    ok(strstr(req_err("{\"messages\":[{\"role\":\"assistant\","
                      "\"tool_calls\":[{\"id\":\"c\",\"function\":{}}]}]}"),
              "function name") != NULL,
       "req: a tool call without a name is refused");
}


/* whole responses */

static void
test_resp(void)
{
    char                  *out;
    ngx_smartflow_xlate_t  x;

    is(resp("{\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":["
            "{\"text\":\"Let me think\",\"thought\":true},"
            "{\"text\":\"Hello\"},{\"text\":\" world\"}]},"
            "\"finishReason\":\"STOP\",\"index\":0,\"safetyRatings\":[]}],"
            "\"usageMetadata\":{\"promptTokenCount\":9,"
            "\"candidatesTokenCount\":2,\"thoughtsTokenCount\":5,"
            "\"cachedContentTokenCount\":4,\"totalTokenCount\":16},"
            "\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"R1\"}"),
       "{\"id\":\"chatcmpl-R1\",\"object\":\"chat.completion\","
       "\"created\":1700000000,\"model\":\"gpt-4o\",\"choices\":[{"
       "\"index\":0,\"message\":{\"role\":\"assistant\","
       "\"content\":\"Hello world\"},\"finish_reason\":\"stop\"}],"
       "\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":7,"
       "\"total_tokens\":16,\"prompt_tokens_details\":{\"cached_tokens\":4},"
       "\"completion_tokens_details\":{\"reasoning_tokens\":5}}}",
       "resp: text parts joined, thoughts left out but counted, "
       "the client's model, responseId in the id");

    is(resp("{\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":["
            "{\"functionCall\":{\"name\":\"get_weather\",\"args\":"
            "{\"location\":\"Paris\",\"days\":[1,2]}}},"
            "{\"functionCall\":{\"id\":\"fc-7\",\"name\":\"now\"}}]},"
            "\"finishReason\":\"STOP\"}],"
            "\"usageMetadata\":{\"promptTokenCount\":20,"
            "\"candidatesTokenCount\":8,\"toolUsePromptTokenCount\":3},"
            "\"responseId\":\"R2\"}"),
       "{\"id\":\"chatcmpl-R2\",\"object\":\"chat.completion\","
       "\"created\":1700000000,\"model\":\"gpt-4o\",\"choices\":[{"
       "\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":null,"
       "\"tool_calls\":[{\"id\":\"call_R2_0\",\"type\":\"function\","
       "\"function\":{\"name\":\"get_weather\",\"arguments\":"
       "\"{\\\"location\\\":\\\"Paris\\\",\\\"days\\\":[1,2]}\"}},"
       "{\"id\":\"fc-7\",\"type\":\"function\",\"function\":{\"name\":"
       "\"now\",\"arguments\":\"{}\"}}]},\"finish_reason\":\"tool_calls\"}],"
       "\"usage\":{\"prompt_tokens\":23,\"completion_tokens\":8,"
       "\"total_tokens\":31}}",
       "resp: function calls -> tool_calls with ids, null content, "
       "finish tool_calls, tool-use prompt counted as input");

    has(resp("{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hal\"}]},"
             "\"finishReason\":\"MAX_TOKENS\"}]}"),
        "\"content\":\"Hal\"},\"finish_reason\":\"length\"}],"
        "\"usage\":{\"prompt_tokens\":0,\"completion_tokens\":0,"
        "\"total_tokens\":0}}",
        "resp: MAX_TOKENS -> length, no usage -> zeros");
    has(resp("{\"candidates\":[{\"finishReason\":\"SAFETY\"}]}"),
        "\"content\":\"\"},\"finish_reason\":\"content_filter\"",
        "resp: SAFETY -> content_filter with empty content");
    has(resp("{\"candidates\":[{\"content\":{\"parts\":[]},"
             "\"finishReason\":\"RECITATION\"}]}"),
        "\"finish_reason\":\"content_filter\"", "resp: RECITATION");
    has(resp("{\"candidates\":[{\"finishReason\":\"PROHIBITED_CONTENT\"}]}"),
        "\"finish_reason\":\"content_filter\"", "resp: PROHIBITED_CONTENT");
    has(resp("{\"candidates\":[{\"finishReason\":\"BLOCKLIST\"}]}"),
        "\"finish_reason\":\"content_filter\"", "resp: BLOCKLIST");
    has(resp("{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"x\"}]},"
             "\"finishReason\":\"OTHER\"}]}"),
        "\"finish_reason\":\"stop\"", "resp: OTHER -> stop");
    has(resp("{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"x\"}]}}]"
             "}"),
        "\"finish_reason\":\"stop\"", "resp: no finishReason -> stop");

    is(resp("{\"promptFeedback\":{\"blockReason\":\"SAFETY\"},"
            "\"usageMetadata\":{\"promptTokenCount\":6,"
            "\"totalTokenCount\":6},\"responseId\":\"R3\"}"),
       "{\"id\":\"chatcmpl-R3\",\"object\":\"chat.completion\","
       "\"created\":1700000000,\"model\":\"gpt-4o\",\"choices\":[{"
       "\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"\"},"
       "\"finish_reason\":\"content_filter\"}],\"usage\":{"
       "\"prompt_tokens\":6,\"completion_tokens\":0,\"total_tokens\":6}}",
       "resp: a blocked prompt -> content_filter, empty content");

    /* without a responseId the ids are made up, and the calls share one */
    out = resp("{\"candidates\":[{\"content\":{\"parts\":["
               "{\"functionCall\":{\"name\":\"a\",\"args\":{}}},"
               "{\"functionCall\":{\"name\":\"b\",\"args\":{}}}]}}]}");
    has(out, "\"id\":\"chatcmpl-1700000000", "resp: an id is generated");
    ok(count(out, "\"id\":\"call_1700000000") == 2
       && strstr(out, "_0\",\"type\"") && strstr(out, "_1\",\"type\""),
       "resp: tool call ids generated, numbered");

    xinit(&x, "m");
    ok(ngx_smartflow_xlate_resp_gemini_to_openai(&x, J("{\"candidates\":[]}"))
       == NULL && strstr(xerr(&x), "no candidates") != NULL,
       "resp: no candidates and no feedback is an error");

    xinit(&x, "m");
    ok(ngx_smartflow_xlate_resp_gemini_to_openai(&x, J("\"x\"")) == NULL
       && x.err.len,
       "resp: a body that is not an object is an error");

    xinit(&x, "m");
    ok(ngx_smartflow_xlate_resp_gemini_to_openai(&x, J(
           "{\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":"
           "{\"args\":{}}}]}}]}"))
       == NULL && strstr(xerr(&x), "no name") != NULL,
       "resp: a functionCall without a name is an error");
}


/* streams */

static const char  *s_text[] = {
    "{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hello\"}],"
    "\"role\":\"model\"},\"index\":0}],\"usageMetadata\":{"
    "\"promptTokenCount\":9,\"candidatesTokenCount\":1},"
    "\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"S1\"}",
    "{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"**\",\"thought\":"
    "true},{\"text\":\" wor\"}],\"role\":\"model\"},\"index\":0}],"
    "\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"S1\"}",
    "{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"ld\"}],"
    "\"role\":\"model\"},\"finishReason\":\"STOP\",\"index\":0}],"
    "\"usageMetadata\":{\"promptTokenCount\":9,\"candidatesTokenCount\":3,"
    "\"thoughtsTokenCount\":2,\"totalTokenCount\":14},"
    "\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"S1\"}",
    NULL
};


static const char  *s_tool[] = {
    "{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Checking.\"}],"
    "\"role\":\"model\"}}],\"responseId\":\"T1\"}",
    "{\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":"
    "\"get_weather\",\"args\":{\"location\":\"Paris\"}}},{\"functionCall\":"
    "{\"id\":\"fc-2\",\"name\":\"now\"}}],\"role\":\"model\"},"
    "\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{"
    "\"promptTokenCount\":20,\"candidatesTokenCount\":8},"
    "\"responseId\":\"T1\"}",
    NULL
};


static void
test_stream(void)
{
    char                          *out;
    ngx_smartflow_xlate_t          x;
    ngx_smartflow_xlate_stream_t   st;

    xinit(&x, "gpt-4o");
    memset(&st, 0, sizeof(st));
    st.include_usage = 1;

    out = stream(&x, &st, s_text, T_END_CLEAN);

    is(out,
       ROLE("S1", "gpt-4o")
       DELTA("S1", "gpt-4o", "{\"content\":\"Hello\"}")
       DELTA("S1", "gpt-4o", "{\"content\":\" wor\"}")
       DELTA("S1", "gpt-4o", "{\"content\":\"ld\"}")
       FINISH("S1", "gpt-4o", "stop")
       USAGE("S1", "gpt-4o", "9", "5", "14")
       DONE,
       "stream: text deltas, thoughts left out, finish, usage chunk, "
       "[DONE]");
    ok(valid_sse(out), "stream: text stream is well-formed SSE");
    ok(st.input_tokens == 9 && st.output_tokens == 5 && st.done
       && st.finished,
       "stream: usage kept in the state");

    is(stream1("gpt-4o", 0, s_text, T_END_CLEAN),
       ROLE("S1", "gpt-4o")
       DELTA("S1", "gpt-4o", "{\"content\":\"Hello\"}")
       DELTA("S1", "gpt-4o", "{\"content\":\" wor\"}")
       DELTA("S1", "gpt-4o", "{\"content\":\"ld\"}")
       FINISH("S1", "gpt-4o", "stop")
       DONE,
       "stream: no usage chunk unless the client asked");

    out = stream1("m", 1, s_tool, T_END_CLEAN);

    is(out,
       ROLE("T1", "m")
       DELTA("T1", "m", "{\"content\":\"Checking.\"}")
       DELTA("T1", "m", "{\"tool_calls\":[{\"index\":0,\"id\":\"call_T1_0\","
             "\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
             "\"arguments\":\"{\\\"location\\\":\\\"Paris\\\"}\"}}]}")
       DELTA("T1", "m", "{\"tool_calls\":[{\"index\":1,\"id\":\"fc-2\","
             "\"type\":\"function\",\"function\":{\"name\":\"now\","
             "\"arguments\":\"{}\"}}]}")
       FINISH("T1", "m", "tool_calls")
       USAGE("T1", "m", "20", "8", "28")
       DONE,
       "stream: whole function calls -> one tool_calls delta each, "
       "finish tool_calls");
    ok(valid_sse(out), "stream: tool stream is well-formed SSE");

    /* the connection drops mid-answer */
    {
        const char  *ev[] = { s_text[0], s_text[1], NULL };

        out = stream1("m", 1, ev, T_END_BROKEN);
        is(out,
           ROLE("S1", "m")
           DELTA("S1", "m", "{\"content\":\"Hello\"}")
           DELTA("S1", "m", "{\"content\":\" wor\"}")
           BROKEN,
           "stream: broken stream -> error chunk and [DONE], no finish");
        ok(valid_sse(out), "stream: broken stream is well-formed SSE");

        is(stream1("m", 1, ev, T_END_CLEAN),
           ROLE("S1", "m")
           DELTA("S1", "m", "{\"content\":\"Hello\"}")
           DELTA("S1", "m", "{\"content\":\" wor\"}")
           BROKEN,
           "stream: a clean end without a finish reason is broken too");
    }

    has(stream1("m", 1, s_text, T_END_BROKEN),
        FINISH("S1", "m", "stop") BROKEN,
        "stream: a break after the finish reason still says so");

    is(stream1("m", 1, &s_text[3], T_END_CLEAN), BROKEN,
       "stream: an empty stream -> error chunk");

    /* an error event mid-stream; nothing after it */
    {
        const char  *ev[] = {
            s_text[0],
            "{\"error\":{\"code\":429,\"message\":\"Resource \\\"exhausted"
            "\\\"\",\"status\":\"RESOURCE_EXHAUSTED\"}}",
            s_text[2],
            NULL
        };

        xinit(&x, "m");
        memset(&st, 0, sizeof(st));
        st.include_usage = 1;

        out = stream(&x, &st, ev, T_END_CLEAN);
        is(out,
           ROLE("S1", "m")
           DELTA("S1", "m", "{\"content\":\"Hello\"}")
           "data: {\"error\":{\"message\":\"Resource \\\"exhausted\\\"\","
           "\"type\":\"rate_limit_error\",\"param\":null,"
           "\"code\":\"rate_limit_exceeded\"}}\n\n" DONE,
           "stream: error event -> error chunk and [DONE], nothing after");
        ok(valid_sse(out) && st.done, "stream: error stream is well-formed");
    }

    {
        const char  *ev[] = {
            "{\"error\":{\"code\":500,\"status\":\"INTERNAL\"}}", NULL
        };

        is(stream1("m", 1, ev, T_END_BROKEN),
           "data: {\"error\":{\"message\":\"The provider reported an "
           "error.\",\"type\":\"api_error\",\"param\":null,\"code\":null}}"
           "\n\n" DONE,
           "stream: an error without a message, at the start");
    }

    {
        const char  *ev[] = {
            "{\"error\":{\"code\":503,\"message\":\"busy\","
            "\"status\":\"UNAVAILABLE\"}}", NULL
        };

        has(stream1("m", 1, ev, T_END_NONE),
            "\"type\":\"api_error\",\"param\":null,\"code\":\"overloaded\"",
            "stream: UNAVAILABLE -> overloaded");
    }

    /* a refused prompt */
    {
        const char  *ev[] = {
            "{\"promptFeedback\":{\"blockReason\":\"PROHIBITED_CONTENT\"},"
            "\"usageMetadata\":{\"promptTokenCount\":7,"
            "\"totalTokenCount\":7},\"responseId\":\"B1\"}",
            NULL
        };

        is(stream1("m", 1, ev, T_END_CLEAN),
           ROLE("B1", "m")
           FINISH("B1", "m", "content_filter")
           USAGE("B1", "m", "7", "0", "7")
           DONE,
           "stream: a blocked prompt -> content_filter");
    }

    /* a blocked answer, then usage alone, then text that must not show */
    {
        const char  *ev[] = {
            "{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"A\"}]}}],"
            "\"responseId\":\"F1\"}",
            "{\"candidates\":[{\"finishReason\":\"SAFETY\"}],"
            "\"responseId\":\"F1\"}",
            "{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"late\"}]}"
            "}],\"usageMetadata\":{\"promptTokenCount\":3,"
            "\"candidatesTokenCount\":1},\"responseId\":\"F1\"}",
            NULL
        };

        is(stream1("m", 1, ev, T_END_CLEAN),
           ROLE("F1", "m")
           DELTA("F1", "m", "{\"content\":\"A\"}")
           FINISH("F1", "m", "content_filter")
           USAGE("F1", "m", "3", "1", "4")
           DONE,
           "stream: SAFETY -> content_filter; after the finish only usage "
           "counts");
    }

    {
        const char  *ev[] = {
            "{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"ab\"}]},"
            "\"finishReason\":\"MAX_TOKENS\"}],\"usageMetadata\":{"
            "\"promptTokenCount\":4,\"candidatesTokenCount\":2}}",
            "{\"usageMetadata\":{\"candidatesTokenCount\":2}}",
            NULL
        };

        out = stream1("m", 1, ev, T_END_CLEAN);
        has(out, "\"delta\":{},\"finish_reason\":\"length\"}]}",
            "stream: MAX_TOKENS -> length");
        has(out, "\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2,",
            "stream: a partial usageMetadata does not lower the counts");
        has(out, "data: {\"id\":\"chatcmpl-1700000000",
            "stream: an id is generated without a responseId");
        ok(valid_sse(out), "stream: generated ids keep SSE well-formed");
    }

    {
        const char  *ev[] = { "[1,2]", "\"x\"", NULL };

        is(stream1("m", 1, ev, T_END_NONE), "",
           "stream: events that are not objects are skipped");
    }
}


/* provider strings are escaped in the client's chunks */

static void
test_escaping(void)
{
    char                  *out;
    ngx_smartflow_json_t  *j, *v;

    static char  raw[] = "say \"hi\"\n\tand \\ \x01 caf\xc3\xa9 </script>";

    const char  *ev[] = {
        "{\"candidates\":[{\"content\":{\"parts\":[{\"text\":"
        "\"say \\\"hi\\\"\\n\\tand \\\\ \\u0001 caf\xc3\xa9 </script>\"},"
        "{\"functionCall\":{\"name\":\"q\\\"n\",\"args\":{\"k\\n\":"
        "\"v\\\"\"}}}]},\"finishReason\":\"STOP\"}],"
        "\"responseId\":\"r\\\"1\"}",
        NULL
    };

    out = stream1("we\"ird\nmodel", 1, ev, T_END_CLEAN);

    ok(valid_sse(out), "escaping: still well-formed SSE");

    j = event_json(out, 1);
    v = ngx_smartflow_json_get(j, "choices");
    v = v ? ngx_smartflow_json_get(ngx_smartflow_json_get(v->child, "delta"),
                                   "content")
          : NULL;

    ok(v && v->str.len == sizeof(raw) - 1
       && memcmp(v->str.data, raw, v->str.len) == 0,
       "escaping: text decodes back to the provider's bytes");

    has(out, "\"id\":\"chatcmpl-r\\\"1\"", "escaping: id escaped");
    has(out, "\"model\":\"we\\\"ird\\nmodel\"", "escaping: model escaped");
    has(out, "\"id\":\"call_r\\\"1_0\",\"type\":\"function\",\"function\":"
        "{\"name\":\"q\\\"n\",\"arguments\":\"{\\\"k\\\\n\\\":"
        "\\\"v\\\\\\\"\\\"}\"}",
        "escaping: call id, name and arguments escaped");

    j = event_json(out, 2);
    v = ngx_smartflow_json_get(j, "choices");
    v = v ? ngx_smartflow_json_get(ngx_smartflow_json_get(v->child, "delta"),
                                   "tool_calls")
          : NULL;
    v = v ? ngx_smartflow_json_get(ngx_smartflow_json_get(v->child,
                                                          "function"),
                                   "arguments")
          : NULL;

    ok(v && v->str.len == sizeof("{\"k\\n\":\"v\\\"\"}") - 1
       && memcmp(v->str.data, "{\"k\\n\":\"v\\\"\"}", v->str.len) == 0,
       "escaping: arguments decode to the args' JSON");

    out = resp("{\"candidates\":[{\"content\":{\"parts\":[{\"text\":"
               "\"a\\\"b\\u0000c\"}]}}],\"responseId\":\"x\\\\y\"}");
    has(out, "\"id\":\"chatcmpl-x\\\\y\"", "escaping: whole answer id");
    has(out, "\"content\":\"a\\\"b\\u0000c\"",
        "escaping: whole answer text, NUL included");
}


int
main(void)
{
    test_req_basic();
    test_req_turns();
    test_req_tools();
    test_req_schema();
    test_req_errors();
    test_resp();
    test_stream();
    test_escaping();

    printf("1..%d\n", t_n);

    t_free_all();

    return t_failed ? 1 : 0;
}
