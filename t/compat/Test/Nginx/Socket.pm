package Test::Nginx::Socket;

# Bundled implementation of the data-driven test format of Perl's
# Test::Nginx::Socket, for machines where the real module is not installed
# (it is not packaged for Debian).  Test files are written for the real
# module and must keep running unchanged under it; t/compat/README lists
# what is supported here.
#
# Test blocks are parsed by Test::Base (this class is a Test::Base
# subclass, as the real one is), nginx is managed by Test::Nginx::Util, and
# requests go over plain non-blocking sockets.

use strict;
use warnings;

use Test::Base -base;

use Encode ();
use Digest::MD5 ();
use Digest::SHA ();
use Errno qw(EAGAIN EWOULDBLOCK EINTR ECONNREFUSED);
use HTTP::Response ();
use IO::Select ();
use IO::Socket::INET ();
use IO::Socket::UNIX ();
use List::Util qw(shuffle min);
use POSIX ();
use Scalar::Util qw(looks_like_number);
use Socket qw(SOCK_STREAM);
use File::Temp ();
use Time::HiRes qw(sleep time);

use Test::Nginx::Util;

our $VERSION = '0.29';

our @EXPORT = qw(
    env_to_nginx is_str plan run_tests run_test repeat_each config_preamble
    worker_connections master_process_enabled no_long_string workers
    master_on master_off log_level no_shuffle no_root_location server_name
    server_addr server_root html_dir server_port server_port_for_client
    timeout check_accum_error_log add_block_preprocessor bail_out
    add_cleanup_handler add_response_body_check use_hup no_nginx_manager
    $ServerPort $ServerPortForClient $ServerAddr $ServerName $NoLongString
);

# Section names that files may use beyond the known ones, for sections
# consumed by their own block preprocessors.  Setting it is harmless under
# the real module:  push @Test::Nginx::Socket::CustomSections, 'my_section';
our @CustomSections;

our @ResponseBodyChecks;

# Every section this implementation acts upon.  Anything else aborts the
# run instead of being silently ignored.
our %KnownSections = map { $_ => 1 } qw(
    ONLY SKIP LAST
    config http_config main_config post_main_config server_name
    error_log_file log_level user_files init
    request request_eval raw_request raw_request_middle_delay
    pipelined_requests more_headers shutdown abort timeout wait
    server_addr_for_client ignore_response http09
    error_code error_code_like
    response_body response_body_eval response_body_like response_body_unlike
    response_body_filters charset
    response_headers response_headers_like
    raw_response_headers_like raw_response_headers_unlike
    error_log no_error_log grep_error_log grep_error_log_out
    access_log no_access_log shutdown_error_log no_shutdown_error_log
    must_die skip_nginx skip_nginx2 skip_eval skip_openssl todo
    no_check_leak
    tcp_listen tcp_reply tcp_reply_delay tcp_query tcp_query_len tcp_no_close
);

our $PrevConfig;
our $PrevBlock;
our $TotalConnectFailures = 0;

sub add_response_body_check ($) {
    push @ResponseBodyChecks, shift;
}

# String comparison honouring no_long_string() and Regexp expectations.
# Differing multi-line strings get a unified diff, standing in for the
# Test::LongString output of the real module.
sub is_str (@) {
    my ($got, $expected, $desc) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;

    if (ref $expected && ref $expected eq 'Regexp') {
        return Test::More::like($got, $expected, $desc);
    }

    if ($NoLongString || !defined $got || !defined $expected
        || $got eq $expected
        || ($got !~ /\n./s && $expected !~ /\n./s
            && length($got) < 200 && length($expected) < 200))
    {
        return Test::More::is($got, $expected, $desc);
    }

    my $ok = Test::More::ok(0, $desc);
    my $i = 0;
    $i++ while $i < length($got) && $i < length($expected)
               && substr($got, $i, 1) eq substr($expected, $i, 1);
    Test::More::diag(sprintf "strings differ at offset %d (got %d chars, "
                     . "expected %d)", $i, length $got, length $expected);
    require Text::Diff;
    Test::More::diag(Text::Diff::diff(\$expected, \$got,
                     { STYLE => 'Unified', FILENAME_A => 'expected',
                       FILENAME_B => 'got' }));
    return $ok;
}

# ---------------------------------------------------------------------------
# Driving the blocks
# ---------------------------------------------------------------------------

sub check_environment {
    for my $var (@Test::Nginx::Util::UnsupportedModes) {
        if ($ENV{$var}) {
            bail_out("$var is set, but that mode is not supported by the "
                     . "bundled Test::Nginx (t/compat)");
        }
    }
}

sub check_sections {
    my %custom = map { $_ => 1 } @CustomSections;
    for my $block (@_) {
        for my $sec (@{ $block->{_section_order}[0] || [] }) {
            next if $KnownSections{$sec} || $custom{$sec};
            bail_out($block->name . " - unknown section \"--- $sec\": not "
                     . "supported by the bundled Test::Nginx (t/compat)");
        }
    }
}

sub run_tests () {
    check_environment();
    Test::Nginx::Util::get_nginx_version();

    $ENV{TEST_NGINX_SERVER_PORT} = $ServerPort
        unless defined $ENV{TEST_NGINX_SERVER_PORT};

    my @blocks = Test::Base::blocks();
    check_sections(@blocks);

    for my $block ($Test::Nginx::Util::NoShuffle ? @blocks : shuffle @blocks) {
        $_->($block) for @Test::Nginx::Util::BlockPreprocessors;
        $block->set_value('name', "$0 " . $block->name);
        run_test($block);
        $PrevBlock = $block;
    }

    Test::Nginx::Util::cleanup();
}

# Reads "N: <op> x.y.z[: reason]" specs and friends; returns
# ($should_skip, $tests_to_skip, $reason).
sub skip_conditions {
    my $block = shift;
    my $name = $block->name;
    my ($skip, $count, $reason);

    my $version_cmp = sub {
        my ($op, $mine, $ver) = @_;
        return 0 unless defined $mine;
        return eval "$mine $op $ver";
    };

    if (defined(my $spec = $block->skip_eval)) {
        if ($spec =~ /^\s*(\d+)\s*:\s*(.*)/s) {
            ($count, $reason) = ($1, 'skip_eval');
            my $code = $2;
            $skip = eval "package main; $code";
            bail_out("$name - skip_eval - failed to eval the Perl code "
                     . "\"$code\": $@") if $@;
        } else {
            bail_out("$name - Invalid --- skip_eval spec: $spec");
        }
    }

    if (defined(my $spec = $block->skip_nginx)) {
        if ($spec =~ /^\s*(\d+)\s*:\s*([<>]=?)\s*(\d+)\.(\d+)\.(\d+)
                      (?:\s*:\s*(.*))?\s*$/x)
        {
            $count = $1;
            my ($op, $ver) = ($2, canon_version($3, $4, $5));
            $reason = $6 || "nginx version $op $3.$4.$5";
            $skip = 1 if $version_cmp->($op, $NginxVersion, $ver);
        } else {
            bail_out("$name - Invalid --- skip_nginx spec: $spec");
        }
    } elsif (defined(my $spec2 = $block->skip_nginx2)) {
        if ($spec2 =~ /^\s*(\d+)\s*:\s*([<>]=?)\s*(\d+)\.(\d+)\.(\d+)
                       \s*(or|and)\s*([<>]=?)\s*(\d+)\.(\d+)\.(\d+)
                       (?:\s*:\s*(.*))?\s*$/x)
        {
            $count = $1;
            my $a = $version_cmp->($2, $NginxVersion, canon_version($3, $4, $5));
            my $b = $version_cmp->($7, $NginxVersion, canon_version($8, $9, $10));
            $reason = $11 || 'nginx version';
            $skip = 1 if $6 eq 'or' ? ($a || $b) : ($a && $b);
        } else {
            bail_out("$name - Invalid --- skip_nginx2 spec: $spec2");
        }
    }

    if (defined(my $spec = $block->skip_openssl)) {
        if ($spec =~ /^\s*(\d+)\s*:\s*([<>]=?)\s*(\d+)\.(\d+)\.(\d+)([a-z])?
                      (?:\s*:\s*(.*))?\s*$/x)
        {
            $count = $1;
            my $op = $2;
            my $ver = canon_version($3, $4, $5, $6);
            $reason = $7 || (defined $OpenSSLVersion
                ? "OpenSSL version $op $3.$4.$5" . ($6 // '')
                : 'Not built with OpenSSL');
            $skip = 1 if !defined $OpenSSLVersion
                         || $version_cmp->($op, $OpenSSLVersion, $ver);
        } else {
            bail_out("$name - Invalid --- skip_openssl spec: $spec");
        }
    }

    return ($skip, $count, $reason // 'various reasons');
}

sub canon_version { Test::Nginx::Util::canon_version(@_) }

sub missing_directive {
    open my $in, '<', $Test::Nginx::Util::ErrLogFile or return undef;
    while (<$in>) {
        return $1 if /\[emerg\] \S+?: unknown directive "([^"]+)"/;
    }
    return undef;
}

# Starts nginx for a block; retries while the port is still held (e.g. by
# a previous nginx finishing its shutdown).  Returns the dry-run reason if
# TEST_NGINX_IGNORE_MISSING_DIRECTIVES applies.
sub start_nginx {
    my ($name, $foreground) = @_;

    my $deadline = time + 10;
    while (1) {
        my $r = Test::Nginx::Util::launch_nginx($name, $foreground);
        return undef if $foreground || $r->{status} == 0;

        my $errors = join '', grep { /\[(?:emerg|alert|crit)\]/ }
                              @{ read_whole_error_log() };
        $errors = tail_of_error_log(20) if $errors eq '';

        if ($ENV{TEST_NGINX_IGNORE_MISSING_DIRECTIVES}
            and my $directive = missing_directive())
        {
            return "the lack of directive $directive";
        }

        if ($errors =~ /Address already in use/ && time < $deadline) {
            sleep 0.1;
            next;
        }

        # BAIL_OUT shows one line only: the whole story goes to diag
        Test::More::diag($errors);
        my ($first) = $errors =~ /^(.*)$/m;
        bail_out("$name - Cannot start nginx (status $r->{status}) using "
                 . "$Test::Nginx::Util::ConfFile: " . ($first // ''));
    }
}

sub read_whole_error_log {
    open my $in, '<', $Test::Nginx::Util::ErrLogFile or return [];
    my @lines = <$in>;
    close $in;
    return \@lines;
}

sub tail_of_error_log {
    my $n = shift;
    my $lines = read_whole_error_log();
    splice @$lines, 0, @$lines - $n if @$lines > $n;
    return join '', @$lines;
}

sub run_test ($) {
    my $block = shift;
    return if defined $block->SKIP;

    my $name = $block->name;
    my $rand_ports = {};
    my $config = Test::Nginx::Util::expand_env_in_text(
        scalar($block->config), $name, $rand_ports);

    local $Test::Nginx::Util::LogLevel = $Test::Nginx::Util::LogLevel;
    $Test::Nginx::Util::LogLevel = $block->log_level if $block->log_level;

    my $must_die = $block->must_die;
    my $valgrind = $Test::Nginx::Util::UseValgrind && !defined $must_die;

    my ($should_skip, $tests_to_skip, $skip_reason) = skip_conditions($block);

    my ($should_todo, $todo_reason);
    if (defined(my $todo = $block->todo)) {
        if ($todo =~ /^\s*(\d+)\s*:\s*(.*)/s) {
            ($should_todo, $tests_to_skip, $todo_reason) = (1, $1, $2);
        } else {
            bail_out("$name - Invalid --- todo spec: $todo");
        }
    }

    my $should_restart;
    if (!defined $config) {
        if (!defined $PrevConfig) {
            bail_out("$name - No '--- config' section specified and could "
                     . "not get previous one.");
        }
        $should_restart = 0;
    } else {
        $should_restart = $Test::Nginx::Util::ForceRestartOnTest
                          || !defined $PrevConfig || $config ne $PrevConfig;
    }

    my $dry_run = 0;

    if (!$should_skip && $should_restart) {
        $PrevConfig = $config;

        Test::Nginx::Util::stop_nginx($name);
        check_shutdown_error_log_of_prev_block();

        Test::Nginx::Util::setup_server_root();
        Test::Nginx::Util::write_user_files($block, $rand_ports);
        Test::Nginx::Util::write_config_file($block, $config, $rand_ports,
                                             $valgrind ? 'off' : 'on');

        if (defined $must_die) {
            run_must_die($block, $must_die);
            return;
        }

        $dry_run = start_nginx($name, $valgrind) || 0;
        sleep Test::Nginx::Util::sleep_time();

    } elsif (!$should_skip && !Test::Nginx::Util::nginx_is_running()) {
        # Reusing the previous block's nginx, which is gone (valgrind mode
        # stops it after every block): bring it back on the same config.
        $dry_run = start_nginx($name, $valgrind) || 0;
        sleep Test::Nginx::Util::sleep_time();
    }

    if (defined(my $init = $block->init)) {
        eval "package main; $init";
        bail_out("$name - init failed: $@") if $@;
    }

    $Test::Nginx::Util::ErrLogFilePos = 0;
    for my $i (1 .. $RepeatEach) {
        Test::Nginx::Util::write_user_files($block, $rand_ports) if $i > 1;

        my $tcp = start_tcp_server($block);

        if ($should_skip && defined $tests_to_skip) {
            SKIP: {
                Test::More::skip("$name - $skip_reason", $tests_to_skip);
            }
        } elsif ($should_todo) {
            TODO: {
                Test::More::todo_skip("$name - $todo_reason", $tests_to_skip);
            }
        } else {
            run_test_helper($block, $dry_run, $i - 1);
        }

        finish_tcp_server($block, $tcp,
                          !($should_skip && defined $tests_to_skip)
                          && !$should_todo);
    }

    if (my $total = $ENV{TEST_NGINX_ERROR_LOG}) {
        my $lines = read_whole_error_log();
        if (@$lines) {
            open my $out, '>>', $total
                or bail_out("Failed to append to $total: $!");
            print $out "\n=== $name\n", @$lines;
            close $out;
        }
    }

    Test::Nginx::Util::stop_nginx($name) if $valgrind;
}

sub run_must_die {
    my ($block, $must_die) = @_;
    my $name = $block->name;

    $Test::Nginx::Util::ErrLogFilePos = 0;
    for my $i (0 .. $RepeatEach - 1) {
        my $r = Test::Nginx::Util::launch_nginx($name, 0);

        if ($r->{exec_failed}) {
            Test::More::fail("$name - failed to execute the nginx command line");
        } elsif ($r->{coredump}) {
            Test::More::fail("$name - nginx core dumped");
        } elsif (looks_like_number($must_die)) {
            Test::More::is($r->{exit_code}, $must_die,
                           "$name - die with the expected exit code");
        } else {
            Test::More::isnt($r->{status}, 0, "$name - die as expected");
        }

        check_error_log($block, undef, 0, $i, 0);

        if ($r->{status} == 0) {
            warn "WARNING: $name - nginx must die but it does not; "
                 . "killing it (req $i)\n";
            Test::Nginx::Util::stop_nginx($name);
        }
    }
}

# ---------------------------------------------------------------------------
# Embedded one-shot TCP server (--- tcp_listen)
# ---------------------------------------------------------------------------

sub start_tcp_server {
    my $block = shift;
    my $target = $block->tcp_listen;
    return undef unless defined $target;

    my $name = $block->name;
    my $reply = $block->tcp_reply;
    bail_out("$name - no --- tcp_reply specified but --- tcp_listen is "
             . "specified") unless defined $reply;

    my $query_len = $block->tcp_query_len;
    $query_len //= length $block->tcp_query if defined $block->tcp_query;
    my (undef, $query_file) = File::Temp::tempfile(UNLINK => 1);

    my $listener;
    for (1 .. 30) {
        if ($target =~ /^\d+$/) {
            $listener = IO::Socket::INET->new(
                LocalAddr => '127.0.0.1', LocalPort => $target,
                Proto => 'tcp', ReuseAddr => 1, Listen => 5);
        } elsif ($target =~ /\.sock$/) {
            unlink $target;
            $listener = IO::Socket::UNIX->new(
                Local => $target, Type => SOCK_STREAM, Listen => 5);
        } else {
            bail_out("$name - bad tcp_listen target: $target");
        }
        last if $listener || $! !~ /in use/i;
        sleep 0.1;
    }
    bail_out("$name - failed to listen on $target: $!") unless $listener;

    my $pid = fork;
    bail_out("$name - fork() failed: $!") unless defined $pid;

    if ($pid == 0) {
        $Test::Nginx::Util::InSubprocess = 1;
        my $client;
        $client = $listener->accept until $client;

        my $buf = '';
        while (1) {
            my $got = sysread $client, my $chunk, 65536;
            last unless $got;
            $buf .= $chunk;
            if (open my $out, '>', $query_file) {
                binmode $out;
                print $out $buf;
                close $out;
            }
            last if !$query_len || length($buf) >= $query_len;
        }

        my $delay = parse_time(scalar($block->tcp_reply_delay));
        sleep $delay if $delay;

        my $data = ref $reply eq 'CODE' ? $reply->($buf) : $reply;
        for my $part (ref $data eq 'ARRAY' ? @$data : ($data)) {
            syswrite $client, $part if defined $part;
        }

        if (defined $block->tcp_no_close) {
            sleep 1 while 1;
        }
        close $client;
        POSIX::_exit(0);
    }

    return { pid => $pid, listener => $listener, target => $target,
             query_file => $query_file };
}

sub finish_tcp_server {
    my ($block, $tcp, $check) = @_;
    return unless $tcp;
    my $name = $block->name;

    if ($check) {
        my $buf = '';
        if (open my $in, '<', $tcp->{query_file}) {
            binmode $in;
            $buf = do { local $/; <$in> } // '';
            close $in;
        }
        if (defined $block->tcp_query) {
            is_str($buf, scalar($block->tcp_query), "$name - tcp_query ok");
        }
        if (defined $block->tcp_query_len) {
            Test::More::is(length($buf), $block->tcp_query_len,
                           "$name - TCP query length ok");
        }
    }

    kill 'KILL', $tcp->{pid};
    waitpid($tcp->{pid}, 0);
    close $tcp->{listener};
    unlink $tcp->{target} if $tcp->{target} =~ /\.sock$/;
    unlink $tcp->{query_file};
}

# ---------------------------------------------------------------------------
# Building requests
# ---------------------------------------------------------------------------

# "Name: value" lines (comments skipped) -> (CRLF header text, is_chunked)
sub parse_more_headers {
    my $in = shift // '';
    my ($out, $chunked) = ('', 0);
    for my $line (split /\n+/, $in) {
        next if $line =~ /^\s*#/;
        my ($key, $val) = split /:\s*/, $line, 2;
        $val //= '';
        $chunked = 1 if lc $key eq 'transfer-encoding' && $val eq 'chunked';
        $out .= "$key: $val\r\n";
    }
    return ($out, $chunked);
}

# Turns "METHOD [URI [VERSION]]\n[body]" (possibly split into packets)
# into a full HTTP request: adds Host, Connection and, unless chunked or
# given, Content-Length for the trimmed body.  Packet boundaries inside the
# body are kept; ones inside the request line move to the end of the
# generated header.
sub build_request {
    my ($name, $more_headers, $conn, $packets) = @_;

    my $orig = join '', map { $_->{value} // '' } @$packets;
    my ($first, $content) = $orig =~ /\A([^\n]*\n?)(.*)\z/s;
    if (!defined $first || $first !~ /\S/) {
        bail_out("$name - Request line should be non-empty");
    }
    my ($meth, $uri, $ver) =
        $first =~ /^\s*(\S+)(?:[ \t]+(\S+))?(?:[ \t]+(\S+))?\s*$/
        or bail_out("$name - Request line is not valid. Should be "
                    . "'meth [url [version]]' but got \"$first\".");
    $uri //= '/';
    $ver //= 'HTTP/1.1';

    my ($headers, $chunked) = parse_more_headers($more_headers);

    my ($lead, $len_header) = (0, '');
    if (!$chunked && $content ne ''
        && $headers !~ /(?:^|\n)Content-Length:/i)
    {
        $lead = length(($content =~ /\A(\s*)/)[0]);
        $content =~ s/^\s+|\s+$//gs;
        $len_header = 'Content-Length: ' . length($content) . "\r\n";
    }

    my $head = "$meth $uri $ver\r\n";
    $head .= "Host: $ServerName\r\n" unless $headers =~ /(?:^|\n)Host:/i;
    $head .= "Connection: $conn\r\n" unless $headers =~ /(?:^|\n)Connection/i;
    $head .= "$headers$len_header\r\n";

    my $full = $head . $content;
    my @out;
    my ($prev, $orig_off) = (0, 0);
    for my $i (0 .. $#$packets) {
        $orig_off += length($packets->[$i]{value} // '');
        my $cut;
        if ($i == $#$packets) {
            $cut = length $full;
        } elsif ($orig_off <= length $first) {
            $cut = length $head;
        } else {
            my $c = $orig_off - length($first) - $lead;
            $c = 0 if $c < 0;
            $c = length $content if $c > length $content;
            $cut = length($head) + $c;
        }
        push @out, { %{ $packets->[$i] },
                     value => substr($full, $prev, $cut - $prev) };
        $prev = $cut;
    }
    return \@out;
}

sub headers_for {
    my ($name, $more_headers, $idx) = @_;
    return $more_headers unless ref $more_headers eq 'ARRAY';
    my $h = $more_headers->[$idx];
    bail_out("$name - --- more_headers lacks data for request $idx")
        unless defined $h;
    return $h;
}

# Returns a list of requests; each is a list of packets
# ({ value => bytes, delay_before => seconds }) sent on one connection.
sub get_requests {
    my $block = shift;
    my $name = $block->name;

    if (defined(my $raw = $block->raw_request)) {
        return [[ map { ref $_ ? $_ : { value => $_ } }
                  ref $raw eq 'ARRAY' ? @$raw : ($raw) ]];
    }

    my $more_headers = $block->more_headers // '';

    if (defined(my $reqs = $block->pipelined_requests)) {
        bail_out("$name - invalid entries in --- pipelined_requests")
            unless ref $reqs eq 'ARRAY';
        my $data = '';
        for my $i (0 .. $#$reqs) {
            my $conn = $i == $#$reqs ? 'close' : 'keep-alive';
            my $r = build_request($name, headers_for($name, $more_headers, $i),
                                  $conn, [{ value => $reqs->[$i] }]);
            $data .= $r->[0]{value};
        }
        return [[{ value => $data }]];
    }

    my $request;
    if (defined $block->request_eval) {
        $request = eval $block->request_eval;
        warn $@ if $@;
    } else {
        $request = $block->request;
    }
    bail_out("$name - no --- request section") unless defined $request;

    my @list = ref $request eq 'ARRAY' ? @$request : ($request);
    my @reqs;
    for my $i (0 .. $#list) {
        my $one = $list[$i];
        my @packets;
        if (!ref $one) {
            # leading comment lines and blank space are not part of it
            1 while $one =~ s/^\s*#[^\n]+\s+|^\s+//gs;
            @packets = ({ value => $one });
        } elsif (ref $one eq 'ARRAY') {
            for my $p (@$one) {
                if (!ref $p) {
                    push @packets, { value => $p };
                } elsif (ref $p eq 'HASH') {
                    push @packets, $p;
                } else {
                    bail_out("$name - Invalid syntax. $p should be a string "
                             . "or hash with value.");
                }
            }
        } else {
            bail_out("$name - invalid --- request: MUST be string or array "
                     . "of requests");
        }
        push @reqs, build_request($name, headers_for($name, $more_headers, $i),
                                  'close', \@packets);
    }
    return \@reqs;
}

# ---------------------------------------------------------------------------
# Talking to nginx
# ---------------------------------------------------------------------------

sub connect_to_server {
    my ($block, $timeout) = @_;
    my $name = $block->name;
    my $addr = $block->server_addr_for_client // $ServerAddr;
    my $port = $ServerPortForClient;

    # A foreground nginx (valgrind) may take a while to listen; a daemon is
    # listening once started.
    my $deadline = time + ($Test::Nginx::Util::ChildPid ? 60 : 5);
    my $wait = sleep_time();
    while (1) {
        my $sock = IO::Socket::INET->new(
            PeerAddr => $addr, PeerPort => $port, Proto => 'tcp',
            Timeout => $timeout);
        return $sock if $sock;
        my $err = "$!";

        my $child = $Test::Nginx::Util::ChildPid;
        if (defined $child && !Test::Nginx::Util::is_running($child)) {
            Test::More::fail("$name - Can't connect to $addr:$port: $err "
                             . "(nginx is gone)");
            Test::More::diag(tail_of_error_log(20));
            return undef;
        }

        if (time >= $deadline) {
            my $msg = "$name - Can't connect to $addr:$port: $err (aborted)";
            bail_out($msg) if ++$TotalConnectFailures >= 3;
            Test::More::fail($msg);
            return undef;
        }
        sleep $wait;
        $wait = min($wait * 2, 0.5);
    }
}

# Sends the packets of one request and reads until the server closes the
# connection.  $timeout bounds the wait for each I/O event, not the total.
sub send_request {
    my ($block, $packets, $timeout) = @_;
    my $name = $block->name;

    my $all = join '', map { $_->{value} } @$packets;
    my $head_req = $all =~ /^\s*HEAD\s+/ ? 1 : 0;

    my $sock = connect_to_server($block, $timeout) or return (undef, $head_req);
    $sock->blocking(0);
    local $SIG{PIPE} = 'IGNORE';

    my $middle_delay = $block->raw_request_middle_delay;
    my @queue = @$packets;
    my ($buf, $off) = ('', 0);
    my $writing = 1;
    my $resp = '';
    my $sel = IO::Select->new($sock);

    while (1) {
        if ($writing && $off >= length $buf) {
            if (@queue) {
                my $p = shift @queue;
                my $delay = $p->{delay_before}
                            // ($buf ne '' ? $middle_delay : undef);
                sleep $delay if $delay;
                ($buf, $off) = ($p->{value} // '', 0);
                next;
            }
            $writing = 0;
            if (defined(my $how = $block->shutdown)) {
                shutdown($sock, $how =~ /^\s*$/ ? 1 : $how);
            }
        }

        my ($r, $w) = IO::Select->select($sel, $writing ? $sel : undef,
                                         undef, $timeout);
        if (!$r && !$w) {
            next if $! == EINTR;
            if (!defined $block->abort) {
                Test::More::fail("ERROR: client socket timed out - $name");
            }
            last;
        }

        if ($w && @$w) {
            my $n = syswrite $sock, $buf, length($buf) - $off, $off;
            if (defined $n) {
                $off += $n;
            } elsif ($! != EAGAIN && $! != EWOULDBLOCK) {
                # e.g. nginx answered early and closed; still read its reply
                warn "WARNING: $name - write failed: $!\n";
                $writing = 0;
            }
        }

        if ($r && @$r) {
            my $n = sysread $sock, my $chunk, 65536;
            if (!defined $n) {
                next if $! == EAGAIN || $! == EWOULDBLOCK;
                warn "WARNING: $name - HTTP response read failure: $!\n";
                last;
            }
            last if $n == 0;
            $resp .= $chunk;
        }
    }

    close $sock;
    return ($resp, $head_req);
}

# Parses one response off the front of $raw; returns the HTTP::Response
# (body de-chunked), the raw header text and whatever bytes follow it.
sub parse_response {
    my ($name, $raw, $head_req) = @_;

    my $raw_headers = $raw =~ /\A(.*?\r\n)\r\n/s ? $1 : '';
    my $res = HTTP::Response->parse($raw);

    my $code = $res->code;
    if (defined $code && $code !~ /^\d+$/) {
        $res->code(undef);
        undef $code;
    }
    return ($res, $raw_headers, undef)
        if $code && ($code == 304 || $code == 101);

    my $te  = $res->header('Transfer-Encoding');
    my $len = $res->header('Content-Length');
    my $body = $res->content // '';
    my $left;

    if (defined $te && $te =~ /^\s*chunked\s*$/i && !$head_req) {
        my ($decoded, $pos, $err) = ('', 0, undef);
        while (1) {
            pos($body) = $pos;
            if ($body !~ /\G[ \t]*([0-9A-Fa-f]+)[ \t]*(?:;[^\r\n]*)?\r\n/gc) {
                $err = $pos >= length $body
                    ? "no last chunk found"
                    : "invalid chunked body received: "
                      . substr($body, $pos, 40);
                last;
            }
            my $size = hex $1;
            $pos = pos $body;
            if ($size == 0) {
                # optional trailer fields, then the final CRLF
                pos($body) = $pos;
                if ($body =~ /\G(?:[^\r\n]+\r\n)*\r\n/gc) {
                    $pos = pos $body;
                    $left = substr $body, $pos if $pos < length $body;
                } else {
                    $err = "incomplete last chunk";
                }
                last;
            }
            if (length($body) - $pos < $size) {
                $decoded .= substr $body, $pos;
                $err = "invalid chunked data received (not enough octets "
                       . "for the data section)";
                last;
            }
            $decoded .= substr $body, $pos, $size;
            $pos += $size;
            if (substr($body, $pos, 2) ne "\r\n") {
                $err = "invalid chunked data received (expected CRLF)";
                last;
            }
            $pos += 2;
        }
        Test::More::fail("$name - $err") if $err;
        $res->content($decoded);

    } elsif (defined $len && $len =~ /^\s*(\d+)\s*$/) {
        $len = $1;
        if ($head_req) {
            $left = $body if length $body;
            $res->content('');
        } elsif (length $body < $len) {
            warn "WARNING: $name - response body truncated: $len expected, "
                 . "but got " . length($body) . "\n";
        } elsif (length $body > $len) {
            $res->content(substr $body, 0, $len);
            $left = substr $body, $len;
        }
    }

    return ($res, $raw_headers, $left);
}

# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------

# With several requests in a block, expectations must be arrays indexed by
# request; with one request an array's first element is used.
sub get_indexed_value {
    my ($name, $value, $idx, $need_array) = @_;
    if ($need_array) {
        return $value->[$idx] if ref $value eq 'ARRAY';
        bail_out("$name - You asked for many requests, the expected results "
                 . "should be arrays as well.");
    }
    return ref $value eq 'ARRAY' ? $value->[0] : $value;
}

sub run_test_helper {
    my ($block, $dry_run, $rep_idx) = @_;
    my $name = $block->name;

    my $reqs = get_requests($block);
    bail_out("$name - request empty") unless @$reqs;

    my $timeout = parse_time(scalar($block->timeout)) // timeout();
    my $npipelined = $block->pipelined_requests
                     ? scalar @{ $block->pipelined_requests } : 0;
    my $need_array = $npipelined ? 1 : @$reqs > 1;

    my $res;
    my $req_idx = 0;
    for my $r (0 .. $#$reqs) {
        my ($raw, $head_req);
        if ($dry_run) {
            $raw = "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        } else {
            ($raw, $head_req) = send_request($block, $reqs->[$r], $timeout);
        }

        my $nresp = $npipelined || 1;
        for my $k (1 .. $nresp) {
            $raw //= '';
            my ($raw_headers, $left);
            unless (defined $block->ignore_response) {
                if (defined $block->http09) {
                    $res = HTTP::Response->new(200, 'OK', [], $raw);
                    $raw_headers = '';
                } else {
                    ($res, $raw_headers, $left) =
                        parse_response($name, $raw, $head_req);
                }
            }

            if (!$npipelined && defined $left && length $left) {
                (my $shown = $left) =~
                    s/([\0-\037\200-\377])/sprintf '\x{%02x}', ord $1/ge;
                warn "WARNING: $name - unexpected extra bytes after the "
                     . "response: \"$shown\"\n";
            }
            $raw = $left;

            unless (defined $block->ignore_response) {
                check_error_code($block, $res, $dry_run, $req_idx, $need_array);
                check_raw_response_headers($block, $raw_headers, $dry_run,
                                           $req_idx, $need_array);
                check_response_headers($block, $res, $raw_headers, $dry_run,
                                       $req_idx, $need_array);
                transform_response_body($block, $res, $req_idx);
                check_response_body($block, $res, $dry_run, $req_idx,
                                    $rep_idx, $need_array);
            }

            if ($k < $nresp || $r < $#$reqs) {
                sleep $block->wait if $block->wait;
                check_error_log($block, $res, $dry_run, $rep_idx, $need_array);
                check_access_log($block, $dry_run, $rep_idx)
                    unless defined $block->ignore_response;
            }
            $req_idx++;
        }
    }

    sleep $block->wait if $block->wait;
    check_error_log($block, $res, $dry_run, $rep_idx, $need_array);
    check_access_log($block, $dry_run, $rep_idx)
        unless defined $block->ignore_response;
}

sub check_error_code {
    my ($block, $res, $dry_run, $idx, $need_array) = @_;
    my $name = $block->name;
    my $code = ($res && $res->code) || '';

    SKIP: {
        Test::More::skip("$name - tests skipped due to $dry_run", 1) if $dry_run;
        if (defined $block->error_code_like) {
            my $pat = get_indexed_value($name, scalar($block->error_code_like), $idx,
                                        $need_array);
            Test::More::like($code, qr/$pat/sm, "$name - status code ok");
        } elsif (defined $block->error_code) {
            Test::More::is($code, get_indexed_value($name, scalar($block->error_code),
                                                    $idx, $need_array),
                           "$name - status code ok");
        } else {
            Test::More::is($code, 200, "$name - status code ok");
        }
    }
}

sub check_raw_response_headers {
    my ($block, $raw_headers, $dry_run, $idx, $need_array) = @_;
    my $name = $block->name;

    for my $kind (qw(like unlike)) {
        my $section = "raw_response_headers_$kind";
        next unless defined $block->$section;
        SKIP: {
            Test::More::skip("$name - $section - tests skipped due to "
                             . "$dry_run", 1) if $dry_run;
            my $pat = get_indexed_value($name, scalar($block->$section), $idx,
                                        $need_array);
            no strict 'refs';
            &{"Test::More::$kind"}($raw_headers, qr/$pat/s,
                                   "$name - raw resp headers $kind");
        }
    }
}

# "Name: value" per line; "!Name" or "Name:" with no value pass when the
# header is absent.
sub parse_headers {
    my $s = shift // '';
    my %headers;
    for my $line (split /\n/, $s) {
        $line =~ s/^\s+|\s+$//g;
        next if $line eq '';
        if ($line =~ s/^!\s*//) {
            $headers{$line} = undef;
        } else {
            my ($key, $val) = split /\s*:\s*/, $line, 2;
            $headers{$key} = $val // '';
        }
    }
    return \%headers;
}

sub check_response_headers {
    my ($block, $res, $raw_headers, $dry_run, $idx, $need_array) = @_;
    my $name = $block->name;

    if (defined $block->response_headers) {
        my $headers = parse_headers(get_indexed_value(
            $name, scalar($block->response_headers), $idx, $need_array));
        for my $key (sort keys %$headers) {
            my $val = $headers->{$key};
            SKIP: {
                Test::More::skip("$name - response_headers - tests skipped "
                                 . "due to $dry_run", 1) if $dry_run;
                if (!defined $val) {
                    Test::More::unlike($raw_headers // '', qr/^\s*\Q$key\E\s*:/mi,
                        "$name - header $key not present in the raw headers");
                } else {
                    $val =~ s/\$ServerPortForClient\b/$ServerPortForClient/g;
                    $val =~ s/\$ServerPort\b/$ServerPort/g;
                    my $actual = $res ? $res->header($key) : undef;
                    Test::More::is($actual // '', $val, "$name - header $key ok");
                }
            }
        }
    } elsif (defined $block->response_headers_like) {
        my $headers = parse_headers(get_indexed_value(
            $name, scalar($block->response_headers_like), $idx, $need_array));
        for my $key (sort keys %$headers) {
            my $pat = $headers->{$key} // '';
            my $actual = ($res ? $res->header($key) : undef) // '';
            SKIP: {
                Test::More::skip("$name - response_headers_like - tests "
                                 . "skipped due to $dry_run", 1) if $dry_run;
                Test::More::like($actual, qr/^$pat$/,
                                 "$name - header $key like ok");
            }
        }
    }
}

sub run_body_filter {
    my ($name, $filter, $content) = @_;
    return $filter->($content) if ref $filter eq 'CODE';
    bail_out("$name - --- response_body_filters only takes subroutine "
             . "references and filter names") if ref $filter;

    my %builtin = (
        md5_hex  => \&Digest::MD5::md5_hex,
        sha1_hex => \&Digest::SHA::sha1_hex,
        uc       => sub { uc $_[0] },
        lc       => sub { lc $_[0] },
        ucfirst  => sub { ucfirst $_[0] },
        lcfirst  => sub { lcfirst $_[0] },
        length   => sub { length $_[0] },
    );
    my $f = $builtin{$filter}
        or bail_out("$name - unknown filter, \"$filter\", specified in the "
                    . "--- response_body_filters section");
    return $f->($content);
}

sub transform_response_body {
    my ($block, $res, $idx) = @_;
    my $filters = $block->response_body_filters;
    return unless defined $filters && $res && defined $res->content;
    my $name = $block->name;

    if (!ref $filters) {
        $filters =~ s/^\s+|\s+$//gs;
        $filters = [split /\s+/, $filters];
    } elsif (ref $filters ne 'ARRAY') {
        $filters = [$filters];
    }
    if (ref $filters->[0] eq 'ARRAY') {
        # one list of filters per request
        $filters = $filters->[$idx];
        bail_out("$name - --- response_body_filters has no entry for "
                 . "request $idx") unless defined $filters;
        $filters = [$filters] unless ref $filters eq 'ARRAY';
    }

    my $content = $res->content;
    $content = run_body_filter($name, $_, $content) for @$filters;
    $res->content($content);
}

sub check_response_body {
    my ($block, $res, $dry_run, $idx, $rep_idx, $need_array) = @_;
    my $name = $block->name;
    my $content = $res ? $res->content : undef;

    if (defined $block->response_body || defined $block->response_body_eval) {
        my $expected;
        if (defined $block->response_body_eval) {
            $expected = eval get_indexed_value(
                $name, scalar($block->response_body_eval), $idx, $need_array);
            warn $@ if $@;
        } else {
            $expected = get_indexed_value(
                $name, scalar($block->response_body), $idx, $need_array);
        }

        if ($block->charset && defined $expected && !ref $expected) {
            Encode::from_to($expected, 'UTF-8', scalar($block->charset));
        }
        if (defined $expected && !ref $expected) {
            $expected =~ s/\$ServerPortForClient\b/$ServerPortForClient/g;
            $expected =~ s/\$ServerPort\b/$ServerPort/g;
        }

        SKIP: {
            Test::More::skip("$name - response_body - tests skipped due to "
                             . "$dry_run", 1) if $dry_run;
            if (ref $expected) {
                Test::More::like($content, $expected, "$name - response_body "
                    . "- like (repeated req $rep_idx, req $idx)");
            } else {
                is_str($content, $expected, "$name - response_body - response "
                       . "is expected (repeated req $rep_idx, req $idx)");
            }
        }

    } elsif (defined $block->response_body_like
             || defined $block->response_body_unlike)
    {
        my $type = defined $block->response_body_like ? 'like' : 'unlike';
        my $section = "response_body_$type";
        my $pat = get_indexed_value($name, scalar($block->$section), $idx,
                                    $need_array);
        if (!ref $pat) {
            $pat =~ s/\$ServerPortForClient\b/$ServerPortForClient/g;
            $pat =~ s/\$ServerPort\b/$ServerPort/g;
        }

        my $summary = $content // '';
        $summary =~ s/^\s+|\s+$//g;
        $summary =~ s/\s+/ /g;
        $summary = substr($summary, 0, 200) . '...' if length $summary > 200;

        SKIP: {
            Test::More::skip("$name - $section - tests skipped due to "
                             . "$dry_run", 1) if $dry_run;
            no strict 'refs';
            &{"Test::More::$type"}($content, qr/$pat/s,
                "$name - $section - response is expected ($summary)");
        }
    }

    for my $check (@ResponseBodyChecks) {
        $check->($block, $res ? $res->content : undef, $idx, $rep_idx, $dry_run);
    }
}

sub value_contains {
    my ($val, $pat) = @_;
    return 0 unless defined $val;
    return index("$val", $pat) >= 0 if !ref $val || ref $val eq 'Regexp';
    if (ref $val eq 'ARRAY') {
        for (@$val) { return 1 if value_contains($_, $pat) }
    }
    return 0;
}

# Section value -> list of patterns (strings match literally, Regexp
# objects as regexes).
sub patterns_of {
    my $pats = shift;
    if (!ref $pats) {
        chomp $pats;
        return [split /\n+/, $pats];
    }
    return [$pats] if ref $pats eq 'Regexp';
    return [@$pats];
}

sub line_matches {
    my ($line, $pat) = @_;
    return ref $pat ? $line =~ /$pat/ : index($line, $pat) >= 0;
}

sub fmt_str {
    my $s = shift;
    chomp $s;
    $s =~ s/"/\\"/g;
    $s =~ s/\r/\\r/g;
    $s =~ s/\n/\\n/g;
    return $s;
}

# --- error_log / --- access_log style: each pattern must match a line.
sub check_log_has {
    my ($name, $pats, $lines, $log, $dry_run, $rep_idx) = @_;
    my @left = @{ patterns_of($pats) };
    for my $line (@$lines) {
        for my $pat (@left) {
            next unless defined $pat && line_matches($line, $pat);
            SKIP: {
                Test::More::skip("$name - $log - tests skipped due to $dry_run", 1)
                    if $dry_run;
                Test::More::pass("$name - pattern \"$pat\" matches a line in "
                                 . "$log (req $rep_idx)");
            }
            undef $pat;
        }
    }
    for my $pat (grep { defined } @left) {
        SKIP: {
            Test::More::skip("$name - $log - tests skipped due to $dry_run", 1)
                if $dry_run;
            Test::More::fail("$name - pattern \"$pat\" should match a line in "
                             . "$log (req $rep_idx)");
        }
    }
}

# --- no_error_log style: one failure per matching line, else one pass per
# pattern.
sub check_log_lacks {
    my ($name, $pats, $lines, $log, $dry_run, $rep_idx) = @_;
    my @pats = @{ patterns_of($pats) };
    my %found;
    for my $i (0 .. $#$lines) {
        my $line = $lines->[$i];
        for my $pat (@pats) {
            next unless defined $pat && line_matches($line, $pat);
            $found{$pat} = 1;
            SKIP: {
                Test::More::skip("$name - no_$log - tests skipped due to "
                                 . "$dry_run", 1) if $dry_run;
                my $more = join '', @$lines[$i + 1 .. min($i + 9, $#$lines)];
                Test::More::fail("$name - pattern \"" . fmt_str($pat)
                    . "\" should not match any line in $log but matches line "
                    . "\"" . fmt_str($line) . "\" (req $rep_idx)\n$more");
            }
        }
    }
    for my $pat (@pats) {
        next if !defined $pat || $found{$pat};
        SKIP: {
            Test::More::skip("$name - no_$log - tests skipped due to $dry_run", 1)
                if $dry_run;
            Test::More::pass("$name - pattern \"" . fmt_str($pat)
                             . "\" does not match a line in $log (req $rep_idx)");
        }
    }
}

sub check_error_log {
    my ($block, $res, $dry_run, $rep_idx, $need_array) = @_;
    my $name = $block->name;
    my $lines;

    my $grep_pat = $block->grep_error_log;
    if (defined $grep_pat) {
        $grep_pat = $grep_pat->[$rep_idx] if ref $grep_pat eq 'ARRAY';
    } elsif (defined $block->grep_error_log_out) {
        bail_out("$name - No --- grep_error_log defined but "
                 . "--- grep_error_log_out is defined");
    }

    if (defined $grep_pat) {
        my $expected = $block->grep_error_log_out;
        bail_out("$name - No --- grep_error_log_out defined but "
                 . "--- grep_error_log is defined") unless defined $expected;
        $expected = $expected->[$rep_idx] if ref $expected eq 'ARRAY';

        SKIP: {
            Test::More::skip("$name - error_log - tests skipped due to "
                             . "$dry_run", 1) if $dry_run;
            $lines //= Test::Nginx::Util::error_log_data();
            my $matched = '';
            for my $line (@$lines) {
                my $m;
                if (ref $grep_pat) {
                    $m = $& if $line =~ $grep_pat;
                } elsif ((my $at = index $line, $grep_pat) >= 0) {
                    $m = $grep_pat;
                }
                $matched .= "$m\n" if defined $m && $m !~ /\n/;
            }
            is_str($matched, $expected,
                   "$name - grep_error_log_out (req $rep_idx)");
        }
    }

    my %warn_for = map { $_ => 1 } qw([alert] [crit] [emerg]);
    for my $section (qw(error_log no_error_log)) {
        my $pats = $block->$section;
        next unless defined $pats;
        for my $level (qw(alert crit emerg)) {
            delete $warn_for{"[$level]"} if value_contains($pats, "[$level");
        }
        $lines //= Test::Nginx::Util::error_log_data();
        if ($section eq 'error_log') {
            check_log_has($name, $pats, $lines, 'error.log', $dry_run, $rep_idx);
        } else {
            check_log_lacks($name, $pats, $lines, 'error.log', $dry_run,
                            $rep_idx);
        }
    }

    if (!$dry_run && %warn_for) {
        $lines //= Test::Nginx::Util::error_log_data();
        for my $line (@$lines) {
            for my $tag (sort keys %warn_for) {
                warn "WARNING: $name - " . fmt_str($line) . "\n"
                    if index($line, $tag) >= 0;
            }
        }
    }

    for my $line (@{ $lines // [] }) {
        if ($line =~ /\bAssertion .*?failed\b/) {
            chomp(my $l = $line);
            Test::More::fail("$name - $l");
        }
    }
}

sub check_access_log {
    my ($block, $dry_run, $rep_idx) = @_;
    my $name = $block->name;
    my $lines;

    if (defined $block->access_log) {
        $lines //= Test::Nginx::Util::access_log_data();
        check_log_has($name, scalar($block->access_log), $lines, 'access.log',
                      $dry_run, $rep_idx);
    }
    if (defined $block->no_access_log) {
        $lines //= Test::Nginx::Util::access_log_data();
        check_log_lacks($name, scalar($block->no_access_log), $lines, 'access.log',
                        $dry_run, $rep_idx);
    }
}

# Runs once nginx of the previous block has been stopped: its
# --- shutdown_error_log / --- no_shutdown_error_log look at what nginx
# logged while exiting.
sub check_shutdown_error_log_of_prev_block {
    my $block = $PrevBlock;
    return unless $block && !$block->{_compat_shutdown_checked};
    $block->{_compat_shutdown_checked} = 1;

    my $pats = $block->shutdown_error_log;
    my $no_pats = $block->no_shutdown_error_log;
    return unless defined $pats || defined $no_pats;

    my $name = $block->name;
    my $dry_run = $ENV{TEST_NGINX_NO_CLEAN} ? 'TEST_NGINX_NO_CLEAN' : 0;
    my $lines = Test::Nginx::Util::error_log_data();

    check_log_lacks($name, $no_pats, $lines, 'error.log', $dry_run, 'shutdown')
        if defined $no_pats;
    check_log_has($name, $pats, $lines, 'error.log', $dry_run, 'shutdown')
        if defined $pats;
}

1;
