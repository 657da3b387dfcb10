# RFC 3161 timestamps on seals, from a local time-stamping authority
# (openssl ts -reply behind a small HTTP server, t/lib/Smartflow/Tsa.pm):
# while it is down the queries are spooled and the folder still verifies
# with the timestamps pending; once it is up the spool drains; the
# verifier's verdict on every token, good or altered, is the one of
# "openssl ts -verify".

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use File::Copy ();
use Smartflow::Audit;
use Smartflow::Tsa;
use Test::More;

my $gw = Smartflow::Audit->new(name => 'audit-tsa', workers => 2);
$gw->setup;

my $tsa = Smartflow::Tsa->new(dir => $gw->root . '/tsa');
my $url = $tsa->url;

$gw->write_conf(http => "    smartflow_audit_segment_size 2k;\n"
                      . "    smartflow_audit_tsa $url;\n"
                      . "    smartflow_audit_tsa_timeout 2s;\n"
                      . "    smartflow_audit_tsa_retry 1s;\n");
$gw->start;

sub files { my @f = glob $gw->dir . "/segment-*.$_[0]"; @f }

sub openssl_verify {
    my ($seal, $tsr, $ca) = @_;
    my $out = `openssl ts -verify -data '$seal' -in '$tsr' -CAfile '$ca' 2>&1`;
    return $out =~ /^Verification: OK$/m ? 1 : 0;
}

# the authority is down: the seals wait for their timestamps
$gw->chat("down $_") for 1 .. 7;
ok($gw->settle, 'the closed segments are sealed');
my @seals = files('seal');
cmp_ok(scalar @seals, '>=', 2, 'two seals or more');
is(scalar(files('tsr')), 0, 'no timestamp yet');
is(scalar(files('tsq')), scalar @seals, 'a spooled query per seal');

my ($rc, $rep) = $gw->verify(undef, '--tsa-ca', $tsa->ca);
is($rc, 0, 'the folder verifies meanwhile');
is($rep->{timestamps_pending}, scalar @seals, 'with its timestamps pending');

# up: the spool drains
$tsa->start;
for (1 .. 100) {
    last if !files('tsq') && files('tsr') == @seals;
    select undef, undef, undef, 0.1;
}
is(scalar(files('tsq')), 0, 'the spool is empty');
is(scalar(files('tsr')), scalar @seals, 'a timestamp per seal');

# new seals are stamped at once
my $answered = $tsa->answered;
$gw->chat("up $_") for 1 .. 4;
$gw->settle;
for (1 .. 50) {
    last if files('tsr') == files('seal');
    select undef, undef, undef, 0.1;
}
@seals = files('seal');
cmp_ok(scalar @seals, '>', 2, 'more seals');
is(scalar(files('tsr')), scalar @seals, 'each with its timestamp');
cmp_ok($tsa->answered, '>', $answered, 'from the authority');

($rc, $rep) = $gw->verify(undef, '--tsa-ca', $tsa->ca);
is($rc, 0, 'the folder and its timestamps verify') or diag explain $rep;
is($rep->{timestamped}, scalar @seals, 'every seal timestamped');

for my $seal (@seals) {
    (my $tsr = $seal) =~ s/\.seal\z/.tsr/;
    ok(openssl_verify($seal, $tsr, $tsa->ca),
       "openssl ts -verify agrees on " . ($seal =~ s{.*/}{}r));
}

# altered: both say no
my $other = Smartflow::Tsa->new(dir => $gw->root . '/other-ca', port => 1);
my $n = 0;

sub both_reject {
    my ($what, $edit, $ca) = @_;
    my $dir = $gw->copy_dir($gw->root . '/work/' . ++$n);
    my ($seal, $tsr) = $edit->($dir);
    my ($rc, $rep) = $gw->verify($dir, '--tsa-ca', $ca // $tsa->ca);
    ok($rc == 1 && $rep->{error}{check} eq 'timestamp', "$what: rejected")
        or diag explain $rep;
    is(openssl_verify($seal, $tsr, $ca // $tsa->ca), 0,
       "$what: openssl ts -verify rejects it too");
}

my ($s1, $s2) = map { s{.*/}{}r } @seals[0, 1];
(my $t1 = $s1) =~ s/seal$/tsr/;
(my $t2 = $s2) =~ s/seal$/tsr/;

both_reject('a byte of a timestamp flipped', sub {
    my $d = shift;
    open my $fh, '+<', "$d/$t1" or die $!;
    binmode $fh;
    my $size = -s "$d/$t1";
    seek $fh, $size - 40, 0;
    read $fh, my $c, 1;
    seek $fh, $size - 40, 0;
    print $fh chr(ord($c) ^ 1);
    close $fh;
    return ("$d/$s1", "$d/$t1");
});

both_reject('another seal\'s timestamp', sub {
    my $d = shift;
    File::Copy::copy("$d/$t2", "$d/$t1") or die $!;
    return ("$d/$s1", "$d/$t1");
});

both_reject('a timestamp checked against another CA', sub {
    my $d = shift;
    return ("$d/$s1", "$d/$t1");
}, $other->ca);

$gw->stop;
$tsa->stop;

open my $log, '<', $gw->root . '/logs/error.log' or die $!;
my $text = do { local $/; <$log> };
like($text, qr/smartflow audit: the timestamp of segment \d+ is spooled/,
     'the spooled timestamps are logged');
my @bad = grep { /\[(alert|crit|emerg)\]/ } split /\n/, $text;
is_deeply(\@bad, [], 'no alert in the error log');

done_testing();
