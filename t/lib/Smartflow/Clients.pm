package Smartflow::Clients;

# The harness of the client SDK suites in t/clients: a gateway of their own
# (nginx with the four modules, started as a child process), one node test
# file run with node's test runner, and the checks every suite ends with.
#
#     use FindBin ();
#     use lib "$FindBin::Bin/../lib";
#     use Smartflow::Clients;
#
#     my $gw = Smartflow::Clients->new(
#         servroot => 't/servroot-clients',        # relative to the checkout
#         port     => $ENV{SMARTFLOW_CLIENTS_PORT} || 1986,
#         port_var => 'SMARTFLOW_CLIENTS_PORT',    # named when the port is taken
#         mock     => 1,                           # start Smartflow::Mock
#         packages => ['openai'],                  # needed in t/clients/node_modules
#         conf     => ['smartflow_proxy.conf']);   # needed in the conf directory
#
#     $gw->start(<<"HTTP");          # the contents of nginx.conf's http block
#         ...
#         server { listen 127.0.0.1:$gw->{port}; ... }
#     HTTP
#     $gw->run_node('openai.test.mjs', env => { ... }, unset => [ ... ]);
#     my $log = $gw->check_error_log;     # stops nginx first
#     my @records = $gw->audit_records;   # logs/audit.log, one hash a line
#
# new() changes to the top of the checkout, checks the prerequisites (Node.js
# 20 or later, the npm packages, installed with "npm ci" when missing, the
# modules, the nginx binary, the shipped conf files, a free port; BAIL_OUT
# otherwise) and empties <servroot>/{conf,logs,tmp}.  With mock => 1 the mock
# provider is started with its log in the servroot.  Its fields: top, here
# (t/clients), servroot, modules, conf_dir, nginx, port, mock_port.
#
# start() writes conf/nginx.conf around the given http block (load_module
# lines, one worker unless workers => N, no daemon, logs/error.log at info,
# the access log and the temp paths) and waits until nginx listens.
#
# run_node() runs t/clients/FILE with "node --test --test-reporter=tap" and
# reports each of node's top-level tests as one test here (SKIP and TODO
# kept, node's explanation as diag on failure), then checks that node ran
# every test and that its exit status matches the results.
#
# check_error_log() stops nginx and checks that its error log holds no
# [alert], [crit] or [emerg] line and that no worker died on a signal; it
# returns the log.  $gw->error_log_like($log, qr/.../, $name) checks for one
# more line in it.  nginx and a running node are stopped at exit in any case.
#
# $gw->shipped_locations returns conf/smartflow_locations.conf with its
# includes made absolute, indented for a server block.  closed_port(),
# listening($port), slurp($file) and spew($file, $data) are exported on
# request.

use strict;
use warnings;

use Cwd ();
use Exporter 'import';
use File::Basename ();
use File::Path ();
use File::Spec;
use IO::Socket::INET;
use JSON::PP ();
use POSIX ();
use Smartflow::Conf;
use Smartflow::Mock ();     # loaded, not started: new(mock => 1) starts it
use Test::More ();

our $VERSION = '0.01';

our @EXPORT_OK = qw(closed_port listening slurp spew);

my $Top = Cwd::abs_path(File::Basename::dirname(Cwd::abs_path(__FILE__))
                        . '/../../..');

my $NginxPid;     # the gateway's master process
my $NodePid;      # the test runner, while it runs

END {
    my $status = $?;
    kill 'KILL', $NodePid if $NodePid;
    _stop_nginx();
    $? = $status;
}

sub _sleep { select(undef, undef, undef, $_[0]) }

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

sub new {
    my ($class, %arg) = @_;
    my $self = bless {
        top      => $Top,
        here     => "$Top/t/clients",
        servroot => "$Top/$arg{servroot}",
        modules  => $ENV{TEST_NGINX_MODULES} || "$Top/build/modules",
        conf_dir => $ENV{TEST_NGINX_SMARTFLOW_CONF} || "$Top/conf",
        nginx    => $ENV{TEST_NGINX_BINARY} || '/usr/sbin/nginx',
        port     => $arg{port},
    }, $class;

    chdir $Top or die "cannot chdir to $Top: $!\n";
    $SIG{$_} = sub { die "interrupted by SIG$_[0]\n" } for qw(INT TERM HUP);

    $self->_prerequisites($arg{port_var}, $arg{packages} || [],
                          $arg{conf} || []);

    my $sr = $self->{servroot};
    File::Path::remove_tree("$sr/conf", "$sr/logs", "$sr/tmp");
    File::Path::make_path("$sr/conf", "$sr/logs", "$sr/tmp");

    if ($arg{mock}) {
        # the mock provider keeps its log next to the gateway's
        $ENV{TEST_NGINX_SERVROOT} = $sr;
        Smartflow::Mock::start();
        $self->{mock_port} = Smartflow::Mock::port();
    }
    return $self;
}

sub _prerequisites {
    my ($self, $port_var, $packages, $conf) = @_;
    my $here = $self->{here};

    my $node_version = `node --version 2>/dev/null`;
    Test::More::BAIL_OUT('node is not installed; the client tests need Node.js 20 or later')
        unless defined $node_version && $node_version =~ /^v(\d+)/;
    Test::More::BAIL_OUT("Node.js $node_version is too old; 20 or later is needed")
        if $1 < 20;

    my @missing = grep { !-d "$here/node_modules/$_" } @$packages;
    if (@missing) {
        my $out = `cd '$here' && npm ci --no-audit --no-fund --loglevel=error 2>&1`;
        if ($? != 0 || grep { !-d "$here/node_modules/$_" } @$packages) {
            Test::More::diag($out);
            Test::More::BAIL_OUT("npm ci in t/clients failed");
        }
    }

    for my $m (qw(proxy policy cache audit)) {
        my $so = "$self->{modules}/ngx_http_smartflow_${m}_module.so";
        Test::More::BAIL_OUT("$so is missing; run make first") unless -f $so;
    }
    Test::More::BAIL_OUT("$self->{nginx} is not executable")
        unless -x $self->{nginx};
    for my $f (@$conf) {
        Test::More::BAIL_OUT("$self->{conf_dir}/$f is missing")
            unless -f "$self->{conf_dir}/$f";
    }
    Test::More::BAIL_OUT("port $self->{port} is already in use (set $port_var)")
        if listening($self->{port});
}

# The shipped server-level locations, their nested includes made absolute.
sub shipped_locations {
    my ($self) = @_;
    my $locations = Smartflow::Conf::shipped_locations($self->{conf_dir});
    $locations =~ s/^/        /mg;
    return $locations;
}

sub start {
    my ($self, $http, %opt) = @_;
    my ($sr, $modules, $port) = @$self{qw(servroot modules port)};
    my $workers = $opt{workers} || 1;
    my $user = $> == 0 ? "user root;\n" : '';
    my $script = File::Spec->abs2rel(Cwd::abs_path($0), $Top);
    my $load = join '', map { "load_module $modules/ngx_http_smartflow_${_}_module.so;\n" }
                            qw(proxy policy cache audit);

    spew("$sr/conf/nginx.conf", <<"CONF");
# written by $script
$load
${user}worker_processes $workers;
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

$http}
CONF

    my $pid = fork;
    Test::More::BAIL_OUT("fork failed: $!") unless defined $pid;
    if ($pid == 0) {
        open STDIN, '<', File::Spec->devnull;
        open STDOUT, '>>', "$sr/logs/nginx.out" or POSIX::_exit(127);
        open STDERR, '>&', \*STDOUT or POSIX::_exit(127);
        { no warnings 'exec'; exec $self->{nginx}, '-p', "$sr/", '-c', 'conf/nginx.conf' };
        print STDERR "cannot run $self->{nginx}: $!\n";
        POSIX::_exit(127);
    }
    $NginxPid = $pid;

    for (my $i = 0; !listening($port); $i++) {
        if (waitpid($pid, POSIX::WNOHANG()) == $pid) {
            undef $NginxPid;
            Test::More::diag(slurp("$sr/logs/nginx.out"));
            Test::More::diag(slurp("$sr/logs/error.log"));
            Test::More::BAIL_OUT("nginx exited with status " . ($? >> 8)
                                 . " before listening on port $port");
        }
        if ($i >= 200) {
            Test::More::diag(slurp("$sr/logs/error.log"));
            Test::More::BAIL_OUT("nginx did not listen on port $port within 10 s");
        }
        _sleep(0.05);
    }
}

sub _stop_nginx {
    return unless $NginxPid;
    my $pid = $NginxPid;
    undef $NginxPid;
    kill 'QUIT', $pid;              # graceful: workers finish, then exit
    for (1 .. 100) {
        my $r = waitpid($pid, POSIX::WNOHANG());
        return if $r == $pid || $r == -1;
        _sleep(0.05);
    }
    kill 'TERM', $pid;
    for (1 .. 40) {
        my $r = waitpid($pid, POSIX::WNOHANG());
        return if $r == $pid || $r == -1;
        _sleep(0.05);
    }
    kill 'KILL', $pid;
    waitpid($pid, 0);
}

# Runs t/clients/$file with %{$opt{env}} set and the variables named in
# @{$opt{unset}} removed (the SDKs read them; the tests name everything
# themselves).  Returns node's top-level results.
sub run_node {
    my ($self, $file, %opt) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my %env = (NODE_NO_WARNINGS => 1, %{ $opt{env} || {} });
    my @cmd = ('node', '--test', '--test-reporter=tap', '--test-timeout=60000',
               "$self->{here}/$file");

    my (@lines, $out);
    {
        local @ENV{keys %env} = values %env;
        delete local @ENV{ @{ $opt{unset} || [] } };

        $NodePid = open($out, '-|', @cmd)
            or Test::More::BAIL_OUT("cannot run node: $!");
        while (my $line = <$out>) {
            push @lines, $line;
        }
        close $out;
    }
    my $node_status = $?;
    undef $NodePid;

    # Top-level results of node's TAP output: "ok N - name" / "not ok N -
    # name", each followed by an indented YAML block that tells why a test
    # failed.
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

    my $tb = Test::More->builder;
    for my $r (@results) {
        if ($r->{directive} eq 'SKIP') {
            $tb->skip("$r->{name}: $r->{reason}");
            next;
        }
        if ($r->{directive} eq 'TODO') {
            $tb->todo_start($r->{reason} || 'todo');
            Test::More::ok($r->{ok}, $r->{name});
            $tb->todo_end;
            next;
        }
        Test::More::ok($r->{ok}, $r->{name}) or Test::More::diag($r->{detail});
    }

    Test::More::ok(@results > 0 && defined $plan && $plan == @results,
                   "node ran every test of $file")
        or Test::More::diag(join '', @lines);
    Test::More::is($node_status >> 8,
                   (grep { !$_->{ok} && $_->{directive} ne 'TODO' } @results) ? 1 : 0,
                   'node test runner exit status')
        or Test::More::diag(join '', @lines);
    return @results;
}

sub check_error_log {
    my ($self) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    _stop_nginx();
    my $log = slurp("$self->{servroot}/logs/error.log");
    my @bad = grep { /\[(?:alert|crit|emerg)\]|exited on signal/ } split /\n/, $log;
    Test::More::ok(!@bad, 'no [alert], [crit], [emerg] or crashed worker in error.log')
        or Test::More::diag(join "\n", @bad);
    return $log;
}

# A line the log must hold; the proxy module's lines are shown when it is
# missing.
sub error_log_like {
    my ($self, $log, $re, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    Test::More::ok($log =~ $re, $name)
        or Test::More::diag(join "\n", grep { /smartflow proxy/ } split /\n/, $log);
}

# logs/audit.log: checks that it is not empty and that every line is a JSON
# object, and returns those objects.
sub audit_records {
    my ($self) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my @audit = grep { length } split /\n/, slurp("$self->{servroot}/logs/audit.log");
    my @records = map { scalar eval { JSON::PP::decode_json($_) } } @audit;
    my @broken = map { $audit[$_] } grep { ref $records[$_] ne 'HASH' } 0 .. $#audit;
    Test::More::ok(@audit && !@broken, 'every audit log line is a JSON object')
        or Test::More::diag(@audit ? join "\n", @broken : 'audit.log is empty');
    return grep { ref eq 'HASH' } @records;
}

1;
