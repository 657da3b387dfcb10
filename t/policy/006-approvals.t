# Shield's approval queue: a destructive tool call whose tier is
# "approve" is held as a pending item; the client is told it awaits an
# operator; the admin API (master key only) lists, approves and denies
# items; an approved retry passes once, a denied one is refused.  An
# item is the call of one key: its tool, its whole arguments and the rule.
# (The runner checks a block's error_log after each of its requests, so
# the log lines are asserted in the single-request blocks.)

use lib 't/lib';
use Smartflow::Conf;
use Smartflow::Mock;
use Smartflow::Keys;
use Test::Nginx::Socket 'no_plan';

no_shuffle();

unlink server_root() . '/approvals-keys.state';

our $MainConfig = <<'_EOC_';
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_policy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_audit_module.so;

    thread_pool sf threads=1;
_EOC_

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_keys_zone keys 1m state=approvals-keys.state thread_pool=sf;

    upstream sf_mock {
        server 127.0.0.1:$TEST_NGINX_MOCK_PORT;
        keepalive 8;
    }

    smartflow_provider openai type=openai upstream=http://sf_mock path=/v1
                       key=sk-provider-test-key;
    smartflow_route gpt-* openai;

    smartflow_policy_approvals shield 64k;

    smartflow_policy_group agents {
        shield block;
        shield shell approve;
    }
_EOC_

our $Locations = Smartflow::Conf::shipped_locations() . <<'_EOC_';
    location /api/shield/ {
        smartflow_policy_admin;
    }

    include $TEST_NGINX_SMARTFLOW_CONF/smartflow_admin.conf;
_EOC_

add_block_preprocessor(sub {
    my $block = shift;

    $block->set_value('main_config', $MainConfig)
        unless defined $block->main_config;
    $block->set_value('http_config', $HttpConfig)
        unless defined $block->http_config;
    $block->set_value('config', "smartflow_policy agents;\n$Locations")
        unless defined $block->config;
    $block->set_value('more_headers',
                      'Authorization: Bearer sk-smartflow-test-0123456789')
        unless defined $block->more_headers;

    Smartflow::Keys::substitute($block);
    return $block;
});

sub call {
    my $cmd = shift;
    return "POST /v1/chat/completions\n"
        . qq/{"model":"gpt-4o","messages":[{"role":"user","content":"clean up"},/
        . qq/{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"bash","arguments":"{\\"command\\":\\"$cmd\\"}"}}]},/
        . qq/{"role":"tool","tool_call_id":"c1","content":"ok"},{"role":"user","content":"go on"}]}/;
}

# a tool call of any name and arguments (a JSON text) in the history
sub tool_call {
    my ($tool, $args) = @_;
    $args =~ s/(["\\])/\\$1/g;
    return "POST /v1/chat/completions\n"
        . qq/{"model":"gpt-4o","messages":[{"role":"user","content":"clean up"},/
        . qq/{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"$tool","arguments":"$args"}}]},/
        . qq/{"role":"tool","tool_call_id":"c1","content":"ok"},{"role":"user","content":"go on"}]}/;
}

our $M = 'Authorization: Bearer sk-smartflow-test-0123456789';

# one assistant turn with a tool call per command
sub calls {
    my $n = 0;
    my $tc = join ',', map {
        $n++;
        qq/{"id":"c$n","type":"function","function":{"name":"bash","arguments":"{\\"command\\":\\"$_\\"}"}}/
    } @_;
    my $res = join ',', map {
        qq/{"role":"tool","tool_call_id":"c$_","content":"ok"}/
    } 1 .. $n;
    return "POST /v1/chat/completions\n"
        . qq/{"model":"gpt-4o","messages":[{"role":"user","content":"clean up"},/
        . qq/{"role":"assistant","content":null,"tool_calls":[$tc]},$res,/
        . qq/{"role":"user","content":"go on"}]}/;
}

# a request's body, without its request line
sub body_of {
    my $r = shift;
    $r =~ s/^[^\n]*\n//;
    return $r;
}

# a queue of three items (a 32k zone) and an nginx that can wait
our $SmallQueue = $HttpConfig;
$SmallQueue =~ s/smartflow_policy_approvals shield 64k;/smartflow_policy_approvals shield 32k;/;

our $ShortLived = $HttpConfig;
$ShortLived =~ s/smartflow_policy_approvals shield 64k;/smartflow_policy_approvals shield 64k pending=2s approved=1s;/;

run_tests();

__DATA__

=== TEST 1: held, listed, approved, passed once, held again, denied, refused
--- request eval
[ ::call('rm -rf /home/alice'),
  "GET /api/shield/pending",
  "POST /api/shield/pending/1/approve",
  ::call('rm -rf /home/alice'),
  ::call('rm -rf /home/alice'),
  "POST /api/shield/pending/2/deny",
  ::call('rm -rf /home/alice'),
  "GET /api/shield/pending" ]
--- error_code eval
[403, 200, 200, 200, 403, 200, 400, 200]
--- response_body_like eval
[ qr/^\{"error":\{"message":"The tool call \(rule `shield.shell`: shell.rm_root\) awaits an operator's approval as Shield item 1; send the request again once it is approved.","type":"permission_error","param":null,"code":"approval_required"\}\}$/,
  qr/^\{"object":"list","data":\[\{"id":1,"object":"shield.pending","rule":"shell.rm_root","key":"master","key_name":null,"tool":"bash","arguments":"\{\\"command\\":\\"rm -rf \/home\/alice\\"\}","arguments_length":32,"truncated":false,"status":"pending","created_at":(\d+),"expires_at":(??{ $1 + 3600 })\}\]\}$/,
  qr/^\{"id":1,"object":"shield.pending","rule":"shell.rm_root","key":"master","key_name":null,"tool":"bash","arguments":"\{\\"command\\":\\"rm -rf \/home\/alice\\"\}","arguments_length":32,"truncated":false,"status":"approved","created_at":\d+,"expires_at":\d+\}$/,
  qr/"content":"mock reply to: go on"/,
  qr/awaits an operator's approval as Shield item 2;.*"code":"approval_required"/,
  qr/"status":"denied"/,
  qr/^\{"error":\{"message":"The request was blocked by the content policy \(rule `shield.shell`: shell.rm_root\)\.","type":"invalid_request_error","param":null,"code":"content_policy_violation"\}\}$/,
  qr/^\{"object":"list","data":\[\]\}$/ ]



=== TEST 2: the other tiers of the same group do not wait: git is blocked outright
--- request eval
::call('git push --force origin main')
--- error_code: 400
--- response_body_like chomp
"code":"content_policy_violation"
--- error_log
rule "shield.git" git.force_push of group "agents" blocked the request



=== TEST 3: the admin API takes the master key only
--- more_headers
Authorization: Bearer sk-not-the-master-key-000000
--- request
GET /api/shield/pending
--- error_code: 401
--- response_body_like chomp
"code":"invalid_api_key"
--- error_log
The Shield admin API takes the master key only



=== TEST 4: unknown ids, paths and methods
--- request eval
[ "POST /api/shield/pending/99/approve", "GET /api/shield/pending/1/approve",
  "POST /api/shield/pending/1/erase", "POST /api/shield/pending" ]
--- error_code eval
[404, 405, 404, 405]
--- response_body_like eval
[ qr/No pending Shield call with id 99/, qr/"code":"method_not_allowed"/,
  qr/"code":"not_found"/, qr/"code":"method_not_allowed"/ ]



=== TEST 5: without a queue, the approve tier refuses and says why
--- http_config eval
my $c = $::HttpConfig; $c =~ s/smartflow_policy_approvals shield 64k;//; $c
--- config eval
"smartflow_policy agents;\n" . Smartflow::Conf::shipped_locations()
--- request eval
::call('rm -rf /home/alice')
--- error_code: 403
--- response_body_like chomp
requires an operator's approval, and this gateway keeps no approval queue
--- error_log
approval_required



=== TEST 6: two virtual keys for the next block (vk_1, vk_2: the state starts empty)
--- request eval
[ "POST /api/auth/virtual-keys\n" . '{"name":"alice"}',
  "POST /api/auth/virtual-keys\n" . '{"name":"mallory"}' ]
--- error_code eval
[201, 201]
--- no_error_log
[error]



=== TEST 7: an approval is for one key's very call: another key, another argument or another tool waits for its own
--- more_headers eval
[ 'Authorization: Bearer %KEY(alice)%', $::M,
  'Authorization: Bearer %KEY(mallory)%',
  'Authorization: Bearer %KEY(mallory)%',
  'Authorization: Bearer %KEY(alice)%',
  'Authorization: Bearer %KEY(alice)%', $::M,
  'Authorization: Bearer %KEY(alice)%',
  'Authorization: Bearer %KEY(alice)%' ]
--- request eval
[ ::tool_call('bash', '{"command":"rm -rf /home/alice","host":"staging"}'),
  "POST /api/shield/pending/1/approve",
  ::tool_call('bash', '{"command":"rm -rf /home/alice","host":"production"}'),
  ::tool_call('bash', '{"command":"rm -rf /home/alice","host":"staging"}'),
  ::tool_call('bash', '{"command":"rm -rf /home/alice","host":"production"}'),
  ::tool_call('ssh', '{"command":"rm -rf /home/alice","host":"staging"}'),
  "GET /api/shield/pending",
  ::tool_call('bash', '{ "command" : "rm -rf /home/alice", "host" : "staging" }'),
  ::tool_call('bash', '{"command":"rm -rf /home/alice","host":"staging"}') ]
--- error_code eval
[403, 200, 403, 403, 403, 403, 200, 200, 403]
--- response_body_like eval
[ qr/as Shield item 1;/,
  qr/"key":"vk_1","key_name":"alice","tool":"bash","arguments":"\{\\"command\\":\\"rm -rf \/home\/alice\\",\\"host\\":\\"staging\\"\}","arguments_length":49,"truncated":false,"status":"approved"/,
  qr/as Shield item 2;/,
  qr/as Shield item 3;/,
  qr/as Shield item 4;/,
  qr/as Shield item 5;/,
  qr/^\{"object":"list","data":\[\{"id":2,"object":"shield.pending","rule":"shell.rm_root","key":"vk_2","key_name":"mallory","tool":"bash","arguments":"\{\\"command\\":\\"rm -rf \/home\/alice\\",\\"host\\":\\"production\\"\}","arguments_length":52,"truncated":false,"status":"pending".*?\{"id":3,.*?"key":"vk_2".*?\\"staging\\".*?\{"id":4,.*?"key":"vk_1".*?\\"production\\".*?\{"id":5,.*?"key":"vk_1","key_name":"alice","tool":"ssh".*\]\}$/,
  qr/"content":"mock reply to: go on"/,
  qr/as Shield item 6;/ ]



=== TEST 8: a long call is shown as much as an operator can read, cut at a character, flagged and measured
--- request eval
[ ::call('rm -rf /tmp/xy; echo ' . ("\xc3\xa9" x 2500) . '; rm -rf /home/alice'),
  "GET /api/shield/pending" ]
--- error_code eval
[403, 200]
--- response_body_like eval
[ qr/as Shield item 1;/,
  qr/^\{"object":"list","data":\[\{"id":1,"object":"shield.pending","rule":"shell.rm_root","key":"master","key_name":null,"tool":"bash","arguments":"\{\\"command\\":\\"rm -rf \/tmp\/xy; echo (?:\xc3\xa9){2031}","arguments_length":5055,"truncated":true,"status":"pending","created_at":\d+,"expires_at":\d+\}\]\}$/ ]



=== TEST 9: a queue full of waiting calls refuses a new one with its own error, and says so in the log
--- http_config eval: $::SmallQueue
--- init
Smartflow::Keys::burst(1, 'POST', '/v1/chat/completions',
                       ::body_of(::call("rm -rf /home/$_")), $::M)
    for qw(a b c);
--- request eval
::call('rm -rf /home/d')
--- error_code: 503
--- response_body chomp
{"error":{"message":"The tool call (rule `shield.shell`: shell.rm_root) requires an operator's approval, and the approval queue is full; try again later.","type":"server_error","param":null,"code":"approval_queue_full"}}
--- error_log
smartflow policy: approval queue "shield" is full (3 items, each pending or approved), a tool call (rule shell.rm_root) of key "master" is refused



=== TEST 10: a full queue makes room from a denial, never from an approval
--- http_config eval: $::SmallQueue
--- request eval
[ ::call('rm -rf /home/a'), ::call('rm -rf /home/b'), ::call('rm -rf /home/c'),
  "POST /api/shield/pending/1/approve", "POST /api/shield/pending/2/deny",
  ::call('rm -rf /home/d'), ::call('rm -rf /home/a'), ::call('rm -rf /home/b') ]
--- error_code eval
[403, 403, 403, 200, 200, 403, 200, 403]
--- response_body_like eval
[ qr/Shield item 1;/, qr/Shield item 2;/, qr/Shield item 3;/,
  qr/"status":"approved"/, qr/"status":"denied"/, qr/Shield item 4;/,
  qr/"content":"mock reply to: go on"/, qr/Shield item 5;/ ]
--- no_error_log
approval queue "shield" is full
[alert]



=== TEST 11: a pending call and an approval expire (pending= and approved=)
--- main_config eval
$::MainConfig
. "    load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;\n"
--- http_config eval: $::ShortLived
--- config eval
"smartflow_policy agents;\n$::Locations"
. "    location = /sleep {\n        echo_sleep 3.1;\n        echo ok;\n    }\n"
--- request eval
[ ::call('rm -rf /home/alice'), "GET /api/shield/pending", "GET /sleep",
  "GET /api/shield/pending", "POST /api/shield/pending/1/approve",
  ::call('rm -rf /home/alice'), "POST /api/shield/pending/2/approve",
  "GET /sleep", ::call('rm -rf /home/alice') ]
--- timeout: 6
--- error_code eval
[403, 200, 200, 200, 404, 403, 200, 200, 403]
--- response_body_like eval
[ qr/Shield item 1;/,
  qr/"created_at":(\d+),"expires_at":(??{ $1 + 2 })\}\]\}$/,
  qr/ok/, qr/^\{"object":"list","data":\[\]\}$/,
  qr/No pending Shield call with id 1/, qr/Shield item 2;/,
  qr/"status":"approved"/, qr/ok/, qr/Shield item 3;/ ]
--- no_error_log
approval queue "shield" is full
[alert]



=== TEST 12: the queue's parameters are checked at start-up
--- http_config eval
my $c = $::HttpConfig;
$c =~ s/smartflow_policy_approvals shield 64k;/smartflow_policy_approvals shield 64k pending=soon;/;
$c
--- must_die
--- error_log
[emerg]
invalid time in "pending=soon"



=== TEST 13: an unknown parameter of the queue
--- http_config eval
my $c = $::HttpConfig;
$c =~ s/smartflow_policy_approvals shield 64k;/smartflow_policy_approvals shield 64k ttl=1h;/;
$c
--- must_die
--- error_log
[emerg]
invalid parameter "ttl=1h"



=== TEST 14: a request with two calls to approve holds both at once and needs exactly two approvals
--- request eval
[ ::calls('rm -rf /home/a', 'rm -rf /home/b'),
  "POST /api/shield/pending/1/approve",
  ::calls('rm -rf /home/a', 'rm -rf /home/b'),
  "POST /api/shield/pending/2/approve",
  ::calls('rm -rf /home/a', 'rm -rf /home/b'),
  ::calls('rm -rf /home/a', 'rm -rf /home/b') ]
--- error_code eval
[403, 200, 403, 200, 200, 403]
--- response_body_like eval
[ qr/^\{"error":\{"message":"2 tool calls \(the first: rule `shield.shell`: shell.rm_root\) await an operator's approval as Shield items 1, 2; send the request again once they are approved.","type":"permission_error","param":null,"code":"approval_required"\}\}$/,
  qr/"status":"approved"/,
  qr/awaits an operator's approval as Shield item 2;/,
  qr/"status":"approved"/,
  qr/"content":"mock reply to: go on"/,
  qr/as Shield items 3, 4;/ ]



=== TEST 15: a refused request does not use up the approvals it had
--- request eval
[ ::call('rm -rf /home/a'),
  "POST /api/shield/pending/1/approve",
  ::calls('rm -rf /home/a', 'git push --force origin main'),
  ::call('rm -rf /home/a'),
  ::call('rm -rf /home/a') ]
--- error_code eval
[403, 200, 400, 200, 403]
--- response_body_like eval
[ qr/Shield item 1;/, qr/"status":"approved"/,
  qr/rule `shield.git`: git.force_push/,
  qr/"content":"mock reply to: go on"/, qr/Shield item 2;/ ]



=== TEST 16: a call with 20000 flagged strings is held at the cost of its size, not its size times its strings
Its digest is worked out once, and each string after the first finds
the item the request already holds; before, each string copied and
hashed the whole arguments (8 GB for these 420 KB).
--- request eval
::tool_call('bash', '{"command":[' . join(',', ('"rm -rf /home/alice"') x 20000) . ']}')
--- error_code: 403
--- response_body_like eval
qr/^\{"error":\{"message":"The tool call \(rule `shield.shell`: shell.rm_root\) awaits an operator's approval as Shield item 1;/
--- timeout: 30



=== TEST 17: every key of a tool call's arguments is read, "name", "source" and "file" too
(Those keys are skipped in a message's own structure only.)
--- request eval
[ ::tool_call('bash', '{"name":"rm -rf /home/carol"}'),
  ::tool_call('bash', '{"source":"rm -rf /home/carol"}'),
  ::tool_call('bash', '{"file":"rm -rf /home/carol"}') ]
--- error_code eval
[403, 403, 403]
--- response_body_like eval
[ qr/awaits an operator's approval as Shield item 1;/,
  qr/awaits an operator's approval as Shield item 2;/,
  qr/awaits an operator's approval as Shield item 3;/ ]



=== TEST 18: an approval used by a request the provider never answered is given back
The approved call goes first to a deployment that cannot be reached
(502), then to one that answers: the approval, given back at the end of
the first, lets the second through, and is then used up.
--- http_config eval
$::HttpConfig . <<'_EOC_';
    upstream sf_dead {
        server 127.0.0.1:1;
    }

    smartflow_provider dead type=openai upstream=http://sf_dead path=/v1
                       key=sk-dead-test-key;
    smartflow_route dead-* dead;
_EOC_
--- request eval
[ ::call('rm -rf /home/alice'),
  "POST /api/shield/pending/1/approve",
  (::call('rm -rf /home/alice') =~ s/"gpt-4o"/"dead-1"/r),
  ::call('rm -rf /home/alice'),
  ::call('rm -rf /home/alice') ]
--- error_code eval
[403, 200, 502, 200, 403]
--- response_body_like eval
[ qr/Shield item 1;/, qr/"status":"approved"/, qr/"error"/,
  qr/"content":"mock reply to: go on"/, qr/Shield item 2;/ ]



=== TEST 19: an Anthropic client's tool_use waits, is approved and passes once, in Anthropic's words
The same call as an OpenAI client's, sent as an Anthropic Messages
request (tool_use in the assistant's turn, tool_result in the user's):
the same item, refused in Anthropic's error format until approved.
--- request eval
my $m = "POST /anthropic/v1/messages\n"
    . q/{"model":"gpt-4o","max_tokens":64,"messages":[{"role":"user","content":"clean up"},/
    . q/{"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"bash","input":{"command":"rm -rf \/home\/bob"}}]},/
    . q/{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"ok"},{"type":"text","text":"go on"}]}]}/;
[ $m, "GET /api/shield/pending", "POST /api/shield/pending/1/approve",
  $m, $m ]
--- error_code eval
[403, 200, 200, 200, 403]
--- response_body_like eval
[ qr/^\{"type":"error","error":\{"type":"permission_error","message":"The tool call \(rule `shield.shell`: shell.rm_root\) awaits an operator's approval as Shield item 1; send the request again once it is approved."\}\}$/,
  qr/^\{"object":"list","data":\[\{"id":1,"object":"shield.pending","rule":"shell.rm_root","key":"master","key_name":null,"tool":"bash","arguments":"\{\\"command\\":\\"rm -rf \/home\/bob\\"\}",.*"status":"pending"/,
  qr/"status":"approved"/,
  qr/^\{"id":"[^"]+","type":"message","role":"assistant".*"text":"mock reply to: go on"/,
  qr/^\{"type":"error","error":\{"type":"permission_error","message":"[^"]*Shield item 2;/ ]
