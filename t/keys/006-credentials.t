# Provider keys encrypted at rest: smartflow_credentials_key (a file or an
# environment variable) and key=enc:... on a provider, decrypted with
# AES-256-GCM when nginx reads its configuration.  The provider sees the
# clear key; a wrong key, a damaged value or a missing
# smartflow_credentials_key stop nginx with a message that shows neither
# the key nor the value.

use Test::Nginx::Socket 'no_plan';
use File::Temp qw(tempfile);

no_shuffle();

# what an operator does: a key, and a provider secret encrypted with it
sub encrypt {
    my ($key, $secret) = @_;
    local $ENV{SMARTFLOW_CREDENTIALS_KEY} = $key;
    my $out = `printf '%s' '$secret' | node scripts/smartflow-credential.mjs`;
    die "smartflow-credential failed\n" if $? != 0;
    chomp $out;
    return $out;
}

my $key = `node scripts/smartflow-credential.mjs --new-key`;
chomp $key;
my $other = `node scripts/smartflow-credential.mjs --new-key`;
chomp $other;

my ($fh, $file) = tempfile(UNLINK => 1);
print $fh "$key\n";
close $fh;

$ENV{TEST_NGINX_CRED_FILE} = $file;
$ENV{SMARTFLOW_TEST_CRED_KEY} = $key;
$ENV{TEST_NGINX_CRED_VALUE} = encrypt($key, 'sk-provider-clear-4242');
$ENV{TEST_NGINX_CRED_OTHER} = encrypt($other, 'sk-provider-clear-4242');

# a flipped byte in the ciphertext: the tag no longer matches
my $bad = $ENV{TEST_NGINX_CRED_VALUE};
substr($bad, 20, 1) = substr($bad, 20, 1) eq 'A' ? 'B' : 'A';
$ENV{TEST_NGINX_CRED_DAMAGED} = $bad;

our $Locations = <<'_EOC_';
    location = /v1/chat/completions {
        smartflow_api chat;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    # the provider: answers with the Authorization header it was sent
    location = /provider/v1/chat/completions {
        default_type application/json;
        return 200 '{"id":"c1","object":"chat.completion","created":1,"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"$http_authorization"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}';
    }

    location @smartflow_error {
        smartflow_api error;
    }
_EOC_

add_block_preprocessor(sub {
    my $block = shift;

    $block->set_value('main_config', <<'_EOC_')
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
_EOC_
        unless defined $block->main_config;
    $block->set_value('config', $Locations) unless defined $block->config;

    return $block;
});

run_tests();

__DATA__

=== TEST 1: a key from a file decrypts the provider's key
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_credentials_key file=$TEST_NGINX_CRED_FILE;

    upstream sf_provider {
        server 127.0.0.1:$TEST_NGINX_SERVER_PORT;
    }

    smartflow_provider p type=openai upstream=http://sf_provider
                       path=/provider/v1 key=$TEST_NGINX_CRED_VALUE;
    smartflow_route gpt-* p;
--- request
POST /v1/chat/completions
{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
--- error_code: 200
--- response_body_like: "content":"Bearer sk-provider-clear-4242"
--- no_error_log eval
[qr/\[error\]/,
 qr/\[(?:info|notice|warn|error|crit|alert|emerg)\].*sk-provider-clear-4242/]



=== TEST 2: a key from the environment
--- main_config
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
    env SMARTFLOW_TEST_CRED_KEY;
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_credentials_key env=SMARTFLOW_TEST_CRED_KEY;

    upstream sf_provider {
        server 127.0.0.1:$TEST_NGINX_SERVER_PORT;
    }

    smartflow_provider p type=openai upstream=http://sf_provider
                       path=/provider/v1 key=$TEST_NGINX_CRED_VALUE;
    smartflow_route gpt-* p;
--- request
POST /v1/chat/completions
{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}
--- more_headers
Authorization: Bearer sk-smartflow-test-0123456789
--- error_code: 200
--- response_body_like: "content":"Bearer sk-provider-clear-4242"
--- no_error_log
[error]



=== TEST 3: a value encrypted with another key stops nginx
--- http_config
    smartflow_credentials_key file=$TEST_NGINX_CRED_FILE;
    smartflow_provider p type=openai upstream=http://127.0.0.1
                       key=$TEST_NGINX_CRED_OTHER;
--- must_die
--- error_log eval
qr/smartflow provider "p": the encrypted key cannot be decrypted with smartflow_credentials_key \(a wrong key, or a damaged value\)/
--- no_error_log eval
qr/sk-provider-clear-4242|\Q$ENV{TEST_NGINX_CRED_OTHER}\E/



=== TEST 4: a damaged value stops nginx
--- http_config
    smartflow_credentials_key file=$TEST_NGINX_CRED_FILE;
    smartflow_provider p type=openai upstream=http://127.0.0.1
                       key=$TEST_NGINX_CRED_DAMAGED;
--- must_die
--- error_log
the encrypted key cannot be decrypted



=== TEST 5: an encrypted key needs smartflow_credentials_key before it
--- http_config
    smartflow_provider p type=openai upstream=http://127.0.0.1
                       key=$TEST_NGINX_CRED_VALUE;
--- must_die
--- error_log
smartflow provider "p": an encrypted key needs smartflow_credentials_key before it



=== TEST 6: a key that is not 64 hex digits
--- http_config
    smartflow_credentials_key env=TEST_NGINX_SERVROOT;
--- must_die
--- error_log
smartflow_credentials_key: the key must be 64 hex digits (256 bits)



=== TEST 7: an unset variable
--- http_config
    smartflow_credentials_key env=SMARTFLOW_NO_SUCH_VARIABLE;
--- must_die
--- error_log
the environment variable "SMARTFLOW_NO_SUCH_VARIABLE" is not set



=== TEST 8: a missing file
--- http_config
    smartflow_credentials_key file=/nonexistent/smartflow.key;
--- must_die
--- error_log
smartflow_credentials_key: cannot open "/nonexistent/smartflow.key"



=== TEST 9: neither file= nor env=
--- http_config
    smartflow_credentials_key 0123;
--- must_die
--- error_log
"smartflow_credentials_key" directive takes file=PATH or env=NAME
