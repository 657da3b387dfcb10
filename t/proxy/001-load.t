# The four modules load in the documented order (proxy, policy, cache,
# audit), each of policy, cache and audit can be left out, and every
# configuration mistake stops nginx with a message naming it.

use File::Temp ();
use Test::Nginx::Socket 'no_plan';

$ENV{SMARTFLOW_TEST_KEY_FROM_ENV} = 'sk-from-env-0123456789abcdef';
delete $ENV{SMARTFLOW_TEST_UNSET_KEY};

my %load = map {
    $_ => "load_module \$TEST_NGINX_MODULES/ngx_http_smartflow_${_}_module.so;\n"
} qw(proxy policy cache audit);

our $AllModules = join '', @load{qw(proxy policy cache audit)};

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
_EOC_

# what a working gateway answers: the echo provider through the pipeline
our $ChatConfig = <<'_EOC_';
    location = /v1/chat/completions {
        smartflow_api chat;
        error_page 400 401 403 404 405 413 500 502 504 @smartflow_error;
    }

    location = /health {
        smartflow_api health;
    }

    location @smartflow_error {
        smartflow_api error;
    }
_EOC_

add_block_preprocessor(sub {
    my $block = shift;

    $block->set_value('main_config', $AllModules)
        unless defined $block->main_config;
    $block->set_value('http_config', $HttpConfig)
        unless defined $block->http_config;
    $block->set_value('config', $ChatConfig)
        unless defined $block->config;

    if (!defined $block->request && !defined $block->must_die) {
        $block->set_value('request', <<'_EOR_');
POST /v1/chat/completions
{"model":"smartflow-echo","messages":[{"role":"user","content":"ping"}]}
_EOR_
        $block->set_value('more_headers',
                          'Authorization: Bearer sk-smartflow-test-0123456789')
            unless defined $block->more_headers;
    }
});

run_tests();

# Configurations nginx must accept, checked with "nginx -t": a refusal
# then fails one test instead of stopping the whole run, as a block
# whose nginx cannot start would.  @DIR@ stands for a scratch directory.
sub config_ok {
    my ($desc, $http) = @_;

    my $dir = File::Temp::tempdir(CLEANUP => 1);
    mkdir "$dir/logs";
    $http =~ s/\@DIR\@/$dir/g;
    open my $out, '>', "$dir/nginx.conf" or die "$dir/nginx.conf: $!";
    (my $modules = $AllModules) =~ s/\$TEST_NGINX_MODULES/$ENV{TEST_NGINX_MODULES}/g;
    my $temp = join '', map { "    ${_}_temp_path $dir/$_;\n" }
                            qw(client_body proxy fastcgi uwsgi scgi);
    print $out "$modules\nerror_log $dir/logs/error.log;\n"
               . "events {}\nhttp {\n$temp$http\n}\n";
    close $out;

    my $bin = $ENV{TEST_NGINX_BINARY} || 'nginx';
    my $said = `$bin -t -p $dir/ -c $dir/nginx.conf 2>&1`;
    Test::More::is($? >> 8, 0, "nginx -t: $desc")
        or Test::More::diag($said);
}

config_ok('an exact route name of 60 characters', <<'_EOC_');
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route accounts/fireworks/models/llama-v3p1-405b-instruct-long demo;
_EOC_

config_ok('an exact route name of 46 characters', <<'_EOC_');
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route meta-llama/Meta-Llama-3.1-405B-Instruct-Turbo demo;
_EOC_

# the shipped snippet sets timeouts and body limits that some endpoints
# need to change: a long reasoning model, a larger upload
config_ok('a location tunes what the included snippet sets', <<"_EOC_");
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    server {
        listen unix:\@DIR\@/nginx.sock;
        location = /v1/chat/completions {
            smartflow_api chat;
            include $ENV{TEST_NGINX_SMARTFLOW_CONF}/smartflow_proxy.conf;
            proxy_read_timeout 900s;
            client_max_body_size 16m;
        }
        location \@smartflow_error {
            smartflow_api error;
        }
    }
_EOC_

config_ok('5000 exact routes', join '', map { "    $_\n" }
    'smartflow_master_key sk-smartflow-test-0123456789;',
    'smartflow_provider demo type=echo;',
    map { "smartflow_route model-$_ demo;" } 1 .. 5000);

__DATA__

=== TEST 1: all four modules in the documented order
--- response_body_like chomp
^\{"id":"chatcmpl-[^"]+","object":"chat\.completion",.*"content":"Echo: ping"
--- no_error_log
[error]



=== TEST 2: the cache module can be left out
--- main_config
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_policy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_audit_module.so;
--- response_body_like chomp
"content":"Echo: ping"
--- no_error_log
[error]



=== TEST 3: the policy module can be left out
--- main_config
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_cache_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_audit_module.so;
--- response_body_like chomp
"content":"Echo: ping"
--- no_error_log
[error]



=== TEST 4: the audit module can be left out
--- main_config
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_policy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_cache_module.so;
--- response_body_like chomp
"content":"Echo: ping"
--- no_error_log
[error]



=== TEST 5: the proxy module alone
--- main_config
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
--- response_body_like chomp
"content":"Echo: ping"
--- no_error_log
[error]



=== TEST 6: a module loaded ahead of the proxy module does not load
--- main_config
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_policy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
--- must_die
--- error_log eval
[ '[emerg]', qr/ngx_http_smartflow_policy_module\.so.*undefined symbol/ ]



=== TEST 7: the health endpoint answers with every module loaded
--- request
GET /health
--- response_headers
Content-Type: application/json
--- response_body_like chomp
^\{"providers":\[\{"name":"demo","type":"echo","upstream":"","state":"unknown"\}\],.*"status":"ok","version":"0\.1\.0",
--- no_error_log
[error]



=== TEST 8: the master key from an environment variable
--- http_config
    smartflow_master_key env:SMARTFLOW_TEST_KEY_FROM_ENV;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
--- more_headers
Authorization: Bearer sk-from-env-0123456789abcdef
--- response_body_like chomp
"content":"Echo: ping"
--- no_error_log
[error]



=== TEST 9: the master key must be at least 16 characters
--- http_config
    smartflow_master_key sk-short-15char;
    smartflow_provider demo type=echo;
--- must_die
--- error_log
[emerg]
smartflow_master_key must be at least 16 characters



=== TEST 10: a master key from an environment variable that is not set
--- http_config
    smartflow_master_key env:SMARTFLOW_TEST_UNSET_KEY;
    smartflow_provider demo type=echo;
--- must_die
--- error_log
[emerg]
smartflow_master_key: environment variable "SMARTFLOW_TEST_UNSET_KEY" is not set



=== TEST 11: the master key is given twice
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_master_key sk-smartflow-test-9876543210;
--- must_die
--- error_log
[emerg]
"smartflow_master_key" directive is duplicate



=== TEST 12: a route naming a provider that was never declared
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route gpt-4o openai;
--- must_die
--- error_log
[emerg]
smartflow route "gpt-4o" names unknown provider "openai"



=== TEST 13: a route ahead of its provider
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_route smartflow-echo demo;
    smartflow_provider demo type=echo;
--- must_die
--- error_log
[emerg]
smartflow route "smartflow-echo" names unknown provider "demo"



=== TEST 14: a provider without type=
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    upstream sf_openai { server 127.0.0.1:1; }
    smartflow_provider openai upstream=http://sf_openai;
--- must_die
--- error_log
[emerg]
smartflow provider "openai" needs type=



=== TEST 15: a provider of an unknown type
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    upstream sf_openai { server 127.0.0.1:1; }
    smartflow_provider openai type=azure upstream=http://sf_openai;
--- must_die
--- error_log
[emerg]
invalid smartflow provider parameter "type=azure"



=== TEST 16: provider types are lower case
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=ECHO;
--- must_die
--- error_log
[emerg]
invalid smartflow provider parameter "type=ECHO"



=== TEST 17: an unknown provider parameter
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo colour=blue;
--- must_die
--- error_log
[emerg]
invalid smartflow provider parameter "colour=blue"



=== TEST 18: an upstream that is not http:// or https://
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    upstream sf_openai { server 127.0.0.1:1; }
    smartflow_provider openai type=openai upstream=tcp://sf_openai;
--- must_die
--- error_log
[emerg]
smartflow provider "openai": upstream must start with http:// or https://



=== TEST 19: a network provider without upstream=
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider openai type=openai key=sk-provider-test-key;
--- must_die
--- error_log
[emerg]
smartflow provider "openai" needs upstream=



=== TEST 20: a provider declared twice
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_provider demo type=echo;
--- must_die
--- error_log
[emerg]
duplicate smartflow provider "demo"



=== TEST 21: the same route, provider and model twice
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo model=echo-large;
    smartflow_route smartflow-echo demo model=echo-large;
--- must_die
--- error_log
[emerg]
duplicate smartflow route "smartflow-echo"



=== TEST 22: routes are names in any case, so these two are the same
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_route SmartFlow-Echo demo;
--- must_die
--- error_log
[emerg]
duplicate smartflow route "SmartFlow-Echo"



=== TEST 23: a route parameter other than model=
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo upstream_model=x;
--- must_die
--- error_log
[emerg]
invalid smartflow route parameter "upstream_model=x"



=== TEST 24: an empty model= on a route
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo model=;
--- must_die
--- error_log
[emerg]
invalid smartflow route parameter "model="



=== TEST 25: a route weight of zero
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo weight=0;
--- must_die
--- error_log
[emerg]
invalid smartflow route parameter "weight=0"



=== TEST 26: a route weight that is not a number
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo weight=heavy;
--- must_die
--- error_log
[emerg]
invalid smartflow route parameter "weight=heavy"



=== TEST 27: a route without its provider
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo;
--- must_die
--- error_log
[emerg]
invalid number of arguments in "smartflow_route" directive



=== TEST 28: an unknown smartflow_api value
--- config
    location = /v1/chat/completions {
        smartflow_api chats;
    }
--- must_die
--- error_log
[emerg]
invalid smartflow_api "chats"



=== TEST 29: smartflow_api twice in one location
--- config
    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_api completions;
    }
--- must_die
--- error_log
[emerg]
"smartflow_api" directive is duplicate



=== TEST 30: a status zone smaller than the counters it holds
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_zone smartflow 16k;
    smartflow_provider demo type=echo;
--- must_die
--- error_log
[emerg]
smartflow_zone "smartflow" is too small



=== TEST 31: a status zone size that is not a size
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_zone smartflow lots;
    smartflow_provider demo type=echo;
--- must_die
--- error_log
[emerg]
smartflow_zone "smartflow" is too small



=== TEST 32: two status zones
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_zone smartflow 1m;
    smartflow_zone other 1m;
    smartflow_provider demo type=echo;
--- must_die
--- error_log
[emerg]
"smartflow_zone" directive is duplicate



=== TEST 33: smartflow_api belongs in a location, not in http
--- http_config
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_api chat;
--- must_die
--- error_log
[emerg]
"smartflow_api" directive is not allowed here



=== TEST 34: smartflow_provider belongs in http, not in a server
--- config
    smartflow_provider other type=echo;
--- must_die
--- error_log
[emerg]
"smartflow_provider" directive is not allowed here



=== TEST 35: smartflow_route belongs in http, not in a location
--- config
    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_route other demo;
    }
--- must_die
--- error_log
[emerg]
"smartflow_route" directive is not allowed here



=== TEST 36: smartflow_master_key belongs in http, not in a server
--- config
    smartflow_master_key sk-smartflow-test-0123456789;
--- must_die
--- error_log
[emerg]
"smartflow_master_key" directive is not allowed here



=== TEST 37: smartflow_zone belongs in http, not in a location
--- config
    location = /health {
        smartflow_api health;
        smartflow_zone smartflow 1m;
    }
--- must_die
--- error_log
[emerg]
"smartflow_zone" directive is not allowed here



=== TEST 38: the policy allow-list is given twice in one location
--- config
    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_policy_models gpt-*;
        smartflow_policy_models claude-*;
    }
--- must_die
--- error_log
[emerg]
"smartflow_policy_models" directive is duplicate



=== TEST 39: the audit log is given twice in one location
--- config
    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_audit_log logs/a.log;
        smartflow_audit_log logs/b.log;
    }
--- must_die
--- error_log
[emerg]
"smartflow_audit_log" directive is duplicate



=== TEST 40: the policy directive is unknown without the policy module
--- main_config
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
--- config
    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_policy_models gpt-*;
    }
--- must_die
--- error_log
[emerg]
unknown directive "smartflow_policy_models"
