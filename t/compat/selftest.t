# Self-test of the bundled Test::Nginx::Socket (t/compat): runs small test
# files against stock nginx, each in its own temporary directory and on a
# free port, and checks that good blocks pass, broken ones fail, and that
# misuse aborts the run.  Needs no project module.

use strict;
use warnings;

use Test::More;
use Cwd qw(abs_path);
use File::Basename qw(dirname);
use File::Temp qw(tempdir);
use IO::Socket::INET;
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(sleep time);

my $Compat = abs_path(dirname(__FILE__));

sub find_nginx {
    return $ENV{TEST_NGINX_BINARY} if $ENV{TEST_NGINX_BINARY};
    for my $dir (split(/:/, $ENV{PATH} // ''), '/usr/sbin', '/usr/local/sbin') {
        return "$dir/nginx" if -x "$dir/nginx";
    }
    return undef;
}

my $Nginx = find_nginx();
plan skip_all => 'nginx not found (set TEST_NGINX_BINARY)' unless $Nginx;

sub free_port {
    my $sock = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                     Proto => 'tcp', Listen => 1)
        or die "cannot find a free port: $!";
    return $sock->sockport;
}

# Runs one test file under the bundled runner; returns exit code and
# output.  %env adds to (or, with undef values, removes from) the
# environment of the run.
sub run_file {
    my ($name, $source, %env) = @_;

    my $dir = tempdir(CLEANUP => 1);
    mkdir "$dir/t" or die $!;
    open my $fh, '>', "$dir/t/$name.t" or die $!;
    print $fh $source;
    close $fh;

    my %run_env = %ENV;
    delete $run_env{$_} for grep { /^TEST_NGINX_/ } keys %run_env;
    @run_env{qw(TEST_NGINX_BINARY TEST_NGINX_PORT)} = ($Nginx, free_port());
    while (my ($k, $v) = each %env) {
        defined $v ? ($run_env{$k} = $v) : delete $run_env{$k};
    }

    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        %ENV = %run_env;
        chdir $dir or POSIX::_exit(126);
        open STDOUT, '>', "$dir/stdout" or POSIX::_exit(126);
        open STDERR, '>', "$dir/stderr" or POSIX::_exit(126);
        setpgrp(0, 0);
        { no warnings "exec"; exec $^X, "-I$Compat", "t/$name.t"; }
        POSIX::_exit(127);
    }

    my $deadline = time + 60;
    while (waitpid($pid, WNOHANG) == 0) {
        if (time > $deadline) {
            kill 'KILL', -$pid;
            waitpid($pid, 0);
            last;
        }
        sleep 0.02;
    }
    my $rc = $? >> 8;

    my %out;
    for my $stream (qw(stdout stderr)) {
        open my $in, '<', "$dir/$stream" or die $!;
        local $/;
        $out{$stream} = <$in> // '';
        close $in;
    }
    return { rc => $rc, %out,
             all    => [ $out{stdout} =~ /^((?:not )?ok \d+.*)$/mg ],
             ok     => [ $out{stdout} =~ /^ok \d+ - (.*)$/mg ],
             not_ok => [ $out{stdout} =~ /^not ok \d+ - (.*)$/mg ] };
}

# A test result line whose description matches $re.
sub has_line {
    my ($lines, $re) = @_;
    return scalar grep { /$re/ } @$lines;
}

sub show {
    my $r = shift;
    diag("exit code $r->{rc}\n--- stdout\n$r->{stdout}--- stderr\n$r->{stderr}");
}

# ---------------------------------------------------------------------------

my $r = run_file('pass', <<'_EOT_');
use Test::Nginx::Socket 'no_plan';

$ENV{TEST_NGINX_GREETING} = 'hello';
repeat_each(2);
run_tests();

__DATA__

=== TEST 1: status, headers, body, env expansion
--- config
    location = /t {
        add_header X-Foo bar;
        return 200 "$TEST_NGINX_GREETING world\n";
    }
--- request
GET /t
--- response_headers
X-Foo: bar
X-Absent:
! X-Also-Absent
--- response_headers_like
Content-Type: text/pl.*
--- response_body
hello world
--- no_error_log
[error]

=== TEST 2: non-200 status, error_log, body regex
--- config
    location /missing { root html; }
--- request
GET /missing/nothing.txt
--- error_code: 404
--- response_body_like: 404 Not Found
--- response_body_unlike: ^hello
--- error_log eval
[qr/open\(\) ".*nothing\.txt" failed/, "No such file or directory"]
--- grep_error_log eval: qr/No such file or directory/
--- grep_error_log_out
No such file or directory

=== TEST 3: chunked response, user_files, http_config
--- http_config
    map $uri $compat_tag { default tagged; }
--- config
    location /s {
        sub_filter 'foo' '$compat_tag';
        sub_filter_types *;
        alias html/s.txt;
    }
--- user_files
>>> s.txt
a foo b
--- request
GET /s
--- response_headers
Transfer-Encoding: chunked
--- response_body
a tagged b

=== TEST 4: request body and more_headers
--- config
    location = /len { return 200 "len=$http_content_length x=$http_x_foo"; }
--- more_headers
X-Foo: 42
--- request
POST /len
hello world
--- response_body chomp
len=11 x=42

=== TEST 5: HEAD
--- config
    location = /h { return 200 "abc"; }
--- request
HEAD /h
--- response_headers
Content-Length: 3
--- response_body chomp

=== TEST 6: pipelined and multiple requests
--- config
    location = /a { return 200 "A"; }
    location = /b { return 201 "B"; }
--- pipelined_requests eval
["GET /a", "GET /b"]
--- error_code eval
[200, 201]
--- response_body eval
["A", "B"]

=== TEST 7: must_die on a bad directive
--- config
    location = /t { compat_bogus_directive on; }
--- must_die
--- error_log
unknown directive "compat_bogus_directive"

=== TEST 8: skipped section by nginx version
--- config
    location = /t { return 200; }
--- request
GET /t
--- skip_nginx
2: > 0.1.0

=== TEST 9: SKIP is honoured
--- config
    location = /t { return 500; }
--- request
GET /t
--- SKIP
_EOT_

ok($r->{rc} == 0 && !@{ $r->{not_ok} }, 'passing blocks pass') or show($r);
# per repetition, as the real module counts them
is(scalar @{ $r->{all} }, 2 * (6 + 5 + 3 + 2 + 3 + 4 + 2 + 2),
   'expected number of subtests') or show($r);
ok(has_line($r->{ok}, qr/TEST 3: .* header Transfer-Encoding ok/),
   'chunked response seen');
ok(!has_line($r->{ok}, qr/TEST 9/), 'SKIP block not run');
like($r->{stdout}, qr/^ok \d+ # skip .*TEST 8/m, 'skip_nginx skips');

# ---------------------------------------------------------------------------

$r = run_file('fail', <<'_EOT_');
use Test::Nginx::Socket 'no_plan';
use IO::Socket::INET;

# an upstream that accepts connections but never answers
our $Hang = IO::Socket::INET->new(Listen => 5, LocalAddr => '127.0.0.1',
                                  LocalPort => 0, Proto => 'tcp') or die $!;
$ENV{TEST_NGINX_HANG_PORT} = $Hang->sockport;
run_tests();

__DATA__

=== TEST 1: wrong status
--- config
    location = /t { return 201 "x"; }
--- request
GET /t
--- response_body chomp
x

=== TEST 2: wrong body
--- config
    location = /t { return 200 "a\nb\nc\n"; }
--- request
GET /t
--- response_body
a
B
c

=== TEST 3: missing error_log line
--- config
    location = /t { return 200 "x"; }
--- request
GET /t
--- response_body chomp
x
--- error_log
this line never appears

=== TEST 4: present no_error_log line
--- config
    location /missing { root html; }
--- request
GET /missing/y
--- error_code: 404
--- no_error_log
[error]

=== TEST 5: wrong header, header that must be absent
--- config
    location = /t { add_header X-Foo bar; return 200 "x"; }
--- request
GET /t
--- response_headers
X-Foo: baz
Content-Type:

=== TEST 6: client timeout
--- config
    location = /t {
        proxy_pass http://127.0.0.1:$TEST_NGINX_HANG_PORT;
        proxy_read_timeout 20s;
    }
--- request
GET /t
--- timeout: 0.5
--- response_body
never

=== TEST 7: must_die on a valid config
--- config
    location = /t { return 200; }
--- must_die
_EOT_

isnt($r->{rc}, 0, 'failing blocks make the file fail') or show($r);
my %expect_fail = (
    'wrong status'       => qr/TEST 1: .* status code ok/,
    'wrong body'         => qr/TEST 2: .* response_body/,
    'missing error_log'  => qr/TEST 3: .* should match a line in error\.log/,
    'no_error_log hit'   => qr/TEST 4: .* should not match any line in error\.log/,
    'wrong header value' => qr/TEST 5: .* header X-Foo ok/,
    'header not absent'  => qr/TEST 5: .* header Content-Type ok/,
    'timeout'            => qr/client socket timed out .*TEST 6/,
    'must_die survivor'  => qr/TEST 7: .* die as expected/,
);
for my $what (sort keys %expect_fail) {
    ok(has_line($r->{not_ok}, $expect_fail{$what}), "fails on $what")
        or show($r);
}
ok(has_line($r->{ok}, qr/TEST 1: .* response_body/),
   'checks next to a failing one still pass');
like($r->{stderr}, qr/^#\s+-B\n#\s+\+b$/m, 'body mismatch shows a diff')
    or show($r);

# ---------------------------------------------------------------------------

$r = run_file('plan', <<'_EOT_');
use Test::Nginx::Socket;

repeat_each(2);
plan tests => repeat_each() * (blocks() * 3 + 1) + 1;
no_shuffle();
master_on();
workers(2);
log_level('info');
run_tests();

__DATA__

=== TEST 1: explicit plan, master process
--- config
    location = /t { return 200 "ok\n"; }
--- request
GET /t
--- response_body
ok
--- no_error_log
[error]

=== TEST 2: request array, shutdown log
--- config
    location = /a { return 200 "A"; }
--- request eval
["GET /a", "GET /nothing-here"]
--- error_code eval
[200, 404]
--- response_body_like eval
["^A\$", "404 Not Found"]
--- shutdown_error_log
gracefully shutting down
_EOT_

ok($r->{rc} == 0 && !@{ $r->{not_ok} }, 'explicit plan matches the count')
    or show($r);
like($r->{stdout}, qr/^1\.\.15$/m, 'plan line');

# ---------------------------------------------------------------------------

# tcp_listen takes a literal port, so this one is filled in here.
my $up_port = free_port();
$r = run_file('upstream', <<"_EOT_");
use Test::Nginx::Socket 'no_plan';
run_tests();

__DATA__

=== TEST 1: embedded tcp server as upstream
--- config
    location = /up { proxy_pass http://127.0.0.1:$up_port/x; }
--- tcp_listen: $up_port
--- tcp_reply eval
"HTTP/1.0 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nhi"
--- tcp_query eval
"GET /x HTTP/1.0\\r\\nHost: 127.0.0.1:$up_port\\r\\nConnection: close\\r\\n\\r\\n"
--- request
GET /up
--- response_body chomp
hi
_EOT_
ok($r->{rc} == 0 && @{ $r->{ok} } == 3, 'tcp_listen upstream') or show($r);

# ---------------------------------------------------------------------------

$r = run_file('unknown', <<'_EOT_');
use Test::Nginx::Socket 'no_plan';
run_tests();

__DATA__

=== TEST 1: typo in a section name
--- config
    location = /t { return 200; }
--- request
GET /t
--- respone_body
x
_EOT_

isnt($r->{rc}, 0, 'unknown section: run fails');
like($r->{stdout}, qr/^Bail out!.*unknown section "--- respone_body"/m,
     'unknown section: bails out naming it') or show($r);
ok(!@{ $r->{ok} } && !@{ $r->{not_ok} }, 'unknown section: nothing ran');

$r = run_file('noenv', <<'_EOT_');
use Test::Nginx::Socket 'no_plan';
run_tests();

__DATA__

=== TEST 1: unset variable
--- config
    location = /t { return 200 "$TEST_NGINX_COMPAT_UNSET"; }
--- request
GET /t
_EOT_

like($r->{stdout}, qr/^Bail out!.*No environment TEST_NGINX_COMPAT_UNSET/m,
     'unset $TEST_NGINX_ variable bails out') or show($r);

$r = run_file('only', <<'_EOT_');
use Test::Nginx::Socket 'no_plan';
run_tests();

__DATA__

=== TEST 1: not run
--- config
    location = /t { return 500; }
--- request
GET /t

=== TEST 2: the only one
--- config
    location = /t { return 200; }
--- request
GET /t
--- ONLY
_EOT_

ok($r->{rc} == 0 && @{ $r->{ok} } == 1 && $r->{ok}[0] =~ /TEST 2/,
   'ONLY runs that block alone') or show($r);

# ---------------------------------------------------------------------------
# valgrind mode: clean run, then a deliberate heap overrun injected into
# nginx through LD_PRELOAD.

SKIP: {
    my $cc = (grep { -x "$_/cc" } split /:/, $ENV{PATH} // '')[0];
    my $vg = grep { -x "$_/valgrind" } split /:/, $ENV{PATH} // '';
    skip 'valgrind or cc not available', 3 unless $cc && $vg;
    skip 'COMPAT_SELFTEST_NO_VALGRIND is set', 3
        if $ENV{COMPAT_SELFTEST_NO_VALGRIND};

    my $dir = tempdir(CLEANUP => 1);
    open my $c, '>', "$dir/overrun.c" or die $!;
    print $c <<'_EOC_';
#include <stdlib.h>
__attribute__((constructor)) static void overrun(void)
{
    volatile char *p;
    volatile char c;
    if (getenv("COMPAT_OVERRUN") == NULL) return;
    p = malloc(8);
    c = p[8];    /* kept in a volatile so the load is not optimized away */
    (void) c;
    free((void *) p);
}
_EOC_
    close $c;
    system("$cc/cc", '-shared', '-fPIC', '-o', "$dir/overrun.so",
           "$dir/overrun.c") == 0 or skip 'cannot build the test library', 3;

    my $src = <<'_EOT_';
use Test::Nginx::Socket 'no_plan';
env_to_nginx('COMPAT_OVERRUN') if $ENV{COMPAT_OVERRUN};
run_tests();

__DATA__

=== TEST 1: under memcheck
--- config
    location = /t { return 200 "x"; }
--- request
GET /t
--- response_body chomp
x
_EOT_

    $r = run_file('valgrind_clean', $src, TEST_NGINX_USE_VALGRIND => 1);
    ok($r->{rc} == 0 && @{ $r->{ok} } == 2, 'valgrind: clean nginx passes')
        or show($r);

    $r = run_file('valgrind_bad', $src, TEST_NGINX_USE_VALGRIND => 1,
                  LD_PRELOAD => "$dir/overrun.so", COMPAT_OVERRUN => 1);
    ok(has_line($r->{not_ok}, qr/valgrind reported memory errors/),
       'valgrind: memory error fails the block') or show($r);
    like($r->{stdout} . $r->{stderr}, qr/Invalid read of size 1/,
         'valgrind: report is shown');
}

done_testing();
