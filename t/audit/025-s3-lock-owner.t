# The shipping round's lock, DIR/.s3.lock, made by another user (root,
# or the workers' user before a change of "user"): the workers opened
# it for writing, got EACCES every round, logged an [alert] every
# interval and shipped nothing, for good.  flock() needs no write
# access: it is opened read-only, and one the workers cannot read is
# replaced (the folder is theirs).

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use File::Path ();
use Smartflow::Audit;
use Smartflow::S3;
use Test::More;

plan skip_all => 'root makes the lock of another user' if $> != 0;

my $gw = Smartflow::Audit->new(name => 'audit-s3-lock-owner', workers => 1);
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

my $dir = $gw->dir;
my $lock = "$dir/.s3.lock";
my $nobody = getpwnam('nobody');
sub seg { sprintf '%s/segment-%08d.%s', $dir, @_ }

sub slurp {
    open my $f, '<', $_[0] or die "$_[0]: $!";
    local $/;
    return scalar <$f>;
}

sub wait_for {
    my $cond = shift;
    for (1 .. 100) {
        return 1 if $cond->();
        select undef, undef, undef, 0.1;
    }
    return 0;
}

# a lock of root's, readable by root only, there before the start
File::Path::make_path($dir);
open my $lf, '>', $lock or die "$lock: $!";
close $lf;
chown 0, 0, $lock;
chmod 0600, $lock;

$s3->start;
$gw->start;

my $n = 0;
$gw->chat('lock ' . ++$n) until -e seg(3, 'log') || $n > 60;
ok(wait_for(sub { -e seg(2, 'shipped') }),
   'segments ship with root\'s unreadable lock in the folder');
my @st = stat $lock;
is($st[4], $nobody, 'the lock is now the workers\'');
is($st[2] & 07777, 0644, 'readable by all');
$gw->stop;

my $log = slurp($gw->root . '/logs/error.log');
unlike($log, qr/\.s3\.lock/, 'no error about the lock');

# a lock of root's the workers may read: used as it is
chown 0, 0, $lock;
chmod 0644, $lock;
my $ino = (stat $lock)[1];
$gw->start;
my $m = 0;
$gw->chat('read-only ' . ++$m) until -e seg(5, 'log') || $m > 60;
ok(wait_for(sub { -e seg(4, 'shipped') }),
   'segments ship with root\'s readable lock');
@st = stat $lock;
is($st[1], $ino, 'the same lock file');
is($st[4], 0, 'still root\'s');
$gw->settle;
$gw->stop;
$s3->stop;

$log = slurp($gw->root . '/logs/error.log');
unlike($log, qr/\.s3\.lock/, 'no error about the lock');

my ($rc, $rep) = $gw->verify;
is($rc, 0, 'the folder verifies') or diag explain $rep;

done_testing;
