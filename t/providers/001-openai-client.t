# An OpenAI client (/v1/chat/completions) asking for a model routed to an
# Anthropic provider: the request goes out as a Messages API request (to
# <path>/messages, with the provider's x-api-key and an anthropic-version)
# and the whole answer comes back as a chat.completion.
#
# What the provider receives is seen through a recorder: a second server in
# this nginx that hands the gateway's request on to the mock with the
# request's own body as the mock's reply text (x-mock-reply), so the
# assistant's answer is the exact body the provider got.  upstream_body()
# turns such an answer back into that body, keys sorted.  Answers the mock
# cannot give (other stop reasons, thinking blocks, cache usage) come from
# canned responses chosen with an x-fixture request header.  The gateway's
# locations are the shipped ones (conf/smartflow_locations.conf).

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
    smartflow_provider recorder type=anthropic upstream=http://sf_fixture
                       path=/record/v1 key=sk-ant-provider-key;
    smartflow_provider canned type=anthropic upstream=http://sf_fixture
                       path=/canned key=sk-ant-provider-key;

    smartflow_route claude-renamed anthropic model=claude-3-5-haiku-latest;
    smartflow_route claude-recorded recorder;
    smartflow_route claude-canned canned;
    smartflow_route claude-* anthropic;

    server {
        listen 127.0.0.1:$TEST_NGINX_FIXTURE_PORT;
        default_type application/json;
        client_body_buffer_size 64k;

        # the recorder
        location /record/ {
            rewrite ^/record(/.*)$ $1 break;
            proxy_pass http://sf_mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header x-mock-reply $request_body;
            add_header x-seen-uri $request_uri;
            add_header x-seen-anthropic-version $http_anthropic_version;
            add_header x-seen-authorization $http_authorization;
        }

        location /canned/ {
            rewrite ^ /fixture/$http_x_fixture last;
        }

        location = /fixture/max-tokens {
            return 200 '{"id":"msg_canned1","type":"message","role":"assistant","model":"claude-upstream","content":[{"type":"text","text":"cut sho"}],"stop_reason":"max_tokens","stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":3}}';
        }

        location = /fixture/stop-sequence {
            return 200 '{"id":"msg_canned2","type":"message","role":"assistant","model":"claude-upstream","content":[{"type":"text","text":"one two"}],"stop_reason":"stop_sequence","stop_sequence":"three","usage":{"input_tokens":5,"output_tokens":2}}';
        }

        location = /fixture/refusal {
            return 200 '{"id":"msg_canned3","type":"message","role":"assistant","model":"claude-upstream","content":[],"stop_reason":"refusal","stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":0}}';
        }

        location = /fixture/mixed {
            return 200 '{"id":"msg_canned4","type":"message","role":"assistant","model":"claude-upstream","content":[{"type":"thinking","thinking":"let me see","signature":"c2ln"},{"type":"text","text":"Looking both up. "},{"type":"text","text":"One moment."},{"type":"tool_use","id":"toolu_canned_a","name":"lookup","input":{"q":"caf\u00e9","n":[1,2]}},{"type":"tool_use","id":"toolu_canned_b","name":"ping","input":{}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":10,"cache_creation_input_tokens":3,"cache_read_input_tokens":20,"output_tokens":7}}';
        }

        location = /fixture/pause-turn {
            return 200 '{"id":"msg_canned5","type":"message","role":"assistant","model":"claude-upstream","content":[{"type":"text","text":"paused"}],"stop_reason":"pause_turn","stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":1}}';
        }
    }
_EOC_

# The shipped server-level locations (conf/smartflow_locations.conf), their
# nested include made absolute.

our $Locations = Smartflow::Conf::shipped_locations();

Smartflow::Blocks::defaults(http_config => $HttpConfig, config => $Locations,
                            more_headers => $OpenAIKey);

# The body the provider received: the text of the recorded answer,
# re-encoded with sorted keys and \u escapes.
sub upstream_body { recorded_answer(shift, 'openai') }

# A chat.completion with its generated parts (id, created) made constant.
sub stable {
    my $body = shift;
    $body =~ s/"id":"chatcmpl-msg_01[A-Za-z0-9]{22}"/"id":"chatcmpl-msg_01*"/;
    $body =~ s/"id":"toolu_01[A-Za-z0-9]{22}"/"id":"toolu_01*"/g;
    $body =~ s/"created":\d{10}/"created":1700000000/;
    return "$body\n";
}

run_tests();

__DATA__

=== TEST 1: a plain answer, translated
--- request
POST /v1/chat/completions
{"model":"claude-3-5-sonnet","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi there"}]}
--- response_headers
Content-Type: application/json
x-mock-path: /v1/messages
x-mock-api-key: sk-ant-provider-key
x-mock-authorization:
x-mock-model: claude-3-5-sonnet
--- response_body_filters eval
\&::stable
--- response_body
{"id":"chatcmpl-msg_01*","object":"chat.completion","created":1700000000,"model":"claude-3-5-sonnet","choices":[{"index":0,"message":{"role":"assistant","content":"mock reply to: hi there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":4,"completion_tokens":5,"total_tokens":9}}
--- no_error_log
[error]



=== TEST 2: the provider gets a Messages request with the default max_tokens
--- request
POST /v1/chat/completions
{"model":"claude-recorded","messages":[{"role":"user","content":"hi there"}]}
--- response_headers
x-seen-uri: /record/v1/messages
x-mock-path: /v1/messages
x-mock-api-key: sk-ant-provider-key
x-seen-authorization:
x-seen-anthropic-version: 2023-06-01
--- response_body_filters eval
\&::upstream_body
--- response_body
{"max_tokens":4096,"messages":[{"content":"hi there","role":"user"}],"model":"claude-recorded"}
--- no_error_log
[error]



=== TEST 3: the anthropic-version is the gateway's, whatever an OpenAI client sends
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
anthropic-version: 2099-12-31
x-api-key: sk-client-key-that-must-not-leak
--- request
POST /v1/chat/completions
{"model":"claude-recorded","messages":[{"role":"user","content":"hi"}]}
--- response_headers
x-seen-anthropic-version: 2023-06-01
x-mock-api-key: sk-ant-provider-key
x-seen-authorization:
--- response_body_filters eval
\&::upstream_body
--- response_body
{"max_tokens":4096,"messages":[{"content":"hi","role":"user"}],"model":"claude-recorded"}
--- no_error_log
[error]



=== TEST 4: system and developer messages become the one system prompt
--- request
POST /v1/chat/completions
{"model":"claude-recorded","messages":[
 {"role":"system","content":"You are terse."},
 {"role":"user","content":"first"},
 {"role":"developer","content":[{"type":"text","text":"Answer in French."},{"type":"text","text":"No emoji."}]},
 {"role":"user","content":"second"}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"max_tokens":4096,"messages":[{"content":[{"text":"first","type":"text"},{"text":"second","type":"text"}],"role":"user"}],"model":"claude-recorded","system":"You are terse.\n\nAnswer in French.\n\nNo emoji."}
--- no_error_log
[error]



=== TEST 5: a multi-turn conversation keeps its turns in order
--- request
POST /v1/chat/completions
{"model":"claude-recorded","messages":[
 {"role":"user","content":"What is 2+2?"},
 {"role":"assistant","content":"4"},
 {"role":"user","content":"And 3+3?"},
 {"role":"assistant","content":"6"},
 {"role":"user","content":"Thanks"}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"max_tokens":4096,"messages":[{"content":"What is 2+2?","role":"user"},{"content":"4","role":"assistant"},{"content":"And 3+3?","role":"user"},{"content":"6","role":"assistant"},{"content":"Thanks","role":"user"}],"model":"claude-recorded"}
--- no_error_log
[error]



=== TEST 6: consecutive messages of one role are merged into one turn
Anthropic wants user and assistant turns to alternate.
--- request
POST /v1/chat/completions
{"model":"claude-recorded","messages":[
 {"role":"user","content":"one"},
 {"role":"user","content":[{"type":"text","text":"two"}]},
 {"role":"assistant","content":"three"},
 {"role":"assistant","content":"four"},
 {"role":"user","content":"five"}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"max_tokens":4096,"messages":[{"content":[{"text":"one","type":"text"},{"text":"two","type":"text"}],"role":"user"},{"content":[{"text":"three","type":"text"},{"text":"four","type":"text"}],"role":"assistant"},{"content":"five","role":"user"}],"model":"claude-recorded"}
--- no_error_log
[error]



=== TEST 7: max_tokens, sampling, stop and user go over with Anthropic's names
A temperature above Anthropic's maximum of 1 is sent as 1.
--- request
POST /v1/chat/completions
{"model":"claude-recorded","max_tokens":77,"temperature":1.7,"top_p":0.9,"stop":"END","user":"user-42","messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"max_tokens":77,"messages":[{"content":"go","role":"user"}],"metadata":{"user_id":"user-42"},"model":"claude-recorded","stop_sequences":["END"],"temperature":1,"top_p":0.9}
--- no_error_log
[error]



=== TEST 8: max_completion_tokens wins over max_tokens; a stop array
--- request
POST /v1/chat/completions
{"model":"claude-recorded","max_tokens":500,"max_completion_tokens":12,"temperature":0.25,"stop":["\n\n","Human:"],"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"max_tokens":12,"messages":[{"content":"go","role":"user"}],"model":"claude-recorded","stop_sequences":["\n\n","Human:"],"temperature":0.25}
--- no_error_log
[error]



=== TEST 9: images: a data URL becomes a base64 source, an https URL a url source
--- request
POST /v1/chat/completions
{"model":"claude-recorded","messages":[{"role":"user","content":[
 {"type":"text","text":"What is in these?"},
 {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAE="}},
 {"type":"image_url","image_url":{"url":"https://example.com/cat.jpg","detail":"low"}}]}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"max_tokens":4096,"messages":[{"content":[{"text":"What is in these?","type":"text"},{"source":{"data":"iVBORw0KGgoAAAANSUhEUgAAAAE=","media_type":"image/png","type":"base64"},"type":"image"},{"source":{"type":"url","url":"https://example.com/cat.jpg"},"type":"image"}],"role":"user"}],"model":"claude-recorded"}
--- no_error_log
[error]



=== TEST 10: tools and tool_choice "required"; parallel_tool_calls false
A function without parameters takes an empty object.
--- request
POST /v1/chat/completions
{"model":"claude-recorded","tool_choice":"required","parallel_tool_calls":false,"tools":[
 {"type":"function","function":{"name":"get_climate","description":"Climate of a city","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}},
 {"type":"function","function":{"name":"now"}}],
 "messages":[{"role":"user","content":"what about the climate in Paris?"}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"max_tokens":4096,"messages":[{"content":"what about the climate in Paris?","role":"user"}],"model":"claude-recorded","tool_choice":{"disable_parallel_tool_use":true,"type":"any"},"tools":[{"description":"Climate of a city","input_schema":{"properties":{"city":{"type":"string"}},"required":["city"],"type":"object"},"name":"get_climate"},{"input_schema":{"properties":{},"type":"object"},"name":"now"}]}
--- no_error_log
[error]



=== TEST 11: tool_choice "auto", "none" and a named function
--- request eval
[map {
"POST /v1/chat/completions\n"
. '{"model":"claude-recorded","tool_choice":' . $_ . ',"tools":[{"type":"function",'
. '"function":{"name":"now","parameters":{"type":"object","properties":{}}}}],'
. '"messages":[{"role":"user","content":"time?"}]}'
} '"auto"', '"none"', '{"type":"function","function":{"name":"now"}}']
--- response_body_filters eval
\&::upstream_body
--- response_body eval
[map {
'{"max_tokens":4096,"messages":[{"content":"time?","role":"user"}],"model":"claude-recorded",'
. '"tool_choice":' . $_ . ',"tools":[{"input_schema":{"properties":{},"type":"object"},"name":"now"}]}' . "\n"
} '{"type":"auto"}', '{"type":"none"}', '{"name":"now","type":"tool"}']
--- error_code eval
[200, 200, 200]
--- no_error_log
[error]



=== TEST 12: tool calls and tool results in the history
The assistant's tool_calls become tool_use blocks (arguments parsed, empty
ones as {}); the tool messages become tool_result blocks of one user turn,
ahead of the user's text that follows them.
--- request
POST /v1/chat/completions
{"model":"claude-recorded","tools":[{"type":"function","function":{"name":"get_climate","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}},{"type":"function","function":{"name":"now"}}],
 "messages":[
 {"role":"user","content":"climate in Paris, and the time?"},
 {"role":"assistant","content":null,"tool_calls":[
   {"id":"call_1","type":"function","function":{"name":"get_climate","arguments":"{\"city\":\"Paris\"}"}},
   {"id":"call_2","type":"function","function":{"name":"now","arguments":""}}]},
 {"role":"tool","tool_call_id":"call_1","content":"mild"},
 {"role":"tool","tool_call_id":"call_2","content":[{"type":"text","text":"noon"}]},
 {"role":"user","content":"and tomorrow?"}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"max_tokens":4096,"messages":[{"content":"climate in Paris, and the time?","role":"user"},{"content":[{"id":"call_1","input":{"city":"Paris"},"name":"get_climate","type":"tool_use"},{"id":"call_2","input":{},"name":"now","type":"tool_use"}],"role":"assistant"},{"content":[{"content":"mild","tool_use_id":"call_1","type":"tool_result"},{"content":[{"text":"noon","type":"text"}],"tool_use_id":"call_2","type":"tool_result"},{"text":"and tomorrow?","type":"text"}],"role":"user"}],"model":"claude-recorded","tools":[{"input_schema":{"properties":{"city":{"type":"string"}},"type":"object"},"name":"get_climate"},{"input_schema":{"properties":{},"type":"object"},"name":"now"}]}
--- no_error_log
[error]



=== TEST 13: an assistant message with text and a tool call
--- request
POST /v1/chat/completions
{"model":"claude-recorded","tools":[{"type":"function","function":{"name":"now"}}],
 "messages":[
 {"role":"user","content":"time?"},
 {"role":"assistant","content":"Let me look.","tool_calls":[{"id":"call_9","type":"function","function":{"name":"now","arguments":"{}"}}]},
 {"role":"tool","tool_call_id":"call_9","content":"noon"}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"max_tokens":4096,"messages":[{"content":"time?","role":"user"},{"content":[{"text":"Let me look.","type":"text"},{"id":"call_9","input":{},"name":"now","type":"tool_use"}],"role":"assistant"},{"content":[{"content":"noon","tool_use_id":"call_9","type":"tool_result"}],"role":"user"}],"model":"claude-recorded","tools":[{"input_schema":{"properties":{},"type":"object"},"name":"now"}]}
--- no_error_log
[error]



=== TEST 14: the provider's tool call comes back as tool_calls
--- request
POST /v1/chat/completions
{"model":"claude-3-5-sonnet","tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"location":{"type":"string"}}}}}],"messages":[{"role":"user","content":"What is the weather in Paris?"}]}
--- response_body_filters eval
\&::stable
--- response_body
{"id":"chatcmpl-msg_01*","object":"chat.completion","created":1700000000,"model":"claude-3-5-sonnet","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"toolu_01*","type":"function","function":{"name":"get_weather","arguments":"{\"location\":\"Paris\"}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":6,"completion_tokens":3,"total_tokens":9}}
--- no_error_log
[error]



=== TEST 15: stop reason max_tokens is finish_reason length
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-fixture: max-tokens
--- request
POST /v1/chat/completions
{"model":"claude-canned","max_tokens":3,"messages":[{"role":"user","content":"say a lot"}]}
--- response_headers
Content-Type: application/json
--- response_body_filters eval
\&::stable
--- response_body
{"id":"chatcmpl-msg_canned1","object":"chat.completion","created":1700000000,"model":"claude-canned","choices":[{"index":0,"message":{"role":"assistant","content":"cut sho"},"finish_reason":"length"}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}
--- no_error_log
[error]



=== TEST 16: stop reason stop_sequence is finish_reason stop
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-fixture: stop-sequence
--- request
POST /v1/chat/completions
{"model":"claude-canned","stop":["three"],"messages":[{"role":"user","content":"count"}]}
--- response_body_filters eval
\&::stable
--- response_body
{"id":"chatcmpl-msg_canned2","object":"chat.completion","created":1700000000,"model":"claude-canned","choices":[{"index":0,"message":{"role":"assistant","content":"one two"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}
--- no_error_log
[error]



=== TEST 17: stop reason pause_turn is finish_reason stop
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-fixture: pause-turn
--- request
POST /v1/chat/completions
{"model":"claude-canned","messages":[{"role":"user","content":"wait"}]}
--- response_body_filters eval
\&::stable
--- response_body
{"id":"chatcmpl-msg_canned5","object":"chat.completion","created":1700000000,"model":"claude-canned","choices":[{"index":0,"message":{"role":"assistant","content":"paused"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}
--- no_error_log
[error]



=== TEST 18: stop reason refusal is finish_reason content_filter
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-fixture: refusal
--- request
POST /v1/chat/completions
{"model":"claude-canned","messages":[{"role":"user","content":"something bad"}]}
--- response_body_filters eval
\&::stable
--- response_body
{"id":"chatcmpl-msg_canned3","object":"chat.completion","created":1700000000,"model":"claude-canned","choices":[{"index":0,"message":{"role":"assistant","content":""},"finish_reason":"content_filter"}],"usage":{"prompt_tokens":5,"completion_tokens":0,"total_tokens":5}}
--- no_error_log
[error]



=== TEST 19: thinking is left out, text blocks joined, two tool calls, cache usage
OpenAI's prompt_tokens count cache reads and writes too; the cache reads
are its cached_tokens.  The tool input is re-encoded as the arguments
string (\u00e9 becomes the UTF-8 it stands for).
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-fixture: mixed
--- request
POST /v1/chat/completions
{"model":"claude-canned","tools":[{"type":"function","function":{"name":"lookup"}},{"type":"function","function":{"name":"ping"}}],"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::stable
--- response_body
{"id":"chatcmpl-msg_canned4","object":"chat.completion","created":1700000000,"model":"claude-canned","choices":[{"index":0,"message":{"role":"assistant","content":"Looking both up. One moment.","tool_calls":[{"id":"toolu_canned_a","type":"function","function":{"name":"lookup","arguments":"{\"q\":\"café\",\"n\":[1,2]}"}},{"id":"toolu_canned_b","type":"function","function":{"name":"ping","arguments":"{}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":33,"completion_tokens":7,"total_tokens":40,"prompt_tokens_details":{"cached_tokens":20}}}
--- no_error_log
[error]



=== TEST 20: a renamed route: the provider gets the new name, the client sees its own
--- request
POST /v1/chat/completions
{"model":"claude-renamed","messages":[{"role":"user","content":"hi"}]}
--- response_headers
x-mock-model: claude-3-5-haiku-latest
--- response_body_filters eval
\&::stable
--- response_body
{"id":"chatcmpl-msg_01*","object":"chat.completion","created":1700000000,"model":"claude-renamed","choices":[{"index":0,"message":{"role":"assistant","content":"mock reply to: hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":4,"total_tokens":5}}
--- no_error_log
[error]



=== TEST 21: text with escapes and non-ASCII survives the translation both ways
--- request
POST /v1/chat/completions
{"model":"claude-recorded","messages":[{"role":"user","content":"caf\u00e9 \ud83d\ude00 \"q\" \\ / tab\there\nnext \u0001 \u2028 é"}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"max_tokens":4096,"messages":[{"content":"caf\u00e9 \ud83d\ude00 \"q\" \\ / tab\there\nnext \u0001 \u2028 \u00e9","role":"user"}],"model":"claude-recorded"}
--- no_error_log
[error]



=== TEST 22: "stream": false goes over as it is
--- request
POST /v1/chat/completions
{"model":"claude-recorded","stream":false,"messages":[{"role":"user","content":"hi"}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"max_tokens":4096,"messages":[{"content":"hi","role":"user"}],"model":"claude-recorded","stream":false}
--- no_error_log
[error]



=== TEST 23: completions and embeddings have no Anthropic form
--- request eval
["POST /v1/completions\n" . '{"model":"claude-3-5-sonnet","prompt":"Say hi"}',
 "POST /v1/embeddings\n" . '{"model":"claude-3-5-sonnet","input":"hi"}']
--- error_code eval
[400, 400]
--- response_body eval
['{"error":{"message":"The model `claude-3-5-sonnet` is served by provider \"anthropic\", which does not offer this endpoint.","type":"invalid_request_error","param":"model","code":"unsupported_model"}}',
 '{"error":{"message":"The model `claude-3-5-sonnet` is served by provider \"anthropic\", which does not offer this endpoint.","type":"invalid_request_error","param":"model","code":"unsupported_model"}}']
--- error_log
smartflow proxy: The model `claude-3-5-sonnet` is served by provider "anthropic", which does not offer this endpoint.



=== TEST 24: a content part Anthropic has no form for is refused before it leaves
--- request
POST /v1/chat/completions
{"model":"claude-3-5-sonnet","messages":[{"role":"user","content":[{"type":"input_audio","input_audio":{"data":"AAAA","format":"wav"}}]}]}
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body chomp
{"error":{"message":"a content part type is not supported by this provider","type":"invalid_request_error","param":null,"code":"invalid_request"}}
--- error_log
smartflow proxy: a content part type is not supported by this provider



=== TEST 25: an image that is neither an http(s) URL nor a data URL is refused
--- request
POST /v1/chat/completions
{"model":"claude-3-5-sonnet","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"ftp://example.com/cat.jpg"}}]}]}
--- error_code: 400
--- response_body chomp
{"error":{"message":"an image must be an http(s) URL or a base64 data URL","type":"invalid_request_error","param":null,"code":"invalid_request"}}
