/*
 * The cache module.  Vector search runs on FAISS through its C API; the
 * module checks at start-up that the library answers a known query
 * correctly, so a broken FAISS or BLAS install stops nginx with a clear
 * message instead of serving wrong cache hits later, and pins OpenMP to
 * one thread per worker (workers are the unit of parallelism).
 */

#include <omp.h>

#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/index_factory_c.h>

#include "ngx_http_smartflow_proxy.h"


static ngx_int_t ngx_http_smartflow_cache_init_module(ngx_cycle_t *cycle);
static ngx_int_t ngx_http_smartflow_cache_init_process(ngx_cycle_t *cycle);


static ngx_http_module_t  ngx_http_smartflow_cache_module_ctx = {
    NULL,                                  /* preconfiguration */
    NULL,                                  /* postconfiguration */

    NULL,                                  /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    NULL,                                  /* create location configuration */
    NULL                                   /* merge location configuration */
};


ngx_module_t  ngx_http_smartflow_cache_module = {
    NGX_MODULE_V1,
    &ngx_http_smartflow_cache_module_ctx,  /* module context */
    NULL,                                  /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    ngx_http_smartflow_cache_init_module,  /* init module */
    ngx_http_smartflow_cache_init_process, /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_int_t
ngx_http_smartflow_cache_init_module(ngx_cycle_t *cycle)
{
    float        dist[2];
    idx_t        label[2];
    const char  *err;
    FaissIndex  *index;

    /* three unit vectors; the query is nearest to the second */
    static float  base[] = { 1, 0, 0, 0,  0, 1, 0, 0,  0, 0, 1, 0 };
    static float  query[] = { 0.1f, 0.9f, 0.1f, 0 };

    index = NULL;

    if (faiss_index_factory(&index, 4, "Flat", METRIC_INNER_PRODUCT) != 0
        || faiss_Index_add(index, 3, base) != 0
        || faiss_Index_search(index, 1, query, 2, dist, label) != 0)
    {
        err = faiss_get_last_error();
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "smartflow cache: FAISS self-test failed: %s",
                      err ? err : "unknown error");

        if (index) {
            faiss_Index_free(index);
        }

        return NGX_ERROR;
    }

    faiss_Index_free(index);

    if (label[0] != 1 || dist[0] < 0.89f || dist[0] > 0.91f) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "smartflow cache: FAISS self-test returned vector %L "
                      "at %.3f, expected 1 at 0.900", (int64_t) label[0],
                      (double) dist[0]);
        return NGX_ERROR;
    }

    ngx_log_debug0(NGX_LOG_DEBUG_CORE, cycle->log, 0,
                   "smartflow cache faiss self-test passed");

    return NGX_OK;
}


static ngx_int_t
ngx_http_smartflow_cache_init_process(ngx_cycle_t *cycle)
{
    omp_set_num_threads(1);

    return NGX_OK;
}
