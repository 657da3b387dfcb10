# Shipped segments leave the folder: a local segment is removed only once
# S3 has confirmed its upload (segment-N.shipped), never while the
# endpoint is down; the gateway starts again on the pruned folder and the
# chain goes on from the last removed segment's seal; smartflow-verify
# checks the pruned folder from the seals, and still catches what is done
# to what remains, and a segment missing without its shipped mark.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use Digest::SHA ();
use File::Copy ();
use JSON::PP;
use Smartflow::Audit;
use Smartflow::S3;
use Test::More;

my $gw = Smartflow::Audit->new(name => 'audit-prune', workers => 2);
$gw->setup;

my $s3 = Smartflow::S3->new(dir => $gw->root . '/s3');
my $url = $s3->url;

open my $fh, '>', $gw->root . '/s3.credentials' or die $!;
print $fh $s3->id . " $s3->{secret}\n";
close $fh;

my $conf = $ENV{TEST_NGINX_SMARTFLOW_CONF} // Smartflow::Audit::top() . '/conf';
$gw->{server} = "        include $conf/smartflow_audit.conf;\n";
$gw->write_conf(http => <<"_HTTP_");
    smartflow_audit_segment_size 2k;
    smartflow_audit_s3 $url;
    smartflow_audit_s3_bucket audit-bucket;
    smartflow_audit_s3_prefix gw1;
    smartflow_audit_s3_region ${\ $s3->region};
    smartflow_audit_s3_credentials ${\ $gw->root}/s3.credentials;
    smartflow_audit_s3_interval 200ms;
    smartflow_audit_s3_backoff_max 400ms;
    smartflow_audit_s3_timeout 3s;
_HTTP_

sub files { my @f = sort glob $gw->dir . "/segment-*.$_[0]"; @f }
sub log_of { $_[0] =~ s/\.\w+\z/.log/r }
sub base { $_[0] =~ s{.*/}{}r }

sub slurp {
    open my $fh, '<', $_[0] or return undef;
    binmode $fh;
    local $/;
    return scalar <$fh>;
}

sub spit {
    my ($f, $text) = @_;
    chmod 0644, $f;
    open my $fh, '>', $f or die "$f: $!";
    binmode $fh;
    print $fh $text;
    close $fh;
}

sub status {
    my $r = $gw->get('/api/audit/status');
    return $r->{status} == 200 ? JSON::PP->new->decode($r->{content}) : {};
}

# until every seal is marked shipped and its segment gone
sub pruned {
    for (1 .. 150) {
        my @seals = files('seal');
        return 1 if @seals && files('shipped') == @seals
                    && !grep { -e log_of($_) } @seals;
        select undef, undef, undef, 0.1;
    }
    return 0;
}

my $answered = 0;

# the folder's report once every answered request is written: the buffer
# is written within smartflow_audit_flush, which a busy machine may
# stretch a little (up to 5 s, never more)
sub verified {
    my ($rc, $rep);
    for (1 .. 50) {
        ($rc, $rep) = $gw->verify;
        last if $rc == 0 && $rep->{log_size} == $answered;
        select undef, undef, undef, 0.1;
    }
    return ($rc, $rep);
}

sub send_some {
    my ($n, $tag) = @_;
    for my $i (1 .. $n) {
        $answered++ if $gw->chat("$tag $i")->{status} == 200;
    }
    $gw->settle;
}

# the endpoint down: sealed segments stay, none is marked
$gw->start;
send_some(8, 'down');
select undef, undef, undef, 1;
my @seals = files('seal');
cmp_ok(scalar @seals, '>=', 2, 'segments are sealed while S3 is down');
is(scalar files('shipped'), 0, 'none is marked shipped');
is(scalar(grep { -e log_of($_) } @seals), scalar @seals,
   'and no segment is removed while S3 is down');
is(status()->{s3}{removed_segments}, 0, 'the status counts none removed');

# up: shipped, then removed; seals and marks stay
$s3->start;
ok(pruned(), 'once S3 confirms them, the shipped segments are removed');
@seals = files('seal');
is(scalar files('shipped'), scalar @seals, 'each one keeps its mark');
my @open = grep { !-e s/\.log\z/.seal/r } files('log');
is(scalar @open, 1, 'the open segment stays');
is(status()->{s3}{removed_segments}, scalar @seals,
   'the status counts them removed');

my $bad = 0;
for my $seal (@seals) {
    my $mark = slurp($seal =~ s/\.seal\z/.shipped/r);
    my $key = 'audit-bucket/gw1/' . base(log_of($seal));
    my $obj = $s3->object($key);
    my ($sha) = $mark =~ m{/\Q${\ base(log_of($seal))}\E ([0-9a-f]{64}) };
    unless (defined $obj && $sha && Digest::SHA::sha256_hex($obj) eq $sha) {
        diag "$key: not in the bucket as the mark says";
        $bad++;
    }
}
ok(!$bad, 'every removed segment is in the bucket, as its mark says');

my ($rc, $rep) = verified();
is($rc, 0, 'the pruned folder verifies') or diag explain $rep;
is($rep->{removed}, scalar @seals, 'the removed segments checked by seal');
is($rep->{log_size}, $answered, "the log holds $answered records");
is($rep->{records}, scalar(() = $gw->records),
   'the records read are the ones left');
is($rep->{chain_head}, status()->{chain_head},
   'the chain head is the gateway\'s');

# a proof for a record whose segment is gone: from its leaves file and
# seal; the record itself comes from the bucket
{
    my @l = files('leaves');
    is(scalar @l, scalar @seals, 'each removed segment left its leaves');
    my @ro = grep { ((stat $_)[2] & 07777) == 0444 } @l;
    is(scalar @ro, scalar @l, 'the leaves files are read-only');
    my $first = $s3->object('audit-bucket/gw1/segment-00000001.log');
    my ($line) = split /\n/, $first;
    my $rec = JSON::PP->new->decode($line);
    my $leaf = Digest::SHA::sha256_hex("\0" . $line);
    for my $ask ($rec->{seq}, $rec->{request_id}) {
        # a number with the master key, a receipt id without a key
        my $r = $gw->get("/api/audit/proof/$ask",
                         $ask =~ /^\d+$/ ? () : (key => undef));
        is($r->{status}, 200, "proof of $ask, its segment gone: 200");
        my $pf = eval { JSON::PP->new->decode($r->{content}) } // {};
        is($pf->{segment_removed}, JSON::PP::true, 'says the segment is gone');
        is($pf->{seq}, $rec->{seq}, 'names the record');
        is($pf->{leaf_hash}, $leaf,
           'its leaf hash is the record\'s in the bucket');
        my $pfile = $gw->root . '/removed-proof.json';
        spit($pfile, $r->{content});
        my ($prc, $prep) = $gw->verify(undef, '--proof', $pfile);
        is($prc, 0, 'smartflow-verify --proof holds with the folder')
            or diag explain $prep;
        spit($pfile, $r->{content} =~ s/("leaf_hash":")([0-9a-f])/
                         $1 . ($2 eq 'a' ? 'b' : 'a')/er);
        ($prc, $prep) = $gw->verify(undef, '--proof', $pfile);
        is($prc, 1, 'another leaf hash does not');
    }
    is($gw->get('/api/audit/proof/999999')->{status}, 404,
       'a record that is nowhere: 404');
}

my $logs = $gw->get('/api/vas/logs?limit=1000');
is($logs->{status}, 200, 'the log query skips the removed segments');
is(scalar @{ JSON::PP->new->decode($logs->{content})->{data} },
   $rep->{records}, 'and lists the records left');

# a restart on the pruned folder: the chain goes on from the last seal
ok($gw->stop, 'nginx stops');
$gw->start;
send_some(6, 'after restart');
($rc, $rep) = verified();
is($rc, 0, 'after a restart on the pruned folder it verifies')
    or diag explain $rep;
is($rep->{log_size}, $answered, "and holds all $answered records");
like(slurp($gw->root . '/logs/error.log'),
     qr/segments up to \d+ are shipped and removed, the chain goes on from record \d+/,
     'the start-up says where the chain goes on from');
ok(pruned(), 'the new sealed segments are shipped and removed as well');

# refused (503): confirmed by nothing, so nothing is removed
$s3->fail(503);
my @marked = files('shipped');
send_some(6, 'refused');
select undef, undef, undef, 1;
my @refused = grep { !-e s/\.seal\z/.shipped/r } files('seal');
cmp_ok(scalar @refused, '>=', 1, 'new seals while S3 answers 503');
is_deeply([ files('shipped') ], \@marked, 'none of them marked shipped');
is(scalar(grep { -e log_of($_) } @refused), scalar @refused,
   'and their segments all stay');
$s3->fail(0);
ok(pruned(), 'once S3 takes them again they are shipped and removed');

# down again: the later sealed segments stay
$s3->stop;
my @kept_before = files('log');
send_some(8, 'down again');
select undef, undef, undef, 1;
my @unshipped = grep { !-e s/\.seal\z/.shipped/r } files('seal');
cmp_ok(scalar @unshipped, '>=', 2, 'new seals while S3 is down');
is(scalar(grep { -e log_of($_) } @unshipped), scalar @unshipped,
   'their segments all stay');
($rc, $rep) = verified();
is($rc, 0, 'a folder with removed and unshipped segments verifies')
    or diag explain $rep;
is($rep->{log_size}, $answered, "with all $answered records");
my $head = status()->{chain_head};

# what is done to the pruned folder is caught
my $copy = $gw->root . '/copy';
my $check = sub {
    my ($what, $want, $change, @args) = @_;
    $gw->copy_dir($copy);
    $change->();
    my ($rc, $rep) = $gw->verify($copy, @args);
    ok($rc == 1 && $rep->{error}{check} eq $want, "$what: $want")
        or diag explain $rep;
};

my @marks = sort glob "$copy/segment-*.shipped";
$check->('a removed segment without its shipped mark', 'segment_missing',
         sub { unlink((sort glob "$copy/segment-*.shipped")[0]) });
$check->('a removed segment\'s mark gone in the middle', 'segment_missing',
         sub { my @m = sort glob "$copy/segment-*.shipped";
               unlink $m[$#m - 1] });
# the marks are signed with the audit key and list their seal
$check->('a removed segment\'s mark altered', 'mark_invalid', sub {
    my $f = (sort glob "$copy/segment-*.shipped")[0];
    my $t = slurp($f);
    $t =~ s/(\d)Z$/($1 == 9 ? 8 : $1 + 1) . 'Z'/me or die "no date in $f";
    spit($f, $t);
});
$check->('a removed segment\'s mark without its signature', 'mark_invalid',
         sub {
    my $f = (sort glob "$copy/segment-*.shipped")[0];
    spit($f, slurp($f) =~ s/^hmac .*\n//mr);
});
$check->('another segment\'s mark in its place', 'mark_invalid', sub {
    my @m = sort glob "$copy/segment-*.shipped";
    spit($m[1], slurp($m[0]));
});
$check->('a mark signed with a key not in the file', 'mark_invalid', sub {
    my $f = (sort glob "$copy/segment-*.shipped")[0];
    spit($f, slurp($f) =~ s/^hmac k1 /hmac k9 /mr);
});
# (its mark lists the seal's SHA-256: caught there first)
$check->('a removed segment\'s seal changed', 'mark_seal', sub {
    my $f = (sort glob "$copy/segment-*.seal")[0];
    spit($f, slurp($f) =~ s/"count":(\d+)/'"count":' . ($1 + 1)/er);
});
$check->('a removed segment\'s seal gone', 'seal_missing',
         sub { unlink((sort glob "$copy/segment-*.seal")[0]) });
$check->('an unshipped segment deleted', 'segment_missing', sub {
    unlink "$copy/" . base(log_of($unshipped[0]));
});
$check->('a record changed in a segment left', 'hmac', sub {
    my $f = "$copy/" . base(log_of($unshipped[-1]));
    my $t = slurp($f);
    $t =~ s/"status":200/"status":201/ or die "no status in $f";
    spit($f, $t);
});
$check->('a record deleted from a segment left', 'sequence', sub {
    my $f = "$copy/" . base(log_of($unshipped[0]));
    my @l = split /(?<=\n)/, slurp($f);
    splice @l, 1, 1;
    spit($f, join '', @l);
});
$check->('the open segment truncated', 'chain_head', sub {
    my ($f) = grep { !-e s/\.log\z/.seal/r } sort glob "$copy/segment-*.log";
    my @l = split /(?<=\n)/, slurp($f);
    pop @l;
    spit($f, join '', @l);
}, '--head', $head);

# the removed segments fetched back from the bucket: all checked again
$gw->copy_dir($copy);
for my $mark (sort glob "$copy/segment-*.shipped") {
    my $log = log_of($mark);
    next if -e $log;
    spit($log, $s3->object('audit-bucket/gw1/' . base($log)));
}
($rc, $rep) = $gw->verify($copy, '--head', $head);
is($rc, 0, 'with the segments fetched back from the bucket it verifies')
    or diag explain $rep;
is($rep->{records}, $answered, 'every record read again');
is($rep->{removed}, 0, 'none removed');

$gw->stop;
$s3->stop;

my @alerts = grep { /\[(alert|crit|emerg)\]/ }
             split /\n/, slurp($gw->root . '/logs/error.log');
is_deeply(\@alerts, [], 'no alert in the error log');

# the gateway itself does not start where the last segment gone has an
# altered mark: it goes on from that segment's seal
my ($base) = (files('log'))[0] =~ /segment-(\d+)\.log\z/;
$base -= 1;
my $last_mark = sprintf '%s/segment-%08d.shipped', $gw->dir, $base;
my $saved = slurp($last_mark);
ok(defined $saved, "segment $base is gone with its mark");
spit($last_mark, $saved =~ s/^(\S+ )([0-9a-f])/$1 . ($2 eq 'a' ? 'b' : 'a')/er);
ok(!$gw->nginx, 'nginx does not start with an altered mark');
my $why = qr/segment $base is missing and its mark \S+ does not hold: /;
like(slurp($gw->root . '/logs/error.log'),
     qr/\[emerg\].*${why}the mark's HMAC does not match/,
     'the [emerg] names the mark and why');
spit($last_mark, $saved);
ok($gw->nginx, 'with the mark as it was, nginx starts');
$gw->wait_workers(2);
$gw->stop;

done_testing();
