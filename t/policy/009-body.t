# The redacted request as the provider receives it (the mock answers with
# the SHA-256 of the bytes it got): the client's body with only the
# redacted strings changed, byte for byte (spaces, escapes elsewhere and
# number spellings kept), each found as the string value at the same
# place in the body's order as in the parsed request, when its bytes
# there are its own (no escape); otherwise the request written again,
# still redacted.  Fields the policy does not read keep their values.

use lib 't/lib';
use Smartflow::Conf;
use Smartflow::Mock;
use Digest::SHA ();
use Test::Nginx::Socket 'no_plan';

our $MainConfig = <<'_EOC_';
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_policy_module.so;
_EOC_

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;

    upstream sf_mock {
        server 127.0.0.1:$TEST_NGINX_MOCK_PORT;
        keepalive 8;
    }

    smartflow_provider openai type=openai upstream=http://sf_mock path=/v1
                       key=sk-provider-test-key;
    smartflow_route gpt-* openai;

    smartflow_policy_group base {
        pii redact;
        pattern quote "QUOTE-[0-9]+" redact;
    }
_EOC_

our $Locations = Smartflow::Conf::shipped_locations();

add_block_preprocessor(sub {
    my $block = shift;

    $block->set_value('main_config', $MainConfig)
        unless defined $block->main_config;
    $block->set_value('http_config', $HttpConfig)
        unless defined $block->http_config;
    $block->set_value('config', "smartflow_policy base;\n$Locations")
        unless defined $block->config;
    $block->set_value('more_headers',
                      'Authorization: Bearer sk-smartflow-test-0123456789')
        unless defined $block->more_headers;
});

sub sha { 'x-mock-body-sha256: ' . Digest::SHA::sha256_hex($_[0]) }

# a body as a client may format it
our $Spaced = qq/{ "model": "gpt-4o",\n  "messages": [\n    {"role": "system", "content": "caf\\u00e9 \\"menu\\""},\n    {"role": "user", "content": "write to ann\@example.com or call +1 415 555 2671, QUOTE-77"}\n  ],\n  "temperature": 1.0e0 }/;
(our $SpacedOut = $Spaced) =~ s/ann\@example\.com/[EMAIL_1]/;
$SpacedOut =~ s/\+1 415 555 2671/[PHONE_1]/;
$SpacedOut =~ s/QUOTE-77/[QUOTE_1]/;

# the address is also a member's name, which stays
our $Named = qq/{"model":"gpt-4o","metadata":{"ann\@example.com":"x"},"messages":[{"role":"user","content":"ann\@example.com"}]}/;
(our $NamedOut = $Named) =~ s/"content":"ann\@example\.com"/"content":"[EMAIL_1]"/;

# the same text in an escaped string before it: only the value is changed
our $Quoted = qq/{"model":"gpt-4o","messages":[{"role":"system","content":"say \\"mail bob\@example.org\\" to them"},{"role":"user","content":"mail bob\@example.org"}]}/;
(our $QuotedOut = $Quoted) =~ s/\\"mail bob\@example\.org\\"/\\"mail [EMAIL_1]\\"/;
$QuotedOut =~ s/"content":"mail bob\@example\.org"/"content":"mail [EMAIL_1]"/;

run_tests();

__DATA__

=== TEST 1: the client's bytes, only the redacted values changed
--- request eval
"POST /v1/chat/completions\n$::Spaced"
--- error_code: 200
--- response_headers eval
::sha($::SpacedOut)
--- response_body_like chomp
"content":"mock reply to: write to \[EMAIL_1\] or call \[PHONE_1\], \[QUOTE_1\]"
--- no_error_log
[error]



=== TEST 2: a member's name equal to a redacted value stays
--- request eval
"POST /v1/chat/completions\n$::Named"
--- error_code: 200
--- response_headers eval
::sha($::NamedOut)
--- response_body_like chomp
"content":"mock reply to: \[EMAIL_1\]"
--- no_error_log
[error]



=== TEST 3: a string with escapes: the request is written again, the provider still sees it redacted
--- request eval
"POST /v1/chat/completions\n$::Quoted"
--- error_code: 200
--- response_headers eval
::sha($::QuotedOut)
--- response_body_like chomp
"content":"mock reply to: mail \[EMAIL_1\]"
--- no_error_log
[error]



=== TEST 4: the same string twice: each put in its place
--- request eval
qq{POST /v1/chat/completions\n{"model":"gpt-4o", "messages":[{"role":"user","content":"ann\@example.com"},{"role":"assistant","content":"ok"},{"role":"user","content":"ann\@example.com"}]}}
--- error_code: 200
--- response_headers eval
::sha(q{{"model":"gpt-4o", "messages":[{"role":"user","content":"[EMAIL_1]"},{"role":"assistant","content":"ok"},{"role":"user","content":"[EMAIL_1]"}]}})
--- response_body_like chomp
"content":"mock reply to: \[EMAIL_1\]"
--- no_error_log
[error]



=== TEST 5: the same text verbatim in a field that is not scanned, escaped in the message: the message's own string is the one redacted
--- request eval
qq{POST /v1/chat/completions\n{"model":"gpt-4o","service_tier":"mail ann\@example.com!","messages":[{"role":"user","content":"mail ann\@example.com\\u0021"}]}}
--- error_code: 200
--- response_headers eval
::sha(q{{"model":"gpt-4o","service_tier":"mail ann@example.com!","messages":[{"role":"user","content":"mail [EMAIL_1]!"}]}})
--- response_body_like chomp
"content":"mock reply to: mail \[EMAIL_1\]!"
--- no_error_log
[error]



=== TEST 6: the same text in a field that is not scanned and in the message, both as they are: only the message's changes
--- request eval
qq{POST /v1/chat/completions\n{"model":"gpt-4o", "service_tier":"ann\@example.com", "messages":[{"role":"user","content":"ann\@example.com"}]}}
--- error_code: 200
--- response_headers eval
::sha(q{{"model":"gpt-4o", "service_tier":"ann@example.com", "messages":[{"role":"user","content":"[EMAIL_1]"}]}})
--- response_body_like chomp
"content":"mock reply to: \[EMAIL_1\]"
--- no_error_log
[error]
