/*
 * The cache zone, shared by all workers and kept across reloads: entries
 * in a hash table by fingerprint (phase 1), in an LRU queue, and in groups
 * by conversation context (the partition, model, parameters, system
 * prompt and earlier turns), where phase 2 looks for near misses.  Each
 * entry owns one vector slot; vectors added are also written to a ring by
 * sequence number, from which every worker brings its FAISS index up to
 * date (ngx_http_smartflow_cache_vector.c).  All of it under the slab
 * pool's mutex; hashing and embedding happen before the lock, copies out
 * of the zone under it.
 */

#include "ngx_http_smartflow_cache.h"


static ngx_smartflow_cache_node_t *ngx_smartflow_cache_lookup(
    ngx_smartflow_cache_shctx_t *sh, u_char *fp);
static ngx_smartflow_cache_group_t *ngx_smartflow_cache_group(
    ngx_smartflow_cache_shctx_t *sh, u_char *key);
static void ngx_smartflow_cache_group_free(ngx_smartflow_cache_zone_t *z,
    ngx_smartflow_cache_group_t *g);
static void ngx_smartflow_cache_delete(ngx_smartflow_cache_zone_t *z,
    ngx_smartflow_cache_node_t *node);
static ngx_uint_t ngx_smartflow_cache_evict(ngx_smartflow_cache_zone_t *z);
static u_char *ngx_smartflow_cache_copy(ngx_pool_t *pool, u_char *p,
    size_t len);


#define NGX_SMARTFLOW_CACHE_NONE  0xffffffff

/* the bucket of a fingerprint or context key (SHA-256 bytes) */
#define ngx_sf_cache_bucket(sh, p)                                           \
    (((uint32_t) (p)[0] << 24 | (uint32_t) (p)[1] << 16                      \
      | (uint32_t) (p)[2] << 8 | (uint32_t) (p)[3]) & (sh)->mask)


ngx_int_t
ngx_smartflow_cache_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_smartflow_cache_zone_t  *ozone = data;

    size_t                        len, nb;
    uint32_t                      i;
    ngx_time_t                   *tp;
    ngx_smartflow_cache_zone_t   *z;
    ngx_smartflow_cache_shctx_t  *sh;

    z = shm_zone->data;

    if (ozone) {
        /* a reload: the entries stay where they are */
        z->sh = ozone->sh;
        z->shpool = ozone->shpool;

        if (z->capacity != z->sh->capacity) {
            ngx_log_error(NGX_LOG_WARN, shm_zone->shm.log, 0,
                          "smartflow cache: zone \"%V\" keeps its %uD "
                          "entries until a restart", &z->name,
                          z->sh->capacity);
            z->capacity = z->sh->capacity;
        }

        if (z->dim != z->sh->dim) {
            ngx_log_error(NGX_LOG_WARN, shm_zone->shm.log, 0,
                          "smartflow cache: zone \"%V\" keeps its "
                          "vectors of dim=%uD until a restart", &z->name,
                          z->sh->dim);
            z->dim = z->sh->dim;
        }

        return NGX_OK;
    }

    z->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        z->sh = z->shpool->data;
        z->capacity = z->sh->capacity;
        z->dim = z->sh->dim;
        return NGX_OK;
    }

    sh = ngx_slab_alloc(z->shpool, sizeof(ngx_smartflow_cache_shctx_t));
    if (sh == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(sh, sizeof(ngx_smartflow_cache_shctx_t));

    z->sh = sh;
    z->shpool->data = sh;

    ngx_queue_init(&sh->lru);

    sh->slots = ngx_slab_alloc(z->shpool,
                       z->capacity * sizeof(ngx_smartflow_cache_slot_t));
    if (sh->slots == NULL) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "smartflow cache: zone \"%V\" is too small for %ui "
                      "entries (%uz bytes of vectors); give it more "
                      "memory or fewer entries=", &z->name, z->capacity,
                      z->capacity * sizeof(ngx_smartflow_cache_slot_t));
        return NGX_ERROR;
    }

    ngx_memzero(sh->slots, z->capacity * sizeof(ngx_smartflow_cache_slot_t));

    /* the vectors apart, all of one size: dim= may be up to 4096 */
    sh->vecs = ngx_slab_alloc(z->shpool, z->capacity * z->dim * sizeof(float));
    if (sh->vecs == NULL) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "smartflow cache: zone \"%V\" is too small for %ui "
                      "vectors of dim=%ui (%uz bytes); give it more memory, "
                      "fewer entries= or a smaller dim=", &z->name,
                      z->capacity, z->dim,
                      z->capacity * z->dim * sizeof(float));
        return NGX_ERROR;
    }

    sh->dim = (uint32_t) z->dim;

    for (i = 0; i < z->capacity; i++) {
        sh->slots[i].next_free = (i + 1 < z->capacity)
                                 ? i + 1 : NGX_SMARTFLOW_CACHE_NONE;
    }

    /* a bucket or more per entry: a lookup reads a chain of one or two */
    for (nb = 1024; nb < z->capacity; nb <<= 1) { /* void */ }

    sh->mask = (uint32_t) nb - 1;
    sh->entries = ngx_slab_calloc(z->shpool, nb * sizeof(void *));
    sh->groups = ngx_slab_calloc(z->shpool, nb * sizeof(void *));

    if (sh->entries == NULL || sh->groups == NULL) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                      "smartflow cache: zone \"%V\" is too small for %ui "
                      "entries (%uz bytes of hash tables); give it more "
                      "memory or fewer entries=", &z->name, z->capacity,
                      2 * nb * sizeof(void *));
        return NGX_ERROR;
    }

    sh->capacity = z->capacity;
    sh->free = 0;
    sh->epoch = ((uint64_t) ngx_time() << 20) ^ (uint64_t) ngx_pid
                ^ ((uint64_t) ngx_random() << 32);

    /* flushes told by other nodes count from now on */
    tp = ngx_timeofday();
    ngx_sprintf(sh->flush_last, "%T%03M-0%Z", tp->sec, tp->msec);

    len = sizeof(" in smartflow cache zone \"\"") + shm_zone->shm.name.len;

    z->shpool->log_ctx = ngx_slab_alloc(z->shpool, len);
    if (z->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(z->shpool->log_ctx, " in smartflow cache zone \"%V\"%Z",
                &shm_zone->shm.name);

    /* a full zone evicts the oldest entries: not worth a log line */
    z->shpool->log_nomem = 0;

    if (z->snapshot.len) {
        return ngx_smartflow_cache_snapshot_read(z, shm_zone->shm.log);
    }

    return NGX_OK;
}


static ngx_smartflow_cache_node_t *
ngx_smartflow_cache_lookup(ngx_smartflow_cache_shctx_t *sh, u_char *fp)
{
    ngx_smartflow_cache_node_t  *n;

    for (n = sh->entries[ngx_sf_cache_bucket(sh, fp)]; n; n = n->next) {
        if (ngx_memcmp(fp, n->fp, NGX_SMARTFLOW_CACHE_FP) == 0) {
            return n;
        }
    }

    return NULL;
}


static ngx_smartflow_cache_group_t *
ngx_smartflow_cache_group(ngx_smartflow_cache_shctx_t *sh, u_char *key)
{
    ngx_smartflow_cache_group_t  *g;

    for (g = sh->groups[ngx_sf_cache_bucket(sh, key)]; g; g = g->next) {
        if (ngx_memcmp(key, g->key, NGX_SMARTFLOW_CACHE_CTXK) == 0) {
            return g;
        }
    }

    return NULL;
}


static void
ngx_smartflow_cache_group_free(ngx_smartflow_cache_zone_t *z,
    ngx_smartflow_cache_group_t *g)
{
    ngx_smartflow_cache_group_t  **pg;

    for (pg = &z->sh->groups[ngx_sf_cache_bucket(z->sh, g->key)];
         *pg;
         pg = &(*pg)->next)
    {
        if (*pg == g) {
            *pg = g->next;
            break;
        }
    }

    ngx_slab_free_locked(z->shpool, g);
}


static void
ngx_smartflow_cache_delete(ngx_smartflow_cache_zone_t *z,
    ngx_smartflow_cache_node_t *node)
{
    ngx_smartflow_cache_slot_t   *s;
    ngx_smartflow_cache_node_t  **pn;
    ngx_smartflow_cache_group_t  *g;
    ngx_smartflow_cache_shctx_t  *sh;

    sh = z->sh;

    for (pn = &sh->entries[ngx_sf_cache_bucket(sh, node->fp)];
         *pn;
         pn = &(*pn)->next)
    {
        if (*pn == node) {
            *pn = node->next;
            break;
        }
    }

    ngx_queue_remove(&node->lru);

    g = node->group;
    ngx_queue_remove(&node->group_link);

    if (--g->count == 0) {
        ngx_smartflow_cache_group_free(z, g);
    }

    s = &sh->slots[node->slot];
    s->node = NULL;
    s->next_free = sh->free;
    sh->free = node->slot;
    sh->used--;

    ngx_slab_free_locked(z->shpool, node);
}


/* drops the least recently used entry; 0 when there is none */
static ngx_uint_t
ngx_smartflow_cache_evict(ngx_smartflow_cache_zone_t *z)
{
    ngx_queue_t                 *q;
    ngx_smartflow_cache_node_t  *node;

    if (ngx_queue_empty(&z->sh->lru)) {
        return 0;
    }

    q = ngx_queue_last(&z->sh->lru);
    node = ngx_queue_data(q, ngx_smartflow_cache_node_t, lru);

    if (node->expire <= ngx_time()) {
        (void) ngx_atomic_fetch_add(&z->sh->stats.expired, 1);

    } else {
        (void) ngx_atomic_fetch_add(&z->sh->stats.evictions, 1);
    }

    ngx_smartflow_cache_delete(z, node);

    return 1;
}


static u_char *
ngx_smartflow_cache_copy(ngx_pool_t *pool, u_char *p, size_t len)
{
    u_char  *d;

    d = ngx_pnalloc(pool, len ? len : 1);
    if (d && len) {
        ngx_memcpy(d, p, len);
    }

    return d;
}


ngx_int_t
ngx_smartflow_cache_exact(ngx_smartflow_cache_zone_t *z, ngx_pool_t *pool,
    u_char *fp, ngx_smartflow_cache_found_t *f)
{
    u_char                      *p;
    ngx_smartflow_cache_node_t  *node;

    ngx_shmtx_lock(&z->shpool->mutex);

    node = ngx_smartflow_cache_lookup(z->sh, fp);

    if (node == NULL) {
        ngx_shmtx_unlock(&z->shpool->mutex);
        return NGX_DECLINED;
    }

    if (node->expire <= ngx_time()) {
        (void) ngx_atomic_fetch_add(&z->sh->stats.expired, 1);
        ngx_smartflow_cache_delete(z, node);
        ngx_shmtx_unlock(&z->shpool->mutex);
        return NGX_DECLINED;
    }

    ngx_queue_remove(&node->lru);
    ngx_queue_insert_head(&z->sh->lru, &node->lru);
    node->hits++;

    p = node->data + node->part_len + node->query_len;

    f->answer.len = node->answer_len;
    f->answer.data = ngx_smartflow_cache_copy(pool, p, node->answer_len);
    f->finish.len = ngx_strlen(node->finish);
    f->finish.data = ngx_smartflow_cache_copy(pool, node->finish,
                                              f->finish.len);
    f->prompt_tokens = node->prompt_tokens;
    f->completion_tokens = node->completion_tokens;
    ngx_memcpy(f->fp, node->fp, NGX_SMARTFLOW_CACHE_FP);

    ngx_shmtx_unlock(&z->shpool->mutex);

    if (f->answer.data == NULL || f->finish.data == NULL) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * The bucket of a context's group asked for ahead of the lookups: the
 * tables are written only under the lock, but a prefetch reads nothing
 * and cannot fault.
 */
void
ngx_smartflow_cache_prefetch(ngx_smartflow_cache_zone_t *z, u_char *ctxk)
{
#if (defined __GNUC__ || defined __clang__)
    __builtin_prefetch(&z->sh->groups[ngx_sf_cache_bucket(z->sh, ctxk)]);
#endif
}


/* how many entries the context has: none, and phases 2 and 4 are skipped */
ngx_uint_t
ngx_smartflow_cache_context_size(ngx_smartflow_cache_zone_t *z, u_char *ctxk)
{
    ngx_uint_t                    n;
    ngx_smartflow_cache_group_t  *g;

    ngx_shmtx_lock(&z->shpool->mutex);

    g = ngx_smartflow_cache_group(z->sh, ctxk);
    n = g ? g->count : 0;

    ngx_shmtx_unlock(&z->shpool->mutex);

    return n;
}


/*
 * Phase 2: the entries of the same context whose MinHash signature is
 * close enough, the closest first, their queries copied out to be
 * verified without the lock.
 */
ngx_uint_t
ngx_smartflow_cache_near(ngx_smartflow_cache_zone_t *z, ngx_pool_t *pool,
    u_char *ctxk, uint32_t *sig, ngx_uint_t threshold,
    ngx_smartflow_cache_found_t *cand)
{
    time_t                        now;
    ngx_uint_t                    i, n, sim, scanned;
    ngx_queue_t                  *q;
    ngx_smartflow_cache_node_t   *node, *best[NGX_SMARTFLOW_CACHE_CAND];
    ngx_smartflow_cache_group_t  *g;

    ngx_uint_t                    score[NGX_SMARTFLOW_CACHE_CAND];

    now = ngx_time();
    n = 0;

    ngx_shmtx_lock(&z->shpool->mutex);

    g = ngx_smartflow_cache_group(z->sh, ctxk);

    if (g == NULL) {
        ngx_shmtx_unlock(&z->shpool->mutex);
        return 0;
    }

    scanned = 0;

    for (q = ngx_queue_head(&g->entries);
         q != ngx_queue_sentinel(&g->entries)
         && scanned++ < NGX_SMARTFLOW_CACHE_SCAN;
         q = ngx_queue_next(q))
    {
        node = ngx_queue_data(q, ngx_smartflow_cache_node_t, group_link);

        if (node->query_len == 0 || node->expire <= now) {
            continue;
        }

        sim = ngx_smartflow_cache_minhash_sim(sig, node->minhash);
        if (sim < threshold) {
            continue;
        }

        /* keep the best few, sorted */
        for (i = n; i > 0 && score[i - 1] < sim; i--) {
            if (i < NGX_SMARTFLOW_CACHE_CAND) {
                best[i] = best[i - 1];
                score[i] = score[i - 1];
            }
        }

        if (i < NGX_SMARTFLOW_CACHE_CAND) {
            best[i] = node;
            score[i] = sim;
            n += (n < NGX_SMARTFLOW_CACHE_CAND);
        }
    }

    for (i = 0; i < n; i++) {
        node = best[i];
        cand[i].similarity = score[i];
        ngx_memcpy(cand[i].fp, node->fp, NGX_SMARTFLOW_CACHE_FP);
        cand[i].query.len = node->query_len;
        cand[i].query.data = ngx_smartflow_cache_copy(pool,
                                 node->data + node->part_len,
                                 node->query_len);
        if (cand[i].query.data == NULL) {
            n = i;
            break;
        }
    }

    ngx_shmtx_unlock(&z->shpool->mutex);

    return n;
}


/*
 * Phase 4 in a context of at most NGX_SMARTFLOW_CACHE_SCAN_VEC entries:
 * its vectors read in the zone, the k nearest, best first.  A larger
 * context returns NGX_SMARTFLOW_CACHE_LARGE and is left to the worker's
 * FAISS index.
 */
ngx_uint_t
ngx_smartflow_cache_scan(ngx_smartflow_cache_zone_t *z, u_char *ctxk,
    float *vec, ngx_smartflow_cache_ref_t *refs, float *scores, ngx_uint_t k)
{
    float                         d;
    time_t                        now;
    ngx_uint_t                    i, n;
    ngx_queue_t                  *q;
    ngx_smartflow_cache_slot_t   *s;
    ngx_smartflow_cache_node_t   *node;
    ngx_smartflow_cache_group_t  *g;

    now = ngx_time();
    n = 0;

    ngx_shmtx_lock(&z->shpool->mutex);

    g = ngx_smartflow_cache_group(z->sh, ctxk);

    if (g == NULL) {
        ngx_shmtx_unlock(&z->shpool->mutex);
        return 0;
    }

    if (g->count > NGX_SMARTFLOW_CACHE_SCAN_VEC) {
        ngx_shmtx_unlock(&z->shpool->mutex);
        return NGX_SMARTFLOW_CACHE_LARGE;
    }

    for (q = ngx_queue_head(&g->entries);
         q != ngx_queue_sentinel(&g->entries);
         q = ngx_queue_next(q))
    {
        node = ngx_queue_data(q, ngx_smartflow_cache_node_t, group_link);

        if (node->query_len == 0 || node->expire <= now
            || node->slot >= z->sh->capacity)
        {
            continue;
        }

        s = &z->sh->slots[node->slot];

        if (s->node != node) {
            continue;
        }

        d = ngx_smartflow_faiss_dot(vec, ngx_sf_cache_vec(z, node->slot),
                                    z->dim);

        if (n == k && d <= scores[k - 1]) {
            continue;
        }

        /* the k best, sorted; on a tie the newer first, as in every worker */
        for (i = (n < k) ? n : k - 1; i > 0 && scores[i - 1] < d; i--) {
            scores[i] = scores[i - 1];
            refs[i] = refs[i - 1];
        }

        scores[i] = d;
        refs[i].slot = node->slot;
        refs[i].version = s->version;
        n += (n < k);
    }

    ngx_shmtx_unlock(&z->shpool->mutex);

    return n;
}


/*
 * Phase 4: what FAISS found, checked against the zone (the slot still
 * holds the vector that was indexed, and its entry has this context).
 */
ngx_uint_t
ngx_smartflow_cache_refs(ngx_smartflow_cache_zone_t *z, ngx_pool_t *pool,
    u_char *ctxk, ngx_smartflow_cache_ref_t *refs, float *scores,
    ngx_uint_t n, ngx_smartflow_cache_found_t *cand)
{
    time_t                       now;
    ngx_uint_t                   i, j, found, dup;
    ngx_smartflow_cache_slot_t  *s;
    ngx_smartflow_cache_node_t  *node;

    now = ngx_time();
    found = 0;

    ngx_shmtx_lock(&z->shpool->mutex);

    for (i = 0; i < n && found < NGX_SMARTFLOW_CACHE_CAND; i++) {
        if (refs[i].slot >= z->sh->capacity) {
            continue;
        }

        s = &z->sh->slots[refs[i].slot];
        node = s->node;

        if (node == NULL || s->version != refs[i].version
            || node->query_len == 0 || node->expire <= now
            || ngx_memcmp(node->group->key, ctxk, NGX_SMARTFLOW_CACHE_CTXK)
               != 0)
        {
            continue;
        }

        for (dup = 0, j = 0; j < found; j++) {
            dup |= (ngx_memcmp(cand[j].fp, node->fp, NGX_SMARTFLOW_CACHE_FP)
                    == 0);
        }

        if (dup) {
            continue;
        }

        cand[found].similarity = scores[i] <= 0 ? 0
                                 : (ngx_uint_t) (scores[i] * 1000 + 0.5);
        ngx_memcpy(cand[found].fp, node->fp, NGX_SMARTFLOW_CACHE_FP);
        cand[found].query.len = node->query_len;
        cand[found].query.data = ngx_smartflow_cache_copy(pool,
                                     node->data + node->part_len,
                                     node->query_len);
        if (cand[found].query.data == NULL) {
            break;
        }

        found++;
    }

    ngx_shmtx_unlock(&z->shpool->mutex);

    return found;
}


ngx_int_t
ngx_smartflow_cache_insert(ngx_smartflow_cache_zone_t *z,
    ngx_smartflow_cache_item_t *it, ngx_log_t *log)
{
    u_char                       *p;
    size_t                        size;
    time_t                        now;
    uint32_t                      slot;
    ngx_uint_t                    i;
    ngx_smartflow_cache_slot_t   *s;
    ngx_smartflow_cache_node_t   *node, *old;
    ngx_smartflow_cache_group_t  *g;
    ngx_smartflow_cache_shctx_t  *sh;

    size = offsetof(ngx_smartflow_cache_node_t, data)
           + it->partition.len + it->query.len + it->answer.len;
    now = ngx_time();
    sh = z->sh;

    /*
     * an entry larger than a quarter of the zone is not stored: making
     * room for it would evict most of the others, if it fits at all
     */
    if (size > (size_t) (z->shpool->end - z->shpool->start) / 4) {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "smartflow cache: an answer of %uz bytes is over a "
                      "quarter of zone \"%V\", not stored",
                      it->answer.len, &z->name);
        return NGX_DECLINED;
    }

    ngx_shmtx_lock(&z->shpool->mutex);

    old = ngx_smartflow_cache_lookup(sh, it->fp);
    if (old) {
        ngx_smartflow_cache_delete(z, old);
    }

    /* a few expired entries at the cold end go first */
    for (i = 0; i < 4 && !ngx_queue_empty(&sh->lru); i++) {
        old = ngx_queue_data(ngx_queue_last(&sh->lru),
                             ngx_smartflow_cache_node_t, lru);
        if (old->expire > now) {
            break;
        }

        (void) ngx_smartflow_cache_evict(z);
    }

    if (sh->free == NGX_SMARTFLOW_CACHE_NONE) {
        (void) ngx_smartflow_cache_evict(z);
    }

    for ( ;; ) {
        node = ngx_slab_alloc_locked(z->shpool, size);
        if (node || !ngx_smartflow_cache_evict(z)) {
            break;
        }
    }

    if (node == NULL) {
        ngx_shmtx_unlock(&z->shpool->mutex);
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "smartflow cache: an answer of %uz bytes does not fit "
                      "in zone \"%V\"", it->answer.len, &z->name);
        return NGX_DECLINED;
    }

    g = ngx_smartflow_cache_group(sh, it->ctxk);

    while (g == NULL) {
        g = ngx_slab_alloc_locked(z->shpool,
                                  sizeof(ngx_smartflow_cache_group_t));
        if (g) {
            ngx_memcpy(g->key, it->ctxk, NGX_SMARTFLOW_CACHE_CTXK);
            g->count = 0;
            ngx_queue_init(&g->entries);
            g->next = sh->groups[ngx_sf_cache_bucket(sh, it->ctxk)];
            sh->groups[ngx_sf_cache_bucket(sh, it->ctxk)] = g;
            break;
        }

        if (!ngx_smartflow_cache_evict(z)) {
            ngx_slab_free_locked(z->shpool, node);
            ngx_shmtx_unlock(&z->shpool->mutex);
            return NGX_DECLINED;
        }

        /* the eviction may have freed this context's group */
        g = ngx_smartflow_cache_group(sh, it->ctxk);
    }

    if (sh->free == NGX_SMARTFLOW_CACHE_NONE) {
        /* evictions above emptied none: cannot happen, entries own slots */
        ngx_slab_free_locked(z->shpool, node);
        if (g->count == 0) {
            ngx_smartflow_cache_group_free(z, g);
        }
        ngx_shmtx_unlock(&z->shpool->mutex);
        return NGX_DECLINED;
    }

    slot = sh->free;
    s = &sh->slots[slot];
    sh->free = s->next_free;
    sh->used++;

    s->node = node;
    s->version++;

    if (it->vec) {
        ngx_memcpy(ngx_sf_cache_vec(z, slot), it->vec, z->dim * sizeof(float));
    }

    ngx_memcpy(node->fp, it->fp, NGX_SMARTFLOW_CACHE_FP);
    node->group = g;
    node->created = now;
    node->expire = now + it->ttl;
    node->slot = slot;
    node->prompt_tokens = (uint32_t) it->prompt_tokens;
    node->completion_tokens = (uint32_t) it->completion_tokens;
    node->hits = 0;
    node->part_len = it->partition.len;
    node->query_len = it->query.len;
    node->answer_len = it->answer.len;

    ngx_memzero(node->finish, NGX_SMARTFLOW_CACHE_FINISH);
    ngx_memcpy(node->finish, it->finish.data,
               ngx_min(it->finish.len, NGX_SMARTFLOW_CACHE_FINISH - 1));

    if (it->minhash) {
        ngx_memcpy(node->minhash, it->minhash, sizeof(node->minhash));
    }

    p = ngx_cpymem(node->data, it->partition.data, it->partition.len);
    p = ngx_cpymem(p, it->query.data, it->query.len);
    ngx_memcpy(p, it->answer.data, it->answer.len);

    node->next = sh->entries[ngx_sf_cache_bucket(sh, it->fp)];
    sh->entries[ngx_sf_cache_bucket(sh, it->fp)] = node;
    ngx_queue_insert_head(&sh->lru, &node->lru);
    ngx_queue_insert_head(&g->entries, &node->group_link);
    g->count++;

    if (it->vec) {
        sh->ring[sh->seq % NGX_SMARTFLOW_CACHE_RING].slot = slot;
        sh->ring[sh->seq % NGX_SMARTFLOW_CACHE_RING].version = s->version;
        sh->seq++;
    }

    (void) ngx_atomic_fetch_add(&sh->stats.stores, 1);

    ngx_shmtx_unlock(&z->shpool->mutex);

    return NGX_OK;
}


/* the entry of a fingerprint, with its vector slot; 1 if there was one */
ngx_uint_t
ngx_smartflow_cache_remove(ngx_smartflow_cache_zone_t *z, u_char *fp)
{
    ngx_smartflow_cache_node_t  *node;

    ngx_shmtx_lock(&z->shpool->mutex);

    node = ngx_smartflow_cache_lookup(z->sh, fp);

    if (node) {
        ngx_smartflow_cache_delete(z, node);
    }

    ngx_shmtx_unlock(&z->shpool->mutex);

    return node ? 1 : 0;
}


/* all entries, or a partition's; how many went */
ngx_uint_t
ngx_smartflow_cache_flush(ngx_smartflow_cache_zone_t *z, ngx_str_t *part)
{
    ngx_uint_t                   n;
    ngx_queue_t                 *q, *next;
    ngx_smartflow_cache_node_t  *node;

    n = 0;

    ngx_shmtx_lock(&z->shpool->mutex);

    for (q = ngx_queue_head(&z->sh->lru);
         q != ngx_queue_sentinel(&z->sh->lru);
         q = next)
    {
        next = ngx_queue_next(q);
        node = ngx_queue_data(q, ngx_smartflow_cache_node_t, lru);

        if (part && (node->part_len != part->len
                     || ngx_memcmp(node->data, part->data, part->len) != 0))
        {
            continue;
        }

        ngx_smartflow_cache_delete(z, node);
        n++;
    }

    ngx_shmtx_unlock(&z->shpool->mutex);

    return n;
}


void
ngx_smartflow_cache_latency(ngx_smartflow_cache_zone_t *z, ngx_msec_int_t us)
{
    ngx_uint_t  b;

    for (b = 0; b < NGX_SMARTFLOW_CACHE_LAT - 1 && us > 1; b++) {
        us >>= 1;
    }

    (void) ngx_atomic_fetch_add(&z->sh->stats.latency[b], 1);
}
