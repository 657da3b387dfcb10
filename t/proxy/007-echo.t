# The built-in echo provider (type=echo): OpenAI-shaped chat, completion
# and embedding answers made inside the gateway.  Every answer must be
# valid JSON whatever the client wrote (quotes, backslashes, control
# characters, any Unicode), so bodies are decoded with JSON::PP and
# compared in canonical form (sorted keys, ASCII escapes), with the id and
# creation time, which change on every request, replaced by ID and T.

use JSON::PP ();
use MIME::Base64 ();
use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use Smartflow::Blocks;

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_route text-embedding-echo demo;
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

my $decoder = JSON::PP->new->utf8;
my $encoder = JSON::PP->new->ascii->canonical;

sub canon {
    my $body = shift;
    my $v = eval { $decoder->decode($body) };
    return "not JSON ($@): $body\n" unless ref $v;

    $v->{id} =~ s/^(chatcmpl-|cmpl-).+/${1}ID/ if defined $v->{id};
    $v->{created} = 'T' if exists $v->{created};

    return $encoder->encode($v) . "\n";
}

# embeddings (lists of floats, or base64 of little-endian float32): one
# line per vector with its length and L2 norm, and which earlier vector it
# repeats, if any
sub vectors {
    my $body = shift;
    my $v = eval { $decoder->decode($body) };
    return "not JSON ($@): $body\n" unless ref $v;

    my (@out, %seen);
    push @out, "$v->{object} $v->{model}";

    for my $d (@{ $v->{data} }) {
        my $e = $d->{embedding};
        $e = [ unpack 'f<*', MIME::Base64::decode_base64($e) ] unless ref $e;
        my $norm = 0;
        $norm += $_ * $_ for @$e;
        my $key = join ',', @$e;
        my $line = sprintf "%s %d: %d dims, norm %.3f", $d->{object},
                           $d->{index}, scalar @$e, sqrt $norm;
        $line .= ", same as $seen{$key}" if exists $seen{$key};
        $seen{$key} //= $d->{index};
        push @out, $line;
    }

    push @out, "usage $v->{usage}{prompt_tokens} $v->{usage}{total_tokens}";

    return join '', map { "$_\n" } @out;
}

# compares each answer's vectors with the previous answer's
our $Previous = '';

sub remember {
    my $body = shift;
    my $v = eval { $decoder->decode($body) };
    return "not JSON ($@): $body\n" unless ref $v;

    my $now = join ';', map {
        my $e = $_->{embedding};
        join ',', map { sprintf '%.6f', $_ }
                  ref $e ? @$e : unpack 'f<*', MIME::Base64::decode_base64($e);
    } @{ $v->{data} };
    my $same = $now eq $Previous;
    $Previous = $now;

    return $same ? "the same vector as before\n" : "a new vector\n";
}

run_tests();

__DATA__

=== TEST 1: a chat completion
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"hello"}]}
--- response_headers
Content-Type: application/json
--- response_body_filters eval
\&::canon
--- response_body
{"choices":[{"finish_reason":"stop","index":0,"logprobs":null,"message":{"content":"Echo: hello","role":"assistant"}}],"created":"T","id":"chatcmpl-ID","model":"smartflow-echo","object":"chat.completion","usage":{"completion_tokens":2,"prompt_tokens":1,"total_tokens":3}}
--- no_error_log
[error]



=== TEST 2: the last user message is the one echoed
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"system","content":"sys"},{"role":"user","content":"first"},{"role":"assistant","content":"Echo: first"},{"role":"user","content":"second"},{"role":"assistant","content":"pending"}]}
--- response_body_like chomp
"message":\{"role":"assistant","content":"Echo: second"\}
--- no_error_log
[error]



=== TEST 3: no user message, nothing to echo
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"system","content":"be nice"}]}
--- response_body_like chomp
"message":\{"role":"assistant","content":"Echo: "\}
--- no_error_log
[error]



=== TEST 4: content parts: the text parts, joined by spaces
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":[{"type":"text","text":"look at"},{"type":"image_url","image_url":{"url":"https://example.com/cat.png"}},{"type":"text","text":"this cat"}]}]}
--- response_body_like chomp
"message":\{"role":"assistant","content":"Echo: look at this cat"\}
--- no_error_log
[error]



=== TEST 5: quotes, backslashes and control characters come back escaped
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"say \"hi\" \\ back\nthen\ttab\u0001\u001f </script>"}]}
--- response_body_filters eval
\&::canon
--- response_body_like chomp
"content":"Echo: say \\"hi\\" \\\\ back\\nthen\\ttab\\u0001\\u001f </script>"
--- no_error_log
[error]



=== TEST 6: Unicode, escaped or not, comes back as the same characters
--- request eval
"POST /v1/chat/completions\n"
. '{"model":"smartflow-echo","messages":[{"role":"user","content":"'
. "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80" . ' \u00e9\u20ac\ud83d\ude00"}]}'
--- response_body_filters eval
\&::canon
--- response_body_like chomp
"content":"Echo: caf\\u00e9 \\u20ac \\ud83d\\ude00 \\u00e9\\u20ac\\ud83d\\ude00"
--- no_error_log
[error]



=== TEST 7: a completion
--- request
POST /v1/completions
{"model":"smartflow-echo","prompt":"Say \"this\" is a test"}
--- response_body_filters eval
\&::canon
--- response_body
{"choices":[{"finish_reason":"stop","index":0,"logprobs":null,"text":"Echo: Say \"this\" is a test"}],"created":"T","id":"cmpl-ID","model":"smartflow-echo","object":"text_completion","usage":{"completion_tokens":6,"prompt_tokens":5,"total_tokens":11}}
--- no_error_log
[error]



=== TEST 8: a completion of a prompt array echoes its first prompt
--- request
POST /v1/completions
{"model":"smartflow-echo","prompt":["first prompt","second prompt"]}
--- response_body_like chomp
"text":"Echo: first prompt"
--- no_error_log
[error]



=== TEST 9: one embedding: 16 dimensions, unit length
--- request
POST /v1/embeddings
{"model":"text-embedding-echo","input":"the quick brown fox"}
--- response_headers
Content-Type: application/json
--- response_body_filters eval
\&::vectors
--- response_body
list text-embedding-echo
embedding 0: 16 dims, norm 1.000
usage 4 4
--- no_error_log
[error]



=== TEST 10: several embeddings; the same text gives the same vector
--- request
POST /v1/embeddings
{"model":"text-embedding-echo","input":["the quick brown fox","jumps over","the quick brown fox"]}
--- response_body_filters eval
\&::vectors
--- response_body
list text-embedding-echo
embedding 0: 16 dims, norm 1.000
embedding 1: 16 dims, norm 1.000
embedding 2: 16 dims, norm 1.000, same as 0
usage 10 10
--- no_error_log
[error]



=== TEST 11: embeddings are the same from one request to the next
--- request eval
[
"POST /v1/embeddings\n" . '{"model":"text-embedding-echo","input":"stable vector"}',
"POST /v1/embeddings\n" . '{"model":"text-embedding-echo","input":"stable vector"}',
]
--- response_body_filters eval
\&::remember
--- response_body eval
[
"a new vector\n",
"the same vector as before\n",
]
--- error_code eval
[200, 200]
--- no_error_log
[error]



=== TEST 12: embeddings as base64: little-endian float32, as OpenAI sends them
--- request
POST /v1/embeddings
{"model":"text-embedding-echo","input":["the quick brown fox","jumps over"],"encoding_format":"base64"}
--- response_body_filters eval
\&::vectors
--- response_body
list text-embedding-echo
embedding 0: 16 dims, norm 1.000
embedding 1: 16 dims, norm 1.000
usage 6 6
--- no_error_log
[error]



=== TEST 13: base64 and float embeddings are the same vectors
--- request eval
[
"POST /v1/embeddings\n" . '{"model":"text-embedding-echo","input":"same words"}',
"POST /v1/embeddings\n" . '{"model":"text-embedding-echo","input":"same words","encoding_format":"base64"}',
]
--- response_body_filters eval
\&::remember
--- response_body eval
[
"a new vector\n",
"the same vector as before\n",
]
--- error_code eval
[200, 200]
--- no_error_log
[error]



=== TEST 14: embeddings of token ids: one list, or a list of lists
--- request eval
[
"POST /v1/embeddings\n" . '{"model":"text-embedding-echo","input":[1212,318,257,1332]}',
"POST /v1/embeddings\n" . '{"model":"text-embedding-echo","input":[[1212,318],[257,1332,13],[1212,318]]}',
]
--- response_body_filters eval
\&::vectors
--- response_body eval
[
"list text-embedding-echo
embedding 0: 16 dims, norm 1.000
usage 4 4
",
"list text-embedding-echo
embedding 0: 16 dims, norm 1.000
embedding 1: 16 dims, norm 1.000
embedding 2: 16 dims, norm 1.000, same as 0
usage 7 7
",
]
--- error_code eval
[200, 200]
--- no_error_log
[error]



=== TEST 15: an empty input is refused
--- request
POST /v1/embeddings
{"model":"text-embedding-echo","input":""}
--- error_code: 400
--- response_body chomp
{"error":{"message":"'input' must be a non-empty string or array.","type":"invalid_request_error","param":"input","code":"invalid_value"}}
--- error_log
smartflow proxy: 'input' must be a non-empty string or array.



=== TEST 16: an input list of something else than texts and token ids is refused
--- request
POST /v1/embeddings
{"model":"text-embedding-echo","input":["fine",{"text":"not fine"}]}
--- error_code: 400
--- response_body chomp
{"error":{"message":"'input' item 1 must be a string or an array of token ids.","type":"invalid_request_error","param":"input","code":"invalid_value"}}
--- error_log
smartflow proxy: 'input' item 1 must be a string or an array of token ids.



=== TEST 17: prompt tokens count the words of the prompt, not of the JSON around it
--- request
POST /v1/chat/completions
{ "model": "smartflow-echo", "messages": [ { "role": "user", "content": "one two three" } ] }
--- response_body_filters eval
\&::canon
--- response_body_like chomp
"usage":\{"completion_tokens":4,"prompt_tokens":3,"total_tokens":7\}
--- no_error_log
[error]



=== TEST 18: a streamed answer of a text with long runs of spaces
Every space is a piece of the stream; the answer must stay whole.
--- request eval
"POST /v1/chat/completions\n"
. '{"model":"smartflow-echo","stream":true,"messages":[{"role":"user","content":"a'
. (' ' x 3000) . 'b"}]}'
--- response_headers
Content-Type: text/event-stream
--- response_body_like chomp
\A(?:data: \{"id":"chatcmpl-[^\n]+\}\n\n)+data: \[DONE\]\n\n\z
--- no_error_log
[error]
