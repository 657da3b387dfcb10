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
int ngx_smartflow_faiss_ivf_new(FaissIndex **p_index, idx_t d,
    const float *centres, size_t ncentres, size_t nprobe, size_t max_scan);
int ngx_smartflow_faiss_ivf_skewed(const FaissIndex *index);


static ngx_int_t ngx_smartflow_cache_vector_sync(
    ngx_smartflow_cache_zone_t *z, ngx_log_t *log);
static ngx_int_t ngx_smartflow_cache_vector_add(ngx_smartflow_cache_zone_t *z,
    ngx_log_t *log, float *vecs, ngx_smartflow_cache_ref_t *refs, size_t n);
static void ngx_smartflow_cache_vector_centres(ngx_smartflow_cache_zone_t *z,
    ngx_log_t *log);


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


/*
 * The i-th slot in the order rebuilds and the centres' picking visit the
 * zone, (i * stride) mod entries=, and its slot if it holds a vector
 */
static ngx_inline ngx_smartflow_cache_slot_t *
ngx_smartflow_cache_vector_nth(ngx_smartflow_cache_zone_t *z, size_t i,
    size_t *slot)
{
    ngx_smartflow_cache_slot_t  *s;

    *slot = (i * z->stride) % z->capacity;
    s = &z->sh->slots[*slot];

    return (s->node && s->node->query_len) ? s : NULL;
}


static ngx_int_t
ngx_smartflow_cache_vector_sync(ngx_smartflow_cache_zone_t *z,
    ngx_log_t *log)
{
    size_t                        n, batch, slot, nc;
    float                        *vecs, *centres;
    uint64_t                      seq;
    ngx_int_t                     rc;
    ngx_uint_t                    kind, rebuild, skewed;
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
     * an inverted file whose data moved away from its centres asks the
     * zone for new ones, at most once per entries= / 4 vectors stored
     * (unlocked reads: a stale view only defers the work)
     */
    skewed = (kind == NGX_SMARTFLOW_CACHE_INDEX_IVF && z->faiss
              && z->rebuild == z->capacity
              && z->ivf_gen == sh->ivf_gen
              && sh->seq - sh->ivf_seq >= z->capacity / 4
              && ngx_smartflow_faiss_ivf_skewed(z->faiss));

    if (z->faiss && z->epoch == sh->epoch && z->seq == sh->seq
        && z->rebuild == z->capacity && !skewed
        && (kind != NGX_SMARTFLOW_CACHE_INDEX_IVF || z->ivf_gen == sh->ivf_gen))
    {
        return NGX_OK;
    }

    /*
     * a rebuild visits the slots in an order that spreads the first ones
     * over the zone (the zone's centres are picked that way too): slot
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
    centres = NULL;
    nc = 0;

    n = 0;
    rebuild = 0;

    ngx_shmtx_lock(&z->shpool->mutex);

    if (kind == NGX_SMARTFLOW_CACHE_INDEX_IVF
        && (sh->ivf_gen == 0 || (skewed && z->ivf_gen == sh->ivf_gen)))
    {
        if (skewed) {
            ngx_log_error(NGX_LOG_INFO, log, 0,
                          "smartflow cache: zone \"%V\": the inverted "
                          "file's cells no longer fit its vectors, new "
                          "centres picked", &z->name);
        }

        ngx_smartflow_cache_vector_centres(z, log);
    }

    if (z->faiss == NULL || z->epoch != sh->epoch
        || (kind == NGX_SMARTFLOW_CACHE_INDEX_IVF && z->ivf_gen != sh->ivf_gen)
        || (sh->seq - z->seq > NGX_SMARTFLOW_CACHE_RING
            && z->rebuild == z->capacity)
        || z->nlabels > 2 * (size_t) sh->used + 4096)
    {
        rebuild = 1;
        z->epoch = sh->epoch;
        z->seq = sh->seq;
        z->rebuild = 0;

        /* the zone's centres, copied out for the index */
        if (kind == NGX_SMARTFLOW_CACHE_INDEX_IVF) {
            z->ivf_gen = sh->ivf_gen;
            nc = sh->ivf_n;
            centres = nc ? ngx_alloc(nc * z->dim * sizeof(float), log)
                         : NULL;

            if (centres) {
                ngx_memcpy(centres, sh->ivf_centres,
                           nc * z->dim * sizeof(float));

            } else {
                nc = 0;
            }
        }

    } else if (sh->seq - z->seq > NGX_SMARTFLOW_CACHE_RING) {
        /*
         * more was stored during this rebuild than the ring holds: it
         * goes on rather than start again, the walk still finds what went
         * to slots ahead of it, and what went to slots behind it and left
         * the ring is missing until the next rebuild
         */
        z->seq = sh->seq - NGX_SMARTFLOW_CACHE_RING;
    }

    /* a rebuild walks the slots, a batch at a time */
    while (z->rebuild < z->capacity && n < batch) {
        s = ngx_smartflow_cache_vector_nth(z, z->rebuild, &slot);

        if (s) {
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
                                             (idx_t) z->dim, centres, nc,
                                             NGX_SMARTFLOW_CACHE_IVF_PROBES,
                                             NGX_SMARTFLOW_CACHE_IVF_SCAN);
            if (centres) {
                ngx_free(centres);
            }

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


/*
 * The inverted file's centres, kept in the zone so that every worker
 * holds the same cells: up to NGX_SMARTFLOW_CACHE_IVF_LISTS vectors of
 * the zone, taken in the rebuilds' strided slot order.  Called with the
 * zone locked; the room for them is taken from the zone once.
 */
static void
ngx_smartflow_cache_vector_centres(ngx_smartflow_cache_zone_t *z,
    ngx_log_t *log)
{
    size_t                        i, slot, size;
    ngx_smartflow_cache_shctx_t  *sh;

    sh = z->sh;
    size = NGX_SMARTFLOW_CACHE_IVF_LISTS * z->dim * sizeof(float);

    if (sh->ivf_centres == NULL) {
        sh->ivf_centres = ngx_slab_alloc_locked(z->shpool, size);

        if (sh->ivf_centres == NULL) {
            /* no centres: one cell, read whole, as a flat index */
            ngx_log_error(NGX_LOG_WARN, log, 0,
                          "smartflow cache: zone \"%V\" has no room for "
                          "the inverted file's centres (%uz bytes): its "
                          "groups are searched whole; give it more memory",
                          &z->name, size);
            sh->ivf_n = 0;
            sh->ivf_gen++;
            sh->ivf_seq = sh->seq;
            return;
        }
    }

    sh->ivf_n = 0;

    for (i = 0;
         i < z->capacity && sh->ivf_n < NGX_SMARTFLOW_CACHE_IVF_LISTS;
         i++)
    {
        if (ngx_smartflow_cache_vector_nth(z, i, &slot)) {
            ngx_memcpy(sh->ivf_centres + (size_t) sh->ivf_n * z->dim,
                       ngx_sf_cache_vec(z, slot), z->dim * sizeof(float));
            sh->ivf_n++;
        }
    }

    sh->ivf_gen++;
    sh->ivf_seq = sh->seq;
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
