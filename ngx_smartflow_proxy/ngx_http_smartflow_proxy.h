/*
 * The request context every Smartflow module shares, and the API the
 * cache, policy and audit modules call.  The proxy module is loaded first
 * and nginx dlopen()s modules with RTLD_GLOBAL, so the functions declared
 * here resolve in the modules loaded after it.
 */

#ifndef _NGX_HTTP_SMARTFLOW_PROXY_H_INCLUDED_
#define _NGX_HTTP_SMARTFLOW_PROXY_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#if (defined __SSE2__)
#include <emmintrin.h>
#endif


#define NGX_SMARTFLOW_VERSION        "0.1.0"
#define NGX_SMARTFLOW_JSON_MAX_DEPTH 64


/* JSON: a small tree in the request pool, built once per document */

typedef enum {
    NGX_SMARTFLOW_JSON_NULL = 0,
    NGX_SMARTFLOW_JSON_FALSE,
    NGX_SMARTFLOW_JSON_TRUE,
    NGX_SMARTFLOW_JSON_NUMBER,
    NGX_SMARTFLOW_JSON_STRING,
    NGX_SMARTFLOW_JSON_ARRAY,
    NGX_SMARTFLOW_JSON_OBJECT
} ngx_smartflow_json_type_e;


typedef struct ngx_smartflow_json_s  ngx_smartflow_json_t;

struct ngx_smartflow_json_s {
    ngx_smartflow_json_type_e   type;
    ngx_str_t                   key;     /* member name inside an object */
    ngx_str_t                   str;     /* string value or number text */
    ngx_smartflow_json_t       *child;
    ngx_smartflow_json_t       *last;
    ngx_smartflow_json_t       *next;
    ngx_uint_t                  nchild;
    /*
     * the end of key or str when it needs no escaping, or NULL; whoever
     * sets key or str to other text sets these to NULL (or to the end of
     * text known to be plain), and string bytes are never edited in place
     */
    u_char                     *key_plain;
    u_char                     *str_plain;
};


ngx_smartflow_json_t *ngx_smartflow_json_parse(ngx_pool_t *pool, u_char *p,
    size_t len, ngx_str_t *err);
ngx_smartflow_json_t *ngx_smartflow_json_parse_copy(ngx_pool_t *pool,
    u_char *p, size_t len, ngx_str_t *err, ngx_str_t *copy);
ngx_smartflow_json_t *ngx_smartflow_json_get_n(ngx_smartflow_json_t *obj,
    char *key, size_t len);

ngx_smartflow_json_t *ngx_smartflow_json_new(ngx_pool_t *pool,
    ngx_smartflow_json_type_e type, ngx_str_t *str);
/*
 * key, when given, is one of the gateway's own member names, written as
 * it is: a name from a client or a provider comes with its node, through
 * a copy that keeps what is known about its escaping
 */
void ngx_smartflow_json_append_n(ngx_smartflow_json_t *parent, char *key,
    size_t len, ngx_smartflow_json_t *child);


/* with a literal key, its length is counted at compile time */

static ngx_inline ngx_smartflow_json_t *
ngx_smartflow_json_get(ngx_smartflow_json_t *obj, char *key)
{
    return ngx_smartflow_json_get_n(obj, key, ngx_strlen(key));
}


static ngx_inline void
ngx_smartflow_json_append(ngx_smartflow_json_t *parent, char *key,
    ngx_smartflow_json_t *child)
{
    ngx_smartflow_json_append_n(parent, key, key ? ngx_strlen(key) : 0,
                                child);
}


ngx_int_t ngx_smartflow_json_set_str(ngx_pool_t *pool,
    ngx_smartflow_json_t *obj, char *key, ngx_str_t *value);
ngx_int_t ngx_smartflow_json_dump(ngx_pool_t *pool, ngx_smartflow_json_t *j,
    ngx_str_t *out);
size_t ngx_smartflow_json_escape_len(u_char *src, size_t len);
u_char *ngx_smartflow_json_escape(u_char *dst, u_char *src, size_t len);

/*
 * The top bit of each of 8 bytes that is a control byte, '"' or '\\', the
 * bytes a plain run of a string has none of (a byte is zero in v when
 * v - 0x01 borrows from its top bit and the byte had not that bit set)
 */
#define NGX_SF_JSON_ONES    0x0101010101010101ULL
#define NGX_SF_JSON_HIGHS   0x8080808080808080ULL

static ngx_inline uint64_t
ngx_smartflow_json_special8(uint64_t x)
{
    uint64_t  q, b;

    q = x ^ (NGX_SF_JSON_ONES * '"');
    b = x ^ (NGX_SF_JSON_ONES * '\\');

    return (((x - NGX_SF_JSON_ONES * 0x20) & ~x)
            | ((q - NGX_SF_JSON_ONES) & ~q)
            | ((b - NGX_SF_JSON_ONES) & ~b))
           & NGX_SF_JSON_HIGHS;
}


/*
 * past the bytes that are no '"', no '\\' and no control byte (and, if
 * ascii, no byte above 0x7f): 16 at a time with SSE2, right to the first
 * other one; then 8 at a time, on a little-endian machine right to the
 * first other one too (the lowest top bit that special8() sets is always
 * a true one: a false one needs a borrow from a true one below it)
 */

static ngx_inline u_char *
ngx_smartflow_json_run(u_char *p, u_char *end, ngx_uint_t ascii)
{
    uint64_t  x, m;
#if (defined __SSE2__ && defined __GNUC__)
    int       bits;
    __m128i   v, quote, backslash, control;

    quote = _mm_set1_epi8('"');
    backslash = _mm_set1_epi8('\\');
    control = _mm_set1_epi8(0x1f);

    while (end - p >= 16) {
        v = _mm_loadu_si128((const __m128i *) p);

        bits = _mm_movemask_epi8(
                   _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote),
                                             _mm_cmpeq_epi8(v, backslash)),
                                _mm_cmpeq_epi8(_mm_min_epu8(v, control), v)));

        if (ascii) {
            bits |= _mm_movemask_epi8(v);
        }

        if (bits) {
            return p + __builtin_ctz(bits);
        }

        p += 16;
    }
#endif

    while (end - p >= 8) {
        ngx_memcpy(&x, p, 8);

        m = ngx_smartflow_json_special8(x);

        if (ascii) {
            m |= x & NGX_SF_JSON_HIGHS;
        }

        if (m != 0) {
#if (NGX_HAVE_LITTLE_ENDIAN && defined __GNUC__)
            p += __builtin_ctzll(m) >> 3;
#endif
            break;
        }

        p += 8;
    }

    return p;
}


#define ngx_smartflow_json_plain(p, end)  ngx_smartflow_json_run(p, end, 0)

/*
 * Token counts read from a JSON answer as it passes: a lexer that keeps
 * its state between buffers, no copy and no tree, and notes only the
 * counts in the top-level "usage" (OpenAI, Anthropic) or "usageMetadata"
 * (Gemini) object.
 */
typedef struct {
    ngx_uint_t                  prompt;
    ngx_uint_t                  completion;
    ngx_uint_t                  depth;
    uint64_t                    objects;     /* bit d - 1: depth d is {} */
    ngx_uint_t                  value;       /* the number being read */
    ngx_uint_t                  state;
    ngx_uint_t                  field;       /* 1 prompt, 2 completion */
    size_t                      key_len;
    u_char                      key[32];
    unsigned                    usage_next:1;
    unsigned                    in_usage:1;
    unsigned                    expect_key:1;
    unsigned                    is_key:1;
    unsigned                    escape:1;
    unsigned                    number_ok:1;
    unsigned                    failed:1;
} ngx_smartflow_usage_scan_t;

void ngx_smartflow_usage_scan_init(ngx_smartflow_usage_scan_t *us);
/* p NULL: the end of the answer */
void ngx_smartflow_usage_scan(ngx_smartflow_usage_scan_t *us, u_char *p,
    size_t len);

/* copies a string literal without counting its length by hand */
#define ngx_sf_cpymem(p, lit)  ngx_cpymem(p, lit "", sizeof(lit) - 1)

#define ngx_smartflow_json_is_string(j)                                      \
    ((j) != NULL && (j)->type == NGX_SMARTFLOW_JSON_STRING)


/* Server-Sent Events, read incrementally */

typedef struct {
    ngx_str_t                   raw;     /* the event's bytes, blank line in */
    ngx_str_t                   event;   /* "event:" field, or empty */
    ngx_str_t                   data;    /* "data:" lines joined by '\n' */
    unsigned                    comment:1;   /* no event and no data */
} ngx_smartflow_sse_event_t;

typedef ngx_int_t (*ngx_smartflow_sse_pt)(void *data,
    ngx_smartflow_sse_event_t *ev);

typedef struct {
    ngx_pool_t                 *pool;
    ngx_pool_t                 *scratch; /* joined "data:" lines, or NULL */
    u_char                     *buf;     /* carry-over of an unfinished event */
    size_t                      len;
    size_t                      size;
    size_t                      max;     /* largest event accepted */
} ngx_smartflow_sse_t;

/*
 * NGX_OK, NGX_ERROR (no memory, or what the handler returned), or
 * NGX_DECLINED when an event exceeds sse->max.  The data of an event of
 * several "data:" lines is joined in sse->scratch, a pool its owner resets
 * after each event, or in sse->pool when there is none.
 */
ngx_int_t ngx_smartflow_sse_feed(ngx_smartflow_sse_t *sse, u_char *p,
    size_t len, ngx_smartflow_sse_pt handler, void *data);


/* configuration shared with the other modules */

typedef enum {
    NGX_HTTP_SMARTFLOW_API_NONE = 0,
    NGX_HTTP_SMARTFLOW_API_CHAT,
    NGX_HTTP_SMARTFLOW_API_COMPLETIONS,
    NGX_HTTP_SMARTFLOW_API_EMBEDDINGS,
    NGX_HTTP_SMARTFLOW_API_MESSAGES,        /* Anthropic Messages */
    NGX_HTTP_SMARTFLOW_API_MODELS,
    NGX_HTTP_SMARTFLOW_API_ANTHROPIC_MODELS,
    NGX_HTTP_SMARTFLOW_API_HEALTH,
    NGX_HTTP_SMARTFLOW_API_ADMIN_KEYS,      /* virtual keys admin API */
    NGX_HTTP_SMARTFLOW_API_ADMIN_PROVIDERS, /* provider credentials API */
    NGX_HTTP_SMARTFLOW_API_ERROR,
    NGX_HTTP_SMARTFLOW_API_ANTHROPIC_ERROR,
    NGX_HTTP_SMARTFLOW_API_NEXT,            /* the next deployment */
    NGX_HTTP_SMARTFLOW_API_ATTEMPT          /* one deployment's attempt */
} ngx_http_smartflow_api_e;


#define NGX_HTTP_SMARTFLOW_BALANCE_WEIGHTED        0
#define NGX_HTTP_SMARTFLOW_BALANCE_LEAST_IN_FLIGHT 1


/* the wire format a client or a provider speaks */
typedef enum {
    NGX_HTTP_SMARTFLOW_FORMAT_OPENAI = 0,
    NGX_HTTP_SMARTFLOW_FORMAT_ANTHROPIC,
    NGX_HTTP_SMARTFLOW_FORMAT_GEMINI
} ngx_http_smartflow_format_e;


typedef enum {
    NGX_HTTP_SMARTFLOW_PROVIDER_OPENAI = 0,
    NGX_HTTP_SMARTFLOW_PROVIDER_ANTHROPIC,
    NGX_HTTP_SMARTFLOW_PROVIDER_GEMINI,
    NGX_HTTP_SMARTFLOW_PROVIDER_ECHO
} ngx_http_smartflow_provider_type_e;


/*
 * Counters in the status zone (smartflow_zone), shared by all workers:
 * one slot per provider and one per deployment, found by name.
 */
#define NGX_SMARTFLOW_SLOT_NAME  96

typedef struct {
    u_char                      name[NGX_SMARTFLOW_SLOT_NAME];
    ngx_atomic_t                requests;
    ngx_atomic_t                failures;
    ngx_atomic_t                consecutive_failures;
    ngx_atomic_t                last_status;
    ngx_atomic_t                last_failure;    /* epoch seconds */
} ngx_smartflow_provider_stats_t;


/* a deployment's circuit breaker and load */
typedef struct {
    u_char                      name[NGX_SMARTFLOW_SLOT_NAME];
    ngx_atomic_t                requests;
    ngx_atomic_t                failures;
    ngx_atomic_t                consecutive_failures;
    ngx_atomic_t                open_until;      /* epoch seconds */
    ngx_atomic_t                probing;         /* a half-open probe is out */
    ngx_atomic_t                in_flight;
} ngx_smartflow_deployment_stats_t;


typedef struct {
    ngx_str_t                   name;
    ngx_uint_t                  type;
    ngx_str_t                   upstream;       /* "http://sf_openai" */
    ngx_str_t                   host;           /* Host header, TLS SNI */
    ngx_str_t                   path;           /* base path, "/v1" */
    ngx_str_t                   auth;           /* Authorization value */
    ngx_str_t                   api_key;        /* x-api-key value */
    ngx_smartflow_provider_stats_t  *stats;
} ngx_http_smartflow_provider_t;


/*
 * A route is one deployment of a model name; the deployments of one name
 * are chained in configuration order from the first, which the lookup
 * returns.  Primaries share the load; fallbacks are tried after them.
 */
typedef struct ngx_http_smartflow_route_s  ngx_http_smartflow_route_t;

struct ngx_http_smartflow_route_s {
    ngx_str_t                   pattern;
    ngx_str_t                   model;          /* upstream name, or empty */
    ngx_str_t                   name;           /* "provider/model" */
    ngx_http_smartflow_provider_t  *provider;
    ngx_http_smartflow_route_t *next;
    ngx_uint_t                  weight;
    ngx_msec_t                  timeout;        /* to the answer's header */
    ngx_smartflow_deployment_stats_t  *stats;
    unsigned                    wildcard:1;
    unsigned                    fallback:1;
};


#define NGX_HTTP_SMARTFLOW_MAX_PLAN  8

/* the JSON trees of a request: one block holds a translated exchange */
#define NGX_HTTP_SMARTFLOW_POOL_SIZE  16384


/* limits and money: unset limits are "unlimited", money is micro-USD */
#define NGX_HTTP_SMARTFLOW_UNLIMITED  ((uint64_t) -1)


/*
 * What a request knows of its virtual key, copied out of the keys zone
 * by the ACCESS handler, and the reservation the LOG phase settles.
 */
typedef struct {
    ngx_uint_t                  id;
    ngx_str_t                   name;
    ngx_str_t                   team;
    ngx_str_t                   user;
    ngx_str_t                   policy_group;
    ngx_str_t                  *models;         /* lower-case globs */
    ngx_uint_t                  nmodels;        /* 0: any model */
    uint64_t                    rpm;
    uint64_t                    tpm;
    uint64_t                    budget;

    /* the x-ratelimit-* response headers */
    uint64_t                    requests_left;
    uint64_t                    tokens_left;
    ngx_msec_t                  reset;          /* until the window ends */
    time_t                      retry_after;    /* set with a 429 */

    /* the estimate reserved before the request went out */
    uint64_t                    window;         /* epoch ms it began */
    time_t                      period_start;
    uint64_t                    est_prompt;
    uint64_t                    est_tokens;
    uint64_t                    est_cost;
    uint64_t                    price_in;       /* micro-USD per 1M */
    uint64_t                    price_out;
    unsigned                    reserved:1;
    unsigned                    settled:1;
} ngx_http_smartflow_vkey_t;


/* the request context */

typedef struct {
    ngx_uint_t                  api;
    ngx_int_t                   status;         /* pipeline result */

    ngx_str_t                   body;           /* client body, contiguous */
    ngx_pool_t                 *pool;           /* the JSON trees' */
    ngx_pool_t                 *event_pool;     /* one stream event's */
    ngx_smartflow_json_t       *json;
    ngx_smartflow_json_t       *upstream_json;  /* json in the provider's */
    ngx_str_t                   model;          /* as the client named it */

    ngx_http_smartflow_route_t     *route;
    ngx_http_smartflow_provider_t  *provider;
    ngx_http_smartflow_route_t     *plan[NGX_HTTP_SMARTFLOW_MAX_PLAN];
    ngx_uint_t                  nplan;
    ngx_uint_t                  attempt;
    ngx_uint_t                  states;         /* upstream states before
                                                   the attempt in flight */
    ngx_uint_t                  uri_changes;    /* left at the first */
    ngx_uint_t                  half;           /* bit k: plan[k] probes */
    ngx_http_smartflow_route_t     *probe;      /* its probe is ours */
    void                      **loc_conf;       /* the client location's */
    time_t                      probe_time;     /* the claim */
    ngx_str_t                   upstream_model;
    ngx_str_t                   upstream_uri;
    ngx_str_t                   upstream_body;

    ngx_str_t                   key_id;         /* identity of the caller */
    ngx_str_t                   team;           /* the virtual key's team */
    ngx_http_smartflow_vkey_t  *vkey;           /* NULL for the master key */
    void                       *keys_redis;     /* keys: a Redis wait */

    ngx_uint_t                  stage;          /* next pipeline stage */

    ngx_uint_t                  client_format;
    ngx_uint_t                  wire_format;    /* the provider's */
    ngx_uint_t                  prompt_tokens;
    ngx_uint_t                  completion_tokens;

    /* response filtering: stream events, or a whole JSON body */
    ngx_uint_t                  filter;
    ngx_smartflow_sse_t         sse;
    void                       *xlate_stream;
    void                       *xlate_first;    /* Gemini -> OpenAI step */
    ngx_smartflow_json_t       *xlate_event;
    ngx_chain_t                *out;
    ngx_chain_t               **last_out;
    ngx_buf_t                  *out_tail;       /* last in out, not passed on */
    ngx_chain_t                *free;
    ngx_chain_t                *busy;
    u_char                     *collect;
    size_t                      collect_len;
    size_t                      collect_size;
    off_t                       stream_bytes;
    ngx_event_t                 stream_timer;   /* smartflow_stream_max_time */
    ngx_event_t                 attempt_timer;  /* a route's timeout= */
    void                       *wiped_upstream; /* its request is wiped */
    ngx_smartflow_usage_scan_t  usage;

    /* the cache's verdict, for the headers, the audit record, metrics */
    ngx_str_t                   cache_status;   /* HIT, MISS, BYPASS */
    ngx_uint_t                  cache_phase;    /* 1-4 on a hit */
    ngx_uint_t                  cache_similarity;   /* per mille, 2 and 4 */
    ngx_uint_t                  cache_threshold;    /* per mille, from the
                                                   virtual key; 0: none */

    /* the policy's decisions: "rule:action" items joined by ',' */
    ngx_str_t                   policy_decisions;

    ngx_uint_t                  err_status;
    ngx_str_t                   err_type;
    ngx_str_t                   err_code;
    ngx_str_t                   err_param;
    ngx_str_t                   err_message;

    unsigned                    stream:1;
    unsigned                    body_requested:1;
    unsigned                    pipeline_done:1;
    unsigned                    master:1;
    unsigned                    authorized:1;   /* the key was accepted */
    unsigned                    counted:1;
    unsigned                    dispatched:1;   /* an attempt is in flight */
    unsigned                    probe_cleanup:1;
    unsigned                    translate:1;    /* client != provider */
    unsigned                    hide_usage:1;   /* usage chunk we asked for */
    unsigned                    stream_done:1;  /* terminal event seen */
    unsigned                    stream_ended:1;
    unsigned                    own_response:1; /* an error page, not filtered */
    unsigned                    stream_capped:1;
    unsigned                    policy_blocked:1;
    unsigned                    cache_hit:1;    /* answered from the cache */
    unsigned                    output_scan:1;  /* the output scanner runs */
    unsigned                    output_blocked:1;
    unsigned                    header_held:1;  /* until the answer is read */
    unsigned                    json_failed:1;  /* answered with a 502 */
    unsigned                    unreadable:1;   /* the attempt's answer
                                                   could not be read */
    unsigned                    not_api:1;      /* its first bytes are
                                                   not the API's answer */
    unsigned                    keepalive:1;    /* the client's, when the
                                                   header was held */
} ngx_http_smartflow_ctx_t;


#define NGX_HTTP_SMARTFLOW_FILTER_NONE    0
#define NGX_HTTP_SMARTFLOW_FILTER_STREAM  1
#define NGX_HTTP_SMARTFLOW_FILTER_JSON    2
#define NGX_HTTP_SMARTFLOW_FILTER_USAGE   3


/*
 * A pipeline stage runs in PRECONTENT once the body is parsed and routed.
 * It returns NGX_DECLINED to go on, NGX_DONE when it has answered the
 * request itself, NGX_AGAIN when it waits (it then calls
 * ngx_http_smartflow_pipeline_resume()), or an HTTP status after
 * ngx_http_smartflow_error() has described the refusal.
 */
typedef ngx_int_t (*ngx_http_smartflow_stage_pt)(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx);

#define NGX_HTTP_SMARTFLOW_STAGE_KEYS     50
#define NGX_HTTP_SMARTFLOW_STAGE_POLICY   100
#define NGX_HTTP_SMARTFLOW_STAGE_CACHE    200


/*
 * A response tap sees the answer exactly as the client receives it (its
 * own format, JSON or SSE, after translation), for the main request of
 * every gateway endpoint, the module's own refusals included.  It is
 * called for each piece of the body and once with last set when the body
 * ends (p may then be NULL).  A response cut short by the client never
 * reaches last: the LOG phase is the end for it.  NGX_ERROR fails the
 * request.
 */
typedef ngx_int_t (*ngx_http_smartflow_tap_pt)(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, u_char *p, size_t len, ngx_uint_t last);


/*
 * The output scanner (one, the policy module's) sees what the client is
 * about to receive, in the client's format, for requests whose ctx has
 * output_scan set: each stream event (event: the raw SSE event, answer
 * NULL), or a whole JSON answer with status 200 (answer: its tree, which
 * it may change in place; event NULL).  For an event it returns
 * NGX_DECLINED to pass the event as it is, NGX_OK to send the events it
 * put in out (ngx_str_t, possibly none) instead, NGX_ABORT to send those
 * and end the stream there (a block), or NGX_ERROR.  out's pool is the
 * event's scratch pool, reset once the events in out are copied: what
 * the scanner keeps from one event to the next goes in r->pool.
 */
typedef ngx_int_t (*ngx_http_smartflow_output_pt)(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_smartflow_json_t *answer,
    ngx_str_t *event, ngx_array_t *out);

ngx_int_t ngx_http_smartflow_register_output(ngx_conf_t *cf,
    ngx_http_smartflow_output_pt handler);

ngx_http_smartflow_ctx_t *ngx_http_smartflow_get_ctx(ngx_http_request_t *r);
ngx_pool_t *ngx_http_smartflow_pool(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx);
ngx_http_smartflow_ctx_t *ngx_http_smartflow_create_ctx(
    ngx_http_request_t *r);
ngx_uint_t ngx_smartflow_glob(u_char *p, u_char *pe, u_char *s, u_char *se);
ngx_str_t *ngx_http_smartflow_header_in(ngx_list_t *headers, char *name);
ngx_int_t ngx_http_smartflow_register_stage(ngx_conf_t *cf, ngx_uint_t order,
    ngx_http_smartflow_stage_pt handler);
void ngx_http_smartflow_pipeline_resume(ngx_http_request_t *r);
ngx_int_t ngx_http_smartflow_register_tap(ngx_conf_t *cf,
    ngx_http_smartflow_tap_pt handler);
ngx_int_t ngx_http_smartflow_error(ngx_http_request_t *r,
    ngx_uint_t status, char *type, char *code, char *param,
    const char *fmt, ...);
ngx_int_t ngx_http_smartflow_refuse(ngx_http_request_t *r, ngx_uint_t status,
    ngx_uint_t anthropic);
ngx_int_t ngx_http_smartflow_send(ngx_http_request_t *r, ngx_uint_t status,
    ngx_uint_t sse, ngx_str_t *body);
/*
 * Prometheus text for GET /metrics: a module registers a writer, which
 * returns its metric families (HELP, TYPE, samples) in text from r's
 * pool; ngx_http_smartflow_metrics() joins what every writer returns, for
 * the endpoint to append.  ngx_http_smartflow_metrics.c.
 */
typedef ngx_int_t (*ngx_http_smartflow_metrics_pt)(ngx_http_request_t *r,
    ngx_str_t *text);

ngx_int_t ngx_http_smartflow_register_metrics(ngx_conf_t *cf,
    ngx_http_smartflow_metrics_pt writer);
ngx_int_t ngx_http_smartflow_metrics(ngx_http_request_t *r, ngx_str_t *text);
u_char *ngx_http_smartflow_metrics_label(u_char *p, ngx_str_t *value);

/* the cost of the tokens used so far, micro-USD; NGX_DECLINED: no price */
ngx_int_t ngx_http_smartflow_cost(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, uint64_t *micro);
u_char *ngx_http_smartflow_usd(u_char *p, uint64_t micro);

#define NGX_HTTP_SMARTFLOW_JSON  0
#define NGX_HTTP_SMARTFLOW_SSE   1

#define ngx_http_smartflow_send_json(r, status, json)                        \
    ngx_http_smartflow_send(r, status, NGX_HTTP_SMARTFLOW_JSON, json)


/* the proxy module's own configuration, shared by its source files */

typedef struct ngx_http_smartflow_keys_zone_s  ngx_http_smartflow_keys_zone_t;
typedef struct ngx_http_smartflow_credentials_s
    ngx_http_smartflow_credentials_t;

typedef struct {
    ngx_array_t                 providers;      /* provider_t * */
    ngx_array_t                 routes;         /* route_t * */
    ngx_hash_t                  route_hash;     /* exact names */
    ngx_array_t                 wildcards;      /* route_t *, config order */
    ngx_array_t                 stages;         /* stage_t, by order */
    ngx_array_t                 taps;           /* tap_pt */
    ngx_http_smartflow_output_pt    output;     /* the output scanner */
    ngx_str_t                   master_key;
    u_char                      master_hash[32];
    ngx_shm_zone_t             *zone;
    ngx_uint_t                  zone_generation;    /* see _shm.c */
    ngx_uint_t                  balance;
    ngx_uint_t                  max_attempts;
    ngx_uint_t                  breaker_failures;
    time_t                      breaker_cooldown;
    ngx_http_smartflow_keys_zone_t  *keys;      /* smartflow_keys_zone */
    ngx_array_t                 prices;         /* smartflow_price */
    ngx_http_smartflow_credentials_t  *credentials;
    ngx_array_t                 metrics;        /* metrics_pt, see above */
} ngx_http_smartflow_main_conf_t;


typedef struct {
    ngx_uint_t                  api;
    off_t                       stream_max_bytes;
    ngx_msec_t                  stream_max_time;
    ngx_flag_t                  usage_trailers;
} ngx_http_smartflow_loc_conf_t;


typedef struct {
    ngx_uint_t                  order;
    ngx_http_smartflow_stage_pt handler;
} ngx_http_smartflow_stage_t;


#define ngx_http_smartflow_api_format(api)                                   \
    (((api) == NGX_HTTP_SMARTFLOW_API_MESSAGES                                \
      || (api) == NGX_HTTP_SMARTFLOW_API_ANTHROPIC_MODELS                     \
      || (api) == NGX_HTTP_SMARTFLOW_API_ANTHROPIC_ERROR)                     \
     ? NGX_HTTP_SMARTFLOW_FORMAT_ANTHROPIC : NGX_HTTP_SMARTFLOW_FORMAT_OPENAI)


/* internal to the proxy module */
ngx_int_t ngx_http_smartflow_access_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_smartflow_precontent_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_smartflow_content_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_smartflow_log_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_smartflow_read_body(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx);
ngx_int_t ngx_http_smartflow_keys_init(ngx_conf_t *cf);
ngx_int_t ngx_http_smartflow_keys_api_handler(ngx_http_request_t *r);
char *ngx_http_smartflow_keys_zone_directive(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
char *ngx_http_smartflow_price_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_smartflow_keys_init_module(ngx_cycle_t *cycle);
ngx_int_t ngx_http_smartflow_keys_init_process(ngx_cycle_t *cycle);
void ngx_http_smartflow_keys_exit_process(ngx_cycle_t *cycle);
ngx_int_t ngx_http_smartflow_filter_init(ngx_conf_t *cf);
ngx_int_t ngx_http_smartflow_echo(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx);
char *ngx_http_smartflow_provider_directive(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
char *ngx_http_smartflow_route_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_smartflow_routes_init(ngx_conf_t *cf,
    ngx_http_smartflow_main_conf_t *smcf);
ngx_uint_t ngx_http_smartflow_route_plan(ngx_http_request_t *r,
    ngx_http_smartflow_main_conf_t *smcf, ngx_http_smartflow_route_t *head,
    ngx_str_t *force, ngx_http_smartflow_route_t **plan, ngx_uint_t *half,
    time_t *held);
time_t ngx_http_smartflow_route_probe(ngx_http_smartflow_main_conf_t *smcf,
    ngx_http_smartflow_route_t *rt);
void ngx_http_smartflow_route_unprobe(ngx_http_smartflow_route_t *rt,
    time_t claim);
void ngx_http_smartflow_route_result(ngx_http_smartflow_main_conf_t *smcf,
    ngx_http_smartflow_route_t *rt, ngx_uint_t status, time_t retry_after);
ngx_int_t ngx_http_smartflow_next(ngx_http_request_t *r);
ngx_int_t ngx_http_smartflow_attempt_timer(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx);
ngx_int_t ngx_http_smartflow_attempt(ngx_http_request_t *r);
void ngx_http_smartflow_client_location(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx);
void ngx_http_smartflow_attempt_result(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_uint_t status, time_t retry_after);
void ngx_http_smartflow_upstream_timeout(ngx_http_request_t *r);
void ngx_http_smartflow_timer_cleanup(void *data);
ngx_http_smartflow_route_t *ngx_http_smartflow_route_find(
    ngx_http_smartflow_main_conf_t *smcf, ngx_str_t *model);
char *ngx_http_smartflow_zone_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
void ngx_smartflow_shm_provider_result(ngx_http_smartflow_provider_t *p,
    ngx_uint_t status, ngx_uint_t failed);
ngx_int_t ngx_smartflow_shm_init_process(ngx_cycle_t *cycle);
ngx_uint_t ngx_smartflow_process_alive(ngx_pid_t pid);
ngx_int_t ngx_smartflow_sha256(u_char *data, size_t len, u_char *out);
ngx_int_t ngx_http_smartflow_cost_init(ngx_conf_t *cf);
char *ngx_http_smartflow_credentials_key(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_smartflow_credentials_store(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
ngx_int_t ngx_http_smartflow_credentials_check(ngx_conf_t *cf,
    ngx_http_smartflow_main_conf_t *smcf);
ngx_int_t ngx_http_smartflow_credentials_unseal(ngx_conf_t *cf,
    ngx_str_t *name, ngx_str_t *key);
ngx_int_t ngx_http_smartflow_credentials_get(ngx_http_request_t *r,
    ngx_http_smartflow_provider_t *pr, ngx_str_t *out);
ngx_int_t ngx_http_smartflow_wipe_later(ngx_pool_t *pool, u_char *data,
    size_t len);
ngx_int_t ngx_http_smartflow_wipe_upstream(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx);
ngx_int_t ngx_http_smartflow_credentials_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_smartflow_credentials_init_module(ngx_cycle_t *cycle);
ngx_int_t ngx_smartflow_state_dir(ngx_cycle_t *cycle, ngx_str_t *path,
    char *what);
ngx_int_t ngx_http_smartflow_cost_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);


extern ngx_module_t  ngx_http_smartflow_proxy_module;


#endif /* _NGX_HTTP_SMARTFLOW_PROXY_H_INCLUDED_ */
