# A worker told to quit waits for the answers to what it sent Redis, but
# no longer than the operator's worker_shutdown_timeout, when that comes
# first: the connection's timeout= is long, Redis is frozen under three
# settlements, the node is told to quit.  When worker_shutdown_timeout
# has passed, nginx closes what connections are left, the one to Redis
# too: the workers exit, and the settlements no answer came for are kept
# in the zone for the next worker that reaches Redis.
use strict;
use warnings;

use Test::More;
use Time::HiRes qw(sleep time);
use lib 't/lib';
use Smartflow::SlowSpend;

# Redis may take a minute to answer; the workers may take a second to quit
my ($c, $a) = Smartflow::SlowSpend::setup('stop-shutdown-timeout',
    redis_timeout => 60000, main => "worker_shutdown_timeout 1s;\n");
my ($key, $id) = make_key($a, 'shutdown');

my $held = send_all($a, 3, $key);
wait_for 'their cost is reserved in Redis',
    sub { counter($id, 'res') > 0 };

kill 'STOP', $c->{redis_pid};

my $r = read_all($held);
is join(' ', map { $_->[0] } @$r), '200 200 200',
   'the three requests are served while Redis is frozen';

# their settlements are on the connection, unanswered: the node quits
sleep(0.2 * $c->{slow});
my $pid = $c->pid($a);
kill 'QUIT', $pid;

my $t0 = time;
sleep 0.1 while kill(0, $pid) && time - $t0 < 20 * $c->{slow};
ok !kill(0, $pid),
   'the node stops once worker_shutdown_timeout has passed, not the '
   . 'minute of the connection\'s timeout';

kill 'CONT', $c->{redis_pid};

ok count($a, qr/kept for the next worker/) > 0,
   'the settlements without an answer are kept for the next worker';
like $c->error_log($a),
     qr/smartflow proxy: redis \S+: worker_shutdown_timeout passed with \d+ answers? still to come/,
     'the error log says what was given up and why';
is count($a, qr/redis \S+ unreachable/), 0,
   'Redis is not reported unreachable';
unlike $c->error_log($a), qr/\[(?:alert|crit|emerg)\]/,
       'no alert in the log of A';

done_testing;
