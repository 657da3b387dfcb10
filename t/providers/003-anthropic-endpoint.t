# The native Anthropic endpoints of the shipped locations:
# /anthropic/v1/messages passing Anthropic traffic to an Anthropic provider
# untouched (body byte for byte, the client's anthropic-version, the
# provider's key), its own refusals in Anthropic's error format, and
# /anthropic/v1/models listing the routes the Anthropic way.
#
# What the provider receives is seen through a recorder: a second server in
# this nginx that hands the gateway's request on to the mock with the
# request's own body as the mock's reply text (x-mock-reply).

use lib 't/lib';
use Smartflow::Conf;
use Smartflow::Mock;
use Digest::SHA ();
use JSON::PP ();
use Test::Nginx::Socket 'no_plan';
use Smartflow::Blocks;

$ENV{TEST_NGINX_FIXTURE_PORT} ||= 1988;

our $HttpConfig = Smartflow::Blocks::mock_upstreams(fixture => 1)
                  . <<'_EOC_';
    # nothing listens there
    upstream sf_down {
        server 127.0.0.1:1;
    }

    smartflow_provider anthropic type=anthropic upstream=http://sf_mock
                       key=sk-ant-provider-key;
    smartflow_provider recorder type=anthropic upstream=http://sf_fixture
                       path=/record/v1 key=sk-ant-provider-key;
    smartflow_provider down type=anthropic upstream=http://sf_down
                       key=sk-ant-provider-key;
    smartflow_provider openai type=openai upstream=http://sf_mock
                       key=sk-oai-provider-key;

    smartflow_route claude-3-5-sonnet anthropic;
    smartflow_route claude-renamed recorder model=claude-3-5-haiku-latest;
    smartflow_route claude-recorded recorder;
    smartflow_route claude-down down;
    smartflow_route gpt-4o openai;
    smartflow_route claude-* anthropic;
    smartflow_route gpt-* openai;

    server {
        listen 127.0.0.1:$TEST_NGINX_FIXTURE_PORT;
        client_body_buffer_size 64k;

        # the recorder
        location /record/ {
            rewrite ^/record(/.*)$ $1 break;
            proxy_pass http://sf_mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header x-mock-reply $request_body;
            add_header x-seen-uri $request_uri;
            add_header x-seen-anthropic-version $http_anthropic_version;
            add_header x-seen-authorization $http_authorization;
        }
    }
_EOC_

# The shipped server-level locations (conf/smartflow_locations.conf), their
# nested include made absolute.

our $Locations = Smartflow::Conf::shipped_locations();

Smartflow::Blocks::defaults(http_config => $HttpConfig, config => $Locations,
                            more_headers => $AnthropicKey);

my $json = JSON::PP->new->utf8->canonical;

# The bytes the provider received, from a recorded answer.
sub upstream_raw {
    my $body = shift;
    my $answer = eval { $json->decode($body) };
    my $text = $answer && ref $answer->{content} eq 'ARRAY'
               && $answer->{content}[0]{text};
    return "no recorded text in: $body" unless defined $text;
    utf8::encode($text);
    return "$text\n";
}

# The model list with its dates checked and made constant.
sub stable_models {
    my $body = shift;
    $body =~ s/"created_at":"20\d\d-[01]\d-[0-3]\dT[0-2]\d:[0-5]\d:[0-5]\dZ"/"created_at":"DATE"/g;
    return "$body\n";
}

sub sha { 'x-mock-body-sha256: ' . Digest::SHA::sha256_hex($_[0]) }

our $Spaced = qq/{ "model" : "claude-3-5-sonnet",\n  "max_tokens": 16,\n  "messages": [ {"role": "user", /
    . qq/"content": "caf\\u00e9 \\"quoted\\" \\ud83d\\ude00"} ],\n  "temperature": 1.0e0 }/;

our $TooLarge = '{"model":"claude-3-5-sonnet","max_tokens":16,"messages":[{"role":"user","content":"'
    . ('x' x (4 * 1024 * 1024)) . '"}]}';

run_tests();

__DATA__

=== TEST 1: Anthropic to Anthropic: the body goes out byte for byte, the answer comes back as it was
--- request eval
"POST /anthropic/v1/messages\n$::Spaced"
--- response_headers eval
CORE::join "\n", "x-mock-path: /v1/messages", "x-mock-api-key: sk-ant-provider-key",
    "x-mock-authorization:", "x-mock-model: claude-3-5-sonnet",
    "Content-Type: application/json", ::sha($::Spaced)
--- response_body_like chomp
^\{"id":"msg_01\w{22}","type":"message","role":"assistant","model":"claude-3-5-sonnet","content":\[\{"type":"text","text":"mock reply to: caf\x{c3}\x{a9} \\"quoted\\" \x{f0}\x{9f}\x{98}\x{80}"\}\],"stop_reason":"end_turn","stop_sequence":null,"usage":\{"input_tokens":3,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":6\}\}$
--- no_error_log
[error]



=== TEST 2: the client's anthropic-version goes to the provider
--- more_headers
x-api-key: sk-smartflow-test-0123456789
anthropic-version: 2024-10-22
--- request
POST /anthropic/v1/messages
{"model":"claude-recorded","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}
--- response_headers
x-seen-uri: /record/v1/messages
x-seen-anthropic-version: 2024-10-22
x-mock-api-key: sk-ant-provider-key
--- response_body_filters eval
\&::upstream_raw
--- response_body
{"model":"claude-recorded","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}
--- no_error_log
[error]



=== TEST 3: without a client anthropic-version the provider gets 2023-06-01
--- more_headers
x-api-key: sk-smartflow-test-0123456789
--- request
POST /anthropic/v1/messages
{"model":"claude-recorded","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}
--- response_headers
x-seen-anthropic-version: 2023-06-01
--- response_body_filters eval
\&::upstream_raw
--- response_body
{"model":"claude-recorded","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}
--- no_error_log
[error]



=== TEST 4: a client key sent as Bearer stays at the gateway
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
anthropic-version: 2023-06-01
--- request
POST /anthropic/v1/messages
{"model":"claude-recorded","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}
--- response_headers
x-seen-authorization:
x-mock-api-key: sk-ant-provider-key
--- response_body_filters eval
\&::upstream_raw
--- response_body
{"model":"claude-recorded","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}
--- no_error_log
[error]



=== TEST 5: a renamed route changes the model name and nothing else
--- request
POST /anthropic/v1/messages
{"model":"claude-renamed","max_tokens":8,"system":"Be brief.","messages":[{"role":"user","content":"hi"}],"temperature":0.5}
--- response_headers
x-mock-model: claude-3-5-haiku-latest
--- response_body_filters eval
\&::upstream_raw
--- response_body
{"model":"claude-3-5-haiku-latest","max_tokens":8,"system":"Be brief.","messages":[{"role":"user","content":"hi"}],"temperature":0.5}
--- no_error_log
[error]



=== TEST 6: no key
--- more_headers
anthropic-version: 2023-06-01
--- request
POST /anthropic/v1/messages
{"model":"claude-3-5-sonnet","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}
--- error_code: 401
--- response_headers
Content-Type: application/json
--- response_body chomp
{"type":"error","error":{"type":"authentication_error","message":"You didn't provide an API key. Send it as \"Authorization: Bearer KEY\" or \"x-api-key: KEY\"."}}



=== TEST 7: a wrong key, shown only by its first characters
--- more_headers
x-api-key: sk-ant-api03-not-the-gateway-key
--- request
POST /anthropic/v1/messages
{"model":"claude-3-5-sonnet","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}
--- error_code: 401
--- response_body chomp
{"type":"error","error":{"type":"authentication_error","message":"Incorrect API key provided: sk-ant****."}}
--- error_log
smartflow proxy: Incorrect API key provided: sk-ant****.
--- no_error_log eval
qr/smartflow proxy: .*not-the-gateway-key/



=== TEST 8: max_tokens is required on the Anthropic endpoint
--- request
POST /anthropic/v1/messages
{"model":"claude-3-5-sonnet","messages":[{"role":"user","content":"hi"}]}
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body chomp
{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}
--- error_log
smartflow proxy: max_tokens: Field required



=== TEST 9: max_tokens is required whatever provider serves the model
--- request eval
["POST /anthropic/v1/messages\n" . '{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}',
 "POST /anthropic/v1/messages\n" . '{"model":"gpt-4o","max_tokens":null,"stream":true,"messages":[{"role":"user","content":"hi"}]}']
--- error_code eval
[400, 400]
--- response_body eval
['{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}',
 '{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}']



=== TEST 10: an unknown model
--- request
POST /anthropic/v1/messages
{"model":"mistral-large","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}
--- error_code: 404
--- response_headers
Content-Type: application/json
--- response_body chomp
{"type":"error","error":{"type":"not_found_error","message":"The model `mistral-large` does not exist or you do not have access to it."}}
--- error_log
smartflow proxy: The model `mistral-large` does not exist



=== TEST 11: an unknown model asked for a stream is refused as JSON
--- request
POST /anthropic/v1/messages
{"model":"mistral-large","max_tokens":8,"stream":true,"messages":[{"role":"user","content":"hi"}]}
--- error_code: 404
--- response_headers
Content-Type: application/json
!X-Accel-Buffering
--- response_body chomp
{"type":"error","error":{"type":"not_found_error","message":"The model `mistral-large` does not exist or you do not have access to it."}}



=== TEST 12: a body that is not JSON
--- request
POST /anthropic/v1/messages
{"model":"claude-3-5-sonnet","max_tokens":8,"messages":[
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"type":"error","error":\{"type":"invalid_request_error","message":"We could not parse the JSON body of your request: invalid JSON near byte \d+\."\}\}$
--- error_log
smartflow proxy: We could not parse the JSON body of your request



=== TEST 13: an empty body, and a body that is not an object
--- request eval
["POST /anthropic/v1/messages\n", "POST /anthropic/v1/messages\n[1,2,3]"]
--- error_code eval
[400, 400]
--- response_body eval
['{"type":"error","error":{"type":"invalid_request_error","message":"The request body is empty; a JSON object is expected."}}',
 '{"type":"error","error":{"type":"invalid_request_error","message":"The request body must be a JSON object."}}']



=== TEST 14: no model, no messages, empty messages
--- request eval
["POST /anthropic/v1/messages\n" . '{"max_tokens":8,"messages":[{"role":"user","content":"hi"}]}',
 "POST /anthropic/v1/messages\n" . '{"model":"claude-3-5-sonnet","max_tokens":8}',
 "POST /anthropic/v1/messages\n" . '{"model":"claude-3-5-sonnet","max_tokens":8,"messages":[]}']
--- error_code eval
[400, 400, 400]
--- response_body eval
['{"type":"error","error":{"type":"invalid_request_error","message":"You must provide a model parameter."}}',
 '{"type":"error","error":{"type":"invalid_request_error","message":"Missing required parameter: \'messages\'."}}',
 '{"type":"error","error":{"type":"invalid_request_error","message":"Missing required parameter: \'messages\'."}}']



=== TEST 15: GET on the messages endpoint
--- request
GET /anthropic/v1/messages
--- error_code: 405
--- response_headers
Content-Type: application/json
--- response_body chomp
{"type":"error","error":{"type":"invalid_request_error","message":"Method GET is not allowed here; use POST."}}



=== TEST 16: a body over client_max_body_size (4 MiB)
--- request eval
"POST /anthropic/v1/messages\n$::TooLarge"
--- error_code: 413
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"type":"error","error":\{"type":"request_too_large","message":"[^"]*larger than[^"]*"\}\}$
--- error_log eval
qr/smartflow proxy: .*larger than.*\(status 413, code request_too_large\)/



=== TEST 17: an unknown path under /anthropic
--- request
POST /anthropic/v1/complete
{"model":"claude-2","prompt":"\n\nHuman: hi\n\nAssistant:","max_tokens_to_sample":8}
--- error_code: 404
--- response_headers
Content-Type: application/json
--- response_body chomp
{"type":"error","error":{"type":"not_found_error","message":"The requested resource was not found."}}



=== TEST 18: a provider nobody answers for
--- request
POST /anthropic/v1/messages
{"model":"claude-down","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}
--- error_code: 502
--- response_headers
Content-Type: application/json
--- response_body chomp
{"type":"error","error":{"type":"api_error","message":"The provider could not be reached (provider \"down\")."}}
--- error_log
smartflow proxy: provider "down" failed for model "claude-down" (status 502)



=== TEST 19: a provider slower than proxy_read_timeout
The location spells out the shipped one with a short read timeout.
--- config
    location = /anthropic/v1/messages {
        smartflow_api messages;
        error_page 401 403 408 413 500 502 503 504 @smartflow_anthropic_error;

        proxy_pass $smartflow_upstream$smartflow_upstream_uri;
        proxy_set_body $smartflow_upstream_body;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $smartflow_upstream_host;
        proxy_set_header Content-Type application/json;
        proxy_set_header Authorization $smartflow_provider_auth;
        proxy_set_header x-api-key $smartflow_provider_api_key;
        proxy_set_header anthropic-version $smartflow_anthropic_version;
        proxy_read_timeout 300ms;
    }

    location @smartflow_anthropic_error {
        smartflow_api anthropic_error;
    }
--- more_headers
x-api-key: sk-smartflow-test-0123456789
x-mock-delay-ms: 2000
--- request
POST /anthropic/v1/messages
{"model":"claude-3-5-sonnet","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}
--- error_code: 504
--- response_headers
Content-Type: application/json
--- response_body chomp
{"type":"error","error":{"type":"api_error","message":"The provider did not answer in time (provider \"anthropic\")."}}
--- error_log
upstream timed out
smartflow proxy: provider "anthropic" failed for model "claude-3-5-sonnet" (status 504)



=== TEST 20: the model list in Anthropic's format: exact routes, in order
--- request
GET /anthropic/v1/models
--- response_headers
Content-Type: application/json
--- response_body_filters eval
\&::stable_models
--- response_body
{"data":[{"type":"model","id":"claude-3-5-sonnet","display_name":"claude-3-5-sonnet","created_at":"DATE"},{"type":"model","id":"claude-renamed","display_name":"claude-renamed","created_at":"DATE"},{"type":"model","id":"claude-recorded","display_name":"claude-recorded","created_at":"DATE"},{"type":"model","id":"claude-down","display_name":"claude-down","created_at":"DATE"},{"type":"model","id":"gpt-4o","display_name":"gpt-4o","created_at":"DATE"}],"has_more":false,"first_id":"claude-3-5-sonnet","last_id":"gpt-4o"}
--- no_error_log
[error]



=== TEST 21: the model list with the key as Bearer and a query string
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
--- request
GET /anthropic/v1/models?limit=20
--- response_body_filters eval
\&::stable_models
--- response_body_like
^\{"data":\[\{"type":"model","id":"claude-3-5-sonnet",.*"has_more":false,"first_id":"claude-3-5-sonnet","last_id":"gpt-4o"\}$
--- no_error_log
[error]



=== TEST 22: the model list needs the key, and refuses in Anthropic's words
--- more_headers
anthropic-version: 2023-06-01
--- request
GET /anthropic/v1/models
--- error_code: 401
--- response_headers
Content-Type: application/json
--- response_body chomp
{"type":"error","error":{"type":"authentication_error","message":"You didn't provide an API key. Send it as \"Authorization: Bearer KEY\" or \"x-api-key: KEY\"."}}



=== TEST 23: the model list with a wrong key
--- more_headers
x-api-key: sk-wrong-key-00000000
--- request
GET /anthropic/v1/models
--- error_code: 401
--- response_body chomp
{"type":"error","error":{"type":"authentication_error","message":"Incorrect API key provided: sk-wro****."}}



=== TEST 24: POST on the model list
--- request
POST /anthropic/v1/models
{}
--- error_code: 405
--- response_headers
Content-Type: application/json
--- response_body chomp
{"type":"error","error":{"type":"invalid_request_error","message":"Method POST is not allowed here; use GET."}}



=== TEST 25: a model list without exact routes is empty, its ids null
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route claude-* demo;
--- request
GET /anthropic/v1/models
--- response_body chomp
{"data":[],"has_more":false,"first_id":null,"last_id":null}
--- no_error_log
[error]



=== TEST 26: the OpenAI model list on the same server keeps OpenAI's format
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
--- request
GET /v1/models
--- response_body_like chomp
^\{"object":"list","data":\[\{"id":"claude-3-5-sonnet","object":"model","created":\d+,"owned_by":"anthropic"\},
--- no_error_log
[error]



=== TEST 27: the same refusal is OpenAI-shaped on the OpenAI endpoint
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
--- request
POST /v1/chat/completions
{"model":"mistral-large","messages":[{"role":"user","content":"hi"}]}
--- error_code: 404
--- response_body chomp
{"error":{"message":"The model `mistral-large` does not exist or you do not have access to it.","type":"invalid_request_error","param":"model","code":"model_not_found"}}
