/*
 * The audit module: in the LOG phase, one record per gateway request,
 * chained and signed, appended by every worker in one order to segment
 * files under smartflow_audit_dir (see ngx_smartflow_audit_keys.h for the
 * record's chain fields and ngx_http_smartflow_audit_seal.c for seals).
 * Each response carries a receipt header naming its record.  The older
 * smartflow_audit_log writes a plain JSON line per request as well.
 */

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "ngx_http_smartflow_audit.h"


#define NGX_HTTP_SMARTFLOW_AUDIT_ZONE                                     \
    (128 * 1024 + NGX_SMARTFLOW_AUDIT_BUFFER_MAX                           \
     + NGX_SMARTFLOW_AUDIT_LEAVES_MAX * 32 + 64 * 1024)


/* per request: the answer's hash as the client receives it */
typedef struct {
    sf_sha256_t       md;
    off_t             bytes;
    u_char           *kept;             /* smartflow_audit_bodies */
    size_t            kept_len;
    u_char            request[32];      /* the request body's SHA-256 */
    unsigned          complete:1;
    unsigned          request_done:1;
    unsigned          md_done:1;
} ngx_http_smartflow_audit_ctx_t;


static ngx_int_t ngx_http_smartflow_audit_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_smartflow_audit_record(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx,
    ngx_http_smartflow_audit_main_conf_t *amcf);
static ngx_int_t ngx_http_smartflow_audit_append(ngx_http_request_t *r,
    ngx_http_smartflow_audit_main_conf_t *amcf, u_char *line, u_char *p,
    const sf_audit_key_t *key, int64_t ts,
    ngx_http_smartflow_audit_sample_t *m);
static ngx_int_t ngx_http_smartflow_audit_plain(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_open_file_t *file);
static u_char *ngx_http_smartflow_audit_value(u_char *p, ngx_str_t *s);
static u_char *ngx_http_smartflow_audit_uint(u_char *p, uint64_t n);
static ngx_http_variable_value_t *ngx_http_smartflow_audit_request_id(
    ngx_http_request_t *r, ngx_http_smartflow_audit_main_conf_t *amcf);
static ngx_int_t ngx_http_smartflow_audit_tap(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, u_char *p, size_t len, ngx_uint_t last);
static ngx_http_smartflow_audit_ctx_t *ngx_http_smartflow_audit_get_ctx(
    ngx_http_request_t *r);
static ngx_int_t ngx_http_smartflow_audit_header_filter(
    ngx_http_request_t *r);
static ngx_int_t ngx_http_smartflow_audit_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static void *ngx_http_smartflow_audit_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_smartflow_audit_init_main_conf(ngx_conf_t *cf,
    void *conf);
static void *ngx_http_smartflow_audit_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_smartflow_audit_merge_loc_conf(ngx_conf_t *cf,
    void *parent, void *child);
static char *ngx_http_smartflow_audit_log(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_smartflow_audit_dir(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_smartflow_audit_init(ngx_conf_t *cf);
static ngx_int_t ngx_http_smartflow_audit_init_module(ngx_cycle_t *cycle);
static ngx_int_t ngx_http_smartflow_audit_init_process(ngx_cycle_t *cycle);
static void ngx_http_smartflow_audit_retry_timer(ngx_event_t *ev);
static void ngx_http_smartflow_audit_retry_thread(void *data,
    ngx_log_t *log);
static void ngx_http_smartflow_audit_retry_done(ngx_event_t *ev);
static void ngx_http_smartflow_audit_exit_process(ngx_cycle_t *cycle);
static ngx_int_t ngx_http_smartflow_audit_open(
    ngx_http_smartflow_audit_main_conf_t *amcf,
    ngx_http_smartflow_audit_sh_t *sh, ngx_log_t *log);
static ngx_int_t ngx_http_smartflow_audit_flush_locked(
    ngx_http_smartflow_audit_main_conf_t *amcf,
    ngx_http_smartflow_audit_sh_t *sh, ngx_log_t *log);
static ngx_int_t ngx_http_smartflow_audit_size(
    ngx_http_smartflow_audit_sh_t *sh, ngx_log_t *log);
static void ngx_http_smartflow_audit_flush_timer(ngx_event_t *ev);
static char *ngx_http_smartflow_audit_buffer(ngx_conf_t *cf, void *post,
    void *data);

static ngx_conf_post_handler_pt  ngx_http_smartflow_audit_buffer_p =
    ngx_http_smartflow_audit_buffer;


static ngx_command_t  ngx_http_smartflow_audit_commands[] = {

    { ngx_string("smartflow_audit_log"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_smartflow_audit_log,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("smartflow_audit_dir"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_smartflow_audit_dir,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("smartflow_audit_key_file"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_smartflow_audit_main_conf_t, key_file),
      NULL },

    { ngx_string("smartflow_audit_segment_size"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_smartflow_audit_main_conf_t, segment_size),
      NULL },

    { ngx_string("smartflow_audit_seal_interval"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_smartflow_audit_main_conf_t, seal_interval),
      NULL },

    { ngx_string("smartflow_audit_buffer"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_smartflow_audit_main_conf_t, buffer),
      &ngx_http_smartflow_audit_buffer_p },

    { ngx_string("smartflow_audit_flush"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_smartflow_audit_main_conf_t, flush),
      NULL },

    { ngx_string("smartflow_audit_immutable"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_smartflow_audit_main_conf_t, immutable),
      NULL },

    { ngx_string("smartflow_audit_thread_pool"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_smartflow_audit_main_conf_t, pool_name),
      NULL },

    { ngx_string("smartflow_audit_tsa"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_smartflow_audit_main_conf_t, tsa_url),
      NULL },

    { ngx_string("smartflow_audit_tsa_ca"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_smartflow_audit_tsa_ca,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_smartflow_audit_main_conf_t, tsa_ca),
      NULL },

    { ngx_string("smartflow_audit_tsa_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_smartflow_audit_main_conf_t, tsa_timeout),
      NULL },

    { ngx_string("smartflow_audit_tsa_retry"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_smartflow_audit_main_conf_t, tsa_retry),
      NULL },

    { ngx_string("smartflow_audit_s3"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_smartflow_audit_main_conf_t, s3_url),
      NULL },

    { ngx_string("smartflow_audit_s3_bucket"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_smartflow_audit_main_conf_t, s3_bucket),
      NULL },

    { ngx_string("smartflow_audit_s3_region"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_smartflow_audit_main_conf_t, s3_region),
      NULL },

    { ngx_string("smartflow_audit_s3_prefix"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_smartflow_audit_main_conf_t, s3_prefix),
      NULL },

    { ngx_string("smartflow_audit_s3_credentials"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_smartflow_audit_main_conf_t, s3_credentials),
      NULL },

    { ngx_string("smartflow_audit_s3_lock_mode"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_smartflow_audit_main_conf_t, s3_lock_mode),
      &ngx_http_smartflow_audit_s3_modes },

    { ngx_string("smartflow_audit_s3_retention"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_smartflow_audit_main_conf_t, s3_retention),
      NULL },

    { ngx_string("smartflow_audit_s3_interval"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_smartflow_audit_main_conf_t, s3_interval),
      NULL },

    { ngx_string("smartflow_audit_s3_backoff_max"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_smartflow_audit_main_conf_t, s3_backoff_max),
      NULL },

    { ngx_string("smartflow_audit_s3_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_smartflow_audit_main_conf_t, s3_timeout),
      NULL },

    { ngx_string("smartflow_audit_s3_keep"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_smartflow_audit_main_conf_t, s3_keep),
      NULL },

    { ngx_string("smartflow_audit_api"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_smartflow_audit_api,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("smartflow_audit_bodies"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_smartflow_audit_loc_conf_t, bodies),
      NULL },

    { ngx_string("smartflow_audit"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_smartflow_audit_loc_conf_t, enable),
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_smartflow_audit_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_smartflow_audit_init,         /* postconfiguration */

    ngx_http_smartflow_audit_create_main_conf,
    ngx_http_smartflow_audit_init_main_conf,

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_smartflow_audit_create_loc_conf,
    ngx_http_smartflow_audit_merge_loc_conf
};


ngx_module_t  ngx_http_smartflow_audit_module = {
    NGX_MODULE_V1,
    &ngx_http_smartflow_audit_module_ctx,  /* module context */
    ngx_http_smartflow_audit_commands,     /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    ngx_http_smartflow_audit_init_module,  /* init module */
    ngx_http_smartflow_audit_init_process, /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_smartflow_audit_exit_process, /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;

/* this process's descriptor of the open segment */
static ngx_fd_t    ngx_http_smartflow_audit_fd = NGX_INVALID_FILE;
static ngx_uint_t  ngx_http_smartflow_audit_fd_segment;

/* writes what the buffer holds a while after this process added to it */
static ngx_event_t  ngx_http_smartflow_audit_flush_ev;

/*
 * $request_id, the receipt id: 16 bytes of OpenSSL's DRBG as nginx draws
 * them, but drawn for 256 requests at a time (one RAND_bytes() call a
 * request cost about as much as the record's formatting); filled in the
 * process that serves the requests, after the fork
 */
#define NGX_HTTP_SMARTFLOW_AUDIT_IDS  256

static u_char      ngx_http_smartflow_audit_ids[NGX_HTTP_SMARTFLOW_AUDIT_IDS
                                                * 16];
static ngx_uint_t  ngx_http_smartflow_audit_ids_left;

/* the retry of spooled timestamps, in one worker */
static ngx_event_t        ngx_http_smartflow_audit_retry_ev;
static ngx_thread_task_t *ngx_http_smartflow_audit_retry_task;


static ngx_int_t
ngx_http_smartflow_audit_handler(ngx_http_request_t *r)
{
    ngx_http_smartflow_ctx_t              *ctx;
    ngx_http_smartflow_audit_loc_conf_t   *alcf;
    ngx_http_smartflow_audit_main_conf_t  *amcf;

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_smartflow_audit_module);
    amcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_audit_module);

    if ((alcf->file == NULL && amcf->zone == NULL) || !alcf->enable) {
        return NGX_OK;
    }

    ctx = ngx_http_smartflow_get_ctx(r);

    if (ctx == NULL || ctx->api == NGX_HTTP_SMARTFLOW_API_NONE) {
        return NGX_OK;
    }

    if (alcf->file) {
        (void) ngx_http_smartflow_audit_plain(r, ctx, alcf->file);
    }

    if (amcf->zone) {
        (void) ngx_http_smartflow_audit_record(r, ctx, amcf);
    }

    return NGX_OK;
}


/* drops an incomplete UTF-8 sequence a cut left at the end */
static void
ngx_http_smartflow_audit_utf8_cut(ngx_str_t *s)
{
    size_t  i, n;

    for (i = 0; i < 4 && i < s->len; i++) {
        if ((s->data[s->len - 1 - i] & 0xc0) != 0x80) {
            break;
        }
    }

    if (i == s->len || i == 4) {
        return;
    }

    /* the lead byte at len - 1 - i: how long its sequence is */
    n = s->data[s->len - 1 - i];
    n = (n & 0x80) == 0 ? 1 : (n & 0xe0) == 0xc0 ? 2
        : (n & 0xf0) == 0xe0 ? 3 : (n & 0xf8) == 0xf0 ? 4 : 1;

    if (n > i + 1) {
        s->len -= i + 1;
    }
}


/* room for ,"name":"value": an escaped byte takes at most 6 (\u00XX) */
#define ngx_http_smartflow_audit_slen(s)                                      \
    (sizeof(",\"\":\"\"") + 24 + 6 * (s)->len)

/* ,"name":"value" or ,"name":null */
#define ngx_http_smartflow_audit_str(p, name, s)                              \
    ngx_http_smartflow_audit_value(ngx_sf_cpymem(p, ",\"" name "\":"), s)


static ngx_int_t
ngx_http_smartflow_audit_record(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_http_smartflow_audit_main_conf_t *amcf)
{
    size_t                           len;
    u_char                          *line, *p;
    int64_t                          ts;
    uint64_t                         cost;
    ngx_str_t                        provider, deployment, served, user;
    ngx_str_t                        trace, rid, *h, method, policy;
    ngx_msec_t                       upstream;
    ngx_uint_t                       i, has_upstream, priced;
    ngx_time_t                      *tp;
    ngx_msec_int_t                   latency;
    u_char                           digest[32];
    u_char                           req_hex[65], resp_hex[65];
    const sf_audit_key_t            *key;
    ngx_http_variable_value_t       *vv;
    ngx_http_upstream_state_t       *st;
    ngx_http_smartflow_audit_ctx_t  *actx;
    ngx_http_smartflow_audit_sample_t  m;
    ngx_http_smartflow_audit_loc_conf_t  *alcf;
    ngx_str_t                        req_body, resp_body;
    ngx_uint_t                       req_cut, resp_cut;

    tp = ngx_timeofday();
    ts = (int64_t) tp->sec * 1000 + tp->msec;

    key = sf_audit_keys_current(amcf->keys, tp->sec);
    if (key == NULL) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "smartflow audit: no key in \"%V\" is valid now, "
                      "the request is not recorded", &amcf->key_file);
        return NGX_ERROR;
    }

    ngx_str_null(&provider);
    ngx_str_null(&deployment);
    ngx_str_null(&user);
    ngx_str_null(&trace);
    ngx_str_null(&rid);

    if (ctx->provider) {
        provider = ctx->provider->name;
    }

    if (ctx->route) {
        deployment = ctx->route->name;
    }

    served = ctx->upstream_model.len ? ctx->upstream_model : ctx->model;

    if (ctx->provider == NULL) {
        ngx_str_null(&served);
    }

    if (ctx->vkey) {
        user = ctx->vkey->user;
    }

    vv = ngx_http_smartflow_audit_request_id(r, amcf);
    if (vv && !vv->not_found) {
        rid.data = vv->data;
        rid.len = vv->len;
    }

    /* W3C trace context, else the caller's request id */
    h = ngx_http_smartflow_header_in(&r->headers_in.headers, "traceparent");
    if (h && h->len >= 55 && h->data[2] == '-' && h->data[35] == '-') {
        trace.data = h->data + 3;
        trace.len = 32;

    } else {
        h = ngx_http_smartflow_header_in(&r->headers_in.headers,
                                         "x-request-id");
        if (h) {
            trace.data = h->data;
            trace.len = ngx_min(h->len, 128);
        }
    }

    method = r->method_name;
    policy = ctx->policy_decisions;

    latency = (ngx_msec_int_t) ((tp->sec - r->start_sec) * 1000
                                + (tp->msec - r->start_msec));
    latency = ngx_max(latency, 0);

    upstream = 0;
    has_upstream = 0;

    if (r->upstream_states) {
        st = r->upstream_states->elts;

        for (i = 0; i < r->upstream_states->nelts; i++) {
            if (st[i].peer && st[i].response_time != (ngx_msec_t) -1) {
                upstream += st[i].response_time;
                has_upstream = 1;
            }
        }
    }

    /* priced by smartflow_price as the proxy prices it; unpriced: null */
    priced = (ngx_http_smartflow_cost(r, ctx, &cost) == NGX_OK);

    if (!priced) {
        cost = 0;
    }

    actx = ngx_http_get_module_ctx(r, ngx_http_smartflow_audit_module);

    if (actx && actx->request_done) {
        ngx_memcpy(digest, actx->request, 32);

    } else {
        sf_sha256(ctx->body.len ? ctx->body.data : (u_char *) "",
                  ctx->body.len, digest);
    }

    sf_audit_hex(digest, 32, (char *) req_hex);

    if (actx && !actx->md_done) {
        sf_sha256_final(&actx->md, digest);
        actx->md_done = 1;

    } else {
        sf_sha256("", 0, digest);
    }

    sf_audit_hex(digest, 32, (char *) resp_hex);

    /*
     * The bodies, when kept: the request as the pipeline left its parsed
     * tree (after the policy's redaction), the answer as the client got
     * it, each cut at smartflow_audit_bodies bytes.
     */
    alcf = ngx_http_get_module_loc_conf(r, ngx_http_smartflow_audit_module);
    ngx_str_null(&req_body);
    ngx_str_null(&resp_body);

    if (alcf->bodies) {
        if (ctx->json == NULL
            || ngx_smartflow_json_dump(r->pool, ctx->json, &req_body)
               != NGX_OK)
        {
            req_body = ctx->body;
        }

        if (actx && actx->kept) {
            resp_body.data = actx->kept;
            resp_body.len = actx->kept_len;
        }
    }

    req_cut = req_body.len > alcf->bodies;
    req_body.len = ngx_min(req_body.len, alcf->bodies);

    /* no UTF-8 sequence is cut in two */
    ngx_http_smartflow_audit_utf8_cut(&req_body);
    resp_cut = actx && alcf->bodies && actx->bytes > (off_t) resp_body.len;
    ngx_http_smartflow_audit_utf8_cut(&resp_body);

    len = sizeof("{\"time\":\"\",\"status\":,\"stream\":false,"
                 "\"latency_ms\":,\"upstream_ms\":,\"prompt_tokens\":,"
                 "\"completion_tokens\":,\"cost_usd_micro\":,"
                 "\"cache_phase\":,\"policy_blocked\":false,"
                 "\"request_bytes\":,\"response_bytes\":,"
                 "\"response_complete\":false,\"request_sha256\":\"\","
                 "\"response_sha256\":\"\"")
          + sizeof("1970-09-28T12:00:00+06:00") + 10 * NGX_INT64_LEN
          + 128
          + ngx_http_smartflow_audit_slen(&rid)
          + ngx_http_smartflow_audit_slen(&ctx->key_id)
          + ngx_http_smartflow_audit_slen(&ctx->team)
          + ngx_http_smartflow_audit_slen(&user)
          + ngx_http_smartflow_audit_slen(&r->connection->addr_text)
          + ngx_http_smartflow_audit_slen(&method)
          + ngx_http_smartflow_audit_slen(&r->uri)
          + ngx_http_smartflow_audit_slen(&ctx->model)
          + ngx_http_smartflow_audit_slen(&served)
          + ngx_http_smartflow_audit_slen(&provider)
          + ngx_http_smartflow_audit_slen(&deployment)
          + ngx_http_smartflow_audit_slen(&ctx->cache_status)
          + ngx_http_smartflow_audit_slen(&policy)
          + ngx_http_smartflow_audit_slen(&trace)
          + ngx_http_smartflow_audit_slen(&ctx->err_code)
          + sizeof(",\"request_body\":\"\",\"response_body\":\"\"")
          + ngx_smartflow_json_escape_len(req_body.data, req_body.len)
          + ngx_smartflow_json_escape_len(resp_body.data, resp_body.len)
          + sizeof(",\"request_body_cut\":false,"
                   "\"response_body_cut\":false")
          /* the chain fields */
          + sizeof(",\"ts\":,\"seq\":,\"kid\":\"\",\"prev\":\"\","
                   "\"hmac\":\"\"}\n")
          + 2 * NGX_INT64_LEN + SF_AUDIT_KID_LEN + 128;

    line = ngx_pnalloc(r->pool, len);
    if (line == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sf_cpymem(line, "{\"time\":\"");
    p = ngx_cpymem(p, ngx_cached_http_log_iso8601.data,
                   ngx_cached_http_log_iso8601.len);
    *p++ = '"';
    p = ngx_http_smartflow_audit_str(p, "request_id", &rid);
    p = ngx_http_smartflow_audit_str(p, "key_id", &ctx->key_id);
    p = ngx_http_smartflow_audit_str(p, "team", &ctx->team);
    p = ngx_http_smartflow_audit_str(p, "user", &user);
    p = ngx_http_smartflow_audit_str(p, "client", &r->connection->addr_text);
    p = ngx_http_smartflow_audit_str(p, "method", &method);
    p = ngx_http_smartflow_audit_str(p, "endpoint", &r->uri);
    p = ngx_http_smartflow_audit_str(p, "model", &ctx->model);
    p = ngx_http_smartflow_audit_str(p, "served_model", &served);
    p = ngx_http_smartflow_audit_str(p, "provider", &provider);
    p = ngx_http_smartflow_audit_str(p, "deployment", &deployment);

    /* numbers by hand: ngx_sprintf() parses its format each time */
    p = ngx_sf_cpymem(p, ",\"status\":");
    p = ngx_http_smartflow_audit_uint(p, r->headers_out.status);
    p = ctx->stream ? ngx_sf_cpymem(p, ",\"stream\":true")
                    : ngx_sf_cpymem(p, ",\"stream\":false");
    p = ngx_sf_cpymem(p, ",\"latency_ms\":");
    p = ngx_http_smartflow_audit_uint(p, (ngx_msec_t) latency);

    if (has_upstream) {
        p = ngx_sf_cpymem(p, ",\"upstream_ms\":");
        p = ngx_http_smartflow_audit_uint(p, upstream);

    } else {
        p = ngx_sf_cpymem(p, ",\"upstream_ms\":null");
    }

    p = ngx_sf_cpymem(p, ",\"prompt_tokens\":");
    p = ngx_http_smartflow_audit_uint(p, ctx->prompt_tokens);
    p = ngx_sf_cpymem(p, ",\"completion_tokens\":");
    p = ngx_http_smartflow_audit_uint(p, ctx->completion_tokens);

    if (priced) {
        p = ngx_sf_cpymem(p, ",\"cost_usd_micro\":");
        p = ngx_http_smartflow_audit_uint(p, cost);

    } else {
        p = ngx_sf_cpymem(p, ",\"cost_usd_micro\":null");
    }

    p = ngx_http_smartflow_audit_str(p, "cache", &ctx->cache_status);

    if (ctx->cache_phase) {
        p = ngx_sf_cpymem(p, ",\"cache_phase\":");
        p = ngx_http_smartflow_audit_uint(p, ctx->cache_phase);

    } else {
        p = ngx_sf_cpymem(p, ",\"cache_phase\":null");
    }

    p = ngx_http_smartflow_audit_str(p, "policy", &policy);
    p = ctx->policy_blocked ? ngx_sf_cpymem(p, ",\"policy_blocked\":true")
                            : ngx_sf_cpymem(p, ",\"policy_blocked\":false");
    p = ngx_http_smartflow_audit_str(p, "trace_id", &trace);
    p = ngx_http_smartflow_audit_str(p, "error", &ctx->err_code);

    p = ngx_sf_cpymem(p, ",\"request_bytes\":");
    p = ngx_http_smartflow_audit_uint(p, ngx_max(r->request_length, 0));
    p = ngx_sf_cpymem(p, ",\"response_bytes\":");
    p = ngx_http_smartflow_audit_uint(p, ngx_max(r->connection->sent, 0));
    p = (actx && actx->complete)
        ? ngx_sf_cpymem(p, ",\"response_complete\":true")
        : ngx_sf_cpymem(p, ",\"response_complete\":false");
    p = ngx_sf_cpymem(p, ",\"request_sha256\":\"");
    p = ngx_cpymem(p, req_hex, 64);
    p = ngx_sf_cpymem(p, "\",\"response_sha256\":\"");
    p = ngx_cpymem(p, resp_hex, 64);
    *p++ = '"';

    if (alcf->bodies) {
        p = ngx_http_smartflow_audit_str(p, "request_body", &req_body);
        p = ngx_http_smartflow_audit_str(p, "response_body", &resp_body);
        p = ngx_sprintf(p, ",\"request_body_cut\":%s,"
                           "\"response_body_cut\":%s",
                        req_cut ? "true" : "false",
                        resp_cut ? "true" : "false");
    }

    /*
     * the metrics: a model only once it is routed; a wildcard route
     * passes the client's names on, which the series table bounds
     */
    m.model = ctx->route ? ctx->model : deployment;
    m.provider = provider;
    m.status = r->headers_out.status;
    m.prompt_tokens = ctx->prompt_tokens;
    m.completion_tokens = ctx->completion_tokens;
    m.cost = cost;
    m.latency = latency;
    m.cache = 0;
    m.cache_phase = ctx->cache_phase;
    m.policy = policy;

    if (ctx->cache_status.len) {
        m.cache = (ctx->cache_status.len == 3
                   && ngx_strncmp(ctx->cache_status.data, "HIT", 3) == 0) ? 1
                  : (ctx->cache_status.len == 4
                     && ngx_strncmp(ctx->cache_status.data, "MISS", 4) == 0)
                  ? 2
                  : (ctx->cache_status.len == 6
                     && ngx_strncmp(ctx->cache_status.data, "BYPASS", 6)
                        == 0) ? 3 : 4;
    }

    return ngx_http_smartflow_audit_append(r, amcf, line, p, key, ts, &m);
}


/*
 * Under the zone's lock: the record's place in the chain, its signature,
 * one write() to the open segment (O_APPEND: one record is never split),
 * the log tree; and the segment closed when it is full or old enough.
 */
static ngx_int_t
ngx_http_smartflow_audit_append(ngx_http_request_t *r,
    ngx_http_smartflow_audit_main_conf_t *amcf, u_char *line, u_char *p,
    const sf_audit_key_t *key, int64_t ts,
    ngx_http_smartflow_audit_sample_t *m)
{
    u_char                           *body_end, *tail;
    size_t                            len;
    ssize_t                           n;
    uint64_t                          seq;
    ngx_uint_t                        rotate, buffered;
    ngx_slab_pool_t                  *shpool;
    ngx_http_smartflow_audit_sh_t    *sh;
    u_char                            leaf[32];
    u_char                            path[NGX_MAX_PATH];
    char                              hex[65];
    unsigned char                     mac[EVP_MAX_MD_SIZE];
    ngx_http_smartflow_audit_seal_t   snap;

    shpool = (ngx_slab_pool_t *) amcf->zone->shm.addr;
    sh = shpool->data;
    body_end = p;
    rotate = 0;

    /* the record's fields, hashed outside the lock */
    sf_audit_record_start(line, body_end - line);

    ngx_shmtx_lock(&shpool->mutex);

    if (ngx_http_smartflow_audit_open(amcf, sh, r->connection->log)
        != NGX_OK)
    {
        ngx_shmtx_unlock(&shpool->mutex);
        return NGX_ERROR;
    }

    seq = sh->seq + 1;
    sf_audit_hex(sh->head, 32, hex);

    p = ngx_sf_cpymem(body_end, ",\"ts\":");
    p = ngx_http_smartflow_audit_uint(p, ngx_max(ts, 0));
    p = ngx_sf_cpymem(p, ",\"seq\":");
    p = ngx_http_smartflow_audit_uint(p, seq);
    p = ngx_sf_cpymem(p, ",\"kid\":\"");
    p = ngx_cpymem(p, key->kid, ngx_strlen(key->kid));
    p = ngx_sf_cpymem(p, "\",\"prev\":\"");
    p = ngx_cpymem(p, hex, 64);
    *p++ = '"';

    /*
     * one pass over the record: its fields were hashed before the lock,
     * the chain fields now; its signature, then its hash
     */
    if (sf_audit_record_sign(key, body_end, p - body_end, mac) != 0) {
        ngx_shmtx_unlock(&shpool->mutex);
        return NGX_ERROR;
    }

    tail = p;
    p = ngx_sf_cpymem(p, ",\"hmac\":\"");
    sf_audit_hex(mac, 32, (char *) p);
    p += 64;
    *p++ = '"';
    *p++ = '}';
    *p++ = '\n';

    if (sf_audit_record_leaf(tail, p - tail - 1, leaf) != 0) {
        ngx_shmtx_unlock(&shpool->mutex);
        return NGX_ERROR;
    }

    len = p - line;
    buffered = 0;

    if (amcf->buffer && len <= amcf->buffer) {
        /* into the shared buffer, in chain order; written when full */
        if (sh->buf_len + len > amcf->buffer
            && ngx_http_smartflow_audit_flush_locked(amcf, sh,
                                                     r->connection->log)
               != NGX_OK)
        {
            ngx_shmtx_unlock(&shpool->mutex);
            return NGX_ERROR;
        }

        ngx_memcpy(sh->buf + sh->buf_len, line, len);
        sh->buf_len += len;
        sh->buf_records++;
        buffered = 1;

    } else {
        if (ngx_http_smartflow_audit_flush_locked(amcf, sh,
                                                  r->connection->log)
            != NGX_OK
            || ngx_http_smartflow_audit_size(sh, r->connection->log)
               == NGX_ERROR)
        {
            ngx_shmtx_unlock(&shpool->mutex);
            return NGX_ERROR;
        }

        n = ngx_write_fd(ngx_http_smartflow_audit_fd, line, len);

        if (n != (ssize_t) len) {
            /* a piece of a record would break the chain for every later
             * one */
            if (n > 0
                && ftruncate(ngx_http_smartflow_audit_fd, sh->seg_bytes)
                   == -1)
            {
                ngx_log_error(NGX_LOG_ALERT, r->connection->log, ngx_errno,
                              "smartflow audit: cutting a partial record "
                              "off segment %ui failed",
                              ngx_http_smartflow_audit_fd_segment);
            }

            sh->write_failures++;
            ngx_shmtx_unlock(&shpool->mutex);

            ngx_log_error(NGX_LOG_ALERT, r->connection->log, ngx_errno,
                          "smartflow audit: writing segment %ui failed",
                          ngx_http_smartflow_audit_fd_segment);
            return NGX_ERROR;
        }
    }

    /* the record's hash is the next one's "prev" and in the log tree */
    sh->seq = seq;
    ngx_memcpy(sh->head, leaf, 32);
    sf_merkle_frontier_append(&sh->log, leaf);

    /* kept for the seal, which then needs not hash the segment again */
    if (sh->leaves_ok && sh->seg_count < NGX_SMARTFLOW_AUDIT_LEAVES_MAX) {
        ngx_memcpy(sh->leaves[sh->seg_count], leaf, 32);

    } else {
        sh->leaves_ok = 0;
    }

    if (sh->seg_count++ == 0) {
        sh->seg_first = seq;
        sh->seg_start = ngx_time();
    }

    sh->seg_bytes += p - line;

    ngx_http_smartflow_audit_count(sh, m);

    /* a segment is closed with all its records written */
    if (((size_t) sh->seg_bytes >= amcf->segment_size
         || ngx_time() - sh->seg_start >= amcf->seal_interval)
        && ngx_http_smartflow_audit_flush_locked(amcf, sh,
                                                 r->connection->log)
           == NGX_OK)
    {
        rotate = 1;

        snap.segment = sh->segment;
        snap.first = sh->seg_first;
        snap.count = sh->seg_count;
        snap.bytes = sh->seg_bytes;
        snap.leaves = NULL;

        if (sh->leaves_ok) {
            snap.leaves = ngx_alloc(sh->seg_count * 32, r->connection->log);

            if (snap.leaves) {
                ngx_memcpy(snap.leaves, sh->leaves, sh->seg_count * 32);
            }
        }

        ngx_memcpy(snap.head, sh->head, 32);
        ngx_memcpy(&snap.old, &sh->sealed, sizeof(sf_merkle_frontier_t));
        ngx_memcpy(&snap.log, &sh->log, sizeof(sf_merkle_frontier_t));
        ngx_memcpy(&sh->sealed, &sh->log, sizeof(sf_merkle_frontier_t));

        sh->segment++;
        sh->seg_first = 0;
        sh->seg_count = 0;
        sh->seg_bytes = 0;
        sh->seg_extra = 0;
        sh->seg_start = 0;
        sh->seals_pending++;
        sh->leaves_ok = 1;

        /* the next segment exists from now: the folder shows which is open */
        (void) ngx_close_file(ngx_http_smartflow_audit_fd);

        ngx_snprintf(path, NGX_MAX_PATH, "%V/" NGX_SMARTFLOW_AUDIT_SEGMENT
                     "%Z", &amcf->dir, sh->segment);

        ngx_http_smartflow_audit_fd = ngx_open_file(path,
                                                    NGX_FILE_RDWR | O_APPEND,
                                                    NGX_FILE_CREATE_OR_OPEN,
                                                    0644);
        ngx_http_smartflow_audit_fd_segment = sh->segment;
    }

    ngx_shmtx_unlock(&shpool->mutex);

    if (buffered && !ngx_http_smartflow_audit_flush_ev.timer_set
        && ngx_http_smartflow_audit_flush_ev.handler)
    {
        ngx_add_timer(&ngx_http_smartflow_audit_flush_ev, amcf->flush);
    }

    if (!rotate) {
        return NGX_OK;
    }

    ngx_cpystrn(snap.dir, amcf->dir.data, NGX_MAX_PATH);
    snap.key = *key;
    snap.immutable = amcf->immutable;
    snap.now = ngx_time();
    snap.zone = amcf->zone;
    snap.rc = NGX_ERROR;
    snap.err[0] = '\0';
    snap.offline = 0;
    snap.tsa_rc = NGX_OK;
    snap.tsa_timeout = amcf->tsa_timeout;

    ngx_http_smartflow_audit_tsa_conf(amcf, snap.tsa_url,
                                      sizeof(snap.tsa_url), snap.tsa_ca,
                                      sizeof(snap.tsa_ca));

    if (ngx_http_smartflow_audit_post_seal(r, amcf, &snap) != NGX_OK) {
        ngx_free(snap.leaves);

        ngx_shmtx_lock(&shpool->mutex);
        sh->seals_pending--;
        sh->seal_failures++;
        ngx_shmtx_unlock(&shpool->mutex);

        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "smartflow audit: segment %ui is closed but its seal "
                      "could not be queued; it is sealed at the next start",
                      snap.segment);
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_smartflow_audit_plain(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_open_file_t *file)
{
    size_t      len;
    u_char     *p, *line;
    ssize_t     n;
    ngx_str_t   provider;

    if (ctx->provider) {
        provider = ctx->provider->name;

    } else {
        ngx_str_null(&provider);
    }

    len = sizeof("{\"time\":\"\",\"status\":,\"key_id\":,\"model\":,"
                 "\"provider\":,\"stream\":false,\"request_bytes\":,"
                 "\"response_bytes\":,\"prompt_tokens\":,"
                 "\"completion_tokens\":,\"error\":}\n")
          + sizeof("1970-09-28T12:00:00+06:00") + 3 * NGX_OFF_T_LEN
          + 2 * NGX_INT_T_LEN
          + ngx_smartflow_json_escape_len(ctx->key_id.data, ctx->key_id.len)
          + ngx_smartflow_json_escape_len(ctx->model.data, ctx->model.len)
          + ngx_smartflow_json_escape_len(provider.data, provider.len)
          + ngx_smartflow_json_escape_len(ctx->err_code.data,
                                          ctx->err_code.len)
          + 4 * sizeof("null");

    line = ngx_pnalloc(r->pool, len);
    if (line == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sprintf(line, "{\"time\":\"%V\",\"status\":%ui",
                    &ngx_cached_http_log_iso8601, r->headers_out.status);
    p = ngx_http_smartflow_audit_str(p, "key_id", &ctx->key_id);
    p = ngx_http_smartflow_audit_str(p, "model", &ctx->model);
    p = ngx_http_smartflow_audit_str(p, "provider", &provider);
    p = ngx_sprintf(p, ",\"stream\":%s,\"request_bytes\":%O,"
                       "\"response_bytes\":%O,\"prompt_tokens\":%ui,"
                       "\"completion_tokens\":%ui",
                    ctx->stream ? "true" : "false", r->request_length,
                    r->connection->sent, ctx->prompt_tokens,
                    ctx->completion_tokens);
    p = ngx_http_smartflow_audit_str(p, "error", &ctx->err_code);
    *p++ = '}';
    *p++ = '\n';

    /* an append of a line, as access_log does */
    n = ngx_write_fd(file->fd, line, p - line);

    if (n != p - line) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, ngx_errno,
                      "smartflow audit: writing \"%V\" failed", &file->name);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* "value" or null, after a name: no ngx_sprintf(), a record has 17 */
static u_char *
ngx_http_smartflow_audit_value(u_char *p, ngx_str_t *s)
{
    if (s->len == 0) {
        return ngx_sf_cpymem(p, "null");
    }

    *p++ = '"';
    p = ngx_smartflow_json_escape(p, s->data, s->len);
    *p++ = '"';

    return p;
}


/* a number in decimal, as %uL would print it */
static u_char *
ngx_http_smartflow_audit_uint(u_char *p, uint64_t n)
{
    u_char  *q, buf[NGX_INT64_LEN];

    q = buf + sizeof(buf);

    do {
        *--q = (u_char) ('0' + n % 10);
        n /= 10;
    } while (n);

    return ngx_cpymem(p, q, buf + sizeof(buf) - q);
}


/*
 * $request_id, set once a request from the batch of random bytes, unless
 * something asked for it earlier; then nginx's own value stands
 */
static ngx_http_variable_value_t *
ngx_http_smartflow_audit_request_id(ngx_http_request_t *r,
    ngx_http_smartflow_audit_main_conf_t *amcf)
{
    u_char                     *id, *rnd;
    ngx_http_variable_value_t  *vv;

    vv = &r->variables[amcf->request_id];

    if (vv->valid || vv->not_found) {
        return ngx_http_get_indexed_variable(r, amcf->request_id);
    }

    if (ngx_http_smartflow_audit_ids_left == 0) {
        if (RAND_bytes(ngx_http_smartflow_audit_ids,
                       sizeof(ngx_http_smartflow_audit_ids))
            != 1)
        {
            /* nginx's own, which logs why */
            return ngx_http_get_indexed_variable(r, amcf->request_id);
        }

        ngx_http_smartflow_audit_ids_left = NGX_HTTP_SMARTFLOW_AUDIT_IDS;
    }

    id = ngx_pnalloc(r->pool, 32);
    if (id == NULL) {
        return NULL;
    }

    /* each id's bytes are used once and wiped */
    rnd = ngx_http_smartflow_audit_ids
          + --ngx_http_smartflow_audit_ids_left * 16;
    ngx_hex_dump(id, rnd, 16);
    ngx_memzero(rnd, 16);

    vv->len = 32;
    vv->valid = 1;
    vv->no_cacheable = 0;
    vv->not_found = 0;
    vv->data = id;

    return vv;
}


static ngx_int_t
ngx_http_smartflow_audit_tap(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, u_char *p, size_t len, ngx_uint_t last)
{
    size_t                                 n;
    ngx_http_smartflow_audit_ctx_t        *actx;
    ngx_http_smartflow_audit_loc_conf_t   *alcf;
    ngx_http_smartflow_audit_main_conf_t  *amcf;

    amcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_audit_module);
    alcf = ngx_http_get_module_loc_conf(r, ngx_http_smartflow_audit_module);

    if (amcf->zone == NULL || !alcf->enable) {
        return NGX_OK;
    }

    actx = ngx_http_smartflow_audit_get_ctx(r);
    if (actx == NULL || actx->md_done) {
        return NGX_ERROR;
    }

    if (len) {
        sf_sha256_update(&actx->md, p, len);
    }

    if (alcf->bodies && len && actx->kept_len < alcf->bodies) {
        if (actx->kept == NULL) {
            actx->kept = ngx_pnalloc(r->pool, alcf->bodies);
            if (actx->kept == NULL) {
                return NGX_ERROR;
            }
        }

        n = ngx_min(len, alcf->bodies - actx->kept_len);
        ngx_memcpy(actx->kept + actx->kept_len, p, n);
        actx->kept_len += n;
    }

    actx->bytes += len;

    if (last) {
        actx->complete = 1;
    }

    return NGX_OK;
}


static ngx_http_smartflow_audit_ctx_t *
ngx_http_smartflow_audit_get_ctx(ngx_http_request_t *r)
{
    ngx_http_smartflow_audit_ctx_t  *actx;

    actx = ngx_http_get_module_ctx(r, ngx_http_smartflow_audit_module);
    if (actx) {
        return actx;
    }

    /* the hash's state is a plain struct in the pool: nothing to free */
    actx = ngx_pcalloc(r->pool, sizeof(ngx_http_smartflow_audit_ctx_t));
    if (actx == NULL) {
        return NULL;
    }

    sf_sha256_init(&actx->md);

    ngx_http_set_ctx(r, actx, ngx_http_smartflow_audit_module);

    return actx;
}


/*
 * The receipt: the record's id ($request_id, in the record as
 * "request_id") and SHA-256 of the request body, a commitment the record
 * holds too.  The record itself is written after the answer, so its own
 * hash comes from GET /api/audit/proof/ID.
 */
static ngx_int_t
ngx_http_smartflow_audit_header_filter(ngx_http_request_t *r)
{
    u_char                                *p;
    ngx_table_elt_t                       *h;
    ngx_http_smartflow_ctx_t              *ctx;
    ngx_http_variable_value_t             *vv;
    ngx_http_smartflow_audit_loc_conf_t   *alcf;
    ngx_http_smartflow_audit_main_conf_t  *amcf;
    ngx_http_smartflow_audit_ctx_t        *actx;

    amcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_audit_module);
    alcf = ngx_http_get_module_loc_conf(r, ngx_http_smartflow_audit_module);

    if (r != r->main || amcf->zone == NULL || !alcf->enable) {
        return ngx_http_next_header_filter(r);
    }

    ctx = ngx_http_smartflow_get_ctx(r);

    if (ctx == NULL || ctx->api == NGX_HTTP_SMARTFLOW_API_NONE) {
        return ngx_http_next_header_filter(r);
    }

    vv = ngx_http_smartflow_audit_request_id(r, amcf);
    if (vv == NULL || vv->not_found) {
        return ngx_http_next_header_filter(r);
    }

    /* the response hash starts with the answer's first byte */
    actx = ngx_http_smartflow_audit_get_ctx(r);
    if (actx == NULL) {
        return NGX_ERROR;
    }

    sf_sha256(ctx->body.len ? ctx->body.data : (u_char *) "",
              ctx->body.len, actx->request);

    actx->request_done = 1;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    p = ngx_pnalloc(r->pool, sizeof("id=; request-sha256=") + vv->len + 64);
    if (p == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Smartflow-Audit-Receipt");
    h->value.data = p;
    p = ngx_sf_cpymem(p, "id=");
    p = ngx_cpymem(p, vv->data, vv->len);
    p = ngx_sf_cpymem(p, "; request-sha256=");
    sf_audit_hex(actx->request, 32, (char *) p);
    h->value.len = p + 64 - h->value.data;

    return ngx_http_next_header_filter(r);
}


static ngx_int_t
ngx_http_smartflow_audit_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_smartflow_audit_main_conf_t  *amcf = shm_zone->data;

    ngx_slab_pool_t                *shpool;
    ngx_http_smartflow_audit_sh_t  *sh;

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (data) {
        /* a reload: the chain goes on where it was */
        shm_zone->data = data;
        return NGX_OK;
    }

    shm_zone->data = amcf;

    if (shm_zone->shm.exists) {
        return NGX_OK;
    }

    sh = ngx_slab_alloc(shpool, sizeof(ngx_http_smartflow_audit_sh_t));
    if (sh == NULL) {
        return NGX_ERROR;
    }

    shpool->data = sh;

    /*
     * nginx -t makes the zones too: it leaves the folder, which a running
     * server may be writing, alone
     */
    if (!ngx_test_config
        && ngx_http_smartflow_audit_recover(shm_zone->shm.log, amcf, sh)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    sh->buf = ngx_slab_alloc(shpool, NGX_SMARTFLOW_AUDIT_BUFFER_MAX);
    sh->leaves = ngx_slab_alloc(shpool, NGX_SMARTFLOW_AUDIT_LEAVES_MAX * 32);

    if (sh->buf == NULL || sh->leaves == NULL) {
        return NGX_ERROR;
    }

    /* an open segment holding records from before: its seal hashes it */
    sh->leaves_ok = (sh->seg_count == 0);

    return NGX_OK;
}


static void *
ngx_http_smartflow_audit_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_smartflow_audit_main_conf_t  *amcf;

    amcf = ngx_pcalloc(cf->pool,
                       sizeof(ngx_http_smartflow_audit_main_conf_t));
    if (amcf == NULL) {
        return NULL;
    }

    amcf->segment_size = NGX_CONF_UNSET_SIZE;
    amcf->seal_interval = NGX_CONF_UNSET;
    amcf->buffer = NGX_CONF_UNSET_SIZE;
    amcf->flush = NGX_CONF_UNSET_MSEC;
    amcf->immutable = NGX_CONF_UNSET;
    amcf->request_id = NGX_ERROR;
    amcf->tsa_timeout = NGX_CONF_UNSET_MSEC;
    amcf->tsa_retry = NGX_CONF_UNSET_MSEC;
    amcf->s3_lock_mode = NGX_CONF_UNSET_UINT;
    amcf->s3_retention = NGX_CONF_UNSET;
    amcf->s3_interval = NGX_CONF_UNSET_MSEC;
    amcf->s3_backoff_max = NGX_CONF_UNSET_MSEC;
    amcf->s3_timeout = NGX_CONF_UNSET_MSEC;
    amcf->s3_keep = NGX_CONF_UNSET;

    return amcf;
}


static char *
ngx_http_smartflow_audit_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_smartflow_audit_main_conf_t *amcf = conf;

    u_char            *buf;
    ssize_t            n;
    ngx_fd_t           fd;
    ngx_str_t          name;
    ngx_file_info_t    fi;
    char               err[128];

    ngx_conf_init_size_value(amcf->segment_size, 16 * 1024 * 1024);
    ngx_conf_init_value(amcf->seal_interval, 60);
    ngx_conf_init_size_value(amcf->buffer, 64 * 1024);
    ngx_conf_init_msec_value(amcf->flush, 100);
    ngx_conf_init_value(amcf->immutable, 0);
    ngx_conf_init_msec_value(amcf->tsa_timeout, 10000);
    ngx_conf_init_msec_value(amcf->tsa_retry, 30000);

    if (amcf->tsa_url.len >= 1024
        || (amcf->tsa_url.len
            && ngx_strncmp(amcf->tsa_url.data, "http://", 7) != 0
            && ngx_strncmp(amcf->tsa_url.data, "https://", 8) != 0))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow audit: \"smartflow_audit_tsa\" takes "
                           "an http:// or https:// URL");
        return NGX_CONF_ERROR;
    }

    if (ngx_http_smartflow_audit_s3_conf(cf, amcf) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    if (amcf->dir.len == 0) {
        return NGX_CONF_OK;
    }

    if (amcf->key_file.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow audit: \"smartflow_audit_dir\" needs "
                           "\"smartflow_audit_key_file\"");
        return NGX_CONF_ERROR;
    }

    if (ngx_conf_full_name(cf->cycle, &amcf->key_file, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    fd = ngx_open_file(amcf->key_file.data, NGX_FILE_RDONLY, NGX_FILE_OPEN,
                       0);
    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "smartflow audit: cannot open key file \"%V\"",
                           &amcf->key_file);
        return NGX_CONF_ERROR;
    }

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR
        || ngx_file_size(&fi) > 64 * 1024)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "smartflow audit: key file \"%V\" is not a small "
                           "file", &amcf->key_file);
        (void) ngx_close_file(fd);
        return NGX_CONF_ERROR;
    }

    buf = ngx_pnalloc(cf->temp_pool, ngx_file_size(&fi) + 1);
    amcf->keys = ngx_pcalloc(cf->pool, sizeof(sf_audit_keys_t));

    if (buf == NULL || amcf->keys == NULL) {
        (void) ngx_close_file(fd);
        return NGX_CONF_ERROR;
    }

    n = ngx_file_size(&fi) ? read(fd, buf, ngx_file_size(&fi)) : 0;
    (void) ngx_close_file(fd);

    if (n != ngx_file_size(&fi)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "smartflow audit: reading \"%V\" failed",
                           &amcf->key_file);
        return NGX_CONF_ERROR;
    }

    if (sf_audit_keys_parse((char *) buf, n, amcf->keys, err, sizeof(err))
        != 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow audit: key file \"%V\": %s",
                           &amcf->key_file, err);
        return NGX_CONF_ERROR;
    }

    if (amcf->segment_size < 1024) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow audit: \"smartflow_audit_segment_size\" "
                           "must be at least 1k");
        return NGX_CONF_ERROR;
    }

    if (amcf->seal_interval < 1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow audit: \"smartflow_audit_seal_interval\""
                           " must be at least 1s");
        return NGX_CONF_ERROR;
    }

    amcf->pool = ngx_thread_pool_add(cf, amcf->pool_name.len
                                         ? &amcf->pool_name : NULL);
    if (amcf->pool == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_str_set(&name, "smartflow_audit");

    amcf->zone = ngx_shared_memory_add(cf, &name,
                                       NGX_HTTP_SMARTFLOW_AUDIT_ZONE,
                                       &ngx_http_smartflow_audit_module);
    if (amcf->zone == NULL) {
        return NGX_CONF_ERROR;
    }

    amcf->zone->init = ngx_http_smartflow_audit_init_zone;
    amcf->zone->data = amcf;
    amcf->cycle = cf->cycle;

    return NGX_CONF_OK;
}


static void *
ngx_http_smartflow_audit_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_smartflow_audit_loc_conf_t  *alcf;

    alcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_smartflow_audit_loc_conf_t));
    if (alcf == NULL) {
        return NULL;
    }

    alcf->file = NGX_CONF_UNSET_PTR;
    alcf->enable = NGX_CONF_UNSET;
    alcf->bodies = NGX_CONF_UNSET_SIZE;

    return alcf;
}


static char *
ngx_http_smartflow_audit_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child)
{
    ngx_http_smartflow_audit_loc_conf_t *prev = parent;
    ngx_http_smartflow_audit_loc_conf_t *conf = child;

    ngx_conf_merge_ptr_value(conf->file, prev->file, NULL);
    ngx_conf_merge_value(conf->enable, prev->enable, 1);
    ngx_conf_merge_size_value(conf->bodies, prev->bodies, 0);

    return NGX_CONF_OK;
}


/* smartflow_audit_log PATH | off; */
static char *
ngx_http_smartflow_audit_log(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_smartflow_audit_loc_conf_t *alcf = conf;

    ngx_str_t  *value;

    if (alcf->file != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        alcf->file = NULL;
        return NGX_CONF_OK;
    }

    alcf->file = ngx_conf_open_file(cf->cycle, &value[1]);
    if (alcf->file == NULL) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* smartflow_audit_dir PATH; */
static char *
ngx_http_smartflow_audit_dir(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_smartflow_audit_main_conf_t *amcf = conf;

    ngx_str_t  *value;

    if (amcf->dir.len) {
        return "is duplicate";
    }

    value = cf->args->elts;
    amcf->dir = value[1];

    while (amcf->dir.len > 1 && amcf->dir.data[amcf->dir.len - 1] == '/') {
        amcf->dir.len--;
    }

    if (ngx_conf_full_name(cf->cycle, &amcf->dir, 0) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (amcf->dir.len + NGX_SMARTFLOW_AUDIT_NAME_LEN + 8 >= NGX_MAX_PATH) {
        return "is too long";
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_smartflow_audit_init(ngx_conf_t *cf)
{
    ngx_str_t                              name;
    ngx_http_handler_pt                   *h;
    ngx_http_core_main_conf_t             *cmcf;
    ngx_http_smartflow_audit_main_conf_t  *amcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);
    amcf = ngx_http_conf_get_module_main_conf(cf,
                                              ngx_http_smartflow_audit_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_smartflow_audit_handler;

    if (amcf->dir.len == 0) {
        return NGX_OK;
    }

    ngx_str_set(&name, "request_id");

    amcf->request_id = ngx_http_get_variable_index(cf, &name);
    if (amcf->request_id == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (ngx_http_smartflow_register_tap(cf, ngx_http_smartflow_audit_tap)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_smartflow_audit_header_filter;

    return NGX_OK;
}


static ngx_int_t
ngx_http_smartflow_audit_init_module(ngx_cycle_t *cycle)
{
    /* once, before any thread: libcurl's global state */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "smartflow audit: curl_global_init() failed");
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_smartflow_audit_init_process(ngx_cycle_t *cycle)
{
    ngx_event_t                           *ev;
    ngx_http_smartflow_audit_main_conf_t  *amcf;

    amcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_smartflow_audit_module);

    /* the digests, once per process, before the pool's threads use them */
    sf_merkle_init();
    sf_audit_hmac_init();

    if (ngx_process != NGX_PROCESS_WORKER && ngx_process != NGX_PROCESS_SINGLE)
    {
        /* the cache manager and loader: no thread pool, no requests */
        return NGX_OK;
    }

    ngx_http_smartflow_audit_s3_init_process(cycle, amcf);

    if (amcf && amcf->zone
        && (ngx_process == NGX_PROCESS_WORKER
            || ngx_process == NGX_PROCESS_SINGLE))
    {
        ev = &ngx_http_smartflow_audit_flush_ev;
        ev->handler = ngx_http_smartflow_audit_flush_timer;
        ev->data = amcf;
        ev->log = cycle->log;
        ev->cancelable = 1;

        /* what a worker killed before its flush left in the buffer */
        (void) ngx_http_smartflow_audit_flush(amcf, cycle->log);
    }

    if (amcf == NULL || amcf->zone == NULL || amcf->tsa_url.len == 0
        || (ngx_process == NGX_PROCESS_WORKER && ngx_worker != 0))
    {
        return NGX_OK;
    }

    ev = &ngx_http_smartflow_audit_retry_ev;
    ev->handler = ngx_http_smartflow_audit_retry_timer;
    ev->data = amcf;
    ev->log = cycle->log;
    ev->cancelable = 1;

    ngx_add_timer(ev, amcf->tsa_retry);

    return NGX_OK;
}


typedef struct {
    ngx_http_smartflow_audit_main_conf_t  *amcf;
    u_char                     dir[NGX_MAX_PATH];
    u_char                     url[1024];
    u_char                     ca[NGX_MAX_PATH];
    ngx_msec_t                 timeout;
    ngx_uint_t                 waiting;
    ngx_int_t                  rc;
    char                       err[NGX_MAX_PATH + 512];
} ngx_http_smartflow_audit_retry_t;


static void
ngx_http_smartflow_audit_retry_timer(ngx_event_t *ev)
{
    ngx_thread_task_t                     *task;
    ngx_http_smartflow_audit_retry_t      *rt;
    ngx_http_smartflow_audit_main_conf_t  *amcf = ev->data;

    if (ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    task = ngx_http_smartflow_audit_retry_task;

    if (task == NULL) {
        task = ngx_thread_task_alloc(ngx_cycle->pool,
                                     sizeof(ngx_http_smartflow_audit_retry_t));
        if (task == NULL) {
            ngx_add_timer(ev, amcf->tsa_retry);
            return;
        }

        task->handler = ngx_http_smartflow_audit_retry_thread;
        task->event.handler = ngx_http_smartflow_audit_retry_done;
        task->event.data = task;
        task->event.log = ev->log;
        ngx_http_smartflow_audit_retry_task = task;
    }

    rt = task->ctx;
    rt->amcf = amcf;
    ngx_cpystrn(rt->dir, amcf->dir.data, NGX_MAX_PATH);
    ngx_http_smartflow_audit_tsa_conf(amcf, rt->url, sizeof(rt->url),
                                      rt->ca, sizeof(rt->ca));
    rt->timeout = amcf->tsa_timeout;

    if (ngx_thread_task_post(amcf->pool, task) != NGX_OK) {
        ngx_add_timer(ev, amcf->tsa_retry);
    }
}


static void
ngx_http_smartflow_audit_retry_thread(void *data, ngx_log_t *log)
{
    ngx_http_smartflow_audit_retry_t  *rt = data;

    rt->err[0] = '\0';
    rt->rc = ngx_http_smartflow_audit_tsa_retry(rt->dir, rt->url, rt->ca,
                                                rt->timeout, &rt->waiting,
                                                rt->err, sizeof(rt->err));
}


static void
ngx_http_smartflow_audit_retry_done(ngx_event_t *ev)
{
    ngx_slab_pool_t                   *shpool;
    ngx_thread_task_t                 *task;
    ngx_http_smartflow_audit_sh_t     *sh;
    ngx_http_smartflow_audit_retry_t  *rt;

    task = ev->data;
    rt = task->ctx;

    shpool = (ngx_slab_pool_t *) rt->amcf->zone->shm.addr;
    sh = shpool->data;

    ngx_shmtx_lock(&shpool->mutex);
    sh->tsa_waiting = rt->waiting;
    ngx_shmtx_unlock(&shpool->mutex);

    if (rt->rc == NGX_ERROR) {
        ngx_log_error(NGX_LOG_ALERT, ev->log, 0,
                      "smartflow audit: retrying timestamps failed: %s",
                      rt->err);

    } else if (rt->rc == NGX_AGAIN) {
        ngx_log_error(NGX_LOG_WARN, ev->log, 0,
                      "smartflow audit: %ui timestamps still spooled: %s",
                      rt->waiting, rt->err);
    }

    if (!(ngx_exiting || ngx_quit || ngx_terminate)) {
        ngx_add_timer(&ngx_http_smartflow_audit_retry_ev,
                      rt->amcf->tsa_retry);
    }
}


static void
ngx_http_smartflow_audit_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_smartflow_audit_main_conf_t  *amcf;

    amcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_smartflow_audit_module);

    /* a reload, quit or stop: nothing stays in the buffer */
    if (amcf && amcf->zone
        && ngx_http_smartflow_audit_flush_ev.handler != NULL)
    {
        (void) ngx_http_smartflow_audit_flush(amcf, cycle->log);
    }

    if (ngx_http_smartflow_audit_fd != NGX_INVALID_FILE) {
        (void) ngx_close_file(ngx_http_smartflow_audit_fd);
        ngx_http_smartflow_audit_fd = NGX_INVALID_FILE;
    }
}


/* this process's descriptor of the open segment; under the zone's lock */
static ngx_int_t
ngx_http_smartflow_audit_open(ngx_http_smartflow_audit_main_conf_t *amcf,
    ngx_http_smartflow_audit_sh_t *sh, ngx_log_t *log)
{
    u_char  path[NGX_MAX_PATH];

    if (ngx_http_smartflow_audit_fd != NGX_INVALID_FILE
        && ngx_http_smartflow_audit_fd_segment == sh->segment)
    {
        return NGX_OK;
    }

    if (ngx_http_smartflow_audit_fd != NGX_INVALID_FILE) {
        (void) ngx_close_file(ngx_http_smartflow_audit_fd);
    }

    ngx_snprintf(path, NGX_MAX_PATH, "%V/" NGX_SMARTFLOW_AUDIT_SEGMENT "%Z",
                 &amcf->dir, sh->segment);

    ngx_http_smartflow_audit_fd = ngx_open_file(path,
                                                NGX_FILE_RDWR | O_APPEND,
                                                NGX_FILE_CREATE_OR_OPEN,
                                                0644);
    if (ngx_http_smartflow_audit_fd == NGX_INVALID_FILE) {
        sh->write_failures++;
        ngx_log_error(NGX_LOG_ALERT, log, ngx_errno,
                      "smartflow audit: open \"%s\" failed", path);
        return NGX_ERROR;
    }

    ngx_http_smartflow_audit_fd_segment = sh->segment;

    return NGX_OK;
}


/*
 * Under the zone's lock: the buffered records, all of the open segment,
 * in one write().  On a failure they stay in the buffer for the next try
 * and whatever piece reached the file is cut off again.
 */
static ngx_int_t
ngx_http_smartflow_audit_flush_locked(
    ngx_http_smartflow_audit_main_conf_t *amcf,
    ngx_http_smartflow_audit_sh_t *sh, ngx_log_t *log)
{
    ssize_t  n;

    if (sh->buf_len == 0) {
        return NGX_OK;
    }

    if (ngx_http_smartflow_audit_open(amcf, sh, log) != NGX_OK) {
        return NGX_ERROR;
    }

    switch (ngx_http_smartflow_audit_size(sh, log)) {

    case NGX_ERROR:
        return NGX_ERROR;

    case NGX_DONE:
        /* a worker killed after its write, before it emptied the buffer */
        ngx_log_error(NGX_LOG_NOTICE, log, 0,
                      "smartflow audit: %uL buffered records were already "
                      "in segment %ui", sh->buf_records, sh->segment);
        sh->buf_len = 0;
        sh->buf_records = 0;
        return NGX_OK;
    }

    n = ngx_write_fd(ngx_http_smartflow_audit_fd, sh->buf, sh->buf_len);

    if (n != (ssize_t) sh->buf_len) {
        if (n > 0
            && ftruncate(ngx_http_smartflow_audit_fd,
                         sh->seg_bytes - (off_t) sh->buf_len)
               == -1)
        {
            ngx_log_error(NGX_LOG_ALERT, log, ngx_errno,
                          "smartflow audit: cutting a partial write off "
                          "segment %ui failed", sh->segment);
        }

        sh->write_failures++;
        ngx_log_error(NGX_LOG_ALERT, log, ngx_errno,
                      "smartflow audit: writing %uL buffered records to "
                      "segment %ui failed, kept for the next try",
                      sh->buf_records, sh->segment);
        return NGX_ERROR;
    }

    sh->buf_len = 0;
    sh->buf_records = 0;

    return NGX_OK;
}


/*
 * Before a write, under the lock: the open segment holds what the zone
 * says was written (seg_bytes less the buffer), unless a worker was
 * killed with SIGKILL between its write() and the zone's update.  Then
 * the segment holds, past that, exactly the buffer (NGX_DONE: written,
 * not to be written twice), or, with no buffer, exactly the record that
 * comes next in the chain (its seq and prev), which the chain never
 * counted and is cut off.  Bytes that are neither are left for the
 * seal's check to refuse, with an alert here.
 */
static ngx_int_t
ngx_http_smartflow_audit_size(ngx_http_smartflow_audit_sh_t *sh,
    ngx_log_t *log)
{
    u_char           *p, *end, buf[4096], seq[NGX_INT64_LEN + 16];
    off_t             expect, size, extra, off;
    size_t            n;
    ssize_t           got;
    ngx_uint_t        same;
    ngx_file_info_t   fi;
    char              hex[65];

    if (ngx_fd_info(ngx_http_smartflow_audit_fd, &fi) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_ALERT, log, ngx_errno,
                      "smartflow audit: fstat() of segment %ui failed",
                      sh->segment);
        return NGX_ERROR;
    }

    size = ngx_file_size(&fi);
    expect = sh->seg_bytes - (off_t) sh->buf_len;

    if (size == expect + sh->seg_extra) {
        return NGX_OK;
    }

    extra = size - expect;

    if (sh->buf_len && size == sh->seg_bytes) {
        /* the buffer itself? */
        same = 1;

        for (off = 0; same && off < extra; off += n) {
            n = ngx_min((size_t) (extra - off), sizeof(buf));
            got = pread(ngx_http_smartflow_audit_fd, buf, n, expect + off);
            same = (got == (ssize_t) n
                    && ngx_memcmp(buf, sh->buf + off, n) == 0);
        }

        if (same) {
            return NGX_DONE;
        }

    } else if (sh->buf_len == 0 && extra > 0 && extra < 65536) {
        /* the next record of the chain, alone? */
        p = ngx_alloc(extra, log);
        if (p == NULL) {
            return NGX_ERROR;
        }

        sf_audit_hex(sh->head, 32, hex);
        end = ngx_sprintf(seq, ",\"seq\":%uL,", sh->seq + 1);

        same = (pread(ngx_http_smartflow_audit_fd, p, extra, expect) == extra
                && p[extra - 1] == '\n'
                && ngx_strlchr(p, p + extra - 1, '\n') == NULL
                && ngx_strlcasestrn(p, p + extra, seq, end - seq - 1)
                && ngx_strlcasestrn(p, p + extra, (u_char *) hex, 64 - 1));

        ngx_free(p);

        if (same) {
            ngx_log_error(NGX_LOG_ALERT, log, 0,
                          "smartflow audit: record %uL of segment %ui, "
                          "written by a worker killed before the chain "
                          "counted it, is cut off", sh->seq + 1,
                          sh->segment);

            if (ftruncate(ngx_http_smartflow_audit_fd, expect) == -1) {
                ngx_log_error(NGX_LOG_ALERT, log, ngx_errno,
                              "smartflow audit: cutting segment %ui failed",
                              sh->segment);
                return NGX_ERROR;
            }

            return NGX_OK;
        }
    }

    ngx_log_error(NGX_LOG_ALERT, log, 0,
                  "smartflow audit: segment %ui holds %O bytes where the "
                  "chain counts %O: it was altered while open",
                  sh->segment, size, expect);

    /* said once: the writes go on after those bytes */
    sh->seg_extra = size - expect;

    return NGX_OK;
}


ngx_int_t
ngx_http_smartflow_audit_flush(ngx_http_smartflow_audit_main_conf_t *amcf,
    ngx_log_t *log)
{
    ngx_int_t                       rc;
    ngx_slab_pool_t                *shpool;
    ngx_http_smartflow_audit_sh_t  *sh;

    if (amcf == NULL || amcf->zone == NULL) {
        return NGX_OK;
    }

    shpool = (ngx_slab_pool_t *) amcf->zone->shm.addr;
    sh = shpool->data;

    ngx_shmtx_lock(&shpool->mutex);
    rc = ngx_http_smartflow_audit_flush_locked(amcf, sh, log);
    ngx_shmtx_unlock(&shpool->mutex);

    return rc;
}


static void
ngx_http_smartflow_audit_flush_timer(ngx_event_t *ev)
{
    ngx_http_smartflow_audit_main_conf_t  *amcf = ev->data;

    if (ngx_http_smartflow_audit_flush(amcf, ev->log) != NGX_OK
        && !(ngx_exiting || ngx_quit || ngx_terminate))
    {
        ngx_add_timer(ev, amcf->flush);
    }
}


/* smartflow_audit_buffer SIZE: 0 writes each record as it is made */
static char *
ngx_http_smartflow_audit_buffer(ngx_conf_t *cf, void *post, void *data)
{
    size_t  *sp = data;

    if (*sp > NGX_SMARTFLOW_AUDIT_BUFFER_MAX) {
        return "must be at most 1m";
    }

    return NGX_CONF_OK;
}
