# A page of GET /api/vas/logs after a record number starts at the
# segment the seals place the next record in.  When that segment is gone
# (shipped and removed) there is no record in it to check the seals by,
# and a segment before it may have stayed (a hole, as earlier builds left
# when a seal failed): the folder is then read from the first segment,
# so that a seal that lies, or is damaged, never makes a page skip the
# records of the segment that stayed.  A proof by number of such a record
# is found in its own segment.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use JSON::PP;
use Smartflow::Audit;
use Test::More;

my $conf = $ENV{TEST_NGINX_SMARTFLOW_CONF} // Smartflow::Audit::top() . '/conf';

my $gw = Smartflow::Audit->new(name => 'audit-logs-after-hole', workers => 2,
    http => "    smartflow_audit_segment_size 4k;\n",
    server => "        include $conf/smartflow_audit.conf;\n");
$gw->setup->start;

my $json = JSON::PP->new;

my @ids = $gw->chat_ids(60, 'hole');
is(scalar @ids, 60, '60 receipts');
ok($gw->settle, 'every closed segment sealed');

# every record's number, in folder order, with its segment
my (@order, %segof);
for my $rec ($gw->records) {
    my ($n) = $rec->[0] =~ /segment-(\d+)\.log$/;
    my ($seq) = $rec->[2] =~ /"seq":(\d+),/;
    push @order, [ $seq, $n + 0 ];
    $segof{$seq} = $n + 0;
}
my ($last) = sort { $b <=> $a } values %segof;
cmp_ok($last, '>=', 8, "eight segments or more ($last)");

# a sealed segment of three records or more, the next one sealed too
my ($t) = grep { my $s = $_; (grep { $_->[1] == $s } @order) >= 3 }
          2 .. $last - 2;
ok($t, "a segment to keep ($t), the next one to remove")
    or BAIL_OUT('no such segment');
my $h = $t + 1;
my ($first) = map { $_->[0] } grep { $_->[1] == $t } @order;

sub seal_file { $gw->dir . sprintf('/segment-%08d.seal', $_[0]) }

sub rewrite {
    my ($seg, $cb) = @_;
    my $f = seal_file($seg);
    chmod 0644, $f;
    open my $fh, '<', $f or die "$f: $!";
    my $s = do { local $/; <$fh> };
    close $fh;
    my $new = $cb->($s);
    open $fh, '>', $f or die "$f: $!";
    print $fh $new;
    close $fh;
    return $s;
}

# the hole: segment h removed, its seal kept; segment t stays
my $hf = $gw->dir . sprintf('/segment-%08d.log', $h);
ok(unlink($hf), "segment $h removed, its seal kept");

# the seals lie: t's says it holds one record, h's that it holds t's
my $orig_t = rewrite($t, sub {
    my $s = shift;
    $s =~ s/"count":\d+,/"count":1,/ or die "seal: $s";
    $s });
my $orig_h = rewrite($h, sub {
    my $s = shift;
    $s =~ s/"first":\d+,"count":\d+,/"first":$first,"count":100000,/
        or die "seal: $s";
    $s });

# a page after t's first record, as a read of the whole folder gives it
my @want = map { $_->[0] }
           grep { $_->[0] > $first && $_->[1] != $h } @order;
@want = @want[0 .. 2];

{
    my $r = $gw->get("/api/vas/logs?after=$first&limit=3");
    is($r->{status}, 200, 'a page after a record of the segment that stayed');
    my $l = eval { $json->decode($r->{content}) } // {};
    is_deeply([ map { $_->{seq} } @{ $l->{data} // [] } ], \@want,
              'the records after it, from its own segment')
        or diag "segment $t, removed $h, got: "
                . join ' ', map { $_->{seq} } @{ $l->{data} // [] };
    is($l->{next_after}, $want[-1], 'next_after');
    ok($l->{has_more}, 'has_more');
}

{
    my $seq = $first + 1;
    my $r = $gw->get("/api/audit/proof/$seq");
    # the seal of t counts one record: the others are not sealed by it
    like($r->{status}, qr/^20[02]$/, 'the proof of the record after it');
    my $p = eval { $json->decode($r->{content}) } // {};
    is($p->{seq}, $seq, 'of the record asked for');
    is($p->{segment}, $t, 'in its own segment');
}

# the seals told the truth again: the same page
rewrite($t, sub { $orig_t });
rewrite($h, sub { $orig_h });
chmod 0444, seal_file($t), seal_file($h);

{
    my $r = $gw->get("/api/vas/logs?after=$first&limit=3");
    my $l = eval { $json->decode($r->{content}) } // {};
    is_deeply([ map { $_->{seq} } @{ $l->{data} // [] } ], \@want,
              'with the seals as sealed: the same page');
}

# after a record of the removed segment: the records of the next one
{
    my ($in_h) = map { $_->[0] } grep { $_->[1] == $h } @order;
    my @next = map { $_->[0] }
               grep { $_->[0] > $in_h && $_->[1] != $h } @order;
    my $r = $gw->get("/api/vas/logs?after=$in_h&limit=2");
    is($r->{status}, 200, 'a page after a record of the removed segment');
    my $l = eval { $json->decode($r->{content}) } // {};
    is_deeply([ map { $_->{seq} } @{ $l->{data} // [] } ],
              [ @next[0, 1] ], 'the records of the segments after it');
}

$gw->stop;

done_testing;
