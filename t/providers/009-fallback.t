# Models with several deployments (the same pattern on several
# smartflow_route lines): an attempt that fails with 429, 5xx (529
# included), a timeout or a refused connection goes to the next deployment
# of the plan, across formats; the last attempt's answer reaches the client
# as it is; a provider's other errors (400 ...) are not retried.  The
# response header x-smartflow-deployment names the deployment that
# answered.  Also: smartflow_max_attempts, the shared circuit breaker
# (smartflow_breaker) and what /health says of it, the balancers
# (weighted, least_in_flight) and x-smartflow-provider.
#
# Every route here has upstream models of its own, so that each deployment
# has its own breaker slot and its own counters in /health.  Answers are
# checked through view(): one line per answer ("chat.completion" or
# "message" and its text), an error body as it is, and for /health one line
# per deployment of the models named.  The mock fails a deployment whose
# upstream model is named mock-error-NNN, delays one named mock-slow-NNN;
# "spare" deployments answer from a canned response, whatever the
# x-mock-* request headers ask of the mock.

use lib 't/lib';
use Smartflow::Conf;
use Smartflow::Mock;
use IO::Socket::INET;
use JSON::PP ();
use Test::Nginx::Socket 'no_plan';
use Smartflow::Blocks;
use Smartflow::SSE;

$ENV{TEST_NGINX_FIXTURE_PORT} ||= 1988;

# The http{} configuration, with the directives a block adds ahead of the
# providers (smartflow_breaker, smartflow_balance, smartflow_max_attempts).
sub http_config {
    my $extra = join '', map { "    $_\n" } @_;

    return <<"_EOC_";
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_zone smartflow 1m;
$extra
    upstream sf_mock {
        server 127.0.0.1:\$TEST_NGINX_MOCK_PORT;
        keepalive 8;
    }

    upstream sf_fixture {
        server 127.0.0.1:\$TEST_NGINX_FIXTURE_PORT;
    }

    # nothing listens there: every connection is refused
    upstream sf_down {
        server 127.0.0.1:1;
    }

    smartflow_provider openai type=openai upstream=http://sf_mock
                       key=sk-oai-provider-key;
    smartflow_provider anthropic type=anthropic upstream=http://sf_mock
                       key=sk-ant-provider-key;
    smartflow_provider gemini type=gemini upstream=http://sf_mock
                       key=gm-provider-key;
    smartflow_provider down type=openai upstream=http://sf_down
                       key=sk-oai-provider-key;
    smartflow_provider spare type=openai upstream=http://sf_fixture
                       path=/spare/v1 key=sk-oai-provider-key;

    # a refused connection
    smartflow_route down-first down model=gpt-down;
    smartflow_route down-first gemini model=gemini-fb-down fallback;

    # a 429
    smartflow_route limited openai model=mock-error-429-lim;
    smartflow_route limited gemini model=gemini-fb-lim fallback;

    # 5xx from a Gemini deployment
    smartflow_route gem-500 gemini model=mock-error-500-g;
    smartflow_route gem-500 anthropic model=claude-fb-500 fallback;
    smartflow_route gem-502 gemini model=mock-error-502-g;
    smartflow_route gem-502 anthropic model=claude-fb-502 fallback;
    smartflow_route gem-503 gemini model=mock-error-503-g;
    smartflow_route gem-503 anthropic model=claude-fb-503 fallback;
    smartflow_route gem-504 gemini model=mock-error-504-g;
    smartflow_route gem-504 anthropic model=claude-fb-504 fallback;

    # 529 from an Anthropic deployment
    smartflow_route overloaded anthropic model=mock-error-529-o;
    smartflow_route overloaded gemini model=gemini-fb-529 fallback;

    # no answer within the deployment's timeout
    smartflow_route slow openai model=mock-slow-2000-t timeout=300ms;
    smartflow_route slow gemini model=gemini-fb-slow fallback;

    # three deployments, the first two failing
    smartflow_route capped openai model=mock-error-500-c;
    smartflow_route capped gemini model=mock-error-503-c fallback;
    smartflow_route capped anthropic model=claude-never-c fallback;

    smartflow_route chain openai model=mock-error-500-ch;
    smartflow_route chain anthropic model=mock-error-529-ch fallback;
    smartflow_route chain gemini model=gemini-fb-ch fallback;

    # every deployment failing
    smartflow_route all-fail-oa gemini model=mock-error-503-f;
    smartflow_route all-fail-oa openai model=mock-error-500-f fallback;
    smartflow_route all-fail-an openai model=mock-error-502-f;
    smartflow_route all-fail-an anthropic model=mock-error-529-f fallback;
    smartflow_route all-fail-3 openai model=mock-error-500-t3;
    smartflow_route all-fail-3 anthropic model=mock-error-529-t3 fallback;
    smartflow_route all-fail-3 gemini model=mock-error-503-t3 fallback;

    # provider errors that are not the deployment's failure
    smartflow_route bad-oa openai model=mock-error-400-b;
    smartflow_route bad-oa gemini model=gemini-fb-bad fallback;
    smartflow_route bad-an anthropic model=mock-error-400-b;
    smartflow_route bad-an gemini model=gemini-fb-bad2 fallback;
    smartflow_route denied-oa openai model=mock-error-401-d;
    smartflow_route denied-oa gemini model=gemini-fb-den fallback;
    smartflow_route denied-gm gemini model=mock-error-403-d;
    smartflow_route denied-gm openai model=gpt-fb-den fallback;

    # across formats, each way
    smartflow_route oa-gm openai model=mock-error-503-x1;
    smartflow_route oa-gm gemini model=gemini-x1 fallback;
    smartflow_route gm-an gemini model=mock-error-503-x2;
    smartflow_route gm-an anthropic model=claude-x2 fallback;
    smartflow_route an-gm anthropic model=mock-error-529-x3;
    smartflow_route an-gm gemini model=gemini-x3 fallback;
    smartflow_route gm-oa gemini model=mock-error-500-x4;
    smartflow_route gm-oa openai model=gpt-x4 fallback;

    # the breaker
    smartflow_route brk down model=gpt-brk;
    smartflow_route brk gemini model=gemini-fb-brk fallback;
    smartflow_route rec openai model=gpt-rec;
    smartflow_route rec spare model=gpt-spare-rec fallback;

    # balancing
    smartflow_route wtd openai model=gpt-w3 weight=3;
    smartflow_route wtd gemini model=gemini-w1 weight=1;
    smartflow_route lif openai model=mock-slow-2000-lif;
    smartflow_route lif gemini model=gemini-lif;

    # one deployment per provider type
    smartflow_route trio openai model=gpt-trio;
    smartflow_route trio anthropic model=claude-trio;
    smartflow_route trio gemini model=gemini-trio;
    smartflow_route gemini-only gemini model=gemini-solo;

    server {
        listen 127.0.0.1:\$TEST_NGINX_FIXTURE_PORT;
        default_type application/json;

        location /spare/ {
            return 200 '{"id":"chatcmpl-spare","object":"chat.completion","created":1700000000,"model":"gpt-spare","choices":[{"index":0,"message":{"role":"assistant","content":"spare answer"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}';
        }
    }
_EOC_
}

# The shipped server-level locations (conf/smartflow_locations.conf), their
# nested includes (smartflow_proxy.conf ...) made absolute.

our $Locations = Smartflow::Conf::shipped_locations();
our $HttpConfig = http_config();

Smartflow::Blocks::defaults(http_config => $HttpConfig, config => $Locations,
                            keys => 1);

my $json = JSON::PP->new->utf8->canonical;
my $str = JSON::PP->new->ascii->allow_nonref;

# Requests, as a --- request eval array wants them.
sub chat {
    my ($model, %o) = @_;
    my $body = '{"model":"' . $model . '"'
               . ($o{stream} ? ',"stream":true' : '')
               . ($o{usage} ? ',"stream_options":{"include_usage":true}' : '')
               . ',"messages":[{"role":"user","content":"hi"}]}';
    return "POST /v1/chat/completions\n$body";
}

sub message {
    my ($model, %o) = @_;
    my $body = '{"model":"' . $model . '","max_tokens":16'
               . ($o{stream} ? ',"stream":true' : '')
               . ',"messages":[{"role":"user","content":"hi"}]}';
    return "POST /anthropic/v1/messages\n$body";
}

# The same request, sent only after a pause.
sub later {
    my ($secs, $req) = @_;
    return [{ value => $req, delay_before => $secs }];
}

# The lines of nginx's error log that say a connection was refused.
sub connect_errors {
    open my $fh, '<', $Test::Nginx::Util::ErrLogFile or return 0;
    my $n = grep { /connect\(\) failed \(111: Connection refused\)/ } <$fh>;
    close $fh;
    return $n;
}

# What a client sees of an answer, in one line; an error body as it is;
# /health as one line per deployment of the models named.  With
# connect_errors, each answer also tells how many refused connections the
# error log holds so far.
sub view {
    my %o = @_;
    my %models = map { $_ => 1 } @{ $o{models} || [] };

    return sub {
        my $body = shift;
        my $d = eval { $json->decode($body) };
        return $body unless ref $d eq 'HASH';

        if ($d->{deployments}) {
            my $out = '';
            for my $x (@{ $d->{deployments} }) {
                next unless $models{ $x->{model} };
                $out .= "$x->{deployment} $x->{breaker} "
                        . "requests=$x->{requests} failures=$x->{failures} "
                        . "in_flight=$x->{in_flight}\n";
            }
            return $out;
        }

        my $line;
        if (($d->{object} // '') eq 'chat.completion') {
            $line = 'chat.completion '
                    . $str->encode($d->{choices}[0]{message}{content});
        } elsif (($d->{type} // '') eq 'message') {
            $line = 'message ' . $str->encode($d->{content}[0]{text});
        } else {
            return $body;
        }

        $line .= ' | connect errors: ' . connect_errors()
            if $o{connect_errors};

        return "$line\n";
    };
}

# /health of the weighted route: both deployments were used and the one
# of weight 3 more than the one of weight 1.
sub weighted_verdict {
    my ($total) = @_;
    my $answers = view();

    return sub {
        my $body = shift;
        my $d = eval { $json->decode($body) };
        return $answers->($body) unless ref $d eq 'HASH' && $d->{deployments};
        my %n = map { $_->{deployment} => $_->{requests} }
                grep { $_->{model} eq 'wtd' } @{ $d->{deployments} };
        my ($heavy, $light) = ($n{'openai/gpt-w3'} // 0, $n{'gemini/gemini-w1'} // 0);
        return "both used, the heavier more, $total in all\n"
            if $heavy + $light == $total && $light > 0 && $heavy > $light;
        return "weight 3: $heavy, weight 1: $light\n";
    };
}

# A request for the model left in flight in the background: sent whole,
# never read, kept open until the next one or the end.
our $Background;

sub background_request {
    my ($model) = @_;
    close $Background if $Background;
    my $body = '{"model":"' . $model . '","messages":[{"role":"user","content":"busy"}]}';
    my $sock;
    for (1 .. 100) {
        $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $ENV{TEST_NGINX_PORT} || 1984,
                                      Proto => 'tcp', Timeout => 1)
            and last;
        select(undef, undef, undef, 0.05);
    }
    die "cannot connect to nginx: $!\n" unless $sock;
    print {$sock} "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
                  . "Authorization: Bearer sk-smartflow-test-0123456789\r\n"
                  . "Content-Type: application/json\r\n"
                  . "Content-Length: " . length($body) . "\r\n\r\n$body";
    $Background = $sock;
    # long enough for the gateway to route it and send it on
    select(undef, undef, undef, 0.3);
}

run_tests();

__DATA__

=== TEST 1: a primary that refuses connections: the fallback answers and is named
--- request eval
[::chat('down-first'), ::message('down-first')]
--- more_headers eval
[$::OpenAIKey, $::AnthropicKey]
--- error_code eval
[200, 200]
--- response_headers eval
[("x-smartflow-deployment: gemini/gemini-fb-down\nx-mock-path: /v1beta/models/gemini-fb-down:generateContent") x 2]
--- response_body_filters eval
::view()
--- response_body eval
["chat.completion \"mock reply to: hi\"\n", "message \"mock reply to: hi\"\n"]
--- error_log
connect() failed (111: Connection refused) while connecting to upstream
smartflow proxy: deployment "down/gpt-down" answered 502 for model "down-first", trying the next one
--- no_error_log
[alert]



=== TEST 2: a 429: the fallback answers, and a Retry-After rests the deployment that long
The primary failed once only (the breaker opens after 5), yet it is left
alone for the 30 s its provider asked: the second request goes straight
to the fallback.
--- request eval
[::chat('limited'), ::chat('limited'), "GET /health"]
--- more_headers eval
[$::OpenAIKey . "x-mock-retry-after: 30", $::OpenAIKey, $::OpenAIKey]
--- error_code eval
[200, 200, 200]
--- response_headers eval
["x-smartflow-deployment: gemini/gemini-fb-lim\n!retry-after",
 "x-smartflow-deployment: gemini/gemini-fb-lim\n!retry-after", ""]
--- response_body_filters eval
::view(models => ['limited'])
--- response_body eval
["chat.completion \"mock reply to: hi\"\n",
 "chat.completion \"mock reply to: hi\"\n",
 "openai/mock-error-429-lim open requests=1 failures=1 in_flight=0\n"
 . "gemini/gemini-fb-lim closed requests=2 failures=0 in_flight=0\n"]



=== TEST 3: a 429 is logged and falls over
--- request eval
::chat('limited')
--- response_headers
x-smartflow-deployment: gemini/gemini-fb-lim
x-mock-model: gemini-fb-lim
--- error_log
smartflow proxy: deployment "openai/mock-error-429-lim" answered 429 for model "limited", trying the next one



=== TEST 4: 500, 502, 503 and 504 from a Gemini deployment fall over to an Anthropic one
--- request eval
[map { ::chat("gem-$_") } 500, 502, 503, 504]
--- error_code eval
[200, 200, 200, 200]
--- response_headers eval
[map { "x-smartflow-deployment: anthropic/claude-fb-$_\nx-mock-path: /v1/messages" } 500, 502, 503, 504]
--- response_body_filters eval
::view()
--- response_body eval
[("chat.completion \"mock reply to: hi\"\n") x 4]
--- error_log eval
qr/smartflow proxy: deployment "gemini\/mock-error-50[0234]-g" answered 50[0234] for model "gem-50[0234]", trying the next one/



=== TEST 5: 529 from an Anthropic deployment (overloaded) falls over to a Gemini one
--- request eval
[::chat('overloaded'), ::message('overloaded')]
--- more_headers eval
[$::OpenAIKey, $::AnthropicKey]
--- error_code eval
[200, 200]
--- response_headers eval
[("x-smartflow-deployment: gemini/gemini-fb-529") x 2]
--- response_body_filters eval
::view()
--- response_body eval
["chat.completion \"mock reply to: hi\"\n", "message \"mock reply to: hi\"\n"]
--- error_log
smartflow proxy: deployment "anthropic/mock-error-529-o" answered 529 for model "overloaded", trying the next one



=== TEST 6: a deployment that does not answer within its timeout falls over
The slow deployment would answer after 2 s; its timeout is 300 ms, and
the client waits 1.5 s at most.
--- request eval
::chat('slow')
--- timeout: 1.5
--- response_headers
x-smartflow-deployment: gemini/gemini-fb-slow
--- response_body_filters eval
::view()
--- response_body
chat.completion "mock reply to: hi"
--- error_log
smartflow proxy: deployment "openai/mock-slow-2000-t" did not answer within its timeout of 300 ms
smartflow proxy: deployment "openai/mock-slow-2000-t" answered 504 for model "slow", trying the next one



=== TEST 7: smartflow_max_attempts 2: the second deployment's failure reaches the client
The third deployment (which would answer) is never asked; the second's
503 comes in the client's format with its status.
--- http_config eval
::http_config('smartflow_max_attempts 2;')
--- request eval
[::chat('capped'), ::message('capped'), "GET /health"]
--- more_headers eval
[$::OpenAIKey, $::AnthropicKey, $::OpenAIKey]
--- error_code eval
[503, 503, 200]
--- response_headers eval
["x-smartflow-deployment: gemini/mock-error-503-c\nx-mock-path: /v1beta/models/mock-error-503-c:generateContent",
 "x-smartflow-deployment: gemini/mock-error-503-c\nx-mock-path: /v1beta/models/mock-error-503-c:generateContent", ""]
--- response_body_filters eval
::view(models => ['capped'])
--- response_body eval
['{"error":{"message":"The model is overloaded. Please try again later.","type":"api_error","param":null,"code":"overloaded"}}',
 '{"type":"error","error":{"type":"overloaded_error","message":"The model is overloaded. Please try again later."}}',
 "openai/mock-error-500-c closed requests=2 failures=2 in_flight=0\n"
 . "gemini/mock-error-503-c closed requests=2 failures=2 in_flight=0\n"
 . "anthropic/claude-never-c closed requests=0 failures=0 in_flight=0\n"]



=== TEST 8: every deployment failing: the last one's error passes through unchanged
A client of the last provider's format gets its body byte for byte; a
client of the other format gets it translated, with its status.
--- request eval
[::chat('all-fail-oa'), ::message('all-fail-an'), ::chat('all-fail-an')]
--- more_headers eval
[$::OpenAIKey, $::AnthropicKey, $::OpenAIKey]
--- error_code eval
[500, 529, 529]
--- response_headers eval
["x-smartflow-deployment: openai/mock-error-500-f\nContent-Type: application/json\nx-mock-path: /v1/chat/completions",
 "x-smartflow-deployment: anthropic/mock-error-529-f\nContent-Type: application/json\nx-mock-path: /v1/messages",
 "x-smartflow-deployment: anthropic/mock-error-529-f\nContent-Type: application/json"]
--- response_body eval
['{"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}}',
 '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
 '{"error":{"message":"Overloaded","type":"api_error","param":null,"code":"overloaded"}}']
--- error_log
trying the next one



=== TEST 9: three deployments all failing: the third is tried and its error reaches the client
--- request eval
[::chat('all-fail-3'), ::message('all-fail-3')]
--- more_headers eval
[$::OpenAIKey, $::AnthropicKey]
--- error_code eval
[503, 503]
--- response_headers eval
[("x-smartflow-deployment: gemini/mock-error-503-t3\nx-mock-path: /v1beta/models/mock-error-503-t3:generateContent") x 2]
--- response_body eval
['{"error":{"message":"The model is overloaded. Please try again later.","type":"api_error","param":null,"code":"overloaded"}}',
 '{"type":"error","error":{"type":"overloaded_error","message":"The model is overloaded. Please try again later."}}']
--- error_log
smartflow proxy: deployment "openai/mock-error-500-t3" answered 500 for model "all-fail-3", trying the next one
smartflow proxy: deployment "anthropic/mock-error-529-t3" answered 529 for model "all-fail-3", trying the next one



=== TEST 10: across three formats: OpenAI fails, Anthropic fails, Gemini answers
--- request eval
[::chat('chain'), ::message('chain')]
--- more_headers eval
[$::OpenAIKey, $::AnthropicKey]
--- error_code eval
[200, 200]
--- response_headers eval
[("x-smartflow-deployment: gemini/gemini-fb-ch\nx-mock-path: /v1beta/models/gemini-fb-ch:generateContent") x 2]
--- response_body_filters eval
::view()
--- response_body eval
["chat.completion \"mock reply to: hi\"\n", "message \"mock reply to: hi\"\n"]
--- error_log
smartflow proxy: deployment "openai/mock-error-500-ch" answered 500 for model "chain", trying the next one
smartflow proxy: deployment "anthropic/mock-error-529-ch" answered 529 for model "chain", trying the next one



=== TEST 11: a provider's 400 on the first deployment is not retried and passes through unchanged
--- request eval
[::chat('bad-oa'), ::message('bad-an'), "GET /health"]
--- more_headers eval
[$::OpenAIKey, $::AnthropicKey, $::OpenAIKey]
--- error_code eval
[400, 400, 200]
--- response_headers eval
["x-smartflow-deployment: openai/mock-error-400-b\nContent-Type: application/json\nx-mock-path: /v1/chat/completions",
 "x-smartflow-deployment: anthropic/mock-error-400-b\nContent-Type: application/json\nx-mock-path: /v1/messages", ""]
--- response_body_filters eval
::view(models => ['bad-oa', 'bad-an'])
--- response_body eval
['{"error":{"message":"The request was invalid.","type":"invalid_request_error","param":null,"code":null}}',
 '{"type":"error","error":{"type":"invalid_request_error","message":"The request was invalid."}}',
 "openai/mock-error-400-b closed requests=1 failures=0 in_flight=0\n"
 . "gemini/gemini-fb-bad closed requests=0 failures=0 in_flight=0\n"
 . "anthropic/mock-error-400-b closed requests=1 failures=0 in_flight=0\n"
 . "gemini/gemini-fb-bad2 closed requests=0 failures=0 in_flight=0\n"]
--- no_error_log
trying the next one



=== TEST 12: a provider's 401 and 403 on a model with fallbacks pass through like its 400
Not retried, and the provider's own error (translated only when the
formats differ), not the gateway's words for a client without a key.
--- request eval
[::chat('denied-oa'), ::chat('denied-gm')]
--- error_code eval
[401, 403]
--- response_headers eval
["x-smartflow-deployment: openai/mock-error-401-d\nx-mock-path: /v1/chat/completions",
 "x-smartflow-deployment: gemini/mock-error-403-d\nx-mock-path: /v1beta/models/mock-error-403-d:generateContent"]
--- response_body eval
['{"error":{"message":"Incorrect API key provided. You can find your API key in your account settings.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}',
 '{"error":{"message":"The caller does not have permission.","type":"permission_error","param":null,"code":null}}']
--- no_error_log
trying the next one



=== TEST 13: fallbacks across formats, each way, for both clients
--- request eval
[map { (::chat($_), ::message($_)) } qw(oa-gm gm-an an-gm gm-oa)]
--- more_headers eval
[($::OpenAIKey, $::AnthropicKey) x 4]
--- error_code eval
[(200) x 8]
--- response_headers eval
[map { ("x-smartflow-deployment: $_") x 2 }
 qw(gemini/gemini-x1 anthropic/claude-x2 gemini/gemini-x3 openai/gpt-x4)]
--- response_body_filters eval
::view()
--- response_body eval
[("chat.completion \"mock reply to: hi\"\n", "message \"mock reply to: hi\"\n") x 4]
--- error_log
trying the next one



=== TEST 14: streams through a fallback: an OpenAI client
Translated from Gemini (no usage chunk unless asked for), or passed
through from OpenAI with the usage the gateway asked for hidden.
--- request eval
[::chat('oa-gm', stream => 1), ::chat('oa-gm', stream => 1, usage => 1),
 ::chat('gm-oa', stream => 1)]
--- error_code eval
[200, 200, 200]
--- response_headers eval
["x-smartflow-deployment: gemini/gemini-x1\nX-Accel-Buffering: no\nContent-Type: text/event-stream",
 "x-smartflow-deployment: gemini/gemini-x1\nX-Accel-Buffering: no\nContent-Type: text/event-stream",
 "x-smartflow-deployment: openai/gpt-x4\nX-Accel-Buffering: no"]
--- response_body_filters eval
\&::openai_sse
--- response_body eval
["chat.completion.chunk oa-gm\nrole assistant\ncontent \"mock\"\ncontent \" reply\"\ncontent \" to:\"\ncontent \" hi\"\nfinish stop\n[DONE]\n",
 "chat.completion.chunk oa-gm\nrole assistant\ncontent \"mock\"\ncontent \" reply\"\ncontent \" to:\"\ncontent \" hi\"\nfinish stop\nusage 1 4 5\n[DONE]\n",
 "chat.completion.chunk gpt-x4\nrole assistant\ncontent \"mock\"\ncontent \" reply\"\ncontent \" to:\"\ncontent \" hi\"\nfinish stop\n[DONE]\n"]
--- error_log
trying the next one
--- no_error_log
broke before its end



=== TEST 15: streams through a fallback: an Anthropic client
--- request eval
[::message('an-gm', stream => 1), ::message('gm-an', stream => 1)]
--- error_code eval
[200, 200]
--- response_headers eval
["x-smartflow-deployment: gemini/gemini-x3\nX-Accel-Buffering: no\nContent-Type: text/event-stream",
 "x-smartflow-deployment: anthropic/claude-x2\nX-Accel-Buffering: no"]
--- response_body_filters eval
\&::anthropic_sse
--- response_body eval
["message_start msg_chatcmpl-* message assistant an-gm input_tokens=0 output_tokens=0\nping\nstart 0 text\ntext 0 \"mock\"\ntext 0 \" reply\"\ntext 0 \" to:\"\ntext 0 \" hi\"\nstop 0\nmessage_delta end_turn input_tokens=1 output_tokens=4\nmessage_stop\n",
 "message_start msg_01* message assistant claude-x2 input_tokens=1 output_tokens=1\nstart 0 text\nping\ntext 0 \"mock\"\ntext 0 \" reply\"\ntext 0 \" to:\"\ntext 0 \" hi\"\nstop 0\nmessage_delta end_turn input_tokens=- output_tokens=4\nmessage_stop\n"]
--- error_log
trying the next one



=== TEST 16: the breaker: a deployment that refused twice is left alone until its cool-down
After two refused connections the breaker opens: the third request goes
straight to the fallback (no connection tried, none refused).  After the
cool-down one request probes it (refused again: open again).
--- http_config eval
::http_config('smartflow_breaker failures=2 cooldown=2s;')
--- request eval
[::chat('brk'), ::chat('brk'), ::chat('brk'), "GET /health",
 ::later(2.5, ::chat('brk')), ::chat('brk'), "GET /health"]
--- timeout: 5
--- error_code eval
[(200) x 7]
--- response_headers eval
[("x-smartflow-deployment: gemini/gemini-fb-brk") x 3, "",
 ("x-smartflow-deployment: gemini/gemini-fb-brk") x 2, ""]
--- response_body_filters eval
::view(models => ['brk'], connect_errors => 1)
--- response_body eval
["chat.completion \"mock reply to: hi\" | connect errors: 1\n",
 "chat.completion \"mock reply to: hi\" | connect errors: 2\n",
 "chat.completion \"mock reply to: hi\" | connect errors: 2\n",
 "down/gpt-brk open requests=2 failures=2 in_flight=0\n"
 . "gemini/gemini-fb-brk closed requests=3 failures=0 in_flight=0\n",
 "chat.completion \"mock reply to: hi\" | connect errors: 3\n",
 "chat.completion \"mock reply to: hi\" | connect errors: 3\n",
 "down/gpt-brk open requests=3 failures=3 in_flight=0\n"
 . "gemini/gemini-fb-brk closed requests=5 failures=0 in_flight=0\n"]



=== TEST 17: the breaker: open, half-open after the cool-down, closed by a good probe
The primary fails twice (x-mock-status: 500; the spare fallback answers
from a canned response), the third request finds it open, /health says
half-open once the cool-down is over, and the next request's probe
succeeds: closed again, the primary answers.
--- http_config eval
::http_config('smartflow_breaker failures=2 cooldown=2s;')
--- request eval
[::chat('rec'), ::chat('rec'), ::chat('rec'), "GET /health",
 ::later(2.5, "GET /health"), ::chat('rec'), "GET /health", ::chat('rec')]
--- more_headers eval
[($::OpenAIKey . "x-mock-status: 500") x 2, ($::OpenAIKey) x 6]
--- timeout: 5
--- error_code eval
[(200) x 8]
--- response_headers eval
[("x-smartflow-deployment: spare/gpt-spare-rec") x 3, "", "",
 "x-smartflow-deployment: openai/gpt-rec", "", "x-smartflow-deployment: openai/gpt-rec"]
--- response_body_filters eval
::view(models => ['rec'])
--- response_body eval
[("chat.completion \"spare answer\"\n") x 3,
 "openai/gpt-rec open requests=2 failures=2 in_flight=0\n"
 . "spare/gpt-spare-rec closed requests=3 failures=0 in_flight=0\n",
 "openai/gpt-rec half-open requests=2 failures=2 in_flight=0\n"
 . "spare/gpt-spare-rec closed requests=3 failures=0 in_flight=0\n",
 "chat.completion \"mock reply to: hi\"\n",
 "openai/gpt-rec closed requests=3 failures=2 in_flight=0\n"
 . "spare/gpt-spare-rec closed requests=3 failures=0 in_flight=0\n",
 "chat.completion \"mock reply to: hi\"\n"]



=== TEST 18: weighted balancing: weights 3 and 1 share 64 requests, the heavier more
--- http_config eval
::http_config('smartflow_balance weighted;')
--- request eval
[(::chat('wtd')) x 64, "GET /health"]
--- error_code eval
[(200) x 65]
--- response_headers_like eval
[("x-smartflow-deployment: (?:openai/gpt-w3|gemini/gemini-w1)") x 64, ""]
--- response_body_filters eval
::weighted_verdict(64)
--- response_body eval
[("chat.completion \"mock reply to: hi\"\n") x 64,
 "both used, the heavier more, 64 in all\n"]
--- no_error_log
[error]



=== TEST 19: least_in_flight: with one request in flight on the first deployment, the idle one is picked
A request left in flight in the background (the first deployment answers
after 2 s, and ties go to the first) keeps that deployment busy.
--- http_config eval
::http_config('smartflow_balance least_in_flight;')
--- init
::background_request('lif');
--- request eval
[::chat('lif'), "GET /health", ::chat('lif')]
--- timeout: 1.5
--- error_code eval
[200, 200, 200]
--- response_headers eval
["x-smartflow-deployment: gemini/gemini-lif", "", "x-smartflow-deployment: gemini/gemini-lif"]
--- response_body_filters eval
::view(models => ['lif'])
--- response_body eval
["chat.completion \"mock reply to: hi\"\n",
 "openai/mock-slow-2000-lif closed requests=0 failures=0 in_flight=1\n"
 . "gemini/gemini-lif closed requests=1 failures=0 in_flight=0\n",
 "chat.completion \"mock reply to: hi\"\n"]



=== TEST 20: x-smartflow-provider keeps only that provider's deployments
Any case; a fallback deployment alone in the plan is asked first (no
refused connection to the primary).
--- request eval
[(::chat('trio')) x 4, ::message('trio'), ::chat('down-first'), ::chat('gemini-only')]
--- more_headers eval
[map({ $::OpenAIKey . "x-smartflow-provider: $_" } qw(openai anthropic gemini GEMINI)),
 $::AnthropicKey . "x-smartflow-provider: openai",
 $::OpenAIKey . "x-smartflow-provider: gemini",
 $::OpenAIKey . "x-smartflow-provider: gemini"]
--- error_code eval
[(200) x 7]
--- response_headers eval
["x-smartflow-deployment: openai/gpt-trio\nx-mock-path: /v1/chat/completions",
 "x-smartflow-deployment: anthropic/claude-trio\nx-mock-path: /v1/messages",
 "x-smartflow-deployment: gemini/gemini-trio\nx-mock-path: /v1beta/models/gemini-trio:generateContent",
 "x-smartflow-deployment: gemini/gemini-trio",
 "x-smartflow-deployment: openai/gpt-trio\nx-mock-path: /v1/chat/completions",
 "x-smartflow-deployment: gemini/gemini-fb-down",
 "x-smartflow-deployment: gemini/gemini-solo"]
--- response_body_filters eval
::view()
--- response_body eval
[("chat.completion \"mock reply to: hi\"\n") x 4, "message \"mock reply to: hi\"\n",
 ("chat.completion \"mock reply to: hi\"\n") x 2]
--- no_error_log
connect() failed
trying the next one
[error]



=== TEST 21: a provider the model has no deployment on is 400 provider_not_available
--- request eval
[::chat('trio'), ::message('down-first'), ::chat('gemini-only')]
--- more_headers eval
[$::OpenAIKey . "x-smartflow-provider: mistral",
 $::AnthropicKey . "x-smartflow-provider: anthropic",
 $::OpenAIKey . "x-smartflow-provider: openai"]
--- error_code eval
[400, 400, 400]
--- response_headers eval
[("Content-Type: application/json\n!x-smartflow-deployment\n!x-mock-path") x 3]
--- response_body eval
['{"error":{"message":"The model `trio` has no deployment on provider \"mistral\".","type":"invalid_request_error","param":"model","code":"provider_not_available"}}',
 '{"type":"error","error":{"type":"invalid_request_error","message":"The model `down-first` has no deployment on provider \"anthropic\"."}}',
 '{"error":{"message":"The model `gemini-only` has no deployment on provider \"openai\".","type":"invalid_request_error","param":"model","code":"provider_not_available"}}']
--- error_log
provider_not_available
--- no_error_log
connect() failed
