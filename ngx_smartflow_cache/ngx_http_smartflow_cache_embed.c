/*
 * The /v1/embeddings embedder: phase 4's vector from an OpenAI-compatible
 * endpoint (a local all-MiniLM-L6-v2 server, or a provider) instead of
 * the builtin one.  The query goes to an internal location, which
 * proxy_passes it to the endpoint, as a background subrequest whose
 * answer is kept in memory: the worker never waits, and the stage waits
 * for the answer at most the configured time.  Past it, or when the
 * endpoint fails or answers something other than an embedding, phase 4
 * is skipped and the answer is stored without a vector; the subrequest,
 * if still running, ends on its own (the location's proxy timeouts).
 * Its answer is read by this module's own filters, up to the location's
 * subrequest_output_buffer_size, and never goes further: a larger one
 * skips phase 4 too, where nginx's in-memory subrequest would fail the
 * client's connection with it.
 *
 * The zone's vectors have the zone's dim= dimensions (up to 4096): an
 * embedding of any other length is refused with an error_log line and
 * phase 4 skipped (it could match nothing stored), and one of the right
 * length is L2-normalised.
 */

#include <math.h>

#include "ngx_http_smartflow_cache.h"


struct ngx_http_smartflow_cache_embedder_s {
    ngx_str_t                   uri;
    ngx_str_t                   model;          /* empty: not sent */
    ngx_msec_t                  timeout;
    ngx_uint_t                  dimensions;     /* 0: not sent */
};


typedef struct {
    ngx_event_t                 timer;
    ngx_http_request_t         *r;
    ngx_http_request_t         *sr;             /* the subrequest */
    ngx_http_smartflow_cache_req_t  *rq;
    u_char                     *buf;            /* its answer, as read */
    size_t                      len;
    size_t                      size;
    unsigned                    waiting:1;
    unsigned                    done:1;
    unsigned                    ok:1;
    unsigned                    overflow:1;     /* more than size */
} ngx_http_smartflow_cache_embed_t;


static ngx_int_t ngx_http_smartflow_cache_embed_done(ngx_http_request_t *sr,
    void *data, ngx_int_t rc);
static ngx_int_t ngx_http_smartflow_cache_embed_parse(ngx_http_request_t *sr,
    ngx_http_smartflow_cache_embed_t *e);
static void ngx_http_smartflow_cache_embed_timeout(ngx_event_t *ev);
static void ngx_http_smartflow_cache_embed_wake(ngx_http_request_t *r);
static void ngx_http_smartflow_cache_embed_resume(
    ngx_http_smartflow_cache_embed_t *e);
static void ngx_http_smartflow_cache_embed_cleanup(void *data);
static ngx_http_smartflow_cache_embed_t *ngx_http_smartflow_cache_embed_of(
    ngx_http_request_t *r);
static ngx_int_t ngx_http_smartflow_cache_embed_header_filter(
    ngx_http_request_t *r);
static ngx_int_t ngx_http_smartflow_cache_embed_body_filter(
    ngx_http_request_t *r, ngx_chain_t *in);


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_body_filter;


/* a vector that matches nothing: an answer stored without an embedding */
static float  ngx_http_smartflow_cache_nowhere[NGX_SMARTFLOW_CACHE_MAX_DIM];


/*
 * NGX_OK: rq->vec is the query's embedding (the builtin one when no
 * endpoint is configured); NGX_AGAIN: the endpoint is asked, the stage
 * runs again with its answer; NGX_DECLINED: no embedding, phase 4 is
 * skipped.
 */
ngx_int_t
ngx_http_smartflow_cache_embed(ngx_http_request_t *r,
    ngx_http_smartflow_cache_req_t *rq, struct timeval *start)
{
    u_char                                *p;
    size_t                                 len;
    ngx_buf_t                             *b;
    ngx_chain_t                           *cl;
    ngx_table_elt_t                       *h;
    ngx_pool_cleanup_t                    *cln;
    ngx_http_request_t                    *sr;
    ngx_http_request_body_t               *rb;
    ngx_http_post_subrequest_t            *ps;
    ngx_http_smartflow_cache_embed_t      *e;
    ngx_http_smartflow_cache_embedder_t   *em;

    em = rq->embedder;

    if (em == NULL) {
        return NGX_OK;
    }

    e = rq->embed;

    if (e) {
        if (e->waiting) {
            return NGX_AGAIN;
        }

        if (!e->ok) {
            rq->item.vec = ngx_http_smartflow_cache_nowhere;
            return NGX_DECLINED;
        }

        rq->item.vec = rq->vec;
        return NGX_OK;
    }

    e = ngx_pcalloc(r->pool, sizeof(ngx_http_smartflow_cache_embed_t));
    if (e == NULL) {
        return NGX_ERROR;
    }

    e->r = r;
    e->rq = rq;
    rq->embed = e;

    /* until the endpoint answers, the answer would be stored without one */
    rq->item.vec = ngx_http_smartflow_cache_nowhere;

    /* {"input":"...","model":"...","dimensions":N} */
    len = sizeof("{\"input\":\"\",\"model\":\"\",\"dimensions\":}")
          + ngx_smartflow_json_escape_len(rq->item.query.data,
                                          rq->item.query.len)
          + ngx_smartflow_json_escape_len(em->model.data, em->model.len)
          + NGX_INT_T_LEN;

    b = ngx_create_temp_buf(r->pool, len);
    if (b == NULL) {
        return NGX_ERROR;
    }

    p = ngx_sf_cpymem(b->last, "{\"input\":\"");
    p = ngx_smartflow_json_escape(p, rq->item.query.data, rq->item.query.len);
    *p++ = '"';

    if (em->model.len) {
        p = ngx_sf_cpymem(p, ",\"model\":\"");
        p = ngx_smartflow_json_escape(p, em->model.data, em->model.len);
        *p++ = '"';
    }

    if (em->dimensions) {
        p = ngx_sprintf(p, ",\"dimensions\":%ui", em->dimensions);
    }

    *p++ = '}';
    b->last = p;
    b->last_buf = 1;

    ps = ngx_palloc(r->pool, sizeof(ngx_http_post_subrequest_t));
    if (ps == NULL) {
        return NGX_ERROR;
    }

    ps->handler = ngx_http_smartflow_cache_embed_done;
    ps->data = e;

    if (ngx_http_subrequest(r, &em->uri, NULL, &sr, ps,
                            NGX_HTTP_SUBREQUEST_BACKGROUND)
        != NGX_OK)
    {
        /* too many subrequests, or no memory: no phase 4 this time */
        e->done = 1;
        return NGX_DECLINED;
    }

    /* its answer is read by the filters below, not sent */
    e->sr = sr;

    /* a POST of its own body; none of the client's headers */
    rb = ngx_pcalloc(r->pool, sizeof(ngx_http_request_body_t));
    cl = ngx_alloc_chain_link(r->pool);
    if (rb == NULL || cl == NULL) {
        return NGX_ERROR;
    }

    cl->buf = b;
    cl->next = NULL;
    rb->bufs = cl;
    rb->rest = 0;

    sr->request_body = rb;
    sr->method = NGX_HTTP_POST;
    ngx_str_set(&sr->method_name, "POST");

    ngx_memzero(&sr->headers_in, sizeof(ngx_http_headers_in_t));
    sr->headers_in.content_length_n = b->last - b->pos;

    if (ngx_list_init(&sr->headers_in.headers, r->pool, 2,
                      sizeof(ngx_table_elt_t))
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    h = ngx_list_push(&sr->headers_in.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    ngx_str_set(&h->key, "Content-Type");
    ngx_str_set(&h->value, "application/json");
    h->lowcase_key = (u_char *) "content-type";
    h->hash = ngx_hash_key(h->lowcase_key, h->key.len);
    sr->headers_in.content_type = h;

    sr->headers_in.server = r->headers_in.server;
    sr->headers_in.host = NULL;

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    cln->handler = ngx_http_smartflow_cache_embed_cleanup;
    cln->data = e;

    e->timer.handler = ngx_http_smartflow_cache_embed_timeout;
    e->timer.data = r->connection;
    e->timer.log = r->connection->log;
    ngx_add_timer(&e->timer, em->timeout);

    e->waiting = 1;
    rq->start = *start;

    r->main->count++;
    r->write_event_handler = ngx_http_request_empty_handler;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "smartflow cache embedder: asking \"%V\"", &em->uri);

    return NGX_AGAIN;
}


/* the subrequest ends: its answer, if the stage still waits for it */
static ngx_int_t
ngx_http_smartflow_cache_embed_done(ngx_http_request_t *sr, void *data,
    ngx_int_t rc)
{
    ngx_http_smartflow_cache_embed_t *e = data;

    ngx_http_request_t  *r;

    if (e->done) {
        /* given up on: the request went on without it */
        return rc;
    }

    e->done = 1;
    r = e->r;

    if (rc == NGX_OK && sr->headers_out.status == NGX_HTTP_OK) {
        e->ok = (ngx_http_smartflow_cache_embed_parse(sr, e) == NGX_OK);

    } else {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "smartflow cache: embedder \"%V\" failed (status "
                      "%i); phase 4 skipped", &sr->uri,
                      rc > NGX_OK ? rc : (ngx_int_t) sr->headers_out.status);
    }

    if (e->timer.timer_set) {
        ngx_del_timer(&e->timer);
    }

    /* the request is woken once this subrequest is finalized */
    r->write_event_handler = ngx_http_smartflow_cache_embed_wake;
    (void) ngx_http_post_request(r, NULL);

    return rc;
}


/* {"data":[{"embedding":[...]}]}: the first embedding, fitted and scaled */
static ngx_int_t
ngx_http_smartflow_cache_embed_parse(ngx_http_request_t *sr,
    ngx_http_smartflow_cache_embed_t *e)
{
    char                  *end, num[64];
    float                 *v;
    double                 d, norm;
    ngx_str_t              err;
    ngx_uint_t             i, n, dim;
    ngx_smartflow_json_t  *j, *x;

    if (e->overflow) {
        ngx_log_error(NGX_LOG_WARN, e->r->connection->log, 0,
                      "smartflow cache: embedder \"%V\" answered more than "
                      "its subrequest_output_buffer_size (%uz bytes); "
                      "phase 4 skipped", &sr->uri, e->size);
        return NGX_ERROR;
    }

    if (e->len == 0) {
        goto garbage;
    }

    j = ngx_smartflow_json_parse(e->r->pool, e->buf, e->len, &err);
    j = ngx_smartflow_json_get(j, "data");

    if (j == NULL || j->type != NGX_SMARTFLOW_JSON_ARRAY
        || j->child == NULL)
    {
        goto garbage;
    }

    j = ngx_smartflow_json_get(j->child, "embedding");

    if (j == NULL || j->type != NGX_SMARTFLOW_JSON_ARRAY || j->nchild == 0) {
        goto garbage;
    }

    v = e->rq->vec;
    dim = e->rq->zone->dim;

    norm = 0;
    n = 0;

    /* numbers all; kept while they fit, counted to the end */
    for (x = j->child; x; x = x->next) {
        if (x->type != NGX_SMARTFLOW_JSON_NUMBER || x->str.len == 0
            || x->str.len >= sizeof(num))
        {
            goto garbage;
        }

        if (n++ >= dim) {
            continue;
        }

        ngx_memcpy(num, x->str.data, x->str.len);
        num[x->str.len] = '\0';

        d = strtod(num, &end);

        if (*end != '\0' || d != d || d > 1e30 || d < -1e30) {
            goto garbage;
        }

        /*
         * the length of what is kept: a number too small for a float
         * (1e-43) loses digits, and the vector scaled by the length of
         * the numbers sent would not be of length 1
         */
        v[n - 1] = (float) d;
        norm += (double) v[n - 1] * v[n - 1];
    }

    if (n != dim) {
        /* another model, or dimensions= the endpoint ignored */
        ngx_log_error(NGX_LOG_ERR, e->r->connection->log, 0,
                      "smartflow cache: embedder \"%V\" answered %ui "
                      "dimensions, zone \"%V\" has dim=%ui; phase 4 "
                      "skipped", &sr->uri, n, &e->rq->zone->name, dim);
        return NGX_ERROR;
    }

    if (norm <= 0) {
        goto garbage;
    }

    norm = sqrt(norm);

    for (i = 0; i < dim; i++) {
        v[i] = (float) (v[i] / norm);
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, e->r->connection->log, 0,
                   "smartflow cache embedder: %ui dimensions from \"%V\"",
                   n, &sr->uri);

    return NGX_OK;

garbage:

    ngx_log_error(NGX_LOG_WARN, e->r->connection->log, 0,
                  "smartflow cache: embedder \"%V\" answered no embedding; "
                  "phase 4 skipped", &sr->uri);

    return NGX_ERROR;
}


static void
ngx_http_smartflow_cache_embed_timeout(ngx_event_t *ev)
{
    ngx_connection_t                  *c;
    ngx_http_smartflow_cache_embed_t  *e;

    e = (ngx_http_smartflow_cache_embed_t *)
            ((u_char *) ev - offsetof(ngx_http_smartflow_cache_embed_t,
                                      timer));

    if (e->done) {
        return;
    }

    e->done = 1;
    c = e->r->connection;

    ngx_log_error(NGX_LOG_WARN, c->log, 0,
                  "smartflow cache: embedder \"%V\" did not answer in "
                  "%M ms; phase 4 skipped", &e->rq->embedder->uri,
                  e->rq->embedder->timeout);

    ngx_http_smartflow_cache_embed_resume(e);
    ngx_http_run_posted_requests(c);
}


static void
ngx_http_smartflow_cache_embed_wake(ngx_http_request_t *r)
{
    ngx_http_smartflow_cache_req_t  *rq;

    rq = ngx_http_smartflow_cache_req(r, 0);

    if (rq == NULL || rq->embed == NULL) {
        return;
    }

    ngx_http_smartflow_cache_embed_resume(rq->embed);
}


static void
ngx_http_smartflow_cache_embed_resume(ngx_http_smartflow_cache_embed_t *e)
{
    ngx_http_request_t        *r;
    ngx_http_smartflow_ctx_t  *ctx;

    if (!e->waiting) {
        return;
    }

    e->waiting = 0;
    r = e->r;

    r->main->count--;
    r->write_event_handler = ngx_http_request_empty_handler;

    /* the cache stage runs again and finds the embedding, or none */
    ctx = ngx_http_smartflow_get_ctx(r);
    ctx->stage--;

    ngx_http_smartflow_pipeline_resume(r);
}


static void
ngx_http_smartflow_cache_embed_cleanup(void *data)
{
    ngx_http_smartflow_cache_embed_t *e = data;

    e->done = 1;

    if (e->timer.timer_set) {
        ngx_del_timer(&e->timer);
    }
}


/* an answer stored without a lookup: no embedding from the endpoint */
void
ngx_http_smartflow_cache_embed_skip(ngx_http_smartflow_cache_req_t *rq)
{
    if (rq->embedder) {
        rq->item.vec = ngx_http_smartflow_cache_nowhere;
    }
}


/*
 * smartflow_cache_embedder builtin | URI [timeout=TIME] [model=NAME]
 *     [dimensions=N];
 */
char *
ngx_http_smartflow_cache_embedder(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_smartflow_cache_loc_conf_t *clcf = conf;

    ngx_int_t                             n;
    ngx_str_t                            *value, s;
    ngx_uint_t                            i;
    ngx_http_smartflow_cache_embedder_t  *em;

    if (clcf->embedder != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len == 7 && ngx_strncmp(value[1].data, "builtin", 7) == 0
        && cf->args->nelts == 2)
    {
        clcf->embedder = NULL;
        return NGX_CONF_OK;
    }

    if (value[1].len == 0 || value[1].data[0] != '/') {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow_cache_embedder: \"%V\" is neither "
                           "\"builtin\" nor the URI of a location",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    em = ngx_pcalloc(cf->pool, sizeof(ngx_http_smartflow_cache_embedder_t));
    if (em == NULL) {
        return NGX_CONF_ERROR;
    }

    em->uri = value[1];
    em->timeout = 1000;

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "timeout=", 8) == 0) {
            s.data = value[i].data + 8;
            s.len = value[i].len - 8;

            em->timeout = ngx_parse_time(&s, 0);
            if (em->timeout == (ngx_msec_t) NGX_ERROR || em->timeout == 0) {
                goto invalid;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "model=", 6) == 0) {
            em->model.data = value[i].data + 6;
            em->model.len = value[i].len - 6;

            if (em->model.len == 0) {
                goto invalid;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "dimensions=", 11) == 0) {
            n = ngx_atoi(value[i].data + 11, value[i].len - 11);
            if (n <= 0 || n > NGX_SMARTFLOW_CACHE_MAX_DIM) {
                goto invalid;
            }

            em->dimensions = n;
            continue;
        }

        goto invalid;
    }

    clcf->embedder = em;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "smartflow_cache_embedder: invalid parameter \"%V\"",
                       &value[i]);

    return NGX_CONF_ERROR;
}


/* at merge: an embedder asking for dimensions=N fills a zone of dim=N */
char *
ngx_http_smartflow_cache_embedder_check(ngx_conf_t *cf,
    ngx_http_smartflow_cache_embedder_t *em, ngx_smartflow_cache_zone_t *z)
{
    if (em == NULL || z == NULL || em->dimensions == 0
        || em->dimensions == z->dim)
    {
        return NGX_CONF_OK;
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "smartflow_cache_embedder \"%V\" asks for "
                       "dimensions=%ui, zone \"%V\" has dim=%ui",
                       &em->uri, em->dimensions, &z->name, z->dim);

    return NGX_CONF_ERROR;
}


/*
 * At merge, for a location that caches in zone z: its embedder, described
 * as a snapshot records it ("builtin", or the URI and the model), is
 * noted once among the zone's.  Vectors of another embedder do not
 * compare with these, even of the same dim=.
 */
ngx_int_t
ngx_http_smartflow_cache_embedder_note(ngx_conf_t *cf,
    ngx_http_smartflow_cache_embedder_t *em, ngx_smartflow_cache_zone_t *z)
{
    u_char      *p;
    ngx_str_t    name, *s;
    ngx_uint_t   i;

    if (em == NULL) {
        ngx_str_set(&name, "builtin");

    } else {
        name.len = em->uri.len;

        if (em->model.len) {
            name.len += sizeof(" model=") - 1 + em->model.len;
        }

        name.data = ngx_pnalloc(cf->pool, name.len);
        if (name.data == NULL) {
            return NGX_ERROR;
        }

        p = ngx_cpymem(name.data, em->uri.data, em->uri.len);

        if (em->model.len) {
            p = ngx_sf_cpymem(p, " model=");
            ngx_memcpy(p, em->model.data, em->model.len);
        }
    }

    if (z->embedders.elts == NULL
        && ngx_array_init(&z->embedders, cf->pool, 2, sizeof(ngx_str_t))
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    s = z->embedders.elts;

    for (i = 0; i < z->embedders.nelts; i++) {
        if (s[i].len == name.len
            && ngx_memcmp(s[i].data, name.data, name.len) == 0)
        {
            return NGX_OK;
        }
    }

    s = ngx_array_push(&z->embedders);
    if (s == NULL) {
        return NGX_ERROR;
    }

    *s = name;

    return NGX_OK;
}


static ngx_int_t
ngx_http_smartflow_cache_embedder_cmp(const void *one, const void *two)
{
    ngx_str_t  *a = (ngx_str_t *) one;
    ngx_str_t  *b = (ngx_str_t *) two;

    return ngx_memn2cmp(a->data, b->data, a->len, b->len);
}


/*
 * After the merges: the zone's embedders in one line, sorted so that the
 * order of the locations does not change it ("none" when no location
 * caches in the zone).  A snapshot holds the line it was written with.
 */
ngx_int_t
ngx_http_smartflow_cache_embedder_names(ngx_conf_t *cf,
    ngx_smartflow_cache_zone_t *z)
{
    u_char      *p;
    ngx_str_t   *s;
    ngx_uint_t   i;

    if (z->embedders.nelts == 0) {
        ngx_str_set(&z->embedder, "none");
        return NGX_OK;
    }

    s = z->embedders.elts;

    ngx_sort(s, z->embedders.nelts, sizeof(ngx_str_t),
             ngx_http_smartflow_cache_embedder_cmp);

    z->embedder.len = 0;

    for (i = 0; i < z->embedders.nelts; i++) {
        z->embedder.len += s[i].len + (i ? sizeof(", ") - 1 : 0);
    }

    z->embedder.data = ngx_pnalloc(cf->pool, z->embedder.len);
    if (z->embedder.data == NULL) {
        return NGX_ERROR;
    }

    p = z->embedder.data;

    for (i = 0; i < z->embedders.nelts; i++) {
        if (i) {
            p = ngx_sf_cpymem(p, ", ");
        }

        p = ngx_cpymem(p, s[i].data, s[i].len);
    }

    return NGX_OK;
}


/* the embedder's subrequest of the request r belongs to, if r is it */
static ngx_http_smartflow_cache_embed_t *
ngx_http_smartflow_cache_embed_of(ngx_http_request_t *r)
{
    ngx_http_smartflow_cache_req_t    *rq;
    ngx_http_smartflow_cache_embed_t  *e;

    if (r == r->main) {
        return NULL;
    }

    rq = ngx_http_smartflow_cache_req(r->main, 0);

    if (rq == NULL || rq->embed == NULL) {
        return NULL;
    }

    e = rq->embed;

    return (e->sr == r) ? e : NULL;
}


/* the embedder's answer goes no further: the client never sees it */
static ngx_int_t
ngx_http_smartflow_cache_embed_header_filter(ngx_http_request_t *r)
{
    if (ngx_http_smartflow_cache_embed_of(r) == NULL) {
        return ngx_http_next_header_filter(r);
    }

    return NGX_OK;
}


/*
 * The embedder's answer, kept up to subrequest_output_buffer_size; more
 * is noted and dropped, never an error, which would be the connection's.
 * A part the upstream buffered in a temporary file is read from it.
 */
static ngx_int_t
ngx_http_smartflow_cache_embed_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in)
{
    off_t                              flen;
    size_t                             len;
    ssize_t                            n;
    ngx_buf_t                         *b;
    ngx_chain_t                       *cl;
    ngx_http_core_loc_conf_t          *clcf;
    ngx_http_smartflow_cache_embed_t  *e;

    e = ngx_http_smartflow_cache_embed_of(r);

    if (e == NULL) {
        return ngx_http_next_body_filter(r, in);
    }

    if (e->buf == NULL) {
        clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

        e->size = clcf->subrequest_output_buffer_size;
        e->buf = ngx_pnalloc(r->pool, e->size);

        if (e->buf == NULL) {
            e->size = 0;
            e->overflow = 1;
        }
    }

    for (cl = in; cl; cl = cl->next) {
        b = cl->buf;

        if (ngx_buf_in_memory(b)) {
            len = b->last - b->pos;

            if (len > e->size - e->len) {
                e->overflow = 1;

            } else if (len) {
                ngx_memcpy(e->buf + e->len, b->pos, len);
                e->len += len;
            }

        } else if (b->in_file) {
            flen = b->file_last - b->file_pos;

            if (flen > (off_t) (e->size - e->len)) {
                e->overflow = 1;

            } else if (flen) {
                n = ngx_read_file(b->file, e->buf + e->len, (size_t) flen,
                                  b->file_pos);

                if (n != (ssize_t) flen) {
                    e->overflow = 1;

                } else {
                    e->len += n;
                }
            }
        }

        b->pos = b->last;

        if (b->in_file) {
            b->file_pos = b->file_last;
        }
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_smartflow_cache_embed_filters(ngx_conf_t *cf)
{
    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_smartflow_cache_embed_header_filter;

    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_smartflow_cache_embed_body_filter;

    return NGX_OK;
}
