/*
 * RFC 6962 Merkle trees: hashing, frontiers, making and checking proofs.
 * The checks follow RFC 9162 section 2.1.3.2 and 2.1.4.2 and reject what
 * the transparency-dev vectors reject (a consistency proof from size 0).
 */

/* SHA256_Init() and the rest: see sf_sha256_t */
#define OPENSSL_SUPPRESS_DEPRECATED

#include <string.h>
#include <openssl/evp.h>

#include "ngx_smartflow_merkle.h"


typedef unsigned char  sf_hash_t[SF_MERKLE_HASH];


/*
 * SHA-256 for EVP users (the timestamps), fetched once: an implicit fetch
 * on every digest costs more than hashing a record.
 */
static EVP_MD  *sf_sha256_md;


void
sf_merkle_init(void)
{
    if (sf_sha256_md == NULL) {
        sf_sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
    }
}


const EVP_MD *
sf_merkle_sha256(void)
{
    return sf_sha256_md ? sf_sha256_md : EVP_sha256();
}


void
sf_sha256_init(sf_sha256_t *c)
{
    (void) SHA256_Init(c);
}


void
sf_sha256_update(sf_sha256_t *c, const void *data, size_t len)
{
    (void) SHA256_Update(c, data, len);
}


void
sf_sha256_final(sf_sha256_t *c, unsigned char *out)
{
    (void) SHA256_Final(out, c);
}


void
sf_sha256(const void *data, size_t len, unsigned char *out)
{
    sf_sha256_t  c;

    (void) SHA256_Init(&c);
    (void) SHA256_Update(&c, data, len);
    (void) SHA256_Final(out, &c);
}


/* SHA-256 of a one-byte prefix and up to two pieces */
static void
sf_merkle_hash(unsigned char prefix, const unsigned char *a, size_t alen,
    const unsigned char *b, size_t blen, unsigned char *out)
{
    sf_sha256_t  c;

    (void) SHA256_Init(&c);
    (void) SHA256_Update(&c, &prefix, 1);
    (void) SHA256_Update(&c, a, alen);

    if (blen) {
        (void) SHA256_Update(&c, b, blen);
    }

    (void) SHA256_Final(out, &c);
}


static void
sf_merkle_empty(unsigned char *out)
{
    sf_sha256("", 0, out);
}


static uint64_t
sf_merkle_split(uint64_t n)
{
    uint64_t  k;

    /* the largest power of two below n (n > 1) */
    k = 1;
    while (k << 1 < n) {
        k <<= 1;
    }

    return k;
}


void
sf_merkle_leaf(const unsigned char *data, size_t len, unsigned char *out)
{
    sf_merkle_hash(0, data, len, NULL, 0, out);
}


void
sf_merkle_node(const unsigned char *left, const unsigned char *right,
    unsigned char *out)
{
    sf_hash_t  lr[2];

    /* out may be left or right */
    memcpy(lr[0], left, SF_MERKLE_HASH);
    memcpy(lr[1], right, SF_MERKLE_HASH);
    sf_merkle_hash(1, lr[0], 2 * SF_MERKLE_HASH, NULL, 0, out);
}


void
sf_merkle_root(const unsigned char (*leaves)[SF_MERKLE_HASH], uint64_t n,
    unsigned char *out)
{
    uint64_t   k;
    sf_hash_t  l, r;

    if (n == 0) {
        sf_merkle_empty(out);
        return;
    }

    if (n == 1) {
        memcpy(out, leaves[0], SF_MERKLE_HASH);
        return;
    }

    k = sf_merkle_split(n);
    sf_merkle_root(leaves, k, l);
    sf_merkle_root(leaves + k, n - k, r);
    sf_merkle_node(l, r, out);
}


void
sf_merkle_frontier_append(sf_merkle_frontier_t *f, const unsigned char *leaf)
{
    uint64_t  s;

    memcpy(f->node[f->count++], leaf, SF_MERKLE_HASH);
    s = ++f->size;

    while ((s & 1) == 0) {
        sf_merkle_node(f->node[f->count - 2], f->node[f->count - 1],
                       f->node[f->count - 2]);
        f->count--;
        s >>= 1;
    }
}


void
sf_merkle_frontier_root(const sf_merkle_frontier_t *f, unsigned char *out)
{
    int        i;
    sf_hash_t  r;

    if (f->count == 0) {
        sf_merkle_empty(out);
        return;
    }

    memcpy(r, f->node[f->count - 1], SF_MERKLE_HASH);

    for (i = (int) f->count - 2; i >= 0; i--) {
        sf_merkle_node(f->node[i], r, r);
    }

    memcpy(out, r, SF_MERKLE_HASH);
}


/*
 * The hash of [lo, hi) of the extended tree.  A range inside the old tree
 * reached from the root by RFC 6962 splits is one of its frontier nodes.
 */
static int
sf_merkle_ext_node(const sf_merkle_ext_t *e, uint64_t lo, uint64_t hi,
    unsigned char *out)
{
    int        bit;
    uint64_t   m, start, k;
    unsigned   i;
    sf_hash_t  l, r;

    m = e->old->size;

    if (hi <= m) {
        start = 0;
        i = 0;

        for (bit = 63; bit >= 0; bit--) {
            if (!(m & ((uint64_t) 1 << bit))) {
                continue;
            }

            if (start == lo && start + ((uint64_t) 1 << bit) == hi) {
                memcpy(out, e->old->node[i], SF_MERKLE_HASH);
                return 0;
            }

            start += (uint64_t) 1 << bit;
            i++;
        }

        return -1;
    }

    if (lo >= m) {
        sf_merkle_root(e->leaves + (lo - m), hi - lo, out);
        return 0;
    }

    k = sf_merkle_split(hi - lo);

    if (sf_merkle_ext_node(e, lo, lo + k, l) != 0
        || sf_merkle_ext_node(e, lo + k, hi, r) != 0)
    {
        return -1;
    }

    sf_merkle_node(l, r, out);

    return 0;
}


void
sf_merkle_ext_root(const sf_merkle_ext_t *e, unsigned char *out)
{
    uint64_t  n;

    n = e->old->size + e->nleaves;

    if (n == 0) {
        sf_merkle_empty(out);
        return;
    }

    (void) sf_merkle_ext_node(e, 0, n, out);
}


static int
sf_merkle_subproof(const sf_merkle_ext_t *e, uint64_t m, uint64_t lo,
    uint64_t hi, int whole, unsigned char (*proof)[SF_MERKLE_HASH], int np)
{
    uint64_t  n, k;

    n = hi - lo;

    if (m == n) {
        if (whole) {
            return np;
        }

        if (np >= SF_MERKLE_MAX_LEVEL
            || sf_merkle_ext_node(e, lo, hi, proof[np]) != 0)
        {
            return -1;
        }

        return np + 1;
    }

    k = sf_merkle_split(n);

    if (m <= k) {
        np = sf_merkle_subproof(e, m, lo, lo + k, whole, proof, np);
        if (np < 0 || np >= SF_MERKLE_MAX_LEVEL) {
            return -1;
        }

        return sf_merkle_ext_node(e, lo + k, hi, proof[np]) ? -1 : np + 1;
    }

    np = sf_merkle_subproof(e, m - k, lo + k, hi, 0, proof, np);
    if (np < 0 || np >= SF_MERKLE_MAX_LEVEL) {
        return -1;
    }

    return sf_merkle_ext_node(e, lo, lo + k, proof[np]) ? -1 : np + 1;
}


int
sf_merkle_ext_consistency(const sf_merkle_ext_t *e,
    unsigned char (*proof)[SF_MERKLE_HASH])
{
    uint64_t  m;

    m = e->old->size;

    if (m == 0 || e->nleaves == 0) {
        return -1;
    }

    return sf_merkle_subproof(e, m, 0, m + e->nleaves, 1, proof, 0);
}


void
sf_merkle_ext_frontier(const sf_merkle_ext_t *e, sf_merkle_frontier_t *out)
{
    int       bit;
    uint64_t  n, start;

    n = e->old->size + e->nleaves;
    start = 0;
    out->size = n;
    out->count = 0;

    for (bit = 63; bit >= 0; bit--) {
        if (!(n & ((uint64_t) 1 << bit))) {
            continue;
        }

        (void) sf_merkle_ext_node(e, start, start + ((uint64_t) 1 << bit),
                                  out->node[out->count++]);
        start += (uint64_t) 1 << bit;
    }
}


int
sf_merkle_inclusion(const unsigned char (*leaves)[SF_MERKLE_HASH],
    uint64_t n, uint64_t i, unsigned char (*proof)[SF_MERKLE_HASH])
{
    int       np;
    uint64_t  k;

    if (i >= n) {
        return -1;
    }

    if (n == 1) {
        return 0;
    }

    k = sf_merkle_split(n);

    if (i < k) {
        np = sf_merkle_inclusion(leaves, k, i, proof);
        sf_merkle_root(leaves + k, n - k, proof[np]);

    } else {
        np = sf_merkle_inclusion(leaves + k, n - k, i - k, proof);
        sf_merkle_root(leaves, k, proof[np]);
    }

    return np + 1;
}


int
sf_merkle_verify_inclusion(uint64_t index, uint64_t size,
    const unsigned char *leaf, const unsigned char (*proof)[SF_MERKLE_HASH],
    size_t nproof, const unsigned char *root)
{
    size_t     i;
    uint64_t   fn, sn;
    sf_hash_t  r;

    if (index >= size) {
        return -1;
    }

    fn = index;
    sn = size - 1;
    memcpy(r, leaf, SF_MERKLE_HASH);

    for (i = 0; i < nproof; i++) {
        if (sn == 0) {
            return -1;
        }

        if ((fn & 1) || fn == sn) {
            sf_merkle_node(proof[i], r, r);

            while (!(fn & 1) && fn != 0) {
                fn >>= 1;
                sn >>= 1;
            }

        } else {
            sf_merkle_node(r, proof[i], r);
        }

        fn >>= 1;
        sn >>= 1;
    }

    if (sn != 0 || memcmp(r, root, SF_MERKLE_HASH) != 0) {
        return -1;
    }

    return 0;
}


int
sf_merkle_verify_consistency(uint64_t size1, uint64_t size2,
    const unsigned char (*proof)[SF_MERKLE_HASH], size_t nproof,
    const unsigned char *root1, size_t root1_len,
    const unsigned char *root2, size_t root2_len)
{
    size_t                i;
    uint64_t              fn, sn;
    sf_hash_t             fr, sr;
    const unsigned char  *c;

    if (size1 == 0 || size2 < size1) {
        return -1;
    }

    if (size1 == size2) {
        if (nproof != 0 || root1_len != root2_len
            || memcmp(root1, root2, root1_len) != 0)
        {
            return -1;
        }

        return 0;
    }

    if (nproof == 0 || root1_len != SF_MERKLE_HASH
        || root2_len != SF_MERKLE_HASH)
    {
        return -1;
    }

    i = 0;

    /* a power of two: the old root is the proof's implicit first node */
    if ((size1 & (size1 - 1)) == 0) {
        c = root1;

    } else {
        c = proof[i++];
    }

    fn = size1 - 1;
    sn = size2 - 1;

    while (fn & 1) {
        fn >>= 1;
        sn >>= 1;
    }

    memcpy(fr, c, SF_MERKLE_HASH);
    memcpy(sr, c, SF_MERKLE_HASH);

    for ( /* void */ ; i < nproof; i++) {
        if (sn == 0) {
            return -1;
        }

        if ((fn & 1) || fn == sn) {
            sf_merkle_node(proof[i], fr, fr);
            sf_merkle_node(proof[i], sr, sr);

            while (!(fn & 1) && fn != 0) {
                fn >>= 1;
                sn >>= 1;
            }

        } else {
            sf_merkle_node(sr, proof[i], sr);
        }

        fn >>= 1;
        sn >>= 1;
    }

    if (sn != 0 || memcmp(fr, root1, SF_MERKLE_HASH) != 0
        || memcmp(sr, root2, SF_MERKLE_HASH) != 0)
    {
        return -1;
    }

    return 0;
}
