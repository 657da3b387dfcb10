package Smartflow::Cluster;

# Several gateway nodes sharing one real redis-server, for the suites in
# t/redis.  The suite starts everything itself and stops it at the end:
#
#     use lib 't/lib';
#     use Smartflow::Cluster;
#
#     my $c = Smartflow::Cluster->new(name => 'shared');
#     $c->redis_start;
#     my $a = $c->node('a', port => 3100, fail => 'open');
#     my ($status, $body, $headers) = $c->http($a, 'GET', '/v1/models');
#     $c->burst([$a, 'POST', '/v1/chat/completions', $json, @headers], ...);
#
# Ports come from the environment (TEST_NGINX_PORT and
# SMARTFLOW_REDIS_NODE_PORT for the nodes, SMARTFLOW_REDIS_PORT for
# Redis), with defaults, so that several runs can share the machine.
# Each node is a real nginx (TEST_NGINX_BINARY, the modules from
# TEST_NGINX_MODULES) with its own prefix under TEST_NGINX_SERVROOT, two
# workers and a master.  Its smartflow_redis has a generous timeout= (2 s,
# 6 s under AddressSanitizer), so that a loaded machine's pause never
# passes for an outage; timeout => MS gives another.  start() and
# reload() return once the node's workers are connected to Redis (when
# it runs), not after a fixed pause.

use strict;
use warnings;

use File::Path qw(make_path remove_tree);
use File::Spec;
use IO::Select;
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(sleep time);

our $VERSION = '0.01';

our @Clusters;

our $Master = 'sk-smartflow-test-0123456789';

sub new {
    my ($class, %o) = @_;
    my $root = ($ENV{TEST_NGINX_SERVROOT} || '/tmp/smartflow-redis-test')
               . "/cluster-$o{name}";
    remove_tree($root);
    make_path($root);
    my $self = bless {
        root       => $root,
        redis_port => $ENV{SMARTFLOW_REDIS_PORT} || 3110,
        binary     => $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx',
        modules    => File::Spec->rel2abs($ENV{TEST_NGINX_MODULES}
                                          || 'build/modules'),
        conf       => File::Spec->rel2abs($ENV{TEST_NGINX_SMARTFLOW_CONF}
                                          || 'conf'),
        nodes      => {},
        slow       => $ENV{SMARTFLOW_ASAN} ? 3 : 1,
    }, $class;
    push @Clusters, $self;
    return $self;
}

sub redis_port { $_[0]{redis_port} }

# Ports in the kernel's ephemeral range (a run with ports moved, several
# at once on one machine) may be held a moment by another's outgoing
# connection: a start that finds its port taken is tried again.
sub redis_start {
    my ($self) = @_;
    for my $try (1 .. 30) {
        my $pid = fork;
        die "fork: $!" unless defined $pid;
        if ($pid == 0) {
            open STDOUT, '>', "$self->{root}/redis.log";
            open STDERR, '>&', \*STDOUT;
            no warnings 'exec';
            exec { 'redis-server' } 'redis-server',
                 '--port', $self->{redis_port}, '--bind', '127.0.0.1',
                 '--save', '', '--appendonly', 'no', '--dir', $self->{root};
            POSIX::_exit(127);
        }
        for (1 .. 300) {
            last if waitpid($pid, POSIX::WNOHANG()) == $pid;
            my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                             PeerPort => $self->{redis_port},
                                             Proto => 'tcp', Timeout => 1);
            if ($sock) {
                close $sock;
                $self->{redis_pid} = $pid;
                return $pid;
            }
            sleep 0.05;
        }
        kill 'KILL', $pid;
        waitpid $pid, 0;
        sleep 1;
    }
    die "redis-server did not start on port $self->{redis_port}\n";
}

sub redis_stop {
    my ($self) = @_;
    my $pid = delete $self->{redis_pid} or return;
    kill 'KILL', $pid;
    waitpid $pid, 0;
    _wait_port($self->{redis_port}, 0);
}

# one command through redis-cli, for checks on what Redis holds
sub redis_cli {
    my ($self, @args) = @_;
    open my $fh, '-|', 'redis-cli', '-p', $self->{redis_port}, @args
        or die "redis-cli: $!";
    local $/;
    my $out = <$fh>;
    close $fh;
    $out =~ s/\s+\z// if defined $out;
    return $out;
}

sub node {
    my ($self, $name, %o) = @_;
    my $dir = "$self->{root}/$name";
    # the state folder is made by nginx, for its workers' user
    make_path("$dir/logs");
    my $timeout = ($o{timeout} || 2000) * $self->{slow};
    my $redis = $o{redis} // "127.0.0.1:$self->{redis_port}"
                             . " timeout=${timeout}ms"
                             . " fail=" . ($o{fail} || 'open');
    my $node = { name => $name, dir => $dir, port => $o{port} };
    # extra modules (after the proxy), main and http-level lines, if asked
    my $load = join '', map {
        "load_module $self->{modules}/ngx_http_smartflow_${_}_module.so;\n"
    } @{ $o{modules} || [] };
    my $http = $o{http} // '';
    my $server = $o{server} // '';
    my $main = $o{main} // '';
    my $conf = <<"_EOC_";
${main}daemon on;
master_process on;
worker_processes 2;
error_log $dir/logs/error.log info;
pid $dir/logs/nginx.pid;
load_module $self->{modules}/ngx_http_smartflow_proxy_module.so;
${load}thread_pool sf threads=1;
events { worker_connections 512; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    smartflow_master_key $Master;
    smartflow_keys_zone keys 1m state=$dir/state/keys.state thread_pool=sf;
    smartflow_redis $redis;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_price smartflow-echo 0.000001 0.000001;
$http
    server {
        listen 127.0.0.1:$o{port};
        location = /v1/chat/completions {
            smartflow_api chat;
            include $self->{conf}/smartflow_proxy.conf;
        }
        location = /v1/messages {
            smartflow_api messages;
            include $self->{conf}/smartflow_proxy.conf;
        }
        include $self->{conf}/smartflow_admin.conf;
        location \@smartflow_error {
            smartflow_api error;
        }
        location = /ping {
            return 200 "pong\\n";
        }
$server
    }
}
_EOC_
    open my $fh, '>', "$dir/nginx.conf" or die "$dir/nginx.conf: $!";
    print $fh $conf;
    close $fh;
    $self->{nodes}{$name} = $node;
    $self->start($node);
    return $node;
}

# "nginx -t" of an http block around the lines given: (exit code, output)
sub conf_test {
    my ($self, $lines) = @_;
    my $dir = "$self->{root}/conf-test";
    make_path("$dir/logs");
    open my $fh, '>', "$dir/nginx.conf" or die "$dir/nginx.conf: $!";
    print $fh <<"_EOC_";
error_log $dir/logs/error.log;
pid $dir/logs/nginx.pid;
load_module $self->{modules}/ngx_http_smartflow_proxy_module.so;
events { }
http {
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
$lines
}
_EOC_
    close $fh;
    my $out = `$self->{binary} -t -p $dir -c $dir/nginx.conf 2>&1`;
    return ($? >> 8, $out);
}

sub start {
    my ($self, $node) = @_;
    my ($rc, $out);
    my $cmd = "$self->{binary} -p $node->{dir} -c $node->{dir}/nginx.conf";
    for my $try (1 .. 30) {
        $out = `$cmd 2>&1`;
        $rc = $?;
        last if $rc == 0 || $out !~ /Address already in use/;
        sleep 0.5;
    }
    die "nginx $node->{name} did not start: $out" . $self->error_log($node)
        if $rc != 0;
    _wait_port($node->{port}, 1);
    $node->{running} = 1;
    $self->wait_workers;
}

sub pid {
    my ($self, $node) = @_;
    open my $fh, '<', "$node->{dir}/logs/nginx.pid" or return;
    my $pid = <$fh>;
    close $fh;
    chomp $pid;
    return $pid;
}

sub stop {
    my ($self, $node) = @_;
    my $pid = $self->pid($node) or return;
    $node->{running} = 0;
    kill 'QUIT', $pid;
    for (1 .. 100) {
        last unless kill 0, $pid;
        sleep 0.1;
    }
    kill 'KILL', $pid if kill 0, $pid;
    _wait_port($node->{port}, 0);
}

# the worker processes of a master, by pid
sub workers {
    my ($self, $master) = @_;
    my @pids;
    opendir my $dh, '/proc' or return;
    for my $pid (grep { /^\d+$/ } readdir $dh) {
        open my $fh, '<', "/proc/$pid/stat" or next;
        my $stat = <$fh>;
        close $fh;
        # pid (comm) state ppid ...
        push @pids, $pid if $stat && $stat =~ /\) \S+ (\d+) / && $1 == $master;
    }
    closedir $dh;
    return @pids;
}

# the old workers have exited and the new ones reach Redis
sub reload {
    my ($self, $node) = @_;
    my $pid = $self->pid($node) or die "no pid for $node->{name}";
    my @old = $self->workers($pid);
    kill 'HUP', $pid;
    my $t0 = time;
    while (time - $t0 < 20 * $self->{slow}) {
        my %now = map { $_ => 1 } $self->workers($pid);
        last if !grep { $now{$_} } @old and keys %now;
        sleep 0.05;
    }
    $self->wait_workers;
}

# true while redis-server is stopped by SIGSTOP (a test freezes it)
sub redis_frozen {
    my ($self) = @_;
    my $pid = $self->{redis_pid} or return 0;
    open my $fh, '<', "/proc/$pid/stat" or return 0;
    my $stat = <$fh>;
    close $fh;
    return $stat =~ /\) T /;
}

# Waits (10 s at most) until Redis has a connection past its set-up for
# each worker of the running nodes: its last command is a script (the
# poll every worker sends as soon as it is connected) or a command of
# the cache, not AUTH, SELECT, SCRIPT LOAD or the PING behind them.
# Nothing to wait for while Redis is stopped or frozen.
sub wait_workers {
    my ($self) = @_;
    return unless $self->{redis_pid} && !$self->redis_frozen;
    my $want = 2 * grep { $_->{running} } values %{ $self->{nodes} };
    my $t0 = time;
    while (time - $t0 < 10 * $self->{slow}) {
        my $list = $self->redis_cli('CLIENT', 'LIST') // '';
        my $up = grep {
            /\bcmd=(\S+)/
            && $1 !~ /^(?:NULL|auth|select|script\|load|ping|client\|list)$/
        } split /\n/, $list;
        return if $up >= $want;
        sleep 0.05;
    }
}

sub error_log {
    my ($self, $node) = @_;
    open my $fh, '<', "$node->{dir}/logs/error.log" or return '';
    local $/;
    my $log = <$fh>;
    close $fh;
    return $log;
}



sub shutdown {
    my ($self) = @_;
    for my $node (values %{ $self->{nodes} }) {
        eval { $self->stop($node) };
    }
    eval { $self->redis_stop };
}

# whatever happens to the suite, nothing it started outlives it
END {
    local $?;
    $_->shutdown for grep { defined } @Clusters;
}

sub _request {
    my ($method, $path, $body, @headers) = @_;
    return "$method $path HTTP/1.1\r\nHost: localhost\r\n"
           . "Connection: close\r\n"
           . join('', map { "$_\r\n" } @headers)
           . (defined $body
              ? "Content-Type: application/json\r\n"
                . 'Content-Length: ' . length($body) . "\r\n\r\n$body"
              : "\r\n");
}

# requests as [node, method, path, body, headers...], all sent before any
# answer is read; returns [status, body, headers] for each, in order
sub burst {
    my ($self, @reqs) = @_;
    my (@socks, %buf);
    for my $q (@reqs) {
        my ($node, @rest) = @$q;
        my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                         PeerPort => $node->{port},
                                         Proto => 'tcp', Timeout => 5)
            or die "cannot connect to $node->{port}: $!";
        push @socks, [$sock, _request(@rest)];
        $buf{$sock} = '';
    }
    $_->[0]->syswrite($_->[1]) for @socks;
    my $sel = IO::Select->new(map { $_->[0] } @socks);
    my $deadline = time + 30;
    while ($sel->count && time < $deadline) {
        for my $sock ($sel->can_read(1)) {
            my $got = $sock->sysread(my $chunk, 65536);
            if ($got) {
                $buf{$sock} .= $chunk;
            } else {
                $sel->remove($sock);
                $sock->close;
            }
        }
    }
    return [ map {
        my $raw = $buf{$_->[0]};
        my ($status) = $raw =~ m{^HTTP/1\.\d (\d+)};
        my ($head, $content) = split /\r\n\r\n/, $raw, 2;
        my %h;
        for (split /\r\n/, $head // '') {
            $h{lc $1} = $2 if /^([^:]+):\s*(.*)$/;
        }
        [ $status // 0, $content // '', \%h ]
    } @socks ];
}

sub http {
    my ($self, $node, @req) = @_;
    return @{ $self->burst([$node, @req])->[0] };
}

sub _wait_port {
    my ($port, $up) = @_;
    for (1 .. 300) {
        my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                         PeerPort => $port, Proto => 'tcp',
                                         Timeout => 1);
        close $sock if $sock;
        return if ($sock ? 1 : 0) == $up;
        sleep 0.05;
    }
    die "port $port still " . ($up ? 'closed' : 'open') . "\n";
}

1;
