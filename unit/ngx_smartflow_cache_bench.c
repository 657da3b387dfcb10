/*
 * Phase 4's cost at scale: N questions (100,000 by default, made from
 * word lists so that they differ) are embedded with the module's builtin
 * embedder and added to a FAISS inner product index, flat, HNSW32 and the
 * inverted file of index=ivf, as a worker holds them (one group of them
 * all: the largest case); then 2,000 lookups, each a stored question with a
 * word changed, are timed from the text to FAISS's answer (tokens,
 * embedding, search), on one OpenMP thread as in a worker.  Printed: the
 * time to build each index, the lookup p50 and p99, and the memory each
 * entry takes.
 *
 * Usage: cache_bench [N]
 */

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <faiss/c_api/IndexFlat_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/index_factory_c.h>

#include "ngx_smartflow_cache_text.h"


static char  *subjects[] = {
    "my order", "the invoice", "a refund", "the password", "my account",
    "the printer", "the router", "a flight", "the hotel booking",
    "my subscription", "the database", "a python script", "the server",
    "my laptop", "the phone", "a bank transfer", "the parcel", "the car",
    "a recipe", "the garden", "my visa", "the exam", "a loan", "the app",
    "the website", "my email", "the report", "a contract", "the budget"
};

static char  *verbs[] = {
    "is not working", "was cancelled", "is delayed", "keeps failing",
    "needs an update", "was charged twice", "cannot be found",
    "is too slow", "shows an error", "must be renewed", "was rejected",
    "needs to be moved", "stopped syncing", "was never delivered"
};

static char  *tails[] = {
    "what should I do", "how can I fix it", "who should I contact",
    "how long will it take", "is that normal", "what does it cost",
    "can you explain why", "what are my options", "is there a workaround",
    "how do I check the status"
};


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


/* the FAISS shim's inner product, as the zone's scan uses it */
float ngx_smartflow_faiss_dot(const float *a, const float *b, size_t d);
/* its inverted file, as index=ivf builds it */
int ngx_smartflow_faiss_ivf_new(FaissIndex **p_index, idx_t d,
    const float *centres, size_t ncentres, size_t nprobe, size_t max_scan);


static size_t
question(char *buf, size_t size, long i, int variant)
{
    long  ns, nv, nt;

    ns = sizeof(subjects) / sizeof(char *);
    nv = sizeof(verbs) / sizeof(char *);
    nt = sizeof(tails) / sizeof(char *);

    return snprintf(buf, size, "%s %s since %ld days, %s%s",
                    subjects[i % ns], verbs[(i / ns) % nv], i / (ns * nv),
                    tails[(i / 7) % nt],
                    variant == 1 ? " please" : variant == 2 ? " urgently" : "");
}


static double
now_us(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}


static void
embed_text(char *text, size_t len, float *v)
{
    ngx_smartflow_cache_text_t  t;

    ngx_smartflow_cache_tokenize(NULL, (u_char *) text, len, &t);
    ngx_smartflow_cache_embed(&t, v, NGX_SMARTFLOW_CACHE_DIM);
    free(t.tok);
}


static uint64_t  *guards;


static uint64_t
features(char *text, size_t len, float *v)
{
    uint64_t                    g;
    ngx_smartflow_cache_text_t  t;

    ngx_smartflow_cache_tokenize(NULL, (u_char *) text, len, &t);
    ngx_smartflow_cache_embed(&t, v, NGX_SMARTFLOW_CACHE_DIM);
    g = ngx_smartflow_cache_guard(&t);
    free(t.tok);

    return g;
}


static int
by_guard(const void *a, const void *b)
{
    uint64_t  x = guards[*(const long *) a], y = guards[*(const long *) b];

    return (x > y) - (x < y);
}


static long
gcd(long a, long b)
{
    long  t;

    while (b) {
        t = a % b;
        a = b;
        b = t;
    }

    return a;
}


static int
cmp(const void *a, const void *b)
{
    double  x = *(const double *) a, y = *(const double *) b;

    return (x > y) - (x < y);
}


int
main(int argc, char **argv)
{
    int          k, q, nq;
    long         i, n, j, lo, hi, mid, best, biggest, *order;
    float        d, bestd;
    uint64_t     g;
    char         buf[512];
    float       *base, v[NGX_SMARTFLOW_CACHE_DIM], dist[8];
    idx_t        labels[8];
    size_t       len;
    double       t0, build, *lat, found;
    char         ivf[32];
    long         same, *exact;
    long         stride;
    size_t       nc;
    float       *centres;
    const char  *desc[] = { "Flat", "HNSW32,Flat", ivf };
    FaissIndex  *index;

    n = argc > 1 ? atol(argv[1]) : 100000;
    nq = 2000;

    omp_set_num_threads(1);

    base = malloc((size_t) n * NGX_SMARTFLOW_CACHE_DIM * sizeof(float));
    lat = malloc(nq * sizeof(double));
    exact = malloc(nq * sizeof(long));

    for (i = 0; i < n; i++) {
        len = question(buf, sizeof(buf), i, 0);
        embed_text(buf, len,
                   &base[(size_t) i * NGX_SMARTFLOW_CACHE_DIM]);
    }

    snprintf(ivf, sizeof(ivf), "IVF%d,probe%d", NGX_SMARTFLOW_CACHE_IVF_LISTS,
             NGX_SMARTFLOW_CACHE_IVF_PROBES);

    /* the inverted file's centres as a zone picks them: strided over it */
    for (stride = (n * 5 / 8) | 1; gcd(stride, n) != 1; stride += 2) {
        /* void */
    }

    nc = (n < NGX_SMARTFLOW_CACHE_IVF_LISTS) ? n
                                              : NGX_SMARTFLOW_CACHE_IVF_LISTS;
    centres = malloc(nc * NGX_SMARTFLOW_CACHE_DIM * sizeof(float));

    for (i = 0; i < nc; i++) {
        memcpy(&centres[i * NGX_SMARTFLOW_CACHE_DIM],
               &base[(size_t) ((i * stride) % n) * NGX_SMARTFLOW_CACHE_DIM],
               NGX_SMARTFLOW_CACHE_DIM * sizeof(float));
    }

    for (k = 0; k < 3; k++) {
        index = NULL;

        if ((k == 0 ? faiss_IndexFlatIP_new_with((FaissIndexFlatIP **)
                                                 &index,
                                                 NGX_SMARTFLOW_CACHE_DIM)
             : k == 1 ? faiss_index_factory(&index, NGX_SMARTFLOW_CACHE_DIM,
                                            desc[k], METRIC_INNER_PRODUCT)
             : ngx_smartflow_faiss_ivf_new(&index, NGX_SMARTFLOW_CACHE_DIM,
                                           centres, nc,
                                           NGX_SMARTFLOW_CACHE_IVF_PROBES,
                                           NGX_SMARTFLOW_CACHE_IVF_SCAN))
            != 0)
        {
            fprintf(stderr, "FAISS index %s failed\n", desc[k]);
            return 1;
        }

        t0 = now_us();
        faiss_Index_add(index, n, base);
        build = now_us() - t0;

        found = 0;
        same = 0;

        for (q = 0; q < 2 * nq; q++) {
            /* a stored question with a function word, then a content word */
            i = ((q % nq) * 7919L) % n;
            len = question(buf, sizeof(buf), i, q < nq ? 1 : 2);

            t0 = now_us();
            embed_text(buf, len, v);
            faiss_Index_search(index, 1, v, NGX_SMARTFLOW_CACHE_K, dist,
                               labels);

            if (q < nq) {
                lat[q] = now_us() - t0;
                found += (labels[0] == i);

            } else if (k == 0) {
                /* the exact answer the others are held against */
                exact[q - nq] = labels[0];

            } else {
                same += (labels[0] == exact[q - nq]);
            }
        }

        qsort(lat, nq, sizeof(double), cmp);

        printf("phase 4 at %ld entries, index %-14s build %6.1f s, lookup "
               "p50 %7.1f us, p99 %7.1f us, nearest is the stored question "
               "%.1f%%", n, desc[k], build / 1e6, lat[nq / 2],
               lat[nq * 99 / 100], 100.0 * found / nq);

        if (k > 0) {
            printf(", with a word added the flat index's nearest %.1f%%",
                   100.0 * same / nq);
        }

        printf("\n");

        faiss_Index_free(index);
    }

    /*
     * As the zone searches: only the entries of the query's group (same
     * context, numbers, guarded words and negations), read whole with the
     * shim's inner product, while the group has at most 1,024 entries.
     */
    guards = malloc(n * sizeof(uint64_t));
    order = malloc(n * sizeof(long));

    for (i = 0; i < n; i++) {
        len = question(buf, sizeof(buf), i, 0);
        guards[i] = features(buf, len, v);
        order[i] = i;
    }

    qsort(order, n, sizeof(long), by_guard);

    found = 0;
    biggest = 0;

    for (q = 0; q < nq; q++) {
        i = (q * 7919L) % n;
        len = question(buf, sizeof(buf), i, 1);

        t0 = now_us();
        g = features(buf, len, v);

        for (lo = 0, hi = n; lo < hi; ) {
            mid = (lo + hi) / 2;
            if (guards[order[mid]] < g) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }

        best = -1;
        bestd = -2;

        for (j = lo; j < n && guards[order[j]] == g; j++) {
            d = ngx_smartflow_faiss_dot(v,
                    &base[(size_t) order[j] * NGX_SMARTFLOW_CACHE_DIM],
                    NGX_SMARTFLOW_CACHE_DIM);
            if (d > bestd) {
                bestd = d;
                best = order[j];
            }
        }

        lat[q] = now_us() - t0;
        biggest = (j - lo > biggest) ? j - lo : biggest;
        found += (best == i);
    }

    qsort(lat, nq, sizeof(double), cmp);

    printf("phase 4 at %ld entries, groups in the zone (largest read %ld) "
           "lookup p50 %7.1f us, p99 %7.1f us, nearest is the stored "
           "question %.1f%%\n", n, biggest, lat[nq / 2], lat[nq * 99 / 100],
           100.0 * found / nq);

    printf("memory per entry: zone %zu B (vector slot) + ~%d B (entry, "
           "MinHash) + partition, query and answer; each worker's FAISS "
           "copy %d B (Flat), %d B (IVF, and %d KB for its cells' "
           "directions) or ~%d B (HNSW32)\n",
           sizeof(float) * NGX_SMARTFLOW_CACHE_DIM + 16,
           (int) (NGX_SMARTFLOW_CACHE_MINHASH * 4 + 160),
           (int) (sizeof(float) * NGX_SMARTFLOW_CACHE_DIM),
           (int) (sizeof(float) * NGX_SMARTFLOW_CACHE_DIM + 8),
           (int) (NGX_SMARTFLOW_CACHE_IVF_LISTS * NGX_SMARTFLOW_CACHE_DIM
                  * sizeof(float) / 1024),
           (int) (sizeof(float) * NGX_SMARTFLOW_CACHE_DIM + 32 * 2 * 4 + 16));

    return 0;
}
