# A segment part shipped: its log confirmed, its seal refused.  Every
# round put the log again until the seal went through, each time a new
# version locked in the bucket for the whole retention.  What S3 has
# confirmed of a segment is now kept in segment-N.shipping until the
# segment is marked shipped, and an object confirmed with the same
# SHA-256 is not put again.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use Smartflow::Audit;
use Smartflow::S3;
use Test::More;

my $gw = Smartflow::Audit->new(name => 'audit-s3-partial', workers => 1);
$gw->setup;

my $s3 = Smartflow::S3->new(dir => $gw->root . '/s3');
my ($url, $id, $region) = ($s3->url, $s3->id, $s3->region);

my $cred = $gw->root . '/s3.credentials';
open my $fh, '>', $cred or die $!;
print $fh "$id $s3->{secret}\n";
close $fh;

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

# the seals refused, the rest taken
$s3->fail(503, '\.seal$');
$s3->start;
$gw->start;

$gw->chat("partial $_") for 1 .. 10;
ok($gw->settle, 'the closed segments are sealed');
my $nseals = files('seal');
cmp_ok($nseals, '>=', 2, 'two seals or more');

# several rounds go by, each refused at the first seal
my $refused = 0;
for (1 .. 100) {
    $refused = grep { $_->[2] eq 'SlowDown' } $s3->requests;
    last if $refused >= 5;
    select undef, undef, undef, 0.1;
}
cmp_ok($refused, '>=', 5, 'five rounds refused');
is(scalar(files('shipped')), 0, 'nothing marked shipped');

$s3->fail(0);

my $drained = 0;
for (1 .. 100) {
    $drained = files('shipped') == $nseals and last;
    select undef, undef, undef, 0.1;
}
ok($drained, 'every sealed segment is shipped');
is(scalar(files('shipping')), 0, 'no shipping progress left behind');

my (%put, @twice);
for my $r ($s3->requests) {
    next unless $r->[0] == 200;
    push @twice, $r->[1] if $put{ $r->[1] }++;
}
is("@twice", '', 'no object was put twice');
is(scalar(grep { /\.log$/ } keys %put), $nseals, 'each segment once');
is(scalar(grep { /\.seal$/ } keys %put), $nseals, 'each seal once');

$gw->stop;
$s3->stop;

my ($rc) = $gw->verify;
is($rc, 0, 'the folder verifies');

done_testing;
