# GET /v1/models lists the exact routes; GET /health shows each provider's
# state from the counters in the smartflow_zone: "up" after a success,
# "degraded" after a failure, "down" after three in a row, "up" again on
# the next success.  The counters live as long as nginx does, so the
# state is built up by several requests within one block.

use lib 't/lib';
use Smartflow::Blocks;
use Smartflow::Mock;
use JSON::PP ();
use Test::Nginx::Socket 'no_plan';

no_shuffle();

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_zone smartflow 1m;

    upstream sf_openai {
        server 127.0.0.1:$TEST_NGINX_MOCK_PORT;
        keepalive 8;
    }

    smartflow_provider openai type=openai upstream=http://sf_openai
                       path=/v1 key=sk-provider-test-key;
    smartflow_provider demo type=echo;

    smartflow_route gpt-4o openai;
    smartflow_route fast openai model=gpt-4o-mini;
    smartflow_route gpt-* openai;
    smartflow_route smartflow-echo demo;
_EOC_

our $Locations = <<'_EOC_';
    location = /v1/chat/completions {
        smartflow_api chat;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /v1/models {
        smartflow_api models;
        error_page 401 405 @smartflow_error;
    }

    location = /health {
        smartflow_api health;
    }

    location @smartflow_error {
        smartflow_api error;
    }
_EOC_

Smartflow::Blocks::defaults(http_config => $HttpConfig,
                            config => $Locations,
                            more_headers => $OpenAIKey);

my $decoder = JSON::PP->new->utf8;

# /v1/models: what changes from run to run, the creation times
sub stable {
    my $body = shift;
    $body =~ s/"created":\d+/"created":T/g;
    return $body;
}

# /health, as the lines a reader looks at: overall status, each provider's
# state and counters, the zones; other answers of a block pass unchanged
sub health_view {
    my $body = shift;
    return $body unless $body =~ /\A\{"providers":/;

    my $h = eval { $decoder->decode($body) };
    return "not JSON ($@): $body\n" unless ref $h;

    my @out = ("status $h->{status}, version $h->{version}");

    for my $p (@{ $h->{providers} }) {
        my $line = "provider $p->{name} ($p->{type} $p->{upstream}): "
                   . $p->{state};
        $line .= ", $p->{requests} requests, $p->{failures} failures, "
                 . "last status $p->{last_status}"
            if exists $p->{requests};
        push @out, $line;
    }

    push @out, "zone $_->{name} of $_->{size} bytes" for @{ $h->{zones} };

    return join '', map { "$_\n" } @out;
}

our $Key = 'Authorization: Bearer sk-smartflow-test-0123456789';

sub chat {
    my $model = shift;
    return "POST /v1/chat/completions\n"
           . qq/{"model":"$model","messages":[{"role":"user","content":"hi"}]}/;
}

# Blocks whose earlier requests are refused on purpose log those refusals
# ("smartflow proxy: ..." lines, checked in 005-errors.t); as the log is
# looked at after every request, they only check that nothing worse
# ([alert], [crit]) was logged.

# health_view() of /health with the openai provider in the given state
sub health {
    my ($state, $requests, $failures, $last, $echo) = @_;
    $echo //= 'up, 0 requests, 0 failures, last status 0';
    my $status = $state eq 'down' ? 'degraded' : 'ok';
    return "status $status, version 0.1.0\n"
        . "provider openai (openai http://sf_openai): $state, "
        . "$requests requests, $failures failures, last status $last\n"
        . "provider demo (echo ): $echo\n"
        . "zone smartflow of 1048576 bytes\n";
}

run_tests();

__DATA__

=== TEST 1: /v1/models lists the exact routes, aliases included, wildcards not
--- request
GET /v1/models
--- response_headers
Content-Type: application/json
--- response_body_filters eval
\&::stable
--- response_body chomp
{"object":"list","data":[{"id":"gpt-4o","object":"model","created":T,"owned_by":"openai"},{"id":"fast","object":"model","created":T,"owned_by":"openai"},{"id":"smartflow-echo","object":"model","created":T,"owned_by":"demo"}]}
--- no_error_log
[error]



=== TEST 2: a model's created time is a Unix time
--- request
GET /v1/models
--- response_body_like chomp
^\{"object":"list","data":\[\{"id":"gpt-4o","object":"model","created":1\d{9},
--- no_error_log
[error]



=== TEST 3: no exact routes, an empty list
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route *-echo demo;
--- request
GET /v1/models
--- response_body chomp
{"object":"list","data":[]}
--- no_error_log
[error]



=== TEST 4: /health without a status zone: providers in state "unknown"
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    upstream sf_openai {
        server 127.0.0.1:$TEST_NGINX_MOCK_PORT;
    }
    smartflow_provider openai type=openai upstream=http://sf_openai path=/v1;
    smartflow_provider demo type=echo;
    smartflow_route gpt-4o openai;
--- request eval
[ ::chat('gpt-4o'), "GET /health" ]
--- error_code eval
[200, 200]
--- response_body_filters eval
\&::health_view
--- response_body eval
[
qr/"content":"mock reply to: hi"/,
"status ok, version 0.1.0
provider openai (openai http://sf_openai): unknown
provider demo (echo ): unknown
",
]
--- no_error_log
[error]



=== TEST 5: /health with a status zone, before any request
--- request
GET /health
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"providers":\[\{"name":"openai","type":"openai","upstream":"http://sf_openai","state":"up","requests":0,"failures":0,"last_status":0\},\{"name":"demo","type":"echo","upstream":"","state":"up","requests":0,"failures":0,"last_status":0\}\],.*"status":"ok","version":"0\.1\.0","zones":\[\{"name":"smartflow","size":1048576,"free_pages":\d+\}\]\}$
--- no_error_log
[error]



=== TEST 6: a provider goes degraded, then down, then up again
--- more_headers eval
[
"$::Key\nx-mock-status: 500", '',
"$::Key\nx-mock-status: 503", '',
"$::Key\nx-mock-status: 502", '',
$::Key, '',
]
--- request eval
[
::chat('gpt-4o'), "GET /health",
::chat('gpt-4o'), "GET /health",
::chat('gpt-4o'), "GET /health",
::chat('gpt-4o'), "GET /health",
]
--- error_code eval
[500, 200, 503, 200, 502, 200, 200, 200]
--- response_body_filters eval
\&::health_view
--- response_body eval
[
qr/"type":"server_error"/, ::health('degraded', 1, 1, 500),
qr/"type":"server_error"/, ::health('degraded', 2, 2, 503),
qr/"type":"server_error"/, ::health('down', 3, 3, 502),
qr/"content":"mock reply to: hi"/, ::health('up', 4, 3, 200),
]
--- no_error_log
[error]



=== TEST 7: a provider's 4xx answer is not a failure of the provider
--- more_headers eval
[ "$::Key\nx-mock-status: 429", "$::Key\nx-mock-status: 400", '' ]
--- request eval
[ ::chat('gpt-4o'), ::chat('gpt-4o'), "GET /health" ]
--- error_code eval
[429, 400, 200]
--- response_body_filters eval
\&::health_view
--- response_body eval
[
qr/"code":"rate_limit_exceeded"/,
qr/"type":"invalid_request_error"/,
::health('up', 2, 0, 400),
]
--- no_error_log
[error]



=== TEST 8: every route to a provider counts for that provider
--- request eval
[ ::chat('gpt-4o'), ::chat('fast'), ::chat('gpt-4.1'), "GET /health" ]
--- error_code eval
[200, 200, 200, 200]
--- response_body_filters eval
\&::health_view
--- response_body eval
[
qr/"model":"gpt-4o"/,
qr/"model":"gpt-4o-mini"/,
qr/"model":"gpt-4\.1"/,
::health('up', 3, 0, 200),
]
--- no_error_log
[error]



=== TEST 9: requests refused before they reach a provider are not counted
--- more_headers eval
[ $::Key, $::Key, 'x-api-key: sk-wrong-secret-4242424242', '' ]
--- request eval
[
::chat('no-such-model'),
"POST /v1/chat/completions\n{\"model\":\"gpt-4o\"}",
::chat('gpt-4o'),
"GET /health",
]
--- error_code eval
[404, 400, 401, 200]
--- response_body_filters eval
\&::health_view
--- response_body eval
[
qr/"code":"model_not_found"/,
qr/"code":"missing_required_parameter"/,
qr/"code":"invalid_api_key"/,
::health('up', 0, 0, 0),
]
--- no_error_log
[alert]
[crit]



=== TEST 10: the echo provider is counted too
--- request eval
[ ::chat('smartflow-echo'), ::chat('smartflow-echo'), "GET /health" ]
--- error_code eval
[200, 200, 200]
--- response_body_filters eval
\&::health_view
--- response_body eval
[
qr/"content":"Echo: hi"/,
qr/"content":"Echo: hi"/,
::health('up', 0, 0, 0, 'up, 2 requests, 0 failures, last status 200'),
]
--- no_error_log
[error]



=== TEST 11: an unreachable provider is down after three attempts
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_zone smartflow 1m;
    upstream sf_down {
        server 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
    }
    smartflow_provider down type=openai upstream=http://sf_down path=/v1;
    smartflow_route gpt-4o down;
--- request eval
[ ::chat('gpt-4o'), ::chat('gpt-4o'), ::chat('gpt-4o'), "GET /health" ]
--- error_code eval
[502, 502, 502, 200]
--- response_body_filters eval
\&::health_view
--- response_body eval
[
qr/"code":"upstream_unreachable"/,
qr/"code":"upstream_unreachable"/,
qr/"code":"upstream_unreachable"/,
"status degraded, version 0.1.0
provider down (openai http://sf_down): down, 3 requests, 3 failures, last status 502
zone smartflow of 1048576 bytes
",
]
--- no_error_log
[alert]
[crit]



=== TEST 12: /health answers other methods with a JSON 405, as /v1/models does
--- request eval
[ "POST /health\n{}", "DELETE /v1/models" ]
--- more_headers eval
[ '', $::Key ]
--- error_code eval
[405, 405]
--- response_headers eval
[ "Content-Type: application/json", "Content-Type: application/json" ]
--- response_body eval
[
'{"error":{"message":"Method POST is not allowed here; use GET.","type":"invalid_request_error","param":null,"code":"method_not_allowed"}}',
'{"error":{"message":"Method DELETE is not allowed here; use GET.","type":"invalid_request_error","param":null,"code":"method_not_allowed"}}',
]
--- error_log
is not allowed here; use GET.
