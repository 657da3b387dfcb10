# Write-once: with "smartflow_audit_immutable on" and the privilege to do
# it (workers running as root here), sealed segments and seals get the
# immutable attribute (chattr +i) and the seal says so; without the
# privilege (workers as nobody) they are read-only, and the seal says that.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use JSON::PP;
use Smartflow::Audit;
use Test::More;

plan skip_all => 'needs root' if $> != 0;
plan skip_all => 'needs lsattr' if system('lsattr -d / >/dev/null 2>&1') != 0;

sub sealed_as {
    my ($gw) = @_;
    $gw->chat("record $_") for 1 .. 3;
    $gw->settle;
    my ($seal) = sort glob $gw->dir . '/segment-*.seal';
    open my $fh, '<', $seal or die "no seal: $!";
    my $s = JSON::PP->new->decode(scalar <$fh>);
    (my $log = $seal) =~ s/\.seal\z/.log/;
    my $attr = `lsattr '$log' 2>/dev/null`;
    return ($s->{protection}, $attr =~ /^\S*i\S*\s/ ? 1 : 0,
            (stat $log)[2] & 0777);
}

for my $case ([ root => 'immutable', 1 ], [ undef, 'read-only', 0 ]) {
    my ($user, $want, $imm) = @$case;
    my $gw = Smartflow::Audit->new(name => 'audit-immutable', workers => 1,
        user => $user,
        http => "    smartflow_audit_segment_size 2k;\n"
              . "    smartflow_audit_immutable on;\n");
    $gw->setup->start;

    my ($prot, $i, $mode) = sealed_as($gw);
    my $who = $user ? 'workers as root' : 'workers as nobody';
    is($prot, $want, "$who: the seal says $want");
    is($i, $imm, "$who: the segment is " . ($imm ? '' : 'not ') . 'immutable');
    is($mode, 0444, "$who: and read-only");

    if ($imm) {
        my ($seg) = sort glob $gw->dir . '/segment-*.log';
        my $opened = open(my $fh, '>>', $seg);
        ok(!$opened, "$who: not even root can append");
        close $fh if $opened;
    }

    my ($rc) = $gw->verify;
    is($rc, 0, "$who: the folder verifies");
    $gw->stop;
}

done_testing();
