/*
 * Translation between OpenAI Chat Completions and Anthropic Messages:
 * requests both ways, whole responses both ways, a provider's error body
 * into either client format, and streamed responses one event at a time.
 * New trees are built in x->pool and never link the nodes of their input
 * (the pipeline, the cache and the audit log still read the client's
 * tree); only string bytes are shared.  Stream events are written sized
 * first into one buffer each, every provider string escaped.
 */

#include "ngx_http_smartflow_translate.h"


#define NGX_SF_DEFAULT_MAX_TOKENS  "4096"


/* error type names as Anthropic, OpenAI and Gemini (its status) send them */
static ngx_smartflow_xlate_error_name_t  ngx_sf_error_names[] = {
    { "invalid_request_error", NGX_SMARTFLOW_XLATE_ERR_INVALID },
    { "authentication_error", NGX_SMARTFLOW_XLATE_ERR_AUTH },
    { "permission_error", NGX_SMARTFLOW_XLATE_ERR_PERMISSION },
    { "not_found_error", NGX_SMARTFLOW_XLATE_ERR_NOT_FOUND },
    { "request_too_large", NGX_SMARTFLOW_XLATE_ERR_TOO_LARGE },
    { "rate_limit_error", NGX_SMARTFLOW_XLATE_ERR_RATE_LIMIT },
    { "api_error", NGX_SMARTFLOW_XLATE_ERR_API },
    { "overloaded_error", NGX_SMARTFLOW_XLATE_ERR_OVERLOADED },
    { "server_error", NGX_SMARTFLOW_XLATE_ERR_API },
    { "requests", NGX_SMARTFLOW_XLATE_ERR_RATE_LIMIT },
    { "tokens", NGX_SMARTFLOW_XLATE_ERR_RATE_LIMIT },
    { "insufficient_quota", NGX_SMARTFLOW_XLATE_ERR_RATE_LIMIT },
    { "INVALID_ARGUMENT", NGX_SMARTFLOW_XLATE_ERR_INVALID },
    { "FAILED_PRECONDITION", NGX_SMARTFLOW_XLATE_ERR_INVALID },
    { "UNAUTHENTICATED", NGX_SMARTFLOW_XLATE_ERR_AUTH },
    { "PERMISSION_DENIED", NGX_SMARTFLOW_XLATE_ERR_PERMISSION },
    { "NOT_FOUND", NGX_SMARTFLOW_XLATE_ERR_NOT_FOUND },
    { "RESOURCE_EXHAUSTED", NGX_SMARTFLOW_XLATE_ERR_RATE_LIMIT },
    { "INTERNAL", NGX_SMARTFLOW_XLATE_ERR_API },
    { "UNAVAILABLE", NGX_SMARTFLOW_XLATE_ERR_OVERLOADED },
    { "DEADLINE_EXCEEDED", NGX_SMARTFLOW_XLATE_ERR_API },
    { NULL, NGX_SMARTFLOW_XLATE_ERR_NONE }
};


/* tree helpers */

static ngx_smartflow_json_t *
ngx_sf_add_copy(ngx_pool_t *pool, ngx_smartflow_json_t *parent, char *key,
    ngx_smartflow_json_t *src)
{
    ngx_smartflow_json_t  *j;

    j = ngx_smartflow_xlate_copy(pool, src, NULL);
    if (j == NULL) {
        return NULL;
    }

    ngx_smartflow_json_append(parent, key, j);

    return j;
}


/* a tool's JSON schema; a tool without one takes an empty object */
static ngx_int_t
ngx_sf_add_schema(ngx_pool_t *pool, ngx_smartflow_json_t *parent, char *key,
    ngx_smartflow_json_t *schema)
{
    ngx_smartflow_json_t  *s;

    if (schema && schema->type == NGX_SMARTFLOW_JSON_OBJECT) {
        return ngx_sf_add_copy(pool, parent, key, schema) ? NGX_OK
                                                          : NGX_ERROR;
    }

    s = ngx_smartflow_xlate_add(pool, parent, key, NGX_SMARTFLOW_JSON_OBJECT,
                                NULL);
    if (s == NULL
        || ngx_smartflow_xlate_add_lit(pool, s, "type", "object") == NULL
        || ngx_smartflow_xlate_add(pool, s, "properties",
                                   NGX_SMARTFLOW_JSON_OBJECT, NULL)
           == NULL)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * A JSON number's text greater than 1 (numbers keep their client text):
 * read from the text, which as JSON has no leading zero, unless it has an
 * exponent
 */
static ngx_uint_t
ngx_sf_above_one(ngx_pool_t *pool, ngx_str_t *num)
{
    u_char  *p, *end, *d;
    u_char   buf[32];

    if (num->len == 0) {
        return 0;
    }

    p = num->data;
    end = p + num->len;

    if (ngx_strlchr(p, end, 'e') || ngx_strlchr(p, end, 'E')) {
        d = buf;

        if (num->len >= sizeof(buf)) {
            d = ngx_pnalloc(pool, num->len + 1);
            if (d == NULL) {
                return 0;
            }
        }

        ngx_memcpy(d, num->data, num->len);
        d[num->len] = '\0';

        return strtod((char *) d, NULL) > 1.0;
    }

    if (*p == '-' || *p == '0') {
        return 0;
    }

    if (*p != '1' || (p + 1 < end && p[1] != '.')) {
        /* 2 to 9, or two digits or more before the point */
        return 1;
    }

    /* 1, or 1 and a fraction */

    for (p += 2; p < end; p++) {
        if (*p != '0') {
            return 1;
        }
    }

    return 0;
}


static ngx_int_t
ngx_sf_make_data_url(ngx_pool_t *pool, ngx_str_t *media, ngx_str_t *data,
    ngx_str_t *out)
{
    u_char  *p;

    p = ngx_pnalloc(pool, sizeof("data:;base64,") - 1 + media->len
                          + data->len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    out->data = p;
    p = ngx_sf_cpymem(p, "data:");
    p = ngx_cpymem(p, media->data, media->len);
    p = ngx_sf_cpymem(p, ";base64,");

    if (data->len) {
        p = ngx_cpymem(p, data->data, data->len);
    }

    out->len = p - out->data;

    return NGX_OK;
}


static char *
ngx_sf_finish_to_openai(ngx_str_t *reason)
{
    if (ngx_smartflow_xlate_eq(reason, "max_tokens")
        || ngx_smartflow_xlate_eq(reason, "model_context_window_exceeded"))
    {
        return "length";
    }

    if (ngx_smartflow_xlate_eq(reason, "tool_use")) {
        return "tool_calls";
    }

    if (ngx_smartflow_xlate_eq(reason, "refusal")) {
        return "content_filter";
    }

    /* end_turn, stop_sequence, pause_turn */
    return "stop";
}


static char *
ngx_sf_finish_to_anthropic(ngx_str_t *reason)
{
    if (ngx_smartflow_xlate_eq(reason, "length")) {
        return "max_tokens";
    }

    if (ngx_smartflow_xlate_eq(reason, "tool_calls")
        || ngx_smartflow_xlate_eq(reason, "function_call"))
    {
        return "tool_use";
    }

    if (ngx_smartflow_xlate_eq(reason, "content_filter")) {
        return "refusal";
    }

    return "end_turn";
}


/* tool calls: OpenAI's tool_calls[] entry <-> Anthropic's tool_use block */

static ngx_int_t
ngx_sf_to_an_tool_use(ngx_smartflow_xlate_t *x, ngx_smartflow_json_t *tc,
    ngx_smartflow_json_t *blocks)
{
    ngx_smartflow_json_t  *fn, *id, *name, *input, *b;

    fn = ngx_smartflow_json_get(tc, "function");
    id = ngx_smartflow_json_get(tc, "id");
    name = ngx_smartflow_json_get(fn, "name");

    if (!ngx_smartflow_json_is_string(id)
        || !ngx_smartflow_json_is_string(name))
    {
        return ngx_smartflow_xlate_fail(x, "each tool call needs an id and a "
                                           "function name");
    }

    b = ngx_smartflow_xlate_add(x->pool, blocks, NULL,
                                NGX_SMARTFLOW_JSON_OBJECT, NULL);
    if (b == NULL
        || ngx_smartflow_xlate_add_lit(x->pool, b, "type", "tool_use") == NULL
        || ngx_smartflow_xlate_add_str(x->pool, b, "id", id) == NULL
        || ngx_smartflow_xlate_add_str(x->pool, b, "name", name) == NULL)
    {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    input = ngx_smartflow_xlate_call_input(x, fn);
    if (input == NULL) {
        return NGX_ERROR;
    }

    ngx_smartflow_json_append(b, "input", input);

    return NGX_OK;
}


static ngx_int_t
ngx_sf_to_oa_tool_call(ngx_smartflow_xlate_t *x, ngx_smartflow_json_t *b,
    ngx_smartflow_json_t *calls)
{
    ngx_str_t              args;
    ngx_smartflow_json_t  *id, *name, *input;

    id = ngx_smartflow_json_get(b, "id");
    name = ngx_smartflow_json_get(b, "name");

    if (!ngx_smartflow_json_is_string(id)
        || !ngx_smartflow_json_is_string(name))
    {
        return ngx_smartflow_xlate_fail(x, "each tool_use block needs an id "
                                           "and a name");
    }

    input = ngx_smartflow_json_get(b, "input");

    if (input == NULL) {
        ngx_str_set(&args, "{}");

    } else if (ngx_smartflow_json_dump(x->pool, input, &args) != NGX_OK) {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    return ngx_smartflow_xlate_add_call(x, calls, &id->str, &name->str,
                                        &args);
}


/* requests: OpenAI -> Anthropic */

static ngx_int_t
ngx_sf_to_an_text(ngx_smartflow_xlate_t *x, ngx_smartflow_json_t *blocks,
    ngx_str_t *text, u_char *plain, ngx_smartflow_json_t *cache)
{
    ngx_smartflow_json_t  *b;

    /* Anthropic refuses empty text blocks */
    if (text->len == 0) {
        return NGX_OK;
    }

    b = ngx_smartflow_xlate_add(x->pool, blocks, NULL,
                                NGX_SMARTFLOW_JSON_OBJECT, NULL);
    if (b == NULL
        || ngx_smartflow_xlate_add_lit(x->pool, b, "type", "text") == NULL
        || ngx_smartflow_xlate_add_text(x->pool, b, "text", text, plain)
           == NULL
        || (cache && ngx_sf_add_copy(x->pool, b, "cache_control", cache)
                     == NULL))
    {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    return NGX_OK;
}


static ngx_int_t
ngx_sf_to_an_source(ngx_smartflow_xlate_t *x, ngx_smartflow_json_t *blocks,
    char *type, ngx_str_t *url)
{
    ngx_str_t              media, data;
    ngx_uint_t             inline_data;
    ngx_smartflow_json_t  *b, *src;

    inline_data = (ngx_smartflow_xlate_data_url(url, &media, &data) == NGX_OK);

    if (!inline_data && !ngx_smartflow_xlate_http_url(url)) {
        return ngx_smartflow_xlate_fail(x, "an image must be an http(s) URL or "
                                           "a base64 data URL");
    }

    b = ngx_smartflow_xlate_add(x->pool, blocks, NULL,
                                NGX_SMARTFLOW_JSON_OBJECT, NULL);
    if (b == NULL
        || ngx_smartflow_xlate_add_lit(x->pool, b, "type", type) == NULL)
    {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    src = ngx_smartflow_xlate_add(x->pool, b, "source",
                                  NGX_SMARTFLOW_JSON_OBJECT, NULL);
    if (src == NULL) {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    if (inline_data) {
        if (ngx_smartflow_xlate_add_lit(x->pool, src, "type", "base64") == NULL
            || ngx_smartflow_xlate_add(x->pool, src, "media_type",
                                       NGX_SMARTFLOW_JSON_STRING, &media)
               == NULL
            || ngx_smartflow_xlate_add(x->pool, src, "data",
                                       NGX_SMARTFLOW_JSON_STRING, &data)
               == NULL)
        {
            return ngx_smartflow_xlate_fail(x, "out of memory");
        }

        return NGX_OK;
    }

    if (ngx_smartflow_xlate_add_lit(x->pool, src, "type", "url") == NULL
        || ngx_smartflow_xlate_add(x->pool, src, "url",
                                   NGX_SMARTFLOW_JSON_STRING, url)
           == NULL)
    {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    return NGX_OK;
}


/* an OpenAI message content (string or parts) -> Anthropic blocks */
static ngx_int_t
ngx_sf_to_an_parts(ngx_smartflow_xlate_t *x, ngx_smartflow_json_t *content,
    ngx_smartflow_json_t *blocks)
{
    ngx_smartflow_json_t  *p, *v, *url;

    if (!ngx_smartflow_xlate_present(content)) {
        return NGX_OK;
    }

    if (content->type == NGX_SMARTFLOW_JSON_STRING) {
        return ngx_sf_to_an_text(x, blocks, &content->str,
                                 content->str_plain, NULL);
    }

    if (content->type != NGX_SMARTFLOW_JSON_ARRAY) {
        return ngx_smartflow_xlate_fail(x, "a message content must be a string "
                                           "or an array of parts");
    }

    for (p = content->child; p; p = p->next) {

        if (ngx_smartflow_xlate_type_is(p, "text")
            || ngx_smartflow_xlate_type_is(p, "refusal"))
        {
            v = ngx_smartflow_json_get(p, ngx_smartflow_xlate_type_is(p, "text")
                                          ? "text" : "refusal");
            if (!ngx_smartflow_json_is_string(v)) {
                return ngx_smartflow_xlate_fail(x, "a text part needs a string "
                                                   "'text'");
            }

            if (ngx_sf_to_an_text(x, blocks, &v->str, v->str_plain,
                                  ngx_smartflow_json_get(p, "cache_control"))
                != NGX_OK)
            {
                return NGX_ERROR;
            }

            continue;
        }

        if (ngx_smartflow_xlate_type_is(p, "image_url")) {
            v = ngx_smartflow_json_get(p, "image_url");
            url = ngx_smartflow_json_is_string(v)
                  ? v : ngx_smartflow_json_get(v, "url");

            if (!ngx_smartflow_json_is_string(url)) {
                return ngx_smartflow_xlate_fail(x, "an image_url part needs a "
                                                   "'url'");
            }

            if (ngx_sf_to_an_source(x, blocks, "image", &url->str)
                != NGX_OK)
            {
                return NGX_ERROR;
            }

            continue;
        }

        if (ngx_smartflow_xlate_type_is(p, "file")) {
            v = ngx_smartflow_json_get(ngx_smartflow_json_get(p, "file"),
                                       "file_data");

            if (!ngx_smartflow_json_is_string(v)
                || v->str.len < 5
                || ngx_memcmp(v->str.data, "data:", 5) != 0)
            {
                return ngx_smartflow_xlate_fail(x, "only inline files (a "
                                                   "base64 'file_data') can be "
                                                   "sent to this provider");
            }

            if (ngx_sf_to_an_source(x, blocks, "document", &v->str)
                != NGX_OK)
            {
                return NGX_ERROR;
            }

            continue;
        }

        return ngx_smartflow_xlate_fail(x, "a content part type is not "
                                           "supported by this provider");
    }

    return NGX_OK;
}


static ngx_int_t
ngx_sf_to_an_assistant(ngx_smartflow_xlate_t *x, ngx_smartflow_json_t *m,
    ngx_smartflow_json_t *blocks)
{
    ngx_smartflow_json_t  *calls, *tc;

    if (ngx_sf_to_an_parts(x, ngx_smartflow_json_get(m, "content"), blocks)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    calls = ngx_smartflow_json_get(m, "tool_calls");

    if (!ngx_smartflow_xlate_present(calls)) {
        return NGX_OK;
    }

    if (calls->type != NGX_SMARTFLOW_JSON_ARRAY) {
        return ngx_smartflow_xlate_fail(x, "'tool_calls' must be an array");
    }

    for (tc = calls->child; tc; tc = tc->next) {
        if (ngx_sf_to_an_tool_use(x, tc, blocks) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_sf_to_an_tool_result(ngx_smartflow_xlate_t *x, ngx_smartflow_json_t *m,
    ngx_smartflow_json_t *blocks)
{
    ngx_smartflow_json_t  *id, *content, *b, *arr;

    id = ngx_smartflow_json_get(m, "tool_call_id");

    if (!ngx_smartflow_json_is_string(id)) {
        return ngx_smartflow_xlate_fail(x, "a tool message needs a "
                                           "'tool_call_id'");
    }

    b = ngx_smartflow_xlate_add(x->pool, blocks, NULL,
                                NGX_SMARTFLOW_JSON_OBJECT, NULL);
    if (b == NULL
        || ngx_smartflow_xlate_add_lit(x->pool, b, "type", "tool_result")
           == NULL
        || ngx_smartflow_xlate_add_str(x->pool, b, "tool_use_id", id) == NULL)
    {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    content = ngx_smartflow_json_get(m, "content");

    if (ngx_smartflow_json_is_string(content)) {
        if (ngx_smartflow_xlate_add_str(x->pool, b, "content", content) == NULL)
        {
            return ngx_smartflow_xlate_fail(x, "out of memory");
        }

        return NGX_OK;
    }

    arr = ngx_smartflow_json_new(x->pool, NGX_SMARTFLOW_JSON_ARRAY, NULL);
    if (arr == NULL) {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    if (ngx_sf_to_an_parts(x, content, arr) != NGX_OK) {
        return NGX_ERROR;
    }

    if (arr->nchild) {
        ngx_smartflow_json_append(b, "content", arr);
    }

    return NGX_OK;
}


/* a user turn's tool results go before its other blocks, as Anthropic asks */
static ngx_uint_t
ngx_sf_is_tool_result(ngx_smartflow_json_t *b)
{
    return ngx_smartflow_xlate_type_is(b, "tool_result");
}


static ngx_int_t
ngx_sf_to_an_tools(ngx_smartflow_xlate_t *x, ngx_smartflow_json_t *req,
    ngx_smartflow_json_t *out)
{
    ngx_pool_t            *pool;
    ngx_smartflow_json_t  *tools, *t, *fn, *name, *v, *arr, *o, *tc;

    pool = x->pool;
    tools = ngx_smartflow_json_get(req, "tools");

    if (!ngx_smartflow_xlate_present(tools)) {
        return NGX_OK;
    }

    if (tools->type != NGX_SMARTFLOW_JSON_ARRAY) {
        return ngx_smartflow_xlate_fail(x, "'tools' must be an array");
    }

    if (tools->nchild == 0) {
        return NGX_OK;
    }

    arr = ngx_smartflow_xlate_add(pool, out, "tools", NGX_SMARTFLOW_JSON_ARRAY,
                                  NULL);
    if (arr == NULL) {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    for (t = tools->child; t; t = t->next) {
        v = ngx_smartflow_json_get(t, "type");

        if (v && !ngx_smartflow_xlate_is(v, "function")) {
            return ngx_smartflow_xlate_fail(x, "only function tools can be "
                                               "sent to this provider");
        }

        fn = ngx_smartflow_json_get(t, "function");
        name = ngx_smartflow_json_get(fn, "name");

        if (!ngx_smartflow_json_is_string(name)) {
            return ngx_smartflow_xlate_fail(x, "each tool needs a function "
                                               "name");
        }

        o = ngx_smartflow_xlate_add(pool, arr, NULL, NGX_SMARTFLOW_JSON_OBJECT,
                                    NULL);
        if (o == NULL
            || ngx_smartflow_xlate_add_str(pool, o, "name", name) == NULL)
        {
            return ngx_smartflow_xlate_fail(x, "out of memory");
        }

        v = ngx_smartflow_json_get(fn, "description");

        if (ngx_smartflow_json_is_string(v)
            && ngx_smartflow_xlate_add_str(pool, o, "description", v) == NULL)
        {
            return ngx_smartflow_xlate_fail(x, "out of memory");
        }

        v = ngx_smartflow_json_get(fn, "parameters");

        if (ngx_sf_add_schema(pool, o, "input_schema", v) != NGX_OK) {
            return ngx_smartflow_xlate_fail(x, "out of memory");
        }
    }

    tc = ngx_smartflow_json_get(req, "tool_choice");
    o = NULL;

    if (ngx_smartflow_xlate_present(tc)) {
        o = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_OBJECT, NULL);
        if (o == NULL) {
            return ngx_smartflow_xlate_fail(x, "out of memory");
        }

        if (ngx_smartflow_xlate_is(tc, "auto")) {
            v = ngx_smartflow_xlate_add_lit(pool, o, "type", "auto");

        } else if (ngx_smartflow_xlate_is(tc, "required")) {
            v = ngx_smartflow_xlate_add_lit(pool, o, "type", "any");

        } else if (ngx_smartflow_xlate_is(tc, "none")) {
            v = ngx_smartflow_xlate_add_lit(pool, o, "type", "none");

        } else {
            name = ngx_smartflow_json_get(
                       ngx_smartflow_json_get(tc, "function"), "name");

            if (!ngx_smartflow_xlate_type_is(tc, "function")
                || !ngx_smartflow_json_is_string(name))
            {
                return ngx_smartflow_xlate_fail(x, "unsupported 'tool_choice'");
            }

            v = ngx_smartflow_xlate_add_lit(pool, o, "type", "tool");

            if (v != NULL) {
                v = ngx_smartflow_xlate_add_str(pool, o, "name", name);
            }
        }

        if (v == NULL) {
            return ngx_smartflow_xlate_fail(x, "out of memory");
        }
    }

    v = ngx_smartflow_json_get(req, "parallel_tool_calls");

    if (v && v->type == NGX_SMARTFLOW_JSON_FALSE) {

        if (o == NULL) {
            o = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_OBJECT, NULL);
            if (o == NULL
                || ngx_smartflow_xlate_add_lit(pool, o, "type", "auto")
                   == NULL)
            {
                return ngx_smartflow_xlate_fail(x, "out of memory");
            }
        }

        if (!ngx_smartflow_xlate_type_is(o, "none")
            && ngx_smartflow_xlate_add(pool, o, "disable_parallel_tool_use",
                                       NGX_SMARTFLOW_JSON_TRUE, NULL)
               == NULL)
        {
            return ngx_smartflow_xlate_fail(x, "out of memory");
        }
    }

    if (o) {
        ngx_smartflow_json_append(out, "tool_choice", o);
    }

    return NGX_OK;
}


/* one OpenAI message as Anthropic content blocks */
static ngx_int_t
ngx_sf_to_an_message(ngx_smartflow_xlate_t *x, void *data,
    ngx_smartflow_json_t *m, ngx_smartflow_xlate_role_e role,
    ngx_smartflow_json_t *blocks)
{
    switch (role) {
    case NGX_SMARTFLOW_XLATE_USER:
        return ngx_sf_to_an_parts(x, ngx_smartflow_json_get(m, "content"),
                                  blocks);
    case NGX_SMARTFLOW_XLATE_ASSISTANT:
        return ngx_sf_to_an_assistant(x, m, blocks);
    default:
        return ngx_sf_to_an_tool_result(x, m, blocks);
    }
}


ngx_smartflow_json_t *
ngx_smartflow_xlate_req_openai_to_anthropic(ngx_smartflow_xlate_t *x,
    ngx_smartflow_json_t *req)
{
    ngx_str_t              system, text;
    ngx_pool_t            *pool;
    ngx_smartflow_json_t  *out, *messages, *m, *content, *b, *v, *s;

    static ngx_smartflow_xlate_turns_t  turns = {
        ngx_sf_to_an_message, ngx_sf_is_tool_result, "content", "assistant",
        NULL
    };

    pool = x->pool;

    messages = ngx_smartflow_xlate_turns(x, req, &turns, &system);
    if (messages == NULL) {
        return NULL;
    }

    out = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_OBJECT, NULL);
    if (out == NULL) {
        goto nomem;
    }

    v = ngx_smartflow_json_get(req, "model");

    if (ngx_smartflow_json_is_string(v)
        && ngx_smartflow_xlate_add_str(pool, out, "model", v) == NULL)
    {
        goto nomem;
    }

    /* a turn made of one plain text block is sent as a string */
    for (m = messages->child; m; m = m->next) {
        content = m->last;
        b = content->child;

        if (content->nchild == 1 && b->nchild == 2
            && ngx_smartflow_xlate_type_is(b, "text"))
        {
            v = ngx_smartflow_json_get(b, "text");

            content->type = NGX_SMARTFLOW_JSON_STRING;
            content->str = v->str;
            content->str_plain = v->str_plain;
            content->child = NULL;
            content->last = NULL;
            content->nchild = 0;
        }
    }

    if (system.len
        && ngx_smartflow_xlate_add(pool, out, "system",
                                   NGX_SMARTFLOW_JSON_STRING, &system)
           == NULL)
    {
        goto nomem;
    }

    ngx_smartflow_json_append(out, "messages", messages);

    /* Anthropic requires max_tokens */
    v = ngx_smartflow_json_get(req, "max_completion_tokens");

    if (v == NULL || v->type != NGX_SMARTFLOW_JSON_NUMBER) {
        v = ngx_smartflow_json_get(req, "max_tokens");
    }

    if (v && v->type == NGX_SMARTFLOW_JSON_NUMBER) {
        text = v->str;

    } else {
        ngx_str_set(&text, NGX_SF_DEFAULT_MAX_TOKENS);
    }

    if (ngx_smartflow_xlate_add(pool, out, "max_tokens",
                                NGX_SMARTFLOW_JSON_NUMBER, &text)
        == NULL
        || ngx_smartflow_xlate_add_number(pool, out, "temperature", req,
                                          "temperature")
           != NGX_OK
        || ngx_smartflow_xlate_add_number(pool, out, "top_p", req, "top_p")
           != NGX_OK)
    {
        goto nomem;
    }

    /* OpenAI allows a temperature up to 2, Anthropic refuses above 1 */
    v = ngx_smartflow_json_get(out, "temperature");

    if (v && ngx_sf_above_one(pool, &v->str)) {
        ngx_str_set(&v->str, "1");
    }

    v = ngx_smartflow_json_get(req, "stop");

    if (ngx_smartflow_json_is_string(v) && v->str.len) {
        s = ngx_smartflow_xlate_add(pool, out, "stop_sequences",
                                    NGX_SMARTFLOW_JSON_ARRAY, NULL);
        if (s == NULL
            || ngx_smartflow_xlate_add_str(pool, s, NULL, v) == NULL)
        {
            goto nomem;
        }

    } else if (v && v->type == NGX_SMARTFLOW_JSON_ARRAY && v->nchild) {
        s = ngx_smartflow_xlate_add(pool, out, "stop_sequences",
                                    NGX_SMARTFLOW_JSON_ARRAY, NULL);
        if (s == NULL) {
            goto nomem;
        }

        for (b = v->child; b; b = b->next) {
            if (ngx_smartflow_json_is_string(b)
                && ngx_smartflow_xlate_add_str(pool, s, NULL, b) == NULL)
            {
                goto nomem;
            }
        }
    }

    v = ngx_smartflow_json_get(req, "stream");

    if (v && (v->type == NGX_SMARTFLOW_JSON_TRUE
              || v->type == NGX_SMARTFLOW_JSON_FALSE)
        && ngx_smartflow_xlate_add(pool, out, "stream", v->type, NULL) == NULL)
    {
        goto nomem;
    }

    if (ngx_sf_to_an_tools(x, req, out) != NGX_OK) {
        return NULL;
    }

    v = ngx_smartflow_json_get(req, "user");

    if (ngx_smartflow_json_is_string(v)) {
        s = ngx_smartflow_xlate_add(pool, out, "metadata",
                                    NGX_SMARTFLOW_JSON_OBJECT, NULL);
        if (s == NULL
            || ngx_smartflow_xlate_add_str(pool, s, "user_id", v) == NULL)
        {
            goto nomem;
        }
    }

    return out;

nomem:

    (void) ngx_smartflow_xlate_fail(x, "out of memory");
    return NULL;
}


/* requests: Anthropic -> OpenAI */

static ngx_int_t
ngx_sf_to_oa_url_part(ngx_smartflow_xlate_t *x, ngx_smartflow_json_t *parts,
    ngx_str_t *url)
{
    ngx_smartflow_json_t  *p, *iu;

    p = ngx_smartflow_xlate_add(x->pool, parts, NULL, NGX_SMARTFLOW_JSON_OBJECT,
                                NULL);
    if (p == NULL
        || ngx_smartflow_xlate_add_lit(x->pool, p, "type", "image_url") == NULL)
    {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    iu = ngx_smartflow_xlate_add(x->pool, p, "image_url",
                                 NGX_SMARTFLOW_JSON_OBJECT, NULL);
    if (iu == NULL
        || ngx_smartflow_xlate_add(x->pool, iu, "url",
                                   NGX_SMARTFLOW_JSON_STRING, url)
           == NULL)
    {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    return NGX_OK;
}


static ngx_int_t
ngx_sf_to_oa_text_part(ngx_smartflow_xlate_t *x, ngx_smartflow_json_t *parts,
    ngx_str_t *text)
{
    ngx_smartflow_json_t  *p;

    if (text->len == 0) {
        return NGX_OK;
    }

    p = ngx_smartflow_xlate_add(x->pool, parts, NULL, NGX_SMARTFLOW_JSON_OBJECT,
                                NULL);
    if (p == NULL
        || ngx_smartflow_xlate_add_lit(x->pool, p, "type", "text") == NULL
        || ngx_smartflow_xlate_add(x->pool, p, "text",
                                   NGX_SMARTFLOW_JSON_STRING, text)
           == NULL)
    {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    return NGX_OK;
}


/* an image or document block -> an image_url, file or text part */
static ngx_int_t
ngx_sf_to_oa_source(ngx_smartflow_xlate_t *x, ngx_smartflow_json_t *b,
    ngx_smartflow_json_t *parts)
{
    ngx_str_t              url;
    ngx_uint_t             image;
    ngx_smartflow_json_t  *src, *media, *data, *p, *f, *title;

    image = ngx_smartflow_xlate_type_is(b, "image");
    src = ngx_smartflow_json_get(b, "source");
    data = ngx_smartflow_json_get(src, "data");
    media = ngx_smartflow_json_get(src, "media_type");

    if (ngx_smartflow_xlate_type_is(src, "base64")) {
        if (!ngx_smartflow_json_is_string(media)
            || !ngx_smartflow_json_is_string(data))
        {
            return ngx_smartflow_xlate_fail(x, "a base64 source needs "
                                               "'media_type' and 'data'");
        }

        if (ngx_sf_make_data_url(x->pool, &media->str, &data->str, &url)
            != NGX_OK)
        {
            return ngx_smartflow_xlate_fail(x, "out of memory");
        }

        if (image) {
            return ngx_sf_to_oa_url_part(x, parts, &url);
        }

        title = ngx_smartflow_json_get(b, "title");

        p = ngx_smartflow_xlate_add(x->pool, parts, NULL,
                                    NGX_SMARTFLOW_JSON_OBJECT, NULL);
        if (p == NULL
            || ngx_smartflow_xlate_add_lit(x->pool, p, "type", "file") == NULL)
        {
            return ngx_smartflow_xlate_fail(x, "out of memory");
        }

        f = ngx_smartflow_xlate_add(x->pool, p, "file",
                                    NGX_SMARTFLOW_JSON_OBJECT, NULL);
        if (f == NULL
            || (ngx_smartflow_json_is_string(title)
                ? ngx_smartflow_xlate_add_str(x->pool, f, "filename", title)
                : ngx_smartflow_xlate_add_lit(x->pool, f, "filename",
                                              "document.pdf"))
               == NULL
            || ngx_smartflow_xlate_add(x->pool, f, "file_data",
                                       NGX_SMARTFLOW_JSON_STRING, &url)
               == NULL)
        {
            return ngx_smartflow_xlate_fail(x, "out of memory");
        }

        return NGX_OK;
    }

    if (image && ngx_smartflow_xlate_type_is(src, "url")) {
        data = ngx_smartflow_json_get(src, "url");

        if (!ngx_smartflow_json_is_string(data)) {
            return ngx_smartflow_xlate_fail(x, "a url source needs a 'url'");
        }

        return ngx_sf_to_oa_url_part(x, parts, &data->str);
    }

    if (!image && ngx_smartflow_xlate_type_is(src, "text")
        && ngx_smartflow_json_is_string(data))
    {
        return ngx_sf_to_oa_text_part(x, parts, &data->str);
    }

    return ngx_smartflow_xlate_fail(x, "this image or document source is not "
                                       "supported by this provider");
}


static ngx_int_t
ngx_sf_to_oa_tool_message(ngx_smartflow_xlate_t *x, ngx_smartflow_json_t *b,
    ngx_smartflow_json_t *messages)
{
    ngx_str_t              text;
    ngx_smartflow_json_t  *id, *m;

    id = ngx_smartflow_json_get(b, "tool_use_id");

    if (!ngx_smartflow_json_is_string(id)) {
        return ngx_smartflow_xlate_fail(x, "a tool_result block needs a "
                                           "'tool_use_id'");
    }

    if (ngx_smartflow_xlate_text_of(x->pool,
                                    ngx_smartflow_json_get(b, "content"), "\n",
                                    &text)
        != NGX_OK)
    {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    m = ngx_smartflow_xlate_add(x->pool, messages, NULL,
                                NGX_SMARTFLOW_JSON_OBJECT, NULL);
    if (m == NULL
        || ngx_smartflow_xlate_add_lit(x->pool, m, "role", "tool") == NULL
        || ngx_smartflow_xlate_add_str(x->pool, m, "tool_call_id", id) == NULL
        || ngx_smartflow_xlate_add(x->pool, m, "content",
                                   NGX_SMARTFLOW_JSON_STRING, &text)
           == NULL)
    {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    return NGX_OK;
}


/*
 * A user turn: its tool results become "tool" messages, placed first, and
 * the rest one user message.
 */
static ngx_int_t
ngx_sf_to_oa_parts(ngx_smartflow_xlate_t *x, ngx_smartflow_json_t *content,
    ngx_smartflow_json_t *messages)
{
    ngx_int_t              rc;
    ngx_smartflow_json_t  *b, *t, *parts, *m;

    if (content->type == NGX_SMARTFLOW_JSON_STRING) {
        parts = NULL;

    } else {
        parts = ngx_smartflow_json_new(x->pool, NGX_SMARTFLOW_JSON_ARRAY,
                                       NULL);
        if (parts == NULL) {
            return ngx_smartflow_xlate_fail(x, "out of memory");
        }

        for (b = content->child; b; b = b->next) {

            if (ngx_smartflow_xlate_type_is(b, "text")) {
                t = ngx_smartflow_json_get(b, "text");
                rc = ngx_smartflow_json_is_string(t)
                     ? ngx_sf_to_oa_text_part(x, parts, &t->str) : NGX_OK;

            } else if (ngx_smartflow_xlate_type_is(b, "image")
                       || ngx_smartflow_xlate_type_is(b, "document"))
            {
                rc = ngx_sf_to_oa_source(x, b, parts);

            } else if (ngx_smartflow_xlate_type_is(b, "tool_result")) {
                rc = ngx_sf_to_oa_tool_message(x, b, messages);

            } else {
                rc = ngx_smartflow_xlate_fail(x, "a content block type is not "
                                                 "supported by this provider");
            }

            if (rc != NGX_OK) {
                return NGX_ERROR;
            }
        }

        if (parts->nchild == 0) {
            return NGX_OK;
        }
    }

    m = ngx_smartflow_xlate_add(x->pool, messages, NULL,
                                NGX_SMARTFLOW_JSON_OBJECT, NULL);
    if (m == NULL
        || ngx_smartflow_xlate_add_lit(x->pool, m, "role", "user") == NULL)
    {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    if (parts == NULL) {
        t = ngx_smartflow_xlate_add_str(x->pool, m, "content", content);

    } else if (parts->nchild == 1
               && ngx_smartflow_xlate_type_is(parts->child, "text"))
    {
        t = ngx_smartflow_json_get(parts->child, "text");
        t = ngx_smartflow_xlate_add_str(x->pool, m, "content", t);

    } else {
        ngx_smartflow_json_append(m, "content", parts);
        t = parts;
    }

    if (t == NULL) {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    return NGX_OK;
}


static ngx_int_t
ngx_sf_to_oa_assistant(ngx_smartflow_xlate_t *x,
    ngx_smartflow_json_t *content, ngx_smartflow_json_t *messages)
{
    ngx_str_t                    text;
    ngx_smartflow_json_t        *b, *t, *calls, *m;
    ngx_smartflow_xlate_join_t   j;

    calls = NULL;

    if (content->type == NGX_SMARTFLOW_JSON_STRING) {
        text = content->str;

    } else {
        ngx_smartflow_xlate_join_init(&j, x->pool);

        calls = ngx_smartflow_json_new(x->pool, NGX_SMARTFLOW_JSON_ARRAY,
                                       NULL);
        if (calls == NULL) {
            return ngx_smartflow_xlate_fail(x, "out of memory");
        }

        for (b = content->child; b; b = b->next) {

            if (ngx_smartflow_xlate_type_is(b, "text")) {
                t = ngx_smartflow_json_get(b, "text");

                if (ngx_smartflow_json_is_string(t)
                    && ngx_smartflow_xlate_join(&j, "", &t->str) != NGX_OK)
                {
                    return ngx_smartflow_xlate_fail(x, "out of memory");
                }

            } else if (ngx_smartflow_xlate_type_is(b, "tool_use")) {
                if (ngx_sf_to_oa_tool_call(x, b, calls) != NGX_OK) {
                    return NGX_ERROR;
                }

            } else if (!ngx_smartflow_xlate_type_is(b, "thinking")
                       && !ngx_smartflow_xlate_type_is(b, "redacted_thinking"))
            {
                /* reasoning stays with the provider that produced it */
                return ngx_smartflow_xlate_fail(x, "a content block type is "
                                                   "not supported by this "
                                                   "provider");
            }
        }

        text = j.str;
    }

    m = ngx_smartflow_xlate_add(x->pool, messages, NULL,
                                NGX_SMARTFLOW_JSON_OBJECT, NULL);
    if (m == NULL
        || ngx_smartflow_xlate_add_lit(x->pool, m, "role", "assistant")
           == NULL)
    {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    if (text.len == 0 && calls && calls->nchild) {
        t = ngx_smartflow_xlate_add(x->pool, m, "content",
                                    NGX_SMARTFLOW_JSON_NULL, NULL);

    } else {
        t = ngx_smartflow_xlate_add(x->pool, m, "content",
                                    NGX_SMARTFLOW_JSON_STRING, &text);
    }

    if (t == NULL) {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    if (calls && calls->nchild) {
        ngx_smartflow_json_append(m, "tool_calls", calls);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_sf_to_oa_tools(ngx_smartflow_xlate_t *x, ngx_smartflow_json_t *req,
    ngx_smartflow_json_t *out)
{
    ngx_pool_t            *pool;
    ngx_smartflow_json_t  *tools, *t, *v, *name, *arr, *o, *fn, *tc;

    pool = x->pool;
    tools = ngx_smartflow_json_get(req, "tools");

    if (!ngx_smartflow_xlate_present(tools)) {
        return NGX_OK;
    }

    if (tools->type != NGX_SMARTFLOW_JSON_ARRAY) {
        return ngx_smartflow_xlate_fail(x, "'tools' must be an array");
    }

    if (tools->nchild == 0) {
        return NGX_OK;
    }

    arr = ngx_smartflow_xlate_add(pool, out, "tools", NGX_SMARTFLOW_JSON_ARRAY,
                                  NULL);
    if (arr == NULL) {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    for (t = tools->child; t; t = t->next) {
        v = ngx_smartflow_json_get(t, "type");

        /* server tools (web search, code execution ...) run at Anthropic */
        if (ngx_smartflow_xlate_present(v)
            && !ngx_smartflow_xlate_is(v, "custom"))
        {
            return ngx_smartflow_xlate_fail(x, "only client tools can be sent "
                                               "to this provider");
        }

        name = ngx_smartflow_json_get(t, "name");

        if (!ngx_smartflow_json_is_string(name)) {
            return ngx_smartflow_xlate_fail(x, "each tool needs a 'name'");
        }

        o = ngx_smartflow_xlate_add(pool, arr, NULL, NGX_SMARTFLOW_JSON_OBJECT,
                                    NULL);
        if (o == NULL
            || ngx_smartflow_xlate_add_lit(pool, o, "type", "function")
               == NULL)
        {
            return ngx_smartflow_xlate_fail(x, "out of memory");
        }

        fn = ngx_smartflow_xlate_add(pool, o, "function",
                                     NGX_SMARTFLOW_JSON_OBJECT, NULL);
        if (fn == NULL
            || ngx_smartflow_xlate_add_str(pool, fn, "name", name) == NULL)
        {
            return ngx_smartflow_xlate_fail(x, "out of memory");
        }

        v = ngx_smartflow_json_get(t, "description");

        if (ngx_smartflow_json_is_string(v)
            && ngx_smartflow_xlate_add_str(pool, fn, "description", v) == NULL)
        {
            return ngx_smartflow_xlate_fail(x, "out of memory");
        }

        v = ngx_smartflow_json_get(t, "input_schema");

        if (ngx_sf_add_schema(pool, fn, "parameters", v) != NGX_OK) {
            return ngx_smartflow_xlate_fail(x, "out of memory");
        }
    }

    tc = ngx_smartflow_json_get(req, "tool_choice");

    if (!ngx_smartflow_xlate_present(tc)) {
        return NGX_OK;
    }

    if (ngx_smartflow_xlate_type_is(tc, "auto")) {
        v = ngx_smartflow_xlate_add_lit(pool, out, "tool_choice", "auto");

    } else if (ngx_smartflow_xlate_type_is(tc, "any")) {
        v = ngx_smartflow_xlate_add_lit(pool, out, "tool_choice", "required");

    } else if (ngx_smartflow_xlate_type_is(tc, "none")) {
        v = ngx_smartflow_xlate_add_lit(pool, out, "tool_choice", "none");

    } else if (ngx_smartflow_xlate_type_is(tc, "tool")) {
        name = ngx_smartflow_json_get(tc, "name");

        if (!ngx_smartflow_json_is_string(name)) {
            return ngx_smartflow_xlate_fail(x, "a 'tool' tool_choice needs a "
                                               "'name'");
        }

        o = ngx_smartflow_xlate_add(pool, out, "tool_choice",
                                    NGX_SMARTFLOW_JSON_OBJECT, NULL);
        v = NULL;

        if (o != NULL
            && ngx_smartflow_xlate_add_lit(pool, o, "type", "function")
               != NULL)
        {
            fn = ngx_smartflow_xlate_add(pool, o, "function",
                                         NGX_SMARTFLOW_JSON_OBJECT, NULL);
            if (fn != NULL) {
                v = ngx_smartflow_xlate_add_str(pool, fn, "name", name);
            }
        }

    } else {
        return ngx_smartflow_xlate_fail(x, "unsupported 'tool_choice'");
    }

    if (v == NULL) {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    v = ngx_smartflow_json_get(tc, "disable_parallel_tool_use");

    if (v && v->type == NGX_SMARTFLOW_JSON_TRUE
        && !ngx_smartflow_xlate_type_is(tc, "none")
        && ngx_smartflow_xlate_add(pool, out, "parallel_tool_calls",
                                   NGX_SMARTFLOW_JSON_FALSE, NULL)
           == NULL)
    {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    return NGX_OK;
}


ngx_smartflow_json_t *
ngx_smartflow_xlate_req_anthropic_to_openai(ngx_smartflow_xlate_t *x,
    ngx_smartflow_json_t *req)
{
    ngx_str_t              text;
    ngx_int_t              rc;
    ngx_pool_t            *pool;
    ngx_smartflow_json_t  *out, *msgs, *messages, *m, *role, *content, *v;
    ngx_smartflow_json_t  *s, *c;

    pool = x->pool;

    if (req == NULL || req->type != NGX_SMARTFLOW_JSON_OBJECT) {
        (void) ngx_smartflow_xlate_fail(x, "the request body must be a JSON "
                                           "object");
        return NULL;
    }

    msgs = ngx_smartflow_json_get(req, "messages");

    if (msgs == NULL || msgs->type != NGX_SMARTFLOW_JSON_ARRAY
        || msgs->nchild == 0)
    {
        (void) ngx_smartflow_xlate_fail(x, "'messages' must be a non-empty "
                                           "array");
        return NULL;
    }

    out = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_OBJECT, NULL);
    if (out == NULL) {
        goto nomem;
    }

    v = ngx_smartflow_json_get(req, "model");

    if (ngx_smartflow_json_is_string(v)
        && ngx_smartflow_xlate_add_str(pool, out, "model", v) == NULL)
    {
        goto nomem;
    }

    messages = ngx_smartflow_xlate_add(pool, out, "messages",
                                       NGX_SMARTFLOW_JSON_ARRAY, NULL);
    if (messages == NULL) {
        goto nomem;
    }

    v = ngx_smartflow_json_get(req, "system");

    if (ngx_smartflow_xlate_present(v)) {
        if (v->type != NGX_SMARTFLOW_JSON_STRING
            && v->type != NGX_SMARTFLOW_JSON_ARRAY)
        {
            (void) ngx_smartflow_xlate_fail(x, "'system' must be a string or "
                                               "an array of text blocks");
            return NULL;
        }

        if (ngx_smartflow_xlate_text_of(pool, v, "\n\n", &text) != NGX_OK) {
            goto nomem;
        }

        if (text.len) {
            m = ngx_smartflow_xlate_add(pool, messages, NULL,
                                        NGX_SMARTFLOW_JSON_OBJECT, NULL);
            if (m == NULL
                || ngx_smartflow_xlate_add_lit(pool, m, "role", "system")
                   == NULL
                || ngx_smartflow_xlate_add(pool, m, "content",
                                           NGX_SMARTFLOW_JSON_STRING, &text)
                   == NULL)
            {
                goto nomem;
            }
        }
    }

    for (m = msgs->child; m; m = m->next) {
        role = ngx_smartflow_json_get(m, "role");
        content = ngx_smartflow_json_get(m, "content");

        if (content == NULL
            || (content->type != NGX_SMARTFLOW_JSON_STRING
                && content->type != NGX_SMARTFLOW_JSON_ARRAY))
        {
            (void) ngx_smartflow_xlate_fail(x, "each message needs a 'role' "
                                               "and a string or array "
                                               "'content'");
            return NULL;
        }

        if (ngx_smartflow_xlate_is(role, "user")) {
            rc = ngx_sf_to_oa_parts(x, content, messages);

        } else if (ngx_smartflow_xlate_is(role, "assistant")) {
            rc = ngx_sf_to_oa_assistant(x, content, messages);

        } else {
            rc = ngx_smartflow_xlate_fail(x, "a message role must be user or "
                                             "assistant");
        }

        if (rc != NGX_OK) {
            return NULL;
        }
    }

    /*
     * OpenAI's reasoning models (o1, o3, o4, gpt-5) refuse max_tokens;
     * every chat model takes max_completion_tokens
     */
    if (ngx_smartflow_xlate_add_number(pool, out, "max_completion_tokens",
                                       req, "max_tokens")
        != NGX_OK
        || ngx_smartflow_xlate_add_number(pool, out, "temperature", req,
                                          "temperature")
           != NGX_OK
        || ngx_smartflow_xlate_add_number(pool, out, "top_p", req, "top_p")
           != NGX_OK)
    {
        goto nomem;
    }

    v = ngx_smartflow_json_get(req, "stop_sequences");

    if (v && v->type == NGX_SMARTFLOW_JSON_ARRAY && v->nchild) {
        s = ngx_smartflow_xlate_add(pool, out, "stop", NGX_SMARTFLOW_JSON_ARRAY,
                                    NULL);
        if (s == NULL) {
            goto nomem;
        }

        for (c = v->child; c; c = c->next) {
            if (ngx_smartflow_json_is_string(c)
                && ngx_smartflow_xlate_add_str(pool, s, NULL, c) == NULL)
            {
                goto nomem;
            }
        }
    }

    v = ngx_smartflow_json_get(req, "stream");

    if (v && v->type == NGX_SMARTFLOW_JSON_TRUE) {
        /* without it OpenAI streams carry no usage at all */
        if (ngx_smartflow_xlate_add(pool, out, "stream",
                                    NGX_SMARTFLOW_JSON_TRUE, NULL)
            == NULL)
        {
            goto nomem;
        }

        s = ngx_smartflow_xlate_add(pool, out, "stream_options",
                                    NGX_SMARTFLOW_JSON_OBJECT, NULL);
        if (s == NULL
            || ngx_smartflow_xlate_add(pool, s, "include_usage",
                                       NGX_SMARTFLOW_JSON_TRUE, NULL)
               == NULL)
        {
            goto nomem;
        }

    } else if (v && v->type == NGX_SMARTFLOW_JSON_FALSE) {
        if (ngx_smartflow_xlate_add(pool, out, "stream",
                                    NGX_SMARTFLOW_JSON_FALSE, NULL)
            == NULL)
        {
            goto nomem;
        }
    }

    if (ngx_sf_to_oa_tools(x, req, out) != NGX_OK) {
        return NULL;
    }

    v = ngx_smartflow_json_get(ngx_smartflow_json_get(req, "metadata"),
                               "user_id");

    if (ngx_smartflow_json_is_string(v)
        && ngx_smartflow_xlate_add_str(pool, out, "user", v) == NULL)
    {
        goto nomem;
    }

    return out;

nomem:

    (void) ngx_smartflow_xlate_fail(x, "out of memory");
    return NULL;
}


/* whole responses */

ngx_smartflow_json_t *
ngx_smartflow_xlate_resp_anthropic_to_openai(ngx_smartflow_xlate_t *x,
    ngx_smartflow_json_t *resp)
{
    char                         *finish;
    u_char                       *plain;
    ngx_str_t                     id;
    ngx_pool_t                   *pool;
    ngx_smartflow_json_t         *content, *b, *t, *calls, *u;
    ngx_smartflow_xlate_join_t    text;
    ngx_smartflow_xlate_usage_t   usage;

    pool = x->pool;
    plain = NULL;

    if (resp == NULL || resp->type != NGX_SMARTFLOW_JSON_OBJECT) {
        (void) ngx_smartflow_xlate_fail(x, "the provider's response is not a "
                                           "JSON object");
        return NULL;
    }

    content = ngx_smartflow_json_get(resp, "content");

    if (ngx_smartflow_xlate_present(content)
        && content->type != NGX_SMARTFLOW_JSON_ARRAY)
    {
        (void) ngx_smartflow_xlate_fail(x, "the provider's response has no "
                                           "content array");
        return NULL;
    }

    calls = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_ARRAY, NULL);
    if (calls == NULL) {
        goto nomem;
    }

    ngx_smartflow_xlate_join_init(&text, pool);

    for (b = content ? content->child : NULL; b; b = b->next) {

        if (ngx_smartflow_xlate_type_is(b, "text")) {
            t = ngx_smartflow_json_get(b, "text");

            if (ngx_smartflow_json_is_string(t)) {
                /* one block's text keeps what is known of its escaping */
                plain = (text.str.len == 0) ? t->str_plain : NULL;

                if (ngx_smartflow_xlate_join(&text, "", &t->str) != NGX_OK) {
                    goto nomem;
                }
            }

        } else if (ngx_smartflow_xlate_type_is(b, "tool_use")) {
            if (ngx_sf_to_oa_tool_call(x, b, calls) != NGX_OK) {
                return NULL;
            }
        }

        /* thinking and server tool blocks have no OpenAI form */
    }

    t = ngx_smartflow_json_get(resp, "id");

    if (!ngx_smartflow_json_is_string(t)) {
        ngx_str_set(&id, "chatcmpl-smartflow");

    } else if (ngx_smartflow_xlate_concat(pool, &id, "chatcmpl-", &t->str)
               != NGX_OK)
    {
        goto nomem;
    }

    t = ngx_smartflow_json_get(resp, "stop_reason");
    finish = ngx_smartflow_json_is_string(t) ? ngx_sf_finish_to_openai(&t->str)
                                             : "stop";

    /* OpenAI's prompt_tokens count the cached part too */
    u = ngx_smartflow_json_get(resp, "usage");

    usage.cached = ngx_smartflow_xlate_uint(
                       ngx_smartflow_json_get(u, "cache_read_input_tokens"));
    usage.prompt = ngx_smartflow_xlate_uint(
                       ngx_smartflow_json_get(u, "input_tokens"))
                   + usage.cached
                   + ngx_smartflow_xlate_uint(
                         ngx_smartflow_json_get(u,
                                                "cache_creation_input_tokens"));
    usage.completion = ngx_smartflow_xlate_uint(
                           ngx_smartflow_json_get(u, "output_tokens"));
    usage.reasoning = 0;

    return ngx_smartflow_xlate_completion(x, &id, &text.str, plain, calls,
                                          finish, &usage);

nomem:

    (void) ngx_smartflow_xlate_fail(x, "out of memory");
    return NULL;
}


ngx_smartflow_json_t *
ngx_smartflow_xlate_resp_openai_to_anthropic(ngx_smartflow_xlate_t *x,
    ngx_smartflow_json_t *resp)
{
    ngx_str_t              text, id;
    ngx_uint_t             in, cached;
    ngx_pool_t            *pool;
    ngx_smartflow_json_t  *out, *choices, *ch, *msg, *v, *content, *tc, *u;
    ngx_smartflow_json_t  *usage;

    pool = x->pool;

    choices = ngx_smartflow_json_get(resp, "choices");

    if (choices == NULL || choices->type != NGX_SMARTFLOW_JSON_ARRAY
        || choices->nchild == 0)
    {
        (void) ngx_smartflow_xlate_fail(x, "the provider's response has no "
                                           "choices");
        return NULL;
    }

    ch = choices->child;
    msg = ngx_smartflow_json_get(ch, "message");

    v = ngx_smartflow_json_get(resp, "id");

    if (!ngx_smartflow_json_is_string(v)) {
        ngx_str_set(&id, "msg_smartflow");

    } else if (ngx_smartflow_xlate_concat(pool, &id, "msg_", &v->str)
               != NGX_OK)
    {
        goto nomem;
    }

    out = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_OBJECT, NULL);
    if (out == NULL
        || ngx_smartflow_xlate_add(pool, out, "id", NGX_SMARTFLOW_JSON_STRING,
                                   &id)
           == NULL
        || ngx_smartflow_xlate_add_lit(pool, out, "type", "message") == NULL
        || ngx_smartflow_xlate_add_lit(pool, out, "role", "assistant") == NULL
        || ngx_smartflow_xlate_add(pool, out, "model",
                                   NGX_SMARTFLOW_JSON_STRING, &x->model)
           == NULL)
    {
        goto nomem;
    }

    content = ngx_smartflow_xlate_add(pool, out, "content",
                                      NGX_SMARTFLOW_JSON_ARRAY, NULL);
    if (content == NULL
        || ngx_smartflow_xlate_text_of(pool,
                                       ngx_smartflow_json_get(msg, "content"),
                                       "", &text)
           != NGX_OK)
    {
        goto nomem;
    }

    if (text.len == 0) {
        v = ngx_smartflow_json_get(msg, "refusal");

        if (ngx_smartflow_json_is_string(v)) {
            text = v->str;
        }
    }

    if (ngx_sf_to_an_text(x, content, &text, NULL, NULL) != NGX_OK) {
        return NULL;
    }

    v = ngx_smartflow_json_get(msg, "tool_calls");

    for (tc = (v && v->type == NGX_SMARTFLOW_JSON_ARRAY) ? v->child : NULL;
         tc;
         tc = tc->next)
    {
        if (ngx_sf_to_an_tool_use(x, tc, content) != NGX_OK) {
            return NULL;
        }
    }

    v = ngx_smartflow_json_get(ch, "finish_reason");

    if (ngx_smartflow_xlate_add_lit(pool, out, "stop_reason",
                                    ngx_smartflow_json_is_string(v)
                                    ? ngx_sf_finish_to_anthropic(&v->str)
                                    : "end_turn")
        == NULL
        || ngx_smartflow_xlate_add(pool, out, "stop_sequence",
                                   NGX_SMARTFLOW_JSON_NULL, NULL)
           == NULL)
    {
        goto nomem;
    }

    /* Anthropic's input_tokens leave out what was read from the cache */
    u = ngx_smartflow_json_get(resp, "usage");
    in = ngx_smartflow_xlate_uint(ngx_smartflow_json_get(u, "prompt_tokens"));
    cached = ngx_smartflow_xlate_uint(ngx_smartflow_json_get(
                 ngx_smartflow_json_get(u, "prompt_tokens_details"),
                 "cached_tokens"));

    if (cached > in) {
        cached = in;
    }

    usage = ngx_smartflow_xlate_add(pool, out, "usage",
                                    NGX_SMARTFLOW_JSON_OBJECT, NULL);
    if (usage == NULL
        || ngx_smartflow_xlate_add_num(pool, usage, "input_tokens", in - cached)
           == NULL
        || (cached
            && ngx_smartflow_xlate_add_num(pool, usage,
                                           "cache_read_input_tokens", cached)
               == NULL)
        || ngx_smartflow_xlate_add_num(pool, usage, "output_tokens",
                                       ngx_smartflow_xlate_uint(
                                           ngx_smartflow_json_get(u,
                                                       "completion_tokens")))
           == NULL)
    {
        goto nomem;
    }

    return out;

nomem:

    (void) ngx_smartflow_xlate_fail(x, "out of memory");
    return NULL;
}


/* errors */

/*
 * The error class from the body's type name and the HTTP status.  OpenAI
 * files most 4xx under invalid_request_error and 5xx under server_error,
 * so for those two the status says more.
 */
static ngx_uint_t
ngx_sf_error_kind(ngx_str_t *type, ngx_uint_t status)
{
    ngx_uint_t  by_type, by_status;

    by_type = ngx_smartflow_xlate_error_lookup(ngx_sf_error_names, type);

    switch (status) {
    case 400:
        by_status = NGX_SMARTFLOW_XLATE_ERR_INVALID;
        break;
    case 401:
        by_status = NGX_SMARTFLOW_XLATE_ERR_AUTH;
        break;
    case 403:
        by_status = NGX_SMARTFLOW_XLATE_ERR_PERMISSION;
        break;
    case 404:
        by_status = NGX_SMARTFLOW_XLATE_ERR_NOT_FOUND;
        break;
    case 413:
        by_status = NGX_SMARTFLOW_XLATE_ERR_TOO_LARGE;
        break;
    case 429:
        by_status = NGX_SMARTFLOW_XLATE_ERR_RATE_LIMIT;
        break;
    case 503:
    case 529:
        by_status = NGX_SMARTFLOW_XLATE_ERR_OVERLOADED;
        break;
    default:
        if (status >= 500 && status < 600) {
            by_status = NGX_SMARTFLOW_XLATE_ERR_API;

        } else if (status >= 400 && status < 500) {
            by_status = NGX_SMARTFLOW_XLATE_ERR_INVALID;

        } else {
            by_status = NGX_SMARTFLOW_XLATE_ERR_NONE;
        }
    }

    if (by_status != NGX_SMARTFLOW_XLATE_ERR_NONE
        && (by_type == NGX_SMARTFLOW_XLATE_ERR_NONE
            || by_type == NGX_SMARTFLOW_XLATE_ERR_INVALID
            || by_type == NGX_SMARTFLOW_XLATE_ERR_API))
    {
        return by_status;
    }

    /* a stream error event without a known type is the provider's fault */
    return by_type != NGX_SMARTFLOW_XLATE_ERR_NONE
           ? by_type : NGX_SMARTFLOW_XLATE_ERR_API;
}


/*
 * Reads the fields of an error body: Anthropic's {"type":"error","error":
 * {"type","message"}}, OpenAI's {"error":{"message","type","param",
 * "code"}}, Gemini's {"error":{"code","message","status"}}, or a bare
 * {"error":"message"}.
 */
static void
ngx_sf_error_read(ngx_smartflow_json_t *body, ngx_str_t *type,
    ngx_str_t *message, ngx_smartflow_json_t **code,
    ngx_smartflow_json_t **param)
{
    ngx_smartflow_json_t  *e, *v;

    ngx_str_null(type);
    ngx_str_null(message);
    *code = NULL;
    *param = NULL;

    if (body == NULL || body->type != NGX_SMARTFLOW_JSON_OBJECT) {
        return;
    }

    e = ngx_smartflow_json_get(body, "error");

    if (ngx_smartflow_json_is_string(e)) {
        *message = e->str;
        e = body;

    } else if (e == NULL || e->type != NGX_SMARTFLOW_JSON_OBJECT) {
        e = body;
    }

    v = ngx_smartflow_json_get(e, "message");

    if (ngx_smartflow_json_is_string(v)) {
        *message = v->str;
    }

    v = ngx_smartflow_json_get(e, "type");

    if (!ngx_smartflow_json_is_string(v)
        || ngx_smartflow_xlate_eq(&v->str, "error"))
    {
        v = ngx_smartflow_json_get(e, "status");
    }

    if (ngx_smartflow_json_is_string(v)) {
        *type = v->str;
    }

    v = ngx_smartflow_json_get(e, "code");

    if (ngx_smartflow_json_is_string(v)) {
        *code = v;
    }

    v = ngx_smartflow_json_get(e, "param");

    if (ngx_smartflow_json_is_string(v)) {
        *param = v;
    }
}


static ngx_int_t
ngx_sf_error_message(ngx_pool_t *pool, ngx_uint_t status, ngx_str_t *msg)
{
    u_char  *p;

    if (msg->len) {
        return NGX_OK;
    }

    p = ngx_pnalloc(pool, sizeof("The provider failed with HTTP status .")
                          + NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    msg->data = p;
    msg->len = ngx_sprintf(p, "The provider failed with HTTP status %ui.",
                           status)
               - p;

    return NGX_OK;
}


ngx_smartflow_json_t *
ngx_smartflow_xlate_error_to_openai(ngx_smartflow_xlate_t *x,
    ngx_uint_t status, ngx_smartflow_json_t *err)
{
    ngx_str_t                          type, message;
    ngx_pool_t                        *pool;
    ngx_smartflow_json_t              *out, *e, *code, *param, *v;
    ngx_smartflow_xlate_error_kind_t  *kind;

    pool = x->pool;

    ngx_sf_error_read(err, &type, &message, &code, &param);
    kind = &ngx_smartflow_xlate_error_kinds[ngx_sf_error_kind(&type, status)];

    if (ngx_sf_error_message(pool, status, &message) != NGX_OK) {
        goto nomem;
    }

    out = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_OBJECT, NULL);
    e = out ? ngx_smartflow_xlate_add(pool, out, "error",
                                      NGX_SMARTFLOW_JSON_OBJECT, NULL)
            : NULL;

    if (e == NULL
        || ngx_smartflow_xlate_add(pool, e, "message",
                                   NGX_SMARTFLOW_JSON_STRING, &message)
           == NULL
        || ngx_smartflow_xlate_add_lit(pool, e, "type", kind->openai) == NULL
        || (param
            ? ngx_smartflow_xlate_add_str(pool, e, "param", param)
            : ngx_smartflow_xlate_add(pool, e, "param",
                                      NGX_SMARTFLOW_JSON_NULL, NULL))
           == NULL)
    {
        goto nomem;
    }

    if (code) {
        v = ngx_smartflow_xlate_add_str(pool, e, "code", code);

    } else if (kind->code) {
        v = ngx_smartflow_xlate_add_lit(pool, e, "code", kind->code);

    } else {
        v = ngx_smartflow_xlate_add(pool, e, "code", NGX_SMARTFLOW_JSON_NULL,
                                    NULL);
    }

    if (v == NULL) {
        goto nomem;
    }

    return out;

nomem:

    (void) ngx_smartflow_xlate_fail(x, "out of memory");
    return NULL;
}


ngx_smartflow_json_t *
ngx_smartflow_xlate_error_to_anthropic(ngx_smartflow_xlate_t *x,
    ngx_uint_t status, ngx_smartflow_json_t *err)
{
    ngx_str_t                          type, message;
    ngx_pool_t                        *pool;
    ngx_smartflow_json_t              *out, *e, *code, *param;
    ngx_smartflow_xlate_error_kind_t  *kind;

    pool = x->pool;

    ngx_sf_error_read(err, &type, &message, &code, &param);
    kind = &ngx_smartflow_xlate_error_kinds[ngx_sf_error_kind(&type, status)];

    if (ngx_sf_error_message(pool, status, &message) != NGX_OK) {
        goto nomem;
    }

    out = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_OBJECT, NULL);
    if (out == NULL
        || ngx_smartflow_xlate_add_lit(pool, out, "type", "error") == NULL)
    {
        goto nomem;
    }

    e = ngx_smartflow_xlate_add(pool, out, "error", NGX_SMARTFLOW_JSON_OBJECT,
                                NULL);
    if (e == NULL
        || ngx_smartflow_xlate_add_lit(pool, e, "type", kind->anthropic)
           == NULL
        || ngx_smartflow_xlate_add(pool, e, "message",
                                   NGX_SMARTFLOW_JSON_STRING, &message)
           == NULL)
    {
        goto nomem;
    }

    return out;

nomem:

    (void) ngx_smartflow_xlate_fail(x, "out of memory");
    return NULL;
}


/* Anthropic events -> OpenAI chunks */

static ngx_int_t
ngx_sf_chunk_begin(ngx_smartflow_xlate_t *x, ngx_smartflow_xlate_stream_t *st,
    ngx_array_t *out)
{
    if (st->started) {
        return NGX_OK;
    }

    st->started = 1;
    st->created = ngx_time();
    st->tool_index = -1;

    if (st->id.len == 0) {
        ngx_str_set(&st->id, "chatcmpl-smartflow");
    }

    return ngx_smartflow_xlate_chunk_role(x, st, out);
}


static ngx_int_t
ngx_sf_chunk_text(ngx_smartflow_xlate_t *x, ngx_smartflow_xlate_stream_t *st,
    ngx_str_t *text, ngx_array_t *out)
{
    if (text->len == 0) {
        return NGX_OK;
    }

    if (ngx_sf_chunk_begin(x, st, out) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_smartflow_xlate_chunk_text(x, st, text, out);
}


/* the arguments follow in input_json_delta events */
static ngx_int_t
ngx_sf_chunk_tool(ngx_smartflow_xlate_t *x, ngx_smartflow_xlate_stream_t *st,
    ngx_smartflow_json_t *block, ngx_array_t *out)
{
    ngx_str_t              empty;
    ngx_smartflow_json_t  *id, *name;

    if (ngx_sf_chunk_begin(x, st, out) != NGX_OK) {
        return NGX_ERROR;
    }

    id = ngx_smartflow_json_get(block, "id");
    name = ngx_smartflow_json_get(block, "name");
    ngx_str_null(&empty);

    st->tool_index++;

    return ngx_smartflow_xlate_chunk_tool(x, st,
               ngx_smartflow_json_is_string(id) ? &id->str : &empty,
               ngx_smartflow_json_is_string(name) ? &name->str : &empty,
               &empty, out);
}


static ngx_int_t
ngx_sf_chunk_args(ngx_smartflow_xlate_t *x, ngx_smartflow_xlate_stream_t *st,
    ngx_str_t *args, ngx_array_t *out)
{
    ngx_smartflow_xlate_line_t  l;

    if (args->len == 0 || st->tool_index < 0) {
        return NGX_OK;
    }

    ngx_smartflow_xlate_chunk_head(&l, x, st);
    ngx_smartflow_xlate_raw(&l, "[{\"index\":0,\"delta\":{\"tool_calls\":"
                                "[{\"index\":");
    ngx_smartflow_xlate_num(&l, (ngx_uint_t) st->tool_index);
    ngx_smartflow_xlate_raw(&l, ",\"function\":{\"arguments\":\"");
    ngx_smartflow_xlate_esc(&l, args);
    ngx_smartflow_xlate_raw(&l, "\"}}]}");
    ngx_smartflow_xlate_chunk_tail(&l, NULL);

    return ngx_smartflow_xlate_line_emit(x, &l, out);
}


static ngx_int_t
ngx_sf_chunk_finish(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, ngx_array_t *out)
{
    ngx_str_t  finish;

    if (ngx_sf_chunk_begin(x, st, out) != NGX_OK) {
        return NGX_ERROR;
    }

    if (st->finish.len) {
        finish = st->finish;

    } else {
        ngx_str_set(&finish, "stop");
    }

    if (ngx_smartflow_xlate_chunk_finish(x, st, &finish, out) != NGX_OK) {
        return NGX_ERROR;
    }

    if (st->include_usage
        && ngx_smartflow_xlate_chunk_usage(x, st, out) != NGX_OK)
    {
        return NGX_ERROR;
    }

    st->finished = 1;

    return ngx_smartflow_xlate_chunk_done(x, st, out);
}


/* usage as Anthropic reports it, cache reads and writes counted as input */
static void
ngx_sf_stream_usage(ngx_smartflow_xlate_stream_t *st, ngx_smartflow_json_t *u)
{
    ngx_smartflow_json_t  *v;

    v = ngx_smartflow_json_get(u, "input_tokens");

    if (v && v->type == NGX_SMARTFLOW_JSON_NUMBER) {
        st->input_tokens = ngx_smartflow_xlate_uint(v)
            + ngx_smartflow_xlate_uint(
                  ngx_smartflow_json_get(u, "cache_read_input_tokens"))
            + ngx_smartflow_xlate_uint(
                  ngx_smartflow_json_get(u, "cache_creation_input_tokens"));
    }

    v = ngx_smartflow_json_get(u, "output_tokens");

    if (v && v->type == NGX_SMARTFLOW_JSON_NUMBER) {
        st->output_tokens = ngx_smartflow_xlate_uint(v);
    }
}


ngx_int_t
ngx_smartflow_xlate_stream_anthropic_to_openai(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, ngx_str_t *event,
    ngx_smartflow_json_t *data, ngx_array_t *out)
{
    ngx_str_t              type, etype, message;
    ngx_smartflow_json_t  *t, *msg, *v, *d, *code, *param;

    if (st->done || data == NULL) {
        return NGX_OK;
    }

    t = ngx_smartflow_json_get(data, "type");

    if (ngx_smartflow_json_is_string(t)) {
        type = t->str;

    } else if (event) {
        type = *event;

    } else {
        return NGX_OK;
    }

    if (ngx_smartflow_xlate_eq(&type, "message_start")) {
        if (st->started) {
            return NGX_OK;
        }

        msg = ngx_smartflow_json_get(data, "message");
        v = ngx_smartflow_json_get(msg, "id");

        if (ngx_smartflow_json_is_string(v)
            && ngx_smartflow_xlate_concat(ngx_smartflow_xlate_st_pool(x, st),
                                          &st->id, "chatcmpl-", &v->str)
               != NGX_OK)
        {
            return ngx_smartflow_xlate_fail(x, "out of memory");
        }

        ngx_sf_stream_usage(st, ngx_smartflow_json_get(msg, "usage"));

        return ngx_sf_chunk_begin(x, st, out);
    }

    if (ngx_smartflow_xlate_eq(&type, "content_block_start")) {
        d = ngx_smartflow_json_get(data, "content_block");

        st->block_open = 1;
        st->block_is_tool = 0;

        if (ngx_smartflow_xlate_type_is(d, "tool_use")) {
            st->block_is_tool = 1;
            return ngx_sf_chunk_tool(x, st, d, out);
        }

        v = ngx_smartflow_json_get(d, "text");

        if (ngx_smartflow_xlate_type_is(d, "text")
            && ngx_smartflow_json_is_string(v))
        {
            return ngx_sf_chunk_text(x, st, &v->str, out);
        }

        return NGX_OK;
    }

    if (ngx_smartflow_xlate_eq(&type, "content_block_delta")) {
        d = ngx_smartflow_json_get(data, "delta");

        if (ngx_smartflow_xlate_type_is(d, "text_delta")) {
            v = ngx_smartflow_json_get(d, "text");

            if (ngx_smartflow_json_is_string(v)) {
                return ngx_sf_chunk_text(x, st, &v->str, out);
            }

        } else if (ngx_smartflow_xlate_type_is(d, "input_json_delta")
                   && st->block_is_tool)
        {
            v = ngx_smartflow_json_get(d, "partial_json");

            if (ngx_smartflow_json_is_string(v)) {
                return ngx_sf_chunk_args(x, st, &v->str, out);
            }
        }

        /* thinking, signature and citation deltas have no OpenAI form */
        return NGX_OK;
    }

    if (ngx_smartflow_xlate_eq(&type, "content_block_stop")) {
        st->block_open = 0;
        st->block_is_tool = 0;
        return NGX_OK;
    }

    if (ngx_smartflow_xlate_eq(&type, "message_delta")) {
        v = ngx_smartflow_json_get(ngx_smartflow_json_get(data, "delta"),
                                   "stop_reason");

        if (ngx_smartflow_json_is_string(v)) {
            ngx_smartflow_xlate_str_lit(&st->finish,
                                        ngx_sf_finish_to_openai(&v->str));
            st->finished = 1;
        }

        ngx_sf_stream_usage(st, ngx_smartflow_json_get(data, "usage"));

        return NGX_OK;
    }

    if (ngx_smartflow_xlate_eq(&type, "message_stop")) {
        return ngx_sf_chunk_finish(x, st, out);
    }

    if (ngx_smartflow_xlate_eq(&type, "error")) {
        ngx_sf_error_read(data, &etype, &message, &code, &param);

        if (message.len == 0) {
            ngx_str_set(&message, "The provider reported an error.");
        }

        return ngx_smartflow_xlate_chunk_error(x, st,
                                               ngx_sf_error_kind(&etype, 0),
                                               &message, NULL, out);
    }

    /* ping, and event types added later */
    return NGX_OK;
}


ngx_int_t
ngx_smartflow_xlate_stream_end_openai(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, ngx_uint_t broken, ngx_array_t *out)
{
    ngx_str_t  message;

    if (st->done) {
        return NGX_OK;
    }

    /* the stop reason came: only message_stop is missing */
    if (!broken && st->finished) {
        return ngx_sf_chunk_finish(x, st, out);
    }

    ngx_str_set(&message, NGX_SMARTFLOW_XLATE_STREAM_BROKEN);

    return ngx_smartflow_xlate_chunk_error(x, st, NGX_SMARTFLOW_XLATE_ERR_API,
                                           &message, "upstream_stream_broken",
                                           out);
}


/* OpenAI chunks -> Anthropic events */

static void
ngx_sf_event_head(ngx_smartflow_xlate_line_t *l, char *name)
{
    ngx_str_t  s;

    ngx_memzero(l, sizeof(ngx_smartflow_xlate_line_t));
    ngx_smartflow_xlate_str_lit(&s, name);

    ngx_smartflow_xlate_raw(l, "event: ");
    ngx_smartflow_xlate_line_add(l, s.data, s.len, 0);
    ngx_smartflow_xlate_raw(l, "\ndata: {\"type\":\"");
    ngx_smartflow_xlate_line_add(l, s.data, s.len, 0);
    ngx_smartflow_xlate_raw(l, "\"");
}


static ngx_int_t
ngx_sf_event_begin(ngx_smartflow_xlate_t *x, ngx_smartflow_xlate_stream_t *st,
    ngx_smartflow_json_t *data, ngx_array_t *out)
{
    ngx_smartflow_json_t        *id;
    ngx_smartflow_xlate_line_t   l;

    if (st->started) {
        return NGX_OK;
    }

    st->started = 1;
    st->created = ngx_time();
    st->tool_index = -1;

    id = ngx_smartflow_json_get(data, "id");

    if (ngx_smartflow_json_is_string(id)) {
        if (ngx_smartflow_xlate_concat(ngx_smartflow_xlate_st_pool(x, st),
                                       &st->id, "msg_", &id->str)
            != NGX_OK)
        {
            return ngx_smartflow_xlate_fail(x, "out of memory");
        }

    } else {
        ngx_str_set(&st->id, "msg_smartflow");
    }

    /* the prompt's size is known only from the usage chunk at the end */
    ngx_sf_event_head(&l, "message_start");
    ngx_smartflow_xlate_raw(&l, ",\"message\":{\"id\":\"");
    ngx_smartflow_xlate_esc(&l, &st->id);
    ngx_smartflow_xlate_raw(&l, "\",\"type\":\"message\","
                                "\"role\":\"assistant\",\"model\":\"");
    ngx_smartflow_xlate_esc(&l, &x->model);
    ngx_smartflow_xlate_raw(&l, "\",\"content\":[],\"stop_reason\":null,"
                                "\"stop_sequence\":null,"
                                "\"usage\":{\"input_tokens\":0,"
                                "\"output_tokens\":0}}}\n\n");

    if (ngx_smartflow_xlate_line_emit(x, &l, out) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_smartflow_xlate_emit_static(x, out, "event: ping\ndata: "
                                                   "{\"type\":\"ping\"}\n\n");
}


static ngx_int_t
ngx_sf_event_close(ngx_smartflow_xlate_t *x, ngx_smartflow_xlate_stream_t *st,
    ngx_array_t *out)
{
    ngx_smartflow_xlate_line_t  l;

    if (!st->block_open) {
        return NGX_OK;
    }

    ngx_sf_event_head(&l, "content_block_stop");
    ngx_smartflow_xlate_raw(&l, ",\"index\":");
    ngx_smartflow_xlate_num(&l, st->block);
    ngx_smartflow_xlate_raw(&l, "}\n\n");

    st->block_open = 0;
    st->block_is_tool = 0;
    st->block++;

    return ngx_smartflow_xlate_line_emit(x, &l, out);
}


static ngx_int_t
ngx_sf_event_text(ngx_smartflow_xlate_t *x, ngx_smartflow_xlate_stream_t *st,
    ngx_str_t *text, ngx_array_t *out)
{
    ngx_smartflow_xlate_line_t  l;

    if (st->block_open && st->block_is_tool
        && ngx_sf_event_close(x, st, out) != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (!st->block_open) {
        ngx_sf_event_head(&l, "content_block_start");
        ngx_smartflow_xlate_raw(&l, ",\"index\":");
        ngx_smartflow_xlate_num(&l, st->block);
        ngx_smartflow_xlate_raw(&l, ",\"content_block\":{\"type\":\"text\","
                                    "\"text\":\"\"}}\n\n");

        if (ngx_smartflow_xlate_line_emit(x, &l, out) != NGX_OK) {
            return NGX_ERROR;
        }

        st->block_open = 1;
        st->block_is_tool = 0;
    }

    ngx_sf_event_head(&l, "content_block_delta");
    ngx_smartflow_xlate_raw(&l, ",\"index\":");
    ngx_smartflow_xlate_num(&l, st->block);
    ngx_smartflow_xlate_raw(&l,
                            ",\"delta\":{\"type\":\"text_delta\",\"text\":\"");
    ngx_smartflow_xlate_esc(&l, text);
    ngx_smartflow_xlate_raw(&l, "\"}}\n\n");

    return ngx_smartflow_xlate_line_emit(x, &l, out);
}


/*
 * One tool_calls[] entry of a delta.  A new index (or a new id) starts a
 * tool_use block; the argument pieces that follow are its input JSON.
 */
static ngx_int_t
ngx_sf_event_tool(ngx_smartflow_xlate_t *x, ngx_smartflow_xlate_stream_t *st,
    ngx_smartflow_json_t *tc, ngx_array_t *out)
{
    u_char                      *p;
    ngx_str_t                    empty;
    ngx_uint_t                   index;
    ngx_smartflow_json_t        *id, *fn, *name, *args;
    ngx_smartflow_xlate_line_t   l;

    index = ngx_smartflow_xlate_uint(ngx_smartflow_json_get(tc, "index"));
    id = ngx_smartflow_json_get(tc, "id");
    fn = ngx_smartflow_json_get(tc, "function");
    name = ngx_smartflow_json_get(fn, "name");
    args = ngx_smartflow_json_get(fn, "arguments");

    if (!ngx_smartflow_json_is_string(id) || id->str.len == 0) {
        id = NULL;
    }

    if (!st->block_open || !st->block_is_tool
        || (ngx_int_t) index != st->tool_index
        || (id && (id->str.len != st->tool_id.len
                   || ngx_memcmp(id->str.data, st->tool_id.data,
                                 id->str.len)
                      != 0)))
    {
        if (ngx_sf_event_close(x, st, out) != NGX_OK) {
            return NGX_ERROR;
        }

        st->tool_index = index;

        if (id) {
            if (ngx_smartflow_xlate_concat(ngx_smartflow_xlate_st_pool(x,
                                                                       st),
                                           &st->tool_id, "", &id->str)
                != NGX_OK)
            {
                return ngx_smartflow_xlate_fail(x, "out of memory");
            }

        } else {
            /* a client cannot answer a tool call without its id */
            p = ngx_pnalloc(ngx_smartflow_xlate_st_pool(x, st),
                            sizeof("toolu_smartflow_") - 1 + NGX_INT_T_LEN);
            if (p == NULL) {
                return ngx_smartflow_xlate_fail(x, "out of memory");
            }

            st->tool_id.data = p;
            st->tool_id.len = ngx_sprintf(p, "toolu_smartflow_%ui",
                                          st->block)
                              - p;
        }

        ngx_str_null(&empty);

        ngx_sf_event_head(&l, "content_block_start");
        ngx_smartflow_xlate_raw(&l, ",\"index\":");
        ngx_smartflow_xlate_num(&l, st->block);
        ngx_smartflow_xlate_raw(&l, ",\"content_block\":{\"type\":"
                                    "\"tool_use\",\"id\":\"");
        ngx_smartflow_xlate_esc(&l, &st->tool_id);
        ngx_smartflow_xlate_raw(&l, "\",\"name\":\"");
        ngx_smartflow_xlate_esc(&l, ngx_smartflow_json_is_string(name)
                                    ? &name->str : &empty);
        ngx_smartflow_xlate_raw(&l, "\",\"input\":{}}}\n\n");

        if (ngx_smartflow_xlate_line_emit(x, &l, out) != NGX_OK) {
            return NGX_ERROR;
        }

        st->block_open = 1;
        st->block_is_tool = 1;
    }

    if (!ngx_smartflow_json_is_string(args) || args->str.len == 0) {
        return NGX_OK;
    }

    ngx_sf_event_head(&l, "content_block_delta");
    ngx_smartflow_xlate_raw(&l, ",\"index\":");
    ngx_smartflow_xlate_num(&l, st->block);
    ngx_smartflow_xlate_raw(&l, ",\"delta\":{\"type\":\"input_json_delta\","
                                "\"partial_json\":\"");
    ngx_smartflow_xlate_esc(&l, &args->str);
    ngx_smartflow_xlate_raw(&l, "\"}}\n\n");

    return ngx_smartflow_xlate_line_emit(x, &l, out);
}


static ngx_int_t
ngx_sf_event_finish(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, ngx_array_t *out)
{
    ngx_str_t                   reason;
    ngx_smartflow_xlate_line_t  l;

    if (ngx_sf_event_begin(x, st, NULL, out) != NGX_OK
        || ngx_sf_event_close(x, st, out) != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (st->finish.len) {
        reason = st->finish;

    } else {
        ngx_str_set(&reason, "end_turn");
    }

    /* input_tokens too: the message_start event had to say 0 */
    ngx_sf_event_head(&l, "message_delta");
    ngx_smartflow_xlate_raw(&l, ",\"delta\":{\"stop_reason\":\"");
    ngx_smartflow_xlate_esc(&l, &reason);
    ngx_smartflow_xlate_raw(&l, "\",\"stop_sequence\":null},"
                                "\"usage\":{\"input_tokens\":");
    ngx_smartflow_xlate_num(&l, st->input_tokens);
    ngx_smartflow_xlate_raw(&l, ",\"output_tokens\":");
    ngx_smartflow_xlate_num(&l, st->output_tokens);
    ngx_smartflow_xlate_raw(&l, "}}\n\n");

    if (ngx_smartflow_xlate_line_emit(x, &l, out) != NGX_OK) {
        return NGX_ERROR;
    }

    st->finished = 1;
    st->done = 1;

    return ngx_smartflow_xlate_emit_static(x, out,
                                           "event: message_stop\n"
                                           "data: {\"type\":\"message_stop\"}"
                                           "\n\n");
}


static ngx_int_t
ngx_sf_event_error(ngx_smartflow_xlate_t *x, ngx_smartflow_xlate_stream_t *st,
    ngx_uint_t kind, ngx_str_t *message, ngx_array_t *out)
{
    ngx_str_t                          s;
    ngx_smartflow_xlate_line_t         l;
    ngx_smartflow_xlate_error_kind_t  *k;

    k = &ngx_smartflow_xlate_error_kinds[kind];
    ngx_smartflow_xlate_str_lit(&s, k->anthropic);

    ngx_sf_event_head(&l, "error");
    ngx_smartflow_xlate_raw(&l, ",\"error\":{\"type\":\"");
    ngx_smartflow_xlate_esc(&l, &s);
    ngx_smartflow_xlate_raw(&l, "\",\"message\":\"");
    ngx_smartflow_xlate_esc(&l, message);
    ngx_smartflow_xlate_raw(&l, "\"}}\n\n");

    st->done = 1;

    return ngx_smartflow_xlate_line_emit(x, &l, out);
}


ngx_int_t
ngx_smartflow_xlate_stream_openai_to_anthropic(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, ngx_str_t *event,
    ngx_smartflow_json_t *data, ngx_array_t *out)
{
    ngx_str_t              etype, message;
    ngx_uint_t             kind;
    ngx_smartflow_json_t  *e, *u, *v, *ch, *delta, *tc, *code, *param;

    if (st->done) {
        return NGX_OK;
    }

    /* "[DONE]" */
    if (data == NULL) {
        return ngx_sf_event_finish(x, st, out);
    }

    if (data->type != NGX_SMARTFLOW_JSON_OBJECT) {
        return NGX_OK;
    }

    e = ngx_smartflow_json_get(data, "error");

    if (ngx_smartflow_xlate_present(e)) {
        ngx_sf_error_read(data, &etype, &message, &code, &param);

        if (message.len == 0) {
            ngx_str_set(&message, "The provider reported an error.");
        }

        kind = ngx_sf_error_kind(&etype, 0);

        /* an overload is filed under api_error: its code tells */
        if (ngx_smartflow_json_is_string(code) && code->str.len == 10
            && ngx_strncmp(code->str.data, "overloaded", 10) == 0)
        {
            kind = NGX_SMARTFLOW_XLATE_ERR_OVERLOADED;
        }

        return ngx_sf_event_error(x, st, kind, &message, out);
    }

    if (ngx_sf_event_begin(x, st, data, out) != NGX_OK) {
        return NGX_ERROR;
    }

    u = ngx_smartflow_json_get(data, "usage");

    if (u && u->type == NGX_SMARTFLOW_JSON_OBJECT) {
        st->input_tokens = ngx_smartflow_xlate_uint(ngx_smartflow_json_get(u,
                                                            "prompt_tokens"));
        st->output_tokens = ngx_smartflow_xlate_uint(ngx_smartflow_json_get(u,
                                                        "completion_tokens"));
    }

    v = ngx_smartflow_json_get(data, "choices");

    /* n > 1 has no Anthropic form: the first choice is the message */
    ch = (v && v->type == NGX_SMARTFLOW_JSON_ARRAY) ? v->child : NULL;

    if (ch == NULL) {
        return NGX_OK;
    }

    delta = ngx_smartflow_json_get(ch, "delta");

    v = ngx_smartflow_json_get(delta, "content");

    if (ngx_smartflow_json_is_string(v) && v->str.len
        && ngx_sf_event_text(x, st, &v->str, out) != NGX_OK)
    {
        return NGX_ERROR;
    }

    v = ngx_smartflow_json_get(delta, "refusal");

    if (ngx_smartflow_json_is_string(v) && v->str.len
        && ngx_sf_event_text(x, st, &v->str, out) != NGX_OK)
    {
        return NGX_ERROR;
    }

    v = ngx_smartflow_json_get(delta, "tool_calls");

    for (tc = (v && v->type == NGX_SMARTFLOW_JSON_ARRAY) ? v->child : NULL;
         tc;
         tc = tc->next)
    {
        if (ngx_sf_event_tool(x, st, tc, out) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    v = ngx_smartflow_json_get(ch, "finish_reason");

    if (ngx_smartflow_json_is_string(v)) {
        ngx_smartflow_xlate_str_lit(&st->finish,
                                    ngx_sf_finish_to_anthropic(&v->str));
        st->finished = 1;
    }

    return NGX_OK;
}


ngx_int_t
ngx_smartflow_xlate_stream_end_anthropic(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, ngx_uint_t broken, ngx_array_t *out)
{
    ngx_str_t  message;

    if (st->done) {
        return NGX_OK;
    }

    /*
     * OpenAI-compatible servers do not all send [DONE], but each says
     * why its answer ended: a stream that ends without a finish_reason
     * was cut, and is not passed off as a whole answer (end_turn), which
     * a client, and the cache, would take for one
     */
    if (!broken && st->started && st->finished) {
        return ngx_sf_event_finish(x, st, out);
    }

    ngx_str_set(&message, NGX_SMARTFLOW_XLATE_STREAM_BROKEN);

    return ngx_sf_event_error(x, st, NGX_SMARTFLOW_XLATE_ERR_API, &message,
                              out);
}
