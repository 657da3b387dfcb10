# The Merkle code against every RFC 6962 inclusion and consistency vector
# of ../shared/testdata/merkle (transparency-dev/merkle), read in place:
# the valid proofs hold, every deliberately broken one is rejected.  The
# checks run through smartflow-verify --merkle-vectors, which uses the
# same ngx_smartflow_merkle.c as the audit module.

use strict;
use warnings;
use File::Find;
use FindBin;
use IPC::Open2;
use JSON::PP;
use MIME::Base64;
use Test::More;

my $top = "$FindBin::Bin/../..";
my $vectors = $ENV{SMARTFLOW_MERKLE_VECTORS} // "$top/../shared/testdata/merkle";
my $verify = $ENV{SMARTFLOW_VERIFY} // "$top/build/smartflow-verify";

plan skip_all => "no vectors in $vectors" unless -d "$vectors/inclusion";
die "build $verify first (make verify)\n" unless -x $verify;

sub hex_of { my $b = shift; return '-' if !defined $b || $b eq '';
             return unpack 'H*', decode_base64($b) }

sub proof_of {
    my $p = shift;
    return '-' if !defined $p || !@$p;
    # an empty element is no hash: written so that it cannot read as one
    return join ',', map { $_ eq '' ? 'empty' : hex_of($_) } @$p;
}

my (@lines, @cases);

for my $kind (qw(inclusion consistency)) {
    my @files;
    find(sub { push @files, $File::Find::name if /\.json\z/ },
         "$vectors/$kind");

    for my $f (sort @files) {
        open my $fh, '<', $f or die "$f: $!";
        my $v = decode_json(do { local $/; <$fh> });
        close $fh;

        if ($kind eq 'inclusion') {
            push @lines, join ' ', 'inclusion', $v->{leafIdx}, $v->{treeSize},
                hex_of($v->{leafHash}), hex_of($v->{root}),
                proof_of($v->{proof});
        } else {
            push @lines, join ' ', 'consistency', $v->{size1}, $v->{size2},
                hex_of($v->{root1}), hex_of($v->{root2}),
                proof_of($v->{proof});
        }

        (my $name = $f) =~ s{^\Q$vectors\E/}{};
        push @cases, [ $name, $v->{wantErr} ? 'bad' : 'ok' ];
    }
}

cmp_ok(scalar @cases, '>=', 196, 'the inclusion and consistency vectors');

my $pid = open2(my $out, my $in, $verify, '--merkle-vectors');
print $in "$_\n" for @lines;
close $in;
my @got = map { chomp; $_ } <$out>;
waitpid $pid, 0;

is(scalar @got, scalar @cases, 'one verdict per vector');

my %valid;
for my $i (0 .. $#cases) {
    is($got[$i], $cases[$i][1], $cases[$i][0]);
    $valid{$cases[$i][0] =~ m{^(\w+)/} ? $1 : ''}++
        if $cases[$i][1] eq 'ok';
}

# the vectors' own count of valid proofs: 6 of each
is($valid{inclusion}, 6, 'six valid inclusion proofs');
is($valid{consistency}, 6, 'six valid consistency proofs');

done_testing();
