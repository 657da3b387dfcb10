#!/usr/bin/env perl
# Guardrails through the official SDKs (openai and @anthropic-ai/sdk for
# Node.js) against a live gateway: redacted requests and answers, plain
# and streamed; blocks surfacing as the SDKs' own error classes with the
# content_policy_violation code, on requests and in the middle of a
# stream.  t/clients/policy.test.mjs holds the node tests.
#
# Ports: SMARTFLOW_POLICY_CLIENTS_PORT (default 1990) for the gateway,
# TEST_NGINX_MOCK_PORT for the mock provider.

use strict;
use warnings;

use FindBin ();
use lib "$FindBin::Bin/../lib";
use Smartflow::Clients;
use Test::More;

my $gw = Smartflow::Clients->new(
    servroot => 't/servroot-policy-clients',
    port     => $ENV{SMARTFLOW_POLICY_CLIENTS_PORT} || 1990,
    port_var => 'SMARTFLOW_POLICY_CLIENTS_PORT',
    mock     => 1,
    packages => ['openai', '@anthropic-ai/sdk'],
    conf     => ['smartflow_proxy.conf', 'smartflow_locations.conf']);

my ($Port, $MockPort) = @$gw{qw(port mock_port)};
my $Key = 'sk-smartflow-policy-sdk-0123456789';
my $locations = $gw->shipped_locations;

$gw->start(<<"HTTP");
    smartflow_master_key $Key;

    upstream sf_mock {
        server 127.0.0.1:$MockPort;
        keepalive 8;
    }

    smartflow_provider openai type=openai upstream=http://sf_mock path=/v1
                       key=sk-mock-provider-key-0123456789;
    smartflow_provider anthropic type=anthropic upstream=http://sf_mock
                       key=sk-ant-mock-provider-key-0123;
    smartflow_route gpt-* openai;
    smartflow_route claude-* anthropic;

    smartflow_policy_group sdk {
        pii redact;
        card block;
        injection block;
        shield block;
        output on;
    }

    server {
        listen 127.0.0.1:$Port;
        server_name _;
        smartflow_policy sdk;

$locations    }
HTTP

$gw->run_node('policy.test.mjs',
    env => {
        SMARTFLOW_OPENAI_BASE_URL => "http://127.0.0.1:$Port/v1",
        SMARTFLOW_ANTHROPIC_BASE_URL => "http://127.0.0.1:$Port/anthropic",
        SMARTFLOW_KEY => $Key,
    },
    unset => [qw(OPENAI_API_KEY OPENAI_BASE_URL ANTHROPIC_API_KEY
                 ANTHROPIC_BASE_URL)]);

my $log = $gw->check_error_log;
$gw->error_log_like($log, qr/smartflow policy: rule "card" of group "sdk" blocked the answer/,
                    'the blocked answer is logged');

done_testing();
