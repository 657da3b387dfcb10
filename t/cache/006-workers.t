# Two workers share one zone: an answer stored by one is served by both,
# phase 4 included (each worker brings its FAISS index up to date from
# the zone), and "nginx -s reload" (SIGHUP) keeps every entry.  A small
# context is read in the zone; a large one goes through FAISS: flat in a
# zone of up to 4,096 entries, the inverted file above (index=auto).

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use Smartflow::Blocks;
use Smartflow::Keys;

workers(2);
master_on();
no_shuffle();

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_cache_zone metacache 16m entries=1000;
_EOC_

our $Locations = <<'_EOC_';
    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_cache metacache;
        smartflow_cache_near_miss off;
        smartflow_cache_similarity 0.85;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location /api/metacache {
        smartflow_cache_api;
    }

    location @smartflow_error {
        smartflow_api error;
    }
_EOC_

our $Master = 'Authorization: Bearer sk-smartflow-test-0123456789';

Smartflow::Blocks::defaults(http_config => $HttpConfig,
                            config => $Locations,
                            more_headers => $Master);

sub body {
    return qq({"model":"smartflow-echo","messages":[{"role":"user","content":"$_[0]"}]});
}

# the x-smartflow-cache values of a burst of the same request, counted
sub verdicts {
    my ($q, $n) = @_;
    my $r = Smartflow::Keys::burst($n, 'POST', '/v1/chat/completions',
                                   body($q), $main::Master);
    my %n;
    for (@$r) {
        my $v = $_->[1] =~ /"content":"Echo: \Q$q\E"/ ? 'own' : 'other';
        $n{"$_->[0] $v"}++;
    }
    return join ', ', map { "$_ x$n{$_}" } sort keys %n;
}

# one question, then 1,100 more of the same context and no number, each
# with a made-up word: one group
sub fill_group {
    Smartflow::Keys::burst(1, 'POST', '/v1/chat/completions',
                           main::body("Write a short poem about the ocean"),
                           $main::Master);
    for my $i (1 .. 1100) {
        my $w = Smartflow::Keys::made_up($i);
        Smartflow::Keys::burst(1, 'POST', '/v1/chat/completions',
                               main::body("Write a short poem about the $w"),
                               $main::Master);
    }
    my $st = Smartflow::Keys::burst(1, 'GET', '/api/metacache/stats', undef,
                                    $main::Master);
    my ($entries) = $st->[0][1] =~ /"entries":(\d+)/;
    Test::More::cmp_ok($entries, '>', 1024, 'one context of more than 1,024');
    return $st->[0][1];
}

run_tests();

__DATA__

=== TEST 1: stored once, served by every worker, at once
--- init
Smartflow::Keys::burst(1, 'POST', '/v1/chat/completions',
                       main::body("Write a short poem about the ocean"),
                       $main::Master);
Test::More::is(main::verdicts("Write a short poem about the ocean waves", 12),
               '200 other x12', 'a phase 4 hit in every answer');
--- request
GET /api/metacache/stats
--- response_body_like chomp
"entries":1,.*"hits":\{"total":12,"phase1":0,"phase2":0,"phase3":0,"phase4":12\}
--- no_error_log
[error]



=== TEST 2: a reload keeps the entries, and the new workers' indexes find them
--- init
Smartflow::Keys::burst(1, 'POST', '/v1/chat/completions',
                       main::body("Write a short poem about the ocean"),
                       $main::Master);
Smartflow::Keys::reload();
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"Write a short poem about the ocean waves"}]}
--- response_headers
x-smartflow-cache: HIT
x-smartflow-cache-phase: 4
--- response_body_like chomp
"content":"Echo: Write a short poem about the ocean"
--- error_log
reconfiguring
--- no_error_log
[error]



=== TEST 3: a context of more than 1,024 entries is searched through each worker's FAISS index, and both workers find the same entry
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_cache_zone metacache 32m entries=2000;
--- init
Test::More::like(main::fill_group(), qr/"index":"flat"/, 'a flat index');
Test::More::is(main::verdicts("Write a short poem about the ocean waves", 12),
               '200 other x12', 'a phase 4 hit in every answer');
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"Write a short poem about the ocean waves"}]}
--- response_headers
x-smartflow-cache: HIT
x-smartflow-cache-phase: 4
--- response_body_like chomp
"content":"Echo: Write a short poem about the ocean"
--- no_error_log
[error]



=== TEST 4: in a zone of more than 4,096 entries the workers' index is the inverted file, and both workers find the same entry
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_cache_zone metacache 48m entries=5000;
--- init
Test::More::like(main::fill_group(), qr/"index":"ivf"/, 'an inverted file');
Test::More::is(main::verdicts("Write a short poem about the ocean waves", 12),
               '200 other x12', 'a phase 4 hit in every answer');
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"Write a short poem about the ocean waves"}]}
--- response_headers
x-smartflow-cache: HIT
x-smartflow-cache-phase: 4
--- response_body_like chomp
"content":"Echo: Write a short poem about the ocean"
--- no_error_log
[error]



=== TEST 5: questions of another kind piling into one cell of the inverted file make the zone pick new centres and the workers build it again, and the entry is still found
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_cache_zone metacache 48m entries=5000;
--- init
main::fill_group();
# 2,000 near-duplicates of one question, in the same group: most drawn to
# one cell of those whose centres are poems
for my $i (1 .. 2000) {
    my $w = Smartflow::Keys::made_up($i);
    Smartflow::Keys::burst(1, 'POST', '/v1/chat/completions',
        main::body("Explain how the billing export works for account $w"),
        $main::Master);
}
Test::More::is(main::verdicts("Write a short poem about the ocean waves", 12),
               '200 other x12', 'a phase 4 hit in every answer');
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"Write a short poem about the ocean waves"}]}
--- response_headers
x-smartflow-cache: HIT
x-smartflow-cache-phase: 4
--- response_body_like chomp
"content":"Echo: Write a short poem about the ocean"
--- error_log
the inverted file's cells no longer fit its vectors, new centres picked
--- no_error_log
[error]



=== TEST 6: after a reload the new workers build the inverted file from the centres the zone kept, and find the entry
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_cache_zone metacache 48m entries=5000;
--- init
main::fill_group();
Test::More::is(main::verdicts("Write a short poem about the ocean waves", 4),
               '200 other x4', 'a phase 4 hit before the reload');
Smartflow::Keys::reload();
Test::More::is(main::verdicts("Write a short poem about the ocean waves", 12),
               '200 other x12', 'a phase 4 hit in every answer after it');
--- request
GET /api/metacache/stats
--- response_body_like chomp
"entries":1[01]\d\d,.*"index":"ivf"
--- error_log
reconfiguring
--- no_error_log
[error]
