# Settlements a node has sent to Redis but not seen answered when it is
# told to stop are waited for: requests reserved in Redis are answered
# while Redis is frozen, their settlements go out on the connection, and
# the node is told to quit.  Its workers wait (bounded by the connection's
# timeout) for Redis; Redis answers, and the workers exit with nothing
# left unanswered, nothing kept for a worker that will never come, and
# Redis has the usage once.
use strict;
use warnings;

use Test::More;
use Time::HiRes qw(sleep time);
use lib 't/lib';
use Smartflow::SlowSpend;

# a timeout well past the time the settlements wait in a frozen Redis
my ($c, $a) = Smartflow::SlowSpend::setup('stop-in-flight',
                                          redis_timeout => 5000);
my ($key, $id) = make_key($a, 'in-flight');

# what one request costs, as Redis counts it
my $r = read_all(send_all($a, 1, $key));
is $r->[0][0], 200, 'a request served with Redis';
wait_for 'Redis counts its spend', sub { counter($id, 's') > 0 };
my $cost = counter($id, 's');
is counter($id, 'res'), 0, 'nothing is reserved between requests';

# three requests reserved in Redis, then Redis frozen under them
my $held = send_all($a, 3, $key);
wait_for 'their cost is reserved in Redis',
    sub { counter($id, 'res') > 0 };

kill 'STOP', $c->{redis_pid};

$r = read_all($held);
is join(' ', map { $_->[0] } @$r), '200 200 200',
   'the three requests are served while Redis is frozen';

# their settlements are on the connection, unanswered: the node stops
sleep(0.2 * $c->{slow});
my $pid = $c->pid($a);
kill 'QUIT', $pid;
sleep(0.5 * $c->{slow});
kill 'CONT', $c->{redis_pid};
$c->stop($a);
ok !-e "$a->{dir}/logs/nginx.pid", 'the node has stopped';

is count($a, qr/kept for the next worker/), 0,
   'no usage update is left to a worker that will never come';
is count($a, qr/redis \S+ unreachable/), 0,
   'Redis was not given up on';

wait_for 'Redis has their spend, once',
    sub { counter($id, 's') == 4 * $cost }
    or diag 'Redis spend ', counter($id, 's'), ', expected ', 4 * $cost;
is counter($id, 'res'), 0, 'Redis holds no reservation for them';
is counter($id, 'r'), 4, 'and counts the requests once';

open my $fh, '<', "$a->{dir}/state/keys.state" or die "state: $!";
my $state = do { local $/; <$fh> };
close $fh;
unlike $state, qr/redis_unsent/, 'the state file keeps nothing for Redis';

unlike $c->error_log($a), qr/\[(?:alert|crit|emerg)\]/,
       'no alert in the log of A';

done_testing;
