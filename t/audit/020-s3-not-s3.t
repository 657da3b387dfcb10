# An endpoint that answers 200 to a PUT but is not S3 (another server at
# the URL, a proxy's page): the gateway took the 200 for a stored object,
# marked the segment shipped and removed it from the folder, and the
# records were nowhere.  A PUT is confirmed only with the ETag S3 answers
# with (and the checksum it echoes, when it does).

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use Smartflow::Audit;
use Smartflow::S3;
use Test::More;

my $gw = Smartflow::Audit->new(name => 'audit-s3-not-s3', workers => 1);
$gw->setup;

my $s3 = Smartflow::S3->new(dir => $gw->root . '/s3');
my ($url, $id, $region) = ($s3->url, $s3->id, $s3->region);

my $cred = $gw->root . '/s3.credentials';
open my $fh, '>', $cred or die $!;
print $fh "$id $s3->{secret}\n";
close $fh;

# the local copies go once shipped (smartflow_audit_s3_keep off)
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

sub files { my @f = sort glob $gw->dir . "/segment-*.$_[0]"; @f }

$s3->not_s3(1);
$s3->start;
$gw->start;

$gw->chat("not s3 $_") for 1 .. 10;
ok($gw->settle, 'the closed segments are sealed');
my $nseals = files('seal');
cmp_ok($nseals, '>=', 2, 'two seals or more');

my $answered = 0;
for (1 .. 100) {
    $answered = grep { $_->[2] eq 'NotS3' } $s3->requests;
    last if $answered >= 5;
    select undef, undef, undef, 0.1;
}
cmp_ok($answered, '>=', 5, 'the endpoint answered 200 five times');
is(scalar(files('shipped')), 0, 'nothing is marked shipped');
cmp_ok(scalar(files('log')), '>', $nseals, 'every segment is still here');

my $log = do { open my $fh, '<', $gw->root . '/logs/error.log' or die;
               local $/; <$fh> };
like($log, qr/shipping to S3 failed: PUT \S+ answered 200 without an ETag/,
     'the error log says why');

# S3 at the URL again: shipped, then removed
$s3->not_s3(0);

my $drained = 0;
for (1 .. 100) {
    $drained = files('shipped') == $nseals and last;
    select undef, undef, undef, 0.1;
}
ok($drained, 'every sealed segment is shipped');

for my $seal (files('seal')) {
    my $key = 'audit-bucket/' . ($seal =~ s{.*/}{}r =~ s/\.seal\z/.log/r);
    ok(defined $s3->object($key), "$key is in the bucket");
}

$gw->stop;
$s3->stop;

my ($rc) = $gw->verify;
is($rc, 0, 'the folder verifies');

done_testing;
