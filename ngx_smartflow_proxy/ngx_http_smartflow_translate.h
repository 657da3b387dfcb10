/*
 * Translation between the providers' wire formats (OpenAI Chat
 * Completions, Anthropic Messages, Gemini generateContent): pure functions
 * from one JSON tree to another, all memory from the given pool.  The
 * pipeline translates requests, the filters translate responses, errors
 * and streams event by event.
 */

#ifndef _NGX_HTTP_SMARTFLOW_TRANSLATE_H_INCLUDED_
#define _NGX_HTTP_SMARTFLOW_TRANSLATE_H_INCLUDED_


#include "ngx_http_smartflow_proxy.h"


typedef struct {
    ngx_pool_t                 *pool;
    ngx_log_t                  *log;
    ngx_str_t                   model;      /* the model the client named */
    ngx_str_t                   err;        /* why a translation failed */
} ngx_smartflow_xlate_t;


/* state of one streamed response being translated */
typedef struct {
    ngx_str_t                   id;
    time_t                      created;
    ngx_uint_t                  input_tokens;
    ngx_uint_t                  output_tokens;
    ngx_uint_t                  block;          /* current content block */
    ngx_int_t                   tool_index;     /* OpenAI tool_calls index */
    ngx_str_t                   tool_id;        /* open tool call's id */
    ngx_str_t                   finish;         /* stop / finish reason */
    unsigned                    include_usage:1;
    unsigned                    started:1;
    unsigned                    block_open:1;
    unsigned                    block_is_tool:1;
    unsigned                    finished:1;
    unsigned                    done:1;
} ngx_smartflow_xlate_stream_t;


/* requests: client tree -> provider tree; NULL and x->err on bad input */
ngx_smartflow_json_t *ngx_smartflow_xlate_req_openai_to_anthropic(
    ngx_smartflow_xlate_t *x, ngx_smartflow_json_t *req);
ngx_smartflow_json_t *ngx_smartflow_xlate_req_anthropic_to_openai(
    ngx_smartflow_xlate_t *x, ngx_smartflow_json_t *req);

/* whole responses: provider tree -> client tree */
ngx_smartflow_json_t *ngx_smartflow_xlate_resp_anthropic_to_openai(
    ngx_smartflow_xlate_t *x, ngx_smartflow_json_t *resp);
ngx_smartflow_json_t *ngx_smartflow_xlate_resp_openai_to_anthropic(
    ngx_smartflow_xlate_t *x, ngx_smartflow_json_t *resp);

/* a provider's error body (NULL when it was not JSON) -> client error */
ngx_smartflow_json_t *ngx_smartflow_xlate_error_to_openai(
    ngx_smartflow_xlate_t *x, ngx_uint_t status, ngx_smartflow_json_t *err);
ngx_smartflow_json_t *ngx_smartflow_xlate_error_to_anthropic(
    ngx_smartflow_xlate_t *x, ngx_uint_t status, ngx_smartflow_json_t *err);

/*
 * Streams: each provider SSE event (its "event:" name, possibly empty,
 * and its parsed "data:"; data NULL for OpenAI's "[DONE]") appends zero or
 * more complete client SSE events ("event: ...\ndata: ...\n\n" bytes, as
 * ngx_str_t) to out.  _end is called once when the upstream stream ends,
 * cleanly or not (broken = 1): it appends whatever the client still needs
 * (terminal events, or a well-formed error event for a broken stream).
 */
ngx_int_t ngx_smartflow_xlate_stream_anthropic_to_openai(
    ngx_smartflow_xlate_t *x, ngx_smartflow_xlate_stream_t *st,
    ngx_str_t *event, ngx_smartflow_json_t *data, ngx_array_t *out);
ngx_int_t ngx_smartflow_xlate_stream_openai_to_anthropic(
    ngx_smartflow_xlate_t *x, ngx_smartflow_xlate_stream_t *st,
    ngx_str_t *event, ngx_smartflow_json_t *data, ngx_array_t *out);
ngx_int_t ngx_smartflow_xlate_stream_end_openai(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, ngx_uint_t broken, ngx_array_t *out);
ngx_int_t ngx_smartflow_xlate_stream_end_anthropic(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, ngx_uint_t broken, ngx_array_t *out);


/*
 * Gemini generateContent, for OpenAI clients.  The request body has no
 * model: it goes in the URL ({base}/models/{model}:generateContent, or
 * :streamGenerateContent?alt=sse).  The stream has no closing event, so
 * _end_gemini_openai writes the usage chunk and [DONE] after a finish
 * reason, and an error chunk otherwise; st->input_tokens and
 * st->output_tokens hold the stream's usage.
 */
ngx_smartflow_json_t *ngx_smartflow_xlate_req_openai_to_gemini(
    ngx_smartflow_xlate_t *x, ngx_smartflow_json_t *req);
ngx_smartflow_json_t *ngx_smartflow_xlate_resp_gemini_to_openai(
    ngx_smartflow_xlate_t *x, ngx_smartflow_json_t *resp);
ngx_int_t ngx_smartflow_xlate_stream_gemini_to_openai(
    ngx_smartflow_xlate_t *x, ngx_smartflow_xlate_stream_t *st,
    ngx_str_t *event, ngx_smartflow_json_t *data, ngx_array_t *out);
ngx_int_t ngx_smartflow_xlate_stream_end_gemini_openai(
    ngx_smartflow_xlate_t *x, ngx_smartflow_xlate_stream_t *st,
    ngx_uint_t broken, ngx_array_t *out);


#endif /* _NGX_HTTP_SMARTFLOW_TRANSLATE_H_INCLUDED_ */
