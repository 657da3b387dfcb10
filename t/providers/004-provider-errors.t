# A provider's error answer reaches a client of the other format translated
# into the client's error format, with the provider's status and its
# Retry-After; a client of the provider's own format gets it unchanged.
# An answer of the provider's that cannot be read or translated (HTML with
# a 200, a tool call without its id, JSON cut short) is a 502 in the
# client's format: the header waits until the whole answer is rewritten.
# Models with several deployments fail over across formats: an attempt
# translated for one provider may be followed by a plain one to the next.
#
# The mock answers with the error body of its API for the status named by
# x-mock-status (or by a model named mock-error-NNN); bodies it cannot give
# come from canned responses chosen with an x-fixture header.

use lib 't/lib';
use Smartflow::Conf;
use Smartflow::Mock;
use Test::Nginx::Socket 'no_plan';
use Smartflow::Blocks;

$ENV{TEST_NGINX_FIXTURE_PORT} ||= 1988;

# an answer past the 16 MB a whole answer may take to be translated, in
# a folder of its own the fixture server reads it from
use File::Temp ();

our $BigDir = File::Temp::tempdir(CLEANUP => 1);
$ENV{TEST_NGINX_BIG_DIR} = $BigDir;

{
    open my $fh, '>', "$BigDir/big" or die "big: $!";
    print $fh '{"id":"chatcmpl-big","object":"chat.completion",'
              . '"model":"gpt-4o","choices":[{"index":0,"message":'
              . '{"role":"assistant","content":"' . ('x' x 17_000_000)
              . '"},"finish_reason":"stop"}],"usage":'
              . '{"prompt_tokens":1,"completion_tokens":1}}';
    close $fh;
}

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_zone smartflow 1m;

    upstream sf_mock {
        server 127.0.0.1:$TEST_NGINX_MOCK_PORT;
        keepalive 8;
    }

    upstream sf_fixture {
        server 127.0.0.1:$TEST_NGINX_FIXTURE_PORT;
    }

    smartflow_provider anthropic type=anthropic upstream=http://sf_mock
                       key=sk-ant-provider-key;
    smartflow_provider openai type=openai upstream=http://sf_mock
                       key=sk-oai-provider-key;
    smartflow_provider canned_an type=anthropic upstream=http://sf_fixture
                       path=/canned key=sk-ant-provider-key;
    smartflow_provider canned_oa type=openai upstream=http://sf_fixture
                       path=/canned key=sk-oai-provider-key;

    smartflow_route claude-canned canned_an;
    smartflow_route gpt-canned canned_oa;

    # deployments: a primary that fails, a fallback of the other format
    smartflow_route claude-overloaded anthropic model=mock-error-529;
    smartflow_route claude-overloaded openai model=gpt-4o fallback;
    smartflow_route claude-unavailable anthropic model=mock-error-503;
    smartflow_route claude-unavailable openai model=gpt-4o fallback;
    smartflow_route gpt-limited openai model=mock-error-429;
    smartflow_route gpt-limited anthropic model=claude-3-5-sonnet fallback;

    smartflow_route claude-* anthropic;
    smartflow_route gpt-* openai;

    server {
        listen 127.0.0.1:$TEST_NGINX_FIXTURE_PORT;
        default_type application/json;

        location /canned/ {
            rewrite ^ /fixture/$http_x_fixture last;
        }

        location = /fixture/html-502 {
            default_type text/html;
            return 502 '<html><body><h1>502 Bad Gateway</h1></body></html>';
        }

        location = /fixture/html-200 {
            default_type text/html;
            return 200 '<html><body>maintenance</body></html>';
        }

        location = /fixture/big {
            alias $TEST_NGINX_BIG_DIR/big;
            error_page 405 =200 $uri;
        }

        location = /fixture/tool-use-without-id {
            return 200 '{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"tool_use","name":"f","input":{}}],"stop_reason":"tool_use","usage":{"input_tokens":1,"output_tokens":1}}';
        }

        location = /fixture/oa-cut {
            return 200 '{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"cut"';
        }

        location = /fixture/empty-503 {
            return 503;
        }

        location = /fixture/quota {
            return 429 '{"error":{"message":"You exceeded your current quota.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}';
        }

        location = /fixture/context {
            return 400 '{"error":{"message":"This model\'s maximum context length is 8192 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}';
        }

        location = /fixture/bare {
            return 500 '{"error":"something broke"}';
        }

        location = /fixture/anthropic-invalid {
            return 400 '{"type":"error","error":{"type":"invalid_request_error","message":"messages.0.content: Input should be a valid list"}}';
        }
    }
_EOC_

# The shipped server-level locations (conf/smartflow_locations.conf), their
# nested include made absolute.

our $Locations = Smartflow::Conf::shipped_locations();

Smartflow::Blocks::defaults(http_config => $HttpConfig, config => $Locations);

our $Chat = '{"model":"claude-3-5-sonnet","messages":[{"role":"user","content":"hi"}]}';
our $ChatStream = '{"model":"claude-3-5-sonnet","stream":true,"messages":[{"role":"user","content":"hi"}]}';
our $Message = '{"model":"gpt-4o","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}';
our $MessageStream = '{"model":"gpt-4o","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"hi"}]}';

run_tests();

__DATA__

=== TEST 1: OpenAI client, Anthropic provider: 400
--- more_headers eval
$::OpenAIKey . "x-mock-status: 400"
--- request eval
"POST /v1/chat/completions\n$::Chat"
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body chomp
{"error":{"message":"The request was invalid.","type":"invalid_request_error","param":null,"code":null}}



=== TEST 2: OpenAI client, Anthropic provider: 401 from the provider
--- more_headers eval
$::OpenAIKey . "x-mock-status: 401"
--- request eval
"POST /v1/chat/completions\n$::Chat"
--- error_code: 401
--- response_body chomp
{"error":{"message":"invalid x-api-key","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}



=== TEST 3: OpenAI client, Anthropic provider: 403
--- more_headers eval
$::OpenAIKey . "x-mock-status: 403"
--- request eval
"POST /v1/chat/completions\n$::Chat"
--- error_code: 403
--- response_body chomp
{"error":{"message":"Your API key does not have permission to use the specified resource.","type":"permission_error","param":null,"code":null}}



=== TEST 4: OpenAI client, Anthropic provider: 404
--- more_headers eval
$::OpenAIKey . "x-mock-status: 404"
--- request eval
"POST /v1/chat/completions\n$::Chat"
--- error_code: 404
--- response_body chomp
{"error":{"message":"The requested resource could not be found.","type":"invalid_request_error","param":null,"code":"not_found"}}



=== TEST 5: OpenAI client, Anthropic provider: 413
--- more_headers eval
$::OpenAIKey . "x-mock-status: 413"
--- request eval
"POST /v1/chat/completions\n$::Chat"
--- error_code: 413
--- response_body chomp
{"error":{"message":"Request exceeds the maximum allowed number of bytes.","type":"invalid_request_error","param":null,"code":"request_too_large"}}



=== TEST 6: OpenAI client, Anthropic provider: 429 keeps its Retry-After
--- more_headers eval
$::OpenAIKey . "x-mock-status: 429\nx-mock-retry-after: 17"
--- request eval
"POST /v1/chat/completions\n$::Chat"
--- error_code: 429
--- response_headers
Content-Type: application/json
retry-after: 17
--- response_body chomp
{"error":{"message":"This request would exceed the rate limit for your organization.","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}



=== TEST 7: OpenAI client, Anthropic provider: 500
--- more_headers eval
$::OpenAIKey . "x-mock-status: 500"
--- request eval
"POST /v1/chat/completions\n$::Chat"
--- error_code: 500
--- response_body chomp
{"error":{"message":"Internal server error","type":"api_error","param":null,"code":null}}



=== TEST 8: OpenAI client, Anthropic provider: 529 overloaded keeps its status
--- more_headers eval
$::OpenAIKey . "x-mock-status: 529"
--- request eval
"POST /v1/chat/completions\n$::Chat"
--- error_code: 529
--- response_headers
Content-Type: application/json
--- response_body chomp
{"error":{"message":"Overloaded","type":"api_error","param":null,"code":"overloaded"}}



=== TEST 9: OpenAI client, Anthropic provider: errors on a stream request are JSON
--- more_headers eval
[$::OpenAIKey . "x-mock-status: 429", $::OpenAIKey . "x-mock-status: 529"]
--- request eval
["POST /v1/chat/completions\n$::ChatStream", "POST /v1/chat/completions\n$::ChatStream"]
--- error_code eval
[429, 529]
--- response_headers eval
["Content-Type: application/json\n!X-Accel-Buffering",
 "Content-Type: application/json\n!X-Accel-Buffering"]
--- response_body eval
['{"error":{"message":"This request would exceed the rate limit for your organization.","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}',
 '{"error":{"message":"Overloaded","type":"api_error","param":null,"code":"overloaded"}}']



=== TEST 10: Anthropic client, OpenAI provider: 400
--- more_headers eval
$::AnthropicKey . "x-mock-status: 400"
--- request eval
"POST /anthropic/v1/messages\n$::Message"
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body chomp
{"type":"error","error":{"type":"invalid_request_error","message":"The request was invalid."}}



=== TEST 11: Anthropic client, OpenAI provider: 401 from the provider
--- more_headers eval
$::AnthropicKey . "x-mock-status: 401"
--- request eval
"POST /anthropic/v1/messages\n$::Message"
--- error_code: 401
--- response_body chomp
{"type":"error","error":{"type":"authentication_error","message":"Incorrect API key provided. You can find your API key in your account settings."}}



=== TEST 12: Anthropic client, OpenAI provider: 403
--- more_headers eval
$::AnthropicKey . "x-mock-status: 403"
--- request eval
"POST /anthropic/v1/messages\n$::Message"
--- error_code: 403
--- response_body chomp
{"type":"error","error":{"type":"permission_error","message":"Country, region, or territory not supported."}}



=== TEST 13: Anthropic client, OpenAI provider: 404
--- more_headers eval
$::AnthropicKey . "x-mock-status: 404"
--- request eval
"POST /anthropic/v1/messages\n$::Message"
--- error_code: 404
--- response_body chomp
{"type":"error","error":{"type":"not_found_error","message":"The model does not exist or you do not have access to it."}}



=== TEST 14: Anthropic client, OpenAI provider: 429 keeps its Retry-After
--- more_headers eval
$::AnthropicKey . "x-mock-status: 429"
--- request eval
"POST /anthropic/v1/messages\n$::Message"
--- error_code: 429
--- response_headers
Content-Type: application/json
retry-after: 1
--- response_body chomp
{"type":"error","error":{"type":"rate_limit_error","message":"Rate limit reached for requests per min (RPM). Please try again in 1s."}}



=== TEST 15: Anthropic client, OpenAI provider: 500, 502 and 503
--- more_headers eval
[$::AnthropicKey . "x-mock-status: 500", $::AnthropicKey . "x-mock-status: 502",
 $::AnthropicKey . "x-mock-status: 503"]
--- request eval
["POST /anthropic/v1/messages\n$::Message", "POST /anthropic/v1/messages\n$::Message",
 "POST /anthropic/v1/messages\n$::Message"]
--- error_code eval
[500, 502, 503]
--- response_body eval
['{"type":"error","error":{"type":"api_error","message":"The server had an error while processing your request."}}',
 '{"type":"error","error":{"type":"api_error","message":"Bad gateway."}}',
 '{"type":"error","error":{"type":"overloaded_error","message":"The engine is currently overloaded, please try again later."}}']



=== TEST 16: Anthropic client, OpenAI provider: errors on a stream request are JSON
--- more_headers eval
[$::AnthropicKey . "x-mock-status: 429", $::AnthropicKey . "x-mock-status: 500"]
--- request eval
["POST /anthropic/v1/messages\n$::MessageStream", "POST /anthropic/v1/messages\n$::MessageStream"]
--- error_code eval
[429, 500]
--- response_headers eval
["Content-Type: application/json\n!X-Accel-Buffering",
 "Content-Type: application/json\n!X-Accel-Buffering"]
--- response_body eval
['{"type":"error","error":{"type":"rate_limit_error","message":"Rate limit reached for requests per min (RPM). Please try again in 1s."}}',
 '{"type":"error","error":{"type":"api_error","message":"The server had an error while processing your request."}}']



=== TEST 17: an error body that is not JSON, to an OpenAI client
--- more_headers eval
$::OpenAIKey . "x-fixture: html-502"
--- request
POST /v1/chat/completions
{"model":"claude-canned","messages":[{"role":"user","content":"hi"}]}
--- error_code: 502
--- response_headers
Content-Type: application/json
--- response_body chomp
{"error":{"message":"The provider failed with HTTP status 502.","type":"api_error","param":null,"code":null}}
--- error_log
smartflow proxy: provider "canned_an" answered 502 with a body that is not JSON



=== TEST 18: an error body that is not JSON, to an Anthropic client
--- more_headers eval
$::AnthropicKey . "x-fixture: html-502"
--- request
POST /anthropic/v1/messages
{"model":"gpt-canned","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}
--- error_code: 502
--- response_headers
Content-Type: application/json
--- response_body chomp
{"type":"error","error":{"type":"api_error","message":"The provider failed with HTTP status 502."}}
--- error_log
smartflow proxy: provider "canned_oa" answered 502 with a body that is not JSON



=== TEST 19: an error without a body, to either client
--- more_headers eval
[$::OpenAIKey . "x-fixture: empty-503", $::AnthropicKey . "x-fixture: empty-503"]
--- request eval
["POST /v1/chat/completions\n" . '{"model":"claude-canned","messages":[{"role":"user","content":"hi"}]}',
 "POST /anthropic/v1/messages\n" . '{"model":"gpt-canned","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}']
--- error_code eval
[503, 503]
--- response_body eval
['{"error":{"message":"The provider failed with HTTP status 503.","type":"api_error","param":null,"code":"overloaded"}}',
 '{"type":"error","error":{"type":"overloaded_error","message":"The provider failed with HTTP status 503."}}']



=== TEST 20: OpenAI's insufficient_quota is a rate limit error for an Anthropic client
--- more_headers eval
$::AnthropicKey . "x-fixture: quota"
--- request
POST /anthropic/v1/messages
{"model":"gpt-canned","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}
--- error_code: 429
--- response_body chomp
{"type":"error","error":{"type":"rate_limit_error","message":"You exceeded your current quota."}}



=== TEST 21: OpenAI's context_length_exceeded is an invalid request for an Anthropic client
--- more_headers eval
$::AnthropicKey . "x-fixture: context"
--- request
POST /anthropic/v1/messages
{"model":"gpt-canned","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}
--- error_code: 400
--- response_body chomp
{"type":"error","error":{"type":"invalid_request_error","message":"This model's maximum context length is 8192 tokens."}}



=== TEST 22: a bare {"error": "text"} body keeps its text
--- more_headers eval
[$::OpenAIKey . "x-fixture: bare", $::AnthropicKey . "x-fixture: bare"]
--- request eval
["POST /v1/chat/completions\n" . '{"model":"claude-canned","messages":[{"role":"user","content":"hi"}]}',
 "POST /anthropic/v1/messages\n" . '{"model":"gpt-canned","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}']
--- error_code eval
[500, 500]
--- response_body eval
['{"error":{"message":"something broke","type":"api_error","param":null,"code":null}}',
 '{"type":"error","error":{"type":"api_error","message":"something broke"}}']



=== TEST 23: Anthropic's invalid_request_error keeps its message for an OpenAI client
--- more_headers eval
$::OpenAIKey . "x-fixture: anthropic-invalid"
--- request
POST /v1/chat/completions
{"model":"claude-canned","messages":[{"role":"user","content":"hi"}]}
--- error_code: 400
--- response_body chomp
{"error":{"message":"messages.0.content: Input should be a valid list","type":"invalid_request_error","param":null,"code":null}}



=== TEST 24: Anthropic client, Anthropic provider: errors pass through unchanged
--- more_headers eval
[$::AnthropicKey . "x-mock-status: 529",
 $::AnthropicKey . "x-mock-status: 429\nx-mock-retry-after: 5"]
--- request eval
["POST /anthropic/v1/messages\n" . '{"model":"claude-3-5-sonnet","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}',
 "POST /anthropic/v1/messages\n" . '{"model":"claude-3-5-sonnet","max_tokens":8,"stream":true,"messages":[{"role":"user","content":"hi"}]}']
--- error_code eval
[529, 429]
--- response_headers eval
["Content-Type: application/json\nx-mock-path: /v1/messages",
 "Content-Type: application/json\nretry-after: 5"]
--- response_body eval
['{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
 '{"type":"error","error":{"type":"rate_limit_error","message":"This request would exceed the rate limit for your organization."}}']



=== TEST 25: a failed Anthropic deployment (503) falls over to an OpenAI one
The OpenAI client gets the fallback's own answer; the Anthropic client gets
it translated.
--- more_headers eval
[$::OpenAIKey, $::AnthropicKey]
--- request eval
["POST /v1/chat/completions\n" . '{"model":"claude-unavailable","messages":[{"role":"user","content":"hi"}]}',
 "POST /anthropic/v1/messages\n" . '{"model":"claude-unavailable","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}']
--- error_code eval
[200, 200]
--- response_headers eval
["x-mock-path: /v1/chat/completions\nx-mock-model: gpt-4o",
 "x-mock-path: /v1/chat/completions\nx-mock-model: gpt-4o"]
--- response_body_like eval
['^\{"id":"chatcmpl-\w+","object":"chat\.completion",.*"model":"gpt-4o","choices":\[\{"index":0,"message":\{"role":"assistant","content":"mock reply to: hi",',
 '^\{"id":"msg_chatcmpl-\w+","type":"message","role":"assistant","model":"claude-unavailable","content":\[\{"type":"text","text":"mock reply to: hi"\}\],"stop_reason":"end_turn",']
--- error_log
smartflow proxy: deployment "anthropic/mock-error-503" answered 503 for model "claude-unavailable", trying the next one



=== TEST 26: a rate-limited OpenAI deployment falls over to an Anthropic one
--- more_headers eval
[$::OpenAIKey, $::AnthropicKey]
--- request eval
["POST /v1/chat/completions\n" . '{"model":"gpt-limited","messages":[{"role":"user","content":"hi"}]}',
 "POST /anthropic/v1/messages\n" . '{"model":"gpt-limited","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}']
--- error_code eval
[200, 200]
--- response_headers eval
["x-mock-path: /v1/messages\nx-mock-model: claude-3-5-sonnet",
 "x-mock-path: /v1/messages\nx-mock-model: claude-3-5-sonnet"]
--- response_body_like eval
['^\{"id":"chatcmpl-msg_01\w+","object":"chat\.completion","created":\d+,"model":"gpt-limited","choices":\[\{"index":0,"message":\{"role":"assistant","content":"mock reply to: hi"\},"finish_reason":"stop"\}\]',
 '^\{"id":"msg_01\w+","type":"message","role":"assistant","model":"claude-3-5-sonnet","content":\[\{"type":"text","text":"mock reply to: hi"\}\],']



=== TEST 27: a failed Anthropic deployment falls over while streaming
The OpenAI stream from the fallback passes through, its usage chunk (asked
for by the gateway) hidden; the Anthropic client gets it translated.
--- more_headers eval
[$::OpenAIKey, $::AnthropicKey]
--- request eval
["POST /v1/chat/completions\n" . '{"model":"claude-unavailable","stream":true,"messages":[{"role":"user","content":"hi"}]}',
 "POST /anthropic/v1/messages\n" . '{"model":"claude-unavailable","max_tokens":8,"stream":true,"messages":[{"role":"user","content":"hi"}]}']
--- error_code eval
[200, 200]
--- response_headers eval
["X-Accel-Buffering: no", "X-Accel-Buffering: no"]
--- response_body_like eval
['\A(?:data: \{"id":"chatcmpl-\w+","object":"chat\.completion\.chunk",[^\n]*"choices":\[\{[^\n]*\n\n){6}data: \[DONE\]\n\n\z',
 '\Aevent: message_start\n.*"text":"mock".*"text":" reply".*"text":" to:".*"text":" hi".*event: message_delta\ndata: \{"type":"message_delta","delta":\{"stop_reason":"end_turn","stop_sequence":null\},"usage":\{"input_tokens":1,"output_tokens":4\}\}\n\nevent: message_stop\ndata: \{"type":"message_stop"\}\n\n\z']



=== TEST 28: an Anthropic deployment answering 529 (overloaded) falls over too
529 is Anthropic's status for an overloaded API, a 5xx like 503.
--- more_headers eval
[$::OpenAIKey, $::AnthropicKey]
--- request eval
["POST /v1/chat/completions\n" . '{"model":"claude-overloaded","messages":[{"role":"user","content":"hi"}]}',
 "POST /anthropic/v1/messages\n" . '{"model":"claude-overloaded","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}']
--- error_code eval
[200, 200]
--- response_headers eval
["x-mock-model: gpt-4o", "x-mock-model: gpt-4o"]
--- response_body_like eval
['"content":"mock reply to: hi"', '"text":"mock reply to: hi"']



=== TEST 29: an answer of 200 that is not JSON, to an OpenAI client
--- more_headers eval
$::OpenAIKey . "x-fixture: html-200"
--- request
POST /v1/chat/completions
{"model":"claude-canned","messages":[{"role":"user","content":"hi"}]}
--- error_code: 502
--- response_headers
Content-Type: application/json
--- response_body chomp
{"error":{"message":"The provider's answer could not be read.","type":"api_error","param":null,"code":null}}
--- error_log
smartflow proxy: provider "canned_an" answered 200 with a body that is not JSON



=== TEST 30: an answer of 200 that is not JSON, to an Anthropic client
--- more_headers eval
$::AnthropicKey . "x-fixture: html-200"
--- request
POST /anthropic/v1/messages
{"model":"gpt-canned","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}
--- error_code: 502
--- response_headers
Content-Type: application/json
--- response_body chomp
{"type":"error","error":{"type":"api_error","message":"The provider's answer could not be read."}}
--- error_log
smartflow proxy: provider "canned_oa" answered 200 with a body that is not JSON



=== TEST 31: an answer that cannot be translated (a tool_use without its id)
--- more_headers eval
$::OpenAIKey . "x-fixture: tool-use-without-id"
--- request
POST /v1/chat/completions
{"model":"claude-canned","messages":[{"role":"user","content":"hi"}]}
--- error_code: 502
--- response_headers
Content-Type: application/json
--- response_body chomp
{"error":{"message":"The provider's answer could not be read.","type":"api_error","param":null,"code":null}}
--- error_log
smartflow proxy: translating the answer of provider "canned_an" failed: each tool_use block needs an id



=== TEST 32: an answer cut short, to an Anthropic client
--- more_headers eval
$::AnthropicKey . "x-fixture: oa-cut"
--- request
POST /anthropic/v1/messages
{"model":"gpt-canned","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}
--- error_code: 502
--- response_body chomp
{"type":"error","error":{"type":"api_error","message":"The provider's answer could not be read."}}
--- error_log
smartflow proxy: provider "canned_oa" answered 200 with a body that is not JSON



=== TEST 33: an answer too large to translate, to an Anthropic client
--- more_headers eval
$::AnthropicKey . "x-fixture: big"
--- request
POST /anthropic/v1/messages
{"model":"gpt-canned","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}
--- error_code: 502
--- response_headers
Content-Type: application/json
--- response_body chomp
{"type":"error","error":{"type":"api_error","message":"The provider's answer could not be read."}}
--- error_log
smartflow proxy: response from provider "canned_oa" is too large to translate
--- timeout: 20
