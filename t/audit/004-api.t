# The audit endpoints against a real gateway: the receipt header, the
# record it names, GET /api/audit/proof/ID before and after the seal (and
# the proof checked offline by smartflow-verify), GET /api/audit/status,
# GET /api/vas/logs with its filters and pages, the master key checks,
# and GET /metrics parsed as Prometheus text by prometheus_client.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use Digest::SHA qw(sha256_hex);
use JSON::PP;
use Smartflow::Audit;
use Test::More;

my $conf = $ENV{TEST_NGINX_SMARTFLOW_CONF} // Smartflow::Audit::top() . '/conf';

my $gw = Smartflow::Audit->new(name => 'audit-api', workers => 2,
    http => "    smartflow_audit_segment_size 64k;\n"
          . "    smartflow_audit_seal_interval 1s;\n"
          . "    smartflow_audit_bodies 200;\n"
          . "    smartflow_price smartflow-echo 1 2;\n",
    server => "        include $conf/smartflow_audit.conf;\n");
$gw->setup->start;

my $json = JSON::PP->new;

# the receipt: the record's id and a commitment to the request body
my $r = $gw->chat('hello receipts', headers => {
    traceparent => '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' });
is($r->{status}, 200, 'a chat completion');
my $receipt = $r->{headers}{'smartflow-audit-receipt'} // '';
like($receipt, qr/^id=[0-9a-f]{32}; request-sha256=[0-9a-f]{64}$/,
     'its receipt header');
my ($id) = $receipt =~ /id=(\w+)/;
my ($commit) = $receipt =~ /request-sha256=(\w+)/;

my $err = $gw->chat('x', model => 'no-such-model');
is($err->{status}, 404, 'a refusal');
like($err->{headers}{'smartflow-audit-receipt'} // '', qr/^id=/,
     'a refusal has a receipt too');

# before the seal: the record, no proof yet
my $p = $gw->get("/api/audit/proof/$id", key => undef);
is($p->{status}, 202, 'not sealed yet: 202');
my $pending = $json->decode($p->{content});
is($pending->{sealed}, JSON::PP::false, 'the answer says so');
my $rec = $pending->{record};
is($rec->{request_id}, $id, 'the receipt names the record');
is($rec->{request_sha256}, $commit, 'the commitment is the record\'s');
is($rec->{trace_id}, '0af7651916cd43dd8448eb211c80319c', 'the trace id');
is($rec->{model}, 'smartflow-echo', 'the model');
is($rec->{provider}, 'demo', 'the provider');
is($rec->{deployment}, 'demo/smartflow-echo', 'the deployment');
is($rec->{status}, 200, 'the status');
is($rec->{key_id}, 'master', 'the key');
is($rec->{client}, '127.0.0.1', 'the client address');
is($rec->{endpoint}, '/v1/chat/completions', 'the endpoint');
is($rec->{response_sha256}, sha256_hex($r->{content}),
   'the response hash is of the body the client received');
is($rec->{response_complete}, JSON::PP::true, 'the whole body');
# smartflow_audit_bodies 200: the request whole, the answer cut
is_deeply($json->decode($rec->{request_body}),
          { model => 'smartflow-echo',
            messages => [ { role => 'user', content => 'hello receipts' } ] },
          'the request body kept');
is($rec->{request_body_cut}, JSON::PP::false, 'whole');
cmp_ok(length $r->{content}, ">", 200, 'the answer is longer than 200 bytes');
is($rec->{response_body}, substr($r->{content}, 0, 200),
   'its first 200 bytes kept, as the client got them');
is($rec->{response_body_cut}, JSON::PP::true, 'and marked cut');
cmp_ok($rec->{prompt_tokens}, '>', 0, 'prompt tokens');
cmp_ok($rec->{completion_tokens}, '>', 0, 'completion tokens');
# 1 and 2 USD per million tokens: a micro-dollar a prompt token, two an
# answer token, for the master key as for any other
is($rec->{cost_usd_micro},
   $rec->{prompt_tokens} + 2 * $rec->{completion_tokens},
   'the cost from smartflow_price');

# a record after the interval seals the segment
sleep 2;
$gw->chat('after the interval');
$gw->settle;

$p = $gw->get("/api/audit/proof/$id", key => undef);
is($p->{status}, 200, 'sealed: the proof')
    or diag $p->{content}, `ls -la --time-style=full-iso ${\ $gw->dir}`;
my $proof = $json->decode($p->{content});
is($proof->{seal}{segment_root}, $proof->{segment_root},
   'the proof\'s root is the sealed one');
is($proof->{record_sha256}, sha256_hex(pack 'H*', $proof->{record_hex}),
   'the record hash is of its bytes');

my $pf = $gw->root . '/proof.json';
open my $fh, '>', $pf or die; print $fh $p->{content}; close $fh;
my ($rc, $rep) = $gw->verify(undef, '--proof', $pf);
is($rc, 0, 'smartflow-verify checks the proof offline, against the folder')
    or diag explain $rep;

# a proof for another record does not hold
(my $bad = $p->{content}) =~ s/"index":(\d+)/'"index":' . ($1 + 1)/e;
open $fh, '>', $pf or die; print $fh $bad; close $fh;
($rc) = $gw->verify(undef, '--proof', $pf);
is($rc, 1, 'a proof with another index fails');

(my $bad2 = $p->{content}) =~ s/"record_hex":"(..)/'"record_hex":"' . ($1 eq '7b' ? '7c' : '7b')/e;
open $fh, '>', $pf or die; print $fh $bad2; close $fh;
($rc) = $gw->verify(undef, '--proof', $pf);
is($rc, 1, 'a proof for altered record bytes fails');

is($gw->get("/api/audit/proof/1")->{status}, 200,
   'a record by its number, with the master key');

# by its number any record could be read in turn: the master key's only
my $nokey = $gw->get("/api/audit/proof/1", key => undef);
is($nokey->{status}, 401, 'a record by its number without a key: 401');
is(eval { $json->decode($nokey->{content})->{error}{code} } // '',
   'missing_api_key', 'in the OpenAI format');
unlike($nokey->{content}, qr/hello receipts|request_id/,
       'nothing of the record');
my $other = $gw->get("/api/audit/proof/1", key => 'sk-not-the-master');
is($other->{status}, 403, 'with another key: 403');
is(eval { $json->decode($other->{content})->{error}{type} } // '',
   'permission_error', 'a permission error');
unlike($other->{content}, qr/hello receipts|request_id/,
       'nothing of the record');
is($gw->get("/api/audit/proof/" . ('0' x 32), key => undef)->{status}, 404,
   'an unknown id: 404');
is($gw->get("/api/audit/proof/zz", key => undef)->{status}, 400,
   'a malformed id: 400');

# status, master key only
is($gw->get('/api/audit/status', key => undef)->{status}, 401,
   'status without a key: 401');
is($gw->get('/api/audit/status', key => 'sk-wrong-0000000000')->{status},
   403, 'status with another key: 403');
my $st = $gw->get('/api/audit/status');
is($st->{status}, 200, 'status with the master key');
my $status = $json->decode($st->{content});
is($status->{records}, 3, 'three records');
cmp_ok($status->{last_sealed_segment}, '>=', 1, 'a seal');
($rc, $rep) = $gw->verify(undef, '--head', $status->{chain_head});
is($rc, 0, 'the folder verifies against the reported head');
is($rep->{log_root}, $status->{log_root}, 'the same log root');

# logs: filters and pages
for my $i (1 .. 5) { $gw->chat("page $i") }
my $l = $gw->get('/api/vas/logs', key => undef);
is($l->{status}, 401, 'logs without a key: 401');

sub logs {
    my $r = $gw->get("/api/vas/logs?$_[0]");
    return $r->{status} == 200 ? $json->decode($r->{content}) : $r->{status};
}

is(scalar @{ logs('')->{data} }, 8, 'every record');
is(scalar @{ logs('status=404')->{data} }, 1, 'by status');
is(logs('status=404')->{data}[0]{model}, 'no-such-model', 'the right one');
is(scalar @{ logs('model=smartflow-echo')->{data} }, 7, 'by model');
is(scalar @{ logs('key=master&status=200')->{data} }, 7, 'by key');
is(scalar @{ logs('team=nobody')->{data} }, 0, 'by team');
is(scalar @{ logs('from=' . (time + 3600))->{data} }, 0, 'by time');
is(scalar @{ logs('to=' . (time + 3600) . '&from=' . (time - 3600))->{data} },
   8, 'by time range');

my $page = logs('limit=3');
is(scalar @{ $page->{data} }, 3, 'a page of three');
is($page->{has_more}, JSON::PP::true, 'more to come');
my @seqs = map { $_->{seq} } @{ $page->{data} };
$page = logs("limit=3&after=$page->{next_after}");
push @seqs, map { $_->{seq} } @{ $page->{data} };
$page = logs("limit=3&after=$page->{next_after}");
push @seqs, map { $_->{seq} } @{ $page->{data} };
is($page->{has_more}, JSON::PP::false, 'the last page');
is_deeply(\@seqs, [ 1 .. 8 ], 'the pages hold every record once, in order');
is(logs('limit=0'), 400, 'a bad limit: 400');
is(logs('status=abc'), 400, 'a bad status: 400');

# times whose milliseconds do not fit in 64 bits: refused, not wrapped
is(logs('to=9223372036854775'), 400, 'a "to" past the year 9999: 400');
is(logs('from=9223372036854775'), 400, 'a "from" past the year 9999: 400');
is(scalar @{ logs('to=253402300799')->{data} }, 8,
   'the year 9999 is the last "to"');

# metrics, parsed by prometheus_client
my $m = $gw->get('/metrics', key => undef);
is($m->{status}, 200, 'metrics');
like($m->{headers}{'content-type'}, qr{^text/plain; version=0\.0\.4},
     'the Prometheus text type');

my $mf = $gw->root . '/metrics.txt';
open $fh, '>', $mf or die; print $fh $m->{content}; close $fh;

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
ok($fam, 'the metrics parse as Prometheus text') or diag $parsed;

sub sample {
    my ($name, %l) = @_;
    my $k = $name . JSON::PP->new->canonical->encode(\%l);
    $k =~ s/":"/": "/g; $k =~ s/","/", "/g;
    return $fam->{$k} ? $fam->{$k}{value} : undef;
}

my %ok = (model => 'smartflow-echo', provider => 'demo', status => '200');
is(sample('smartflow_requests_total', %ok), 7, 'requests by model, provider, status');
is(sample('smartflow_requests_total', model => 'demo/unrouted', provider => '', status => '404'),
   undef, 'no series for what a client made up')
    ;
is(sample('smartflow_request_duration_seconds_count', %ok), 7, 'a latency histogram');
is(sample('smartflow_request_duration_seconds_bucket', %ok, le => '+Inf'), 7,
   'its +Inf bucket');
cmp_ok(sample('smartflow_tokens_total', %ok, type => 'prompt') // 0, '>', 0,
       'prompt tokens');
is(sample('smartflow_audit_records_total'), 8, 'audit records');
is(sample('smartflow_audit_backlog'), 0, 'no backlog');
ok(defined sample('smartflow_audit_last_seal_age_seconds'), 'the last seal\'s age');
ok(defined sample('smartflow_cache_results_total', result => 'HIT', phase => '0'),
   'cache results by phase');

$gw->stop;

open my $log, '<', $gw->root . '/logs/error.log' or die $!;
my @bad = grep { /\[(alert|crit|emerg)\]/ } <$log>;
is_deeply(\@bad, [], 'no alert in the error log');

done_testing();
