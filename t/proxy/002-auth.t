# Client authentication: the master key as "Authorization: Bearer KEY" or
# "x-api-key: KEY", OpenAI-style 401 errors that never echo the whole key,
# open /health, and the ACCESS phase playing by nginx's rules ("satisfy",
# allow/deny).

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use Smartflow::Blocks;

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
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
                            config => $Locations);

run_tests();

__DATA__

=== TEST 1: the master key as a Bearer token
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"hello"}]}
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
--- response_body_like chomp
"content":"Echo: hello"
--- no_error_log
[error]



=== TEST 2: the master key in x-api-key
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"hello"}]}
--- more_headers
x-api-key: sk-smartflow-test-0123456789
--- response_body_like chomp
"content":"Echo: hello"
--- no_error_log
[error]



=== TEST 3: the Bearer scheme in any case, with extra spaces
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"hello"}]}
--- more_headers
Authorization: bearer   sk-smartflow-test-0123456789
--- response_body_like chomp
"content":"Echo: hello"
--- no_error_log
[error]



=== TEST 4: no key at all
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"hello"}]}
--- error_code: 401
--- response_headers
Content-Type: application/json
--- response_body chomp
{"error":{"message":"You didn't provide an API key. Send it as \"Authorization: Bearer KEY\" or \"x-api-key: KEY\".","type":"invalid_request_error","param":null,"code":"missing_api_key"}}
--- error_log
smartflow proxy: You didn't provide an API key.



=== TEST 5: a wrong Bearer key: only its first 6 characters are shown
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"hello"}]}
--- more_headers
Authorization: Bearer sk-wrong-secret-4242424242
--- error_code: 401
--- response_headers
Content-Type: application/json
--- response_body chomp
{"error":{"message":"Incorrect API key provided: sk-wro****.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}
--- error_log
smartflow proxy: Incorrect API key provided: sk-wro****. (status 401, code invalid_api_key)



=== TEST 6: a wrong key is not written to the error log either
--- log_level: error
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"hello"}]}
--- more_headers
x-api-key: sk-wrong-secret-4242424242
--- error_code: 401
--- response_body_unlike: secret-4242424242
--- error_log
Incorrect API key provided: sk-wro****.
--- no_error_log
secret-4242424242



=== TEST 7: a wrong key shorter than the shown prefix
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"hello"}]}
--- more_headers
x-api-key: abc
--- error_code: 401
--- response_body chomp
{"error":{"message":"Incorrect API key provided: abc****.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}
--- error_log
smartflow proxy: Incorrect API key provided: abc****.



=== TEST 8: the master key with one character more is wrong
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"hello"}]}
--- more_headers
Authorization: Bearer sk-smartflow-test-01234567890
--- error_code: 401
--- response_body_like chomp
"code":"invalid_api_key"
--- error_log
smartflow proxy: Incorrect API key provided



=== TEST 9: Basic credentials are not an API key
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"hello"}]}
--- more_headers
Authorization: Basic c2stc21hcnRmbG93LXRlc3QtMDEyMzQ1Njc4OQ==
--- error_code: 401
--- response_body_like chomp
"code":"missing_api_key"
--- error_log
smartflow proxy: You didn't provide an API key.



=== TEST 10: an empty Bearer token is no key
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"hello"}]}
--- more_headers
Authorization: Bearer 
--- error_code: 401
--- response_body_like chomp
"code":"missing_api_key"
--- error_log
smartflow proxy: You didn't provide an API key.



=== TEST 11: a wrong Bearer key is not rescued by a right x-api-key
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"hello"}]}
--- more_headers
Authorization: Bearer sk-wrong-secret-4242424242
x-api-key: sk-smartflow-test-0123456789
--- error_code: 401
--- response_body_like chomp
"code":"invalid_api_key"
--- error_log
smartflow proxy: Incorrect API key provided: sk-wro****.



=== TEST 12: the key is checked before the body is looked at
--- request
POST /v1/chat/completions
{"model":
--- more_headers
x-api-key: sk-wrong-secret-4242424242
--- error_code: 401
--- response_body_like chomp
"code":"invalid_api_key"
--- error_log
smartflow proxy: Incorrect API key provided
--- no_error_log
invalid_json



=== TEST 13: /health needs no key
--- request
GET /health
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"providers":\[\{"name":"demo","type":"echo",.*\],"status":"ok","version":"0\.1\.0",
--- no_error_log
[error]



=== TEST 14: /v1/models needs the key
--- request
GET /v1/models
--- error_code: 401
--- response_body chomp
{"error":{"message":"You didn't provide an API key. Send it as \"Authorization: Bearer KEY\" or \"x-api-key: KEY\".","type":"invalid_request_error","param":null,"code":"missing_api_key"}}
--- error_log
smartflow proxy: You didn't provide an API key.



=== TEST 15: /v1/models refuses a wrong key
--- request
GET /v1/models
--- more_headers
x-api-key: sk-wrong-secret-4242424242
--- error_code: 401
--- response_body_like chomp
"code":"invalid_api_key"
--- error_log
smartflow proxy: Incorrect API key provided: sk-wro****.



=== TEST 16: /v1/models with the key
--- request
GET /v1/models
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
--- response_body_like chomp
^\{"object":"list","data":\[\{"id":"smartflow-echo","object":"model","created":\d+,"owned_by":"demo"\}\]\}$
--- no_error_log
[error]



=== TEST 17: "satisfy any" with an allowed address lets a request in without a key
--- config
    location = /v1/chat/completions {
        satisfy any;
        allow 127.0.0.1;
        deny all;

        smartflow_api chat;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location @smartflow_error {
        smartflow_api error;
    }
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"hello"}]}
--- response_body_like chomp
"content":"Echo: hello"
--- no_error_log
[error]



=== TEST 18: "satisfy any" still takes the key from an address that is not allowed
--- config
    location = /v1/chat/completions {
        satisfy any;
        deny all;

        smartflow_api chat;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location @smartflow_error {
        smartflow_api error;
    }
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"hello"}]}
--- more_headers
x-api-key: sk-smartflow-test-0123456789
--- response_body_like chomp
"content":"Echo: hello"
--- no_error_log
[error]



=== TEST 19: "satisfy all" (the default) wants the key even from an allowed address
--- config
    location = /v1/chat/completions {
        allow 127.0.0.1;
        deny all;

        smartflow_api chat;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location @smartflow_error {
        smartflow_api error;
    }
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"hello"}]}
--- error_code: 401
--- response_body_like chomp
"code":"missing_api_key"
--- error_log
smartflow proxy: You didn't provide an API key.



=== TEST 20: a denied address is refused even with the key, in JSON
--- config
    location = /v1/chat/completions {
        deny all;

        smartflow_api chat;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location @smartflow_error {
        smartflow_api error;
    }
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"hello"}]}
--- more_headers
x-api-key: sk-smartflow-test-0123456789
--- error_code: 403
--- response_headers
Content-Type: application/json
--- response_body chomp
{"error":{"message":"You do not have access to this resource.","type":"permission_error","param":null,"code":"forbidden"}}
--- error_log
access forbidden by rule



=== TEST 21: without a master key configured every key is refused
--- http_config
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"hello"}]}
--- more_headers
x-api-key: sk-smartflow-test-0123456789
--- error_code: 401
--- response_body chomp
{"error":{"message":"Incorrect API key provided: no smartflow_master_key is configured on this gateway.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}
--- error_log
smartflow proxy: Incorrect API key provided: no smartflow_master_key is configured
