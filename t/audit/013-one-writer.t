# One writer for a folder, and nothing written twice:
#
# - `nginx -t` on the running server's configuration leaves its folder
#   alone (nginx makes the shared zones under -t too, and the start's
#   repair of the open segment must not run against a live one);
# - a second nginx on the same folder stops at its start (the folder's
#   lock), instead of writing a second chain into the open segment;
# - the record a worker killed between its write() and the zone's update
#   leaves in the open segment, which the chain does not count, is cut
#   off before the next write, with an alert, and the folder verifies
#   (other bytes found there are left for the seal's check:
#   012-seal-check.t);
# - the cache manager and loader start no S3 or timestamp work (they have
#   no thread pool).

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use Digest::SHA qw(sha256_hex);
use Smartflow::Audit;
use Test::More;

my $conf = $ENV{TEST_NGINX_SMARTFLOW_CONF} // Smartflow::Audit::top() . '/conf';

sub slurp {
    open my $fh, '<', $_[0] or return '';
    binmode $fh;
    local $/;
    return scalar <$fh>;
}

sub append {
    my ($file, $bytes) = @_;
    open my $fh, '>>', $file or die "$file: $!";
    binmode $fh;
    print $fh $bytes;
    close $fh;
}

sub open_segment {
    my ($gw) = @_;
    my @segs = sort glob $gw->dir . '/segment-*.log';
    return $segs[-1];
}

my $gw = Smartflow::Audit->new(name => 'audit-one-writer', workers => 1,
    server => "        include $conf/smartflow_audit.conf;\n",
    http => "    smartflow_audit_buffer 0;\n");
$gw->setup->start;

my $answered = 0;
$answered++ for grep { $_->{status} == 200 } map { $gw->chat("first $_") } 1 .. 3;
is($answered, 3, 'three answers');

my $seg = open_segment($gw);
ok($seg, 'an open segment');

# a record is written in the LOG phase, after the client has its answer
for (1 .. 100) {
    last if (() = slurp($seg) =~ /\n/g) >= 3;
    select undef, undef, undef, 0.05;
}

# a piece of a record at the end, as a write cut short would leave: the
# repair at a start would cut it, nginx -t must not
my $size = -s $seg;
append($seg, '{"time":"2026-');
my $before = slurp($seg);

ok($gw->nginx('-t', '-q'), 'nginx -t passes');
is(slurp($seg), $before, 'nginx -t left the open segment as it was');
truncate($seg, $size) or die $!;

# the record a worker killed after its write() leaves: the next one of
# the chain (its seq and prev), which the zone never counted
my @lines = split /\n/, slurp($seg);
my ($seq) = $lines[-1] =~ /"seq":(\d+)/;
my $prev = sha256_hex("\x00" . $lines[-1]);
append($seg, qq/{"request_id":"killed","ts":1,"seq":${\ ($seq + 1)},/
           . qq/"kid":"k1","prev":"$prev","hmac":"00"}\n/);

$answered++ for grep { $_->{status} == 200 } map { $gw->chat("second $_") } 1 .. 2;
$gw->settle;
my ($rc, $rep) = $gw->verify;
is($rc, 0, 'the folder verifies: the uncounted record was cut off')
    or diag explain $rep;
is($rep->{records}, $answered, "all $answered records in the chain");
like(slurp($gw->root . '/logs/error.log'),
     qr/\[alert\].*record ${\ ($seq + 1)} of segment \d+, written by a worker killed before the chain counted it, is cut off/,
     'with an alert naming it');
unlike(slurp($seg), qr/"killed"/, 'it is gone from the segment');

# a second nginx on the same folder does not start
my $other = Smartflow::Audit->new(name => 'audit-one-writer-2', workers => 1,
    port => $gw->port + 11);
$other->setup;
{
    my $file = $other->root . '/conf/nginx.conf';
    my $text = slurp($file);
    my ($dir, $keys) = ($gw->dir, $gw->keys_file);
    $text =~ s{smartflow_audit_dir \S+;}{smartflow_audit_dir $dir;};
    $text =~ s{smartflow_audit_key_file \S+;}{smartflow_audit_key_file $keys;};
    open my $fh, '>', $file or die $!;
    print $fh $text;
    close $fh;
}
ok(!$other->nginx, 'a second nginx on the same folder stops at its start');
like(slurp($other->root . '/logs/error.log'),
     qr/\[emerg\].*the folder "\Q${\ $gw->dir}\E" is written by another nginx/,
     'and says why');
ok(!$other->up, 'it serves nothing');

# the first one goes on, and once it is gone the folder is free again
$answered++ if $gw->chat('third')->{status} == 200;
ok($gw->stop('QUIT'), 'the first nginx quits');
ok($other->nginx, 'then the second one starts on the folder');
ok($other->wait_workers(1), 'and serves');
$answered++ if $other->chat('fourth')->{status} == 200;
$other->settle;
($rc, $rep) = $gw->verify;
is($rc, 0, 'the folder still verifies') or diag explain $rep;
is($rep->{records}, $answered, "all $answered records, one chain");
$other->stop('QUIT');

# helper processes: S3 shipping and timestamps configured, a cache path
# for the cache manager and loader
my $h = Smartflow::Audit->new(name => 'audit-one-writer-helpers', workers => 1);
$h->setup;
{
    open my $fh, '>', $h->root . '/s3.credentials' or die $!;
    print $fh "AKIDEXAMPLE0000000000 secret0000000000000000000000000000000000\n";
    close $fh;
}
my $root = $h->root;
$h->write_conf(http => <<"_HTTP_");
    proxy_cache_path $root/cache keys_zone=helpers:1m;
    smartflow_audit_tsa http://127.0.0.1:9/tsa;
    smartflow_audit_tsa_retry 1s;
    smartflow_audit_s3 http://127.0.0.1:9/;
    smartflow_audit_s3_bucket audit-bucket;
    smartflow_audit_s3_region us-east-1;
    smartflow_audit_s3_credentials $root/s3.credentials;
    smartflow_audit_s3_interval 200ms;
_HTTP_
# the cache manager and loader are children of the master too: the
# server is up when it answers
ok($h->nginx, 'a server with a cache path, S3 and a time-stamping authority starts');
for (1 .. 100) {
    last if $h->up;
    select undef, undef, undef, 0.05;
}
sleep 3;
my $log = slurp("$root/logs/error.log");
unlike($log, qr/exited on signal/, 'no process crashed in 3 s');
ok($h->up, 'the server still answers');
$h->stop('QUIT');

done_testing;
