/*
 * The policy module's detectors: PII and secrets with their validators,
 * prompt-injection scoring and Shield's classification of destructive
 * commands.  They are pure functions over bytes (no request, no pool), so
 * the same code runs inside nginx, in the quality harness and under the
 * fuzzer.  Patterns are compiled once per process by ngx_smartflow_
 * policy_detect_init(); a worker is single-threaded and reuses one match
 * block.
 */

#ifndef _NGX_SMARTFLOW_POLICY_H_INCLUDED_
#define _NGX_SMARTFLOW_POLICY_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>


/* the rules a policy group sets an action for */
#define NGX_SF_RULE_EMAIL       0
#define NGX_SF_RULE_PHONE       1
#define NGX_SF_RULE_CARD        2
#define NGX_SF_RULE_IBAN        3
#define NGX_SF_RULE_SSN         4
#define NGX_SF_RULE_IP          5
#define NGX_SF_RULE_SECRET      6
#define NGX_SF_RULE_INJECTION   7
#define NGX_SF_RULE_SQL         8       /* Shield categories */
#define NGX_SF_RULE_SHELL       9
#define NGX_SF_RULE_GIT         10
#define NGX_SF_RULE_INFRA       11
#define NGX_SF_RULE_N           12
#define NGX_SF_RULE_CUSTOM      64      /* custom rule i is 64 + i */

#define NGX_SF_PII_N            7       /* the first seven scan text */

/* actions; for Shield rules the four tiers */
#define NGX_SF_ACTION_UNSET     0
#define NGX_SF_ACTION_OFF       1       /* Shield: allow */
#define NGX_SF_ACTION_FLAG      2       /* Shield: warn */
#define NGX_SF_ACTION_REDACT    3
#define NGX_SF_ACTION_BLOCK     4
#define NGX_SF_ACTION_APPROVE   5       /* Shield: require approval */


typedef struct {
    ngx_uint_t          rule;
    size_t              start;
    size_t              end;
} ngx_smartflow_finding_t;


typedef struct {
    ngx_str_t           name;
    pcre2_code         *re;
} ngx_smartflow_custom_t;


/* injection: the score of a text and the category that weighed most */
typedef struct {
    ngx_uint_t          score;          /* 0 - 100 */
    const char         *top;            /* the strongest signal's name */
} ngx_smartflow_injection_t;


/* Shield: what a command would do */
typedef struct {
    ngx_uint_t          rule;           /* NGX_SF_RULE_SQL ... or 0 */
    const char         *name;           /* "sql.drop_table" ... */
    ngx_uint_t          destructive;    /* 0: risky only (warn at most) */
} ngx_smartflow_shield_t;


/*
 * A JIT-compiled pattern is matched through the JIT's fast path; one the
 * JIT could not take, or an anchored match, through the interpreter.
 */
static ngx_inline int
ngx_smartflow_re_match(pcre2_code *re, u_char *p, size_t len, size_t off,
    uint32_t opts, pcre2_match_data *md)
{
    int  rc;

    if (!(opts & PCRE2_ANCHORED)) {
        rc = pcre2_jit_match(re, p, len, off, opts, md, NULL);

        if (rc != PCRE2_ERROR_JIT_BADOPTION) {
            return rc;
        }
    }

    return pcre2_match(re, p, len, off, opts, md, NULL);
}


ngx_int_t ngx_smartflow_policy_detect_init(void);
const char *ngx_smartflow_policy_rule_name(ngx_uint_t rule);

/*
 * Findings of the PII rules in mask (bit per rule) and of the custom
 * rules, not overlapping, in text order; returns how many, at most max.
 */
ngx_uint_t ngx_smartflow_pii_scan(u_char *p, size_t len, ngx_uint_t mask,
    ngx_smartflow_custom_t *custom, ngx_uint_t ncustom,
    ngx_smartflow_finding_t *f, ngx_uint_t max);

ngx_uint_t ngx_smartflow_luhn(u_char *digits, size_t n);
ngx_uint_t ngx_smartflow_card_valid(u_char *p, size_t len);
ngx_uint_t ngx_smartflow_iban_valid(u_char *p, size_t len);
ngx_uint_t ngx_smartflow_ssn_valid(u_char *p, size_t len);
ngx_uint_t ngx_smartflow_phone_valid(u_char *p, size_t len);

void ngx_smartflow_injection_score(u_char *p, size_t len,
    ngx_smartflow_injection_t *res);

void ngx_smartflow_shield_check(u_char *p, size_t len,
    ngx_smartflow_shield_t *res);


#endif /* _NGX_SMARTFLOW_POLICY_H_INCLUDED_ */
