/*
 * Translation between the providers' wire formats (OpenAI Chat
 * Completions, Anthropic Messages, Gemini generateContent): pure functions
 * from one JSON tree to another, all memory from the given pool.  The
 * pipeline translates requests, the filters translate responses, errors
 * and streams event by event.  One file per provider format; the helpers
 * they share (trees, strings, error classes, stream events) are declared
 * last.
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


/*
 * state of one streamed response being translated; what it keeps across
 * events (the ids) comes from its pool, or from x->pool when that is NULL,
 * so that x->pool may be a scratch pool reset after each event
 */
typedef struct {
    ngx_pool_t                 *pool;
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


#define ngx_smartflow_xlate_st_pool(x, st)                                \
    ((st)->pool ? (st)->pool : (x)->pool)


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


/*
 * What the translations share (ngx_http_smartflow_translate.c).  Trees:
 * _add appends a new node to parent (when given) under key, _fail sets
 * x->err and returns NGX_ERROR, _copy spends one of *budget per node when
 * budget is not NULL and returns NULL once it runs out.
 */
ngx_int_t ngx_smartflow_xlate_fail(ngx_smartflow_xlate_t *x, char *msg);
ngx_smartflow_json_t *ngx_smartflow_xlate_add_num(ngx_pool_t *pool,
    ngx_smartflow_json_t *parent, char *key, ngx_uint_t n);
ngx_int_t ngx_smartflow_xlate_add_number(ngx_pool_t *pool,
    ngx_smartflow_json_t *dst, char *key, ngx_smartflow_json_t *src,
    char *from);


/* in line, so that a literal key's length is counted at compile time */

static ngx_inline ngx_smartflow_json_t *
ngx_smartflow_xlate_add(ngx_pool_t *pool, ngx_smartflow_json_t *parent,
    char *key, ngx_smartflow_json_type_e type, ngx_str_t *str)
{
    ngx_smartflow_json_t  *j;

    j = ngx_smartflow_json_new(pool, type, str);

    if (j && parent) {
        ngx_smartflow_json_append(parent, key, j);
    }

    return j;
}


/*
 * A string s with what is known about its escaping: plain, the end of s
 * when it needs none (see key_plain and str_plain), or NULL
 */

static ngx_inline ngx_smartflow_json_t *
ngx_smartflow_xlate_add_text(ngx_pool_t *pool, ngx_smartflow_json_t *parent,
    char *key, ngx_str_t *s, u_char *plain)
{
    ngx_smartflow_json_t  *j;

    j = ngx_smartflow_xlate_add(pool, parent, key, NGX_SMARTFLOW_JSON_STRING,
                                s);
    if (j) {
        j->str_plain = plain;
    }

    return j;
}


/* a copy of the string v */

static ngx_inline ngx_smartflow_json_t *
ngx_smartflow_xlate_add_str(ngx_pool_t *pool, ngx_smartflow_json_t *parent,
    char *key, ngx_smartflow_json_t *v)
{
    return ngx_smartflow_xlate_add_text(pool, parent, key, &v->str,
                                        v->str_plain);
}


/* lit is the gateway's own text, which needs no escaping */

static ngx_inline ngx_smartflow_json_t *
ngx_smartflow_xlate_add_lit(ngx_pool_t *pool, ngx_smartflow_json_t *parent,
    char *key, char *lit)
{
    ngx_str_t  s;

    s.data = (u_char *) lit;
    s.len = ngx_strlen(lit);

    return ngx_smartflow_xlate_add_text(pool, parent, key, &s, s.data + s.len);
}


ngx_smartflow_json_t *ngx_smartflow_xlate_copy(ngx_pool_t *pool,
    ngx_smartflow_json_t *src, ngx_uint_t *budget);
void ngx_smartflow_xlate_add_ordered(ngx_smartflow_json_t *parent,
    ngx_smartflow_json_t *node, ngx_smartflow_json_t **lead,
    ngx_uint_t (*first)(ngx_smartflow_json_t *j));

/*
 * OpenAI's messages as a provider's turns, for Anthropic and Gemini alike:
 * the system and developer messages joined into *system, every other
 * message turned into the provider's parts by t->parts, and consecutive
 * turns of one side merged into one (both providers want the sides to
 * alternate), t->first choosing the parts that go first in a merged turn.
 * Each turn is {"role": "user" or t->assistant, t->parts_key: [parts]}.
 * t->parts is given t->data, the caller's state for the whole request,
 * and sees the messages in their order.  NULL and x->err on bad input.
 */
typedef enum {
    NGX_SMARTFLOW_XLATE_USER = 0,
    NGX_SMARTFLOW_XLATE_ASSISTANT,
    NGX_SMARTFLOW_XLATE_TOOL
} ngx_smartflow_xlate_role_e;

typedef struct {
    ngx_int_t                 (*parts)(ngx_smartflow_xlate_t *x,
                                       void *data,
                                       ngx_smartflow_json_t *m,
                                       ngx_smartflow_xlate_role_e role,
                                       ngx_smartflow_json_t *parts);
    ngx_uint_t                (*first)(ngx_smartflow_json_t *part);
    char                       *parts_key;
    char                       *assistant;
    void                       *data;
} ngx_smartflow_xlate_turns_t;

ngx_smartflow_json_t *ngx_smartflow_xlate_turns(ngx_smartflow_xlate_t *x,
    ngx_smartflow_json_t *req, ngx_smartflow_xlate_turns_t *t,
    ngx_str_t *system);

/* the OpenAI side of tool calls and whole answers; NULL: out of memory */
ngx_smartflow_json_t *ngx_smartflow_xlate_call_input(ngx_smartflow_xlate_t *x,
    ngx_smartflow_json_t *fn);
ngx_int_t ngx_smartflow_xlate_add_call(ngx_smartflow_xlate_t *x,
    ngx_smartflow_json_t *calls, ngx_str_t *id, ngx_str_t *name,
    ngx_str_t *args);

typedef struct {
    ngx_uint_t                  prompt;
    ngx_uint_t                  completion;
    ngx_uint_t                  cached;         /* of the prompt */
    ngx_uint_t                  reasoning;      /* of the completion */
} ngx_smartflow_xlate_usage_t;

ngx_smartflow_json_t *ngx_smartflow_xlate_completion(ngx_smartflow_xlate_t *x,
    ngx_str_t *id, ngx_str_t *text, u_char *text_plain,
    ngx_smartflow_json_t *calls, char *finish,
    ngx_smartflow_xlate_usage_t *usage);

/* strings */
ngx_uint_t ngx_smartflow_xlate_eq(ngx_str_t *s, char *lit);
ngx_uint_t ngx_smartflow_xlate_is(ngx_smartflow_json_t *j, char *lit);
ngx_uint_t ngx_smartflow_xlate_type_is(ngx_smartflow_json_t *obj,
    char *type);
ngx_uint_t ngx_smartflow_xlate_present(ngx_smartflow_json_t *j);
ngx_uint_t ngx_smartflow_xlate_uint(ngx_smartflow_json_t *j);
void ngx_smartflow_xlate_str_lit(ngx_str_t *s, char *lit);
ngx_int_t ngx_smartflow_xlate_concat(ngx_pool_t *pool, ngx_str_t *dst,
    char *a, ngx_str_t *b);

/*
 * Text joined piece by piece: the buffer doubles when full, so that n
 * pieces cost O(total length), never a copy of the whole per piece.  A
 * first piece alone is borrowed, not copied (size 0).
 */
typedef struct {
    ngx_pool_t                 *pool;
    ngx_str_t                   str;
    size_t                      size;
} ngx_smartflow_xlate_join_t;

void ngx_smartflow_xlate_join_init(ngx_smartflow_xlate_join_t *j,
    ngx_pool_t *pool);
ngx_int_t ngx_smartflow_xlate_join(ngx_smartflow_xlate_join_t *j, char *sep,
    ngx_str_t *add);
ngx_int_t ngx_smartflow_xlate_text_of(ngx_pool_t *pool,
    ngx_smartflow_json_t *content, char *sep, ngx_str_t *out);
ngx_int_t ngx_smartflow_xlate_data_url(ngx_str_t *url, ngx_str_t *media,
    ngx_str_t *data);
ngx_uint_t ngx_smartflow_xlate_http_url(ngx_str_t *url);


/* the error classes every format knows, with the names each gives them */
enum {
    NGX_SMARTFLOW_XLATE_ERR_INVALID = 0,
    NGX_SMARTFLOW_XLATE_ERR_AUTH,
    NGX_SMARTFLOW_XLATE_ERR_PERMISSION,
    NGX_SMARTFLOW_XLATE_ERR_NOT_FOUND,
    NGX_SMARTFLOW_XLATE_ERR_TOO_LARGE,
    NGX_SMARTFLOW_XLATE_ERR_RATE_LIMIT,
    NGX_SMARTFLOW_XLATE_ERR_API,
    NGX_SMARTFLOW_XLATE_ERR_OVERLOADED,
    NGX_SMARTFLOW_XLATE_ERR_NONE
};

typedef struct {
    char                       *anthropic;
    char                       *openai;
    char                       *code;           /* OpenAI code, or NULL */
} ngx_smartflow_xlate_error_kind_t;

/* a name -> class table, ended by { NULL, class when none matches } */
typedef struct {
    char                       *name;
    ngx_uint_t                  kind;
} ngx_smartflow_xlate_error_name_t;

extern ngx_smartflow_xlate_error_kind_t  ngx_smartflow_xlate_error_kinds[];

ngx_uint_t ngx_smartflow_xlate_error_lookup(
    ngx_smartflow_xlate_error_name_t *names, ngx_str_t *name);


#define NGX_SMARTFLOW_XLATE_STREAM_BROKEN                                    \
    "The provider's stream ended before completion."

#define NGX_SMARTFLOW_XLATE_LINE_PIECES  24
#define NGX_SMARTFLOW_XLATE_LINE_NUMS    4

/* one client SSE event under construction: literal and escaped pieces */
typedef struct {
    ngx_str_t                   piece[NGX_SMARTFLOW_XLATE_LINE_PIECES];
    u_char                      esc[NGX_SMARTFLOW_XLATE_LINE_PIECES];
    ngx_uint_t                  n;
    u_char                      num[NGX_SMARTFLOW_XLATE_LINE_NUMS]
                                   [NGX_INT_T_LEN];
    ngx_uint_t                  nnum;
    ngx_uint_t                  overflow;
} ngx_smartflow_xlate_line_t;

#define ngx_smartflow_xlate_raw(l, lit)                                      \
    ngx_smartflow_xlate_line_add(l, (u_char *) lit, sizeof(lit) - 1, 0)

void ngx_smartflow_xlate_line_add(ngx_smartflow_xlate_line_t *l,
    u_char *data, size_t len, ngx_uint_t esc);
void ngx_smartflow_xlate_esc(ngx_smartflow_xlate_line_t *l, ngx_str_t *s);
void ngx_smartflow_xlate_num(ngx_smartflow_xlate_line_t *l, ngx_uint_t n);
/* sizes the event, allocates it once, writes it and appends it to out */
ngx_int_t ngx_smartflow_xlate_line_emit(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_line_t *l, ngx_array_t *out);
ngx_int_t ngx_smartflow_xlate_emit_static(ngx_smartflow_xlate_t *x,
    ngx_array_t *out, char *s);

/*
 * OpenAI chunks, whatever the provider: "data: {"id","object","created",
 * "model","choices":...}" from st->id, st->created and x->model.  A _tool
 * chunk carries index st->tool_index; _error also sends [DONE] and marks
 * the stream done, as _done does.
 */
void ngx_smartflow_xlate_chunk_head(ngx_smartflow_xlate_line_t *l,
    ngx_smartflow_xlate_t *x, ngx_smartflow_xlate_stream_t *st);
void ngx_smartflow_xlate_chunk_tail(ngx_smartflow_xlate_line_t *l,
    ngx_str_t *finish);
ngx_int_t ngx_smartflow_xlate_chunk_role(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, ngx_array_t *out);
ngx_int_t ngx_smartflow_xlate_chunk_text(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, ngx_str_t *text, ngx_array_t *out);
ngx_int_t ngx_smartflow_xlate_chunk_tool(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, ngx_str_t *id, ngx_str_t *name,
    ngx_str_t *args, ngx_array_t *out);
ngx_int_t ngx_smartflow_xlate_chunk_finish(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, ngx_str_t *reason, ngx_array_t *out);
ngx_int_t ngx_smartflow_xlate_chunk_usage(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, ngx_array_t *out);
ngx_int_t ngx_smartflow_xlate_chunk_error(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, ngx_uint_t kind, ngx_str_t *message,
    char *code, ngx_array_t *out);
ngx_int_t ngx_smartflow_xlate_chunk_done(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, ngx_array_t *out);


#endif /* _NGX_HTTP_SMARTFLOW_TRANSLATE_H_INCLUDED_ */
