package Smartflow::S3;

# A local S3 endpoint with Object Lock for the audit suites: a small HTTP
# server that takes path-style PUT /BUCKET/KEY and, before it stores
# anything, checks on its own
#
#   - the AWS Signature Version 4 of the request, recomputed from the
#     request with the secret it knows (AWS's documented algorithm: the
#     canonical request, the string to sign, the derived signing key);
#   - that the signed headers include host, x-amz-date,
#     x-amz-content-sha256 and the Object Lock headers;
#   - x-amz-content-sha256, Content-MD5 and x-amz-checksum-sha256 against
#     the body;
#   - x-amz-object-lock-mode (GOVERNANCE or COMPLIANCE) and a
#     retain-until date in the future.
#
# It answers like S3 (XML errors: SignatureDoesNotMatch, BadDigest,
# InvalidRequest...), keeps each object under DIR/objects/BUCKET/KEY with
# its lock in KEY.lock, and logs every request as one line of
# DIR/requests.log: "STATUS KEY CODE".  It can be told to fail
# (->fail(503), or only for the keys a pattern matches:
# ->fail(503, '\.seal$')), to expect another secret (->secret('...')),
# to take its time over each answer (->delay(0.5), seconds), to answer
# like a server that is not S3 (->not_s3(1): a bare 200, nothing kept),
# to read a body slowly but steadily (->throttle(65536), bytes a second,
# through a small receive buffer when told before ->start, as over a slow
# link), to take a
# request's headers and none of its body for a while (->stall(5),
# seconds, then drop the connection), or be stopped and started again
# (down, then up).
#
#     my $s3 = Smartflow::S3->new(dir => $dir);
#     $s3->start; ... $s3->stop;
#
# The port is $TEST_NGINX_S3_PORT (default 3820 + 0).

use strict;
use warnings;

use Digest::MD5 ();
use Digest::SHA ();
use File::Basename ();
use File::Path ();
use HTTP::Daemon;
use HTTP::Response;
use MIME::Base64 ();
use POSIX ();
use Socket ();
use Time::Local ();

sub new {
    my ($class, %o) = @_;
    my $self = bless {
        dir    => $o{dir},
        port   => $o{port} // $ENV{TEST_NGINX_S3_PORT} // 3820,
        id     => $o{id} // 'AKIASMARTFLOWTEST01',
        secret => $o{secret} // 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYsmartflow',
        region => $o{region} // 'eu-west-3',
    }, $class;
    File::Path::make_path("$self->{dir}/objects");
    $self->secret($self->{secret});
    $self->fail(0);
    $self->delay(0);
    $self->not_s3(0);
    $self->throttle(0);
    $self->stall(0);
    return $self;
}

sub port   { $_[0]{port} }
sub url    { "http://127.0.0.1:$_[0]{port}" }
sub id     { $_[0]{id} }
sub region { $_[0]{region} }
sub dir    { $_[0]{dir} }

sub _put_file {
    my ($path, $text) = @_;
    open my $fh, '>', "$path.tmp" or die "$path: $!";
    print $fh $text;
    close $fh;
    rename "$path.tmp", $path or die "$path: $!";
}

sub _get_file {
    my $path = shift;
    open my $fh, '<', $path or return undef;
    binmode $fh;
    local $/;
    return scalar <$fh>;
}

# what the server checks against: the control files, read per request
sub secret { _put_file("$_[0]{dir}/secret", $_[1]) }
sub fail   { _put_file("$_[0]{dir}/fail",
                        ($_[1] // 0) . (defined $_[2] ? " $_[2]" : '')) }
sub delay  { _put_file("$_[0]{dir}/delay", $_[1] // 0) }
sub not_s3 { _put_file("$_[0]{dir}/not_s3", $_[1] // 0) }
sub throttle { _put_file("$_[0]{dir}/throttle", $_[1] // 0) }
sub stall  { _put_file("$_[0]{dir}/stall", $_[1] // 0) }

# the stored object and its lock
sub object { _get_file("$_[0]{dir}/objects/$_[1]") }

sub object_lock {
    my $t = _get_file("$_[0]{dir}/objects/$_[1].lock") // return;
    my ($mode, $until) = split ' ', $t;
    return ($mode, $until);
}

# the request log, as [status, key, code]
sub requests {
    my $self = shift;
    my $t = _get_file("$self->{dir}/requests.log") // '';
    return map { [ split ' ' ] } split /\n/, $t;
}

sub _uri_encode {
    my $s = shift;
    $s =~ s{([^A-Za-z0-9\-._~/])}{sprintf '%%%02X', ord $1}ge;
    return $s;
}

sub _iso8601 {
    my $s = shift;
    my ($y, $mo, $d, $h, $mi, $se) =
        $s =~ /^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.\d+)?Z\z/
        or return;
    return Time::Local::timegm($se, $mi, $h, $d, $mo - 1, $y);
}

# AWS SigV4, from the request and the secret: undef if it holds, else why
sub check_signature {
    my ($self, $req, $secret) = @_;

    my $auth = $req->header('Authorization') // '';
    my ($id, $date, $region, $service, $signed, $sig) = $auth =~
        m{^AWS4-HMAC-SHA256\s+Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)
          /aws4_request,\s*SignedHeaders=([a-z0-9;-]+),\s*
          Signature=([0-9a-f]{64})\z}x
        or return ['AccessDenied', 'no AWS4-HMAC-SHA256 authorization'];

    return ['InvalidAccessKeyId', "unknown access key $id"]
        if $id ne $self->{id};
    return ['AuthorizationHeaderMalformed', "region $region"]
        if $region ne $self->{region} || $service ne 's3';

    my $amzdate = $req->header('X-Amz-Date') // '';
    my ($y, $mo, $d, $h, $mi, $s) =
        $amzdate =~ /^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z\z/
        or return ['AccessDenied', 'no x-amz-date'];
    return ['AccessDenied', 'credential date is not x-amz-date']
        if "$y$mo$d" ne $date;
    my $t = Time::Local::timegm($s, $mi, $h, $d, $mo - 1, $y);
    return ['RequestTimeTooSkewed', 'x-amz-date'] if abs(time - $t) > 900;

    my @signed = split /;/, $signed;
    my %signed = map { $_ => 1 } @signed;
    for my $need (qw(host x-amz-date x-amz-content-sha256
                     x-amz-object-lock-mode
                     x-amz-object-lock-retain-until-date))
    {
        return ['AccessDenied', "$need is not signed"] unless $signed{$need};
    }
    return ['AccessDenied', 'signed headers not sorted']
        if join(';', sort @signed) ne $signed;

    my $canonical_headers = '';
    for my $name (@signed) {
        my @v = $req->header($name);
        return ['AccessDenied', "signed header $name is missing"] unless @v;
        my $v = join ',', map { s/^\s+|\s+$//gr =~ s/\s+/ /gr } @v;
        $canonical_headers .= "$name:$v\n";
    }

    my $uri = $req->uri;
    my $query = join '&', sort map {
        my ($k, $v) = split /=/, $_, 2;
        _uri_encode($k) . '=' . _uri_encode($v // '')
    } grep { length } split /&/, ($uri->query // '');

    my $canonical = join "\n", $req->method, _uri_encode($uri->path),
        $query, $canonical_headers, $signed,
        $req->header('x-amz-content-sha256') // '';

    my $scope = "$date/$region/s3/aws4_request";
    my $to_sign = join "\n", 'AWS4-HMAC-SHA256', $amzdate, $scope,
        Digest::SHA::sha256_hex($canonical);

    my $k = Digest::SHA::hmac_sha256($date, "AWS4$secret");
    $k = Digest::SHA::hmac_sha256($region, $k);
    $k = Digest::SHA::hmac_sha256('s3', $k);
    $k = Digest::SHA::hmac_sha256('aws4_request', $k);

    return ['SignatureDoesNotMatch', 'signature']
        if Digest::SHA::hmac_sha256_hex($to_sign, $k) ne $sig;

    return undef;
}

# the body and the Object Lock headers: undef if they hold, else why
sub check_object {
    my ($self, $req) = @_;
    my $body = $req->content // '';

    my $sha = $req->header('x-amz-content-sha256') // '';
    return ['XAmzContentSHA256Mismatch', 'x-amz-content-sha256']
        if $sha ne Digest::SHA::sha256_hex($body);

    my $md5 = $req->header('Content-MD5');
    my $cks = $req->header('x-amz-checksum-sha256');
    return ['InvalidRequest', 'Object Lock needs Content-MD5 or a checksum']
        if !defined $md5 && !defined $cks;
    return ['BadDigest', 'Content-MD5']
        if defined $md5
           && $md5 ne MIME::Base64::encode_base64(Digest::MD5::md5($body), '');
    return ['BadDigest', 'x-amz-checksum-sha256']
        if defined $cks
           && $cks ne MIME::Base64::encode_base64(Digest::SHA::sha256($body),
                                                   '');

    my $mode = $req->header('x-amz-object-lock-mode') // '';
    return ['InvalidArgument', 'x-amz-object-lock-mode']
        if $mode ne 'GOVERNANCE' && $mode ne 'COMPLIANCE';

    my $until = _iso8601($req->header('x-amz-object-lock-retain-until-date')
                         // '');
    return ['InvalidArgument', 'x-amz-object-lock-retain-until-date']
        if !defined $until || $until <= time;

    return undef;
}

sub _error {
    my ($c, $status, $code, $msg) = @_;
    my $res = HTTP::Response->new($status);
    $res->header('Content-Type' => 'application/xml');
    $res->content('<?xml version="1.0" encoding="UTF-8"?>'
                  . "<Error><Code>$code</Code><Message>$msg</Message>"
                  . '</Error>');
    $c->send_response($res);
}

sub handle {
    my ($self, $c, $req) = @_;
    my $d = $self->{dir};
    my $key = $req->uri->path =~ s{^/}{}r;

    my $log = sub {
        open my $fh, '>>', "$d/requests.log" or die $!;
        print $fh "@_\n";
        close $fh;
    };

    my $delay = _get_file("$d/delay") // 0;
    select undef, undef, undef, $delay if $delay > 0;

    if (_get_file("$d/not_s3")) {
        $log->(200, $key, 'NotS3');
        my $res = HTTP::Response->new(200);
        $res->header('Content-Type' => 'text/html');
        $res->content("<html><body>OK</body></html>\n");
        return $c->send_response($res);
    }

    my ($fail, $only) = split ' ', _get_file("$d/fail") // 0, 2;
    if ($fail && (!defined $only || $key =~ /$only/)) {
        $log->($fail, $key, 'SlowDown');
        return _error($c, $fail, 'SlowDown', 'Please reduce your request '
                                             . 'rate.');
    }

    if ($req->method ne 'PUT' || $key !~ m{^[a-z0-9.-]+/[\w./-]+\z}
        || $key =~ m{\.\.})
    {
        $log->(400, $key, 'InvalidRequest');
        return _error($c, 400, 'InvalidRequest', 'only PUT /BUCKET/KEY');
    }

    my $why = $self->check_signature($req, _get_file("$d/secret"));
    if ($why) {
        $log->(403, $key, $why->[0]);
        return _error($c, 403, $why->[0], $why->[1]);
    }

    $why = $self->check_object($req);
    if ($why) {
        $log->(400, $key, $why->[0]);
        return _error($c, 400, $why->[0], $why->[1]);
    }

    my $path = "$d/objects/$key";
    File::Path::make_path(File::Basename::dirname($path));

    my $old = "$path.lock";
    if (-e $old) {
        # locked: a new version, the old one stays (counted)
        $log->(200, $key, 'NewVersion');
    } else {
        $log->(200, $key, 'OK');
    }

    open my $fh, '>', $path or die "$path: $!";
    binmode $fh;
    print $fh $req->content;
    close $fh;
    _put_file("$path.lock", $req->header('x-amz-object-lock-mode') . ' '
              . $req->header('x-amz-object-lock-retain-until-date') . "\n");

    my $res = HTTP::Response->new(200);
    $res->header(ETag => '"' . Digest::MD5::md5_hex($req->content) . '"');
    $res->header('x-amz-checksum-sha256'
                 => $req->header('x-amz-checksum-sha256') // '');
    $c->send_response($res);
}

sub start {
    my $self = shift;

    my $daemon;
    for (1 .. 50) {
        $daemon = HTTP::Daemon->new(LocalAddr => '127.0.0.1',
                                    LocalPort => $self->{port},
                                    ReuseAddr => 1) and last;
        select undef, undef, undef, 0.1;
    }
    die "S3 fixture: cannot listen on $self->{port}: $!\n" unless $daemon;

    # throttled from the start: the window a client sees stays small, so
    # what it has sent is about what was read (set before the handshake)
    if (_get_file("$self->{dir}/throttle")) {
        setsockopt($daemon, Socket::SOL_SOCKET(), Socket::SO_RCVBUF(), 8192)
            or die "SO_RCVBUF: $!";
    }

    my $pid = fork // die "fork: $!";
    if ($pid) {
        close $daemon;
        $self->{pid} = $pid;
        $self->{owner} = $$;
        return $self;
    }

    # a client that gave up: its answer is lost, the fixture goes on
    $SIG{PIPE} = 'IGNORE';

    while (my $c = $daemon->accept) {
        my $d = $self->{dir};
        my $rate = _get_file("$d/throttle") // 0;
        my $stall = _get_file("$d/stall") // 0;

        if ($rate > 0 || $stall > 0) {
            my $req = $c->get_request(1) or next;
            $self->slow_body($c, $req, $rate, $stall) or next;
            $self->handle($c, $req);
            $c->close;
            next;
        }

        while (my $req = $c->get_request) {
            $self->handle($c, $req);
        }
        $c->close;
    }
    POSIX::_exit(0);
}

# the body of a request whose headers were read: slowly, or not at all
sub slow_body {
    my ($self, $c, $req, $rate, $stall) = @_;
    my $len = $req->header('Content-Length') // 0;
    my $body = $c->read_buffer;
    $c->read_buffer('');

    if ($stall > 0) {
        select undef, undef, undef, $stall;
        open my $fh, '>>', "$self->{dir}/requests.log" or die $!;
        print $fh "0 ", $req->uri->path =~ s{^/}{}r, " Stalled\n";
        close $fh;
        $c->close;
        return 0;
    }

    if (($req->header('Expect') // '') =~ /100-continue/i) {
        $c->syswrite("HTTP/1.1 100 Continue\r\n\r\n");
    }

    # a tenth of a second's bytes at a time
    my $chunk = int($rate / 10) || 1;

    while (length $body < $len) {
        my $want = $len - length $body;
        $want = $chunk if $want > $chunk;
        my $n = sysread($c, my $buf, $want);
        return 0 unless $n;
        $body .= $buf;
        select undef, undef, undef, $n / $rate;
    }

    $req->content($body);
    return 1;
}

sub stop {
    my $self = shift;
    return unless $self->{pid} && $self->{owner} == $$;
    kill 'TERM', $self->{pid};
    waitpid $self->{pid}, 0;
    delete $self->{pid};
}

sub DESTROY { $_[0]->stop }

1;
