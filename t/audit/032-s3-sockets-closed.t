# The S3 upload closes its sockets itself (libcurl hands them to the
# idle timeout's close callback, which forgets the socket so that its
# number, maybe another thread's by then, is never read, and closes
# it): after several uploads the worker holds no more sockets than
# after the first.  That a socket closed is not read while a transfer
# opens several (happy eyeballs with IPv6 and IPv4, a reconnect) needs
# a name resolving to both families, which the test host lacks.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use Smartflow::Audit;
use Smartflow::S3;
use Test::More;

$ENV{TEST_NGINX_S3_PORT} ||= 3820;

my $gw = Smartflow::Audit->new(name => 'audit-s3-sockets', workers => 1);
$gw->setup;

my $s3 = Smartflow::S3->new(dir => $gw->root . '/s3');
my $cred = $gw->root . '/s3.credentials';
open my $fh, '>', $cred or die $!;
print $fh $s3->id . " $s3->{secret}\n";
close $fh;

$gw->write_conf(http => <<"_HTTP_");
    smartflow_audit_segment_size 2k;
    smartflow_audit_s3 ${\ $s3->url};
    smartflow_audit_s3_bucket audit-bucket;
    smartflow_audit_s3_prefix gw1;
    smartflow_audit_s3_region ${\ $s3->region};
    smartflow_audit_s3_credentials $cred;
    smartflow_audit_s3_interval 200ms;
    smartflow_audit_s3_backoff_max 400ms;
    smartflow_audit_s3_timeout 5s;
    smartflow_audit_s3_keep on;
_HTTP_

my $dir = $gw->dir;
my $errlog = $gw->root . '/logs/error.log';
sub seg { sprintf '%s/segment-%08d.%s', $dir, @_ }

sub slurp {
    open my $f, '<', $_[0] or return undef;
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

sub fill {
    my $n = shift;
    my $i = 0;
    $gw->chat("segment $n " . ++$i . ' ' . ('x' x 1500))
        until -e seg($n + 1, 'log') || $i > 20;
}

sub sockets {
    my ($pid) = $gw->worker_pids;
    opendir my $d, "/proc/$pid/fd" or return -1;
    my $n = grep { (readlink("/proc/$pid/fd/$_") // '') =~ /^socket:/ }
            readdir $d;
    return $n;
}

$s3->start;
$gw->start;

fill(1);
ok($gw->settle, 'segment 1 sealed');
ok(wait_for(sub { -e seg(1, 'shipped') }), 'segment 1 is shipped')
    or diag slurp($errlog);
my $first = sockets();
cmp_ok($first, '>', 0, "the worker's sockets after one upload: $first");

for my $n (2 .. 6) {
    fill($n);
}
ok($gw->settle, 'segments 2 to 6 sealed');
ok(wait_for(sub { -e seg(6, 'shipped') }), 'segments 2 to 6 are shipped')
    or diag slurp($errlog);

my $later = sockets();
cmp_ok($later, '<=', $first,
       "no more sockets after six uploads ($later) than after one");

unlike(slurp($errlog) // '', qr/shipping to S3 failed/, 'no upload failed');

$gw->stop;
$s3->stop;

my ($rc, $rep) = $gw->verify;
is($rc, 0, 'the folder verifies') or diag explain $rep;

done_testing;
