/*
 * Drives the policy module's detectors outside nginx, on the very source
 * files the module is built from, for the quality measurement
 * (t/policy/measure.py) and the scan-cost figure.  Reads records from
 * stdin, each "MODE LENGTH\n" and LENGTH bytes, and answers one line per
 * record:
 *
 *   pii     rule:start:end ...      findings of every PII detector
 *   inj     score top               injection score, strongest signal
 *   shield  category name tier      Shield's verdict, or "-"
 *   card | iban | ssn | phone  1|0  the validator alone, on the whole text
 *   cost    ns_per_kb               the default group's scan of the text
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ngx_smartflow_policy.h"


static void
harness_pii(u_char *p, size_t len)
{
    ngx_uint_t               i, n;
    ngx_smartflow_finding_t  f[512];

    n = ngx_smartflow_pii_scan(p, len, (1 << NGX_SF_PII_N) - 1, NULL, 0, f,
                               512);

    for (i = 0; i < n; i++) {
        printf("%s%s:%zu:%zu", i ? " " : "",
               ngx_smartflow_policy_rule_name(f[i].rule), f[i].start,
               f[i].end);
    }

    printf("\n");
}


static void
harness_cost(u_char *p, size_t len, ngx_uint_t parts)
{
    double                     ns;
    ngx_uint_t                 i, rounds;
    struct timespec            a, b;
    ngx_smartflow_finding_t    f[512];
    ngx_smartflow_injection_t  inj;

    rounds = 2000;

    clock_gettime(CLOCK_MONOTONIC, &a);

    for (i = 0; i < rounds; i++) {
        if (parts & 1) {
            (void) ngx_smartflow_pii_scan(p, len, (1 << NGX_SF_PII_N) - 1,
                                          NULL, 0, f, 512);
        }

        if (parts & 2) {
            ngx_smartflow_injection_score(p, len, &inj);
        }
    }

    clock_gettime(CLOCK_MONOTONIC, &b);

    ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);

    printf("%.0f\n", ns / rounds / ((double) len / 1024));
}


int
main(void)
{
    char                       mode[16];
    u_char                    *p;
    size_t                     len;
    ngx_smartflow_shield_t     sh;
    ngx_smartflow_injection_t  inj;

    if (ngx_smartflow_policy_detect_init() != NGX_OK) {
        fprintf(stderr, "the detectors' patterns did not compile\n");
        return 1;
    }

    while (scanf("%15s %zu", mode, &len) == 2) {
        if (getchar() != '\n') {
            return 1;
        }

        p = malloc(len + 1);
        if (p == NULL || fread(p, 1, len, stdin) != len) {
            return 1;
        }

        if (strcmp(mode, "pii") == 0) {
            harness_pii(p, len);

        } else if (strcmp(mode, "inj") == 0) {
            ngx_smartflow_injection_score(p, len, &inj);
            printf("%lu %s\n", (unsigned long) inj.score,
                   inj.top ? inj.top : "-");

        } else if (strcmp(mode, "shield") == 0) {
            ngx_smartflow_shield_check(p, len, &sh);

            if (sh.rule) {
                printf("%s %s %s\n", ngx_smartflow_policy_rule_name(sh.rule),
                       sh.name, sh.destructive ? "destructive" : "risky");
            } else {
                printf("-\n");
            }

        } else if (strcmp(mode, "card") == 0) {
            printf("%lu\n", (unsigned long) ngx_smartflow_card_valid(p, len));

        } else if (strcmp(mode, "iban") == 0) {
            printf("%lu\n", (unsigned long) ngx_smartflow_iban_valid(p, len));

        } else if (strcmp(mode, "ssn") == 0) {
            printf("%lu\n", (unsigned long) ngx_smartflow_ssn_valid(p, len));

        } else if (strcmp(mode, "phone") == 0) {
            printf("%lu\n",
                   (unsigned long) ngx_smartflow_phone_valid(p, len));

        } else if (strcmp(mode, "cost") == 0) {
            harness_cost(p, len, 3);

        } else if (strcmp(mode, "costpii") == 0) {
            harness_cost(p, len, 1);

        } else if (strcmp(mode, "costinj") == 0) {
            harness_cost(p, len, 2);

        } else {
            return 1;
        }

        fflush(stdout);
        free(p);
    }

    return 0;
}
