# The MetaCache on the built-in echo provider, which answers with the
# last user message: an answer served from the cache shows the question
# it was stored for, so a hit is seen in the body as well as in the
# x-smartflow-cache headers.  Phase 1 (normalised fingerprint), phase 2
# (near miss), phase 4 (vectors through FAISS), the verification that
# turns down look-alike questions, and what stays out of the cache.

use Test::Nginx::Socket 'no_plan';

no_shuffle();

our $MainConfig = <<'_EOC_';
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_policy_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_cache_module.so;
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_audit_module.so;
_EOC_

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_route other-echo demo;
    smartflow_cache_zone metacache 16m entries=1000;
_EOC_

our $Locations = <<'_EOC_';
    location = /v1/chat/completions {
        smartflow_api chat;
        smartflow_cache metacache;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /anthropic/v1/messages {
        smartflow_api messages;
        smartflow_cache metacache;
        error_page 400 401 403 404 500 @smartflow_anthropic_error;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /nocache/chat/completions {
        smartflow_api chat;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location @smartflow_error {
        smartflow_api error;
    }

    location @smartflow_anthropic_error {
        smartflow_api anthropic_error;
    }
_EOC_

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
});

# a chat request asking one question
sub chat {
    my ($q, %o) = @_;
    my $model = $o{model} // 'smartflow-echo';
    my $extra = $o{extra} // '';
    $q =~ s/(["\\])/\\$1/g;
    return "POST /v1/chat/completions\n"
        . qq({"model":"$model","messages":[{"role":"user","content":"$q"}]$extra});
}


run_tests();

__DATA__

=== TEST 1: the same question, normalised, is a phase 1 hit
--- request eval
[main::chat("What is the capital of France?"),
 main::chat("  what is the CAPITAL of france "),
 main::chat("What is the capital of France?")]
--- response_body_like eval
[qr/"content":"Echo: What is the capital of France\?"/,
 qr/"content":"Echo: What is the capital of France\?"/,
 qr/"content":"Echo: What is the capital of France\?"/]
--- response_headers eval
["x-smartflow-cache: MISS",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 1",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 1"]
--- no_error_log
[error]
