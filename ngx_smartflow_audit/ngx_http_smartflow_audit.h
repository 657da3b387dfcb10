/*
 * The audit module's shared declarations: its configuration, the state
 * in shared memory every worker appends under, and the seal task.
 */

#ifndef _NGX_HTTP_SMARTFLOW_AUDIT_H_INCLUDED_
#define _NGX_HTTP_SMARTFLOW_AUDIT_H_INCLUDED_


#include <curl/curl.h>

#include "ngx_http_smartflow_proxy.h"
#include "ngx_smartflow_merkle.h"
#include "ngx_smartflow_audit_keys.h"


#define NGX_SMARTFLOW_AUDIT_SEGMENT  "segment-%08ui.log"
#define NGX_SMARTFLOW_AUDIT_SEAL     "segment-%08ui.seal"

/* "indexed" of the receipts index: "N C0 ... C255 S0 ... S255\n" */
#define NGX_SMARTFLOW_AUDIT_INDEX_MARKER  (21 * 257 + 17 * 256 + 1)

#define NGX_SMARTFLOW_AUDIT_NAME_LEN sizeof("segment-00000000.seal")

/* the records' buffer in shared memory, smartflow_audit_buffer's limit */
#define NGX_SMARTFLOW_AUDIT_BUFFER_MAX  (1024 * 1024)

/* the open segment's leaf hashes kept in shared memory for its seal */
#define NGX_SMARTFLOW_AUDIT_LEAVES_MAX  65536


/* metrics, counted as records are appended */
#define NGX_SMARTFLOW_AUDIT_SERIES    128
#define NGX_SMARTFLOW_AUDIT_BUCKETS   10
#define NGX_SMARTFLOW_AUDIT_ACTIONS   16
#define NGX_SMARTFLOW_AUDIT_LABEL     64
#define NGX_SMARTFLOW_AUDIT_OTHER     16    /* slots kept for "other" */
#define NGX_SMARTFLOW_AUDIT_ANY_STATUS  1000    /* shown as "other" */

typedef struct {
    u_char                      model[NGX_SMARTFLOW_AUDIT_LABEL];
    u_char                      provider[NGX_SMARTFLOW_AUDIT_LABEL];
    ngx_uint_t                  status;         /* 0: a free slot */
    uint64_t                    requests;
    uint64_t                    prompt_tokens;
    uint64_t                    completion_tokens;
    uint64_t                    cost;           /* micro-USD */
    uint64_t                    latency_sum;    /* ms */
    uint64_t                    latency[NGX_SMARTFLOW_AUDIT_BUCKETS];
} ngx_http_smartflow_audit_series_t;


typedef struct {
    u_char                      action[NGX_SMARTFLOW_AUDIT_LABEL];
    uint64_t                    count;
} ngx_http_smartflow_audit_action_t;


/* what one request adds to the metrics */
typedef struct {
    ngx_str_t                   model;
    ngx_str_t                   provider;
    ngx_uint_t                  status;
    ngx_uint_t                  prompt_tokens;
    ngx_uint_t                  completion_tokens;
    uint64_t                    cost;
    ngx_msec_t                  latency;
    ngx_uint_t                  cache;          /* 0 none, 1 HIT, 2 MISS, */
    ngx_uint_t                  cache_phase;    /* 3 BYPASS, 4 other */
    ngx_str_t                   policy;
} ngx_http_smartflow_audit_sample_t;


/* shared by all workers, under its slab pool's mutex */
typedef struct {
    uint64_t                    seq;            /* the last record's */
    u_char                      head[32];       /* its line's SHA-256 */
    ngx_uint_t                  segment;        /* the open one */
    uint64_t                    seg_first;
    uint64_t                    seg_count;
    off_t                       seg_bytes;
    off_t                       seg_extra;   /* bytes found, not ours */
    time_t                      seg_start;
    sf_merkle_frontier_t        log;            /* every record */
    sf_merkle_frontier_t        sealed;         /* at the last rotation */
    ngx_uint_t                  last_sealed;    /* segment number */
    time_t                      last_seal_time;
    ngx_uint_t                  seals_pending;
    ngx_uint_t                  seal_failures;
    ngx_uint_t                  write_failures;
    ngx_uint_t                  tsa_waiting;    /* queries spooled */
    ngx_uint_t                  tsa_stamped;
    ngx_uint_t                  s3_backlog;     /* sealed, not shipped */
    ngx_uint_t                  s3_segments;    /* shipped */
    ngx_uint_t                  s3_objects;     /* PUTs confirmed */
    uint64_t                    s3_bytes;
    ngx_uint_t                  s3_failures;    /* rounds that failed */
    time_t                      s3_last_ship;
    ngx_uint_t                  s3_removed;     /* local segments */

    /* records chained but not yet written: smartflow_audit_buffer */
    u_char                     *buf;            /* NGX_..._BUFFER_MAX */
    size_t                      buf_len;
    uint64_t                    buf_records;

    /* the open segment's leaves, while all of them fit */
    u_char                    (*leaves)[32];
    ngx_uint_t                  leaves_ok;

    ngx_http_smartflow_audit_series_t  series[NGX_SMARTFLOW_AUDIT_SERIES];
    uint64_t                    cache[5][5];    /* result, phase */
    ngx_http_smartflow_audit_action_t  actions[NGX_SMARTFLOW_AUDIT_ACTIONS];
} ngx_http_smartflow_audit_sh_t;


typedef struct {
    ngx_str_t                   dir;            /* no trailing slash */
    ngx_str_t                   key_file;
    sf_audit_keys_t            *keys;
    size_t                      segment_size;
    time_t                      seal_interval;
    size_t                      buffer;         /* 0: a write a record */
    ngx_msec_t                  flush;
    ngx_flag_t                  immutable;
    ngx_shm_zone_t             *zone;
    ngx_str_t                   pool_name;
    ngx_thread_pool_t          *pool;
    ngx_int_t                   request_id;     /* variable index */
    ngx_str_t                   tsa_url;
    ngx_str_t                   tsa_ca;         /* PEM; none: the reply's */
    ngx_msec_t                  tsa_timeout;
    ngx_msec_t                  tsa_retry;
    ngx_cycle_t                *cycle;

    /* shipping to S3 Object Lock, ngx_http_smartflow_audit_s3.c */
    ngx_str_t                   s3_url;         /* endpoint */
    ngx_str_t                   s3_bucket;
    ngx_str_t                   s3_region;
    ngx_str_t                   s3_prefix;
    ngx_str_t                   s3_credentials; /* file; none: env */
    ngx_str_t                   s3_userpwd;     /* "ID:SECRET", never logged */
    ngx_uint_t                  s3_lock_mode;
    time_t                      s3_retention;
    ngx_msec_t                  s3_interval;
    ngx_msec_t                  s3_backoff_max;
    ngx_msec_t                  s3_timeout;
    ngx_flag_t                  s3_keep;        /* segments once shipped */
} ngx_http_smartflow_audit_main_conf_t;


typedef struct {
    ngx_open_file_t            *file;
    ngx_flag_t                  enable;
    ngx_uint_t                  api;            /* smartflow_audit_api */
    size_t                      bodies;         /* bytes kept, 0: none */
} ngx_http_smartflow_audit_loc_conf_t;


/* what sealing a segment needs, copied: it runs in a thread */
typedef struct {
    u_char                      dir[NGX_MAX_PATH];
    ngx_uint_t                  segment;
    uint64_t                    first;
    uint64_t                    count;
    u_char                      head[32];
    sf_merkle_frontier_t        old;
    sf_merkle_frontier_t        log;            /* with this segment */
    off_t                       bytes;
    unsigned char             (*leaves)[32];    /* NULL: hashed again */
    sf_audit_key_t              key;
    ngx_flag_t                  immutable;
    time_t                      now;
    u_char                      tsa_url[1024];  /* empty: none */
    u_char                      tsa_ca[NGX_MAX_PATH];   /* empty: none */
    ngx_msec_t                  tsa_timeout;
    ngx_flag_t                  offline;        /* at start: spool, no */
                                                /* call, no index */

    /* results */
    ngx_int_t                   rc;
    char                        err[NGX_MAX_PATH + 512];
    char                        protection[16];
    ngx_int_t                   tsa_rc;
    char                        tsa_err[NGX_MAX_PATH + 512];
    char                        index_err[NGX_MAX_PATH + 512];
    ngx_shm_zone_t             *zone;
} ngx_http_smartflow_audit_seal_t;


extern ngx_module_t  ngx_http_smartflow_audit_module;


/* the records of a segment or leaves file: its lines */
static ngx_inline uint64_t
ngx_http_smartflow_audit_lines(u_char *p, size_t len)
{
    uint64_t  n;
    u_char   *end;

    n = 0;

    for (end = p + len; p < end; p++) {
        n += (*p == '\n');
    }

    return n;
}


/*
 * A record's "request_id", its second field after "time": the value up
 * to its closing quote, at most 64 bytes, in *len; NULL if it has none.
 */
static ngx_inline u_char *
ngx_http_smartflow_audit_record_id(u_char *p, u_char *eol, size_t *len)
{
    u_char  *id;
    size_t   n;

    id = ngx_strnstr(p, "\"request_id\":\"",
                     ngx_min((size_t) (eol - p), 128));
    if (id == NULL) {
        *len = 0;
        return NULL;
    }

    id += sizeof("\"request_id\":\"") - 1;

    for (n = 0; id + n < eol && id[n] != '"' && n < 64; n++) {
        /* void */
    }

    *len = n;

    return id;
}


/*
 * What "indexed" keeps of the entries of an index file: the sum of a
 * 64-bit hash of each (FNV-1a, then mixed), which grows as entries are
 * appended, so that a file rewritten at its own length is found out by
 * whoever reads it whole.  It finds damage, it proves nothing.
 */
static ngx_inline uint64_t
ngx_http_smartflow_audit_index_sum(u_char *e, size_t n, uint64_t sum)
{
    size_t    i, k;
    uint64_t  h;

    for (i = 0; i < n; i++, e += 20) {
        h = 0xcbf29ce484222325ULL;

        for (k = 0; k < 20; k++) {
            h = (h ^ e[k]) * 0x100000001b3ULL;
        }

        h ^= h >> 33;
        h *= 0xff51afd7ed558ccdULL;
        h ^= h >> 33;

        sum += h;
    }

    return sum;
}


ngx_int_t ngx_http_smartflow_audit_seal(ngx_http_smartflow_audit_seal_t *s);
ngx_int_t ngx_http_smartflow_audit_index_read(u_char *dir, off_t *count,
    uint64_t *sum);
ngx_int_t ngx_http_smartflow_audit_index(u_char *dir, ngx_uint_t segment,
    char *err, size_t errlen);
ngx_int_t ngx_http_smartflow_audit_write_ro(u_char *path, u_char *data,
    size_t len, char *err, size_t errlen);
ngx_int_t ngx_http_smartflow_audit_recover(ngx_log_t *log,
    ngx_http_smartflow_audit_main_conf_t *amcf,
    ngx_http_smartflow_audit_sh_t *sh);
ngx_int_t ngx_http_smartflow_audit_tsa_stamp(u_char *dir,
    ngx_uint_t segment, u_char *url, u_char *ca, ngx_msec_t timeout,
    ngx_flag_t offline, char *err, size_t errlen);
ngx_int_t ngx_http_smartflow_audit_tsa_retry(u_char *dir, u_char *url,
    u_char *ca, ngx_msec_t timeout, ngx_uint_t *waiting, char *err,
    size_t errlen);
char *ngx_http_smartflow_audit_tsa_ca(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
void ngx_http_smartflow_audit_tsa_conf(
    ngx_http_smartflow_audit_main_conf_t *amcf, u_char *url, size_t url_size,
    u_char *ca, size_t ca_size);
ngx_int_t ngx_http_smartflow_audit_flush(
    ngx_http_smartflow_audit_main_conf_t *amcf, ngx_log_t *log);
void ngx_http_smartflow_audit_count(ngx_http_smartflow_audit_sh_t *sh,
    ngx_http_smartflow_audit_sample_t *m);
char *ngx_http_smartflow_audit_api(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
extern ngx_conf_enum_t  ngx_http_smartflow_audit_s3_modes[];

char *ngx_http_smartflow_audit_s3_conf(ngx_conf_t *cf,
    ngx_http_smartflow_audit_main_conf_t *amcf);
int ngx_http_smartflow_audit_curl_abort(void *data, curl_off_t dltotal,
    curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow);
void ngx_http_smartflow_audit_s3_init_process(ngx_cycle_t *cycle,
    ngx_http_smartflow_audit_main_conf_t *amcf);
ngx_int_t ngx_http_smartflow_audit_post_seal(ngx_http_request_t *r,
    ngx_http_smartflow_audit_main_conf_t *amcf,
    ngx_http_smartflow_audit_seal_t *snapshot);


#endif /* _NGX_HTTP_SMARTFLOW_AUDIT_H_INCLUDED_ */
