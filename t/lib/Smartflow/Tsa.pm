package Smartflow::Tsa;

# A local RFC 3161 time-stamping authority for the audit suites: a CA and
# a TSA certificate (extendedKeyUsage timeStamping) made with the openssl
# command, and a small HTTP server that answers each POSTed
# timestamp-query with what "openssl ts -reply" makes of it.  Told to
# (->corrupt(1)), it flips the last byte of each answer, which is the
# signature's: the answer is granted, for the query, but not signed.
# Told to (->delay(1.5), seconds), it takes its time over each answer.
#
#     my $tsa = Smartflow::Tsa->new(dir => $dir);   # keys and certificates
#     $tsa->start; ... $tsa->stop;                   # the HTTP side
#
# The port is $TEST_NGINX_TSA_PORT (default 1989).

use strict;
use warnings;

use File::Path ();
use HTTP::Daemon;
use HTTP::Response;
use POSIX ();

sub new {
    my ($class, %o) = @_;
    my $self = bless { dir => $o{dir},
                       port => $o{port} // $ENV{TEST_NGINX_TSA_PORT} // 1989 },
                     $class;
    $self->make_keys;
    return $self;
}

sub port { $_[0]{port} }
sub url  { "http://127.0.0.1:$_[0]{port}/tsa" }

sub corrupt {
    my ($self, $on) = @_;
    open my $fh, '>', "$self->{dir}/corrupt" or die $!;
    print $fh $on ? 1 : 0;
    close $fh;
}
sub delay {
    my ($self, $secs) = @_;
    open my $fh, '>', "$self->{dir}/delay" or die $!;
    print $fh $secs // 0;
    close $fh;
}
sub ca   { "$_[0]{dir}/ca.pem" }
sub cert { "$_[0]{dir}/tsa.pem" }

sub run {
    my @cmd = @_;
    my $out = `@cmd 2>&1`;
    die "@cmd: $out" if $?;
}

sub make_keys {
    my $self = shift;
    my $d = $self->{dir};
    File::Path::make_path($d);

    run("openssl req -x509 -newkey rsa:2048 -nodes -keyout $d/ca.key"
        . " -out $d/ca.pem -days 3650 -subj '/CN=Smartflow Test TSA CA'");
    run("openssl req -newkey rsa:2048 -nodes -keyout $d/tsa.key"
        . " -out $d/tsa.csr -subj '/CN=Smartflow Test TSA'");

    open my $fh, '>', "$d/ext.cnf" or die $!;
    print $fh "extendedKeyUsage=critical,timeStamping\n"
            . "basicConstraints=CA:FALSE\n";
    close $fh;

    run("openssl x509 -req -in $d/tsa.csr -CA $d/ca.pem -CAkey $d/ca.key"
        . " -CAcreateserial -out $d/tsa.pem -days 3650 -extfile $d/ext.cnf");

    open $fh, '>', "$d/tsa.cnf" or die $!;
    print $fh <<"_CNF_";
[ tsa ]
default_tsa = tsa_config
[ tsa_config ]
serial = $d/serial
crypto_device = builtin
signer_cert = $d/tsa.pem
certs = $d/ca.pem
signer_key = $d/tsa.key
signer_digest = sha256
default_policy = 1.2.3.4.1
other_policies = 1.2.3.4.2
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = yes
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
_CNF_
    close $fh;

    open $fh, '>', "$d/serial" or die $!;
    print $fh "01\n";
    close $fh;
}

sub start {
    my $self = shift;
    my $d = $self->{dir};

    my $daemon = HTTP::Daemon->new(LocalAddr => '127.0.0.1',
                                   LocalPort => $self->{port},
                                   ReuseAddr => 1)
        or die "TSA fixture: cannot listen on $self->{port}: $!\n";

    my $pid = fork // die "fork: $!";
    if ($pid) {
        close $daemon;
        $self->{pid} = $pid;
        $self->{owner} = $$;
        return $self;
    }

    my $n = 0;
    while (my $c = $daemon->accept) {
        while (my $req = $c->get_request) {
            $n++;
            if ($req->method ne 'POST'
                || ($req->header('Content-Type') // '')
                   ne 'application/timestamp-query')
            {
                $c->send_error(400);
                next;
            }

            open my $q, '>', "$d/q$n.der" or die $!;
            binmode $q;
            print $q $req->content;
            close $q;

            my $rc = system("openssl ts -reply -config $d/tsa.cnf"
                            . " -queryfile $d/q$n.der -out $d/r$n.der"
                            . " >>$d/tsa.log 2>&1");
            if ($rc != 0) {
                $c->send_error(500);
                next;
            }

            open my $r, '<', "$d/r$n.der" or die $!;
            binmode $r;
            my $body = do { local $/; <$r> };
            close $r;

            if (open my $df, '<', "$d/delay") {
                my $secs = <$df> // 0;
                select undef, undef, undef, $secs if $secs > 0;
            }

            if (open my $cf, '<', "$d/corrupt") {
                my $on = <$cf> // 0;
                substr($body, -1, 1) = chr(ord(substr($body, -1, 1)) ^ 1)
                    if $on;
            }

            my $res = HTTP::Response->new(200);
            $res->header('Content-Type' => 'application/timestamp-reply');
            $res->content($body);
            $c->send_response($res);
        }
        $c->close;
    }
    POSIX::_exit(0);
}

sub stop {
    my $self = shift;
    return unless $self->{pid} && $self->{owner} == $$;
    kill 'TERM', $self->{pid};
    waitpid $self->{pid}, 0;
    delete $self->{pid};
}

# how many queries it answered
sub answered {
    my $self = shift;
    my @r = glob "$self->{dir}/r*.der";
    return scalar @r;
}

sub DESTROY { $_[0]->stop }

1;
