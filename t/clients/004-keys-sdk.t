#!/usr/bin/env perl
# Virtual keys through the official OpenAI SDK for Node.js.
#
# Starts a gateway of its own (the four modules, a keys zone, the shipped
# smartflow_proxy.conf and smartflow_admin.conf, the built-in echo
# provider), runs t/clients/keys.test.mjs with node's test runner and
# reports each of its tests as one TAP test here; then the error log must
# hold no [alert], [crit] or [emerg] line.
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
    servroot => 't/servroot-keys-clients',
    port     => $ENV{TEST_NGINX_KEYS_CLIENT_PORT} || 1987,
    port_var => 'TEST_NGINX_KEYS_CLIENT_PORT',
    packages => ['openai'],
    conf     => [qw(smartflow_proxy.conf smartflow_admin.conf)]);

my ($Port, $ConfDir) = @$gw{qw(port conf_dir)};
my $Master = 'sk-smartflow-keys-client-tests-0123456789';

$gw->start(<<"HTTP", workers => 2);
    smartflow_master_key $Master;
    smartflow_keys_zone keys 1m;

    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_route other-echo demo;

    server {
        listen 127.0.0.1:$Port;

        location = /v1/chat/completions {
            smartflow_api chat;
            include $ConfDir/smartflow_proxy.conf;
        }

        include $ConfDir/smartflow_admin.conf;

        location \@smartflow_error {
            smartflow_api error;
        }
    }
HTTP

$gw->run_node('keys.test.mjs',
    env => {
        SMARTFLOW_BASE_URL => "http://127.0.0.1:$Port/v1",
        SMARTFLOW_ADMIN_URL => "http://127.0.0.1:$Port/api/auth/virtual-keys",
        SMARTFLOW_KEY => $Master,
    },
    unset => [qw(OPENAI_API_KEY OPENAI_BASE_URL)]);

$gw->check_error_log;

done_testing();
