/*
 * The MetaCache: directives and configuration, the lookup stage of the
 * pipeline (after the policy, so it keys on what the policy let through)
 * and the response headers.  A lookup tries, in order: 1 the normalised
 * fingerprint of the whole request, exact, in the zone; 2 a near miss,
 * MinHash over the query's words against the entries of the same
 * conversation context; 3 the fingerprint in Redis, shared by nodes
 * (ngx_http_smartflow_cache_redis.c); 4 the query's embedding (builtin,
 * or from a /v1/embeddings endpoint: ngx_http_smartflow_cache_embed.c)
 * searched with FAISS.  Phases 3 and the endpoint make the stage wait
 * (NGX_AGAIN); the pipeline runs it again with their answer.  Phases 2
 * and 4 hand their candidates to the verification before they are
 * served.
 * The answer is stored by a response tap (ngx_http_smartflow_cache_store.c).
 *
 * FAISS runs on one OpenMP thread per worker: workers are the unit of
 * parallelism.  The module checks at start-up that FAISS answers a known
 * query correctly.
 */

#include <omp.h>

#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/index_factory_c.h>

#include "ngx_http_smartflow_cache.h"


typedef struct {
    ngx_str_t                   context;        /* system, earlier turns */
    ngx_str_t                   params;
    ngx_str_t                   query;          /* last user message */
    ngx_str_t                   query_raw;      /* non-text parts: JSON */
} ngx_http_smartflow_cache_canon_t;


static ngx_int_t ngx_http_smartflow_cache_stage(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx);
static ngx_int_t ngx_http_smartflow_cache_controls(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_uint_t *lookup, ngx_uint_t *store,
    ngx_uint_t *refresh, time_t *ttl);
static ngx_int_t ngx_http_smartflow_cache_canon(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_http_smartflow_cache_canon_t *cn);
static ngx_int_t ngx_http_smartflow_cache_text(ngx_pool_t *pool,
    ngx_smartflow_json_t *content, ngx_str_t *text, ngx_uint_t *plain);
static ngx_int_t ngx_http_smartflow_cache_keys(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_http_smartflow_cache_loc_conf_t *clcf,
    ngx_http_smartflow_cache_req_t *rq);
static ngx_int_t ngx_http_smartflow_cache_ctxk(u_char *p, size_t len,
    u_char *digest);
static ngx_int_t ngx_http_smartflow_cache_features(ngx_http_request_t *r,
    ngx_http_smartflow_cache_req_t *rq);
static ngx_int_t ngx_http_smartflow_cache_candidates(ngx_http_request_t *r,
    ngx_http_smartflow_cache_req_t *rq, ngx_smartflow_cache_found_t *cand,
    ngx_uint_t n, ngx_smartflow_cache_found_t *f);
static ngx_int_t ngx_http_smartflow_cache_hit(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_http_smartflow_cache_req_t *rq,
    ngx_smartflow_cache_found_t *f, ngx_uint_t phase, struct timeval *start);
static void ngx_http_smartflow_cache_took(ngx_smartflow_cache_zone_t *z,
    struct timeval *start);
static ngx_int_t ngx_http_smartflow_cache_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_smartflow_cache_add_header(ngx_http_request_t *r,
    char *key, u_char *value, size_t len);

static void *ngx_http_smartflow_cache_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_smartflow_cache_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_smartflow_cache_merge_loc_conf(ngx_conf_t *cf,
    void *parent, void *child);
static char *ngx_http_smartflow_cache_zone(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_smartflow_cache(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_smartflow_cache_threshold(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_smartflow_cache_api(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_smartflow_cache_ttl_check(ngx_conf_t *cf, void *post,
    void *data);
static ngx_int_t ngx_http_smartflow_cache_init(ngx_conf_t *cf);
static ngx_int_t ngx_http_smartflow_cache_init_module(ngx_cycle_t *cycle);
static ngx_int_t ngx_http_smartflow_cache_init_process(ngx_cycle_t *cycle);
static void ngx_http_smartflow_cache_exit_process(ngx_cycle_t *cycle);
static void ngx_http_smartflow_cache_exit_master(ngx_cycle_t *cycle);


/* the longest context whose key's digest a worker remembers */
#define NGX_HTTP_SMARTFLOW_CACHE_MEMO  512


/* the fields of a request that change its answer, besides the messages */
#define NGX_HTTP_SMARTFLOW_CACHE_NPARAMS  25

static ngx_str_t  ngx_http_smartflow_cache_params[] = {
    ngx_string("temperature"), ngx_string("top_p"), ngx_string("top_k"),
    ngx_string("max_tokens"), ngx_string("max_completion_tokens"),
    ngx_string("stop"), ngx_string("stop_sequences"), ngx_string("seed"),
    ngx_string("response_format"), ngx_string("tools"),
    ngx_string("tool_choice"), ngx_string("functions"),
    ngx_string("function_call"), ngx_string("presence_penalty"),
    ngx_string("frequency_penalty"), ngx_string("logit_bias"),
    ngx_string("logprobs"), ngx_string("top_logprobs"),
    ngx_string("reasoning_effort"), ngx_string("thinking"),
    ngx_string("modalities"), ngx_string("audio"), ngx_string("prediction"),
    ngx_string("parallel_tool_calls"), ngx_string("verbosity")
};


static ngx_conf_post_handler_pt  ngx_http_smartflow_cache_ttl_post =
    ngx_http_smartflow_cache_ttl_check;


static ngx_conf_enum_t  ngx_http_smartflow_cache_partitions[] = {
    { ngx_string("team"), NGX_SMARTFLOW_CACHE_PART_TEAM },
    { ngx_string("key"), NGX_SMARTFLOW_CACHE_PART_KEY },
    { ngx_string("shared"), NGX_SMARTFLOW_CACHE_PART_SHARED },
    { ngx_null_string, 0 }
};


static ngx_command_t  ngx_http_smartflow_cache_commands[] = {

    { ngx_string("smartflow_cache_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_2MORE,
      ngx_http_smartflow_cache_zone,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("smartflow_cache"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_smartflow_cache,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("smartflow_cache_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_smartflow_cache_loc_conf_t, ttl),
      &ngx_http_smartflow_cache_ttl_post },

    { ngx_string("smartflow_cache_near_miss"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_smartflow_cache_threshold,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_smartflow_cache_loc_conf_t, near_miss),
      NULL },

    { ngx_string("smartflow_cache_similarity"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_smartflow_cache_threshold,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_smartflow_cache_loc_conf_t, similarity),
      NULL },

    { ngx_string("smartflow_cache_partition"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_smartflow_cache_loc_conf_t, partition),
      &ngx_http_smartflow_cache_partitions },

    { ngx_string("smartflow_cache_max_size"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_smartflow_cache_loc_conf_t, max_size),
      NULL },

    { ngx_string("smartflow_cache_redis"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_smartflow_cache_loc_conf_t, redis),
      NULL },

    { ngx_string("smartflow_cache_embedder"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_smartflow_cache_embedder,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("smartflow_cache_api"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS|NGX_CONF_TAKE1,
      ngx_http_smartflow_cache_api,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_smartflow_cache_module_ctx = {
    NULL,                                  /* preconfiguration */
    ngx_http_smartflow_cache_init,         /* postconfiguration */

    ngx_http_smartflow_cache_create_main_conf,
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_smartflow_cache_create_loc_conf,
    ngx_http_smartflow_cache_merge_loc_conf
};


ngx_module_t  ngx_http_smartflow_cache_module = {
    NGX_MODULE_V1,
    &ngx_http_smartflow_cache_module_ctx,  /* module context */
    ngx_http_smartflow_cache_commands,     /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    ngx_http_smartflow_cache_init_module,  /* init module */
    ngx_http_smartflow_cache_init_process, /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_smartflow_cache_exit_process, /* exit process */
    ngx_http_smartflow_cache_exit_master,  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;


static ngx_int_t
ngx_http_smartflow_cache_stage(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx)
{
    time_t                                ttl;
    ngx_int_t                             rc, similarity;
    ngx_uint_t                            lookup, store, refresh, n, k, i;
    ngx_uint_t                            empty;
    struct timeval                        start;
    ngx_smartflow_cache_ref_t             refs[NGX_SMARTFLOW_CACHE_K];
    ngx_smartflow_cache_zone_t           *z;
    ngx_smartflow_cache_found_t           f, cand[NGX_SMARTFLOW_CACHE_CAND];
    ngx_http_smartflow_cache_req_t       *rq;
    ngx_http_smartflow_cache_loc_conf_t  *clcf;

    float                                 scores[NGX_SMARTFLOW_CACHE_K];

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_smartflow_cache_module);

    if (clcf->zone == NULL || r != r->main
        || (ctx->api != NGX_HTTP_SMARTFLOW_API_CHAT
            && ctx->api != NGX_HTTP_SMARTFLOW_API_MESSAGES))
    {
        return NGX_DECLINED;
    }

    z = clcf->zone;

    rc = ngx_http_smartflow_cache_controls(r, ctx, &lookup, &store, &refresh,
                                           &ttl);
    if (rc != NGX_OK) {
        return rc;
    }

    ngx_str_set(&ctx->cache_status, "BYPASS");

    if (!lookup && !store) {
        (void) ngx_atomic_fetch_add(&z->sh->stats.bypasses, 1);
        return NGX_DECLINED;
    }

    ngx_gettimeofday(&start);
    empty = 0;

    rq = ngx_http_smartflow_cache_req(r, 1);
    if (rq == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rq->redis_done) {
        /* back from Redis */
        start = rq->start;
        goto shared_done;
    }

    rq->zone = z;
    rq->max_size = clcf->max_size;
    rq->item.ttl = ttl ? ttl : clcf->ttl;
    rq->redis = clcf->redis;
    rq->embedder = clcf->embedder;

    rc = ngx_http_smartflow_cache_keys(r, ctx, clcf, rq);

    if (rc == NGX_DECLINED) {
        /* a request the cache does not answer (n > 1, logprobs) */
        (void) ngx_atomic_fetch_add(&z->sh->stats.bypasses, 1);
        return NGX_DECLINED;
    }

    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rq->store = store;

    if (!lookup) {
        (void) ngx_atomic_fetch_add(&z->sh->stats.bypasses, 1);

        if (refresh) {
            /*
             * the request goes on to the provider: the old answer goes
             * now, whether the new one can be stored or not
             */
            ngx_smartflow_cache_remove(z, rq->item.fp);
            ngx_http_smartflow_cache_redis_del(r, rq);
        }

        if (ngx_http_smartflow_cache_features(r, rq) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_http_smartflow_cache_embed_skip(rq);

        return NGX_DECLINED;
    }

    (void) ngx_atomic_fetch_add(&z->sh->stats.lookups, 1);

    /* 1: the normalised fingerprint */
    rc = ngx_smartflow_cache_exact(z, r->pool, rq->item.fp, &f);
    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == NGX_OK) {
        f.similarity = 0;
        return ngx_http_smartflow_cache_hit(r, ctx, rq, &f, 1, &start);
    }

    /* made once, for phases 2 and 4 and for the store */
    if (ngx_http_smartflow_cache_features(r, rq) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rq->item.query.len == 0
        || ngx_smartflow_cache_context_size(z, rq->item.ctxk) == 0)
    {
        /*
         * nothing the verification could accept here; Redis may have it,
         * and phase 4 is skipped too unless the handler is called again
         */
        empty = 1;
        goto shared;
    }

    /* 2: a near miss in the same context */
    if (clcf->near_miss >= 0) {
        n = ngx_smartflow_cache_near(z, r->pool, rq->item.ctxk, rq->minhash,
                                     (ngx_uint_t) clcf->near_miss, cand);

        rc = ngx_http_smartflow_cache_candidates(r, rq, cand, n, &f);
        if (rc == NGX_ERROR) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (rc == NGX_OK) {
            return ngx_http_smartflow_cache_hit(r, ctx, rq, &f, 2, &start);
        }
    }

shared:

    /* 3: the fingerprint in Redis, shared by the nodes */
    if (ngx_http_smartflow_cache_redis_get(r, rq, &start) == NGX_AGAIN) {
        return NGX_AGAIN;
    }

shared_done:

    if (ngx_http_smartflow_cache_redis_found(r, rq, &f) == NGX_OK) {
        return ngx_http_smartflow_cache_hit(r, ctx, rq, &f, 3, &start);
    }

    if (rq->item.query.len == 0) {
        goto miss;
    }

    /* the embedding, from the endpoint when one is configured */
    rc = ngx_http_smartflow_cache_embed(r, rq, &start);

    if (rc == NGX_AGAIN) {
        return NGX_AGAIN;
    }

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc != NGX_OK || empty
        || ngx_smartflow_cache_context_size(z, rq->item.ctxk) == 0)
    {
        goto miss;
    }

    /* 4: the nearest vectors, at the virtual key's threshold if it has one */
    similarity = (clcf->similarity >= 0 && ctx->cache_threshold)
                 ? (ngx_int_t) ctx->cache_threshold : clcf->similarity;

    if (similarity >= 0) {
        k = ngx_smartflow_cache_vector_search(z, r->connection->log,
                                              rq->item.ctxk, rq->vec, refs,
                                              scores, NGX_SMARTFLOW_CACHE_K);

        for (n = 0, i = 0; i < k; i++) {
            if (scores[i] * 1000 + 0.5 >= similarity) {
                refs[n] = refs[i];
                scores[n++] = scores[i];
            }
        }

        n = ngx_smartflow_cache_refs(z, r->pool, rq->item.ctxk, refs, scores,
                                     n, cand);

        rc = ngx_http_smartflow_cache_candidates(r, rq, cand, n, &f);
        if (rc == NGX_ERROR) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (rc == NGX_OK) {
            return ngx_http_smartflow_cache_hit(r, ctx, rq, &f, 4, &start);
        }
    }

miss:

    ngx_str_set(&ctx->cache_status, "MISS");
    (void) ngx_atomic_fetch_add(&z->sh->stats.misses, 1);
    ngx_http_smartflow_cache_took(z, &start);

    return NGX_DECLINED;
}


/*
 * Cache-Control: no-cache (look nothing up, store the answer), no-store
 * (neither); x-smartflow-cache: bypass (neither) | refresh (look nothing
 * up, remove the entry the request has, store the answer);
 * x-smartflow-cache-ttl: seconds the stored answer lives.  A header sent
 * several times counts each time: no-store in a second Cache-Control is
 * no-store all the same, and the strictest control wins (of TTLs, the
 * shortest).
 */
static ngx_int_t
ngx_http_smartflow_cache_controls(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_uint_t *lookup, ngx_uint_t *store,
    ngx_uint_t *refresh, time_t *ttl)
{
    u_char           *last;
    ngx_int_t         n;
    ngx_str_t        *h, *v;
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *header;

    *lookup = 1;
    *store = 1;
    *refresh = 0;
    *ttl = 0;

    part = &r->headers_in.headers.part;
    header = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            header = part->elts;
            i = 0;
        }

        h = &header[i].key;
        v = &header[i].value;

        if (h->len == sizeof("x-smartflow-cache-ttl") - 1
            && ngx_strncasecmp(h->data, (u_char *) "x-smartflow-cache-ttl",
                               sizeof("x-smartflow-cache-ttl") - 1)
               == 0)
        {
            n = ngx_atoi(v->data, v->len);

            if (n <= 0 || n > 365 * 86400) {
                return ngx_http_smartflow_error(r, NGX_HTTP_BAD_REQUEST,
                           "invalid_request_error", "invalid_cache_control",
                           NULL, "The x-smartflow-cache-ttl header takes a "
                           "number of seconds from 1 to 31536000, not "
                           "\"%V\".", v);
            }

            /* sent more than once: the shortest */
            if (*ttl == 0 || (time_t) n < *ttl) {
                *ttl = (time_t) n;
            }

            continue;
        }

        if (v->len == 0) {
            continue;
        }

        if (h->len == sizeof("cache-control") - 1
            && ngx_strncasecmp(h->data, (u_char *) "cache-control",
                               sizeof("cache-control") - 1)
               == 0)
        {
            last = v->data + v->len;

            if (ngx_strlcasestrn(v->data, last, (u_char *) "no-store", 8 - 1))
            {
                *lookup = 0;
                *store = 0;

            } else if (ngx_strlcasestrn(v->data, last, (u_char *) "no-cache",
                                        8 - 1))
            {
                *lookup = 0;
            }

            continue;
        }

        if (h->len != sizeof("x-smartflow-cache") - 1
            || ngx_strncasecmp(h->data, (u_char *) "x-smartflow-cache",
                               sizeof("x-smartflow-cache") - 1)
               != 0)
        {
            continue;
        }

        if (v->len == 6 && ngx_strncasecmp(v->data, (u_char *) "bypass", 6)
                           == 0)
        {
            *lookup = 0;
            *store = 0;

        } else if (v->len == 7
                   && ngx_strncasecmp(v->data, (u_char *) "refresh", 7) == 0)
        {
            *lookup = 0;
            *refresh = 1;

        } else {
            return ngx_http_smartflow_error(r, NGX_HTTP_BAD_REQUEST,
                       "invalid_request_error", "invalid_cache_control",
                       NULL, "The x-smartflow-cache header takes \"bypass\" "
                       "or \"refresh\", not \"%V\".", v);
        }
    }

    return NGX_OK;
}


/*
 * The request in canonical pieces: the parameters that change the
 * answer, the context (system prompt and every turn before the last), and
 * the last message, which phases 2 and 4 compare when it is the user's
 * own text.
 */
static ngx_int_t
ngx_http_smartflow_cache_canon(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_http_smartflow_cache_canon_t *cn)
{
    u_char                *p;
    size_t                 len;
    ngx_str_t              dump, text;
    ngx_uint_t             i, plain;
    ngx_smartflow_json_t  *j, *m, *msgs, *last, *role;
    ngx_str_t              parts[NGX_HTTP_SMARTFLOW_CACHE_NPARAMS];
    ngx_smartflow_json_t  *found[NGX_HTTP_SMARTFLOW_CACHE_NPARAMS];

    if (ctx->json == NULL || ctx->json->type != NGX_SMARTFLOW_JSON_OBJECT) {
        return NGX_DECLINED;
    }

    j = ngx_smartflow_json_get(ctx->json, "n");
    if (j && !(j->type == NGX_SMARTFLOW_JSON_NUMBER && j->str.len == 1
               && j->str.data[0] == '1'))
    {
        return NGX_DECLINED;
    }

    /* the log probabilities of the tokens: an entry keeps the text only */
    j = ngx_smartflow_json_get(ctx->json, "logprobs");
    if (j && j->type == NGX_SMARTFLOW_JSON_TRUE) {
        return NGX_DECLINED;
    }

    /*
     * the parameters, each as JSON after its name, in the list's order;
     * the request's members read once (the last duplicate wins)
     */
    ngx_memzero(found, sizeof(found));

    for (j = ctx->json->child; j; j = j->next) {
        for (i = 0; i < NGX_HTTP_SMARTFLOW_CACHE_NPARAMS; i++) {
            if (j->key.len == ngx_http_smartflow_cache_params[i].len
                && ngx_strncmp(j->key.data,
                               ngx_http_smartflow_cache_params[i].data,
                               j->key.len)
                   == 0)
            {
                found[i] = j;
                break;
            }
        }
    }

    len = 0;

    for (i = 0; i < NGX_HTTP_SMARTFLOW_CACHE_NPARAMS; i++) {
        if (found[i] == NULL) {
            continue;
        }

        if (ngx_smartflow_json_dump(r->pool, found[i], &parts[i]) != NGX_OK) {
            return NGX_ERROR;
        }

        len += ngx_http_smartflow_cache_params[i].len + 2 + parts[i].len;
    }

    cn->params.data = ngx_pnalloc(r->pool, len + 1);
    if (cn->params.data == NULL) {
        return NGX_ERROR;
    }

    p = cn->params.data;

    for (i = 0; i < NGX_HTTP_SMARTFLOW_CACHE_NPARAMS; i++) {
        if (found[i]) {
            p = ngx_sprintf(p, "%V=%V\n", &ngx_http_smartflow_cache_params[i],
                            &parts[i]);
        }
    }

    cn->params.len = p - cn->params.data;

    /* the messages: the last one is the query, the rest its context */
    msgs = ngx_smartflow_json_get(ctx->json, "messages");
    if (msgs == NULL || msgs->type != NGX_SMARTFLOW_JSON_ARRAY
        || msgs->child == NULL)
    {
        return NGX_DECLINED;
    }

    last = msgs->last;

    j = ngx_smartflow_json_get(ctx->json, "system");

    /* sized in a first pass, written in the second */
    len = 0;
    p = NULL;
    cn->context.len = 0;
    cn->context.data = NULL;

    for (i = 0; i < 2; i++) {
        if (i == 1) {
            cn->context.data = ngx_pnalloc(r->pool, len + 1);
            if (cn->context.data == NULL) {
                return NGX_ERROR;
            }

            p = cn->context.data;
        }

        len = 0;

        if (j) {
            if (ngx_http_smartflow_cache_text(r->pool, j, &text, &plain)
                != NGX_OK)
            {
                return NGX_ERROR;
            }

            len += sizeof("system:\n") + text.len;

            if (i == 1) {
                p = ngx_sf_cpymem(p, "system:");
                p = ngx_smartflow_cache_fold(p, text.data, text.len);
                *p++ = '\n';
            }
        }

        for (m = msgs->child; m != last; m = m->next) {
            role = ngx_smartflow_json_get(m, "role");

            if (ngx_http_smartflow_cache_text(r->pool, m, &text, &plain)
                != NGX_OK)
            {
                return NGX_ERROR;
            }

            len += 2 + text.len + (role ? role->str.len : 0);

            if (i == 1) {
                if (role) {
                    p = ngx_cpymem(p, role->str.data, role->str.len);
                }

                *p++ = ':';
                p = plain ? ngx_smartflow_cache_fold(p, text.data, text.len)
                          : ngx_cpymem(p, text.data, text.len);
                *p++ = '\n';
            }
        }

        if (i == 1) {
            cn->context.len = p - cn->context.data;
        }
    }

    /* the query: the last message, if it is the user's plain text */
    role = ngx_smartflow_json_get(last, "role");

    if (ngx_http_smartflow_cache_text(r->pool, last, &text, &plain)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (plain && role && role->str.len == 4
        && ngx_strncmp(role->str.data, "user", 4) == 0
        && text.len <= 4096)
    {
        cn->query = text;
        ngx_str_null(&cn->query_raw);

    } else {
        ngx_str_null(&cn->query);

        if (ngx_smartflow_json_dump(r->pool, last, &dump) != NGX_OK) {
            return NGX_ERROR;
        }

        cn->query_raw = dump;
    }

    return NGX_OK;
}


/*
 * A message's (or a system prompt's) text: a string, or the text parts of
 * an array joined by newlines.  Anything else (images, tool calls and
 * results) comes as its JSON, and *plain says so.
 */
static ngx_int_t
ngx_http_smartflow_cache_text(ngx_pool_t *pool, ngx_smartflow_json_t *m,
    ngx_str_t *text, ngx_uint_t *plain)
{
    u_char                *p;
    size_t                 len;
    ngx_smartflow_json_t  *c, *part, *type, *t;

    *plain = 1;

    if (m->type == NGX_SMARTFLOW_JSON_STRING) {
        *text = m->str;
        return NGX_OK;
    }

    c = (m->type == NGX_SMARTFLOW_JSON_OBJECT)
        ? ngx_smartflow_json_get(m, "content") : m;

    if (m->type == NGX_SMARTFLOW_JSON_OBJECT
        && (ngx_smartflow_json_get(m, "tool_calls")
            || ngx_smartflow_json_get(m, "tool_call_id")
            || ngx_smartflow_json_get(m, "function_call")
            || ngx_smartflow_json_get(m, "name")))
    {
        c = NULL;
    }

    if (ngx_smartflow_json_is_string(c)) {
        *text = c->str;
        return NGX_OK;
    }

    if (c && c->type == NGX_SMARTFLOW_JSON_ARRAY) {
        len = 0;

        for (part = c->child; part; part = part->next) {
            type = ngx_smartflow_json_get(part, "type");
            t = ngx_smartflow_json_get(part, "text");

            if (!ngx_smartflow_json_is_string(type)
                || type->str.len != 4
                || ngx_strncmp(type->str.data, "text", 4) != 0
                || !ngx_smartflow_json_is_string(t))
            {
                len = 0;
                break;
            }

            len += t->str.len + 1;
        }

        if (part == NULL) {
            text->data = ngx_pnalloc(pool, len + 1);
            if (text->data == NULL) {
                return NGX_ERROR;
            }

            p = text->data;

            for (part = c->child; part; part = part->next) {
                t = ngx_smartflow_json_get(part, "text");

                if (p != text->data) {
                    *p++ = '\n';
                }

                p = ngx_cpymem(p, t->str.data, t->str.len);
            }

            text->len = p - text->data;
            return NGX_OK;
        }
    }

    *plain = 0;

    return ngx_smartflow_json_dump(pool, m, text);
}


/*
 * The keys of the request: the context key (partition, model, parameters
 * and context) that phases 2 and 4 stay within, the fingerprint of the
 * whole (phase 1), and, for a plain query, its tokens, MinHash signature
 * and embedding.
 */
static ngx_int_t
ngx_http_smartflow_cache_keys(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_http_smartflow_cache_loc_conf_t *clcf,
    ngx_http_smartflow_cache_req_t *rq)
{
    u_char                            *p, *buf, digest[32];
    size_t                             len;
    ngx_int_t                          rc;
    ngx_str_t                         *part;
    ngx_http_smartflow_cache_canon_t   cn;

    rc = ngx_http_smartflow_cache_canon(r, ctx, &cn);
    if (rc != NGX_OK) {
        return rc;
    }

    part = &rq->item.partition;

    /* "shared", "team:NAME" or "key:ID", whichever is longest */
    len = sizeof("shared") - 1 + sizeof("team:") - 1
          + ngx_max(ctx->team.len, ctx->key_id.len);
    part->data = ngx_pnalloc(r->pool, len);
    if (part->data == NULL) {
        return NGX_ERROR;
    }

    switch (clcf->partition) {

    case NGX_SMARTFLOW_CACHE_PART_SHARED:
        p = ngx_sf_cpymem(part->data, "shared");
        break;

    case NGX_SMARTFLOW_CACHE_PART_TEAM:
        if (ctx->team.len) {
            p = ngx_sf_cpymem(part->data, "team:");
            p = ngx_cpymem(p, ctx->team.data, ctx->team.len);
            break;
        }

        /* fall through */

    default:
        p = ngx_sf_cpymem(part->data, "key:");
        p = ngx_cpymem(p, ctx->key_id.data, ctx->key_id.len);
    }

    part->len = p - part->data;

    len = sizeof("v1 chat\n") + part->len + ctx->model.len + cn.params.len
          + cn.context.len + 8;
    len = ngx_max(len, NGX_SMARTFLOW_CACHE_CTXK + 2 + cn.query.len
                       + cn.query_raw.len);

    buf = ngx_pnalloc(r->pool, len);
    if (buf == NULL) {
        return NGX_ERROR;
    }

    /* the model as the client named it, case-insensitively */
    p = ngx_sf_cpymem(buf, "v1\n");
    p = ngx_cpymem(p, part->data, part->len);
    *p++ = '\n';
    ngx_strlow(p, ctx->model.data, ctx->model.len);
    p += ctx->model.len;
    *p++ = '\n';
    p = ngx_cpymem(p, cn.params.data, cn.params.len);
    *p++ = '\n';
    p = ngx_cpymem(p, cn.context.data, cn.context.len);

    if (ngx_http_smartflow_cache_ctxk(buf, p - buf, digest) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_memcpy(rq->item.ctxk, digest, NGX_SMARTFLOW_CACHE_CTXK);

    p = ngx_cpymem(buf, rq->item.ctxk, NGX_SMARTFLOW_CACHE_CTXK);

    if (cn.query.len) {
        *p++ = 'q';
        p = ngx_smartflow_cache_fold(p, cn.query.data, cn.query.len);

    } else {
        *p++ = 'j';
        p = ngx_cpymem(p, cn.query_raw.data, cn.query_raw.len);
    }

    if (ngx_smartflow_sha256(buf, p - buf, rq->item.fp) != NGX_OK) {
        return NGX_ERROR;
    }

    rq->item.query = cn.query;
    rq->item.minhash = rq->minhash;
    rq->item.vec = NULL;

    return NGX_OK;
}


/*
 * The context key's digest, remembered for the last context the worker
 * saw: single-turn requests of one tenant and model without a system
 * prompt or parameters (every question new) share it, and a SHA-256 is
 * saved.  The whole input is compared, so a digest is reused only for
 * the same bytes.
 */
static ngx_int_t
ngx_http_smartflow_cache_ctxk(u_char *p, size_t len, u_char *digest)
{
    static size_t  last_len;
    static u_char  last[NGX_HTTP_SMARTFLOW_CACHE_MEMO];
    static u_char  last_digest[32];

    if (last_len && len == last_len && ngx_memcmp(p, last, len) == 0) {
        ngx_memcpy(digest, last_digest, 32);
        return NGX_OK;
    }

    if (ngx_smartflow_sha256(p, len, digest) != NGX_OK) {
        return NGX_ERROR;
    }

    if (len <= NGX_HTTP_SMARTFLOW_CACHE_MEMO) {
        ngx_memcpy(last, p, len);
        ngx_memcpy(last_digest, digest, 32);
        last_len = len;
    }

    return NGX_OK;
}


/*
 * The query's tokens, MinHash signature and embedding: made only when a
 * phase 1 miss needs them, or for the store.  The context key of phases 2
 * and 4 then takes in what the verification needs equal (numbers, guarded
 * words, negations): a query is compared only with entries that could
 * pass it, and a new number, unit or name of currency makes no scan.
 */
static ngx_int_t
ngx_http_smartflow_cache_features(ngx_http_request_t *r,
    ngx_http_smartflow_cache_req_t *rq)
{
    uint64_t    g;
    ngx_uint_t  i;

    if (rq->features || rq->item.query.len == 0) {
        return NGX_OK;
    }

    if (ngx_smartflow_cache_tokenize(r->pool, rq->item.query.data,
                                     rq->item.query.len, &rq->text)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    rq->features = 1;

    if (ngx_smartflow_cache_content(&rq->text) == 0) {
        /* function words only ("who are you?"): exact matches only */
        ngx_str_null(&rq->item.query);
        return NGX_OK;
    }

    g = ngx_smartflow_cache_guard(&rq->text);

    for (i = 0; i < 8; i++) {
        rq->item.ctxk[i] ^= (u_char) (g >> (8 * i));
    }

    /* and its operators, in order, which the words do not hold */
    g = ngx_smartflow_cache_signs(rq->item.query.data, rq->item.query.len);

    for (i = 0; i < 8; i++) {
        rq->item.ctxk[8 + i] ^= (u_char) (g >> (8 * i));
    }

    /* the group's bucket comes in while the features are made */
    ngx_smartflow_cache_prefetch(rq->zone, rq->item.ctxk);

    rq->vec = ngx_palloc(r->pool, rq->zone->dim * sizeof(float));
    if (rq->vec == NULL) {
        return NGX_ERROR;
    }

    /* an endpoint's embedding comes later: ..._cache_embed.c */
    if (rq->embedder == NULL) {
        ngx_smartflow_cache_sketch(&rq->text, rq->minhash, rq->vec,
                                   rq->zone->dim);
        rq->item.vec = rq->vec;

    } else {
        ngx_smartflow_cache_minhash(&rq->text, rq->minhash);
    }

    return NGX_OK;
}


/* the first candidate the verification accepts, still in the zone */
static ngx_int_t
ngx_http_smartflow_cache_candidates(ngx_http_request_t *r,
    ngx_http_smartflow_cache_req_t *rq, ngx_smartflow_cache_found_t *cand,
    ngx_uint_t n, ngx_smartflow_cache_found_t *f)
{
    char                        *why;
    ngx_int_t                    rc;
    ngx_uint_t                   i;
    ngx_smartflow_cache_text_t   t;

    for (i = 0; i < n; i++) {
        if (ngx_smartflow_cache_tokenize(r->pool, cand[i].query.data,
                                         cand[i].query.len, &t)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        if (!ngx_smartflow_cache_verify(&rq->text, &t, &why)) {
            ngx_log_debug3(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                           "smartflow cache candidate at %ui rejected: "
                           "%s differ from \"%V\"", cand[i].similarity,
                           why, &cand[i].query);
            (void) ngx_atomic_fetch_add(&rq->zone->sh->stats.rejected, 1);
            continue;
        }

        rc = ngx_smartflow_cache_exact(rq->zone, r->pool, cand[i].fp, f);

        if (rc == NGX_OK) {
            f->similarity = cand[i].similarity;
            return NGX_OK;
        }

        if (rc == NGX_ERROR) {
            return NGX_ERROR;
        }
    }

    return NGX_DECLINED;
}


static ngx_int_t
ngx_http_smartflow_cache_hit(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_http_smartflow_cache_req_t *rq,
    ngx_smartflow_cache_found_t *f, ngx_uint_t phase, struct timeval *start)
{
    uint64_t                      micro;
    ngx_uint_t                    prompt, completion;
    ngx_smartflow_cache_stats_t  *st;

    st = &rq->zone->sh->stats;

    (void) ngx_atomic_fetch_add(&st->hits[phase], 1);
    (void) ngx_atomic_fetch_add(&st->tokens_saved,
                                f->prompt_tokens + f->completion_tokens);
    (void) ngx_atomic_fetch_add(&st->prompt_saved, f->prompt_tokens);
    (void) ngx_atomic_fetch_add(&st->completion_saved, f->completion_tokens);

    /* the stored answer's usage at the price of the model asked for */
    prompt = ctx->prompt_tokens;
    completion = ctx->completion_tokens;
    ctx->prompt_tokens = f->prompt_tokens;
    ctx->completion_tokens = f->completion_tokens;

    if (ngx_http_smartflow_cost(r, ctx, &micro) == NGX_OK) {
        (void) ngx_atomic_fetch_add(&st->cost_saved, micro);

    } else {
        (void) ngx_atomic_fetch_add(&st->unpriced, 1);
    }

    ctx->prompt_tokens = prompt;
    ctx->completion_tokens = completion;

    ngx_http_smartflow_cache_took(rq->zone, start);

    ngx_str_set(&ctx->cache_status, "HIT");
    ctx->cache_phase = phase;
    ctx->cache_similarity = f->similarity;
    ctx->cache_hit = 1;
    rq->store = 0;

    return ngx_http_smartflow_cache_serve(r, ctx, f);
}


static void
ngx_http_smartflow_cache_took(ngx_smartflow_cache_zone_t *z,
    struct timeval *start)
{
    struct timeval  now;

    ngx_gettimeofday(&now);

    ngx_smartflow_cache_latency(z, (now.tv_sec - start->tv_sec) * 1000000
                                   + (now.tv_usec - start->tv_usec));
}


static ngx_int_t
ngx_http_smartflow_cache_header_filter(ngx_http_request_t *r)
{
    u_char                    *p;
    ngx_http_smartflow_ctx_t  *ctx;

    if (r != r->main) {
        return ngx_http_next_header_filter(r);
    }

    ctx = ngx_http_smartflow_get_ctx(r);

    if (ctx == NULL || ctx->cache_status.len == 0) {
        return ngx_http_next_header_filter(r);
    }

    if (ngx_http_smartflow_cache_add_header(r, "x-smartflow-cache",
                                            ctx->cache_status.data,
                                            ctx->cache_status.len)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ctx->cache_hit) {
        p = ngx_pnalloc(r->pool, 16);
        if (p == NULL) {
            return NGX_ERROR;
        }

        if (ngx_http_smartflow_cache_add_header(r, "x-smartflow-cache-phase",
                                        p, ngx_sprintf(p, "%ui",
                                                       ctx->cache_phase) - p)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        if (ctx->cache_phase == 2 || ctx->cache_phase == 4) {
            p = ngx_pnalloc(r->pool, 16);
            if (p == NULL) {
                return NGX_ERROR;
            }

            if (ngx_http_smartflow_cache_add_header(r,
                    "x-smartflow-cache-similarity", p,
                    ngx_sprintf(p, "%ui.%03ui", ctx->cache_similarity / 1000,
                                ctx->cache_similarity % 1000) - p)
                != NGX_OK)
            {
                return NGX_ERROR;
            }
        }
    }

    return ngx_http_next_header_filter(r);
}


static ngx_int_t
ngx_http_smartflow_cache_add_header(ngx_http_request_t *r, char *key,
    u_char *value, size_t len)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key.data = (u_char *) key;
    h->key.len = ngx_strlen(key);
    h->value.data = value;
    h->value.len = len;

    return NGX_OK;
}


static void *
ngx_http_smartflow_cache_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_smartflow_cache_main_conf_t  *cmcf;

    cmcf = ngx_pcalloc(cf->pool,
                       sizeof(ngx_http_smartflow_cache_main_conf_t));
    if (cmcf == NULL) {
        return NULL;
    }

    if (ngx_array_init(&cmcf->zones, cf->pool, 2,
                       sizeof(ngx_smartflow_cache_zone_t *))
        != NGX_OK)
    {
        return NULL;
    }

    return cmcf;
}


static void *
ngx_http_smartflow_cache_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_smartflow_cache_loc_conf_t  *clcf;

    clcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_smartflow_cache_loc_conf_t));
    if (clcf == NULL) {
        return NULL;
    }

    clcf->zone = NGX_CONF_UNSET_PTR;
    clcf->ttl = NGX_CONF_UNSET;
    clcf->near_miss = NGX_CONF_UNSET;
    clcf->similarity = NGX_CONF_UNSET;
    clcf->partition = NGX_CONF_UNSET_UINT;
    clcf->max_size = NGX_CONF_UNSET_SIZE;
    clcf->api = NGX_CONF_UNSET;
    clcf->flush_timeout = NGX_CONF_UNSET_MSEC;
    clcf->redis = NGX_CONF_UNSET;
    clcf->embedder = NGX_CONF_UNSET_PTR;

    return clcf;
}


static char *
ngx_http_smartflow_cache_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child)
{
    ngx_http_smartflow_cache_loc_conf_t *prev = parent;
    ngx_http_smartflow_cache_loc_conf_t *conf = child;

    ngx_http_smartflow_loc_conf_t  *slcf;

    ngx_conf_merge_ptr_value(conf->zone, prev->zone, NULL);
    ngx_conf_merge_sec_value(conf->ttl, prev->ttl, 3600);
    ngx_conf_merge_value(conf->near_miss, prev->near_miss, 800);
    ngx_conf_merge_value(conf->similarity, prev->similarity, 900);
    ngx_conf_merge_uint_value(conf->partition, prev->partition,
                              NGX_SMARTFLOW_CACHE_PART_TEAM);
    ngx_conf_merge_size_value(conf->max_size, prev->max_size, 256 * 1024);
    ngx_conf_merge_value(conf->api, prev->api, 0);
    ngx_conf_merge_msec_value(conf->flush_timeout, prev->flush_timeout,
                              60000);
    ngx_conf_merge_value(conf->redis, prev->redis, 1);
    ngx_conf_merge_ptr_value(conf->embedder, prev->embedder, NULL);

    /*
     * Only a location of the chat or messages API stores in the zone:
     * the cache API's, or one of another API or of none (the embedder's
     * own, the error page's) that inherits smartflow_cache from its
     * server, stores nothing, and its embedder is none of the zone's.
     * The smartflow module is loaded first: its configuration is merged.
     */
    slcf = ngx_http_conf_get_module_loc_conf(cf,
                                             ngx_http_smartflow_proxy_module);

    if (conf->zone && !conf->api
        && (slcf->api == NGX_HTTP_SMARTFLOW_API_CHAT
            || slcf->api == NGX_HTTP_SMARTFLOW_API_MESSAGES)
        && ngx_http_smartflow_cache_embedder_note(cf, conf->embedder,
                                                  conf->zone)
           != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    return ngx_http_smartflow_cache_embedder_check(cf, conf->embedder,
                                                   conf->zone);
}


/*
 * smartflow_cache_zone NAME SIZE [entries=N] [dim=N]
 *     [index=auto|flat|hnsw] [snapshot=PATH];
 */
static char *
ngx_http_smartflow_cache_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_smartflow_cache_main_conf_t *cmcf = conf;

    ssize_t                       size;
    ngx_int_t                     n;
    ngx_str_t                    *value, s;
    ngx_uint_t                    i;
    ngx_shm_zone_t               *shm_zone;
    ngx_smartflow_cache_zone_t   *z, **zp;

    value = cf->args->elts;

    z = ngx_pcalloc(cf->pool, sizeof(ngx_smartflow_cache_zone_t));
    if (z == NULL) {
        return NGX_CONF_ERROR;
    }

    z->name = value[1];
    z->capacity = 10000;
    z->dim = NGX_SMARTFLOW_CACHE_DIM;
    z->index = NGX_SMARTFLOW_CACHE_INDEX_AUTO;

    size = ngx_parse_size(&value[2]);

    if (size == NGX_ERROR || size < (ssize_t) (8 * ngx_pagesize)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow_cache_zone \"%V\": invalid size \"%V\"",
                           &value[1], &value[2]);
        return NGX_CONF_ERROR;
    }

    for (i = 3; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "entries=", 8) == 0) {
            n = ngx_atoi(value[i].data + 8, value[i].len - 8);
            if (n <= 0 || n > 10000000) {
                goto invalid;
            }

            z->capacity = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "dim=", 4) == 0) {
            n = ngx_atoi(value[i].data + 4, value[i].len - 4);
            if (n <= 0 || n > NGX_SMARTFLOW_CACHE_MAX_DIM) {
                goto invalid;
            }

            z->dim = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "snapshot=", 9) == 0) {
            z->snapshot.data = value[i].data + 9;
            z->snapshot.len = value[i].len - 9;

            if (z->snapshot.len == 0
                || ngx_conf_full_name(cf->cycle, &z->snapshot, 0) != NGX_OK)
            {
                goto invalid;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "index=", 6) == 0) {
            s.data = value[i].data + 6;
            s.len = value[i].len - 6;

            if (s.len == 4 && ngx_strncmp(s.data, "auto", 4) == 0) {
                z->index = NGX_SMARTFLOW_CACHE_INDEX_AUTO;

            } else if (s.len == 4 && ngx_strncmp(s.data, "flat", 4) == 0) {
                z->index = NGX_SMARTFLOW_CACHE_INDEX_FLAT;

            } else if (s.len == 4 && ngx_strncmp(s.data, "hnsw", 4) == 0) {
                z->index = NGX_SMARTFLOW_CACHE_INDEX_HNSW;

            } else if (s.len == 3 && ngx_strncmp(s.data, "ivf", 3) == 0) {
                z->index = NGX_SMARTFLOW_CACHE_INDEX_IVF;

            } else {
                goto invalid;
            }

            continue;
        }

        goto invalid;
    }

    /* one file per zone: read back, it would fill each with the other's */
    zp = cmcf->zones.elts;

    for (i = 0; z->snapshot.len && i < cmcf->zones.nelts; i++) {
        if (zp[i]->snapshot.len == z->snapshot.len
            && ngx_strncmp(zp[i]->snapshot.data, z->snapshot.data,
                           z->snapshot.len)
               == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "smartflow_cache_zone \"%V\": snapshot "
                               "\"%V\" is zone \"%V\"'s already",
                               &value[1], &z->snapshot, &zp[i]->name);
            return NGX_CONF_ERROR;
        }
    }

    shm_zone = ngx_shared_memory_add(cf, &value[1], size,
                                     &ngx_http_smartflow_cache_module);
    if (shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow_cache_zone \"%V\" is duplicate",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    shm_zone->init = ngx_smartflow_cache_init_zone;
    shm_zone->data = z;
    z->shm_zone = shm_zone;

    zp = ngx_array_push(&cmcf->zones);
    if (zp == NULL) {
        return NGX_CONF_ERROR;
    }

    *zp = z;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "smartflow_cache_zone: invalid parameter \"%V\"",
                       &value[i]);

    return NGX_CONF_ERROR;
}


/* smartflow_cache ZONE | off; */
static char *
ngx_http_smartflow_cache(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_smartflow_cache_loc_conf_t *clcf = conf;

    ngx_str_t                             *value;
    ngx_uint_t                             i;
    ngx_smartflow_cache_zone_t           **zp;
    ngx_http_smartflow_cache_main_conf_t  *cmcf;

    if (clcf->zone != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len == 3 && ngx_strncmp(value[1].data, "off", 3) == 0) {
        clcf->zone = NULL;
        return NGX_CONF_OK;
    }

    cmcf = ngx_http_conf_get_module_main_conf(cf,
                                           ngx_http_smartflow_cache_module);
    zp = cmcf->zones.elts;

    for (i = 0; i < cmcf->zones.nelts; i++) {
        if (zp[i]->name.len == value[1].len
            && ngx_strncmp(zp[i]->name.data, value[1].data, value[1].len)
               == 0)
        {
            clcf->zone = zp[i];
            return NGX_CONF_OK;
        }
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "smartflow_cache: no smartflow_cache_zone \"%V\" "
                       "declared before it", &value[1]);

    return NGX_CONF_ERROR;
}


/* smartflow_cache_near_miss | smartflow_cache_similarity 0.90 | off; */
static char *
ngx_http_smartflow_cache_threshold(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    char  *p = conf;

    ngx_int_t   *np, n;
    ngx_str_t   *value;

    np = (ngx_int_t *) (p + cmd->offset);

    if (*np != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len == 3 && ngx_strncmp(value[1].data, "off", 3) == 0) {
        *np = -2;           /* off; -1 is NGX_CONF_UNSET */
        return NGX_CONF_OK;
    }

    /* a fraction with up to three decimals, as per mille */
    n = ngx_atofp(value[1].data, value[1].len, 3);

    if (n == NGX_ERROR || n > 1000 || n < 1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: \"%V\" is not a similarity between 0.001 "
                           "and 1 or \"off\"", &cmd->name, &value[1]);
        return NGX_CONF_ERROR;
    }

    *np = n;

    return NGX_CONF_OK;
}


/* smartflow_cache_api; */
static char *
ngx_http_smartflow_cache_api(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_smartflow_cache_loc_conf_t *clcf = conf;

    ngx_str_t                 *value, s;
    ngx_msec_t                 ms;
    ngx_http_core_loc_conf_t  *core;

    if (clcf->api != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    clcf->api = 1;

    if (cf->args->nelts == 2) {
        /* flush_timeout=TIME: how long a flush may walk Redis */
        value = cf->args->elts;

        if (value[1].len <= 14
            || ngx_strncmp(value[1].data, "flush_timeout=", 14) != 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\"", &value[1]);
            return NGX_CONF_ERROR;
        }

        s.data = value[1].data + 14;
        s.len = value[1].len - 14;

        ms = ngx_parse_time(&s, 0);

        if (ms == (ngx_msec_t) NGX_ERROR || ms == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid flush_timeout \"%V\"", &s);
            return NGX_CONF_ERROR;
        }

        clcf->flush_timeout = ms;
    }

    core = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    core->handler = ngx_http_smartflow_cache_api_handler;

    return NGX_CONF_OK;
}


/* smartflow_cache_ttl: an entry that expires as it is stored is none */
static char *
ngx_http_smartflow_cache_ttl_check(ngx_conf_t *cf, void *post, void *data)
{
    time_t  *ttl = data;

    if (*ttl < 1) {
        return "must be at least 1s";
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_smartflow_cache_init(ngx_conf_t *cf)
{
    ngx_uint_t                             i;
    ngx_smartflow_cache_zone_t           **zp;
    ngx_http_smartflow_cache_main_conf_t  *cmcf;

    /* the locations are merged: each zone's embedders are known */
    cmcf = ngx_http_conf_get_module_main_conf(cf,
                                              ngx_http_smartflow_cache_module);
    zp = cmcf->zones.elts;

    for (i = 0; i < cmcf->zones.nelts; i++) {
        if (ngx_http_smartflow_cache_embedder_names(cf, zp[i]) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    if (ngx_http_smartflow_register_stage(cf, NGX_HTTP_SMARTFLOW_STAGE_CACHE,
                                          ngx_http_smartflow_cache_stage)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_http_smartflow_register_tap(cf, ngx_http_smartflow_cache_tap)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_http_smartflow_register_metrics(cf,
                                            ngx_http_smartflow_cache_metrics)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_smartflow_cache_header_filter;

    /* the embedder's answers stop at these, above nginx's own filters */
    return ngx_http_smartflow_cache_embed_filters(cf);
}


static ngx_int_t
ngx_http_smartflow_cache_init_module(ngx_cycle_t *cycle)
{
    float        dist[2];
    idx_t        label[2];
    const char  *err;
    FaissIndex  *index;

    /* three unit vectors; the query is nearest to the second */
    static float  base[] = { 1, 0, 0, 0,  0, 1, 0, 0,  0, 0, 1, 0 };
    static float  query[] = { 0.1f, 0.9f, 0.1f, 0 };

    index = NULL;

    if (faiss_index_factory(&index, 4, "Flat", METRIC_INNER_PRODUCT) != 0
        || faiss_Index_add(index, 3, base) != 0
        || faiss_Index_search(index, 1, query, 2, dist, label) != 0)
    {
        err = faiss_get_last_error();
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "smartflow cache: FAISS self-test failed: %s",
                      err ? err : "unknown error");

        if (index) {
            faiss_Index_free(index);
        }

        return NGX_ERROR;
    }

    faiss_Index_free(index);

    if (label[0] != 1 || dist[0] < 0.89f || dist[0] > 0.91f) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "smartflow cache: FAISS self-test returned vector %L "
                      "at %.3f, expected 1 at 0.900", (int64_t) label[0],
                      (double) dist[0]);
        return NGX_ERROR;
    }

    ngx_log_debug0(NGX_LOG_DEBUG_CORE, cycle->log, 0,
                   "smartflow cache faiss self-test passed");

    ngx_smartflow_cache_snapshot_done(cycle);

    return NGX_OK;
}


static ngx_int_t
ngx_http_smartflow_cache_init_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                             i;
    ngx_smartflow_cache_zone_t           **zp;
    ngx_http_smartflow_cache_main_conf_t  *cmcf;

    omp_set_num_threads(1);

    cmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                           ngx_http_smartflow_cache_module);

    if (cmcf) {
        zp = cmcf->zones.elts;

        for (i = 0; i < cmcf->zones.nelts; i++) {
            if (zp[i]->sh) {
                ngx_http_smartflow_cache_flush_reap(zp[i], cycle->log);
            }
        }
    }

    /* nginx's cache manager and loader serve no request: no Redis */
    if (ngx_process == NGX_PROCESS_WORKER
        || ngx_process == NGX_PROCESS_SINGLE)
    {
        ngx_http_smartflow_cache_redis_watch(cycle);
    }

    return NGX_OK;
}


static void
ngx_http_smartflow_cache_exit_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                             i;
    ngx_smartflow_cache_zone_t           **zp;
    ngx_http_smartflow_cache_main_conf_t  *cmcf;

    cmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                           ngx_http_smartflow_cache_module);
    if (cmcf == NULL) {
        return;
    }

    zp = cmcf->zones.elts;

    for (i = 0; i < cmcf->zones.nelts; i++) {
        ngx_smartflow_cache_vector_free(zp[i]);
    }
}


/* nginx stops: the zones with snapshot= are written, by the master */
static void
ngx_http_smartflow_cache_exit_master(ngx_cycle_t *cycle)
{
    ngx_uint_t                             i;
    ngx_smartflow_cache_zone_t           **zp;
    ngx_http_smartflow_cache_main_conf_t  *cmcf;

    cmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                           ngx_http_smartflow_cache_module);
    if (cmcf == NULL) {
        return;
    }

    zp = cmcf->zones.elts;

    for (i = 0; i < cmcf->zones.nelts; i++) {
        if (zp[i]->snapshot.len && zp[i]->sh) {
            (void) ngx_smartflow_cache_snapshot_write(zp[i], cycle->log);
        }
    }
}
