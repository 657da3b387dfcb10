# A snapshot keeps the embedders of its zone's locations: read back by a
# zone whose locations use another embedder (another model behind the
# same endpoint, the builtin one instead of an endpoint), even of the same
# dim=, its entries come back without their vectors, with a warning that
# names both: phases 1 to 3 still find them, phase 4 compares nothing of
# the other embedder.  The same embedders read their vectors back.  A
# block of another configuration than the one before runs in a new nginx,
# which reads what the one before wrote.

use lib 't/lib';
use Smartflow::Blocks;
use Smartflow::Mock;
use Test::Nginx::Socket 'no_plan';

$ENV{TEST_NGINX_MOCK_PORT} ||= 1985;

no_shuffle();

unlink server_root() . '/embedder.snap';

our $MainConfig = <<'_EOC_';
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_cache_module.so;
_EOC_

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_cache_zone mini 16m entries=1000 dim=384
                         snapshot=embedder.snap;
    smartflow_cache_near_miss off;
    smartflow_cache_similarity 0.80;
_EOC_

# the locations, with the chat's embedder line
sub locations {
    my ($embedder) = @_;
    return <<"_EOC_";
    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_cache mini;
        $embedder
        include \$TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /_embed {
        internal;
        proxy_pass http://127.0.0.1:\$TEST_NGINX_MOCK_PORT/v1/embeddings;
        subrequest_output_buffer_size 128k;
    }

    location /api/metacache {
        smartflow_cache_api;
        smartflow_cache mini;
    }

    location \@smartflow_error {
        smartflow_api error;
    }
_EOC_
}

Smartflow::Blocks::defaults(main_config => $MainConfig,
                            http_config => $HttpConfig,
                            more_headers => $OpenAIKey);

sub chat {
    return "POST /v1/chat/completions\n"
        . qq({"model":"smartflow-echo","messages":)
        . qq([{"role":"user","content":"$_[0]"}]});
}

# "mock-words" and "mock-words-2" give the mock's same vectors: only the
# model's name tells them apart, as an operator's change of model would
our $Words = 'smartflow_cache_embedder /_embed model=mock-words '
             . 'dimensions=384 timeout=5s;';
our $Words2 = 'smartflow_cache_embedder /_embed model=mock-words-2 '
              . 'dimensions=384 timeout=5s;';

our $Q = 'How do I reverse a list in Python?';
our $P = 'Please, how can I reverse a list in Python?';
our $S = 'How do I sort a list in Python?';
our $T = 'Please, how can I sort a list in Python?';

run_tests();

__DATA__

=== TEST 1: the endpoint's vectors: phase 4 finds the question asked another way
--- config eval
main::locations($main::Words)
--- request eval
[main::chat($main::Q), main::chat($main::P)]
--- response_headers eval
["x-smartflow-cache: MISS",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 4"]
--- no_error_log
[error]
[warn]



=== TEST 2: the same embedder after a restart: the vectors are read back
--- config eval
main::locations($main::Words) . "\n    # the same embedder\n"
--- request eval
[main::chat($main::P)]
--- response_headers eval
["x-smartflow-cache: HIT\nx-smartflow-cache-phase: 4"]
--- error_log
smartflow cache: 1 entries of zone "mini" read from
--- no_error_log
[error]
[warn]



=== TEST 3: another model, of the same dim: the entries come back without their vectors, a warning says why
--- config eval
main::locations($main::Words2)
--- request eval
main::chat($main::P)
--- response_headers
x-smartflow-cache: MISS
--- error_log eval
qr/\[warn\].*smartflow cache: the snapshot "[^"]*embedder\.snap" holds the vectors of embedder "\/_embed model=mock-words", zone "mini" uses "\/_embed model=mock-words-2" now; its entries are read without their vectors, which phase 4 does not compare/
--- no_error_log
[error]



=== TEST 4: the same nginx: phase 1 finds the entries all the same
--- config eval
main::locations($main::Words2)
--- request eval
main::chat($main::Q)
--- response_headers
x-smartflow-cache: HIT
x-smartflow-cache-phase: 1
--- no_error_log
[error]



=== TEST 5: the builtin embedder, of the same dim, after the endpoint: the same
--- config eval
main::locations('')
--- request eval
main::chat($main::P)
--- response_headers
x-smartflow-cache: HIT
x-smartflow-cache-phase: 1
--- error_log eval
qr/\[warn\].*smartflow cache: the snapshot "[^"]*embedder\.snap" holds the vectors of embedder "\/_embed model=mock-words-2", zone "mini" uses "builtin" now; its entries are read without their vectors/
--- no_error_log
[error]



=== TEST 6: the same nginx: the builtin embedder's vectors
--- config eval
main::locations('')
--- request eval
[main::chat($main::S), main::chat($main::T)]
--- response_headers eval
["x-smartflow-cache: MISS",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 4"]
--- no_error_log
[error]



=== TEST 7: the builtin embedder again: its vectors are read back
--- config eval
main::locations('') . "\n    # the builtin embedder again\n"
--- request eval
main::chat($main::T)
--- response_headers
x-smartflow-cache: HIT
x-smartflow-cache-phase: 4
--- error_log
smartflow cache: 3 entries of zone "mini" read from
--- no_error_log
[error]
[warn]
