package Test::Nginx::Util;

# Server side of the bundled Test::Nginx implementation: global settings,
# the server root layout, nginx.conf generation, starting and stopping
# nginx, and access to its log files.  Test::Nginx::Socket drives the test
# blocks on top of it.  Only loaded when the real Test::Nginx is missing
# (see t/compat/README).

use strict;
use warnings;

use Exporter 'import';
use File::Path qw(make_path remove_tree);
use File::Spec ();
use IO::Socket::INET ();
use POSIX qw(:sys_wait_h SIGQUIT SIGTERM SIGKILL);
use Time::HiRes qw(sleep time);
use Test::More ();

our $VERSION = '0.29';

our @EXPORT = qw(
    $ServerAddr $ServerName $ServerPort $ServerPortForClient $NoLongString
    $RepeatEach $NginxVersion $NginxRawVersion $OpenSSLVersion
    $ServRoot $HtmlDir $LogDir $ConfDir $ConfFile $PidFile $ErrLogFile
    $AccLogFile $UseValgrind
    env_to_nginx no_long_string repeat_each worker_connections workers
    master_on master_off master_process_enabled log_level no_shuffle
    no_root_location check_accum_error_log config_preamble timeout
    server_addr server_name server_port server_port_for_client html_dir
    server_root add_block_preprocessor add_cleanup_handler bail_out
    sleep_time verbose parse_time use_hup no_nginx_manager
);

# ---------------------------------------------------------------------------
# Settings (environment first, then the exported setters)
# ---------------------------------------------------------------------------

our $Verbose              = $ENV{TEST_NGINX_VERBOSE};
our $NginxBinary          = $ENV{TEST_NGINX_BINARY} || 'nginx';
our $Workers              = 1;
our $WorkerConnections    = 64;
our $LogLevel             = $ENV{TEST_NGINX_LOG_LEVEL} || 'debug';
our $MasterProcessEnabled = $ENV{TEST_NGINX_MASTER_PROCESS} || 'off';
our $ServerAddr           = '127.0.0.1';
our $ServerName           = 'localhost';
our $ServerPort           = $ENV{TEST_NGINX_SERVER_PORT}
                            || $ENV{TEST_NGINX_PORT} || 1984;
our $Timeout              = $ENV{TEST_NGINX_TIMEOUT} || 3;
our $TestNginxSleep       = $ENV{TEST_NGINX_SLEEP} || 0.015;
our $RepeatEach           = 1;
our $NoShuffle            = $ENV{TEST_NGINX_NO_SHUFFLE} || 0;
our $NoRootLocation       = 0;
our $NoLongString;
our $CheckAccumErrLog     = $ENV{TEST_NGINX_CHECK_ACCUM_ERR_LOG};
our $UseValgrind          = $ENV{TEST_NGINX_USE_VALGRIND};
our $LoadModules          = $ENV{TEST_NGINX_LOAD_MODULES};
our $PostponeOutput       = $ENV{TEST_NGINX_POSTPONE_OUTPUT};
our $EventType            = $ENV{TEST_NGINX_EVENT_TYPE};
our $WorkerUser           = $ENV{TEST_NGINX_WORKER_USER};
our $Randomize            = $ENV{TEST_NGINX_RANDOMIZE};
our $ForceRestartOnTest   = defined $ENV{TEST_NGINX_FORCE_RESTART_ON_TEST}
                            ? $ENV{TEST_NGINX_FORCE_RESTART_ON_TEST} : 1;
our $ConfigPreamble       = '';
our @EnvToNginx;
our @BlockPreprocessors;
our @CleanupHandlers;

if (defined $WorkerUser && $WorkerUser !~ /^\w+(?:\s+\w+)?$/) {
    die "Bad value in the env TEST_NGINX_WORKER_USER: $WorkerUser\n";
}

if ($Randomize) {
    $ServerPort = gen_rand_port({})
        or die "Cannot find a free port for TEST_NGINX_RANDOMIZE\n";
}

our $ServerPortForClient = $ENV{TEST_NGINX_CLIENT_PORT} || $ServerPort;

# Modes of the real Test::Nginx that this implementation does not have.
# They are refused loudly rather than silently running in the plain mode.
our @UnsupportedModes = qw(
    TEST_NGINX_USE_HUP TEST_NGINX_USE_HTTP2 TEST_NGINX_USE_HTTP3
    TEST_NGINX_USE_STAP TEST_NGINX_CHECK_LEAK TEST_NGINX_BENCHMARK
    TEST_NGINX_NO_NGINX_MANAGER TEST_NGINX_USE_RR
);

# ---------------------------------------------------------------------------
# Server root layout
# ---------------------------------------------------------------------------

our $ServRoot = $Randomize
    ? File::Spec->rel2abs("t/servroot_$ServerPort")
    : ($ENV{TEST_NGINX_SERVROOT} || File::Spec->rel2abs('t/servroot'));
$ServRoot =~ s{/+$}{};

our $LogDir     = "$ServRoot/logs";
our $ErrLogFile = "$LogDir/error.log";
our $AccLogFile = "$LogDir/access.log";
our $HtmlDir    = "$ServRoot/html";
our $ConfDir    = "$ServRoot/conf";
our $ConfFile   = "$ConfDir/nginx.conf";
our $PidFile    = "$LogDir/nginx.pid";

# nginx's own stderr during start-up (config errors and warnings).
our $StartupErrFile = "$LogDir/nginx-stderr.log";

$ENV{TEST_NGINX_SERVER_ROOT} = $ServRoot;

# Convenience beyond the real tool, which leaves this to the test files
# ($ENV{TEST_NGINX_HTML_DIR} ||= html_dir(); keeps a file portable).
$ENV{TEST_NGINX_HTML_DIR} ||= $HtmlDir;

# ---------------------------------------------------------------------------
# Run-time state
# ---------------------------------------------------------------------------

our ($NginxVersion, $NginxRawVersion, $OpenSSLVersion, $NginxBuildInfo);
our $ChildPid;          # nginx kept in the foreground (valgrind mode)
our $ChildIsValgrind;
our $ErrLogFilePos = 0;
our $InSubprocess;
our $CurrentName = '';  # name of the block owning the running nginx

# A daemonized nginx is re-parented away from us; becoming a child
# subreaper lets us reap it, instead of leaving zombies behind when the
# init process of a container does not.
eval {
    local $SIG{__WARN__} = sub {};
    require 'syscall.ph';
    syscall(&SYS_prctl, 36, 1, 0, 0, 0);   # PR_SET_CHILD_SUBREAPER
};

# ---------------------------------------------------------------------------
# Exported setters and getters
# ---------------------------------------------------------------------------

sub env_to_nginx (@) {
    die "env_to_nginx: no arguments specified\n" unless @_;
    for my $v (@_) {
        die "env_to_nginx: bad argument value: $v\n"
            if $v !~ /^[A-Za-z_]/ || $v =~ /\n/;
        push @EnvToNginx, $v;
    }
}

sub no_long_string ()        { $NoLongString = 1 }
sub no_shuffle ()            { $NoShuffle = 1 }
sub no_root_location ()      { $NoRootLocation = 1 }
sub check_accum_error_log () { $CheckAccumErrLog = 1 }
sub master_on ()             { $MasterProcessEnabled = 'on' }
sub master_off ()            { $MasterProcessEnabled = 'off' }
sub config_preamble ($)      { $ConfigPreamble = shift }
sub html_dir ()              { $HtmlDir }
sub server_root ()           { $ServRoot }
sub sleep_time               { $TestNginxSleep }
sub verbose                  { $Verbose }

# getters that set when given a value
sub repeat_each (@)        { $RepeatEach = shift if @_;        $RepeatEach }
sub worker_connections (@) { $WorkerConnections = shift if @_; $WorkerConnections }
sub workers (@)            { $Workers = shift if @_;           $Workers }
sub log_level (@)          { $LogLevel = shift if @_;          $LogLevel }
sub timeout (@)            { $Timeout = shift if @_;           $Timeout }
sub server_addr (@)        { $ServerAddr = shift if @_;        $ServerAddr }
sub server_name (@)        { $ServerName = shift if @_;        $ServerName }
sub server_port (@)        { $ServerPort = shift if @_;        $ServerPort }

sub server_port_for_client (@) {
    $ServerPortForClient = shift if @_;
    $ServerPortForClient;
}

sub master_process_enabled (@) {
    $MasterProcessEnabled = shift() ? 'on' : 'off' if @_;
    $MasterProcessEnabled;
}

sub add_block_preprocessor (&) { unshift @BlockPreprocessors, shift }
sub add_cleanup_handler ($)    { unshift @CleanupHandlers, shift }

# Present so that files calling them still compile; the modes themselves
# are not implemented.
sub use_hup () {
    bail_out("use_hup(): the HUP reload mode is not supported by the "
             . "bundled Test::Nginx");
}

sub no_nginx_manager () {
    bail_out("no_nginx_manager(): not supported by the bundled Test::Nginx");
}

# "50ms" -> 0.05, "2s"/"2" -> 2
sub parse_time ($) {
    my $t = shift;
    return $t unless defined $t;
    if ($t =~ s/([^_a-zA-Z])ms$/$1/) {
        return $t / 1000;
    }
    $t =~ s/([^_a-zA-Z])s$/$1/;
    return $t;
}

# ---------------------------------------------------------------------------
# Aborting and cleaning up
# ---------------------------------------------------------------------------

sub cleanup {
    $_->() for @CleanupHandlers;
    # a foreground (valgrind) nginx is ours to stop, with its report
    stop_nginx('cleanup') if defined $ChildPid;
}

sub bail_out (@) {
    cleanup();
    # Trips Test::Base's __DIE__ hook so that its END block does not run
    # an implicit run_compare() on our sections while we exit.
    { local $@; eval { die "bail out\n" }; }
    Test::More::BAIL_OUT(join '', @_);
}

# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------

sub is_running {
    my $pid = shift;
    return 0 unless $pid;

    # Reap it if it is ours (foreground nginx, or a re-parented daemon).
    return 0 if waitpid($pid, WNOHANG) == $pid;
    return 0 unless kill 0, $pid;

    # An exited process nobody reaped still answers kill 0.
    if (open my $in, '<', "/proc/$pid/stat") {
        my $stat = <$in> // '';
        close $in;
        return 0 if $stat =~ /^\d+ \(.*\) [ZX] /s;
    }
    return 1;
}

# Graceful QUIT first, then TERM, then KILL; waits up to $grace seconds
# for the graceful part.
sub kill_process {
    my ($pid, $name, $grace) = @_;
    return unless is_running($pid);

    $grace //= timeout();
    warn "$name - sending QUIT to $pid\n" if $Verbose;
    kill SIGQUIT, $pid;

    my $deadline = time + $grace;
    while (time < $deadline) {
        return unless is_running($pid);
        sleep 0.005;
    }

    warn "$name - process $pid did not quit within ${grace}s, "
         . "sending TERM\n";
    for (1 .. 20) {
        kill SIGTERM, $pid;
        sleep 0.05;
        return unless is_running($pid);
    }

    warn "$name - killing process $pid with force\n";
    kill SIGKILL, $pid;
    for (1 .. 100) {
        return unless is_running($pid);
        sleep 0.01;
    }
}

sub read_pid_file {
    open my $in, '<', $PidFile or return undef;
    my $pid = do { local $/; <$in> };
    close $in;
    return undef unless defined $pid && $pid =~ /^\s*(\d+)\s*$/;
    return $1;
}

# Stops whatever nginx belongs to the server root.  In valgrind mode the
# memcheck report of the stopped process is turned into test results.
sub stop_nginx {
    my $name = shift;

    my $pid = read_pid_file();
    if ($pid && is_running($pid)) {
        kill_process($pid, $name, $ChildIsValgrind ? 60 : undef);
    }
    unlink $PidFile if -f $PidFile;

    if (defined $ChildPid) {
        kill_process($ChildPid, $name, $ChildIsValgrind ? 60 : undef);
        waitpid($ChildPid, 0);
        undef $ChildPid;
        check_valgrind_report($CurrentName) if $ChildIsValgrind;
    }
    undef $ChildIsValgrind;
}

sub nginx_is_running {
    return 1 if defined $ChildPid && is_running($ChildPid);
    my $pid = read_pid_file();
    return $pid && is_running($pid);
}

sub gen_rand_port {
    my $used = shift;
    for (1 .. 1000) {
        my $port = int(rand 63550) + 1985;
        next if $used->{$port} || $port == $ServerPort;
        my $sock = IO::Socket::INET->new(
            LocalAddr => $ServerAddr,
            LocalPort => $port,
            Proto     => 'tcp',
        ) or next;
        close $sock;
        return $port;
    }
    return undef;
}

sub sh_quote {
    my $s = shift;
    $s =~ s/'/'\\''/g;
    return "'$s'";
}

sub can_run {
    my $cmd = shift;
    return (-f $cmd && -x _) ? $cmd : undef if $cmd =~ m{/};
    for my $dir (split /:/, $ENV{PATH} // '') {
        next if $dir eq '';
        return "$dir/$cmd" if -f "$dir/$cmd" && -x _;
    }
    return undef;
}

sub canon_version {
    my ($maj, $min, $patch, $letter) = @_;
    my $v = sprintf "%d.%03d%03d", $maj, $min, $patch;
    $v .= sprintf "%03d", ord($letter) - ord('a') if defined $letter;
    return $v;
}

sub get_nginx_version {
    return $NginxVersion if defined $NginxVersion;

    if (!can_run($NginxBinary)) {
        bail_out("Cannot find the nginx executable \"$NginxBinary\" "
                 . "(set TEST_NGINX_BINARY or PATH)");
    }
    my $out = `@{[sh_quote($NginxBinary)]} -V 2>&1`;
    if ($? != 0) {
        bail_out("Failed to run \"$NginxBinary -V\": " . ($out // ''));
    }
    $NginxBuildInfo = $out;

    if ($out =~ m{built with OpenSSL (\d+)\.(\d+)\.(\d+)([a-z])?}) {
        $OpenSSLVersion = canon_version($1, $2, $3, $4);
    }
    if ($out =~ m{(?:nginx|openresty)[^/]*/(\d+)\.(\d+)\.(\d+)}s
        || $out =~ m{\w+/(\d+)\.(\d+)\.(\d+)}s)
    {
        $NginxRawVersion = "$1.$2.$3";
        return $NginxVersion = canon_version($1, $2, $3);
    }
    bail_out("Failed to parse the output of \"$NginxBinary -V\": $out");
}

# ---------------------------------------------------------------------------
# Server root, user files, nginx.conf
# ---------------------------------------------------------------------------

sub setup_server_root {
    # Only remove what this runner creates, so that a mistaken
    # TEST_NGINX_SERVROOT cannot wipe unrelated data.
    if (-d $ServRoot) {
        remove_tree($ConfDir, $HtmlDir, $LogDir,
                    glob("$ServRoot/*_temp"), glob("$ServRoot/*_cache"));
    }
    for my $dir ($ServRoot, $LogDir, $HtmlDir, $ConfDir) {
        next if -d $dir;
        make_path($dir) or bail_out("Failed to create directory $dir: $!");
    }

    my $index = "$HtmlDir/index.html";
    open my $out, '>', $index
        or bail_out("Can't open $index for writing: $!");
    print $out '<html><head><title>It works!</title></head>'
               . '<body>It works!</body></html>';
    close $out;
}

# Replaces $TEST_NGINX_* references by environment values; the special
# $TEST_NGINX_RAND_PORT_<N> names get a free port, stable within a block.
sub expand_env_in_text {
    my ($text, $name, $rand_ports) = @_;
    return $text unless defined $text;

    $text =~ s{\$(TEST_NGINX_[_A-Z0-9]+)}{
        my $var = $1;
        my $val;
        if ($var =~ /^TEST_NGINX_RAND_PORT_[0-9]+$/) {
            $val = $rand_ports->{$var} //= do {
                my %used = map { $_ => 1 } grep { defined } values %$rand_ports;
                gen_rand_port(\%used) // bail_out(
                    "$name - Cannot find an available port for $var");
            };
        } else {
            $val = $ENV{$var};
            bail_out("$name - No environment $var defined.") unless defined $val;
        }
        $val;
    }ge;

    return $text;
}

sub write_user_files {
    my ($block, $rand_ports) = @_;
    my $name  = $block->name;
    my $files = $block->user_files;
    return unless $files;

    if (!ref $files) {
        # ">>> path [touch -t stamp]" starts each file
        my @list;
        for my $line (split /^/m, $files) {
            if ($line =~ /^>>> (\S+)(?:\s+(.+?))?\s*$/) {
                push @list, [$1, undef, $2];
            } elsif (@list) {
                $list[-1][1] .= $line;
            }
        }
        $files = \@list;
    } elsif (ref $files ne 'ARRAY') {
        bail_out("$name - --- user_files must be a string or an ARRAY "
                 . "reference, got " . ref $files);
    }

    for my $file (@$files) {
        my ($fname, $body, $date) = @$file;
        $body //= '';
        my $path = $fname =~ m{^/} ? $fname : "$HtmlDir/$fname";
        if ($path =~ m{^(.*)/} && !-d $1) {
            make_path($1) or bail_out("$name - Cannot create directory $1");
        }

        $body = expand_env_in_text($body, $name, $rand_ports);

        open my $out, '>', $path
            or bail_out("$name - Cannot open $path for writing: $!");
        binmode $out;
        print $out $body;
        close $out;

        if ($date) {
            local $ENV{TZ} = 'GMT';
            system('touch', '-t', $date, $path) == 0
                or bail_out("$name - Failed to set the mtime of $path to $date");
        }
    }
}

# The Debian nginx package compiles absolute temp paths under
# /var/lib/nginx; redirect them into the server root unless the test
# configures them itself.
sub temp_path_directives {
    my $http_config = shift;
    get_nginx_version();

    my %module = (
        'client-body' => undef,
        proxy   => 'http_proxy',
        fastcgi => 'http_fastcgi',
        uwsgi   => 'http_uwsgi',
        scgi    => 'http_scgi',
    );

    my $out = '';
    for my $kind (sort keys %module) {
        next unless $NginxBuildInfo =~ /--http-\Q$kind\E-temp-path=/;
        my $mod = $module{$kind};
        next if $mod && $NginxBuildInfo =~ /--without-\Q$mod\E_module\b/;
        (my $directive = $kind) =~ tr/-/_/;
        $directive .= '_temp_path';
        next if $http_config =~ /\b\Q$directive\E\b/;
        (my $dir = $directive) =~ s/_path$//;
        $out .= "    $directive $ServRoot/$dir;\n";
    }
    return $out;
}

sub write_config_file {
    my ($block, $config, $rand_ports, $daemon) = @_;

    my $name         = $block->name;
    my $http_config  = expand_env_in_text(scalar($block->http_config), $name,
                                          $rand_ports) // '';
    my $main_config  = $block->main_config // '';
    my $post_main    = expand_env_in_text(scalar($block->post_main_config),
                                          $name, $rand_ports) // '';
    my $err_log_file = $block->error_log_file || $ErrLogFile;
    my $server_name  = $block->server_name // $ServerName;
    $config //= '';

    if ($LoadModules) {
        # ahead of main_config, which may use the modules' directives
        $main_config = join('', map { "load_module $_;\n" }
                                grep { length } split /\s+/, $LoadModules)
                       . $main_config;
    }
    $main_config = expand_env_in_text($main_config, $name, $rand_ports);

    my $extra_http = '';
    if (defined $PostponeOutput && $http_config !~ /\bpostpone_output\b/) {
        bail_out("Bad TEST_NGINX_POSTPONE_OUTPUT value: $PostponeOutput")
            if $PostponeOutput !~ /^\d+$/;
        $extra_http .= "    postpone_output $PostponeOutput;\n";
    }
    $extra_http .= temp_path_directives($http_config);

    (my $quoted_name = $server_name) =~ s/(['\\])/\\$1/g;

    my $env = '';
    for my $v (qw(LD_PRELOAD LD_LIBRARY_PATH ASAN_OPTIONS MOCKEAGAIN
                  MOCKEAGAIN_VERBOSE MOCKEAGAIN_WRITE_TIMEOUT_PATTERN
                  MOCKNOEAGAIN MOCKNOEAGAIN_VERBOSE), @EnvToNginx)
    {
        $env .= $v =~ /\s/ ? "env '$v';\n" : "env $v;\n";
    }

    my $root_location = $NoRootLocation ? '' : <<"_EOC_";
        location / {
            root $HtmlDir;
            index index.html index.htm;
        }
_EOC_

    my $events_use = $EventType ? "    use $EventType;\n" : '';

    my $user = '';
    if (defined $WorkerUser) {
        $user = "user $WorkerUser;\n";
    } elsif ($> == 0) {
        $user = "user root;\n";
    }

    open my $out, '>', $ConfFile
        or bail_out("Can't open $ConfFile for writing: $!");
    print $out <<"_EOC_";
# Generated by t/compat/Test/Nginx/Util.pm for: $name
worker_processes  $Workers;
daemon $daemon;
master_process $MasterProcessEnabled;
error_log $err_log_file $LogLevel;
pid       $PidFile;
$env
$main_config

http {
    access_log $AccLogFile;

    default_type text/plain;
    keepalive_timeout  68;
$extra_http
$http_config

    server {
        listen          $ServerPort;
        server_name     '$quoted_name';

        client_max_body_size 30M;

        # Begin preamble config...
$ConfigPreamble
        # End preamble config...

        # Begin test case config...
$config
        # End test case config.

$root_location    }
}

$post_main

events {
    accept_mutex off;

    worker_connections  $WorkerConnections;
$events_use}

$user
_EOC_
    close $out;
}

# ---------------------------------------------------------------------------
# Starting nginx
# ---------------------------------------------------------------------------

# nginx core false positives, shipped next to this module's tree
our $CompatSuppressions = do {
    (my $dir = __FILE__) =~ s{/?[^/]+$}{};
    File::Spec->rel2abs(($dir eq '' ? '.' : $dir) . '/../../valgrind.suppress');
};

sub valgrind_command {
    my @cmd = ('valgrind', '-q');
    if ($UseValgrind =~ /^\d+$/) {
        push @cmd, qw(--tool=memcheck --leak-check=full
                      --show-possibly-lost=no --num-callers=100
                      --gen-suppressions=all);
        push @cmd, '--suppressions=valgrind.suppress'
            if -f 'valgrind.suppress';
    } else {
        push @cmd, split ' ', $UseValgrind;
    }
    push @cmd, "--suppressions=$CompatSuppressions" if -f $CompatSuppressions;
    push @cmd, "--log-file=$LogDir/valgrind.%p.log"
        unless grep { /^--log-(?:file|fd|socket)=/ } @cmd;
    return @cmd;
}

# Runs nginx against the current nginx.conf.  With $foreground (valgrind
# mode) it stays our child and we return at once; otherwise we wait for
# the launcher to exit (daemon on) and report how it ended.
sub launch_nginx {
    my ($name, $foreground) = @_;

    my @cmd = ($NginxBinary, '-p', "$ServRoot/", '-c', $ConfFile);
    unshift @cmd, valgrind_command() if $foreground && $UseValgrind;
    warn "$name - starting: @cmd\n" if $Verbose;

    my $pid = fork;
    bail_out("$name - fork() failed: $!") unless defined $pid;

    if ($pid == 0) {
        $InSubprocess = 1;
        setpgrp(0, 0) if $foreground;
        open STDIN,  '<', '/dev/null';
        open STDOUT, '>', '/dev/null';
        open STDERR, '>>', $StartupErrFile;
        { no warnings 'exec'; exec { $cmd[0] } @cmd; }
        POSIX::_exit(127);
    }

    $CurrentName = $name;

    if ($foreground) {
        $ChildPid = $pid;
        $ChildIsValgrind = $UseValgrind ? 1 : undef;
        sleep $TestNginxSleep;
        return { status => 0, pid => $pid };
    }

    waitpid($pid, 0);
    my $status = $?;
    my $result = {
        status      => $status,
        pid         => $pid,
        exit_code   => $status >> 8,
        signal      => $status & 127,
        coredump    => $status & 128,
        exec_failed => ($status >> 8) == 127,
    };

    if ($status == 0) {
        # The launcher exits right after forking the daemon, which writes
        # the pid file a moment later; wait so it can be stopped reliably.
        for (1 .. 200) {
            last if read_pid_file();
            sleep 0.005;
        }
    }
    merge_startup_stderr($pid);
    return $result;
}

# Appends what nginx printed on stderr while starting to error.log, in
# error.log's own line format.  With a stock build (error log compiled as
# logs/error.log under the prefix) those lines land in error.log directly;
# the Debian build sends them to stderr instead.
sub merge_startup_stderr {
    my $pid = shift // 0;
    return unless -e $StartupErrFile;
    if (!-s _) {
        unlink $StartupErrFile;
        return;
    }

    open my $in, '<', $StartupErrFile or return;
    my @lines = <$in>;
    close $in;
    unlink $StartupErrFile;

    my @t = localtime;
    my $stamp = sprintf "%04d/%02d/%02d %02d:%02d:%02d",
                        $t[5] + 1900, $t[4] + 1, @t[3, 2, 1, 0];
    s/^nginx: \[(\w+)\] /$stamp [$1] $pid#$pid: / for @lines;

    open my $out, '>>', $ErrLogFile or return;
    print $out @lines;
    close $out;
}

# ---------------------------------------------------------------------------
# Logs
# ---------------------------------------------------------------------------

# Lines of error.log written since the previous call (all of them with
# check_accum_error_log).
sub error_log_data {
    # leave time for log-phase output written after the response
    sleep $TestNginxSleep * 3;
    merge_startup_stderr();

    open my $in, '<', $ErrLogFile or return [];
    seek $in, $ErrLogFilePos, 0 if !$CheckAccumErrLog && $ErrLogFilePos > 0;
    my @lines = <$in>;
    $ErrLogFilePos = tell $in unless $CheckAccumErrLog;
    close $in;
    return \@lines;
}

sub access_log_data {
    sleep $TestNginxSleep * 3;
    open my $in, '<', $AccLogFile or return [];
    my @lines = <$in>;
    close $in;
    return \@lines;
}

# Memcheck output of the processes that just exited becomes a failing test.
sub check_valgrind_report {
    my $name = shift;
    my @files = glob("$LogDir/valgrind.*.log");
    my $report = '';
    for my $file (@files) {
        open my $in, '<', $file or next;
        my $data = do { local $/; <$in> };
        close $in;
        $report .= $data if defined $data && $data =~ /\S/;
    }
    unlink @files;
    return unless $report =~ /\S/;

    my @lines = split /\n/, $report;
    my $more = @lines > 400 ? "\n... (" . (@lines - 400) . " more lines)" : '';
    splice @lines, 400 if @lines > 400;
    Test::More::fail("$name - valgrind reported memory errors");
    Test::More::diag(join("\n", @lines) . $more);
}

END {
    return if $InSubprocess;
    local $?;
    cleanup();
    if ($UseValgrind || !$ENV{TEST_NGINX_NO_CLEAN}) {
        stop_nginx('END');
    }
    Test::Nginx::Socket::check_shutdown_error_log_of_prev_block()
        if defined &Test::Nginx::Socket::check_shutdown_error_log_of_prev_block;
    if ($Randomize && -d $ServRoot && $ServRoot =~ m{/t/servroot_\d+$}) {
        remove_tree($ServRoot);
    }
}

1;
