# smartflow_policy_models: a location's allow-list of model names (globs,
# any case), inherited from the server and http levels; any other model
# is refused with 403 model_not_allowed before it reaches a provider.

use Test::Nginx::Socket 'no_plan';

our $MainConfig = <<'_EOC_';
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_policy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_cache_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_audit_module.so;
_EOC_

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;

    # nothing listens there: a request that got through would fail with 502
    upstream sf_down {
        server 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
    }

    smartflow_provider demo type=echo;
    smartflow_provider down type=openai upstream=http://sf_down path=/v1;

    smartflow_route smartflow-echo demo;
    smartflow_route echo-mini demo;
    smartflow_route echo-large demo;
    smartflow_route fast demo model=echo-large;
    smartflow_route gpt-* down;
_EOC_

add_block_preprocessor(sub {
    my $block = shift;

    $block->set_value('main_config', $MainConfig)
        unless defined $block->main_config;
    $block->set_value('http_config', $HttpConfig)
        unless defined $block->http_config;
    $block->set_value('more_headers',
                      'Authorization: Bearer sk-smartflow-test-0123456789')
        unless defined $block->more_headers;
});

sub chat {
    my $model = shift;
    return "POST /v1/chat/completions\n"
           . qq/{"model":"$model","messages":[{"role":"user","content":"hi"}]}/;
}

run_tests();

__DATA__

=== TEST 1: an allowed model passes
--- config
    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_policy_models smartflow-echo;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location @smartflow_error {
        smartflow_api error;
    }
--- request eval
::chat('smartflow-echo')
--- response_body_like chomp
"content":"Echo: hi"
--- no_error_log
[error]



=== TEST 2: any other model is refused, and never reaches its provider
--- config
    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_policy_models smartflow-echo;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location @smartflow_error {
        smartflow_api error;
    }
--- request eval
::chat('gpt-4o')
--- error_code: 403
--- response_headers
Content-Type: application/json
--- response_body chomp
{"error":{"message":"The model `gpt-4o` is not allowed by this endpoint's policy.","type":"permission_error","param":"model","code":"model_not_allowed"}}
--- error_log
smartflow proxy: The model `gpt-4o` is not allowed by this endpoint's policy. (status 403, code model_not_allowed)
--- no_error_log
connect() failed



=== TEST 3: globs, matched in any case
--- config
    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_policy_models echo-* Smart*;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location @smartflow_error {
        smartflow_api error;
    }
--- request eval
[ ::chat('echo-mini'), ::chat('ECHO-LARGE'), ::chat('SmartFlow-Echo') ]
--- error_code eval
[200, 200, 200]
--- response_body_like eval
[
qr/"content":"Echo: hi"/,
qr/"content":"Echo: hi"/,
qr/"content":"Echo: hi"/,
]
--- no_error_log
[error]



=== TEST 4: a glob matches the whole name
--- config
    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_policy_models echo-*;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location @smartflow_error {
        smartflow_api error;
    }
--- request eval
::chat('smartflow-echo')
--- error_code: 403
--- response_body_like chomp
"param":"model","code":"model_not_allowed"
--- error_log
smartflow proxy: The model `smartflow-echo` is not allowed



=== TEST 5: the client's model name is checked, not the name a route sends on
--- config
    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_policy_models fast;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location @smartflow_error {
        smartflow_api error;
    }
--- request eval
::chat('fast')
--- response_body_like chomp
"model":"fast"
--- no_error_log
[error]



=== TEST 6: ... so the upstream name of an alias is no way around the list
--- config
    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_policy_models fast;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location @smartflow_error {
        smartflow_api error;
    }
--- request eval
::chat('echo-large')
--- error_code: 403
--- response_body_like chomp
"code":"model_not_allowed"
--- error_log
smartflow proxy: The model `echo-large` is not allowed



=== TEST 7: an allow-list at server level holds for its locations
--- config
    smartflow_policy_models echo-mini;

    location = /v1/chat/completions {
        smartflow_api chat;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location @smartflow_error {
        smartflow_api error;
    }
--- request eval
::chat('echo-large')
--- error_code: 403
--- response_body_like chomp
"code":"model_not_allowed"
--- error_log
smartflow proxy: The model `echo-large` is not allowed



=== TEST 8: ... and lets its models through
--- config
    smartflow_policy_models echo-mini;

    location = /v1/chat/completions {
        smartflow_api chat;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location @smartflow_error {
        smartflow_api error;
    }
--- request eval
::chat('echo-mini')
--- response_body_like chomp
"content":"Echo: hi"
--- no_error_log
[error]



=== TEST 9: an allow-list at http level holds in every location
--- http_config eval
$::HttpConfig . "    smartflow_policy_models smartflow-echo;\n"
--- config
    location = /v1/chat/completions {
        smartflow_api chat;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /v1/completions {
        smartflow_api completions;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /v1/embeddings {
        smartflow_api embeddings;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location @smartflow_error {
        smartflow_api error;
    }
--- request eval
[
"POST /v1/completions\n" . '{"model":"echo-mini","prompt":"hi"}',
"POST /v1/embeddings\n" . '{"model":"echo-mini","input":"hi"}',
]
--- error_code eval
[403, 403]
--- response_body_like eval
[
qr/"code":"model_not_allowed"/,
qr/"code":"model_not_allowed"/,
]
--- error_log
smartflow proxy: The model `echo-mini` is not allowed



=== TEST 10: a location's own list replaces the server's
--- config
    smartflow_policy_models echo-mini;

    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_policy_models echo-large;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location @smartflow_error {
        smartflow_api error;
    }
--- request eval
::chat('echo-large')
--- response_body_like chomp
"content":"Echo: hi"
--- no_error_log
[error]



=== TEST 11: ... entirely: the server's models are not added to it
--- config
    smartflow_policy_models echo-mini;

    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_policy_models echo-large;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location @smartflow_error {
        smartflow_api error;
    }
--- request eval
::chat('echo-mini')
--- error_code: 403
--- response_body_like chomp
"code":"model_not_allowed"
--- error_log
smartflow proxy: The model `echo-mini` is not allowed



=== TEST 12: different locations, different lists
--- config
    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_policy_models echo-mini;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /team/v1/chat/completions {
        smartflow_api chat;
        smartflow_policy_models echo-large;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location @smartflow_error {
        smartflow_api error;
    }
--- request eval
[
"POST /team/v1/chat/completions\n"
. '{"model":"echo-large","messages":[{"role":"user","content":"hi"}]}',
::chat('echo-mini'),
]
--- error_code eval
[200, 200]
--- response_body_like eval
[
qr/"model":"echo-large"/,
qr/"model":"echo-mini"/,
]
--- no_error_log
[error]



=== TEST 13: a model no route knows is 404, whatever the list says
--- config
    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_policy_models smartflow-echo;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location @smartflow_error {
        smartflow_api error;
    }
--- request eval
::chat('llama-3')
--- error_code: 404
--- response_body_like chomp
"code":"model_not_found"
--- error_log
smartflow proxy: The model `llama-3` does not exist



=== TEST 14: the key is checked before the policy
--- config
    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_policy_models smartflow-echo;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location @smartflow_error {
        smartflow_api error;
    }
--- more_headers
x-api-key: sk-wrong-secret-4242424242
--- request eval
::chat('gpt-4o')
--- error_code: 401
--- response_body_like chomp
"code":"invalid_api_key"
--- error_log
smartflow proxy: Incorrect API key provided
--- no_error_log
model_not_allowed
