# The status zone's deployment slots across reloads.  The zone holds 256
# deployment slots, found by the deployment's "provider/model" name; a
# slot whose name no running configuration has any more goes to a new
# name, once no worker of a configuration that named it is alive.  A name
# kept by the new configuration keeps its slot and its counters.
#
# The blocks load a route file of their own (html/routes.conf), rewrite
# it and reload nginx ("nginx -s reload", SIGHUP to the master) from their
# init code, so that several hundred distinct names pass through one zone;
# /health then shows, per deployment, whether it has a breaker (a slot).
# When a new name finds no slot, the log says so, once per name.  The
# zone's real 256 slots are used: a reload of an idle nginx takes a
# fraction of a second, so passing 501 names through takes a few seconds
# and needs no smaller limit for the test.

use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use Smartflow::Keys;
use JSON::PP ();
use IO::Socket::INET;

workers(1);
master_on();
no_shuffle();

our $Master = 'Authorization: Bearer sk-smartflow-test-0123456789';

our $MainConfig = <<'_EOC_';
    load_module $TEST_NGINX_MODULES/ngx_http_smartflow_proxy_module.so;
_EOC_

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_zone status 1m;
    smartflow_provider demo type=echo;
    include ../html/routes.conf;
_EOC_

our $Locations = <<'_EOC_';
    location = /v1/chat/completions {
        smartflow_api chat;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /health {
        smartflow_api health;
    }

    location = /pid {
        return 200 "$pid\n";
    }

    location @smartflow_error {
        smartflow_api error;
    }
_EOC_

add_block_preprocessor(sub {
    my $block = shift;

    $block->set_value('main_config', $MainConfig)
        unless defined $block->main_config;
    $block->set_value('http_config', $HttpConfig)
        unless defined $block->http_config;
    $block->set_value('config', $Locations)
        unless defined $block->config;
    $block->set_value('more_headers', $Master)
        unless defined $block->more_headers;

    return $block;
});

# the route file: "kept" in every generation, and n routes named by prefix
sub routes {
    my ($prefix, $n) = @_;
    return "smartflow_route kept demo;\n"
           . join '', map { "smartflow_route $prefix-$_ demo;\n" } 1 .. $n;
}

sub write_routes {
    my $file = Test::Nginx::Util::html_dir() . '/routes.conf';
    open my $fh, '>', $file or die "cannot write $file: $!\n";
    print $fh routes(@_);
    close $fh;
}

sub get {
    my ($path) = @_;
    my $r = Smartflow::Keys::burst(1, 'GET', $path, undef, $main::Master);
    return $r->[0][1];
}

sub worker_pid {
    my ($pid) = (get('/pid') // '') =~ /^(\d+)/;
    return $pid // 0;
}

sub master_pid {
    my $file = Test::Nginx::Util::server_root() . '/logs/nginx.pid';
    open my $fh, '<', $file or die "cannot read $file: $!\n";
    my $pid = <$fh>;
    close $fh;
    $pid =~ s/\s+//g;
    return $pid;
}

# SIGHUP, then wait until a new worker answers; with $gone, also until the
# old worker has exited (it has nothing left to do)
sub reload {
    my ($gone) = @_;
    my $old = worker_pid();
    kill 'HUP', master_pid() or die "cannot signal nginx: $!\n";
    for (1 .. 300) {
        select undef, undef, undef, 0.1;
        my $now = worker_pid();
        next if $now == 0 || $now == $old;
        return $now unless $gone;
        return $now unless -e "/proc/$old";
    }
    die "no new worker after the reload\n";
}

sub wait_gone {
    my ($pid) = @_;
    for (1 .. 300) {
        return unless -e "/proc/$pid";
        select undef, undef, undef, 0.1;
    }
    die "worker $pid did not exit\n";
}

sub chat {
    my ($model, $n) = @_;
    my $body = qq/{"model":"$model","messages":[{"role":"user","content":"hi"}]}/;
    Smartflow::Keys::burst(1, 'POST', '/v1/chat/completions', $body,
                           $main::Master) for 1 .. $n;
}

# /health as: how many deployments, how many have a breaker, those that
# have none, and the counters of "kept"
sub slots_view {
    my $body = shift;
    my $h = eval { JSON::PP->new->decode($body) };
    return "not JSON: $body\n" unless ref $h;

    my @d = @{ $h->{deployments} };
    my @without = map { $_->{deployment} } grep { !exists $_->{breaker} } @d;
    my ($kept) = grep { $_->{deployment} eq 'demo/kept' } @d;

    return scalar(@d) . " deployments, "
           . (@d - @without) . " with a breaker\n"
           . "without: " . (@without ? "$without[0] .. $without[-1] ("
                                       . scalar(@without) . ")" : "none")
           . "\n"
           . "kept: " . ($kept && exists $kept->{requests}
                         ? "$kept->{requests} requests, breaker "
                           . $kept->{breaker}
                         : "no slot") . "\n";
}

run_tests();

__DATA__

=== TEST 1: 501 names over four reloads: every configuration's routes get a slot, and "kept" keeps its counters
Five generations of 100 routes each, all named anew, plus "kept" in
every one: 501 names pass through the 256 slots.  Each reload waits for
the old worker to exit, so the slots of the generation before the last
are free at the next one.
--- user_files eval
">>> routes.conf\n" . ::routes('a', 100)
--- init
::chat('kept', 3);
::chat('a-100', 1);
for my $gen (qw(b c d e)) {
    ::write_routes($gen, 100);
    ::reload(1);
}
::chat('kept', 2);
::chat('e-100', 1);
--- request
GET /health
--- response_body_filters eval
\&::slots_view
--- response_body
101 deployments, 101 with a breaker
without: none
kept: 5 requests, breaker closed
--- no_error_log
[error]
no slot left



=== TEST 2: a name given a slot another name had starts from zero
Every "a" and "c" route is asked once; the "e" routes take the slots
"a", "b" and "c" had, and show no request until they are asked.
--- user_files eval
">>> routes.conf\n" . ::routes('a', 100)
--- init
::chat("a-$_", 1) for 1 .. 100;
for my $gen (qw(b c d e)) {
    ::write_routes($gen, 100);
    ::reload(1);
    ::chat("c-$_", 1) for $gen eq 'c' ? 1 .. 100 : ();
}
::chat('e-100', 1);
--- request
GET /health
--- response_body_filters eval
sub {
    my $h = JSON::PP->new->decode($_[0]);
    my @e = grep { $_->{deployment} =~ m{^demo/e-} } @{ $h->{deployments} };
    my @slot = grep { exists $_->{requests} } @e;
    my $n = 0;
    $n += $_->{requests} for @slot;
    return scalar(@slot) . " of " . scalar(@e) . " with a slot, $n requests\n";
}
--- response_body
100 of 100 with a slot, 1 requests
--- no_error_log
[error]
no slot left



=== TEST 3: a worker of an old configuration still at work keeps its slots until it exits
A request to the "a" worker is left unfinished (half its body sent), so
that worker keeps running after two reloads.  The "c" routes then find
only the 55 slots never used (256 - "kept" - 100 "a" - 100 "b"): the
other 45 get none, and the log says so once for each.  Once the request
is over and the "a" worker gone, the next reload gives every "d" route a
slot.
--- user_files eval
">>> routes.conf\n" . ::routes('a', 100)
--- init
my $old = ::worker_pid();
my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                 PeerPort => Test::Nginx::Util::server_port_for_client(),
                                 Proto => 'tcp', Timeout => 5)
    or die "cannot connect: $!\n";
$sock->syswrite("POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
                . "$main::Master\r\nContent-Type: application/json\r\n"
                . "Content-Length: 100\r\n\r\n{\"model\":");
select undef, undef, undef, 0.3;
::write_routes('b', 100);
::reload(0);
die "the \"a\" worker exited too early\n" unless -e "/proc/$old";
::write_routes('c', 100);
::reload(1);
die "the \"a\" worker exited too early\n" unless -e "/proc/$old";
my $c = ::slots_view(::get('/health'));
Test::More::is($c, "101 deployments, 56 with a breaker\n"
                   . "without: demo/c-56 .. demo/c-100 (45)\n"
                   . "kept: 0 requests, breaker closed\n",
               'while the "a" worker runs, its slots stay its own');
close $sock;
::wait_gone($old);
::write_routes('d', 100);
::reload(1);
--- request
GET /health
--- response_body_filters eval
\&::slots_view
--- response_body
101 deployments, 101 with a breaker
without: none
kept: 0 requests, breaker closed
--- grep_error_log eval
qr/has no slot left for deployment "demo\/c-(?:55|56|100)"/
--- grep_error_log_out
has no slot left for deployment "demo/c-56"
has no slot left for deployment "demo/c-100"
--- no_error_log
[error]



=== TEST 4: more routes than slots: each name without a slot is logged once, and has no breaker
Routes 256 to 300 find no slot ("kept" has one); "shared-a" and
"shared-b" are two models of one deployment name, logged once.
--- user_files eval
">>> routes.conf\n" . ::routes('x', 300)
. "smartflow_route shared-a demo model=same;\nsmartflow_route shared-b demo model=same;\n"
--- request
GET /health
--- response_body_filters eval
\&::slots_view
--- response_body
303 deployments, 256 with a breaker
without: demo/x-256 .. demo/same (47)
kept: 0 requests, breaker closed
--- grep_error_log eval
qr/has no slot left for deployment "demo\/(?:x-255|x-256|x-300|same)"/
--- grep_error_log_out eval
# once each; the project's runner also appends the start-up messages
# nginx prints on stderr to the log, which may repeat the three lines
my $l = 'has no slot left for deployment "demo/';
qr/\A(\Q${l}x-256"\E\n\Q${l}x-300"\E\n\Q${l}same"\E\n)\1?\z/
--- no_error_log
[error]
