# Large requests and long streams.  Requests with very many parts: the
# translation's cost grows with the request's size, not with its square.  A system prompt of tens of
# thousands of text parts is joined in one buffer that doubles; tens of
# thousands of tool results merge into one turn without rescanning it, and
# a Gemini provider's results find their calls' names through one lookup
# tree for the request.
#
# Each block asks the worker for its pid (location /pid) before and after
# the large request, and reads its peak memory (VmHWM) and CPU time from
# /proc: worker() turns the second reading into "bounded" or the growth.
# The bounds are generous (the joins take a few MB, the merges well under
# a second of CPU); without the linear joins and merges the same requests
# took hundreds of MB, or seconds to minutes of CPU.  The tool results'
# requests are 3 MB, whose trees take their memory whatever the merge:
# only their CPU time is bounded.
#
# Streams of 50000 events, translated either way or passed through with
# OpenAI's "usage":null in every chunk: each event is read, translated and
# written in a scratch pool reset after it, so the worker's memory does not
# grow with the stream's length (it grew by some 85 MB when every event's
# tree stayed with the request).  The same holds for a stream read by the
# output scanner (a policy group with "output on"): each event is split,
# parsed and written again in that scratch pool (some 100 MB when it was
# the request's).
#
# Streams whose events carry their JSON over several "data:" lines (the
# mock's x-mock-data-lines, as the SSE spec allows): the lines are joined
# in the same scratch pool.  When they were joined in the request's pool
# the worker grew by the stream's size (8 to 17 MB for these streams), so
# these blocks bound the growth at 4 MB (about 1 MB is measured).

use lib 't/lib';
use Smartflow::Conf;
use Smartflow::Mock;
use Test::Nginx::Socket 'no_plan';
use Smartflow::Blocks;
use POSIX ();

our $MaxGrowthMB = 32;
our $MaxCPU = 5;

our %Before;

sub slurp {
    my $file = shift;
    open my $fh, '<', $file or return '';
    local $/;
    return scalar <$fh>;
}

# a pid from /pid -> "measured" the first time, then the growth since
sub ::worker {
    my $body = shift;

    return $body unless $body =~ /^(\d+)\n\z/;

    my $pid = $1;
    my ($hwm) = slurp("/proc/$pid/status") =~ /^VmHWM:\s+(\d+) kB/m;
    my ($rest) = slurp("/proc/$pid/stat") =~ /\)\s(.*)/s;
    my @stat = split ' ', $rest // '';
    my $cpu = (($stat[11] // 0) + ($stat[12] // 0))
              / POSIX::sysconf(POSIX::_SC_CLK_TCK());

    return "no /proc for $pid\n" unless defined $hwm;

    if (!%Before || $Before{pid} != $pid) {
        %Before = (pid => $pid, hwm => $hwm, cpu => $cpu);
        return "measured\n";
    }

    my $mb = ($hwm - $Before{hwm}) / 1024;
    my $s = $cpu - $Before{cpu};
    %Before = ();

    Test::More::diag(sprintf "worker %d: VmHWM +%.1f MB, CPU %.2f s",
                     $pid, $mb, $s) if $ENV{SMARTFLOW_MEASURE};

    return sprintf "memory %s, cpu %s\n",
        $mb < $MaxGrowthMB ? 'bounded' : sprintf('grew %.0f MB', $mb),
        $s < $MaxCPU ? 'bounded' : sprintf('took %.1f s', $s);
}

# worker() with a memory bound of its own, in MB
sub ::worker_within {
    my $mb = shift;
    return sub { local $MaxGrowthMB = $mb; ::worker(@_) };
}

sub chat { "POST /v1/chat/completions\n" . shift }
sub messages { "POST /anthropic/v1/messages\n" . shift }

# n text parts (an OpenAI system message) or n text blocks (Anthropic's
# system array)
sub texts {
    my ($n, $block) = @_;

    return CORE::join ',', ($block ? '{"type":"text","text":"a"}' : '"a"')
                           x $n;
}

# an OpenAI request: a user turn, one assistant turn calling n tools, and
# the n tool messages answering them
sub tool_results {
    my ($model, $n) = @_;

    my $calls = CORE::join ',', map {
        qq({"id":"call_$_","type":"function","function":{"name":"f$_","arguments":"{}"}})
    } 1 .. $n;
    my $results = CORE::join ',', map {
        qq({"role":"tool","tool_call_id":"call_$_","content":"r$_"})
    } 1 .. $n;

    return qq({"model":"$model","messages":[{"role":"user","content":"hi"},)
           . qq({"role":"assistant","content":null,"tool_calls":[$calls]},)
           . qq($results]});
}

our $HttpConfig = Smartflow::Blocks::mock_upstreams() . <<'_EOC_';
    smartflow_provider anthropic type=anthropic upstream=http://sf_mock
                       key=sk-ant-provider-key;
    smartflow_provider openai type=openai upstream=http://sf_mock
                       key=sk-oai-provider-key;
    smartflow_provider gemini type=gemini upstream=http://sf_mock
                       key=gm-provider-key-0123456789;

    smartflow_route claude-* anthropic;
    smartflow_route gpt-* openai;
    smartflow_route gemini-* gemini;

    smartflow_policy_group out {
        pii redact;
        shield block;
        output on;
    }
_EOC_

our $Locations = Smartflow::Conf::shipped_locations() . <<'_EOC_';
    location = /pid {
        return 200 "$pid\n";
    }
_EOC_

Smartflow::Blocks::defaults(http_config => $HttpConfig, config => $Locations,
                            keys => 1);

run_tests();

__DATA__

=== TEST 1: a system message of 20000 text parts, to an Anthropic provider
--- request eval
["GET /pid",
 ::chat('{"model":"claude-3-5-sonnet","messages":[{"role":"system","content":[' . ::texts(20000) . ']},{"role":"user","content":"hi"}]}'),
 "GET /pid"]
--- response_body_filters eval
\&::worker
--- response_body_like eval
["^measured\n\\z", '"content":"mock reply to: hi"', "^memory bounded, cpu bounded\n\\z"]
--- timeout: 60
--- no_error_log
[error]



=== TEST 2: an Anthropic system array of 20000 text blocks, to an OpenAI provider
--- more_headers
x-api-key: sk-smartflow-test-0123456789
anthropic-version: 2023-06-01
--- request eval
["GET /pid",
 ::messages('{"model":"gpt-4o-mini","max_tokens":16,"system":[' . ::texts(20000, 1) . '],"messages":[{"role":"user","content":"hi"}]}'),
 "GET /pid"]
--- response_body_filters eval
\&::worker
--- response_body_like eval
["^measured\n\\z", '"text":"mock reply to: hi"', "^memory bounded, cpu bounded\n\\z"]
--- timeout: 60
--- no_error_log
[error]



=== TEST 3: 25000 tool results merged into one turn, to an Anthropic provider
--- request eval
["GET /pid", ::chat(::tool_results("claude-3-5-sonnet", 25000)), "GET /pid"]
--- response_body_filters eval
\&::worker
--- response_body_like eval
["^measured\n\\z", '"content":"mock reply to: hi"', "^memory .*, cpu bounded\n\\z"]
--- timeout: 120
--- no_error_log
[error]



=== TEST 4: 25000 tool results answered by name, to a Gemini provider
--- request eval
["GET /pid", ::chat(::tool_results("gemini-2.5-flash", 25000)), "GET /pid"]
--- response_body_filters eval
\&::worker
--- response_body_like eval
["^measured\n\\z", '"content":"mock reply to: hi"', "^memory .*, cpu bounded\n\\z"]
--- timeout: 120
--- no_error_log
[error]



=== TEST 5: a stream of 50000 Anthropic events to an OpenAI client
--- more_headers eval
$::OpenAIKey . "x-mock-words: 50000"
--- request eval
["GET /pid", ::chat('{"model":"claude-3-5-sonnet","stream":true,"messages":[{"role":"user","content":"count"}]}'), "GET /pid"]
--- response_body_filters eval
\&::worker
--- response_body_like eval
["^measured\n\\z", '"content":" alpha".*data: \\[DONE\\]\n\n\\z', "^memory bounded, cpu bounded\n\\z"]
--- timeout: 60
--- no_error_log
[error]



=== TEST 6: a stream of 50000 OpenAI chunks to an Anthropic client
--- more_headers eval
$::AnthropicKey . "x-mock-words: 50000"
--- request eval
["GET /pid", ::messages('{"model":"gpt-4o-mini","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"count"}]}'), "GET /pid"]
--- response_body_filters eval
\&::worker
--- response_body_like eval
["^measured\n\\z", '"text":" alpha".*event: message_stop\n', "^memory bounded, cpu bounded\n\\z"]
--- timeout: 60
--- no_error_log
[error]



=== TEST 7: a stream of 50000 OpenAI chunks passed through, each with "usage":null
--- more_headers eval
$::OpenAIKey . "x-mock-words: 50000"
--- request eval
["GET /pid", ::chat('{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"count"}]}'), "GET /pid"]
--- response_body_filters eval
\&::worker
--- response_body_like eval
["^measured\n\\z", '"usage":null.*"usage":\\{"prompt_tokens".*data: \\[DONE\\]\n\n\\z', "^memory bounded, cpu bounded\n\\z"]
--- timeout: 60
--- no_error_log
[error]



=== TEST 8: a stream of 50000 OpenAI chunks read by the output scanner
--- config eval
"smartflow_policy out;\n$::Locations"
--- more_headers eval
$::OpenAIKey . "x-mock-words: 50000"
--- request eval
["GET /pid", ::chat('{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"count"}]}'), "GET /pid"]
--- response_body_filters eval
\&::worker
--- response_body_like eval
["^measured\n\\z", '"content":"[^"]*alpha.*data: \\[DONE\\]\n\n\\z', "^memory bounded, cpu bounded\n\\z"]
--- timeout: 60
--- no_error_log
[error]



=== TEST 9: a stream of 50000 Anthropic events read by the output scanner
--- config eval
"smartflow_policy out;\n$::Locations"
--- more_headers eval
$::AnthropicKey . "x-mock-words: 50000"
--- request eval
["GET /pid", ::messages('{"model":"claude-3-5-sonnet","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"count"}]}'), "GET /pid"]
--- response_body_filters eval
\&::worker
--- response_body_like eval
["^measured\n\\z", '"text":"[^"]*alpha.*event: message_stop\n', "^memory bounded, cpu bounded\n\\z"]
--- timeout: 60
--- no_error_log
[error]



=== TEST 10: a stream of 50000 OpenAI chunks of three "data:" lines each, to an Anthropic client
--- more_headers eval
$::AnthropicKey . "x-mock-words: 50000\nx-mock-data-lines: 3"
--- request eval
["GET /pid", ::messages('{"model":"gpt-4o-mini","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"count"}]}'), "GET /pid"]
--- response_body_filters eval
::worker_within(4)
--- response_body_like eval
["^measured\n\\z", '"text":" alpha".*"text":" bravo".*event: message_stop\n', "^memory bounded, cpu bounded\n\\z"]
--- timeout: 60
--- no_error_log
[error]



=== TEST 11: a stream of 50000 Anthropic events of two "data:" lines each, to an OpenAI client
--- more_headers eval
$::OpenAIKey . "x-mock-words: 50000\nx-mock-data-lines: 2"
--- request eval
["GET /pid", ::chat('{"model":"claude-3-5-sonnet","stream":true,"messages":[{"role":"user","content":"count"}]}'), "GET /pid"]
--- response_body_filters eval
::worker_within(4)
--- response_body_like eval
["^measured\n\\z", '"content":" alpha".*"content":" bravo".*data: \\[DONE\\]\n\n\\z', "^memory bounded, cpu bounded\n\\z"]
--- timeout: 60
--- no_error_log
[error]



=== TEST 12: a stream of 50000 OpenAI chunks of three "data:" lines each, passed through
--- more_headers eval
$::OpenAIKey . "x-mock-words: 50000\nx-mock-data-lines: 3"
--- request eval
["GET /pid", ::chat('{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"count"}]}'), "GET /pid"]
--- response_body_filters eval
::worker_within(4)
--- response_body_like eval
["^measured\n\\z", '\ndata:  "choices": \\[.*"usage": \\{.*data: \\[DONE\\]\n\n\\z', "^memory bounded, cpu bounded\n\\z"]
--- timeout: 60
--- no_error_log
[error]
