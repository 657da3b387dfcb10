# A proof by record number, and a page of GET /api/vas/logs after a
# record number, find their segment from the seals ("first" and "count",
# by halving) instead of reading the folder from its first segment: the
# one segment that holds the record is read, with a few seals.  A number
# past the last record reads nothing.  A seal that places a record in the
# wrong segment never gives a wrong answer: the segment is checked, and
# the folder is read from the start, with a warning.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use JSON::PP;
use POSIX ();
use Smartflow::Audit;
use Test::More;

my $conf = $ENV{TEST_NGINX_SMARTFLOW_CONF} // Smartflow::Audit::top() . '/conf';

my $gw = Smartflow::Audit->new(name => 'audit-seq-lookup', workers => 2,
    main => "error_log logs/debug.log debug;\n",
    http => "    smartflow_audit_segment_size 4k;\n",
    server => "        include $conf/smartflow_audit.conf;\n");
$gw->setup->start;

my $json = JSON::PP->new;
my $debug = $gw->root . '/logs/debug.log';

# the answer, the segments and the seals the query read, the log lines
sub query {
    my ($path) = @_;
    truncate $debug, 0;
    my $r = $gw->get($path);
    select undef, undef, undef, 0.1;
    open my $fh, '<', $debug or die "$debug: $!";
    my @lines = <$fh>;
    close $fh;
    my @logs = map { /(?:proof|query) reads \S*segment-(\d+)\.log/
                     ? $1 + 0 : () } @lines;
    my @seals = map { /(?:proof|query) reads \S*segment-(\d+)\.seal/
                      ? $1 + 0 : () } @lines;
    return ($r, \@logs, \@seals, \@lines);
}

my @ids = $gw->chat_ids(60, 'seq');
is(scalar @ids, 60, '60 receipts');
ok($gw->settle_index, 'every closed segment sealed');

# a record in the open segment, if it has none
my ($open) = reverse sort { $a <=> $b }
             map { /segment-(\d+)\.log$/ ? $1 + 0 : () }
             glob $gw->dir . '/segment-*.log';
$gw->chat_ids(1, 'open')
    unless -s $gw->dir . sprintf('/segment-%08d.log', $open);
select undef, undef, undef, 0.3;

# every record's number and segment, from the folder
my (%segof, @seqs);
for my $rec ($gw->records) {
    my ($n) = $rec->[0] =~ /segment-(\d+)\.log$/;
    my ($seq) = $rec->[2] =~ /"seq":(\d+),/;
    $segof{$seq} = $n + 0;
    push @seqs, $seq;
}
my ($last) = sort { $b <=> $a } values %segof;
cmp_ok($last, '>=', 10, "ten segments or more ($last)");
my $bound = 1 + int(log($last) / log(2) + 1);

my %pick;
for my $seq (@seqs) {
    $pick{first} //= $seq if $segof{$seq} == 1;
    $pick{middle} //= $seq if $segof{$seq} == int(($last + 1) / 2) + 1;
    $pick{sealed} //= $seq if $segof{$seq} == $last - 1;
    $pick{open} //= $seq if $segof{$seq} == $last;
}

for my $which (qw(first middle sealed open)) {
    my $seq = $pick{$which};
    ok($seq, "a record in the $which segment") or next;
    my ($r, $logs, $seals) = query("/api/audit/proof/$seq");
    my $want = $which eq 'open' ? 202 : 200;
    is($r->{status}, $want, "by number, $which segment: $want")
        or diag $r->{content};
    my $p = eval { $json->decode($r->{content}) } // {};
    is($p->{seq}, $seq, "$which: the record's number");
    is($p->{segment}, $segof{$seq}, "$which: its segment");
    is_deeply($logs, [ $segof{$seq} ], "$which: only its segment is read")
        or diag "read: @$logs";
    cmp_ok(scalar @$seals, '<=', $bound, "$which: at most $bound seals read")
        or diag "seals: @$seals";
}

# past the last record: nothing read
{
    my ($r, $logs, $seals) = query('/api/audit/proof/999999');
    is($r->{status}, 404, 'a number past the last: 404');
    is(eval { $json->decode($r->{content})->{error}{code} } // '',
       'record_not_found', 'in the OpenAI format');
    is(scalar @$logs + scalar @$seals, 0, 'no file read for it');
}

# a page after a record in the middle: from its segment on
my $after = $pick{middle};
{
    my ($r, $logs, $seals) = query("/api/vas/logs?after=$after&limit=3");
    is($r->{status}, 200, 'a page after a record in the middle');
    my $l = eval { $json->decode($r->{content}) } // {};
    is_deeply([ map { $_->{seq} } @{ $l->{data} // [] } ],
              [ $after + 1 .. $after + 3 ], 'the three records after it');
    is($l->{next_after}, $after + 3, 'next_after');
    ok($l->{has_more}, 'has_more');
    is($logs->[0], $segof{$after + 1}, 'read from the segment of the next')
        or diag "read: @$logs";
    cmp_ok(scalar @$logs, '<=', 2, 'one segment read, or two')
        or diag "read: @$logs";
    cmp_ok(scalar @$seals, '<=', $bound, "at most $bound seals read");
}

{
    my $top = $seqs[-1];
    my ($r, $logs, $seals) = query("/api/vas/logs?after=$top");
    is($r->{status}, 200, 'a page after the last record');
    my $l = eval { $json->decode($r->{content}) } // {};
    is_deeply($l->{data}, [], 'is empty');
    ok(!$l->{has_more}, 'and the last');
    is(scalar @$logs + scalar @$seals, 0, 'no file read for it');
}

# a seal that lies: the probe's first seal claims the last record of the
# segment before it
my $mid = 1 + int(($last - 1 - 1) / 2);
my ($target) = grep { $segof{$_} == $mid - 1 } reverse @seqs;
my $sealf = $gw->dir . sprintf('/segment-%08d.seal', $mid);
open my $sfh, '<', $sealf or die "$sealf: $!";
my $orig = do { local $/; <$sfh> };
close $sfh;
(my $lie = $orig) =~ s/"first":\d+,"count":\d+,/"first":$target,"count":1,/
    or die "seal: $orig";
chmod 0644, $sealf;
open $sfh, '>', $sealf or die "$sealf: $!";
print $sfh $lie;
close $sfh;

{
    my ($r, $logs, $seals, $lines) = query("/api/audit/proof/$target");
    is($r->{status}, 200, 'a seal that lies: the proof by number');
    my $p = eval { $json->decode($r->{content}) } // {};
    is($p->{seq}, $target, 'of the record asked for');
    is($p->{segment}, $mid - 1, 'in its own segment');
    ok((grep { /\[warn\].*smartflow audit: the seals place record $target in segment $mid, which does not hold it/ }
        @$lines), 'the seals placing it wrong are logged');
}

{
    my $a = $target - 1;
    my ($r, $logs, $seals, $lines) = query("/api/vas/logs?after=$a&limit=2");
    is($r->{status}, 200, 'a seal that lies: the page');
    my $l = eval { $json->decode($r->{content}) } // {};
    is_deeply([ map { $_->{seq} } @{ $l->{data} // [] } ],
              [ $target, $target + 1 ], 'starts at the record after');
    is($logs->[-1], $mid, 'read up to the page') or diag "read: @$logs";
    ok((grep { /\[warn\].*smartflow audit: the seals place record $target in segment $mid, which starts at/ }
        @$lines), 'the seals placing it wrong are logged');
}

open $sfh, '>', $sealf or die "$sealf: $!";
print $sfh $orig;
close $sfh;
chmod 0444, $sealf;

$gw->stop;

my ($rc, $rep) = $gw->verify;
is($rc, 0, 'the folder verifies') or diag explain $rep;

done_testing;
