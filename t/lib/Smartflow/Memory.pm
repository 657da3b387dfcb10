package Smartflow::Memory;

# What a running nginx keeps in memory, for the tests that a secret is
# wiped once done with: left(STRING, ...) gives the strings found
# anywhere in the writable memory of the nginx of the block (the one
# process of master_process off: its heap, stacks and shared zones), one
# a line, read through /proc/PID/mem.

use strict;
use warnings;

sub left {
    my @needles = @_;
    my $pidfile = Test::Nginx::Util::server_root() . '/logs/nginx.pid';
    open my $pf, '<', $pidfile or return "no pid file: $!\n";
    chomp(my $pid = <$pf>);
    close $pf;

    open my $maps, '<', "/proc/$pid/maps" or return "no maps: $!\n";
    open my $mem, '<:raw', "/proc/$pid/mem" or return "no mem: $!\n";
    my %found;
    my $chunk = 4 << 20;
    my $keep = 64;

    no warnings 'portable';
    while (my $line = <$maps>) {
        my ($lo, $hi, $perm, $path) =
            $line =~ /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$/
            or next;
        next unless $perm =~ /^rw/;
        ($lo, $hi) = (hex $lo, hex $hi);
        # the sanitizer's shadow and reserved spaces are not nginx's data
        next if $hi - $lo > (1 << 30);

        my $tail = '';
        for (my $at = $lo; $at < $hi; $at += $chunk) {
            my $n = $hi - $at < $chunk ? $hi - $at : $chunk;
            my $buf;
            sysseek($mem, $at, 0) or last;
            defined sysread($mem, $buf, $n) or last;
            $buf = $tail . $buf;
            for my $s (@needles) {
                $found{$s} = 1 if index($buf, $s) >= 0;
            }
            $tail = substr($buf, -$keep);
        }
    }

    return join '', map { "$_\n" } grep { $found{$_} } @needles;
}

1;
