# The receipt id is nginx's $request_id, which the audit module sets from
# random bytes drawn for many requests at a time: each id is 32 hex
# digits, none repeats (across the batches too, and across workers), and
# the receipt, the record's "request_id" and $request_id as the rest of
# nginx sees it (add_header, access_log) are the same value; a request
# whose $request_id was asked for earlier (an access_log of a refusal
# made before any header, or add_header) keeps that one.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use JSON::PP;
use Smartflow::Audit;
use Test::More;

my $gw = Smartflow::Audit->new(name => 'audit-rid', workers => 2,
    http => "    log_format rid '\$request_id \$status \$uri';\n",
    server => "        access_log logs/rid.log rid;\n"
            . "        add_header X-Request-Id \$request_id always;\n"
            . "        set \$early '';\n"
            . "        if (\$http_x_early) { set \$early \$request_id; }\n"
            . "        add_header X-Early \$early always;\n");
$gw->setup->start;

# more than one batch of ids (256) per worker
my $n = 600;
my (@ids, %seen, $bad, $mismatch);

for my $i (1 .. $n) {
    my $r = $gw->chat("id $i");
    $bad++ unless $r->{status} == 200;
    my ($id) = ($r->{headers}{'smartflow-audit-receipt'} // '')
        =~ /^id=([0-9a-f]{32}); request-sha256=[0-9a-f]{64}$/;
    unless (defined $id) {
        $bad++;
        next;
    }
    $mismatch++ unless ($r->{headers}{'x-request-id'} // '') eq $id;
    push @ids, $id;
    $seen{$id}++;
}

ok(!$bad, "$n answers, each with a receipt of a 32-hex id");
is(scalar(keys %seen), $n, 'no id repeats');
ok(!$mismatch, '$request_id in add_header is the receipt id');

# ids look random: every hex digit about as often in every position
my @count;
for my $id (@ids) {
    my $pos = 0;
    $count[$pos++]{$_}++ for split //, $id;
}
my $flat = 1;
for my $pos (0 .. 31) {
    for my $d (0 .. 9, 'a' .. 'f') {
        # 600 ids: about 37.5 each; far outside [5, 90] is not random
        my $c = $count[$pos]{$d} // 0;
        $flat = 0 if $c < 5 || $c > 90;
    }
}
ok($flat, 'every hex digit in every position, about evenly');

select undef, undef, undef, 0.5;

# the access log sees the same $request_id
open my $fh, '<', $gw->root . '/logs/rid.log' or die $!;
my @logged = map { (split ' ')[0] }
             grep { m{ 200 /v1/chat/completions$} } <$fh>;
close $fh;
is_deeply([sort @logged], [sort @ids],
          'access_log\'s $request_id is the receipt id');

# $request_id asked for before the answer (set in the server's rewrite
# phase, by nginx itself): the receipt keeps it
my $early = $gw->chat('early', headers => { 'X-Early' => 1 });
my ($eid) = ($early->{headers}{'smartflow-audit-receipt'} // '')
    =~ /^id=(\w+)/;
like($early->{headers}{'x-early'} // '', qr/^[0-9a-f]{32}$/,
     '$request_id taken in the rewrite phase');
is($eid, $early->{headers}{'x-early'}, 'the receipt keeps that id');

# a refusal: the same id in its receipt, its header and its record
my $refused = $gw->chat('x', model => 'no-such-model');
is($refused->{status}, 404, 'a refusal');
my ($rid) = ($refused->{headers}{'smartflow-audit-receipt'} // '')
    =~ /^id=(\w+)/;
is($refused->{headers}{'x-request-id'}, $rid, 'its header id');

$gw->stop;

# the records: every id once, in the record of its request
my %rec;
for my $line ($gw->records) {
    my $r = JSON::PP->new->decode($line->[2]);
    $rec{$r->{request_id}}++;
}
is(scalar(grep { ($rec{$_} // 0) == 1 } @ids, $eid, $rid), $n + 2,
   'each id names exactly one record');
my ($rc, $rep) = $gw->verify;
is($rc, 0, 'the folder verifies');
is($rep->{records}, $n + 2, 'every request recorded');

done_testing;
