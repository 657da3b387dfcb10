/*
 * The keys zone (smartflow_keys_zone) and its store: one slab zone holds
 * every virtual key, found by the SHA-256 digest of its secret through one
 * red-black tree and by its id through another; a queue keeps them in id
 * order for listing.  Keys are never freed once made (a revoked key stays
 * to say so), so the zone grows with the keys, not with the traffic.  On
 * "nginx -s reload" the zone is reused as it is.  Also smartflow_price and
 * the small parsers and JSON writers the keys code shares.
 */

#include <openssl/crypto.h>

#include "ngx_http_smartflow_keys.h"


static ngx_int_t ngx_http_smartflow_keys_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static void ngx_smartflow_keys_secret_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static void ngx_smartflow_keys_drop_secret(ngx_http_smartflow_keys_zone_t *kz,
    ngx_smartflow_key_secret_t *s);
static time_t ngx_smartflow_days(ngx_int_t y, ngx_int_t m, ngx_int_t d);


ngx_str_t  ngx_smartflow_periods[] = {
    ngx_string("total"),
    ngx_string("daily"),
    ngx_string("monthly"),
    ngx_null_string
};


/* smartflow_keys_zone NAME SIZE [state=PATH] [thread_pool=NAME]; */
char *
ngx_http_smartflow_keys_zone_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_smartflow_main_conf_t *smcf = conf;

    ssize_t                          size;
    ngx_str_t                       *value, pool;
    ngx_uint_t                       i;
    ngx_shm_zone_t                  *shm_zone;
    ngx_http_smartflow_keys_zone_t  *kz;

    if (smcf->keys) {
        return "is duplicate";
    }

    value = cf->args->elts;

    size = ngx_parse_size(&value[2]);

    if (size == NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid smartflow_keys_zone size \"%V\"",
                           &value[2]);
        return NGX_CONF_ERROR;
    }

    if (size < (ssize_t) (8 * ngx_pagesize)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow_keys_zone \"%V\" is too small",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    kz = ngx_pcalloc(cf->pool, sizeof(ngx_http_smartflow_keys_zone_t));
    if (kz == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_str_null(&pool);

    for (i = 3; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "state=", 6) == 0
            && value[i].len > 6)
        {
            kz->state.data = value[i].data + 6;
            kz->state.len = value[i].len - 6;

            if (ngx_conf_full_name(cf->cycle, &kz->state, 0) != NGX_OK) {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "thread_pool=", 12) == 0
            && value[i].len > 12)
        {
            pool.data = value[i].data + 12;
            pool.len = value[i].len - 12;
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid smartflow_keys_zone parameter \"%V\"",
                           &value[i]);
        return NGX_CONF_ERROR;
    }

    if (pool.len && kz->state.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow_keys_zone \"%V\": thread_pool= is "
                           "used only with state=", &value[1]);
        return NGX_CONF_ERROR;
    }

#if (NGX_THREADS)

    if (kz->state.len) {
        /* the state file is written there, as "aio threads" does */
        kz->thread_pool = ngx_thread_pool_add(cf, pool.len ? &pool : NULL);
        if (kz->thread_pool == NULL) {
            return NGX_CONF_ERROR;
        }
    }

#else

    if (pool.len) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow_keys_zone \"%V\": thread_pool= needs "
                           "nginx built with threads", &value[1]);
        return NGX_CONF_ERROR;
    }

#endif

    shm_zone = ngx_shared_memory_add(cf, &value[1], size,
                                     &ngx_http_smartflow_proxy_module);
    if (shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow zone \"%V\" is already declared",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    shm_zone->init = ngx_http_smartflow_keys_init_zone;
    shm_zone->data = kz;

    kz->shm_zone = shm_zone;
    smcf->keys = kz;

    return NGX_CONF_OK;
}


/* smartflow_price MODEL_GLOB INPUT_USD_PER_1M OUTPUT_USD_PER_1M; */
char *
ngx_http_smartflow_price_directive(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_smartflow_main_conf_t *smcf = conf;

    ngx_str_t              *value;
    ngx_uint_t              i;
    ngx_smartflow_price_t  *price;

    value = cf->args->elts;

    price = ngx_array_push(&smcf->prices);
    if (price == NULL) {
        return NGX_CONF_ERROR;
    }

    price->glob = value[1];
    ngx_strlow(price->glob.data, price->glob.data, price->glob.len);

    for (i = 2; i < 4; i++) {
        if (ngx_smartflow_parse_money(value[i].data, value[i].len,
                                      i == 2 ? &price->in : &price->out)
            != NGX_OK)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid smartflow_price \"%V\": USD per "
                               "million tokens, at most 6 decimals",
                               &value[i]);
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_smartflow_keys_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_smartflow_keys_zone_t  *okz = data;

    size_t                           len;
    ngx_int_t                        rc;
    ngx_http_smartflow_keys_zone_t  *kz;

    kz = shm_zone->data;

    if (okz) {
        /* a reload: the keys and their counters stay where they are */
        kz->sh = okz->sh;
        kz->shpool = okz->shpool;
        return NGX_OK;
    }

    kz->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        kz->sh = kz->shpool->data;
        return NGX_OK;
    }

    kz->sh = ngx_slab_calloc(kz->shpool, sizeof(ngx_smartflow_keys_sh_t));
    if (kz->sh == NULL) {
        return NGX_ERROR;
    }

    kz->shpool->data = kz->sh;

    ngx_rbtree_init(&kz->sh->secrets, &kz->sh->secrets_sentinel,
                    ngx_smartflow_keys_secret_insert);
    ngx_rbtree_init(&kz->sh->ids, &kz->sh->ids_sentinel,
                    ngx_rbtree_insert_value);
    ngx_queue_init(&kz->sh->keys);
    ngx_queue_init(&kz->sh->redis_ops);
    kz->sh->next_id = 1;

    len = sizeof(" in smartflow_keys_zone \"\"") + shm_zone->shm.name.len;

    kz->shpool->log_ctx = ngx_slab_alloc(kz->shpool, len);
    if (kz->shpool->log_ctx == NULL) {
        return NGX_ERROR;
    }

    ngx_sprintf(kz->shpool->log_ctx, " in smartflow_keys_zone \"%V\"%Z",
                &shm_zone->shm.name);

    kz->shpool->log_nomem = 0;

    if (kz->state.len == 0) {
        return NGX_OK;
    }

    /* a start (or a resized zone): what the state file kept */
    ngx_shmtx_lock(&kz->shpool->mutex);
    rc = ngx_smartflow_keys_state_load(kz, shm_zone->shm.log);
    ngx_shmtx_unlock(&kz->shpool->mutex);

    return rc;
}


static void
ngx_smartflow_keys_secret_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t           **p;
    ngx_smartflow_key_secret_t   *s, *t;

    for ( ;; ) {

        if (node->key < temp->key) {
            p = &temp->left;

        } else if (node->key > temp->key) {
            p = &temp->right;

        } else {
            s = (ngx_smartflow_key_secret_t *) node;
            t = (ngx_smartflow_key_secret_t *) temp;

            p = (ngx_memcmp(s->digest, t->digest, 32) < 0)
                ? &temp->left : &temp->right;
        }

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


ngx_smartflow_key_secret_t *
ngx_smartflow_keys_by_digest(ngx_smartflow_keys_sh_t *sh, u_char *digest)
{
    ngx_rbtree_key_t             key;
    ngx_rbtree_node_t           *node, *sentinel;
    ngx_smartflow_key_secret_t  *s;

    ngx_memcpy(&key, digest, sizeof(ngx_rbtree_key_t));

    node = sh->secrets.root;
    sentinel = sh->secrets.sentinel;

    while (node != sentinel) {

        if (key < node->key) {
            node = node->left;
            continue;
        }

        if (key > node->key) {
            node = node->right;
            continue;
        }

        s = (ngx_smartflow_key_secret_t *) node;

        if (CRYPTO_memcmp(digest, s->digest, 32) == 0) {
            return s;
        }

        /* only two digests sharing their first bytes get here */
        node = (ngx_memcmp(digest, s->digest, 32) < 0) ? node->left
                                                       : node->right;
    }

    return NULL;
}


ngx_smartflow_key_t *
ngx_smartflow_keys_by_id(ngx_smartflow_keys_sh_t *sh, ngx_uint_t id)
{
    ngx_rbtree_node_t  *node, *sentinel;

    node = sh->ids.root;
    sentinel = sh->ids.sentinel;

    while (node != sentinel) {

        if (id == node->key) {
            return (ngx_smartflow_key_t *) node;
        }

        node = (id < node->key) ? node->left : node->right;
    }

    return NULL;
}


/* names are unique among the keys in use; a revoked key frees its name */
ngx_smartflow_key_t *
ngx_smartflow_keys_by_name(ngx_smartflow_keys_sh_t *sh, ngx_str_t *name)
{
    ngx_queue_t          *q;
    ngx_smartflow_key_t  *k;

    for (q = ngx_queue_head(&sh->keys);
         q != ngx_queue_sentinel(&sh->keys);
         q = ngx_queue_next(q))
    {
        k = ngx_queue_data(q, ngx_smartflow_key_t, queue);

        if (!k->revoked
            && k->name.len == name->len
            && ngx_strncmp(k->name.data, name->data, name->len) == 0)
        {
            return k;
        }
    }

    return NULL;
}


ngx_smartflow_key_t *
ngx_smartflow_keys_alloc(ngx_http_smartflow_keys_zone_t *kz, ngx_uint_t id)
{
    ngx_queue_t          *q;
    ngx_smartflow_key_t  *k, *prev;

    k = ngx_slab_calloc_locked(kz->shpool, sizeof(ngx_smartflow_key_t));
    if (k == NULL) {
        return NULL;
    }

    k->node.key = id;
    k->rpm = NGX_HTTP_SMARTFLOW_UNLIMITED;
    k->tpm = NGX_HTTP_SMARTFLOW_UNLIMITED;
    k->budget = NGX_HTTP_SMARTFLOW_UNLIMITED;

    ngx_rbtree_insert(&kz->sh->ids, &k->node);

    /* new ids are the largest; a state file lists them in order too */
    for (q = ngx_queue_last(&kz->sh->keys);
         q != ngx_queue_sentinel(&kz->sh->keys);
         q = ngx_queue_prev(q))
    {
        prev = ngx_queue_data(q, ngx_smartflow_key_t, queue);

        if (prev->node.key < id) {
            break;
        }
    }

    ngx_queue_insert_after(q, &k->queue);

    if (id >= kz->sh->next_id) {
        kz->sh->next_id = id + 1;
    }

    return k;
}


/* undoes a key that could not be completed */
void
ngx_smartflow_keys_free(ngx_http_smartflow_keys_zone_t *kz,
    ngx_smartflow_key_t *k)
{
    if (k->secret) {
        ngx_smartflow_keys_drop_secret(kz, k->secret);
    }

    ngx_smartflow_keys_drop_previous(kz, k);

    if (k->strings) {
        ngx_slab_free_locked(kz->shpool, k->strings);
    }

    ngx_rbtree_delete(&kz->sh->ids, &k->node);
    ngx_queue_remove(&k->queue);
    ngx_slab_free_locked(kz->shpool, k);
}


/*
 * Gives the key its strings: those the spec sets, the key's own for the
 * rest, all copied into one new slab block that replaces the old one.
 */
ngx_int_t
ngx_smartflow_keys_set_strings(ngx_http_smartflow_keys_zone_t *kz,
    ngx_smartflow_key_t *k, ngx_smartflow_key_spec_t *spec)
{
    size_t       size;
    u_char      *block, *p;
    ngx_str_t   *str[5], *src[5], val[5], *models, *dst;
    ngx_uint_t   i, nmodels;

    static ngx_uint_t  bits[5] = {
        NGX_SMARTFLOW_KEY_NAME, NGX_SMARTFLOW_KEY_TEAM,
        NGX_SMARTFLOW_KEY_USER, NGX_SMARTFLOW_KEY_POLICY,
        NGX_SMARTFLOW_KEY_METADATA
    };

    str[0] = &k->name;
    str[1] = &k->team;
    str[2] = &k->user;
    str[3] = &k->policy_group;
    str[4] = &k->metadata;

    src[0] = &spec->name;
    src[1] = &spec->team;
    src[2] = &spec->user;
    src[3] = &spec->policy_group;
    src[4] = &spec->metadata;

    for (i = 0; i < 5; i++) {
        if (!(spec->set & bits[i])) {
            src[i] = str[i];
        }
    }

    if (spec->set & NGX_SMARTFLOW_KEY_MODELS) {
        models = spec->models;
        nmodels = spec->nmodels;

    } else {
        models = k->models;
        nmodels = k->nmodels;
    }

    size = nmodels * sizeof(ngx_str_t);

    for (i = 0; i < 5; i++) {
        size += src[i]->len;
    }

    for (i = 0; i < nmodels; i++) {
        size += models[i].len;
    }

    block = ngx_slab_alloc_locked(kz->shpool, size ? size : 1);
    if (block == NULL) {
        return NGX_ERROR;
    }

    /* the model array first, where it stays aligned */
    dst = (ngx_str_t *) block;
    p = block + nmodels * sizeof(ngx_str_t);

    for (i = 0; i < nmodels; i++) {
        dst[i].data = p;
        dst[i].len = models[i].len;
        p = ngx_cpymem(p, models[i].data, models[i].len);
    }

    for (i = 0; i < 5; i++) {
        val[i] = *src[i];

        if (val[i].data) {
            val[i].data = p;
            p = ngx_cpymem(p, src[i]->data, src[i]->len);
        }
    }

    /* every old string has been copied: the old block can go */
    for (i = 0; i < 5; i++) {
        *str[i] = val[i];
    }

    if (k->strings) {
        ngx_slab_free_locked(kz->shpool, k->strings);
    }

    k->strings = block;
    k->models = nmodels ? dst : NULL;
    k->nmodels = nmodels;

    return NGX_OK;
}


/*
 * A new secret for the key.  With a grace period the current secret keeps
 * working until it ends; without one it stops at once.  Either way an
 * older secret still in its grace period stops.
 */
ngx_int_t
ngx_smartflow_keys_set_secret(ngx_http_smartflow_keys_zone_t *kz,
    ngx_smartflow_key_t *k, u_char *digest, u_char *prefix, time_t grace)
{
    ngx_smartflow_key_secret_t  *s;

    s = ngx_slab_calloc_locked(kz->shpool,
                               sizeof(ngx_smartflow_key_secret_t));
    if (s == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(s->digest, digest, 32);
    ngx_memcpy(&s->node.key, digest, sizeof(ngx_rbtree_key_t));
    s->key = k;

    ngx_smartflow_keys_drop_previous(kz, k);

    if (k->secret) {
        if (grace > 0) {
            k->previous = k->secret;
            k->previous->until = ngx_time() + grace;

        } else {
            ngx_smartflow_keys_drop_secret(kz, k->secret);
        }
    }

    ngx_rbtree_insert(&kz->sh->secrets, &s->node);

    k->secret = s;
    ngx_memcpy(k->prefix, prefix, NGX_SMARTFLOW_KEY_SHOWN);

    return NGX_OK;
}


void
ngx_smartflow_keys_drop_previous(ngx_http_smartflow_keys_zone_t *kz,
    ngx_smartflow_key_t *k)
{
    if (k->previous) {
        ngx_smartflow_keys_drop_secret(kz, k->previous);
        k->previous = NULL;
    }
}


static void
ngx_smartflow_keys_drop_secret(ngx_http_smartflow_keys_zone_t *kz,
    ngx_smartflow_key_secret_t *s)
{
    ngx_rbtree_delete(&kz->sh->secrets, &s->node);
    ngx_slab_free_locked(kz->shpool, s);
}


/* starts a new rate window or budget period when the old one is over */
void
ngx_smartflow_keys_roll(ngx_smartflow_key_t *k, time_t now, uint64_t now_ms)
{
    time_t  start;

    /* a clock set back starts a new window as well */
    if (now_ms >= k->window + NGX_SMARTFLOW_KEY_WINDOW
        || now_ms < k->window)
    {
        k->window = now_ms;
        k->window_requests = 0;
        k->window_tokens = 0;
        k->window_reserved = 0;
    }

    start = ngx_smartflow_keys_period_start(k->period, now);

    if (start != k->period_start) {
        k->period_start = start;
        k->spent = 0;
        k->reserved = 0;
        k->period_requests = 0;
        k->period_prompt = 0;
        k->period_completion = 0;
    }
}


/* budget periods follow the UTC calendar */
time_t
ngx_smartflow_keys_period_start(ngx_uint_t period, time_t now)
{
    ngx_tm_t  tm;

    switch (period) {

    case NGX_SMARTFLOW_PERIOD_DAILY:
        return now - now % 86400;

    case NGX_SMARTFLOW_PERIOD_MONTHLY:
        ngx_gmtime(now, &tm);
        return ngx_smartflow_days(tm.ngx_tm_year, tm.ngx_tm_mon, 1) * 86400;

    default:
        return 0;
    }
}


time_t
ngx_smartflow_keys_period_end(ngx_uint_t period, time_t start)
{
    ngx_tm_t  tm;

    switch (period) {

    case NGX_SMARTFLOW_PERIOD_DAILY:
        return start + 86400;

    case NGX_SMARTFLOW_PERIOD_MONTHLY:
        ngx_gmtime(start, &tm);

        if (tm.ngx_tm_mon == 12) {
            return ngx_smartflow_days(tm.ngx_tm_year + 1, 1, 1) * 86400;
        }

        return ngx_smartflow_days(tm.ngx_tm_year, tm.ngx_tm_mon + 1, 1)
               * 86400;

    default:
        return 0;
    }
}


uint64_t
ngx_smartflow_keys_now_ms(void)
{
    ngx_time_t  *tp;

    /* wall-clock time: windows are saved and read back after a restart */
    tp = ngx_timeofday();

    return (uint64_t) tp->sec * 1000 + tp->msec;
}


/* days from 1970-01-01 to a date of the proleptic Gregorian calendar */
static time_t
ngx_smartflow_days(ngx_int_t y, ngx_int_t m, ngx_int_t d)
{
    ngx_int_t  era, yoe, doy, doe;

    /* years counted from March, so that February's length comes last */
    if (m <= 2) {
        y--;
    }

    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;

    return (time_t) (era * 146097 + doe - 719468);
}


/* "2030-01-31T12:00:00Z", "...T12:00:00.250+02:00"; -1 if malformed */
time_t
ngx_smartflow_parse_rfc3339(u_char *p, size_t len)
{
    u_char     *last;
    time_t      t;
    ngx_int_t   n[6], off, i, k;

    static ngx_uint_t  widths[6] = { 4, 2, 2, 2, 2, 2 };
    static u_char      seps[6] = { '-', '-', 'T', ':', ':', '\0' };
    static ngx_int_t   mdays[12] = { 31, 29, 31, 30, 31, 30,
                                     31, 31, 30, 31, 30, 31 };

    last = p + len;

    for (i = 0; i < 6; i++) {
        n[i] = 0;

        for (k = 0; k < (ngx_int_t) widths[i]; k++) {
            if (p == last || *p < '0' || *p > '9') {
                return -1;
            }

            n[i] = n[i] * 10 + (*p++ - '0');
        }

        if (seps[i] == '\0') {
            break;
        }

        if (p == last
            || (*p != seps[i]
                && !(seps[i] == 'T' && (*p == 't' || *p == ' '))))
        {
            return -1;
        }

        p++;
    }

    if (n[1] < 1 || n[1] > 12 || n[2] < 1 || n[2] > mdays[n[1] - 1]
        || n[3] > 23 || n[4] > 59 || n[5] > 60)
    {
        return -1;
    }

    if (p < last && *p == '.') {
        /* fractions of a second do not matter here */
        for (p++; p < last && *p >= '0' && *p <= '9'; p++) { /* void */ }
    }

    if (p == last) {
        return -1;
    }

    off = 0;

    if (*p == 'Z' || *p == 'z') {
        p++;

    } else if (*p == '+' || *p == '-') {
        if (last - p != 6 || p[3] != ':'
            || ngx_atoi(p + 1, 2) == NGX_ERROR
            || ngx_atoi(p + 4, 2) == NGX_ERROR)
        {
            return -1;
        }

        off = ngx_atoi(p + 1, 2) * 3600 + ngx_atoi(p + 4, 2) * 60;

        if (*p == '-') {
            off = -off;
        }

        p += 6;
    }

    if (p != last) {
        return -1;
    }

    t = ngx_smartflow_days(n[0], n[1], n[2]) * 86400
        + n[3] * 3600 + n[4] * 60 + n[5] - off;

    return t < 0 ? -1 : t;
}


u_char *
ngx_smartflow_rfc3339(u_char *p, time_t t)
{
    ngx_tm_t  tm;

    ngx_gmtime(t, &tm);

    return ngx_sprintf(p, "%4d-%02d-%02dT%02d:%02d:%02dZ",
                       tm.ngx_tm_year, tm.ngx_tm_mon, tm.ngx_tm_mday,
                       tm.ngx_tm_hour, tm.ngx_tm_min, tm.ngx_tm_sec);
}


/*
 * A JSON number's text as a count: NGX_OK, NGX_DECLINED when it is
 * negative, NGX_ERROR when it is not a whole number that fits.
 */
ngx_int_t
ngx_smartflow_parse_uint(u_char *p, size_t len, uint64_t *out)
{
    uint64_t  n;

    if (len && *p == '-') {
        return NGX_DECLINED;
    }

    /* 19 digits always fit in 64 bits */
    if (len == 0 || len > 19) {
        return NGX_ERROR;
    }

    for (n = 0; len--; p++) {
        if (*p < '0' || *p > '9') {
            return NGX_ERROR;
        }

        n = n * 10 + (*p - '0');
    }

    *out = n;

    return NGX_OK;
}


/* "12.5" (USD) as micro-USD; the same returns as ngx_smartflow_parse_uint */
ngx_int_t
ngx_smartflow_parse_money(u_char *p, size_t len, uint64_t *out)
{
    u_char      *last;
    uint64_t     n;
    ngx_uint_t   digits, frac;

    if (len && *p == '-') {
        return NGX_DECLINED;
    }

    last = p + len;
    n = 0;
    digits = 0;

    for ( /* void */ ; p < last && *p >= '0' && *p <= '9'; p++) {
        if (++digits > 12) {
            return NGX_ERROR;
        }

        n = n * 10 + (*p - '0');
    }

    if (digits == 0) {
        return NGX_ERROR;
    }

    frac = 0;

    if (p < last && *p == '.') {
        for (p++; p < last && *p >= '0' && *p <= '9'; p++) {
            if (++frac > 6) {
                return NGX_ERROR;
            }

            n = n * 10 + (*p - '0');
        }

        if (frac == 0) {
            return NGX_ERROR;
        }
    }

    if (p != last) {
        return NGX_ERROR;
    }

    for ( /* void */ ; frac < 6; frac++) {
        n *= 10;
    }

    *out = n;

    return NGX_OK;
}


void
ngx_smartflow_out_raw(ngx_smartflow_out_t *o, u_char *s, size_t len)
{
    if (o->pos) {
        o->pos = ngx_cpymem(o->pos, s, len);
    }

    o->size += len;
}


/* a JSON string, or null when unset */
void
ngx_smartflow_out_str(ngx_smartflow_out_t *o, ngx_str_t *s)
{
    if (s->data == NULL) {
        ngx_sf_out_lit(o, "null");
        return;
    }

    if (o->pos) {
        *o->pos++ = '"';
        o->pos = ngx_smartflow_json_escape(o->pos, s->data, s->len);
        *o->pos++ = '"';
    }

    o->size += 2 + ngx_smartflow_json_escape_len(s->data, s->len);
}


void
ngx_smartflow_out_uint(ngx_smartflow_out_t *o, uint64_t n)
{
    u_char  buf[NGX_INT64_LEN];

    ngx_smartflow_out_raw(o, buf, ngx_sprintf(buf, "%uL", n) - buf);
}


/* a limit, or null when there is none */
void
ngx_smartflow_out_limit(ngx_smartflow_out_t *o, uint64_t n)
{
    if (n == NGX_HTTP_SMARTFLOW_UNLIMITED) {
        ngx_sf_out_lit(o, "null");
        return;
    }

    ngx_smartflow_out_uint(o, n);
}


/* micro-USD as a JSON number of dollars: 12.5, 0.000001, 3 */
void
ngx_smartflow_out_money(ngx_smartflow_out_t *o, uint64_t micro)
{
    u_char  *p, *last;
    u_char   buf[NGX_INT64_LEN + 8];

    last = ngx_sprintf(buf, "%uL.%06uL", micro / 1000000, micro % 1000000);

    for (p = last; p[-1] == '0'; p--) { /* void */ }

    if (p[-1] == '.') {
        p--;
    }

    ngx_smartflow_out_raw(o, buf, p - buf);
}


void
ngx_smartflow_out_hex(ngx_smartflow_out_t *o, u_char *p, size_t len)
{
    u_char  buf[128];

    len = ngx_min(len, sizeof(buf) / 2);

    ngx_smartflow_out_raw(o, buf, ngx_hex_dump(buf, p, len) - buf);
}


/* a threshold in per mille as a JSON number (0.85, 1), or null for 0 */
void
ngx_smartflow_out_fraction(ngx_smartflow_out_t *o, ngx_uint_t permille)
{
    u_char  *p, *last;
    u_char   buf[NGX_INT_T_LEN + 8];

    if (permille == 0) {
        ngx_sf_out_lit(o, "null");
        return;
    }

    last = ngx_sprintf(buf, "%ui.%03ui", permille / 1000, permille % 1000);

    for (p = last; p[-1] == '0'; p--) { /* void */ }

    if (p[-1] == '.') {
        p--;
    }

    ngx_smartflow_out_raw(o, buf, p - buf);
}
