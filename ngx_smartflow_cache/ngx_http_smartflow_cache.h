/*
 * The cache module's own declarations, shared by its files: the zone
 * (entries in a hash table by fingerprint, an LRU queue, entries grouped by
 * conversation context, one vector slot per entry), the worker's FAISS
 * index kept in step with the zone's vectors, the request state between
 * the lookup and the store, and the configuration.
 */

#ifndef _NGX_HTTP_SMARTFLOW_CACHE_H_INCLUDED_
#define _NGX_HTTP_SMARTFLOW_CACHE_H_INCLUDED_


#include "ngx_http_smartflow_proxy.h"
#include "ngx_smartflow_cache_text.h"


#define NGX_SMARTFLOW_CACHE_FP       32     /* SHA-256 */
#define NGX_SMARTFLOW_CACHE_CTXK     16
#define NGX_SMARTFLOW_CACHE_RING     4096   /* vectors added, by sequence */
#define NGX_SMARTFLOW_CACHE_SCAN     512    /* near-miss: newest per context */
#define NGX_SMARTFLOW_CACHE_LARGE    ((ngx_uint_t) -1)
#define NGX_SMARTFLOW_CACHE_LAT      24     /* latency buckets, 2^i us */
#define NGX_SMARTFLOW_CACHE_FINISH   16

#define NGX_SMARTFLOW_CACHE_INDEX_AUTO  0
#define NGX_SMARTFLOW_CACHE_INDEX_FLAT  1
#define NGX_SMARTFLOW_CACHE_INDEX_HNSW  2
#define NGX_SMARTFLOW_CACHE_INDEX_IVF   3

#define NGX_SMARTFLOW_CACHE_PART_TEAM    0
#define NGX_SMARTFLOW_CACHE_PART_KEY     1
#define NGX_SMARTFLOW_CACHE_PART_SHARED  2


typedef struct ngx_smartflow_cache_group_s  ngx_smartflow_cache_group_t;
typedef struct ngx_http_smartflow_cache_embedder_s
    ngx_http_smartflow_cache_embedder_t;


typedef struct ngx_smartflow_cache_node_s  ngx_smartflow_cache_node_t;


struct ngx_smartflow_cache_node_s {
    ngx_smartflow_cache_node_t *next;       /* in its fingerprint's bucket */
    ngx_queue_t                 lru;
    ngx_queue_t                 group_link;
    ngx_smartflow_cache_group_t *group;
    u_char                      fp[NGX_SMARTFLOW_CACHE_FP];
    time_t                      created;
    time_t                      expire;
    uint32_t                    slot;
    uint32_t                    prompt_tokens;
    uint32_t                    completion_tokens;
    uint32_t                    hits;
    uint32_t                    part_len;
    uint32_t                    query_len;      /* 0: exact match only */
    uint32_t                    answer_len;
    u_char                      finish[NGX_SMARTFLOW_CACHE_FINISH];
    uint32_t                    minhash[NGX_SMARTFLOW_CACHE_MINHASH];
    u_char                      data[1];    /* partition, query, answer */
};


struct ngx_smartflow_cache_group_s {
    ngx_smartflow_cache_group_t *next;      /* in its context key's bucket */
    ngx_queue_t                 entries;    /* newest first */
    u_char                      key[NGX_SMARTFLOW_CACHE_CTXK];
    ngx_uint_t                  count;
};


/* a slot's vector is at sh->vecs + slot * dim: ngx_sf_cache_vec() */
typedef struct {
    ngx_smartflow_cache_node_t *node;       /* NULL: free */
    uint32_t                    version;    /* bumped at each reuse */
    uint32_t                    next_free;
} ngx_smartflow_cache_slot_t;


typedef struct {
    uint32_t                    slot;
    uint32_t                    version;
} ngx_smartflow_cache_ref_t;


typedef struct {
    ngx_atomic_t                lookups;
    ngx_atomic_t                hits[5];        /* by phase, 1-4 */
    ngx_atomic_t                misses;
    ngx_atomic_t                bypasses;
    ngx_atomic_t                stores;
    ngx_atomic_t                evictions;
    ngx_atomic_t                expired;
    ngx_atomic_t                rejected;       /* by the verification */
    ngx_atomic_t                tokens_saved;
    ngx_atomic_t                latency[NGX_SMARTFLOW_CACHE_LAT];
    ngx_atomic_t                redis_down;     /* phase 3: logged once */
    ngx_atomic_t                prompt_saved;   /* tokens of the hits */
    ngx_atomic_t                completion_saved;
    ngx_atomic_t                cost_saved;     /* micro-USD */
    ngx_atomic_t                unpriced;       /* hits with no price */
} ngx_smartflow_cache_stats_t;


/* a process with flushes going on, and how many */
typedef struct {
    ngx_pid_t                   pid;
    ngx_uint_t                  n;
} ngx_smartflow_cache_flusher_t;

#define NGX_SMARTFLOW_CACHE_FLUSHERS  32


typedef struct {
    ngx_smartflow_cache_node_t **entries;      /* hash by fingerprint */
    ngx_smartflow_cache_group_t **groups;       /* hash by context key */
    uint32_t                    mask;           /* buckets - 1 */
    ngx_queue_t                 lru;
    ngx_smartflow_cache_slot_t *slots;
    float                      *vecs;           /* capacity x dim */
    uint32_t                    dim;
    uint32_t                    capacity;
    uint32_t                    used;
    uint32_t                    free;           /* first free slot */
    uint64_t                    epoch;          /* tells zones apart */
    uint64_t                    seq;            /* vectors added so far */
    ngx_smartflow_cache_ref_t   ring[NGX_SMARTFLOW_CACHE_RING];
    ngx_smartflow_cache_stats_t stats;

    /* flushes other nodes tell through Redis: ..._cache_redis.c */
    u_char                      flush_last[48]; /* stream id read up to */
    ngx_atomic_t                flush_poll;     /* next poll, msec */

    /* the inverted file's centres, the same for every worker */
    float                      *ivf_centres;    /* IVF_LISTS x dim */
    uint32_t                    ivf_n;          /* centres picked */
    uint32_t                    ivf_gen;        /* each picking, from 1 */
    uint64_t                    ivf_seq;        /* seq at the last one */

    /* flushes begun or ended, and going on, by whom: ..._cache_redis.c */
    ngx_atomic_t                flushes;
    ngx_atomic_t                flushing;
    ngx_smartflow_cache_flusher_t  flushers[NGX_SMARTFLOW_CACHE_FLUSHERS];
} ngx_smartflow_cache_shctx_t;


typedef struct {
    ngx_smartflow_cache_shctx_t *sh;
    ngx_slab_pool_t            *shpool;
    ngx_shm_zone_t             *shm_zone;
    ngx_str_t                   name;
    ngx_uint_t                  capacity;       /* entries= */
    ngx_uint_t                  dim;            /* dim=, as the zone has */
    ngx_uint_t                  index;          /* index= */
    ngx_str_t                   snapshot;       /* snapshot=, or empty */
    ngx_uint_t                  snapshot_read;  /* by this zone's start */
    ngx_array_t                 embedders;      /* ngx_str_t, each once */
    ngx_str_t                   embedder;       /* them all, for snapshots */

    /* this worker's FAISS index over the zone's vectors */
    void                       *faiss;
    ngx_smartflow_cache_ref_t  *labels;         /* by FAISS label */
    size_t                      nlabels;
    size_t                      labels_size;
    uint64_t                    epoch;
    uint64_t                    seq;
    size_t                      rebuild;        /* slots indexed, in order */
    size_t                      stride;         /* ... the order's step */
    uint32_t                    ivf_gen;        /* the zone's centres used */
    float                      *batch_vecs;     /* kept for each sync */
    ngx_smartflow_cache_ref_t  *batch_refs;
} ngx_smartflow_cache_zone_t;


#define ngx_sf_cache_vec(z, slot)                                            \
    ((z)->sh->vecs + (size_t) (slot) * (z)->dim)


/* what a lookup found, copied out of the zone */
typedef struct {
    ngx_str_t                   answer;
    ngx_str_t                   finish;
    ngx_str_t                   query;
    u_char                      fp[NGX_SMARTFLOW_CACHE_FP];
    ngx_uint_t                  similarity;     /* per mille */
    ngx_uint_t                  prompt_tokens;
    ngx_uint_t                  completion_tokens;
} ngx_smartflow_cache_found_t;


/* what is stored */
typedef struct {
    u_char                      fp[NGX_SMARTFLOW_CACHE_FP];
    u_char                      ctxk[NGX_SMARTFLOW_CACHE_CTXK];
    ngx_str_t                   partition;
    ngx_str_t                   query;          /* empty: exact only */
    ngx_str_t                   answer;
    ngx_str_t                   finish;
    uint32_t                   *minhash;
    float                      *vec;            /* NULL: exact only */
    time_t                      ttl;
    ngx_uint_t                  prompt_tokens;
    ngx_uint_t                  completion_tokens;
} ngx_smartflow_cache_item_t;


typedef struct {
    ngx_smartflow_cache_zone_t *zone;           /* NULL: off */
    time_t                      ttl;
    ngx_int_t                   near_miss;      /* per mille, < 0 off */
    ngx_int_t                   similarity;     /* per mille, < 0 off */
    ngx_uint_t                  partition;
    size_t                      max_size;
    ngx_flag_t                  api;
    ngx_msec_t                  flush_timeout;  /* of the walk of Redis */
    ngx_flag_t                  redis;          /* phase 3 */
    ngx_http_smartflow_cache_embedder_t  *embedder;  /* NULL: builtin */
} ngx_http_smartflow_cache_loc_conf_t;


typedef struct {
    ngx_array_t                 zones;          /* zone_t * */
} ngx_http_smartflow_cache_main_conf_t;


/* one request, from its lookup to the store of its answer */
typedef struct {
    ngx_smartflow_cache_zone_t *zone;
    ngx_smartflow_cache_item_t  item;
    uint32_t                    minhash[NGX_SMARTFLOW_CACHE_MINHASH];
    float                      *vec;            /* zone->dim floats */
    ngx_smartflow_cache_text_t  text;           /* the query's tokens */
    u_char                     *buf;            /* the answer as sent */
    size_t                      len;
    size_t                      size;
    size_t                      max_size;
    unsigned                    store:1;
    unsigned                    failed:1;
    unsigned                    features:1;     /* text, minhash, vec */

    /* phase 3, Redis: ngx_http_smartflow_cache_redis.c */
    ngx_smartflow_cache_found_t shared;         /* what Redis held */
    struct timeval              start;          /* of the lookup */
    void                       *ticket;         /* while Redis is asked */
    ngx_atomic_uint_t           flushes;        /* the zone's, when asked */
    unsigned                    redis:1;        /* smartflow_cache_redis */
    unsigned                    redis_done:1;   /* asked, or skipped */
    unsigned                    redis_hit:1;

    /* phase 4's embedding from an endpoint: ..._cache_embed.c */
    ngx_http_smartflow_cache_embedder_t  *embedder;
    void                       *embed;
} ngx_http_smartflow_cache_req_t;


extern ngx_module_t  ngx_http_smartflow_cache_module;


/* zone: ngx_http_smartflow_cache_zone.c */
ngx_int_t ngx_smartflow_cache_init_zone(ngx_shm_zone_t *shm_zone, void *data);
ngx_int_t ngx_smartflow_cache_exact(ngx_smartflow_cache_zone_t *z,
    ngx_pool_t *pool, u_char *fp, ngx_smartflow_cache_found_t *f);
void ngx_smartflow_cache_prefetch(ngx_smartflow_cache_zone_t *z,
    u_char *ctxk);
ngx_uint_t ngx_smartflow_cache_context_size(ngx_smartflow_cache_zone_t *z,
    u_char *ctxk);
ngx_uint_t ngx_smartflow_cache_near(ngx_smartflow_cache_zone_t *z,
    ngx_pool_t *pool, u_char *ctxk, uint32_t *sig, ngx_uint_t threshold,
    ngx_smartflow_cache_found_t *cand);
ngx_uint_t ngx_smartflow_cache_refs(ngx_smartflow_cache_zone_t *z,
    ngx_pool_t *pool, u_char *ctxk, ngx_smartflow_cache_ref_t *refs,
    float *scores, ngx_uint_t n, ngx_smartflow_cache_found_t *cand);
ngx_uint_t ngx_smartflow_cache_scan(ngx_smartflow_cache_zone_t *z,
    u_char *ctxk, float *vec, ngx_smartflow_cache_ref_t *refs, float *scores,
    ngx_uint_t k);
ngx_int_t ngx_smartflow_cache_insert(ngx_smartflow_cache_zone_t *z,
    ngx_smartflow_cache_item_t *it, ngx_log_t *log);
ngx_uint_t ngx_smartflow_cache_flush(ngx_smartflow_cache_zone_t *z,
    ngx_str_t *partition);
ngx_uint_t ngx_smartflow_cache_remove(ngx_smartflow_cache_zone_t *z,
    u_char *fp);
void ngx_smartflow_cache_latency(ngx_smartflow_cache_zone_t *z,
    ngx_msec_int_t us);

/* snapshot file: ngx_http_smartflow_cache_snapshot.c */
ngx_int_t ngx_smartflow_cache_snapshot_write(ngx_smartflow_cache_zone_t *z,
    ngx_log_t *log);
ngx_int_t ngx_smartflow_cache_snapshot_read(ngx_smartflow_cache_zone_t *z,
    ngx_log_t *log);
void ngx_smartflow_cache_snapshot_done(ngx_cycle_t *cycle);

/* worker's vector index: ngx_http_smartflow_cache_vector.c */
ngx_int_t ngx_smartflow_cache_vector_search(ngx_smartflow_cache_zone_t *z,
    ngx_log_t *log, u_char *ctxk, float *vec, ngx_smartflow_cache_ref_t *refs,
    float *scores, ngx_uint_t k);
/* the shim's inner product (AVX2 where the CPU has it) */
float ngx_smartflow_faiss_dot(const float *a, const float *b, size_t d);
/* the index the workers build for the zone: index=, or auto's choice */
ngx_uint_t ngx_smartflow_cache_index_kind(ngx_smartflow_cache_zone_t *z);
const char *ngx_smartflow_cache_index_name(ngx_smartflow_cache_zone_t *z);
void ngx_smartflow_cache_vector_free(ngx_smartflow_cache_zone_t *z);

/* admin API: ngx_http_smartflow_cache_api.c */
ngx_int_t ngx_http_smartflow_cache_api_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_smartflow_cache_api_no_memory(ngx_http_request_t *r);
ngx_int_t ngx_http_smartflow_cache_api_flushed(ngx_http_request_t *r,
    ngx_smartflow_cache_zone_t *z, ngx_uint_t local, ngx_uint_t shared,
    ngx_str_t *redis, char *why, ngx_uint_t timed_out);
ngx_int_t ngx_http_smartflow_cache_metrics(ngx_http_request_t *r,
    ngx_str_t *text);

/* the answer: ngx_http_smartflow_cache_store.c */
ngx_int_t ngx_http_smartflow_cache_tap(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, u_char *p, size_t len, ngx_uint_t last);
ngx_int_t ngx_http_smartflow_cache_serve(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_smartflow_cache_found_t *f);
ngx_http_smartflow_cache_req_t *ngx_http_smartflow_cache_req(
    ngx_http_request_t *r, ngx_uint_t create);

/* phase 3, Redis shared by nodes: ngx_http_smartflow_cache_redis.c */
ngx_int_t ngx_http_smartflow_cache_redis_get(ngx_http_request_t *r,
    ngx_http_smartflow_cache_req_t *rq, struct timeval *start);
ngx_int_t ngx_http_smartflow_cache_redis_found(ngx_http_request_t *r,
    ngx_http_smartflow_cache_req_t *rq, ngx_smartflow_cache_found_t *f);
void ngx_http_smartflow_cache_redis_set(ngx_http_request_t *r,
    ngx_http_smartflow_cache_req_t *rq);
void ngx_http_smartflow_cache_redis_del(ngx_http_request_t *r,
    ngx_http_smartflow_cache_req_t *rq);
ngx_int_t ngx_http_smartflow_cache_redis_flush(ngx_http_request_t *r,
    ngx_smartflow_cache_zone_t *z, ngx_str_t *tenant, ngx_str_t *parts,
    ngx_uint_t nparts, ngx_uint_t local);
void ngx_http_smartflow_cache_redis_watch(ngx_cycle_t *cycle);
void ngx_http_smartflow_cache_flush_begin(ngx_smartflow_cache_zone_t *z);
void ngx_http_smartflow_cache_flush_end(ngx_smartflow_cache_zone_t *z);
void ngx_http_smartflow_cache_flush_reap(ngx_smartflow_cache_zone_t *z,
    ngx_log_t *log);

/* the /v1/embeddings embedder: ngx_http_smartflow_cache_embed.c */
ngx_int_t ngx_http_smartflow_cache_embed(ngx_http_request_t *r,
    ngx_http_smartflow_cache_req_t *rq, struct timeval *start);
void ngx_http_smartflow_cache_embed_skip(ngx_http_smartflow_cache_req_t *rq);
char *ngx_http_smartflow_cache_embedder(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_smartflow_cache_embedder_check(ngx_conf_t *cf,
    ngx_http_smartflow_cache_embedder_t *em, ngx_smartflow_cache_zone_t *z);
ngx_int_t ngx_http_smartflow_cache_embedder_note(ngx_conf_t *cf,
    ngx_http_smartflow_cache_embedder_t *em, ngx_smartflow_cache_zone_t *z);
ngx_int_t ngx_http_smartflow_cache_embedder_names(ngx_conf_t *cf,
    ngx_smartflow_cache_zone_t *z);
ngx_int_t ngx_http_smartflow_cache_embed_filters(ngx_conf_t *cf);


#endif /* _NGX_HTTP_SMARTFLOW_CACHE_H_INCLUDED_ */
