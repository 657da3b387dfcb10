# Redis away, then back: node A (fail=open) keeps serving virtual keys
# from its zone, node B (fail=closed) refuses them with 503 in each
# client's format; the workers stay responsive, each node says so once in
# its error log, and when Redis answers again what A served meanwhile is
# given back.  Two outages: Redis frozen (SIGSTOP: connections hang, the
# timeout ends the wait) and Redis killed and started again empty.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(sleep time);
use lib 't/lib';
use Smartflow::Cluster;

my $c = Smartflow::Cluster->new(name => 'outage');
$c->redis_start;

my $a = $c->node('a', port => $ENV{TEST_NGINX_PORT} || 3100,
                 fail => 'open');
my $b = $c->node('b', port => $ENV{SMARTFLOW_REDIS_NODE_PORT} || 3111,
                 fail => 'closed');

my @master = ("Authorization: Bearer $Smartflow::Cluster::Master");
my $hello = '{"model":"smartflow-echo","messages":'
            . '[{"role":"user","content":"hello"}]}';
my $claude = '{"model":"smartflow-echo","max_tokens":16,"messages":'
             . '[{"role":"user","content":"hello"}]}';

sub chat {
    my ($node, $key) = @_;
    return $c->http($node, 'POST', '/v1/chat/completions', $hello,
                    "Authorization: Bearer $key");
}

sub tally {
    my %n;
    $n{$_->[0]}++ for @{ $_[0] };
    return join ', ', map { "$_ x$n{$_}" } sort keys %n;
}

sub count {
    my ($node, $re) = @_;
    my @n = $c->error_log($node) =~ /$re/g;
    return scalar @n;
}

sub wait_for {
    my ($what, $cond) = @_;
    my $t0 = time;
    until ($cond->()) {
        return fail "$what: not within 10 s" if time - $t0 > 10 * $c->{slow};
        sleep 0.1;
    }
    pass $what;
}

my ($status, $body) = $c->http($a, 'POST', '/api/auth/virtual-keys',
                               '{"name":"outage","budget_usd":1}', @master);
is $status, 201, 'key made';
my ($key) = $body =~ /"key":"(sk-sf-[0-9a-f]{48})"/;
my ($id) = $body =~ /"id":"vk_(\d+)"/;

# a second key, rotated during the outage
($status, $body) = $c->http($a, 'POST', '/api/auth/virtual-keys',
                            '{"name":"rotated-away"}', @master);
is $status, 201, 'a second key made';
my ($rid) = $body =~ /"id":"(vk_\d+)"/;

# 2 requests on B, then 3 on A: A's zone has seen all 5
for my $node ($b, $b, $a, $a, $a) {
    ($status) = chat($node, $key);
    is $status, 200, "served on $node->{name} with Redis";
}
wait_for 'their settlements reached Redis',
    sub { ($c->redis_cli('HGET', "sf:vk:c:$id", 'res') // '') eq '0' };
is $c->redis_cli('HGET', "sf:vk:c:$id", 'r'), 5, 'Redis counted 5';

# --- outage 1: Redis frozen ---
kill 'STOP', $c->{redis_pid};

# a rotation Redis cannot take (A does not know yet that it is frozen:
# the put times out) still gives its new secret: the old one has stopped
# on A, and a key nobody holds the secret of is of no use
($status, $body) = $c->http($a, 'POST', "/api/auth/virtual-keys/$rid/rotate",
                            undef, @master);
is $status, 200, 'a rotation on A while Redis is frozen answers' or diag $body;
my ($rotated) = $body =~ /"key":"(sk-sf-[0-9a-f]{48})"/;
ok $rotated, '... with the new secret';
($status) = chat($a, $rotated);
is $status, 200, 'the new secret works on A';

my $r = $c->burst(map { [$a, 'POST', '/v1/chat/completions', $hello,
                         "Authorization: Bearer $key"] } 1 .. 6);
is tally($r), '200 x6', 'A serves from its zone while Redis is frozen';

($status, $body) = chat($b, $key);
is $status, 503, 'B refuses the key while Redis is frozen';
like $body, qr/^\{"error":\{.*"code":"key_store_unavailable"/s,
     '... in the OpenAI format';

($status, $body) = $c->http($b, 'POST', '/v1/messages', $claude,
                            "x-api-key: $key",
                            'anthropic-version: 2023-06-01');
is $status, 503, 'B refuses an Anthropic client too';
like $body, qr/^\{"type":"error","error":\{"type":"api_error"/,
     '... in the Anthropic format';

($status) = $c->http($b, 'POST', '/v1/chat/completions', $hello, @master);
is $status, 200, 'the master key still works on B';

# every worker answers at once, none waits on the frozen Redis
$r = $c->burst(map { [$_ % 2 ? $a : $b, 'GET', '/ping'] } 1 .. 20);
is tally($r), '200 x20', 'both nodes answer while Redis is frozen';

($status, $body) = $c->http($a, 'POST', '/api/auth/virtual-keys',
                            '{"name":"during"}', @master);
is $status, 503, 'no key is made while Redis is away';
like $body, qr/key_store_unavailable/, '... the key store is unavailable';

kill 'CONT', $c->{redis_pid};

wait_for 'A says Redis answers again',
    sub { count($a, qr/redis \S+ answers again/) >= 1 };
wait_for 'Redis has what A served meanwhile',
    sub { ($c->redis_cli('HGET', "sf:vk:c:$id", 'r') // 0) == 11 };

is count($a, qr/redis \S+ unreachable/), 1,
   'one error_log line on A for the outage';
like $c->error_log($a), qr/served from the local zone/,
     '... saying keys are served from the zone';
is count($b, qr/redis \S+ unreachable/), 1,
   'one error_log line on B for the outage';
like $c->error_log($b), qr/refused with 503/, '... saying keys are refused';

wait_for 'B serves the key again', sub { (chat($b, $key))[0] == 200 };
wait_for 'B takes the secret rotated on A during the outage',
    sub { (chat($b, $rotated))[0] == 200 };
wait_for 'Redis counted 12',
    sub { ($c->redis_cli('HGET', "sf:vk:c:$id", 'r') // 0) == 12 };
wait_for '... and settled them',
    sub { ($c->redis_cli('HGET', "sf:vk:c:$id", 'res') // '') eq '0' };

# --- outage 2: Redis killed, started again without its data ---
($status) = chat($a, $key);
is $status, 200, 'A serves the key with Redis';
my $epoch = $c->redis_cli('GET', 'sf:vk:epoch');
$c->redis_stop;

$r = $c->burst(map { [$a, 'POST', '/v1/chat/completions', $hello,
                      "Authorization: Bearer $key"] } 1 .. 4);
is tally($r), '200 x4', 'A serves from its zone while Redis is down';
($status) = chat($b, $key);
is $status, 503, 'B refuses the key while Redis is down';

$c->redis_start;
wait_for 'the nodes find a Redis that lost its data', sub {
    my $now = $c->redis_cli('GET', 'sf:vk:epoch') // '';
    $now ne '' && $now ne $epoch };

wait_for 'Redis has the key again', sub {
    ($c->redis_cli('HGET', 'sf:vk:rev', $id) // '') =~ /^\d+$/ };
wait_for 'Redis counts 17 requests again',
    sub { ($c->redis_cli('HGET', "sf:vk:c:$id", 'r') // 0) == 17 }
    or diag 'Redis counts ', $c->redis_cli('HGET', "sf:vk:c:$id", 'r') // 'none';

wait_for 'B serves the key again', sub { (chat($b, $key))[0] == 200 };
wait_for 'B takes the secret rotated on A during the outage',
    sub { (chat($b, $rotated))[0] == 200 };

# a key made now works on both, its id after the ones Redis forgot
($status, $body) = $c->http($b, 'POST', '/api/auth/virtual-keys',
                            '{"name":"after"}', @master);
is $status, 201, 'a key is made after the restart';
my ($key2) = $body =~ /"key":"(sk-sf-[0-9a-f]{48})"/;
my ($id2) = $body =~ /"id":"vk_(\d+)"/;
ok $id2 > $id, 'its id is new';
($status) = chat($a, $key2);
is $status, 200, 'it works on the other node';

is count($a, qr/redis \S+ unreachable/), 2, 'one line on A per outage';
unlike $c->error_log($_), qr/\[(?:alert|crit|emerg)\]/,
       "no alert in the log of $_->{name}" for $a, $b;

done_testing;
