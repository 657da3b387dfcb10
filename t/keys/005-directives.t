# smartflow_keys_zone and smartflow_price: what they accept, and the
# configuration errors that stop nginx.  A keys zone without a state file
# needs no thread pool (its keys last as long as the zone).

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use Smartflow::Blocks;
use Smartflow::Keys;

no_shuffle();

unlink server_root() . '/keys-directives.state';

# Test::Nginx restarts nginx for every block: the keys of one block reach
# the next through the state file.  The cache module stays out: the OpenMP
# runtime its FAISS brings loses a few bytes at start-up once threads
# exist, which valgrind would report.
our $MainConfig = <<'_EOC_';
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_policy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_audit_module.so;

    thread_pool sf threads=1;
_EOC_

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_keys_zone keys 64k state=keys-directives.state thread_pool=sf;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_route echo-alias demo model=priced-echo;
    smartflow_price PRICED-* 0.15 0.6;
    smartflow_price * 1000 1000;
_EOC_

our $Locations = <<'_EOC_';
    location = /v1/chat/completions {
        smartflow_api chat;
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

run_tests();

__DATA__

=== TEST 1: a zone without a state file needs no thread pool (all four modules)
--- main_config
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_policy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_cache_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_audit_module.so;
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_keys_zone keys 64k;
--- pipelined_requests eval
["POST /api/auth/virtual-keys\n{\"name\":\"in-memory\"}",
 "GET /api/auth/virtual-keys"]
--- error_code eval
[201, 200]
--- response_body_like eval
['"name":"in-memory","key":"sk-sf-', '"data":\[\{"id":"vk_1","object":"virtual_key","name":"in-memory",']
--- no_error_log
[error]



=== TEST 2: a key for the prices
--- request
POST /api/auth/virtual-keys
{"name":"priced"}
--- error_code: 201
--- no_error_log
[error]



=== TEST 3: a price is found by the model the provider is asked for, first match wins
--- more_headers
Authorization: Bearer %KEY(priced)%
--- request
POST /v1/chat/completions
{"model":"echo-alias","messages":[{"role":"user","content":"a b c d e f g h i j"}]}
--- response_body_like chomp
"usage":\{"prompt_tokens":10,"completion_tokens":11,"total_tokens":21\}
--- no_error_log
[error]



=== TEST 4: 10 tokens at 0.15 and 11 at 0.6 USD a million: 0.0000081, rounded up to a micro-dollar
--- request
GET /api/auth/virtual-keys/%ID(priced)%/usage
--- response_body_like chomp
"spend_usd":0.000009,
--- no_error_log
[error]



=== TEST 5: the catch-all price for the rest
--- more_headers
Authorization: Bearer %KEY(priced)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"x"}]}
--- response_body_like chomp
"usage":\{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3\}
--- no_error_log
[error]



=== TEST 6: 3 tokens at 1000 USD a million
--- request
GET /api/auth/virtual-keys/%ID(priced)%/usage
--- response_body_like chomp
"spend_usd":0.003009,
--- no_error_log
[error]



=== TEST 7: a zone size that is no size
--- http_config
    smartflow_keys_zone keys lots;
--- must_die
--- error_log
invalid smartflow_keys_zone size "lots"



=== TEST 8: a zone too small
--- http_config
    smartflow_keys_zone keys 16k;
--- must_die
--- error_log
smartflow_keys_zone "keys" is too small



=== TEST 9: an unknown parameter
--- http_config
    smartflow_keys_zone keys 1m persist=on;
--- must_die
--- error_log
invalid smartflow_keys_zone parameter "persist=on"



=== TEST 10: an empty state path
--- http_config
    smartflow_keys_zone keys 1m state=;
--- must_die
--- error_log
invalid smartflow_keys_zone parameter "state="



=== TEST 11: two keys zones
--- http_config
    smartflow_keys_zone keys 1m;
    smartflow_keys_zone more 1m;
--- must_die
--- error_log
"smartflow_keys_zone" directive is duplicate



=== TEST 12: a thread pool without a state file
--- http_config
    smartflow_keys_zone keys 1m thread_pool=sf;
--- must_die
--- error_log
smartflow_keys_zone "keys": thread_pool= is used only with state=



=== TEST 13: a thread pool nobody declared
--- http_config
    smartflow_keys_zone keys 1m state=keys.state thread_pool=nosuch;
--- must_die
--- error_log
unknown thread pool "nosuch"



=== TEST 14: the name of the status zone
--- http_config
    smartflow_zone shared 1m;
    smartflow_keys_zone shared 1m;
--- must_die
--- error_log
smartflow zone "shared" is already declared



=== TEST 15: only at http level
--- config
    smartflow_keys_zone keys 1m;
--- must_die
--- error_log
"smartflow_keys_zone" directive is not allowed here



=== TEST 16: a price that is no number
--- http_config
    smartflow_price gpt-4o cheap 10;
--- must_die
--- error_log
invalid smartflow_price "cheap": USD per million tokens, at most 6 decimals



=== TEST 17: a negative price
--- http_config
    smartflow_price gpt-4o 2.5 -10;
--- must_die
--- error_log
invalid smartflow_price "-10"



=== TEST 18: a price finer than a micro-dollar a million tokens
--- http_config
    smartflow_price gpt-4o 0.0000001 1;
--- must_die
--- error_log
invalid smartflow_price "0.0000001"



=== TEST 19: a price without the output price
--- http_config
    smartflow_price gpt-4o 2.5;
--- must_die
--- error_log
invalid number of arguments in "smartflow_price" directive
