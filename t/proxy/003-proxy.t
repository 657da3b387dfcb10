# Requests routed to a provider through the mock: the provider's key
# replaces the client's, the body goes out byte for byte unless the route
# renames the model, and routes resolve exact names (in any case) ahead of
# wildcards, wildcards in configuration order.

use lib 't/lib';
use Smartflow::Blocks;
use Smartflow::Mock;
use Digest::SHA ();
use Test::Nginx::Socket 'no_plan';

$ENV{SMARTFLOW_TEST_PROVIDER_KEY} = 'sk-provider-from-env-777';

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;

    upstream sf_openai {
        server 127.0.0.1:$TEST_NGINX_MOCK_PORT;
        keepalive 8;
    }

    smartflow_provider openai type=openai upstream=http://sf_openai
                       path=/v1 key=sk-provider-test-key;
    smartflow_provider demo type=echo;

    smartflow_route gpt-4o openai;
    smartflow_route alias-4o openai model=gpt-4o-mini;
    smartflow_route gpt-3.5-turbo-instruct openai;
    smartflow_route text-embedding-3-small openai;
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

    location = /v1/embeddings {
        smartflow_api embeddings;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location @smartflow_error {
        smartflow_api error;
    }
_EOC_

Smartflow::Blocks::defaults(http_config => $HttpConfig,
                            config => $Locations,
                            more_headers => $OpenAIKey);

# request bodies whose digests the mock reports back
our $Chat = '{"model":"gpt-4o","messages":[{"role":"system","content":"Be brief."},'
    . '{"role":"user","content":"hi there"}],"temperature":0.25,"max_tokens":16}';
our $Spaced = qq/{ "model" : "gpt-4o",\n  "messages": [ {"role": "user", /
    . qq/"content": "caf\\u00e9 \\"quoted\\" \\ud83d\\ude00"} ],\n  "n": 1.50 }/;
our $Completion = '{"model":"gpt-3.5-turbo-instruct","prompt":"Say this is a test","max_tokens":7}';
our $Embedding = '{"model":"text-embedding-3-small","input":["first text","second text"]}';
our $Renamed = '{"model":"alias-4o","messages":[{"role":"user","content":"hi"}],"top_p":1.0e0}';
our $Large = '{"model":"gpt-4o","messages":[{"role":"user","content":"'
    . ('0123456789abcdef' x 65536) . '"}]}';

sub sha { 'x-mock-body-sha256: ' . Digest::SHA::sha256_hex($_[0]) }

sub chunked {
    my $body = shift;
    my $out = '';
    for (my $off = 0; $off < length $body; $off += 37) {
        my $piece = substr $body, $off, 37;
        $out .= sprintf("%x\r\n", length $piece) . "$piece\r\n";
    }
    return "${out}0\r\n\r\n";
}

run_tests();

__DATA__

=== TEST 1: chat: the provider sees its own key, the path and the client's bytes
--- request eval
"POST /v1/chat/completions\n$::Chat"
--- response_headers eval
CORE::join "\n", "x-mock-authorization: Bearer sk-provider-test-key",
    "x-mock-api-key:", "x-mock-path: /v1/chat/completions",
    "x-mock-model: gpt-4o", "Content-Type: application/json", ::sha($::Chat)
--- response_body_like chomp
^\{"id":"chatcmpl-\w+","object":"chat\.completion",.*"content":"mock reply to: hi there"
--- no_error_log
[error]



=== TEST 2: a client key sent as x-api-key stays at the gateway
--- more_headers
x-api-key: sk-smartflow-test-0123456789
--- request eval
"POST /v1/chat/completions\n$::Chat"
--- response_headers eval
CORE::join "\n", "x-mock-authorization: Bearer sk-provider-test-key",
    "x-mock-api-key:", ::sha($::Chat)
--- response_body_like chomp
"content":"mock reply to: hi there"
--- no_error_log
[error]



=== TEST 3: other client headers do reach the provider
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-mock-reply: a custom answer
--- request eval
"POST /v1/chat/completions\n$::Chat"
--- response_body_like chomp
"content":"a custom answer"
--- no_error_log
[error]



=== TEST 4: whitespace, escapes and number text go out untouched
--- request eval
"POST /v1/chat/completions\n$::Spaced"
--- response_headers eval
::sha($::Spaced)
--- response_body_like chomp
"content":"mock reply to: caf\x{c3}\x{a9} \\"quoted\\" \x{f0}\x{9f}\x{98}\x{80}"
--- no_error_log
[error]



=== TEST 5: a body of 1 MiB goes out byte for byte
--- request eval
"POST /v1/chat/completions\n$::Large"
--- response_headers eval
::sha($::Large)
--- response_body_like chomp
"object":"chat\.completion"
--- no_error_log
[error]



=== TEST 6: a chunked request body goes out whole, byte for byte
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
Transfer-Encoding: chunked
--- request eval
"POST /v1/chat/completions\n" . ::chunked($::Chat)
--- response_headers eval
::sha($::Chat)
--- response_body_like chomp
"content":"mock reply to: hi there"
--- no_error_log
[error]



=== TEST 7: completions
--- request eval
"POST /v1/completions\n$::Completion"
--- response_headers eval
CORE::join "\n", "x-mock-path: /v1/completions",
    "x-mock-authorization: Bearer sk-provider-test-key",
    "x-mock-model: gpt-3.5-turbo-instruct", ::sha($::Completion)
--- response_body_like chomp
^\{"id":"cmpl-\w+","object":"text_completion",.*"text":"mock reply to: Say this is a test"
--- no_error_log
[error]



=== TEST 8: embeddings
--- request eval
"POST /v1/embeddings\n$::Embedding"
--- response_headers eval
CORE::join "\n", "x-mock-path: /v1/embeddings",
    "x-mock-authorization: Bearer sk-provider-test-key",
    "x-mock-model: text-embedding-3-small", ::sha($::Embedding)
--- response_body_like chomp
^\{"object":"list","data":\[\{"object":"embedding","index":0,"embedding":\[[-0-9.e,]+\]\},\{"object":"embedding","index":1,
--- no_error_log
[error]



=== TEST 9: an alias renames the model, and nothing else changes in the body
--- request eval
"POST /v1/chat/completions\n$::Renamed"
--- response_headers eval
CORE::join "\n", "x-mock-model: gpt-4o-mini",
    ::sha('{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"top_p":1.0e0}')
--- response_body_like chomp
"model":"gpt-4o-mini",.*"content":"mock reply to: hi"
--- no_error_log
[error]



=== TEST 10: a renamed body keeps the text it carries
--- request
POST /v1/chat/completions
{ "model": "ALIAS-4o", "messages": [ {"role": "user", "content": "caf\u00e9 \"q\" \\ /"} ] }
--- response_headers
x-mock-model: gpt-4o-mini
--- response_body_like chomp
"content":"mock reply to: caf\x{c3}\x{a9} \\"q\\" \\\\ /"
--- no_error_log
[error]



=== TEST 11: a wildcard route
--- request
POST /v1/chat/completions
{"model":"gpt-4.1-nano","messages":[{"role":"user","content":"hi"}]}
--- response_headers
x-mock-model: gpt-4.1-nano
x-mock-path: /v1/chat/completions
--- response_body_like chomp
"model":"gpt-4\.1-nano"
--- no_error_log
[error]



=== TEST 12: exact routes match in any case, and the client's spelling goes out
--- request
POST /v1/chat/completions
{"model":"GPT-4O","messages":[{"role":"user","content":"hi"}]}
--- response_headers
x-mock-model: GPT-4O
--- response_body_like chomp
"content":"mock reply to: hi"
--- no_error_log
[error]



=== TEST 13: an exact route wins over a wildcard declared before it
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    upstream sf_openai {
        server 127.0.0.1:$TEST_NGINX_MOCK_PORT;
    }
    smartflow_provider openai type=openai upstream=http://sf_openai path=/v1;
    smartflow_provider demo type=echo;
    smartflow_route gpt-* openai;
    smartflow_route gpt-echo demo;
--- request eval
[
"POST /v1/chat/completions\n" . '{"model":"gpt-echo","messages":[{"role":"user","content":"hi"}]}',
"POST /v1/chat/completions\n" . '{"model":"gpt-other","messages":[{"role":"user","content":"hi"}]}',
]
--- response_body_like eval
[
qr/"content":"Echo: hi"/,
qr/"content":"mock reply to: hi"/,
]
--- error_code eval
[200, 200]
--- no_error_log
[error]



=== TEST 14: wildcards are tried in configuration order
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    upstream sf_openai {
        server 127.0.0.1:$TEST_NGINX_MOCK_PORT;
    }
    smartflow_provider openai type=openai upstream=http://sf_openai path=/v1;
    smartflow_provider demo type=echo;
    smartflow_route gpt-4* demo;
    smartflow_route gpt-* openai;
    smartflow_route *-mini demo;
--- request eval
[
"POST /v1/chat/completions\n" . '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}',
"POST /v1/chat/completions\n" . '{"model":"gpt-3.5-mini","messages":[{"role":"user","content":"hi"}]}',
"POST /v1/chat/completions\n" . '{"model":"o3-mini","messages":[{"role":"user","content":"hi"}]}',
]
--- response_body_like eval
[
qr/"content":"Echo: hi"/,
qr/"content":"mock reply to: hi"/,
qr/"content":"Echo: hi"/,
]
--- error_code eval
[200, 200, 200]
--- no_error_log
[error]



=== TEST 15: a wildcard matches whole names only
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route gpt-* demo;
--- request
POST /v1/chat/completions
{"model":"my-gpt-4o","messages":[{"role":"user","content":"hi"}]}
--- error_code: 404
--- response_body_like chomp
"code":"model_not_found"
--- error_log
smartflow proxy: The model `my-gpt-4o` does not exist



=== TEST 16: wildcards match in any case
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route gpt-* demo;
--- request
POST /v1/chat/completions
{"model":"GPT-4O-Mini","messages":[{"role":"user","content":"hi"}]}
--- response_body_like chomp
"model":"GPT-4O-Mini",.*"content":"Echo: hi"
--- no_error_log
[error]



=== TEST 17: a provider's path= prefix, with or without its trailing slash
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    upstream sf_openai {
        server 127.0.0.1:$TEST_NGINX_MOCK_PORT;
    }
    smartflow_provider slash type=openai upstream=http://sf_openai path=/v1/;
    smartflow_provider deep type=openai upstream=http://sf_openai path=/openai/deployments/v1;
    smartflow_route gpt-slash slash;
    smartflow_route gpt-deep deep;
--- request eval
[
"POST /v1/chat/completions\n" . '{"model":"gpt-slash","messages":[{"role":"user","content":"hi"}]}',
"POST /v1/chat/completions\n" . '{"model":"gpt-deep","messages":[{"role":"user","content":"hi"}]}',
]
--- response_headers eval
[
"x-mock-path: /v1/chat/completions",
"x-mock-path: /openai/deployments/v1/chat/completions",
]
--- error_code eval
[200, 404]
--- response_body_like eval
[
qr/"content":"mock reply to: hi"/,
qr/"message":"Invalid URL \(POST \/openai\/deployments\/v1\/chat\/completions\)"/,
]
--- no_error_log
[error]



=== TEST 18: the provider key from an environment variable
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    upstream sf_openai {
        server 127.0.0.1:$TEST_NGINX_MOCK_PORT;
    }
    smartflow_provider openai type=openai upstream=http://sf_openai path=/v1
                       key=env:SMARTFLOW_TEST_PROVIDER_KEY;
    smartflow_route gpt-4o openai;
--- request eval
"POST /v1/chat/completions\n$::Chat"
--- response_headers
x-mock-authorization: Bearer sk-provider-from-env-777
--- no_error_log
[error]



=== TEST 19: a provider without a key gets no credentials at all
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    upstream sf_local {
        server 127.0.0.1:$TEST_NGINX_MOCK_PORT;
    }
    smartflow_provider local type=openai upstream=http://sf_local path=/v1;
    smartflow_route gpt-4o local;
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-api-key: sk-smartflow-test-0123456789
--- request eval
"POST /v1/chat/completions\n$::Chat"
--- response_headers
x-mock-authorization:
x-mock-api-key:
--- response_body_like chomp
"content":"mock reply to: hi there"
--- no_error_log
[error]



=== TEST 20: an anthropic-type provider gets its key as x-api-key
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    upstream sf_anthropic {
        server 127.0.0.1:$TEST_NGINX_MOCK_PORT;
    }
    smartflow_provider anthropic type=anthropic upstream=http://sf_anthropic
                       path=/v1 key=sk-ant-provider-key;
    smartflow_route claude-* anthropic;
--- request
POST /v1/chat/completions
{"model":"claude-sonnet-4","messages":[{"role":"user","content":"hi"}]}
--- response_headers
x-mock-authorization:
x-mock-api-key: sk-ant-provider-key
x-mock-model: claude-sonnet-4
--- no_error_log
[error]



=== TEST 21: the provider's own response headers reach the client
--- request eval
"POST /v1/chat/completions\n$::Chat"
--- response_headers_like
x-request-id: req_[0-9a-f]{32}
Content-Type: application/json
--- no_error_log
[error]



=== TEST 22: without path=, an openai provider's requests go under /v1
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    upstream sf_openai {
        server 127.0.0.1:$TEST_NGINX_MOCK_PORT;
    }
    smartflow_provider openai type=openai upstream=http://sf_openai;
    smartflow_route gpt-4o openai;
    smartflow_route text-embedding-3-small openai;
--- request eval
[
"POST /v1/chat/completions\n$::Chat",
"POST /v1/embeddings\n$::Embedding",
]
--- response_headers eval
[
"x-mock-path: /v1/chat/completions",
"x-mock-path: /v1/embeddings",
]
--- error_code eval
[200, 200]
--- response_body_like eval
[
qr/"content":"mock reply to: hi there"/,
qr/"object":"embedding"/,
]
--- no_error_log
[error]



=== TEST 23: the $smartflow_* variables of a routed request
--- config
    location = /v1/chat/completions {
        smartflow_api chat;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
        add_header X-Route "$smartflow_route $smartflow_provider $smartflow_model $smartflow_upstream_model" always;
        add_header X-Caller "$smartflow_key_id stream=$smartflow_stream" always;
    }

    location @smartflow_error {
        smartflow_api error;
    }
--- request eval
[
"POST /v1/chat/completions\n$::Renamed",
"POST /v1/chat/completions\n"
. '{"model":"GPT-4.1","stream":true,"messages":[{"role":"user","content":"hi"}]}',
]
--- response_headers eval
[
"X-Route: alias-4o openai alias-4o gpt-4o-mini\nX-Caller: master stream=0",
"X-Route: gpt-* openai GPT-4.1 GPT-4.1\nX-Caller: master stream=1",
]
--- error_code eval
[200, 200]
--- response_body_like eval
[
qr/"content":"mock reply to: hi"/,
qr/data: \[DONE\]/,
]
--- no_error_log
[error]



=== TEST 24: $smartflow_error_code names the error the client got
--- config
    location = /v1/chat/completions {
        smartflow_api chat;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
        add_header X-Error "$smartflow_error_code" always;
    }

    location @smartflow_error {
        smartflow_api error;
    }
--- request
POST /v1/chat/completions
{"model":"no-such-model","messages":[{"role":"user","content":"hi"}]}
--- error_code: 404
--- response_headers
X-Error: model_not_found
--- response_body_like chomp
"code":"model_not_found"
--- error_log
smartflow proxy: The model `no-such-model` does not exist



=== TEST 25: a body too large for memory, read back from its temporary file
The location spells out the snippet with a 1k client_body_buffer_size.
--- config
    location = /v1/chat/completions {
        smartflow_api chat;

        proxy_pass $smartflow_upstream$smartflow_upstream_uri;
        proxy_set_body $smartflow_upstream_body;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $smartflow_upstream_host;
        proxy_set_header Authorization $smartflow_provider_auth;
        proxy_set_header x-api-key $smartflow_provider_api_key;
        client_max_body_size 4m;
        client_body_buffer_size 1k;

        error_page 400 401 403 404 405 413 500 502 503 504 @smartflow_error;
    }

    location @smartflow_error {
        smartflow_api error;
    }
--- request eval
"POST /v1/chat/completions\n$::Large"
--- response_headers eval
::sha($::Large)
--- response_body_like chomp
"object":"chat\.completion"
--- no_error_log
[error]



=== TEST 26: requests pipelined on one connection, to different providers
--- pipelined_requests eval
[
"POST /v1/chat/completions\n" . '{"model":"gpt-4o","messages":[{"role":"user","content":"one"}]}',
"POST /v1/chat/completions\n" . '{"model":"smartflow-echo","messages":[{"role":"user","content":"two"}]}',
"POST /v1/completions\n" . '{"model":"gpt-3.5-turbo-instruct","prompt":"three"}',
"POST /v1/chat/completions\n" . '{"model":"alias-4o","messages":[{"role":"user","content":"four"}]}',
]
--- error_code eval
[200, 200, 200, 200]
--- response_body_like eval
[
qr/"model":"gpt-4o",.*"content":"mock reply to: one"/,
qr/"content":"Echo: two"/,
qr/"text":"mock reply to: three"/,
qr/"model":"gpt-4o-mini",.*"content":"mock reply to: four"/,
]
--- no_error_log
[error]
