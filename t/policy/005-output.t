# Guardrails on the answer (groups with "output on"), plain and streamed,
# on both APIs: what the model writes is redacted before the client sees
# it, a finding split across stream events is found whole (the mock
# streams one word per event, so a phone number spans four), a block ends
# a stream with an error event in the client's format and turns a whole
# answer into the API's own content-filter answer; Shield reads the tool
# calls the model makes.  The mock answers x-mock-reply; canned answers
# with tool calls come from a fixture server in the same nginx.

use lib 't/lib';
use Smartflow::Conf;
use Smartflow::Mock;
use Test::Nginx::Socket 'no_plan';

$ENV{TEST_NGINX_FIXTURE_PORT} ||= 1988;

our $MainConfig = <<'_EOC_';
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_policy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_audit_module.so;
_EOC_

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;

    upstream sf_mock {
        server 127.0.0.1:$TEST_NGINX_MOCK_PORT;
        keepalive 8;
    }

    upstream sf_fixture {
        server 127.0.0.1:$TEST_NGINX_FIXTURE_PORT;
    }

    smartflow_provider openai type=openai upstream=http://sf_mock path=/v1
                       key=sk-provider-test-key;
    smartflow_provider anthropic type=anthropic upstream=http://sf_mock
                       key=sk-ant-provider-key;
    smartflow_provider canned type=openai upstream=http://sf_fixture
                       path=/canned key=sk-provider-test-key;

    smartflow_route gpt-* openai;
    smartflow_route claude-* anthropic;
    smartflow_route agent-* canned;

    smartflow_policy_group out {
        pii redact;
        shield block;
        output on;
    }

    smartflow_policy_group out_strict extends=out {
        card block;
    }

    smartflow_policy_group in_only extends=out {
        output off;
    }

    server {
        listen 127.0.0.1:$TEST_NGINX_FIXTURE_PORT;

        location = /canned/chat/completions {
            if ($http_x_stream) {
                rewrite ^ /canned-stream last;
            }
            default_type application/json;
            return 200 '{"id":"chatcmpl-c1","object":"chat.completion","created":1,"model":"agent-1","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"bash","arguments":"{\\"command\\":\\"$http_x_command\\"}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}';
        }

        location = /canned-stream {
            default_type text/event-stream;
            return 200 'data: {"id":"c2","object":"chat.completion.chunk","created":1,"model":"agent-1","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"bash","arguments":""}}]},"finish_reason":null}]}

data: {"id":"c2","object":"chat.completion.chunk","created":1,"model":"agent-1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"command\\":\\"git push"}}]},"finish_reason":null}]}

data: {"id":"c2","object":"chat.completion.chunk","created":1,"model":"agent-1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":" --force origin main\\"}"}}]},"finish_reason":null}]}

data: {"id":"c2","object":"chat.completion.chunk","created":1,"model":"agent-1","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}

data: [DONE]

';
        }
    }
_EOC_

our $Locations = Smartflow::Conf::shipped_locations();

add_block_preprocessor(sub {
    my $block = shift;

    $block->set_value('main_config', $MainConfig)
        unless defined $block->main_config;
    $block->set_value('http_config', $HttpConfig)
        unless defined $block->http_config;
    $block->set_value('config', "smartflow_policy out;\n$Locations")
        unless defined $block->config;
    $block->set_value('more_headers',
                      "Authorization: Bearer sk-smartflow-test-0123456789\n"
                      . "x-mock-reply: call +1 415 555 2671 or write to ann\@example.com today")
        unless defined $block->more_headers;
});

sub chat {
    my ($model, $stream) = @_;
    my $s = $stream ? ',"stream":true' : '';
    return "POST /v1/chat/completions\n"
        . qq/{"model":"$model","messages":[{"role":"user","content":"who do I contact?"}]$s}/;
}

sub messages {
    my ($model, $stream) = @_;
    my $s = $stream ? ',"stream":true' : '';
    return "POST /anthropic/v1/messages\n"
        . qq/{"model":"$model","max_tokens":64,"messages":[{"role":"user","content":"who do I contact?"}]$s}/;
}

run_tests();

__DATA__

=== TEST 1: OpenAI, plain: the model's PII is redacted in its answer
--- request eval
::chat('gpt-4o')
--- error_code: 200
--- response_body_like chomp
"content":"call \[PHONE_1\] or write to \[EMAIL_1\] today"
--- response_body_unlike chomp
2671|example\.com
--- no_error_log
[error]



=== TEST 2: OpenAI, streamed: a number split over four events is found whole, the stream stays well-formed
--- request eval
::chat('gpt-4o', 1)
--- error_code: 200
--- response_body_like chomp
^data: \{.*"content":"","refusal":null\}.*\n\ndata: \{[^\n]*"delta":\{"content":"call \[PHONE_1\] or write to \[EMAIL_1\] today"\}[^\n]*\n\ndata: \{[^\n]*"finish_reason":"stop"[^\n]*\n\ndata: \[DONE\]\n\n$
--- response_body_unlike chomp
2671|415|example\.com
--- no_error_log
[error]



=== TEST 3: Anthropic, plain
--- request eval
::messages('claude-sonnet-4-5')
--- error_code: 200
--- response_body_like chomp
"text":"call \[PHONE_1\] or write to \[EMAIL_1\] today"
--- no_error_log
[error]



=== TEST 4: Anthropic, streamed: the held text goes out before the block stops
--- request eval
::messages('claude-sonnet-4-5', 1)
--- error_code: 200
--- response_body_like chomp
event: content_block_delta\ndata: \{"type":"content_block_delta","index":0,"delta":\{"type":"text_delta","text":"call \[PHONE_1\] or write to \[EMAIL_1\] today"\}\}\n\nevent: content_block_stop.*event: message_stop
--- response_body_unlike chomp
2671|415|example\.com
--- no_error_log
[error]



=== TEST 5: an OpenAI client of an Anthropic model: the translated stream is scanned
--- request eval
::chat('claude-sonnet-4-5', 1)
--- error_code: 200
--- response_body_like chomp
\[PHONE_1\].*data: \[DONE\]
--- response_body_unlike chomp
2671|example\.com
--- no_error_log
[error]



=== TEST 6: a block ends an OpenAI stream with an error event, the value never sent
--- config eval
"smartflow_policy out_strict;\n$::Locations"
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-mock-reply: my card is 4111 1111 1111 1111 thanks
--- request eval
::chat('gpt-4o', 1)
--- error_code: 200
--- response_body_like chomp
data: \{"error":\{"message":"The answer was blocked by the content policy \(rule `card`\).","type":"invalid_request_error","param":null,"code":"content_policy_violation"\}\}\n\n$
--- response_body_unlike chomp
4111
--- error_log
smartflow policy: rule "card" of group "out_strict" blocked the answer



=== TEST 7: ... and an Anthropic stream with its error event
--- config eval
"smartflow_policy out_strict;\n$::Locations"
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-mock-reply: my card is 4111 1111 1111 1111 thanks
--- request eval
::messages('claude-sonnet-4-5', 1)
--- error_code: 200
--- response_body_like chomp
event: error\ndata: \{"type":"error","error":\{"type":"invalid_request_error","message":"The answer was blocked by the content policy \(rule `card`\)."\}\}\n\n$
--- response_body_unlike chomp
4111
--- error_log
blocked the answer



=== TEST 8: a whole answer blocked: OpenAI's content filter answer, Anthropic's refusal
--- config eval
"smartflow_policy out_strict;\n$::Locations"
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-mock-reply: my card is 4111 1111 1111 1111 thanks
--- request eval
[ ::chat('gpt-4o'), ::messages('claude-sonnet-4-5') ]
--- error_code eval
[200, 200]
--- response_body_like eval
[ qr/"message":\{"role":"assistant","content":null,"refusal":"The answer was blocked by the content policy \(rule `card`\)\."\},"logprobs":null,"finish_reason":"content_filter"/,
  qr/"content":\[\{"type":"text","text":"The answer was blocked by the content policy \(rule `card`\)\."\}\],"stop_reason":"refusal"/ ]
--- response_body_unlike eval
[ qr/4111/, qr/4111/ ]
--- error_log
blocked the answer



=== TEST 9: Shield on a tool call the model makes (whole answer)
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-command: rm -rf /
--- request eval
::chat('agent-1')
--- error_code: 200
--- response_body_like chomp
"finish_reason":"content_filter"
--- response_body_unlike chomp
rm -rf
--- error_log
smartflow policy: rule "shield.shell" shell.rm_root of group "out" blocked the answer



=== TEST 10: ... a harmless one passes
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-command: ls -la
--- request eval
::chat('agent-1')
--- error_code: 200
--- response_body_like chomp
"arguments":"\{\\"command\\":\\"ls -la\\"\}"\}\}\]\},"finish_reason":"tool_calls"
--- no_error_log
[error]



=== TEST 11: Shield on a streamed tool call split over events: its arguments are held, the stream ends with an error before any piece goes out
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-stream: 1
--- request eval
::chat('agent-1', 1)
--- error_code: 200
--- response_body_unlike
git push|--force
--- response_body_like chomp
"name":"bash","arguments":""\}\}\]\},"finish_reason":null\}\]\}\n\ndata: \{"error":\{"message":"The answer was blocked by the content policy \(rule `shield.git`\).","type":"invalid_request_error","param":null,"code":"content_policy_violation"\}\}\n\n$
--- error_log
rule "shield.git" git.force_push of group "out" blocked the answer



=== TEST 12: a group with output off leaves the answer alone
--- config eval
"smartflow_policy in_only;\n$::Locations"
--- request eval
::chat('gpt-4o', 1)
--- error_code: 200
--- response_body_like chomp
"content":" 2671"
--- no_error_log
[error]
