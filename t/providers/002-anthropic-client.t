# An Anthropic client (/anthropic/v1/messages) asking for a model routed to
# an OpenAI provider, or to the built-in echo provider: the request goes out
# as a Chat Completions request (with the provider's Bearer key, no
# x-api-key, no anthropic-version) and the whole answer comes back as an
# Anthropic message.
#
# What the provider receives is seen through a recorder: a second server in
# this nginx that hands the gateway's request on to the mock with the
# request's own body as the mock's reply text (x-mock-reply), so the
# assistant's answer is the exact body the provider got.  upstream_body()
# turns such an answer back into that body, keys sorted.  Answers the mock
# cannot give come from canned responses chosen with an x-fixture header.
# The gateway's locations are the shipped ones (conf/smartflow_locations.conf).

use lib 't/lib';
use Smartflow::Conf;
use Smartflow::Mock;
use Test::Nginx::Socket 'no_plan';
use Smartflow::Blocks;
use Smartflow::SSE;

$ENV{TEST_NGINX_FIXTURE_PORT} ||= 1988;

our $HttpConfig = Smartflow::Blocks::mock_upstreams(fixture => 1)
                  . <<'_EOC_';
    smartflow_provider openai type=openai upstream=http://sf_mock
                       key=sk-oai-provider-key;
    smartflow_provider recorder type=openai upstream=http://sf_fixture
                       path=/record/v1 key=sk-oai-provider-key;
    smartflow_provider canned type=openai upstream=http://sf_fixture
                       path=/canned key=sk-oai-provider-key;
    smartflow_provider demo type=echo;

    smartflow_route gpt-renamed openai model=gpt-4o-mini;
    smartflow_route gpt-recorded recorder;
    smartflow_route gpt-canned canned;
    smartflow_route smartflow-echo demo;
    smartflow_route gpt-* openai;
    smartflow_route o3-mini openai;

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
            add_header x-seen-api-key $http_x_api_key;
        }

        location /canned/ {
            rewrite ^ /fixture/$http_x_fixture last;
        }

        location = /fixture/length {
            return 200 '{"id":"chatcmpl-canned1","object":"chat.completion","created":1,"model":"gpt-upstream","choices":[{"index":0,"message":{"role":"assistant","content":"cut sho"},"finish_reason":"length"}],"usage":{"prompt_tokens":30,"completion_tokens":3,"total_tokens":33,"prompt_tokens_details":{"cached_tokens":12}}}';
        }

        location = /fixture/content-filter {
            return 200 '{"id":"chatcmpl-canned2","object":"chat.completion","created":1,"model":"gpt-upstream","choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":"I cannot help with that."},"finish_reason":"content_filter"}],"usage":{"prompt_tokens":3,"completion_tokens":6,"total_tokens":9}}';
        }

        location = /fixture/tools {
            return 200 '{"id":"chatcmpl-canned3","object":"chat.completion","created":1,"model":"gpt-upstream","choices":[{"index":0,"message":{"role":"assistant","content":"Checking.","tool_calls":[{"id":"call_a","type":"function","function":{"name":"lookup","arguments":"{\\"q\\":\\"x\\",\\"n\\":[1,2]}"}},{"id":"call_b","type":"function","function":{"name":"broken","arguments":"not json"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}';
        }

        location = /fixture/parts {
            return 200 '{"id":"chatcmpl-canned4","object":"chat.completion","created":1,"model":"gpt-upstream","choices":[{"index":0,"message":{"role":"assistant","content":[{"type":"text","text":"first "},{"type":"text","text":"second"}]},"finish_reason":"stop"}],"usage":{"prompt_tokens":2,"completion_tokens":2,"total_tokens":4}}';
        }
    }
_EOC_

# The shipped server-level locations (conf/smartflow_locations.conf), their
# nested include made absolute.

our $Locations = Smartflow::Conf::shipped_locations();

Smartflow::Blocks::defaults(http_config => $HttpConfig, config => $Locations,
                            more_headers => $AnthropicKey);

# The body the provider received: the text of the recorded answer,
# re-encoded with sorted keys and \u escapes.
sub upstream_body { recorded_answer(shift, 'anthropic') }

# A message with its generated parts (ids) made constant.
sub stable {
    my $body = shift;
    $body =~ s/"id":"msg_chatcmpl-[A-Za-z0-9]{29}"/"id":"msg_chatcmpl-*"/;
    $body =~ s/"id":"msg_chatcmpl-sf[0-9a-f]+"/"id":"msg_chatcmpl-sf*"/;
    $body =~ s/"id":"call_[A-Za-z0-9]{24}"/"id":"call_*"/g;
    return "$body\n";
}

run_tests();

__DATA__

=== TEST 1: a plain answer, translated
--- request
POST /anthropic/v1/messages
{"model":"gpt-4o","max_tokens":64,"system":"Be brief.","messages":[{"role":"user","content":"hi there"}]}
--- response_headers
Content-Type: application/json
x-mock-path: /v1/chat/completions
x-mock-authorization: Bearer sk-oai-provider-key
x-mock-api-key:
x-mock-model: gpt-4o
--- response_body_filters eval
\&::stable
--- response_body
{"id":"msg_chatcmpl-*","type":"message","role":"assistant","model":"gpt-4o","content":[{"type":"text","text":"mock reply to: hi there"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":4,"output_tokens":5}}
--- no_error_log
[error]



=== TEST 2: the provider gets a Chat Completions request, the system prompt first
--- request
POST /anthropic/v1/messages
{"model":"gpt-recorded","max_tokens":64,"system":"Be brief.","messages":[{"role":"user","content":"hi there"}]}
--- response_headers
x-seen-uri: /record/v1/chat/completions
x-mock-path: /v1/chat/completions
x-mock-authorization: Bearer sk-oai-provider-key
x-seen-api-key:
x-seen-anthropic-version:
--- response_body_filters eval
\&::upstream_body
--- response_body
{"max_completion_tokens":64,"messages":[{"content":"Be brief.","role":"system"},{"content":"hi there","role":"user"}],"model":"gpt-recorded"}
--- no_error_log
[error]



=== TEST 3: a key sent as Bearer works too, and stays at the gateway
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
--- request
POST /anthropic/v1/messages
{"model":"gpt-recorded","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}
--- response_headers
x-mock-authorization: Bearer sk-oai-provider-key
x-seen-api-key:
--- response_body_filters eval
\&::upstream_body
--- response_body
{"max_completion_tokens":8,"messages":[{"content":"hi","role":"user"}],"model":"gpt-recorded"}
--- no_error_log
[error]



=== TEST 4: a system prompt made of text blocks is joined into one system message
--- request
POST /anthropic/v1/messages
{"model":"gpt-recorded","max_tokens":64,"system":[{"type":"text","text":"You are terse."},{"type":"text","text":"Answer in French.","cache_control":{"type":"ephemeral"}}],"messages":[{"role":"user","content":"hi"}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"max_completion_tokens":64,"messages":[{"content":"You are terse.\n\nAnswer in French.","role":"system"},{"content":"hi","role":"user"}],"model":"gpt-recorded"}
--- no_error_log
[error]



=== TEST 5: a multi-turn conversation keeps its turns in order
--- request
POST /anthropic/v1/messages
{"model":"gpt-recorded","max_tokens":64,"messages":[
 {"role":"user","content":"What is 2+2?"},
 {"role":"assistant","content":"4"},
 {"role":"user","content":[{"type":"text","text":"And 3+3?"}]},
 {"role":"assistant","content":[{"type":"text","text":"6"}]},
 {"role":"user","content":"Thanks"}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"max_completion_tokens":64,"messages":[{"content":"What is 2+2?","role":"user"},{"content":"4","role":"assistant"},{"content":"And 3+3?","role":"user"},{"content":"6","role":"assistant"},{"content":"Thanks","role":"user"}],"model":"gpt-recorded"}
--- no_error_log
[error]



=== TEST 6: consecutive messages of one role stay separate messages
--- request
POST /anthropic/v1/messages
{"model":"gpt-recorded","max_tokens":64,"messages":[
 {"role":"user","content":"one"},
 {"role":"user","content":"two"},
 {"role":"assistant","content":"three"},
 {"role":"assistant","content":"four"},
 {"role":"user","content":[{"type":"text","text":"five"},{"type":"text","text":"six"}]}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"max_completion_tokens":64,"messages":[{"content":"one","role":"user"},{"content":"two","role":"user"},{"content":"three","role":"assistant"},{"content":"four","role":"assistant"},{"content":[{"text":"five","type":"text"},{"text":"six","type":"text"}],"role":"user"}],"model":"gpt-recorded"}
--- no_error_log
[error]



=== TEST 7: sampling, stop sequences and the user id go over with OpenAI's names
top_k has no OpenAI form and is left out.
--- request
POST /anthropic/v1/messages
{"model":"gpt-recorded","max_tokens":77,"temperature":0.5,"top_p":0.9,"top_k":5,"stop_sequences":["END","\n\nHuman:"],"metadata":{"user_id":"user-42"},"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"max_completion_tokens":77,"messages":[{"content":"go","role":"user"}],"model":"gpt-recorded","stop":["END","\n\nHuman:"],"temperature":0.5,"top_p":0.9,"user":"user-42"}
--- no_error_log
[error]



=== TEST 8: images and documents: base64 sources become data URLs
--- request
POST /anthropic/v1/messages
{"model":"gpt-recorded","max_tokens":64,"messages":[{"role":"user","content":[
 {"type":"text","text":"What is in these?"},
 {"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgoAAAANSUhEUgAAAAE="}},
 {"type":"image","source":{"type":"url","url":"https://example.com/cat.jpg"}},
 {"type":"document","source":{"type":"base64","media_type":"application/pdf","data":"JVBERi0xLjQ="},"title":"report.pdf"}]}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"max_completion_tokens":64,"messages":[{"content":[{"text":"What is in these?","type":"text"},{"image_url":{"url":"data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAE="},"type":"image_url"},{"image_url":{"url":"https://example.com/cat.jpg"},"type":"image_url"},{"file":{"file_data":"data:application/pdf;base64,JVBERi0xLjQ=","filename":"report.pdf"},"type":"file"}],"role":"user"}],"model":"gpt-recorded"}
--- no_error_log
[error]



=== TEST 9: tools and tool_choice "any"; disable_parallel_tool_use
A tool without input_schema takes an empty object.
--- request
POST /anthropic/v1/messages
{"model":"gpt-recorded","max_tokens":64,"tool_choice":{"type":"any","disable_parallel_tool_use":true},"tools":[
 {"name":"get_climate","description":"Climate of a city","input_schema":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}},
 {"name":"now"}],
 "messages":[{"role":"user","content":"what about the climate in Paris?"}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"max_completion_tokens":64,"messages":[{"content":"what about the climate in Paris?","role":"user"}],"model":"gpt-recorded","parallel_tool_calls":false,"tool_choice":"required","tools":[{"function":{"description":"Climate of a city","name":"get_climate","parameters":{"properties":{"city":{"type":"string"}},"required":["city"],"type":"object"}},"type":"function"},{"function":{"name":"now","parameters":{"properties":{},"type":"object"}},"type":"function"}]}
--- no_error_log
[error]



=== TEST 10: tool_choice auto, none and a named tool
--- request eval
[map {
"POST /anthropic/v1/messages\n"
. '{"model":"gpt-recorded","max_tokens":64,"tool_choice":' . $_ . ','
. '"tools":[{"name":"now","input_schema":{"type":"object"}}],'
. '"messages":[{"role":"user","content":"time?"}]}'
} '{"type":"auto"}', '{"type":"none"}', '{"type":"tool","name":"now"}']
--- response_body_filters eval
\&::upstream_body
--- response_body eval
[map {
'{"max_completion_tokens":64,"messages":[{"content":"time?","role":"user"}],"model":"gpt-recorded",'
. '"tool_choice":' . $_ . ',"tools":[{"function":{"name":"now","parameters":{"type":"object"}},"type":"function"}]}' . "\n"
} '"auto"', '"none"', '{"function":{"name":"now"},"type":"function"}']
--- error_code eval
[200, 200, 200]
--- no_error_log
[error]



=== TEST 11: tool_use and tool_result blocks in the history
The assistant's text and tool_use blocks become one message with
tool_calls (input as a JSON string); the tool_result blocks become "tool"
messages ahead of the user's text of the same turn.
--- request
POST /anthropic/v1/messages
{"model":"gpt-recorded","max_tokens":64,"tools":[{"name":"get_climate","input_schema":{"type":"object","properties":{"city":{"type":"string"}}}},{"name":"now"}],
 "messages":[
 {"role":"user","content":"climate in Paris, and the time?"},
 {"role":"assistant","content":[
   {"type":"text","text":"Let me check."},
   {"type":"tool_use","id":"toolu_1","name":"get_climate","input":{"city":"Paris"}},
   {"type":"tool_use","id":"toolu_2","name":"now","input":{}}]},
 {"role":"user","content":[
   {"type":"tool_result","tool_use_id":"toolu_1","content":"mild"},
   {"type":"tool_result","tool_use_id":"toolu_2","content":[{"type":"text","text":"noon"},{"type":"text","text":"UTC"}]},
   {"type":"text","text":"and tomorrow?"}]}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"max_completion_tokens":64,"messages":[{"content":"climate in Paris, and the time?","role":"user"},{"content":"Let me check.","role":"assistant","tool_calls":[{"function":{"arguments":"{\"city\":\"Paris\"}","name":"get_climate"},"id":"toolu_1","type":"function"},{"function":{"arguments":"{}","name":"now"},"id":"toolu_2","type":"function"}]},{"content":"mild","role":"tool","tool_call_id":"toolu_1"},{"content":"noon\nUTC","role":"tool","tool_call_id":"toolu_2"},{"content":"and tomorrow?","role":"user"}],"model":"gpt-recorded","tools":[{"function":{"name":"get_climate","parameters":{"properties":{"city":{"type":"string"}},"type":"object"}},"type":"function"},{"function":{"name":"now","parameters":{"properties":{},"type":"object"}},"type":"function"}]}
--- no_error_log
[error]



=== TEST 12: an assistant turn of tool calls only has null content
--- request
POST /anthropic/v1/messages
{"model":"gpt-recorded","max_tokens":64,"tools":[{"name":"now"}],
 "messages":[
 {"role":"user","content":"time?"},
 {"role":"assistant","content":[{"type":"tool_use","id":"toolu_9","name":"now","input":{}}]},
 {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_9","content":"noon"}]}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"max_completion_tokens":64,"messages":[{"content":"time?","role":"user"},{"content":null,"role":"assistant","tool_calls":[{"function":{"arguments":"{}","name":"now"},"id":"toolu_9","type":"function"}]},{"content":"noon","role":"tool","tool_call_id":"toolu_9"}],"model":"gpt-recorded","tools":[{"function":{"name":"now","parameters":{"properties":{},"type":"object"}},"type":"function"}]}
--- no_error_log
[error]



=== TEST 13: the provider's tool call comes back as a tool_use block
--- request
POST /anthropic/v1/messages
{"model":"gpt-4o","max_tokens":64,"tools":[{"name":"get_weather","input_schema":{"type":"object","properties":{"location":{"type":"string"}}}}],"messages":[{"role":"user","content":"What is the weather in Paris?"}]}
--- response_body_filters eval
\&::stable
--- response_body
{"id":"msg_chatcmpl-*","type":"message","role":"assistant","model":"gpt-4o","content":[{"type":"tool_use","id":"call_*","name":"get_weather","input":{"location":"Paris"}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":6,"output_tokens":3}}
--- no_error_log
[error]



=== TEST 14: finish_reason length is stop reason max_tokens; cached tokens
Anthropic's input_tokens leave out what was read from the cache.
--- more_headers
x-api-key: sk-smartflow-test-0123456789
x-fixture: length
--- request
POST /anthropic/v1/messages
{"model":"gpt-canned","max_tokens":3,"messages":[{"role":"user","content":"say a lot"}]}
--- response_headers
Content-Type: application/json
--- response_body_filters eval
\&::stable
--- response_body
{"id":"msg_chatcmpl-canned1","type":"message","role":"assistant","model":"gpt-canned","content":[{"type":"text","text":"cut sho"}],"stop_reason":"max_tokens","stop_sequence":null,"usage":{"input_tokens":18,"cache_read_input_tokens":12,"output_tokens":3}}
--- no_error_log
[error]



=== TEST 15: finish_reason content_filter is stop reason refusal, with the refusal text
--- more_headers
x-api-key: sk-smartflow-test-0123456789
x-fixture: content-filter
--- request
POST /anthropic/v1/messages
{"model":"gpt-canned","max_tokens":64,"messages":[{"role":"user","content":"something bad"}]}
--- response_body_filters eval
\&::stable
--- response_body
{"id":"msg_chatcmpl-canned2","type":"message","role":"assistant","model":"gpt-canned","content":[{"type":"text","text":"I cannot help with that."}],"stop_reason":"refusal","stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":6}}
--- no_error_log
[error]



=== TEST 16: text and two tool calls; arguments that are not JSON become {}
--- more_headers
x-api-key: sk-smartflow-test-0123456789
x-fixture: tools
--- request
POST /anthropic/v1/messages
{"model":"gpt-canned","max_tokens":64,"tools":[{"name":"lookup"},{"name":"broken"}],"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::stable
--- response_body
{"id":"msg_chatcmpl-canned3","type":"message","role":"assistant","model":"gpt-canned","content":[{"type":"text","text":"Checking."},{"type":"tool_use","id":"call_a","name":"lookup","input":{"q":"x","n":[1,2]}},{"type":"tool_use","id":"call_b","name":"broken","input":{}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":4}}
--- no_error_log
[error]



=== TEST 17: an answer whose content is an array of text parts
--- more_headers
x-api-key: sk-smartflow-test-0123456789
x-fixture: parts
--- request
POST /anthropic/v1/messages
{"model":"gpt-canned","max_tokens":64,"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::stable
--- response_body
{"id":"msg_chatcmpl-canned4","type":"message","role":"assistant","model":"gpt-canned","content":[{"type":"text","text":"first second"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":2,"output_tokens":2}}
--- no_error_log
[error]



=== TEST 18: a renamed route: the provider gets the new name, the client sees its own
--- request
POST /anthropic/v1/messages
{"model":"gpt-renamed","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}
--- response_headers
x-mock-model: gpt-4o-mini
--- response_body_filters eval
\&::stable
--- response_body
{"id":"msg_chatcmpl-*","type":"message","role":"assistant","model":"gpt-renamed","content":[{"type":"text","text":"mock reply to: hi"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":4}}
--- no_error_log
[error]



=== TEST 19: text with escapes and non-ASCII survives the translation both ways
--- request
POST /anthropic/v1/messages
{"model":"gpt-recorded","max_tokens":64,"messages":[{"role":"user","content":"caf\u00e9 \ud83d\ude00 \"q\" \\ / tab\there\nnext \u0001 \u2028 é"}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"max_completion_tokens":64,"messages":[{"content":"caf\u00e9 \ud83d\ude00 \"q\" \\ / tab\there\nnext \u0001 \u2028 \u00e9","role":"user"}],"model":"gpt-recorded"}
--- no_error_log
[error]



=== TEST 20: the echo provider answers in Anthropic's format
--- request
POST /anthropic/v1/messages
{"model":"smartflow-echo","max_tokens":64,"system":"ignored by echo","messages":[{"role":"user","content":"first"},{"role":"assistant","content":"ok"},{"role":"user","content":"Hello, echo!"}]}
--- response_headers
Content-Type: application/json
--- response_body_filters eval
\&::stable
--- response_body
{"id":"msg_chatcmpl-sf*","type":"message","role":"assistant","model":"smartflow-echo","content":[{"type":"text","text":"Echo: Hello, echo!"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":7,"output_tokens":3}}
--- no_error_log
[error]
[alert]



=== TEST 21: the echo provider with a user turn made of text blocks
--- request
POST /anthropic/v1/messages
{"model":"smartflow-echo","max_tokens":64,"messages":[{"role":"user","content":[{"type":"text","text":"hello"},{"type":"text","text":"echo two"}]}]}
--- response_body_filters eval
\&::stable
--- response_body
{"id":"msg_chatcmpl-sf*","type":"message","role":"assistant","model":"smartflow-echo","content":[{"type":"text","text":"Echo: hello echo two"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":4}}
--- no_error_log
[error]
[alert]



=== TEST 22: a content block OpenAI has no form for is refused in Anthropic's words
--- request
POST /anthropic/v1/messages
{"model":"gpt-4o","max_tokens":64,"messages":[{"role":"user","content":[{"type":"search_result","source":"https://example.com","title":"t","content":[]}]}]}
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body chomp
{"type":"error","error":{"type":"invalid_request_error","message":"a content block type is not supported by this provider"}}
--- error_log
smartflow proxy: a content block type is not supported by this provider



=== TEST 23: server tools cannot go to an OpenAI provider
--- request
POST /anthropic/v1/messages
{"model":"gpt-4o","max_tokens":64,"tools":[{"type":"web_search_20250305","name":"web_search","max_uses":2}],"messages":[{"role":"user","content":"news?"}]}
--- error_code: 400
--- response_body chomp
{"type":"error","error":{"type":"invalid_request_error","message":"only client tools can be sent to this provider"}}
--- error_log
smartflow proxy: only client tools can be sent to this provider



=== TEST 24: a reasoning model gets the limit as max_completion_tokens
--- request
POST /anthropic/v1/messages
{"model":"o3-mini","max_tokens":64,"messages":[{"role":"user","content":"hi there"}]}
--- response_headers
Content-Type: application/json
x-mock-model: o3-mini
--- response_body_filters eval
\&::stable
--- response_body
{"id":"msg_chatcmpl-*","type":"message","role":"assistant","model":"o3-mini","content":[{"type":"text","text":"mock reply to: hi there"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":2,"output_tokens":5}}
--- no_error_log
[error]



=== TEST 25: so does gpt-5, streamed
--- request
POST /anthropic/v1/messages
{"model":"gpt-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}
--- response_body_like: "text":" hi".*event: message_stop
--- no_error_log
[error]



=== TEST 26: the provider refuses max_tokens for these models, as OpenAI does
--- request
POST /v1/chat/completions
{"model":"o3-mini","max_tokens":64,"messages":[{"role":"user","content":"hi"}]}
--- error_code: 400
--- response_body chomp
{"error":{"message":"Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.","type":"invalid_request_error","param":"max_tokens","code":"unsupported_parameter"}}
