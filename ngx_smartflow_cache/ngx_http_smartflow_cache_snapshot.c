/*
 * The snapshot: with snapshot=PATH on smartflow_cache_zone, the master
 * writes the zone's live entries to PATH when nginx stops (exit_master:
 * no worker waits for it), and a zone made afresh at start-up reads them
 * back, oldest first so that the LRU order survives, without those that
 * expired meanwhile.  The file is written next to PATH, flushed to disk
 * and renamed over it, so a crash while writing leaves the previous
 * snapshot whole.  A reload keeps the zone itself and reads nothing.
 *
 * A snapshot is read once: the start that read it removes it, once the
 * configuration is in place (not "nginx -t").  The file is the zone as
 * it was at the last stop; read again later, by a zone made afresh at a
 * reload that changes its size or by a start after a crash, it would
 * bring back the entries flushed since.
 */

#include <math.h>
#include <sys/mman.h>

#include "ngx_http_smartflow_cache.h"


/*
 * 0003: the MinHash functions of 32 bits; a signature of 0002 differs;
 * 0004: words, pairs and trigrams hashed anew: signatures, vectors and
 * context keys of 0003 differ;
 * 0005: each record with the CRC-32 of its bytes, so that a damaged one
 * (a byte of an answer changed on disk) is left out, not served;
 * 0006: the head with the number of records, set once they are written,
 * so that a file cut at a record's end reads as cut, and with the zone's
 * embedders, so that vectors of another embedder are not compared with
 * the new one's; a CRC-32 of its own
 */
#define NGX_SMARTFLOW_CACHE_SNAP_MAGIC  "SFMC0006"


typedef struct {
    u_char                      magic[8];
    uint32_t                    dim;
    uint32_t                    minhash;
    uint32_t                    records;    /* written after them */
    uint32_t                    embedder_len;
    uint32_t                    crc;        /* of the head, this 0, and
                                               the embedders */
} ngx_smartflow_cache_snap_head_t;  /* then the zone's embedders, a line */


typedef struct {
    u_char                      fp[NGX_SMARTFLOW_CACHE_FP];
    u_char                      ctxk[NGX_SMARTFLOW_CACHE_CTXK];
    int64_t                     expire;
    uint32_t                    prompt_tokens;
    uint32_t                    completion_tokens;
    uint32_t                    part_len;
    uint32_t                    query_len;
    uint32_t                    answer_len;
    uint32_t                    crc;        /* of the record, this 0 */
    u_char                      finish[NGX_SMARTFLOW_CACHE_FINISH];
    uint32_t                    minhash[NGX_SMARTFLOW_CACHE_MINHASH];
} ngx_smartflow_cache_snap_t;   /* then dim floats, then the data */


static uint32_t ngx_smartflow_cache_snapshot_head_crc(
    ngx_smartflow_cache_snap_head_t *head, u_char *embedder);
static ngx_uint_t ngx_smartflow_cache_snapshot_vector(float *vec,
    ngx_uint_t dim);


ngx_int_t
ngx_smartflow_cache_snapshot_write(ngx_smartflow_cache_zone_t *z,
    ngx_log_t *log)
{
    u_char                           *buf, *p, *d;
    size_t                            size;
    ngx_fd_t                          fd;
    ngx_int_t                         rc;
    ngx_str_t                         tmp;
    ngx_uint_t                        n;
    ngx_queue_t                      *q;
    ngx_smartflow_cache_node_t       *node;
    ngx_smartflow_cache_snap_t        rec;
    ngx_smartflow_cache_snap_head_t   head;

    tmp.len = z->snapshot.len + sizeof(".tmp") - 1;
    tmp.data = ngx_alloc(tmp.len + 1, log);
    if (tmp.data == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(tmp.data, "%V.tmp%Z", &z->snapshot);

    /*
     * The users' questions and the answers: readable by the master's user
     * only, a temporary file left by a crash included
     */
    fd = ngx_open_file(tmp.data, NGX_FILE_WRONLY, NGX_FILE_TRUNCATE,
                       NGX_FILE_OWNER_ACCESS);
    if (fd == NGX_INVALID_FILE || fchmod(fd, NGX_FILE_OWNER_ACCESS) == -1) {
        ngx_log_error(NGX_LOG_ERR, log, ngx_errno,
                      "smartflow cache: cannot write the snapshot \"%s\"",
                      tmp.data);

        if (fd != NGX_INVALID_FILE) {
            ngx_close_file(fd);
            (void) ngx_delete_file(tmp.data);
        }

        ngx_free(tmp.data);
        return NGX_ERROR;
    }

    /* no record yet: the head is written again with their number */
    ngx_memzero(&head, sizeof(head));
    ngx_memcpy(head.magic, NGX_SMARTFLOW_CACHE_SNAP_MAGIC, 8);
    head.dim = (uint32_t) z->dim;
    head.minhash = NGX_SMARTFLOW_CACHE_MINHASH;
    head.embedder_len = (uint32_t) z->embedder.len;

    rc = (ngx_write_fd(fd, &head, sizeof(head)) == sizeof(head)
          && ngx_write_fd(fd, z->embedder.data, z->embedder.len)
             == (ssize_t) z->embedder.len)
         ? NGX_OK : NGX_ERROR;

    buf = NULL;
    n = 0;

    ngx_shmtx_lock(&z->shpool->mutex);

    /* the oldest first: read back in this order, the LRU order holds */
    for (q = ngx_queue_last(&z->sh->lru);
         rc == NGX_OK && q != ngx_queue_sentinel(&z->sh->lru);
         q = ngx_queue_prev(q))
    {
        node = ngx_queue_data(q, ngx_smartflow_cache_node_t, lru);

        if (node->expire <= ngx_time()) {
            continue;
        }

        ngx_memzero(&rec, sizeof(rec));
        ngx_memcpy(rec.fp, node->fp, NGX_SMARTFLOW_CACHE_FP);
        ngx_memcpy(rec.ctxk, node->group->key, NGX_SMARTFLOW_CACHE_CTXK);
        rec.expire = node->expire;
        rec.prompt_tokens = node->prompt_tokens;
        rec.completion_tokens = node->completion_tokens;
        rec.part_len = node->part_len;
        rec.query_len = node->query_len;
        rec.answer_len = node->answer_len;
        ngx_memcpy(rec.finish, node->finish, NGX_SMARTFLOW_CACHE_FINISH);
        ngx_memcpy(rec.minhash, node->minhash, sizeof(rec.minhash));

        size = sizeof(rec) + z->dim * sizeof(float) + node->part_len
               + node->query_len + node->answer_len;

        buf = ngx_alloc(size, log);
        if (buf == NULL) {
            rc = NGX_ERROR;
            break;
        }

        d = node->data;
        p = ngx_cpymem(buf, &rec, sizeof(rec));
        p = ngx_cpymem(p, ngx_sf_cache_vec(z, node->slot),
                       z->dim * sizeof(float));
        ngx_memcpy(p, d, node->part_len + node->query_len
                         + node->answer_len);

        rec.crc = ngx_crc32_long(buf, size);
        ngx_memcpy(buf + offsetof(ngx_smartflow_cache_snap_t, crc), &rec.crc,
                   sizeof(uint32_t));

        if (ngx_write_fd(fd, buf, size) != (ssize_t) size) {
            rc = NGX_ERROR;
        }

        ngx_free(buf);
        n++;
    }

    ngx_shmtx_unlock(&z->shpool->mutex);

    /* the number written: a file that ends sooner was cut */
    if (rc == NGX_OK) {
        head.records = (uint32_t) n;
        head.crc = ngx_smartflow_cache_snapshot_head_crc(&head,
                                                         z->embedder.data);

        if (pwrite(fd, &head, sizeof(head), 0) != (ssize_t) sizeof(head)) {
            rc = NGX_ERROR;
        }
    }

    /* on disk before the rename makes it the snapshot */
    if (rc == NGX_OK && fsync(fd) == -1) {
        rc = NGX_ERROR;
    }

    if (ngx_close_file(fd) == NGX_FILE_ERROR) {
        rc = NGX_ERROR;
    }

    if (rc == NGX_OK
        && ngx_rename_file(tmp.data, z->snapshot.data) == NGX_FILE_ERROR)
    {
        rc = NGX_ERROR;
    }

    if (rc != NGX_OK) {
        ngx_log_error(NGX_LOG_ERR, log, ngx_errno,
                      "smartflow cache: writing the snapshot \"%V\" failed",
                      &z->snapshot);
        (void) ngx_delete_file(tmp.data);

    } else {
        ngx_log_error(NGX_LOG_NOTICE, log, 0,
                      "smartflow cache: %ui entries of zone \"%V\" saved "
                      "to \"%V\"", n, &z->name, &z->snapshot);
    }

    ngx_free(tmp.data);

    return rc;
}


/*
 * Called by init_zone for a zone made afresh.  The records are read up to
 * the first that is cut or whose CRC-32 does not match its bytes: those
 * before it are good, and are kept.  A record whose vector no embedder
 * gives (not finite, or neither of length 1 nor the zero vector of an
 * answer stored without one) is left out, and the next ones are read: its
 * CRC-32 matched, so the records' bounds hold.
 */
ngx_int_t
ngx_smartflow_cache_snapshot_read(ngx_smartflow_cache_zone_t *z,
    ngx_log_t *log)
{
    u_char                           *buf, *p, *last, *start;
    float                            *vec;
    off_t                             size;
    size_t                            vsize, n;
    uint32_t                          crc, sum;
    time_t                            now;
    ngx_fd_t                          fd;
    ngx_str_t                         embedder;
    ngx_uint_t                        i, loaded, seen, rejected, novec;
    ngx_file_info_t                   fi;
    ngx_smartflow_cache_item_t        it;
    ngx_smartflow_cache_snap_t        rec;
    ngx_smartflow_cache_snap_head_t   head;

    fd = ngx_open_file(z->snapshot.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        if (ngx_errno != NGX_ENOENT) {
            ngx_log_error(NGX_LOG_WARN, log, ngx_errno,
                          "smartflow cache: the snapshot \"%V\" cannot be "
                          "read; the zone starts empty", &z->snapshot);
        }

        /* none: the first start, or the one read was removed */
        return NGX_OK;
    }

    /* whatever it holds, it is not read again */
    z->snapshot_read = 1;

    buf = NULL;
    loaded = 0;
    rejected = 0;
    vsize = z->dim * sizeof(float);

    /* the vectors copied out of the file, aligned */
    vec = ngx_alloc(vsize, log);
    if (vec == NULL) {
        ngx_close_file(fd);
        return NGX_ERROR;
    }

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_WARN, log, ngx_errno,
                      "smartflow cache: the snapshot \"%V\" cannot be "
                      "read; the zone starts empty", &z->snapshot);
        goto done;
    }

    size = ngx_file_size(&fi);

    /* the magic first: a file of an older format may be shorter */
    if (size < 8) {
        goto bad;
    }

    /*
     * Mapped, not read into memory: a file of any size, even forged
     * (gigabytes of holes), is read no further than its records hold,
     * and costs no allocation that would fail the start.
     */
    if ((uint64_t) size > NGX_MAX_SIZE_T_VALUE) {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "smartflow cache: the snapshot \"%V\" cannot be "
                      "read: %O bytes; the zone starts empty",
                      &z->snapshot, size);
        goto done;
    }

    n = (size_t) size;

    buf = mmap(NULL, n, PROT_READ, MAP_PRIVATE, fd, 0);
    if (buf == MAP_FAILED) {
        buf = NULL;
        ngx_log_error(NGX_LOG_WARN, log, ngx_errno,
                      "smartflow cache: the snapshot \"%V\" cannot be "
                      "read: mmap(%uz) failed; the zone starts empty",
                      &z->snapshot, n);
        goto done;
    }

    if (ngx_memcmp(buf, NGX_SMARTFLOW_CACHE_SNAP_MAGIC, 8) != 0) {

        for (i = 0; i < 8; i++) {
            if (i < 4 ? buf[i] != "SFMC"[i] : buf[i] < '0' || buf[i] > '9') {
                goto bad;
            }
        }

        /* written by an older nginx: its entries would not be found */
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "smartflow cache: the snapshot \"%V\" is of another "
                      "format (%*s, this nginx reads %s); the zone starts "
                      "empty", &z->snapshot, (size_t) 8, buf,
                      NGX_SMARTFLOW_CACHE_SNAP_MAGIC);
        goto done;
    }

    if (n < sizeof(head)) {
        goto bad;
    }

    ngx_memcpy(&head, buf, sizeof(head));

    if (head.minhash != NGX_SMARTFLOW_CACHE_MINHASH
        || head.embedder_len > n - sizeof(head)
        || ngx_smartflow_cache_snapshot_head_crc(&head, buf + sizeof(head))
           != head.crc)
    {
        goto bad;
    }

    if (head.dim != z->dim) {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "smartflow cache: the snapshot \"%V\" holds vectors "
                      "of dim=%uD, zone \"%V\" has dim=%ui; the zone starts "
                      "empty", &z->snapshot, head.dim, &z->name, z->dim);
        goto done;
    }

    embedder.data = buf + sizeof(head);
    embedder.len = head.embedder_len;

    /*
     * Vectors of another embedder, even of this dim=, compare with the
     * new one's as noise: the entries come back without them, and the
     * phases that do not need them find them.
     */
    novec = (embedder.len != z->embedder.len
             || ngx_memcmp(embedder.data, z->embedder.data, embedder.len)
                != 0);

    if (novec) {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "smartflow cache: the snapshot \"%V\" holds the "
                      "vectors of embedder \"%V\", zone \"%V\" uses \"%V\" "
                      "now; its entries are read without their vectors, "
                      "which phase 4 does not compare",
                      &z->snapshot, &embedder, &z->name, &z->embedder);

        /* the vector of an answer stored without one: it matches nothing */
        ngx_memzero(vec, vsize);
    }

    p = buf + sizeof(head) + head.embedder_len;
    last = buf + n;
    now = ngx_time();
    seen = 0;

    while (p < last) {
        if (seen == head.records || last - p < (ssize_t) (sizeof(rec) + vsize))
        {
            /* more than was written, or a record cut short */
            goto bad;
        }

        start = p;
        ngx_memcpy(&rec, p, sizeof(rec));
        p += sizeof(rec);

        if (!novec) {
            ngx_memcpy(vec, p, vsize);
        }

        p += vsize;

        /* summed in 64 bits: three lengths of 32 overflow a size_t of 32 */
        if ((uint64_t) (last - p) < (uint64_t) rec.part_len + rec.query_len
                                    + rec.answer_len
            || rec.finish[NGX_SMARTFLOW_CACHE_FINISH - 1] != '\0')
        {
            goto bad;
        }

        /* the record's bytes as written, its CRC taken as 0 */
        sum = rec.crc;
        rec.crc = 0;

        ngx_crc32_init(crc);
        ngx_crc32_update(&crc, (u_char *) &rec, sizeof(rec));
        ngx_crc32_update(&crc, start + sizeof(rec),
                         vsize + rec.part_len + rec.query_len
                         + rec.answer_len);
        ngx_crc32_final(crc);

        if (crc != sum) {
            goto bad;
        }

        seen++;

        ngx_memzero(&it, sizeof(it));
        ngx_memcpy(it.fp, rec.fp, NGX_SMARTFLOW_CACHE_FP);
        ngx_memcpy(it.ctxk, rec.ctxk, NGX_SMARTFLOW_CACHE_CTXK);
        it.partition.data = p;
        it.partition.len = rec.part_len;
        it.query.data = p + rec.part_len;
        it.query.len = rec.query_len;
        it.answer.data = it.query.data + rec.query_len;
        it.answer.len = rec.answer_len;
        it.finish.data = rec.finish;
        it.finish.len = ngx_strlen(rec.finish);
        it.minhash = rec.minhash;
        it.vec = rec.query_len ? vec : NULL;
        it.ttl = (time_t) rec.expire - now;
        it.prompt_tokens = rec.prompt_tokens;
        it.completion_tokens = rec.completion_tokens;

        p = it.answer.data + rec.answer_len;

        /* an entry with no query has no vector: the slot's is not used */
        if (rec.query_len && !novec
            && !ngx_smartflow_cache_snapshot_vector(vec, z->dim))
        {
            rejected++;
            continue;
        }

        if (it.ttl <= 0) {
            continue;
        }

        if (ngx_smartflow_cache_insert(z, &it, log) == NGX_OK) {
            loaded++;
        }
    }

    if (seen == head.records) {
        ngx_log_error(NGX_LOG_NOTICE, log, 0,
                      "smartflow cache: %ui entries of zone \"%V\" read from "
                      "\"%V\"", loaded, &z->name, &z->snapshot);
        goto done;
    }

    /* the file ends at a record's end, before the last written */

bad:

    /* a damaged snapshot loses the entries, not the start */
    if (loaded) {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "smartflow cache: the snapshot \"%V\" is damaged "
                      "part of the way: %ui entries before the damage are "
                      "read into zone \"%V\", the rest is left out",
                      &z->snapshot, loaded, &z->name);

    } else {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "smartflow cache: the snapshot \"%V\" is damaged; "
                      "the zone starts empty", &z->snapshot);
    }

done:

    if (rejected) {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "smartflow cache: the snapshot \"%V\" is damaged: "
                      "%ui of its entries are left out, their vectors "
                      "(not finite, or not of length 1) are no embedder's",
                      &z->snapshot, rejected);
    }

    if (buf) {
        (void) munmap(buf, n);
    }

    ngx_close_file(fd);
    ngx_free(vec);

    return NGX_OK;
}


static uint32_t
ngx_smartflow_cache_snapshot_head_crc(ngx_smartflow_cache_snap_head_t *head,
    u_char *embedder)
{
    uint32_t                         crc;
    ngx_smartflow_cache_snap_head_t  h;

    h = *head;
    h.crc = 0;

    ngx_crc32_init(crc);
    ngx_crc32_update(&crc, (u_char *) &h, sizeof(h));
    ngx_crc32_update(&crc, embedder, h.embedder_len);
    ngx_crc32_final(crc);

    return crc;
}


/*
 * A vector an embedder gives: finite, of length 1 (both embedders scale
 * theirs so), or all zeros (an answer stored without a vector).
 */
static ngx_uint_t
ngx_smartflow_cache_snapshot_vector(float *vec, ngx_uint_t dim)
{
    double      d, norm;
    ngx_uint_t  i;

    norm = 0;

    for (i = 0; i < dim; i++) {
        d = vec[i];

        if (!isfinite(d)) {
            return 0;
        }

        norm += d * d;
    }

    return norm == 0 || fabs(norm - 1.0) < 1e-3;
}


/*
 * The configuration is in place (init_module, in the master): the
 * snapshots this start read are removed.
 */
void
ngx_smartflow_cache_snapshot_done(ngx_cycle_t *cycle)
{
    ngx_uint_t                             i;
    ngx_smartflow_cache_zone_t           **zp;
    ngx_http_smartflow_cache_main_conf_t  *cmcf;

    if (ngx_test_config) {
        return;
    }

    cmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                           ngx_http_smartflow_cache_module);
    if (cmcf == NULL) {
        return;
    }

    zp = cmcf->zones.elts;

    for (i = 0; i < cmcf->zones.nelts; i++) {
        if (!zp[i]->snapshot_read) {
            continue;
        }

        zp[i]->snapshot_read = 0;

        if (ngx_delete_file(zp[i]->snapshot.data) == NGX_FILE_ERROR
            && ngx_errno != NGX_ENOENT)
        {
            ngx_log_error(NGX_LOG_ALERT, cycle->log, ngx_errno,
                          "smartflow cache: the snapshot \"%V\" read could "
                          "not be removed; a zone made afresh before the "
                          "next stop would read it again", &zp[i]->snapshot);
        }
    }
}
