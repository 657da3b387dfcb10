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

use strict;
use warnings;

use Cwd ();
use File::Basename ();
use File::Path ();
use IO::Socket::INET;
use POSIX ();
use Test::More;

my $Here = File::Basename::dirname(Cwd::abs_path(__FILE__));
my $Top = Cwd::abs_path("$Here/../..");
my $ServRoot = "$Top/t/servroot-keys-clients";
my $Modules = $ENV{TEST_NGINX_MODULES} || "$Top/build/modules";
my $ConfDir = $ENV{TEST_NGINX_SMARTFLOW_CONF} || "$Top/conf";
my $Nginx = $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx';
my $Port = $ENV{TEST_NGINX_KEYS_CLIENT_PORT} || 1987;
my $Master = 'sk-smartflow-keys-client-tests-0123456789';

my $NginxPid;

END {
    my $status = $?;
    stop_nginx();
    $? = $status;
}

$SIG{$_} = sub { die "interrupted by SIG$_[0]\n" } for qw(INT TERM HUP);

sub listening {
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                     PeerPort => $Port, Proto => 'tcp');
    return 0 unless $sock;
    close $sock;
    return 1;
}

sub slurp {
    open my $fh, '<', $_[0] or return '';
    local $/;
    return scalar <$fh> // '';
}

sub stop_nginx {
    return unless $NginxPid;
    my $pid = $NginxPid;
    undef $NginxPid;
    for my $sig (qw(QUIT TERM KILL)) {
        kill $sig, $pid;
        for (1 .. 100) {
            my $r = waitpid($pid, POSIX::WNOHANG());
            return if $r == $pid || $r == -1;
            select(undef, undef, undef, 0.05);
        }
    }
}

my $node = `node --version 2>/dev/null` // '';
BAIL_OUT('node 20 or later is needed for the client tests')
    unless $node =~ /^v(\d+)/ && $1 >= 20;
BAIL_OUT('t/clients/node_modules/openai is missing: run npm ci in t/clients')
    unless -d "$Here/node_modules/openai";
BAIL_OUT("port $Port is in use (set TEST_NGINX_KEYS_CLIENT_PORT)")
    if listening();

File::Path::remove_tree("$ServRoot/conf", "$ServRoot/logs", "$ServRoot/tmp");
File::Path::make_path("$ServRoot/conf", "$ServRoot/logs", "$ServRoot/tmp");

my $user = $> == 0 ? "user root;\n" : '';

open my $conf, '>', "$ServRoot/conf/nginx.conf" or die "nginx.conf: $!\n";
print {$conf} <<"CONF";
# written by t/clients/004-keys-sdk.t
load_module $Modules/ngx_http_smartflow_proxy_module.so;
load_module $Modules/ngx_http_smartflow_policy_module.so;
load_module $Modules/ngx_http_smartflow_cache_module.so;
load_module $Modules/ngx_http_smartflow_audit_module.so;

${user}worker_processes 2;
daemon off;
master_process on;
pid logs/nginx.pid;
error_log logs/error.log info;

events {
    worker_connections 256;
}

http {
    access_log logs/access.log;

    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;

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
}
CONF
close $conf;

$NginxPid = fork // BAIL_OUT("fork: $!");
if ($NginxPid == 0) {
    open STDIN, '<', '/dev/null';
    open STDOUT, '>>', "$ServRoot/logs/nginx.out";
    open STDERR, '>&', \*STDOUT;
    { no warnings 'exec'; exec $Nginx, '-p', "$ServRoot/", '-c', 'conf/nginx.conf' };
    POSIX::_exit(127);
}

for (my $i = 0; !listening(); $i++) {
    if (waitpid($NginxPid, POSIX::WNOHANG()) == $NginxPid || $i >= 200) {
        undef $NginxPid;
        diag(slurp("$ServRoot/logs/nginx.out") . slurp("$ServRoot/logs/error.log"));
        BAIL_OUT('the gateway did not start');
    }
    select(undef, undef, undef, 0.05);
}

my @lines;
{
    local $ENV{SMARTFLOW_BASE_URL} = "http://127.0.0.1:$Port/v1";
    local $ENV{SMARTFLOW_ADMIN_URL} = "http://127.0.0.1:$Port/api/auth/virtual-keys";
    local $ENV{SMARTFLOW_KEY} = $Master;
    local $ENV{NODE_NO_WARNINGS} = 1;
    delete local $ENV{OPENAI_API_KEY};
    delete local $ENV{OPENAI_BASE_URL};

    open my $out, '-|', 'node', '--test', '--test-reporter=tap',
         '--test-timeout=60000', "$Here/keys.test.mjs"
        or BAIL_OUT("cannot run node: $!");
    @lines = <$out>;
    close $out;
}
my $status = $? >> 8;

# node's top-level results, each followed by an indented reason
my ($plan, @results);
for my $line (@lines) {
    if ($line =~ /^(not )?ok \d+ - (.*?)\s*$/) {
        push @results, { ok => !$1, name => $2, detail => '' };
    } elsif ($line =~ /^1\.\.(\d+)/) {
        $plan = $1;
    } elsif ($line =~ /^\s/ && @results) {
        $results[-1]{detail} .= $line;
    }
}

ok($_->{ok}, $_->{name}) or diag($_->{detail}) for @results;
ok(@results && defined $plan && $plan == @results,
   'node ran every test of keys.test.mjs') or diag(join '', @lines);
is($status, (grep { !$_->{ok} } @results) ? 1 : 0, 'node exit status');

stop_nginx();

my @bad = grep { /\[(?:alert|crit|emerg)\]|exited on signal/ }
          split /\n/, slurp("$ServRoot/logs/error.log");
ok(!@bad, 'no [alert], [crit], [emerg] or crashed worker in error.log')
    or diag(join "\n", @bad);

done_testing();
