# Streams ("stream": true) across formats: an Anthropic provider's events
# become OpenAI chat.completion.chunk events for an OpenAI client, an OpenAI
# provider's chunks (or the echo provider's) become Anthropic events for an
# Anthropic client, each event as it comes, usage exact from the provider.
# Same-format streams pass through, an OpenAI stream being asked for its
# usage chunk, which is hidden from a client that did not ask for it.
#
# Bodies are checked through openai_sse() and anthropic_sse() (from
# Smartflow::SSE), which decode every event and write one line per thing a
# client would see, flagging anything that is not a well-formed event of
# the client's format.
# Provider streams the mock cannot give come from canned responses chosen
# with an x-fixture header; what the provider was asked is seen through a
# recorder (a second server here that hands the request on to the mock
# with the request's body as the reply text).

use lib 't/lib';
use Smartflow::Conf;
use Smartflow::Mock;
use Test::Nginx::Socket 'no_plan';
use Smartflow::Blocks;
use Smartflow::SSE;

$ENV{TEST_NGINX_FIXTURE_PORT} ||= 1988;

our $HttpConfig = Smartflow::Blocks::mock_upstreams(fixture => 1)
                  . <<'_EOC_';
    smartflow_provider anthropic type=anthropic upstream=http://sf_mock
                       key=sk-ant-provider-key;
    smartflow_provider openai type=openai upstream=http://sf_mock
                       key=sk-oai-provider-key;
    smartflow_provider demo type=echo;
    smartflow_provider recorder_an type=anthropic upstream=http://sf_fixture
                       path=/record/v1 key=sk-ant-provider-key;
    smartflow_provider recorder_oa type=openai upstream=http://sf_fixture
                       path=/record/v1 key=sk-oai-provider-key;
    smartflow_provider canned_an type=anthropic upstream=http://sf_fixture
                       path=/canned key=sk-ant-provider-key;
    smartflow_provider canned_oa type=openai upstream=http://sf_fixture
                       path=/canned key=sk-oai-provider-key;

    smartflow_route smartflow-echo demo;
    smartflow_route claude-recorded recorder_an;
    smartflow_route gpt-recorded recorder_oa;
    smartflow_route claude-canned canned_an;
    smartflow_route gpt-canned canned_oa;
    smartflow_route claude-* anthropic;
    smartflow_route gpt-* openai;

    server {
        listen 127.0.0.1:$TEST_NGINX_FIXTURE_PORT;
        default_type text/event-stream;
        client_body_buffer_size 64k;

        # the recorder
        location /record/ {
            rewrite ^/record(/.*)$ $1 break;
            proxy_pass http://sf_mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header x-mock-reply $request_body;
        }

        location /canned/ {
            rewrite ^ /fixture/$http_x_fixture last;
        }

        # Anthropic streams

        location = /fixture/an-two-tools {
            return 200 'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_canned1","type":"message","role":"assistant","model":"claude-upstream","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":8,"output_tokens":1}}}\n\nevent: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\nevent: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Checking both."}}\n\nevent: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\nevent: content_block_start\ndata: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_a","name":"lookup","input":{}}}\n\nevent: content_block_delta\ndata: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"q\\":"}}\n\nevent: content_block_delta\ndata: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\\"x\\"}"}}\n\nevent: content_block_stop\ndata: {"type":"content_block_stop","index":1}\n\nevent: content_block_start\ndata: {"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_b","name":"now","input":{}}}\n\nevent: content_block_delta\ndata: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":""}}\n\nevent: content_block_stop\ndata: {"type":"content_block_stop","index":2}\n\nevent: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":20}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n';
        }

        location = /fixture/an-max-tokens {
            return 200 'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_canned2","type":"message","role":"assistant","model":"claude-upstream","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":10,"cache_creation_input_tokens":3,"cache_read_input_tokens":20,"output_tokens":1}}}\n\nevent: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\nevent: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"cut sho"}}\n\nevent: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\nevent: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"max_tokens","stop_sequence":null},"usage":{"output_tokens":3}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n';
        }

        location = /fixture/an-thinking {
            return 200 'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_canned3","type":"message","role":"assistant","model":"claude-upstream","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":4,"output_tokens":1}}}\n\nevent: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}\n\nevent: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me think."}}\n\nevent: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"c2ln"}}\n\nevent: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\nevent: content_block_start\ndata: {"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}\n\nevent: content_block_delta\ndata: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Done."}}\n\nevent: content_block_stop\ndata: {"type":"content_block_stop","index":1}\n\nevent: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":9}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n';
        }

        location = /fixture/an-error {
            return 200 'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_canned4","type":"message","role":"assistant","model":"claude-upstream","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":4,"output_tokens":1}}}\n\nevent: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\nevent: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}\n\nevent: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n';
        }

        location = /fixture/an-no-message-stop {
            return 200 'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_canned5","type":"message","role":"assistant","model":"claude-upstream","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":4,"output_tokens":1}}}\n\nevent: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\nevent: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"All here."}}\n\nevent: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\nevent: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":2}}\n\n';
        }

        location = /fixture/an-unfinished {
            return 200 'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_canned6","type":"message","role":"assistant","model":"claude-upstream","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":4,"output_tokens":1}}}\n\nevent: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\nevent: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Half"}}\n\n';
        }

        location = /fixture/an-crlf {
            return 200 'event: message_start\r\ndata: {"type":"message_start","message":{"id":"msg_canned7","type":"message","role":"assistant","model":"claude-upstream","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":2,"output_tokens":1}}}\r\n\r\n: a comment line\r\n\r\nevent: content_block_start\r\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\r\n\r\nevent: content_block_delta\r\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"one\\r\\ntwo"}}\r\n\r\nevent: content_block_stop\r\ndata: {"type":"content_block_stop","index":0}\r\n\r\nevent: message_delta\r\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":2}}\r\n\r\nevent: message_stop\r\ndata: {"type":"message_stop"}\r\n\r\n';
        }

        # OpenAI streams

        location = /fixture/oa-two-tools {
            return 200 'data: {"id":"chatcmpl-canned1","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[{"index":0,"delta":{"role":"assistant","content":"Sure."},"finish_reason":null}]}\n\ndata: {"id":"chatcmpl-canned1","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"lookup","arguments":""}}]},"finish_reason":null}]}\n\ndata: {"id":"chatcmpl-canned1","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"q\\":\\"x\\"}"}}]},"finish_reason":null}]}\n\ndata: {"id":"chatcmpl-canned1","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"now","arguments":"{}"}}]},"finish_reason":null}]}\n\ndata: {"id":"chatcmpl-canned1","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n\ndata: {"id":"chatcmpl-canned1","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":6,"total_tokens":11}}\n\ndata: [DONE]\n\n';
        }

        location = /fixture/oa-parallel {
            return 200 'data: {"id":"chatcmpl-canned2","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"lookup","arguments":"{}"}},{"index":1,"id":"call_b","type":"function","function":{"name":"now","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}\n\ndata: [DONE]\n\n';
        }

        location = /fixture/oa-length-no-done {
            return 200 'data: {"id":"chatcmpl-canned3","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\ndata: {"id":"chatcmpl-canned3","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[{"index":0,"delta":{"content":"cut sho"},"finish_reason":null}]}\n\ndata: {"id":"chatcmpl-canned3","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\ndata: {"id":"chatcmpl-canned3","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[],"usage":{"prompt_tokens":30,"completion_tokens":3,"total_tokens":33}}\n\n';
        }

        location = /fixture/oa-refusal {
            return 200 'data: {"id":"chatcmpl-canned4","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[{"index":0,"delta":{"role":"assistant","content":null,"refusal":""},"finish_reason":null}]}\n\ndata: {"id":"chatcmpl-canned4","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[{"index":0,"delta":{"refusal":"I cannot help."},"finish_reason":null}]}\n\ndata: {"id":"chatcmpl-canned4","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[{"index":0,"delta":{},"finish_reason":"content_filter"}]}\n\ndata: [DONE]\n\n';
        }

        location = /fixture/oa-error {
            return 200 'data: {"id":"chatcmpl-canned5","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},"finish_reason":null}]}\n\ndata: {"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}}\n\n';
        }

        location = /fixture/oa-crlf-multiline {
            return 200 ': keep-alive\r\n\r\ndata: {"id":"chatcmpl-canned6","object":"chat.completion.chunk",\r\ndata: "created":1,"model":"gpt-upstream","choices":[{"index":0,"delta":{"role":"assistant","content":"one"},"finish_reason":null}]}\r\n\r\ndata:{"id":"chatcmpl-canned6","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[{"index":0,"delta":{"content":" two"},"finish_reason":"stop"}]}\r\n\r\ndata: [DONE]\r\n\r\n';
        }
    }
_EOC_

# The shipped server-level locations (conf/smartflow_locations.conf), their
# nested include made absolute.

our $Locations = Smartflow::Conf::shipped_locations();

Smartflow::Blocks::defaults(http_config => $HttpConfig, config => $Locations,
                            keys => 1);

run_tests();

__DATA__

=== TEST 1: OpenAI client, Anthropic provider: text events become chunks
--- request
POST /v1/chat/completions
{"model":"claude-3-5-sonnet","stream":true,"messages":[{"role":"user","content":"hi there"}]}
--- response_headers_like
Content-Type: ^text/event-stream
X-Accel-Buffering: no
x-mock-path: /v1/messages
--- response_headers
!Content-Length
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk claude-3-5-sonnet
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



=== TEST 2: OpenAI client, Anthropic provider: the usage chunk when asked for
--- request
POST /v1/chat/completions
{"model":"claude-3-5-sonnet","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi there"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk claude-3-5-sonnet
role assistant
content "mock"
content " reply"
content " to:"
content " hi"
content " there"
finish stop
usage 4 5 9
[DONE]
--- no_error_log
[error]



=== TEST 3: OpenAI client, Anthropic provider: a streamed tool call
--- request
POST /v1/chat/completions
{"model":"claude-3-5-sonnet","stream":true,"stream_options":{"include_usage":true},"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"location":{"type":"string"}}}}}],"messages":[{"role":"user","content":"What is the weather in Paris?"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk claude-3-5-sonnet
role assistant
tool 0 toolu_01* function get_weather
args 0 "{\""
args 0 "location"
args 0 "\":\""
args 0 "Paris"
args 0 "\"}"
finish tool_calls
usage 6 3 9
[DONE]
--- no_error_log
[error]



=== TEST 4: OpenAI client, Anthropic provider: the provider is asked for a stream
--- request
POST /v1/chat/completions
{"model":"claude-recorded","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}
--- response_body_filters eval
\&::recorded_openai_stream
--- response_body
{"max_tokens":4096,"messages":[{"content":"hi","role":"user"}],"model":"claude-recorded","stream":true}
usage chunk
--- no_error_log
[error]



=== TEST 5: OpenAI client, Anthropic provider: text, then two tool calls
--- more_headers eval
$::OpenAIKey . "x-fixture: an-two-tools"
--- request
POST /v1/chat/completions
{"model":"claude-canned","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk claude-canned
role assistant
content "Checking both."
tool 0 toolu_a function lookup
args 0 "{\"q\":"
args 0 "\"x\"}"
tool 1 toolu_b function now
finish tool_calls
usage 8 20 28
[DONE]
--- no_error_log
[error]



=== TEST 6: OpenAI client, Anthropic provider: max_tokens is length; cache reads count as prompt
--- more_headers eval
$::OpenAIKey . "x-fixture: an-max-tokens"
--- request
POST /v1/chat/completions
{"model":"claude-canned","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk claude-canned
role assistant
content "cut sho"
finish length
usage 33 3 36
[DONE]
--- no_error_log
[error]



=== TEST 7: OpenAI client, Anthropic provider: thinking is left out
--- more_headers eval
$::OpenAIKey . "x-fixture: an-thinking"
--- request
POST /v1/chat/completions
{"model":"claude-canned","stream":true,"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk claude-canned
role assistant
content "Done."
finish stop
[DONE]
--- no_error_log
[error]



=== TEST 8: OpenAI client, Anthropic provider: the provider's error event
--- more_headers eval
$::OpenAIKey . "x-fixture: an-error"
--- request
POST /v1/chat/completions
{"model":"claude-canned","stream":true,"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk claude-canned
role assistant
content "Hel"
error api_error overloaded "Overloaded"
[DONE]



=== TEST 9: OpenAI client, Anthropic provider: a stream ending after its stop reason is finished
--- more_headers eval
$::OpenAIKey . "x-fixture: an-no-message-stop"
--- request
POST /v1/chat/completions
{"model":"claude-canned","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk claude-canned
role assistant
content "All here."
finish stop
usage 4 2 6
[DONE]
--- no_error_log
[error]



=== TEST 10: OpenAI client, Anthropic provider: a stream ending before its stop reason is not
--- more_headers eval
$::OpenAIKey . "x-fixture: an-unfinished"
--- request
POST /v1/chat/completions
{"model":"claude-canned","stream":true,"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk claude-canned
role assistant
content "Half"
error api_error upstream_stream_broken "The provider's stream ended before completion."
[DONE]



=== TEST 11: OpenAI client, Anthropic provider: CRLF line ends and comment lines
--- more_headers eval
$::OpenAIKey . "x-fixture: an-crlf"
--- request
POST /v1/chat/completions
{"model":"claude-canned","stream":true,"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk claude-canned
role assistant
content "one\r\ntwo"
finish stop
[DONE]
--- no_error_log
[error]



=== TEST 12: Anthropic client, OpenAI provider: chunks become message events
--- request
POST /anthropic/v1/messages
{"model":"gpt-4o","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi there"}]}
--- response_headers_like
Content-Type: ^text/event-stream
X-Accel-Buffering: no
x-mock-path: /v1/chat/completions
--- response_headers
!Content-Length
--- response_body_filters eval
\&::anthropic_sse
--- response_body
message_start msg_chatcmpl-* message assistant gpt-4o input_tokens=0 output_tokens=0
ping
start 0 text
text 0 "mock"
text 0 " reply"
text 0 " to:"
text 0 " hi"
text 0 " there"
stop 0
message_delta end_turn input_tokens=2 output_tokens=5
message_stop
--- no_error_log
[error]



=== TEST 13: Anthropic client, OpenAI provider: a streamed tool call
--- request
POST /anthropic/v1/messages
{"model":"gpt-4o","max_tokens":64,"stream":true,"tools":[{"name":"get_weather","input_schema":{"type":"object","properties":{"location":{"type":"string"}}}}],"messages":[{"role":"user","content":"What is the weather in Paris?"}]}
--- response_body_filters eval
\&::anthropic_sse
--- response_body
message_start msg_chatcmpl-* message assistant gpt-4o input_tokens=0 output_tokens=0
ping
start 0 tool_use call_* get_weather {}
json 0 "{\""
json 0 "location"
json 0 "\":\""
json 0 "Paris"
json 0 "\"}"
stop 0
message_delta tool_use input_tokens=6 output_tokens=3
message_stop
--- no_error_log
[error]



=== TEST 14: Anthropic client, OpenAI provider: the provider is asked for a stream with usage
--- request
POST /anthropic/v1/messages
{"model":"gpt-recorded","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}
--- response_body_filters eval
\&::recorded_anthropic_stream
--- response_body
{"max_completion_tokens":64,"messages":[{"content":"hi","role":"user"}],"model":"gpt-recorded","stream":true,"stream_options":{"include_usage":true}}
--- no_error_log
[error]



=== TEST 15: Anthropic client, OpenAI provider: text, then two tool calls, no [DONE]
--- more_headers eval
$::AnthropicKey . "x-fixture: oa-two-tools"
--- request
POST /anthropic/v1/messages
{"model":"gpt-canned","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::anthropic_sse
--- response_body
message_start msg_chatcmpl-canned1 message assistant gpt-canned input_tokens=0 output_tokens=0
ping
start 0 text
text 0 "Sure."
stop 0
start 1 tool_use call_a lookup {}
json 1 "{\"q\":\"x\"}"
stop 1
start 2 tool_use call_b now {}
json 2 "{}"
stop 2
message_delta tool_use input_tokens=5 output_tokens=6
message_stop
--- no_error_log
[error]



=== TEST 16: Anthropic client, OpenAI provider: two tool calls in one chunk
--- more_headers eval
$::AnthropicKey . "x-fixture: oa-parallel"
--- request
POST /anthropic/v1/messages
{"model":"gpt-canned","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::anthropic_sse
--- response_body
message_start msg_chatcmpl-canned2 message assistant gpt-canned input_tokens=0 output_tokens=0
ping
start 0 tool_use call_a lookup {}
json 0 "{}"
stop 0
start 1 tool_use call_b now {}
json 1 "{}"
stop 1
message_delta tool_use input_tokens=0 output_tokens=0
message_stop
--- no_error_log
[error]



=== TEST 17: Anthropic client, OpenAI provider: length is max_tokens; no [DONE] needed
--- more_headers eval
$::AnthropicKey . "x-fixture: oa-length-no-done"
--- request
POST /anthropic/v1/messages
{"model":"gpt-canned","max_tokens":3,"stream":true,"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::anthropic_sse
--- response_body
message_start msg_chatcmpl-canned3 message assistant gpt-canned input_tokens=0 output_tokens=0
ping
start 0 text
text 0 "cut sho"
stop 0
message_delta max_tokens input_tokens=30 output_tokens=3
message_stop
--- no_error_log
[error]



=== TEST 18: Anthropic client, OpenAI provider: a refusal is text, stop reason refusal
--- more_headers eval
$::AnthropicKey . "x-fixture: oa-refusal"
--- request
POST /anthropic/v1/messages
{"model":"gpt-canned","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::anthropic_sse
--- response_body
message_start msg_chatcmpl-canned4 message assistant gpt-canned input_tokens=0 output_tokens=0
ping
start 0 text
text 0 "I cannot help."
stop 0
message_delta refusal input_tokens=0 output_tokens=0
message_stop
--- no_error_log
[error]



=== TEST 19: Anthropic client, OpenAI provider: the provider's error chunk
--- more_headers eval
$::AnthropicKey . "x-fixture: oa-error"
--- request
POST /anthropic/v1/messages
{"model":"gpt-canned","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::anthropic_sse
--- response_body
message_start msg_chatcmpl-canned5 message assistant gpt-canned input_tokens=0 output_tokens=0
ping
start 0 text
text 0 "Hel"
error api_error "The server had an error while processing your request."



=== TEST 20: Anthropic client, OpenAI provider: CRLF, comments, data split over lines, no space after "data:"
--- more_headers eval
$::AnthropicKey . "x-fixture: oa-crlf-multiline"
--- request
POST /anthropic/v1/messages
{"model":"gpt-canned","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::anthropic_sse
--- response_body
message_start msg_chatcmpl-canned6 message assistant gpt-canned input_tokens=0 output_tokens=0
ping
start 0 text
text 0 "one"
text 0 " two"
stop 0
message_delta end_turn input_tokens=0 output_tokens=0
message_stop
--- no_error_log
[error]



=== TEST 21: Anthropic client, echo provider: the echo stream as message events
--- request
POST /anthropic/v1/messages
{"model":"smartflow-echo","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"one two three"}]}
--- response_headers
Content-Type: text/event-stream
X-Accel-Buffering: no
Cache-Control: no-cache
--- response_body_filters eval
\&::anthropic_sse
--- response_body
message_start msg_chatcmpl-sf* message assistant smartflow-echo input_tokens=0 output_tokens=0
ping
start 0 text
text 0 "Echo: "
text 0 "one "
text 0 "two "
text 0 "three"
stop 0
message_delta end_turn input_tokens=3 output_tokens=4
message_stop
--- no_error_log
[error]
[alert]



=== TEST 22: Anthropic client, Anthropic provider: the provider's events pass as they are
--- request
POST /anthropic/v1/messages
{"model":"claude-3-5-sonnet","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi there"}]}
--- response_headers
Content-Type: text/event-stream; charset=utf-8
X-Accel-Buffering: no
--- response_body_filters eval
\&::anthropic_sse
--- response_body
message_start msg_01* message assistant claude-3-5-sonnet input_tokens=2 output_tokens=1
start 0 text
ping
text 0 "mock"
text 0 " reply"
text 0 " to:"
text 0 " hi"
text 0 " there"
stop 0
message_delta end_turn input_tokens=- output_tokens=5
message_stop
--- no_error_log
[error]



=== TEST 23: OpenAI client, OpenAI provider: usage is asked for and hidden from the client
--- request eval
["POST /v1/chat/completions\n" . '{"model":"gpt-recorded","stream":true,"messages":[{"role":"user","content":"hi"}]}',
 "POST /v1/chat/completions\n" . '{"model":"gpt-recorded","stream":true,"stream_options":{"include_usage":false},"messages":[{"role":"user","content":"hi"}]}',
 "POST /v1/chat/completions\n" . '{"model":"gpt-recorded","stream":true,"stream_options":{},"messages":[{"role":"user","content":"hi"}]}']
--- response_body_filters eval
\&::recorded_openai_stream
--- response_body eval
["{\"messages\":[{\"content\":\"hi\",\"role\":\"user\"}],\"model\":\"gpt-recorded\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}\n",
 "{\"messages\":[{\"content\":\"hi\",\"role\":\"user\"}],\"model\":\"gpt-recorded\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}\n",
 "{\"messages\":[{\"content\":\"hi\",\"role\":\"user\"}],\"model\":\"gpt-recorded\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}\n"]
--- error_code eval
[200, 200, 200]
--- no_error_log
[error]



=== TEST 24: OpenAI client, OpenAI provider: a client asking for usage gets the provider's chunk
--- request
POST /v1/chat/completions
{"model":"gpt-recorded","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}
--- response_body_filters eval
\&::recorded_openai_stream
--- response_body
{"messages":[{"content":"hi","role":"user"}],"model":"gpt-recorded","stream":true,"stream_options":{"include_usage":true}}
usage chunk
--- no_error_log
[error]



=== TEST 25: OpenAI client, OpenAI provider: "stream_options": null is a stream like any other
OpenAI's API takes null for stream_options; the gateway's own
include_usage must not cost the request its other members.
--- request
POST /v1/chat/completions
{"model":"gpt-4o","stream":true,"stream_options":null,"messages":[{"role":"user","content":"hi there"}]}
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
