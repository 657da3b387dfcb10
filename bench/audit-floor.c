/*
 * The hashing an audit record cannot do without, timed alone: SHA-256 of
 * a request body of REQ bytes and of a response body of RESP bytes, the
 * record's leaf hash (0x00 and its line of LINE bytes) and an HMAC-SHA256
 * of that hash with the key's pads prepared once.  OpenSSL's SHA-256, as
 * the audit module calls it.  bench/audit.sh runs it on the CPU the front
 * worker is pinned to and prints it beside the front's CPU per request
 * with audit off: the ratio on/off cannot exceed off / (off + floor).
 *
 *   audit-floor REQ RESP LINE   ->   "floor_us 1.85"
 *
 * The best of five rounds of 200,000 records, with the data in cache, so
 * the figure is a lower bound of what the worker spends.
 */

#define OPENSSL_SUPPRESS_DEPRECATED

#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>


#define ROUNDS   5
#define RECORDS  200000


static double
audit_floor_now(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    return ts.tv_sec + ts.tv_nsec / 1e9;
}


static void
audit_floor_sha256(const unsigned char *p, size_t len, unsigned char *out)
{
    SHA256_CTX  c;

    SHA256_Init(&c);
    SHA256_Update(&c, p, len);
    SHA256_Final(out, &c);
}


int
main(int argc, char **argv)
{
    int            round, i;
    long           req, resp, line;
    double         t, best;
    unsigned char  *rq, *rs, *ln, pad[64], digest[32];
    SHA256_CTX     inner, outer, c;

    if (argc != 4) {
        fprintf(stderr, "usage: audit-floor REQ RESP LINE (bytes)\n");
        return 2;
    }

    req = atol(argv[1]);
    resp = atol(argv[2]);
    line = atol(argv[3]);

    if (req < 0 || resp < 0 || line < 1) {
        fprintf(stderr, "audit-floor: sizes must be positive\n");
        return 2;
    }

    rq = calloc(1, req + 1);
    rs = calloc(1, resp + 1);
    ln = calloc(1, line + 1);

    if (rq == NULL || rs == NULL || ln == NULL) {
        fprintf(stderr, "audit-floor: out of memory\n");
        return 1;
    }

    memset(rq, 'q', req);
    memset(rs, 's', resp);
    memset(ln, 'r', line);

    /* the key's pads, hashed once as the module does */
    memset(pad, 0x36, sizeof(pad));
    SHA256_Init(&inner);
    SHA256_Update(&inner, pad, sizeof(pad));
    memset(pad, 0x5c, sizeof(pad));
    SHA256_Init(&outer);
    SHA256_Update(&outer, pad, sizeof(pad));

    best = 1e9;
    digest[0] = 0;

    for (round = 0; round < ROUNDS; round++) {
        t = audit_floor_now();

        for (i = 0; i < RECORDS; i++) {
            /* each input depends on the last digest: nothing is skipped */
            rq[0] = (unsigned char) i;
            audit_floor_sha256(rq, req, digest);

            rs[0] = digest[0];
            audit_floor_sha256(rs, resp, digest);

            ln[0] = 0;
            ln[1 % line] = digest[0];
            audit_floor_sha256(ln, line, digest);

            c = inner;
            SHA256_Update(&c, digest, 32);
            SHA256_Final(digest, &c);
            c = outer;
            SHA256_Update(&c, digest, 32);
            SHA256_Final(digest, &c);
        }

        t = (audit_floor_now() - t) / RECORDS * 1e6;

        if (t < best) {
            best = t;
        }
    }

    printf("floor_us %.2f\n", best);

    free(rq);
    free(rs);
    free(ln);

    return 0;
}
