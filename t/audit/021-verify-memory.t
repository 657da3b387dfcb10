# smartflow-verify reads a trail a segment at a time: the leaf hashes it
# keeps are those of the segment in hand (its seal's Merkle root), the
# log tree goes on as a frontier.  It kept every record's leaf hash of
# the whole trail, 32 bytes a record read, up to the end: a trail of a
# billion records needed 32 GB.  Checked here under an address-space
# limit (prlimit) found for a trail of one segment, with a trail of many
# segments of the same size.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use Digest::SHA qw(sha256 sha256_hex hmac_sha256_hex);
use File::Path ();
use Smartflow::Audit;
use Test::More;

# the plain build: a sanitizer's shadow memory is not what is measured
my $verify = $ENV{SMARTFLOW_VERIFY}
             // Smartflow::Audit::top() . '/build/smartflow-verify';
my $root = ($ENV{TEST_NGINX_SERVROOT} // Smartflow::Audit::top()
            . '/t/servroot') . '/audit-verify-memory';

File::Path::remove_tree($root);
File::Path::make_path($root);

my $key = pack 'H*', 'a1' x 32;
my $keys = "$root/audit.keys";
open my $fh, '>', $keys or die $!;
print $fh "k1 " . ('a1' x 32) . " - -\n";
close $fh;

# a trail of open segments, each of $per records, signed with the key
sub trail {
    my ($dir, $segments, $per) = @_;
    File::Path::make_path($dir);
    my ($seq, $prev) = (0, '0' x 64);
    for my $s (1 .. $segments) {
        open my $out, '>', sprintf('%s/segment-%08d.log', $dir, $s) or die;
        my $text = '';
        for (1 .. $per) {
            $seq++;
            my $signed = qq/{"pad":"x","ts":1700000000000,"seq":$seq,/
                         . qq/"kid":"k1","prev":"$prev"/;
            my $line = $signed . ',"hmac":"'
                       . hmac_sha256_hex($signed, $key) . '"}';
            $prev = sha256_hex("\x00" . $line);
            $text .= "$line\n";
        }
        print $out $text;
        close $out;
    }
}

sub run_limited {
    my ($kb, $dir) = @_;
    system("prlimit --as=" . ($kb * 1024) . " '$verify' --keys '$keys'"
           . " '$dir' >/dev/null 2>&1");
    return $? >> 8;
}

my $per = 4000;
trail("$root/one", 1, $per);
trail("$root/many", 100, $per);

is(run_limited(4 * 1024 * 1024, "$root/one"), 0, 'one segment verifies');
is(run_limited(4 * 1024 * 1024, "$root/many"), 0,
   'a hundred segments verify');

# the least address space the one-segment trail needs, to 256k
my ($lo, $hi) = (1024, 1024 * 1024);
while ($hi - $lo > 256) {
    my $mid = int(($lo + $hi) / 2);
    if (run_limited($mid, "$root/one") == 0) { $hi = $mid } else { $lo = $mid }
}
diag("one segment of $per records verifies in ${hi}k");

# 400000 records: 12.8 MB of leaf hashes for the whole trail
is(run_limited($hi + 4096, "$root/many"), 0,
   'a hundred segments verify in the room of one, and 4 MB');

File::Path::remove_tree($root);

done_testing;
