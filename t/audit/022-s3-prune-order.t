# Shipped segments leave the folder in order, the first ones only: a
# segment whose seal failed (here its temporary file cannot be made)
# stays unsealed until the next start, and the sealed segments after it
# were shipped and removed all the same.  The folder then had a hole no
# mark accounts for: smartflow-verify refused it, and the next start
# went on from a chain without the removed segment's records.  Now a
# shipped segment is removed only once the one before it is gone.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use File::Path ();
use Smartflow::Audit;
use Smartflow::S3;
use Test::More;

my $gw = Smartflow::Audit->new(name => 'audit-s3-prune-order', workers => 1);
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
sub seg { sprintf '%s/segment-%08d.%s', $dir, @_ }

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

# segment 2 open: its seal's temporary file cannot be made
my $n = 0;
$gw->chat('order ' . ++$n) until -e seg(2, 'log') || $n > 50;
ok(-e seg(2, 'log'), 'segment 2 is open');
File::Path::make_path(seg(2, 'seal.tmp'));

$gw->chat('order ' . ++$n) until -e seg(4, 'log') || $n > 100;
ok(wait_for(sub { -e seg(3, 'seal') }), 'segment 3 is sealed');
ok(!-e seg(2, 'seal'), 'segment 2 is not');

ok(wait_for(sub { -e seg(3, 'shipped') }), 'segment 3 is shipped');
ok(wait_for(sub { !-e seg(1, 'log') }), 'segment 1 is shipped and removed');
select undef, undef, undef, 0.5;
ok(-e seg(3, 'log'), 'segment 3 stays while segment 2 is here');

# the next start seals segment 2; then 2 and 3 go
$gw->stop;
File::Path::remove_tree(seg(2, 'seal.tmp'));
$gw->start;

ok(wait_for(sub { -e seg(2, 'shipped') }), 'segment 2 is shipped');
ok(wait_for(sub { !-e seg(2, 'log') && !-e seg(3, 'log') }),
   'segments 2 and 3 are removed, in order');

$gw->chat('after ' . $_) for 1 .. 2;
$gw->settle;
$gw->stop;
$s3->stop;

my $log = do { open my $lf, '<', $gw->root . '/logs/error.log' or die;
               local $/; <$lf> };
like($log, qr/sealing segment 2 failed/, 'the failed seal was logged');
unlike($log, qr/starts at record/, 'the start found the chain whole');

my ($rc, $rep) = $gw->verify;
is($rc, 0, 'the folder verifies') or diag explain $rep;
is($rep->{log_size}, $n + 2, 'every record is in the log');

done_testing;
