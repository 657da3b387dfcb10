# The policy scanners (PII, secrets, custom patterns, injection, Shield)
# under libFuzzer with ASan and UBSan: a bounded run from the seed corpus
# must end without a crash, a sanitizer report or a broken invariant (the
# target aborts on findings out of the text, out of order, overlapping,
# or refused by their own validator).
use strict;
use warnings;
use Test::More;

my $secs = $ENV{SMARTFLOW_FUZZ_SECONDS} || 15;
my $out = `make -s fuzz-policy FUZZ_SECONDS=$secs 2>&1`;

is($? >> 8, 0, "the policy fuzz target ran $secs s without a finding")
    or diag(substr($out, -4000));
like($out, qr/Done \d+ runs in \d+ second/, 'it completed its run');
unlike($out, qr/ERROR: (?:AddressSanitizer|libFuzzer)|runtime error:/,
       'no sanitizer report');

done_testing();
