# Settlements a node holds when it stops while Redis is away wait in its
# state file: requests reserved in Redis, answered while Redis is frozen,
# are settled by workers that cannot reach it, and the node stops.  Once
# it has started again and Redis answers, their usage reaches Redis and
# what they held reserved there is freed, once, also across a later
# restart.
use strict;
use warnings;

use Test::More;
use Time::HiRes qw(sleep time);
use lib 't/lib';
use Smartflow::SlowSpend;

my ($c, $a) = Smartflow::SlowSpend::setup('stop-queued');
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
kill 'STOP', $c->{redis_pid};
wait_for 'A finds Redis away',
    sub { count($a, qr/redis \S+ unreachable/) > $away };
sleep(away_time());

# and one admitted by the zone alone
my $apart = send_all($a, 1, $key);

$r = read_all([@$held, @$apart]);
is join(' ', map { $_->[0] } @$r), '200 200 200 200',
   'the four requests are served while Redis is frozen';

# their settlements wait in workers that end now, with their node
sleep(0.3 * $c->{slow});
$c->stop($a);
open my $fh, '<', "$a->{dir}/state/keys.state" or die "state: $!";
my $state = do { local $/; <$fh> };
close $fh;
like $state, qr/"redis_unsent":\[/,
     'the state file keeps what Redis has not seen';
like $state, qr/"redis_apart":\[\n\{"id":$id,"requests":1,/,
     '... what the zone served alone';
like $state, qr/"redis_epoch":"\d+\.\d+"/, '... and which Redis it saw';

# (the workers may reach Redis before their timeout: no outage for them)
$c->start($a);
kill 'CONT', $c->{redis_pid};

wait_for 'Redis holds no reservation for them any more',
    sub { counter($id, 'res') == 0 }
    or diag 'Redis holds ', counter($id, 'res'), ' micro-USD reserved';
wait_for 'Redis has their spend',
    sub { counter($id, 's') == 5 * $cost }
    or diag 'Redis spend ', counter($id, 's'), ', expected ', 5 * $cost;
is counter($id, 'sp'), 5 * $cost, '... in the budget period too';
is counter($id, 'p'), 5 * $prompt, '... with their prompt tokens';
is counter($id, 'c'), 5 * $completion, '... and completion tokens';
is counter($id, 'wres'), 0, 'no tokens are held in the rate window';

# counted once, however often the workers poll, and after a restart
sleep(1 * $c->{slow});
is counter($id, 's'), 5 * $cost, 'the spend is counted once'
    or diag 'Redis spend ', counter($id, 's'), ', expected ', 5 * $cost;
is counter($id, 'r'), 5, 'and the requests';

$c->stop($a);
open $fh, '<', "$a->{dir}/state/keys.state" or die "state: $!";
$state = do { local $/; <$fh> };
close $fh;
unlike $state, qr/redis_unsent|redis_apart/,
       'the state file no longer keeps them';
$c->start($a);
sleep(1 * $c->{slow});
is counter($id, 's'), 5 * $cost, 'a restart does not send them again';
is counter($id, 'res'), 0, '... nor reserves anything';

unlike $c->error_log($a), qr/\[(?:alert|crit|emerg)\]/,
       'no alert in the log of A';

# a state file whose updates for Redis are not what the node writes
$c->stop($a);
my $good = $state;
my $n = 0;
for my $bad ('{"script":"reserve","id":1,"keys":1,"tries":0,"args":["x"]}',
             '{"script":"settle","id":1,"keys":1,"tries":0,"args":[1]}',
             '{"script":"settle","id":1,"keys":1,"tries":0,"args":[]}',
             '"settle"')
{
    (my $damaged = $good) =~ s/\}\n\z/,"redis_unsent":[$bad]}\n/;
    open $fh, '>', "$a->{dir}/state/keys.state" or die "state: $!";
    print $fh $damaged;
    close $fh;
    my $rc = system("$c->{binary} -p $a->{dir} -c $a->{dir}/nginx.conf"
                    . ' 2>/dev/null');
    isnt $rc, 0, "A does not start with $bad";
    is count($a, qr/state file "[^"]+" is damaged \(bad "redis_unsent"\)/),
       ++$n, '... it says the state file is damaged';
}

$n = 0;
for my $bad ('{"id":1,"requests":"1","prompt":0,"completion":0,"spend":0}',
             '{"id":99,"requests":1,"prompt":0,"completion":0,"spend":0}',
             '{"id":1,"requests":1}')
{
    (my $damaged = $good) =~ s/\}\n\z/,"redis_apart":[$bad]}\n/;
    open $fh, '>', "$a->{dir}/state/keys.state" or die "state: $!";
    print $fh $damaged;
    close $fh;
    my $rc = system("$c->{binary} -p $a->{dir} -c $a->{dir}/nginx.conf"
                    . ' 2>/dev/null');
    isnt $rc, 0, "A does not start with $bad";
    is count($a, qr/state file "[^"]+" is damaged \(bad "redis_apart"\)/),
       ++$n, '... it says the state file is damaged';
}

done_testing;
