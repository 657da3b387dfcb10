# With Redis, a node's restart (even without its state file) and reload
# keep keys, rate windows and spend: they live in Redis, and the node
# takes them back from there.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(sleep time);
use lib 't/lib';
use Smartflow::Cluster;

my $c = Smartflow::Cluster->new(name => 'restart');
$c->redis_start;

my $a = $c->node('a', port => $ENV{TEST_NGINX_PORT} || 3100);
my $b = $c->node('b', port => $ENV{SMARTFLOW_REDIS_NODE_PORT} || 3111);

my @master = ("Authorization: Bearer $Smartflow::Cluster::Master");
my $hello = '{"model":"smartflow-echo","messages":'
            . '[{"role":"user","content":"hello"}]}';

sub create {
    my ($node, $spec) = @_;
    my ($status, $body) = $c->http($node, 'POST', '/api/auth/virtual-keys',
                                   $spec, @master);
    is $status, 201, "key made: $spec" or diag $body;
    return ($body =~ /"key":"(sk-sf-[0-9a-f]{48})"/,
            $body =~ /"id":"vk_(\d+)"/);
}

# a counter of a key in Redis, within 10 s
sub wait_counter {
    my ($id, $field, $want) = @_;
    my $t0 = time;
    my $got;
    while (time - $t0 < 10 * $c->{slow}) {
        $got = $c->redis_cli('HGET', "sf:vk:c:$id", $field) // '';
        last if $got eq $want;
        sleep 0.05;
    }
    is $got, $want, "Redis holds $field $want for vk_$id";
}

sub chat {
    my ($node, $key) = @_;
    return $c->http($node, 'POST', '/v1/chat/completions', $hello,
                    "Authorization: Bearer $key");
}

my ($budget, $bid) = create($a, '{"name":"spend","budget_usd":0.000003}');
my ($rpm, $rid) = create($a, '{"name":"window","rpm":4}');

is((chat($a, $budget))[0], 200, "spend $_") for 1 .. 3;
is((chat($a, $rpm))[0], 200, "window $_") for 1 .. 2;
# settled in Redis before A stops
wait_counter($bid, 'sp', 3);
wait_counter($bid, 'res', 0);
wait_counter($rid, 'wres', 0);

# A restarts without its state file: all it knows comes from Redis
$c->stop($a);
unlink "$a->{dir}/state/keys.state";
ok !-e "$a->{dir}/state/keys.state", 'the state file of A is gone';
$c->start($a);

my ($status, $body) = chat($a, $budget);
is $status, 429, 'the spend survives the restart of A';
like $body, qr/insufficient_quota/, '... as an exhausted budget';

is((chat($a, $rpm))[0], 200, 'the window survives: request 3 of 4');
is((chat($b, $rpm))[0], 200, 'request 4 of 4 on B');
($status, $body) = chat($a, $rpm);
is $status, 429, 'request 5 is refused on A';
like $body, qr/Limit 4, Used 4/, '... the window counted 4';

# a reload of B keeps it all, and takes a key made on A meanwhile
my ($new) = create($a, '{"name":"during-reload"}');
$c->reload($b);
is((chat($b, $new))[0], 200, 'B serves the new key after its reload');
is((chat($b, $budget))[0], 429, 'B still refuses the spent budget');
is((chat($b, $rpm))[0], 429, 'B still counts the window');

# both nodes stop; Redis keeps everything for their next start
$c->stop($_) for $a, $b;
unlink "$_->{dir}/state/keys.state" for $a, $b;
$c->start($_) for $a, $b;
is((chat($b, $new))[0], 200, 'B serves the key after both restarted');
is((chat($a, $budget))[0], 429, 'A still refuses the spent budget');

($status, $body) = $c->http($b, 'GET', '/api/auth/virtual-keys', undef,
                            @master);
my @names = $body =~ /"name":"([^"]+)"/g;
is_deeply [sort @names], [sort qw(spend window during-reload)],
          'B lists the three keys Redis keeps';

unlike $c->error_log($_), qr/\[(?:alert|crit|emerg)\]/,
       "no alert in the log of $_->{name}" for $a, $b;

done_testing;
