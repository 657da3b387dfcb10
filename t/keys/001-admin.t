# The virtual keys admin API: create, list (paged, by team), read, change,
# revoke and rotate keys under /api/auth/virtual-keys and
# /api/enterprise/vkeys; the secret shown once; every kind of bad input
# answered with an OpenAI-format 4xx; the master key only.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use Smartflow::Blocks;
use Smartflow::Keys;
use Smartflow::Memory;

no_shuffle();

unlink server_root() . '/keys-admin.state';

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
    smartflow_keys_zone keys 1m state=keys-admin.state thread_pool=sf;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
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

# the secrets the API showed, to look for them in nginx's memory after
our @Shown;

run_tests();

__DATA__

=== TEST 1: create a key with a name only: the secret once, its defaults
--- request
POST /api/auth/virtual-keys
{"name":"alpha"}
--- error_code: 201
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"id":"vk_1","object":"virtual_key","name":"alpha","key":"sk-sf-[0-9a-f]{48}","prefix":"sk-sf-[0-9a-f]{8}","status":"active","team":null,"user":null,"models":\[\],"rpm":null,"tpm":null,"budget_usd":null,"budget_period":"total","expires_at":null,"policy_group":null,"cache_threshold":null,"metadata":null,"created_at":\d+,"revoked_at":null,"previous_key_expires_at":null\}$
--- error_log
smartflow proxy: virtual key vk_1 "alpha" created
--- no_error_log
[error]



=== TEST 2: create a key with every field, expiry in RFC 3339 with an offset
--- request
POST /api/auth/virtual-keys
{"name":"beta","team":"red","user":"ann@example.com","models":["gpt-4o*","smartflow-*"],"rpm":60,"tpm":10000,"budget_usd":12.5,"budget_period":"monthly","expires_at":"2030-01-01T02:00:00+02:00","policy_group":"strict","cache_threshold":0.85,"metadata":{"cost_center":"42","tags":["a","b"]}}
--- error_code: 201
--- response_body_like chomp
^\{"id":"vk_2","object":"virtual_key","name":"beta","key":"sk-sf-[0-9a-f]{48}","prefix":"sk-sf-[0-9a-f]{8}","status":"active","team":"red","user":"ann@example.com","models":\["gpt-4o\*","smartflow-\*"\],"rpm":60,"tpm":10000,"budget_usd":12.5,"budget_period":"monthly","expires_at":1893456000,"policy_group":"strict","cache_threshold":0.85,"metadata":\{"cost_center":"42","tags":\["a","b"\]\},"created_at":\d+,"revoked_at":null,"previous_key_expires_at":null\}$
--- no_error_log
[error]



=== TEST 3: the same API under /api/enterprise/vkeys; unix seconds for the expiry
--- request
POST /api/enterprise/vkeys
{"name":"gamma","team":"blue","expires_at":1893456000,"budget_usd":0.000001,"budget_period":"daily"}
--- error_code: 201
--- response_body_like chomp
^\{"id":"vk_3","object":"virtual_key","name":"gamma","key":"sk-sf-[0-9a-f]{48}",.*"team":"blue",.*"budget_usd":0.000001,"budget_period":"daily","expires_at":1893456000,
--- no_error_log
[error]



=== TEST 4: read one key: no secret, no digest
--- request
GET /api/auth/virtual-keys/%ID(beta)%
--- response_body_like chomp
^\{"id":"vk_2","object":"virtual_key","name":"beta","prefix":"%PREFIX(beta)%","status":"active","team":"red",
--- response_body_unlike: "key"|secret|digest|hash|%KEY(beta)%
--- no_error_log
[error]



=== TEST 5: read it under the other path, with a trailing slash
--- request
GET /api/enterprise/vkeys/%ID(beta)%/
--- response_body_like chomp
^\{"id":"vk_2","object":"virtual_key","name":"beta",
--- no_error_log
[error]



=== TEST 6: list every key, oldest first, without secrets
--- request
GET /api/auth/virtual-keys
--- response_body_like chomp
^\{"object":"list","data":\[\{"id":"vk_1","object":"virtual_key","name":"alpha",.*\},\{"id":"vk_2",.*\},\{"id":"vk_3",.*\}\],"first_id":"vk_1","last_id":"vk_3","has_more":false\}$
--- response_body_unlike: "key":
--- no_error_log
[error]



=== TEST 7: change some fields; the others stay
--- request
PATCH /api/auth/virtual-keys/%ID(alpha)%
{"team":"red","rpm":5,"models":["smartflow-echo"],"metadata":{"owner":"ops"}}
--- response_body_like chomp
^\{"id":"vk_1","object":"virtual_key","name":"alpha","prefix":"%PREFIX(alpha)%","status":"active","team":"red","user":null,"models":\["smartflow-echo"\],"rpm":5,"tpm":null,"budget_usd":null,"budget_period":"total","expires_at":null,"policy_group":null,"cache_threshold":null,"metadata":\{"owner":"ops"\},
--- no_error_log
[error]



=== TEST 8: null clears a field; a new name
--- request
PATCH /api/auth/virtual-keys/%ID(alpha)%
{"rpm":null,"metadata":null,"models":null,"name":"alpha2","team":""}
--- response_body_like chomp
^\{"id":"vk_1","object":"virtual_key","name":"alpha2","prefix":"%PREFIX(alpha)%","status":"active","team":null,"user":null,"models":\[\],"rpm":null,"tpm":null,"budget_usd":null,"budget_period":"total","expires_at":null,"policy_group":null,"cache_threshold":null,"metadata":null,
--- no_error_log
[error]



=== TEST 9: malformed JSON
--- request
POST /api/auth/virtual-keys
{"name":
--- error_code: 400
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"error":\{"message":"We could not parse the JSON body of your request: invalid JSON near byte \d+\.","type":"invalid_request_error","param":null,"code":"invalid_json"\}\}$
--- error_log
smartflow proxy: We could not parse the JSON body



=== TEST 10: an empty body
--- request
POST /api/auth/virtual-keys
--- error_code: 400
--- response_body chomp
{"error":{"message":"The request body is empty; a JSON object is expected.","type":"invalid_request_error","param":null,"code":"invalid_json"}}
--- error_log
smartflow proxy: The request body is empty



=== TEST 11: a body that is not an object
--- request
PATCH /api/auth/virtual-keys/%ID(beta)%
["name","x"]
--- error_code: 400
--- response_body chomp
{"error":{"message":"The request body must be a JSON object.","type":"invalid_request_error","param":null,"code":"invalid_json"}}
--- error_log
smartflow proxy: The request body must be a JSON object.



=== TEST 12: an unknown field
--- request
POST /api/auth/virtual-keys
{"name":"delta","colour":"red"}
--- error_code: 400
--- response_body chomp
{"error":{"message":"Unknown parameter: 'colour'.","type":"invalid_request_error","param":"colour","code":"unknown_parameter"}}
--- error_log
smartflow proxy: Unknown parameter: 'colour'.



=== TEST 13: the name is required
--- request
POST /api/auth/virtual-keys
{"team":"red"}
--- error_code: 400
--- response_body chomp
{"error":{"message":"Missing required parameter: 'name'.","type":"invalid_request_error","param":"name","code":"missing_required_parameter"}}
--- error_log
smartflow proxy: Missing required parameter: 'name'.



=== TEST 14: a name of the wrong type
--- request
POST /api/auth/virtual-keys
{"name":42}
--- error_code: 400
--- response_body chomp
{"error":{"message":"'name' must be a string.","type":"invalid_request_error","param":"name","code":"invalid_type"}}
--- error_log
smartflow proxy: 'name' must be a string.



=== TEST 15: an empty name
--- request
POST /api/auth/virtual-keys
{"name":""}
--- error_code: 400
--- response_body chomp
{"error":{"message":"'name' must be 1 to 128 bytes long.","type":"invalid_request_error","param":"name","code":"invalid_value"}}
--- error_log
smartflow proxy: 'name' must be 1 to 128 bytes long.



=== TEST 16: a negative limit
--- request
POST /api/auth/virtual-keys
{"name":"delta","rpm":-1}
--- error_code: 400
--- response_body chomp
{"error":{"message":"'rpm' must not be negative.","type":"invalid_request_error","param":"rpm","code":"invalid_value"}}
--- error_log
smartflow proxy: 'rpm' must not be negative.



=== TEST 17: a limit that is not a whole number
--- request
POST /api/auth/virtual-keys
{"name":"delta","tpm":1.5}
--- error_code: 400
--- response_body chomp
{"error":{"message":"'tpm' must be a whole number.","type":"invalid_request_error","param":"tpm","code":"invalid_value"}}
--- error_log
smartflow proxy: 'tpm' must be a whole number.



=== TEST 18: a limit given as a string
--- request
POST /api/auth/virtual-keys
{"name":"delta","rpm":"10"}
--- error_code: 400
--- response_body chomp
{"error":{"message":"'rpm' must be a number or null.","type":"invalid_request_error","param":"rpm","code":"invalid_type"}}
--- error_log
smartflow proxy: 'rpm' must be a number or null.



=== TEST 19: a negative budget
--- request
POST /api/auth/virtual-keys
{"name":"delta","budget_usd":-0.5}
--- error_code: 400
--- response_body chomp
{"error":{"message":"'budget_usd' must not be negative.","type":"invalid_request_error","param":"budget_usd","code":"invalid_value"}}
--- error_log
smartflow proxy: 'budget_usd' must not be negative.



=== TEST 20: a budget finer than a micro-dollar
--- request
POST /api/auth/virtual-keys
{"name":"delta","budget_usd":0.0000001}
--- error_code: 400
--- response_body chomp
{"error":{"message":"'budget_usd' must be a plain decimal number of US dollars with at most 6 decimals.","type":"invalid_request_error","param":"budget_usd","code":"invalid_value"}}
--- error_log
smartflow proxy: 'budget_usd' must be a plain decimal number



=== TEST 21: an unknown budget period
--- request
POST /api/auth/virtual-keys
{"name":"delta","budget_period":"weekly"}
--- error_code: 400
--- response_body chomp
{"error":{"message":"'budget_period' must be \"daily\", \"monthly\" or \"total\".","type":"invalid_request_error","param":"budget_period","code":"invalid_value"}}
--- error_log
smartflow proxy: 'budget_period' must be "daily", "monthly" or "total".



=== TEST 22: an expiry that is no time
--- request
POST /api/auth/virtual-keys
{"name":"delta","expires_at":"2030-02-30T00:00:00Z"}
--- error_code: 400
--- response_body chomp
{"error":{"message":"'expires_at' must be unix seconds or an RFC 3339 time such as \"2030-01-31T12:00:00Z\".","type":"invalid_request_error","param":"expires_at","code":"invalid_value"}}
--- error_log
smartflow proxy: 'expires_at' must be unix seconds



=== TEST 23: models must be an array of strings
--- request
POST /api/auth/virtual-keys
{"name":"delta","models":["gpt-4o",7]}
--- error_code: 400
--- response_body chomp
{"error":{"message":"'models' must be an array of model names or patterns (1 to 128 bytes each).","type":"invalid_request_error","param":"models","code":"invalid_type"}}
--- error_log
smartflow proxy: 'models' must be an array



=== TEST 24: models as a string
--- request
POST /api/auth/virtual-keys
{"name":"delta","models":"gpt-4o"}
--- error_code: 400
--- response_body chomp
{"error":{"message":"'models' must be an array of model names or patterns.","type":"invalid_request_error","param":"models","code":"invalid_type"}}
--- error_log
smartflow proxy: 'models' must be an array



=== TEST 25: metadata must be an object
--- request
POST /api/auth/virtual-keys
{"name":"delta","metadata":[1]}
--- error_code: 400
--- response_body chomp
{"error":{"message":"'metadata' must be an object or null.","type":"invalid_request_error","param":"metadata","code":"invalid_type"}}
--- error_log
smartflow proxy: 'metadata' must be an object or null.



=== TEST 26: a name in use
--- request
POST /api/auth/virtual-keys
{"name":"beta"}
--- error_code: 409
--- response_body chomp
{"error":{"message":"A key named \"beta\" exists already.","type":"invalid_request_error","param":"name","code":"duplicate_name"}}
--- error_log
smartflow proxy: A key named "beta" exists already. (status 409, code duplicate_name)



=== TEST 27: renaming onto a name in use
--- request
PATCH /api/auth/virtual-keys/%ID(alpha)%
{"name":"gamma"}
--- error_code: 409
--- response_body chomp
{"error":{"message":"A key named \"gamma\" exists already.","type":"invalid_request_error","param":"name","code":"duplicate_name"}}
--- error_log
smartflow proxy: A key named "gamma" exists already.



=== TEST 28: no key was made by the refused requests
--- request
GET /api/auth/virtual-keys
--- response_body_like chomp
"last_id":"vk_3","has_more":false\}$
--- no_error_log
[error]



=== TEST 29: a malformed id
--- request
GET /api/auth/virtual-keys/abc
--- error_code: 400
--- response_body chomp
{"error":{"message":"\"abc\" is not a key id; ids look like \"vk_12\".","type":"invalid_request_error","param":null,"code":"invalid_key_id"}}
--- error_log
smartflow proxy: "abc" is not a key id



=== TEST 30: id 0 does not exist by construction
--- request
DELETE /api/auth/virtual-keys/vk_0
--- error_code: 400
--- response_body_like chomp
"code":"invalid_key_id"
--- error_log
smartflow proxy: "vk_0" is not a key id



=== TEST 31: an unknown id
--- request
GET /api/auth/virtual-keys/vk_999
--- error_code: 404
--- response_body chomp
{"error":{"message":"No virtual key vk_999.","type":"invalid_request_error","param":null,"code":"key_not_found"}}
--- error_log
smartflow proxy: No virtual key vk_999. (status 404, code key_not_found)



=== TEST 32: an unknown id in a change
--- request
PATCH /api/auth/virtual-keys/vk_999
{"rpm":1}
--- error_code: 404
--- response_body_like chomp
"code":"key_not_found"
--- error_log
smartflow proxy: No virtual key vk_999.



=== TEST 33: an unknown path below a key
--- request
GET /api/auth/virtual-keys/%ID(beta)%/secret
--- error_code: 404
--- response_body chomp
{"error":{"message":"Unknown admin path /api/auth/virtual-keys/vk_2/secret.","type":"invalid_request_error","param":null,"code":"not_found"}}
--- error_log
smartflow proxy: Unknown admin path



=== TEST 34: a path that only starts like the prefix
--- request
GET /api/auth/virtual-keysx
--- error_code: 404
--- response_body_like chomp
"code":"not_found"
--- error_log
smartflow proxy: Unknown admin path /api/auth/virtual-keysx.



=== TEST 35: a method the list does not take
--- request
DELETE /api/auth/virtual-keys
--- error_code: 405
--- response_body chomp
{"error":{"message":"Method DELETE is not allowed on /api/auth/virtual-keys.","type":"invalid_request_error","param":null,"code":"method_not_allowed"}}
--- error_log
smartflow proxy: Method DELETE is not allowed



=== TEST 36: rotate takes POST only
--- request
GET /api/auth/virtual-keys/%ID(beta)%/rotate
--- error_code: 405
--- response_body_like chomp
"code":"method_not_allowed"
--- error_log
smartflow proxy: Method GET is not allowed



=== TEST 37: no key at all
--- more_headers
--- request
GET /api/auth/virtual-keys
--- error_code: 401
--- response_body_like chomp
"code":"missing_api_key"
--- no_error_log
[error]



=== TEST 38: a wrong key
--- more_headers
x-api-key: sk-smartflow-test-wrong-key
--- request
GET /api/auth/virtual-keys
--- error_code: 401
--- response_body chomp
{"error":{"message":"Incorrect API key provided: sk-sma****.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}
--- error_log
smartflow proxy: Incorrect API key provided: sk-sma****.



=== TEST 39: a virtual key may not manage keys
--- more_headers
Authorization: Bearer %KEY(beta)%
--- request
POST /api/auth/virtual-keys
{"name":"mine"}
--- error_code: 403
--- response_body chomp
{"error":{"message":"The admin API takes the master key only; virtual keys cannot manage keys.","type":"permission_error","param":null,"code":"master_key_required"}}
--- error_log
smartflow proxy: The admin API takes the master key only



=== TEST 40: nor read them
--- more_headers
x-api-key: %KEY(beta)%
--- request
GET /api/enterprise/vkeys/%ID(beta)%/usage
--- error_code: 403
--- response_body_like chomp
"code":"master_key_required"
--- error_log
smartflow proxy: The admin API takes the master key only



=== TEST 41: more keys, for paging: team red
--- request
POST /api/auth/virtual-keys
{"name":"p1","team":"red"}
--- error_code: 201
--- no_error_log
[error]



=== TEST 42: team blue
--- request
POST /api/auth/virtual-keys
{"name":"p2","team":"blue"}
--- error_code: 201
--- no_error_log
[error]



=== TEST 43: team red
--- request
POST /api/auth/virtual-keys
{"name":"p3","team":"red"}
--- error_code: 201
--- no_error_log
[error]



=== TEST 44: the first page
--- request
GET /api/auth/virtual-keys?limit=2
--- response_body_like chomp
^\{"object":"list","data":\[\{"id":"vk_1",.*\},\{"id":"vk_2",.*\}\],"first_id":"vk_1","last_id":"vk_2","has_more":true\}$
--- no_error_log
[error]



=== TEST 45: the next page
--- request
GET /api/auth/virtual-keys?limit=2&after=vk_2
--- response_body_like chomp
^\{"object":"list","data":\[\{"id":"vk_3",.*\},\{"id":"vk_4",.*\}\],"first_id":"vk_3","last_id":"vk_4","has_more":true\}$
--- no_error_log
[error]



=== TEST 46: the last page
--- request
GET /api/auth/virtual-keys?after=vk_4&limit=2
--- response_body_like chomp
^\{"object":"list","data":\[\{"id":"vk_5",.*\},\{"id":"vk_6",.*\}\],"first_id":"vk_5","last_id":"vk_6","has_more":false\}$
--- no_error_log
[error]



=== TEST 47: past the end
--- request
GET /api/auth/virtual-keys?after=vk_6
--- response_body chomp
{"object":"list","data":[],"first_id":null,"last_id":null,"has_more":false}
--- no_error_log
[error]



=== TEST 48: one team, paged
--- request
GET /api/auth/virtual-keys?team=red&limit=2
--- response_body_like chomp
^\{"object":"list","data":\[\{"id":"vk_2",[^\]]*"team":"red",.*\},\{"id":"vk_4",.*"team":"red",.*\}\],"first_id":"vk_2","last_id":"vk_4","has_more":true\}$
--- no_error_log
[error]



=== TEST 49: the rest of the team
--- request
GET /api/auth/virtual-keys?team=red&after=vk_4
--- response_body_like chomp
^\{"object":"list","data":\[\{"id":"vk_6",.*"team":"red",.*\}\],"first_id":"vk_6","last_id":"vk_6","has_more":false\}$
--- no_error_log
[error]



=== TEST 50: a team with an escaped name and no keys
--- request
GET /api/auth/virtual-keys?team=no%20such
--- response_body chomp
{"object":"list","data":[],"first_id":null,"last_id":null,"has_more":false}
--- no_error_log
[error]



=== TEST 51: a limit out of range
--- request
GET /api/auth/virtual-keys?limit=0
--- error_code: 400
--- response_body chomp
{"error":{"message":"'limit' must be a whole number from 1 to 100.","type":"invalid_request_error","param":"limit","code":"invalid_value"}}
--- error_log
smartflow proxy: 'limit' must be a whole number from 1 to 100.



=== TEST 52: a limit that is no number
--- request
GET /api/auth/virtual-keys?limit=ten
--- error_code: 400
--- response_body_like chomp
"param":"limit","code":"invalid_value"
--- error_log
smartflow proxy: 'limit' must be a whole number



=== TEST 53: a bad cursor
--- request
GET /api/auth/virtual-keys?after=p2
--- error_code: 400
--- response_body chomp
{"error":{"message":"'after' must be a key id such as \"vk_12\".","type":"invalid_request_error","param":"after","code":"invalid_key_id"}}
--- error_log
smartflow proxy: 'after' must be a key id



=== TEST 54: the key works before its rotation
--- more_headers
Authorization: Bearer %KEY(p1)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"hello"}]}
--- response_body_like chomp
"content":"Echo: hello"
--- no_error_log
[error]



=== TEST 55: rotate without a grace period: a new secret, shown once
--- request
POST /api/auth/virtual-keys/%ID(p1)%/rotate
--- response_body_like chomp
^\{"id":"vk_4","object":"virtual_key","name":"p1","key":"sk-sf-[0-9a-f]{48}","prefix":"sk-sf-[0-9a-f]{8}","status":"active",.*"previous_key_expires_at":null\}$
--- error_log
smartflow proxy: virtual key vk_4 rotated (grace 0s)
--- no_error_log
[error]



=== TEST 56: the old secret stops at once
--- more_headers
Authorization: Bearer %OLDKEY(p1)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"hello"}]}
--- error_code: 401
--- response_body chomp
{"error":{"message":"Incorrect API key provided: sk-sf-****.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}
--- error_log
smartflow proxy: Incorrect API key provided: sk-sf-****.



=== TEST 57: the new secret works
--- more_headers
Authorization: Bearer %KEY(p1)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"hello"}]}
--- response_body_like chomp
"content":"Echo: hello"
--- no_error_log
[error]



=== TEST 58: rotate with a grace period
--- request
POST /api/enterprise/vkeys/%ID(p2)%/rotate
{"grace_seconds":3600}
--- response_body_like chomp
^\{"id":"vk_5","object":"virtual_key","name":"p2","key":"sk-sf-[0-9a-f]{48}",.*"previous_key_expires_at":\d{10}\}$
--- error_log
smartflow proxy: virtual key vk_5 rotated (grace 3600s)
--- no_error_log
[error]



=== TEST 59: the old secret works during the grace period
--- more_headers
x-api-key: %OLDKEY(p2)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"old"}]}
--- response_body_like chomp
"content":"Echo: old"
--- no_error_log
[error]



=== TEST 60: and so does the new one
--- more_headers
x-api-key: %KEY(p2)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"new"}]}
--- response_body_like chomp
"content":"Echo: new"
--- no_error_log
[error]



=== TEST 61: a rotation without grace stops every older secret
--- request
POST /api/enterprise/vkeys/%ID(p2)%/rotate
{}
--- response_body_like chomp
"previous_key_expires_at":null\}$
--- no_error_log
[error]



=== TEST 62: so the secret before it stops at once
--- more_headers
x-api-key: %OLDKEY(p2)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"old"}]}
--- error_code: 401
--- response_body_like chomp
"code":"invalid_api_key"
--- error_log
smartflow proxy: Incorrect API key provided



=== TEST 63: a negative grace period
--- request
POST /api/auth/virtual-keys/%ID(p2)%/rotate
{"grace_seconds":-5}
--- error_code: 400
--- response_body chomp
{"error":{"message":"'grace_seconds' must be a whole number from 0 to 2592000 (30 days).","type":"invalid_request_error","param":"grace_seconds","code":"invalid_value"}}
--- error_log
smartflow proxy: 'grace_seconds' must be a whole number



=== TEST 64: rotate takes grace_seconds only
--- request
POST /api/auth/virtual-keys/%ID(p2)%/rotate
{"grace":5}
--- error_code: 400
--- response_body_like chomp
"param":"grace","code":"unknown_parameter"
--- error_log
smartflow proxy: Unknown parameter: 'grace'.



=== TEST 65: revoke
--- request
DELETE /api/auth/virtual-keys/%ID(p3)%
--- response_body_like chomp
^\{"id":"vk_6","object":"virtual_key","name":"p3","prefix":"%PREFIX(p3)%","status":"revoked",.*"revoked_at":\d{10},
--- error_log
smartflow proxy: virtual key vk_6 revoked
--- no_error_log
[error]



=== TEST 66: a revoked key is refused
--- more_headers
Authorization: Bearer %KEY(p3)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"hello"}]}
--- error_code: 401
--- response_body chomp
{"error":{"message":"The API key %PREFIX(p3)%**** has been revoked.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}
--- error_log
smartflow proxy: The API key %PREFIX(p3)%**** has been revoked. (status 401, code invalid_api_key)



=== TEST 67: revoking again changes nothing
--- request
DELETE /api/enterprise/vkeys/%ID(p3)%
--- response_body_like chomp
"status":"revoked"
--- no_error_log
[error]



=== TEST 68: a revoked key cannot be changed
--- request
PATCH /api/auth/virtual-keys/%ID(p3)%
{"rpm":1}
--- error_code: 409
--- response_body chomp
{"error":{"message":"The key vk_6 is revoked; it cannot be changed.","type":"invalid_request_error","param":null,"code":"key_revoked"}}
--- error_log
smartflow proxy: The key vk_6 is revoked



=== TEST 69: nor rotated
--- request
POST /api/auth/virtual-keys/%ID(p3)%/rotate
--- error_code: 409
--- response_body_like chomp
"code":"key_revoked"
--- error_log
smartflow proxy: The key vk_6 is revoked



=== TEST 70: its name is free again
--- request
POST /api/auth/virtual-keys
{"name":"p3","team":"green"}
--- error_code: 201
--- response_body_like chomp
^\{"id":"vk_7","object":"virtual_key","name":"p3",
--- no_error_log
[error]



=== TEST 71: an expiry in the past
--- request
PATCH /api/auth/virtual-keys/%ID(gamma)%
{"expires_at":"2000-01-01T00:00:00Z"}
--- response_body_like chomp
^\{"id":"vk_3",.*"status":"expired",.*"expires_at":946684800,
--- no_error_log
[error]



=== TEST 72: an expired key is refused
--- more_headers
Authorization: Bearer %KEY(gamma)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"hello"}]}
--- error_code: 401
--- response_body chomp
{"error":{"message":"The API key %PREFIX(gamma)%**** expired at 2000-01-01T00:00:00Z.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}
--- error_log
smartflow proxy: The API key %PREFIX(gamma)%**** expired at 2000-01-01T00:00:00Z.



=== TEST 73: no expiry any more
--- request
PATCH /api/auth/virtual-keys/%ID(gamma)%
{"expires_at":null}
--- response_body_like chomp
"status":"active",.*"expires_at":null,
--- no_error_log
[error]



=== TEST 74: so it works again
--- more_headers
Authorization: Bearer %KEY(gamma)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"back"}]}
--- response_body_like chomp
"content":"Echo: back"
--- no_error_log
[error]



=== TEST 75: a request above the admin body limit
--- request eval
"POST /api/auth/virtual-keys\n" . '{"name":"big","metadata":{"x":"' . ('y' x 70000) . '"}}'
--- error_code: 413
--- response_body_like chomp
"code":"request_too_large"
--- error_log
client intended to send too large body



=== TEST 76: metadata larger than 4 KiB
--- request eval
"POST /api/auth/virtual-keys\n" . '{"name":"big","metadata":{"x":"' . ('y' x 5000) . '"}}'
--- error_code: 400
--- response_body_like chomp
"message":"'metadata' may take at most 4096 bytes as JSON.","type":"invalid_request_error","param":"metadata","code":"invalid_value"
--- error_log
smartflow proxy: 'metadata' may take at most 4096 bytes



=== TEST 77: a body that arrives in pieces is read without blocking
--- raw_request eval
["POST /api/auth/virtual-keys HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer sk-smartflow-test-0123456789\r\nContent-Length: 15\r\nConnection: close\r\n\r\n{\"name\":",
 "\"slow\"}"]
--- raw_request_middle_delay: 0.3
--- error_code: 201
--- response_body_like chomp
^\{"id":"vk_8","object":"virtual_key","name":"slow","key":"sk-sf-
--- no_error_log
[error]



=== TEST 78: without a keys zone the admin API says so
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
--- request
GET /api/auth/virtual-keys
--- error_code: 404
--- response_body chomp
{"error":{"message":"Virtual keys are not enabled on this gateway: no smartflow_keys_zone is configured.","type":"invalid_request_error","param":null,"code":"keys_disabled"}}
--- error_log
smartflow proxy: Virtual keys are not enabled



=== TEST 79: an sk-sf- key is an ordinary wrong key without a keys zone
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
--- more_headers
Authorization: Bearer %KEY(beta)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"hello"}]}
--- error_code: 401
--- response_body chomp
{"error":{"message":"Incorrect API key provided: sk-sf-****.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}
--- error_log
smartflow proxy: Incorrect API key provided: sk-sf-****.



=== TEST 80: admin_keys in a regex location
--- config
    location ~ ^/api/keys {
        smartflow_api admin_keys;
    }
--- must_die
--- error_log
smartflow_api admin_keys needs a prefix location



=== TEST 81: an unknown field name is echoed escaped and cut to 64 bytes
Control characters are written six bytes each (\u0001); the error still
fits, and the worker lives on to answer the next request.  A name cut in
the middle of a UTF-8 character loses that character whole.
--- request eval
['POST /api/auth/virtual-keys
{"' . ('\u0001' x 10000) . '":1}',
 "POST /api/auth/virtual-keys
{\"a" . ("\xc3\xa9" x 40) . "\":1}",
 'POST /api/auth/virtual-keys
{"' . ('\"' x 100) . '":1}',
 "GET /api/auth/virtual-keys/vk_1"]
--- error_code eval
[400, 400, 400, 200]
--- response_body_like eval
['^\{"error":\{"message":"Unknown parameter: \'(?:\\\\u0001){64}\'\.","type":"invalid_request_error","param":"(?:\\\\u0001){64}","code":"unknown_parameter"\}\}$',
 "^\\{\"error\":\\{\"message\":\"Unknown parameter: 'a(?:\xc3\xa9){31}'\\.\",\"type\":\"invalid_request_error\",\"param\":\"a(?:\xc3\xa9){31}\",\"code\":\"unknown_parameter\"\\}\\}\$",
 '^\{"error":\{"message":"Unknown parameter: \'(?:\\\\"){64}\'\.","type":"invalid_request_error","param":"(?:\\\\"){64}","code":"unknown_parameter"\}\}$',
 '^\{"id":"vk_1",']
--- no_error_log
signal
[alert]



=== TEST 82: "satisfy any" with an allow rule does not open the admin API without the master key
--- config
    location /api/auth/virtual-keys {
        smartflow_api admin_keys;
        satisfy any;
        allow 127.0.0.1;
        deny all;
        error_page 400 401 403 404 405 409 413 500 503 @smartflow_error;
    }

    location @smartflow_error {
        smartflow_api error;
    }
--- more_headers
Authorization: Bearer sk-not-the-master-key
--- request
GET /api/auth/virtual-keys
--- error_code: 403
--- response_body chomp
{"error":{"message":"The admin API takes the master key only.","type":"permission_error","param":null,"code":"master_key_required"}}
--- error_log
The admin API takes the master key only



=== TEST 83: a key to rotate in the next block
--- request
POST /api/auth/virtual-keys
{"name":"shown-once"}
--- error_code: 201
--- no_error_log
[error]



=== TEST 84: a secret the API made is not left in memory once shown
A key rotated, another made: the answers show both secrets once; nothing
of either is left in nginx's memory after (the zone keeps their digests).
--- request eval
["POST /api/auth/virtual-keys/%ID(shown-once)%/rotate\n{}",
 "POST /api/auth/virtual-keys\n" . '{"name":"shown-twice"}',
 "GET /api/auth/virtual-keys/%ID(shown-once)%"]
--- error_code eval
[200, 201, 200]
--- response_body_filters eval
sub {
    my $b = shift;
    if ($b =~ /"key":"sk-sf-([0-9a-f]{48})"/) {
        # past the prefix the API lists
        push @::Shown, substr($1, 8);
        return "shown\n";
    }
    return "left: " . Smartflow::Memory::left(@::Shown) . "shown: "
           . scalar(@::Shown) . "\n";
}
--- response_body eval
["shown\n", "shown\n", "left: shown: 2\n"]
--- no_error_log
[error]
