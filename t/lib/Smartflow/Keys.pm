package Smartflow::Keys;

# Virtual keys across test blocks.  A key's secret exists only in the
# answer that made it, so this module remembers what the admin API returns
# and lets later blocks name it:
#
#     use lib 't/lib';
#     use Smartflow::Keys;
#
#     add_block_preprocessor(sub {
#         my $block = shift;
#         ...
#         Smartflow::Keys::substitute($block);
#         return $block;
#     });
#
# Every response body holding "key":"sk-sf-..." (create, rotate) is
# remembered under the key's "name".  Before a block runs, these
# placeholders in its request, more_headers, response and log sections are
# replaced:
#
#     %KEY(name)%      the key's secret (the latest, after a rotation)
#     %OLDKEY(name)%   the secret it had before its last rotation
#     %ID(name)%       its id, vk_N
#     %PREFIX(name)%   the prefix shown for it, sk-sf-xxxxxxxx
#
# Blocks that use them must run in order (no_shuffle()).
#
# burst($n, $method, $path, $body, @headers) sends $n requests at once, each
# on its own connection to the nginx under test, and returns their answers
# as [status, body] pairs (for --- init code in multi-worker blocks).
#
# reload() sends SIGHUP to the nginx under test once it is up, and
# returns once its old workers have exited and new ones run.

use strict;
use warnings;

use IO::Select;
use IO::Socket::INET;
use Test::Nginx::Socket ();

our $VERSION = '0.01';

our (%Key, %OldKey, %Id, %Prefix);

my @Sections = qw(request more_headers response_body response_body_like
                  response_headers response_headers_like error_log
                  no_error_log);

sub remember {
    my ($body) = @_;
    return unless defined $body;
    return unless $body =~ /"key":"(sk-sf-[0-9a-f]{48})"/;
    my $key = $1;
    my ($name) = $body =~ /"name":"((?:[^"\\]|\\.)*)"/;
    my ($id) = $body =~ /"id":"(vk_\d+)"/;
    my ($prefix) = $body =~ /"prefix":"(sk-sf-[0-9a-f]+)"/;
    return unless defined $name;
    $OldKey{$name} = $Key{$name} if defined $Key{$name};
    $Key{$name} = $key;
    $Id{$name} = $id;
    $Prefix{$name} = $prefix;
}

sub _lookup {
    my ($table, $what, $name) = @_;
    die "Smartflow::Keys: no $what for \"$name\" yet (blocks out of order?)\n"
        unless defined $table->{$name};
    return $table->{$name};
}

sub _fill {
    my ($text) = @_;
    return $text unless defined $text && !ref $text;
    $text =~ s/%KEY\(([^)]+)\)%/_lookup(\%Key, 'key', $1)/ge;
    $text =~ s/%OLDKEY\(([^)]+)\)%/_lookup(\%OldKey, 'old key', $1)/ge;
    $text =~ s/%ID\(([^)]+)\)%/_lookup(\%Id, 'id', $1)/ge;
    $text =~ s/%PREFIX\(([^)]+)\)%/_lookup(\%Prefix, 'prefix', $1)/ge;
    return $text;
}

sub substitute {
    my ($block) = @_;
    for my $section (@Sections) {
        my $value = $block->$section;
        next unless defined $value;
        if (ref $value eq 'ARRAY') {
            $block->set_value($section, [ map { _fill($_) } @$value ]);
        } elsif (!ref $value && $value =~ /%(?:OLD)?(?:KEY|ID|PREFIX)\(/) {
            $block->set_value($section, _fill($value));
        }
    }
    return $block;
}

# the i-th of a series of made-up words: "zq", then the hexadecimal digits
# of i as the letters a to p (no plural "s", no word of the cache's lists)
sub made_up {
    my ($i) = @_;
    my $w = 'zq';
    for (my $n = $i; $n; $n = int($n / 16)) {
        $w .= chr(97 + $n % 16);
    }
    return $w;
}

sub burst {
    my ($n, $method, $path, $body, @headers) = @_;
    my $port = Test::Nginx::Util::server_port_for_client();
    my $request = "$method $path HTTP/1.1\r\nHost: localhost\r\n"
                  . "Connection: close\r\n"
                  . join('', map { "$_\r\n" } @headers)
                  . (defined $body
                     ? "Content-Type: application/json\r\n"
                       . 'Content-Length: ' . length($body) . "\r\n\r\n$body"
                     : "\r\n");

    my (@socks, %buf);
    for my $i (1 .. $n) {
        my $sock;
        # nginx may still be starting (under valgrind it takes seconds)
        _wait_for_port() if $i == 1;
        $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $port, Proto => 'tcp',
                                      Timeout => 5)
            or die "Smartflow::Keys: cannot connect to port $port: $!\n";
        push @socks, $sock;
        $buf{$sock} = '';
    }

    # every request is out before any answer is read
    $_->syswrite($request) for @socks;

    my $sel = IO::Select->new(@socks);
    my $deadline = time + 20;
    while ($sel->count && time < $deadline) {
        for my $sock ($sel->can_read(1)) {
            my $got = $sock->sysread(my $chunk, 65536);
            if ($got) {
                $buf{$sock} .= $chunk;
            } else {
                $sel->remove($sock);
                $sock->close;
            }
        }
    }

    return [ map {
        my ($status) = $buf{$_} =~ m{^HTTP/1\.\d (\d+)};
        my (undef, $content) = split /\r\n\r\n/, $buf{$_}, 2;
        [ $status // 0, $content // '' ]
    } @socks ];
}

sub _wait_for_port {
    my $port = Test::Nginx::Util::server_port_for_client();
    for (1 .. 200) {
        my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                         PeerPort => $port, Proto => 'tcp',
                                         Timeout => 5);
        if ($sock) {
            close $sock;
            return;
        }
        select(undef, undef, undef, 0.1);
    }
    die "Smartflow::Keys: nothing listens on port $port\n";
}

sub reload {
    _wait_for_port();
    my $file = Test::Nginx::Util::server_root() . '/logs/nginx.pid';
    open my $fh, '<', $file
        or die "Smartflow::Keys: cannot read $file: $!\n";
    my $pid = do { local $/; <$fh> };
    close $fh;
    $pid =~ s/\s+//g;
    my @old = _workers($pid);
    kill 'HUP', $pid
        or die "Smartflow::Keys: cannot signal nginx $pid: $!\n";

    # one process (master_process off): it reconfigures itself at once
    return select(undef, undef, undef, 1.5) unless @old;

    # until the old workers have gone and new ones run (30 s at most)
    for (1 .. 600) {
        my %now = map { $_ => 1 } _workers($pid);
        last if %now && !grep { $now{$_} } @old;
        select(undef, undef, undef, 0.05);
    }
}

# the worker processes of a master, by pid
sub _workers {
    my ($master) = @_;
    my @pids;
    opendir my $dh, '/proc' or return;
    for my $pid (grep { /^\d+$/ } readdir $dh) {
        open my $fh, '<', "/proc/$pid/stat" or next;
        my $stat = <$fh>;
        close $fh;
        # pid (comm) state ppid ...
        push @pids, $pid if $stat && $stat =~ /\) \S+ (\d+) / && $1 == $master;
    }
    closedir $dh;
    return @pids;
}

Test::Nginx::Socket::add_response_body_check(sub {
    my ($block, $body) = @_;
    remember($body);
});

1;
