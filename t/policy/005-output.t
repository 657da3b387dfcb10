# Guardrails on the answer (groups with "output on"), plain and streamed,
# on both APIs: what the model writes is redacted before the client sees
# it, a finding split across stream events is found whole (the mock
# streams one word per event, so a phone number spans four), a block ends
# a stream with an error event in the client's format and turns a whole
# answer into the API's own content-filter answer; Shield reads the tool
# calls the model makes.  The mock answers x-mock-reply; canned answers
# with tool calls come from a fixture server in the same nginx.

use lib 't/lib';
use Smartflow::Conf;
use Smartflow::Mock;
use Test::Nginx::Socket 'no_plan';

$ENV{TEST_NGINX_FIXTURE_PORT} ||= 1988;

our $MainConfig = <<'_EOC_';
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_policy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_audit_module.so;
_EOC_

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;

    upstream sf_mock {
        server 127.0.0.1:$TEST_NGINX_MOCK_PORT;
        keepalive 8;
    }

    upstream sf_fixture {
        server 127.0.0.1:$TEST_NGINX_FIXTURE_PORT;
    }

    smartflow_provider openai type=openai upstream=http://sf_mock path=/v1
                       key=sk-provider-test-key;
    smartflow_provider anthropic type=anthropic upstream=http://sf_mock
                       key=sk-ant-provider-key;
    smartflow_provider canned type=openai upstream=http://sf_fixture
                       path=/canned key=sk-provider-test-key;

    smartflow_route gpt-* openai;
    smartflow_route claude-* anthropic;
    smartflow_route agent-* canned;

    smartflow_policy_group out {
        pii redact;
        shield block;
        output on;
    }

    smartflow_policy_group out_strict extends=out {
        card block;
    }

    smartflow_policy_group in_only extends=out {
        output off;
    }

    smartflow_policy_group flag_mail extends=out {
        email flag;
        phone block;
    }

    server {
        listen 127.0.0.1:$TEST_NGINX_FIXTURE_PORT;

        location = /canned/chat/completions {
            if ($http_x_stream) {
                rewrite ^ /canned-stream last;
            }
            if ($http_x_canned) {
                rewrite ^ /canned/$http_x_canned last;
            }
            default_type application/json;
            return 200 '{"id":"chatcmpl-c1","object":"chat.completion","created":1,"model":"agent-1","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"bash","arguments":"{\\"command\\":\\"$http_x_command\\"}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}';
        }

        location = /canned-stream {
            default_type text/event-stream;
            return 200 'data: {"id":"c2","object":"chat.completion.chunk","created":1,"model":"agent-1","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"bash","arguments":""}}]},"finish_reason":null}]}

data: {"id":"c2","object":"chat.completion.chunk","created":1,"model":"agent-1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"command\\":\\"git push"}}]},"finish_reason":null}]}

data: {"id":"c2","object":"chat.completion.chunk","created":1,"model":"agent-1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":" --force origin main\\"}"}}]},"finish_reason":null}]}

data: {"id":"c2","object":"chat.completion.chunk","created":1,"model":"agent-1","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}

data: [DONE]

';
        }

        location ~ ^/canned/[a-z]+$ {
            default_type text/event-stream;
            return 200 "CANNED_PARTS";
        }
    }
_EOC_

# canned streams, chosen by the header x-canned: each an OpenAI stream of
# the given content pieces, then a finish chunk (FINISH, by default with
# an empty delta) and [DONE], each line ended by EOL
sub canned {
    my ($pieces, %o) = @_;
    my $eol = $o{eol} // "\n";
    my $data = $o{data} // 'data: ';
    my $head = '{"id":"c3","object":"chat.completion.chunk","created":1,'
        . '"model":"agent-1","choices":[{"index":0,';
    my $finish = $o{finish} // '"delta":{}';
    my @events = map { qq|$head"delta":{"content":"$_"},"finish_reason":null}]}| }
        @$pieces;
    push @events, qq|$head$finish,"finish_reason":"stop"}]}|, '[DONE]';
    return join '', map { "$data$_$eol$eol" } @events;
}

# a stream of these chunks of choices, each [INDEX, DELTA, FINISH], then [DONE]
sub chunks {
    my $head = '{"id":"c4","object":"chat.completion.chunk","created":1,'
        . '"model":"agent-1","choices":[';
    my @events = map {
        $head . CORE::join(',', map {
            my ($i, $delta, $finish) = @$_;
            qq|{"index":$i,"delta":$delta,"finish_reason":| . ($finish ? qq|"$finish"| : 'null') . '}'
        } @$_) . ']}'
    } @_;
    my $s = CORE::join('', map { "data: $_\n\n" } @events, '[DONE]');
    $s =~ s/\\/\\\\/g;     # nginx reads "\\" as "\"
    return $s;
}

sub pieces {
    my ($text, $n) = @_;
    return [ $text =~ /(.{1,$n})/gs ];
}

our $Jwt = 'eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ'
    . join('', map { chr(65 + ($_ * 7) % 26) . chr(97 + ($_ * 11) % 26) } 1 .. 150)
    . '.' . ('Qx7_' x 11);
our $Han = "\xe4\xb8\xad";      # one CJK character, three bytes
our $Pem = '-----BEGIN PRIVATE KEY-----'
    . ('MIIEvQIBADANBgkqhkiG9w0BAQEFAASC' x 640);

my %canned = (
    jwt  => canned(pieces("Your token is $Jwt keep it safe.", 8)),
    han  => canned(['a', @{ pieces($Han x 100, 30) }]),
    crlf => canned(['call +1 415 ', '555 2671 now'], eol => "\r\n",
                   data => 'data:'),
    null => canned(['write to ann@example.com'], finish => '"delta":null'),
    pem  => canned(pieces("here: $Pem", 512)),
    two  => chunks([[0, '{"role":"assistant","content":""}']],
                   [[1, '{"role":"assistant","content":""}']],
                   [[0, '{"content":"call +1 415 "}']],
                   [[1, '{"content":"write to ann@"}']],
                   [[0, '{"content":"555 2671 now"}']],
                   [[1, '{"content":"example.com"}']],
                   [[1, '{}', 'stop']], [[0, '{}', 'stop']]),
    twocalls => chunks(
        [[0, '{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"bash","arguments":""}}]}']],
        [[1, '{"tool_calls":[{"index":0,"id":"call_b","type":"function","function":{"name":"bash","arguments":""}}]}']],
        [[0, '{"tool_calls":[{"index":0,"function":{"arguments":"{\\"command\\":\\"ls -la"}}]}']],
        [[1, '{"tool_calls":[{"index":0,"function":{"arguments":"{\\"command\\":\\"git push --force"}}]}']],
        [[0, '{"tool_calls":[{"index":0,"function":{"arguments":"\\"}"}}]}']],
        [[0, '{}', 'tool_calls']],
        [[1, '{"tool_calls":[{"index":0,"function":{"arguments":" origin main\\"}"}}]}']],
        [[1, '{}', 'tool_calls']]),
    both => chunks([[0, '{"content":"a"}'], [1, '{"content":"b"}']],
                   [[0, '{}', 'stop'], [1, '{}', 'stop']]),
);

# nginx reads no parameter over 4 KB: each stream goes in parts, one map
# a part, which the fixture's return joins
my %parts = map { $_ => [ $canned{$_} =~ /(.{1,3000})/gs ] } keys %canned;
my ($nparts) = sort { $b <=> $a } map { scalar @$_ } values %parts;

for my $i (0 .. $nparts - 1) {
    $HttpConfig .= "    map \$http_x_canned \$canned_$i {\n        default '';\n";
    for my $k (sort keys %parts) {
        $HttpConfig .= "        $k '$parts{$k}[$i]';\n" if defined $parts{$k}[$i];
    }
    $HttpConfig .= "    }\n";
}

my $joined = join '', map { "\$canned_$_" } 0 .. $nparts - 1;
$HttpConfig =~ s/CANNED_PARTS/$joined/;

our $Locations = Smartflow::Conf::shipped_locations();

add_block_preprocessor(sub {
    my $block = shift;

    $block->set_value('main_config', $MainConfig)
        unless defined $block->main_config;
    $block->set_value('http_config', $HttpConfig)
        unless defined $block->http_config;
    $block->set_value('config', "smartflow_policy out;\n$Locations")
        unless defined $block->config;
    $block->set_value('more_headers',
                      "Authorization: Bearer sk-smartflow-test-0123456789\n"
                      . "x-mock-reply: call +1 415 555 2671 or write to ann\@example.com today")
        unless defined $block->more_headers;
});

sub chat {
    my ($model, $stream) = @_;
    my $s = $stream ? ',"stream":true' : '';
    return "POST /v1/chat/completions\n"
        . qq/{"model":"$model","messages":[{"role":"user","content":"who do I contact?"}]$s}/;
}

sub messages {
    my ($model, $stream) = @_;
    my $s = $stream ? ',"stream":true' : '';
    return "POST /anthropic/v1/messages\n"
        . qq/{"model":"$model","max_tokens":64,"messages":[{"role":"user","content":"who do I contact?"}]$s}/;
}

run_tests();

__DATA__

=== TEST 1: OpenAI, plain: the model's PII is redacted in its answer
--- request eval
::chat('gpt-4o')
--- error_code: 200
--- response_body_like chomp
"content":"call \[PHONE_1\] or write to \[EMAIL_1\] today"
--- response_body_unlike chomp
2671|example\.com
--- no_error_log
[error]



=== TEST 2: OpenAI, streamed: a number split over four events is found whole, the stream stays well-formed
--- request eval
::chat('gpt-4o', 1)
--- error_code: 200
--- response_body_like chomp
^data: \{.*"content":"","refusal":null\}.*\n\ndata: \{[^\n]*"delta":\{"content":"call \[PHONE_1\] or write to \[EMAIL_1\] today"\}[^\n]*\n\ndata: \{[^\n]*"finish_reason":"stop"[^\n]*\n\ndata: \[DONE\]\n\n$
--- response_body_unlike chomp
2671|415|example\.com
--- no_error_log
[error]



=== TEST 3: Anthropic, plain
--- request eval
::messages('claude-sonnet-4-5')
--- error_code: 200
--- response_body_like chomp
"text":"call \[PHONE_1\] or write to \[EMAIL_1\] today"
--- no_error_log
[error]



=== TEST 4: Anthropic, streamed: the held text goes out before the block stops
--- request eval
::messages('claude-sonnet-4-5', 1)
--- error_code: 200
--- response_body_like chomp
event: content_block_delta\ndata: \{"type":"content_block_delta","index":0,"delta":\{"type":"text_delta","text":"call \[PHONE_1\] or write to \[EMAIL_1\] today"\}\}\n\nevent: content_block_stop.*event: message_stop
--- response_body_unlike chomp
2671|415|example\.com
--- no_error_log
[error]



=== TEST 5: an OpenAI client of an Anthropic model: the translated stream is scanned
--- request eval
::chat('claude-sonnet-4-5', 1)
--- error_code: 200
--- response_body_like chomp
\[PHONE_1\].*data: \[DONE\]
--- response_body_unlike chomp
2671|example\.com
--- no_error_log
[error]



=== TEST 6: a block ends an OpenAI stream with an error event, the value never sent
--- config eval
"smartflow_policy out_strict;\n$::Locations"
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-mock-reply: my card is 4111 1111 1111 1111 thanks
--- request eval
::chat('gpt-4o', 1)
--- error_code: 200
--- response_body_like chomp
data: \{"error":\{"message":"The answer was blocked by the content policy \(rule `card`\).","type":"invalid_request_error","param":null,"code":"content_policy_violation"\}\}\n\n$
--- response_body_unlike chomp
4111
--- error_log
smartflow policy: rule "card" of group "out_strict" blocked the answer



=== TEST 7: ... and an Anthropic stream with its error event
--- config eval
"smartflow_policy out_strict;\n$::Locations"
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-mock-reply: my card is 4111 1111 1111 1111 thanks
--- request eval
::messages('claude-sonnet-4-5', 1)
--- error_code: 200
--- response_body_like chomp
event: error\ndata: \{"type":"error","error":\{"type":"invalid_request_error","message":"The answer was blocked by the content policy \(rule `card`\)."\}\}\n\n$
--- response_body_unlike chomp
4111
--- error_log
blocked the answer



=== TEST 8: a whole answer blocked: OpenAI's content filter answer, Anthropic's refusal
--- config eval
"smartflow_policy out_strict;\n$::Locations"
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-mock-reply: my card is 4111 1111 1111 1111 thanks
--- request eval
[ ::chat('gpt-4o'), ::messages('claude-sonnet-4-5') ]
--- error_code eval
[200, 200]
--- response_body_like eval
[ qr/"message":\{"role":"assistant","content":null,"refusal":"The answer was blocked by the content policy \(rule `card`\)\."\},"logprobs":null,"finish_reason":"content_filter"/,
  qr/"content":\[\{"type":"text","text":"The answer was blocked by the content policy \(rule `card`\)\."\}\],"stop_reason":"refusal"/ ]
--- response_body_unlike eval
[ qr/4111/, qr/4111/ ]
--- error_log
blocked the answer



=== TEST 9: Shield on a tool call the model makes (whole answer)
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-command: rm -rf /
--- request eval
::chat('agent-1')
--- error_code: 200
--- response_body_like chomp
"finish_reason":"content_filter"
--- response_body_unlike chomp
rm -rf
--- error_log
smartflow policy: rule "shield.shell" shell.rm_root of group "out" blocked the answer



=== TEST 10: ... a harmless one passes
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-command: ls -la
--- request eval
::chat('agent-1')
--- error_code: 200
--- response_body_like chomp
"arguments":"\{\\"command\\":\\"ls -la\\"\}"\}\}\]\},"finish_reason":"tool_calls"
--- no_error_log
[error]



=== TEST 11: Shield on a streamed tool call split over events: its arguments are held, the stream ends with an error before any piece goes out
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-stream: 1
--- request eval
::chat('agent-1', 1)
--- error_code: 200
--- response_body_unlike
git push|--force
--- response_body_like chomp
"name":"bash","arguments":""\}\}\]\},"finish_reason":null\}\]\}\n\ndata: \{"error":\{"message":"The answer was blocked by the content policy \(rule `shield.git`\).","type":"invalid_request_error","param":null,"code":"content_policy_violation"\}\}\n\n$
--- error_log
rule "shield.git" git.force_push of group "out" blocked the answer



=== TEST 12: a group with output off leaves the answer alone
--- config eval
"smartflow_policy in_only;\n$::Locations"
--- request eval
::chat('gpt-4o', 1)
--- error_code: 200
--- response_body_like chomp
"content":" 2671"
--- no_error_log
[error]



=== TEST 13: a JWT streamed in 8-byte pieces, longer than the text held back, is still found whole
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-canned: jwt
--- request eval
::chat('agent-1', 1)
--- error_code: 200
--- response_body_like chomp
"content":"Your "[^\n]*\n\ndata: [^\n]*"content":"token is "[^\n]*\n\ndata: [^\n]*"content":"\[SECRET_1\] keep it safe\."[^\n]*\n\ndata: \{[^\n]*"finish_reason":"stop"[^\n]*\n\ndata: \[DONE\]\n\n$
--- response_body_unlike
eyJ|Qx7_
--- no_error_log
[error]



=== TEST 14: text past ASCII is never cut inside a character: every event's text is whole UTF-8, and all of it arrives
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-canned: han
--- request eval
::chat('agent-1', 1)
--- error_code: 200
--- response_body_filters eval
sub {
    my @texts = $_[0] =~ /"content":"([^"]*)"/g;
    my @cut = grep { !utf8::decode(my $t = $_) } @texts;
    return scalar(@cut) . " cut of " . scalar(@texts) . " texts, "
        . (CORE::join('', @texts) eq 'a' . ("\xe4\xb8\xad" x 100)
           ? "all arrived" : "text lost");
}
--- response_body_like: ^0 cut of ([2-9]|\d\d+) texts, all arrived$
--- no_error_log
[error]



=== TEST 15: events with CRLF line ends and "data:" without its space are scanned too
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-canned: crlf
--- request eval
::chat('agent-1', 1)
--- error_code: 200
--- response_body_like chomp
"content":"call \[PHONE_1\] now"
--- response_body_unlike
2671|415
--- no_error_log
[error]



=== TEST 16: the text held back still goes out when the finishing chunk has no delta
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-canned: null
--- request eval
::chat('agent-1', 1)
--- error_code: 200
--- response_body_like chomp
"delta":\{"content":"write to \[EMAIL_1\]"\},"finish_reason":null\}\]\}\n\ndata: \{[^\n]*"delta":null,"finish_reason":"stop"[^\n]*\n\ndata: \[DONE\]\n\n$
--- response_body_unlike
example\.com
--- no_error_log
[error]



=== TEST 17: a private key's BEGIN line that never ends: past 16 KB held, the block is held to its end and goes out redacted whole
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-canned: pem
--- request eval
::chat('agent-1', 1)
--- error_code: 200
--- response_body_like chomp
^data: \{[^\n]*"content":"here: "[^\n]*\n\ndata: \{[^\n]*"content":"\[SECRET_1\]"[^\n]*\n\ndata: \{[^\n]*"delta":\{\},"finish_reason":"stop"[^\n]*\n\ndata: \[DONE\]\n\n$
--- response_body_unlike
BEGIN|MIIE
--- no_error_log
[error]



=== TEST 18: n > 1: each choice's text is held and redacted on its own, under its own index
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-canned: two
--- request eval
::chat('agent-1', 1)
--- error_code: 200
--- response_body_like chomp
"choices":\[\{"index":1,"delta":\{"content":"write to \[EMAIL_1\]"\},"finish_reason":null\}\]\}\n\ndata: [^\n]*"choices":\[\{"index":1,"delta":\{\},"finish_reason":"stop"\}\]\}\n\ndata: [^\n]*"choices":\[\{"index":0,"delta":\{"content":"call \[PHONE_1\] now"\},"finish_reason":null\}\]\}\n\ndata: [^\n]*"choices":\[\{"index":0,"delta":\{\},"finish_reason":"stop"\}\]\}\n\ndata: \[DONE\]\n\n$
--- response_body_unlike
2671|415|example\.com
--- no_error_log
[error]



=== TEST 19: n > 1 with tool calls: each choice's call is held to its own finish, Shield reads the second choice's whole
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-canned: twocalls
--- request eval
::chat('agent-1', 1)
--- error_code: 200
--- response_body_like chomp
"choices":\[\{"index":0,"delta":\{"tool_calls":\[\{"index":0,"function":\{"arguments":"\{\\"command\\":\\"ls -la\\"\}"\}\}\]\},"finish_reason":null\}\]\}\n\ndata: [^\n]*"index":0,"delta":\{\},"finish_reason":"tool_calls".*\n\ndata: \{"error":\{"message":"The answer was blocked by the content policy \(rule `shield.git`\)\.","type":"invalid_request_error","param":null,"code":"content_policy_violation"\}\}\n\n$
--- response_body_unlike
--force|origin main
--- error_log
rule "shield.git" git.force_push of group "out" blocked the answer



=== TEST 20: a chunk that carries several choices cannot be read one choice at a time: the stream is cut, not passed unread
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-canned: both
--- request eval
::chat('agent-1', 1)
--- response_body_unlike
"content":"[ab]"
--- error_log
a stream event with several choices cannot be scanned, the answer is cut short
--- ignore_response



=== TEST 21: more findings than one scan keeps, all only flagged, do not hide the one after them that blocks
--- config eval
"smartflow_policy flag_mail;\n$::Locations"
--- more_headers eval
"Authorization: Bearer sk-smartflow-test-0123456789\nx-mock-reply: "
    . CORE::join(' ', map { "user$_\@example.com" } 1 .. 130)
    . " or call +1 415 555 2671"
--- request eval
[ ::chat('gpt-4o'), ::chat('gpt-4o', 1) ]
--- error_code eval
[200, 200]
--- response_body_like eval
[ qr/"refusal":"The answer was blocked by the content policy \(rule `phone`\)\."\},"logprobs":null,"finish_reason":"content_filter"/,
  qr/data: \{"error":\{"message":"The answer was blocked by the content policy \(rule `phone`\)\.","type":"invalid_request_error","param":null,"code":"content_policy_violation"\}\}\n\n$/ ]
--- response_body_unlike eval
[ qr/2671/, qr/2671/ ]
--- error_log
blocked the answer
