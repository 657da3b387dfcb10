# Translated streams read in pieces of every size: the mock writes its SSE
# bytes in x-mock-split-byte pieces (2 ms apart), so events, lines, JSON
# strings and UTF-8 sequences are cut everywhere; a split of 1 byte cuts at
# every byte boundary.  Each translated stream must come out the same:
# every event well-formed JSON, the same text pieces, finish reason and
# exact usage.
#
# Directions: an OpenAI client reading an Anthropic provider's stream, an
# Anthropic client reading an OpenAI provider's stream.  The blocks are
# generated below: split sizes 1 to 40, then larger ones up to more than a
# whole stream.  A few sizes for the same-format streams passing through
# too (the OpenAI one with its usage chunk, asked for by the gateway,
# hidden).

use lib 't/lib';
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

our $Locations = <<'_EOC_';
    location = /v1/chat/completions {
        smartflow_api chat;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /anthropic/v1/messages {
        smartflow_api messages;
        error_page 401 403 408 413 500 502 503 504 @smartflow_anthropic_error;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location @smartflow_error {
        smartflow_api error;
    }

    location @smartflow_anthropic_error {
        smartflow_api anthropic_error;
    }
_EOC_

Smartflow::Blocks::defaults(http_config => $HttpConfig, config => $Locations);

# The reply: two- and four-byte UTF-8 sequences, quotes and a backslash,
# all of which the translation re-escapes.
my $reply = qq{caf\x{c3}\x{a9} "q" \\ \x{f0}\x{9f}\x{98}\x{80} end};

my $openai_expected = <<'_EOS_';
chat.completion.chunk claude-3-5-sonnet
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

my $anthropic_expected = <<'_EOS_';
message_start msg_chatcmpl-* message assistant gpt-4o input_tokens=0 output_tokens=0
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

my @sizes = (1 .. 40, 41, 53, 64, 97, 128, 200, 256, 333, 512, 1000, 4096);

my $spec = '';
my $n = 0;

for my $size (@sizes) {
    $n++;
    $spec .= <<"_EOB_";
=== TEST $n: OpenAI client, Anthropic provider, read in $size-byte pieces
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-mock-split: $size
x-mock-reply: $reply
--- request
POST /v1/chat/completions
{"model":"claude-3-5-sonnet","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"count"}]}
--- timeout: 20
--- response_body_filters eval
\\&::openai_sse
--- response_body
$openai_expected--- no_error_log
[error]



_EOB_

    $n++;
    $spec .= <<"_EOB_";
=== TEST $n: Anthropic client, OpenAI provider, read in $size-byte pieces
--- more_headers
x-api-key: sk-smartflow-test-0123456789
anthropic-version: 2023-06-01
x-mock-split: $size
x-mock-reply: $reply
--- request
POST /anthropic/v1/messages
{"model":"gpt-4o","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"count"}]}
--- timeout: 20
--- response_body_filters eval
\\&::anthropic_sse
--- response_body
$anthropic_expected--- no_error_log
[error]



_EOB_
}

my $openai_passed = <<'_EOS_';
chat.completion.chunk gpt-4o
role assistant
content "caf\u00e9"
content " \"q\""
content " \\"
content " \ud83d\ude00"
content " end"
finish stop
[DONE]
_EOS_

my $anthropic_passed = <<'_EOS_';
message_start msg_01* message assistant claude-3-5-sonnet input_tokens=1 output_tokens=1
start 0 text
ping
text 0 "caf\u00e9"
text 0 " \"q\""
text 0 " \\"
text 0 " \ud83d\ude00"
text 0 " end"
stop 0
message_delta end_turn input_tokens=- output_tokens=5
message_stop
_EOS_

for my $size (3, 17, 64) {
    $n++;
    $spec .= <<"_EOB_";
=== TEST $n: OpenAI client, OpenAI provider, read in $size-byte pieces
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-mock-split: $size
x-mock-reply: $reply
--- request
POST /v1/chat/completions
{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"count"}]}
--- timeout: 20
--- response_body_filters eval
\\&::openai_sse
--- response_body
$openai_passed--- no_error_log
[error]



_EOB_

    $n++;
    $spec .= <<"_EOB_";
=== TEST $n: Anthropic client, Anthropic provider, read in $size-byte pieces
--- more_headers
x-api-key: sk-smartflow-test-0123456789
anthropic-version: 2023-06-01
x-mock-split: $size
x-mock-reply: $reply
--- request
POST /anthropic/v1/messages
{"model":"claude-3-5-sonnet","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"count"}]}
--- timeout: 20
--- response_body_filters eval
\\&::anthropic_sse
--- response_body
$anthropic_passed--- no_error_log
[error]



_EOB_
}

spec_string($spec);

run_tests();
