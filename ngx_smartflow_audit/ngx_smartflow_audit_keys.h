/*
 * The audit key file and the record format the audit module writes and
 * the verifier reads.  Plain C over OpenSSL only, shared by both.
 *
 * Key file: one key a line, "KID HEX [NOT_BEFORE [NOT_AFTER]]", times in
 * epoch seconds or "-" for no bound; '#' starts a comment.  Keys are at
 * least 32 bytes.  A record is signed with the valid key that became
 * valid last.
 *
 * A record is one line of JSON ending with the fields the chain needs,
 * always in this order:
 *   ...,"ts":MS,"seq":N,"kid":"KID","prev":"HEX64","hmac":"HEX64"}
 * "hmac" is HMAC-SHA256 under key KID of SHA-256 of 0x00 and every byte
 * before ,"hmac"; "prev" is the previous record's hash, zeros for the
 * first one: its RFC 6962 leaf hash, SHA-256 of 0x00 and its line (no
 * newline), the same hash the Merkle trees are built from.  Both start
 * the same, so one pass over a record gives its signature and its hash.
 */

#ifndef _NGX_SMARTFLOW_AUDIT_KEYS_H_INCLUDED_
#define _NGX_SMARTFLOW_AUDIT_KEYS_H_INCLUDED_


#include <stddef.h>
#include <stdint.h>


#define SF_AUDIT_KID_LEN   32
#define SF_AUDIT_KEY_MAX   128
#define SF_AUDIT_MAX_KEYS  64


typedef struct {
    char            kid[SF_AUDIT_KID_LEN + 1];
    unsigned char   key[SF_AUDIT_KEY_MAX];
    size_t          key_len;
    int64_t         not_before;     /* epoch seconds, INT64_MIN: none */
    int64_t         not_after;      /* INT64_MAX: none */
    uint64_t        serial;         /* unique a parse, 0: none */
} sf_audit_key_t;


typedef struct {
    sf_audit_key_t  key[SF_AUDIT_MAX_KEYS];
    unsigned        n;
} sf_audit_keys_t;


typedef struct {
    const char     *suffix;         /* ,"ts": */
    int64_t         ts;             /* milliseconds */
    uint64_t        seq;
    char            kid[SF_AUDIT_KID_LEN + 1];
    unsigned char   prev[32];
    unsigned char   hmac[32];
    size_t          signed_len;     /* bytes under the HMAC */
} sf_audit_tail_t;


/* 0, or -1 with a message in err naming the line */
int sf_audit_keys_parse(const char *p, size_t len, sf_audit_keys_t *keys,
    char *err, size_t errlen);
const sf_audit_key_t *sf_audit_keys_find(const sf_audit_keys_t *keys,
    const char *kid);
/* the key to sign with at time t (seconds), or NULL */
const sf_audit_key_t *sf_audit_keys_current(const sf_audit_keys_t *keys,
    int64_t t);

/* 0, or -1 with the reason in *why */
int sf_audit_tail_parse(const char *line, size_t len, sf_audit_tail_t *t,
    const char **why);

/* HMAC-SHA256 under a key; 0 or -1.  Keyed once a key, a state a thread */
void sf_audit_hmac_init(void);
int sf_audit_hmac(const sf_audit_key_t *k, const void *data, size_t len,
    unsigned char *out);

/*
 * A record's "hmac" over its signed bytes; then, in the same thread, its
 * leaf hash once given the rest of its line (without the newline).
 */
int sf_audit_record_mac(const sf_audit_key_t *k, const void *data,
    size_t len, unsigned char *mac);
/*
 * The same in two steps, in one thread: the signed bytes' first part
 * hashed, then the signature once given the rest of them (the audit
 * module hashes a record's fields before it takes the chain's lock, and
 * only the chain fields under it).
 */
void sf_audit_record_start(const void *data, size_t len);
int sf_audit_record_sign(const sf_audit_key_t *k, const void *data,
    size_t len, unsigned char *mac);
int sf_audit_record_leaf(const void *tail, size_t len, unsigned char *leaf);

/*
 * A segment's shipped mark (segment-N.shipped): one line an object
 * shipped, "URL SHA256 MODE RETAIN_UNTIL", then "hmac KID TIME HEX": HEX
 * is HMAC-SHA256 under key KID of every byte of the file before HEX, TIME
 * (epoch seconds) when it was signed.  sign appends that line to buf
 * (len bytes used of size) and returns the new length, 0 when it does
 * not fit; check returns 0, or -1 with the reason in *why, and gives the
 * SHA-256 the mark lists for the object whose URL ends with suffix.
 */
size_t sf_audit_mark_sign(const sf_audit_key_t *k, int64_t t, char *buf,
    size_t len, size_t size);
int sf_audit_mark_check(const sf_audit_keys_t *keys, const char *buf,
    size_t len, const char *suffix, unsigned char *sha, const char **why);

void sf_audit_hex(const unsigned char *p, size_t len, char *out);
/* the number of bytes, or -1 */
int sf_audit_unhex(const char *p, size_t len, unsigned char *out,
    size_t max);


#endif /* _NGX_SMARTFLOW_AUDIT_KEYS_H_INCLUDED_ */
