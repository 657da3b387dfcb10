# smartflow-verify against made-up and damaged input: an inclusion proof
# holds only under a seal signed with the gateway's key (the folder's
# seal, or the one the proof carries), so a record made up with a tree of
# its own, or a seal forged where the folder scan never looks (segment 0,
# a nine-digit number), is refused; what a proof shows (its seq, hashes,
# record and seal) must be what it proves; proofs and seals cut short
# anywhere are refused without reading past their end (the SMARTFLOW_ASAN
# run checks that with the verifier built with AddressSanitizer).

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use Digest::SHA qw(sha256_hex);
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

spew($pf, $genuine);
is(run('--keys', $keys, '--proof', $pf), 0,
   'a genuine proof holds alone, under the seal it carries');
is(run('--proof', $pf), 2, 'a proof alone needs the key file');

# the seal the proof carries, its root changed: its HMAC fails
(my $bad = $genuine) =~ s/("seal":\{.*?"segment_root":")(.)/
    $1 . ($2 eq '0' ? '1' : '0')/e;
isnt($bad, $genuine, 'the carried seal altered');
spew($pf, $bad);
is(run('--keys', $keys, '--proof', $pf), 1,
   'a proof whose seal was altered fails');

# what the proof shows must be what it proves
my %shown = (
    'its "record" altered' => sub {
        $_[0] =~ s/("record":\{.*"model":")smartflow-echo/${1}gpt-4o/r },
    'its "seq" changed' => sub { $_[0] =~ s/^\{"seq":2,/{"seq":3,/r },
    'a second "seq" after the first' =>
        sub { $_[0] =~ s/^\{"seq":2,/{"seq":2,"seq":3,/r },
    'its "record_sha256" changed' =>
        sub { $_[0] =~ s/("record_sha256":")(.)/$1 . ($2 eq 'a' ? 'b' : 'a')/er },
    'its "leaf_hash" changed' =>
        sub { $_[0] =~ s/("leaf_hash":")(.)/$1 . ($2 eq 'a' ? 'b' : 'a')/er },
    'no "record" shown' => sub { $_[0] =~ s/,"record":\{.*\}\}$/}/sr },
    'a made-up "record" after the genuine one' =>
        sub { $_[0] =~ s/\}\n?\z/,"record":{"model":"gpt-4o"}}\n/r },
);

for my $what (sort keys %shown) {
    my $t = $shown{$what}->($genuine);
    isnt($t, $genuine, "$what: the proof changed");
    spew($pf, $t);
    is(run('--keys', $keys, '--proof', $pf), 1, "$what: refused alone");
    my ($r) = $gw->verify(undef, '--proof', $pf);
    is($r, 1, "$what: refused against the folder");
}

# the genuine proof of record 2 carrying segment 2's seal
{
    open my $sf, '<', $gw->dir . '/segment-00000002.seal' or die $!;
    chomp(my $other = <$sf>);
    (my $t = $genuine) =~ s/("seal":)\{[^}]*\}/$1$other/;
    isnt($t, $genuine, 'another seal in the proof');
    spew($pf, $t);
    is(run('--keys', $keys, '--proof', $pf), 1,
       'a proof carrying another segment\'s seal fails alone');
    my ($r) = $gw->verify(undef, '--proof', $pf);
    is($r, 1, 'and against the folder');
}

# a record made up, with a one-leaf tree of its own
my $rec = '{"time":"2026-01-01T00:00:00Z","request_id":"'
          . ('ab' x 16) . '","model":"made-up","ts":1,"seq":999,'
          . '"kid":"k1"}';
my $leaf = sha256_hex("\x00" . $rec);
my %made = (seq => 999, index => 0, size => 1, proof => [],
            segment_root => $leaf, record_hex => unpack('H*', $rec));

sub made_proof {
    my ($seg, $seal) = @_;
    my $j = JSON::PP->new->canonical;
    return $j->encode({ %made, segment => $seg }) =~ s/\}\z//r
           . ',"seal":' . $j->encode($seal) . ',"record":' . $rec . "}\n";
}

spew($pf, encode_json({ %made, segment => 1 }));
is(run('--keys', $keys, '--proof', $pf), 1,
   'a made-up proof without a seal fails');

spew($pf, made_proof(1, $proof->{seal}));
is(run('--keys', $keys, '--proof', $pf), 1,
   'a made-up proof carrying a genuine seal of another root fails');

my $forged = { segment => 1, first => 999, count => 1,
               segment_root => $leaf };
spew($pf, made_proof(1, $forged));
is(run('--keys', $keys, '--proof', $pf), 1,
   'a made-up proof carrying an unsigned seal fails');

# a seal forged in the folder where the folder scan does not look
for my $seg (0, 123456789) {
    my $dir = $gw->copy_dir("$work/forged-$seg");
    my $fs = { segment => $seg, first => 999, count => 1,
               segment_root => $leaf };
    spew(sprintf('%s/segment-%08d.seal', $dir, $seg),
         JSON::PP->new->canonical->encode($fs) . "\n");
    spew($pf, made_proof($seg, $fs));

    ($rc) = $gw->verify($dir, '--proof', $pf);
    is($rc, 1, "a made-up proof under a forged seal $seg fails");

    # the genuine proof still holds against that folder
    spew($pf, $genuine);
    ($rc) = $gw->verify($dir, '--proof', $pf);
    is($rc, 0, "the genuine proof holds beside the forged seal $seg");
}

# the genuine proof cut short after each delimiter: never a crash, and
# always refused
my (@crash, @accepted);

for my $at (1 .. length($genuine) - 1) {
    next unless substr($genuine, $at - 1, 1) =~ /[":\[,{]/
                || substr($genuine, $at - 2, 1) eq ':';
    spew($pf, substr($genuine, 0, $at));
    my $r = run('--keys', $keys, '--proof', $pf);
    push @crash, "$at:$r" if $r != 0 && $r != 1;
    push @accepted, $at if $r == 0;
}

is("@crash", '', 'a proof cut short never crashes the verifier');
is("@accepted", '', 'a proof cut short is refused');

# the folder's seal of segment 1 cut short, one line still: refused
my $dir = $gw->copy_dir("$work/cut-seal");
my $sealf = "$dir/segment-00000001.seal";
my $seal = do { open my $fh, '<', $sealf or die; local $/; <$fh> };
chomp $seal;
spew($pf, $genuine);
(@crash, @accepted) = ();

for my $at (1 .. length($seal) - 1) {
    next unless substr($seal, $at - 1, 1) =~ /[":\[,{]/;
    spew($sealf, substr($seal, 0, $at) . "\n");
    my ($r) = $gw->verify($dir, '--proof', $pf);
    push @crash, "$at:$r" if $r != 1;
}

is("@crash", '', 'a proof against a seal cut short fails, never crashes');

done_testing;
