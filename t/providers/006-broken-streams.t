# A stream that breaks after its headers went out (the provider drops the
# connection, stops answering, or the stream goes over
# smartflow_stream_max_bytes or smartflow_stream_max_time) ends with a
# well-formed error event in the client's format instead of a silent cut,
# and leaves a "smartflow proxy: " line in the error log.
#
#   OpenAI:    data: {"error":{...,"code":"upstream_stream_broken"}}
#              (+ data: [DONE] when the stream was translated)
#   Anthropic: event: error / data: {"type":"error","error":{"type":"api_error",...}}
#
# Bodies are checked through openai_sse() and anthropic_sse() (from
# Smartflow::SSE), which decode every event and write one line per thing a
# client would see.

use lib 't/lib';
use Smartflow::Conf;
use Smartflow::Mock;
use Test::Nginx::Socket 'no_plan';
use Smartflow::Blocks;
use Smartflow::SSE;

our $HttpConfig = Smartflow::Blocks::mock_upstreams() . <<'_EOC_';
    smartflow_provider anthropic type=anthropic upstream=http://sf_mock
                       key=sk-ant-provider-key;
    smartflow_provider openai type=openai upstream=http://sf_mock
                       key=sk-oai-provider-key;

    smartflow_route claude-* anthropic;
    smartflow_route gpt-* openai;
_EOC_

# The shipped server-level locations (conf/smartflow_locations.conf), their
# nested include made absolute.

our $Locations = Smartflow::Conf::shipped_locations();

# The shipped chat and messages locations, their smartflow_proxy.conf
# spelled out with a short proxy_read_timeout.
our $Proxy = <<'_EOC_';
        proxy_pass $smartflow_upstream$smartflow_upstream_uri;
        proxy_set_body $smartflow_upstream_body;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $smartflow_upstream_host;
        proxy_set_header Content-Type application/json;
        proxy_set_header Accept-Encoding "";
        proxy_set_header Authorization $smartflow_provider_auth;
        proxy_set_header x-api-key $smartflow_provider_api_key;
        proxy_set_header anthropic-version $smartflow_anthropic_version;
        proxy_read_timeout 500ms;
        proxy_max_temp_file_size 0;
        error_page 401 403 408 413 500 502 503 504 @smartflow_error;
_EOC_

our $ShortRead = <<"_EOC_";
    location = /v1/chat/completions {
        smartflow_api chat;
$Proxy    }

    location = /anthropic/v1/messages {
        smartflow_api messages;
        error_page 401 403 408 413 500 502 503 504 \@smartflow_anthropic_error;
$Proxy    }

    location \@smartflow_error {
        smartflow_api error;
    }

    location \@smartflow_anthropic_error {
        smartflow_api anthropic_error;
    }
_EOC_

Smartflow::Blocks::defaults(http_config => $HttpConfig, config => $Locations);

our $Broken = "The provider's stream ended before completion.";

run_tests();

__DATA__

=== TEST 1: OpenAI client, Anthropic provider: a dropped stream ends with an error chunk and [DONE]
--- more_headers eval
$::OpenAIKey . "x-mock-drop: mid-stream"
--- request
POST /v1/chat/completions
{"model":"claude-3-5-sonnet","stream":true,"messages":[{"role":"user","content":"hi there you"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk claude-3-5-sonnet
role assistant
content "mock"
content " reply"
content " to:"
error api_error upstream_stream_broken "The provider's stream ended before completion."
[DONE]
--- error_log
smartflow proxy: stream from provider "anthropic" for model "claude-3-5-sonnet" broke before its end



=== TEST 2: Anthropic client, OpenAI provider: a dropped stream ends with an error event
--- more_headers eval
$::AnthropicKey . "x-mock-drop: mid-stream"
--- request
POST /anthropic/v1/messages
{"model":"gpt-4o","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi there you"}]}
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
error api_error "The provider's stream ended before completion."
--- error_log
smartflow proxy: stream from provider "openai" for model "gpt-4o" broke before its end



=== TEST 3: OpenAI client, OpenAI provider: a dropped stream ends with an error chunk
--- more_headers eval
$::OpenAIKey . "x-mock-drop: mid-stream"
--- request
POST /v1/chat/completions
{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi there you"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk gpt-4o
role assistant
content "mock"
content " reply"
content " to:"
content " hi"
error api_error upstream_stream_broken "The provider's stream ended before completion."
--- error_log
smartflow proxy: stream from provider "openai" for model "gpt-4o" broke before its end



=== TEST 4: Anthropic client, Anthropic provider: a dropped stream ends with an error event
--- more_headers eval
$::AnthropicKey . "x-mock-drop: mid-stream"
--- request
POST /anthropic/v1/messages
{"model":"claude-3-5-sonnet","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi there you"}]}
--- response_body_filters eval
\&::anthropic_sse
--- response_body
message_start msg_01* message assistant claude-3-5-sonnet input_tokens=3 output_tokens=1
start 0 text
ping
text 0 "mock"
text 0 " reply"
text 0 " to:"
error api_error "The provider's stream ended before completion."
--- error_log
smartflow proxy: stream from provider "anthropic" for model "claude-3-5-sonnet" broke before its end



=== TEST 5: a dropped stream in small pieces still ends with one well-formed error event
--- more_headers eval
$::OpenAIKey . "x-mock-drop: mid-stream\nx-mock-split: 7"
--- request
POST /v1/chat/completions
{"model":"claude-3-5-sonnet","stream":true,"messages":[{"role":"user","content":"hi there you"}]}
--- timeout: 10
--- response_body_filters eval
\&::openai_sse
--- response_body_like chomp
\Achat\.completion\.chunk claude-3-5-sonnet
role assistant
(?:content "[^"\n]*"
)*error api_error upstream_stream_broken "The provider's stream ended before completion\."
\[DONE\]
\z
--- error_log
smartflow proxy: stream from provider "anthropic" for model "claude-3-5-sonnet" broke before its end



=== TEST 6: OpenAI client, Anthropic provider: a provider that stops answering mid-stream
--- config eval
$::ShortRead
--- more_headers eval
$::OpenAIKey . "x-mock-chunk-delay-ms: 1500"
--- request
POST /v1/chat/completions
{"model":"claude-3-5-sonnet","stream":true,"messages":[{"role":"user","content":"hi"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk claude-3-5-sonnet
role assistant
error api_error upstream_stream_broken "The provider's stream ended before completion."
[DONE]
--- error_log
upstream timed out
smartflow proxy: stream from provider "anthropic" for model "claude-3-5-sonnet" broke before its end



=== TEST 7: Anthropic client, OpenAI provider: a provider that stops answering mid-stream
--- config eval
$::ShortRead
--- more_headers eval
$::AnthropicKey . "x-mock-chunk-delay-ms: 1500"
--- request
POST /anthropic/v1/messages
{"model":"gpt-4o","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}
--- response_body_filters eval
\&::anthropic_sse
--- response_body
message_start msg_chatcmpl-* message assistant gpt-4o input_tokens=0 output_tokens=0
ping
error api_error "The provider's stream ended before completion."
--- error_log
upstream timed out
smartflow proxy: stream from provider "openai" for model "gpt-4o" broke before its end



=== TEST 8: smartflow_stream_max_bytes cuts a translated stream (OpenAI client)
--- config eval
"smartflow_stream_max_bytes 700;\n$::Locations"
--- more_headers eval
$::OpenAIKey . "x-mock-chunk-delay-ms: 20\nx-mock-words: 40"
--- request
POST /v1/chat/completions
{"model":"claude-3-5-sonnet","stream":true,"messages":[{"role":"user","content":"count"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body_like chomp
\Achat\.completion\.chunk claude-3-5-sonnet
role assistant
(?:content "[^"\n]*"
){1,4}error api_error upstream_stream_broken "The provider's stream ended before completion\."
\[DONE\]
\z
--- error_log eval
qr/smartflow proxy: stream from provider "anthropic" cut at \d+ bytes after \d+ ms/
--- no_error_log
broke before its end



=== TEST 9: smartflow_stream_max_bytes cuts a translated stream (Anthropic client)
--- config eval
"smartflow_stream_max_bytes 700;\n$::Locations"
--- more_headers eval
$::AnthropicKey . "x-mock-chunk-delay-ms: 20\nx-mock-words: 40"
--- request
POST /anthropic/v1/messages
{"model":"gpt-4o","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"count"}]}
--- response_body_filters eval
\&::anthropic_sse
--- response_body_like chomp
\Amessage_start msg_chatcmpl-\* message assistant gpt-4o input_tokens=0 output_tokens=0
ping
start 0 text
(?:text 0 "[^"\n]*"
){1,4}error api_error "The provider's stream ended before completion\."
\z
--- error_log eval
qr/smartflow proxy: stream from provider "openai" cut at \d+ bytes after \d+ ms/



=== TEST 10: smartflow_stream_max_bytes cuts a stream passed through
--- config eval
"smartflow_stream_max_bytes 700;\n$::Locations"
--- more_headers eval
$::OpenAIKey . "x-mock-chunk-delay-ms: 20\nx-mock-words: 40"
--- request
POST /v1/chat/completions
{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"count"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body_like chomp
\Achat\.completion\.chunk gpt-4o
role assistant
(?:content "[^"\n]*"
){0,4}error api_error upstream_stream_broken "The provider's stream ended before completion\."
\z
--- error_log eval
qr/smartflow proxy: stream from provider "openai" cut at \d+ bytes after \d+ ms/



=== TEST 11: smartflow_stream_max_time cuts a stream that goes on too long
40 words at 50 ms each take 2 s; the cap is 400 ms, and the cut comes
no earlier.
--- config eval
"smartflow_stream_max_time 400ms;\n$::Locations"
--- more_headers eval
$::OpenAIKey . "x-mock-chunk-delay-ms: 50\nx-mock-words: 40"
--- request
POST /v1/chat/completions
{"model":"claude-3-5-sonnet","stream":true,"messages":[{"role":"user","content":"count"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body_like chomp
\Achat\.completion\.chunk claude-3-5-sonnet
role assistant
(?:content "[^"\n]*"
){1,12}error api_error upstream_stream_broken "The provider's stream ended before completion\."
\[DONE\]
\z
--- error_log eval
qr/smartflow proxy: stream from provider "anthropic" cut at \d+ bytes after (?:4\d\d|[5-9]\d\d|\d{4,}) ms/



=== TEST 12: smartflow_stream_max_time cuts an Anthropic client's stream too
--- config eval
"smartflow_stream_max_time 400ms;\n$::Locations"
--- more_headers eval
$::AnthropicKey . "x-mock-chunk-delay-ms: 50\nx-mock-words: 40"
--- request
POST /anthropic/v1/messages
{"model":"claude-3-5-sonnet","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"count"}]}
--- response_body_filters eval
\&::anthropic_sse
--- response_body_like chomp
\Amessage_start msg_01\* message assistant claude-3-5-sonnet input_tokens=1 output_tokens=1
start 0 text
ping
(?:text 0 "[^"\n]*"
){1,12}error api_error "The provider's stream ended before completion\."
\z
--- error_log eval
qr/smartflow proxy: stream from provider "anthropic" cut at \d+ bytes after \d+ ms/



=== TEST 13: smartflow_stream_max_time cuts a stream whose provider has gone quiet
The provider sends its first event, then nothing for 3 s; the cap is
500 ms and the client waits 2 s at most.
--- config eval
"smartflow_stream_max_time 500ms;\n$::Locations"
--- more_headers eval
$::OpenAIKey . "x-mock-chunk-delay-ms: 3000"
--- request
POST /v1/chat/completions
{"model":"claude-3-5-sonnet","stream":true,"messages":[{"role":"user","content":"hi"}]}
--- timeout: 2
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk claude-3-5-sonnet
role assistant
error api_error upstream_stream_broken "The provider's stream ended before completion."
[DONE]
--- error_log eval
qr/smartflow proxy: stream from provider "anthropic" cut at \d+ bytes after \d+ ms/



=== TEST 14: streams within the caps are untouched
--- config eval
"smartflow_stream_max_bytes 64m;\nsmartflow_stream_max_time 30m;\n$::Locations"
--- more_headers eval
$::OpenAIKey . "x-mock-chunk-delay-ms: 5"
--- request
POST /v1/chat/completions
{"model":"claude-3-5-sonnet","stream":true,"messages":[{"role":"user","content":"hi there"}]}
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
