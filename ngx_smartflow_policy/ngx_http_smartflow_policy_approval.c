/*
 * Shield's approval queue: a tool call whose tier is "approve" is held as
 * a pending item in a shared-memory zone (smartflow_policy_approvals),
 * found again by the SHA-256 of what the operator decides on: the rule,
 * the virtual key that sent it (or none), the tool's name and its whole
 * arguments, so only the same key's retry of the very same call passes
 * once an operator approved it and is refused once denied.  A request
 * uses up its approvals only when it goes on: each of its calls
 * approved, nothing else refusing it.  A pending item waits so long
 * (pending=, an hour by default), an approval is good so long (approved=,
 * 15 minutes); a full queue evicts what has expired, then the denials,
 * never an approval or a pending call.  The admin API
 * (smartflow_policy_admin, master key only) lists the pending items and
 * approves or denies them:
 *
 *   GET  /api/shield/pending
 *   POST /api/shield/pending/{id}/approve
 *   POST /api/shield/pending/{id}/deny
 */

#include <openssl/crypto.h>

#include "ngx_http_smartflow_policy.h"


/*
 * what an item keeps of the arguments to show: enough to decide on; more
 * is shown cut at a character, flagged, with the whole length
 */
#define NGX_SF_APPROVAL_ARGS      4096
#define NGX_SF_APPROVAL_RULE_MAX  64        /* Shield's rule names */

#define NGX_SF_APPROVAL_PENDING_TTL   3600
#define NGX_SF_APPROVAL_APPROVED_TTL  900


typedef struct {
    ngx_uint_t                  id;             /* 0: a free slot */
    ngx_uint_t                  state;
    time_t                      created;
    time_t                      expires;        /* waits or is good until */
    u_char                      hash[32];
    u_char                      rule[32];
    size_t                      rule_len;
    u_char                      key[32];        /* vk_N, master, none */
    size_t                      key_len;
    u_char                      key_name[64];
    size_t                      key_name_len;
    u_char                      tool[64];
    size_t                      tool_len;
    u_char                      args[NGX_SF_APPROVAL_ARGS];
    size_t                      args_len;
    size_t                      args_size;      /* the whole arguments' */
    ngx_uint_t                  truncated;      /* a part is shown cut */
} ngx_http_smartflow_approval_t;


typedef struct {
    ngx_uint_t                  next_id;
    ngx_uint_t                  n;
    ngx_http_smartflow_approval_t  items[1];
} ngx_http_smartflow_approvals_sh_t;


static ngx_int_t ngx_http_smartflow_approvals_init_zone(
    ngx_shm_zone_t *shm_zone, void *data);
static ngx_int_t ngx_http_smartflow_approvals_master(ngx_http_request_t *r);
static ngx_int_t ngx_http_smartflow_approvals_list(ngx_http_request_t *r,
    ngx_shm_zone_t *zone);
static ngx_int_t ngx_http_smartflow_approvals_decide(ngx_http_request_t *r,
    ngx_http_smartflow_policy_main_conf_t *pmcf, ngx_uint_t id,
    ngx_uint_t state);
static u_char *ngx_http_smartflow_approvals_item(u_char *p,
    ngx_http_smartflow_approval_t *it);
static size_t ngx_http_smartflow_approvals_item_len(
    ngx_http_smartflow_approval_t *it);
static size_t ngx_http_smartflow_approvals_copy(u_char *dst, size_t size,
    u_char *src, size_t len, ngx_uint_t *cut);
static ngx_http_smartflow_approval_t *ngx_http_smartflow_approvals_find(
    ngx_http_smartflow_approvals_sh_t *sh, u_char *hash, time_t now,
    ngx_http_smartflow_approval_t **free, ngx_http_smartflow_approval_t **old);


/* smartflow_policy_approvals NAME SIZE [pending=TIME] [approved=TIME]; */
char *
ngx_http_smartflow_policy_approvals(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_smartflow_policy_main_conf_t *pmcf = conf;

    time_t      t, *ttl;
    ssize_t     size;
    ngx_str_t  *value, s;
    ngx_uint_t  i;

    value = cf->args->elts;

    if (pmcf->approvals) {
        return "is duplicate";
    }

    pmcf->approval_pending = NGX_SF_APPROVAL_PENDING_TTL;
    pmcf->approval_approved = NGX_SF_APPROVAL_APPROVED_TTL;

    for (i = 3; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "pending=", 8) == 0) {
            ttl = &pmcf->approval_pending;
            s.data = value[i].data + 8;
            s.len = value[i].len - 8;

        } else if (ngx_strncmp(value[i].data, "approved=", 9) == 0) {
            ttl = &pmcf->approval_approved;
            s.data = value[i].data + 9;
            s.len = value[i].len - 9;

        } else {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\"", &value[i]);
            return NGX_CONF_ERROR;
        }

        t = ngx_parse_time(&s, 1);

        if (t == (time_t) NGX_ERROR || t == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid time in \"%V\"", &value[i]);
            return NGX_CONF_ERROR;
        }

        *ttl = t;
    }

    size = ngx_parse_size(&value[2]);

    if (size == NGX_ERROR || size < (ssize_t) (8 * ngx_pagesize)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid zone size \"%V\" (at least %uz)",
                           &value[2], 8 * ngx_pagesize);
        return NGX_CONF_ERROR;
    }

    pmcf->approvals = ngx_shared_memory_add(cf, &value[1], size,
                                            &ngx_http_smartflow_policy_module);
    if (pmcf->approvals == NULL) {
        return NGX_CONF_ERROR;
    }

    pmcf->approvals->init = ngx_http_smartflow_approvals_init_zone;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_smartflow_approvals_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    size_t                              n;
    ngx_slab_pool_t                    *shpool;
    ngx_http_smartflow_approvals_sh_t  *sh;

    if (data) {
        /* kept across reloads */
        shm_zone->data = data;
        return NGX_OK;
    }

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        shm_zone->data = shpool->data;
        return NGX_OK;
    }

    n = (shm_zone->shm.size / 2) / sizeof(ngx_http_smartflow_approval_t);

    sh = ngx_slab_calloc(shpool, sizeof(ngx_http_smartflow_approvals_sh_t)
                                 + n * sizeof(ngx_http_smartflow_approval_t));
    if (sh == NULL) {
        return NGX_ERROR;
    }

    sh->next_id = 1;
    sh->n = n;

    shpool->data = sh;
    shm_zone->data = sh;

    return NGX_OK;
}


/*
 * The state of a call in the queue: approved, denied, or pending, added
 * when new; an approved or pending call is kept in run->approvals.  *id
 * is the item's id.  NGX_DECLINED: no zone; NGX_BUSY: no room, every
 * item waits or is approved.
 */
ngx_int_t
ngx_http_smartflow_policy_approval(ngx_http_smartflow_policy_run_t *run,
    const char *rule, ngx_str_t *args, ngx_uint_t *id)
{
    u_char                                 *p, *q, hash[32];
    u_char                                  item[NGX_SIZE_T_LEN + 1
                                                 + NGX_SF_APPROVAL_RULE_MAX
                                                 + 32];
    size_t                                  rl;
    time_t                                  now;
    ngx_str_t                              *key, name;
    ngx_uint_t                              i, state;
    ngx_shm_zone_t                         *zone;
    ngx_slab_pool_t                        *shpool;
    ngx_http_smartflow_approval_t          *it, *free, *old;
    ngx_http_smartflow_approval_call_t     *c;
    ngx_http_smartflow_approvals_sh_t      *sh;
    ngx_http_smartflow_policy_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(run->r,
                                         ngx_http_smartflow_policy_module);
    zone = pmcf->approvals;

    if (zone == NULL || zone->data == NULL) {
        return NGX_DECLINED;
    }

    if (run->approvals == NULL) {
        run->approvals = ngx_array_create(run->r->pool, 4,
                             sizeof(ngx_http_smartflow_approval_call_t));
        if (run->approvals == NULL) {
            return NGX_ERROR;
        }
    }

    rl = ngx_strlen(rule);
    key = &run->ctx->key_id;

    if (run->ctx->vkey) {
        name = run->ctx->vkey->name;

    } else {
        ngx_str_null(&name);
    }

    /*
     * The call's digest (key, tool, arguments, each with its length
     * ahead: no two calls read as one) is worked out once per call, as
     * Shield may flag many of its strings; the item is the rule's and
     * that digest's.
     */
    if (run->hashed.data != args->data || run->hashed.len != args->len) {
        p = ngx_pnalloc(run->r->pool, 3 * (NGX_SIZE_T_LEN + 1) + key->len
                                      + run->tool.len + args->len);
        if (p == NULL) {
            return NGX_ERROR;
        }

        q = ngx_sprintf(p, "%uz:%V%uz:%V%uz:", key->len, key, run->tool.len,
                        &run->tool, args->len);
        q = ngx_cpymem(q, args->data, args->len);

        if (ngx_smartflow_sha256(p, q - p, run->call_hash) != NGX_OK) {
            return NGX_ERROR;
        }

        run->hashed = *args;
    }

    if (rl > NGX_SF_APPROVAL_RULE_MAX) {
        return NGX_ERROR;
    }

    q = ngx_sprintf(item, "%uz:%s", rl, rule);
    q = ngx_cpymem(q, run->call_hash, 32);

    if (ngx_smartflow_sha256(item, q - item, hash) != NGX_OK) {
        return NGX_ERROR;
    }

    /* the same call flagged again in this request: its item is known */
    c = run->approvals->elts;

    for (i = 0; i < run->approvals->nelts; i++) {
        if (ngx_memcmp(c[i].hash, hash, 32) == 0) {
            *id = c[i].id;
            return c[i].state;
        }
    }

    sh = zone->data;
    shpool = (ngx_slab_pool_t *) zone->shm.addr;

    now = ngx_time();

    ngx_shmtx_lock(&shpool->mutex);

    it = ngx_http_smartflow_approvals_find(sh, hash, now, &free, &old);

    if (it) {
        state = it->state;
        *id = it->id;

        ngx_shmtx_unlock(&shpool->mutex);

        if (state == NGX_SF_APPROVAL_DENIED) {
            return state;
        }

        goto found;
    }

    it = free ? free : old;

    if (it == NULL) {
        ngx_shmtx_unlock(&shpool->mutex);

        ngx_log_error(NGX_LOG_ERR, run->r->connection->log, 0,
                      "smartflow policy: approval queue \"%V\" is full "
                      "(%ui items, each pending or approved), a tool call "
                      "(rule %s) of key \"%V\" is refused; give the zone "
                      "more room or decide the pending items",
                      &zone->shm.name, sh->n, rule, key);

        return NGX_BUSY;
    }

    it->id = sh->next_id++;
    it->state = NGX_SF_APPROVAL_PENDING;
    it->created = now;
    it->expires = now + pmcf->approval_pending;
    ngx_memcpy(it->hash, hash, 32);
    it->truncated = 0;
    it->rule_len = ngx_http_smartflow_approvals_copy(it->rule,
                       sizeof(it->rule), (u_char *) rule, rl,
                       &it->truncated);
    it->key_len = ngx_http_smartflow_approvals_copy(it->key, sizeof(it->key),
                      key->data, key->len, &it->truncated);
    it->key_name_len = ngx_http_smartflow_approvals_copy(it->key_name,
                           sizeof(it->key_name), name.data, name.len,
                           &it->truncated);
    it->tool_len = ngx_http_smartflow_approvals_copy(it->tool,
                       sizeof(it->tool), run->tool.data, run->tool.len,
                       &it->truncated);
    it->args_len = ngx_http_smartflow_approvals_copy(it->args,
                       sizeof(it->args), args->data, args->len,
                       &it->truncated);
    it->args_size = args->len;

    *id = it->id;
    state = NGX_SF_APPROVAL_PENDING;

    ngx_shmtx_unlock(&shpool->mutex);

found:

    /* the same call twice in a request is one item */
    c = run->approvals->elts;

    for (i = 0; i < run->approvals->nelts; i++) {
        if (c[i].id == *id) {
            return state;
        }
    }

    c = ngx_array_push(run->approvals);
    if (c == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(c->hash, hash, 32);
    c->id = *id;
    c->state = state;

    return state;
}


/*
 * The request goes on: the approvals it relied on are used up, all of
 * them or none.  NGX_DECLINED: one was used by another request or
 * expired meanwhile.
 */
ngx_int_t
ngx_http_smartflow_policy_approvals_use(ngx_http_smartflow_policy_run_t *run)
{
    time_t                                  now;
    ngx_uint_t                              i, k;
    ngx_shm_zone_t                         *zone;
    ngx_slab_pool_t                        *shpool;
    ngx_http_smartflow_approval_t          *it, *used;
    ngx_http_smartflow_approval_call_t     *c;
    ngx_http_smartflow_approvals_sh_t      *sh;
    ngx_http_smartflow_policy_main_conf_t  *pmcf;

    if (run->approvals == NULL || run->approvals->nelts == 0) {
        return NGX_OK;
    }

    pmcf = ngx_http_get_module_main_conf(run->r,
                                         ngx_http_smartflow_policy_module);
    zone = pmcf->approvals;
    sh = zone->data;
    shpool = (ngx_slab_pool_t *) zone->shm.addr;
    c = run->approvals->elts;

    /* what is used up is kept, to be given back if no answer comes */
    used = ngx_pnalloc(run->r->pool, run->approvals->nelts
                                     * sizeof(ngx_http_smartflow_approval_t));
    if (used == NULL) {
        return NGX_ERROR;
    }

    now = ngx_time();

    ngx_shmtx_lock(&shpool->mutex);

    for (k = 0; k < run->approvals->nelts; k++) {
        for (i = 0; i < sh->n; i++) {
            it = &sh->items[i];

            if (it->id == c[k].id
                && it->state == NGX_SF_APPROVAL_APPROVED
                && it->expires > now
                && ngx_memcmp(it->hash, c[k].hash, 32) == 0)
            {
                break;
            }
        }

        if (i == sh->n) {
            ngx_shmtx_unlock(&shpool->mutex);
            return NGX_DECLINED;
        }

        c[k].slot = i;
    }

    for (k = 0; k < run->approvals->nelts; k++) {
        used[k] = sh->items[c[k].slot];
        sh->items[c[k].slot].id = 0;    /* one approval, one request */
    }

    ngx_shmtx_unlock(&shpool->mutex);

    run->used = used;
    run->nused = run->approvals->nelts;

    return NGX_OK;
}


/*
 * At the request's end, when it was not answered (no 2xx: the provider
 * could not be reached or refused it, the client left, a later stage
 * refused it): the approvals it used up are given back, until they
 * expire, unless the call has been asked about again meanwhile
 */
void
ngx_http_smartflow_policy_approvals_back(ngx_http_smartflow_policy_run_t *run)
{
    time_t                                  now;
    ngx_uint_t                              k, back;
    ngx_shm_zone_t                         *zone;
    ngx_slab_pool_t                        *shpool;
    ngx_http_smartflow_approval_t          *it, *free, *used;
    ngx_http_smartflow_approvals_sh_t      *sh;
    ngx_http_smartflow_policy_main_conf_t  *pmcf;

    pmcf = ngx_http_get_module_main_conf(run->r,
                                         ngx_http_smartflow_policy_module);
    zone = pmcf->approvals;

    if (zone == NULL || zone->data == NULL) {
        return;
    }

    sh = zone->data;
    shpool = (ngx_slab_pool_t *) zone->shm.addr;
    used = run->used;
    back = 0;

    now = ngx_time();

    ngx_shmtx_lock(&shpool->mutex);

    for (k = 0; k < run->nused; k++) {
        if (used[k].expires <= now) {
            continue;
        }

        it = ngx_http_smartflow_approvals_find(sh, used[k].hash, now, &free,
                                               NULL);

        if (it == NULL && free) {
            *free = used[k];
            back++;
        }
    }

    ngx_shmtx_unlock(&shpool->mutex);

    run->nused = 0;

    if (back) {
        ngx_log_error(NGX_LOG_INFO, run->r->connection->log, 0,
                      "smartflow policy: %ui Shield approval(s) given back, "
                      "the request was answered %ui",
                      back, run->r->headers_out.status);
    }
}


/*
 * The item of a call's hash in the queue, or NULL; called under the
 * zone's lock, it frees the items expired on the way.  *free is the first
 * free slot before the item (of the whole queue when it is not there);
 * *old, unless old is NULL, the live denial that expires first, the one a
 * full queue may evict.
 */
static ngx_http_smartflow_approval_t *
ngx_http_smartflow_approvals_find(ngx_http_smartflow_approvals_sh_t *sh,
    u_char *hash, time_t now, ngx_http_smartflow_approval_t **free,
    ngx_http_smartflow_approval_t **old)
{
    ngx_uint_t                      i;
    ngx_http_smartflow_approval_t  *it, *f, *d;

    f = NULL;
    d = NULL;

    for (i = 0; i < sh->n; i++) {
        it = &sh->items[i];

        if (it->id && it->expires <= now) {
            it->id = 0;         /* expired: as if never asked */
        }

        if (it->id == 0) {
            if (f == NULL) {
                f = it;
            }

            continue;
        }

        if (ngx_memcmp(it->hash, hash, 32) == 0) {
            break;
        }

        /* a denial may go first: its retry only waits again */
        if (it->state == NGX_SF_APPROVAL_DENIED
            && (d == NULL || it->expires < d->expires))
        {
            d = it;
        }
    }

    *free = f;

    if (old) {
        *old = d;
    }

    return (i < sh->n) ? &sh->items[i] : NULL;
}


/*
 * At most size bytes of src, cut before a character, not inside one (the
 * list is JSON: UTF-8 only); *cut is set when some is left out.
 */
static size_t
ngx_http_smartflow_approvals_copy(u_char *dst, size_t size, u_char *src,
    size_t len, ngx_uint_t *cut)
{
    if (len == 0) {
        return 0;       /* src may be NULL */
    }

    if (len > size) {
        *cut = 1;

        /* src[len] is the first byte left out: back to a lead byte */
        for (len = size; len > 0 && (src[len] & 0xc0) == 0x80; len--) {
            /* void */
        }
    }

    ngx_memcpy(dst, src, len);

    return len;
}


/* the admin API's content handler */
ngx_int_t
ngx_http_smartflow_policy_admin_handler(ngx_http_request_t *r)
{
    u_char                                 *p, *last;
    ngx_int_t                               rc, id;
    ngx_uint_t                              state;
    ngx_shm_zone_t                         *zone;
    ngx_http_smartflow_policy_main_conf_t  *pmcf;

    rc = ngx_http_smartflow_approvals_master(r);
    if (rc != NGX_OK) {
        return ngx_http_smartflow_refuse(r, rc, 0);
    }

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_policy_module);
    zone = pmcf->approvals;

    if (zone == NULL || zone->data == NULL) {
        rc = ngx_http_smartflow_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                 "server_error", "approvals_not_configured", NULL,
                 "No smartflow_policy_approvals zone is configured.");
        return ngx_http_smartflow_refuse(r, rc, 0);
    }

    p = r->uri.data;
    last = p + r->uri.len;

    /* .../pending, or .../pending/{id}/approve|deny */
    p = ngx_strlcasestrn(p, last, (u_char *) "/pending", 8 - 1);

    if (p == NULL) {
        goto not_found;
    }

    p += 8;

    if (p == last || (p + 1 == last && *p == '/')) {
        if (r->method != NGX_HTTP_GET) {
            rc = ngx_http_smartflow_error(r, NGX_HTTP_NOT_ALLOWED,
                     "invalid_request_error", "method_not_allowed", NULL,
                     "Method %V is not allowed here; use GET.",
                     &r->method_name);
            return ngx_http_smartflow_refuse(r, rc, 0);
        }

        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_smartflow_approvals_list(r, zone);
    }

    if (*p++ != '/') {
        goto not_found;
    }

    for (id = 0; p < last && *p >= '0' && *p <= '9' && id < 100000000; p++) {
        id = id * 10 + (*p - '0');
    }

    if (last - p == 8 && ngx_strncmp(p, "/approve", 8) == 0) {
        state = NGX_SF_APPROVAL_APPROVED;

    } else if (last - p == 5 && ngx_strncmp(p, "/deny", 5) == 0) {
        state = NGX_SF_APPROVAL_DENIED;

    } else {
        goto not_found;
    }

    if (r->method != NGX_HTTP_POST) {
        rc = ngx_http_smartflow_error(r, NGX_HTTP_NOT_ALLOWED,
                 "invalid_request_error", "method_not_allowed", NULL,
                 "Method %V is not allowed here; use POST.",
                 &r->method_name);
        return ngx_http_smartflow_refuse(r, rc, 0);
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    return ngx_http_smartflow_approvals_decide(r, pmcf, id, state);

not_found:

    rc = ngx_http_smartflow_error(r, NGX_HTTP_NOT_FOUND,
             "invalid_request_error", "not_found", NULL,
             "Unknown Shield admin path %V.", &r->uri);
    return ngx_http_smartflow_refuse(r, rc, 0);
}


static ngx_int_t
ngx_http_smartflow_approvals_master(ngx_http_request_t *r)
{
    u_char                           digest[32];
    ngx_str_t                        key, *h;
    ngx_http_smartflow_main_conf_t  *smcf;

    smcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_proxy_module);

    ngx_str_null(&key);

    if (r->headers_in.authorization
        && r->headers_in.authorization->value.len > 7
        && ngx_strncasecmp(r->headers_in.authorization->value.data,
                           (u_char *) "Bearer ", 7) == 0)
    {
        key.data = r->headers_in.authorization->value.data + 7;
        key.len = r->headers_in.authorization->value.len - 7;

    } else {
        h = ngx_http_smartflow_header_in(&r->headers_in.headers, "x-api-key");
        if (h) {
            key = *h;
        }
    }

    if (key.len == 0) {
        return ngx_http_smartflow_error(r, NGX_HTTP_UNAUTHORIZED,
                   "invalid_request_error", "missing_api_key", NULL,
                   "You didn't provide an API key.");
    }

    if (smcf->master_key.len == 0
        || ngx_smartflow_sha256(key.data, key.len, digest) != NGX_OK
        || CRYPTO_memcmp(digest, smcf->master_hash, 32) != 0)
    {
        return ngx_http_smartflow_error(r, NGX_HTTP_UNAUTHORIZED,
                   "invalid_request_error", "invalid_api_key", NULL,
                   "The Shield admin API takes the master key only.");
    }

    return NGX_OK;
}


static size_t
ngx_http_smartflow_approvals_item_len(ngx_http_smartflow_approval_t *it)
{
    return sizeof("{\"id\":,\"object\":\"shield.pending\",\"rule\":\"\","
                  "\"key\":\"\",\"key_name\":\"\",\"tool\":\"\","
                  "\"arguments\":\"\",\"arguments_length\":,"
                  "\"truncated\":false,\"status\":\"approved\","
                  "\"created_at\":,\"expires_at\":}") + 4 * NGX_INT_T_LEN
           + 3 * sizeof("null")
           + ngx_smartflow_json_escape_len(it->rule, it->rule_len)
           + ngx_smartflow_json_escape_len(it->key, it->key_len)
           + ngx_smartflow_json_escape_len(it->key_name, it->key_name_len)
           + ngx_smartflow_json_escape_len(it->tool, it->tool_len)
           + ngx_smartflow_json_escape_len(it->args, it->args_len);
}


static u_char *
ngx_http_smartflow_approvals_str(u_char *p, char *name, u_char *s,
    size_t len)
{
    p = ngx_sprintf(p, ",\"%s\":", name);

    if (len == 0) {
        return ngx_sf_cpymem(p, "null");
    }

    *p++ = '"';
    p = ngx_smartflow_json_escape(p, s, len);
    *p++ = '"';

    return p;
}


static u_char *
ngx_http_smartflow_approvals_item(u_char *p, ngx_http_smartflow_approval_t *it)
{
    static const char  *states[] = { "", "pending", "approved", "denied" };

    p = ngx_sprintf(p, "{\"id\":%ui,\"object\":\"shield.pending\","
                    "\"rule\":\"", it->id);
    p = ngx_smartflow_json_escape(p, it->rule, it->rule_len);
    *p++ = '"';
    p = ngx_http_smartflow_approvals_str(p, "key", it->key, it->key_len);
    p = ngx_http_smartflow_approvals_str(p, "key_name", it->key_name,
                                         it->key_name_len);
    p = ngx_http_smartflow_approvals_str(p, "tool", it->tool, it->tool_len);
    p = ngx_sf_cpymem(p, ",\"arguments\":\"");
    p = ngx_smartflow_json_escape(p, it->args, it->args_len);

    return ngx_sprintf(p, "\",\"arguments_length\":%uz,\"truncated\":%s,"
                       "\"status\":\"%s\",\"created_at\":%T,"
                       "\"expires_at\":%T}",
                       it->args_size, it->truncated ? "true" : "false",
                       states[it->state], it->created, it->expires);
}


static ngx_int_t
ngx_http_smartflow_approvals_list(ngx_http_request_t *r, ngx_shm_zone_t *zone)
{
    u_char                             *p;
    size_t                              len;
    ngx_str_t                           json;
    time_t                              now;
    ngx_uint_t                          i, first;
    ngx_slab_pool_t                    *shpool;
    ngx_http_smartflow_approval_t      *it;
    ngx_http_smartflow_approvals_sh_t  *sh;

    sh = zone->data;
    shpool = (ngx_slab_pool_t *) zone->shm.addr;

    now = ngx_time();

    ngx_shmtx_lock(&shpool->mutex);

    len = sizeof("{\"object\":\"list\",\"data\":[]}");

    for (i = 0; i < sh->n; i++) {
        it = &sh->items[i];

        if (it->id && it->state == NGX_SF_APPROVAL_PENDING
            && it->expires > now)
        {
            len += ngx_http_smartflow_approvals_item_len(it) + 1;
        }
    }

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        ngx_shmtx_unlock(&shpool->mutex);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json.data = p;
    p = ngx_sf_cpymem(p, "{\"object\":\"list\",\"data\":[");
    first = 1;

    for (i = 0; i < sh->n; i++) {
        it = &sh->items[i];

        if (it->id && it->state == NGX_SF_APPROVAL_PENDING
            && it->expires > now)
        {
            if (!first) {
                *p++ = ',';
            }

            first = 0;
            p = ngx_http_smartflow_approvals_item(p, it);
        }
    }

    ngx_shmtx_unlock(&shpool->mutex);

    p = ngx_sf_cpymem(p, "]}");
    json.len = p - json.data;

    return ngx_http_smartflow_send_json(r, NGX_HTTP_OK, &json);
}


static ngx_int_t
ngx_http_smartflow_approvals_decide(ngx_http_request_t *r,
    ngx_http_smartflow_policy_main_conf_t *pmcf, ngx_uint_t id,
    ngx_uint_t state)
{
    u_char                             *p;
    time_t                              now;
    ngx_int_t                           rc;
    ngx_str_t                           json;
    ngx_uint_t                          i;
    ngx_slab_pool_t                    *shpool;
    ngx_http_smartflow_approval_t      *it, copy;
    ngx_http_smartflow_approvals_sh_t  *sh;

    sh = pmcf->approvals->data;
    shpool = (ngx_slab_pool_t *) pmcf->approvals->shm.addr;

    now = ngx_time();

    ngx_shmtx_lock(&shpool->mutex);

    for (i = 0; i < sh->n; i++) {
        it = &sh->items[i];

        if (id && it->id == id && it->state == NGX_SF_APPROVAL_PENDING
            && it->expires > now)
        {
            /* an approval is good for a while; a denial stands as long */
            it->state = state;
            it->expires = now + (state == NGX_SF_APPROVAL_APPROVED
                                 ? pmcf->approval_approved
                                 : pmcf->approval_pending);
            copy = *it;
            break;
        }
    }

    ngx_shmtx_unlock(&shpool->mutex);

    if (i == sh->n) {
        rc = ngx_http_smartflow_error(r, NGX_HTTP_NOT_FOUND,
                 "invalid_request_error", "not_found", NULL,
                 "No pending Shield call with id %ui.", id);
        return ngx_http_smartflow_refuse(r, rc, 0);
    }

    ngx_log_error(NGX_LOG_NOTICE, r->connection->log, 0,
                  "smartflow policy: Shield call %ui (%*s) %s",
                  id, copy.rule_len, copy.rule,
                  state == NGX_SF_APPROVAL_APPROVED ? "approved" : "denied");

    p = ngx_pnalloc(r->pool, ngx_http_smartflow_approvals_item_len(&copy));
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json.data = p;
    json.len = ngx_http_smartflow_approvals_item(p, &copy) - p;

    return ngx_http_smartflow_send_json(r, NGX_HTTP_OK, &json);
}
