# Shipping sealed segments to S3 Object Lock, against a local endpoint
# (t/lib/Smartflow/S3.pm) that recomputes each request's SigV4 signature
# with its own secret and checks the Object Lock headers and checksums:
# segments arrive signed, locked and intact; while the endpoint is down,
# failing or expecting another secret nothing is marked shipped, the
# backlog is reported, survives a restart and drains once it is back;
# the secret never reaches the error log.  The local copies are kept here
# (smartflow_audit_s3_keep on) to compare them with the bucket's; their
# removal is 009-prune.t's.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use Digest::MD5 ();
use Digest::SHA ();
use HTTP::Tiny;
use MIME::Base64 ();
use JSON::PP;
use Smartflow::Audit;
use Smartflow::S3;
use Smartflow::Tsa;
use Test::More;

my $gw = Smartflow::Audit->new(name => 'audit-s3', workers => 2);
$gw->setup;

my $s3 = Smartflow::S3->new(dir => $gw->root . '/s3');
my $secret = $s3->{secret};
my $url = $s3->url;
my ($id, $region) = ($s3->id, $s3->region);

open my $fh, '>', $gw->root . '/s3.credentials' or die $!;
print $fh "$id $secret\n";
close $fh;

my $cred = $gw->root . '/s3.credentials';

# seals are timestamped too: the token travels with them
my $tsa = Smartflow::Tsa->new(dir => $gw->root . '/tsa');
my $tsa_url = $tsa->url;

# the status API comes from the shipped include
my $conf = $ENV{TEST_NGINX_SMARTFLOW_CONF} // Smartflow::Audit::top() . '/conf';
$gw->{server} = "        include $conf/smartflow_audit.conf;\n";
$gw->write_conf(http => <<"_HTTP_");
    smartflow_audit_segment_size 2k;
    smartflow_audit_tsa $tsa_url;
    smartflow_audit_tsa_retry 1s;
    smartflow_audit_s3 $url/;
    smartflow_audit_s3_bucket audit-bucket;
    smartflow_audit_s3_prefix gw1;
    smartflow_audit_s3_region $region;
    smartflow_audit_s3_credentials $cred;
    smartflow_audit_s3_lock_mode compliance;
    smartflow_audit_s3_retention 2d;
    smartflow_audit_s3_interval 200ms;
    smartflow_audit_s3_backoff_max 800ms;
    smartflow_audit_s3_timeout 3s;
    smartflow_audit_s3_keep on;
_HTTP_

sub files { my @f = sort glob $gw->dir . "/segment-*.$_[0]"; @f }
sub base  { $_[0] =~ s{.*/}{}r }

sub slurp {
    open my $fh, '<', $_[0] or return undef;
    binmode $fh;
    local $/;
    return scalar <$fh>;
}

sub status {
    my $r = $gw->get('/api/audit/status');
    return $r->{status} == 200 ? JSON::PP->new->decode($r->{content}) : {};
}

# waits until every seal has its .shipped mark
sub drained {
    for (1 .. 150) {
        my @seals = files('seal');
        return 1 if @seals && files('shipped') == @seals
                    && status()->{backlog}{shipping} == 0;
        select undef, undef, undef, 0.1;
    }
    return 0;
}

# each sealed segment's files are in the bucket, byte for byte, locked
sub all_in_bucket {
    my $what = shift;
    my $bad = 0;
    for my $seal (files('seal')) {
        my $tsr = $seal =~ s/\.seal\z/.tsr/r;
        unless (-e $tsr) {
            diag "$what: $tsr missing";
            $bad++;
        }
        for my $f ($seal, $seal =~ s/\.seal\z/.log/r, $tsr) {
            my $key = 'audit-bucket/gw1/' . base($f);
            my $obj = $s3->object($key);
            my ($mode, $until) = $s3->object_lock($key);
            unless (defined $obj && $obj eq slurp($f)
                    && $mode && $mode eq 'COMPLIANCE'
                    && $until =~ /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\z/)
            {
                diag "$what: $key not shipped as it should";
                $bad++;
            }
        }
    }
    ok(!$bad, "$what: every sealed segment and seal is in the bucket, "
              . 'timestamp, identical and under COMPLIANCE lock');
}

sub refused_since {
    my ($n, $code) = @_;
    my @r = $s3->requests;
    return scalar grep { $_->[2] eq $code } @r[$n .. $#r];
}

$tsa->start;
$s3->start;
$gw->start;

# the fixture itself refuses what is not signed right, or not locked
{
    my $ua = HTTP::Tiny->new(timeout => 5);
    my $r = $ua->put("$url/audit-bucket/x", { content => 'x', headers => {
        Authorization => "AWS4-HMAC-SHA256 Credential=$id/20260101/$region"
                         . '/s3/aws4_request, SignedHeaders=host;x-amz-date,'
                         . ' Signature=' . ('0' x 64) } });
    is($r->{status}, 403, 'the fixture refuses a request signed wrong');
}
my $curl = sub {
    my ($sec, @h) = @_;
    my $body = $gw->root . '/probe';
    open my $p, '>', $body or die $!;
    print $p "probe\n";
    close $p;
    my $sha = Digest::SHA::sha256_hex("probe\n");
    my $hdrs = join ' ', map { "-H '$_'" } "x-amz-content-sha256: $sha", @h;
    my $cmd = "curl -s -o /dev/null -w '%{http_code}' -X PUT"
              . " --data-binary \@$body --aws-sigv4 'aws:amz:$region:s3'"
              . " -u '$id:$sec' $hdrs $url/audit-bucket/probe";
    my $code = `$cmd`;
    return $code;
};
my $md5 = MIME::Base64::encode_base64(Digest::MD5::md5("probe\n"), '');
my @lock = ('x-amz-object-lock-mode: GOVERNANCE',
            'x-amz-object-lock-retain-until-date: 2099-01-01T00:00:00Z');
is($curl->($secret, "Content-MD5: $md5", @lock), 200,
   'the fixture takes a request signed with its secret');
is($curl->('another', "Content-MD5: $md5", @lock), 403,
   'but not one signed with another secret');
is($curl->($secret, 'Content-MD5: ' . ('A' x 22) . '==', @lock), 400,
   'nor a wrong Content-MD5');
is($curl->($secret, "Content-MD5: $md5", $lock[0]), 403,
   'nor one without a retain-until date');

# up: the sealed segments arrive
$gw->chat("shipped $_") for 1 .. 7;
ok($gw->settle, 'the closed segments are sealed');
cmp_ok(scalar files('seal'), '>=', 2, 'two seals or more');
ok(drained(), 'every seal is marked shipped');
is(scalar(grep { ((stat $_)[2] & 07777) == 0444 } files('shipped')),
   scalar(() = files('shipped')), 'the shipped marks are read-only');
all_in_bucket('up');

my $st = status();
is($st->{s3}{enabled}, JSON::PP::true, 'the status says shipping is on');
is($st->{s3}{shipped_segments}, scalar files('seal'),
   'and counts the shipped segments');
is($st->{s3}{objects}, 3 * files('seal'),
   'three objects each: segment, seal, timestamp');

my $shipped = slurp((files('shipped'))[0]);
like($shipped, qr{^\Q$url\E/audit-bucket/gw1/segment-\d{8}\.log
                  \ [0-9a-f]{64}\ COMPLIANCE\ \S+Z$}mx,
     'the mark names the object, its SHA-256 and lock');

my $m = $gw->get('/metrics', key => undef);
like($m->{content}, qr/^smartflow_audit_s3_segments_total (\d+)$/m,
     'metrics count the shipped segments');
like($m->{content}, qr/^smartflow_audit_s3_backlog 0$/m,
     'and an empty backlog');

# down: nothing is marked, the backlog is reported and survives a restart
$s3->stop;
my @before = files('shipped');
$gw->chat("while down $_") for 1 .. 6;
$gw->settle;
select undef, undef, undef, 1.5;

my @seals = files('seal');
cmp_ok(scalar @seals, '>', scalar @before, 'more seals while down');
is_deeply([ files('shipped') ], \@before, 'none of them marked shipped');
is(status()->{backlog}{shipping}, @seals - @before,
   'the status reports them as the shipping backlog');
like($gw->get('/metrics', key => undef)->{content},
     qr/^smartflow_audit_s3_backlog ${\ (@seals - @before)}$/m,
     'so do the metrics');
ok((grep { -e $_ =~ s/\.seal\z/.log/r } @seals) == @seals,
   'the local segments are all there');

ok($gw->stop, 'nginx stops with the backlog');
$gw->start;
$s3->start;
ok(drained(), 'up again after a restart: the backlog drains');
all_in_bucket('after the restart');

my ($rc, $rep) = $gw->verify;
is($rc, 0, 'the folder still verifies') or diag explain $rep;

# failing: 503 answers, retried with backoff, then drained
my $n = () = $s3->requests;
$s3->fail(503);
@before = files('shipped');
$gw->chat("failing $_") for 1 .. 4;
$gw->settle;
select undef, undef, undef, 2;
is_deeply([ files('shipped') ], \@before,
          'nothing marked while it answers 503');
cmp_ok(refused_since($n, 'SlowDown'), '>=', 2, 'and the upload is retried');
$s3->fail(0);
ok(drained(), 'the backlog drains once it answers again');
all_in_bucket('after the 503s');

# another secret: refused, retried, logged without the secret
$n = () = $s3->requests;
$s3->secret('another-secret-the-gateway-does-not-have');
@before = files('shipped');
$gw->chat("wrong key $_") for 1 .. 4;
$gw->settle;
select undef, undef, undef, 2;
is_deeply([ files('shipped') ], \@before,
          'nothing marked while the signature is refused');
cmp_ok(refused_since($n, 'SignatureDoesNotMatch'), '>=', 2,
       'the fixture refused the signature more than once');
$s3->secret($secret);
ok(drained(), 'the backlog drains with the right secret');
all_in_bucket('after the wrong secret');

($rc, $rep) = $gw->verify(undef, '--tsa-ca', $tsa->ca);
is($rc, 0, 'the folder and its timestamps verify at the end')
    or diag explain $rep;

$gw->stop;
$s3->stop;
$tsa->stop;

my $text = slurp($gw->root . '/logs/error.log');
like($text, qr/\[error\].*shipping\ to\ S3\ failed:\ PUT\ \Q$url\E\S+
                \ answered\ 403\ SignatureDoesNotMatch/x,
     'the refused signature is in the error log');
like($text, qr/\[error\].*shipping to S3 failed: PUT \S+ answered 503/,
     'so are the 503s');
like($text, qr/shipping to S3 failed: PUT \S+ failed: Couldn't connect/,
     'and the endpoint down');
unlike($text, qr/\Q$secret\E/, 'the secret is nowhere in the error log');
my %delays = map { $_ => 1 } $text =~ /next try in (\d+)ms/g;
ok($delays{200} && $delays{400} && $delays{800} && !grep({ $_ > 800 }
                                                          keys %delays),
   'the retries back off, doubling up to smartflow_audit_s3_backoff_max')
    or diag explain [ sort { $a <=> $b } keys %delays ];
my @bad = grep { /\[(alert|crit|emerg)\]/ } split /\n/, $text;
is_deeply(\@bad, [], 'no alert in the error log');

done_testing();
