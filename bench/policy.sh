#!/usr/bin/env bash
# The guardrails' cost: a 4 KB chat prompt through
#
#   (a) plain   nginx proxy_pass to a static upstream
#   (b) policy  the gateway with the shipped "default" policy group
#               (conf/smartflow_policy.conf: PII and secrets redacted,
#               injection scored, Shield on), the shipped locations
#   (c) gateway the same locations with "smartflow_policy off"
#
# in the same run, against the same upstream, with wrk: the throughput
# ratio b/a (target >= 0.85) and the front worker's CPU time per request;
# c/a is what the gateway leaves to the guardrails (b/a cannot exceed it).
# The prompt is ordinary business text with one email and one phone
# number, so the redaction path runs too.  Then the detectors' own scan
# cost per KB, from the module's sources (make policy-harness).
#
# Environment: BENCH_DURATION (8), BENCH_CONNECTIONS (32), BENCH_ROUNDS
# (3), BENCH_PORT (18860), BENCH_PIN (1), BENCH_NGINX (/usr/sbin/nginx),
# BENCH_POLICY_GROUP (default; "off" measures the gateway without
# guardrails on the same 4 KB body, to tell their cost from the rest).
# The summary goes to build/bench/policy.json.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
modules=${SMARTFLOW_MODULES:-$top/build/modules}
nginx=${BENCH_NGINX:-/usr/sbin/nginx}
duration=${BENCH_DURATION:-8}
conns=${BENCH_CONNECTIONS:-32}
rounds=${BENCH_ROUNDS:-3}
port_base=${BENCH_PORT:-18860}
group=${BENCH_POLICY_GROUP:-default}
pin=${BENCH_PIN:-1}

die() {
    echo "bench policy: $*" >&2
    exit 1
}

command -v wrk >/dev/null || die "wrk is missing (Debian package wrk)"
for m in proxy policy cache audit; do
    [ -f "$modules/ngx_http_smartflow_${m}_module.so" ] \
        || die "module $m not built in $modules; run make first"
done

outdir=$top/build/bench
mkdir -p "$outdir"
state=$(mktemp -d "$outdir/policy.XXXXXX")
mkdir -p "$state"/{logs,tmp,front,upstream,modules}
cp "$modules"/ngx_http_smartflow_{proxy,policy,cache,audit}_module.so \
    "$state/modules/"

pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$state"
}
trap cleanup EXIT

port_free() {
    [ -z "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]
}

ports=()
p=$port_base
while [ "${#ports[@]}" -lt 4 ]; do
    [ "$p" -lt $((port_base + 200)) ] || die "no free ports from $port_base"
    port_free "$p" && ports+=("$p")
    p=$((p + 1))
done
port_up=${ports[0]}
port_plain=${ports[1]}
port_gw=${ports[2]}
port_off=${ports[3]}

if [ "$pin" = 1 ] && [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null
then
    front_affinity="worker_cpu_affinity 01;"
    up_affinity="worker_cpu_affinity 10;"
    wrk_cmd=(taskset -c 1 wrk)
else
    front_affinity=""
    up_affinity=""
    wrk_cmd=(wrk)
fi

user_line=""
[ "$(id -u)" = 0 ] && user_line="user root;"

key="sk-bench-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"

# a 4 KB prompt: business prose, one email and one phone number
para='Our quarterly report covers revenue, churn and hiring plans for the'
para+=' three regional teams. The migration to the new cluster finished'
para+=' early and latency dropped by twelve percent across the board. '
text="Please summarise this for the board. Send questions to"
text+=" finance@example.com or call +1 415 555 2671. "
while [ ${#text} -lt 4000 ]; do
    text+=$para
done
text=${text:0:4000}
body='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"'
body+="$text"'"}],"max_tokens":128}'
printf '%s' "$body" > "$state/body.json"

reply='{"id":"chatcmpl-bench","object":"chat.completion","created":1,'
reply+='"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":'
reply+='"assistant","content":"A short summary."},"finish_reason":"stop"}],'
reply+='"usage":{"prompt_tokens":900,"completion_tokens":4,'
reply+='"total_tokens":904}}'

cat > "$state/chat.lua" <<LUA
wrk.method = "POST"
wrk.body = [==[$body]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $key"

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format("BENCH requests=%.0f duration_us=%.0f "
        .. "errors=%.0f\n", summary.requests, summary.duration,
        e.status + e.connect + e.read + e.write + e.timeout))
end
LUA

cat > "$state/upstream/nginx.conf" <<CONF
$user_line
worker_processes 1;
$up_affinity
daemon off;
pid $state/upstream/nginx.pid;
error_log $state/logs/upstream-error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $state/tmp/up-body;
    keepalive_requests 10000000;
    server {
        listen 127.0.0.1:$port_up backlog=4096;
        location / {
            default_type application/json;
            return 200 '$reply';
        }
    }
}
CONF

cat > "$state/front/nginx.conf" <<CONF
load_module $state/modules/ngx_http_smartflow_proxy_module.so;
load_module $state/modules/ngx_http_smartflow_policy_module.so;
load_module $state/modules/ngx_http_smartflow_cache_module.so;
load_module $state/modules/ngx_http_smartflow_audit_module.so;
$user_line
worker_processes 1;
$front_affinity
daemon off;
pid $state/front/nginx.pid;
error_log $state/logs/front-error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $state/tmp/body;
    proxy_temp_path $state/tmp/proxy;
    keepalive_requests 10000000;

    upstream bench_plain {
        server 127.0.0.1:$port_up;
        keepalive 64;
    }

    upstream sf_openai {
        server 127.0.0.1:$port_up;
        keepalive 64;
    }

    smartflow_master_key $key;
    smartflow_provider openai type=openai upstream=http://sf_openai
        host=127.0.0.1 path=/v1 key=sk-provider-bench-0000000000000000;
    smartflow_route gpt-* openai;

    include $top/conf/smartflow_policy.conf;

    server {
        listen 127.0.0.1:$port_plain backlog=4096;
        client_body_buffer_size 64k;

        location = /v1/chat/completions {
            proxy_pass http://bench_plain;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }

    server {
        listen 127.0.0.1:$port_gw backlog=4096;
        smartflow_policy $group;
        include $top/conf/smartflow_locations.conf;
    }

    server {
        listen 127.0.0.1:$port_off backlog=4096;
        smartflow_policy off;
        include $top/conf/smartflow_locations.conf;
    }
}
CONF

for f in smartflow_proxy.conf; do
    ln -s "$top/conf/$f" "$state/front/$f"
done

for inst in upstream front; do
    "$nginx" -t -q -p "$state/$inst" -c "$state/$inst/nginx.conf" \
        -e "$state/logs/$inst-error.log" || die "nginx -t failed ($inst)"
    "$nginx" -p "$state/$inst" -c "$state/$inst/nginx.conf" \
        -e "$state/logs/$inst-error.log" &
    pids+=($!)
done

for port in "$port_up" "$port_plain" "$port_gw" "$port_off"; do
    for ((i = 0; i < 100; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
done

# the policy path really redacts: the upstream is not an echo, so ask the
# gateway for its decision header
hdr=$(curl -s -o /dev/null -D - -X POST \
          "http://127.0.0.1:$port_gw/v1/chat/completions" \
          -H "Authorization: Bearer $key" \
          -H 'Content-Type: application/json' \
          --data-binary @"$state/body.json")
[ "$group" != default ] || [[ $hdr == *"x-smartflow-policy: email:redact,phone:redact"* ]] \
    || die "the default group did not redact: $hdr"

front_worker=$(ps -o pid= --ppid "${pids[1]}" | tr -d ' ')
clk_tck=$(getconf CLK_TCK)

# run URL SECONDS: sets r_rps and r_us (front CPU per request)
run() {
    local out line n d f0 f1
    f0=$(awk '{ print $14 + $15 }' "/proc/$front_worker/stat")
    out=$("${wrk_cmd[@]}" -t1 -c"$conns" -d"${2}s" --timeout 5s \
              -s "$state/chat.lua" "$1" 2>&1)
    f1=$(awk '{ print $14 + $15 }' "/proc/$front_worker/stat")
    line=$(grep '^BENCH ' <<<"$out") || die "no summary from wrk: $out"
    [[ $line == *" errors=0"* ]] || die "errors in the run: $line"
    n=${line#*requests=}; n=${n%% *}
    d=${line#*duration_us=}; d=${d%% *}
    r_rps=$(awk -v n="$n" -v d="$d" 'BEGIN { printf "%.1f", n / (d / 1e6) }')
    r_us=$(awk -v f="$((f1 - f0))" -v hz="$clk_tck" -v n="$n" \
               'BEGIN { printf "%.1f", f * 1e6 / hz / n }')
}

median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        printf "%.1f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

url_a=http://127.0.0.1:$port_plain/v1/chat/completions
url_b=http://127.0.0.1:$port_gw/v1/chat/completions
url_c=http://127.0.0.1:$port_off/v1/chat/completions

echo "Smartflow policy benchmark: ${#body}-byte chat body, policy group $group"
run "$url_a" 2
run "$url_b" 2
run "$url_c" 2

ra=() rb=() rc=() ua=() ub=() uc=()
printf '%-6s %-8s %10s %10s\n' round case req/s front_us
for ((i = 1; i <= rounds; i++)); do
    run "$url_a" "$duration"; ra+=("$r_rps"); ua+=("$r_us")
    printf '%-6s %-8s %10s %10s\n' "$i" plain "$r_rps" "$r_us"
    run "$url_b" "$duration"; rb+=("$r_rps"); ub+=("$r_us")
    printf '%-6s %-8s %10s %10s\n' "$i" policy "$r_rps" "$r_us"
    run "$url_c" "$duration"; rc+=("$r_rps"); uc+=("$r_us")
    printf '%-6s %-8s %10s %10s\n' "$i" gateway "$r_rps" "$r_us"
done

m_a=$(median "${ra[@]}"); m_b=$(median "${rb[@]}")
u_a=$(median "${ua[@]}"); u_b=$(median "${ub[@]}")
m_c=$(median "${rc[@]}"); u_c=$(median "${uc[@]}")
ratio=$(awk -v a="$m_a" -v b="$m_b" 'BEGIN { printf "%.3f", b / a }')
ratio_c=$(awk -v a="$m_a" -v c="$m_c" 'BEGIN { printf "%.3f", c / a }')
verdict=$(awk -v r="$ratio" 'BEGIN { print (r >= 0.85) ? "PASS" : "FAIL" }')

if grep -E '\[(error|crit|alert|emerg)\]' "$state"/logs/*.log >&2; then
    die "errors in the logs; the run is not valid"
fi

# the detectors alone, in-process, on a 4 KB text
make -s -C "$top" policy-harness >/dev/null
scan=$("$top/t/policy/measure.py" --json \
       | sed -n 's/.*"cost_ns_per_kb": \([0-9]*\).*/\1/p')

echo
printf 'median req/s: plain %s, policy %s, ratio %s >= 0.85 %s\n' \
    "$m_a" "$m_b" "$ratio" "$verdict"
printf 'front CPU per request: plain %s us, policy %s us\n' "$u_a" "$u_b"
printf 'without guardrails: %s req/s, ratio %s, front CPU %s us per request\n' \
    "$m_c" "$ratio_c" "$u_c"
printf 'scan cost (PII + injection, default detectors): %s ns per KB\n' \
    "$scan"

cat > "$outdir/policy.json" <<JSON
{"benchmark":"smartflow-policy","group":"$group","request_bytes":${#body},
 "rps_plain":$m_a,"rps_policy":$m_b,"ratio":$ratio,"target":0.85,
 "front_us_plain":$u_a,"front_us_policy":$u_b,"scan_ns_per_kb":$scan,
 "rps_gateway":$m_c,"ratio_gateway":$ratio_c,"front_us_gateway":$u_c}
JSON
