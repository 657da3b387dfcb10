/*
 * The PII scan's skip over prose, 64 bytes a step and then 16: the
 * windows where the detectors run must be the same with the skip as
 * without it, where every word goes through the byte-wise pass.  Texts
 * of every length around the chunks' borders with a number, an address,
 * a capital, a long word or a colon at each byte, random words, random
 * bytes, and the PII corpora (the .jsonl files of t/policy/corpus, the arguments),
 * each text in an allocation of its own size under AddressSanitizer.
 *
 * The source file is included, so its static functions are reachable.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NGX_SMARTFLOW_UNIT  1

#include "ngx_smartflow_policy_pii.c"
#include "ngx_smartflow_policy_unit.h"


static void
unit_same(const u_char *text, size_t len)
{
    u_char                  *p;
    ngx_uint_t               a, b, i;
    ngx_smartflow_window_t   wa[NGX_SF_MAX_WINDOWS], wb[NGX_SF_MAX_WINDOWS];

    p = malloc(len ? len : 1);
    if (p == NULL) {
        abort();
    }

    memcpy(p, text, len);

    ngx_smartflow_prose_on = 1;
    a = ngx_smartflow_windows(p, len, wa, NGX_SF_MAX_WINDOWS);
    ngx_smartflow_prose_on = 0;
    b = ngx_smartflow_windows(p, len, wb, NGX_SF_MAX_WINDOWS);
    ngx_smartflow_prose_on = 1;

    unit_texts++;

    for (i = 0; a == b && i < a; i++) {
        if (wa[i].from != wb[i].from || wa[i].to != wb[i].to
            || wa[i].digits != wb[i].digits || wa[i].dots != wb[i].dots
            || wa[i].upper != wb[i].upper || wa[i].colons != wb[i].colons
            || wa[i].token != wb[i].token)
        {
            break;
        }
    }

    if ((a != b || i < a) && unit_bad++ == 0) {
        snprintf(unit_first, sizeof(unit_first),
                 "len %zu: %lu windows with the skip, %lu without, "
                 "first differing %lu: \"%.60s\"", len, (unsigned long) a,
                 (unsigned long) b, (unsigned long) i, (char *) text);
    }

    free(p);
}


int
main(int argc, char **argv)
{
    u_char      *buf, *line;
    size_t       len, i, at, n, clen;
    FILE        *f;
    ngx_uint_t   k, r;
    int          a;

    static const char  *inserts[] = {
        "7", "42", "A", "USA", "I", "x@y.io", "a:b:c", "+1", "(415)",
        "internationalization", "DE89", "Ab", ".", ",", "  ", "\n", "\xc3\xa9"
    };

    static const char  *words[] = {
        "the", "quarterly", "report", "covers", "revenue,", "Our", "and",
        "plans", "for", "teams.", "a", "I", "call", "+1", "415", "555-2671",
        "finance@example.com", "DE89", "3704", "0044", "0532", "0130", "00",
        "4111", "1111", "SSN", "078-05-1120", "fe80::1", "10.0.0.1",
        "eyJhbGciOiJIUzI1NiJ9", "Mixed", "CAPS", "x", "It", "Is",
        "characteristically", ",", ".", "  "
    };

    unit_seed = 4321;

    if (ngx_smartflow_policy_detect_init() != NGX_OK) {
        printf("not ok 1 - the detectors start\n1..1\n");
        return 1;
    }

    buf = malloc(8192);
    if (buf == NULL) {
        abort();
    }

    /* prose with one insert at every byte, lengths to 260 */
    for (len = 0; len <= 260; len++) {
        for (at = 0; at < len; at += (len > 150 ? 3 : 1)) {
            for (k = 0; k < sizeof(inserts) / sizeof(inserts[0]); k++) {
                for (i = 0; i < len; i++) {
                    buf[i] = "word, more words. "[i % 18];
                }

                n = strlen(inserts[k]);
                memcpy(buf + at, inserts[k], at + n <= len ? n : len - at);

                unit_same(buf, len);
            }
        }
    }

    unit_report("prose with an insert at every byte, lengths 0 to 260");

    /* long words and runs of letters ending at every byte */
    for (len = 0; len <= 200; len++) {
        for (n = 10; n <= 20; n++) {
            for (at = 0; at + n <= len; at += 1) {
                memset(buf, ' ', len);
                memset(buf + at, "abcdefgh"[n % 8], n);
                unit_same(buf, len);
            }
        }
    }

    unit_report("words of 10 to 20 letters at every offset");

    /* words at random */
    for (r = 0; r < 20000; r++) {
        len = 0;
        n = unit_rand() % 900;

        while (len < n) {
            const char  *w;

            w = words[unit_rand() % (sizeof(words) / sizeof(words[0]))];

            for (i = 0; w[i] && len < n; i++) {
                buf[len++] = (u_char) w[i];
            }

            if (len < n) {
                buf[len++] = (unit_rand() % 7) ? ' ' : ',';
            }
        }

        unit_same(buf, len);
    }

    unit_report("words at random, lengths 0 to 900");

    for (r = 0; r < 5000; r++) {
        len = unit_rand() % 400;

        for (i = 0; i < len; i++) {
            buf[i] = (u_char) ((unit_rand() % 4) ? "ab ,.Z1@:"[unit_rand() % 9]
                                                 : unit_rand());
        }

        unit_same(buf, len);
    }

    unit_report("random bytes, lengths 0 to 400");

    /* the corpora, each line whole and cut */
    line = malloc(1 << 16);
    if (line == NULL) {
        abort();
    }

    for (a = 1; a < argc; a++) {
        f = fopen(argv[a], "r");
        if (f == NULL) {
            unit_ok(0, argv[a]);
            continue;
        }

        while (fgets((char *) line, 1 << 16, f) != NULL) {
            clen = strlen((char *) line);

            unit_same(line, clen);

            for (len = 50; len < clen; len += 29) {
                unit_same(line, len);
            }
        }

        fclose(f);
    }

    free(line);

    if (argc > 1) {
        unit_report("the PII corpora, whole and cut");

    } else {
        unit_ok(0, "the PII corpora are named");
    }

    free(buf);

    printf("1..%lu\n", (unsigned long) unit_n);

    return unit_failed ? 1 : 0;
}
