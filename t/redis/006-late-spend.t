# Spend a node counts in its zone around an outage reaches Redis as soon
# as Redis answers again, once: requests admitted from the zone while
# Redis was frozen and answered after it came back are settled in the
# zone; the next poll gives that spend to Redis, where the other node
# sees it, and a later outage does not count it a second time.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(sleep time);
use lib 't/lib';
use Smartflow::SlowSpend;

my ($c, $a, $b) = Smartflow::SlowSpend::setup('late-spend', nodes => 2);
my @master = @Smartflow::SlowSpend::Master;
my ($key, $id) = make_key($a, 'late');
my $ask = $Smartflow::SlowSpend::Ask;
my ($status, $body);

# what one request costs, as Redis counts it
my $r = read_all(send_all($a, 1, $key));
is $r->[0][0], 200, 'a request served with Redis';
wait_for 'Redis counts its spend', sub { counter($id, 's') > 0 };
my $cost = counter($id, 's');
my $prompt = counter($id, 'p');
my $completion = counter($id, 'c');
ok $prompt > 0 && $completion > 0, 'and its tokens';

# Redis frozen: both workers of A find it away
my $away = count($a, qr/redis \S+ unreachable/);
my $back = count($a, qr/redis \S+ answers again/);
kill 'STOP', $c->{redis_pid};
wait_for 'A finds Redis away',
    sub { count($a, qr/redis \S+ unreachable/) > $away };
sleep(away_time());

# admitted from the zone; answered once Redis is back
my $late = send_all($a, 4, $key);
sleep(0.3 * $c->{slow});

kill 'CONT', $c->{redis_pid};
wait_for 'A says Redis answers again',
    sub { count($a, qr/redis \S+ answers again/) > $back };

$r = read_all($late);
is join(' ', map { $_->[0] } @$r), '200 200 200 200',
   'the four requests admitted during the outage are served';

wait_for 'Redis has the requests counted during the outage',
    sub { counter($id, 'r') == 5 };
wait_for 'Redis has the spend of the requests settled after it',
    sub { counter($id, 's') == 5 * $cost }
    or diag 'Redis spend ', counter($id, 's'), ', expected ', 5 * $cost;
is counter($id, 'sp'), 5 * $cost, '... in the budget period too';
is counter($id, 'p'), 5 * $prompt, '... with their prompt tokens';
is counter($id, 'c'), 5 * $completion, '... and completion tokens';
is counter($id, 'res'), 0, 'no reservation is left in Redis';

# the other node sees the budget spent
($status) = $c->http($a, 'PATCH', "/api/auth/virtual-keys/vk_$id",
                     sprintf('{"budget_usd":%.6f}', 5 * $cost / 1e6),
                     @master);
is $status, 200, 'the budget is set to what five requests cost';
wait_for 'B has the new budget', sub {
    my (undef, $got) = $c->http($b, 'GET', "/api/auth/virtual-keys/vk_$id",
                                undef, @master);
    $got =~ /"budget_usd":([0-9.]+)/ && abs($1 * 1e6 - 5 * $cost) < 0.5 };
($status, $body) = $c->http($b, 'POST', '/v1/chat/completions', $ask,
                            "Authorization: Bearer $key");
is $status, 429, 'B refuses the key: its budget is spent';
like $body, qr/insufficient_quota/, '... as an exhausted budget';

# counted once: more polls, and a second outage with nothing served
sleep(1 * $c->{slow});
is counter($id, 's'), 5 * $cost, 'the spend is counted once';

$away = count($a, qr/redis \S+ unreachable/);
$back = count($a, qr/redis \S+ answers again/);
kill 'STOP', $c->{redis_pid};
wait_for 'A finds Redis away again',
    sub { count($a, qr/redis \S+ unreachable/) > $away };
kill 'CONT', $c->{redis_pid};
wait_for 'A says Redis answers again, a second time',
    sub { count($a, qr/redis \S+ answers again/) > $back };
sleep(1 * $c->{slow});
is counter($id, 's'), 5 * $cost, 'still once after the next outage';
is counter($id, 'r'), 5, 'the requests too (a refused one is not counted)'
    or diag 'Redis requests ', counter($id, 'r');

unlike $c->error_log($_), qr/\[(?:alert|crit|emerg)\]/,
       "no alert in the log of $_->{name}" for $a, $b;

done_testing;
