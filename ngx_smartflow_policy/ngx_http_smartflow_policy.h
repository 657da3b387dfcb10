/*
 * The policy module's configuration, shared by its source files: policy
 * groups (smartflow_policy_group, with inheritance resolved when a group
 * is read) and what a location uses.
 */

#ifndef _NGX_HTTP_SMARTFLOW_POLICY_H_INCLUDED_
#define _NGX_HTTP_SMARTFLOW_POLICY_H_INCLUDED_


#include "ngx_http_smartflow_proxy.h"
#include "ngx_smartflow_policy.h"


#define NGX_SF_POLICY_MAX_CUSTOM  32
#define NGX_SF_POLICY_THRESHOLD   35


typedef struct {
    ngx_str_t                   name;
    ngx_str_t                   parent;
    ngx_uint_t                  action[NGX_SF_RULE_N];
    ngx_uint_t                  threshold;      /* injection, 1 - 100 */
    ngx_smartflow_custom_t      custom[NGX_SF_POLICY_MAX_CUSTOM];
    ngx_uint_t                  custom_action[NGX_SF_POLICY_MAX_CUSTOM];
    ngx_str_t                   custom_type[NGX_SF_POLICY_MAX_CUSTOM];
    ngx_uint_t                  ncustom;
    ngx_array_t                *allow;          /* ngx_str_t, lower-case */
    ngx_array_t                *deny;
    ngx_uint_t                  pii_mask;       /* PII rules not off */
    ngx_flag_t                  output;         /* answers scanned too */
} ngx_http_smartflow_policy_group_t;


typedef struct {
    ngx_array_t                 groups;         /* group_t * */
    ngx_shm_zone_t             *approvals;      /* Shield's approval queue */
    time_t                      approval_pending;   /* how long items wait */
    time_t                      approval_approved;  /* an approval's life */
} ngx_http_smartflow_policy_main_conf_t;


typedef struct {
    ngx_array_t                *models;         /* ngx_str_t, lower-case */
    ngx_str_t                   group_name;
    ngx_http_smartflow_policy_group_t  *group;  /* NULL: no guardrails */
    ngx_flag_t                  off;
} ngx_http_smartflow_policy_loc_conf_t;


#define NGX_SF_OUT_BLOCKS   8
/* a streamed call's key: its choice's index times this, plus its own */
#define NGX_SF_OUT_CALLS    1024
#define NGX_SF_OUT_HOLD     256
/* past this, a block's held text goes out even inside an open finding */
#define NGX_SF_OUT_HOLD_MAX 16384

#define NGX_SF_SCAN_PII     1
#define NGX_SF_SCAN_INJ     2
#define NGX_SF_SCAN_SHIELD  4
#define NGX_SF_SCAN_ALL     8   /* every member's value, none skipped */

#define NGX_SF_MAX_FINDINGS 128
#define NGX_SF_SPLICE_MAX   16
/* the bytes each side of the seam between two text parts */
#define NGX_SF_SEAM         64
#define NGX_SF_NTYPES       (NGX_SF_RULE_N + NGX_SF_POLICY_MAX_CUSTOM)


/* a value redacted and its placeholder, in a tree of the request's */
typedef struct {
    ngx_rbtree_node_t                   node;
    ngx_uint_t                          type;
    ngx_uint_t                          n;
    ngx_str_t                           value;
} ngx_http_smartflow_placeholder_t;


/* a string of the request that a redaction changed: what it was */
typedef struct {
    ngx_smartflow_json_t               *j;
    ngx_str_t                           was;
} ngx_http_smartflow_policy_edit_t;


/* a call of the request in the approval queue: approved or pending */
typedef struct {
    u_char                              hash[32];
    ngx_uint_t                          id;
    ngx_uint_t                          state;
    ngx_uint_t                          slot;
} ngx_http_smartflow_approval_call_t;


/* a tool call of the answer being streamed: its arguments, held whole */
typedef struct {
    ngx_uint_t                          index;
    ngx_str_t                           args;
    size_t                              size;   /* args' room */
} ngx_http_smartflow_policy_call_t;


typedef struct {
    ngx_http_request_t                 *r;
    ngx_http_smartflow_ctx_t           *ctx;
    ngx_http_smartflow_policy_group_t  *g;
    ngx_rbtree_t                        seen;   /* placeholder_t */
    ngx_rbtree_node_t                   seen_sentinel;
    ngx_uint_t                          count[NGX_SF_NTYPES];
    ngx_uint_t                          decided[NGX_SF_NTYPES];
    ngx_uint_t                          block;  /* action that refuses */
    ngx_uint_t                          block_type;
    const char                         *block_detail;
    ngx_uint_t                          score;
    ngx_uint_t                          redacted;
    ngx_uint_t                          shield_on;
    ngx_uint_t                          approve_on; /* a queue to hold in */
    ngx_smartflow_finding_t            *f;      /* a scan's, scratch */
    ngx_pool_t                         *pool;   /* a stream event's, or
                                                   r->pool */

    /* the request's strings redacted, to write the body again */
    ngx_array_t                        *edits;  /* policy_edit_t */
    ngx_uint_t                          input;

    /* the answer, as a stream: text held back per block, tool calls */
    ngx_str_t                           pending[NGX_SF_OUT_BLOCKS];
    u_char                             *pending_end[NGX_SF_OUT_BLOCKS];
    ngx_array_t                        *calls;  /* policy_call_t */
    ngx_uint_t                          ndecided;
    ngx_uint_t                          approval;   /* its id, or 0 */
    ngx_uint_t                          approval_full;  /* no room */
    ngx_uint_t                          held_type;  /* the first held */
    const char                         *held_detail;
    ngx_array_t                        *approvals;  /* approval_call_t */
    void                               *used;   /* the items used up */
    ngx_uint_t                          nused;

    /* the tool call being read, for Shield's approval queue */
    ngx_str_t                           tool;       /* its name */
    ngx_str_t                           call_args;  /* canonical */

    /* the digest of key, tool and arguments, for the args it was of */
    ngx_str_t                           hashed;
    u_char                              call_hash[32];
} ngx_http_smartflow_policy_run_t;


ngx_int_t ngx_http_smartflow_policy_stage(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx);
ngx_int_t ngx_http_smartflow_policy_text(ngx_http_smartflow_policy_run_t *run,
    ngx_smartflow_json_t *j, ngx_uint_t what);
void ngx_http_smartflow_policy_shield(ngx_http_smartflow_policy_run_t *run,
    u_char *p, size_t len);
ngx_int_t ngx_http_smartflow_policy_decisions(
    ngx_http_smartflow_policy_run_t *run);
void ngx_http_smartflow_policy_rule(ngx_http_smartflow_policy_run_t *run,
    ngx_uint_t type, ngx_str_t *buf);
ngx_http_smartflow_policy_run_t *ngx_http_smartflow_policy_run(
    ngx_http_request_t *r);
ngx_int_t ngx_http_smartflow_policy_output(ngx_http_request_t *r,
    ngx_http_smartflow_ctx_t *ctx, ngx_smartflow_json_t *answer,
    ngx_str_t *event, ngx_array_t *out);
ngx_http_smartflow_policy_group_t *ngx_http_smartflow_policy_find(
    ngx_http_smartflow_policy_main_conf_t *pmcf, ngx_str_t *name);
ngx_uint_t ngx_http_smartflow_policy_model_in(ngx_array_t *globs,
    ngx_str_t *model);

char *ngx_http_smartflow_policy_group_block(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
char *ngx_http_smartflow_policy_approvals(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_smartflow_policy_approval(
    ngx_http_smartflow_policy_run_t *run, const char *rule, ngx_str_t *args,
    ngx_uint_t *id);
ngx_int_t ngx_http_smartflow_policy_approvals_use(
    ngx_http_smartflow_policy_run_t *run);
void ngx_http_smartflow_policy_approvals_back(
    ngx_http_smartflow_policy_run_t *run);
ngx_int_t ngx_http_smartflow_policy_admin_handler(ngx_http_request_t *r);

#define NGX_SF_APPROVAL_PENDING   1
#define NGX_SF_APPROVAL_APPROVED  2
#define NGX_SF_APPROVAL_DENIED    3


extern ngx_module_t  ngx_http_smartflow_policy_module;


#endif /* _NGX_HTTP_SMARTFLOW_POLICY_H_INCLUDED_ */
