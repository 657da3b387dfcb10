# What the cache saved, in GET /api/metacache/stats and on the metrics
# endpoint (the audit module's GET /metrics, Prometheus text parsed by
# prometheus_client): each hit saves the stored answer's usage, as the
# provider (the mock) reported it on the miss, and its cost at the
# smartflow_price of the model asked for; a hit on a model without a
# price adds tokens and counts as unpriced, no cost.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use JSON::PP;
use POSIX qw(ceil);
use Smartflow::Audit;
use Smartflow::Mock;
use Test::More;

my $conf = $ENV{TEST_NGINX_SMARTFLOW_CONF} // Smartflow::Audit::top() . '/conf';
my $mock = Smartflow::Mock::port();

# USD per million tokens, in and out
my ($in, $out) = (150, 600);

my $gw = Smartflow::Audit->new(name => 'cache-savings', workers => 2,
    http => "    upstream sf_mock { server 127.0.0.1:$mock; }\n"
          . "    smartflow_provider openai type=openai upstream=http://sf_mock"
          . " path=/v1 key=sk-provider-test-key;\n"
          . "    smartflow_route gpt-* openai;\n"
          . "    smartflow_route unpriced-echo demo;\n"
          . "    smartflow_price gpt-4o* $in $out;\n"
          . "    smartflow_cache_zone metacache 16m entries=1000;\n"
          . "    smartflow_cache_zone \"other\" 8m entries=100;\n"
          . "    smartflow_cache metacache;\n",
    server => "        include $conf/smartflow_audit.conf;\n"
            . "        include $conf/smartflow_cache.conf;\n");
$gw->setup->start;

my $json = JSON::PP->new;

sub ask {
    my ($q, %o) = @_;
    my $r = $gw->chat($q, %o);
    my $body = $o{stream} ? undef : eval { $json->decode($r->{content}) };
    return ($r, $body);
}

my $reply = 'A monad is a monoid in the category of endofunctors.';
my %mock = (model => 'gpt-4o-mini', headers => { 'x-mock-reply' => $reply });

my ($r, $b) = ask('What is a monad?', %mock);
is $r->{status}, 200, 'answered by the provider';
is $r->{headers}{'x-smartflow-cache'}, 'MISS', 'a miss';
my ($p, $c) = @{ $b->{usage} }{qw(prompt_tokens completion_tokens)};
ok $p > 0 && $c > 0, "the provider's usage: $p prompt, $c completion";
like $b->{choices}[0]{message}{content}, qr/monoid/, 'its answer';

($r, $b) = ask('what is a monad', %mock);
is $r->{headers}{'x-smartflow-cache'}, 'HIT', 'a hit';
is $b->{usage}{prompt_tokens}, 0, 'served with usage 0';
($r) = ask('What is a MONAD?', %mock, stream => 1);
is $r->{headers}{'x-smartflow-cache'}, 'HIT', 'a streamed hit';

# the echo provider, no price for this name
($r, $b) = ask('Which ocean is the deepest?', model => 'unpriced-echo');
is $r->{headers}{'x-smartflow-cache'}, 'MISS', 'no price: a miss';
my ($p2, $c2) = @{ $b->{usage} }{qw(prompt_tokens completion_tokens)};
($r) = ask('Which ocean is the deepest?', model => 'unpriced-echo');
is $r->{headers}{'x-smartflow-cache'}, 'HIT', 'no price: a hit';

# what one hit of the mock's answer costs, rounded up to a micro-USD
my $micro = ceil(($p * $in * 1e6 + $c * $out * 1e6) / 1e6);
my $usd = sprintf '%.6f', 2 * $micro / 1e6;
ok $micro > 0, "one hit saves $micro micro-USD";

$r = $gw->get('/api/metacache/stats');
is $r->{status}, 200, 'the statistics';
my $st = $json->decode($r->{content});
is $st->{hits}{total}, 3, 'three hits';
is $st->{tokens_saved}, 2 * ($p + $c) + $p2 + $c2,
   'tokens saved: the stored answers\' usage, per hit';
is $st->{saved}{prompt_tokens}, 2 * $p + $p2, 'prompt tokens saved';
is $st->{saved}{completion_tokens}, 2 * $c + $c2, 'completion tokens saved';
is sprintf('%.6f', $st->{saved}{cost_usd}), $usd,
   "cost saved: two hits at the model's price ($usd USD)";
is $st->{saved}{unpriced_hits}, 1, 'one hit had no price';
like $r->{content}, qr/"cost_usd":\d+\.\d{6},/, 'in USD, six decimals';

# the same on the metrics endpoint
$r = $gw->get('/metrics', key => undef);
is $r->{status}, 200, 'metrics';
my $mf = $gw->root . '/metrics.txt';
open my $fh, '>', $mf or die;
print $fh $r->{content};
close $fh;

my $py = <<'_PY_';
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in fam.samples:
        key = s.name + json.dumps(s.labels, sort_keys=True)
        out[key] = {"type": fam.type, "value": s.value}
print(json.dumps(out))
_PY_
my $parsed = `/usr/bin/python3 -c '$py' '$mf' 2>&1`;
my $fam = eval { $json->decode($parsed) };
ok $fam, 'the metrics parse as Prometheus text' or diag $parsed;

sub sample {
    my ($name, %l) = @_;
    my $k = $name . JSON::PP->new->canonical->encode(\%l);
    $k =~ s/":"/": "/g;
    $k =~ s/","/", "/g;
    return $fam->{$k};
}

sub value { my $s = sample(@_); $s ? $s->{value} : undef }

my %z = (zone => 'metacache');
is value('smartflow_metacache_entries', %z), 2, 'entries';
is sample('smartflow_metacache_entries', %z)->{type}, 'gauge', 'a gauge';
is value('smartflow_metacache_capacity_entries', %z), 1000, 'capacity';
is value('smartflow_metacache_memory_bytes', %z, type => 'size'),
   16 * 1024 * 1024, 'the zone\'s size';
my $used = value('smartflow_metacache_memory_bytes', %z, type => 'used');
ok $used > 0 && $used <= 16 * 1024 * 1024, "memory used ($used)";
is value('smartflow_metacache_lookups_total', %z), 5, 'lookups';
is value('smartflow_metacache_hits_total', %z, phase => '1'), 3,
   'hits in phase 1';
is sample('smartflow_metacache_hits_total', %z, phase => '1')->{type},
   'counter', 'a counter';
is value('smartflow_metacache_hits_total', %z, phase => "$_"), 0,
   "no hit in phase $_" for 2 .. 4;
is value('smartflow_metacache_misses_total', %z), 2, 'misses';
is value('smartflow_metacache_stores_total', %z), 2, 'stores';
is value('smartflow_metacache_tokens_saved_total', %z, type => 'prompt'),
   2 * $p + $p2, 'prompt tokens saved';
is value('smartflow_metacache_tokens_saved_total', %z, type => 'completion'),
   2 * $c + $c2, 'completion tokens saved';
is sprintf('%.6f', value('smartflow_metacache_cost_saved_usd_total', %z)),
   $usd, 'cost saved';
is value('smartflow_metacache_unpriced_hits_total', %z), 1, 'unpriced hits';
is value('smartflow_metacache_entries', zone => 'other'), 0,
   'each zone has its own series';
is value('smartflow_metacache_lookups_total', zone => 'other'), 0,
   'the other zone looked nothing up';
ok defined value('smartflow_requests_total', model => 'gpt-4o-mini',
                 provider => 'openai', status => '200'),
   'the audit\'s own metrics are still there';

# a flush empties the zone, the counters stay counters
$r = $gw->http->request('DELETE', 'http://127.0.0.1:' . $gw->port
                        . '/api/metacache', { headers => {
    Authorization => "Bearer $Smartflow::Audit::MasterKey" } });
is $r->{status}, 200, 'flushed';
$r = $gw->get('/metrics', key => undef);
like $r->{content}, qr/^smartflow_metacache_entries\{zone="metacache"\} 0$/m,
     'no entries after the flush';
like $r->{content},
     qr/^smartflow_metacache_hits_total\{zone="metacache",phase="1"\} 3$/m,
     'the hits are still counted';

$gw->stop;
unlike scalar(`cat $gw->{root}/logs/error.log`),
       qr/\[(?:alert|crit|emerg)\]|exited on signal/, 'no crash';

done_testing;
