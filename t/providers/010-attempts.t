# What the attempts of a request with several deployments count against
# each deployment: only attempts that were sent are counted (in flight,
# requests, failures); a client that goes away before the answer begins is
# not a deployment's failure; a half-open probe is held by the request
# that sends it, not by every request whose plan names the deployment;
# every attempt smartflow_max_attempts allows (up to 8) is made; an
# answer that cannot be read (a page given for JSON or for a stream, one
# cut short, one not translatable) goes to the next deployment, and the
# client's connection is kept.
#
# Answers are checked through view(): one line per answer, an error body
# as it is, and for /health one line per deployment of the models named.
# The mock fails a deployment whose upstream model is named
# mock-error-NNN, delays one named mock-slow-NNN.

use lib 't/lib';
use Smartflow::Conf;
use Smartflow::Mock;
use IO::Socket::INET;
use POSIX ();
use JSON::PP ();
use Test::Nginx::Socket 'no_plan';
use Smartflow::Blocks;

$ENV{TEST_NGINX_FIXTURE_PORT} ||= 1988;

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

    smartflow_provider openai type=openai upstream=http://sf_mock
                       key=sk-oai-provider-key;
    smartflow_provider anthropic type=anthropic upstream=http://sf_mock
                       key=sk-ant-provider-key;
    smartflow_provider gemini type=gemini upstream=http://sf_mock
                       key=gm-provider-key;

    # a healthy deployment that takes its time
    smartflow_route patient openai model=mock-slow-1500-p;
    smartflow_route patient gemini model=gemini-fb-p fallback;

    # a primary whose probe the client gives up
    smartflow_route hesitant openai model=gpt-hes;
    smartflow_route hesitant gemini model=gemini-fb-hes fallback;

    # a failing primary, a fallback another request probes meanwhile
    smartflow_route busy openai model=mock-error-500-busy;
    smartflow_route busy gemini model=gemini-fb-busy fallback;

    # a stream from the primary
    smartflow_route roomy openai model=gpt-roomy;
    smartflow_route roomy gemini model=gemini-fb-roomy fallback;

    # the fallback cannot serve /v1/completions
    smartflow_route legacy openai model=mock-error-500-l;
    smartflow_route legacy anthropic model=claude-fb-l fallback;

    # a primary that answers late past its timeout, a fallback that waits
    smartflow_route probe openai model=gpt-probe-p timeout=300ms;
    smartflow_route probe openai model=gpt-probe-f fallback;

    # eight deployments, the first seven failing
    smartflow_route eight openai model=mock-error-500-e1;
    smartflow_route eight gemini model=mock-error-503-e2 fallback;
    smartflow_route eight anthropic model=mock-error-529-e3 fallback;
    smartflow_route eight openai model=mock-error-502-e4 fallback;
    smartflow_route eight gemini model=mock-error-500-e5 fallback;
    smartflow_route eight anthropic model=mock-error-503-e6 fallback;
    smartflow_route eight openai model=mock-error-504-e7 fallback;
    smartflow_route eight gemini model=gemini-e8 fallback;
_EOC_
}

# a provider whose answers of 200 are pages, not JSON, for the primary of
# a model of its own
sub paged_config {
    return http_config(@_) . <<'_EOC_';
    upstream sf_paged {
        server 127.0.0.1:$TEST_NGINX_FIXTURE_PORT;
    }

    # the same pages over connections kept alive
    upstream sf_paged_kept {
        server 127.0.0.1:$TEST_NGINX_FIXTURE_PORT;
        keepalive 4;
    }

    server {
        listen 127.0.0.1:$TEST_NGINX_FIXTURE_PORT;
        default_type text/html;

        location / {
            return 200 '<html><body>maintenance</body></html>';
        }

        location /odd/ {
            default_type application/json;
            return 200 '{"object":"chat.completion","id":"odd"}';
        }

        location /costly/ {
            default_type application/json;
            return 200 '{"object":"chat.completion","id":"costly","usage":{"prompt_tokens":900001,"completion_tokens":900002}}';
        }

        # a page far larger than one of the proxy's buffers
        location /big/ {
            error_page 405 =200 /big.html;
            return 405;
        }

        # an answer after blanks
        location /spaced/ {
            default_type application/json;
            return 200 ' \n {"id":"chatcmpl-spaced","object":"chat.completion","model":"gpt-spaced","choices":[{"index":0,"message":{"role":"assistant","content":"after blanks"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}';
        }

        # the mock's answers after line ends, each read on its own
        location /lead/ {
            proxy_pass http://127.0.0.1:$TEST_NGINX_MOCK_PORT/;
            proxy_http_version 1.1;
            proxy_buffering off;
            proxy_set_header x-mock-lead 3;
        }

        # a page after line ends, each read on its own
        location /leadpage/ {
            proxy_pass http://127.0.0.1:$TEST_NGINX_MOCK_PORT/;
            proxy_http_version 1.1;
            proxy_buffering off;
            proxy_set_header x-mock-lead 3;
            proxy_set_header x-mock-page 1;
        }

        # a stream after line ends, slow ones
        location /slowlead/ {
            proxy_pass http://127.0.0.1:$TEST_NGINX_MOCK_PORT/;
            proxy_http_version 1.1;
            proxy_buffering off;
            proxy_set_header x-mock-lead 3;
            proxy_set_header x-mock-chunk-delay-ms 400;
        }

        # the mock's answers, cut mid-body
        location /cut/ {
            proxy_pass http://127.0.0.1:$TEST_NGINX_MOCK_PORT/;
            proxy_http_version 1.1;
            proxy_set_header x-mock-drop body;
        }
    }

    smartflow_provider paged type=openai upstream=http://sf_paged
                       key=sk-oai-provider-key;

    # JSON, but not an answer of its API: it has no choices
    smartflow_provider odd type=openai upstream=http://sf_paged path=/odd
                       key=sk-oai-provider-key;

    smartflow_route unreadable paged model=gpt-paged-u;
    smartflow_route unreadable paged model=gpt-paged-fb-u fallback;

    # an unreadable primary, a fallback that answers
    smartflow_route rescued paged model=gpt-paged-r;
    smartflow_route rescued openai model=gpt-fb-r fallback;

    # a primary whose answer cannot be translated, a fallback that answers
    smartflow_route strange odd model=gpt-odd-s;
    smartflow_route strange openai model=gpt-fb-s fallback;

    # pages over a connection kept alive, a fallback that answers
    smartflow_provider kept type=openai upstream=http://sf_paged_kept
                       key=sk-oai-provider-key;
    smartflow_route steady kept model=gpt-kept-s;
    smartflow_route steady openai model=gpt-fb-k fallback;

    # an answer without choices that claims a vast usage, a fallback
    smartflow_provider costly type=openai upstream=http://sf_paged
                       path=/costly key=sk-oai-provider-key;
    smartflow_route lavish costly model=gpt-costly-l;
    smartflow_route lavish openai model=gpt-fb-l fallback;

    # a page of many buffers, a fallback that answers
    smartflow_provider big type=openai upstream=http://sf_paged_kept
                       path=/big key=sk-oai-provider-key;
    smartflow_route bulky big model=gpt-big-b;
    smartflow_route bulky openai model=gpt-fb-b fallback;

    # pages in the Anthropic API's place, a fallback that answers
    smartflow_provider apaged type=anthropic upstream=http://sf_paged
                       key=sk-ant-provider-key;
    smartflow_route leafed apaged model=claude-paged-l;
    smartflow_route leafed anthropic model=claude-fb-l fallback;

    # an answer after blanks
    smartflow_provider spaced type=openai upstream=http://sf_paged
                       path=/spaced key=sk-oai-provider-key;
    smartflow_route spaced spaced model=gpt-spaced;

    # answers after line ends, each read on its own
    smartflow_provider lead type=openai upstream=http://sf_paged
                       path=/lead/v1 key=sk-oai-provider-key;
    smartflow_route leading lead model=gpt-lead;

    # a page after line ends, a fallback that answers
    smartflow_provider leadpage type=openai upstream=http://sf_paged
                       path=/leadpage/v1 key=sk-oai-provider-key;
    smartflow_route misled leadpage model=gpt-leadpage;
    smartflow_route misled openai model=gpt-fb-ml fallback;

    # a stream whose first bytes come late, a fallback
    smartflow_provider slowlead type=openai upstream=http://sf_paged
                       path=/slowlead/v1 key=sk-oai-provider-key;
    smartflow_route tardy slowlead model=gpt-slowlead;
    smartflow_route tardy openai model=gpt-fb-t fallback;

    # answers cut mid-body, a fallback that answers; or none
    smartflow_provider cut type=openai upstream=http://sf_paged
                       path=/cut/v1 key=sk-oai-provider-key;
    smartflow_route mended cut model=gpt-cut-m;
    smartflow_route mended openai model=gpt-fb-m fallback;
    smartflow_route torn cut model=gpt-cut-t;
    smartflow_route torn cut model=gpt-cut-t2 fallback;
_EOC_
}

# a block's log lines are checked against all its requests together
check_accum_error_log();

our $Locations = Smartflow::Conf::shipped_locations();

Smartflow::Blocks::defaults(http_config => http_config(),
                            config => $Locations, keys => 1);

our $json = JSON::PP->new->utf8->canonical;
my $str = JSON::PP->new->ascii->allow_nonref;

sub chat {
    my ($model, %o) = @_;
    return "POST " . ($o{prefix} // '') . "/v1/chat/completions\n"
           . '{"model":"' . $model . '"'
           . ($o{stream} ? ',"stream":true' : '')
           . ',"messages":[{"role":"user","content":"hi"}]}';
}

# A client location of its own, with settings of its own, beside the
# shipped ones.
sub own_location {
    my ($settings) = @_;

    return $Locations . <<"_EOC_";
location = /own/v1/chat/completions {
    smartflow_api chat;
$settings
    include \$TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
}
_EOC_
}

sub completion {
    my ($model) = @_;
    return "POST /v1/completions\n" . '{"model":"' . $model
           . '","prompt":"hi"}';
}

sub later {
    my ($secs, $req) = @_;
    return [{ value => $req, delay_before => $secs }];
}

sub view {
    my %o = @_;
    my %models = map { $_ => 1 } @{ $o{models} || [] };

    return sub {
        my $body = shift;
        my $d = eval { $json->decode($body) };
        if ($body =~ /^data: /) {
            # a stream: whether it was cut, in the client's format
            return $body =~ /"code":"upstream_stream_broken"/
                   ? "stream cut\n" : "stream whole\n";
        }

        if ($body =~ /^event: /) {
            # an Anthropic stream: whole when it stops, without an error
            return $body =~ /^event: message_stop$/m
                   && $body !~ /^event: error$/m
                   ? "stream whole\n" : "stream cut\n";
        }

        return $body unless ref $d eq 'HASH';

        if ($d->{deployments}) {
            my $out = '';
            for my $x (@{ $d->{providers} }) {
                next unless $o{providers};
                $out .= "$x->{name} $x->{state}\n";
            }
            for my $x (@{ $d->{deployments} }) {
                next unless $models{ $x->{model} };
                $out .= "$x->{deployment} $x->{breaker} "
                        . "requests=$x->{requests} failures=$x->{failures} "
                        . "in_flight=$x->{in_flight}\n";
            }
            return $out;
        }

        if (($d->{type} // '') eq 'message') {
            return 'message '
                   . $str->encode($d->{content}[0]{text}) . "\n";
        }

        if (($d->{object} // '') eq 'chat.completion') {
            return 'chat.completion '
                   . $str->encode($d->{choices}[0]{message}{content}) . "\n";
        }

        return $body;
    };
}

# Requests for the model sent whole and given up by the client after a
# moment, before the deployment answers.
sub abandoned {
    my ($model, $n, $headers) = @_;
    $headers //= '';
    my $body = '{"model":"' . $model . '","messages":[{"role":"user","content":"bye"}]}';

    for (1 .. $n) {
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
                      . "Content-Type: application/json\r\n$headers"
                      . "Content-Length: " . length($body) . "\r\n\r\n$body";
        select(undef, undef, undef, 0.3);
        close $sock;
    }

    # the gateway notices the closed connections
    select(undef, undef, undef, 0.3);
}

# A request answered whole, its answer ignored.
sub answered {
    my ($model, $headers) = @_;
    my $body = '{"model":"' . $model . '","messages":[{"role":"user","content":"hi"}]}';
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                     PeerPort => $ENV{TEST_NGINX_PORT} || 1984,
                                     Proto => 'tcp', Timeout => 5)
        or die "cannot connect to nginx: $!\n";
    print {$sock} "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
                  . "Authorization: Bearer sk-smartflow-test-0123456789\r\n"
                  . "Content-Type: application/json\r\nConnection: close\r\n"
                  . "$headers"
                  . "Content-Length: " . length($body) . "\r\n\r\n$body";
    1 while <$sock>;
    close $sock;
}

# A request sent by a process of its own after a pause, its answer read
# and ignored: it runs beside the block's own requests.
sub soon {
    my ($secs, $model, $headers) = @_;
    my $pid = fork;
    die "fork: $!\n" unless defined $pid;
    return if $pid;
    select(undef, undef, undef, $secs);
    eval { answered($model, $headers) };
    POSIX::_exit(0);
}

run_tests();

__DATA__

=== TEST 1: clients that go away before the answer are not the deployment's failures
Three clients give up on a deployment that answers after 1.5 s: its
breaker (two failures open it) stays closed, its provider up, nothing in
flight; the next client waits and gets the answer from it.
--- http_config eval
::http_config('smartflow_breaker failures=2 cooldown=30s;')
--- init
::abandoned('patient', 3);
--- request eval
["GET /health", ::chat('patient'), "GET /health"]
--- timeout: 5
--- error_code eval
[200, 200, 200]
--- response_headers eval
["", "x-smartflow-deployment: openai/mock-slow-1500-p", ""]
--- response_body_filters eval
::view(models => ['patient'], providers => 1)
--- response_body eval
["openai up\nanthropic up\ngemini up\n"
 . "openai/mock-slow-1500-p closed requests=0 failures=0 in_flight=0\n"
 . "gemini/gemini-fb-p closed requests=0 failures=0 in_flight=0\n",
 "chat.completion \"mock reply to: hi\"\n",
 "openai up\nanthropic up\ngemini up\n"
 . "openai/mock-slow-1500-p closed requests=1 failures=0 in_flight=0\n"
 . "gemini/gemini-fb-p closed requests=0 failures=0 in_flight=0\n"]
--- error_log
smartflow proxy: the client closed the request before deployment "openai/mock-slow-1500-p" answered for model "patient"
--- no_error_log
trying the next one
[alert]



=== TEST 2: a probe whose client goes away is free for the next request
Both deployments fail once (one failure opens the breaker); after the
cool-down a client sends the probe of the primary and gives up before
its answer: the next request probes the primary again, and is answered
by it.
--- http_config eval
::http_config('smartflow_breaker failures=1 cooldown=3s;')
--- init
::answered('hesitant', "x-mock-status: 500\r\n");
select(undef, undef, undef, 3.5);
::abandoned('hesitant', 1, "x-mock-delay-ms: 1000\r\n");
--- request eval
[::chat('hesitant'), "GET /health"]
--- timeout: 5
--- error_code eval
[200, 200]
--- response_headers eval
["x-smartflow-deployment: openai/gpt-hes", ""]
--- response_body_filters eval
::view(models => ['hesitant'])
--- response_body eval
["chat.completion \"mock reply to: hi\"\n",
 "openai/gpt-hes closed requests=2 failures=1 in_flight=0\n"
 . "gemini/gemini-fb-hes half-open requests=1 failures=1 in_flight=0\n"]
--- error_log
smartflow proxy: the client closed the request before deployment "openai/gpt-hes" answered for model "hesitant"
--- no_error_log
[alert]



=== TEST 3: a next deployment that cannot take the request is not counted
The primary fails; the fallback (Anthropic) does not offer
/v1/completions: the client gets that refusal, and the fallback shows
nothing in flight, no request, no failure.
--- request eval
[::completion('legacy'), ::completion('legacy'), "GET /health"]
--- error_code eval
[400, 400, 200]
--- response_body_filters eval
::view(models => ['legacy'])
--- response_body eval
[('{"error":{"message":"The model `legacy` is served by provider \"anthropic\", which does not offer this endpoint.","type":"invalid_request_error","param":"model","code":"unsupported_model"}}') x 2,
 "openai/mock-error-500-l closed requests=2 failures=2 in_flight=0\n"
 . "anthropic/claude-fb-l closed requests=0 failures=0 in_flight=0\n"]
--- error_log
smartflow proxy: deployment "openai/mock-error-500-l" answered 500 for model "legacy", trying the next one
--- no_error_log
[alert]



=== TEST 4: a half-open deployment is probed by the request that tries it
Both deployments fail once (the breaker opens at one failure).  After the
cool-down the primary's probe succeeds; the fallback, never reached, is
still free to probe: the next request, whose primary does not answer in
time, gets its answer from the fallback.
--- http_config eval
::http_config('smartflow_breaker failures=1 cooldown=2s;')
--- request eval
[::chat('probe'), ::later(2.5, ::chat('probe')), ::chat('probe'), "GET /health"]
--- more_headers eval
[$::OpenAIKey . "x-mock-status: 500", $::OpenAIKey,
 $::OpenAIKey . "x-mock-delay-ms: 700", $::OpenAIKey]
--- timeout: 6
--- error_code eval
[500, 200, 200, 200]
--- response_headers eval
["x-smartflow-deployment: openai/gpt-probe-f",
 "x-smartflow-deployment: openai/gpt-probe-p",
 "x-smartflow-deployment: openai/gpt-probe-f", ""]
--- response_body_filters eval
::view(models => ['probe'])
--- response_body eval
['{"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}}',
 "chat.completion \"mock reply to: hi\"\n",
 "chat.completion \"mock reply to: hi\"\n",
 "openai/gpt-probe-p open requests=3 failures=2 in_flight=0\n"
 . "openai/gpt-probe-f closed requests=2 failures=1 in_flight=0\n"]
--- no_error_log
[alert]



=== TEST 5: smartflow_max_attempts 8: the eighth deployment answers
Seven failures, each logged and counted once; the eighth answers.
--- http_config eval
::http_config('smartflow_max_attempts 8;')
--- request eval
[::chat('eight'), "GET /health"]
--- error_code eval
[200, 200]
--- response_headers eval
["x-smartflow-deployment: gemini/gemini-e8", ""]
--- response_body_filters eval
::view(models => ['eight'])
--- response_body eval
["chat.completion \"mock reply to: hi\"\n",
 "openai/mock-error-500-e1 closed requests=1 failures=1 in_flight=0\n"
 . "gemini/mock-error-503-e2 closed requests=1 failures=1 in_flight=0\n"
 . "anthropic/mock-error-529-e3 closed requests=1 failures=1 in_flight=0\n"
 . "openai/mock-error-502-e4 closed requests=1 failures=1 in_flight=0\n"
 . "gemini/mock-error-500-e5 closed requests=1 failures=1 in_flight=0\n"
 . "anthropic/mock-error-503-e6 closed requests=1 failures=1 in_flight=0\n"
 . "openai/mock-error-504-e7 closed requests=1 failures=1 in_flight=0\n"
 . "gemini/gemini-e8 closed requests=1 failures=0 in_flight=0\n"]
--- error_log
smartflow proxy: deployment "openai/mock-error-504-e7" answered 504 for model "eight", trying the next one
--- no_error_log
rewrite or internal redirection cycle
[alert]



=== TEST 6: smartflow_max_attempts 8, all failing: the last one's error reaches the client
--- http_config eval
::http_config('smartflow_max_attempts 8;')
--- request eval
[::chat('eight'), "GET /health"]
--- more_headers eval
["$::OpenAIKey" . "x-mock-status: 503", $::OpenAIKey]
--- error_code eval
[503, 200]
--- response_headers eval
["x-smartflow-deployment: gemini/gemini-e8", ""]
--- response_body_filters eval
::view(models => ['eight'])
--- response_body eval
['{"error":{"message":"The model is overloaded. Please try again later.","type":"api_error","param":null,"code":"overloaded"}}',
 "openai/mock-error-500-e1 closed requests=1 failures=1 in_flight=0\n"
 . "gemini/mock-error-503-e2 closed requests=1 failures=1 in_flight=0\n"
 . "anthropic/mock-error-529-e3 closed requests=1 failures=1 in_flight=0\n"
 . "openai/mock-error-502-e4 closed requests=1 failures=1 in_flight=0\n"
 . "gemini/mock-error-500-e5 closed requests=1 failures=1 in_flight=0\n"
 . "anthropic/mock-error-503-e6 closed requests=1 failures=1 in_flight=0\n"
 . "openai/mock-error-504-e7 closed requests=1 failures=1 in_flight=0\n"
 . "gemini/gemini-e8 closed requests=1 failures=1 in_flight=0\n"]
--- no_error_log
rewrite or internal redirection cycle
[alert]



=== TEST 7: the attempts of a model with several deployments take the client location's proxy_read_timeout
The location gives up on the primary after 300 ms, not the server's
300 s; the primary would answer after 1.5 s: the fallback answers.
--- config eval
::own_location("    proxy_read_timeout 300ms;")
--- request eval
[::chat('patient', prefix => '/own'), "GET /health"]
--- timeout: 5
--- error_code eval
[200, 200]
--- response_headers eval
["x-smartflow-deployment: gemini/gemini-fb-p", ""]
--- response_body_filters eval
::view(models => ['patient'])
--- response_body eval
["chat.completion \"mock reply to: hi\"\n",
 "openai/mock-slow-1500-p closed requests=1 failures=1 in_flight=0\n"
 . "gemini/gemini-fb-p closed requests=1 failures=0 in_flight=0\n"]
--- error_log
while reading response header from upstream
smartflow proxy: deployment "openai/mock-slow-1500-p" answered 504 for model "patient", trying the next one
--- no_error_log
[alert]



=== TEST 8: the attempts of a model with several deployments take the client location's smartflow_stream_max_bytes
--- config eval
::own_location("    smartflow_stream_max_bytes 700;")
--- request eval
[::chat('roomy', prefix => '/own', stream => 1), "GET /health"]
--- more_headers eval
[$::OpenAIKey . "x-mock-chunk-delay-ms: 10\nx-mock-words: 60", $::OpenAIKey]
--- timeout: 5
--- error_code eval
[200, 200]
--- response_headers eval
["x-smartflow-deployment: openai/gpt-roomy", ""]
--- response_body_filters eval
::view(models => ['roomy'])
--- response_body eval
["stream cut\n",
 "openai/gpt-roomy closed requests=1 failures=0 in_flight=0\n"
 . "gemini/gemini-fb-roomy closed requests=0 failures=0 in_flight=0\n"]
--- error_log
smartflow proxy: stream from provider "openai" cut at
--- no_error_log
[alert]



=== TEST 9: a fallback another request is probing meanwhile is skipped
The fallback's breaker cooled down: its probe was free when the request
was planned; another request, sent to it alone (x-smartflow-provider),
takes the probe while the primary fails: the request is not sent to it,
and the client gets a 503 of the gateway's own.  The probe succeeds.
--- http_config eval
::http_config('smartflow_breaker failures=2 cooldown=2s;')
--- init
::answered('busy', "x-smartflow-provider: gemini\r\nx-mock-status: 500\r\n") for 1 .. 2;
select(undef, undef, undef, 2.5);
::soon(0.3, 'busy', "x-smartflow-provider: gemini\r\nx-mock-delay-ms: 1000\r\n");
--- request eval
[::chat('busy'), ::later(1.5, "GET /health")]
--- more_headers eval
[$::OpenAIKey . "x-mock-delay-ms: 700", $::OpenAIKey]
--- timeout: 5
--- error_code eval
[503, 200]
--- response_headers eval
["Content-Type: application/json\n!x-smartflow-deployment", ""]
--- response_body_filters eval
::view(models => ['busy'])
--- response_body eval
['{"error":{"message":"Deployment \"openai/mock-error-500-busy\" of model `busy` failed (status 500) and no other is available now; try again later.","type":"api_error","param":null,"code":"service_unavailable"}}',
 "openai/mock-error-500-busy closed requests=1 failures=1 in_flight=0\n"
 . "gemini/gemini-fb-busy closed requests=3 failures=2 in_flight=0\n"]
--- error_log
smartflow proxy: deployment "gemini/gemini-fb-busy" is being probed by another request, skipped for model "busy"
--- no_error_log
[alert]



=== TEST 10: an answer of 200 that cannot be read is the deployment's failure, the next one is tried
Both deployments answer 200 with a page, not JSON: each is tried, each
gets a failure (one failure opens the breaker), not a success; the
Anthropic client, whose answer is translated, gets a 502 in its format
once none is left.
--- http_config eval
::paged_config('smartflow_breaker failures=1 cooldown=30s;')
--- request eval
["POST /anthropic/v1/messages\n"
 . '{"model":"unreadable","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}',
 "GET /health"]
--- more_headers eval
[$::AnthropicKey, $::OpenAIKey]
--- error_code eval
[502, 200]
--- response_headers eval
["Content-Type: application/json\nx-smartflow-deployment: paged/gpt-paged-fb-u", ""]
--- response_body_filters eval
::view(models => ['unreadable'])
--- response_body eval
['{"type":"error","error":{"type":"api_error","message":"The provider\'s answer could not be read."}}',
 "paged/gpt-paged-u open requests=1 failures=1 in_flight=0\n"
 . "paged/gpt-paged-fb-u open requests=1 failures=1 in_flight=0\n"]
--- error_log
smartflow proxy: provider "paged" answered 200 with a body that is not JSON
smartflow proxy: deployment "paged/gpt-paged-u" gave an answer that could not be read for model "unreadable", trying the next one
--- no_error_log
answered 502 for model "unreadable"
[alert]



=== TEST 11: a fallback's refusal is in the client location's audit log
The client's location alone keeps an audit log.  The primary fails and
the fallback does not offer /v1/completions: the refusal, sent from
@smartflow_next, is recorded in that log.
--- config eval
$::Locations . <<'_EOC_';
location = /own/v1/completions {
    smartflow_api completions;
    smartflow_audit_log logs/own-audit.log;
    include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
}

location = /own-audit {
    default_type text/plain;
    alias $TEST_NGINX_SERVER_ROOT/logs/own-audit.log;
}
_EOC_
--- request eval
["POST /own/v1/completions\n" . '{"model":"legacy","prompt":"hi"}',
 "GET /own-audit"]
--- more_headers eval
[$::OpenAIKey, ""]
--- error_code eval
[400, 200]
--- response_body_filters eval
sub {
    my $b = shift;
    return $b unless $b =~ /\A\{"time"/;
    return CORE::join '', map { my $r = $::json->decode($_); "$r->{status} $r->{model}\n" } split /\n/, $b;
}
--- response_body eval
['{"error":{"message":"The model `legacy` is served by provider \"anthropic\", which does not offer this endpoint.","type":"invalid_request_error","param":"model","code":"unsupported_model"}}',
 "400 legacy\n"]
--- no_error_log
[alert]



=== TEST 12: an answer of 200 that cannot be read goes on to the fallback
The primary answers 200 with a page: the fallback answers the Anthropic
client, with nothing of the page's headers; the primary has the failure.
--- http_config eval
::paged_config('smartflow_breaker failures=1 cooldown=30s;')
--- request eval
["POST /anthropic/v1/messages\n"
 . '{"model":"rescued","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}',
 "GET /health"]
--- more_headers eval
[$::AnthropicKey, $::OpenAIKey]
--- error_code eval
[200, 200]
--- response_headers eval
["Content-Type: application/json\nx-smartflow-deployment: openai/gpt-fb-r", ""]
--- response_body_filters eval
::view(models => ['rescued'])
--- response_body eval
["message \"mock reply to: hi\"\n",
 "paged/gpt-paged-r open requests=1 failures=1 in_flight=0\n"
 . "openai/gpt-fb-r closed requests=1 failures=0 in_flight=0\n"]
--- error_log
smartflow proxy: provider "paged" answered 200 with a body that is not JSON
smartflow proxy: deployment "paged/gpt-paged-r" gave an answer that could not be read for model "rescued", trying the next one
--- no_error_log
[alert]



=== TEST 13: an answer that cannot be translated goes on to the fallback
The primary answers 200 with JSON that has no choices: the Anthropic
client gets the fallback's answer, the primary the failure.
--- http_config eval
::paged_config('smartflow_breaker failures=1 cooldown=30s;')
--- request eval
["POST /anthropic/v1/messages\n"
 . '{"model":"strange","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}',
 "GET /health"]
--- more_headers eval
[$::AnthropicKey, $::OpenAIKey]
--- error_code eval
[200, 200]
--- response_headers eval
["x-smartflow-deployment: openai/gpt-fb-s", ""]
--- response_body_filters eval
::view(models => ['strange'])
--- response_body eval
["message \"mock reply to: hi\"\n",
 "odd/gpt-odd-s open requests=1 failures=1 in_flight=0\n"
 . "openai/gpt-fb-s closed requests=1 failures=0 in_flight=0\n"]
--- error_log
smartflow proxy: translating the answer of provider "odd" failed: the provider's response has no choices
smartflow proxy: deployment "odd/gpt-odd-s" gave an answer that could not be read for model "strange", trying the next one
--- no_error_log
[alert]



=== TEST 14: an answer cut before its end goes on to the fallback
The primary's answer (translated for the Anthropic client) breaks off
mid-body: nothing of it reached the client, the fallback answers.
--- http_config eval
::http_config('smartflow_breaker failures=1 cooldown=30s;')
--- request eval
["POST /anthropic/v1/messages\n"
 . '{"model":"hesitant","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}',
 "GET /health"]
--- more_headers eval
[$::AnthropicKey . "x-mock-drop: body", $::OpenAIKey]
--- error_code eval
[502, 200]
--- response_body_filters eval
::view(models => ['hesitant'])
--- response_body eval
['{"type":"error","error":{"type":"api_error","message":"The provider\'s answer could not be read."}}',
 "openai/gpt-hes open requests=1 failures=1 in_flight=0\n"
 . "gemini/gemini-fb-hes open requests=1 failures=1 in_flight=0\n"]
--- error_log
smartflow proxy: answer of provider "openai" broke before its end
smartflow proxy: deployment "openai/gpt-hes" gave an answer that could not be read for model "hesitant", trying the next one
smartflow proxy: answer of provider "gemini" broke before its end
--- no_error_log
[alert]



=== TEST 15: a page over a connection kept alive goes on to the fallback
The primary's upstream keeps its connections alive: the page it answers
with is read whole, the connection goes back to the pool (the second
request finds it there), and the fallback answers the Anthropic client
each time.
--- http_config eval
::paged_config()
--- request eval
["POST /anthropic/v1/messages\n"
 . '{"model":"steady","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}',
 "POST /anthropic/v1/messages\n"
 . '{"model":"steady","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}',
 "GET /health"]
--- more_headers eval
[$::AnthropicKey, $::AnthropicKey, $::OpenAIKey]
--- error_code eval
[200, 200, 200]
--- response_headers eval
["x-smartflow-deployment: openai/gpt-fb-k", "x-smartflow-deployment: openai/gpt-fb-k", ""]
--- response_body_filters eval
::view(models => ['steady'])
--- response_body eval
["message \"mock reply to: hi\"\n",
 "message \"mock reply to: hi\"\n",
 "kept/gpt-kept-s closed requests=2 failures=2 in_flight=0\n"
 . "openai/gpt-fb-k closed requests=2 failures=0 in_flight=0\n"]
--- error_log
smartflow proxy: deployment "kept/gpt-kept-s" gave an answer that could not be read for model "steady", trying the next one
--- no_error_log
[alert]



=== TEST 16: a page of many buffers goes on to the fallback
--- http_config eval
::paged_config('smartflow_breaker failures=1 cooldown=30s;')
--- user_files eval
">>> big.html\n<html><body>" . ("maintenance " x 20000) . "</body></html>\n"
--- request eval
["POST /anthropic/v1/messages\n"
 . '{"model":"bulky","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}',
 "GET /health"]
--- more_headers eval
[$::AnthropicKey, $::OpenAIKey]
--- error_code eval
[200, 200]
--- response_headers eval
["x-smartflow-deployment: openai/gpt-fb-b", ""]
--- response_body_filters eval
::view(models => ['bulky'])
--- response_body eval
["message \"mock reply to: hi\"\n",
 "big/gpt-big-b open requests=1 failures=1 in_flight=0\n"
 . "openai/gpt-fb-b closed requests=1 failures=0 in_flight=0\n"]
--- error_log
smartflow proxy: deployment "big/gpt-big-b" gave an answer that could not be read for model "bulky", trying the next one
--- no_error_log
[alert]



=== TEST 17: with proxy buffering off, a page goes on to the fallback
--- http_config eval
::paged_config('smartflow_breaker failures=1 cooldown=30s;')
--- config eval
$::Locations . <<'_EOC_';
location = /unbuffered/v1/messages {
    smartflow_api messages;
    proxy_buffering off;
    error_page 401 403 408 413 429 500 502 503 504 @smartflow_anthropic_error;
    include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
}
_EOC_
--- request eval
["POST /unbuffered/v1/messages\n"
 . '{"model":"rescued","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}',
 "GET /health"]
--- more_headers eval
[$::AnthropicKey, $::OpenAIKey]
--- error_code eval
[200, 200]
--- response_headers eval
["x-smartflow-deployment: openai/gpt-fb-r", ""]
--- response_body_filters eval
::view(models => ['rescued'])
--- response_body eval
["message \"mock reply to: hi\"\n",
 "paged/gpt-paged-r open requests=1 failures=1 in_flight=0\n"
 . "openai/gpt-fb-r closed requests=1 failures=0 in_flight=0\n"]
--- error_log
smartflow proxy: deployment "paged/gpt-paged-r" gave an answer that could not be read for model "rescued", trying the next one
--- no_error_log
[alert]



=== TEST 18: the usage an unreadable answer claims is not the client's
The primary's answer has no choices but a vast usage: the client is
counted the usage of the fallback's answer only.
--- http_config eval
::paged_config()
--- config eval
$::Locations . <<'_EOC_';
location = /counted/v1/messages {
    smartflow_api messages;
    add_header x-tokens "$smartflow_prompt_tokens $smartflow_completion_tokens" always;
    error_page 401 403 408 413 429 500 502 503 504 @smartflow_anthropic_error;
    include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
}
_EOC_
--- request eval
"POST /counted/v1/messages\n"
 . '{"model":"lavish","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}'
--- more_headers eval
$::AnthropicKey
--- error_code: 200
--- response_headers_like
x-smartflow-deployment: openai/gpt-fb-l
x-tokens: \d{1,3} \d{1,3}
--- response_body_filters eval
::view()
--- response_body
message "mock reply to: hi"
--- error_log
smartflow proxy: deployment "costly/gpt-costly-l" gave an answer that could not be read for model "lavish", trying the next one
--- no_error_log
[alert]



=== TEST 19: the cache keeps nothing of an unreadable answer
The primary answers 200 with a page: the cache stores neither the page
nor the fallback's answer (a fallback's answers are not cached), and
the same question goes to the deployments again.
--- http_config eval
::paged_config('smartflow_cache_zone metacache 16m entries=1000;')
--- config eval
$::Locations . <<'_EOC_';
location = /cached/v1/messages {
    smartflow_api messages;
    smartflow_cache metacache;
    error_page 401 403 408 413 429 500 502 503 504 @smartflow_anthropic_error;
    include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
}
_EOC_
--- request eval
["POST /cached/v1/messages\n"
 . '{"model":"rescued","max_tokens":8,"messages":[{"role":"user","content":"what is kept?"}]}',
 "POST /cached/v1/messages\n"
 . '{"model":"rescued","max_tokens":8,"messages":[{"role":"user","content":"what is kept?"}]}']
--- more_headers eval
[$::AnthropicKey, $::AnthropicKey]
--- error_code eval
[200, 200]
--- response_headers eval
["x-smartflow-cache: MISS\nx-smartflow-deployment: openai/gpt-fb-r",
 "x-smartflow-cache: MISS\nx-smartflow-deployment: openai/gpt-fb-r"]
--- response_body_filters eval
::view()
--- response_body eval
["message \"mock reply to: what is kept?\"\n",
 "message \"mock reply to: what is kept?\"\n"]
--- wait: 0.2
--- error_log
smartflow proxy: deployment "paged/gpt-paged-r" gave an answer that could not be read for model "rescued", trying the next one
--- no_error_log
[alert]



=== TEST 20: an answer cut mid-body, then the fallback's: the client's connection is kept
Two requests on one connection; each primary answer breaks off
mid-body, each fallback answers, and the connection serves both.
--- http_config eval
::paged_config()
--- pipelined_requests eval
["POST /anthropic/v1/messages\n"
 . '{"model":"mended","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}',
 "POST /anthropic/v1/messages\n"
 . '{"model":"mended","max_tokens":8,"messages":[{"role":"user","content":"again"}]}']
--- more_headers eval
[$::AnthropicKey, $::AnthropicKey]
--- error_code eval
[200, 200]
--- response_body_filters eval
::view()
--- response_body eval
["message \"mock reply to: hi\"\n", "message \"mock reply to: again\"\n"]
--- grep_error_log eval
qr/deployment "cut\/gpt-cut-m" gave an answer that could not be read/
--- grep_error_log_out
deployment "cut/gpt-cut-m" gave an answer that could not be read
deployment "cut/gpt-cut-m" gave an answer that could not be read
--- no_error_log
[alert]



=== TEST 21: answers cut mid-body, none left: each 502 keeps the client's connection
--- http_config eval
::paged_config()
--- pipelined_requests eval
["POST /anthropic/v1/messages\n"
 . '{"model":"torn","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}',
 "POST /anthropic/v1/messages\n"
 . '{"model":"torn","max_tokens":8,"messages":[{"role":"user","content":"again"}]}']
--- more_headers eval
[$::AnthropicKey, $::AnthropicKey]
--- error_code eval
[502, 502]
--- response_body eval
['{"type":"error","error":{"type":"api_error","message":"The provider\'s answer could not be read."}}',
 '{"type":"error","error":{"type":"api_error","message":"The provider\'s answer could not be read."}}']
--- error_log
smartflow proxy: answer of provider "cut" broke before its end
--- no_error_log
[alert]



=== TEST 22: an answer of 200 that is not JSON, passed untouched otherwise, goes on to the fallback
The OpenAI client's answer from an OpenAI-format provider passes as it
is; the primary's page does not: the fallback answers, with nothing of
the page's headers, and the primary has the failure.
--- http_config eval
::paged_config('smartflow_breaker failures=1 cooldown=30s;')
--- request eval
[::chat('rescued'), "GET /health"]
--- error_code eval
[200, 200]
--- response_headers eval
["Content-Type: application/json\nx-smartflow-deployment: openai/gpt-fb-r", ""]
--- response_body_filters eval
::view(models => ['rescued'])
--- response_body eval
["chat.completion \"mock reply to: hi\"\n",
 "paged/gpt-paged-r open requests=1 failures=1 in_flight=0\n"
 . "openai/gpt-fb-r closed requests=1 failures=0 in_flight=0\n"]
--- error_log
smartflow proxy: provider "paged" answered 200 with a body that is not JSON
smartflow proxy: deployment "paged/gpt-paged-r" gave an answer that could not be read for model "rescued", trying the next one
--- no_error_log
[alert]



=== TEST 23: answers of 200 that are not JSON, none left: a 502 in the OpenAI client's format
--- http_config eval
::paged_config('smartflow_breaker failures=1 cooldown=30s;')
--- request eval
[::chat('unreadable'), "GET /health"]
--- error_code eval
[502, 200]
--- response_headers eval
["Content-Type: application/json\nx-smartflow-deployment: paged/gpt-paged-fb-u", ""]
--- response_body_filters eval
::view(models => ['unreadable'])
--- response_body eval
['{"error":{"message":"The provider\'s answer could not be read.","type":"api_error","param":null,"code":null}}',
 "paged/gpt-paged-u open requests=1 failures=1 in_flight=0\n"
 . "paged/gpt-paged-fb-u open requests=1 failures=1 in_flight=0\n"]
--- error_log
smartflow proxy: provider "paged" answered 200 with a body that is not JSON
smartflow proxy: deployment "paged/gpt-paged-u" gave an answer that could not be read for model "unreadable", trying the next one
--- no_error_log
[alert]



=== TEST 24: a page in the Anthropic API's place goes on to the fallback
The Anthropic client's answer from an Anthropic provider passes as it
is; the primary's page does not.
--- http_config eval
::paged_config('smartflow_breaker failures=1 cooldown=30s;')
--- request eval
["POST /anthropic/v1/messages\n"
 . '{"model":"leafed","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}',
 "GET /health"]
--- more_headers eval
[$::AnthropicKey, $::OpenAIKey]
--- error_code eval
[200, 200]
--- response_headers eval
["x-smartflow-deployment: anthropic/claude-fb-l", ""]
--- response_body_filters eval
::view(models => ['leafed'])
--- response_body eval
["message \"mock reply to: hi\"\n",
 "apaged/claude-paged-l open requests=1 failures=1 in_flight=0\n"
 . "anthropic/claude-fb-l closed requests=1 failures=0 in_flight=0\n"]
--- error_log
smartflow proxy: provider "apaged" answered 200 with a body that is not JSON
smartflow proxy: deployment "apaged/claude-paged-l" gave an answer that could not be read for model "leafed", trying the next one
--- no_error_log
[alert]



=== TEST 25: an answer of JSON after blanks passes untouched
--- http_config eval
::paged_config()
--- request eval
::chat('spaced')
--- error_code: 200
--- response_headers
x-smartflow-deployment: spaced/gpt-spaced
Content-Type: application/json
--- response_body eval
' ' . "\n" . ' {"id":"chatcmpl-spaced","object":"chat.completion","model":"gpt-spaced","choices":[{"index":0,"message":{"role":"assistant","content":"after blanks"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}'
--- no_error_log
[error]



=== TEST 26: a page given for a stream goes on to the fallback
The OpenAI client asks for a stream; the primary answers 200 with a
page: the client gets the fallback's stream, whole.
--- http_config eval
::paged_config('smartflow_breaker failures=1 cooldown=30s;')
--- request eval
[::chat('rescued', stream => 1), "GET /health"]
--- error_code eval
[200, 200]
--- response_headers eval
["Content-Type: text/event-stream; charset=utf-8\nx-smartflow-deployment: openai/gpt-fb-r", ""]
--- response_body_filters eval
::view(models => ['rescued'])
--- response_body eval
["stream whole\n",
 "paged/gpt-paged-r open requests=1 failures=1 in_flight=0\n"
 . "openai/gpt-fb-r closed requests=1 failures=0 in_flight=0\n"]
--- error_log
smartflow proxy: provider "paged" answered 200 to a stream request with a body that is not a stream
smartflow proxy: deployment "paged/gpt-paged-r" gave an answer that could not be read for model "rescued", trying the next one
--- no_error_log
[alert]



=== TEST 27: JSON given for a stream, translated for the Anthropic client, goes on to the fallback
--- http_config eval
::paged_config('smartflow_breaker failures=1 cooldown=30s;')
--- request eval
["POST /anthropic/v1/messages\n"
 . '{"model":"strange","max_tokens":8,"stream":true,"messages":[{"role":"user","content":"hi"}]}',
 "GET /health"]
--- more_headers eval
[$::AnthropicKey, $::OpenAIKey]
--- error_code eval
[200, 200]
--- response_headers eval
["x-smartflow-deployment: openai/gpt-fb-s", ""]
--- response_body_filters eval
::view(models => ['strange'])
--- response_body eval
["stream whole\n",
 "odd/gpt-odd-s open requests=1 failures=1 in_flight=0\n"
 . "openai/gpt-fb-s closed requests=1 failures=0 in_flight=0\n"]
--- error_log
smartflow proxy: provider "odd" answered 200 to a stream request with a body that is not a stream
smartflow proxy: deployment "odd/gpt-odd-s" gave an answer that could not be read for model "strange", trying the next one
--- no_error_log
[alert]



=== TEST 28: pages given for a stream, none left: a 502 in the OpenAI client's format
--- http_config eval
::paged_config()
--- request eval
::chat('unreadable', stream => 1)
--- error_code: 502
--- response_headers
Content-Type: application/json
--- response_body eval
'{"error":{"message":"The provider\'s answer could not be read.","type":"api_error","param":null,"code":null}}'
--- error_log
smartflow proxy: provider "paged" answered 200 to a stream request with a body that is not a stream
--- no_error_log
[alert]



=== TEST 29: an answer of JSON after line ends, each read on its own, passes untouched
A provider keeping a slow answer's connection alive sends line ends
before it; with proxy_buffering off each is read on its own: they wait
with the header, and reach the client with the answer, byte for byte.
--- http_config eval
::paged_config()
--- config eval
::own_location("    proxy_buffering off;")
--- request eval
::chat('leading', prefix => '/own')
--- error_code: 200
--- response_headers
x-smartflow-deployment: lead/gpt-lead
Content-Type: application/json
--- response_body_like eval
qr/\A\n\n\n\{"id":"chatcmpl-[^"]+","object":"chat.completion",.*"content":"mock reply to: hi"/s
--- no_error_log
[error]



=== TEST 30: the same, the proxy buffering: untouched too
--- http_config eval
::paged_config()
--- request eval
::chat('leading')
--- error_code: 200
--- response_body_like eval
qr/\A\n\n\n\{"id":"chatcmpl-[^"]+","object":"chat.completion",.*"content":"mock reply to: hi"/s
--- no_error_log
[error]



=== TEST 31: a stream after line ends, each read on its own, passes whole
--- http_config eval
::paged_config()
--- request eval
::chat('leading', stream => 1)
--- error_code: 200
--- response_headers
x-smartflow-deployment: lead/gpt-lead
--- response_body_like eval
qr/\A\n\n\ndata: \{"id":"chatcmpl-.*"finish_reason":"stop".*\n\ndata: \[DONE\]\n\n\z/s
--- no_error_log
[error]



=== TEST 32: a page after line ends, each read on its own, given for a stream: the fallback's stream
--- http_config eval
::paged_config()
--- request eval
::chat('misled', stream => 1)
--- error_code: 200
--- response_headers
x-smartflow-deployment: openai/gpt-fb-ml
--- response_body_filters eval
::view()
--- response_body
stream whole
--- error_log
smartflow proxy: provider "leadpage" answered 200 to a stream request with a body that is not a stream
--- no_error_log
[alert]



=== TEST 33: a page after line ends, each read on its own, given for JSON: the fallback's answer
--- http_config eval
::paged_config()
--- config eval
::own_location("    proxy_buffering off;")
--- request eval
::chat('misled', prefix => '/own')
--- error_code: 200
--- response_headers
x-smartflow-deployment: openai/gpt-fb-ml
--- response_body_filters eval
::view()
--- response_body
chat.completion "mock reply to: hi"
--- error_log
smartflow proxy: provider "leadpage" answered 200 with a body that is not JSON
--- no_error_log
[alert]



=== TEST 34: a stream over smartflow_stream_max_time before its first bytes: the client's 502, no fallback
The request's time is spent: the fallback would be cut at once, and is
not tried.
--- http_config eval
::paged_config('smartflow_breaker failures=1 cooldown=30s;')
--- config eval
::own_location("    smartflow_stream_max_time 500ms;")
--- request eval
[::chat('tardy', stream => 1, prefix => '/own'), "GET /health"]
--- error_code eval
[502, 200]
--- response_body_filters eval
::view(models => ['tardy'])
--- response_body eval
['{"error":{"message":"The provider\'s answer could not be read.","type":"api_error","param":null,"code":null}}',
 "slowlead/gpt-slowlead open requests=1 failures=1 in_flight=0\n"
 . "openai/gpt-fb-t closed requests=0 failures=0 in_flight=0\n"]
--- error_log
smartflow proxy: stream from provider "slowlead" cut at 0 bytes after
--- no_error_log
[alert]
trying the next one



=== TEST 35: an answer cut mid-body, none left, on the connection's last request: the 502 closes it
The client asks to keep its connection, but keepalive_requests says
this is its last request: the connection is not kept for the 502.
--- http_config eval
::paged_config('keepalive_requests 1;')
--- request eval
"POST /anthropic/v1/messages\n"
. '{"model":"torn","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}'
--- more_headers eval
$::AnthropicKey . "\nConnection: keep-alive"
--- error_code: 502
--- response_headers
Connection: close
--- error_log
smartflow proxy: answer of provider "cut" broke before its end
--- no_error_log
[alert]



=== TEST 36: an answer cut mid-body, the fallback's answer, with keepalive_timeout 0: the connection is closed
--- http_config eval
::paged_config()
--- config eval
"keepalive_timeout 0;\n" . $::Locations
--- request eval
"POST /anthropic/v1/messages\n"
. '{"model":"mended","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}'
--- more_headers eval
$::AnthropicKey . "\nConnection: keep-alive"
--- error_code: 200
--- response_headers
Connection: close
x-smartflow-deployment: openai/gpt-fb-m
--- response_body_filters eval
::view()
--- response_body
message "mock reply to: hi"
--- no_error_log
[alert]



=== TEST 37: an answer cut mid-body, none left, to an HTTP/1.0 client: the 502 closes the connection
--- http_config eval
::paged_config()
--- request eval
"POST /anthropic/v1/messages HTTP/1.0\n"
. '{"model":"torn","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}'
--- more_headers eval
$::AnthropicKey
--- error_code: 502
--- response_headers
Connection: close
--- no_error_log
[alert]
