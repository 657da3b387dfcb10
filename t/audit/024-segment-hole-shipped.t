# A shipped segment gone from the middle of the folder, with its signed
# mark and its seal: what earlier builds left when a seal failed (the
# segment stayed, the later shipped ones were removed all the same).
# The start refused every hole, so a gateway upgraded on such a folder
# no longer started.  Now the mark and the seal stand for the segment,
# as they do for the first ones: the chain goes on from its seal, and
# only a hole whose mark or seal does not hold stops the start.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use Digest::SHA ();
use File::Path ();
use JSON::PP ();
use Smartflow::Audit;
use Smartflow::S3;
use Test::More;

my $gw = Smartflow::Audit->new(name => 'audit-segment-hole-shipped',
                               workers => 1);
$gw->setup;

my $s3 = Smartflow::S3->new(dir => $gw->root . '/s3');
my ($url, $id, $region) = ($s3->url, $s3->id, $s3->region);

my $cred = $gw->root . '/s3.credentials';
open my $fh, '>', $cred or die $!;
print $fh "$id $s3->{secret}\n";
close $fh;

my $conf = $ENV{TEST_NGINX_SMARTFLOW_CONF}
           // Smartflow::Audit::top() . '/conf';
$gw->{server} = "        include $conf/smartflow_audit.conf;\n";
$gw->write_conf(http => <<"_HTTP_");
    smartflow_audit_segment_size 2k;
    smartflow_audit_s3 $url;
    smartflow_audit_s3_bucket audit-bucket;
    smartflow_audit_s3_region $region;
    smartflow_audit_s3_credentials $cred;
    smartflow_audit_s3_interval 100ms;
    smartflow_audit_s3_backoff_max 100ms;
    smartflow_audit_s3_timeout 5s;
_HTTP_

my $dir = $gw->dir;
sub seg { sprintf '%s/segment-%08d.%s', $dir, @_ }

sub slurp {
    open my $f, '<', $_[0] or die "$_[0]: $!";
    local $/;
    return scalar <$f>;
}

sub spit {
    my ($file, $text) = @_;
    chmod 0644, $file;
    open my $f, '>', $file or die "$file: $!";
    print $f $text;
    close $f;
}

sub wait_for {
    my $cond = shift;
    for (1 .. 100) {
        return 1 if $cond->();
        select undef, undef, undef, 0.1;
    }
    return 0;
}

$s3->start;
$gw->start;

# segment 2's seal fails; segment 3 is sealed, shipped and marked
my $n = 0;
$gw->chat('hole ' . ++$n) until -e seg(2, 'log') || $n > 50;
File::Path::make_path(seg(2, 'seal.tmp'));
$gw->chat('hole ' . ++$n) until -e seg(4, 'log') || $n > 100;
ok(wait_for(sub { -e seg(3, 'shipped') }), 'segment 3 is shipped');
ok(wait_for(sub { !-e seg(1, 'log') }), 'segment 1 is removed');
$gw->stop;

# the folder as earlier builds left it: segment 3 removed, its leaves
# kept, while segment 2, unsealed, stayed
my @lines = split /\n/, slurp(seg(3, 'log'));
my $rec = JSON::PP->new->decode($lines[0]);
my $leaves = '';
for my $line (@lines) {
    my $r = JSON::PP->new->decode($line);
    $leaves .= "$r->{seq} " . ($r->{request_id} // '-') . ' '
               . Digest::SHA::sha256_hex("\0" . $line) . "\n";
}
spit(seg(3, 'leaves'), $leaves);
chmod 0444, seg(3, 'leaves');
chmod 0644, seg(3, 'log');
unlink seg(3, 'log') or die $!;
File::Path::remove_tree(seg(2, 'seal.tmp'));
ok(-e seg(2, 'log') && !-e seg(2, 'seal') && -e seg(4, 'log'),
   'segment 2 unsealed, 3 gone, 4 here');

# a seal the mark does not list: refused
my $seal = slurp(seg(3, 'seal'));
spit(seg(3, 'seal'), $seal =~ s/"sealed_at":(\d)/'"sealed_at":'
                                               . ($1 eq '1' ? 2 : 1)/er);
ok(!$gw->nginx, 'a hole whose seal is not the marked one: no start');
like(slurp($gw->root . '/logs/error.log'),
     qr/\[emerg\].*segment 3 is missing and its mark lists another seal/,
     'with an [emerg] naming the segment');
ok(!$gw->up, 'nothing is served');
$gw->stop if $gw->up;
spit(seg(3, 'seal'), $seal);
chmod 0444, seg(3, 'seal');

# a mark that does not verify: refused
my $mark = slurp(seg(3, 'shipped'));
spit(seg(3, 'shipped'), $mark =~ s/audit-bucket/other-bucket/r);
ok(!$gw->nginx, 'a hole whose mark does not hold: no start');
like(slurp($gw->root . '/logs/error.log'),
     qr/\[emerg\].*segment 3 is missing and its mark \S+ does not hold/,
     'with an [emerg] naming the segment');
$gw->stop if $gw->up;
spit(seg(3, 'shipped'), $mark);
chmod 0444, seg(3, 'shipped');

# segment 2 not as segment 3's seal follows it (its last record cut
# off): refused (a start seals what is before the hole before it reads
# the hole, so this runs on a copy of the folder)
system('cp', '-a', $dir, "$dir.kept") == 0 or die;
my $two = slurp(seg(2, 'log'));
spit(seg(2, 'log'), $two =~ s/[^\n]*\n\z//r);
ok(!$gw->nginx, 'a hole whose seal does not follow: no start');
like(slurp($gw->root . '/logs/error.log'),
     qr/\[emerg\].*segment 3 is missing and its seal \S+ does not follow /,
     'with an [emerg] naming the segment');
$gw->stop if $gw->up;
File::Path::remove_tree($dir);
rename "$dir.kept", $dir or die $!;
is(slurp(seg(2, 'log')), $two, 'segment 2 is whole again');

# with both: the gateway starts (segment 2 was sealed by the first
# start tried) and goes on from segment 3's seal
ok($gw->nginx, 'the gateway starts on the folder');
ok($gw->up, 'and serves');
my $log = slurp($gw->root . '/logs/error.log');
like($log, qr/sealed segment 2 left open by a stop/, 'segment 2 is sealed');
like($log, qr/segment 3 is shipped and removed, the chain goes on from /,
     'the start says it goes on over segment 3');
unlike($log, qr/starts at record/, 'the chain is whole');

my $r = $gw->get("/api/audit/proof/$rec->{request_id}", key => undef);
is($r->{status}, 200, 'a record of segment 3 has its proof');
my $pf = eval { JSON::PP->new->decode($r->{content}) } // {};
is($pf->{seq}, $rec->{seq}, 'the proof names the record');

$gw->chat('after ' . $_) for 1 .. 3;
ok(wait_for(sub { -e seg(2, 'shipped') && !-e seg(2, 'log') }),
   'segment 2 is shipped and removed');
$gw->settle;
$gw->stop;
$s3->stop;

my ($rc, $rep) = $gw->verify;
is($rc, 0, 'the folder verifies') or diag explain $rep;
is($rep->{log_size}, $n + 3, 'every record is in the log');

done_testing;
