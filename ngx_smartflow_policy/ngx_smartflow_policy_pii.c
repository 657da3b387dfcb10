/*
 * PII and secrets in text: a PCRE2 (JIT) pattern per detector finds the
 * candidates, a validator decides (Luhn and issuer prefixes for cards,
 * country length and mod-97 for IBANs, SSA ranges for SSNs, digit counts
 * for phones, inet_pton for IPv6), and findings of different detectors
 * never overlap: a detector earlier in the priority order keeps the text.
 */

#include <arpa/inet.h>

#include "ngx_smartflow_policy.h"

#if (defined __SSE2__)
#include <emmintrin.h>
#endif


typedef size_t (*ngx_smartflow_valid_pt)(u_char *p, size_t len);

typedef struct {
    ngx_uint_t               rule;
    const char              *pattern;
    ngx_smartflow_valid_pt   valid;
    pcre2_code              *re;
} ngx_smartflow_detector_t;


/* where the detectors other than email's may find something */
typedef struct {
    size_t                   from;
    size_t                   to;
    size_t                   digits;
    size_t                   dots;
    size_t                   upper;
    size_t                   colons;
    ngx_uint_t               token;     /* a word of 15 or more, a PEM */
} ngx_smartflow_window_t;

#define NGX_SF_MAX_WINDOWS  64


static ngx_uint_t ngx_smartflow_windows(u_char *p, size_t len,
    ngx_smartflow_window_t *w, ngx_uint_t max);
static size_t ngx_smartflow_prose(u_char *p, size_t i, size_t len);
static ngx_uint_t ngx_smartflow_window_may(ngx_smartflow_detector_t *d,
    ngx_smartflow_window_t *w);
static size_t ngx_smartflow_email_check(u_char *p, size_t len);
static size_t ngx_smartflow_phone_check(u_char *p, size_t len);
static size_t ngx_smartflow_card_check(u_char *p, size_t len);
static ngx_uint_t ngx_smartflow_card_alone(u_char *p, size_t len, size_t s,
    size_t e);
static size_t ngx_smartflow_card_number(u_char *p, size_t len);
static size_t ngx_smartflow_iban_check(u_char *p, size_t len);
static size_t ngx_smartflow_ssn_check(u_char *p, size_t len);
static size_t ngx_smartflow_ip_check(u_char *p, size_t len);
static ngx_uint_t ngx_smartflow_scan_email(pcre2_code *re, u_char *p,
    size_t len, ngx_smartflow_finding_t *f, ngx_uint_t n, ngx_uint_t max);
static ngx_uint_t ngx_smartflow_scan_re(pcre2_code *re, ngx_uint_t rule,
    ngx_smartflow_valid_pt valid, u_char *p, size_t from, size_t len,
    ngx_smartflow_finding_t *f, ngx_uint_t first, ngx_uint_t n,
    ngx_uint_t max);
static ngx_uint_t ngx_smartflow_overlaps(ngx_smartflow_finding_t *f,
    ngx_uint_t n, size_t s, size_t e);
static ngx_uint_t ngx_smartflow_append(ngx_smartflow_finding_t *f,
    ngx_uint_t first, ngx_uint_t n, ngx_uint_t rule, size_t s, size_t e);
static void ngx_smartflow_findings_sort(ngx_smartflow_finding_t *f,
    ngx_uint_t n);
static int ngx_libc_cdecl ngx_smartflow_finding_cmp(const void *one,
    const void *two);


pcre2_match_data  *ngx_smartflow_policy_md;

#if (NGX_SMARTFLOW_UNIT)
/* the unit test compares the windows found with and without the skip */
static ngx_uint_t  ngx_smartflow_prose_on = 1;
#else
#define ngx_smartflow_prose_on  1
#endif


/*
 * The bytes a word of the window pass is made of (letters, digits and the
 * punctuation numbers carry), with what each one counts for
 */
#define NGX_SF_WC_DIGIT     0x01
#define NGX_SF_WC_DOT       0x02
#define NGX_SF_WC_COLON     0x04
#define NGX_SF_WC_UPPER     0x08
#define NGX_SF_WC_WORD      0x10

static u_char  ngx_smartflow_wclass[256];


/*
 * The email pattern compiled anchored as well, for the places an "@"
 * points at: JIT code does not take PCRE2_ANCHORED at match time.  That
 * one is without the look-behind: the scan walks the local part back
 * itself and tells where it may start.
 */
static pcre2_code  *ngx_smartflow_email_anchored;

#define NGX_SF_EMAIL_BEFORE  "(?<![A-Za-z0-9._%+-])"


#define ngx_sf_alnum(c)                                                      \
    (((c) >= '0' && (c) <= '9') || ((c) >= 'a' && (c) <= 'z')                \
     || ((c) >= 'A' && (c) <= 'Z'))


/* in priority order: a secret holds digits a phone would also match */
static ngx_smartflow_detector_t  ngx_smartflow_detectors[] = {

    { NGX_SF_RULE_SECRET,
      "(?<![A-Za-z0-9_-])(?:"
        "sk-(?:ant-|proj-|svcacct-|admin-|sf-)?[A-Za-z0-9_-]{20,}"
        "|(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|ANPA|ANVA|APKA)[0-9A-Z]{16}"
        "|gh[pousr]_[A-Za-z0-9]{36,251}"
        "|github_pat_[A-Za-z0-9_]{22,255}"
        "|glpat-[A-Za-z0-9_-]{20,}"
        "|AIza[0-9A-Za-z_-]{35}"
        "|xox[abposr]-[A-Za-z0-9-]{10,}"
        "|[sr]k_live_[A-Za-z0-9]{20,}"
        "|eyJ[A-Za-z0-9_-]{8,}\\.eyJ[A-Za-z0-9_-]{8,}\\.[A-Za-z0-9_-]{8,}"
      ")(?![A-Za-z0-9_-])"
      "|(?i:aws_secret_access_key|aws_secret_key)[\"']?\\s*[:=]\\s*[\"']?"
        "\\K[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])"
      "|-----BEGIN[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----"
        "[\\s\\S]*?(?:-----END[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----|\\z)",
      NULL, NULL },

    { NGX_SF_RULE_IBAN,
      "(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}",
      ngx_smartflow_iban_check, NULL },

    { NGX_SF_RULE_CARD,
      "(?<![0-9A-Za-z.-])[0-9](?:[ -]?[0-9]){12,18}(?![0-9]|[.-][0-9])",
      ngx_smartflow_card_check, NULL },

    { NGX_SF_RULE_SSN,
      "(?<![0-9-])[0-9]{3}([- ])[0-9]{2}\\1[0-9]{4}(?![0-9]|-[0-9])",
      ngx_smartflow_ssn_check, NULL },

    { NGX_SF_RULE_EMAIL,
      NGX_SF_EMAIL_BEFORE "[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}"
      "@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
      "(?:\\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*"
      "\\.[A-Za-z]{2,24}(?![A-Za-z0-9-]|:[A-Za-z0-9~/])",
      ngx_smartflow_email_check, NULL },

    /* IPv6, looked for only where a colon is */
    { NGX_SF_RULE_IP,
      "(?<![A-Za-z0-9_:.])(?:[0-9A-Fa-f]{0,4}:){2,7}"
      "(?:[0-9]{1,3}(?:\\.[0-9]{1,3}){3}|[0-9A-Fa-f]{0,4})"
      "(?![A-Za-z0-9_:])",
      ngx_smartflow_ip_check, NULL },

    { NGX_SF_RULE_IP,
      "(?<![0-9.])(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\\.){3}"
      "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?!\\.?[0-9])",
      ngx_smartflow_ip_check, NULL },

    { NGX_SF_RULE_PHONE,
      "(?<![A-Za-z0-9_+.-])(?:"
        "\\+[1-9][0-9]{0,3}(?:[ .-]?\\([0-9]{1,4}\\))?(?:[ .-]?[0-9]{1,5}){1,6}"
        "|(?:\\([2-9][0-9]{2}\\) ?|[2-9][0-9]{2}[ .-])[2-9][0-9]{2}[ .-]"
          "[0-9]{4}"
        "|0[0-9]{1,4}(?:[ ./-][0-9]{2,8}){1,4}"
      ")(?![A-Za-z0-9_]|[.-][0-9])",
      ngx_smartflow_phone_check, NULL }
};


static const char  *ngx_smartflow_rule_names[] = {
    "email", "phone", "card", "iban", "ssn", "ip", "secret", "injection",
    "shield.sql", "shield.shell", "shield.git", "shield.infra"
};


const char *
ngx_smartflow_policy_rule_name(ngx_uint_t rule)
{
    if (rule < NGX_SF_RULE_N) {
        return ngx_smartflow_rule_names[rule];
    }

    return "custom";
}


ngx_int_t ngx_smartflow_injection_init(void);
ngx_int_t ngx_smartflow_shield_init(void);


ngx_int_t
ngx_smartflow_policy_detect_init(void)
{
    int          err;
    ngx_uint_t   i;
    PCRE2_SIZE   off;

    if (ngx_smartflow_policy_md != NULL) {
        return NGX_OK;
    }

    for (i = 0; i < 256; i++) {
        ngx_smartflow_wclass[i] =
            (i >= '0' && i <= '9') ? NGX_SF_WC_WORD | NGX_SF_WC_DIGIT
            : (i == '.') ? NGX_SF_WC_WORD | NGX_SF_WC_DOT
            : (i == ':') ? NGX_SF_WC_WORD | NGX_SF_WC_COLON
            : (i >= 'A' && i <= 'Z') ? NGX_SF_WC_WORD | NGX_SF_WC_UPPER
            : ((i >= 'a' && i <= 'z') || i == '-' || i == '_' || i == '/'
               || i == '+' || i == '(' || i == ')' || i == '=')
              ? NGX_SF_WC_WORD : 0;
    }

    for (i = 0; i < sizeof(ngx_smartflow_detectors)
                    / sizeof(ngx_smartflow_detector_t); i++)
    {
        ngx_smartflow_detectors[i].re = pcre2_compile(
            (PCRE2_SPTR) ngx_smartflow_detectors[i].pattern,
            PCRE2_ZERO_TERMINATED, 0, &err, &off, NULL);

        if (ngx_smartflow_detectors[i].re == NULL) {
            return NGX_ERROR;
        }

        (void) pcre2_jit_compile(ngx_smartflow_detectors[i].re,
                                 PCRE2_JIT_COMPLETE);

        if (ngx_smartflow_detectors[i].rule != NGX_SF_RULE_EMAIL) {
            continue;
        }

        ngx_smartflow_email_anchored = pcre2_compile(
            (PCRE2_SPTR) ngx_smartflow_detectors[i].pattern
                         + sizeof(NGX_SF_EMAIL_BEFORE) - 1,
            PCRE2_ZERO_TERMINATED, PCRE2_ANCHORED, &err, &off, NULL);

        if (ngx_smartflow_email_anchored == NULL) {
            return NGX_ERROR;
        }

        (void) pcre2_jit_compile(ngx_smartflow_email_anchored,
                                 PCRE2_JIT_COMPLETE);
    }

    ngx_smartflow_policy_md = pcre2_match_data_create(16, NULL);
    if (ngx_smartflow_policy_md == NULL) {
        return NGX_ERROR;
    }

    if (ngx_smartflow_injection_init() != NGX_OK
        || ngx_smartflow_shield_init() != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


ngx_uint_t
ngx_smartflow_pii_scan(u_char *p, size_t len, ngx_uint_t mask,
    ngx_smartflow_custom_t *custom, ngx_uint_t ncustom,
    ngx_smartflow_finding_t *f, ngx_uint_t max)
{
    ngx_uint_t                 i, k, n, nw, at, colon, first, sorted;
    ngx_smartflow_window_t     w[NGX_SF_MAX_WINDOWS];
    ngx_smartflow_detector_t  *d;

    n = 0;
    sorted = 0;

    at = (memchr(p, '@', len) != NULL);
    colon = (memchr(p, ':', len) != NULL);

    nw = ngx_smartflow_windows(p, len, w, NGX_SF_MAX_WINDOWS);

    /*
     * each detector's findings come in text order and never overlap one
     * another; those of the detectors before it are kept in text order,
     * so that a new one is checked against them by a binary search
     */
    for (i = 0; i < sizeof(ngx_smartflow_detectors)
                    / sizeof(ngx_smartflow_detector_t); i++)
    {
        d = &ngx_smartflow_detectors[i];

        if (!(mask & (1 << d->rule))
            || (d->rule == NGX_SF_RULE_EMAIL && !at)
            || (d->rule == NGX_SF_RULE_IP && d->pattern[5] == 'A' && !colon))
        {
            continue;
        }

        if (n > sorted && n > 1) {
            ngx_smartflow_findings_sort(f, n);
        }

        sorted = n;
        first = n;

        if (d->rule == NGX_SF_RULE_EMAIL) {
            n = ngx_smartflow_scan_email(d->re, p, len, f, n, max);
            continue;
        }

        for (k = 0; k < nw; k++) {
            if (!ngx_smartflow_window_may(d, &w[k])) {
                continue;
            }

            n = ngx_smartflow_scan_re(d->re, d->rule, d->valid, p, w[k].from,
                                      w[k].to, f, first, n, max);
        }
    }

    for (i = 0; i < ncustom; i++) {
        if (n > sorted && n > 1) {
            ngx_smartflow_findings_sort(f, n);
        }

        sorted = n;

        n = ngx_smartflow_scan_re(custom[i].re, NGX_SF_RULE_CUSTOM + i, NULL,
                                  p, 0, len, f, n, n, max);
    }

    /* text order, for the rewrite (new ones since the last sort) */
    if (n > sorted && n > 1) {
        ngx_smartflow_findings_sort(f, n);
    }

    return n;
}


/*
 * Findings in text order: a few by insertion (they come as runs already
 * in order), many by qsort, so that the work stays n log n
 */
static void
ngx_smartflow_findings_sort(ngx_smartflow_finding_t *f, ngx_uint_t n)
{
    ngx_uint_t               i, j;
    ngx_smartflow_finding_t  t;

    if (n > 32) {
        for (i = 1; i < n; i++) {
            if (f[i - 1].start > f[i].start) {
                ngx_qsort(f, n, sizeof(ngx_smartflow_finding_t),
                          ngx_smartflow_finding_cmp);
                return;
            }
        }

        return;
    }

    for (i = 1; i < n; i++) {
        t = f[i];

        for (j = i; j > 0 && f[j - 1].start > t.start; j--) {
            f[j] = f[j - 1];
        }

        f[j] = t;
    }
}


static int ngx_libc_cdecl
ngx_smartflow_finding_cmp(const void *one, const void *two)
{
    const ngx_smartflow_finding_t  *a = one;
    const ngx_smartflow_finding_t  *b = two;

    return (a->start > b->start) - (a->start < b->start);
}


/*
 * Whether s..e overlaps one of the n findings in text order (not
 * overlapping, so their ends are in order too)
 */
static ngx_uint_t
ngx_smartflow_overlaps(ngx_smartflow_finding_t *f, ngx_uint_t n, size_t s,
    size_t e)
{
    ngx_uint_t  lo, hi, mid;

    /* the first finding that ends past s */
    lo = 0;
    hi = n;

    while (lo < hi) {
        mid = lo + (hi - lo) / 2;

        if (f[mid].end > s) {
            hi = mid;

        } else {
            lo = mid + 1;
        }
    }

    return lo < n && f[lo].start < e;
}


/*
 * f[n] = a finding of a detector whose findings, from f[first] on, come
 * in text order, unless it overlaps another detector's (before first) or
 * its own last one
 */
static ngx_uint_t
ngx_smartflow_append(ngx_smartflow_finding_t *f, ngx_uint_t first,
    ngx_uint_t n, ngx_uint_t rule, size_t s, size_t e)
{
    if (ngx_smartflow_overlaps(f, first, s, e)
        || (n > first && f[n - 1].end > s))
    {
        return n;
    }

    f[n].rule = rule;
    f[n].start = s;
    f[n].end = e;

    return n + 1;
}


/* f[0 .. first): the other detectors' findings, in text order */
static ngx_uint_t
ngx_smartflow_scan_re(pcre2_code *re, ngx_uint_t rule,
    ngx_smartflow_valid_pt valid, u_char *p, size_t from, size_t len,
    ngx_smartflow_finding_t *f, ngx_uint_t first, ngx_uint_t n,
    ngx_uint_t max)
{
    int          rc;
    size_t       off, s, e, l;
    PCRE2_SIZE  *ov;

    off = from;

    while (off < len && n < max) {
        rc = ngx_smartflow_re_match(re, p, len, off, 0,
                                ngx_smartflow_policy_md);
        if (rc < 0) {
            break;
        }

        ov = pcre2_get_ovector_pointer(ngx_smartflow_policy_md);
        s = ov[0];
        e = ov[1];

        if (e <= s) {
            off = (e > off) ? e : off + 1;
            continue;
        }

        if (valid) {
            l = valid(p + s, e - s);
            if (l == 0) {
                /*
                 * the whole run fails: no part of it is tried again, but
                 * for a card the groups after its first (a card after a
                 * quantity, "2 4111 1111 1111 1111")
                 */
                off = (rule == NGX_SF_RULE_CARD) ? s + 1 : e;
                continue;
            }

            e = s + l;

            if (rule == NGX_SF_RULE_CARD
                && !ngx_smartflow_card_alone(p, len, s, e))
            {
                off = s + 1;
                continue;
            }
        }

        n = ngx_smartflow_append(f, first, n, rule, s, e);

        off = e;
    }

    return n;
}


/*
 * Eight bytes at a time (SWAR): the high bit of each byte of x that is
 * equal to c, or between lo and hi; exact for each byte, as no sum carries
 * into the next byte
 */
#define NGX_SF_ONES         0x0101010101010101ULL
#define NGX_SF_LOWS         0x7f7f7f7f7f7f7f7fULL
#define NGX_SF_HIGHS        0x8080808080808080ULL

#define ngx_sf_swar_eq(x, c)                                                 \
    (~(((((x) ^ (NGX_SF_ONES * (c))) & NGX_SF_LOWS) + NGX_SF_LOWS)          \
       | ((x) ^ (NGX_SF_ONES * (c))) | NGX_SF_LOWS))

#define ngx_sf_swar_in(x, lo, hi)                                            \
    ((((x) & NGX_SF_LOWS) + NGX_SF_ONES * (0x80 - (lo)))                     \
     & ~(((x) & NGX_SF_LOWS) + NGX_SF_ONES * (0x7f - (hi)))                  \
     & ~(x) & NGX_SF_HIGHS)


/*
 * From a word's start where no run of numbers is open: skips the text
 * that is words of letters with a lower-case one after each capital
 * (lower-case only, eight bytes at a time, without SSE2), ".", "," and
 * spaces, where no window can start, and returns the start of the first
 * word that needs the byte-wise pass (a word that may reach 15
 * characters is left to it, whole).
 */
#if (defined __SSE2__)

/* sixteen bytes at a time (no word inside 16 bytes reaches 15) */

static size_t
ngx_smartflow_prose16(u_char *p, size_t i, size_t len)
{
    size_t    ws;
    __m128i   x, sep, letter, lower, lone;
    uint32_t  sm, psm;

    ws = i;
    psm = 0;

    while (len - i >= 16) {
        x = _mm_loadu_si128((__m128i *) (p + i));

        sep = _mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8(' ')),
                           _mm_cmpeq_epi8(x, _mm_set1_epi8(',')));
        letter = _mm_or_si128(x, _mm_set1_epi8(0x20));
        letter = _mm_and_si128(
                     _mm_cmpgt_epi8(letter, _mm_set1_epi8('a' - 1)),
                     _mm_cmpgt_epi8(_mm_set1_epi8('z' + 1), letter));
        lower = _mm_and_si128(letter,
                              _mm_cmpgt_epi8(x, _mm_set1_epi8('Z')));

        /*
         * a capital letter followed by a lower-case one in the block: its
         * word has a lower-case letter, so it joins no run of numbers
         * (an upper-case group of an IBAN, a lone "I" or "A" do)
         */
        lone = _mm_andnot_si128(_mm_srli_si128(lower, 1),
                                _mm_andnot_si128(lower, letter));

        if (_mm_movemask_epi8(_mm_andnot_si128(lone, _mm_or_si128(
                _mm_or_si128(letter, _mm_cmpeq_epi8(x, _mm_set1_epi8('.'))),
                sep)))
            != 0xffff)
        {
            break;
        }

        sm = (uint32_t) _mm_movemask_epi8(sep);

        if (sm == 0) {
            break;              /* a word of 16 or more */
        }

        /*
         * the word going on before the first separator: 15 or more fill
         * the lower half of this block or the upper half of the one
         * before, and only then is its start needed
         */
        if ((sm & 0xff) == 0 || (psm & 0xff00) == 0) {
            if (psm) {
                ws = i - 16 + 1 + (size_t) (31 - __builtin_clz(psm));
            }

            if (i + (size_t) __builtin_ctz(sm) - ws >= 15) {
                return ws;
            }
        }

        psm = sm;
        i += 16;
    }

    /* the start of the last word begun */
    return psm ? i - 16 + 1 + (size_t) (31 - __builtin_clz(psm)) : ws;
}


/*
 * Sixty-four bytes at a time, as 64-bit masks of four registers': the
 * first byte that is not prose, or that begins 15 bytes without a
 * separator (counting the word going on), stops the skip at its word's
 * start.  The last bytes go sixteen at a time.
 */

#define ngx_sf_pmask(v)  ((uint64_t) (uint32_t) _mm_movemask_epi8(v))

static ngx_inline void
ngx_smartflow_prose_masks(__m128i x, ngx_uint_t k, uint64_t *sep,
    uint64_t *good)
{
    __m128i  lx, letter, lower, lone, sp;

    lx = _mm_or_si128(x, _mm_set1_epi8(0x20));
    letter = _mm_and_si128(_mm_cmpgt_epi8(lx, _mm_set1_epi8('a' - 1)),
                           _mm_cmpgt_epi8(_mm_set1_epi8('z' + 1), lx));
    lower = _mm_and_si128(letter, _mm_cmpgt_epi8(x, _mm_set1_epi8('Z')));
    sp = _mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8(' ')),
                      _mm_cmpeq_epi8(x, _mm_set1_epi8(',')));

    /*
     * a capital letter not followed by a lower-case one in the register
     * (at its end, taken as not) may join a run of numbers
     */
    lone = _mm_andnot_si128(_mm_srli_si128(lower, 1),
                            _mm_andnot_si128(lower, letter));

    *sep |= ngx_sf_pmask(sp) << k;
    *good |= ngx_sf_pmask(_mm_andnot_si128(lone, _mm_or_si128(
                 _mm_or_si128(letter, _mm_cmpeq_epi8(x, _mm_set1_epi8('.'))),
                 sp))) << k;
}


static size_t
ngx_smartflow_prose(u_char *p, size_t i, size_t len)
{
    size_t    ws, at;
    uint64_t  sep, good, stop, t;

    ws = i;                     /* the start of the word going on */

    while (len - i >= 64) {
        sep = 0;
        good = 0;

        ngx_smartflow_prose_masks(_mm_loadu_si128((__m128i *) (p + i)), 0,
                                  &sep, &good);
        ngx_smartflow_prose_masks(_mm_loadu_si128((__m128i *) (p + i + 16)),
                                  16, &sep, &good);
        ngx_smartflow_prose_masks(_mm_loadu_si128((__m128i *) (p + i + 32)),
                                  32, &sep, &good);
        ngx_smartflow_prose_masks(_mm_loadu_si128((__m128i *) (p + i + 48)),
                                  48, &sep, &good);

        /* the word going on reaches 15 with the chunk's first bytes */
        if (i - ws + (sep ? (size_t) __builtin_ctzll(sep) : 64) >= 15) {
            return ws;
        }

        /* bytes starting 15 without a separator */
        t = ~sep & (~sep >> 1);
        t &= t >> 2;
        t &= t >> 4;
        t &= t >> 7;

        stop = ~good | t;

        if (stop) {
            at = (size_t) __builtin_ctzll(stop);
            t = sep & (((uint64_t) 1 << at) - 1);

            return t ? i + 64 - (size_t) __builtin_clzll(t) : ws;
        }

        if (sep) {
            ws = i + 64 - (size_t) __builtin_clzll(sep);
        }

        i += 64;
    }

    return ngx_smartflow_prose16(p, ws, len);
}

#else

static size_t
ngx_smartflow_prose(u_char *p, size_t i, size_t len)
{
    size_t    ws, first;
    uint64_t  x, sep;

    ws = i;

    while (len - i >= 8) {
        ngx_memcpy(&x, p + i, 8);

        sep = ngx_sf_swar_eq(x, ' ') | ngx_sf_swar_eq(x, ',');

        if ((ngx_sf_swar_in(x, 'a', 'z') | ngx_sf_swar_eq(x, '.') | sep)
            != NGX_SF_HIGHS)
        {
            break;
        }

        if (sep == 0) {
            if (i + 8 - ws >= 15) {
                break;
            }

            i += 8;
            continue;
        }

        /* the word going on before the first separator, then the last */
        first = (size_t) __builtin_ctzll(sep) >> 3;

        if (i + first - ws >= 15) {
            break;
        }

        ws = i + 1 + ((size_t) (63 - __builtin_clzll(sep)) >> 3);
        i += 8;
    }

    return ws;
}

#endif


/*
 * One pass over the text finds the places a number, an address or a
 * secret can be: runs of words that hold digits (with the upper-case
 * groups of an IBAN, "+", "(" and separators between them), words of 15
 * characters or more (tokens, keys), words with two colons (IPv6), and
 * a PEM block to the end of the text.  The patterns then run only there,
 * each window widened by the 48 characters a key name may take before
 * its value, and by 2 after it for the patterns' look-ahead.  Too many
 * windows: the whole text is one.
 */
static ngx_uint_t
ngx_smartflow_windows(u_char *p, size_t len, ngx_smartflow_window_t *w,
    ngx_uint_t max)
{
    u_char      k, *pem;
    size_t      i, ws, we, ds, de, digits, colons, upper, wl;
    size_t      rdots, rupper, rcolons, wd, wdots;
    ngx_uint_t  n, want, joinable;

    n = 0;
    ds = 0;
    de = 0;
    digits = 0;
    want = 0;
    rdots = 0;
    rupper = 0;
    rcolons = 0;

    for (i = 0; i <= len; /* void */) {

        if (de == 0 && ngx_smartflow_prose_on) {
            i = ngx_smartflow_prose(p, i, len);
        }

        /* a word: letters, digits and the punctuation numbers carry */
        ws = i;
        colons = 0;
        upper = 0;
        wl = 0;
        wd = 0;
        wdots = 0;

        while (i < len) {
            k = ngx_smartflow_wclass[p[i]];

            if (k != NGX_SF_WC_WORD) {
                if (k == 0) {
                    break;
                }

                wd += k & NGX_SF_WC_DIGIT;
                wdots += (k >> 1) & 1;
                colons += (k >> 2) & 1;
                upper += (k >> 3) & 1;
            }

            i++;
        }

        digits += wd;
        we = i;
        wl = we - ws;

        /* what may join a run of numbers: digits, IBAN letter groups */
        joinable = (wl > 0 && (wd > 0 || (upper == wl && wl <= 4)
                               || p[ws] == '+' || p[ws] == '('));

        if (wl >= 15 || colons >= 2) {
            want = 1;
        }

        if (joinable || wl >= 15 || colons >= 2) {
            if (de == 0) {
                ds = ws;
            }

            de = we;
            rdots += wdots;
            rupper += upper;
            rcolons += colons;

        } else {
            digits -= wd;
        }

        /* a run ends at a word that cannot join it, or two spaces */
        if (de && (i >= len || !joinable || i + 1 >= len || p[i] != ' '
                   || p[i + 1] == ' '))
        {
            if ((want || digits >= 4) && de > ds) {
                if (n == max) {
                    goto whole;
                }

                w[n].from = ds > 48 ? ds - 48 : 0;
                w[n].to = de + 2 < len ? de + 2 : len;
                w[n].digits = digits;
                w[n].dots = rdots;
                w[n].upper = rupper;
                w[n].colons = rcolons;
                w[n].token = want;

                if (n && w[n].from <= w[n - 1].to) {
                    w[n - 1].to = w[n].to;
                    w[n - 1].digits += digits;
                    w[n - 1].dots += rdots;
                    w[n - 1].upper += rupper;
                    w[n - 1].colons += rcolons;
                    w[n - 1].token |= want;

                } else {
                    n++;
                }
            }

            de = 0;
            digits = 0;
            want = 0;
            rdots = 0;
            rupper = 0;
            rcolons = 0;
        }

        if (!joinable) {
            digits = 0;
        }

        if (i >= len) {
            break;
        }

        if (we == ws) {
            i++;
        } else if (p[i] == ' ') {
            i++;
        }
    }

    for (pem = p; pem + 10 <= p + len; pem++) {
        pem = (u_char *) memchr(pem, '-', p + len - pem);

        if (pem == NULL || pem + 10 > p + len) {
            pem = NULL;
            break;
        }

        if (ngx_strncmp(pem, "-----BEGIN", 10) == 0) {
            break;
        }
    }

    if (pem && pem + 10 > p + len) {
        pem = NULL;
    }

    if (pem) {
        ws = pem - p;

        if (n && ws <= w[n - 1].to) {
            w[n - 1].to = len;
            w[n - 1].token = 1;

        } else if (n < max) {
            ngx_memzero(&w[n], sizeof(ngx_smartflow_window_t));
            w[n].from = ws;
            w[n].to = len;
            w[n].token = 1;
            n++;

        } else {
            goto whole;
        }
    }

    return n;

whole:

    /* the whole text, every detector */
    w[0].from = 0;
    w[0].to = len;
    w[0].digits = len;
    w[0].dots = len;
    w[0].upper = len;
    w[0].colons = len;
    w[0].token = 1;

    return 1;
}


/* whether a detector can find anything in a window */
static ngx_uint_t
ngx_smartflow_window_may(ngx_smartflow_detector_t *d,
    ngx_smartflow_window_t *w)
{
    switch (d->rule) {

    case NGX_SF_RULE_SECRET:
        return w->token;

    case NGX_SF_RULE_IBAN:
        return w->upper >= 2 && w->digits >= 4;

    case NGX_SF_RULE_CARD:
        return w->digits >= 13;

    case NGX_SF_RULE_SSN:
        return w->digits >= 9;

    case NGX_SF_RULE_PHONE:
        return w->digits >= 8;

    default: /* IP */
        return (d->pattern[5] == 'A') ? w->colons >= 2
                                      : (w->dots >= 3 && w->digits >= 4);
    }
}


/*
 * Emails from their "@": the local part is walked back from it and the
 * pattern anchored there, instead of tried at every letter of the text.
 * The walk stops at the end of the address before, so that one glued to
 * it ("x@a.bc_z9@q.io") is found too: it starts at the first letter or
 * digit of what is left, as one after a sign (".f@g.hi") does.  A local
 * part longer than 64 bytes makes no address, as the pattern's
 * look-behind says, rather than a part of one.
 */
static ngx_uint_t
ngx_smartflow_scan_email(pcre2_code *re, u_char *p, size_t len,
    ngx_smartflow_finding_t *f, ngx_uint_t n, ngx_uint_t max)
{
    int          rc;
    u_char      *a, c;
    size_t       s, e, off, at, last;
    ngx_uint_t   first;
    PCRE2_SIZE  *ov;

    /* f[0 .. first): the other detectors', in text order */
    first = n;
    off = 0;
    last = 0;

    while (off < len && n < max) {
        a = (u_char *) memchr(p + off, '@', len - off);
        if (a == NULL) {
            break;
        }

        at = a - p;
        s = at;

        while (s > last && at - s < 64) {
            c = p[s - 1];

            if (!(ngx_sf_alnum(c) || c == '.' || c == '_' || c == '%'
                  || c == '+' || c == '-'))
            {
                break;
            }

            s--;
        }

        rc = -1;

        /*
         * a local part longer than 64 is none: the pattern would find its
         * last 64 bytes and leave the rest in the text
         */
        if (at - s == 64 && s > last) {
            c = p[s - 1];

            if (ngx_sf_alnum(c) || c == '.' || c == '_' || c == '%'
                || c == '+' || c == '-')
            {
                off = at + 1;
                continue;
            }
        }

        /* the first place a local part may start */
        for ( /* void */ ; s < at; s++) {
            if (!ngx_sf_alnum(p[s])) {
                continue;
            }

            rc = ngx_smartflow_re_match(ngx_smartflow_email_anchored, p, len,
                                        s, 0, ngx_smartflow_policy_md);
            if (rc >= 0) {
                break;
            }
        }

        off = at + 1;

        if (rc < 0) {
            continue;
        }

        ov = pcre2_get_ovector_pointer(ngx_smartflow_policy_md);
        s = ov[0];
        e = ov[1];

        if (ngx_smartflow_email_check(p + s, e - s) == 0) {
            continue;
        }

        n = ngx_smartflow_append(f, first, n, NGX_SF_RULE_EMAIL, s, e);

        off = e;
        last = e;
    }

    return n;
}


static size_t
ngx_smartflow_email_check(u_char *p, size_t len)
{
    size_t  i;

    for (i = 0; i < len && p[i] != '@'; i++) {
        if (p[i] == '.' && (i + 1 < len)
            && (p[i + 1] == '.' || p[i + 1] == '@'))
        {
            return 0;
        }
    }

    return len;
}


/* only the digits of p, at most max of them; the count, or max + 1 */
static size_t
ngx_smartflow_digits(u_char *p, size_t len, u_char *out, size_t max)
{
    size_t  i, n;

    n = 0;

    for (i = 0; i < len; i++) {
        if (p[i] >= '0' && p[i] <= '9') {
            if (n == max) {
                return max + 1;
            }

            out[n++] = p[i];
        }
    }

    return n;
}


ngx_uint_t
ngx_smartflow_phone_valid(u_char *p, size_t len)
{
    return ngx_smartflow_phone_check(p, len) == len;
}


static size_t
ngx_smartflow_phone_check(u_char *p, size_t len)
{
    size_t  n, i, seps;
    u_char  d[16];

    n = ngx_smartflow_digits(p, len, d, 15);

    if (p[0] == '+') {
        /* E.164: a country code and at most 15 digits */
        return (n >= 8 && n <= 15) ? len : 0;
    }

    if (p[0] == '0') {
        /* a national form with a trunk prefix, written with separators */
        seps = 0;

        for (i = 0; i < len; i++) {
            if (p[i] < '0' || p[i] > '9') {
                seps++;
            }
        }

        if (seps == 0 || n < 10 || n > 11 || d[1] == '0') {
            return 0;
        }

        /* 01.02.2024: a date, not a number */
        if (n == 8 || (len == 10 && p[2] == '.' && p[5] == '.')) {
            return 0;
        }

        return len;
    }

    /* North American: NXX area and exchange, not N11 */
    if (n != 10 || (d[1] == '1' && d[2] == '1')
        || (d[4] == '1' && d[5] == '1'))
    {
        return 0;
    }

    return len;
}


ngx_uint_t
ngx_smartflow_luhn(u_char *d, size_t n)
{
    size_t      i;
    ngx_uint_t  sum, v, dbl;

    sum = 0;
    dbl = 0;

    for (i = n; i > 0; i--) {
        v = d[i - 1] - '0';

        if (dbl) {
            v *= 2;
            if (v > 9) {
                v -= 9;
            }
        }

        sum += v;
        dbl = !dbl;
    }

    return (sum % 10) == 0;
}


/* the issuer's prefix and its card lengths */
static ngx_uint_t
ngx_smartflow_card_issuer(u_char *d, size_t n)
{
    ngx_uint_t  p2, p3, p4, p6;

    p2 = (d[0] - '0') * 10 + (d[1] - '0');
    p3 = p2 * 10 + (d[2] - '0');
    p4 = p3 * 10 + (d[3] - '0');
    p6 = p4 * 100 + (d[4] - '0') * 10 + (d[5] - '0');

    if (d[0] == '4') {                                      /* Visa */
        return n == 13 || n == 16 || n == 19;
    }

    if ((p2 >= 51 && p2 <= 55) || (p4 >= 2221 && p4 <= 2720)) {
        return n == 16;                                     /* Mastercard */
    }

    if (p2 == 34 || p2 == 37) {                             /* Amex */
        return n == 15;
    }

    if (p4 == 6011 || p2 == 65 || (p3 >= 644 && p3 <= 649)
        || (p6 >= 622126 && p6 <= 622925))
    {
        return n >= 16 && n <= 19;                          /* Discover */
    }

    if (p4 >= 3528 && p4 <= 3589) {                         /* JCB */
        return n >= 16 && n <= 19;
    }

    if ((p3 >= 300 && p3 <= 305) || p2 == 36 || p2 == 38 || p2 == 39) {
        return n >= 14 && n <= 19;                          /* Diners */
    }

    if (p2 == 62 || p2 == 81) {                             /* UnionPay */
        return n >= 16 && n <= 19;
    }

    if (p4 >= 2200 && p4 <= 2204) {                         /* Mir */
        return n >= 16 && n <= 19;
    }

    if (p2 == 50 || (p2 >= 56 && p2 <= 69)) {               /* Maestro */
        return n >= 13 && n <= 19;
    }

    return 0;
}


ngx_uint_t
ngx_smartflow_card_valid(u_char *p, size_t len)
{
    return ngx_smartflow_card_check(p, len) == len;
}


/*
 * A card number, or the longest one that begins the run and ends at a
 * separator: a card written with its expiry date or its code after it
 * ("4111 1111 1111 1111 12/26") is a run of more digits than a card has
 */
static size_t
ngx_smartflow_card_check(u_char *p, size_t len)
{
    size_t  i, n;
    u_char  sep;

    if (ngx_smartflow_card_number(p, len)) {
        return len;
    }

    sep = 0;

    for (i = 0; i < len; i++) {
        if (p[i] == ' ' || p[i] == '-') {
            sep = p[i];
            break;
        }
    }

    if (sep == 0) {
        return 0;
    }

    for (i = len - 1; i > 12; i--) {
        if (p[i] != sep) {
            continue;
        }

        n = ngx_smartflow_card_number(p, i);

        if (n) {
            return n;
        }
    }

    return 0;
}


#define ngx_sf_card_digit(c)  ((c) >= '0' && (c) <= '9')
#define ngx_sf_card_sep(c)    ((c) == ' ' || (c) == '-')


/*
 * A card p[s, e) inside a longer run of digit groups is taken only when
 * the groups around it are what is written with a card: before it, a
 * quantity of one to three digits that starts the run ("2 4111 ...");
 * after it, its code of three or four digits or its expiry date ("12/26",
 * "12 26", "12 2026") that end the run.  A number of many groups ("Ref:
 * 2439 5067 7926 2646 0795 1326") holds no card.
 */
static ngx_uint_t
ngx_smartflow_card_alone(u_char *p, size_t len, size_t s, size_t e)
{
    size_t      i, d1, d2;
    ngx_uint_t  mm;

    if (s >= 2 && ngx_sf_card_sep(p[s - 1]) && ngx_sf_card_digit(p[s - 2])) {

        for (i = s - 1; i > 0 && ngx_sf_card_digit(p[i - 1]); i--) {
            if (s - i > 3) {
                return 0;
            }
        }

        if (i >= 2 && ngx_sf_card_sep(p[i - 1])
            && ngx_sf_card_digit(p[i - 2]))
        {
            return 0;
        }
    }

    if (e + 1 >= len || !ngx_sf_card_sep(p[e])
        || !ngx_sf_card_digit(p[e + 1]))
    {
        return 1;
    }

    for (i = e + 1; i < len && ngx_sf_card_digit(p[i]) && i - e <= 4; i++) {
        /* void */
    }

    d1 = i - e - 1;

    if (i < len && ngx_sf_card_digit(p[i])) {
        return 0;
    }

    mm = (d1 == 2 && ((p[e + 1] == '0' && p[e + 2] != '0')
                      || (p[e + 1] == '1' && p[e + 2] <= '2')));

    if (i + 1 < len && (ngx_sf_card_sep(p[i]) || p[i] == '/')
        && ngx_sf_card_digit(p[i + 1]))
    {
        /* a month, then its year */
        if (!mm) {
            return 0;
        }

        for (e = i++; i < len && ngx_sf_card_digit(p[i]) && i - e <= 4; i++) {
            /* void */
        }

        d2 = i - e - 1;

        if (d2 != 2 && d2 != 4) {
            return 0;
        }

        return !(i + 1 < len && ngx_sf_card_sep(p[i])
                 && ngx_sf_card_digit(p[i + 1]))
               && !(i < len && ngx_sf_card_digit(p[i]));
    }

    return d1 == 3 || d1 == 4;
}


/* the digits of a card, with one kind of separator, as cards are written */
static size_t
ngx_smartflow_card_number(u_char *p, size_t len)
{
    size_t  i, n;
    u_char  d[20], sep;

    n = ngx_smartflow_digits(p, len, d, 19);

    if (n < 13 || n > 19) {
        return 0;
    }

    sep = 0;

    for (i = 0; i < len; i++) {
        if (p[i] == ' ' || p[i] == '-') {
            if (sep && p[i] != sep) {
                return 0;
            }

            sep = p[i];
        }
    }

    if (!ngx_smartflow_card_issuer(d, n) || !ngx_smartflow_luhn(d, n)) {
        return 0;
    }

    return len;
}


/* the length of each country's IBAN (ISO 13616 registry) */
static const char  *ngx_smartflow_iban_lengths =
    "AD24AE23AL28AT20AZ28BA20BE16BG22BH22BI27BR29BY28CH21CR22CY28CZ24"
    "DE22DJ27DK18DO28EE20EG29ES24FI18FK18FO18FR27GB22GE22GI23GL18GR27"
    "GT28HR21HU28IE22IL23IQ23IS26IT27JO30KW30KZ20LB28LC32LI21LT20LU20"
    "LV21LY25MC27MD24ME22MK19MN20MR27MT31MU30NI28NL18NO15OM23PK24PL28"
    "PS29PT25QA29RO24RS22RU33SA24SC31SD18SE24SI19SK24SM27SO23ST25SV28"
    "TL23TN24TR26UA29VA22VG24XK20YE30";


ngx_uint_t
ngx_smartflow_iban_valid(u_char *p, size_t len)
{
    return ngx_smartflow_iban_check(p, len) == len;
}


static size_t
ngx_smartflow_iban_check(u_char *p, size_t len)
{
    size_t       want, i, n, k;
    u_char       c[34];
    const char  *t;
    ngx_uint_t   r;

    want = 0;

    for (t = ngx_smartflow_iban_lengths; *t; t += 4) {
        if (t[0] == p[0] && t[1] == p[1]) {
            want = (t[2] - '0') * 10 + (t[3] - '0');
            break;
        }
    }

    if (want == 0) {
        return 0;
    }

    /* the country's length of characters; spaces only between them */
    n = 0;

    for (i = 0; i < len && n < want; i++) {
        if (p[i] == ' ') {
            continue;
        }

        c[n++] = p[i];
    }

    if (n != want) {
        return 0;
    }

    if (i < len && p[i] != ' ') {
        return 0;
    }

    /* mod 97 of the rearranged number, letters as 10..35 */
    r = 0;

    for (k = 0; k < n; k++) {
        t = (const char *) &c[(k + 4) % n];

        if (*t >= '0' && *t <= '9') {
            r = (r * 10 + (*t - '0')) % 97;

        } else if (*t >= 'A' && *t <= 'Z') {
            r = (r * 100 + (*t - 'A' + 10)) % 97;

        } else {
            return 0;
        }
    }

    return (r == 1) ? i : 0;
}


ngx_uint_t
ngx_smartflow_ssn_valid(u_char *p, size_t len)
{
    return ngx_smartflow_ssn_check(p, len) == len;
}


static size_t
ngx_smartflow_ssn_check(u_char *p, size_t len)
{
    u_char      d[10];
    ngx_uint_t  area, group, serial;

    if (ngx_smartflow_digits(p, len, d, 9) != 9) {
        return 0;
    }

    area = (d[0] - '0') * 100 + (d[1] - '0') * 10 + (d[2] - '0');
    group = (d[3] - '0') * 10 + (d[4] - '0');
    serial = (d[5] - '0') * 1000 + (d[6] - '0') * 100 + (d[7] - '0') * 10
             + (d[8] - '0');

    if (area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0)
    {
        return 0;
    }

    /* numbers printed in advertising, never issued to anyone */
    if ((area == 78 && group == 5 && serial == 1120)
        || (area == 219 && group == 9 && serial == 9999))
    {
        return 0;
    }

    return len;
}


static size_t
ngx_smartflow_ip_check(u_char *p, size_t len)
{
    size_t      i, groups, digits;
    u_char      buf[64], a6[16];
    ngx_uint_t  colon, hexdigit;

    colon = 0;

    for (i = 0; i < len; i++) {
        if (p[i] == ':') {
            colon = 1;
            break;
        }
    }

    if (!colon) {
        return len;     /* IPv4: the pattern checked each octet */
    }

    if (len >= sizeof(buf)) {
        return 0;
    }

    ngx_memcpy(buf, p, len);
    buf[len] = '\0';

    if (inet_pton(AF_INET6, (char *) buf, a6) != 1) {
        return 0;
    }

    /* "a::b" in prose or code: two groups at least, and a digit */
    groups = 0;
    digits = 0;
    hexdigit = 0;

    for (i = 0; i < len; i++) {
        if (p[i] == ':') {
            groups += hexdigit;
            hexdigit = 0;
            continue;
        }

        hexdigit = 1;

        if (p[i] >= '0' && p[i] <= '9') {
            digits++;
        }
    }

    groups += hexdigit;

    return (groups >= 2 && digits > 0) ? len : 0;
}
