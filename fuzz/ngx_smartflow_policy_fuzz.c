/*
 * libFuzzer target for the policy scanners: PII and secret findings must
 * lie inside the text, in order and without overlap, each accepted by
 * its validator where it has one; the injection score stays in 0..100;
 * Shield answers a known category.  The first byte picks a custom rule
 * set, so the custom-pattern path is fuzzed too.  Built outside nginx
 * over the module's own detector sources.
 */

#include <stdio.h>
#include <stdlib.h>

#include "ngx_smartflow_policy.h"


#define FUZZ_MAX  256


static ngx_smartflow_custom_t  fuzz_custom[1];
static ngx_uint_t              fuzz_ready;


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                        err;
    u_char                    *p;
    ngx_uint_t                 i, n, ncustom;
    PCRE2_SIZE                 off;
    ngx_smartflow_shield_t     sh;
    ngx_smartflow_finding_t    f[FUZZ_MAX];
    ngx_smartflow_injection_t  inj;

    if (!fuzz_ready) {
        if (ngx_smartflow_policy_detect_init() != NGX_OK) {
            abort();
        }

        fuzz_custom[0].re = pcre2_compile((PCRE2_SPTR) "TICKET-[0-9]{3,}",
                                          PCRE2_ZERO_TERMINATED, 0, &err,
                                          &off, NULL);
        (void) pcre2_jit_compile(fuzz_custom[0].re, PCRE2_JIT_COMPLETE);
        fuzz_ready = 1;
    }

    if (size == 0) {
        return 0;
    }

    ncustom = data[0] & 1;

    /* an exact copy: reads past the end are the sanitizer's to find */
    p = malloc(size);
    if (p == NULL) {
        return 0;
    }

    memcpy(p, data, size);

    n = ngx_smartflow_pii_scan(p, size, (1 << NGX_SF_PII_N) - 1, fuzz_custom,
                               ncustom, f, FUZZ_MAX);

    for (i = 0; i < n; i++) {
        if (f[i].start >= f[i].end || f[i].end > size
            || (i && f[i].start < f[i - 1].end))
        {
            abort();
        }

        if ((f[i].rule == NGX_SF_RULE_CARD
             && !ngx_smartflow_card_valid(p + f[i].start,
                                          f[i].end - f[i].start))
            || (f[i].rule == NGX_SF_RULE_IBAN
                && !ngx_smartflow_iban_valid(p + f[i].start,
                                             f[i].end - f[i].start))
            || (f[i].rule == NGX_SF_RULE_SSN
                && !ngx_smartflow_ssn_valid(p + f[i].start,
                                            f[i].end - f[i].start)))
        {
            abort();
        }

        if (f[i].rule >= NGX_SF_RULE_CUSTOM + ncustom
            || (f[i].rule < NGX_SF_RULE_CUSTOM && f[i].rule >= NGX_SF_PII_N))
        {
            abort();
        }
    }

    ngx_smartflow_injection_score(p, size, &inj);

    if (inj.score > 100 || (inj.score && inj.top == NULL)) {
        abort();
    }

    ngx_smartflow_shield_check(p, size, &sh);

    if (sh.rule != 0 && (sh.rule < NGX_SF_RULE_SQL
                         || sh.rule > NGX_SF_RULE_INFRA || sh.name == NULL))
    {
        abort();
    }

    free(p);

    return 0;
}
