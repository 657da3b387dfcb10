#!/usr/bin/env perl
# The official OpenAI and Anthropic SDKs for Node.js asking for Gemini
# models through a live gateway: /v1 and /anthropic/v1 translated to
# Gemini's generateContent and back (answers, streams, tool calls, usage,
# stop reasons, errors).
#
# Starts the mock provider and a gateway of its own (the four modules, the
# shipped smartflow_locations.conf and smartflow_proxy.conf), runs
# t/clients/gemini.test.mjs with node's test runner and reports each of its
# tests as one TAP test here.  Then the gateway's error log must hold no
# [alert], [crit] or [emerg] line and no worker may have died on a signal,
# and the audit log must show the Gemini requests.
#
# Answers the mock cannot give (other finish reasons) come from canned
# Gemini responses the gateway's own server holds under /canned/, reached
# through a Gemini provider whose upstream is the gateway itself.
#
# Environment (scripts/test.sh exports the first three):
#   TEST_NGINX_MODULES                 build/modules
#   TEST_NGINX_SMARTFLOW_CONF          conf
#   TEST_NGINX_BINARY                  /usr/sbin/nginx
#   TEST_NGINX_MOCK_PORT               mock provider port (default 1985)
#   SMARTFLOW_GEMINI_CLIENTS_PORT      gateway port (default 1989)
# node_modules is installed with "npm ci" when it is missing.

use strict;
use warnings;

use FindBin ();
use lib "$FindBin::Bin/../lib";
use Smartflow::Clients qw(closed_port);
use Test::More;

my $gw = Smartflow::Clients->new(
    servroot => 't/servroot-clients/gemini',
    port     => $ENV{SMARTFLOW_GEMINI_CLIENTS_PORT} || 1989,
    port_var => 'SMARTFLOW_GEMINI_CLIENTS_PORT',
    mock     => 1,
    packages => ['@anthropic-ai/sdk', 'openai'],
    conf     => [qw(smartflow_proxy.conf smartflow_locations.conf)]);

my ($Port, $MockPort) = @$gw{qw(port mock_port)};
my $Key = 'sk-smartflow-gemini-client-tests-0123456789';
my $GeminiKey = 'gm-mock-gemini-key-0123456789';

# ------------------------------------------------------------ the gateway

my $closed = closed_port();
my $locations = $gw->shipped_locations;

$gw->start(<<"HTTP");
    default_type application/octet-stream;

    smartflow_master_key $Key;
    smartflow_zone smartflow 1m;

    upstream sf_mock {
        server 127.0.0.1:$MockPort;
        keepalive 8;
    }

    # nothing listens there: every request to it fails to connect
    upstream sf_closed {
        server 127.0.0.1:$closed;
    }

    # this very server, for its canned answers under /canned/
    upstream sf_self {
        server 127.0.0.1:$Port;
    }

    smartflow_provider gemini type=gemini upstream=http://sf_mock key=$GeminiKey;
    smartflow_provider gdown type=gemini upstream=http://sf_closed key=$GeminiKey;
    smartflow_provider canned type=gemini upstream=http://sf_self path=/canned key=$GeminiKey;

    smartflow_route gemini-broken gdown;
    smartflow_route gemini-length canned;
    smartflow_route gemini-blocked canned;
    smartflow_route gemini-fallback gdown model=gemini-down;
    smartflow_route gemini-fallback gemini model=gemini-2.0-flash fallback;
    smartflow_route gemini-* gemini;

    smartflow_audit_log logs/audit.log;

    server {
        listen 127.0.0.1:$Port;
        server_name _;

$locations

        # canned Gemini answers: a MAX_TOKENS stop and a blocked answer
        location = /canned/models/gemini-length:generateContent {
            default_type application/json;
            return 200 '{"candidates":[{"content":{"parts":[{"text":"cut sho"}],"role":"model"},"finishReason":"MAX_TOKENS","index":0}],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":3,"totalTokenCount":7},"modelVersion":"gemini-upstream","responseId":"cannedLength"}';
        }

        location = /canned/models/gemini-length:streamGenerateContent {
            default_type text/event-stream;
            return 200 'data: {"candidates":[{"content":{"parts":[{"text":"cut "}],"role":"model"},"index":0}],"modelVersion":"gemini-upstream","responseId":"cannedLengthS"}\\r\\n\\r\\ndata: {"candidates":[{"content":{"parts":[{"text":"sho"}],"role":"model"},"finishReason":"MAX_TOKENS","index":0}],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":3,"totalTokenCount":7},"modelVersion":"gemini-upstream","responseId":"cannedLengthS"}\\r\\n\\r\\n';
        }

        location = /canned/models/gemini-blocked:generateContent {
            default_type application/json;
            return 200 '{"candidates":[{"content":{"parts":[],"role":"model"},"finishReason":"SAFETY","index":0}],"usageMetadata":{"promptTokenCount":4,"totalTokenCount":4},"modelVersion":"gemini-upstream","responseId":"cannedBlocked"}';
        }
    }
HTTP

# ------------------------------------------------------------ the node tests

$gw->run_node('gemini.test.mjs',
    env => {
        SMARTFLOW_OPENAI_BASE_URL => "http://127.0.0.1:$Port/v1",
        SMARTFLOW_ANTHROPIC_BASE_URL => "http://127.0.0.1:$Port/anthropic",
        SMARTFLOW_KEY => $Key,
        SMARTFLOW_GEMINI_KEY => $GeminiKey,
    },
    unset => [qw(ANTHROPIC_API_KEY ANTHROPIC_AUTH_TOKEN ANTHROPIC_BASE_URL
                 OPENAI_API_KEY OPENAI_BASE_URL GEMINI_API_KEY)]);

# ------------------------------------------------------------ the error log

my $log = $gw->check_error_log;

$gw->error_log_like($log,
    qr/smartflow proxy: stream from provider "gemini" for model "gemini-2\.0-flash" broke before its end/,
    'error.log: the broken translated stream');

$gw->error_log_like($log,
    qr/smartflow proxy: deployment "gdown\/gemini-down" answered 502 for model "gemini-fallback", trying the next one/,
    'error.log: the fallback from the unreachable deployment');

# ------------------------------------------------------------ the audit log

my @records = $gw->audit_records;

ok((grep { ($_->{model} // '') eq 'gemini-2.0-flash' && $_->{status} == 200
           && ($_->{provider} // '') eq 'gemini' && !$_->{stream} } @records),
   'audit: a Gemini answer')
    or diag(explain([grep { ($_->{model} // '') =~ /^gemini/ } @records]));
ok((grep { ($_->{model} // '') eq 'gemini-2.0-flash' && $_->{status} == 200
           && ($_->{provider} // '') eq 'gemini' && $_->{stream} } @records),
   'audit: a Gemini stream');
ok((grep { ($_->{model} // '') eq 'gemini-2.0-flash' && $_->{status} == 429 } @records),
   'audit: the translated rate limit')
    or diag(explain([grep { $_->{status} == 429 } @records]));
ok((grep { ($_->{model} // '') eq 'gemini-broken' && $_->{status} == 502
           && ($_->{error} // '') eq 'upstream_unreachable' } @records),
   'audit: the unreachable provider')
    or diag(explain([grep { ($_->{model} // '') =~ /broken/ } @records]));

done_testing();
