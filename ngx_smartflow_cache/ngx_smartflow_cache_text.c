/*
 * What the cache reads in a prompt.  The tokenizer lower-cases words,
 * splits contractions ("don't" -> "do not"), keeps numbers whole ("1,000"
 * -> "1000", "-2.5"), turns number words and currency signs into one
 * spelling, keeps "c++" and "c#" apart from "c", and marks each token: a
 * function word, a name (capitalised inside a sentence, or with capitals
 * after its first letter), a number, a negation, or a word of the guarded
 * lexicon (units, currencies, programming languages, opposites, days and
 * months).  From the tokens come the normalised form hashed by phase 1,
 * the MinHash signature of phase 2, the builtin embedding of phase 4
 * (content words, word pairs and character trigrams hashed with a sign
 * into the zone's dimension, L2-normalised), and the verification that turns
 * down a phase 2 or 4 candidate whose numbers, negations, guarded words,
 * names or word order differ from the query's.
 */

#include <math.h>

#include "ngx_smartflow_cache_text.h"


typedef struct {
    char                       *from;
    char                       *to;
} ngx_smartflow_cache_map_t;


static ngx_int_t ngx_smartflow_cache_emit(ngx_smartflow_cache_text_t *t,
    u_char **buf, u_char *p, size_t len, ngx_uint_t cap);
static void ngx_smartflow_cache_classify(ngx_smartflow_cache_tok_t *tk,
    ngx_int_t w);
static void ngx_smartflow_cache_words_init(void);
static void ngx_smartflow_cache_words_add(char *w, ngx_uint_t what,
    ngx_int_t map);
static ngx_uint_t ngx_smartflow_cache_word(u_char *p, size_t len,
    ngx_int_t *map);
static void ngx_smartflow_cache_minhash_add(uint64_t *h, ngx_uint_t n,
    uint32_t *sig);
static ngx_int_t ngx_smartflow_cache_find(ngx_smartflow_cache_text_t *t,
    ngx_smartflow_cache_tok_t *tk);
static ngx_uint_t ngx_smartflow_cache_same_seq(ngx_smartflow_cache_text_t *a,
    ngx_smartflow_cache_text_t *b, ngx_uint_t what);
static ngx_uint_t ngx_smartflow_cache_names(ngx_smartflow_cache_text_t *q,
    ngx_smartflow_cache_text_t *c);
static ngx_uint_t ngx_smartflow_cache_disorder(
    ngx_smartflow_cache_text_t *q, ngx_smartflow_cache_text_t *c);
static ngx_uint_t ngx_smartflow_cache_novel(ngx_smartflow_cache_text_t *a,
    ngx_smartflow_cache_text_t *b);


#define ngx_sf_tok_eq(a, b)                                                  \
    ((a)->stem == (b)->stem                                                  \
     && ngx_memcmp((a)->data, (b)->data, (a)->stem) == 0)

#define NGX_SMARTFLOW_CACHE_MH_BATCH  64     /* shingle hashes per mix */

/*
 * A word's hash: its bytes read eight at a time, each group folded in
 * with a multiply; then ngx_sf_fin() so that every bit depends on every
 * byte.  The last group of fewer than eight bytes is read byte by byte,
 * or, from the tokens' buffer, which has NGX_SF_WORD_PAD bytes to spare
 * after its last token, read whole and masked: the same value either way.
 */

#define NGX_SF_WORD_K    0x9fb21c651e98df25ULL
#define NGX_SF_WORD_M    0xd6e8feb86659fd93ULL
#define NGX_SF_WORD_PAD  8


static ngx_inline uint64_t
ngx_sf_word_read(u_char *p, size_t len, ngx_uint_t padded)
{
    size_t    i;
    uint64_t  h, x;

    h = NGX_SF_WORD_K ^ (len * NGX_SF_WORD_M);

    for ( /* void */ ; len >= 8; p += 8, len -= 8) {
        ngx_memcpy(&x, p, 8);
        h = (h ^ x) * NGX_SF_WORD_M;
        h ^= h >> 32;
    }

    x = 0;

#if (NGX_HAVE_LITTLE_ENDIAN)
    /* the first byte lowest, as below; nothing is left for the loop */
    if (padded && len) {
        ngx_memcpy(&x, p, 8);
        x &= ~(uint64_t) 0 >> (64 - 8 * len);
        len = 0;
    }
#endif

    for (i = 0; i < len; i++) {
        x |= (uint64_t) p[i] << (i * 8);
    }

    h = (h ^ x) * NGX_SF_WORD_M;

    return h ^ (h >> 32);
}

/* a token's word, in the tokens' buffer */
#define ngx_sf_word(p, len)  ngx_sf_word_read(p, len, 1)


static ngx_inline uint64_t
ngx_sf_fin(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;

    return h;
}


/*
 * The features' hashes, each kind with its own seed: a word (ngx_sf_word()
 * of it), a pair of words (the two words' hashes, in order) and a
 * character trigram (its three bytes, the first highest)
 */
#define ngx_sf_hash(p, len)      ngx_sf_fin(ngx_sf_word(p, len))
#define ngx_sf_seeded(h, seed)   ngx_sf_fin((h) ^ (seed))
#define ngx_sf_pair(a, b)        ((a) * NGX_SF_WORD_M + (b))

#define NGX_SF_SEED_WORD         0x6a09e667f3bcc908ULL   /* embedding */
#define NGX_SF_SEED_PAIR         0xbb67ae8584caa73bULL
#define NGX_SF_SEED_MH_WORD      0x3c6ef372fe94f82bULL   /* MinHash */
#define NGX_SF_SEED_MH_PAIR      0xa54ff53a5f1d36f1ULL
#define NGX_SF_SEED_TRIGRAM      0x510e527fade682d1ULL


/*
 * a trigram's hash in one multiply: its low bits (the dimension) take the
 * product's high half in, its top bit (the sign) is the product's
 */
static ngx_inline uint64_t
ngx_sf_trigram(uint64_t x)
{
    x = (x ^ NGX_SF_SEED_TRIGRAM) * NGX_SF_WORD_M;

    return x ^ ((x >> 32) & 0x7fffffff);
}


#define NGX_SF_SEQ_NUM  0
#define NGX_SF_SEQ_LEX  1

/* word order among shared content words: discordant pairs, per mille */
#define NGX_SMARTFLOW_CACHE_MAX_DISORDER  0

/* content words one side has and the other lacks, at most one fewer */
#define NGX_SMARTFLOW_CACHE_MAX_NOVEL     2


static char  *ngx_smartflow_cache_stops[] = {
    "a", "an", "the", "is", "are", "am", "was", "were", "be", "been",
    "being", "please", "can", "could", "would", "will", "shall", "should",
    "you", "me", "i", "my", "your", "we", "us", "our", "do", "does", "did",
    "s", "t", "re", "ll", "ve", "d", "m", "tell", "hey", "hi", "hello",
    "kindly", "just", "some", "any", "of", "for", "in", "on", "at", "by",
    "with", "about", "it", "its", "this", "that", "these", "those", "there",
    "what", "which", "who", "whom", "how", "why", "when", "where", "and",
    "or", "so", "as", "if", "then", "than", "to", "from", "into", "out",
    "explain", "describe", "give", "show", "know", "want", "need", "like",
    "really", "actually", "exactly", "briefly", "quick", "quickly", "way",
    "thanks", "thank", "ok", "okay", "also", "get", "have", "has", "had",
    "let", "help", "work", "mean", "meaning", "anyone", "someone", "one's",
    NULL
};


static char  *ngx_smartflow_cache_negations[] = {
    "not", "no", "never", "none", "nobody", "nothing", "neither", "nor",
    "nowhere", "without", "non", "cannot", NULL
};


/* words whose presence and order change the answer: compared in order */
static char  *ngx_smartflow_cache_lexicon[] = {
    /* units */
    "km", "kilometer", "kilometre", "mile", "meter", "metre", "cm",
    "centimeter", "mm", "millimeter", "kg", "kilogram", "gram", "lb",
    "pound", "ounce", "oz", "liter", "litre", "ml", "milliliter", "gallon",
    "cup", "tablespoon", "teaspoon", "celsius", "fahrenheit", "kelvin",
    "second", "minute", "hour", "day", "week", "month", "year", "decade",
    "century", "byte", "kb", "mb", "gb", "tb", "bit", "mph", "kph", "inch",
    "inche", "foot", "feet", "yard", "acre", "hectare", "calorie", "kcal",
    "joule", "watt", "kw", "kwh", "volt", "amp", "ohm", "hz", "ghz", "mhz",
    "hundred", "thousand", "million", "billion", "trillion", "dozen",
    "half", "quarter", "%",
    /* currencies */
    "usd", "eur", "gbp", "jpy", "cny", "inr", "chf", "cad", "aud", "yen",
    "yuan", "rupee", "franc", "peso", "bitcoin", "btc", "eth",
    /* programming languages and formats */
    "python", "java", "javascript", "typescript", "c", "c++", "c#", "f#",
    "go", "golang", "rust", "ruby", "php", "perl", "swift", "kotlin",
    "scala", "haskell", "sql", "bash", "shell", "powershell", "r",
    "matlab", "julia", "lua", "dart", "elixir", "erlang", "clojure",
    "html", "css", "fortran", "cobol", "assembly", "json", "yaml", "xml",
    "csv", "node", "react", "angular", "vue", "django", "flask", "linux",
    "window", "windows", "macos", "mac", "android", "ios",
    /* opposites */
    "more", "less", "fewer", "before", "after", "above", "below", "over",
    "under", "min", "max", "minimum", "maximum", "increase", "decrease",
    "buy", "sell", "add", "remove", "delete", "enable", "disable",
    "encrypt", "decrypt", "encode", "decode", "import", "export",
    "upload", "download", "first", "last", "largest", "smallest",
    "biggest", "highest", "lowest", "best", "worst", "pro", "con",
    "advantage", "disadvantage", "open", "close", "start", "stop", "push",
    "pull", "input", "output", "male", "female", "left", "right", "up",
    "down", "north", "south", "east", "west", "ascending", "descending",
    "win", "lose", "rise", "fall", "hot", "cold", "true", "false", "yes",
    "old", "new", "young", "long", "short", "fast", "slow", "cheap",
    "expensive", "positive", "negative", "inside", "outside", "send",
    "receive", "lend", "borrow", "teacher", "student", "parent", "child",
    "server", "client", "read", "write", "sum", "difference", "product",
    "multiply", "divide", "subtract", "plus", "minus", "times",
    "tomorrow", "yesterday", "today", "morning", "evening", "night",
    /* days and months */
    "monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
    "sunday", "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
    NULL
};


static ngx_smartflow_cache_map_t  ngx_smartflow_cache_spellings[] = {
    { "zero", "0" }, { "one", "1" }, { "two", "2" }, { "three", "3" },
    { "four", "4" }, { "five", "5" }, { "six", "6" }, { "seven", "7" },
    { "eight", "8" }, { "nine", "9" }, { "ten", "10" }, { "eleven", "11" },
    { "twelve", "12" }, { "thirteen", "13" }, { "fourteen", "14" },
    { "fifteen", "15" }, { "sixteen", "16" }, { "seventeen", "17" },
    { "eighteen", "18" }, { "nineteen", "19" }, { "twenty", "20" },
    { "thirty", "30" }, { "forty", "40" }, { "fifty", "50" },
    { "sixty", "60" }, { "seventy", "70" }, { "eighty", "80" },
    { "ninety", "90" }, { "dollar", "usd" }, { "dollars", "usd" },
    { "euro", "eur" }, { "euros", "eur" }, { "percent", "%" },
    { "kilometers", "km" }, { "kilometres", "km" }, { "kilometer", "km" },
    { "kilometre", "km" }, { "kilograms", "kg" }, { "kilogram", "kg" },
    { "js", "javascript" }, { "golang", "go" }, { "cpp", "c++" },
    { "csharp", "c#" }, { "ts", "typescript" }, { "py", "python" },
    { NULL, NULL }
};


#define NGX_SF_WORDS           2048     /* hash table slots, a power of 2 */
#define NGX_SF_WORD_STOP       1
#define NGX_SF_WORD_NEG        2
#define NGX_SF_WORD_LEX        4
#define NGX_SF_WORD_SPELLING   8

typedef struct {
    char                       *word;
    size_t                      len;
    ngx_uint_t                  what;
    ngx_int_t                   map;       /* in the spellings */
} ngx_smartflow_cache_word_t;

static ngx_smartflow_cache_word_t  ngx_smartflow_cache_words[NGX_SF_WORDS];
static uint32_t                    ngx_smartflow_cache_word_tags[NGX_SF_WORDS];
static ngx_uint_t                  ngx_smartflow_cache_words_ready;

/*
 * how many bytes of tokens one byte of text may give at most: "$" gives
 * "usd", and a spelling its word ("js" gives "javascript")
 */
static size_t                      ngx_smartflow_cache_grow = 3;

/* bytes by class, made at the first use: a test is one load */
#define NGX_SF_CH_WORD   1      /* a letter, a digit, '_', a byte >= 0x80 */
#define NGX_SF_CH_UPPER  2

static u_char  ngx_sf_ch[256], ngx_sf_lower[256], ngx_sf_ch_ready;


static void
ngx_smartflow_cache_chars_init(void)
{
    ngx_uint_t  i;
    u_char      c;

    for (i = 0; i < 256; i++) {
        c = (u_char) i;
        ngx_sf_ch[i] = ((ngx_sf_isalnum(c) || c == '_' || c >= 0x80)
                        ? NGX_SF_CH_WORD : 0)
                       | ((c >= 'A' && c <= 'Z') ? NGX_SF_CH_UPPER : 0);
        ngx_sf_lower[i] = (c >= 'A' && c <= 'Z') ? (c | 0x20) : c;
    }

    ngx_sf_ch_ready = 1;
}


ngx_int_t
ngx_smartflow_cache_tokenize(ngx_pool_t *pool, u_char *p, size_t len,
    ngx_smartflow_cache_text_t *t)
{
    u_char     *end, *start, *buf, *w, *s, c;
    size_t      n, wl;
    ngx_uint_t  sentence, cap, upper;

    if (!ngx_sf_ch_ready) {
        ngx_smartflow_cache_chars_init();
    }

    /* the spellings tell how much the tokens may outgrow the text */
    if (!ngx_smartflow_cache_words_ready) {
        ngx_smartflow_cache_words_init();
    }

    /* a token takes a byte of text at least; "n't" gives two from three */
    t->n = 0;
    t->max = ngx_min(len + 2, NGX_SMARTFLOW_CACHE_MAX_TOKENS);
    t->tok = ngx_palloc(pool, sizeof(ngx_smartflow_cache_tok_t) * t->max);
    buf = ngx_pnalloc(pool, ngx_smartflow_cache_grow * len + 16
                            + NGX_SF_WORD_PAD);

    if (t->tok == NULL || buf == NULL) {
        return NGX_ERROR;
    }

    end = p + len;
    start = p;
    sentence = 1;

    while (p < end && t->n + 2 < t->max) {
        c = *p;

        /* euro and pound signs, typographic apostrophes */
        if (c == 0xE2 && end - p > 2 && p[1] == 0x82 && p[2] == 0xAC) {
            (void) ngx_smartflow_cache_emit(t, &buf, (u_char *) "eur", 3, 0);
            p += 3;
            continue;
        }

        if (c == 0xC2 && end - p > 1 && p[1] == 0xA3) {
            (void) ngx_smartflow_cache_emit(t, &buf, (u_char *) "gbp", 3, 0);
            p += 2;
            continue;
        }

        if (c == '$') {
            (void) ngx_smartflow_cache_emit(t, &buf, (u_char *) "usd", 3, 0);
            p++;
            continue;
        }

        if (c == '%') {
            (void) ngx_smartflow_cache_emit(t, &buf, (u_char *) "%", 1, 0);
            p++;
            continue;
        }

        if ((c >= '0' && c <= '9')
            || ((c == '-' || c == '.') && end - p > 1
                && p[1] >= '0' && p[1] <= '9'
                && (t->n == 0 || p == start || !ngx_sf_isalnum(p[-1]))))
        {
            /* a number: separators of thousands dropped, one sign kept */
            w = buf;

            if (c == '-' || c == '.') {
                *w++ = c == '.' ? '0' : '-';
                if (c == '.') {
                    *w++ = '.';
                }
                p++;
            }

            while (p < end) {
                if (*p >= '0' && *p <= '9') {
                    *w++ = *p++;
                    continue;
                }

                if (*p == ',' && end - p > 3 && ngx_sf_isdigit(p[1])
                    && ngx_sf_isdigit(p[2]) && ngx_sf_isdigit(p[3])
                    && (end - p == 4 || !ngx_sf_isdigit(p[4])))
                {
                    p++;
                    continue;
                }

                if (*p == '.' && end - p > 1 && ngx_sf_isdigit(p[1])) {
                    *w++ = *p++;
                    continue;
                }

                break;
            }

            (void) ngx_smartflow_cache_emit(t, &buf, buf, w - buf, 0);
            t->tok[t->n - 1].num = 1;
            sentence = 0;
            start = p;
            continue;
        }

        if (ngx_sf_isalnum(c) || c >= 0x80) {
            start = p;
            upper = 0;

            while (p < end && (ngx_sf_ch[*p] & NGX_SF_CH_WORD)) {
                if (*p == 0xE2 && end - p > 2 && p[1] == 0x80
                    && (p[2] == 0x99 || p[2] == 0x98))
                {
                    /* a typographic apostrophe ends the word */
                    break;
                }

                upper |= (ngx_sf_ch[*p] & NGX_SF_CH_UPPER) && p != start;
                p++;
            }

            if (p == start) {
                /* a typographic quote where a word would begin */
                p++;
                continue;
            }

            while (p < end && (*p == '+' || *p == '#') && p - start < 8) {
                p++;
            }

            wl = p - start;
            cap = (c >= 'A' && c <= 'Z' && !sentence) || (upper && wl > 1);

            if (wl == 1 && c == 'I') {
                cap = 0;
            }

            /* an apostrophe and what follows it */
            s = NULL;
            n = 0;

            if (p < end && (*p == '\'' || (*p == 0xE2 && end - p > 2
                                           && p[1] == 0x80
                                           && (p[2] == 0x99
                                               || p[2] == 0x98))))
            {
                s = p + (*p == '\'' ? 1 : 3);
                for (n = 0; s + n < end && ngx_sf_isalpha(s[n]); n++) {
                    /* void */
                }
            }

            if (s && n == 1 && (s[0] == 't' || s[0] == 'T') && wl > 1
                && (start[wl - 1] == 'n' || start[wl - 1] == 'N'))
            {
                if (wl == 3 && ngx_strncasecmp(start, (u_char *) "can", 3)
                               == 0)
                {
                    (void) ngx_smartflow_cache_emit(t, &buf, start, 3, 0);

                } else if (wl == 3
                           && ngx_strncasecmp(start, (u_char *) "won", 3)
                              == 0)
                {
                    (void) ngx_smartflow_cache_emit(t, &buf,
                                                    (u_char *) "will", 4, 0);

                } else {
                    (void) ngx_smartflow_cache_emit(t, &buf, start, wl - 1,
                                                    cap);
                }

                (void) ngx_smartflow_cache_emit(t, &buf, (u_char *) "not", 3,
                                                0);
                p = s + n;

            } else if (wl == 6
                       && ngx_strncasecmp(start, (u_char *) "cannot", 6) == 0)
            {
                (void) ngx_smartflow_cache_emit(t, &buf, start, 3, 0);
                (void) ngx_smartflow_cache_emit(t, &buf, (u_char *) "not", 3,
                                                0);

            } else {
                (void) ngx_smartflow_cache_emit(t, &buf, start, wl, cap);

                if (s && n) {
                    /* 's 're 'll 've 'd 'm: the word is enough */
                    p = s + n;
                }
            }

            sentence = 0;
            start = p;
            continue;
        }

        if (c == '.' || c == '?' || c == '!' || c == ':' || c == ';'
            || c == '\n')
        {
            sentence = 1;
        }

        p++;
        start = p;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_smartflow_cache_emit(ngx_smartflow_cache_text_t *t, u_char **buf,
    u_char *p, size_t len, ngx_uint_t cap)
{
    u_char                     *d;
    size_t                      i;
    ngx_int_t                   map, w;
    ngx_smartflow_cache_map_t  *m;
    ngx_smartflow_cache_tok_t  *tk;

    if (len == 0) {
        return NGX_OK;
    }

    d = *buf;

    /* p may already be d (numbers are written in place) */
    for (i = 0; i < len; i++) {
        d[i] = ngx_sf_lower[p[i]];
    }

    w = ngx_smartflow_cache_word(d, len, &map);

    if (w & NGX_SF_WORD_SPELLING) {
        m = &ngx_smartflow_cache_spellings[map];
        len = ngx_strlen(m->to);
        ngx_memcpy(d, m->to, len);
        cap = 0;

        /* the word is another now */
        w = -1;
    }

    tk = &t->tok[t->n++];
    ngx_memzero(tk, sizeof(ngx_smartflow_cache_tok_t));

    tk->data = d;
    tk->len = len;
    tk->cap = cap;

    ngx_smartflow_cache_classify(tk, w);

    *buf = d + len;

    return NGX_OK;
}


/* w: the word's classes as the lookup of its text gave them, -1: none */
static void
ngx_smartflow_cache_classify(ngx_smartflow_cache_tok_t *tk, ngx_int_t w)
{
    u_char     *d;
    size_t      len;
    ngx_int_t   map;

    d = tk->data;
    len = tk->len;

    tk->stem = len;
    tk->num = (d[0] >= '0' && d[0] <= '9')
              || (len > 1 && d[0] == '-' && d[1] >= '0' && d[1] <= '9');

    if (tk->num) {
        return;
    }

    /* plural -s, not -ss, -us, -is */
    if (len >= 4 && d[len - 1] == 's' && d[len - 2] != 's'
        && d[len - 2] != 'u' && d[len - 2] != 'i')
    {
        tk->stem = len - 1;
    }

    if (w < 0) {
        w = ngx_smartflow_cache_word(d, len, &map);
    }

    tk->stop = (w & NGX_SF_WORD_STOP) != 0;
    tk->neg = (w & NGX_SF_WORD_NEG) != 0;
    tk->lex = (w & NGX_SF_WORD_LEX)
              || (tk->stem != len
                  && (ngx_smartflow_cache_word(d, tk->stem, &map)
                      & NGX_SF_WORD_LEX));

    if (tk->stop || tk->neg) {
        tk->cap = 0;
    }
}


/*
 * The word lists in one hash table, made at the first use: a token is
 * classified by one lookup, not by reading the lists.
 */
static void
ngx_smartflow_cache_words_init(void)
{
    char       **w;
    size_t       from, to;
    ngx_int_t    i;

    for (w = ngx_smartflow_cache_stops; *w; w++) {
        ngx_smartflow_cache_words_add(*w, NGX_SF_WORD_STOP, -1);
    }

    for (w = ngx_smartflow_cache_negations; *w; w++) {
        ngx_smartflow_cache_words_add(*w, NGX_SF_WORD_NEG, -1);
    }

    for (w = ngx_smartflow_cache_lexicon; *w; w++) {
        ngx_smartflow_cache_words_add(*w, NGX_SF_WORD_LEX, -1);
    }

    for (i = 0; ngx_smartflow_cache_spellings[i].from; i++) {
        ngx_smartflow_cache_words_add(ngx_smartflow_cache_spellings[i].from,
                                      NGX_SF_WORD_SPELLING, i);

        from = ngx_strlen(ngx_smartflow_cache_spellings[i].from);
        to = ngx_strlen(ngx_smartflow_cache_spellings[i].to);

        ngx_smartflow_cache_grow = ngx_max(ngx_smartflow_cache_grow,
                                           (to + from - 1) / from);
    }

    ngx_smartflow_cache_words_ready = 1;
}


/*
 * A slot's tag: 32 bits of the word's hash, never 0 (an empty slot).  A
 * lookup reads the tags, 8 KB that stay in the cache, and a slot itself
 * only when its tag is the word's.
 */
#define ngx_sf_word_tag(h)  ((uint32_t) ((h) >> 32) | 1)


static void
ngx_smartflow_cache_words_add(char *w, ngx_uint_t what, ngx_int_t map)
{
    size_t                       len;
    uint32_t                     tag;
    uint64_t                     h;
    ngx_uint_t                   i;
    ngx_smartflow_cache_word_t  *e;

    len = ngx_strlen(w);
    h = ngx_sf_fin(ngx_sf_word_read((u_char *) w, len, 0));
    tag = ngx_sf_word_tag(h);
    i = h & (NGX_SF_WORDS - 1);

    for ( ;; ) {
        e = &ngx_smartflow_cache_words[i];

        if (ngx_smartflow_cache_word_tags[i] == 0) {
            ngx_smartflow_cache_word_tags[i] = tag;
            e->word = w;
            e->len = len;
            e->map = -1;
            break;
        }

        if (ngx_smartflow_cache_word_tags[i] == tag && e->len == len
            && ngx_memcmp(e->word, w, len) == 0)
        {
            break;
        }

        i = (i + 1) & (NGX_SF_WORDS - 1);
    }

    e->what |= what;

    /* the first spelling listed wins */
    if (map >= 0 && e->map < 0) {
        e->map = map;
    }
}


/*
 * which lists the word is in (NGX_SF_WORD_*), 0 in none; called while
 * ngx_smartflow_cache_tokenize() runs, which made the lists first
 */
static ngx_uint_t
ngx_smartflow_cache_word(u_char *p, size_t len, ngx_int_t *map)
{
    uint32_t                     tag, t;
    uint64_t                     h;
    ngx_uint_t                   i;
    ngx_smartflow_cache_word_t  *e;

    h = ngx_sf_hash(p, len);
    tag = ngx_sf_word_tag(h);
    i = h & (NGX_SF_WORDS - 1);

    for ( ;; ) {
        t = ngx_smartflow_cache_word_tags[i];

        if (t == 0) {
            return 0;
        }

        if (t == tag) {
            e = &ngx_smartflow_cache_words[i];

            if (e->len == len && ngx_memcmp(e->word, p, len) == 0) {
                *map = e->map;
                return e->what;
            }
        }

        i = (i + 1) & (NGX_SF_WORDS - 1);
    }
}


ngx_int_t
ngx_smartflow_cache_normalise(ngx_pool_t *pool,
    ngx_smartflow_cache_text_t *t, ngx_str_t *out)
{
    u_char      *p;
    size_t       len;
    ngx_uint_t   i;

    len = 1;

    for (i = 0; i < t->n; i++) {
        len += t->tok[i].len + 1;
    }

    out->data = ngx_pnalloc(pool, len);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    p = out->data;

    for (i = 0; i < t->n; i++) {
        if (i) {
            *p++ = ' ';
        }

        p = ngx_cpymem(p, t->tok[i].data, t->tok[i].len);
    }

    out->len = p - out->data;

    return NGX_OK;
}


/* the weight w of feature h at h mod dim */
#define ngx_sf_feature(h, w)                                                 \
    i = mask ? ((h) & mask) : ((h) % dim);                                   \
    v[i] += ((h) >> 63) ? -(w) : (w)


/*
 * One pass over the tokens for the builtin embedding (v, dim floats) and
 * the MinHash signature (sig), either may be NULL.  The embedding: each
 * content word (1.0), it with the next content word (0.8) and the
 * character trigrams of "#word#" (0.25), hashed with a sign into dim
 * floats, L2-normalised; the shingles of the signature: each content word
 * and it with the next.  The norm sums the squares in eight running sums,
 * dimension i in sum i mod 8, which the compiler keeps in vector
 * registers; the order is fixed, so every worker gets the same floats.
 */
void
ngx_smartflow_cache_sketch(ngx_smartflow_cache_text_t *t, uint32_t *sig,
    float *v, ngx_uint_t dim)
{
    u_char                     *d;
    size_t                      s, k;
    float                       scale, sq[8];
    double                      norm;
    uint64_t                    h, hw, hp, x, mask;
    uint64_t                    hs[NGX_SMARTFLOW_CACHE_MH_BATCH];
    ngx_uint_t                  i, j, nj, b, n, all;
    ngx_smartflow_cache_tok_t  *tk, *next;

    if (v) {
        ngx_memzero(v, dim * sizeof(float));
        mask = ((dim & (dim - 1)) == 0) ? dim - 1 : 0;

    } else {
        mask = 0;
    }

    if (sig) {
        for (k = 0; k < NGX_SMARTFLOW_CACHE_MINHASH; k++) {
            sig[k] = 0xffffffff;
        }
    }

    /* a prompt of function words only is embedded by those */
    all = 1;

    for (j = 0; j < t->n; j++) {
        if (!t->tok[j].stop) {
            all = 0;
            break;
        }
    }

    if (all) {
        /* ... and has no shingle: no near miss can match it */
        if (sig) {
            for (k = 0; k < NGX_SMARTFLOW_CACHE_MINHASH; k++) {
                sig[k] = (uint32_t) k;
            }
        }

        sig = NULL;
        j = v ? 0 : t->n;
    }

    n = 0;
    hw = (j < t->n) ? ngx_sf_word(t->tok[j].data, t->tok[j].stem) : 0;

    while (j < t->n) {
        tk = &t->tok[j];

        for (nj = j + 1; nj < t->n && t->tok[nj].stop && !all; nj++) {
            /* void */
        }

        next = (nj < t->n) ? &t->tok[nj] : NULL;
        j = nj;

        /* the word's hash, and the next one's, which is the pair's too */
        h = hw;
        hw = next ? ngx_sf_word(next->data, next->stem) : 0;
        hp = ngx_sf_pair(h, hw);

        if (sig) {
            hs[n++] = ngx_sf_seeded(h, NGX_SF_SEED_MH_WORD);

            if (next) {
                hs[n++] = ngx_sf_seeded(hp, NGX_SF_SEED_MH_PAIR);
            }

            if (n + 2 > NGX_SMARTFLOW_CACHE_MH_BATCH) {
                ngx_smartflow_cache_minhash_add(hs, n, sig);
                n = 0;
            }
        }

        if (v == NULL) {
            continue;
        }

        h = ngx_sf_seeded(h, NGX_SF_SEED_WORD);
        ngx_sf_feature(h, 1.0f);

        if (next) {
            h = ngx_sf_seeded(hp, NGX_SF_SEED_PAIR);
            ngx_sf_feature(h, 0.8f);
        }

        /* character trigrams of "#stem#", the first byte highest */
        s = tk->stem;

        if (tk->num || s + 2 > 512 || s < 3) {
            continue;
        }

        d = tk->data;
        x = ('#' << 8) | d[0];

        for (k = 1; k < s; k++) {
            x = ((x << 8) | d[k]) & 0xffffff;
            h = ngx_sf_trigram(x);
            ngx_sf_feature(h, 0.25f);
        }

        x = ((x << 8) | '#') & 0xffffff;
        h = ngx_sf_trigram(x);
        ngx_sf_feature(h, 0.25f);
    }

    if (sig && n) {
        ngx_smartflow_cache_minhash_add(hs, n, sig);
    }

    if (v == NULL) {
        return;
    }

    for (b = 0; b < 8; b++) {
        sq[b] = 0;
    }

    for (i = 0; i + 8 <= dim; i += 8) {
        for (b = 0; b < 8; b++) {
            sq[b] += v[i + b] * v[i + b];
        }
    }

    for (b = 0; i < dim; i++, b++) {
        sq[b] += v[i] * v[i];
    }

    norm = 0;

    for (b = 0; b < 8; b++) {
        norm += sq[b];
    }

    if (norm > 0) {
        scale = (float) (1.0 / sqrt(norm));

        for (i = 0; i + 8 <= dim; i += 8) {
            for (b = 0; b < 8; b++) {
                v[i + b] *= scale;
            }
        }

        for ( /* void */ ; i < dim; i++) {
            v[i] *= scale;
        }
    }
}


void
ngx_smartflow_cache_embed(ngx_smartflow_cache_text_t *t, float *v,
    ngx_uint_t dim)
{
    ngx_smartflow_cache_sketch(t, NULL, v, dim);
}


/*
 * The signature: for each of the 64 hash functions, the least value it
 * gives any shingle.  A shingle's 64-bit hash h is folded to 32 bits,
 * a = lo(h) ^ hi(h); function k of it is
 *
 *     x = (a ^ S[k]) * A[k];  x ^= x >> 15;  x *= C;  x ^= x >> 12
 *
 * in 32 bits, with S[k] and A[k] (odd) drawn from a fixed sequence: each
 * function a bijection of a, the finish spreading the high bits of the
 * product into the low ones.  The shingles' hashes are gathered first,
 * then run through the 64 functions: 8 at a time with AVX2 where the CPU
 * has it, one at a time elsewhere; both give the same values.
 */

#define NGX_SMARTFLOW_CACHE_MH_K     0x9e3779b97f4a7c15ULL
#define NGX_SMARTFLOW_CACHE_MH_M     0xbf58476d1ce4e5b9ULL
#define NGX_SMARTFLOW_CACHE_MH_C     0x2c1b3c6dU


/*
 * S[k] and A[k]: x = K * (k + 1), x = (x ^ (x >> 31)) * M (mod 2^64),
 * S[k] its high half, A[k] its low half made odd
 */
static const uint32_t  ngx_sf_mh_s[NGX_SMARTFLOW_CACHE_MINHASH] = {
    0x642b3652, 0xc1787f83, 0x494d77f7, 0x42494674,
    0x1c13fe24, 0x18296bea, 0xbf24af57, 0x43ead455,
    0x46fa7f07, 0xf78043b5, 0x49340053, 0xb5e153cf,
    0x9d281644, 0x3da1a61c, 0x2d903b13, 0x80f7bb8a,
    0x76d4d885, 0x871710ee, 0x66be7b2c, 0xae58ced7,
    0x842fed9f, 0x17f67ca2, 0x84c69173, 0x2b1aef0c,
    0x0a77ab41, 0xf9a873f5, 0x54b03972, 0x00d1c835,
    0x28ac9788, 0x1a78bd93, 0xe64ec6e4, 0xfb1189f3,
    0xc4408e27, 0xe6cbc3e9, 0x6eb87154, 0xcd86694a,
    0x34cfc43c, 0x530b7254, 0xfea28a76, 0x1c09e51c,
    0x8a84067d, 0x0181ee1e, 0xf383fe58, 0xb57b753f,
    0xabe3991e, 0xc8e56a54, 0x72a92c55, 0x4f57f0f9,
    0x13451413, 0xd4479df0, 0x913a2b6a, 0xb2a92f58,
    0x9863737d, 0x2eeeeee1, 0x3d17ef44, 0xc0fbd7d7,
    0xe27e54b4, 0x4a7b41f0, 0x2dacc3f1, 0xba7ff722,
    0xe37a0d93, 0x8bf5d535, 0x6dfed767, 0xef4526c5
};

static const uint32_t  ngx_sf_mh_a[NGX_SMARTFLOW_CACHE_MINHASH] = {
    0x356ec46f, 0x87c26e97, 0xa5772b6f, 0x2c69c2e7,
    0x1cf616df, 0x67d33c97, 0xf068a33f, 0x75b86b87,
    0xb5afb23f, 0x56d11377, 0x9fac7c9f, 0xec8b5ee7,
    0x36c9dbcf, 0xfdb62c37, 0x31cc7a8f, 0x0855bcc7,
    0x4ede31cf, 0x88444a37, 0xe6b34c0f, 0xca870ca7,
    0x97fcdb5f, 0x5c3ddef7, 0x728ce13f, 0xf5fba387,
    0x883c72bf, 0x8a789d57, 0xfa86c69f, 0x18513e27,
    0x94e2b76f, 0x807ddad7, 0x40f8096f, 0x2d905f47,
    0x19fa546f, 0xbaa14957, 0x0334bb6f, 0x2d6d7a27,
    0xcc48401f, 0xea4b7dd7, 0x58ea603f, 0xb1f2ff07,
    0xfd50ecbf, 0x4cde9c77, 0xe420c95f, 0xd560a3a7,
    0x976b088f, 0x01fea837, 0xd1ce1fcf, 0x08dc2cc7,
    0xf574990f, 0x2d5dcb37, 0xfced61cf, 0x31d62067,
    0x6447261f, 0x11f272f7, 0x1151d7bf, 0x4d876207,
    0x71d54ebf, 0x46aa5497, 0x334fbcdf, 0x1de09b67,
    0xf298a86f, 0x9ed4f897, 0x114ecd6f, 0x7805a447
};


static ngx_inline uint32_t
ngx_smartflow_cache_mh_fn(uint32_t a, ngx_uint_t k)
{
    uint32_t  x;

    x = (a ^ ngx_sf_mh_s[k]) * ngx_sf_mh_a[k];
    x ^= x >> 15;
    x *= NGX_SMARTFLOW_CACHE_MH_C;
    x ^= x >> 12;

    return x;
}


static void
ngx_smartflow_cache_minhash_mix(uint32_t *a, ngx_uint_t n, uint32_t *sig)
{
    uint32_t    v;
    ngx_uint_t  i, k;

    for (k = 0; k < NGX_SMARTFLOW_CACHE_MINHASH; k++) {
        v = sig[k];

        for (i = 0; i < n; i++) {
            v = ngx_min(v, ngx_smartflow_cache_mh_fn(a[i], k));
        }

        sig[k] = v;
    }
}


#if (defined __x86_64__ && defined __GNUC__)

#include <immintrin.h>


static ngx_int_t  ngx_smartflow_cache_avx2 = -1;


/*
 * eight functions at a time over all the shingles, so that their
 * constants and the accumulator stay in registers
 */
__attribute__((target("avx2")))
static void
ngx_smartflow_cache_minhash_mix_avx2(uint32_t *a, ngx_uint_t n,
    uint32_t *sig)
{
    __m256i     s, m, c, acc, x;
    ngx_uint_t  i, k;

    c = _mm256_set1_epi32((int) NGX_SMARTFLOW_CACHE_MH_C);

    for (k = 0; k < NGX_SMARTFLOW_CACHE_MINHASH; k += 8) {
        s = _mm256_loadu_si256((const __m256i *) &ngx_sf_mh_s[k]);
        m = _mm256_loadu_si256((const __m256i *) &ngx_sf_mh_a[k]);
        acc = _mm256_loadu_si256((__m256i *) &sig[k]);

        for (i = 0; i < n; i++) {
            x = _mm256_xor_si256(_mm256_set1_epi32((int) a[i]), s);
            x = _mm256_mullo_epi32(x, m);
            x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 15));
            x = _mm256_mullo_epi32(x, c);
            x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 12));
            acc = _mm256_min_epu32(acc, x);
        }

        _mm256_storeu_si256((__m256i *) &sig[k], acc);
    }
}

#endif


static void
ngx_smartflow_cache_minhash_add(uint64_t *h, ngx_uint_t n, uint32_t *sig)
{
    uint32_t    a[NGX_SMARTFLOW_CACHE_MH_BATCH];
    ngx_uint_t  i;

    for (i = 0; i < n; i++) {
        a[i] = (uint32_t) h[i] ^ (uint32_t) (h[i] >> 32);
    }

#if (defined __x86_64__ && defined __GNUC__)

    if (ngx_smartflow_cache_avx2 == -1) {
        __builtin_cpu_init();
        ngx_smartflow_cache_avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
    }

    if (ngx_smartflow_cache_avx2) {
        ngx_smartflow_cache_minhash_mix_avx2(a, n, sig);
        return;
    }

#endif

    ngx_smartflow_cache_minhash_mix(a, n, sig);
}


/* for the tests: 0 makes the signature by the plain code, 1 as the CPU can */
void
ngx_smartflow_cache_minhash_simd(ngx_uint_t on)
{
#if (defined __x86_64__ && defined __GNUC__)
    ngx_smartflow_cache_avx2 = on ? -1 : 0;
#endif
}


void
ngx_smartflow_cache_minhash(ngx_smartflow_cache_text_t *t, uint32_t *sig)
{
    ngx_smartflow_cache_sketch(t, sig, NULL, 0);
}


/* a count of 32 bits: the compiler keeps four of them in a vector */
ngx_uint_t
ngx_smartflow_cache_minhash_sim(uint32_t *a, uint32_t *b)
{
    uint32_t    same;
    ngx_uint_t  k;

    same = 0;

    for (k = 0; k < NGX_SMARTFLOW_CACHE_MINHASH; k++) {
        same += (a[k] == b[k]);
    }

    return (ngx_uint_t) same * 1000 / NGX_SMARTFLOW_CACHE_MINHASH;
}


ngx_uint_t
ngx_smartflow_cache_cosine(float *a, float *b)
{
    double      dot;
    ngx_uint_t  i;

    dot = 0;

    for (i = 0; i < NGX_SMARTFLOW_CACHE_DIM; i++) {
        dot += (double) a[i] * b[i];
    }

    return dot <= 0 ? 0 : (ngx_uint_t) (dot * 1000 + 0.5);
}


/*
 * What the verification asks to be the same in a query and a candidate:
 * the numbers in order, the guarded words in order, and the number of
 * negations, hashed.  The zone groups entries by context and this key, so
 * phases 2 and 4 look only at entries the verification could accept.
 */
uint64_t
ngx_smartflow_cache_guard(ngx_smartflow_cache_text_t *t)
{
    uint64_t                    num, lex, neg;
    ngx_uint_t                  i;
    ngx_smartflow_cache_tok_t  *tk;

    num = 0x6e756d;
    lex = 0x6c6578;
    neg = 0;

    for (i = 0; i < t->n; i++) {
        tk = &t->tok[i];
        neg += tk->neg;

        if (tk->num) {
            num = ngx_sf_seeded(ngx_sf_word(tk->data, tk->stem), num);
        }

        if (tk->lex) {
            lex = ngx_sf_seeded(ngx_sf_word(tk->data, tk->stem), lex);
        }
    }

    return num ^ (lex * 0x9e3779b97f4a7c15ULL) ^ (neg << 56) ^ (neg >> 8);
}


ngx_uint_t
ngx_smartflow_cache_verify(ngx_smartflow_cache_text_t *q,
    ngx_smartflow_cache_text_t *c, char **reason)
{
    ngx_uint_t  i, nq, nc;

    /* function words only: nothing to compare, exact matches only */
    if (ngx_smartflow_cache_content(q) == 0
        || ngx_smartflow_cache_content(c) == 0)
    {
        *reason = "words";
        return 0;
    }

    if (!ngx_smartflow_cache_same_seq(q, c, NGX_SF_SEQ_NUM)) {
        *reason = "numbers";
        return 0;
    }

    nq = 0;
    nc = 0;

    for (i = 0; i < q->n; i++) {
        nq += q->tok[i].neg;
    }

    for (i = 0; i < c->n; i++) {
        nc += c->tok[i].neg;
    }

    if (nq != nc) {
        *reason = "negation";
        return 0;
    }

    if (!ngx_smartflow_cache_same_seq(q, c, NGX_SF_SEQ_LEX)) {
        *reason = "quantities";
        return 0;
    }

    if (!ngx_smartflow_cache_names(q, c)) {
        *reason = "names";
        return 0;
    }

    if (ngx_smartflow_cache_disorder(q, c) > NGX_SMARTFLOW_CACHE_MAX_DISORDER)
    {
        *reason = "order";
        return 0;
    }

    /* a content word swapped for another, or two words more or less */
    nq = ngx_smartflow_cache_novel(q, c);
    nc = ngx_smartflow_cache_novel(c, q);

    if ((nq && nc) || nq + nc >= NGX_SMARTFLOW_CACHE_MAX_NOVEL) {
        *reason = "words";
        return 0;
    }

    *reason = NULL;
    return 1;
}


static ngx_int_t
ngx_smartflow_cache_find(ngx_smartflow_cache_text_t *t,
    ngx_smartflow_cache_tok_t *tk)
{
    ngx_uint_t  i;

    for (i = 0; i < t->n; i++) {
        if (ngx_sf_tok_eq(&t->tok[i], tk)) {
            return i;
        }
    }

    return -1;
}


/* the numbers, or the guarded words, of both texts, equal and in order */
static ngx_uint_t
ngx_smartflow_cache_same_seq(ngx_smartflow_cache_text_t *a,
    ngx_smartflow_cache_text_t *b, ngx_uint_t what)
{
    ngx_uint_t                  i, j;
    ngx_smartflow_cache_tok_t  *x, *y;

    i = 0;
    j = 0;

    for ( ;; ) {
        for (x = NULL; i < a->n; i++) {
            if (what == NGX_SF_SEQ_NUM ? a->tok[i].num : a->tok[i].lex) {
                x = &a->tok[i++];
                break;
            }
        }

        for (y = NULL; j < b->n; j++) {
            if (what == NGX_SF_SEQ_NUM ? b->tok[j].num : b->tok[j].lex) {
                y = &b->tok[j++];
                break;
            }
        }

        if (x == NULL || y == NULL) {
            return x == y;
        }

        if (!ngx_sf_tok_eq(x, y)) {
            return 0;
        }
    }
}


/*
 * Names: every name in one text is a word of the other, and the names
 * come in the same order in both ("USD to EUR" is not "EUR to USD").
 */
static ngx_uint_t
ngx_smartflow_cache_names(ngx_smartflow_cache_text_t *q,
    ngx_smartflow_cache_text_t *c)
{
    ngx_int_t                   pos, last;
    ngx_uint_t                  i, k;
    ngx_smartflow_cache_tok_t  *tk;
    ngx_smartflow_cache_text_t *a, *b;

    for (k = 0; k < 2; k++) {
        a = k ? c : q;
        b = k ? q : c;

        for (i = 0; i < a->n; i++) {
            if (a->tok[i].cap && ngx_smartflow_cache_find(b, &a->tok[i]) < 0)
            {
                return 0;
            }
        }
    }

    /* the names of q in q's order, found in c at growing positions */
    last = -1;

    for (i = 0; i < q->n; i++) {
        tk = &q->tok[i];

        if (!tk->cap && !(ngx_smartflow_cache_find(c, tk) >= 0
                          && c->tok[ngx_smartflow_cache_find(c, tk)].cap))
        {
            continue;
        }

        if (ngx_smartflow_cache_find(q, tk) != (ngx_int_t) i) {
            continue;      /* a repeated name counts once */
        }

        pos = ngx_smartflow_cache_find(c, tk);
        if (pos <= last) {
            return 0;
        }

        last = pos;
    }

    return 1;
}


/*
 * The content words both texts share, taken in the query's order: the
 * share of their pairs that come in the other order in the candidate,
 * per mille.
 */
static ngx_uint_t
ngx_smartflow_cache_disorder(ngx_smartflow_cache_text_t *q,
    ngx_smartflow_cache_text_t *c)
{
    ngx_int_t   pos[128], p;
    ngx_uint_t  i, j, n, pairs, bad;

    n = 0;

    for (i = 0; i < q->n && n < 128; i++) {
        if (q->tok[i].stop
            || ngx_smartflow_cache_find(q, &q->tok[i]) != (ngx_int_t) i)
        {
            continue;
        }

        p = ngx_smartflow_cache_find(c, &q->tok[i]);
        if (p >= 0) {
            pos[n++] = p;
        }
    }

    pairs = 0;
    bad = 0;

    for (i = 0; i < n; i++) {
        for (j = i + 1; j < n; j++) {
            pairs++;
            bad += (pos[i] > pos[j]);
        }
    }

    return pairs ? bad * 1000 / pairs : 0;
}


/* a's content words that b lacks, even as a prefix (a stem) */
static ngx_uint_t
ngx_smartflow_cache_novel(ngx_smartflow_cache_text_t *a,
    ngx_smartflow_cache_text_t *b)
{
    size_t                      m;
    ngx_uint_t                  i, j, n, found;
    ngx_smartflow_cache_tok_t  *x, *y;

    n = 0;

    for (i = 0; i < a->n; i++) {
        x = &a->tok[i];

        if (x->stop || x->num) {
            continue;
        }

        found = 0;

        for (j = 0; j < b->n && !found; j++) {
            y = &b->tok[j];
            m = ngx_min(x->stem, y->stem);

            /* "fast" and "faster", "explain" and "explanation" */
            found = (m >= 4 && ngx_memcmp(x->data, y->data, m) == 0)
                    || ngx_sf_tok_eq(x, y);
        }

        n += !found;
    }

    return n;
}


/*
 * A sign that changes a meaning where it stands: "+", "#", "$", "%" and
 * the operators "<", ">", "=", "*", "/", "^", "~", "|", "&"; "." before a
 * digit (".5"); "-" when the next sign that is not a space is a digit or
 * "(" ("-3", "5 - 3"); "!" before "=" ("!=")
 */
static ngx_inline ngx_uint_t
ngx_sf_sign(u_char *p, u_char *end)
{
    u_char  *q;

    switch (*p) {

    case '+': case '#': case '$': case '%': case '<': case '>': case '=':
    case '*': case '/': case '^': case '~': case '|': case '&':
        return 1;

    case '.':
        return (p + 1 < end && ngx_sf_isdigit(p[1]));

    case '-':
        for (q = p + 1; q < end && *q == ' '; q++) { /* void */ }
        return (q < end && (ngx_sf_isdigit(*q) || *q == '('));

    case '!':
        return (p + 1 < end && p[1] == '=');
    }

    return 0;
}


/*
 * The signs of a text (ngx_sf_sign) in their order, hashed: phases 2 and
 * 4 compare only questions with the same ("3 > 2" and "3 < 2" share their
 * words and numbers); 0 for a text without any
 */
uint64_t
ngx_smartflow_cache_signs(u_char *p, size_t len)
{
    u_char    *end;
    uint64_t   h;

    h = 0;

    for (end = p + len; p < end; p++) {
        if (!ngx_sf_isalnum(*p) && *p < 0x80 && ngx_sf_sign(p, end)) {
            h = (h ^ *p) * 0x100000001b3ULL + 1;
        }
    }

    return h;
}


/*
 * Phase 1's form of any text, without a length limit: lower case, runs of
 * anything but letters, digits and the signs that change a meaning ("c++",
 * "c#", "$5", "-3", "5 - 3", "2.5", "50%", "3 > 2", "x != y", "a && b",
 * "5 / 3") folded into one space.  out has room for len bytes; returns
 * its end.
 */
u_char *
ngx_smartflow_cache_fold(u_char *out, u_char *p, size_t len)
{
    u_char      *end, *start;
    ngx_uint_t   space;

    end = p + len;
    start = out;
    space = 0;

    for ( /* void */ ; p < end; p++) {

        if (ngx_sf_isalnum(*p) || *p >= 0x80 || ngx_sf_sign(p, end)) {
            if (space && out != start) {
                *out++ = ' ';
            }

            space = 0;
            *out++ = (*p >= 'A' && *p <= 'Z') ? (*p | 0x20) : *p;
            continue;
        }

        space = 1;
    }

    return out;
}


/* how many content words (not function words) a text has */
ngx_uint_t
ngx_smartflow_cache_content(ngx_smartflow_cache_text_t *t)
{
    ngx_uint_t  i, n;

    for (n = 0, i = 0; i < t->n; i++) {
        n += !t->tok[i].stop;
    }

    return n;
}
