# The MetaCache's one-pass reader of an OpenAI answer under libFuzzer with
# ASan and UBSan, against the JSON parser it stands in for: a bounded run
# from the seed corpus must finish without a finding (the target aborts
# when the reader accepts what the parser refuses, or reads another
# content or finish reason than the parser).
use strict;
use warnings;
use Test::More;

my $secs = $ENV{SMARTFLOW_FUZZ_SECONDS} || 15;
my $out = `make -s fuzz-answer FUZZ_SECONDS=$secs 2>&1`;
my $rc = $? >> 8;

is($rc, 0, "the answer reader's fuzz target ran $secs s without a finding")
    or diag(substr($out, -4000));
like($out, qr/Done \d+ runs in \d+ second/, 'it completed its run');
unlike($out, qr/ERROR: (?:AddressSanitizer|libFuzzer)|runtime error:/,
       'no sanitizer report');

done_testing();
