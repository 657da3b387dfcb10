# The MetaCache on the built-in echo provider, which answers with the
# last user message: an answer served from the cache shows the question
# it was stored for, so a hit is seen in the body as well as in the
# x-smartflow-cache headers.  Phase 1 (normalised fingerprint), phase 2
# (near miss), phase 4 (vectors through FAISS), the verification that
# turns down look-alike questions, and what stays out of the cache.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use Smartflow::Blocks;

no_shuffle();

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

Smartflow::Blocks::defaults(http_config => $HttpConfig,
                            config => $Locations,
                            more_headers => $OpenAIKey);

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


=== TEST 2: a near miss (phase 2) answers with its similarity; a look-alike with other numbers, order or words does not
--- request eval
[main::chat("How do I reverse a list in Python?"),
 main::chat("Please, how can I reverse a list in Python?"),
 main::chat("Convert 100 USD to EUR."),
 main::chat("Convert 100 EUR to USD."),
 main::chat("Convert 150 USD to EUR."),
 main::chat("How do I reverse a list in Rust?"),
 main::chat("How do I not reverse a list in Python?")]
--- response_body_like eval
[qr/"content":"Echo: How do I reverse a list in Python\?"/,
 qr/"content":"Echo: How do I reverse a list in Python\?"/,
 qr/"content":"Echo: Convert 100 USD to EUR\."/,
 qr/"content":"Echo: Convert 100 EUR to USD\."/,
 qr/"content":"Echo: Convert 150 USD to EUR\."/,
 qr/"content":"Echo: How do I reverse a list in Rust\?"/,
 qr/"content":"Echo: How do I not reverse a list in Python\?"/]
--- response_headers eval
["x-smartflow-cache: MISS",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 2",
 "x-smartflow-cache: MISS",
 "x-smartflow-cache: MISS",
 "x-smartflow-cache: MISS",
 "x-smartflow-cache: MISS",
 "x-smartflow-cache: MISS"]
--- response_headers_like eval
["", "x-smartflow-cache-similarity: 0\\.[89]\\d\\d|1\\.000", "", "", "", "", ""]
--- no_error_log
[error]



=== TEST 3: what shapes the answer keeps entries apart: model, sampling parameters, system prompt, earlier turns
--- request eval
[main::chat("Name a colour."),
 main::chat("Name a colour.", model => "other-echo"),
 main::chat("Name a colour.", extra => ',"temperature":0.2'),
 "POST /v1/chat/completions\n" . '{"model":"smartflow-echo","messages":[{"role":"system","content":"Answer in French."},{"role":"user","content":"Name a colour."}]}',
 "POST /v1/chat/completions\n" . '{"model":"smartflow-echo","messages":[{"role":"user","content":"I like red."},{"role":"assistant","content":"Noted."},{"role":"user","content":"Name a colour."}]}',
 main::chat("Name a colour.", extra => ',"temperature":0.2'),
 "POST /v1/chat/completions\n" . '{"model":"smartflow-echo","messages":[{"role":"user","content":"I like red."},{"role":"assistant","content":"Noted."},{"role":"user","content":"name a colour"}]}']
--- response_headers eval
["x-smartflow-cache: MISS",
 "x-smartflow-cache: MISS",
 "x-smartflow-cache: MISS",
 "x-smartflow-cache: MISS",
 "x-smartflow-cache: MISS",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 1",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 1"]
--- response_body_like eval
[qr/"model":"smartflow-echo".*"content":"Echo: Name a colour\."/,
 qr/"model":"other-echo".*"content":"Echo: Name a colour\."/,
 qr/"content":"Echo: Name a colour\."/,
 qr/"content":"Echo: Name a colour\."/,
 qr/"content":"Echo: Name a colour\."/,
 qr/"content":"Echo: Name a colour\.".*"usage":\{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0\}/,
 qr/"content":"Echo: Name a colour\."/]
--- no_error_log
[error]



=== TEST 4: requests the cache does not answer: several choices, completions; a location without the cache says nothing
--- request eval
[main::chat("Pick a number.", extra => ',"n":2'),
 main::chat("Pick a number.", extra => ',"n":2'),
 "POST /nocache/chat/completions\n" . '{"model":"smartflow-echo","messages":[{"role":"user","content":"Pick a number."}]}']
--- response_headers eval
["x-smartflow-cache: BYPASS",
 "x-smartflow-cache: BYPASS",
 "x-smartflow-cache:"]
--- no_error_log
[error]



=== TEST 5: bad per-request controls are refused in the client's format
--- request eval
[main::chat("Hello there."), main::chat("Hello there."),
 "POST /anthropic/v1/messages\n" . '{"model":"smartflow-echo","max_tokens":50,"messages":[{"role":"user","content":"Hi"}]}']
--- more_headers eval
["Authorization: Bearer sk-smartflow-test-0123456789\nx-smartflow-cache: sometimes",
 "Authorization: Bearer sk-smartflow-test-0123456789\nx-smartflow-cache-ttl: -5",
 "x-api-key: sk-smartflow-test-0123456789\nx-smartflow-cache-ttl: soon"]
--- error_code eval
[400, 400, 400]
--- response_body_like eval
[qr/^\{"error":\{"message":"The x-smartflow-cache header takes \\"bypass\\" or \\"refresh\\", not \\"sometimes\\"\.","type":"invalid_request_error"/,
 qr/"message":"The x-smartflow-cache-ttl header takes a number of seconds from 1 to 31536000, not \\"-5\\"\."/,
 qr/^\{"type":"error","error":\{"type":"invalid_request_error","message":"The x-smartflow-cache-ttl header/]
--- error_log
smartflow proxy: The x-smartflow-cache



=== TEST 6: questions of function words only are matched exactly, never as near misses
--- request eval
[main::chat("Who are you?"), main::chat("What is it?"),
 main::chat("who are you"), main::chat("Are you there?")]
--- response_body_like eval
[qr/Echo: Who are you\?/, qr/Echo: What is it\?/, qr/Echo: Who are you\?/,
 qr/Echo: Are you there\?/]
--- response_headers eval
["x-smartflow-cache: MISS", "x-smartflow-cache: MISS",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 1",
 "x-smartflow-cache: MISS"]
--- no_error_log
[error]



=== TEST 7: questions that differ only by an operator are other questions; the same one spaced otherwise is a phase 1 hit
--- request eval
[main::chat("Is 3 > 2?"),
 main::chat("Is 3 < 2?"),
 main::chat("is 3 >  2"),
 main::chat("What is 5 - 3?"),
 main::chat("What is 5 * 3?"),
 main::chat("What is 5 / 3?"),
 main::chat("Does x == y hold?"),
 main::chat("Does x != y hold?"),
 main::chat("Is a && b true?"),
 main::chat("Is a || b true?")]
--- response_body_like eval
[qr/"content":"Echo: Is 3 > 2\?"/,
 qr/"content":"Echo: Is 3 < 2\?"/,
 qr/"content":"Echo: Is 3 > 2\?"/,
 qr/"content":"Echo: What is 5 - 3\?"/,
 qr/"content":"Echo: What is 5 \* 3\?"/,
 qr/"content":"Echo: What is 5 \/ 3\?"/,
 qr/"content":"Echo: Does x == y hold\?"/,
 qr/"content":"Echo: Does x != y hold\?"/,
 qr/"content":"Echo: Is a && b true\?"/,
 qr/"content":"Echo: Is a \|\| b true\?"/]
--- response_headers eval
["x-smartflow-cache: MISS",
 "x-smartflow-cache: MISS",
 "x-smartflow-cache: HIT\nx-smartflow-cache-phase: 1",
 "x-smartflow-cache: MISS",
 "x-smartflow-cache: MISS",
 "x-smartflow-cache: MISS",
 "x-smartflow-cache: MISS",
 "x-smartflow-cache: MISS",
 "x-smartflow-cache: MISS",
 "x-smartflow-cache: MISS"]
--- no_error_log
[error]
