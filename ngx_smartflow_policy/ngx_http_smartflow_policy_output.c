/*
 * The answer, for groups with "output on": the proxy's response filter
 * hands over each stream event and each whole JSON answer in the
 * client's format (the output scanner).  PII, secrets and custom
 * patterns are redacted, flagged or blocked in the text the model wrote
 * and in its tool calls' arguments; Shield reads the tool calls.  In a
 * stream the last NGX_SF_OUT_HOLD bytes of each block's text are held
 * back until more text or the block's end arrives, so a finding split
 * across events is still found and replaced whole; a block ends the
 * stream with an error event in the client's format.  A whole answer
 * that is blocked keeps its status and says so the way each API does:
 * finish_reason "content_filter" with a refusal (OpenAI), stop_reason
 * "refusal" (Anthropic).
 */

#include "ngx_http_smartflow_policy.h"


static ngx_int_t ngx_http_smartflow_policy_scan(
    ngx_http_smartflow_policy_run_t *run, ngx_smartflow_json_t *answer,
    ngx_str_t *event, ngx_array_t *out);
static ngx_int_t ngx_http_smartflow_policy_answer(
    ngx_http_smartflow_policy_run_t *run, ngx_smartflow_json_t *answer);
static ngx_int_t ngx_http_smartflow_policy_refuse_answer(
    ngx_http_smartflow_policy_run_t *run, ngx_smartflow_json_t *answer);
static ngx_int_t ngx_http_smartflow_policy_openai_event(
    ngx_http_smartflow_policy_run_t *run, ngx_str_t *data,
    ngx_array_t *out);
static ngx_int_t ngx_http_smartflow_policy_anthropic_event(
    ngx_http_smartflow_policy_run_t *run, ngx_str_t *name, ngx_str_t *data,
    ngx_array_t *out);
static ngx_int_t ngx_http_smartflow_policy_hold(
    ngx_http_smartflow_policy_run_t *run, ngx_uint_t block, ngx_str_t *add,
    ngx_uint_t final, ngx_str_t *emit);
static ngx_int_t ngx_http_smartflow_policy_append(ngx_pool_t *pool,
    ngx_str_t *s, u_char **end, ngx_str_t *add);
static ngx_int_t ngx_http_smartflow_policy_event_out(
    ngx_http_smartflow_policy_run_t *run, char *name,
    ngx_smartflow_json_t *j, ngx_array_t *out);
static ngx_int_t ngx_http_smartflow_policy_error_event(
    ngx_http_smartflow_policy_run_t *run, ngx_array_t *out);
static ngx_int_t ngx_http_smartflow_policy_split(ngx_pool_t *pool,
    ngx_str_t *ev, ngx_str_t *name, ngx_str_t *data);
static ngx_int_t ngx_http_smartflow_policy_hold_call(
    ngx_http_smartflow_policy_run_t *run, ngx_uint_t index, ngx_str_t *add);
static ngx_http_smartflow_policy_call_t *ngx_http_smartflow_policy_find_call(
    ngx_http_smartflow_policy_run_t *run, ngx_uint_t index);
static ngx_int_t ngx_http_smartflow_policy_args(
    ngx_http_smartflow_policy_run_t *run, ngx_str_t *args);
static ngx_int_t ngx_http_smartflow_policy_doc(
    ngx_http_smartflow_policy_run_t *run, ngx_smartflow_json_t *doc);
static ngx_int_t ngx_http_smartflow_policy_openai_calls(
    ngx_http_smartflow_policy_run_t *run, ngx_smartflow_json_t *j,
    ngx_uint_t cidx, ngx_array_t *out);
static ngx_smartflow_json_t *ngx_http_smartflow_policy_copy(ngx_pool_t *pool,
    ngx_smartflow_json_t *j);
static ngx_int_t ngx_http_smartflow_policy_anthropic_start(
    ngx_http_smartflow_policy_run_t *run, ngx_str_t *data, ngx_array_t *out);
static ngx_int_t ngx_http_smartflow_policy_anthropic_delta(
    ngx_http_smartflow_policy_run_t *run, ngx_smartflow_json_t *index,
    char *type, char *field, ngx_str_t *value, ngx_array_t *out);


static ngx_str_t  ngx_http_smartflow_policy_empty = ngx_null_string;


/* the characters of API keys, tokens, JWTs and base64 */
#define ngx_http_smartflow_policy_token(c)                                   \
    (((c) >= 'a' && (c) <= 'z') || ((c) >= 'A' && (c) <= 'Z')              \
     || ((c) >= '0' && (c) <= '9') || (c) == '-' || (c) == '_'             \
     || (c) == '.' || (c) == '+' || (c) == '/' || (c) == '=')


ngx_int_t
ngx_http_smartflow_policy_output(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_smartflow_json_t *answer,
    ngx_str_t *event, ngx_array_t *out)
{
    ngx_int_t                         rc;
    ngx_http_smartflow_policy_run_t  *run;

    run = ngx_http_smartflow_policy_run(r);

    if (run == NULL) {
        return answer ? NGX_OK : NGX_DECLINED;
    }

    run->ctx = ctx;

    /*
     * a stream event is read and written again in the pool out is in,
     * the filter's scratch pool, reset after the event: what is kept
     * from one event to the next (the held text, the tool calls'
     * arguments, the placeholders, the decisions) is in r->pool
     */
    run->pool = out ? out->pool : r->pool;

    rc = ngx_http_smartflow_policy_scan(run, answer, event, out);

    run->pool = r->pool;

    return rc;
}


static ngx_int_t
ngx_http_smartflow_policy_scan(ngx_http_smartflow_policy_run_t *run,
    ngx_smartflow_json_t *answer, ngx_str_t *event, ngx_array_t *out)
{
    ngx_int_t                  rc;
    ngx_str_t                  name, data;
    ngx_uint_t                 i, ndecided;
    ngx_http_request_t        *r;
    ngx_http_smartflow_ctx_t  *ctx;

    r = run->r;
    ctx = run->ctx;
    ndecided = run->ndecided;

    if (answer) {
        rc = ngx_http_smartflow_policy_answer(run, answer);

    } else if ((rc = ngx_http_smartflow_policy_split(run->pool, event, &name,
                                                     &data))
               != NGX_OK)
    {
        /* NGX_DECLINED: no data, not an event to scan */

    } else if (ctx->client_format == NGX_HTTP_SMARTFLOW_FORMAT_ANTHROPIC) {
        rc = ngx_http_smartflow_policy_anthropic_event(run, &name, &data,
                                                       out);

    } else {
        rc = ngx_http_smartflow_policy_openai_event(run, &data, out);
    }

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (run->block && rc != NGX_ABORT) {
        /* a finding blocks the answer */
        if (answer) {
            rc = ngx_http_smartflow_policy_refuse_answer(run, answer);

        } else {
            out->nelts = 0;
            rc = ngx_http_smartflow_policy_error_event(run, out);
            rc = (rc == NGX_OK) ? NGX_ABORT : NGX_ERROR;
        }

        ngx_http_smartflow_policy_rule(run, run->block_type, &name);

        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "smartflow policy: rule \"%V\"%s%s of group \"%V\" "
                      "blocked the answer", &name,
                      run->block_detail ? " " : "",
                      run->block_detail ? run->block_detail : "",
                      &run->g->name);
    }

    /* the decisions, for the audit record, with the answer's added */
    run->ndecided = 0;

    for (i = 0; i < NGX_SF_NTYPES; i++) {
        run->ndecided += run->decided[i];
    }

    if (run->ndecided != ndecided
        && ngx_http_smartflow_policy_decisions(run) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return rc;
}


/*
 * An event into its name and data, as an SSE reader takes it: lines end
 * with LF, CRLF or CR, one space after the colon is dropped, several
 * "data" lines are one text joined by LF, comments and other fields are
 * skipped.
 */
static ngx_int_t
ngx_http_smartflow_policy_split(ngx_pool_t *pool, ngx_str_t *ev,
    ngx_str_t *name, ngx_str_t *data)
{
    u_char      *p, *last, *eol, *v, *d;
    size_t       n;
    ngx_uint_t   lines;

    ngx_str_null(name);
    ngx_str_null(data);

    p = ev->data;
    last = ev->data + ev->len;
    lines = 0;

    while (p < last) {
        for (eol = p; eol < last && *eol != '\n' && *eol != '\r'; eol++) {
            /* void */
        }

        n = eol - p;
        v = NULL;

        if (n >= 5 && ngx_strncmp(p, "data:", 5) == 0) {
            v = p + 5;

        } else if (n >= 6 && ngx_strncmp(p, "event:", 6) == 0) {
            name->data = p + 6;
            name->len = n - 6;

            if (name->len && name->data[0] == ' ') {
                name->data++;
                name->len--;
            }
        }

        if (v) {
            if (v < eol && *v == ' ') {
                v++;
            }

            if (lines++ == 0) {
                data->data = v;
                data->len = eol - v;

            } else {
                d = ngx_pnalloc(pool, data->len + 1 + (eol - v));
                if (d == NULL) {
                    return NGX_ERROR;
                }

                ngx_memcpy(d, data->data, data->len);
                d[data->len] = '\n';
                ngx_memcpy(d + data->len + 1, v, eol - v);

                data->data = d;
                data->len += 1 + (eol - v);
            }
        }

        p = eol;

        if (p < last && *p == '\r') {
            p++;
        }

        if (p < last && *p == '\n') {
            p++;
        }
    }

    return lines ? NGX_OK : NGX_DECLINED;
}


/*
 * One block's text: what was held plus what arrives, scanned; what lies
 * NGX_SF_OUT_HOLD bytes before the end (or all of it at the block's
 * end) goes out redacted, the rest is held.  The cut never falls inside
 * a finding, inside a run of the characters keys and tokens are made of
 * (a JWT or an API key is found only whole, whatever its length), or
 * inside a UTF-8 character.  Once more than NGX_SF_OUT_HOLD_MAX bytes
 * are held (a private key's BEGIN line without its END, a run of base64
 * that does not end), the block is held whole to its end and scanned
 * once then, so that the scans do not grow with the square of the
 * answer; a single piece of text larger than that is still cut as
 * above.
 */
static ngx_int_t
ngx_http_smartflow_policy_hold(ngx_http_smartflow_policy_run_t *run,
    ngx_uint_t block, ngx_str_t *add, ngx_uint_t final, ngx_str_t *emit)
{
    u_char                             *p;
    size_t                              safe, held;
    ngx_str_t                          *pend;
    ngx_uint_t                          i, n, b;
    ngx_smartflow_json_t                j;
    ngx_http_smartflow_policy_group_t  *g;

    g = run->g;
    b = (block < NGX_SF_OUT_BLOCKS) ? block : 0;
    pend = &run->pending[b];
    held = pend->len;

    if (ngx_http_smartflow_policy_append(run->r->pool, pend,
                                         &run->pending_end[b], add)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    safe = pend->len;
    p = pend->data;

    if (!final) {
        safe = 0;
    }

    if (!final && pend->len > NGX_SF_OUT_HOLD
        && (pend->len <= NGX_SF_OUT_HOLD_MAX || held <= NGX_SF_OUT_HOLD))
    {
        safe = pend->len - NGX_SF_OUT_HOLD;

        while (safe > 0 && ngx_http_smartflow_policy_token(p[safe - 1])
               && ngx_http_smartflow_policy_token(p[safe]))
        {
            safe--;
        }

        n = ngx_smartflow_pii_scan(p, pend->len, g->pii_mask, g->custom,
                                   g->ncustom, run->f, NGX_SF_MAX_FINDINGS);

        for (i = 0; i < n; i++) {
            if (run->f[i].start < safe && run->f[i].end > safe) {
                safe = run->f[i].start;
            }
        }

        if (n == NGX_SF_MAX_FINDINGS) {
            /* more than a scan keeps: one not kept could cross the cut */
            safe = 0;
        }

        while (safe > 0 && (p[safe] & 0xc0) == 0x80) {
            safe--;
        }
    }

    ngx_memzero(&j, sizeof(ngx_smartflow_json_t));
    j.type = NGX_SMARTFLOW_JSON_STRING;
    j.str.data = p;
    j.str.len = safe;

    if (ngx_http_smartflow_policy_text(run, &j, NGX_SF_SCAN_PII) != NGX_OK) {
        return NGX_ERROR;
    }

    *emit = j.str;

    pend->data += safe;
    pend->len -= safe;

    return NGX_OK;
}


/*
 * add after the held text s, whose buffer ends at *end: in place while
 * the buffer has room, else in a new one of twice what it holds then, so
 * that the copies stay linear in the answer's length (an emitted piece
 * may still point into the old buffer: it is never written again)
 */
static ngx_int_t
ngx_http_smartflow_policy_append(ngx_pool_t *pool, ngx_str_t *s,
    u_char **end, ngx_str_t *add)
{
    u_char  *p;
    size_t   size;

    if (add->len == 0) {
        return NGX_OK;
    }

    if (s->data && (size_t) (*end - (s->data + s->len)) >= add->len) {
        ngx_memcpy(s->data + s->len, add->data, add->len);
        s->len += add->len;
        return NGX_OK;
    }

    size = ngx_max(2 * (s->len + add->len), 1024);

    p = ngx_pnalloc(pool, size);
    if (p == NULL) {
        return NGX_ERROR;
    }

    if (s->len) {
        ngx_memcpy(p, s->data, s->len);
    }

    ngx_memcpy(p + s->len, add->data, add->len);

    s->data = p;
    s->len += add->len;
    *end = p + size;

    return NGX_OK;
}


/* an OpenAI chat.completion.chunk */
static ngx_int_t
ngx_http_smartflow_policy_openai_event(ngx_http_smartflow_policy_run_t *run,
    ngx_str_t *data, ngx_array_t *out)
{
    ngx_str_t                          err, text;
    ngx_uint_t                         i, idx, cidx, finish, changed, keep;
    ngx_smartflow_json_t              *j, *choice, *delta, *content, *calls;
    ngx_smartflow_json_t              *flush, *fr, *call, *fn;
    ngx_http_smartflow_policy_call_t  *call_t;

    if (data->len == 6 && ngx_strncmp(data->data, "[DONE]", 6) == 0) {
        return NGX_DECLINED;
    }

    j = ngx_smartflow_json_parse(run->pool, data->data, data->len, &err);
    if (j == NULL) {
        return NGX_DECLINED;
    }

    choice = ngx_smartflow_json_get(j, "choices");
    choice = (choice && choice->type == NGX_SMARTFLOW_JSON_ARRAY)
             ? choice->child : NULL;

    if (choice == NULL) {
        return NGX_DECLINED;
    }

    /*
     * each choice of an answer with several (n > 1) has its own held text
     * and calls; a chunk carries one choice, as OpenAI streams them, and
     * one that carries more, or a choice past the blocks kept, ends the
     * stream rather than pass unread
     */
    fr = ngx_smartflow_json_get(choice, "index");
    cidx = (fr && fr->type == NGX_SMARTFLOW_JSON_NUMBER)
           ? (ngx_uint_t) ngx_atoi(fr->str.data, fr->str.len) : 0;

    if (choice->next || cidx >= NGX_SF_OUT_BLOCKS) {
        ngx_log_error(NGX_LOG_ERR, run->r->connection->log, 0,
                      "smartflow policy: a stream event with %s cannot be "
                      "scanned, the answer is cut short",
                      choice->next ? "several choices"
                                   : "a choice index of 8 or more");
        return NGX_ERROR;
    }

    delta = ngx_smartflow_json_get(choice, "delta");
    fr = ngx_smartflow_json_get(choice, "finish_reason");
    finish = (fr && fr->type == NGX_SMARTFLOW_JSON_STRING);
    changed = 0;

    /*
     * The tool calls' arguments are held, whole, until the answer's
     * finish: the events that only carry a piece of them are dropped, the
     * ones that start a call go on with their arguments emptied.
     */
    calls = ngx_smartflow_json_get(delta, "tool_calls");

    if (calls && calls->type == NGX_SMARTFLOW_JSON_ARRAY) {
        keep = 0;

        for (call = calls->child; call; call = call->next) {
            fr = ngx_smartflow_json_get(call, "index");
            idx = (fr && fr->type == NGX_SMARTFLOW_JSON_NUMBER)
                  ? (ngx_uint_t) ngx_atoi(fr->str.data, fr->str.len) : 0;

            if (idx >= NGX_SF_OUT_CALLS) {
                ngx_log_error(NGX_LOG_ERR, run->r->connection->log, 0,
                              "smartflow policy: a tool call index of %ui "
                              "cannot be scanned, the answer is cut short",
                              idx);
                return NGX_ERROR;
            }

            idx += cidx * NGX_SF_OUT_CALLS;

            fn = ngx_smartflow_json_get(call, "function");

            if (ngx_smartflow_json_get(call, "id")
                || ngx_smartflow_json_get(fn, "name"))
            {
                keep = 1;
            }

            fr = ngx_smartflow_json_get(fn, "arguments");

            if (!ngx_smartflow_json_is_string(fr)) {
                continue;
            }

            if (ngx_http_smartflow_policy_hold_call(run, idx, &fr->str)
                != NGX_OK)
            {
                return NGX_ERROR;
            }

            if (fr->str.len) {
                fr->str.len = 0;
                changed = 1;
            }
        }

        if (!keep && !finish && delta->nchild == 1) {
            /* only arguments: they wait for the call's end */
            return NGX_OK;
        }
    }

    if (finish && run->calls && run->calls->nelts) {
        /* the calls, whole: Shield and the detectors before any goes out */
        call_t = run->calls->elts;

        for (i = 0; i < run->calls->nelts && !run->block; i++) {
            if (call_t[i].index / NGX_SF_OUT_CALLS != cidx) {
                continue;       /* another choice's, or ended */
            }

            if (ngx_http_smartflow_policy_args(run, &call_t[i].args)
                != NGX_OK)
            {
                return NGX_ERROR;
            }
        }

        if (run->block) {
            return NGX_OK;
        }
    }

    content = ngx_smartflow_json_get(delta, "content");

    if (ngx_smartflow_json_is_string(content)) {
        if (ngx_http_smartflow_policy_hold(run, cidx, &content->str, finish,
                                           &text)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        if (text.len == 0 && !finish && delta->nchild == 1) {
            /* all of it held back: the event waits for the text after it */
            return NGX_OK;
        }

        content->str = text;
        content->str_plain = NULL;
        changed = 1;

    } else if (finish && run->pending[cidx].len) {
        /* the text held back goes out before the end */
        if (ngx_http_smartflow_policy_hold(run, cidx,
                                           &ngx_http_smartflow_policy_empty,
                                           1, &text)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        flush = ngx_smartflow_json_parse(run->pool, data->data, data->len,
                                         &err);
        if (flush == NULL) {
            return NGX_ERROR;
        }

        choice = ngx_smartflow_json_get(flush, "choices")->child;
        delta = ngx_smartflow_json_get(choice, "delta");

        if (delta == NULL) {
            /* a finish without a delta still gets the held text out */
            delta = ngx_smartflow_json_new(run->pool,
                                           NGX_SMARTFLOW_JSON_OBJECT, NULL);
            if (delta == NULL) {
                return NGX_ERROR;
            }

            ngx_smartflow_json_append(choice, "delta", delta);
        }

        delta->type = NGX_SMARTFLOW_JSON_OBJECT;
        ngx_str_null(&delta->str);
        delta->str_plain = NULL;
        delta->child = NULL;
        delta->last = NULL;
        delta->nchild = 0;

        if (ngx_smartflow_json_set_str(run->pool, delta, "content", &text)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        fr = ngx_smartflow_json_get(choice, "finish_reason");
        fr->type = NGX_SMARTFLOW_JSON_NULL;
        ngx_str_set(&fr->str, "null");

        if (ngx_http_smartflow_policy_event_out(run, NULL, flush, out)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        changed = 1;
    }

    if (run->block) {
        return NGX_OK;
    }

    if (finish && run->calls && run->calls->nelts) {
        /* the arguments held, one event per call, before the finish */
        if (ngx_http_smartflow_policy_openai_calls(run, j, cidx, out)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        changed = 1;
    }

    if (!changed) {
        return NGX_DECLINED;
    }

    return ngx_http_smartflow_policy_event_out(run, NULL, j, out);
}


/* an Anthropic Messages stream event */
static ngx_int_t
ngx_http_smartflow_policy_anthropic_event(
    ngx_http_smartflow_policy_run_t *run, ngx_str_t *name, ngx_str_t *data,
    ngx_array_t *out)
{
    ngx_str_t                          err, text;
    ngx_uint_t                         idx, stop;
    ngx_smartflow_json_t              *j, *delta, *type, *t;
    ngx_http_smartflow_policy_call_t  *held;

    stop = (name->len == 18
            && ngx_strncmp(name->data, "content_block_stop", 18) == 0);

    if (name->len == 19
        && ngx_strncmp(name->data, "content_block_start", 19) == 0)
    {
        return ngx_http_smartflow_policy_anthropic_start(run, data, out);
    }

    if (!stop && !(name->len == 19
                   && ngx_strncmp(name->data, "content_block_delta", 19)
                      == 0))
    {
        return NGX_DECLINED;
    }

    j = ngx_smartflow_json_parse(run->pool, data->data, data->len, &err);
    if (j == NULL) {
        return NGX_DECLINED;
    }

    t = ngx_smartflow_json_get(j, "index");
    idx = (t && t->type == NGX_SMARTFLOW_JSON_NUMBER)
          ? (ngx_uint_t) ngx_atoi(t->str.data, t->str.len) : 0;

    if (idx >= NGX_SF_OUT_BLOCKS) {
        idx = NGX_SF_OUT_BLOCKS - 1;
    }

    if (stop) {
        held = ngx_http_smartflow_policy_find_call(run, idx);

        if (held) {
            /* a tool_use block's input, whole, as one delta before the stop */
            if (ngx_http_smartflow_policy_args(run, &held->args) != NGX_OK) {
                return NGX_ERROR;
            }

            held->index = NGX_MAX_UINT32_VALUE;

            if (run->block) {
                return NGX_OK;
            }

            if (ngx_http_smartflow_policy_anthropic_delta(run, t,
                                                          "input_json_delta",
                                                          "partial_json",
                                                          &held->args, out)
                != NGX_OK)
            {
                return NGX_ERROR;
            }

            if (run->pending[idx].len == 0) {
                return ngx_http_smartflow_policy_event_out(run,
                                                   "content_block_stop", j,
                                                   out);
            }
        }

        if (run->block || run->pending[idx].len == 0) {
            return run->block ? NGX_OK : NGX_DECLINED;
        }

        /* the text held back, as one more delta before the stop */
        if (ngx_http_smartflow_policy_hold(run, idx,
                                           &ngx_http_smartflow_policy_empty,
                                           1, &text)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        if (run->block) {
            return NGX_OK;
        }

        if (ngx_http_smartflow_policy_anthropic_delta(run, t, "text_delta",
                                                      "text", &text, out)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        return ngx_http_smartflow_policy_event_out(run, "content_block_stop",
                                                   j, out);
    }

    delta = ngx_smartflow_json_get(j, "delta");
    type = ngx_smartflow_json_get(delta, "type");

    if (!ngx_smartflow_json_is_string(type)) {
        return NGX_DECLINED;
    }

    if (type->str.len == 16
        && ngx_strncmp(type->str.data, "input_json_delta", 16) == 0)
    {
        /* the input waits, whole, for the block's stop */
        t = ngx_smartflow_json_get(delta, "partial_json");

        if (ngx_smartflow_json_is_string(t)
            && ngx_http_smartflow_policy_hold_call(run, idx, &t->str)
               != NGX_OK)
        {
            return NGX_ERROR;
        }

        return NGX_OK;
    }

    if (!(type->str.len == 10
          && ngx_strncmp(type->str.data, "text_delta", 10) == 0))
    {
        return NGX_DECLINED;
    }

    t = ngx_smartflow_json_get(delta, "text");
    if (!ngx_smartflow_json_is_string(t)) {
        return NGX_DECLINED;
    }

    if (ngx_http_smartflow_policy_hold(run, idx, &t->str, 0, &text)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (run->block || text.len == 0) {
        /* all of it held back: the event waits for the text after it */
        return NGX_OK;
    }

    t->str = text;
    t->str_plain = NULL;

    return ngx_http_smartflow_policy_event_out(run, "content_block_delta", j,
                                               out);
}


/* a piece of a tool call's arguments, added to what the call holds */
static ngx_int_t
ngx_http_smartflow_policy_hold_call(ngx_http_smartflow_policy_run_t *run,
    ngx_uint_t index, ngx_str_t *add)
{
    u_char                            *p;
    size_t                             size;
    ngx_uint_t                         i;
    ngx_http_smartflow_policy_call_t  *call, *c;

    call = ngx_http_smartflow_policy_find_call(run, index);

    if (call == NULL) {
        if (run->calls == NULL) {
            run->calls = ngx_array_create(run->r->pool, 2,
                                 sizeof(ngx_http_smartflow_policy_call_t));
            if (run->calls == NULL) {
                return NGX_ERROR;
            }
        }

        /* a call that ended leaves its place */
        c = run->calls->elts;

        for (i = 0; i < run->calls->nelts; i++) {
            if (c[i].index == NGX_MAX_UINT32_VALUE) {
                call = &c[i];
                break;
            }
        }

        if (call == NULL) {
            call = ngx_array_push(run->calls);
            if (call == NULL) {
                return NGX_ERROR;
            }
        }

        call->index = index;
        ngx_str_null(&call->args);
        call->size = 0;
    }

    if (add->len == 0) {
        return NGX_OK;
    }

    if (call->args.len + add->len > call->size) {
        /* room doubled: a call streamed in many pieces is copied O(n) */
        size = ngx_max(2 * call->size, call->args.len + add->len);
        size = ngx_max(size, 256);

        p = ngx_pnalloc(run->r->pool, size);
        if (p == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(p, call->args.data, call->args.len);
        call->args.data = p;
        call->size = size;
    }

    ngx_memcpy(call->args.data + call->args.len, add->data, add->len);
    call->args.len += add->len;

    return NGX_OK;
}


static ngx_http_smartflow_policy_call_t *
ngx_http_smartflow_policy_find_call(ngx_http_smartflow_policy_run_t *run,
    ngx_uint_t index)
{
    ngx_uint_t                         i;
    ngx_http_smartflow_policy_call_t  *c;

    if (run->calls == NULL) {
        return NULL;
    }

    c = run->calls->elts;

    for (i = 0; i < run->calls->nelts; i++) {
        if (c[i].index == index) {
            return &c[i];
        }
    }

    return NULL;
}


/*
 * A tool call's arguments, whole: Shield reads the command; the
 * detectors read the string values of the JSON document decoded (an
 * escape cannot hide a value, a placeholder cannot break the document),
 * which is written again only if a value was redacted.  Arguments that
 * are not JSON are scanned as they are: a placeholder has no quote nor
 * backslash to escape.
 */
static ngx_int_t
ngx_http_smartflow_policy_args(ngx_http_smartflow_policy_run_t *run,
    ngx_str_t *args)
{
    ngx_int_t              rc;
    ngx_str_t              err;
    ngx_uint_t             redacted;
    ngx_smartflow_json_t  *doc;

    if (args->len == 0) {
        return NGX_OK;
    }

    if (run->shield_on) {
        ngx_http_smartflow_policy_shield(run, args->data, args->len);

        if (run->block) {
            return NGX_OK;
        }
    }

    doc = ngx_smartflow_json_parse(run->pool, args->data, args->len, &err);

    if (doc == NULL
        || (doc->type != NGX_SMARTFLOW_JSON_OBJECT
            && doc->type != NGX_SMARTFLOW_JSON_ARRAY))
    {
        doc = ngx_smartflow_json_new(run->pool, NGX_SMARTFLOW_JSON_STRING,
                                     args);
        if (doc == NULL
            || ngx_http_smartflow_policy_text(run, doc, NGX_SF_SCAN_PII)
               != NGX_OK)
        {
            return NGX_ERROR;
        }

        *args = doc->str;

        return NGX_OK;
    }

    redacted = run->redacted;
    run->redacted = 0;

    rc = ngx_http_smartflow_policy_doc(run, doc);

    if (rc == NGX_OK && run->redacted && !run->block) {
        /* a streamed call ends with this event: its pool will do */
        rc = ngx_smartflow_json_dump(run->pool, doc, args);
    }

    run->redacted |= redacted;

    return rc;
}


/* the string values of a JSON document, at any depth */
static ngx_int_t
ngx_http_smartflow_policy_doc(ngx_http_smartflow_policy_run_t *run,
    ngx_smartflow_json_t *doc)
{
    ngx_smartflow_json_t  *c;

    if (ngx_smartflow_json_is_string(doc)) {
        return ngx_http_smartflow_policy_text(run, doc, NGX_SF_SCAN_PII);
    }

    if (doc->type != NGX_SMARTFLOW_JSON_OBJECT
        && doc->type != NGX_SMARTFLOW_JSON_ARRAY)
    {
        return NGX_OK;
    }

    for (c = doc->child; c && !run->block; c = c->next) {
        if (ngx_http_smartflow_policy_doc(run, c) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * The held calls' arguments as chunks of their own, made like the
 * finishing chunk j (id, object, created, model ...): one delta per call
 * with its whole arguments and no finish reason yet.
 */
static ngx_int_t
ngx_http_smartflow_policy_openai_calls(ngx_http_smartflow_policy_run_t *run,
    ngx_smartflow_json_t *j, ngx_uint_t cidx, ngx_array_t *out)
{
    ngx_str_t                          v;
    ngx_uint_t                         i, idx;
    ngx_pool_t                        *pool;
    ngx_smartflow_json_t              *chunk, *m, *choices, *choice, *delta;
    ngx_smartflow_json_t              *calls, *call, *fn, *n, *ci, *cur;
    ngx_http_smartflow_policy_call_t  *c;

    pool = run->pool;
    c = run->calls->elts;
    n = NULL;

    choice = ngx_smartflow_json_get(j, "choices")->child;
    ci = ngx_smartflow_json_get(choice, "index");
    cur = ngx_smartflow_json_get(ngx_smartflow_json_get(choice, "delta"),
                                 "tool_calls");
    cur = (cur && cur->type == NGX_SMARTFLOW_JSON_ARRAY) ? cur : NULL;

    for (i = 0; i < run->calls->nelts; i++) {
        if (c[i].index / NGX_SF_OUT_CALLS != cidx) {
            continue;           /* another choice's, or ended */
        }

        /* this choice's call, and it ends here */
        idx = c[i].index % NGX_SF_OUT_CALLS;
        c[i].index = NGX_MAX_UINT32_VALUE;

        /* a call the finishing chunk itself carries gets them there */
        for (call = cur ? cur->child : NULL; call; call = call->next) {
            n = ngx_smartflow_json_get(call, "index");

            if (n && n->type == NGX_SMARTFLOW_JSON_NUMBER
                && (ngx_uint_t) ngx_atoi(n->str.data, n->str.len) == idx)
            {
                fn = ngx_smartflow_json_get(call, "function");
                n = ngx_smartflow_json_get(fn, "arguments");
                break;
            }
        }

        if (call && ngx_smartflow_json_is_string(n)) {
            n->str = c[i].args;
            n->str_plain = NULL;
            continue;
        }

        chunk = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_OBJECT, NULL);
        if (chunk == NULL) {
            return NGX_ERROR;
        }

        for (m = j->child; m; m = m->next) {
            if (m->type == NGX_SMARTFLOW_JSON_OBJECT
                || m->type == NGX_SMARTFLOW_JSON_ARRAY)
            {
                continue;       /* choices, usage */
            }

            n = ngx_http_smartflow_policy_copy(pool, m);
            if (n == NULL) {
                return NGX_ERROR;
            }

            ngx_smartflow_json_append(chunk, (char *) NULL, n);
            n->key = m->key;
            n->key_plain = m->key_plain;
        }

        choices = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_ARRAY, NULL);
        choice = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_OBJECT, NULL);
        delta = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_OBJECT, NULL);
        calls = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_ARRAY, NULL);
        call = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_OBJECT, NULL);
        fn = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_OBJECT, NULL);

        if (choices == NULL || choice == NULL || delta == NULL
            || calls == NULL || call == NULL || fn == NULL)
        {
            return NGX_ERROR;
        }

        v.data = ngx_pnalloc(pool, NGX_INT_T_LEN);
        if (v.data == NULL) {
            return NGX_ERROR;
        }

        v.len = ngx_sprintf(v.data, "%ui", idx) - v.data;

        n = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_NUMBER, &v);
        if (n == NULL
            || ngx_smartflow_json_set_str(pool, fn, "arguments", &c[i].args)
               != NGX_OK)
        {
            return NGX_ERROR;
        }

        ngx_smartflow_json_append(call, "index", n);
        ngx_smartflow_json_append(call, "function", fn);
        ngx_smartflow_json_append(calls, NULL, call);
        ngx_smartflow_json_append(delta, "tool_calls", calls);

        n = ci ? ngx_http_smartflow_policy_copy(pool, ci) : NULL;
        if (n) {
            ngx_smartflow_json_append(choice, "index", n);
        }

        ngx_smartflow_json_append(choice, "delta", delta);

        ngx_str_set(&v, "null");
        n = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_NULL, &v);
        if (n == NULL) {
            return NGX_ERROR;
        }

        ngx_smartflow_json_append(choice, "finish_reason", n);
        ngx_smartflow_json_append(choices, NULL, choice);
        ngx_smartflow_json_append(chunk, "choices", choices);

        if (ngx_http_smartflow_policy_event_out(run, NULL, chunk, out)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* a scalar, copied to be placed in another tree */
static ngx_smartflow_json_t *
ngx_http_smartflow_policy_copy(ngx_pool_t *pool, ngx_smartflow_json_t *j)
{
    return ngx_smartflow_json_new(pool, j->type, &j->str);
}


/*
 * A tool_use block that starts with its input already in it (Anthropic
 * streams it in input_json_delta events, which are held; a start that
 * carries it is read as a whole answer's block is)
 */
static ngx_int_t
ngx_http_smartflow_policy_anthropic_start(
    ngx_http_smartflow_policy_run_t *run, ngx_str_t *data, ngx_array_t *out)
{
    ngx_str_t              err, dump;
    ngx_uint_t             redacted;
    ngx_smartflow_json_t  *j, *block, *input;

    if (ngx_strnstr(data->data, "tool_use", data->len) == NULL) {
        return NGX_DECLINED;
    }

    j = ngx_smartflow_json_parse(run->pool, data->data, data->len, &err);
    if (j == NULL) {
        return NGX_DECLINED;
    }

    block = ngx_smartflow_json_get(j, "content_block");
    input = ngx_smartflow_json_get(block, "input");

    if (input == NULL || input->type != NGX_SMARTFLOW_JSON_OBJECT
        || input->nchild == 0)
    {
        return NGX_DECLINED;
    }

    if (run->shield_on
        && ngx_smartflow_json_dump(run->pool, input, &dump) == NGX_OK)
    {
        ngx_http_smartflow_policy_shield(run, dump.data, dump.len);
    }

    redacted = run->redacted;
    run->redacted = 0;

    if (!run->block && ngx_http_smartflow_policy_doc(run, input) != NGX_OK) {
        return NGX_ERROR;
    }

    if (run->block || !run->redacted) {
        run->redacted |= redacted;
        return run->block ? NGX_OK : NGX_DECLINED;
    }

    run->redacted |= redacted;

    return ngx_http_smartflow_policy_event_out(run, "content_block_start", j,
                                               out);
}


/* {"type":"content_block_delta","index":N,"delta":{"type":T,FIELD:V}} */
static ngx_int_t
ngx_http_smartflow_policy_anthropic_delta(
    ngx_http_smartflow_policy_run_t *run, ngx_smartflow_json_t *index,
    char *type, char *field, ngx_str_t *value, ngx_array_t *out)
{
    ngx_str_t              v;
    ngx_pool_t            *pool;
    ngx_smartflow_json_t  *ev, *d, *n;

    pool = run->pool;

    ev = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_OBJECT, NULL);
    d = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_OBJECT, NULL);
    if (ev == NULL || d == NULL) {
        return NGX_ERROR;
    }

    ngx_str_set(&v, "content_block_delta");
    if (ngx_smartflow_json_set_str(pool, ev, "type", &v) != NGX_OK) {
        return NGX_ERROR;
    }

    if (index) {
        n = ngx_http_smartflow_policy_copy(pool, index);
        if (n == NULL) {
            return NGX_ERROR;
        }

        ngx_smartflow_json_append(ev, "index", n);
    }

    v.data = (u_char *) type;
    v.len = ngx_strlen(type);

    if (ngx_smartflow_json_set_str(pool, d, "type", &v) != NGX_OK
        || ngx_smartflow_json_set_str(pool, d, field, value) != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_smartflow_json_append(ev, "delta", d);

    return ngx_http_smartflow_policy_event_out(run, "content_block_delta", ev,
                                               out);
}


/* an event for the client: "event: NAME\n" if named, "data: JSON\n\n" */
static ngx_int_t
ngx_http_smartflow_policy_event_out(ngx_http_smartflow_policy_run_t *run,
    char *name, ngx_smartflow_json_t *j, ngx_array_t *out)
{
    u_char     *p;
    size_t      len;
    ngx_str_t   json, *ev;

    if (j == NULL
        || ngx_smartflow_json_dump(run->pool, j, &json) != NGX_OK)
    {
        return NGX_ERROR;
    }

    len = (name ? sizeof("event: \n") - 1 + ngx_strlen(name) : 0)
          + sizeof("data: \n\n") - 1 + json.len;

    p = ngx_pnalloc(run->pool, len);
    ev = ngx_array_push(out);

    if (p == NULL || ev == NULL) {
        return NGX_ERROR;
    }

    ev->data = p;

    if (name) {
        p = ngx_sprintf(p, "event: %s\n", name);
    }

    p = ngx_sf_cpymem(p, "data: ");
    p = ngx_cpymem(p, json.data, json.len);
    p = ngx_sf_cpymem(p, "\n\n");

    ev->len = p - ev->data;

    return NGX_OK;
}


/* the client's error event for a blocked answer */
static ngx_int_t
ngx_http_smartflow_policy_error_event(ngx_http_smartflow_policy_run_t *run,
    ngx_array_t *out)
{
    u_char     *p;
    ngx_str_t   name, *ev;

    ngx_http_smartflow_policy_rule(run, run->block_type, &name);

    p = ngx_pnalloc(run->pool, 256 + name.len);
    ev = ngx_array_push(out);

    if (p == NULL || ev == NULL) {
        return NGX_ERROR;
    }

    ev->data = p;

    if (run->ctx->client_format == NGX_HTTP_SMARTFLOW_FORMAT_ANTHROPIC) {
        p = ngx_sprintf(p, "event: error\ndata: {\"type\":\"error\","
                        "\"error\":{\"type\":\"invalid_request_error\","
                        "\"message\":\"The answer was blocked by the content "
                        "policy (rule `%V`).\"}}\n\n", &name);

    } else {
        p = ngx_sprintf(p, "data: {\"error\":{\"message\":\"The answer was "
                        "blocked by the content policy (rule `%V`).\","
                        "\"type\":\"invalid_request_error\",\"param\":null,"
                        "\"code\":\"content_policy_violation\"}}\n\n", &name);
    }

    ev->len = p - ev->data;

    return NGX_OK;
}


/* a whole answer: its texts and its tool calls */
static ngx_int_t
ngx_http_smartflow_policy_answer(ngx_http_smartflow_policy_run_t *run,
    ngx_smartflow_json_t *answer)
{
    ngx_str_t              dump;
    ngx_smartflow_json_t  *c, *m, *t, *call, *args;

    /* OpenAI: choices[].message.content and .tool_calls */
    c = ngx_smartflow_json_get(answer, "choices");

    if (c && c->type == NGX_SMARTFLOW_JSON_ARRAY) {
        for (c = c->child; c && !run->block; c = c->next) {
            m = ngx_smartflow_json_get(c, "message");
            t = ngx_smartflow_json_get(m, "content");

            if (ngx_smartflow_json_is_string(t)
                && ngx_http_smartflow_policy_text(run, t, NGX_SF_SCAN_PII)
                   != NGX_OK)
            {
                return NGX_ERROR;
            }

            call = ngx_smartflow_json_get(m, "tool_calls");
            call = (call && call->type == NGX_SMARTFLOW_JSON_ARRAY)
                   ? call->child : NULL;

            for ( /* void */ ; call && !run->block; call = call->next) {
                args = ngx_smartflow_json_get(
                           ngx_smartflow_json_get(call, "function"),
                           "arguments");

                if (!ngx_smartflow_json_is_string(args)) {
                    continue;
                }

                if (ngx_http_smartflow_policy_args(run, &args->str)
                    != NGX_OK)
                {
                    return NGX_ERROR;
                }
            }
        }

        return NGX_OK;
    }

    /* Anthropic: content[] text and tool_use blocks */
    c = ngx_smartflow_json_get(answer, "content");

    if (c == NULL || c->type != NGX_SMARTFLOW_JSON_ARRAY) {
        return NGX_OK;
    }

    for (c = c->child; c && !run->block; c = c->next) {
        t = ngx_smartflow_json_get(c, "text");

        if (ngx_smartflow_json_is_string(t)
            && ngx_http_smartflow_policy_text(run, t, NGX_SF_SCAN_PII)
               != NGX_OK)
        {
            return NGX_ERROR;
        }

        t = ngx_smartflow_json_get(c, "input");

        if (t && t->type == NGX_SMARTFLOW_JSON_OBJECT) {
            if (run->shield_on
                && ngx_smartflow_json_dump(run->r->pool, t, &dump) == NGX_OK)
            {
                ngx_http_smartflow_policy_shield(run, dump.data, dump.len);
            }

            if (!run->block
                && ngx_http_smartflow_policy_doc(run, t) != NGX_OK)
            {
                return NGX_ERROR;
            }
        }
    }

    return NGX_OK;
}


/*
 * A blocked whole answer, the way each API reports its own content
 * filter: OpenAI's message with no content, a refusal and finish_reason
 * "content_filter"; Anthropic's one text block and stop_reason "refusal".
 */
static ngx_int_t
ngx_http_smartflow_policy_refuse_answer(ngx_http_smartflow_policy_run_t *run,
    ngx_smartflow_json_t *answer)
{
    u_char                *p;
    ngx_str_t              name, msg, v;
    ngx_pool_t            *pool;
    ngx_smartflow_json_t  *c, *m, *t, *n;

    pool = run->r->pool;

    ngx_http_smartflow_policy_rule(run, run->block_type, &name);

    p = ngx_pnalloc(pool, 96 + name.len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    msg.data = p;
    msg.len = ngx_sprintf(p, "The answer was blocked by the content policy "
                          "(rule `%V`).", &name) - p;

    c = ngx_smartflow_json_get(answer, "choices");

    if (c && c->type == NGX_SMARTFLOW_JSON_ARRAY) {
        for (c = c->child; c; c = c->next) {
            m = ngx_smartflow_json_get(c, "message");
            if (m == NULL || m->type != NGX_SMARTFLOW_JSON_OBJECT) {
                continue;
            }

            m->child = NULL;
            m->last = NULL;
            m->nchild = 0;

            ngx_str_set(&v, "assistant");
            n = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_NULL, NULL);
            if (n == NULL
                || ngx_smartflow_json_set_str(pool, m, "role", &v) != NGX_OK)
            {
                return NGX_ERROR;
            }

            ngx_str_set(&n->str, "null");
            ngx_smartflow_json_append(m, "content", n);

            if (ngx_smartflow_json_set_str(pool, m, "refusal", &msg)
                != NGX_OK)
            {
                return NGX_ERROR;
            }

            ngx_str_set(&v, "content_filter");
            if (ngx_smartflow_json_set_str(pool, c, "finish_reason", &v)
                != NGX_OK)
            {
                return NGX_ERROR;
            }
        }

        return NGX_OK;
    }

    c = ngx_smartflow_json_get(answer, "content");

    if (c && c->type == NGX_SMARTFLOW_JSON_ARRAY) {
        c->child = NULL;
        c->last = NULL;
        c->nchild = 0;

        t = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_OBJECT, NULL);
        if (t == NULL) {
            return NGX_ERROR;
        }

        ngx_str_set(&v, "text");

        if (ngx_smartflow_json_set_str(pool, t, "type", &v) != NGX_OK
            || ngx_smartflow_json_set_str(pool, t, "text", &msg) != NGX_OK)
        {
            return NGX_ERROR;
        }

        ngx_smartflow_json_append(c, NULL, t);

        ngx_str_set(&v, "refusal");
        if (ngx_smartflow_json_set_str(pool, answer, "stop_reason", &v)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}
