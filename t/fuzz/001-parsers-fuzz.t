# The JSON reader/writer and the SSE reader under libFuzzer with ASan and
# UBSan: a bounded run of each from its seed corpus must finish without a
# crash or a sanitizer report (the JSON target aborts on a dump that does
# not re-parse stably, the SSE target when split reads give other events).
use strict;
use warnings;
use Test::More;

my $secs = $ENV{SMARTFLOW_FUZZ_SECONDS} || 15;
my $out = `make -s fuzz FUZZ_SECONDS=$secs 2>&1`;
my $rc = $? >> 8;

is($rc, 0, "each fuzz target ran $secs s without a finding")
    or diag(substr($out, -4000));
is(scalar(() = $out =~ /Done \d+ runs in \d+ second/g), 2,
   'both fuzz targets completed their run');
unlike($out, qr/ERROR: (?:AddressSanitizer|libFuzzer)|runtime error:/,
       'no sanitizer report');

done_testing();
