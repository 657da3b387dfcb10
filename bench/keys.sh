#!/usr/bin/env bash
# The virtual-key path against plain nginx, in one run (called by
# bench/run.sh, or alone):
#
#   (a) plain     nginx proxy_pass to a static upstream
#   (g) gateway   the same pipeline with the master key: no key lookup,
#                 no limits (the reference for what the key path adds)
#   (e) embedded  a virtual key with rpm, tpm and a budget: its digest
#                 looked up in the keys zone, the request counted and its
#                 estimate reserved under the zone's lock, settled in the
#                 LOG phase, the x-ratelimit-* headers added
#   (r) redis     the same key and limits with smartflow_redis: the
#                 reservation and the settlement are Lua scripts run by a
#                 local redis-server, over the worker's one connection
#
# The same method as bench/run.sh: one front worker on CPU 0, the upstream
# worker, redis-server and wrk on CPU 1; a warm-up per case, then
# BENCH_ROUNDS rounds alternating a, g, e, r; the medians are compared.
# Targets: throughput e/a >= 0.85 and r/a >= 0.7; missing them prints
# FAIL but exits 0.  Non-2xx answers, socket errors or errors in the logs
# make the run invalid (exit 1).  The summary goes to
# build/bench/keys.json.
#
# Environment: BENCH_DURATION (10), BENCH_CONNECTIONS (32), BENCH_ROUNDS
# (3), BENCH_WARMUP (3), BENCH_PIN (1), BENCH_KEYS_PORT (19840, first of
# the 5 ports tried), BENCH_NGINX, BENCH_KEEP.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
modules=${SMARTFLOW_MODULES:-$top/build/modules}
nginx=${BENCH_NGINX:-/usr/sbin/nginx}
duration=${BENCH_DURATION:-10}
conns=${BENCH_CONNECTIONS:-32}
rounds=${BENCH_ROUNDS:-3}
warmup=${BENCH_WARMUP:-3}
pin=${BENCH_PIN:-1}
port_base=${BENCH_KEYS_PORT:-19840}
keep=${BENCH_KEEP:-0}

min_embedded=0.85
min_redis=0.7

die() {
    echo "bench keys: $*" >&2
    exit 1
}

command -v wrk >/dev/null || die "wrk is missing (Debian package wrk)"
command -v redis-server >/dev/null || die "redis-server is missing"
[ -f "$modules/ngx_http_smartflow_proxy_module.so" ] \
    || die "the proxy module is not built in $modules; run make first"

outdir=$top/build/bench
mkdir -p "$outdir"
state=$(mktemp -d "$outdir/keys.XXXXXX")
mkdir -p "$state"/{logs,tmp,upstream,embedded,redis,modules}
cp "$modules/ngx_http_smartflow_proxy_module.so" "$state/modules/"

pids=()
ok=0

cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "$ok" = 1 ] && [ "$keep" != 1 ]; then
        rm -rf "$state"
    else
        echo "bench keys: state kept in $state" >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ports=()
p=$port_base
while [ "${#ports[@]}" -lt 5 ]; do
    [ "$p" -lt $((port_base + 200)) ] || die "no free ports from $port_base"
    [ -z "$(ss -Hltn "sport = :$p" 2>/dev/null)" ] && ports+=("$p")
    p=$((p + 1))
done
port_up=${ports[0]}
port_plain=${ports[1]}
port_emb=${ports[2]}
port_red=${ports[3]}
port_redis=${ports[4]}

master="sk-bench-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"

if [ "$pin" = 1 ] && [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null
then
    front_affinity="worker_cpu_affinity 01;"
    up_affinity="worker_cpu_affinity 10;"
    on1=(taskset -c 1)
    pin_note="front worker on CPU 0; upstream, redis-server and wrk on CPU 1"
else
    front_affinity=""
    up_affinity=""
    on1=()
    pin_note="no CPU pinning"
fi

user_line=""
[ "$(id -u)" = 0 ] && user_line="user root;"

body='{"model":"gpt-4o-mini","messages":[{"role":"system",'
body+='"content":"You are a concise assistant for an online bookshop."},'
body+='{"role":"user","content":"My paperback order still says '
body+='processing. What usually causes that delay?"}],"max_tokens":128}'

reply='{"id":"chatcmpl-bench0001","object":"chat.completion",'
reply+='"created":1732700000,"model":"gpt-4o-mini-2024-07-18",'
reply+='"choices":[{"index":0,"message":{"role":"assistant",'
reply+='"content":"Usually stock checks or payment clearing; it takes a '
reply+='few business days."},"finish_reason":"stop"}],'
reply+='"usage":{"prompt_tokens":41,"completion_tokens":15,'
reply+='"total_tokens":56}}'

cat > "$state/upstream/nginx.conf" <<CONF
$user_line
worker_processes 1;
$up_affinity
daemon off;
pid $state/upstream/nginx.pid;
error_log $state/logs/upstream.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $state/tmp/up-body;
    proxy_temp_path $state/tmp/up-proxy;
    fastcgi_temp_path $state/tmp/up-fastcgi;
    uwsgi_temp_path $state/tmp/up-uwsgi;
    scgi_temp_path $state/tmp/up-scgi;
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

# front NAME PORT EXTRA [PLAIN_PORT]
front() {
    local plain=""
    if [ -n "${4:-}" ]; then
        plain="server {
        listen 127.0.0.1:$4 backlog=4096;
        location = /v1/chat/completions {
            proxy_pass http://bench_plain;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
    fi
    cat > "$state/$1/nginx.conf" <<CONF
load_module $state/modules/ngx_http_smartflow_proxy_module.so;
$user_line
worker_processes 1;
$front_affinity
daemon off;
pid $state/$1/nginx.pid;
error_log $state/logs/$1.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $state/tmp/$1-body;
    proxy_temp_path $state/tmp/$1-proxy;
    fastcgi_temp_path $state/tmp/$1-fastcgi;
    uwsgi_temp_path $state/tmp/$1-uwsgi;
    scgi_temp_path $state/tmp/$1-scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    upstream bench_plain {
        server 127.0.0.1:$port_up;
        keepalive 64;
        keepalive_requests 10000000;
    }
    upstream sf_openai {
        server 127.0.0.1:$port_up;
        keepalive 64;
        keepalive_requests 10000000;
    }
    smartflow_master_key $master;
    smartflow_keys_zone keys 4m;
    $3
    smartflow_provider openai type=openai upstream=http://sf_openai
        host=127.0.0.1 path=/v1 key=sk-provider-bench-0000000000000000;
    smartflow_route gpt-* openai;
    smartflow_price gpt-* 0.15 0.60;
    $plain
    server {
        listen 127.0.0.1:$2 backlog=4096;
        location = /v1/chat/completions {
            smartflow_api chat;
            include $top/conf/smartflow_proxy.conf;
        }
        include $top/conf/smartflow_admin.conf;
        location @smartflow_error {
            smartflow_api error;
        }
    }
}
CONF
}

front embedded "$port_emb" "" "$port_plain"
front redis "$port_red" "smartflow_redis 127.0.0.1:$port_redis ${BENCH_REDIS_PARAMS:-};"

"${on1[@]}" redis-server --port "$port_redis" --bind 127.0.0.1 --save '' \
    --appendonly no --dir "$state" > "$state/redis-server.log" 2>&1 &
pids+=($!)
# Redis answers before the fronts start: they would log it missing
for ((i = 0; i < 100; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port_redis") 2>/dev/null && break
    sleep 0.1
done
"$nginx" -p "$state/upstream" -c "$state/upstream/nginx.conf" \
    -e "$state/logs/upstream.log" &
pids+=($!)
for f in embedded redis; do
    "$nginx" -p "$state/$f" -c "$state/$f/nginx.conf" -e "$state/logs/$f.log" &
    pids+=($!)
done

for p in "$port_redis" "$port_up" "$port_plain" "$port_emb" "$port_red"; do
    for ((i = 0; i < 100; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break
        sleep 0.1
    done
    [ "$i" -lt 100 ] || die "nothing listens on 127.0.0.1:$p"
done
sleep 0.5

# a key with every limit, far above what the run reaches
mkkey() {
    curl -s --max-time 5 -X POST "http://127.0.0.1:$1/api/auth/virtual-keys" \
        -H "Authorization: Bearer $master" \
        -d '{"name":"bench","rpm":100000000,"tpm":100000000000,"budget_usd":1000000}' \
        | sed -n 's/.*"key":"\(sk-sf-[0-9a-f]*\)".*/\1/p'
}
key_emb=$(mkkey "$port_emb")
key_red=$(mkkey "$port_red")
[ -n "$key_emb" ] && [ -n "$key_red" ] || die "no virtual key made"

# each case checked once: served, with the key's headers
for c in "plain $port_plain $master" "gateway $port_emb $master" \
         "embedded $port_emb $key_emb" \
         "redis $port_red $key_red"
do
    set -- $c
    out=$(curl -s -i --max-time 5 -X POST \
              "http://127.0.0.1:$2/v1/chat/completions" \
              -H 'Content-Type: application/json' \
              -H "Authorization: Bearer $3" -d "$body")
    [[ $out == *"HTTP/1.1 200"* && $out == *chat.completion* ]] \
        || die "$1: not served: $out"
    if [ "$1" = embedded ] || [ "$1" = redis ]; then
        [[ $out == *x-ratelimit-remaining-requests* ]] \
            || die "$1: no x-ratelimit headers: $out"
    fi
done

script() {
    cat > "$state/$1.lua" <<LUA
wrk.method = "POST"
wrk.body = [==[$body]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $2"
function done(s, l, r)
    local e = s.errors
    io.write(string.format("BENCH requests=%.0f duration_us=%.0f "
        .. "p99_us=%.0f bad=%.0f\n", s.requests, s.duration,
        l:percentile(99), e.status + e.connect + e.read + e.write
        + e.timeout))
end
LUA
}
script plain "$master"
script gateway "$master"
script embedded "$key_emb"
script redis "$key_red"

declare -A url=([plain]=$port_plain [gateway]=$port_emb [embedded]=$port_emb
                [redis]=$port_red)

ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

worker_of() {
    ps -o pid= --ppid "$(cat "$state/$1/nginx.pid")" | tr -d ' '
}

declare -A worker=([plain]=$(worker_of embedded)
                   [gateway]=$(worker_of embedded)
                   [embedded]=$(worker_of embedded)
                   [redis]=$(worker_of redis))
redis_pid=${pids[0]}
clk_tck=$(getconf CLK_TCK)

# run CASE SECONDS: sets r_rps, r_p99, r_front_us and r_redis_us (CPU
# time per request of the front worker and of redis-server)
run() {
    local out=$state/wrk-$1.txt line f0 f1 s0 s1
    f0=$(ticks "${worker[$1]}")
    s0=$(ticks "$redis_pid")
    "${on1[@]}" wrk -t1 -c"$conns" -d"${2}s" --timeout 5s --latency \
        -s "$state/$1.lua" "http://127.0.0.1:${url[$1]}/v1/chat/completions" \
        > "$out" 2>&1 || { cat "$out" >&2; die "wrk failed ($1)"; }
    line=$(grep '^BENCH ' "$out") || { cat "$out" >&2; die "no summary"; }
    [[ $line =~ requests=([0-9]+)\ duration_us=([0-9]+)\ p99_us=([0-9]+)\ bad=([0-9]+) ]] \
        || die "unreadable summary: $line"
    [ "${BASH_REMATCH[4]}" = 0 ] \
        || { cat "$out" >&2; die "$1: ${BASH_REMATCH[4]} errors"; }
    r_rps=$(awk -v n="${BASH_REMATCH[1]}" -v d="${BASH_REMATCH[2]}" \
                'BEGIN { printf "%.1f", n / (d / 1e6) }')
    r_p99=${BASH_REMATCH[3]}
    f1=$(ticks "${worker[$1]}")
    s1=$(ticks "$redis_pid")
    read -r r_front_us r_redis_us < <(awk -v f="$((f1 - f0))" \
        -v s="$((s1 - s0))" -v n="${BASH_REMATCH[1]}" -v hz="$clk_tck" \
        'BEGIN { printf "%.1f %.1f\n", f * 1e6 / hz / n, s * 1e6 / hz / n }')
}

median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
        printf "%.1f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR/2] + v[NR/2+1]) / 2 }'
}

echo "Smartflow virtual-key benchmark: $(nproc) CPUs, $pin_note"
echo "  wrk -t1 -c$conns -d${duration}s, ${#body}-byte chat body;" \
     "warm-up ${warmup}s each, $rounds rounds alternating a, g, e, r"

for c in plain gateway embedded redis; do
    run "$c" "$warmup"
done

declare -A rps p99 fus rus
printf '%-6s %-9s %10s %8s %9s %9s\n' round case req/s p99_ms front_us \
    redis_us
for ((i = 1; i <= rounds; i++)); do
    for c in plain gateway embedded redis; do
        run "$c" "$duration"
        rps[$c]+="$r_rps "
        p99[$c]+="$r_p99 "
        fus[$c]+="$r_front_us "
        rus[$c]+="$r_redis_us "
        printf '%-6s %-9s %10s %8.2f %9s %9s\n' "$i" "$c" "$r_rps" \
            "$(awk -v u="$r_p99" 'BEGIN { print u / 1000 }')" \
            "$r_front_us" "$r_redis_us"
    done
done

# how well the worker's commands share Redis's reads
if command -v redis-cli >/dev/null; then
    redis-cli -p "$port_redis" info stats | tr -d '\r' | awk -F: '
        $1 == "total_commands_processed" { c = $2 }
        $1 == "total_reads_processed" { r = $2 }
        END { if (r) printf "redis-server: %d commands in %d reads " \
                            "(%.2f a read)\n", c, r, c / r }'
fi

for f in "$state"/logs/{embedded,redis,upstream}.log; do
    if grep -E '\[(error|crit|alert|emerg)\]' "$f" >&2; then
        die "errors in $f; the run is not valid"
    fi
done

# shellcheck disable=SC2086
{
    a=$(median ${rps[plain]}); e=$(median ${rps[embedded]})
    g=$(median ${rps[gateway]}); pg=$(median ${p99[gateway]})
    fg=$(median ${fus[gateway]})
    r=$(median ${rps[redis]})
    pa=$(median ${p99[plain]}); pe=$(median ${p99[embedded]})
    pr=$(median ${p99[redis]})
    fa=$(median ${fus[plain]}); fe=$(median ${fus[embedded]})
    fr=$(median ${fus[redis]}); rr_us=$(median ${rus[redis]})
}
re=$(awk -v a="$a" -v b="$e" 'BEGIN { printf "%.3f", b / a }')
rr=$(awk -v a="$a" -v b="$r" 'BEGIN { printf "%.3f", b / a }')
rg=$(awk -v a="$a" -v b="$g" 'BEGIN { printf "%.3f", b / a }')
reg=$(awk -v a="$g" -v b="$e" 'BEGIN { printf "%.3f", b / a }')
rrg=$(awk -v a="$g" -v b="$r" 'BEGIN { printf "%.3f", b / a }')
ve=$(awk -v v="$re" -v l="$min_embedded" 'BEGIN { print ((v >= l) ? "PASS" : "FAIL") }')
vr=$(awk -v v="$rr" -v l="$min_redis" 'BEGIN { print ((v >= l) ? "PASS" : "FAIL") }')

echo
echo "median of $rounds rounds"
printf '%-28s %10s %8s\n' "" req/s p99_ms
printf '%-28s %10s %8.2f\n' "(a) nginx proxy_pass" "$a" "$(awk -v u="$pa" 'BEGIN { print u / 1000 }')"
printf '%-28s %10s %8.2f\n' "(g) gateway, master key" "$g" "$(awk -v u="$pg" 'BEGIN { print u / 1000 }')"
printf '%-28s %10s %8.2f\n' "(e) virtual key, embedded" "$e" "$(awk -v u="$pe" 'BEGIN { print u / 1000 }')"
printf '%-28s %10s %8.2f\n' "(r) virtual key, redis" "$r" "$(awk -v u="$pr" 'BEGIN { print u / 1000 }')"
printf 'front CPU per request: %s us plain, %s us gateway, %s us embedded,' \
    "$fa" "$fg" "$fe"
printf ' %s us redis' "$fr"
printf ' (+ %s us in redis-server)\n' "$rr_us"
printf 'throughput g/a  %s (the pipeline without keys)\n' "$rg"
printf 'throughput e/g  %s, r/g %s (what the key path adds)\n' "$reg" "$rrg"
printf 'throughput e/a  %s >= %s  %s\n' "$re" "$min_embedded" "$ve"
printf 'throughput r/a  %s >= %s  %s\n' "$rr" "$min_redis" "$vr"

cat > "$outdir/keys.json" <<JSON
{
  "benchmark": "smartflow-virtual-key-path",
  "time": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "commit": "$(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown)",
  "pinning": "$pin_note",
  "connections": $conns, "duration_s": $duration, "rounds": $rounds,
  "median_rps": {"plain": $a, "gateway": $g, "embedded": $e, "redis": $r},
  "median_p99_us": {"plain": $pa, "embedded": $pe, "redis": $pr},
  "front_cpu_us_per_request": {"plain": $fa, "gateway": $fg,
                               "embedded": $fe,
                               "redis": $fr},
  "redis_server_cpu_us_per_request": $rr_us,
  "ratio": {"embedded": $re, "redis": $rr, "gateway": $rg,
            "embedded_vs_gateway": $reg, "redis_vs_gateway": $rrg},
  "targets": {"embedded_min": $min_embedded, "redis_min": $min_redis},
  "result": {"embedded": "$ve", "redis": "$vr"}
}
JSON
echo "summary: $outdir/keys.json"

ok=1
exit 0
