# An answer of the time-stamping authority that is granted, for the
# query, but whose signature does not hold (a bad byte on the way, a
# proxy answering for the authority) was kept as the seal's timestamp,
# read-only for good: smartflow-verify --tsa-ca then refused the folder
# for ever.  The gateway now checks the answer's signature by the
# certificate it carries, for time-stamping, keeps the query spooled
# instead, and stamps again once the authority answers right.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use Smartflow::Audit;
use Smartflow::Tsa;
use Test::More;

my $gw = Smartflow::Audit->new(name => 'audit-tsa-reply', workers => 1);
$gw->setup;

my $tsa = Smartflow::Tsa->new(dir => $gw->root . '/tsa');
my $url = $tsa->url;

$gw->write_conf(http => "    smartflow_audit_segment_size 2k;\n"
                      . "    smartflow_audit_tsa $url;\n"
                      . "    smartflow_audit_tsa_timeout 2s;\n"
                      . "    smartflow_audit_tsa_retry 500ms;\n");

sub files { my @f = sort glob $gw->dir . "/segment-*.$_[0]"; @f }

$tsa->corrupt(1);
$tsa->start;
$gw->start;

$gw->chat("stamp $_") for 1 .. 7;
ok($gw->settle, 'the closed segments are sealed');
my @seals = files('seal');
cmp_ok(scalar @seals, '>=', 2, 'two seals or more');

# the answers come, and are not kept
for (1 .. 50) {
    last if $tsa->answered > @seals;
    select undef, undef, undef, 0.1;
}
cmp_ok($tsa->answered, '>', scalar @seals, 'the authority answered');
is(scalar(files('tsr')), 0, 'no answer with a bad signature is kept');
is(scalar(files('tsq')), scalar @seals, 'the queries stay spooled');

my $log = do { open my $fh, '<', $gw->root . '/logs/error.log' or die;
               local $/; <$fh> };
like($log, qr/timestamp of segment \d+ is spooled.*signature/,
     'the error log says why');

# the authority answers right again: stamped, and the folder verifies
$tsa->corrupt(0);
for (1 .. 100) {
    last if !files('tsq') && files('tsr') == @seals;
    select undef, undef, undef, 0.1;
}
is(scalar(files('tsq')), 0, 'the spool drains');
is(scalar(files('tsr')), scalar @seals, 'a timestamp per seal');

$gw->stop;
$tsa->stop;

my ($rc, $rep) = $gw->verify(undef, '--tsa-ca', $tsa->ca);
is($rc, 0, 'the folder and its timestamps verify') or diag explain $rep;
is($rep->{timestamped}, scalar @seals, 'every seal timestamped');

done_testing;
