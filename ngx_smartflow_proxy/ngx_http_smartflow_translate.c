/*
 * What the provider translations share: building trees in x->pool,
 * comparing and joining strings, data URLs, the error classes with their
 * names in each format, and the client events of a stream: a line
 * builder that sizes each event before writing it once, every provider
 * string escaped, and the OpenAI chunks any provider's stream becomes.
 */

#include "ngx_http_smartflow_translate.h"


/*
 * OpenAI clients get the same types and codes as the gateway's own
 * refusals (ngx_http_smartflow_api.c), which follow OpenAI's habits.
 */
ngx_smartflow_xlate_error_kind_t  ngx_smartflow_xlate_error_kinds[] = {
    { "invalid_request_error", "invalid_request_error", NULL },
    { "authentication_error", "invalid_request_error", "invalid_api_key" },
    { "permission_error", "permission_error", NULL },
    { "not_found_error", "invalid_request_error", "not_found" },
    { "request_too_large", "invalid_request_error", "request_too_large" },
    { "rate_limit_error", "rate_limit_error", "rate_limit_exceeded" },
    { "api_error", "api_error", NULL },
    { "overloaded_error", "api_error", "overloaded" }
};


/* trees */

ngx_int_t
ngx_smartflow_xlate_fail(ngx_smartflow_xlate_t *x, char *msg)
{
    x->err.data = (u_char *) msg;
    x->err.len = ngx_strlen(msg);

    return NGX_ERROR;
}


ngx_smartflow_json_t *
ngx_smartflow_xlate_add_num(ngx_pool_t *pool, ngx_smartflow_json_t *parent,
    char *key, ngx_uint_t n)
{
    u_char     *p, *e;
    ngx_str_t   s;

    /* the digits are written backwards from the end of the buffer */

    e = ngx_pnalloc(pool, NGX_INT_T_LEN);
    if (e == NULL) {
        return NULL;
    }

    e += NGX_INT_T_LEN;
    p = e;

    do {
        *--p = (u_char) ('0' + n % 10);
        n /= 10;
    } while (n);

    s.data = p;
    s.len = e - p;

    return ngx_smartflow_xlate_add(pool, parent, key,
                                   NGX_SMARTFLOW_JSON_NUMBER, &s);
}


/* src's member "from", when it is a number, added to dst as key */
ngx_int_t
ngx_smartflow_xlate_add_number(ngx_pool_t *pool, ngx_smartflow_json_t *dst,
    char *key, ngx_smartflow_json_t *src, char *from)
{
    ngx_smartflow_json_t  *v;

    v = ngx_smartflow_json_get(src, from);

    if (v == NULL || v->type != NGX_SMARTFLOW_JSON_NUMBER) {
        return NGX_OK;
    }

    return ngx_smartflow_xlate_add(pool, dst, key, NGX_SMARTFLOW_JSON_NUMBER,
                                   &v->str)
           ? NGX_OK : NGX_ERROR;
}


/*
 * A deep copy keeping the member name; string bytes are shared.  With a
 * budget, each node spends one, and NULL means it ran out (or memory did).
 */
ngx_smartflow_json_t *
ngx_smartflow_xlate_copy(ngx_pool_t *pool, ngx_smartflow_json_t *src,
    ngx_uint_t *budget)
{
    ngx_smartflow_json_t  *j, *c, *cc;

    if (budget) {
        if (*budget == 0) {
            return NULL;
        }

        (*budget)--;
    }

    j = ngx_smartflow_json_new(pool, src->type, &src->str);
    if (j == NULL) {
        return NULL;
    }

    j->key = src->key;
    j->key_plain = src->key_plain;
    j->str_plain = src->str_plain;

    for (c = src->child; c; c = c->next) {
        cc = ngx_smartflow_xlate_copy(pool, c, budget);
        if (cc == NULL) {
            return NULL;
        }

        ngx_smartflow_json_append(j, NULL, cc);
    }

    return j;
}


/*
 * Appends node to parent, or, when first(node), right after the leading
 * children for which first() holds, *lead being the last of them (NULL
 * while there are none): the answers to tool calls go before the rest of
 * a turn.  Keeping *lead makes a turn of n parts cost O(n), however many
 * messages were merged into it.
 */
void
ngx_smartflow_xlate_add_ordered(ngx_smartflow_json_t *parent,
    ngx_smartflow_json_t *node, ngx_smartflow_json_t **lead,
    ngx_uint_t (*first)(ngx_smartflow_json_t *j))
{
    if (!first(node)) {
        ngx_smartflow_json_append(parent, NULL, node);
        return;
    }

    if (*lead == NULL) {
        node->next = parent->child;
        parent->child = node;

    } else {
        node->next = (*lead)->next;
        (*lead)->next = node;
    }

    if (node->next == NULL) {
        parent->last = node;
    }

    parent->nchild++;
    *lead = node;
}


ngx_smartflow_json_t *
ngx_smartflow_xlate_turns(ngx_smartflow_xlate_t *x, ngx_smartflow_json_t *req,
    ngx_smartflow_xlate_turns_t *t, ngx_str_t *system)
{
    ngx_str_t                   text;
    ngx_pool_t                 *pool;
    ngx_smartflow_json_t       *msgs, *turns, *m, *role, *parts, *cur, *p;
    ngx_smartflow_json_t       *next, *turn, *lead;
    ngx_smartflow_xlate_join_t  sys;
    ngx_smartflow_xlate_role_e  side, cur_side;

    pool = x->pool;

    if (req == NULL || req->type != NGX_SMARTFLOW_JSON_OBJECT) {
        (void) ngx_smartflow_xlate_fail(x, "the request body must be a JSON "
                                           "object");
        return NULL;
    }

    msgs = ngx_smartflow_json_get(req, "messages");

    if (msgs == NULL || msgs->type != NGX_SMARTFLOW_JSON_ARRAY) {
        (void) ngx_smartflow_xlate_fail(x, "'messages' must be an array");
        return NULL;
    }

    turns = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_ARRAY, NULL);
    if (turns == NULL) {
        goto nomem;
    }

    ngx_smartflow_xlate_join_init(&sys, pool);
    cur = NULL;
    lead = NULL;
    cur_side = NGX_SMARTFLOW_XLATE_USER;

    for (m = msgs->child; m; m = m->next) {
        role = ngx_smartflow_json_get(m, "role");

        if (!ngx_smartflow_json_is_string(role)) {
            (void) ngx_smartflow_xlate_fail(x, "each message must be an object "
                                               "with a 'role'");
            return NULL;
        }

        /* one system prompt, outside the turns */
        if (ngx_smartflow_xlate_is(role, "system")
            || ngx_smartflow_xlate_is(role, "developer"))
        {
            if (ngx_smartflow_xlate_text_of(pool,
                                            ngx_smartflow_json_get(m,
                                                                   "content"),
                                            "\n\n", &text)
                != NGX_OK
                || ngx_smartflow_xlate_join(&sys, "\n\n", &text) != NGX_OK)
            {
                goto nomem;
            }

            continue;
        }

        if (ngx_smartflow_xlate_is(role, "user")) {
            side = NGX_SMARTFLOW_XLATE_USER;

        } else if (ngx_smartflow_xlate_is(role, "assistant")) {
            side = NGX_SMARTFLOW_XLATE_ASSISTANT;

        } else if (ngx_smartflow_xlate_is(role, "tool")) {
            side = NGX_SMARTFLOW_XLATE_TOOL;

        } else {
            (void) ngx_smartflow_xlate_fail(x, "a message role must be system, "
                                               "developer, user, assistant or "
                                               "tool");
            return NULL;
        }

        parts = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_ARRAY, NULL);
        if (parts == NULL) {
            goto nomem;
        }

        if (t->parts(x, t->data, m, side, parts) != NGX_OK) {
            return NULL;
        }

        if (parts->nchild == 0) {
            continue;
        }

        /* a tool's result is the user's side of the conversation */
        if (side == NGX_SMARTFLOW_XLATE_TOOL) {
            side = NGX_SMARTFLOW_XLATE_USER;
        }

        if (cur && cur_side == side) {
            for (p = parts->child; p; p = next) {
                next = p->next;
                ngx_smartflow_xlate_add_ordered(cur, p, &lead, t->first);
            }

            continue;
        }

        turn = ngx_smartflow_xlate_add(pool, turns, NULL,
                                       NGX_SMARTFLOW_JSON_OBJECT, NULL);
        if (turn == NULL
            || ngx_smartflow_xlate_add_lit(pool, turn, "role",
                                           side == NGX_SMARTFLOW_XLATE_USER
                                           ? "user" : t->assistant)
               == NULL)
        {
            goto nomem;
        }

        ngx_smartflow_json_append(turn, t->parts_key, parts);

        cur = parts;
        cur_side = side;

        lead = NULL;

        for (p = parts->child; p && t->first(p); p = p->next) {
            lead = p;
        }
    }

    if (turns->nchild == 0) {
        (void) ngx_smartflow_xlate_fail(x, "the request has no user or "
                                           "assistant message");
        return NULL;
    }

    *system = sys.str;

    return turns;

nomem:

    (void) ngx_smartflow_xlate_fail(x, "out of memory");
    return NULL;
}


/* OpenAI tool calls and answers */

/*
 * A tool call's "arguments" as an object: the model writes them as a
 * JSON string, not always valid (then {}); some clients send an object.
 */
ngx_smartflow_json_t *
ngx_smartflow_xlate_call_input(ngx_smartflow_xlate_t *x,
    ngx_smartflow_json_t *fn)
{
    ngx_str_t              err;
    ngx_smartflow_json_t  *args, *input;

    args = ngx_smartflow_json_get(fn, "arguments");
    input = NULL;

    if (ngx_smartflow_json_is_string(args) && args->str.len) {
        input = ngx_smartflow_json_parse(x->pool, args->str.data,
                                         args->str.len, &err);

    } else if (args && args->type == NGX_SMARTFLOW_JSON_OBJECT) {
        input = ngx_smartflow_xlate_copy(x->pool, args, NULL);
        if (input == NULL) {
            (void) ngx_smartflow_xlate_fail(x, "out of memory");
            return NULL;
        }
    }

    if (input == NULL || input->type != NGX_SMARTFLOW_JSON_OBJECT) {
        input = ngx_smartflow_json_new(x->pool, NGX_SMARTFLOW_JSON_OBJECT,
                                       NULL);
        if (input == NULL) {
            (void) ngx_smartflow_xlate_fail(x, "out of memory");
            return NULL;
        }
    }

    return input;
}


/* a tool_calls[] entry: {"id","type":"function","function":{...}} */
ngx_int_t
ngx_smartflow_xlate_add_call(ngx_smartflow_xlate_t *x,
    ngx_smartflow_json_t *calls, ngx_str_t *id, ngx_str_t *name,
    ngx_str_t *args)
{
    ngx_pool_t            *pool;
    ngx_smartflow_json_t  *c, *fn;

    pool = x->pool;

    c = ngx_smartflow_xlate_add(pool, calls, NULL, NGX_SMARTFLOW_JSON_OBJECT,
                                NULL);
    if (c == NULL
        || ngx_smartflow_xlate_add(pool, c, "id", NGX_SMARTFLOW_JSON_STRING,
                                   id)
           == NULL
        || ngx_smartflow_xlate_add_lit(pool, c, "type", "function") == NULL)
    {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    fn = ngx_smartflow_xlate_add(pool, c, "function",
                                 NGX_SMARTFLOW_JSON_OBJECT, NULL);
    if (fn == NULL
        || ngx_smartflow_xlate_add(pool, fn, "name",
                                   NGX_SMARTFLOW_JSON_STRING, name)
           == NULL
        || ngx_smartflow_xlate_add(pool, fn, "arguments",
                                   NGX_SMARTFLOW_JSON_STRING, args)
           == NULL)
    {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    return NGX_OK;
}


/*
 * A chat.completion of one choice: the text, null when only tool calls
 * came, the calls when there are some, and the usage, with the cached
 * prompt and the reasoning tokens detailed when there are some.
 */
ngx_smartflow_json_t *
ngx_smartflow_xlate_completion(ngx_smartflow_xlate_t *x, ngx_str_t *id,
    ngx_str_t *text, u_char *text_plain, ngx_smartflow_json_t *calls,
    char *finish, ngx_smartflow_xlate_usage_t *usage)
{
    ngx_uint_t             in, out;
    ngx_pool_t            *pool;
    ngx_smartflow_json_t  *c, *choices, *ch, *msg, *u, *d;

    pool = x->pool;
    in = usage->prompt;
    out = usage->completion;

    c = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_OBJECT, NULL);
    if (c == NULL
        || ngx_smartflow_xlate_add(pool, c, "id", NGX_SMARTFLOW_JSON_STRING,
                                   id)
           == NULL
        || ngx_smartflow_xlate_add_lit(pool, c, "object", "chat.completion")
           == NULL
        || ngx_smartflow_xlate_add_num(pool, c, "created",
                                       (ngx_uint_t) ngx_time())
           == NULL
        || ngx_smartflow_xlate_add(pool, c, "model",
                                   NGX_SMARTFLOW_JSON_STRING, &x->model)
           == NULL)
    {
        goto nomem;
    }

    choices = ngx_smartflow_xlate_add(pool, c, "choices",
                                      NGX_SMARTFLOW_JSON_ARRAY, NULL);
    ch = choices ? ngx_smartflow_xlate_add(pool, choices, NULL,
                                           NGX_SMARTFLOW_JSON_OBJECT, NULL)
                 : NULL;
    if (ch == NULL
        || ngx_smartflow_xlate_add_num(pool, ch, "index", 0) == NULL)
    {
        goto nomem;
    }

    msg = ngx_smartflow_xlate_add(pool, ch, "message",
                                  NGX_SMARTFLOW_JSON_OBJECT, NULL);
    if (msg == NULL
        || ngx_smartflow_xlate_add_lit(pool, msg, "role", "assistant") == NULL
        || ((text->len == 0 && calls->nchild)
            ? ngx_smartflow_xlate_add(pool, msg, "content",
                                      NGX_SMARTFLOW_JSON_NULL, NULL)
            : ngx_smartflow_xlate_add_text(pool, msg, "content", text,
                                           text_plain))
           == NULL)
    {
        goto nomem;
    }

    if (calls->nchild) {
        ngx_smartflow_json_append(msg, "tool_calls", calls);
    }

    if (ngx_smartflow_xlate_add_lit(pool, ch, "finish_reason", finish)
        == NULL)
    {
        goto nomem;
    }

    u = ngx_smartflow_xlate_add(pool, c, "usage", NGX_SMARTFLOW_JSON_OBJECT,
                                NULL);
    if (u == NULL
        || ngx_smartflow_xlate_add_num(pool, u, "prompt_tokens", in) == NULL
        || ngx_smartflow_xlate_add_num(pool, u, "completion_tokens", out)
           == NULL
        || ngx_smartflow_xlate_add_num(pool, u, "total_tokens", in + out)
           == NULL)
    {
        goto nomem;
    }

    if (usage->cached) {
        d = ngx_smartflow_xlate_add(pool, u, "prompt_tokens_details",
                                    NGX_SMARTFLOW_JSON_OBJECT, NULL);
        if (d == NULL
            || ngx_smartflow_xlate_add_num(pool, d, "cached_tokens",
                                           usage->cached)
               == NULL)
        {
            goto nomem;
        }
    }

    if (usage->reasoning) {
        d = ngx_smartflow_xlate_add(pool, u, "completion_tokens_details",
                                    NGX_SMARTFLOW_JSON_OBJECT, NULL);
        if (d == NULL
            || ngx_smartflow_xlate_add_num(pool, d, "reasoning_tokens",
                                           usage->reasoning)
               == NULL)
        {
            goto nomem;
        }
    }

    return c;

nomem:

    (void) ngx_smartflow_xlate_fail(x, "out of memory");
    return NULL;
}


/* strings */

ngx_uint_t
ngx_smartflow_xlate_eq(ngx_str_t *s, char *lit)
{
    size_t  len;

    len = ngx_strlen(lit);

    return s->len == len
           && (len == 0 || ngx_memcmp(s->data, lit, len) == 0);
}


ngx_uint_t
ngx_smartflow_xlate_is(ngx_smartflow_json_t *j, char *lit)
{
    return ngx_smartflow_json_is_string(j)
           && ngx_smartflow_xlate_eq(&j->str, lit);
}


ngx_uint_t
ngx_smartflow_xlate_type_is(ngx_smartflow_json_t *obj, char *type)
{
    return ngx_smartflow_xlate_is(ngx_smartflow_json_get(obj, "type"), type);
}


ngx_uint_t
ngx_smartflow_xlate_present(ngx_smartflow_json_t *j)
{
    return j != NULL && j->type != NGX_SMARTFLOW_JSON_NULL;
}


/* a token count: the leading digits of a number, 0 for anything else */
ngx_uint_t
ngx_smartflow_xlate_uint(ngx_smartflow_json_t *j)
{
    size_t      i;
    ngx_uint_t  n;

    if (j == NULL || j->type != NGX_SMARTFLOW_JSON_NUMBER) {
        return 0;
    }

    n = 0;

    for (i = 0; i < j->str.len; i++) {
        if (j->str.data[i] < '0' || j->str.data[i] > '9'
            || n >= NGX_MAX_INT_T_VALUE / 10)
        {
            break;
        }

        n = n * 10 + (j->str.data[i] - '0');
    }

    return n;
}


void
ngx_smartflow_xlate_str_lit(ngx_str_t *s, char *lit)
{
    s->data = (u_char *) lit;
    s->len = ngx_strlen(lit);
}


/* dst = a + b, b possibly empty */
ngx_int_t
ngx_smartflow_xlate_concat(ngx_pool_t *pool, ngx_str_t *dst, char *a,
    ngx_str_t *b)
{
    size_t   alen;
    u_char  *p;

    alen = ngx_strlen(a);

    p = ngx_pnalloc(pool, alen + b->len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    dst->data = p;
    p = ngx_cpymem(p, a, alen);

    if (b->len) {
        p = ngx_cpymem(p, b->data, b->len);
    }

    dst->len = p - dst->data;

    return NGX_OK;
}


void
ngx_smartflow_xlate_join_init(ngx_smartflow_xlate_join_t *j, ngx_pool_t *pool)
{
    j->pool = pool;
    ngx_str_null(&j->str);
    j->size = 0;
}


/* appends add after sep; an empty add changes nothing */
ngx_int_t
ngx_smartflow_xlate_join(ngx_smartflow_xlate_join_t *j, char *sep,
    ngx_str_t *add)
{
    size_t   slen, need, size;
    u_char  *p;

    if (add->len == 0) {
        return NGX_OK;
    }

    if (j->str.len == 0) {
        j->str = *add;
        j->size = 0;
        return NGX_OK;
    }

    slen = ngx_strlen(sep);
    need = j->str.len + slen + add->len;

    if (need > j->size) {
        size = ngx_max(2 * j->size, need);
        size = ngx_max(size, 256);

        p = ngx_pnalloc(j->pool, size);
        if (p == NULL) {
            return NGX_ERROR;
        }

        ngx_memcpy(p, j->str.data, j->str.len);

        j->str.data = p;
        j->size = size;
    }

    p = j->str.data + j->str.len;
    p = ngx_cpymem(p, sep, slen);
    ngx_memcpy(p, add->data, add->len);

    j->str.len = need;

    return NGX_OK;
}


/*
 * The text of a message content: a string, or the strings, text parts
 * (OpenAI) and text blocks (Anthropic) of an array joined by sep.
 */
ngx_int_t
ngx_smartflow_xlate_text_of(ngx_pool_t *pool, ngx_smartflow_json_t *content,
    char *sep, ngx_str_t *out)
{
    ngx_smartflow_json_t        *c, *t;
    ngx_smartflow_xlate_join_t   j;

    ngx_str_null(out);

    if (ngx_smartflow_json_is_string(content)) {
        *out = content->str;
        return NGX_OK;
    }

    if (content == NULL || content->type != NGX_SMARTFLOW_JSON_ARRAY) {
        return NGX_OK;
    }

    ngx_smartflow_xlate_join_init(&j, pool);

    for (c = content->child; c; c = c->next) {
        t = ngx_smartflow_xlate_type_is(c, "text")
            ? ngx_smartflow_json_get(c, "text") : c;

        if (ngx_smartflow_json_is_string(t)
            && ngx_smartflow_xlate_join(&j, sep, &t->str) != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    *out = j.str;

    return NGX_OK;
}


/* "data:image/png;base64,AAAA" -> its media type and its payload */
ngx_int_t
ngx_smartflow_xlate_data_url(ngx_str_t *url, ngx_str_t *media,
    ngx_str_t *data)
{
    u_char  *p, *last, *comma;

    if (url->len < 5 || ngx_memcmp(url->data, "data:", 5) != 0) {
        return NGX_DECLINED;
    }

    p = url->data + 5;
    last = url->data + url->len;

    comma = ngx_strlchr(p, last, ',');

    /* base64 payloads only, after a media type */
    if (comma == NULL || comma - p < 8
        || ngx_memcmp(comma - 7, ";base64", 7) != 0)
    {
        return NGX_DECLINED;
    }

    media->data = p;
    media->len = ngx_strlchr(p, comma, ';') - p;

    data->data = comma + 1;
    data->len = last - comma - 1;

    return media->len ? NGX_OK : NGX_DECLINED;
}


ngx_uint_t
ngx_smartflow_xlate_http_url(ngx_str_t *url)
{
    return (url->len > 7 && ngx_memcmp(url->data, "http://", 7) == 0)
           || (url->len > 8 && ngx_memcmp(url->data, "https://", 8) == 0);
}


/* errors */

ngx_uint_t
ngx_smartflow_xlate_error_lookup(ngx_smartflow_xlate_error_name_t *names,
    ngx_str_t *name)
{
    for ( /* void */ ; names->name; names++) {
        if (name && ngx_smartflow_xlate_eq(name, names->name)) {
            break;
        }
    }

    return names->kind;
}


/* stream events: sized once, written once */

void
ngx_smartflow_xlate_line_add(ngx_smartflow_xlate_line_t *l, u_char *data,
    size_t len, ngx_uint_t esc)
{
    if (l->n == NGX_SMARTFLOW_XLATE_LINE_PIECES) {
        l->overflow = 1;
        return;
    }

    l->piece[l->n].data = data;
    l->piece[l->n].len = len;
    l->esc[l->n] = (u_char) esc;
    l->n++;
}


void
ngx_smartflow_xlate_esc(ngx_smartflow_xlate_line_t *l, ngx_str_t *s)
{
    ngx_smartflow_xlate_line_add(l, s->data, s->len, 1);
}


void
ngx_smartflow_xlate_num(ngx_smartflow_xlate_line_t *l, ngx_uint_t n)
{
    u_char  *p;

    if (l->nnum == NGX_SMARTFLOW_XLATE_LINE_NUMS) {
        l->overflow = 1;
        return;
    }

    p = l->num[l->nnum++];

    ngx_smartflow_xlate_line_add(l, p, ngx_sprintf(p, "%ui", n) - p, 0);
}


ngx_int_t
ngx_smartflow_xlate_line_emit(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_line_t *l, ngx_array_t *out)
{
    size_t      len;
    u_char     *p;
    ngx_str_t  *ev;
    ngx_uint_t  i;

    if (l->overflow) {
        return ngx_smartflow_xlate_fail(x, "a stream event has too many "
                                           "parts");
    }

    len = 0;

    for (i = 0; i < l->n; i++) {
        len += l->esc[i]
               ? ngx_smartflow_json_escape_len(l->piece[i].data,
                                               l->piece[i].len)
               : l->piece[i].len;
    }

    p = ngx_pnalloc(x->pool, len);
    ev = ngx_array_push(out);

    if (p == NULL || ev == NULL) {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    ev->data = p;

    for (i = 0; i < l->n; i++) {
        if (l->piece[i].len == 0) {
            continue;
        }

        p = l->esc[i]
            ? ngx_smartflow_json_escape(p, l->piece[i].data, l->piece[i].len)
            : ngx_cpymem(p, l->piece[i].data, l->piece[i].len);
    }

    ev->len = p - ev->data;

    return NGX_OK;
}


/* a constant event, shared by every stream */
ngx_int_t
ngx_smartflow_xlate_emit_static(ngx_smartflow_xlate_t *x, ngx_array_t *out,
    char *s)
{
    ngx_str_t  *ev;

    ev = ngx_array_push(out);
    if (ev == NULL) {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    ev->data = (u_char *) s;
    ev->len = ngx_strlen(s);

    return NGX_OK;
}


/* OpenAI chunks */

void
ngx_smartflow_xlate_chunk_head(ngx_smartflow_xlate_line_t *l,
    ngx_smartflow_xlate_t *x, ngx_smartflow_xlate_stream_t *st)
{
    ngx_memzero(l, sizeof(ngx_smartflow_xlate_line_t));

    ngx_smartflow_xlate_raw(l, "data: {\"id\":\"");
    ngx_smartflow_xlate_esc(l, &st->id);
    ngx_smartflow_xlate_raw(l, "\",\"object\":\"chat.completion.chunk\","
                               "\"created\":");
    ngx_smartflow_xlate_num(l, (ngx_uint_t) st->created);
    ngx_smartflow_xlate_raw(l, ",\"model\":\"");
    ngx_smartflow_xlate_esc(l, &x->model);
    ngx_smartflow_xlate_raw(l, "\",\"choices\":");
}


void
ngx_smartflow_xlate_chunk_tail(ngx_smartflow_xlate_line_t *l,
    ngx_str_t *finish)
{
    if (finish == NULL) {
        ngx_smartflow_xlate_raw(l, ",\"finish_reason\":null}]}\n\n");
        return;
    }

    ngx_smartflow_xlate_raw(l, ",\"finish_reason\":\"");
    ngx_smartflow_xlate_esc(l, finish);
    ngx_smartflow_xlate_raw(l, "\"}]}\n\n");
}


ngx_int_t
ngx_smartflow_xlate_chunk_role(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, ngx_array_t *out)
{
    ngx_smartflow_xlate_line_t  l;

    ngx_smartflow_xlate_chunk_head(&l, x, st);
    ngx_smartflow_xlate_raw(&l, "[{\"index\":0,\"delta\":{\"role\":"
                                "\"assistant\",\"content\":\"\"}");
    ngx_smartflow_xlate_chunk_tail(&l, NULL);

    return ngx_smartflow_xlate_line_emit(x, &l, out);
}


ngx_int_t
ngx_smartflow_xlate_chunk_text(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, ngx_str_t *text, ngx_array_t *out)
{
    ngx_smartflow_xlate_line_t  l;

    ngx_smartflow_xlate_chunk_head(&l, x, st);
    ngx_smartflow_xlate_raw(&l, "[{\"index\":0,\"delta\":{\"content\":\"");
    ngx_smartflow_xlate_esc(&l, text);
    ngx_smartflow_xlate_raw(&l, "\"}");
    ngx_smartflow_xlate_chunk_tail(&l, NULL);

    return ngx_smartflow_xlate_line_emit(x, &l, out);
}


/* a tool call's first delta: its id and name, and arguments if known */
ngx_int_t
ngx_smartflow_xlate_chunk_tool(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, ngx_str_t *id, ngx_str_t *name,
    ngx_str_t *args, ngx_array_t *out)
{
    ngx_smartflow_xlate_line_t  l;

    ngx_smartflow_xlate_chunk_head(&l, x, st);
    ngx_smartflow_xlate_raw(&l, "[{\"index\":0,\"delta\":{\"tool_calls\":"
                                "[{\"index\":");
    ngx_smartflow_xlate_num(&l, (ngx_uint_t) st->tool_index);
    ngx_smartflow_xlate_raw(&l, ",\"id\":\"");
    ngx_smartflow_xlate_esc(&l, id);
    ngx_smartflow_xlate_raw(&l, "\",\"type\":\"function\",\"function\":"
                                "{\"name\":\"");
    ngx_smartflow_xlate_esc(&l, name);
    ngx_smartflow_xlate_raw(&l, "\",\"arguments\":\"");
    ngx_smartflow_xlate_esc(&l, args);
    ngx_smartflow_xlate_raw(&l, "\"}}]}");
    ngx_smartflow_xlate_chunk_tail(&l, NULL);

    return ngx_smartflow_xlate_line_emit(x, &l, out);
}


ngx_int_t
ngx_smartflow_xlate_chunk_finish(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, ngx_str_t *reason, ngx_array_t *out)
{
    ngx_smartflow_xlate_line_t  l;

    ngx_smartflow_xlate_chunk_head(&l, x, st);
    ngx_smartflow_xlate_raw(&l, "[{\"index\":0,\"delta\":{}");
    ngx_smartflow_xlate_chunk_tail(&l, reason);

    return ngx_smartflow_xlate_line_emit(x, &l, out);
}


ngx_int_t
ngx_smartflow_xlate_chunk_usage(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, ngx_array_t *out)
{
    ngx_smartflow_xlate_line_t  l;

    ngx_smartflow_xlate_chunk_head(&l, x, st);
    ngx_smartflow_xlate_raw(&l, "[],\"usage\":{\"prompt_tokens\":");
    ngx_smartflow_xlate_num(&l, st->input_tokens);
    ngx_smartflow_xlate_raw(&l, ",\"completion_tokens\":");
    ngx_smartflow_xlate_num(&l, st->output_tokens);
    ngx_smartflow_xlate_raw(&l, ",\"total_tokens\":");
    ngx_smartflow_xlate_num(&l, st->input_tokens + st->output_tokens);
    ngx_smartflow_xlate_raw(&l, "}}\n\n");

    return ngx_smartflow_xlate_line_emit(x, &l, out);
}


/*
 * An error inside an OpenAI stream: the SDKs raise on a data line with an
 * "error" member; the [DONE] after it ends the stream for simpler clients.
 * code NULL: the class's own code.
 */
ngx_int_t
ngx_smartflow_xlate_chunk_error(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, ngx_uint_t kind, ngx_str_t *message,
    char *code, ngx_array_t *out)
{
    ngx_str_t                          s;
    ngx_smartflow_xlate_line_t         l;
    ngx_smartflow_xlate_error_kind_t  *k;

    k = &ngx_smartflow_xlate_error_kinds[kind];

    ngx_memzero(&l, sizeof(ngx_smartflow_xlate_line_t));

    ngx_smartflow_xlate_raw(&l, "data: {\"error\":{\"message\":\"");
    ngx_smartflow_xlate_esc(&l, message);
    ngx_smartflow_xlate_raw(&l, "\",\"type\":\"");
    ngx_smartflow_xlate_str_lit(&s, k->openai);
    ngx_smartflow_xlate_esc(&l, &s);
    ngx_smartflow_xlate_raw(&l, "\",\"param\":null,\"code\":");

    if (code == NULL) {
        code = k->code;
    }

    if (code) {
        ngx_smartflow_xlate_raw(&l, "\"");
        ngx_smartflow_xlate_str_lit(&s, code);
        ngx_smartflow_xlate_esc(&l, &s);
        ngx_smartflow_xlate_raw(&l, "\"}}\n\n");

    } else {
        ngx_smartflow_xlate_raw(&l, "null}}\n\n");
    }

    st->done = 1;

    if (ngx_smartflow_xlate_line_emit(x, &l, out) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_smartflow_xlate_emit_static(x, out, "data: [DONE]\n\n");
}


ngx_int_t
ngx_smartflow_xlate_chunk_done(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, ngx_array_t *out)
{
    st->done = 1;

    return ngx_smartflow_xlate_emit_static(x, out, "data: [DONE]\n\n");
}
