# The tool calls of the history (OpenAI's tool_calls[].function.arguments,
# a JSON document in a string): its strings are read decoded, so that a
# value written with escapes ("\u0040", "\u0034...") is found as well,
# and a finding never reaches into the document's own syntax (a private
# key's BEGIN line with no END stops at its string's end); member names
# are read as well.  The arguments the provider gets are a valid
# document, written again when something in it was replaced, the
# client's bytes when nothing was.  Arguments given as a document (as
# some servers take them) are read, and Shield reads them, too.
# The mock answers with the SHA-256 of the bytes it got.

use lib 't/lib';
use Smartflow::Conf;
use Smartflow::Mock;
use Digest::SHA ();
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

    smartflow_policy_group base {
        pii redact;
        shield block;
    }

    smartflow_policy_group noshield {
        pii redact;
    }

    smartflow_policy_group strict {
        card block;
    }
_EOC_

our $Locations = Smartflow::Conf::shipped_locations();

add_block_preprocessor(sub {
    my $block = shift;

    $block->set_value('main_config', $MainConfig)
        unless defined $block->main_config;
    $block->set_value('http_config', $HttpConfig)
        unless defined $block->http_config;
    $block->set_value('config', "smartflow_policy base;\n$Locations")
        unless defined $block->config;
    $block->set_value('more_headers',
                      'Authorization: Bearer sk-smartflow-test-0123456789')
        unless defined $block->more_headers;
});

sub sha { 'x-mock-body-sha256: ' . Digest::SHA::sha256_hex($_[0]) }

# a history with one call whose arguments are ARGS (as the JSON text of
# the string, escapes included)
sub call {
    my ($args) = @_;
    return '{"model":"gpt-4o","messages":[{"role":"user","content":"go"},'
        . '{"role":"assistant","content":null,"tool_calls":[{"id":"c1",'
        . '"type":"function","function":{"name":"send","arguments":"'
        . $args . '"}}]},{"role":"tool","tool_call_id":"c1",'
        . '"content":"sent"}]}';
}

# an address and a card written with escapes, an address in a member
# named "name", a "\/" elsewhere
our $Escaped = call('{\"to\": \"bob\\\\u0040example.com\", '
                    . '\"name\": \"ann@example.com\", '
                    . '\"card\": \"\\\\u0034111 1111 1111 1111\", '
                    . '\"path\": \"a\\\\/b\"}');
our $EscapedOut = call('{\"to\":\"[EMAIL_1]\",\"name\":\"[EMAIL_2]\",'
                       . '\"card\":\"[CARD_1]\",\"path\":\"a/b\"}');

# a private key's BEGIN line with no END, then another member
our $Pem = call('{\"key\": \"-----BEGIN PRIVATE KEY-----\\\\nMIIEvQIBADAN'
                . 'BgkqhkiG9w0BAQEFAASC\", \"keep\": \"yes\"}');
our $PemOut = call('{\"key\":\"[SECRET_1]\",\"keep\":\"yes\"}');

# nothing to replace, escapes and spaces kept
our $Clean = call('{\"q\": \"caf\\\\u00e9 \\\\\"menu\\\\\"\",  \"n\": 2}');

# an address as a member's name, beside one in a value
our $Keyed = call('{\"ann@example.com\": {\"cc\": \"bob\\u0040example.org\"}}');
our $KeyedOut = call('{\"[EMAIL_1]\":{\"cc\":\"[EMAIL_2]\"}}');

# arguments given as a document, not as its text
our $Object = '{"model":"gpt-4o","messages":[{"role":"user","content":"go"},'
    . '{"role":"assistant","content":null,"tool_calls":[{"id":"c1",'
    . '"type":"function","function":{"name":"send","arguments":'
    . '{"to":"ann@example.com","cmd":"ls"}}}]},{"role":"tool",'
    . '"tool_call_id":"c1","content":"sent"}]}';
(our $ObjectOut = $Object) =~ s/ann\@example\.com/[EMAIL_1]/;
(our $ObjectRm = $Object) =~ s/"cmd":"ls"/"cmd":"rm -rf \/"/;

# arguments that are no JSON document: read as they are
our $Text = call('mail ann@example.com now');
our $TextOut = call('mail [EMAIL_1] now');

run_tests();

__DATA__

=== TEST 1: values written with escapes are found, and the arguments written again
--- request eval
"POST /v1/chat/completions\n$::Escaped"
--- error_code: 200
--- response_headers eval
[::sha($::EscapedOut), 'x-smartflow-policy: email:redact,card:redact']
--- no_error_log
[error]



=== TEST 2: ... also without Shield
--- config eval
"smartflow_policy noshield;\n$::Locations"
--- request eval
"POST /v1/chat/completions\n$::Escaped"
--- error_code: 200
--- response_headers eval
::sha($::EscapedOut)
--- no_error_log
[error]



=== TEST 3: a key with no END line stops at its string's end: the arguments stay a document
--- request eval
"POST /v1/chat/completions\n$::Pem"
--- error_code: 200
--- response_headers eval
[::sha($::PemOut), 'x-smartflow-policy: secret:redact']
--- no_error_log
[error]



=== TEST 4: nothing found: the client's bytes
--- request eval
"POST /v1/chat/completions\n$::Clean"
--- error_code: 200
--- response_headers eval
::sha($::Clean)
--- no_error_log
[error]



=== TEST 5: arguments that are no document are read as text
--- request eval
"POST /v1/chat/completions\n$::Text"
--- error_code: 200
--- response_headers eval
::sha($::TextOut)
--- no_error_log
[error]



=== TEST 6: a card written with escapes is blocked, and not echoed
--- config eval
"smartflow_policy strict;\n$::Locations"
--- request eval
"POST /v1/chat/completions\n$::Escaped"
--- error_code: 400
--- response_body chomp
{"error":{"message":"The request was blocked by the content policy (rule `card`).","type":"invalid_request_error","param":null,"code":"content_policy_violation"}}
--- error_log
rule "card" of group "strict" blocked the request



=== TEST 7: the arguments' member names are read too
--- request eval
"POST /v1/chat/completions\n$::Keyed"
--- error_code: 200
--- response_headers eval
[::sha($::KeyedOut), 'x-smartflow-policy: email:redact']
--- no_error_log
[error]



=== TEST 8: arguments given as a document are read
--- request eval
"POST /v1/chat/completions\n$::Object"
--- error_code: 200
--- response_headers eval
[::sha($::ObjectOut), 'x-smartflow-policy: email:redact']
--- no_error_log
[error]



=== TEST 9: ... and Shield reads them
--- request eval
"POST /v1/chat/completions\n$::ObjectRm"
--- error_code: 400
--- response_body chomp
{"error":{"message":"The request was blocked by the content policy (rule `shield.shell`: shell.rm_root).","type":"invalid_request_error","param":null,"code":"content_policy_violation"}}
