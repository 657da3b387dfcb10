# smartflow-verify against damaged input: proofs and seals cut short
# anywhere are refused without reading past their end (the SMARTFLOW_ASAN
# run checks that with the verifier built with AddressSanitizer).

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use JSON::PP;
use Smartflow::Audit;
use Test::More;

my $conf = $ENV{TEST_NGINX_SMARTFLOW_CONF} // Smartflow::Audit::top() . '/conf';

my $gw = Smartflow::Audit->new(name => 'audit-verify-hostile', workers => 1,
    http => "    smartflow_audit_segment_size 2k;\n",
    server => "        include $conf/smartflow_audit.conf;\n");
$gw->setup->start;

my @st = map { $gw->chat("hostile $_")->{status} } 1 .. 8;
is_deeply(\@st, [ (200) x 8 ], 'eight answers');
ok($gw->settle, 'the closed segments are sealed');

my $p = $gw->get('/api/audit/proof/2', key => $Smartflow::Audit::MasterKey);
is($p->{status}, 200, 'the proof of record 2');
$gw->stop;

my $genuine = $p->{content};
my $proof = decode_json($genuine);
is($proof->{segment}, 1, 'record 2 is in segment 1');

my ($rc) = $gw->verify;
is($rc, 0, 'the folder verifies');

my $work = $gw->root . '/work';
mkdir $work;

sub spew { open my $fh, '>', $_[0] or die "$_[0]: $!"; print $fh $_[1] }

# the verifier on its own: its exit code (128 + a signal that ended it)
sub run {
    my %env = Smartflow::Audit::verifier_env();
    local @ENV{keys %env} = values %env;
    my $cmd = join ' ', map { "'$_'" } Smartflow::Audit::verifier(), @_;
    system("$cmd >/dev/null 2>&1");
    return ($? & 127) ? 128 + ($? & 127) : $? >> 8;
}

my $keys = $gw->keys_file;
my $pf = "$work/proof.json";

# the genuine proof cut short after each delimiter: never a crash
my @crash;

for my $at (1 .. length($genuine) - 1) {
    next unless substr($genuine, $at - 1, 1) =~ /[":\[,{]/
                || substr($genuine, $at - 2, 1) eq ':';
    spew($pf, substr($genuine, 0, $at));
    my $r = run('--keys', $keys, '--proof', $pf);
    push @crash, "$at:$r" if $r != 0 && $r != 1;
}

is("@crash", '', 'a proof cut short never crashes the verifier');

# the folder's seal of segment 1 cut short, one line still: refused
my $dir = $gw->copy_dir("$work/cut-seal");
my $sealf = "$dir/segment-00000001.seal";
my $seal = do { open my $fh, '<', $sealf or die; local $/; <$fh> };
chomp $seal;
spew($pf, $genuine);
@crash = ();

for my $at (1 .. length($seal) - 1) {
    next unless substr($seal, $at - 1, 1) =~ /[":\[,{]/;
    spew($sealf, substr($seal, 0, $at) . "\n");
    my ($r) = $gw->verify($dir, '--proof', $pf);
    push @crash, "$at:$r" if $r != 1;
}

is("@crash", '', 'a proof against a seal cut short fails, never crashes');

done_testing;
