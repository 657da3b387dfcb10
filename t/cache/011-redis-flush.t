# DELETE /api/metacache with Redis: the node's zone and the shared phase 3
# entries in Redis go, all of them or one tenant's.  Two nginx nodes (two
# workers each) and a real redis-server: after a flush on node A, node B
# misses what A stored, another tenant's entries stay, keys that are not
# the cache's stay; B flushes its own zone too, told through a Redis
# stream, so what it kept itself goes as well.  Redis walked in several SCAN rounds (thousands of
# entries), Redis frozen during a flush (partial answer, 503), Redis down
# (503 at once, the zone flushed all the same).

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(sleep time);
use Digest::SHA qw(sha256_hex);
use lib 't/lib';
use Smartflow::Cluster;

my $c = Smartflow::Cluster->new(name => 'cache-flush');
$c->redis_start;

my %cache = (
    modules => ['cache'],
    http    => "    smartflow_cache_zone metacache 8m entries=200;\n"
               . "    smartflow_cache metacache;\n"
               . "    smartflow_cache_ttl 300s;\n",
    server  => "        include $c->{conf}/smartflow_cache.conf;\n"
               . "        location /local/api/metacache {\n"
               . "            smartflow_cache_api;\n"
               . "            smartflow_cache_redis off;\n"
               . "        }\n",
);

my $a = $c->node('a', port => $ENV{TEST_NGINX_PORT} || 3100, %cache);
my $b = $c->node('b', port => $ENV{SMARTFLOW_REDIS_NODE_PORT} || 3111,
                 %cache);

my @master = ("Authorization: Bearer $Smartflow::Cluster::Master");

sub ask {
    my ($node, $q, $key) = @_;
    my @h = $key ? ("Authorization: Bearer $key") : @master;
    return $c->http($node, 'POST', '/v1/chat/completions',
                    qq({"model":"smartflow-echo","messages":)
                    . qq([{"role":"user","content":"$q"}]}), @h);
}

sub flush {
    my ($node, $query, $path) = @_;
    $path //= '/api/metacache';
    return $c->http($node, 'DELETE', $path . ($query ? "?$query" : ''),
                    undef, @master);
}

sub cache_keys {
    my $out = $c->redis_cli('--scan', '--pattern', 'smartflow:cache:*');
    return grep { length } split /\n/, $out // '';
}

sub all_keys {
    my $out = $c->redis_cli('--scan', '--pattern', 'smartflow:*');
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

sub vkey {
    my ($name, $team) = @_;
    my $json = $team ? qq({"name":"$name","team":"$team"})
                     : qq({"name":"$name"});
    my ($status, $body) = $c->http($a, 'POST', '/api/auth/virtual-keys',
                                   $json, @master);
    is $status, 201, "virtual key $name made";
    my ($key) = $body =~ /"key":"(sk-sf-[^"]+)"/;
    my ($id) = $body =~ /"id":"?(vk_\d+|\d+)"?/;
    $id = "vk_$id" if defined $id && $id =~ /^\d+$/;
    return ($key, $id);
}

# a tenant's tag in the key names
sub tag { substr sha256_hex($_[0]), 0, 16 }

my ($red) = vkey('red1', 'red');
my ($blue) = vkey('blue1', 'blue');
my ($solo, $solo_id) = vkey('solo');
ok $solo_id && $solo_id =~ /^vk_\d+$/, "a teamless key's id ($solo_id)";

my $q1 = 'What is the boiling point of water at sea level?';
my $q2 = 'How far is the Moon from the Earth?';
my $q3 = 'Name the largest planet in the solar system.';
my $q4 = 'Which ocean is the deepest?';

my ($status, $body, $h);
ask($a, $q1);
ask($a, $q2, $red);
ask($a, $q3, $blue);
wait_for 'three answers in Redis', sub { cache_keys() == 3 };
is scalar(grep { /^smartflow:cache:\Q${\ tag('team:red')}\E:/ } cache_keys()),
   1, "red's entry is under red's tag";
$c->redis_cli('SET', $_, 'kept') for 'smartflow:cachex:1', 'smartflow:key:1';

# one tenant, flushed on A
($status, $body) = flush($a, 'tenant=red');
is $status, 200, 'flush of team red: 200';
like $body, qr/^\{"flushed":1,"redis":\{"flushed":1,"complete":true\}\}$/,
     'one entry from the zone, one from Redis';
is scalar(cache_keys()), 2, 'the other tenants\' entries stay in Redis';
like $c->error_log($a),
     qr/smartflow cache: flushed 1 entries of zone "metacache" in redis/,
     'the flush in the error log';

($status, $body, $h) = ask($b, $q2, $red);
is $status, 200, 'B answers red';
is $h->{'x-smartflow-cache'}, 'MISS', 'B: red\'s flushed entry is a miss';
($status, $body, $h) = ask($b, $q3, $blue);
is $h->{'x-smartflow-cache'}, 'HIT', 'B: blue\'s entry still hits';
is $h->{'x-smartflow-cache-phase'}, '3', 'from Redis';
wait_for 'red\'s answer stored again by B', sub { cache_keys() == 3 };

# what B kept of it (a phase 3 hit stays in B's zone) goes from B too
($status, $body, $h) = ask($b, $q3, $blue);
is $h->{'x-smartflow-cache-phase'}, '1', 'B kept blue\'s entry: phase 1';
($status, $body) = flush($a, 'tenant=blue');
like $body, qr/"redis":\{"flushed":1,/, 'flush of team blue on A';
wait_for 'B flushes its own copy, told through Redis', sub {
    $c->error_log($b) =~ /smartflow cache: flushed 1 entries of zone "metacache" \(tenant blue\) as another node did/;
};
($status, $body, $h) = ask($b, $q3, $blue);
is $h->{'x-smartflow-cache'}, 'MISS', 'B: blue\'s entry is gone from B too';
($status, $body, $h) = ask($b, $q2, $red);
is $h->{'x-smartflow-cache'}, 'HIT', 'B: red\'s entry stays';
unlike $c->error_log($a), qr/as another node did/,
       'A does not flush again what it told';
wait_for 'blue\'s answer stored again by B', sub { cache_keys() == 3 };

# a teamless key is its own tenant: tenant=vk_N
ask($a, $q4, $solo);
wait_for 'the teamless key\'s answer in Redis', sub { cache_keys() == 4 };
($status, $body) = flush($b, "tenant=$solo_id");
is $status, 200, "flush of $solo_id on B";
like $body, qr/"redis":\{"flushed":1,/, 'its one entry went from Redis';
($status, $body, $h) = ask($b, $q4, $solo);
is $h->{'x-smartflow-cache'}, 'MISS', 'B: a miss for it';
wait_for 'stored again', sub { cache_keys() == 4 };

# a tenant with nothing stored: nothing flushed, still a success
($status, $body) = flush($a, 'tenant=green');
is $status, 200, 'a tenant without entries: 200';
like $body, qr/^\{"flushed":0,"redis":\{"flushed":0,"complete":true\}\}$/,
     'nothing flushed';
is scalar(cache_keys()), 4, 'nothing went';

# the API's own smartflow_cache_redis off: the zone only
($status, $body) = flush($a, undef, '/local/api/metacache');
is $status, 200, 'a flush where phase 3 is off';
like $body, qr/^\{"flushed":\d+\}$/, 'answers for the zone only';
is scalar(cache_keys()), 4, 'Redis untouched';

# everything, flushed on A: B misses all A stored
($status, $body) = flush($a);
is $status, 200, 'flush of everything';
like $body, qr/"redis":\{"flushed":4,"complete":true\}/,
     'the four entries in Redis';
is scalar(cache_keys()), 0, 'none left in Redis';
is $c->redis_cli('EXISTS', 'smartflow:cachex:1', 'smartflow:key:1'), 2,
   'the keys that are not the cache\'s stay';
($status, $body, $h) = ask($b, $q1);
is $status, 200, 'B answers';
is $h->{'x-smartflow-cache'}, 'MISS', 'B: what A stored is gone';
wait_for 'B flushes all its zone, told through Redis', sub {
    $c->error_log($b) =~ /flushed \d+ entries of zone "metacache" \(every tenant\) as another node did/;
};

# many entries: several SCAN rounds, one tenant's only
my $script = q{for i = 1, tonumber(ARGV[2]) do
    redis.call('SET', ARGV[1] .. string.format('%064x', i),
               'sf1 9999999999 1 1 stop\n' .. i, 'EX', 300) end};
$c->redis_cli('EVAL', $script, 0, 'smartflow:cache:' . tag('team:red') . ':',
              2500);
$c->redis_cli('EVAL', $script, 0,
              'smartflow:cache:' . tag('team:blue') . ':', 1200);
$c->redis_cli('EVAL', $script, 0, 'smartflow:cache-like:', 300);
wait_for 'B\'s own answer in Redis', sub { cache_keys() == 3701 };
($status, $body) = flush($b, 'tenant=red');
is $status, 200, 'flush of red over 4,000 keys';
like $body, qr/"redis":\{"flushed":2500,"complete":true\}/,
     'every one of red\'s 2,500 entries';
is scalar(cache_keys()), 1201, 'blue\'s 1,200 and the master\'s one stay';
($status, $body) = flush($a);
like $body, qr/"redis":\{"flushed":1201,/, 'then all of them';
is scalar(grep { /^smartflow:cache-like:/ } all_keys()), 300,
   'keys of a like name but not the cache\'s stay';

# Redis frozen during a flush: a partial answer after the timeout
ask($a, $q1);
wait_for 'an answer in Redis', sub { cache_keys() == 1 };
kill 'STOP', $c->{redis_pid};
my $t0 = time;
($status, $body) = flush($a);
my $took = time - $t0;
kill 'CONT', $c->{redis_pid};
is $status, 503, 'Redis frozen: 503';
like $body, qr/^\{"error":\{"message":"Redis \S+ did not answer: this node's cache was flushed \(1 entries\), the shared entries in Redis only in part \(0\)\./,
     'says what was flushed and what not';
like $body, qr/"code":"redis_unavailable"\},"flushed":1,"redis":\{"flushed":0,"complete":false\}\}$/,
     'with the counts';
like $c->error_log($a),
     qr/smartflow cache: redis \S+ did not answer: the flush of zone "metacache" is partial/,
     'the error log says so';
ok $took < 10, 'answered after the timeout';
wait_for 'Redis answers A again', sub {
    my ($s, $bd) = flush($a);
    $s == 200;
};
is scalar(cache_keys()), 0, 'the next flush took it';

# Redis down: at once, the zone flushed all the same
ask($a, $q2, $red);
$c->redis_stop;
sleep 0.3;
($status, $body, $h) = ask($a, $q2, $red);
is $h->{'x-smartflow-cache'}, 'HIT', 'Redis down: A\'s zone answers';
($status, $body) = flush($a, 'tenant=red');
is $status, 503, 'Redis down: 503';
like $body, qr/"message":"Redis \S+ (?:is unreachable|did not answer): this node's cache was flushed \(1 entries\)/,
     'the zone was flushed, Redis not';
like $body, qr/"flushed":1,"redis":\{"flushed":0,"complete":false\}/,
     'the counts';
($status, $body, $h) = ask($a, $q2, $red);
is $h->{'x-smartflow-cache'}, 'MISS', 'the zone\'s entry is gone';

for my $node ($a, $b) {
    unlike $c->error_log($node), qr/\[(?:alert|crit|emerg)\]|signal \d+/,
           "$node->{name}: no crash";
}

done_testing;
