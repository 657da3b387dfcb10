package Smartflow::Mock;

# Runs the mock LLM provider (t/lib/mock_provider.js) for one test file:
#
#     use lib 't/lib';
#     use Smartflow::Mock;
#
# The port is $ENV{TEST_NGINX_MOCK_PORT} (default 1985; exported when unset so
# nginx configs can say $TEST_NGINX_MOCK_PORT). When something already listens
# on that port it is reused and left alone; otherwise the mock is started, we
# wait until it accepts connections, and it is stopped when this process exits.
# Nothing goes to STDOUT (TAP): the mock logs to <servroot>/mock.log, and that
# log is copied to STDERR only when the mock fails to start.
# MOCK_NODE names the node binary (default: node from PATH).

use strict;
use warnings;

use File::Basename ();
use File::Path ();
use File::Spec;
use IO::Socket::INET;
use POSIX ();

our $VERSION = '0.01';

my $Script = File::Spec->catfile(
    File::Basename::dirname(File::Basename::dirname(File::Spec->rel2abs(__FILE__))),
    'mock_provider.js');

my $Port;       # port in use
my $Pid;        # mock process we started, if any
my $Owner;      # pid of the process that started it (forked children must not stop it)
my $LogFile;
my $LogStart = 0;   # size of the log before this start, to show only our part

sub port     { $Port }
sub log_file { $LogFile }

sub import {
    start() unless defined $Port;
}

sub _listening {
    my ($port) = @_;
    my $sock = IO::Socket::INET->new(
        PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp', Timeout => 1);
    return 0 unless $sock;
    close $sock;
    return 1;
}

sub _sleep { select(undef, undef, undef, $_[0]) }

sub _fail {
    my ($msg) = @_;
    my $log = '';
    if (defined $LogFile && open my $fh, '<', $LogFile) {
        seek $fh, $LogStart, 0;
        local $/;
        $log = <$fh> // '';
        close $fh;
    }
    print STDERR "--- $LogFile ---\n$log--- end of mock log ---\n" if length $log;
    die "Smartflow::Mock: $msg\n";
}

sub start {
    $ENV{TEST_NGINX_MOCK_PORT} ||= 1985;
    $Port = $ENV{TEST_NGINX_MOCK_PORT};
    return if _listening($Port);

    my $servroot = $ENV{TEST_NGINX_SERVROOT} || File::Spec->rel2abs('t/servroot');
    File::Path::make_path($servroot);
    $LogFile = File::Spec->catfile($servroot, 'mock.log');
    $LogStart = -s $LogFile || 0;
    my $node = $ENV{MOCK_NODE} || 'node';

    my $pid = fork;
    _fail("fork failed: $!") unless defined $pid;
    if ($pid == 0) {
        open STDIN, '<', File::Spec->devnull;
        open STDOUT, '>>', $LogFile or POSIX::_exit(127);
        open STDERR, '>&', \*STDOUT or POSIX::_exit(127);
        { no warnings 'exec'; exec $node, $Script, '--port', $Port, '--host', '127.0.0.1', '--watch-parent' };
        print STDERR "cannot run $node: $!\n";
        POSIX::_exit(127);
    }
    ($Pid, $Owner) = ($pid, $$);

    # Wait up to ~10 s for the port to accept connections.
    for (my $i = 0; !_listening($Port); $i++) {
        if (waitpid($pid, POSIX::WNOHANG()) == $pid) {
            my $status = $? >> 8;
            undef $Pid;
            _fail("mock provider exited with status $status before listening on port $Port");
        }
        if ($i >= 200) {
            stop();
            _fail("mock provider did not listen on port $Port within 10 s");
        }
        _sleep(0.05);
    }

    # Stop the mock when the test process is interrupted, then carry on as before.
    for my $sig (qw(INT TERM HUP)) {
        my $prev = $SIG{$sig};
        next if defined $prev && !ref $prev && $prev eq 'IGNORE';
        $SIG{$sig} = sub {
            stop();
            return $prev->(@_) if ref $prev eq 'CODE';
            $SIG{$sig} = 'DEFAULT';
            kill $sig, $$;
        };
    }
}

sub stop {
    return unless $Pid && $$ == $Owner;
    my $pid = $Pid;
    undef $Pid;
    kill 'TERM', $pid;
    for (1 .. 60) {
        my $r = waitpid($pid, POSIX::WNOHANG());
        return if $r == $pid || $r == -1;
        _sleep(0.05);
    }
    kill 'KILL', $pid;
    waitpid($pid, 0);
}

END {
    my $status = $?;
    stop();
    $? = $status;
}

1;
