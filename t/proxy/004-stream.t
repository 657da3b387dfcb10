# Streamed completions ("stream": true): server-sent events pass through
# unbuffered, whole and in order, however the provider cuts them into
# reads; the built-in echo provider streams OpenAI's chunk sequence.
#
# Bodies are checked through sse_summary(), which decodes every event and
# writes one line per thing a client would see (role, content pieces,
# finish reason, usage, [DONE]) and flags anything that is not a
# well-formed "data: ...\n\n" event.

use lib 't/lib';
use Smartflow::Mock;
use JSON::PP ();
use Test::Nginx::Socket 'no_plan';

our $MainConfig = <<'_EOC_';
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_policy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_cache_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_audit_module.so;
_EOC_

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

add_block_preprocessor(sub {
    my $block = shift;

    $block->set_value('main_config', $MainConfig)
        unless defined $block->main_config;
    $block->set_value('http_config', $HttpConfig)
        unless defined $block->http_config;
    $block->set_value('config', $Locations)
        unless defined $block->config;
    $block->set_value('more_headers',
                      'Authorization: Bearer sk-smartflow-test-0123456789')
        unless defined $block->more_headers;
});

my $json = JSON::PP->new->utf8->canonical;
my $str = JSON::PP->new->ascii->allow_nonref;

sub sse_summary {
    my $body = shift;
    my (@out, $object, $model, $id);

    while ($body =~ s/\A(.*?)\n\n//s) {
        my $event = $1;

        if ($event !~ s/\Adata: //) {
            push @out, "not a data event: $event";
            next;
        }

        if ($event eq '[DONE]') {
            push @out, '[DONE]';
            next;
        }

        my $chunk = eval { $json->decode($event) };
        if (!$chunk) {
            push @out, "not JSON: $event";
            next;
        }

        if (!defined $model || $chunk->{model} ne $model
            || $chunk->{object} ne $object)
        {
            ($object, $model) = @$chunk{qw(object model)};
            push @out, "$object $model";
        }

        push @out, 'new id' if defined $id && $chunk->{id} ne $id;
        $id = $chunk->{id};

        for my $choice (@{ $chunk->{choices} || [] }) {
            my $delta = $choice->{delta} || {};
            push @out, "role $delta->{role}" if defined $delta->{role};
            push @out, 'content ' . $str->encode($delta->{content})
                if defined $delta->{content}
                   && ($delta->{content} ne '' || !defined $delta->{role});
            push @out, 'text ' . $str->encode($choice->{text})
                if defined $choice->{text} && $choice->{text} ne '';
            push @out, "finish $choice->{finish_reason}"
                if defined $choice->{finish_reason};
        }

        if (my $u = $chunk->{usage}) {
            push @out, "usage $u->{prompt_tokens} $u->{completion_tokens} "
                       . "$u->{total_tokens}";
        }
    }

    push @out, "left over: $body" if length $body;

    return join '', map { "$_\n" } @out;
}

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
\&::sse_summary
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
\&::sse_summary
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
\&::sse_summary
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
\&::sse_summary
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
\&::sse_summary
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
\&::sse_summary
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
\&::sse_summary
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
\&::sse_summary
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
\&::sse_summary
--- response_body
chat.completion.chunk SmartFlow-Echo
role assistant
content "Echo: "
content "x"
finish stop
[DONE]
--- no_error_log
[error]
