# The proof and log queries read the folder in the thread pool, which
# also seals and ships.  Any client may ask for a proof by receipt id,
# and an id that is nowhere reads the whole folder: a burst of them once
# overflowed the pool's queue (500 pages, and a seal that could not be
# queued).  A worker now runs two queries at a time, the others wait
# their turn (up to a bound, then 503 in the OpenAI format).

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use IO::Socket::INET;
use JSON::PP;
use Smartflow::Audit;
use Test::More;

my $conf = $ENV{TEST_NGINX_SMARTFLOW_CONF} // Smartflow::Audit::top() . '/conf';

# a pool of one thread and a queue of four: a burst is more than that
my $gw = Smartflow::Audit->new(name => 'audit-api-queue', workers => 1,
    main => "thread_pool audit_q threads=1 max_queue=4;\n",
    http => "    smartflow_audit_thread_pool audit_q;\n"
          . "    smartflow_audit_segment_size 4k;\n",
    server => "        include $conf/smartflow_audit.conf;\n");
$gw->setup->start;

# the records go in five at a time, each group's seals done before the
# next: the queue of four is for the burst of proofs below, not for seals
# that a loaded machine runs slower than the requests close segments
my @ids;
for my $i (1 .. 40) {
    my $r = $gw->chat("queue $i");
    my ($id) = ($r->{headers}{'smartflow-audit-receipt'} // '') =~ /id=(\w+)/;
    push @ids, $id;
    $gw->settle unless $i % 5;
}
is(scalar(grep { defined } @ids), 40, 'forty receipts');
ok($gw->settle, 'sealed');

# twenty-four proofs asked at once: one in three for a receipt, the
# others for ids that are nowhere
my @ask = map { $_ % 3 ? sprintf('%032x', $_ + 1) : $ids[$_] } 0 .. 23;
my @c = map {
    IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $gw->port)
        or die "connect: $!"
} @ask;

for my $i (0 .. $#c) {
    $c[$i]->print("GET /api/audit/proof/$ask[$i] HTTP/1.0\r\n"
                  . "Host: localhost\r\n\r\n");
}

my (@bad, $found, $missing);
for my $i (0 .. $#c) {
    local $/;
    my $res = readline($c[$i]) // '';
    my ($code) = $res =~ m{^HTTP/1\.\d (\d+)};
    my ($body) = $res =~ /\r\n\r\n(.*)\z/s;
    my $j = eval { decode_json($body // '') };
    $code //= 0;

    if (!($i % 3) && $code =~ /^20[02]$/ && $j
        && ($j->{record}{request_id} // '') eq $ask[$i])
    {
        $found++;

    } elsif ($i % 3 && $code == 404 && $j
             && ($j->{error}{code} // '') eq 'record_not_found')
    {
        $missing++;

    } else {
        push @bad, "$ask[$i]: $code";
    }
}

is("@bad", '', 'no query of the burst failed');
is($found, 8, 'each receipt found its record');
is($missing, 16, 'each unknown id a 404 in the OpenAI format');

# the segments closed after the burst are sealed as before
$gw->chat("after $_") for 1 .. 6;
ok($gw->settle, 'sealed after the burst');

$gw->stop;

my $log = do { open my $fh, '<', $gw->root . '/logs/error.log' or die;
               local $/; <$fh> };
unlike($log, qr/queue overflow/, 'the thread pool\'s queue never overflowed');
unlike($log, qr/could not be queued/, 'every seal was queued');

my ($rc) = $gw->verify;
is($rc, 0, 'the folder verifies');

done_testing;
