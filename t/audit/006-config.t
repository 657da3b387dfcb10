# The audit directives: a working trail in nginx's one-process mode, and
# every configuration error stops nginx with a line that says why.

use Test::Nginx::Socket 'no_plan';

no_shuffle();

our $Key = 'a1' x 32;

our $MainConfig = <<'_EOC_';
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_policy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_cache_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_audit_module.so;
_EOC_

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_audit_dir $TEST_NGINX_SERVER_ROOT/audit-config;
    smartflow_audit_key_file $TEST_NGINX_SERVER_ROOT/html/audit.keys;
_EOC_

our $Locations = <<'_EOC_';
    location = /v1/chat/completions {
        smartflow_api chat;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /v1/embeddings {
        smartflow_api embeddings;
        smartflow_audit off;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    include $TEST_NGINX_SMARTFLOW_CONF/smartflow_audit.conf;
_EOC_

add_block_preprocessor(sub {
    my $block = shift;

    $block->set_value('main_config', $MainConfig)
        unless defined $block->main_config;
    $block->set_value('http_config', $HttpConfig)
        unless defined $block->http_config;
    $block->set_value('config', $Locations)
        unless defined $block->config;
    $block->set_value('user_files', ">>> audit.keys\nk1 $::Key - -\n")
        unless defined $block->user_files;
});

system('rm', '-rf', server_root() . '/audit-config');

# S3 credentials come from a file or these
delete @ENV{qw(AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY)};

run_tests();

__DATA__

=== TEST 1: a request is recorded, one with "smartflow_audit off" is not
--- more_headers eval
[
'Authorization: Bearer sk-smartflow-test-0123456789',
'Authorization: Bearer sk-smartflow-test-0123456789',
'Authorization: Bearer sk-smartflow-test-0123456789',
]
--- request eval
[
"POST /v1/chat/completions\n" . '{"model":"smartflow-echo","messages":[{"role":"user","content":"hi"}]}',
"POST /v1/embeddings\n" . '{"model":"smartflow-echo","input":"not audited"}',
"GET /api/audit/status",
]
--- response_headers_like eval
[
'Smartflow-Audit-Receipt: id=[0-9a-f]{32}; request-sha256=[0-9a-f]{64}',
'',
'',
]
--- response_body_like eval
[
qr/"content":"Echo: hi"/,
qr/"object":"embedding"/,
qr/^\{"records":1,/,
]
--- wait: 0.1
--- no_error_log
[error]



=== TEST 2: smartflow_audit_dir without a key file
--- http_config
    smartflow_audit_dir audit-config;
--- config
--- must_die
--- error_log
"smartflow_audit_dir" needs "smartflow_audit_key_file"



=== TEST 3: a key file that is not there
--- http_config
    smartflow_audit_dir audit-config;
    smartflow_audit_key_file /nonexistent/audit.keys;
--- config
--- must_die
--- error_log
smartflow audit: cannot open key file "/nonexistent/audit.keys"



=== TEST 4: a key too short
--- user_files
>>> audit.keys
k1 00112233
--- must_die
--- error_log
line 1: the key must be at least 32 bytes in hex



=== TEST 5: a validity time that is not a number
--- user_files eval
">>> audit.keys\n# rotated yearly\nk1 $::Key 2026-01-01 -\n"
--- must_die
--- error_log
line 2: times are epoch seconds or "-"



=== TEST 6: a key id twice
--- user_files eval
">>> audit.keys\nk1 $::Key - -\nk1 $::Key 1700000000 -\n"
--- must_die
--- error_log
line 2: key id "k1" repeated



=== TEST 7: an empty key file
--- user_files
>>> audit.keys
# nothing
--- must_die
--- error_log
key file "



=== TEST 8: a time-stamping authority that is not a URL
--- http_config eval
$::HttpConfig . "    smartflow_audit_tsa tsa.example.com;\n"
--- must_die
--- error_log
"smartflow_audit_tsa" takes an http:// or https:// URL



=== TEST 9: segments smaller than a record
--- http_config eval
$::HttpConfig . "    smartflow_audit_segment_size 100;\n"
--- must_die
--- error_log
"smartflow_audit_segment_size" must be at least 1k



=== TEST 9b: a record buffer larger than the zone keeps
--- http_config eval
$::HttpConfig . "    smartflow_audit_buffer 2m;\n"
--- must_die
--- error_log
"smartflow_audit_buffer" directive must be at most 1m



=== TEST 10: an unknown audit api
--- config
    location = /x {
        smartflow_audit_api everything;
    }
--- must_die
--- error_log
smartflow audit: unknown api "everything" (status, proof, logs, metrics)



=== TEST 11: smartflow_audit_dir twice
--- http_config eval
$::HttpConfig . "    smartflow_audit_dir other;\n"
--- must_die
--- error_log
"smartflow_audit_dir" directive is duplicate



=== TEST 12: an S3 endpoint that is not a URL
--- http_config eval
$::HttpConfig . "    smartflow_audit_s3 s3.example.com;\n"
    . "    smartflow_audit_s3_bucket b;\n"
--- must_die
--- error_log
"smartflow_audit_s3" takes an http:// or https:// URL



=== TEST 13: an S3 endpoint without a bucket
--- http_config eval
$::HttpConfig . "    smartflow_audit_s3 http://127.0.0.1:9/;\n"
--- must_die
--- error_log
"smartflow_audit_s3" needs "smartflow_audit_s3_bucket" (a bucket name)



=== TEST 14: S3 without credentials, none in the environment
--- http_config eval
$::HttpConfig . "    smartflow_audit_s3 http://127.0.0.1:9/;\n"
    . "    smartflow_audit_s3_bucket b;\n"
--- must_die
--- error_log
"smartflow_audit_s3" needs "smartflow_audit_s3_credentials" or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment



=== TEST 15: S3 credentials without a secret
--- http_config eval
$::HttpConfig . "    smartflow_audit_s3 http://127.0.0.1:9/;\n"
    . "    smartflow_audit_s3_bucket b;\n"
    . "    smartflow_audit_s3_credentials \$TEST_NGINX_SERVER_ROOT/html/s3.cred;\n"
--- user_files eval
">>> audit.keys\nk1 $::Key - -\n>>> s3.cred\nAKIAONLYANID\n"
--- must_die
--- error_log
must hold "ACCESS_KEY_ID SECRET_ACCESS_KEY"



=== TEST 16: an unknown Object Lock mode
--- http_config eval
$::HttpConfig . "    smartflow_audit_s3_lock_mode legal-hold;\n"
--- must_die
--- error_log
invalid value "legal-hold"



=== TEST 17: the audit API without an audit trail: 503, and why in the log
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
--- request
GET /api/audit/status
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
--- error_code: 503
--- response_body_like: "code":"audit_off"
--- error_log
smartflow audit: "/api/audit/status" needs the audit trail, which is not configured (smartflow_audit_dir)



=== TEST 18: a TSA CA file that is not there
--- http_config eval
$::HttpConfig . "    smartflow_audit_tsa_ca /nonexistent/tsa-ca.pem;\n"
--- must_die
--- error_log
smartflow audit: cannot read smartflow_audit_tsa_ca "/nonexistent/tsa-ca.pem" (2: No such file or directory)



=== TEST 19: a TSA CA file with no certificate in it
--- http_config eval
$::HttpConfig . "    smartflow_audit_tsa_ca \$TEST_NGINX_SERVER_ROOT/html/tsa-ca.pem;\n"
--- user_files eval
">>> audit.keys\nk1 $::Key - -\n>>> tsa-ca.pem\nnot a certificate\n"
--- must_die
--- error_log
holds no certificate that can be read
