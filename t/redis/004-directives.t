# smartflow_redis: what nginx -t accepts and what it refuses, with the
# message an operator sees.

use strict;
use warnings;

use Test::More;
use lib 't/lib';
use Smartflow::Cluster;

my $c = Smartflow::Cluster->new(name => 'directives');
my $port = $c->redis_port;
my $zone = 'smartflow_keys_zone keys 1m;';

my @good = (
    "$zone smartflow_redis 127.0.0.1:$port;",
    "$zone smartflow_redis localhost:$port password=secret db=3"
        . " timeout=250ms fail=closed;",
    "$zone smartflow_redis 127.0.0.1 fail=open;",
);

for my $conf (@good) {
    my ($rc, $out) = $c->conf_test($conf);
    is $rc, 0, "accepted: $conf" or diag $out;
}

my @bad = (
    [ "smartflow_redis 127.0.0.1:$port; $zone",
      qr/"smartflow_redis" directive needs smartflow_keys_zone before it/ ],
    [ "$zone smartflow_redis 127.0.0.1:$port; smartflow_redis 127.0.0.1;",
      qr/"smartflow_redis" directive is duplicate/ ],
    [ "$zone smartflow_redis 127.0.0.1:99999;",
      qr/invalid smartflow_redis address "127.0.0.1:99999"/ ],
    [ "$zone smartflow_redis no-such-host.invalid:$port;",
      qr/invalid smartflow_redis address/ ],
    [ "$zone smartflow_redis 127.0.0.1 fail=maybe;",
      qr/invalid smartflow_redis parameter "fail=maybe"/ ],
    [ "$zone smartflow_redis 127.0.0.1 timeout=0;",
      qr/invalid smartflow_redis parameter "timeout=0"/ ],
    [ "$zone smartflow_redis 127.0.0.1 db=x;",
      qr/invalid smartflow_redis parameter "db=x"/ ],
    [ "$zone smartflow_redis 127.0.0.1 password=;",
      qr/invalid smartflow_redis parameter "password="/ ],
    [ "$zone smartflow_redis 127.0.0.1 colour=blue;",
      qr/invalid smartflow_redis parameter "colour=blue"/ ],
    [ "$zone smartflow_redis;",
      qr/invalid number of arguments in "smartflow_redis"/ ],
);

for my $case (@bad) {
    my ($conf, $re) = @$case;
    my ($rc, $out) = $c->conf_test($conf);
    isnt $rc, 0, "refused: $conf";
    like $out, $re, '... with a clear message';
}

done_testing;
