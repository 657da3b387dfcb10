# The zone: phase 4 through FAISS with the location's thresholds, LRU
# eviction when the zone's entries are all taken, the statistics and
# flush API (master key only), and directives that must stop nginx.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use Smartflow::Blocks;

no_shuffle();

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_cache_zone metacache 16m entries=1000 index=flat;
    smartflow_cache_zone tiny 1m entries=3;
_EOC_

our $Locations = <<'_EOC_';
    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_cache metacache;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /vector/chat/completions {
        smartflow_api chat;
        smartflow_cache metacache;
        smartflow_cache_near_miss off;
        smartflow_cache_similarity 0.85;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /strict/chat/completions {
        smartflow_api chat;
        smartflow_cache metacache;
        smartflow_cache_near_miss off;
        smartflow_cache_similarity 0.95;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /tiny/chat/completions {
        smartflow_api chat;
        smartflow_cache tiny;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location /api/metacache {
        smartflow_cache_api;
    }

    location @smartflow_error {
        smartflow_api error;
    }
_EOC_

Smartflow::Blocks::defaults(http_config => $HttpConfig,
                            config => $Locations,
                            more_headers => $OpenAIKey);

sub ask {
    my ($q, $path) = @_;
    $path //= '/v1/chat/completions';
    return "POST $path\n"
        . qq({"model":"smartflow-echo","messages":[{"role":"user","content":"$q"}]});
}

run_tests();

__DATA__

=== TEST 1: phase 4: the nearest vector in FAISS above the location's similarity, verified
--- request eval
[main::ask("Write a short poem about the ocean", "/vector/chat/completions"),
 main::ask("Write a short poem about the ocean tides", "/strict/chat/completions"),
 main::ask("Write a short poem about the ocean waves", "/vector/chat/completions"),
 main::ask("Write a short poem about the ocean on 2 pages", "/vector/chat/completions")]
--- response_body_like eval
[qr/"content":"Echo: Write a short poem about the ocean"/,
 qr/"content":"Echo: Write a short poem about the ocean tides"/,
 qr/"content":"Echo: Write a short poem about the ocean"/,
 qr/"content":"Echo: Write a short poem about the ocean on 2 pages"/]
--- response_headers eval
["x-smartflow-cache: MISS", "x-smartflow-cache: MISS",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 4",
 "x-smartflow-cache: MISS"]
--- response_headers_like eval
["", "", "x-smartflow-cache-similarity: 0\\.(8[5-9]|9)\\d+", ""]
--- no_error_log
[error]



=== TEST 2: a zone of 3 entries keeps the 3 most recently used
--- request eval
[main::ask("one", "/tiny/chat/completions"),
 main::ask("two", "/tiny/chat/completions"),
 main::ask("three", "/tiny/chat/completions"),
 main::ask("one", "/tiny/chat/completions"),
 main::ask("four", "/tiny/chat/completions"),
 main::ask("one", "/tiny/chat/completions"),
 main::ask("three", "/tiny/chat/completions"),
 main::ask("two", "/tiny/chat/completions")]
--- response_headers eval
["x-smartflow-cache: MISS", "x-smartflow-cache: MISS",
 "x-smartflow-cache: MISS", "x-smartflow-cache: HIT",
 "x-smartflow-cache: MISS", "x-smartflow-cache: HIT",
 "x-smartflow-cache: HIT", "x-smartflow-cache: MISS"]
--- no_error_log
[error]



=== TEST 3: statistics: entries, hits by phase, misses, tokens saved; then a flush empties the zone
--- request eval
[main::ask("Alpha question"), main::ask("Alpha question"),
 main::ask("Bravo question"), main::ask("alpha  question!"),
 "GET /api/metacache/stats",
 "DELETE /api/metacache",
 main::ask("Alpha question"),
 "GET /api/metacache/stats"]
--- response_body_like eval
[qr/Echo: Alpha/, qr/Echo: Alpha/, qr/Echo: Bravo/, qr/Echo: Alpha/,
 qr/^\{"zone":"metacache","entries":2,"capacity":1000,"index":"flat","dimension":256,"memory":\{"size":16777216,"used":\d+,"free":\d+\},"lookups":4,"hits":\{"total":2,"phase1":2,"phase2":0,"phase3":0,"phase4":0\},"misses":2,"bypasses":0,"hit_rate":0\.5000,"stores":2,"evictions":0,"expired":0,"rejected_by_verification":0,"tokens_saved":10,"saved":\{"prompt_tokens":4,"completion_tokens":6,"cost_usd":0\.000000,"unpriced_hits":2\},"lookup_latency_us":\{"count":4,"p50":\d+,"p90":\d+,"p99":\d+\}\}$/,
 qr/^\{"flushed":2\}$/,
 qr/Echo: Alpha/,
 qr/"entries":1,.*"lookups":5,.*"misses":3,/]
--- response_headers eval
["", "", "", "", "Content-Type: application/json", "", "x-smartflow-cache: MISS", ""]
--- no_error_log
[error]



=== TEST 4: the cache API takes the master key only, and its own methods
--- request eval
["GET /api/metacache/stats", "GET /api/metacache/stats",
 "GET /api/metacache/stats", "POST /api/metacache/stats\n{}",
 "GET /api/metacache", "GET /api/metacache/nothing",
 "DELETE /api/metacache?tenant=", "DELETE /api/metacache?tenant=ml"]
--- more_headers eval
["", "Authorization: Bearer sk-sf-0123456789abcdef0123456789abcdef0123456789abcdef",
 "x-api-key: wrong-key-0123456789",
 "x-api-key: sk-smartflow-test-0123456789",
 "x-api-key: sk-smartflow-test-0123456789",
 "x-api-key: sk-smartflow-test-0123456789",
 "x-api-key: sk-smartflow-test-0123456789",
 "x-api-key: sk-smartflow-test-0123456789"]
--- error_code eval
[401, 403, 401, 405, 405, 404, 400, 200]
--- response_body_like eval
[qr/"code":"missing_api_key"/, qr/"type":"permission_error","param":null,"code":"master_key_required"/,
 qr/"code":"invalid_api_key"/, qr/"code":"method_not_allowed"/,
 qr/"code":"method_not_allowed"/, qr/"code":"not_found"/,
 qr/"code":"invalid_tenant"/, qr/^\{"flushed":0\}$/]



=== TEST 5: smartflow_cache names a zone declared before it
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
--- config
    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_cache nowhere;
    }
--- must_die
--- error_log
smartflow_cache: no smartflow_cache_zone "nowhere" declared before it



=== TEST 6: thresholds are fractions up to 1, or off
--- http_config
    smartflow_cache_zone metacache 1m;
--- config
    location = /v1/chat/completions {
        smartflow_cache metacache;
        smartflow_cache_similarity 1.5;
    }
--- must_die
--- error_log
smartflow_cache_similarity: "1.5" is not a similarity between 0.001 and 1 or "off"



=== TEST 7: zone parameters are checked
--- http_config
    smartflow_cache_zone metacache 1m vectors=12;
--- config
--- must_die
--- error_log
smartflow_cache_zone: invalid parameter "vectors=12"



=== TEST 8: a zone too small for its entries stops nginx with the reason
--- http_config
    smartflow_cache_zone metacache 1m entries=100000;
--- config
--- must_die
--- error_log
smartflow cache: zone "metacache" is too small for 100000 entries
