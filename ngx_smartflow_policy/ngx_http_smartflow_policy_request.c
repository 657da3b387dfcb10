/*
 * The policy stage on the parsed request: picks the group (the virtual
 * key's, else the location's), checks its model lists, then reads each
 * text where it matters: PII and secrets everywhere a person or a tool
 * wrote, injection scoring in user messages and tool results, Shield in
 * the tool calls of the history.  A block refuses the request naming the
 * rule; redactions rewrite the JSON tree with typed placeholders, the
 * same value the same placeholder, before anything leaves.
 */

#include "ngx_http_smartflow_policy.h"


/* the text parts before a part, as far back as their last NGX_SF_SEAM bytes */
typedef struct {
    ngx_smartflow_json_t               *part[NGX_SF_SEAM];
    ngx_uint_t                          n;
} ngx_http_smartflow_policy_parts_t;


static ngx_str_t *ngx_http_smartflow_policy_deployment(ngx_http_request_t *r,
    ngx_array_t *list, ngx_http_smartflow_ctx_t *ctx, ngx_uint_t in);
static ngx_int_t ngx_http_smartflow_policy_walk(
    ngx_http_smartflow_policy_run_t *run);
static ngx_int_t ngx_http_smartflow_policy_message(
    ngx_http_smartflow_policy_run_t *run, ngx_smartflow_json_t *msg,
    ngx_uint_t anthropic);
static ngx_int_t ngx_http_smartflow_policy_blocks(
    ngx_http_smartflow_policy_run_t *run, ngx_smartflow_json_t *content,
    ngx_uint_t what);
static ngx_int_t ngx_http_smartflow_policy_joined(
    ngx_http_smartflow_policy_run_t *run,
    ngx_http_smartflow_policy_parts_t *prev, ngx_smartflow_json_t *b,
    ngx_uint_t what);
static ngx_int_t ngx_http_smartflow_policy_seam(
    ngx_http_smartflow_policy_run_t *run,
    ngx_http_smartflow_policy_parts_t *prev, ngx_smartflow_json_t *b,
    ngx_uint_t what);
static ngx_int_t ngx_http_smartflow_policy_document(
    ngx_http_smartflow_policy_run_t *run, ngx_smartflow_json_t *b,
    ngx_uint_t what);
static void ngx_http_smartflow_policy_inject(
    ngx_http_smartflow_policy_run_t *run, u_char *data, size_t len);
static ngx_uint_t ngx_http_smartflow_policy_action(
    ngx_http_smartflow_policy_group_t *g, ngx_uint_t rule, ngx_uint_t *type);
static ngx_int_t ngx_http_smartflow_policy_values(
    ngx_http_smartflow_policy_run_t *run, ngx_smartflow_json_t *j,
    ngx_uint_t what, ngx_uint_t depth);
static ngx_int_t ngx_http_smartflow_policy_key(
    ngx_http_smartflow_policy_run_t *run, ngx_smartflow_json_t *c);
static ngx_int_t ngx_http_smartflow_policy_arguments(
    ngx_http_smartflow_policy_run_t *run, ngx_smartflow_json_t *name,
    ngx_smartflow_json_t *args);
static ngx_int_t ngx_http_smartflow_policy_call(
    ngx_http_smartflow_policy_run_t *run, ngx_smartflow_json_t *name,
    ngx_smartflow_json_t *args);
static ngx_int_t ngx_http_smartflow_policy_redact(
    ngx_http_smartflow_policy_run_t *run, ngx_smartflow_json_t *j,
    ngx_smartflow_finding_t *f, ngx_uint_t n);
static ngx_http_smartflow_placeholder_t *
    ngx_http_smartflow_policy_placeholder(
    ngx_http_smartflow_policy_run_t *run, ngx_uint_t type, ngx_str_t *value);
static ngx_int_t ngx_http_smartflow_policy_edited(
    ngx_http_smartflow_policy_run_t *run, ngx_smartflow_json_t *j);
static void ngx_http_smartflow_policy_seen_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel);
static void ngx_http_smartflow_policy_decide(
    ngx_http_smartflow_policy_run_t *run, ngx_uint_t type,
    ngx_uint_t action, const char *detail);
static ngx_int_t ngx_http_smartflow_policy_splice(
    ngx_http_smartflow_policy_run_t *run, ngx_str_t *body);
static void ngx_http_smartflow_policy_ordinals(ngx_smartflow_json_t *j,
    ngx_http_smartflow_policy_edit_t *e, ngx_uint_t n, ngx_uint_t *ord,
    ngx_uint_t *nstr);
static ngx_str_t *ngx_http_smartflow_policy_type_name(
    ngx_http_smartflow_policy_run_t *run, ngx_uint_t type, ngx_str_t *buf);
static ngx_int_t ngx_http_smartflow_policy_held(
    ngx_http_smartflow_policy_run_t *run, ngx_str_t *name);


/* placeholders' words, by PII rule */
/*
 * The scans' findings: scratch, read right after each scan (a worker
 * runs one scan at a time), not kept in each request's pool.
 */
static ngx_smartflow_finding_t  ngx_http_smartflow_policy_findings[
                                    NGX_SF_MAX_FINDINGS];


static ngx_str_t  ngx_http_smartflow_policy_types[] = {
    ngx_string("EMAIL"), ngx_string("PHONE"), ngx_string("CARD"),
    ngx_string("IBAN"), ngx_string("SSN"), ngx_string("IP"),
    ngx_string("SECRET")
};


static const char  *ngx_http_smartflow_policy_actions[] = {
    "", "allow", "flag", "redact", "block", "approve"
};


static void
ngx_http_smartflow_policy_run_cleanup(void *data)
{
    ngx_http_smartflow_policy_run_t  *run = data;

    /*
     * the run lives in the request pool: found again by this handler,
     * which gives back the approvals of a request not answered
     */
    if (run->nused
        && (run->r->headers_out.status < NGX_HTTP_OK
            || run->r->headers_out.status >= NGX_HTTP_SPECIAL_RESPONSE))
    {
        ngx_http_smartflow_policy_approvals_back(run);
    }
}


/*
 * The request's run, for the answer: found through its pool cleanup, as
 * module contexts do not survive the internal redirects of fallbacks.
 */
ngx_http_smartflow_policy_run_t *
ngx_http_smartflow_policy_run(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t  *cln;

    for (cln = r->pool->cleanup; cln; cln = cln->next) {
        if (cln->handler == ngx_http_smartflow_policy_run_cleanup) {
            return cln->data;
        }
    }

    return NULL;
}


ngx_uint_t
ngx_http_smartflow_policy_model_in(ngx_array_t *globs, ngx_str_t *model)
{
    u_char      low[256];
    ngx_str_t  *m;
    ngx_uint_t  i;

    if (model->len > sizeof(low)) {
        return 0;
    }

    ngx_strlow(low, model->data, model->len);
    m = globs->elts;

    for (i = 0; i < globs->nelts; i++) {
        if (ngx_smartflow_glob(m[i].data, m[i].data + m[i].len,
                               low, low + model->len))
        {
            return 1;
        }
    }

    return 0;
}


/*
 * A model the group denies is never reached: not as the client names
 * it (1), nor as any deployment of that name (an alias, one of a mix, a
 * fallback) names it to its provider (2).  All the name's deployments
 * are read, not the plan of this request, so that the answer does not
 * depend on the weighted pick, the attempts allowed or the breakers.
 */
static ngx_uint_t
ngx_http_smartflow_policy_denied(ngx_http_request_t *r, ngx_array_t *deny,
    ngx_http_smartflow_ctx_t *ctx)
{
    if (ngx_http_smartflow_policy_model_in(deny, &ctx->model)) {
        return 1;
    }

    return ngx_http_smartflow_policy_deployment(r, deny, ctx, 1) ? 2 : 0;
}


/*
 * The model a deployment of the request's name gives its provider that
 * the list holds (in 1) or does not (in 0); NULL if none does.
 */
static ngx_str_t *
ngx_http_smartflow_policy_deployment(ngx_http_request_t *r,
    ngx_array_t *list, ngx_http_smartflow_ctx_t *ctx, ngx_uint_t in)
{
    ngx_http_smartflow_route_t      *rt;
    ngx_http_smartflow_main_conf_t  *smcf;

    smcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_proxy_module);

    for (rt = ngx_http_smartflow_route_find(smcf, &ctx->model);
         rt;
         rt = rt->next)
    {
        if (rt->model.len
            && ngx_http_smartflow_policy_model_in(list, &rt->model) == in)
        {
            return &rt->model;
        }
    }

    return NULL;
}


/*
 * A name the list allows: an entry of it without a wildcard is the name
 * itself (the operator named it, and it goes on as it is routed), or an
 * entry matches it and every deployment of it (an alias, one of a mix, a
 * fallback) names to its provider a model an entry matches.  0 if so; 1
 * if no entry matches the name; 2 if a deployment's model is not allowed,
 * that model in *model.  All the deployments are read, as for the models
 * denied.
 */
static ngx_uint_t
ngx_http_smartflow_policy_allowed(ngx_http_request_t *r, ngx_array_t *allow,
    ngx_http_smartflow_ctx_t *ctx, ngx_str_t **model)
{
    ngx_str_t   *m;
    ngx_uint_t   i;

    if (!ngx_http_smartflow_policy_model_in(allow, &ctx->model)) {
        return 1;
    }

    m = allow->elts;

    for (i = 0; i < allow->nelts; i++) {
        if (m[i].len == ctx->model.len
            && ngx_strlchr(m[i].data, m[i].data + m[i].len, '*') == NULL
            && ngx_strncasecmp(m[i].data, ctx->model.data, m[i].len) == 0)
        {
            return 0;
        }
    }

    *model = ngx_http_smartflow_policy_deployment(r, allow, ctx, 0);

    return *model ? 2 : 0;
}


/*
 * A name refused for one of its deployments: the operator is told which,
 * and by the list of which group (none: smartflow_policy_models)
 */
static ngx_int_t
ngx_http_smartflow_policy_not_reached(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_str_t *model, ngx_str_t *group)
{
    if (group) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "smartflow policy: model \"%V\" refused: its "
                      "deployment \"%V\" is a model group \"%V\" does "
                      "not allow", &ctx->model, model, group);

    } else {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "smartflow policy: model \"%V\" refused: its "
                      "deployment \"%V\" is a model smartflow_policy_models "
                      "does not allow", &ctx->model, model);
    }

    return ngx_http_smartflow_error(r, NGX_HTTP_FORBIDDEN,
               "permission_error", "model_not_allowed", "model",
               "The model `%V` is not allowed by this endpoint's "
               "policy: one of its deployments is a model not allowed.",
               &ctx->model);
}


ngx_int_t
ngx_http_smartflow_policy_stage(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx)
{
    ngx_int_t                               rc;
    ngx_str_t                               name, *model;
    ngx_uint_t                              denied, allowed;
    ngx_pool_cleanup_t                     *cln;
    ngx_http_smartflow_policy_run_t        *run;
    ngx_http_smartflow_policy_group_t      *g;
    ngx_http_smartflow_policy_loc_conf_t   *plcf;
    ngx_http_smartflow_policy_main_conf_t  *pmcf;

    plcf = ngx_http_get_module_loc_conf(r, ngx_http_smartflow_policy_module);

    if (plcf->models) {
        allowed = ngx_http_smartflow_policy_allowed(r, plcf->models, ctx,
                                                    &model);
        if (allowed == 1) {
            goto not_allowed;
        }

        if (allowed == 2) {
            return ngx_http_smartflow_policy_not_reached(r, ctx, model, NULL);
        }
    }

    g = plcf->group;

    if (ctx->vkey && ctx->vkey->policy_group.len) {
        /* the key's group wins over the location's */
        pmcf = ngx_http_get_module_main_conf(r,
                                            ngx_http_smartflow_policy_module);

        g = ngx_http_smartflow_policy_find(pmcf, &ctx->vkey->policy_group);

        if (g == NULL) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "smartflow policy: virtual key \"%V\" names "
                          "policy group \"%V\", which is not configured",
                          &ctx->key_id, &ctx->vkey->policy_group);

            return ngx_http_smartflow_error(r,
                       NGX_HTTP_INTERNAL_SERVER_ERROR, "server_error",
                       "policy_group_not_found", NULL,
                       "The policy group of this key is not configured "
                       "on the gateway.");
        }
    }

    if (g == NULL) {
        return NGX_DECLINED;
    }

    if (g->allow) {
        allowed = ngx_http_smartflow_policy_allowed(r, g->allow, ctx, &model);

        if (allowed == 1) {
            goto not_allowed;
        }

        if (allowed == 2) {
            return ngx_http_smartflow_policy_not_reached(r, ctx, model,
                                                         &g->name);
        }
    }

    denied = g->deny ? ngx_http_smartflow_policy_denied(r, g->deny, ctx) : 0;

    if (denied == 1) {
        goto not_allowed;
    }

    if (denied == 2) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "smartflow policy: model \"%V\" refused: one of its "
                      "deployments is a model group \"%V\" denies",
                      &ctx->model, &g->name);

        return ngx_http_smartflow_error(r, NGX_HTTP_FORBIDDEN,
                   "permission_error", "model_not_allowed", "model",
                   "The model `%V` is not allowed by this endpoint's "
                   "policy: one of its deployments is a denied model.",
                   &ctx->model);
    }

    run = ngx_pcalloc(r->pool, sizeof(ngx_http_smartflow_policy_run_t));
    if (run == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_smartflow_policy_run_cleanup;
    cln->data = run;

    run->r = r;
    run->pool = r->pool;
    run->ctx = ctx;
    run->g = g;
    run->f = ngx_http_smartflow_policy_findings;
    run->input = 1;
    run->shield_on = (g->action[NGX_SF_RULE_SQL] != NGX_SF_ACTION_OFF
                      || g->action[NGX_SF_RULE_SHELL] != NGX_SF_ACTION_OFF
                      || g->action[NGX_SF_RULE_GIT] != NGX_SF_ACTION_OFF
                      || g->action[NGX_SF_RULE_INFRA] != NGX_SF_ACTION_OFF);

    pmcf = ngx_http_get_module_main_conf(r, ngx_http_smartflow_policy_module);

    run->approve_on = (pmcf->approvals != NULL
                       && (g->action[NGX_SF_RULE_SQL] == NGX_SF_ACTION_APPROVE
                           || g->action[NGX_SF_RULE_SHELL]
                              == NGX_SF_ACTION_APPROVE
                           || g->action[NGX_SF_RULE_GIT]
                              == NGX_SF_ACTION_APPROVE
                           || g->action[NGX_SF_RULE_INFRA]
                              == NGX_SF_ACTION_APPROVE));

    ngx_rbtree_init(&run->seen, &run->seen_sentinel,
                    ngx_http_smartflow_policy_seen_insert);

    if (ngx_http_smartflow_policy_walk(run) != NGX_OK
        || ngx_http_smartflow_policy_decisions(run) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    run->input = 0;

    if (!run->block && (run->approval || run->approval_full)) {
        /* nothing else refuses it: it waits for an operator */
        run->block = NGX_SF_ACTION_APPROVE;
        run->block_type = run->held_type;
        run->block_detail = run->held_detail;
    }

    if (run->block) {
        ctx->policy_blocked = 1;

        ngx_http_smartflow_policy_rule(run, run->block_type, &name);

        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "smartflow policy: rule \"%V\"%s%s of group \"%V\" "
                      "blocked the request%s",
                      &name, run->block_detail ? " " : "",
                      run->block_detail ? run->block_detail : "", &g->name,
                      run->block == NGX_SF_ACTION_APPROVE
                      ? " (approval required)" : "");

        if (run->block_type == NGX_SF_RULE_INJECTION) {
            return ngx_http_smartflow_error(r, NGX_HTTP_BAD_REQUEST,
                       "invalid_request_error", "content_policy_violation",
                       NULL, "The request was blocked by the content policy "
                       "(rule `injection`, score %ui, threshold %ui).",
                       run->score, g->threshold);
        }

        if (run->block == NGX_SF_ACTION_APPROVE) {
            if (run->approval_full) {
                return ngx_http_smartflow_error(r,
                           NGX_HTTP_SERVICE_UNAVAILABLE, "server_error",
                           "approval_queue_full", NULL,
                           "The tool call (rule `%V`: %s) requires an "
                           "operator's approval, and the approval queue is "
                           "full; try again later.", &name,
                           run->block_detail);
            }

            if (run->approval) {
                return ngx_http_smartflow_policy_held(run, &name);
            }

            return ngx_http_smartflow_error(r, NGX_HTTP_FORBIDDEN,
                       "permission_error", "approval_required", NULL,
                       "The tool call (rule `%V`: %s) requires an "
                       "operator's approval, and this gateway keeps no "
                       "approval queue.", &name, run->block_detail);
        }

        if (run->block_detail) {
            return ngx_http_smartflow_error(r, NGX_HTTP_BAD_REQUEST,
                       "invalid_request_error", "content_policy_violation",
                       NULL, "The request was blocked by the content policy "
                       "(rule `%V`: %s)%s.", &name, run->block_detail,
                       run->block == NGX_SF_ACTION_APPROVE
                       ? "; this operation requires an operator's approval"
                       : "");
        }

        return ngx_http_smartflow_error(r, NGX_HTTP_BAD_REQUEST,
                   "invalid_request_error", "content_policy_violation", NULL,
                   "The request was blocked by the content policy "
                   "(rule `%V`).", &name);
    }

    /* the answer is read by the output scanner (the proxy's filter) */
    ctx->output_scan = (g->output
                        && (g->pii_mask || g->ncustom || run->shield_on));

    if (run->redacted) {
        /*
         * the redacted request is what goes on, as it is sent: the
         * client's body with the strings changed put in place, or, when
         * that cannot be done exactly, the request written again
         */
        rc = ngx_http_smartflow_policy_splice(run, &ctx->body);

        if (rc == NGX_ERROR) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (rc == NGX_DECLINED
            && ngx_smartflow_json_dump(r->pool, ctx->json, &ctx->body)
               != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    /* it goes on: the approvals it needed are used up now */
    rc = ngx_http_smartflow_policy_approvals_use(run);

    if (rc == NGX_DECLINED) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "smartflow policy: an approval of group \"%V\" was "
                      "used by another request or expired meanwhile",
                      &g->name);

        return ngx_http_smartflow_error(r, NGX_HTTP_FORBIDDEN,
                   "permission_error", "approval_required", NULL,
                   "An operator's approval this request relied on was "
                   "used by another request or expired meanwhile; send "
                   "the request again to have it held for approval.");
    }

    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return NGX_DECLINED;

not_allowed:

    return ngx_http_smartflow_error(r, NGX_HTTP_FORBIDDEN,
               "permission_error", "model_not_allowed", "model",
               "The model `%V` is not allowed by this endpoint's policy.",
               &ctx->model);
}


/* the refusal of a request whose calls wait: the items to approve */
static ngx_int_t
ngx_http_smartflow_policy_held(ngx_http_smartflow_policy_run_t *run,
    ngx_str_t *name)
{
    u_char                              *p, *ids;
    ngx_uint_t                           i, n;
    ngx_http_smartflow_approval_call_t  *c;

    c = run->approvals->elts;
    n = 0;

    for (i = 0; i < run->approvals->nelts; i++) {
        n += (c[i].state == NGX_SF_APPROVAL_PENDING);
    }

    if (n == 1) {
        return ngx_http_smartflow_error(run->r, NGX_HTTP_FORBIDDEN,
                   "permission_error", "approval_required", NULL,
                   "The tool call (rule `%V`: %s) awaits an operator's "
                   "approval as Shield item %ui; send the request again "
                   "once it is approved.", name, run->block_detail,
                   run->approval);
    }

    ids = ngx_pnalloc(run->r->pool, n * (NGX_INT_T_LEN + 2));
    if (ids == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ids;

    for (i = 0; i < run->approvals->nelts; i++) {
        if (c[i].state == NGX_SF_APPROVAL_PENDING) {
            p = ngx_sprintf(p, "%s%ui", p == ids ? "" : ", ", c[i].id);
        }
    }

    return ngx_http_smartflow_error(run->r, NGX_HTTP_FORBIDDEN,
               "permission_error", "approval_required", NULL,
               "%ui tool calls (the first: rule `%V`: %s) await an "
               "operator's approval as Shield items %*s; send the request "
               "again once they are approved.", n, name, run->block_detail,
               (size_t) (p - ids), ids);
}


static ngx_int_t
ngx_http_smartflow_policy_walk(ngx_http_smartflow_policy_run_t *run)
{
    ngx_int_t                  rc;
    ngx_smartflow_json_t      *j, *m;
    ngx_http_smartflow_ctx_t  *ctx;

    ctx = run->ctx;

    /*
     * what the client tells the provider of its end user (an address,
     * often) and its tags: OpenAI's "user" and "metadata", Anthropic's
     * "metadata" (its user_id)
     */
    j = ngx_smartflow_json_get(ctx->json, "user");
    if (j) {
        rc = ngx_http_smartflow_policy_values(run, j, NGX_SF_SCAN_PII, 0);
        if (rc != NGX_OK) {
            return rc;
        }
    }

    j = ngx_smartflow_json_get(ctx->json, "metadata");
    if (j) {
        rc = ngx_http_smartflow_policy_values(run, j,
                                      NGX_SF_SCAN_PII | NGX_SF_SCAN_ALL, 0);
        if (rc != NGX_OK) {
            return rc;
        }
    }

    switch (ctx->api) {

    case NGX_HTTP_SMARTFLOW_API_CHAT:
    case NGX_HTTP_SMARTFLOW_API_MESSAGES:
        if (ctx->api == NGX_HTTP_SMARTFLOW_API_MESSAGES) {
            /* a string or text blocks, read as one text */
            j = ngx_smartflow_json_get(ctx->json, "system");
            if (j) {
                rc = ngx_http_smartflow_policy_blocks(run, j,
                                                      NGX_SF_SCAN_PII);
                if (rc != NGX_OK) {
                    return rc;
                }
            }

        } else {
            /* OpenAI's predicted output: text the client sends along */
            j = ngx_smartflow_json_get(ctx->json, "prediction");
            if (j) {
                rc = ngx_http_smartflow_policy_values(run, j,
                                                      NGX_SF_SCAN_PII, 0);
                if (rc != NGX_OK) {
                    return rc;
                }
            }
        }

        j = ngx_smartflow_json_get(ctx->json, "messages");
        if (j == NULL || j->type != NGX_SMARTFLOW_JSON_ARRAY) {
            return NGX_OK;
        }

        for (m = j->child; m && !run->block; m = m->next) {
            if (m->type != NGX_SMARTFLOW_JSON_OBJECT) {
                continue;
            }

            rc = ngx_http_smartflow_policy_message(run, m,
                     ctx->api == NGX_HTTP_SMARTFLOW_API_MESSAGES);
            if (rc != NGX_OK) {
                return rc;
            }
        }

        return NGX_OK;

    case NGX_HTTP_SMARTFLOW_API_COMPLETIONS:
        j = ngx_smartflow_json_get(ctx->json, "prompt");
        if (j) {
            rc = ngx_http_smartflow_policy_values(run, j,
                                      NGX_SF_SCAN_PII | NGX_SF_SCAN_INJ, 0);
            if (rc != NGX_OK) {
                return rc;
            }
        }

        /* the text after the insertion */
        j = ngx_smartflow_json_get(ctx->json, "suffix");
        return (j && !run->block)
               ? ngx_http_smartflow_policy_values(run, j,
                                      NGX_SF_SCAN_PII | NGX_SF_SCAN_INJ, 0)
               : NGX_OK;

    case NGX_HTTP_SMARTFLOW_API_EMBEDDINGS:
        j = ngx_smartflow_json_get(ctx->json, "input");
        return j ? ngx_http_smartflow_policy_values(run, j, NGX_SF_SCAN_PII,
                                                    0)
                 : NGX_OK;

    default:
        return NGX_OK;
    }
}


static ngx_uint_t
ngx_http_smartflow_policy_is(ngx_smartflow_json_t *j, char *s)
{
    size_t  len;

    len = ngx_strlen(s);

    return ngx_smartflow_json_is_string(j) && j->str.len == len
           && ngx_strncmp(j->str.data, s, len) == 0;
}


/* one message of the history, OpenAI's or Anthropic's */
static ngx_int_t
ngx_http_smartflow_policy_message(ngx_http_smartflow_policy_run_t *run,
    ngx_smartflow_json_t *msg, ngx_uint_t anthropic)
{
    ngx_int_t                           rc;
    ngx_uint_t                          what;
    ngx_smartflow_json_t               *role, *content, *b, *type, *j, *fn;
    ngx_http_smartflow_policy_parts_t   prev;

    role = ngx_smartflow_json_get(msg, "role");
    content = ngx_smartflow_json_get(msg, "content");

    what = NGX_SF_SCAN_PII;

    /* what a user or a tool wrote may carry injected instructions */
    if (ngx_http_smartflow_policy_is(role, "user")
        || ngx_http_smartflow_policy_is(role, "tool")
        || ngx_http_smartflow_policy_is(role, "function"))
    {
        what |= NGX_SF_SCAN_INJ;
    }

    if (!anthropic || content == NULL
        || content->type != NGX_SMARTFLOW_JSON_ARRAY)
    {
        if (content) {
            rc = ngx_http_smartflow_policy_blocks(run, content, what);
            if (rc != NGX_OK) {
                return rc;
            }
        }

        /* OpenAI: the calls the model made, and the legacy one */
        j = ngx_smartflow_json_get(msg, "tool_calls");

        if (j && j->type == NGX_SMARTFLOW_JSON_ARRAY) {
            for (b = j->child; b && !run->block; b = b->next) {
                fn = ngx_smartflow_json_get(b, "function");

                rc = ngx_http_smartflow_policy_arguments(run,
                         ngx_smartflow_json_get(fn, "name"),
                         ngx_smartflow_json_get(fn, "arguments"));
                if (rc != NGX_OK) {
                    return rc;
                }
            }
        }

        j = ngx_smartflow_json_get(msg, "function_call");
        if (j) {
            return ngx_http_smartflow_policy_arguments(run,
                       ngx_smartflow_json_get(j, "name"),
                       ngx_smartflow_json_get(j, "arguments"));
        }

        return NGX_OK;
    }

    /* Anthropic's content blocks */
    prev.n = 0;

    for (b = content->child; b && !run->block; b = b->next) {
        type = ngx_smartflow_json_get(b, "type");

        if (ngx_http_smartflow_policy_is(type, "text")) {
            j = ngx_smartflow_json_get(b, "text");
            rc = j ? ngx_http_smartflow_policy_values(run, j, what, 0)
                   : NGX_OK;

        } else if (ngx_http_smartflow_policy_is(type, "tool_result")
                   || ngx_http_smartflow_policy_is(type, "mcp_tool_result"))
        {
            /* a tool's output, also an MCP server's the API called */
            j = ngx_smartflow_json_get(b, "content");
            rc = j ? ngx_http_smartflow_policy_blocks(run, j,
                         NGX_SF_SCAN_PII | NGX_SF_SCAN_INJ)
                   : NGX_OK;

        } else if (ngx_http_smartflow_policy_is(type, "document")
                   || ngx_http_smartflow_policy_is(type, "search_result"))
        {
            rc = ngx_http_smartflow_policy_document(run, b, what);

        } else if (ngx_http_smartflow_policy_is(type, "tool_use")
                   || ngx_http_smartflow_policy_is(type, "mcp_tool_use"))
        {
            j = ngx_smartflow_json_get(b, "input");

            if (j == NULL) {
                continue;
            }

            rc = ngx_http_smartflow_policy_call(run,
                     ngx_smartflow_json_get(b, "name"), j);

            if (rc == NGX_OK) {
                rc = ngx_http_smartflow_policy_values(run, j,
                         NGX_SF_SCAN_PII | NGX_SF_SCAN_SHIELD, 0);
            }

            ngx_str_null(&run->tool);
            ngx_str_null(&run->call_args);

        } else if (b->type == NGX_SMARTFLOW_JSON_STRING) {
            rc = ngx_http_smartflow_policy_text(run, b, what);

        } else {
            /* images, signed thinking, server tools: left as they are */
            rc = NGX_OK;
        }

        if (rc == NGX_OK && !run->block) {
            rc = ngx_http_smartflow_policy_joined(run, &prev, b, what);
        }

        if (rc != NGX_OK) {
            return rc;
        }
    }

    return NGX_OK;
}


/*
 * A message's or a tool result's content: a string, or parts (text,
 * images, documents and search results), the seams between two text
 * parts read as well
 */
static ngx_int_t
ngx_http_smartflow_policy_blocks(ngx_http_smartflow_policy_run_t *run,
    ngx_smartflow_json_t *content, ngx_uint_t what)
{
    ngx_int_t                           rc;
    ngx_smartflow_json_t               *b, *type;
    ngx_http_smartflow_policy_parts_t   prev;

    if (content->type != NGX_SMARTFLOW_JSON_ARRAY) {
        return ngx_http_smartflow_policy_values(run, content, what, 0);
    }

    prev.n = 0;

    for (b = content->child; b && !run->block; b = b->next) {
        type = ngx_smartflow_json_get(b, "type");

        if (ngx_http_smartflow_policy_is(type, "document")
            || ngx_http_smartflow_policy_is(type, "search_result"))
        {
            rc = ngx_http_smartflow_policy_document(run, b, what);

        } else {
            rc = ngx_http_smartflow_policy_values(run, b, what, 1);
        }

        if (rc == NGX_OK && !run->block) {
            rc = ngx_http_smartflow_policy_joined(run, &prev, b, what);
        }

        if (rc != NGX_OK) {
            return rc;
        }
    }

    return NGX_OK;
}


/*
 * Text parts one after another are read by the model as one text: the
 * seam between a part and the text parts before it is read too, so that
 * a value cut in pieces (a card in two, an address at a part's end) is
 * found whole and replaced.  prev: the text parts before, none after a
 * part that is no text.
 */
static ngx_int_t
ngx_http_smartflow_policy_joined(ngx_http_smartflow_policy_run_t *run,
    ngx_http_smartflow_policy_parts_t *prev, ngx_smartflow_json_t *b,
    ngx_uint_t what)
{
    size_t                 len;
    ngx_int_t              rc;
    ngx_uint_t             i;
    ngx_smartflow_json_t  *j;

    if (b->type == NGX_SMARTFLOW_JSON_STRING) {
        j = b;

    } else if (ngx_http_smartflow_policy_is(ngx_smartflow_json_get(b, "type"),
                                            "text"))
    {
        j = ngx_smartflow_json_get(b, "text");

        if (!ngx_smartflow_json_is_string(j)) {
            j = NULL;
        }

    } else {
        j = NULL;
    }

    if (j == NULL) {
        prev->n = 0;
        return NGX_OK;
    }

    if (j->str.len == 0) {
        return NGX_OK;
    }

    rc = prev->n ? ngx_http_smartflow_policy_seam(run, prev, j, what)
                 : NGX_OK;

    /* it joins them; the oldest leave once the others hold the bytes */
    if (prev->n == NGX_SF_SEAM) {
        ngx_memmove(prev->part, prev->part + 1,
                    (NGX_SF_SEAM - 1) * sizeof(ngx_smartflow_json_t *));
        prev->n--;
    }

    prev->part[prev->n++] = j;

    for ( ;; ) {
        len = 0;

        for (i = 1; i < prev->n; i++) {
            len += prev->part[i]->str.len;
        }

        if (prev->n < 2 || len < NGX_SF_SEAM) {
            break;
        }

        ngx_memmove(prev->part, prev->part + 1,
                    (prev->n - 1) * sizeof(ngx_smartflow_json_t *));
        prev->n--;
    }

    return rc;
}


/* where a seam's window may start and end */
#define ngx_sf_seam_space(c)                                                  \
    ((c) == ' ' || (c) == '\t' || (c) == '\r' || (c) == '\n')


/*
 * The seam before b: the last NGX_SF_SEAM bytes of the parts before it
 * and as many of its first, the window narrowed to start and end at a
 * space (else at a character's start), so that no match begins or ends
 * inside a word, a value (an address, a key) or a character.  A finding that
 * reaches into b is replaced as one value: its placeholder in the part it
 * starts in, its pieces taken out of the parts after.
 */
static ngx_int_t
ngx_http_smartflow_policy_seam(ngx_http_smartflow_policy_run_t *run,
    ngx_http_smartflow_policy_parts_t *prev, ngx_smartflow_json_t *b,
    ngx_uint_t what)
{
    u_char                             *p, buf[2 * NGX_SF_SEAM];
    size_t                              ta, tb, ws, we, len, take, rest,
                                        start, end;
    size_t                              off[NGX_SF_SEAM], from[NGX_SF_SEAM];
    ngx_str_t                           word, value;
    ngx_uint_t                          i, k, n, act, type;
    ngx_smartflow_json_t               *a;
    ngx_smartflow_finding_t            *f;
    ngx_http_smartflow_policy_group_t  *g;
    ngx_http_smartflow_placeholder_t   *ph;

    g = run->g;

    /*
     * the parts' last NGX_SF_SEAM bytes (a part may have grown since it
     * joined, by a placeholder): the bytes each gives, newest first
     */
    rest = NGX_SF_SEAM;
    ws = 0;

    for (k = prev->n; k > 0; k--) {
        take = ngx_min(prev->part[k - 1]->str.len, rest);
        from[k - 1] = prev->part[k - 1]->str.len - take;
        rest -= take;

        if (take) {
            /* the oldest bytes taken: cut out of the middle of a part */
            ws = from[k - 1];
        }
    }

    /* oldest first: where each starts in buf */
    p = buf;

    for (k = 0; k < prev->n; k++) {
        a = prev->part[k];

        off[k] = p - buf;
        p = ngx_cpymem(p, a->str.data + from[k], a->str.len - from[k]);
    }

    ta = p - buf;
    tb = ngx_min(b->str.len, NGX_SF_SEAM);

    p = ngx_cpymem(p, b->str.data, tb);

    /* the window's start: past the word its first bytes are part of */
    if (ws) {
        for (ws = 0; ws < ta && !ngx_sf_seam_space(buf[ws]); ws++) {
            /* void */
        }

        if (ws == ta) {
            for (ws = 0; ws < ta && (buf[ws] & 0xc0) == 0x80; ws++) {
                /* void */
            }
        }
    }

    /* its end: before the word b's next byte is part of */
    we = ta + tb;

    if (tb < b->str.len) {
        while (we > ta && !ngx_sf_seam_space(b->str.data[we - ta])) {
            we--;
        }

        if (we == ta) {
            for (we = ta + tb; we > ta && (b->str.data[we - ta] & 0xc0) == 0x80;
                 we--)
            {
                /* void */
            }
        }
    }

    if (ws >= ta || we <= ta) {
        return NGX_OK;
    }

    len = we - ws;

    if (what & NGX_SF_SCAN_INJ) {
        ngx_http_smartflow_policy_inject(run, buf + ws, len);
    }

    if (!(what & NGX_SF_SCAN_PII) || run->block || ta == 0
        || (g->pii_mask == 0 && g->ncustom == 0))
    {
        return NGX_OK;
    }

    f = run->f;
    n = ngx_smartflow_pii_scan(buf + ws, len, g->pii_mask, g->custom,
                               g->ncustom, f, NGX_SF_MAX_FINDINGS);

    /* findings never overlap: one at most holds the seam */
    for (i = 0; i < n; i++) {
        if (ws + f[i].start < ta && ws + f[i].end > ta) {
            break;
        }
    }

    if (i == n) {
        return NGX_OK;
    }

    start = ws + f[i].start;
    end = ws + f[i].end;

    act = ngx_http_smartflow_policy_action(g, f[i].rule, &type);

    if (act == NGX_SF_ACTION_OFF) {
        return NGX_OK;
    }

    ngx_http_smartflow_policy_decide(run, type, act, NULL);

    if (act != NGX_SF_ACTION_REDACT || run->block) {
        return NGX_OK;
    }

    value.data = buf + start;
    value.len = end - start;

    ph = ngx_http_smartflow_policy_placeholder(run, type, &value);
    if (ph == NULL) {
        return NGX_ERROR;
    }

    ngx_http_smartflow_policy_type_name(run, type, &word);

    /* the part it starts in: its bytes up to it, then the placeholder */
    for (k = prev->n - 1; k > 0 && off[k] > start; k--) {
        /* void */
    }

    a = prev->part[k];

    if (run->input) {
        for (i = k; i < prev->n; i++) {
            if (ngx_http_smartflow_policy_edited(run, prev->part[i])
                != NGX_OK)
            {
                return NGX_ERROR;
            }
        }

        if (ngx_http_smartflow_policy_edited(run, b) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    len = from[k] + start - off[k];

    p = ngx_pnalloc(run->pool, len + word.len + NGX_INT_T_LEN + 3);
    if (p == NULL) {
        return NGX_ERROR;
    }

    a->str.len = ngx_sprintf(ngx_cpymem(p, a->str.data, len), "[%V_%ui]",
                             &word, ph->n)
                 - p;
    a->str.data = p;
    a->str_plain = NULL;

    /* the parts after it, inside it: taken out, and its piece of b */
    for (k++; k < prev->n; k++) {
        prev->part[k]->str.len = 0;
        prev->part[k]->str_plain = NULL;
    }

    b->str.data += end - ta;
    b->str.len -= end - ta;
    b->str_plain = NULL;

    run->redacted = 1;

    return NGX_OK;
}


/*
 * An Anthropic document or search result: its title, context and
 * content, and the text its source holds ("text" data, or "content"
 * blocks); a file, a URL or base64 data is left as it is
 */
static ngx_int_t
ngx_http_smartflow_policy_document(ngx_http_smartflow_policy_run_t *run,
    ngx_smartflow_json_t *b, ngx_uint_t what)
{
    ngx_int_t              rc;
    ngx_smartflow_json_t  *source, *type, *j;

    rc = ngx_http_smartflow_policy_values(run, b, what, 1);

    if (rc != NGX_OK || run->block) {
        return rc;
    }

    source = ngx_smartflow_json_get(b, "source");
    type = ngx_smartflow_json_get(source, "type");

    if (ngx_http_smartflow_policy_is(type, "text")) {
        j = ngx_smartflow_json_get(source, "data");

    } else if (ngx_http_smartflow_policy_is(type, "content")) {
        j = ngx_smartflow_json_get(source, "content");

    } else {
        return NGX_OK;
    }

    return j ? ngx_http_smartflow_policy_values(run, j, what, 1) : NGX_OK;
}


/* member names whose values are structure, not text */
static ngx_uint_t
ngx_http_smartflow_policy_skip(ngx_str_t *key)
{
    static ngx_str_t  skip[] = {
        ngx_string("type"), ngx_string("id"), ngx_string("tool_call_id"),
        ngx_string("tool_use_id"), ngx_string("name"),
        ngx_string("image_url"), ngx_string("source"),
        ngx_string("cache_control"), ngx_string("signature"),
        ngx_string("input_audio"), ngx_string("file"),
        ngx_string("role"), ngx_null_string
    };

    ngx_uint_t  i;

    for (i = 0; skip[i].len; i++) {
        if (key->len == skip[i].len
            && ngx_strncmp(key->data, skip[i].data, key->len) == 0)
        {
            return 1;
        }
    }

    return 0;
}


static ngx_int_t
ngx_http_smartflow_policy_values(ngx_http_smartflow_policy_run_t *run,
    ngx_smartflow_json_t *j, ngx_uint_t what, ngx_uint_t depth)
{
    ngx_int_t              rc;
    ngx_smartflow_json_t  *c;

    if (j->type == NGX_SMARTFLOW_JSON_STRING) {
        return ngx_http_smartflow_policy_text(run, j, what);
    }

    if ((j->type != NGX_SMARTFLOW_JSON_ARRAY
         && j->type != NGX_SMARTFLOW_JSON_OBJECT)
        || depth >= NGX_SMARTFLOW_JSON_MAX_DEPTH)
    {
        return NGX_OK;
    }

    /*
     * the keys of a message's structure are skipped; inside a tool
     * call's arguments (read for Shield) every key is the caller's
     */
    for (c = j->child; c && !run->block; c = c->next) {
        if (j->type == NGX_SMARTFLOW_JSON_OBJECT
            && !(what & (NGX_SF_SCAN_SHIELD | NGX_SF_SCAN_ALL))
            && ngx_http_smartflow_policy_skip(&c->key))
        {
            continue;
        }

        if (j->type == NGX_SMARTFLOW_JSON_OBJECT && (what & NGX_SF_SCAN_ALL)
            && c->key.len && !run->input)
        {
            /* a tool call's arguments: its member names are the caller's */
            rc = ngx_http_smartflow_policy_key(run, c);
            if (rc != NGX_OK) {
                return rc;
            }
        }

        rc = ngx_http_smartflow_policy_values(run, c, what, depth + 1);
        if (rc != NGX_OK) {
            return rc;
        }
    }

    return NGX_OK;
}


/*
 * A member's name read as text, in a document of the request's own
 * (not spliced into the body: the document is written again)
 */
static ngx_int_t
ngx_http_smartflow_policy_key(ngx_http_smartflow_policy_run_t *run,
    ngx_smartflow_json_t *c)
{
    ngx_smartflow_json_t  k;

    ngx_memzero(&k, sizeof(ngx_smartflow_json_t));
    k.type = NGX_SMARTFLOW_JSON_STRING;
    k.str = c->key;

    if (ngx_http_smartflow_policy_text(run, &k, NGX_SF_SCAN_PII) != NGX_OK) {
        return NGX_ERROR;
    }

    if (k.str.data != c->key.data) {
        c->key = k.str;
        c->key_plain = NULL;
    }

    return NGX_OK;
}


/*
 * The tool call about to be read, for the approval queue: its name and
 * its whole arguments in one canonical form (the compact JSON of the
 * tree, or the string when it is no JSON), before any is redacted, so
 * that the same call is the same item whatever its spacing.
 */
static ngx_int_t
ngx_http_smartflow_policy_call(ngx_http_smartflow_policy_run_t *run,
    ngx_smartflow_json_t *name, ngx_smartflow_json_t *args)
{
    ngx_str_null(&run->tool);
    ngx_str_null(&run->call_args);

    if (!run->approve_on || run->ctx->pipeline_done) {
        return NGX_OK;
    }

    if (ngx_smartflow_json_is_string(name)) {
        run->tool = name->str;
    }

    if (args->type == NGX_SMARTFLOW_JSON_STRING) {
        run->call_args = args->str;
        return NGX_OK;
    }

    return ngx_smartflow_json_dump(run->r->pool, args, &run->call_args);
}


/*
 * An OpenAI tool call's arguments: a JSON document in a string.  Its
 * strings are read decoded, so that no escape ("\u0040", "\/") hides a
 * value, and a finding never takes in a quote of the document's own
 * syntax; when one is replaced the document is written again.  Text
 * that is no JSON document is read as it is.
 */
static ngx_int_t
ngx_http_smartflow_policy_arguments(ngx_http_smartflow_policy_run_t *run,
    ngx_smartflow_json_t *name, ngx_smartflow_json_t *args)
{
    ngx_int_t              rc;
    ngx_str_t              err, out;
    ngx_uint_t             redacted, input;
    ngx_smartflow_json_t  *doc;

    if (args == NULL
        || (!run->shield_on && run->g->pii_mask == 0 && run->g->ncustom == 0))
    {
        return NGX_OK;
    }

    if (args->type == NGX_SMARTFLOW_JSON_OBJECT
        || args->type == NGX_SMARTFLOW_JSON_ARRAY)
    {
        /* a document, not its text, as some servers take it */
        rc = ngx_http_smartflow_policy_call(run, name, args);

        if (rc == NGX_OK) {
            rc = ngx_http_smartflow_policy_values(run, args,
                                     NGX_SF_SCAN_PII | NGX_SF_SCAN_SHIELD, 0);
        }

        ngx_str_null(&run->tool);
        ngx_str_null(&run->call_args);

        return rc;
    }

    if (!ngx_smartflow_json_is_string(args) || args->str.len == 0) {
        return NGX_OK;
    }

    doc = ngx_smartflow_json_parse(run->r->pool, args->str.data,
                                   args->str.len, &err);

    if (doc && doc->type == NGX_SMARTFLOW_JSON_STRING) {
        doc = NULL;
    }

    if (run->shield_on) {
        rc = ngx_http_smartflow_policy_call(run, name, doc ? doc : args);

        if (rc != NGX_OK) {
            return NGX_ERROR;
        }

        if (doc) {
            rc = ngx_http_smartflow_policy_values(run, doc,
                                                  NGX_SF_SCAN_SHIELD, 0);

        } else {
            ngx_http_smartflow_policy_shield(run, args->str.data,
                                             args->str.len);
            rc = NGX_OK;
        }

        ngx_str_null(&run->tool);
        ngx_str_null(&run->call_args);

        if (rc != NGX_OK) {
            return NGX_ERROR;
        }
    }

    if (run->block) {
        return NGX_OK;
    }

    if (doc == NULL) {
        /* placeholders hold no quote or backslash: the string stays */
        return ngx_http_smartflow_policy_text(run, args, NGX_SF_SCAN_PII);
    }

    /* the document's strings are not the request's: not spliced */
    redacted = run->redacted;
    input = run->input;
    run->redacted = 0;
    run->input = 0;

    rc = ngx_http_smartflow_policy_values(run, doc,
                                          NGX_SF_SCAN_PII | NGX_SF_SCAN_ALL,
                                          0);

    run->input = input;

    if (rc != NGX_OK) {
        run->redacted |= redacted;
        return rc;
    }

    if (!run->redacted || run->block) {
        run->redacted |= redacted;
        return NGX_OK;
    }

    if (ngx_smartflow_json_dump(run->r->pool, doc, &out) != NGX_OK
        || ngx_http_smartflow_policy_edited(run, args) != NGX_OK)
    {
        return NGX_ERROR;
    }

    args->str = out;
    args->str_plain = NULL;

    return NGX_OK;
}


void
ngx_http_smartflow_policy_shield(ngx_http_smartflow_policy_run_t *run,
    u_char *p, size_t len)
{
    ngx_int_t               rc;
    ngx_str_t               args;
    ngx_uint_t              a, id;
    ngx_smartflow_shield_t  sh;

    ngx_smartflow_shield_check(p, len, &sh);

    if (sh.rule == 0) {
        return;
    }

    a = run->g->action[sh.rule];

    if (a == NGX_SF_ACTION_OFF) {
        return;
    }

    if (!sh.destructive) {
        a = NGX_SF_ACTION_FLAG;     /* risky only: a warning */
    }

    if (a == NGX_SF_ACTION_APPROVE && !run->ctx->pipeline_done) {
        if (run->approval_full) {
            /* the request waits for room already: nothing more to ask */
            run->decided[sh.rule] |= 1 << NGX_SF_ACTION_APPROVE;
            return;
        }

        /*
         * the approval queue: a call approved once passes once; outside
         * a tool call, the text found is all there is to approve
         */
        if (run->call_args.len) {
            args = run->call_args;

        } else {
            args.data = p;
            args.len = len;
        }

        rc = ngx_http_smartflow_policy_approval(run, sh.name, &args, &id);

        if (rc == NGX_SF_APPROVAL_DENIED) {
            ngx_http_smartflow_policy_decide(run, sh.rule, NGX_SF_ACTION_BLOCK,
                                             sh.name);
            return;
        }

        if (rc == NGX_SF_APPROVAL_APPROVED || rc == NGX_SF_APPROVAL_PENDING
            || rc == NGX_BUSY)
        {
            /*
             * the other calls are read on: all a request waits for is
             * held at once, and what it was approved is used only if it
             * goes on
             */
            run->decided[sh.rule] |= 1 << NGX_SF_ACTION_APPROVE;

            if (rc == NGX_SF_APPROVAL_APPROVED) {
                return;
            }

            if (run->approval == 0 && !run->approval_full) {
                run->held_type = sh.rule;
                run->held_detail = sh.name;
            }

            if (rc == NGX_BUSY) {
                run->approval_full = 1;

            } else if (run->approval == 0) {
                run->approval = id;
            }

            return;
        }
    }

    ngx_http_smartflow_policy_decide(run, sh.rule, a, sh.name);
}


/*
 * The action a group takes on a finding of a rule, and the finding's type
 * (the built-in rules', then the group's own patterns')
 */
static ngx_uint_t
ngx_http_smartflow_policy_action(ngx_http_smartflow_policy_group_t *g,
    ngx_uint_t rule, ngx_uint_t *type)
{
    if (rule >= NGX_SF_RULE_CUSTOM) {
        *type = NGX_SF_RULE_N + rule - NGX_SF_RULE_CUSTOM;
        return g->custom_action[rule - NGX_SF_RULE_CUSTOM];
    }

    *type = rule;

    return g->action[rule];
}


/* the injection score of a text: the request's highest, and a decision */
static void
ngx_http_smartflow_policy_inject(ngx_http_smartflow_policy_run_t *run,
    u_char *data, size_t len)
{
    ngx_smartflow_injection_t           inj;
    ngx_http_smartflow_policy_group_t  *g;

    g = run->g;

    if (g->action[NGX_SF_RULE_INJECTION] == NGX_SF_ACTION_OFF) {
        return;
    }

    ngx_smartflow_injection_score(data, len, &inj);

    if (inj.score > run->score) {
        run->score = inj.score;
    }

    if (inj.score >= g->threshold) {
        ngx_http_smartflow_policy_decide(run, NGX_SF_RULE_INJECTION,
                                    g->action[NGX_SF_RULE_INJECTION],
                                    inj.top);
    }
}


ngx_int_t
ngx_http_smartflow_policy_text(ngx_http_smartflow_policy_run_t *run,
    ngx_smartflow_json_t *j, ngx_uint_t what)
{
    ngx_uint_t                          i, n, a, redact, max, type;
    ngx_smartflow_finding_t            *f;
    ngx_http_smartflow_policy_group_t  *g;

    g = run->g;

    if (j->str.len == 0) {
        return NGX_OK;
    }

    if ((what & NGX_SF_SCAN_SHIELD) && run->shield_on) {
        ngx_http_smartflow_policy_shield(run, j->str.data, j->str.len);
    }

    if (what & NGX_SF_SCAN_INJ) {
        ngx_http_smartflow_policy_inject(run, j->str.data, j->str.len);
    }

    if (!(what & NGX_SF_SCAN_PII) || run->block
        || (g->pii_mask == 0 && g->ncustom == 0))
    {
        return NGX_OK;
    }

    f = run->f;
    max = NGX_SF_MAX_FINDINGS;

    for ( ;; ) {
        n = ngx_smartflow_pii_scan(j->str.data, j->str.len, g->pii_mask,
                                   g->custom, g->ncustom, f, max);
        if (n < max) {
            break;
        }

        /*
         * more findings than room: the text is scanned again with room
         * for eight times as many, at most one a byte (findings are
         * never empty and never overlap), so that all are decided and
         * replaced in one pass, and the work stays linear in the text
         */
        max = (max < j->str.len / 8) ? max * 8 : j->str.len + 1;

        f = ngx_palloc(run->pool, max * sizeof(ngx_smartflow_finding_t));
        if (f == NULL) {
            return NGX_ERROR;
        }
    }

    if (n == 0) {
        return NGX_OK;
    }

    redact = 0;

    for (i = 0; i < n; i++) {
        a = ngx_http_smartflow_policy_action(g, f[i].rule, &type);

        if (a == NGX_SF_ACTION_OFF) {
            continue;
        }

        ngx_http_smartflow_policy_decide(run, type, a, NULL);

        redact += (a == NGX_SF_ACTION_REDACT);
    }

    if (run->block || redact == 0) {
        return NGX_OK;
    }

    return ngx_http_smartflow_policy_redact(run, j, f, n);
}


/* the findings to redact in j, replaced by their placeholders */
static ngx_int_t
ngx_http_smartflow_policy_redact(ngx_http_smartflow_policy_run_t *run,
    ngx_smartflow_json_t *j, ngx_smartflow_finding_t *f, ngx_uint_t n)
{
    u_char                            *p, *s;
    size_t                             len;
    ngx_str_t                          word, value;
    ngx_uint_t                         i, type, a;
    ngx_http_smartflow_placeholder_t  *ph, *one[NGX_SF_MAX_FINDINGS], **idx;

    if (n <= NGX_SF_MAX_FINDINGS) {
        idx = one;

    } else {
        idx = ngx_palloc(run->pool,
                         n * sizeof(ngx_http_smartflow_placeholder_t *));
        if (idx == NULL) {
            return NGX_ERROR;
        }
    }

    len = j->str.len;

    for (i = 0; i < n; i++) {
        idx[i] = NULL;

        a = ngx_http_smartflow_policy_action(run->g, f[i].rule, &type);

        if (a != NGX_SF_ACTION_REDACT) {
            continue;
        }

        value.data = j->str.data + f[i].start;
        value.len = f[i].end - f[i].start;

        idx[i] = ngx_http_smartflow_policy_placeholder(run, type, &value);
        if (idx[i] == NULL) {
            return NGX_ERROR;
        }

        ngx_http_smartflow_policy_type_name(run, type, &word);
        len += word.len + NGX_INT_T_LEN + 3 - value.len;
    }

    p = ngx_pnalloc(run->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    s = p;
    len = 0;

    for (i = 0; i < n; i++) {
        ph = idx[i];

        if (ph == NULL) {
            continue;
        }

        p = ngx_cpymem(p, j->str.data + len, f[i].start - len);

        ngx_http_smartflow_policy_type_name(run, ph->type, &word);
        *p++ = '[';
        p = ngx_cpymem(p, word.data, word.len);
        p = ngx_sprintf(p, "_%ui]", ph->n);

        len = f[i].end;
    }

    p = ngx_cpymem(p, j->str.data + len, j->str.len - len);

    if (run->input && ngx_http_smartflow_policy_edited(run, j) != NGX_OK) {
        return NGX_ERROR;
    }

    j->str.data = s;
    j->str.len = p - s;
    j->str_plain = NULL;

    run->redacted = 1;

    return NGX_OK;
}


/*
 * A string of the request about to be changed: what it was, the first
 * time (a string is read once, all its findings replaced at once)
 */
static ngx_int_t
ngx_http_smartflow_policy_edited(ngx_http_smartflow_policy_run_t *run,
    ngx_smartflow_json_t *j)
{
    ngx_http_smartflow_policy_edit_t  *e;

    if (run->edits == NULL) {
        run->edits = ngx_array_create(run->r->pool, 4,
                                 sizeof(ngx_http_smartflow_policy_edit_t));
        if (run->edits == NULL) {
            return NGX_ERROR;
        }
    }

    /* one changed again at once (the seams): splice() takes it once */
    e = run->edits->elts;

    if (run->edits->nelts && e[run->edits->nelts - 1].j == j) {
        return NGX_OK;
    }

    e = ngx_array_push(run->edits);
    if (e == NULL) {
        return NGX_ERROR;
    }

    e->j = j;
    e->was = j->str;

    return NGX_OK;
}


/*
 * placeholders in order of the value's length, type and bytes: a total
 * order, so the tree stays balanced without hashing the value
 */
static ngx_int_t
ngx_http_smartflow_policy_seen_cmp(ngx_http_smartflow_placeholder_t *ph,
    ngx_rbtree_key_t key, ngx_uint_t type, ngx_str_t *value)
{
    if (key != ph->node.key) {
        return (key < ph->node.key) ? -1 : 1;
    }

    if (type != ph->type) {
        return (type < ph->type) ? -1 : 1;
    }

    return ngx_memn2cmp(value->data, ph->value.data, value->len,
                        ph->value.len);
}


static void
ngx_http_smartflow_policy_seen_insert(ngx_rbtree_node_t *temp,
    ngx_rbtree_node_t *node, ngx_rbtree_node_t *sentinel)
{
    ngx_rbtree_node_t                **p;
    ngx_http_smartflow_placeholder_t  *ph;

    ph = (ngx_http_smartflow_placeholder_t *) node;

    for ( ;; ) {

        p = (ngx_http_smartflow_policy_seen_cmp(
                 (ngx_http_smartflow_placeholder_t *) temp,
                 node->key, ph->type, &ph->value) < 0)
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


/*
 * The placeholder of a value of a type: the same value in this request,
 * the same placeholder; a new one is numbered after the type's others
 */
static ngx_http_smartflow_placeholder_t *
ngx_http_smartflow_policy_placeholder(ngx_http_smartflow_policy_run_t *run,
    ngx_uint_t type, ngx_str_t *value)
{
    ngx_int_t                          rc;
    ngx_rbtree_key_t                   key;
    ngx_rbtree_node_t                 *node, *sentinel;
    ngx_http_smartflow_placeholder_t  *ph;

    key = value->len;

    node = run->seen.root;
    sentinel = run->seen.sentinel;

    while (node != sentinel) {
        ph = (ngx_http_smartflow_placeholder_t *) node;

        rc = ngx_http_smartflow_policy_seen_cmp(ph, key, type, value);

        if (rc == 0) {
            return ph;
        }

        node = (rc < 0) ? node->left : node->right;
    }

    /* kept as long as the request: the answer's text is read with them */
    ph = ngx_palloc(run->r->pool, sizeof(ngx_http_smartflow_placeholder_t));
    if (ph == NULL) {
        return NULL;
    }

    /* the text it stood for, kept: the string is replaced */
    ph->value.data = ngx_pnalloc(run->r->pool, value->len);
    if (ph->value.data == NULL) {
        return NULL;
    }

    ngx_memcpy(ph->value.data, value->data, value->len);
    ph->value.len = value->len;
    ph->type = type;
    ph->n = ++run->count[type];
    ph->node.key = key;

    ngx_rbtree_insert(&run->seen, &ph->node);

    return ph;
}


/*
 * The body with each redacted string written in place of the one it was,
 * when that is exact.  The tree keeps the body's string values in the
 * body's order, so the n-th string value of the tree is the n-th string
 * value token of the body (a token followed by ":" is a member's name);
 * a changed string is put in place when its token is its very bytes (no
 * escape in it) and the body holds as many string values as the tree.
 * NGX_DECLINED: the request is to be written again whole.
 */
static ngx_int_t
ngx_http_smartflow_policy_splice(ngx_http_smartflow_policy_run_t *run,
    ngx_str_t *body)
{
    u_char                            *p, *q, *t, *b, *last, *np;
    u_char                            *at[NGX_SF_SPLICE_MAX];
    size_t                             len, k;
    ngx_str_t                         *name;
    ngx_uint_t                         i, j, n, nstr, o[NGX_SF_SPLICE_MAX];
    ngx_uint_t                         ord[NGX_SF_SPLICE_MAX];
    ngx_http_smartflow_policy_edit_t  *e;

    if (run->edits == NULL || run->edits->nelts > NGX_SF_SPLICE_MAX) {
        return NGX_DECLINED;
    }

    /* a pattern's placeholder could need an escape */
    name = run->g->custom_type;

    for (i = 0; i < run->g->ncustom; i++) {
        for (k = 0; k < name[i].len; k++) {
            if (name[i].data[k] < 0x20 || name[i].data[k] == '"'
                || name[i].data[k] == '\\')
            {
                return NGX_DECLINED;
            }
        }
    }

    e = run->edits->elts;

    /*
     * a string changed twice (by its own scan and at a seam) is put in
     * place once, with what it was the first time
     */
    for (i = 0, n = 0; i < run->edits->nelts; i++) {
        for (j = 0; j < n && e[j].j != e[i].j; j++) { /* void */ }

        if (j == n) {
            e[n++] = e[i];
        }
    }

    run->edits->nelts = n;

    /* each changed string's place among the tree's string values */
    for (i = 0; i < n; i++) {
        ord[i] = NGX_MAX_UINT32_VALUE;
        at[i] = NULL;
    }

    nstr = 0;
    ngx_http_smartflow_policy_ordinals(run->ctx->json, e, n, ord, &nstr);

    for (i = 0; i < n; i++) {
        if (ord[i] == NGX_MAX_UINT32_VALUE) {
            return NGX_DECLINED;        /* not a string of the request */
        }
    }

    /* the body's string values, in order */
    p = body->data;
    last = body->data + body->len;
    j = 0;

    while ((q = memchr(p, '"', last - p)) != NULL) {

        /* the closing quote: one not escaped */
        for (t = q + 1; /* void */; t++) {
            t = memchr(t, '"', last - t);
            if (t == NULL) {
                return NGX_DECLINED;
            }

            for (b = t; b[-1] == '\\'; b--) { /* void */ }

            if ((t - b) % 2 == 0) {
                break;
            }
        }

        for (p = t + 1; p < last; p++) {
            if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') {
                break;
            }
        }

        if (p < last && *p == ':') {
            continue;                   /* a member's name */
        }

        for (i = 0; i < n; i++) {
            if (ord[i] != j) {
                continue;
            }

            if ((size_t) (t - q - 1) != e[i].was.len
                || ngx_memcmp(q + 1, e[i].was.data, e[i].was.len) != 0)
            {
                return NGX_DECLINED;    /* escaped: not its very bytes */
            }

            at[i] = q + 1;
        }

        j++;
    }

    if (j != nstr) {
        return NGX_DECLINED;
    }

    len = body->len;

    for (i = 0; i < n; i++) {
        len += e[i].j->str.len - e[i].was.len;

        /* in the body's order */
        for (j = i; j > 0 && at[o[j - 1]] > at[i]; j--) {
            o[j] = o[j - 1];
        }

        o[j] = i;
    }

    np = ngx_pnalloc(run->r->pool, len);
    if (np == NULL) {
        return NGX_ERROR;
    }

    p = np;
    t = body->data;

    for (i = 0, k = 0; i < n; i++) {
        j = o[i];

        p = ngx_cpymem(p, t + k, at[j] - t - k);
        p = ngx_cpymem(p, e[j].j->str.data, e[j].j->str.len);

        k = at[j] - t + e[j].was.len;
    }

    p = ngx_cpymem(p, t + k, body->len - k);

    body->data = np;
    body->len = p - np;

    return NGX_OK;
}


/* the tree's string values numbered in the tree's (the body's) order */
static void
ngx_http_smartflow_policy_ordinals(ngx_smartflow_json_t *j,
    ngx_http_smartflow_policy_edit_t *e, ngx_uint_t n, ngx_uint_t *ord,
    ngx_uint_t *nstr)
{
    ngx_uint_t             i;
    ngx_smartflow_json_t  *c;

    if (j == NULL) {
        return;
    }

    if (j->type == NGX_SMARTFLOW_JSON_STRING) {
        for (i = 0; i < n; i++) {
            if (e[i].j == j) {
                ord[i] = *nstr;
            }
        }

        (*nstr)++;
        return;
    }

    if (j->type == NGX_SMARTFLOW_JSON_OBJECT
        || j->type == NGX_SMARTFLOW_JSON_ARRAY)
    {
        for (c = j->child; c; c = c->next) {
            ngx_http_smartflow_policy_ordinals(c, e, n, ord, nstr);
        }
    }
}


static ngx_str_t *
ngx_http_smartflow_policy_type_name(ngx_http_smartflow_policy_run_t *run,
    ngx_uint_t type, ngx_str_t *buf)
{
    const char  *name;

    if (type >= NGX_SF_RULE_N) {
        *buf = run->g->custom_type[type - NGX_SF_RULE_N];
        return buf;
    }

    if (type < NGX_SF_PII_N) {
        *buf = ngx_http_smartflow_policy_types[type];
        return buf;
    }

    name = ngx_smartflow_policy_rule_name(type);
    buf->data = (u_char *) name;
    buf->len = ngx_strlen(name);

    return buf;
}


static void
ngx_http_smartflow_policy_decide(ngx_http_smartflow_policy_run_t *run,
    ngx_uint_t type, ngx_uint_t action, const char *detail)
{
    run->decided[type] |= 1 << action;

    if ((action == NGX_SF_ACTION_BLOCK || action == NGX_SF_ACTION_APPROVE)
        && !run->block)
    {
        run->block = action;
        run->block_type = type;
        run->block_detail = detail;
    }
}


/* ctx->policy_decisions: "rule:action" joined by ',' */
ngx_int_t
ngx_http_smartflow_policy_decisions(ngx_http_smartflow_policy_run_t *run)
{
    u_char      *p;
    size_t       len;
    ngx_str_t    name;
    ngx_uint_t   t, a, ntypes;

    ntypes = NGX_SF_RULE_N + run->g->ncustom;
    len = 0;

    for (t = 0; t < ntypes; t++) {
        for (a = NGX_SF_ACTION_FLAG; a <= NGX_SF_ACTION_APPROVE; a++) {
            if (run->decided[t] & (1 << a)) {
                len += 32 + (t >= NGX_SF_RULE_N
                             ? run->g->custom[t - NGX_SF_RULE_N].name.len
                             : 0);
            }
        }
    }

    if (len == 0) {
        return NGX_OK;
    }

    p = ngx_pnalloc(run->r->pool, len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    run->ctx->policy_decisions.data = p;

    for (t = 0; t < ntypes; t++) {
        ngx_http_smartflow_policy_rule(run, t, &name);

        for (a = NGX_SF_ACTION_FLAG; a <= NGX_SF_ACTION_APPROVE; a++) {
            if (!(run->decided[t] & (1 << a))) {
                continue;
            }

            if (p != run->ctx->policy_decisions.data) {
                *p++ = ',';
            }

            p = ngx_sprintf(p, "%V:%s", &name,
                            (t >= NGX_SF_RULE_SQL && t <= NGX_SF_RULE_INFRA
                             && a == NGX_SF_ACTION_FLAG)
                            ? "warn" : ngx_http_smartflow_policy_actions[a]);
        }
    }

    run->ctx->policy_decisions.len = p - run->ctx->policy_decisions.data;

    return NGX_OK;
}


/* the rule's name as the configuration says it */
void
ngx_http_smartflow_policy_rule(ngx_http_smartflow_policy_run_t *run,
    ngx_uint_t type, ngx_str_t *buf)
{
    const char  *name;

    if (type >= NGX_SF_RULE_N) {
        *buf = run->g->custom[type - NGX_SF_RULE_N].name;
        return;
    }

    name = ngx_smartflow_policy_rule_name(type);
    buf->data = (u_char *) name;
    buf->len = ngx_strlen(name);
}
