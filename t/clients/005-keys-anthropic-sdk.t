#!/usr/bin/env perl
# Virtual keys through the official Anthropic SDK for Node.js, on the
# native /anthropic endpoint.
#
# Starts a gateway of its own (the four modules, a keys zone, the shipped
# smartflow_proxy.conf and smartflow_admin.conf, the built-in echo
# provider), runs t/clients/keys-anthropic.test.mjs with node's test
# runner and reports each of its tests as one TAP test here; then the
# error log must hold no [alert], [crit] or [emerg] line.
#
# Environment (scripts/test.sh exports the first three):
#   TEST_NGINX_MODULES          build/modules
#   TEST_NGINX_SMARTFLOW_CONF   conf
#   TEST_NGINX_BINARY           /usr/sbin/nginx
#   TEST_NGINX_KEYS_CLIENT_PORT the gateway's port (default 1987)
# node_modules is installed with "npm ci" when it is missing.

use strict;
use warnings;

use FindBin ();
use lib "$FindBin::Bin/../lib";
use Smartflow::Clients;
use Test::More;

my $gw = Smartflow::Clients->new(
    servroot => 't/servroot-keys-clients/anthropic',
    port     => $ENV{TEST_NGINX_KEYS_CLIENT_PORT} || 1987,
    port_var => 'TEST_NGINX_KEYS_CLIENT_PORT',
    packages => ['@anthropic-ai/sdk'],
    conf     => [qw(smartflow_proxy.conf smartflow_admin.conf)]);

my ($Port, $ConfDir) = @$gw{qw(port conf_dir)};
my $Master = 'sk-smartflow-anthropic-keys-tests-0123456789';

$gw->start(<<"HTTP", workers => 2);
    smartflow_master_key $Master;
    smartflow_keys_zone keys 1m;

    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_route other-echo demo;

    server {
        listen 127.0.0.1:$Port;

        location = /anthropic/v1/messages {
            smartflow_api messages;
            error_page 401 403 408 413 429 500 502 503 504
                       \@smartflow_anthropic_error;
            include $ConfDir/smartflow_proxy.conf;
        }

        include $ConfDir/smartflow_admin.conf;

        location \@smartflow_error {
            smartflow_api error;
        }

        location \@smartflow_anthropic_error {
            smartflow_api anthropic_error;
        }
    }
HTTP

$gw->run_node('keys-anthropic.test.mjs',
    env => {
        SMARTFLOW_ANTHROPIC_BASE_URL => "http://127.0.0.1:$Port/anthropic",
        SMARTFLOW_ADMIN_URL => "http://127.0.0.1:$Port/api/auth/virtual-keys",
        SMARTFLOW_KEY => $Master,
    },
    unset => [qw(ANTHROPIC_API_KEY ANTHROPIC_AUTH_TOKEN ANTHROPIC_BASE_URL)]);

$gw->check_error_log;

done_testing();
