/*
 * An incremental Server-Sent Events reader.  Bytes arrive in whatever
 * pieces the network gives; complete events (ended by a blank line) are
 * handed to a callback with their "event:" name, their "data:" lines
 * joined, and their raw bytes.  An event that is not complete yet waits
 * in a carry-over buffer whose size is bounded.  Data of several lines is
 * joined in the caller's scratch pool, so that a long stream of such
 * events does not grow the request's pool.
 */

#include "ngx_http_smartflow_proxy.h"


static ngx_int_t ngx_smartflow_sse_scan(ngx_smartflow_sse_t *sse, u_char *p,
    u_char *last, u_char **rest, ngx_smartflow_sse_pt handler, void *data);
static ngx_int_t ngx_smartflow_sse_keep(ngx_smartflow_sse_t *sse, u_char *p,
    size_t len);
static u_char *ngx_smartflow_sse_eol(u_char *s, u_char *last);
static ngx_int_t ngx_smartflow_sse_event(ngx_smartflow_sse_t *sse,
    u_char *start, u_char *end, ngx_smartflow_sse_pt handler, void *data);


ngx_int_t
ngx_smartflow_sse_feed(ngx_smartflow_sse_t *sse, u_char *p, size_t len,
    ngx_smartflow_sse_pt handler, void *data)
{
    u_char     *rest;
    size_t      kept;
    ngx_int_t   rc;

    if (len == 0) {
        return NGX_OK;
    }

    if (sse->len == 0) {
        /*
         * nothing carried over, the usual case: the events are read where
         * they are and only an unfinished one is copied
         */
        rc = ngx_smartflow_sse_scan(sse, p, p + len, &rest, handler, data);
        if (rc != NGX_OK) {
            return rc;
        }

        return ngx_smartflow_sse_keep(sse, rest, p + len - rest);
    }

    kept = sse->len;

    rc = ngx_smartflow_sse_keep(sse, p, len);
    if (rc != NGX_OK) {
        return rc;
    }

    sse->len = 0;

    rc = ngx_smartflow_sse_scan(sse, sse->buf, sse->buf + kept + len, &rest,
                                handler, data);
    if (rc != NGX_OK) {
        return rc;
    }

    sse->len = sse->buf + kept + len - rest;

    if (sse->len && rest != sse->buf) {
        ngx_memmove(sse->buf, rest, sse->len);
    }

    return NGX_OK;
}


/* appends to the carry-over buffer, within sse->max */
static ngx_int_t
ngx_smartflow_sse_keep(ngx_smartflow_sse_t *sse, u_char *p, size_t len)
{
    u_char  *nbuf;
    size_t   size;

    if (len == 0) {
        return NGX_OK;
    }

    if (sse->len + len > sse->size) {
        if (sse->len + len > sse->max) {
            return NGX_DECLINED;
        }

        size = ngx_max(sse->size * 2, ngx_max(sse->len + len, 4096));
        size = ngx_min(size, sse->max);

        nbuf = ngx_pnalloc(sse->pool, size);
        if (nbuf == NULL) {
            return NGX_ERROR;
        }

        if (sse->len) {
            ngx_memcpy(nbuf, sse->buf, sse->len);
        }

        if (sse->buf) {
            ngx_pfree(sse->pool, sse->buf);
        }

        sse->buf = nbuf;
        sse->size = size;
    }

    ngx_memcpy(sse->buf + sse->len, p, len);
    sse->len += len;

    return NGX_OK;
}


/*
 * Hands on each complete event in p .. last; *rest is where the unfinished
 * one begins.  A line ends in "\n", "\r\n" or "\r": providers send "\n",
 * found with memchr(), and a "\r" before it is looked for the same way.
 */
static ngx_int_t
ngx_smartflow_sse_scan(ngx_smartflow_sse_t *sse, u_char *p, u_char *last,
    u_char **rest, ngx_smartflow_sse_pt handler, void *data)
{
    u_char     *s, *line, *start, *e;
    ngx_int_t   rc;

    s = p;
    start = p;

    while (s < last) {
        line = s;

        e = ngx_smartflow_sse_eol(s, last);

        if (e == last) {
            break;
        }

        if (*e == '\n') {
            s = e + 1;

        } else if (e + 1 == last) {
            /* "\r" may be half of "\r\n": wait for the next byte */
            break;

        } else {
            s = (e[1] == '\n') ? e + 2 : e + 1;
        }

        if (line[0] == '\n' || line[0] == '\r') {
            /* a blank line ends the event */
            rc = ngx_smartflow_sse_event(sse, start, s, handler, data);
            if (rc != NGX_OK) {
                return rc;
            }

            start = s;
        }
    }

    *rest = start;

    return NGX_OK;
}


/* the first "\n" or "\r" in s .. last, or last: providers send "\n" */

static u_char *
ngx_smartflow_sse_eol(u_char *s, u_char *last)
{
    u_char  *lf, *cr;

    lf = memchr(s, '\n', last - s);
    cr = memchr(s, '\r', (lf ? lf : last) - s);

    return cr ? cr : (lf ? lf : last);
}


static ngx_int_t
ngx_smartflow_sse_event(ngx_smartflow_sse_t *sse, u_char *start, u_char *end,
    ngx_smartflow_sse_pt handler, void *data)
{
    u_char                     *s, *e, *v, *d;
    size_t                      n;
    ngx_uint_t                  lines;
    ngx_pool_t                 *pool;
    ngx_smartflow_sse_event_t   ev;

    ngx_memzero(&ev, sizeof(ngx_smartflow_sse_event_t));

    ev.raw.data = start;
    ev.raw.len = end - start;

    /* the joined data is never longer than the event itself */
    d = NULL;
    lines = 0;

    for (s = start; s < end; s = e) {

        e = ngx_smartflow_sse_eol(s, end);
        n = e - s;

        if (e < end && *e == '\r' && e + 1 < end && e[1] == '\n') {
            e++;
        }

        if (e < end) {
            e++;
        }

        if (n == 0 || s[0] == ':') {
            continue;
        }

        v = ngx_strlchr(s, s + n, ':');
        v = v ? v + 1 : s + n;

        if (v < s + n && *v == ' ') {
            v++;
        }

        if (n >= 4 && ngx_strncmp(s, "data", 4) == 0
            && (n == 4 || s[4] == ':'))
        {
            if (lines++ == 0) {
                /* one data line, the usual case: point at it */
                ev.data.data = v;
                ev.data.len = s + n - v;
                continue;
            }

            if (d == NULL) {
                pool = sse->scratch ? sse->scratch : sse->pool;

                d = ngx_pnalloc(pool, end - start);
                if (d == NULL) {
                    return NGX_ERROR;
                }

                ngx_memcpy(d, ev.data.data, ev.data.len);
                ev.data.data = d;
            }

            d[ev.data.len++] = '\n';
            ngx_memcpy(d + ev.data.len, v, s + n - v);
            ev.data.len += s + n - v;

        } else if (n >= 6 && ngx_strncmp(s, "event:", 6) == 0) {
            ev.event.data = v;
            ev.event.len = s + n - v;
        }
    }

    if (lines == 0 && ev.event.len == 0) {
        /* comments and keep-alives only: nothing to dispatch */
        ev.comment = 1;
    }

    return handler(data, &ev);
}
