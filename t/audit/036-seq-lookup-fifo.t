# A proof by record number and a page of logs after a record number read
# a few seals to find their segment: a seal replaced by a FIFO must not
# hold the query's thread (opening a FIFO waits for a writer).  The
# halving reads plain seals only: the seal is taken as missing, and the
# segments are read from the first, with the right answer.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use Fcntl ();
use JSON::PP;
use POSIX ();
use Smartflow::Audit;
use Test::More;

my $conf = $ENV{TEST_NGINX_SMARTFLOW_CONF} // Smartflow::Audit::top() . '/conf';

my $gw = Smartflow::Audit->new(name => 'audit-seq-lookup-fifo', workers => 1,
    http => "    smartflow_audit_segment_size 4k;\n",
    server => "        include $conf/smartflow_audit.conf;\n");
$gw->setup->start;

my $json = JSON::PP->new;

my @ids = $gw->chat_ids(40, 'fifo');
is(scalar @ids, 40, '40 receipts');
ok($gw->settle, 'every closed segment sealed');

my (%segof, @seqs);
for my $rec ($gw->records) {
    my ($n) = $rec->[0] =~ /segment-(\d+)\.log$/;
    my ($seq) = $rec->[2] =~ /"seq":(\d+),/;
    $segof{$seq} = $n + 0;
    push @seqs, $seq;
}
my ($open) = sort { $b <=> $a } values %segof;
cmp_ok($open, '>=', 4, "four segments or more ($open)");

# the first seal the halving reads, from 1 to the one before the open one
my $mid = 1 + int(($open - 1 - 1) / 2);
my $sealf = $gw->dir . sprintf('/segment-%08d.seal', $mid);
my $saved = $gw->root . '/seal.saved';
rename $sealf, $saved or die "rename $sealf: $!";
POSIX::mkfifo($sealf, 0644) or die "mkfifo: $!";

my ($seq) = grep { $segof{$_} == 1 } @seqs;

{
    my $r = $gw->get("/api/audit/proof/$seq");
    is($r->{status}, 200, 'a seal that is a FIFO: the proof by number')
        or diag $r->{content};
    my $p = eval { $json->decode($r->{content}) } // {};
    is($p->{seq}, $seq, 'of the record asked for');
    is($p->{segment}, 1, 'in its segment');
}

{
    my $r = $gw->get("/api/vas/logs?after=$seq&limit=2");
    is($r->{status}, 200, 'a seal that is a FIFO: the page');
    my $l = eval { $json->decode($r->{content}) } // {};
    is_deeply([ map { $_->{seq} } @{ $l->{data} // [] } ],
              [ $seq + 1, $seq + 2 ], 'the records after it');
}

# a thread still waiting on the FIFO is let go: a writer comes and goes
if (sysopen my $w, $sealf, Fcntl::O_WRONLY() | Fcntl::O_NONBLOCK()) {
    close $w;
}

unlink $sealf;
rename $saved, $sealf or die "rename $saved: $!";

$gw->stop;

my ($rc, $rep) = $gw->verify;
is($rc, 0, 'the folder verifies') or diag explain $rep;

done_testing;
