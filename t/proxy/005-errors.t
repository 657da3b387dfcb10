# What a client gets when something goes wrong: OpenAI-shaped JSON errors
# (type, code, param) with the right status for bad bodies, unknown models
# and endpoints, oversized bodies, unreachable or slow providers; and the
# provider's own error responses passed on unchanged.  Every refusal of
# the gateway's own is logged with a "smartflow proxy: " line.

use lib 't/lib';
use Smartflow::Blocks;
use Smartflow::Mock;
use Test::Nginx::Socket 'no_plan';

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;

    upstream sf_openai {
        server 127.0.0.1:$TEST_NGINX_MOCK_PORT;
        keepalive 8;
    }

    # nothing listens there
    upstream sf_down {
        server 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
    }

    smartflow_provider openai type=openai upstream=http://sf_openai
                       path=/v1 key=sk-provider-test-key;
    smartflow_provider down type=openai upstream=http://sf_down
                       path=/v1 key=sk-provider-test-key;

    smartflow_route gpt-4o openai;
    smartflow_route gpt-3.5-turbo-instruct openai;
    smartflow_route text-embedding-3-small openai;
    smartflow_route gpt-down down;
_EOC_

our $Locations = <<'_EOC_';
    location = /v1/chat/completions {
        smartflow_api chat;
        client_max_body_size 4m;
        client_body_buffer_size 4m;
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

    location = /v1/models {
        smartflow_api models;
        error_page 401 405 @smartflow_error;
    }

    location /v1/ {
        return 404;
        error_page 404 @smartflow_error;
    }

    location @smartflow_error {
        smartflow_api error;
    }
_EOC_

Smartflow::Blocks::defaults(http_config => $HttpConfig,
                            config => $Locations,
                            more_headers => $OpenAIKey);

# a chat body of 4 MiB and a bit: over the snippet's client_max_body_size
our $TooLarge = '{"model":"gpt-4o","messages":[{"role":"user","content":"'
    . ('x' x (4 * 1024 * 1024)) . '"}]}';

sub chunked {
    my ($body, $size) = @_;
    my $out = '';
    for (my $off = 0; $off < length $body; $off += $size) {
        my $piece = substr $body, $off, $size;
        $out .= sprintf("%x\r\n", length $piece) . "$piece\r\n";
    }
    return "${out}0\r\n\r\n";
}

sub nested {
    my $depth = shift;
    return '{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],'
           . '"metadata":' . ('[' x $depth) . (']' x $depth) . '}';
}

run_tests();

__DATA__

=== TEST 1: a body that is not JSON
--- request
POST /v1/chat/completions
{"model": "gpt-4o", "messages": [
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"error":\{"message":"We could not parse the JSON body of your request: invalid JSON near byte \d+\.","type":"invalid_request_error","param":null,"code":"invalid_json"\}\}$
--- error_log
smartflow proxy: We could not parse the JSON body of your request



=== TEST 2: JSON followed by something else
--- request
POST /v1/chat/completions
{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]} {}
--- error_code: 400
--- response_body_like chomp
"code":"invalid_json"
--- error_log
smartflow proxy: We could not parse the JSON body of your request



=== TEST 3: no body at all
--- request
POST /v1/chat/completions
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body chomp
{"error":{"message":"The request body is empty; a JSON object is expected.","type":"invalid_request_error","param":null,"code":"invalid_json"}}
--- error_log
smartflow proxy: The request body is empty; a JSON object is expected. (status 400, code invalid_json)



=== TEST 4: an explicitly empty body
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
Content-Length: 0
--- request
POST /v1/chat/completions
--- error_code: 400
--- response_body_like chomp
"message":"The request body is empty; a JSON object is expected\.",.*"code":"invalid_json"
--- error_log
smartflow proxy: The request body is empty



=== TEST 5: a JSON array is not a request
--- request
POST /v1/chat/completions
[{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}]
--- error_code: 400
--- response_body chomp
{"error":{"message":"The request body must be a JSON object.","type":"invalid_request_error","param":null,"code":"invalid_json"}}
--- error_log
smartflow proxy: The request body must be a JSON object. (status 400, code invalid_json)



=== TEST 6: a JSON string is not a request either
--- request
POST /v1/chat/completions
"gpt-4o"
--- error_code: 400
--- response_body_like chomp
"message":"The request body must be a JSON object\.",.*"code":"invalid_json"
--- error_log
smartflow proxy: The request body must be a JSON object.



=== TEST 7: no model
--- request
POST /v1/chat/completions
{"messages":[{"role":"user","content":"hi"}]}
--- error_code: 400
--- response_body chomp
{"error":{"message":"You must provide a model parameter.","type":"invalid_request_error","param":"model","code":"missing_required_parameter"}}
--- error_log
smartflow proxy: You must provide a model parameter. (status 400, code missing_required_parameter)



=== TEST 8: an empty model name
--- request
POST /v1/chat/completions
{"model":"","messages":[{"role":"user","content":"hi"}]}
--- error_code: 400
--- response_body_like chomp
"param":"model","code":"missing_required_parameter"
--- error_log
smartflow proxy: You must provide a model parameter.



=== TEST 9: a model that is not a string
--- request
POST /v1/chat/completions
{"model":4,"messages":[{"role":"user","content":"hi"}]}
--- error_code: 400
--- response_body_like chomp
"param":"model","code":"missing_required_parameter"
--- error_log
smartflow proxy: You must provide a model parameter.



=== TEST 10: chat without messages
--- request
POST /v1/chat/completions
{"model":"gpt-4o"}
--- error_code: 400
--- response_body chomp
{"error":{"message":"Missing required parameter: 'messages'.","type":"invalid_request_error","param":"messages","code":"missing_required_parameter"}}
--- error_log
smartflow proxy: Missing required parameter: 'messages'. (status 400, code missing_required_parameter)



=== TEST 11: chat with an empty messages array
--- request
POST /v1/chat/completions
{"model":"gpt-4o","messages":[]}
--- error_code: 400
--- response_body_like chomp
"param":"messages","code":"missing_required_parameter"
--- error_log
smartflow proxy: Missing required parameter: 'messages'.



=== TEST 12: chat with messages that are not an array
--- request
POST /v1/chat/completions
{"model":"gpt-4o","messages":"hi"}
--- error_code: 400
--- response_body_like chomp
"param":"messages","code":"missing_required_parameter"
--- error_log
smartflow proxy: Missing required parameter: 'messages'.



=== TEST 13: completions without a prompt
--- request
POST /v1/completions
{"model":"gpt-3.5-turbo-instruct","max_tokens":5}
--- error_code: 400
--- response_body chomp
{"error":{"message":"Missing required parameter: 'prompt'.","type":"invalid_request_error","param":"prompt","code":"missing_required_parameter"}}
--- error_log
smartflow proxy: Missing required parameter: 'prompt'.



=== TEST 14: completions with a null prompt
--- request
POST /v1/completions
{"model":"gpt-3.5-turbo-instruct","prompt":null}
--- error_code: 400
--- response_body_like chomp
"param":"prompt","code":"missing_required_parameter"
--- error_log
smartflow proxy: Missing required parameter: 'prompt'.



=== TEST 15: embeddings without input
--- request
POST /v1/embeddings
{"model":"text-embedding-3-small"}
--- error_code: 400
--- response_body chomp
{"error":{"message":"Missing required parameter: 'input'.","type":"invalid_request_error","param":"input","code":"missing_required_parameter"}}
--- error_log
smartflow proxy: Missing required parameter: 'input'.



=== TEST 16: a model no route knows
--- request
POST /v1/chat/completions
{"model":"llama-3-70b","messages":[{"role":"user","content":"hi"}]}
--- error_code: 404
--- response_headers
Content-Type: application/json
--- response_body chomp
{"error":{"message":"The model `llama-3-70b` does not exist or you do not have access to it.","type":"invalid_request_error","param":"model","code":"model_not_found"}}
--- error_log
smartflow proxy: The model `llama-3-70b` does not exist or you do not have access to it. (status 404, code model_not_found)



=== TEST 17: a model name with quotes and a backslash comes back escaped
--- request
POST /v1/chat/completions
{"model":"a\"b\\c","messages":[{"role":"user","content":"hi"}]}
--- error_code: 404
--- response_body chomp
{"error":{"message":"The model `a\"b\\c` does not exist or you do not have access to it.","type":"invalid_request_error","param":"model","code":"model_not_found"}}
--- error_log
smartflow proxy: The model `a"b\c` does not exist



=== TEST 18: GET on the chat endpoint
--- request
GET /v1/chat/completions
--- error_code: 405
--- response_headers
Content-Type: application/json
--- response_body chomp
{"error":{"message":"Method GET is not allowed here; use POST.","type":"invalid_request_error","param":null,"code":"method_not_allowed"}}
--- error_log
smartflow proxy: Method GET is not allowed here; use POST. (status 405, code method_not_allowed)



=== TEST 19: POST on the models endpoint
--- request
POST /v1/models
{}
--- error_code: 405
--- response_body chomp
{"error":{"message":"Method POST is not allowed here; use GET.","type":"invalid_request_error","param":null,"code":"method_not_allowed"}}
--- error_log
smartflow proxy: Method POST is not allowed here; use GET.



=== TEST 20: an endpoint the gateway does not have
--- request
POST /v1/foo
{"model":"gpt-4o"}
--- error_code: 404
--- response_headers
Content-Type: application/json
--- response_body chomp
{"error":{"message":"The requested resource was not found.","type":"invalid_request_error","param":null,"code":"not_found"}}
--- no_error_log
[error]



=== TEST 21: a body over client_max_body_size, announced by Content-Length
--- request eval
"POST /v1/chat/completions\n$::TooLarge"
--- error_code: 413
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"error":\{"message":"[^"]*larger than[^"]*","type":"invalid_request_error","param":null,"code":"request_too_large"\}\}$
--- error_log eval
[
"client intended to send too large body",
qr/smartflow proxy: .*\(status 413, code request_too_large\)/,
]



=== TEST 22: a chunked body that grows over client_max_body_size
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
Transfer-Encoding: chunked
--- request eval
"POST /v1/chat/completions\n" . ::chunked($::TooLarge, 65536)
--- error_code: 413
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"error":\{"message":"[^"]*larger than[^"]*","type":"invalid_request_error","param":null,"code":"request_too_large"\}\}$
--- error_log eval
[
"client intended to send too large chunked body",
qr/smartflow proxy: .*\(status 413, code request_too_large\)/,
]



=== TEST 23: a small chunked body over a small client_max_body_size
The location spells out the snippet with a 100-byte limit.
--- config
    location = /v1/chat/completions {
        smartflow_api chat;

        proxy_pass $smartflow_upstream$smartflow_upstream_uri;
        proxy_set_body $smartflow_upstream_body;
        proxy_http_version 1.1;
        proxy_set_header Host $smartflow_upstream_host;
        proxy_set_header Authorization $smartflow_provider_auth;
        proxy_set_header x-api-key $smartflow_provider_api_key;
        client_max_body_size 100;

        error_page 400 401 403 404 405 413 500 502 503 504 @smartflow_error;
    }

    location @smartflow_error {
        smartflow_api error;
    }
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
Transfer-Encoding: chunked
--- request eval
"POST /v1/chat/completions\n"
. ::chunked('{"model":"gpt-4o","messages":[{"role":"user","content":"' . ('x' x 200) . '"}]}', 64)
--- error_code: 413
--- response_body chomp
{"error":{"message":"Request body is larger than the 100 bytes this endpoint accepts.","type":"invalid_request_error","param":null,"code":"request_too_large"}}
--- error_log
smartflow proxy: Request body is larger than the 100 bytes this endpoint accepts. (status 413, code request_too_large)



=== TEST 24: a provider nobody answers for
--- request
POST /v1/chat/completions
{"model":"gpt-down","messages":[{"role":"user","content":"hi"}]}
--- error_code: 502
--- response_headers
Content-Type: application/json
--- response_body chomp
{"error":{"message":"The provider could not be reached (provider \"down\").","type":"api_error","param":null,"code":"upstream_unreachable"}}
--- error_log
smartflow proxy: provider "down" failed for model "gpt-down" (status 502)



=== TEST 25: a provider that closes the connection without answering
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-mock-drop: headers
--- request
POST /v1/chat/completions
{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}
--- error_code: 502
--- response_body chomp
{"error":{"message":"The provider could not be reached (provider \"openai\").","type":"api_error","param":null,"code":"upstream_unreachable"}}
--- error_log
smartflow proxy: provider "openai" failed for model "gpt-4o" (status 502)



=== TEST 26: a provider slower than proxy_read_timeout
The location spells out the snippet with a short read timeout.
--- config
    location = /v1/chat/completions {
        smartflow_api chat;

        proxy_pass $smartflow_upstream$smartflow_upstream_uri;
        proxy_set_body $smartflow_upstream_body;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $smartflow_upstream_host;
        proxy_set_header Content-Type application/json;
        proxy_set_header Authorization $smartflow_provider_auth;
        proxy_set_header x-api-key $smartflow_provider_api_key;
        proxy_read_timeout 300ms;

        error_page 400 401 403 404 405 413 500 502 503 504 @smartflow_error;
    }

    location @smartflow_error {
        smartflow_api error;
    }
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-mock-delay-ms: 2000
--- request
POST /v1/chat/completions
{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}
--- error_code: 504
--- response_headers
Content-Type: application/json
--- response_body chomp
{"error":{"message":"The provider did not answer in time (provider \"openai\").","type":"api_error","param":null,"code":"upstream_timeout"}}
--- error_log
upstream timed out
smartflow proxy: provider "openai" failed for model "gpt-4o" (status 504)



=== TEST 27: a provider's 429 is passed on with its body and Retry-After
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-mock-status: 429
--- request
POST /v1/chat/completions
{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}
--- error_code: 429
--- response_headers
Content-Type: application/json
retry-after: 1
--- response_body chomp
{"error":{"message":"Rate limit reached for requests per min (RPM). Please try again in 1s.","type":"requests","param":null,"code":"rate_limit_exceeded"}}
--- no_error_log
[error]



=== TEST 28: a provider's 500 is passed on unchanged
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-mock-status: 500
--- request
POST /v1/chat/completions
{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}
--- error_code: 500
--- response_body chomp
{"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}}
--- no_error_log
[error]



=== TEST 29: a provider's 400 is passed on unchanged
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-mock-status: 400
--- request
POST /v1/chat/completions
{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}
--- error_code: 400
--- response_body chomp
{"error":{"message":"The request was invalid.","type":"invalid_request_error","param":null,"code":null}}
--- no_error_log
[error]



=== TEST 30: a provider's 503 is passed on unchanged
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-mock-status: 503
--- request
POST /v1/embeddings
{"model":"text-embedding-3-small","input":"hi"}
--- error_code: 503
--- response_body chomp
{"error":{"message":"The engine is currently overloaded, please try again later.","type":"server_error","param":null,"code":null}}
--- no_error_log
[error]



=== TEST 31: JSON nested 200 levels deep
--- request eval
"POST /v1/chat/completions\n" . ::nested(200)
--- error_code: 400
--- response_body chomp
{"error":{"message":"We could not parse the JSON body of your request: JSON nested too deeply.","type":"invalid_request_error","param":null,"code":"invalid_json"}}
--- error_log
smartflow proxy: We could not parse the JSON body of your request: JSON nested too deeply.



=== TEST 32: JSON nested 30 levels deep is fine
--- request eval
"POST /v1/chat/completions\n" . ::nested(30)
--- response_body_like chomp
"content":"mock reply to: hi"
--- no_error_log
[error]



=== TEST 33: invalid UTF-8 inside a JSON string
--- request eval
"POST /v1/chat/completions\n"
. qq/{"model":"gpt-4o","messages":[{"role":"user","content":"caf\xc3\x28 \xff"}]}/
--- error_code: 400
--- response_body_like chomp
^\{"error":\{"message":"We could not parse the JSON body of your request: invalid JSON near byte \d+\.","type":"invalid_request_error","param":null,"code":"invalid_json"\}\}$
--- error_log
smartflow proxy: We could not parse the JSON body of your request
