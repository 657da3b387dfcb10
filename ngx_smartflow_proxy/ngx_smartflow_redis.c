/*
 * hiredis on nginx's event loop.  The async context's socket becomes an
 * nginx connection whose read and write events hiredis switches on and
 * off through its adapter hooks (level-triggered, as hiredis reads and
 * writes one buffer per call); the connect itself is non-blocking, to an
 * address resolved when the configuration was read.  A watchdog timer
 * bounds every wait for an answer: when Redis stops answering the
 * context is freed, which answers each pending command with NULL, and a
 * reconnect timer retries with a growing delay.  The first worker to see
 * the connection fail logs it, once per outage.  The connection counts
 * as idle for nginx, so that a worker told to quit hears of it when nginx
 * closes its idle connections: the owner sends then what it still holds
 * (the keys' leases and settlements), and the worker waits for the
 * answers still to come, for the connection's timeout from that moment
 * in all (an answer does not renew it; a command sent later with none
 * waiting has a timeout of its own), and no longer than
 * worker_shutdown_timeout.  After a
 * connect, AUTH, SELECT and SCRIPT LOAD of every script go first on the
 * connection; a PING behind them marks it usable, so EVALSHA never meets
 * a Redis that has lost its scripts.
 */

#include <openssl/evp.h>

#include "ngx_smartflow_redis.h"


#define NGX_SMARTFLOW_REDIS_BACKOFF_MIN  50     /* ms */
#define NGX_SMARTFLOW_REDIS_BACKOFF_MAX  1000


typedef struct ngx_smartflow_redis_cmd_s  ngx_smartflow_redis_cmd_t;

struct ngx_smartflow_redis_cmd_s {
    ngx_smartflow_redis_t      *rd;
    ngx_smartflow_redis_pt      handler;
    void                       *data;
    ngx_smartflow_redis_cmd_t  *next;
};


static void ngx_smartflow_redis_connect(ngx_smartflow_redis_t *rd);
static void ngx_smartflow_redis_connected(const redisAsyncContext *ac,
    int status);
static void ngx_smartflow_redis_disconnected(const redisAsyncContext *ac,
    int status);
static void ngx_smartflow_redis_lost(ngx_smartflow_redis_t *rd,
    const char *why);
static void ngx_smartflow_redis_quit(ngx_smartflow_redis_t *rd);
static void ngx_smartflow_redis_give_up(ngx_smartflow_redis_t *rd);
static ngx_msec_t ngx_smartflow_redis_wait(ngx_smartflow_redis_t *rd);
static void ngx_smartflow_redis_ready(ngx_smartflow_redis_t *rd,
    redisReply *reply, void *data);
static void ngx_smartflow_redis_setup(ngx_smartflow_redis_t *rd,
    redisReply *reply, void *data);
static void ngx_smartflow_redis_reply(redisAsyncContext *ac, void *r,
    void *privdata);
static void ngx_smartflow_redis_watchdog(ngx_event_t *ev);
static void ngx_smartflow_redis_retry(ngx_event_t *ev);
static void ngx_smartflow_redis_read(ngx_event_t *ev);
static void ngx_smartflow_redis_write(ngx_event_t *ev);
static void ngx_smartflow_redis_add_read(void *data);
static void ngx_smartflow_redis_del_read(void *data);
static void ngx_smartflow_redis_add_write(void *data);
static void ngx_smartflow_redis_del_write(void *data);
static void ngx_smartflow_redis_cleanup(void *data);


/* ADDR [password=P] [db=N] [timeout=TIME] [fail=open|closed] */
char *
ngx_smartflow_redis_parse(ngx_conf_t *cf, ngx_smartflow_redis_t *rd,
    ngx_str_t *args, ngx_uint_t nargs)
{
    ngx_int_t   n;
    ngx_str_t   s;
    ngx_uint_t  i;
    ngx_url_t   u;

    ngx_memzero(&u, sizeof(ngx_url_t));

    u.url = args[0];
    u.default_port = 6379;

    /* resolved here, once: a worker never waits for DNS */
    if (ngx_parse_url(cf->pool, &u) != NGX_OK || u.naddrs == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid smartflow_redis address \"%V\"%s%s",
                           &args[0], u.err ? ": " : "",
                           u.err ? u.err : "");
        return NGX_CONF_ERROR;
    }

    if (u.addrs[0].sockaddr->sa_family != AF_INET
#if (NGX_HAVE_INET6)
        && u.addrs[0].sockaddr->sa_family != AF_INET6
#endif
       )
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "smartflow_redis \"%V\" is not a TCP address",
                           &args[0]);
        return NGX_CONF_ERROR;
    }

    n = ngx_sock_ntop(u.addrs[0].sockaddr, u.addrs[0].socklen, rd->ip,
                      NGX_INET6_ADDRSTRLEN, 0);
    rd->ip[n] = '\0';
    rd->port = ngx_inet_get_port(u.addrs[0].sockaddr);
    rd->name = args[0];
    rd->timeout = 1000;

    for (i = 1; i < nargs; i++) {
        s = args[i];

        if (ngx_strncmp(s.data, "password=", 9) == 0) {
            rd->password.data = s.data + 9;
            rd->password.len = s.len - 9;

            if (rd->password.len == 0) {
                goto invalid;
            }

            continue;
        }

        if (ngx_strncmp(s.data, "db=", 3) == 0) {
            n = ngx_atoi(s.data + 3, s.len - 3);

            if (n == NGX_ERROR || n > 65535) {
                goto invalid;
            }

            rd->db = n;
            continue;
        }

        if (ngx_strncmp(s.data, "timeout=", 8) == 0) {
            s.data += 8;
            s.len -= 8;

            rd->timeout = ngx_parse_time(&s, 0);

            if (rd->timeout == (ngx_msec_t) NGX_ERROR || rd->timeout == 0) {
                goto invalid;
            }

            continue;
        }

        if (s.len == sizeof("fail=open") - 1
            && ngx_strncmp(s.data, "fail=open", s.len) == 0)
        {
            rd->fail_closed = 0;
            continue;
        }

        if (s.len == sizeof("fail=closed") - 1
            && ngx_strncmp(s.data, "fail=closed", s.len) == 0)
        {
            rd->fail_closed = 1;
            continue;
        }

        goto invalid;
    }

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid smartflow_redis parameter \"%V\"", &args[i]);
    return NGX_CONF_ERROR;
}


/* a Lua script, sent by SCRIPT LOAD on connect and run with EVALSHA */
ngx_int_t
ngx_smartflow_redis_script(ngx_conf_t *cf, ngx_smartflow_redis_t *rd,
    char *text, ngx_uint_t *index)
{
    unsigned int                   len;
    ngx_smartflow_redis_script_t  *sc;
    u_char                         md[EVP_MAX_MD_SIZE];

    if (rd->nscripts == NGX_SMARTFLOW_REDIS_MAX_SCRIPTS) {
        return NGX_ERROR;
    }

    sc = &rd->scripts[rd->nscripts];
    sc->text.data = (u_char *) text;
    sc->text.len = ngx_strlen(text);

    if (EVP_Digest(sc->text.data, sc->text.len, md, &len, EVP_sha1(), NULL)
        != 1)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "EVP_Digest() failed");
        return NGX_ERROR;
    }

    *ngx_hex_dump(sc->sha, md, len) = '\0';
    *index = rd->nscripts++;

    return NGX_OK;
}


void
ngx_smartflow_redis_start(ngx_smartflow_redis_t *rd, ngx_log_t *log)
{
    rd->log = log;
    rd->backoff = NGX_SMARTFLOW_REDIS_BACKOFF_MIN;

    /* a timer's data is read as a connection when debug logging */
    rd->dummy.fd = (ngx_socket_t) -1;

    /*
     * Not cancelable: it is set only while commands wait for their
     * answers, so a worker told to quit waits for them, until its
     * deadline, rather than leave their outcome unknown.  Once
     * worker_shutdown_timeout has passed, the read handler gives up.
     */
    rd->watchdog.handler = ngx_smartflow_redis_watchdog;
    rd->watchdog.data = &rd->dummy;
    rd->watchdog.log = log;

    rd->reconnect.handler = ngx_smartflow_redis_retry;
    rd->reconnect.data = &rd->dummy;
    rd->reconnect.log = log;
    rd->reconnect.cancelable = 1;

    ngx_smartflow_redis_connect(rd);
}


static void
ngx_smartflow_redis_connect(ngx_smartflow_redis_t *rd)
{
    ngx_uint_t          i;
    ngx_connection_t   *c;
    redisAsyncContext  *ac;

    ac = redisAsyncConnect((char *) rd->ip, rd->port);

    if (ac == NULL) {
        ngx_smartflow_redis_lost(rd, "out of memory");
        return;
    }

    if (ac->err) {
        ngx_smartflow_redis_lost(rd, ac->errstr);
        redisAsyncFree(ac);
        return;
    }

    c = ngx_get_connection(ac->c.fd, rd->log);
    if (c == NULL) {
        redisAsyncFree(ac);
        ngx_smartflow_redis_lost(rd, "no free connection");
        return;
    }

    c->data = rd;
    c->read->handler = ngx_smartflow_redis_read;
    c->write->handler = ngx_smartflow_redis_write;
    c->read->log = rd->log;
    c->write->log = rd->log;

    /* nginx calls the read handler of idle ones when the worker quits */
    c->idle = 1;

    rd->ac = ac;
    rd->conn = c;
    rd->state = NGX_SMARTFLOW_REDIS_CONNECTING;
    ac->data = rd;

    ac->ev.data = rd;
    ac->ev.addRead = ngx_smartflow_redis_add_read;
    ac->ev.delRead = ngx_smartflow_redis_del_read;
    ac->ev.addWrite = ngx_smartflow_redis_add_write;
    ac->ev.delWrite = ngx_smartflow_redis_del_write;
    ac->ev.cleanup = ngx_smartflow_redis_cleanup;

    (void) redisAsyncSetConnectCallback(ac, ngx_smartflow_redis_connected);
    (void) redisAsyncSetDisconnectCallback(ac,
                                           ngx_smartflow_redis_disconnected);

    /* queued now, sent once the connect completes */
    if (rd->password.len) {
        (void) redisAsyncCommand(ac, ngx_smartflow_redis_reply,
                                 NULL, "AUTH %b", rd->password.data,
                                 rd->password.len);
    }

    if (rd->db) {
        (void) redisAsyncCommand(ac, ngx_smartflow_redis_reply, NULL,
                                 "SELECT %d", (int) rd->db);
    }

    for (i = 0; i < rd->nscripts; i++) {
        (void) redisAsyncCommand(ac, ngx_smartflow_redis_reply, NULL,
                                 "SCRIPT LOAD %b", rd->scripts[i].text.data,
                                 rd->scripts[i].text.len);
    }

    rd->pending = 0;

    if (ngx_smartflow_redis_command(rd, ngx_smartflow_redis_ready, NULL,
                                    1, (const char *[]) { "PING" },
                                    (const size_t []) { 4 })
        != NGX_OK)
    {
        /* the context is still ours: the reply handler frees it */
        return;
    }
}


/* hiredis: the TCP connect finished, or failed */
static void
ngx_smartflow_redis_connected(const redisAsyncContext *ac, int status)
{
    ngx_smartflow_redis_t  *rd;

    rd = ac->data;

    if (status != REDIS_OK) {
        /* hiredis frees the context after this returns */
        rd->ac = NULL;
        ngx_smartflow_redis_lost(rd, ac->errstr);
    }
}


/* hiredis: the connection is gone; the context is freed after this */
static void
ngx_smartflow_redis_disconnected(const redisAsyncContext *ac, int status)
{
    ngx_smartflow_redis_t  *rd;

    rd = ac->data;

    if (rd->ac == ac) {
        rd->ac = NULL;
        ngx_smartflow_redis_lost(rd, ac->err ? ac->errstr
                                             : "connection closed");
    }
}


static void
ngx_smartflow_redis_lost(ngx_smartflow_redis_t *rd, const char *why)
{
    if (ngx_atomic_cmp_set(rd->down_flag, 0, 1)) {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "smartflow proxy: redis %V unreachable (%s); %s "
                      "until it answers again", &rd->name,
                      why ? why : "error",
                      rd->fail_closed
                      ? "virtual keys are refused with 503"
                      : "virtual keys are served from the local zone");
    }

    rd->state = NGX_SMARTFLOW_REDIS_DOWN;

    if (rd->watchdog.timer_set) {
        ngx_del_timer(&rd->watchdog);
    }

    if (!ngx_exiting && !ngx_terminate && !rd->reconnect.timer_set) {
        ngx_add_timer(&rd->reconnect, rd->backoff);

        rd->backoff = ngx_min(rd->backoff * 2,
                              NGX_SMARTFLOW_REDIS_BACKOFF_MAX);
    }
}


/* the PING behind AUTH, SELECT and SCRIPT LOAD came back */
static void
ngx_smartflow_redis_ready(ngx_smartflow_redis_t *rd, redisReply *reply,
    void *data)
{
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        return;
    }

    rd->state = NGX_SMARTFLOW_REDIS_UP;
    rd->backoff = NGX_SMARTFLOW_REDIS_BACKOFF_MIN;

    if (ngx_atomic_cmp_set(rd->down_flag, 1, 0)) {
        ngx_log_error(NGX_LOG_NOTICE, rd->log, 0,
                      "smartflow proxy: redis %V answers again",
                      &rd->name);
    }

    if (rd->on_up) {
        rd->on_up(rd);
    }
}


/* AUTH, SELECT, SCRIPT LOAD: an error there makes the connection unusable */
static void
ngx_smartflow_redis_setup(ngx_smartflow_redis_t *rd, redisReply *reply,
    void *data)
{
    redisAsyncContext  *ac;

    if (reply && reply->type == REDIS_REPLY_ERROR && rd->ac) {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "smartflow proxy: redis %V refused the connection "
                      "setup: %*s", &rd->name, (size_t) reply->len,
                      reply->str);

        ac = rd->ac;
        rd->ac = NULL;
        ngx_smartflow_redis_lost(rd, "setup refused");
        redisAsyncFree(ac);
    }
}


static void
ngx_smartflow_redis_reply(redisAsyncContext *ac, void *r, void *privdata)
{
    redisReply                 *reply;
    ngx_smartflow_redis_t      *rd;
    ngx_smartflow_redis_cmd_t  *cmd;

    rd = ac->data;
    reply = r;
    cmd = privdata;

    if (cmd == NULL) {
        ngx_smartflow_redis_setup(rd, reply, NULL);
        return;
    }

    if (rd->pending) {
        rd->pending--;
    }

    if (rd->ac == ac) {
        if (rd->pending) {
            /*
             * progress: the next answer gets a full timeout again, but
             * in a worker told to quit, whose one deadline holds
             */
            ngx_add_timer(&rd->watchdog, ngx_smartflow_redis_wait(rd));

        } else if (rd->watchdog.timer_set) {
            ngx_del_timer(&rd->watchdog);
        }
    }

    cmd->handler(rd, reply, cmd->data);

    cmd->next = rd->free;
    rd->free = cmd;
}


ngx_int_t
ngx_smartflow_redis_command(ngx_smartflow_redis_t *rd,
    ngx_smartflow_redis_pt handler, void *data, int argc, const char **argv,
    const size_t *argvlen)
{
    ngx_smartflow_redis_cmd_t  *cmd;

    if (rd->ac == NULL
        || (rd->state != NGX_SMARTFLOW_REDIS_UP && handler
            != ngx_smartflow_redis_ready))
    {
        return NGX_DECLINED;
    }

    cmd = rd->free;

    if (cmd) {
        rd->free = cmd->next;

    } else {
        cmd = ngx_alloc(sizeof(ngx_smartflow_redis_cmd_t), rd->log);
        if (cmd == NULL) {
            return NGX_DECLINED;
        }
    }

    cmd->rd = rd;
    cmd->handler = handler;
    cmd->data = data;

    if (redisAsyncCommandArgv(rd->ac, ngx_smartflow_redis_reply, cmd,
                              argc, argv, argvlen)
        != REDIS_OK)
    {
        cmd->next = rd->free;
        rd->free = cmd;
        return NGX_DECLINED;
    }

    if (rd->pending++ == 0) {
        if (rd->quitting) {
            /*
             * a wait that starts with nothing pending (a request still
             * running when the worker was told to quit settles late)
             * gets one timeout of its own, not what is left of another
             */
            rd->deadline = ngx_current_msec + rd->timeout;
        }

        ngx_add_timer(&rd->watchdog, ngx_smartflow_redis_wait(rd));
    }

    return NGX_OK;
}


/*
 * How long the answer to come is waited for: the timeout, or, in a
 * worker told to quit, what is left of the timeout from that moment.
 */
static ngx_msec_t
ngx_smartflow_redis_wait(ngx_smartflow_redis_t *rd)
{
    ngx_msec_int_t  left;

    if (!rd->quitting) {
        return rd->timeout;
    }

    left = (ngx_msec_int_t) (rd->deadline - ngx_current_msec);

    return (left > 0) ? (ngx_msec_t) left : 1;
}


/* EVALSHA script nkeys args... (argv[0..2] are filled in here) */
ngx_int_t
ngx_smartflow_redis_eval(ngx_smartflow_redis_t *rd, ngx_uint_t script,
    ngx_smartflow_redis_pt handler, void *data, int nkeys, int argc,
    const char **argv, const size_t *argvlen)
{
    size_t  *lens;
    u_char   n[NGX_INT_T_LEN];

    lens = (size_t *) argvlen;

    argv[0] = "EVALSHA";
    lens[0] = 7;
    argv[1] = (char *) rd->scripts[script].sha;
    lens[1] = 40;
    argv[2] = (char *) n;
    lens[2] = ngx_sprintf(n, "%d", nkeys) - n;

    return ngx_smartflow_redis_command(rd, handler, data, argc, argv,
                                       argvlen);
}


/* no answer in time: the context goes, every waiting command with it */
static void
ngx_smartflow_redis_watchdog(ngx_event_t *ev)
{
    redisAsyncContext      *ac;
    ngx_smartflow_redis_t  *rd;

    rd = (ngx_smartflow_redis_t *) ((u_char *) ev
                                    - offsetof(ngx_smartflow_redis_t,
                                               watchdog));

    if (rd->ac == NULL) {
        return;
    }

    if (rd->quitting) {
        /* the worker's wait is over: Redis is not given up for the others */
        ngx_log_error(NGX_LOG_NOTICE, rd->log, 0,
                      "smartflow proxy: redis %V: timeout passed with %ui "
                      "answers still to come as the worker quits",
                      &rd->name, rd->pending);

        ngx_smartflow_redis_give_up(rd);
        return;
    }

    ac = rd->ac;
    rd->ac = NULL;

    ngx_smartflow_redis_lost(rd, "timed out");
    redisAsyncFree(ac);
}


static void
ngx_smartflow_redis_retry(ngx_event_t *ev)
{
    ngx_smartflow_redis_t  *rd;

    rd = (ngx_smartflow_redis_t *) ((u_char *) ev
                                    - offsetof(ngx_smartflow_redis_t,
                                               reconnect));

    if (rd->ac == NULL && !ngx_exiting && !ngx_terminate) {
        ngx_smartflow_redis_connect(rd);
    }
}


static void
ngx_smartflow_redis_read(ngx_event_t *ev)
{
    ngx_connection_t       *c;
    ngx_smartflow_redis_t  *rd;

    c = ev->data;
    rd = c->data;

    if (rd->ac == NULL) {
        return;
    }

    if (c->close && !c->error) {
        c->close = 0;

        /*
         * the worker is told to quit: nginx closes its idle connections;
         * nothing else asks a running worker for this one (it is not in
         * the reusable queue nginx drains)
         */
        if (ngx_exiting) {
            c->idle = 0;

            ngx_smartflow_redis_quit(rd);
            return;
        }
    }

    if (c->close) {
        /*
         * worker_shutdown_timeout has passed: nginx closes every
         * connection left, this one too; what was not answered is kept
         * as after an outage, and the worker is free to exit
         */
        ngx_log_error(NGX_LOG_NOTICE, rd->log, 0,
                      "smartflow proxy: redis %V: worker_shutdown_timeout "
                      "passed with %ui answers still to come", &rd->name,
                      rd->pending);

        ngx_smartflow_redis_give_up(rd);
        return;
    }

    redisAsyncHandleRead(rd->ac);
}


/*
 * The worker is told to quit: what the owner still holds goes now, on a
 * connection the worker waits on, and from now on all the answers to
 * come are waited for no longer than one timeout.
 */
static void
ngx_smartflow_redis_quit(ngx_smartflow_redis_t *rd)
{
    ngx_event_t  *wev;

    if (rd->quitting) {
        return;
    }

    rd->quitting = 1;
    rd->deadline = ngx_current_msec + rd->timeout;

    if (rd->on_quit) {
        rd->on_quit(rd);
    }

    /* nginx runs no posted event before the next turn of its loop */
    wev = rd->conn ? rd->conn->write : NULL;

    if (wev && wev->posted) {
        ngx_delete_posted_event(wev);
        wev->handler(wev);
    }
}


/*
 * A quitting worker stops waiting: the commands not answered are
 * answered NULL and kept by their owners as after an outage; no
 * reconnect follows, and the other workers keep their connections.
 */
static void
ngx_smartflow_redis_give_up(ngx_smartflow_redis_t *rd)
{
    redisAsyncContext  *ac;

    ac = rd->ac;
    rd->ac = NULL;
    rd->state = NGX_SMARTFLOW_REDIS_DOWN;

    if (rd->watchdog.timer_set) {
        ngx_del_timer(&rd->watchdog);
    }

    redisAsyncFree(ac);
}


static void
ngx_smartflow_redis_write(ngx_event_t *ev)
{
    ngx_connection_t       *c;
    ngx_smartflow_redis_t  *rd;

    c = ev->data;
    rd = c->data;

    if (rd->ac) {
        rd->writing = 1;
        redisAsyncHandleWrite(rd->ac);
        rd->writing = 0;
    }
}


/* hiredis's hooks: level-triggered events on the connection */

static void
ngx_smartflow_redis_add_read(void *data)
{
    ngx_smartflow_redis_t *rd = data;

    if (rd->conn && !rd->conn->read->active) {
        (void) ngx_add_event(rd->conn->read, NGX_READ_EVENT,
                             NGX_LEVEL_EVENT);
    }
}


static void
ngx_smartflow_redis_del_read(void *data)
{
    ngx_smartflow_redis_t *rd = data;

    if (rd->conn && rd->conn->read->active) {
        (void) ngx_del_event(rd->conn->read, NGX_READ_EVENT, 0);
    }
}


/*
 * Commands written by the end of this turn of the event loop, all in one
 * write(); only a socket that is full (or a connect in progress) waits
 * for epoll to say it is writable.
 */
static void
ngx_smartflow_redis_add_write(void *data)
{
    ngx_smartflow_redis_t *rd = data;

    ngx_event_t  *wev;

    if (rd->conn == NULL) {
        return;
    }

    wev = rd->conn->write;

    if (rd->writing || rd->ac == NULL
        || !(rd->ac->c.flags & REDIS_CONNECTED))
    {
        if (!wev->active) {
            (void) ngx_add_event(wev, NGX_WRITE_EVENT, NGX_LEVEL_EVENT);
        }

        return;
    }

    if (!wev->active && !wev->posted) {
        ngx_post_event(wev, &ngx_posted_events);
    }
}


static void
ngx_smartflow_redis_del_write(void *data)
{
    ngx_smartflow_redis_t *rd = data;

    if (rd->conn && rd->conn->write->active) {
        (void) ngx_del_event(rd->conn->write, NGX_WRITE_EVENT, 0);
    }
}


/* the context is being freed; hiredis closes the socket itself */
static void
ngx_smartflow_redis_cleanup(void *data)
{
    ngx_smartflow_redis_t *rd = data;

    ngx_connection_t  *c;

    c = rd->conn;

    if (c == NULL) {
        return;
    }

    rd->conn = NULL;

    if (c->read->active) {
        (void) ngx_del_event(c->read, NGX_READ_EVENT, 0);
    }

    if (c->write->active) {
        (void) ngx_del_event(c->write, NGX_WRITE_EVENT, 0);
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    ngx_free_connection(c);
    c->fd = (ngx_socket_t) -1;
}
