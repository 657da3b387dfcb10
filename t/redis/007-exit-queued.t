# Settlements a worker holds when it exits while Redis is away are not
# lost: requests reserved in Redis, answered while Redis is frozen, are
# settled by a worker that cannot reach it, and that worker ends (a
# reload).  When Redis answers again the next worker gives their usage to
# Redis and frees what they held reserved there, once.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(sleep time);
use lib 't/lib';
use Smartflow::SlowSpend;

my ($c, $a) = Smartflow::SlowSpend::setup('exit-queued');
my @master = @Smartflow::SlowSpend::Master;
my ($key, $id) = make_key($a, 'queued');

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

my $away = count($a, qr/redis \S+ unreachable/);
my $back = count($a, qr/redis \S+ answers again/);
kill 'STOP', $c->{redis_pid};
wait_for 'A finds Redis away',
    sub { count($a, qr/redis \S+ unreachable/) > $away };
sleep(away_time());

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
    sub { count($a, qr/redis \S+ answers again/) > $back };

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
