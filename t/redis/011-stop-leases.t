# A worker told to quit gives back the leases it holds and waits for
# Redis's answer, as it does for its other scripts: a busy key is served
# from leases on both workers of a node, Redis is frozen right after a
# burst and the node is told to stop.  Redis answers half a second later,
# within the connection's timeout: the node stops with nothing left
# unanswered, and Redis counts every request once, what the leases did
# not use back in the window and nothing left reserved.
use strict;
use warnings;

use Test::More;
use Time::HiRes qw(sleep time);
use lib 't/lib';
use Smartflow::Cluster;

my $c = Smartflow::Cluster->new(name => 'stop-leases');
$c->redis_start;

# a timeout well past the time the answers wait in a frozen Redis
my $a = $c->node('a', port => $ENV{TEST_NGINX_PORT} || 3100,
                 timeout => 5000);

my @master = ("Authorization: Bearer $Smartflow::Cluster::Master");
my $hello = '{"model":"smartflow-echo","messages":'
            . '[{"role":"user","content":"hello"}]}';

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

my ($status, $body) = $c->http($a, 'POST', '/api/auth/virtual-keys',
                               '{"name":"busy","rpm":100000,'
                               . '"tpm":100000000,"budget_usd":1000}',
                               @master);
is $status, 201, 'key made' or diag $body;
my ($key) = $body =~ /"key":"(sk-sf-[0-9a-f]{48})"/;
my ($id) = $body =~ /"id":"vk_(\d+)"/;

# bursts of 60 requests: the workers lease; the last one ends with
# leases held, and at once Redis is frozen and the node told to stop
my $before = reservations();
my $served = 0;
my $pid = $c->pid($a);
for my $round (1 .. 5) {
    my $r = $c->burst(map { [$a, 'POST', '/v1/chat/completions', $hello,
                             "Authorization: Bearer $key"] } 1 .. 60);
    if ($round == 5) {
        kill 'STOP', $c->{redis_pid};
        kill 'QUIT', $pid;
    }
    $served += grep { $_->[0] == 200 } @$r;
}
is $served, 300, 'every request is served';

sleep(0.5 * $c->{slow});
kill 'CONT', $c->{redis_pid};

my $t0 = time;
sleep 0.1 while kill(0, $pid) && time - $t0 < 20 * $c->{slow};
ok !kill(0, $pid), 'the node stops once Redis has answered';

my $made = reservations() - $before;
ok $made < $served,
   "some of the $served requests were served from leases"
    . " ($made went to Redis one by one, or asked for a lease)";

my %f = split /\n/, $c->redis_cli('HGETALL', "sf:vk:c:$id");
is $f{wr}, $served,
   'the window counts every request once: what the leases did not use '
   . 'is back';
is $f{wres}, 0, 'no tokens are left reserved';
is $f{res}, 0, 'no money is left reserved';
is $f{pr}, $served, 'the period counts every request once';
is $f{r}, $served, 'and the lifetime';
ok $f{sp} > 0 && $f{sp} == $f{s}, 'the spend is settled';

is $c->error_log($a) =~ /kept for the next worker/ ? 1 : 0, 0,
   'no usage update is left to a worker that will never come';
unlike $c->error_log($a), qr/redis \S+ unreachable/,
       'Redis was not given up on';
unlike $c->error_log($a), qr/answers still to come/,
       'nor any answer';
unlike $c->error_log($a), qr/\[(?:alert|crit|emerg)\]/,
       'no alert in the log of A';

done_testing;
