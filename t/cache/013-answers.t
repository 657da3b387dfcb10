# How an OpenAI answer is read for the store: a provider (a fixture
# location of the same nginx, its answer picked by a request header)
# answers with escapes, \u escapes (a surrogate pair among them),
# non-ASCII UTF-8, pretty-printed JSON with nested members; the hit must
# give the client exactly the text the provider gave.  What must not be
# stored is not: tool calls, two choices, an "error" member, a null
# content, another finish reason, a body that is not JSON (a number or
# a literal JSON has not, or bytes that are not UTF-8, among members the
# cache does not read).  A member
# given twice is read as the client reads it: the last one.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use JSON::PP;
use Smartflow::Audit;
use Test::More;

my $conf = $ENV{TEST_NGINX_SMARTFLOW_CONF} // Smartflow::Audit::top() . '/conf';
my $port = $ENV{TEST_NGINX_PORT} // 1984;

# each answer's JSON text (in q(), \\ is one backslash)
my %answers = (
    escapes => q({"id":"a","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"caf\\u00e9 \\"quoted\\" back\\\\slash \\/ line\\nnext \\u4e2d\\ttab \\u0041"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":9,"total_tokens":12}}),
    surrogate => q({"choices":[{"message":{"content":"smile \\ud83d\\ude00 ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":3,"total_tokens":6}}),
    utf8 => q({"choices":[{"message":{"content":"naïve — “quotes” 中文 😀"},"finish_reason":"stop"}]}),
    pretty => qq({\n  "id" : "b",\n  "object" : "chat.completion",\n  "created" : 1.5e9,\n  "choices" : [\n    {\n      "index" : 0,\n      "message" : {\n        "role" : "assistant",\n        "content" : "pretty answer",\n        "refusal" : null,\n        "tool_calls" : [ ],\n        "annotations" : [ { "type" : "x", "n" : [ -1, 0.25, 3E-2, true, false ] } ]\n      },\n      "logprobs" : null,\n      "finish_reason" : "length"\n    }\n  ],\n  "usage" : { "prompt_tokens" : 2, "completion_tokens" : 2, "total_tokens" : 4 }\n}\n),
    tools => q({"choices":[{"message":{"content":null,"tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}),
    tools_text => q({"choices":[{"message":{"content":"text too","tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"{}"}}]},"finish_reason":"stop"}]}),
    two => q({"choices":[{"message":{"content":"one"},"finish_reason":"stop"},{"message":{"content":"two"},"finish_reason":"stop"}]}),
    error => q({"error":{"message":"no"},"choices":[{"message":{"content":"x"},"finish_reason":"stop"}]}),
    null => q({"choices":[{"message":{"content":null},"finish_reason":"stop"}]}),
    filter => q({"choices":[{"message":{"content":"cut"},"finish_reason":"content_filter"}]}),
    garbage => q({"choices":[{"message":{"content":"trailing"},"finish_reason":"stop"}]} x),
    badnum => q({"choices":[{"message":{"content":"bad number"},"finish_reason":"stop"}],"created":01}),
    badlit => q({"choices":[{"message":{"content":"bad literal"},"finish_reason":"stop"}],"x":nul}),
    badutf8 => qq({"choices":[{"message":{"content":"bad utf8"},"finish_reason":"stop"}],"x":"\xff\xfe"}),
    dup => q({"choices":[{"message":{"content":"first","content":"second"},"finish_reason":"stop"}]}),
    logprobs => q({"id":"l","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"logprobs":{"content":[{"token":"Hi","logprob":-0.25,"bytes":[72,105],"top_logprobs":[]}]},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}),
    # streams (x-fixture: sse...)
    sse_ok => join('', map { "data: $_\n\n" }
        q({"id":"s","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}),
        q({"id":"s","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"streamed answer"},"finish_reason":null}]}),
        q({"id":"s","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}),
        '[DONE]'),
    sse_cut => join('', map { "data: $_\n\n" }
        q({"id":"s","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}),
        q({"id":"s","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"half an ans"},"finish_reason":null}]})),
    sse_refusal => join('', map { "data: $_\n\n" }
        q({"id":"s","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":null,"refusal":""},"finish_reason":null}]}),
        q({"id":"s","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"refusal":"I can not help with that."},"finish_reason":null}]}),
        q({"id":"s","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}),
        '[DONE]'),
);

my $map = join '', map {
    my $v = $answers{$_};
    # nginx reads \\, \", \n, \t in a quoted string: every backslash doubled
    $v =~ s/\\/\\\\/g;
    $v =~ s/'/\\'/g;
    "        $_ '$v';\n"
} sort keys %answers;

my $gw = Smartflow::Audit->new(name => 'cache-answers', workers => 1,
    http => "    smartflow_provider fixture type=openai"
          . " upstream=http://127.0.0.1:$port path=/fixture key=sk-fixture;\n"
          . "    smartflow_route fx-model fixture;\n"
          . "    smartflow_cache_zone metacache 8m entries=100;\n"
          . "    smartflow_cache metacache;\n"
          . "    map \$http_x_fixture \$fixture {\n$map    }\n",
    server => "        location = /fixture/chat/completions {\n"
            . "            smartflow_cache off;\n"
            . "            if (\$http_x_fixture ~ ^sse) {\n"
            . "                rewrite ^ /fixture-sse last;\n"
            . "            }\n"
            . "            default_type application/json;\n"
            . "            return 200 \$fixture;\n"
            . "        }\n"
            . "        location = /fixture-sse {\n"
            . "            smartflow_cache off;\n"
            . "            default_type text/event-stream;\n"
            . "            return 200 \$fixture;\n"
            . "        }\n"
            . "        location = /anthropic/v1/messages {\n"
            . "            smartflow_api messages;\n"
            . "            include $conf/smartflow_proxy.conf;\n"
            . "        }\n"
            . "        include $conf/smartflow_cache.conf;\n");
$gw->setup->start;

my $json = JSON::PP->new->utf8;

sub ask {
    my ($name, $q) = @_;
    my $r = $gw->chat($q, model => 'fx-model',
                      headers => { 'x-fixture' => $name });
    my $b = eval { $json->decode($r->{content}) };
    return ($r, $b);
}

my $n = 0;
for my $name (qw(escapes surrogate utf8 pretty dup)) {
    my $q = "Question number " . ++$n . " about $name?";
    my ($r, $b) = ask($name, $q);
    is $r->{status}, 200, "$name: answered";
    is $r->{headers}{'x-smartflow-cache'}, 'MISS', "$name: a miss";
    my $text = $b->{choices}[0]{message}{content};
    ok defined $text && length $text, "$name: the provider's text";

    my ($r2, $b2) = ask('null', $q);
    is $r2->{headers}{'x-smartflow-cache'}, 'HIT', "$name: stored, a hit";
    is $b2->{choices}[0]{message}{content}, $text,
       "$name: the hit gives the same text";
    is $b2->{choices}[0]{finish_reason}, $b->{choices}[0]{finish_reason},
       "$name: and the same finish reason";
}

my ($r, $b) = ask('escapes', 'Question number 1 about escapes?');
is $b->{choices}[0]{message}{content},
   "caf\x{e9} \"quoted\" back\\slash / line\nnext \x{4e2d}\ttab A",
   'the escapes undone as JSON says';
($r, $b) = ask('surrogate', 'Question number 2 about surrogate?');
is $b->{choices}[0]{message}{content}, "smile \x{1f600} ok",
   'a surrogate pair read as one character';
($r, $b) = ask('dup', 'Question number 5 about dup?');
is $b->{choices}[0]{message}{content}, 'second',
   'a member given twice: the last one, as the client read it';

for my $name (qw(tools tools_text two error null filter garbage badnum
                 badlit badutf8))
{
    my $q = "Question number " . ++$n . " about $name?";
    my ($r1) = ask($name, $q);
    is $r1->{headers}{'x-smartflow-cache'}, 'MISS', "$name: a miss";
    my ($r2) = ask('utf8', $q);
    is $r2->{headers}{'x-smartflow-cache'}, 'MISS',
       "$name: not stored, a miss again";
}

# streams: an answer is stored and served; a refusal is not stored
{
    my $q = 'Question number ' . ++$n . ' about a stream?';
    my $r1 = $gw->chat($q, model => 'fx-model', stream => 1,
                       headers => { 'x-fixture' => 'sse_ok' });
    is $r1->{headers}{'x-smartflow-cache'}, 'MISS', 'sse_ok: a miss';
    like $r1->{content}, qr/streamed answer/, 'sse_ok: streamed';
    my $r2 = $gw->chat($q, model => 'fx-model', stream => 1,
                       headers => { 'x-fixture' => 'sse_refusal' });
    is $r2->{headers}{'x-smartflow-cache'}, 'HIT', 'sse_ok: stored, a hit';
    like $r2->{content}, qr/"content":"streamed answer"/,
         'sse_ok: the hit streams the text';

    $q = 'Question number ' . ++$n . ' about a refusal?';
    $r1 = $gw->chat($q, model => 'fx-model', stream => 1,
                    headers => { 'x-fixture' => 'sse_refusal' });
    is $r1->{headers}{'x-smartflow-cache'}, 'MISS', 'sse_refusal: a miss';
    like $r1->{content}, qr/I can not help with that/,
         'sse_refusal: the refusal reaches the client';
    $r2 = $gw->chat($q, model => 'fx-model', stream => 1,
                    headers => { 'x-fixture' => 'sse_ok' });
    is $r2->{headers}{'x-smartflow-cache'}, 'MISS',
       'sse_refusal: not stored, a miss again';
}

# an Anthropic client of an OpenAI-format provider whose stream ends
# cleanly with neither a finish_reason nor [DONE]: cut, said so, not stored
{
    my $q = 'Question number ' . ++$n . ' about a cut stream?';
    my $body = $json->encode({ model => 'fx-model', max_tokens => 64,
        stream => JSON::PP::true,
        messages => [ { role => 'user', content => $q } ] });
    my $post = sub {
        $gw->http->post("http://127.0.0.1:$port/anthropic/v1/messages",
            { headers => { 'x-api-key' => $Smartflow::Audit::MasterKey,
                           'anthropic-version' => '2023-06-01',
                           'Content-Type' => 'application/json',
                           'x-fixture' => $_[0] },
              content => $body });
    };
    my $r1 = $post->('sse_cut');
    is $r1->{status}, 200, 'sse_cut: the stream starts';
    like $r1->{content}, qr/half an ans/, 'sse_cut: its text arrives';
    like $r1->{content}, qr/event: error\ndata: \{"type":"error"/,
         'sse_cut: and then an error event';
    unlike $r1->{content}, qr/message_stop|end_turn/,
           'sse_cut: never a whole answer\'s end';
    my $r2 = $post->('sse_ok');
    is $r2->{headers}{'x-smartflow-cache'}, 'MISS',
       'sse_cut: not stored, a miss again';
}

# the tokens' log probabilities asked for: an entry keeps the text only,
# so such a request is neither served from the cache nor stored
{
    my $q = 'Question number ' . ++$n . ' about log probabilities?';
    my $post = sub {
        my $r = $gw->http->post("http://127.0.0.1:$port/v1/chat/completions",
            { headers => { Authorization =>
                               "Bearer $Smartflow::Audit::MasterKey",
                           'Content-Type' => 'application/json',
                           'x-fixture' => 'logprobs' },
              content => $json->encode({ model => 'fx-model',
                  logprobs => JSON::PP::true,
                  messages => [ { role => 'user', content => $q } ] }) });
        return ($r, eval { $json->decode($r->{content}) });
    };
    for my $i (1, 2) {
        my ($r, $b) = $post->();
        is $r->{status}, 200, "logprobs, request $i: answered";
        is $r->{headers}{'x-smartflow-cache'}, 'BYPASS',
           "logprobs, request $i: not looked up";
        is $b->{choices}[0]{logprobs}{content}[0]{token}, 'Hi',
           "logprobs, request $i: the provider's log probabilities";
    }
}

$gw->stop;
unlike scalar(`cat $gw->{root}/logs/error.log`),
       qr/\[(?:alert|crit|emerg)\]|exited on signal/, 'no crash';

done_testing;
