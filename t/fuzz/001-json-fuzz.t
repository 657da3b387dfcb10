# The JSON reader/writer under libFuzzer with ASan and UBSan: a bounded
# run from the seed corpus must finish without a crash or a sanitizer
# report (the target aborts on any dump that does not re-parse stably).
use strict;
use warnings;
use Test::More;

my $secs = $ENV{SMARTFLOW_FUZZ_SECONDS} || 15;
my $out = `make -s fuzz FUZZ_SECONDS=$secs 2>&1`;
my $rc = $? >> 8;

is($rc, 0, "json fuzz target ran $secs s without a finding")
    or diag(substr($out, -4000));
like($out, qr/Done \d+ runs in \d+ second/, 'libFuzzer completed its run');
unlike($out, qr/ERROR: (?:AddressSanitizer|libFuzzer)|runtime error:/,
       'no sanitizer report');

done_testing();
