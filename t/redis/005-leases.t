# Busy keys: a worker serves most requests of a busy key from capacity it
# leased in Redis ahead of them, and gives back what it did not use.  The
# counts stay exact (every request counted once in the window, the period
# and the lifetime; nothing left reserved), and a limit holds across two
# nodes (four workers) however the leases fall.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(sleep time);
use lib 't/lib';
use Smartflow::Cluster;

my $c = Smartflow::Cluster->new(name => 'leases');
$c->redis_start;

my $a = $c->node('a', port => $ENV{TEST_NGINX_PORT} || 3100);
my $b = $c->node('b', port => $ENV{SMARTFLOW_REDIS_NODE_PORT} || 3111);

my @master = ("Authorization: Bearer $Smartflow::Cluster::Master");
my $hello = '{"model":"smartflow-echo","messages":'
            . '[{"role":"user","content":"hello"}]}';

sub create {
    my ($node, $spec) = @_;
    my ($status, $body) = $c->http($node, 'POST', '/api/auth/virtual-keys',
                                   $spec, @master);
    is $status, 201, "key made: $spec" or diag $body;
    my ($key) = $body =~ /"key":"(sk-sf-[0-9a-f]{48})"/;
    my ($id) = $body =~ /"id":"vk_(\d+)"/;
    return ($key, $id);
}

# every lease given back and every request settled: nothing reserved
sub settled {
    my ($id) = @_;
    my $t0 = time;
    while (time - $t0 < 10 * $c->{slow}) {
        my %f = split /\n/, $c->redis_cli('HGETALL', "sf:vk:c:$id");
        return 1 if ($f{res} // '') eq '0' && ($f{wres} // '') eq '0';
        sleep 0.05;
    }
    return 0;
}

sub tally {
    my %n;
    $n{$_->[0]}++ for @{ $_[0] };
    return join ', ', map { "$_ x$n{$_}" } sort keys %n;
}

# reservations Redis made one by one: their tokens hold "window period ..."
sub reservations {
    return $c->redis_cli('EVAL', q{
        local n = 0
        for _, k in ipairs(redis.call('KEYS', 'sf:t:*')) do
            local v = redis.call('GET', k)
            if v and string.find(v, ' ') then n = n + 1 end
        end
        return n}, 0);
}

# a key with room to spare: bursts of 60 requests, half on each node
my ($key, $id) = create($a, '{"name":"busy","rpm":100000,"tpm":100000000,'
                            . '"budget_usd":1000}');
my $before = reservations();
my ($served, @bodies) = (0);
for my $round (1 .. 5) {
    my $r = $c->burst(map { [$_ % 2 ? $a : $b, 'POST',
                             '/v1/chat/completions', $hello,
                             "Authorization: Bearer $key"] } 1 .. 60);
    is tally($r), '200 x60', "burst $round: every request served";
    $served += grep { $_->[0] == 200 } @$r;
    my ($one) = grep { $_->[0] == 200 } @$r;
    ok $one->[2]{'x-ratelimit-remaining-requests'} > 99000
       && $one->[2]{'x-ratelimit-remaining-requests'} < 100000,
       "burst $round: x-ratelimit-remaining-requests tells the window"
        or diag $one->[2]{'x-ratelimit-remaining-requests'};
}

# each request Redis decided alone leaves a token there; leased ones none
# (how many depends on how the bursts fall on the workers' event loops)
my $made = reservations() - $before;
ok $made < $served,
   "some of the $served requests were served from leases"
    . " ($made went to Redis one by one, or asked for a lease)";

# the leases end within 50 ms and go back with the settlements
ok settled($id), 'the leases and settlements reached Redis';
my %f = split /\n/, $c->redis_cli('HGETALL', "sf:vk:c:$id");
is $f{wr}, $served, 'the window counts every request once';
is $f{pr}, $served, 'so does the period';
is $f{r}, $served, 'and the lifetime';
is $f{wres}, 0, 'no tokens are left reserved';
is $f{res}, 0, 'no money is left reserved';
ok $f{sp} > 0 && $f{sp} == $f{s}, 'the spend is settled';
my ($status, $body) = $c->http($b, 'GET', "/api/auth/virtual-keys/vk_$id/usage",
                               undef, @master);
like $body, qr/"requests":$served,/, 'the usage API tells them all';

# near a limit every request is decided in Redis: rpm 300 holds exactly
# for 500 requests in bursts on both nodes
my ($lk, $lid) = create($b, '{"name":"busy-limited","rpm":300}');
my %all;
for my $round (1 .. 10) {
    my $r = $c->burst(map { [$_ % 2 ? $a : $b, 'POST',
                             '/v1/chat/completions', $hello,
                             "Authorization: Bearer $lk"] } 1 .. 50);
    $all{$_->[0]}++ for @$r;
    sleep 0.1;
}
is join(', ', map { "$_ x$all{$_}" } sort keys %all), '200 x300, 429 x200',
   'rpm 300 holds exactly across two nodes for busy bursts';
ok settled($lid), 'what the leases did not use is back';
is $c->redis_cli('HGET', "sf:vk:c:$lid", 'wr'), 300,
   'the window holds the 300 served';

# a budget: 100 micro-USD at 1 each (smartflow_price 1 micro-USD per
# million tokens, rounded up), bursts of 40 from both nodes
my ($bk, $bid) = create($a, '{"name":"busy-budget","budget_usd":0.0001}');
%all = ();
for my $round (1 .. 5) {
    my $r = $c->burst(map { [$_ % 2 ? $a : $b, 'POST',
                             '/v1/chat/completions', $hello,
                             "Authorization: Bearer $bk"] } 1 .. 40);
    $all{$_->[0]}++ for @$r;
    sleep 0.1;
}
is join(', ', map { "$_ x$all{$_}" } sort keys %all), '200 x100, 429 x100',
   'a budget of 100 requests holds exactly across two nodes';
ok settled($bid), 'what the leases did not use is back';
is $c->redis_cli('HGET', "sf:vk:c:$bid", 'sp'), 100, 'Redis holds the spend';
is $c->redis_cli('HGET', "sf:vk:c:$bid", 'res'), 0, 'nothing reserved';

for my $node ($a, $b) {
    my $log = $c->error_log($node);
    unlike $log, qr/\[(?:alert|crit|emerg)\]/,
           "no alert in the log of $node->{name}";
    unlike $log, qr/redis \d|unreachable|could not be given/,
           "Redis took every script of $node->{name}";
}

done_testing;
