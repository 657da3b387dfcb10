# The tamper suite: a real gateway writes records (three to a segment, so
# several segments are sealed), then each record and seal is altered in a
# copy of the folder, one way at a time: a byte flipped in each field,
# the record deleted, duplicated, swapped with the next, cut short, a
# segment or seal removed, the end cut off.  smartflow-verify must reject
# every one, naming the file and line where the history stops holding,
# and accept the untouched folder.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use File::Path ();
use Smartflow::Audit;
use Test::More;

my $gw = Smartflow::Audit->new(name => 'audit-tamper', workers => 2,
    http => "    smartflow_audit_segment_size 2k;\n");
$gw->setup->start;

my @sent;
for my $i (1 .. 10) {
    my $r = $gw->chat("message $i", $i % 3 == 0 ? (stream => 1) : (),
                      $i == 5 ? (model => 'no-such-model') : ());
    push @sent, $r->{status};
}
is_deeply(\@sent, [ 200, 200, 200, 200, 404, 200, 200, 200, 200, 200 ],
          'ten answers');

ok($gw->settle, 'the closed segments are sealed');
$gw->stop;

my ($rc, $rep) = $gw->verify;
is($rc, 0, 'the untouched folder verifies');
is($rep->{records}, 10, 'ten records');
cmp_ok($rep->{sealed}, '>=', 2, 'at least two seals');
my $head = $rep->{chain_head};

my @recs = $gw->records;
is(scalar @recs, 10, 'ten record lines');

my $work = $gw->root . '/work';
my $n = 0;

sub slurp { open my $fh, '<', $_[0] or die "$_[0]: $!"; local $/; <$fh> }
sub spew  { open my $fh, '>', $_[0] or die "$_[0]: $!"; print $fh $_[1] }

# copies the folder, lets $edit change it, checks the verdict
sub tampered {
    my ($what, $edit, %want) = @_;
    my $dir = $gw->copy_dir($work . '/' . ++$n);
    $edit->($dir);
    my ($rc, $rep) = $gw->verify($dir, @{ $want{args} // [] });

    my $ok = $rc == 1 && $rep && !$rep->{ok};
    if ($ok && defined $want{file}) {
        (my $f = $rep->{error}{file}) =~ s{.*/}{};
        $ok = $f eq $want{file};
    }
    $ok &&= $rep->{error}{line} == $want{line} if defined $want{line};
    ok($ok, $what) or diag explain $rep;
}

sub base { (my $f = shift) =~ s{.*/}{}; $f }

# the lines of one segment of a copy, changed by $edit, written back
sub edit_lines {
    my ($file, $edit) = @_;
    return sub {
        my $dir = shift;
        my $path = "$dir/" . base($file);
        my @l = split /(?<=\n)/, slurp($path);
        $edit->(\@l);
        spew($path, join '', @l);
    };
}

my @fields = qw(request_id model status prompt_tokens request_sha256
                response_sha256 ts seq kid prev hmac);

for my $rec (@recs) {
    my ($file, $line, $text) = @$rec;
    my $where = base($file) . " line $line";

    for my $field (@fields) {
        # the first character of the field's value
        $text =~ /"\Q$field\E":"?/ or next;
        my $at = $+[0];

        tampered("$where: a byte of \"$field\" flipped", edit_lines($file, sub {
            my $l = shift;
            my $c = substr($l->[$line - 1], $at, 1);
            substr($l->[$line - 1], $at, 1) = $c eq '0' ? '1'
                                            : $c eq '1' ? '2' : '0';
        }), file => base($file), line => $line);
    }

    # the last record of a segment: its seal counts it, the open segment's
    # is counted by the chain head the gateway reports
    my $last = $line == grep { $_->[0] eq $file } @recs;
    my $seal = $file =~ s/\.log\z/.seal/r;

    tampered("$where: deleted", edit_lines($file, sub {
        splice @{ $_[0] }, $line - 1, 1;
    }), !$last ? (file => base($file), line => $line)
        : -e $seal ? (file => base($seal))
        : (args => [ '--head', $head ]));

    tampered("$where: duplicated", edit_lines($file, sub {
        splice @{ $_[0] }, $line - 1, 0, $_[0][$line - 1];
    }), file => base($file), line => $line + 1);

    tampered("$where: swapped with the next", edit_lines($file, sub {
        my $l = shift;
        return if $line >= @$l;
        @$l[$line - 1, $line] = @$l[$line, $line - 1];
    }), file => base($file), line => $line)
        if $line < grep { $_->[0] eq $file } @recs;

    tampered("$where: cut short", edit_lines($file, sub {
        my $l = shift;
        $l->[$line - 1] = substr($l->[$line - 1], 0,
                                 length($l->[$line - 1]) / 2);
        splice @$l, $line;
    }), file => base($file), line => $line);
}

# whole records cut off the end: sealed segments by their seal, the open
# one against the chain head the gateway reports
my @segs = sort glob $gw->dir . '/segment-*.log';
my @seals = sort glob $gw->dir . '/segment-*.seal';

for my $file (@segs) {
    my $sealed = -e ($file =~ s/\.log\z/.seal/r);
    tampered(base($file) . ": its last record cut off", edit_lines($file, sub {
        pop @{ $_[0] };
    }), $sealed ? () : (args => [ '--head', $head ]));
}

tampered("the second segment removed", sub { unlink "$_[0]/" . base($segs[1]) },
         file => base($segs[2]));

for my $seal (@seals) {
    my $text = slurp($seal);

    for my $field (qw(segment count segment_root log_size log_root
                      prev_log_root consistency chain_head sealed_at
                      protection kid hmac))
    {
        $text =~ /"\Q$field\E":[\["]*/ or next;
        my $at = $+[0];
        next if substr($text, $at, 1) eq ']';   # an empty proof

        tampered(base($seal) . ": a byte of \"$field\" flipped", sub {
            my $path = "$_[0]/" . base($seal);
            my $t = slurp($path);
            my $c = substr($t, $at, 1);
            substr($t, $at, 1) = $c eq '0' ? '1' : $c eq '1' ? '2' : '0';
            spew($path, $t);
        }, file => base($seal));
    }
}

tampered("the first seal removed", sub { unlink "$_[0]/" . base($seals[0]) });

tampered("a seal swapped for another", sub {
    File::Copy::copy("$_[0]/" . base($seals[1]), "$_[0]/" . base($seals[0]));
}, file => base($seals[0]));

# keys: unknown, or not valid when the records were written
{
    my $keys = $gw->keys_file;
    my $orig = slurp($keys);

    spew($keys, "k2 " . ('a1' x 32) . " - -\n");
    my ($rc, $rep) = $gw->verify;
    ok($rc == 1 && $rep->{error}{check} eq 'key', 'an unknown key id');

    spew($keys, "k1 " . ('b2' x 32) . " - -\n");
    ($rc, $rep) = $gw->verify;
    ok($rc == 1 && $rep->{error}{check} eq 'hmac'
       && $rep->{error}{line} == 1, 'another secret under the same id');

    spew($keys, "k1 " . ('a1' x 32) . " - 1000000000\n");
    ($rc, $rep) = $gw->verify;
    ok($rc == 1 && $rep->{error}{check} eq 'key_validity',
       'a key that had expired');

    spew($keys, "k1 " . ('a1' x 32) . " 4000000000 -\n");
    ($rc, $rep) = $gw->verify;
    ok($rc == 1 && $rep->{error}{check} eq 'key_validity',
       'a key not yet valid');

    spew($keys, $orig);
    ($rc, $rep) = $gw->verify(undef, '--head', $head);
    is($rc, 0, 'the untouched folder still verifies, against its head');
}

# a record signed as before the one-pass signature (HMAC of the signed
# bytes themselves) still verifies; one signed over anything else does not
{
    use Digest::SHA ();
    my $dir = $gw->root . '/old-format';
    File::Path::remove_tree($dir);
    File::Path::make_path($dir);
    my $key = pack 'H*', 'a1' x 32;
    my $signed = '{"time":"2026-01-01T00:00:00+00:00","status":200'
               . ',"ts":1767225600000,"seq":1,"kid":"k1","prev":"'
               . ('0' x 64) . '"';
    my $write = sub {
        open my $fh, '>', "$dir/segment-00000001.log" or die $!;
        print $fh $signed . ',"hmac":"' . $_[0] . "\"}\n";
        close $fh;
    };
    $write->(Digest::SHA::hmac_sha256_hex($signed, $key));
    my ($rc, $rep) = $gw->verify($dir);
    ok($rc == 0 && $rep->{records} == 1,
       'a record signed over its bytes, as before, verifies')
        or diag explain $rep;
    $write->(Digest::SHA::hmac_sha256_hex(
                 Digest::SHA::sha256("\0" . $signed), $key));
    ($rc, $rep) = $gw->verify($dir);
    ok($rc == 0 && $rep->{records} == 1,
       'one signed over SHA-256 of 0x00 and its bytes verifies')
        or diag explain $rep;
    $write->(Digest::SHA::hmac_sha256_hex(
                 Digest::SHA::sha256($signed), $key));
    ($rc, $rep) = $gw->verify($dir);
    ok($rc == 1 && $rep->{error}{check} eq 'hmac',
       'one signed over anything else does not');
}

done_testing();
