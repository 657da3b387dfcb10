/*
 * Each worker's FAISS index over the zone's vectors.  The vectors live in
 * the zone; FAISS keeps its own copy, so before each search a worker adds
 * what other workers stored since its last look (the zone's ring, by
 * sequence number).  Entries evicted or replaced stay in the index until
 * it is rebuilt, but their label names the slot and its version, and a
 * slot reused since no longer matches: every worker gives the same
 * answers.  The index is rebuilt, a batch of slots per search, when the
 * zone is new to the worker, when the worker fell more than a ring behind,
 * or when stale vectors outnumber the live ones.  Inner product over
 * L2-normalised vectors is the cosine similarity.
 */

#include <faiss/c_api/IndexFlat_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/index_factory_c.h>

#include "ngx_http_smartflow_cache.h"


/* the shim's inverted file: ngx_smartflow_cache/faiss/ */
int ngx_smartflow_faiss_ivf_new(FaissIndex **p_index, idx_t d, size_t nlist,
    size_t nprobe, size_t max_scan);
int ngx_smartflow_faiss_ivf_skewed(const FaissIndex *index);


static ngx_int_t ngx_smartflow_cache_vector_sync(
    ngx_smartflow_cache_zone_t *z, ngx_log_t *log);
static ngx_int_t ngx_smartflow_cache_vector_add(ngx_smartflow_cache_zone_t *z,
    ngx_log_t *log, float *vecs, ngx_smartflow_cache_ref_t *refs, size_t n);


/*
 * vectors added to the index per search at most, while catching up: an
 * IVF vector costs its cells' centres in inner products (about 25 us for
 * 512 of dim 256), an HNSW one its graph's search
 */
#define NGX_SMARTFLOW_CACHE_BATCH_FLAT  8192
#define NGX_SMARTFLOW_CACHE_BATCH_IVF   128
#define NGX_SMARTFLOW_CACHE_BATCH_HNSW  512

/* past this many entries, index=auto picks the inverted file */
#define NGX_SMARTFLOW_CACHE_AUTO_IVF    4096


ngx_uint_t
ngx_smartflow_cache_index_kind(ngx_smartflow_cache_zone_t *z)
{
    if (z->index != NGX_SMARTFLOW_CACHE_INDEX_AUTO) {
        return z->index;
    }

    return (z->capacity > NGX_SMARTFLOW_CACHE_AUTO_IVF)
           ? NGX_SMARTFLOW_CACHE_INDEX_IVF : NGX_SMARTFLOW_CACHE_INDEX_FLAT;
}


const char *
ngx_smartflow_cache_index_name(ngx_smartflow_cache_zone_t *z)
{
    switch (ngx_smartflow_cache_index_kind(z)) {

    case NGX_SMARTFLOW_CACHE_INDEX_HNSW:
        return "hnsw";

    case NGX_SMARTFLOW_CACHE_INDEX_IVF:
        return "ivf";

    default:
        return "flat";
    }
}


ngx_int_t
ngx_smartflow_cache_vector_search(ngx_smartflow_cache_zone_t *z,
    ngx_log_t *log, u_char *ctxk, float *vec, ngx_smartflow_cache_ref_t *refs,
    float *scores, ngx_uint_t k)
{
    idx_t        labels[NGX_SMARTFLOW_CACHE_K];
    float        dist[NGX_SMARTFLOW_CACHE_K];
    ngx_uint_t   i, n;
    const char  *err;

    k = ngx_min(k, NGX_SMARTFLOW_CACHE_K);

    /* a small context is read in the zone: no index to keep in step */
    n = ngx_smartflow_cache_scan(z, ctxk, vec, refs, scores, k);

    if (n != NGX_SMARTFLOW_CACHE_LARGE) {
        return n;
    }

    if (ngx_smartflow_cache_vector_sync(z, log) != NGX_OK) {
        return 0;
    }

    if (z->faiss == NULL || faiss_Index_ntotal(z->faiss) == 0) {
        return 0;
    }

    if (faiss_Index_search(z->faiss, 1, vec, k, dist, labels) != 0) {
        err = faiss_get_last_error();
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "smartflow cache: FAISS search failed: %s",
                      err ? err : "unknown error");
        return 0;
    }

    n = 0;

    for (i = 0; i < k; i++) {
        if (labels[i] < 0 || (size_t) labels[i] >= z->nlabels) {
            continue;
        }

        refs[n] = z->labels[labels[i]];
        scores[n] = dist[i];
        n++;
    }

    return n;
}


static size_t
ngx_smartflow_cache_gcd(size_t a, size_t b)
{
    size_t  t;

    while (b) {
        t = a % b;
        a = b;
        b = t;
    }

    return a;
}


static ngx_int_t
ngx_smartflow_cache_vector_sync(ngx_smartflow_cache_zone_t *z,
    ngx_log_t *log)
{
    size_t                        n, batch, slot;
    ngx_int_t                     rc;
    ngx_uint_t                    kind, reskew;
    float                        *vecs;
    uint64_t                      seq;
    ngx_uint_t                    rebuild;
    const char                   *err, *desc;
    ngx_smartflow_cache_ref_t    *refs, r;
    ngx_smartflow_cache_slot_t   *s;
    ngx_smartflow_cache_shctx_t  *sh;

    sh = z->sh;

    kind = ngx_smartflow_cache_index_kind(z);
    batch = (kind == NGX_SMARTFLOW_CACHE_INDEX_HNSW)
            ? NGX_SMARTFLOW_CACHE_BATCH_HNSW
            : (kind == NGX_SMARTFLOW_CACHE_INDEX_IVF)
            ? NGX_SMARTFLOW_CACHE_BATCH_IVF : NGX_SMARTFLOW_CACHE_BATCH_FLAT;

    /* the batch buffer holds BATCH_FLAT vectors of the default dimension */
    batch = ngx_min(batch, NGX_SMARTFLOW_CACHE_BATCH_FLAT
                           * NGX_SMARTFLOW_CACHE_DIM / z->dim);

    /*
     * an inverted file whose data moved away from its centres is built
     * again, at most once per entries= / 4 vectors added (unlocked read of
     * sh->seq: a stale view only defers it)
     */
    reskew = (kind == NGX_SMARTFLOW_CACHE_INDEX_IVF && z->faiss
              && z->rebuild == z->capacity
              && sh->seq - z->skew_seq >= z->capacity / 4
              && ngx_smartflow_faiss_ivf_skewed(z->faiss));

    /* unlocked reads: a stale view only defers the work to the next call */
    if (z->faiss && z->epoch == sh->epoch && z->seq == sh->seq
        && z->rebuild == z->capacity && !reskew)
    {
        return NGX_OK;
    }

    /*
     * a rebuild visits the slots in an order that spreads the first ones
     * over the zone (they are the inverted file's centres): slot
     * (i * stride) mod entries=, stride prime to entries=
     */
    if (z->stride == 0) {
        for (z->stride = (z->capacity * 5 / 8) | 1;
             ngx_smartflow_cache_gcd(z->stride, z->capacity) != 1;
             z->stride += 2)
        {
            /* void */
        }
    }

    /* the worker's batch buffers, made once */
    if (z->batch_vecs == NULL) {
        z->batch_vecs = ngx_alloc(NGX_SMARTFLOW_CACHE_BATCH_FLAT
                                  * sizeof(float) * NGX_SMARTFLOW_CACHE_DIM,
                                  log);
        /* batch above keeps n * dim within it, whatever dim= is */
        z->batch_refs = ngx_alloc(NGX_SMARTFLOW_CACHE_BATCH_FLAT
                                  * sizeof(ngx_smartflow_cache_ref_t), log);

        if (z->batch_vecs == NULL || z->batch_refs == NULL) {
            return NGX_ERROR;
        }
    }

    vecs = z->batch_vecs;
    refs = z->batch_refs;

    n = 0;
    rebuild = 0;

    ngx_shmtx_lock(&z->shpool->mutex);

    if (z->faiss == NULL || z->epoch != sh->epoch || reskew
        || sh->seq - z->seq > NGX_SMARTFLOW_CACHE_RING
        || z->nlabels > 2 * (size_t) sh->used + 4096)
    {
        if (reskew) {
            ngx_log_error(NGX_LOG_INFO, log, 0,
                          "smartflow cache: zone \"%V\": the inverted "
                          "file's cells no longer fit its vectors, built "
                          "again", &z->name);
        }

        z->skew_seq = sh->seq;
        rebuild = 1;
        z->epoch = sh->epoch;
        z->seq = sh->seq;
        z->rebuild = 0;
    }

    /* a rebuild walks the slots, a batch at a time */
    while (z->rebuild < z->capacity && n < batch) {
        slot = (z->rebuild * z->stride) % z->capacity;
        s = &sh->slots[slot];

        if (s->node && s->node->query_len) {
            ngx_memcpy(&vecs[n * z->dim], ngx_sf_cache_vec(z, slot),
                       z->dim * sizeof(float));
            refs[n].slot = (uint32_t) slot;
            refs[n].version = s->version;
            n++;
        }

        z->rebuild++;
    }

    /* then what was added since, from the ring */
    for (seq = z->seq; seq < sh->seq && n < batch; seq++) {
        r = sh->ring[seq % NGX_SMARTFLOW_CACHE_RING];
        s = &sh->slots[r.slot];

        if (s->node && s->version == r.version) {
            ngx_memcpy(&vecs[n * z->dim], ngx_sf_cache_vec(z, r.slot),
                       z->dim * sizeof(float));
            refs[n++] = r;
        }
    }

    z->seq = seq;

    ngx_shmtx_unlock(&z->shpool->mutex);

    if (rebuild) {
        if (z->faiss) {
            faiss_Index_free(z->faiss);
            z->faiss = NULL;
        }

        z->nlabels = 0;

        switch (kind) {

        case NGX_SMARTFLOW_CACHE_INDEX_HNSW:
            desc = "HNSW32,Flat";
            rc = faiss_index_factory((FaissIndex **) &z->faiss, (int) z->dim,
                                     desc, METRIC_INNER_PRODUCT);
            break;

        case NGX_SMARTFLOW_CACHE_INDEX_IVF:
            desc = "IVF";
            rc = ngx_smartflow_faiss_ivf_new((FaissIndex **) &z->faiss,
                                             (idx_t) z->dim,
                                             NGX_SMARTFLOW_CACHE_IVF_LISTS,
                                             NGX_SMARTFLOW_CACHE_IVF_PROBES,
                                             NGX_SMARTFLOW_CACHE_IVF_SCAN);
            break;

        default:
            desc = "Flat";
            rc = faiss_IndexFlatIP_new_with((FaissIndexFlatIP **) &z->faiss,
                                            (idx_t) z->dim);
        }

        if (rc != 0) {
            err = faiss_get_last_error();
            ngx_log_error(NGX_LOG_ERR, log, 0,
                          "smartflow cache: FAISS index \"%s\" failed: %s",
                          desc, err ? err : "unknown error");
            z->faiss = NULL;
            return NGX_ERROR;
        }

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, log, 0,
                       "smartflow cache index rebuilt (%s) for zone \"%V\"",
                       desc, &z->name);
    }

    return ngx_smartflow_cache_vector_add(z, log, vecs, refs, n);
}


static ngx_int_t
ngx_smartflow_cache_vector_add(ngx_smartflow_cache_zone_t *z, ngx_log_t *log,
    float *vecs, ngx_smartflow_cache_ref_t *refs, size_t n)
{
    size_t                      size;
    const char                 *err;
    ngx_smartflow_cache_ref_t  *labels;

    if (n == 0) {
        return NGX_OK;
    }

    if (z->nlabels + n > z->labels_size) {
        size = ngx_max(2 * z->labels_size, z->nlabels + n);
        size = ngx_max(size, 1024);

        labels = ngx_alloc(size * sizeof(ngx_smartflow_cache_ref_t), log);
        if (labels == NULL) {
            return NGX_ERROR;
        }

        if (z->labels) {
            ngx_memcpy(labels, z->labels,
                       z->nlabels * sizeof(ngx_smartflow_cache_ref_t));
            ngx_free(z->labels);
        }

        z->labels = labels;
        z->labels_size = size;
    }

    if (faiss_Index_add(z->faiss, n, vecs) != 0) {
        err = faiss_get_last_error();
        ngx_log_error(NGX_LOG_ERR, log, 0,
                      "smartflow cache: FAISS add failed: %s",
                      err ? err : "unknown error");

        /* start again from the zone at the next search */
        faiss_Index_free(z->faiss);
        z->faiss = NULL;
        return NGX_ERROR;
    }

    ngx_memcpy(&z->labels[z->nlabels], refs,
               n * sizeof(ngx_smartflow_cache_ref_t));
    z->nlabels += n;

    return NGX_OK;
}


void
ngx_smartflow_cache_vector_free(ngx_smartflow_cache_zone_t *z)
{
    if (z->faiss) {
        faiss_Index_free(z->faiss);
        z->faiss = NULL;
    }

    if (z->labels) {
        ngx_free(z->labels);
        z->labels = NULL;
    }

    if (z->batch_vecs) {
        ngx_free(z->batch_vecs);
        z->batch_vecs = NULL;
    }

    if (z->batch_refs) {
        ngx_free(z->batch_refs);
        z->batch_refs = NULL;
    }

    z->nlabels = 0;
    z->labels_size = 0;
}
