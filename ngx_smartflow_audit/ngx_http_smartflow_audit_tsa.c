/*
 * RFC 3161 timestamps on seals: SHA-256 of the seal file goes to the
 * configured time-stamping authority (OpenSSL's TS API for the query and
 * the answer, libcurl for the HTTP POST), and the answer is kept next to
 * the seal as segment-N.tsr.  Everything here blocks and runs in the
 * thread pool.  While the authority cannot be reached the query waits in
 * segment-N.tsq; one worker retries the spooled ones on a timer.
 */

#include <sys/file.h>
#include <curl/curl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ts.h>
#include <openssl/x509_vfy.h>

#include "ngx_http_smartflow_audit.h"


#define NGX_HTTP_SMARTFLOW_AUDIT_TSR_MAX  (64 * 1024)


typedef struct {
    u_char                     *data;
    size_t                      len;
} ngx_http_smartflow_audit_body_t;


static void ngx_http_smartflow_audit_tsa_copy(u_char *dst, size_t size,
    ngx_str_t *s);


static size_t
ngx_http_smartflow_audit_tsa_write(char *p, size_t size, size_t n,
    void *data)
{
    u_char                           *d;
    ngx_http_smartflow_audit_body_t  *b = data;

    if (b->len + size * n > NGX_HTTP_SMARTFLOW_AUDIT_TSR_MAX) {
        return 0;
    }

    d = realloc(b->data, b->len + size * n);
    if (d == NULL) {
        return 0;
    }

    ngx_memcpy(d + b->len, p, size * n);
    b->data = d;
    b->len += size * n;

    return size * n;
}


/*
 * A file written whole and read-only, or not at all: written under a
 * temporary name of this process's own, made read-only, flushed, and
 * renamed over the path (a reader never sees it in part; two processes
 * writing the same file, an old worker's thread and a new one's after a
 * reload, never share a temporary file).
 */
ngx_int_t
ngx_http_smartflow_audit_write_ro(u_char *path, u_char *data, size_t len,
    char *err, size_t errlen)
{
    ngx_fd_t  fd;
    u_char    tmp[NGX_MAX_PATH];

    ngx_snprintf(tmp, NGX_MAX_PATH, "%s.%P.tmp%Z", path, ngx_pid);

    /* this process's own leftover, from a write that failed */
    (void) unlink((char *) tmp);

    fd = open((char *) tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0600);
    if (fd == NGX_INVALID_FILE) {
        snprintf(err, errlen, "open(%s) failed: %s", tmp, strerror(errno));
        return NGX_ERROR;
    }

    if (write(fd, data, len) != (ssize_t) len || fchmod(fd, 0444) == -1
        || fsync(fd) == -1)
    {
        snprintf(err, errlen, "writing %s failed: %s", tmp, strerror(errno));
        (void) ngx_close_file(fd);
        (void) unlink((char *) tmp);
        return NGX_ERROR;
    }

    (void) ngx_close_file(fd);

    if (rename((char *) tmp, (char *) path) == -1) {
        snprintf(err, errlen, "rename(%s) failed: %s", tmp, strerror(errno));
        (void) unlink((char *) tmp);
        return NGX_ERROR;
    }

    return NGX_OK;
}


/*
 * smartflow_audit_tsa and smartflow_audit_tsa_ca as a thread takes them,
 * NUL-terminated, "" for none: for a seal, at start and at the retries
 */
void
ngx_http_smartflow_audit_tsa_conf(ngx_http_smartflow_audit_main_conf_t *amcf,
    u_char *url, size_t url_size, u_char *ca, size_t ca_size)
{
    ngx_http_smartflow_audit_tsa_copy(url, url_size, &amcf->tsa_url);
    ngx_http_smartflow_audit_tsa_copy(ca, ca_size, &amcf->tsa_ca);
}


static void
ngx_http_smartflow_audit_tsa_copy(u_char *dst, size_t size, ngx_str_t *s)
{
    size_t  n;

    n = ngx_min(s->len, size - 1);

    /* an unset string's data may be NULL */
    if (n) {
        ngx_memcpy(dst, s->data, n);
    }

    dst[n] = '\0';
}


/*
 * smartflow_audit_tsa_ca FILE: the CAs (PEM) a reply's signer must chain
 * up to; read here so that nginx -t says what is wrong with the file,
 * and again by each check, in the thread (a reload picks up a new one)
 */
char *
ngx_http_smartflow_audit_tsa_ca(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    char        *rv;
    ngx_str_t   *file;
    X509_STORE  *store;
    u_char       msg[256];

    rv = ngx_conf_set_str_slot(cf, cmd, conf);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    file = (ngx_str_t *) ((char *) conf + cmd->offset);

    /* a full name, NUL-terminated: ngx_conf_full_name allocates it so */
    if (ngx_conf_full_name(cf->cycle, file, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (file->len >= NGX_MAX_PATH) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow audit: \"%V\" is too long a path",
                           file);
        return NGX_CONF_ERROR;
    }

    if (access((char *) file->data, R_OK) == -1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "smartflow audit: cannot read "
                           "smartflow_audit_tsa_ca \"%V\"", file);
        return NGX_CONF_ERROR;
    }

    store = X509_STORE_new();
    if (store == NULL) {
        return NGX_CONF_ERROR;
    }

    if (X509_STORE_load_file(store, (char *) file->data) != 1
        || sk_X509_OBJECT_num(X509_STORE_get0_objects(store)) == 0)
    {
        ngx_memzero(msg, sizeof(msg));
        ERR_error_string_n(ERR_peek_last_error(), (char *) msg,
                           sizeof(msg) - 1);
        ERR_clear_error();
        X509_STORE_free(store);

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow audit: smartflow_audit_tsa_ca \"%V\" "
                           "holds no certificate that can be read (%s)",
                           file, msg[0] ? (char *) msg : "no PEM certificate");
        return NGX_CONF_ERROR;
    }

    X509_STORE_free(store);

    return NGX_CONF_OK;
}


/*
 * The answer's signature, made for time-stamping, by the certificate the
 * answer carries (the query asks for it).  With smartflow_audit_tsa_ca
 * that certificate must chain up to one of its CAs; without, whose
 * certificate it is, up to the authority's CA, is smartflow-verify
 * --tsa-ca's to check.  An answer that does not hold is not kept for
 * good as the seal's timestamp.
 */
static ngx_int_t
ngx_http_smartflow_audit_tsa_signed(TS_RESP *resp, u_char *ca)
{
    int              i, ok;
    PKCS7           *token;
    X509_STORE      *store;
    TS_VERIFY_CTX   *vctx;
    STACK_OF(X509)  *certs;

    token = TS_RESP_get_token(resp);

    if (token == NULL || !PKCS7_type_is_signed(token)
        || token->d.sign == NULL)
    {
        return NGX_ERROR;
    }

    certs = token->d.sign->cert;

    if (certs == NULL || sk_X509_num(certs) == 0) {
        return NGX_ERROR;
    }

    vctx = TS_VERIFY_CTX_new();
    store = X509_STORE_new();

    if (vctx == NULL || store == NULL) {
        TS_VERIFY_CTX_free(vctx);
        X509_STORE_free(store);
        return NGX_ERROR;
    }

    if (ca[0]) {
        /* the certificates it carries are the chain to be checked */
        if (X509_STORE_load_file(store, (char *) ca) != 1) {
            TS_VERIFY_CTX_free(vctx);
            X509_STORE_free(store);
            ERR_clear_error();
            return NGX_ERROR;
        }

        goto verify;
    }

    /* the certificates it carries stand for themselves */
    for (i = 0; i < sk_X509_num(certs); i++) {
        if (X509_STORE_add_cert(store, sk_X509_value(certs, i)) != 1) {
            TS_VERIFY_CTX_free(vctx);
            X509_STORE_free(store);
            ERR_clear_error();
            return NGX_ERROR;
        }
    }

    (void) X509_STORE_set_flags(store, X509_V_FLAG_PARTIAL_CHAIN);

verify:

    TS_VERIFY_CTX_set_flags(vctx, TS_VFY_SIGNATURE);

    /* the context's from here */
    (void) TS_VERIFY_CTX_set_store(vctx, store);

    ok = TS_RESP_verify_response(vctx, resp);

    TS_VERIFY_CTX_free(vctx);
    ERR_clear_error();

    return (ok == 1) ? NGX_OK : NGX_ERROR;
}


/* 1 when the seal's timestamp is there: its spooled query goes */
static ngx_uint_t
ngx_http_smartflow_audit_tsa_done(u_char *dir, ngx_uint_t segment)
{
    ngx_file_info_t  fi;
    u_char           path[NGX_MAX_PATH];

    ngx_snprintf(path, NGX_MAX_PATH, "%s/segment-%08ui.tsr%Z", dir, segment);

    if (ngx_file_info(path, &fi) == NGX_FILE_ERROR) {
        return 0;
    }

    ngx_snprintf(path, NGX_MAX_PATH, "%s/segment-%08ui.tsq%Z", dir, segment);
    (void) unlink((char *) path);

    return 1;
}


static uint64_t
ngx_http_smartflow_audit_u64(unsigned char *p)
{
    uint64_t  v;

    ngx_memcpy(&v, p, sizeof(uint64_t));

    /* positive and never zero */
    return (v >> 2) + 1;
}


/*
 * Stamps the seal of a segment: NGX_OK with segment-N.tsr written (or
 * found), NGX_AGAIN with the query spooled in segment-N.tsq, NGX_DECLINED
 * while another thread stamps it (a seal's stamp and the retry of the
 * spool it made first), NGX_ERROR.  One stamp a seal: the one stamping
 * holds an flock on the spooled query, and a stamp found is kept, so the
 * timestamp shipped is the one in the folder.
 */
ngx_int_t
ngx_http_smartflow_audit_tsa_stamp(u_char *dir, ngx_uint_t segment,
    u_char *url, u_char *ca, ngx_msec_t timeout, ngx_flag_t offline,
    char *err, size_t errlen)
{
    int                               n, rc, lock;
    long                              code;
    u_char                           *der, *p;
    size_t                            len;
    ssize_t                           sn;
    CURL                             *curl;
    TS_REQ                           *req;
    TS_RESP                          *resp;
    ngx_fd_t                          fd;
    ASN1_INTEGER                     *nonce;
    TS_MSG_IMPRINT                   *mi;
    X509_ALGOR                       *alg;
    TS_VERIFY_CTX                    *vctx;
    ngx_file_info_t                   fi;
    struct curl_slist                *hdrs;
    ngx_http_smartflow_audit_body_t   body;
    unsigned char                     digest[32], rnd[8];
    u_char                            seal[8192];
    u_char                            path[NGX_MAX_PATH];

    req = NULL;
    resp = NULL;
    der = NULL;
    curl = NULL;
    hdrs = NULL;
    vctx = NULL;
    body.data = NULL;
    body.len = 0;
    rc = NGX_ERROR;
    lock = -1;

    if (ngx_http_smartflow_audit_tsa_done(dir, segment)) {
        return NGX_OK;
    }

    ngx_snprintf(path, NGX_MAX_PATH, "%s/" NGX_SMARTFLOW_AUDIT_SEAL "%Z",
                 dir, segment);

    fd = ngx_open_file(path, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        snprintf(err, errlen, "open(%s) failed: %s", path, strerror(errno));
        return NGX_ERROR;
    }

    sn = (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR
          || ngx_file_size(&fi) > (off_t) sizeof(seal))
         ? -1 : read(fd, seal, ngx_file_size(&fi));
    (void) ngx_close_file(fd);

    if (sn <= 0) {
        snprintf(err, errlen, "reading %s failed", path);
        return NGX_ERROR;
    }

    (void) EVP_Digest(seal, sn, digest, NULL, sf_merkle_sha256(), NULL);

    /* the query: SHA-256 of the seal, a nonce, the TSA's certificate */
    req = TS_REQ_new();
    mi = TS_MSG_IMPRINT_new();
    alg = X509_ALGOR_new();
    nonce = ASN1_INTEGER_new();

    if (req == NULL || mi == NULL || alg == NULL || nonce == NULL
        || RAND_bytes(rnd, sizeof(rnd)) != 1
        || X509_ALGOR_set0(alg, OBJ_nid2obj(NID_sha256), V_ASN1_NULL, NULL)
           != 1
        || TS_MSG_IMPRINT_set_algo(mi, alg) != 1
        || TS_MSG_IMPRINT_set_msg(mi, digest, 32) != 1
        || TS_REQ_set_version(req, 1) != 1
        || TS_REQ_set_msg_imprint(req, mi) != 1
        || ASN1_INTEGER_set_uint64(nonce, ngx_http_smartflow_audit_u64(rnd))
           != 1
        || TS_REQ_set_nonce(req, nonce) != 1
        || TS_REQ_set_cert_req(req, 1) != 1)
    {
        snprintf(err, errlen, "building the timestamp query failed");
        X509_ALGOR_free(alg);
        TS_MSG_IMPRINT_free(mi);
        ASN1_INTEGER_free(nonce);
        goto done;
    }

    X509_ALGOR_free(alg);
    TS_MSG_IMPRINT_free(mi);
    ASN1_INTEGER_free(nonce);

    n = i2d_TS_REQ(req, &der);
    if (n <= 0) {
        snprintf(err, errlen, "encoding the timestamp query failed");
        goto done;
    }

    /* spooled first: a failure below leaves it for the retry */
    ngx_snprintf(path, NGX_MAX_PATH, "%s/segment-%08ui.tsq%Z", dir, segment);

    if (ngx_file_info(path, &fi) == NGX_FILE_ERROR
        && ngx_http_smartflow_audit_write_ro(path, der, n, err, errlen)
           != NGX_OK)
    {
        goto done;
    }

    if (offline) {
        rc = NGX_AGAIN;
        snprintf(err, errlen, "spooled");
        goto done;
    }

    lock = open((char *) path, O_RDONLY | O_CLOEXEC);

    if (lock == -1) {
        rc = NGX_AGAIN;
        snprintf(err, errlen, "open(%s) failed: %s", path, strerror(errno));
        goto done;
    }

    if (flock(lock, LOCK_EX | LOCK_NB) == -1) {
        rc = (errno == EWOULDBLOCK) ? NGX_DECLINED : NGX_AGAIN;
        snprintf(err, errlen, "%s is being stamped", path);
        goto done;
    }

    /* stamped by the other meanwhile, the spool made again by this one */
    if (ngx_http_smartflow_audit_tsa_done(dir, segment)) {
        rc = NGX_OK;
        goto done;
    }

    curl = curl_easy_init();
    hdrs = curl_slist_append(NULL, "Content-Type: application/timestamp-query");

    if (curl == NULL || hdrs == NULL) {
        snprintf(err, errlen, "no memory for libcurl");
        goto done;
    }

    curl_easy_setopt(curl, CURLOPT_URL, (char *) url);
    curl_easy_setopt(curl, CURLOPT_POST, 1L);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, der);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long) n);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long) timeout);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION,
                     ngx_http_smartflow_audit_curl_abort);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION,
                     ngx_http_smartflow_audit_tsa_write);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);

    if (curl_easy_perform(curl) != CURLE_OK
        || curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &code) != CURLE_OK
        || code != 200)
    {
        rc = NGX_AGAIN;
        snprintf(err, errlen, "the time-stamping authority %s did not "
                 "answer", url);
        goto done;
    }

    p = body.data;
    len = body.len;
    resp = d2i_TS_RESP(NULL, (const unsigned char **) &p, len);

    /* granted, for this query, signed: its CA is the verifier's to check */
    vctx = TS_REQ_to_TS_VERIFY_CTX(req, NULL);

    if (resp == NULL || vctx == NULL) {
        rc = NGX_AGAIN;
        snprintf(err, errlen, "the answer of %s is not a timestamp", url);
        goto done;
    }

    TS_VERIFY_CTX_set_flags(vctx, TS_VFY_VERSION | TS_VFY_IMPRINT
                                  | TS_VFY_NONCE);

    if (TS_RESP_verify_response(vctx, resp) != 1) {
        rc = NGX_AGAIN;
        snprintf(err, errlen, "%s refused the timestamp or answered "
                 "another query", url);
        goto done;
    }

    if (ngx_http_smartflow_audit_tsa_signed(resp, ca) != NGX_OK) {
        rc = NGX_AGAIN;

        if (ca[0]) {
            snprintf(err, errlen, "the signature of the answer of %s does "
                     "not hold up to a CA of smartflow_audit_tsa_ca %s",
                     url, ca);

        } else {
            snprintf(err, errlen, "the signature of the answer of %s does "
                     "not hold by the certificate it carries", url);
        }

        goto done;
    }

    ngx_snprintf(path, NGX_MAX_PATH, "%s/segment-%08ui.tsr%Z", dir, segment);

    if (ngx_http_smartflow_audit_write_ro(path, body.data, body.len, err,
                                          errlen)
        != NGX_OK)
    {
        goto done;
    }

    ngx_snprintf(path, NGX_MAX_PATH, "%s/segment-%08ui.tsq%Z", dir, segment);
    (void) unlink((char *) path);

    rc = NGX_OK;

done:

    if (lock != -1) {
        (void) close(lock);
    }

    if (curl) {
        curl_easy_cleanup(curl);
    }

    curl_slist_free_all(hdrs);
    TS_VERIFY_CTX_free(vctx);
    TS_RESP_free(resp);
    TS_REQ_free(req);
    OPENSSL_free(der);
    free(body.data);

    return rc;
}


/* the spooled queries, oldest first; the number still waiting */
ngx_int_t
ngx_http_smartflow_audit_tsa_retry(u_char *dir, u_char *url, u_char *ca,
    ngx_msec_t timeout, ngx_uint_t *waiting, char *err, size_t errlen)
{
    ngx_int_t        rc;
    ngx_str_t        name, d;
    ngx_dir_t        dirh;
    ngx_uint_t       seg, min, max;
    ngx_file_info_t  fi;
    u_char           path[NGX_MAX_PATH];

    *waiting = 0;
    d.data = dir;
    d.len = ngx_strlen(dir);

    if (ngx_open_dir(&d, &dirh) == NGX_ERROR) {
        snprintf(err, errlen, "opendir(%s) failed: %s", dir, strerror(errno));
        return NGX_ERROR;
    }

    min = NGX_MAX_UINT32_VALUE;
    max = 0;

    for ( ;; ) {
        ngx_set_errno(0);

        if (ngx_read_dir(&dirh) == NGX_ERROR) {
            break;
        }

        name.data = ngx_de_name(&dirh);
        name.len = ngx_de_namelen(&dirh);

        if (name.len != sizeof("segment-00000000.tsq") - 1
            || ngx_strncmp(name.data + 16, ".tsq", 4) != 0)
        {
            continue;
        }

        seg = ngx_atoi(name.data + 8, 8);
        if (seg == (ngx_uint_t) NGX_ERROR) {
            continue;
        }

        min = ngx_min(min, seg);
        max = ngx_max(max, seg);
        (*waiting)++;
    }

    (void) ngx_close_dir(&dirh);

    for (seg = min; *waiting && seg <= max; seg++) {
        ngx_snprintf(path, NGX_MAX_PATH, "%s/segment-%08ui.tsq%Z", dir, seg);

        if (ngx_file_info(path, &fi) == NGX_FILE_ERROR) {
            continue;
        }

        rc = ngx_http_smartflow_audit_tsa_stamp(dir, seg, url, ca, timeout,
                                                0, err, errlen);
        if (rc == NGX_OK) {
            (*waiting)--;

        } else if (rc == NGX_DECLINED) {
            /* a seal's own stamp, in flight */
            continue;

        } else if (rc == NGX_AGAIN) {
            /* still down: the rest waits for the next round */
            return NGX_AGAIN;
        }
    }

    return NGX_OK;
}
