# A receipts index file rewritten at its own length (the same size, other
# entries) is found out by the sum "indexed" keeps of each file's
# entries: the proof that reads it logs a warning and reads the segments
# (the answer stays right), and the next seal makes the index again,
# after which a proof reads one segment once more.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use JSON::PP;
use Smartflow::Audit;
use Test::More;

my $conf = $ENV{TEST_NGINX_SMARTFLOW_CONF} // Smartflow::Audit::top() . '/conf';

my $gw = Smartflow::Audit->new(name => 'audit-proof-index-rewrite',
    workers => 2,
    main => "error_log logs/debug.log debug;\n",
    http => "    smartflow_audit_segment_size 4k;\n",
    server => "        include $conf/smartflow_audit.conf;\n");
$gw->setup->start;

my $json = JSON::PP->new;
my $debug = $gw->root . '/logs/debug.log';
my $rdir = $gw->dir . '/receipts';

sub proof {
    my ($id) = @_;
    truncate $debug, 0;
    my $r = $gw->get("/api/audit/proof/$id", key => undef);
    select undef, undef, undef, 0.1;
    open my $fh, '<', $debug or die "$debug: $!";
    my @lines = <$fh>;
    close $fh;
    my @read = map { /proof reads \S*segment-(\d+)\.log/ ? $1 + 0 : () }
               @lines;
    return ($r, \@lines, @read);
}

my @ids = $gw->chat_ids(30, 'rewrite');
is(scalar @ids, 30, '30 receipts');
ok($gw->settle_index, 'every closed segment sealed');
my %seg = $gw->id_segments;
my ($last) = sort { $b <=> $a } values %seg;
my ($id) = grep { $seg{$_} > 1 && $seg{$_} < $last - 1 } @ids;
ok($id, 'a sealed id after the first segment') or BAIL_OUT('no id');

{
    my ($r, $lines, @read) = proof($id);
    is_deeply(\@read, [ $seg{$id} ], 'before: only its segment is read');
}

# every entry of its file names a segment the folder lacks, its size kept
my $f = "$rdir/" . substr($id, 0, 2);
my $size = -s $f;
{
    open my $fh, '+<:raw', $f or die "$f: $!";
    local $/;
    my $all = <$fh>;
    for (my $o = 0; $o + 20 <= length $all; $o += 20) {
        substr($all, $o + 16, 4) = pack 'N', 99999;
    }
    seek $fh, 0, 0;
    print $fh $all;
    close $fh;
}
is(-s $f, $size, 'the file keeps its size');

{
    my ($r, $lines, @read) = proof($id);
    is($r->{status}, 200, 'rewritten: the proof') or diag $r->{content};
    my $p = eval { $json->decode($r->{content}) } // {};
    is($p->{record}{request_id}, $id, 'rewritten: the record');
    is($p->{segment}, $seg{$id}, 'rewritten: its segment');
    is($read[0], 1, 'rewritten: the segments read from the first');
    ok((grep { /\[warn\].*smartflow audit: the receipts index file \S+\/receipts\/\Q@{[substr $id, 0, 2]}\E does not match its sum in "indexed"/ } @$lines),
       'the file not matching its sum is logged');
}

# the next seal makes the index again
$gw->chat_ids(12, 'after');
ok($gw->settle_index, 'sealed again');
ok(!-e "$rdir/damaged", 'the damage mark is gone');

{
    my ($r, $lines, @read) = proof($id);
    is($r->{status}, 200, 'made again: the proof');
    is_deeply(\@read, [ $seg{$id} ], 'made again: only its segment is read')
        or diag "read: @read";
    ok(!(grep { /\[(?:warn|error)\]/ } @$lines), 'nothing logged')
        or diag grep { /\[(?:warn|error)\]/ } @$lines;
}

$gw->stop;

my ($rc, $rep) = $gw->verify;
is($rc, 0, 'the folder verifies') or diag explain $rep;

done_testing;
