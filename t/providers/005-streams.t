# Streams ("stream": true) across formats: an Anthropic provider's events
# become OpenAI chat.completion.chunk events for an OpenAI client, an OpenAI
# provider's chunks (or the echo provider's) become Anthropic events for an
# Anthropic client, each event as it comes, usage exact from the provider.
# Same-format streams pass through, an OpenAI stream being asked for its
# usage chunk, which is hidden from a client that did not ask for it.
#
# Bodies are checked through openai_sse() and anthropic_sse(), which decode
# every event and write one line per thing a client would see, flagging
# anything that is not a well-formed event of the client's format.
# Provider streams the mock cannot give come from canned responses chosen
# with an x-fixture header; what the provider was asked is seen through a
# recorder (a second server here that hands the request on to the mock
# with the request's body as the reply text).

use lib 't/lib';
use Smartflow::Conf;
use Smartflow::Mock;
use JSON::PP ();
use Test::Nginx::Socket 'no_plan';

$ENV{TEST_NGINX_FIXTURE_PORT} ||= 1988;

our $MainConfig = <<'_EOC_';
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_policy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_cache_module.so;
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

    smartflow_provider anthropic type=anthropic upstream=http://sf_mock
                       key=sk-ant-provider-key;
    smartflow_provider openai type=openai upstream=http://sf_mock
                       key=sk-oai-provider-key;
    smartflow_provider demo type=echo;
    smartflow_provider recorder_an type=anthropic upstream=http://sf_fixture
                       path=/record/v1 key=sk-ant-provider-key;
    smartflow_provider recorder_oa type=openai upstream=http://sf_fixture
                       path=/record/v1 key=sk-oai-provider-key;
    smartflow_provider canned_an type=anthropic upstream=http://sf_fixture
                       path=/canned key=sk-ant-provider-key;
    smartflow_provider canned_oa type=openai upstream=http://sf_fixture
                       path=/canned key=sk-oai-provider-key;

    smartflow_route smartflow-echo demo;
    smartflow_route claude-recorded recorder_an;
    smartflow_route gpt-recorded recorder_oa;
    smartflow_route claude-canned canned_an;
    smartflow_route gpt-canned canned_oa;
    smartflow_route claude-* anthropic;
    smartflow_route gpt-* openai;

    server {
        listen 127.0.0.1:$TEST_NGINX_FIXTURE_PORT;
        default_type text/event-stream;
        client_body_buffer_size 64k;

        # the recorder
        location /record/ {
            rewrite ^/record(/.*)$ $1 break;
            proxy_pass http://sf_mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header x-mock-reply $request_body;
        }

        location /canned/ {
            rewrite ^ /fixture/$http_x_fixture last;
        }

        # Anthropic streams

        location = /fixture/an-two-tools {
            return 200 'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_canned1","type":"message","role":"assistant","model":"claude-upstream","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":8,"output_tokens":1}}}\n\nevent: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\nevent: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Checking both."}}\n\nevent: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\nevent: content_block_start\ndata: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_a","name":"lookup","input":{}}}\n\nevent: content_block_delta\ndata: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"q\\":"}}\n\nevent: content_block_delta\ndata: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\\"x\\"}"}}\n\nevent: content_block_stop\ndata: {"type":"content_block_stop","index":1}\n\nevent: content_block_start\ndata: {"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_b","name":"now","input":{}}}\n\nevent: content_block_delta\ndata: {"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":""}}\n\nevent: content_block_stop\ndata: {"type":"content_block_stop","index":2}\n\nevent: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":20}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n';
        }

        location = /fixture/an-max-tokens {
            return 200 'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_canned2","type":"message","role":"assistant","model":"claude-upstream","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":10,"cache_creation_input_tokens":3,"cache_read_input_tokens":20,"output_tokens":1}}}\n\nevent: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\nevent: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"cut sho"}}\n\nevent: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\nevent: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"max_tokens","stop_sequence":null},"usage":{"output_tokens":3}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n';
        }

        location = /fixture/an-thinking {
            return 200 'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_canned3","type":"message","role":"assistant","model":"claude-upstream","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":4,"output_tokens":1}}}\n\nevent: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}\n\nevent: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me think."}}\n\nevent: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"c2ln"}}\n\nevent: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\nevent: content_block_start\ndata: {"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}\n\nevent: content_block_delta\ndata: {"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Done."}}\n\nevent: content_block_stop\ndata: {"type":"content_block_stop","index":1}\n\nevent: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":9}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n';
        }

        location = /fixture/an-error {
            return 200 'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_canned4","type":"message","role":"assistant","model":"claude-upstream","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":4,"output_tokens":1}}}\n\nevent: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\nevent: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}\n\nevent: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n';
        }

        location = /fixture/an-no-message-stop {
            return 200 'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_canned5","type":"message","role":"assistant","model":"claude-upstream","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":4,"output_tokens":1}}}\n\nevent: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\nevent: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"All here."}}\n\nevent: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\nevent: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":2}}\n\n';
        }

        location = /fixture/an-unfinished {
            return 200 'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_canned6","type":"message","role":"assistant","model":"claude-upstream","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":4,"output_tokens":1}}}\n\nevent: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\nevent: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Half"}}\n\n';
        }

        location = /fixture/an-crlf {
            return 200 'event: message_start\r\ndata: {"type":"message_start","message":{"id":"msg_canned7","type":"message","role":"assistant","model":"claude-upstream","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":2,"output_tokens":1}}}\r\n\r\n: a comment line\r\n\r\nevent: content_block_start\r\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\r\n\r\nevent: content_block_delta\r\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"one\\r\\ntwo"}}\r\n\r\nevent: content_block_stop\r\ndata: {"type":"content_block_stop","index":0}\r\n\r\nevent: message_delta\r\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":2}}\r\n\r\nevent: message_stop\r\ndata: {"type":"message_stop"}\r\n\r\n';
        }

        # OpenAI streams

        location = /fixture/oa-two-tools {
            return 200 'data: {"id":"chatcmpl-canned1","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[{"index":0,"delta":{"role":"assistant","content":"Sure."},"finish_reason":null}]}\n\ndata: {"id":"chatcmpl-canned1","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"lookup","arguments":""}}]},"finish_reason":null}]}\n\ndata: {"id":"chatcmpl-canned1","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"q\\":\\"x\\"}"}}]},"finish_reason":null}]}\n\ndata: {"id":"chatcmpl-canned1","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"now","arguments":"{}"}}]},"finish_reason":null}]}\n\ndata: {"id":"chatcmpl-canned1","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n\ndata: {"id":"chatcmpl-canned1","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":6,"total_tokens":11}}\n\ndata: [DONE]\n\n';
        }

        location = /fixture/oa-parallel {
            return 200 'data: {"id":"chatcmpl-canned2","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"lookup","arguments":"{}"}},{"index":1,"id":"call_b","type":"function","function":{"name":"now","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}\n\ndata: [DONE]\n\n';
        }

        location = /fixture/oa-length-no-done {
            return 200 'data: {"id":"chatcmpl-canned3","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\ndata: {"id":"chatcmpl-canned3","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[{"index":0,"delta":{"content":"cut sho"},"finish_reason":null}]}\n\ndata: {"id":"chatcmpl-canned3","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\ndata: {"id":"chatcmpl-canned3","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[],"usage":{"prompt_tokens":30,"completion_tokens":3,"total_tokens":33}}\n\n';
        }

        location = /fixture/oa-refusal {
            return 200 'data: {"id":"chatcmpl-canned4","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[{"index":0,"delta":{"role":"assistant","content":null,"refusal":""},"finish_reason":null}]}\n\ndata: {"id":"chatcmpl-canned4","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[{"index":0,"delta":{"refusal":"I cannot help."},"finish_reason":null}]}\n\ndata: {"id":"chatcmpl-canned4","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[{"index":0,"delta":{},"finish_reason":"content_filter"}]}\n\ndata: [DONE]\n\n';
        }

        location = /fixture/oa-error {
            return 200 'data: {"id":"chatcmpl-canned5","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},"finish_reason":null}]}\n\ndata: {"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}}\n\n';
        }

        location = /fixture/oa-crlf-multiline {
            return 200 ': keep-alive\r\n\r\ndata: {"id":"chatcmpl-canned6","object":"chat.completion.chunk",\r\ndata: "created":1,"model":"gpt-upstream","choices":[{"index":0,"delta":{"role":"assistant","content":"one"},"finish_reason":null}]}\r\n\r\ndata:{"id":"chatcmpl-canned6","object":"chat.completion.chunk","created":1,"model":"gpt-upstream","choices":[{"index":0,"delta":{"content":" two"},"finish_reason":"stop"}]}\r\n\r\ndata: [DONE]\r\n\r\n';
        }
    }
_EOC_

# The shipped server-level locations (conf/smartflow_locations.conf), their
# nested include made absolute.

our $Locations = Smartflow::Conf::shipped_locations();

add_block_preprocessor(sub {
    my $block = shift;

    $block->set_value('main_config', $MainConfig)
        unless defined $block->main_config;
    $block->set_value('http_config', $HttpConfig)
        unless defined $block->http_config;
    $block->set_value('config', $Locations)
        unless defined $block->config;
});

my $json = JSON::PP->new->utf8->canonical;
my $str = JSON::PP->new->ascii->allow_nonref;
my $chars = JSON::PP->new->canonical->ascii;

sub tool_id {
    my $id = shift // 'undef';
    $id =~ s/^(toolu_01)[A-Za-z0-9]{22}$/$1*/;
    $id =~ s/^(call_)[A-Za-z0-9]{24}$/$1*/;
    return $id;
}

# An OpenAI chat stream, one line per thing a client sees.
sub openai_sse {
    my $body = shift;
    my (@out, $model, $id);

    while ($body =~ s/\A(.*?)\n\n//s) {
        my $event = $1;

        if ($event !~ s/\Adata: //) {
            push @out, "not a data event: $event";
            next;
        }

        if ($event eq '[DONE]') {
            push @out, '[DONE]';
            next;
        }

        my $c = eval { $json->decode($event) };
        if (ref $c ne 'HASH') {
            push @out, "not JSON: $event";
            next;
        }

        if (my $e = $c->{error}) {
            push @out, "error $e->{type} " . ($e->{code} // 'null') . ' '
                       . $str->encode($e->{message});
            next;
        }

        if (!defined $model || $c->{model} ne $model) {
            $model = $c->{model};
            push @out, "$c->{object} $model";
        }

        push @out, "bad id $c->{id}" unless $c->{id} =~ /^chatcmpl-/;
        push @out, 'new id' if defined $id && $c->{id} ne $id;
        $id = $c->{id};

        for my $ch (@{ $c->{choices} || [] }) {
            my $d = $ch->{delta} || {};
            push @out, "role $d->{role}" if defined $d->{role};
            push @out, 'content ' . $str->encode($d->{content})
                if defined $d->{content} && length $d->{content};
            for my $tc (@{ $d->{tool_calls} || [] }) {
                push @out, "tool $tc->{index} " . tool_id($tc->{id})
                           . " $tc->{type} $tc->{function}{name}"
                    if defined $tc->{id};
                push @out, "args $tc->{index} "
                           . $str->encode($tc->{function}{arguments})
                    if length($tc->{function}{arguments} // '');
            }
            push @out, "finish $ch->{finish_reason}"
                if defined $ch->{finish_reason};
        }

        if (my $u = $c->{usage}) {
            push @out, "usage $u->{prompt_tokens} $u->{completion_tokens} "
                       . "$u->{total_tokens}";
        }
    }

    push @out, "left over: $body" if length $body;

    return join '', map { "$_\n" } @out;
}

# An Anthropic message stream, one line per thing a client sees.
sub anthropic_sse {
    my $body = shift;
    my @out;

    my $usage = sub {
        my $u = shift || {};
        return join ' ', map { "$_=" . ($u->{$_} // '-') }
                         qw(input_tokens output_tokens);
    };

    while ($body =~ s/\A(.*?)\n\n//s) {
        my $event = $1;
        my ($name, $data) = $event =~ /\Aevent: ([^\n]+)\ndata: ([^\n]+)\z/;

        if (!defined $name) {
            push @out, "malformed: $event";
            next;
        }

        my $d = eval { $json->decode($data) };
        if (ref $d ne 'HASH') {
            push @out, "not JSON: $data";
            next;
        }

        push @out, "event $name carries type " . ($d->{type} // 'none')
            if ($d->{type} // '') ne $name;

        if ($name eq 'message_start') {
            my $m = $d->{message};
            my $id = $m->{id};
            $id =~ s/^(msg_chatcmpl-).+/$1*/;
            $id =~ s/^(msg_01)[A-Za-z0-9]{22}$/$1*/;
            push @out, "message_start $id $m->{type} $m->{role} $m->{model} "
                       . $usage->($m->{usage});
            push @out, 'content not empty' if @{ $m->{content} || [1] };
            push @out, 'stop reason set' if defined $m->{stop_reason};

        } elsif ($name eq 'content_block_start') {
            my $b = $d->{content_block};
            if ($b->{type} eq 'tool_use') {
                push @out, "start $d->{index} tool_use " . tool_id($b->{id})
                           . " $b->{name} " . $json->encode($b->{input});
            } else {
                push @out, "start $d->{index} $b->{type}"
                           . (length($b->{text} // '')
                              ? ' ' . $str->encode($b->{text}) : '');
            }

        } elsif ($name eq 'content_block_delta') {
            my $x = $d->{delta};
            if ($x->{type} eq 'text_delta') {
                push @out, "text $d->{index} " . $str->encode($x->{text});
            } elsif ($x->{type} eq 'input_json_delta') {
                push @out, "json $d->{index} "
                           . $str->encode($x->{partial_json});
            } else {
                push @out, "delta $d->{index} $x->{type}";
            }

        } elsif ($name eq 'content_block_stop') {
            push @out, "stop $d->{index}";

        } elsif ($name eq 'message_delta') {
            push @out, "message_delta "
                       . ($d->{delta}{stop_reason} // 'null') . ' '
                       . $usage->($d->{usage});

        } elsif ($name eq 'error') {
            push @out, "error $d->{error}{type} "
                       . $str->encode($d->{error}{message});

        } else {
            push @out, $name;
        }
    }

    push @out, "left over: $body" if length $body;

    return join '', map { "$_\n" } @out;
}

# The body a recorded stream carried as its text, keys sorted; and whether
# a usage chunk reached the client.
sub recorded_openai_stream {
    my $body = shift;
    my ($text, $usage) = ('', 0);
    while ($body =~ /^data: (\{.*)$/mg) {
        my $c = eval { $json->decode($1) } or return "not JSON: $1\n";
        $usage++ if $c->{usage};
        $text .= $_->{delta}{content} // '' for @{ $c->{choices} || [] };
    }
    my $req = eval { $chars->decode($text) } or return "not JSON: $text\n";
    return $chars->encode($req) . "\n" . ($usage ? "usage chunk\n" : '');
}

sub recorded_anthropic_stream {
    my $body = shift;
    my $text = '';
    while ($body =~ /^data: (\{.*)$/mg) {
        my $d = eval { $json->decode($1) } or return "not JSON: $1\n";
        $text .= $d->{delta}{text}
            if $d->{type} eq 'content_block_delta'
               && $d->{delta}{type} eq 'text_delta';
    }
    my $req = eval { $chars->decode($text) } or return "not JSON: $text\n";
    return $chars->encode($req) . "\n";
}

our $OpenAIKey = "Authorization: Bearer sk-smartflow-test-0123456789\n";
our $AnthropicKey = "x-api-key: sk-smartflow-test-0123456789\n"
                    . "anthropic-version: 2023-06-01\n";

add_block_preprocessor(sub {
    my $block = shift;
    return if defined $block->more_headers;
    my $req = $block->request // '';
    $block->set_value('more_headers',
                      $req =~ m{^POST /anthropic/} ? $::AnthropicKey : $::OpenAIKey);
});

run_tests();

__DATA__

=== TEST 1: OpenAI client, Anthropic provider: text events become chunks
--- request
POST /v1/chat/completions
{"model":"claude-3-5-sonnet","stream":true,"messages":[{"role":"user","content":"hi there"}]}
--- response_headers_like
Content-Type: ^text/event-stream
X-Accel-Buffering: no
x-mock-path: /v1/messages
--- response_headers
!Content-Length
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk claude-3-5-sonnet
role assistant
content "mock"
content " reply"
content " to:"
content " hi"
content " there"
finish stop
[DONE]
--- no_error_log
[error]



=== TEST 2: OpenAI client, Anthropic provider: the usage chunk when asked for
--- request
POST /v1/chat/completions
{"model":"claude-3-5-sonnet","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi there"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk claude-3-5-sonnet
role assistant
content "mock"
content " reply"
content " to:"
content " hi"
content " there"
finish stop
usage 4 5 9
[DONE]
--- no_error_log
[error]



=== TEST 3: OpenAI client, Anthropic provider: a streamed tool call
--- request
POST /v1/chat/completions
{"model":"claude-3-5-sonnet","stream":true,"stream_options":{"include_usage":true},"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"location":{"type":"string"}}}}}],"messages":[{"role":"user","content":"What is the weather in Paris?"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk claude-3-5-sonnet
role assistant
tool 0 toolu_01* function get_weather
args 0 "{\""
args 0 "location"
args 0 "\":\""
args 0 "Paris"
args 0 "\"}"
finish tool_calls
usage 6 3 9
[DONE]
--- no_error_log
[error]



=== TEST 4: OpenAI client, Anthropic provider: the provider is asked for a stream
--- request
POST /v1/chat/completions
{"model":"claude-recorded","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}
--- response_body_filters eval
\&::recorded_openai_stream
--- response_body
{"max_tokens":4096,"messages":[{"content":"hi","role":"user"}],"model":"claude-recorded","stream":true}
usage chunk
--- no_error_log
[error]



=== TEST 5: OpenAI client, Anthropic provider: text, then two tool calls
--- more_headers eval
$::OpenAIKey . "x-fixture: an-two-tools"
--- request
POST /v1/chat/completions
{"model":"claude-canned","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk claude-canned
role assistant
content "Checking both."
tool 0 toolu_a function lookup
args 0 "{\"q\":"
args 0 "\"x\"}"
tool 1 toolu_b function now
finish tool_calls
usage 8 20 28
[DONE]
--- no_error_log
[error]



=== TEST 6: OpenAI client, Anthropic provider: max_tokens is length; cache reads count as prompt
--- more_headers eval
$::OpenAIKey . "x-fixture: an-max-tokens"
--- request
POST /v1/chat/completions
{"model":"claude-canned","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk claude-canned
role assistant
content "cut sho"
finish length
usage 33 3 36
[DONE]
--- no_error_log
[error]



=== TEST 7: OpenAI client, Anthropic provider: thinking is left out
--- more_headers eval
$::OpenAIKey . "x-fixture: an-thinking"
--- request
POST /v1/chat/completions
{"model":"claude-canned","stream":true,"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk claude-canned
role assistant
content "Done."
finish stop
[DONE]
--- no_error_log
[error]



=== TEST 8: OpenAI client, Anthropic provider: the provider's error event
--- more_headers eval
$::OpenAIKey . "x-fixture: an-error"
--- request
POST /v1/chat/completions
{"model":"claude-canned","stream":true,"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk claude-canned
role assistant
content "Hel"
error api_error overloaded "Overloaded"
[DONE]



=== TEST 9: OpenAI client, Anthropic provider: a stream ending after its stop reason is finished
--- more_headers eval
$::OpenAIKey . "x-fixture: an-no-message-stop"
--- request
POST /v1/chat/completions
{"model":"claude-canned","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk claude-canned
role assistant
content "All here."
finish stop
usage 4 2 6
[DONE]
--- no_error_log
[error]



=== TEST 10: OpenAI client, Anthropic provider: a stream ending before its stop reason is not
--- more_headers eval
$::OpenAIKey . "x-fixture: an-unfinished"
--- request
POST /v1/chat/completions
{"model":"claude-canned","stream":true,"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk claude-canned
role assistant
content "Half"
error api_error upstream_stream_broken "The provider's stream ended before completion."
[DONE]



=== TEST 11: OpenAI client, Anthropic provider: CRLF line ends and comment lines
--- more_headers eval
$::OpenAIKey . "x-fixture: an-crlf"
--- request
POST /v1/chat/completions
{"model":"claude-canned","stream":true,"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk claude-canned
role assistant
content "one\r\ntwo"
finish stop
[DONE]
--- no_error_log
[error]



=== TEST 12: Anthropic client, OpenAI provider: chunks become message events
--- request
POST /anthropic/v1/messages
{"model":"gpt-4o","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi there"}]}
--- response_headers_like
Content-Type: ^text/event-stream
X-Accel-Buffering: no
x-mock-path: /v1/chat/completions
--- response_headers
!Content-Length
--- response_body_filters eval
\&::anthropic_sse
--- response_body
message_start msg_chatcmpl-* message assistant gpt-4o input_tokens=0 output_tokens=0
ping
start 0 text
text 0 "mock"
text 0 " reply"
text 0 " to:"
text 0 " hi"
text 0 " there"
stop 0
message_delta end_turn input_tokens=2 output_tokens=5
message_stop
--- no_error_log
[error]



=== TEST 13: Anthropic client, OpenAI provider: a streamed tool call
--- request
POST /anthropic/v1/messages
{"model":"gpt-4o","max_tokens":64,"stream":true,"tools":[{"name":"get_weather","input_schema":{"type":"object","properties":{"location":{"type":"string"}}}}],"messages":[{"role":"user","content":"What is the weather in Paris?"}]}
--- response_body_filters eval
\&::anthropic_sse
--- response_body
message_start msg_chatcmpl-* message assistant gpt-4o input_tokens=0 output_tokens=0
ping
start 0 tool_use call_* get_weather {}
json 0 "{\""
json 0 "location"
json 0 "\":\""
json 0 "Paris"
json 0 "\"}"
stop 0
message_delta tool_use input_tokens=6 output_tokens=3
message_stop
--- no_error_log
[error]



=== TEST 14: Anthropic client, OpenAI provider: the provider is asked for a stream with usage
--- request
POST /anthropic/v1/messages
{"model":"gpt-recorded","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}
--- response_body_filters eval
\&::recorded_anthropic_stream
--- response_body
{"max_tokens":64,"messages":[{"content":"hi","role":"user"}],"model":"gpt-recorded","stream":true,"stream_options":{"include_usage":true}}
--- no_error_log
[error]



=== TEST 15: Anthropic client, OpenAI provider: text, then two tool calls, no [DONE]
--- more_headers eval
$::AnthropicKey . "x-fixture: oa-two-tools"
--- request
POST /anthropic/v1/messages
{"model":"gpt-canned","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::anthropic_sse
--- response_body
message_start msg_chatcmpl-* message assistant gpt-canned input_tokens=0 output_tokens=0
ping
start 0 text
text 0 "Sure."
stop 0
start 1 tool_use call_a lookup {}
json 1 "{\"q\":\"x\"}"
stop 1
start 2 tool_use call_b now {}
json 2 "{}"
stop 2
message_delta tool_use input_tokens=5 output_tokens=6
message_stop
--- no_error_log
[error]



=== TEST 16: Anthropic client, OpenAI provider: two tool calls in one chunk
--- more_headers eval
$::AnthropicKey . "x-fixture: oa-parallel"
--- request
POST /anthropic/v1/messages
{"model":"gpt-canned","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::anthropic_sse
--- response_body
message_start msg_chatcmpl-* message assistant gpt-canned input_tokens=0 output_tokens=0
ping
start 0 tool_use call_a lookup {}
json 0 "{}"
stop 0
start 1 tool_use call_b now {}
json 1 "{}"
stop 1
message_delta tool_use input_tokens=0 output_tokens=0
message_stop
--- no_error_log
[error]



=== TEST 17: Anthropic client, OpenAI provider: length is max_tokens; no [DONE] needed
--- more_headers eval
$::AnthropicKey . "x-fixture: oa-length-no-done"
--- request
POST /anthropic/v1/messages
{"model":"gpt-canned","max_tokens":3,"stream":true,"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::anthropic_sse
--- response_body
message_start msg_chatcmpl-* message assistant gpt-canned input_tokens=0 output_tokens=0
ping
start 0 text
text 0 "cut sho"
stop 0
message_delta max_tokens input_tokens=30 output_tokens=3
message_stop
--- no_error_log
[error]



=== TEST 18: Anthropic client, OpenAI provider: a refusal is text, stop reason refusal
--- more_headers eval
$::AnthropicKey . "x-fixture: oa-refusal"
--- request
POST /anthropic/v1/messages
{"model":"gpt-canned","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::anthropic_sse
--- response_body
message_start msg_chatcmpl-* message assistant gpt-canned input_tokens=0 output_tokens=0
ping
start 0 text
text 0 "I cannot help."
stop 0
message_delta refusal input_tokens=0 output_tokens=0
message_stop
--- no_error_log
[error]



=== TEST 19: Anthropic client, OpenAI provider: the provider's error chunk
--- more_headers eval
$::AnthropicKey . "x-fixture: oa-error"
--- request
POST /anthropic/v1/messages
{"model":"gpt-canned","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::anthropic_sse
--- response_body
message_start msg_chatcmpl-* message assistant gpt-canned input_tokens=0 output_tokens=0
ping
start 0 text
text 0 "Hel"
error api_error "The server had an error while processing your request."



=== TEST 20: Anthropic client, OpenAI provider: CRLF, comments, data split over lines, no space after "data:"
--- more_headers eval
$::AnthropicKey . "x-fixture: oa-crlf-multiline"
--- request
POST /anthropic/v1/messages
{"model":"gpt-canned","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"go"}]}
--- response_body_filters eval
\&::anthropic_sse
--- response_body
message_start msg_chatcmpl-* message assistant gpt-canned input_tokens=0 output_tokens=0
ping
start 0 text
text 0 "one"
text 0 " two"
stop 0
message_delta end_turn input_tokens=0 output_tokens=0
message_stop
--- no_error_log
[error]



=== TEST 21: Anthropic client, echo provider: the echo stream as message events
--- request
POST /anthropic/v1/messages
{"model":"smartflow-echo","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"one two three"}]}
--- response_headers
Content-Type: text/event-stream
X-Accel-Buffering: no
Cache-Control: no-cache
--- response_body_filters eval
\&::anthropic_sse
--- response_body
message_start msg_chatcmpl-* message assistant smartflow-echo input_tokens=0 output_tokens=0
ping
start 0 text
text 0 "Echo: "
text 0 "one "
text 0 "two "
text 0 "three"
stop 0
message_delta end_turn input_tokens=3 output_tokens=4
message_stop
--- no_error_log
[error]
[alert]



=== TEST 22: Anthropic client, Anthropic provider: the provider's events pass as they are
--- request
POST /anthropic/v1/messages
{"model":"claude-3-5-sonnet","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi there"}]}
--- response_headers
Content-Type: text/event-stream; charset=utf-8
X-Accel-Buffering: no
--- response_body_filters eval
\&::anthropic_sse
--- response_body
message_start msg_01* message assistant claude-3-5-sonnet input_tokens=2 output_tokens=1
start 0 text
ping
text 0 "mock"
text 0 " reply"
text 0 " to:"
text 0 " hi"
text 0 " there"
stop 0
message_delta end_turn input_tokens=- output_tokens=5
message_stop
--- no_error_log
[error]



=== TEST 23: OpenAI client, OpenAI provider: usage is asked for and hidden from the client
--- request eval
["POST /v1/chat/completions\n" . '{"model":"gpt-recorded","stream":true,"messages":[{"role":"user","content":"hi"}]}',
 "POST /v1/chat/completions\n" . '{"model":"gpt-recorded","stream":true,"stream_options":{"include_usage":false},"messages":[{"role":"user","content":"hi"}]}',
 "POST /v1/chat/completions\n" . '{"model":"gpt-recorded","stream":true,"stream_options":{},"messages":[{"role":"user","content":"hi"}]}']
--- response_body_filters eval
\&::recorded_openai_stream
--- response_body eval
["{\"messages\":[{\"content\":\"hi\",\"role\":\"user\"}],\"model\":\"gpt-recorded\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}\n",
 "{\"messages\":[{\"content\":\"hi\",\"role\":\"user\"}],\"model\":\"gpt-recorded\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}\n",
 "{\"messages\":[{\"content\":\"hi\",\"role\":\"user\"}],\"model\":\"gpt-recorded\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}\n"]
--- error_code eval
[200, 200, 200]
--- no_error_log
[error]



=== TEST 24: OpenAI client, OpenAI provider: a client asking for usage gets the provider's chunk
--- request
POST /v1/chat/completions
{"model":"gpt-recorded","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}
--- response_body_filters eval
\&::recorded_openai_stream
--- response_body
{"messages":[{"content":"hi","role":"user"}],"model":"gpt-recorded","stream":true,"stream_options":{"include_usage":true}}
usage chunk
--- no_error_log
[error]



=== TEST 25: OpenAI client, OpenAI provider: "stream_options": null is a stream like any other
OpenAI's API takes null for stream_options; the gateway's own
include_usage must not cost the request its other members.
--- request
POST /v1/chat/completions
{"model":"gpt-4o","stream":true,"stream_options":null,"messages":[{"role":"user","content":"hi there"}]}
--- response_body_filters eval
\&::openai_sse
--- response_body
chat.completion.chunk gpt-4o
role assistant
content "mock"
content " reply"
content " to:"
content " hi"
content " there"
finish stop
[DONE]
--- no_error_log
[error]
