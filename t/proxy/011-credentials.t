# Provider credentials sealed at rest (smartflow_credentials_key,
# smartflow_credentials_store, key=enc:v1:...): a sealed key in nginx.conf
# reaches its provider; the admin API sets, replaces and removes a
# provider's credential at run time, kept across restarts in a store that
# holds no plaintext; no answer and no log line shows a credential; bad
# input, a wrong key and a changed store are refused.  Keys up to 1024
# bytes are taken whatever the packets the body came in; a larger body is
# a 413.  Saves running at once in the thread pool all succeed and the
# store keeps the last state.
#
# What the provider receives is seen in the mock's x-mock-authorization
# and x-mock-api-key answer headers.

use lib 't/lib';
use Smartflow::Memory;
use Smartflow::Mock;
use Digest::SHA ();
use IO::Select;
use IO::Socket::INET;
use POSIX ();
use Test::Nginx::Socket 'no_plan';

no_shuffle();

$ENV{TEST_NGINX_FIXTURE_PORT} ||= 1988;

our $Key = '7f' x 32;
our $OtherKey = '01' x 32;
$ENV{SMARTFLOW_TEST_CREDENTIALS_KEY} = $Key;
$ENV{SMARTFLOW_TEST_OTHER_KEY} = $OtherKey;

unlink server_root() . '/credentials.json';

# AES-256-GCM, nonce || ciphertext || tag in base64url, the provider's name
# as additional data: sealed by node's OpenSSL, independently of the module
sub seal {
    my ($key, $name, $plain) = @_;
    my $js = <<'JS';
const c = require('crypto');
const [key, name, plain] = process.argv.slice(1);
const iv = c.randomBytes(12);
const e = c.createCipheriv('aes-256-gcm', Buffer.from(key, 'hex'), iv);
e.setAAD(Buffer.from(name));
const ct = Buffer.concat([e.update(plain), e.final()]);
process.stdout.write(Buffer.concat([iv, ct, e.getAuthTag()]).toString('base64url'));
JS
    open my $fh, '-|', 'node', '-e', $js, $key, $name, $plain
        or die "node: $!";
    local $/;
    my $out = <$fh>;
    close $fh or die "node failed";
    return "enc:v1:$out";
}

sub fp { 'sha256:' . substr(Digest::SHA::sha256_hex($_[0]), 0, 16) }

# keys as long as the API takes: they do not fit in the first read with
# the request's headers (client_header_buffer_size 1k)
our $Long800 = 'sk-long-' . ('L' x 792);
our $Long1024 = 'sk-long-' . ('M' x 1016);
our $Long1025 = 'sk-long-' . ('N' x 1017);

# the key of a provider after round $n of the concurrent saves
our $Rounds = 40;
sub round_key { "sk-round-$_[0]-$_[1]" }

# the requests, each on its own connection, all sent before any answer is
# read; their answers as [status, body]
sub concurrently {
    my @requests = @_;
    my $port = Test::Nginx::Util::server_port_for_client();
    my (@socks, @out, %buf);

    for my $req (@requests) {
        my ($method, $path, $body) = @$req;
        my $sock;
        for (1 .. 100) {
            $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                          PeerPort => $port,
                                          Proto => 'tcp', Timeout => 5)
                and last;
            select(undef, undef, undef, 0.1);
        }
        die "cannot connect to port $port: $!\n" unless $sock;
        push @socks, $sock;
        $buf{$sock} = '';
        push @out, "$method $path HTTP/1.1\r\nHost: localhost\r\n"
            . "Connection: close\r\n"
            . "Authorization: Bearer sk-smartflow-test-0123456789\r\n"
            . (defined $body
               ? 'Content-Length: ' . length($body) . "\r\n\r\n$body"
               : "\r\n");
    }

    $socks[$_]->syswrite($out[$_]) for 0 .. $#socks;

    my $sel = IO::Select->new(@socks);
    my $deadline = time + 20;
    while ($sel->count && time < $deadline) {
        for my $sock ($sel->can_read(1)) {
            if ($sock->sysread(my $chunk, 65536)) {
                $buf{$sock} .= $chunk;
            } else {
                $sel->remove($sock);
                $sock->close;
            }
        }
    }

    return map {
        my ($status) = $buf{$_} =~ m{^HTTP/1\.\d (\d+)};
        my (undef, $content) = split /\r\n\r\n/, $buf{$_}, 2;
        [ $status // 0, $content // '' ]
    } @socks;
}

# two stores nginx must refuse: sealed under another key, and one byte off
sub store {
    my ($file, $sealed) = @_;
    $sealed =~ s/^enc:v1://;
    my $f = server_root() . "/$file";
    open my $fh, '>', $f or die "$f: $!";
    print $fh '{"version":1,"generation":3,"credentials":[', "\n",
              qq({"provider":"mock","updated":1,"sealed":"$sealed"}), "\n]}\n";
    close $fh;
}

store('wrong-key.json', seal($OtherKey, 'mock', 'sk-from-api-3333'));
my $changed = seal($Key, 'mock', 'sk-from-api-3333');
substr($changed, 30, 1) = substr($changed, 30, 1) eq 'A' ? 'B' : 'A';
store('changed.json', $changed);

our $Sealed = seal($Key, 'claude', 'sk-ant-sealed-2222');
our $SealedForOther = seal($Key, 'mock', 'sk-ant-sealed-2222');

our $MainConfig = <<'_EOC_';
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_policy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_audit_module.so;

    thread_pool sf threads=1;
    env SMARTFLOW_TEST_CREDENTIALS_KEY;
_EOC_

our $HttpConfig = <<"_EOC_";
    smartflow_master_key sk-smartflow-test-0123456789;

    smartflow_credentials_key env:SMARTFLOW_TEST_CREDENTIALS_KEY;
    smartflow_credentials_store credentials.json thread_pool=sf;

    upstream sf_mock {
        server 127.0.0.1:\$TEST_NGINX_MOCK_PORT;
    }

    smartflow_provider mock type=openai upstream=http://sf_mock
                       key=sk-config-openai-1111;
    smartflow_provider claude type=anthropic upstream=http://sf_mock
                       key=$Sealed;
    smartflow_provider bare type=openai upstream=http://sf_mock;

    smartflow_route gpt-4o-mini mock;
    smartflow_route claude-3-5-haiku-latest claude;
_EOC_

our $Locations = <<'_EOC_';
    location = /v1/chat/completions {
        smartflow_api chat;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /anthropic/v1/messages {
        smartflow_api messages;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    include $TEST_NGINX_SMARTFLOW_CONF/smartflow_admin.conf;

    # the store, to look at what is on disk
    location = /credentials.json {
        root .;
    }

    location @smartflow_error {
        smartflow_api error;
    }
_EOC_

our $Chat = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}';
our $Messages = '{"model":"claude-3-5-haiku-latest","max_tokens":16,'
              . '"messages":[{"role":"user","content":"hi"}]}';

add_block_preprocessor(sub {
    my $block = shift;

    $block->set_value('main_config', $MainConfig)
        unless defined $block->main_config;
    $block->set_value('http_config', $HttpConfig)
        unless defined $block->http_config;
    $block->set_value('config', $Locations)
        unless defined $block->config;
    $block->set_value('more_headers',
                      'Authorization: Bearer sk-smartflow-test-0123456789')
        unless defined $block->more_headers;

    # nginx's own debug log shows the headers it sends upstream; what an
    # operator runs, info and above, must show no credential
    $block->set_value('log_level', 'info') unless defined $block->log_level;

    # no log line may hold a credential, whatever the block checks
    my @never = ('sk-config-openai-1111', 'sk-ant-sealed-2222',
                 'sk-from-api-3333', 'sk-from-api-4444', 'sk-long-',
                 'sk-round-');
    my $nel = $block->no_error_log;
    $block->set_value('no_error_log',
                      [ ($nel ? (ref $nel ? @$nel : split /\n/, $nel) : ()),
                        @never ]);

    return $block;
});

our @Quiet;
END { kill 'TERM', @Quiet if @Quiet }

# A provider of the test's own, in a process of its own, that answers
# every request with a completion and never repeats what it was sent (the
# mock's x-mock-* headers would bring the credential back into nginx).
sub quiet_provider {
    my $port = $ENV{TEST_NGINX_FIXTURE_PORT};
    my $srv = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                    LocalPort => $port, Listen => 8,
                                    ReuseAddr => 1, Proto => 'tcp')
        or die "cannot listen on $port: $!\n";
    my $pid = fork;
    die "fork: $!\n" unless defined $pid;
    if ($pid) {
        close $srv;
        push @Quiet, $pid;
        return;
    }

    my $body = '{"id":"chatcmpl-q","object":"chat.completion","created":1,'
             . '"model":"gpt-quiet","choices":[{"index":0,"message":'
             . '{"role":"assistant","content":"quiet"},"finish_reason":'
             . '"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,'
             . '"total_tokens":2}}';
    alarm 60;
    while (my $c = $srv->accept) {
        my $req = '';
        while ($req !~ /\r\n\r\n/) {
            last unless sysread $c, $req, 4096, length $req;
        }
        my ($len) = $req =~ /^content-length:\s*(\d+)/mi;
        my ($head, $rest) = split /\r\n\r\n/, $req, 2;
        $rest //= '';
        while (length($rest) < ($len // 0)) {
            last unless sysread $c, $rest, 4096, length $rest;
        }
        print {$c} "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                   . "Content-Length: " . length($body) . "\r\n"
                   . "Connection: close\r\n\r\n$body";
        close $c;
    }
    POSIX::_exit(0);
}


run_tests();

__DATA__

=== TEST 1: a sealed key= reaches its provider; the configured one too
--- request eval
["POST /anthropic/v1/messages\n$::Messages", "POST /v1/chat/completions\n$::Chat"]
--- error_code eval
[200, 200]
--- response_headers eval
["x-mock-api-key: sk-ant-sealed-2222", "x-mock-authorization: Bearer sk-config-openai-1111"]
--- no_error_log
[error]



=== TEST 2: the providers and where their credentials come from, no secret
--- request
GET /api/providers
--- response_body eval
'{"object":"list","data":[{"name":"mock","type":"openai","credential":"config","fingerprint":"'
. main::fp('sk-config-openai-1111') . '"},{"name":"claude","type":"anthropic","credential":"config","fingerprint":"'
. main::fp('sk-ant-sealed-2222') . '"},{"name":"bare","type":"openai","credential":"none"}]}'
--- no_error_log
[error]



=== TEST 3: set a credential through the API: its fingerprint, not itself
--- request
PUT /api/providers/mock/credential
{"key":"sk-from-api-3333"}
--- error_code: 200
--- response_body_like eval
'^\{"provider":"mock","credential":"api","fingerprint":"' . main::fp('sk-from-api-3333') . '","updated":\d+\}$'
--- error_log
smartflow credentials: provider "mock" credential set through the admin API
--- no_error_log
[error]



=== TEST 4: every request now carries it, the other provider keeps its own
--- request eval
["POST /v1/chat/completions\n$::Chat", "POST /anthropic/v1/messages\n$::Messages"]
--- response_headers eval
["x-mock-authorization: Bearer sk-from-api-3333", "x-mock-api-key: sk-ant-sealed-2222"]
--- no_error_log
[error]



=== TEST 5: the store on disk holds it sealed, never in clear
--- request
GET /credentials.json
--- more_headers
--- response_body_like
^\{"version":1,"generation":1,"credentials":\[\n\{"provider":"mock","updated":\d+,"sealed":"[A-Za-z0-9_-]{40,}"\}\n\]\}$
--- response_body_unlike: sk-from-api|3333
--- no_error_log
[error]



=== TEST 6: after a restart the store is read back
--- config eval
$::Locations . "    # restarted\n"
--- request eval
["POST /v1/chat/completions\n$::Chat", "GET /api/providers"]
--- response_headers eval
["x-mock-authorization: Bearer sk-from-api-3333", ""]
--- response_body_like eval
['', '"name":"mock","type":"openai","credential":"api","fingerprint":"' . main::fp('sk-from-api-3333') . '"']
--- no_error_log
[error]



=== TEST 7: replace it
--- request eval
["PUT /api/providers/mock/credential\n{\"key\":\"sk-from-api-4444\"}", "POST /v1/chat/completions\n$::Chat"]
--- error_code eval
[200, 200]
--- response_headers eval
["", "x-mock-authorization: Bearer sk-from-api-4444"]
--- no_error_log
[error]



=== TEST 8: seal a value for nginx.conf: nothing is stored
--- request
POST /api/providers/bare/seal
{"key":"sk-to-seal-5555"}
--- response_body_like chomp
^\{"provider":"bare","value":"enc:v1:[A-Za-z0-9_-]{40,}"\}$
--- response_body_unlike: 5555
--- no_error_log
[error]



=== TEST 9: bad input: 4xx in OpenAI's format, nothing changed
--- request eval
["PUT /api/providers/mock/credential\n{\"key\":", "PUT /api/providers/mock/credential\n{\"key\":\"a b\"}", "PUT /api/providers/mock/credential\n{\"key\":42}", "PUT /api/providers/mock/credential\n{\"key\":\"x\",\"note\":1}", "PUT /api/providers/nobody/credential\n{\"key\":\"x\"}", "GET /api/providers/mock/credential", "GET /api/providers/mock/other", "POST /v1/chat/completions\n$::Chat"]
--- error_code eval
[400, 400, 400, 400, 404, 405, 404, 200]
--- response_body_like eval
['"code":"invalid_json"', '"code":"invalid_key"', '"code":"invalid_key"', '"code":"unknown_field"', '"code":"provider_not_found"', '"code":"method_not_allowed"', '"code":"unknown_url"', '"object":"chat.completion"']
--- response_headers eval
["", "", "", "", "", "", "", "x-mock-authorization: Bearer sk-from-api-4444"]



=== TEST 10: the master key only
--- request
PUT /api/providers/mock/credential
{"key":"sk-intruder-6666"}
--- more_headers
Authorization: Bearer sk-not-the-master-key-000
--- error_code: 401
--- response_body_like: "error"



=== TEST 11: remove it
--- request
DELETE /api/providers/mock/credential
--- response_body chomp
{"provider":"mock","credential":"config"}
--- error_log
smartflow credentials: provider "mock" credential removed through the admin API
--- no_error_log
[error]



=== TEST 12: the configured key again; removing twice is 404
--- request eval
["POST /v1/chat/completions\n$::Chat", "DELETE /api/providers/mock/credential"]
--- error_code eval
[200, 404]
--- response_headers eval
["x-mock-authorization: Bearer sk-config-openai-1111", ""]
--- response_body_like eval
['"object":"chat.completion"', '"code":"credential_not_found"']



=== TEST 13: keys of 800 and 1024 bytes, in a body that comes in two reads
--- request eval
["PUT /api/providers/mock/credential\n{\"key\":\"$::Long800\"}", "POST /v1/chat/completions\n$::Chat", "PUT /api/providers/mock/credential\n{\"key\":\"$::Long1024\"}", "POST /v1/chat/completions\n$::Chat", "POST /api/providers/bare/seal\n{\"key\":\"$::Long1024\"}"]
--- error_code eval
[200, 200, 200, 200, 200]
--- response_body_like eval
['"fingerprint":"' . main::fp($::Long800) . '"', '"object":"chat.completion"', '"fingerprint":"' . main::fp($::Long1024) . '"', '"object":"chat.completion"', '^\{"provider":"bare","value":"enc:v1:[A-Za-z0-9_-]{1300,}"\}$']
--- response_headers eval
["", "x-mock-authorization: Bearer $::Long800", "", "x-mock-authorization: Bearer $::Long1024", ""]
--- no_error_log
[error]



=== TEST 14: a key over 1024 bytes is a 400, a body over 8192 bytes a 413
--- request eval
["PUT /api/providers/mock/credential\n{\"key\":\"$::Long1025\"}", "PUT /api/providers/mock/credential\n{\"key\":\"sk-x\"" . (' ' x 8200) . "}", "POST /api/providers/bare/seal\n{\"key\":\"sk-x\"" . (' ' x 8200) . "}", "POST /v1/chat/completions\n$::Chat"]
--- error_code eval
[400, 413, 413, 200]
--- response_body_like eval
['"code":"invalid_key"', '"code":"body_too_large"', '"code":"body_too_large"', '"object":"chat.completion"']
--- response_headers eval
["", "", "", "x-mock-authorization: Bearer $::Long1024"]



=== TEST 15: saves at once in the thread pool all succeed, in order
--- main_config eval
$::MainConfig =~ s/threads=1/threads=8/r
--- init
my (@status, @failed);
for my $n (1 .. $::Rounds) {
    # one change per provider a round: the last round decides the state
    my @r = main::concurrently(
        ['PUT', '/api/providers/mock/credential',
         '{"key":"' . main::round_key($n, 'mock') . '"}'],
        ['PUT', '/api/providers/claude/credential',
         '{"key":"' . main::round_key($n, 'claude') . '"}'],
        $n % 2
        ? ['PUT', '/api/providers/bare/credential',
           '{"key":"' . main::round_key($n, 'bare') . '"}']
        : ['DELETE', '/api/providers/bare/credential']);
    push @status, map { $_->[0] } @r;
    push @failed, map { "round $n: $_->[0] $_->[1]" }
                  grep { $_->[0] != 200 } @r;
}
Test::More::is(scalar(grep { $_ == 200 } @status), 3 * $::Rounds,
               'every save answered 200')
    or Test::More::diag(join "\n", @failed[0 .. ($#failed < 4 ? $#failed : 4)]);
--- request
GET /credentials.json
--- more_headers
--- response_body_like
^\{"version":1,"generation":\d+,"credentials":\[\n\{"provider":"(mock|claude)","updated":\d+,"sealed":"[A-Za-z0-9_-]{40,}"\},\n\{"provider":"(mock|claude)","updated":\d+,"sealed":"[A-Za-z0-9_-]{40,}"\}\n\]\}$
--- no_error_log
[error]
[crit]



=== TEST 16: after a restart the store holds what the last saves set
--- config eval
$::Locations . "    # restarted\n"
--- request eval
["GET /api/providers", "POST /v1/chat/completions\n$::Chat", "POST /anthropic/v1/messages\n$::Messages"]
--- response_body_like eval
['^\{"object":"list","data":\[\{"name":"mock","type":"openai","credential":"api","fingerprint":"' . main::fp(main::round_key($::Rounds, 'mock')) . '"\},\{"name":"claude","type":"anthropic","credential":"api","fingerprint":"' . main::fp(main::round_key($::Rounds, 'claude')) . '"\},\{"name":"bare","type":"openai","credential":"none"\}\]\}$', '"object":"chat.completion"', '"type":"message"']
--- response_headers eval
["", "x-mock-authorization: Bearer " . main::round_key($::Rounds, 'mock'), "x-mock-api-key: " . main::round_key($::Rounds, 'claude')]
--- no_error_log
[error]



=== TEST 17: a sealed key= for another provider does not open
--- http_config eval
my $c = $::HttpConfig;
$c =~ s/key=\Q$::Sealed\E/key=$::SealedForOther/;
$c
--- must_die
--- error_log
smartflow provider "claude": its key=enc: value does not open



=== TEST 18: a store the key cannot open stops nginx
--- http_config eval
$::HttpConfig =~ s/store credentials.json/store wrong-key.json/r
--- must_die
--- error_log
smartflow credentials: the credential of provider "mock" in



=== TEST 19: a store with one byte changed stops nginx
--- http_config eval
$::HttpConfig =~ s/store credentials.json/store changed.json/r
--- must_die
--- error_log
does not open with smartflow_credentials_key



=== TEST 20: no copy of a credential is left in memory once done with
A credential set through the API (with an escape in its JSON), sent to
its provider, then replaced by a shorter one: nothing of it is left in
nginx's memory, neither in the request that set it, nor in the request
sent to the provider, nor behind the shorter one.
--- http_config eval
$::HttpConfig . <<'_EOC_'
    upstream sf_quiet {
        server 127.0.0.1:$TEST_NGINX_FIXTURE_PORT;
    }

    smartflow_provider quiet type=openai upstream=http://sf_quiet;
    smartflow_route gpt-quiet quiet;
_EOC_
--- init
::quiet_provider();
--- request eval
["PUT /api/providers/quiet/credential\n" . '{"key":"sk-wipe-\u0041QZJXWVKPQ7"}',
 "POST /v1/chat/completions\n"
 . '{"model":"gpt-quiet","messages":[{"role":"user","content":"hi"}]}',
 "PUT /api/providers/quiet/credential\n" . '{"key":"sk-short"}',
 "GET /api/providers"]
--- error_code eval
[200, 200, 200, 200]
--- response_body_filters eval
sub {
    my $b = shift;
    return $b unless $b =~ /"object":"list"/;
    return "left: " . Smartflow::Memory::left('QZJXWVKPQ', 'VKPQ7"}');
}
--- response_body_like eval
['"fingerprint":"' . main::fp('sk-wipe-AQZJXWVKPQ7') . '"',
 '"content":"quiet"', '"fingerprint":"' . main::fp('sk-short') . '"',
 '^left: $']
--- no_error_log
[error]
QZJXWVKPQ
