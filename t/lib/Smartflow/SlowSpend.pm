package Smartflow::SlowSpend;

# The set-up the Redis outage suites of virtual keys' spend share: a
# real redis-server, nodes of two workers routing the model "slow" to
# the mock provider (an answer after 1.5 s, longer under AddressSanitizer,
# so that requests are still running when Redis is frozen or comes back),
# priced; and the helpers those suites read the nodes and Redis with.
#
#   my ($c, $a, $b) = Smartflow::SlowSpend::setup('late-spend', nodes => 2);
#
# redis_timeout => MS gives the nodes' smartflow_redis that timeout= (times
# the sanitizer's slowness) instead of 500 ms: short, as these suites
# freeze Redis and wait for the nodes to find it away, but five times
# the 100 ms they had, which a loaded machine's pause could pass;
# redis_addr => HOST:PORT has the nodes reach Redis there (a proxy of
# the suite's own); main => TEXT adds main-context lines to their
# nginx.conf.
#
# exports count(NODE, RE), wait_for(WHAT, SUB), counter(ID, FIELD),
# send_all(NODE, N, KEY), read_all(SOCKS), make_key(NODE, NAME) and
# away_time(): how long, once one worker of a node has found a frozen
# Redis away, its other worker may take to find it too (its next poll,
# then the timeout), with room to spare.

use strict;
use warnings;

use Exporter 'import';
use IO::Select;
use IO::Socket::INET;
use Test::More;
use Time::HiRes qw(sleep time);
use Smartflow::Cluster;
use Smartflow::Mock;

our @EXPORT = qw(count wait_for counter send_all read_all make_key
                 away_time);

my $c;
my $timeout;

our $Ask = '{"model":"slow","messages":'
           . '[{"role":"user","content":"how much is this"}]}';

our @Master = ("Authorization: Bearer $Smartflow::Cluster::Master");

sub setup {
    my ($name, %o) = @_;

    $c = Smartflow::Cluster->new(name => $name);
    $c->redis_start;

    my $mock = Smartflow::Mock::port();
    my $slow = 1500 * $c->{slow};
    my $http = <<"_EOC_";
    upstream sf_mock {
        server 127.0.0.1:$mock;
    }
    smartflow_provider mock type=openai upstream=http://sf_mock path=/v1
                       key=sk-mock-provider-key-0123456789;
    smartflow_route slow mock model=mock-slow-$slow;
    smartflow_price mock-slow-* 1 2;
_EOC_

    my %redis;
    $timeout = ($o{redis_timeout} || 500) * $c->{slow};
    $redis{redis} = ($o{redis_addr} || "127.0.0.1:$c->{redis_port}")
                    . " timeout=${timeout}ms fail=open";
    $redis{main} = $o{main} if defined $o{main};

    my @nodes = ($c->node('a', port => $ENV{TEST_NGINX_PORT} || 3100,
                          fail => 'open', http => $http, %redis));

    if (($o{nodes} // 1) > 1) {
        push @nodes, $c->node('b',
                              port => $ENV{SMARTFLOW_REDIS_NODE_PORT} || 3111,
                              fail => 'open', http => $http, %redis);
    }

    return ($c, @nodes);
}

sub away_time {
    return 2 * (0.25 + $timeout / 1000);
}

# how many lines of the node's error log match
sub count {
    my ($node, $re) = @_;
    my @n = $c->error_log($node) =~ /$re/g;
    return scalar @n;
}

sub wait_for {
    my ($what, $cond) = @_;
    my $t0 = time;
    until ($cond->()) {
        return fail "$what: not within 10 s" if time - $t0 > 10;
        sleep 0.1;
    }
    pass $what;
}

# a counter of a key in Redis, 0 when it has none
sub counter {
    my ($id, $field) = @_;
    my $v = $c->redis_cli('HGET', "sf:vk:c:$id", $field);
    return defined $v && length $v ? $v : 0;
}

# requests sent now, their answers read later by read_all()
sub send_all {
    my ($node, $n, $key) = @_;
    my @socks;
    for (1 .. $n) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $node->{port},
                                      Proto => 'tcp', Timeout => 5)
            or die "cannot connect to $node->{port}: $!";
        $s->syswrite("POST /v1/chat/completions HTTP/1.1\r\n"
                     . "Host: localhost\r\nConnection: close\r\n"
                     . "Authorization: Bearer $key\r\n"
                     . "Content-Type: application/json\r\n"
                     . 'Content-Length: ' . length($Ask) . "\r\n\r\n$Ask");
        push @socks, $s;
    }
    return \@socks;
}

# [status] of each request, in the order sent
sub read_all {
    my ($socks) = @_;
    my %buf = map { $_ => '' } @$socks;
    my $sel = IO::Select->new(@$socks);
    my $deadline = time + 30;
    while ($sel->count && time < $deadline) {
        for my $s ($sel->can_read(1)) {
            if ($s->sysread(my $chunk, 65536)) {
                $buf{$s} .= $chunk;
            } else {
                $sel->remove($s);
                $s->close;
            }
        }
    }
    return [ map { [ $buf{$_} =~ m{^HTTP/1\.\d (\d+)} ? $1 : 0 ] }
             @$socks ];
}

# a virtual key with a budget of 1 USD: (key, id)
sub make_key {
    my ($node, $name) = @_;
    my ($status, $body) = $c->http($node, 'POST', '/api/auth/virtual-keys',
                                   qq({"name":"$name","budget_usd":1}),
                                   @Master);
    is $status, 201, 'key made';
    my ($key) = $body =~ /"key":"(sk-sf-[0-9a-f]{48})"/;
    my ($id) = $body =~ /"id":"vk_(\d+)"/;
    return ($key, $id);
}

1;
