# smartflow_audit_log: one JSON line per gateway request, written in the
# LOG phase: {"time","status","key_id","model","provider","stream",
# "request_bytes","response_bytes","error"}.
#
# Each block ends with GET /audit, a plain location serving the audit file
# itself (not a gateway request, so not audited).  The file is read back
# through audit_lines(), which decodes every line and prints its fields
# above (and only those) in canonical form, with the time and byte counts
# checked and replaced by TIME and N.
#
# Blocks with requests refused on purpose do not check for [error]: the
# log is looked at after every request of a block, and those refusals are
# logged (as 005-errors.t checks); they check for [alert] and [crit].

use JSON::PP ();
use Test::Nginx::Socket 'no_plan';
use lib 't/lib';
use Smartflow::Blocks;

our $HttpConfig = <<'_EOC_';
    smartflow_master_key sk-smartflow-test-0123456789;
    smartflow_audit_log logs/audit.log;

    # nothing listens there
    upstream sf_down {
        server 127.0.0.1:$TEST_NGINX_RAND_PORT_1;
    }

    smartflow_provider demo type=echo;
    smartflow_provider down type=openai upstream=http://sf_down path=/v1;

    smartflow_route smartflow-echo demo;
    smartflow_route gpt-down down;
_EOC_

our $Locations = <<'_EOC_';
    location = /v1/chat/completions {
        smartflow_api chat;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /v1/embeddings {
        smartflow_api embeddings;
        smartflow_audit_log off;
        include $TEST_NGINX_SMARTFLOW_CONF/smartflow_proxy.conf;
    }

    location = /v1/models {
        smartflow_api models;
        error_page 401 405 @smartflow_error;
    }

    location = /health {
        smartflow_api health;
    }

    location @smartflow_error {
        smartflow_api error;
    }

    location = /audit {
        default_type text/plain;
        alias $TEST_NGINX_SERVER_ROOT/logs/audit.log;
    }
_EOC_

Smartflow::Blocks::defaults(http_config => $HttpConfig,
                            config => $Locations);

our $Key = 'Authorization: Bearer sk-smartflow-test-0123456789';

our @Fields = qw(time status key_id model provider stream request_bytes
                 response_bytes error);

my $decoder = JSON::PP->new->utf8;
my $encoder = JSON::PP->new->ascii->canonical;

# the audit file, one canonical line per record; answers to the gateway
# requests before it pass unchanged
sub audit_lines {
    my $body = shift;
    return $body if $body !~ /\A\{"time":/;

    my @out;
    for my $line (split /\n/, $body) {
        my $r = eval { $decoder->decode($line) };
        if (!ref $r) {
            push @out, "not JSON: $line";
            next;
        }

        $r->{time} = 'TIME'
            if $r->{time} =~ /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$/;

        for my $n (qw(request_bytes response_bytes)) {
            $r->{$n} = 'N' if defined $r->{$n} && $r->{$n} =~ /^[1-9]\d*$/;
        }

        # the fields every record has; others may come and go
        my %shown = map { $_ => exists $r->{$_} ? $r->{$_} : 'MISSING' }
                    @Fields;
        push @out, $encoder->encode(\%shown);
    }

    return join '', map { "$_\n" } @out;
}

sub chat {
    my ($model, $more) = @_;
    $more //= '';
    return "POST /v1/chat/completions\n"
           . qq/{"model":"$model",$more"messages":[{"role":"user","content":"hi"}]}/;
}

run_tests();

__DATA__

=== TEST 1: a chat completion
--- more_headers eval
[ $::Key, '' ]
--- request eval
[ ::chat('smartflow-echo'), "GET /audit" ]
--- response_body_filters eval
\&::audit_lines
--- response_body eval
[
qr/"content":"Echo: hi"/,
'{"error":null,"key_id":"master","model":"smartflow-echo","provider":"demo","request_bytes":"N","response_bytes":"N","status":200,"stream":false,"time":"TIME"}
',
]
--- error_code eval
[200, 200]
--- no_error_log
[error]



=== TEST 2: a streamed chat completion, with the client's spelling of the model
--- more_headers eval
[ $::Key, '' ]
--- request eval
[ ::chat('SmartFlow-Echo', '"stream":true,'), "GET /audit" ]
--- response_body_filters eval
\&::audit_lines
--- response_body eval
[
qr/data: \[DONE\]/,
'{"error":null,"key_id":"master","model":"SmartFlow-Echo","provider":"demo","request_bytes":"N","response_bytes":"N","status":200,"stream":true,"time":"TIME"}
',
]
--- error_code eval
[200, 200]
--- no_error_log
[error]



=== TEST 3: one line per request, in order, refusals included
--- more_headers eval
[ $::Key, $::Key, '', 'x-api-key: sk-wrong-secret-4242424242', $::Key, '' ]
--- request eval
[
::chat('smartflow-echo'),
::chat('no-such-model'),
::chat('smartflow-echo'),
::chat('smartflow-echo'),
"POST /v1/chat/completions\n{\"model\":\"smartflow-echo\"}",
"GET /audit",
]
--- response_body_filters eval
\&::audit_lines
--- response_body eval
[
qr/"content":"Echo: hi"/,
qr/"code":"model_not_found"/,
qr/"code":"missing_api_key"/,
qr/"code":"invalid_api_key"/,
qr/"code":"missing_required_parameter"/,
'{"error":null,"key_id":"master","model":"smartflow-echo","provider":"demo","request_bytes":"N","response_bytes":"N","status":200,"stream":false,"time":"TIME"}
{"error":"model_not_found","key_id":"master","model":"no-such-model","provider":null,"request_bytes":"N","response_bytes":"N","status":404,"stream":false,"time":"TIME"}
{"error":"missing_api_key","key_id":null,"model":null,"provider":null,"request_bytes":"N","response_bytes":"N","status":401,"stream":false,"time":"TIME"}
{"error":"invalid_api_key","key_id":null,"model":null,"provider":null,"request_bytes":"N","response_bytes":"N","status":401,"stream":false,"time":"TIME"}
{"error":"missing_required_parameter","key_id":"master","model":"smartflow-echo","provider":null,"request_bytes":"N","response_bytes":"N","status":400,"stream":false,"time":"TIME"}
',
]
--- error_code eval
[200, 404, 401, 401, 400, 200]
--- no_error_log
[alert]
[crit]



=== TEST 4: a provider that cannot be reached
--- more_headers eval
[ $::Key, '' ]
--- request eval
[ ::chat('gpt-down'), "GET /audit" ]
--- response_body_filters eval
\&::audit_lines
--- response_body eval
[
qr/"code":"upstream_unreachable"/,
'{"error":"upstream_unreachable","key_id":"master","model":"gpt-down","provider":"down","request_bytes":"N","response_bytes":"N","status":502,"stream":false,"time":"TIME"}
',
]
--- error_code eval
[502, 200]
--- no_error_log
[alert]
[crit]



=== TEST 5: /v1/models is a gateway request, /health and other locations are not
--- more_headers eval
[ $::Key, '', '', '' ]
--- request eval
[ "GET /v1/models", "GET /health", "GET /", "GET /audit" ]
--- response_body_filters eval
\&::audit_lines
--- response_body eval
[
qr/"object":"list"/,
qr/"providers":/,
qr/It works!/,
'{"error":null,"key_id":"master","model":null,"provider":null,"request_bytes":"N","response_bytes":"N","status":200,"stream":false,"time":"TIME"}
',
]
--- error_code eval
[200, 200, 200, 200]
--- no_error_log
[error]



=== TEST 6: "smartflow_audit_log off" in a location
--- more_headers eval
[ $::Key, $::Key, '' ]
--- request eval
[
"POST /v1/embeddings\n" . '{"model":"smartflow-echo","input":"not audited"}',
::chat('smartflow-echo'),
"GET /audit",
]
--- response_body_filters eval
\&::audit_lines
--- response_body eval
[
qr/"object":"embedding"/,
qr/"content":"Echo: hi"/,
'{"error":null,"key_id":"master","model":"smartflow-echo","provider":"demo","request_bytes":"N","response_bytes":"N","status":200,"stream":false,"time":"TIME"}
',
]
--- error_code eval
[200, 200, 200]
--- no_error_log
[error]



=== TEST 7: the byte counts are what went over the wire
--- more_headers eval
[ $::Key, '' ]
--- request eval
[ ::chat('smartflow-echo'), "GET /audit" ]
--- response_body_filters eval
[
[],
[ sub { $_[0] =~ /"request_bytes":(\d+),"response_bytes":(\d+)/
        ? ($1 > 100 && $1 < 400 ? "request ok" : "request $1")
          . ($2 > 300 && $2 < 700 ? ", response ok" : ", response $2")
        : "no byte counts in: $_[0]" } ],
]
--- response_body eval
[
qr/"content":"Echo: hi"/,
"request ok, response ok",
]
--- error_code eval
[200, 200]
--- no_error_log
[error]



=== TEST 8: a model name with quotes and a backslash is escaped in the record
--- more_headers eval
[ $::Key, '' ]
--- request eval
[ ::chat('a\"b\\\\c'), "GET /audit" ]
--- response_body_filters eval
\&::audit_lines
--- response_body eval
[
qr/"code":"model_not_found"/,
'{"error":"model_not_found","key_id":"master","model":"a\"b\\\\c","provider":null,"request_bytes":"N","response_bytes":"N","status":404,"stream":false,"time":"TIME"}
',
]
--- error_code eval
[404, 200]
--- no_error_log
[alert]
[crit]



=== TEST 9: a model name made of control characters
Each one takes six bytes in the record.
--- more_headers eval
[ $::Key, '' ]
--- request eval
[ ::chat('\\u0001' x 3000), "GET /audit" ]
--- response_body_filters eval
\&::audit_lines
--- response_body eval
[
qr/"code":"model_not_found"/,
'{"error":"model_not_found","key_id":"master","model":"' . ('\\u0001' x 3000)
. '","provider":null,"request_bytes":"N","response_bytes":"N","status":404,"stream":false,"time":"TIME"}
',
]
--- error_code eval
[404, 200]
--- no_error_log
[alert]
[crit]



=== TEST 10: a refusal nginx makes follows the client location's "smartflow_audit_log off"
The provider cannot be reached: the 502 is written by @smartflow_error,
yet the request is the embeddings location's, whose log is off.
--- more_headers eval
[ $::Key, $::Key, '' ]
--- request eval
[
"POST /v1/embeddings\n" . '{"model":"gpt-down","input":"not audited"}',
::chat('smartflow-echo'),
"GET /audit",
]
--- response_body_filters eval
\&::audit_lines
--- response_body eval
[
qr/"code":"upstream_unreachable"/,
qr/"content":"Echo: hi"/,
'{"error":null,"key_id":"master","model":"smartflow-echo","provider":"demo","request_bytes":"N","response_bytes":"N","status":200,"stream":false,"time":"TIME"}
',
]
--- error_code eval
[502, 200, 200]
--- no_error_log
[alert]
[crit]



=== TEST 11: a refusal nginx makes goes to the client location's audit log
Only the chat location has a log: the 502 that @smartflow_error writes
for an unreachable provider is in it.
--- http_config eval
my $c = $::HttpConfig;
$c =~ s/^\s*smartflow_audit_log logs\/audit.log;\n//m;
$c
--- config eval
my $c = $::Locations;
$c =~ s/(smartflow_api chat;\n)/$1        smartflow_audit_log logs\/audit.log;\n/;
$c
--- more_headers eval
[ $::Key, '' ]
--- request eval
[ ::chat('gpt-down'), "GET /audit" ]
--- response_body_filters eval
\&::audit_lines
--- response_body eval
[
qr/"code":"upstream_unreachable"/,
'{"error":"upstream_unreachable","key_id":"master","model":"gpt-down","provider":"down","request_bytes":"N","response_bytes":"N","status":502,"stream":false,"time":"TIME"}
',
]
--- error_code eval
[502, 200]
--- no_error_log
[alert]
[crit]
