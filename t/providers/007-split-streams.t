# Translated streams read in pieces of every size: the mock writes its SSE
# bytes in x-mock-split-byte pieces (2 ms apart), so events, lines, JSON
# strings and UTF-8 sequences are cut everywhere; a split of 1 byte cuts at
# every byte boundary.  Each translated stream must come out the same:
# every event well-formed JSON, the same text pieces, finish reason and
# exact usage.
#
# Directions: an OpenAI client reading an Anthropic provider's stream, an
# Anthropic client reading an OpenAI provider's stream.  The blocks are
# generated below: split sizes 1 to 40, then larger ones up to more than a
# whole stream.  A few sizes for the same-format streams passing through
# too (the OpenAI one with its usage chunk, asked for by the gateway,
# hidden).

use lib 't/lib';
use Smartflow::Mock;
use JSON::PP ();
use Test::Nginx::Socket 'no_plan';

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

    smartflow_provider anthropic type=anthropic upstream=http://sf_mock
                       key=sk-ant-provider-key;
    smartflow_provider openai type=openai upstream=http://sf_mock
                       key=sk-oai-provider-key;

    smartflow_route claude-* anthropic;
    smartflow_route gpt-* openai;
_EOC_

our $Locations = <<'_EOC_';
    location = /v1/chat/completions {
        smartflow_api chat;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /anthropic/v1/messages {
        smartflow_api messages;
        error_page 401 403 408 413 500 502 503 504 @smartflow_anthropic_error;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location @smartflow_error {
        smartflow_api error;
    }

    location @smartflow_anthropic_error {
        smartflow_api anthropic_error;
    }
_EOC_

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
            push @out, "error $e->{type} " . ($e->{code} // 'null');
            next;
        }

        if (!defined $model || $c->{model} ne $model) {
            $model = $c->{model};
            push @out, "$c->{object} $model";
        }

        push @out, 'new id' if defined $id && $c->{id} ne $id;
        $id = $c->{id};

        for my $ch (@{ $c->{choices} || [] }) {
            my $d = $ch->{delta} || {};
            push @out, "role $d->{role}" if defined $d->{role};
            push @out, 'content ' . $str->encode($d->{content})
                if defined $d->{content} && length $d->{content};
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
            push @out, "message_start $d->{message}{model}";
        } elsif ($name eq 'content_block_start') {
            push @out, "start $d->{index} $d->{content_block}{type}";
        } elsif ($name eq 'content_block_delta') {
            push @out, "text $d->{index} " . $str->encode($d->{delta}{text});
        } elsif ($name eq 'content_block_stop') {
            push @out, "stop $d->{index}";
        } elsif ($name eq 'message_delta') {
            push @out, "message_delta $d->{delta}{stop_reason} "
                       . 'input_tokens=' . ($d->{usage}{input_tokens} // '-')
                       . ' output_tokens=' . ($d->{usage}{output_tokens} // '-');
        } elsif ($name eq 'error') {
            push @out, "error $d->{error}{type}";
        } else {
            push @out, $name;
        }
    }

    push @out, "left over: $body" if length $body;

    return join '', map { "$_\n" } @out;
}

# The reply: two- and four-byte UTF-8 sequences, quotes and a backslash,
# all of which the translation re-escapes.
my $reply = qq{caf\x{c3}\x{a9} "q" \\ \x{f0}\x{9f}\x{98}\x{80} end};

my $openai_expected = <<'_EOS_';
chat.completion.chunk claude-3-5-sonnet
role assistant
content "caf\u00e9"
content " \"q\""
content " \\"
content " \ud83d\ude00"
content " end"
finish stop
usage 1 5 6
[DONE]
_EOS_

my $anthropic_expected = <<'_EOS_';
message_start gpt-4o
ping
start 0 text
text 0 "caf\u00e9"
text 0 " \"q\""
text 0 " \\"
text 0 " \ud83d\ude00"
text 0 " end"
stop 0
message_delta end_turn input_tokens=1 output_tokens=5
message_stop
_EOS_

my @sizes = (1 .. 40, 41, 53, 64, 97, 128, 200, 256, 333, 512, 1000, 4096);

my $spec = '';
my $n = 0;

for my $size (@sizes) {
    $n++;
    $spec .= <<"_EOB_";
=== TEST $n: OpenAI client, Anthropic provider, read in $size-byte pieces
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-mock-split: $size
x-mock-reply: $reply
--- request
POST /v1/chat/completions
{"model":"claude-3-5-sonnet","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"count"}]}
--- timeout: 20
--- response_body_filters eval
\\&::openai_sse
--- response_body
$openai_expected--- no_error_log
[error]



_EOB_

    $n++;
    $spec .= <<"_EOB_";
=== TEST $n: Anthropic client, OpenAI provider, read in $size-byte pieces
--- more_headers
x-api-key: sk-smartflow-test-0123456789
anthropic-version: 2023-06-01
x-mock-split: $size
x-mock-reply: $reply
--- request
POST /anthropic/v1/messages
{"model":"gpt-4o","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"count"}]}
--- timeout: 20
--- response_body_filters eval
\\&::anthropic_sse
--- response_body
$anthropic_expected--- no_error_log
[error]



_EOB_
}

my $openai_passed = <<'_EOS_';
chat.completion.chunk gpt-4o
role assistant
content "caf\u00e9"
content " \"q\""
content " \\"
content " \ud83d\ude00"
content " end"
finish stop
[DONE]
_EOS_

my $anthropic_passed = <<'_EOS_';
message_start claude-3-5-sonnet
start 0 text
ping
text 0 "caf\u00e9"
text 0 " \"q\""
text 0 " \\"
text 0 " \ud83d\ude00"
text 0 " end"
stop 0
message_delta end_turn input_tokens=- output_tokens=5
message_stop
_EOS_

for my $size (3, 17, 64) {
    $n++;
    $spec .= <<"_EOB_";
=== TEST $n: OpenAI client, OpenAI provider, read in $size-byte pieces
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
x-mock-split: $size
x-mock-reply: $reply
--- request
POST /v1/chat/completions
{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"count"}]}
--- timeout: 20
--- response_body_filters eval
\\&::openai_sse
--- response_body
$openai_passed--- no_error_log
[error]



_EOB_

    $n++;
    $spec .= <<"_EOB_";
=== TEST $n: Anthropic client, Anthropic provider, read in $size-byte pieces
--- more_headers
x-api-key: sk-smartflow-test-0123456789
anthropic-version: 2023-06-01
x-mock-split: $size
x-mock-reply: $reply
--- request
POST /anthropic/v1/messages
{"model":"claude-3-5-sonnet","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"count"}]}
--- timeout: 20
--- response_body_filters eval
\\&::anthropic_sse
--- response_body
$anthropic_passed--- no_error_log
[error]



_EOB_
}

spec_string($spec);

run_tests();
