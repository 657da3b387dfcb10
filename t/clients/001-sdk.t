#!/usr/bin/env perl
# The official OpenAI SDK for Node.js against a live gateway.
#
# Starts the mock provider and a gateway of its own (the four modules, the
# shipped smartflow_proxy.conf), runs t/clients/openai.test.mjs with node's
# test runner and reports each of its tests as one TAP test here.  Finally
# the gateway's error log must hold no [alert], [crit] or [emerg] line and
# no worker may have died on a signal.
#
# Environment (scripts/test.sh exports the first three):
#   TEST_NGINX_MODULES        build/modules
#   TEST_NGINX_SMARTFLOW_CONF conf
#   TEST_NGINX_BINARY         /usr/sbin/nginx
#   TEST_NGINX_MOCK_PORT      mock provider port (default 1985)
#   SMARTFLOW_CLIENTS_PORT    gateway port (default 1986)
# node_modules is installed with "npm ci" when it is missing.

use strict;
use warnings;

use FindBin ();
use lib "$FindBin::Bin/../lib";
use Smartflow::Clients qw(closed_port);
use Test::More;

my $gw = Smartflow::Clients->new(
    servroot => 't/servroot-clients',
    port     => $ENV{SMARTFLOW_CLIENTS_PORT} || 1986,
    port_var => 'SMARTFLOW_CLIENTS_PORT',
    mock     => 1,
    packages => ['openai'],
    conf     => ['smartflow_proxy.conf']);

my ($Port, $MockPort) = @$gw{qw(port mock_port)};
my $Key = 'sk-smartflow-client-tests-0123456789';
my $ProviderKey = 'sk-mock-provider-key-0123456789';

# ------------------------------------------------------------ the gateway

my $closed = closed_port();
my $proxy_conf = "$gw->{conf_dir}/smartflow_proxy.conf";

my $locations = '';
for my $prefix ('', '/restricted') {
    # /restricted/v1 is the same API behind a model allow-list
    my $policy = $prefix ? "        smartflow_policy_models gpt-* text-embedding-*;\n" : '';
    for my $op (qw(chat/completions:chat completions:completions
                   embeddings:embeddings))
    {
        my ($path, $api) = split /:/, $op;
        $locations .= <<"LOC";
        location = $prefix/v1/$path {
            smartflow_api $api;
$policy            include $proxy_conf;
        }

LOC
    }
}

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

    smartflow_provider mock type=openai upstream=http://sf_mock path=/v1 key=$ProviderKey;
    smartflow_provider demo type=echo;
    smartflow_provider down type=openai upstream=http://sf_closed path=/v1 key=$ProviderKey;

    smartflow_route smartflow-echo demo;
    smartflow_route gpt-4o-mini mock;
    smartflow_route text-embedding-3-small mock;
    smartflow_route broken-model down;
    smartflow_route gpt-* mock;
    smartflow_route text-embedding-* mock;
    smartflow_route broken-* down;

    smartflow_audit_log logs/audit.log;

    server {
        listen 127.0.0.1:$Port;
        server_name _;

$locations        location = /v1/models {
            smartflow_api models;
            error_page 401 405 \@smartflow_error;
        }

        location = /health {
            smartflow_api health;
        }

        location /v1/ {
            return 404;
            error_page 404 \@smartflow_error;
        }

        location \@smartflow_error {
            smartflow_api error;
        }
    }
HTTP

# ------------------------------------------------------------ the node tests

$gw->run_node('openai.test.mjs',
    env => {
        SMARTFLOW_BASE_URL => "http://127.0.0.1:$Port/v1",
        SMARTFLOW_RESTRICTED_BASE_URL => "http://127.0.0.1:$Port/restricted/v1",
        SMARTFLOW_KEY => $Key,
    },
    unset => [qw(OPENAI_API_KEY OPENAI_BASE_URL)]);

# ------------------------------------------------------------ the error log

$gw->check_error_log;

# ------------------------------------------------------------ the audit log

my @records = $gw->audit_records;

my @fields = qw(time status key_id model provider stream request_bytes
                response_bytes error);
my @partial = grep { my $r = $_; grep { !exists $r->{$_} } @fields } @records;
ok(!@partial, 'every audit record has the documented fields')
    or diag(explain($partial[0]));

ok((grep { ($_->{model} // '') eq 'smartflow-echo' && $_->{status} == 200
           && $_->{provider} eq 'demo' && $_->{stream} } @records),
   'audit: a streamed echo request');
ok((grep { ($_->{model} // '') eq 'broken-model' && $_->{status} == 502
           && ($_->{error} // '') eq 'upstream_unreachable' } @records),
   'audit: the unreachable provider')
    or diag(explain([grep { ($_->{model} // '') =~ /^broken/ } @records]));
ok((grep { $_->{status} == 401 && !defined $_->{key_id} } @records),
   'audit: a refused key has no key id')
    or diag(explain([grep { $_->{status} == 401 } @records]));

done_testing();
