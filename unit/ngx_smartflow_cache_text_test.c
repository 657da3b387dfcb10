/*
 * The MetaCache's text functions where a fast path stands in for a plain
 * one, checked against it, and the reads the fast path makes, watched by
 * AddressSanitizer:
 *
 *  - a word's hash read whole from the tokens' buffer (its last group of
 *    fewer than eight bytes loaded at once and masked) equals the hash
 *    read byte by byte, for every length up to 40 and random bytes;
 *  - texts of every length up to 300 bytes, ending in a word of every
 *    length, and texts of tokens that grow ("$" becomes "usd", "js"
 *    "javascript": the fullest tokens' buffers) are tokenized, signed and
 *    embedded with each allocation of its exact size, so that a write or
 *    a read past it is reported;
 *  - the embedding is L2-normalised for dimensions that are and are not
 *    multiples of eight (the norm's eight running sums and their tail).
 *
 * The source file is included, so its static functions are reachable.
 * Printed as TAP.
 */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ngx_smartflow_cache_text.c"


/*
 * the little of nginx's core the text functions use: allocations of their
 * exact size (ASan's red zone right after them), freed by unit_free()
 */

typedef struct unit_block_s  unit_block_t;

struct unit_block_s {
    unit_block_t  *next;
    void          *data;
};

static unit_block_t  *unit_blocks;


void *
ngx_pnalloc(ngx_pool_t *pool, size_t size)
{
    unit_block_t  *b;

    b = malloc(sizeof(unit_block_t));
    if (b == NULL) {
        abort();
    }

    b->data = malloc(size ? size : 1);
    if (b->data == NULL) {
        abort();
    }

    b->next = unit_blocks;
    unit_blocks = b;

    return b->data;
}


void *
ngx_palloc(ngx_pool_t *pool, size_t size)
{
    return ngx_pnalloc(pool, size);
}


static void
unit_free(void)
{
    unit_block_t  *b;

    while (unit_blocks) {
        b = unit_blocks;
        unit_blocks = b->next;
        free(b->data);
        free(b);
    }
}


ngx_int_t
ngx_strncasecmp(u_char *s1, u_char *s2, size_t n)
{
    return strncasecmp((char *) s1, (char *) s2, n);
}


static int  tests, failed;


static void
ok(int cond, const char *name)
{
    tests++;

    if (!cond) {
        failed++;
    }

    printf("%sok %d - %s\n", cond ? "" : "not ", tests, name);
}


/* a small generator, the same numbers on every run */
static uint64_t  seed = 0x2545f4914f6cdd1dULL;

static uint64_t
next(void)
{
    seed ^= seed << 13;
    seed ^= seed >> 7;
    seed ^= seed << 17;

    return seed;
}


static void
hashes(void)
{
    u_char      *buf;
    size_t       len, round, i;
    ngx_uint_t   same;

    same = 1;

    for (len = 0; len <= 40; len++) {
        for (round = 0; round < 200; round++) {
            /* the word, then the spare bytes a tokens' buffer keeps */
            buf = malloc(len + NGX_SF_WORD_PAD);

            for (i = 0; i < len + NGX_SF_WORD_PAD; i++) {
                buf[i] = (u_char) next();
            }

            if (ngx_sf_word_read(buf, len, 1) != ngx_sf_word_read(buf, len, 0))
            {
                same = 0;
            }

            free(buf);
        }
    }

    ok(same, "a word's hash read whole and masked equals it read byte by "
             "byte, lengths 0 to 40, random bytes");
}


/* the text tokenized, signed and embedded, then freed; 0 on an error */
static ngx_uint_t
features(char *text, size_t len)
{
    float                        v[NGX_SMARTFLOW_CACHE_DIM];
    uint32_t                     sig[NGX_SMARTFLOW_CACHE_MINHASH];
    ngx_int_t                    rc;
    ngx_smartflow_cache_text_t   t;

    rc = ngx_smartflow_cache_tokenize(NULL, (u_char *) text, len, &t);

    if (rc == NGX_OK) {
        ngx_smartflow_cache_sketch(&t, sig, v, NGX_SMARTFLOW_CACHE_DIM);
        (void) ngx_smartflow_cache_guard(&t);
    }

    unit_free();
    free(text);

    return rc == NGX_OK;
}


static void
texts(void)
{
    char                        *text;
    size_t                       len, w, i, d;
    ngx_uint_t                   made;

    static const char  prose[] = "Why is my order still processing after "
                                 "three days and who can refund it ";
    static const char  *dense[] = { "$", "js$", "js ", "ts,", "n't " };

    made = 1;

    for (len = 1; len <= 300; len++) {
        for (w = 1; w <= 12 && w <= len; w++) {
            /* prose, then a last word of w letters at the very end */
            text = malloc(len);

            for (i = 0; i < len - w; i++) {
                text[i] = prose[i % (sizeof(prose) - 1)];
            }

            for ( /* void */ ; i < len; i++) {
                text[i] = 'a' + (char) (next() % 26);
            }

            made &= features(text, len);
        }

        /*
         * the fullest tokens' buffers: each "$" becomes "usd", each "js"
         * "javascript", and "js$" gives thirteen bytes from three
         */
        for (d = 0; d < sizeof(dense) / sizeof(dense[0]); d++) {
            text = malloc(len);

            for (i = 0; i < len; i++) {
                text[i] = dense[d][i % strlen(dense[d])];
            }

            made &= features(text, len);
        }
    }

    ok(made, "texts of 1 to 300 bytes ending in words of 1 to 12 letters, "
             "and of tokens that grow (\"$\", \"js\", \"n't\"), tokenized, "
             "signed and embedded");
}


static void
norms(void)
{
    float                        v[67];
    double                       n;
    size_t                       dim, i;
    ngx_uint_t                   unit;
    ngx_smartflow_cache_text_t   t;

    static const char  text[] = "Convert twelve kilometres to miles in "
                                "Python with rounding";

    unit = 1;

    for (dim = 8; dim <= 67; dim++) {
        (void) ngx_smartflow_cache_tokenize(NULL, (u_char *) text,
                                            sizeof(text) - 1, &t);
        ngx_smartflow_cache_embed(&t, v, dim);

        n = 0;

        for (i = 0; i < dim; i++) {
            n += (double) v[i] * v[i];
        }

        if (fabs(n - 1.0) > 1e-5) {
            unit = 0;
        }

        unit_free();
    }

    ok(unit, "the embedding has norm 1 in every dimension from 8 to 67");
}


int
main(void)
{
    hashes();
    texts();
    norms();

    printf("1..%d\n", tests);

    return failed ? 1 : 0;
}
