# snapshot=PATH is the zone as nginx left it when it stopped: it is read
# once, by the start that follows, and not again.  A zone made afresh
# later (a reload that changes the zone's size, a start after a crash,
# when no snapshot was written) starts empty: read again, the old file
# would bring back the entries flushed since (answers an operator had
# removed).  "nginx -t", or a start that fails before it listens, reads
# nothing away.  A snapshot cut short (at a record's end too), or with a
# byte changed, gives the entries before the damage, and says so; a record
# forged with a right CRC-32 but a vector no embedder gives is left out.
# A real nginx with a master and two workers.

use strict;
use warnings;

use Test::More;
use Compress::Zlib qw(crc32);
use Time::HiRes qw(sleep);
use IO::Socket::INET;
use lib 't/lib';
use Smartflow::Cluster;

my $c = Smartflow::Cluster->new(name => 'cache-snapshot-once');
$c->redis_start;

my $snap = "$c->{root}/metacache.snap";

my $a = $c->node('a', port => $ENV{TEST_NGINX_PORT} || 3100,
    modules => ['cache'],
    http    => "    smartflow_cache_zone metacache 8m entries=200 "
               . "snapshot=$snap;\n"
               . "    smartflow_cache metacache;\n"
               . "    smartflow_cache_redis off;\n"
               . "    smartflow_cache_ttl 3600s;\n",
    server  => "        include $c->{conf}/smartflow_cache.conf;\n");

my @master = ("Authorization: Bearer $Smartflow::Cluster::Master");

sub ask {
    my ($q) = @_;
    my ($status, $body, $h) = $c->http($a, 'POST', '/v1/chat/completions',
        qq({"model":"smartflow-echo","messages":)
        . qq([{"role":"user","content":"$q"}]}), @master);
    return $h->{'x-smartflow-cache'} // "status $status";
}

sub flush {
    my ($status, $body) = $c->http($a, 'DELETE', '/api/metacache', undef,
                                   @master);
    return $body;
}

# The records of the snapshot, as ngx_http_smartflow_cache_snapshot.c
# writes them: a head of 28 bytes (magic, dim, minhash, records, the
# length of the embedders' line, CRC-32), that line, then each record: 352
# bytes (part_len, query_len, answer_len at 64, 68, 72, its CRC-32 at 76),
# dim floats, the partition, the query, the answer.  Each record named
# is given to the sub with its vector, then its CRC-32 is
# made right again.  A record is known by its answer, the echo of its
# question.
sub forge {
    my ($file, %change) = @_;
    open my $fh, '<:raw', $file or die "$file: $!";
    my $data = do { local $/; <$fh> };
    close $fh;
    my ($magic, $dim, $mh, $records, $elen) = unpack 'a8 V V V V', $data;
    die "not a snapshot: $magic" unless $magic eq 'SFMC0006';
    my $off = 28 + $elen;
    my $n = 0;
    while ($off < length $data) {
        my ($part, $qlen, $alen) = unpack 'V V V', substr($data, $off + 64, 12);
        my $size = 352 + 4 * $dim + $part + $qlen + $alen;
        my $answer = substr($data, $off + 352 + 4 * $dim + $part + $qlen,
                            $alen);
        for my $q (keys %change) {
            next unless index($answer, "Echo: $q") >= 0;
            my @v = unpack 'f<*', substr($data, $off + 352, 4 * $dim);
            $change{$q}->(\@v);
            substr($data, $off + 352, 4 * $dim) = pack 'f<*', @v;
            my $rec = substr($data, $off, $size);
            substr($rec, 76, 4) = pack 'V', 0;
            substr($data, $off + 76, 4) = pack 'V', crc32($rec);
            $n++;
        }
        $off += $size;
    }
    die "forged $n records, not " . keys(%change) if $n != keys %change;
    open $fh, '>:raw', $file or die "$file: $!";
    print $fh $data;
    close $fh;
}

# the master and its workers gone at once, as in a crash
sub crash {
    my $pid = $c->pid($a) or die 'no master';
    my @workers = grep { /^\d+$/ } map { s/\s+//gr }
                  split /\n/, `ps -o pid= --ppid $pid`;
    kill 'KILL', $pid, @workers;
    for (1 .. 100) {
        last unless grep { kill 0, $_ } $pid, @workers;
        sleep 0.05;
    }
    Smartflow::Cluster::_wait_port($a->{port}, 0);
}

my $q1 = 'What is the boiling point of water at sea level?';
my $q2 = 'How far is the Moon from the Earth?';
my $q3 = 'Name the largest planet in the solar system.';

is ask($q1), 'MISS', 'q1 stored';
is ask($q2), 'MISS', 'q2 stored';
is ask($q1), 'HIT', 'q1 from the zone';

# stopped and started: the entries are back; the file, of the users'
# questions and answers, is the master's user's only, even written over
# a temporary file a crash left readable by all
open my $stale, '>', "$snap.tmp" or die "$snap.tmp: $!";
close $stale;
chmod 0644, "$snap.tmp";
$c->stop($a);
ok -s $snap, 'the snapshot written at the stop';
is sprintf('%o', (stat $snap)[2] & 0777), '600',
   'readable by the master\'s user only';
$c->start($a);
like $c->error_log($a), qr/smartflow cache: 2 entries of zone "metacache" read from/,
     'read at the start';
is ask($q1), 'HIT', 'q1 back after the restart';

# flushed, then a reload gives the zone another size: a new zone
like flush(), qr/^\{"flushed":2\}$/, 'both flushed';
my $conf = do {
    local (@ARGV, $/) = "$a->{dir}/nginx.conf";
    <>;
};
$conf =~ s/metacache 8m/metacache 16m/ or die 'no zone line';
open my $fh, '>', "$a->{dir}/nginx.conf" or die $!;
print $fh $conf;
close $fh;
$c->reload($a);
is ask($q2), 'MISS', 'a reload to a new zone: the flushed q2 stays gone';
is ask($q1), 'MISS', 'and q1 too';

# a crash: nothing written, and the old snapshot is not read again
like flush(), qr/^\{"flushed":2\}$/, 'flushed again';
crash();
$c->start($a);
is ask($q2), 'MISS', 'after a crash: the flushed q2 stays gone';

# nginx -t reads nothing away from the next start
ask($q3);
is ask($q3), 'HIT', 'q3 stored';
$c->stop($a);
ok -s $snap, 'written at the stop';
my $two = -s $snap;     # q2 and q3
my $out = `$c->{binary} -t -p $a->{dir} -c $a->{dir}/nginx.conf 2>&1`;
is $? >> 8, 0, 'nginx -t passes';
$c->start($a);
is ask($q3), 'HIT', 'q3 back after nginx -t and a start';

# a snapshot cut short: the entries before the cut are read, and the log
# says so (q2, q3 then q1, oldest first; q1's record loses its end)
is ask($q1), 'MISS', 'q1 stored';
$c->stop($a);
truncate $snap, (-s $snap) - 3 or die "truncate $snap: $!";
$c->start($a);
like $c->error_log($a),
     qr/\[warn\].*smartflow cache: the snapshot "\Q$snap\E" is damaged part of the way: 2 entries before the damage are read into zone "metacache", the rest is left out/,
     'a snapshot cut short: the log says what was read';
is ask($q2), 'HIT', 'q2, before the cut, is back';
is ask($q3), 'HIT', 'and q3';
is ask($q1), 'MISS', 'q1, cut, is not';

# cut where a record ends: the head says how many were written, so the
# cut shows (q2, q3 then q1: the file ends where q1's record began)
$c->stop($a);
truncate $snap, $two or die "truncate $snap: $!";
$c->start($a);
my @cut = $c->error_log($a)
          =~ /damaged part of the way: 2 entries before the damage/g;
is scalar(@cut), 2, 'a snapshot cut at a record\'s end: the log says so';
is ask($q2), 'HIT', 'q2, before the cut, is back';
is ask($q3), 'HIT', 'and q3';
is ask($q1), 'MISS', 'q1, after the cut, is not';

# a byte of an answer changed on disk: that record is left out, not served
# (q2, q3 then q1 again; a letter near the end of q1's answer changes case)
$c->stop($a);
{
    open my $fh, '+<', $snap or die "$snap: $!";
    binmode $fh;
    seek $fh, -5, 2;
    read $fh, my $byte, 1;
    die "not a letter: $byte" unless $byte =~ /[A-Za-z]/;
    seek $fh, -5, 2;
    print $fh ($byte ^ ' ');
    close $fh;
}
$c->start($a);
my @damaged = $c->error_log($a)
               =~ /damaged part of the way: 2 entries before the damage/g;
is scalar(@damaged), 3, 'a record changed on disk: the log says so again';
is ask($q1), 'MISS', 'the changed answer is not served';
is ask($q2), 'HIT', 'the records before it are';

# records forged, their CRC-32 made right: a vector with a NaN, one with
# an infinity, one twice as long as an embedder makes it are left out;
# the zero vector of an answer stored without one is read
my $q4 = 'Which ocean is the deepest?';
is ask($q4), 'MISS', 'q4 stored';
$c->stop($a);
my $inf = 9**9**9;
forge($snap,
      $q3 => sub { $_[0][0] = $inf - $inf },
      $q1 => sub { $_[0][1] = $inf },
      $q2 => sub { $_ *= 2 for @{ $_[0] } },
      $q4 => sub { $_ = 0 for @{ $_[0] } });
$c->start($a);
like $c->error_log($a),
     qr/\[warn\].*smartflow cache: the snapshot "\Q$snap\E" is damaged: 3 of its entries are left out, their vectors \(not finite, or not of length 1\) are no embedder's/,
     'forged vectors: the log says how many are left out';
like $c->error_log($a),
     qr/smartflow cache: 1 entries of zone "metacache" read from/,
     'the others are read';
is ask($q4), 'HIT', 'q4, of the zero vector, is back';
is ask($q1), 'MISS', 'q1, of an infinity, is not';
is ask($q2), 'MISS', 'nor q2, of length 2';
is ask($q3), 'MISS', 'nor q3, of a NaN';

# a start that fails before it listens (its port taken) leaves the
# snapshot for the start that follows
$c->stop($a);
ok -s $snap, 'written at the stop';
my $taken = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                  LocalPort => $a->{port}, Listen => 1,
                                  ReuseAddr => 1) or die "listen: $!";
my $rc = system("$c->{binary} -p $a->{dir} -c $a->{dir}/nginx.conf "
                . '2>/dev/null');
isnt $rc, 0, 'the start failed: its port is taken';
ok -s $snap, 'the snapshot is still there';
close $taken;
$c->start($a);
is ask($q3), 'HIT', 'q3 back at the start that follows';

unlike $c->error_log($a), qr/\[(?:alert|crit)\]|exited on signal/,
       'no crash';

done_testing;
