# Email addresses glued to each other or to signs: each address is found
# and replaced, so that no part of one reaches the provider.  An address
# glued to the end of another ("x@a.bc_z9@q.io") starts where the first
# ends, at its first letter or digit; an address right after a sign that
# may be part of a local part ("-x@a.io", ".f@g.hi") starts at its first
# letter or digit.  The mock answers "mock reply to: <the text it got>".

use lib 't/lib';
use Smartflow::Conf;
use Smartflow::Mock;
use Test::Nginx::Socket 'no_plan';

$ENV{TEST_NGINX_MOCK_PORT} ||= 1985;

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
    }

    smartflow_policy_group strict {
        email block;
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

sub chat {
    my ($text) = @_;
    return "POST /v1/chat/completions\n"
        . qq/{"model":"gpt-4o","messages":[{"role":"user","content":"$text"}]}/;
}

run_tests();

__DATA__

=== TEST 1: an address glued to the end of another
--- request eval
::chat('mail x@a.bc_z9@q.io now')
--- error_code: 200
--- response_headers
x-smartflow-policy: email:redact
--- response_body_like chomp
"content":"mock reply to: mail \[EMAIL_1\]_\[EMAIL_2\] now"
--- response_body_unlike chomp
z9|q\.io|a\.bc
--- no_error_log
[error]



=== TEST 2: glued with a dot, a plus, and three in a row
--- request eval
::chat('a.b@c.de.f@g.hi and x@a.bc+y@b.cd_z@c.de')
--- error_code: 200
--- response_body_like chomp
"content":"mock reply to: \[EMAIL_1\]\.\[EMAIL_2\] and \[EMAIL_3\]\+\[EMAIL_4\]_\[EMAIL_5\]"
--- response_body_unlike chomp
g\.hi|b\.cd|c\.de
--- no_error_log
[error]



=== TEST 3: an address after a sign a local part may hold
--- request eval
::chat('list: -x@a.io, _z9@q.io and .f@g.hi')
--- error_code: 200
--- response_body_like chomp
"content":"mock reply to: list: -\[EMAIL_1\], _\[EMAIL_2\] and \.\[EMAIL_3\]"
--- no_error_log
[error]



=== TEST 4: the same glued address twice takes the same placeholders
--- request eval
::chat('x@a.bc_z9@q.io, again x@a.bc_z9@q.io; z9@q.io')
--- error_code: 200
--- response_body_like chomp
"content":"mock reply to: \[EMAIL_1\]_\[EMAIL_2\], again \[EMAIL_1\]_\[EMAIL_2\]; \[EMAIL_2\]"
--- no_error_log
[error]



=== TEST 5: blocked, the second address alone
--- config eval
"smartflow_policy strict;\n$::Locations"
--- request eval
::chat('see x _z9@q.io')
--- error_code: 400
--- response_body_like chomp
rule `email`
--- error_log
rule "email" of group "strict" blocked the request



=== TEST 6: a local part longer than 64 bytes is no address, not the end of one
--- request eval
::chat('mail ' . ('a' x 70) . '@example.com and ' . ('b' x 64) . '@example.com now')
--- error_code: 200
--- response_body_like eval
qr/"content":"mock reply to: mail a{70}\@example\.com and \[EMAIL_1\] now"/
--- no_error_log
[error]
