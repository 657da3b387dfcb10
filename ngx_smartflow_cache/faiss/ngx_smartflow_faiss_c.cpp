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

#include <cstring>
#include <limits>

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

struct SmartflowFlatIP : faiss::IndexFlatIP {

    explicit SmartflowFlatIP(faiss::Index::idx_t dim)
        : faiss::IndexFlatIP(dim)
    {
    }

    void search(faiss::Index::idx_t n, const float *x,
        faiss::Index::idx_t k, float *distances, faiss::Index::idx_t *labels,
        const faiss::SearchParameters *) const override
    {
        const float  *xb = get_xb();

        for (faiss::Index::idx_t q = 0; q < n; q++) {
            const float          *v = x + q * d;
            float                *dist = distances + q * k;
            faiss::Index::idx_t  *lab = labels + q * k;

            for (faiss::Index::idx_t j = 0; j < k; j++) {
                dist[j] = -std::numeric_limits<float>::infinity();
                lab[j] = -1;
            }

            /* the k best, kept sorted, best first */
            for (faiss::Index::idx_t i = 0; i < ntotal; i++) {
                float  s = smartflow_dot(v, xb + i * d, d);

                if (s <= dist[k - 1]) {
                    continue;
                }

                faiss::Index::idx_t  j = k - 1;

                for ( /* void */ ; j > 0 && dist[j - 1] < s; j--) {
                    dist[j] = dist[j - 1];
                    lab[j] = lab[j - 1];
                }

                dist[j] = s;
                lab[j] = i;
            }
        }
    }
};

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
