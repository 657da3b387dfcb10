# A virtual key's policy_group overrides the location's group (and an
# unknown one is refused, closed, as a server error); the directives'
# validation at start-up.

use lib 't/lib';
use Smartflow::Mock;
use Smartflow::Keys;
use Test::Nginx::Socket 'no_plan';

no_shuffle();

unlink server_root() . '/keys-policy.state';

our $MainConfig = <<'_EOC_';
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_policy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_audit_module.so;

    thread_pool sf threads=1;
_EOC_

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_keys_zone keys 1m state=keys-policy.state thread_pool=sf;

    upstream sf_openai {
        server 127.0.0.1:$TEST_NGINX_MOCK_PORT;
        keepalive 8;
    }

    smartflow_provider openai type=openai upstream=http://sf_openai
                       key=sk-provider-test-key;
    smartflow_route gpt-* openai;

    smartflow_policy_group base {
        pii redact;
    }

    smartflow_policy_group strict extends=base {
        email block;
    }

    smartflow_policy_group open {
        injection flag;
    }
_EOC_

our $Locations = <<'_EOC_';
    smartflow_policy base;

    location = /v1/chat/completions {
        smartflow_api chat;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    include $TEST_NGINX_SMARTFLOW_CONF/smartflow_admin.conf;

    location @smartflow_error {
        smartflow_api error;
    }
_EOC_

add_block_preprocessor(sub {
    my $block = shift;

    $block->set_value('main_config', $MainConfig)
        unless defined $block->main_config;
    $block->set_value('http_config', $HttpConfig)
        unless defined $block->http_config;
    $block->set_value('config', $Locations)
        unless defined $block->config;
    $block->set_value('more_headers',
                      'Authorization: Bearer sk-smartflow-test-0123456789')
        unless defined $block->more_headers;

    Smartflow::Keys::substitute($block);
    return $block;
});

sub mail {
    return "POST /v1/chat/completions\n"
        . '{"model":"gpt-4o","messages":[{"role":"user","content":"write to ann@example.com"}]}';
}

run_tests();

__DATA__

=== TEST 1: keys with and without a group of their own
--- request eval
[ "POST /api/auth/virtual-keys\n" . '{"name":"plain"}',
  "POST /api/auth/virtual-keys\n" . '{"name":"strict","policy_group":"strict"}',
  "POST /api/auth/virtual-keys\n" . '{"name":"open","policy_group":"open"}',
  "POST /api/auth/virtual-keys\n" . '{"name":"ghost","policy_group":"nowhere"}' ]
--- error_code eval
[201, 201, 201, 201]
--- no_error_log
[error]



=== TEST 2: a key without a group gets the location's: redacted
--- more_headers
Authorization: Bearer %KEY(plain)%
--- request eval
::mail()
--- error_code: 200
--- response_headers
x-smartflow-policy: email:redact
--- response_body_like chomp
mock reply to: write to \[EMAIL_1\]
--- no_error_log
[error]



=== TEST 3: a key whose group blocks what the location's redacts
--- more_headers
Authorization: Bearer %KEY(strict)%
--- request eval
::mail()
--- error_code: 400
--- response_headers
x-smartflow-policy: email:block
--- response_body chomp
{"error":{"message":"The request was blocked by the content policy (rule `email`).","type":"invalid_request_error","param":null,"code":"content_policy_violation"}}
--- error_log
smartflow policy: rule "email" of group "strict" blocked the request



=== TEST 4: a key whose group has no PII rule at all: the text goes as it is
--- more_headers
Authorization: Bearer %KEY(open)%
--- request eval
::mail()
--- error_code: 200
--- response_body_like chomp
mock reply to: write to ann@example.com
--- no_error_log
[error]



=== TEST 5: the master key keeps the location's group
--- request eval
::mail()
--- error_code: 200
--- response_body_like chomp
mock reply to: write to \[EMAIL_1\]
--- no_error_log
[error]



=== TEST 6: a key naming a group the gateway does not have is refused, not let through
--- more_headers
Authorization: Bearer %KEY(ghost)%
--- request eval
::mail()
--- error_code: 500
--- response_body_like chomp
"code":"policy_group_not_found"
--- error_log
smartflow policy: virtual key "vk_4" names policy group "nowhere", which is not configured



=== TEST 7: unknown group in a location
--- config
    location / {
        smartflow_policy nowhere;
    }
--- must_die
--- error_log
unknown policy group "nowhere"



=== TEST 8: a group extending one defined after it
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_policy_group child extends=parent {
        email block;
    }
    smartflow_policy_group parent {
        pii redact;
    }
--- config
--- must_die
--- error_log
policy group "child" extends "parent", which is not defined before it



=== TEST 9: a group defined twice
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_policy_group g { pii redact; }
    smartflow_policy_group g { pii flag; }
--- config
--- must_die
--- error_log
policy group "g" is already defined



=== TEST 10: an unknown action
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_policy_group g { email erase; }
--- config
--- must_die
--- error_log
invalid action "erase" for "email"



=== TEST 11: Shield tiers are not rule actions, and the reverse
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_policy_group g { shield redact; }
--- config
--- must_die
--- error_log
invalid action "redact" for "shield"



=== TEST 12: an unknown Shield category
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_policy_group g { shield k8s block; }
--- config
--- must_die
--- error_log
unknown shield category "k8s"



=== TEST 13: injection cannot be redacted, and its threshold is 1 to 100
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_policy_group g { injection block threshold=0; }
--- config
--- must_die
--- error_log
threshold must be 1 to 100, not "threshold=0"



=== TEST 14: a pattern that does not compile
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_policy_group g { pattern ticket "TICKET-(" redact; }
--- config
--- must_die
--- error_log
pattern "ticket": missing closing parenthesis



=== TEST 15: an unknown rule
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_policy_group g { passport redact; }
--- config
--- must_die
--- error_log
invalid rule "passport" with 1 arguments in policy group "g"



=== TEST 16: smartflow_policy twice in one place
--- config
    location / {
        smartflow_policy off;
        smartflow_policy off;
    }
--- must_die
--- error_log
"smartflow_policy" directive is duplicate
