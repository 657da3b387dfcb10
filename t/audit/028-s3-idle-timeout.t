# smartflow_audit_s3_timeout bounds the time with no bytes moving, not the
# upload: a segment larger than what the link carries within the timeout
# is shipped over a slow link whose bytes keep moving (once the whole
# upload was cut off at the timeout and tried again forever), and an
# upload whose bytes stop moving is still cut off, with an error_log line
# saying so, and shipped once the endpoint takes bytes again.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use Smartflow::Audit;
use Smartflow::S3;
use Test::More;

$ENV{TEST_NGINX_S3_PORT} ||= 3820;

my $gw = Smartflow::Audit->new(name => 'audit-s3-idle', workers => 1);
$gw->setup;

my $s3 = Smartflow::S3->new(dir => $gw->root . '/s3');
my $cred = $gw->root . '/s3.credentials';
open my $fh, '>', $cred or die $!;
print $fh $s3->id . " $s3->{secret}\n";
close $fh;

# 60 kB a second: a segment of more than 120 kB needs more than the 2s
my $rate = 60_000;

$gw->write_conf(http => <<"_HTTP_");
    smartflow_audit_segment_size 300k;
    smartflow_audit_bodies 64k;
    smartflow_audit_s3 ${\ $s3->url};
    smartflow_audit_s3_bucket audit-bucket;
    smartflow_audit_s3_prefix gw1;
    smartflow_audit_s3_region ${\ $s3->region};
    smartflow_audit_s3_credentials $cred;
    smartflow_audit_s3_interval 200ms;
    smartflow_audit_s3_backoff_max 400ms;
    smartflow_audit_s3_timeout 2s;
    smartflow_audit_s3_keep on;
_HTTP_

my $dir = $gw->dir;
my $errlog = $gw->root . '/logs/error.log';
sub seg { sprintf '%s/segment-%08d.%s', $dir, @_ }

sub slurp {
    open my $f, '<', $_[0] or return undef;
    binmode $f;
    local $/;
    return scalar <$f>;
}

sub wait_for {
    my ($cond, $secs) = @_;
    for (1 .. ($secs // 30) * 10) {
        return 1 if $cond->();
        select undef, undef, undef, 0.1;
    }
    return 0;
}

# in the bucket, and marked shipped: S3 confirmed it
sub shipped {
    my $n = shift;
    return 0 unless -e seg($n, 'shipped');
    my $obj = $s3->object(sprintf 'audit-bucket/gw1/segment-%08d.log', $n);
    my $local = slurp(seg($n, 'log'));
    return defined $obj && defined $local && $obj eq $local;
}

sub fill {
    my $n = shift;
    my $i = 0;
    $gw->chat("big $n " . ++$i . ' ' . ('x' x 30000))
        until -e seg($n + 1, 'log') || $i > 40;
}

$s3->throttle($rate);
$s3->start;
$gw->start;

# a slow link whose bytes keep moving
fill(1);
ok($gw->settle, 'segment 1 sealed');
my $size = -s seg(1, 'log');
cmp_ok($size, '>', 2 * 2 * $rate,
       "segment 1 ($size bytes) takes more than twice the timeout");
ok(wait_for(sub { shipped(1) }, 60), 'it is shipped over the slow link')
    or diag slurp($errlog);
unlike(slurp($errlog) // '', qr/shipping to S3 failed/,
       'no upload was cut off');

# a link whose bytes stop moving
$s3->throttle(0);
$s3->stall(4);
fill(2);
ok($gw->settle, 'segment 2 sealed');
my $stalled
    = qr/shipping to S3 failed: PUT \S+ failed: no bytes moved for 2000ms/;
ok(wait_for(sub { (slurp($errlog) // '') =~ $stalled }),
   'a stalled upload is cut off, with an error_log line');
ok(!shipped(2), 'segment 2 is not shipped meanwhile');

$s3->stall(0);
ok(wait_for(sub { shipped(2) }, 60), 'shipped once bytes move again')
    or diag slurp($errlog);

$gw->stop;
$s3->stop;

my ($rc, $rep) = $gw->verify;
is($rc, 0, 'the folder verifies') or diag explain $rep;

done_testing;
