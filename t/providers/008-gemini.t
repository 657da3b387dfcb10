# Models routed to a Gemini provider (type=gemini): OpenAI clients
# (/v1/chat/completions) and Anthropic clients (/anthropic/v1/messages)
# get translated requests, answers, streams and errors.  The provider is
# asked at {path}/models/{upstream model}:generateContent (or
# :streamGenerateContent?alt=sse for a stream, path /v1beta by default),
# with the gateway's key in x-goog-api-key and no Authorization; the body
# names no model.
#
# What the provider receives is seen through a recorder: a second server in
# this nginx that hands the gateway's request on to the mock with the
# request's own body as the mock's reply text (x-mock-reply), so the
# assistant's answer is the exact body the provider got.  Answers the mock
# cannot give (other finish reasons, thoughts, several calls, usage details,
# error events in a stream) come from canned responses chosen with an
# x-fixture request header.  The gateway's locations are the shipped ones
# (conf/smartflow_locations.conf).
#
# Streams are checked through openai_sse() and anthropic_sse() (from
# Smartflow::SSE), which decode every event and write one line per thing a
# client would see, flagging anything that is not a well-formed event of
# the client's format.

use lib 't/lib';
use Smartflow::Conf;
use Smartflow::Mock;
use Test::Nginx::Socket 'no_plan';
use Smartflow::Blocks;
use Smartflow::SSE;

$ENV{TEST_NGINX_FIXTURE_PORT} ||= 1988;

our $HttpConfig = Smartflow::Blocks::mock_upstreams(fixture => 1)
                  . <<'_EOC_';
    smartflow_provider gemini type=gemini upstream=http://sf_mock
                       key=gm-provider-key-0123456789;
    smartflow_provider keyless type=gemini upstream=http://sf_mock;
    smartflow_provider recorder type=gemini upstream=http://sf_fixture
                       path=/record/v1beta key=gm-provider-key-0123456789;
    smartflow_provider canned type=gemini upstream=http://sf_fixture
                       path=/canned key=gm-provider-key-0123456789;

    smartflow_route gemini-renamed gemini model=gemini-2.5-flash;
    smartflow_route gemini-spaced gemini "model=tuned model/1";
    smartflow_route gemini-keyless keyless;
    smartflow_route gemini-recorded recorder;
    smartflow_route gemini-canned canned;
    smartflow_route gemini-* gemini;

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
            add_header x-seen-goog-api-key $http_x_goog_api_key;
            add_header x-seen-authorization $http_authorization;
            add_header x-seen-api-key $http_x_api_key;
            add_header x-seen-anthropic-version $http_anthropic_version;
        }

        location /canned/ {
            rewrite ^ /fixture/$http_x_fixture last;
        }

        # whole answers

        location = /fixture/max-tokens {
            return 200 '{"candidates":[{"content":{"parts":[{"text":"cut sho"}],"role":"model"},"finishReason":"MAX_TOKENS","index":0}],"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":3,"totalTokenCount":15},"modelVersion":"gemini-upstream","responseId":"canned1"}';
        }

        location = /fixture/safety {
            return 200 '{"candidates":[{"content":{"parts":[],"role":"model"},"finishReason":"SAFETY","index":0}],"usageMetadata":{"promptTokenCount":5,"totalTokenCount":5},"modelVersion":"gemini-upstream","responseId":"canned2"}';
        }

        location = /fixture/blocked {
            return 200 '{"promptFeedback":{"blockReason":"PROHIBITED_CONTENT"},"usageMetadata":{"promptTokenCount":4,"totalTokenCount":4},"modelVersion":"gemini-upstream","responseId":"canned3"}';
        }

        location = /fixture/mixed {
            return 200 '{"candidates":[{"content":{"parts":[{"text":"Let me think.","thought":true},{"text":"Looking both up. "},{"text":"One moment."},{"functionCall":{"name":"lookup","args":{"q":"caf\u00e9","n":[1,2]}}},{"functionCall":{"id":"fc_b","name":"ping","args":{}}}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":7,"totalTokenCount":40,"cachedContentTokenCount":4,"thoughtsTokenCount":20,"toolUsePromptTokenCount":3},"modelVersion":"gemini-upstream","responseId":"canned4"}';
        }

        location = /fixture/no-id {
            return 200 '{"candidates":[{"content":{"parts":[{"text":"anonymous"}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":1,"candidatesTokenCount":1,"totalTokenCount":2}}';
        }

        location = /fixture/html-502 {
            default_type text/html;
            return 502 '<html><body><h1>502 Bad Gateway</h1></body></html>';
        }

        # streams (Gemini separates its events with CRLF CRLF)

        location = /fixture/s-two-calls {
            default_type text/event-stream;
            return 200 'data: {"candidates":[{"content":{"parts":[{"text":"Checking both."}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":8,"totalTokenCount":8},"modelVersion":"gemini-upstream","responseId":"cannedS1"}\r\n\r\ndata: {"candidates":[{"content":{"parts":[{"functionCall":{"name":"lookup","args":{"q":"x"}}},{"functionCall":{"name":"now","args":{}}}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":12,"totalTokenCount":20},"modelVersion":"gemini-upstream","responseId":"cannedS1"}\r\n\r\n';
        }

        location = /fixture/s-max-tokens {
            default_type text/event-stream;
            return 200 'data: {"candidates":[{"content":{"parts":[{"text":"cut "}],"role":"model"},"index":0}],"modelVersion":"gemini-upstream","responseId":"cannedS2"}\r\n\r\ndata: {"candidates":[{"content":{"parts":[{"text":"sho"}],"role":"model"},"finishReason":"MAX_TOKENS","index":0}],"modelVersion":"gemini-upstream","responseId":"cannedS2"}\r\n\r\ndata: {"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":3,"totalTokenCount":15},"modelVersion":"gemini-upstream","responseId":"cannedS2"}\r\n\r\n';
        }

        location = /fixture/s-error {
            default_type text/event-stream;
            return 200 'data: {"candidates":[{"content":{"parts":[{"text":"Hel"}],"role":"model"},"index":0}],"modelVersion":"gemini-upstream","responseId":"cannedS3"}\r\n\r\ndata: {"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}\r\n\r\n';
        }

        location = /fixture/s-unfinished {
            default_type text/event-stream;
            return 200 'data: {"candidates":[{"content":{"parts":[{"text":"Half"}],"role":"model"},"index":0}],"modelVersion":"gemini-upstream","responseId":"cannedS4"}\r\n\r\n';
        }

        location = /fixture/s-blocked {
            default_type text/event-stream;
            return 200 'data: {"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":4,"totalTokenCount":4},"modelVersion":"gemini-upstream","responseId":"cannedS5"}\r\n\r\n';
        }

        location = /fixture/s-thought {
            default_type text/event-stream;
            return 200 'data: {"candidates":[{"content":{"parts":[{"text":"Pondering.","thought":true}],"role":"model"},"index":0}],"modelVersion":"gemini-upstream","responseId":"cannedS6"}\n\ndata: {"candidates":[{"content":{"parts":[{"text":"Done."}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":1,"thoughtsTokenCount":9,"totalTokenCount":13},"modelVersion":"gemini-upstream","responseId":"cannedS6"}\n\n';
        }
    }
_EOC_

# The shipped server-level locations (conf/smartflow_locations.conf), their
# nested includes (smartflow_proxy.conf ...) made absolute.

our $Locations = Smartflow::Conf::shipped_locations();

Smartflow::Blocks::defaults(http_config => $HttpConfig, config => $Locations,
                            keys => 1);

# A chat.completion (or an Anthropic message) with its generated parts
# made constant.
sub stable {
    my $body = shift;
    $body =~ s/"id":"(msg_|)chatcmpl-[A-Za-z0-9]{22}"/"id":"$1chatcmpl-*"/;
    $body =~ s/"id":"call_[A-Za-z0-9]{22}_(\d+)"/"id":"call_*_$1"/g;
    $body =~ s/"created":\d{10}/"created":1700000000/;
    return "$body\n";
}

# The body the provider received: the text of the recorded answer (an
# OpenAI chat.completion or an Anthropic message), re-encoded with sorted
# keys and \u escapes.
sub upstream_body { recorded_answer(shift) }

# The reply of the split streams: two- and four-byte UTF-8 sequences,
# quotes and a backslash, all of which the translation re-escapes.
our $Reply = qq{caf\x{c3}\x{a9} "q" \\ \x{f0}\x{9f}\x{98}\x{80} end};
our @Splits = (1 .. 12);

our $SplitOpenAI = <<'_EOS_';
chat.completion.chunk gemini-2.0-flash
role assistant
content "caf\u00e9"
content " \"q\""
content " \\"
content " \ud83d\ude00"
content " end"
finish stop
usage 1 5 6
[DONE]
_EOS_

our $SplitAnthropic = <<'_EOS_';
message_start msg_chatcmpl-* message assistant gemini-2.0-flash input_tokens=0 output_tokens=0
ping
start 0 text
text 0 "caf\u00e9"
text 0 " \"q\""
text 0 " \\"
text 0 " \ud83d\ude00"
text 0 " end"
stop 0
message_delta end_turn input_tokens=1 output_tokens=5
message_stop
_EOS_

our $Chat = '{"model":"gemini-2.0-flash","messages":[{"role":"user","content":"hi"}]}';
our $ChatStream = '{"model":"gemini-2.0-flash","stream":true,"messages":[{"role":"user","content":"hi"}]}';
our $Message = '{"model":"gemini-2.0-flash","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}';
our $MessageStream = '{"model":"gemini-2.0-flash","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"hi"}]}';

run_tests();

__DATA__

=== TEST 1: OpenAI client: a plain answer, translated
--- request
POST /v1/chat/completions
{"model":"gemini-2.0-flash","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi there"}]}
--- response_headers
x-mock-path: /v1beta/models/gemini-2.0-flash:generateContent
x-mock-api-key: gm-provider-key-0123456789
x-mock-authorization:
x-mock-model: gemini-2.0-flash
x-smartflow-deployment: gemini/gemini-*
--- response_body_filters eval
\&::stable
--- response_body
{"id":"chatcmpl-*","object":"chat.completion","created":1700000000,"model":"gemini-2.0-flash","choices":[{"index":0,"message":{"role":"assistant","content":"mock reply to: hi there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":4,"completion_tokens":5,"total_tokens":9}}
--- no_error_log
[error]



=== TEST 2: OpenAI client: the answer is JSON whatever charset the provider names
--- request
POST /v1/chat/completions
{"model":"gemini-2.0-flash","messages":[{"role":"user","content":"hi"}]}
--- response_headers_like
Content-Type: application/json(?:; charset=UTF-8)?
--- response_body_like chomp
^\{"id":"chatcmpl-\w+","object":"chat\.completion",
--- no_error_log
[error]



=== TEST 3: the provider gets a generateContent request: key in x-goog-api-key, no model in the body
--- request
POST /v1/chat/completions
{"model":"gemini-recorded","messages":[{"role":"user","content":"hi there"}]}
--- response_headers
x-seen-uri: /record/v1beta/models/gemini-recorded:generateContent
x-seen-goog-api-key: gm-provider-key-0123456789
x-seen-authorization:
x-seen-api-key:
x-seen-anthropic-version:
--- response_body_filters eval
\&::upstream_body
--- response_body
{"contents":[{"parts":[{"text":"hi there"}],"role":"user"}]}
--- no_error_log
[error]



=== TEST 4: the client's own keys never reach the provider
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-goog-api-key: AIza-client-key-that-must-not-leak
x-api-key: sk-client-key-that-must-not-leak
anthropic-version: 2099-12-31
--- request
POST /v1/chat/completions
{"model":"gemini-recorded","messages":[{"role":"user","content":"hi"}]}
--- response_headers
x-seen-goog-api-key: gm-provider-key-0123456789
x-seen-authorization:
x-seen-api-key:
x-seen-anthropic-version:
--- response_body_filters eval
\&::upstream_body
--- response_body
{"contents":[{"parts":[{"text":"hi"}],"role":"user"}]}
--- no_error_log
[error]



=== TEST 5: a provider without a key gets none, not the client's
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-goog-api-key: AIza-client-key-that-must-not-leak
--- request
POST /v1/chat/completions
{"model":"gemini-keyless","messages":[{"role":"user","content":"hi"}]}
--- response_headers
x-mock-path: /v1beta/models/gemini-keyless:generateContent
x-mock-api-key:
x-mock-authorization:
x-smartflow-deployment: keyless/gemini-keyless
--- response_body_like chomp
"content":"mock reply to: hi"
--- no_error_log
[error]



=== TEST 6: a renamed route: the path names the upstream model, the client sees its own
--- request
POST /v1/chat/completions
{"model":"gemini-renamed","messages":[{"role":"user","content":"hi"}]}
--- response_headers
x-mock-path: /v1beta/models/gemini-2.5-flash:generateContent
x-mock-model: gemini-2.5-flash
x-smartflow-deployment: gemini/gemini-2.5-flash
--- response_body_filters eval
\&::stable
--- response_body
{"id":"chatcmpl-*","object":"chat.completion","created":1700000000,"model":"gemini-renamed","choices":[{"index":0,"message":{"role":"assistant","content":"mock reply to: hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":4,"total_tokens":5}}
--- no_error_log
[error]



=== TEST 7: an upstream model name is escaped as one path segment
--- request
POST /v1/chat/completions
{"model":"gemini-spaced","messages":[{"role":"user","content":"hi"}]}
--- response_headers
x-mock-path: /v1beta/models/tuned%20model%2F1:generateContent
x-mock-model: tuned model/1
--- response_body_like chomp
"model":"gemini-spaced"
--- no_error_log
[error]



=== TEST 8: system and developer messages become the one systemInstruction
--- request
POST /v1/chat/completions
{"model":"gemini-recorded","messages":[
 {"role":"system","content":"You are terse."},
 {"role":"user","content":"first"},
 {"role":"developer","content":[{"type":"text","text":"Answer in French."},{"type":"text","text":"No emoji."}]},
 {"role":"user","content":"second"}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"contents":[{"parts":[{"text":"first"},{"text":"second"}],"role":"user"}],"systemInstruction":{"parts":[{"text":"You are terse.\n\nAnswer in French.\n\nNo emoji."}]}}
--- no_error_log
[error]



=== TEST 9: a multi-turn conversation: assistant turns are the model's
--- request
POST /v1/chat/completions
{"model":"gemini-recorded","messages":[
 {"role":"user","content":"What is 2+2?"},
 {"role":"assistant","content":"4"},
 {"role":"user","content":"And 3+3?"},
 {"role":"assistant","content":"6"},
 {"role":"user","content":"Thanks"}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"contents":[{"parts":[{"text":"What is 2+2?"}],"role":"user"},{"parts":[{"text":"4"}],"role":"model"},{"parts":[{"text":"And 3+3?"}],"role":"user"},{"parts":[{"text":"6"}],"role":"model"},{"parts":[{"text":"Thanks"}],"role":"user"}]}
--- no_error_log
[error]



=== TEST 10: consecutive messages of one role are one turn; empty texts are left out
--- request
POST /v1/chat/completions
{"model":"gemini-recorded","messages":[
 {"role":"user","content":"one"},
 {"role":"user","content":[{"type":"text","text":"two"},{"type":"text","text":""}]},
 {"role":"assistant","content":"three"},
 {"role":"assistant","content":"four"},
 {"role":"user","content":"five"}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"contents":[{"parts":[{"text":"one"},{"text":"two"}],"role":"user"},{"parts":[{"text":"three"},{"text":"four"}],"role":"model"},{"parts":[{"text":"five"}],"role":"user"}]}
--- no_error_log
[error]



=== TEST 11: max_tokens, temperature, top_p, stop and seed go in generationConfig
--- request
POST /v1/chat/completions
{"model":"gemini-recorded","max_tokens":77,"temperature":1.7,"top_p":0.9,"stop":"END","seed":42,"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"contents":[{"parts":[{"text":"go"}],"role":"user"}],"generationConfig":{"maxOutputTokens":77,"seed":42,"stopSequences":["END"],"temperature":1.7,"topP":0.9}}
--- no_error_log
[error]



=== TEST 12: max_completion_tokens wins over max_tokens; a stop array; no penalties
--- request
POST /v1/chat/completions
{"model":"gemini-recorded","max_tokens":500,"max_completion_tokens":12,"temperature":0.25,"presence_penalty":0.5,"frequency_penalty":0.5,"stop":["\n\n","Human:"],"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"contents":[{"parts":[{"text":"go"}],"role":"user"}],"generationConfig":{"maxOutputTokens":12,"stopSequences":["\n\n","Human:"],"temperature":0.25}}
--- no_error_log
[error]



=== TEST 13: "stream": false goes out as a generateContent request
--- request
POST /v1/chat/completions
{"model":"gemini-recorded","stream":false,"messages":[{"role":"user","content":"hi"}]}
--- response_headers
x-seen-uri: /record/v1beta/models/gemini-recorded:generateContent
--- response_body_filters eval
\&::upstream_body
--- response_body
{"contents":[{"parts":[{"text":"hi"}],"role":"user"}]}
--- no_error_log
[error]



=== TEST 14: response_format json_schema: a JSON answer with the schema Gemini accepts
--- request
POST /v1/chat/completions
{"model":"gemini-recorded","response_format":{"type":"json_schema","json_schema":{"name":"answer","strict":true,"schema":{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"],"additionalProperties":false}}},"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"contents":[{"parts":[{"text":"go"}],"role":"user"}],"generationConfig":{"responseMimeType":"application/json","responseSchema":{"properties":{"a":{"type":"integer"}},"required":["a"],"type":"object"}}}
--- no_error_log
[error]



=== TEST 15: images: a data URL is inline data, an https URL a file URI with its media type
--- request
POST /v1/chat/completions
{"model":"gemini-recorded","messages":[{"role":"user","content":[
 {"type":"text","text":"What is in these?"},
 {"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAE="}},
 {"type":"image_url","image_url":{"url":"https://example.com/cat.webp","detail":"low"}},
 {"type":"image_url","image_url":{"url":"https://example.com/picture"}}]}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"contents":[{"parts":[{"text":"What is in these?"},{"inlineData":{"data":"iVBORw0KGgoAAAANSUhEUgAAAAE=","mimeType":"image/png"}},{"fileData":{"fileUri":"https://example.com/cat.webp","mimeType":"image/webp"}},{"fileData":{"fileUri":"https://example.com/picture","mimeType":"image/jpeg"}}],"role":"user"}]}
--- no_error_log
[error]



=== TEST 16: an image that is neither an http(s) URL nor a data URL is refused before it leaves
--- request
POST /v1/chat/completions
{"model":"gemini-2.0-flash","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"ftp://example.com/cat.jpg"}}]}]}
--- error_code: 400
--- response_headers
Content-Type: application/json
!x-mock-path
--- response_body chomp
{"error":{"message":"an image must be an http(s) URL or a base64 data URL","type":"invalid_request_error","param":null,"code":"invalid_request"}}
--- error_log
smartflow proxy: an image must be an http(s) URL or a base64 data URL



=== TEST 17: more than one choice is refused: the translation carries one back
--- request
POST /v1/chat/completions
{"model":"gemini-2.0-flash","n":2,"messages":[{"role":"user","content":"hi"}]}
--- error_code: 400
--- response_body chomp
{"error":{"message":"this provider returns one choice: 'n' must be 1","type":"invalid_request_error","param":null,"code":"invalid_request"}}



=== TEST 18: tools and tool_choice "required"; schema keywords Gemini refuses are dropped
A function without parameters declares none.
--- request
POST /v1/chat/completions
{"model":"gemini-recorded","tool_choice":"required","tools":[
 {"type":"function","function":{"name":"get_climate","description":"Climate of a city","strict":true,"parameters":{"$schema":"http://json-schema.org/draft-07/schema#","type":"object","properties":{"city":{"type":"string"}},"required":["city"],"additionalProperties":false}}},
 {"type":"function","function":{"name":"now"}}],
 "messages":[{"role":"user","content":"what about the climate in Paris?"}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"contents":[{"parts":[{"text":"what about the climate in Paris?"}],"role":"user"}],"toolConfig":{"functionCallingConfig":{"mode":"ANY"}},"tools":[{"functionDeclarations":[{"description":"Climate of a city","name":"get_climate","parameters":{"properties":{"city":{"type":"string"}},"required":["city"],"type":"object"}},{"name":"now"}]}]}
--- no_error_log
[error]



=== TEST 19: tool_choice "auto", "none" and a named function
--- request eval
[map {
"POST /v1/chat/completions\n"
. '{"model":"gemini-recorded","tool_choice":' . $_ . ',"tools":[{"type":"function",'
. '"function":{"name":"now","parameters":{"type":"object","properties":{"tz":{"type":"string"}}}}}],'
. '"messages":[{"role":"user","content":"time?"}]}'
} '"auto"', '"none"', '{"type":"function","function":{"name":"now"}}']
--- more_headers eval
[($::OpenAIKey) x 3]
--- response_body_filters eval
\&::upstream_body
--- response_body eval
[map {
'{"contents":[{"parts":[{"text":"time?"}],"role":"user"}],'
. '"toolConfig":{"functionCallingConfig":' . $_ . '},'
. '"tools":[{"functionDeclarations":[{"name":"now","parameters":{"properties":{"tz":{"type":"string"}},"type":"object"}}]}]}' . "\n"
} '{"mode":"AUTO"}', '{"mode":"NONE"}', '{"allowedFunctionNames":["now"],"mode":"ANY"}']
--- error_code eval
[200, 200, 200]
--- no_error_log
[error]



=== TEST 20: tool calls and tool results in the history
The assistant's tool_calls become functionCall parts (arguments parsed,
empty ones as {}; the first signed as Gemini 3 asks); each tool message a
functionResponse named after its call, a JSON object result as the
response itself, ahead of the user's text in the same user turn.
--- request
POST /v1/chat/completions
{"model":"gemini-recorded","tools":[{"type":"function","function":{"name":"get_climate","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}},{"type":"function","function":{"name":"now"}}],
 "messages":[
 {"role":"user","content":"climate in Paris, and the time?"},
 {"role":"assistant","content":null,"tool_calls":[
   {"id":"call_1","type":"function","function":{"name":"get_climate","arguments":"{\"city\":\"Paris\"}"}},
   {"id":"call_2","type":"function","function":{"name":"now","arguments":""}}]},
 {"role":"tool","tool_call_id":"call_1","content":"mild"},
 {"role":"tool","tool_call_id":"call_2","content":[{"type":"text","text":"{\"time\":\"noon\"}"}]},
 {"role":"user","content":"and tomorrow?"}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"contents":[{"parts":[{"text":"climate in Paris, and the time?"}],"role":"user"},{"parts":[{"functionCall":{"args":{"city":"Paris"},"name":"get_climate"},"thoughtSignature":"skip_thought_signature_validator"},{"functionCall":{"args":{},"name":"now"}}],"role":"model"},{"parts":[{"functionResponse":{"name":"get_climate","response":{"content":"mild"}}},{"functionResponse":{"name":"now","response":{"time":"noon"}}},{"text":"and tomorrow?"}],"role":"user"}],"tools":[{"functionDeclarations":[{"name":"get_climate","parameters":{"properties":{"city":{"type":"string"}},"type":"object"}},{"name":"now"}]}]}
--- no_error_log
[error]



=== TEST 21: a tool result whose call is unknown is refused
--- request
POST /v1/chat/completions
{"model":"gemini-2.0-flash","messages":[{"role":"user","content":"hi"},{"role":"tool","tool_call_id":"call_nowhere","content":"lost"}]}
--- error_code: 400
--- response_body chomp
{"error":{"message":"a tool message's 'tool_call_id' matches no earlier tool call","type":"invalid_request_error","param":null,"code":"invalid_request"}}



=== TEST 22: the provider's functionCall comes back as tool_calls
--- request
POST /v1/chat/completions
{"model":"gemini-2.0-flash","tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"location":{"type":"string"}}}}}],"tool_choice":"auto","messages":[{"role":"user","content":"What is the weather in Paris?"}]}
--- response_body_filters eval
\&::stable
--- response_body
{"id":"chatcmpl-*","object":"chat.completion","created":1700000000,"model":"gemini-2.0-flash","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_*_0","type":"function","function":{"name":"get_weather","arguments":"{\"location\":\"Paris\"}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":6,"completion_tokens":3,"total_tokens":9}}
--- no_error_log
[error]



=== TEST 23: the tool result goes back and the model answers in text
--- request
POST /v1/chat/completions
{"model":"gemini-2.0-flash","tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"location":{"type":"string"}}}}}],
 "messages":[
 {"role":"user","content":"What is the weather in Paris?"},
 {"role":"assistant","content":null,"tool_calls":[{"id":"call_abc_0","type":"function","function":{"name":"get_weather","arguments":"{\"location\":\"Paris\"}"}}]},
 {"role":"tool","tool_call_id":"call_abc_0","content":"18 degrees, sunny"}]}
--- response_body_filters eval
\&::stable
--- response_body
{"id":"chatcmpl-*","object":"chat.completion","created":1700000000,"model":"gemini-2.0-flash","choices":[{"index":0,"message":{"role":"assistant","content":"mock reply to: What is the weather in Paris?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":6,"completion_tokens":9,"total_tokens":15}}
--- no_error_log
[error]



=== TEST 24: finish reason MAX_TOKENS is length
--- more_headers eval
$::OpenAIKey . "x-fixture: max-tokens"
--- request
POST /v1/chat/completions
{"model":"gemini-canned","max_tokens":3,"messages":[{"role":"user","content":"say a lot"}]}
--- response_headers
x-smartflow-deployment: canned/gemini-canned
--- response_body_filters eval
\&::stable
--- response_body
{"id":"chatcmpl-canned1","object":"chat.completion","created":1700000000,"model":"gemini-canned","choices":[{"index":0,"message":{"role":"assistant","content":"cut sho"},"finish_reason":"length"}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}
--- no_error_log
[error]



=== TEST 25: a blocked answer or a blocked prompt is content_filter
--- more_headers eval
[$::OpenAIKey . "x-fixture: safety", $::OpenAIKey . "x-fixture: blocked"]
--- request eval
["POST /v1/chat/completions\n" . '{"model":"gemini-canned","messages":[{"role":"user","content":"something bad"}]}',
 "POST /v1/chat/completions\n" . '{"model":"gemini-canned","messages":[{"role":"user","content":"something worse"}]}']
--- response_body_filters eval
\&::stable
--- response_body eval
['{"id":"chatcmpl-canned2","object":"chat.completion","created":1700000000,"model":"gemini-canned","choices":[{"index":0,"message":{"role":"assistant","content":""},"finish_reason":"content_filter"}],"usage":{"prompt_tokens":5,"completion_tokens":0,"total_tokens":5}}' . "\n",
 '{"id":"chatcmpl-canned3","object":"chat.completion","created":1700000000,"model":"gemini-canned","choices":[{"index":0,"message":{"role":"assistant","content":""},"finish_reason":"content_filter"}],"usage":{"prompt_tokens":4,"completion_tokens":0,"total_tokens":4}}' . "\n"]
--- error_code eval
[200, 200]
--- no_error_log
[error]



=== TEST 26: thoughts are left out, texts joined, two calls, usage details
Tool-use prompt tokens count as prompt, thoughts as completion (and as
reasoning_tokens); cached content is cached_tokens.  A call with its own
id keeps it.
--- more_headers eval
$::OpenAIKey . "x-fixture: mixed"
--- request
POST /v1/chat/completions
{"model":"gemini-canned","tools":[{"type":"function","function":{"name":"lookup"}},{"type":"function","function":{"name":"ping"}}],"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::stable
--- response_body
{"id":"chatcmpl-canned4","object":"chat.completion","created":1700000000,"model":"gemini-canned","choices":[{"index":0,"message":{"role":"assistant","content":"Looking both up. One moment.","tool_calls":[{"id":"call_canned4_0","type":"function","function":{"name":"lookup","arguments":"{\"q\":\"café\",\"n\":[1,2]}"}},{"id":"fc_b","type":"function","function":{"name":"ping","arguments":"{}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":13,"completion_tokens":27,"total_tokens":40,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":20}}}
--- no_error_log
[error]



=== TEST 27: an answer without a responseId still gets an id
--- more_headers eval
$::OpenAIKey . "x-fixture: no-id"
--- request
POST /v1/chat/completions
{"model":"gemini-canned","messages":[{"role":"user","content":"who?"}]}
--- response_body_like chomp
^\{"id":"chatcmpl-\d+","object":"chat\.completion","created":\d+,"model":"gemini-canned","choices":\[\{"index":0,"message":\{"role":"assistant","content":"anonymous"\},"finish_reason":"stop"\}\],"usage":\{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2\}\}$
--- no_error_log
[error]



=== TEST 28: text with escapes and non-ASCII survives the translation both ways
--- request
POST /v1/chat/completions
{"model":"gemini-recorded","messages":[{"role":"user","content":"caf\u00e9 \ud83d\ude00 \"q\" \\ / tab\there\nnext \u0001 \u2028 é"}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"contents":[{"parts":[{"text":"caf\u00e9 \ud83d\ude00 \"q\" \\ / tab\there\nnext \u0001 \u2028 \u00e9"}],"role":"user"}]}
--- no_error_log
[error]



=== TEST 29: OpenAI client: a stream without usage
--- request
POST /v1/chat/completions
{"model":"gemini-2.0-flash","stream":true,"messages":[{"role":"user","content":"hi there"}]}
--- response_headers
Content-Type: text/event-stream
X-Accel-Buffering: no
x-mock-path: /v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse
x-mock-api-key: gm-provider-key-0123456789
x-mock-authorization:
!Content-Length
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk gemini-2.0-flash
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



=== TEST 30: OpenAI client: a stream with include_usage ends with the exact usage
--- request
POST /v1/chat/completions
{"model":"gemini-2.0-flash","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi there"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk gemini-2.0-flash
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



=== TEST 31: include_usage false is no usage chunk
--- request
POST /v1/chat/completions
{"model":"gemini-2.0-flash","stream":true,"stream_options":{"include_usage":false},"messages":[{"role":"user","content":"hi"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk gemini-2.0-flash
role assistant
content "mock"
content " reply"
content " to:"
content " hi"
finish stop
[DONE]
--- no_error_log
[error]



=== TEST 32: the provider is asked for an SSE stream, with the same body as a whole answer
--- request
POST /v1/chat/completions
{"model":"gemini-recorded","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}
--- response_headers
x-seen-uri: /record/v1beta/models/gemini-recorded:streamGenerateContent?alt=sse
x-seen-goog-api-key: gm-provider-key-0123456789
--- response_body_filters eval
\&::recorded_openai_stream
--- response_body
{"contents":[{"parts":[{"text":"hi"}],"role":"user"}]}
usage chunk
--- no_error_log
[error]



=== TEST 33: OpenAI client: a streamed function call, whole in one delta
--- request
POST /v1/chat/completions
{"model":"gemini-2.0-flash","stream":true,"stream_options":{"include_usage":true},"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"location":{"type":"string"}}}}}],"messages":[{"role":"user","content":"What is the weather in Paris?"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk gemini-2.0-flash
role assistant
tool 0 call_*_0 function get_weather
args 0 "{\"location\":\"Paris\"}"
finish tool_calls
usage 6 3 9
[DONE]
--- no_error_log
[error]



=== TEST 34: OpenAI client: text, then two calls in one event (CRLF framing)
--- more_headers eval
$::OpenAIKey . "x-fixture: s-two-calls"
--- request
POST /v1/chat/completions
{"model":"gemini-canned","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk gemini-canned
role assistant
content "Checking both."
tool 0 call_cannedS1_0 function lookup
args 0 "{\"q\":\"x\"}"
tool 1 call_cannedS1_1 function now
args 1 "{}"
finish tool_calls
usage 8 12 20
[DONE]
--- no_error_log
[error]



=== TEST 35: OpenAI client: MAX_TOKENS is length; usage that comes after the finish counts
--- more_headers eval
$::OpenAIKey . "x-fixture: s-max-tokens"
--- request
POST /v1/chat/completions
{"model":"gemini-canned","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk gemini-canned
role assistant
content "cut "
content "sho"
finish length
usage 12 3 15
[DONE]
--- no_error_log
[error]



=== TEST 36: OpenAI client: thoughts are left out of a stream, counted as completion
--- more_headers eval
$::OpenAIKey . "x-fixture: s-thought"
--- request
POST /v1/chat/completions
{"model":"gemini-canned","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk gemini-canned
role assistant
content "Done."
finish stop
usage 3 10 13
[DONE]
--- no_error_log
[error]



=== TEST 37: OpenAI client: a blocked prompt in a stream is content_filter
--- more_headers eval
$::OpenAIKey . "x-fixture: s-blocked"
--- request
POST /v1/chat/completions
{"model":"gemini-canned","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk gemini-canned
role assistant
finish content_filter
usage 4 0 4
[DONE]
--- no_error_log
[error]



=== TEST 38: OpenAI client: the provider's error event is an error chunk, then [DONE]
--- more_headers eval
$::OpenAIKey . "x-fixture: s-error"
--- request
POST /v1/chat/completions
{"model":"gemini-canned","stream":true,"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk gemini-canned
role assistant
content "Hel"
error api_error overloaded "The model is overloaded."
[DONE]



=== TEST 39: OpenAI client: a stream that ends without a finish reason is not finished
--- more_headers eval
$::OpenAIKey . "x-fixture: s-unfinished"
--- request
POST /v1/chat/completions
{"model":"gemini-canned","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk gemini-canned
role assistant
content "Half"
error api_error upstream_stream_broken "The provider's stream ended before completion."
[DONE]



=== TEST 40: OpenAI client: a stream read in pieces of 1 to 12 bytes comes out the same
--- more_headers eval
[map { $::OpenAIKey . "x-mock-split: $_\nx-mock-reply: $::Reply" } @::Splits]
--- request eval
[map { "POST /v1/chat/completions\n"
       . '{"model":"gemini-2.0-flash","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"count"}]}' } @::Splits]
--- timeout: 20
--- response_body_filters eval
\&::openai_sse
--- response_body eval
[($::SplitOpenAI) x @::Splits]
--- no_error_log
[error]



=== TEST 41: OpenAI client: a dropped stream ends with an error chunk and [DONE]
--- more_headers eval
$::OpenAIKey . "x-mock-drop: mid-stream"
--- request
POST /v1/chat/completions
{"model":"gemini-2.0-flash","stream":true,"messages":[{"role":"user","content":"hi there you"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk gemini-2.0-flash
role assistant
content "mock"
content " reply"
content " to:"
error api_error upstream_stream_broken "The provider's stream ended before completion."
[DONE]
--- error_log
smartflow proxy: stream from provider "gemini" for model "gemini-2.0-flash" broke before its end



=== TEST 42: OpenAI client: a dropped stream in small pieces still ends with one error chunk
--- more_headers eval
$::OpenAIKey . "x-mock-drop: mid-stream\nx-mock-split: 7"
--- request
POST /v1/chat/completions
{"model":"gemini-2.0-flash","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi there you"}]}
--- timeout: 10
--- response_body_filters eval
\&::openai_sse
--- response_body_like chomp
\Achat\.completion\.chunk gemini-2\.0-flash
role assistant
(?:content "[^"\n]*"
)*error api_error upstream_stream_broken "The provider's stream ended before completion\."
\[DONE\]
\z
--- error_log
smartflow proxy: stream from provider "gemini" for model "gemini-2.0-flash" broke before its end



=== TEST 43: OpenAI client: the provider's errors, translated, with their status
--- more_headers eval
[map { $::OpenAIKey . "x-mock-status: $_" } 400, 401, 403, 404, 500, 503, 504]
--- request eval
[("POST /v1/chat/completions\n$::Chat") x 7]
--- error_code eval
[400, 401, 403, 404, 500, 503, 504]
--- response_headers eval
[("x-mock-path: /v1beta/models/gemini-2.0-flash:generateContent") x 7]
--- response_body eval
['{"error":{"message":"Request contains an invalid argument.","type":"invalid_request_error","param":null,"code":null}}',
 '{"error":{"message":"Request had invalid authentication credentials.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}',
 '{"error":{"message":"The caller does not have permission.","type":"permission_error","param":null,"code":null}}',
 '{"error":{"message":"Requested entity was not found.","type":"invalid_request_error","param":null,"code":"not_found"}}',
 '{"error":{"message":"An internal error has occurred.","type":"api_error","param":null,"code":null}}',
 '{"error":{"message":"The model is overloaded. Please try again later.","type":"api_error","param":null,"code":"overloaded"}}',
 '{"error":{"message":"Deadline expired before operation could complete.","type":"api_error","param":null,"code":null}}']



=== TEST 44: OpenAI client: the provider's 429 keeps its Retry-After
--- more_headers eval
$::OpenAIKey . "x-mock-status: 429\nx-mock-retry-after: 17"
--- request eval
"POST /v1/chat/completions\n$::Chat"
--- error_code: 429
--- response_headers_like
Content-Type: application/json(?:; charset=UTF-8)?
retry-after: 17
--- response_body chomp
{"error":{"message":"Resource has been exhausted (e.g. check quota).","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}



=== TEST 45: OpenAI client: errors on a stream request are JSON, not a stream
--- more_headers eval
[$::OpenAIKey . "x-mock-status: 429", $::OpenAIKey . "x-mock-status: 500"]
--- request eval
[("POST /v1/chat/completions\n$::ChatStream") x 2]
--- error_code eval
[429, 500]
--- response_headers eval
["x-mock-path: /v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse\n!X-Accel-Buffering",
 "x-mock-path: /v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse\n!X-Accel-Buffering"]
--- response_body eval
['{"error":{"message":"Resource has been exhausted (e.g. check quota).","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}',
 '{"error":{"message":"An internal error has occurred.","type":"api_error","param":null,"code":null}}']



=== TEST 46: an error body that is not JSON, to either client
--- more_headers eval
[$::OpenAIKey . "x-fixture: html-502", $::AnthropicKey . "x-fixture: html-502"]
--- request eval
["POST /v1/chat/completions\n" . '{"model":"gemini-canned","messages":[{"role":"user","content":"hi"}]}',
 "POST /anthropic/v1/messages\n" . '{"model":"gemini-canned","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}']
--- error_code eval
[502, 502]
--- response_body eval
['{"error":{"message":"The provider failed with HTTP status 502.","type":"api_error","param":null,"code":null}}',
 '{"type":"error","error":{"type":"api_error","message":"The provider failed with HTTP status 502."}}']
--- error_log
smartflow proxy: provider "canned" answered 502 with a body that is not JSON



=== TEST 47: completions and embeddings have no Gemini form
--- request eval
["POST /v1/completions\n" . '{"model":"gemini-2.0-flash","prompt":"Say hi"}',
 "POST /v1/embeddings\n" . '{"model":"gemini-2.0-flash","input":"hi"}']
--- more_headers eval
[$::OpenAIKey, $::OpenAIKey]
--- error_code eval
[400, 400]
--- response_headers eval
["Content-Type: application/json\n!x-mock-path", "Content-Type: application/json\n!x-mock-path"]
--- response_body eval
['{"error":{"message":"The model `gemini-2.0-flash` is served by provider \"gemini\", which does not offer this endpoint.","type":"invalid_request_error","param":"model","code":"unsupported_model"}}',
 '{"error":{"message":"The model `gemini-2.0-flash` is served by provider \"gemini\", which does not offer this endpoint.","type":"invalid_request_error","param":"model","code":"unsupported_model"}}']
--- error_log
smartflow proxy: The model `gemini-2.0-flash` is served by provider "gemini", which does not offer this endpoint.



=== TEST 48: Anthropic client: a plain answer, translated
--- request
POST /anthropic/v1/messages
{"model":"gemini-2.0-flash","max_tokens":64,"system":"Be brief.","messages":[{"role":"user","content":"hi there"}]}
--- response_headers
x-mock-path: /v1beta/models/gemini-2.0-flash:generateContent
x-mock-api-key: gm-provider-key-0123456789
x-mock-authorization:
x-smartflow-deployment: gemini/gemini-*
--- response_body_filters eval
\&::stable
--- response_body
{"id":"msg_chatcmpl-*","type":"message","role":"assistant","model":"gemini-2.0-flash","content":[{"type":"text","text":"mock reply to: hi there"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":4,"output_tokens":5}}
--- no_error_log
[error]



=== TEST 49: Anthropic client: what the provider gets
max_tokens is maxOutputTokens, stop_sequences stopSequences, the system
prompt the systemInstruction; the client's key and anthropic-version stay
behind.
--- more_headers
x-api-key: sk-smartflow-test-0123456789
anthropic-version: 2023-06-01
x-goog-api-key: AIza-client-key-that-must-not-leak
--- request
POST /anthropic/v1/messages
{"model":"gemini-recorded","max_tokens":64,"system":[{"type":"text","text":"Be brief."}],"stop_sequences":["END"],"temperature":0.5,"top_p":0.8,"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"},{"role":"user","content":[{"type":"text","text":"and now?"}]}]}
--- response_headers
x-seen-uri: /record/v1beta/models/gemini-recorded:generateContent
x-seen-goog-api-key: gm-provider-key-0123456789
x-seen-api-key:
x-seen-authorization:
x-seen-anthropic-version:
--- response_body_filters eval
\&::upstream_body
--- response_body
{"contents":[{"parts":[{"text":"hi"}],"role":"user"},{"parts":[{"text":"hello"}],"role":"model"},{"parts":[{"text":"and now?"}],"role":"user"}],"generationConfig":{"maxOutputTokens":64,"stopSequences":["END"],"temperature":0.5,"topP":0.8},"systemInstruction":{"parts":[{"text":"Be brief."}]}}
--- no_error_log
[error]



=== TEST 50: Anthropic client: images, tools, a tool_use and its tool_result
--- request
POST /anthropic/v1/messages
{"model":"gemini-recorded","max_tokens":64,"tool_choice":{"type":"any"},
 "tools":[{"name":"get_weather","description":"Weather","input_schema":{"type":"object","properties":{"location":{"type":"string"}}}}],
 "messages":[
 {"role":"user","content":[{"type":"text","text":"Weather where this is?"},{"type":"image","source":{"type":"base64","media_type":"image/png","data":"iVBORw0KGgo="}}]},
 {"role":"assistant","content":[{"type":"text","text":"Checking."},{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"location":"Paris"}}]},
 {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"18 degrees"}]}]}
--- response_body_filters eval
\&::upstream_body
--- response_body
{"contents":[{"parts":[{"text":"Weather where this is?"},{"inlineData":{"data":"iVBORw0KGgo=","mimeType":"image/png"}}],"role":"user"},{"parts":[{"text":"Checking."},{"functionCall":{"args":{"location":"Paris"},"name":"get_weather"},"thoughtSignature":"skip_thought_signature_validator"}],"role":"model"},{"parts":[{"functionResponse":{"name":"get_weather","response":{"content":"18 degrees"}}}],"role":"user"}],"generationConfig":{"maxOutputTokens":64},"toolConfig":{"functionCallingConfig":{"mode":"ANY"}},"tools":[{"functionDeclarations":[{"description":"Weather","name":"get_weather","parameters":{"properties":{"location":{"type":"string"}},"type":"object"}}]}]}
--- no_error_log
[error]



=== TEST 51: Anthropic client: the provider's functionCall is a tool_use block
--- request
POST /anthropic/v1/messages
{"model":"gemini-2.0-flash","max_tokens":64,"tools":[{"name":"get_weather","input_schema":{"type":"object","properties":{"location":{"type":"string"}}}}],"messages":[{"role":"user","content":"What is the weather in Paris?"}]}
--- response_body_filters eval
\&::stable
--- response_body
{"id":"msg_chatcmpl-*","type":"message","role":"assistant","model":"gemini-2.0-flash","content":[{"type":"tool_use","id":"call_*_0","name":"get_weather","input":{"location":"Paris"}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":6,"output_tokens":3}}
--- no_error_log
[error]



=== TEST 52: Anthropic client: MAX_TOKENS is max_tokens; a blocked answer is a refusal
--- more_headers eval
[$::AnthropicKey . "x-fixture: max-tokens", $::AnthropicKey . "x-fixture: safety"]
--- request eval
[("POST /anthropic/v1/messages\n" . '{"model":"gemini-canned","max_tokens":3,"messages":[{"role":"user","content":"go"}]}') x 2]
--- response_body eval
['{"id":"msg_chatcmpl-canned1","type":"message","role":"assistant","model":"gemini-canned","content":[{"type":"text","text":"cut sho"}],"stop_reason":"max_tokens","stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":3}}',
 '{"id":"msg_chatcmpl-canned2","type":"message","role":"assistant","model":"gemini-canned","content":[],"stop_reason":"refusal","stop_sequence":null,"usage":{"input_tokens":5,"output_tokens":0}}']
--- error_code eval
[200, 200]
--- no_error_log
[error]



=== TEST 53: Anthropic client: a stream as the message events, usage exact
--- request
POST /anthropic/v1/messages
{"model":"gemini-2.0-flash","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi there"}]}
--- response_headers
Content-Type: text/event-stream
X-Accel-Buffering: no
x-mock-path: /v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse
!Content-Length
--- response_body_filters eval
\&::anthropic_sse
--- response_body
message_start msg_chatcmpl-* message assistant gemini-2.0-flash input_tokens=0 output_tokens=0
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



=== TEST 54: Anthropic client: the provider is asked for an SSE stream
--- request
POST /anthropic/v1/messages
{"model":"gemini-recorded","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}
--- response_headers
x-seen-uri: /record/v1beta/models/gemini-recorded:streamGenerateContent?alt=sse
--- response_body_filters eval
\&::recorded_anthropic_stream
--- response_body
{"contents":[{"parts":[{"text":"hi"}],"role":"user"}],"generationConfig":{"maxOutputTokens":64}}
--- no_error_log
[error]



=== TEST 55: Anthropic client: a streamed function call is a tool_use block
--- request
POST /anthropic/v1/messages
{"model":"gemini-2.0-flash","max_tokens":64,"stream":true,"tools":[{"name":"get_weather","input_schema":{"type":"object","properties":{"location":{"type":"string"}}}}],"messages":[{"role":"user","content":"What is the weather in Paris?"}]}
--- response_body_filters eval
\&::anthropic_sse
--- response_body
message_start msg_chatcmpl-* message assistant gemini-2.0-flash input_tokens=0 output_tokens=0
ping
start 0 tool_use call_*_0 get_weather {}
json 0 "{\"location\":\"Paris\"}"
stop 0
message_delta tool_use input_tokens=6 output_tokens=3
message_stop
--- no_error_log
[error]



=== TEST 56: Anthropic client: text, then two calls in one event
--- more_headers eval
$::AnthropicKey . "x-fixture: s-two-calls"
--- request
POST /anthropic/v1/messages
{"model":"gemini-canned","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::anthropic_sse
--- response_body
message_start msg_chatcmpl-cannedS1 message assistant gemini-canned input_tokens=0 output_tokens=0
ping
start 0 text
text 0 "Checking both."
stop 0
start 1 tool_use call_cannedS1_0 lookup {}
json 1 "{\"q\":\"x\"}"
stop 1
start 2 tool_use call_cannedS1_1 now {}
json 2 "{}"
stop 2
message_delta tool_use input_tokens=8 output_tokens=12
message_stop
--- no_error_log
[error]



=== TEST 57: Anthropic client: MAX_TOKENS in a stream is max_tokens
--- more_headers eval
$::AnthropicKey . "x-fixture: s-max-tokens"
--- request
POST /anthropic/v1/messages
{"model":"gemini-canned","max_tokens":3,"stream":true,"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::anthropic_sse
--- response_body
message_start msg_chatcmpl-cannedS2 message assistant gemini-canned input_tokens=0 output_tokens=0
ping
start 0 text
text 0 "cut "
text 0 "sho"
stop 0
message_delta max_tokens input_tokens=12 output_tokens=3
message_stop
--- no_error_log
[error]



=== TEST 58: Anthropic client: the provider's error event is an error event
Gemini's UNAVAILABLE is an overloaded_error, mid-stream as in a whole
answer (TEST 62).
--- more_headers eval
$::AnthropicKey . "x-fixture: s-error"
--- request
POST /anthropic/v1/messages
{"model":"gemini-canned","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::anthropic_sse
--- response_body
message_start msg_chatcmpl-cannedS3 message assistant gemini-canned input_tokens=0 output_tokens=0
ping
start 0 text
text 0 "Hel"
error overloaded_error "The model is overloaded."



=== TEST 59: Anthropic client: a stream that ends without a finish reason is not finished
--- more_headers eval
$::AnthropicKey . "x-fixture: s-unfinished"
--- request
POST /anthropic/v1/messages
{"model":"gemini-canned","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::anthropic_sse
--- response_body
message_start msg_chatcmpl-cannedS4 message assistant gemini-canned input_tokens=0 output_tokens=0
ping
start 0 text
text 0 "Half"
error api_error "The provider's stream ended before completion."



=== TEST 60: Anthropic client: a stream read in pieces of 1 to 12 bytes comes out the same
--- more_headers eval
[map { $::AnthropicKey . "x-mock-split: $_\nx-mock-reply: $::Reply" } @::Splits]
--- request eval
[map { "POST /anthropic/v1/messages\n"
       . '{"model":"gemini-2.0-flash","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"count"}]}' } @::Splits]
--- timeout: 20
--- response_body_filters eval
\&::anthropic_sse
--- response_body eval
[($::SplitAnthropic) x @::Splits]
--- no_error_log
[error]



=== TEST 61: Anthropic client: a dropped stream ends with an error event
--- more_headers eval
$::AnthropicKey . "x-mock-drop: mid-stream"
--- request
POST /anthropic/v1/messages
{"model":"gemini-2.0-flash","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi there you"}]}
--- response_body_filters eval
\&::anthropic_sse
--- response_body
message_start msg_chatcmpl-* message assistant gemini-2.0-flash input_tokens=0 output_tokens=0
ping
start 0 text
text 0 "mock"
text 0 " reply"
text 0 " to:"
error api_error "The provider's stream ended before completion."
--- error_log
smartflow proxy: stream from provider "gemini" for model "gemini-2.0-flash" broke before its end



=== TEST 62: Anthropic client: the provider's errors in Anthropic's format, with their status
--- more_headers eval
[map { $::AnthropicKey . "x-mock-status: $_" } 400, 401, 403, 404, 500, 503]
--- request eval
[("POST /anthropic/v1/messages\n$::Message") x 6]
--- error_code eval
[400, 401, 403, 404, 500, 503]
--- response_body eval
['{"type":"error","error":{"type":"invalid_request_error","message":"Request contains an invalid argument."}}',
 '{"type":"error","error":{"type":"authentication_error","message":"Request had invalid authentication credentials."}}',
 '{"type":"error","error":{"type":"permission_error","message":"The caller does not have permission."}}',
 '{"type":"error","error":{"type":"not_found_error","message":"Requested entity was not found."}}',
 '{"type":"error","error":{"type":"api_error","message":"An internal error has occurred."}}',
 '{"type":"error","error":{"type":"overloaded_error","message":"The model is overloaded. Please try again later."}}']



=== TEST 63: Anthropic client: a 429 is a rate_limit_error with its Retry-After, on a stream request too
--- more_headers eval
[$::AnthropicKey . "x-mock-status: 429\nx-mock-retry-after: 9",
 $::AnthropicKey . "x-mock-status: 429\nx-mock-retry-after: 9"]
--- request eval
["POST /anthropic/v1/messages\n$::Message", "POST /anthropic/v1/messages\n$::MessageStream"]
--- error_code eval
[429, 429]
--- response_headers eval
["retry-after: 9\n!X-Accel-Buffering", "retry-after: 9\n!X-Accel-Buffering"]
--- response_body eval
['{"type":"error","error":{"type":"rate_limit_error","message":"Resource has been exhausted (e.g. check quota)."}}',
 '{"type":"error","error":{"type":"rate_limit_error","message":"Resource has been exhausted (e.g. check quota)."}}']



=== TEST 64: Anthropic client: the gateway's own refusals stay in Anthropic's format
--- request
POST /anthropic/v1/messages
{"model":"gemini-2.0-flash","max_tokens":64,"messages":[{"role":"user","content":[{"type":"image","source":{"type":"url","url":"ftp://example.com/a.png"}}]}]}
--- error_code: 400
--- response_body_like chomp
^\{"type":"error","error":\{"type":"invalid_request_error","message":"[^"]+"\}\}$
