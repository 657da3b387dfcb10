# Keys, counters and spend survive a restart through the state file (the
# reload, where the zone is reused, is in 004-workers.t: nginx reloads
# with a master process only); the state file holds digests, never
# secrets; a damaged state file stops nginx rather than starting without
# the keys.

use Test::Nginx::Socket 'no_plan';
use File::Path ();
use lib 't/lib';
use Smartflow::Blocks;
use Smartflow::Keys;

no_shuffle();

our $State = server_root() . '/keys-persist.state';

unlink $State;
File::Path::remove_tree(server_root() . '/state-dir');

# the cache module stays out: the OpenMP runtime its FAISS brings loses a
# few bytes at start-up once threads exist, which valgrind would report
our $MainConfig = <<'_EOC_';
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_policy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_audit_module.so;

    thread_pool default threads=1;
_EOC_

# state= without thread_pool= writes in the "default" pool
our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_keys_zone keys 1m state=keys-persist.state;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_price smartflow-echo 100 100;
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

sub slurp {
    open my $fh, '<', $_[0] or return '';
    local $/;
    return scalar <$fh>;
}

run_tests();

__DATA__

=== TEST 1: a key with limits and a budget
--- request
POST /api/auth/virtual-keys
{"name":"keep","team":"ops","rpm":100,"tpm":100000,"budget_usd":1,"budget_period":"monthly","models":["smartflow-*"],"metadata":{"ticket":"OPS-1"}}
--- error_code: 201
--- no_error_log
[error]



=== TEST 2: it is used once
--- more_headers
Authorization: Bearer %KEY(keep)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"one two three"}]}
--- response_headers
x-ratelimit-remaining-requests: 99
--- response_body_like chomp
"usage":\{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7\}
--- no_error_log
[error]



=== TEST 3: a key rotated with a grace period
--- request
POST /api/auth/virtual-keys
{"name":"rot"}
--- error_code: 201
--- no_error_log
[error]



=== TEST 4: its rotation
--- request
POST /api/auth/virtual-keys/%ID(rot)%/rotate
{"grace_seconds":3600}
--- response_body_like chomp
"previous_key_expires_at":\d+\}$
--- no_error_log
[error]



=== TEST 5: and a revoked key
--- request
POST /api/auth/virtual-keys
{"name":"gone"}
--- error_code: 201
--- no_error_log
[error]



=== TEST 6: revoked
--- request
DELETE /api/auth/virtual-keys/%ID(gone)%
--- response_body_like chomp
"status":"revoked"
--- no_error_log
[error]



=== TEST 7: after a restart (another configuration) the key, its counters and spend are back
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_keys_zone keys 1m state=keys-persist.state;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_price smartflow-echo 100 100;
    # restarted
--- request
GET /api/auth/virtual-keys/%ID(keep)%/usage
--- response_body_like chomp
^\{"id":"vk_1","object":"virtual_key.usage","period":"monthly","period_start":\d+,"period_end":\d+,"requests":1,"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"spend_usd":0.0007,"reserved_usd":0,"budget_usd":1,"remaining_usd":0.9993,"window":\{"seconds":60,"started_at":\d+,"reset_seconds":\d+,"requests":1,"tokens":7,"reserved_tokens":0,"rpm":100,"tpm":100000,"remaining_requests":99,"remaining_tokens":99993\},"lifetime":\{"requests":1,"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"spend_usd":0.0007\}\}$
--- error_log
smartflow proxy: 3 keys read from
--- no_error_log
[error]



=== TEST 8: with all its settings
--- request
GET /api/auth/virtual-keys/%ID(keep)%
--- response_body_like chomp
^\{"id":"vk_1","object":"virtual_key","name":"keep","prefix":"%PREFIX(keep)%","status":"active","team":"ops","user":null,"models":\["smartflow-\*"\],"rpm":100,"tpm":100000,"budget_usd":1,"budget_period":"monthly","expires_at":null,"policy_group":null,"cache_threshold":null,"metadata":\{"ticket":"OPS-1"\},"created_at":\d+,"revoked_at":null,"previous_key_expires_at":null\}$
--- no_error_log
[error]



=== TEST 9: the state file keeps digests, never a secret
--- init
my $s = main::slurp($main::State);
Test::More::like($s, qr/"name":"keep"/, 'the key is in the state file');
for my $name (qw(keep rot gone)) {
    Test::More::unlike($s, qr/\Q$Smartflow::Keys::Key{$name}\E/,
                       "no secret of $name in the state file");
}
Test::More::unlike($s, qr/\Q$Smartflow::Keys::OldKey{rot}\E/,
                   'no old secret in the state file');
--- request
GET /api/auth/virtual-keys?limit=100
--- response_body_like chomp
"last_id":"vk_3"
--- no_error_log
[error]



=== TEST 10: the key works and its window goes on counting
--- more_headers
Authorization: Bearer %KEY(keep)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"four"}]}
--- response_headers
x-ratelimit-remaining-requests: 98
--- response_body_like chomp
"content":"Echo: four"
--- no_error_log
[error]



=== TEST 11: the old secret of the rotated key is still in its grace period
--- more_headers
Authorization: Bearer %OLDKEY(rot)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"old"}]}
--- response_body_like chomp
"content":"Echo: old"
--- no_error_log
[error]



=== TEST 12: the new one works too
--- more_headers
Authorization: Bearer %KEY(rot)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"new"}]}
--- response_body_like chomp
"content":"Echo: new"
--- no_error_log
[error]



=== TEST 13: the revoked key stays revoked
--- more_headers
Authorization: Bearer %KEY(gone)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"hi"}]}
--- error_code: 401
--- response_body_like chomp
has been revoked
--- error_log
smartflow proxy: The API key %PREFIX(gone)%**** has been revoked.



=== TEST 14: new keys go on from the last id
--- request
POST /api/auth/virtual-keys
{"name":"after"}
--- error_code: 201
--- response_body_like chomp
^\{"id":"vk_4",
--- no_error_log
[error]



=== TEST 15: a larger zone is a new zone: filled from the state file
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_keys_zone keys 2m state=keys-persist.state;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_price smartflow-echo 100 100;
--- request
GET /api/auth/virtual-keys/%ID(keep)%/usage
--- response_body_like chomp
"requests":2,.*"spend_usd":0.001,.*"window":\{.*"requests":2,
--- error_log
smartflow proxy: 4 keys read from
--- no_error_log
[error]



=== TEST 16: a damaged state file stops nginx
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_keys_zone keys 1m state=html/keys-bad.state;
--- user_files
>>> keys-bad.state
{"smartflow_keys":1,"next_id":3,"keys":[{"id":1,"name":
--- must_die
--- error_log
smartflow proxy: the keys state file
is damaged (invalid JSON near byte



=== TEST 17: a state file of something else
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_keys_zone keys 1m state=html/keys-other.state;
--- user_files
>>> keys-other.state
{"keys":[]}
--- must_die
--- error_log
is damaged (not a keys state file); move it away to start without its keys



=== TEST 18: a key without its secret
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_keys_zone keys 1m state=html/keys-nosecret.state;
--- user_files
>>> keys-nosecret.state
{"smartflow_keys":1,"next_id":2,"keys":[{"id":1,"name":"x","period":"total","prefix":"sk-sf-00000000"}]}
--- must_die
--- error_log
is damaged (a key is malformed)



=== TEST 19: a missing directory for the state file is made
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_keys_zone keys 1m state=state-dir/keys.state;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
--- request
POST /api/auth/virtual-keys
{"name":"in-dir"}
--- error_code: 201
--- error_log
no keys state file
--- no_error_log
[error]



=== TEST 20: and the state file is written there
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_keys_zone keys 1m state=state-dir/keys.state;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
--- init
my $dir = Test::Nginx::Util::server_root() . '/state-dir';
Test::More::ok(-d $dir, 'the state directory exists');
Test::More::like(main::slurp("$dir/keys.state"), qr/"name":"in-dir"/,
                 'the key is in its state file');
--- request
GET /api/auth/virtual-keys
--- response_body_like chomp
"name":"in-dir"
--- no_error_log
[error]
