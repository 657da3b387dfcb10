/*
 * Phase 3 of the lookup: the request's fingerprint (the SHA-256 of its
 * canonical, normalised form, the key of phase 1) looked up in Redis, so
 * that every node shares the exact answers any of them stored.  The
 * connection is the proxy module's (smartflow_redis), asynchronous on
 * nginx's event loop: the stage waits for the answer and the pipeline
 * resumes when it comes.  A hit is kept in the local zone as well, until
 * the time it expires in Redis; an answer stored by this node goes to
 * Redis too, with the entry's TTL.  While Redis is unreachable phase 3 is
 * skipped at once, with one error_log line per outage.
 *
 * In Redis, "smartflow:cache:TAG:HEX" holds "sf1 EXPIRE PROMPT COMPLETION
 * FINISH\n" and the answer's text; TAG is the partition's own (the first 8
 * bytes of its SHA-256, in hex), so that DELETE /api/metacache?tenant=
 * finds a tenant's entries with SCAN MATCH "smartflow:cache:TAG:*" and
 * UNLINKs them, a batch at a time, while the worker goes on.
 */

#include "ngx_http_smartflow_cache.h"
#include "ngx_smartflow_redis.h"


#define NGX_SMARTFLOW_CACHE_RKEY  "smartflow:cache:"
#define NGX_SMARTFLOW_CACHE_RTAG  8
#define NGX_SMARTFLOW_CACHE_RKEY_LEN                                        \
    (sizeof(NGX_SMARTFLOW_CACHE_RKEY) - 1 + 2 * NGX_SMARTFLOW_CACHE_RTAG + 1 \
     + 2 * NGX_SMARTFLOW_CACHE_FP)
#define NGX_SMARTFLOW_CACHE_SCAN_COUNT  "1000"
#define NGX_SMARTFLOW_CACHE_RFLUSHES    "smartflow:cache-flushes:"
#define NGX_SMARTFLOW_CACHE_POLL        1000    /* ms */


typedef struct ngx_http_smartflow_cache_ticket_s
    ngx_http_smartflow_cache_ticket_t;

/* outlives its request if it has to: the request's pool cleanup clears r */
struct ngx_http_smartflow_cache_ticket_s {
    ngx_http_request_t                 *r;
    ngx_http_smartflow_cache_req_t     *rq;
    ngx_http_smartflow_cache_ticket_t  *next;
};


/* a flush of Redis, while its request waits; outlives the request too */
typedef struct {
    ngx_http_request_t          *r;         /* NULL: it went */
    ngx_pool_cleanup_t          *cln;
    ngx_smartflow_cache_zone_t  *zone;
    ngx_uint_t                   local;     /* flushed from the zone */
    ngx_uint_t                   flushed;   /* UNLINKed in Redis */
    ngx_uint_t                   pending;   /* commands unanswered */
    ngx_uint_t                   pattern;   /* being scanned */
    ngx_uint_t                   npatterns;
    char                        *why;       /* NULL: no failure */
    ngx_msec_t                   start;
    ngx_msec_t                   timeout;   /* of the whole walk */
    ngx_uint_t                   rounds;    /* SCANs answered */
    uint64_t                     cursor;    /* the last one sent */
    size_t                       lens[2];
    u_char                       patterns[2][NGX_SMARTFLOW_CACHE_RKEY_LEN];
    u_char                       error[128];
    ngx_str_t                    tenant;    /* empty: all */
    unsigned                     scanned:1;
    unsigned                     timed_out:1;
} ngx_http_smartflow_cache_flush_t;


static void ngx_http_smartflow_cache_redis_got(ngx_smartflow_redis_t *rd,
    redisReply *reply, void *data);
static void ngx_http_smartflow_cache_redis_stored(ngx_smartflow_redis_t *rd,
    redisReply *reply, void *data);
static void ngx_http_smartflow_cache_redis_deleted(ngx_smartflow_redis_t *rd,
    redisReply *reply, void *data);
static ngx_smartflow_redis_t *ngx_http_smartflow_cache_redis_ready(
    ngx_http_request_t *r, ngx_http_smartflow_cache_req_t *rq);
static void ngx_http_smartflow_cache_redis_send(ngx_http_request_t *r,
    ngx_http_smartflow_cache_req_t *rq, ngx_smartflow_redis_t *rd,
    ngx_smartflow_redis_pt handler, int argc, const char **argv,
    size_t *len);
static void ngx_http_smartflow_cache_redis_written(
    ngx_smartflow_cache_zone_t *z, ngx_smartflow_redis_t *rd,
    redisReply *reply, char *cmd);
static ngx_int_t ngx_http_smartflow_cache_redis_parse(ngx_pool_t *pool,
    redisReply *reply, size_t max, ngx_smartflow_cache_found_t *f,
    time_t *expire);
static void ngx_http_smartflow_cache_redis_cleanup(void *data);
static void ngx_http_smartflow_cache_redis_down(ngx_smartflow_cache_zone_t *z,
    ngx_smartflow_redis_t *rd, ngx_log_t *log, const char *why);
static void ngx_http_smartflow_cache_redis_up(ngx_smartflow_cache_zone_t *z,
    ngx_smartflow_redis_t *rd, ngx_log_t *log);
static void ngx_http_smartflow_cache_redis_refused(
    ngx_smartflow_cache_zone_t *z, ngx_smartflow_redis_t *rd, ngx_log_t *log,
    char *cmd, redisReply *reply);
static size_t ngx_http_smartflow_cache_redis_key(u_char *buf,
    ngx_str_t *partition, u_char *fp);
static u_char *ngx_http_smartflow_cache_redis_tag(u_char *p,
    ngx_str_t *partition);
static ngx_int_t ngx_http_smartflow_cache_redis_scan(ngx_smartflow_redis_t *rd,
    ngx_http_smartflow_cache_flush_t *fl, uint64_t cursor);
static void ngx_http_smartflow_cache_redis_scanned(ngx_smartflow_redis_t *rd,
    redisReply *reply, void *data);
static ngx_int_t ngx_http_smartflow_cache_redis_cursor(redisReply *cursor,
    uint64_t *value);
static ngx_int_t ngx_http_smartflow_cache_redis_unlink(
    ngx_smartflow_redis_t *rd, ngx_http_smartflow_cache_flush_t *fl,
    redisReply *keys);
static void ngx_http_smartflow_cache_redis_unlinked(ngx_smartflow_redis_t *rd,
    redisReply *reply, void *data);
static ngx_uint_t ngx_http_smartflow_cache_redis_failed(
    ngx_http_smartflow_cache_flush_t *fl, redisReply *reply);
static void ngx_http_smartflow_cache_redis_flushed(ngx_smartflow_redis_t *rd,
    ngx_http_smartflow_cache_flush_t *fl);
static void ngx_http_smartflow_cache_redis_flush_cleanup(void *data);
static void ngx_http_smartflow_cache_redis_tell(ngx_smartflow_redis_t *rd,
    ngx_http_smartflow_cache_flush_t *fl);
static void ngx_http_smartflow_cache_redis_told(ngx_smartflow_redis_t *rd,
    redisReply *reply, void *data);
static void ngx_http_smartflow_cache_redis_poll(ngx_event_t *ev);
static void ngx_http_smartflow_cache_redis_polled(ngx_smartflow_redis_t *rd,
    redisReply *reply, void *data);
static void ngx_http_smartflow_cache_redis_apply(
    ngx_smartflow_cache_zone_t *z, ngx_log_t *log, redisReply *entry);


static ngx_http_smartflow_cache_ticket_t  *ngx_http_smartflow_cache_tickets;

/* the poll of the flushes other nodes told, in each worker */
static ngx_event_t                   ngx_http_smartflow_cache_watch_ev;
static ngx_connection_t              ngx_http_smartflow_cache_watch_conn;
static ngx_array_t                  *ngx_http_smartflow_cache_watched;


/*
 * Asks Redis for the request's fingerprint: NGX_AGAIN while it waits
 * (the pipeline runs the stage again with the answer), NGX_DECLINED when
 * phase 3 is off or Redis cannot be asked now.
 */
ngx_int_t
ngx_http_smartflow_cache_redis_get(ngx_http_request_t *r,
    ngx_http_smartflow_cache_req_t *rq, struct timeval *start)
{
    size_t                              len[2];
    ngx_pool_cleanup_t                 *cln;
    ngx_smartflow_redis_t              *rd;
    ngx_http_smartflow_cache_ticket_t  *t;
    const char                         *argv[2];
    u_char                              key[NGX_SMARTFLOW_CACHE_RKEY_LEN];

    rq->redis_done = 1;

    rd = rq->redis ? ngx_smartflow_redis_shared() : NULL;

    if (rd == NULL) {
        return NGX_DECLINED;
    }

    if (!ngx_smartflow_redis_up(rd)) {
        ngx_http_smartflow_cache_redis_down(rq->zone, rd,
                                            r->connection->log,
                                            "is unreachable");
        return NGX_DECLINED;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_DECLINED;
    }

    t = ngx_http_smartflow_cache_tickets;

    if (t) {
        ngx_http_smartflow_cache_tickets = t->next;

    } else {
        t = ngx_alloc(sizeof(ngx_http_smartflow_cache_ticket_t),
                      r->connection->log);
        if (t == NULL) {
            return NGX_DECLINED;
        }
    }

    t->r = r;
    t->rq = rq;
    t->next = NULL;

    argv[0] = "GET";
    len[0] = 3;
    argv[1] = (char *) key;
    len[1] = ngx_http_smartflow_cache_redis_key(key,
                                                &rq->item.partition,
                                                rq->item.fp);

    if (ngx_smartflow_redis_command(rd, ngx_http_smartflow_cache_redis_got,
                                    t, 2, argv, len)
        != NGX_OK)
    {
        t->next = ngx_http_smartflow_cache_tickets;
        ngx_http_smartflow_cache_tickets = t;

        ngx_http_smartflow_cache_redis_down(rq->zone, rd,
                                            r->connection->log,
                                            "refused the command");
        return NGX_DECLINED;
    }

    cln->handler = ngx_http_smartflow_cache_redis_cleanup;
    cln->data = rq;

    rq->flushes = rq->zone->sh->flushes;
    rq->ticket = t;
    rq->start = *start;
    rq->redis_done = 0;

    r->main->count++;
    r->write_event_handler = ngx_http_request_empty_handler;

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "smartflow cache phase 3: asking redis");

    return NGX_AGAIN;
}


static void
ngx_http_smartflow_cache_redis_got(ngx_smartflow_redis_t *rd,
    redisReply *reply, void *data)
{
    ngx_http_smartflow_cache_ticket_t *t = data;

    time_t                           expire;
    ngx_connection_t                *c;
    ngx_http_request_t              *r;
    ngx_http_smartflow_ctx_t        *ctx;
    ngx_http_smartflow_cache_req_t  *rq;

    r = t->r;
    rq = t->rq;

    t->next = ngx_http_smartflow_cache_tickets;
    ngx_http_smartflow_cache_tickets = t;

    if (r == NULL) {
        /* the request went while Redis was asked */
        return;
    }

    rq->ticket = NULL;
    rq->redis_done = 1;
    c = r->connection;

    if (reply == NULL) {
        ngx_http_smartflow_cache_redis_down(rq->zone, rd, c->log,
                                            "did not answer");

    } else if (reply->type == REDIS_REPLY_ERROR) {
        ngx_http_smartflow_cache_redis_refused(rq->zone, rd, c->log, "GET",
                                               reply);

    } else {
        ngx_http_smartflow_cache_redis_up(rq->zone, rd, c->log);

        if (reply->type == REDIS_REPLY_STRING) {
            if (ngx_http_smartflow_cache_redis_parse(r->pool, reply,
                                                     rq->max_size,
                                                     &rq->shared, &expire)
                == NGX_OK)
            {
                if (expire > ngx_time()) {
                    ngx_memcpy(rq->shared.fp, rq->item.fp,
                               NGX_SMARTFLOW_CACHE_FP);
                    rq->shared.similarity = 0;
                    rq->item.ttl = expire - ngx_time();
                    rq->redis_hit = 1;
                }

            } else {
                ngx_log_error(NGX_LOG_WARN, c->log, 0,
                              "smartflow cache: redis %V holds a damaged "
                              "entry; phase 3 ignores it", &rd->name);
            }
        }
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, c->log, 0,
                   "smartflow cache phase 3: %s",
                   rq->redis_hit ? "hit" : "miss");

    r->main->count--;

    /* the cache stage runs again and finds phase 3's answer */
    ctx = ngx_http_smartflow_get_ctx(r);
    ctx->stage--;

    ngx_http_smartflow_pipeline_resume(r);
    ngx_http_run_posted_requests(c);
}


/*
 * After the wait: a hit is kept in the local zone, so that the next
 * request is a phase 1 hit here, and handed to the stage to be served.
 * A flush that began while Redis was asked (or is still going on, its
 * UNLINKs not all done) may have taken the entry away after Redis gave
 * it: then the hit is served, as asked before the flush, but not kept.
 */
ngx_int_t
ngx_http_smartflow_cache_redis_found(ngx_http_request_t *r,
    ngx_http_smartflow_cache_req_t *rq, ngx_smartflow_cache_found_t *f)
{
    ngx_smartflow_cache_shctx_t  *sh;

    if (!rq->redis_hit) {
        return NGX_DECLINED;
    }

    *f = rq->shared;

    sh = rq->zone->sh;

    if (sh->flushing || sh->flushes != rq->flushes) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "smartflow cache phase 3: a flush came while redis "
                       "was asked, the hit is not kept");
        return NGX_OK;
    }

    rq->item.answer = f->answer;
    rq->item.finish = f->finish;
    rq->item.prompt_tokens = f->prompt_tokens;
    rq->item.completion_tokens = f->completion_tokens;
    ngx_http_smartflow_cache_embed_skip(rq);

    if (ngx_smartflow_cache_insert(rq->zone, &rq->item, r->connection->log)
        == NGX_ERROR)
    {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "smartflow cache: a phase 3 hit could not be kept "
                      "in zone \"%V\"", &rq->zone->name);
    }

    return NGX_OK;
}


/*
 * "sf1 EXPIRE PROMPT COMPLETION FINISH\n" ANSWER, copied out of the reply.
 * Only what a node writes is taken: a finish reason the store keeps (it
 * goes into the JSON served as it is), token counts an entry holds, and
 * the answer's text in UTF-8, no longer than smartflow_cache_max_size
 * (what the store takes at most), so that an entry of any size is not
 * copied, kept and served.
 */
static ngx_int_t
ngx_http_smartflow_cache_redis_parse(ngx_pool_t *pool, redisReply *reply,
    size_t max, ngx_smartflow_cache_found_t *f, time_t *expire)
{
    u_char     *p, *last, *nl, *sp, *u;
    ngx_int_t   n[3];
    ngx_uint_t  i;

    if (reply->len < 4 || ngx_strncmp(reply->str, "sf1 ", 4) != 0
        || reply->len - 4
           > max + 3 * NGX_INT64_LEN + NGX_SMARTFLOW_CACHE_FINISH)
    {
        return NGX_ERROR;
    }

    p = ngx_pnalloc(pool, reply->len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(p, reply->str, reply->len);
    last = p + reply->len;
    p += 4;

    nl = ngx_strlchr(p, last, '\n');
    if (nl == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < 3; i++) {
        sp = ngx_strlchr(p, nl, ' ');
        if (sp == NULL) {
            return NGX_ERROR;
        }

        n[i] = ngx_atoi(p, sp - p);
        if (n[i] == NGX_ERROR
            || (i > 0 && n[i] > (ngx_int_t) NGX_MAX_UINT32_VALUE))
        {
            return NGX_ERROR;
        }

        p = sp + 1;
    }

    if (!((nl - p == 4 && ngx_strncmp(p, "stop", 4) == 0)
          || (nl - p == 6 && ngx_strncmp(p, "length", 6) == 0)))
    {
        return NGX_ERROR;
    }

    if ((size_t) (last - (nl + 1)) > max) {
        return NGX_ERROR;
    }

    for (u = nl + 1; u < last; /* void */) {
        if (*u < 0x80) {
            u++;
            continue;
        }

        if (ngx_utf8_decode(&u, last - u) > 0x10ffff) {
            return NGX_ERROR;
        }
    }

    *expire = (time_t) n[0];
    f->prompt_tokens = n[1];
    f->completion_tokens = n[2];
    f->finish.data = p;
    f->finish.len = nl - p;
    f->answer.data = nl + 1;
    f->answer.len = last - (nl + 1);
    ngx_str_null(&f->query);

    return NGX_OK;
}


/* the shared connection for a SET or a DEL, NULL if none or it is down */
static ngx_smartflow_redis_t *
ngx_http_smartflow_cache_redis_ready(ngx_http_request_t *r,
    ngx_http_smartflow_cache_req_t *rq)
{
    ngx_smartflow_redis_t  *rd;

    rd = rq->redis ? ngx_smartflow_redis_shared() : NULL;

    if (rd != NULL && !ngx_smartflow_redis_up(rd)) {
        ngx_http_smartflow_cache_redis_down(rq->zone, rd,
                                            r->connection->log,
                                            "is unreachable");
        return NULL;
    }

    return rd;
}


/* the zone outlives the answer: it belongs to the cycle */
static void
ngx_http_smartflow_cache_redis_send(ngx_http_request_t *r,
    ngx_http_smartflow_cache_req_t *rq, ngx_smartflow_redis_t *rd,
    ngx_smartflow_redis_pt handler, int argc, const char **argv,
    size_t *len)
{
    if (ngx_smartflow_redis_command(rd, handler, rq->zone, argc, argv, len)
        != NGX_OK)
    {
        ngx_http_smartflow_cache_redis_down(rq->zone, rd,
                                            r->connection->log,
                                            "refused the command");
    }
}


/* an answer stored here goes to Redis too, with the entry's TTL */
void
ngx_http_smartflow_cache_redis_set(ngx_http_request_t *r,
    ngx_http_smartflow_cache_req_t *rq)
{
    u_char                 *p, *v;
    size_t                  len[5];
    ngx_smartflow_redis_t  *rd;
    const char             *argv[5];
    u_char                  key[NGX_SMARTFLOW_CACHE_RKEY_LEN];
    u_char                  ttl[NGX_TIME_T_LEN];

    rd = ngx_http_smartflow_cache_redis_ready(r, rq);

    if (rd == NULL) {
        return;
    }

    v = ngx_pnalloc(r->pool, sizeof("sf1    \n") + 3 * NGX_INT64_LEN
                             + rq->item.finish.len + rq->item.answer.len);
    if (v == NULL) {
        return;
    }

    p = ngx_sprintf(v, "sf1 %T %ui %ui %V\n", ngx_time() + rq->item.ttl,
                    rq->item.prompt_tokens, rq->item.completion_tokens,
                    &rq->item.finish);
    p = ngx_cpymem(p, rq->item.answer.data, rq->item.answer.len);

    argv[0] = "SET";
    len[0] = 3;
    argv[1] = (char *) key;
    len[1] = ngx_http_smartflow_cache_redis_key(key,
                                                &rq->item.partition,
                                                rq->item.fp);
    argv[2] = (char *) v;
    len[2] = p - v;
    argv[3] = "EX";
    len[3] = 2;
    argv[4] = (char *) ttl;
    len[4] = ngx_sprintf(ttl, "%T", rq->item.ttl) - ttl;

    ngx_http_smartflow_cache_redis_send(r, rq, rd,
                                        ngx_http_smartflow_cache_redis_stored,
                                        5, argv, len);
}


static void
ngx_http_smartflow_cache_redis_stored(ngx_smartflow_redis_t *rd,
    redisReply *reply, void *data)
{
    ngx_http_smartflow_cache_redis_written(data, rd, reply, "SET");
}


/* the reply to a SET or a DEL, which only tells whether Redis is up */
static void
ngx_http_smartflow_cache_redis_written(ngx_smartflow_cache_zone_t *z,
    ngx_smartflow_redis_t *rd, redisReply *reply, char *cmd)
{
    if (reply == NULL) {
        ngx_http_smartflow_cache_redis_down(z, rd, rd->log, "did not answer");
        return;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        ngx_http_smartflow_cache_redis_refused(z, rd, rd->log, cmd, reply);
        return;
    }

    ngx_http_smartflow_cache_redis_up(z, rd, rd->log);
}


/*
 * x-smartflow-cache: refresh: the entry of the request goes from Redis
 * too, as the request goes on to the provider, whether the new answer is
 * stored or not.  A SET of the new answer goes out behind it, on the same
 * connection.
 */
void
ngx_http_smartflow_cache_redis_del(ngx_http_request_t *r,
    ngx_http_smartflow_cache_req_t *rq)
{
    size_t                  len[2];
    ngx_smartflow_redis_t  *rd;
    const char             *argv[2];
    u_char                  key[NGX_SMARTFLOW_CACHE_RKEY_LEN];

    rd = ngx_http_smartflow_cache_redis_ready(r, rq);

    if (rd == NULL) {
        return;
    }

    argv[0] = "DEL";
    len[0] = 3;
    argv[1] = (char *) key;
    len[1] = ngx_http_smartflow_cache_redis_key(key,
                                                &rq->item.partition,
                                                rq->item.fp);

    ngx_http_smartflow_cache_redis_send(r, rq, rd,
                                        ngx_http_smartflow_cache_redis_deleted,
                                        2, argv, len);
}


static void
ngx_http_smartflow_cache_redis_deleted(ngx_smartflow_redis_t *rd,
    redisReply *reply, void *data)
{
    ngx_http_smartflow_cache_redis_written(data, rd, reply, "DEL");
}


static void
ngx_http_smartflow_cache_redis_cleanup(void *data)
{
    ngx_http_smartflow_cache_req_t *rq = data;

    ngx_http_smartflow_cache_ticket_t  *t;

    t = rq->ticket;

    if (t) {
        t->r = NULL;
        rq->ticket = NULL;
    }
}


/* one line per outage, whichever worker sees it first */
static void
ngx_http_smartflow_cache_redis_down(ngx_smartflow_cache_zone_t *z,
    ngx_smartflow_redis_t *rd, ngx_log_t *log, const char *why)
{
    if (ngx_atomic_cmp_set(&z->sh->stats.redis_down, 0, 1)) {
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "smartflow cache: redis %V %s; phase 3 is skipped "
                      "until it answers again", &rd->name, why);
    }
}


static void
ngx_http_smartflow_cache_redis_up(ngx_smartflow_cache_zone_t *z,
    ngx_smartflow_redis_t *rd, ngx_log_t *log)
{
    if (z->sh->stats.redis_down
        && ngx_atomic_cmp_set(&z->sh->stats.redis_down, 1, 0))
    {
        ngx_log_error(NGX_LOG_NOTICE, log, 0,
                      "smartflow cache: redis %V answers again; phase 3 "
                      "is back", &rd->name);
    }
}


/*
 * An error for every command (a replica cut off from its master, a Redis
 * still loading) is an outage too: said once, not once a request.
 */
static void
ngx_http_smartflow_cache_redis_refused(ngx_smartflow_cache_zone_t *z,
    ngx_smartflow_redis_t *rd, ngx_log_t *log, char *cmd, redisReply *reply)
{
    u_char  why[160];

    *ngx_snprintf(why, sizeof(why) - 1, "refused %s: %*s", cmd,
                  (size_t) reply->len, reply->str)
        = '\0';

    ngx_http_smartflow_cache_redis_down(z, rd, log, (const char *) why);
}


static size_t
ngx_http_smartflow_cache_redis_key(u_char *buf, ngx_str_t *partition,
    u_char *fp)
{
    u_char  *p;

    p = ngx_sf_cpymem(buf, NGX_SMARTFLOW_CACHE_RKEY);
    p = ngx_http_smartflow_cache_redis_tag(p, partition);
    *p++ = ':';
    p = ngx_hex_dump(p, fp, NGX_SMARTFLOW_CACHE_FP);

    return p - buf;
}


/* the partition's tag in the key: no character SCAN's MATCH would read */
static u_char *
ngx_http_smartflow_cache_redis_tag(u_char *p, ngx_str_t *partition)
{
    u_char  digest[32];

    if (ngx_smartflow_sha256(partition->data, partition->len, digest)
        != NGX_OK)
    {
        ngx_memzero(digest, NGX_SMARTFLOW_CACHE_RTAG);
    }

    return ngx_hex_dump(p, digest, NGX_SMARTFLOW_CACHE_RTAG);
}


/*
 * DELETE /api/metacache: the entries of the partitions given (all of them
 * when there are none) go from Redis too.  SCAN walks the keyspace a
 * batch at a time with MATCH on the partitions' tags, and each batch it
 * returns is UNLINKed (freed by Redis in the background) while the next
 * SCAN goes out on the same connection.  Neither nginx nor Redis waits
 * on a long command: the worker goes on, and the request is answered when
 * the last reply comes, with the count UNLINK gave, or, when Redis fails
 * on the way, with what was flushed until then.  NGX_DECLINED: no Redis
 * to flush.
 */
ngx_int_t
ngx_http_smartflow_cache_redis_flush(ngx_http_request_t *r,
    ngx_smartflow_cache_zone_t *z, ngx_str_t *tenant, ngx_str_t *parts,
    ngx_uint_t nparts, ngx_uint_t local)
{
    u_char                               *p;
    ngx_uint_t                            i;
    ngx_pool_cleanup_t                   *cln;
    ngx_smartflow_redis_t                *rd;
    ngx_http_smartflow_cache_flush_t     *fl;
    ngx_http_smartflow_cache_loc_conf_t  *clcf;

    rd = ngx_smartflow_redis_shared();

    if (rd == NULL) {
        return NGX_DECLINED;
    }

    if (!ngx_smartflow_redis_up(rd)) {
        return ngx_http_smartflow_cache_api_flushed(r, z, local, 0,
                                                    &rd->name,
                                                    "is unreachable", 0);
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    fl = (cln == NULL) ? NULL
         : ngx_calloc(sizeof(ngx_http_smartflow_cache_flush_t)
                      + (tenant ? tenant->len : 0), r->connection->log);

    if (fl == NULL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "smartflow cache: no memory for the flush of zone "
                      "\"%V\" in redis %V: %ui entries flushed in the zone, "
                      "none in redis", &z->name, &rd->name, local);
        return ngx_http_smartflow_cache_api_no_memory(r);
    }

    if (tenant) {
        fl->tenant.data = (u_char *) (fl + 1);
        fl->tenant.len = tenant->len;
        ngx_memcpy(fl->tenant.data, tenant->data, tenant->len);
    }

    fl->r = r;
    fl->zone = z;
    fl->local = local;
    fl->cln = cln;

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_smartflow_cache_module);

    if (nparts == 0) {
        p = ngx_sf_cpymem(fl->patterns[0], NGX_SMARTFLOW_CACHE_RKEY "*");
        fl->lens[0] = p - fl->patterns[0];
        fl->npatterns = 1;

    } else {
        for (i = 0; i < nparts && i < 2; i++) {
            p = ngx_sf_cpymem(fl->patterns[i], NGX_SMARTFLOW_CACHE_RKEY);
            p = ngx_http_smartflow_cache_redis_tag(p, &parts[i]);
            p = ngx_sf_cpymem(p, ":*");
            fl->lens[i] = p - fl->patterns[i];
        }

        fl->npatterns = i;
    }

    fl->start = ngx_current_msec;
    fl->timeout = clcf->flush_timeout;

    if (ngx_http_smartflow_cache_redis_scan(rd, fl, 0) != NGX_OK) {
        ngx_free(fl);
        return ngx_http_smartflow_cache_api_flushed(r, z, local, 0,
                                                    &rd->name,
                                                    "refused the command", 0);
    }

    cln->handler = ngx_http_smartflow_cache_redis_flush_cleanup;
    cln->data = fl;

    r->main->count++;

    return NGX_DONE;
}


static ngx_int_t
ngx_http_smartflow_cache_redis_scan(ngx_smartflow_redis_t *rd,
    ngx_http_smartflow_cache_flush_t *fl, uint64_t cursor)
{
    u_char       buf[NGX_INT64_LEN + 1];
    size_t       lens[6];
    const char  *argv[6];

    argv[0] = "SCAN";
    lens[0] = 4;
    argv[1] = (char *) buf;
    lens[1] = ngx_sprintf(buf, "%uL", cursor) - buf;
    argv[2] = "MATCH";
    lens[2] = 5;
    argv[3] = (char *) fl->patterns[fl->pattern];
    lens[3] = fl->lens[fl->pattern];
    argv[4] = "COUNT";
    lens[4] = 5;
    argv[5] = NGX_SMARTFLOW_CACHE_SCAN_COUNT;
    lens[5] = sizeof(NGX_SMARTFLOW_CACHE_SCAN_COUNT) - 1;

    if (ngx_smartflow_redis_command(rd, ngx_http_smartflow_cache_redis_scanned,
                                    fl, 6, argv, lens)
        != NGX_OK)
    {
        return NGX_DECLINED;
    }

    fl->cursor = cursor;
    fl->pending++;

    return NGX_OK;
}


/*
 * A batch of keys: UNLINKed, and the next SCAN sent behind it.  The walk
 * ends when the cursor comes back as 0 for the last pattern, and stops,
 * with what was flushed until then, when the answer is not one a Redis
 * gives (a cursor that is not a number, the cursor it was sent), or when
 * the walk has taken the API's flush_timeout: a keyspace that grows
 * faster than the walk, or a proxy that never answers 0, would otherwise
 * hold the request, and the zone's "flushing" state, forever.
 */
static void
ngx_http_smartflow_cache_redis_scanned(ngx_smartflow_redis_t *rd,
    redisReply *reply, void *data)
{
    ngx_http_smartflow_cache_flush_t *fl = data;

    uint64_t  next;

    fl->pending--;

    if (fl->why || fl->r == NULL) {
        goto done;
    }

    if (ngx_http_smartflow_cache_redis_failed(fl, reply)) {
        goto done;
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2
        || reply->element[0]->type != REDIS_REPLY_STRING
        || reply->element[1]->type != REDIS_REPLY_ARRAY)
    {
        fl->why = "answered SCAN with something else";
        goto done;
    }

    fl->rounds++;

    /* sent back as it came, it could make Redis, or a proxy, start over */
    if (ngx_http_smartflow_cache_redis_cursor(reply->element[0], &next)
        != NGX_OK)
    {
        fl->why = "answered SCAN with a cursor that is not a number";
        goto done;
    }

    if (reply->element[1]->elements
        && ngx_http_smartflow_cache_redis_unlink(rd, fl, reply->element[1])
           != NGX_OK)
    {
        goto done;
    }

    if (next == 0) {
        /* this pattern is walked, its last batch UNLINKed above */
        if (++fl->pattern == fl->npatterns) {
            fl->scanned = 1;
            goto done;
        }

    } else if (next == fl->cursor) {
        /* a Redis's cursor always moves on */
        fl->why = "answered SCAN with the cursor it was sent";
        goto done;
    }

    if (ngx_current_msec - fl->start >= fl->timeout) {
        *ngx_snprintf(fl->error, sizeof(fl->error) - 1,
                      "did not end the SCAN of the keys in %M ms "
                      "(%ui rounds)", fl->timeout, fl->rounds)
            = '\0';
        fl->why = (char *) fl->error;
        fl->timed_out = 1;
        goto done;
    }

    if (ngx_http_smartflow_cache_redis_scan(rd, fl, next) != NGX_OK) {
        fl->why = "refused the command";
    }

done:

    ngx_http_smartflow_cache_redis_flushed(rd, fl);
}


/* a SCAN cursor: an unsigned 64-bit number, in decimal */
static ngx_int_t
ngx_http_smartflow_cache_redis_cursor(redisReply *cursor, uint64_t *value)
{
    size_t    i;
    uint64_t  v, d;

    if (cursor->len == 0 || cursor->len > NGX_INT64_LEN) {
        return NGX_ERROR;
    }

    v = 0;

    for (i = 0; i < cursor->len; i++) {
        if (cursor->str[i] < '0' || cursor->str[i] > '9') {
            return NGX_ERROR;
        }

        d = cursor->str[i] - '0';

        if (v > ((uint64_t) -1 - d) / 10) {
            return NGX_ERROR;
        }

        v = v * 10 + d;
    }

    *value = v;

    return NGX_OK;
}


/*
 * A batch UNLINKed: only the keys of the pattern scanned, whatever else
 * the answer holds, so that a proxy answering oddly cannot make the
 * flush delete another module's keys.
 */
static ngx_int_t
ngx_http_smartflow_cache_redis_unlink(ngx_smartflow_redis_t *rd,
    ngx_http_smartflow_cache_flush_t *fl, redisReply *keys)
{
    size_t       *lens, len;
    u_char       *prefix;
    ngx_uint_t    i, n;
    redisReply   *key;
    const char  **argv;

    /* hiredis writes the command out before the call returns */
    argv = ngx_alloc((keys->elements + 1) * (sizeof(char *) + sizeof(size_t)),
                     rd->log);
    if (argv == NULL) {
        fl->why = "could not be sent the keys (out of memory)";
        return NGX_ERROR;
    }

    lens = (size_t *) &argv[keys->elements + 1];

    argv[0] = "UNLINK";
    lens[0] = 6;

    /* the pattern without its "*" */
    prefix = fl->patterns[fl->pattern];
    len = fl->lens[fl->pattern] - 1;

    for (n = 1, i = 0; i < keys->elements; i++) {
        key = keys->element[i];

        if (key->type == REDIS_REPLY_STRING && key->len > len
            && ngx_memcmp(key->str, prefix, len) == 0)
        {
            argv[n] = key->str;
            lens[n++] = key->len;
        }
    }

    if (n > 1) {
        if (ngx_smartflow_redis_command(rd,
                                        ngx_http_smartflow_cache_redis_unlinked,
                                        fl, n, argv, lens)
            != NGX_OK)
        {
            fl->why = "refused the command";
            ngx_free(argv);
            return NGX_ERROR;
        }

        fl->pending++;
    }

    ngx_free(argv);

    return NGX_OK;
}


static void
ngx_http_smartflow_cache_redis_unlinked(ngx_smartflow_redis_t *rd,
    redisReply *reply, void *data)
{
    ngx_http_smartflow_cache_flush_t *fl = data;

    fl->pending--;

    if (!ngx_http_smartflow_cache_redis_failed(fl, reply)) {
        if (reply->type == REDIS_REPLY_INTEGER && reply->integer > 0) {
            fl->flushed += (ngx_uint_t) reply->integer;
        }
    }

    ngx_http_smartflow_cache_redis_flushed(rd, fl);
}


/* no answer, or an error: the flush stops there, with a reason */
static ngx_uint_t
ngx_http_smartflow_cache_redis_failed(ngx_http_smartflow_cache_flush_t *fl,
    redisReply *reply)
{
    u_char  *p;
    size_t   len;

    if (reply == NULL) {
        if (fl->why == NULL) {
            fl->why = "did not answer";
        }

        return 1;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        if (fl->why == NULL) {
            len = ngx_min(reply->len, sizeof(fl->error) - 32);
            *ngx_snprintf(fl->error, sizeof(fl->error) - 1,
                          "refused the flush: %*s", len, reply->str)
                = '\0';
            fl->why = (char *) fl->error;

            /* it goes into a JSON string */
            for (p = fl->error; *p; p++) {
                if (*p == '"' || *p == '\\' || *p < 0x20) {
                    *p = ' ';
                }
            }
        }

        return 1;
    }

    return 0;
}


/* the last reply in: the request answered, the state freed */
static void
ngx_http_smartflow_cache_redis_flushed(ngx_smartflow_redis_t *rd,
    ngx_http_smartflow_cache_flush_t *fl)
{
    ngx_int_t            rc;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    if (fl->pending) {
        return;
    }

    /* every UNLINK answered: phase 3 hits can be kept again */
    ngx_http_smartflow_cache_flush_end(fl->zone);

    r = fl->r;

    if (r == NULL) {
        /* the request went while Redis was asked */
        ngx_free(fl);
        return;
    }

    if (fl->why == NULL && !fl->scanned) {
        /* cannot happen: nothing pending, nothing more to ask */
        fl->why = "stopped answering the scan";
    }

    fl->cln->handler = NULL;
    c = r->connection;

    if (fl->why == NULL) {
        /* the other nodes flush their own zones too */
        ngx_http_smartflow_cache_redis_tell(rd, fl);
    }

    rc = ngx_http_smartflow_cache_api_flushed(r, fl->zone, fl->local,
                                              fl->flushed, &rd->name,
                                              fl->why, fl->timed_out);
    ngx_free(fl);

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}


static void
ngx_http_smartflow_cache_redis_flush_cleanup(void *data)
{
    ngx_http_smartflow_cache_flush_t *fl = data;

    fl->r = NULL;
}


/*
 * A complete flush is told to the other nodes through a Redis stream per
 * zone, "smartflow:cache-flushes:ZONE" (the tenant, empty for all, and
 * the zone's own id, so that a node skips what it told itself); each
 * node reads the stream about once a second and flushes its own zone the
 * same way, so that what it kept (its own answers, its phase 3 hits) goes
 * too.  The stream keeps its last 1,000 flushes.
 */
static void
ngx_http_smartflow_cache_redis_tell(ngx_smartflow_redis_t *rd,
    ngx_http_smartflow_cache_flush_t *fl)
{
    u_char       *key, origin[NGX_INT64_LEN];
    size_t        lens[10];
    const char   *argv[10];

    key = ngx_alloc(sizeof(NGX_SMARTFLOW_CACHE_RFLUSHES) + fl->zone->name.len,
                    rd->log);
    if (key == NULL) {
        return;
    }

    argv[0] = "XADD";
    argv[1] = (char *) key;
    lens[1] = ngx_sprintf(key, NGX_SMARTFLOW_CACHE_RFLUSHES "%V",
                          &fl->zone->name)
              - key;
    argv[2] = "MAXLEN";
    argv[3] = "~";
    argv[4] = "1000";
    argv[5] = "*";
    argv[6] = "tenant";
    argv[7] = (char *) fl->tenant.data;
    lens[7] = fl->tenant.len;
    argv[8] = "origin";
    argv[9] = (char *) origin;
    lens[9] = ngx_sprintf(origin, "%uL", fl->zone->sh->epoch) - origin;

    lens[0] = 4;
    lens[2] = 6;
    lens[3] = 1;
    lens[4] = 4;
    lens[5] = 1;
    lens[6] = 6;
    lens[8] = 6;

    if (argv[7] == NULL) {
        argv[7] = "";
    }

    if (ngx_smartflow_redis_command(rd, ngx_http_smartflow_cache_redis_told,
                                    NULL, 10, argv, lens)
        != NGX_OK)
    {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "smartflow cache: redis %V refused to take the flush "
                      "of zone \"%V\" for the other nodes", &rd->name,
                      &fl->zone->name);
    }

    ngx_free(key);
}


static void
ngx_http_smartflow_cache_redis_told(ngx_smartflow_redis_t *rd,
    redisReply *reply, void *data)
{
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "smartflow cache: redis %V did not take a flush for "
                      "the other nodes: %*s", &rd->name,
                      reply ? (size_t) reply->len : 14,
                      reply ? reply->str : "no answer");
    }
}


/* in each worker with smartflow_redis: the poll of the flushes told */
void
ngx_http_smartflow_cache_redis_watch(ngx_cycle_t *cycle)
{
    ngx_http_smartflow_cache_main_conf_t  *cmcf;

    cmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                           ngx_http_smartflow_cache_module);

    if (cmcf == NULL || cmcf->zones.nelts == 0
        || ngx_smartflow_redis_shared() == NULL)
    {
        return;
    }

    ngx_http_smartflow_cache_watched = &cmcf->zones;

    /* a timer's data is read as a connection when debug logging */
    ngx_http_smartflow_cache_watch_conn.fd = (ngx_socket_t) -1;

    ngx_http_smartflow_cache_watch_ev.handler =
                                        ngx_http_smartflow_cache_redis_poll;
    ngx_http_smartflow_cache_watch_ev.data =
                                        &ngx_http_smartflow_cache_watch_conn;
    ngx_http_smartflow_cache_watch_ev.log = cycle->log;
    ngx_http_smartflow_cache_watch_ev.cancelable = 1;

    ngx_add_timer(&ngx_http_smartflow_cache_watch_ev,
                  NGX_SMARTFLOW_CACHE_POLL);
}


/* one worker of the node reads each zone's stream, about once a second */
static void
ngx_http_smartflow_cache_redis_poll(ngx_event_t *ev)
{
    u_char                       *key, last[48];
    size_t                        lens[6];
    ngx_msec_t                    now;
    ngx_uint_t                    i;
    ngx_atomic_uint_t             next;
    const char                   *argv[6];
    ngx_smartflow_redis_t        *rd;
    ngx_smartflow_cache_zone_t  **zp, *z;

    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    ngx_add_timer(ev, NGX_SMARTFLOW_CACHE_POLL);

    rd = ngx_smartflow_redis_shared();

    if (rd == NULL || !ngx_smartflow_redis_up(rd)) {
        return;
    }

    now = ngx_current_msec;
    zp = ngx_http_smartflow_cache_watched->elts;

    for (i = 0; i < ngx_http_smartflow_cache_watched->nelts; i++) {
        z = zp[i];
        next = z->sh->flush_poll;

        if ((ngx_msec_int_t) (now - next) < 0
            || !ngx_atomic_cmp_set(&z->sh->flush_poll, next,
                                   now + NGX_SMARTFLOW_CACHE_POLL - 50))
        {
            /* another worker reads it this time */
            continue;
        }

        key = ngx_alloc(sizeof(NGX_SMARTFLOW_CACHE_RFLUSHES) + z->name.len,
                        ev->log);
        if (key == NULL) {
            return;
        }

        ngx_shmtx_lock(&z->shpool->mutex);
        ngx_memcpy(last, z->sh->flush_last, sizeof(last));
        ngx_shmtx_unlock(&z->shpool->mutex);

        argv[0] = "XREAD";
        lens[0] = 5;
        argv[1] = "COUNT";
        lens[1] = 5;
        argv[2] = "100";
        lens[2] = 3;
        argv[3] = "STREAMS";
        lens[3] = 7;
        argv[4] = (char *) key;
        lens[4] = ngx_sprintf(key, NGX_SMARTFLOW_CACHE_RFLUSHES "%V",
                              &z->name)
                  - key;
        argv[5] = (char *) last;
        lens[5] = ngx_strlen(last);

        (void) ngx_smartflow_redis_command(rd,
                                           ngx_http_smartflow_cache_redis_polled,
                                           z, 6, argv, lens);
        ngx_free(key);
    }
}


/* XREAD's answer: nil, or [[key, [[id, [field, value, ...]], ...]]] */
static void
ngx_http_smartflow_cache_redis_polled(ngx_smartflow_redis_t *rd,
    redisReply *reply, void *data)
{
    ngx_smartflow_cache_zone_t *z = data;

    ngx_uint_t   i;
    redisReply  *entries, *id;

    if (reply == NULL) {
        return;
    }

    if (reply->type == REDIS_REPLY_ERROR) {
        ngx_http_smartflow_cache_redis_refused(z, rd, rd->log, "XREAD",
                                               reply);
        return;
    }

    ngx_http_smartflow_cache_redis_up(z, rd, rd->log);

    if (reply->type == REDIS_REPLY_NIL) {
        return;
    }

    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 1
        || reply->element[0]->type != REDIS_REPLY_ARRAY
        || reply->element[0]->elements != 2
        || reply->element[0]->element[1]->type != REDIS_REPLY_ARRAY)
    {
        return;
    }

    entries = reply->element[0]->element[1];

    for (i = 0; i < entries->elements; i++) {
        if (entries->element[i]->type != REDIS_REPLY_ARRAY
            || entries->element[i]->elements != 2)
        {
            return;
        }

        id = entries->element[i]->element[0];

        if (id->type != REDIS_REPLY_STRING || id->len >= 48) {
            return;
        }

        ngx_http_smartflow_cache_redis_apply(z, rd->log,
                                             entries->element[i]->element[1]);

        ngx_shmtx_lock(&z->shpool->mutex);
        *ngx_cpymem(z->sh->flush_last, id->str, id->len) = '\0';
        ngx_shmtx_unlock(&z->shpool->mutex);
    }
}


/* a flush another node told: its tenant's entries go from this zone */
static void
ngx_http_smartflow_cache_redis_apply(ngx_smartflow_cache_zone_t *z,
    ngx_log_t *log, redisReply *fields)
{
    u_char      *p, origin[NGX_INT64_LEN];
    size_t       len;
    ngx_str_t    tenant, part;
    ngx_uint_t   i, n, mine;
    redisReply  *f, *v;

    if (fields->type != REDIS_REPLY_ARRAY) {
        return;
    }

    ngx_str_null(&tenant);
    mine = 0;
    len = ngx_sprintf(origin, "%uL", z->sh->epoch) - origin;

    for (i = 0; i + 1 < fields->elements; i += 2) {
        f = fields->element[i];
        v = fields->element[i + 1];

        if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) {
            return;
        }

        if (f->len == 6 && ngx_strncmp(f->str, "tenant", 6) == 0) {
            tenant.data = (u_char *) v->str;
            tenant.len = v->len;

        } else if (f->len == 6 && ngx_strncmp(f->str, "origin", 6) == 0) {
            mine = (v->len == len && ngx_strncmp(v->str, origin, len) == 0);
        }
    }

    if (mine || tenant.len > 256) {
        return;
    }

    p = NULL;

    if (tenant.len) {
        p = ngx_alloc(tenant.len + 8, log);
        if (p == NULL) {
            return;
        }
    }

    ngx_http_smartflow_cache_flush_begin(z);

    if (tenant.len == 0) {
        n = ngx_smartflow_cache_flush(z, NULL);

    } else {
        part.data = p;
        part.len = ngx_sprintf(p, "team:%V", &tenant) - p;
        n = ngx_smartflow_cache_flush(z, &part);

        part.len = ngx_sprintf(p, "key:%V", &tenant) - p;
        n += ngx_smartflow_cache_flush(z, &part);

        ngx_free(p);
    }

    ngx_http_smartflow_cache_flush_end(z);

    ngx_log_error(NGX_LOG_NOTICE, log, 0,
                  "smartflow cache: flushed %ui entries of zone \"%V\" "
                  "(%s%V) as another node did", n, &z->name,
                  tenant.len ? "tenant " : "every tenant", &tenant);
}


/*
 * A flush of the zone, and of Redis with it, begins and ends: in between,
 * and for the lookups that asked Redis before it ended, a phase 3 hit is
 * not kept in the zone (ngx_http_smartflow_cache_redis_found()).  The
 * flushes going on are counted by process, so that those of a process
 * that died before they ended are taken off when the next worker starts
 * (ngx_http_smartflow_cache_flush_reap()); a flush that finds every
 * record taken is counted with no owner, as before.
 */
void
ngx_http_smartflow_cache_flush_begin(ngx_smartflow_cache_zone_t *z)
{
    ngx_uint_t                      i;
    ngx_smartflow_cache_flusher_t  *fl, *free;

    ngx_shmtx_lock(&z->shpool->mutex);

    free = NULL;

    for (i = 0; i < NGX_SMARTFLOW_CACHE_FLUSHERS; i++) {
        fl = &z->sh->flushers[i];

        if (fl->pid == ngx_pid) {
            free = fl;
            break;
        }

        if (fl->pid == 0 && free == NULL) {
            free = fl;
        }
    }

    if (free) {
        free->pid = ngx_pid;
        free->n++;
    }

    z->sh->flushing++;
    z->sh->flushes++;

    ngx_shmtx_unlock(&z->shpool->mutex);
}


void
ngx_http_smartflow_cache_flush_end(ngx_smartflow_cache_zone_t *z)
{
    ngx_uint_t                      i;
    ngx_smartflow_cache_flusher_t  *fl;

    ngx_shmtx_lock(&z->shpool->mutex);

    for (i = 0; i < NGX_SMARTFLOW_CACHE_FLUSHERS; i++) {
        fl = &z->sh->flushers[i];

        if (fl->pid == ngx_pid && fl->n) {
            if (--fl->n == 0) {
                fl->pid = 0;
            }

            break;
        }
    }

    z->sh->flushes++;

    if (z->sh->flushing) {
        z->sh->flushing--;
    }

    ngx_shmtx_unlock(&z->shpool->mutex);
}


/* at a worker's start: the flushes of processes gone will never end */
void
ngx_http_smartflow_cache_flush_reap(ngx_smartflow_cache_zone_t *z,
    ngx_log_t *log)
{
    ngx_uint_t                      i;
    ngx_smartflow_cache_flusher_t  *fl;

    ngx_shmtx_lock(&z->shpool->mutex);

    for (i = 0; i < NGX_SMARTFLOW_CACHE_FLUSHERS; i++) {
        fl = &z->sh->flushers[i];

        if (fl->pid == 0 || fl->pid == ngx_pid
            || ngx_smartflow_process_alive(fl->pid))
        {
            continue;
        }

        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "smartflow cache: process %P of zone \"%V\" ended "
                      "with %ui flush(es) going on; they are over",
                      fl->pid, &z->name, fl->n);

        z->sh->flushing -= ngx_min(fl->n, z->sh->flushing);
        z->sh->flushes++;
        fl->pid = 0;
        fl->n = 0;
    }

    ngx_shmtx_unlock(&z->shpool->mutex);
}
