/*
 * Virtual keys inside the proxy module: the records of the keys zone and
 * the helpers its source files share (the zone and its store, the state
 * file, the admin API, enforcement).  Only digests of the secrets are
 * kept; every record lives in one shared-memory zone under its mutex.
 */

#ifndef _NGX_HTTP_SMARTFLOW_KEYS_H_INCLUDED_
#define _NGX_HTTP_SMARTFLOW_KEYS_H_INCLUDED_


#include "ngx_http_smartflow_proxy.h"


#define NGX_SMARTFLOW_KEY_PREFIX       "sk-sf-"
#define NGX_SMARTFLOW_KEY_PREFIX_LEN   (sizeof(NGX_SMARTFLOW_KEY_PREFIX) - 1)
#define NGX_SMARTFLOW_KEY_RANDOM       24        /* bytes, 48 hex digits */
#define NGX_SMARTFLOW_KEY_LEN                                                \
    (NGX_SMARTFLOW_KEY_PREFIX_LEN + 2 * NGX_SMARTFLOW_KEY_RANDOM)
#define NGX_SMARTFLOW_KEY_SHOWN                                              \
    (NGX_SMARTFLOW_KEY_PREFIX_LEN + 8)           /* "sk-sf-1a2b3c4d" */

#define NGX_SMARTFLOW_KEY_WINDOW       60000     /* rate window, ms */

/* what the admin API accepts */
#define NGX_SMARTFLOW_KEY_MAX_STR      128
#define NGX_SMARTFLOW_KEY_MAX_MODELS   64
#define NGX_SMARTFLOW_KEY_MAX_META     4096
#define NGX_SMARTFLOW_KEY_MAX_GRACE    (30 * 86400)


typedef enum {
    NGX_SMARTFLOW_PERIOD_TOTAL = 0,
    NGX_SMARTFLOW_PERIOD_DAILY,
    NGX_SMARTFLOW_PERIOD_MONTHLY
} ngx_smartflow_period_e;


typedef struct ngx_smartflow_key_s  ngx_smartflow_key_t;


/*
 * A secret's digest in the lookup tree.  A key has one, and two while an
 * old secret is in the grace period a rotation gave it.
 */
typedef struct {
    ngx_rbtree_node_t           node;       /* key: the digest's start */
    u_char                      digest[32];
    ngx_smartflow_key_t        *key;
    time_t                      until;      /* 0, or when it stops */
} ngx_smartflow_key_secret_t;


struct ngx_smartflow_key_s {
    ngx_rbtree_node_t           node;       /* key: the id */
    ngx_queue_t                 queue;      /* every key, by id */
    ngx_smartflow_key_secret_t *secret;
    ngx_smartflow_key_secret_t *previous;

    /* what the admin API sets; the strings share one slab block */
    u_char                     *strings;
    ngx_str_t                   name;
    ngx_str_t                   team;       /* data NULL: unset */
    ngx_str_t                   user;
    ngx_str_t                   policy_group;
    ngx_str_t                   metadata;   /* a JSON object, or unset */
    ngx_str_t                  *models;
    ngx_uint_t                  nmodels;
    uint64_t                    rpm;
    uint64_t                    tpm;
    uint64_t                    budget;     /* micro-USD */
    ngx_uint_t                  period;
    ngx_uint_t                  cache_threshold;    /* per mille, 0: none */
    time_t                      expires;    /* 0: never */
    time_t                      created;
    time_t                      revoked;    /* 0: in use */
    u_char                      prefix[NGX_SMARTFLOW_KEY_SHOWN];

    /* the budget period */
    time_t                      period_start;
    uint64_t                    spent;
    uint64_t                    reserved;
    uint64_t                    period_requests;
    uint64_t                    period_prompt;
    uint64_t                    period_completion;

    /* since the key was made */
    uint64_t                    requests;
    uint64_t                    prompt_tokens;
    uint64_t                    completion_tokens;
    uint64_t                    spend;

    /* the rate window */
    uint64_t                    window;     /* epoch ms it began */
    uint64_t                    window_requests;
    uint64_t                    window_tokens;
    uint64_t                    window_reserved;

    /* with smartflow_redis: what was served while Redis was away */
    uint64_t                    off_requests;
    uint64_t                    off_prompt;
    uint64_t                    off_completion;
    uint64_t                    off_spend;
    uint64_t                    off_unreserve;
    ngx_uint_t                  rev;        /* the shared record's */
    ngx_uint_t                  dirty;      /* changed, not yet shared */
};


typedef struct {
    ngx_rbtree_t                secrets;
    ngx_rbtree_node_t           secrets_sentinel;
    ngx_rbtree_t                ids;
    ngx_rbtree_node_t           ids_sentinel;
    ngx_queue_t                 keys;
    ngx_uint_t                  next_id;
    ngx_uint_t                  version;    /* bumped by every change */
    ngx_uint_t                  saved;      /* the version on disk */
    ngx_atomic_t                save_lock;  /* pid of the state writer */
    time_t                      save_started;

    /* with smartflow_redis: the shared records applied here */
    ngx_uint_t                  redis_ver;
    u_char                      redis_epoch[48];
    ngx_atomic_t                redis_down;
    ngx_uint_t                  redis_owed; /* off_* or ops to send */
    ngx_queue_t                 redis_ops;  /* left by exited workers */
} ngx_smartflow_keys_sh_t;


struct ngx_http_smartflow_keys_zone_s {
    ngx_smartflow_keys_sh_t    *sh;
    ngx_slab_pool_t            *shpool;
    ngx_shm_zone_t             *shm_zone;
    ngx_str_t                   state;      /* full path, or empty */
#if (NGX_THREADS)
    ngx_thread_pool_t          *thread_pool;
#endif
    struct ngx_smartflow_redis_s  *redis;   /* smartflow_redis, or NULL */
};


/* smartflow_price: micro-USD per million tokens */
typedef struct {
    ngx_str_t                   glob;       /* lower case */
    uint64_t                    in;
    uint64_t                    out;
} ngx_smartflow_price_t;


/* the fields of a create or a change, as the admin API parsed them */

#define NGX_SMARTFLOW_KEY_NAME      0x0001
#define NGX_SMARTFLOW_KEY_TEAM      0x0002
#define NGX_SMARTFLOW_KEY_USER      0x0004
#define NGX_SMARTFLOW_KEY_MODELS    0x0008
#define NGX_SMARTFLOW_KEY_RPM       0x0010
#define NGX_SMARTFLOW_KEY_TPM       0x0020
#define NGX_SMARTFLOW_KEY_BUDGET    0x0040
#define NGX_SMARTFLOW_KEY_PERIOD    0x0080
#define NGX_SMARTFLOW_KEY_EXPIRES   0x0100
#define NGX_SMARTFLOW_KEY_POLICY    0x0200
#define NGX_SMARTFLOW_KEY_METADATA  0x0400
#define NGX_SMARTFLOW_KEY_CACHE     0x0800

#define NGX_SMARTFLOW_KEY_STRINGS                                            \
    (NGX_SMARTFLOW_KEY_NAME|NGX_SMARTFLOW_KEY_TEAM|NGX_SMARTFLOW_KEY_USER    \
     |NGX_SMARTFLOW_KEY_MODELS|NGX_SMARTFLOW_KEY_POLICY                      \
     |NGX_SMARTFLOW_KEY_METADATA)

typedef struct {
    ngx_uint_t                  set;        /* NGX_SMARTFLOW_KEY_* given */
    ngx_str_t                   name;
    ngx_str_t                   team;
    ngx_str_t                   user;
    ngx_str_t                   policy_group;
    ngx_str_t                   metadata;
    ngx_str_t                  *models;
    ngx_uint_t                  nmodels;
    uint64_t                    rpm;
    uint64_t                    tpm;
    uint64_t                    budget;
    ngx_uint_t                  period;
    ngx_uint_t                  cache_threshold;
    time_t                      expires;
} ngx_smartflow_key_spec_t;


/* JSON written in two passes: sized with pos NULL, then filled */
typedef struct {
    u_char                     *pos;
    size_t                      size;
} ngx_smartflow_out_t;

#define ngx_sf_out_lit(o, lit)                                               \
    ngx_smartflow_out_raw(o, (u_char *) lit, sizeof(lit) - 1)


/* the store: callers hold the zone's mutex */
ngx_smartflow_key_t *ngx_smartflow_keys_by_id(ngx_smartflow_keys_sh_t *sh,
    ngx_uint_t id);
ngx_smartflow_key_secret_t *ngx_smartflow_keys_by_digest(
    ngx_smartflow_keys_sh_t *sh, u_char *digest);
ngx_smartflow_key_t *ngx_smartflow_keys_by_name(ngx_smartflow_keys_sh_t *sh,
    ngx_str_t *name);
ngx_smartflow_key_t *ngx_smartflow_keys_alloc(
    ngx_http_smartflow_keys_zone_t *kz, ngx_uint_t id);
void ngx_smartflow_keys_free(ngx_http_smartflow_keys_zone_t *kz,
    ngx_smartflow_key_t *k);
ngx_int_t ngx_smartflow_keys_set_strings(ngx_http_smartflow_keys_zone_t *kz,
    ngx_smartflow_key_t *k, ngx_smartflow_key_spec_t *spec);
ngx_int_t ngx_smartflow_keys_set_secret(ngx_http_smartflow_keys_zone_t *kz,
    ngx_smartflow_key_t *k, u_char *digest, u_char *prefix, time_t grace);
void ngx_smartflow_keys_drop_previous(ngx_http_smartflow_keys_zone_t *kz,
    ngx_smartflow_key_t *k);
void ngx_smartflow_keys_roll(ngx_smartflow_key_t *k, time_t now,
    uint64_t now_ms);
time_t ngx_smartflow_keys_period_start(ngx_uint_t period, time_t now);
time_t ngx_smartflow_keys_period_end(ngx_uint_t period, time_t start);
uint64_t ngx_smartflow_keys_now_ms(void);

/* the state file */
ngx_int_t ngx_smartflow_keys_state_load(ngx_http_smartflow_keys_zone_t *kz,
    ngx_log_t *log);
ngx_int_t ngx_smartflow_keys_state_key(ngx_http_smartflow_keys_zone_t *kz,
    ngx_pool_t *pool, ngx_smartflow_json_t *j, ngx_str_t *err);
void ngx_smartflow_keys_state_write_key(ngx_smartflow_out_t *o,
    ngx_smartflow_key_t *k);

/* Redis, shared by nodes (ngx_http_smartflow_keys_redis.c) */
char *ngx_http_smartflow_redis_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
void ngx_http_smartflow_keys_redis_init_process(ngx_cycle_t *cycle,
    ngx_http_smartflow_keys_zone_t *kz);
ngx_uint_t ngx_http_smartflow_keys_redis_exit_process(ngx_cycle_t *cycle);
void ngx_http_smartflow_keys_redis_state_write(ngx_smartflow_out_t *o,
    ngx_smartflow_keys_sh_t *sh);
ngx_int_t ngx_http_smartflow_keys_redis_state_load(
    ngx_http_smartflow_keys_zone_t *kz, ngx_smartflow_json_t *root,
    ngx_str_t *err);
ngx_int_t ngx_http_smartflow_keys_redis_waiting(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx);
ngx_int_t ngx_http_smartflow_keys_redis_pull(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx);
ngx_int_t ngx_http_smartflow_keys_redis_pull_api(ngx_http_request_t *r);
ngx_int_t ngx_http_smartflow_keys_redis_down(
    ngx_http_smartflow_keys_zone_t *kz);
ngx_int_t ngx_http_smartflow_keys_redis_unavailable(ngx_http_request_t *r);

typedef struct {
    ngx_uint_t                  done;       /* 0, or a verdict below */
    uint64_t                    used;       /* requests or tokens */
    uint64_t                    spent;
    uint64_t                    left;
} ngx_http_smartflow_keys_verdict_t;

#define NGX_SMARTFLOW_VERDICT_OK      1
#define NGX_SMARTFLOW_VERDICT_RPM     2
#define NGX_SMARTFLOW_VERDICT_TPM     3
#define NGX_SMARTFLOW_VERDICT_BUDGET  4
#define NGX_SMARTFLOW_VERDICT_FAILED  5

ngx_int_t ngx_http_smartflow_keys_redis_reserve(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_http_smartflow_keys_verdict_t **v);
ngx_int_t ngx_http_smartflow_keys_redis_settle(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, uint64_t prompt, uint64_t completion,
    uint64_t cost);
ngx_int_t ngx_http_smartflow_keys_redis_next_id(ngx_http_request_t *r,
    ngx_uint_t *id);
ngx_int_t ngx_http_smartflow_keys_api_rerun(ngx_http_request_t *r);
ngx_int_t ngx_http_smartflow_keys_redis_refresh(ngx_http_request_t *r,
    ngx_uint_t id);
ngx_int_t ngx_http_smartflow_keys_redis_put(ngx_http_request_t *r,
    ngx_http_smartflow_keys_zone_t *kz, ngx_uint_t id, ngx_uint_t status,
    ngx_str_t *json, ngx_uint_t secret);

/* small parsers and writers */
ngx_int_t ngx_smartflow_parse_uint(u_char *p, size_t len, uint64_t *out);
ngx_int_t ngx_smartflow_parse_money(u_char *p, size_t len, uint64_t *out);
time_t ngx_smartflow_parse_rfc3339(u_char *p, size_t len);
u_char *ngx_smartflow_rfc3339(u_char *p, time_t t);
void ngx_smartflow_out_raw(ngx_smartflow_out_t *o, u_char *s, size_t len);
void ngx_smartflow_out_str(ngx_smartflow_out_t *o, ngx_str_t *s);
void ngx_smartflow_out_uint(ngx_smartflow_out_t *o, uint64_t n);
void ngx_smartflow_out_limit(ngx_smartflow_out_t *o, uint64_t n);
void ngx_smartflow_out_money(ngx_smartflow_out_t *o, uint64_t micro);
void ngx_smartflow_out_hex(ngx_smartflow_out_t *o, u_char *p, size_t len);
void ngx_smartflow_out_fraction(ngx_smartflow_out_t *o, ngx_uint_t permille);

#define NGX_SMARTFLOW_RFC3339_LEN  (sizeof("1970-01-01T00:00:00Z") - 1)


extern ngx_str_t  ngx_smartflow_periods[];


#endif /* _NGX_HTTP_SMARTFLOW_KEYS_H_INCLUDED_ */
