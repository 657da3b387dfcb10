/*
 * smartflow-verify: checks an audit folder without trusting the gateway
 * that wrote it: every record's chain link, HMAC and key validity, every
 * seal's signature, Merkle roots, chain head and consistency proof from
 * the seal before.  Prints a JSON report; exits 0 when all holds, 1 on
 * the first problem (named precisely), 2 on bad usage.
 *
 *   smartflow-verify [--keys FILE] [--head HEX] [--tsa-ca FILE] PATH
 *
 * --tsa-ca checks each seal's RFC 3161 timestamp (segment-N.tsr) against
 * the time-stamping authority's CA, as "openssl ts -verify -data SEAL -in
 * TSR -CAfile CA" does.
 *
 * --head names the chain head the gateway reported (GET /api/audit/status):
 * records cut off the end of the open segment are found only against it.
 *   smartflow-verify --keys FILE --proof FILE [PATH]
 *                                            an inclusion proof, offline
 *   smartflow-verify --merkle-vectors        proof checks read from stdin
 */

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/ts.h>
#include <openssl/x509.h>

#include "ngx_smartflow_merkle.h"
#include "ngx_smartflow_audit_keys.h"


#define SF_MAX_SEGMENTS  1000000


typedef unsigned char  hash_t[32];


typedef struct {
    int             ok;
    uint64_t        records;
    uint64_t        segments;
    uint64_t        sealed;
    uint64_t        open;
    char            head[65];
    char            log_root[65];
    uint64_t        log_size;
    uint64_t        timestamped;
    uint64_t        ts_pending;
    uint64_t        removed;        /* shipped, gone: by their seals */
    uint64_t        marks;          /* shipped marks checked */

    /* the first problem */
    char            file[512];
    uint64_t        line;
    uint64_t        seq;
    char            check[32];
    char            message[512];
} report_t;


static report_t      rep;
static const char   *tsa_ca;


static void
fail(const char *file, uint64_t line, uint64_t seq, const char *check,
    const char *fmt, ...) __attribute__((format(printf, 5, 6)));


static void
fail(const char *file, uint64_t line, uint64_t seq, const char *check,
    const char *fmt, ...)
{
    va_list  ap;

    if (!rep.ok) {
        return;
    }

    rep.ok = 0;
    snprintf(rep.file, sizeof(rep.file), "%s", file ? file : "");
    rep.line = line;
    rep.seq = seq;
    snprintf(rep.check, sizeof(rep.check), "%s", check);

    va_start(ap, fmt);
    vsnprintf(rep.message, sizeof(rep.message), fmt, ap);
    va_end(ap);
}


static void
json_str(FILE *f, const char *s)
{
    fputc('"', f);

    for ( /* void */ ; *s; s++) {
        if (*s == '"' || *s == '\\') {
            fprintf(f, "\\%c", *s);

        } else if ((unsigned char) *s < 0x20) {
            fprintf(f, "\\u%04x", *s);

        } else {
            fputc(*s, f);
        }
    }

    fputc('"', f);
}


static void
print_report(const char *path)
{
    printf("{\"path\":");
    json_str(stdout, path);
    printf(",\"ok\":%s,\"records\":%" PRIu64 ",\"segments\":%" PRIu64
           ",\"sealed\":%" PRIu64 ",\"open\":%" PRIu64
           ",\"log_size\":%" PRIu64 ",\"timestamped\":%" PRIu64
           ",\"timestamps_pending\":%" PRIu64 ",\"removed\":%" PRIu64
           ",\"shipped_marks\":%" PRIu64 ",\"chain_head\":",
           rep.ok ? "true" : "false", rep.records, rep.segments, rep.sealed,
           rep.open, rep.log_size, rep.timestamped, rep.ts_pending,
           rep.removed, rep.marks);
    json_str(stdout, rep.head);
    printf(",\"log_root\":");
    json_str(stdout, rep.log_root);

    if (!rep.ok) {
        printf(",\"error\":{\"file\":");
        json_str(stdout, rep.file);
        printf(",\"line\":%" PRIu64 ",\"seq\":%" PRIu64 ",\"check\":",
               rep.line, rep.seq);
        json_str(stdout, rep.check);
        printf(",\"message\":");
        json_str(stdout, rep.message);
        printf("}");
    }

    printf("}\n");
}


static char *
read_file(const char *path, size_t *len)
{
    char   *buf;
    FILE   *f;
    long    n;

    f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }

    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0
        || fseek(f, 0, SEEK_SET) != 0)
    {
        fclose(f);
        return NULL;
    }

    buf = malloc(n + 1);
    if (buf == NULL || (n && fread(buf, 1, n, f) != (size_t) n)) {
        free(buf);
        fclose(f);
        return NULL;
    }

    buf[n] = '\0';
    *len = n;
    fclose(f);

    return buf;
}


/* a top-level "name":value of a seal (no user data in seals) */
static const char *
seal_field(const char *seal, const char *name)
{
    char         key[64];
    const char  *p;

    snprintf(key, sizeof(key), "\"%s\":", name);
    p = strstr(seal, key);

    return p ? p + strlen(key) : NULL;
}


static int
seal_u64(const char *seal, const char *name, uint64_t *v)
{
    char        *end;
    const char  *p;

    p = seal_field(seal, name);
    if (p == NULL || *p < '0' || *p > '9') {
        return -1;
    }

    errno = 0;
    *v = strtoull(p, &end, 10);

    return (errno || (*end != ',' && *end != '}')) ? -1 : 0;
}


static int
seal_hash(const char *seal, const char *name, unsigned char *h)
{
    const char  *p;

    /* the digits first: past a NUL before them nothing is read */
    p = seal_field(seal, name);
    if (p == NULL || p[0] != '"'
        || sf_audit_unhex(p + 1, 64, h, 32) != 32 || p[65] != '"')
    {
        return -1;
    }

    return 0;
}


static int
check_mac(const sf_audit_key_t *k, const void *data, size_t len,
    const unsigned char *mac)
{
    unsigned int   n;
    unsigned char  md[EVP_MAX_MD_SIZE];

    if (HMAC(EVP_sha256(), k->key, (int) k->key_len, data, len, md, &n)
        == NULL)
    {
        return -1;
    }

    return CRYPTO_memcmp(md, mac, 32) == 0 ? 0 : -1;
}


static int
cmp_u64(const void *a, const void *b)
{
    uint64_t  x = *(const uint64_t *) a, y = *(const uint64_t *) b;

    return x < y ? -1 : x > y;
}


typedef struct {
    const sf_audit_keys_t  *keys;
    hash_t                 *leaves;         /* the segment's records */
    uint64_t                nleaves;
    uint64_t                base;           /* records before the segment */
    uint64_t                records;        /* records read */
    uint64_t                cap;
    sf_merkle_frontier_t    log;
    unsigned char           head[32];
    uint64_t                seq;
    uint64_t                prev_size;      /* the last seal's tree */
    unsigned char           prev_root[32];
} state_t;


static char *read_seal(state_t *st, const char *path);
static int check_seal(state_t *st, const char *path, char *seal, size_t len);


/* a seal's RFC 3161 timestamp: its signature up to the CA, the imprint */
static int
verify_timestamp(const char *seal, const char *tsr)
{
    int             ok;
    BIO            *in, *data;
    TS_RESP        *resp;
    X509_STORE     *store;
    TS_VERIFY_CTX  *ctx;
    unsigned long   e;
    char            msg[256];

    in = BIO_new_file(tsr, "rb");
    if (in == NULL) {
        fail(tsr, 0, 0, "timestamp", "cannot read the timestamp");
        return -1;
    }

    resp = d2i_TS_RESP_bio(in, NULL);
    BIO_free(in);

    ctx = TS_VERIFY_CTX_new();
    store = X509_STORE_new();
    data = BIO_new_file(seal, "rb");
    ok = 0;

    if (resp && ctx && store && data
        && X509_STORE_load_file(store, tsa_ca) == 1)
    {
        TS_VERIFY_CTX_set_flags(ctx, TS_VFY_VERSION | TS_VFY_SIGNER
                                     | TS_VFY_DATA | TS_VFY_SIGNATURE);
        TS_VERIFY_CTX_set_data(ctx, data);
        TS_VERIFY_CTX_set_store(ctx, store);
        data = NULL;
        store = NULL;

        ok = TS_RESP_verify_response(ctx, resp) == 1;
    }

    if (!ok) {
        e = ERR_peek_last_error();
        ERR_error_string_n(e, msg, sizeof(msg));
        fail(tsr, 0, 0, "timestamp", "the timestamp does not hold for the "
             "seal: %s", e ? msg : "not a timestamp response");
    }

    ERR_clear_error();
    BIO_free(data);
    X509_STORE_free(store);
    TS_VERIFY_CTX_free(ctx);
    TS_RESP_free(resp);

    return ok ? 0 : -1;
}


/*
 * That a seal follows the one before: it names the log size and root of
 * that seal, and its consistency proof shows that log tree a prefix of
 * the sealed one (size, root).  0, or -1 with the failure reported.
 */
static int
seal_follows(state_t *st, const char *path, const char *seal, uint64_t size,
    const unsigned char *root)
{
    int            nproof;
    uint64_t       v;
    const char    *p;
    unsigned char  h[32];
    hash_t         proof[SF_MERKLE_MAX_LEVEL];

    if (seal_u64(seal, "prev_log_size", &v) != 0 || v != st->prev_size
        || seal_hash(seal, "prev_log_root", h) != 0
        || memcmp(h, st->prev_root, 32))
    {
        fail(path, 1, 0, "prev_seal", "the seal does not follow the one "
             "before");
        return -1;
    }

    p = seal_field(seal, "consistency");
    if (p == NULL || *p++ != '[') {
        fail(path, 1, 0, "consistency", "no consistency proof");
        return -1;
    }

    nproof = 0;

    while (*p == '"') {
        if (nproof == SF_MERKLE_MAX_LEVEL
            || sf_audit_unhex(p + 1, 64, proof[nproof], 32) != 32
            || p[65] != '"')
        {
            fail(path, 1, 0, "consistency", "bad proof hash");
            return -1;
        }

        nproof++;
        p += 66;

        if (*p == ',') {
            p++;
        }
    }

    if (*p != ']') {
        fail(path, 1, 0, "consistency", "bad proof");
        return -1;
    }

    if (st->prev_size > 0
        && sf_merkle_verify_consistency(st->prev_size, size,
                                        (const unsigned char (*)[32]) proof,
                                        nproof, st->prev_root, 32, root, 32)
           != 0)
    {
        fail(path, 1, 0, "consistency", "the log tree of the seal before "
             "is not a prefix of this one");
        return -1;
    }

    if (st->prev_size == 0 && nproof != 0) {
        fail(path, 1, 0, "consistency", "a proof from an empty tree");
        return -1;
    }

    return 0;
}


static int
verify_seal(state_t *st, const char *path, uint64_t segno, uint64_t first,
    uint64_t count)
{
    char           *seal;
    uint64_t        v;
    unsigned char   h[32], root[32];

    seal = read_seal(st, path);
    if (seal == NULL) {
        return -1;
    }

    if (seal_u64(seal, "segment", &v) != 0 || v != segno) {
        fail(path, 1, 0, "seal", "seals another segment");
        goto bad;
    }

    if (seal_u64(seal, "first", &v) != 0 || v != first
        || seal_u64(seal, "count", &v) != 0 || v != count)
    {
        fail(path, 1, 0, "seal_count", "the segment holds %" PRIu64
             " records from %" PRIu64 ", the seal says otherwise",
             count, first);
        goto bad;
    }

    sf_merkle_root((const unsigned char (*)[32])
                   (st->leaves + st->nleaves - count), count, root);

    if (seal_hash(seal, "segment_root", h) != 0 || memcmp(h, root, 32)) {
        fail(path, 1, 0, "segment_root", "the records' Merkle root is not "
             "the sealed one");
        goto bad;
    }

    if (seal_hash(seal, "chain_head", h) != 0 || memcmp(h, st->head, 32)) {
        fail(path, 1, 0, "chain_head", "the chain head is not the sealed "
             "one");
        goto bad;
    }

    sf_merkle_frontier_root(&st->log, root);

    if (seal_u64(seal, "log_size", &v) != 0 || v != st->base + st->nleaves
        || seal_hash(seal, "log_root", h) != 0 || memcmp(h, root, 32))
    {
        fail(path, 1, 0, "log_root", "the log's Merkle root is not the "
             "sealed one");
        goto bad;
    }

    if (seal_follows(st, path, seal, st->base + st->nleaves, root) != 0) {
        goto bad;
    }

    st->prev_size = st->base + st->nleaves;
    memcpy(st->prev_root, root, 32);

    free(seal);
    return 0;

bad:

    free(seal);
    return -1;
}


/* the seal's signature and its key's validity at the seal's time */
static char *
read_seal(state_t *st, const char *path)
{
    char    *seal;
    size_t   len;

    seal = read_file(path, &len);
    if (seal == NULL) {
        fail(path, 0, 0, "seal", "cannot read: %s", strerror(errno));
        return NULL;
    }

    if (len == 0 || seal[len - 1] != '\n' || memchr(seal, '\n', len - 1)) {
        fail(path, 1, 0, "seal", "not one line");
        free(seal);
        return NULL;
    }

    seal[--len] = '\0';

    if (check_seal(st, path, seal, len) != 0) {
        free(seal);
        return NULL;
    }

    return seal;
}


/* a seal's line, without its newline: signed, by a key valid then */
static int
check_seal(state_t *st, const char *path, char *seal, size_t len)
{
    char                  kid[SF_AUDIT_KID_LEN + 1];
    uint64_t              sealed_at;
    const char           *p, *q, *macp;
    unsigned char         mac[32];
    const sf_audit_key_t  *k;

    macp = strstr(seal, ",\"hmac\":\"");
    p = seal_field(seal, "kid");

    if (macp == NULL || p == NULL || *p != '"'
        || (q = strchr(p + 1, '"')) == NULL || q - p - 1 > SF_AUDIT_KID_LEN
        || len - (macp - seal) != 9 + 64 + 2
        || sf_audit_unhex(macp + 9, 64, mac, 32) != 32
        || strcmp(macp + 9 + 64, "\"}") != 0)
    {
        fail(path, 1, 0, "seal", "no signature");
        return -1;
    }

    memcpy(kid, p + 1, q - p - 1);
    kid[q - p - 1] = '\0';

    k = sf_audit_keys_find(st->keys, kid);
    if (k == NULL) {
        fail(path, 1, 0, "seal_key", "unknown key id \"%s\"", kid);
        return -1;
    }

    if (check_mac(k, seal, macp - seal, mac) != 0) {
        fail(path, 1, 0, "seal_hmac", "the seal's HMAC does not match");
        return -1;
    }

    if (seal_u64(seal, "sealed_at", &sealed_at) != 0
        || (int64_t) sealed_at < k->not_before
        || (int64_t) sealed_at > k->not_after)
    {
        fail(path, 1, 0, "seal_key", "key \"%s\" was not valid when the "
             "seal was made", kid);
        return -1;
    }

    return 0;
}


/* a seal's "log_frontier": the log tree of log_size records */
static int
seal_frontier(const char *seal, uint64_t size, sf_merkle_frontier_t *f)
{
    uint64_t     bit;
    const char  *p;

    p = seal_field(seal, "log_frontier");
    if (p == NULL || *p++ != '[') {
        return -1;
    }

    memset(f, 0, sizeof(sf_merkle_frontier_t));
    f->size = size;

    for (bit = (uint64_t) 1 << 63; bit; bit >>= 1) {
        if (!(size & bit)) {
            continue;
        }

        if (*p == ',') {
            p++;
        }

        if (*p != '"' || sf_audit_unhex(p + 1, 64, f->node[f->count], 32)
                         != 32
            || p[65] != '"')
        {
            return -1;
        }

        f->count++;
        p += 66;
    }

    return *p == ']' ? 0 : -1;
}


/*
 * segment-N.shipped: signed under a key valid when it was signed, and
 * listing segment N's seal with the SHA-256 of the seal in the folder
 * (the seal stays when the segment goes)
 */
static int
verify_mark(state_t *st, const char *dir, uint64_t segno)
{
    int             rc;
    char           *buf, *sealbuf;
    size_t          len, slen;
    const char     *why;
    char            path[4096], seal[4096], suffix[64];
    unsigned char   listed[32], actual[32];

    snprintf(path, sizeof(path), "%s/segment-%08" PRIu64 ".shipped", dir,
             segno);
    snprintf(seal, sizeof(seal), "%s/segment-%08" PRIu64 ".seal", dir,
             segno);
    snprintf(suffix, sizeof(suffix), "/segment-%08" PRIu64 ".seal", segno);

    buf = read_file(path, &len);
    if (buf == NULL) {
        fail(path, 0, 0, "mark_unreadable", "cannot read the shipped mark");
        return -1;
    }

    rc = -1;
    sealbuf = NULL;

    if (sf_audit_mark_check(st->keys, buf, len, suffix, listed, &why)
        != 0)
    {
        fail(path, 0, 0, "mark_invalid", "%s", why);
        goto done;
    }

    sealbuf = read_file(seal, &slen);
    if (sealbuf == NULL) {
        fail(seal, 0, 0, "seal_missing", "segment %" PRIu64 " is marked "
             "shipped, but its seal is missing", segno);
        goto done;
    }

    sf_sha256(sealbuf, slen, actual);

    if (memcmp(listed, actual, 32) != 0) {
        fail(path, 0, 0, "mark_seal", "the mark lists another seal than "
             "the one in the folder");
        goto done;
    }

    rep.marks++;
    rc = 0;

done:

    free(sealbuf);
    free(buf);

    return rc;
}


/*
 * A segment shipped to S3 and removed from the folder: its seal alone,
 * which must follow the one before (numbers, log size, consistency
 * proof); the last one gives the chain head and log tree to go on from.
 */
static int
verify_removed(state_t *st, const char *path, uint64_t segno, int last)
{
    char                  *seal;
    uint64_t               v, first, count, size;
    unsigned char          root[32], mine[32];
    sf_merkle_frontier_t   f;

    seal = read_seal(st, path);
    if (seal == NULL) {
        return -1;
    }

    if (seal_u64(seal, "segment", &v) != 0 || v != segno) {
        fail(path, 1, 0, "seal", "seals another segment");
        goto bad;
    }

    if (seal_u64(seal, "first", &first) != 0 || first != st->seq + 1
        || seal_u64(seal, "count", &count) != 0 || count == 0
        || seal_u64(seal, "log_size", &size) != 0
        || size != st->prev_size + count
        || seal_hash(seal, "log_root", root) != 0)
    {
        fail(path, 1, st->seq + 1, "sequence", "the removed segment's "
             "seal does not follow the one before (records from %" PRIu64
             " expected)", st->seq + 1);
        goto bad;
    }

    if (seal_follows(st, path, seal, size, root) != 0) {
        goto bad;
    }

    if (seal_frontier(seal, size, &f) == 0) {
        sf_merkle_frontier_root(&f, mine);

        if (memcmp(mine, root, 32) != 0) {
            fail(path, 1, 0, "log_root", "the seal's log frontier does not "
                 "give its log root");
            goto bad;
        }

    } else if (last) {
        fail(path, 1, 0, "log_root", "the last removed segment's seal has "
             "no log frontier to go on from");
        goto bad;
    }

    if (seal_hash(seal, "chain_head", st->head) != 0) {
        fail(path, 1, 0, "chain_head", "no chain head");
        goto bad;
    }

    memcpy(&st->log, &f, sizeof(sf_merkle_frontier_t));
    st->seq = first + count - 1;
    st->base = size;
    st->prev_size = size;
    memcpy(st->prev_root, root, 32);

    free(seal);
    return 0;

bad:

    free(seal);
    return -1;
}


static int
verify_segment(state_t *st, const char *path, uint64_t *first,
    uint64_t *count)
{
    char                  *buf, *p, *end, *eol;
    size_t                 len;
    hash_t                *more;
    uint64_t               line;
    const char            *why;
    sf_audit_tail_t        t;
    unsigned char          mac[32];
    const sf_audit_key_t  *k;

    buf = read_file(path, &len);
    if (buf == NULL) {
        fail(path, 0, 0, "segment", "cannot read: %s", strerror(errno));
        return -1;
    }

    *first = 0;
    *count = 0;
    p = buf;
    end = buf + len;
    line = 0;

    /* the leaves kept are the segment's: the log tree is a frontier */
    st->base += st->nleaves;
    st->nleaves = 0;

    while (p < end) {
        line++;
        eol = memchr(p, '\n', end - p);

        if (eol == NULL) {
            fail(path, line, st->seq + 1, "truncated",
                 "the last record is cut short");
            goto bad;
        }

        if (sf_audit_tail_parse(p, eol - p, &t, &why) != 0) {
            fail(path, line, st->seq + 1, "format", "%s", why);
            goto bad;
        }

        if (t.seq != st->seq + 1) {
            fail(path, line, t.seq, "sequence", "record %" PRIu64
                 " where %" PRIu64 " was expected (records deleted, "
                 "repeated or out of order)", t.seq, st->seq + 1);
            goto bad;
        }

        if (memcmp(t.prev, st->head, 32) != 0) {
            fail(path, line, t.seq, "chain", "\"prev\" is not the hash "
                 "of the record before");
            goto bad;
        }

        k = sf_audit_keys_find(st->keys, t.kid);
        if (k == NULL) {
            fail(path, line, t.seq, "key", "unknown key id \"%s\"", t.kid);
            goto bad;
        }

        /*
         * The signature of SHA-256 of 0x00 and the signed bytes, or, for
         * records written before it, of the signed bytes themselves:
         * both need the key.
         */
        if ((sf_audit_record_mac(k, p, t.signed_len, mac) != 0
             || CRYPTO_memcmp(mac, t.hmac, 32) != 0)
            && check_mac(k, p, t.signed_len, t.hmac) != 0)
        {
            fail(path, line, t.seq, "hmac", "the record's HMAC does not "
                 "match: it was changed");
            goto bad;
        }

        if (t.ts / 1000 < k->not_before || t.ts / 1000 > k->not_after) {
            fail(path, line, t.seq, "key_validity", "key \"%s\" was not "
                 "valid at the record's time", t.kid);
            goto bad;
        }

        if (st->nleaves == st->cap) {
            more = realloc(st->leaves, 2 * st->cap * sizeof(hash_t)
                                       + 1024 * sizeof(hash_t));
            if (more == NULL) {
                fail(path, line, t.seq, "memory", "out of memory");
                goto bad;
            }

            st->leaves = more;
            st->cap = 2 * st->cap + 1024;
        }

        sf_merkle_leaf((unsigned char *) p, eol - p, st->leaves[st->nleaves]);
        sf_merkle_frontier_append(&st->log, st->leaves[st->nleaves]);
        st->nleaves++;
        st->records++;

        memcpy(st->head, st->leaves[st->nleaves - 1], 32);
        st->seq = t.seq;

        if (*count == 0) {
            *first = t.seq;
        }

        (*count)++;
        p = eol + 1;
    }

    free(buf);
    return 0;

bad:

    free(buf);
    return -1;
}


static int
verify_dir(const char *dir, const sf_audit_keys_t *keys)
{
    int             unsealed_seen;
    DIR            *d;
    void           *p;
    char            path[4096], seal[4096], mark[4096];
    size_t          nsegs, nseals, cap, scap, i, j;
    uint64_t       *segs, *seals, n, first, count, start, k;
    struct stat     sb;
    struct dirent  *de;
    state_t         st;

    d = opendir(dir);
    if (d == NULL) {
        fail(dir, 0, 0, "folder", "cannot open: %s", strerror(errno));
        return -1;
    }

    segs = NULL;
    seals = NULL;
    nsegs = nseals = cap = scap = 0;

    while ((de = readdir(d)) != NULL) {
        char  ext[8];
        int   used;

        used = 0;

        if (sscanf(de->d_name, "segment-%8" SCNu64 ".%7s%n", &n, ext, &used)
                != 2
            || strlen(de->d_name) != (size_t) used
            || strlen(de->d_name) < 20)
        {
            continue;
        }

        if (strcmp(ext, "log") == 0) {
            if (nsegs == cap) {
                cap = cap ? 2 * cap : 64;
                p = realloc(segs, cap * sizeof(uint64_t));
                if (p == NULL) {
                    break;
                }

                segs = p;
            }

            segs[nsegs++] = n;

        } else if (strcmp(ext, "seal") == 0) {
            if (nseals == scap) {
                scap = scap ? 2 * scap : 64;
                p = realloc(seals, scap * sizeof(uint64_t));
                if (p == NULL) {
                    break;
                }

                seals = p;
            }

            seals[nseals++] = n;
        }
    }

    closedir(d);

    if (de != NULL) {
        fail(dir, 0, 0, "memory", "out of memory");
        free(segs);
        free(seals);
        return -1;
    }

    if (nsegs) {
        qsort(segs, nsegs, sizeof(uint64_t), cmp_u64);
    }

    if (nseals) {
        qsort(seals, nseals, sizeof(uint64_t), cmp_u64);
    }

    memset(&st, 0, sizeof(st));
    st.keys = keys;
    unsealed_seen = 0;

    /* the first seal follows the empty tree */
    sf_merkle_frontier_root(&st.log, st.prev_root);

    /*
     * The segments before the first one present must all have been
     * shipped to S3 (segment-N.shipped) and removed: their seals alone
     * are checked, and the chain goes on from the last of them.
     */
    start = nsegs ? segs[0] : (nseals ? seals[nseals - 1] + 1 : 1);

    for (k = 1; k < start; k++) {
        snprintf(path, sizeof(path), "%s/segment-%08" PRIu64 ".log", dir,
                 k);
        snprintf(seal, sizeof(seal), "%s/segment-%08" PRIu64 ".shipped",
                 dir, k);

        if (stat(seal, &sb) != 0) {
            fail(path, 0, st.seq + 1, "segment_missing",
                 "segment %" PRIu64 " is missing and was not shipped",
                 k);
            goto done;
        }

        if (verify_mark(&st, dir, k) != 0) {
            goto done;
        }

        snprintf(seal, sizeof(seal), "%s/segment-%08" PRIu64 ".seal", dir,
                 k);

        if (stat(seal, &sb) != 0) {
            fail(seal, 0, st.seq + 1, "seal_missing", "segment %" PRIu64
                 " was shipped and removed, but its seal is missing", k);
            goto done;
        }

        if (verify_removed(&st, seal, k, k == start - 1) != 0) {
            goto done;
        }

        rep.removed++;

        if (tsa_ca) {
            char  tsr[4096];

            snprintf(tsr, sizeof(tsr), "%s/segment-%08" PRIu64 ".tsr", dir,
                     k);

            if (stat(tsr, &sb) == 0) {
                if (verify_timestamp(seal, tsr) != 0) {
                    goto done;
                }

                rep.timestamped++;

            } else {
                rep.ts_pending++;
            }
        }
    }

    for (i = 0, j = 0; i < nsegs; i++) {
        snprintf(path, sizeof(path), "%s/segment-%08" PRIu64 ".log", dir,
                 segs[i]);

        if (segs[i] != start + i) {
            fail(path, 0, st.seq + 1, "segment_missing",
                 "segment %" PRIu64 " is missing", start + i);
            goto done;
        }

        rep.segments++;

        if (verify_segment(&st, path, &first, &count) != 0) {
            goto done;
        }

        while (j < nseals && seals[j] < segs[i]) {
            j++;
        }

        snprintf(seal, sizeof(seal), "%s/segment-%08" PRIu64 ".seal", dir,
                 segs[i]);

        if (j < nseals && seals[j] == segs[i]) {
            if (unsealed_seen) {
                fail(seal, 0, 0, "seal_missing", "an earlier segment has "
                     "no seal");
                goto done;
            }

            if (verify_seal(&st, seal, segs[i], first, count) != 0) {
                goto done;
            }

            rep.sealed++;

            /* shipped and kept (smartflow_audit_s3_keep on) */
            snprintf(mark, sizeof(mark),
                     "%s/segment-%08" PRIu64 ".shipped", dir, segs[i]);

            if (stat(mark, &sb) == 0
                && verify_mark(&st, dir, segs[i]) != 0)
            {
                goto done;
            }

            if (tsa_ca) {
                char  tsr[4096];

                snprintf(tsr, sizeof(tsr), "%s/segment-%08" PRIu64 ".tsr",
                         dir, segs[i]);

                if (stat(tsr, &sb) == 0) {
                    if (verify_timestamp(seal, tsr) != 0) {
                        goto done;
                    }

                    rep.timestamped++;

                } else {
                    /* spooled while the authority was away */
                    rep.ts_pending++;
                }
            }

        } else {
            /* only the last segments may wait for their seal */
            unsealed_seen = 1;
            rep.open++;
        }
    }

    for (j = 0; j < nseals; j++) {
        if (seals[j] >= start
            && (nsegs == 0 || seals[j] > segs[nsegs - 1]))
        {
            snprintf(seal, sizeof(seal), "%s/segment-%08" PRIu64 ".seal",
                     dir, seals[j]);

            if (stat(seal, &sb) == 0) {
                fail(seal, 0, 0, "segment_missing", "a seal without its "
                     "segment");
                goto done;
            }
        }
    }

done:

    rep.records = st.records;
    rep.log_size = st.base + st.nleaves;
    sf_audit_hex(st.head, 32, rep.head);
    sf_merkle_frontier_root(&st.log, st.prev_root);
    sf_audit_hex(st.prev_root, 32, rep.log_root);

    free(st.leaves);
    free(segs);
    free(seals);

    return rep.ok ? 0 : -1;
}


/*
 * stdin, one check a line, hashes in hex ("-" for an empty proof):
 *   inclusion INDEX SIZE LEAF ROOT P1,P2,...
 *   consistency SIZE1 SIZE2 ROOT1 ROOT2 P1,P2,...
 * prints "ok" or "bad" for each.
 */
static int
merkle_vectors(void)
{
    int            r, n;
    char           line[65536], kind[16], a[256], b[256], pr[60000];
    char          *p, *q;
    size_t         np;
    uint64_t       x, y;
    unsigned char  ha[128], hb[128];
    hash_t         proof[SF_MERKLE_MAX_LEVEL + 8];
    int            la, lb;

    while (fgets(line, sizeof(line), stdin)) {
        if (sscanf(line, "%15s %" SCNu64 " %" SCNu64 " %255s %255s %59999s",
                   kind, &x, &y, a, b, pr) != 6)
        {
            printf("bad input\n");
            continue;
        }

        la = strcmp(a, "-") ? sf_audit_unhex(a, strlen(a), ha, sizeof(ha))
                            : 0;
        lb = strcmp(b, "-") ? sf_audit_unhex(b, strlen(b), hb, sizeof(hb))
                            : 0;
        np = 0;
        r = (la < 0 || lb < 0) ? -1 : 0;

        if (strcmp(pr, "-") != 0) {
            for (p = pr; r == 0 && p && *p; p = q ? q + 1 : NULL) {
                q = strchr(p, ',');
                n = q ? (int) (q - p) : (int) strlen(p);

                if (np == SF_MERKLE_MAX_LEVEL + 8
                    || sf_audit_unhex(p, n, proof[np], 32) != 32)
                {
                    r = -1;
                    break;
                }

                np++;
            }
        }

        if (r == 0 && strcmp(kind, "inclusion") == 0) {
            r = (la != 32 || lb != 32) ? -1
                : sf_merkle_verify_inclusion(x, y, ha,
                      (const unsigned char (*)[32]) proof, np, hb);

        } else if (r == 0 && strcmp(kind, "consistency") == 0) {
            r = sf_merkle_verify_consistency(x, y,
                      (const unsigned char (*)[32]) proof, np, ha, la,
                      hb, lb);

        } else if (r == 0) {
            r = -1;
        }

        printf("%s\n", r == 0 ? "ok" : "bad");
    }

    return 0;
}


/*
 * An inclusion proof as GET /api/audit/proof/ID gives it:
 * {"seq":N,"segment":S,"record_sha256":"HEX","sealed":true,"index":I,
 *  "size":C,"leaf_hash":"HEX","proof":["HEX",...],"segment_root":"HEX",
 *  "record_hex":"HEX of the line","seal":{...},"record":{...}}
 * The leaf is hashed from the record itself, and the root must be the
 * one a signed seal gives for that segment: the folder's with PATH (and
 * the folder must verify), else the "seal" the proof carries, checked
 * against the key file.  What the proof shows must be what it proves:
 * each field once, its seq, hashes and "record" those of the record, its
 * seal the one checked.  A proof for a record whose segment was shipped
 * and removed carries no record ("record":null), only "leaf_hash": the
 * record fetched from the bucket must hash to it (SHA-256 of 0x00 and
 * its line).
 */
static int
verify_proof(const char *file, const char *dir, const sf_audit_keys_t *keys)
{
    int               np, rc;
    char             *buf, *rec, *sealbuf, *sp, *tail, *end;
    char              seal[4096], key[64];
    size_t            len, slen, rlen, i;
    state_t           st;
    uint64_t          seq, seg, index, size, sseg, first;
    const char       *p, *q, *why, *where;
    unsigned char     leaf[32], root[32], sroot[32], h[32], digest[32];
    hash_t            proof[SF_MERKLE_MAX_LEVEL];
    sf_audit_tail_t   t;

    static const char  *fields[] = { "seq", "segment", "record_sha256",
                                     "sealed", "index", "size", "leaf_hash",
                                     "proof", "segment_root", "record_hex",
                                     NULL };

    buf = read_file(file, &len);
    if (buf == NULL) {
        fail(file, 0, 0, "proof", "cannot read: %s", strerror(errno));
        return -1;
    }

    rc = -1;
    rec = NULL;
    sealbuf = NULL;

    /* the proof's own fields, the seal it carries, the record shown */
    sp = strstr(buf, ",\"seal\":{");
    tail = sp ? strchr(sp + 8, '}') : NULL;

    if (tail == NULL || strlen(buf) != len) {
        fail(file, 0, 0, "proof", "no seal");
        goto done;
    }

    *sp = '\0';
    tail++;

    for (i = 0; fields[i]; i++) {
        snprintf(key, sizeof(key), "\"%s\":", fields[i]);
        p = strstr(buf, key);

        if (p && strstr(p + 1, key)) {
            fail(file, 0, 0, "proof", "\"%s\" given twice", fields[i]);
            goto done;
        }
    }

    if (seal_u64(buf, "seq", &seq) || seal_u64(buf, "segment", &seg)
        || seal_u64(buf, "index", &index) || seal_u64(buf, "size", &size)
        || seal_hash(buf, "segment_root", root))
    {
        fail(file, 0, 0, "proof", "not an inclusion proof");
        goto done;
    }

    p = seal_field(buf, "record_hex");

    if (p == NULL) {
        if (seal_hash(buf, "leaf_hash", leaf) != 0) {
            fail(file, 0, 0, "proof", "no record");
            goto done;
        }

        goto leaf;
    }

    if (*p != '"' || (q = strchr(p + 1, '"')) == NULL) {
        fail(file, 0, 0, "proof", "no record");
        goto done;
    }

    rlen = (q - p - 1) / 2;
    rec = malloc(rlen + 1);

    if (rec == NULL
        || sf_audit_unhex(p + 1, q - p - 1, (unsigned char *) rec, rlen)
           != (int) rlen)
    {
        fail(file, 0, 0, "proof", "bad record");
        goto done;
    }

    rec[rlen] = '\0';

    if (memchr(rec, '\0', rlen) || memchr(rec, '\n', rlen)
        || sf_audit_tail_parse(rec, rlen, &t, &why) != 0)
    {
        fail(file, 0, seq, "proof", "the record is not a record line");
        goto done;
    }

    if (t.seq != seq) {
        fail(file, 0, seq, "proof", "the proof names record %" PRIu64
             ", its record is %" PRIu64, seq, t.seq);
        goto done;
    }

    sf_merkle_leaf((unsigned char *) rec, rlen, leaf);

    if (seal_field(buf, "leaf_hash")
        && (seal_hash(buf, "leaf_hash", h) != 0 || memcmp(h, leaf, 32)))
    {
        fail(file, 0, seq, "proof", "\"leaf_hash\" is not the record's");
        goto done;
    }

    sf_sha256(rec, rlen, digest);

    if (seal_field(buf, "record_sha256")
        && (seal_hash(buf, "record_sha256", h) != 0
            || memcmp(h, digest, 32)))
    {
        fail(file, 0, seq, "proof", "\"record_sha256\" is not the "
             "record's");
        goto done;
    }

leaf:

    /* what follows the seal: the record shown, exactly, or none */
    end = buf + len;

    while (end > tail && (end[-1] == '\n' || end[-1] == '\r')) {
        end--;
    }

    if (strncmp(tail, ",\"record\":", 10) != 0
        || end - tail < 11 || end[-1] != '}'
        || (rec ? ((size_t) (end - tail - 11) != rlen
                   || memcmp(tail + 10, rec, rlen) != 0)
                : (end - tail != 15 || strncmp(tail + 10, "null", 4) != 0)))
    {
        fail(file, 0, seq, "proof", "\"record\" is not the record proven");
        goto done;
    }

    p = seal_field(buf, "proof");
    if (p == NULL || *p++ != '[') {
        fail(file, 0, 0, "proof", "no proof");
        goto done;
    }

    np = 0;

    while (*p == '"') {
        if (np == SF_MERKLE_MAX_LEVEL
            || sf_audit_unhex(p + 1, 64, proof[np], 32) != 32
            || p[65] != '"')
        {
            fail(file, 0, 0, "proof", "bad proof hash");
            goto done;
        }

        np++;
        p += 66;

        if (*p == ',') {
            p++;
        }
    }

    if (*p != ']') {
        fail(file, 0, 0, "proof", "bad proof");
        goto done;
    }

    if (sf_merkle_verify_inclusion(index, size, leaf,
                                   (const unsigned char (*)[32]) proof, np,
                                   root)
        != 0)
    {
        fail(file, 0, 0, "inclusion", "the record is not in the tree "
             "whose root the proof names");
        goto done;
    }

    /*
     * The root must be one the gateway sealed: the seal of the segment
     * in the folder, or else the one the proof carries, signed by a key
     * valid when it was made, naming this segment, root and size.
     */
    memset(&st, 0, sizeof(state_t));
    st.keys = keys;

    slen = tail - (sp + 8);
    sealbuf = malloc(slen + 1);
    if (sealbuf == NULL) {
        fail(file, 0, 0, "memory", "out of memory");
        goto done;
    }

    memcpy(sealbuf, sp + 8, slen);
    sealbuf[slen] = '\0';

    if (dir) {
        snprintf(seal, sizeof(seal), "%s/segment-%08" PRIu64 ".seal", dir,
                 seg);
        where = seal;
        free(sealbuf);
        sealbuf = read_seal(&st, seal);

        /* the seal shown is the folder's */
        if (sealbuf && (slen != strlen(sealbuf)
                        || memcmp(sealbuf, sp + 8, slen) != 0))
        {
            fail(file, 0, 0, "proof", "the proof carries another seal "
                 "than the folder's");
            goto done;
        }

    } else {
        where = file;

        if (check_seal(&st, file, sealbuf, slen) != 0) {
            goto done;
        }
    }

    if (sealbuf == NULL) {
        goto done;
    }

    if (seal_u64(sealbuf, "segment", &sseg) != 0 || sseg != seg
        || seal_hash(sealbuf, "segment_root", sroot) != 0
        || memcmp(sroot, root, 32) != 0
        || seal_u64(sealbuf, "count", &sseg) != 0 || sseg != size)
    {
        fail(where, 0, 0, "inclusion", "the proof's root is not the "
             "sealed root of segment %" PRIu64, seg);
        goto done;
    }

    /* the segment's records are numbered on from its first */
    if (seal_u64(sealbuf, "first", &first) != 0 || first + index != seq) {
        fail(file, 0, seq, "proof", "record %" PRIu64 " is not the "
             "segment's record at index %" PRIu64, seq, index);
        goto done;
    }

    /* the seals before it and the records must hold too */
    if (dir && verify_dir(dir, keys) != 0) {
        goto done;
    }

    rc = 0;

done:

    free(sealbuf);
    free(rec);
    free(buf);

    return rc;
}


static int
load_keys(const char *path, sf_audit_keys_t *keys)
{
    char    *buf, err[256];
    size_t   len;

    buf = read_file(path, &len);
    if (buf == NULL) {
        fprintf(stderr, "smartflow-verify: cannot read key file %s: %s\n",
                path, strerror(errno));
        return -1;
    }

    if (sf_audit_keys_parse(buf, len, keys, err, sizeof(err)) != 0) {
        fprintf(stderr, "smartflow-verify: key file %s: %s\n", path, err);
        free(buf);
        return -1;
    }

    free(buf);
    return 0;
}


int
main(int argc, char **argv)
{
    int               i, rc;
    char              def[4096];
    const char       *keyfile, *path, *proof, *head;
    static sf_audit_keys_t  keys;

    keyfile = getenv("SMARTFLOW_AUDIT_KEYS");
    path = NULL;
    proof = NULL;
    head = NULL;

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--merkle-vectors") == 0) {
            return merkle_vectors();

        } else if (strcmp(argv[i], "--keys") == 0 && i + 1 < argc) {
            keyfile = argv[++i];

        } else if (strcmp(argv[i], "--tsa-ca") == 0 && i + 1 < argc) {
            tsa_ca = argv[++i];

        } else if (strcmp(argv[i], "--head") == 0 && i + 1 < argc) {
            head = argv[++i];

        } else if (strcmp(argv[i], "--proof") == 0 && i + 1 < argc) {
            proof = argv[++i];

        } else if (argv[i][0] == '-' || path) {
            fprintf(stderr, "usage: smartflow-verify [--keys FILE] "
                    "[--head HEX] "
                    "[--tsa-ca FILE] PATH\n"
                    "       smartflow-verify [--keys FILE] --proof FILE "
                    "[PATH]\n"
                    "       smartflow-verify --merkle-vectors < checks\n");
            return 2;

        } else {
            path = argv[i];
        }
    }

    if (path == NULL && proof == NULL) {
        fprintf(stderr, "usage: smartflow-verify [--keys FILE] PATH\n");
        return 2;
    }

    rep.ok = 1;
    sf_merkle_init();

    if (path && keyfile == NULL) {
        /* the gateway's default: audit.keys next to the folder */
        snprintf(def, sizeof(def), "%s/../audit.keys", path);
        keyfile = def;
    }

    /* a proof holds only under a seal whose signature is checked */
    if (keyfile == NULL) {
        fprintf(stderr, "smartflow-verify: --proof without PATH needs "
                "--keys FILE (or SMARTFLOW_AUDIT_KEYS) to check the "
                "proof's seal\n");
        return 2;
    }

    if (load_keys(keyfile, &keys) != 0) {
        return 2;
    }

    if (proof) {
        rc = verify_proof(proof, path, &keys);

    } else {
        rc = verify_dir(path, &keys);

        if (rc == 0 && head && strcmp(head, rep.head) != 0) {
            fail(path, 0, rep.records, "chain_head", "the chain ends at "
                 "record %" PRIu64 " with head %s, not at the head given",
                 rep.records, rep.head);
            rc = -1;
        }
    }

    print_report(proof ? proof : path);

    if (!rep.ok) {
        fprintf(stderr, "smartflow-verify: %s line %" PRIu64 ": %s: %s\n",
                rep.file, rep.line, rep.check, rep.message);
    }

    return rc == 0 && rep.ok ? 0 : 1;
}
