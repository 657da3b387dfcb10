/*
 * The MetaCache's quality, measured on the module's own code: the
 * tokenizer, the phase 1 normal form, the MinHash signatures, the builtin
 * embedding and the verification are those compiled into the module
 * (ngx_smartflow_cache_text.c), and phase 4 searches a FAISS inner
 * product index as the workers do.
 *
 * Usage: cache_eval PAIRS.jsonl [NEAR_MISS SIMILARITY]
 *
 * Each line holds {"a": ..., "b": ..., "hit" or "paraphrase": bool}.
 * Every "a" is stored in one cache, as one conversation context would
 * hold them; every "b" is then looked up in the module's order (phase 1,
 * phase 2, phase 4; phase 3 is Redis, outside this program).  A lookup
 * that returns the entry of its own pair when the pair is a paraphrase is
 * a correct hit; any other hit is a false one (a wrong answer served).
 * Printed: per phase and overall, hits, correct and false hits, precision,
 * recall over the paraphrases, and the share of hard negatives that got a
 * hit.  The thresholds default to the module's (0.80 and 0.90).
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_tree.h>

#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/index_factory_c.h>

#include "ngx_smartflow_cache_text.h"


/* the little of nginx's core the text functions use */

void *
ngx_palloc(ngx_pool_t *pool, size_t size)
{
    return malloc(size ? size : 1);
}


void *
ngx_pnalloc(ngx_pool_t *pool, size_t size)
{
    return malloc(size ? size : 1);
}


ngx_int_t
ngx_strncasecmp(u_char *s1, u_char *s2, size_t n)
{
    return strncasecmp((char *) s1, (char *) s2, n);
}


typedef struct {
    char                        *text;
    ngx_smartflow_cache_text_t   t;
    u_char                      *fold;
    size_t                       fold_len;
    uint32_t                     sig[NGX_SMARTFLOW_CACHE_MINHASH];
    float                        vec[NGX_SMARTFLOW_CACHE_DIM];
    uint64_t                     guard;     /* the zone's grouping */
} side_t;


typedef struct {
    side_t                       a;
    side_t                       b;
    int                          hit;
} pair_t;


static void
prepare(side_t *s)
{
    size_t  len;

    len = strlen(s->text);

    ngx_smartflow_cache_tokenize(NULL, (u_char *) s->text, len, &s->t);
    ngx_smartflow_cache_minhash(&s->t, s->sig);
    ngx_smartflow_cache_embed(&s->t, s->vec, NGX_SMARTFLOW_CACHE_DIM);
    s->guard = ngx_smartflow_cache_guard(&s->t);

    s->fold = malloc(len + 1);
    s->fold_len = ngx_smartflow_cache_fold(s->fold, (u_char *) s->text, len)
                  - s->fold;
}


static void
report(char *title, long *hits, long *good, long *bad, long *same, int np,
    int nn, ngx_uint_t near, ngx_uint_t sim, int n, long rejected)
{
    int   phase;
    long  h, g, b, sm;

    printf("%s: %d pairs (%d paraphrases, %d hard negatives), near_miss "
           "%.2f, similarity %.2f, dim %d\n", title, n, np, nn,
           near / 1000.0, sim / 1000.0, NGX_SMARTFLOW_CACHE_DIM);
    printf("  %-8s %6s %8s %6s %10s %8s\n", "phase", "hits", "correct",
           "false", "precision", "recall");

    h = g = b = sm = 0;

    for (phase = 1; phase <= 4; phase++) {
        if (phase == 3) {
            continue;
        }

        printf("  %-8d %6ld %8ld %6ld %10.3f %8.3f\n", phase, hits[phase],
               good[phase], bad[phase],
               hits[phase] ? (double) (hits[phase] - bad[phase])
                             / hits[phase] : 1.0,
               np ? (double) good[phase] / np : 0.0);

        h += hits[phase];
        g += good[phase];
        b += bad[phase];
        sm += same ? same[phase] : 0;
    }

    printf("  %-8s %6ld %8ld %6ld %10.3f %8.3f\n", "overall", h, g, b,
           h ? (double) (h - b) / h : 1.0, np ? (double) g / np : 0.0);

    if (same == NULL) {
        printf("  false hits: %ld of %d hard negatives (%.2f%%); candidates "
               "rejected by the verification: %ld\n", b, nn,
               nn ? 100.0 * b / nn : 0.0, rejected);
    }
}


/* the entry a verified candidate list yields, or -1 */
static long
first_verified(pair_t *pairs, side_t *q, long *cand, int n, long *rejected)
{
    int    i;
    char  *why;

    for (i = 0; i < n; i++) {
        if (ngx_smartflow_cache_verify(&q->t, &pairs[cand[i]].a.t, &why)) {
            return cand[i];
        }

        (*rejected)++;
    }

    return -1;
}


int
main(int argc, char **argv)
{
    int           i, j, k, n, size, phase, np, nn, hitk, grp;
    long          found, cand[NGX_SMARTFLOW_CACHE_K], rejected;
    long          hits[5], good[5], bad[5], same[5], neg_hit, pos_wrong;
    char          line[65536], err[256];
    FILE         *f;
    float        *base, dist[NGX_SMARTFLOW_CACHE_K];
    idx_t         labels[NGX_SMARTFLOW_CACHE_K];
    pair_t       *pairs;
    yajl_val      v, a, b, h;
    ngx_uint_t    near, sim, s, best[NGX_SMARTFLOW_CACHE_K];
    FaissIndex   *index;

    const char   *pa[] = { "a", NULL };
    const char   *pb[] = { "b", NULL };
    const char   *ph[] = { "hit", NULL };
    const char   *pp[] = { "paraphrase", NULL };

    if (argc != 2 && argc != 4) {
        fprintf(stderr, "usage: %s PAIRS.jsonl [NEAR_MISS SIMILARITY]\n",
                argv[0]);
        return 2;
    }

    near = argc == 4 ? (ngx_uint_t) (atof(argv[2]) * 1000 + 0.5) : 800;
    sim = argc == 4 ? (ngx_uint_t) (atof(argv[3]) * 1000 + 0.5) : 900;

    f = fopen(argv[1], "r");
    if (f == NULL) {
        perror(argv[1]);
        return 2;
    }

    size = 1024;
    pairs = calloc(size, sizeof(pair_t));
    n = 0;

    while (fgets(line, sizeof(line), f)) {
        v = yajl_tree_parse(line, err, sizeof(err));
        if (v == NULL) {
            continue;
        }

        a = yajl_tree_get(v, pa, yajl_t_string);
        b = yajl_tree_get(v, pb, yajl_t_string);
        h = yajl_tree_get(v, ph, yajl_t_any);
        if (h == NULL) {
            h = yajl_tree_get(v, pp, yajl_t_any);
        }

        if (a == NULL || b == NULL || h == NULL) {
            yajl_tree_free(v);
            continue;
        }

        if (n == size) {
            size *= 2;
            pairs = realloc(pairs, size * sizeof(pair_t));
            memset(&pairs[n], 0, (size - n) * sizeof(pair_t));
        }

        pairs[n].a.text = strdup(YAJL_GET_STRING(a));
        pairs[n].b.text = strdup(YAJL_GET_STRING(b));
        pairs[n].hit = YAJL_IS_TRUE(h);
        n++;

        yajl_tree_free(v);
    }

    fclose(f);

    base = malloc((size_t) n * NGX_SMARTFLOW_CACHE_DIM * sizeof(float));
    np = 0;
    nn = 0;

    for (i = 0; i < n; i++) {
        prepare(&pairs[i].a);
        prepare(&pairs[i].b);
        memcpy(&base[(size_t) i * NGX_SMARTFLOW_CACHE_DIM], pairs[i].a.vec,
               sizeof(pairs[i].a.vec));
        np += pairs[i].hit;
        nn += !pairs[i].hit;
    }

    /* the signature is the same by the plain code as by AVX2 */
    ngx_smartflow_cache_minhash_simd(0);

    for (i = 0; i < 2 * n; i++) {
        side_t    *sd = (i & 1) ? &pairs[i / 2].b : &pairs[i / 2].a;
        uint32_t   plain[NGX_SMARTFLOW_CACHE_MINHASH];

        ngx_smartflow_cache_minhash(&sd->t, plain);

        if (memcmp(plain, sd->sig, sizeof(plain)) != 0) {
            fprintf(stderr, "the plain MinHash differs from the vector one "
                    "on \"%s\"\n", sd->text);
            return 1;
        }
    }

    ngx_smartflow_cache_minhash_simd(1);

    /*
     * Each pair alone: the cache holds "a", "b" is asked.  This is the
     * measure of the labels: a hit on a non-paraphrase is a false hit.
     */
    memset(hits, 0, sizeof(hits));
    memset(good, 0, sizeof(good));
    memset(bad, 0, sizeof(bad));
    rejected = 0;

    for (i = 0; i < n; i++) {
        side_t  *q = &pairs[i].b;
        char    *why;

        phase = 0;

        if (pairs[i].a.fold_len == q->fold_len
            && memcmp(pairs[i].a.fold, q->fold, q->fold_len) == 0)
        {
            phase = 1;

        } else if (ngx_smartflow_cache_minhash_sim(q->sig, pairs[i].a.sig)
                   >= near)
        {
            if (ngx_smartflow_cache_verify(&q->t, &pairs[i].a.t, &why)) {
                phase = 2;

            } else {
                rejected++;
            }
        }

        if (phase == 0
            && ngx_smartflow_cache_cosine(q->vec, pairs[i].a.vec) >= sim)
        {
            if (ngx_smartflow_cache_verify(&q->t, &pairs[i].a.t, &why)) {
                phase = 4;

            } else {
                rejected++;
            }
        }

        if (getenv("CACHE_EVAL_SHOW")) {
            printf("phase %d, minhash %.3f, cosine %.3f: \"%s\" / \"%s\"\n",
                   phase,
                   ngx_smartflow_cache_minhash_sim(q->sig, pairs[i].a.sig)
                   / 1000.0,
                   ngx_smartflow_cache_cosine(q->vec, pairs[i].a.vec)
                   / 1000.0, pairs[i].a.text, q->text);
        }

        if (phase == 0) {
            continue;
        }

        hits[phase]++;

        if (pairs[i].hit) {
            good[phase]++;

        } else {
            bad[phase]++;

            if (getenv("CACHE_EVAL_VERBOSE")) {
                printf("false hit (phase %d): \"%s\" -> \"%s\"\n", phase,
                       q->text, pairs[i].a.text);
            }
        }
    }

    report("each pair alone", hits, good, bad, NULL, np, nn, near, sim,
           n, rejected);

    /*
     * One cache holding every "a", as one conversation context would:
     * phase 4 searches FAISS for real, and a hit may land on another
     * pair's question.  Such a hit is right when it is the pair's own
     * question or the very same text; other pairs' questions carry no
     * label, so these hits are counted false, an upper bound.
     */
    index = NULL;
    if (faiss_index_factory(&index, NGX_SMARTFLOW_CACHE_DIM, "Flat",
                            METRIC_INNER_PRODUCT) != 0
        || faiss_Index_add(index, n, base) != 0)
    {
        fprintf(stderr, "FAISS failed\n");
        return 1;
    }

    memset(hits, 0, sizeof(hits));
    memset(good, 0, sizeof(good));
    memset(bad, 0, sizeof(bad));
    memset(same, 0, sizeof(same));
    neg_hit = 0;
    pos_wrong = 0;
    rejected = 0;

    for (i = 0; i < n; i++) {
        side_t  *q = &pairs[i].b;

        found = -1;
        phase = 0;

        /* 1: the normal form, exact */
        for (j = 0; j < n && found < 0; j++) {
            if (pairs[j].a.fold_len == q->fold_len
                && memcmp(pairs[j].a.fold, q->fold, q->fold_len) == 0)
            {
                found = j;
                phase = 1;
            }
        }

        /* 2: the best near misses, as the zone keeps them */
        if (found < 0) {
            k = 0;

            for (j = 0; j < n; j++) {
                if (pairs[j].a.guard != q->guard) {
                    continue;   /* another group in the zone */
                }

                s = ngx_smartflow_cache_minhash_sim(q->sig, pairs[j].a.sig);
                if (s < near) {
                    continue;
                }

                for (hitk = k; hitk > 0 && best[hitk - 1] < s; hitk--) {
                    if (hitk < NGX_SMARTFLOW_CACHE_CAND) {
                        best[hitk] = best[hitk - 1];
                        cand[hitk] = cand[hitk - 1];
                    }
                }

                if (hitk < NGX_SMARTFLOW_CACHE_CAND) {
                    best[hitk] = s;
                    cand[hitk] = j;
                    k += (k < NGX_SMARTFLOW_CACHE_CAND);
                }
            }

            found = first_verified(pairs, q, cand, k, &rejected);
            phase = 2;
        }

        /*
         * 4: the nearest vectors over the threshold, in the query's group:
         * read all of it when small, as the zone does, else FAISS
         */
        if (found < 0) {
            for (grp = 0, j = 0; j < n; j++) {
                grp += (pairs[j].a.guard == q->guard);
            }

            if (grp <= NGX_SMARTFLOW_CACHE_SCAN_VEC) {
                for (k = 0, j = 0; j < n; j++) {
                    float  d;

                    if (pairs[j].a.guard != q->guard) {
                        continue;
                    }

                    d = 0;
                    for (hitk = 0; hitk < NGX_SMARTFLOW_CACHE_DIM; hitk++) {
                        d += q->vec[hitk] * pairs[j].a.vec[hitk];
                    }

                    if (k == NGX_SMARTFLOW_CACHE_K
                        && d <= dist[NGX_SMARTFLOW_CACHE_K - 1])
                    {
                        continue;
                    }

                    for (hitk = (k < NGX_SMARTFLOW_CACHE_K)
                                ? k : NGX_SMARTFLOW_CACHE_K - 1;
                         hitk > 0 && dist[hitk - 1] < d;
                         hitk--)
                    {
                        dist[hitk] = dist[hitk - 1];
                        labels[hitk] = labels[hitk - 1];
                    }

                    dist[hitk] = d;
                    labels[hitk] = j;
                    k += (k < NGX_SMARTFLOW_CACHE_K);
                }

                for (j = k; j < NGX_SMARTFLOW_CACHE_K; j++) {
                    labels[j] = -1;
                }

            } else {
                faiss_Index_search(index, 1, q->vec, NGX_SMARTFLOW_CACHE_K,
                                   dist, labels);
            }

            for (k = 0, j = 0; j < NGX_SMARTFLOW_CACHE_K; j++) {
                if (labels[j] >= 0 && dist[j] * 1000 + 0.5 >= sim
                    && pairs[labels[j]].a.guard == q->guard
                    && k < NGX_SMARTFLOW_CACHE_CAND)
                {
                    cand[k++] = labels[j];
                }
            }

            found = first_verified(pairs, q, cand, k, &rejected);
            phase = 4;
        }

        if (found < 0) {
            continue;
        }

        hits[phase]++;

        if (pairs[i].hit && strcmp(pairs[found].a.text, pairs[i].a.text) == 0)
        {
            /* the pair's own question (stored once for all its pairs) */
            good[phase]++;

        } else if (pairs[found].a.fold_len == q->fold_len
                   && memcmp(pairs[found].a.fold, q->fold, q->fold_len) == 0)
        {
            /* the very same question stored by another pair: right too */
            same[phase]++;

        } else {
            bad[phase]++;

            if (pairs[i].hit) {
                pos_wrong++;

            } else {
                neg_hit++;
            }

            if (getenv("CACHE_EVAL_VERBOSE")) {
                printf("false hit (phase %d): \"%s\" -> \"%s\"\n", phase,
                       q->text, pairs[found].a.text);
            }
        }
    }

    report("one cache holding every pair's question", hits, good, bad,
           same, np, nn, near, sim, n, rejected);
    printf("  false hits on hard negatives there: %ld; paraphrases "
           "answered with another pair's question: %ld\n", neg_hit,
           pos_wrong);

    faiss_Index_free(index);

    return 0;
}
