#!/usr/bin/env perl
# The MetaCache through the official SDKs: openai and @anthropic-ai/sdk for
# Node.js, plain and streamed, against a live gateway with the shipped
# locations and the cache on (t/clients/cache.test.mjs).
#
# Environment, besides what 001-sdk.t reads:
#   SMARTFLOW_CACHE_CLIENTS_PORT   gateway port (default 1990)

use strict;
use warnings;

use FindBin ();
use lib "$FindBin::Bin/../lib";
use Smartflow::Clients;
use Test::More;

my $gw = Smartflow::Clients->new(
    servroot => 't/servroot-clients/cache',
    port     => $ENV{SMARTFLOW_CACHE_CLIENTS_PORT} || 1990,
    port_var => 'SMARTFLOW_CACHE_CLIENTS_PORT',
    mock     => 1,
    packages => ['@anthropic-ai/sdk', 'openai'],
    conf     => [qw(smartflow_proxy.conf smartflow_locations.conf)]);

my ($Port, $MockPort) = @$gw{qw(port mock_port)};
my $Key = 'sk-smartflow-cache-client-tests-0123456789';
my $locations = $gw->shipped_locations;

$gw->start(<<"HTTP");
    default_type application/octet-stream;

    smartflow_master_key $Key;

    upstream sf_mock {
        server 127.0.0.1:$MockPort;
        keepalive 8;
    }

    smartflow_provider mock type=openai upstream=http://sf_mock path=/v1
                       key=sk-mock-provider-key-0123456789;
    smartflow_provider anthropic type=anthropic upstream=http://sf_mock
                       path=/v1 key=sk-mock-anthropic-key-0123456789;

    smartflow_route gpt-* mock;
    smartflow_route claude-* anthropic;

    smartflow_cache_zone metacache 16m entries=1000;

    server {
        listen 127.0.0.1:$Port;
        server_name _;

        smartflow_cache metacache;

$locations
    }
HTTP

$gw->run_node('cache.test.mjs',
    env => {
        SMARTFLOW_OPENAI_BASE_URL => "http://127.0.0.1:$Port/v1",
        SMARTFLOW_ANTHROPIC_BASE_URL => "http://127.0.0.1:$Port/anthropic",
        SMARTFLOW_KEY => $Key,
    },
    unset => [qw(OPENAI_API_KEY OPENAI_BASE_URL ANTHROPIC_API_KEY
                 ANTHROPIC_BASE_URL)]);

$gw->check_error_log;

done_testing();
