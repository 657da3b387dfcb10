# A request with a great many findings, in one string or in many: all
# are replaced, each value by its own placeholder numbered in the order
# of the text, and the work stays in proportion to the body (a text is
# scanned once, whatever it holds; a value's placeholder is found again
# by its hash), so that such a request is answered at once instead of
# holding the worker for minutes.  The mock answers with the SHA-256 of
# the bytes it got.

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
    }

    smartflow_policy_group flagged {
        pii flag;
        ip block;
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
    $block->set_value('timeout', 60)
        unless defined $block->timeout;
});

sub sha { 'x-mock-body-sha256: ' . Digest::SHA::sha256_hex($_[0]) }

sub chat {
    my ($content) = @_;
    return qq/{"model":"gpt-4o","messages":[{"role":"user","content":"$content"}]}/;
}

# 60,000 addresses and 60,000 IPv4 addresses in one string, in turn, each
# address twice (its second time takes the same placeholder)
our (@In, @Out);

for my $i (1 .. 60000) {
    my $ip = join('.', 10, int($i / 256) % 256, $i % 256, 7);
    push @In, "u$i\@example.com $ip then u$i\@example.com,";
    push @Out, "[EMAIL_$i] [IP_$i] then [EMAIL_$i],";
}

our $One = chat(join(' ', @In));
our $OneOut = chat(join(' ', @Out));

# 30,000 messages with an address each
our $Many = '{"model":"gpt-4o","messages":['
    . join(',', map { qq/{"role":"user","content":"to m$_\@example.org"}/ }
                    1 .. 30000)
    . ']}';
our $ManyOut = '{"model":"gpt-4o","messages":['
    . join(',', map { qq/{"role":"user","content":"to [EMAIL_$_]"}/ }
                    1 .. 30000)
    . ']}';

# only flagged, with a blocked rule's one finding at the end
our $Flagged = chat(join(' ', map { "f$_\@example.net" } 1 .. 50000)
                    . ' and 192.168.1.1');

run_tests();

__DATA__

=== TEST 1: 180,000 findings in one string: each replaced, in one pass
--- request eval
"POST /v1/chat/completions\n$::One"
--- error_code: 200
--- response_headers eval
[::sha($::OneOut), 'x-smartflow-policy: email:redact,ip:redact']
--- no_error_log
[error]



=== TEST 2: 30,000 strings with a finding each
--- request eval
"POST /v1/chat/completions\n$::Many"
--- error_code: 200
--- response_headers eval
::sha($::ManyOut)
--- response_body_like chomp
"content":"mock reply to: to \[EMAIL_30000\]"
--- no_error_log
[error]



=== TEST 3: more flagged findings than a scan keeps, then a blocked one
--- config eval
"smartflow_policy flagged;\n$::Locations"
--- request eval
"POST /v1/chat/completions\n$::Flagged"
--- error_code: 400
--- response_body_like chomp
"code":"content_policy_violation"
--- response_body_unlike chomp
192\.168
--- error_log
rule "ip" of group "flagged" blocked the request
