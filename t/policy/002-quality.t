# The detectors' quality, measured on the module's own C sources (the
# harness `make policy-harness` builds from them) by t/policy/measure.py:
# the labelled corpora in t/policy/corpus/ with their hard negatives,
# card, IBAN and SSN numbers checked against python3-stdnum, and the
# shared corpora in ../shared/testdata/ when they are there.  The floors
# below are the issue's targets where they are met, and today's figures
# (to catch a regression) where they are not; README.md has the table.
use strict;
use warnings;
use JSON::PP ();
use Test::More;

my $out = `make -s policy-harness 2>&1`;
is($? >> 8, 0, 'the harness builds from the module sources') or diag($out);

$out = `t/policy/measure.py --json 2>&1`;
is($? >> 8, 0, 'the measurement runs') or BAIL_OUT($out);
my $r = JSON::PP::decode_json($out);

for my $rule (sort keys %{ $r->{pii} }) {
    for my $set (sort keys %{ $r->{pii}{$rule} }) {
        my ($tp, $fp, $fn, $p, $rc) = @{ $r->{pii}{$rule}{$set} };
        cmp_ok($p, '>=', 0.99, "$rule on the $set numbers: precision $p");
        cmp_ok($rc, '>=', 0.98, "$rule on the $set numbers: recall $rc");
    }
}

for my $v (sort keys %{ $r->{stdnum} }) {
    my ($ok, $n) = @{ $r->{stdnum}{$v} };
    cmp_ok($n, '>=', 1000, "$v: enough generated numbers");
    is($ok, $n, "$v validator agrees with python3-stdnum on all $n");
}

my $own = $r->{injection}{'own corpus'};
cmp_ok($own->{detected} / $own->{injection}, '>=', 0.90,
       'injection: own corpus detection');
cmp_ok($own->{false_positives} / $own->{benign}, '<=', 0.02,
       'injection: own corpus false positives (hard negatives)');

SKIP: {
    skip 'no ../shared/testdata', 6 unless $r->{shared};

    my $jb = $r->{injection}{jailbreak_vs_benign};
    my $det = $jb->{detected} / $jb->{injection};
    my $fpr = $jb->{false_positives} / $jb->{benign};
    cmp_ok($fpr, '<=', 0.02, "jailbreaks: false positives $fpr");
    cmp_ok($det, '>=', 0.90, "jailbreaks: detection $det");
    cmp_ok($jb->{unreadable}, '<=', 3, 'jailbreaks: rows split by U+2028');

    my $cy = $r->{injection}{cyberseceval};
    my $cdet = $cy->{detected} / $cy->{injection};
    cmp_ok($cdet, '>=', 0.25, "CyberSecEval: detection $cdet");

    my @why = grep { !defined $_->{reason} } @{ $r->{shield}{differences} };
    is(scalar @why, 0, 'every difference with the destructive corpus has '
                       . 'its reason in t/policy/shield-differences.txt')
        or diag(join "\n", map { $_->{command} } @why);

    my ($ok, $n) = (0, 0);
    for my $c (grep { /^corpus:/ } keys %{ $r->{shield}{categories} }) {
        $ok += $r->{shield}{categories}{$c}[0];
        $n += $r->{shield}{categories}{$c}[1];
    }
    cmp_ok($ok / $n, '>=', 0.97, "Shield agrees with the corpus on $ok/$n");
}

for my $c (sort grep { /^own:/ } keys %{ $r->{shield}{categories} }) {
    my ($ok, $n) = @{ $r->{shield}{categories}{$c} };
    is($ok, $n, "Shield, $c: every labelled command");
}

done_testing();
