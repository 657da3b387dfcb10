# Phase 4 with an OpenAI-compatible /v1/embeddings endpoint instead of the
# builtin embedder: the mock provider's "mock-words" model (a bag of
# words hashed into `dimensions` floats, computed again here in Perl), so
# the similarity a hit reports is the cosine of the endpoint's vectors.
# The endpoint is reached through an internal location (proxy_pass) as a
# background subrequest: when it is slow past the timeout, down, or
# answers no embedding, phase 4 is skipped and the request is answered
# all the same.  The echo provider answers with the question, so a hit
# shows the question it was stored for.

use lib 't/lib';
use Smartflow::Blocks;
use Digest::SHA qw(sha256);
use Smartflow::Mock;
use Test::Nginx::Socket 'no_plan';

no_shuffle();

our $MainConfig = <<'_EOC_';
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_cache_module.so;
_EOC_

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_cache_zone metacache 16m entries=1000 dim=64;
    smartflow_cache metacache;
    smartflow_cache_near_miss off;
    smartflow_cache_similarity 0.80;
_EOC_

our $Locations = <<'_EOC_';
    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_cache_embedder /_embed model=mock-words dimensions=64
                                 timeout=5s;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /slow/v1/chat/completions {
        smartflow_api chat;
        smartflow_cache_embedder /_embed_slow model=mock-words
                                 dimensions=64 timeout=300ms;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /down/v1/chat/completions {
        smartflow_api chat;
        smartflow_cache_embedder /_embed_down model=mock-words
                                 dimensions=64;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /garbage1/v1/chat/completions {
        smartflow_api chat;
        smartflow_cache_embedder /_garbage1 timeout=5s;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /garbage2/v1/chat/completions {
        smartflow_api chat;
        smartflow_cache_embedder /_garbage2 timeout=5s;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /garbage3/v1/chat/completions {
        smartflow_api chat;
        smartflow_cache_embedder /_garbage3 timeout=5s;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /garbage4/v1/chat/completions {
        smartflow_api chat;
        smartflow_cache_embedder /_garbage4 timeout=5s;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /small/v1/chat/completions {
        smartflow_api chat;
        smartflow_cache_embedder /_embed_small model=mock-words
                                 dimensions=64 timeout=5s;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /_embed {
        internal;
        proxy_pass http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/embeddings;
        subrequest_output_buffer_size 64k;
    }

    # an answer larger than the buffer its subrequest has
    location = /_embed_small {
        internal;
        proxy_pass http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/embeddings;
        subrequest_output_buffer_size 64;
    }


    location = /_embed_slow {
        internal;
        proxy_set_header X-Mock-Delay-Ms 1500;
        proxy_pass http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/embeddings;
        subrequest_output_buffer_size 64k;
    }

    location = /_embed_down {
        internal;
        proxy_pass http://127.0.0.1:1/v1/embeddings;
    }

    location = /_garbage1 {
        internal;
        return 200 'this is not JSON';
    }

    location = /_garbage2 {
        internal;
        return 200 '{"data":[{"embedding":[ZEROS]}]}';
    }

    location = /_garbage3 {
        internal;
        return 200 '{"data":[{"embedding":["0.1","0.2"]}]}';
    }

    location = /_garbage4 {
        internal;
        return 200 '{"object":"list","data":[]}';
    }

    location @smartflow_error {
        smartflow_api error;
    }
_EOC_

# a zero vector of the zone's 64 dimensions
my $zeros = join ',', (0) x 64;
$Locations =~ s/ZEROS/$zeros/;

Smartflow::Blocks::defaults(main_config => $MainConfig,
                            http_config => $HttpConfig,
                            config => $Locations,
                            more_headers => $OpenAIKey);

sub chat {
    my ($q, $prefix) = @_;
    $prefix //= '';
    return "POST $prefix/v1/chat/completions\n"
        . qq({"model":"smartflow-echo","messages":)
        . qq([{"role":"user","content":"$q"}]});
}

# the mock's "mock-words" embedding, as it computes it
sub words {
    my ($text, $dim) = @_;
    my @v = (0) x $dim;
    $v[unpack('V', sha256($_)) % $dim] += 1
        for grep { length } split /[^a-z0-9]+/, lc $text;
    my $n = 0;
    $n += $_ * $_ for @v;
    $n = sqrt($n);
    return map { $_ / $n } @v;
}

# the similarity header for the cosine of two texts, give or take 0.001
sub similarity {
    my ($a, $b) = @_;
    my @x = words($a, 64);
    my @y = words($b, 64);
    my $dot = 0;
    $dot += $x[$_] * $y[$_] for 0 .. 63;
    my $pm = int($dot * 1000 + 0.5);
    die "the pair is below the threshold: $pm\n" if $pm < 800;
    return 'x-smartflow-cache-similarity: (?:'
        . join('|', map { sprintf '%d\.%03d', int($_ / 1000), $_ % 1000 }
                        $pm - 1, $pm, $pm + 1)
        . ')';
}

our $Q = 'How do I reverse a list in Python?';
our $P = 'Please, how can I reverse a list in Python?';

run_tests();

__DATA__

=== TEST 1: phase 4 through the endpoint: the hit reports the cosine of its vectors
--- request eval
[main::chat($main::Q), main::chat($main::P), main::chat($main::P)]
--- response_body_like eval
[qr/"content":"Echo: How do I reverse a list in Python\?"/,
 qr/"content":"Echo: How do I reverse a list in Python\?"/,
 qr/"content":"Echo: How do I reverse a list in Python\?"/]
--- response_headers eval
["x-smartflow-cache: MISS",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 4",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 4"]
--- response_headers_like eval
["", main::similarity($main::Q, $main::P),
 main::similarity($main::Q, $main::P)]
--- no_error_log
[error]
[warn]



=== TEST 2: a look-alike the endpoint finds near is still turned down by the verification
--- request eval
[main::chat("Convert 100 USD to EUR."), main::chat("Convert 100 EUR to USD.")]
--- response_body_like eval
[qr/"content":"Echo: Convert 100 USD to EUR\."/,
 qr/"content":"Echo: Convert 100 EUR to USD\."/]
--- response_headers eval
["x-smartflow-cache: MISS", "x-smartflow-cache: MISS"]
--- no_error_log
[error]



=== TEST 3: the endpoint slower than the timeout: phase 4 skipped, the request answered
--- request eval
[main::chat("How do I sort a list in Python?"),
 main::chat("Please, how can I sort a list in Python?", "/slow"),
 main::chat("How can I sort a list in Python, please?")]
--- response_body_like eval
[qr/"content":"Echo: How do I sort a list in Python\?"/,
 qr/"content":"Echo: Please, how can I sort a list in Python\?"/,
 qr/"content":"Echo: How do I sort a list in Python\?"/]
--- response_headers eval
["x-smartflow-cache: MISS", "x-smartflow-cache: MISS",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 4"]
--- grep_error_log eval
qr/embedder "[^"]+" did not answer in \d+ ms; phase 4 skipped/
--- grep_error_log_out eval
qr/\A(?:embedder "\/_embed_slow" did not answer in 300 ms; phase 4 skipped\n)?\z/
--- no_error_log
[error]



=== TEST 4: the endpoint down: phase 4 skipped, the request answered
--- request eval
[main::chat("How do I copy a list in Python?"),
 main::chat("Please, how can I copy a list in Python?", "/down"),
 main::chat("How can I copy a list in Python, please?")]
--- response_body_like eval
[qr/"content":"Echo: How do I copy a list in Python\?"/,
 qr/"content":"Echo: Please, how can I copy a list in Python\?"/,
 qr/"content":"Echo: How do I copy a list in Python\?"/]
--- response_headers eval
["x-smartflow-cache: MISS", "x-smartflow-cache: MISS",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 4"]
--- grep_error_log eval
qr/embedder "[^"]+" failed \(status \d+\); phase 4 skipped/
--- grep_error_log_out eval
qr/\A(?:embedder "\/_embed_down" failed \(status 502\); phase 4 skipped\n)?\z/



=== TEST 5: answers that are no embedding: phase 4 skipped, the request answered, nothing stored with a vector
--- request eval
[main::chat("How do I join a list in Python?", "/garbage1"),
 main::chat("Please, how can I join a list in Python?", "/garbage2"),
 main::chat("How can I join a list in Python, please?", "/garbage3"),
 main::chat("Please, how do I join a list in Python?", "/garbage4"),
 main::chat("How do I join a list in Python, please?")]
--- response_body_like eval
[qr/"content":"Echo: How do I join a list in Python\?"/,
 qr/"content":"Echo: Please, how can I join a list in Python\?"/,
 qr/"content":"Echo: How can I join a list in Python, please\?"/,
 qr/"content":"Echo: Please, how do I join a list in Python\?"/,
 qr/"content":"Echo: How do I join a list in Python, please\?"/]
--- response_headers eval
["x-smartflow-cache: MISS", "x-smartflow-cache: MISS",
 "x-smartflow-cache: MISS", "x-smartflow-cache: MISS",
 "x-smartflow-cache: MISS"]
--- grep_error_log eval
qr/embedder "[^"]+" answered no embedding/
--- grep_error_log_out eval
qr/\A(?:embedder "\/_garbage\d" answered no embedding\n)?\z/
--- no_error_log
[error]



=== TEST 6: slow: the request answered, one warning
--- request eval
main::chat("How do I shuffle a list in Python?", "/slow")
--- response_body_like chomp
"content":"Echo: How do I shuffle a list in Python\?"
--- response_headers
x-smartflow-cache: MISS
--- error_log
smartflow cache: embedder "/_embed_slow" did not answer in 300 ms; phase 4 skipped
--- no_error_log
[error]
--- wait: 2



=== TEST 7: down: the request answered, one warning
--- request eval
main::chat("How do I shuffle a list in Python?", "/down")
--- response_body_like chomp
"content":"Echo: How do I shuffle a list in Python\?"
--- response_headers
x-smartflow-cache: MISS
--- error_log
smartflow cache: embedder "/_embed_down" failed (status 502); phase 4 skipped



=== TEST 8: an answer that is not JSON: the request answered, one warning
--- request eval
main::chat("How do I shuffle a list in Python?", "/garbage1")
--- response_body_like chomp
"content":"Echo: How do I shuffle a list in Python\?"
--- response_headers
x-smartflow-cache: MISS
--- error_log
smartflow cache: embedder "/_garbage1" answered no embedding; phase 4 skipped
--- no_error_log
[error]



=== TEST 9: an answer that is a zero vector: the request answered, one warning
--- request eval
main::chat("How do I shuffle a list in Python?", "/garbage2")
--- response_body_like chomp
"content":"Echo: How do I shuffle a list in Python\?"
--- response_headers
x-smartflow-cache: MISS
--- error_log
smartflow cache: embedder "/_garbage2" answered no embedding; phase 4 skipped
--- no_error_log
[error]



=== TEST 10: an answer that is numbers as strings: the request answered, one warning
--- request eval
main::chat("How do I shuffle a list in Python?", "/garbage3")
--- response_body_like chomp
"content":"Echo: How do I shuffle a list in Python\?"
--- response_headers
x-smartflow-cache: MISS
--- error_log
smartflow cache: embedder "/_garbage3" answered no embedding; phase 4 skipped
--- no_error_log
[error]



=== TEST 11: an answer that is no data: the request answered, one warning
--- request eval
main::chat("How do I shuffle a list in Python?", "/garbage4")
--- response_body_like chomp
"content":"Echo: How do I shuffle a list in Python\?"
--- response_headers
x-smartflow-cache: MISS
--- error_log
smartflow cache: embedder "/_garbage4" answered no embedding; phase 4 skipped
--- no_error_log
[error]



=== TEST 12: an answer larger than subrequest_output_buffer_size: phase 4 skipped, the request answered, one warning
--- request eval
[main::chat("How do I flatten a list in Python?", "/small"),
 main::chat("Please, how can I flatten a list in Python?", "/small")]
--- response_body_like eval
[qr/"content":"Echo: How do I flatten a list in Python\?"/,
 qr/"content":"Echo: Please, how can I flatten a list in Python\?"/]
--- response_headers eval
["x-smartflow-cache: MISS", "x-smartflow-cache: MISS"]
--- grep_error_log eval
qr/embedder "[^"]+" answered more than its subrequest_output_buffer_size \(\d+ bytes\); phase 4 skipped/
--- grep_error_log_out eval
qr/\Aembedder "\/_embed_small" answered more than its subrequest_output_buffer_size \(64 bytes\); phase 4 skipped\n\z/
--- no_error_log
[error]



=== TEST 13: an answer the upstream kept in a temporary file is read from it: phase 4 hits
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_cache_zone metacache 32m entries=100 dim=4096;
    smartflow_cache metacache;
    smartflow_cache_near_miss off;
    smartflow_cache_similarity 0.80;
--- config
    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_cache_embedder /_embed model=mock-words dimensions=4096
                                 timeout=5s;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    # 4,096 floats in buffers of 2.5 KB: most of it in a temporary file
    location = /_embed {
        internal;
        proxy_pass http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/embeddings;
        proxy_buffer_size 512;
        proxy_buffers 4 512;
        proxy_busy_buffers_size 512;
        subrequest_output_buffer_size 64k;
    }

    location @smartflow_error {
        smartflow_api error;
    }
--- request eval
[main::chat("How do I slice a list in Python?"),
 main::chat("Please, how can I slice a list in Python?")]
--- response_body_like eval
[qr/"content":"Echo: How do I slice a list in Python\?"/,
 qr/"content":"Echo: How do I slice a list in Python\?"/]
--- response_headers eval
["x-smartflow-cache: MISS", "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 4"]
--- error_log
an upstream response is buffered to a temporary file
--- no_error_log
[error]



=== TEST 14: the embedder's parameters are checked
--- config
    location = /v1/chat/completions {
        smartflow_cache_embedder /_embed dimensions=4097;
    }
--- must_die
--- error_log
smartflow_cache_embedder: invalid parameter "dimensions=4097"



=== TEST 15: the embedder is builtin or a URI
--- config
    location = /v1/chat/completions {
        smartflow_cache_embedder http://127.0.0.1:1/v1/embeddings;
    }
--- must_die
--- error_log
smartflow_cache_embedder: "http://127.0.0.1:1/v1/embeddings" is neither "builtin" nor the URI of a location



=== TEST 16: a timeout of zero is refused
--- config
    location = /v1/chat/completions {
        smartflow_cache_embedder /_embed timeout=0;
    }
--- must_die
--- error_log
smartflow_cache_embedder: invalid parameter "timeout=0"
