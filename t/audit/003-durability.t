# Durability: no record is lost across "nginx -s reload", "nginx -s quit"
# and a restart, a worker killed with SIGKILL, or the whole server killed;
# what a crash leaves (a closed segment without its seal, a record cut
# short) is repaired at the next start.  Every answered request must be in
# the folder, and the folder must verify, after each step.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use Smartflow::Audit;
use Test::More;

my $gw = Smartflow::Audit->new(name => 'audit-durability', workers => 2,
    http => "    smartflow_audit_segment_size 4k;\n"
          . "    smartflow_audit_seal_interval 1s;\n");
$gw->setup->start;

my $answered = 0;

sub send_some {
    my ($n, $tag) = @_;
    my @kids;
    # a few clients at once, so both workers append
    for my $c (1 .. 3) {
        my $pid = fork // die "fork: $!";
        if ($pid == 0) {
            my $ok = 0;
            for my $i (1 .. $n) {
                my $r = $gw->chat("$tag $c $i", $i % 4 ? () : (stream => 1));
                $ok++ if $r->{status} == 200;
            }
            exit $ok;
        }
        push @kids, $pid;
    }
    for (@kids) { waitpid $_, 0; $answered += $? >> 8 }
}

sub check {
    my ($what) = @_;
    $gw->settle;
    my ($rc, $rep) = $gw->verify;
    is($rc, 0, "$what: the folder verifies") or diag explain $rep;
    is($rep->{records}, $answered, "$what: $answered records");
}

send_some(10, 'first');
is($answered, 30, 'thirty answers');
check('at first');

# the next record after the interval closes the segment
send_some(1, 'early');
$gw->settle;
my @seals = glob $gw->dir . '/*.seal';
# on a slow machine 'early' itself may have closed the segment, and
# 'late' then opens the next one: of two records more than the interval
# apart, the second always closes a segment
sleep 2;
send_some(1, 'late');
sleep 2;
send_some(1, 'later');
$gw->settle;
# the seal's fsync may take seconds on a busy disk: up to 15 s
my @s;
for (1 .. 150) {
    last if (@s = glob $gw->dir . '/*.seal') > @seals;
    select undef, undef, undef, 0.1;
}
cmp_ok(scalar @s, '>', scalar @seals,
       'a segment older than the seal interval is sealed');

# reload while requests flow
{
    my @old = sort $gw->worker_pids;
    my $pid = fork // die;
    if ($pid == 0) { select undef, undef, undef, 0.1; $gw->nginx('-s', 'reload'); exit 0 }
    send_some(10, 'reload');
    waitpid $pid, 0;
    for (1 .. 100) {
        my @new = sort $gw->worker_pids;
        last if @new == 2 && !grep { my $o = $_; grep { $_ == $o } @new } @old;
        select undef, undef, undef, 0.05;
    }
    send_some(5, 'after reload');
    check('reload');
}

# the key rotated by a reload: records after it are signed with the new
# key, and each key is valid only for its own time
{
    my $t = time;
    $gw->write_keys("k1 " . ('a1' x 32) . " - $t\n"
                  . "k2 " . ('b2' x 32) . " $t -\n");
    sleep 1;
    $gw->nginx('-s', 'reload');
    select undef, undef, undef, 1;
    $gw->wait_workers(2);
    send_some(3, 'rotated');
    check('key rotation');
    my @kids = map { $_->[2] =~ /"kid":"(\w+)"/ ? $1 : '' } $gw->records;
    is($kids[-1], 'k2', 'the newest record is signed with the new key');
    is($kids[0], 'k1', 'the first with the old one');

    # the old key claimed for all time: the records signed with the new
    # key still hold; a verifier told k2 began later rejects them
    $gw->write_keys("k1 " . ('a1' x 32) . " - $t\n"
                  . "k2 " . ('b2' x 32) . " " . ($t + 3600) . " -\n");
    my ($rc, $rep) = $gw->verify;
    ok($rc == 1 && $rep->{error}{check} eq 'key_validity',
       'a record signed before its key became valid is rejected');
    $gw->write_keys("k1 " . ('a1' x 32) . " - $t\n"
                  . "k2 " . ('b2' x 32) . " $t -\n");
}

# a worker killed while others serve
{
    my ($victim) = $gw->worker_pids;
    kill 'KILL', $victim;
    $gw->wait_workers(2);
    send_some(5, 'after kill');
    check('a worker killed with SIGKILL');
}

# quit, then start again: the chain goes on from the folder
$gw->stop('QUIT');
check('quit');
$gw->start;
send_some(5, 'restart');
check('restart');

# the whole server killed
{
    my @pids = ($gw->master_pid, $gw->worker_pids);
    kill 'KILL', @pids;
    for (1 .. 100) { last unless grep { kill 0, $_ } @pids; select undef, undef, undef, 0.05 }
    unlink $gw->root . '/logs/nginx.pid';
    $gw->start;
    send_some(3, 'after crash');
    check('the server killed with SIGKILL');
}

# what a crash can leave: a closed segment without its seal, a record
# cut short at the end of the open one
$gw->stop('QUIT');
{
    my @seals = sort glob $gw->dir . '/segment-*.seal';
    chmod 0644, $seals[1];
    unlink $seals[1] or die "unlink $seals[1]: $!";

    my @segs = sort glob $gw->dir . '/segment-*.log';
    chmod 0644, $segs[-1];
    open my $fh, '>>', $segs[-1] or die $!;
    print $fh '{"time":"2026-01-01T00:00:00+00:00","request_id":"torn';
    close $fh;

    my ($rc) = $gw->verify;
    is($rc, 1, 'the damaged folder does not verify');

    $gw->start;
    ok(-e $seals[1], 'the unsealed segment is sealed at start');

    open my $log, '<', $gw->root . '/logs/error.log' or die $!;
    my $text = do { local $/; <$log> };
    like($text, qr/smartflow audit: \S+ ends in a record cut short .* cut off/,
         'the record cut short is reported and cut off');
    like($text, qr/smartflow audit: sealed segment \d+ left open by a stop/,
         'the late seal is reported');
    send_some(2, 'repaired');
    check('repaired');
}

$gw->stop('QUIT');

# a stop right after a segment was closed: the open segment is empty, and
# the chain goes on from the sealed one
{
    my $g = Smartflow::Audit->new(name => 'audit-empty-open', workers => 1,
        http => "    smartflow_audit_segment_size 1k;\n");
    $g->setup->start;
    my %big = (headers => { 'X-Request-Id' => 'r' x 120 });
    $g->chat("one", %big);
    $g->chat("two", %big);
    $g->settle;
    $g->stop('QUIT');
    my @segs = sort glob $g->dir . '/segment-*.log';
    is(-s $segs[-1], 0, 'the open segment is empty at the stop');
    $g->start;
    $g->chat("three", %big);
    $g->settle;
    my ($rc, $rep) = $g->verify;
    is($rc, 0, 'after a restart on an empty segment the folder verifies')
        or diag explain $rep;
    is($rep->{records}, 3, 'three records');
    $g->stop('QUIT');
}

open my $log, '<', $gw->root . '/logs/error.log' or die $!;
my @bad = grep { /\[(alert|crit|emerg)\] .*smartflow/ && !/cut short/ } <$log>;
is_deeply(\@bad, [], 'no audit alert in the error log');

done_testing();
