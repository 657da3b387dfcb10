package Smartflow::Blocks;

# The settings the provider and stream tests give every block that does not
# set its own:
#
#     use lib 't/lib';
#     use Test::Nginx::Socket 'no_plan';
#     use Smartflow::Blocks;
#
#     Smartflow::Blocks::defaults(http_config => $HttpConfig,
#                                 config => $Locations, keys => 1);
#
# main_config   the four Smartflow modules loaded (main_config() unless
#               given)
# http_config, config
#               as given
# keys => 1     more_headers: the gateway's master key the way the request's
#               API takes it, x-api-key and anthropic-version for a request
#               to /anthropic/..., a bearer token otherwise
# more_headers  as given, whatever the request (instead of keys)
# then          a function given each block last, once the above are set
#               (Smartflow::Keys::substitute, for instance)
#
# mock_upstreams() is the start of an http_config: the gateway's master key
# and the upstream sf_mock (the mock provider); with fixture => 1 also
# sf_fixture, a server of the test's own on $TEST_NGINX_FIXTURE_PORT.
#
# $OpenAIKey and $AnthropicKey are exported for blocks that add headers of
# their own to the key.

use strict;
use warnings;

use Exporter 'import';

our @EXPORT = qw($OpenAIKey $AnthropicKey);

our $MasterKey = 'sk-smartflow-test-0123456789';
our $OpenAIKey = "Authorization: Bearer $MasterKey\n";
our $AnthropicKey = "x-api-key: $MasterKey\n"
                    . "anthropic-version: 2023-06-01\n";

sub main_config {
    return join '', map {
        "    load_module \$TEST_NGINX_MODULES/ngx_http_smartflow_${_}_module.so;\n"
    } qw(proxy policy cache audit);
}

sub mock_upstreams {
    my %opt = @_;

    my $conf = <<"_EOC_";
    smartflow_master_key $MasterKey;

    upstream sf_mock {
        server 127.0.0.1:\$TEST_NGINX_MOCK_PORT;
        keepalive 8;
    }

_EOC_

    $conf .= <<'_EOC_' if $opt{fixture};
    upstream sf_fixture {
        server 127.0.0.1:$TEST_NGINX_FIXTURE_PORT;
    }

_EOC_

    return $conf;
}

# the first request line of a block, whichever form its request takes
sub first_request {
    my $req = shift // '';
    $req = $req->[0] if ref $req eq 'ARRAY';
    $req = $req->[0]{value} if ref $req eq 'ARRAY';
    return $req;
}

sub headers {
    my ($block, %set) = @_;

    return if defined $block->more_headers;

    if (defined $set{more_headers}) {
        $block->set_value('more_headers', $set{more_headers});
        return;
    }

    return unless $set{keys};

    $block->set_value('more_headers',
                      first_request($block->request)
                      =~ m{^\s*POST /anthropic/}
                      ? $AnthropicKey : $OpenAIKey);
}

sub defaults {
    my %set = @_;

    $set{main_config} //= main_config();

    Test::Nginx::Util::add_block_preprocessor(sub {
        my $block = shift;

        for my $name (qw(main_config http_config config)) {
            next unless defined $set{$name};
            $block->set_value($name, $set{$name})
                unless defined $block->$name;
        }

        headers($block, %set);

        $set{then}->($block) if $set{then};
    });
}

1;
