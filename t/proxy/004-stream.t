# Streamed completions ("stream": true): server-sent events pass through
# unbuffered, whole and in order, however the provider cuts them into
# reads; the built-in echo provider streams OpenAI's chunk sequence.
#
# Bodies are checked through openai_sse() (from Smartflow::SSE), which
# decodes every event and writes one line per thing a client would see
# (object and model, role, content and text pieces, finish reason, usage,
# [DONE]) and flags anything that is not a well-formed "data: ...\n\n"
# event or carries an id of the wrong shape or a changed one.

use lib 't/lib';
use Smartflow::Mock;
use Test::Nginx::Socket 'no_plan';
use Smartflow::Blocks;
use Smartflow::SSE;

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;

    upstream sf_openai {
        server 127.0.0.1:$TEST_NGINX_MOCK_PORT;
        keepalive 8;
    }

    smartflow_provider openai type=openai upstream=http://sf_openai
                       path=/v1 key=sk-provider-test-key;
    smartflow_provider demo type=echo;

    smartflow_route gpt-* openai;
    smartflow_route smartflow-echo demo;
_EOC_

our $Locations = <<'_EOC_';
    location = /v1/chat/completions {
        smartflow_api chat;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /v1/completions {
        smartflow_api completions;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location @smartflow_error {
        smartflow_api error;
    }
_EOC_

Smartflow::Blocks::defaults(http_config => $HttpConfig, config => $Locations,
                            keys => 1);

run_tests();

__DATA__

=== TEST 1: a provider's stream passes through unbuffered, to [DONE]
--- request
POST /v1/chat/completions
{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi there"}]}
--- response_headers
X-Accel-Buffering: no
Content-Type: text/event-stream; charset=utf-8
x-mock-path: /v1/chat/completions
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk gpt-4o
role assistant
content "mock"
content " reply"
content " to:"
content " hi"
content " there"
finish stop
[DONE]
--- no_error_log
[error]



=== TEST 2: events cut into 7-byte reads arrive whole and in order
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-mock-split: 7
--- request
POST /v1/chat/completions
{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"caf\u00e9 \"au\" lait"}]}
--- response_headers
X-Accel-Buffering: no
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk gpt-4o
role assistant
content "mock"
content " reply"
content " to:"
content " caf\u00e9"
content " \"au\""
content " lait"
finish stop
[DONE]
--- no_error_log
[error]



=== TEST 3: events reach the client as they are produced, not at the end
The provider takes about 2.5 s in all, with 400 ms between events; the
client gives up after 1 s without a byte.
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-mock-chunk-delay-ms: 400
x-mock-words: 3
--- request
POST /v1/chat/completions
{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"count"}]}
--- timeout: 1
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk gpt-4o
role assistant
content "alpha"
content " bravo"
content " charlie"
finish stop
[DONE]
--- no_error_log
[error]



=== TEST 4: a provider's usage chunk when the client asks for it
--- request
POST /v1/chat/completions
{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk gpt-4o-mini
role assistant
content "mock"
content " reply"
content " to:"
content " hi"
finish stop
usage 1 4 5
[DONE]
--- no_error_log
[error]



=== TEST 5: a streamed completion from a provider
--- request
POST /v1/completions
{"model":"gpt-3.5-turbo-instruct","stream":true,"prompt":"Say hi"}
--- response_headers
X-Accel-Buffering: no
--- response_body_filters eval
\&::openai_sse
--- response_body
text_completion gpt-3.5-turbo-instruct
text "mock"
text " reply"
text " to:"
text " Say"
text " hi"
finish stop
[DONE]
--- no_error_log
[error]



=== TEST 6: "stream": false is an ordinary JSON answer
--- request
POST /v1/chat/completions
{"model":"gpt-4o","stream":false,"messages":[{"role":"user","content":"hi"}]}
--- response_headers
Content-Type: application/json
!X-Accel-Buffering
--- response_body_like chomp
^\{"id":"chatcmpl-\w+","object":"chat\.completion",
--- no_error_log
[error]



=== TEST 7: a provider error on a streamed request is passed on as JSON
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-mock-status: 429
--- request
POST /v1/chat/completions
{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}
--- error_code: 429
--- response_headers
Content-Type: application/json
retry-after: 1
!X-Accel-Buffering
--- response_body chomp
{"error":{"message":"Rate limit reached for requests per min (RPM). Please try again in 1s.","type":"requests","param":null,"code":"rate_limit_exceeded"}}
--- no_error_log
[error]



=== TEST 8: the echo provider streams a role chunk, a chunk per word, a finish chunk
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","stream":true,"messages":[{"role":"user","content":"one two three"}]}
--- response_headers
Content-Type: text/event-stream
X-Accel-Buffering: no
Cache-Control: no-cache
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk smartflow-echo
role assistant
content "Echo: "
content "one "
content "two "
content "three"
finish stop
[DONE]
--- no_error_log
[error]



=== TEST 9: the echo provider's usage chunk only when include_usage is true
--- request eval
[
"POST /v1/chat/completions\n"
. '{"model":"smartflow-echo","stream":true,"stream_options":{"include_usage":true},'
. '"messages":[{"role":"user","content":"one two"}]}',
"POST /v1/chat/completions\n"
. '{"model":"smartflow-echo","stream":true,"stream_options":{"include_usage":false},'
. '"messages":[{"role":"user","content":"one two"}]}',
]
--- response_body_filters eval
\&::openai_sse
--- response_body eval
[
"chat.completion.chunk smartflow-echo
role assistant
content \"Echo: \"
content \"one \"
content \"two\"
finish stop
usage 2 3 5
[DONE]
",
"chat.completion.chunk smartflow-echo
role assistant
content \"Echo: \"
content \"one \"
content \"two\"
finish stop
[DONE]
",
]
--- error_code eval
[200, 200]
--- no_error_log
[error]



=== TEST 10: the echo provider streams completions as text_completion chunks
--- request
POST /v1/completions
{"model":"smartflow-echo","stream":true,"prompt":"say \"hi\"\nnow"}
--- response_body_filters eval
\&::openai_sse
--- response_body
text_completion smartflow-echo
text "Echo: "
text "say "
text "\"hi\"\nnow"
finish stop
[DONE]
--- no_error_log
[error]



=== TEST 11: the echo provider's stream keeps the client's model name
--- request
POST /v1/chat/completions
{"model":"SmartFlow-Echo","stream":true,"messages":[{"role":"user","content":"x"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk SmartFlow-Echo
role assistant
content "Echo: "
content "x"
finish stop
[DONE]
--- no_error_log
[error]
