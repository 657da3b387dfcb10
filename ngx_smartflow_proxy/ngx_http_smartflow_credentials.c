/*
 * Provider credentials kept encrypted at rest (AES-256-GCM, OpenSSL).
 *
 *     smartflow_credentials_key file:/etc/smartflow/credentials.key;
 *     smartflow_credentials_store /var/lib/smartflow/credentials.json;
 *     smartflow_provider openai type=openai ... key=enc:v1:...;
 *
 * The key is 32 bytes written as 64 hex digits, in a file or an
 * environment variable.  A provider's key= may be a value sealed under it
 * ("enc:v1:" and base64url of a 12-byte nonce, the ciphertext and the
 * 16-byte tag, with the provider's name as additional data, so a sealed
 * value works for its provider only); nginx.conf then holds no secret.
 *
 * The admin API (smartflow_api admin_providers, master key only) sets a
 * provider's credential at run time; it then overrides the configured one
 * in every worker at once.  Those live in a shared-memory zone and in the
 * store file, each sealed the same way under a fresh nonce; the file is
 * written by a thread of a thread pool (a temporary file, fsync(), rename,
 * fsync() of the directory) before the API answers, so an answer means it
 * is on disk.  A store that the configured key cannot open stops nginx at
 * start rather than letting it run without its credentials.
 *
 * No API returns a credential and no log line holds one: the API shows a
 * fingerprint (the first 8 bytes of its SHA-256) and where it came from.
 */

#include "ngx_http_smartflow_proxy.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sys/file.h>


#define NGX_SMARTFLOW_CRED_SLOTS      64
#define NGX_SMARTFLOW_CRED_NAME       64
#define NGX_SMARTFLOW_CRED_MAX        1024
#define NGX_SMARTFLOW_CRED_NONCE      12
#define NGX_SMARTFLOW_CRED_TAG        16
#define NGX_SMARTFLOW_CRED_PREFIX     "enc:v1:"
#define NGX_SMARTFLOW_CRED_ZONE_SIZE  (256 * 1024)
#define NGX_SMARTFLOW_CRED_FILE_MAX   (512 * 1024)
/* a key of NGX_SMARTFLOW_CRED_MAX bytes, every byte escaped, and room */
#define NGX_SMARTFLOW_CRED_BODY_MAX   8192


typedef struct {
    u_char                      name[NGX_SMARTFLOW_CRED_NAME];
    size_t                      name_len;
    u_char                      secret[NGX_SMARTFLOW_CRED_MAX];
    size_t                      len;
    time_t                      updated;
    ngx_uint_t                  used;
} ngx_smartflow_cred_slot_t;


typedef struct {
    ngx_atomic_t                generation;
    ngx_smartflow_cred_slot_t   slot[NGX_SMARTFLOW_CRED_SLOTS];
} ngx_smartflow_cred_sh_t;


struct ngx_http_smartflow_credentials_s {
    u_char                      key[32];
    ngx_str_t                   path;
    ngx_shm_zone_t             *zone;
    ngx_slab_pool_t            *shpool;
    ngx_smartflow_cred_sh_t    *sh;
    ngx_thread_pool_t          *thread_pool;
    ngx_log_t                  *log;
    unsigned                    key_set:1;
};


/* one write of the store file, from the admin API */
typedef struct {
    ngx_http_request_t         *r;
    u_char                     *path;
    u_char                     *temp;
    u_char                     *lock;
    u_char                     *dir;
    u_char                     *buf;
    size_t                      len;
    ngx_uint_t                  generation;
    ngx_str_t                   answer;
    const char                 *failed;
    ngx_err_t                   err;
} ngx_smartflow_cred_save_t;


static ngx_int_t ngx_http_smartflow_cred_seal(
    ngx_http_smartflow_credentials_t *cr, ngx_str_t *name, ngx_str_t *plain,
    u_char *out);
static ngx_int_t ngx_http_smartflow_cred_open(
    ngx_http_smartflow_credentials_t *cr, ngx_str_t *name, ngx_str_t *sealed,
    u_char *out, size_t *len);
static ngx_int_t ngx_http_smartflow_cred_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_int_t ngx_http_smartflow_cred_load(
    ngx_http_smartflow_credentials_t *cr, ngx_log_t *log);
static ngx_smartflow_cred_slot_t *ngx_http_smartflow_cred_find(
    ngx_smartflow_cred_sh_t *sh, ngx_str_t *name);
static ngx_http_smartflow_provider_t *ngx_http_smartflow_cred_provider(
    ngx_http_request_t *r, ngx_str_t *name);
static ngx_int_t ngx_http_smartflow_cred_path(ngx_http_request_t *r,
    ngx_str_t *name, ngx_str_t *op);
static void ngx_http_smartflow_cred_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_smartflow_cred_read_body(ngx_http_request_t *r,
    ngx_str_t *body);
static ngx_int_t ngx_http_smartflow_cred_too_large(ngx_http_request_t *r);
static ngx_int_t ngx_http_smartflow_cred_run(ngx_http_request_t *r,
    ngx_str_t *name, ngx_str_t *op);
static ngx_int_t ngx_http_smartflow_cred_list(ngx_http_request_t *r);
static ngx_int_t ngx_http_smartflow_cred_save(ngx_http_request_t *r,
    ngx_http_smartflow_credentials_t *cr, ngx_str_t *answer);
static void ngx_http_smartflow_cred_save_thread(void *data, ngx_log_t *log);
static void ngx_http_smartflow_cred_saved(ngx_event_t *ev);
static u_char *ngx_http_smartflow_cred_fingerprint(u_char *p, u_char *secret,
    size_t len);
static void ngx_http_smartflow_cred_wipe(void *data);
static void ngx_http_smartflow_cred_wipe_request(void *data);


static ngx_http_smartflow_credentials_t *
ngx_http_smartflow_cred_conf(ngx_conf_t *cf)
{
    ngx_http_smartflow_main_conf_t  *smcf;

    smcf = ngx_http_conf_get_module_main_conf(cf,
                                              ngx_http_smartflow_proxy_module);

    if (smcf->credentials == NULL) {
        smcf->credentials = ngx_pcalloc(cf->pool,
                                   sizeof(ngx_http_smartflow_credentials_t));
    }

    return smcf->credentials;
}


/* smartflow_credentials_key file:PATH | env:VAR; */
char *
ngx_http_smartflow_credentials_key(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    u_char                            *p, *last, *raw, hex[64];
    ssize_t                            n;
    ngx_fd_t                           fd;
    ngx_str_t                         *value, name;
    ngx_uint_t                         i;
    ngx_int_t                          c;
    ngx_http_smartflow_credentials_t  *cr;

    cr = ngx_http_smartflow_cred_conf(cf);
    if (cr == NULL) {
        return NGX_CONF_ERROR;
    }

    if (cr->key_set) {
        return "is duplicate";
    }

    value = cf->args->elts;
    raw = NULL;

    if (ngx_strncmp(value[1].data, "env:", 4) == 0) {
        p = (u_char *) getenv((char *) value[1].data + 4);
        if (p == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "smartflow_credentials_key: the environment "
                               "has no %s", value[1].data + 4);
            return NGX_CONF_ERROR;
        }

        n = ngx_strlen(p);
        last = p + n;

    } else if (ngx_strncmp(value[1].data, "file:", 5) == 0) {
        name.data = value[1].data + 5;
        name.len = value[1].len - 5;

        if (ngx_conf_full_name(cf->cycle, &name, 1) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        fd = ngx_open_file(name.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
        if (fd == NGX_INVALID_FILE) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                               "smartflow_credentials_key: cannot open "
                               "\"%V\"", &name);
            return NGX_CONF_ERROR;
        }

        raw = ngx_pnalloc(cf->temp_pool, 256);
        if (raw == NULL) {
            (void) ngx_close_file(fd);
            return NGX_CONF_ERROR;
        }

        p = raw;
        n = ngx_read_fd(fd, p, 256);
        (void) ngx_close_file(fd);

        if (n < 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                               "smartflow_credentials_key: cannot read "
                               "\"%V\"", &name);
            ngx_explicit_memzero(raw, 256);
            return NGX_CONF_ERROR;
        }

        last = p + n;

    } else {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow_credentials_key takes file:PATH or "
                           "env:VAR, not \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    /* 64 hex digits, white space around them allowed */
    while (p < last && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) {
        p++;
    }

    while (last > p
           && (last[-1] == ' ' || last[-1] == '\t' || last[-1] == '\r'
               || last[-1] == '\n'))
    {
        last--;
    }

    if (last - p != 64) {
        goto invalid;
    }

    ngx_memcpy(hex, p, 64);

    for (i = 0; i < 32; i++) {
        c = ngx_hextoi(&hex[2 * i], 2);
        if (c == NGX_ERROR) {
            goto invalid;
        }

        cr->key[i] = (u_char) c;
    }

    ngx_explicit_memzero(hex, sizeof(hex));

    if (raw) {
        ngx_explicit_memzero(raw, 256);
    }

    /* the key goes with the configuration that read it */
    if (ngx_http_smartflow_wipe_later(cf->pool, cr->key, sizeof(cr->key))
        != NGX_OK)
    {
        ngx_explicit_memzero(cr->key, sizeof(cr->key));
        return NGX_CONF_ERROR;
    }

    cr->key_set = 1;

    return NGX_CONF_OK;

invalid:

    ngx_explicit_memzero(hex, sizeof(hex));
    ngx_explicit_memzero(cr->key, sizeof(cr->key));

    if (raw) {
        ngx_explicit_memzero(raw, 256);
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "smartflow_credentials_key \"%V\" must hold 32 bytes "
                       "as 64 hex digits (openssl rand -hex 32)", &value[1]);
    return NGX_CONF_ERROR;
}


/* smartflow_credentials_store PATH [thread_pool=NAME]; */
char *
ngx_http_smartflow_credentials_store(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_str_t                         *value, pool, zname;
    ngx_uint_t                         i;
    ngx_http_smartflow_credentials_t  *cr;

    cr = ngx_http_smartflow_cred_conf(cf);
    if (cr == NULL) {
        return NGX_CONF_ERROR;
    }

    if (cr->path.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    cr->path = value[1];

    if (ngx_conf_full_name(cf->cycle, &cr->path, 0) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    ngx_str_null(&pool);

    for (i = 2; i < cf->args->nelts; i++) {
        if (ngx_strncmp(value[i].data, "thread_pool=", 12) == 0) {
            pool.data = value[i].data + 12;
            pool.len = value[i].len - 12;
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid smartflow_credentials_store parameter "
                           "\"%V\"", &value[i]);
        return NGX_CONF_ERROR;
    }

#if (NGX_THREADS)
    cr->thread_pool = ngx_thread_pool_add(cf, pool.len ? &pool : NULL);
    if (cr->thread_pool == NULL) {
        return NGX_CONF_ERROR;
    }
#else
    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "smartflow_credentials_store needs nginx built "
                       "with threads");
    return NGX_CONF_ERROR;
#endif

    ngx_str_set(&zname, "smartflow_credentials");

    cr->zone = ngx_shared_memory_add(cf, &zname, NGX_SMARTFLOW_CRED_ZONE_SIZE,
                                     &ngx_http_smartflow_proxy_module);
    if (cr->zone == NULL) {
        return NGX_CONF_ERROR;
    }

    cr->zone->init = ngx_http_smartflow_cred_init_zone;
    cr->zone->data = cr;
    cr->log = &cf->cycle->new_log;

    return NGX_CONF_OK;
}


/*
 * In the master once the configuration is read: the folder of a state
 * file the workers write (they rename into it) is made if missing, for
 * the workers' user.
 */
ngx_int_t
ngx_smartflow_state_dir(ngx_cycle_t *cycle, ngx_str_t *path, char *what)
{
    u_char           *p, *dir;
    ngx_err_t         err;
    ngx_core_conf_t  *ccf;

    dir = ngx_pnalloc(cycle->pool, path->len + 1);
    if (dir == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(dir, path->data, path->len);
    *p = '\0';

    while (p > dir && *p != '/') {
        p--;
    }

    if (p == dir) {
        return NGX_OK;
    }

    *p = '\0';

    if (ngx_create_dir(dir, 0700) == NGX_FILE_ERROR) {
        err = ngx_errno;

        if (err == NGX_EEXIST) {
            return NGX_OK;
        }

        ngx_log_error(NGX_LOG_EMERG, cycle->log, err,
                      ngx_create_dir_n " \"%s\" for the %s failed",
                      dir, what);
        return NGX_ERROR;
    }

    ccf = (ngx_core_conf_t *) ngx_get_conf(cycle->conf_ctx, ngx_core_module);

    if (geteuid() == 0 && ccf->user != (ngx_uid_t) NGX_CONF_UNSET_UINT
        && chown((const char *) dir, ccf->user, -1) == -1)
    {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, ngx_errno,
                      "chown(\"%s\", %d) failed", dir, ccf->user);
        return NGX_ERROR;
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_smartflow_credentials_init_module(ngx_cycle_t *cycle)
{
    ngx_http_smartflow_main_conf_t  *smcf;

    smcf = ngx_http_cycle_get_module_main_conf(cycle,
                                              ngx_http_smartflow_proxy_module);

    if (smcf == NULL || smcf->credentials == NULL
        || smcf->credentials->path.data == NULL)
    {
        return NGX_OK;
    }

    return ngx_smartflow_state_dir(cycle, &smcf->credentials->path,
                                   "credentials store");
}


/* checked once the configuration is read: a store needs the key */
ngx_int_t
ngx_http_smartflow_credentials_check(ngx_conf_t *cf,
    ngx_http_smartflow_main_conf_t *smcf)
{
    ngx_http_smartflow_credentials_t  *cr = smcf->credentials;

    if (cr && cr->path.data && !cr->key_set) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow_credentials_store \"%V\" needs "
                           "smartflow_credentials_key", &cr->path);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* a provider's key=enc:v1:...: opened while the configuration is read */
ngx_int_t
ngx_http_smartflow_credentials_unseal(ngx_conf_t *cf, ngx_str_t *name,
    ngx_str_t *key)
{
    u_char                            *plain;
    size_t                             len;
    ngx_str_t                          sealed;
    ngx_http_smartflow_credentials_t  *cr;

    cr = ngx_http_smartflow_cred_conf(cf);
    if (cr == NULL) {
        return NGX_ERROR;
    }

    if (!cr->key_set) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow provider \"%V\": key=enc: needs "
                           "smartflow_credentials_key before it", name);
        return NGX_ERROR;
    }

    sealed.data = key->data + sizeof(NGX_SMARTFLOW_CRED_PREFIX) - 1;
    sealed.len = key->len - (sizeof(NGX_SMARTFLOW_CRED_PREFIX) - 1);

    plain = ngx_pnalloc(cf->pool, NGX_SMARTFLOW_CRED_MAX);
    if (plain == NULL
        || ngx_http_smartflow_wipe_later(cf->pool, plain,
                                         NGX_SMARTFLOW_CRED_MAX)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_http_smartflow_cred_open(cr, name, &sealed, plain, &len)
        != NGX_OK)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow provider \"%V\": its key=enc: value "
                           "does not open with smartflow_credentials_key "
                           "(another key, another provider, or damaged)",
                           name);
        return NGX_ERROR;
    }

    key->data = plain;
    key->len = len;

    return NGX_OK;
}


/*
 * The credential the admin API set for a provider, as the header wants it
 * ("Bearer KEY" for OpenAI's, the key alone otherwise); NGX_DECLINED when
 * there is none and the configured one holds.
 */
ngx_int_t
ngx_http_smartflow_credentials_get(ngx_http_request_t *r,
    ngx_http_smartflow_provider_t *pr, ngx_str_t *out)
{
    u_char                            *p;
    ngx_smartflow_cred_slot_t         *s;
    ngx_http_smartflow_credentials_t  *cr;
    ngx_http_smartflow_main_conf_t    *smcf;

    smcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_proxy_module);
    cr = smcf->credentials;

    if (cr == NULL || cr->sh == NULL || cr->sh->generation == 0) {
        return NGX_DECLINED;
    }

    ngx_shmtx_lock(&cr->shpool->mutex);

    s = ngx_http_smartflow_cred_find(cr->sh, &pr->name);

    if (s == NULL) {
        ngx_shmtx_unlock(&cr->shpool->mutex);
        return NGX_DECLINED;
    }

    p = ngx_pnalloc(r->pool, sizeof("Bearer ") - 1 + s->len);

    if (p == NULL
        || ngx_http_smartflow_wipe_later(r->pool, p,
                                              sizeof("Bearer ") - 1 + s->len)
           != NGX_OK)
    {
        ngx_shmtx_unlock(&cr->shpool->mutex);
        return NGX_ERROR;
    }

    out->data = p;

    if (pr->type == NGX_HTTP_SMARTFLOW_PROVIDER_OPENAI) {
        p = ngx_sf_cpymem(p, "Bearer ");
    }

    p = ngx_cpymem(p, s->secret, s->len);
    out->len = p - out->data;

    ngx_shmtx_unlock(&cr->shpool->mutex);

    return NGX_OK;
}


/* nonce, ciphertext and tag, base64url; out needs room for all three */
static ngx_int_t
ngx_http_smartflow_cred_seal(ngx_http_smartflow_credentials_t *cr,
    ngx_str_t *name, ngx_str_t *plain, u_char *out)
{
    int              n, m;
    u_char           raw[NGX_SMARTFLOW_CRED_NONCE + NGX_SMARTFLOW_CRED_MAX
                         + NGX_SMARTFLOW_CRED_TAG];
    ngx_str_t        src, dst;
    ngx_int_t        rc;
    EVP_CIPHER_CTX  *c;

    if (plain->len > NGX_SMARTFLOW_CRED_MAX
        || RAND_bytes(raw, NGX_SMARTFLOW_CRED_NONCE) != 1)
    {
        return NGX_ERROR;
    }

    c = EVP_CIPHER_CTX_new();
    if (c == NULL) {
        return NGX_ERROR;
    }

    rc = NGX_ERROR;

    if (EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, cr->key, raw) != 1
        || EVP_EncryptUpdate(c, NULL, &n, name->data, (int) name->len) != 1
        || EVP_EncryptUpdate(c, raw + NGX_SMARTFLOW_CRED_NONCE, &n,
                             plain->data, (int) plain->len) != 1
        || EVP_EncryptFinal_ex(c, raw + NGX_SMARTFLOW_CRED_NONCE + n, &m)
           != 1
        || EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG,
                               NGX_SMARTFLOW_CRED_TAG,
                               raw + NGX_SMARTFLOW_CRED_NONCE + n + m) != 1)
    {
        goto done;
    }

    src.data = raw;
    src.len = NGX_SMARTFLOW_CRED_NONCE + n + m + NGX_SMARTFLOW_CRED_TAG;
    dst.data = out;

    ngx_encode_base64url(&dst, &src);
    out[dst.len] = '\0';

    rc = NGX_OK;

done:

    EVP_CIPHER_CTX_free(c);
    ngx_explicit_memzero(raw, sizeof(raw));

    return rc;
}


static ngx_int_t
ngx_http_smartflow_cred_open(ngx_http_smartflow_credentials_t *cr,
    ngx_str_t *name, ngx_str_t *sealed, u_char *out, size_t *len)
{
    int              n, m;
    u_char           raw[NGX_SMARTFLOW_CRED_NONCE + NGX_SMARTFLOW_CRED_MAX
                         + NGX_SMARTFLOW_CRED_TAG];
    size_t           clen;
    ngx_str_t        src, dst;
    ngx_int_t        rc;
    EVP_CIPHER_CTX  *c;

    if (sealed->len > ngx_base64_encoded_length(sizeof(raw))) {
        return NGX_ERROR;
    }

    src = *sealed;
    dst.data = raw;

    if (ngx_decode_base64url(&dst, &src) != NGX_OK
        || dst.len <= NGX_SMARTFLOW_CRED_NONCE + NGX_SMARTFLOW_CRED_TAG)
    {
        return NGX_ERROR;
    }

    clen = dst.len - NGX_SMARTFLOW_CRED_NONCE - NGX_SMARTFLOW_CRED_TAG;

    c = EVP_CIPHER_CTX_new();
    if (c == NULL) {
        return NGX_ERROR;
    }

    rc = NGX_ERROR;

    if (EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, cr->key, raw) != 1
        || EVP_DecryptUpdate(c, NULL, &n, name->data, (int) name->len) != 1
        || EVP_DecryptUpdate(c, out, &n, raw + NGX_SMARTFLOW_CRED_NONCE,
                             (int) clen) != 1
        || EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG,
                               NGX_SMARTFLOW_CRED_TAG,
                               raw + NGX_SMARTFLOW_CRED_NONCE + clen) != 1
        || EVP_DecryptFinal_ex(c, out + n, &m) != 1)
    {
        /* a wrong key or name, or a changed byte: nothing is kept */
        ngx_explicit_memzero(out, clen);
        goto done;
    }

    *len = n + m;
    rc = NGX_OK;

done:

    EVP_CIPHER_CTX_free(c);
    ngx_explicit_memzero(raw, sizeof(raw));

    return rc;
}


static ngx_int_t
ngx_http_smartflow_cred_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_http_smartflow_credentials_t  *ocr = data;

    ngx_http_smartflow_credentials_t  *cr;

    cr = shm_zone->data;
    cr->shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (ocr) {
        /* a reload: the credentials set at run time stay */
        cr->sh = ocr->sh;
        return NGX_OK;
    }

    if (shm_zone->shm.exists) {
        cr->sh = cr->shpool->data;
        return NGX_OK;
    }

    cr->sh = ngx_slab_calloc(cr->shpool, sizeof(ngx_smartflow_cred_sh_t));
    if (cr->sh == NULL) {
        return NGX_ERROR;
    }

    cr->shpool->data = cr->sh;

    return ngx_http_smartflow_cred_load(cr, shm_zone->shm.log);
}


/*
 * The store file:
 *
 *   {"version":1,"generation":N,"credentials":[
 *     {"provider":"openai","updated":1764201600,"sealed":"..."}, ...]}
 */
static ngx_int_t
ngx_http_smartflow_cred_load(ngx_http_smartflow_credentials_t *cr,
    ngx_log_t *log)
{
    u_char                     *buf;
    size_t                      len;
    ssize_t                     n;
    ngx_fd_t                    fd;
    ngx_str_t                   err, name;
    ngx_int_t                   rc;
    ngx_uint_t                  i;
    ngx_pool_t                 *pool;
    ngx_file_info_t             fi;
    ngx_smartflow_json_t       *doc, *list, *item, *p, *u, *s, *g;
    ngx_smartflow_cred_slot_t  *slot;

    fd = ngx_open_file(cr->path.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);

    if (fd == NGX_INVALID_FILE) {
        if (ngx_errno == NGX_ENOENT) {
            return NGX_OK;      /* nothing set yet */
        }

        ngx_log_error(NGX_LOG_EMERG, log, ngx_errno,
                      "smartflow credentials: cannot open \"%V\"",
                      &cr->path);
        return NGX_ERROR;
    }

    pool = ngx_create_pool(4096, log);
    if (pool == NULL) {
        (void) ngx_close_file(fd);
        return NGX_ERROR;
    }

    rc = NGX_ERROR;

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR
        || ngx_file_size(&fi) > NGX_SMARTFLOW_CRED_FILE_MAX)
    {
        ngx_log_error(NGX_LOG_EMERG, log, 0,
                      "smartflow credentials: \"%V\" is not a store file",
                      &cr->path);
        goto done;
    }

    len = (size_t) ngx_file_size(&fi);

    buf = ngx_pnalloc(pool, len + 1);
    if (buf == NULL) {
        goto done;
    }

    n = ngx_read_fd(fd, buf, len);
    if (n != (ssize_t) len) {
        ngx_log_error(NGX_LOG_EMERG, log, ngx_errno,
                      "smartflow credentials: cannot read \"%V\"",
                      &cr->path);
        goto done;
    }

    doc = ngx_smartflow_json_parse(pool, buf, len, &err);
    list = doc ? ngx_smartflow_json_get(doc, "credentials") : NULL;
    g = doc ? ngx_smartflow_json_get(doc, "generation") : NULL;

    if (list == NULL || list->type != NGX_SMARTFLOW_JSON_ARRAY
        || g == NULL || g->type != NGX_SMARTFLOW_JSON_NUMBER
        || ngx_atoi(g->str.data, g->str.len) == NGX_ERROR)
    {
        ngx_log_error(NGX_LOG_EMERG, log, 0,
                      "smartflow credentials: \"%V\" is damaged", &cr->path);
        goto done;
    }

    i = 0;

    for (item = list->child; item; item = item->next) {
        p = ngx_smartflow_json_get(item, "provider");
        s = ngx_smartflow_json_get(item, "sealed");
        u = ngx_smartflow_json_get(item, "updated");

        if (!ngx_smartflow_json_is_string(p) || !ngx_smartflow_json_is_string(s)
            || u == NULL || u->type != NGX_SMARTFLOW_JSON_NUMBER
            || p->str.len == 0 || p->str.len > NGX_SMARTFLOW_CRED_NAME
            || i == NGX_SMARTFLOW_CRED_SLOTS)
        {
            ngx_log_error(NGX_LOG_EMERG, log, 0,
                          "smartflow credentials: \"%V\" is damaged",
                          &cr->path);
            goto done;
        }

        slot = &cr->sh->slot[i++];
        name = p->str;

        if (ngx_http_smartflow_cred_open(cr, &name, &s->str, slot->secret,
                                         &slot->len)
            != NGX_OK)
        {
            ngx_log_error(NGX_LOG_EMERG, log, 0,
                          "smartflow credentials: the credential of "
                          "provider \"%V\" in \"%V\" does not open with "
                          "smartflow_credentials_key (another key, or a "
                          "changed file)", &name, &cr->path);
            goto done;
        }

        ngx_memcpy(slot->name, name.data, name.len);
        slot->name_len = name.len;
        slot->updated = ngx_atoi(u->str.data, u->str.len);
        slot->used = 1;
    }

    /* 0 means "nothing set": a file that exists counts as something */
    cr->sh->generation = ngx_max(ngx_atoi(g->str.data, g->str.len), 1);

    ngx_log_error(NGX_LOG_NOTICE, log, 0,
                  "smartflow credentials: %ui provider credential(s) "
                  "read from \"%V\"", i, &cr->path);

    rc = NGX_OK;

done:

    if (rc != NGX_OK) {
        /* nginx does not start: what was opened goes */
        ngx_explicit_memzero(cr->sh->slot, sizeof(cr->sh->slot));
    }

    (void) ngx_close_file(fd);
    ngx_destroy_pool(pool);

    return rc;
}


static ngx_smartflow_cred_slot_t *
ngx_http_smartflow_cred_find(ngx_smartflow_cred_sh_t *sh, ngx_str_t *name)
{
    ngx_uint_t  i;

    for (i = 0; i < NGX_SMARTFLOW_CRED_SLOTS; i++) {
        if (sh->slot[i].used && sh->slot[i].name_len == name->len
            && ngx_memcmp(sh->slot[i].name, name->data, name->len) == 0)
        {
            return &sh->slot[i];
        }
    }

    return NULL;
}


static ngx_http_smartflow_provider_t *
ngx_http_smartflow_cred_provider(ngx_http_request_t *r, ngx_str_t *name)
{
    ngx_uint_t                        i;
    ngx_http_smartflow_provider_t   **pr;
    ngx_http_smartflow_main_conf_t   *smcf;

    smcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_proxy_module);
    pr = smcf->providers.elts;

    for (i = 0; i < smcf->providers.nelts; i++) {
        if (pr[i]->name.len == name->len
            && ngx_memcmp(pr[i]->name.data, name->data, name->len) == 0)
        {
            return pr[i];
        }
    }

    return NULL;
}


/*
 * The admin API, under a prefix location (conf/smartflow_admin.conf puts
 * it at /api/providers):
 *
 *   GET    /api/providers                    providers, where each
 *                                            credential comes from
 *   PUT    /api/providers/NAME/credential    {"key":"..."}: set it
 *   DELETE /api/providers/NAME/credential    back to the configured one
 *   POST   /api/providers/NAME/seal          {"key":"..."}: the enc:v1:
 *                                            value for key= in nginx.conf
 */
ngx_int_t
ngx_http_smartflow_credentials_handler(ngx_http_request_t *r)
{
    ngx_int_t                  rc;
    ngx_str_t                  name, op;
    ngx_http_smartflow_ctx_t  *ctx;

    ctx = ngx_http_smartflow_get_ctx(r);

    if (ctx == NULL || !ctx->master) {
        return ngx_http_smartflow_error(r, NGX_HTTP_FORBIDDEN,
                   "permission_error", "master_key_required", NULL,
                   "The admin API takes the master key only.");
    }

    rc = ngx_http_smartflow_cred_path(r, &name, &op);

    if (rc == NGX_DECLINED) {
        if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
            goto method;
        }

        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_http_smartflow_cred_list(r);
    }

    if (rc != NGX_OK) {
        goto unknown;
    }

    if (ngx_http_smartflow_cred_provider(r, &name) == NULL) {
        return ngx_http_smartflow_error(r, NGX_HTTP_NOT_FOUND,
                   "invalid_request_error", "provider_not_found", NULL,
                   "No provider is named \"%V\".", &name);
    }

    if (op.len == 10 && ngx_strncmp(op.data, "credential", 10) == 0) {
        if (r->method == NGX_HTTP_DELETE) {
            rc = ngx_http_discard_request_body(r);
            if (rc != NGX_OK) {
                return rc;
            }

            return ngx_http_smartflow_cred_run(r, &name, &op);
        }

        if (r->method != NGX_HTTP_PUT) {
            goto method;
        }

    } else if (op.len == 4 && ngx_strncmp(op.data, "seal", 4) == 0) {
        if (r->method != NGX_HTTP_POST) {
            goto method;
        }

    } else {
        goto unknown;
    }

    if (r->headers_in.content_length_n > NGX_SMARTFLOW_CRED_BODY_MAX) {
        return ngx_http_smartflow_cred_too_large(r);
    }

    r->request_body_in_single_buf = 1;

    rc = ngx_http_read_client_request_body(r, ngx_http_smartflow_cred_body);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;

method:

    return ngx_http_smartflow_error(r, NGX_HTTP_NOT_ALLOWED,
               "invalid_request_error", "method_not_allowed", NULL,
               "%V is not allowed here.", &r->method_name);

unknown:

    return ngx_http_smartflow_error(r, NGX_HTTP_NOT_FOUND,
               "invalid_request_error", "unknown_url", NULL,
               "Unknown admin path: %V.", &r->uri);
}


/*
 * The path after the location's prefix: NGX_OK for "NAME/OP",
 * NGX_DECLINED for nothing (the list), NGX_ERROR for anything else.
 */
static ngx_int_t
ngx_http_smartflow_cred_path(ngx_http_request_t *r, ngx_str_t *name,
    ngx_str_t *op)
{
    u_char                    *p, *last, *slash;
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    p = r->uri.data + ngx_min(clcf->name.len, r->uri.len);
    last = r->uri.data + r->uri.len;

    while (last > p && last[-1] == '/') {
        last--;
    }

    while (p < last && *p == '/') {
        p++;
    }

    if (p == last) {
        return NGX_DECLINED;
    }

    slash = ngx_strlchr(p, last, '/');

    if (slash == NULL) {
        return NGX_ERROR;
    }

    name->data = p;
    name->len = slash - p;
    op->data = slash + 1;
    op->len = last - op->data;

    return NGX_OK;
}


static void
ngx_http_smartflow_cred_body(ngx_http_request_t *r)
{
    ngx_str_t  name, op;

    /* the path was checked before the body was read */
    (void) ngx_http_smartflow_cred_path(r, &name, &op);

    ngx_http_finalize_request(r, ngx_http_smartflow_cred_run(r, &name, &op));
}


/*
 * The body as one string.  Even with request_body_in_single_buf it may
 * come as two buffers (what was read with the headers, then the rest), or
 * in a file when client_body_buffer_size is smaller; NGX_DECLINED when it
 * is over NGX_SMARTFLOW_CRED_BODY_MAX (a chunked body has no length
 * before it is read).
 */
static ngx_int_t
ngx_http_smartflow_cred_read_body(ngx_http_request_t *r, ngx_str_t *body)
{
    u_char       *p;
    size_t        len;
    ssize_t       n;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    ngx_str_null(body);

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        return NGX_OK;
    }

    len = 0;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;
        len += b->in_file ? (size_t) (b->file_last - b->file_pos)
                          : (size_t) (b->last - b->pos);
    }

    if (len > NGX_SMARTFLOW_CRED_BODY_MAX) {
        return NGX_DECLINED;
    }

    cl = r->request_body->bufs;

    if (cl->next == NULL && !cl->buf->in_file) {
        body->data = cl->buf->pos;
        body->len = len;
        return NGX_OK;
    }

    body->data = ngx_pnalloc(r->pool, len + 1);
    if (body->data == NULL) {
        return NGX_ERROR;
    }

    p = body->data;

    for ( /* void */ ; cl; cl = cl->next) {
        b = cl->buf;

        if (!b->in_file) {
            p = ngx_cpymem(p, b->pos, b->last - b->pos);
            continue;
        }

        n = ngx_read_file(b->file, p, b->file_last - b->file_pos,
                          b->file_pos);

        if (n != b->file_last - b->file_pos) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "smartflow credentials: reading the buffered "
                          "body failed");
            return NGX_ERROR;
        }

        p += n;
    }

    body->len = p - body->data;

    return NGX_OK;
}


static ngx_int_t
ngx_http_smartflow_cred_too_large(ngx_http_request_t *r)
{
    return ngx_http_smartflow_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
               "invalid_request_error", "body_too_large", NULL,
               "The request body is over %d bytes; a key is at most %d.",
               NGX_SMARTFLOW_CRED_BODY_MAX, NGX_SMARTFLOW_CRED_MAX);
}


static ngx_int_t
ngx_http_smartflow_cred_run(ngx_http_request_t *r, ngx_str_t *name,
    ngx_str_t *op)
{
    u_char                            *p, *out;
    size_t                             len;
    ngx_str_t                          body, err, answer, copy;
    ngx_uint_t                         i;
    ngx_chain_t                       *cl;
    ngx_smartflow_json_t              *doc, *key, *f;
    ngx_smartflow_cred_slot_t         *s;
    ngx_http_smartflow_credentials_t  *cr;
    ngx_http_smartflow_main_conf_t    *smcf;

    smcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_proxy_module);
    cr = smcf->credentials;

    if (cr == NULL || !cr->key_set
        || (op->data[0] == 'c' && cr->sh == NULL))
    {
        return ngx_http_smartflow_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                   "invalid_request_error", "credentials_disabled", NULL,
                   "Provider credentials cannot be managed here: "
                   "configure smartflow_credentials_key and "
                   "smartflow_credentials_store.");
    }

    key = NULL;

    if (r->method != NGX_HTTP_DELETE) {
        switch (ngx_http_smartflow_cred_read_body(r, &body)) {

        case NGX_OK:
            /*
             * the body is wiped at the end, and so is the parser's copy
             * of it below, where the key is unescaped in place
             */
            for (cl = r->request_body ? r->request_body->bufs : NULL;
                 cl;
                 cl = cl->next)
            {
                if (!cl->buf->in_file
                    && ngx_http_smartflow_wipe_later(r->pool,
                           cl->buf->pos, cl->buf->last - cl->buf->pos)
                       != NGX_OK)
                {
                    return NGX_HTTP_INTERNAL_SERVER_ERROR;
                }
            }

            if (body.len
                && ngx_http_smartflow_wipe_later(r->pool, body.data,
                                                      body.len)
                   != NGX_OK)
            {
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            break;

        case NGX_DECLINED:
            return ngx_http_smartflow_cred_too_large(r);

        default:
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        doc = ngx_smartflow_json_parse_copy(r->pool, body.data, body.len,
                                            &err, &copy);

        /* the key's unescaped text leaves its escaped tail behind it */
        if (copy.len
            && ngx_http_smartflow_wipe_later(r->pool, copy.data, copy.len)
               != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (doc == NULL || doc->type != NGX_SMARTFLOW_JSON_OBJECT) {
            return ngx_http_smartflow_error(r, NGX_HTTP_BAD_REQUEST,
                       "invalid_request_error", "invalid_json", NULL,
                       "The body must be a JSON object {\"key\": \"...\"}.");
        }

        for (f = doc->child; f; f = f->next) {
            if (f->key.len != 3 || ngx_strncmp(f->key.data, "key", 3) != 0) {
                return ngx_http_smartflow_error(r, NGX_HTTP_BAD_REQUEST,
                           "invalid_request_error", "unknown_field",
                           NULL, "Unknown field \"%V\".", &f->key);
            }

            key = f;
        }

        if (!ngx_smartflow_json_is_string(key) || key->str.len == 0
            || key->str.len > NGX_SMARTFLOW_CRED_MAX)
        {
            return ngx_http_smartflow_error(r, NGX_HTTP_BAD_REQUEST,
                       "invalid_request_error", "invalid_key", "key",
                       "\"key\" must be a string of 1 to %d bytes.",
                       NGX_SMARTFLOW_CRED_MAX);
        }

        for (i = 0; i < key->str.len; i++) {
            if (key->str.data[i] < 0x21 || key->str.data[i] > 0x7e) {
                /* it goes into a header: printable ASCII only */
                return ngx_http_smartflow_error(r, NGX_HTTP_BAD_REQUEST,
                           "invalid_request_error", "invalid_key", "key",
                           "\"key\" must be printable ASCII without "
                           "spaces.");
            }
        }
    }

    if (op->data[0] == 's') {
        /* seal: the value for key= in nginx.conf, nothing stored */
        out = ngx_pnalloc(r->pool,
                    ngx_base64_encoded_length(NGX_SMARTFLOW_CRED_NONCE
                                              + NGX_SMARTFLOW_CRED_MAX
                                              + NGX_SMARTFLOW_CRED_TAG) + 1);
        len = sizeof("{\"provider\":\"\",\"value\":\"" NGX_SMARTFLOW_CRED_PREFIX
                     "\"}") + name->len
              + ngx_base64_encoded_length(NGX_SMARTFLOW_CRED_NONCE
                                          + NGX_SMARTFLOW_CRED_MAX
                                          + NGX_SMARTFLOW_CRED_TAG);
        p = ngx_pnalloc(r->pool, len);

        if (out == NULL || p == NULL
            || ngx_http_smartflow_cred_seal(cr, name, &key->str, out)
               != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        answer.data = p;
        answer.len = ngx_sprintf(p, "{\"provider\":\"%V\",\"value\":\""
                                 NGX_SMARTFLOW_CRED_PREFIX "%s\"}",
                                 name, out)
                     - p;

        return ngx_http_smartflow_send_json(r, NGX_HTTP_OK, &answer);
    }

    /* set or remove it in the zone, then write the store */
    ngx_shmtx_lock(&cr->shpool->mutex);

    s = ngx_http_smartflow_cred_find(cr->sh, name);

    if (r->method == NGX_HTTP_DELETE) {
        if (s == NULL) {
            ngx_shmtx_unlock(&cr->shpool->mutex);

            return ngx_http_smartflow_error(r, NGX_HTTP_NOT_FOUND,
                       "invalid_request_error", "credential_not_found", NULL,
                       "Provider \"%V\" has no credential set through the "
                       "API.", name);
        }

        ngx_explicit_memzero(s->secret, sizeof(s->secret));
        s->used = 0;

    } else {
        if (s == NULL) {
            for (i = 0; i < NGX_SMARTFLOW_CRED_SLOTS; i++) {
                if (!cr->sh->slot[i].used) {
                    s = &cr->sh->slot[i];
                    break;
                }
            }

            /* one slot per configured provider at most: always found */
            if (s == NULL) {
                ngx_shmtx_unlock(&cr->shpool->mutex);
                return NGX_HTTP_INTERNAL_SERVER_ERROR;
            }

            ngx_memcpy(s->name, name->data, name->len);
            s->name_len = name->len;
        }

        /* a shorter key leaves nothing of the one before */
        ngx_explicit_memzero(s->secret, sizeof(s->secret));
        ngx_memcpy(s->secret, key->str.data, key->str.len);
        s->len = key->str.len;
        s->updated = ngx_time();
        s->used = 1;
    }

    cr->sh->generation++;

    ngx_shmtx_unlock(&cr->shpool->mutex);

    ngx_log_error(NGX_LOG_NOTICE, r->connection->log, 0,
                  "smartflow credentials: provider \"%V\" credential %s "
                  "through the admin API", name,
                  r->method == NGX_HTTP_DELETE ? "removed" : "set");

    p = ngx_pnalloc(r->pool, name->len + 128);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    answer.data = p;
    p = ngx_sprintf(p, "{\"provider\":\"%V\",\"credential\":", name);

    if (r->method == NGX_HTTP_DELETE) {
        p = ngx_sf_cpymem(p, "\"config\"}");

    } else {
        p = ngx_sf_cpymem(p, "\"api\",\"fingerprint\":\"sha256:");
        p = ngx_http_smartflow_cred_fingerprint(p, key->str.data,
                                                key->str.len);
        p = ngx_sprintf(p, "\",\"updated\":%T}", ngx_time());
    }

    answer.len = p - answer.data;

    return ngx_http_smartflow_cred_save(r, cr, &answer);
}


static ngx_int_t
ngx_http_smartflow_cred_list(ngx_http_request_t *r)
{
    u_char                            *p;
    size_t                             len;
    ngx_str_t                          answer, auth;
    ngx_uint_t                         i;
    ngx_http_smartflow_provider_t    **pr;
    ngx_http_smartflow_main_conf_t    *smcf;

    static char  *types[] = { "openai", "anthropic", "gemini", "echo" };

    smcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_proxy_module);
    pr = smcf->providers.elts;

    len = sizeof("{\"object\":\"list\",\"data\":[]}");

    for (i = 0; i < smcf->providers.nelts; i++) {
        len += pr[i]->name.len + 160;
    }

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    answer.data = p;
    p = ngx_sf_cpymem(p, "{\"object\":\"list\",\"data\":[");

    for (i = 0; i < smcf->providers.nelts; i++) {
        p = ngx_sprintf(p, "%s{\"name\":\"%V\",\"type\":\"%s\","
                        "\"credential\":", i ? "," : "", &pr[i]->name,
                        types[pr[i]->type]);

        switch (ngx_http_smartflow_credentials_get(r, pr[i], &auth)) {

        case NGX_OK:
            p = ngx_sf_cpymem(p, "\"api\",\"fingerprint\":\"sha256:");
            if (pr[i]->type == NGX_HTTP_SMARTFLOW_PROVIDER_OPENAI) {
                auth.data += sizeof("Bearer ") - 1;
                auth.len -= sizeof("Bearer ") - 1;
            }
            p = ngx_http_smartflow_cred_fingerprint(p, auth.data, auth.len);
            ngx_explicit_memzero(auth.data, auth.len);
            *p++ = '"';
            break;

        case NGX_DECLINED:
            if (pr[i]->auth.len || pr[i]->api_key.len) {
                auth = pr[i]->auth.len ? pr[i]->auth : pr[i]->api_key;
                if (pr[i]->auth.len) {
                    auth.data += sizeof("Bearer ") - 1;
                    auth.len -= sizeof("Bearer ") - 1;
                }
                p = ngx_sf_cpymem(p, "\"config\",\"fingerprint\":\"sha256:");
                p = ngx_http_smartflow_cred_fingerprint(p, auth.data,
                                                        auth.len);
                *p++ = '"';

            } else {
                p = ngx_sf_cpymem(p, "\"none\"");
            }

            break;

        default:
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        *p++ = '}';
    }

    p = ngx_sf_cpymem(p, "]}");
    answer.len = p - answer.data;

    return ngx_http_smartflow_send_json(r, NGX_HTTP_OK, &answer);
}


/* "sha256:" and 16 hex digits: tells credentials apart, reveals none */
static u_char *
ngx_http_smartflow_cred_fingerprint(u_char *p, u_char *secret, size_t len)
{
    u_char  md[32];

    if (ngx_smartflow_sha256(secret, len, md) != NGX_OK) {
        ngx_memzero(md, sizeof(md));
    }

    return ngx_hex_dump(p, md, 8);
}


/*
 * A copy of a secret is wiped when its pool goes: a request's, or a
 * cycle's for what the configuration holds.
 */
ngx_int_t
ngx_http_smartflow_wipe_later(ngx_pool_t *pool, u_char *data, size_t len)
{
    ngx_str_t           *s;
    ngx_pool_cleanup_t  *cln;

    cln = ngx_pool_cleanup_add(pool, sizeof(ngx_str_t));
    if (cln == NULL) {
        return NGX_ERROR;
    }

    s = cln->data;
    s->data = data;
    s->len = len;

    cln->handler = ngx_http_smartflow_cred_wipe;

    return NGX_OK;
}


static void
ngx_http_smartflow_cred_wipe(void *data)
{
    ngx_str_t  *s = data;

    ngx_explicit_memzero(s->data, s->len);
}


/*
 * The request nginx's proxy builds for a provider holds its credential in
 * a header: the buffer of each attempt's request is wiped with the
 * request.  Called when a credential header is evaluated, the upstream
 * of the attempt exists and its request is about to be built.
 */
ngx_int_t
ngx_http_smartflow_wipe_upstream(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx)
{
    ngx_pool_cleanup_t  *cln;

    if (r->upstream == NULL || ctx->wiped_upstream == r->upstream) {
        return NGX_OK;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    cln->handler = ngx_http_smartflow_cred_wipe_request;
    cln->data = r->upstream;

    ctx->wiped_upstream = r->upstream;

    return NGX_OK;
}


static void
ngx_http_smartflow_cred_wipe_request(void *data)
{
    ngx_http_upstream_t *u = data;

    ngx_buf_t  *b;

    /* the proxy's request line, headers and body, in one buffer */
    if (u->request_bufs == NULL) {
        return;
    }

    b = u->request_bufs->buf;

    if (b->temporary && b->start && b->end > b->start) {
        ngx_explicit_memzero(b->start, b->end - b->start);
    }
}


/*
 * Seals every credential of the zone under fresh nonces and hands the file
 * to a thread; the API answers once it is on disk.
 */
static ngx_int_t
ngx_http_smartflow_cred_save(ngx_http_request_t *r,
    ngx_http_smartflow_credentials_t *cr, ngx_str_t *answer)
{
    u_char                     *p, *sealed;
    size_t                      size;
    ngx_str_t                   name, plain;
    ngx_uint_t                  i;
    ngx_thread_task_t          *task;
    ngx_smartflow_cred_save_t  *sv;
    ngx_smartflow_cred_slot_t  *s, copy;

    task = ngx_thread_task_alloc(r->pool, sizeof(ngx_smartflow_cred_save_t));
    if (task == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    sv = task->ctx;
    sv->r = r;
    sv->answer = *answer;

    size = sizeof("{\"version\":1,\"generation\":,\"credentials\":[\n]}\n")
           + NGX_ATOMIC_T_LEN
           + NGX_SMARTFLOW_CRED_SLOTS
             * (NGX_SMARTFLOW_CRED_NAME + NGX_TIME_T_LEN + 64
                + ngx_base64_encoded_length(NGX_SMARTFLOW_CRED_NONCE
                                            + NGX_SMARTFLOW_CRED_MAX
                                            + NGX_SMARTFLOW_CRED_TAG));

    sv->buf = ngx_pnalloc(r->pool, size);
    sealed = ngx_pnalloc(r->pool,
                    ngx_base64_encoded_length(NGX_SMARTFLOW_CRED_NONCE
                                              + NGX_SMARTFLOW_CRED_MAX
                                              + NGX_SMARTFLOW_CRED_TAG) + 1);
    /*
     * the store, its temporary file (mkstemp()'s template), its lock
     * file, its directory, each one NUL-terminated
     */
    sv->path = ngx_pnalloc(r->pool, 4 * cr->path.len + sizeof("")
                                    + sizeof(".XXXXXX") + sizeof(".lock")
                                    + sizeof(""));

    if (sv->buf == NULL || sealed == NULL || sv->path == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /*
     * the temporary file: mkstemp() in the thread makes it unique from
     * the six "X" that end its template
     */
    sv->temp = ngx_sprintf(sv->path, "%V%Z", &cr->path);
    sv->lock = ngx_sprintf(sv->temp, "%V.XXXXXX%Z", &cr->path);
    sv->dir = ngx_sprintf(sv->lock, "%V.lock%Z", &cr->path);
    (void) ngx_sprintf(sv->dir, "%V%Z", &cr->path);

    /* the path is absolute (ngx_conf_full_name): a '/' is found */
    for (i = cr->path.len; i > 1 && sv->dir[i - 1] != '/'; i--) {
        /* void */
    }

    sv->dir[i > 1 ? i - 1 : 1] = '\0';

    p = sv->buf;

    ngx_shmtx_lock(&cr->shpool->mutex);

    sv->generation = cr->sh->generation;
    p = ngx_sprintf(p, "{\"version\":1,\"generation\":%ui,\"credentials\":[",
                    sv->generation);

    for (i = 0; i < NGX_SMARTFLOW_CRED_SLOTS; i++) {
        s = &cr->sh->slot[i];

        if (!s->used) {
            continue;
        }

        copy = *s;
        name.data = copy.name;
        name.len = copy.name_len;
        plain.data = copy.secret;
        plain.len = copy.len;

        if (ngx_http_smartflow_cred_seal(cr, &name, &plain, sealed)
            != NGX_OK)
        {
            ngx_shmtx_unlock(&cr->shpool->mutex);
            ngx_explicit_memzero(&copy, sizeof(copy));
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        p = ngx_sprintf(p, "%s\n{\"provider\":\"%V\",\"updated\":%T,"
                        "\"sealed\":\"%s\"}",
                        p[-1] == '[' ? "" : ",", &name, copy.updated,
                        sealed);

        ngx_explicit_memzero(&copy, sizeof(copy));
    }

    ngx_shmtx_unlock(&cr->shpool->mutex);

    p = ngx_sf_cpymem(p, "\n]}\n");
    sv->len = p - sv->buf;

    task->handler = ngx_http_smartflow_cred_save_thread;
    task->event.handler = ngx_http_smartflow_cred_saved;
    task->event.data = sv;

    if (ngx_thread_task_post(cr->thread_pool, task) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->main->count++;

    return NGX_DONE;
}


/*
 * In a thread: a temporary file, fsync(), rename over the store, fsync()
 * of the directory.  Each save writes a whole snapshot into a temporary
 * file of its own (mkstemp()), so saves at once, from the threads of one
 * worker or from several workers, never write into each other's; under
 * the lock file, a snapshot replaces the store only if its generation is
 * not older than the one on disk, so the store always ends with the
 * latest state.
 */
static void
ngx_http_smartflow_cred_save_thread(void *data, ngx_log_t *log)
{
    ngx_smartflow_cred_save_t  *sv = data;

    u_char      head[64], *g, *end;
    ssize_t     n;
    ngx_fd_t    fd, lock, cur;
    ngx_uint_t  on_disk;

    fd = mkstemp((char *) sv->temp);
    if (fd == -1) {
        sv->failed = "mkstemp()";
        sv->err = ngx_errno;
        return;
    }

    n = write(fd, sv->buf, sv->len);

    if (n != (ssize_t) sv->len || fsync(fd) == -1) {
        sv->failed = (n != (ssize_t) sv->len) ? "write()" : "fsync()";
        sv->err = ngx_errno;
        (void) close(fd);
        (void) unlink((char *) sv->temp);
        return;
    }

    (void) close(fd);

    lock = open((char *) sv->lock, O_RDWR|O_CREAT, 0600);
    if (lock == -1 || flock(lock, LOCK_EX) == -1) {
        sv->failed = "open() or flock() of the lock file";
        sv->err = ngx_errno;
        if (lock != -1) {
            (void) close(lock);
        }
        (void) unlink((char *) sv->temp);
        return;
    }

    /* the generation on disk: the first line holds it */
    on_disk = 0;
    cur = open((char *) sv->path, O_RDONLY);

    if (cur != -1) {
        n = read(cur, head, sizeof(head) - 1);
        (void) close(cur);

        g = (n > 0) ? ngx_strlcasestrn(head, head + n,
                                       (u_char *) "\"generation\":", 12)
                    : NULL;

        if (g) {
            for (g += 13, end = g; end < head + n && *end >= '0'
                                   && *end <= '9'; end++)
            {
                on_disk = on_disk * 10 + (*end - '0');
            }
        }
    }

    if (on_disk > sv->generation) {
        /* another worker wrote a newer state first */
        (void) unlink((char *) sv->temp);

    } else if (rename((char *) sv->temp, (char *) sv->path) == -1) {
        sv->failed = "rename()";
        sv->err = ngx_errno;
        (void) unlink((char *) sv->temp);

    } else {
        fd = open((char *) sv->dir, O_RDONLY);

        if (fd == -1 || fsync(fd) == -1) {
            sv->failed = "fsync() of the directory";
            sv->err = ngx_errno;
        }

        if (fd != -1) {
            (void) close(fd);
        }
    }

    (void) close(lock);
}


static void
ngx_http_smartflow_cred_saved(ngx_event_t *ev)
{
    ngx_smartflow_cred_save_t  *sv = ev->data;

    ngx_int_t            rc;
    ngx_connection_t    *c;
    ngx_http_request_t  *r;

    r = sv->r;
    c = r->connection;

    if (sv->failed) {
        ngx_log_error(NGX_LOG_CRIT, c->log, sv->err,
                      "smartflow credentials: %s failed for \"%s\"; the "
                      "credential is in use but not on disk",
                      sv->failed, sv->path);

        rc = ngx_http_smartflow_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                 "api_error", "store_failed", NULL,
                 "The credential is in use but could not be written to the "
                 "store; see the error log.");

    } else {
        rc = ngx_http_smartflow_send_json(r, NGX_HTTP_OK, &sv->answer);
    }

    ngx_explicit_memzero(sv->buf, sv->len);

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}
