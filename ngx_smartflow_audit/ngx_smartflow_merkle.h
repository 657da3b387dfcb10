/*
 * RFC 6962 Merkle trees over SHA-256 (leaf 0x00, node 0x01): roots,
 * compact frontiers, inclusion and consistency proofs, made and checked.
 * Plain C over OpenSSL only, shared by the audit module and the
 * standalone verifier.
 */

#ifndef _NGX_SMARTFLOW_MERKLE_H_INCLUDED_
#define _NGX_SMARTFLOW_MERKLE_H_INCLUDED_


#include <stddef.h>
#include <stdint.h>
#include <openssl/evp.h>
#include <openssl/sha.h>


#define SF_MERKLE_HASH      32
#define SF_MERKLE_MAX_LEVEL 64


/*
 * The frontier of a tree of size n: the roots of its perfect subtrees from
 * the left, one per bit set in n, largest first.
 */
typedef struct {
    uint64_t        size;
    unsigned char   node[SF_MERKLE_MAX_LEVEL][SF_MERKLE_HASH];
    unsigned        count;
} sf_merkle_frontier_t;


/*
 * SHA-256 through OpenSSL's low-level functions, for the paths that hash
 * a few hundred bytes per request: a context is a plain struct, copied by
 * assignment, with no allocation and no provider dispatch (each EVP
 * digest costs about 100 ns more, which shows at tens of thousands of
 * requests a second).
 */
typedef SHA256_CTX  sf_sha256_t;

void sf_sha256_init(sf_sha256_t *c);
void sf_sha256_update(sf_sha256_t *c, const void *data, size_t len);
void sf_sha256_final(sf_sha256_t *c, unsigned char *out);
void sf_sha256(const void *data, size_t len, unsigned char *out);

/* fetches SHA-256 once; call before threads start */
void sf_merkle_init(void);
const EVP_MD *sf_merkle_sha256(void);
void sf_merkle_leaf(const unsigned char *data, size_t len,
    unsigned char *out);
void sf_merkle_node(const unsigned char *left, const unsigned char *right,
    unsigned char *out);

/* the root of leaves[0..n) (n > 0); the empty tree's is SHA-256("") */
void sf_merkle_root(const unsigned char (*leaves)[SF_MERKLE_HASH],
    uint64_t n, unsigned char *out);

void sf_merkle_frontier_append(sf_merkle_frontier_t *f,
    const unsigned char *leaf);
void sf_merkle_frontier_root(const sf_merkle_frontier_t *f,
    unsigned char *out);

/*
 * A tree of size m + k known by the frontier of its first m leaves and its
 * last k leaf hashes: its root, the RFC 6962 consistency proof from m (up
 * to SF_MERKLE_MAX_LEVEL hashes; m > 0 and k > 0) and its frontier.  The
 * functions return the number of proof hashes, or -1.
 */
typedef struct {
    const sf_merkle_frontier_t           *old;
    const unsigned char                 (*leaves)[SF_MERKLE_HASH];
    uint64_t                              nleaves;
} sf_merkle_ext_t;

void sf_merkle_ext_root(const sf_merkle_ext_t *e, unsigned char *out);
int sf_merkle_ext_consistency(const sf_merkle_ext_t *e,
    unsigned char (*proof)[SF_MERKLE_HASH]);
void sf_merkle_ext_frontier(const sf_merkle_ext_t *e,
    sf_merkle_frontier_t *out);

/* the inclusion proof of leaf i in leaves[0..n); the number of hashes */
int sf_merkle_inclusion(const unsigned char (*leaves)[SF_MERKLE_HASH],
    uint64_t n, uint64_t i, unsigned char (*proof)[SF_MERKLE_HASH]);

/* 0 when the proof holds, -1 otherwise */
int sf_merkle_verify_inclusion(uint64_t index, uint64_t size,
    const unsigned char *leaf, const unsigned char (*proof)[SF_MERKLE_HASH],
    size_t nproof, const unsigned char *root);
int sf_merkle_verify_consistency(uint64_t size1, uint64_t size2,
    const unsigned char (*proof)[SF_MERKLE_HASH], size_t nproof,
    const unsigned char *root1, size_t root1_len,
    const unsigned char *root2, size_t root2_len);


#endif /* _NGX_SMARTFLOW_MERKLE_H_INCLUDED_ */
