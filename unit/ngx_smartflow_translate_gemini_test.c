/*
 * Unit tests for the OpenAI <-> Gemini translation: requests, whole
 * responses and alt=sse streams, checked on the dumped JSON and on the
 * exact SSE bytes.  Prints TAP.  Built outside nginx with ASan and UBSan,
 * over the nginx core shims of ngx_smartflow_unit.h.
 */

#include "ngx_smartflow_unit.h"


/* one body through a translation: its dump, or the error that refused it */

static char *
req(const char *body)
{
    return unit_xlate(ngx_smartflow_xlate_req_openai_to_gemini, "gemini-client",
                      body);
}


static char *
req_err(const char *body)
{
    return unit_xlate_err(ngx_smartflow_xlate_req_openai_to_gemini,
                          "gemini-client", body);
}


static char *
resp(const char *body)
{
    return unit_xlate(ngx_smartflow_xlate_resp_gemini_to_openai, "gpt-4o",
                      body);
}


static char *
resp_err(const char *body)
{
    return unit_xlate_err(ngx_smartflow_xlate_resp_gemini_to_openai, "gpt-4o",
                          body);
}


/* streams: the events' data (NULL ends the list), then the end call */

static char *
stream(ngx_smartflow_xlate_t *x, ngx_smartflow_xlate_stream_t *st,
    const char **ev, ngx_uint_t how)
{
    ngx_str_t     name;
    ngx_uint_t    i;
    ngx_array_t   out;

    if (ngx_array_init(&out, &unit_pool, 2, sizeof(ngx_str_t)) != NGX_OK) {
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

    return unit_stream_end(ngx_smartflow_xlate_stream_end_gemini_openai, x,
                           st, &out, how);
}


/* a stream as a client of model gets it, the state left in st */
static char *
stream_in(ngx_smartflow_xlate_stream_t *st, const char *model,
    ngx_uint_t usage, const char **ev, ngx_uint_t how)
{
    ngx_smartflow_xlate_t  x;

    xinit(&x, (char *) model);
    memset(st, 0, sizeof(ngx_smartflow_xlate_stream_t));
    st->include_usage = usage;

    return stream(&x, st, ev, how);
}


static char *
stream1(const char *model, ngx_uint_t usage, const char **ev,
    ngx_uint_t how)
{
    ngx_smartflow_xlate_stream_t  st;

    return stream_in(&st, model, usage, ev, how);
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

        if (ngx_smartflow_json_parse(&unit_pool, (u_char *) json, end - json,
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

    has(req_err("{\"messages\":[{\"role\":\"user\",\"content\":"
                "\"x\"}],\"tools\":[{\"type\":\"function\","
                "\"function\":{\"name\":\"f\",\"parameters\":{"
                "\"type\":\"object\",\"properties\":{\"a\":"
                "{\"$ref\":\"#/$defs/Nope\"}}}}}]}"),
        "$ref", "req: a $ref to nothing is refused");

    has(req_err("{\"messages\":[{\"role\":\"user\",\"content\":"
                "\"x\"}],\"tools\":[{\"type\":\"function\","
                "\"function\":{\"name\":\"f\",\"parameters\":{"
                "\"type\":\"object\",\"properties\":{\"child\":"
                "{\"$ref\":\"#\"}}}}}]}"),
        "too deeply",
        "req: a recursive schema is refused, not expanded forever");

    /* each level refers four times to the next: 4^12 nodes unbounded */
    has(req_err("{\"messages\":[{\"role\":\"user\",\"content\":"
                "\"x\"}],\"tools\":[{\"type\":\"function\","
                "\"function\":{\"name\":\"f\",\"parameters\":{"
                "\"$ref\":\"#/$defs/L0\",\"$defs\":{"
                LEVEL("L0", "L1") LEVEL("L1", "L2") LEVEL("L2", "L3")
                LEVEL("L3", "L4") LEVEL("L4", "L5") LEVEL("L5", "L6")
                LEVEL("L6", "L7") LEVEL("L7", "L8") LEVEL("L8", "L9")
                LEVEL("L9", "L10") LEVEL("L10", "L11")
                "\"L11\":{\"type\":\"string\"}}}}}]}"),
        "expand too far",
        "req: $refs that multiply are stopped by the node budget");
}


static void
test_req_errors(void)
{
    has(req_err("[1]"), "JSON object",
        "req: a body that is not an object is refused");

    is(req_err("{\"model\":\"m\"}"), "'messages' must be an array",
       "req: no messages");
    has(req_err("{\"messages\":[{\"role\":\"function\","
                "\"content\":\"x\"}]}"),
        "role must be", "req: an unknown role is refused");
    has(req_err("{\"messages\":[{\"content\":\"x\"}]}"),
        "'role'", "req: a message without a role is refused");
    has(req_err("{\"messages\":[{\"role\":\"system\","
                "\"content\":\"x\"}]}"),
        "no user or assistant", "req: a system message alone is refused");
    has(req_err("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"},"
                "{\"role\":\"tool\",\"tool_call_id\":\"c9\","
                "\"content\":\"r\"}]}"),
        "matches no earlier tool call",
        "req: a result for an unknown call is refused");
    has(req_err("{\"messages\":[{\"role\":\"tool\","
                "\"content\":\"r\"}]}"),
        "tool_call_id", "req: a result without tool_call_id is refused");
    has(req_err("{\"messages\":[{\"role\":\"user\",\"content\":[{"
                "\"type\":\"image_url\",\"image_url\":{\"url\":"
                "\"ftp://x/y.png\"}}]}]}"),
        "image", "req: an image that is neither http(s) nor data is refused");
    has(req_err("{\"messages\":[{\"role\":\"user\",\"content\":[{"
                "\"type\":\"image_url\",\"image_url\":{\"url\":"
                "\"data:image/png,rawbytes\"}}]}]}"),
        "image", "req: a data URL that is not base64 is refused");
    has(req_err("{\"messages\":[{\"role\":\"user\",\"content\":[{"
                "\"type\":\"file\",\"file\":{\"file_id\":\"f-1\"}}]}]}"),
        "inline files", "req: a file by id is refused");
    has(req_err("{\"messages\":[{\"role\":\"user\",\"content\":[{"
                "\"type\":\"video\"}]}]}"),
        "not supported", "req: an unknown part type is refused");
    has(req_err("{\"messages\":[{\"role\":\"user\",\"content\":7}]}"),
        "string or an array", "req: a content that is a number is refused");
    has(req_err("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                "\"n\":2}"),
        "'n' must be 1", "req: n > 1 is refused");
    has(req_err("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                "\"tools\":[{\"type\":\"web_search\"}]}"),
        "only function tools", "req: a non-function tool is refused");
    has(req_err("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                "\"tools\":[{\"type\":\"function\",\"function\":"
                "{\"name\":\"f\"}}],\"tool_choice\":\"sometimes\"}"),
        "tool_choice", "req: an unknown tool_choice is refused");
    has(req_err("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                "\"response_format\":{\"type\":\"yaml\"}}"),
        "response_format", "req: an unknown response_format is refused");
    has(req_err("{\"messages\":[{\"role\":\"assistant\","
                "\"tool_calls\":[{\"id\":\"c\",\"function\":{}}]}]}"),
        "function name", "req: a tool call without a name is refused");
}


/* whole responses */

static void
test_resp(void)
{
    char  *out;

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

    has(resp_err("{\"candidates\":[]}"), "no candidates",
        "resp: no candidates and no feedback is an error");

    has(resp_err("\"x\""), "not a JSON object",
        "resp: a body that is not an object is an error");

    has(resp_err("{\"candidates\":[{\"content\":{\"parts\":["
                 "{\"functionCall\":{\"args\":{}}}]}}]}"),
        "no name", "resp: a functionCall without a name is an error");
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
    ngx_smartflow_xlate_stream_t   st;

    out = stream_in(&st, "gpt-4o", 1, s_text, UNIT_END_CLEAN);

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

    is(stream1("gpt-4o", 0, s_text, UNIT_END_CLEAN),
       ROLE("S1", "gpt-4o")
       DELTA("S1", "gpt-4o", "{\"content\":\"Hello\"}")
       DELTA("S1", "gpt-4o", "{\"content\":\" wor\"}")
       DELTA("S1", "gpt-4o", "{\"content\":\"ld\"}")
       FINISH("S1", "gpt-4o", "stop")
       DONE,
       "stream: no usage chunk unless the client asked");

    out = stream1("m", 1, s_tool, UNIT_END_CLEAN);

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

        out = stream1("m", 1, ev, UNIT_END_BROKEN);
        is(out,
           ROLE("S1", "m")
           DELTA("S1", "m", "{\"content\":\"Hello\"}")
           DELTA("S1", "m", "{\"content\":\" wor\"}")
           BROKEN,
           "stream: broken stream -> error chunk and [DONE], no finish");
        ok(valid_sse(out), "stream: broken stream is well-formed SSE");

        is(stream1("m", 1, ev, UNIT_END_CLEAN),
           ROLE("S1", "m")
           DELTA("S1", "m", "{\"content\":\"Hello\"}")
           DELTA("S1", "m", "{\"content\":\" wor\"}")
           BROKEN,
           "stream: a clean end without a finish reason is broken too");
    }

    has(stream1("m", 1, s_text, UNIT_END_BROKEN),
        FINISH("S1", "m", "stop") BROKEN,
        "stream: a break after the finish reason still says so");

    is(stream1("m", 1, &s_text[3], UNIT_END_CLEAN), BROKEN,
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

        out = stream_in(&st, "m", 1, ev, UNIT_END_CLEAN);
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

        is(stream1("m", 1, ev, UNIT_END_BROKEN),
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

        has(stream1("m", 1, ev, UNIT_END_NONE),
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

        is(stream1("m", 1, ev, UNIT_END_CLEAN),
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

        is(stream1("m", 1, ev, UNIT_END_CLEAN),
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

        out = stream1("m", 1, ev, UNIT_END_CLEAN);
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

        is(stream1("m", 1, ev, UNIT_END_NONE), "",
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

    out = stream1("we\"ird\nmodel", 1, ev, UNIT_END_CLEAN);

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

    return unit_done();
}
