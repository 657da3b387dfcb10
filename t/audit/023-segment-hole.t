# A segment log gone from the middle of the folder (not a shipped one:
# those are the first ones, and each has its signed mark): the start
# read it as an empty segment and went on, its records out of the chain
# and the log tree, only an alert about the next segment's first record.
# The start now stops with an [emerg] naming the segment, as it does for
# a first segment gone without its mark.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use Smartflow::Audit;
use Test::More;

my $gw = Smartflow::Audit->new(name => 'audit-segment-hole', workers => 1,
    http => "    smartflow_audit_segment_size 2k;\n");
$gw->setup->start;

my $n = 0;
$gw->chat('hole ' . ++$n) until -e $gw->dir . '/segment-00000004.log'
                                 || $n > 100;
ok($gw->settle, 'sealed');
$gw->stop;

my ($rc) = $gw->verify;
is($rc, 0, 'the folder verifies');

my $hole = $gw->dir . '/segment-00000002.log';
chmod 0644, $hole;
unlink $hole or die "$hole: $!";

ok(!$gw->nginx, 'the start stops');
my $log = do { open my $fh, '<', $gw->root . '/logs/error.log' or die;
               local $/; <$fh> };
like($log, qr/\[emerg\].*smartflow audit: segment 2 is missing/,
     'with an [emerg] naming the segment');
ok(!$gw->up, 'nothing is served');
$gw->stop if $gw->up;

done_testing;
