# Two workers, one keys zone: a rate limit and a budget hold across both
# under concurrent requests, a key made through one worker works through
# the other, and "nginx -s reload" (SIGHUP to the master) keeps keys and
# counters.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use Smartflow::Keys;

workers(2);
master_on();
no_shuffle();

unlink server_root() . '/keys-workers.state';

our $Master = 'Authorization: Bearer sk-smartflow-test-0123456789';

# the cache module stays out: the OpenMP runtime its FAISS brings loses a
# few bytes at start-up once threads exist, which valgrind would report
our $MainConfig = <<'_EOC_';
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_policy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_audit_module.so;

    thread_pool sf threads=1;
_EOC_

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_keys_zone keys 1m state=keys-workers.state thread_pool=sf;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_price smartflow-echo 100 100;
_EOC_

our $Locations = <<'_EOC_';
    location = /v1/chat/completions {
        smartflow_api chat;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
        add_header X-Worker $pid always;
    }

    include $TEST_NGINX_SMARTFLOW_CONF/smartflow_admin.conf;

    location @smartflow_error {
        smartflow_api error;
    }
_EOC_

our $Hello = '{"model":"smartflow-echo","messages":[{"role":"user","content":"hello"}]}';

add_block_preprocessor(sub {
    my $block = shift;

    $block->set_value('main_config', $MainConfig)
        unless defined $block->main_config;
    $block->set_value('http_config', $HttpConfig)
        unless defined $block->http_config;
    $block->set_value('config', $Locations)
        unless defined $block->config;
    $block->set_value('more_headers', $Master)
        unless defined $block->more_headers;

    Smartflow::Keys::substitute($block);

    return $block;
});

# statuses of a burst, as "200 x5, 429 x3"
sub tally {
    my %n;
    $n{$_->[0]}++ for @{ $_[0] };
    return join ', ', map { "$_ x$n{$_}" } sort keys %n;
}

sub get_json {
    my ($path) = @_;
    my $r = Smartflow::Keys::burst(1, 'GET', $path, undef, $main::Master);
    return $r->[0][1];
}

run_tests();

__DATA__

=== TEST 1: a key with 5 requests a minute
--- request
POST /api/auth/virtual-keys
{"name":"shared","rpm":5}
--- error_code: 201
--- no_error_log
[error]



=== TEST 2: 8 requests at once over both workers: 5 pass, 3 are refused
--- init
my $key = $Smartflow::Keys::Key{shared};
my $r = Smartflow::Keys::burst(8, 'POST', '/v1/chat/completions',
                               $main::Hello, "Authorization: Bearer $key");
Test::More::is(main::tally($r), '200 x5, 429 x3', 'the limit holds');
Test::More::is(scalar(grep { $_->[1] =~ /"code":"rate_limit_exceeded"/ }
                      @$r), 3, 'the refusals say why');
--- request
GET /api/auth/virtual-keys/%ID(shared)%/usage
--- response_body_like chomp
"requests":5,.*"window":\{"seconds":60,"started_at":\d+,"reset_seconds":\d+,"requests":5,
--- error_log
Rate limit reached for virtual key vk_1



=== TEST 3: a key with a budget of 0.005 USD
--- request
POST /api/auth/virtual-keys
{"name":"budget","budget_usd":0.005}
--- error_code: 201
--- no_error_log
[error]



=== TEST 4: 20 requests at once over both workers never spend more
--- init
my $key = $Smartflow::Keys::Key{budget};
my $r = Smartflow::Keys::burst(20, 'POST', '/v1/chat/completions',
                            $main::Hello, "Authorization: Bearer $key");
my $ok = grep { $_->[0] == 200 } @$r;
my $quota = grep { $_->[0] == 429
                   && $_->[1] =~ /"code":"insufficient_quota"/ } @$r;
Test::More::ok($ok >= 1 && $ok + $quota == 20,
               "some pass, the rest are over the budget ($ok passed)");
# settling happens in the LOG phase, just after each answer went out:
# give the workers a moment to finish before reading the account
my ($usage, $spent, $reserved);
for (1 .. 40) {
    $usage = main::get_json("/api/auth/virtual-keys/$Smartflow::Keys::Id{budget}/usage");
    ($spent) = $usage =~ /"spend_usd":([\d.]+)/;
    ($reserved) = $usage =~ /"reserved_usd":([\d.]+)/;
    last if defined $reserved && $reserved == 0;
    select(undef, undef, undef, 0.05);
}
Test::More::ok(defined $spent && $spent <= 0.005, "spent $spent of 0.005");
Test::More::is($reserved, 0, 'every reservation was settled');
Test::More::is($spent, sprintf('%.4f', $ok * 0.0003) + 0,
               'each passed request paid for its own usage');
--- request
GET /api/auth/virtual-keys/%ID(budget)%
--- response_body_like chomp
"budget_usd":0.005,
--- error_log
You exceeded your current quota: virtual key vk_2



=== TEST 5: a key made through one worker
--- request
POST /api/auth/virtual-keys
{"name":"fresh"}
--- error_code: 201
--- no_error_log
[error]



=== TEST 6: works through either
--- init
my $key = $Smartflow::Keys::Key{fresh};
my $r = Smartflow::Keys::burst(6, 'POST', '/v1/chat/completions',
                            $main::Hello, "Authorization: Bearer $key");
Test::More::is(main::tally($r), '200 x6', 'all pass');
--- request
GET /api/auth/virtual-keys/%ID(fresh)%/usage
--- response_body_like chomp
"requests":6,
--- no_error_log
[error]



=== TEST 7: a reload keeps the keys and the counters of the window
--- init
Smartflow::Keys::reload();
--- more_headers
Authorization: Bearer %KEY(shared)%
--- request
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"again"}]}
--- error_code: 429
--- response_headers
x-ratelimit-limit-requests: 5
x-ratelimit-remaining-requests: 0
--- response_body_like chomp
Limit 5, Used 5, Requested 1
--- error_log
reconfiguring



=== TEST 8: after the reload a new key is made
--- request
POST /api/auth/virtual-keys
{"name":"reloaded","rpm":100}
--- error_code: 201
--- no_error_log
[error]



=== TEST 9: and used over both workers
--- init
my $key = $Smartflow::Keys::Key{reloaded};
my $r = Smartflow::Keys::burst(4, 'POST', '/v1/chat/completions',
                            $main::Hello, "Authorization: Bearer $key");
Test::More::is(main::tally($r), '200 x4', 'all pass');
--- request
GET /api/auth/virtual-keys?limit=100
--- response_body_like chomp
"first_id":"vk_1","last_id":"vk_4","has_more":false
--- no_error_log
[error]



=== TEST 10: a restart with two workers keeps them as well
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_keys_zone keys 1m state=keys-workers.state thread_pool=sf;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_price smartflow-echo 100 100;
    # restarted
--- request
GET /api/auth/virtual-keys/%ID(reloaded)%/usage
--- response_body_like chomp
"requests":4,.*"remaining_requests":96,
--- error_log
smartflow proxy: 4 keys read from
--- no_error_log
[error]
