# Settlements a worker holds when it exits while Redis is away are not
# lost: requests reserved in Redis, answered while Redis is frozen, are
# settled by a worker that cannot reach it, and that worker ends (a
# reload).  When Redis answers again the next worker gives their usage to
# Redis and frees what they held reserved there, once.

use strict;
use warnings;

use IO::Select;
use IO::Socket::INET;
use Test::More;
use Time::HiRes qw(sleep time);
use lib 't/lib';
use Smartflow::Cluster;
use Smartflow::Mock;

my $c = Smartflow::Cluster->new(name => 'exit-queued');
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

my $a = $c->node('a', port => $ENV{TEST_NGINX_PORT} || 3100,
                 fail => 'open', http => $http);

my @master = ("Authorization: Bearer $Smartflow::Cluster::Master");
my $ask = '{"model":"slow","messages":'
          . '[{"role":"user","content":"how much is this"}]}';

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

sub counter {
    my ($id, $field) = @_;
    my $v = $c->redis_cli('HGET', "sf:vk:c:$id", $field);
    return defined $v && length $v ? $v : 0;
}

# requests sent now, their answers read later: [status, body] each
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
                     . 'Content-Length: ' . length($ask) . "\r\n\r\n$ask");
        push @socks, $s;
    }
    return \@socks;
}

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

my ($status, $body) = $c->http($a, 'POST', '/api/auth/virtual-keys',
                               '{"name":"queued","budget_usd":1}', @master);
is $status, 201, 'key made';
my ($key) = $body =~ /"key":"(sk-sf-[0-9a-f]{48})"/;
my ($id) = $body =~ /"id":"vk_(\d+)"/;

# what one request costs, as Redis counts it
my $r = read_all(send_all($a, 1, $key));
is $r->[0][0], 200, 'a request served with Redis';
wait_for 'Redis counts its spend', sub { counter($id, 's') > 0 };
my $cost = counter($id, 's');
my $prompt = counter($id, 'p');
my $completion = counter($id, 'c');
ok $prompt > 0 && $completion > 0, 'and its tokens';
is counter($id, 'res'), 0, 'nothing is reserved between requests';

# three requests reserved in Redis, then Redis frozen under them
my $held = send_all($a, 3, $key);
wait_for 'their cost is reserved in Redis',
    sub { counter($id, 'res') > 0 };
sleep(0.2 * $c->{slow});

kill 'STOP', $c->{redis_pid};
wait_for 'A finds Redis away',
    sub { count($a, qr/redis \S+ unreachable/) >= 1 };
sleep(0.6 * $c->{slow});

$r = read_all($held);
is join(' ', map { $_->[0] } @$r), '200 200 200',
   'the three requests are served while Redis is frozen';

# their settlements wait in workers that end now
sleep(0.3 * $c->{slow});
$c->reload($a);
wait_for 'the workers that settled them have exited',
    sub { count($a, qr/worker process \d+ exited/) >= 2 };

kill 'CONT', $c->{redis_pid};
wait_for 'A says Redis answers again',
    sub { count($a, qr/redis \S+ answers again/) >= 1 };

wait_for 'Redis holds no reservation for them any more',
    sub { counter($id, 'res') == 0 }
    or diag 'Redis holds ', counter($id, 'res'), ' micro-USD reserved';
wait_for 'Redis has their spend',
    sub { counter($id, 's') == 4 * $cost }
    or diag 'Redis spend ', counter($id, 's'), ', expected ', 4 * $cost;
is counter($id, 'sp'), 4 * $cost, '... in the budget period too';
is counter($id, 'p'), 4 * $prompt, '... with their prompt tokens';
is counter($id, 'c'), 4 * $completion, '... and completion tokens';
is counter($id, 'wres'), 0, 'no tokens are held in the rate window';

# counted once, however often the workers poll
sleep(1 * $c->{slow});
is counter($id, 's'), 4 * $cost, 'the spend is counted once';
is counter($id, 'r'), 4, 'and the requests';

unlike $c->error_log($a), qr/\[(?:alert|crit|emerg)\]/,
       'no alert in the log of A';

done_testing;
