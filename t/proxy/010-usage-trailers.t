#!/usr/bin/env perl
# smartflow_usage_trailers: the tokens and the cost of each answer as HTTP
# trailers after its last byte, equal to the usage in the answer itself
# and to the price table; JSON and streams, translated or passed through,
# both API formats.  No trailers for HTTP/1.0, for refusals, or with the
# directive off (the answer then keeps the provider's Content-Length).
#
# A gateway of its own (Smartflow::Clients) and the mock provider; the
# requests are written and the chunked answers read by hand, as
# Test::Nginx::Socket does not show trailers.

use strict;
use warnings;

use FindBin ();
use lib "$FindBin::Bin/../lib";
use IO::Socket::INET;
use JSON::PP ();
use Smartflow::Clients;
use Test::More;

my $gw = Smartflow::Clients->new(
    servroot => 't/servroot-trailers',
    port     => $ENV{SMARTFLOW_CLIENTS_PORT} || 1986,
    port_var => 'SMARTFLOW_CLIENTS_PORT',
    mock     => 1,
    packages => [],
    conf     => ['smartflow_proxy.conf']);

my ($Port, $MockPort) = @$gw{qw(port mock_port)};
my $Key = 'sk-smartflow-trailer-tests-0123456789';
my $proxy_conf = "$gw->{conf_dir}/smartflow_proxy.conf";

# micro-USD per million tokens, as configured below
my %Price = ('gpt-4o-mini' => [150_000, 600_000],
             'claude-3-5-haiku-latest' => [800_000, 4_000_000],
             'smartflow-echo' => [1_000_000, 2_000_000]);

$gw->start(<<"HTTP");
    smartflow_master_key $Key;

    upstream sf_mock {
        server 127.0.0.1:$MockPort;
        keepalive 8;
    }

    smartflow_provider mock type=openai upstream=http://sf_mock path=/v1
                       key=sk-mock-provider-key-0123456789;
    smartflow_provider claude type=anthropic upstream=http://sf_mock
                       key=sk-ant-mock-provider-key-0123456789;
    smartflow_provider demo type=echo;

    smartflow_route gpt-4o-mini mock;
    smartflow_route claude-3-5-haiku-latest claude;
    smartflow_route smartflow-echo demo;
    smartflow_route unpriced-echo demo;

    smartflow_price gpt-4o-mini 0.15 0.60;
    smartflow_price claude-* 0.80 4.00;
    smartflow_price smartflow-echo 1 2;

    smartflow_usage_trailers on;

    server {
        listen 127.0.0.1:$Port;

        location = /v1/chat/completions {
            smartflow_api chat;
            include $proxy_conf;
        }

        location = /anthropic/v1/messages {
            smartflow_api messages;
            include $proxy_conf;
        }

        location = /off/v1/chat/completions {
            smartflow_api chat;
            smartflow_usage_trailers off;
            include $proxy_conf;
        }

        location \@smartflow_error {
            smartflow_api error;
        }
    }
HTTP


# request(PATH, BODY, VERSION) -> { status, headers => {lc name => value},
#                                   body, trailers => {lc name => value} }
sub request {
    my ($path, $body, $version) = @_;
    $version ||= '1.1';

    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                     PeerPort => $Port, Timeout => 10)
        or die "connect: $!";

    print $sock "POST $path HTTP/$version\r\nHost: localhost\r\n"
        . "Authorization: Bearer $Key\r\nContent-Type: application/json\r\n"
        . "Content-Length: " . length($body) . "\r\nConnection: close\r\n\r\n"
        . $body;

    local $/;
    my $raw = <$sock>;
    close $sock;

    my ($head, $rest) = split /\r\n\r\n/, $raw, 2;
    my ($status_line, @lines) = split /\r\n/, $head;
    my ($status) = $status_line =~ m{^HTTP/1\.[01] (\d{3})};
    my %h = map { my ($k, $v) = split /:\s*/, $_, 2; (lc $k, $v) } @lines;
    my %res = (status => $status, headers => \%h, trailers => {});

    if (($h{'transfer-encoding'} // '') ne 'chunked') {
        $res{body} = $rest;
        return \%res;
    }

    my $out = '';
    while ($rest =~ s/^([0-9a-fA-F]+)[^\r]*\r\n//) {
        my $n = hex $1;
        if ($n == 0) {
            # the trailer section, up to the final empty line
            my ($trailer) = $rest =~ /^((?:[^\r\n]+\r\n)*)\r\n/;
            $res{complete} = defined $trailer;
            for (split /\r\n/, $trailer // '') {
                my ($k, $v) = split /:\s*/, $_, 2;
                $res{trailers}{lc $k} = $v;
            }
            last;
        }
        $out .= substr $rest, 0, $n, '';
        $rest =~ s/^\r\n// or die "bad chunk";
    }
    $res{body} = $out;
    return \%res;
}

sub cost {
    my ($model, $in, $out) = @_;
    my $p = $Price{$model};
    my $micro = int(($in * $p->[0] + $out * $p->[1] + 999_999) / 1_000_000);
    return sprintf '%d.%06d', $micro / 1_000_000, $micro % 1_000_000;
}

sub chat {
    my ($model, %extra) = @_;
    return JSON::PP->new->canonical->encode({
        model => $model, max_tokens => 50,
        messages => [{role => 'user', content => 'Say hello in three words'}],
        %extra });
}

# the usage the client was told of, from a JSON answer or an SSE stream
sub usage_of {
    my ($body, $anthropic) = @_;
    my ($in, $out) = (0, 0);

    if ($body !~ /^(?:event|data):/) {
        my $j = JSON::PP::decode_json($body);
        return $anthropic ? @{$j->{usage}}{qw(input_tokens output_tokens)}
                          : @{$j->{usage}}{qw(prompt_tokens completion_tokens)};
    }

    for my $data ($body =~ /^data: (\{.*\})$/mg) {
        my $j = JSON::PP::decode_json($data);
        if ($anthropic) {
            my $u = $j->{type} eq 'message_start' ? $j->{message}{usage}
                  : $j->{type} eq 'message_delta' ? $j->{usage} : undef;
            next unless $u;
            $in = $u->{input_tokens} if $u->{input_tokens};
            $out = $u->{output_tokens} if defined $u->{output_tokens};
        } elsif ($j->{usage}) {
            ($in, $out) = @{$j->{usage}}{qw(prompt_tokens completion_tokens)};
        }
    }
    return ($in, $out);
}

my @cases = (
    ['OpenAI JSON passed through', '/v1/chat/completions',
     chat('gpt-4o-mini'), 'gpt-4o-mini', 0],
    ['OpenAI stream passed through', '/v1/chat/completions',
     chat('gpt-4o-mini', stream => JSON::PP::true,
          stream_options => {include_usage => JSON::PP::true}),
     'gpt-4o-mini', 0],
    ['OpenAI client, Claude model, JSON', '/v1/chat/completions',
     chat('claude-3-5-haiku-latest'), 'claude-3-5-haiku-latest', 0],
    ['OpenAI client, Claude model, stream', '/v1/chat/completions',
     chat('claude-3-5-haiku-latest', stream => JSON::PP::true,
          stream_options => {include_usage => JSON::PP::true}),
     'claude-3-5-haiku-latest', 0],
    ['Anthropic endpoint, JSON', '/anthropic/v1/messages',
     chat('claude-3-5-haiku-latest'), 'claude-3-5-haiku-latest', 1],
    ['Anthropic endpoint, stream', '/anthropic/v1/messages',
     chat('claude-3-5-haiku-latest', stream => JSON::PP::true),
     'claude-3-5-haiku-latest', 1],
    ['built-in echo provider', '/v1/chat/completions',
     chat('smartflow-echo'), 'smartflow-echo', 0],
);

for my $c (@cases) {
    my ($name, $path, $body, $model, $anthropic) = @$c;
    my $res = request($path, $body);

    is $res->{status}, 200, "$name: 200";
    is $res->{headers}{'transfer-encoding'}, 'chunked', "$name: chunked";
    ok !exists $res->{headers}{'content-length'}, "$name: no Content-Length";
    ok $res->{complete}, "$name: the chunked body ends properly";

    my ($in, $out) = usage_of($res->{body}, $anthropic);
    ok $in > 0 && $out > 0, "$name: the answer reports usage ($in, $out)";

    my $t = $res->{trailers};
    is $t->{'x-smartflow-prompt-tokens'}, $in, "$name: prompt tokens trailer";
    is $t->{'x-smartflow-completion-tokens'}, $out,
        "$name: completion tokens trailer";
    is $t->{'x-smartflow-cost-usd'}, cost($model, $in, $out),
        "$name: cost trailer from the price table";
}

# a model without a price: the tokens, and no cost rather than a false 0
my $res = request('/v1/chat/completions', chat('unpriced-echo'));
is $res->{status}, 200, 'unpriced: 200';
ok $res->{trailers}{'x-smartflow-prompt-tokens'} > 0, 'unpriced: tokens';
ok !exists $res->{trailers}{'x-smartflow-cost-usd'}, 'unpriced: no cost';

# HTTP/1.0 has no trailers: the answer is whole, without them
$res = request('/v1/chat/completions', chat('gpt-4o-mini'), '1.0');
is $res->{status}, 200, 'HTTP/1.0: 200';
ok !exists $res->{headers}{'transfer-encoding'}, 'HTTP/1.0: not chunked';
my ($in) = usage_of($res->{body}, 0);
ok $in > 0, 'HTTP/1.0: the answer is whole';

# off: the provider's answer keeps its length, nothing follows it
$res = request('/off/v1/chat/completions', chat('gpt-4o-mini'));
is $res->{status}, 200, 'off: 200';
ok exists $res->{headers}{'content-length'}, 'off: Content-Length kept';
is_deeply $res->{trailers}, {}, 'off: no trailers';

# a refusal is not a model's answer: no trailers
$res = request('/v1/chat/completions', '{"model":');
is $res->{status}, 400, 'malformed JSON: 400';
is_deeply $res->{trailers}, {}, 'malformed JSON: no trailers';
like $res->{body}, qr/"error"/, 'malformed JSON: an OpenAI error';

$gw->check_error_log;

done_testing;
