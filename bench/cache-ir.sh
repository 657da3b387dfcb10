#!/usr/bin/env bash
# Instructions per request of the front nginx, for the MetaCache's paths,
# a figure the machine's load does not move: the front runs under
# valgrind's callgrind (one process, master_process off), the counters
# are zeroed after a warm-up, wrk sends requests for a while, and the
# instructions counted are divided by the requests answered.  Cases:
# plain proxy_pass, the cache-off gateway (nocache), the miss path (every
# question new), the hit path and words (as miss, but the new question
# differs by a made-up word, so phases 2 and 4 look through the stored
# ones), all to the same static upstream.
#
# Environment: BENCH_PORT (18840, and the next three), IR_DURATION (4 s
# of wrk a case), IR_CASES ("plain nocache miss hit").  Prints one line
# per case: case, requests, instructions per request; with IR_KEEP=DIR
# the callgrind files stay in DIR for callgrind_annotate.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/bench/ir.sh"
modules=${SMARTFLOW_MODULES:-$top/build/modules}
port=${BENCH_PORT:-18840}
duration=${IR_DURATION:-4}
cases=${IR_CASES:-plain nocache miss hit}

for tool in wrk valgrind callgrind_control; do
    command -v $tool >/dev/null || { echo "cache-ir: $tool is missing" >&2; exit 1; }
done

state=$(mktemp -d "${TMPDIR:-/tmp}/cache-ir.XXXXXX")
mkdir -p "$state"/{logs,tmp,modules}
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
    [ -n "${IR_KEEP:-}" ] && cp "$state"/callgrind.out.* "$IR_KEEP"/ 2>/dev/null
    rm -rf "$state"
}
trap cleanup EXIT

up=$port; plain=$((port + 1)); gw=$((port + 2)); nc=$((port + 3))
key="sk-bench-cache-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
user_line=""
[ "$(id -u)" = 0 ] && user_line="user root;"

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
daemon off;
master_process off;
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
    smartflow_cache_zone metacache 256m entries=20000;

    server {
        listen 127.0.0.1:$plain;
        location = /v1/chat/completions {
            proxy_pass http://bench_plain;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }

    server {
        listen 127.0.0.1:$gw;
        smartflow_cache metacache;
        include smartflow_locations.conf;
    }

    server {
        listen 127.0.0.1:$nc;
        include smartflow_locations.conf;
    }
}
CONF

cat > "$state/upstream.conf" <<CONF
$user_line
worker_processes 1;
daemon off;
pid $state/up.pid;
error_log $state/logs/up-error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $state/tmp/up-body;
    keepalive_requests 10000000;
    server {
        listen 127.0.0.1:$up;
        location / { default_type application/json; return 200 '$reply'; }
    }
}
CONF

script() {    # same | new
    cat <<LUA
local n = 0
-- each run its own questions: a new run must not ask the last one's again
local run, f = 0, io.open("/dev/urandom", "rb")
for c in f:read(6):gmatch(".") do run = run * 256 + c:byte() end
f:close()
math.randomseed(run % 2147483647)
function request()
    n = n + 1
    local q = "Why is my order still processing after 3 days"
    if "$1" == "new" then q = q .. " (case " .. string.format("%x", run) .. " " .. n .. " " .. math.random(1e9) .. ")" end
    if "$1" == "word" then
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
    io.write(string.format("IR %d %d\n", s.requests,
        s.errors.status + s.errors.connect + s.errors.read
        + s.errors.timeout))
end
LUA
}
script same > "$state/same.lua"
script new > "$state/new.lua"
script word > "$state/word.lua"

nginx -p "$state" -c "$state/upstream.conf" & pids+=($!)
ir_front "$state" "$state/nginx.conf" "http://127.0.0.1:$plain/v1/chat/completions"

for c in $cases; do
    case $c in
        plain) p=$plain; s=same ;;
        nocache) p=$nc; s=same ;;
        miss) p=$gw; s=new ;;
        hit) p=$gw; s=same ;;
        words) p=$gw; s=word ;;
    esac
    # the warm-up opens the connections to the upstream, stores the hit
    ir_case "$c" "$front" "$state" "$state/$s.lua" \
        "http://127.0.0.1:$p/v1/chat/completions" "$duration"
done
