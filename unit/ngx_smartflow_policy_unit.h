/*
 * What the policy detectors' unit programs share: TAP lines, a count of
 * the texts on which two passes disagree with the first of them
 * described, and a small random number generator.  Each program includes
 * it once, after the detector source it tests.
 */

#ifndef _NGX_SMARTFLOW_POLICY_UNIT_H_INCLUDED_
#define _NGX_SMARTFLOW_POLICY_UNIT_H_INCLUDED_


#include <stdio.h>


static ngx_uint_t  unit_n;
static ngx_uint_t  unit_failed;
static ngx_uint_t  unit_texts;          /* since the last report */
static ngx_uint_t  unit_bad;
static char        unit_first[256];     /* the first disagreement */
static uint32_t    unit_seed;


static void
unit_ok(int ok, const char *what)
{
    printf("%sok %lu - %s\n", ok ? "" : "not ", (unsigned long) ++unit_n,
           what);

    if (!ok) {
        unit_failed++;
    }
}


/* one TAP line for the texts since the last report */
static void
unit_report(const char *what)
{
    char  line[512];

    if (unit_bad) {
        snprintf(line, sizeof(line), "%s: %lu of %lu texts differ, first %s",
                 what, (unsigned long) unit_bad, (unsigned long) unit_texts,
                 unit_first);

    } else {
        snprintf(line, sizeof(line), "%s: %lu texts agree", what,
                 (unsigned long) unit_texts);
    }

    unit_ok(unit_bad == 0, line);

    unit_texts = 0;
    unit_bad = 0;
}


static uint32_t
unit_rand(void)
{
    unit_seed = unit_seed * 1103515245 + 12345;
    return unit_seed >> 8;
}


#endif /* _NGX_SMARTFLOW_POLICY_UNIT_H_INCLUDED_ */
