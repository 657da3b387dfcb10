/*
 * Shipping sealed segments to S3 Object Lock, on any S3-compatible
 * endpoint: each sealed segment's files (segment-N.log, segment-N.seal
 * and, once stamped, segment-N.tsr) are PUT with the lock mode, a
 * retain-until date, Content-MD5 and x-amz-checksum-sha256, signed with
 * AWS SigV4 by libcurl (x-amz-content-sha256 is added to the signed
 * headers here).  Once every PUT of a segment is confirmed (200) the
 * segment is marked shipped with segment-N.shipped; the folder itself is
 * the backlog, so it survives restarts.  Then the local segment-N.log is
 * removed (unless smartflow_audit_s3_keep), in order: the seal and the
 * mark stay, so the chain goes on from the seal.  Everything that blocks
 * runs in the thread pool; one worker runs the rounds on a timer, oldest
 * segment first, backing off while the endpoint fails.
 */

#include <sys/file.h>
#include <sys/ioctl.h>
#include <linux/sockios.h>
#include <curl/curl.h>
#include <openssl/evp.h>

#include "ngx_http_smartflow_audit.h"


#define NGX_HTTP_SMARTFLOW_AUDIT_S3_ANSWER  4096


typedef struct {
    ngx_http_smartflow_audit_main_conf_t  *amcf;
    u_char                      dir[NGX_MAX_PATH];
    char                        url[1024];      /* endpoint/bucket/prefix */
    char                        userpwd[512];
    char                        sigv4[128];
    ngx_uint_t                  mode;
    time_t                      retention;
    ngx_msec_t                  timeout;
    time_t                      tsa_wait;       /* 0: no timestamps */
    ngx_flag_t                  keep;
    sf_audit_key_t              key;            /* signs the marks */

    /* results */
    ngx_int_t                   rc;
    ngx_uint_t                  backlog;
    ngx_uint_t                  segments;
    ngx_uint_t                  objects;
    uint64_t                    bytes;
    ngx_uint_t                  removed;
    ngx_uint_t                  unremoved;      /* the first kept, or 0 */
    char                        err[NGX_MAX_PATH + 1024];
    char                        warn[NGX_MAX_PATH + 128];
} ngx_http_smartflow_audit_s3_t;


typedef struct {
    char                        data[NGX_HTTP_SMARTFLOW_AUDIT_S3_ANSWER];
    size_t                      len;
    char                        checksum[64];   /* x-amz-checksum-sha256 */
    unsigned                    etag:1;
} ngx_http_smartflow_audit_s3_answer_t;


/*
 * An upload's progress: smartflow_audit_s3_timeout bounds the time no
 * byte moves (the connection included), not the upload, which takes as
 * long as the link needs while its bytes move.  A byte sent counts once
 * the endpoint has acknowledged it: what waits in the socket's buffer
 * has not moved yet, and once it is all handed over the wait for the
 * answer would otherwise count it all as idle.
 */
typedef struct {
    CURL                       *curl;
    curl_socket_t               fd[4];          /* the ones open */
    ngx_uint_t                  nfd;
    ngx_uint_t                  untracked;      /* open, past fd[] */
    curl_off_t                  moved;          /* bytes up and down */
    struct timespec             since;          /* when they last moved */
    ngx_msec_t                  timeout;
    unsigned                    idle:1;
} ngx_http_smartflow_audit_s3_moved_t;


ngx_conf_enum_t  ngx_http_smartflow_audit_s3_modes[] = {
    { ngx_string("governance"), 0 },
    { ngx_string("compliance"), 1 },
    { ngx_null_string, 0 }
};


static const char  *ngx_http_smartflow_audit_s3_mode_names[] = {
    "GOVERNANCE", "COMPLIANCE"
};


static ngx_event_t         ngx_http_smartflow_audit_s3_ev;
static ngx_thread_task_t  *ngx_http_smartflow_audit_s3_task;
static ngx_uint_t          ngx_http_smartflow_audit_s3_fails;
static ngx_uint_t          ngx_http_smartflow_audit_s3_unremoved;


static void ngx_http_smartflow_audit_s3_timer(ngx_event_t *ev);
static void ngx_http_smartflow_audit_s3_thread(void *data, ngx_log_t *log);
static void ngx_http_smartflow_audit_s3_round(
    ngx_http_smartflow_audit_s3_t *s);
static ngx_int_t ngx_http_smartflow_audit_s3_confirmed(u_char *done,
    char *url, char *hex, u_char *line, size_t linelen);
static void ngx_http_smartflow_audit_s3_done(ngx_event_t *ev);


/* the credentials: "ACCESS_KEY_ID SECRET" in a file, else the env */
static ngx_int_t
ngx_http_smartflow_audit_s3_credentials(ngx_conf_t *cf,
    ngx_http_smartflow_audit_main_conf_t *amcf)
{
    u_char           *p, *last, *id, *secret;
    size_t            idlen, slen;
    ssize_t           n;
    ngx_fd_t          fd;
    ngx_file_info_t   fi;
    u_char            buf[1024];

    if (amcf->s3_credentials.len == 0) {
        id = (u_char *) getenv("AWS_ACCESS_KEY_ID");
        secret = (u_char *) getenv("AWS_SECRET_ACCESS_KEY");

        if (id == NULL || secret == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "smartflow audit: \"smartflow_audit_s3\" needs "
                               "\"smartflow_audit_s3_credentials\" or "
                               "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                               "in the environment");
            return NGX_ERROR;
        }

        idlen = ngx_strlen(id);
        slen = ngx_strlen(secret);
        goto found;
    }

    if (ngx_conf_full_name(cf->cycle, &amcf->s3_credentials, 1) != NGX_OK) {
        return NGX_ERROR;
    }

    fd = ngx_open_file(amcf->s3_credentials.data, NGX_FILE_RDONLY,
                       NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "smartflow audit: cannot open S3 credentials "
                           "\"%V\"", &amcf->s3_credentials);
        return NGX_ERROR;
    }

    n = (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR
         || ngx_file_size(&fi) >= (off_t) sizeof(buf))
        ? -1 : read(fd, buf, sizeof(buf) - 1);
    (void) ngx_close_file(fd);

    if (n <= 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow audit: reading S3 credentials \"%V\" "
                           "failed", &amcf->s3_credentials);
        return NGX_ERROR;
    }

    /* two words: the access key id and the secret */
    p = buf;
    last = buf + n;

    while (p < last && (*p == ' ' || *p == '\t')) {
        p++;
    }

    id = p;

    while (p < last && *p != ' ' && *p != '\t' && *p != '\n') {
        p++;
    }

    idlen = p - id;

    while (p < last && (*p == ' ' || *p == '\t')) {
        p++;
    }

    secret = p;

    while (p < last && *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
    {
        p++;
    }

    slen = p - secret;

    if (idlen == 0 || slen == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow audit: S3 credentials \"%V\" must "
                           "hold \"ACCESS_KEY_ID SECRET_ACCESS_KEY\"",
                           &amcf->s3_credentials);
        return NGX_ERROR;
    }

found:

    if (idlen + slen + 2 > 512 || ngx_strlchr(id, id + idlen, ':')) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow audit: the S3 access key id or secret "
                           "is not valid");
        return NGX_ERROR;
    }

    amcf->s3_userpwd.len = idlen + 1 + slen;
    amcf->s3_userpwd.data = ngx_pnalloc(cf->pool, amcf->s3_userpwd.len + 1);
    if (amcf->s3_userpwd.data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(amcf->s3_userpwd.data, id, idlen);
    *p++ = ':';
    p = ngx_cpymem(p, secret, slen);
    *p = '\0';

    ngx_explicit_memzero(buf, sizeof(buf));

    return NGX_OK;
}


char *
ngx_http_smartflow_audit_s3_conf(ngx_conf_t *cf,
    ngx_http_smartflow_audit_main_conf_t *amcf)
{
    ngx_conf_init_uint_value(amcf->s3_lock_mode, 0);
    ngx_conf_init_value(amcf->s3_retention, 365 * 86400);
    ngx_conf_init_msec_value(amcf->s3_interval, 10000);
    ngx_conf_init_msec_value(amcf->s3_backoff_max, 300000);
    ngx_conf_init_msec_value(amcf->s3_timeout, 60000);
    ngx_conf_init_value(amcf->s3_keep, 0);

    if (amcf->s3_region.len == 0) {
        ngx_str_set(&amcf->s3_region, "us-east-1");
    }

    if (amcf->s3_url.len == 0) {
        return NGX_CONF_OK;
    }

    if (amcf->dir.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow audit: \"smartflow_audit_s3\" needs "
                           "\"smartflow_audit_dir\"");
        return NGX_CONF_ERROR;
    }

    if ((ngx_strncmp(amcf->s3_url.data, "http://", 7) != 0
         && ngx_strncmp(amcf->s3_url.data, "https://", 8) != 0)
        || amcf->s3_url.len + amcf->s3_bucket.len + amcf->s3_prefix.len
           > 900)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow audit: \"smartflow_audit_s3\" takes "
                           "an http:// or https:// URL");
        return NGX_CONF_ERROR;
    }

    while (amcf->s3_url.len && amcf->s3_url.data[amcf->s3_url.len - 1] == '/')
    {
        amcf->s3_url.len--;
    }

    if (amcf->s3_bucket.len == 0
        || ngx_strlchr(amcf->s3_bucket.data,
                       amcf->s3_bucket.data + amcf->s3_bucket.len, '/'))
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow audit: \"smartflow_audit_s3\" needs "
                           "\"smartflow_audit_s3_bucket\" (a bucket name)");
        return NGX_CONF_ERROR;
    }

    if (amcf->s3_region.len > 64) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow audit: \"smartflow_audit_s3_region\" "
                           "is too long");
        return NGX_CONF_ERROR;
    }

    if (amcf->s3_retention < 1) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow audit: \"smartflow_audit_s3_retention\""
                           " must be at least 1s");
        return NGX_CONF_ERROR;
    }

    if (amcf->s3_interval < 100) {
        amcf->s3_interval = 100;
    }

    if (amcf->s3_backoff_max < amcf->s3_interval) {
        amcf->s3_backoff_max = amcf->s3_interval;
    }

    if (ngx_http_smartflow_audit_s3_credentials(cf, amcf) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* libcurl's progress callback for an upload: the stop, and the idle time */
static int
ngx_http_smartflow_audit_s3_moving(void *data, curl_off_t dltotal,
    curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
    ngx_http_smartflow_audit_s3_moved_t *pr = data;

    int              queued;
    int64_t          ms;
    curl_off_t       moved;
    curl_socket_t    fd;
    struct timespec  now;

    if (ngx_terminate) {
        return 1;
    }

    (void) clock_gettime(CLOCK_MONOTONIC, &now);

    /*
     * sent, not yet acknowledged, on the socket the transfer uses: the
     * active one where libcurl tells it (7.88 does only once the transfer
     * is done), else the one socket open.  Happy eyeballs opens one for
     * IPv6 and one for IPv4 and closes the loser, a reconnect closes the
     * first: a socket closed is no longer read, as its number may be
     * another thread's by then, and while several are open which one
     * carries the bytes is not known, so none is read.
     */
    queued = 0;
    fd = CURL_SOCKET_BAD;

    if (curl_easy_getinfo(pr->curl, CURLINFO_ACTIVESOCKET, &fd) != CURLE_OK
        || fd == CURL_SOCKET_BAD)
    {
        fd = (pr->nfd == 1 && pr->untracked == 0) ? pr->fd[0]
                                                  : CURL_SOCKET_BAD;
    }

    if (fd == CURL_SOCKET_BAD || ioctl(fd, SIOCOUTQ, &queued) == -1) {
        queued = 0;
    }

    moved = dlnow + ulnow - queued;

    if (moved != pr->moved) {
        pr->moved = moved;
        pr->since = now;
        return 0;
    }

    ms = (int64_t) (now.tv_sec - pr->since.tv_sec) * 1000
         + (now.tv_nsec - pr->since.tv_nsec) / 1000000;

    if (ms >= (int64_t) pr->timeout) {
        pr->idle = 1;
        return 1;
    }

    return 0;
}


/* a socket libcurl opens for the upload (its ACTIVESOCKET is not set yet) */
static int
ngx_http_smartflow_audit_s3_socket(void *data, curl_socket_t fd,
    curlsocktype purpose)
{
    ngx_http_smartflow_audit_s3_moved_t *pr = data;

    if (pr->nfd < sizeof(pr->fd) / sizeof(pr->fd[0])) {
        pr->fd[pr->nfd++] = fd;

    } else {
        pr->untracked++;
    }

    return CURL_SOCKOPT_OK;
}


/* a socket libcurl is done with: closed here, and no longer read */
static int
ngx_http_smartflow_audit_s3_close(void *data, curl_socket_t fd)
{
    ngx_http_smartflow_audit_s3_moved_t *pr = data;

    ngx_uint_t  i;

    for (i = 0; i < pr->nfd; i++) {
        if (pr->fd[i] == fd) {
            pr->fd[i] = pr->fd[--pr->nfd];
            return close(fd);
        }
    }

    if (pr->untracked) {
        pr->untracked--;
    }

    return close(fd);
}


/*
 * libcurl's progress callback for the thread pool's transfers: nginx -s
 * stop (SIGTERM) ends them at once, so that the worker's exit, which
 * waits for its threads, writes the records' buffer before the master
 * kills it; what was not sent is sent after the next start
 */
int
ngx_http_smartflow_audit_curl_abort(void *data, curl_off_t dltotal,
    curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
    return ngx_terminate ? 1 : 0;
}


void
ngx_http_smartflow_audit_s3_init_process(ngx_cycle_t *cycle,
    ngx_http_smartflow_audit_main_conf_t *amcf)
{
    ngx_event_t  *ev;

    if (amcf == NULL || amcf->zone == NULL || amcf->s3_url.len == 0
        || (ngx_process == NGX_PROCESS_WORKER && ngx_worker != 0))
    {
        return;
    }

    ev = &ngx_http_smartflow_audit_s3_ev;
    ev->handler = ngx_http_smartflow_audit_s3_timer;
    ev->data = amcf;
    ev->log = cycle->log;
    ev->cancelable = 1;

    ngx_http_smartflow_audit_s3_fails = 0;

    /* the backlog a restart found goes first, soon */
    ngx_add_timer(ev, ngx_min(amcf->s3_interval, 1000));
}


static void
ngx_http_smartflow_audit_s3_timer(ngx_event_t *ev)
{
    u_char                                *p;
    ngx_thread_task_t                     *task;
    const sf_audit_key_t                  *key;
    ngx_http_smartflow_audit_s3_t         *s;
    ngx_http_smartflow_audit_main_conf_t  *amcf = ev->data;

    if (ngx_exiting || ngx_quit || ngx_terminate) {
        return;
    }

    task = ngx_http_smartflow_audit_s3_task;

    if (task == NULL) {
        task = ngx_thread_task_alloc(ngx_cycle->pool,
                                     sizeof(ngx_http_smartflow_audit_s3_t));
        if (task == NULL) {
            ngx_add_timer(ev, amcf->s3_interval);
            return;
        }

        task->handler = ngx_http_smartflow_audit_s3_thread;
        task->event.handler = ngx_http_smartflow_audit_s3_done;
        task->event.data = task;
        task->event.log = ev->log;
        ngx_http_smartflow_audit_s3_task = task;
    }

    s = task->ctx;
    s->amcf = amcf;
    ngx_cpystrn(s->dir, amcf->dir.data, NGX_MAX_PATH);

    p = ngx_snprintf((u_char *) s->url, sizeof(s->url) - 1, "%V/%V%s%V",
                     &amcf->s3_url, &amcf->s3_bucket,
                     amcf->s3_prefix.len ? "/" : "", &amcf->s3_prefix);
    *p = '\0';

    ngx_cpystrn((u_char *) s->userpwd, amcf->s3_userpwd.data,
                sizeof(s->userpwd));

    p = ngx_snprintf((u_char *) s->sigv4, sizeof(s->sigv4) - 1,
                     "aws:amz:%V:s3", &amcf->s3_region);
    *p = '\0';

    s->mode = amcf->s3_lock_mode;
    s->keep = amcf->s3_keep;

    /* the key valid now signs the marks; none: nothing is marked */
    key = sf_audit_keys_current(amcf->keys, ngx_time());

    if (key) {
        s->key = *key;

    } else {
        ngx_memzero(&s->key, sizeof(sf_audit_key_t));
    }

    s->retention = amcf->s3_retention;
    s->timeout = amcf->s3_timeout;
    s->tsa_wait = amcf->tsa_url.len ? (time_t) amcf->tsa_timeout / 1000 + 60
                                    : 0;

    if (ngx_thread_task_post(amcf->pool, task) != NGX_OK) {
        ngx_add_timer(ev, amcf->s3_interval);
    }
}


static size_t
ngx_http_smartflow_audit_s3_write(char *p, size_t size, size_t n, void *data)
{
    size_t                                 len;
    ngx_http_smartflow_audit_s3_answer_t  *a = data;

    len = ngx_min(size * n, sizeof(a->data) - 1 - a->len);
    ngx_memcpy(a->data + a->len, p, len);
    a->len += len;
    a->data[a->len] = '\0';

    return size * n;
}


/* the answer's headers S3 confirms a PUT with: ETag, the checksum */
static size_t
ngx_http_smartflow_audit_s3_header(char *p, size_t size, size_t n,
    void *data)
{
    size_t                                 len, vlen;
    char                                  *v, *end;
    ngx_http_smartflow_audit_s3_answer_t  *a = data;

    len = size * n;
    end = p + len;

    /* a status line: an answer (after 100 Continue) starts afresh */
    if (len > 5 && ngx_strncmp(p, "HTTP/", 5) == 0) {
        a->etag = 0;
        a->checksum[0] = '\0';
        return len;
    }

    for (v = p; v < end && *v != ':'; v++) {
        /* void */
    }

    if (v == end) {
        return len;
    }

    if (v - p == 4 && ngx_strncasecmp((u_char *) p, (u_char *) "etag", 4)
                      == 0)
    {
        a->etag = 1;
        return len;
    }

    if (v - p != sizeof("x-amz-checksum-sha256") - 1
        || ngx_strncasecmp((u_char *) p, (u_char *) "x-amz-checksum-sha256",
                           v - p)
           != 0)
    {
        return len;
    }

    for (v++; v < end && (*v == ' ' || *v == '\t'); v++) {
        /* void */
    }

    while (end > v && (end[-1] == '\r' || end[-1] == '\n'
                       || end[-1] == ' '))
    {
        end--;
    }

    vlen = ngx_min((size_t) (end - v), sizeof(a->checksum) - 1);
    ngx_memcpy(a->checksum, v, vlen);
    a->checksum[vlen] = '\0';

    return len;
}


/*
 * One object: NGX_OK once the endpoint confirmed it, now or in an earlier
 * round (its manifest line in done, for the same SHA-256: NGX_DONE),
 * else NGX_AGAIN
 */
static ngx_int_t
ngx_http_smartflow_audit_s3_put(ngx_http_smartflow_audit_s3_t *s,
    u_char *name, u_char *line, size_t linelen, u_char *done)
{
    int                                    b64;
    long                                   code;
    char                                  *c, *e;
    u_char                                *data;
    time_t                                 until;
    ssize_t                                n;
    CURL                                  *curl;
    CURLcode                               cc;
    ngx_fd_t                               fd;
    ngx_int_t                              rc;
    struct tm                              tm;
    ngx_file_info_t                        fi;
    struct curl_slist                     *hdrs, *h;
    ngx_http_smartflow_audit_s3_answer_t   answer;
    ngx_http_smartflow_audit_s3_moved_t progress;
    unsigned char                          sha[32], md5[16];
    char                                   hex[65], sha64[48], md564[32];
    char                                   date[32], url[1200];
    char                                   hdr[6][160];
    u_char                                 path[NGX_MAX_PATH];

    ngx_snprintf(path, NGX_MAX_PATH, "%s/%s%Z", s->dir, name);

    fd = ngx_open_file(path, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        snprintf(s->err, sizeof(s->err), "open(%s) failed: %s", path,
                 strerror(errno));
        return NGX_ERROR;
    }

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR) {
        snprintf(s->err, sizeof(s->err), "fstat(%s) failed: %s", path,
                 strerror(errno));
        (void) ngx_close_file(fd);
        return NGX_ERROR;
    }

    data = malloc(ngx_file_size(&fi) + 1);
    if (data == NULL) {
        (void) ngx_close_file(fd);
        snprintf(s->err, sizeof(s->err), "no memory for %s", path);
        return NGX_ERROR;
    }

    n = ngx_file_size(&fi) ? read(fd, data, ngx_file_size(&fi)) : 0;
    (void) ngx_close_file(fd);

    if (n != ngx_file_size(&fi)) {
        snprintf(s->err, sizeof(s->err), "reading %s failed", path);
        free(data);
        return NGX_ERROR;
    }

    (void) EVP_Digest(data, n, sha, NULL, sf_merkle_sha256(), NULL);
    (void) EVP_Digest(data, n, md5, NULL, EVP_md5(), NULL);
    sf_audit_hex(sha, 32, hex);

    b64 = EVP_EncodeBlock((unsigned char *) sha64, sha, 32);
    sha64[b64] = '\0';
    b64 = EVP_EncodeBlock((unsigned char *) md564, md5, 16);
    md564[b64] = '\0';

    until = time(NULL) + s->retention;
    (void) gmtime_r(&until, &tm);
    (void) strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", &tm);

    snprintf(hdr[0], sizeof(hdr[0]), "Content-Type: application/octet-stream");
    snprintf(hdr[1], sizeof(hdr[1]), "Content-MD5: %s", md564);
    snprintf(hdr[2], sizeof(hdr[2]), "x-amz-checksum-sha256: %s", sha64);
    snprintf(hdr[3], sizeof(hdr[3]), "x-amz-content-sha256: %s", hex);
    snprintf(hdr[4], sizeof(hdr[4]), "x-amz-object-lock-mode: %s",
             ngx_http_smartflow_audit_s3_mode_names[s->mode]);
    snprintf(hdr[5], sizeof(hdr[5]),
             "x-amz-object-lock-retain-until-date: %s", date);

    snprintf(url, sizeof(url), "%s/%s", s->url, name);

    /* confirmed in an earlier round: not put again */
    if (ngx_http_smartflow_audit_s3_confirmed(done, url, hex, line, linelen)
        == NGX_OK)
    {
        free(data);
        return NGX_DONE;
    }

    rc = NGX_AGAIN;
    hdrs = NULL;
    answer.len = 0;
    answer.data[0] = '\0';
    answer.checksum[0] = '\0';
    answer.etag = 0;

    curl = curl_easy_init();

    for (n = 0; n < 6; n++) {
        h = curl_slist_append(hdrs, hdr[n]);
        if (h == NULL) {
            break;
        }
        hdrs = h;
    }

    if (curl == NULL || n != 6) {
        snprintf(s->err, sizeof(s->err), "no memory for libcurl");
        goto done;
    }

    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, "PUT");
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, (char *) data);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE,
                     (curl_off_t) ngx_file_size(&fi));
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(curl, CURLOPT_AWS_SIGV4, s->sigv4);
    curl_easy_setopt(curl, CURLOPT_USERPWD, s->userpwd);
    progress.curl = curl;
    progress.nfd = 0;
    progress.untracked = 0;
    progress.moved = 0;
    progress.timeout = s->timeout;
    progress.idle = 0;
    (void) clock_gettime(CLOCK_MONOTONIC, &progress.since);

    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, (long) s->timeout);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION,
                     ngx_http_smartflow_audit_s3_moving);
    curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &progress);
    curl_easy_setopt(curl, CURLOPT_SOCKOPTFUNCTION,
                     ngx_http_smartflow_audit_s3_socket);
    curl_easy_setopt(curl, CURLOPT_SOCKOPTDATA, &progress);
    curl_easy_setopt(curl, CURLOPT_CLOSESOCKETFUNCTION,
                     ngx_http_smartflow_audit_s3_close);
    curl_easy_setopt(curl, CURLOPT_CLOSESOCKETDATA, &progress);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION,
                     ngx_http_smartflow_audit_s3_write);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &answer);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION,
                     ngx_http_smartflow_audit_s3_header);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, &answer);

    cc = curl_easy_perform(curl);

    if (cc == CURLE_ABORTED_BY_CALLBACK && progress.idle) {
        snprintf(s->err, sizeof(s->err), "PUT %s failed: no bytes moved "
                 "for %lums (smartflow_audit_s3_timeout) after %ld of "
                 "%ld", url, (unsigned long) s->timeout,
                 (long) progress.moved, (long) ngx_file_size(&fi));
        goto done;
    }

    if (cc != CURLE_OK) {
        snprintf(s->err, sizeof(s->err), "PUT %s failed: %s", url,
                 curl_easy_strerror(cc));
        goto done;
    }

    (void) curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &code);

    if (code != 200) {
        /* S3's error code, e.g. SignatureDoesNotMatch */
        c = strstr(answer.data, "<Code>");
        e = c ? strstr(c, "</Code>") : NULL;

        snprintf(s->err, sizeof(s->err), "PUT %s answered %ld%s%.*s", url,
                 code, e ? " " : "", e ? (int) (e - c - 6) : 0,
                 e ? c + 6 : "");
        goto done;
    }

    /*
     * S3 confirms a PUT with the object's ETag, and echoes the checksum
     * it checked: a 200 without them is not a stored object (another
     * server at the URL, a proxy's page), and the segment would be
     * removed from the folder on its word
     */
    if (!answer.etag
        || (answer.checksum[0] && ngx_strcmp(answer.checksum, sha64) != 0))
    {
        snprintf(s->err, sizeof(s->err), "PUT %s answered 200 %s: not "
                 "an S3 endpoint?", url,
                 answer.etag ? "with another checksum" : "without an ETag");
        goto done;
    }

    s->objects++;
    s->bytes += ngx_file_size(&fi);

    /* the manifest line: the object, its SHA-256, its lock */
    snprintf((char *) line, linelen, "%s %s %s %s\n", url, hex,
             ngx_http_smartflow_audit_s3_mode_names[s->mode], date);

    rc = NGX_OK;

done:

    if (curl) {
        curl_easy_cleanup(curl);
    }

    curl_slist_free_all(hdrs);
    free(data);

    return rc;
}


/*
 * The line of done ("URL SHA256 MODE DATE" lines) for this URL and
 * SHA-256, copied to line: NGX_OK, else NGX_DECLINED
 */
static ngx_int_t
ngx_http_smartflow_audit_s3_confirmed(u_char *done, char *url, char *hex,
    u_char *line, size_t linelen)
{
    u_char  *p, *eol;
    size_t   ulen;

    ulen = ngx_strlen(url);

    for (p = done; *p; p = eol + 1) {
        eol = (u_char *) ngx_strchr(p, '\n');
        if (eol == NULL) {
            break;
        }

        if ((size_t) (eol - p) > ulen + 66
            && ngx_strncmp(p, url, ulen) == 0 && p[ulen] == ' '
            && ngx_strncmp(p + ulen + 1, hex, 64) == 0
            && p[ulen + 65] == ' '
            && (size_t) (eol - p) + 2 <= linelen)
        {
            ngx_memcpy(line, p, eol - p + 1);
            line[eol - p + 1] = '\0';
            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


/*
 * path, segment-N.shipping: the manifest lines of the objects S3 confirmed
 * so far, while the segment is not marked; read into done (NUL-terminated)
 */
static void
ngx_http_smartflow_audit_s3_progress(u_char *path, u_char *done, size_t size)
{
    ssize_t   n;
    ngx_fd_t  fd;

    done[0] = '\0';

    fd = ngx_open_file(path, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        return;
    }

    n = read(fd, done, size - 1);
    (void) ngx_close_file(fd);

    if (n > 0) {
        done[n] = '\0';
    }
}


/* segment-N.shipped: what was shipped, written once all is confirmed */
static ngx_int_t
ngx_http_smartflow_audit_s3_mark(ngx_http_smartflow_audit_s3_t *s,
    ngx_uint_t seg, u_char *text, size_t len)
{
    u_char  path[NGX_MAX_PATH];

    ngx_snprintf(path, NGX_MAX_PATH, "%s/segment-%08ui.shipped%Z", s->dir,
                 seg);

    /* read-only, like the seal */
    return ngx_http_smartflow_audit_write_ro(path, text, len, s->err,
                                             sizeof(s->err));
}


/*
 * segment-N.leaves, written before segment N is removed: a line a record,
 * "SEQ REQUEST_ID LEAF_HASH" ("-" for no id), from which a proof of a
 * record whose segment is gone is made (the leaves give the path to the
 * sealed segment root; the record itself is in the bucket)
 */
static ngx_int_t
ngx_http_smartflow_audit_s3_leaves(ngx_http_smartflow_audit_s3_t *s,
    ngx_uint_t seg, u_char *log)
{
    u_char           *buf, *out, *p, *q, *end, *eol, *id;
    size_t            len, idlen, n;
    ssize_t           r;
    ngx_fd_t          fd;
    const char       *why;
    sf_audit_tail_t   t;
    ngx_file_info_t   fi;
    u_char            path[NGX_MAX_PATH], leaf[32];

    buf = NULL;
    out = NULL;

    fd = ngx_open_file(log, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        /* gone already: its leaves were written before */
        return NGX_OK;
    }

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR) {
        (void) ngx_close_file(fd);
        goto failed;
    }

    len = ngx_file_size(&fi);
    buf = malloc(len + 1);

    r = buf ? read(fd, buf, len) : -1;
    (void) ngx_close_file(fd);

    if (r != (ssize_t) len) {
        goto failed;
    }

    /* a line is at most 20 + 1 + 64 + 1 + 64 + 1 bytes */
    n = ngx_http_smartflow_audit_lines(buf, len);

    out = malloc(n * 160 + 1);
    if (out == NULL) {
        goto failed;
    }

    q = out;
    end = buf + len;

    for (p = buf; p < end; p = eol + 1) {
        eol = ngx_strlchr(p, end, '\n');
        if (eol == NULL) {
            break;
        }

        if (sf_audit_tail_parse((char *) p, eol - p, &t, &why) != 0) {
            snprintf(s->err, sizeof(s->err), "%s: %s", log, why);
            goto failed;
        }

        sf_merkle_leaf(p, eol - p, leaf);

        id = ngx_http_smartflow_audit_record_id(p, eol, &idlen);

        q = ngx_sprintf(q, "%uL ", t.seq);
        q = idlen ? ngx_cpymem(q, id, idlen) : ngx_cpymem(q, "-", 1);
        *q++ = ' ';
        sf_audit_hex(leaf, 32, (char *) q);
        q += 64;
        *q++ = '\n';
    }

    ngx_snprintf(path, NGX_MAX_PATH, "%s/segment-%08ui.leaves%Z", s->dir,
                 seg);

    if (ngx_http_smartflow_audit_write_ro(path, out, q - out, s->err,
                                          sizeof(s->err))
        != NGX_OK)
    {
        goto failed;
    }

    free(out);
    free(buf);

    return NGX_OK;

failed:

    if (s->err[0] == '\0') {
        snprintf(s->err, sizeof(s->err), "writing the leaves of %s "
                 "failed: %s", log, strerror(errno));
    }

    free(out);
    free(buf);

    return NGX_ERROR;
}


/*
 * The local copy of a shipped segment, removed; 0 when it must stay
 * (chattr +i, permissions): the later ones stay too, so the segments
 * gone are always the first ones, which the recovery and the verifier
 * rely on.
 */
static ngx_uint_t
ngx_http_smartflow_audit_s3_remove(ngx_http_smartflow_audit_s3_t *s,
    ngx_uint_t seg)
{
    ssize_t   n;
    ngx_fd_t  fd;
    u_char    path[NGX_MAX_PATH];
    u_char    seal[16384];

    /*
     * The chain goes on from the seal of the last segment removed: one
     * sealed before seals carried the log tree's frontier stays.
     */
    ngx_snprintf(path, NGX_MAX_PATH, "%s/" NGX_SMARTFLOW_AUDIT_SEAL "%Z",
                 s->dir, seg);

    fd = ngx_open_file(path, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    n = (fd == NGX_INVALID_FILE) ? -1 : read(fd, seal, sizeof(seal) - 1);

    if (fd != NGX_INVALID_FILE) {
        (void) ngx_close_file(fd);
    }

    if (n > 0) {
        seal[n] = '\0';
    }

    if (n <= 0 || ngx_strstr(seal, "\"log_frontier\":[") == NULL) {
        if (s->unremoved == 0) {
            s->unremoved = seg;
            snprintf(s->warn, sizeof(s->warn), "%s has no log frontier to "
                     "go on from", path);
        }

        return 0;
    }

    ngx_snprintf(path, NGX_MAX_PATH, "%s/" NGX_SMARTFLOW_AUDIT_SEGMENT "%Z",
                 s->dir, seg);

    /* what answers proofs once the records are gone */
    if (ngx_http_smartflow_audit_s3_leaves(s, seg, path) != NGX_OK) {
        if (s->unremoved == 0) {
            s->unremoved = seg;
            ngx_cpystrn((u_char *) s->warn, (u_char *) s->err,
                        sizeof(s->warn));
        }

        s->err[0] = '\0';
        return 0;
    }

    if (unlink((char *) path) == 0) {
        s->removed++;
        return 1;
    }

    if (errno == ENOENT) {
        return 1;
    }

    if (s->unremoved == 0) {
        s->unremoved = seg;
        snprintf(s->warn, sizeof(s->warn), "unlink(%s) failed: %s", path,
                 strerror(errno));
    }

    return 0;
}


/*
 * One round at a time in the folder: after a reload the old worker's
 * round may still run when the new worker's first one starts, and each
 * would put the same objects.  The round holds an flock on DIR/.s3.lock;
 * NGX_DECLINED while another process holds it.  flock() needs no write
 * access: the file is opened read-only and made readable by all, and
 * one the worker cannot read (made by root, or under an earlier "user")
 * is replaced, the folder being the worker's own.
 */
static ngx_int_t
ngx_http_smartflow_audit_s3_lock(ngx_http_smartflow_audit_s3_t *s,
    ngx_fd_t *fd)
{
    u_char  path[NGX_MAX_PATH];

    ngx_snprintf(path, NGX_MAX_PATH, "%s/.s3.lock%Z", s->dir);

    *fd = open((char *) path, O_RDONLY | O_CREAT | O_CLOEXEC, 0644);

    if (*fd == NGX_INVALID_FILE && errno == EACCES) {
        if (unlink((char *) path) == -1) {
            snprintf(s->err, sizeof(s->err), "open(%s) failed: %s, and "
                     "unlink() failed: %s", path, strerror(EACCES),
                     strerror(errno));
            return NGX_ERROR;
        }

        *fd = open((char *) path, O_RDONLY | O_CREAT | O_CLOEXEC, 0644);
    }

    if (*fd == NGX_INVALID_FILE) {
        snprintf(s->err, sizeof(s->err), "open(%s) failed: %s", path,
                 strerror(errno));
        return NGX_ERROR;
    }

    if (flock(*fd, LOCK_EX | LOCK_NB) == -1) {
        if (errno == EWOULDBLOCK) {
            (void) ngx_close_file(*fd);
            *fd = NGX_INVALID_FILE;
            return NGX_DECLINED;
        }

        snprintf(s->err, sizeof(s->err), "flock(%s) failed: %s", path,
                 strerror(errno));
        (void) ngx_close_file(*fd);
        *fd = NGX_INVALID_FILE;
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void
ngx_http_smartflow_audit_s3_thread(void *data, ngx_log_t *log)
{
    ngx_http_smartflow_audit_s3_t  *s = data;

    ngx_fd_t  lock;

    s->err[0] = '\0';
    s->backlog = 0;
    s->segments = 0;
    s->objects = 0;
    s->bytes = 0;
    s->removed = 0;
    s->unremoved = 0;
    s->warn[0] = '\0';

    s->rc = ngx_http_smartflow_audit_s3_lock(s, &lock);
    if (s->rc != NGX_OK) {
        return;
    }

    ngx_http_smartflow_audit_s3_round(s);

    /* closing the file gives the lock back */
    (void) ngx_close_file(lock);
}


static void
ngx_http_smartflow_audit_s3_round(ngx_http_smartflow_audit_s3_t *s)
{
    size_t           len;
    ngx_int_t        rc;
    ngx_str_t        name, d;
    ngx_dir_t        dirh;
    ngx_uint_t       seg, min, max, i, stop, prune;
    ngx_file_info_t  fi;
    u_char           path[NGX_MAX_PATH], file[64];
    u_char           progress[NGX_MAX_PATH];
    u_char           manifest[3 * 1400 + 256];
    u_char           done[3 * 1400 + 256];
    static char     *ext[] = { "log", "seal", "tsr" };

    d.data = s->dir;
    d.len = ngx_strlen(s->dir);

    if (ngx_open_dir(&d, &dirh) == NGX_ERROR) {
        snprintf(s->err, sizeof(s->err), "opendir(%s) failed: %s", s->dir,
                 strerror(errno));
        s->rc = NGX_ERROR;
        return;
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

        if (name.len != sizeof("segment-00000000.seal") - 1
            || ngx_strncmp(name.data, "segment-", 8) != 0
            || ngx_strncmp(name.data + 16, ".seal", 5) != 0)
        {
            continue;
        }

        seg = ngx_atoi(name.data + 8, 8);
        if (seg == (ngx_uint_t) NGX_ERROR) {
            continue;
        }

        min = ngx_min(min, seg);
        max = ngx_max(max, seg);
    }

    (void) ngx_close_dir(&dirh);

    stop = 0;
    prune = !s->keep;

    for (seg = min; seg <= max; seg++) {

        /*
         * Removed in order: never past a segment still in the folder,
         * such as one whose seal failed and waits for the next start
         */
        if (prune && seg > 1) {
            ngx_snprintf(path, NGX_MAX_PATH,
                         "%s/" NGX_SMARTFLOW_AUDIT_SEGMENT "%Z", s->dir,
                         seg - 1);

            if (ngx_file_info(path, &fi) != NGX_FILE_ERROR) {
                prune = 0;
            }
        }

        ngx_snprintf(path, NGX_MAX_PATH, "%s/" NGX_SMARTFLOW_AUDIT_SEAL "%Z",
                     s->dir, seg);
        if (ngx_file_info(path, &fi) == NGX_FILE_ERROR) {
            continue;
        }

        ngx_snprintf(path, NGX_MAX_PATH, "%s/segment-%08ui.shipped%Z",
                     s->dir, seg);
        if (ngx_file_info(path, &fi) != NGX_FILE_ERROR) {
            if (prune) {
                prune = ngx_http_smartflow_audit_s3_remove(s, seg);
            }

            continue;
        }

        s->backlog++;

        /* removed only once shipped, and in order */
        if (stop) {
            prune = 0;
            continue;
        }

        /* its timestamp still spooled: shipped with it, later */
        ngx_snprintf(path, NGX_MAX_PATH, "%s/segment-%08ui.tsq%Z", s->dir,
                     seg);
        if (ngx_file_info(path, &fi) != NGX_FILE_ERROR) {
            prune = 0;
            continue;
        }

        /* or a seal just written, whose query is not spooled yet */
        if (s->tsa_wait) {
            ngx_snprintf(path, NGX_MAX_PATH, "%s/segment-%08ui.tsr%Z",
                         s->dir, seg);

            if (ngx_file_info(path, &fi) == NGX_FILE_ERROR) {
                ngx_snprintf(path, NGX_MAX_PATH,
                             "%s/" NGX_SMARTFLOW_AUDIT_SEAL "%Z", s->dir,
                             seg);

                if (ngx_file_info(path, &fi) != NGX_FILE_ERROR
                    && time(NULL) - ngx_file_mtime(&fi) < s->tsa_wait)
                {
                    prune = 0;
                    continue;
                }
            }
        }

        /*
         * A worker told to quit ends its round here, between segments:
         * the next worker's round goes on from the folder
         */
        if (ngx_exiting || ngx_quit || ngx_terminate) {
            break;
        }

        len = 0;
        rc = NGX_OK;

        ngx_snprintf(progress, NGX_MAX_PATH, "%s/segment-%08ui.shipping%Z",
                     s->dir, seg);

        ngx_http_smartflow_audit_s3_progress(progress, done, sizeof(done));

        for (i = 0; i < 3; i++) {
            ngx_snprintf(file, sizeof(file), "segment-%08ui.%s%Z", seg,
                         ext[i]);

            if (i == 2) {
                ngx_snprintf(path, NGX_MAX_PATH, "%s/%s%Z", s->dir, file);
                if (ngx_file_info(path, &fi) == NGX_FILE_ERROR) {
                    break;
                }
            }

            rc = ngx_http_smartflow_audit_s3_put(s, file, manifest + len,
                                                 sizeof(manifest) - len,
                                                 done);

            if (rc == NGX_DONE) {
                len += ngx_strlen(manifest + len);
                rc = NGX_OK;
                continue;
            }

            if (rc != NGX_OK) {
                break;
            }

            len += ngx_strlen(manifest + len);

            /* confirmed: a failure after it does not put it again */
            if (ngx_http_smartflow_audit_write_ro(progress, manifest, len,
                                                  s->err, sizeof(s->err))
                != NGX_OK)
            {
                rc = NGX_ERROR;
                break;
            }
        }

        if (rc == NGX_OK) {
            /* signed: a mark is what lets a segment go from the folder */
            len = sf_audit_mark_sign(&s->key, time(NULL), (char *) manifest,
                                     len, sizeof(manifest));
            if (len == 0) {
                snprintf(s->err, sizeof(s->err), "signing the mark of "
                         "segment %lu failed (no key valid now?)",
                         (unsigned long) seg);
                rc = NGX_ERROR;

            } else {
                rc = ngx_http_smartflow_audit_s3_mark(s, seg, manifest, len);
            }

            if (rc == NGX_OK) {
                (void) unlink((char *) progress);
            }
        }

        if (rc != NGX_OK) {
            /* in order: the later ones wait for this one */
            s->rc = (rc == NGX_ERROR) ? NGX_ERROR : NGX_AGAIN;
            stop = 1;
            prune = 0;
            continue;
        }

        s->backlog--;
        s->segments++;

        /* confirmed: the local copy may go */
        if (prune) {
            prune = ngx_http_smartflow_audit_s3_remove(s, seg);
        }
    }
}


static void
ngx_http_smartflow_audit_s3_done(ngx_event_t *ev)
{
    ngx_msec_t                      delay;
    ngx_uint_t                      shift, level;
    ngx_slab_pool_t                *shpool;
    ngx_thread_task_t              *task;
    ngx_http_smartflow_audit_s3_t  *s;
    ngx_http_smartflow_audit_sh_t  *sh;

    task = ev->data;
    s = task->ctx;

    shpool = (ngx_slab_pool_t *) s->amcf->zone->shm.addr;
    sh = shpool->data;

    if (s->rc == NGX_DECLINED) {
        /* another process's round runs: its worker is on its way out */
        ngx_log_error(NGX_LOG_INFO, ev->log, 0,
                      "smartflow audit: another process ships to S3, "
                      "next round in %Mms", s->amcf->s3_interval);

        if (!(ngx_exiting || ngx_quit || ngx_terminate)) {
            ngx_add_timer(&ngx_http_smartflow_audit_s3_ev,
                          s->amcf->s3_interval);
        }

        return;
    }

    ngx_shmtx_lock(&shpool->mutex);
    sh->s3_backlog = s->backlog;
    sh->s3_segments += s->segments;
    sh->s3_objects += s->objects;
    sh->s3_bytes += s->bytes;

    if (s->segments) {
        sh->s3_last_ship = ngx_time();
    }

    sh->s3_removed += s->removed;

    if (s->rc != NGX_OK) {
        sh->s3_failures++;
    }

    ngx_shmtx_unlock(&shpool->mutex);

    delay = s->amcf->s3_interval;

    if (s->rc == NGX_OK) {
        ngx_http_smartflow_audit_s3_fails = 0;

    } else {
        /* doubling while it fails, up to smartflow_audit_s3_backoff_max */
        shift = ngx_min(ngx_http_smartflow_audit_s3_fails, 16);
        delay = ngx_min((uint64_t) delay << shift, s->amcf->s3_backoff_max);
        ngx_http_smartflow_audit_s3_fails++;

        level = (s->rc == NGX_ERROR) ? NGX_LOG_ALERT : NGX_LOG_ERR;

        ngx_log_error(level, ev->log, 0,
                      "smartflow audit: shipping to S3 failed: %s; "
                      "%ui segments waiting, next try in %Mms",
                      s->err, s->backlog, delay);
    }

    if (s->segments) {
        ngx_log_error(NGX_LOG_INFO, ev->log, 0,
                      "smartflow audit: %ui segments shipped to S3, "
                      "%ui waiting", s->segments, s->backlog);
    }

    if (s->removed) {
        ngx_log_error(NGX_LOG_INFO, ev->log, 0,
                      "smartflow audit: %ui shipped segments removed from "
                      "the folder", s->removed);
    }

    /* once a segment: it stays, and the ones after it */
    if (s->unremoved
        && s->unremoved != ngx_http_smartflow_audit_s3_unremoved)
    {
        ngx_log_error(NGX_LOG_WARN, ev->log, 0,
                      "smartflow audit: segment %ui is shipped but stays "
                      "in the folder, and the later ones with it: %s",
                      s->unremoved, s->warn);
    }

    ngx_http_smartflow_audit_s3_unremoved = s->unremoved;

    if (!(ngx_exiting || ngx_quit || ngx_terminate)) {
        ngx_add_timer(&ngx_http_smartflow_audit_s3_ev, delay);
    }
}
