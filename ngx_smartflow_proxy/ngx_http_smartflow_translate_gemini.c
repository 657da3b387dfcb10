/*
 * Translation between OpenAI Chat Completions and Gemini generateContent:
 * the request (the model goes in the URL, not the body), the whole
 * response, and the alt=sse stream one event at a time.  As in the
 * Anthropic translation, new trees are built in x->pool and never link
 * the nodes of their input, only its string bytes; the stream becomes the
 * OpenAI chunks of ngx_http_smartflow_translate.c.  Error bodies need
 * nothing here: ngx_smartflow_xlate_error_to_openai() reads Gemini's
 * {"error":{"code","message","status"}}.
 */

#include "ngx_http_smartflow_translate.h"


#define NGX_SFG_SCHEMA_DEPTH   32
#define NGX_SFG_SCHEMA_NODES   100000

/*
 * Gemini 3 refuses a replayed function call without the thought signature
 * its answer carried; OpenAI clients cannot keep one, and Gemini documents
 * this value as the way to replay calls it did not sign.
 */
#define NGX_SFG_NO_SIGNATURE   "skip_thought_signature_validator"

/* JSON schemas cleaned for Gemini, within one request's node budget */
typedef struct {
    ngx_smartflow_xlate_t      *x;
    ngx_smartflow_json_t       *root;       /* what "$ref"s point into */
    ngx_uint_t                  budget;
} ngx_sfg_schema_t;


/*
 * The tool calls of the assistant messages seen so far, by id, each with
 * the name of the latest call with that id: one tree for the request, so
 * that n tool results find their calls in O(n log n).
 */
typedef struct {
    ngx_rbtree_t                tree;
    ngx_rbtree_node_t           sentinel;
} ngx_sfg_calls_t;

typedef struct {
    ngx_rbtree_node_t           node;       /* key: a hash of the id */
    ngx_str_t                   id;
    ngx_str_t                  *name;
} ngx_sfg_call_t;


/* Gemini's error statuses, by the class OpenAI clients are told */
static ngx_smartflow_xlate_error_name_t  ngx_sfg_errors[] = {
    { "INVALID_ARGUMENT", NGX_SMARTFLOW_XLATE_ERR_INVALID },
    { "FAILED_PRECONDITION", NGX_SMARTFLOW_XLATE_ERR_INVALID },
    { "OUT_OF_RANGE", NGX_SMARTFLOW_XLATE_ERR_INVALID },
    { "UNAUTHENTICATED", NGX_SMARTFLOW_XLATE_ERR_AUTH },
    { "PERMISSION_DENIED", NGX_SMARTFLOW_XLATE_ERR_PERMISSION },
    { "NOT_FOUND", NGX_SMARTFLOW_XLATE_ERR_NOT_FOUND },
    { "RESOURCE_EXHAUSTED", NGX_SMARTFLOW_XLATE_ERR_RATE_LIMIT },
    { "UNAVAILABLE", NGX_SMARTFLOW_XLATE_ERR_OVERLOADED },
    { NULL, NGX_SMARTFLOW_XLATE_ERR_API }
};


/* JSON Schema keywords Gemini's Schema does not know: it refuses them */
static char  *ngx_sfg_schema_drop[] = {
    "$schema", "$id", "$anchor", "$comment", "$defs", "definitions",
    "additionalProperties", "unevaluatedProperties", "patternProperties",
    "propertyNames", "dependentRequired", "dependentSchemas",
    "additionalItems", "unevaluatedItems", "prefixItems", "contains",
    "minContains", "maxContains", "uniqueItems", "const", "examples",
    "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "not", "if",
    "then", "else", "readOnly", "writeOnly", "deprecated",
    "contentEncoding", "contentMediaType", "strict", NULL
};


/* the only formats Gemini accepts, for strings and numbers */
static char  *ngx_sfg_schema_formats[] = {
    "enum", "date-time", "int32", "int64", "float", "double", NULL
};


/* finish reasons that mean the answer was blocked */
static char  *ngx_sfg_filtered[] = {
    "SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
    "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", NULL
};


/* media types of the files a URL may name, by extension */
static char  *ngx_sfg_mime_types[] = {
    "png", "image/png",
    "jpg", "image/jpeg",
    "jpeg", "image/jpeg",
    "gif", "image/gif",
    "webp", "image/webp",
    "heic", "image/heic",
    "heif", "image/heif",
    "pdf", "application/pdf",
    NULL
};


/* strings */

static ngx_uint_t
ngx_sfg_one_of(ngx_str_t *s, char **list)
{
    for ( /* void */ ; *list; list++) {
        if (ngx_smartflow_xlate_eq(s, *list)) {
            return 1;
        }
    }

    return 0;
}


/* a media type from the URL path's extension, JPEG when it says none */
static char *
ngx_sfg_mime_guess(ngx_str_t *url)
{
    u_char  *p, *end, *ext;
    size_t   len, i;
    char   **m;

    end = url->data + url->len;

    for (p = url->data; p < end; p++) {
        if (*p == '?' || *p == '#') {
            break;
        }
    }

    end = p;
    ext = NULL;

    for (p = url->data; p < end; p++) {
        if (*p == '/') {
            ext = NULL;

        } else if (*p == '.') {
            ext = p + 1;
        }
    }

    if (ext == NULL) {
        return "image/jpeg";
    }

    len = end - ext;

    for (m = ngx_sfg_mime_types; *m; m += 2) {
        if (ngx_strlen(m[0]) != len) {
            continue;
        }

        for (i = 0; i < len; i++) {
            if (ngx_tolower(ext[i]) != (u_char) m[0][i]) {
                break;
            }
        }

        if (i == len) {
            return m[1];
        }
    }

    return "image/jpeg";
}


/* JSON schemas: keywords Gemini refuses dropped, "$ref"s inlined */

static ngx_smartflow_json_t *ngx_sfg_schema(ngx_sfg_schema_t *sc,
    ngx_smartflow_json_t *s, ngx_uint_t depth);


static ngx_smartflow_json_t *
ngx_sfg_schema_node(ngx_sfg_schema_t *sc, ngx_smartflow_json_type_e type,
    ngx_str_t *str)
{
    ngx_smartflow_json_t  *j;

    if (sc->budget == 0) {
        (void) ngx_smartflow_xlate_fail(sc->x, "the tool schemas expand too "
                                               "far");
        return NULL;
    }

    sc->budget--;

    j = ngx_smartflow_json_new(sc->x->pool, type, str);
    if (j == NULL) {
        (void) ngx_smartflow_xlate_fail(sc->x, "out of memory");
    }

    return j;
}


static ngx_smartflow_json_t *
ngx_sfg_schema_copy(ngx_sfg_schema_t *sc, ngx_smartflow_json_t *src)
{
    ngx_smartflow_json_t  *j;

    j = ngx_smartflow_xlate_copy(sc->x->pool, src, &sc->budget);

    if (j == NULL) {
        (void) ngx_smartflow_xlate_fail(sc->x,
                                        sc->budget
                                        ? "out of memory"
                                        : "the tool schemas expand too far");
    }

    return j;
}


/* "#/$defs/NAME", "#/definitions/NAME" or "#" in the tool's schema */
static ngx_smartflow_json_t *
ngx_sfg_schema_ref(ngx_smartflow_json_t *root, ngx_smartflow_json_t *ref)
{
    ngx_str_t              name;
    ngx_smartflow_json_t  *defs, *c, *found;

    if (!ngx_smartflow_json_is_string(ref)) {
        return NULL;
    }

    name = ref->str;

    if (ngx_smartflow_xlate_eq(&name, "#")) {
        return root;
    }

    if (name.len > 8 && ngx_memcmp(name.data, "#/$defs/", 8) == 0) {
        defs = ngx_smartflow_json_get(root, "$defs");
        name.data += 8;
        name.len -= 8;

    } else if (name.len > 14
               && ngx_memcmp(name.data, "#/definitions/", 14) == 0)
    {
        defs = ngx_smartflow_json_get(root, "definitions");
        name.data += 14;
        name.len -= 14;

    } else {
        return NULL;
    }

    if (defs == NULL || defs->type != NGX_SMARTFLOW_JSON_OBJECT) {
        return NULL;
    }

    found = NULL;

    for (c = defs->child; c; c = c->next) {
        if (c->key.len == name.len
            && ngx_memcmp(c->key.data, name.data, name.len) == 0)
        {
            found = c;
        }
    }

    return found;
}


/* ["string", "null"] -> "type": "string", "nullable": true */
static ngx_int_t
ngx_sfg_schema_type(ngx_sfg_schema_t *sc, ngx_smartflow_json_t *s,
    ngx_smartflow_json_t *types, ngx_smartflow_json_t *o)
{
    ngx_uint_t             nullable;
    ngx_smartflow_json_t  *t, *first, *j;

    first = NULL;
    nullable = 0;

    for (t = types->child; t; t = t->next) {
        if (ngx_smartflow_xlate_is(t, "null")) {
            nullable = 1;

        } else if (first == NULL && ngx_smartflow_json_is_string(t)) {
            first = t;
        }
    }

    if (first) {
        j = ngx_sfg_schema_node(sc, NGX_SMARTFLOW_JSON_STRING, &first->str);
        if (j == NULL) {
            return NGX_ERROR;
        }

        ngx_smartflow_json_append(o, "type", j);
    }

    if (nullable && ngx_smartflow_json_get(s, "nullable") == NULL) {
        j = ngx_sfg_schema_node(sc, NGX_SMARTFLOW_JSON_TRUE, NULL);
        if (j == NULL) {
            return NGX_ERROR;
        }

        ngx_smartflow_json_append(o, "nullable", j);
    }

    return NGX_OK;
}


/* one subschema, or an array of them (items, anyOf, oneOf, allOf) */
static ngx_smartflow_json_t *
ngx_sfg_schema_sub(ngx_sfg_schema_t *sc, ngx_smartflow_json_t *c,
    ngx_uint_t depth)
{
    ngx_smartflow_json_t  *a, *e, *v;

    if (c->type == NGX_SMARTFLOW_JSON_OBJECT) {
        return ngx_sfg_schema(sc, c, depth + 1);
    }

    if (c->type != NGX_SMARTFLOW_JSON_ARRAY) {
        return ngx_sfg_schema_copy(sc, c);
    }

    a = ngx_sfg_schema_node(sc, NGX_SMARTFLOW_JSON_ARRAY, NULL);
    if (a == NULL) {
        return NULL;
    }

    for (e = c->child; e; e = e->next) {
        v = ngx_sfg_schema(sc, e, depth + 1);
        if (v == NULL) {
            return NULL;
        }

        ngx_smartflow_json_append(a, NULL, v);
    }

    return a;
}


static ngx_smartflow_json_t *
ngx_sfg_schema(ngx_sfg_schema_t *sc, ngx_smartflow_json_t *s,
    ngx_uint_t depth)
{
    ngx_smartflow_json_t  *o, *c, *v, *p, *t;

    if (depth > NGX_SFG_SCHEMA_DEPTH) {
        (void) ngx_smartflow_xlate_fail(sc->x, "a tool schema nests too "
                                               "deeply");
        return NULL;
    }

    if (s->type != NGX_SMARTFLOW_JSON_OBJECT) {
        return ngx_sfg_schema_copy(sc, s);
    }

    v = ngx_smartflow_json_get(s, "$ref");

    if (v) {
        t = ngx_sfg_schema_ref(sc->root, v);
        if (t == NULL) {
            (void) ngx_smartflow_xlate_fail(sc->x, "a tool schema's '$ref' "
                                                   "does not name one of its "
                                                   "'$defs'");
            return NULL;
        }

        o = ngx_sfg_schema(sc, t, depth + 1);
        if (o == NULL) {
            return NULL;
        }

        /* the description beside a reference is the more precise one */
        v = ngx_smartflow_json_get(s, "description");

        if (ngx_smartflow_json_is_string(v)
            && o->type == NGX_SMARTFLOW_JSON_OBJECT
            && ngx_smartflow_json_set_str(sc->x->pool, o, "description",
                                          &v->str)
               != NGX_OK)
        {
            (void) ngx_smartflow_xlate_fail(sc->x, "out of memory");
            return NULL;
        }

        return o;
    }

    o = ngx_sfg_schema_node(sc, NGX_SMARTFLOW_JSON_OBJECT, NULL);
    if (o == NULL) {
        return NULL;
    }

    for (c = s->child; c; c = c->next) {

        if (ngx_sfg_one_of(&c->key, ngx_sfg_schema_drop)) {
            continue;
        }

        if (ngx_smartflow_xlate_eq(&c->key, "type")
            && c->type == NGX_SMARTFLOW_JSON_ARRAY)
        {
            if (ngx_sfg_schema_type(sc, s, c, o) != NGX_OK) {
                return NULL;
            }

            continue;
        }

        if (ngx_smartflow_xlate_eq(&c->key, "format")
            && !(ngx_smartflow_json_is_string(c)
                 && ngx_sfg_one_of(&c->str, ngx_sfg_schema_formats)))
        {
            continue;
        }

        if (ngx_smartflow_xlate_eq(&c->key, "properties")
            && c->type == NGX_SMARTFLOW_JSON_OBJECT)
        {
            /* the members are property names, each with its schema */
            v = ngx_sfg_schema_node(sc, NGX_SMARTFLOW_JSON_OBJECT, NULL);
            if (v == NULL) {
                return NULL;
            }

            for (p = c->child; p; p = p->next) {
                t = ngx_sfg_schema(sc, p, depth + 1);
                if (t == NULL) {
                    return NULL;
                }

                t->key = p->key;
                t->key_plain = p->key_plain;
                ngx_smartflow_json_append(v, NULL, t);
            }

        } else if (ngx_smartflow_xlate_eq(&c->key, "items")
                   || ngx_smartflow_xlate_eq(&c->key, "anyOf")
                   || ngx_smartflow_xlate_eq(&c->key, "oneOf")
                   || ngx_smartflow_xlate_eq(&c->key, "allOf"))
        {
            v = ngx_sfg_schema_sub(sc, c, depth);

        } else {
            /* enum, required, default, example ... are values */
            v = ngx_sfg_schema_copy(sc, c);
        }

        if (v == NULL) {
            return NULL;
        }

        v->key = c->key;
        v->key_plain = c->key_plain;
        ngx_smartflow_json_append(o, NULL, v);
    }

    return o;
}


static ngx_smartflow_json_t *
ngx_sfg_schema_clean(ngx_sfg_schema_t *sc, ngx_smartflow_json_t *root)
{
    sc->root = root;

    return ngx_sfg_schema(sc, root, 0);
}


/* requests: OpenAI -> Gemini */

static ngx_int_t
ngx_sfg_text_part(ngx_smartflow_xlate_t *x, ngx_smartflow_json_t *parts,
    ngx_str_t *text)
{
    ngx_smartflow_json_t  *p;

    /* Gemini refuses empty text parts */
    if (text->len == 0) {
        return NGX_OK;
    }

    p = ngx_smartflow_xlate_add(x->pool, parts, NULL, NGX_SMARTFLOW_JSON_OBJECT,
                                NULL);
    if (p == NULL
        || ngx_smartflow_xlate_add(x->pool, p, "text",
                                   NGX_SMARTFLOW_JSON_STRING, text)
           == NULL)
    {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    return NGX_OK;
}


/* {"inlineData":{"mimeType","data"}} or {"fileData":{"mimeType","fileUri"}} */
static ngx_int_t
ngx_sfg_blob_part(ngx_smartflow_xlate_t *x, ngx_smartflow_json_t *parts,
    char *kind, ngx_str_t *mime, char *key, ngx_str_t *value)
{
    ngx_smartflow_json_t  *p, *o;

    p = ngx_smartflow_xlate_add(x->pool, parts, NULL, NGX_SMARTFLOW_JSON_OBJECT,
                                NULL);
    o = p ? ngx_smartflow_xlate_add(x->pool, p, kind, NGX_SMARTFLOW_JSON_OBJECT,
                                    NULL)
          : NULL;

    if (o == NULL
        || ngx_smartflow_xlate_add(x->pool, o, "mimeType",
                                   NGX_SMARTFLOW_JSON_STRING, mime)
           == NULL
        || ngx_smartflow_xlate_add(x->pool, o, key, NGX_SMARTFLOW_JSON_STRING,
                                   value)
           == NULL)
    {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    return NGX_OK;
}


static ngx_int_t
ngx_sfg_url_part(ngx_smartflow_xlate_t *x, ngx_smartflow_json_t *parts,
    ngx_str_t *url)
{
    ngx_str_t  mime, data;

    if (ngx_smartflow_xlate_data_url(url, &mime, &data) == NGX_OK) {
        return ngx_sfg_blob_part(x, parts, "inlineData", &mime, "data",
                                 &data);
    }

    if (!ngx_smartflow_xlate_http_url(url)) {
        return ngx_smartflow_xlate_fail(x, "an image must be an http(s) URL or "
                                           "a base64 data URL");
    }

    ngx_smartflow_xlate_str_lit(&mime, ngx_sfg_mime_guess(url));

    return ngx_sfg_blob_part(x, parts, "fileData", &mime, "fileUri", url);
}


/* an OpenAI message content (string or parts) -> Gemini parts */
static ngx_int_t
ngx_sfg_parts(ngx_smartflow_xlate_t *x, ngx_smartflow_json_t *content,
    ngx_smartflow_json_t *parts)
{
    ngx_str_t              mime;
    ngx_smartflow_json_t  *p, *v, *f;

    if (!ngx_smartflow_xlate_present(content)) {
        return NGX_OK;
    }

    if (content->type == NGX_SMARTFLOW_JSON_STRING) {
        return ngx_sfg_text_part(x, parts, &content->str);
    }

    if (content->type != NGX_SMARTFLOW_JSON_ARRAY) {
        return ngx_smartflow_xlate_fail(x, "a message content must be a string "
                                           "or an array of parts");
    }

    for (p = content->child; p; p = p->next) {

        if (ngx_smartflow_xlate_type_is(p, "text")
            || ngx_smartflow_xlate_type_is(p, "refusal"))
        {
            v = ngx_smartflow_json_get(p, ngx_smartflow_xlate_type_is(p, "text")
                                          ? "text" : "refusal");
            if (!ngx_smartflow_json_is_string(v)) {
                return ngx_smartflow_xlate_fail(x, "a text part needs a string "
                                                   "'text'");
            }

            if (ngx_sfg_text_part(x, parts, &v->str) != NGX_OK) {
                return NGX_ERROR;
            }

            continue;
        }

        if (ngx_smartflow_xlate_type_is(p, "image_url")) {
            v = ngx_smartflow_json_get(p, "image_url");

            if (!ngx_smartflow_json_is_string(v)) {
                v = ngx_smartflow_json_get(v, "url");
            }

            if (!ngx_smartflow_json_is_string(v)) {
                return ngx_smartflow_xlate_fail(x, "an image_url part needs a "
                                                   "'url'");
            }

            if (ngx_sfg_url_part(x, parts, &v->str) != NGX_OK) {
                return NGX_ERROR;
            }

            continue;
        }

        if (ngx_smartflow_xlate_type_is(p, "file")) {
            v = ngx_smartflow_json_get(ngx_smartflow_json_get(p, "file"),
                                       "file_data");

            if (!ngx_smartflow_json_is_string(v)
                || ngx_smartflow_xlate_data_url(&v->str, &mime, &mime)
                   != NGX_OK)
            {
                return ngx_smartflow_xlate_fail(x, "only inline files (a "
                                                   "base64 'file_data') can be "
                                                   "sent to this provider");
            }

            if (ngx_sfg_url_part(x, parts, &v->str) != NGX_OK) {
                return NGX_ERROR;
            }

            continue;
        }

        if (ngx_smartflow_xlate_type_is(p, "input_audio")) {
            f = ngx_smartflow_json_get(p, "input_audio");
            v = ngx_smartflow_json_get(f, "data");
            f = ngx_smartflow_json_get(f, "format");

            if (!ngx_smartflow_json_is_string(v)
                || !ngx_smartflow_json_is_string(f) || f->str.len == 0)
            {
                return ngx_smartflow_xlate_fail(x, "an input_audio part needs "
                                                   "'data' and 'format'");
            }

            if (ngx_smartflow_xlate_concat(x->pool, &mime, "audio/", &f->str)
                != NGX_OK)
            {
                return ngx_smartflow_xlate_fail(x, "out of memory");
            }

            if (ngx_sfg_blob_part(x, parts, "inlineData", &mime, "data",
                                  &v->str)
                != NGX_OK)
            {
                return NGX_ERROR;
            }

            continue;
        }

        return ngx_smartflow_xlate_fail(x, "a content part type is not "
                                           "supported by this provider");
    }

    return NGX_OK;
}


/* an OpenAI tool_calls[] entry -> a functionCall part */
static ngx_int_t
ngx_sfg_call_part(ngx_smartflow_xlate_t *x, ngx_smartflow_json_t *tc,
    ngx_smartflow_json_t *parts, ngx_uint_t first)
{
    ngx_smartflow_json_t  *fn, *name, *input, *p, *fc;

    fn = ngx_smartflow_json_get(tc, "function");
    name = ngx_smartflow_json_get(fn, "name");

    if (!ngx_smartflow_json_is_string(name) || name->str.len == 0) {
        return ngx_smartflow_xlate_fail(x, "each tool call needs a function "
                                           "name");
    }

    input = ngx_smartflow_xlate_call_input(x, fn);
    if (input == NULL) {
        return NGX_ERROR;
    }

    p = ngx_smartflow_xlate_add(x->pool, parts, NULL, NGX_SMARTFLOW_JSON_OBJECT,
                                NULL);
    fc = p ? ngx_smartflow_xlate_add(x->pool, p, "functionCall",
                                     NGX_SMARTFLOW_JSON_OBJECT, NULL)
           : NULL;

    if (fc == NULL
        || ngx_smartflow_xlate_add_str(x->pool, fc, "name", name) == NULL)
    {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    ngx_smartflow_json_append(fc, "args", input);

    /* Gemini signs the first call of a step only */
    if (first
        && ngx_smartflow_xlate_add_lit(x->pool, p, "thoughtSignature",
                                       NGX_SFG_NO_SIGNATURE)
           == NULL)
    {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    return NGX_OK;
}


/* FNV-1a: the tree orders by the whole id too, so collisions cost little */
static ngx_rbtree_key_t
ngx_sfg_call_hash(ngx_str_t *id)
{
    size_t            i;
    ngx_rbtree_key_t  h;

    h = (ngx_rbtree_key_t) 2166136261u;

    for (i = 0; i < id->len; i++) {
        h = (h ^ id->data[i]) * 16777619u;
    }

    return h;
}


static ngx_int_t
ngx_sfg_call_cmp(ngx_rbtree_key_t key, ngx_str_t *id, ngx_sfg_call_t *c)
{
    size_t     n;
    ngx_int_t  rc;

    if (key != c->node.key) {
        return (key < c->node.key) ? -1 : 1;
    }

    n = ngx_min(id->len, c->id.len);
    rc = n ? ngx_memcmp(id->data, c->id.data, n) : 0;

    if (rc) {
        return rc;
    }

    return (ngx_int_t) id->len - (ngx_int_t) c->id.len;
}


static void
ngx_sfg_call_insert_value(ngx_rbtree_node_t *temp, ngx_rbtree_node_t *node,
    ngx_rbtree_node_t *sentinel)
{
    ngx_sfg_call_t      *c;
    ngx_rbtree_node_t  **p;

    c = (ngx_sfg_call_t *) node;

    for ( ;; ) {
        p = (ngx_sfg_call_cmp(node->key, &c->id, (ngx_sfg_call_t *) temp) < 0)
            ? &temp->left : &temp->right;

        if (*p == sentinel) {
            break;
        }

        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}


static ngx_sfg_call_t *
ngx_sfg_call_find(ngx_sfg_calls_t *calls, ngx_str_t *id,
    ngx_rbtree_key_t key)
{
    ngx_int_t           rc;
    ngx_rbtree_node_t  *node, *sentinel;

    node = calls->tree.root;
    sentinel = calls->tree.sentinel;

    while (node != sentinel) {
        rc = ngx_sfg_call_cmp(key, id, (ngx_sfg_call_t *) node);

        if (rc == 0) {
            return (ngx_sfg_call_t *) node;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    return NULL;
}


/* a call the later tool results may answer; a later one of an id wins */
static ngx_int_t
ngx_sfg_call_remember(ngx_smartflow_xlate_t *x, ngx_sfg_calls_t *calls,
    ngx_smartflow_json_t *tc)
{
    ngx_sfg_call_t        *c;
    ngx_rbtree_key_t       key;
    ngx_smartflow_json_t  *id, *name;

    id = ngx_smartflow_json_get(tc, "id");
    name = ngx_smartflow_json_get(ngx_smartflow_json_get(tc, "function"),
                                  "name");

    if (calls == NULL
        || !ngx_smartflow_json_is_string(id) || id->str.len == 0
        || !ngx_smartflow_json_is_string(name))
    {
        return NGX_OK;
    }

    key = ngx_sfg_call_hash(&id->str);

    c = ngx_sfg_call_find(calls, &id->str, key);

    if (c) {
        c->name = &name->str;
        return NGX_OK;
    }

    c = ngx_palloc(x->pool, sizeof(ngx_sfg_call_t));
    if (c == NULL) {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    c->node.key = key;
    c->id = id->str;
    c->name = &name->str;

    ngx_rbtree_insert(&calls->tree, &c->node);

    return NGX_OK;
}


static ngx_int_t
ngx_sfg_assistant(ngx_smartflow_xlate_t *x, ngx_sfg_calls_t *known,
    ngx_smartflow_json_t *m, ngx_smartflow_json_t *parts)
{
    ngx_smartflow_json_t  *calls, *tc;

    if (ngx_sfg_parts(x, ngx_smartflow_json_get(m, "content"), parts)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    calls = ngx_smartflow_json_get(m, "tool_calls");

    if (!ngx_smartflow_xlate_present(calls)) {
        return NGX_OK;
    }

    if (calls->type != NGX_SMARTFLOW_JSON_ARRAY) {
        return ngx_smartflow_xlate_fail(x, "'tool_calls' must be an array");
    }

    for (tc = calls->child; tc; tc = tc->next) {
        if (ngx_sfg_call_part(x, tc, parts, tc == calls->child) != NGX_OK
            || ngx_sfg_call_remember(x, known, tc) != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * Gemini answers a call by the function's name, OpenAI by the call's id:
 * the name is that of the latest earlier call with the id.
 */
static ngx_str_t *
ngx_sfg_call_name(ngx_sfg_calls_t *calls, ngx_str_t *id)
{
    ngx_sfg_call_t  *c;

    if (calls == NULL) {
        return NULL;
    }

    c = ngx_sfg_call_find(calls, id, ngx_sfg_call_hash(id));

    return c ? c->name : NULL;
}


/* a tool message -> a functionResponse part */
static ngx_int_t
ngx_sfg_result_part(ngx_smartflow_xlate_t *x, ngx_sfg_calls_t *calls,
    ngx_smartflow_json_t *m, ngx_smartflow_json_t *parts)
{
    u_char                *c, *end;
    ngx_str_t              text, err, *name;
    ngx_smartflow_json_t  *id, *v, *response, *p, *fr;

    id = ngx_smartflow_json_get(m, "tool_call_id");

    if (!ngx_smartflow_json_is_string(id) || id->str.len == 0) {
        return ngx_smartflow_xlate_fail(x, "a tool message needs a "
                                           "'tool_call_id'");
    }

    name = ngx_sfg_call_name(calls, &id->str);

    if (name == NULL) {
        v = ngx_smartflow_json_get(m, "name");

        if (!ngx_smartflow_json_is_string(v) || v->str.len == 0) {
            return ngx_smartflow_xlate_fail(x, "a tool message's "
                                               "'tool_call_id' matches no "
                                               "earlier tool call");
        }

        name = &v->str;
    }

    if (ngx_smartflow_xlate_text_of(x->pool,
                                    ngx_smartflow_json_get(m, "content"), "\n",
                                    &text)
        != NGX_OK)
    {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    /* a result that is a JSON object is the response itself */
    response = NULL;
    c = text.data;
    end = text.len ? text.data + text.len : c;

    for ( /* void */ ; c < end; c++) {
        if (*c != ' ' && *c != '\t' && *c != '\r' && *c != '\n') {
            break;
        }
    }

    if (c < end && *c == '{') {
        response = ngx_smartflow_json_parse(x->pool, text.data, text.len,
                                            &err);

        if (response && response->type != NGX_SMARTFLOW_JSON_OBJECT) {
            response = NULL;
        }
    }

    if (response == NULL) {
        response = ngx_smartflow_json_new(x->pool, NGX_SMARTFLOW_JSON_OBJECT,
                                          NULL);
        if (response == NULL
            || ngx_smartflow_xlate_add(x->pool, response, "content",
                                       NGX_SMARTFLOW_JSON_STRING, &text)
               == NULL)
        {
            return ngx_smartflow_xlate_fail(x, "out of memory");
        }
    }

    p = ngx_smartflow_xlate_add(x->pool, parts, NULL, NGX_SMARTFLOW_JSON_OBJECT,
                                NULL);
    fr = p ? ngx_smartflow_xlate_add(x->pool, p, "functionResponse",
                                     NGX_SMARTFLOW_JSON_OBJECT, NULL)
           : NULL;

    if (fr == NULL
        || ngx_smartflow_xlate_add(x->pool, fr, "name",
                                   NGX_SMARTFLOW_JSON_STRING, name)
           == NULL)
    {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    ngx_smartflow_json_append(fr, "response", response);

    return NGX_OK;
}


/* a user turn's function responses go first, after the calls they answer */
static ngx_uint_t
ngx_sfg_is_response(ngx_smartflow_json_t *part)
{
    return ngx_smartflow_json_get(part, "functionResponse") != NULL;
}


static ngx_int_t
ngx_sfg_tool_config(ngx_smartflow_xlate_t *x, ngx_smartflow_json_t *tc,
    ngx_smartflow_json_t *out)
{
    char                  *mode;
    ngx_pool_t            *pool;
    ngx_smartflow_json_t  *name, *cfg, *fcc, *names;

    pool = x->pool;
    name = NULL;

    if (ngx_smartflow_xlate_is(tc, "auto")) {
        mode = "AUTO";

    } else if (ngx_smartflow_xlate_is(tc, "none")) {
        mode = "NONE";

    } else if (ngx_smartflow_xlate_is(tc, "required")) {
        mode = "ANY";

    } else {
        name = ngx_smartflow_json_get(ngx_smartflow_json_get(tc, "function"),
                                      "name");

        if (!ngx_smartflow_xlate_type_is(tc, "function")
            || !ngx_smartflow_json_is_string(name))
        {
            return ngx_smartflow_xlate_fail(x, "unsupported 'tool_choice'");
        }

        mode = "ANY";
    }

    cfg = ngx_smartflow_xlate_add(pool, out, "toolConfig",
                                  NGX_SMARTFLOW_JSON_OBJECT, NULL);
    fcc = cfg ? ngx_smartflow_xlate_add(pool, cfg, "functionCallingConfig",
                                        NGX_SMARTFLOW_JSON_OBJECT, NULL)
              : NULL;

    if (fcc == NULL
        || ngx_smartflow_xlate_add_lit(pool, fcc, "mode", mode) == NULL)
    {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    if (name == NULL) {
        return NGX_OK;
    }

    names = ngx_smartflow_xlate_add(pool, fcc, "allowedFunctionNames",
                                    NGX_SMARTFLOW_JSON_ARRAY, NULL);
    if (names == NULL
        || ngx_smartflow_xlate_add_str(pool, names, NULL, name) == NULL)
    {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    return NGX_OK;
}


static ngx_int_t
ngx_sfg_tools(ngx_sfg_schema_t *sc, ngx_smartflow_json_t *req,
    ngx_smartflow_json_t *out)
{
    ngx_pool_t             *pool;
    ngx_smartflow_xlate_t  *x;
    ngx_smartflow_json_t   *tools, *t, *fn, *name, *v, *decls, *d, *s;
    ngx_smartflow_json_t   *props, *tc;

    x = sc->x;
    pool = x->pool;
    tools = ngx_smartflow_json_get(req, "tools");

    if (!ngx_smartflow_xlate_present(tools)) {
        return NGX_OK;
    }

    if (tools->type != NGX_SMARTFLOW_JSON_ARRAY) {
        return ngx_smartflow_xlate_fail(x, "'tools' must be an array");
    }

    if (tools->nchild == 0) {
        return NGX_OK;
    }

    decls = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_ARRAY, NULL);
    if (decls == NULL) {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    for (t = tools->child; t; t = t->next) {
        v = ngx_smartflow_json_get(t, "type");

        if (v && !ngx_smartflow_xlate_is(v, "function")) {
            return ngx_smartflow_xlate_fail(x, "only function tools can be "
                                               "sent to this provider");
        }

        fn = ngx_smartflow_json_get(t, "function");
        name = ngx_smartflow_json_get(fn, "name");

        if (!ngx_smartflow_json_is_string(name) || name->str.len == 0) {
            return ngx_smartflow_xlate_fail(x, "each tool needs a function "
                                               "name");
        }

        d = ngx_smartflow_xlate_add(pool, decls, NULL,
                                    NGX_SMARTFLOW_JSON_OBJECT, NULL);
        if (d == NULL
            || ngx_smartflow_xlate_add_str(pool, d, "name", name) == NULL)
        {
            return ngx_smartflow_xlate_fail(x, "out of memory");
        }

        v = ngx_smartflow_json_get(fn, "description");

        if (ngx_smartflow_json_is_string(v)
            && ngx_smartflow_xlate_add_str(pool, d, "description", v) == NULL)
        {
            return ngx_smartflow_xlate_fail(x, "out of memory");
        }

        v = ngx_smartflow_json_get(fn, "parameters");

        if (v == NULL || v->type != NGX_SMARTFLOW_JSON_OBJECT) {
            continue;
        }

        s = ngx_sfg_schema_clean(sc, v);
        if (s == NULL) {
            return NGX_ERROR;
        }

        /* Gemini refuses an object without properties: say nothing */
        props = ngx_smartflow_json_get(s, "properties");
        v = ngx_smartflow_json_get(s, "type");

        if ((v == NULL || ngx_smartflow_xlate_is(v, "object"))
            && (props == NULL || props->nchild == 0)
            && ngx_smartflow_json_get(s, "anyOf") == NULL)
        {
            continue;
        }

        ngx_smartflow_json_append(d, "parameters", s);
    }

    t = ngx_smartflow_xlate_add(pool, out, "tools", NGX_SMARTFLOW_JSON_ARRAY,
                                NULL);
    d = t ? ngx_smartflow_xlate_add(pool, t, NULL, NGX_SMARTFLOW_JSON_OBJECT,
                                    NULL)
          : NULL;

    if (d == NULL) {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    ngx_smartflow_json_append(d, "functionDeclarations", decls);

    tc = ngx_smartflow_json_get(req, "tool_choice");

    if (!ngx_smartflow_xlate_present(tc)) {
        return NGX_OK;
    }

    return ngx_sfg_tool_config(x, tc, out);
}


static ngx_int_t
ngx_sfg_generation(ngx_sfg_schema_t *sc, ngx_smartflow_json_t *req,
    ngx_smartflow_json_t *out)
{
    char                   *max;
    ngx_pool_t             *pool;
    ngx_smartflow_xlate_t  *x;
    ngx_smartflow_json_t   *gc, *v, *s, *c;

    x = sc->x;
    pool = x->pool;

    /* the translation carries one candidate back */
    v = ngx_smartflow_json_get(req, "n");

    if (v && v->type == NGX_SMARTFLOW_JSON_NUMBER
        && ngx_smartflow_xlate_uint(v) > 1)
    {
        return ngx_smartflow_xlate_fail(x, "this provider returns one choice: "
                                           "'n' must be 1");
    }

    gc = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_OBJECT, NULL);
    if (gc == NULL) {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    v = ngx_smartflow_json_get(req, "max_completion_tokens");
    max = (v && v->type == NGX_SMARTFLOW_JSON_NUMBER)
          ? "max_completion_tokens" : "max_tokens";

    /*
     * presence_penalty and frequency_penalty are left out: several Gemini
     * models refuse any penalty.
     */
    if (ngx_smartflow_xlate_add_number(pool, gc, "temperature", req,
                                       "temperature")
        != NGX_OK
        || ngx_smartflow_xlate_add_number(pool, gc, "topP", req, "top_p")
           != NGX_OK
        || ngx_smartflow_xlate_add_number(pool, gc, "maxOutputTokens", req, max)
           != NGX_OK
        || ngx_smartflow_xlate_add_number(pool, gc, "seed", req, "seed")
           != NGX_OK)
    {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    v = ngx_smartflow_json_get(req, "stop");

    if ((ngx_smartflow_json_is_string(v) && v->str.len)
        || (v && v->type == NGX_SMARTFLOW_JSON_ARRAY && v->nchild))
    {
        s = ngx_smartflow_xlate_add(pool, gc, "stopSequences",
                                    NGX_SMARTFLOW_JSON_ARRAY, NULL);
        if (s == NULL) {
            return ngx_smartflow_xlate_fail(x, "out of memory");
        }

        for (c = (v->type == NGX_SMARTFLOW_JSON_ARRAY) ? v->child : v;
             c;
             c = (v->type == NGX_SMARTFLOW_JSON_ARRAY) ? c->next : NULL)
        {
            if (ngx_smartflow_json_is_string(c) && c->str.len
                && ngx_smartflow_xlate_add_str(pool, s, NULL, c) == NULL)
            {
                return ngx_smartflow_xlate_fail(x, "out of memory");
            }
        }
    }

    v = ngx_smartflow_json_get(req, "response_format");

    if (ngx_smartflow_xlate_present(v)
        && !ngx_smartflow_xlate_type_is(v, "text"))
    {

        if (!ngx_smartflow_xlate_type_is(v, "json_object")
            && !ngx_smartflow_xlate_type_is(v, "json_schema"))
        {
            return ngx_smartflow_xlate_fail(x, "unsupported 'response_format'");
        }

        if (ngx_smartflow_xlate_add_lit(pool, gc, "responseMimeType",
                                        "application/json")
            == NULL)
        {
            return ngx_smartflow_xlate_fail(x, "out of memory");
        }

        v = ngx_smartflow_json_get(ngx_smartflow_json_get(v, "json_schema"),
                                   "schema");

        if (v && v->type == NGX_SMARTFLOW_JSON_OBJECT) {
            s = ngx_sfg_schema_clean(sc, v);
            if (s == NULL) {
                return NGX_ERROR;
            }

            ngx_smartflow_json_append(gc, "responseSchema", s);
        }
    }

    if (gc->nchild) {
        ngx_smartflow_json_append(out, "generationConfig", gc);
    }

    return NGX_OK;
}


/* one OpenAI message as Gemini parts */
static ngx_int_t
ngx_sfg_message(ngx_smartflow_xlate_t *x, void *data,
    ngx_smartflow_json_t *m, ngx_smartflow_xlate_role_e role,
    ngx_smartflow_json_t *parts)
{
    switch (role) {
    case NGX_SMARTFLOW_XLATE_USER:
        return ngx_sfg_parts(x, ngx_smartflow_json_get(m, "content"), parts);
    case NGX_SMARTFLOW_XLATE_ASSISTANT:
        return ngx_sfg_assistant(x, data, m, parts);
    default:
        return ngx_sfg_result_part(x, data, m, parts);
    }
}


ngx_smartflow_json_t *
ngx_smartflow_xlate_req_openai_to_gemini(ngx_smartflow_xlate_t *x,
    ngx_smartflow_json_t *req)
{
    ngx_str_t                     system;
    ngx_pool_t                   *pool;
    ngx_sfg_calls_t               calls;
    ngx_sfg_schema_t              sc;
    ngx_smartflow_json_t         *out, *contents, *p, *si;
    ngx_smartflow_xlate_turns_t   turns;

    pool = x->pool;

    ngx_rbtree_init(&calls.tree, &calls.sentinel, ngx_sfg_call_insert_value);

    turns.parts = ngx_sfg_message;
    turns.first = ngx_sfg_is_response;
    turns.parts_key = "parts";
    turns.assistant = "model";
    turns.data = &calls;

    contents = ngx_smartflow_xlate_turns(x, req, &turns, &system);
    if (contents == NULL) {
        return NULL;
    }

    out = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_OBJECT, NULL);
    if (out == NULL) {
        goto nomem;
    }

    if (system.len) {
        si = ngx_smartflow_xlate_add(pool, out, "systemInstruction",
                                     NGX_SMARTFLOW_JSON_OBJECT, NULL);
        p = si ? ngx_smartflow_xlate_add(pool, si, "parts",
                                         NGX_SMARTFLOW_JSON_ARRAY, NULL)
               : NULL;

        if (p == NULL || ngx_sfg_text_part(x, p, &system) != NGX_OK) {
            goto nomem;
        }
    }

    ngx_smartflow_json_append(out, "contents", contents);

    sc.x = x;
    sc.root = NULL;
    sc.budget = NGX_SFG_SCHEMA_NODES;

    if (ngx_sfg_tools(&sc, req, out) != NGX_OK
        || ngx_sfg_generation(&sc, req, out) != NGX_OK)
    {
        return NULL;
    }

    return out;

nomem:

    (void) ngx_smartflow_xlate_fail(x, "out of memory");
    return NULL;
}


/* responses: Gemini -> OpenAI */

static char *
ngx_sfg_finish(ngx_smartflow_json_t *reason, ngx_uint_t calls)
{
    if (ngx_smartflow_json_is_string(reason)) {

        if (ngx_smartflow_xlate_eq(&reason->str, "MAX_TOKENS")) {
            return "length";
        }

        if (ngx_sfg_one_of(&reason->str, ngx_sfg_filtered)) {
            return "content_filter";
        }
    }

    /* STOP, and OTHER, LANGUAGE, MALFORMED_FUNCTION_CALL ... */
    return calls ? "tool_calls" : "stop";
}


/* an id no other answer shares, for answers without a responseId */
static ngx_int_t
ngx_sfg_new_id(ngx_pool_t *pool, ngx_str_t *id)
{
    u_char  *p;

    p = ngx_pnalloc(pool, NGX_TIME_T_LEN + NGX_INT_T_LEN + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    id->data = p;
    id->len = ngx_sprintf(p, "%T%ui", ngx_time(),
                          (ngx_uint_t) ngx_random() % 1000000000)
              - p;

    return NGX_OK;
}


/* the functionCall's own id, or "call_" BASE "_" INDEX */
static ngx_int_t
ngx_sfg_call_id(ngx_pool_t *pool, ngx_smartflow_json_t *fc, ngx_str_t *base,
    ngx_uint_t index, ngx_str_t *id)
{
    u_char                *p;
    ngx_smartflow_json_t  *v;

    v = ngx_smartflow_json_get(fc, "id");

    if (ngx_smartflow_json_is_string(v) && v->str.len) {
        *id = v->str;
        return NGX_OK;
    }

    p = ngx_pnalloc(pool, sizeof("call__") - 1 + base->len + NGX_INT_T_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    id->data = p;
    id->len = ngx_sprintf(p, "call_%V_%ui", base, index) - p;

    return NGX_OK;
}


static ngx_int_t
ngx_sfg_call_args(ngx_pool_t *pool, ngx_smartflow_json_t *fc,
    ngx_str_t *args)
{
    ngx_smartflow_json_t  *v;

    v = ngx_smartflow_json_get(fc, "args");

    if (v == NULL || v->type != NGX_SMARTFLOW_JSON_OBJECT) {
        ngx_str_set(args, "{}");
        return NGX_OK;
    }

    return ngx_smartflow_json_dump(pool, v, args);
}


static ngx_int_t
ngx_sfg_oa_call(ngx_smartflow_xlate_t *x, ngx_smartflow_json_t *fc,
    ngx_str_t *base, ngx_smartflow_json_t *calls)
{
    ngx_str_t              id, args;
    ngx_pool_t            *pool;
    ngx_smartflow_json_t  *name;

    pool = x->pool;
    name = ngx_smartflow_json_get(fc, "name");

    if (!ngx_smartflow_json_is_string(name)) {
        return ngx_smartflow_xlate_fail(x, "a functionCall part has no name");
    }

    if (ngx_sfg_call_id(pool, fc, base, calls->nchild, &id) != NGX_OK
        || ngx_sfg_call_args(pool, fc, &args) != NGX_OK)
    {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    return ngx_smartflow_xlate_add_call(x, calls, &id, &name->str, &args);
}


/* usageMetadata: tool-use prompts are input, thoughts are output */
static void
ngx_sfg_usage(ngx_smartflow_json_t *u, ngx_smartflow_xlate_usage_t *usage)
{
    usage->cached = ngx_smartflow_xlate_uint(
                        ngx_smartflow_json_get(u, "cachedContentTokenCount"));
    usage->reasoning = ngx_smartflow_xlate_uint(
                           ngx_smartflow_json_get(u, "thoughtsTokenCount"));

    usage->prompt = ngx_smartflow_xlate_uint(
                        ngx_smartflow_json_get(u, "promptTokenCount"))
                    + ngx_smartflow_xlate_uint(
                          ngx_smartflow_json_get(u,
                                                 "toolUsePromptTokenCount"));
    usage->completion = ngx_smartflow_xlate_uint(
                            ngx_smartflow_json_get(u, "candidatesTokenCount"))
                        + usage->reasoning;
}


ngx_smartflow_json_t *
ngx_smartflow_xlate_resp_gemini_to_openai(ngx_smartflow_xlate_t *x,
    ngx_smartflow_json_t *resp)
{
    char                         *finish;
    ngx_str_t                     id, base;
    ngx_pool_t                   *pool;
    ngx_smartflow_json_t         *cand, *parts, *p, *v, *calls, *blocked;
    ngx_smartflow_xlate_join_t    text;
    ngx_smartflow_xlate_usage_t   usage;

    pool = x->pool;

    if (resp == NULL || resp->type != NGX_SMARTFLOW_JSON_OBJECT) {
        (void) ngx_smartflow_xlate_fail(x, "the provider's response is not a "
                                           "JSON object");
        return NULL;
    }

    v = ngx_smartflow_json_get(resp, "candidates");
    cand = (v && v->type == NGX_SMARTFLOW_JSON_ARRAY) ? v->child : NULL;

    /* a prompt Gemini refused has feedback instead of candidates */
    blocked = ngx_smartflow_json_get(ngx_smartflow_json_get(resp,
                                                           "promptFeedback"),
                                     "blockReason");

    if (cand == NULL && !ngx_smartflow_xlate_present(blocked)) {
        (void) ngx_smartflow_xlate_fail(x, "the provider's response has no "
                                           "candidates");
        return NULL;
    }

    v = ngx_smartflow_json_get(resp, "responseId");

    if (ngx_smartflow_json_is_string(v) && v->str.len) {
        base = v->str;

    } else if (ngx_sfg_new_id(pool, &base) != NGX_OK) {
        goto nomem;
    }

    calls = ngx_smartflow_json_new(pool, NGX_SMARTFLOW_JSON_ARRAY, NULL);
    if (calls == NULL) {
        goto nomem;
    }

    ngx_smartflow_xlate_join_init(&text, pool);

    parts = ngx_smartflow_json_get(ngx_smartflow_json_get(cand, "content"),
                                   "parts");

    for (p = (parts && parts->type == NGX_SMARTFLOW_JSON_ARRAY)
             ? parts->child : NULL;
         p;
         p = p->next)
    {
        /* thought summaries are not the answer */
        v = ngx_smartflow_json_get(p, "thought");

        if (v && v->type == NGX_SMARTFLOW_JSON_TRUE) {
            continue;
        }

        v = ngx_smartflow_json_get(p, "text");

        if (ngx_smartflow_json_is_string(v)
            && ngx_smartflow_xlate_join(&text, "", &v->str) != NGX_OK)
        {
            goto nomem;
        }

        v = ngx_smartflow_json_get(p, "functionCall");

        if (v && v->type == NGX_SMARTFLOW_JSON_OBJECT
            && ngx_sfg_oa_call(x, v, &base, calls) != NGX_OK)
        {
            return NULL;
        }
    }

    if (ngx_smartflow_xlate_concat(pool, &id, "chatcmpl-", &base) != NGX_OK) {
        goto nomem;
    }

    v = ngx_smartflow_json_get(cand, "finishReason");
    finish = cand ? ngx_sfg_finish(v, calls->nchild) : "content_filter";

    ngx_sfg_usage(ngx_smartflow_json_get(resp, "usageMetadata"), &usage);

    return ngx_smartflow_xlate_completion(x, &id, &text.str, NULL, calls,
                                          finish, &usage);

nomem:

    (void) ngx_smartflow_xlate_fail(x, "out of memory");
    return NULL;
}


/* streams */

static ngx_int_t
ngx_sfg_chunk_begin(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, ngx_smartflow_json_t *data,
    ngx_array_t *out)
{
    ngx_str_t              base;
    ngx_smartflow_json_t  *v;

    if (st->started) {
        return NGX_OK;
    }

    st->started = 1;
    st->created = ngx_time();
    st->tool_index = -1;

    /* every event of the stream carries the same responseId */
    v = ngx_smartflow_json_get(data, "responseId");

    if (ngx_smartflow_json_is_string(v) && v->str.len) {
        base = v->str;

    } else if (ngx_sfg_new_id(x->pool, &base) != NGX_OK) {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    if (ngx_smartflow_xlate_concat(ngx_smartflow_xlate_st_pool(x, st),
                                   &st->id, "chatcmpl-", &base)
        != NGX_OK)
    {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    return ngx_smartflow_xlate_chunk_role(x, st, out);
}


/* Gemini sends each call whole: one delta with its name and arguments */
static ngx_int_t
ngx_sfg_chunk_call(ngx_smartflow_xlate_t *x, ngx_smartflow_xlate_stream_t *st,
    ngx_smartflow_json_t *fc, ngx_array_t *out)
{
    ngx_str_t              base, id, name, args;
    ngx_smartflow_json_t  *v;

    ngx_str_null(&name);

    v = ngx_smartflow_json_get(fc, "name");

    if (ngx_smartflow_json_is_string(v)) {
        name = v->str;
    }

    st->tool_index++;

    /* the stream's id is "chatcmpl-" BASE */
    base.data = st->id.data + sizeof("chatcmpl-") - 1;
    base.len = st->id.len - (sizeof("chatcmpl-") - 1);

    if (ngx_sfg_call_id(x->pool, fc, &base, (ngx_uint_t) st->tool_index, &id)
        != NGX_OK
        || ngx_sfg_call_args(x->pool, fc, &args) != NGX_OK)
    {
        return ngx_smartflow_xlate_fail(x, "out of memory");
    }

    return ngx_smartflow_xlate_chunk_tool(x, st, &id, &name, &args, out);
}


static ngx_int_t
ngx_sfg_chunk_finish(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, char *reason, ngx_array_t *out)
{
    ngx_smartflow_xlate_str_lit(&st->finish, reason);
    st->finished = 1;

    return ngx_smartflow_xlate_chunk_finish(x, st, &st->finish, out);
}


ngx_int_t
ngx_smartflow_xlate_stream_gemini_to_openai(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, ngx_str_t *event,
    ngx_smartflow_json_t *data, ngx_array_t *out)
{
    ngx_str_t                     message, status;
    ngx_uint_t                    kind;
    ngx_smartflow_json_t         *e, *v, *u, *cand, *parts, *p, *reason;
    ngx_smartflow_xlate_usage_t   usage;

    if (st->done || data == NULL || data->type != NGX_SMARTFLOW_JSON_OBJECT)
    {
        return NGX_OK;
    }

    e = ngx_smartflow_json_get(data, "error");

    if (ngx_smartflow_xlate_present(e)) {
        ngx_str_set(&message, "The provider reported an error.");
        ngx_str_null(&status);

        v = ngx_smartflow_json_is_string(e)
            ? e : ngx_smartflow_json_get(e, "message");

        if (ngx_smartflow_json_is_string(v) && v->str.len) {
            message = v->str;
        }

        v = ngx_smartflow_json_get(e, "status");

        if (ngx_smartflow_json_is_string(v)) {
            status = v->str;
        }

        kind = ngx_smartflow_xlate_error_lookup(ngx_sfg_errors, &status);

        return ngx_smartflow_xlate_chunk_error(x, st, kind, &message, NULL,
                                               out);
    }

    if (ngx_sfg_chunk_begin(x, st, data, out) != NGX_OK) {
        return NGX_ERROR;
    }

    /*
     * The counts grow event by event, and an event may leave one out:
     * the largest seen are the answer's.
     */
    u = ngx_smartflow_json_get(data, "usageMetadata");

    if (u && u->type == NGX_SMARTFLOW_JSON_OBJECT) {
        ngx_sfg_usage(u, &usage);

        st->input_tokens = ngx_max(st->input_tokens, usage.prompt);
        st->output_tokens = ngx_max(st->output_tokens, usage.completion);
    }

    /* after the finish chunk only usage may still come */
    if (st->finished) {
        return NGX_OK;
    }

    v = ngx_smartflow_json_get(data, "candidates");
    cand = (v && v->type == NGX_SMARTFLOW_JSON_ARRAY) ? v->child : NULL;

    if (cand == NULL) {
        v = ngx_smartflow_json_get(ngx_smartflow_json_get(data,
                                                         "promptFeedback"),
                                   "blockReason");

        return ngx_smartflow_xlate_present(v)
               ? ngx_sfg_chunk_finish(x, st, "content_filter", out)
               : NGX_OK;
    }

    parts = ngx_smartflow_json_get(ngx_smartflow_json_get(cand, "content"),
                                   "parts");

    for (p = (parts && parts->type == NGX_SMARTFLOW_JSON_ARRAY)
             ? parts->child : NULL;
         p;
         p = p->next)
    {
        v = ngx_smartflow_json_get(p, "thought");

        if (v && v->type == NGX_SMARTFLOW_JSON_TRUE) {
            continue;
        }

        v = ngx_smartflow_json_get(p, "text");

        if (ngx_smartflow_json_is_string(v) && v->str.len
            && ngx_smartflow_xlate_chunk_text(x, st, &v->str, out) != NGX_OK)
        {
            return NGX_ERROR;
        }

        v = ngx_smartflow_json_get(p, "functionCall");

        if (v && v->type == NGX_SMARTFLOW_JSON_OBJECT
            && ngx_sfg_chunk_call(x, st, v, out) != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    reason = ngx_smartflow_json_get(cand, "finishReason");

    if (!ngx_smartflow_json_is_string(reason)
        || ngx_smartflow_xlate_eq(&reason->str, "FINISH_REASON_UNSPECIFIED"))
    {
        return NGX_OK;
    }

    return ngx_sfg_chunk_finish(x, st,
                                ngx_sfg_finish(reason, st->tool_index >= 0),
                                out);
}


/*
 * Gemini's stream has no closing event: a clean end after the finish
 * reason completes the answer, anything else is a broken stream.
 */
ngx_int_t
ngx_smartflow_xlate_stream_end_gemini_openai(ngx_smartflow_xlate_t *x,
    ngx_smartflow_xlate_stream_t *st, ngx_uint_t broken, ngx_array_t *out)
{
    ngx_str_t  message;

    if (st->done) {
        return NGX_OK;
    }

    if (broken || !st->finished) {
        ngx_str_set(&message, NGX_SMARTFLOW_XLATE_STREAM_BROKEN);

        return ngx_smartflow_xlate_chunk_error(x, st,
                                               NGX_SMARTFLOW_XLATE_ERR_API,
                                               &message,
                                               "upstream_stream_broken", out);
    }

    if (st->include_usage
        && ngx_smartflow_xlate_chunk_usage(x, st, out) != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_smartflow_xlate_chunk_done(x, st, out);
}
