# DELETE /api/metacache with Redis, when the SCAN walk does not end as a
# Redis's does.  A real redis-server behind a small proxy of the test's own
# that rewrites the SCAN answers on the way (as a misbehaving Redis proxy
# would): a cursor that never comes back as 0 (a keyspace growing faster
# than the walk), the cursor it was sent, a cursor that is not a number,
# keys that are not the cache's.  The flush answers in every case, with
# what it flushed, a clear JSON error and an error_log line; the walk is
# bounded by the API's flush_timeout.  The last batch of a walk (cursor 0
# with keys) is UNLINKed.

use strict;
use warnings;

use Test::More;
use IO::Select;
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(sleep time);
use lib 't/lib';
use Smartflow::Cluster;

$ENV{TEST_NGINX_FIXTURE_PORT} ||= 1988;

my $c = Smartflow::Cluster->new(name => 'cache-flush-bound');
$c->redis_start;

my $proxy_port = $ENV{TEST_NGINX_FIXTURE_PORT};
my $mode_file = "$c->{root}/scan-mode";

sub mode {
    open my $fh, '>', "$mode_file.tmp" or die "$mode_file: $!";
    print $fh $_[0];
    close $fh;
    rename "$mode_file.tmp", $mode_file or die "$mode_file: $!";
}

# one RESP value from $$buf at $pos: (value, end) or () when incomplete;
# a value is [type, data], data an array of values for '*'
sub resp {
    my ($buf, $pos) = @_;
    my $eol = index $$buf, "\r\n", $pos;
    return if $eol < 0;
    my $type = substr $$buf, $pos, 1;
    my $line = substr $$buf, $pos + 1, $eol - $pos - 1;
    my $next = $eol + 2;
    if ($type eq '$') {
        return (['$', undef], $next) if $line < 0;
        return if length($$buf) < $next + $line + 2;
        return (['$', substr($$buf, $next, $line)], $next + $line + 2);
    }
    if ($type eq '*') {
        return (['*', undef], $next) if $line < 0;
        my @items;
        for (1 .. $line) {
            my ($v, $end) = resp($buf, $next) or return;
            push @items, $v;
            $next = $end;
        }
        return (['*', \@items], $next);
    }
    return ([$type, $line], $next);
}

sub enc {
    my ($v) = @_;
    my ($type, $data) = @$v;
    return $type . (defined $data ? scalar @$data : -1) . "\r\n"
           . join('', map { enc($_) } @{ $data || [] })
        if $type eq '*';
    return defined $data ? '$' . length($data) . "\r\n$data\r\n" : "\$-1\r\n"
        if $type eq '$';
    return "$type$data\r\n";
}

# the proxy: every command goes to Redis, every answer back, in order; a
# SCAN and its answer are rewritten as the mode file says
sub proxy {
    my $listen = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                       LocalPort => $proxy_port,
                                       Listen => 16, ReuseAddr => 1)
        or die "proxy: $!";
    my $sel = IO::Select->new($listen);
    my (%peer, %in, %queue, %client);
    my $round = 100;
    while (1) {
        for my $s ($sel->can_read) {
            if ($s == $listen) {
                my $cl = $listen->accept or next;
                my $up = IO::Socket::INET->new(
                    PeerAddr => '127.0.0.1', PeerPort => $c->redis_port)
                    or do { close $cl; next };
                $peer{$cl} = $up;
                $peer{$up} = $cl;
                $client{$cl} = 1;
                $queue{$cl} = [];
                $in{$cl} = $in{$up} = '';
                $sel->add($cl, $up);
                next;
            }
            my $got = sysread $s, my $chunk, 65536;
            if (!$got) {
                my $o = $peer{$s};
                $sel->remove($s, $o);
                close $_ for $s, $o;
                delete @peer{$s, $o};
                next;
            }
            $in{$s} .= $chunk;
            my $mode = do { local (@ARGV, $/) = $mode_file; <> } // 'pass';
            my $out = '';
            my $pos = 0;
            if ($client{$s}) {
                while (my ($v, $end) = resp(\$in{$s}, $pos)) {
                    my $cmd = $v->[0] eq '*' ? uc $v->[1][0][1] : '';
                    push @{ $queue{$s} }, $cmd;
                    if ($cmd eq 'SCAN' && $mode ne 'pass') {
                        # Redis walks from the start each time
                        $v->[1][1][1] = '0';
                        $out .= enc($v);
                    } else {
                        $out .= substr $in{$s}, $pos, $end - $pos;
                    }
                    $pos = $end;
                }
            } else {
                my $cl = $peer{$s};
                while (my ($v, $end) = resp(\$in{$s}, $pos)) {
                    my $cmd = shift @{ $queue{$cl} } // '';
                    if ($cmd eq 'SCAN' && $mode ne 'pass'
                        && $v->[0] eq '*')
                    {
                        my $cursor = $v->[1][0];
                        $cursor->[1] = $mode eq 'endless' ? ++$round
                                     : $mode eq 'same'    ? '7'
                                     : $mode eq 'junk'    ? '7abc'
                                     : $cursor->[1];
                        push @{ $v->[1][1][1] }, ['$', 'smartflow:key:1'],
                             ['$', 'smartflow:cachex:1']
                            if $mode eq 'foreign';
                        $out .= enc($v);
                    } else {
                        $out .= substr $in{$s}, $pos, $end - $pos;
                    }
                    $pos = $end;
                }
            }
            substr($in{$s}, 0, $pos) = '';
            my $o = $peer{$s};
            syswrite $o, $out if length $out;
        }
    }
}

mode('pass');
my $proxy_pid = fork;
die "fork: $!" unless defined $proxy_pid;
if ($proxy_pid == 0) {
    proxy();
    POSIX::_exit(0);
}
END {
    local $?;
    if ($proxy_pid) { kill "KILL", $proxy_pid; waitpid $proxy_pid, 0 }
}
for (1 .. 100) {
    last if IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $proxy_port);
    sleep 0.05;
}

my $a = $c->node('a', port => $ENV{TEST_NGINX_PORT} || 3100,
    redis => "127.0.0.1:$proxy_port timeout=$c->{slow}000ms fail=open",
    modules => ['cache'],
    http    => "    smartflow_cache_zone metacache 8m entries=200;\n"
               . "    smartflow_cache metacache;\n"
               . "    smartflow_cache_ttl 300s;\n",
    server  => "        location /api/metacache {\n"
               . "            smartflow_cache_api flush_timeout=1s;\n"
               . "        }\n");

my @master = ("Authorization: Bearer $Smartflow::Cluster::Master");

sub ask {
    my ($q) = @_;
    return $c->http($a, 'POST', '/v1/chat/completions',
                    qq({"model":"smartflow-echo","messages":)
                    . qq([{"role":"user","content":"$q"}]}), @master);
}

sub flush {
    my $t0 = time;
    my @r = $c->http($a, 'DELETE', '/api/metacache', undef, @master);
    return (@r, time - $t0);
}

sub cache_keys {
    my $out = $c->redis_cli('--scan', '--pattern', 'smartflow:cache:*');
    return grep { length } split /\n/, $out // '';
}

sub wait_for {
    my ($what, $cond) = @_;
    my $t0 = time;
    until ($cond->()) {
        return fail "$what: not within 10 s" if time - $t0 > 10;
        sleep 0.1;
    }
    pass $what;
}

sub store {
    my $want = @_;
    ask("Question number $_ about the planets of the solar system?")
        for @_;
    wait_for "$want answer(s) in Redis", sub { cache_keys() == $want };
}

my ($status, $body, $h, $took);

# a walk of one round: cursor 0 with the keys, and they are UNLINKed
store(1 .. 3);
($status, $body) = flush();
is $status, 200, 'one SCAN round: 200';
like $body, qr/^\{"flushed":3,"redis":\{"flushed":3,"complete":true\}\}$/,
     'the last batch (cursor 0) UNLINKed';
is scalar(cache_keys()), 0, 'none left in Redis';

# a cursor that never comes back as 0: the walk stops at flush_timeout
store(4 .. 6);
mode('endless');
($status, $body, $h, $took) = flush();
is $status, 503, 'a walk that never ends: 503';
like $body, qr/^\{"error":\{"message":"Redis 127\.0\.0\.1:\d+ did not end the SCAN of the keys in 1000 ms \(\d+ rounds\): this node's cache was flushed \(3 entries\), the shared entries in Redis only in part \(3\)\. Flush again to go on\.","type":"server_error","param":null,"code":"redis_flush_timeout"\},"flushed":3,"redis":\{"flushed":3,"complete":false\}\}$/,
     'says what was flushed, and why it stopped';
ok $took < 10, 'answered within the bound';
like $c->error_log($a),
     qr/\[error\].*smartflow cache: redis \S+ did not end the SCAN of the keys in 1000 ms \(\d+ rounds\): the flush of zone "metacache" is partial \(3 entries in the zone, 3 in redis\)/,
     'the error log says so';
is scalar(cache_keys()), 0, 'what the walk found went';

# the cursor it was sent: at once, not at the bound
mode('same');
store(7);
($status, $body, $h, $took) = flush();
is $status, 503, 'the same cursor again: 503';
like $body, qr/"message":"Redis \S+ answered SCAN with the cursor it was sent: this node's cache was flushed \(1 entries\), the shared entries in Redis only in part \(1\)\. Try again when Redis answers\.".*"code":"redis_unavailable"\},"flushed":1,"redis":\{"flushed":1,"complete":false\}\}$/,
     'says so, with the counts';
like $c->error_log($a),
     qr/smartflow cache: redis \S+ answered SCAN with the cursor it was sent: the flush of zone "metacache" is partial/,
     'in the error log too';

# a cursor that is not a number is not sent back
mode('junk');
store(8);
($status, $body) = flush();
is $status, 503, 'a cursor that is not a number: 503';
like $body, qr/"message":"Redis \S+ answered SCAN with a cursor that is not a number: this node's cache was flushed \(1 entries\), the shared entries in Redis only in part \(0\)\./,
     'the batch of that answer is not trusted';
like $c->error_log($a),
     qr/smartflow cache: redis \S+ answered SCAN with a cursor that is not a number: the flush/,
     'in the error log';

# keys that are not the cache's, in a SCAN answer: they stay
mode('foreign');
$c->redis_cli('SET', $_, 'kept') for 'smartflow:key:1', 'smartflow:cachex:1';
($status, $body) = flush();
is $status, 200, 'an answer with foreign keys: 200';
like $body, qr/"redis":\{"flushed":1,"complete":true\}/,
     'only the cache\'s entry counted';
is $c->redis_cli('EXISTS', 'smartflow:key:1', 'smartflow:cachex:1'), 2,
   'the others\' keys stay';

# after all that, flushes go on as before
mode('pass');
store(9);
($status, $body) = flush();
like $body, qr/^\{"flushed":1,"redis":\{"flushed":1,"complete":true\}\}$/,
     'then a flush as any other';

unlike $c->error_log($a), qr/\[(?:alert|crit|emerg)\]|signal \d+/,
       'no crash';

# the parameter's validation
{
    my $dir = "$c->{root}/conf-test";
    mkdir $dir;
    mkdir "$dir/logs";
    for my $p ('flush_timeout=0', 'flush_timeout=abc', 'timeout=1s') {
        open my $fh, '>', "$dir/nginx.conf" or die $!;
        print $fh <<"_EOC_";
error_log $dir/logs/error.log;
pid $dir/logs/nginx.pid;
load_module $c->{modules}/ngx_http_smartflow_proxy_module.so;
load_module $c->{modules}/ngx_http_smartflow_cache_module.so;
events { }
http {
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    smartflow_cache_zone metacache 8m entries=200;
    server {
        location /api/metacache { smartflow_cache_api $p; }
    }
}
_EOC_
        close $fh;
        my $out = `$c->{binary} -t -p $dir -c $dir/nginx.conf 2>&1`;
        isnt $? >> 8, 0, "smartflow_cache_api $p: nginx refuses it";
        like $out, qr/\[emerg\].*invalid (?:parameter|flush_timeout)/,
             'with a message';
    }
}

done_testing;
