# A damaged receipts index never answers 404 for a record the folder
# holds: an index file removed, cut short, replaced by a symlink (to a
# FIFO, which must not hang the query) or naming a segment that does not
# hold the id, or "indexed" naming a segment the folder lacks or counting
# more entries than a file can hold, makes the proof read the segments,
# and the next seal makes the index again, after which a proof reads one
# segment once more.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use JSON::PP;
use POSIX ();
use Smartflow::Audit;
use Test::More;

my $conf = $ENV{TEST_NGINX_SMARTFLOW_CONF} // Smartflow::Audit::top() . '/conf';

my $gw = Smartflow::Audit->new(name => 'audit-proof-index-damage',
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

my @ids = $gw->chat_ids(40, 'damage');
is(scalar @ids, 40, '40 receipts');
ok($gw->settle_index, 'every closed segment sealed');
my %seg = $gw->id_segments;
my ($last) = sort { $b <=> $a } values %seg;

# sealed ids, one an index file
my (%by, @pick);
for my $id (@ids) {
    next if $seg{$id} >= $last - 1 || $by{substr $id, 0, 2}++;
    push @pick, $id;
}
cmp_ok(scalar @pick, '>=', 4, 'four sealed ids in four index files');

my ($removed, $cut, $linked, $wrong) = @pick;

unlink "$rdir/" . substr($removed, 0, 2) or die $!;
truncate "$rdir/" . substr($cut, 0, 2), 0 or die $!;

my $fifo = $gw->root . '/fifo';
POSIX::mkfifo($fifo, 0644) or die "mkfifo: $!";
unlink "$rdir/" . substr($linked, 0, 2) or die $!;
symlink $fifo, "$rdir/" . substr($linked, 0, 2) or die $!;

# every entry of the file names a segment the folder lacks, its size kept
{
    my $f = "$rdir/" . substr($wrong, 0, 2);
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

for ([ removed => $removed ], [ 'cut short' => $cut ],
     [ 'a symlink to a FIFO' => $linked ], [ 'naming another' => $wrong ])
{
    my ($what, $id) = @$_;
    my ($r, $lines, @read) = proof($id);
    is($r->{status}, 200, "index file $what: the proof")
        or diag $r->{content};
    my $p = eval { $json->decode($r->{content}) } // {};
    is($p->{record}{request_id}, $id, "index file $what: the record");
    is($p->{segment}, $seg{$id}, "index file $what: its segment");
    is($read[0], 1, "index file $what: the segments read from the first");
    if ($what eq 'naming another') {
        ok((grep { /\[warn\].*smartflow audit: the receipts index names segment 99999 for $id/ } @$lines),
           'the index naming a segment without the id is logged');
    }
}

# the next seal makes the index again
$gw->chat_ids(12, 'after');
ok($gw->settle, 'sealed again');
my $again = "$rdir/" . substr($linked, 0, 2);
ok(-f $again && !-l $again, 'the symlink replaced');

for my $id ($removed, $cut, $linked, $wrong) {
    my ($r, $lines, @read) = proof($id);
    is($r->{status}, 200, 'made again: the proof');
    is_deeply(\@read, [ $seg{$id} ], 'made again: only its segment is read')
        or diag "read: @read";
    ok(!(grep { /\[(?:warn|error)\]/ } @$lines), 'nothing logged');
}

# "indexed" past the folder's segments: made again, not trusted
{
    my $f = "$rdir/indexed";
    open my $fh, '<', $f or die "$f: $!";
    my $m = <$fh>;
    close $fh;
    $m =~ s/^\d+/99999/ or die "indexed: $m";
    unlink $f;
    open $fh, '>', $f or die "$f: $!";
    print $fh $m;
    close $fh;
}

# before the next seal: a record of the open segment, which the index
# does not hold yet, is found there, not hidden by "indexed"
{
    my $id;
    for (1 .. 20) {
        ($id) = $gw->chat_ids(1, 'open');
        select undef, undef, undef, 0.3;
        my %now = $gw->id_segments;
        last if $now{$id} && !-e $gw->dir
                    . sprintf('/segment-%08d.seal', $now{$id});
        undef $id;
    }
    ok($id, 'a record in the open segment') or last;
    my ($r, $lines) = proof($id);
    is($r->{status}, 202, 'indexed past the folder: its proof, unsealed')
        or diag $r->{content};
    my $p = eval { $json->decode($r->{content}) } // {};
    is($p->{record}{request_id}, $id, 'of the record asked for');
    ok((grep { /\[warn\].*smartflow audit: the receipts index says segment 99999 is indexed, which the folder lacks/ } @$lines),
       'the number past the folder is logged');
}

my @late = $gw->chat_ids(20, 'late');
ok($gw->settle, 'sealed after "indexed" was damaged');
%seg = $gw->id_segments;
($last) = sort { $b <=> $a } values %seg;
my ($late) = grep { $seg{$_} < $last } @late;
ok($late, 'a sealed record after the damage');
{
    my ($r, $lines, @read) = proof($late);
    is($r->{status}, 200, 'indexed past the folder: the proof')
        or diag $r->{content};
    is_deeply(\@read, [ $seg{$late} ], 'indexed again: only its segment')
        or diag "read: @read";
}

# a count in "indexed" more than a file can hold: made again, not trusted
{
    my $f = "$rdir/indexed";
    open my $fh, '<', $f or die "$f: $!";
    my @m = split / /, scalar <$fh>;
    close $fh;
    $m[1 + hex substr($late, 0, 2)] = '922337203685477580';
    unlink $f;
    open $fh, '>', $f or die "$f: $!";
    print $fh join ' ', @m;
    close $fh;

    my ($r, $lines, @read) = proof($late);
    is($r->{status}, 200, 'a count past any file: the proof')
        or diag $r->{content};
    is($read[0], 1, 'a count past any file: the segments read');
}

$gw->chat_ids(12, 'huge');
ok($gw->settle, 'sealed after a count was damaged');
{
    open my $fh, '<', "$rdir/indexed" or die "indexed: $!";
    my @m = split / /, scalar <$fh>;
    close $fh;
    my $b = hex substr($late, 0, 2);
    is($m[1 + $b], (-s "$rdir/" . substr($late, 0, 2)) / 20,
       'the count made again from the segments');
    my ($r, $lines, @read) = proof($late);
    is_deeply(\@read, [ $seg{$late} ], 'made again: only its segment')
        or diag "read: @read";
}

$gw->stop;

my ($rc, $rep) = $gw->verify;
is($rc, 0, 'the folder verifies') or diag explain $rep;

done_testing;
