#!/usr/bin/env bash
# The audit trail's cost in instructions per request, a figure the
# machine's load does not move: bench/audit.sh's front (the same request,
# the same reply, conf/smartflow_proxy.conf, one server with
# "smartflow_audit off" and one audited into a fresh folder) runs as one
# process (daemon off, master_process off) under valgrind's callgrind;
# for each case wrk warms it up, the counters are zeroed, wrk sends
# requests for IR_DURATION seconds, and the instructions counted (every
# thread: the seals run in the thread pool) are divided by the requests
# answered.  The folder is checked with smartflow-verify afterwards.
#
# Environment: BENCH_PORT (18860, and the next two), IR_DURATION (4),
# IR_CASES ("off on"), AUDIT_EXTRA (more http-level directives, e.g.
# "smartflow_audit_segment_size 1m;" so that seals fall inside the
# window), IR_KEEP=DIR (the callgrind files stay there, one per case, for
# callgrind_annotate).  Prints one line per case: case, requests,
# instructions per request.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/bench/ir.sh"
modules=${SMARTFLOW_MODULES:-$top/build/modules}
verify=$top/build/smartflow-verify
port=${BENCH_PORT:-18860}
duration=${IR_DURATION:-4}
cases=${IR_CASES:-off on}

for tool in wrk valgrind callgrind_control; do
    command -v $tool >/dev/null \
        || { echo "audit-ir: $tool is missing" >&2; exit 1; }
done

state=$(mktemp -d "${TMPDIR:-/tmp}/audit-ir.XXXXXX")
mkdir -p "$state"/{logs,tmp,modules}
cp "$modules"/ngx_http_smartflow_{proxy,audit}_module.so "$state/modules/"

pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ -n "${IR_KEEP:-}" ]; then
        cp "$state"/callgrind.out.* "$IR_KEEP"/ 2>/dev/null || true
    fi
    chmod -R u+w "$state" 2>/dev/null || true
    rm -rf "$state"
}
trap cleanup EXIT

up=$port off=$((port + 1)) on=$((port + 2))
key=sk-smartflow-bench-0123456789
printf 'k1 %s - -\n' "$(openssl rand -hex 32)" > "$state/audit.keys"
user_line=""
[ "$(id -u)" = 0 ] && user_line="user root;"

# bench/audit.sh's request and reply
reply='{"id":"chatcmpl-bench0001","object":"chat.completion","created":1732700000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Orders usually stay in processing while the warehouse confirms stock or the payment clears.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":71,"completion_tokens":45,"total_tokens":116}}'
body='{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a concise assistant for an online bookshop."},{"role":"user","content":"I ordered a paperback last Tuesday and the order page still says processing. What usually causes that delay?"}],"temperature":0.2,"max_tokens":128}'

cat > "$state/chat.lua" <<LUA
wrk.method = "POST"
wrk.body = [==[$body]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $key"
function done(s, lat, r)
    io.write(string.format("IR %d %d\n", s.requests,
        s.errors.status + s.errors.connect + s.errors.read
        + s.errors.write + s.errors.timeout))
end
LUA

cat > "$state/upstream.conf" <<CONF
$user_line
worker_processes 1;
daemon off;
pid $state/up.pid;
error_log $state/logs/up.log warn;
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

cat > "$state/front.conf" <<CONF
load_module $state/modules/ngx_http_smartflow_proxy_module.so;
load_module $state/modules/ngx_http_smartflow_audit_module.so;
$user_line
daemon off;
master_process off;
pid $state/front.pid;
error_log $state/logs/front.log warn;
thread_pool smartflow threads=1;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $state/tmp/body;
    proxy_temp_path $state/tmp/proxy;
    fastcgi_temp_path $state/tmp/fcgi;
    uwsgi_temp_path $state/tmp/uwsgi;
    scgi_temp_path $state/tmp/scgi;
    keepalive_requests 10000000;
    upstream sf_openai {
        server 127.0.0.1:$up;
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
        listen 127.0.0.1:$off;
        smartflow_audit off;
        location = /v1/chat/completions {
            smartflow_api chat;
            include $top/conf/smartflow_proxy.conf;
        }
    }
    server {
        listen 127.0.0.1:$on;
        location = /v1/chat/completions {
            smartflow_api chat;
            include $top/conf/smartflow_proxy.conf;
        }
    }
}
CONF

nginx -p "$state" -c "$state/upstream.conf" & pids+=($!)
ir_front "$state" "$state/front.conf" "http://127.0.0.1:$off/v1/chat/completions"

for c in $cases; do
    case $c in
        off) p=$off ;;
        on) p=$on ;;
        *) echo "audit-ir: unknown case $c" >&2; exit 1 ;;
    esac
    ir_case "$c" "$front" "$state" "$state/chat.lua" \
        "http://127.0.0.1:$p/v1/chat/completions" "$duration"
    if [ -n "${IR_KEEP:-}" ]; then
        cp "$(ls -t "$state"/callgrind.out.* | head -1)" \
            "$IR_KEEP/callgrind.audit-$c"
    fi
done

# the flush timer has written the buffer by now
sleep 0.5
if [ -x "$verify" ]; then
    report=$("$verify" --keys "$state/audit.keys" "$state/audit" || true)
    echo "verify ok=$(printf '%s' "$report" \
        | sed -n 's/.*"ok":\(true\|false\).*/\1/p')" \
        "records=$(printf '%s' "$report" \
        | sed -n 's/.*"records":\([0-9]*\).*/\1/p')"
fi
