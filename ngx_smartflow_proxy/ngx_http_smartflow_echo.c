/*
 * The built-in demo provider ("type=echo"): answers chat, completions and
 * embeddings requests inside the worker in OpenAI's format, streaming
 * included, so a gateway with no provider key still works end to end.
 * The reply repeats the last user message; token counts are words.
 */

#include <math.h>

#include "ngx_http_smartflow_proxy.h"


typedef struct {
    ngx_str_t     id;
    ngx_str_t     model;       /* JSON-escaped */
    ngx_str_t     reply;       /* JSON-escaped */
    ngx_uint_t    prompt_tokens;
    ngx_uint_t    completion_tokens;
    unsigned      include_usage:1;
} ngx_http_smartflow_echo_t;


static ngx_int_t ngx_http_smartflow_echo_text(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_str_t *text);
static void ngx_http_smartflow_echo_append_text(ngx_smartflow_json_t *j,
    ngx_str_t *out);
static ngx_uint_t ngx_http_smartflow_words(u_char *p, size_t len);
static ngx_uint_t ngx_http_smartflow_echo_prompt_words(
    ngx_http_smartflow_ctx_t *ctx);
static ngx_uint_t ngx_http_smartflow_echo_content_words(
    ngx_smartflow_json_t *j);
static ngx_int_t ngx_http_smartflow_echo_embeddings(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_http_smartflow_echo_t *e);
static ngx_uint_t ngx_http_smartflow_echo_vector(ngx_smartflow_json_t *item,
    double *v);
static u_char *ngx_http_smartflow_echo_chunk(u_char *p,
    ngx_http_smartflow_echo_t *e, ngx_uint_t chat, u_char *s, size_t len,
    char *finish);


#define NGX_HTTP_SMARTFLOW_ECHO_DIM  16


ngx_int_t
ngx_http_smartflow_echo(ngx_http_request_t *r, ngx_http_smartflow_ctx_t *ctx)
{
    u_char                     *p, *start, *s, *end, *w;
    size_t                      len;
    ngx_str_t                   text, body;
    ngx_uint_t                  chat, nwords;
    ngx_smartflow_json_t       *j, *o;
    ngx_http_smartflow_echo_t   e;

    ngx_memzero(&e, sizeof(ngx_http_smartflow_echo_t));

    e.id.data = ngx_pnalloc(r->pool, 64);
    if (e.id.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    e.id.len = ngx_sprintf(e.id.data, "sf%xT%xA%xi", ngx_time(),
                           r->connection->number, r->connection->requests)
               - e.id.data;

    len = ngx_smartflow_json_escape_len(ctx->model.data, ctx->model.len);
    e.model.data = ngx_pnalloc(r->pool, len);
    if (e.model.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    e.model.len = ngx_smartflow_json_escape(e.model.data, ctx->model.data,
                                            ctx->model.len)
                  - e.model.data;

    if (ctx->api == NGX_HTTP_SMARTFLOW_API_EMBEDDINGS) {
        return ngx_http_smartflow_echo_embeddings(r, ctx, &e);
    }

    if (ngx_http_smartflow_echo_text(r, ctx, &text) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    e.prompt_tokens = ngx_http_smartflow_echo_prompt_words(ctx);
    e.completion_tokens = ngx_http_smartflow_words(text.data, text.len);

    /* the usage a provider would report, for the LOG phase */
    ctx->prompt_tokens = e.prompt_tokens;
    ctx->completion_tokens = e.completion_tokens;

    len = ngx_smartflow_json_escape_len(text.data, text.len);
    e.reply.data = ngx_pnalloc(r->pool, len);
    if (e.reply.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    e.reply.len = ngx_smartflow_json_escape(e.reply.data, text.data,
                                            text.len)
                  - e.reply.data;

    o = ngx_smartflow_json_get(ctx->upstream_json, "stream_options");
    j = ngx_smartflow_json_get(o, "include_usage");
    e.include_usage = (j && j->type == NGX_SMARTFLOW_JSON_TRUE);

    chat = (ctx->api != NGX_HTTP_SMARTFLOW_API_COMPLETIONS);
    nwords = e.completion_tokens + 1;

    len = (nwords + 4) * (320 + e.id.len + e.model.len) + e.reply.len;

    start = ngx_pnalloc(r->pool, len);
    if (start == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (!ctx->stream) {
        p = ngx_sprintf(start,
                "{\"id\":\"%s%V\",\"object\":\"%s\",\"created\":%T,"
                "\"model\":\"%V\",\"choices\":[{\"index\":0,",
                chat ? "chatcmpl-" : "cmpl-", &e.id,
                chat ? "chat.completion" : "text_completion", ngx_time(),
                &e.model);

        p = ngx_sprintf(p, chat ? "\"message\":{\"role\":\"assistant\","
                                  "\"content\":\"%V\"},\"logprobs\":null,"
                                : "\"text\":\"%V\",\"logprobs\":null,",
                        &e.reply);

        p = ngx_sprintf(p, "\"finish_reason\":\"stop\"}],\"usage\":{"
                           "\"prompt_tokens\":%ui,\"completion_tokens\":%ui,"
                           "\"total_tokens\":%ui}}",
                        e.prompt_tokens, e.completion_tokens,
                        e.prompt_tokens + e.completion_tokens);

        body.data = start;
    body.len = p - start;

    return ngx_http_smartflow_send_json(r, NGX_HTTP_OK, &body);
    }

    p = start;

    if (chat) {
        p = ngx_http_smartflow_echo_chunk(p, &e, chat, NULL, 0, NULL);
    }

    /*
     * one event per word with the spaces after it, as a model streams
     * tokens: never more events than words, which sized the buffer
     */
    s = e.reply.data;
    end = s + e.reply.len;

    while (s < end) {
        for (w = s; w < end && *w == ' '; w++) { /* void */ }
        for ( /* void */ ; w < end && *w != ' '; w++) { /* void */ }
        for ( /* void */ ; w < end && *w == ' '; w++) { /* void */ }

        p = ngx_http_smartflow_echo_chunk(p, &e, chat, s, w - s, NULL);
        s = w;
    }

    p = ngx_http_smartflow_echo_chunk(p, &e, chat, NULL, 0, "stop");

    if (e.include_usage) {
        p = ngx_http_smartflow_echo_chunk(p, &e, chat, NULL, 0, "");
    }

    p = ngx_sf_cpymem(p, "data: [DONE]\n\n");

    body.data = start;
    body.len = p - start;

    return ngx_http_smartflow_send(r, NGX_HTTP_OK, NGX_HTTP_SMARTFLOW_SSE,
                                   &body);
}


/* finish: NULL for a delta, a reason for the last choice, "" for usage */
static u_char *
ngx_http_smartflow_echo_chunk(u_char *p, ngx_http_smartflow_echo_t *e,
    ngx_uint_t chat, u_char *s, size_t len, char *finish)
{
    p = ngx_sprintf(p, "data: {\"id\":\"%s%V\",\"object\":\"%s\","
                       "\"created\":%T,\"model\":\"%V\",\"choices\":[",
                    chat ? "chatcmpl-" : "cmpl-", &e->id,
                    chat ? "chat.completion.chunk" : "text_completion",
                    ngx_time(), &e->model);

    if (finish && *finish == '\0') {
        return ngx_sprintf(p, "],\"usage\":{\"prompt_tokens\":%ui,"
                              "\"completion_tokens\":%ui,"
                              "\"total_tokens\":%ui}}\n\n",
                           e->prompt_tokens, e->completion_tokens,
                           e->prompt_tokens + e->completion_tokens);
    }

    p = ngx_sf_cpymem(p, "{\"index\":0,");

    if (!chat) {
        p = ngx_sprintf(p, "\"text\":\"%*s\",\"logprobs\":null,", len, s);

    } else if (finish) {
        p = ngx_sf_cpymem(p, "\"delta\":{},");

    } else if (s == NULL) {
        p = ngx_sf_cpymem(p, "\"delta\":{\"role\":\"assistant\","
                          "\"content\":\"\"},");

    } else {
        p = ngx_sprintf(p, "\"delta\":{\"content\":\"%*s\"},", len, s);
    }

    if (finish) {
        p = ngx_sprintf(p, "\"finish_reason\":\"%s\"}]", finish);

    } else {
        p = ngx_sf_cpymem(p, "\"finish_reason\":null}]");
    }

    return ngx_sf_cpymem(p, "}\n\n");
}


static ngx_int_t
ngx_http_smartflow_echo_text(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_str_t *text)
{
    ngx_str_t              said;
    ngx_smartflow_json_t  *j, *m, *role, *last;

    static ngx_str_t  prefix = ngx_string("Echo: ");

    last = NULL;

    if (ctx->api != NGX_HTTP_SMARTFLOW_API_COMPLETIONS) {
        j = ngx_smartflow_json_get(ctx->upstream_json, "messages");

        for (m = j->child; m; m = m->next) {
            role = ngx_smartflow_json_get(m, "role");

            if (ngx_smartflow_json_is_string(role)
                && role->str.len == 4
                && ngx_strncmp(role->str.data, "user", 4) == 0)
            {
                last = ngx_smartflow_json_get(m, "content");
            }
        }

    } else {
        last = ngx_smartflow_json_get(ctx->upstream_json, "prompt");

        if (last && last->type == NGX_SMARTFLOW_JSON_ARRAY) {
            last = last->child;
        }
    }

    ngx_str_null(&said);
    ngx_http_smartflow_echo_append_text(last, &said);

    text->len = prefix.len + said.len;
    text->data = ngx_pnalloc(r->pool, text->len);
    if (text->data == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(text->data, prefix.data, prefix.len);
    said.data = text->data + prefix.len;
    said.len = 0;
    ngx_http_smartflow_echo_append_text(last, &said);

    return NGX_OK;
}


/*
 * The text of a message's content: a string, or the "text" parts of an
 * array of content parts.  With out->data NULL it only measures.
 */
static void
ngx_http_smartflow_echo_append_text(ngx_smartflow_json_t *j, ngx_str_t *out)
{
    ngx_smartflow_json_t  *part, *t;

    if (j == NULL) {
        return;
    }

    if (j->type == NGX_SMARTFLOW_JSON_STRING) {
        if (out->data) {
            ngx_memcpy(out->data + out->len, j->str.data, j->str.len);
        }

        out->len += j->str.len;
        return;
    }

    if (j->type != NGX_SMARTFLOW_JSON_ARRAY) {
        return;
    }

    for (part = j->child; part; part = part->next) {
        t = ngx_smartflow_json_get(part, "text");

        if (ngx_smartflow_json_is_string(t)) {
            if (out->len && out->data) {
                out->data[out->len] = ' ';
            }

            out->len += out->len ? 1 : 0;
            ngx_http_smartflow_echo_append_text(t, out);
        }
    }
}


/* the prompt's size in words: every message's text, or the prompt's */
static ngx_uint_t
ngx_http_smartflow_echo_prompt_words(ngx_http_smartflow_ctx_t *ctx)
{
    ngx_uint_t             n;
    ngx_smartflow_json_t  *j, *m;

    if (ctx->api == NGX_HTTP_SMARTFLOW_API_COMPLETIONS) {
        j = ngx_smartflow_json_get(ctx->upstream_json, "prompt");

        if (j && j->type == NGX_SMARTFLOW_JSON_ARRAY) {
            for (n = 0, m = j->child; m; m = m->next) {
                n += ngx_http_smartflow_echo_content_words(m);
            }

            return n;
        }

        return ngx_http_smartflow_echo_content_words(j);
    }

    j = ngx_smartflow_json_get(ctx->upstream_json, "messages");

    for (n = 0, m = j ? j->child : NULL; m; m = m->next) {
        n += ngx_http_smartflow_echo_content_words(
                 ngx_smartflow_json_get(m, "content"));
    }

    return n;
}


static ngx_uint_t
ngx_http_smartflow_echo_content_words(ngx_smartflow_json_t *j)
{
    ngx_uint_t             n;
    ngx_smartflow_json_t  *part;

    if (j == NULL) {
        return 0;
    }

    if (j->type == NGX_SMARTFLOW_JSON_STRING) {
        return ngx_http_smartflow_words(j->str.data, j->str.len);
    }

    if (j->type != NGX_SMARTFLOW_JSON_ARRAY) {
        return 0;
    }

    for (n = 0, part = j->child; part; part = part->next) {
        n += ngx_http_smartflow_echo_content_words(
                 ngx_smartflow_json_get(part, "text"));
    }

    return n;
}


static ngx_uint_t
ngx_http_smartflow_words(u_char *p, size_t len)
{
    ngx_uint_t  n, in;

    for (n = 0, in = 0; len--; p++) {
        if (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') {
            in = 0;

        } else if (!in) {
            in = 1;
            n++;
        }
    }

    return n;
}


/*
 * Deterministic vectors: hashed words (or token ids), signed,
 * L2-normalised.  Inputs are a string, an array of strings, one array of
 * token ids, or an array of such arrays, as OpenAI's API takes them.
 */
static ngx_int_t
ngx_http_smartflow_echo_embeddings(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_http_smartflow_echo_t *e)
{
    u_char                *p, *start;
    float                  f[NGX_HTTP_SMARTFLOW_ECHO_DIM];
    double                 v[NGX_HTTP_SMARTFLOW_ECHO_DIM], norm;
    ngx_str_t              body, raw, b64;
    ngx_uint_t             i, k, n, tokens, base64;
    ngx_smartflow_json_t  *in, *item, *fmt;

    in = ngx_smartflow_json_get(ctx->upstream_json, "input");

    fmt = ngx_smartflow_json_get(ctx->upstream_json, "encoding_format");
    base64 = ngx_smartflow_json_is_string(fmt) && fmt->str.len == 6
             && ngx_strncmp(fmt->str.data, "base64", 6) == 0;

    if (in->type == NGX_SMARTFLOW_JSON_ARRAY
        && (in->child == NULL || in->child->type == NGX_SMARTFLOW_JSON_NUMBER))
    {
        /* one input given as token ids */
        item = in;
        n = 1;

    } else if (in->type == NGX_SMARTFLOW_JSON_ARRAY) {
        item = in->child;
        n = in->nchild;

    } else {
        item = in;
        n = 1;
    }

    if (n == 0 || (item->type == NGX_SMARTFLOW_JSON_ARRAY && item->nchild == 0)
        || (item->type == NGX_SMARTFLOW_JSON_STRING && item->str.len == 0))
    {
        return ngx_http_smartflow_error(r, NGX_HTTP_BAD_REQUEST,
                   "invalid_request_error", "invalid_value", "input",
                   "'input' must be a non-empty string or array.");
    }

    start = ngx_pnalloc(r->pool, 256 + e->model.len
                        + n * (64 + NGX_HTTP_SMARTFLOW_ECHO_DIM * 12));
    if (start == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_sf_cpymem(start, "{\"object\":\"list\",\"data\":[");
    tokens = 0;

    for (i = 0; i < n; i++, item = item->next) {
        if (item->type != NGX_SMARTFLOW_JSON_STRING
            && item->type != NGX_SMARTFLOW_JSON_ARRAY)
        {
            return ngx_http_smartflow_error(r, NGX_HTTP_BAD_REQUEST,
                       "invalid_request_error", "invalid_value", "input",
                       "'input' item %ui must be a string or an array of "
                       "token ids.", i);
        }

        tokens += ngx_http_smartflow_echo_vector(item, v);

        norm = 0;
        for (k = 0; k < NGX_HTTP_SMARTFLOW_ECHO_DIM; k++) {
            norm += v[k] * v[k];
        }

        norm = (norm > 0) ? sqrt(norm) : 1;

        p = ngx_sprintf(p, "%s{\"object\":\"embedding\",\"index\":%ui,"
                           "\"embedding\":", i ? "," : "", i);

        if (base64) {
            /* little-endian float32, as OpenAI encodes them */
            for (k = 0; k < NGX_HTTP_SMARTFLOW_ECHO_DIM; k++) {
                f[k] = (float) (v[k] / norm);
            }

            raw.data = (u_char *) f;
            raw.len = sizeof(f);
            b64.data = p + 1;
            ngx_encode_base64(&b64, &raw);

            *p = '"';
            p = b64.data + b64.len;
            *p++ = '"';

        } else {
            *p++ = '[';

            for (k = 0; k < NGX_HTTP_SMARTFLOW_ECHO_DIM; k++) {
                p = ngx_sprintf(p, "%s%s%.6f", k ? "," : "",
                                v[k] < 0 ? "-" : "",
                                (v[k] < 0 ? -v[k] : v[k]) / norm);
            }

            *p++ = ']';
        }

        *p++ = '}';
    }

    p = ngx_sprintf(p, "],\"model\":\"%V\",\"usage\":{\"prompt_tokens\":%ui,"
                       "\"total_tokens\":%ui}}", &e->model, tokens, tokens);

    ctx->prompt_tokens = tokens;

    body.data = start;
    body.len = p - start;

    return ngx_http_smartflow_send_json(r, NGX_HTTP_OK, &body);
}


/* the unnormalised vector of one input; returns its token count */
static ngx_uint_t
ngx_http_smartflow_echo_vector(ngx_smartflow_json_t *item, double *v)
{
    u_char                *s, *end, *w;
    uint32_t               h;
    ngx_uint_t             tokens;
    ngx_smartflow_json_t  *t;

    ngx_memzero(v, NGX_HTTP_SMARTFLOW_ECHO_DIM * sizeof(double));
    tokens = 0;

    if (item->type == NGX_SMARTFLOW_JSON_ARRAY) {
        for (t = item->child; t; t = t->next) {
            h = ngx_crc32_short(t->str.data, t->str.len);
            v[h % NGX_HTTP_SMARTFLOW_ECHO_DIM] += (h & 0x10000) ? 1 : -1;
            tokens++;
        }

        return tokens;
    }

    s = item->str.data;
    end = s + item->str.len;

    while (s < end) {
        w = ngx_strlchr(s, end, ' ');
        w = w ? w : end;

        if (w > s) {
            h = ngx_crc32_short(s, w - s);
            v[h % NGX_HTTP_SMARTFLOW_ECHO_DIM] += (h & 0x10000) ? 1 : -1;
            tokens++;
        }

        s = w + 1;
    }

    return tokens;
}
