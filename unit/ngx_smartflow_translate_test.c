/*
 * Unit tests for the OpenAI <-> Anthropic translation: requests, whole
 * responses, error bodies and streams, checked on the dumped JSON and on
 * the exact SSE bytes.  Prints TAP.  Built outside nginx, over the nginx
 * core shims of ngx_smartflow_unit.h.
 *
 * Built and run by "make unit" (t/unit/001-translate.t runs it).
 */

#include "ngx_smartflow_unit.h"


/* one body through a translation: its dump, or the error that refused it */

static char *
req_to_an(const char *body)
{
    return unit_xlate(ngx_smartflow_xlate_req_openai_to_anthropic, "m", body);
}


static char *
req_to_an_err(const char *body)
{
    return unit_xlate_err(ngx_smartflow_xlate_req_openai_to_anthropic, "m",
                          body);
}


static char *
req_to_oa(const char *body)
{
    return unit_xlate(ngx_smartflow_xlate_req_anthropic_to_openai, "claude-x",
                      body);
}


static char *
req_to_oa_err(const char *body)
{
    return unit_xlate_err(ngx_smartflow_xlate_req_anthropic_to_openai,
                          "claude-x", body);
}


static char *
resp_to_oa(const char *body)
{
    return unit_xlate(ngx_smartflow_xlate_resp_anthropic_to_openai, "gpt-4o",
                      body);
}


static char *
resp_to_an(const char *body)
{
    return unit_xlate(ngx_smartflow_xlate_resp_openai_to_anthropic,
                      "claude-client", body);
}


/* a provider's error body (NULL: none) as either client gets it */

static char *
err_to_oa(ngx_uint_t status, const char *body)
{
    ngx_smartflow_xlate_t  x;

    xinit(&x, "m");

    return D(ngx_smartflow_xlate_error_to_openai(&x, status,
                                                 body ? J(body) : NULL));
}


static char *
err_to_an(ngx_uint_t status, const char *body)
{
    ngx_smartflow_xlate_t  x;

    xinit(&x, "m");

    return D(ngx_smartflow_xlate_error_to_anthropic(&x, status,
                                                    body ? J(body) : NULL));
}


/* streams */

typedef ngx_int_t (*test_stream_pt)(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, ngx_str_t *event,
    ngx_smartflow_json_t *data, ngx_array_t *out);

typedef struct {
    char        *event;
    char        *data;          /* NULL: OpenAI's [DONE] */
} test_event_t;


static char *
stream(test_stream_pt fn, unit_end_pt end, ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, test_event_t *ev, ngx_uint_t n,
    ngx_uint_t how)
{
    ngx_str_t    name;
    ngx_uint_t   i;
    ngx_array_t  out;

    if (ngx_array_init(&out, &unit_pool, 2, sizeof(ngx_str_t)) != NGX_OK) {
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

    return unit_stream_end(end, x, st, &out, how);
}


/* an Anthropic stream as an OpenAI client of "gpt-4o" gets it */
static char *
stream_to_oa(ngx_smartflow_xlate_stream_t *st, ngx_uint_t usage,
    test_event_t *ev, ngx_uint_t n, ngx_uint_t how)
{
    ngx_smartflow_xlate_t  x;

    xinit(&x, "gpt-4o");
    memset(st, 0, sizeof(ngx_smartflow_xlate_stream_t));
    st->include_usage = usage;

    return stream(ngx_smartflow_xlate_stream_anthropic_to_openai,
                  ngx_smartflow_xlate_stream_end_openai, &x, st, ev, n, how);
}


/* an OpenAI stream as an Anthropic client of "claude-client" gets it */
static char *
stream_to_an(ngx_smartflow_xlate_stream_t *st, test_event_t *ev,
    ngx_uint_t n, ngx_uint_t how)
{
    ngx_smartflow_xlate_t  x;

    xinit(&x, "claude-client");
    memset(st, 0, sizeof(ngx_smartflow_xlate_stream_t));

    return stream(ngx_smartflow_xlate_stream_openai_to_anthropic,
                  ngx_smartflow_xlate_stream_end_anthropic, &x, st, ev, n,
                  how);
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

        j = ngx_smartflow_json_parse(&unit_pool, (u_char *) json, end - json,
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
    is(req_to_an(
       "{\"model\":\"m\",\"max_tokens\":100,\"messages\":["
       "{\"role\":\"user\",\"content\":\"First\"},"
       "{\"role\":\"user\",\"content\":[{\"type\":\"text\","
       "\"text\":\"Look:\"},{\"type\":\"image_url\",\"image_url\":"
       "{\"url\":\"data:image/png;base64,iVBORw0KGgo=\"}},"
       "{\"type\":\"image_url\",\"image_url\":{\"url\":"
       "\"https://example.com/cat.jpg\",\"detail\":\"low\"}}]},"
       "{\"role\":\"assistant\",\"content\":\"A cat.\"},"
       "{\"role\":\"assistant\",\"content\":\"Anything else?\"},"
       "{\"role\":\"user\",\"content\":\"No\"}]}"),
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

    has(req_to_an_err(
        "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
        "\"image_url\",\"image_url\":{\"url\":\"ftp://x/y.png\"}}]}]}"),
        "image",
        "oa->an: an image URL that is neither http(s) nor data is refused");

    has(req_to_an(
        "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
        "\"file\",\"file\":{\"filename\":\"a.pdf\",\"file_data\":"
        "\"data:application/pdf;base64,JVBERi0=\"}},{\"type\":\"text\","
        "\"text\":\"Summarise\",\"cache_control\":{\"type\":"
        "\"ephemeral\"}}]}]}"),
        "\"content\":[{\"type\":\"document\",\"source\":{\"type\":"
        "\"base64\",\"media_type\":\"application/pdf\",\"data\":"
        "\"JVBERi0=\"}},{\"type\":\"text\",\"text\":\"Summarise\","
        "\"cache_control\":{\"type\":\"ephemeral\"}}]",
        "oa->an: inline PDF file -> document block, cache_control kept");
}


static void
test_req_openai_tools(void)
{
    char  *out;

    is(req_to_an(
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
       "\"tool_choice\":\"required\",\"parallel_tool_calls\":false}"),
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
    has(req_to_an(
        "{\"messages\":[{\"role\":\"user\",\"content\":\"go\"},"
        "{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"c\",\"type\":"
        "\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{}\"}}]},"
        "{\"role\":\"user\",\"content\":\"and hurry\"},"
        "{\"role\":\"tool\",\"tool_call_id\":\"c\",\"content\":\"done\"}]}"),
        "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\","
        "\"tool_use_id\":\"c\",\"content\":\"done\"},{\"type\":\"text\","
        "\"text\":\"and hurry\"}]}",
        "oa->an: tool results are placed before the turn's text");

    out = req_to_an(
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],"
        "\"tool_choice\":{\"type\":\"function\",\"function\":"
        "{\"name\":\"f\"}},\"max_completion_tokens\":50,\"max_tokens\":10,"
        "\"stop\":[\"a\",\"b\"]}");

    has(out, "\"tool_choice\":{\"type\":\"tool\",\"name\":\"f\"}",
        "oa->an: tool_choice function -> tool");
    has(out, "\"max_tokens\":50,", "oa->an: max_completion_tokens wins");
    has(out, "\"stop_sequences\":[\"a\",\"b\"]", "oa->an: stop array");

    has(req_to_an(
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
        "\"temperature\":1.4}"),
        "\"max_tokens\":4096,\"temperature\":1}",
        "oa->an: temperature above 1 clamped");

    has(req_to_an(
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
        "\"temperature\":1.0e0}"),
        "\"temperature\":1.0e0}", "oa->an: temperature 1 kept as sent");

    {
        /* the text is read without strtod unless it has an exponent */
        static char  *above[] = { "1.4", "2", "10", "1.0001", "9.5",
                                  "100", "1.5e0", "0.2E1", "1.000000001",
                                  "1.50000000000000000000000000000000000",
                                  "2.00000000000000000000000000000000000e0"
                                };
        static char  *kept[] = { "1", "1.0", "1.000", "0", "0.99", "0.2",
                                 "-5", "-1.5", "0.0", "1e0", "10e-1",
                                 "-2E3",
                                 "0.50000000000000000000000000000000000",
                                 "5.00000000000000000000000000000000000e-1"
                               };
        char         req[256], want[128], name[160];
        ngx_uint_t   i;

        for (i = 0; i < sizeof(above) / sizeof(above[0]); i++) {
            snprintf(req, sizeof(req), "{\"messages\":[{\"role\":\"user\","
                     "\"content\":\"x\"}],\"temperature\":%s}", above[i]);
            snprintf(name, sizeof(name), "oa->an: temperature %s clamped",
                     above[i]);
            has(req_to_an(req), "\"temperature\":1}", name);
        }

        for (i = 0; i < sizeof(kept) / sizeof(kept[0]); i++) {
            snprintf(req, sizeof(req), "{\"messages\":[{\"role\":\"user\","
                     "\"content\":\"x\"}],\"temperature\":%s}", kept[i]);
            snprintf(want, sizeof(want), "\"temperature\":%s}", kept[i]);
            snprintf(name, sizeof(name), "oa->an: temperature %s kept",
                     kept[i]);
            has(req_to_an(req), want, name);
        }
    }

    out = req_to_an(
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],"
        "\"tool_choice\":\"none\",\"parallel_tool_calls\":false}");

    has(out, "\"tool_choice\":{\"type\":\"none\"}",
        "oa->an: tool_choice none, without disable_parallel_tool_use");

    out = req_to_an(
        "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
        "\"tool_choice\":\"auto\"}");

    lacks(out, "tool_choice", "oa->an: tool_choice without tools dropped");
}


static void
test_req_openai_errors(void)
{
    has(req_to_an_err("{\"messages\":{}}"), "messages",
        "oa->an: messages not an array");

    has(req_to_an_err("{\"messages\":[{\"content\":\"hi\"}]}"), "role",
        "oa->an: a message without a role");

    refused(req_to_an_err("{\"messages\":[\"hi\"]}"),
            "oa->an: a message that is not an object");

    has(req_to_an_err("{\"messages\":[{\"role\":\"wizard\","
                      "\"content\":\"x\"}]}"),
        "role", "oa->an: an unknown role");

    has(req_to_an_err("{\"messages\":[{\"role\":\"tool\","
                      "\"content\":\"x\"}]}"),
        "tool_call_id", "oa->an: a tool message without tool_call_id");

    refused(req_to_an_err("{\"messages\":[{\"role\":\"system\","
                          "\"content\":\"x\"}]}"),
            "oa->an: only a system message");

    refused(req_to_an_err("[1]"), "oa->an: body not an object");

    refused(req_to_an_err("{\"messages\":[{\"role\":\"user\","
                          "\"content\":\"x\"}],\"tools\":[{\"type\":"
                          "\"function\",\"function\":{}}]}"),
            "oa->an: a tool without a name");

    refused(req_to_an_err("{\"messages\":[{\"role\":\"user\","
                          "\"content\":[{\"type\":\"input_audio\","
                          "\"input_audio\":{}}]}]}"),
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
       "\"max_completion_tokens\":512,\"temperature\":0.5,\"top_p\":0.8,"
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

    has(req_to_oa(
        "{\"model\":\"c\",\"system\":\"Sys\",\"max_tokens\":5,"
        "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},"
        "{\"role\":\"assistant\",\"content\":[{\"type\":\"thinking\","
        "\"thinking\":\"hmm\",\"signature\":\"s\"},{\"type\":\"tool_use\","
        "\"id\":\"t1\",\"name\":\"f\",\"input\":{}}]}],"
        "\"tools\":[{\"name\":\"f\",\"input_schema\":{\"type\":\"object\"}}],"
        "\"tool_choice\":{\"type\":\"tool\",\"name\":\"f\"},"
        "\"stream\":false}"),
        "{\"model\":\"c\",\"messages\":[{\"role\":\"system\",\"content\":"
        "\"Sys\"},{\"role\":\"user\",\"content\":\"hi\"},{\"role\":"
        "\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"t1\","
        "\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":"
        "\"{}\"}}]}],\"max_completion_tokens\":5,\"stream\":false,",
        "an->oa: system string, thinking dropped, content null with only "
        "tool calls, no stream_options when not streaming");

    has(req_to_oa(
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
        "\"tools\":[{\"name\":\"f\",\"input_schema\":{\"type\":\"object\"}}],"
        "\"tool_choice\":{\"type\":\"tool\",\"name\":\"f\"}}"),
        "\"tool_choice\":{\"type\":\"function\",\"function\":"
        "{\"name\":\"f\"}}",
        "an->oa: tool_choice tool -> function");

    refused(req_to_oa_err("{\"max_tokens\":5}"), "an->oa: no messages");

    has(req_to_oa_err("{\"messages\":[{\"role\":\"system\","
                      "\"content\":\"x\"}]}"),
        "role", "an->oa: a system role inside messages");

    refused(req_to_oa_err("{\"messages\":[{\"role\":\"user\"}]}"),
            "an->oa: a message without content");

    refused(req_to_oa_err("{\"messages\":[{\"role\":\"user\","
                          "\"content\":\"x\"}],\"tools\":[{\"type\":"
                          "\"web_search_20250305\",\"name\":"
                          "\"web_search\"}]}"),
            "an->oa: a server tool is refused");
}


/* whole responses */

static void
test_resp(void)
{
    char                  *out;
    ngx_smartflow_xlate_t  x;

    is(resp_to_oa(
       "{\"id\":\"msg_01ABC\",\"type\":\"message\",\"role\":\"assistant\","
       "\"model\":\"claude-3-5-sonnet\",\"content\":[{\"type\":\"text\","
       "\"text\":\"Hello\"},{\"type\":\"text\",\"text\":\" there\"}],"
       "\"stop_reason\":\"end_turn\",\"stop_sequence\":null,\"usage\":"
       "{\"input_tokens\":10,\"cache_creation_input_tokens\":2,"
       "\"cache_read_input_tokens\":5,\"output_tokens\":3}}"),
       "{\"id\":\"chatcmpl-msg_01ABC\",\"object\":\"chat.completion\","
       "\"created\":1700000000,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,"
       "\"message\":{\"role\":\"assistant\",\"content\":\"Hello there\"},"
       "\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":17,"
       "\"completion_tokens\":3,\"total_tokens\":20,"
       "\"prompt_tokens_details\":{\"cached_tokens\":5}}}",
       "resp an->oa: text blocks joined, model named by the client, usage "
       "with cache");

    is(resp_to_oa(
       "{\"id\":\"msg_2\",\"content\":[{\"type\":\"tool_use\",\"id\":"
       "\"toolu_9\",\"name\":\"get_weather\",\"input\":{\"location\":"
       "\"Paris\"}}],\"stop_reason\":\"tool_use\",\"usage\":"
       "{\"input_tokens\":5,\"output_tokens\":7}}"),
       "{\"id\":\"chatcmpl-msg_2\",\"object\":\"chat.completion\","
       "\"created\":1700000000,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,"
       "\"message\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":"
       "[{\"id\":\"toolu_9\",\"type\":\"function\",\"function\":{\"name\":"
       "\"get_weather\",\"arguments\":\"{\\\"location\\\":\\\"Paris\\\"}\"}}]},"
       "\"finish_reason\":\"tool_calls\"}],\"usage\":{\"prompt_tokens\":5,"
       "\"completion_tokens\":7,\"total_tokens\":12}}",
       "resp an->oa: tool_use only -> content null and tool_calls");

    has(resp_to_oa(
        "{\"id\":\"m\",\"content\":[{\"type\":\"text\",\"text\":\"a\"}],"
        "\"stop_reason\":\"max_tokens\"}"),
        "\"finish_reason\":\"length\"", "resp an->oa: max_tokens -> length");

    has(resp_to_oa(
        "{\"id\":\"m\",\"content\":[],\"stop_reason\":\"refusal\"}"),
        "\"content\":\"\"},\"finish_reason\":\"content_filter\"",
        "resp an->oa: refusal -> content_filter");

    has(resp_to_oa(
        "{\"id\":\"m\",\"content\":[{\"type\":\"text\",\"text\":\"a\"}],"
        "\"stop_reason\":\"stop_sequence\",\"stop_sequence\":\"END\"}"),
        "\"finish_reason\":\"stop\"", "resp an->oa: stop_sequence -> stop");

    is(resp_to_oa("[]"), "(null)", "resp an->oa: not an object");

    is(resp_to_an(
       "{\"id\":\"chatcmpl-XYZ\",\"object\":\"chat.completion\",\"created\":1,"
       "\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"message\":{\"role\":"
       "\"assistant\",\"content\":\"Hi!\",\"refusal\":null},\"logprobs\":null,"
       "\"finish_reason\":\"length\"}],\"usage\":{\"prompt_tokens\":12,"
       "\"completion_tokens\":4,\"total_tokens\":16,"
       "\"prompt_tokens_details\":{\"cached_tokens\":2}}}"),
       "{\"id\":\"msg_chatcmpl-XYZ\",\"type\":\"message\",\"role\":"
       "\"assistant\",\"model\":\"claude-client\",\"content\":[{\"type\":"
       "\"text\",\"text\":\"Hi!\"}],\"stop_reason\":\"max_tokens\","
       "\"stop_sequence\":null,\"usage\":{\"input_tokens\":10,"
       "\"cache_read_input_tokens\":2,\"output_tokens\":4}}",
       "resp oa->an: text, length -> max_tokens, cached tokens split out");

    is(resp_to_an(
       "{\"id\":\"c1\",\"choices\":[{\"index\":0,\"message\":{\"role\":"
       "\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"call_a\","
       "\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
       "\"arguments\":\"{\\\"location\\\":\\\"Paris\\\"}\"}}]},"
       "\"finish_reason\":\"tool_calls\"}],\"usage\":{\"prompt_tokens\":8,"
       "\"completion_tokens\":6,\"total_tokens\":14}}"),
       "{\"id\":\"msg_c1\",\"type\":\"message\",\"role\":\"assistant\","
       "\"model\":\"claude-client\",\"content\":[{\"type\":\"tool_use\","
       "\"id\":\"call_a\",\"name\":\"get_weather\",\"input\":{\"location\":"
       "\"Paris\"}}],\"stop_reason\":\"tool_use\",\"stop_sequence\":null,"
       "\"usage\":{\"input_tokens\":8,\"output_tokens\":6}}",
       "resp oa->an: tool_calls -> tool_use with parsed input");

    out = resp_to_an(
        "{\"id\":\"c\",\"choices\":[{\"message\":{\"content\":\"\","
        "\"refusal\":\"I can't help with that.\"},"
        "\"finish_reason\":\"content_filter\"}]}");
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
    is(err_to_oa(529,
       "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\","
       "\"message\":\"Overloaded\"}}"),
       "{\"error\":{\"message\":\"Overloaded\",\"type\":\"api_error\","
       "\"param\":null,\"code\":\"overloaded\"}}",
       "error an->oa: overloaded");

    is(err_to_oa(401,
       "{\"type\":\"error\",\"error\":{\"type\":\"authentication_error\","
       "\"message\":\"invalid x-api-key\"}}"),
       "{\"error\":{\"message\":\"invalid x-api-key\","
       "\"type\":\"invalid_request_error\",\"param\":null,"
       "\"code\":\"invalid_api_key\"}}",
       "error an->oa: authentication");

    is(err_to_oa(400,
       "{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\","
       "\"message\":\"max_tokens: Field required\"}}"),
       "{\"error\":{\"message\":\"max_tokens: Field required\","
       "\"type\":\"invalid_request_error\",\"param\":null,\"code\":null}}",
       "error an->oa: invalid request");

    is(err_to_oa(502, NULL),
       "{\"error\":{\"message\":\"The provider failed with HTTP status 502.\","
       "\"type\":\"api_error\",\"param\":null,\"code\":null}}",
       "error ->oa: no body");

    is(err_to_oa(429,
       "{\"error\":{\"message\":\"Rate limit reached\",\"type\":"
       "\"requests\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}"),
       "{\"error\":{\"message\":\"Rate limit reached\",\"type\":"
       "\"rate_limit_error\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}",
       "error oa->oa: rate limit, code kept");

    is(err_to_an(401,
       "{\"error\":{\"message\":\"Incorrect API key provided.\",\"type\":"
       "\"invalid_request_error\",\"param\":null,"
       "\"code\":\"invalid_api_key\"}}"),
       "{\"type\":\"error\",\"error\":{\"type\":\"authentication_error\","
       "\"message\":\"Incorrect API key provided.\"}}",
       "error oa->an: 401 invalid_request_error -> authentication_error");

    is(err_to_an(404,
       "{\"error\":{\"message\":\"The model does not exist\",\"type\":"
       "\"invalid_request_error\",\"code\":\"model_not_found\"}}"),
       "{\"type\":\"error\",\"error\":{\"type\":\"not_found_error\","
       "\"message\":\"The model does not exist\"}}",
       "error oa->an: 404");

    is(err_to_an(503,
       "{\"error\":{\"message\":\"The engine is currently overloaded\","
       "\"type\":\"server_error\",\"param\":null,\"code\":null}}"),
       "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\","
       "\"message\":\"The engine is currently overloaded\"}}",
       "error oa->an: 503 server_error -> overloaded_error");

    is(err_to_an(413, NULL),
       "{\"type\":\"error\",\"error\":{\"type\":\"request_too_large\","
       "\"message\":\"The provider failed with HTTP status 413.\"}}",
       "error ->an: 413 without a body");

    has(err_to_an(429,
        "{\"error\":{\"code\":429,\"message\":\"Resource has been "
        "exhausted\",\"status\":\"RESOURCE_EXHAUSTED\"}}"),
        "{\"type\":\"rate_limit_error\",\"message\":\"Resource has been "
        "exhausted\"}",
        "error gemini->an: RESOURCE_EXHAUSTED");

    has(err_to_an(500, "{\"error\":\"boom\"}"),
        "{\"type\":\"api_error\",\"message\":\"boom\"}",
        "error ->an: bare string error");

    has(err_to_an(418, "[1,2]"),
        "{\"type\":\"invalid_request_error\",\"message\":"
        "\"The provider failed with HTTP status 418.\"}",
        "error ->an: unknown 4xx, body not an object");
}


/* streams: Anthropic -> OpenAI */

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
    ngx_smartflow_xlate_stream_t   st;

    out = stream_to_oa(&st, 1, an_text_stream, 8, UNIT_END_CLEAN);

    is(out,
       ROLE("msg_01XY", "gpt-4o")
       DELTA("msg_01XY", "gpt-4o", "{\"content\":\"Hello\"}")
       DELTA("msg_01XY", "gpt-4o", "{\"content\":\" world\"}")
       FINISH("msg_01XY", "gpt-4o", "stop")
       USAGE("msg_01XY", "gpt-4o", "9", "2", "11")
       DONE,
       "stream an->oa: text, usage chunk when asked, [DONE]");
    ok(valid_sse(out, 0), "stream an->oa: text stream is well-formed SSE");
    ok(st.input_tokens == 9 && st.output_tokens == 2 && st.done,
       "stream an->oa: usage carried in the state");

    out = stream_to_oa(&st, 0, an_tool_stream, 14, UNIT_END_CLEAN);

    is(out,
       ROLE("msg_T", "gpt-4o")
       DELTA("msg_T", "gpt-4o", "{\"content\":\"Checking.\"}")
       DELTA("msg_T", "gpt-4o",
             "{\"tool_calls\":[{\"index\":0,\"id\":\"toolu_A\","
             "\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
             "\"arguments\":\"\"}}]}")
       DELTA("msg_T", "gpt-4o", "{\"tool_calls\":[{\"index\":0,\"function\":"
             "{\"arguments\":\"{\\\"location\\\": \\\"Pa\"}}]}")
       DELTA("msg_T", "gpt-4o", "{\"tool_calls\":[{\"index\":0,\"function\":"
             "{\"arguments\":\"ris\\\"}\"}}]}")
       DELTA("msg_T", "gpt-4o",
             "{\"tool_calls\":[{\"index\":1,\"id\":\"toolu_B\","
             "\"type\":\"function\",\"function\":{\"name\":\"get_time\","
             "\"arguments\":\"\"}}]}")
       DELTA("msg_T", "gpt-4o", "{\"tool_calls\":[{\"index\":1,\"function\":"
             "{\"arguments\":\"{}\"}}]}")
       FINISH("msg_T", "gpt-4o", "tool_calls")
       DONE,
       "stream an->oa: text then two tool calls with split arguments, "
       "no usage chunk unless asked");
    ok(valid_sse(out, 0), "stream an->oa: tool stream is well-formed SSE");
    ok(st.input_tokens == 24 && st.output_tokens == 30,
       "stream an->oa: cache reads counted as input");

    /* an error event mid-stream */
    {
        test_event_t  ev[] = {
            an_text_stream[0], an_text_stream[1], an_text_stream[3],
            { "error", "{\"type\":\"error\",\"error\":{\"type\":"
              "\"overloaded_error\",\"message\":\"Overloaded\"}}" },
            an_text_stream[7]
        };

        out = stream_to_oa(&st, 0, ev, 5, UNIT_END_CLEAN);
    }

    is(out,
       ROLE("msg_01XY", "gpt-4o")
       DELTA("msg_01XY", "gpt-4o", "{\"content\":\"Hello\"}")
       "data: {\"error\":{\"message\":\"Overloaded\",\"type\":\"api_error\","
       "\"param\":null,\"code\":\"overloaded\"}}\n\n"
       DONE,
       "stream an->oa: error event -> error chunk and [DONE], nothing after");

    /* the connection drops */
    out = stream_to_oa(&st, 0, an_tool_stream, 7, UNIT_END_BROKEN);

    has(out,
        "{\"arguments\":\"{\\\"location\\\": \\\"Pa\"}}]},"
        "\"finish_reason\":null}]}\n\n" BROKEN,
        "stream an->oa: broken stream ends with an error chunk and [DONE]");
    ok(valid_sse(out, 0), "stream an->oa: broken stream is well-formed SSE");
    lacks(out, "finish_reason\":\"", "stream an->oa: no finish on a break");

    /* a clean end without message_stop, after message_delta */
    out = stream_to_oa(&st, 0, an_text_stream, 7, UNIT_END_CLEAN);

    has(out, FINISH("msg_01XY", "gpt-4o", "stop") DONE,
        "stream an->oa: missing message_stop after the stop reason: "
        "finished");

    /* a clean end before any stop reason is a truncation */
    out = stream_to_oa(&st, 0, an_text_stream, 5, UNIT_END_CLEAN);

    has(out, "\"code\":\"upstream_stream_broken\"}}\n\n" DONE,
        "stream an->oa: clean end without a stop reason is an error");

    /* _end after done adds nothing */
    out = stream_to_oa(&st, 0, an_text_stream, 8, UNIT_END_BROKEN);

    ok(count(out, DONE) == 1 && strstr(out, "error") == NULL,
       "stream an->oa: end after message_stop adds nothing");

    /* nothing at all */
    out = stream_to_oa(&st, 0, NULL, 0, UNIT_END_CLEAN);

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
    ngx_smartflow_xlate_stream_t   st;

    out = stream_to_an(&st, oa_text_stream, 6, UNIT_END_CLEAN);

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

    out = stream_to_an(&st, oa_tool_stream, 8, UNIT_END_CLEAN);

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
    out = stream_to_an(&st, oa_text_stream, 4, UNIT_END_CLEAN);

    has(out, AN_STOP("0") AN_END("end_turn", "0", "0"),
        "stream oa->an: no [DONE], clean end -> message_stop");
    ok(valid_sse(out, 1), "stream oa->an: no [DONE] is well-formed SSE");

    /* the connection drops */
    out = stream_to_an(&st, oa_tool_stream, 3, UNIT_END_BROKEN);

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
    {
        test_event_t  ev[] = {
            oa_text_stream[0], oa_text_stream[1],
            { "", "{\"error\":{\"message\":\"Rate limit \\\"hit\\\"\","
                  "\"type\":\"requests\",\"code\":\"rate_limit_exceeded\"}}" },
            oa_text_stream[2], oa_text_stream[5]
        };

        out = stream_to_an(&st, ev, 5, UNIT_END_CLEAN);
    }

    is(out,
       AN_START("msg_chatcmpl-77")
       AN_TEXT_START("0")
       AN_TEXT("0", "Hello")
       AN_EV("error", ",\"error\":{\"type\":\"rate_limit_error\",\"message\":"
             "\"Rate limit \\\"hit\\\"\"}"),
       "stream oa->an: error chunk -> error event, nothing after");

    /* tool calls without ids and without indexes (lenient servers) */
    {
        test_event_t  ev[] = {
            { "", OA_CHUNK("{\"tool_calls\":[{\"function\":{\"name\":\"f\","
                           "\"arguments\":\"{\\\"a\\\":1}\"}}]}", "null") },
            { "", OA_CHUNK("{\"tool_calls\":[{\"id\":\"c2\",\"function\":"
                           "{\"name\":\"g\",\"arguments\":\"{}\"}}]}",
                           "\"tool_calls\"") },
            { "", NULL }
        };

        out = stream_to_an(&st, ev, 3, UNIT_END_CLEAN);
    }

    has(out,
        AN_TOOL_START("0", "toolu_smartflow_0", "f")
        AN_JSON("0", "{\\\"a\\\":1}")
        AN_STOP("0")
        AN_TOOL_START("1", "c2", "g"),
        "stream oa->an: missing id generated, a new id starts a new block");

    /* nothing at all */
    out = stream_to_an(&st, NULL, 0, UNIT_END_CLEAN);

    is(out,
       AN_EV("error", ",\"error\":{\"type\":\"api_error\",\"message\":"
             "\"The provider's stream ended before completion.\"}"),
       "stream oa->an: empty stream -> error event");
}


/* provider strings are escaped in the client's events */

static void
test_stream_escaping(void)
{
    char                          *out;
    ngx_smartflow_xlate_t          x;
    ngx_smartflow_json_t          *v;
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
                 an, 4, UNIT_END_CLEAN);

    ok(valid_sse(out, 0), "escaping an->oa: still well-formed SSE");

    /* the second chunk carries the text: parse it back */
    v = ngx_smartflow_json_get(event_json(out, 1), "choices");
    v = v ? ngx_smartflow_json_get(ngx_smartflow_json_get(v->child, "delta"),
                                   "content")
          : NULL;

    ok(v && v->str.len == sizeof(raw) - 1
       && memcmp(v->str.data, raw, v->str.len) == 0,
       "escaping an->oa: text decodes back to the provider's bytes");
    has(out, "\"id\":\"chatcmpl-msg_\\\"q\"", "escaping an->oa: id escaped");
    has(out, "\"model\":\"we\\\"ird\\nmodel\"",
        "escaping an->oa: model escaped");

    out = stream_to_an(&st, oa, 2, UNIT_END_CLEAN);

    ok(valid_sse(out, 1), "escaping oa->an: still well-formed SSE");
    has(out, "\"text\":\"say \\\"hi\\\"\\n\\tand \\\\ \\u0001 caf\xc3\xa9\"",
        "escaping oa->an: text escaped");
    has(out, "\"id\":\"msg_x\\\"y\"", "escaping oa->an: id escaped");
}


/* the many-parts costs: memory and work that grow with n, not n * n */

static ngx_uint_t  unit_first_calls;


static ngx_uint_t
unit_first(ngx_smartflow_json_t *part)
{
    unit_first_calls++;

    return ngx_smartflow_xlate_type_is(part, "tool_result");
}


static ngx_int_t
unit_parts(ngx_smartflow_xlate_t *x, void *data, ngx_smartflow_json_t *m,
    ngx_smartflow_xlate_role_e role, ngx_smartflow_json_t *parts)
{
    ngx_smartflow_json_t  *p;

    p = ngx_smartflow_xlate_add(x->pool, parts, NULL,
                                NGX_SMARTFLOW_JSON_OBJECT, NULL);
    if (p == NULL
        || ngx_smartflow_xlate_add_lit(x->pool, p, "type",
                                       role == NGX_SMARTFLOW_XLATE_TOOL
                                       ? "tool_result" : "text")
           == NULL)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
test_many_parts(void)
{
    char                         *body, *b;
    size_t                        before, size;
    ngx_str_t                     text, system;
    ngx_uint_t                    i, n, order;
    ngx_smartflow_json_t         *turns, *t, *p;
    ngx_smartflow_xlate_t         x;
    ngx_smartflow_xlate_turns_t   tt;

    n = 5000;

    /* a system message of n text parts: one buffer that doubles */

    size = n * 4 + 64;
    body = malloc(size);
    if (body == NULL) {
        abort();
    }

    b = body + sprintf(body, "[");

    for (i = 0; i < n; i++) {
        b += sprintf(b, "%s\"a\"", i ? "," : "");
    }

    sprintf(b, "]");

    p = J(body);
    before = unit_allocated;

    ok(ngx_smartflow_xlate_text_of(&unit_pool, p, "", &text) == NGX_OK
       && text.len == n,
       "many parts: 5000 text parts joined");
    ok(unit_allocated - before < 64 * 1024,
       "many parts: joining 5000 parts takes memory in proportion to the "
       "text");

    free(body);

    /* a user turn, then a text and n tool results merged into one turn */

    size = n * 64 + 256;
    body = malloc(size);
    if (body == NULL) {
        abort();
    }

    b = body + sprintf(body, "{\"messages\":[{\"role\":\"system\","
                             "\"content\":\"s1\"},"
                             "{\"role\":\"user\",\"content\":\"hi\"},"
                             "{\"role\":\"assistant\",\"content\":\"c\"},"
                             "{\"role\":\"user\",\"content\":\"u\"}");

    for (i = 0; i < n; i++) {
        b += sprintf(b, ",{\"role\":\"tool\",\"tool_call_id\":\"c%d\","
                        "\"content\":\"r\"}", (int) i);
    }

    sprintf(b, ",{\"role\":\"system\",\"content\":\"s2\"}]}");

    xinit(&x, "m");

    tt.parts = unit_parts;
    tt.first = unit_first;
    tt.parts_key = "content";
    tt.assistant = "assistant";
    tt.data = NULL;

    unit_first_calls = 0;

    turns = ngx_smartflow_xlate_turns(&x, J(body), &tt, &system);

    ok(turns != NULL && turns->nchild == 3,
       "many parts: 5000 tool results merge into the last user turn");
    ok(unit_first_calls < 4 * n,
       "many parts: merging 5000 tool results looks at each part a few "
       "times, not at the whole turn each time");

    t = (turns && turns->last)
        ? ngx_smartflow_json_get(turns->last, "content") : NULL;

    /* the results first, in their order, then the user's text */
    order = (t != NULL && t->nchild == n + 1);

    for (i = 0, p = t ? t->child : NULL; order && p; p = p->next, i++) {
        order = (i < n) ? unit_first(p) : !unit_first(p);
    }

    ok(order && t->last && !unit_first(t->last),
       "many parts: the tool results go first, the text last");
    ok(system.len == 6 && memcmp(system.data, "s1\n\ns2", 6) == 0,
       "many parts: the system messages joined");

    free(body);
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
    test_many_parts();

    return unit_done();
}
