# A request still running when its worker is told to quit settles after
# the worker's wait for the answers of that moment is over: its
# settlement gets a timeout of its own, not what was left of that wait.
# One slow request (1.5 s) is reserved in Redis, the node is told to
# stop, Redis is frozen once the wait of the quit (one timeout, 1 s) is
# over, the request ends and its settlement goes out, and Redis answers
# half a second later, within the timeout: the node stops with nothing
# left unanswered, and Redis counts the request once.
use strict;
use warnings;

use Test::More;
use Time::HiRes qw(sleep time);
use lib 't/lib';
use Smartflow::SlowSpend;

my ($c, $a) = Smartflow::SlowSpend::setup('stop-late-settle',
                                          redis_timeout => 1000);
my ($key, $id) = make_key($a, 'late-settle');
my $slow = $c->{slow};

my $t0 = time;
my $held = send_all($a, 1, $key);
wait_for 'its cost is reserved in Redis', sub { counter($id, 'res') > 0 };

my $pid = $c->pid($a);
kill 'QUIT', $pid;

# the wait of the quit is over (nothing was left to answer then): Redis
# is frozen before the request ends, and answers after it has ended
sleep($t0 + 1.2 * $slow - time) if time < $t0 + 1.2 * $slow;
kill 'STOP', $c->{redis_pid};

my $r = read_all($held);
is $r->[0][0], 200, 'the request is served';

sleep(0.5 * $slow);
kill 'CONT', $c->{redis_pid};

my $t1 = time;
sleep 0.1 while kill(0, $pid) && time - $t1 < 20 * $slow;
ok !kill(0, $pid), 'the node stops once Redis has answered';

unlike $c->error_log($a), qr/answers still to come/,
       'the settlement was not given up on';
is count($a, qr/kept for the next worker/), 0,
   'no usage update is left to a worker that will never come';
is count($a, qr/redis \S+ unreachable/), 0, 'Redis was not given up on';

wait_for 'Redis counts the request once', sub { counter($id, 'r') == 1 };
is counter($id, 'res'), 0, 'Redis holds no reservation for it';
ok counter($id, 's') > 0, 'and has its spend';

unlike $c->error_log($a), qr/\[(?:alert|crit|emerg)\]/,
       'no alert in the log of A';

done_testing;
