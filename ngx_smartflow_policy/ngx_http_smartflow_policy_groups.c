/*
 * Policy groups: the smartflow_policy_group { ... } block.  A group that
 * extends another starts as a copy of it (the parent must come first)
 * and overrides single rules; its custom patterns are added to the
 * parent's, one of the same name (in any case) replaces the parent's.
 */

#include "ngx_http_smartflow_policy.h"


static char *ngx_http_smartflow_policy_group_rule(ngx_conf_t *cf,
    ngx_command_t *dummy, void *conf);
static ngx_int_t ngx_http_smartflow_policy_action(ngx_str_t *s,
    ngx_uint_t shield);
static char *ngx_http_smartflow_policy_pattern(ngx_conf_t *cf,
    ngx_http_smartflow_policy_group_t *g, ngx_str_t *value);
static void ngx_http_smartflow_policy_re_free(void *data);
static char *ngx_http_smartflow_policy_globs(ngx_conf_t *cf,
    ngx_array_t **globs, ngx_str_t *value, ngx_uint_t n);


static ngx_str_t  ngx_http_smartflow_policy_rules[] = {
    ngx_string("email"), ngx_string("phone"), ngx_string("card"),
    ngx_string("iban"), ngx_string("ssn"), ngx_string("ip"),
    ngx_string("secret"), ngx_string("injection"), ngx_string("sql"),
    ngx_string("shell"), ngx_string("git"), ngx_string("infra")
};


ngx_http_smartflow_policy_group_t *
ngx_http_smartflow_policy_find(ngx_http_smartflow_policy_main_conf_t *pmcf,
    ngx_str_t *name)
{
    ngx_uint_t                           i;
    ngx_http_smartflow_policy_group_t  **g;

    g = pmcf->groups.elts;

    for (i = 0; i < pmcf->groups.nelts; i++) {
        if (g[i]->name.len == name->len
            && ngx_strncmp(g[i]->name.data, name->data, name->len) == 0)
        {
            return g[i];
        }
    }

    return NULL;
}


/* smartflow_policy_group NAME [extends=PARENT] { ... } */
char *
ngx_http_smartflow_policy_group_block(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_smartflow_policy_main_conf_t *pmcf = conf;

    char                                *rv;
    ngx_str_t                           *value, parent;
    ngx_uint_t                           i;
    ngx_conf_t                           save;
    ngx_http_smartflow_policy_group_t   *g, *p, **gp;

    value = cf->args->elts;

    if (ngx_http_smartflow_policy_find(pmcf, &value[1]) != NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "policy group \"%V\" is already defined",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    g = ngx_pcalloc(cf->pool, sizeof(ngx_http_smartflow_policy_group_t));
    if (g == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_str_null(&parent);

    for (i = 2; i < cf->args->nelts; i++) {
        if (ngx_strncmp(value[i].data, "extends=", 8) == 0) {
            parent.data = value[i].data + 8;
            parent.len = value[i].len - 8;
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[i]);
        return NGX_CONF_ERROR;
    }

    if (parent.len) {
        p = ngx_http_smartflow_policy_find(pmcf, &parent);
        if (p == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "policy group \"%V\" extends \"%V\", which "
                               "is not defined before it",
                               &value[1], &parent);
            return NGX_CONF_ERROR;
        }

        *g = *p;

    } else {
        g->threshold = NGX_SF_POLICY_THRESHOLD;

        for (i = 0; i < NGX_SF_RULE_N; i++) {
            g->action[i] = NGX_SF_ACTION_OFF;
        }
    }

    g->name = value[1];
    g->parent = parent;

    save = *cf;
    cf->handler = ngx_http_smartflow_policy_group_rule;
    cf->handler_conf = (char *) g;

    rv = ngx_conf_parse(cf, NULL);

    *cf = save;

    if (rv != NGX_CONF_OK) {
        return rv;
    }

    g->pii_mask = 0;

    for (i = 0; i < NGX_SF_PII_N; i++) {
        if (g->action[i] != NGX_SF_ACTION_OFF) {
            g->pii_mask |= 1 << i;
        }
    }

    gp = ngx_array_push(&pmcf->groups);
    if (gp == NULL) {
        return NGX_CONF_ERROR;
    }

    *gp = g;

    return NGX_CONF_OK;
}


/* one line inside the block */
static char *
ngx_http_smartflow_policy_group_rule(ngx_conf_t *cf, ngx_command_t *dummy,
    void *conf)
{
    ngx_http_smartflow_policy_group_t *g = conf;

    ngx_int_t    a, n;
    ngx_str_t   *value, *name;
    ngx_uint_t   i, k, nargs, from, to;

    value = cf->args->elts;
    nargs = cf->args->nelts;
    name = &value[0];

    if (name->len == 7 && ngx_strncmp(name->data, "pattern", 7) == 0) {
        if (nargs != 4) {
            goto invalid;
        }

        return ngx_http_smartflow_policy_pattern(cf, g, value);
    }

    if (name->len == 12 && ngx_strncmp(name->data, "models_allow", 12) == 0)
    {
        return ngx_http_smartflow_policy_globs(cf, &g->allow, value, nargs);
    }

    if (name->len == 11 && ngx_strncmp(name->data, "models_deny", 11) == 0) {
        return ngx_http_smartflow_policy_globs(cf, &g->deny, value, nargs);
    }

    if (name->len == 6 && ngx_strncmp(name->data, "output", 6) == 0) {
        /* output on | off: the answers are scanned too */
        if (nargs != 2) {
            goto invalid;
        }

        if (value[1].len == 2 && ngx_strncmp(value[1].data, "on", 2) == 0) {
            g->output = 1;

        } else if (value[1].len == 3
                   && ngx_strncmp(value[1].data, "off", 3) == 0)
        {
            g->output = 0;

        } else {
            goto bad_action;
        }

        return NGX_CONF_OK;
    }

    if (name->len == 3 && ngx_strncmp(name->data, "pii", 3) == 0) {
        /* every PII and secret detector at once */
        if (nargs != 2) {
            goto invalid;
        }

        a = ngx_http_smartflow_policy_action(&value[1], 0);
        if (a == NGX_ERROR) {
            goto bad_action;
        }

        for (i = 0; i < NGX_SF_PII_N; i++) {
            g->action[i] = a;
        }

        return NGX_CONF_OK;
    }

    if (name->len == 6 && ngx_strncmp(name->data, "shield", 6) == 0) {
        /* shield [sql|shell|git|infra] TIER */
        if (nargs == 2) {
            from = NGX_SF_RULE_SQL;
            to = NGX_SF_RULE_INFRA;

        } else if (nargs == 3) {
            for (k = NGX_SF_RULE_SQL; k <= NGX_SF_RULE_INFRA; k++) {
                if (value[1].len == ngx_http_smartflow_policy_rules[k].len
                    && ngx_strncmp(value[1].data,
                                   ngx_http_smartflow_policy_rules[k].data,
                                   value[1].len) == 0)
                {
                    break;
                }
            }

            if (k > NGX_SF_RULE_INFRA) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "unknown shield category \"%V\"",
                                   &value[1]);
                return NGX_CONF_ERROR;
            }

            from = k;
            to = k;

        } else {
            goto invalid;
        }

        a = ngx_http_smartflow_policy_action(&value[nargs - 1], 1);
        if (a == NGX_ERROR) {
            goto bad_action;
        }

        for (k = from; k <= to; k++) {
            g->action[k] = a;
        }

        return NGX_CONF_OK;
    }

    for (k = 0; k < NGX_SF_RULE_SQL; k++) {
        if (name->len == ngx_http_smartflow_policy_rules[k].len
            && ngx_strncmp(name->data, ngx_http_smartflow_policy_rules[k].data,
                           name->len) == 0)
        {
            break;
        }
    }

    if (k == NGX_SF_RULE_SQL || nargs < 2) {
        goto invalid;
    }

    a = ngx_http_smartflow_policy_action(&value[1], 0);
    if (a == NGX_ERROR) {
        goto bad_action;
    }

    if (k == NGX_SF_RULE_INJECTION) {
        if (a == NGX_SF_ACTION_REDACT) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "injection can only be off, flag or block");
            return NGX_CONF_ERROR;
        }

        for (i = 2; i < nargs; i++) {
            if (ngx_strncmp(value[i].data, "threshold=", 10) != 0) {
                goto invalid;
            }

            n = ngx_atoi(value[i].data + 10, value[i].len - 10);
            if (n < 1 || n > 100) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "threshold must be 1 to 100, not \"%V\"",
                                   &value[i]);
                return NGX_CONF_ERROR;
            }

            g->threshold = n;
        }

    } else if (nargs != 2) {
        goto invalid;
    }

    g->action[k] = a;

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid rule \"%V\" with %ui arguments in policy "
                       "group \"%V\"", name, nargs - 1, &g->name);
    return NGX_CONF_ERROR;

bad_action:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid action \"%V\" for \"%V\"",
                       &value[nargs - 1], name);
    return NGX_CONF_ERROR;
}


static ngx_int_t
ngx_http_smartflow_policy_action(ngx_str_t *s, ngx_uint_t shield)
{
    static struct {
        ngx_str_t   name;
        ngx_uint_t  action;
        ngx_uint_t  shield;     /* 0 rules, 1 Shield tiers */
    } actions[] = {
        { ngx_string("off"), NGX_SF_ACTION_OFF, 0 },
        { ngx_string("flag"), NGX_SF_ACTION_FLAG, 0 },
        { ngx_string("redact"), NGX_SF_ACTION_REDACT, 0 },
        { ngx_string("block"), NGX_SF_ACTION_BLOCK, 0 },
        { ngx_string("allow"), NGX_SF_ACTION_OFF, 1 },
        { ngx_string("warn"), NGX_SF_ACTION_FLAG, 1 },
        { ngx_string("block"), NGX_SF_ACTION_BLOCK, 1 },
        { ngx_string("approve"), NGX_SF_ACTION_APPROVE, 1 },
        { ngx_null_string, 0, 0 }
    };

    ngx_uint_t  i;

    for (i = 0; actions[i].name.len; i++) {
        if (actions[i].shield == shield
            && actions[i].name.len == s->len
            && ngx_strncmp(actions[i].name.data, s->data, s->len) == 0)
        {
            return actions[i].action;
        }
    }

    return NGX_ERROR;
}


/* pattern NAME REGEX ACTION */
static char *
ngx_http_smartflow_policy_pattern(ngx_conf_t *cf,
    ngx_http_smartflow_policy_group_t *g, ngx_str_t *value)
{
    int                  err;
    u_char               msg[128], c;
    ngx_int_t            a;
    ngx_uint_t           i;
    PCRE2_SIZE           off;
    pcre2_code          *re;
    ngx_pool_cleanup_t  *cln;

    a = ngx_http_smartflow_policy_action(&value[3], 0);
    if (a == NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid action \"%V\" for pattern \"%V\"",
                           &value[3], &value[1]);
        return NGX_CONF_ERROR;
    }

    for (i = 0; i < value[1].len; i++) {
        c = ngx_tolower(value[1].data[i]);

        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'
              || c == '-'))
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "pattern name \"%V\" may hold only letters, "
                               "digits, '_' and '-'", &value[1]);
            return NGX_CONF_ERROR;
        }
    }

    /*
     * a placeholder names one kind of value: a pattern may not take a
     * rule's name, nor two patterns one name in two cases
     */
    for (i = 0; i < NGX_SF_RULE_N; i++) {
        if (value[1].len == ngx_http_smartflow_policy_rules[i].len
            && ngx_strncasecmp(value[1].data,
                               ngx_http_smartflow_policy_rules[i].data,
                               value[1].len)
               == 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "pattern name \"%V\" is the name of a rule",
                               &value[1]);
            return NGX_CONF_ERROR;
        }
    }

    re = pcre2_compile(value[2].data, value[2].len, 0, &err, &off, NULL);
    if (re == NULL) {
        (void) pcre2_get_error_message(err, msg, sizeof(msg));
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "pattern \"%V\": %s at offset %uz in \"%V\"",
                           &value[1], msg, (size_t) off, &value[2]);
        return NGX_CONF_ERROR;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        pcre2_code_free(re);
        return NGX_CONF_ERROR;
    }

    cln->handler = ngx_http_smartflow_policy_re_free;
    cln->data = re;

    (void) pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);

    for (i = 0; i < g->ncustom; i++) {
        if (g->custom[i].name.len == value[1].len
            && ngx_strncasecmp(g->custom[i].name.data, value[1].data,
                               value[1].len)
               == 0)
        {
            break;
        }
    }

    if (i == NGX_SF_POLICY_MAX_CUSTOM) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "too many patterns in policy group \"%V\"",
                           &g->name);
        return NGX_CONF_ERROR;
    }

    if (i == g->ncustom) {
        g->ncustom++;
    }

    g->custom[i].name = value[1];
    g->custom[i].re = re;
    g->custom_action[i] = a;

    /* its placeholders: [NAME_1] in upper case */
    g->custom_type[i].data = ngx_pnalloc(cf->pool, value[1].len);
    if (g->custom_type[i].data == NULL) {
        return NGX_CONF_ERROR;
    }

    g->custom_type[i].len = value[1].len;

    for (off = 0; off < value[1].len; off++) {
        g->custom_type[i].data[off] = ngx_toupper(value[1].data[off]);
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_smartflow_policy_globs(ngx_conf_t *cf, ngx_array_t **globs,
    ngx_str_t *value, ngx_uint_t n)
{
    ngx_str_t   *m;
    ngx_uint_t   i;

    if (n < 2) {
        return "needs at least one model";
    }

    /* a child's list replaces its parent's */
    *globs = ngx_array_create(cf->pool, n - 1, sizeof(ngx_str_t));
    if (*globs == NULL) {
        return NGX_CONF_ERROR;
    }

    for (i = 1; i < n; i++) {
        m = ngx_array_push(*globs);
        if (m == NULL) {
            return NGX_CONF_ERROR;
        }

        *m = value[i];
        ngx_strlow(m->data, m->data, m->len);
    }

    return NGX_CONF_OK;
}


static void
ngx_http_smartflow_policy_re_free(void *data)
{
    pcre2_code_free(data);
}
