package Smartflow::Conf;

# The shipped conf/smartflow_locations.conf as a test's server config: its
# relative includes (smartflow_proxy.conf ...)
# resolve against the conf prefix of the nginx that runs the test, so they
# are made to point at the checkout's conf/ instead.

use strict;
use warnings;

sub shipped_locations {
    my ($dir) = @_;

    $dir //= $ENV{TEST_NGINX_SMARTFLOW_CONF}
        or die "TEST_NGINX_SMARTFLOW_CONF is not set\n";

    open my $fh, '<', "$dir/smartflow_locations.conf"
        or die "cannot read $dir/smartflow_locations.conf: $!\n";
    local $/;
    my $conf = <$fh>;
    close $fh;

    $conf =~ s{^(\s*include\s+)([^/\s;]+\.conf);}{$1$dir/$2;}mg;

    return $conf;
}

1;
