/*
 * The part of FAISS's C API the cache module calls, compiled from FAISS's
 * C++ library.  Debian ships the C API headers but not libfaiss_c, so these
 * few entry points are built here into a static archive before nginx's
 * configure runs (nginx compiles with C flags and -Werror, which C++ does
 * not survive).  Signatures follow the headers in faiss/c_api exactly, so a system
 * libfaiss_c can replace this archive without touching the module.
 */

#include <exception>
#include <stdexcept>
#include <string>

#include <faiss/Index.h>
#include <faiss/index_factory.h>

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
