# Tenants: entries are partitioned by the virtual key's team (a key
# without a team is its own tenant, the master key too), or by key, or
# shared when the location says so; an answer never crosses partitions
# otherwise.  A flush can take one tenant's entries only.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use Smartflow::Blocks;
use Smartflow::Keys;

no_shuffle();

unlink server_root() . '/keys-cache.state';

our $MainConfig = <<'_EOC_';
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_policy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_cache_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_audit_module.so;

    thread_pool sf threads=1;
_EOC_

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_keys_zone keys 1m state=keys-cache.state thread_pool=sf;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_cache_zone metacache 16m entries=1000;
_EOC_

our $Locations = <<'_EOC_';
    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_cache metacache;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /bykey/chat/completions {
        smartflow_api chat;
        smartflow_cache metacache;
        smartflow_cache_partition key;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /shared/chat/completions {
        smartflow_api chat;
        smartflow_cache metacache;
        smartflow_cache_partition shared;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location /api/metacache {
        smartflow_cache_api;
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

run_tests();

__DATA__

=== TEST 1: keys: two in team red, one in team blue, one without a team
--- request eval
["POST /api/auth/virtual-keys\n" . '{"name":"red1","team":"red"}',
 "POST /api/auth/virtual-keys\n" . '{"name":"red2","team":"red"}',
 "POST /api/auth/virtual-keys\n" . '{"name":"blue1","team":"blue"}',
 "POST /api/auth/virtual-keys\n" . '{"name":"solo"}']
--- error_code eval
[201, 201, 201, 201]
--- no_error_log
[error]



=== TEST 2: by team, by key, shared; a flush of one team leaves the others
--- request eval
[main::ask("Secret plan?"), main::ask("Secret plan?"),
 main::ask("Secret plan?"), main::ask("Secret plan?"),
 main::ask("Secret plan?"), main::ask("Secret plan?"),
 main::ask("By key?", "/bykey/chat/completions"),
 main::ask("By key?", "/bykey/chat/completions"),
 main::ask("By key?", "/bykey/chat/completions"),
 main::ask("Shared?", "/shared/chat/completions"),
 main::ask("Shared?", "/shared/chat/completions"),
 "DELETE /api/metacache?tenant=red",
 main::ask("Secret plan?"), main::ask("Secret plan?")]
--- more_headers eval
["Authorization: Bearer %KEY(red1)%", "Authorization: Bearer %KEY(red2)%",
 "Authorization: Bearer %KEY(blue1)%", "Authorization: Bearer %KEY(solo)%",
 "x-api-key: %KEY(solo)%",
 "Authorization: Bearer sk-smartflow-test-0123456789",
 "Authorization: Bearer %KEY(red1)%", "Authorization: Bearer %KEY(red2)%",
 "Authorization: Bearer %KEY(red1)%",
 "Authorization: Bearer %KEY(red1)%", "Authorization: Bearer %KEY(blue1)%",
 "Authorization: Bearer sk-smartflow-test-0123456789",
 "Authorization: Bearer %KEY(red2)%", "Authorization: Bearer %KEY(blue1)%"]
--- response_headers eval
["x-smartflow-cache: MISS", "x-smartflow-cache: HIT",
 "x-smartflow-cache: MISS", "x-smartflow-cache: MISS",
 "x-smartflow-cache: HIT", "x-smartflow-cache: MISS",
 "x-smartflow-cache: MISS", "x-smartflow-cache: MISS",
 "x-smartflow-cache: HIT",
 "x-smartflow-cache: MISS", "x-smartflow-cache: HIT",
 "", "x-smartflow-cache: MISS", "x-smartflow-cache: HIT"]
--- response_body_like eval
[qr/Echo: Secret plan/, qr/Echo: Secret plan/, qr/Echo: Secret plan/,
 qr/Echo: Secret plan/, qr/Echo: Secret plan/, qr/Echo: Secret plan/,
 qr/Echo: By key/, qr/Echo: By key/, qr/Echo: By key/,
 qr/Echo: Shared/, qr/Echo: Shared/,
 qr/^\{"flushed":1\}$/, qr/Echo: Secret plan/, qr/Echo: Secret plan/]
--- no_error_log
[error]



=== TEST 3: a team whose name a URL has to escape
--- request
POST /api/auth/virtual-keys
{"name":"ml1","team":"ml team/é"}
--- error_code: 201
--- no_error_log
[error]



=== TEST 4: a flush of that team, its name escaped in the query string
--- request eval
[main::ask("Team plan?"), main::ask("Team plan?"),
 "DELETE /api/metacache?tenant=ml%20team%2F%C3%A9",
 main::ask("Team plan?")]
--- more_headers eval
["Authorization: Bearer %KEY(ml1)%", "Authorization: Bearer %KEY(ml1)%",
 "Authorization: Bearer sk-smartflow-test-0123456789",
 "Authorization: Bearer %KEY(ml1)%"]
--- response_headers eval
["x-smartflow-cache: MISS", "x-smartflow-cache: HIT", "",
 "x-smartflow-cache: MISS"]
--- response_body_like eval
[qr/Echo: Team plan/, qr/Echo: Team plan/, qr/^\{"flushed":1\}$/,
 qr/Echo: Team plan/]
--- no_error_log
[error]



=== TEST 5: a path under the API that is not its own flushes nothing
--- request eval
[main::ask("Kept plan?"), main::ask("Kept plan?"),
 "DELETE /api/metacache/vk_123456", "DELETE /api/metacache/stats/",
 "DELETE /api/metacache/red/", main::ask("Kept plan?"),
 "DELETE /api/metacache/", main::ask("Kept plan?")]
--- more_headers eval
[("Authorization: Bearer sk-smartflow-test-0123456789") x 8]
--- error_code eval
[200, 200, 404, 404, 404, 200, 200, 200]
--- response_headers eval
["x-smartflow-cache: MISS", "x-smartflow-cache: HIT", "", "", "",
 "x-smartflow-cache: HIT", "", "x-smartflow-cache: MISS"]
--- response_body_like eval
[qr/Echo: Kept plan/, qr/Echo: Kept plan/,
 qr/"code":"not_found"/, qr/"code":"not_found"/, qr/"code":"not_found"/,
 qr/Echo: Kept plan/, qr/^\{"flushed":\d+\}$/, qr/Echo: Kept plan/]
