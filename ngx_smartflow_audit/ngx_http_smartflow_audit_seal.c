/*
 * Sealing: a closed segment's Merkle root, the log tree's new root and the
 * consistency proof from the last seal's, the chain head, signed under the
 * audit key, written next to the segment, both made write-once.  It runs
 * in a thread pool (its reads, fsync and ioctl may take long), and at
 * start-up, where the state in shared memory is rebuilt from the folder.
 */

#include <sys/ioctl.h>
#include <linux/fs.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <sys/file.h>

#include "ngx_http_smartflow_audit.h"


static void ngx_http_smartflow_audit_seal_thread(void *data, ngx_log_t *log);
static void ngx_http_smartflow_audit_seal_done(ngx_event_t *ev);
static ngx_int_t ngx_http_smartflow_audit_read(u_char *path, u_char **buf,
    size_t *len, char *err, size_t errlen);
static ngx_int_t ngx_http_smartflow_audit_leaves(u_char *buf, size_t len,
    unsigned char (**leaves)[32], uint64_t *n, u_char *head,
    uint64_t *first, uint64_t *last);
static ngx_int_t ngx_http_smartflow_audit_ends(u_char *path, off_t bytes,
    uint64_t *first, uint64_t *last, u_char *head, char *err, size_t errlen);
static ngx_int_t ngx_http_smartflow_audit_line_seq(u_char *p, size_t len,
    uint64_t *seq);
static ngx_int_t ngx_http_smartflow_audit_resume(
    ngx_http_smartflow_audit_main_conf_t *amcf, ngx_uint_t seg,
    ngx_http_smartflow_audit_sh_t *sh, ngx_uint_t follow, char *err,
    size_t errlen);
static void ngx_http_smartflow_audit_protect(ngx_fd_t fd, ngx_flag_t imm,
    char *protection);
static ngx_int_t ngx_http_smartflow_audit_index_segment(u_char *dir,
    ngx_uint_t seg, off_t *total, uint64_t *sum, char *err, size_t errlen);


ngx_int_t
ngx_http_smartflow_audit_seal(ngx_http_smartflow_audit_seal_t *s)
{
    int                   i, np;
    char                 *p, *last;
    u_char               *buf, head[32];
    size_t                len;
    uint64_t              n, first, lastseq;
    ngx_fd_t              fd;
    sf_merkle_ext_t       ext;
    unsigned char       (*leaves)[32];
    char                  seg_root[65], log_root[65], old_root[65], hex[65];
    u_char                path[NGX_MAX_PATH], tmp[NGX_MAX_PATH];
    unsigned char         proof[SF_MERKLE_MAX_LEVEL][32], root[32];
    unsigned char         mac[EVP_MAX_MD_SIZE];
    char                  seal[16384];

    buf = NULL;
    leaves = NULL;
    s->rc = NGX_ERROR;

    ngx_snprintf(path, NGX_MAX_PATH, "%s/" NGX_SMARTFLOW_AUDIT_SEGMENT "%Z",
                 s->dir, s->segment);

    if (s->leaves) {
        /*
         * The workers' leaves: the file is checked against them by its
         * size, its first record's number, its last record's number
         * (the records are numbered without gaps) and hash, reading only
         * its two ends instead of hashing every record again.
         */
        leaves = s->leaves;
        s->leaves = NULL;
        n = s->count;

        if (ngx_http_smartflow_audit_ends(path, s->bytes, &first, &lastseq,
                                          head, s->err, sizeof(s->err))
            != NGX_OK)
        {
            goto failed;
        }

        if (n == 0 || lastseq != first + n - 1
            || ngx_memcmp(leaves[n - 1], head, 32) != 0)
        {
            snprintf(s->err, sizeof(s->err), "%s: its last record is "
                     "%lu from %lu, %lu records expected", path,
                     (unsigned long) lastseq, (unsigned long) first,
                     (unsigned long) n);
            goto failed;
        }

    } else {
        if (ngx_http_smartflow_audit_read(path, &buf, &len, s->err,
                                          sizeof(s->err))
            != NGX_OK)
        {
            goto failed;
        }

        if (ngx_http_smartflow_audit_leaves(buf, len, &leaves, &n, head,
                                            &first, &lastseq)
            != NGX_OK)
        {
            snprintf(s->err, sizeof(s->err), "%s: a record is cut short or "
                     "unreadable", path);
            goto failed;
        }
    }

    /* what the workers appended is what is sealed */
    if (n != s->count || first != s->first
        || ngx_memcmp(head, s->head, 32) != 0)
    {
        snprintf(s->err, sizeof(s->err), "%s holds %lu records from %lu, "
                 "%lu from %lu expected", path, (unsigned long) n,
                 (unsigned long) first, (unsigned long) s->count,
                 (unsigned long) s->first);
        goto failed;
    }

    sf_merkle_root((const unsigned char (*)[32]) leaves, n, root);
    sf_audit_hex(root, 32, seg_root);

    ext.old = &s->old;
    ext.leaves = (const unsigned char (*)[32]) leaves;
    ext.nleaves = n;

    /* the log's tree as the workers extended it, leaf by leaf */
    if (s->log.size != s->old.size + n) {
        snprintf(s->err, sizeof(s->err), "the log tree holds %lu records, "
                 "%lu expected", (unsigned long) s->log.size,
                 (unsigned long) (s->old.size + n));
        goto failed;
    }

    sf_merkle_frontier_root(&s->log, root);
    sf_audit_hex(root, 32, log_root);

    sf_merkle_frontier_root(&s->old, root);
    sf_audit_hex(root, 32, old_root);

    np = 0;

    if (s->old.size > 0) {
        np = sf_merkle_ext_consistency(&ext, proof);
        if (np < 0) {
            snprintf(s->err, sizeof(s->err), "no consistency proof");
            goto failed;
        }
    }

    /*
     * The receipts index; a failure there leaves proofs slower, not
     * wrong.  A seal at start leaves it to the workers' first seal.
     */
    if (!s->offline) {
        s->index_err[0] = '\0';
        (void) ngx_http_smartflow_audit_index(s->dir, s->segment,
                                              s->index_err,
                                              sizeof(s->index_err));
    }

    /* the segment first: it must be on disk and closed before its seal */
    fd = ngx_open_file(path, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        snprintf(s->err, sizeof(s->err), "open(%s) failed: %s", path,
                 strerror(errno));
        goto failed;
    }

    if (fsync(fd) == -1) {
        snprintf(s->err, sizeof(s->err), "fsync(%s) failed: %s", path,
                 strerror(errno));
        (void) ngx_close_file(fd);
        goto failed;
    }

    ngx_http_smartflow_audit_protect(fd, s->immutable, s->protection);
    (void) ngx_close_file(fd);

    p = seal;
    last = seal + sizeof(seal);

    sf_audit_hex(s->head, 32, hex);

    p += snprintf(p, last - p,
                  "{\"segment\":%lu,\"first\":%lu,\"count\":%lu,"
                  "\"segment_root\":\"%s\",\"log_size\":%lu,"
                  "\"log_root\":\"%s\",\"prev_log_size\":%lu,"
                  "\"prev_log_root\":\"%s\",\"consistency\":[",
                  (unsigned long) s->segment, (unsigned long) first,
                  (unsigned long) n, seg_root,
                  (unsigned long) (s->old.size + n), log_root,
                  (unsigned long) s->old.size, old_root);

    for (i = 0; i < np; i++) {
        sf_audit_hex(proof[i], 32, hex);
        p += snprintf(p, last - p, "%s\"%s\"", i ? "," : "", hex);
    }

    /*
     * The log tree's frontier: with it the chain and the tree go on from
     * this seal once the segment is shipped and removed.
     */
    p += snprintf(p, last - p, "],\"log_frontier\":[");

    for (i = 0; i < (int) s->log.count; i++) {
        sf_audit_hex(s->log.node[i], 32, hex);
        p += snprintf(p, last - p, "%s\"%s\"", i ? "," : "", hex);
    }

    sf_audit_hex(s->head, 32, hex);

    p += snprintf(p, last - p,
                  "],\"chain_head\":\"%s\",\"sealed_at\":%ld,"
                  "\"protection\":\"%s\",\"kid\":\"%s\"",
                  hex, (long) s->now, s->protection, s->key.kid);

    if (sf_audit_hmac(&s->key, seal, p - seal, mac) != 0) {
        snprintf(s->err, sizeof(s->err), "HMAC failed");
        goto failed;
    }

    sf_audit_hex(mac, 32, hex);
    p += snprintf(p, last - p, ",\"hmac\":\"%s\"}\n", hex);

    /* a seal appears whole or not at all */
    ngx_snprintf(tmp, NGX_MAX_PATH, "%s/" NGX_SMARTFLOW_AUDIT_SEAL ".tmp%Z",
                 s->dir, s->segment);
    ngx_snprintf(path, NGX_MAX_PATH, "%s/" NGX_SMARTFLOW_AUDIT_SEAL "%Z",
                 s->dir, s->segment);

    fd = ngx_open_file(tmp, NGX_FILE_WRONLY, NGX_FILE_TRUNCATE, 0644);
    if (fd == NGX_INVALID_FILE) {
        snprintf(s->err, sizeof(s->err), "open(%s) failed: %s", tmp,
                 strerror(errno));
        goto failed;
    }

    if (write(fd, seal, p - seal) != p - seal || fsync(fd) == -1) {
        snprintf(s->err, sizeof(s->err), "writing %s failed: %s", tmp,
                 strerror(errno));
        (void) ngx_close_file(fd);
        goto failed;
    }

    if (rename((char *) tmp, (char *) path) == -1) {
        snprintf(s->err, sizeof(s->err), "rename(%s) failed: %s", tmp,
                 strerror(errno));
        (void) ngx_close_file(fd);
        goto failed;
    }

    ngx_http_smartflow_audit_protect(fd, s->immutable, hex);
    (void) ngx_close_file(fd);

    fd = ngx_open_file(s->dir, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd != NGX_INVALID_FILE) {
        (void) fsync(fd);
        (void) ngx_close_file(fd);
    }

    s->rc = NGX_OK;

    if (s->tsa_url[0]) {
        s->tsa_rc = ngx_http_smartflow_audit_tsa_stamp(s->dir, s->segment,
                        s->tsa_url, s->tsa_ca, s->tsa_timeout, s->offline,
                        s->tsa_err,
                        sizeof(s->tsa_err));
    }

failed:

    ngx_free(s->leaves);
    s->leaves = NULL;
    ngx_free(leaves);
    ngx_free(buf);

    return s->rc;
}


/*
 * A segment's size (as expected), its first record's number, its last
 * record's number and leaf hash, from its two ends: pieces of 8k, then
 * larger until they hold a whole line (records with bodies may be long)
 */
static ngx_int_t
ngx_http_smartflow_audit_ends(u_char *path, off_t bytes, uint64_t *first,
    uint64_t *last, u_char *head, char *err, size_t errlen)
{
    u_char           *buf, *p, *nl;
    off_t             size, w;
    ssize_t           n;
    ngx_fd_t          fd;
    ngx_int_t         rc;
    ngx_uint_t        end;
    ngx_file_info_t   fi;

    buf = NULL;
    rc = NGX_ERROR;

    fd = ngx_open_file(path, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        snprintf(err, errlen, "open(%s) failed: %s", path, strerror(errno));
        return NGX_ERROR;
    }

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR) {
        snprintf(err, errlen, "fstat(%s) failed: %s", path, strerror(errno));
        goto done;
    }

    size = ngx_file_size(&fi);

    if (size != bytes || size == 0) {
        snprintf(err, errlen, "%s: %lu bytes, %lu expected", path,
                 (unsigned long) size, (unsigned long) bytes);
        goto done;
    }

    /* end 0: the first line, from the start; end 1: the last one */
    for (end = 0; end < 2; end++) {

        for (w = 8192; /* void */; w *= 2) {
            w = ngx_min(w, size);

            ngx_free(buf);
            buf = ngx_alloc(w, ngx_cycle->log);
            if (buf == NULL) {
                snprintf(err, errlen, "no memory for %s", path);
                goto done;
            }

            n = pread(fd, buf, w, end ? size - w : 0);

            if (n != w) {
                snprintf(err, errlen, "read(%s) failed", path);
                goto done;
            }

            if (end == 0) {
                nl = ngx_strlchr(buf, buf + w, '\n');

                if (nl) {
                    if (ngx_http_smartflow_audit_line_seq(buf, nl - buf,
                                                          first)
                        != NGX_OK)
                    {
                        goto bad;
                    }

                    break;
                }

            } else {
                if (buf[w - 1] != '\n') {
                    goto bad;
                }

                /* the newline before the last line, or the file's start */
                for (p = buf + w - 1; p > buf && p[-1] != '\n'; p--) {
                    /* void */
                }

                if (p > buf || w == size) {
                    if (ngx_http_smartflow_audit_line_seq(p,
                                                    buf + w - 1 - p, last)
                        != NGX_OK)
                    {
                        goto bad;
                    }

                    sf_merkle_leaf(p, buf + w - 1 - p, head);
                    break;
                }
            }

            if (w == size) {
                goto bad;
            }
        }
    }

    rc = NGX_OK;
    goto done;

bad:

    snprintf(err, errlen, "%s: a record is cut short or unreadable", path);

done:

    ngx_free(buf);
    (void) ngx_close_file(fd);

    return rc;
}


/* a record line's number */
static ngx_int_t
ngx_http_smartflow_audit_line_seq(u_char *p, size_t len, uint64_t *seq)
{
    const char       *why;
    sf_audit_tail_t   t;

    if (sf_audit_tail_parse((char *) p, len, &t, &why) != 0) {
        return NGX_ERROR;
    }

    *seq = t.seq;

    return NGX_OK;
}


/* read-only always; immutable (chattr +i) when asked for and allowed */
static void
ngx_http_smartflow_audit_protect(ngx_fd_t fd, ngx_flag_t imm,
    char *protection)
{
    int  flags;

    (void) fchmod(fd, 0444);
    ngx_cpystrn((u_char *) protection, (u_char *) "read-only", 16);

    if (!imm) {
        return;
    }

    if (ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0) {
        flags |= FS_IMMUTABLE_FL;

        if (ioctl(fd, FS_IOC_SETFLAGS, &flags) == 0) {
            ngx_cpystrn((u_char *) protection, (u_char *) "immutable", 16);
        }
    }
}


static ngx_int_t
ngx_http_smartflow_audit_read(u_char *path, u_char **buf, size_t *len,
    char *err, size_t errlen)
{
    u_char           *p;
    ssize_t           n;
    ngx_fd_t          fd;
    ngx_file_info_t   fi;

    *buf = NULL;
    *len = 0;

    fd = ngx_open_file(path, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        if (ngx_errno == NGX_ENOENT) {
            return NGX_OK;
        }

        snprintf(err, errlen, "open(%s) failed: %s", path, strerror(errno));
        return NGX_ERROR;
    }

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR) {
        snprintf(err, errlen, "fstat(%s) failed: %s", path, strerror(errno));
        (void) ngx_close_file(fd);
        return NGX_ERROR;
    }

    p = ngx_alloc(ngx_file_size(&fi) + 1, ngx_cycle->log);
    if (p == NULL) {
        snprintf(err, errlen, "no memory for %s", path);
        (void) ngx_close_file(fd);
        return NGX_ERROR;
    }

    n = ngx_file_size(&fi) ? read(fd, p, ngx_file_size(&fi)) : 0;
    (void) ngx_close_file(fd);

    if (n != ngx_file_size(&fi)) {
        snprintf(err, errlen, "read(%s) failed", path);
        ngx_free(p);
        return NGX_ERROR;
    }

    *buf = p;
    *len = n;

    return NGX_OK;
}


/* every record's leaf hash; the last line's hash; first and last seq */
static ngx_int_t
ngx_http_smartflow_audit_leaves(u_char *buf, size_t len,
    unsigned char (**leaves)[32], uint64_t *n, u_char *head,
    uint64_t *first, uint64_t *last)
{
    u_char           *p, *end, *eol;
    uint64_t          count, i;
    const char       *why;
    sf_audit_tail_t   t;

    *leaves = NULL;
    *n = 0;
    *first = 0;
    *last = 0;
    ngx_memzero(head, 32);

    if (len && buf[len - 1] != '\n') {
        return NGX_ERROR;
    }

    /* memchr(): a segment is megabytes, a byte loop shows in profiles */
    count = 0;
    end = buf + len;

    for (p = buf; p < end; p = eol + 1) {
        eol = memchr(p, '\n', end - p);
        if (eol == NULL) {
            break;
        }

        count++;
    }

    if (count == 0) {
        return NGX_OK;
    }

    *leaves = ngx_alloc(count * 32, ngx_cycle->log);
    if (*leaves == NULL) {
        return NGX_ERROR;
    }

    p = buf;

    for (i = 0; i < count; i++) {
        eol = memchr(p, '\n', end - p);

        /* the ends give the numbers; every line is hashed as it is */
        if (i == 0 || i == count - 1) {
            if (sf_audit_tail_parse((char *) p, eol - p, &t, &why) != 0) {
                return NGX_ERROR;
            }

            if (i == 0) {
                *first = t.seq;
            }

            *last = t.seq;

        } else if (eol == p || *p != '{') {
            return NGX_ERROR;
        }

        sf_merkle_leaf(p, eol - p, (*leaves)[i]);

        if (i == count - 1) {
            ngx_memcpy(head, (*leaves)[i], 32);
        }

        p = eol + 1;
    }

    *n = count;

    return NGX_OK;
}


/*
 * The receipts index, DIR/receipts: a proof by receipt id reads the one
 * segment the index names instead of every segment of the folder.  Its
 * files are named by an id's first two hex digits and hold 20-byte
 * entries, the id's 16 bytes and its segment's number (big-endian).
 * "indexed" reads "N C0 ... C255 S0 ... S255": the ids of segments 1 to
 * N are in, file b holds them in its first Cb entries, whose sum
 * (ngx_http_smartflow_audit_index_sum()) is Sb, in hex; it is renamed in
 * whole.  A proof trusts a miss only while the id's file is as long as
 * "indexed" counts and its first Cb entries sum to Sb (see
 * ngx_http_smartflow_audit_index_find()); a proof that finds a sum
 * wrong leaves "damaged" in the folder.
 *
 * One indexer at a time holds an flock on "lock"; a seal that finds it
 * held leaves its segment to the holder, which goes on to the segments
 * closed meanwhile, so no seal waits behind the indexing of a whole
 * folder.  A file shorter than its count, or not a plain file, or
 * "indexed" unreadable, or "damaged" there, and the index is made again
 * from the segments.
 */
ngx_int_t
ngx_http_smartflow_audit_index(u_char *dir, ngx_uint_t segment, char *err,
    size_t errlen)
{
    int              fd, lock;
    u_char          *p;
    size_t           len;
    ngx_int_t        rc, done;
    ngx_uint_t       b, seg, rebuild;
    struct stat      st;
    ngx_file_info_t  fi;
    off_t            count[256];
    uint64_t         sum[256];
    u_char           path[NGX_MAX_PATH], tmp[NGX_MAX_PATH];
    u_char           marker[NGX_SMARTFLOW_AUDIT_INDEX_MARKER];

    ngx_snprintf(path, NGX_MAX_PATH, "%s/receipts%Z", dir);

    if (mkdir((char *) path, 0755) == -1 && errno != EEXIST) {
        snprintf(err, errlen, "mkdir(%s) failed: %s", path, strerror(errno));
        return NGX_ERROR;
    }

    ngx_snprintf(path, NGX_MAX_PATH, "%s/receipts/lock%Z", dir);

    lock = open((char *) path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW,
                0644);
    if (lock == -1) {
        snprintf(err, errlen, "open(%s) failed: %s", path, strerror(errno));
        return NGX_ERROR;
    }

    if (flock(lock, LOCK_EX | LOCK_NB) == -1) {
        if (errno == EWOULDBLOCK) {
            /* the holder indexes this segment too once it is closed */
            (void) close(lock);
            return NGX_OK;
        }

        snprintf(err, errlen, "flock(%s) failed: %s", path, strerror(errno));
        (void) close(lock);
        return NGX_ERROR;
    }

    done = ngx_http_smartflow_audit_index_read(dir, count, sum);
    rebuild = (done == NGX_ERROR);

    if (done > 0) {
        /* a number past the folder's segments is not the index's own */
        ngx_snprintf(path, NGX_MAX_PATH, "%s/" NGX_SMARTFLOW_AUDIT_SEAL "%Z",
                     dir, (ngx_uint_t) done);
        ngx_snprintf(tmp, NGX_MAX_PATH, "%s/" NGX_SMARTFLOW_AUDIT_SEGMENT
                     "%Z", dir, (ngx_uint_t) done);

        rebuild = (ngx_file_info(path, &fi) == NGX_FILE_ERROR
                   && ngx_file_info(tmp, &fi) == NGX_FILE_ERROR);
    }

    /* a file whose entries a proof found not to match their sum */
    ngx_snprintf(path, NGX_MAX_PATH, "%s/receipts/damaged%Z", dir);

    if (unlink((char *) path) == 0) {
        rebuild = 1;
    }

    for (b = 0; !rebuild && b < 256; b++) {
        ngx_snprintf(path, NGX_MAX_PATH, "%s/receipts/%02xi%Z", dir, b);

        if (lstat((char *) path, &st) == -1) {
            rebuild = (errno != ENOENT || count[b] != 0);
            continue;
        }

        rebuild = (!S_ISREG(st.st_mode) || st.st_size < count[b] * 20);
    }

    if (rebuild) {
        /* no proof trusts the old number while the files are made again */
        ngx_snprintf(path, NGX_MAX_PATH, "%s/receipts/indexed%Z", dir);
        (void) unlink((char *) path);

        for (b = 0; b < 256; b++) {
            ngx_snprintf(path, NGX_MAX_PATH, "%s/receipts/%02xi%Z", dir, b);
            (void) unlink((char *) path);
            count[b] = 0;
            sum[b] = 0;
        }

        done = 0;
    }

    rc = NGX_OK;

    for (seg = done + 1; /* void */; seg++) {

        if (seg > segment) {
            /* closed meanwhile: the next one exists */
            ngx_snprintf(path, NGX_MAX_PATH, "%s/"
                         NGX_SMARTFLOW_AUDIT_SEGMENT "%Z", dir, seg + 1);

            if (ngx_file_info(path, &fi) == NGX_FILE_ERROR) {
                break;
            }
        }

        rc = ngx_http_smartflow_audit_index_segment(dir, seg, count, sum,
                                                    err, errlen);
        if (rc != NGX_OK) {
            break;
        }
    }

    seg--;

    if (seg == (ngx_uint_t) done && !rebuild) {
        (void) close(lock);
        return rc;
    }

    /*
     * No fsync, which would slow every seal several times: the files
     * grow on disk only with their data (ext4, XFS and Btrfs write a
     * file's size once its data is written), so a crash leaves a file
     * shorter than "indexed" counts, which a proof does not trust and
     * the next seal makes again, or "indexed" empty or cut short, which
     * is not read.
     */
    p = ngx_snprintf(marker, sizeof(marker), "%ui", seg);

    for (b = 0; b < 256; b++) {
        p = ngx_snprintf(p, marker + sizeof(marker) - p, " %O", count[b]);
    }

    for (b = 0; b < 256; b++) {
        p = ngx_snprintf(p, marker + sizeof(marker) - p, " %016xL", sum[b]);
    }

    *p++ = '\n';
    len = p - marker;

    ngx_snprintf(tmp, NGX_MAX_PATH, "%s/receipts/indexed.new%Z", dir);
    ngx_snprintf(path, NGX_MAX_PATH, "%s/receipts/indexed%Z", dir);

    fd = open((char *) tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC
                            | O_NOFOLLOW, 0644);

    if (fd == -1
        || write(fd, marker, len) != (ssize_t) len
        || rename((char *) tmp, (char *) path) == -1)
    {
        snprintf(err, errlen, "writing %s failed: %s", path,
                 strerror(errno));
        rc = NGX_ERROR;
    }

    if (fd != -1) {
        (void) close(fd);
    }

    (void) close(lock);

    return rc;
}


/*
 * "indexed": the last segment whose ids are all in, and the count of
 * entries each file holds for them and their sum; NGX_ERROR when it is
 * not there or not whole
 */
ngx_int_t
ngx_http_smartflow_audit_index_read(u_char *dir, off_t *count,
    uint64_t *sum)
{
    int            fd;
    u_char        *p, *eol, *e;
    ssize_t        n;
    ngx_int_t      v, done;
    ngx_uint_t     b, k;
    struct stat    st;
    unsigned char  h[8];
    u_char         path[NGX_MAX_PATH];
    u_char         buf[NGX_SMARTFLOW_AUDIT_INDEX_MARKER];

    ngx_snprintf(path, NGX_MAX_PATH, "%s/receipts/indexed%Z", dir);

    fd = open((char *) path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd == -1) {
        return NGX_ERROR;
    }

    n = (fstat(fd, &st) == 0 && S_ISREG(st.st_mode))
        ? read(fd, buf, sizeof(buf)) : -1;

    (void) close(fd);

    eol = (n > 0) ? ngx_strlchr(buf, buf + n, '\n') : NULL;
    if (eol == NULL) {
        return NGX_ERROR;
    }

    done = NGX_ERROR;
    p = buf;

    /* N, 256 counts, 256 sums */
    for (b = 0; b < 513; b++) {
        e = ngx_strlchr(p, eol, ' ');

        if (e == NULL) {
            e = eol;
        }

        if ((b < 512) != (e != eol)) {
            return NGX_ERROR;
        }

        if (b > 256) {
            if (e - p != 16
                || sf_audit_unhex((char *) p, 16, h, 8) != 8)
            {
                return NGX_ERROR;
            }

            sum[b - 257] = 0;

            for (k = 0; k < 8; k++) {
                sum[b - 257] = (sum[b - 257] << 8) | h[k];
            }

            p = e + 1;
            continue;
        }

        v = ngx_atoi(p, e - p);
        if (v == NGX_ERROR) {
            return NGX_ERROR;
        }

        if (b == 0) {
            done = v;

        } else {
            /* more entries than a file can hold: not the index's own */
            if (v > NGX_MAX_OFF_T_VALUE / 20) {
                return NGX_ERROR;
            }

            count[b - 1] = v;
        }

        p = e + 1;
    }

    return done;
}


/* one segment's ids into the index, from the segment or its leaves file */
static ngx_int_t
ngx_http_smartflow_audit_index_segment(u_char *dir, ngx_uint_t seg,
    off_t *total, uint64_t *sum, char *err, size_t errlen)
{
    int          fd;
    u_char      *buf, *p, *end, *eol, *id, *sp, *e, *entries, *run;
    size_t       len, n, i, b, idlen;
    ngx_uint_t   leaves;
    struct stat  st;
    size_t       count[256], at[256];
    u_char       path[NGX_MAX_PATH];

    ngx_snprintf(path, NGX_MAX_PATH, "%s/" NGX_SMARTFLOW_AUDIT_SEGMENT "%Z",
                 dir, seg);

    if (ngx_http_smartflow_audit_read(path, &buf, &len, err, errlen)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    leaves = 0;

    if (buf == NULL) {
        /* shipped and removed: "SEQ ID LEAF" lines */
        ngx_snprintf(path, NGX_MAX_PATH, "%s/segment-%08ui.leaves%Z", dir,
                     seg);

        if (ngx_http_smartflow_audit_read(path, &buf, &len, err, errlen)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

        if (buf == NULL) {
            /* gone with its leaves: nothing of it to find */
            return NGX_OK;
        }

        leaves = 1;
    }

    n = ngx_http_smartflow_audit_lines(buf, len);
    end = buf + len;

    entries = ngx_alloc(2 * n * 20 + 1, ngx_cycle->log);
    if (entries == NULL) {
        snprintf(err, errlen, "no memory to index %s", path);
        ngx_free(buf);
        return NGX_ERROR;
    }

    run = entries + n * 20;
    ngx_memzero(count, sizeof(count));
    i = 0;

    for (p = buf; p < end && i < n; p = eol + 1) {
        eol = ngx_strlchr(p, end, '\n');
        if (eol == NULL) {
            break;
        }

        if (leaves) {
            sp = ngx_strlchr(p, eol, ' ');
            id = sp ? sp + 1 : eol;
            e = ngx_strlchr(id, eol, ' ');

        } else {
            id = ngx_http_smartflow_audit_record_id(p, eol, &idlen);
            e = (idlen == 32 && id + 32 < eol) ? id + 32 : NULL;
        }

        if (e == NULL || e - id != 32
            || sf_audit_unhex((char *) id, 32, entries + i * 20, 16) != 16)
        {
            continue;
        }

        entries[i * 20 + 16] = (u_char) (seg >> 24);
        entries[i * 20 + 17] = (u_char) (seg >> 16);
        entries[i * 20 + 18] = (u_char) (seg >> 8);
        entries[i * 20 + 19] = (u_char) seg;

        count[entries[i * 20]]++;
        i++;
    }

    ngx_free(buf);
    n = i;

    /* by file: each is appended to once */
    for (b = 0, i = 0; b < 256; b++) {
        at[b] = i;
        i += count[b];
    }

    for (i = 0; i < n; i++) {
        b = entries[i * 20];
        ngx_memcpy(run + at[b]++ * 20, entries + i * 20, 20);
    }

    for (b = 0, i = 0; b < 256; i += count[b], b++) {
        if (count[b] == 0) {
            continue;
        }

        ngx_snprintf(path, NGX_MAX_PATH, "%s/receipts/%02xi%Z", dir, b);

        fd = open((char *) path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW,
                  0644);
        if (fd == -1) {
            snprintf(err, errlen, "open(%s) failed: %s", path,
                     strerror(errno));
            ngx_free(entries);
            return NGX_ERROR;
        }

        /*
         * after the entries "indexed" counts: those of an indexing a
         * crash cut short go, a part of an entry with them
         */
        len = count[b] * 20;
        errno = 0;

        if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)
            || st.st_size < total[b] * 20
            || (st.st_size != total[b] * 20
                && ftruncate(fd, total[b] * 20) == -1)
            || pwrite(fd, run + i * 20, len, total[b] * 20) != (ssize_t) len)
        {
            snprintf(err, errlen, "writing %s failed: %s", path,
                     errno ? strerror(errno) : "not a whole index file");
            (void) close(fd);
            ngx_free(entries);
            return NGX_ERROR;
        }

        total[b] += count[b];
        sum[b] = ngx_http_smartflow_audit_index_sum(run + i * 20, count[b],
                                                    sum[b]);

        (void) close(fd);
    }

    ngx_free(entries);

    return NGX_OK;
}


ngx_int_t
ngx_http_smartflow_audit_post_seal(ngx_http_request_t *r,
    ngx_http_smartflow_audit_main_conf_t *amcf,
    ngx_http_smartflow_audit_seal_t *snapshot)
{
    ngx_thread_task_t                *task;
    ngx_http_smartflow_audit_seal_t  *s;

    task = ngx_calloc(sizeof(ngx_thread_task_t)
                      + sizeof(ngx_http_smartflow_audit_seal_t),
                      r->connection->log);
    if (task == NULL) {
        return NGX_ERROR;
    }

    s = (ngx_http_smartflow_audit_seal_t *) (task + 1);
    ngx_memcpy(s, snapshot, sizeof(ngx_http_smartflow_audit_seal_t));

    task->ctx = s;
    task->handler = ngx_http_smartflow_audit_seal_thread;
    task->event.handler = ngx_http_smartflow_audit_seal_done;
    task->event.data = task;
    task->event.log = ngx_cycle->log;

    if (ngx_thread_task_post(amcf->pool, task) != NGX_OK) {
        ngx_free(task);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * The seal, then its counters in the zone, from the thread: a worker
 * that exits with the seal queued still runs it (the pool's exit waits
 * for its tasks), but not the done handler
 */
static void
ngx_http_smartflow_audit_seal_thread(void *data, ngx_log_t *log)
{
    ngx_slab_pool_t                  *shpool;
    ngx_http_smartflow_audit_sh_t    *sh;
    ngx_http_smartflow_audit_seal_t  *s = data;

    (void) ngx_http_smartflow_audit_seal(s);

    shpool = (ngx_slab_pool_t *) s->zone->shm.addr;
    sh = shpool->data;

    ngx_shmtx_lock(&shpool->mutex);

    sh->seals_pending--;

    if (s->rc == NGX_OK) {
        if (s->segment > sh->last_sealed) {
            sh->last_sealed = s->segment;
            sh->last_seal_time = s->now;
        }

        if (s->tsa_url[0] && s->tsa_rc == NGX_OK) {
            sh->tsa_stamped++;

        } else if (s->tsa_url[0]) {
            sh->tsa_waiting++;
        }

    } else {
        sh->seal_failures++;
    }

    ngx_shmtx_unlock(&shpool->mutex);
}


static void
ngx_http_smartflow_audit_seal_done(ngx_event_t *ev)
{
    ngx_thread_task_t                *task;
    ngx_http_smartflow_audit_seal_t  *s;

    task = ev->data;
    s = task->ctx;

    if (s->rc != NGX_OK) {
        ngx_log_error(NGX_LOG_ALERT, ev->log, 0,
                      "smartflow audit: sealing segment %ui failed: %s",
                      s->segment, s->err);

    } else if (!s->offline && s->index_err[0]) {
        ngx_log_error(NGX_LOG_WARN, ev->log, 0,
                      "smartflow audit: the receipts index stops before "
                      "segment %ui, proofs read the segments after it: %s",
                      s->segment, s->index_err);
    }

    if (s->rc == NGX_OK && s->tsa_url[0] && s->tsa_rc != NGX_OK
        && s->tsa_rc != NGX_DECLINED)
    {
        ngx_log_error(NGX_LOG_WARN, ev->log, 0,
                      "smartflow audit: the timestamp of segment %ui is "
                      "spooled for a retry: %s", s->segment, s->tsa_err);
    }

    ngx_free(task);
}


/*
 * One server writes a folder.  The master takes an flock on DIR/.lock
 * when it makes the zone and keeps it (its workers share the open file,
 * a reload keeps it); a second nginx on the same folder, the new master
 * of a binary upgrade among them, stops at its start instead of writing
 * a second chain into the open segment.
 */
static ngx_int_t
ngx_http_smartflow_audit_lock(ngx_log_t *log, ngx_str_t *dir)
{
    ngx_err_t        err;
    u_char           path[NGX_MAX_PATH];
    static int       fd = -1;
    static u_char    held[NGX_MAX_PATH];

    if (dir->len + sizeof("/.lock") > NGX_MAX_PATH) {
        ngx_log_error(NGX_LOG_EMERG, log, 0,
                      "smartflow audit: \"%V\" is too long a path", dir);
        return NGX_ERROR;
    }

    ngx_sprintf(path, "%V/.lock%Z", dir);

    if (fd != -1) {
        if (ngx_strcmp(path, held) == 0) {
            return NGX_OK;
        }

        (void) close(fd);
        fd = -1;
    }

    fd = open((char *) path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);

    if (fd == -1) {
        ngx_log_error(NGX_LOG_EMERG, log, ngx_errno,
                      "smartflow audit: open() \"%s\" failed", path);
        return NGX_ERROR;
    }

    if (flock(fd, LOCK_EX | LOCK_NB) == -1) {
        err = ngx_errno;
        (void) close(fd);
        fd = -1;

        if (err == EWOULDBLOCK) {
            ngx_log_error(NGX_LOG_EMERG, log, 0,
                          "smartflow audit: the folder \"%V\" is written by "
                          "another nginx (the old master of a binary "
                          "upgrade?): stop it first", dir);

        } else {
            ngx_log_error(NGX_LOG_EMERG, log, err,
                          "smartflow audit: flock() \"%s\" failed", path);
        }

        return NGX_ERROR;
    }

    ngx_cpystrn(held, path, NGX_MAX_PATH);

    return NGX_OK;
}


/*
 * At start-up, before any worker: the sequence, chain head and log tree
 * from the records on disk; closed segments a crash left unsealed are
 * sealed now, and a record cut short by a crash is cut off.
 */
ngx_int_t
ngx_http_smartflow_audit_recover(ngx_log_t *log,
    ngx_http_smartflow_audit_main_conf_t *amcf,
    ngx_http_smartflow_audit_sh_t *sh)
{
    u_char                           *buf, *p, head[32];
    size_t                            len;
    uint64_t                          n, i, first, lastseq;
    ngx_uint_t                        seg, maxseg, minseg, maxseal, base;
    ngx_dir_t                         dir;
    ngx_str_t                         name;
    ngx_err_t                         err;
    ngx_file_info_t                   fi;
    ngx_core_conf_t                  *ccf;
    unsigned char                   (*leaves)[32];
    const sf_audit_key_t             *key;
    u_char                            path[NGX_MAX_PATH];
    ngx_http_smartflow_audit_seal_t  *s;

    ngx_memzero(sh, sizeof(ngx_http_smartflow_audit_sh_t));

    if (ngx_create_dir(amcf->dir.data, 0755) == NGX_FILE_ERROR) {
        err = ngx_errno;
        if (err != NGX_EEXIST) {
            ngx_log_error(NGX_LOG_EMERG, log, err,
                          "smartflow audit: mkdir \"%V\" failed", &amcf->dir);
            return NGX_ERROR;
        }
    }

    /* the workers create the segments, as they do temporary files */
    ccf = (ngx_core_conf_t *) ngx_get_conf(amcf->cycle->conf_ctx,
                                           ngx_core_module);

    if (geteuid() == 0 && ccf->user != (ngx_uid_t) NGX_CONF_UNSET_UINT
        && chown((char *) amcf->dir.data, ccf->user, -1) == -1)
    {
        ngx_log_error(NGX_LOG_EMERG, log, ngx_errno,
                      "smartflow audit: chown \"%V\" failed", &amcf->dir);
        return NGX_ERROR;
    }

    if (ngx_http_smartflow_audit_lock(log, &amcf->dir) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_open_dir(&amcf->dir, &dir) == NGX_ERROR) {
        ngx_log_error(NGX_LOG_EMERG, log, ngx_errno,
                      "smartflow audit: opendir \"%V\" failed", &amcf->dir);
        return NGX_ERROR;
    }

    maxseg = 0;
    maxseal = 0;
    minseg = NGX_MAX_UINT32_VALUE;

    for ( ;; ) {
        ngx_set_errno(0);

        if (ngx_read_dir(&dir) == NGX_ERROR) {
            break;
        }

        name.data = ngx_de_name(&dir);
        name.len = ngx_de_namelen(&dir);

        if (name.len == sizeof("segment-00000000.seal") - 1
            && ngx_strncmp(name.data, "segment-", 8) == 0
            && ngx_strncmp(name.data + 16, ".seal", 5) == 0)
        {
            seg = ngx_atoi(name.data + 8, 8);
            if (seg != (ngx_uint_t) NGX_ERROR && seg > maxseal) {
                maxseal = seg;
            }

            continue;
        }

        if (name.len != sizeof("segment-00000000.log") - 1
            || ngx_strncmp(name.data, "segment-", 8) != 0
            || ngx_strncmp(name.data + 16, ".log", 4) != 0)
        {
            continue;
        }

        seg = ngx_atoi(name.data + 8, 8);
        if (seg != (ngx_uint_t) NGX_ERROR) {
            maxseg = ngx_max(maxseg, seg);
            minseg = ngx_min(minseg, seg);
        }
    }

    (void) ngx_close_dir(&dir);

    s = ngx_calloc(sizeof(ngx_http_smartflow_audit_seal_t), log);
    if (s == NULL) {
        return NGX_ERROR;
    }

    key = sf_audit_keys_current(amcf->keys, ngx_time());

    /*
     * Segments shipped to S3 and removed: the chain and the log tree go
     * on from the seal of the last one gone.
     */
    base = (maxseg == 0) ? maxseal : minseg - 1;

    if (base) {
        if (ngx_http_smartflow_audit_resume(amcf, base, sh, 0, s->err,
                                            sizeof(s->err))
            != NGX_OK)
        {
            goto failed;
        }

        ngx_log_error(NGX_LOG_NOTICE, log, 0,
                      "smartflow audit: segments up to %ui are shipped and "
                      "removed, the chain goes on from record %uL",
                      base, sh->seq);
    }

    maxseg = ngx_max(maxseg, base);

    for (seg = base + 1; seg <= maxseg; seg++) {
        ngx_snprintf(path, NGX_MAX_PATH, "%V/" NGX_SMARTFLOW_AUDIT_SEGMENT
                     "%Z", &amcf->dir, seg);

        if (ngx_http_smartflow_audit_read(path, &buf, &len, s->err,
                                          sizeof(s->err))
            != NGX_OK)
        {
            goto failed;
        }

        /*
         * A hole: a segment shipped and removed while an earlier one
         * stayed (as earlier builds did when an earlier seal failed).
         * Its signed mark and its seal, which must follow the segments
         * before, stand for it; without them its records would be out
         * of the chain, and the start stops.
         */
        if (buf == NULL) {
            if (ngx_http_smartflow_audit_resume(amcf, seg, sh, 1, s->err,
                                                sizeof(s->err))
                != NGX_OK)
            {
                goto failed;
            }

            ngx_log_error(NGX_LOG_NOTICE, log, 0,
                          "smartflow audit: segment %ui is shipped and "
                          "removed, the chain goes on from record %uL",
                          seg, sh->seq);
            continue;
        }

        if (len && buf[len - 1] != '\n') {
            for (p = buf + len; p > buf && p[-1] != '\n'; p--) {
                /* void */
            }

            ngx_log_error(NGX_LOG_ALERT, log, 0,
                          "smartflow audit: %s ends in a record cut short "
                          "(%uz bytes), cut off", path,
                          (size_t) (buf + len - p));

            if (truncate((char *) path, p - buf) == -1) {
                snprintf(s->err, sizeof(s->err), "truncate(%s) failed: %s",
                         path, strerror(errno));
                ngx_free(buf);
                goto failed;
            }

            len = p - buf;
        }

        if (ngx_http_smartflow_audit_leaves(buf, len, &leaves, &n, head,
                                            &first, &lastseq)
            != NGX_OK)
        {
            snprintf(s->err, sizeof(s->err), "%s: a record is unreadable",
                     path);
            ngx_free(leaves);
            ngx_free(buf);
            goto failed;
        }

        ngx_free(buf);

        if (n && sh->seq && first != sh->seq + 1) {
            ngx_log_error(NGX_LOG_ALERT, log, 0,
                          "smartflow audit: %s starts at record %uL, "
                          "%uL expected", path, first, sh->seq + 1);
        }

        ngx_memcpy(&s->old, &sh->log, sizeof(sf_merkle_frontier_t));

        for (i = 0; i < n; i++) {
            sf_merkle_frontier_append(&sh->log, leaves[i]);
        }

        ngx_free(leaves);

        /* an empty segment leaves the chain where it was */
        if (n) {
            sh->seq = lastseq;
            ngx_memcpy(sh->head, head, 32);
        }

        ngx_snprintf(path, NGX_MAX_PATH, "%V/" NGX_SMARTFLOW_AUDIT_SEAL
                     "%Z", &amcf->dir, seg);

        if (ngx_file_info(path, &fi) == NGX_FILE_ERROR) {

            if (seg == maxseg) {
                /* the open segment: appended to from now on */
                sh->segment = seg;
                sh->seg_first = n ? first : 0;
                sh->seg_count = n;
                sh->seg_bytes = len;
                sh->seg_start = ngx_time();
                ngx_memcpy(&sh->sealed, &s->old,
                           sizeof(sf_merkle_frontier_t));
                break;
            }

            if (n == 0 || key == NULL) {
                snprintf(s->err, sizeof(s->err), "segment %lu cannot be "
                         "sealed", (unsigned long) seg);
                goto failed;
            }

            ngx_cpystrn(s->dir, amcf->dir.data, NGX_MAX_PATH);
            s->segment = seg;
            s->first = first;
            s->count = n;
            ngx_memcpy(s->head, sh->head, 32);
            ngx_memcpy(&s->log, &sh->log, sizeof(sf_merkle_frontier_t));
            s->leaves = NULL;
            s->key = *key;
            s->immutable = amcf->immutable;
            s->now = ngx_time();
            s->offline = 1;
            s->tsa_timeout = amcf->tsa_timeout;

            ngx_http_smartflow_audit_tsa_conf(amcf, s->tsa_url,
                                              sizeof(s->tsa_url), s->tsa_ca,
                                              sizeof(s->tsa_ca));

            if (ngx_http_smartflow_audit_seal(s) != NGX_OK) {
                goto failed;
            }

            ngx_log_error(NGX_LOG_NOTICE, log, 0,
                          "smartflow audit: sealed segment %ui left open "
                          "by a stop", seg);
        }

        sh->last_sealed = seg;
        sh->last_seal_time = ngx_time();
        ngx_memcpy(&sh->sealed, &sh->log, sizeof(sf_merkle_frontier_t));
    }

    if (sh->segment == 0) {
        sh->segment = maxseg + 1;
    }

    ngx_free(s);

    return NGX_OK;

failed:

    ngx_log_error(NGX_LOG_EMERG, log, 0, "smartflow audit: %s", s->err);
    ngx_free(s);

    return NGX_ERROR;
}


/* a top-level "name": of a seal, its value's first byte, or NULL */
static u_char *
ngx_http_smartflow_audit_seal_field(u_char *seal, char *name)
{
    u_char  *p;
    u_char   key[64];

    ngx_snprintf(key, sizeof(key), "\"%s\":%Z", name);
    p = (u_char *) ngx_strstr(seal, key);

    return p ? p + ngx_strlen(key) : NULL;
}


static ngx_int_t
ngx_http_smartflow_audit_seal_u64(u_char *seal, char *name, uint64_t *v)
{
    u_char  *p;

    p = ngx_http_smartflow_audit_seal_field(seal, name);
    if (p == NULL || *p < '0' || *p > '9') {
        return NGX_ERROR;
    }

    for (*v = 0; *p >= '0' && *p <= '9'; p++) {
        *v = *v * 10 + (*p - '0');
    }

    return NGX_OK;
}


/* a top-level "name":"64 hex digits" of a seal, as 32 bytes */
static ngx_int_t
ngx_http_smartflow_audit_seal_hash(u_char *seal, char *name, u_char *hash)
{
    u_char  *p;

    p = ngx_http_smartflow_audit_seal_field(seal, name);
    if (p == NULL || *p != '"'
        || sf_audit_unhex((char *) p + 1, 64, hash, 32) != 32)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * The state after segment seg, from its seal alone: the segment itself
 * is gone, which only a confirmed upload (segment-N.shipped) allows.
 * With follow, the segments before seg are in sh, and the seal must go
 * on from them: its first record and the log tree it extends.
 */
static ngx_int_t
ngx_http_smartflow_audit_resume(ngx_http_smartflow_audit_main_conf_t *amcf,
    ngx_uint_t seg, ngx_http_smartflow_audit_sh_t *sh, ngx_uint_t follow,
    char *err, size_t errlen)
{
    u_char           *buf, *p, *mark;
    size_t            len, mlen;
    uint64_t          first, count, size, bit, prev;
    const char       *why;
    ngx_file_info_t   fi;
    u_char            root[32], mine[32], listed[32];
    u_char            path[NGX_MAX_PATH], suffix[64];

    ngx_snprintf(path, NGX_MAX_PATH, "%V/segment-%08ui.shipped%Z",
                 &amcf->dir, seg);

    if (ngx_file_info(path, &fi) == NGX_FILE_ERROR) {
        snprintf(err, errlen, "segment %lu is missing and was not shipped "
                 "(no %s)", (unsigned long) seg, path);
        return NGX_ERROR;
    }

    /* the mark, signed by the gateway, lists this very seal */
    if (ngx_http_smartflow_audit_read(path, &mark, &mlen, err, errlen)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_snprintf(suffix, sizeof(suffix), "/" NGX_SMARTFLOW_AUDIT_SEAL "%Z",
                 seg);

    if (mark == NULL
        || sf_audit_mark_check(amcf->keys, (char *) mark, mlen,
                               (char *) suffix, listed, &why)
           != 0)
    {
        snprintf(err, errlen, "segment %lu is missing and its mark %s "
                 "does not hold: %s", (unsigned long) seg, path,
                 mark ? why : "empty");
        ngx_free(mark);
        return NGX_ERROR;
    }

    ngx_free(mark);

    ngx_snprintf(path, NGX_MAX_PATH, "%V/" NGX_SMARTFLOW_AUDIT_SEAL "%Z",
                 &amcf->dir, seg);

    if (ngx_http_smartflow_audit_read(path, &buf, &len, err, errlen)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (buf == NULL || len == 0) {
        snprintf(err, errlen, "segment %lu is shipped but its seal %s is "
                 "missing", (unsigned long) seg, path);
        ngx_free(buf);
        return NGX_ERROR;
    }

    sf_sha256(buf, len, mine);

    if (ngx_memcmp(mine, listed, 32) != 0) {
        snprintf(err, errlen, "segment %lu is missing and its mark lists "
                 "another seal than %s", (unsigned long) seg, path);
        ngx_free(buf);
        return NGX_ERROR;
    }

    buf[len] = '\0';

    if (ngx_http_smartflow_audit_seal_u64(buf, "first", &first) != NGX_OK
        || ngx_http_smartflow_audit_seal_u64(buf, "count", &count) != NGX_OK
        || ngx_http_smartflow_audit_seal_u64(buf, "log_size", &size)
           != NGX_OK
        || ngx_http_smartflow_audit_seal_hash(buf, "log_root", root)
           != NGX_OK
        || ngx_http_smartflow_audit_seal_hash(buf, "chain_head", sh->head)
           != NGX_OK
        || (p = ngx_http_smartflow_audit_seal_field(buf, "log_frontier"))
           == NULL
        || *p++ != '[')
    {
        snprintf(err, errlen, "%s has no log frontier to go on from",
                 path);
        ngx_free(buf);
        return NGX_ERROR;
    }

    if (follow) {
        sf_merkle_frontier_root(&sh->log, mine);

        if (first != sh->seq + 1
            || ngx_http_smartflow_audit_seal_u64(buf, "prev_log_size",
                                                 &prev)
               != NGX_OK
            || prev != sh->log.size
            || ngx_http_smartflow_audit_seal_hash(buf, "prev_log_root",
                                                  listed)
               != NGX_OK
            || ngx_memcmp(listed, mine, 32) != 0)
        {
            snprintf(err, errlen, "segment %lu is missing and its seal %s "
                     "does not follow segment %lu", (unsigned long) seg,
                     path, (unsigned long) seg - 1);
            ngx_free(buf);
            return NGX_ERROR;
        }
    }

    /* one node a bit of the size, largest first */
    ngx_memzero(&sh->log, sizeof(sf_merkle_frontier_t));
    sh->log.size = size;

    for (bit = (uint64_t) 1 << 63; bit; bit >>= 1) {
        if (!(size & bit)) {
            continue;
        }

        if (*p == ',') {
            p++;
        }

        if (*p != '"'
            || sf_audit_unhex((char *) p + 1, 64,
                              sh->log.node[sh->log.count], 32) != 32
            || p[65] != '"')
        {
            break;
        }

        sh->log.count++;
        p += 66;
    }

    sf_merkle_frontier_root(&sh->log, mine);

    if (*p != ']' || count == 0 || first + count - 1 > size
        || ngx_memcmp(mine, root, 32) != 0)
    {
        snprintf(err, errlen, "%s: the log frontier does not give the "
                 "sealed log root", path);
        ngx_free(buf);
        return NGX_ERROR;
    }

    ngx_free(buf);

    sh->seq = first + count - 1;
    ngx_memcpy(&sh->sealed, &sh->log, sizeof(sf_merkle_frontier_t));
    sh->last_sealed = seg;
    sh->last_seal_time = ngx_time();

    return NGX_OK;
}
