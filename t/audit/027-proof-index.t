# A proof by receipt id reads one segment: the receipts index kept as
# segments are sealed (DIR/receipts) names the segment of an id, so a
# record in the first, a middle or the last sealed segment is found by
# reading that segment only, and one in the open segment by reading the
# segments after the index's last (the open one).  An unknown id is 404,
# a malformed one 400, both in the OpenAI error format.  A folder sealed
# before the index existed still answers (by reading its segments), and
# its segments are indexed at the next seal.

use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use File::Path ();
use JSON::PP;
use Smartflow::Audit;
use Test::More;

my $conf = $ENV{TEST_NGINX_SMARTFLOW_CONF} // Smartflow::Audit::top() . '/conf';

my $gw = Smartflow::Audit->new(name => 'audit-proof-index', workers => 2,
    main => "error_log logs/debug.log debug;\n",
    http => "    smartflow_audit_segment_size 4k;\n",
    server => "        include $conf/smartflow_audit.conf;\n");
$gw->setup->start;

my $json = JSON::PP->new;
my $debug = $gw->root . '/logs/debug.log';

# the segments a proof read, from the debug log
sub proof {
    my ($id) = @_;
    truncate $debug, 0;
    my $r = $gw->get("/api/audit/proof/$id", key => undef);
    select undef, undef, undef, 0.1;
    open my $fh, '<', $debug or die "$debug: $!";
    my @read = map { /proof reads \S*segment-(\d+)\.log/ ? $1 + 0 : () } <$fh>;
    close $fh;
    return ($r, @read);
}

my @ids = $gw->chat_ids(40, 'index');
is(scalar @ids, 40, '40 receipts');
ok($gw->settle_index, 'every closed segment sealed');

# the open segment is the last file; a record in it, if it has none
my ($last) = reverse sort { $a <=> $b }
             map { /segment-(\d+)\.log$/ ? $1 + 0 : () }
             glob $gw->dir . '/segment-*.log';
push @ids, $gw->chat_ids(1, 'open') unless -s $gw->dir
                                       . sprintf('/segment-%08d.log', $last);
select undef, undef, undef, 0.3;
my %seg = $gw->id_segments;
cmp_ok($last, '>=', 5, "five segments or more ($last)");

ok(-d $gw->dir . '/receipts', 'the receipts index exists');

my %pick;
for my $id (@ids) {
    $pick{first} //= $id if $seg{$id} == 1;
    $pick{middle} //= $id if $seg{$id} == int(($last + 1) / 2);
    $pick{sealed} //= $id if $seg{$id} == $last - 1;
    $pick{open} //= $id if $seg{$id} == $last;
}

for my $which (qw(first middle sealed open)) {
    my $id = $pick{$which};
    ok($id, "an id in the $which segment") or next;
    my ($r, @read) = proof($id);
    my $want = $which eq 'open' ? 202 : 200;
    is($r->{status}, $want, "$which segment: $want")
        or diag $r->{content};
    my $p = eval { $json->decode($r->{content}) } // {};
    is($p->{segment}, $seg{$id}, "$which: the record's segment");
    is($p->{record}{request_id}, $id, "$which: the record");
    is_deeply(\@read, [ $seg{$id} ], "$which: only its segment is read")
        or diag "read: @read";
}

# unknown: no segment but the open one is read
my ($unknown, @read) = proof('0123456789abcdef' x 2);
is($unknown->{status}, 404, 'an unknown id: 404');
is(eval { $json->decode($unknown->{content})->{error}{code} } // '',
   'record_not_found', 'in the OpenAI format');
is_deeply(\@read, [ $last ], 'only the open segment is read for it')
    or diag "read: @read";

for my $bad ('zz', 'g' x 32, 'a' x 33, 'A' x 32) {
    my $r = $gw->get("/api/audit/proof/$bad", key => undef);
    is($r->{status}, 400, "a malformed id ($bad): 400");
    my $e = eval { $json->decode($r->{content})->{error} } // {};
    is($e->{type}, 'invalid_request_error', 'an invalid request error');
    is($e->{code}, 'invalid_parameter', 'its code');
}

# a folder sealed before the index: still answered, indexed at the next seal
$gw->stop;
File::Path::remove_tree($gw->dir . '/receipts');
$gw->start;

my ($old, @oread) = proof($pick{middle});
is($old->{status}, 200, 'no index: the proof still');
cmp_ok(scalar @oread, '>', 1, 'found by reading the segments');

my @more = $gw->chat_ids(12, 'after');
ok($gw->settle_index, 'sealed again');
%seg = $gw->id_segments;

($old, @oread) = proof($pick{middle});
is($old->{status}, 200, 'indexed again: the proof');
is_deeply(\@oread, [ $seg{$pick{middle}} ], 'only its segment is read');

my ($new, @nread) = proof($more[0]);
is($new->{status}, 200, 'a record after the restart');
is_deeply(\@nread, [ $seg{$more[0]} ], 'only its segment is read');

$gw->stop;

my ($rc, $rep) = $gw->verify;
is($rc, 0, 'the folder verifies with the index in it') or diag explain $rep;

done_testing;
