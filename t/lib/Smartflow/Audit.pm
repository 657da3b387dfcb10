package Smartflow::Audit;

# A real nginx (master and workers) for the audit suites, which stop it,
# reload it, kill its workers and tamper with its audit folder between
# requests: things a Test::Nginx block cannot express.
#
#     my $gw = Smartflow::Audit->new(name => 'tamper', workers => 2,
#                                    http => $extra_http_lines);
#     $gw->start; $gw->chat('hi'); $gw->verify; $gw->stop;
#
# The server root is $TEST_NGINX_SERVROOT/<name> (default t/servroot),
# the port $TEST_NGINX_PORT (default 1984); the modules and binary are the
# ones scripts/test.sh exports.

use strict;
use warnings;

use Cwd ();
use File::Path ();
use File::Copy ();
use HTTP::Tiny;
use JSON::PP ();
use POSIX ();

use File::Basename ();

my $Top = Cwd::abs_path(File::Basename::dirname(__FILE__) . '/../../..');

our $MasterKey = 'sk-smartflow-test-0123456789';

sub top { $Top }

# under SMARTFLOW_ASAN the verifier built with AddressSanitizer and UBSan
# (make asan-modules), its findings left where scripts/test.sh looks
sub verifier {
    return $ENV{SMARTFLOW_VERIFY} if $ENV{SMARTFLOW_VERIFY};
    my $asan = "$Top/build-asan/smartflow-verify";
    return $asan if $ENV{SMARTFLOW_ASAN} && -x $asan;
    return "$Top/build/smartflow-verify";
}

sub verifier_env {
    return () unless $ENV{SMARTFLOW_ASAN};
    my $log = ($ENV{SMARTFLOW_ASAN_DIR} // '/tmp') . '/asan';
    return (ASAN_OPTIONS => "detect_leaks=0:abort_on_error=1:log_path=$log",
            UBSAN_OPTIONS => "print_stacktrace=1:log_path=$log");
}

sub new {
    my ($class, %o) = @_;
    my $root = ($ENV{TEST_NGINX_SERVROOT} // "$Top/t/servroot") . "/$o{name}";
    my $self = bless {
        root    => $root,
        port    => $o{port} // $ENV{TEST_NGINX_PORT} // 1984,
        workers => $o{workers} // 2,
        http    => $o{http} // '',
        server  => $o{server} // '',
        keys    => $o{keys},
        user    => $o{user},
        main    => $o{main} // '',
    }, $class;
    return $self;
}

sub root { $_[0]{root} }
sub dir  { "$_[0]{root}/audit" }
sub keys_file { "$_[0]{root}/audit.keys" }
sub port { $_[0]{port} }

# a fresh server root, its key file, its nginx.conf
sub setup {
    my $self = shift;
    my $root = $self->{root};

    _unprotect($root) if -d $root;
    File::Path::remove_tree($root);
    File::Path::make_path("$root/conf", "$root/logs");

    $self->write_keys($self->{keys} // "k1 " . ('a1' x 32) . " - -\n");
    $self->write_conf;
    return $self;
}

sub write_keys {
    my ($self, $text) = @_;
    open my $fh, '>', $self->keys_file or die $!;
    print $fh $text;
    close $fh;
}

sub write_conf {
    my ($self, %o) = @_;
    my $mods = $ENV{TEST_NGINX_MODULES} // "$Top/build/modules";
    my $conf = $ENV{TEST_NGINX_SMARTFLOW_CONF} // "$Top/conf";
    my $http = $o{http} // $self->{http};
    my $user = $> != 0 ? ''
             : $self->{user} ? "user $self->{user};\n"
             : "user nobody nogroup;\n";

    open my $fh, '>', "$self->{root}/conf/nginx.conf" or die $!;
    print $fh <<"_EOC_";
load_module $mods/ngx_http_smartflow_proxy_module.so;
load_module $mods/ngx_http_smartflow_policy_module.so;
load_module $mods/ngx_http_smartflow_cache_module.so;
load_module $mods/ngx_http_smartflow_audit_module.so;
${user}worker_processes $self->{workers};
error_log logs/error.log info;
pid logs/nginx.pid;
$self->{main}
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path $self->{root}/body;
    proxy_temp_path $self->{root}/proxy;
    smartflow_master_key $MasterKey;
    smartflow_provider demo type=echo;
    smartflow_route smartflow-echo demo;
    smartflow_audit_dir $self->{root}/audit;
    smartflow_audit_key_file $self->{root}/audit.keys;
$http
    server {
        listen 127.0.0.1:$self->{port};
        location = /v1/chat/completions {
            smartflow_api chat;
            include $conf/smartflow_proxy.conf;
        }
        location = /ping {
            return 200 "pong\n";
        }
        location = /v1/models {
            smartflow_api models;
            error_page 401 405 \@smartflow_error;
        }
        location \@smartflow_error {
            smartflow_api error;
        }
$self->{server}
    }
}
_EOC_
    close $fh;
}

sub binary { $ENV{TEST_NGINX_BINARY} // 'nginx' }

sub nginx {
    my ($self, @args) = @_;
    my $rc = system(binary(), '-p', "$self->{root}/", '-c',
                    "$self->{root}/conf/nginx.conf", @args);
    return $rc == 0;
}

sub master_pid {
    my $self = shift;
    open my $fh, '<', "$self->{root}/logs/nginx.pid" or return;
    my $pid = <$fh>;
    chomp $pid if defined $pid;
    return $pid;
}

sub worker_pids {
    my $self = shift;
    my $master = $self->master_pid or return ();
    my @pids;
    for my $d (glob '/proc/[0-9]*') {
        open my $fh, '<', "$d/stat" or next;
        my $stat = <$fh>;
        close $fh;
        my ($pid, $ppid) = $stat =~ /^(\d+) \(.*?\) \S+ (\d+)/ or next;
        push @pids, $pid if $ppid == $master;
    }
    return @pids;
}

sub wait_workers {
    my ($self, $n) = @_;
    for (1 .. 100) {
        return 1 if $self->worker_pids == $n && $self->up;
        select undef, undef, undef, 0.05;
    }
    return 0;
}

sub up {
    my $self = shift;
    my $r = HTTP::Tiny->new(timeout => 2)
        ->get("http://127.0.0.1:$self->{port}/ping");
    return $r->{status} == 200 ? 1 : 0;
}

sub start {
    my $self = shift;
    $self->nginx or die "nginx did not start\n";
    $self->wait_workers($self->{workers})
        or die "nginx workers did not come up\n";
}

# waits for the master to go
sub stop {
    my ($self, $signal) = @_;
    my $pid = $self->master_pid or return;
    kill $signal // 'QUIT', $pid;
    for (1 .. 200) {
        return 1 unless kill 0, $pid;
        select undef, undef, undef, 0.05;
    }
    kill 'KILL', $pid;
    return 0;
}

sub http { HTTP::Tiny->new(timeout => 10, keep_alive => 0) }

# a chat completion; its response
sub chat {
    my ($self, $content, %o) = @_;
    my $body = JSON::PP->new->canonical->encode({
        model => $o{model} // 'smartflow-echo',
        ($o{stream} ? (stream => JSON::PP::true) : ()),
        messages => [ { role => 'user', content => $content } ],
    });
    return $self->http->post(
        "http://127.0.0.1:$self->{port}/v1/chat/completions",
        { headers => { Authorization => "Bearer "
                                        . ($o{key} // $MasterKey),
                       'Content-Type' => 'application/json',
                       %{ $o{headers} // {} } },
          content => $body });
}

sub get {
    my ($self, $path, %o) = @_;
    my %h = exists $o{key} ? (defined $o{key}
                              ? (Authorization => "Bearer $o{key}") : ())
                           : (Authorization => "Bearer $MasterKey");
    return $self->http->get("http://127.0.0.1:$self->{port}$path",
                            { headers => \%h });
}

# runs the verifier: (exit code, decoded report, stderr)
sub verify {
    my ($self, $dir, @args) = @_;
    $dir //= $self->dir;
    my $cmd = join ' ', map { "'$_'" } verifier(), '--keys',
        $self->keys_file, @args, $dir;
    my %env = verifier_env();
    local @ENV{keys %env} = values %env;
    my $out = `$cmd 2>/dev/null`;
    # killed by a signal (a sanitizer's abort): 128 + the signal
    my $rc = ($? & 127) ? 128 + ($? & 127) : $? >> 8;
    my $rep = eval { JSON::PP->new->decode($out) };
    return ($rc, $rep, $out);
}

# N chats tagged TAG, each with a body of some 200 bytes: their receipt ids
sub chat_ids {
    my ($self, $n, $tag) = @_;
    my @ids;
    for my $i (1 .. $n) {
        my $r = $self->chat("$tag $i " . ('x' x 200));
        my ($id) = ($r->{headers}{'smartflow-audit-receipt'} // '')
            =~ /^id=([0-9a-f]{32});/;
        push @ids, $id if $id;
    }
    return @ids;
}

# the segment number of every record's request id, from the folder
sub id_segments {
    my $self = shift;
    my %seg;
    for my $rec ($self->records) {
        my ($n) = $rec->[0] =~ /segment-(\d+)\.log$/;
        my ($id) = $rec->[2] =~ /"request_id":"([0-9a-f]{32})"/;
        $seg{$id} = $n + 0 if $id;
    }
    return %seg;
}

# every record line, as [segment file, line number, text]
sub records {
    my ($self, $dir) = @_;
    $dir //= $self->dir;
    my @out;
    for my $f (sort glob "$dir/segment-*.log") {
        open my $fh, '<', $f or die "$f: $!";
        my $n = 0;
        while (my $l = <$fh>) {
            chomp $l;
            push @out, [ $f, ++$n, $l ];
        }
    }
    return @out;
}

# waits until no seal is pending: every closed segment has its seal
# (the LOG phase runs after the client has its answer: a moment first, as
# Test::Nginx's --- wait)
sub settle {
    my $self = shift;
    select undef, undef, undef, 0.3;
    for (1 .. 100) {
        my @logs = glob $self->dir . '/segment-*.log';
        my @seals = glob $self->dir . '/segment-*.seal';
        my @tmp = glob $self->dir . '/*.tmp';
        return 1 if @seals >= @logs - 1 && !@tmp;
        select undef, undef, undef, 0.05;
    }
    return 0;
}

# settle, then wait (5 s at most) until the receipts index holds the ids
# of every sealed segment: a seal that finds the index being written by
# another leaves its ids to that one, which may still be at work
sub settle_index {
    my $self = shift;
    return 0 unless $self->settle;
    for (1 .. 100) {
        my ($last) = sort { $b <=> $a }
                     map { /segment-(\d+)\.seal$/ ? $1 + 0 : () }
                     glob $self->dir . '/segment-*.seal';
        return 1 unless defined $last;
        if (open my $fh, '<', $self->dir . '/receipts/indexed') {
            my $line = <$fh>;
            close $fh;
            return 1 if $line && $line =~ /^(\d+) / && $1 >= $last;
        }
        select undef, undef, undef, 0.05;
    }
    return 0;
}

sub _unprotect {
    my $root = shift;
    # sealed files are read-only; a test may have made them immutable
    system("chattr -R -i '$root' 2>/dev/null") if $> == 0;
    system("chmod -R u+w '$root' 2>/dev/null");
}

# a writable copy of the audit folder's files (not its receipts index)
sub copy_dir {
    my ($self, $to) = @_;
    _unprotect($to) if -d $to;
    File::Path::remove_tree($to);
    File::Path::make_path($to);
    for my $f (grep { !-d } glob $self->dir . '/*') {
        (my $b = $f) =~ s{.*/}{};
        File::Copy::copy($f, "$to/$b") or die "copy $f: $!";
        chmod 0644, "$to/$b";
    }
    return $to;
}

1;
