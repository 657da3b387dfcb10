# A provider reached over TLS that accepts the connection and never
# answers the ClientHello: a timeout during the handshake is a timeout
# like any other, 504 in the client's format, whether the deployment's
# timeout= or proxy_connect_timeout ends it, and a model with a fallback
# goes on to it as after any timed-out attempt.
#
# The hanging provider is a listening socket of the test's own on
# $TEST_NGINX_HANG_PORT that never accepts: the kernel completes the TCP
# handshake, nginx sends its ClientHello, nothing ever comes back.

use lib 't/lib';
use Smartflow::Conf;
use IO::Socket::INET;
use Test::Nginx::Socket 'no_plan';
use Smartflow::Blocks;

$ENV{TEST_NGINX_HANG_PORT} ||= 1989;
$ENV{TEST_NGINX_FIXTURE_PORT} ||= 1988;

# declared by mock_upstreams(), never reached here
$ENV{TEST_NGINX_MOCK_PORT} ||= 1985;

# a backlog larger than the connections the blocks make: each connection
# completes its TCP handshake, so the timeout falls in the TLS one
our $Hang = IO::Socket::INET->new(Listen => 64, LocalAddr => '127.0.0.1',
                                  LocalPort => $ENV{TEST_NGINX_HANG_PORT},
                                  Proto => 'tcp', ReuseAddr => 1)
    or die "cannot listen on $ENV{TEST_NGINX_HANG_PORT}: $!\n";

our $HttpConfig = Smartflow::Blocks::mock_upstreams(fixture => 1) . <<'_EOC_';
    smartflow_zone smartflow 1m;

    upstream sf_hang {
        server 127.0.0.1:$TEST_NGINX_HANG_PORT;
    }

    smartflow_provider hang type=openai upstream=https://sf_hang
                       key=sk-oai-provider-key;
    smartflow_provider hang_an type=anthropic upstream=https://sf_hang
                       key=sk-ant-provider-key;
    smartflow_provider spare type=openai upstream=http://sf_fixture
                       path=/spare/v1 key=sk-oai-provider-key;

    smartflow_route gpt-tls hang model=gpt-tls-t timeout=300ms;
    smartflow_route claude-tls hang_an model=claude-tls-t timeout=300ms;
    smartflow_route gpt-tls-fb hang model=gpt-tls-fb timeout=300ms;
    smartflow_route gpt-tls-fb spare model=gpt-spare fallback;

    # no timeout= of its own: proxy_connect_timeout bounds the handshake
    smartflow_route gpt-tls-conn hang model=gpt-tls-conn;
    smartflow_route claude-tls-conn hang_an model=claude-tls-conn;

    server {
        listen 127.0.0.1:$TEST_NGINX_FIXTURE_PORT;
        default_type application/json;

        location /spare/ {
            return 200 '{"id":"chatcmpl-spare","object":"chat.completion","created":1700000000,"model":"gpt-spare","choices":[{"index":0,"message":{"role":"assistant","content":"spare answer"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}';
        }
    }
_EOC_

# The shipped server-level locations (conf/smartflow_locations.conf), their
# nested includes made absolute; and the same with a short connect timeout.

our $Locations = Smartflow::Conf::shipped_locations();

our $ShortConnect = $Locations;
$ShortConnect =~ s/proxy_connect_timeout 10s;/proxy_connect_timeout 300ms;/
    or die "no proxy_connect_timeout in the shipped locations\n";

Smartflow::Blocks::defaults(http_config => $HttpConfig, config => $Locations,
                            keys => 1);

sub chat {
    my $model = shift;
    return "POST /v1/chat/completions\n"
           . '{"model":"' . $model . '",'
           . '"messages":[{"role":"user","content":"hi"}]}';
}

sub message {
    my $model = shift;
    return "POST /anthropic/v1/messages\n"
           . '{"model":"' . $model . '","max_tokens":16,'
           . '"messages":[{"role":"user","content":"hi"}]}';
}

run_tests();

__DATA__

=== TEST 1: OpenAI client: the deployment's timeout ends the TLS handshake, 504
--- request eval
::chat('gpt-tls')
--- timeout: 5
--- error_code: 504
--- response_headers
Content-Type: application/json
--- response_body chomp
{"error":{"message":"The provider did not answer in time (provider \"hang\").","type":"api_error","param":null,"code":"upstream_timeout"}}
--- error_log
smartflow proxy: deployment "hang/gpt-tls-t" did not answer within its timeout of 300 ms
upstream timed out (110: Connection timed out) while SSL handshaking to upstream



=== TEST 2: Anthropic client: the deployment's timeout ends the TLS handshake, 504
--- request eval
::message('claude-tls')
--- timeout: 5
--- error_code: 504
--- response_headers
Content-Type: application/json
--- response_body chomp
{"type":"error","error":{"type":"api_error","message":"The provider did not answer in time (provider \"hang_an\")."}}
--- error_log
smartflow proxy: deployment "hang_an/claude-tls-t" did not answer within its timeout of 300 ms
upstream timed out (110: Connection timed out) while SSL handshaking to upstream



=== TEST 3: a TLS handshake that times out falls over as a timeout
--- request eval
::chat('gpt-tls-fb')
--- timeout: 5
--- response_headers
x-smartflow-deployment: spare/gpt-spare
--- response_body_like: "content":"spare answer"
--- error_log
smartflow proxy: deployment "hang/gpt-tls-fb" did not answer within its timeout of 300 ms
smartflow proxy: deployment "hang/gpt-tls-fb" answered 504 for model "gpt-tls-fb", trying the next one
--- no_error_log
answered 502



=== TEST 4: proxy_connect_timeout ends the TLS handshake: 504 to either client
--- config eval
$::ShortConnect
--- request eval
[::chat('gpt-tls-conn'), ::message('claude-tls-conn')]
--- timeout: 5
--- error_code eval
[504, 504]
--- response_body eval
['{"error":{"message":"The provider did not answer in time (provider \"hang\").","type":"api_error","param":null,"code":"upstream_timeout"}}',
 '{"type":"error","error":{"type":"api_error","message":"The provider did not answer in time (provider \"hang_an\")."}}']
--- error_log
upstream timed out (110: Connection timed out) while SSL handshaking to upstream
