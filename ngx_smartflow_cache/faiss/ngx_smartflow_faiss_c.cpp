/*
 * The part of FAISS's C API the cache module calls, compiled from FAISS's
 * C++ library.  Debian ships the C API headers but not libfaiss_c, so these
 * few entry points are built here into a static archive before nginx's
 * configure runs (nginx compiles with C flags and -Werror, which C++ does
 * not survive).  Signatures follow the headers in faiss/c_api exactly, so a
 * system libfaiss_c can replace this archive without touching the module
 * (faiss_IndexFlatIP_new_with would then give FAISS's own scan).
 */

#include <exception>
#include <stdexcept>
#include <string>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include <faiss/Index.h>
#include <faiss/IndexFlat.h>
#include <faiss/index_factory.h>

#include <faiss/c_api/IndexFlat_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/index_factory_c.h>


static thread_local std::string  last_error;


static int
fail(const char *what)
{
    last_error = what;
    return -1;
}


extern "C" const char *
faiss_get_last_error()
{
    return last_error.empty() ? nullptr : last_error.c_str();
}


extern "C" int
faiss_index_factory(FaissIndex **p_index, int d, const char *description,
    FaissMetricType metric)
{
    try {
        *p_index = reinterpret_cast<FaissIndex *>(faiss::index_factory(d,
                       description, static_cast<faiss::MetricType>(metric)));
        return 0;

    } catch (std::exception &e) {
        return fail(e.what());
    }
}


extern "C" void
faiss_Index_free(FaissIndex *index)
{
    delete reinterpret_cast<faiss::Index *>(index);
}


extern "C" idx_t
faiss_Index_ntotal(const FaissIndex *index)
{
    return reinterpret_cast<const faiss::Index *>(index)->ntotal;
}


extern "C" int
faiss_Index_d(const FaissIndex *index)
{
    return reinterpret_cast<const faiss::Index *>(index)->d;
}


extern "C" int
faiss_Index_add(FaissIndex *index, idx_t n, const float *x)
{
    try {
        reinterpret_cast<faiss::Index *>(index)->add(n, x);
        return 0;

    } catch (std::exception &e) {
        return fail(e.what());
    }
}


extern "C" int
faiss_Index_add_with_ids(FaissIndex *index, idx_t n, const float *x,
    const idx_t *xids)
{
    try {
        reinterpret_cast<faiss::Index *>(index)->add_with_ids(n, x,
            reinterpret_cast<const faiss::Index::idx_t *>(xids));
        return 0;

    } catch (std::exception &e) {
        return fail(e.what());
    }
}


extern "C" int
faiss_Index_search(const FaissIndex *index, idx_t n, const float *x,
    idx_t k, float *distances, idx_t *labels)
{
    try {
        reinterpret_cast<const faiss::Index *>(index)->search(n, x, k,
            distances, reinterpret_cast<faiss::Index::idx_t *>(labels));
        return 0;

    } catch (std::exception &e) {
        return fail(e.what());
    }
}


extern "C" int
faiss_Index_reset(FaissIndex *index)
{
    try {
        reinterpret_cast<faiss::Index *>(index)->reset();
        return 0;

    } catch (std::exception &e) {
        return fail(e.what());
    }
}


/*
 * The flat inner product index the cache uses: FAISS's IndexFlatIP (its
 * storage, add, reset, ids), searched with a scan compiled here.  Debian
 * builds libfaiss.a for generic x86-64, where its inner product is the
 * scalar reference loop; this one works on eight floats at a time (GCC's
 * vector extension), and is built twice, for AVX2 and the baseline, the CPU
 * picking one when the module loads.
 */

typedef float  smartflow_v8 __attribute__((vector_size(32)));

__attribute__((target_clones("avx2", "default")))
static float
smartflow_dot(const float *a, const float *b, size_t d)
{
    size_t        i, j;
    float         r;
    smartflow_v8  s[4], va, vb;

    /* four sums apart: the additions do not wait on each other */
    for (j = 0; j < 4; j++) {
        s[j] = smartflow_v8{ 0, 0, 0, 0, 0, 0, 0, 0 };
    }

    for (i = 0; i + 32 <= d; i += 32) {
        for (j = 0; j < 4; j++) {
            std::memcpy(&va, a + i + 8 * j, sizeof(va));
            std::memcpy(&vb, b + i + 8 * j, sizeof(vb));
            s[j] += va * vb;
        }
    }

    for ( /* void */ ; i + 8 <= d; i += 8) {
        std::memcpy(&va, a + i, sizeof(va));
        std::memcpy(&vb, b + i, sizeof(vb));
        s[0] += va * vb;
    }

    s[0] += s[1] + s[2] + s[3];
    r = s[0][0] + s[0][1] + s[0][2] + s[0][3] + s[0][4] + s[0][5] + s[0][6]
        + s[0][7];

    for ( /* void */ ; i < d; i++) {
        r += a[i] * b[i];
    }

    return r;
}


/* the same scan for the cache's own small searches, in the zone */
extern "C" float
ngx_smartflow_faiss_dot(const float *a, const float *b, size_t d)
{
    return smartflow_dot(a, b, d);
}


namespace {

/* no answer yet: the k places a search fills */
static void
smartflow_empty(float *dist, faiss::Index::idx_t *lab, faiss::Index::idx_t k)
{
    for (faiss::Index::idx_t j = 0; j < k; j++) {
        dist[j] = -std::numeric_limits<float>::infinity();
        lab[j] = -1;
    }
}


/*
 * vector i of score s among the k best so far, kept sorted, best first;
 * on a tie the lower id first, so that the order vectors are read in
 * does not change the answer
 */
static void
smartflow_keep(float *dist, faiss::Index::idx_t *lab, faiss::Index::idx_t k,
    float s, faiss::Index::idx_t i)
{
    faiss::Index::idx_t  j;

    if (s < dist[k - 1]
        || (s == dist[k - 1] && lab[k - 1] >= 0 && i > lab[k - 1]))
    {
        return;
    }

    for (j = k - 1;
         j > 0 && (dist[j - 1] < s || (dist[j - 1] == s && lab[j - 1] > i));
         j--)
    {
        dist[j] = dist[j - 1];
        lab[j] = lab[j - 1];
    }

    dist[j] = s;
    lab[j] = i;
}


struct SmartflowFlatIP : faiss::IndexFlatIP {

    explicit SmartflowFlatIP(faiss::Index::idx_t dim)
        : faiss::IndexFlatIP(dim)
    {
    }

    void search(faiss::Index::idx_t n, const float *x,
        faiss::Index::idx_t k, float *distances, faiss::Index::idx_t *labels,
        const faiss::SearchParameters *) const override
    {
        for (faiss::Index::idx_t q = 0; q < n; q++) {
            smartflow_empty(distances + q * k, labels + q * k, k);
            scan(x + q * d, k, distances + q * k, labels + q * k);
        }
    }

    /* the k best for v of the vectors this index reads: all of them */
    virtual void scan(const float *v, faiss::Index::idx_t k, float *dist,
        faiss::Index::idx_t *lab) const
    {
        const float  *xb = get_xb();

        for (faiss::Index::idx_t i = 0; i < ntotal; i++) {
            smartflow_keep(dist, lab, k, smartflow_dot(v, xb + i * d, d), i);
        }
    }
};


/*
 * An inverted file over the same storage, for a zone whose groups grow
 * past what a flat scan serves.  Its cells' centres are given when it is
 * made (the zone keeps them, so that every worker holds the same cells
 * and a vector goes to the same cell in each).  Cached questions of one
 * context share most of their words, so their vectors share a large
 * common part, and by plain inner product a few centres would draw most
 * vectors; cells are chosen after that part, the centres' mean, is taken
 * away: the centre c whose direction from the mean,
 * u(c) = (c - mean) / |c - mean|, best matches the vector's, the largest
 * x . u(c) - mean . u(c).  A vector goes to that cell; a search reads the
 * best cells for the query, up to nprobe of them and, once past the
 * first, only while it has read fewer than max_scan vectors, and ranks
 * their vectors by the inner product itself.  Approximate: a neighbour
 * filed in a cell not read is missed.  Adding a vector costs one inner
 * product per centre, a search the same plus the vectors of the cells it
 * reads.  When the data has moved away from the centres, one cell draws
 * most of what comes: skewed() tells, and the zone picks new centres.
 */
struct SmartflowIVF : SmartflowFlatIP {

    size_t                                         nprobe;
    size_t                                         max_scan;
    size_t                                         largest = 0;
    std::vector<float>                             dirs;     /* u(c) */
    std::vector<float>                             offsets;  /* mean . u(c) */
    std::vector<std::vector<faiss::Index::idx_t>>  cells;

    SmartflowIVF(faiss::Index::idx_t dim, const float *centres, size_t n,
        size_t np, size_t ms)
        : SmartflowFlatIP(dim), nprobe(np), max_scan(ms),
          cells(std::max(n, (size_t) 1))
    {
        directions(centres, n);
    }

    void add(faiss::Index::idx_t n, const float *x) override
    {
        faiss::Index::idx_t  first = ntotal;

        faiss::IndexFlatIP::add(n, x);

        const float  *xb = get_xb();

        for (faiss::Index::idx_t i = first; i < ntotal; i++) {
            size_t  c = nearest(xb + i * d);

            cells[c].push_back(i);
            largest = std::max(largest, cells[c].size());
        }
    }

    /* one cell past a quarter of max_scan and four times the mean size */
    bool skewed() const
    {
        return 4 * largest > max_scan
               && largest * cells.size() > 4 * (size_t) ntotal;
    }

    /* u(c) and mean . u(c) of the n centres */
    void directions(const float *centres, size_t n)
    {
        std::vector<double>  mean(d, 0.0);

        for (size_t c = 0; c < n; c++) {
            for (faiss::Index::idx_t j = 0; j < d; j++) {
                mean[j] += centres[c * d + j];
            }
        }

        for (faiss::Index::idx_t j = 0; j < d && n; j++) {
            mean[j] /= (double) n;
        }

        dirs.assign(n * d, 0.0f);
        offsets.assign(n, 0.0f);

        for (size_t c = 0; c < n; c++) {
            float   *u = &dirs[c * d];
            double   norm = 0, off = 0;

            for (faiss::Index::idx_t j = 0; j < d; j++) {
                double  r = centres[c * d + j] - mean[j];

                u[j] = (float) r;
                norm += r * r;
            }

            /* a centre at the mean points nowhere: its cell stays small */
            norm = (norm > 0) ? 1.0 / std::sqrt(norm) : 0;

            for (faiss::Index::idx_t j = 0; j < d; j++) {
                u[j] = (float) (u[j] * norm);
                off += mean[j] * u[j];
            }

            offsets[c] = (float) off;
        }
    }

    /* how well cell c fits v; NaN from a broken vector fits worst */
    float fit(const float *v, size_t c) const
    {
        float  s = smartflow_dot(v, &dirs[c * d], d) - offsets[c];

        return (s == s) ? s : -std::numeric_limits<float>::infinity();
    }

    /*
     * the cell v goes to (on a tie the lower centre); without centres,
     * one cell holds every vector
     */
    size_t nearest(const float *v) const
    {
        size_t  best = 0;
        float   bestf = -std::numeric_limits<float>::infinity();

        for (size_t c = 0; c < offsets.size(); c++) {
            float  f = fit(v, c);

            if (f > bestf) {
                best = c;
                bestf = f;
            }
        }

        return best;
    }

    /* the m cells that fit v best, best first, as nearest() ranks them */
    std::vector<std::pair<float, size_t>> best(const float *v, size_t m)
        const
    {
        size_t                                 n = offsets.size();
        std::vector<std::pair<float, size_t>>  near(std::max(n, (size_t) 1),
                                                    std::make_pair(0.0f, 0));

        for (size_t c = 0; c < n; c++) {
            near[c] = std::make_pair(-fit(v, c), c);
        }

        m = std::min(m, near.size());
        std::partial_sort(near.begin(), near.begin() + m, near.end());
        near.resize(m);

        return near;
    }

    void reset() override
    {
        faiss::IndexFlatIP::reset();
        largest = 0;

        for (auto &cell : cells) {
            cell.clear();
        }
    }

    /* the vectors of the best cells for v */
    void scan(const float *v, faiss::Index::idx_t k, float *dist,
        faiss::Index::idx_t *lab) const override
    {
        const float  *xb = get_xb();
        size_t        scanned = 0;

        for (auto &cell : best(v, nprobe)) {
            if (scanned >= max_scan) {
                break;
            }

            scanned += cells[cell.second].size();

            for (faiss::Index::idx_t i : cells[cell.second]) {
                smartflow_keep(dist, lab, k, smartflow_dot(v, xb + i * d, d),
                               i);
            }
        }
    }
};

}


extern "C" int
ngx_smartflow_faiss_ivf_new(FaissIndex **p_index, idx_t d,
    const float *centres, size_t ncentres, size_t nprobe, size_t max_scan)
{
    try {
        *p_index = reinterpret_cast<FaissIndex *>(
                       new SmartflowIVF(d, centres, ncentres, nprobe,
                                        max_scan));
        return 0;

    } catch (std::exception &e) {
        return fail(e.what());
    }
}


extern "C" int
ngx_smartflow_faiss_ivf_skewed(const FaissIndex *index)
{
    const SmartflowIVF  *ivf;

    ivf = dynamic_cast<const SmartflowIVF *>(
              reinterpret_cast<const faiss::Index *>(index));

    return ivf != nullptr && ivf->skewed();
}


extern "C" int
faiss_IndexFlatIP_new_with(FaissIndexFlatIP **p_index, idx_t d)
{
    try {
        *p_index = reinterpret_cast<FaissIndexFlatIP *>(
                       new SmartflowFlatIP(d));
        return 0;

    } catch (std::exception &e) {
        return fail(e.what());
    }
}

