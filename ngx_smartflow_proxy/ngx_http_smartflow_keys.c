/*
 * Who is calling, and what they may do.  The ACCESS handler takes the key
 * from "Authorization: Bearer KEY" (OpenAI's SDKs) or "x-api-key: KEY"
 * (Anthropic's) and compares its SHA-256 digest in constant time with the
 * master key's and, for an "sk-sf-" key, with the digests in the keys
 * zone; there it also counts the request against the key's requests per
 * minute.  Once the body is parsed, a pipeline stage checks the model
 * against the key's globs and reserves the request's estimated tokens and
 * cost; the LOG phase settles them with what the provider reported.  A
 * header filter adds the x-ratelimit-* headers to every response of a key
 * with limits.  Subrequests are skipped by nginx's access phase itself,
 * and a refusal is a plain status code, so "satisfy any" works as
 * operators expect.
 */

#include <openssl/crypto.h>

#include "ngx_http_smartflow_keys.h"
#include "ngx_smartflow_redis.h"


static ngx_int_t ngx_http_smartflow_find_key(ngx_http_request_t *r,
    ngx_str_t *key);
static ngx_int_t ngx_http_smartflow_virtual_key(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_str_t *key, u_char *digest);
static ngx_http_smartflow_vkey_t *ngx_http_smartflow_keys_copy(
    ngx_http_request_t *r, ngx_smartflow_key_t *k);
static void ngx_http_smartflow_keys_window(ngx_http_smartflow_vkey_t *vkey,
    ngx_smartflow_key_t *k, uint64_t now_ms);
static ngx_int_t ngx_http_smartflow_keys_stage(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx);
static ngx_int_t ngx_http_smartflow_keys_local_rpm(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_http_smartflow_keys_zone_t *kz);
static uint64_t ngx_http_smartflow_keys_cost(ngx_http_smartflow_vkey_t *vkey,
    uint64_t prompt, uint64_t completion);
static u_char *ngx_http_smartflow_keys_usd(ngx_http_request_t *r,
    uint64_t micro);
static ngx_int_t ngx_http_smartflow_keys_log_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_smartflow_keys_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_smartflow_keys_add_header(ngx_http_request_t *r,
    u_char *key, size_t len, u_char **p, uint64_t n, ngx_uint_t seconds);
static u_char *ngx_http_smartflow_keys_uint(u_char *p, uint64_t n);

#define ngx_sf_keys_header(r, key, p, n, seconds)                            \
    ngx_http_smartflow_keys_add_header(r, (u_char *) key, sizeof(key) - 1,   \
                                       p, n, seconds)


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;


ngx_int_t
ngx_http_smartflow_access_handler(ngx_http_request_t *r)
{
    u_char                           digest[32];
    ngx_str_t                        key;
    ngx_http_smartflow_ctx_t        *ctx;
    ngx_http_smartflow_loc_conf_t   *slcf;
    ngx_http_smartflow_main_conf_t  *smcf;

    slcf = ngx_http_get_module_loc_conf(r, ngx_http_smartflow_proxy_module);

    if (slcf->api == NGX_HTTP_SMARTFLOW_API_NONE
        || slcf->api == NGX_HTTP_SMARTFLOW_API_HEALTH
        || slcf->api >= NGX_HTTP_SMARTFLOW_API_ERROR)
    {
        return NGX_DECLINED;
    }

    smcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_proxy_module);

    ctx = ngx_http_smartflow_create_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->api = slcf->api;
    ctx->client_format = ngx_http_smartflow_api_format(slcf->api);

    if (ctx->authorized) {
        /* already checked before an internal redirect */
        return NGX_OK;
    }

    if (ngx_http_smartflow_keys_redis_waiting(r, ctx)) {
        return NGX_AGAIN;
    }

    if (ngx_http_smartflow_find_key(r, &key) != NGX_OK) {
        return ngx_http_smartflow_error(r, NGX_HTTP_UNAUTHORIZED,
                   "invalid_request_error", "missing_api_key", NULL,
                   "You didn't provide an API key. Send it as "
                   "\"Authorization: Bearer KEY\" or \"x-api-key: KEY\".");
    }

    if (smcf->master_key.len == 0 && smcf->keys == NULL) {
        return ngx_http_smartflow_error(r, NGX_HTTP_UNAUTHORIZED,
                   "invalid_request_error", "invalid_api_key", NULL,
                   "Incorrect API key provided: no smartflow_master_key "
                   "is configured on this gateway.");
    }

    if (ngx_smartflow_sha256(key.data, key.len, digest) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (smcf->master_key.len
        && CRYPTO_memcmp(digest, smcf->master_hash, 32) == 0)
    {
        ctx->master = 1;
        ctx->authorized = 1;
        ngx_str_set(&ctx->key_id, "master");
        return NGX_OK;
    }

    if (smcf->keys
        && key.len == NGX_SMARTFLOW_KEY_LEN
        && ngx_strncmp(key.data, NGX_SMARTFLOW_KEY_PREFIX,
                       NGX_SMARTFLOW_KEY_PREFIX_LEN) == 0)
    {
        return ngx_http_smartflow_virtual_key(r, ctx, &key, digest);
    }

    /* show only a prefix, as the providers do */
    return ngx_http_smartflow_error(r, NGX_HTTP_UNAUTHORIZED,
               "invalid_request_error", "invalid_api_key", NULL,
               "Incorrect API key provided: %*s****.",
               ngx_min(key.len, 6), key.data);
}


static ngx_int_t
ngx_http_smartflow_find_key(ngx_http_request_t *r, ngx_str_t *key)
{
    u_char     *p, *last;
    ngx_str_t  *h;

    if (r->headers_in.authorization) {
        p = r->headers_in.authorization->value.data;
        last = p + r->headers_in.authorization->value.len;

        if (last - p > 7 && ngx_strncasecmp(p, (u_char *) "Bearer ", 7) == 0)
        {
            for (p += 7; p < last && *p == ' '; p++) { /* void */ }

            if (p < last) {
                key->data = p;
                key->len = last - p;
                return NGX_OK;
            }
        }
    }

    h = ngx_http_smartflow_header_in(&r->headers_in.headers, "x-api-key");
    if (h) {
        *key = *h;
        return NGX_OK;
    }

    return NGX_DECLINED;
}


/*
 * An "sk-sf-" key: found by digest under the zone's mutex, checked, its
 * request counted, and what later checks need copied out before unlock.
 */
static ngx_int_t
ngx_http_smartflow_virtual_key(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_str_t *key, u_char *digest)
{
    u_char                          *p;
    time_t                           now, expired;
    uint64_t                         now_ms, used;
    ngx_uint_t                       revoked, threshold;
    ngx_smartflow_key_t             *k;
    ngx_http_smartflow_vkey_t       *vkey;
    ngx_smartflow_key_secret_t      *s;
    ngx_http_smartflow_keys_zone_t  *kz;
    ngx_http_smartflow_main_conf_t  *smcf;
    u_char                           prefix[NGX_SMARTFLOW_KEY_SHOWN];

    smcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_proxy_module);
    kz = smcf->keys;

    if (ngx_http_smartflow_keys_redis_down(kz)) {
        return ngx_http_smartflow_keys_redis_unavailable(r);
    }

    now = ngx_time();
    now_ms = ngx_smartflow_keys_now_ms();
    revoked = 0;
    expired = 0;
    threshold = 0;
    vkey = NULL;
    used = 0;

    ngx_shmtx_lock(&kz->shpool->mutex);

    s = ngx_smartflow_keys_by_digest(kz->sh, digest);

    if (s && s->until && s->until <= now) {
        /* an old secret whose grace period is over */
        ngx_smartflow_keys_drop_previous(kz, s->key);
        kz->sh->version++;
        s = NULL;
    }

    if (s == NULL) {
        ngx_shmtx_unlock(&kz->shpool->mutex);

        /* made on another node a moment ago? */
        if (kz->redis
            && ngx_http_smartflow_keys_redis_pull(r, ctx) == NGX_AGAIN)
        {
            return NGX_AGAIN;
        }

        return ngx_http_smartflow_error(r, NGX_HTTP_UNAUTHORIZED,
                   "invalid_request_error", "invalid_api_key", NULL,
                   "Incorrect API key provided: %*s****.",
                   (size_t) 6, key->data);
    }

    k = s->key;
    ngx_memcpy(prefix, k->prefix, NGX_SMARTFLOW_KEY_SHOWN);

    if (k->revoked) {
        revoked = 1;

    } else if (k->expires && k->expires <= now) {
        expired = k->expires;

    } else {
        vkey = ngx_http_smartflow_keys_copy(r, k);
        threshold = k->cache_threshold;

        ngx_smartflow_keys_roll(k, now, now_ms);

        /*
         * requests for completions count; /v1/models does not; with
         * Redis, the pipeline stage counts them there
         */
        if (vkey && ctx->api < NGX_HTTP_SMARTFLOW_API_MODELS
            && kz->redis == NULL)
        {
            used = k->window_requests;

            if (k->rpm == NGX_HTTP_SMARTFLOW_UNLIMITED || used < k->rpm) {
                k->window_requests++;
                k->period_requests++;
                k->requests++;
                kz->sh->version++;
            }
        }

        if (vkey) {
            ngx_http_smartflow_keys_window(vkey, k, now_ms);
        }
    }

    ngx_shmtx_unlock(&kz->shpool->mutex);

    if (revoked) {
        return ngx_http_smartflow_error(r, NGX_HTTP_UNAUTHORIZED,
                   "invalid_request_error", "invalid_api_key", NULL,
                   "The API key %*s**** has been revoked.",
                   (size_t) NGX_SMARTFLOW_KEY_SHOWN, prefix);
    }

    if (expired) {
        p = ngx_pnalloc(r->pool, NGX_SMARTFLOW_RFC3339_LEN);
        if (p == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        (void) ngx_smartflow_rfc3339(p, expired);

        return ngx_http_smartflow_error(r, NGX_HTTP_UNAUTHORIZED,
                   "invalid_request_error", "invalid_api_key", NULL,
                   "The API key %*s**** expired at %*s.",
                   (size_t) NGX_SMARTFLOW_KEY_SHOWN, prefix,
                   (size_t) NGX_SMARTFLOW_RFC3339_LEN, p);
    }

    if (vkey == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->vkey = vkey;
    ctx->team = vkey->team;
    ctx->cache_threshold = threshold;

    ctx->key_id.data = ngx_pnalloc(r->pool, sizeof("vk_") + NGX_INT_T_LEN);
    if (ctx->key_id.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_cpymem(ctx->key_id.data, "vk_", 3);
    ctx->key_id.len = ngx_http_smartflow_keys_uint(p, vkey->id)
                      - ctx->key_id.data;

    if (ctx->api == NGX_HTTP_SMARTFLOW_API_ADMIN_KEYS) {
        return ngx_http_smartflow_error(r, NGX_HTTP_FORBIDDEN,
                   "permission_error", "master_key_required", NULL,
                   "The admin API takes the master key only; virtual "
                   "keys cannot manage keys.");
    }

    if (vkey->rpm != NGX_HTTP_SMARTFLOW_UNLIMITED && used >= vkey->rpm
        && ctx->api < NGX_HTTP_SMARTFLOW_API_MODELS)
    {
        vkey->retry_after = (vkey->reset + 999) / 1000;

        return ngx_http_smartflow_error(r, NGX_HTTP_TOO_MANY_REQUESTS,
                   "requests", "rate_limit_exceeded", NULL,
                   "Rate limit reached for virtual key %V on requests per "
                   "min (RPM): Limit %uL, Used %uL, Requested 1. Please "
                   "try again in %Ts.", &ctx->key_id, vkey->rpm, used,
                   vkey->retry_after);
    }

    ctx->authorized = 1;

    return NGX_OK;
}


/* called with the zone locked: one pool block for the strings it needs */
static ngx_http_smartflow_vkey_t *
ngx_http_smartflow_keys_copy(ngx_http_request_t *r, ngx_smartflow_key_t *k)
{
    u_char                     *p;
    size_t                      size;
    ngx_uint_t                  i;
    ngx_http_smartflow_vkey_t  *vkey;

    size = sizeof(ngx_http_smartflow_vkey_t)
           + k->nmodels * sizeof(ngx_str_t)
           + k->name.len + k->team.len + k->user.len + k->policy_group.len;

    for (i = 0; i < k->nmodels; i++) {
        size += k->models[i].len;
    }

    vkey = ngx_pcalloc(r->pool, size);
    if (vkey == NULL) {
        return NULL;
    }

    vkey->id = k->node.key;
    vkey->rpm = k->rpm;
    vkey->tpm = k->tpm;
    vkey->budget = k->budget;

    vkey->models = (ngx_str_t *) (vkey + 1);
    vkey->nmodels = k->nmodels;
    p = (u_char *) (vkey->models + k->nmodels);

    for (i = 0; i < k->nmodels; i++) {
        vkey->models[i].data = p;
        vkey->models[i].len = k->models[i].len;
        p = ngx_cpymem(p, k->models[i].data, k->models[i].len);
    }

#define ngx_sf_copy(field)                                                   \
    if (k->field.data) {                                                     \
        vkey->field.data = p;                                                \
        vkey->field.len = k->field.len;                                      \
        p = ngx_cpymem(p, k->field.data, k->field.len);                      \
    }

    ngx_sf_copy(name);
    ngx_sf_copy(team);
    ngx_sf_copy(user);
    ngx_sf_copy(policy_group);

#undef ngx_sf_copy

    return vkey;
}


/* called with the zone locked: what the x-ratelimit-* headers tell */
static void
ngx_http_smartflow_keys_window(ngx_http_smartflow_vkey_t *vkey,
    ngx_smartflow_key_t *k, uint64_t now_ms)
{
    uint64_t  used;

    vkey->reset = (k->window + NGX_SMARTFLOW_KEY_WINDOW > now_ms)
                  ? k->window + NGX_SMARTFLOW_KEY_WINDOW - now_ms
                  : NGX_SMARTFLOW_KEY_WINDOW;

    vkey->requests_left = (k->rpm > k->window_requests)
                          ? k->rpm - k->window_requests : 0;

    used = k->window_tokens + k->window_reserved;
    vkey->tokens_left = (k->tpm > used) ? k->tpm - used : 0;
}


/*
 * The stage that runs once the model is known (ahead of the policy): the
 * key's model globs, then its tokens per minute and its budget, both
 * reserved from an estimate (prompt: a token per 4 body bytes;
 * completion: max_tokens) under one lock, so that concurrent requests see
 * each other's reservations.
 */
static ngx_int_t
ngx_http_smartflow_keys_stage(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx)
{
    time_t                            now;
    uint64_t                          now_ms, prompt, completion, used;
    uint64_t                          spent, left;
    ngx_int_t                         rc;
    ngx_uint_t                        i, refused, period;
    ngx_http_smartflow_keys_verdict_t  *v;
    ngx_str_t                       *model;
    ngx_smartflow_key_t             *k;
    ngx_smartflow_json_t            *j;
    ngx_smartflow_price_t           *price;
    ngx_http_smartflow_vkey_t       *vkey;
    ngx_http_smartflow_keys_zone_t  *kz;
    ngx_http_smartflow_main_conf_t  *smcf;
    u_char                           low[256];

    vkey = ctx->vkey;

    if (vkey == NULL) {
        return NGX_DECLINED;
    }

    model = &ctx->model;

    if (vkey->nmodels) {
        if (model->len <= sizeof(low)) {
            ngx_strlow(low, model->data, model->len);

            for (i = 0; i < vkey->nmodels; i++) {
                if (ngx_smartflow_glob(vkey->models[i].data,
                                       vkey->models[i].data
                                       + vkey->models[i].len,
                                       low, low + model->len))
                {
                    break;
                }
            }

        } else {
            i = vkey->nmodels;
        }

        if (i == vkey->nmodels) {
            return ngx_http_smartflow_error(r, NGX_HTTP_FORBIDDEN,
                       "permission_error", "model_not_allowed", "model",
                       "The model `%V` is not allowed for this API key.",
                       model);
        }
    }

    /* the price of what the provider is asked for */
    smcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_proxy_module);
    model = &ctx->upstream_model;
    price = smcf->prices.elts;

    if (model->len <= sizeof(low)) {
        ngx_strlow(low, model->data, model->len);

        for (i = 0; i < smcf->prices.nelts; i++) {
            if (ngx_smartflow_glob(price[i].glob.data,
                                   price[i].glob.data + price[i].glob.len,
                                   low, low + model->len))
            {
                vkey->price_in = price[i].in;
                vkey->price_out = price[i].out;
                break;
            }
        }
    }

    prompt = (ctx->body.len + 3) / 4;
    completion = 0;

    j = ngx_smartflow_json_get(ctx->json, "max_completion_tokens");
    if (j == NULL) {
        j = ngx_smartflow_json_get(ctx->json, "max_tokens");
    }

    if (j && j->type == NGX_SMARTFLOW_JSON_NUMBER
        && ngx_smartflow_parse_uint(j->str.data, j->str.len, &completion)
           != NGX_OK)
    {
        completion = 0;
    }

    vkey->est_prompt = prompt;
    vkey->est_tokens = prompt + completion;
    vkey->est_cost = ngx_http_smartflow_keys_cost(vkey, prompt, completion);

    kz = smcf->keys;
    now = ngx_time();
    now_ms = ngx_smartflow_keys_now_ms();
    refused = 0;

    if (kz->redis) {
        rc = ngx_http_smartflow_keys_redis_reserve(r, ctx, &v);

        if (rc == NGX_AGAIN) {
            return NGX_AGAIN;
        }

        if (rc == NGX_OK) {
            /* Redis decided, for every node */
            if (v->done == NGX_SMARTFLOW_VERDICT_OK) {
                return NGX_DECLINED;
            }

            period = NGX_SMARTFLOW_PERIOD_TOTAL;

            ngx_shmtx_lock(&kz->shpool->mutex);

            k = ngx_smartflow_keys_by_id(kz->sh, vkey->id);
            if (k) {
                period = k->period;
            }

            ngx_shmtx_unlock(&kz->shpool->mutex);

            used = v->used;
            spent = v->spent;
            left = v->left;

            switch (v->done) {

            case NGX_SMARTFLOW_VERDICT_RPM:
                vkey->retry_after = (vkey->reset + 999) / 1000;

                return ngx_http_smartflow_error(r,
                           NGX_HTTP_TOO_MANY_REQUESTS, "requests",
                           "rate_limit_exceeded", NULL,
                           "Rate limit reached for virtual key %V on "
                           "requests per min (RPM): Limit %uL, Used %uL, "
                           "Requested 1. Please try again in %Ts.",
                           &ctx->key_id, vkey->rpm, used,
                           vkey->retry_after);

            case NGX_SMARTFLOW_VERDICT_TPM:
                refused = 1;
                break;

            case NGX_SMARTFLOW_VERDICT_BUDGET:
                refused = 2;
                break;

            default:
                return NGX_DECLINED;
            }

            goto refuse;
        }

        /* Redis is away */
        if (kz->redis->fail_closed) {
            return ngx_http_smartflow_keys_redis_unavailable(r);
        }

        rc = ngx_http_smartflow_keys_local_rpm(r, ctx, kz);
        if (rc != NGX_OK) {
            return rc;
        }
    }

    ngx_shmtx_lock(&kz->shpool->mutex);

    k = ngx_smartflow_keys_by_id(kz->sh, vkey->id);

    if (k == NULL) {
        ngx_shmtx_unlock(&kz->shpool->mutex);
        return NGX_DECLINED;
    }

    ngx_smartflow_keys_roll(k, now, now_ms);

    used = k->window_tokens + k->window_reserved;
    spent = k->spent;
    left = (spent + k->reserved < k->budget)
           ? k->budget - spent - k->reserved : 0;
    period = k->period;

    if (k->tpm != NGX_HTTP_SMARTFLOW_UNLIMITED
        && used + vkey->est_tokens > k->tpm)
    {
        refused = 1;

    } else if (k->budget != NGX_HTTP_SMARTFLOW_UNLIMITED
               && (spent >= k->budget || vkey->est_cost > left))
    {
        refused = 2;

    } else {
        k->window_reserved += vkey->est_tokens;
        k->reserved += vkey->est_cost;

        vkey->window = k->window;
        vkey->period_start = k->period_start;
        vkey->reserved = 1;
    }

    ngx_http_smartflow_keys_window(vkey, k, now_ms);

    ngx_shmtx_unlock(&kz->shpool->mutex);

refuse:

    if (refused == 1) {
        vkey->retry_after = (vkey->reset + 999) / 1000;

        return ngx_http_smartflow_error(r, NGX_HTTP_TOO_MANY_REQUESTS,
                   "tokens", "rate_limit_exceeded", NULL,
                   "Rate limit reached for virtual key %V on tokens per "
                   "min (TPM): Limit %uL, Used %uL, Requested %uL. Please "
                   "try again in %Ts.", &ctx->key_id, vkey->tpm, used,
                   vkey->est_tokens, vkey->retry_after);
    }

    if (refused == 2) {
        if (spent >= vkey->budget) {
            return ngx_http_smartflow_error(r, NGX_HTTP_TOO_MANY_REQUESTS,
                       "insufficient_quota", "insufficient_quota", NULL,
                       "You exceeded your current quota: virtual key %V "
                       "has spent %s USD of its %s USD %V budget.",
                       &ctx->key_id, ngx_http_smartflow_keys_usd(r, spent),
                       ngx_http_smartflow_keys_usd(r, vkey->budget),
                       &ngx_smartflow_periods[period]);
        }

        return ngx_http_smartflow_error(r, NGX_HTTP_TOO_MANY_REQUESTS,
                   "insufficient_quota", "insufficient_quota", NULL,
                   "You exceeded your current quota: virtual key %V has "
                   "%s USD of its %s USD budget left, less than the %s USD "
                   "this request may cost.", &ctx->key_id,
                   ngx_http_smartflow_keys_usd(r, left),
                   ngx_http_smartflow_keys_usd(r, vkey->budget),
                   ngx_http_smartflow_keys_usd(r, vkey->est_cost));
    }

    return NGX_DECLINED;
}


/*
 * Requests per minute counted in the zone, for a node that serves while
 * Redis is away; what it counts goes back to Redis later.
 */
static ngx_int_t
ngx_http_smartflow_keys_local_rpm(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_http_smartflow_keys_zone_t *kz)
{
    uint64_t                    now_ms, used;
    ngx_smartflow_key_t        *k;
    ngx_http_smartflow_vkey_t  *vkey;

    vkey = ctx->vkey;
    now_ms = ngx_smartflow_keys_now_ms();
    used = 0;

    ngx_shmtx_lock(&kz->shpool->mutex);

    k = ngx_smartflow_keys_by_id(kz->sh, vkey->id);

    if (k) {
        ngx_smartflow_keys_roll(k, ngx_time(), now_ms);

        used = k->window_requests;

        if (k->rpm == NGX_HTTP_SMARTFLOW_UNLIMITED || used < k->rpm) {
            k->window_requests++;
            k->period_requests++;
            k->requests++;
            k->off_requests++;
            kz->sh->redis_owed = 1;
            kz->sh->version++;
        }

        ngx_http_smartflow_keys_window(vkey, k, now_ms);
    }

    ngx_shmtx_unlock(&kz->shpool->mutex);

    if (vkey->rpm != NGX_HTTP_SMARTFLOW_UNLIMITED && used >= vkey->rpm) {
        vkey->retry_after = (vkey->reset + 999) / 1000;

        return ngx_http_smartflow_error(r, NGX_HTTP_TOO_MANY_REQUESTS,
                   "requests", "rate_limit_exceeded", NULL,
                   "Rate limit reached for virtual key %V on requests per "
                   "min (RPM): Limit %uL, Used %uL, Requested 1. Please "
                   "try again in %Ts.", &ctx->key_id, vkey->rpm, used,
                   vkey->retry_after);
    }

    return NGX_OK;
}


/* micro-USD, rounded up so that small requests are not free */
static uint64_t
ngx_http_smartflow_keys_cost(ngx_http_smartflow_vkey_t *vkey,
    uint64_t prompt, uint64_t completion)
{
    return (prompt * vkey->price_in + completion * vkey->price_out + 999999)
           / 1000000;
}


/* money for a message: a NUL-terminated "12.5" */
static u_char *
ngx_http_smartflow_keys_usd(ngx_http_request_t *r, uint64_t micro)
{
    u_char               *p;
    ngx_smartflow_out_t   o;

    p = ngx_pnalloc(r->pool, NGX_INT64_LEN + 8);
    if (p == NULL) {
        return (u_char *) "?";
    }

    o.pos = p;
    o.size = 0;
    ngx_smartflow_out_money(&o, micro);
    *o.pos = '\0';

    return p;
}


/*
 * LOG phase: the reservation gives way to what the provider reported.
 * Without a usage report (a plain response whose body nobody read) the
 * request costs nothing rather than an estimate, except a stream the
 * provider had started to answer: one cut short (the client gone, the
 * provider broken or capped) before its usage event, or from a provider
 * that reports none.  The provider bills what it generated, so the key
 * pays an estimate (the prompt as reserved, a token per 4 bytes of the
 * stream, no more than max_tokens); else closing each stream before its
 * usage would make every answer free.
 */
static ngx_int_t
ngx_http_smartflow_keys_log_handler(ngx_http_request_t *r)
{
    uint64_t                         prompt, completion, cost;
    ngx_smartflow_key_t             *k;
    ngx_http_smartflow_ctx_t        *ctx;
    ngx_http_smartflow_vkey_t       *vkey;
    ngx_http_smartflow_keys_zone_t  *kz;
    ngx_http_smartflow_main_conf_t  *smcf;

    ctx = ngx_http_smartflow_get_ctx(r);

    if (ctx == NULL || ctx->vkey == NULL || !ctx->vkey->reserved
        || ctx->vkey->settled)
    {
        return NGX_OK;
    }

    vkey = ctx->vkey;
    vkey->settled = 1;

    prompt = ctx->prompt_tokens;
    completion = ctx->completion_tokens;

    if (prompt + completion == 0 && ctx->stream && ctx->stream_bytes > 0) {
        prompt = vkey->est_prompt;
        completion = ((uint64_t) ctx->stream_bytes + 3) / 4;

        if (vkey->est_tokens > prompt) {
            /* max_tokens, as reserved */
            completion = ngx_min(completion, vkey->est_tokens - prompt);
        }

        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "smartflow keys: a stream without a usage report, "
                      "virtual key vk_%ui pays an estimate of %uL prompt "
                      "and %uL completion tokens", vkey->id, prompt,
                      completion);
    }

    cost = ngx_http_smartflow_keys_cost(vkey, prompt, completion);

    if (prompt + completion == 0) {
        cost = 0;
    }

    smcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_proxy_module);
    kz = smcf->keys;

    if (kz->redis
        && ngx_http_smartflow_keys_redis_settle(r, ctx, prompt, completion,
                                                cost)
           == NGX_OK)
    {
        return NGX_OK;
    }

    ngx_shmtx_lock(&kz->shpool->mutex);

    k = ngx_smartflow_keys_by_id(kz->sh, vkey->id);

    if (k) {
        ngx_smartflow_keys_roll(k, ngx_time(), ngx_smartflow_keys_now_ms());

        if (kz->redis) {
            /* given to Redis by the next poll that reaches it */
            k->off_prompt += prompt;
            k->off_completion += completion;
            k->off_spend += cost;
            kz->sh->redis_owed = 1;
        }

        /* a reservation made in an earlier window or period is gone */
        if (k->window == vkey->window) {
            k->window_reserved -= ngx_min(k->window_reserved,
                                          vkey->est_tokens);
        }

        if (k->period_start == vkey->period_start) {
            k->reserved -= ngx_min(k->reserved, vkey->est_cost);
        }

        k->window_tokens += prompt + completion;
        k->spent += cost;
        k->period_prompt += prompt;
        k->period_completion += completion;
        k->prompt_tokens += prompt;
        k->completion_tokens += completion;
        k->spend += cost;
        kz->sh->version++;
    }

    ngx_shmtx_unlock(&kz->shpool->mutex);

    ngx_log_debug5(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "smartflow proxy key vk_%ui settled: %uL+%uL tokens, "
                   "%uL micro-USD (reserved %uL)", vkey->id, prompt,
                   completion, cost, vkey->est_cost);

    return NGX_OK;
}


/*
 * OpenAI's x-ratelimit-* headers for a key with limits, on every response:
 * the provider's own (about the gateway's provider account) give way.
 */
static ngx_int_t
ngx_http_smartflow_keys_header_filter(ngx_http_request_t *r)
{
    u_char                         *p;
    uint64_t                        reset;
    ngx_uint_t                      i;
    ngx_list_part_t                *part;
    ngx_table_elt_t                *h;
    ngx_http_smartflow_ctx_t       *ctx;
    ngx_http_smartflow_vkey_t      *vkey;
    ngx_http_smartflow_loc_conf_t  *slcf;

    slcf = ngx_http_get_module_loc_conf(r, ngx_http_smartflow_proxy_module);

    if (r != r->main || slcf->api == NGX_HTTP_SMARTFLOW_API_NONE) {
        return ngx_http_next_header_filter(r);
    }

    ctx = ngx_http_smartflow_get_ctx(r);

    if (ctx == NULL || ctx->vkey == NULL) {
        return ngx_http_next_header_filter(r);
    }

    vkey = ctx->vkey;

    if (vkey->rpm == NGX_HTTP_SMARTFLOW_UNLIMITED
        && vkey->tpm == NGX_HTTP_SMARTFLOW_UNLIMITED
        && vkey->retry_after == 0)
    {
        return ngx_http_next_header_filter(r);
    }

    part = &r->headers_out.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len > sizeof("x-ratelimit-") - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) "x-ratelimit-",
                               sizeof("x-ratelimit-") - 1) == 0)
        {
            h[i].hash = 0;
        }
    }

    p = ngx_pnalloc(r->pool, 7 * (NGX_INT64_LEN + 2));
    if (p == NULL) {
        return NGX_ERROR;
    }

    reset = (vkey->reset + 999) / 1000;

    if (vkey->rpm != NGX_HTTP_SMARTFLOW_UNLIMITED
        && (ngx_sf_keys_header(r, "x-ratelimit-limit-requests", &p,
                               vkey->rpm, 0) != NGX_OK
            || ngx_sf_keys_header(r, "x-ratelimit-remaining-requests", &p,
                                  vkey->requests_left, 0) != NGX_OK
            || ngx_sf_keys_header(r, "x-ratelimit-reset-requests", &p,
                                  reset, 1) != NGX_OK))
    {
        return NGX_ERROR;
    }

    if (vkey->tpm != NGX_HTTP_SMARTFLOW_UNLIMITED
        && (ngx_sf_keys_header(r, "x-ratelimit-limit-tokens", &p,
                               vkey->tpm, 0) != NGX_OK
            || ngx_sf_keys_header(r, "x-ratelimit-remaining-tokens", &p,
                                  vkey->tokens_left, 0) != NGX_OK
            || ngx_sf_keys_header(r, "x-ratelimit-reset-tokens", &p,
                                  reset, 1) != NGX_OK))
    {
        return NGX_ERROR;
    }

    if (vkey->retry_after
        && r->headers_out.status == NGX_HTTP_TOO_MANY_REQUESTS
        && ngx_sf_keys_header(r, "Retry-After", &p,
                              (uint64_t) vkey->retry_after, 0) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_next_header_filter(r);
}


/* a header of a number (and "s" for seconds) written at *p */
static ngx_int_t
ngx_http_smartflow_keys_add_header(ngx_http_request_t *r, u_char *key,
    size_t len, u_char **p, uint64_t n, ngx_uint_t seconds)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key.data = key;
    h->key.len = len;
    h->value.data = *p;

    *p = ngx_http_smartflow_keys_uint(*p, n);

    if (seconds) {
        *(*p)++ = 's';
    }

    h->value.len = *p - h->value.data;

    return NGX_OK;
}


/* a number in decimal: ngx_sprintf() parses its format every time */
static u_char *
ngx_http_smartflow_keys_uint(u_char *p, uint64_t n)
{
    u_char  *d;
    u_char   buf[NGX_INT64_LEN];

    d = buf + sizeof(buf);

    do {
        *--d = (u_char) ('0' + n % 10);
        n /= 10;
    } while (n);

    return ngx_cpymem(p, d, buf + sizeof(buf) - d);
}


ngx_int_t
ngx_http_smartflow_keys_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_smartflow_keys_header_filter;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_smartflow_keys_log_handler;

    return ngx_http_smartflow_register_stage(cf,
                                             NGX_HTTP_SMARTFLOW_STAGE_KEYS,
                                             ngx_http_smartflow_keys_stage);
}
