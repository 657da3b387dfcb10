# A seal's timestamp query is spooled (segment-N.tsq) before the
# authority is asked, and the retry of the spool runs in another thread:
# with a slow authority both asked for the same seal, two timestamps were
# made and segment-N.tsr written twice, the second after the first had
# been shipped.  Whoever stamps a seal now holds its spooled query: one
# query a seal, one timestamp, the spool empty afterwards.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use Smartflow::Audit;
use Smartflow::Tsa;
use Test::More;

$ENV{TEST_NGINX_TSA_PORT} ||= 1989;

my $gw = Smartflow::Audit->new(name => 'audit-tsa-one-stamp', workers => 1);
$gw->setup;

my $tsa = Smartflow::Tsa->new(dir => $gw->root . '/tsa');
my $url = $tsa->url;

# the retry comes round several times while one answer is on its way
$gw->write_conf(http => "    smartflow_audit_segment_size 2k;\n"
                      . "    smartflow_audit_tsa $url;\n"
                      . "    smartflow_audit_tsa_timeout 10s;\n"
                      . "    smartflow_audit_tsa_retry 200ms;\n");

sub files { my @f = sort glob $gw->dir . "/segment-*.$_[0]"; @f }

$tsa->delay(1);
$tsa->start;
$gw->start;

$gw->chat("stamp $_") for 1 .. 5;
ok($gw->settle, 'the closed segments are sealed');
my @seals = files('seal');
cmp_ok(scalar @seals, '>=', 1, 'a seal or more');

for (1 .. 150) {
    last if !files('tsq') && files('tsr') == @seals;
    select undef, undef, undef, 0.1;
}
# what a second query would still be asking
select undef, undef, undef, 2.5;

is(scalar(files('tsr')), scalar @seals, 'a timestamp per seal');
is(scalar(files('tsq')), 0, 'the spool is empty');
is($tsa->answered, scalar @seals, 'one query a seal');

$gw->stop;
$tsa->stop;

my ($rc, $rep) = $gw->verify(undef, '--tsa-ca', $tsa->ca);
is($rc, 0, 'the folder and its timestamps verify') or diag explain $rep;

done_testing;
