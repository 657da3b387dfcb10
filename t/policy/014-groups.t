# Policy groups and their patterns: a placeholder names one kind of
# value, so that two different values never take the same placeholder:
# a pattern may not take a rule's name (its placeholders would be the
# rule's), and a pattern that extends a group with a name the parent
# has in another case replaces the parent's, as one of the same name
# does.  A model a group denies is never reached, also through an alias
# or a fallback deployment that names it to the provider: a name with a
# denied model among its deployments is always refused, whichever one
# the weighted pick would have chosen.  A group's allowed models are
# read the same way: a name a pattern of the list matches goes on only if
# every deployment it can reach names an allowed model; a name the list
# gives as it is, without a wildcard, is the operator's choice and goes
# on as it is routed.  The same holds for smartflow_policy_models.  The mock
# answers "mock reply to: <the last user text>".

use lib 't/lib';
use Smartflow::Conf;
use Smartflow::Mock;
use Test::Nginx::Socket 'no_plan';

our $MainConfig = <<'_EOC_';
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_policy_module.so;
_EOC_

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;

    upstream sf_mock {
        server 127.0.0.1:$TEST_NGINX_MOCK_PORT;
        keepalive 8;
    }

    smartflow_provider openai type=openai upstream=http://sf_mock path=/v1
                       key=sk-provider-test-key;
    smartflow_route gpt-* openai;
    smartflow_route fast openai model=gpt-4o-mini;
    smartflow_route smart openai model=gpt-4o;
    smartflow_route smart openai model=gpt-4o-mini fallback;
    smartflow_route quick openai model=gpt-4.1-nano;

    smartflow_policy_group base {
        pii redact;
        pattern ticket "TK-[0-9]+" redact;
        pattern order "ORD-[0-9]+" redact;
    }

    smartflow_policy_group child extends=base {
        pattern Ticket "TICKET[0-9]+" redact;
    }

    smartflow_policy_group nomini extends=base {
        models_deny gpt-4o-mini*;
    }

    smartflow_policy_group minis extends=base {
        models_allow gpt-4o-mini* gpt-4.1-nano f*;
    }

    smartflow_policy_group named extends=base {
        models_allow gpt-4o-mini* smart;
    }
_EOC_

our $Locations = Smartflow::Conf::shipped_locations();

add_block_preprocessor(sub {
    my $block = shift;

    $block->set_value('main_config', $MainConfig)
        unless defined $block->main_config;
    $block->set_value('http_config', $HttpConfig)
        unless defined $block->http_config;
    $block->set_value('config', "smartflow_policy child;\n$Locations")
        unless defined $block->config;
    $block->set_value('more_headers',
                      'Authorization: Bearer sk-smartflow-test-0123456789')
        unless defined $block->more_headers;
});

run_tests();

__DATA__

=== TEST 1: a child's pattern named as the parent's in another case replaces it
--- request
POST /v1/chat/completions
{"model":"gpt-4o","messages":[{"role":"user","content":"TK-2 TICKET3 TICKET4 TICKET3 ORD-5 a@b.io"}]}
--- error_code: 200
--- response_headers
x-smartflow-policy: email:redact,Ticket:redact,order:redact
--- response_body_like chomp
"content":"mock reply to: TK-2 \[TICKET_1\] \[TICKET_2\] \[TICKET_1\] \[ORDER_1\] \[EMAIL_1\]"
--- no_error_log
[error]



=== TEST 2: the parent keeps its own
--- config eval
"smartflow_policy base;\n$::Locations"
--- request
POST /v1/chat/completions
{"model":"gpt-4o","messages":[{"role":"user","content":"TK-2 TICKET3 ORD-5"}]}
--- error_code: 200
--- response_body_like chomp
"content":"mock reply to: \[TICKET_1\] TICKET3 \[ORDER_1\]"



=== TEST 3: a pattern may not take a rule's name
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_policy_group g { pii redact; pattern Email "EM-[0-9]+" redact; }
--- config
--- must_die
--- error_log
pattern name "Email" is the name of a rule



=== TEST 4: ... nor a Shield category's
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_policy_group g { pattern git "GIT-[0-9]+" flag; }
--- config
--- must_die
--- error_log
pattern name "git" is the name of a rule



=== TEST 5: a denied model is not reached through an alias
--- config eval
"smartflow_policy nomini;\n$::Locations"
--- request
POST /v1/chat/completions
{"model":"fast","messages":[{"role":"user","content":"hi"}]}
--- error_code: 403
--- response_body chomp
{"error":{"message":"The model `fast` is not allowed by this endpoint's policy: one of its deployments is a denied model.","type":"permission_error","param":"model","code":"model_not_allowed"}}
--- error_log
smartflow policy: model "fast" refused: one of its deployments is a model group "nomini" denies



=== TEST 6: ... nor through a fallback deployment
--- config eval
"smartflow_policy nomini;\n$::Locations"
--- request
POST /v1/chat/completions
{"model":"smart","messages":[{"role":"user","content":"hi"}]}
--- error_code: 403
--- response_body_like chomp
"code":"model_not_allowed"



=== TEST 7: an alias to a model not denied goes on, as the model named
--- config eval
"smartflow_policy nomini;\n$::Locations"
--- request
POST /v1/chat/completions
{"model":"quick","messages":[{"role":"user","content":"hi"}]}
--- error_code: 200
--- response_headers
x-mock-model: gpt-4.1-nano



=== TEST 8: a name with a denied model among its weighted deployments is always refused
--- http_config eval
$::HttpConfig . "
    smartflow_max_attempts 1;
    smartflow_route mix openai model=gpt-4o weight=1;
    smartflow_route mix openai model=gpt-4o-mini weight=1;
"
--- config eval
"smartflow_policy nomini;\n$::Locations"
--- pipelined_requests eval
[("POST /v1/chat/completions\n{\"model\":\"mix\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}") x 10]
--- error_code eval
[(403) x 10]
--- response_body_like eval
[('"code":"model_not_allowed"') x 10]



=== TEST 9: an alias a pattern allows, whose deployment names a model not allowed, is refused
--- http_config eval
$::HttpConfig . "
    smartflow_route fancy openai model=gpt-4o;
"
--- config eval
"smartflow_policy minis;\n$::Locations"
--- request
POST /v1/chat/completions
{"model":"fancy","messages":[{"role":"user","content":"hi"}]}
--- error_code: 403
--- response_body chomp
{"error":{"message":"The model `fancy` is not allowed by this endpoint's policy: one of its deployments is a model not allowed.","type":"permission_error","param":"model","code":"model_not_allowed"}}
--- error_log
smartflow policy: model "fancy" refused: its deployment "gpt-4o" is a model group "minis" does not allow



=== TEST 10: ... also when only a fallback deployment names it
--- http_config eval
$::HttpConfig . "
    smartflow_route fine openai model=gpt-4o-mini;
    smartflow_route fine openai model=gpt-4o fallback;
"
--- config eval
"smartflow_policy minis;\n$::Locations"
--- request
POST /v1/chat/completions
{"model":"fine","messages":[{"role":"user","content":"hi"}]}
--- error_code: 403
--- response_body_like chomp
one of its deployments is a model not allowed
--- error_log
its deployment "gpt-4o" is a model group "minis" does not allow



=== TEST 11: an alias a pattern allows whose every deployment is allowed goes on
--- config eval
"smartflow_policy minis;\n$::Locations"
--- request
POST /v1/chat/completions
{"model":"fast","messages":[{"role":"user","content":"hi"}]}
--- error_code: 200
--- response_headers
x-mock-model: gpt-4o-mini
--- no_error_log
[warn]



=== TEST 12: a name the list does not allow is refused, whatever its deployments
--- config eval
"smartflow_policy minis;\n$::Locations"
--- request
POST /v1/chat/completions
{"model":"quick","messages":[{"role":"user","content":"hi"}]}
--- error_code: 403
--- response_body chomp
{"error":{"message":"The model `quick` is not allowed by this endpoint's policy.","type":"permission_error","param":"model","code":"model_not_allowed"}}



=== TEST 13: an alias the list gives by its name goes on as it is routed
--- config eval
"smartflow_policy named;\n$::Locations"
--- request
POST /v1/chat/completions
{"model":"smart","messages":[{"role":"user","content":"hi"}]}
--- error_code: 200
--- response_headers
x-mock-model: gpt-4o
--- no_error_log
[warn]



=== TEST 14: smartflow_policy_models reads the deployments the same way
--- config eval
"smartflow_policy_models gpt-4o-mini* f*;\n$::Locations"
--- request eval
[ "POST /v1/chat/completions\n" . '{"model":"fast","messages":[{"role":"user","content":"hi"}]}',
  "POST /v1/chat/completions\n" . '{"model":"fancy","messages":[{"role":"user","content":"hi"}]}' ]
--- http_config eval
$::HttpConfig . "
    smartflow_route fancy openai model=gpt-4o;
"
--- error_code eval
[200, 403]
--- response_body_like eval
[ qr/mock reply to: hi/, qr/one of its deployments is a model not allowed/ ]
