# What a virtual key may do: unknown, revoked and expired keys get 401,
# models outside the key's globs 403, requests and tokens per minute and
# budgets 429 with OpenAI's headers and codes; usage is settled after the
# response; the master key has no limits.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use Smartflow::Blocks;
use Smartflow::Mock;
use Smartflow::Keys;

no_shuffle();

unlink server_root() . '/keys-enforce.state';

# the cache module stays out: the OpenMP runtime its FAISS brings loses a
# few bytes at start-up once threads exist, which valgrind would report
our $MainConfig = <<'_EOC_';
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_policy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_audit_module.so;

    thread_pool sf threads=1;
_EOC_

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_keys_zone keys 1m state=keys-enforce.state thread_pool=sf;

    upstream sf_openai {
        server 127.0.0.1:$TEST_NGINX_MOCK_PORT;
        keepalive 8;
    }

    smartflow_provider openai type=openai upstream=http://sf_openai
                       key=sk-provider-test-key;
    smartflow_provider demo type=echo;

    smartflow_route gpt-* openai;
    smartflow_route smartflow-echo demo;

    # USD per million tokens: 100 is 0.0001 USD a token
    smartflow_price smartflow-echo 100 100;
    smartflow_price gpt-4o* 2.5 10;
_EOC_

our $Locations = <<'_EOC_';
    location = /v1/chat/completions {
        smartflow_api chat;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
        add_header X-Key-Id $smartflow_key_id always;
        add_header X-Team $smartflow_team always;
    }

    location = /v1/models {
        smartflow_api models;
        error_page 401 405 @smartflow_error;
    }

    location = /health {
        smartflow_api health;
    }

    include $TEST_NGINX_SMARTFLOW_CONF/smartflow_admin.conf;

    location @smartflow_error {
        smartflow_api error;
        add_header X-Key-Id $smartflow_key_id always;
        add_header X-Team $smartflow_team always;
    }
_EOC_

Smartflow::Blocks::defaults(main_config => $MainConfig,
                            http_config => $HttpConfig,
                            config => $Locations,
                            more_headers => $OpenAIKey,
                            then => \&Smartflow::Keys::substitute);

run_tests();

__DATA__

=== TEST 1: a key with 3 requests a minute, in team ml
--- request
POST /api/auth/virtual-keys
{"name":"rpm3","team":"ml","rpm":3}
--- error_code: 201
--- no_error_log
[error]



=== TEST 2: first request: the limit and what is left
--- more_headers
Authorization: Bearer %KEY(rpm3)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"one"}]}
--- response_headers_like
x-ratelimit-limit-requests: 3
x-ratelimit-remaining-requests: 2
x-ratelimit-reset-requests: \d+s
X-Key-Id: vk_1
X-Team: ml
x-ratelimit-limit-tokens:
Retry-After:
--- response_body_like chomp
"content":"Echo: one"
--- no_error_log
[error]



=== TEST 3: second request, as x-api-key
--- more_headers
x-api-key: %KEY(rpm3)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"two"}]}
--- response_headers_like
x-ratelimit-limit-requests: 3
x-ratelimit-remaining-requests: 1
--- response_body_like chomp
"content":"Echo: two"
--- no_error_log
[error]



=== TEST 4: third request, streamed
--- more_headers
Authorization: Bearer %KEY(rpm3)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","stream":true,"messages":[{"role":"user","content":"three"}]}
--- response_headers_like
x-ratelimit-remaining-requests: 0
Content-Type: text/event-stream
--- response_body_like chomp
data: \[DONE\]
--- no_error_log
[error]



=== TEST 5: the fourth is over the limit
--- more_headers
Authorization: Bearer %KEY(rpm3)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"four"}]}
--- error_code: 429
--- response_headers_like
Content-Type: application/json
x-ratelimit-limit-requests: 3
x-ratelimit-remaining-requests: 0
x-ratelimit-reset-requests: ([1-9]|[1-5][0-9]|60)s
Retry-After: ([1-9]|[1-5][0-9]|60)
X-Key-Id: vk_1
--- response_body_like chomp
^\{"error":\{"message":"Rate limit reached for virtual key vk_1 on requests per min \(RPM\): Limit 3, Used 3, Requested 1\. Please try again in \d+s\.","type":"requests","param":null,"code":"rate_limit_exceeded"\}\}$
--- error_log
smartflow proxy: Rate limit reached for virtual key vk_1 on requests per min (RPM): Limit 3, Used 3, Requested 1.



=== TEST 6: refused again; a refusal does not count
--- more_headers
Authorization: Bearer %KEY(rpm3)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"five"}]}
--- error_code: 429
--- response_body_like chomp
Limit 3, Used 3, Requested 1
--- error_log
smartflow proxy: Rate limit reached for virtual key vk_1



=== TEST 7: the master key has no limits and no such headers
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"master"}]}
--- response_headers
!x-ratelimit-limit-requests
!x-ratelimit-remaining-requests
X-Key-Id: master
X-Team:
--- response_body_like chomp
"content":"Echo: master"
--- no_error_log
[error]



=== TEST 8: usage: three requests in the window, their tokens and cost
--- request
GET /api/auth/virtual-keys/%ID(rpm3)%/usage
--- response_body_like chomp
^\{"id":"vk_1","object":"virtual_key.usage","period":"total","period_start":null,"period_end":null,"requests":3,"prompt_tokens":\d+,"completion_tokens":6,"total_tokens":\d+,"spend_usd":0\.00\d+,"reserved_usd":0,"budget_usd":null,"remaining_usd":null,"window":\{"seconds":60,"started_at":\d+,"reset_seconds":\d+,"requests":3,"tokens":\d+,"reserved_tokens":0,"rpm":3,"tpm":null,"remaining_requests":0,"remaining_tokens":null\},"lifetime":\{"requests":3,"prompt_tokens":\d+,"completion_tokens":6,"total_tokens":\d+,"spend_usd":0\.00\d+\}\}$
--- no_error_log
[error]



=== TEST 9: /v1/models takes a limited key without counting it
--- more_headers
Authorization: Bearer %KEY(rpm3)%
--- request
GET /v1/models
--- response_body_like chomp
^\{"object":"list","data":\[
--- no_error_log
[error]



=== TEST 10: a key with no requests at all
--- request
POST /api/auth/virtual-keys
{"name":"frozen","rpm":0}
--- error_code: 201
--- no_error_log
[error]



=== TEST 11: is always over its limit
--- more_headers
Authorization: Bearer %KEY(frozen)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"hi"}]}
--- error_code: 429
--- response_headers_like
x-ratelimit-limit-requests: 0
x-ratelimit-remaining-requests: 0
--- response_body_like chomp
Limit 0, Used 0, Requested 1
--- error_log
smartflow proxy: Rate limit reached for virtual key vk_2



=== TEST 12: a key for some models only
--- request
POST /api/auth/virtual-keys
{"name":"narrow","models":["gpt-4o-mini","smartflow-*"]}
--- error_code: 201
--- no_error_log
[error]



=== TEST 13: a model outside its globs
--- more_headers
Authorization: Bearer %KEY(narrow)%
--- request
POST /v1/chat/completions
{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}
--- error_code: 403
--- response_headers
Content-Type: application/json
X-Key-Id: vk_3
--- response_body chomp
{"error":{"message":"The model `gpt-4o` is not allowed for this API key.","type":"permission_error","param":"model","code":"model_not_allowed"}}
--- error_log
smartflow proxy: The model `gpt-4o` is not allowed for this API key. (status 403, code model_not_allowed)



=== TEST 14: an allowed model, in another case, goes to the provider
--- more_headers
Authorization: Bearer %KEY(narrow)%
--- request
POST /v1/chat/completions
{"model":"GPT-4o-Mini","messages":[{"role":"user","content":"hi"}]}
--- response_headers
x-mock-authorization: Bearer sk-provider-test-key
x-mock-model: GPT-4o-Mini
--- response_body_like chomp
"content":"mock reply to: hi"
--- no_error_log
[error]



=== TEST 15: a glob
--- more_headers
Authorization: Bearer %KEY(narrow)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"glob"}]}
--- response_body_like chomp
"content":"Echo: glob"
--- no_error_log
[error]



=== TEST 16: an unknown model is still the router's 404
--- more_headers
Authorization: Bearer %KEY(narrow)%
--- request
POST /v1/chat/completions
{"model":"nope","messages":[{"role":"user","content":"hi"}]}
--- error_code: 404
--- response_body_like chomp
"code":"model_not_found"
--- error_log
smartflow proxy: The model `nope` does not exist



=== TEST 17: a key with 60 tokens a minute
--- request
POST /api/auth/virtual-keys
{"name":"tpm60","tpm":60}
--- error_code: 201
--- no_error_log
[error]



=== TEST 18: a small request: its estimate (18 tokens) fits, its usage is counted
--- more_headers
Authorization: Bearer %KEY(tpm60)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"hi"}]}
--- response_headers_like
x-ratelimit-limit-tokens: 60
x-ratelimit-remaining-tokens: 42
x-ratelimit-reset-tokens: \d+s
x-ratelimit-limit-requests:
--- response_body_like chomp
"usage":\{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3\}
--- no_error_log
[error]



=== TEST 19: the window holds the 3 tokens used
--- request
GET /api/auth/virtual-keys/%ID(tpm60)%/usage
--- response_body_like chomp
"window":\{"seconds":60,"started_at":\d+,"reset_seconds":\d+,"requests":1,"tokens":3,"reserved_tokens":0,"rpm":null,"tpm":60,"remaining_requests":null,"remaining_tokens":57\}
--- no_error_log
[error]



=== TEST 20: a request that would surely exceed the window is refused up front
--- more_headers
Authorization: Bearer %KEY(tpm60)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","max_tokens":40,"messages":[{"role":"user","content":"hi"}]}
--- error_code: 429
--- response_headers_like
x-ratelimit-limit-tokens: 60
x-ratelimit-remaining-tokens: 57
Retry-After: \d+
--- response_body_like chomp
^\{"error":\{"message":"Rate limit reached for virtual key vk_4 on tokens per min \(TPM\): Limit 60, Used 3, Requested 62\. Please try again in \d+s\.","type":"tokens","param":null,"code":"rate_limit_exceeded"\}\}$
--- error_log
smartflow proxy: Rate limit reached for virtual key vk_4 on tokens per min (TPM): Limit 60, Used 3, Requested 62.



=== TEST 21: max_completion_tokens counts the same way
--- more_headers
Authorization: Bearer %KEY(tpm60)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","max_completion_tokens":40,"messages":[{"role":"user","content":"hi"}]}
--- error_code: 429
--- response_body_like chomp
"type":"tokens","param":null,"code":"rate_limit_exceeded"
--- error_log
smartflow proxy: Rate limit reached for virtual key vk_4 on tokens per min (TPM)



=== TEST 22: a key with a budget of 0.01 USD
--- request
POST /api/auth/virtual-keys
{"name":"budget","budget_usd":0.01}
--- error_code: 201
--- no_error_log
[error]



=== TEST 23: forty words: estimated at 0.0037 USD, they cost 0.0081
--- more_headers
Authorization: Bearer %KEY(budget)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a"}]}
--- response_body_like chomp
"usage":\{"prompt_tokens":40,"completion_tokens":41,"total_tokens":81\}
--- no_error_log
[error]



=== TEST 24: spend is settled from the usage
--- request
GET /api/auth/virtual-keys/%ID(budget)%/usage
--- response_body_like chomp
"requests":1,"prompt_tokens":40,"completion_tokens":41,"total_tokens":81,"spend_usd":0.0081,"reserved_usd":0,"budget_usd":0.01,"remaining_usd":0.0019,
--- no_error_log
[error]



=== TEST 25: the same request may cost more than is left
--- more_headers
Authorization: Bearer %KEY(budget)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a a"}]}
--- error_code: 429
--- response_headers
Content-Type: application/json
X-Key-Id: vk_5
!Retry-After
--- response_body chomp
{"error":{"message":"You exceeded your current quota: virtual key vk_5 has 0.0019 USD of its 0.01 USD budget left, less than the 0.0037 USD this request may cost.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}
--- error_log
smartflow proxy: You exceeded your current quota: virtual key vk_5 has 0.0019 USD of its 0.01 USD budget left, less than the 0.0037 USD this request may cost. (status 429, code insufficient_quota)



=== TEST 26: a smaller request still fits
--- more_headers
Authorization: Bearer %KEY(budget)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"b"}]}
--- response_body_like chomp
"content":"Echo: b"
--- no_error_log
[error]



=== TEST 27: a lower budget leaves nothing
--- request
PATCH /api/auth/virtual-keys/%ID(budget)%
{"budget_usd":0.008}
--- response_body_like chomp
"budget_usd":0.008,
--- no_error_log
[error]



=== TEST 28: a spent budget refuses every request
--- more_headers
Authorization: Bearer %KEY(budget)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"b"}]}
--- error_code: 429
--- response_body chomp
{"error":{"message":"You exceeded your current quota: virtual key vk_5 has spent 0.0084 USD of its 0.008 USD total budget.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}
--- error_log
smartflow proxy: You exceeded your current quota: virtual key vk_5 has spent 0.0084 USD of its 0.008 USD total budget.



=== TEST 29: a daily period starts a new period: the budget is free again
--- request
PATCH /api/auth/virtual-keys/%ID(budget)%
{"budget_period":"daily"}
--- response_body_like chomp
"budget_usd":0.008,"budget_period":"daily",
--- no_error_log
[error]



=== TEST 30: the day's usage starts at zero; the key's lifetime keeps it all, refused requests counted
--- request
GET /api/auth/virtual-keys/%ID(budget)%/usage
--- response_body_like chomp
^\{"id":"vk_5","object":"virtual_key.usage","period":"daily","period_start":\d+,"period_end":\d+,"requests":0,"prompt_tokens":0,"completion_tokens":0,"total_tokens":0,"spend_usd":0,"reserved_usd":0,"budget_usd":0.008,"remaining_usd":0.008,.*"lifetime":\{"requests":4,"prompt_tokens":41,"completion_tokens":43,"total_tokens":84,"spend_usd":0.0084\}\}$
--- no_error_log
[error]



=== TEST 31: a key with a budget for the provider's model
--- request
POST /api/auth/virtual-keys
{"name":"provider","budget_usd":0.001}
--- error_code: 201
--- no_error_log
[error]



=== TEST 32: a completion that may cost more than the budget never leaves
--- more_headers
Authorization: Bearer %KEY(provider)%
--- request
POST /v1/chat/completions
{"model":"gpt-4o","max_tokens":1000,"messages":[{"role":"user","content":"hi"}]}
--- error_code: 429
--- response_headers
!x-mock-model
--- response_body chomp
{"error":{"message":"You exceeded your current quota: virtual key vk_6 has 0.001 USD of its 0.001 USD budget left, less than the 0.01005 USD this request may cost.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}
--- error_log
smartflow proxy: You exceeded your current quota: virtual key vk_6



=== TEST 33: one that fits goes out
--- more_headers
Authorization: Bearer %KEY(provider)%
--- request
POST /v1/chat/completions
{"model":"gpt-4o","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}
--- response_headers
x-mock-model: gpt-4o
--- response_body_like chomp
"content":"mock reply to: hi"
--- no_error_log
[error]



=== TEST 34: the usage the provider reported is charged at its prices, and the reservation is released
1 prompt and 4 completion tokens at 2.5 and 10 USD per million: 42.5
micro-dollars, rounded up to 43.
--- request
GET /api/auth/virtual-keys/%ID(provider)%/usage
--- response_body_like chomp
"requests":2,"prompt_tokens":1,"completion_tokens":4,"total_tokens":5,"spend_usd":0.000043,"reserved_usd":0,"budget_usd":0.001,"remaining_usd":0.000957,
--- no_error_log
[error]



=== TEST 35: an unknown sk-sf- key
--- more_headers
Authorization: Bearer sk-sf-000000000000000000000000000000000000000000000000
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"hi"}]}
--- error_code: 401
--- response_headers
Content-Type: application/json
!X-Key-Id
--- response_body chomp
{"error":{"message":"Incorrect API key provided: sk-sf-****.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}
--- error_log
smartflow proxy: Incorrect API key provided: sk-sf-****. (status 401, code invalid_api_key)



=== TEST 36: an sk-sf- key of the wrong length is no virtual key
--- more_headers
x-api-key: sk-sf-0123
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"hi"}]}
--- error_code: 401
--- response_body_like chomp
"code":"invalid_api_key"
--- error_log
smartflow proxy: Incorrect API key provided: sk-sf-****.



=== TEST 37: a refused key with a body on a keepalive connection leaves the next request alone
--- more_headers
x-api-key: sk-sf-000000000000000000000000000000000000000000000000
--- pipelined_requests eval
["POST /v1/chat/completions\n{\"model\":\"smartflow-echo\",\"messages\":[]}",
 "GET /health"]
--- error_code eval
[401, 200]
--- response_body_like eval
['"code":"invalid_api_key"', '"status":"ok"']
--- no_error_log
client sent invalid method



=== TEST 38: revoke the limited key
--- request
DELETE /api/auth/virtual-keys/%ID(rpm3)%
--- response_body_like chomp
"status":"revoked"
--- no_error_log
[error]



=== TEST 39: on its next use the key is revoked
--- more_headers
Authorization: Bearer %KEY(rpm3)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"hi"}]}
--- error_code: 401
--- response_headers
!x-ratelimit-limit-requests
--- response_body chomp
{"error":{"message":"The API key %PREFIX(rpm3)%**** has been revoked.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}
--- error_log
smartflow proxy: The API key %PREFIX(rpm3)%**** has been revoked.
