/*
 * The audit key file and the record's chain fields, parsed the same way
 * by the audit module and by the verifier.
 */

#include <stdio.h>
#include <string.h>
#include <stdlib.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "ngx_smartflow_merkle.h"
#include "ngx_smartflow_audit_keys.h"


/*
 * HMAC-SHA256 keyed once: the states after the key's inner and outer
 * pads are kept, per thread, for the last key used, and each message
 * starts from a copy of them (RFC 2104), instead of hashing the pads
 * again for every record.
 */
typedef struct {
    sf_sha256_t     inner;
    sf_sha256_t     outer;
    unsigned char   key[SF_AUDIT_KEY_MAX];
    size_t          key_len;            /* 0: none keyed yet */
    uint64_t        serial;             /* the key's, 0: compare it */
} sf_hmac_state_t;


static __thread sf_hmac_state_t  sf_hmac_st;

/* numbers each key parsed: a thread knows its keyed state at a glance */
static uint64_t  sf_audit_key_serial;


void
sf_audit_hmac_init(void)
{
    /* nothing to fetch: the contexts are plain structs */
}


static void
sf_audit_hmac_key(sf_hmac_state_t *st, const sf_audit_key_t *k)
{
    size_t          i;
    unsigned char   block[64], pad[64];

    memset(block, 0, sizeof(block));

    /* a key longer than the block is hashed first */
    if (k->key_len > sizeof(block)) {
        sf_sha256(k->key, k->key_len, block);

    } else {
        memcpy(block, k->key, k->key_len);
    }

    for (i = 0; i < sizeof(block); i++) {
        pad[i] = block[i] ^ 0x36;
    }

    sf_sha256_init(&st->inner);
    sf_sha256_update(&st->inner, pad, sizeof(pad));

    for (i = 0; i < sizeof(block); i++) {
        pad[i] = block[i] ^ 0x5c;
    }

    sf_sha256_init(&st->outer);
    sf_sha256_update(&st->outer, pad, sizeof(pad));

    OPENSSL_cleanse(block, sizeof(block));
    OPENSSL_cleanse(pad, sizeof(pad));

    memcpy(st->key, k->key, k->key_len);
    st->key_len = k->key_len;
    st->serial = k->serial;
}


int
sf_audit_hmac(const sf_audit_key_t *k, const void *data, size_t len,
    unsigned char *out)
{
    sf_sha256_t       c;
    sf_hmac_state_t  *st;
    unsigned char     inner[32];

    st = &sf_hmac_st;

    if (k->key_len == 0 || k->key_len > SF_AUDIT_KEY_MAX) {
        return -1;
    }

    if ((k->serial == 0 || k->serial != st->serial)
        && (st->key_len != k->key_len
            || CRYPTO_memcmp(st->key, k->key, k->key_len) != 0))
    {
        sf_audit_hmac_key(st, k);
    }

    c = st->inner;
    sf_sha256_update(&c, data, len);
    sf_sha256_final(&c, inner);

    c = st->outer;
    sf_sha256_update(&c, inner, sizeof(inner));
    sf_sha256_final(&c, out);

    return 0;
}


/*
 * A record's signature and leaf hash in one pass over the record: SHA-256
 * of 0x00 and the signed bytes is what the HMAC signs, and the same
 * SHA-256 carried on over the rest of the line is the record's RFC 6962
 * leaf hash.  The state stays, per thread, between the two calls.
 */
static __thread sf_sha256_t  sf_rec;


void
sf_audit_record_start(const void *data, size_t len)
{
    unsigned char  zero;

    zero = 0;

    sf_sha256_init(&sf_rec);
    sf_sha256_update(&sf_rec, &zero, 1);
    sf_sha256_update(&sf_rec, data, len);
}


int
sf_audit_record_sign(const sf_audit_key_t *k, const void *data, size_t len,
    unsigned char *mac)
{
    sf_sha256_t    c;
    unsigned char  d[32];

    sf_sha256_update(&sf_rec, data, len);

    c = sf_rec;
    sf_sha256_final(&c, d);

    return sf_audit_hmac(k, d, sizeof(d), mac);
}


int
sf_audit_record_mac(const sf_audit_key_t *k, const void *data, size_t len,
    unsigned char *mac)
{
    sf_audit_record_start(data, len);

    return sf_audit_record_sign(k, NULL, 0, mac);
}


int
sf_audit_record_leaf(const void *tail, size_t len, unsigned char *leaf)
{
    sf_sha256_update(&sf_rec, tail, len);
    sf_sha256_final(&sf_rec, leaf);

    return 0;
}


static int
sf_audit_time(const char *p, size_t len, int64_t none, int64_t *out)
{
    size_t   i;
    int64_t  v;

    if (len == 1 && p[0] == '-') {
        *out = none;
        return 0;
    }

    if (len == 0 || len > 18) {
        return -1;
    }

    v = 0;

    for (i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return -1;
        }

        v = v * 10 + (p[i] - '0');
    }

    *out = v;

    return 0;
}


int
sf_audit_keys_parse(const char *p, size_t len, sf_audit_keys_t *keys,
    char *err, size_t errlen)
{
    int              n, line;
    size_t           f, flen[4];
    const char      *end, *eol, *q, *fs[4];
    sf_audit_key_t  *k;

    keys->n = 0;
    end = p + len;
    line = 0;

    while (p < end) {
        line++;
        eol = memchr(p, '\n', end - p);
        if (eol == NULL) {
            eol = end;
        }

        f = 0;
        q = p;

        while (q < eol && *q != '#') {
            while (q < eol && (*q == ' ' || *q == '\t' || *q == '\r')) {
                q++;
            }

            if (q == eol || *q == '#') {
                break;
            }

            if (f == 4) {
                snprintf(err, errlen, "line %d: too many fields", line);
                return -1;
            }

            fs[f] = q;

            while (q < eol && *q != ' ' && *q != '\t' && *q != '\r'
                   && *q != '#')
            {
                q++;
            }

            flen[f] = q - fs[f];
            f++;
        }

        p = eol + 1;

        if (f == 0) {
            continue;
        }

        if (f < 2) {
            snprintf(err, errlen, "line %d: \"KID HEXKEY\" expected", line);
            return -1;
        }

        if (keys->n == SF_AUDIT_MAX_KEYS) {
            snprintf(err, errlen, "line %d: more than %d keys", line,
                     SF_AUDIT_MAX_KEYS);
            return -1;
        }

        k = &keys->key[keys->n];

        if (flen[0] > SF_AUDIT_KID_LEN
            || memchr(fs[0], '"', flen[0]) || memchr(fs[0], '\\', flen[0]))
        {
            snprintf(err, errlen, "line %d: bad key id", line);
            return -1;
        }

        memcpy(k->kid, fs[0], flen[0]);
        k->kid[flen[0]] = '\0';

        if (sf_audit_keys_find(keys, k->kid) != NULL) {
            snprintf(err, errlen, "line %d: key id \"%s\" repeated", line,
                     k->kid);
            return -1;
        }

        n = sf_audit_unhex(fs[1], flen[1], k->key, SF_AUDIT_KEY_MAX);
        if (n < 32) {
            snprintf(err, errlen, "line %d: the key must be at least 32 "
                     "bytes in hex", line);
            return -1;
        }

        k->key_len = n;
        k->serial = ++sf_audit_key_serial;
        k->not_before = INT64_MIN;
        k->not_after = INT64_MAX;

        if ((f > 2
             && sf_audit_time(fs[2], flen[2], INT64_MIN, &k->not_before))
            || (f > 3
                && sf_audit_time(fs[3], flen[3], INT64_MAX, &k->not_after)))
        {
            snprintf(err, errlen, "line %d: times are epoch seconds or "
                     "\"-\"", line);
            return -1;
        }

        keys->n++;
    }

    if (keys->n == 0) {
        snprintf(err, errlen, "no keys");
        return -1;
    }

    return 0;
}


const sf_audit_key_t *
sf_audit_keys_find(const sf_audit_keys_t *keys, const char *kid)
{
    unsigned  i;

    for (i = 0; i < keys->n; i++) {
        if (strcmp(keys->key[i].kid, kid) == 0) {
            return &keys->key[i];
        }
    }

    return NULL;
}


const sf_audit_key_t *
sf_audit_keys_current(const sf_audit_keys_t *keys, int64_t t)
{
    unsigned               i;
    const sf_audit_key_t  *k, *best;

    best = NULL;

    for (i = 0; i < keys->n; i++) {
        k = &keys->key[i];

        if (t < k->not_before || t > k->not_after) {
            continue;
        }

        if (best == NULL || k->not_before >= best->not_before) {
            best = k;
        }
    }

    return best;
}


static int
sf_audit_number(const char **pp, const char *end, int64_t *out)
{
    int64_t      v;
    const char  *p;

    p = *pp;
    v = 0;

    if (p == end || *p < '0' || *p > '9') {
        return -1;
    }

    while (p < end && *p >= '0' && *p <= '9') {
        if (v > (INT64_MAX - 9) / 10) {
            return -1;
        }

        v = v * 10 + (*p++ - '0');
    }

    *pp = p;
    *out = v;

    return 0;
}


static int
sf_audit_expect(const char **pp, const char *end, const char *lit)
{
    size_t  n;

    n = strlen(lit);

    if ((size_t) (end - *pp) < n || memcmp(*pp, lit, n) != 0) {
        return -1;
    }

    *pp += n;

    return 0;
}


int
sf_audit_tail_parse(const char *line, size_t len, sf_audit_tail_t *t,
    const char **why)
{
    int64_t      v;
    const char  *p, *end, *q, *s;

    end = line + len;
    s = NULL;

    /* the last ,"ts": : a string value cannot hold an unescaped quote */
    for (q = end - 6; q >= line; q--) {
        if (memcmp(q, ",\"ts\":", 6) == 0) {
            s = q;
            break;
        }
    }

    if (len == 0 || line[0] != '{' || s == NULL) {
        *why = "not a record";
        return -1;
    }

    t->suffix = s;
    p = s + 6;

    if (sf_audit_number(&p, end, &t->ts) != 0) {
        *why = "bad \"ts\"";
        return -1;
    }

    if (sf_audit_expect(&p, end, ",\"seq\":") != 0
        || sf_audit_number(&p, end, &v) != 0)
    {
        *why = "bad \"seq\"";
        return -1;
    }

    t->seq = (uint64_t) v;

    if (sf_audit_expect(&p, end, ",\"kid\":\"") != 0) {
        *why = "bad \"kid\"";
        return -1;
    }

    q = memchr(p, '"', end - p);
    if (q == NULL || q - p > SF_AUDIT_KID_LEN || q == p) {
        *why = "bad \"kid\"";
        return -1;
    }

    memcpy(t->kid, p, q - p);
    t->kid[q - p] = '\0';
    p = q + 1;

    if (sf_audit_expect(&p, end, ",\"prev\":\"") != 0
        || end - p < 64 || sf_audit_unhex(p, 64, t->prev, 32) != 32)
    {
        *why = "bad \"prev\"";
        return -1;
    }

    p += 64;

    if (sf_audit_expect(&p, end, "\"") != 0) {
        *why = "bad \"prev\"";
        return -1;
    }

    t->signed_len = p - line;

    if (sf_audit_expect(&p, end, ",\"hmac\":\"") != 0
        || end - p < 64 || sf_audit_unhex(p, 64, t->hmac, 32) != 32)
    {
        *why = "bad \"hmac\"";
        return -1;
    }

    p += 64;

    if (sf_audit_expect(&p, end, "\"}") != 0 || p != end) {
        *why = "bad end of record";
        return -1;
    }

    return 0;
}


size_t
sf_audit_mark_sign(const sf_audit_key_t *k, int64_t t, char *buf,
    size_t len, size_t size)
{
    int            n;
    unsigned char  mac[32];

    n = snprintf(buf + len, size - len, "hmac %s %lld ", k->kid,
                 (long long) t);

    if (n < 0 || len + n + 64 + 2 > size) {
        return 0;
    }

    len += n;

    if (sf_audit_hmac(k, buf, len, mac) != 0) {
        return 0;
    }

    sf_audit_hex(mac, 32, buf + len);
    len += 64;
    buf[len++] = '\n';
    buf[len] = '\0';

    return len;
}


int
sf_audit_mark_check(const sf_audit_keys_t *keys, const char *buf,
    size_t len, const char *suffix, unsigned char *sha, const char **why)
{
    size_t                 slen, n;
    int64_t                t;
    const char            *p, *end, *line, *eol, *sp, *q;
    unsigned char          mac[32], want[32];
    const sf_audit_key_t  *k;
    char                   kid[SF_AUDIT_KID_LEN + 1];

    end = buf + len;

    if (len < 2 || buf[len - 1] != '\n') {
        *why = "not a shipped mark";
        return -1;
    }

    /* the last line */
    for (line = end - 1; line > buf && line[-1] != '\n'; line--) {
        /* void */
    }

    p = line;

    if (sf_audit_expect(&p, end, "hmac ") != 0) {
        *why = "the mark is not signed";
        return -1;
    }

    q = memchr(p, ' ', end - p);
    if (q == NULL || q == p || q - p > SF_AUDIT_KID_LEN) {
        *why = "bad key id in the mark";
        return -1;
    }

    memcpy(kid, p, q - p);
    kid[q - p] = '\0';
    p = q + 1;

    if (sf_audit_number(&p, end, &t) != 0
        || sf_audit_expect(&p, end, " ") != 0
        || end - p != 65
        || sf_audit_unhex(p, 64, want, 32) != 32)
    {
        *why = "bad signature line in the mark";
        return -1;
    }

    k = sf_audit_keys_find(keys, kid);
    if (k == NULL) {
        *why = "the mark's key is not in the key file";
        return -1;
    }

    if (t < k->not_before || t > k->not_after) {
        *why = "the mark's key was not valid when it was signed";
        return -1;
    }

    if (sf_audit_hmac(k, buf, p - buf, mac) != 0
        || CRYPTO_memcmp(mac, want, 32) != 0)
    {
        *why = "the mark's HMAC does not match";
        return -1;
    }

    /* "URL SHA256 MODE DATE": the object whose URL ends with suffix */
    slen = strlen(suffix);

    for (p = buf; p < line; p = eol + 1) {
        eol = memchr(p, '\n', line - p);
        sp = memchr(p, ' ', eol - p);

        if (sp == NULL) {
            continue;
        }

        n = sp - p;

        if (n >= slen && memcmp(sp - slen, suffix, slen) == 0
            && eol - sp > 65 && sp[65] == ' '
            && sf_audit_unhex(sp + 1, 64, sha, 32) == 32)
        {
            return 0;
        }
    }

    *why = "the mark lists no such object";
    return -1;
}


/* a byte's two digits at once: 5 hashes a record, 32 bytes each */
static const char  sf_audit_hex_pairs[] =
        "000102030405060708090a0b0c0d0e0f"
        "101112131415161718191a1b1c1d1e1f"
        "202122232425262728292a2b2c2d2e2f"
        "303132333435363738393a3b3c3d3e3f"
        "404142434445464748494a4b4c4d4e4f"
        "505152535455565758595a5b5c5d5e5f"
        "606162636465666768696a6b6c6d6e6f"
        "707172737475767778797a7b7c7d7e7f"
        "808182838485868788898a8b8c8d8e8f"
        "909192939495969798999a9b9c9d9e9f"
        "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"
        "b0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
        "c0c1c2c3c4c5c6c7c8c9cacbcccdcecf"
        "d0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
        "e0e1e2e3e4e5e6e7e8e9eaebecedeeef"
        "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";


void
sf_audit_hex(const unsigned char *p, size_t len, char *out)
{
    while (len--) {
        memcpy(out, &sf_audit_hex_pairs[*p++ * 2], 2);
        out += 2;
    }

    *out = '\0';
}


static int
sf_audit_nibble(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }

    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }

    return -1;
}


int
sf_audit_unhex(const char *p, size_t len, unsigned char *out, size_t max)
{
    int     hi, lo;
    size_t  i;

    if (len % 2 || len / 2 > max) {
        return -1;
    }

    /* a digit at a time: the text may end (NUL) at any of them */
    for (i = 0; i < len / 2; i++) {
        hi = sf_audit_nibble(p[2 * i]);
        if (hi < 0) {
            return -1;
        }

        lo = sf_audit_nibble(p[2 * i + 1]);
        if (lo < 0) {
            return -1;
        }

        out[i] = (unsigned char) (hi << 4 | lo);
    }

    return (int) (len / 2);
}
