/*
 * The cache's text functions, pure and shared with the quality program
 * (unit/ngx_smartflow_cache_eval.c): tokens of a prompt, its normalised
 * form (phase 1), its MinHash signature (phase 2), the builtin embedding
 * (phase 4) and the verification that guards phases 2 and 4.
 */

#ifndef _NGX_SMARTFLOW_CACHE_TEXT_H_INCLUDED_
#define _NGX_SMARTFLOW_CACHE_TEXT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>


#define ngx_sf_isdigit(c)  ((c) >= '0' && (c) <= '9')
#define ngx_sf_isalpha(c)  (((c) | 0x20) >= 'a' && ((c) | 0x20) <= 'z')
#define ngx_sf_isalnum(c)  (ngx_sf_isdigit(c) || ngx_sf_isalpha(c))


#define NGX_SMARTFLOW_CACHE_DIM        256   /* a zone's default dim= */
#define NGX_SMARTFLOW_CACHE_MAX_DIM    4096  /* dim= of a zone, at most */
#define NGX_SMARTFLOW_CACHE_MINHASH    64
#define NGX_SMARTFLOW_CACHE_MAX_TOKENS 1024
#define NGX_SMARTFLOW_CACHE_K          8     /* FAISS neighbours examined */
#define NGX_SMARTFLOW_CACHE_CAND       4     /* candidates verified */
#define NGX_SMARTFLOW_CACHE_SCAN_VEC   1024  /* phase 4 read in the zone */
#define NGX_SMARTFLOW_CACHE_IVF_LISTS  512   /* index=ivf: its cells */
#define NGX_SMARTFLOW_CACHE_IVF_PROBES 8     /* ... a search reads at most */
#define NGX_SMARTFLOW_CACHE_IVF_SCAN   2048  /* ... while under this many */


typedef struct {
    u_char                     *data;      /* lower case, normalised */
    size_t                      len;
    size_t                      stem;      /* length of the stem in data */
    unsigned                    stop:1;    /* a function word */
    unsigned                    cap:1;     /* a name in the source text */
    unsigned                    num:1;
    unsigned                    neg:1;
    unsigned                    lex:1;     /* unit, currency, language... */
} ngx_smartflow_cache_tok_t;


typedef struct {
    ngx_smartflow_cache_tok_t  *tok;
    ngx_uint_t                  n;
    ngx_uint_t                  max;
} ngx_smartflow_cache_text_t;


ngx_int_t ngx_smartflow_cache_tokenize(ngx_pool_t *pool, u_char *p,
    size_t len, ngx_smartflow_cache_text_t *t);
/* tokens joined by one space; out->data from the pool */
ngx_int_t ngx_smartflow_cache_normalise(ngx_pool_t *pool,
    ngx_smartflow_cache_text_t *t, ngx_str_t *out);
/* the builtin embedding in dim floats (hashed features folded modulo dim) */
void ngx_smartflow_cache_embed(ngx_smartflow_cache_text_t *t, float *v,
    ngx_uint_t dim);
void ngx_smartflow_cache_minhash_simd(ngx_uint_t on);
void ngx_smartflow_cache_minhash(ngx_smartflow_cache_text_t *t,
    uint32_t *sig);
/* both in one pass over the tokens; sig or v may be NULL */
void ngx_smartflow_cache_sketch(ngx_smartflow_cache_text_t *t, uint32_t *sig,
    float *v, ngx_uint_t dim);
/* the share of equal MinHash values, per mille */
ngx_uint_t ngx_smartflow_cache_minhash_sim(uint32_t *a, uint32_t *b);
/* per mille, of two L2-normalised vectors */
ngx_uint_t ngx_smartflow_cache_cosine(float *a, float *b);
/* 1 when the candidate may answer the query; why not in *reason */
ngx_uint_t ngx_smartflow_cache_verify(ngx_smartflow_cache_text_t *q,
    ngx_smartflow_cache_text_t *c, char **reason);
/* a hash of what the verification needs equal (numbers, negations...) */
uint64_t ngx_smartflow_cache_guard(ngx_smartflow_cache_text_t *t);
ngx_uint_t ngx_smartflow_cache_content(ngx_smartflow_cache_text_t *t);
u_char *ngx_smartflow_cache_fold(u_char *out, u_char *p, size_t len);
uint64_t ngx_smartflow_cache_signs(u_char *p, size_t len);


#endif /* _NGX_SMARTFLOW_CACHE_TEXT_H_INCLUDED_ */
