#!/usr/bin/env bash
# The audit trail's cost: the gateway with audit off against the same
# gateway with audit on (smartflow_audit_dir: chained, signed records,
# segments sealed in the thread pool), in one run, called by bench/run.sh.
#
#   upstream  1 worker, `return 200 '<chat.completion JSON>'`
#   front     1 worker, two servers proxying to it through the shipped
#             conf/smartflow_proxy.conf: (off) "smartflow_audit off",
#             (on) audited into a fresh folder
#
# wrk (1 thread) drives both with the same request; the cases alternate
# for AUDIT_ROUNDS rounds of AUDIT_DURATION seconds after a warm-up, and
# the medians are compared.  Target: throughput on/off >= 0.95.  The
# folder is checked with smartflow-verify afterwards: every answered
# request must be in it.  CPUs are pinned as in bench/run.sh.
#
# Environment: AUDIT_DURATION (10), AUDIT_ROUNDS (3), AUDIT_CONNECTIONS
# (32), AUDIT_PORT (18650), BENCH_PIN (1), BENCH_NGINX (/usr/sbin/nginx),
# AUDIT_EXTRA (more http-level directives for the front, e.g.
# "smartflow_audit_segment_size 1000m;"), AUDIT_PERF=FILE (a perf profile
# of the front per case).
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
modules=${SMARTFLOW_MODULES:-$top/build/modules}
verify=$top/build/smartflow-verify
nginx=${BENCH_NGINX:-/usr/sbin/nginx}
duration=${AUDIT_DURATION:-10}
rounds=${AUDIT_ROUNDS:-3}
conns=${AUDIT_CONNECTIONS:-32}
port=${AUDIT_PORT:-18650}
pin=${BENCH_PIN:-1}
target=0.95

command -v wrk >/dev/null || { echo "audit bench: wrk is missing" >&2; exit 1; }
[ -x "$verify" ] || { echo "audit bench: build $verify (make verify)" >&2; exit 1; }

mkdir -p "$top/build/bench"
state=$(mktemp -d "$top/build/bench/audit.XXXXXX")
mkdir -p "$state"/{up,front,tmp,logs}

stop() {
    for p in "$state"/up/nginx.pid "$state"/front/nginx.pid; do
        [ -s "$p" ] && kill -QUIT "$(cat "$p")" 2>/dev/null || true
    done
    sleep 0.5
    chmod -R u+w "$state" 2>/dev/null || true
    [ "${BENCH_KEEP:-0}" = 1 ] || rm -rf "$state"
}
trap stop EXIT

port_up=$port port_off=$((port + 1)) port_on=$((port + 2))
key=sk-smartflow-bench-0123456789
printf 'k1 %s - -\n' "$(openssl rand -hex 32)" > "$state/audit.keys"

front_aff="" up_aff="" wrk_cmd=(wrk)
if [ "$pin" = 1 ] && [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null
then
    front_aff="worker_cpu_affinity 01;"
    up_aff="worker_cpu_affinity 10;"
    wrk_cmd=(taskset -c 1 wrk)
fi
user_line=""
[ "$(id -u)" = 0 ] && user_line="user root;"

reply='{"id":"chatcmpl-bench0001","object":"chat.completion","created":1732700000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Orders usually stay in processing while the warehouse confirms stock or the payment clears.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":71,"completion_tokens":45,"total_tokens":116}}'
body='{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a concise assistant for an online bookshop."},{"role":"user","content":"I ordered a paperback last Tuesday and the order page still says processing. What usually causes that delay?"}],"temperature":0.2,"max_tokens":128}'

cat > "$state/chat.lua" <<LUA
wrk.method = "POST"
wrk.body = [==[$body]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $key"
function done(summary, latency, requests)
    io.write(string.format("AUDIT requests=%.0f duration_us=%.0f p99_us=%.0f non2xx=%.0f errors=%.0f\n",
        summary.requests, summary.duration, latency:percentile(99),
        summary.errors.status, summary.errors.connect + summary.errors.read
        + summary.errors.write + summary.errors.timeout))
end
LUA

cat > "$state/up/nginx.conf" <<CONF
$user_line
worker_processes 1;
$up_aff
pid $state/up/nginx.pid;
error_log $state/logs/up.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $state/tmp/up-body;
    keepalive_requests 10000000;
    server {
        listen 127.0.0.1:$port_up backlog=4096;
        location / { default_type application/json; return 200 '$reply'; }
    }
}
CONF

cat > "$state/front/nginx.conf" <<CONF
load_module $modules/ngx_http_smartflow_proxy_module.so;
load_module $modules/ngx_http_smartflow_audit_module.so;
$user_line
worker_processes 1;
$front_aff
pid $state/front/nginx.pid;
error_log $state/logs/front.log warn;
thread_pool smartflow threads=1;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $state/tmp/body;
    proxy_temp_path $state/tmp/proxy;
    keepalive_requests 10000000;
    upstream sf_openai {
        server 127.0.0.1:$port_up;
        keepalive 64;
        keepalive_requests 10000000;
    }
    smartflow_master_key $key;
    smartflow_provider openai type=openai upstream=http://sf_openai
        host=127.0.0.1 path=/v1 key=sk-upstream;
    smartflow_route gpt-* openai;
    smartflow_audit_dir $state/audit;
    smartflow_audit_key_file $state/audit.keys;
    smartflow_audit_thread_pool smartflow;
    ${AUDIT_EXTRA:-}

    server {
        listen 127.0.0.1:$port_off backlog=4096;
        smartflow_audit off;
        location = /v1/chat/completions {
            smartflow_api chat;
            include $top/conf/smartflow_proxy.conf;
        }
    }
    server {
        listen 127.0.0.1:$port_on backlog=4096;
        location = /v1/chat/completions {
            smartflow_api chat;
            include $top/conf/smartflow_proxy.conf;
        }
    }
}
CONF

"$nginx" -p "$state/up/" -c "$state/up/nginx.conf"
"$nginx" -p "$state/front/" -c "$state/front/nginx.conf"
sleep 0.5

front_worker=$(pgrep -P "$(cat "$state/front/nginx.pid")" | head -1)
tck=$(getconf CLK_TCK)

cpu() {   # the front worker's user + system time, all its threads, in ticks
    awk '{print $14 + $15}' "/proc/$front_worker/stat"
}

run() {   # port seconds -> "requests/s p99_us answered cpu_us_per_request"
    local out c0 c1
    # AUDIT_PERF=FILE: a profile of the front during the audited runs
    if [ -n "${AUDIT_PERF:-}" ]; then
        perf record -g -o "$AUDIT_PERF.$1" -p "$front_worker" -- sleep "$2" \
            >/dev/null 2>&1 &
    fi
    c0=$(cpu)
    if [ -n "${AUDIT_INSNS:-}" ]; then
        perf stat -e instructions:u,instructions:k -x, -o "$state/insns.$1" \
            -p "$front_worker" -- sleep "$2" >/dev/null 2>&1 &
    fi
    out=$("${wrk_cmd[@]}" -t1 -c"$conns" -d"$2"s --latency -s "$state/chat.lua" \
          "http://127.0.0.1:$1/v1/chat/completions" | grep '^AUDIT')
    [[ $out =~ requests=([0-9]+)\ duration_us=([0-9]+)\ p99_us=([0-9]+)\ non2xx=([0-9]+)\ errors=([0-9]+) ]] \
        || { echo "audit bench: wrk said: $out" >&2; exit 1; }
    if [ "${BASH_REMATCH[4]}" != 0 ] || [ "${BASH_REMATCH[5]}" != 0 ]; then
        echo "audit bench: non-2xx answers or socket errors: $out" >&2
        exit 1
    fi
    c1=$(cpu)
    if [ -n "${AUDIT_INSNS:-}" ]; then
        wait
        echo "insns port $1: $(grep instructions "$state/insns.$1" | cut -d, -f1,3 | tr '\n' ' ') requests ${BASH_REMATCH[1]}" >&2
    fi
    echo "$(( BASH_REMATCH[1] * 1000000 / BASH_REMATCH[2] )) ${BASH_REMATCH[3]}" \
         "${BASH_REMATCH[1]}" \
         "$(awk -v c=$((c1 - c0)) -v t="$tck" -v n="${BASH_REMATCH[1]}" \
              'BEGIN {printf "%.1f", c * 1000000 / t / n}')"
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

run "$port_off" 2 >/dev/null
run "$port_on" 2 > "$state/warm"
answered=$(awk '{print $3}' "$state/warm")

rps_off=() rps_on=() p99_off=() p99_on=() cpu_off=() cpu_on=()
# the cases take turns going first, so a machine that slows down or
# speeds up during a round favours neither
for i in $(seq "$rounds"); do
    for which in $( ((i % 2)) && echo "off on" || echo "on off"); do
        if [ "$which" = off ]; then
            read -r r p _ c < <(run "$port_off" "$duration")
            rps_off+=("$r") p99_off+=("$p") cpu_off+=("$c")
        else
            read -r r p n c < <(run "$port_on" "$duration")
            rps_on+=("$r") p99_on+=("$p") cpu_on+=("$c")
            answered=$((answered + n))
        fi
    done
    echo "round $i: off ${rps_off[-1]} req/s p99 ${p99_off[-1]} us" \
         "${cpu_off[-1]} us CPU/req; on ${rps_on[-1]} req/s" \
         "p99 ${p99_on[-1]} us ${cpu_on[-1]} us CPU/req"
done

m_off=$(median "${rps_off[@]}") m_on=$(median "${rps_on[@]}")
q_off=$(median "${p99_off[@]}") q_on=$(median "${p99_on[@]}")
ratio=$(awk -v a="$m_on" -v b="$m_off" 'BEGIN {printf "%.3f", a / b}')
p99r=$(awk -v a="$q_on" -v b="$q_off" 'BEGIN {printf "%.2f", a / b}')
c_off=$(median "${cpu_off[@]}") c_on=$(median "${cpu_on[@]}")
# what the front can serve per CPU second, on over off: the throughput
# ratio of a CPU-bound front, and the figure a busy machine spoils least
cpur=$(awk -v a="$c_off" -v b="$c_on" 'BEGIN {printf "%.3f", a / b}')
pass=$(awk -v r="$ratio" -v t="$target" 'BEGIN {print (r >= t) ? "PASS" : "FAIL"}')

# every answered request is in the folder, and the folder holds
sleep 0.5
report=$("$verify" --keys "$state/audit.keys" "$state/audit" || true)
records=$(printf '%s' "$report" | sed -n 's/.*"records":\([0-9]*\).*/\1/p')
ok=$(printf '%s' "$report" | sed -n 's/.*"ok":\(true\|false\).*/\1/p')

echo "audit: off $m_off req/s (p99 $q_off us), on $m_on req/s (p99 $q_on us)"
echo "audit: throughput on/off $ratio (target >= $target: $pass), p99 on/off $p99r"
echo "audit: front CPU per request off $c_off us, on $c_on us:" \
     "requests per CPU second on/off $cpur"
echo "audit: $records records for $answered answered requests, verifier ok=$ok"

# the floor: the SHA-256 work the record needs (both bodies, its leaf
# hash, its HMAC), timed alone on the front's CPU, against the front's
# CPU per request with audit off
floor=null ceiling=null
mkdir -p "$top/build/bench"
if cc -O2 -Wall -Wextra -Werror "$top/bench/audit-floor.c" -lcrypto \
       -o "$top/build/bench/audit-floor" 2>/dev/null; then
    bytes=$(cat "$state"/audit/segment-*.log 2>/dev/null | wc -c)
    line=$(( bytes / ${records:-1} ))
    resp=$(head -n 1 "$(ls "$state"/audit/segment-*.log | head -n 1)" \
           | sed -n 's/.*"response_bytes":\([0-9]*\).*/\1/p')
    floor_cmd=("$top/build/bench/audit-floor")
    [ -n "$front_aff" ] && floor_cmd=(taskset -c 0 "${floor_cmd[@]}")
    floor=$("${floor_cmd[@]}" "${#body}" "${resp:-0}" "$line" \
            | sed -n 's/^floor_us //p')
    ceiling=$(awk -v o="$c_off" -v f="$floor" \
              'BEGIN {printf "%.3f", o / (o + f)}')
    echo "audit: hashing a record needs $floor us alone (request ${#body} B," \
         "response ${resp:-0} B, record $line B): with $c_off us of CPU per" \
         "request off, on/off is at most $ceiling"
fi

cat > "$top/build/bench/audit.json" <<JSON
{"off": {"rps": $m_off, "p99_us": $q_off}, "on": {"rps": $m_on, "p99_us": $q_on},
 "cpu_us_per_request": {"off": $c_off, "on": $c_on},
 "ratio": {"throughput": $ratio, "p99": $p99r, "requests_per_cpu": $cpur},
 "target": $target,
 "hash_floor_us": ${floor:-null}, "ceiling": ${ceiling:-null},
 "result": "$pass", "records": ${records:-0}, "answered": $answered,
 "verified": ${ok:-false}}
JSON

# wrk does not count the requests still in flight when a run ends: the
# folder may hold a few more, never fewer
[ "$ok" = true ] && [ "${records:-0}" -ge "$answered" ] || {
    echo "audit bench: the folder does not hold every answered request" >&2
    exit 1
}
