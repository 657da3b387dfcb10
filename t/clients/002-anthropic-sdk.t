#!/usr/bin/env perl
# The official Anthropic SDK for Node.js against a live gateway's
# /anthropic endpoint, and the official OpenAI SDK asking for Claude models
# through /v1, both through the gateway's translation.
#
# Starts the mock provider and a gateway of its own (the four modules, the
# shipped smartflow_locations.conf and smartflow_proxy.conf), runs
# t/clients/anthropic.test.mjs with node's test runner and reports each of
# its tests as one TAP test here.  Then the gateway's error log must hold no
# [alert], [crit] or [emerg] line and no worker may have died on a signal,
# and the audit log must show the translated requests.
#
# Environment (scripts/test.sh exports the first three):
#   TEST_NGINX_MODULES                 build/modules
#   TEST_NGINX_SMARTFLOW_CONF          conf
#   TEST_NGINX_BINARY                  /usr/sbin/nginx
#   TEST_NGINX_MOCK_PORT               mock provider port (default 1985)
#   SMARTFLOW_ANTHROPIC_CLIENTS_PORT   gateway port (default 1987)
# node_modules is installed with "npm ci" when it is missing.

use strict;
use warnings;

use FindBin ();
use lib "$FindBin::Bin/../lib";
use Smartflow::Clients qw(closed_port);
use Test::More;

my $gw = Smartflow::Clients->new(
    servroot => 't/servroot-clients/anthropic',
    port     => $ENV{SMARTFLOW_ANTHROPIC_CLIENTS_PORT} || 1987,
    port_var => 'SMARTFLOW_ANTHROPIC_CLIENTS_PORT',
    mock     => 1,
    packages => ['@anthropic-ai/sdk', 'openai'],
    conf     => [qw(smartflow_proxy.conf smartflow_locations.conf)]);

my ($Port, $MockPort) = @$gw{qw(port mock_port)};
my $Key = 'sk-smartflow-anthropic-client-tests-0123456789';
my $AnthropicKey = 'sk-mock-anthropic-key-0123456789';
my $OpenAIKey = 'sk-mock-openai-key-0123456789';

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

    smartflow_provider claude type=anthropic upstream=http://sf_mock key=$AnthropicKey;
    smartflow_provider mock type=openai upstream=http://sf_mock key=$OpenAIKey;
    smartflow_provider demo type=echo;
    smartflow_provider down type=anthropic upstream=http://sf_closed key=$AnthropicKey;

    smartflow_route claude-3-5-sonnet-latest claude;
    smartflow_route gpt-4o-mini mock;
    smartflow_route smartflow-echo demo;
    smartflow_route broken-claude down;
    smartflow_route claude-* claude;
    smartflow_route gpt-* mock;

    smartflow_audit_log logs/audit.log;

    server {
        listen 127.0.0.1:$Port;
        server_name _;

$locations
    }
HTTP

# ------------------------------------------------------------ the node tests

$gw->run_node('anthropic.test.mjs',
    env => {
        SMARTFLOW_ANTHROPIC_BASE_URL => "http://127.0.0.1:$Port/anthropic",
        SMARTFLOW_OPENAI_BASE_URL => "http://127.0.0.1:$Port/v1",
        SMARTFLOW_KEY => $Key,
    },
    unset => [qw(ANTHROPIC_API_KEY ANTHROPIC_AUTH_TOKEN ANTHROPIC_BASE_URL
                 OPENAI_API_KEY OPENAI_BASE_URL)]);

# ------------------------------------------------------------ the error log

my $log = $gw->check_error_log;

$gw->error_log_like($log,
    qr/smartflow proxy: stream from provider "mock" for model "gpt-4o-mini" broke before its end/,
    'error.log: the broken translated stream');

# ------------------------------------------------------------ the audit log

my @records = $gw->audit_records;

ok((grep { ($_->{model} // '') eq 'gpt-4o-mini' && $_->{status} == 200
           && ($_->{provider} // '') eq 'mock' && $_->{stream} } @records),
   'audit: a translated stream to the OpenAI-shaped provider')
    or diag(explain([grep { ($_->{model} // '') eq 'gpt-4o-mini' } @records]));
ok((grep { ($_->{model} // '') eq 'claude-3-5-sonnet-latest' && $_->{status} == 200
           && ($_->{provider} // '') eq 'claude' && !$_->{stream} } @records),
   'audit: a Claude request');
ok((grep { ($_->{model} // '') eq 'gpt-4o-mini' && $_->{status} == 429 } @records),
   'audit: the translated rate limit')
    or diag(explain([grep { $_->{status} == 429 } @records]));
ok((grep { ($_->{model} // '') eq 'broken-claude' && $_->{status} == 502
           && ($_->{error} // '') eq 'upstream_unreachable' } @records),
   'audit: the unreachable provider')
    or diag(explain([grep { ($_->{model} // '') =~ /^broken/ } @records]));

done_testing();
