/*
 * Response filters.  The header filter decides how a gateway response is
 * filtered: a stream is read event by event (and translated when the
 * client speaks another format than the provider), a whole JSON body is
 * collected only when it must be translated; anything else passes as it
 * is.  For a stream it also turns proxy buffering off for this one request
 * (nginx's upstream reads u->buffering only after the header filters ran)
 * and tells any proxy in front not to buffer either.
 *
 * A stream that breaks (the provider goes away or times out after the
 * headers were sent) ends with a well-formed error event in the client's
 * format instead of a silent cut.
 */

#include "ngx_http_smartflow_proxy.h"
#include "ngx_http_smartflow_translate.h"


#define NGX_HTTP_SMARTFLOW_MAX_EVENT  (1024 * 1024)
#define NGX_HTTP_SMARTFLOW_MAX_JSON   (16 * 1024 * 1024)


static ngx_int_t ngx_http_smartflow_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_smartflow_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);
static ngx_int_t ngx_http_smartflow_stream_filter(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_chain_t *in);
static ngx_int_t ngx_http_smartflow_json_filter(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_chain_t *in);
static ngx_int_t ngx_http_smartflow_begins(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_chain_t **in);
static ngx_uint_t ngx_http_smartflow_sse_field(u_char *p, u_char *last);
static void ngx_http_smartflow_read_whole(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx);
static ngx_int_t ngx_http_smartflow_collect(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, u_char *data, size_t size);
static ngx_int_t ngx_http_smartflow_json_unreadable(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx);
static ngx_int_t ngx_http_smartflow_json_fail(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx);
static ngx_int_t ngx_http_smartflow_json_send(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_str_t *out);
static ngx_int_t ngx_http_smartflow_usage_filter(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_chain_t *in);
static ngx_int_t ngx_http_smartflow_on_event(void *data,
    ngx_smartflow_sse_event_t *ev);
static ngx_uint_t ngx_http_smartflow_event_usage(
    ngx_smartflow_sse_event_t *ev);
static ngx_int_t ngx_http_smartflow_event(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_smartflow_sse_event_t *ev,
    ngx_pool_t *pool);
static ngx_int_t ngx_http_smartflow_stream_timer(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_http_smartflow_loc_conf_t *slcf);
static void ngx_http_smartflow_stream_timeout(ngx_event_t *ev);
static ngx_int_t ngx_http_smartflow_xlate_event(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_smartflow_xlate_t *x,
    ngx_str_t *event, ngx_smartflow_json_t *j, ngx_array_t *out);
static ngx_int_t ngx_http_smartflow_xlate_via_openai(
    ngx_http_smartflow_ctx_t *ctx, ngx_smartflow_xlate_t *x,
    ngx_str_t *event, ngx_uint_t broken, ngx_array_t *out);
static ngx_int_t ngx_http_smartflow_stream_end(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_uint_t broken);
static ngx_int_t ngx_http_smartflow_emit(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, u_char *data, size_t len);
static ngx_int_t ngx_http_smartflow_emit_array(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_array_t *events);
static ngx_int_t ngx_http_smartflow_emit_event(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_str_t *ev);
static ngx_buf_t *ngx_http_smartflow_out_buf(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_uint_t last);
static ngx_int_t ngx_http_smartflow_send_out(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_uint_t last, ngx_uint_t flush);
static void ngx_http_smartflow_usage(ngx_http_smartflow_ctx_t *ctx,
    ngx_smartflow_json_t *usage);
static ngx_int_t ngx_http_smartflow_set_header(ngx_http_request_t *r,
    char *key, u_char *value, size_t len);


static ngx_int_t ngx_http_smartflow_tap_filter(ngx_http_request_t *r,
    ngx_chain_t *in);


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_body_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_tap_filter;


ngx_int_t
ngx_http_smartflow_filter_init(ngx_conf_t *cf)
{
    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_smartflow_header_filter;

    /* the taps run after the translation: they see what the client gets */
    ngx_http_next_tap_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_smartflow_tap_filter;

    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_smartflow_body_filter;

    return NGX_OK;
}


ngx_int_t
ngx_http_smartflow_register_output(ngx_conf_t *cf,
    ngx_http_smartflow_output_pt handler)
{
    ngx_http_smartflow_main_conf_t  *smcf;

    smcf = ngx_http_conf_get_module_main_conf(cf,
                                              ngx_http_smartflow_proxy_module);
    smcf->output = handler;

    return NGX_OK;
}


static ngx_int_t
ngx_http_smartflow_tap_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_buf_t                       *b;
    ngx_uint_t                       i;
    ngx_chain_t                     *cl;
    ngx_http_smartflow_ctx_t        *ctx;
    ngx_http_smartflow_tap_pt       *tap;
    ngx_http_smartflow_main_conf_t  *smcf;

    smcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_proxy_module);

    if (r != r->main || smcf->taps.nelts == 0 || in == NULL) {
        return ngx_http_next_tap_filter(r, in);
    }

    ctx = ngx_http_smartflow_get_ctx(r);

    if (ctx == NULL || ctx->api == NGX_HTTP_SMARTFLOW_API_NONE) {
        return ngx_http_next_tap_filter(r, in);
    }

    tap = smcf->taps.elts;

    for (cl = in; cl; cl = cl->next) {
        b = cl->buf;

        if (ngx_buf_in_memory(b) && b->last > b->pos) {
            for (i = 0; i < smcf->taps.nelts; i++) {
                if (tap[i](r, ctx, b->pos, b->last - b->pos, 0) != NGX_OK) {
                    return NGX_ERROR;
                }
            }
        }

        if (b->last_buf) {
            for (i = 0; i < smcf->taps.nelts; i++) {
                if (tap[i](r, ctx, NULL, 0, 1) != NGX_OK) {
                    return NGX_ERROR;
                }
            }
        }
    }

    return ngx_http_next_tap_filter(r, in);
}


static ngx_int_t
ngx_http_smartflow_header_filter(ngx_http_request_t *r)
{
    ngx_http_smartflow_ctx_t       *ctx;
    ngx_http_smartflow_loc_conf_t  *slcf;

    slcf = ngx_http_get_module_loc_conf(r, ngx_http_smartflow_proxy_module);

    /* a fallback attempt answers from a named location without the api */
    if (r != r->main
        || (slcf->api == NGX_HTTP_SMARTFLOW_API_NONE && r->upstream == NULL))
    {
        return ngx_http_next_header_filter(r);
    }

    ctx = ngx_http_smartflow_get_ctx(r);

    if (ctx == NULL || ctx->provider == NULL || ctx->own_response) {
        return ngx_http_next_header_filter(r);
    }

    if (ctx->attempt_timer.timer_set) {
        /* the answer has begun: the route's timeout is met */
        ngx_del_timer(&ctx->attempt_timer);
    }

    /*
     * nginx's upstream turns keepalive off when an answer breaks after
     * its header: with the header held the client has had nothing, and
     * keeps its connection (see json_unreadable)
     */
    ctx->keepalive = r->keepalive;

    if (ngx_http_smartflow_set_header(r, "x-smartflow-deployment",
                                      ctx->route->name.data,
                                      ctx->route->name.len)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ctx->stream && r->headers_out.status == NGX_HTTP_OK) {
        ctx->filter = NGX_HTTP_SMARTFLOW_FILTER_STREAM;
        if (ctx->event_pool == NULL) {
            ctx->event_pool = ngx_create_pool(NGX_HTTP_SMARTFLOW_POOL_SIZE,
                                              r->connection->log);
            if (ctx->event_pool == NULL) {
                return NGX_ERROR;
            }
        }

        /* an event's joined "data:" lines go with it, as its tree does */
        ctx->sse.pool = r->pool;
        ctx->sse.scratch = ctx->event_pool;
        ctx->sse.max = NGX_HTTP_SMARTFLOW_MAX_EVENT;
        ctx->last_out = &ctx->out;

        if (r->upstream) {
            r->upstream->buffering = 0;

            if (slcf->stream_max_time
                && ngx_http_smartflow_stream_timer(r, ctx, slcf) != NGX_OK)
            {
                return NGX_ERROR;
            }
        }

        if (ctx->translate) {
            ctx->xlate_stream = ngx_pcalloc(r->pool,
                                       sizeof(ngx_smartflow_xlate_stream_t));
            if (ctx->xlate_stream == NULL) {
                return NGX_ERROR;
            }

            /* the stream's ids outlive the events, which are scratch */
            ((ngx_smartflow_xlate_stream_t *) ctx->xlate_stream)->pool =
                                                                  r->pool;
            ((ngx_smartflow_xlate_stream_t *) ctx->xlate_stream)
                ->include_usage = ctx->hide_usage ? 0 : 1;
            ctx->hide_usage = 0;

            if (ctx->client_format == NGX_HTTP_SMARTFLOW_FORMAT_ANTHROPIC
                && ctx->wire_format == NGX_HTTP_SMARTFLOW_FORMAT_GEMINI)
            {
                /* the first of two steps, with the usage for the second */
                ctx->xlate_first = ngx_pcalloc(r->pool,
                                       sizeof(ngx_smartflow_xlate_stream_t));
                if (ctx->xlate_first == NULL) {
                    return NGX_ERROR;
                }

                ((ngx_smartflow_xlate_stream_t *) ctx->xlate_first)->pool =
                                                                  r->pool;
                ((ngx_smartflow_xlate_stream_t *) ctx->xlate_first)
                    ->include_usage = 1;
            }

            ngx_http_clear_content_length(r);
            ngx_str_set(&r->headers_out.content_type, "text/event-stream");
            r->headers_out.content_type_len = sizeof("text/event-stream") - 1;
            r->headers_out.content_type_lowcase = NULL;
        }

        if (ctx->output_scan) {
            /* the output scanner may change the events' length */
            ngx_http_clear_content_length(r);
        }

        if (ngx_http_smartflow_set_header(r, "X-Accel-Buffering",
                                          (u_char *) "no", 2)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        /* a provider says so itself; the built-in one needs saying */
        if (r->upstream == NULL
            && ngx_http_smartflow_set_header(r, "Cache-Control",
                                             (u_char *) "no-cache", 8)
               != NGX_OK)
        {
            return NGX_ERROR;
        }

        if (r->upstream) {
            /* held until the first bytes show a stream (see begins) */
            ctx->header_held = 1;
            return NGX_OK;
        }

    } else if (!ctx->translate && !r->header_only
               && r->headers_out.status == NGX_HTTP_OK && !ctx->output_scan)
    {
        /* a whole answer passing as it is: only its usage is read */
        ngx_smartflow_usage_scan_init(&ctx->usage);

        ctx->filter = NGX_HTTP_SMARTFLOW_FILTER_USAGE;

        if (r->upstream) {
            /* held until the first byte shows a JSON object */
            ctx->header_held = 1;
            return NGX_OK;
        }

    } else if ((ctx->translate
                || (ctx->output_scan
                    && r->headers_out.status == NGX_HTTP_OK))
               && !r->header_only)
    {
        /*
         * a whole answer or a provider error, in the other format, or an
         * answer the output scanner reads whole
         */
        ngx_http_smartflow_read_whole(r, ctx);

        return NGX_OK;
    }

    return ngx_http_next_header_filter(r);
}


/*
 * The status is the answer's to give: held until the body is read and
 * rewritten, so that one that cannot be is a 502, not a 200.
 */
static void
ngx_http_smartflow_read_whole(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx)
{
    ctx->filter = NGX_HTTP_SMARTFLOW_FILTER_JSON;
    ctx->header_held = 1;

    ngx_http_clear_content_length(r);
    ngx_http_clear_accept_ranges(r);
    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = sizeof("application/json") - 1;
    r->headers_out.content_type_lowcase = NULL;
}


/*
 * smartflow_stream_max_time also holds when the provider goes quiet: a
 * timer ends the stream as nginx ends one whose provider timed out, and
 * the stream filter then sends the client's error event.
 */
static ngx_int_t
ngx_http_smartflow_stream_timer(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_http_smartflow_loc_conf_t *slcf)
{
    ngx_time_t          *tp;
    ngx_msec_int_t       elapsed;
    ngx_pool_cleanup_t  *cln;

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    cln->handler = ngx_http_smartflow_timer_cleanup;
    cln->data = &ctx->stream_timer;

    ctx->stream_timer.handler = ngx_http_smartflow_stream_timeout;
    ctx->stream_timer.data = r;
    ctx->stream_timer.log = r->connection->log;

    tp = ngx_timeofday();
    elapsed = (ngx_msec_int_t) ((tp->sec - r->start_sec) * 1000
                                + (tp->msec - r->start_msec));

    ngx_add_timer(&ctx->stream_timer,
                  elapsed < (ngx_msec_int_t) slcf->stream_max_time
                  ? slcf->stream_max_time - elapsed : 1);

    return NGX_OK;
}


static void
ngx_http_smartflow_stream_timeout(ngx_event_t *ev)
{
    ngx_time_t                     *tp;
    ngx_msec_int_t                  elapsed;
    ngx_http_request_t             *r;
    ngx_http_smartflow_ctx_t       *ctx;
    ngx_http_smartflow_loc_conf_t  *slcf;

    r = ev->data;
    ctx = ngx_http_smartflow_get_ctx(r);

    if (ctx == NULL || ctx->stream_ended || r->upstream == NULL
        || r->upstream->peer.connection == NULL)
    {
        return;
    }

    /* the cached clock may lag the timer's: never cut before the cap */
    ngx_time_update();
    tp = ngx_timeofday();
    elapsed = (ngx_msec_int_t) ((tp->sec - r->start_sec) * 1000
                                + (tp->msec - r->start_msec));

    slcf = ngx_http_get_module_loc_conf(r, ngx_http_smartflow_proxy_module);

    if (elapsed < (ngx_msec_int_t) slcf->stream_max_time) {
        ngx_add_timer(ev, slcf->stream_max_time - elapsed);
        return;
    }

    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "smartflow proxy: stream from provider \"%V\" cut at %O "
                  "bytes after %M ms: over smartflow_stream_max_time",
                  &ctx->provider->name, ctx->stream_bytes,
                  (ngx_msec_t) elapsed);

    ctx->stream_capped = 1;

    ngx_http_smartflow_upstream_timeout(r);
}


/*
 * As if the provider had timed out: nginx ends the upstream itself.  In
 * the TLS handshake nginx takes only a timed out write event for a
 * timeout (its connect timer is on the write event); a read one would
 * end the handshake as a failure, a 502.
 */
void
ngx_http_smartflow_upstream_timeout(ngx_http_request_t *r)
{
    ngx_connection_t  *c;

    c = r->upstream->peer.connection;

#if (NGX_SSL)
    if (c->ssl && !c->ssl->handshaked) {
        c->write->timedout = 1;
        c->write->handler(c->write);
        return;
    }
#endif

    c->read->timedout = 1;
    c->read->handler(c->read);
}


void
ngx_http_smartflow_timer_cleanup(void *data)
{
    ngx_event_t  *ev = data;

    if (ev->timer_set) {
        ngx_del_timer(ev);
    }
}


static ngx_int_t
ngx_http_smartflow_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    ngx_int_t                  rc;
    ngx_http_smartflow_ctx_t  *ctx;

    if (r != r->main) {
        return ngx_http_next_body_filter(r, in);
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_smartflow_proxy_module);

    if (ctx == NULL || ctx->filter == NGX_HTTP_SMARTFLOW_FILTER_NONE) {
        return ngx_http_next_body_filter(r, in);
    }

    if (ctx->header_held && ctx->filter != NGX_HTTP_SMARTFLOW_FILTER_JSON) {
        rc = ngx_http_smartflow_begins(r, ctx, &in);

        if (rc == NGX_DONE) {
            return NGX_OK;
        }

        if (rc == NGX_ERROR || rc > NGX_OK) {
            return rc;
        }
    }

    if (ctx->filter == NGX_HTTP_SMARTFLOW_FILTER_STREAM) {
        return ngx_http_smartflow_stream_filter(r, ctx, in);
    }

    if (ctx->filter == NGX_HTTP_SMARTFLOW_FILTER_USAGE) {
        return ngx_http_smartflow_usage_filter(r, ctx, in);
    }

    return ngx_http_smartflow_json_filter(r, ctx, in);
}


/*
 * The first bytes of an answer passed on as it is (a whole JSON answer,
 * or a stream) are looked at before its header goes.  One that does not
 * begin as the API's answers do (the HTML page of a proxy on the way or
 * of a wrong base URL, sent with a 200) is read whole instead, as an
 * answer that cannot be read: the client has nothing of it, and the next
 * deployment may answer.  Blanks before the first byte (a provider may
 * send line ends to keep a slow answer's connection) wait with the
 * header, kept in ctx->collect, and go before the answer.  NGX_DONE:
 * nothing to look at yet, the header waits; NGX_OK: the filter set goes
 * on, with *in.
 */
static ngx_int_t
ngx_http_smartflow_begins(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_chain_t **in)
{
    u_char       *p;
    size_t        size;
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_uint_t    stream, end;
    ngx_chain_t  *cl;

    stream = (ctx->filter == NGX_HTTP_SMARTFLOW_FILTER_STREAM);
    end = 0;

    for (cl = *in; cl; cl = cl->next) {
        b = cl->buf;

        if (b->last_buf) {
            end = 1;
        }

        if (!ngx_buf_in_memory(b)) {
            if (ngx_buf_size(b)) {
                /* a buffer in a file is not read back: it passes */
                goto pass;
            }

            continue;
        }

        /* a stream may begin with line ends, JSON with any blank */

        for (p = b->pos; p < b->last; p++) {
            if (*p == '\n' || *p == '\r'
                || (!stream && (*p == ' ' || *p == '\t')))
            {
                continue;
            }

            if (stream ? ngx_http_smartflow_sse_field(p, b->last)
                       : (*p == '{'))
            {
                goto pass;
            }

            if (stream) {
                ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                              "smartflow proxy: provider \"%V\" answered "
                              "%ui to a stream request with a body that is "
                              "not a stream", &ctx->provider->name,
                              r->headers_out.status);

            } else {
                ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                              "smartflow proxy: provider \"%V\" answered "
                              "%ui with a body that is not JSON",
                              &ctx->provider->name, r->headers_out.status);
            }

            ctx->not_api = 1;
            ngx_http_smartflow_read_whole(r, ctx);

            return NGX_OK;
        }
    }

    if (!end
        && !(*in && (*in)->next == NULL
             && r->upstream->peer.connection == NULL))
    {
        /* blanks, if any, wait with the header */

        for (cl = *in; cl; cl = cl->next) {
            b = cl->buf;
            size = b->last - b->pos;

            if (size == 0) {
                continue;
            }

            if (ctx->collect_len + size > NGX_HTTP_SMARTFLOW_MAX_JSON) {
                /* the JSON filter says it is too large */
                ngx_http_smartflow_read_whole(r, ctx);
                return NGX_OK;
            }

            if (ngx_http_smartflow_collect(r, ctx, b->pos, size) != NGX_OK) {
                return NGX_ERROR;
            }

            b->pos = b->last;
        }

        return NGX_DONE;
    }

    /*
     * an empty answer, one of blanks, or one cut before its first byte:
     * the JSON filter reads what there is, blanks held included, and
     * says what it is
     */
    ngx_http_smartflow_read_whole(r, ctx);

    return NGX_OK;

pass:

    if (ctx->collect_len) {
        /* the blanks held go first, as they came */

        b = ngx_calloc_buf(r->pool);
        if (b == NULL) {
            return NGX_ERROR;
        }

        cl = ngx_alloc_chain_link(r->pool);
        if (cl == NULL) {
            return NGX_ERROR;
        }

        b->pos = ctx->collect;
        b->last = ctx->collect + ctx->collect_len;
        b->memory = 1;

        cl->buf = b;
        cl->next = *in;
        *in = cl;

        ctx->collect = NULL;
        ctx->collect_size = 0;
        ctx->collect_len = 0;
    }

    ctx->header_held = 0;

    rc = ngx_http_next_header_filter(r);

    return (rc == NGX_AGAIN) ? NGX_OK : rc;
}


/*
 * Does the line at p begin with a field of a stream: a comment, or a
 * name followed by ":" or the line's end.  What the buffer has of it is
 * compared: a name the buffer cuts is taken for what it begins.
 */
static ngx_uint_t
ngx_http_smartflow_sse_field(u_char *p, u_char *last)
{
    size_t      n;
    ngx_uint_t  i;

    static ngx_str_t  names[] = {
        ngx_string("data"),
        ngx_string("event"),
        ngx_string("id"),
        ngx_string("retry")
    };

    if (*p == ':') {
        return 1;
    }

    for (i = 0; i < sizeof(names) / sizeof(ngx_str_t); i++) {
        n = ngx_min((size_t) (last - p), names[i].len);

        if (ngx_strncmp(p, names[i].data, n) != 0) {
            continue;
        }

        if (p + n == last) {
            return 1;
        }

        if (n == names[i].len
            && (p[n] == ':' || p[n] == '\r' || p[n] == '\n'))
        {
            return 1;
        }
    }

    return 0;
}


static ngx_int_t
ngx_http_smartflow_stream_filter(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_chain_t *in)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_uint_t                      last, flush, broken, capped;
    ngx_time_t                     *tp;
    ngx_chain_t                    *cl;
    ngx_msec_int_t                  elapsed;
    ngx_http_smartflow_loc_conf_t  *slcf;

    if (ctx->stream_ended) {
        /* everything after our last buffer: consume and drop */
        for (cl = in; cl; cl = cl->next) {
            cl->buf->pos = cl->buf->last;
        }

        return ngx_http_next_body_filter(r, NULL);
    }

    last = 0;
    flush = 0;
    broken = 0;
    capped = 0;

    slcf = ngx_http_get_module_loc_conf(r, ngx_http_smartflow_proxy_module);

    for (cl = in; cl; cl = cl->next) {
        b = cl->buf;

        if (ngx_buf_in_memory(b) && b->last > b->pos && !broken) {
            ctx->stream_bytes += b->last - b->pos;

            tp = ngx_timeofday();
            elapsed = (ngx_msec_int_t) ((tp->sec - r->start_sec) * 1000
                                        + (tp->msec - r->start_msec));

            if ((slcf->stream_max_bytes
                 && ctx->stream_bytes > slcf->stream_max_bytes)
                || (slcf->stream_max_time
                    && elapsed > (ngx_msec_int_t) slcf->stream_max_time))
            {
                ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                              "smartflow proxy: stream from provider \"%V\" "
                              "cut at %O bytes after %M ms: over "
                              "smartflow_stream_max_bytes or _max_time",
                              &ctx->provider->name, ctx->stream_bytes,
                              (ngx_msec_t) elapsed);
                broken = 1;
                capped = 1;
                b->pos = b->last;
                continue;
            }

            rc = ngx_smartflow_sse_feed(&ctx->sse, b->pos, b->last - b->pos,
                                        ngx_http_smartflow_on_event, r);

            if (rc == NGX_DECLINED) {
                ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                              "smartflow proxy: provider \"%V\" sent a "
                              "stream event over %uz bytes",
                              &ctx->provider->name, ctx->sse.max);
                broken = 1;

            } else if (rc != NGX_OK) {
                return NGX_ERROR;
            }
        }

        b->pos = b->last;

        if (b->last_buf) {
            last = 1;
        }

        if (b->flush) {
            flush = 1;
        }
    }

    if (ctx->output_blocked) {
        /* the output scanner ended the stream: the provider is not read */
        ctx->stream_ended = 1;
        (void) ngx_http_smartflow_send_out(r, ctx, 1, 1);
        return NGX_ERROR;
    }

    /*
     * nginx's upstream, finalizing a response whose headers are out,
     * sends a lone flush once the provider connection is gone: the
     * stream broke (closed early, timed out) before its end.
     */
    if (!last && !broken && in && in->next == NULL
        && ngx_buf_special(in->buf) && r->upstream
        && r->upstream->peer.connection == NULL)
    {
        broken = 1;
    }

    if (broken || last) {
        if (broken && !capped && !ctx->stream_capped) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "smartflow proxy: stream from provider \"%V\" "
                          "for model \"%V\" broke before its end",
                          &ctx->provider->name, &ctx->model);
        }

        if (ngx_http_smartflow_stream_end(r, ctx, broken) != NGX_OK) {
            return NGX_ERROR;
        }

        ctx->stream_ended = 1;
        last = 1;

    } else if (flush && r->upstream && !r->upstream->buffering
               && r->upstream->length == 0)
    {
        /*
         * The provider's answer is complete (its last chunk or its
         * Content-Length read): nginx's upstream finalizes right after
         * this call and sends the last buffer, so the events wait for
         * it and go out in one write together with the end of the
         * response instead of two.
         */
        return NGX_OK;
    }

    rc = ngx_http_smartflow_send_out(r, ctx, last, flush || last);

    /* an error stops nginx's upstream: the provider is not read further */
    return capped ? NGX_ERROR : rc;
}


/*
 * Each event is parsed, translated and written in a scratch pool, reset
 * after it: what a stream keeps (its ids, the usage) lives elsewhere, so
 * a stream of any length holds the memory of one event, not of all.  The
 * events' bytes are copied into the output buffers before the reset.
 */
static ngx_int_t
ngx_http_smartflow_on_event(void *data, ngx_smartflow_sse_event_t *ev)
{
    ngx_http_request_t *r = data;

    ngx_int_t                  rc;
    ngx_http_smartflow_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_smartflow_proxy_module);

    /* the pool was made with the stream, and holds the event's data */
    rc = ngx_http_smartflow_event(r, ctx, ev, ctx->event_pool);

    ctx->xlate_event = NULL;
    ngx_reset_pool(ctx->event_pool);

    return rc;
}


/* does the event carry a usage that is not null, or end an Anthropic one */
static ngx_uint_t
ngx_http_smartflow_event_usage(ngx_smartflow_sse_event_t *ev)
{
    u_char  *p, *last;

    if (ev->event.len == 12
        && ngx_strncmp(ev->event.data, "message_stop", 12) == 0)
    {
        return 1;
    }

    p = ev->data.data;
    last = p + ev->data.len;

    for ( ;; ) {
        p = ngx_strlcasestrn(p, last, (u_char *) "\"usage\"", 7 - 1);
        if (p == NULL) {
            return 0;
        }

        /* OpenAI's chunks say "usage":null until the last one */
        for (p += 7; p < last && (*p == ' ' || *p == '\t' || *p == ':'
                                  || *p == '\r' || *p == '\n');
             p++)
        {
            /* void */
        }

        if (last - p < 4 || ngx_strncmp(p, "null", 4) != 0) {
            return 1;
        }
    }
}


static ngx_int_t
ngx_http_smartflow_event(ngx_http_request_t *r, ngx_http_smartflow_ctx_t *ctx,
    ngx_smartflow_sse_event_t *ev, ngx_pool_t *pool)
{
    ngx_str_t                       err;
    ngx_array_t                     events;
    ngx_smartflow_json_t           *j, *choices;
    ngx_smartflow_xlate_t           x;

    if (ctx->output_blocked) {
        return NGX_OK;
    }

    if (ev->comment || ctx->stream_done) {
        return ctx->translate ? NGX_OK
                              : ngx_http_smartflow_emit_event(r, ctx,
                                                              &ev->raw);
    }

    j = NULL;

    if (ev->data.len == 6 && ngx_strncmp(ev->data.data, "[DONE]", 6) == 0) {
        ctx->stream_done = 1;

    } else if (ctx->translate || ngx_http_smartflow_event_usage(ev)) {
        /* parse only what has to be read: usage, or a translation */
        j = ngx_smartflow_json_parse(pool, ev->data.data, ev->data.len,
                                     &err);
        if (j == NULL) {
            ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                          "smartflow proxy: provider \"%V\" sent a stream "
                          "event that is not JSON: %V",
                          &ctx->provider->name, &err);
        }
    }

    if (j) {
        ngx_http_smartflow_usage(ctx, ngx_smartflow_json_get(j, "usage"));
        ngx_http_smartflow_usage(ctx, ngx_smartflow_json_get(j,
                                                           "usageMetadata"));
        ngx_http_smartflow_usage(ctx, ngx_smartflow_json_get(
                                   ngx_smartflow_json_get(j, "message"),
                                   "usage"));

        if (ev->event.len == 12
            && ngx_strncmp(ev->event.data, "message_stop", 12) == 0)
        {
            ctx->stream_done = 1;
        }
    }

    if (!ctx->translate) {
        if (ctx->hide_usage && j) {
            /* the usage chunk the gateway asked for, not the client */
            choices = ngx_smartflow_json_get(j, "choices");

            if (choices && choices->nchild == 0) {
                return NGX_OK;
            }
        }

        return ngx_http_smartflow_emit_event(r, ctx, &ev->raw);
    }

    if (j == NULL && !ctx->stream_done) {
        return NGX_OK;
    }

    if (ngx_array_init(&events, pool, 4, sizeof(ngx_str_t)) != NGX_OK) {
        return NGX_ERROR;
    }

    x.pool = pool;
    x.log = r->connection->log;
    x.model = ctx->model;
    ngx_str_null(&x.err);

    if (ngx_http_smartflow_xlate_event(r, ctx, &x, &ev->event, j, &events)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (((ngx_smartflow_xlate_stream_t *) ctx->xlate_stream)->done) {
        ctx->stream_done = 1;
    }

    return ngx_http_smartflow_emit_array(r, ctx, &events);
}


/* one provider event through the translation into the client's events */
static ngx_int_t
ngx_http_smartflow_xlate_event(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_smartflow_xlate_t *x,
    ngx_str_t *event, ngx_smartflow_json_t *j, ngx_array_t *out)
{
    if (ctx->client_format == NGX_HTTP_SMARTFLOW_FORMAT_OPENAI) {
        return (ctx->wire_format == NGX_HTTP_SMARTFLOW_FORMAT_GEMINI)
               ? ngx_smartflow_xlate_stream_gemini_to_openai(x,
                     ctx->xlate_stream, event, j, out)
               : ngx_smartflow_xlate_stream_anthropic_to_openai(x,
                     ctx->xlate_stream, event, j, out);
    }

    if (ctx->wire_format == NGX_HTTP_SMARTFLOW_FORMAT_GEMINI) {
        ctx->xlate_event = j;
        return ngx_http_smartflow_xlate_via_openai(ctx, x, event, 0, out);
    }

    return ngx_smartflow_xlate_stream_openai_to_anthropic(x,
               ctx->xlate_stream, event, j, out);
}


/*
 * Gemini to an Anthropic client: the event (or, with event NULL, the end
 * of the stream) is put in OpenAI's format first, and each OpenAI event
 * then in Anthropic's, each step keeping its own state.
 */
static ngx_int_t
ngx_http_smartflow_xlate_via_openai(ngx_http_smartflow_ctx_t *ctx,
    ngx_smartflow_xlate_t *x, ngx_str_t *event, ngx_uint_t broken,
    ngx_array_t *out)
{
    u_char                *p, *last;
    ngx_int_t              rc;
    ngx_str_t             *ev, data, err, none;
    ngx_uint_t             i;
    ngx_array_t            openai;
    ngx_smartflow_json_t  *j;

    if (ngx_array_init(&openai, x->pool, 4, sizeof(ngx_str_t)) != NGX_OK) {
        return NGX_ERROR;
    }

    rc = event
         ? ngx_smartflow_xlate_stream_gemini_to_openai(x, ctx->xlate_first,
                                                       event, ctx->xlate_event,
                                                       &openai)
         : ngx_smartflow_xlate_stream_end_gemini_openai(x, ctx->xlate_first,
                                                        broken, &openai);
    if (rc != NGX_OK) {
        return rc;
    }

    ngx_str_null(&none);
    ev = openai.elts;

    for (i = 0; i < openai.nelts; i++) {
        p = ev[i].data;
        last = p + ev[i].len;

        if (last - p < 6 || ngx_strncmp(p, "data: ", 6) != 0) {
            continue;
        }

        for (p += 6; last > p && (last[-1] == '\n' || last[-1] == '\r');
             last--)
        {
            /* void */
        }

        data.data = p;
        data.len = last - p;

        if (data.len == 6 && ngx_strncmp(data.data, "[DONE]", 6) == 0) {
            j = NULL;

        } else {
            j = ngx_smartflow_json_parse(x->pool, data.data, data.len, &err);
            if (j == NULL) {
                continue;
            }
        }

        rc = ngx_smartflow_xlate_stream_openai_to_anthropic(x,
                 ctx->xlate_stream, &none, j, out);
        if (rc != NGX_OK) {
            return rc;
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_smartflow_stream_end(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_uint_t broken)
{
    ngx_int_t              rc;
    ngx_array_t            events;
    ngx_smartflow_xlate_t  x;

    static u_char  openai_error[] =
        "data: {\"error\":{\"message\":\"The provider's stream ended before "
        "completion.\",\"type\":\"api_error\",\"param\":null,"
        "\"code\":\"upstream_stream_broken\"}}\n\n";

    static u_char  anthropic_error[] =
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":"
        "\"api_error\",\"message\":\"The provider's stream ended before "
        "completion.\"}}\n\n";

    if (ctx->translate) {
        if (ngx_array_init(&events, r->pool, 4, sizeof(ngx_str_t))
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        x.pool = ngx_http_smartflow_pool(r, ctx);
        if (x.pool == NULL) {
            return NGX_ERROR;
        }

        x.log = r->connection->log;
        x.model = ctx->model;
        ngx_str_null(&x.err);

        if (ctx->client_format == NGX_HTTP_SMARTFLOW_FORMAT_OPENAI) {
            rc = (ctx->wire_format == NGX_HTTP_SMARTFLOW_FORMAT_GEMINI)
                 ? ngx_smartflow_xlate_stream_end_gemini_openai(&x,
                       ctx->xlate_stream, broken, &events)
                 : ngx_smartflow_xlate_stream_end_openai(&x,
                       ctx->xlate_stream, broken, &events);

        } else {
            rc = NGX_OK;

            if (ctx->wire_format == NGX_HTTP_SMARTFLOW_FORMAT_GEMINI) {
                /* what Gemini's end means in OpenAI's format, passed on */
                rc = ngx_http_smartflow_xlate_via_openai(ctx, &x, NULL,
                                                         broken, &events);
            }

            if (rc == NGX_OK) {
                rc = ngx_smartflow_xlate_stream_end_anthropic(&x,
                         ctx->xlate_stream, broken, &events);
            }
        }

        if (rc != NGX_OK) {
            return NGX_ERROR;
        }

        return ngx_http_smartflow_emit_array(r, ctx, &events);
    }

    if (ctx->stream_done && !broken) {
        return NGX_OK;
    }

    /* the client's own format says the stream failed */
    if (ctx->client_format == NGX_HTTP_SMARTFLOW_FORMAT_ANTHROPIC) {
        return ngx_http_smartflow_emit(r, ctx, anthropic_error,
                                       sizeof(anthropic_error) - 1);
    }

    return ngx_http_smartflow_emit(r, ctx, openai_error,
                                   sizeof(openai_error) - 1);
}


static ngx_int_t
ngx_http_smartflow_usage_filter(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_chain_t *in)
{
    ngx_chain_t  *cl;

    for (cl = in; cl; cl = cl->next) {
        if (ngx_buf_in_memory(cl->buf)) {
            ngx_smartflow_usage_scan(&ctx->usage, cl->buf->pos,
                                     cl->buf->last - cl->buf->pos);

        } else if (ngx_buf_size(cl->buf)) {
            /* a buffer in a file is not read back for its usage */
            ctx->usage.failed = 1;
        }

        if (cl->buf->last_buf) {
            ngx_smartflow_usage_scan(&ctx->usage, NULL, 0);
            ctx->prompt_tokens = ctx->usage.prompt;
            ctx->completion_tokens = ctx->usage.completion;
        }
    }

    return ngx_http_next_body_filter(r, in);
}


static ngx_int_t
ngx_http_smartflow_json_filter(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_chain_t *in)
{
    size_t                           size;
    ngx_str_t                        err, out;
    ngx_uint_t                       last;
    ngx_chain_t                     *cl;
    ngx_smartflow_json_t            *j, *t;
    ngx_smartflow_xlate_t            x;
    ngx_http_smartflow_main_conf_t  *smcf;

    smcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_proxy_module);
    last = 0;

    if (ctx->json_failed) {
        /* the client has its 502: the rest of the answer is dropped */
        for (cl = in; cl; cl = cl->next) {
            cl->buf->pos = cl->buf->last;
        }

        return ngx_http_next_body_filter(r, NULL);
    }

    for (cl = in; cl; cl = cl->next) {
        size = cl->buf->last - cl->buf->pos;

        /* an answer its first bytes showed unreadable is not kept */
        if (ngx_buf_in_memory(cl->buf) && size && !ctx->not_api) {
            if (ctx->collect_len + size > NGX_HTTP_SMARTFLOW_MAX_JSON) {
                ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                              "smartflow proxy: response from provider "
                              "\"%V\" is too large to translate",
                              &ctx->provider->name);

                for ( /* void */ ; cl; cl = cl->next) {
                    cl->buf->pos = cl->buf->last;
                }

                return ngx_http_smartflow_json_fail(r, ctx);
            }

            if (ngx_http_smartflow_collect(r, ctx, cl->buf->pos, size)
                != NGX_OK)
            {
                return NGX_ERROR;
            }
        }

        cl->buf->pos = cl->buf->last;

        if (cl->buf->last_buf) {
            last = 1;
        }
    }

    if (!last) {
        /*
         * nginx's upstream, finalizing an answer whose provider went away
         * before its end, sends a lone flush: the client is told, in its
         * format, since it has not been answered yet
         */
        if (ctx->header_held && in && in->next == NULL
            && ngx_buf_special(in->buf) && r->upstream
            && r->upstream->peer.connection == NULL)
        {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "smartflow proxy: answer of provider \"%V\" "
                          "broke before its end", &ctx->provider->name);

            return ngx_http_smartflow_json_unreadable(r, ctx);
        }

        return ctx->header_held ? NGX_OK : ngx_http_next_body_filter(r, NULL);
    }

    if (ctx->not_api) {
        /* said when its first bytes came */
        return ngx_http_smartflow_json_unreadable(r, ctx);
    }

    x.pool = ngx_http_smartflow_pool(r, ctx);
    if (x.pool == NULL) {
        return NGX_ERROR;
    }

    j = ngx_smartflow_json_parse(x.pool, ctx->collect, ctx->collect_len,
                                 &err);

    x.log = r->connection->log;
    x.model = ctx->model;
    ngx_str_null(&x.err);

    if (j == NULL && r->headers_out.status < NGX_HTTP_BAD_REQUEST) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "smartflow proxy: provider \"%V\" answered %ui with "
                      "a body that is not JSON",
                      &ctx->provider->name, r->headers_out.status);

        return ngx_http_smartflow_json_unreadable(r, ctx);
    }

    if (r->headers_out.status >= NGX_HTTP_BAD_REQUEST || j == NULL) {
        if (j == NULL) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "smartflow proxy: provider \"%V\" answered "
                          "%ui with a body that is not JSON",
                          &ctx->provider->name, r->headers_out.status);
        }

        t = (ctx->client_format == NGX_HTTP_SMARTFLOW_FORMAT_ANTHROPIC)
            ? ngx_smartflow_xlate_error_to_anthropic(&x,
                                                r->headers_out.status, j)
            : ngx_smartflow_xlate_error_to_openai(&x,
                                                r->headers_out.status, j);

    } else {
        ngx_http_smartflow_usage(ctx, ngx_smartflow_json_get(j, "usage"));
        ngx_http_smartflow_usage(ctx, ngx_smartflow_json_get(j,
                                                           "usageMetadata"));

        if (ctx->wire_format == NGX_HTTP_SMARTFLOW_FORMAT_GEMINI) {
            /* to OpenAI's format, and from there to Anthropic's */
            j = ngx_smartflow_xlate_resp_gemini_to_openai(&x, j);
        }

        if (j == NULL) {
            t = NULL;

        } else if (!ctx->translate) {
            t = j;

        } else if (ctx->client_format == NGX_HTTP_SMARTFLOW_FORMAT_ANTHROPIC)
        {
            t = ngx_smartflow_xlate_resp_openai_to_anthropic(&x, j);

        } else if (ctx->wire_format == NGX_HTTP_SMARTFLOW_FORMAT_GEMINI) {
            t = j;

        } else {
            t = ngx_smartflow_xlate_resp_anthropic_to_openai(&x, j);
        }
    }

    if (t && ctx->output_scan && smcf->output
        && r->headers_out.status == NGX_HTTP_OK
        && smcf->output(r, ctx, t, NULL, NULL) == NGX_ERROR)
    {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "smartflow proxy: the output scan of the answer of "
                      "provider \"%V\" failed", &ctx->provider->name);

        return ngx_http_smartflow_json_fail(r, ctx);
    }

    if (t == NULL || ngx_smartflow_json_dump(x.pool, t, &out) != NGX_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "smartflow proxy: translating the answer of provider "
                      "\"%V\" failed: %V", &ctx->provider->name, &x.err);

        return ngx_http_smartflow_json_unreadable(r, ctx);
    }

    return ngx_http_smartflow_json_send(r, ctx, &out);
}


/* bytes of the answer kept in ctx->collect, which grows as needed */
static ngx_int_t
ngx_http_smartflow_collect(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, u_char *data, size_t size)
{
    u_char  *p;

    if (ctx->collect_len + size > ctx->collect_size) {
        ctx->collect_size = ngx_max(2 * ctx->collect_size,
                                    ctx->collect_len + size);

        p = ngx_pnalloc(r->pool, ctx->collect_size);
        if (p == NULL) {
            return NGX_ERROR;
        }

        if (ctx->collect_len) {
            ngx_memcpy(p, ctx->collect, ctx->collect_len);
        }

        ctx->collect = p;
    }

    ngx_memcpy(ctx->collect + ctx->collect_len, data, size);
    ctx->collect_len += size;

    return NGX_OK;
}


/*
 * A whole answer that could not be read (not JSON, not translatable, cut
 * before its end) is its deployment's failure, as a 5xx is.  When the
 * plan has a deployment left, the provider's answer is over and nothing
 * of it has reached the client (the header is held), the request goes on
 * to @smartflow_next the way nginx's own 502 would: the held header is
 * dropped and the 502, returned from the last buffer's filter, reaches
 * ngx_http_finalize_request() and the attempt's error page.  Otherwise
 * the client gets its 502.
 */
static ngx_int_t
ngx_http_smartflow_json_unreadable(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx)
{
    ngx_uint_t                 i;
    ngx_http_err_page_t       *page;
    ngx_http_core_loc_conf_t  *clcf;

    if (ctx->header_held) {
        /* the client has had nothing: its connection may be kept */
        r->keepalive = ctx->keepalive;
    }

    /*
     * a stream cut by smartflow_stream_max_time before its first bytes
     * has spent the request's time: the next deployment is not tried
     */
    if (!ctx->header_held || !ctx->dispatched || ctx->route == NULL
        || ctx->stream_capped
        || ctx->attempt + 1 >= ctx->nplan || r->upstream == NULL
        || r->upstream->peer.connection != NULL
        || r->error_page || r->uri_changes == 0)
    {
        return ngx_http_smartflow_json_fail(r, ctx);
    }

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (clcf->error_pages == NULL) {
        return ngx_http_smartflow_json_fail(r, ctx);
    }

    page = clcf->error_pages->elts;

    for (i = 0; i < clcf->error_pages->nelts; i++) {
        if (page[i].status == NGX_HTTP_BAD_GATEWAY) {
            break;
        }
    }

    if (i == clcf->error_pages->nelts) {
        return ngx_http_smartflow_json_fail(r, ctx);
    }

    /* the next answer is filtered afresh */
    ctx->filter = NGX_HTTP_SMARTFLOW_FILTER_NONE;
    ctx->header_held = 0;
    ctx->collect_len = 0;
    ctx->prompt_tokens = 0;
    ctx->completion_tokens = 0;
    ctx->not_api = 0;
    ctx->unreadable = 1;

    /* only this filter has seen the header: none of it was sent */
    ngx_http_clean_header(r);
    r->header_sent = 0;
    r->expect_trailers = 0;

    return NGX_HTTP_BAD_GATEWAY;
}


/*
 * An answer that could not be read or rewritten: a 502 in the client's
 * format while the header is still held, else the connection is cut
 */
static ngx_int_t
ngx_http_smartflow_json_fail(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx)
{
    ngx_str_t               out, err;
    ngx_smartflow_json_t   *e, *t;
    ngx_smartflow_xlate_t   x;

    static u_char  reason[] =
        "{\"type\":\"error\",\"error\":{\"type\":\"api_error\","
        "\"message\":\"The provider's answer could not be read.\"}}";

    if (!ctx->header_held) {
        return NGX_ERROR;
    }

    /* later buffers are dropped, the last one does not try again */
    ctx->json_failed = 1;

    x.pool = ngx_http_smartflow_pool(r, ctx);
    if (x.pool == NULL) {
        return NGX_ERROR;
    }

    x.log = r->connection->log;
    x.model = ctx->model;
    ngx_str_null(&x.err);

    e = ngx_smartflow_json_parse(x.pool, reason, sizeof(reason) - 1, &err);
    if (e == NULL) {
        return NGX_ERROR;
    }

    t = (ctx->client_format == NGX_HTTP_SMARTFLOW_FORMAT_ANTHROPIC)
        ? ngx_smartflow_xlate_error_to_anthropic(&x, NGX_HTTP_BAD_GATEWAY, e)
        : ngx_smartflow_xlate_error_to_openai(&x, NGX_HTTP_BAD_GATEWAY, e);

    if (t == NULL || ngx_smartflow_json_dump(x.pool, t, &out) != NGX_OK) {
        return NGX_ERROR;
    }

    r->headers_out.status = NGX_HTTP_BAD_GATEWAY;
    ngx_str_null(&r->headers_out.status_line);

    /* kept for the audit record */
    ctx->err_status = NGX_HTTP_BAD_GATEWAY;
    ngx_str_set(&ctx->err_code, "invalid_response");

    /* the usage of an answer the client did not get is not counted */
    ctx->prompt_tokens = 0;
    ctx->completion_tokens = 0;

    return ngx_http_smartflow_json_send(r, ctx, &out);
}


/* the held header, then the whole answer in one last buffer */
static ngx_int_t
ngx_http_smartflow_json_send(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_str_t *out)
{
    ngx_int_t   rc;
    ngx_buf_t  *b;

    if (ctx->header_held) {
        ctx->header_held = 0;

        rc = ngx_http_next_header_filter(r);

        if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
            return rc;
        }
    }

    /* the whole answer goes in one last buffer, of the written bytes */

    ctx->out = NULL;
    ctx->last_out = &ctx->out;
    ctx->out_tail = NULL;

    b = ngx_http_smartflow_out_buf(r, ctx, 1);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = out->data;
    b->last = out->data + out->len;
    b->memory = 1;
    b->tag = (ngx_buf_tag_t) &ngx_http_smartflow_proxy_module;

    return ngx_http_smartflow_send_out(r, ctx, 0, 0);
}


/* appends bytes to the pending output, reusing the request's buffers */
static ngx_int_t
ngx_http_smartflow_emit(ngx_http_request_t *r, ngx_http_smartflow_ctx_t *ctx,
    u_char *data, size_t len)
{
    size_t        size;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    if (len == 0) {
        return NGX_OK;
    }

    /* events written together share a buffer while it has room */
    b = ctx->out_tail;

    if (b && (size_t) (b->end - b->last) >= len) {
        b->last = ngx_cpymem(b->last, data, len);
        return NGX_OK;
    }

    cl = ngx_chain_get_free_buf(r->pool, &ctx->free);
    if (cl == NULL) {
        return NGX_ERROR;
    }

    b = cl->buf;

    if (b->start == NULL || (size_t) (b->end - b->start) < len) {
        size = ngx_max(len, 4096);

        b->start = ngx_palloc(r->pool, size);
        if (b->start == NULL) {
            return NGX_ERROR;
        }

        b->end = b->start + size;
    }

    ngx_memzero(b, offsetof(ngx_buf_t, start));
    b->pos = b->start;
    b->last = ngx_cpymem(b->start, data, len);
    b->memory = 1;
    b->recycled = 1;
    b->tag = (ngx_buf_tag_t) &ngx_http_smartflow_proxy_module;

    *ctx->last_out = cl;
    ctx->last_out = &cl->next;
    ctx->out_tail = b;

    return NGX_OK;
}


static ngx_int_t
ngx_http_smartflow_emit_array(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_array_t *events)
{
    ngx_str_t   *ev;
    ngx_uint_t   i;

    ev = events->elts;

    for (i = 0; i < events->nelts && !ctx->output_blocked; i++) {
        if (ngx_http_smartflow_emit_event(r, ctx, &ev[i]) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* a stream event the client is to receive, through the output scanner */
static ngx_int_t
ngx_http_smartflow_emit_event(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_str_t *ev)
{
    ngx_int_t                        rc;
    ngx_str_t                       *e;
    ngx_uint_t                       i;
    ngx_pool_t                      *pool;
    ngx_array_t                      out;
    ngx_http_smartflow_main_conf_t  *smcf;

    smcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_proxy_module);

    if (!ctx->output_scan || smcf->output == NULL) {
        return ngx_http_smartflow_emit(r, ctx, ev->data, ev->len);
    }

    /*
     * the scanner reads and writes the event in out's pool: the event's
     * scratch pool, reset once the events it wrote are copied into the
     * output buffers (below); the stream's end has none of its own
     */
    pool = ctx->event_pool ? ctx->event_pool : r->pool;

    if (ngx_array_init(&out, pool, 2, sizeof(ngx_str_t)) != NGX_OK) {
        return NGX_ERROR;
    }

    rc = smcf->output(r, ctx, NULL, ev, &out);

    if (rc == NGX_DECLINED) {
        return ngx_http_smartflow_emit(r, ctx, ev->data, ev->len);
    }

    if (rc != NGX_OK && rc != NGX_ABORT) {
        return NGX_ERROR;
    }

    e = out.elts;

    for (i = 0; i < out.nelts; i++) {
        if (ngx_http_smartflow_emit(r, ctx, e[i].data, e[i].len) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    if (rc == NGX_ABORT) {
        /* blocked: the scanner's events end the stream */
        ctx->output_blocked = 1;
        ctx->stream_done = 1;
    }

    return NGX_OK;
}


/*
 * An empty buffer that flushes, and ends the response when last, added to
 * the pending output; the caller may give it bytes of its own
 */
static ngx_buf_t *
ngx_http_smartflow_out_buf(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_uint_t last)
{
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    cl = ngx_alloc_chain_link(r->pool);
    if (cl == NULL) {
        return NULL;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NULL;
    }

    b->last_buf = last;
    b->last_in_chain = 1;
    b->flush = 1;

    cl->buf = b;
    cl->next = NULL;

    *ctx->last_out = cl;
    ctx->last_out = &cl->next;

    return b;
}


static ngx_int_t
ngx_http_smartflow_send_out(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_uint_t last, ngx_uint_t flush)
{
    ngx_int_t  rc;

    if ((last || flush) && ngx_http_smartflow_out_buf(r, ctx, last) == NULL) {
        return NGX_ERROR;
    }

    if (ctx->out == NULL && ctx->busy == NULL) {
        return ngx_http_next_body_filter(r, NULL);
    }

    /* what is passed on is not written to again */
    ctx->out_tail = NULL;

    rc = ngx_http_next_body_filter(r, ctx->out);

    ngx_chain_update_chains(r->pool, &ctx->free, &ctx->busy, &ctx->out,
                            (ngx_buf_tag_t) &ngx_http_smartflow_proxy_module);
    ctx->last_out = &ctx->out;

    return rc;
}


/* provider usage, whichever format: the largest count seen wins */
static void
ngx_http_smartflow_usage(ngx_http_smartflow_ctx_t *ctx,
    ngx_smartflow_json_t *usage)
{
    ngx_int_t              n;
    ngx_smartflow_json_t  *j;

    static char  *prompt[] = { "prompt_tokens", "input_tokens",
                               "promptTokenCount", NULL };
    static char  *completion[] = { "completion_tokens", "output_tokens",
                                   "candidatesTokenCount", NULL };
    char  **k;

    if (usage == NULL || usage->type != NGX_SMARTFLOW_JSON_OBJECT) {
        return;
    }

    for (k = prompt; *k; k++) {
        j = ngx_smartflow_json_get(usage, *k);

        if (j && j->type == NGX_SMARTFLOW_JSON_NUMBER) {
            n = ngx_atoi(j->str.data, j->str.len);
            if (n != NGX_ERROR && (ngx_uint_t) n > ctx->prompt_tokens) {
                ctx->prompt_tokens = n;
            }
        }
    }

    for (k = completion; *k; k++) {
        j = ngx_smartflow_json_get(usage, *k);

        if (j && j->type == NGX_SMARTFLOW_JSON_NUMBER) {
            n = ngx_atoi(j->str.data, j->str.len);
            if (n != NGX_ERROR && (ngx_uint_t) n > ctx->completion_tokens) {
                ctx->completion_tokens = n;
            }
        }
    }
}


static ngx_int_t
ngx_http_smartflow_set_header(ngx_http_request_t *r, char *key,
    u_char *value, size_t len)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key.data = (u_char *) key;
    h->key.len = ngx_strlen(key);
    h->value.data = value;
    h->value.len = len;

    return NGX_OK;
}
