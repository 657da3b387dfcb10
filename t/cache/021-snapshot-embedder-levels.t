# The embedders a snapshot names are those of the locations that store in
# the zone, of the chat or messages API: a location that inherits
# smartflow_cache from its server but stores nothing (the embedder's own,
# the error page's) adds none.  smartflow_cache moved from the chat
# location to its server, the embedder the same, the vectors are read
# back.  A block of another configuration than the one before runs in a
# new nginx, which reads what the one before wrote.

use lib 't/lib';
use Smartflow::Blocks;
use Smartflow::Mock;
use Test::Nginx::Socket 'no_plan';

$ENV{TEST_NGINX_MOCK_PORT} ||= 1985;

no_shuffle();

unlink server_root() . '/levels.snap';

our $MainConfig = <<'_EOC_';
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_cache_module.so;
_EOC_

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_cache_zone mini 16m entries=1000 dim=384
                         snapshot=levels.snap;
    smartflow_cache_near_miss off;
    smartflow_cache_similarity 0.80;
_EOC_

# the server's smartflow_cache line, and the chat location's
sub locations {
    my ($server, $location) = @_;
    return <<"_EOC_";
    $server

    location = /v1/chat/completions {
        smartflow_api chat;
        $location
        smartflow_cache_embedder /_embed model=mock-words dimensions=384
                                 timeout=5s;
        include \$TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /_embed {
        internal;
        proxy_pass http://127.0.0.1:\$TEST_NGINX_MOCK_PORT/v1/embeddings;
        subrequest_output_buffer_size 128k;
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

our $Q = 'How do I reverse a list in Python?';
our $P = 'Please, how can I reverse a list in Python?';

run_tests();

__DATA__

=== TEST 1: smartflow_cache in the chat location: phase 4 finds the question asked another way
--- config eval
main::locations('', 'smartflow_cache mini;')
--- request eval
[main::chat($main::Q), main::chat($main::P)]
--- response_headers eval
["x-smartflow-cache: MISS",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 4"]
--- no_error_log
[error]
[warn]



=== TEST 2: smartflow_cache in the server, the same embedder: the vectors are read back
--- config eval
main::locations('smartflow_cache mini;', '')
--- request eval
[main::chat($main::P)]
--- response_headers eval
["x-smartflow-cache: HIT\nx-smartflow-cache-phase: 4"]
--- error_log
smartflow cache: 1 entries of zone "mini" read from
--- no_error_log
[error]
[warn]



=== TEST 3: and back in the chat location: read back again
--- config eval
main::locations('', 'smartflow_cache mini;')
--- request eval
[main::chat($main::P)]
--- response_headers eval
["x-smartflow-cache: HIT\nx-smartflow-cache-phase: 4"]
--- error_log
smartflow cache: 1 entries of zone "mini" read from
--- no_error_log
[error]
[warn]
