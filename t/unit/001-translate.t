# The JSON reader, the OpenAI <-> Anthropic <-> Gemini translations and the
# MetaCache text functions' fast paths, function by function, under ASan and
# UBSan: the unit programs print TAP; each of their results is reported here.
use strict;
use warnings;
use Test::More;

my $out = `make -s unit 2>&1`;
my $rc = $? >> 8;
my ($ok, $not_ok) = (0, 0);

for my $line (split /\n/, $out) {
    if ($line =~ /^(not )?ok \d+ - (.*)$/) {
        ok(!$1, $2);
        $1 ? $not_ok++ : $ok++;
    }
}

is($rc, 0, 'the unit program exited cleanly') or diag(substr($out, -4000));
cmp_ok($ok, '>', 50, "it ran its checks ($ok passed)");
unlike($out, qr/ERROR: AddressSanitizer|runtime error:/, 'no sanitizer report');

done_testing();
