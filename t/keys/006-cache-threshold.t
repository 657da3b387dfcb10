# A virtual key's cache_threshold: set on create, changed or cleared by
# PATCH, kept by a rotation and in the state file across restarts, bad
# values refused; the MetaCache's phase 4 takes it in place of the
# location's smartflow_cache_similarity, so one near paraphrase is a hit
# for a key with a low threshold and a miss for a key with a high one.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use Smartflow::Blocks;
use Smartflow::Keys;

no_shuffle();

our $State = server_root() . '/keys-threshold.state';

unlink $State;

our $MainConfig = <<'_EOC_';
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_policy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_cache_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_audit_module.so;

    thread_pool sf threads=1;
_EOC_

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_keys_zone keys 1m state=keys-threshold.state thread_pool=sf;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_cache_zone metacache 16m entries=1000 index=flat;
_EOC_

# phase 4 alone, at 0.95 unless the key says otherwise
our $Locations = <<'_EOC_';
    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_cache metacache;
        smartflow_cache_near_miss off;
        smartflow_cache_similarity 0.95;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /off/v1/chat/completions {
        smartflow_api chat;
        smartflow_cache metacache;
        smartflow_cache_near_miss off;
        smartflow_cache_similarity off;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    include $TEST_NGINX_SMARTFLOW_CONF/smartflow_admin.conf;

    location @smartflow_error {
        smartflow_api error;
    }
_EOC_

Smartflow::Blocks::defaults(main_config => $MainConfig,
                            http_config => $HttpConfig,
                            config => $Locations,
                            more_headers => $OpenAIKey,
                            then => \&Smartflow::Keys::substitute);

sub ask {
    my ($q, $path) = @_;
    $path //= '/v1/chat/completions';
    return "POST $path\n"
        . qq({"model":"smartflow-echo","messages":[{"role":"user","content":"$q"}]});
}

sub slurp {
    open my $fh, '<', $_[0] or return '';
    local $/;
    return scalar <$fh>;
}

run_tests();

__DATA__

=== TEST 1: three keys of one team: a low threshold, a high one, none
--- request eval
["POST /api/auth/virtual-keys\n" . '{"name":"loose","team":"t","cache_threshold":0.8}',
 "POST /api/auth/virtual-keys\n" . '{"name":"tight","team":"t","cache_threshold":1}',
 "POST /api/auth/virtual-keys\n" . '{"name":"plain","team":"t"}']
--- error_code eval
[201, 201, 201]
--- response_body_like eval
[qr/"policy_group":null,"cache_threshold":0.8,"metadata":null,/,
 qr/"policy_group":null,"cache_threshold":1,"metadata":null,/,
 qr/"policy_group":null,"cache_threshold":null,"metadata":null,/]
--- no_error_log
[error]



=== TEST 2: one near paraphrase: a hit under 0.8, a miss under 1 and under the location's 0.95
--- request eval
[main::ask("Write a short poem about the ocean"),
 main::ask("Write a short poem about the ocean waves"),
 main::ask("Write a short poem about the ocean waves"),
 main::ask("Write a short poem about the ocean tides"),
 main::ask("Write a short poem about the ocean tides")]
--- more_headers eval
["Authorization: Bearer %KEY(plain)%",
 "Authorization: Bearer %KEY(loose)%",
 "Authorization: Bearer %KEY(tight)%",
 "Authorization: Bearer %KEY(plain)%",
 "x-api-key: %KEY(loose)%"]
--- response_headers eval
["x-smartflow-cache: MISS",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 4",
 "x-smartflow-cache: MISS",
 "x-smartflow-cache: MISS",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 1"]
--- response_headers_like eval
["", "x-smartflow-cache-similarity: 0\\.(8\\d\\d|9[0-4]\\d)", "", "", ""]
--- response_body_like eval
[qr/"content":"Echo: Write a short poem about the ocean"/,
 qr/"content":"Echo: Write a short poem about the ocean"/,
 qr/"content":"Echo: Write a short poem about the ocean waves"/,
 qr/"content":"Echo: Write a short poem about the ocean tides"/,
 qr/"content":"Echo: Write a short poem about the ocean tides"/]
--- no_error_log
[error]



=== TEST 3: a location with phase 4 off keeps it off whatever the key says
--- request eval
[main::ask("Write a long poem about the mountains", "/off/v1/chat/completions"),
 main::ask("Write a long poem about the mountains tonight", "/off/v1/chat/completions"),
 main::ask("Write a long poem about the mountains and lakes")]
--- more_headers eval
["Authorization: Bearer %KEY(plain)%",
 "Authorization: Bearer %KEY(loose)%",
 "Authorization: Bearer %KEY(loose)%"]
--- response_headers eval
["x-smartflow-cache: MISS", "x-smartflow-cache: MISS",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 4"]
--- response_body_like eval
[qr/Echo: Write a long poem about the mountains"/,
 qr/Echo: Write a long poem about the mountains tonight"/,
 qr/Echo: Write a long poem about the mountains( tonight)?"/]
--- no_error_log
[error]



=== TEST 4: the thresholds came back with the restart, from the state file in per mille
--- init
my $s = main::slurp($main::State);
Test::More::like($s, qr/"id":1,[^\n]*"cache_permille":800,/,
                 'loose: 800 in the state file');
Test::More::like($s, qr/"id":2,[^\n]*"cache_permille":1000,/,
                 'tight: 1000 in the state file');
Test::More::like($s, qr/"id":3,[^\n]*"cache_permille":0,/,
                 'plain: none in the state file');
--- request
GET /api/auth/virtual-keys?team=t
--- response_body_like chomp
^\{"object":"list","data":\[\{"id":"vk_1",[^}]*"name":"loose",[^}]*"cache_threshold":0.8,[^}]*\},\{"id":"vk_2",[^}]*"cache_threshold":1,[^}]*\},\{"id":"vk_3",[^}]*"cache_threshold":null,
--- response_body_unlike: cache_permille
--- no_error_log
[error]



=== TEST 5: PATCH changes one key's threshold, clears another's, leaves the third
--- request eval
["PATCH /api/auth/virtual-keys/%ID(tight)%\n" . '{"cache_threshold":0.125}',
 "PATCH /api/auth/virtual-keys/%ID(loose)%\n" . '{"cache_threshold":null}',
 "PATCH /api/auth/virtual-keys/%ID(plain)%\n" . '{"rpm":10}']
--- response_body_like eval
[qr/"name":"tight",.*"cache_threshold":0.125,/,
 qr/"name":"loose",.*"cache_threshold":null,/,
 qr/"name":"plain",.*"rpm":10,.*"cache_threshold":null,/]
--- no_error_log
[error]



=== TEST 6: a rotation keeps the threshold
--- request eval
["POST /api/auth/virtual-keys/%ID(tight)%/rotate",
 "GET /api/auth/virtual-keys/%ID(tight)%"]
--- response_body_like eval
[qr/"name":"tight","key":"sk-sf-[0-9a-f]{48}",.*"cache_threshold":0.125,/,
 qr/"name":"tight",.*"cache_threshold":0.125,/]
--- no_error_log
[error]



=== TEST 7: the changed thresholds at work: now tight is the low one, loose has the location's
--- request eval
[main::ask("Explain how tides work"),
 main::ask("Explain how ocean tides work"),
 main::ask("Explain how ocean tides work please"),
 main::ask("Explain how ocean tides work please")]
--- more_headers eval
["Authorization: Bearer %KEY(plain)%",
 "Authorization: Bearer %KEY(loose)%",
 "Authorization: Bearer %KEY(tight)%",
 "Authorization: Bearer %KEY(tight)%"]
--- response_headers eval
["x-smartflow-cache: MISS", "x-smartflow-cache: MISS",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 4",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 4"]
--- no_error_log
[error]



=== TEST 8: bad thresholds are refused with a 400 naming the field
--- request eval
["POST /api/auth/virtual-keys\n" . '{"name":"bad","cache_threshold":0}',
 "POST /api/auth/virtual-keys\n" . '{"name":"bad","cache_threshold":1.5}',
 "POST /api/auth/virtual-keys\n" . '{"name":"bad","cache_threshold":-0.5}',
 "POST /api/auth/virtual-keys\n" . '{"name":"bad","cache_threshold":0.8555}',
 "POST /api/auth/virtual-keys\n" . '{"name":"bad","cache_threshold":8e-1}',
 "POST /api/auth/virtual-keys\n" . '{"name":"bad","cache_threshold":"0.9"}',
 "PATCH /api/auth/virtual-keys/%ID(plain)%\n" . '{"cache_threshold":true}',
 "PATCH /api/auth/virtual-keys/%ID(plain)%\n" . '{"cache_threshold":0.0001}']
--- error_code eval
[400, 400, 400, 400, 400, 400, 400, 400]
--- response_body eval
[('{"error":{"message":"\'cache_threshold\' must be a similarity above 0 and at most 1, with at most 3 decimals (0.85).","type":"invalid_request_error","param":"cache_threshold","code":"invalid_value"}}') x 5,
 ('{"error":{"message":"\'cache_threshold\' must be a number or null.","type":"invalid_request_error","param":"cache_threshold","code":"invalid_type"}}') x 2,
 '{"error":{"message":"\'cache_threshold\' must be a similarity above 0 and at most 1, with at most 3 decimals (0.85).","type":"invalid_request_error","param":"cache_threshold","code":"invalid_value"}}']
--- error_log
smartflow proxy: 'cache_threshold' must be
--- no_error_log
[alert]



=== TEST 9: the refused changes changed nothing, and made no key
--- request eval
["GET /api/auth/virtual-keys/%ID(plain)%", "GET /api/auth/virtual-keys"]
--- response_body_like eval
[qr/"name":"plain",.*"rpm":10,.*"cache_threshold":null,/,
 qr/"last_id":"vk_3","has_more":false/]
--- no_error_log
[error]
