# x-smartflow-cache: refresh with Redis: the entry the request refreshes
# goes from the zone and from Redis as the request goes on to the
# provider, whether the new answer is stored or not, so that no node finds
# the old one in Redis afterwards.  Two nginx nodes share one real
# redis-server; the answer of the refresh here is over the location's
# smartflow_cache_max_size, so nothing takes the old entry's place.

use strict;
use warnings;

use Test::More;
use lib 't/lib';
use Smartflow::Cluster;

my $c = Smartflow::Cluster->new(name => 'cache-refresh');
$c->redis_start;

my %cache = (
    modules => ['cache'],
    http    => "    smartflow_cache_zone metacache 8m entries=200;\n"
               . "    smartflow_cache metacache;\n"
               . "    smartflow_cache_ttl 60s;\n",
    server  => "        include $c->{conf}/smartflow_cache.conf;\n"
               . "        location = /small/v1/chat/completions {\n"
               . "            smartflow_api chat;\n"
               . "            smartflow_cache_max_size 16;\n"
               . "            include $c->{conf}/smartflow_proxy.conf;\n"
               . "        }\n",
);

my $a = $c->node('a', port => $ENV{TEST_NGINX_PORT} || 3100, %cache);
my $b = $c->node('b', port => $ENV{SMARTFLOW_REDIS_NODE_PORT} || 3111,
                 %cache);

my @master = ("Authorization: Bearer $Smartflow::Cluster::Master");

sub ask {
    my ($node, $q, $path, @h) = @_;
    my ($status, $body, $h) = $c->http($node, 'POST',
        $path // '/v1/chat/completions',
        qq({"model":"smartflow-echo","messages":)
        . qq([{"role":"user","content":"$q"}]}), @master, @h);
    return ($h->{'x-smartflow-cache'} // "status $status",
            $h->{'x-smartflow-cache-phase'} // '-', $status);
}

sub keys_in_redis {
    my $out = $c->redis_cli('--scan', '--pattern', 'smartflow:cache:*');
    return scalar grep { length } split /\n/, $out // '';
}

my $q1 = 'What is the boiling point of water at sea level?';
my $q2 = 'How far is the Moon from the Earth?';

# stored through A: in A's zone and in Redis
is((ask($a, $q1))[0], 'MISS', 'q1 stored through A');
is((ask($a, $q1))[0], 'HIT', 'q1 in the zone of A');
is keys_in_redis(), 1, 'and in Redis';

# a refresh whose answer is not stored: the old entry goes all the same
my @r = ask($a, $q1, '/small/v1/chat/completions',
            'x-smartflow-cache: refresh');
is $r[2], 200, 'the refresh answered';
is $r[0], 'BYPASS', 'looked nothing up';
is keys_in_redis(), 0, 'the old entry went from Redis';
is((ask($b, $q1))[0], 'MISS', 'B finds nothing in Redis');
is((ask($b, $q1))[0], 'HIT', 'and stores the new answer');

# the zone of A lost it too: its next ask finds B's answer in Redis
my @p = ask($a, $q1);
is "$p[0] $p[1]", 'HIT 3', 'A: not from its zone, from Redis';

# a refresh that is stored puts the new answer in both places
is((ask($a, $q2))[0], 'MISS', 'q2 stored through A');
is((ask($a, $q2, undef, 'x-smartflow-cache: refresh'))[0], 'BYPASS',
   'q2 refreshed');
is keys_in_redis(), 2, 'q1 and the new q2 in Redis';
is((ask($a, $q2))[0], 'HIT', 'the new q2 in the zone');

# bypass after refresh: the strictest wins, nothing is touched
is((ask($a, $q2, undef, 'x-smartflow-cache: refresh',
        'x-smartflow-cache: bypass'))[0], 'BYPASS', 'refresh and bypass');
is((ask($a, $q2))[0], 'HIT', 'q2 kept');
is keys_in_redis(), 2, 'and kept in Redis';

# (under ASan, a worker's first connection to Redis may time out: the
# proxy's line, not the cache's)
my $bad = qr/\[(?:alert|crit|emerg)\]|exited on signal
             |\[error\].*smartflow\ cache/x;
unlike $c->error_log($a), $bad, 'no cache error on A';
unlike $c->error_log($b), $bad, 'no cache error on B';

done_testing;
