# The MetaCache's false hits at default settings stay at most 1% of the
# hard negatives, in the project's labelled pairs (t/cache/pairs.jsonl)
# and in the PAWS pairs of ../shared/testdata/paraphrase, measured by
# unit/ngx_smartflow_cache_eval.c on the module's own text functions and
# FAISS.  Recall is reported, not asserted beyond "the cache answers".

use strict;
use warnings;
use File::Basename ();
use File::Spec;
use Test::More;

my $top = File::Spec->rel2abs(
    File::Spec->catdir(File::Basename::dirname(__FILE__), '..', '..'));
my $eval = "$top/build/unit/cache_eval";

system('make', '-s', '-C', $top, 'cache-eval') == 0
    or BAIL_OUT('cannot build the cache quality program');

my $paws = $ENV{SMARTFLOW_PAWS}
    // "$top/../shared/testdata/paraphrase/paws_wiki_test_sample.jsonl";

for my $set (["project pairs", "$top/t/cache/pairs.jsonl"],
             ["PAWS pairs", $paws])
{
    my ($name, $file) = @$set;

    SKIP: {
        skip "$file is not here", 3 unless -f $file;

        my $out = `$eval $file`;
        is($?, 0, "$name: the program ran");

        my ($hits, $rate) = $out =~ /^  overall\s+(\d+)\s+\d+\s+\d+\s+[\d.]+\s+([\d.]+)$/m;
        my ($false, $neg) = $out =~ /false hits: (\d+) of (\d+) hard negatives/;

        ok(defined $false && $neg > 0 && $false / $neg <= 0.01,
           "$name: false hits at most 1% of the hard negatives")
            or diag($out);
        ok(defined $hits && $hits > 0, "$name: the cache answers some "
           . "paraphrases (recall " . ($rate // '?') . ")");
    }
}

done_testing();
