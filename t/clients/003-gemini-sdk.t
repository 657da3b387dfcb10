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

use Cwd ();
use File::Basename ();
use File::Path ();
use File::Spec;
use IO::Socket::INET;
use JSON::PP ();
use POSIX ();
use Test::More;

my ($Top, $Here, $ServRoot);

BEGIN {
    $Here = File::Basename::dirname(Cwd::abs_path(__FILE__));
    $Top = Cwd::abs_path("$Here/../..");
    chdir $Top or die "cannot chdir to $Top: $!\n";
    $ServRoot = "$Top/t/servroot-clients/gemini";
    # the mock provider keeps its log next to the gateway's
    $ENV{TEST_NGINX_SERVROOT} = $ServRoot;
}

use lib "$Top/t/lib";
use Smartflow::Mock;

my $Modules = $ENV{TEST_NGINX_MODULES} || "$Top/build/modules";
my $ConfDir = $ENV{TEST_NGINX_SMARTFLOW_CONF} || "$Top/conf";
my $Nginx = $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx';
my $Port = $ENV{SMARTFLOW_GEMINI_CLIENTS_PORT} || 1989;
my $MockPort = Smartflow::Mock::port();
my $Key = 'sk-smartflow-gemini-client-tests-0123456789';
my $GeminiKey = 'gm-mock-gemini-key-0123456789';

my $NginxPid;     # the gateway's master process
my $NodePid;      # the test runner, while it runs

END {
    my $status = $?;
    kill 'KILL', $NodePid if $NodePid;
    stop_nginx();
    $? = $status;
}

$SIG{$_} = sub { die "interrupted by SIG$_[0]\n" } for qw(INT TERM HUP);

sub sleep_for { select(undef, undef, undef, $_[0]) }

sub listening {
    my ($port) = @_;
    my $sock = IO::Socket::INET->new(
        PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp',
        Timeout => 1);
    return 0 unless $sock;
    close $sock;
    return 1;
}

sub slurp {
    my ($file) = @_;
    open my $fh, '<', $file or return '';
    local $/;
    my $data = <$fh>;
    close $fh;
    return $data // '';
}

sub spew {
    my ($file, $data) = @_;
    open my $fh, '>', $file or die "cannot write $file: $!\n";
    print {$fh} $data;
    close $fh or die "cannot write $file: $!\n";
}

# A port nothing listens on: the kernel hands out a free one, we let it go.
sub closed_port {
    my $sock = IO::Socket::INET->new(
        LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp',
        Listen => 1, ReuseAddr => 0)
        or die "cannot bind a free port: $!\n";
    my $port = $sock->sockport;
    close $sock;
    return $port;
}

sub stop_nginx {
    return unless $NginxPid;
    my $pid = $NginxPid;
    undef $NginxPid;
    kill 'QUIT', $pid;              # graceful: workers finish, then exit
    for (1 .. 100) {
        my $r = waitpid($pid, POSIX::WNOHANG());
        return if $r == $pid || $r == -1;
        sleep_for(0.05);
    }
    kill 'TERM', $pid;
    for (1 .. 40) {
        my $r = waitpid($pid, POSIX::WNOHANG());
        return if $r == $pid || $r == -1;
        sleep_for(0.05);
    }
    kill 'KILL', $pid;
    waitpid($pid, 0);
}

# ------------------------------------------------------------ prerequisites

my $node_version = `node --version 2>/dev/null`;
BAIL_OUT('node is not installed; the client tests need Node.js 20 or later')
    unless defined $node_version && $node_version =~ /^v(\d+)/;
BAIL_OUT("Node.js $node_version is too old; 20 or later is needed")
    if $1 < 20;

unless (-d "$Here/node_modules/\@anthropic-ai/sdk" && -d "$Here/node_modules/openai") {
    my $out = `cd '$Here' && npm ci --no-audit --no-fund --loglevel=error 2>&1`;
    if ($? != 0 || !-d "$Here/node_modules/openai") {
        diag($out);
        BAIL_OUT("npm ci in t/clients failed");
    }
}

for my $m (qw(proxy policy cache audit)) {
    my $so = "$Modules/ngx_http_smartflow_${m}_module.so";
    BAIL_OUT("$so is missing; run make first") unless -f $so;
}
BAIL_OUT("$Nginx is not executable") unless -x $Nginx;
for my $f (qw(smartflow_proxy.conf smartflow_locations.conf)) {
    BAIL_OUT("$ConfDir/$f is missing") unless -f "$ConfDir/$f";
}
BAIL_OUT("port $Port is already in use (set SMARTFLOW_GEMINI_CLIENTS_PORT)")
    if listening($Port);

# ------------------------------------------------------------ the gateway

File::Path::remove_tree("$ServRoot/conf", "$ServRoot/logs", "$ServRoot/tmp");
File::Path::make_path("$ServRoot/conf", "$ServRoot/logs", "$ServRoot/tmp");

my $closed = closed_port();
my $user = $> == 0 ? "user root;\n" : '';

# the shipped server-level locations, their nested includes made absolute
my $locations = slurp("$ConfDir/smartflow_locations.conf");
$locations =~ s{^(\s*include\s+)([^/\s;]+\.conf);}{$1$ConfDir/$2;}mg;
$locations =~ s/^/        /mg;

spew("$ServRoot/conf/nginx.conf", <<"CONF");
# written by t/clients/003-gemini-sdk.t
load_module $Modules/ngx_http_smartflow_proxy_module.so;
load_module $Modules/ngx_http_smartflow_policy_module.so;
load_module $Modules/ngx_http_smartflow_cache_module.so;
load_module $Modules/ngx_http_smartflow_audit_module.so;

${user}worker_processes 1;
daemon off;
master_process on;
pid logs/nginx.pid;
error_log logs/error.log info;

events {
    worker_connections 256;
}

http {
    default_type application/octet-stream;
    access_log logs/access.log;

    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;

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
}
CONF

{
    my $pid = fork;
    BAIL_OUT("fork failed: $!") unless defined $pid;
    if ($pid == 0) {
        open STDIN, '<', File::Spec->devnull;
        open STDOUT, '>>', "$ServRoot/logs/nginx.out" or POSIX::_exit(127);
        open STDERR, '>&', \*STDOUT or POSIX::_exit(127);
        { no warnings 'exec'; exec $Nginx, '-p', "$ServRoot/", '-c', 'conf/nginx.conf' };
        print STDERR "cannot run $Nginx: $!\n";
        POSIX::_exit(127);
    }
    $NginxPid = $pid;

    for (my $i = 0; !listening($Port); $i++) {
        if (waitpid($pid, POSIX::WNOHANG()) == $pid) {
            undef $NginxPid;
            diag(slurp("$ServRoot/logs/nginx.out"));
            diag(slurp("$ServRoot/logs/error.log"));
            BAIL_OUT("nginx exited with status " . ($? >> 8)
                     . " before listening on port $Port");
        }
        if ($i >= 200) {
            diag(slurp("$ServRoot/logs/error.log"));
            BAIL_OUT("nginx did not listen on port $Port within 10 s");
        }
        sleep_for(0.05);
    }
}

# ------------------------------------------------------------ the node tests

my %env = (
    SMARTFLOW_OPENAI_BASE_URL => "http://127.0.0.1:$Port/v1",
    SMARTFLOW_ANTHROPIC_BASE_URL => "http://127.0.0.1:$Port/anthropic",
    SMARTFLOW_KEY => $Key,
    SMARTFLOW_GEMINI_KEY => $GeminiKey,
    NODE_NO_WARNINGS => 1,
);

my @cmd = ('node', '--test', '--test-reporter=tap', '--test-timeout=60000',
           "$Here/gemini.test.mjs");

my (@lines, $out);
{
    local @ENV{keys %env} = values %env;
    # the SDKs read these; the tests name everything themselves
    delete local $ENV{$_} for qw(ANTHROPIC_API_KEY ANTHROPIC_AUTH_TOKEN
                                 ANTHROPIC_BASE_URL OPENAI_API_KEY
                                 OPENAI_BASE_URL GEMINI_API_KEY);

    $NodePid = open($out, '-|', @cmd)
        or BAIL_OUT("cannot run node: $!");
    while (my $line = <$out>) {
        push @lines, $line;
    }
    close $out;
}
my $node_status = $?;
undef $NodePid;

# Top-level results of node's TAP output: "ok N - name" / "not ok N - name",
# each followed by an indented YAML block that tells why a test failed.
my (@results, $cur, $plan);
for my $line (@lines) {
    if ($line =~ /^(not )?ok \d+ - (.*?)(?: # (SKIP|TODO)\b\s*(.*))?\s*$/) {
        $cur = { ok => !$1, name => $2, directive => $3 // '',
                 reason => $4 // '', detail => '' };
        push @results, $cur;
        next;
    }
    if ($line =~ /^1\.\.(\d+)/) {
        $plan = $1;
        undef $cur;
        next;
    }
    if ($line =~ /^\S/) {
        undef $cur;
        next;
    }
    $cur->{detail} .= $line if $cur;
}

for my $r (@results) {
    if ($r->{directive} eq 'SKIP') {
      SKIP: { skip("$r->{name}: $r->{reason}", 1) }
        next;
    }
    if ($r->{directive} eq 'TODO') {
      TODO: {
            local $TODO = $r->{reason} || 'todo';
            ok($r->{ok}, $r->{name});
        }
        next;
    }
    ok($r->{ok}, $r->{name}) or diag($r->{detail});
}

ok(@results > 0 && defined $plan && $plan == @results,
   'node ran every test of gemini.test.mjs')
    or diag(join '', @lines);
is($node_status >> 8, (grep { !$_->{ok} && $_->{directive} ne 'TODO' } @results) ? 1 : 0,
   'node test runner exit status')
    or diag(join '', @lines);

# ------------------------------------------------------------ the error log

stop_nginx();

my $log = slurp("$ServRoot/logs/error.log");
my @bad = grep { /\[(?:alert|crit|emerg)\]|exited on signal/ } split /\n/, $log;
ok(!@bad, 'no [alert], [crit], [emerg] or crashed worker in error.log')
    or diag(join "\n", @bad);

ok($log =~ /smartflow proxy: stream from provider "gemini" for model "gemini-2\.0-flash" broke before its end/,
   'error.log: the broken translated stream')
    or diag(join "\n", grep { /smartflow proxy/ } split /\n/, $log);

ok($log =~ /smartflow proxy: deployment "gdown\/gemini-down" answered 502 for model "gemini-fallback", trying the next one/,
   'error.log: the fallback from the unreachable deployment')
    or diag(join "\n", grep { /smartflow proxy/ } split /\n/, $log);

# ------------------------------------------------------------ the audit log

my @audit = grep { length } split /\n/, slurp("$ServRoot/logs/audit.log");
my @records = map { scalar eval { JSON::PP::decode_json($_) } } @audit;
my @broken = map { $audit[$_] } grep { ref $records[$_] ne 'HASH' } 0 .. $#audit;
ok(@audit && !@broken, 'every audit log line is a JSON object')
    or diag(@audit ? join "\n", @broken : 'audit.log is empty');
@records = grep { ref eq 'HASH' } @records;

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
