# Guardrails on the tool calls the model makes (groups with "output on"),
# plain and streamed, on both APIs and from OpenAI, Anthropic and Gemini
# providers: the arguments' PII is redacted, a value split across stream
# events (the mock streams arguments in word-sized pieces, an address in
# five) is found whole, the arguments the client assembles are valid JSON,
# and a block ends the stream with the client's error event before any
# piece of the arguments goes out.  The mock makes a tool call when tools
# are offered and the user asks about the weather; x-mock-tool-args sets
# the call's arguments.  Each answer is read back the way an SDK would
# (the stream's events assembled, the arguments parsed), by assemble().

use lib 't/lib';
use Smartflow::Conf;
use Smartflow::Mock;
use JSON::PP ();
use Test::Nginx::Socket 'no_plan';

$ENV{TEST_NGINX_FIXTURE_PORT} ||= 1988;

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

    upstream sf_fixture {
        server 127.0.0.1:$TEST_NGINX_FIXTURE_PORT;
    }

    smartflow_provider openai type=openai upstream=http://sf_mock path=/v1
                       key=sk-provider-test-key;
    smartflow_provider anthropic type=anthropic upstream=http://sf_mock
                       key=sk-ant-provider-key;
    smartflow_provider gemini type=gemini upstream=http://sf_mock
                       key=gm-provider-key-0123456789;
    smartflow_provider canned type=openai upstream=http://sf_fixture
                       path=/canned key=sk-provider-test-key;

    smartflow_route gpt-* openai;
    smartflow_route claude-* anthropic;
    smartflow_route gemini-* gemini;
    smartflow_route agent-* canned;
    smartflow_provider single type=openai upstream=http://sf_fixture
                       path=/single key=sk-provider-test-key;
    smartflow_route single-* single;
    smartflow_provider antcanned type=anthropic upstream=http://sf_fixture
                       path=/ant/v1 key=sk-ant-provider-key;
    smartflow_route antcanned-* antcanned;

    smartflow_policy_group out {
        pii redact;
        shield block;
        output on;
    }

    smartflow_policy_group out_strict extends=out {
        card block;
    }

    server {
        listen 127.0.0.1:$TEST_NGINX_FIXTURE_PORT;

        location = /ant/v1/messages {
            default_type text/event-stream;
            return 200 'event: message_start
data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"antcanned-1","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":1}}}

event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_1","name":"mail","input":{"to":"ann@example.com","cc":["$http_x_cc"]}}}

event: content_block_stop
data: {"type":"content_block_stop","index":0}

event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":5}}

event: message_stop
data: {"type":"message_stop"}

';
        }

        location = /single/chat/completions {
            default_type text/event-stream;
            return 200 'data: {"id":"c4","object":"chat.completion.chunk","created":1,"model":"single-1","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_9","type":"function","function":{"name":"mail","arguments":"{\\"to\\":\\"ann@example.com\\"}"}}]},"finish_reason":"tool_calls"}]}

data: [DONE]

';
        }

        location = /canned/chat/completions {
            default_type text/event-stream;
            return 200 'data: {"id":"c3","object":"chat.completion.chunk","created":1,"model":"agent-1","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"mail","arguments":"{\\"to\\":\\"ann"}},{"index":1,"id":"call_2","type":"function","function":{"name":"mail","arguments":""}}]},"finish_reason":null}]}

data: {"id":"c3","object":"chat.completion.chunk","created":1,"model":"agent-1","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"{\\"to\\":\\"bob\\\\u0040exam"}}]},"finish_reason":null}]}

data: {"id":"c3","object":"chat.completion.chunk","created":1,"model":"agent-1","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"@example.com\\"}"}},{"index":1,"function":{"arguments":"ple.org\\"}"}}]},"finish_reason":null}]}

data: {"id":"c3","object":"chat.completion.chunk","created":1,"model":"agent-1","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}

data: [DONE]

';
        }
    }
_EOC_

our $Locations = Smartflow::Conf::shipped_locations();

our $Args = '{"to":"ann@example.com","note":"call +1 415 555 2671 now",'
    . '"cc":[{"mail":"bob@example.org"},"ann@example.com"],"n":3}';

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
                      . "x-mock-tool-args: $Args")
        unless defined $block->more_headers;
    $block->set_value('response_body_filters', \&assemble)
        unless defined $block->response_body_filters;
});

sub chat {
    my ($model, $stream) = @_;
    my $s = $stream ? ',"stream":true' : '';
    return "POST /v1/chat/completions\n"
        . qq/{"model":"$model","tools":[{"type":"function","function":{"name":"mail","parameters":{"type":"object"}}}],"messages":[{"role":"user","content":"mail the weather"}]$s}/;
}

sub messages {
    my ($model, $stream) = @_;
    my $s = $stream ? ',"stream":true' : '';
    return "POST /anthropic/v1/messages\n"
        . qq/{"model":"$model","max_tokens":64,"tools":[{"name":"mail","input_schema":{"type":"object"}}],"messages":[{"role":"user","content":"mail the weather"}]$s}/;
}

# The answer as an SDK reads it: each call's name and arguments (parsed,
# written back with sorted keys; "INVALID" if the client could not parse
# them), the number of pieces they came in, the finish, an error; and
# "LEAK" if a value the policy replaces shows anywhere in the bytes.
sub assemble {
    my $body = shift;
    my (%name, %args, %pieces, @end);
    my $canon = JSON::PP->new->canonical;
    my @events = $body =~ /^\{/ ? ("data: $body") : split /\n\n/, $body;

    for my $ev (@events) {
        my ($data) = $ev =~ /^data: (.*)$/m;
        next unless defined $data;

        if ($data eq '[DONE]') {
            push @end, 'done';
            next;
        }

        my $j = eval { JSON::PP::decode_json($data) };
        if (!$j) {
            push @end, "bad event: $data";
            next;
        }

        if ($j->{error}) {
            push @end, "error: " . ($j->{error}{code} // $j->{error}{type})
                       . ": $j->{error}{message}";
            next;
        }

        for my $c (@{ $j->{choices} || [] }) {
            my $m = $c->{delta} || $c->{message} || {};
            for my $tc (@{ $m->{tool_calls} || [] }) {
                my $i = $tc->{index} // 0;
                $name{$i} = $tc->{function}{name} if defined $tc->{function}{name};
                my $a = $tc->{function}{arguments} // '';
                $args{$i} .= $a;
                $pieces{$i}++ if length $a;
            }
            push @end, "finish: $c->{finish_reason}"
                if defined $c->{finish_reason};
        }

        my $type = $j->{type} // '';
        for my $b (@{ $type eq 'message' ? $j->{content} : [] }) {
            next unless $b->{type} eq 'tool_use';
            $name{0} = $b->{name};
            $args{0} = $canon->encode($b->{input});
            $pieces{0} = 1;
        }
        push @end, "stop: $j->{stop_reason}" if $type eq 'message';

        if ($type eq 'content_block_start'
            && $j->{content_block}{type} eq 'tool_use')
        {
            $name{$j->{index}} = $j->{content_block}{name};
        }
        if ($type eq 'content_block_delta'
            && $j->{delta}{type} eq 'input_json_delta')
        {
            $args{$j->{index}} .= $j->{delta}{partial_json};
            $pieces{$j->{index}}++ if length $j->{delta}{partial_json};
        }
        push @end, "stop: $j->{delta}{stop_reason}" if $type eq 'message_delta';
        push @end, 'message_stop' if $type eq 'message_stop';
    }

    my @out;
    for my $i (sort keys %name) {
        my $a = length($args{$i} // '')
            ? eval { $canon->encode(JSON::PP::decode_json($args{$i})) }
              // "INVALID $args{$i}"
            : 'none';
        push @out, "call $i $name{$i} in " . ($pieces{$i} // 0) . ": $a";
    }
    push @out, @end;
    push @out, 'LEAK' if $body =~ /example\.(com|org)|2671|4111|rm -rf/;

    return join("\n", @out) . "\n";
}

run_tests();

__DATA__

=== TEST 1: OpenAI, streamed: the arguments redacted, whole and valid, before the finish
--- request eval
::chat('gpt-4o', 1)
--- error_code: 200
--- response_body
call 0 mail in 1: {"cc":[{"mail":"[EMAIL_2]"},"[EMAIL_1]"],"n":3,"note":"call [PHONE_1] now","to":"[EMAIL_1]"}
finish: tool_calls
done
--- no_error_log
[error]



=== TEST 2: OpenAI, plain
--- request eval
::chat('gpt-4o')
--- error_code: 200
--- response_body
call 0 mail in 1: {"cc":[{"mail":"[EMAIL_2]"},"[EMAIL_1]"],"n":3,"note":"call [PHONE_1] now","to":"[EMAIL_1]"}
finish: tool_calls
--- no_error_log
[error]



=== TEST 3: Anthropic, streamed: one input_json_delta with the whole input before the block stops
--- request eval
::messages('claude-sonnet-4-5', 1)
--- error_code: 200
--- response_body
call 0 mail in 1: {"cc":[{"mail":"[EMAIL_2]"},"[EMAIL_1]"],"n":3,"note":"call [PHONE_1] now","to":"[EMAIL_1]"}
stop: tool_use
message_stop
--- no_error_log
[error]



=== TEST 4: Anthropic, plain: nested values too
--- request eval
::messages('claude-sonnet-4-5')
--- error_code: 200
--- response_body
call 0 mail in 1: {"cc":[{"mail":"[EMAIL_2]"},"[EMAIL_1]"],"n":3,"note":"call [PHONE_1] now","to":"[EMAIL_1]"}
stop: tool_use
--- no_error_log
[error]



=== TEST 5: a Gemini functionCall in a stream, for an OpenAI client
--- request eval
::chat('gemini-2.0-flash', 1)
--- error_code: 200
--- response_body
call 0 mail in 1: {"cc":[{"mail":"[EMAIL_2]"},"[EMAIL_1]"],"n":3,"note":"call [PHONE_1] now","to":"[EMAIL_1]"}
finish: tool_calls
done
--- no_error_log
[error]



=== TEST 6: ... and for an Anthropic client
--- request eval
::messages('gemini-2.0-flash', 1)
--- error_code: 200
--- response_body
call 0 mail in 1: {"cc":[{"mail":"[EMAIL_2]"},"[EMAIL_1]"],"n":3,"note":"call [PHONE_1] now","to":"[EMAIL_1]"}
stop: tool_use
message_stop
--- no_error_log
[error]



=== TEST 7: an OpenAI client of an Anthropic model: the translated deltas are held too
--- request eval
::chat('claude-sonnet-4-5', 1)
--- error_code: 200
--- response_body
call 0 mail in 1: {"cc":[{"mail":"[EMAIL_2]"},"[EMAIL_1]"],"n":3,"note":"call [PHONE_1] now","to":"[EMAIL_1]"}
finish: tool_calls
done
--- no_error_log
[error]



=== TEST 8: a block in the arguments ends an OpenAI stream with its error event, no piece sent
--- config eval
"smartflow_policy out_strict;\n$::Locations"
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-mock-tool-args: {"card":"4111 1111 1111 1111","note":"pay"}
--- request eval
::chat('gpt-4o', 1)
--- error_code: 200
--- response_body
call 0 mail in 0: none
error: content_policy_violation: The answer was blocked by the content policy (rule `card`).
--- error_log
smartflow policy: rule "card" of group "out_strict" blocked the answer



=== TEST 9: ... an Anthropic stream with its error event
--- config eval
"smartflow_policy out_strict;\n$::Locations"
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-mock-tool-args: {"card":"4111 1111 1111 1111","note":"pay"}
--- request eval
::messages('claude-sonnet-4-5', 1)
--- error_code: 200
--- response_body
call 0 mail in 0: none
error: invalid_request_error: The answer was blocked by the content policy (rule `card`).
--- error_log
smartflow policy: rule "card" of group "out_strict" blocked the answer



=== TEST 10: Shield on a streamed Gemini call, for an Anthropic client
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-mock-tool-args: {"command":"rm -rf / --no-preserve-root"}
--- request eval
::messages('gemini-2.0-flash', 1)
--- error_code: 200
--- response_body
call 0 mail in 0: none
error: invalid_request_error: The answer was blocked by the content policy (rule `shield.shell`).
--- error_log
rule "shield.shell" shell.rm_root of group "out" blocked the answer



=== TEST 11: arguments with nothing to change go out as the model wrote them
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-mock-tool-args: {"location":"Paris","days":[1,2]}
--- request eval
::chat('gpt-4o', 1)
--- error_code: 200
--- response_body_filters
--- response_body_like chomp
"delta":\{"tool_calls":\[\{"index":0,"function":\{"arguments":"\{\\"location\\":\\"Paris\\",\\"days\\":\[1,2\]\}"\}\}\]\},"finish_reason":null\}\]\}\n\ndata: \{[^\n]*"finish_reason":"tool_calls"
--- no_error_log
[error]



=== TEST 12: two calls at once, their pieces interleaved, an address behind a JSON escape
--- request eval
::chat('agent-1', 1)
--- error_code: 200
--- response_body
call 0 mail in 1: {"to":"[EMAIL_1]"}
call 1 mail in 1: {"to":"[EMAIL_2]"}
finish: tool_calls
done
--- no_error_log
[error]



=== TEST 13: a call whole in the finishing chunk: its arguments go out in it, redacted
--- request eval
::chat('single-1', 1)
--- error_code: 200
--- response_body
call 0 mail in 1: {"to":"[EMAIL_1]"}
finish: tool_calls
done
--- no_error_log
[error]



=== TEST 14: ... in that very chunk, not one of its own
--- request eval
::chat('single-1', 1)
--- error_code: 200
--- response_body_filters
--- response_body_like chomp
^data: \{[^\n]*"id":"call_9","type":"function","function":\{"name":"mail","arguments":"\{\\"to\\":\\"\[EMAIL_1\]\\"\}"\}\}\]\},"finish_reason":"tool_calls"\}\]\}\n\ndata: \[DONE\]\n\n$
--- no_error_log
[error]



=== TEST 15: a long call in a thousand pieces, an address at its end
--- more_headers eval
"Authorization: Bearer sk-smartflow-test-0123456789\nx-mock-tool-args: {\"body\":\"" . ("lorem ipsum " x 450) . "write to ann\@example.com\"}"
--- request eval
::chat('gpt-4o', 1)
--- error_code: 200
--- response_body eval
"call 0 mail in 1: {\"body\":\"" . ("lorem ipsum " x 450) . "write to [EMAIL_1]\"}\nfinish: tool_calls\ndone\n"
--- no_error_log
[error]



=== TEST 16: an Anthropic tool_use block whose start carries its input: read there
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-cc: bob@example.org
--- request eval
::messages('antcanned-1', 1)
--- error_code: 200
--- response_body_filters
--- response_body_like chomp
event: content_block_start\ndata: \{"type":"content_block_start","index":0,"content_block":\{"type":"tool_use","id":"toolu_1","name":"mail","input":\{"to":"\[EMAIL_1\]","cc":\["\[EMAIL_2\]"\]\}\}\}\n\n.*event: message_stop
--- response_body_unlike
example\.(com|org)
--- no_error_log
[error]



=== TEST 17: ... and Shield there ends the stream
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-cc: git push --force origin main
--- request eval
::messages('antcanned-1', 1)
--- error_code: 200
--- response_body_filters
--- response_body_like chomp
^event: message_start\n[^\n]*\n\nevent: error\ndata: \{"type":"error","error":\{"type":"invalid_request_error","message":"The answer was blocked by the content policy \(rule `shield.git`\)."\}\}\n\n$
--- error_log
rule "shield.git" git.force_push of group "out" blocked the answer
