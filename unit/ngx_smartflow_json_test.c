/*
 * The JSON reader and writer, case by case: what RFC 8259 accepts and
 * refuses, strings unescaped to UTF-8, numbers kept as written, the
 * nesting limit, and a dump that writes the tree back.  Printed as TAP.
 */

#include "ngx_smartflow_unit.h"


/* the dump of a parse, or "(refused)" */
static char *
P(const char *s, size_t len)
{
    ngx_str_t              err;
    ngx_smartflow_json_t  *j;

    j = ngx_smartflow_json_parse(&unit_pool, (u_char *) s, len, &err);

    return j ? D(j) : "(refused)";
}


#define parses(s, dump, name)  is(P(s, sizeof(s) - 1), dump, name)
#define refuses(s, name)       is(P(s, sizeof(s) - 1), "(refused)", name)


/* the first string member's bytes, in hex */
static char *
H(const char *s)
{
    char                  *h, *p;
    size_t                 i;
    ngx_smartflow_json_t  *j, *c;

    j = J(s);
    c = j->child;

    h = ngx_pnalloc(&unit_pool, 2 * c->str.len + 1);
    if (h == NULL) {
        abort();
    }

    for (i = 0, p = h; i < c->str.len; i++, p += 2) {
        sprintf(p, "%02x", c->str.data[i]);
    }

    *p = '\0';

    return h;
}


static void
nesting(void)
{
    char        deep[2 * NGX_SMARTFLOW_JSON_MAX_DEPTH + 3];
    size_t      n;
    ngx_str_t   err;

    for (n = 0; n < NGX_SMARTFLOW_JSON_MAX_DEPTH; n++) {
        deep[n] = '[';
        deep[2 * NGX_SMARTFLOW_JSON_MAX_DEPTH - 1 - n] = ']';
    }

    n = 2 * NGX_SMARTFLOW_JSON_MAX_DEPTH;

    ok(ngx_smartflow_json_parse(&unit_pool, (u_char *) deep, n, &err)
       != NULL, "nesting: the limit itself parses");

    memmove(deep + 1, deep, n);
    deep[0] = '[';
    deep[n + 1] = ']';

    ok(ngx_smartflow_json_parse(&unit_pool, (u_char *) deep, n + 2, &err)
       == NULL, "nesting: one level more is refused");
    ok(err.len == sizeof("JSON nested too deeply") - 1
       && memcmp(err.data, "JSON nested too deeply", err.len) == 0,
       "nesting: and says why");
}


/* the usage counts of an answer fed in pieces of every size */
static void
usage(const char *answer, ngx_uint_t prompt, ngx_uint_t completion,
    const char *name)
{
    char                        msg[256];
    size_t                      len, piece, i;
    ngx_uint_t                  bad;
    ngx_smartflow_usage_scan_t  us;

    len = strlen(answer);
    bad = 0;

    for (piece = 1; piece <= len; piece++) {
        ngx_smartflow_usage_scan_init(&us);

        for (i = 0; i < len; i += piece) {
            ngx_smartflow_usage_scan(&us, (u_char *) answer + i,
                                     len - i < piece ? len - i : piece);
        }

        ngx_smartflow_usage_scan(&us, NULL, 0);

        if (us.prompt != prompt || us.completion != completion) {
            if (bad++ == 0) {
                printf("# pieces of %zu: prompt %lu completion %lu\n", piece,
                       (unsigned long) us.prompt,
                       (unsigned long) us.completion);
            }
        }
    }

    snprintf(msg, sizeof(msg), "usage: %s, in pieces of every size", name);
    ok(bad == 0, msg);
}


int
main(void)
{
    ngx_str_t              err;
    ngx_smartflow_json_t  *j;

    /* values and white space */

    parses("{\"a\":1,\"b\":[true,false,null],\"c\":{}}",
           "{\"a\":1,\"b\":[true,false,null],\"c\":{}}", "an object");
    parses(" \t\r\n[ 1 , \"x\" ]\n ", "[1,\"x\"]", "white space around");
    parses("\"alone\"", "\"alone\"", "a string alone");
    parses("-0", "-0", "a number alone");
    parses("[]", "[]", "an empty array");
    parses("{\"a\":{\"b\":{\"c\":[[],{}]}}}", "{\"a\":{\"b\":{\"c\":[[],{}]}}}",
           "empty containers, nested");
    parses("{\"k\":1,\"k\":2}", "{\"k\":1,\"k\":2}", "duplicate names kept");

    j = J("{\"k\":1,\"k\":2}");
    is(D(ngx_smartflow_json_get(j, "k")), "2", "the last duplicate wins");

    /* numbers, kept as written */

    parses("[0,-1,12.50,1e3,1E+3,-2.5e-03,123456789012345678901234567890]",
           "[0,-1,12.50,1e3,1E+3,-2.5e-03,123456789012345678901234567890]",
           "numbers keep their text");
    refuses("[01]", "a leading zero");
    refuses("[1.]", "a point without digits");
    refuses("[.5]", "no digit before the point");
    refuses("[1e]", "an exponent without digits");
    refuses("[+1]", "a plus sign");
    refuses("[-]", "a minus alone");
    refuses("[NaN]", "NaN");
    refuses("[0x10]", "hexadecimal");

    /* strings */

    is(H("{\"s\":\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\"}"),
       "6122625c632f64080c0a0d09", "the two-character escapes");
    is(H("{\"s\":\"\\u00e9\\u4E2D\"}"), "c3a9e4b8ad",
       "\\u escapes become UTF-8");
    is(H("{\"s\":\"\\ud83d\\ude00\"}"), "f09f9880",
       "a surrogate pair becomes one character");
    is(H("{\"s\":\"\\ud800x\"}"), "efbfbd78",
       "a lone high surrogate becomes U+FFFD");
    is(H("{\"s\":\"\\udc00\"}"), "efbfbd", "a lone low surrogate too");
    is(H("{\"s\":\"\\u0000\"}"), "00", "an escaped NUL is kept");
    is(H("{\"s\":\"h\xc3\xa9llo \xf0\x9f\x98\x80\"}"),
       "68c3a96c6c6f20f09f9880", "UTF-8 passes as it is");
    is(H("{\"s\":\"0123456789abcdef\\n0123456789abcdef\"}"),
       "30313233343536373839616263646566"
       "0a30313233343536373839616263646566",
       "long runs around an escape");

    j = J("{\"e\":\"\"}");
    ok(j->child->str.len == 0 && j->child->str.data == NULL,
       "an empty string has no data");

    parses("{\"a\\u0062c\":1}", "{\"abc\":1}", "names are unescaped too");

    refuses("[\"abc]", "an unterminated string");
    refuses("[\"a\nb\"]", "a raw line feed in a string");
    refuses("[\"a\x01\"]", "a raw control character");
    refuses("[\"\\x41\"]", "an unknown escape");
    refuses("[\"\\u12\"]", "a short \\u escape");
    refuses("[\"\\u12g4\"]", "a \\u escape that is not hex");
    refuses("[\"\\", "a backslash at the end");
    refuses("[\"\xff\"]", "a byte that is never UTF-8");
    refuses("[\"\xc0\xaf\"]", "an overlong form");
    refuses("[\"\xe0\x80\xaf\"]", "an overlong three-byte form");
    refuses("[\"\xed\xa0\x80\"]", "a surrogate encoded as UTF-8");
    refuses("[\"\xf4\x90\x80\x80\"]", "above U+10FFFF");
    refuses("[\"\xe4\xb8\"]", "a character cut short");
    refuses("[\"\xc3\"", "a character cut at the end");

    /* structure */

    refuses("", "nothing");
    refuses("  ", "only white space");
    refuses("{\"a\":1,}", "a trailing comma in an object");
    refuses("[1,]", "a trailing comma in an array");
    refuses("[1 2]", "a missing comma");
    refuses("{\"a\" 1}", "a missing colon");
    refuses("{a:1}", "a bare name");
    refuses("{1:1}", "a number as a name");
    refuses("[1}", "mismatched brackets");
    refuses("{\"a\":1", "an unclosed object");
    refuses("[[1]", "an unclosed array");
    refuses("1 2", "two values");
    refuses("{} x", "garbage after the value");
    refuses("[tru]", "a cut literal");
    refuses("[True]", "a literal in capitals");
    refuses("\xef\xbb\xbf{}", "a byte order mark");
    refuses("\v{}", "a vertical tab is not white space");
    refuses("// c\n{}", "a comment");

    ok(ngx_smartflow_json_parse(&unit_pool, (u_char *) "{\"a\":tru", 8, &err)
       == NULL && err.len > 0
       && memcmp(err.data, "invalid JSON near byte 5", err.len) == 0,
       "the error names the byte");

    /* the input is copied: the tree outlives a reused buffer */
    {
        char  buf[] = "{\"k\":\"value\"}";

        j = ngx_smartflow_json_parse(&unit_pool, (u_char *) buf,
                                     sizeof(buf) - 1, &err);
        memset(buf, 'x', sizeof(buf) - 1);
        is(D(j), "{\"k\":\"value\"}", "the tree does not point into the input");
    }

    /* a dump escapes what it must */
    is(D(J("[\"\\u0001\\u001f\\\"\\\\/\\u007f\"]")),
       "[\"\\u0001\\u001f\\\"\\\\/\x7f\"]", "the writer escapes controls");

    nesting();

    /* the usage lexer */

    usage("{\"id\":\"chatcmpl-1\",\"choices\":[{\"message\":{\"content\":"
          "\"a \\\"usage\\\": {\\\"prompt_tokens\\\": 99} [\"}}],"
          "\"usage\":{\"prompt_tokens\":71,\"completion_tokens\":45,"
          "\"total_tokens\":116,\"prompt_tokens_details\":"
          "{\"cached_tokens\":7}}}", 71, 45, "OpenAI, text that looks alike");
    usage("{\"type\":\"message\",\"usage\":{\"input_tokens\":10,"
          "\"cache_creation_input_tokens\":3,\"cache_read_input_tokens\":"
          "2,\"output_tokens\":5}}", 15, 5, "Anthropic, cache counts added");
    usage("{\"candidates\":[],\"usageMetadata\":{\"promptTokenCount\":8,"
          "\"candidatesTokenCount\":4,\"thoughtsTokenCount\":6}}", 8, 10,
          "Gemini, thoughts counted");
    usage("{\"a\":{\"usage\":{\"prompt_tokens\":5}},\"b\":[{\"usage\":"
          "{\"prompt_tokens\":6}}]}", 0, 0, "usage below the top level");
    usage("{\"usage\":{\"prompt_tokens\":2.5,\"completion_tokens\":-3,"
          "\"input_tokens\":1e3,\"output_tokens\":4}}", 0, 4,
          "only whole non-negative counts");
    usage("{\"usage\":{\"prompt\\u005ftokens\":9,\"output_tokens\":1}}",
          0, 1, "an escaped name is not read as one");
    usage("{\"usage\":null,\"x\":{\"prompt_tokens\":9},\"usage\":"
          "{\"completion_tokens\" : 3 }}", 0, 3,
          "a later usage object counts, another object does not");
    usage("{\"usage\":{\"prompt_tokens\":4}} <html>", 4, 0,
          "counts found before what is not JSON stay");
    usage("<html>{\"usage\":{\"prompt_tokens\":4}}", 0, 0,
          "an answer that is not JSON gives none");

    /* the copy a caller wipes, even when there is none */

    {
        ngx_str_t  copy;

        copy.data = (u_char *) "stale";
        copy.len = 5;

        j = ngx_smartflow_json_parse_copy(&unit_pool, (u_char *) "{\"k\":1}",
                                          7, &err, &copy);
        ok(j != NULL && copy.len == 7 && memcmp(copy.data, "{\"k\":1}", 7)
           == 0, "parse_copy: the copy is given back");

        copy.data = (u_char *) "stale";
        copy.len = 5;

        unit_no_memory = 1;
        j = ngx_smartflow_json_parse_copy(&unit_pool, (u_char *) "{\"k\":1}",
                                          7, &err, &copy);
        unit_no_memory = 0;

        ok(j == NULL && copy.len == 0 && copy.data == NULL,
           "parse_copy: out of memory, no copy to wipe");
    }

    return unit_done();
}
