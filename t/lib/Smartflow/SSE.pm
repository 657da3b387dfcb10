package Smartflow::SSE;

# What a client reads from a streamed answer, one line per thing it sees,
# for the stream tests' response_body_filters:
#
#     use lib 't/lib';
#     use Smartflow::SSE;
#     ...
#     --- response_body_filters eval
#     \&::openai_sse
#
# openai_sse()     an OpenAI stream (chat.completion.chunk or
#                  text_completion): object and model when they change,
#                  ids checked, role, content / text pieces, tool calls and
#                  their argument pieces, finish reason, usage, error
#                  chunks, [DONE]
# anthropic_sse()  an Anthropic message stream: message_start (id, type,
#                  role, model, usage), content blocks and their deltas,
#                  message_delta (stop reason, usage), errors, every other
#                  event by name
# recorded_openai_stream(), recorded_anthropic_stream()
#                  the request a recording provider answered with, read
#                  back from the stream's text, keys sorted
# recorded_answer()
#                  the same from an answer that is not streamed
# tool_id()        a generated tool call id made constant
#
# Anything that is not a well-formed event of the client's format is
# flagged in the summary ("not a data event", "malformed", "not JSON",
# "bad id", "left over"), so that an expected summary fails on it.
#
# Generated ids are made constant only where they have the shape their
# generator gives them (the mock's, the echo provider's, the Gemini
# translation's); any other id is written as it is.

use strict;
use warnings;

use Exporter 'import';
use JSON::PP ();

our @EXPORT = qw(openai_sse anthropic_sse tool_id recorded_openai_stream
                 recorded_anthropic_stream recorded_answer);

my $json = JSON::PP->new->utf8->canonical;
my $str = JSON::PP->new->ascii->allow_nonref;
my $chars = JSON::PP->new->canonical->ascii;

# the mock's Anthropic and OpenAI tool ids, and the Gemini translation's
# (its 22-character response id and the call's index)
sub tool_id {
    my $id = shift // 'undef';
    $id =~ s/^(toolu_01)[A-Za-z0-9]{22}$/$1*/;
    $id =~ s/^(call_)[A-Za-z0-9]{24}$/$1*/;
    $id =~ s/^(call_)[A-Za-z0-9]{22}(_\d+)$/$1*$2/;
    return $id;
}

# an Anthropic message id: the mock's own, or an OpenAI id carried over
# (the mock's, the echo provider's, the Gemini translation's)
sub message_id {
    my $id = shift // 'undef';
    $id =~ s/^(msg_01)[A-Za-z0-9]{22}$/$1*/;
    $id =~ s/^(msg_chatcmpl-)(?:[A-Za-z0-9]{29}|[A-Za-z0-9]{22})$/$1*/;
    $id =~ s/^(msg_chatcmpl-sf)[0-9a-f]+$/$1*/;
    return $id;
}

# An OpenAI stream, one line per thing a client sees.
sub openai_sse {
    my $body = shift;
    my (@out, $object, $model, $id);

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

        my ($o, $m) = map { $_ // 'undef' } @$c{qw(object model)};

        if (!defined $model || $m ne $model || $o ne $object) {
            ($object, $model) = ($o, $m);
            push @out, "$object $model";
        }

        my $prefix = $o eq 'text_completion' ? 'cmpl-' : 'chatcmpl-';
        my $cid = $c->{id} // 'undef';
        push @out, "bad id $cid" unless $cid =~ /^\Q$prefix\E\w+$/;
        push @out, 'new id' if defined $id && $cid ne $id;
        $id = $cid;

        for my $ch (@{ $c->{choices} || [] }) {
            my $d = $ch->{delta} || {};
            push @out, "role $d->{role}" if defined $d->{role};
            push @out, 'content ' . $str->encode($d->{content})
                if defined $d->{content}
                   && ($d->{content} ne '' || !defined $d->{role});
            push @out, 'text ' . $str->encode($ch->{text})
                if defined $ch->{text} && $ch->{text} ne '';
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
            push @out, 'message_start ' . message_id($m->{id})
                       . " $m->{type} $m->{role} $m->{model} "
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

# The body the provider received, from the text of a recorded answer that
# is not streamed, re-encoded with sorted keys and \u escapes.  $api names
# the answer's format, 'openai' (a chat.completion) or 'anthropic' (a
# message); an answer of the other format is not read.  Without $api either
# is read.
sub recorded_answer {
    my ($body, $api) = @_;
    my $answer = eval { $json->decode($body) };
    my $text;

    if (ref $answer eq 'HASH') {
        if (($api // 'openai') eq 'openai' && $answer->{choices}) {
            $text = $answer->{choices}[0]{message}{content};
        } elsif (($api // 'anthropic') eq 'anthropic'
                 && ref $answer->{content} eq 'ARRAY')
        {
            $text = $answer->{content}[0]{text};
        }
    }

    return "no recorded text in: $body" unless defined $text;
    my $req = eval { $chars->decode($text) };
    return "the provider's body is not JSON: $text" unless $req;
    return $chars->encode($req) . "\n";
}

1;
