# Zones of real embedding sizes: dim=384 (all-MiniLM-L6-v2) and dim=1536
# (text-embedding-3-small), filled by the mock provider's /v1/embeddings
# ("mock-words": a bag of words hashed into `dimensions` floats, computed
# again here in Perl, so a hit's similarity is checked against the cosine
# of the endpoint's own vectors).  An endpoint that answers another
# number of dimensions than the zone holds gets an error_log line and the
# lookup skips phase 4: the request is answered by the provider, and
# nothing is served from a vector of the wrong size.  The vectors of a
# large zone go through its snapshot and its FAISS index alike.

use lib 't/lib';
use Smartflow::Blocks;
use Digest::SHA qw(sha256);
use Smartflow::Keys;
use Smartflow::Mock;
use Test::Nginx::Socket 'no_plan';

no_shuffle();

unlink server_root() . '/dim384.snap';

our $MainConfig = <<'_EOC_';
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_cache_module.so;
_EOC_

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_cache_zone mini 16m entries=1000 dim=384
                         snapshot=dim384.snap;
    smartflow_cache_zone large 32m entries=1000 dim=1536;
    smartflow_cache_near_miss off;
    smartflow_cache_similarity 0.80;
_EOC_

our $Locations = <<'_EOC_';
    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_cache mini;
        smartflow_cache_embedder /_embed model=mock-words dimensions=384
                                 timeout=5s;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /large/v1/chat/completions {
        smartflow_api chat;
        smartflow_cache large;
        smartflow_cache_embedder /_embed model=mock-words dimensions=1536
                                 timeout=5s;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    # the endpoint's default size (16): the zone holds 384
    location = /default/v1/chat/completions {
        smartflow_api chat;
        smartflow_cache mini;
        smartflow_cache_embedder /_embed model=mock-words timeout=5s;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    # an endpoint that answers 1536 whatever it is asked: the zone has 384
    location = /wrong/v1/chat/completions {
        smartflow_api chat;
        smartflow_cache mini;
        smartflow_cache_embedder /_embed_1536 model=mock-words timeout=5s;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /_embed {
        internal;
        proxy_pass http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/embeddings;
        subrequest_output_buffer_size 128k;
    }

    location = /_embed_1536 {
        internal;
        proxy_set_body
            '{"input":"$request_id","model":"mock-words","dimensions":1536}';
        proxy_pass http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/embeddings;
        subrequest_output_buffer_size 128k;
    }

    location /api/metacache {
        smartflow_cache_api;
        smartflow_cache mini;
    }

    location @smartflow_error {
        smartflow_api error;
    }
_EOC_

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

# the similarity header for the cosine of two texts in $dim dimensions
sub similarity {
    my ($a, $b, $dim) = @_;
    my @x = words($a, $dim);
    my @y = words($b, $dim);
    my $dot = 0;
    $dot += $x[$_] * $y[$_] for 0 .. $dim - 1;
    my $pm = int($dot * 1000 + 0.5);
    die "the pair is below the threshold: $pm\n" if $pm < 800;
    return 'x-smartflow-cache-similarity: (?:'
        . join('|', map { sprintf '%d\.%03d', int($_ / 1000), $_ % 1000 }
                        $pm - 1, $pm, $pm + 1)
        . ')';
}

our $Master = 'Authorization: Bearer sk-smartflow-test-0123456789';

sub body {
    return qq({"model":"smartflow-echo","messages":[{"role":"user","content":"$_[0]"}]});
}

our $Q = 'How do I reverse a list in Python?';
our $P = 'Please, how can I reverse a list in Python?';

run_tests();

__DATA__

=== TEST 1: dim=384: phase 4 through the endpoint, the cosine of its 384-dimension vectors
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
["", main::similarity($main::Q, $main::P, 384),
 main::similarity($main::Q, $main::P, 384)]
--- no_error_log
[error]
[warn]



=== TEST 2: dim=1536: the same through a zone of 1536 dimensions
--- request eval
[main::chat($main::Q, "/large"), main::chat($main::P, "/large")]
--- response_body_like eval
[qr/"content":"Echo: How do I reverse a list in Python\?"/,
 qr/"content":"Echo: How do I reverse a list in Python\?"/]
--- response_headers eval
["x-smartflow-cache: MISS",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 4"]
--- response_headers_like eval
["", main::similarity($main::Q, $main::P, 1536)]
--- no_error_log
[error]
[warn]



=== TEST 3: an endpoint answering 16 dimensions to a zone of 384: phase 4 skipped, answered by the provider, an error line
--- request eval
[main::chat("How do I sort a list in Python?"),
 main::chat("Please, how can I sort a list in Python?", "/default"),
 main::chat("How can I sort a list in Python, please?")]
--- response_body_like eval
[qr/"content":"Echo: How do I sort a list in Python\?"/,
 qr/"content":"Echo: Please, how can I sort a list in Python\?"/,
 qr/"content":"Echo: How do I sort a list in Python\?"/]
--- response_headers eval
["x-smartflow-cache: MISS", "x-smartflow-cache: MISS",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 4"]
--- grep_error_log eval
qr/smartflow cache: embedder "[^"]+" answered \d+ dimensions, zone "[^"]+" has dim=\d+; phase 4 skipped/
--- grep_error_log_out eval
qr/\A(?:smartflow cache: embedder "\/_embed" answered 16 dimensions, zone "mini" has dim=384; phase 4 skipped\n)?\z/



=== TEST 4: an endpoint answering 1536 dimensions to a zone of 384: phase 4 skipped, nothing wrong served
--- request eval
[main::chat("How do I copy a list in Python?"),
 main::chat("Please, how can I copy a list in Python?", "/wrong"),
 main::chat("Please, how can I copy a list in Python?", "/wrong"),
 main::chat("How can I copy a list in Python, please?")]
--- response_body_like eval
[qr/"content":"Echo: How do I copy a list in Python\?"/,
 qr/"content":"Echo: Please, how can I copy a list in Python\?"/,
 qr/"content":"Echo: Please, how can I copy a list in Python\?"/,
 qr/"content":"Echo: How do I copy a list in Python\?"/]
--- response_headers eval
["x-smartflow-cache: MISS", "x-smartflow-cache: MISS",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 1",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 4"]
--- grep_error_log eval
qr/embedder "[^"]+" answered \d+ dimensions, zone "[^"]+" has dim=\d+/
--- grep_error_log_out eval
qr/\A(?:embedder "\/_embed_1536" answered 1536 dimensions, zone "mini" has dim=384\n)?\z/



=== TEST 5: 16 dimensions to a zone of 384: the request answered, one error line
--- request eval
main::chat("How do I shuffle a list in Python?", "/default")
--- response_body_like chomp
"content":"Echo: How do I shuffle a list in Python\?"
--- response_headers
x-smartflow-cache: MISS
--- error_log
smartflow cache: embedder "/_embed" answered 16 dimensions, zone "mini" has dim=384; phase 4 skipped



=== TEST 6: 1536 dimensions to a zone of 384: the request answered, one error line
--- request eval
main::chat("How do I shuffle a tuple in Python?", "/wrong")
--- response_body_like chomp
"content":"Echo: How do I shuffle a tuple in Python\?"
--- response_headers
x-smartflow-cache: MISS
--- error_log
smartflow cache: embedder "/_embed_1536" answered 1536 dimensions, zone "mini" has dim=384; phase 4 skipped



=== TEST 7: the zone's stats name its dimension
--- request
GET /api/metacache/stats
--- response_body_like chomp
"zone":"mini".*"dimension":384,
--- no_error_log
[error]



=== TEST 8: the 384-dimension vectors come back from the snapshot after a restart
--- request eval
[main::chat("Please, how can I reverse a list in Python?"),
 main::chat("How can I reverse a list in Python?")]
--- response_body_like eval
[qr/"content":"Echo: How do I reverse a list in Python\?"/,
 qr/"content":"Echo: How do I reverse a list in Python\?"/]
--- response_headers eval
["x-smartflow-cache: HIT\nx-smartflow-cache-phase: 4",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 4"]
--- response_headers_like eval
[main::similarity($main::Q, $main::P, 384),
 main::similarity($main::Q,
                  "How can I reverse a list in Python?", 384)]
--- no_error_log
[error]



=== TEST 9: a snapshot of another dimension: the zone starts empty (a warning at start-up), nginx starts
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_cache_zone mini 16m entries=1000 dim=512
                         snapshot=dim384.snap;
    smartflow_cache_zone large 32m entries=1000 dim=1536;
    smartflow_cache_near_miss off;
    smartflow_cache_similarity 0.80;
--- config
    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_cache mini;
        smartflow_cache_embedder /_embed model=mock-words dimensions=512
                                 timeout=5s;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /_embed {
        internal;
        proxy_pass http://127.0.0.1:$TEST_NGINX_MOCK_PORT/v1/embeddings;
        subrequest_output_buffer_size 128k;
    }

    location @smartflow_error {
        smartflow_api error;
    }
--- request eval
[main::chat($main::Q), main::chat($main::P)]
--- response_headers eval
["x-smartflow-cache: MISS",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 4"]
--- response_headers_like eval
["", main::similarity($main::Q, $main::P, 512)]
--- no_error_log
[error]



=== TEST 10: the builtin embedder in a zone of dim=1000, a context of more than 1,024 entries searched through FAISS
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_cache_zone wide 48m entries=2000 dim=1000;
    smartflow_cache_near_miss off;
    smartflow_cache_similarity 0.85;
--- config
    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_cache wide;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location /api/metacache {
        smartflow_cache_api;
        smartflow_cache wide;
    }

    location @smartflow_error {
        smartflow_api error;
    }
--- init
Smartflow::Keys::burst(1, 'POST', '/v1/chat/completions',
                       main::body("Write a short poem about the ocean"),
                       $main::Master);
# 1,100 more questions of one context and no number, each with a made-up
# word: one group
for my $i (1 .. 1100) {
    my $w = Smartflow::Keys::made_up($i);
    Smartflow::Keys::burst(1, 'POST', '/v1/chat/completions',
                           main::body("Write a short poem about the $w"),
                           $main::Master);
}
my $st = Smartflow::Keys::burst(1, 'GET', '/api/metacache/stats', undef,
                                $main::Master);
Test::More::like($st->[0][1], qr/"dimension":1000,/, 'the zone of dim=1000');
my ($entries) = $st->[0][1] =~ /"entries":(\d+)/;
Test::More::cmp_ok($entries, '>', 1024, 'one context of more than 1,024');
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



=== TEST 11: dim= is a number from 1 to 4096
--- http_config
    smartflow_cache_zone mini 16m dim=4097;
--- config
--- must_die
--- error_log
smartflow_cache_zone: invalid parameter "dim=4097"



=== TEST 12: dim=0 is refused
--- http_config
    smartflow_cache_zone mini 16m dim=0;
--- config
--- must_die
--- error_log
smartflow_cache_zone: invalid parameter "dim=0"



=== TEST 13: an embedder asking for other dimensions than its zone holds is refused
--- config
    location = /v1/chat/completions {
        smartflow_cache large;
        smartflow_cache_embedder /_embed dimensions=384;
    }
--- must_die
--- error_log
smartflow_cache_embedder "/_embed" asks for dimensions=384, zone "large" has dim=1536



=== TEST 14: a zone too small for its vectors says so
--- http_config
    smartflow_cache_zone huge 1m entries=1000 dim=4096;
--- config
--- must_die
--- error_log
smartflow cache: zone "huge" is too small for 1000 vectors of dim=4096
