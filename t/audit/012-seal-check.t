# The seal checks the closed segment against what the workers appended,
# from the file's two ends (its size, its first record's number, its
# last record's number and hash): a segment altered while it was open is
# not sealed, with an [alert] naming it, and the later segments are
# sealed as usual.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use Smartflow::Audit;
use Test::More;

# a segment is closed by the first record 3 s after it opened: room for
# the records and the edit to land in it first on a loaded machine
my $gw = Smartflow::Audit->new(name => 'audit-seal-check', workers => 1,
    http => "    smartflow_audit_seal_interval 3s;\n");
$gw->setup->start;

my $dir = $gw->dir;

sub send_some {
    my ($n, $tag) = @_;
    my $ok = 0;
    for my $i (1 .. $n) {
        $ok++ if $gw->chat("$tag $i")->{status} == 200;
    }
    # the buffer is written 100 ms after a record
    select undef, undef, undef, 0.5;
    return $ok;
}

sub seg { sprintf "%s/segment-%08d.%s", $dir, @_ }

sub edit {
    my ($file, $code) = @_;
    open my $fh, '<', $file or die "$file: $!";
    local $/;
    my $text = <$fh>;
    close $fh;
    $text = $code->($text);
    open $fh, '>', $file or die "$file: $!";
    print $fh $text;
    close $fh;
}

sub sealed_after {
    my ($n) = @_;
    for (1 .. 150) {
        return 1 if -e seg($n, 'seal');
        select undef, undef, undef, 0.1;
    }
    return 0;
}

sub error_log {
    open my $fh, '<', $gw->root . '/logs/error.log' or die $!;
    local $/;
    return <$fh>;
}

# segment 1: a line slipped in while it is open
is(send_some(3, 'one'), 3, 'three answers');
ok(-s seg(1, 'log'), 'written to segment 1');
edit(seg(1, 'log'), sub { $_[0] . "{\"forged\":true}\n" });
sleep 4;
send_some(1, 'close one');
select undef, undef, undef, 1;
ok(!-e seg(1, 'seal'), 'segment 1 is not sealed');
my $why = qr/segment-00000001\.log: \d+ bytes, \d+ expected/;
like(error_log(), qr/\[alert\].*sealing segment 1 failed: \S+$why/,
     'the alert names the segment and its size');

# segment 2: its first record's number altered, the size kept
is(send_some(2, 'two'), 2, 'two more answers');
ok(-s seg(2, 'log'), 'written to segment 2');
edit(seg(2, 'log'), sub {
    my $t = shift;
    $t =~ s/"seq":(\d)/'"seq":' . ($1 == 9 ? 8 : $1 + 1)/e;
    $t;
});
sleep 4;
send_some(1, 'close two');
select undef, undef, undef, 1;
ok(!-e seg(2, 'seal'), 'segment 2 is not sealed');
$why = qr/segment-00000002\.log: its last record is 7 from 6, 3 records/;
like(error_log(), qr/\[alert\].*sealing segment 2 failed: \S+$why/,
     'the alert says which records it holds');

# segment 3: untouched, sealed
is(send_some(2, 'three'), 2, 'answers for segment 3');
sleep 4;
send_some(1, 'close three');
ok(sealed_after(3), 'segment 3 is sealed');

# the folder itself shows the forged line
my ($rc, $rep) = $gw->verify;
isnt($rc, 0, 'the verifier rejects the folder');
is($rep->{error}{file} =~ /segment-00000001\.log$/ ? 1 : 0, 1,
   'at segment 1') or diag explain $rep;

$gw->stop;
done_testing;
