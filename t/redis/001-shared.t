# Two gateway nodes, one real redis-server: a key made on one works on the
# other, a rate limit and a budget hold across both under concurrent load,
# and a revoked key stops working on the other node within a second.

use strict;
use warnings;

use Test::More;
use Time::HiRes qw(sleep time);
use lib 't/lib';
use Smartflow::Cluster;

my $c = Smartflow::Cluster->new(name => 'shared');
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
    my ($key) = $body =~ /"key":"(sk-sf-[0-9a-f]{48})"/;
    my ($id) = $body =~ /"id":"(vk_\d+)"/;
    return ($key, $id);
}

# a condition met within 10 s (the nodes poll Redis every 250 ms)
sub wait_for {
    my ($what, $cond) = @_;
    my $t0 = time;
    until ($cond->()) {
        return fail "$what: not within 10 s" if time - $t0 > 10 * $c->{slow};
        sleep 0.05;
    }
    pass $what;
}

sub tally {
    my %n;
    $n{$_->[0]}++ for @{ $_[0] };
    return join ', ', map { "$_ x$n{$_}" } sort keys %n;
}

# a key made on A works on B at once, and its id comes from Redis
my ($k1, $id1) = create($a, '{"name":"shared-one"}');
my ($status, $body) = $c->http($b, 'POST', '/v1/chat/completions', $hello,
                               "Authorization: Bearer $k1");
is $status, 200, 'key made on A works on B' or diag $body;
like $body, qr/"chat\.completion"/, 'B answered the chat';

($status, $body) = $c->http($b, 'GET', "/api/auth/virtual-keys/$id1", undef,
                            @master);
is $status, 200, 'B lists the key made on A';
like $body, qr/"name":"shared-one"/, '... by its name';

# a key's cache threshold travels with its record
my ($kt, $idt) = create($a, '{"name":"shared-threshold","cache_threshold":0.7}');
($status, $body) = $c->http($b, 'GET', "/api/auth/virtual-keys/$idt", undef,
                            @master);
like $body, qr/"cache_threshold":0.7,/,
     'B has the threshold set on A at once (an unknown id is pulled)';
like $c->redis_cli('HGET', 'sf:vk', ($idt =~ /(\d+)/)[0]),
     qr/"cache_permille":700,/, 'Redis keeps it in the record';
($status, $body) = $c->http($b, 'PATCH', "/api/auth/virtual-keys/$idt",
                            '{"cache_threshold":0.95}', @master);
like $body, qr/"cache_threshold":0.95,/, 'B changes it';
wait_for 'A has the change made on B', sub {
    (undef, $body) = $c->http($a, 'GET', "/api/auth/virtual-keys/$idt",
                              undef, @master);
    $body =~ /"cache_threshold":0.95,/ };

# one name, made on both nodes at once: one key gets it
my $twice = $c->burst(map { [$_, 'POST', '/api/auth/virtual-keys',
                             '{"name":"shared-twice"}', @master] } $a, $b);
is join(' ', sort map { $_->[0] } @$twice), '201 409',
   'a name made on both nodes at once: one 201, one 409';
my ($lost) = grep { $_->[0] == 409 } @$twice;
like $lost->[1], qr/"code":"duplicate_name"/, '... duplicate_name';
for my $node ($a, $b) {
    # the node that answered 409 has the key once its poll brought it
    my @twice;
    wait_for "$node->{name} has the key of that name", sub {
        (undef, $body) = $c->http($node, 'GET', '/api/auth/virtual-keys',
                                  undef, @master);
        @twice = $body =~ /"name":"shared-twice"/g;
        @twice > 0 };
    is scalar(@twice), 1, "$node->{name} lists the name once";
}

my ($k2, $id2) = create($b, '{"name":"shared-two"}');
isnt $id2, $id1, 'ids are unique across nodes';
is $c->redis_cli('GET', 'sf:vk:next'), ($id2 =~ /(\d+)/)[0],
   'Redis gave the ids';

($status) = $c->http($a, 'POST', '/v1/chat/completions', $hello,
                     "x-api-key: $k2");
is $status, 200, 'key made on B works on A';

($status, $body) = $c->http($a, 'POST', '/v1/chat/completions', $hello,
                            'Authorization: Bearer sk-sf-' . ('0' x 48));
is $status, 401, 'an unknown key is refused on A';
like $body, qr/invalid_api_key/, '... as an invalid key';

# requests per minute: 7 for the key, 24 requests at once on both nodes
my ($rk) = create($a, '{"name":"shared-rpm","rpm":7}');
my $r = $c->burst(map { [$_ % 2 ? $a : $b, 'POST', '/v1/chat/completions',
                         $hello, "Authorization: Bearer $rk"] } 1 .. 24);
is tally($r), '200 x7, 429 x17', 'rpm 7 holds across both nodes';
my ($refused) = grep { $_->[0] == 429 } @$r;
like $refused->[1], qr/requests per min \(RPM\): Limit 7, Used 7/,
     'the refusal names the limit';
is $refused->[2]{'x-ratelimit-remaining-requests'}, 0,
   'x-ratelimit-remaining-requests is 0';
ok $refused->[2]{'retry-after'} >= 1, 'Retry-After is set';
my ($served) = grep { $_->[0] == 200 } @$r;
is $served->[2]{'x-ratelimit-limit-requests'}, 7,
   'x-ratelimit-limit-requests on a served answer';

# a budget of 12 micro-USD: each request costs 1 (a price of 1 micro-USD
# per million tokens, rounded up)
my ($bk, $bid) = create($b, '{"name":"shared-budget","budget_usd":0.000012}');
$r = $c->burst(map { [$_ % 2 ? $a : $b, 'POST', '/v1/chat/completions',
                      $hello, "Authorization: Bearer $bk"] } 1 .. 30);
is tally($r), '200 x12, 429 x18', 'the budget holds across both nodes';
($refused) = grep { $_->[0] == 429 } @$r;
like $refused->[1], qr/"code":"insufficient_quota"/,
     'over budget is insufficient_quota';

# the settlements reach Redis after the answers
my ($n) = $bid =~ /(\d+)/;
wait_for 'Redis holds no reservation any more',
    sub { ($c->redis_cli('HGET', "sf:vk:c:$n", 'res') // '') eq '0' };
is $c->redis_cli('HGET', "sf:vk:c:$n", 'sp'), 12, 'Redis holds the spend';

($status, $body) = $c->http($a, 'GET', "/api/auth/virtual-keys/$bid/usage",
                            undef, @master);
like $body, qr/"requests":12,/, 'usage on A counts the requests of both';

# the usage API of a node tells what every node served
my ($uk, $uid) = create($a, '{"name":"shared-usage"}');
for (1 .. 3) {
    ($status) = $c->http($a, 'POST', '/v1/chat/completions', $hello,
                         "Authorization: Bearer $uk");
    is $status, 200, "served on A only ($_)";
}
my ($un) = $uid =~ /(\d+)/;
wait_for 'Redis has the settlements',
    sub { ($c->redis_cli('HGET', "sf:vk:c:$un", 'wres') // '') eq '0' };
($status, $body) = $c->http($b, 'GET', "/api/auth/virtual-keys/$uid/usage",
                            undef, @master);
is $status, 200, 'usage asked on B';
like $body, qr/"requests":3,.*"total_tokens":[1-9]/s,
     'B tells the requests and tokens A served';

# tokens per minute: the usage settled on one node counts on the other;
# a request goes out when the window's tokens plus its estimate (a token
# per 4 body bytes, plus max_tokens) stay within 200
my ($tk, $tid) = create($b, '{"name":"shared-tpm","tpm":200}');
my ($tn) = $tid =~ /(\d+)/;
my $ask = '{"model":"smartflow-echo","max_tokens":100,"messages":'
          . '[{"role":"user","content":"one two three four five"}]}';
my $estimate = int((length($ask) + 3) / 4) + 100;
my ($used, @seen) = (0);
for my $i (1 .. 12) {
    my $node = $i % 2 ? $a : $b;
    ($status, $body) = $c->http($node, 'POST', '/v1/chat/completions', $ask,
                                "Authorization: Bearer $tk");
    my $expect = $used + $estimate <= 200 ? 200 : 429;
    push @seen, "$status/$expect";
    if ($status == 200) {
        my ($total) = $body =~ /"total_tokens":(\d+)/;
        $used += $total;
    } else {
        like $body, qr/tokens per min \(TPM\): Limit 200, Used $used,/,
             "the refusal on $node->{name} counts the tokens of both";
        last;
    }
    # the settlement reaches Redis before the next request
    wait_for "request $i settled in Redis",
        sub { ($c->redis_cli('HGET', "sf:vk:c:$tn", 'wres') // '') eq '0' };
}
is_deeply [ map { (split m{/})[0] } @seen ], [ map { (split m{/})[1] } @seen ],
          'tpm 200 holds across both nodes: ' . join(' ', @seen);
ok scalar(grep { m{^429} } @seen), 'a request was refused for its tokens';

# revocation on A: B refuses the key within a second
my ($vk, $vid) = create($a, '{"name":"shared-revoke"}');
($status) = $c->http($b, 'POST', '/v1/chat/completions', $hello,
                     "Authorization: Bearer $vk");
is $status, 200, 'B serves the key before the revocation';
($status) = $c->http($a, 'DELETE', "/api/auth/virtual-keys/$vid", undef,
                     @master);
is $status, 200, 'revoked on A';
my $t0 = time;
my $gone;
while (time - $t0 < 3 * $c->{slow}) {
    ($status, $body) = $c->http($b, 'POST', '/v1/chat/completions', $hello,
                                "Authorization: Bearer $vk");
    if ($status == 401) { $gone = time - $t0; last; }
    sleep 0.05;
}
ok defined $gone && $gone < $c->{slow}, 'B refuses the revoked key within 1 s'
    or diag "still served after 3 s";
like $body, qr/has been revoked/, '... as revoked';

# a change on B to its copy of a key A has just revoked (before B's poll
# saw it) does not bring the key back: a revocation is final
my ($vk2, $vid2) = create($a, '{"name":"shared-revoke-race"}');
($status) = $c->http($b, 'GET', "/api/auth/virtual-keys/$vid2", undef,
                     @master);
is $status, 200, 'B has the second key';
($status) = $c->http($a, 'DELETE', "/api/auth/virtual-keys/$vid2", undef,
                     @master);
is $status, 200, 'revoked on A';
($status, $body) = $c->http($b, 'PATCH', "/api/auth/virtual-keys/$vid2",
                            '{"rpm":10}', @master);
is $status, 409, 'a change on B right after is refused' or diag $body;
like $body, qr/"code":"key_revoked"/, '... as a revoked key';
for my $node ($a, $b) {
    wait_for 'the key is revoked on ' . ($node == $a ? 'A' : 'B'), sub {
        ($status) = $c->http($node, 'POST', '/v1/chat/completions', $hello,
                             "Authorization: Bearer $vk2");
        $status == 401 };
}
# a while later, after more polls
sleep 0.6;
for my $node ($a, $b) {
    ($status) = $c->http($node, 'POST', '/v1/chat/completions', $hello,
                         "Authorization: Bearer $vk2");
    is $status, 401, 'the key stays revoked on ' . ($node == $a ? 'A' : 'B');
}
like $c->redis_cli('HGET', 'sf:vk', ($vid2 =~ /(\d+)/)[0]),
     qr/"revoked":[1-9]/, 'and in Redis';

# a revoked key's name is free again, on any node
($status, $body) = $c->http($b, 'POST', '/api/auth/virtual-keys',
                            '{"name":"shared-revoke"}', @master);
is $status, 201, 'the name of the key revoked on A is free on B'
    or diag $body;

# a rotation on B: A takes the new secret, the old one stops
($status, $body) = $c->http($b, 'POST', "/api/auth/virtual-keys/$id1/rotate",
                            undef, @master);
is $status, 200, 'rotated on B';
my ($k1new) = $body =~ /"key":"(sk-sf-[0-9a-f]{48})"/;
($status) = $c->http($a, 'POST', '/v1/chat/completions', $hello,
                     "Authorization: Bearer $k1new");
is $status, 200, 'A takes the new secret at once';
wait_for 'A refuses the old secret', sub {
    ($status) = $c->http($a, 'POST', '/v1/chat/completions', $hello,
                         "Authorization: Bearer $k1");
    $status == 401 };

for my $node ($a, $b) {
    my $log = $c->error_log($node);
    unlike $log, qr/\[(?:alert|crit|emerg)\]/,
           "no alert in the log of $node->{name}";
    unlike $log, qr/redis.*unreachable|refused the connection setup/,
           "Redis answered $node->{name} all along";
}

done_testing;
