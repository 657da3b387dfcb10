# A flush while a lookup waits for Redis: the entry Redis gives the
# lookup (asked before the flush's UNLINK) is served to it, but not kept
# in the zone, where it would outlive the flush.  One nginx node (two
# workers) and a real redis-server, frozen for a moment so that the GET
# and the flush are both on their way when it answers again; the
# node's Redis timeout is longer than the freeze.

use strict;
use warnings;

use Test::More;
use IO::Socket::INET;
use Time::HiRes qw(sleep time);
use lib 't/lib';
use Smartflow::Cluster;

my $c = Smartflow::Cluster->new(name => 'cache-review');
$c->redis_start;

my $node = $c->node('a', port => $ENV{TEST_NGINX_PORT} || 3100,
    modules => ['cache'],
    redis   => '127.0.0.1:' . $c->redis_port . ' timeout=3s fail=open',
    http    => "    smartflow_cache_zone metacache 8m entries=200;\n"
               . "    smartflow_cache metacache;\n"
               . "    smartflow_cache_ttl 300s;\n",
    server  => "        include $c->{conf}/smartflow_cache.conf;\n"
               . "        location /local/api/metacache {\n"
               . "            smartflow_cache_api;\n"
               . "            smartflow_cache_redis off;\n"
               . "        }\n");

my @master = ("Authorization: Bearer $Smartflow::Cluster::Master");

sub body {
    return qq({"model":"smartflow-echo","messages":)
           . qq([{"role":"user","content":"$_[0]"}]});
}

sub cache_keys {
    my $out = $c->redis_cli('--scan', '--pattern', 'smartflow:cache:*');
    return grep { length } split /\n/, $out // '';
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

# sent now, read later
sub send_now {
    my (@req) = @_;
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                     PeerPort => $node->{port},
                                     Proto => 'tcp', Timeout => 5)
        or die "cannot connect: $!";
    $sock->syswrite(Smartflow::Cluster::_request(@req));
    return $sock;
}

sub read_all {
    my ($sock) = @_;
    my $raw = '';
    while ($sock->sysread(my $chunk, 65536)) {
        $raw .= $chunk;
    }
    my ($status) = $raw =~ m{^HTTP/1\.\d (\d+)};
    my ($cache) = $raw =~ /\r\nx-smartflow-cache: (\S+)\r\n/i;
    my (undef, $content) = split /\r\n\r\n/, $raw, 2;
    return ($status // 0, $cache // '', $content // '');
}

my $q = 'Which river is the longest?';

# the answer in Redis only: stored, then the zone alone flushed
my ($status, $body, $h) = $c->http($node, 'POST', '/v1/chat/completions',
                                   body($q), @master);
is $h->{'x-smartflow-cache'}, 'MISS', 'a miss the first time';
wait_for 'the answer in Redis', sub { cache_keys() == 1 };
($status, $body) = $c->http($node, 'DELETE', '/local/api/metacache',
                            undef, @master);
like $body, qr/^\{"flushed":1\}$/, 'the zone flushed, Redis kept';

# Redis frozen: the lookup's GET, then the flush's SCAN, wait for it
kill 'STOP', $c->{redis_pid};
my $ask = send_now('POST', '/v1/chat/completions', body($q), @master);
sleep 0.2;
my $flush = send_now('DELETE', '/api/metacache', undef, @master);
sleep 0.3;
kill 'CONT', $c->{redis_pid};

my ($s1, $x1, $b1) = read_all($ask);
is $s1, 200, 'the lookup asked before the flush: answered';
is $x1, 'HIT', 'from Redis, as it was when asked';
like $b1, qr/\Q$q\E/, 'with the answer';

my ($s2, undef, $b2) = read_all($flush);
is $s2, 200, 'the flush: 200';
like $b2, qr/"redis":\{"flushed":1,"complete":true\}/,
     'the entry went from Redis';
is scalar(cache_keys()), 0, 'none left in Redis';

# the flush holds: the entry was not kept in the zone behind it
($status, $body, $h) = $c->http($node, 'POST', '/v1/chat/completions',
                                body($q), @master);
is $status, 200, 'asked again after the flush';
is $h->{'x-smartflow-cache'}, 'MISS', 'a miss: nothing outlived the flush';

# and phase 3 hits are kept again once the flush is over
wait_for 'stored again in Redis', sub { cache_keys() == 1 };
$c->http($node, 'DELETE', '/local/api/metacache', undef, @master);
($status, $body, $h) = $c->http($node, 'POST', '/v1/chat/completions',
                                body($q), @master);
is $h->{'x-smartflow-cache-phase'}, '3', 'a phase 3 hit';
($status, $body, $h) = $c->http($node, 'POST', '/v1/chat/completions',
                                body($q), @master);
is $h->{'x-smartflow-cache-phase'}, '1', 'kept in the zone: phase 1 next';

unlike $c->error_log($node), qr/\[(?:alert|crit|emerg)\]|signal \d+ .*exited/,
       'no crash';

# A worker killed in the middle of a flush: its flush never ends, and
# the worker started in its place takes it off, so phase 3 hits are
# kept in the zone again.
$c->http($node, 'DELETE', '/local/api/metacache', undef, @master);
is scalar(cache_keys()), 1, 'the answer in Redis only';

kill 'STOP', $c->{redis_pid};
my $cut = send_now('DELETE', '/api/metacache', undef, @master);
sleep 0.3;
my $master_pid = $c->pid($node);
my @workers = grep { /^\d+$/ } split /\n/, `pgrep -P $master_pid`;
ok @workers >= 1, 'the workers found';
kill 'KILL', @workers;
sleep 0.5;
kill 'CONT', $c->{redis_pid};
close $cut;

wait_for 'workers started again', sub {
    my ($s) = $c->http($node, 'GET', '/api/metacache/stats', undef, @master);
    return $s == 200;
};
is scalar(cache_keys()), 1, 'the cut flush did not reach Redis';

($status, $body, $h) = $c->http($node, 'POST', '/v1/chat/completions',
                                body($q), @master);
is $h->{'x-smartflow-cache-phase'}, '3', 'a phase 3 hit after the cut flush';
($status, $body, $h) = $c->http($node, 'POST', '/v1/chat/completions',
                                body($q), @master);
is $h->{'x-smartflow-cache-phase'}, '1', 'kept in the zone again: phase 1';

like $c->error_log($node),
     qr/\[warn\].*smartflow cache: process \d+ of zone "metacache" ended with 1 flush\(es\) going on; they are over/,
     'the dead worker\'s flush is taken off, and said so';

done_testing;
