# Phase 3 of the MetaCache: two nginx nodes (two workers each) share one
# real redis-server through smartflow_redis.  An answer stored by node A
# is a phase 3 hit on node B, kept in B's zone afterwards (phase 1 there);
# the entry lives in Redis for the cache TTL; partitions stay apart; a
# damaged entry is ignored; with Redis killed both nodes go on answering
# from their own zones, with one error_log line each, and phase 3 comes
# back with Redis.  The echo provider answers with the question, so a hit
# shows in the body the question it was stored for.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(sleep time);
use lib 't/lib';
use Smartflow::Cluster;

my $c = Smartflow::Cluster->new(name => 'cache');
$c->redis_start;

my %cache = (
    modules => ['cache'],
    http    => "    smartflow_cache_zone metacache 8m entries=200;\n"
               . "    smartflow_cache metacache;\n"
               . "    smartflow_cache_ttl 60s;\n",
    server  => "        include $c->{conf}/smartflow_cache.conf;\n"
               . "        location = /local/v1/chat/completions {\n"
               . "            smartflow_api chat;\n"
               . "            smartflow_cache_redis off;\n"
               . "            include $c->{conf}/smartflow_proxy.conf;\n"
               . "        }\n",
);

my $a = $c->node('a', port => $ENV{TEST_NGINX_PORT} || 3100, %cache);
my $b = $c->node('b', port => $ENV{SMARTFLOW_REDIS_NODE_PORT} || 3111,
                 %cache);

my @master = ("Authorization: Bearer $Smartflow::Cluster::Master");

sub body {
    my ($q, %o) = @_;
    return '{"model":"smartflow-echo",'
           . ($o{stream} ? '"stream":true,' : '')
           . qq("messages":[{"role":"user","content":"$q"}]});
}

sub ask {
    my ($node, $q, @h) = @_;
    my $stream = 0;
    if ($q eq 'stream') {
        $stream = 1;
        $q = shift @h;
    }
    return $c->http($node, 'POST', '/v1/chat/completions',
                    body($q, stream => $stream), @h ? @h : @master);
}

sub keys_in_redis {
    my $out = $c->redis_cli('--scan', '--pattern', 'smartflow:cache:*');
    return grep { length } split /\n/, $out // '';
}

sub wait_for {
    my ($what, $cond) = @_;
    my $t0 = time;
    until ($cond->()) {
        return fail "$what: not within 10 s" if time - $t0 > 10;
        sleep 0.1;
    }
    pass $what;
}

sub count {
    my ($node, $re) = @_;
    my @n = $c->error_log($node) =~ /$re/g;
    return scalar @n;
}

# stored through A, found by B in Redis
my $q1 = 'What is the boiling point of water at sea level?';
my ($status, $body, $h) = ask($a, $q1);
is $status, 200, 'A answers';
is $h->{'x-smartflow-cache'}, 'MISS', 'A: a miss the first time';
wait_for 'A put the answer in Redis', sub { keys_in_redis() == 1 };

my ($key) = keys_in_redis();
like $key, qr/^smartflow:cache:[0-9a-f]{16}:[0-9a-f]{64}$/,
     "keyed by the partition's tag and the SHA-256";
my $ttl = $c->redis_cli('TTL', $key);
ok $ttl > 50 && $ttl <= 60, "the entry lives the cache TTL in Redis ($ttl)";
like $c->redis_cli('GET', $key), qr/^sf1 \d+ \d+ \d+ stop\n/,
     'the entry holds its expiry, token counts and finish reason';

($status, $body, $h) = ask($b, $q1);
is $status, 200, 'B answers';
is $h->{'x-smartflow-cache'}, 'HIT', 'B: a hit';
is $h->{'x-smartflow-cache-phase'}, '3', 'B: from phase 3 (Redis)';
ok !exists $h->{'x-smartflow-cache-similarity'}, 'an exact hit: no similarity';
like $body, qr/\Q$q1\E/, 'B serves the answer A stored';
like $body, qr/"prompt_tokens":0/, 'a hit costs no tokens';

($status, $body, $h) = ask($b, $q1);
is $h->{'x-smartflow-cache-phase'}, '1',
   'the hit was kept in B\'s zone: phase 1 next';

# normalised: case and spacing do not matter across nodes either
($status, $body, $h) = ask($a, 'How far is the Moon from the Earth?');
is $h->{'x-smartflow-cache'}, 'MISS', 'A: another question, a miss';
wait_for 'its answer is in Redis', sub { keys_in_redis() == 2 };
($status, $body, $h) = ask($b, 'how far is the   moon from the earth');
is $h->{'x-smartflow-cache-phase'}, '3',
   'B: the normalised question is a phase 3 hit';

# streamed on B, stored plain on A
($status, $body, $h) = ask($b, 'stream', $q1 =~ s/water/milk/r);
is $h->{'x-smartflow-cache'}, 'MISS', 'B: a new question, streamed: miss';
wait_for 'its streamed answer is in Redis', sub { keys_in_redis() == 3 };
($status, $body, $h) = ask($a, $q1 =~ s/water/milk/r);
is $h->{'x-smartflow-cache-phase'}, '3', 'A: a phase 3 hit';
like $body, qr/"object":"chat\.completion"/, 'served whole to a plain client';
($status, $body, $h) = ask($a, 'stream', 'Name the largest planet.');
wait_for 'one more in Redis', sub { keys_in_redis() == 4 };
($status, $body, $h) = ask($b, 'stream', 'Name the largest planet.');
is $h->{'x-smartflow-cache-phase'}, '3', 'B: streamed phase 3 hit';
like $body, qr/data: .*Name the largest planet.*\ndata: \[DONE\]/s,
     'as SSE to a streaming client';

# another tenant does not see it
($status, $body) = $c->http($a, 'POST', '/api/auth/virtual-keys',
                            '{"name":"other"}', @master);
is $status, 201, 'a virtual key made';
my ($vk) = $body =~ /"key":"(sk-sf-[^"]+)"/;
($status, $body, $h) = ask($b, $q1, "Authorization: Bearer $vk");
is $status, 200, 'the key is known on B';
is $h->{'x-smartflow-cache'}, 'MISS', 'another partition: no phase 3 hit';

# smartflow_cache_redis off: neither read nor written
($status, $body, $h) = $c->http($b, 'POST', '/local/v1/chat/completions',
                                body('What colour is the sky?'), @master);
is $h->{'x-smartflow-cache'}, 'MISS', 'off: a miss';
my $n = keys_in_redis();
($status, $body, $h) = $c->http($a, 'POST', '/local/v1/chat/completions',
                                body('What colour is the sky?'), @master);
is $h->{'x-smartflow-cache'}, 'MISS', 'off: not found in Redis';
sleep 0.3;
is scalar(keys_in_redis()), $n, 'off: nothing written to Redis';

# the request's own TTL goes to Redis; expired there, expired everywhere
my $q2 = 'How many legs does a spider have?';
($status, $body, $h) = ask($a, $q2, @master, 'x-smartflow-cache-ttl: 2');
is $h->{'x-smartflow-cache'}, 'MISS', 'A: a short-lived answer';
my $t0 = time;
wait_for 'in Redis', sub { keys_in_redis() == $n + 1 };
my ($k2) = grep { $c->redis_cli('GET', $_) =~ /spider/ } keys_in_redis();
ok $k2 && $c->redis_cli('TTL', $k2) <= 2, 'with its own TTL';
sleep(3.2 - (time - $t0));
($status, $body, $h) = ask($b, $q2);
is $h->{'x-smartflow-cache'}, 'MISS', 'expired in Redis: B misses';

# a damaged entry is ignored
my $q3 = 'Which ocean is the deepest?';
ask($a, $q3);
wait_for 'the entry is in Redis',
    sub { grep { $c->redis_cli('GET', $_) =~ /ocean/ } keys_in_redis() };
my ($k3) = grep { $c->redis_cli('GET', $_) =~ /ocean/ } keys_in_redis();
$c->redis_cli('SET', $k3, 'not an entry', 'EX', '60');
($status, $body, $h) = ask($b, $q3);
is $status, 200, 'a damaged entry: answered';
is $h->{'x-smartflow-cache'}, 'MISS', 'a damaged entry: a miss';
is count($b, qr/smartflow cache: redis \S+ holds a damaged entry/), 1,
   'said once in the error log';

# entries no node writes: a finish reason the store does not keep (this
# one would break the JSON served), token counts past what an entry holds
# (they would go to the savings), text that is not UTF-8, an answer larger
# than any the store keeps (it would be copied, kept and served): each a
# miss
my $exp = int(time) + 60;
my @bad = (
    [ 'Which ocean is the largest?', qq(sf1 $exp 3 4 st"op\nThe Pacific.),
      'a finish reason with a quote' ],
    [ 'Which ocean is the coldest?',
      qq(sf1 $exp 99999999999999 4 stop\nThe Arctic.),
      'a prompt of 99999999999999 tokens' ],
    [ 'Which ocean is the saltiest?', qq(sf1 $exp 3 4 stop\nThe \xff sea.),
      'a byte that is not UTF-8' ],
    [ 'Which ocean is the warmest?',
      qq(sf1 $exp 3 4 stop\n) . ('The Indian. ' x 25000),
      'an answer past smartflow_cache_max_size' ],
);
for my $bad (@bad) {
    my ($q, $entry, $what) = @$bad;
    ask($a, $q);
    wait_for "$what: the entry is in Redis",
        sub { grep { $c->redis_cli('GET', $_) =~ /\Q$q\E/ } keys_in_redis() };
    my ($k) = grep { $c->redis_cli('GET', $_) =~ /\Q$q\E/ } keys_in_redis();
    # at most 100 KB an argument: a long entry goes in parts
    $c->redis_cli('SET', $k, substr($entry, 0, 100_000), 'EX', '60');
    for (my $i = 100_000; $i < length $entry; $i += 100_000) {
        $c->redis_cli('APPEND', $k, substr($entry, $i, 100_000));
    }
    ($status, $body, $h) = ask($b, $q);
    is $status, 200, "$what: answered";
    is $h->{'x-smartflow-cache'}, 'MISS', "$what: a miss";
    like $body, qr/"content":"Echo: \Q$q\E"/, "$what: the provider's answer";
}
is count($b, qr/smartflow cache: redis \S+ holds a damaged entry/), 5,
   'each said in the error log';
($status, $body) = $c->http($b, 'GET', '/api/metacache/stats', undef,
                            @master);
like $body, qr/"tokens_saved":\d{1,3},/, 'no damaged count in the savings';

# statistics
($status, $body) = $c->http($b, 'GET', '/api/metacache/stats', undef,
                            @master);
like $body, qr/"phase3":3\b/, 'B counts its phase 3 hits';

# Redis frozen: a lookup waits at most smartflow_redis's timeout
kill 'STOP', $c->{redis_pid};
($status, $body, $h) = ask($b, 'Which metal is liquid at room temperature?');
is $status, 200, 'Redis frozen: answered';
is $h->{'x-smartflow-cache'}, 'MISS', 'Redis frozen: a miss';
kill 'CONT', $c->{redis_pid};
is count($b, qr/smartflow cache: redis \S+ did not answer; phase 3 is skipped/),
   1, 'B: one error_log line for the freeze';
wait_for 'Redis answers B again', sub {
    ask($b, 'Which gas do plants take in?', @master,
        'Cache-Control: no-cache');
    count($b, qr/smartflow cache: redis \S+ answers again/) == 1;
};
wait_for 'and A', sub {
    ask($a, 'Which gas do plants give off?', @master,
        'Cache-Control: no-cache');
    $c->error_log($a) !~ /phase 3 is skipped/
        || count($a, qr/smartflow cache: redis \S+ answers again/) == 1;
};

# Redis there but refusing every command (a replica cut off from its
# master): one error_log line for the outage on each node, not one for
# each GET and SET, and one when it serves again
my $refused = qr/smartflow cache: redis \S+ refused (?:GET|SET|XREAD): MASTERDOWN/;
my $skipped = qr/smartflow cache: redis .*; phase 3 is skipped/;
my $again = qr/smartflow cache: redis \S+ answers again/;

# each node out of the freeze's outage first (a worker may have seen it
# later than the other): as many lines for its end as for its start
for my $node ($a, $b) {
    wait_for "$node->{name}: no outage going on", sub {
        ask($node, 'Which bird is the largest?', @master,
            'Cache-Control: no-cache');
        count($node, $skipped) == count($node, $again);
    };
}

my %back = map { $_->{name} => count($_, $again) } $a, $b;
$c->redis_cli('CONFIG', 'SET', 'replica-serve-stale-data', 'no');
$c->redis_cli('REPLICAOF', '127.0.0.1', '1');
for my $i (1 .. 4) {
    ($status, $body, $h) = ask($b, "Which bird is the fastest, take $i?");
    is $status, 200, "refusing Redis, request $i: answered";
    is $h->{'x-smartflow-cache'}, 'MISS', "refusing Redis, request $i: a miss";
}
sleep 2.5;    # the flushes told are read once a second
is count($b, $refused), 1, 'B: one error_log line for four GETs and SETs';
is count($a, $refused), 1, 'A: one for its reads of the flushes told';
$c->redis_cli('REPLICAOF', 'NO', 'ONE');
for my $node ($a, $b) {
    wait_for "$node->{name}: Redis serves again", sub {
        ask($node, 'Which bird is the slowest?', @master,
            'Cache-Control: no-cache');
        count($node, $again) > $back{$node->{name}};
    };
}

# Redis killed: both nodes answer from their zones, phase 3 skipped
my $down = qr/smartflow cache: redis \S+ [^;\n]+; phase 3 is skipped/;
my %before = map { $_->{name} => count($_, $down) } $a, $b;
$c->redis_stop;

for my $node ($a, $b) {
    for (1 .. 3) {
        ($status, $body, $h) = ask($node, 'Who wrote War and Peace?');
        is $status, 200, "$node->{name}: answered without Redis";
    }
    is $h->{'x-smartflow-cache'}, 'HIT', "$node->{name}: its zone still hits";
    is $h->{'x-smartflow-cache-phase'}, '1', "$node->{name}: phase 1";
}
($status, $body, $h) = ask($b, $q1);
is $h->{'x-smartflow-cache-phase'}, '1', 'B: what it kept still hits';

for my $node ($a, $b) {
    is count($node, $down) - $before{$node->{name}}, 1,
       "$node->{name}: one error_log line for the outage";
}

# Redis back (empty): phase 3 again
$c->redis_start;
my $q4 = 'What is the capital of Australia?';
wait_for 'A stores in Redis again', sub {
    ask($a, $q4, @master, 'Cache-Control: no-cache');
    keys_in_redis() == 1;
};
($status, $body, $h) = ask($b, $q4);
is $h->{'x-smartflow-cache-phase'}, '3', 'B: phase 3 hit after the outage';
like $body, qr/Australia/, 'with the answer';
wait_for 'B says Redis is back',
    sub { count($b, qr/smartflow cache: redis \S+ answers again/) >= 1 };

for my $node ($a, $b) {
    unlike $c->error_log($node), qr/\[(?:alert|crit|emerg)\]|signal \d+/,
           "$node->{name}: no crash";
}

done_testing;
