#!/usr/bin/env bash
# The guardrails' cost in instructions, which the machine's load does not
# move: a one-worker front nginx (master_process off) runs under
# valgrind's callgrind; after 20 warm-up requests its counters are zeroed,
# N requests of bench/policy.sh's 4 KB chat body go over one keep-alive
# connection, and the counters are read back, for
#
#   (a) plain   proxy_pass to a static upstream
#   (b) policy  the gateway with the group BENCH_POLICY_GROUP (default)
#
# Prints user-space instructions per request (the kernel's work is not
# counted) and keeps the profiles in build/bench/callgrind.{plain,policy}
# for callgrind_annotate (the dump is taken mid-run: give it
# --threshold=100 to list every function).  Environment: BENCH_PORT
# (18880; three ports from it), BENCH_REQUESTS (200), BENCH_POLICY_GROUP (default; off for
# the gateway without guardrails).
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
modules=${SMARTFLOW_MODULES:-$top/build/modules}
group=${BENCH_POLICY_GROUP:-default}
n=${BENCH_REQUESTS:-200}
base=${BENCH_PORT:-18880}
port_up=$base
port_plain=$((base + 1))
port_gw=$((base + 2))

die() {
    echo "bench policy-instructions: $*" >&2
    exit 1
}

command -v valgrind >/dev/null || die "valgrind is missing"
command -v callgrind_control >/dev/null || die "callgrind_control is missing"

outdir=$top/build/bench
mkdir -p "$outdir"
st=$(mktemp -d "$outdir/instr.XXXXXX")
mkdir -p "$st"/{logs,tmp,front,upstream}

pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$st"
}
trap cleanup EXIT

user_line=""
[ "$(id -u)" = 0 ] && user_line="user root;"
key="sk-bench-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"

# the body of bench/policy.sh: business prose, one email, one phone number
para='Our quarterly report covers revenue, churn and hiring plans for the'
para+=' three regional teams. The migration to the new cluster finished'
para+=' early and latency dropped by twelve percent across the board. '
text="Please summarise this for the board. Send questions to"
text+=" finance@example.com or call +1 415 555 2671. "
while [ ${#text} -lt 4000 ]; do
    text+=$para
done
text=${text:0:4000}
printf '%s' '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"'"$text"'"}],"max_tokens":128}' \
    > "$st/body.json"

reply='{"id":"chatcmpl-bench","object":"chat.completion","created":1,'
reply+='"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":'
reply+='"assistant","content":"A short summary."},"finish_reason":"stop"}],'
reply+='"usage":{"prompt_tokens":900,"completion_tokens":4,'
reply+='"total_tokens":904}}'

cat > "$st/upstream/nginx.conf" <<CONF
$user_line
worker_processes 1;
daemon off;
pid $st/upstream/nginx.pid;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path $st/tmp/up-body;
    server {
        listen 127.0.0.1:$port_up;
        location / {
            default_type application/json;
            return 200 '$reply';
        }
    }
}
CONF

cat > "$st/front/nginx.conf" <<CONF
load_module $modules/ngx_http_smartflow_proxy_module.so;
load_module $modules/ngx_http_smartflow_policy_module.so;
$user_line
daemon off;
master_process off;
pid $st/front/nginx.pid;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path $st/tmp/body;
    proxy_temp_path $st/tmp/proxy;

    upstream bench_plain {
        server 127.0.0.1:$port_up;
        keepalive 8;
    }

    upstream sf_openai {
        server 127.0.0.1:$port_up;
        keepalive 8;
    }

    smartflow_master_key $key;
    smartflow_provider openai type=openai upstream=http://sf_openai
        host=127.0.0.1 path=/v1 key=sk-provider-bench-0000000000000000;
    smartflow_route gpt-* openai;

    include $top/conf/smartflow_policy.conf;

    server {
        listen 127.0.0.1:$port_plain;
        client_body_buffer_size 64k;

        location = /v1/chat/completions {
            proxy_pass http://bench_plain;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }

    server {
        listen 127.0.0.1:$port_gw;
        smartflow_policy $group;
        include $top/conf/smartflow_locations.conf;
    }
}
CONF

for f in smartflow_proxy.conf; do
    ln -s "$top/conf/$f" "$st/front/$f"
done

/usr/sbin/nginx -p "$st/upstream" -c "$st/upstream/nginx.conf" \
    -e "$st/logs/upstream-error.log" &
pids+=($!)
valgrind --tool=callgrind --callgrind-out-file="$st/cg.%p" \
    /usr/sbin/nginx -p "$st/front" -c "$st/front/nginx.conf" \
    -e "$st/logs/front-error.log" > "$st/logs/valgrind.log" 2>&1 &
front=$!
pids+=("$front")

for port in "$port_up" "$port_plain" "$port_gw"; do
    for ((i = 0; i < 300; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
done

# COUNT requests on one keep-alive connection to PORT
send() {
    python3 - "$1" "$2" "$key" "$st/body.json" <<'PY'
import http.client
import sys

port, count, key, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
body = open(path, 'rb').read()
c = http.client.HTTPConnection('127.0.0.1', port, timeout=60)
for _ in range(count):
    c.request('POST', '/v1/chat/completions', body,
              {'Content-Type': 'application/json',
               'Authorization': 'Bearer ' + key})
    r = c.getresponse()
    r.read()
    if r.status != 200:
        sys.exit('status %d' % r.status)
PY
}

measure() {
    local f ir
    send "$1" 20 || die "requests to port $1 failed"
    callgrind_control -z "$front" >/dev/null 2>&1
    send "$1" "$n" || die "requests to port $1 failed"
    callgrind_control -d "$2" "$front" >/dev/null 2>&1
    for ((i = 0; i < 50; i++)); do
        f=$(ls -t "$st"/cg.*.* 2>/dev/null | head -1 || true)
        [ -n "$f" ] && grep -q '^totals:' "$f" && break
        sleep 0.1
    done
    ir=$(awk '/^totals:/ { print $2; exit }' "$f")
    cp "$f" "$outdir/callgrind.$2"
    rm -f "$f"
    printf '%-7s %8d instructions per request\n' "$2" $((ir / n))
    # the detectors' share: the calls of the PII scan and of the
    # injection score, with all they call and all that is inlined in them
    callgrind_annotate --tree=calling --inclusive=yes --threshold=100 \
        "$outdir/callgrind.$2" 2>/dev/null | awk -v n="$n" '
            /^ *[0-9,]+ .* > .*:ngx_smartflow_(pii_scan|injection_score) \(/ {
                c = $1; gsub(",", "", c); t += c }
            END { if (t) printf "        %8d of them in the detectors\n",
                                t / n }'
}

echo "Smartflow policy instructions: 4 KB chat body, group $group, $n requests"
measure "$port_plain" plain
measure "$port_gw" policy
