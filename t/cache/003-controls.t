# Per-request controls and lifetimes: Cache-Control no-cache (no lookup,
# the answer stored) and no-store (neither), x-smartflow-cache: refresh |
# bypass, x-smartflow-cache-ttl, and smartflow_cache_ttl.  The mock
# provider answers with its x-mock-reply header, so the body tells which
# answer was served.  Time passes through a location that sleeps
# (echo_sleep, from Debian's libnginx-mod-http-echo).  A refresh removes
# the entry it refreshes, whether its own answer is stored or not.

use lib 't/lib';
use Smartflow::Blocks;
use Smartflow::Mock;
use Test::Nginx::Socket 'no_plan';

no_shuffle();

our $MainConfig = Smartflow::Blocks::main_config()
    . "    load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;\n";

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;

    upstream sf_mock {
        server 127.0.0.1:$TEST_NGINX_MOCK_PORT;
        keepalive 8;
    }

    smartflow_provider openai type=openai upstream=http://sf_mock path=/v1
                       key=sk-provider-test-key;
    smartflow_route gpt-* openai;

    smartflow_cache_zone metacache 16m entries=1000;
_EOC_

our $Locations = <<'_EOC_';
    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_cache metacache;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /short/chat/completions {
        smartflow_api chat;
        smartflow_cache metacache;
        smartflow_cache_ttl 2s;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /small/chat/completions {
        smartflow_api chat;
        smartflow_cache metacache;
        smartflow_cache_max_size 16;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /sleep {
        echo_sleep 3.1;
        echo slept;
    }

    location @smartflow_error {
        smartflow_api error;
    }
_EOC_

Smartflow::Blocks::defaults(main_config => $MainConfig,
                            http_config => $HttpConfig,
                            config => $Locations);

our $Key = "Authorization: Bearer sk-smartflow-test-0123456789";

sub ask {
    my ($q, $path) = @_;
    $path //= '/v1/chat/completions';
    return "POST $path\n"
        . qq({"model":"gpt-4o-mini","messages":[{"role":"user","content":"$q"}]});
}

sub with { join "\n", $main::Key, @_ }

run_tests();

__DATA__

=== TEST 1: no-cache and refresh skip the lookup and store again; no-store and bypass neither look up nor store
--- request eval
[map { main::ask("Which answer is stored?") } 1 .. 8]
--- more_headers eval
[main::with("x-mock-reply: A"),
 main::with("x-mock-reply: B", "Cache-Control: no-cache"),
 main::with("x-mock-reply: C"),
 main::with("x-mock-reply: D", "x-smartflow-cache: refresh"),
 main::with("x-mock-reply: E"),
 main::with("x-mock-reply: F", "Cache-Control: private, no-store"),
 main::with("x-mock-reply: G", "x-smartflow-cache: BYPASS"),
 main::with("x-mock-reply: H")]
--- response_body_like eval
[qr/"content":"A"/, qr/"content":"B"/, qr/"content":"B"/,
 qr/"content":"D"/, qr/"content":"D"/, qr/"content":"F"/,
 qr/"content":"G"/, qr/"content":"D"/]
--- response_headers eval
["x-smartflow-cache: MISS", "x-smartflow-cache: BYPASS",
 "x-smartflow-cache: HIT", "x-smartflow-cache: BYPASS",
 "x-smartflow-cache: HIT", "x-smartflow-cache: BYPASS",
 "x-smartflow-cache: BYPASS", "x-smartflow-cache: HIT"]
--- no_error_log
[error]



=== TEST 2: a control sent twice counts both times: no-store in the second Cache-Control, bypass after refresh
--- request eval
[map { main::ask("Which control counts?") } 1 .. 4]
--- more_headers eval
[main::with("x-mock-reply: A", "Cache-Control: max-age=0",
            "Cache-Control: no-store"),
 main::with("x-mock-reply: B"),
 main::with("x-mock-reply: C", "x-smartflow-cache: refresh",
            "x-smartflow-cache: bypass"),
 main::with("x-mock-reply: D")]
--- response_body_like eval
[qr/"content":"A"/, qr/"content":"B"/, qr/"content":"C"/,
 qr/"content":"B"/]
--- response_headers eval
["x-smartflow-cache: BYPASS", "x-smartflow-cache: MISS",
 "x-smartflow-cache: BYPASS", "x-smartflow-cache: HIT"]
--- no_error_log
[error]



=== TEST 3: an entry lives as long as x-smartflow-cache-ttl says, or the location's smartflow_cache_ttl
--- request eval
[main::ask("Short lived?"), main::ask("Long lived?"),
 main::ask("In a short location?", "/short/chat/completions"),
 main::ask("Short lived?"), main::ask("Long lived?"),
 main::ask("In a short location?", "/short/chat/completions"),
 "GET /sleep",
 main::ask("Short lived?"), main::ask("Long lived?"),
 main::ask("In a short location?", "/short/chat/completions")]
--- more_headers eval
[main::with("x-mock-reply: s1", "x-smartflow-cache-ttl: 2"),
 main::with("x-mock-reply: l1"), main::with("x-mock-reply: q1"),
 main::with("x-mock-reply: s2"), main::with("x-mock-reply: l2"),
 main::with("x-mock-reply: q2"), "",
 main::with("x-mock-reply: s3"), main::with("x-mock-reply: l3"),
 main::with("x-mock-reply: q3")]
--- response_body_like eval
[qr/"s1"/, qr/"l1"/, qr/"q1"/, qr/"s1"/, qr/"l1"/, qr/"q1"/, qr/slept/,
 qr/"s3"/, qr/"l1"/, qr/"q3"/]
--- timeout: 10
--- no_error_log
[error]



=== TEST 4: x-smartflow-cache-ttl sent twice: the shorter counts
--- request eval
[main::ask("Which lifetime counts?"), main::ask("Which lifetime counts?"),
 "GET /sleep",
 main::ask("Which lifetime counts?")]
--- more_headers eval
[main::with("x-mock-reply: t1", "x-smartflow-cache-ttl: 3600",
            "x-smartflow-cache-ttl: 2"),
 main::with("x-mock-reply: t2"), "",
 main::with("x-mock-reply: t3")]
--- response_body_like eval
[qr/"t1"/, qr/"t1"/, qr/slept/, qr/"t3"/]
--- timeout: 10
--- no_error_log
[error]



=== TEST 5: x-smartflow-cache-ttl sent twice: each must be valid
--- request eval
main::ask("Is every lifetime checked?")
--- more_headers eval
main::with("x-mock-reply: t4", "x-smartflow-cache-ttl: 60",
           "x-smartflow-cache-ttl: soon")
--- error_code: 400
--- response_body_like eval
qr/^\{"error":\{"message":"The x-smartflow-cache-ttl header takes a number of seconds from 1 to 31536000, not \\"soon\\"\.","type":"invalid_request_error"/
--- error_log
(status 400, code invalid_cache_control)



=== TEST 6: smartflow_cache_ttl 0 is refused: an entry would expire as it is stored
--- config
    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_cache metacache;
        smartflow_cache_ttl 0;
    }
--- must_die
--- error_log
"smartflow_cache_ttl" directive must be at least 1s



=== TEST 7: refresh removes the old answer even when the new one is not stored: a provider error, a stream cut, an answer over the size
--- request eval
my $q = "Which answer does a refresh leave?";
my $s = qq({"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"$q"}]});
[main::ask($q), main::ask($q), main::ask($q),
 main::ask($q), main::ask($q),
 "POST /v1/chat/completions\n$s", main::ask($q),
 main::ask($q, "/small/chat/completions"), main::ask($q),
 main::ask($q), main::ask($q)]
--- more_headers eval
[main::with("x-mock-reply: A"),
 main::with("x-mock-reply: B"),
 main::with("x-mock-status: 500", "x-smartflow-cache: refresh"),
 main::with("x-mock-reply: C"),
 main::with("x-mock-reply: D"),
 main::with("x-mock-reply: E", "x-mock-drop: mid-stream",
            "x-smartflow-cache: refresh"),
 main::with("x-mock-reply: F"),
 main::with("x-mock-reply: a longer answer than sixteen bytes",
            "x-smartflow-cache: refresh"),
 main::with("x-mock-reply: G"),
 main::with("x-mock-reply: H", "x-smartflow-cache: refresh",
            "Cache-Control: no-store"),
 main::with("x-mock-reply: I")]
--- error_code eval
[200, 200, 500, 200, 200, 200, 200, 200, 200, 200, 200]
--- response_body_like eval
[qr/"content":"A"/, qr/"content":"A"/, qr/error/,
 qr/"content":"C"/, qr/"content":"C"/, qr/./,
 qr/"content":"F"/, qr/"content":"a longer answer/,
 qr/"content":"G"/, qr/"content":"H"/, qr/"content":"G"/]
--- response_headers eval
["x-smartflow-cache: MISS", "x-smartflow-cache: HIT",
 "x-smartflow-cache: BYPASS", "x-smartflow-cache: MISS",
 "x-smartflow-cache: HIT", "x-smartflow-cache: BYPASS",
 "x-smartflow-cache: MISS", "x-smartflow-cache: BYPASS",
 "x-smartflow-cache: MISS", "x-smartflow-cache: BYPASS",
 "x-smartflow-cache: HIT"]
--- no_error_log
[alert]
[crit]
