# snapshot=PATH: the entries are written when nginx stops and read back
# when it starts again; expired ones stay behind; a damaged file starts
# the zone empty, as does a file of an older format (even one shorter
# than this format's head), with a line that says so, and a forged file
# larger than memory; a file that cannot be read is logged, and nginx
# starts all the same; two zones cannot share one file.  Each block here
# runs in a new nginx: the zone itself is new every time.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use Smartflow::Blocks;

no_shuffle();

unlink server_root() . '/metacache.snap';

# read by the last blocks' nginx at their start
if (open my $fh, '>', server_root() . '/damaged.snap') {
    print $fh "SMFC0006 but nothing after it is right";
    close $fh;
}

# a snapshot of the format before, whose records had no count in the head
if (open my $fh, '>', server_root() . '/older.snap') {
    print $fh "SFMC0005", pack('V V', 256, 64), "\0" x 600;
    close $fh;
}

# that format's snapshot of an empty zone: its head alone, 16 bytes
if (open my $fh, '>', server_root() . '/older-empty.snap') {
    print $fh "SFMC0005", pack('V V', 256, 64);
    close $fh;
}

# a forged file of two terabytes, holes after its head: more than the
# memory of the machine, which a start reads no further than its head
if (open my $fh, '>', server_root() . '/huge.snap') {
    print $fh "SFMC0006", pack('V V V V V', 256, 64, 4294967295, 0, 0);
    truncate $fh, 2 * 2**40 or die "huge.snap: $!";
    close $fh;
}

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_cache_zone metacache 16m entries=1000
                         snapshot=metacache.snap;
_EOC_

our $Locations = <<'_EOC_';
    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_cache metacache;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location @smartflow_error {
        smartflow_api error;
    }
_EOC_

Smartflow::Blocks::defaults(http_config => $HttpConfig,
                            config => $Locations,
                            more_headers => $OpenAIKey);

sub ask {
    return "POST /v1/chat/completions\n"
        . qq({"model":"smartflow-echo","messages":[{"role":"user","content":"$_[0]"}]});
}

run_tests();

__DATA__

=== TEST 1: answers stored, one of them for a second only
--- request eval
[main::ask("Write a short poem about the ocean"),
 main::ask("Will this one last?")]
--- more_headers eval
["Authorization: Bearer sk-smartflow-test-0123456789",
 "Authorization: Bearer sk-smartflow-test-0123456789\nx-smartflow-cache-ttl: 1"]
--- response_headers eval
["x-smartflow-cache: MISS", "x-smartflow-cache: MISS"]
--- no_error_log
[error]



=== TEST 2: after a restart: the long-lived entry is back, phase 4 included; the expired one is not
--- init
sleep 2;
--- request eval
[main::ask("Write a short poem about the ocean"),
 main::ask("Will this one last?")]
--- response_headers eval
["x-smartflow-cache: HIT\nx-smartflow-cache-phase: 1",
 "x-smartflow-cache: MISS"]
--- no_error_log
[error]



=== TEST 3: a damaged snapshot: nginx starts with an empty zone
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_cache_zone metacache 16m entries=1000 snapshot=damaged.snap;
--- request eval
[main::ask("Write a short poem about the ocean")]
--- response_headers eval
["x-smartflow-cache: MISS"]
--- error_log eval
qr/\[warn\].*smartflow cache: the snapshot "[^"]*damaged\.snap" is damaged; the zone starts empty/
--- no_error_log
[error]



=== TEST 4: a snapshot of an older format is not read: a line says so, nginx starts with an empty zone
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_cache_zone metacache 16m entries=1000 snapshot=older.snap;
--- request eval
[main::ask("Write a short poem about the ocean")]
--- response_headers eval
["x-smartflow-cache: MISS"]
--- error_log eval
qr/\[warn\].*smartflow cache: the snapshot "[^"]*older\.snap" is of another format \(SFMC0005, this nginx reads SFMC0006\); the zone starts empty/
--- no_error_log
[error]



=== TEST 5: the older format's snapshot of an empty zone, shorter than this format's head, is of another format too
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_cache_zone metacache 16m entries=1000 snapshot=older-empty.snap;
--- request eval
[main::ask("Write a short poem about the ocean")]
--- response_headers eval
["x-smartflow-cache: MISS"]
--- error_log eval
qr/\[warn\].*smartflow cache: the snapshot "[^"]*older-empty\.snap" is of another format \(SFMC0005, this nginx reads SFMC0006\); the zone starts empty/
--- no_error_log
[error]
damaged



=== TEST 6: a forged snapshot of two terabytes is damaged: nginx starts with an empty zone
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_cache_zone metacache 16m entries=1000 snapshot=huge.snap;
--- request eval
[main::ask("Write a short poem about the ocean")]
--- response_headers eval
["x-smartflow-cache: MISS"]
--- error_log eval
qr/\[warn\].*smartflow cache: the snapshot "[^"]*huge\.snap" is damaged; the zone starts empty/
--- no_error_log
[error]
[emerg]



=== TEST 7: a snapshot that cannot be read is logged, and nginx starts with an empty zone
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_cache_zone metacache 16m entries=1000
                         snapshot=damaged.snap/inside;
--- request eval
[main::ask("Write a short poem about the ocean")]
--- response_headers eval
["x-smartflow-cache: MISS"]
--- error_log eval
qr/\[warn\].*smartflow cache: the snapshot "[^"]*damaged\.snap\/inside" cannot be read/



=== TEST 8: two zones cannot share a snapshot: read back, each would hold the other's entries
--- http_config
    smartflow_cache_zone one 1m snapshot=shared.snap;
    smartflow_cache_zone two 1m snapshot=shared.snap;
--- config
--- must_die
--- error_log eval
qr/smartflow_cache_zone "two": snapshot "[^"]*shared\.snap" is zone "one"'s already/
