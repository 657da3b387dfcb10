/*
 * The cache's admin API, for the master key only: GET .../stats (entries,
 * memory, hits by phase, misses, hit rate, tokens saved, lookup latency
 * percentiles) and DELETE (every entry, or one tenant's with ?tenant=).
 * The zone is the location's smartflow_cache, or the first one declared.
 */

#include <openssl/crypto.h>

#include "ngx_http_smartflow_cache.h"


static ngx_uint_t ngx_http_smartflow_cache_api_auth(ngx_http_request_t *r,
    ngx_int_t *rc);
static ngx_int_t ngx_http_smartflow_cache_api_error(ngx_http_request_t *r,
    ngx_uint_t status, char *type, char *code, char *message);
static ngx_int_t ngx_http_smartflow_cache_stats(ngx_http_request_t *r,
    ngx_smartflow_cache_zone_t *z);
static ngx_int_t ngx_http_smartflow_cache_api_flush(ngx_http_request_t *r,
    ngx_smartflow_cache_zone_t *z);
static ngx_uint_t ngx_http_smartflow_cache_percentile(
    ngx_smartflow_cache_stats_t *st, ngx_uint_t total, ngx_uint_t per);


ngx_int_t
ngx_http_smartflow_cache_api_handler(ngx_http_request_t *r)
{
    u_char                                *end;
    ngx_int_t                              rc;
    ngx_str_t                              tail;
    ngx_smartflow_cache_zone_t            *z, **zp;
    ngx_http_smartflow_cache_loc_conf_t   *clcf;
    ngx_http_smartflow_cache_main_conf_t  *cmcf;

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    if (!ngx_http_smartflow_cache_api_auth(r, &rc)) {
        /* refused, the refusal sent */
        return rc;
    }

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_smartflow_cache_module);
    cmcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_cache_module);

    z = clcf->zone;

    if (z == NULL && cmcf->zones.nelts) {
        zp = cmcf->zones.elts;
        z = zp[0];
    }

    if (z == NULL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "smartflow cache: the cache API has no "
                      "smartflow_cache_zone to report on");
        return ngx_http_smartflow_cache_api_error(r,
                   NGX_HTTP_SERVICE_UNAVAILABLE, "server_error",
                   "cache_not_configured",
                   "No smartflow_cache_zone is configured.");
    }

    /* the path after the last slash: "stats" or the API's own name */
    tail.data = r->uri.data + r->uri.len;

    while (tail.data > r->uri.data && tail.data[-1] != '/') {
        tail.data--;
    }

    tail.len = r->uri.data + r->uri.len - tail.data;

    if (tail.len == 5 && ngx_strncmp(tail.data, "stats", 5) == 0) {
        if (r->method != NGX_HTTP_GET && r->method != NGX_HTTP_HEAD) {
            return ngx_http_smartflow_cache_api_error(r,
                       NGX_HTTP_NOT_ALLOWED, "invalid_request_error",
                       "method_not_allowed", "Use GET for the statistics.");
        }

        return ngx_http_smartflow_cache_stats(r, z);
    }

    /* ".../metacache", or ".../metacache/": no other path flushes */
    end = r->uri.data + r->uri.len;

    if (tail.len == 0) {
        end--;
    }

    if (end - r->uri.data >= 10
        && ngx_strncmp(end - 10, "/metacache", 10) == 0)
    {
        if (r->method != NGX_HTTP_DELETE) {
            return ngx_http_smartflow_cache_api_error(r,
                       NGX_HTTP_NOT_ALLOWED, "invalid_request_error",
                       "method_not_allowed",
                       "Use DELETE to flush the cache, GET .../stats for "
                       "its statistics.");
        }

        return ngx_http_smartflow_cache_api_flush(r, z);
    }

    return ngx_http_smartflow_cache_api_error(r, NGX_HTTP_NOT_FOUND,
               "invalid_request_error", "not_found",
               "Unknown cache API path.");
}


/* the master key, as "Authorization: Bearer KEY" or "x-api-key: KEY" */
static ngx_uint_t
ngx_http_smartflow_cache_api_auth(ngx_http_request_t *r, ngx_int_t *rc)
{
    u_char                           digest[32], *p, *last;
    ngx_str_t                        key, *h;
    ngx_http_smartflow_main_conf_t  *smcf;

    smcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_proxy_module);

    ngx_str_null(&key);

    if (r->headers_in.authorization) {
        p = r->headers_in.authorization->value.data;
        last = p + r->headers_in.authorization->value.len;

        if (last - p > 7 && ngx_strncasecmp(p, (u_char *) "Bearer ", 7) == 0)
        {
            for (p += 7; p < last && *p == ' '; p++) { /* void */ }

            key.data = p;
            key.len = last - p;
        }
    }

    if (key.len == 0) {
        h = ngx_http_smartflow_header_in(&r->headers_in.headers,
                                         "x-api-key");
        if (h) {
            key = *h;
        }
    }

    if (key.len == 0) {
        *rc = ngx_http_smartflow_cache_api_error(r, NGX_HTTP_UNAUTHORIZED,
                  "invalid_request_error", "missing_api_key",
                  "You didn't provide an API key. The cache API takes "
                  "the master key.");
        return 0;
    }

    if (smcf->master_key.len
        && ngx_smartflow_sha256(key.data, key.len, digest) == NGX_OK
        && CRYPTO_memcmp(digest, smcf->master_hash, 32) == 0)
    {
        return 1;
    }

    if (key.len > 6 && ngx_strncmp(key.data, "sk-sf-", 6) == 0) {
        *rc = ngx_http_smartflow_cache_api_error(r, NGX_HTTP_FORBIDDEN,
                  "permission_error", "master_key_required",
                  "The cache API takes the master key only; virtual keys "
                  "cannot read or flush the cache.");
        return 0;
    }

    *rc = ngx_http_smartflow_cache_api_error(r, NGX_HTTP_UNAUTHORIZED,
              "invalid_request_error", "invalid_api_key",
              "Incorrect API key provided.");
    return 0;
}


static ngx_int_t
ngx_http_smartflow_cache_api_error(ngx_http_request_t *r, ngx_uint_t status,
    char *type, char *code, char *message)
{
    ngx_str_t   body;
    ngx_uint_t  level;

    level = (status == NGX_HTTP_UNAUTHORIZED) ? NGX_LOG_INFO : NGX_LOG_ERR;

    ngx_log_error(level, r->connection->log, 0,
                  "smartflow cache: %s (status %ui, code %s)", message,
                  status, code);

    body.data = ngx_pnalloc(r->pool, ngx_strlen(message) + ngx_strlen(type)
                                     + ngx_strlen(code) + 96);
    if (body.data == NULL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "smartflow cache: no memory for the answer \"%s\"",
                      code);
        return ngx_http_smartflow_cache_api_no_memory(r);
    }

    body.len = ngx_sprintf(body.data, "{\"error\":{\"message\":\"%s\","
                                      "\"type\":\"%s\",\"param\":null,"
                                      "\"code\":\"%s\"}}",
                           message, type, code)
               - body.data;

    return ngx_http_smartflow_send(r, status, NGX_HTTP_SMARTFLOW_JSON, &body);
}


/*
 * The API's answer when the request's pool has no memory for one: a
 * fixed body, which needs none.  The caller has logged what was done.
 */
ngx_int_t
ngx_http_smartflow_cache_api_no_memory(ngx_http_request_t *r)
{
    ngx_str_t  body;

    ngx_str_set(&body, "{\"error\":{\"message\":\"The cache API ran out of "
                       "memory; the error log says what was done.\","
                       "\"type\":\"server_error\",\"param\":null,"
                       "\"code\":\"no_memory\"}}\n");

    return ngx_http_smartflow_send(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                   NGX_HTTP_SMARTFLOW_JSON, &body);
}


static ngx_int_t
ngx_http_smartflow_cache_stats(ngx_http_request_t *r,
    ngx_smartflow_cache_zone_t *z)
{
    u_char                       *p;
    ngx_int_t                     rc;
    ngx_str_t                     body;
    ngx_uint_t                    i, hits, lat, entries, pfree, pages;
    ngx_smartflow_cache_stats_t  *st;

    st = &z->sh->stats;

    hits = 0;
    for (i = 1; i <= 4; i++) {
        hits += st->hits[i];
    }

    lat = 0;
    for (i = 0; i < NGX_SMARTFLOW_CACHE_LAT; i++) {
        lat += st->latency[i];
    }

    ngx_shmtx_lock(&z->shpool->mutex);
    entries = z->sh->used;
    pfree = z->shpool->pfree;
    ngx_shmtx_unlock(&z->shpool->mutex);

    pages = (z->shm_zone->shm.size - sizeof(ngx_slab_pool_t)) / ngx_pagesize;

    body.data = ngx_pnalloc(r->pool, 2048 + z->name.len);
    if (body.data == NULL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "smartflow cache: no memory for the statistics of "
                      "zone \"%V\"", &z->name);
        return ngx_http_smartflow_cache_api_no_memory(r);
    }

    p = ngx_sprintf(body.data,
            "{\"zone\":\"%V\",\"entries\":%ui,\"capacity\":%ui,"
            "\"index\":\"%s\",\"dimension\":%d,"
            "\"memory\":{\"size\":%uz,\"used\":%uz,\"free\":%uz},"
            "\"lookups\":%uA,\"hits\":{\"total\":%ui,\"phase1\":%uA,"
            "\"phase2\":%uA,\"phase3\":%uA,\"phase4\":%uA},"
            "\"misses\":%uA,\"bypasses\":%uA,\"hit_rate\":%.4f,"
            "\"stores\":%uA,\"evictions\":%uA,\"expired\":%uA,"
            "\"rejected_by_verification\":%uA,\"tokens_saved\":%uA,"
            "\"saved\":{\"prompt_tokens\":%uA,\"completion_tokens\":%uA,"
            "\"cost_usd\":%uA.%06uA,\"unpriced_hits\":%uA},",
            &z->name, entries, z->capacity,
            ngx_smartflow_cache_index_name(z),
            (int) z->dim,
            z->shm_zone->shm.size, (pages - pfree) * ngx_pagesize,
            pfree * ngx_pagesize,
            st->lookups, hits, st->hits[1], st->hits[2], st->hits[3],
            st->hits[4],
            st->misses, st->bypasses,
            st->lookups ? (double) hits / st->lookups : 0.0,
            st->stores, st->evictions, st->expired, st->rejected,
            st->tokens_saved, st->prompt_saved, st->completion_saved,
            st->cost_saved / 1000000, st->cost_saved % 1000000,
            st->unpriced);

    p = ngx_sprintf(p, "\"lookup_latency_us\":{\"count\":%ui,\"p50\":%ui,"
                       "\"p90\":%ui,\"p99\":%ui}}\n",
                    lat, ngx_http_smartflow_cache_percentile(st, lat, 500),
                    ngx_http_smartflow_cache_percentile(st, lat, 900),
                    ngx_http_smartflow_cache_percentile(st, lat, 990));

    body.len = p - body.data;

    rc = ngx_http_smartflow_send(r, NGX_HTTP_OK, NGX_HTTP_SMARTFLOW_JSON,
                                 &body);
    return rc;
}


/* the upper bound of the bucket the percentile falls in, microseconds */
static ngx_uint_t
ngx_http_smartflow_cache_percentile(ngx_smartflow_cache_stats_t *st,
    ngx_uint_t total, ngx_uint_t per)
{
    ngx_uint_t  i, seen, want;

    if (total == 0) {
        return 0;
    }

    want = (total * per + 999) / 1000;
    seen = 0;

    for (i = 0; i < NGX_SMARTFLOW_CACHE_LAT; i++) {
        seen += st->latency[i];

        if (seen >= want) {
            return (ngx_uint_t) 2 << i;
        }
    }

    return (ngx_uint_t) 1 << NGX_SMARTFLOW_CACHE_LAT;
}


/*
 * The zone's entries go at once; with smartflow_redis (and
 * smartflow_cache_redis on in the API's location), those in Redis follow,
 * and the request is answered when Redis has flushed them.
 */
static ngx_int_t
ngx_http_smartflow_cache_api_flush(ngx_http_request_t *r,
    ngx_smartflow_cache_zone_t *z)
{
    u_char                               *dst, *src;
    ngx_int_t                             rc;
    ngx_str_t                             arg, tenant, part[2];
    ngx_uint_t                            n, nparts;
    ngx_http_smartflow_cache_loc_conf_t  *clcf;

    nparts = 0;
    ngx_str_null(&tenant);

    if (ngx_http_arg(r, (u_char *) "tenant", 6, &arg) != NGX_OK) {
        ngx_http_smartflow_cache_flush_begin(z);
        n = ngx_smartflow_cache_flush(z, NULL);

    } else {
        /* the name as the team or key has it: "ml%20team" is "ml team" */
        if (arg.len) {
            tenant.data = ngx_pnalloc(r->pool, arg.len);
            if (tenant.data == NULL) {
                goto no_memory;
            }

            dst = tenant.data;
            src = arg.data;
            ngx_unescape_uri(&dst, &src, arg.len, 0);
            tenant.len = dst - tenant.data;
        }

        if (tenant.len == 0 || tenant.len > 256) {
            return ngx_http_smartflow_cache_api_error(r,
                       NGX_HTTP_BAD_REQUEST, "invalid_request_error",
                       "invalid_tenant",
                       "tenant= names a team or a key id (vk_N).");
        }

        /* a team's partition, and a key's (teamless keys, partition key) */
        part[0].data = ngx_pnalloc(r->pool, 2 * (tenant.len + 8));
        if (part[0].data == NULL) {
            goto no_memory;
        }

        part[0].len = ngx_sprintf(part[0].data, "team:%V", &tenant)
                      - part[0].data;
        part[1].data = part[0].data + part[0].len;
        part[1].len = ngx_sprintf(part[1].data, "key:%V", &tenant)
                      - part[1].data;
        nparts = 2;

        ngx_http_smartflow_cache_flush_begin(z);
        n = ngx_smartflow_cache_flush(z, &part[0]);
        n += ngx_smartflow_cache_flush(z, &part[1]);
    }

    ngx_log_error(NGX_LOG_NOTICE, r->connection->log, 0,
                  "smartflow cache: flushed %ui entries of zone \"%V\"",
                  n, &z->name);

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_smartflow_cache_module);

    if (clcf->redis) {
        rc = ngx_http_smartflow_cache_redis_flush(r, z,
                                                  nparts ? &tenant : NULL,
                                                  part, nparts, n);

        if (rc == NGX_DONE) {
            /* it ends when Redis has answered every UNLINK */
            return rc;
        }

        if (rc != NGX_DECLINED) {
            ngx_http_smartflow_cache_flush_end(z);
            return rc;
        }
    }

    ngx_http_smartflow_cache_flush_end(z);

    return ngx_http_smartflow_cache_api_flushed(r, z, n, 0, NULL, NULL, 0);

no_memory:

    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "smartflow cache: no memory for the flush of zone \"%V\"; "
                  "nothing flushed", &z->name);

    return ngx_http_smartflow_cache_api_no_memory(r);
}


/*
 * {"flushed":N} for the zone, and "redis":{"flushed":M} with Redis; when
 * Redis failed on the way, or the walk took the API's flush_timeout, a
 * 503 that says what was flushed all the same.
 */
ngx_int_t
ngx_http_smartflow_cache_api_flushed(ngx_http_request_t *r,
    ngx_smartflow_cache_zone_t *z, ngx_uint_t local, ngx_uint_t shared,
    ngx_str_t *redis, char *why, ngx_uint_t timed_out)
{
    u_char     *p;
    char       *code, *next;
    ngx_str_t   body;

    p = ngx_pnalloc(r->pool, 512 + (redis ? redis->len : 0)
                             + (why ? ngx_strlen(why) : 0));
    if (p == NULL) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "smartflow cache: no memory for the answer to the "
                      "flush of zone \"%V\" (%ui entries flushed in the "
                      "zone, %ui in redis%s%s)", &z->name, local, shared,
                      why ? ", which " : "", why ? why : "");
        return ngx_http_smartflow_cache_api_no_memory(r);
    }

    body.data = p;

    if (redis == NULL) {
        p = ngx_sprintf(p, "{\"flushed\":%ui}\n", local);

    } else if (why == NULL) {
        ngx_log_error(NGX_LOG_NOTICE, r->connection->log, 0,
                      "smartflow cache: flushed %ui entries of zone \"%V\" "
                      "in redis %V", shared, &z->name, redis);

        p = ngx_sprintf(p, "{\"flushed\":%ui,\"redis\":{\"flushed\":%ui,"
                           "\"complete\":true}}\n", local, shared);

    } else {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "smartflow cache: redis %V %s: the flush of zone "
                      "\"%V\" is partial (%ui entries in the zone, %ui in "
                      "redis)", redis, why, &z->name, local, shared);

        if (timed_out) {
            code = "redis_flush_timeout";
            next = "Flush again to go on.";

        } else {
            code = "redis_unavailable";
            next = "Try again when Redis answers.";
        }

        /* the reason is ours or Redis's error line: no quote in it */
        p = ngx_sprintf(p, "{\"error\":{\"message\":\"Redis %V %s: this "
                           "node's cache was flushed (%ui entries), the "
                           "shared entries in Redis only in part (%ui). "
                           "%s\",\"type\":\"server_error\",\"param\":null,"
                           "\"code\":\"%s\"},"
                           "\"flushed\":%ui,\"redis\":{\"flushed\":%ui,"
                           "\"complete\":false}}\n",
                        redis, why, local, shared, next, code, local, shared);
    }

    body.len = p - body.data;

    return ngx_http_smartflow_send(r, why ? NGX_HTTP_SERVICE_UNAVAILABLE
                                          : NGX_HTTP_OK,
                                   NGX_HTTP_SMARTFLOW_JSON, &body);
}


/* the zones' counters in Prometheus text, for the metrics endpoint */

typedef struct {
    char                       *name;
    char                       *help;
    size_t                      offset;     /* in the zone's stats */
} ngx_http_smartflow_cache_counter_t;


#define ngx_sf_stat(field)  offsetof(ngx_smartflow_cache_stats_t, field)

static ngx_http_smartflow_cache_counter_t  ngx_http_smartflow_cache_counters[]
    = {
    { "lookups_total", "Requests looked up.", ngx_sf_stat(lookups) },
    { "misses_total", "Lookups that found nothing.", ngx_sf_stat(misses) },
    { "bypasses_total", "Requests not looked up (controls, n above 1).",
      ngx_sf_stat(bypasses) },
    { "stores_total", "Answers stored.", ngx_sf_stat(stores) },
    { "evictions_total", "Entries evicted to make room.",
      ngx_sf_stat(evictions) },
    { "expired_total", "Entries gone at their TTL.", ngx_sf_stat(expired) },
    { "rejected_total", "Candidates the verification turned down.",
      ngx_sf_stat(rejected) },
    { "unpriced_hits_total", "Hits whose model has no smartflow_price.",
      ngx_sf_stat(unpriced) },
    { NULL, NULL, 0 }
};


#define ngx_sf_family(p, name, type, help)                                   \
    ngx_sf_cpymem(p, "# HELP smartflow_metacache_" name " " help "\n"        \
                     "# TYPE smartflow_metacache_" name " " type "\n")


ngx_int_t
ngx_http_smartflow_cache_metrics(ngx_http_request_t *r, ngx_str_t *text)
{
    u_char                                *p;
    size_t                                 len, *used;
    ngx_str_t                             *zone;
    ngx_uint_t                             i, k, nz, pfree, pages, entries;
    ngx_smartflow_cache_zone_t           **zp, *z;
    ngx_smartflow_cache_stats_t           *st;
    ngx_http_smartflow_cache_counter_t    *cnt;
    ngx_http_smartflow_cache_main_conf_t  *cmcf;

    ngx_str_null(text);

    cmcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_cache_module);

    if (cmcf == NULL || cmcf->zones.nelts == 0) {
        return NGX_OK;
    }

    nz = cmcf->zones.nelts;
    zp = cmcf->zones.elts;

    zone = ngx_palloc(r->pool, nz * (sizeof(ngx_str_t) + sizeof(size_t)));
    if (zone == NULL) {
        return NGX_ERROR;
    }

    used = (size_t *) &zone[nz];

    /* each zone's label, escaped */
    len = 0;

    for (i = 0; i < nz; i++) {
        zone[i].data = ngx_pnalloc(r->pool, 2 * zp[i]->name.len);
        if (zone[i].data == NULL) {
            return NGX_ERROR;
        }

        zone[i].len = ngx_http_smartflow_metrics_label(zone[i].data,
                                                       &zp[i]->name)
                      - zone[i].data;
        len += zone[i].len;
    }

    /* 16 families of at most 4 samples a zone, each under 128 bytes */
    len = 16 * 192 + 16 * 4 * (len + nz * 128);

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    text->data = p;

    p = ngx_sf_family(p, "entries", "gauge", "Entries in the zone.");

    for (i = 0; i < nz; i++) {
        z = zp[i];

        ngx_shmtx_lock(&z->shpool->mutex);
        entries = z->sh->used;
        pfree = z->shpool->pfree;
        ngx_shmtx_unlock(&z->shpool->mutex);

        p = ngx_sprintf(p, "smartflow_metacache_entries{zone=\"%V\"} %ui\n",
                        &zone[i], entries);

        /* for the memory family below */
        pages = (z->shm_zone->shm.size - sizeof(ngx_slab_pool_t))
                / ngx_pagesize;
        used[i] = (pages - pfree) * ngx_pagesize;
    }

    p = ngx_sf_family(p, "capacity_entries", "gauge",
                      "Entries the zone can hold (entries=).");

    for (i = 0; i < nz; i++) {
        p = ngx_sprintf(p, "smartflow_metacache_capacity_entries"
                           "{zone=\"%V\"} %ui\n", &zone[i], zp[i]->capacity);
    }

    p = ngx_sf_family(p, "memory_bytes", "gauge",
                      "The zone's shared memory: its size and the part "
                      "in use.");

    for (i = 0; i < nz; i++) {
        p = ngx_sprintf(p, "smartflow_metacache_memory_bytes"
                           "{zone=\"%V\",type=\"size\"} %uz\n"
                           "smartflow_metacache_memory_bytes"
                           "{zone=\"%V\",type=\"used\"} %uz\n",
                        &zone[i], zp[i]->shm_zone->shm.size,
                        &zone[i], used[i]);
    }

    p = ngx_sf_family(p, "hits_total", "counter",
                      "Hits by phase: 1 fingerprint, 2 near miss, "
                      "3 Redis, 4 vectors.");

    for (i = 0; i < nz; i++) {
        st = &zp[i]->sh->stats;

        for (k = 1; k <= 4; k++) {
            p = ngx_sprintf(p, "smartflow_metacache_hits_total"
                               "{zone=\"%V\",phase=\"%ui\"} %uA\n",
                            &zone[i], k, st->hits[k]);
        }
    }

    for (cnt = ngx_http_smartflow_cache_counters; cnt->name; cnt++) {
        p = ngx_sprintf(p, "# HELP smartflow_metacache_%s %s\n"
                           "# TYPE smartflow_metacache_%s counter\n",
                        cnt->name, cnt->help, cnt->name);

        for (i = 0; i < nz; i++) {
            p = ngx_sprintf(p, "smartflow_metacache_%s{zone=\"%V\"} %uA\n",
                            cnt->name, &zone[i],
                            *(ngx_atomic_t *) ((u_char *) &zp[i]->sh->stats
                                               + cnt->offset));
        }
    }

    p = ngx_sf_family(p, "tokens_saved_total", "counter",
                      "Tokens of the stored answers served, by type.");

    for (i = 0; i < nz; i++) {
        st = &zp[i]->sh->stats;

        p = ngx_sprintf(p, "smartflow_metacache_tokens_saved_total"
                           "{zone=\"%V\",type=\"prompt\"} %uA\n"
                           "smartflow_metacache_tokens_saved_total"
                           "{zone=\"%V\",type=\"completion\"} %uA\n",
                        &zone[i], st->prompt_saved,
                        &zone[i], st->completion_saved);
    }

    p = ngx_sf_family(p, "cost_saved_usd_total", "counter",
                      "Those tokens at the smartflow_price of the model "
                      "asked for, in USD.");

    for (i = 0; i < nz; i++) {
        st = &zp[i]->sh->stats;

        p = ngx_sprintf(p, "smartflow_metacache_cost_saved_usd_total"
                           "{zone=\"%V\"} %uA.%06uA\n",
                        &zone[i], st->cost_saved / 1000000,
                        st->cost_saved % 1000000);
    }

    text->len = p - text->data;

    return NGX_OK;
}
