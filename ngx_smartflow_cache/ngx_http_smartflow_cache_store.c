/*
 * The answer's way into the cache and out of it.  A response tap gathers
 * the answer exactly as the client received it (OpenAI or Anthropic, JSON
 * or SSE); once it is complete and successful, from a deployment of the
 * model the client asked for (not a fallback), its text is stored in one
 * canonical form: the assistant's text, the finish reason and the token
 * counts.  Answers with tool calls, several choices, refusals or errors
 * are not stored.  A hit is served as the OpenAI chat.completion (or its
 * chunks when the client streams) an OpenAI provider would have sent, and
 * the proxy module's filters turn it into the client's own format, as
 * they do for any OpenAI-format provider.  A hit costs no tokens: its
 * usage reads zero.
 */

#include "ngx_http_smartflow_cache.h"

#if (defined __SSE2__)
#include <emmintrin.h>
#endif


typedef struct {
    ngx_pool_t                 *pool;
    u_char                     *text;
    size_t                      len;
    size_t                      size;
    ngx_str_t                   finish;
    unsigned                    anthropic:1;
    unsigned                    done:1;
    unsigned                    failed:1;
} ngx_http_smartflow_cache_asm_t;


static void ngx_http_smartflow_cache_req_cleanup(void *data);
static ngx_int_t ngx_http_smartflow_cache_complete(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_http_smartflow_cache_req_t *rq);
static ngx_int_t ngx_http_smartflow_cache_event(void *data,
    ngx_smartflow_sse_event_t *ev);
static void ngx_http_smartflow_cache_whole(ngx_http_smartflow_cache_asm_t *a,
    ngx_smartflow_json_t *j);
static void ngx_http_smartflow_cache_append(ngx_http_smartflow_cache_asm_t *a,
    ngx_smartflow_json_t *s);
static void ngx_http_smartflow_cache_finish(ngx_http_smartflow_cache_asm_t *a,
    ngx_smartflow_json_t *reason);
static ngx_uint_t ngx_http_smartflow_cache_is(ngx_smartflow_json_t *j,
    char *s);
static ngx_int_t ngx_http_smartflow_cache_scan_openai(
    ngx_http_smartflow_cache_asm_t *a, u_char *p, u_char *end);
static u_char *ngx_http_smartflow_cache_skip(u_char *p, u_char *end,
    ngx_uint_t depth);
static u_char *ngx_http_smartflow_cache_string(u_char *p, u_char *end,
    ngx_str_t *raw, ngx_uint_t *escaped);


/* the request's cache state, found again after internal redirects */
ngx_http_smartflow_cache_req_t *
ngx_http_smartflow_cache_req(ngx_http_request_t *r, ngx_uint_t create)
{
    ngx_pool_cleanup_t              *cln;
    ngx_http_smartflow_cache_req_t  *rq;

    rq = ngx_http_get_module_ctx(r, ngx_http_smartflow_cache_module);
    if (rq) {
        return rq;
    }

    for (cln = r->pool->cleanup; cln; cln = cln->next) {
        if (cln->handler == ngx_http_smartflow_cache_req_cleanup) {
            rq = cln->data;
            ngx_http_set_ctx(r, rq, ngx_http_smartflow_cache_module);
            return rq;
        }
    }

    if (!create) {
        return NULL;
    }

    cln = ngx_pool_cleanup_add(r->pool,
                               sizeof(ngx_http_smartflow_cache_req_t));
    if (cln == NULL) {
        return NULL;
    }

    rq = cln->data;
    ngx_memzero(rq, sizeof(ngx_http_smartflow_cache_req_t));
    cln->handler = ngx_http_smartflow_cache_req_cleanup;

    ngx_http_set_ctx(r, rq, ngx_http_smartflow_cache_module);

    return rq;
}


static void
ngx_http_smartflow_cache_req_cleanup(void *data)
{
    /* the state lives in the pool; the handler only marks it */
}


ngx_int_t
ngx_http_smartflow_cache_tap(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, u_char *p, size_t len, ngx_uint_t last)
{
    u_char                          *buf;
    size_t                           size;
    ngx_http_smartflow_cache_req_t  *rq;

    rq = ngx_http_smartflow_cache_req(r, 0);

    if (rq == NULL || !rq->store || rq->failed || ctx->cache_hit) {
        return NGX_OK;
    }

    if (len && last && rq->len == 0 && len <= rq->max_size) {
        /* the whole answer in one piece: read where it is, no copy */
        rq->buf = p;
        rq->len = len;
        len = 0;
    }

    if (len) {
        if (rq->len + len > rq->max_size) {
            ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                           "smartflow cache answer over %uz bytes: "
                           "not stored", rq->max_size);
            rq->failed = 1;
            return NGX_OK;
        }

        if (rq->len + len > rq->size) {
            size = ngx_max(rq->size * 2, rq->len + len);
            size = ngx_max(size, 4096);
            size = ngx_min(size, rq->max_size);

            buf = ngx_pnalloc(r->pool, size);
            if (buf == NULL) {
                return NGX_ERROR;
            }

            if (rq->len) {
                ngx_memcpy(buf, rq->buf, rq->len);
            }

            rq->buf = buf;
            rq->size = size;
        }

        ngx_memcpy(rq->buf + rq->len, p, len);
        rq->len += len;
    }

    if (!last) {
        return NGX_OK;
    }

    rq->store = 0;

    if (r->headers_out.status != NGX_HTTP_OK || ctx->route == NULL
        || ctx->route->fallback || ctx->stream_capped || ctx->err_status
        || rq->len == 0)
    {
        return NGX_OK;
    }

    return ngx_http_smartflow_cache_complete(r, ctx, rq);
}


static ngx_int_t
ngx_http_smartflow_cache_complete(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_http_smartflow_cache_req_t *rq)
{
    ngx_str_t                        err;
    ngx_smartflow_sse_t              sse;
    ngx_smartflow_json_t            *j;
    ngx_http_smartflow_cache_asm_t   a;

    ngx_memzero(&a, sizeof(ngx_http_smartflow_cache_asm_t));
    a.pool = r->pool;
    a.anthropic = (ctx->client_format == NGX_HTTP_SMARTFLOW_FORMAT_ANTHROPIC);

    if (ctx->stream) {
        ngx_memzero(&sse, sizeof(ngx_smartflow_sse_t));
        sse.pool = r->pool;
        sse.max = rq->max_size;

        if (ngx_smartflow_sse_feed(&sse, rq->buf, rq->len,
                                   ngx_http_smartflow_cache_event, &a)
            != NGX_OK)
        {
            a.failed = 1;
        }

    } else if (!a.anthropic
               && ngx_http_smartflow_cache_scan_openai(&a, rq->buf,
                                                       rq->buf + rq->len)
                  == NGX_OK)
    {
        /* the usual chat.completion, read in one scan without a tree */

    } else {
        ngx_memzero(&a, sizeof(ngx_http_smartflow_cache_asm_t));
        a.pool = r->pool;
        a.anthropic = (ctx->client_format
                       == NGX_HTTP_SMARTFLOW_FORMAT_ANTHROPIC);

        j = ngx_smartflow_json_parse(r->pool, rq->buf, rq->len, &err);
        if (j == NULL) {
            a.failed = 1;

        } else {
            ngx_http_smartflow_cache_whole(&a, j);
            a.done = 1;
        }
    }

    if (a.failed || !a.done || a.finish.len == 0) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "smartflow cache answer not stored: incomplete, "
                       "or not plain text");
        return NGX_OK;
    }

    rq->item.answer.data = a.text ? a.text : (u_char *) "";
    rq->item.answer.len = a.len;
    rq->item.finish = a.finish;
    rq->item.prompt_tokens = ctx->prompt_tokens;
    rq->item.completion_tokens = ctx->completion_tokens;

    if (ngx_smartflow_cache_insert(rq->zone, &rq->item, r->connection->log)
        == NGX_ERROR)
    {
        return NGX_ERROR;
    }

    ngx_http_smartflow_cache_redis_set(r, rq);

    return NGX_OK;
}


/* one event of the stream the client received */
static ngx_int_t
ngx_http_smartflow_cache_event(void *data, ngx_smartflow_sse_event_t *ev)
{
    ngx_http_smartflow_cache_asm_t *a = data;

    ngx_str_t              err, *name;
    ngx_smartflow_json_t  *j, *c, *d, *r;

    if (a->failed || a->done || ev->data.len == 0) {
        return NGX_OK;
    }

    if (!a->anthropic && ev->data.len == 6
        && ngx_strncmp(ev->data.data, "[DONE]", 6) == 0)
    {
        a->done = 1;
        return NGX_OK;
    }

    j = ngx_smartflow_json_parse(a->pool, ev->data.data, ev->data.len, &err);
    if (j == NULL || j->type != NGX_SMARTFLOW_JSON_OBJECT
        || ngx_smartflow_json_get(j, "error"))
    {
        a->failed = 1;
        return NGX_OK;
    }

    if (!a->anthropic) {
        c = ngx_smartflow_json_get(j, "choices");
        if (c == NULL || c->type != NGX_SMARTFLOW_JSON_ARRAY
            || c->nchild == 0)
        {
            return NGX_OK;          /* the usage chunk */
        }

        if (c->nchild > 1) {
            a->failed = 1;
            return NGX_OK;
        }

        c = c->child;
        d = ngx_smartflow_json_get(c, "delta");
        r = ngx_smartflow_json_get(d, "refusal");

        /* a call, or a refusal (its text is not the answer's), is not kept */
        if (ngx_smartflow_json_get(d, "tool_calls")
            || ngx_smartflow_json_get(d, "function_call")
            || (ngx_smartflow_json_is_string(r) && r->str.len))
        {
            a->failed = 1;
            return NGX_OK;
        }

        ngx_http_smartflow_cache_append(a,
                                        ngx_smartflow_json_get(d, "content"));
        ngx_http_smartflow_cache_finish(a,
                                  ngx_smartflow_json_get(c, "finish_reason"));
        return NGX_OK;
    }

    name = &ev->event;

    if (name->len == 19
        && ngx_strncmp(name->data, "content_block_start", 19) == 0)
    {
        c = ngx_smartflow_json_get(j, "content_block");
        if (!ngx_http_smartflow_cache_is(ngx_smartflow_json_get(c, "type"),
                                         "text"))
        {
            a->failed = 1;
        }

    } else if (name->len == 19
               && ngx_strncmp(name->data, "content_block_delta", 19) == 0)
    {
        d = ngx_smartflow_json_get(j, "delta");
        if (!ngx_http_smartflow_cache_is(ngx_smartflow_json_get(d, "type"),
                                         "text_delta"))
        {
            a->failed = 1;
            return NGX_OK;
        }

        ngx_http_smartflow_cache_append(a, ngx_smartflow_json_get(d, "text"));

    } else if (name->len == 13
               && ngx_strncmp(name->data, "message_delta", 13) == 0)
    {
        d = ngx_smartflow_json_get(j, "delta");
        ngx_http_smartflow_cache_finish(a,
                                  ngx_smartflow_json_get(d, "stop_reason"));

    } else if (name->len == 12
               && ngx_strncmp(name->data, "message_stop", 12) == 0)
    {
        a->done = 1;
    }

    return NGX_OK;
}


/* a whole answer: OpenAI's chat.completion or Anthropic's message */
static void
ngx_http_smartflow_cache_whole(ngx_http_smartflow_cache_asm_t *a,
    ngx_smartflow_json_t *j)
{
    ngx_smartflow_json_t  *c, *m, *b;

    if (j->type != NGX_SMARTFLOW_JSON_OBJECT
        || ngx_smartflow_json_get(j, "error"))
    {
        a->failed = 1;
        return;
    }

    if (!a->anthropic) {
        c = ngx_smartflow_json_get(j, "choices");
        if (c == NULL || c->type != NGX_SMARTFLOW_JSON_ARRAY
            || c->nchild != 1)
        {
            a->failed = 1;
            return;
        }

        m = ngx_smartflow_json_get(c->child, "message");
        b = ngx_smartflow_json_get(m, "tool_calls");

        if ((b && b->type != NGX_SMARTFLOW_JSON_NULL
             && !(b->type == NGX_SMARTFLOW_JSON_ARRAY && b->nchild == 0))
            || !ngx_smartflow_json_is_string(
                    ngx_smartflow_json_get(m, "content")))
        {
            a->failed = 1;
            return;
        }

        ngx_http_smartflow_cache_append(a, ngx_smartflow_json_get(m,
                                                                 "content"));
        ngx_http_smartflow_cache_finish(a,
                          ngx_smartflow_json_get(c->child, "finish_reason"));
        return;
    }

    c = ngx_smartflow_json_get(j, "content");
    if (c == NULL || c->type != NGX_SMARTFLOW_JSON_ARRAY) {
        a->failed = 1;
        return;
    }

    for (b = c->child; b; b = b->next) {
        if (!ngx_http_smartflow_cache_is(ngx_smartflow_json_get(b, "type"),
                                         "text"))
        {
            a->failed = 1;
            return;
        }

        ngx_http_smartflow_cache_append(a, ngx_smartflow_json_get(b, "text"));
    }

    ngx_http_smartflow_cache_finish(a, ngx_smartflow_json_get(j,
                                                             "stop_reason"));
}


static void
ngx_http_smartflow_cache_append(ngx_http_smartflow_cache_asm_t *a,
    ngx_smartflow_json_t *s)
{
    u_char  *p;
    size_t   size;

    if (!ngx_smartflow_json_is_string(s) || s->str.len == 0) {
        return;
    }

    if (a->len + s->str.len > a->size) {
        size = ngx_max(2 * a->size, a->len + s->str.len);
        size = ngx_max(size, 256);

        p = ngx_pnalloc(a->pool, size);
        if (p == NULL) {
            a->failed = 1;
            return;
        }

        if (a->len) {
            ngx_memcpy(p, a->text, a->len);
        }

        a->text = p;
        a->size = size;
    }

    ngx_memcpy(a->text + a->len, s->str.data, s->str.len);
    a->len += s->str.len;
}


/* kept in OpenAI's words; tool calls and refusals are not stored */
static void
ngx_http_smartflow_cache_finish(ngx_http_smartflow_cache_asm_t *a,
    ngx_smartflow_json_t *reason)
{
    if (!ngx_smartflow_json_is_string(reason)) {
        return;
    }

    if (ngx_http_smartflow_cache_is(reason, "stop")
        || ngx_http_smartflow_cache_is(reason, "end_turn")
        || ngx_http_smartflow_cache_is(reason, "stop_sequence"))
    {
        ngx_str_set(&a->finish, "stop");

    } else if (ngx_http_smartflow_cache_is(reason, "length")
               || ngx_http_smartflow_cache_is(reason, "max_tokens"))
    {
        ngx_str_set(&a->finish, "length");

    } else {
        a->failed = 1;
    }
}


static ngx_uint_t
ngx_http_smartflow_cache_is(ngx_smartflow_json_t *j, char *s)
{
    size_t  len;

    len = ngx_strlen(s);

    return ngx_smartflow_json_is_string(j) && j->str.len == len
           && ngx_strncmp(j->str.data, s, len) == 0;
}


ngx_int_t
ngx_http_smartflow_cache_serve(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_smartflow_cache_found_t *f)
{
    u_char     *p, *head, *id;
    size_t      len, alen, mlen, hlen, ilen;
    ngx_int_t   rc;
    ngx_str_t   body;
    ngx_uint_t  usage;

    alen = ngx_smartflow_json_escape_len(f->answer.data, f->answer.len);
    mlen = ngx_smartflow_json_escape_len(ctx->model.data, ctx->model.len);

    /* the id: the fingerprint's first bytes, the connection's number */
    ilen = sizeof("chatcmpl-sfc") + 4 * 2 + 2 * sizeof(ngx_atomic_uint_t);

    /* the head every chunk shares: id, object, created, model */
    hlen = sizeof("{\"id\":\"\",\"object\":"
                  "\"chat.completion.chunk\",\"created\":,\"model\":\"\",")
           + ilen + NGX_TIME_T_LEN + mlen;

    head = ngx_pnalloc(r->pool, hlen);
    if (head == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    id = ngx_pnalloc(r->pool, ilen);
    if (id == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_sprintf(id, "chatcmpl-sfc%02xd%02xd%02xd%02xd%xA",
                    f->fp[0], f->fp[1], f->fp[2], f->fp[3],
                    r->connection->number);
    *p = '\0';

    p = ngx_sprintf(head, "{\"id\":\"%s\",\"object\":\"%s\",\"created\":%T,"
                          "\"model\":\"", id,
                    ctx->stream ? "chat.completion.chunk" : "chat.completion",
                    ngx_time());
    p = (u_char *) ngx_smartflow_json_escape(p, ctx->model.data,
                                             ctx->model.len);
    p = ngx_sf_cpymem(p, "\",");
    hlen = p - head;

    len = 6 * hlen + alen + f->finish.len + 512;

    body.data = ngx_pnalloc(r->pool, len);
    if (body.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = body.data;

    if (!ctx->stream) {
        p = ngx_cpymem(p, head, hlen);
        p = ngx_sf_cpymem(p, "\"choices\":[{\"index\":0,\"message\":"
                             "{\"role\":\"assistant\",\"content\":\"");
        p = ngx_smartflow_json_escape(p, f->answer.data, f->answer.len);
        p = ngx_sprintf(p, "\",\"refusal\":null},\"logprobs\":null,"
                           "\"finish_reason\":\"%V\"}],\"usage\":"
                           "{\"prompt_tokens\":0,\"completion_tokens\":0,"
                           "\"total_tokens\":0}}", &f->finish);

    } else {
        p = ngx_sf_cpymem(p, "data: ");
        p = ngx_cpymem(p, head, hlen);
        p = ngx_sf_cpymem(p, "\"choices\":[{\"index\":0,\"delta\":"
                             "{\"role\":\"assistant\",\"content\":\"\"},"
                             "\"logprobs\":null,\"finish_reason\":null}]}"
                             "\n\n");

        if (f->answer.len) {
            p = ngx_sf_cpymem(p, "data: ");
            p = ngx_cpymem(p, head, hlen);
            p = ngx_sf_cpymem(p, "\"choices\":[{\"index\":0,\"delta\":"
                                 "{\"content\":\"");
            p = ngx_smartflow_json_escape(p, f->answer.data, f->answer.len);
            p = ngx_sf_cpymem(p, "\"},\"logprobs\":null,"
                                 "\"finish_reason\":null}]}\n\n");
        }

        p = ngx_sf_cpymem(p, "data: ");
        p = ngx_cpymem(p, head, hlen);
        p = ngx_sprintf(p, "\"choices\":[{\"index\":0,\"delta\":{},"
                           "\"logprobs\":null,\"finish_reason\":\"%V\"}]}"
                           "\n\n", &f->finish);

        /* as a provider sends it when asked, and translations ask */
        usage = (ctx->client_format != NGX_HTTP_SMARTFLOW_FORMAT_OPENAI
                 || !ctx->hide_usage);

        if (usage) {
            p = ngx_sf_cpymem(p, "data: ");
            p = ngx_cpymem(p, head, hlen);
            p = ngx_sf_cpymem(p, "\"choices\":[],\"usage\":"
                                 "{\"prompt_tokens\":0,"
                                 "\"completion_tokens\":0,"
                                 "\"total_tokens\":0}}\n\n");
        }

        p = ngx_sf_cpymem(p, "data: [DONE]\n\n");
    }

    body.len = p - body.data;

    /* the proxy's filters take it from here, as from an OpenAI provider */
    ctx->wire_format = NGX_HTTP_SMARTFLOW_FORMAT_OPENAI;
    ctx->translate = (ctx->client_format != NGX_HTTP_SMARTFLOW_FORMAT_OPENAI);
    ctx->prompt_tokens = 0;
    ctx->completion_tokens = 0;

    rc = ngx_http_smartflow_send(r, NGX_HTTP_OK, ctx->stream, &body);

    ngx_http_finalize_request(r, rc);

    return NGX_DONE;
}


/*
 * An OpenAI chat.completion as most are: one choice whose message has a
 * string content and no tool calls, and a finish_reason, read in one scan
 * of the answer (the text points into it when it has no escapes; one
 * with escapes is unescaped by the gateway's JSON reader).  NGX_DECLINED
 * for anything else, even valid (an error, several choices, a duplicate
 * member, deep nesting, a byte above ASCII, whose UTF-8 the tree parser
 * checks): the tree parser then decides, as it does for every other
 * answer.
 */

#define ngx_sf_ws(p, end)                                                    \
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) \
        p++

#define ngx_sf_key_is(k, s)                                                  \
    ((k).len == sizeof(s) - 1 && ngx_strncmp((k).data, s, sizeof(s) - 1) == 0)


static ngx_int_t
ngx_http_smartflow_cache_scan_openai(ngx_http_smartflow_cache_asm_t *a,
    u_char *p, u_char *end)
{
    ngx_str_t              key, content, reason, err;
    ngx_uint_t             esc, depth, seen_choices, seen_msg, seen_content,
                           seen_reason, seen_tools;
    ngx_smartflow_json_t  *j;

    seen_choices = 0;
    seen_msg = 0;
    seen_content = 0;
    seen_reason = 0;
    seen_tools = 0;
    esc = 0;
    ngx_str_null(&content);
    ngx_str_null(&reason);

    ngx_sf_ws(p, end);

    if (p == end || *p++ != '{') {
        return NGX_DECLINED;
    }

    /* depth 0: the answer's members, 1: a choice's, 2: its message's */
    depth = 0;

    for ( ;; ) {
        ngx_sf_ws(p, end);

        if (p < end && *p == '}') {
            p++;

            if (depth == 0) {
                break;
            }

            if (depth == 1) {
                /* the choice ends: no second one */
                ngx_sf_ws(p, end);

                if (p == end || *p++ != ']') {
                    return NGX_DECLINED;
                }
            }

            depth--;
            goto next;
        }

        p = ngx_http_smartflow_cache_string(p, end, &key, &esc);
        if (p == NULL || esc) {
            return NGX_DECLINED;
        }

        ngx_sf_ws(p, end);

        if (p == end || *p++ != ':') {
            return NGX_DECLINED;
        }

        ngx_sf_ws(p, end);

        if (p == end) {
            return NGX_DECLINED;
        }

        if (depth == 0 && ngx_sf_key_is(key, "error")) {
            return NGX_DECLINED;
        }

        if (depth == 0 && ngx_sf_key_is(key, "choices")) {
            if (seen_choices++ || *p++ != '[') {
                return NGX_DECLINED;
            }

            ngx_sf_ws(p, end);

            if (p == end || *p++ != '{') {
                return NGX_DECLINED;
            }

            depth = 1;
            continue;
        }

        if (depth == 1 && ngx_sf_key_is(key, "message")) {
            if (seen_msg++ || *p++ != '{') {
                return NGX_DECLINED;
            }

            depth = 2;
            continue;
        }

        if (depth == 1 && ngx_sf_key_is(key, "finish_reason")) {
            if (seen_reason++ || *p != '"') {
                return NGX_DECLINED;
            }

            p = ngx_http_smartflow_cache_string(p, end, &reason, &esc);
            if (p == NULL || esc) {
                return NGX_DECLINED;
            }

            goto next;
        }

        if (depth == 2 && ngx_sf_key_is(key, "content")) {
            if (seen_content++ || *p != '"') {
                return NGX_DECLINED;
            }

            p = ngx_http_smartflow_cache_string(p, end, &content, &esc);
            if (p == NULL || (esc & 2)) {
                return NGX_DECLINED;
            }

            if (esc) {
                /* the gateway's reader unescapes it, between its quotes */
                j = ngx_smartflow_json_parse(a->pool, content.data - 1,
                                             content.len + 2, &err);
                if (j == NULL || j->type != NGX_SMARTFLOW_JSON_STRING) {
                    return NGX_DECLINED;
                }

                content = j->str;
            }

            goto next;
        }

        if (depth == 2 && ngx_sf_key_is(key, "tool_calls")) {
            /* null or [] only */
            if (seen_tools++) {
                return NGX_DECLINED;
            }

            if (end - p >= 4 && ngx_strncmp(p, "null", 4) == 0) {
                p += 4;

            } else if (*p == '[') {
                p++;
                ngx_sf_ws(p, end);

                if (p == end || *p++ != ']') {
                    return NGX_DECLINED;
                }

            } else {
                return NGX_DECLINED;
            }

            goto next;
        }

        p = ngx_http_smartflow_cache_skip(p, end, 0);
        if (p == NULL) {
            return NGX_DECLINED;
        }

    next:

        ngx_sf_ws(p, end);

        if (p == end) {
            return NGX_DECLINED;
        }

        if (*p == ',') {
            p++;
            continue;
        }

        if (*p != '}') {
            return NGX_DECLINED;
        }
    }

    ngx_sf_ws(p, end);

    if (p != end || !seen_content || !seen_reason) {
        return NGX_DECLINED;
    }

    if (content.len) {
        a->text = content.data;
        a->len = content.len;
    }

    /* as ngx_http_smartflow_cache_finish() reads it */
    if (ngx_sf_key_is(reason, "stop")) {
        ngx_str_set(&a->finish, "stop");

    } else if (ngx_sf_key_is(reason, "length")) {
        ngx_str_set(&a->finish, "length");

    } else {
        return NGX_DECLINED;
    }

    a->done = 1;

    return NGX_OK;
}


/* past one JSON value; NULL when it is not one, or nests too deep */
static u_char *
ngx_http_smartflow_cache_skip(u_char *p, u_char *end, ngx_uint_t depth)
{
    u_char      close;
    ngx_str_t   s;
    ngx_uint_t  esc, first;

    if (p == end || depth > 32) {
        return NULL;
    }

    switch (*p) {

    case '"':
        p = ngx_http_smartflow_cache_string(p, end, &s, &esc);
        return (esc & 2) ? NULL : p;

    case '{':
    case '[':
        close = (*p == '{') ? '}' : ']';
        p++;

        for (first = 1; /* void */; first = 0) {
            ngx_sf_ws(p, end);

            if (p == end) {
                return NULL;
            }

            if (*p == close && first) {
                return p + 1;
            }

            if (close == '}') {
                p = ngx_http_smartflow_cache_string(p, end, &s, &esc);
                if (p == NULL || (esc & 2)) {
                    return NULL;
                }

                ngx_sf_ws(p, end);

                if (p == end || *p++ != ':') {
                    return NULL;
                }

                ngx_sf_ws(p, end);
            }

            p = ngx_http_smartflow_cache_skip(p, end, depth + 1);
            if (p == NULL) {
                return NULL;
            }

            ngx_sf_ws(p, end);

            if (p == end) {
                return NULL;
            }

            if (*p == close) {
                return p + 1;
            }

            if (*p++ != ',') {
                return NULL;
            }
        }

    case 't':
        return (end - p >= 4 && ngx_strncmp(p, "true", 4) == 0)
               ? p + 4 : NULL;

    case 'f':
        return (end - p >= 5 && ngx_strncmp(p, "false", 5) == 0)
               ? p + 5 : NULL;

    case 'n':
        return (end - p >= 4 && ngx_strncmp(p, "null", 4) == 0)
               ? p + 4 : NULL;

    default:
        /* -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
        if (*p == '-') {
            p++;
        }

        if (p == end || !ngx_sf_isdigit(*p)) {
            return NULL;
        }

        if (*p++ != '0') {
            while (p < end && ngx_sf_isdigit(*p)) {
                p++;
            }
        }

        if (p < end && *p == '.') {
            if (++p == end || !ngx_sf_isdigit(*p)) {
                return NULL;
            }

            while (p < end && ngx_sf_isdigit(*p)) {
                p++;
            }
        }

        if (p < end && (*p == 'e' || *p == 'E')) {
            if (++p < end && (*p == '+' || *p == '-')) {
                p++;
            }

            if (p == end || !ngx_sf_isdigit(*p)) {
                return NULL;
            }

            while (p < end && ngx_sf_isdigit(*p)) {
                p++;
            }
        }

        return p;
    }
}


/* a string at p (its opening quote): raw, its text between the quotes */
static u_char *
ngx_http_smartflow_cache_string(u_char *p, u_char *end, ngx_str_t *raw,
    ngx_uint_t *escaped)
{
    u_char  *start;

    *escaped = 0;

    if (p == end || *p != '"') {
        return NULL;
    }

    start = ++p;

    while (p < end) {

        /* up to the first quote, backslash, control or non-ASCII byte */
        p = ngx_smartflow_json_run(p, end, 1);

        if (p == end) {
            break;
        }

        if (*p == '"') {
            raw->data = start;
            raw->len = p - start;
            return p + 1;
        }

        if (*p < 0x20) {
            return NULL;
        }

        if (*p >= 0x80) {
            /* UTF-8 the tree parser checks */
            *escaped |= 2;
        }

        if (*p == '\\') {
            *escaped |= 1;

            if (++p == end) {
                return NULL;
            }
        }

        p++;
    }

    return NULL;
}
