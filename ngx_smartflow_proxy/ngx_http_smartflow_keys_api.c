/*
 * The admin API of the virtual keys (smartflow_api admin_keys), answered
 * under the location's prefix (/api/auth/virtual-keys and
 * /api/enterprise/vkeys in the shipped snippet):
 *
 *   POST   PREFIX               create; the secret is in this answer only
 *   GET    PREFIX               list (?limit=, ?after=ID, ?team=)
 *   GET    PREFIX/ID            read
 *   PATCH  PREFIX/ID            change
 *   DELETE PREFIX/ID            revoke
 *   POST   PREFIX/ID/rotate     a new secret (optional grace_seconds)
 *   GET    PREFIX/ID/usage      requests, tokens, spend, rate window
 *
 * The ACCESS handler lets the master key in only, and the handler checks
 * it again.  Bodies are read without blocking and checked field by field;
 * refusals are OpenAI-format errors through the error location, as
 * everywhere else.
 */

#include <openssl/rand.h>

#include "ngx_http_smartflow_keys.h"
#include "ngx_smartflow_redis.h"


typedef enum {
    NGX_HTTP_SMARTFLOW_KEYS_LIST = 0,
    NGX_HTTP_SMARTFLOW_KEYS_ONE,
    NGX_HTTP_SMARTFLOW_KEYS_ROTATE,
    NGX_HTTP_SMARTFLOW_KEYS_USAGE
} ngx_http_smartflow_keys_target_e;


typedef enum {
    NGX_SF_FIELD_NAME = 0,
    NGX_SF_FIELD_STR,
    NGX_SF_FIELD_MODELS,
    NGX_SF_FIELD_COUNT,
    NGX_SF_FIELD_MONEY,
    NGX_SF_FIELD_PERIOD,
    NGX_SF_FIELD_TIME,
    NGX_SF_FIELD_OBJECT,
    NGX_SF_FIELD_FRACTION
} ngx_http_smartflow_keys_kind_e;


typedef struct {
    char        *name;
    ngx_uint_t   bit;
    ngx_uint_t   kind;
    size_t       offset;
} ngx_http_smartflow_keys_field_t;


static ngx_int_t ngx_http_smartflow_keys_target(ngx_http_request_t *r,
    ngx_uint_t *target, ngx_uint_t *id);
static ngx_int_t ngx_http_smartflow_keys_id(ngx_str_t *s, ngx_uint_t *id);
static void ngx_http_smartflow_keys_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_smartflow_keys_run(ngx_http_request_t *r);
static ngx_int_t ngx_http_smartflow_keys_parse(ngx_http_request_t *r,
    ngx_smartflow_json_t **json);
static ngx_int_t ngx_http_smartflow_keys_spec(ngx_http_request_t *r,
    ngx_smartflow_json_t *json, ngx_smartflow_key_spec_t *spec);
static ngx_int_t ngx_http_smartflow_keys_field(ngx_http_request_t *r,
    ngx_http_smartflow_keys_field_t *f, ngx_smartflow_json_t *j,
    ngx_smartflow_key_spec_t *spec);
static ngx_int_t ngx_http_smartflow_keys_bad(ngx_http_request_t *r,
    char *code, ngx_str_t *param, const char *fmt, ngx_str_t *arg);
static void ngx_http_smartflow_keys_apply(ngx_smartflow_key_t *k,
    ngx_smartflow_key_spec_t *spec, time_t now);
static ngx_int_t ngx_http_smartflow_keys_secret(ngx_http_request_t *r,
    ngx_str_t *secret, u_char *digest);
static ngx_int_t ngx_http_smartflow_keys_create(ngx_http_request_t *r,
    ngx_http_smartflow_keys_zone_t *kz);
static ngx_int_t ngx_http_smartflow_keys_list(ngx_http_request_t *r,
    ngx_http_smartflow_keys_zone_t *kz);
static ngx_int_t ngx_http_smartflow_keys_one(ngx_http_request_t *r,
    ngx_http_smartflow_keys_zone_t *kz, ngx_uint_t target, ngx_uint_t id);
static ngx_int_t ngx_http_smartflow_keys_change(ngx_http_request_t *r,
    ngx_http_smartflow_keys_zone_t *kz, ngx_uint_t target, ngx_uint_t id);
static void ngx_http_smartflow_keys_json(ngx_smartflow_out_t *o,
    ngx_smartflow_key_t *k, ngx_str_t *secret, time_t now);
static void ngx_http_smartflow_keys_usage(ngx_smartflow_out_t *o,
    ngx_smartflow_key_t *k, uint64_t now_ms);
static ngx_int_t ngx_http_smartflow_keys_not_found(ngx_http_request_t *r,
    ngx_uint_t id);
static ngx_int_t ngx_http_smartflow_keys_unavailable(ngx_http_request_t *r,
    ngx_http_smartflow_keys_zone_t *kz);


#define ngx_sf_spec_off(field)  offsetof(ngx_smartflow_key_spec_t, field)

/* the most of a client's field name an error echoes */
#define NGX_HTTP_SMARTFLOW_KEYS_MAX_PARAM  64

static ngx_http_smartflow_keys_field_t  ngx_http_smartflow_keys_fields[] = {
    { "name", NGX_SMARTFLOW_KEY_NAME, NGX_SF_FIELD_NAME,
      ngx_sf_spec_off(name) },
    { "team", NGX_SMARTFLOW_KEY_TEAM, NGX_SF_FIELD_STR,
      ngx_sf_spec_off(team) },
    { "user", NGX_SMARTFLOW_KEY_USER, NGX_SF_FIELD_STR,
      ngx_sf_spec_off(user) },
    { "models", NGX_SMARTFLOW_KEY_MODELS, NGX_SF_FIELD_MODELS, 0 },
    { "rpm", NGX_SMARTFLOW_KEY_RPM, NGX_SF_FIELD_COUNT,
      ngx_sf_spec_off(rpm) },
    { "tpm", NGX_SMARTFLOW_KEY_TPM, NGX_SF_FIELD_COUNT,
      ngx_sf_spec_off(tpm) },
    { "budget_usd", NGX_SMARTFLOW_KEY_BUDGET, NGX_SF_FIELD_MONEY,
      ngx_sf_spec_off(budget) },
    { "budget_period", NGX_SMARTFLOW_KEY_PERIOD, NGX_SF_FIELD_PERIOD, 0 },
    { "expires_at", NGX_SMARTFLOW_KEY_EXPIRES, NGX_SF_FIELD_TIME, 0 },
    { "policy_group", NGX_SMARTFLOW_KEY_POLICY, NGX_SF_FIELD_STR,
      ngx_sf_spec_off(policy_group) },
    { "metadata", NGX_SMARTFLOW_KEY_METADATA, NGX_SF_FIELD_OBJECT, 0 },
    { "cache_threshold", NGX_SMARTFLOW_KEY_CACHE, NGX_SF_FIELD_FRACTION, 0 },
    { NULL, 0, 0, 0 }
};


ngx_int_t
ngx_http_smartflow_keys_api_handler(ngx_http_request_t *r)
{
    ngx_int_t                        rc;
    ngx_uint_t                       target, id;
    ngx_http_smartflow_ctx_t        *ctx;
    ngx_http_smartflow_main_conf_t  *smcf;

    /*
     * the ACCESS handler's word is checked again here: "satisfy any", or
     * a subrequest, skips the access phase
     */
    ctx = ngx_http_smartflow_get_ctx(r);

    if (ctx == NULL || !ctx->master) {
        return ngx_http_smartflow_error(r, NGX_HTTP_FORBIDDEN,
                   "permission_error", "master_key_required", NULL,
                   "The admin API takes the master key only.");
    }

    smcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_proxy_module);

    if (smcf->keys == NULL) {
        return ngx_http_smartflow_error(r, NGX_HTTP_NOT_FOUND,
                   "invalid_request_error", "keys_disabled", NULL,
                   "Virtual keys are not enabled on this gateway: no "
                   "smartflow_keys_zone is configured.");
    }

    rc = ngx_http_smartflow_keys_target(r, &target, &id);
    if (rc != NGX_OK) {
        return rc;
    }

    if (!(r->method & (NGX_HTTP_POST|NGX_HTTP_PATCH))) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_smartflow_keys_run(r);
    }

    r->request_body_in_single_buf = 1;

    rc = ngx_http_read_client_request_body(r, ngx_http_smartflow_keys_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


/* what the path after the location's prefix names; checks the method */
static ngx_int_t
ngx_http_smartflow_keys_target(ngx_http_request_t *r, ngx_uint_t *target,
    ngx_uint_t *id)
{
    u_char                    *p, *last, *slash;
    ngx_str_t                  seg;
    ngx_uint_t                 allowed;
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    p = r->uri.data + ngx_min(clcf->name.len, r->uri.len);
    last = r->uri.data + r->uri.len;

    while (last > p && last[-1] == '/') {
        last--;
    }

    *id = 0;

    if (p == last) {
        *target = NGX_HTTP_SMARTFLOW_KEYS_LIST;
        allowed = NGX_HTTP_GET|NGX_HTTP_HEAD|NGX_HTTP_POST;
        goto method;
    }

    if (clcf->name.len == 0 || clcf->name.data[clcf->name.len - 1] != '/') {
        /* "PREFIX/ID", not "PREFIXID" */
        if (*p != '/') {
            goto unknown;
        }

        p++;
    }

    slash = ngx_strlchr(p, last, '/');

    seg.data = p;
    seg.len = (slash ? slash : last) - p;

    if (ngx_http_smartflow_keys_id(&seg, id) != NGX_OK) {
        return ngx_http_smartflow_keys_bad(r, "invalid_key_id", NULL,
                   "\"%V\" is not a key id; ids look like \"vk_12\".",
                   &seg);
    }

    if (slash == NULL) {
        *target = NGX_HTTP_SMARTFLOW_KEYS_ONE;
        allowed = NGX_HTTP_GET|NGX_HTTP_HEAD|NGX_HTTP_PATCH|NGX_HTTP_DELETE;
        goto method;
    }

    seg.data = slash + 1;
    seg.len = last - seg.data;

    if (seg.len == 6 && ngx_strncmp(seg.data, "rotate", 6) == 0) {
        *target = NGX_HTTP_SMARTFLOW_KEYS_ROTATE;
        allowed = NGX_HTTP_POST;
        goto method;
    }

    if (seg.len == 5 && ngx_strncmp(seg.data, "usage", 5) == 0) {
        *target = NGX_HTTP_SMARTFLOW_KEYS_USAGE;
        allowed = NGX_HTTP_GET|NGX_HTTP_HEAD;
        goto method;
    }

unknown:

    return ngx_http_smartflow_error(r, NGX_HTTP_NOT_FOUND,
               "invalid_request_error", "not_found", NULL,
               "Unknown admin path %V.", &r->uri);

method:

    if (r->method & allowed) {
        return NGX_OK;
    }

    return ngx_http_smartflow_error(r, NGX_HTTP_NOT_ALLOWED,
               "invalid_request_error", "method_not_allowed", NULL,
               "Method %V is not allowed on %V.", &r->method_name, &r->uri);
}


static ngx_int_t
ngx_http_smartflow_keys_id(ngx_str_t *s, ngx_uint_t *id)
{
    ngx_int_t  n;

    if (s->len < 4 || s->len > 3 + 15
        || ngx_strncmp(s->data, "vk_", 3) != 0)
    {
        return NGX_ERROR;
    }

    n = ngx_atoi(s->data + 3, s->len - 3);

    if (n <= 0) {
        return NGX_ERROR;
    }

    *id = n;

    return NGX_OK;
}


static void
ngx_http_smartflow_keys_body(ngx_http_request_t *r)
{
    ngx_http_finalize_request(r, ngx_http_smartflow_keys_run(r));
}


/* once Redis has answered a step of a change */
ngx_int_t
ngx_http_smartflow_keys_api_rerun(ngx_http_request_t *r)
{
    return ngx_http_smartflow_keys_run(r);
}


static ngx_int_t
ngx_http_smartflow_keys_run(ngx_http_request_t *r)
{
    ngx_int_t                        rc;
    ngx_uint_t                       target, id;
    ngx_http_smartflow_main_conf_t  *smcf;

    smcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_proxy_module);

    rc = ngx_http_smartflow_keys_target(r, &target, &id);
    if (rc != NGX_OK) {
        return rc;
    }

    switch (target) {

    case NGX_HTTP_SMARTFLOW_KEYS_LIST:
        if (r->method == NGX_HTTP_POST) {
            return ngx_http_smartflow_keys_create(r, smcf->keys);
        }

        return ngx_http_smartflow_keys_list(r, smcf->keys);

    case NGX_HTTP_SMARTFLOW_KEYS_ONE:
        if (r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD)) {
            return ngx_http_smartflow_keys_one(r, smcf->keys, target, id);
        }

        return ngx_http_smartflow_keys_change(r, smcf->keys, target, id);

    case NGX_HTTP_SMARTFLOW_KEYS_ROTATE:
        return ngx_http_smartflow_keys_change(r, smcf->keys, target, id);

    default: /* usage */
        return ngx_http_smartflow_keys_one(r, smcf->keys, target, id);
    }
}


/* the body as a JSON object; *json stays NULL for an empty body */
static ngx_int_t
ngx_http_smartflow_keys_parse(ngx_http_request_t *r,
    ngx_smartflow_json_t **json)
{
    ngx_int_t                  rc;
    ngx_str_t                  err;
    ngx_smartflow_json_t      *j;
    ngx_http_smartflow_ctx_t  *ctx;

    *json = NULL;

    ctx = ngx_http_smartflow_create_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_smartflow_read_body(r, ctx);
    if (rc != NGX_OK) {
        return rc;
    }

    if (ctx->body.len == 0) {
        return NGX_OK;
    }

    j = ngx_smartflow_json_parse(r->pool, ctx->body.data, ctx->body.len,
                                 &err);
    if (j == NULL) {
        return ngx_http_smartflow_error(r, NGX_HTTP_BAD_REQUEST,
                   "invalid_request_error", "invalid_json", NULL,
                   "We could not parse the JSON body of your request: %V.",
                   &err);
    }

    if (j->type != NGX_SMARTFLOW_JSON_OBJECT) {
        return ngx_http_smartflow_error(r, NGX_HTTP_BAD_REQUEST,
                   "invalid_request_error", "invalid_json", NULL,
                   "The request body must be a JSON object.");
    }

    *json = j;

    return NGX_OK;
}


static ngx_int_t
ngx_http_smartflow_keys_spec(ngx_http_request_t *r,
    ngx_smartflow_json_t *json, ngx_smartflow_key_spec_t *spec)
{
    ngx_int_t                         rc;
    ngx_smartflow_json_t             *c;
    ngx_http_smartflow_keys_field_t  *f;

    ngx_memzero(spec, sizeof(ngx_smartflow_key_spec_t));

    for (c = json->child; c; c = c->next) {

        for (f = ngx_http_smartflow_keys_fields; f->name; f++) {
            if (c->key.len == ngx_strlen(f->name)
                && ngx_strncmp(c->key.data, f->name, c->key.len) == 0)
            {
                break;
            }
        }

        if (f->name == NULL) {
            return ngx_http_smartflow_keys_bad(r, "unknown_parameter",
                       &c->key, "Unknown parameter: '%V'.", &c->key);
        }

        rc = ngx_http_smartflow_keys_field(r, f, c, spec);
        if (rc != NGX_OK) {
            return rc;
        }

        spec->set |= f->bit;
    }

    return NGX_OK;
}


/* one field of a create or a change, checked and stored in the spec */
static ngx_int_t
ngx_http_smartflow_keys_field(ngx_http_request_t *r,
    ngx_http_smartflow_keys_field_t *f, ngx_smartflow_json_t *j,
    ngx_smartflow_key_spec_t *spec)
{
    time_t                t;
    uint64_t              n, *num;
    ngx_int_t             rc;
    ngx_str_t            *str, name;
    ngx_uint_t            i;
    ngx_smartflow_json_t *m;

    name.data = (u_char *) f->name;
    name.len = ngx_strlen(f->name);

    str = (ngx_str_t *) ((u_char *) spec + f->offset);
    num = (uint64_t *) ((u_char *) spec + f->offset);

    if (j->type == NGX_SMARTFLOW_JSON_NULL && f->kind != NGX_SF_FIELD_NAME
        && f->kind != NGX_SF_FIELD_PERIOD)
    {
        /* null clears the field: no limit, no expiry, no team ... */
        switch (f->kind) {

        case NGX_SF_FIELD_COUNT:
        case NGX_SF_FIELD_MONEY:
            *num = NGX_HTTP_SMARTFLOW_UNLIMITED;
            break;

        case NGX_SF_FIELD_STR:
            ngx_str_null(str);
            break;

        case NGX_SF_FIELD_OBJECT:
            ngx_str_null(&spec->metadata);
            break;

        case NGX_SF_FIELD_MODELS:
            spec->nmodels = 0;
            break;

        case NGX_SF_FIELD_FRACTION:
            spec->cache_threshold = 0;
            break;

        default: /* NGX_SF_FIELD_TIME */
            spec->expires = 0;
            break;
        }

        return NGX_OK;
    }

    switch (f->kind) {

    case NGX_SF_FIELD_NAME:
    case NGX_SF_FIELD_STR:
        if (j->type != NGX_SMARTFLOW_JSON_STRING) {
            return ngx_http_smartflow_keys_bad(r, "invalid_type", &name,
                       f->kind == NGX_SF_FIELD_NAME
                       ? "'%V' must be a string."
                       : "'%V' must be a string or null.", &name);
        }

        if (j->str.len > NGX_SMARTFLOW_KEY_MAX_STR
            || (f->kind == NGX_SF_FIELD_NAME && j->str.len == 0))
        {
            return ngx_http_smartflow_keys_bad(r, "invalid_value", &name,
                       "'%V' must be 1 to 128 bytes long.", &name);
        }

        /* an empty team, user or group is none */
        *str = j->str;
        return NGX_OK;

    case NGX_SF_FIELD_MODELS:
        if (j->type != NGX_SMARTFLOW_JSON_ARRAY) {
            return ngx_http_smartflow_keys_bad(r, "invalid_type", &name,
                       "'%V' must be an array of model names or "
                       "patterns.", &name);
        }

        if (j->nchild > NGX_SMARTFLOW_KEY_MAX_MODELS) {
            return ngx_http_smartflow_keys_bad(r, "invalid_value", &name,
                       "'%V' may list at most 64 models.", &name);
        }

        spec->models = ngx_palloc(r->pool,
                                  (j->nchild + 1) * sizeof(ngx_str_t));
        if (spec->models == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        spec->nmodels = 0;

        for (m = j->child; m; m = m->next) {
            if (m->type != NGX_SMARTFLOW_JSON_STRING || m->str.len == 0
                || m->str.len > NGX_SMARTFLOW_KEY_MAX_STR)
            {
                return ngx_http_smartflow_keys_bad(r, "invalid_type", &name,
                           "'%V' must be an array of model names or "
                           "patterns (1 to 128 bytes each).", &name);
            }

            spec->models[spec->nmodels++] = m->str;
        }

        return NGX_OK;

    case NGX_SF_FIELD_COUNT:
    case NGX_SF_FIELD_MONEY:
        if (j->type != NGX_SMARTFLOW_JSON_NUMBER) {
            return ngx_http_smartflow_keys_bad(r, "invalid_type", &name,
                       "'%V' must be a number or null.", &name);
        }

        rc = (f->kind == NGX_SF_FIELD_COUNT)
             ? ngx_smartflow_parse_uint(j->str.data, j->str.len, num)
             : ngx_smartflow_parse_money(j->str.data, j->str.len, num);

        if (rc == NGX_DECLINED) {
            return ngx_http_smartflow_keys_bad(r, "invalid_value", &name,
                       "'%V' must not be negative.", &name);
        }

        if (rc != NGX_OK) {
            return ngx_http_smartflow_keys_bad(r, "invalid_value", &name,
                       f->kind == NGX_SF_FIELD_COUNT
                       ? "'%V' must be a whole number."
                       : "'%V' must be a plain decimal number of US "
                         "dollars with at most 6 decimals.", &name);
        }

        return NGX_OK;

    case NGX_SF_FIELD_PERIOD:
        if (j->type == NGX_SMARTFLOW_JSON_STRING) {
            for (i = 0; ngx_smartflow_periods[i].len; i++) {
                if (j->str.len == ngx_smartflow_periods[i].len
                    && ngx_strncmp(j->str.data,
                                   ngx_smartflow_periods[i].data,
                                   j->str.len) == 0)
                {
                    spec->period = i;
                    return NGX_OK;
                }
            }
        }

        return ngx_http_smartflow_keys_bad(r, "invalid_value", &name,
                   "'%V' must be \"daily\", \"monthly\" or \"total\".",
                   &name);

    case NGX_SF_FIELD_TIME:
        if (j->type == NGX_SMARTFLOW_JSON_NUMBER) {
            rc = ngx_smartflow_parse_uint(j->str.data, j->str.len, &n);

            if (rc == NGX_OK && n < 100000000000ULL) {
                spec->expires = (time_t) n;
                return NGX_OK;
            }

        } else if (j->type == NGX_SMARTFLOW_JSON_STRING) {
            t = ngx_smartflow_parse_rfc3339(j->str.data, j->str.len);

            if (t != -1) {
                spec->expires = t;
                return NGX_OK;
            }
        }

        return ngx_http_smartflow_keys_bad(r, "invalid_value", &name,
                   "'%V' must be unix seconds or an RFC 3339 time such as "
                   "\"2030-01-31T12:00:00Z\".", &name);

    case NGX_SF_FIELD_FRACTION:
        /* the cache's phase 4 similarity: as smartflow_cache_similarity */
        if (j->type != NGX_SMARTFLOW_JSON_NUMBER) {
            return ngx_http_smartflow_keys_bad(r, "invalid_type", &name,
                       "'%V' must be a number or null.", &name);
        }

        rc = ngx_atofp(j->str.data, j->str.len, 3);

        if (rc == NGX_ERROR || rc < 1 || rc > 1000) {
            return ngx_http_smartflow_keys_bad(r, "invalid_value", &name,
                       "'%V' must be a similarity above 0 and at most 1, "
                       "with at most 3 decimals (0.85).", &name);
        }

        spec->cache_threshold = (ngx_uint_t) rc;
        return NGX_OK;

    default: /* NGX_SF_FIELD_OBJECT */
        if (j->type != NGX_SMARTFLOW_JSON_OBJECT) {
            return ngx_http_smartflow_keys_bad(r, "invalid_type", &name,
                       "'%V' must be an object or null.", &name);
        }

        if (ngx_smartflow_json_dump(r->pool, j, &spec->metadata) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (spec->metadata.len > NGX_SMARTFLOW_KEY_MAX_META) {
            return ngx_http_smartflow_keys_bad(r, "invalid_value", &name,
                       "'%V' may take at most 4096 bytes as JSON.", &name);
        }

        return NGX_OK;
    }
}


/* a 400 naming a field (param) that came from the request */
static ngx_int_t
ngx_http_smartflow_keys_bad(ngx_http_request_t *r, char *code,
    ngx_str_t *param, const char *fmt, ngx_str_t *arg)
{
    u_char     *p;
    ngx_str_t   cut;

    p = NULL;

    if (param) {
        /*
         * a client's field name is echoed only in part, cut where a
         * UTF-8 character begins
         */
        cut = *param;

        if (cut.len > NGX_HTTP_SMARTFLOW_KEYS_MAX_PARAM) {
            cut.len = NGX_HTTP_SMARTFLOW_KEYS_MAX_PARAM;

            while (cut.len && (cut.data[cut.len] & 0xc0) == 0x80) {
                cut.len--;
            }
        }

        if (arg == param) {
            arg = &cut;
        }

        /* the error record keeps a C string */
        p = ngx_pnalloc(r->pool, cut.len + 1);
        if (p == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_memcpy(p, cut.data, cut.len);
        p[cut.len] = '\0';
    }

    return ngx_http_smartflow_error(r, NGX_HTTP_BAD_REQUEST,
                                    "invalid_request_error", code,
                                    (char *) p, fmt, arg);
}


/* the limits of a spec; called with the zone locked */
static void
ngx_http_smartflow_keys_apply(ngx_smartflow_key_t *k,
    ngx_smartflow_key_spec_t *spec, time_t now)
{
    if (spec->set & NGX_SMARTFLOW_KEY_RPM) {
        k->rpm = spec->rpm;
    }

    if (spec->set & NGX_SMARTFLOW_KEY_TPM) {
        k->tpm = spec->tpm;
    }

    if (spec->set & NGX_SMARTFLOW_KEY_BUDGET) {
        k->budget = spec->budget;
    }

    if (spec->set & NGX_SMARTFLOW_KEY_EXPIRES) {
        k->expires = spec->expires;
    }

    if (spec->set & NGX_SMARTFLOW_KEY_CACHE) {
        k->cache_threshold = spec->cache_threshold;
    }

    if ((spec->set & NGX_SMARTFLOW_KEY_PERIOD) && spec->period != k->period)
    {
        /* another period starts now: the spend so far is not carried */
        k->period = spec->period;
        k->period_start = ngx_smartflow_keys_period_start(k->period, now);
        k->spent = 0;
        k->reserved = 0;
        k->period_requests = 0;
        k->period_prompt = 0;
        k->period_completion = 0;
    }
}


/* "sk-sf-" and 48 random hex digits, and its digest */
static ngx_int_t
ngx_http_smartflow_keys_secret(ngx_http_request_t *r, ngx_str_t *secret,
    u_char *digest)
{
    u_char  *p;
    u_char   random[NGX_SMARTFLOW_KEY_RANDOM];

    if (RAND_bytes(random, sizeof(random)) != 1) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "smartflow proxy: RAND_bytes() failed");
        return NGX_ERROR;
    }

    secret->len = NGX_SMARTFLOW_KEY_LEN;
    secret->data = ngx_pnalloc(r->pool, NGX_SMARTFLOW_KEY_LEN);
    if (secret->data == NULL
        || ngx_http_smartflow_wipe_later(r->pool, secret->data,
                                         NGX_SMARTFLOW_KEY_LEN)
           != NGX_OK)
    {
        ngx_explicit_memzero(random, sizeof(random));
        return NGX_ERROR;
    }

    p = ngx_cpymem(secret->data, NGX_SMARTFLOW_KEY_PREFIX,
                   NGX_SMARTFLOW_KEY_PREFIX_LEN);
    (void) ngx_hex_dump(p, random, sizeof(random));

    ngx_explicit_memzero(random, sizeof(random));

    return ngx_smartflow_sha256(secret->data, secret->len, digest);
}


static ngx_int_t
ngx_http_smartflow_keys_create(ngx_http_request_t *r,
    ngx_http_smartflow_keys_zone_t *kz)
{
    time_t                     now;
    ngx_int_t                  rc;
    ngx_str_t                  secret, json;
    ngx_uint_t                 id;
    ngx_smartflow_out_t        o;
    ngx_smartflow_key_t       *k;
    ngx_smartflow_json_t      *body;
    ngx_smartflow_key_spec_t   spec;
    u_char                     digest[32];

    rc = ngx_http_smartflow_keys_parse(r, &body);
    if (rc != NGX_OK) {
        return rc;
    }

    if (body == NULL) {
        return ngx_http_smartflow_error(r, NGX_HTTP_BAD_REQUEST,
                   "invalid_request_error", "invalid_json", NULL,
                   "The request body is empty; a JSON object is expected.");
    }

    rc = ngx_http_smartflow_keys_spec(r, body, &spec);
    if (rc != NGX_OK) {
        return rc;
    }

    if (!(spec.set & NGX_SMARTFLOW_KEY_NAME)) {
        return ngx_http_smartflow_error(r, NGX_HTTP_BAD_REQUEST,
                   "invalid_request_error", "missing_required_parameter",
                   "name", "Missing required parameter: 'name'.");
    }

    /* with Redis, ids are given by Redis: this may wait, and run again */
    rc = ngx_http_smartflow_keys_redis_next_id(r, &id);
    if (rc != NGX_OK) {
        return rc;
    }

    if (ngx_http_smartflow_keys_secret(r, &secret, digest) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    now = ngx_time();

    ngx_shmtx_lock(&kz->shpool->mutex);

    if (id == 0) {
        id = kz->sh->next_id;

    } else if (ngx_smartflow_keys_by_id(kz->sh, id)) {
        ngx_shmtx_unlock(&kz->shpool->mutex);

        return ngx_http_smartflow_error(r, NGX_HTTP_CONFLICT,
                   "invalid_request_error", "duplicate_id", NULL,
                   "The id vk_%ui given by the shared key store is in "
                   "use here; please retry.", id);
    }

    if (ngx_smartflow_keys_by_name(kz->sh, &spec.name)) {
        ngx_shmtx_unlock(&kz->shpool->mutex);

        return ngx_http_smartflow_error(r, NGX_HTTP_CONFLICT,
                   "invalid_request_error", "duplicate_name", "name",
                   "A key named \"%V\" exists already.", &spec.name);
    }

    k = ngx_smartflow_keys_alloc(kz, id);

    if (k == NULL) {
        ngx_shmtx_unlock(&kz->shpool->mutex);
        return ngx_http_smartflow_keys_unavailable(r, kz);
    }

    if (ngx_smartflow_keys_set_strings(kz, k, &spec) != NGX_OK
        || ngx_smartflow_keys_set_secret(kz, k, digest, secret.data, 0)
           != NGX_OK)
    {
        ngx_smartflow_keys_free(kz, k);
        ngx_shmtx_unlock(&kz->shpool->mutex);
        return ngx_http_smartflow_keys_unavailable(r, kz);
    }

    k->created = now;
    ngx_http_smartflow_keys_apply(k, &spec, now);
    ngx_smartflow_keys_roll(k, now, ngx_smartflow_keys_now_ms());

    kz->sh->version++;

    ngx_memzero(&o, sizeof(ngx_smartflow_out_t));
    ngx_http_smartflow_keys_json(&o, k, &secret, now);

    json.data = ngx_pnalloc(r->pool, o.size);

    if (json.data) {
        o.pos = json.data;
        o.size = 0;
        ngx_http_smartflow_keys_json(&o, k, &secret, now);
        json.len = o.size;
    }

    ngx_shmtx_unlock(&kz->shpool->mutex);

    /* the answer is the one place the secret is shown */
    if (json.data == NULL
        || ngx_http_smartflow_wipe_later(r->pool, json.data, json.len)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_log_error(NGX_LOG_NOTICE, r->connection->log, 0,
                  "smartflow proxy: virtual key vk_%ui \"%V\" created",
                  id, &spec.name);

    return ngx_http_smartflow_keys_redis_put(r, kz, id, NGX_HTTP_CREATED,
                                             &json, 1);
}


static ngx_int_t
ngx_http_smartflow_keys_list(ngx_http_request_t *r,
    ngx_http_smartflow_keys_zone_t *kz)
{
    time_t                 now;
    ngx_int_t              limit;
    ngx_str_t              arg, team, json;
    ngx_uint_t             after, n, pass, more;
    ngx_queue_t           *q;
    ngx_smartflow_out_t    o;
    ngx_smartflow_key_t   *k, *first, *last;
    u_char                *dst, *src;

    limit = 20;
    after = 0;
    ngx_str_null(&team);

    if (ngx_http_arg(r, (u_char *) "limit", 5, &arg) == NGX_OK) {
        limit = ngx_atoi(arg.data, arg.len);

        if (limit < 1 || limit > 100) {
            return ngx_http_smartflow_error(r, NGX_HTTP_BAD_REQUEST,
                       "invalid_request_error", "invalid_value", "limit",
                       "'limit' must be a whole number from 1 to 100.");
        }
    }

    if (ngx_http_arg(r, (u_char *) "after", 5, &arg) == NGX_OK
        && ngx_http_smartflow_keys_id(&arg, &after) != NGX_OK)
    {
        return ngx_http_smartflow_error(r, NGX_HTTP_BAD_REQUEST,
                   "invalid_request_error", "invalid_key_id", "after",
                   "'after' must be a key id such as \"vk_12\".");
    }

    if (ngx_http_arg(r, (u_char *) "team", 4, &arg) == NGX_OK && arg.len) {
        team.data = ngx_pnalloc(r->pool, arg.len);
        if (team.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        dst = team.data;
        src = arg.data;
        ngx_unescape_uri(&dst, &src, arg.len, 0);
        team.len = dst - team.data;
    }

    now = ngx_time();
    ngx_memzero(&o, sizeof(ngx_smartflow_out_t));
    ngx_str_null(&json);

    ngx_shmtx_lock(&kz->shpool->mutex);

    /* sized on the first pass, written on the second */
    for (pass = 0; pass < 2; pass++) {

        ngx_sf_out_lit(&o, "{\"object\":\"list\",\"data\":[");

        n = 0;
        more = 0;
        first = NULL;
        last = NULL;

        for (q = ngx_queue_head(&kz->sh->keys);
             q != ngx_queue_sentinel(&kz->sh->keys);
             q = ngx_queue_next(q))
        {
            k = ngx_queue_data(q, ngx_smartflow_key_t, queue);

            if (k->node.key <= after
                || (team.data
                    && (k->team.len != team.len
                        || ngx_strncmp(k->team.data, team.data, team.len)
                           != 0)))
            {
                continue;
            }

            if (n == (ngx_uint_t) limit) {
                more = 1;
                break;
            }

            if (n++) {
                ngx_sf_out_lit(&o, ",");
            }

            ngx_http_smartflow_keys_json(&o, k, NULL, now);

            if (first == NULL) {
                first = k;
            }

            last = k;
        }

        ngx_sf_out_lit(&o, "],\"first_id\":");

        if (first) {
            ngx_sf_out_lit(&o, "\"vk_");
            ngx_smartflow_out_uint(&o, first->node.key);
            ngx_sf_out_lit(&o, "\",\"last_id\":\"vk_");
            ngx_smartflow_out_uint(&o, last->node.key);
            ngx_sf_out_lit(&o, "\"");

        } else {
            ngx_sf_out_lit(&o, "null,\"last_id\":null");
        }

        if (more) {
            ngx_sf_out_lit(&o, ",\"has_more\":true}");

        } else {
            ngx_sf_out_lit(&o, ",\"has_more\":false}");
        }

        if (pass == 0) {
            json.data = ngx_pnalloc(r->pool, o.size);
            if (json.data == NULL) {
                break;
            }

            o.pos = json.data;
            o.size = 0;
        }
    }

    ngx_shmtx_unlock(&kz->shpool->mutex);

    if (json.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json.len = o.size;

    return ngx_http_smartflow_send_json(r, NGX_HTTP_OK, &json);
}


/* GET of one key, or of its usage */
static ngx_int_t
ngx_http_smartflow_keys_one(ngx_http_request_t *r,
    ngx_http_smartflow_keys_zone_t *kz, ngx_uint_t target, ngx_uint_t id)
{
    time_t                now;
    uint64_t              now_ms;
    ngx_int_t             rc;
    ngx_str_t             json;
    ngx_uint_t            pass;
    ngx_smartflow_out_t   o;
    ngx_smartflow_key_t  *k;

    if (target == NGX_HTTP_SMARTFLOW_KEYS_USAGE) {
        /* with Redis, the counters of every node: this may wait */
        rc = ngx_http_smartflow_keys_redis_refresh(r, id);
        if (rc != NGX_OK) {
            return rc;
        }
    }

    now = ngx_time();
    now_ms = ngx_smartflow_keys_now_ms();
    ngx_memzero(&o, sizeof(ngx_smartflow_out_t));
    ngx_str_null(&json);

    ngx_shmtx_lock(&kz->shpool->mutex);

    k = ngx_smartflow_keys_by_id(kz->sh, id);

    if (k == NULL) {
        ngx_shmtx_unlock(&kz->shpool->mutex);
        return ngx_http_smartflow_keys_not_found(r, id);
    }

    if (target == NGX_HTTP_SMARTFLOW_KEYS_USAGE) {
        /* an old window or period reads as the new, empty one */
        ngx_smartflow_keys_roll(k, now, now_ms);
    }

    for (pass = 0; pass < 2; pass++) {

        if (target == NGX_HTTP_SMARTFLOW_KEYS_USAGE) {
            ngx_http_smartflow_keys_usage(&o, k, now_ms);

        } else {
            ngx_http_smartflow_keys_json(&o, k, NULL, now);
        }

        if (pass == 0) {
            json.data = ngx_pnalloc(r->pool, o.size);
            if (json.data == NULL) {
                break;
            }

            o.pos = json.data;
            o.size = 0;
        }
    }

    ngx_shmtx_unlock(&kz->shpool->mutex);

    if (json.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json.len = o.size;

    return ngx_http_smartflow_send_json(r, NGX_HTTP_OK, &json);
}


/* PATCH, DELETE (revoke) and rotate */
static ngx_int_t
ngx_http_smartflow_keys_change(ngx_http_request_t *r,
    ngx_http_smartflow_keys_zone_t *kz, ngx_uint_t target, ngx_uint_t id)
{
    time_t                     now;
    uint64_t                   grace;
    ngx_int_t                  rc;
    ngx_str_t                  secret, json, *shown;
    ngx_uint_t                 pass;
    ngx_smartflow_out_t        o;
    ngx_smartflow_key_t       *k, *other;
    ngx_smartflow_json_t      *body, *c;
    ngx_smartflow_key_spec_t   spec;
    u_char                     digest[32];

    ngx_memzero(&spec, sizeof(ngx_smartflow_key_spec_t));
    ngx_str_null(&secret);
    shown = NULL;
    grace = 0;

    if (kz->redis && !ngx_smartflow_redis_up(kz->redis)) {
        /* a change made here alone would not reach the other nodes */
        return ngx_http_smartflow_keys_redis_unavailable(r);
    }

    if (r->method == NGX_HTTP_PATCH) {
        rc = ngx_http_smartflow_keys_parse(r, &body);
        if (rc != NGX_OK) {
            return rc;
        }

        if (body == NULL) {
            return ngx_http_smartflow_error(r, NGX_HTTP_BAD_REQUEST,
                       "invalid_request_error", "invalid_json", NULL,
                       "The request body is empty; a JSON object is "
                       "expected.");
        }

        rc = ngx_http_smartflow_keys_spec(r, body, &spec);
        if (rc != NGX_OK) {
            return rc;
        }

    } else if (target == NGX_HTTP_SMARTFLOW_KEYS_ROTATE) {
        rc = ngx_http_smartflow_keys_parse(r, &body);
        if (rc != NGX_OK) {
            return rc;
        }

        /* an empty body, or {"grace_seconds": N} */
        for (c = body ? body->child : NULL; c; c = c->next) {
            if (c->key.len != sizeof("grace_seconds") - 1
                || ngx_strncmp(c->key.data, "grace_seconds",
                               sizeof("grace_seconds") - 1) != 0)
            {
                return ngx_http_smartflow_keys_bad(r, "unknown_parameter",
                           &c->key, "Unknown parameter: '%V'.", &c->key);
            }

            if (c->type != NGX_SMARTFLOW_JSON_NUMBER) {
                return ngx_http_smartflow_error(r, NGX_HTTP_BAD_REQUEST,
                           "invalid_request_error", "invalid_type",
                           "grace_seconds",
                           "'grace_seconds' must be a number.");
            }

            rc = ngx_smartflow_parse_uint(c->str.data, c->str.len, &grace);

            if (rc != NGX_OK || grace > NGX_SMARTFLOW_KEY_MAX_GRACE) {
                return ngx_http_smartflow_error(r, NGX_HTTP_BAD_REQUEST,
                           "invalid_request_error", "invalid_value",
                           "grace_seconds",
                           "'grace_seconds' must be a whole number from 0 "
                           "to 2592000 (30 days).");
            }
        }

        if (ngx_http_smartflow_keys_secret(r, &secret, digest) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        shown = &secret;
    }

    now = ngx_time();
    ngx_memzero(&o, sizeof(ngx_smartflow_out_t));
    ngx_str_null(&json);

    ngx_shmtx_lock(&kz->shpool->mutex);

    k = ngx_smartflow_keys_by_id(kz->sh, id);

    if (k == NULL) {
        ngx_shmtx_unlock(&kz->shpool->mutex);
        return ngx_http_smartflow_keys_not_found(r, id);
    }

    if (r->method == NGX_HTTP_DELETE) {
        if (!k->revoked) {
            k->revoked = now;
            ngx_smartflow_keys_drop_previous(kz, k);
            kz->sh->version++;

            ngx_log_error(NGX_LOG_NOTICE, r->connection->log, 0,
                          "smartflow proxy: virtual key vk_%ui revoked", id);
        }

        goto done;
    }

    if (k->revoked) {
        ngx_shmtx_unlock(&kz->shpool->mutex);

        return ngx_http_smartflow_error(r, NGX_HTTP_CONFLICT,
                   "invalid_request_error", "key_revoked", NULL,
                   "The key vk_%ui is revoked; it cannot be changed.", id);
    }

    if (shown) {
        if (ngx_smartflow_keys_set_secret(kz, k, digest, secret.data,
                                          (time_t) grace)
            != NGX_OK)
        {
            ngx_shmtx_unlock(&kz->shpool->mutex);
            return ngx_http_smartflow_keys_unavailable(r, kz);
        }

        kz->sh->version++;

        ngx_log_error(NGX_LOG_NOTICE, r->connection->log, 0,
                      "smartflow proxy: virtual key vk_%ui rotated "
                      "(grace %uLs)", id, grace);

        goto done;
    }

    if (spec.set & NGX_SMARTFLOW_KEY_NAME) {
        other = ngx_smartflow_keys_by_name(kz->sh, &spec.name);

        if (other && other != k) {
            ngx_shmtx_unlock(&kz->shpool->mutex);

            return ngx_http_smartflow_error(r, NGX_HTTP_CONFLICT,
                       "invalid_request_error", "duplicate_name", "name",
                       "A key named \"%V\" exists already.", &spec.name);
        }
    }

    if ((spec.set & NGX_SMARTFLOW_KEY_STRINGS)
        && ngx_smartflow_keys_set_strings(kz, k, &spec) != NGX_OK)
    {
        ngx_shmtx_unlock(&kz->shpool->mutex);
        return ngx_http_smartflow_keys_unavailable(r, kz);
    }

    ngx_http_smartflow_keys_apply(k, &spec, now);
    kz->sh->version++;

done:

    for (pass = 0; pass < 2; pass++) {
        ngx_http_smartflow_keys_json(&o, k, shown, now);

        if (pass == 0) {
            json.data = ngx_pnalloc(r->pool, o.size);
            if (json.data == NULL) {
                break;
            }

            o.pos = json.data;
            o.size = 0;
        }
    }

    ngx_shmtx_unlock(&kz->shpool->mutex);

    if (json.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json.len = o.size;

    if (shown
        && ngx_http_smartflow_wipe_later(r->pool, json.data, json.len)
           != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_smartflow_keys_redis_put(r, kz, id, NGX_HTTP_OK, &json,
                                             shown != NULL);
}


/* a key as the admin API shows it; the secret only when just made */
static void
ngx_http_smartflow_keys_json(ngx_smartflow_out_t *o, ngx_smartflow_key_t *k,
    ngx_str_t *secret, time_t now)
{
    ngx_str_t   s;
    ngx_uint_t  i;

    ngx_sf_out_lit(o, "{\"id\":\"vk_");
    ngx_smartflow_out_uint(o, k->node.key);
    ngx_sf_out_lit(o, "\",\"object\":\"virtual_key\",\"name\":");
    ngx_smartflow_out_str(o, &k->name);

    if (secret) {
        ngx_sf_out_lit(o, ",\"key\":");
        ngx_smartflow_out_str(o, secret);
    }

    s.data = k->prefix;
    s.len = NGX_SMARTFLOW_KEY_SHOWN;

    ngx_sf_out_lit(o, ",\"prefix\":");
    ngx_smartflow_out_str(o, &s);

    if (k->revoked) {
        ngx_sf_out_lit(o, ",\"status\":\"revoked\"");

    } else if (k->expires && k->expires <= now) {
        ngx_sf_out_lit(o, ",\"status\":\"expired\"");

    } else {
        ngx_sf_out_lit(o, ",\"status\":\"active\"");
    }

    ngx_sf_out_lit(o, ",\"team\":");
    ngx_smartflow_out_str(o, &k->team);
    ngx_sf_out_lit(o, ",\"user\":");
    ngx_smartflow_out_str(o, &k->user);
    ngx_sf_out_lit(o, ",\"models\":[");

    for (i = 0; i < k->nmodels; i++) {
        if (i) {
            ngx_sf_out_lit(o, ",");
        }

        ngx_smartflow_out_str(o, &k->models[i]);
    }

    ngx_sf_out_lit(o, "],\"rpm\":");
    ngx_smartflow_out_limit(o, k->rpm);
    ngx_sf_out_lit(o, ",\"tpm\":");
    ngx_smartflow_out_limit(o, k->tpm);
    ngx_sf_out_lit(o, ",\"budget_usd\":");

    if (k->budget == NGX_HTTP_SMARTFLOW_UNLIMITED) {
        ngx_sf_out_lit(o, "null");

    } else {
        ngx_smartflow_out_money(o, k->budget);
    }

    ngx_sf_out_lit(o, ",\"budget_period\":");
    ngx_smartflow_out_str(o, &ngx_smartflow_periods[k->period]);
    ngx_sf_out_lit(o, ",\"expires_at\":");
    ngx_smartflow_out_limit(o, k->expires ? (uint64_t) k->expires
                                          : NGX_HTTP_SMARTFLOW_UNLIMITED);
    ngx_sf_out_lit(o, ",\"policy_group\":");
    ngx_smartflow_out_str(o, &k->policy_group);
    ngx_sf_out_lit(o, ",\"cache_threshold\":");
    ngx_smartflow_out_fraction(o, k->cache_threshold);
    ngx_sf_out_lit(o, ",\"metadata\":");

    if (k->metadata.data) {
        ngx_smartflow_out_raw(o, k->metadata.data, k->metadata.len);

    } else {
        ngx_sf_out_lit(o, "null");
    }

    ngx_sf_out_lit(o, ",\"created_at\":");
    ngx_smartflow_out_uint(o, k->created);
    ngx_sf_out_lit(o, ",\"revoked_at\":");
    ngx_smartflow_out_limit(o, k->revoked ? (uint64_t) k->revoked
                                          : NGX_HTTP_SMARTFLOW_UNLIMITED);
    ngx_sf_out_lit(o, ",\"previous_key_expires_at\":");
    ngx_smartflow_out_limit(o, (k->previous && k->previous->until > now)
                               ? (uint64_t) k->previous->until
                               : NGX_HTTP_SMARTFLOW_UNLIMITED);
    ngx_sf_out_lit(o, "}");
}


static void
ngx_http_smartflow_keys_usage(ngx_smartflow_out_t *o, ngx_smartflow_key_t *k,
    uint64_t now_ms)
{
    uint64_t  used;

    ngx_sf_out_lit(o, "{\"id\":\"vk_");
    ngx_smartflow_out_uint(o, k->node.key);
    ngx_sf_out_lit(o, "\",\"object\":\"virtual_key.usage\",\"period\":");
    ngx_smartflow_out_str(o, &ngx_smartflow_periods[k->period]);
    ngx_sf_out_lit(o, ",\"period_start\":");
    ngx_smartflow_out_limit(o, k->period == NGX_SMARTFLOW_PERIOD_TOTAL
                               ? NGX_HTTP_SMARTFLOW_UNLIMITED
                               : (uint64_t) k->period_start);
    ngx_sf_out_lit(o, ",\"period_end\":");
    ngx_smartflow_out_limit(o, k->period == NGX_SMARTFLOW_PERIOD_TOTAL
                               ? NGX_HTTP_SMARTFLOW_UNLIMITED
                               : (uint64_t) ngx_smartflow_keys_period_end(
                                                k->period, k->period_start));
    ngx_sf_out_lit(o, ",\"requests\":");
    ngx_smartflow_out_uint(o, k->period_requests);
    ngx_sf_out_lit(o, ",\"prompt_tokens\":");
    ngx_smartflow_out_uint(o, k->period_prompt);
    ngx_sf_out_lit(o, ",\"completion_tokens\":");
    ngx_smartflow_out_uint(o, k->period_completion);
    ngx_sf_out_lit(o, ",\"total_tokens\":");
    ngx_smartflow_out_uint(o, k->period_prompt + k->period_completion);
    ngx_sf_out_lit(o, ",\"spend_usd\":");
    ngx_smartflow_out_money(o, k->spent);
    ngx_sf_out_lit(o, ",\"reserved_usd\":");
    ngx_smartflow_out_money(o, k->reserved);
    ngx_sf_out_lit(o, ",\"budget_usd\":");

    if (k->budget == NGX_HTTP_SMARTFLOW_UNLIMITED) {
        ngx_sf_out_lit(o, "null,\"remaining_usd\":null");

    } else {
        ngx_smartflow_out_money(o, k->budget);
        ngx_sf_out_lit(o, ",\"remaining_usd\":");
        ngx_smartflow_out_money(o, k->budget > k->spent
                                   ? k->budget - k->spent : 0);
    }

    used = k->window_tokens + k->window_reserved;

    ngx_sf_out_lit(o, ",\"window\":{\"seconds\":60,\"started_at\":");
    ngx_smartflow_out_uint(o, k->window / 1000);
    ngx_sf_out_lit(o, ",\"reset_seconds\":");
    ngx_smartflow_out_uint(o, (k->window + NGX_SMARTFLOW_KEY_WINDOW
                               - ngx_min(now_ms, k->window
                                         + NGX_SMARTFLOW_KEY_WINDOW)
                               + 999) / 1000);
    ngx_sf_out_lit(o, ",\"requests\":");
    ngx_smartflow_out_uint(o, k->window_requests);
    ngx_sf_out_lit(o, ",\"tokens\":");
    ngx_smartflow_out_uint(o, k->window_tokens);
    ngx_sf_out_lit(o, ",\"reserved_tokens\":");
    ngx_smartflow_out_uint(o, k->window_reserved);
    ngx_sf_out_lit(o, ",\"rpm\":");
    ngx_smartflow_out_limit(o, k->rpm);
    ngx_sf_out_lit(o, ",\"tpm\":");
    ngx_smartflow_out_limit(o, k->tpm);
    ngx_sf_out_lit(o, ",\"remaining_requests\":");
    ngx_smartflow_out_limit(o, k->rpm == NGX_HTTP_SMARTFLOW_UNLIMITED
                               ? k->rpm
                               : k->rpm - ngx_min(k->rpm,
                                                  k->window_requests));
    ngx_sf_out_lit(o, ",\"remaining_tokens\":");
    ngx_smartflow_out_limit(o, k->tpm == NGX_HTTP_SMARTFLOW_UNLIMITED
                               ? k->tpm
                               : k->tpm - ngx_min(k->tpm, used));
    ngx_sf_out_lit(o, "},\"lifetime\":{\"requests\":");
    ngx_smartflow_out_uint(o, k->requests);
    ngx_sf_out_lit(o, ",\"prompt_tokens\":");
    ngx_smartflow_out_uint(o, k->prompt_tokens);
    ngx_sf_out_lit(o, ",\"completion_tokens\":");
    ngx_smartflow_out_uint(o, k->completion_tokens);
    ngx_sf_out_lit(o, ",\"total_tokens\":");
    ngx_smartflow_out_uint(o, k->prompt_tokens + k->completion_tokens);
    ngx_sf_out_lit(o, ",\"spend_usd\":");
    ngx_smartflow_out_money(o, k->spend);
    ngx_sf_out_lit(o, "}}");
}


static ngx_int_t
ngx_http_smartflow_keys_not_found(ngx_http_request_t *r, ngx_uint_t id)
{
    /* with Redis, made on another node a moment ago? */
    if (ngx_http_smartflow_keys_redis_pull_api(r) == NGX_DONE) {
        return NGX_DONE;
    }

    return ngx_http_smartflow_error(r, NGX_HTTP_NOT_FOUND,
               "invalid_request_error", "key_not_found", NULL,
               "No virtual key vk_%ui.", id);
}


static ngx_int_t
ngx_http_smartflow_keys_unavailable(ngx_http_request_t *r,
    ngx_http_smartflow_keys_zone_t *kz)
{
    return ngx_http_smartflow_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
               "api_error", "keys_zone_full", NULL,
               "The keys zone \"%V\" is full; the operator can make it "
               "larger.", &kz->shm_zone->shm.name);
}
