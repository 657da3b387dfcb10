# A worker told to quit waits for Redis's answers for the connection's
# timeout in all, from the moment it is told: an answer that comes does
# not give it another timeout.  Redis sits behind a small proxy of the
# test's own that holds its answers to the workers of node A, then lets
# them through one at a time, each a little sooner than the timeout after
# the one before: sixteen settlements of as many keys wait there when the
# node is reloaded.  Its old workers exit once the timeout has passed
# since the reload (not after the last answer), say so, and keep the
# settlements not answered in the zone; the new workers send them again,
# and Redis counts each request once.
use strict;
use warnings;

use Test::More;
use IO::Select;
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(sleep time);
use lib 't/lib';
use Smartflow::SlowSpend;

$ENV{TEST_NGINX_FIXTURE_PORT} ||= 1988;

my $proxy_port = $ENV{TEST_NGINX_FIXTURE_PORT};
my $keys = 16;
my $slow = $ENV{SMARTFLOW_ASAN} ? 3 : 1;
my $timeout = 5 * $slow;            # s, the nodes' timeout=
my $mode_file;

# what the proxy does with Redis's answers: "pass", "hold" them, or "drip
# S": one now, then one every S seconds.  Held or dripped: those on the
# connections open when the mode is set; later connections pass.  The
# proxy says which mode it has applied; once the proxy runs, this returns
# when it has applied this one, so that a connection made after (a new
# worker's) is not taken for one open before.
my $proxy_started;
sub mode {
    open my $fh, '>', "$mode_file.tmp" or die "$mode_file: $!";
    print $fh $_[0];
    close $fh;
    rename "$mode_file.tmp", $mode_file or die "$mode_file: $!";
    return unless $proxy_started;
    my $t0 = time;
    while (time - $t0 < 30) {
        my $seen = do { local (@ARGV, $/) = "$mode_file.seen"; <> } // '';
        return if $seen eq $_[0];
        sleep 0.01;
    }
    die "the proxy did not take the mode \"$_[0]\"\n";
}

# the length of one RESP answer at the start of $$buf, 0 when incomplete
sub answer {
    my ($buf, $pos) = @_;
    my $eol = index $$buf, "\r\n", $pos;
    return 0 if $eol < 0;
    my $type = substr $$buf, $pos, 1;
    my $n = substr $$buf, $pos + 1, $eol - $pos - 1;
    my $next = $eol + 2;
    if ($type eq '$') {
        return $next - $pos if $n < 0;
        return 0 if length($$buf) < $next + $n + 2;
        return $next + $n + 2 - $pos;
    }
    if ($type eq '*') {
        for (1 .. ($n < 0 ? 0 : $n)) {
            my $len = answer($buf, $next) or return 0;
            $next += $len;
        }
    }
    return $next - $pos;
}

sub proxy {
    my ($redis_port) = @_;
    my $listen;
    # the port may be held a moment by another's outgoing connection
    for (1 .. 60) {
        $listen = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                        LocalPort => $proxy_port,
                                        Listen => 16, ReuseAddr => 1)
            and last;
        sleep 0.5;
    }
    die "proxy: $!" unless $listen;
    my $sel = IO::Select->new($listen);
    my (%peer, %in, %out, %slow, %next);
    my $mode = 'pass';
    while (1) {
        my $now = do { local (@ARGV, $/) = $mode_file; <> } // 'pass';
        if ($now ne $mode) {
            $mode = $now;
            # the answers to the clients open now are held or dripped
            for my $cl (grep { exists $out{$_} } keys %peer) {
                $slow{$cl} = $mode ne 'pass';
                $next{$cl} = 0;
            }
            open my $fh, '>', "$mode_file.seen.tmp" or die "$mode_file: $!";
            print $fh $mode;
            close $fh;
            rename "$mode_file.seen.tmp", "$mode_file.seen"
                or die "$mode_file: $!";
        }
        for my $s ($sel->can_read(0.02)) {
            if ($s == $listen) {
                my $cl = $listen->accept or next;
                my $up = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                               PeerPort => $redis_port)
                    or do { close $cl; next };
                $peer{$cl} = $up;
                $peer{$up} = $cl;
                $in{$up} = '';
                $out{$cl} = [];
                $slow{$cl} = 0;
                $sel->add($cl, $up);
                next;
            }
            my $o = $peer{$s} or next;
            my $got = sysread $s, my $chunk, 65536;
            if (!$got) {
                $sel->remove($s, $o);
                close $_ for $s, $o;
                delete @peer{$s, $o};
                delete $out{$_} for $s, $o;
                next;
            }
            if (exists $out{$s}) {
                # a command: to Redis at once
                syswrite $o, $chunk;
                next;
            }
            # answers: queued for the client, whole
            $in{$s} .= $chunk;
            while (my $len = answer(\$in{$s}, 0)) {
                push @{ $out{$o} }, substr $in{$s}, 0, $len, '';
            }
        }
        my $t = time;
        for my $cl (grep { exists $out{$_} } keys %peer) {
            my $q = $out{$cl};
            next unless @$q;
            my $cs = $peer{$peer{$cl}} or next;
            if (!$slow{$cl}) {
                syswrite $cs, join '', splice @$q;
            } elsif ($mode =~ /^drip ([\d.]+)/ && $t >= $next{$cl}) {
                syswrite $cs, shift @$q;
                $next{$cl} = $t + $1;
            }
        }
    }
}

# the proxy runs first: it connects to Redis for each connection it takes
$mode_file = ($ENV{TEST_NGINX_SERVROOT} || '/tmp/smartflow-redis-test')
             . '/stop-deadline-answers';
unlink "$mode_file.seen";
mode('pass');
my $proxy = fork;
die "fork: $!" unless defined $proxy;
if ($proxy == 0) {
    # an answer for a worker that has gone is dropped
    $SIG{PIPE} = 'IGNORE';
    proxy($ENV{SMARTFLOW_REDIS_PORT} || 3110);
    POSIX::_exit(0);
}
END {
    local $?;
    # the nodes go first: they would find Redis away
    $_->shutdown for @Smartflow::Cluster::Clusters;
    if ($proxy) { kill 'KILL', $proxy; waitpid $proxy, 0 }
}
my $up;
for (1 .. 700) {
    $up = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                PeerPort => $proxy_port) and last;
    sleep 0.05;
}
die "the proxy does not listen on port $proxy_port\n" unless $up;
$proxy_started = 1;

my ($c, $a) = Smartflow::SlowSpend::setup('stop-deadline',
    redis_addr => "127.0.0.1:$proxy_port", redis_timeout => 5000);

my (@key, @id);
for my $n (1 .. $keys) {
    my ($k, $i) = make_key($a, "deadline-$n");
    push @key, $k;
    push @id, $i;
}

# what one request costs, as Redis counts it
my $r = read_all(send_all($a, 1, $key[0]));
is $r->[0][0], 200, 'a request served with Redis';
wait_for 'Redis counts its spend', sub { counter($id[0], 's') > 0 };
my $cost = counter($id[0], 's');

# a request of each key, reserved in Redis; then the answers to the
# workers' connections are held, and the requests end
my @held = map { @{ send_all($a, 1, $key[$_]) } } 0 .. $keys - 1;
wait_for 'the requests are reserved in Redis',
    sub { !grep { counter($_, 'res') == 0 } @id };
# the answers to the reservations pass the proxy at once; the requests
# wait 1.5 s for the provider
sleep(0.3 * $slow);
mode('hold');
$r = read_all(\@held);
is join(' ', map { $_->[0] } @$r), join(' ', ('200') x $keys),
   'the requests are served';
wait_for 'Redis has run their settlements',
    sub { !grep { counter($_, 'res') > 0 } @id };

# the answers come one at a time, each sooner than the timeout after the
# one before; the node is reloaded
my $master = $c->pid($a);
my @old = $c->workers($master);
is scalar(@old), 2, 'two workers';
mode('drip ' . 0.6 * $timeout);
kill 'HUP', $master;
my $t0 = time;
sleep 0.1 while grep { kill 0, $_ } @old and time - $t0 < 60 * $slow;
my $took = time - $t0;
ok $took < 2.5 * $timeout,
   'the old workers exit once the timeout has passed since the reload, '
   . 'not after the last answer'
    or diag sprintf 'they took %.1f s for a timeout of %d s', $took,
                    $timeout;

like $c->error_log($a),
     qr/smartflow proxy: redis \S+: timeout passed with \d+ answers? still to come as the worker quits/,
     'the error log says what was not waited for';
ok count($a, qr/kept for the next worker/) > 0,
   'the settlements without an answer are kept for the next worker';
is count($a, qr/redis \S+ unreachable/), 0,
   'Redis is not reported unreachable';

# the new workers send them again: each counts once
mode('pass');
wait_for 'Redis has the spend of each request once', sub {
    !grep { counter($id[$_], 's') != ($_ ? 1 : 2) * $cost } 0 .. $keys - 1
};
sleep(1 * $slow);
is join(' ', map { counter($_, 's') } @id),
   join(' ', map { ($_ ? 1 : 2) * $cost } 0 .. $keys - 1),
   'the spend of each key counts its requests once';
is join(' ', map { counter($_, 'r') } @id),
   join(' ', map { $_ ? 1 : 2 } 0 .. $keys - 1),
   'and so does the number of requests';
is join(' ', map { counter($_, 'res') } @id), join(' ', (0) x $keys),
   'nothing is left reserved';

unlike $c->error_log($a), qr/\[(?:alert|crit|emerg)\]/,
       'no alert in the log of A';

done_testing;
