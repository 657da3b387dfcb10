#!/usr/bin/env perl
# A stream cut short before its usage report still costs its virtual key:
# the provider bills what it generated, so the key pays an estimate (the
# prompt as reserved, a token per 4 bytes of the stream, no more than
# max_tokens), else closing every stream before its last event would make
# every answer free.  A stream that ends normally pays what the provider
# reported.
#
# A gateway of its own (Smartflow::Clients) and the mock provider; the
# client reads the first events by hand and closes the connection.

use strict;
use warnings;

use FindBin ();
use lib "$FindBin::Bin/../lib";
use HTTP::Tiny;
use IO::Socket::INET;
use JSON::PP ();
use Smartflow::Clients;
use Test::More;

my $gw = Smartflow::Clients->new(
    servroot => 't/servroot-stream-cut',
    port     => $ENV{TEST_NGINX_KEYS_CLIENT_PORT} || 1987,
    port_var => 'TEST_NGINX_KEYS_CLIENT_PORT',
    mock     => 1,
    packages => [],
    conf     => ['smartflow_proxy.conf', 'smartflow_admin.conf']);

my ($Port, $MockPort) = @$gw{qw(port mock_port)};
my $Master = 'sk-smartflow-stream-cut-0123456789';

$gw->start(<<"HTTP");
    smartflow_master_key $Master;
    smartflow_keys_zone keys 1m;

    upstream sf_mock {
        server 127.0.0.1:$MockPort;
        keepalive 8;
    }

    smartflow_provider mock type=openai upstream=http://sf_mock path=/v1
                       key=sk-mock-provider-key-0123456789;
    smartflow_route gpt-4o-mini mock;
    smartflow_price gpt-4o-mini 1 2;

    server {
        listen 127.0.0.1:$Port;

        location = /v1/chat/completions {
            smartflow_api chat;
            include $gw->{conf_dir}/smartflow_proxy.conf;
        }

        include $gw->{conf_dir}/smartflow_admin.conf;

        location \@smartflow_error {
            smartflow_api error;
        }
    }
HTTP

sub call {
    my ($method, $path, $auth, $body) = @_;
    my $http = HTTP::Tiny->new(timeout => 10);
    my $r = $http->request($method, "http://127.0.0.1:$Port$path", {
        headers => { Authorization => "Bearer $auth",
                     'Content-Type' => 'application/json' },
        defined $body ? (content => $body) : () });
    return ($r->{status}, $r->{content} ? eval { JSON::PP->new->decode($r->{content}) } : undef);
}

my ($st, $key) = call('POST', '/api/auth/virtual-keys', $Master,
                      '{"name":"streamer","budget_usd":5}');
is($st, 201, 'a virtual key with a budget');
my ($secret, $id) = ($key->{key}, $key->{id});

sub spent {
    my (undef, $u) = call('GET', "/api/auth/virtual-keys/$id/usage", $Master);
    return $u;
}

my $words = join ' ', map { "word$_" } 1 .. 40;
my $body = '{"model":"gpt-4o-mini","stream":true,"max_tokens":500,'
    . '"messages":[{"role":"user","content":"tell me forty words"}]}';

# the client goes away after the first events, long before the usage
{
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                     PeerPort => $Port, Timeout => 10)
        or die "connect: $!";
    print $sock "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
        . "Authorization: Bearer $secret\r\nContent-Type: application/json\r\n"
        . "x-mock-reply: $words\r\nx-mock-chunk-delay-ms: 50\r\n"
        . "Content-Length: " . length($body) . "\r\n\r\n" . $body;
    my $got = '';
    while ($got !~ /word3\b/) {
        my $n = sysread $sock, my $buf, 4096;
        last unless $n;
        $got .= $buf;
    }
    like($got, qr/^HTTP\/1\.1 200/, 'the stream started');
    unlike($got, qr/word40/, 'and was not over when the client left');
    close $sock;
}

# the gateway notices on its next write; the LOG phase settles
my $u;
for (1 .. 50) {
    select undef, undef, undef, 0.1;
    $u = spent();
    last if $u && $u->{requests} && $u->{spend_usd} > 0;
}
is($u->{requests}, 1, 'the cut stream is counted');
ok($u->{spend_usd} > 0, 'and paid for: an estimate, not nothing')
    or diag explain $u;
ok($u->{prompt_tokens} > 0 && $u->{completion_tokens} > 0
   && $u->{completion_tokens} <= 500,
   'prompt and completion estimated, the completion within max_tokens')
    or diag explain $u;
is($u->{reserved_usd}, 0, 'nothing left reserved');

# a whole stream pays the usage the provider reported
my $before = $u->{spend_usd};
{
    my $http = HTTP::Tiny->new(timeout => 10);
    my $r = $http->request('POST', "http://127.0.0.1:$Port/v1/chat/completions", {
        headers => { Authorization => "Bearer $secret",
                     'Content-Type' => 'application/json',
                     'x-mock-reply' => 'five words and no more' },
        content => $body });
    is($r->{status}, 200, 'a whole stream') or diag $r->{content};
    like($r->{content}, qr/data: \[DONE\]/, 'to its end');
}
for (1 .. 50) {
    $u = spent();
    last if $u->{requests} == 2;
    select undef, undef, undef, 0.1;
}
is($u->{requests}, 2, 'counted');
ok($u->{spend_usd} > $before, 'and paid by its usage') or diag explain $u;

my $log = $gw->check_error_log;
$gw->error_log_like($log, qr/a stream without a usage report, virtual key vk_\d+ pays an estimate of \d+ prompt and \d+ completion tokens/,
     'the error log says how the cut stream was paid');
is(() = $log =~ /pays an estimate/g, 1, 'and only for it');

done_testing;
