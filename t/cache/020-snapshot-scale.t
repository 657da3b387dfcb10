# An embeddings endpoint need not scale its vectors to length 1: nginx
# scales what it answers before it stores it, so a snapshot holds vectors
# of length 1 only, and a restart reads them all back (none is taken for
# damaged).  The endpoint here answers [3, 4, 0, 0], of length 5, for any
# text, then numbers too small for a float's digits (1e-43): the length
# is that of the floats kept, not of the numbers sent.  A block of another configuration than the one before runs in a
# new nginx, which reads what the one before wrote.

use lib 't/lib';
use Smartflow::Blocks;
use Test::Nginx::Socket 'no_plan';

no_shuffle();

unlink server_root() . "/$_.snap" for qw(scale tiny);

our $MainConfig = <<'_EOC_';
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_cache_module.so;
_EOC_

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_cache_zone mini 16m entries=1000 dim=4 snapshot=scale.snap;
    smartflow_cache_near_miss off;
    smartflow_cache_similarity 0.80;
_EOC_

our $Locations = <<'_EOC_';
    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_cache mini;
        smartflow_cache_embedder /_embed model=unscaled timeout=5s;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /_embed {
        internal;
        default_type application/json;
        return 200 '{"data":[{"embedding":[3,4,0,0]}]}';
    }

    location @smartflow_error {
        smartflow_api error;
    }
_EOC_

Smartflow::Blocks::defaults(main_config => $MainConfig,
                            http_config => $HttpConfig,
                            more_headers => $OpenAIKey);

# the zone and the endpoint of the numbers too small
our $TinyConfig = $HttpConfig =~ s/mini 16m/tiny 16m/r
                              =~ s/scale\.snap/tiny.snap/r;
our $Tiny = $Locations =~ s/smartflow_cache mini/smartflow_cache tiny/r
                       =~ s/model=unscaled/model=tiny/r
                       =~ s/\[3,4,0,0\]/[1e-43,1e-43,0,0]/r;

sub chat {
    return "POST /v1/chat/completions\n"
        . qq({"model":"smartflow-echo","messages":)
        . qq([{"role":"user","content":"$_[0]"}]});
}

our $Q = 'How do I reverse a list in Python?';
our $P = 'Please, how can I reverse a list in Python?';

run_tests();

__DATA__

=== TEST 1: the endpoint's vectors, of length 5, scaled: phase 4 finds the question asked another way
--- config eval
$main::Locations
--- request eval
[main::chat($main::Q), main::chat($main::P)]
--- response_headers eval
["x-smartflow-cache: MISS",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 4"]
--- no_error_log
[error]
[warn]



=== TEST 2: after a restart: the vector is read back, not left out
--- config eval
$main::Locations . "\n    # the same embedder\n"
--- request eval
[main::chat($main::P)]
--- response_headers eval
["x-smartflow-cache: HIT\nx-smartflow-cache-phase: 4"]
--- error_log
smartflow cache: 1 entries of zone "mini" read from
--- no_error_log
[error]
[warn]



=== TEST 3: numbers too small for a float's digits: phase 4 finds the question asked another way
--- http_config eval
$main::TinyConfig
--- config eval
$main::Tiny
--- request eval
[main::chat($main::Q), main::chat($main::P)]
--- response_headers eval
["x-smartflow-cache: MISS",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 4"]
--- no_error_log
[error]
[warn]



=== TEST 4: after a restart: the vector, of the floats kept, is of length 1 and read back
--- http_config eval
$main::TinyConfig
--- config eval
$main::Tiny . "\n    # the same embedder\n"
--- request eval
[main::chat($main::P)]
--- response_headers eval
["x-smartflow-cache: HIT\nx-smartflow-cache-phase: 4"]
--- error_log
smartflow cache: 1 entries of zone "tiny" read from
--- no_error_log
[error]
[warn]
