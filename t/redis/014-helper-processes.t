# nginx's cache manager and cache loader run every module's process
# start, as workers do, but serve no requests: they neither connect to
# Redis nor poll it.  A node with two workers and a proxy_cache_path (so
# a cache manager runs beside them), with the keys and the MetaCache on
# Redis, holds two connections to Redis, one a worker, and keeps two
# while it runs.
use strict;
use warnings;

use Test::More;
use Time::HiRes qw(sleep);
use lib 't/lib';
use Smartflow::Cluster;

my $c = Smartflow::Cluster->new(name => 'helper-processes');
$c->redis_start;

my $root = "$c->{root}/a";
my $a = $c->node('a', port => $ENV{TEST_NGINX_PORT} || 3100,
                 modules => ['cache'],
                 http => "    smartflow_cache_zone mc 8m entries=200;\n"
                         . "    proxy_cache_path $root/pc"
                         . " keys_zone=pc:1m;\n");

# the children of the master, by their titles
sub titles {
    my @t;
    for my $pid ($c->workers($c->pid($a))) {
        open my $fh, '<', "/proc/$pid/cmdline" or next;
        local $/;
        my $cmd = <$fh>;
        close $fh;
        $cmd =~ s/\0+$//;
        push @t, $cmd;
    }
    return @t;
}

# Redis's clients but the command line's own
sub clients {
    my $list = $c->redis_cli('CLIENT', 'LIST') // '';
    return scalar grep { !/\bcmd=client\|list\b/ } split /\n/, $list;
}

my @t = titles();
is scalar(grep { /worker process/ } @t), 2, 'two workers run';
ok scalar(grep { /cache manager process/ } @t),
   'a cache manager runs beside them' or diag join ', ', @t;

# the workers poll Redis every quarter of a second; a cache manager that
# connected would have done so by now
sleep(1.5 * $c->{slow});
is clients(), 2, 'Redis has one connection for each worker, none for '
                 . 'the cache manager';

my ($status) = $c->http($a, 'GET', '/ping');
is $status, 200, 'the node serves';
sleep(1 * $c->{slow});
is clients(), 2, 'and still two connections a second later';

unlike $c->error_log($a), qr/\[(?:alert|emerg|crit)\]/,
       'nothing alarming in the error log';

$c->shutdown;
done_testing;
