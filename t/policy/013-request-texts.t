# What the input stage finds before the provider sees it, in the texts a
# person or a program writes around a value: a card number written with
# its expiry date or code after it, or a quantity before it, is still a
# card (the longest card that starts the run and ends at a separator, or
# a run from a later group).  The mock answers "mock reply to: <the last
# user text it received>".

use lib 't/lib';
use Smartflow::Conf;
use Smartflow::Mock;
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
    smartflow_provider anthropic type=anthropic upstream=http://sf_mock
                       key=sk-ant-provider-key;
    smartflow_route gpt-* openai;
    smartflow_route claude-* anthropic;

    smartflow_policy_group base {
        pii redact;
    }

    smartflow_policy_group strict {
        card block;
        ssn block;
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

=== TEST 1: a card and its expiry date
--- request eval
::chat('card 4111 1111 1111 1111 12/26, thanks')
--- error_code: 200
--- response_headers
x-smartflow-policy: card:redact
--- response_body_like chomp
"content":"mock reply to: card \[CARD_1\] 12/26, thanks"



=== TEST 2: a card and its code
--- request eval
::chat('card 5555-5555-5555-4444-123 ok')
--- error_code: 200
--- response_body_like chomp
"content":"mock reply to: card \[CARD_1\]-123 ok"



=== TEST 3: a quantity before a card
--- request eval
::chat('qty 2 4111 1111 1111 1111 and 3 378282246310005')
--- error_code: 200
--- response_body_like chomp
"content":"mock reply to: qty 2 \[CARD_1\] and 3 \[CARD_2\]"



=== TEST 4: groups that hold no card stay
--- request eval
::chat('ids 1234 5678 9012 3456 7890 and 4111 1111 1111 1112 9')
--- error_code: 200
--- response_body_like chomp
"content":"mock reply to: ids 1234 5678 9012 3456 7890 and 4111 1111 1111 1112 9"



=== TEST 5: a blocked card with its expiry date is refused, not echoed
--- config eval
"smartflow_policy strict;\n$::Locations"
--- request eval
::chat('pay with 4111 1111 1111 1111 12 26')
--- error_code: 400
--- response_body chomp
{"error":{"message":"The request was blocked by the content policy (rule `card`).","type":"invalid_request_error","param":null,"code":"content_policy_violation"}}
--- error_log
rule "card" of group "strict" blocked the request
