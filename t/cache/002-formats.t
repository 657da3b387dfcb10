# Answers stored and served across formats: plain and streamed, OpenAI
# and Anthropic clients, answers that went through proxy_pass to a
# provider (the mock, whose x-mock-reply header picks the answer's text,
# so a hit shows the first answer where the provider would have given
# another).  What is never stored: errors, tool calls, a fallback
# deployment's answer, a stream cut short.  The locations are the shipped
# ones, with the cache on for the whole server.

use lib 't/lib';
use Smartflow::Blocks;
use Smartflow::Conf;
use Smartflow::Mock;
use Test::Nginx::Socket 'no_plan';

no_shuffle();

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;

    upstream sf_mock {
        server 127.0.0.1:$TEST_NGINX_MOCK_PORT;
        keepalive 8;
    }

    smartflow_provider openai type=openai upstream=http://sf_mock path=/v1
                       key=sk-provider-test-key;
    smartflow_provider anthropic type=anthropic upstream=http://sf_mock
                       path=/v1 key=sk-ant-provider-key;
    smartflow_provider demo type=echo;

    smartflow_route gpt-* openai;
    smartflow_route claude-* anthropic;
    smartflow_route smartflow-echo demo;
    smartflow_route flaky openai model=mock-error-503;
    smartflow_route flaky demo fallback;

    smartflow_cache_zone metacache 16m entries=1000;
_EOC_

our $Locations = "smartflow_cache metacache;\n"
    . Smartflow::Conf::shipped_locations();

Smartflow::Blocks::defaults(http_config => $HttpConfig,
                            config => $Locations,
                            more_headers => $OpenAIKey);

sub chat {
    my ($model, $q, $extra) = @_;
    $extra //= '';
    return "POST /v1/chat/completions\n"
        . qq({"model":"$model","messages":[{"role":"user","content":"$q"}]$extra});
}

sub messages {
    my ($model, $q, $extra) = @_;
    $extra //= '';
    return "POST /anthropic/v1/messages\n"
        . qq({"model":"$model","max_tokens":64,"messages":[{"role":"user","content":"$q"}]$extra});
}

our $Key = "Authorization: Bearer sk-smartflow-test-0123456789";

run_tests();

__DATA__

=== TEST 1: an answer through proxy_pass is stored; the same question is answered from the cache, the provider untouched
--- request eval
[main::chat("gpt-4o-mini", "What is a monad?"),
 main::chat("gpt-4o-mini", "what is a monad"),
 main::chat("gpt-4o-mini", "What is a functor?")]
--- more_headers eval
["$main::Key\nx-mock-reply: first answer",
 "$main::Key\nx-mock-reply: second answer",
 "$main::Key\nx-mock-reply: third answer"]
--- response_body_like eval
[qr/"content":"first answer"/, qr/"content":"first answer"/,
 qr/"content":"third answer"/]
--- response_headers eval
["x-smartflow-cache: MISS\nx-mock-model: gpt-4o-mini",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 1\nx-mock-model:",
 "x-smartflow-cache: MISS"]
--- no_error_log
[error]



=== TEST 2: a streamed answer is assembled and stored once complete; a plain request gets it as JSON, a streamed one as SSE
--- request eval
[main::chat("gpt-4o-mini", "Tell me a joke.", ',"stream":true'),
 main::chat("gpt-4o-mini", "Tell me a joke."),
 main::chat("gpt-4o-mini", "Tell me a joke.", ',"stream":true')]
--- more_headers eval
["$main::Key\nx-mock-reply: why did the chicken",
 "$main::Key\nx-mock-reply: other",
 "$main::Key\nx-mock-reply: other"]
--- response_body_like eval
[qr/"content":"why/,
 qr/^\{"id":"chatcmpl-sfc[0-9a-f]+","object":"chat.completion",.*"content":"why did the chicken","refusal":null\},"logprobs":null,"finish_reason":"stop"\}\]/,
 qr/^data: \{"id":"chatcmpl-sfc[0-9a-f]+","object":"chat.completion.chunk".*"delta":\{"role":"assistant","content":""\}.*\n\ndata: .*"delta":\{"content":"why did the chicken"\}.*\n\ndata: .*"finish_reason":"stop"\}\]\}\n\ndata: \[DONE\]\n\n$/s]
--- response_headers eval
["x-smartflow-cache: MISS",
 "x-smartflow-cache: HIT\nContent-Type: application/json",
 "x-smartflow-cache: HIT\nContent-Type: text/event-stream"]
--- no_error_log
[error]



=== TEST 3: Anthropic clients: stored from the Messages API, served as a message and as its event stream
--- request eval
[main::messages("claude-3-5-haiku-latest", "Why is the sea salty?"),
 main::messages("claude-3-5-haiku-latest", "Why is the sea salty?"),
 main::messages("claude-3-5-haiku-latest", "why is the sea salty", ',"stream":true')]
--- more_headers eval
["x-api-key: sk-smartflow-test-0123456789\nx-mock-reply: because of rocks",
 "x-api-key: sk-smartflow-test-0123456789\nx-mock-reply: other",
 "x-api-key: sk-smartflow-test-0123456789\nx-mock-reply: other"]
--- response_body_like eval
[qr/"type":"message".*"text":"because of rocks"/,
 qr/^\{"id":"msg_[^"]+","type":"message","role":"assistant",.*"content":\[\{"type":"text","text":"because of rocks"\}\],.*"stop_reason":"end_turn"/,
 qr/^event: message_start\n.*event: content_block_delta\ndata: \{"type":"content_block_delta","index":0,"delta":\{"type":"text_delta","text":"because of rocks"\}\}.*event: message_stop\n/s]
--- response_headers eval
["x-smartflow-cache: MISS",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 1",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 1"]
--- no_error_log
[error]



=== TEST 4: the built-in provider's stream, an OpenAI client's answer asked again by an Anthropic client with the same parameters
--- request eval
["POST /v1/chat/completions\n" . '{"model":"smartflow-echo","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Count to three."}]}',
 main::messages("smartflow-echo", "Count to three."),
 main::messages("smartflow-echo", "Count to three.", ',"stream":true')]
--- more_headers eval
["$main::Key", "x-api-key: sk-smartflow-test-0123456789",
 "x-api-key: sk-smartflow-test-0123456789"]
--- response_body_like eval
[qr/data: \[DONE\]/,
 qr/"type":"message".*"text":"Echo: Count to three\."/,
 qr/event: message_start.*"text":"Echo: Count to three\.".*event: message_stop/s]
--- response_headers eval
["x-smartflow-cache: MISS",
 "x-smartflow-cache: HIT",
 "x-smartflow-cache: HIT"]
--- no_error_log
[error]



=== TEST 5: never stored: a provider's error, a tool call, a fallback deployment's answer
--- request eval
[main::chat("gpt-4o-mini", "Is it stored?"),
 main::chat("gpt-4o-mini", "Is it stored?"),
 main::chat("gpt-4o-mini", "What is the weather in Paris?", ',"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{}}}}]'),
 main::chat("gpt-4o-mini", "What is the weather in Paris?", ',"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{}}}}]'),
 main::chat("flaky", "Stored by a fallback?"),
 main::chat("flaky", "Stored by a fallback?")]
--- more_headers eval
["$main::Key\nx-mock-status: 500", "$main::Key\nx-mock-reply: fine",
 "$main::Key", "$main::Key", "$main::Key", "$main::Key"]
--- error_code eval
[500, 200, 200, 200, 200, 200]
--- response_body_like eval
[qr/"error"/, qr/"content":"fine"/, qr/"tool_calls"/, qr/"tool_calls"/,
 qr/"content":"Echo: Stored by a fallback\?"/,
 qr/"content":"Echo: Stored by a fallback\?"/]
--- response_headers eval
["x-smartflow-cache: MISS", "x-smartflow-cache: MISS",
 "x-smartflow-cache: MISS", "x-smartflow-cache: MISS",
 "x-smartflow-cache: MISS\nx-smartflow-deployment: demo/flaky",
 "x-smartflow-cache: MISS\nx-smartflow-deployment: demo/flaky"]
