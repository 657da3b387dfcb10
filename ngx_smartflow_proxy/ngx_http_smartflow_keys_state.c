/*
 * The keys zone on disk (smartflow_keys_zone ... state=PATH): one JSON
 * document with every key (digests, never secrets), its limits, counters
 * and spend.  It is read when the zone is created (a start, or a resized
 * zone on reload).  One process writes it: the only worker, or worker 0;
 * every second, when the zone has changed, it copies the zone into memory
 * under the mutex and a thread of the zone's thread pool writes a
 * temporary file, fsync()s it, renames it over the old one and fsync()s
 * the directory, so a crash leaves the old file or the new one, never
 * half of one.  The last copy is written when the worker exits, and by
 * any worker that exits holding usage updates Redis never saw (see
 * ngx_http_smartflow_keys_redis_exit_process()).  A lock word in the zone
 * keeps an old worker 0 that is finishing after a reload and the new one
 * from writing at the same time.
 */

#include "ngx_http_smartflow_keys.h"


#define NGX_SMARTFLOW_KEYS_SAVE_EVERY    1000      /* ms */
#define NGX_SMARTFLOW_KEYS_SAVE_STALE    30        /* s a writer may hold */
#define NGX_SMARTFLOW_KEYS_STATE_VERSION 1


typedef struct {
    u_char                     *buf;
    size_t                      len;
    ngx_uint_t                  version;
    ngx_smartflow_keys_sh_t    *sh;
    u_char                     *path;       /* NUL-terminated */
    u_char                     *temp;
    u_char                     *dir;
    const char                 *failed;     /* the call that failed */
    ngx_err_t                   err;
} ngx_smartflow_keys_save_t;


typedef struct {
    char                       *name;
    size_t                      offset;
} ngx_smartflow_keys_field_t;


static ngx_int_t ngx_smartflow_keys_state_num(ngx_smartflow_json_t *obj,
    char *name, uint64_t *out, ngx_uint_t nullable);
static ngx_int_t ngx_smartflow_keys_state_str(ngx_smartflow_json_t *obj,
    char *name, ngx_str_t *out);
static ngx_int_t ngx_smartflow_keys_unhex(ngx_str_t *hex, u_char *out,
    size_t len);
static void ngx_smartflow_keys_state_write(ngx_smartflow_out_t *o,
    ngx_smartflow_keys_sh_t *sh);
static ngx_http_smartflow_keys_zone_t *ngx_smartflow_keys_zone(
    ngx_cycle_t *cycle);
static ngx_uint_t ngx_smartflow_keys_saver(void);
static void ngx_smartflow_keys_save_tick(ngx_event_t *ev);
static void ngx_smartflow_keys_save(ngx_http_smartflow_keys_zone_t *kz,
    ngx_log_t *log, ngx_uint_t now);
static ngx_uint_t ngx_smartflow_keys_save_lock(ngx_smartflow_keys_sh_t *sh,
    ngx_uint_t wait);
static void ngx_smartflow_keys_save_file(ngx_smartflow_keys_save_t *sv);
static void ngx_smartflow_keys_saved(ngx_smartflow_keys_save_t *sv,
    ngx_cycle_t *cycle, ngx_log_t *log);
#if (NGX_THREADS)
static void ngx_smartflow_keys_save_thread(void *data, ngx_log_t *log);
static void ngx_smartflow_keys_save_done(ngx_event_t *ev);
#endif


#define ngx_sf_key_off(field)  offsetof(ngx_smartflow_key_t, field)

/* counters kept in the state file as plain numbers */
static ngx_smartflow_keys_field_t  ngx_smartflow_keys_counters[] = {
    { "spent", ngx_sf_key_off(spent) },
    { "period_requests", ngx_sf_key_off(period_requests) },
    { "period_prompt_tokens", ngx_sf_key_off(period_prompt) },
    { "period_completion_tokens", ngx_sf_key_off(period_completion) },
    { "requests", ngx_sf_key_off(requests) },
    { "prompt_tokens", ngx_sf_key_off(prompt_tokens) },
    { "completion_tokens", ngx_sf_key_off(completion_tokens) },
    { "spend", ngx_sf_key_off(spend) },
    { "window", ngx_sf_key_off(window) },
    { "window_requests", ngx_sf_key_off(window_requests) },
    { "window_tokens", ngx_sf_key_off(window_tokens) },
    { NULL, 0 }
};

static ngx_smartflow_keys_field_t  ngx_smartflow_keys_times[] = {
    { "expires", ngx_sf_key_off(expires) },
    { "created", ngx_sf_key_off(created) },
    { "revoked", ngx_sf_key_off(revoked) },
    { "period_start", ngx_sf_key_off(period_start) },
    { NULL, 0 }
};


/* in the one process that writes the state file */
static ngx_event_t         ngx_smartflow_keys_save_event;
static ngx_connection_t    ngx_smartflow_keys_save_dummy;
static time_t              ngx_smartflow_keys_save_failed;
static ngx_cycle_t        *ngx_smartflow_keys_cycle;
#if (NGX_THREADS)
static ngx_thread_task_t  *ngx_smartflow_keys_task;
#endif


/* called with the zone's mutex held, from the zone's init in the master */
ngx_int_t
ngx_smartflow_keys_state_load(ngx_http_smartflow_keys_zone_t *kz,
    ngx_log_t *log)
{
    ssize_t                n;
    uint64_t               next;
    ngx_fd_t               fd;
    ngx_str_t              err;
    ngx_int_t              rc;
    ngx_uint_t             count;
    ngx_pool_t            *pool;
    ngx_file_info_t        fi;
    ngx_smartflow_json_t  *root, *j;
    u_char                *buf;

    fd = ngx_open_file(kz->state.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

    if (fd == NGX_INVALID_FILE) {
        if (ngx_errno == NGX_ENOENT) {
            ngx_log_error(NGX_LOG_NOTICE, log, 0,
                          "smartflow proxy: no keys state file \"%V\" yet",
                          &kz->state);
            return NGX_OK;
        }

        ngx_log_error(NGX_LOG_EMERG, log, ngx_errno,
                      "smartflow proxy: cannot open the keys state file "
                      "\"%V\"", &kz->state);
        return NGX_ERROR;
    }

    pool = NULL;
    rc = NGX_ERROR;
    next = 0;

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_EMERG, log, ngx_errno,
                      "smartflow proxy: cannot stat the keys state file "
                      "\"%V\"", &kz->state);
        goto done;
    }

    pool = ngx_create_pool(16384, log);
    if (pool == NULL) {
        goto done;
    }

    buf = ngx_pnalloc(pool, ngx_file_size(&fi) + 1);
    if (buf == NULL) {
        goto done;
    }

    n = ngx_read_fd(fd, buf, ngx_file_size(&fi));

    if (n != (ssize_t) ngx_file_size(&fi)) {
        ngx_log_error(NGX_LOG_EMERG, log, ngx_errno,
                      "smartflow proxy: cannot read the keys state file "
                      "\"%V\"", &kz->state);
        goto done;
    }

    root = ngx_smartflow_json_parse(pool, buf, n, &err);

    if (root == NULL) {
        goto damaged;
    }

    ngx_str_set(&err, "not a keys state file");

    if (root->type != NGX_SMARTFLOW_JSON_OBJECT
        || ngx_smartflow_keys_state_num(root, "smartflow_keys", &next, 0)
           != NGX_OK
        || next != NGX_SMARTFLOW_KEYS_STATE_VERSION)
    {
        goto damaged;
    }

    next = 1;
    j = ngx_smartflow_json_get(root, "keys");

    if (ngx_smartflow_keys_state_num(root, "next_id", &next, 0) != NGX_OK
        || j == NULL || j->type != NGX_SMARTFLOW_JSON_ARRAY)
    {
        goto damaged;
    }

    count = 0;

    for (j = j->child; j; j = j->next) {
        if (ngx_smartflow_keys_state_key(kz, pool, j, &err) != NGX_OK) {
            goto damaged;
        }

        count++;
    }

    if (kz->redis
        && ngx_http_smartflow_keys_redis_state_load(kz, root, &err) != NGX_OK)
    {
        goto damaged;
    }

    if (next > kz->sh->next_id) {
        kz->sh->next_id = next;
    }

    ngx_log_error(NGX_LOG_NOTICE, log, 0,
                  "smartflow proxy: %ui keys read from \"%V\"",
                  count, &kz->state);

    rc = NGX_OK;
    goto done;

damaged:

    ngx_log_error(NGX_LOG_EMERG, log, 0,
                  "smartflow proxy: the keys state file \"%V\" is damaged "
                  "(%V); move it away to start without its keys",
                  &kz->state, &err);

done:

    if (pool) {
        ngx_destroy_pool(pool);
    }

    if (ngx_close_file(fd) == NGX_FILE_ERROR) {
        ngx_log_error(NGX_LOG_ALERT, log, ngx_errno,
                      ngx_close_file_n " \"%V\" failed", &kz->state);
    }

    return rc;
}


ngx_int_t
ngx_smartflow_keys_state_key(ngx_http_smartflow_keys_zone_t *kz,
    ngx_pool_t *pool, ngx_smartflow_json_t *j, ngx_str_t *err)
{
    time_t                        now;
    uint64_t                      id, v, until;
    ngx_str_t                     s, prefix;
    ngx_uint_t                    i;
    ngx_smartflow_key_t          *k;
    ngx_smartflow_json_t         *m;
    ngx_smartflow_key_spec_t      spec;
    ngx_smartflow_keys_field_t   *f;
    u_char                        digest[32], previous[32];

    ngx_str_set(err, "a key is malformed");
    id = 0;

    if (j->type != NGX_SMARTFLOW_JSON_OBJECT
        || ngx_smartflow_keys_state_num(j, "id", &id, 0) != NGX_OK
        || id == 0 || id == NGX_HTTP_SMARTFLOW_UNLIMITED
        || ngx_smartflow_keys_by_id(kz->sh, id) != NULL)
    {
        return NGX_ERROR;
    }

    ngx_memzero(&spec, sizeof(ngx_smartflow_key_spec_t));
    spec.set = NGX_SMARTFLOW_KEY_STRINGS;

    if (ngx_smartflow_keys_state_str(j, "name", &spec.name) != NGX_OK
        || spec.name.data == NULL
        || ngx_smartflow_keys_state_str(j, "team", &spec.team) != NGX_OK
        || ngx_smartflow_keys_state_str(j, "user", &spec.user) != NGX_OK
        || ngx_smartflow_keys_state_str(j, "policy_group",
                                        &spec.policy_group)
           != NGX_OK
        || ngx_smartflow_keys_state_str(j, "prefix", &prefix) != NGX_OK
        || prefix.len != NGX_SMARTFLOW_KEY_SHOWN
        || ngx_smartflow_keys_state_str(j, "secret", &s) != NGX_OK
        || ngx_smartflow_keys_unhex(&s, digest, 32) != NGX_OK)
    {
        return NGX_ERROR;
    }

    m = ngx_smartflow_json_get(j, "metadata");

    if (m && m->type == NGX_SMARTFLOW_JSON_OBJECT) {
        if (ngx_smartflow_json_dump(pool, m, &spec.metadata) != NGX_OK) {
            return NGX_ERROR;
        }

    } else if (m && m->type != NGX_SMARTFLOW_JSON_NULL) {
        return NGX_ERROR;
    }

    m = ngx_smartflow_json_get(j, "models");

    if (m && m->type == NGX_SMARTFLOW_JSON_ARRAY && m->nchild) {
        spec.models = ngx_palloc(pool, m->nchild * sizeof(ngx_str_t));
        if (spec.models == NULL) {
            return NGX_ERROR;
        }

        for (m = m->child; m; m = m->next) {
            if (m->type != NGX_SMARTFLOW_JSON_STRING) {
                return NGX_ERROR;
            }

            spec.models[spec.nmodels++] = m->str;
        }

    } else if (m && m->type != NGX_SMARTFLOW_JSON_ARRAY
               && m->type != NGX_SMARTFLOW_JSON_NULL)
    {
        return NGX_ERROR;
    }

    k = ngx_smartflow_keys_alloc(kz, id);
    if (k == NULL) {
        ngx_str_set(err, "the zone is too small for its keys");
        return NGX_ERROR;
    }

    if (ngx_smartflow_keys_set_strings(kz, k, &spec) != NGX_OK) {
        ngx_str_set(err, "the zone is too small for its keys");
        return NGX_ERROR;
    }

    if (ngx_smartflow_keys_state_num(j, "rpm", &k->rpm, 1) != NGX_OK
        || ngx_smartflow_keys_state_num(j, "tpm", &k->tpm, 1) != NGX_OK
        || ngx_smartflow_keys_state_num(j, "budget", &k->budget, 1)
           != NGX_OK
        || ngx_smartflow_keys_state_str(j, "period", &s) != NGX_OK)
    {
        return NGX_ERROR;
    }

    for (i = 0; ngx_smartflow_periods[i].len; i++) {
        if (s.len == ngx_smartflow_periods[i].len
            && ngx_strncmp(s.data, ngx_smartflow_periods[i].data, s.len)
               == 0)
        {
            k->period = i;
            break;
        }
    }

    if (ngx_smartflow_periods[i].len == 0) {
        return NGX_ERROR;
    }

    /* absent from files written before keys had it: none */
    v = 0;

    if (ngx_smartflow_keys_state_num(j, "cache_permille", &v, 0) != NGX_OK
        || v > 1000)
    {
        return NGX_ERROR;
    }

    k->cache_threshold = (ngx_uint_t) v;

    for (f = ngx_smartflow_keys_counters; f->name; f++) {
        if (ngx_smartflow_keys_state_num(j, f->name,
                                         (uint64_t *) ((u_char *) k
                                                       + f->offset), 0)
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    for (f = ngx_smartflow_keys_times; f->name; f++) {
        v = 0;

        if (ngx_smartflow_keys_state_num(j, f->name, &v, 0) != NGX_OK) {
            return NGX_ERROR;
        }

        *(time_t *) ((u_char *) k + f->offset) = (time_t) v;
    }

    /* an old secret still in its grace period goes in first */
    now = ngx_time();
    until = 0;

    if (ngx_smartflow_keys_state_str(j, "previous", &s) != NGX_OK
        || ngx_smartflow_keys_state_num(j, "previous_until", &until, 0)
           != NGX_OK
        || (s.data && ngx_smartflow_keys_unhex(&s, previous, 32) != NGX_OK))
    {
        return NGX_ERROR;
    }

    if (s.data && until > (uint64_t) now) {
        if (ngx_smartflow_keys_set_secret(kz, k, previous, prefix.data, 0)
            != NGX_OK)
        {
            ngx_str_set(err, "the zone is too small for its keys");
            return NGX_ERROR;
        }
    }

    if (ngx_smartflow_keys_set_secret(kz, k, digest, prefix.data,
                                      k->secret ? (time_t) until - now : 0)
        != NGX_OK)
    {
        ngx_str_set(err, "the zone is too small for its keys");
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* a number field; absent keeps *out, null is "unlimited" when nullable */
static ngx_int_t
ngx_smartflow_keys_state_num(ngx_smartflow_json_t *obj, char *name,
    uint64_t *out, ngx_uint_t nullable)
{
    ngx_smartflow_json_t  *j;

    j = ngx_smartflow_json_get(obj, name);

    if (j == NULL) {
        return NGX_OK;
    }

    if (j->type == NGX_SMARTFLOW_JSON_NULL && nullable) {
        *out = NGX_HTTP_SMARTFLOW_UNLIMITED;
        return NGX_OK;
    }

    if (j->type != NGX_SMARTFLOW_JSON_NUMBER) {
        return NGX_ERROR;
    }

    return ngx_smartflow_parse_uint(j->str.data, j->str.len, out);
}


/* a string field; absent or null leaves it unset */
static ngx_int_t
ngx_smartflow_keys_state_str(ngx_smartflow_json_t *obj, char *name,
    ngx_str_t *out)
{
    ngx_smartflow_json_t  *j;

    ngx_str_null(out);

    j = ngx_smartflow_json_get(obj, name);

    if (j == NULL || j->type == NGX_SMARTFLOW_JSON_NULL) {
        return NGX_OK;
    }

    if (j->type != NGX_SMARTFLOW_JSON_STRING) {
        return NGX_ERROR;
    }

    *out = j->str;

    if (out->data == NULL) {
        /* the parser leaves an empty string without data */
        out->data = (u_char *) "";
    }

    return NGX_OK;
}


static ngx_int_t
ngx_smartflow_keys_unhex(ngx_str_t *hex, u_char *out, size_t len)
{
    ngx_int_t   n;
    ngx_uint_t  i;

    if (hex->len != 2 * len) {
        return NGX_ERROR;
    }

    for (i = 0; i < len; i++) {
        n = ngx_hextoi(hex->data + 2 * i, 2);
        if (n == NGX_ERROR) {
            return NGX_ERROR;
        }

        out[i] = (u_char) n;
    }

    return NGX_OK;
}


static void
ngx_smartflow_keys_state_write(ngx_smartflow_out_t *o,
    ngx_smartflow_keys_sh_t *sh)
{
    ngx_queue_t                 *q;
    ngx_smartflow_key_t         *k;

    ngx_sf_out_lit(o, "{\"smartflow_keys\":");
    ngx_smartflow_out_uint(o, NGX_SMARTFLOW_KEYS_STATE_VERSION);
    ngx_sf_out_lit(o, ",\"next_id\":");
    ngx_smartflow_out_uint(o, sh->next_id);
    ngx_sf_out_lit(o, ",\"keys\":[");

    for (q = ngx_queue_head(&sh->keys);
         q != ngx_queue_sentinel(&sh->keys);
         q = ngx_queue_next(q))
    {
        k = ngx_queue_data(q, ngx_smartflow_key_t, queue);

        if (q != ngx_queue_head(&sh->keys)) {
            ngx_sf_out_lit(o, ",");
        }

        ngx_sf_out_lit(o, "\n");
        ngx_smartflow_keys_state_write_key(o, k);
    }

    ngx_sf_out_lit(o, "\n]");

    /* with smartflow_redis: its epoch, the updates not sent to it */
    ngx_http_smartflow_keys_redis_state_write(o, sh);

    ngx_sf_out_lit(o, "}\n");
}


/* one key as the state file and the shared store keep it */
void
ngx_smartflow_keys_state_write_key(ngx_smartflow_out_t *o,
    ngx_smartflow_key_t *k)
{
    ngx_str_t                    s;
    ngx_uint_t                   i;
    ngx_smartflow_keys_field_t  *f;

    ngx_sf_out_lit(o, "{\"id\":");
    ngx_smartflow_out_uint(o, k->node.key);
    ngx_sf_out_lit(o, ",\"name\":");
    ngx_smartflow_out_str(o, &k->name);
    ngx_sf_out_lit(o, ",\"team\":");
    ngx_smartflow_out_str(o, &k->team);
    ngx_sf_out_lit(o, ",\"user\":");
    ngx_smartflow_out_str(o, &k->user);
    ngx_sf_out_lit(o, ",\"policy_group\":");
    ngx_smartflow_out_str(o, &k->policy_group);
    ngx_sf_out_lit(o, ",\"models\":[");

    for (i = 0; i < k->nmodels; i++) {
        if (i) {
            ngx_sf_out_lit(o, ",");
        }

        ngx_smartflow_out_str(o, &k->models[i]);
    }

    ngx_sf_out_lit(o, "],\"metadata\":");

    if (k->metadata.data) {
        ngx_smartflow_out_raw(o, k->metadata.data, k->metadata.len);

    } else {
        ngx_sf_out_lit(o, "null");
    }

    ngx_sf_out_lit(o, ",\"rpm\":");
    ngx_smartflow_out_limit(o, k->rpm);
    ngx_sf_out_lit(o, ",\"tpm\":");
    ngx_smartflow_out_limit(o, k->tpm);
    ngx_sf_out_lit(o, ",\"budget\":");
    ngx_smartflow_out_limit(o, k->budget);
    ngx_sf_out_lit(o, ",\"period\":");
    ngx_smartflow_out_str(o, &ngx_smartflow_periods[k->period]);
    ngx_sf_out_lit(o, ",\"cache_permille\":");
    ngx_smartflow_out_uint(o, k->cache_threshold);

    s.data = k->prefix;
    s.len = NGX_SMARTFLOW_KEY_SHOWN;

    ngx_sf_out_lit(o, ",\"prefix\":");
    ngx_smartflow_out_str(o, &s);
    ngx_sf_out_lit(o, ",\"secret\":\"");
    ngx_smartflow_out_hex(o, k->secret->digest, 32);
    ngx_sf_out_lit(o, "\"");

    if (k->previous) {
        ngx_sf_out_lit(o, ",\"previous\":\"");
        ngx_smartflow_out_hex(o, k->previous->digest, 32);
        ngx_sf_out_lit(o, "\",\"previous_until\":");
        ngx_smartflow_out_uint(o, k->previous->until);
    }

    for (f = ngx_smartflow_keys_times; f->name; f++) {
        ngx_sf_out_lit(o, ",\"");
        ngx_smartflow_out_raw(o, (u_char *) f->name,
                              ngx_strlen(f->name));
        ngx_sf_out_lit(o, "\":");
        ngx_smartflow_out_uint(o, *(time_t *) ((u_char *) k
                                               + f->offset));
    }

    for (f = ngx_smartflow_keys_counters; f->name; f++) {
        ngx_sf_out_lit(o, ",\"");
        ngx_smartflow_out_raw(o, (u_char *) f->name,
                              ngx_strlen(f->name));
        ngx_sf_out_lit(o, "\":");
        ngx_smartflow_out_uint(o, *(uint64_t *) ((u_char *) k
                                                 + f->offset));
    }

    ngx_sf_out_lit(o, "}");
}


static ngx_http_smartflow_keys_zone_t *
ngx_smartflow_keys_zone(ngx_cycle_t *cycle)
{
    ngx_http_smartflow_main_conf_t  *smcf;

    if (ngx_get_conf(cycle->conf_ctx, ngx_http_module) == NULL) {
        return NULL;
    }

    smcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_smartflow_proxy_module);

    if (smcf == NULL || smcf->keys == NULL || smcf->keys->state.len == 0) {
        return NULL;
    }

    return smcf->keys;
}


static ngx_uint_t
ngx_smartflow_keys_saver(void)
{
    return ngx_process == NGX_PROCESS_SINGLE
           || (ngx_process == NGX_PROCESS_WORKER && ngx_worker == 0);
}


/*
 * In the master once the configuration is read: a missing directory for
 * the state file is made, for the workers' user, who write the file.
 */
ngx_int_t
ngx_http_smartflow_keys_init_module(ngx_cycle_t *cycle)
{
    ngx_http_smartflow_keys_zone_t  *kz;

    kz = ngx_smartflow_keys_zone(cycle);

    if (kz == NULL) {
        return NGX_OK;
    }

    return ngx_smartflow_state_dir(cycle, &kz->state, "keys state");
}


ngx_int_t
ngx_http_smartflow_keys_init_process(ngx_cycle_t *cycle)
{
    ngx_event_t                     *ev;
    ngx_http_smartflow_main_conf_t  *smcf;

    /*
     * nginx's cache manager and loader run this too, but serve no
     * request: only a worker talks to Redis
     */
    if (ngx_get_conf(cycle->conf_ctx, ngx_http_module)
        && (ngx_process == NGX_PROCESS_WORKER
            || ngx_process == NGX_PROCESS_SINGLE))
    {
        smcf = ngx_http_cycle_get_module_main_conf(cycle,
                                           ngx_http_smartflow_proxy_module);

        if (smcf && smcf->keys && smcf->keys->redis) {
            ngx_http_smartflow_keys_redis_init_process(cycle, smcf->keys);
        }
    }

    if (!ngx_smartflow_keys_saver()
        || ngx_smartflow_keys_zone(cycle) == NULL)
    {
        return NGX_OK;
    }

    ngx_smartflow_keys_cycle = cycle;

    ev = &ngx_smartflow_keys_save_event;

    ev->handler = ngx_smartflow_keys_save_tick;
    ev->log = cycle->log;
    /* a timer's data is read as a connection when debug logging */
    ngx_smartflow_keys_save_dummy.fd = (ngx_socket_t) -1;
    ev->data = &ngx_smartflow_keys_save_dummy;
    ev->cancelable = 1;

    ngx_add_timer(ev, NGX_SMARTFLOW_KEYS_SAVE_EVERY);

    return NGX_OK;
}


void
ngx_http_smartflow_keys_exit_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                       unsent;
    ngx_http_smartflow_keys_zone_t  *kz;

    unsent = ngx_http_smartflow_keys_redis_exit_process(cycle);

    if (!ngx_smartflow_keys_saver()) {
        /*
         * usage updates Redis never saw go to the file now: worker 0 may
         * have written its last copy already
         */
        kz = unsent ? ngx_smartflow_keys_zone(cycle) : NULL;

        if (kz) {
            ngx_smartflow_keys_save(kz, cycle->log, 1);
        }

        return;
    }

#if (NGX_THREADS)

    if (ngx_smartflow_keys_task) {
        /*
         * the thread pools stopped before this module's exit: a write in
         * flight is over, but its completion handler will not run
         */
        ngx_smartflow_keys_saved(ngx_smartflow_keys_task->ctx, cycle,
                                 cycle->log);
        ngx_free(ngx_smartflow_keys_task);
        ngx_smartflow_keys_task = NULL;
    }

#endif

    kz = ngx_smartflow_keys_zone(cycle);

    if (kz) {
        ngx_smartflow_keys_save(kz, cycle->log, 1);
    }
}


static void
ngx_smartflow_keys_save_tick(ngx_event_t *ev)
{
    ngx_http_smartflow_keys_zone_t  *kz;

    /* a single process may have been reconfigured since the last tick */
    ev->log = ngx_cycle->log;

    kz = ngx_smartflow_keys_zone((ngx_cycle_t *) ngx_cycle);

    if (kz
#if (NGX_THREADS)
        && ngx_smartflow_keys_task == NULL
#endif
       )
    {
        ngx_smartflow_keys_save(kz, ev->log, 0);
    }

    if (!ngx_exiting) {
        ngx_add_timer(ev, NGX_SMARTFLOW_KEYS_SAVE_EVERY);
    }
}


/*
 * Copies the zone into memory under its mutex and writes it: in the thread
 * pool, or here when "now" is set (exit) or nginx has no threads.
 */
static void
ngx_smartflow_keys_save(ngx_http_smartflow_keys_zone_t *kz, ngx_log_t *log,
    ngx_uint_t now)
{
    u_char                     *p;
    size_t                      size;
    ngx_smartflow_out_t         o;
    ngx_smartflow_keys_sh_t    *sh;
    ngx_smartflow_keys_save_t  *sv;
#if (NGX_THREADS)
    ngx_thread_task_t          *task;
#endif

    sh = kz->sh;

    if (sh->version == sh->saved) {
        return;
    }

    if (!ngx_smartflow_keys_save_lock(sh, now)) {
        /* another process is writing; the next tick tries again */
        return;
    }

    /* the task, its context and the three paths in one allocation */
    size = sizeof(ngx_smartflow_keys_save_t) + 3 * (kz->state.len + 1)
           + sizeof(".tmp.") + NGX_INT64_LEN;

#if (NGX_THREADS)
    size += sizeof(ngx_thread_task_t);
#endif

    p = ngx_calloc(size, log);
    if (p == NULL) {
        (void) ngx_atomic_cmp_set(&sh->save_lock, ngx_pid, 0);
        return;
    }

#if (NGX_THREADS)
    task = (ngx_thread_task_t *) p;
    p += sizeof(ngx_thread_task_t);
    task->ctx = p;
#endif

    sv = (ngx_smartflow_keys_save_t *) p;
    p += sizeof(ngx_smartflow_keys_save_t);

    sv->sh = sh;
    sv->path = p;
    p = ngx_cpymem(p, kz->state.data, kz->state.len);
    *p++ = '\0';

    sv->temp = p;
    p = ngx_sprintf(p, "%V.tmp.%P%Z", &kz->state, ngx_pid);

    sv->dir = p;
    p = ngx_cpymem(p, kz->state.data, kz->state.len);
    *p = '\0';

    while (p > sv->dir && *p != '/') {
        p--;
    }

    p[p == sv->dir ? 1 : 0] = '\0';

    ngx_memzero(&o, sizeof(ngx_smartflow_out_t));

    ngx_shmtx_lock(&kz->shpool->mutex);

    ngx_smartflow_keys_state_write(&o, sh);

    sv->buf = ngx_alloc(o.size, log);

    if (sv->buf) {
        o.pos = sv->buf;
        o.size = 0;
        ngx_smartflow_keys_state_write(&o, sh);
        sv->len = o.size;
        sv->version = sh->version;
    }

    ngx_shmtx_unlock(&kz->shpool->mutex);

    if (sv->buf == NULL) {
        sv->failed = "ngx_alloc()";
        goto done;
    }

#if (NGX_THREADS)

    /*
     * nginx starts the thread pools of a worker's cycle only: a single
     * process reconfigured by SIGHUP has none running for its new cycle,
     * and writes here instead
     */
    if (!now && kz->thread_pool && ngx_cycle == ngx_smartflow_keys_cycle) {
        task->handler = ngx_smartflow_keys_save_thread;
        task->event.handler = ngx_smartflow_keys_save_done;
        task->event.data = task;
        task->event.log = log;

        if (ngx_thread_task_post(kz->thread_pool, task) == NGX_OK) {
            ngx_smartflow_keys_task = task;
            return;
        }

        sv->failed = "ngx_thread_task_post()";
        goto done;
    }

#endif

    ngx_smartflow_keys_save_file(sv);

done:

    ngx_smartflow_keys_saved(sv, (ngx_cycle_t *) ngx_cycle, log);

#if (NGX_THREADS)
    ngx_free(task);
#else
    ngx_free(sv);
#endif
}


static ngx_uint_t
ngx_smartflow_keys_save_lock(ngx_smartflow_keys_sh_t *sh, ngx_uint_t wait)
{
    ngx_uint_t         n;
    ngx_atomic_uint_t  pid;

    for (n = 0; /* void */; n++) {

        if (ngx_atomic_cmp_set(&sh->save_lock, 0, ngx_pid)) {
            break;
        }

        /* a writer that died does not stop the saving for good */
        pid = sh->save_lock;

        if (pid != 0
            && ngx_time() - sh->save_started > NGX_SMARTFLOW_KEYS_SAVE_STALE
            && ngx_atomic_cmp_set(&sh->save_lock, pid, ngx_pid))
        {
            break;
        }

        if (!wait) {
            return 0;
        }

        if (n == 100) {
            /* exiting: two seconds were enough for any write */
            sh->save_lock = ngx_pid;
            break;
        }

        ngx_msleep(20);
    }

    sh->save_started = ngx_time();

    return 1;
}


/* may run in a thread: no logging, no pools; errors go back in sv */
static void
ngx_smartflow_keys_save_file(ngx_smartflow_keys_save_t *sv)
{
    size_t     done;
    ssize_t    n;
    ngx_fd_t   fd;

    fd = ngx_open_file(sv->temp, NGX_FILE_WRONLY, NGX_FILE_TRUNCATE, 0600);

    if (fd == NGX_INVALID_FILE) {
        sv->failed = ngx_open_file_n;
        sv->err = ngx_errno;
        return;
    }

    for (done = 0; done < sv->len; done += n) {
        n = ngx_write_fd(fd, sv->buf + done, sv->len - done);

        if (n <= 0) {
            sv->failed = ngx_write_fd_n;
            sv->err = ngx_errno;
            break;
        }
    }

    if (sv->failed == NULL && fsync(fd) == -1) {
        sv->failed = "fsync()";
        sv->err = ngx_errno;
    }

    if (ngx_close_file(fd) == NGX_FILE_ERROR && sv->failed == NULL) {
        sv->failed = ngx_close_file_n;
        sv->err = ngx_errno;
    }

    if (sv->failed == NULL && ngx_rename_file(sv->temp, sv->path) == -1) {
        sv->failed = ngx_rename_file_n;
        sv->err = ngx_errno;
    }

    if (sv->failed) {
        (void) ngx_delete_file(sv->temp);
        return;
    }

    /* the rename itself survives a crash once the directory is synced */
    fd = ngx_open_file(sv->dir, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

    if (fd != NGX_INVALID_FILE) {
        (void) fsync(fd);
        (void) ngx_close_file(fd);
    }
}


static void
ngx_smartflow_keys_saved(ngx_smartflow_keys_save_t *sv, ngx_cycle_t *cycle,
    ngx_log_t *log)
{
    ngx_http_smartflow_keys_zone_t  *kz;

    if (sv->failed && ngx_time() - ngx_smartflow_keys_save_failed >= 60) {
        /* retried every second, said once a minute */
        ngx_smartflow_keys_save_failed = ngx_time();

        ngx_log_error(NGX_LOG_ALERT, log, sv->err,
                      "smartflow proxy: saving the keys state to \"%s\" "
                      "failed: %s", sv->path, sv->failed);
    }

    ngx_free(sv->buf);
    sv->buf = NULL;

    kz = ngx_smartflow_keys_zone(cycle);

    if (kz == NULL || kz->sh != sv->sh) {
        /* the zone was replaced by a reload meanwhile */
        return;
    }

    if (sv->failed == NULL && sv->version > sv->sh->saved) {
        sv->sh->saved = sv->version;
    }

    (void) ngx_atomic_cmp_set(&sv->sh->save_lock, ngx_pid, 0);
}


#if (NGX_THREADS)

static void
ngx_smartflow_keys_save_thread(void *data, ngx_log_t *log)
{
    ngx_smartflow_keys_save_file(data);
}


static void
ngx_smartflow_keys_save_done(ngx_event_t *ev)
{
    ngx_thread_task_t  *task = ev->data;

    ngx_smartflow_keys_saved(task->ctx, (ngx_cycle_t *) ngx_cycle, ev->log);

    ngx_free(task);
    ngx_smartflow_keys_task = NULL;
}

#endif
