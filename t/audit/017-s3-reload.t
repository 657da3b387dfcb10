# A reload while a shipping round runs: the old worker's thread went on
# through the whole backlog while the new worker's first round shipped
# the same segments again (each object twice in the bucket, as new
# versions under the lock), and the old worker lived on until its round
# was over.  A round now stops after the segment in hand once its worker
# is told to quit, and a round does not start while another process's
# runs: each object is put once.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use JSON::PP;
use Smartflow::Audit;
use Smartflow::S3;
use Test::More;

my $gw = Smartflow::Audit->new(name => 'audit-s3-reload', workers => 1);
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
    smartflow_audit_s3_interval 200ms;
    smartflow_audit_s3_backoff_max 200ms;
    smartflow_audit_s3_timeout 10s;
    smartflow_audit_s3_keep on;
_HTTP_

sub files { my @f = sort glob $gw->dir . "/segment-*.$_[0]"; @f }

# a backlog: the endpoint refuses while the segments are sealed
$s3->fail(503);
$s3->start;
$gw->start;

$gw->chat("backlog $_") for 1 .. 24;
ok($gw->settle, 'the closed segments are sealed');
my $nseals = files('seal');
cmp_ok($nseals, '>=', 6, 'a backlog of segments');

# slow answers, then the reload once the round is under way
$s3->delay(0.3);
$s3->fail(0);

my $started = 0;
for (1 .. 100) {
    $started = grep { $_->[0] == 200 } $s3->requests and last;
    select undef, undef, undef, 0.05;
}
ok($started, 'the round is under way');

my @old = $gw->worker_pids;
ok($gw->nginx('-s', 'reload'), 'reloaded');

my $drained = 0;
for (1 .. 300) {
    $drained = files('shipped') == $nseals and last;
    select undef, undef, undef, 0.1;
}
ok($drained, 'every sealed segment is shipped');

my $gone = 0;
for (1 .. 100) {
    $gone = !grep { kill 0, $_ } @old and last;
    select undef, undef, undef, 0.1;
}
ok($gone, 'the old worker is gone');

my (%put, @twice);
for my $r ($s3->requests) {
    next unless $r->[0] == 200;
    push @twice, $r->[1] if $put{ $r->[1] }++;
}
is("@twice", '', 'no object was put twice');
is(scalar(keys %put), 2 * $nseals, 'each segment and seal is in the bucket');

$gw->stop;
$s3->stop;

my ($rc) = $gw->verify;
is($rc, 0, 'the folder verifies');

done_testing;
