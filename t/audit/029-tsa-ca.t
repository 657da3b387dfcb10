# smartflow_audit_tsa_ca FILE: the CAs (PEM) a time-stamping authority's
# answer must be signed up to before it is kept as a seal's timestamp
# (the gateway checked the signature by the certificate the answer
# carried, against no CA of the operator's).  An answer signed by an
# authority of another CA is refused: the query stays spooled, with a
# line saying why; with the authority's own CA it is kept, and the
# folder verifies with smartflow-verify --tsa-ca, and not with the other
# CA.  A file that is not there, or holds no certificate, stops nginx -t
# with a line that says so.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use Smartflow::Audit;
use Smartflow::Tsa;
use Test::More;

$ENV{TEST_NGINX_TSA_PORT} ||= 1989;

my $gw = Smartflow::Audit->new(name => 'audit-tsa-ca', workers => 1);
$gw->setup;

my $tsa = Smartflow::Tsa->new(dir => $gw->root . '/tsa');
# another authority's CA, never started
my $other = Smartflow::Tsa->new(dir => $gw->root . '/other', port => 1);
my $url = $tsa->url;

sub conf {
    my $ca = shift;
    $gw->write_conf(http => "    smartflow_audit_segment_size 2k;\n"
                          . "    smartflow_audit_tsa $url;\n"
                          . "    smartflow_audit_tsa_ca $ca;\n"
                          . "    smartflow_audit_tsa_timeout 2s;\n"
                          . "    smartflow_audit_tsa_retry 500ms;\n");
}

sub files { my @f = sort glob $gw->dir . "/segment-*.$_[0]"; @f }

sub slurp {
    open my $fh, '<', $_[0] or return '';
    local $/;
    return scalar <$fh>;
}

# nginx -t on a configuration: (success, what it printed)
sub test_conf {
    my $ca = shift;
    conf($ca);
    my $cmd = join ' ', map { "'$_'" } Smartflow::Audit::binary(), '-t',
        '-p', $gw->root . '/', '-c', $gw->root . '/conf/nginx.conf';
    my $out = `$cmd 2>&1`;
    return ($? == 0, $out);
}

my ($ok, $out) = test_conf($gw->root . '/no-such-ca.pem');
ok(!$ok, 'nginx -t fails with a CA file that is not there');
like($out,
     qr/cannot read smartflow_audit_tsa_ca "[^"]*no-such-ca\.pem" \(2: No/,
     'and says so');

open my $fh, '>', $gw->root . '/not-a-ca.pem' or die $!;
print $fh "not a certificate\n";
close $fh;
($ok, $out) = test_conf($gw->root . '/not-a-ca.pem');
ok(!$ok, 'nginx -t fails with a file that holds no certificate');
like($out, qr/smartflow_audit_tsa_ca "[^"]*not-a-ca\.pem" holds no cert/,
     'and says so');

($ok, $out) = test_conf($tsa->ca);
ok($ok, 'nginx -t takes a PEM CA') or diag $out;

# the wrong CA: nothing kept
conf($other->ca);
$tsa->start;
$gw->start;

$gw->chat("stamp $_") for 1 .. 7;
ok($gw->settle, 'the closed segments are sealed');
my @seals = files('seal');
cmp_ok(scalar @seals, '>=', 2, 'two seals or more');

for (1 .. 50) {
    last if $tsa->answered > @seals;
    select undef, undef, undef, 0.1;
}
cmp_ok($tsa->answered, '>', scalar @seals, 'the authority answered');
is(scalar(files('tsr')), 0, 'no answer of another CA is kept');
is(scalar(files('tsq')), scalar @seals, 'the queries stay spooled');
my $why = 'timestamp of segment \d+ is spooled for a retry: the signature '
        . 'of the answer of \S+ does not hold up to a CA of '
        . 'smartflow_audit_tsa_ca \S*other/ca\.pem';
like(slurp($gw->root . '/logs/error.log'), qr/$why/,
     'the error log says why');

# the authority's CA, after a reload: the spool drains
conf($tsa->ca);
kill 'HUP', $gw->master_pid;
for (1 .. 100) {
    last if !files('tsq') && files('tsr') == @seals;
    select undef, undef, undef, 0.1;
}
is(scalar(files('tsq')), 0, 'with the right CA the spool drains');
is(scalar(files('tsr')), scalar @seals, 'a timestamp per seal');

$gw->stop;
$tsa->stop;

my ($rc, $rep) = $gw->verify(undef, '--tsa-ca', $tsa->ca);
is($rc, 0, 'the folder verifies with the authority\'s CA')
    or diag explain $rep;
is($rep->{timestamped}, scalar @seals, 'every seal timestamped');

($rc) = $gw->verify(undef, '--tsa-ca', $other->ca);
is($rc, 1, 'and not with another CA');

unlike(slurp($gw->root . '/logs/error.log'), qr/\[(alert|crit|emerg)\]/,
       'no [alert]');

done_testing;
