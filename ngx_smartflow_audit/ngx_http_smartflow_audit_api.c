/*
 * The audit module's HTTP side (smartflow_audit_api):
 *
 *   status    GET /api/audit/status     chain head, log tree, last seal,
 *                                       backlog (master key)
 *   proof     GET /api/audit/proof/ID   a record by receipt id or number,
 *                                       its inclusion proof once sealed
 *   logs      GET /api/vas/logs         records, filtered and paged
 *                                       (master key)
 *   metrics   GET /metrics              Prometheus text
 *
 * Reading segments may block, so proof and logs read them in the thread
 * pool; status and metrics copy the shared counters out under the lock.
 */

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "ngx_http_smartflow_audit.h"


#define NGX_HTTP_SMARTFLOW_AUDIT_STATUS   1
#define NGX_HTTP_SMARTFLOW_AUDIT_PROOF    2
#define NGX_HTTP_SMARTFLOW_AUDIT_LOGS     3
#define NGX_HTTP_SMARTFLOW_AUDIT_METRICS  4

#define NGX_HTTP_SMARTFLOW_AUDIT_FILTERS  4

/* from and to, epoch seconds up to 9999-12-31: milliseconds fit in 64 bits */
#define NGX_HTTP_SMARTFLOW_AUDIT_TIME_MAX  253402300799LL

/*
 * Queries in the thread pool at once, per worker: each may read the
 * whole folder, and the pool also seals and ships; the next ones wait
 * their turn in the worker, up to a bound, and past it are refused
 */
#define NGX_HTTP_SMARTFLOW_AUDIT_RUNNING  2
#define NGX_HTTP_SMARTFLOW_AUDIT_WAITING  64


typedef struct {
    u_char                     *data;
    size_t                      len;
    size_t                      size;
    unsigned                    failed:1;
} ngx_http_smartflow_audit_buf_t;


/* a query over the folder, run in a thread */
typedef struct {
    ngx_http_request_t         *request;
    ngx_thread_task_t          *task;
    ngx_queue_t                 queue;          /* waiting its turn */
    u_char                      dir[NGX_MAX_PATH];
    ngx_uint_t                  mode;
    u_char                      id[64];         /* receipt id */
    uint64_t                    seq;            /* or record number */
    char                       *filter[NGX_HTTP_SMARTFLOW_AUDIT_FILTERS];
    int64_t                     from;           /* ms */
    int64_t                     to;
    uint64_t                    after;
    ngx_uint_t                  limit;
    ngx_uint_t                  open;           /* the zone's, when posted: */
    uint64_t                    open_first;     /* the open segment, its */
    uint64_t                    last;           /* first record, the last */
    ngx_uint_t                  status;         /* of the answer */
    ngx_http_smartflow_audit_buf_t  out;
} ngx_http_smartflow_audit_query_t;


static ngx_int_t ngx_http_smartflow_audit_api_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_smartflow_audit_master(ngx_http_request_t *r);
static ngx_int_t ngx_http_smartflow_audit_admin(ngx_http_request_t *r,
    char *message);
static ngx_int_t ngx_http_smartflow_audit_reply(ngx_http_request_t *r,
    ngx_uint_t status, char *type, u_char *data, size_t len);
static ngx_int_t ngx_http_smartflow_audit_refuse(ngx_http_request_t *r,
    ngx_uint_t status, char *type, char *code, char *message);
static ngx_int_t ngx_http_smartflow_audit_status(ngx_http_request_t *r,
    ngx_http_smartflow_audit_main_conf_t *amcf);
static ngx_int_t ngx_http_smartflow_audit_metrics(ngx_http_request_t *r,
    ngx_http_smartflow_audit_main_conf_t *amcf);
static ngx_int_t ngx_http_smartflow_audit_query(ngx_http_request_t *r,
    ngx_http_smartflow_audit_main_conf_t *amcf, ngx_uint_t mode);
static void ngx_http_smartflow_audit_query_thread(void *data,
    ngx_log_t *log);
static ngx_int_t ngx_http_smartflow_audit_query_post(
    ngx_http_smartflow_audit_query_t *q);
static void ngx_http_smartflow_audit_query_next(void);
static ngx_uint_t ngx_http_smartflow_audit_seq_segment(
    ngx_http_smartflow_audit_query_t *q, uint64_t seq, ngx_log_t *log);
static ngx_uint_t ngx_http_smartflow_audit_gone(ngx_http_request_t *r);
static void ngx_http_smartflow_audit_hold(void);
static void ngx_http_smartflow_audit_hold_handler(ngx_event_t *ev);
static ngx_int_t ngx_http_smartflow_audit_busy(ngx_http_request_t *r);
static void ngx_http_smartflow_audit_query_done(ngx_event_t *ev);
static void ngx_http_smartflow_audit_query_free(
    ngx_http_smartflow_audit_query_t *q);


static ngx_queue_t  ngx_http_smartflow_audit_waiting;
static ngx_uint_t   ngx_http_smartflow_audit_nwaiting;
static ngx_uint_t   ngx_http_smartflow_audit_running;
static ngx_event_t  ngx_http_smartflow_audit_holder;

/* the holder's data: nginx's debug log of a timer reads a connection's fd */
static ngx_connection_t  ngx_http_smartflow_audit_holder_conn;


/* latency buckets, milliseconds */
static ngx_msec_t  ngx_http_smartflow_audit_le[NGX_SMARTFLOW_AUDIT_BUCKETS]
    = { 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000 };

static char  *ngx_http_smartflow_audit_le_text[NGX_SMARTFLOW_AUDIT_BUCKETS]
    = { "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "60" };

static char  *ngx_http_smartflow_audit_cache_text[5]
    = { "NONE", "HIT", "MISS", "BYPASS", "OTHER" };


/*
 * A label value as Prometheus reads it: valid UTF-8 (a scrape with one
 * invalid byte is refused whole), so a byte that does not begin a whole
 * character is written as "?", and the cut to the label's room falls
 * between characters
 */
static void
ngx_http_smartflow_audit_label(u_char *dst, ngx_str_t *s)
{
    u_char   c, *p, *end;
    size_t   n, k, room;

    p = s->data;
    end = p + s->len;
    room = NGX_SMARTFLOW_AUDIT_LABEL - 1;
    n = 0;

    while (p < end) {
        c = *p;

        k = (c < 0x80) ? 1
            : (c >= 0xc2 && c <= 0xdf) ? 2
            : (c >= 0xe0 && c <= 0xef) ? 3
            : (c >= 0xf0 && c <= 0xf4) ? 4 : 0;

        if (k > 1) {
            if ((size_t) (end - p) < k
                || (p[1] & 0xc0) != 0x80
                || (c == 0xe0 && p[1] < 0xa0)
                || (c == 0xed && p[1] > 0x9f)
                || (c == 0xf0 && p[1] < 0x90)
                || (c == 0xf4 && p[1] > 0x8f)
                || (k > 2 && (p[2] & 0xc0) != 0x80)
                || (k > 3 && (p[3] & 0xc0) != 0x80))
            {
                k = 0;
            }
        }

        if ((k ? k : 1) > room - n) {
            break;
        }

        if (k == 0) {
            dst[n++] = '?';
            p++;
            continue;
        }

        ngx_memcpy(dst + n, p, k);
        n += k;
        p += k;
    }

    dst[n] = '\0';
}


/* under the zone's lock, from the LOG phase */
void
ngx_http_smartflow_audit_count(ngx_http_smartflow_audit_sh_t *sh,
    ngx_http_smartflow_audit_sample_t *m)
{
    u_char                              *p, *end, *item, *colon;
    size_t                               n;
    ngx_str_t                            model, provider;
    ngx_uint_t                           i, b;
    ngx_http_smartflow_audit_series_t   *s;
    ngx_http_smartflow_audit_action_t   *a;
    u_char                               mk[NGX_SMARTFLOW_AUDIT_LABEL];
    u_char                               pk[NGX_SMARTFLOW_AUDIT_LABEL];

    model = m->model;
    provider = m->provider;
    ngx_http_smartflow_audit_label(mk, &model);
    ngx_http_smartflow_audit_label(pk, &provider);

    /*
     * The series of model, provider and status; once the table is full
     * but for its last NGX_SMARTFLOW_AUDIT_OTHER slots, the rest are
     * counted by status alone as model and provider "other", and past
     * those as status "other" too: a series once shown keeps its labels,
     * so no counter goes back.
     */
    for (i = 0; i < NGX_SMARTFLOW_AUDIT_SERIES - NGX_SMARTFLOW_AUDIT_OTHER;
         i++)
    {
        s = &sh->series[i];

        if (s->status == 0) {
            ngx_cpystrn(s->model, mk, NGX_SMARTFLOW_AUDIT_LABEL);
            ngx_cpystrn(s->provider, pk, NGX_SMARTFLOW_AUDIT_LABEL);
            s->status = m->status;
            goto found;
        }

        if (s->status == m->status
            && ngx_strcmp(s->model, mk) == 0
            && ngx_strcmp(s->provider, pk) == 0)
        {
            goto found;
        }
    }

    for ( /* void */ ; i < NGX_SMARTFLOW_AUDIT_SERIES - 1; i++) {
        s = &sh->series[i];

        if (s->status == 0) {
            ngx_cpystrn(s->model, (u_char *) "other",
                        NGX_SMARTFLOW_AUDIT_LABEL);
            ngx_cpystrn(s->provider, (u_char *) "other",
                        NGX_SMARTFLOW_AUDIT_LABEL);
            s->status = m->status;
            goto found;
        }

        if (s->status == m->status) {
            goto found;
        }
    }

    s = &sh->series[NGX_SMARTFLOW_AUDIT_SERIES - 1];

    if (s->status == 0) {
        ngx_cpystrn(s->model, (u_char *) "other", NGX_SMARTFLOW_AUDIT_LABEL);
        ngx_cpystrn(s->provider, (u_char *) "other",
                    NGX_SMARTFLOW_AUDIT_LABEL);
        s->status = NGX_SMARTFLOW_AUDIT_ANY_STATUS;
    }

found:

    s->requests++;
    s->prompt_tokens += m->prompt_tokens;
    s->completion_tokens += m->completion_tokens;
    s->cost += m->cost;
    s->latency_sum += m->latency;

    for (b = 0; b < NGX_SMARTFLOW_AUDIT_BUCKETS; b++) {
        if (m->latency <= ngx_http_smartflow_audit_le[b]) {
            s->latency[b]++;
            break;
        }
    }

    if (m->cache) {
        sh->cache[m->cache][ngx_min(m->cache_phase, 4)]++;
    }

    /* "rule:action" items joined by ',' */
    p = m->policy.data;
    end = p + m->policy.len;

    while (p < end) {
        item = p;
        while (p < end && *p != ',') {
            p++;
        }

        colon = NULL;
        for (end = item; end < p; end++) {
            if (*end == ':') {
                colon = end;
            }
        }

        end = m->policy.data + m->policy.len;

        if (colon && p - colon > 1) {
            n = ngx_min((size_t) (p - colon - 1),
                        NGX_SMARTFLOW_AUDIT_LABEL - 1);

            for (i = 0; i < NGX_SMARTFLOW_AUDIT_ACTIONS; i++) {
                a = &sh->actions[i];

                if (a->count == 0) {
                    ngx_memcpy(a->action, colon + 1, n);
                    a->action[n] = '\0';
                }

                if (ngx_strlen(a->action) == n
                    && ngx_strncmp(a->action, colon + 1, n) == 0)
                {
                    a->count++;
                    break;
                }
            }
        }

        p++;
    }
}


/* smartflow_audit_api status | proof | logs | metrics; */
char *
ngx_http_smartflow_audit_api(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_smartflow_audit_loc_conf_t *alcf = conf;

    ngx_str_t                 *value;
    ngx_uint_t                 i;
    ngx_http_core_loc_conf_t  *clcf;

    static char  *names[] = { "", "status", "proof", "logs", "metrics" };

    value = cf->args->elts;

    for (i = 1; i < 5; i++) {
        if (ngx_strcmp(value[1].data, names[i]) == 0) {
            break;
        }
    }

    if (i == 5) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow audit: unknown api \"%V\" (status, "
                           "proof, logs, metrics)", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (alcf->api) {
        return "is duplicate";
    }

    alcf->api = i;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_smartflow_audit_api_handler;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_smartflow_audit_api_handler(ngx_http_request_t *r)
{
    ngx_int_t                              rc;
    ngx_http_smartflow_audit_loc_conf_t   *alcf;
    ngx_http_smartflow_audit_main_conf_t  *amcf;

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_smartflow_audit_module);
    amcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_audit_module);

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return ngx_http_smartflow_audit_refuse(r, NGX_HTTP_NOT_ALLOWED,
                   "invalid_request_error", "method_not_allowed",
                   "Only GET is allowed here.");
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (amcf->zone == NULL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "smartflow audit: \"%V\" needs the audit trail, "
                      "which is not configured (smartflow_audit_dir)",
                      &r->uri);

        return ngx_http_smartflow_audit_refuse(r,
                   NGX_HTTP_SERVICE_UNAVAILABLE, "api_error",
                   "audit_off", "The audit trail is not configured "
                   "(smartflow_audit_dir).");
    }

    if (alcf->api == NGX_HTTP_SMARTFLOW_AUDIT_STATUS
        || alcf->api == NGX_HTTP_SMARTFLOW_AUDIT_LOGS)
    {
        rc = ngx_http_smartflow_audit_admin(r, "This endpoint needs the "
                                            "master key.");
        if (rc != NGX_DECLINED) {
            return rc;
        }
    }

    switch (alcf->api) {

    case NGX_HTTP_SMARTFLOW_AUDIT_STATUS:
        return ngx_http_smartflow_audit_status(r, amcf);

    case NGX_HTTP_SMARTFLOW_AUDIT_METRICS:
        return ngx_http_smartflow_audit_metrics(r, amcf);

    default:
        return ngx_http_smartflow_audit_query(r, amcf, alcf->api);
    }
}


/*
 * As the keys admin API: "Authorization: Bearer" or x-api-key.  NGX_OK,
 * or the status to refuse with.
 */
static ngx_int_t
ngx_http_smartflow_audit_master(ngx_http_request_t *r)
{
    ngx_str_t                       key, *h;
    u_char                          digest[32];
    ngx_http_smartflow_main_conf_t *smcf;

    smcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_proxy_module);
    ngx_str_null(&key);

    if (r->headers_in.authorization) {
        key = r->headers_in.authorization->value;

        if (key.len > 7 && ngx_strncasecmp(key.data, (u_char *) "Bearer ", 7)
                           == 0)
        {
            key.data += 7;
            key.len -= 7;

        } else {
            ngx_str_null(&key);
        }

    } else {
        h = ngx_http_smartflow_header_in(&r->headers_in.headers,
                                         "x-api-key");
        if (h) {
            key = *h;
        }
    }

    if (key.len == 0) {
        return NGX_HTTP_UNAUTHORIZED;
    }

    if (smcf == NULL || smcf->master_key.len == 0
        || EVP_Digest(key.data, key.len, digest, NULL, sf_merkle_sha256(), NULL)
           != 1
        || CRYPTO_memcmp(digest, smcf->master_hash, 32) != 0)
    {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "smartflow audit: \"%V\" needs the master key",
                      &r->uri);

        return NGX_HTTP_FORBIDDEN;
    }

    return NGX_OK;
}


/* NGX_DECLINED for the master key, else the refusal sent */
static ngx_int_t
ngx_http_smartflow_audit_admin(ngx_http_request_t *r, char *message)
{
    switch (ngx_http_smartflow_audit_master(r)) {

    case NGX_HTTP_UNAUTHORIZED:
        return ngx_http_smartflow_audit_refuse(r, NGX_HTTP_UNAUTHORIZED,
                   "invalid_request_error", "missing_api_key",
                   "You didn't provide an API key.");

    case NGX_HTTP_FORBIDDEN:
        return ngx_http_smartflow_audit_refuse(r, NGX_HTTP_FORBIDDEN,
                   "permission_error", "admin_only", message);

    default:
        return NGX_DECLINED;
    }
}


static ngx_int_t
ngx_http_smartflow_audit_reply(ngx_http_request_t *r, ngx_uint_t status,
    char *type, u_char *data, size_t len)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    r->headers_out.status = status;
    r->headers_out.content_type.data = (u_char *) type;
    r->headers_out.content_type.len = ngx_strlen(type);
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_length_n = len;

    if (r->method == NGX_HTTP_HEAD || len == 0) {
        r->header_only = 1;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = data;
    b->last = data + len;
    b->memory = 1;
    b->last_buf = 1;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/* an OpenAI-format error, as the rest of the gateway answers */
static ngx_int_t
ngx_http_smartflow_audit_refuse(ngx_http_request_t *r, ngx_uint_t status,
    char *type, char *code, char *message)
{
    u_char  *p, *last;

    p = ngx_pnalloc(r->pool, 512);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    last = ngx_snprintf(p, 512, "{\"error\":{\"message\":\"%s\","
                        "\"type\":\"%s\",\"param\":null,\"code\":\"%s\"}}\n",
                        message, type, code);

    return ngx_http_smartflow_audit_reply(r, status, "application/json", p,
                                          last - p);
}


static ngx_int_t
ngx_http_smartflow_audit_status(ngx_http_request_t *r,
    ngx_http_smartflow_audit_main_conf_t *amcf)
{
    u_char                         *p, *b;
    time_t                          age;
    ngx_slab_pool_t                *shpool;
    ngx_http_smartflow_audit_sh_t  *sh, s;
    u_char                          root[32];
    char                            head[65], hroot[65];

    shpool = (ngx_slab_pool_t *) amcf->zone->shm.addr;
    sh = shpool->data;

    ngx_shmtx_lock(&shpool->mutex);
    ngx_memcpy(&s, sh, offsetof(ngx_http_smartflow_audit_sh_t, series));
    ngx_shmtx_unlock(&shpool->mutex);

    sf_audit_hex(s.head, 32, head);
    sf_merkle_frontier_root(&s.log, root);
    sf_audit_hex(root, 32, hroot);

    age = s.last_seal_time ? ngx_time() - s.last_seal_time : -1;

    b = ngx_pnalloc(r->pool, 1536);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_snprintf(b, 1536,
                     "{\"records\":%uL,\"chain_head\":\"%s\","
                     "\"log_size\":%uL,\"log_root\":\"%s\","
                     "\"open_segment\":%ui,\"open_records\":%uL,"
                     "\"open_bytes\":%O,\"last_sealed_segment\":%ui,"
                     "\"last_seal_time\":%T,\"last_seal_age\":%T,"
                     "\"backlog\":{\"seals_pending\":%ui,"
                     "\"unsealed_records\":%uL,"
                     "\"timestamps_spooled\":%ui,\"shipping\":%ui,"
                     "\"unwritten_records\":%uL},"
                     "\"timestamps\":%ui,"
                     "\"s3\":{\"enabled\":%s,\"shipped_segments\":%ui,"
                     "\"objects\":%ui,\"bytes\":%uL,\"failures\":%ui,"
                     "\"last_ship_time\":%T,\"removed_segments\":%ui},"
                     "\"seal_failures\":%ui,\"write_failures\":%ui,"
                     "\"segment_size\":%uz,\"seal_interval\":%T}\n",
                     s.seq, head, (uint64_t) s.log.size, hroot, s.segment,
                     s.seg_count, s.seg_bytes, s.last_sealed,
                     s.last_seal_time, age, s.seals_pending,
                     (uint64_t) (s.log.size - s.sealed.size),
                     s.tsa_waiting, s.s3_backlog, s.buf_records,
                     s.tsa_stamped,
                     amcf->s3_url.len ? "true" : "false", s.s3_segments,
                     s.s3_objects, s.s3_bytes, s.s3_failures,
                     s.s3_last_ship, s.s3_removed, s.seal_failures,
                     s.write_failures, amcf->segment_size,
                     amcf->seal_interval);

    return ngx_http_smartflow_audit_reply(r, NGX_HTTP_OK, "application/json",
                                          b, p - b);
}


/* a Prometheus label value: backslash, quote and newline escaped */
static u_char *
ngx_http_smartflow_audit_prom(u_char *p, u_char *s)
{
    for ( /* void */ ; *s; s++) {
        if (*s == '\\' || *s == '"') {
            *p++ = '\\';
            *p++ = *s;

        } else if (*s == '\n') {
            *p++ = '\\';
            *p++ = 'n';

        } else {
            *p++ = *s;
        }
    }

    return p;
}


#define ngx_http_smartflow_audit_series_labels(p, s)                          \
    p = ngx_sf_cpymem(p, "model=\"");                                        \
    p = ngx_http_smartflow_audit_prom(p, (s)->model);                         \
    p = ngx_sf_cpymem(p, "\",provider=\"");                                  \
    p = ngx_http_smartflow_audit_prom(p, (s)->provider);                      \
    p = ((s)->status == NGX_SMARTFLOW_AUDIT_ANY_STATUS)                      \
        ? ngx_sf_cpymem(p, "\",status=\"other\"")                          \
        : ngx_sprintf(p, "\",status=\"%ui\"", (s)->status)


static ngx_int_t
ngx_http_smartflow_audit_metrics(ngx_http_request_t *r,
    ngx_http_smartflow_audit_main_conf_t *amcf)
{
    u_char                             *b, *p;
    size_t                              len;
    uint64_t                            cum;
    ngx_str_t                           more;
    ngx_uint_t                          i, j, n;
    ngx_slab_pool_t                    *shpool;
    ngx_http_smartflow_audit_sh_t      *sh, *s;
    ngx_http_smartflow_audit_series_t  *se;

    shpool = (ngx_slab_pool_t *) amcf->zone->shm.addr;
    sh = shpool->data;

    s = ngx_palloc(r->pool, sizeof(ngx_http_smartflow_audit_sh_t));
    if (s == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* copy out, unlock, then format */
    ngx_shmtx_lock(&shpool->mutex);
    ngx_memcpy(s, sh, sizeof(ngx_http_smartflow_audit_sh_t));
    ngx_shmtx_unlock(&shpool->mutex);

    for (n = 0; n < NGX_SMARTFLOW_AUDIT_SERIES; n++) {
        if (s->series[n].status == 0) {
            break;
        }
    }

    /* a label is at most twice its bytes escaped */
    len = 5120 + n * (NGX_SMARTFLOW_AUDIT_BUCKETS + 8)
                   * (4 * NGX_SMARTFLOW_AUDIT_LABEL + 160)
          + 25 * 128
          + NGX_SMARTFLOW_AUDIT_ACTIONS * (2 * NGX_SMARTFLOW_AUDIT_LABEL + 80);

    /* what the other modules registered (the cache's zones) */
    if (ngx_http_smartflow_metrics(r, &more) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b = ngx_pnalloc(r->pool, len + more.len);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = b;

    p = ngx_sf_cpymem(p,
        "# HELP smartflow_requests_total Gateway requests by model, "
        "provider and status.\n"
        "# TYPE smartflow_requests_total counter\n");

    for (i = 0; i < n; i++) {
        se = &s->series[i];
        p = ngx_sf_cpymem(p, "smartflow_requests_total{");
        ngx_http_smartflow_audit_series_labels(p, se);
        p = ngx_sprintf(p, "} %uL\n", se->requests);
    }

    p = ngx_sf_cpymem(p,
        "# HELP smartflow_tokens_total Tokens by model, provider, status "
        "and direction.\n"
        "# TYPE smartflow_tokens_total counter\n");

    for (i = 0; i < n; i++) {
        se = &s->series[i];
        p = ngx_sf_cpymem(p, "smartflow_tokens_total{");
        ngx_http_smartflow_audit_series_labels(p, se);
        p = ngx_sprintf(p, ",type=\"prompt\"} %uL\n", se->prompt_tokens);
        p = ngx_sf_cpymem(p, "smartflow_tokens_total{");
        ngx_http_smartflow_audit_series_labels(p, se);
        p = ngx_sprintf(p, ",type=\"completion\"} %uL\n",
                        se->completion_tokens);
    }

    p = ngx_sf_cpymem(p,
        "# HELP smartflow_cost_usd_total Spend charged to virtual keys, "
        "in USD.\n"
        "# TYPE smartflow_cost_usd_total counter\n");

    for (i = 0; i < n; i++) {
        se = &s->series[i];
        p = ngx_sf_cpymem(p, "smartflow_cost_usd_total{");
        ngx_http_smartflow_audit_series_labels(p, se);
        p = ngx_sprintf(p, "} %uL.%06uL\n", se->cost / 1000000,
                        se->cost % 1000000);
    }

    p = ngx_sf_cpymem(p,
        "# HELP smartflow_request_duration_seconds Time from the request's "
        "first byte to its log phase.\n"
        "# TYPE smartflow_request_duration_seconds histogram\n");

    for (i = 0; i < n; i++) {
        se = &s->series[i];
        cum = 0;

        for (j = 0; j < NGX_SMARTFLOW_AUDIT_BUCKETS; j++) {
            cum += se->latency[j];
            p = ngx_sf_cpymem(p, "smartflow_request_duration_seconds_bucket{");
            ngx_http_smartflow_audit_series_labels(p, se);
            p = ngx_sprintf(p, ",le=\"%s\"} %uL\n",
                            ngx_http_smartflow_audit_le_text[j], cum);
        }

        p = ngx_sf_cpymem(p, "smartflow_request_duration_seconds_bucket{");
        ngx_http_smartflow_audit_series_labels(p, se);
        p = ngx_sprintf(p, ",le=\"+Inf\"} %uL\n", se->requests);

        p = ngx_sf_cpymem(p, "smartflow_request_duration_seconds_sum{");
        ngx_http_smartflow_audit_series_labels(p, se);
        p = ngx_sprintf(p, "} %uL.%03uL\n", se->latency_sum / 1000,
                        se->latency_sum % 1000);

        p = ngx_sf_cpymem(p, "smartflow_request_duration_seconds_count{");
        ngx_http_smartflow_audit_series_labels(p, se);
        p = ngx_sprintf(p, "} %uL\n", se->requests);
    }

    p = ngx_sf_cpymem(p,
        "# HELP smartflow_cache_results_total Cache verdicts by result and "
        "phase (0: none).\n"
        "# TYPE smartflow_cache_results_total counter\n");

    for (i = 1; i < 5; i++) {
        for (j = 0; j < 5; j++) {
            if (s->cache[i][j] == 0 && !(j == 0 && i <= 3)) {
                continue;
            }

            p = ngx_sprintf(p, "smartflow_cache_results_total{result=\"%s\","
                            "phase=\"%ui\"} %uL\n",
                            ngx_http_smartflow_audit_cache_text[i], j,
                            s->cache[i][j]);
        }
    }

    p = ngx_sf_cpymem(p,
        "# HELP smartflow_policy_actions_total Guardrail decisions by "
        "action.\n"
        "# TYPE smartflow_policy_actions_total counter\n");

    for (i = 0; i < NGX_SMARTFLOW_AUDIT_ACTIONS; i++) {
        if (s->actions[i].count == 0) {
            break;
        }

        p = ngx_sf_cpymem(p, "smartflow_policy_actions_total{action=\"");
        p = ngx_http_smartflow_audit_prom(p, s->actions[i].action);
        p = ngx_sprintf(p, "\"} %uL\n", s->actions[i].count);
    }

    p = ngx_sprintf(p,
        "# HELP smartflow_audit_records_total Records in the audit chain.\n"
        "# TYPE smartflow_audit_records_total counter\n"
        "smartflow_audit_records_total %uL\n"
        "# HELP smartflow_audit_backlog Closed segments waiting for their "
        "seal.\n"
        "# TYPE smartflow_audit_backlog gauge\n"
        "smartflow_audit_backlog %ui\n"
        "# HELP smartflow_audit_unsealed_records Records not yet under a "
        "seal.\n"
        "# TYPE smartflow_audit_unsealed_records gauge\n"
        "smartflow_audit_unsealed_records %uL\n"
        "# HELP smartflow_audit_timestamps_spooled Seals whose RFC 3161 "
        "timestamp waits for the authority.\n"
        "# TYPE smartflow_audit_timestamps_spooled gauge\n"
        "smartflow_audit_timestamps_spooled %ui\n"
        "# HELP smartflow_audit_seal_failures_total Seals that failed.\n"
        "# TYPE smartflow_audit_seal_failures_total counter\n"
        "smartflow_audit_seal_failures_total %ui\n"
        "# HELP smartflow_audit_write_failures_total Records that could "
        "not be written.\n"
        "# TYPE smartflow_audit_write_failures_total counter\n"
        "smartflow_audit_write_failures_total %ui\n",
        s->seq, s->seals_pending,
        (uint64_t) (s->log.size - s->sealed.size), s->tsa_waiting,
        s->seal_failures, s->write_failures);

    p = ngx_sprintf(p,
        "# HELP smartflow_audit_s3_backlog Sealed segments not yet shipped "
        "to S3.\n"
        "# TYPE smartflow_audit_s3_backlog gauge\n"
        "smartflow_audit_s3_backlog %ui\n"
        "# HELP smartflow_audit_s3_segments_total Segments shipped to S3.\n"
        "# TYPE smartflow_audit_s3_segments_total counter\n"
        "smartflow_audit_s3_segments_total %ui\n"
        "# HELP smartflow_audit_s3_objects_total Objects whose upload S3 "
        "confirmed.\n"
        "# TYPE smartflow_audit_s3_objects_total counter\n"
        "smartflow_audit_s3_objects_total %ui\n"
        "# HELP smartflow_audit_s3_bytes_total Bytes shipped to S3.\n"
        "# TYPE smartflow_audit_s3_bytes_total counter\n"
        "smartflow_audit_s3_bytes_total %uL\n"
        "# HELP smartflow_audit_s3_failures_total Shipping rounds that "
        "failed.\n"
        "# TYPE smartflow_audit_s3_failures_total counter\n"
        "smartflow_audit_s3_failures_total %ui\n",
        s->s3_backlog, s->s3_segments, s->s3_objects, s->s3_bytes,
        s->s3_failures);

    if (s->last_seal_time) {
        p = ngx_sprintf(p,
            "# HELP smartflow_audit_last_seal_age_seconds Since the last "
            "seal.\n"
            "# TYPE smartflow_audit_last_seal_age_seconds gauge\n"
            "smartflow_audit_last_seal_age_seconds %T\n",
            ngx_time() - s->last_seal_time);
    }

    if (more.len) {
        p = ngx_cpymem(p, more.data, more.len);
    }

    return ngx_http_smartflow_audit_reply(r, NGX_HTTP_OK,
               "text/plain; version=0.0.4; charset=utf-8", b, p - b);
}


/* the query's arguments, checked here; the folder is read in a thread */
static ngx_int_t
ngx_http_smartflow_audit_query(ngx_http_request_t *r,
    ngx_http_smartflow_audit_main_conf_t *amcf, ngx_uint_t mode)
{
    u_char                            *p, *dst, *src;
    size_t                             n;
    ngx_int_t                          v, rc;
    ngx_str_t                          arg, id;
    ngx_uint_t                         i, nf;
    ngx_thread_task_t                 *task;
    ngx_http_smartflow_audit_query_t  *q;

    static char  *fields[] = { "key", "key_id", "team", "team",
                               "model", "model", NULL };

    task = ngx_calloc(sizeof(ngx_thread_task_t)
                      + sizeof(ngx_http_smartflow_audit_query_t),
                      r->connection->log);
    if (task == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    q = (ngx_http_smartflow_audit_query_t *) (task + 1);
    q->request = r;
    q->task = task;
    q->mode = mode;
    q->limit = 100;
    q->to = INT64_MAX;
    ngx_cpystrn(q->dir, amcf->dir.data, NGX_MAX_PATH);

    if (mode == NGX_HTTP_SMARTFLOW_AUDIT_PROOF) {
        /* the last path segment: a receipt id or a record number */
        id = r->uri;

        for (p = id.data + id.len; p > id.data && p[-1] != '/'; p--) {
            /* void */
        }

        id.len -= p - id.data;
        id.data = p;

        /* 32 hex digits, or a number of up to 19 digits */
        for (i = 0, n = 0; i < id.len; i++) {
            if (id.data[i] >= '0' && id.data[i] <= '9') {
                continue;
            }

            if (id.data[i] < 'a' || id.data[i] > 'f') {
                break;
            }

            n++;
        }

        if (i != id.len || id.len == 0
            || (id.len != 32 && (n || id.len > 19)))
        {
            ngx_free(task);
            return ngx_http_smartflow_audit_refuse(r, NGX_HTTP_BAD_REQUEST,
                       "invalid_request_error", "invalid_parameter",
                       "A record is named by its receipt id (32 hex "
                       "digits) or its number.");
        }

        if (id.len == 32) {
            ngx_memcpy(q->id, id.data, 32);

        } else {
            /*
             * Numbers are guessed in order: by its number any record,
             * with its key, team and bodies, is the master key's to
             * read, as GET /api/vas/logs is; a receipt id is known
             * only to the client that got it.
             */
            rc = ngx_http_smartflow_audit_admin(r, "A record is read by "
                     "its number with the master key only, by its receipt "
                     "id without.");
            if (rc != NGX_DECLINED) {
                ngx_free(task);
                return rc;
            }

            v = ngx_atoi(id.data, id.len);
            if (v <= 0) {
                ngx_free(task);
                return ngx_http_smartflow_audit_refuse(r, NGX_HTTP_NOT_FOUND,
                           "invalid_request_error", "record_not_found",
                           "No such record.");
            }

            q->seq = v;
        }

    } else {
        nf = 0;

        for (i = 0; fields[i]; i += 2) {
            if (ngx_http_arg(r, (u_char *) fields[i], ngx_strlen(fields[i]),
                             &arg)
                != NGX_OK)
            {
                continue;
            }

            /* the value as the record spells it: unescaped, JSON-escaped */
            src = arg.data;
            dst = ngx_pnalloc(r->pool, arg.len + 1);
            if (dst == NULL) {
                ngx_free(task);
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            p = dst;
            ngx_unescape_uri(&p, &src, arg.len, NGX_UNESCAPE_URI);
            n = p - dst;

            q->filter[nf] = ngx_alloc(sizeof("\"\":\"\"") + 16
                                      + ngx_smartflow_json_escape_len(dst, n),
                                      r->connection->log);
            if (q->filter[nf] == NULL) {
                ngx_http_smartflow_audit_query_free(q);
                ngx_free(task);
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            p = ngx_sprintf((u_char *) q->filter[nf], "\"%s\":\"",
                            fields[i + 1]);
            p = ngx_smartflow_json_escape(p, dst, n);
            *p++ = '"';
            *p = '\0';
            nf++;
        }

        if (ngx_http_arg(r, (u_char *) "status", 6, &arg) == NGX_OK) {
            v = ngx_atoi(arg.data, arg.len);
            if (v < 100 || v > 999) {
                goto bad_arg;
            }

            q->filter[nf] = ngx_alloc(32, r->connection->log);
            if (q->filter[nf] == NULL) {
                ngx_http_smartflow_audit_query_free(q);
                ngx_free(task);
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            ngx_sprintf((u_char *) q->filter[nf], "\"status\":%i,%Z", v);
            nf++;
        }

        if (ngx_http_arg(r, (u_char *) "from", 4, &arg) == NGX_OK) {
            v = ngx_atoi(arg.data, arg.len);
            if (v == NGX_ERROR || v > NGX_HTTP_SMARTFLOW_AUDIT_TIME_MAX) {
                goto bad_arg;
            }

            q->from = (int64_t) v * 1000;
        }

        if (ngx_http_arg(r, (u_char *) "to", 2, &arg) == NGX_OK) {
            v = ngx_atoi(arg.data, arg.len);
            if (v == NGX_ERROR || v > NGX_HTTP_SMARTFLOW_AUDIT_TIME_MAX) {
                goto bad_arg;
            }

            q->to = (int64_t) v * 1000 + 999;
        }

        if (ngx_http_arg(r, (u_char *) "after", 5, &arg) == NGX_OK) {
            v = ngx_atoi(arg.data, arg.len);
            if (v == NGX_ERROR) {
                goto bad_arg;
            }

            q->after = v;
        }

        if (ngx_http_arg(r, (u_char *) "limit", 5, &arg) == NGX_OK) {
            v = ngx_atoi(arg.data, arg.len);
            if (v < 1 || v > 1000) {
                goto bad_arg;
            }

            q->limit = v;
        }
    }

    task->ctx = q;
    task->handler = ngx_http_smartflow_audit_query_thread;
    task->event.handler = ngx_http_smartflow_audit_query_done;
    task->event.data = task;
    task->event.log = r->connection->log;

    if (ngx_http_smartflow_audit_running < NGX_HTTP_SMARTFLOW_AUDIT_RUNNING) {
        if (ngx_http_smartflow_audit_query_post(q) != NGX_OK) {
            ngx_http_smartflow_audit_query_free(q);
            ngx_free(task);
            return ngx_http_smartflow_audit_busy(r);
        }

    } else if (ngx_http_smartflow_audit_nwaiting
               < NGX_HTTP_SMARTFLOW_AUDIT_WAITING)
    {
        if (ngx_http_smartflow_audit_waiting.next == NULL) {
            ngx_queue_init(&ngx_http_smartflow_audit_waiting);
        }

        ngx_queue_insert_tail(&ngx_http_smartflow_audit_waiting, &q->queue);
        ngx_http_smartflow_audit_nwaiting++;

    } else {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "smartflow audit: %ui queries wait for the thread "
                      "pool already, \"%V\" refused",
                      ngx_http_smartflow_audit_nwaiting, &r->uri);

        ngx_http_smartflow_audit_query_free(q);
        ngx_free(task);
        return ngx_http_smartflow_audit_busy(r);
    }

    /* the request waits for the thread, and outlives a client gone */
    r->main->count++;
    r->main->blocked++;
    r->aio = 1;

    ngx_http_smartflow_audit_hold();

    return NGX_DONE;

bad_arg:

    ngx_http_smartflow_audit_query_free(q);
    ngx_free(task);

    return ngx_http_smartflow_audit_refuse(r, NGX_HTTP_BAD_REQUEST,
               "invalid_request_error", "invalid_parameter",
               "Filters: from, to (epoch seconds, to 253402300799), key, "
               "team, model, "
               "status (100-999); paging: after (a record number), limit "
               "(1-1000).");
}


/* to the thread pool, the buffer written first: the thread reads files */
static ngx_int_t
ngx_http_smartflow_audit_query_post(ngx_http_smartflow_audit_query_t *q)
{
    ngx_slab_pool_t                       *shpool;
    ngx_http_smartflow_audit_sh_t         *sh;
    ngx_http_smartflow_audit_main_conf_t  *amcf;

    amcf = ngx_http_get_module_main_conf(q->request,
                                         ngx_http_smartflow_audit_module);

    /*
     * Where the records stand, before the flush writes them: a record
     * from the open segment's first on is in it, the others in the
     * sealed segments before it (found by their seals), and none is
     * numbered past the last
     */
    shpool = (ngx_slab_pool_t *) amcf->zone->shm.addr;
    sh = shpool->data;

    ngx_shmtx_lock(&shpool->mutex);
    q->open = sh->segment;
    q->open_first = sh->seg_count ? sh->seg_first : 0;
    q->last = sh->seq;
    ngx_shmtx_unlock(&shpool->mutex);

    (void) ngx_http_smartflow_audit_flush(amcf, q->request->connection->log);

    if (ngx_thread_task_post(amcf->pool, q->task) != NGX_OK) {
        ngx_log_error(NGX_LOG_ERR, q->request->connection->log, 0,
                      "smartflow audit: \"%V\" could not be queued in the "
                      "thread pool", &q->request->uri);
        return NGX_ERROR;
    }

    ngx_http_smartflow_audit_running++;

    return NGX_OK;
}


/* the queries waiting their turn, as threads come free */
static void
ngx_http_smartflow_audit_query_next(void)
{
    ngx_int_t                          rc;
    ngx_uint_t                         gone;
    ngx_queue_t                       *qu;
    ngx_connection_t                  *c;
    ngx_thread_task_t                 *task;
    ngx_http_request_t                *r;
    ngx_http_smartflow_audit_query_t  *q;

    while (ngx_http_smartflow_audit_nwaiting
           && ngx_http_smartflow_audit_running
              < NGX_HTTP_SMARTFLOW_AUDIT_RUNNING)
    {
        qu = ngx_queue_head(&ngx_http_smartflow_audit_waiting);
        ngx_queue_remove(qu);
        ngx_http_smartflow_audit_nwaiting--;

        q = ngx_queue_data(qu, ngx_http_smartflow_audit_query_t, queue);

        r = q->request;
        c = r->connection;
        task = q->task;

        gone = ngx_http_smartflow_audit_gone(r);

        if (gone) {
            ngx_log_error(NGX_LOG_INFO, c->log, 0,
                          "smartflow audit: the client of \"%V\" is gone "
                          "while it waited, not run", &r->uri);

        } else if (ngx_http_smartflow_audit_query_post(q) == NGX_OK) {
            continue;
        }

        r->main->blocked--;
        r->aio = 0;

        ngx_http_smartflow_audit_query_free(q);
        ngx_free(task);

        rc = gone ? NGX_HTTP_CLIENT_CLOSED_REQUEST
                  : ngx_http_smartflow_audit_busy(r);

        ngx_http_finalize_request(r, rc);
        ngx_http_run_posted_requests(c);
    }

    ngx_http_smartflow_audit_hold();
}


/* a waiting query's client closed its connection (HTTP/1: a peek) */
static ngx_uint_t
ngx_http_smartflow_audit_gone(ngx_http_request_t *r)
{
    u_char             buf;
    ssize_t            n;
    ngx_err_t          err;
    ngx_connection_t  *c;

    c = r->connection;

    if (c->error || c->close) {
        return 1;
    }

#if (NGX_HTTP_V2)
    if (r->stream) {
        return 0;
    }
#endif

    n = recv(c->fd, (char *) &buf, 1, MSG_PEEK);

    if (n == 0) {
        return 1;
    }

    if (n == -1) {
        err = ngx_socket_errno;
        return err != NGX_EAGAIN && err != NGX_EINTR;
    }

    return 0;
}


/*
 * A worker told to quit waits for timers that cannot be cancelled, and
 * for nothing else: while queries run or wait, such a timer is set, so
 * that each one gets its answer before the worker exits.
 */
static void
ngx_http_smartflow_audit_hold(void)
{
    ngx_event_t  *ev;

    ev = &ngx_http_smartflow_audit_holder;

    if (ngx_http_smartflow_audit_running + ngx_http_smartflow_audit_nwaiting
        == 0)
    {
        if (ev->timer_set) {
            ngx_del_timer(ev);
        }

        return;
    }

    if (!ev->timer_set) {
        ngx_http_smartflow_audit_holder_conn.fd = (ngx_socket_t) -1;
        ev->data = &ngx_http_smartflow_audit_holder_conn;
        ev->handler = ngx_http_smartflow_audit_hold_handler;
        ev->log = ngx_cycle->log;
        ev->cancelable = 0;
        ngx_add_timer(ev, 1000);
    }
}


static void
ngx_http_smartflow_audit_hold_handler(ngx_event_t *ev)
{
    ngx_http_smartflow_audit_hold();
}


static ngx_int_t
ngx_http_smartflow_audit_busy(ngx_http_request_t *r)
{
    return ngx_http_smartflow_audit_refuse(r, NGX_HTTP_SERVICE_UNAVAILABLE,
               "api_error", "audit_busy", "Too many audit queries at once; "
               "try again later.");
}


static void
ngx_http_smartflow_audit_query_free(ngx_http_smartflow_audit_query_t *q)
{
    ngx_uint_t  i;

    for (i = 0; i < NGX_HTTP_SMARTFLOW_AUDIT_FILTERS; i++) {
        ngx_free(q->filter[i]);
        q->filter[i] = NULL;
    }

    ngx_free(q->out.data);
    q->out.data = NULL;
}


static void
ngx_http_smartflow_audit_put(ngx_http_smartflow_audit_buf_t *b,
    const void *data, size_t len)
{
    u_char  *p;
    size_t   size;

    if (b->failed) {
        return;
    }

    if (b->len + len > b->size) {
        size = ngx_max(2 * b->size, b->len + len + 4096);
        p = realloc(b->data, size);
        if (p == NULL) {
            b->failed = 1;
            return;
        }

        b->data = p;
        b->size = size;
    }

    ngx_memcpy(b->data + b->len, data, len);
    b->len += len;
}


static void
ngx_http_smartflow_audit_puts(ngx_http_smartflow_audit_buf_t *b,
    const char *s)
{
    ngx_http_smartflow_audit_put(b, s, ngx_strlen(s));
}


static void
ngx_http_smartflow_audit_puthex(ngx_http_smartflow_audit_buf_t *b,
    const u_char *p, size_t len)
{
    char    hex[129];
    size_t  n;

    while (len) {
        n = ngx_min(len, 64);
        sf_audit_hex(p, n, hex);
        ngx_http_smartflow_audit_put(b, hex, 2 * n);
        p += n;
        len -= n;
    }
}


static u_char *
ngx_http_smartflow_audit_slurp(u_char *path, size_t *len)
{
    u_char           *buf;
    ssize_t           n;
    ngx_fd_t          fd;
    ngx_file_info_t   fi;

    fd = ngx_open_file(path, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        return NULL;
    }

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR) {
        (void) ngx_close_file(fd);
        return NULL;
    }

    buf = malloc(ngx_file_size(&fi) + 1);
    if (buf == NULL) {
        (void) ngx_close_file(fd);
        return NULL;
    }

    n = ngx_file_size(&fi) ? read(fd, buf, ngx_file_size(&fi)) : 0;
    (void) ngx_close_file(fd);

    if (n < 0) {
        free(buf);
        return NULL;
    }

    /* an open segment may grow meanwhile: whole lines only */
    while (n > 0 && buf[n - 1] != '\n') {
        n--;
    }

    buf[n] = '\0';
    *len = n;

    return buf;
}


/* not sealed yet: the record, no proof */
static void
ngx_http_smartflow_audit_unsealed(ngx_http_smartflow_audit_query_t *q,
    u_char *line, size_t llen)
{
    q->status = NGX_HTTP_ACCEPTED;
    ngx_http_smartflow_audit_puts(&q->out, "\",\"sealed\":false,\"record\":");
    ngx_http_smartflow_audit_put(&q->out, line, llen);
    ngx_http_smartflow_audit_puts(&q->out, "}\n");
}


/* a number of a seal, "count" or "first": 0 when it has none */
static uint64_t
ngx_http_smartflow_audit_seal_number(u_char *seal, size_t len, char *name)
{
    u_char     *p, *e;
    size_t      n;
    ngx_int_t   v;

    n = ngx_strlen(name);

    p = ngx_strnstr(seal, name, len);
    if (p == NULL) {
        return 0;
    }

    p += n;

    for (e = p; e < seal + len && *e >= '0' && *e <= '9'; e++) {
        /* void */
    }

    v = ngx_atoi(p, e - p);

    return (v == NGX_ERROR) ? 0 : (uint64_t) v;
}


static void
ngx_http_smartflow_audit_proof(ngx_http_smartflow_audit_query_t *q,
    ngx_uint_t seg, u_char *buf, size_t len, u_char *line, size_t llen,
    uint64_t seq)
{
    int                              np, k;
    u_char                          *p, *end, *eol, *seal, *again;
    size_t                           slen, alen;
    uint64_t                         n, i, index, count;
    unsigned char                  (*leaves)[32];
    ngx_http_smartflow_audit_buf_t  *b;
    u_char                           path[NGX_MAX_PATH];
    unsigned char                    proof[SF_MERKLE_MAX_LEVEL][32];
    unsigned char                    root[32], h[32];
    char                             num[64];

    b = &q->out;
    again = NULL;

    ngx_snprintf(path, NGX_MAX_PATH, "%s/" NGX_SMARTFLOW_AUDIT_SEAL "%Z",
                 q->dir, seg);
    seal = ngx_http_smartflow_audit_slurp(path, &slen);

    ngx_snprintf((u_char *) num, sizeof(num), "%uL,\"segment\":%ui%Z",
                 seq, seg);
    ngx_http_smartflow_audit_puts(b, "{\"seq\":");
    ngx_http_smartflow_audit_puts(b, num);

    (void) EVP_Digest(line, llen, h, NULL, sf_merkle_sha256(), NULL);
    ngx_http_smartflow_audit_puts(b, ",\"record_sha256\":\"");
    ngx_http_smartflow_audit_puthex(b, h, 32);

    if (seal == NULL || slen == 0) {
        ngx_http_smartflow_audit_unsealed(q, line, llen);
        free(seal);
        return;
    }

    n = ngx_http_smartflow_audit_lines(buf, len);

    /*
     * The segment was read before its seal: when the seal counts more
     * records than were read then, the last ones were written in between,
     * and the segment is read again (it only grows, so the record stays
     * where it was).  The proof is of the records the seal counts.
     */
    count = ngx_http_smartflow_audit_seal_number(seal, slen,
                                                  "\"count\":");

    if (n < count) {
        ngx_snprintf(path, NGX_MAX_PATH, "%s/" NGX_SMARTFLOW_AUDIT_SEGMENT
                     "%Z", q->dir, seg);
        again = ngx_http_smartflow_audit_slurp(path, &alen);

        if (again && alen >= len) {
            line = again + (line - buf);
            buf = again;
            len = alen;
            n = ngx_http_smartflow_audit_lines(buf, len);
        }
    }

    if (count && n > count) {
        n = count;
    }

    leaves = malloc(n * 32);
    if (leaves == NULL) {
        b->failed = 1;
        free(again);
        free(seal);
        return;
    }

    index = n;
    p = buf;
    end = buf + len;

    for (i = 0; i < n; i++) {
        eol = ngx_strlchr(p, end, '\n');
        sf_merkle_leaf(p, eol - p, leaves[i]);

        if (p == line) {
            index = i;
        }

        p = eol + 1;
    }

    if (index == n) {
        /* after the records the seal counts */
        ngx_http_smartflow_audit_unsealed(q, line, llen);
        free(leaves);
        free(again);
        free(seal);
        return;
    }

    np = sf_merkle_inclusion((const unsigned char (*)[32]) leaves, n, index,
                             proof);
    sf_merkle_root((const unsigned char (*)[32]) leaves, n, root);

    ngx_snprintf((u_char *) num, sizeof(num),
                 "\",\"sealed\":true,\"index\":%uL,\"size\":%uL%Z",
                 index, n);
    ngx_http_smartflow_audit_puts(b, num);

    ngx_http_smartflow_audit_puts(b, ",\"leaf_hash\":\"");
    ngx_http_smartflow_audit_puthex(b, leaves[index], 32);
    ngx_http_smartflow_audit_puts(b, "\",\"proof\":[");

    for (k = 0; k < np; k++) {
        ngx_http_smartflow_audit_puts(b, k ? ",\"" : "\"");
        ngx_http_smartflow_audit_puthex(b, proof[k], 32);
        ngx_http_smartflow_audit_puts(b, "\"");
    }

    ngx_http_smartflow_audit_puts(b, "],\"segment_root\":\"");
    ngx_http_smartflow_audit_puthex(b, root, 32);

    /* the record's bytes, hex: the leaf is hashed from exactly these */
    ngx_http_smartflow_audit_puts(b, "\",\"record_hex\":\"");
    ngx_http_smartflow_audit_puthex(b, line, llen);
    ngx_http_smartflow_audit_puts(b, "\",\"seal\":");
    ngx_http_smartflow_audit_put(b, seal, slen - 1);
    ngx_http_smartflow_audit_puts(b, ",\"record\":");
    ngx_http_smartflow_audit_put(b, line, llen);
    ngx_http_smartflow_audit_puts(b, "}\n");

    q->status = NGX_HTTP_OK;

    free(leaves);
    free(again);
    free(seal);
}


/*
 * A proof for a record whose segment was shipped and removed, from the
 * segment's leaves file (ngx_http_smartflow_audit_s3.c) and its seal:
 * the record's leaf hash and its path to the sealed segment root; the
 * record itself is in the bucket.  1 when the record is in this segment.
 */
static ngx_uint_t
ngx_http_smartflow_audit_proof_removed(ngx_http_smartflow_audit_query_t *q,
    ngx_uint_t seg)
{
    int                              np, k;
    u_char                          *buf, *seal, *p, *end, *eol, *sp, *id;
    size_t                           len, slen, idlen;
    uint64_t                         n, i, index, seq, found;
    unsigned char                  (*leaves)[32];
    ngx_http_smartflow_audit_buf_t  *b;
    u_char                           path[NGX_MAX_PATH];
    unsigned char                    proof[SF_MERKLE_MAX_LEVEL][32];
    unsigned char                    root[32];
    char                             num[256];

    ngx_snprintf(path, NGX_MAX_PATH, "%s/segment-%08ui.leaves%Z", q->dir,
                 seg);

    buf = ngx_http_smartflow_audit_slurp(path, &len);
    if (buf == NULL) {
        return 0;
    }

    n = ngx_http_smartflow_audit_lines(buf, len);

    leaves = malloc(n * 32 + 1);
    if (leaves == NULL) {
        free(buf);
        return 0;
    }

    /* "SEQ ID LEAF" lines */
    index = 0;
    found = 0;
    seq = 0;
    end = buf + len;
    i = 0;

    for (p = buf; p < end && i < n; p = eol + 1, i++) {
        eol = ngx_strlchr(p, end, '\n');
        sp = ngx_strlchr(p, eol, ' ');

        if (eol == NULL || sp == NULL || eol - sp < 66
            || sf_audit_unhex((char *) eol - 64, 64, leaves[i], 32) != 32)
        {
            free(leaves);
            free(buf);
            return 0;
        }

        id = sp + 1;
        idlen = eol - 65 - id;

        if (!found
            && ((q->seq
                 && (uint64_t) ngx_atoof(p, sp - p) == q->seq)
                || (q->seq == 0 && idlen == ngx_strlen(q->id)
                    && ngx_strncmp(id, q->id, idlen) == 0)))
        {
            found = 1;
            index = i;
            seq = ngx_atoof(p, sp - p);
        }
    }

    if (!found || i != n) {
        free(leaves);
        free(buf);
        return 0;
    }

    ngx_snprintf(path, NGX_MAX_PATH, "%s/" NGX_SMARTFLOW_AUDIT_SEAL "%Z",
                 q->dir, seg);
    seal = ngx_http_smartflow_audit_slurp(path, &slen);

    if (seal == NULL || slen == 0) {
        free(seal);
        free(leaves);
        free(buf);
        return 0;
    }

    np = sf_merkle_inclusion((const unsigned char (*)[32]) leaves, n, index,
                             proof);
    sf_merkle_root((const unsigned char (*)[32]) leaves, n, root);

    b = &q->out;

    ngx_snprintf((u_char *) num, sizeof(num),
                 "{\"seq\":%uL,\"segment\":%ui,\"sealed\":true,"
                 "\"segment_removed\":true,\"index\":%uL,\"size\":%uL%Z",
                 seq, seg, index, n);
    ngx_http_smartflow_audit_puts(b, num);

    ngx_http_smartflow_audit_puts(b, ",\"leaf_hash\":\"");
    ngx_http_smartflow_audit_puthex(b, leaves[index], 32);
    ngx_http_smartflow_audit_puts(b, "\",\"proof\":[");

    for (k = 0; k < np; k++) {
        ngx_http_smartflow_audit_puts(b, k ? ",\"" : "\"");
        ngx_http_smartflow_audit_puthex(b, proof[k], 32);
        ngx_http_smartflow_audit_puts(b, "\"");
    }

    ngx_http_smartflow_audit_puts(b, "],\"segment_root\":\"");
    ngx_http_smartflow_audit_puthex(b, root, 32);
    ngx_http_smartflow_audit_puts(b, "\",\"seal\":");
    ngx_http_smartflow_audit_put(b, seal, slen - 1);
    ngx_http_smartflow_audit_puts(b, ",\"record\":null}\n");

    q->status = NGX_HTTP_OK;

    free(seal);
    free(leaves);
    free(buf);

    return 1;
}


/*
 * The segments the receipts index (ngx_http_smartflow_audit_index())
 * names for a receipt id, *n of them; *indexed: the last segment the
 * index vouches for, whose ids not named are not in the folder, 0 when it
 * vouches for none (no "indexed", or one naming a segment the folder
 * lacks, or the id's file shorter than it counts, or not a plain file,
 * or its entries not summing to what "indexed" keeps: then "damaged" is
 * left for the next seal, which makes the index again).
 */
static void
ngx_http_smartflow_audit_index_find(u_char *dir, u_char *id,
    ngx_uint_t *segs, ngx_uint_t *n, ngx_uint_t *indexed, ngx_log_t *log)
{
    int              fd;
    u_char          *p, *last;
    off_t            off, size;
    ssize_t          got;
    ngx_int_t        done;
    uint64_t         have;
    ngx_uint_t       seg, i, max;
    struct stat      st;
    ngx_file_info_t  fi;
    off_t            count[256], kept;
    uint64_t         sum[256];
    u_char           key[16], path[NGX_MAX_PATH];
    u_char           buf[20 * 512];

    max = *n;
    *n = 0;
    *indexed = 0;

    if (sf_audit_unhex((char *) id, 32, key, 16) != 16) {
        return;
    }

    done = ngx_http_smartflow_audit_index_read(dir, count, sum);
    if (done == NGX_ERROR) {
        return;
    }

    /*
     * A number past the folder's segments is not the index's own (the
     * next seal makes the index again): trusted, it would hide the ids
     * of the segments after the last one indexed, the open one's
     */
    if (done > 0) {
        ngx_snprintf(path, NGX_MAX_PATH, "%s/" NGX_SMARTFLOW_AUDIT_SEAL "%Z",
                     dir, (ngx_uint_t) done);

        if (ngx_file_info(path, &fi) == NGX_FILE_ERROR) {
            ngx_snprintf(path, NGX_MAX_PATH, "%s/"
                         NGX_SMARTFLOW_AUDIT_SEGMENT "%Z", dir,
                         (ngx_uint_t) done);

            if (ngx_file_info(path, &fi) == NGX_FILE_ERROR) {
                ngx_log_error(NGX_LOG_WARN, log, 0,
                              "smartflow audit: the receipts index says "
                              "segment %i is indexed, which the folder "
                              "lacks; the proof reads every segment", done);
                return;
            }
        }
    }

    ngx_snprintf(path, NGX_MAX_PATH, "%s/receipts/%*s%Z", dir, 2, id);

    fd = open((char *) path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd == -1) {
        if (errno == ENOENT && count[key[0]] == 0) {
            *indexed = done;
        }

        return;
    }

    if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)
        || st.st_size < count[key[0]] * 20)
    {
        (void) close(fd);
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, log, 0,
                   "smartflow audit proof reads %s", path);

    size = st.st_size - st.st_size % 20;
    kept = count[key[0]] * 20;
    have = 0;

    for (off = 0; off < size; off += got) {
        got = pread(fd, buf, ngx_min((off_t) sizeof(buf), size - off), off);
        if (got <= 0) {
            break;
        }

        got -= got % 20;
        if (got == 0) {
            break;
        }

        last = buf + got;

        /* the entries "indexed" counts, not those of an indexing going on */
        if (off < kept) {
            have = ngx_http_smartflow_audit_index_sum(buf,
                       (size_t) (ngx_min(off + got, kept) - off) / 20, have);
        }

        for (p = buf; p < last; p += 20) {
            if (ngx_memcmp(p, key, 16) != 0) {
                continue;
            }

            seg = ((ngx_uint_t) p[16] << 24) | (p[17] << 16) | (p[18] << 8)
                  | p[19];

            for (i = 0; i < *n && segs[i] != seg; i++) { /* void */ }

            if (seg && i == *n && *n < max) {
                segs[(*n)++] = seg;
            }
        }
    }

    (void) close(fd);

    if (off < size) {
        return;
    }

    if (have != sum[key[0]]) {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "smartflow audit: the receipts index file %s does not "
                      "match its sum in \"indexed\"; the proof reads every "
                      "segment, and the next seal makes the index again",
                      path);

        ngx_snprintf(path, NGX_MAX_PATH, "%s/receipts/damaged%Z", dir);

        fd = open((char *) path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW
                                 | O_NONBLOCK, 0644);
        if (fd != -1) {
            (void) close(fd);
        }

        return;
    }

    *indexed = done;
}


/*
 * The proof of q's record if it is in segment seg: 1 when it is (the
 * answer is made), 0 when it is not, -1 when there is no such segment
 */
static ngx_int_t
ngx_http_smartflow_audit_proof_in(ngx_http_smartflow_audit_query_t *q,
    ngx_uint_t seg, u_char *needle, ngx_log_t *log)
{
    u_char           *buf, *p, *end, *eol;
    size_t            len;
    const char       *why;
    sf_audit_tail_t   t;
    ngx_file_info_t   fi;
    u_char            path[NGX_MAX_PATH];

    ngx_snprintf(path, NGX_MAX_PATH, "%s/" NGX_SMARTFLOW_AUDIT_SEGMENT "%Z",
                 q->dir, seg);

    buf = ngx_http_smartflow_audit_slurp(path, &len);

    if (buf == NULL) {
        /* shipped to S3 and removed: its seal stays */
        ngx_snprintf(path, NGX_MAX_PATH, "%s/" NGX_SMARTFLOW_AUDIT_SEAL "%Z",
                     q->dir, seg);

        if (ngx_file_info(path, &fi) == NGX_FILE_ERROR) {
            return -1;
        }

        return ngx_http_smartflow_audit_proof_removed(q, seg);
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, log, 0,
                   "smartflow audit proof reads %s", path);

    p = buf;
    end = buf + len;

    while (p < end) {
        eol = ngx_strlchr(p, end, '\n');
        *eol = '\0';

        if (sf_audit_tail_parse((char *) p, eol - p, &t, &why) == 0
            && ((q->seq && t.seq == q->seq)
                || (q->seq == 0 && ngx_strstr(p, needle) != NULL)))
        {
            *eol = '\n';
            ngx_http_smartflow_audit_proof(q, seg, buf, len, p, eol - p,
                                           t.seq);
            free(buf);
            return 1;
        }

        p = eol + 1;
    }

    free(buf);

    return 0;
}


/*
 * The segment that holds record seq, if the folder is as the seals say:
 * the open one when the record is numbered from its first on, else the
 * sealed one whose "first" and "count" take in seq, found by halving
 * over the seals (segments hold consecutive numbers, in order), so a
 * few seals are read however long the trail.  0 when a seal on the way
 * is missing (being sealed) or holds no numbers.  Nothing here is
 * trusted: the caller reads the record's number in the segment itself.
 */
static ngx_uint_t
ngx_http_smartflow_audit_seq_segment(ngx_http_smartflow_audit_query_t *q,
    uint64_t seq, ngx_log_t *log)
{
    u_char           *seal;
    size_t            slen;
    uint64_t          first, count;
    ngx_uint_t        lo, hi, mid;
    ngx_file_info_t   fi;
    u_char            path[NGX_MAX_PATH];

    if (q->open == 0) {
        return 0;
    }

    if (q->open_first && seq >= q->open_first) {
        return q->open;
    }

    lo = 1;
    hi = q->open - 1;

    while (lo <= hi) {
        mid = lo + (hi - lo) / 2;

        ngx_snprintf(path, NGX_MAX_PATH, "%s/" NGX_SMARTFLOW_AUDIT_SEAL "%Z",
                     q->dir, mid);

        /* a plain file only: opening a FIFO would hold the thread */
        if (ngx_file_info(path, &fi) == NGX_FILE_ERROR
            || !ngx_is_file(&fi))
        {
            return 0;
        }

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, log, 0,
                       "smartflow audit query reads %s", path);

        seal = ngx_http_smartflow_audit_slurp(path, &slen);
        if (seal == NULL) {
            return 0;
        }

        first = ngx_http_smartflow_audit_seal_number(seal, slen,
                                                     "\"first\":");
        count = ngx_http_smartflow_audit_seal_number(seal, slen,
                                                     "\"count\":");
        free(seal);

        if (first == 0 || count == 0) {
            return 0;
        }

        if (seq < first) {
            hi = mid - 1;

        } else if (seq - first >= count) {
            lo = mid + 1;

        } else {
            return mid;
        }
    }

    return 0;
}


/*
 * A receipt id: the segment the index names, else the segments the index
 * does not hold yet (the open one); a record number: the segment the
 * seals lead to; else, or when that segment does not hold it, every
 * segment
 */
static void
ngx_http_smartflow_audit_proof_find(ngx_http_smartflow_audit_query_t *q,
    ngx_log_t *log)
{
    ngx_uint_t  seg, start, indexed, i, n;
    ngx_uint_t  segs[8];
    u_char      needle[64];

    start = 1;
    needle[0] = '\0';

    if (q->seq) {
        if (q->seq > q->last) {
            /* not numbered yet when asked */
            return;
        }

        seg = ngx_http_smartflow_audit_seq_segment(q, q->seq, log);

        if (seg) {
            if (ngx_http_smartflow_audit_proof_in(q, seg, needle, log)
                == 1)
            {
                return;
            }

            ngx_log_error(NGX_LOG_WARN, log, 0,
                          "smartflow audit: the seals place record %uL in "
                          "segment %ui, which does not hold it; the proof "
                          "reads every segment", q->seq, seg);
        }

    } else {
        ngx_sprintf(needle, "\"request_id\":\"%s\"%Z", q->id);

        n = sizeof(segs) / sizeof(segs[0]);
        ngx_http_smartflow_audit_index_find(q->dir, q->id, segs, &n,
                                            &indexed, log);

        for (i = 0; i < n; i++) {
            if (ngx_http_smartflow_audit_proof_in(q, segs[i], needle, log)
                == 1)
            {
                return;
            }
        }

        if (n) {
            /* named where it is not: the index is not to be trusted */
            ngx_log_error(NGX_LOG_WARN, log, 0,
                          "smartflow audit: the receipts index names "
                          "segment %ui for %s, which does not hold it; "
                          "the proof reads every segment", segs[0], q->id);
            indexed = 0;
        }

        start = indexed + 1;
    }

    for (seg = start; /* void */; seg++) {
        if (ngx_http_smartflow_audit_proof_in(q, seg, needle, log) != 0) {
            return;
        }
    }
}


static void
ngx_http_smartflow_audit_query_thread(void *data, ngx_log_t *log)
{
    ngx_http_smartflow_audit_query_t *q = data;

    u_char                          *buf, *p, *end, *eol;
    size_t                           len;
    uint64_t                         found, last_seq;
    ngx_uint_t                       seg, start, i, match, more, check;
    const char                      *why;
    sf_audit_tail_t                  t;
    ngx_file_info_t                  fi;
    u_char                           path[NGX_MAX_PATH];
    char                             num[64];

    q->status = NGX_HTTP_NOT_FOUND;

    if (q->mode == NGX_HTTP_SMARTFLOW_AUDIT_PROOF) {
        ngx_http_smartflow_audit_proof_find(q, log);
        return;
    }

    found = 0;
    last_seq = 0;
    more = 0;
    q->status = NGX_HTTP_OK;
    ngx_http_smartflow_audit_puts(&q->out, "{\"object\":\"list\",\"data\":[");

    /*
     * A page after record N starts in the segment the seals place N + 1
     * in, checked there: its first record must not come after N + 1,
     * else the seals are wrong and the folder is read from the start, as
     * it is when that segment is gone (shipped and removed)
     */
    seg = 1;
    check = 0;

    if (q->after >= q->last && q->after) {
        /* none numbered after N when asked: no segment to read */
        seg = 0;

    } else if (q->after) {
        start = ngx_http_smartflow_audit_seq_segment(q, q->after + 1, log);

        if (start) {
            seg = start;
            check = (start > 1);
        }
    }

    for ( /* void */ ; seg; seg++) {
        ngx_snprintf(path, NGX_MAX_PATH, "%s/" NGX_SMARTFLOW_AUDIT_SEGMENT
                     "%Z", q->dir, seg);

        buf = ngx_http_smartflow_audit_slurp(path, &len);

        if (buf == NULL) {
            if (check) {
                /*
                 * No record to check the seals by: a segment before it
                 * may have stayed (a hole) and hold records after N, so
                 * the folder is read from the start
                 */
                check = 0;
                seg = 0;
                continue;
            }

            /* shipped to S3 and removed: its seal stays */
            ngx_snprintf(path, NGX_MAX_PATH, "%s/" NGX_SMARTFLOW_AUDIT_SEAL
                         "%Z", q->dir, seg);

            if (ngx_file_info(path, &fi) != NGX_FILE_ERROR) {
                continue;
            }

            break;
        }

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, log, 0,
                       "smartflow audit query reads %s", path);

        p = buf;
        end = buf + len;

        while (p < end) {
            eol = ngx_strlchr(p, end, '\n');
            *eol = '\0';

            if (sf_audit_tail_parse((char *) p, eol - p, &t, &why) != 0) {
                p = eol + 1;
                continue;
            }

            if (check) {
                check = 0;

                if (t.seq > q->after + 1) {
                    ngx_log_error(NGX_LOG_WARN, log, 0,
                                  "smartflow audit: the seals place record "
                                  "%uL in segment %ui, which starts at "
                                  "%uL; the query reads every segment",
                                  q->after + 1, seg, t.seq);
                    seg = 0;
                    break;
                }
            }

            match = t.seq > q->after && t.ts >= q->from && t.ts <= q->to;

            for (i = 0; match && i < NGX_HTTP_SMARTFLOW_AUDIT_FILTERS; i++) {
                if (q->filter[i]
                    && ngx_strstr(p, q->filter[i]) == NULL)
                {
                    match = 0;
                }
            }

            if (match) {
                if (found == q->limit) {
                    more = 1;
                    break;
                }

                if (found++) {
                    ngx_http_smartflow_audit_puts(&q->out, ",");
                }

                ngx_http_smartflow_audit_put(&q->out, p, eol - p);
                last_seq = t.seq;
            }

            p = eol + 1;
        }

        free(buf);

        if (more) {
            break;
        }
    }

    ngx_snprintf((u_char *) num, sizeof(num),
                 "],\"has_more\":%s,\"next_after\":%uL}\n%Z",
                 more ? "true" : "false", last_seq);
    ngx_http_smartflow_audit_puts(&q->out, num);
}


static void
ngx_http_smartflow_audit_query_done(ngx_event_t *ev)
{
    u_char                            *copy;
    ngx_int_t                          rc;
    ngx_connection_t                  *c;
    ngx_thread_task_t                 *task;
    ngx_http_request_t                *r;
    ngx_http_smartflow_audit_query_t  *q;

    task = ev->data;
    q = task->ctx;
    r = q->request;
    c = r->connection;

    r->main->blocked--;
    r->aio = 0;

    ngx_http_smartflow_audit_running--;

    if (q->out.failed) {
        ngx_log_error(NGX_LOG_ERR, c->log, 0,
                      "smartflow audit: no memory for the answer to \"%V\"",
                      &r->uri);

        rc = ngx_http_smartflow_audit_refuse(r,
                 NGX_HTTP_INTERNAL_SERVER_ERROR, "api_error", "no_memory",
                 "The answer could not be built.");

    } else if (q->status == NGX_HTTP_NOT_FOUND) {
        rc = ngx_http_smartflow_audit_refuse(r, NGX_HTTP_NOT_FOUND,
                 "invalid_request_error", "record_not_found",
                 "No such record.");

    } else {
        /* the answer lives in the request pool from here */
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        copy = ngx_pnalloc(r->pool, q->out.len);

        if (copy) {
            ngx_memcpy(copy, q->out.data, q->out.len);
            rc = ngx_http_smartflow_audit_reply(r, q->status,
                                                "application/json", copy,
                                                q->out.len);
        }
    }

    ngx_http_smartflow_audit_query_free(q);
    ngx_free(task);

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);

    ngx_http_smartflow_audit_query_next();
}
