# The flush policy: records are chained at once but written to the open
# segment from a buffer in shared memory (smartflow_audit_buffer), when it
# is full, smartflow_audit_flush after a worker added to it, before the
# log and proof queries read the folder, and when a worker exits.  Nothing
# is lost across a reload, a quit or a worker killed with SIGKILL (the
# buffer outlives it and its replacement writes it); the whole server
# killed loses exactly the records still unwritten, which the status
# reports.  smartflow_audit_buffer 0 writes every record as it is made.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use JSON::PP;
use Smartflow::Audit;
use Test::More;

my $conf = $ENV{TEST_NGINX_SMARTFLOW_CONF} // Smartflow::Audit::top() . '/conf';

# one worker: a second one starting late would write the buffer as it
# starts (what a worker started after a crash must do), before the checks
# that it is still unwritten
my $gw = Smartflow::Audit->new(name => 'audit-flush', workers => 1,
    server => "        include $conf/smartflow_audit.conf;\n",
    http => "    smartflow_audit_buffer 64k;\n"
          . "    smartflow_audit_flush 1h;\n");
$gw->setup->start;

my $answered = 0;

sub send_some {
    my ($n, $tag) = @_;
    for my $i (1 .. $n) {
        $answered++ if $gw->chat("$tag $i")->{status} == 200;
    }
    select undef, undef, undef, 0.3;
}

sub status {
    my $r = $gw->get('/api/audit/status');
    return $r->{status} == 200 ? JSON::PP->new->decode($r->{content}) : {};
}

sub on_disk { scalar(() = $gw->records) }

# what must be written may take a moment on a busy machine (a worker
# starting): up to 5 s, never more
sub check {
    my ($what) = @_;
    $gw->settle;
    my ($rc, $rep);
    for (1 .. 50) {
        ($rc, $rep) = $gw->verify;
        last if $rc == 0 && $rep->{records} == $answered;
        select undef, undef, undef, 0.1;
    }
    is($rc, 0, "$what: the folder verifies") or diag explain $rep;
    is($rep->{records}, $answered, "$what: all $answered records written");
}

# buffered: chained, counted, not yet in the file
send_some(5, 'first');
my $st = status();
is($st->{records}, 5, 'five records in the chain');
is($st->{backlog}{unwritten_records}, 5, 'all five still in the buffer');
is(on_disk(), 0, 'none in the segment yet');

# a reload: nothing stays in the buffer (the new worker writes it as it
# starts, the old one as it exits)
{
    my @old = $gw->worker_pids;
    $gw->nginx('-s', 'reload');
    for (1 .. 100) {
        last unless grep { kill 0, $_ } @old;
        select undef, undef, undef, 0.05;
    }
    $gw->wait_workers(1);
    check('after a reload');
}

# a worker killed with SIGKILL: the buffer is in shared memory, and the
# worker started in its place writes it
send_some(4, 'before the kill');
is(status()->{backlog}{unwritten_records}, 4, 'four records buffered');
{
    my ($victim) = $gw->worker_pids;
    kill 'KILL', $victim;
    for (1 .. 100) {
        last if !kill(0, $victim) && $gw->worker_pids == 1;
        select undef, undef, undef, 0.05;
    }
    select undef, undef, undef, 0.3;
    check('a worker killed with SIGKILL');
}

# the log query writes the buffer first, so it lists every record
send_some(3, 'queried');
my $logs = $gw->get('/api/vas/logs?limit=1000');
is($logs->{status}, 200, 'the log query answers');
is(scalar @{ JSON::PP->new->decode($logs->{content})->{data} }, $answered,
   'and lists the buffered records too');

# a quit writes it, the restart goes on
send_some(2, 'before quit');
ok($gw->stop('QUIT'), 'nginx quits');
check('after a quit');
$gw->start;

# the whole server killed: what was unwritten is lost, no more, and the
# chain goes on from what was written
send_some(3, 'written');
$gw->get('/api/vas/logs?limit=1');
send_some(4, 'lost');
my $lost = status()->{backlog}{unwritten_records};
is($lost, 4, 'four records unwritten before the crash');
{
    my @pids = ($gw->master_pid, $gw->worker_pids);
    kill 'KILL', @pids;
    for (1 .. 100) {
        last unless grep { kill 0, $_ } @pids;
        select undef, undef, undef, 0.05;
    }
    unlink $gw->root . '/logs/nginx.pid';
}
$gw->start;
$answered -= $lost;
check('the server killed: only the unwritten records are lost');
send_some(2, 'after the crash');
$gw->get('/api/vas/logs?limit=1');
check('after the crash, the chain goes on');
$gw->stop('QUIT');

# no buffer: every record is in the segment when its request is done
my $g0 = Smartflow::Audit->new(name => 'audit-flush-0', workers => 1,
    server => "        include $conf/smartflow_audit.conf;\n",
    http => "    smartflow_audit_buffer 0;\n    smartflow_audit_flush 1h;\n");
$g0->setup->start;
$g0->chat("unbuffered $_") for 1 .. 3;
select undef, undef, undef, 0.3;
is(scalar(() = $g0->records), 3, 'smartflow_audit_buffer 0: written at once');
$g0->stop('QUIT');

# a record larger than the buffer: what the buffer holds first, then it
my $g2 = Smartflow::Audit->new(name => 'audit-flush-2', workers => 1,
    server => "        include $conf/smartflow_audit.conf;\n",
    http => "    smartflow_audit_buffer 4k;\n    smartflow_audit_flush 1h;\n"
          . "    smartflow_audit_bodies 64k;\n");
$g2->setup->start;
$g2->chat("small $_") for 1 .. 2;
$g2->chat('large ' . ('x' x 9000));
$g2->chat("small again $_") for 1 .. 2;
select undef, undef, undef, 0.3;
my @recs = $g2->records;
is(scalar @recs, 3, 'a record larger than the buffer is written with '
   . 'the ones before it, in order');
$g2->get('/api/vas/logs?limit=1');
my ($rc2, $rep2) = $g2->verify;
ok($rc2 == 0 && $rep2->{records} == 5, 'and all five verify')
    or diag explain $rep2;
$g2->stop('QUIT');

# the time bound: written within smartflow_audit_flush with no traffic
my $g1 = Smartflow::Audit->new(name => 'audit-flush-1', workers => 1,
    server => "        include $conf/smartflow_audit.conf;\n",
    http => "    smartflow_audit_flush 300ms;\n");
$g1->setup->start;
$g1->chat("timed $_") for 1 .. 3;
my $n;
for (1 .. 40) {
    $n = () = $g1->records;
    last if $n == 3;
    select undef, undef, undef, 0.05;
}
is($n, 3, 'smartflow_audit_flush: written after the interval, no traffic');
$g1->stop('QUIT');

open my $log, '<', $gw->root . '/logs/error.log' or die $!;
my @bad = grep { /\[(alert|crit|emerg)\] .*smartflow/ && !/cut short/ } <$log>;
is_deeply(\@bad, [], 'no audit alert in the error log');

done_testing();
