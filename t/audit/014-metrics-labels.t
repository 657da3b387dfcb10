# GET /metrics stays valid Prometheus text whatever models clients name
# through a wildcard route: a label cut to its room ends between UTF-8
# characters (and a byte that is not UTF-8 would be shown as "?"; the
# gateway refuses such bodies before they reach a label), and once the
# series table is full the rest are counted as model "other" by status,
# so a provider's error after that still shows under its own status and
# no series already shown changes its labels.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use JSON::PP;
use Smartflow::Audit;
use Test::More;

my $conf = $ENV{TEST_NGINX_SMARTFLOW_CONF} // Smartflow::Audit::top() . '/conf';

my $gw = Smartflow::Audit->new(name => 'audit-labels', workers => 1,
    http => "    smartflow_route echo-* demo;\n",
    server => "        include $conf/smartflow_audit.conf;\n");
$gw->setup->start;

my $json = JSON::PP->new;

sub metrics {
    my $m = $gw->get('/metrics', key => undef);
    my $mf = $gw->root . '/metrics.txt';
    open my $fh, '>:raw', $mf or die; print $fh $m->{content}; close $fh;
    my $py = <<'_PY_';
import json, sys
from prometheus_client.parser import text_string_to_metric_families
text = open(sys.argv[1], "rb").read().decode("utf-8")
out = []
for fam in text_string_to_metric_families(text):
    for s in fam.samples:
        if s.name == "smartflow_requests_total":
            out.append([s.labels, s.value])
print(json.dumps(out))
_PY_
    my $parsed = `/usr/bin/python3 -c '$py' '$mf' 2>&1`;
    my $rows = eval { $json->decode($parsed) };
    return ($rows, $parsed);
}

# a model whose label is cut inside a two-byte character (bytes, sent as
# they are); a body that is not UTF-8 is refused before it is routed
my $long = 'echo-' . ('a' x 57) . "\xc3\xa9-x";
is($gw->chat('hi', model => $long)->{status}, 200, 'a long model name');
is($gw->chat('hi', model => "echo-\xff-bad")->{status}, 400,
   'a model name with a byte that is not UTF-8: 400');

my ($rows, $raw) = metrics();
ok($rows, 'the metrics are valid UTF-8 and parse as Prometheus text')
    or diag substr($raw, 0, 600);
$rows //= [];
my %models = map { $_->[0]{model} => $_->[1] } @$rows;
is($models{'echo-' . ('a' x 57)}, 1,
   'the long name cut before the character that does not fit whole');
ok(!grep({ /bad/ } keys %models), 'the refused name has no series');

# past the table: 140 more names, then a refusal
for my $i (1 .. 140) {
    my $r = $gw->chat('hi', model => "echo-n-$i");
    is($r->{status}, 200, "model $i") if $r->{status} != 200;
}
is($gw->chat('hi', model => 'no-such-model')->{status}, 404,
   'a model no route names: 404');

($rows, $raw) = metrics();
ok($rows, 'the full table parses') or diag substr($raw, 0, 600);
$rows //= [];

my $sum = 0;
$sum += $_->[1] for @$rows;
is($sum, 143, 'every request counted once');

my ($other404) = grep { $_->[0]{model} eq 'other' && $_->[0]{status} eq '404' }
                 @$rows;
is($other404 && $other404->[1], 1,
   'the refusal after the table filled counted under its own status');

my @own = grep { $_->[0]{model} =~ /^echo-n-/ } @$rows;
is(scalar(grep { $_->[1] != 1 } @own), 0,
   'each name with a series of its own counted once')
    or diag explain \@own;
is($models{$long} // $models{'echo-' . ('a' x 57)}, 1,
   'the first series keep their labels and counts');
my ($other200) = grep { $_->[0]{model} eq 'other' && $_->[0]{status} eq '200' }
                 @$rows;
is(($other200 ? $other200->[1] : 0) + scalar(@own), 140,
   'the names past the table counted as "other"');

$gw->stop;

open my $log, '<', $gw->root . '/logs/error.log' or die $!;
my @bad = grep { /\[(alert|crit|emerg)\]/ } <$log>;
is_deeply(\@bad, [], 'no alert in the error log');

done_testing();
