/*
 * One asynchronous Redis connection per worker, driven by nginx's event
 * loop through hiredis's adapter hooks.  Commands are refused at once
 * (NGX_DECLINED) while the connection is down, so callers fall back to
 * their local state without waiting; every command sent is answered
 * exactly once, with NULL when the connection failed or timed out.
 */

#ifndef _NGX_SMARTFLOW_REDIS_H_INCLUDED_
#define _NGX_SMARTFLOW_REDIS_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>

#include <hiredis/hiredis.h>
#include <hiredis/async.h>


#define NGX_SMARTFLOW_REDIS_DOWN        0
#define NGX_SMARTFLOW_REDIS_CONNECTING  1
#define NGX_SMARTFLOW_REDIS_UP          2

#define NGX_SMARTFLOW_REDIS_MAX_SCRIPTS 8


typedef struct ngx_smartflow_redis_s  ngx_smartflow_redis_t;

typedef void (*ngx_smartflow_redis_pt)(ngx_smartflow_redis_t *rd,
    redisReply *reply, void *data);

typedef void (*ngx_smartflow_redis_up_pt)(ngx_smartflow_redis_t *rd);


typedef struct {
    ngx_str_t                   text;
    u_char                      sha[41];    /* hex SHA-1, NUL-terminated */
} ngx_smartflow_redis_script_t;


struct ngx_smartflow_redis_s {
    /* configuration */
    ngx_str_t                   name;       /* "host:port" as written */
    u_char                      ip[NGX_INET6_ADDRSTRLEN + 1];
    int                         port;
    ngx_str_t                   password;
    ngx_uint_t                  db;
    ngx_msec_t                  timeout;
    ngx_uint_t                  fail_closed;
    ngx_smartflow_redis_script_t  scripts[NGX_SMARTFLOW_REDIS_MAX_SCRIPTS];
    ngx_uint_t                  nscripts;
    ngx_smartflow_redis_up_pt   on_up;
    ngx_smartflow_redis_up_pt   on_quit;    /* the worker is told to quit */
    ngx_atomic_t               *down_flag;  /* shared: one log line */

    /* in each worker */
    redisAsyncContext          *ac;
    ngx_connection_t           *conn;
    ngx_uint_t                  state;
    ngx_uint_t                  pending;
    ngx_uint_t                  writing;    /* in redisAsyncHandleWrite */
    ngx_uint_t                  quitting;
    ngx_msec_t                  deadline;   /* of a quitting worker's wait */
    ngx_msec_t                  backoff;
    ngx_event_t                 watchdog;
    ngx_event_t                 reconnect;
    ngx_connection_t            dummy;
    ngx_log_t                  *log;
    void                       *free;       /* spare command records */
    void                       *data;       /* the owner's */
};


char *ngx_smartflow_redis_parse(ngx_conf_t *cf, ngx_smartflow_redis_t *rd,
    ngx_str_t *args, ngx_uint_t nargs);
ngx_int_t ngx_smartflow_redis_script(ngx_conf_t *cf,
    ngx_smartflow_redis_t *rd, char *text, ngx_uint_t *index);
void ngx_smartflow_redis_start(ngx_smartflow_redis_t *rd, ngx_log_t *log);
ngx_int_t ngx_smartflow_redis_command(ngx_smartflow_redis_t *rd,
    ngx_smartflow_redis_pt handler, void *data, int argc, const char **argv,
    const size_t *argvlen);
ngx_int_t ngx_smartflow_redis_eval(ngx_smartflow_redis_t *rd,
    ngx_uint_t script, ngx_smartflow_redis_pt handler, void *data,
    int nkeys, int argc, const char **argv, const size_t *argvlen);

/* the worker's smartflow_redis connection, for other modules; NULL: none */
ngx_smartflow_redis_t *ngx_smartflow_redis_shared(void);

#define ngx_smartflow_redis_up(rd)                                           \
    ((rd)->state == NGX_SMARTFLOW_REDIS_UP)


#endif /* _NGX_SMARTFLOW_REDIS_H_INCLUDED_ */
