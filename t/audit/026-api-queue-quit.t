# A worker told to quit (a reload, a stop) waits only for timers that
# cannot be cancelled.  The audit queries running in the thread pool or
# waiting their turn had none: their clients got a closed connection and
# nginx "[alert] open socket #N left in connection".  Every query now
# gets its answer before the worker exits.  A waiting query whose client
# has gone is not run.
#
# The thread is held deterministically: the leaves file of a shipped and
# removed segment, which a proof for an unknown id reads in a folder
# without its receipts index, is a FIFO here, and the first query's read
# waits in the thread until the test lets it go.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use Fcntl;
use File::Path ();
use IO::Select;
use IO::Socket::INET;
use JSON::PP;
use POSIX ();
use Smartflow::Audit;
use Smartflow::S3;
use Test::More;

my $conf = $ENV{TEST_NGINX_SMARTFLOW_CONF}
           // Smartflow::Audit::top() . '/conf';

my $gw = Smartflow::Audit->new(name => 'audit-api-queue-quit', workers => 1,
    main => "thread_pool audit_q threads=1 max_queue=64;\n",
    server => "        include $conf/smartflow_audit.conf;\n");
$gw->setup;

my $s3 = Smartflow::S3->new(dir => $gw->root . '/s3');
my ($url, $id, $region) = ($s3->url, $s3->id, $s3->region);

my $cred = $gw->root . '/s3.credentials';
open my $fh, '>', $cred or die $!;
print $fh "$id $s3->{secret}\n";
close $fh;

my $http = <<"_HTTP_";
    smartflow_audit_thread_pool audit_q;
    smartflow_audit_segment_size 2k;
_HTTP_

$gw->write_conf(http => $http . <<"_HTTP_");
    smartflow_audit_s3 $url;
    smartflow_audit_s3_bucket audit-bucket;
    smartflow_audit_s3_region $region;
    smartflow_audit_s3_credentials $cred;
    smartflow_audit_s3_interval 100ms;
    smartflow_audit_s3_backoff_max 100ms;
    smartflow_audit_s3_timeout 5s;
_HTTP_

my $dir = $gw->dir;
sub seg { sprintf '%s/segment-%08d.%s', $dir, @_ }

sub slurp {
    open my $f, '<', $_[0] or die "$_[0]: $!";
    local $/;
    return scalar <$f>;
}

sub wait_for {
    my $cond = shift;
    for (1 .. 100) {
        return 1 if $cond->();
        select undef, undef, undef, 0.1;
    }
    return 0;
}

# segment 1 shipped and removed; then no shipping while queries run
$s3->start;
$gw->start;
my $n = 0;
$gw->chat('quit ' . ++$n) until -e seg(3, 'log') || $n > 60;
ok(wait_for(sub { !-e seg(1, 'log') && -e seg(1, 'leaves') }),
   'segment 1 is shipped and removed');
$gw->settle;
$gw->stop;
$s3->stop;

$gw->write_conf(http => $http);

# without the index an unknown id is looked for in every segment
File::Path::remove_tree("$dir/receipts");

# its leaves file, a FIFO in the folder under a second name too
my $leaves = slurp(seg(1, 'leaves'));
my $fifo = $gw->root . '/leaves.fifo';
POSIX::mkfifo($fifo, 0644) or die "mkfifo: $!";
chmod 0644, $fifo;
chmod 0644, seg(1, 'leaves');
unlink seg(1, 'leaves') or die $!;
link $fifo, seg(1, 'leaves') or die "link: $!";

sub ask {
    my $c = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $gw->port)
        or die "connect: $!";
    $c->print("GET /api/audit/proof/" . sprintf('%032x', $_[0] + 7)
              . " HTTP/1.0\r\nHost: localhost\r\n\r\n");
    return $c;
}

sub answers {
    my (%code, @bad);
    for my $c (@_) {
        local $/;
        my $res = readline($c) // '';
        my ($code) = $res =~ m{^HTTP/1\.\d (\d+)};
        my ($body) = $res =~ /\r\n\r\n(.*)\z/s;
        my $j = eval { decode_json($body // '') };
        if (($code // 0) == 404 && $j
            && ($j->{error}{code} // '') eq 'record_not_found')
        {
            $code{404}++;
        } else {
            push @bad, $code // 'none (' . length($res) . ' bytes)';
        }
    }
    return ($code{404} // 0, "@bad");
}

sub release {
    # a writer lets the reader in the thread go (none there yet: 0); a
    # regular file takes the FIFO's place for the queries after it
    sysopen my $w, $fifo, O_WRONLY | O_NONBLOCK or return 0;
    open my $t, '>', seg(1, 'leaves') . '.new' or die $!;
    print $t $leaves;
    close $t;
    chmod 0444, seg(1, 'leaves') . '.new';
    rename seg(1, 'leaves') . '.new', seg(1, 'leaves') or die $!;
    close $w;
    # a reader that came between the two
    for (1 .. 5) {
        select undef, undef, undef, 0.05;
        sysopen $w, $fifo, O_WRONLY | O_NONBLOCK and close $w;
    }
    return 1;
}

sub shutting_down {
    my $pid = shift;
    open my $f, '<', "/proc/$pid/cmdline" or return 1;
    local $/;
    return (<$f> // '') =~ /shutting down/;
}

$gw->start;

# a client that goes while its query waits is not run
my @gone = map { ask($_) } 1 .. 4;
select undef, undef, undef, 0.3;
close $_ for @gone[2, 3];
my @more = map { ask($_) } 5 .. 6;
select undef, undef, undef, 0.3;
my @ready = IO::Select->new(@gone[0, 1], @more)->can_read(0);
ok(!@ready, 'the queries wait for the thread');
ok(wait_for(\&release), 'the thread is let go');
my ($got, $bad) = answers(@gone[0, 1], @more);
is($got, 4, 'the clients still there are answered');
is($bad, '', 'with 404s in the OpenAI format');
like(slurp($gw->root . '/logs/error.log'),
     qr/the client of "[^"]+" is gone while it waited, not run/,
     'the gone ones are not run');

# the worker told to quit with thirty queries running and waiting
POSIX::mkfifo($fifo . '.2', 0644) or die "mkfifo: $!";
rename $fifo . '.2', $fifo or die $!;
chmod 0644, seg(1, 'leaves');
unlink seg(1, 'leaves') or die $!;
link $fifo, seg(1, 'leaves') or die "link: $!";

my @c = map { ask($_) } 1 .. 30;
select undef, undef, undef, 0.3;
@ready = IO::Select->new(@c)->can_read(0);
ok(!@ready, 'thirty queries wait');

my ($old) = $gw->worker_pids;
my $errlen = length slurp($gw->root . '/logs/error.log');
kill 'HUP', $gw->master_pid;
ok(wait_for(sub { shutting_down($old) }), 'the worker is told to quit');
ok(kill(0, $old), 'and stays while its queries wait');
ok(wait_for(\&release), 'the thread is let go');

($got, $bad) = answers(@c);
is($got, 30, 'each query is answered');
is($bad, '', 'with a 404 in the OpenAI format');
ok(wait_for(sub { !kill 0, $old }), 'then the worker exits');

my $log = substr slurp($gw->root . '/logs/error.log'), $errlen;
unlike($log, qr/\[alert\]/, 'no [alert]');
ok($gw->wait_workers(1), 'the new worker serves');
$gw->stop;

done_testing;
