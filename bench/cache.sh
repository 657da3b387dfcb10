#!/usr/bin/env bash
# make bench, the MetaCache part: in one run, against the same static
# upstream,
#
#   plain  nginx proxy_pass
#   hit    the gateway with the cache on, every request the same question:
#          a phase 1 hit, the upstream never touched
#   miss   the gateway with the cache on, every request a new question:
#          the full lookup (phases 1, 2 and 4), proxy_pass, and the store
#   nocache  the gateway with the cache off (the floor the miss path
#          stands on)
#   words  as miss, but the new question differs by a made-up word, not
#          by a number: every stored entry shares the query's group, so
#          phase 2 reads its newest and phase 4 searches the workers'
#          FAISS index (the worst case; no target)
#
# and the ratios hit/plain (target >= 1.5) and miss/plain (>= 0.8) in
# requests per second.  Then the phase 4 lookup itself at 100,000 stored
# entries (build/unit/cache_bench: the builtin embedding and a FAISS search,
# flat, HNSW and the inverted file): p50/p99 and memory per entry.
#
# Environment: BENCH_DURATION (5 s a run), BENCH_CONNECTIONS (32),
# BENCH_ROUNDS (3, the median is kept), BENCH_PORT (18840, and the next
# three), BENCH_ENTRIES (100000).  wrk and the front worker are pinned
# apart when there are 2 CPUs.  The summary goes to build/bench/cache.json.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
modules=${SMARTFLOW_MODULES:-$top/build/modules}
duration=${BENCH_DURATION:-5}
conns=${BENCH_CONNECTIONS:-32}
rounds=${BENCH_ROUNDS:-3}
port=${BENCH_PORT:-18840}
entries=${BENCH_ENTRIES:-100000}

command -v wrk >/dev/null || { echo "bench: wrk is missing" >&2; exit 1; }

state=$(mktemp -d "$top/build/bench-cache.XXXXXX")
mkdir -p "$state"/{logs,tmp,modules}
# the shipped locations include their neighbours relative to the config
cp "$top"/conf/smartflow_*.conf "$state/"
cp "$modules"/ngx_http_smartflow_{proxy,policy,cache,audit}_module.so \
    "$state/modules/"

pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$state"
}
trap cleanup EXIT

up=$port; plain=$((port + 1)); gw=$((port + 2)); nc=$((port + 3))
key="sk-bench-cache-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
user_line=""
[ "$(id -u)" = 0 ] && user_line="user root;"

if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    front_cpu="worker_cpu_affinity 01;"; up_cpu="worker_cpu_affinity 10;"
    wrk=(taskset -c 1 wrk)
else
    front_cpu=""; up_cpu=""; wrk=(wrk)
fi

reply='{"id":"chatcmpl-bench","object":"chat.completion","created":1,'
reply+='"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":'
reply+='"assistant","content":"Orders stay in processing while stock is '
reply+='confirmed; contact support after three days."},"logprobs":null,'
reply+='"finish_reason":"stop"}],"usage":{"prompt_tokens":40,'
reply+='"completion_tokens":14,"total_tokens":54}}'

cat > "$state/nginx.conf" <<CONF
load_module $state/modules/ngx_http_smartflow_proxy_module.so;
load_module $state/modules/ngx_http_smartflow_policy_module.so;
load_module $state/modules/ngx_http_smartflow_cache_module.so;
load_module $state/modules/ngx_http_smartflow_audit_module.so;
$user_line
worker_processes 1;
$front_cpu
daemon off;
pid $state/front.pid;
error_log $state/logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $state/tmp/body;
    proxy_temp_path $state/tmp/proxy;
    fastcgi_temp_path $state/tmp/fcgi;
    uwsgi_temp_path $state/tmp/uwsgi;
    scgi_temp_path $state/tmp/scgi;
    keepalive_requests 10000000;

    upstream bench_plain { server 127.0.0.1:$up; keepalive 64; }
    upstream sf_openai { server 127.0.0.1:$up; keepalive 64; }

    smartflow_master_key $key;
    smartflow_provider openai type=openai upstream=http://sf_openai
        host=127.0.0.1 path=/v1 key=sk-provider-bench;
    smartflow_route gpt-* openai;
    smartflow_cache_zone metacache 256m entries=${BENCH_CACHE_ENTRIES:-20000};

    server {
        listen 127.0.0.1:$plain backlog=4096;
        location = /v1/chat/completions {
            proxy_pass http://bench_plain;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }

    server {
        listen 127.0.0.1:$gw backlog=4096;
        smartflow_cache metacache;
        include smartflow_locations.conf;
    }

    server {
        listen 127.0.0.1:$nc backlog=4096;
        include smartflow_locations.conf;
    }
}
CONF

cat > "$state/upstream.conf" <<CONF
$user_line
worker_processes 1;
$up_cpu
daemon off;
pid $state/up.pid;
error_log $state/logs/up-error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $state/tmp/up-body;
    keepalive_requests 10000000;
    server {
        listen 127.0.0.1:$up backlog=4096;
        location / { default_type application/json; return 200 '$reply'; }
    }
}
CONF

# the same question every time (hit), or a new one each time (miss)
script() {
    cat <<LUA
local n = 0
-- each run its own questions: a new run must not ask the last one's again
local run, f = 0, io.open("/dev/urandom", "rb")
for c in f:read(6):gmatch(".") do run = run * 256 + c:byte() end
f:close()
math.randomseed(run % 2147483647)
function request()
    n = n + 1
    local q = "Why is my order still processing after $1 days"
    if "$2" == "new" then q = q .. " (case " .. string.format("%x", run) .. " " .. n .. " " .. math.random(1e9) .. ")" end
    if "$2" == "word" then
        local w = ""
        for i = 1, 8 do w = w .. string.char(96 + math.random(26)) end
        q = q .. " " .. w
    end
    return wrk.format("POST", "/v1/chat/completions",
        { ["Content-Type"] = "application/json",
          ["Authorization"] = "Bearer $key" },
        '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"'
        .. q .. '"}]}')
end
function done(s, lat, r)
    io.write(string.format("BENCH %.1f %.0f %.0f %d\n",
        s.requests / (s.duration / 1e6), lat:percentile(50),
        lat:percentile(99), s.errors.status + s.errors.connect
        + s.errors.read + s.errors.timeout))
end
LUA
}
script 3 same > "$state/hit.lua"
script 3 new > "$state/miss.lua"
script 3 same > "$state/plain.lua"
script 3 same > "$state/nocache.lua"
script 3 word > "$state/words.lua"

nginx -p "$state" -c "$state/upstream.conf" & pids+=($!)
nginx -p "$state" -c "$state/nginx.conf" & pids+=($!)
sleep 1
for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null \
        || { echo "bench: nginx did not start (ports from $port busy?)" >&2; exit 1; }
done

# the front worker's CPU time so far, in clock ticks (user + system)
front_worker=$(pgrep -P "$(cat "$state/front.pid")" | head -1)
ticks() { awk '{ print $14 + $15 }' "/proc/$front_worker/stat"; }
hz=$(getconf CLK_TCK)

run() {    # case port script -> "rps p50 p99 errors cpu_us_per_request"
    local t0 t1 out
    t0=$(ticks)
    out=$("${wrk[@]}" -t1 -c"$conns" -d"${duration}s" -s "$state/$3.lua" \
        "http://127.0.0.1:$2/v1/chat/completions" | sed -n 's/^BENCH //p')
    t1=$(ticks)
    echo "$out" | awk -v t="$((t1 - t0))" -v hz="$hz" -v d="$duration" \
        '{ printf "%s %s %s %s %.1f\n", $1, $2, $3, $4,
           t * 1e6 / hz / ($1 * d) }'
}

# warm up, then check each path does what it is named for
run plain "$plain" plain >/dev/null
run miss "$gw" miss >/dev/null
run hit "$gw" hit >/dev/null
h=$(curl -s -D- -o /dev/null "http://127.0.0.1:$gw/v1/chat/completions" \
    -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
    -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Why is my order still processing after 3 days"}]}' \
    | tr -d '\r' | sed -n 's/^x-smartflow-cache: //p')
[ "$h" = HIT ] || { echo "bench: the hit path answered $h" >&2; exit 1; }

declare -A all
for ((i = 0; i < rounds; i++)); do
    for c in plain hit miss nocache; do
        p=$gw; [ $c = plain ] && p=$plain; [ $c = nocache ] && p=$nc
        all[$c]+="$(run $c $p $c)"$'\n'
    done
    # BENCH_VERBOSE=1: each round's figures as they come
    [ "${BENCH_VERBOSE:-0}" = 1 ] && for c in plain hit miss nocache; do
        printf '%s %s\n' "$c" "$(printf '%s' "${all[$c]}" | tail -n 1)"
    done
done

# last: its one large context would otherwise evict the others' entries
for ((i = 0; i < rounds; i++)); do
    all[words]+="$(run words $gw words)"$'\n'
done

median() {    # case column
    printf '%s' "${all[$1]}" | awk -v c="$2" 'NF { print $c }' | sort -n \
        | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

errors=0
for c in plain hit miss nocache words; do
    e=$(printf '%s' "${all[$c]}" | awk 'NF { s += $4 } END { print s + 0 }')
    errors=$((errors + e))
done

printf '%-8s %12s %10s %10s %14s\n' case req/s p50_us p99_us cpu_us/req
for c in plain hit miss nocache words; do
    printf '%-8s %12s %10s %10s %14s\n' $c "$(median $c 1)" "$(median $c 2)" \
        "$(median $c 3)" "$(median $c 5)"
done

rp=$(median plain 1); rh=$(median hit 1); rm=$(median miss 1)
rn=$(median nocache 1); rw=$(median words 1)
hr=$(awk -v a="$rh" -v b="$rp" 'BEGIN { printf "%.2f", a / b }')
mr=$(awk -v a="$rm" -v b="$rp" 'BEGIN { printf "%.2f", a / b }')
hv=$(awk -v r="$hr" 'BEGIN { print (r >= 1.5) ? "ok" : "FAIL" }')
mv=$(awk -v r="$mr" 'BEGIN { print (r >= 0.8) ? "ok" : "FAIL" }')
nr=$(awk -v a="$rn" -v b="$rp" 'BEGIN { printf "%.2f", a / b }')
wr=$(awk -v a="$rw" -v b="$rp" 'BEGIN { printf "%.2f", a / b }')
echo "hit/plain $hr (target >= 1.5: $hv), miss/plain $mr (target >= 0.8: $mv), errors $errors"
echo "nocache/plain $nr, words/plain $wr (no target)"

make -s -C "$top" cache-bench-bin >/dev/null
"$top/build/unit/cache_bench" "$entries" | tee "$state/vector.txt"

mkdir -p "$top/build/bench"
cat > "$top/build/bench/cache.json" <<JSON
{"plain_rps":$rp,"hit_rps":$rh,"miss_rps":$rm,"hit_ratio":$hr,"miss_ratio":$mr,"nocache_rps":$rn,"words_rps":$rw,"errors":$errors}
JSON

[ "$errors" = 0 ] || { echo "bench: $errors failed requests" >&2; exit 1; }
