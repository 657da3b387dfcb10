#!/usr/bin/env bash
# make bench: the gateway's overhead against plain nginx, in one run.
#
#   (a) plain   nginx proxy_pass to a static upstream
#   (b) gateway master-key auth, body read, JSON parse, route, and proxy
#               to the same upstream, served by the shipped
#               conf/smartflow_locations.conf and conf/smartflow_proxy.conf
#   (c) translated  the gateway with an OpenAI request for a Claude model:
#               translated to Anthropic's Messages API, the upstream's
#               Anthropic answer translated back; compared with (a)
#   (d) plain_stream  plain proxy_pass of a streamed (SSE) answer
#   (e) translated_stream  (c) streamed: Anthropic's SSE events translated
#               one by one into chat.completion.chunk events; against (d)
#
# Two nginx instances, loopback only:
#   upstream  1 worker, `return 200 '<chat.completion JSON>'`; the floor
#   front     1 worker, all four Smartflow modules loaded, one server per
#             case; each case has its own keepalive pool to the upstream
# and wrk with 1 thread, the same connections, duration and body for both.
#
# On a machine with 2 or more CPUs the front worker gets CPU 0 to itself
# and the upstream worker and wrk share CPU 1 (BENCH_PIN=0 turns that off):
# the front, the thing measured, is then the bottleneck and never competes
# with the load generator for its core.
#
# After a warm-up of each case the cases alternate (a b a b ...) for
# BENCH_ROUNDS rounds; the report takes the median of each figure.  Each
# run also reports the CPU used by the front worker, the upstream worker,
# wrk and everything else on the machine, and the front's CPU time per
# request (the gateway's cost, whatever the bottleneck); a run during
# which other work used more than 5% of a CPU is repeated.  The
# targets are a throughput ratio b/a >= 0.85 and a p99 ratio b/a <= 1.3,
# and c/a >= 0.8 for the translated path; missing them prints FAIL but
# still exits 0.  A run that is not valid
# (non-2xx answers, socket errors, requests that never reached the
# upstream, errors in the logs) exits non-zero.
#
# Environment:
#   BENCH_DURATION     seconds per measured run                 (10)
#   BENCH_CONNECTIONS  wrk connections, both cases              (32)
#   BENCH_ROUNDS       alternating rounds                       (3)
#   BENCH_WARMUP       seconds of warm-up per case              (3)
#   BENCH_PIN          1: pin CPUs as above, 0: do not          (1)
#   BENCH_PORT         first port tried for the 3 listeners     (18640)
#   BENCH_RETRIES      repeats of a run spoilt by other work    (3)
#   BENCH_CASES        the cases to run, baselines included
#                      (plain gateway translated plain_stream translated_stream)
#   BENCH_KEEP         1: keep the state folder afterwards      (0)
#   BENCH_IR           1: no rounds; instead the front runs as one
#                      process under valgrind's callgrind and each case
#                      reports the instructions it executes per request,
#                      a figure the machine's load does not move  (0)
#   BENCH_NGINX        nginx binary                  (/usr/sbin/nginx)
#
# State lives in a fresh build/bench/run.XXXXXX (removed at the end unless
# BENCH_KEEP=1 or the run failed); the summary goes to
# build/bench/result.json.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/bench/ir.sh"
modules=${SMARTFLOW_MODULES:-$top/build/modules}
nginx=${BENCH_NGINX:-/usr/sbin/nginx}
duration=${BENCH_DURATION:-10}
conns=${BENCH_CONNECTIONS:-32}
rounds=${BENCH_ROUNDS:-3}
warmup=${BENCH_WARMUP:-3}
pin=${BENCH_PIN:-1}
port_base=${BENCH_PORT:-18640}
keep=${BENCH_KEEP:-0}
ir=${BENCH_IR:-0}
retries=${BENCH_RETRIES:-3}
read -r -a cases <<< "${BENCH_CASES:-plain gateway translated plain_stream translated_stream}"

min_rps_ratio=0.85
min_translated_ratio=0.8
max_p99_ratio=1.3
# above this (% of one CPU) other work on the machine spoils the figures
max_other_cpu=5

die() {
    echo "bench: $*" >&2
    exit 1
}

for v in duration conns rounds warmup port_base; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]] || [ "${!v}" -eq 0 ]; then
        die "$v must be a positive integer (got '${!v}')"
    fi
done
[[ $retries =~ ^[0-9]+$ ]] || die "retries must be an integer (got '$retries')"

command -v wrk >/dev/null || die "wrk is missing (Debian package wrk)"
if [ "$ir" = 1 ]; then
    for tool in valgrind callgrind_control; do
        command -v $tool >/dev/null || die "$tool is missing (Debian valgrind)"
    done
fi
command -v curl >/dev/null || die "curl is missing"
[ -x "$nginx" ] || die "no nginx at $nginx"
for m in proxy policy cache audit; do
    [ -f "$modules/ngx_http_smartflow_${m}_module.so" ] \
        || die "module $m not built in $modules; run make first"
done

outdir=$top/build/bench
mkdir -p "$outdir"
state=$(mktemp -d "$outdir/run.XXXXXX")
mkdir -p "$state"/{logs,tmp,front,upstream,modules}

# nginx maps the modules; a rebuild that rewrites them in place under a
# running nginx kills its workers, so the run loads copies of its own
cp "$modules"/ngx_http_smartflow_{proxy,policy,cache,audit}_module.so \
    "$state/modules/"

pids=()
wrk_pid=""
ok=0

cleanup() {
    local pid i
    if [ -n "$wrk_pid" ]; then
        kill -TERM "$wrk_pid" 2>/dev/null || true
        wait "$wrk_pid" 2>/dev/null || true
    fi
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    if [ "$ok" = 1 ] && [ "$keep" != 1 ]; then
        rm -rf "$state"
    else
        echo "bench: state kept in $state" >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


# ---- ports, keys, CPUs --------------------------------------------------

port_free() {
    [ -z "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]
}

ports=()
p=$port_base
while [ "${#ports[@]}" -lt 3 ]; do
    [ "$p" -lt $((port_base + 200)) ] || die "no free ports from $port_base"
    port_free "$p" && ports+=("$p")
    p=$((p + 1))
done
port_up=${ports[0]}
port_plain=${ports[1]}
port_gw=${ports[2]}

master_key="sk-bench-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
provider_key="sk-provider-bench-0000000000000000"

ncpu=$(nproc)
clk_tck=$(getconf CLK_TCK)
sys_ncpu=$(grep -c '^cpu[0-9]' /proc/stat)
if [ "$pin" = 1 ] && [ "$ncpu" -ge 2 ] && command -v taskset >/dev/null
then
    front_affinity="worker_cpu_affinity 01;"
    up_affinity="worker_cpu_affinity 10;"
    wrk_cmd=(taskset -c 1 wrk)
    pin_note="front worker on CPU 0; upstream worker and wrk on CPU 1"
else
    pin=0
    front_affinity=""
    up_affinity=""
    wrk_cmd=(wrk)
    pin_note="no CPU pinning"
fi

user_line=""
[ "$(id -u)" = 0 ] && user_line="user root;"


# ---- the request and the upstream's answer -------------------------------

# a small, realistic chat request: gpt-4o-mini, a system and a user message
body='{"model":"gpt-4o-mini","messages":[{"role":"system",'
body+='"content":"You are a concise assistant for an online bookshop. '
body+='Answer in two sentences at most and never invent order numbers."},'
body+='{"role":"user","content":"Hi! I ordered a paperback mystery novel '
body+='last Tuesday and the order page still says processing. What '
body+='usually causes that delay, and should I contact support?"}],'
body+='"temperature":0.2,"max_tokens":128}'

# a fixed OpenAI chat.completion, as a provider would answer the above
reply='{"id":"chatcmpl-bench0001","object":"chat.completion",'
reply+='"created":1732700000,"model":"gpt-4o-mini-2024-07-18",'
reply+='"choices":[{"index":0,"message":{"role":"assistant",'
reply+='"content":"Orders usually stay in processing while the warehouse '
reply+='confirms stock or the payment clears, which can take a few '
reply+='business days. If nothing changes within three more days, please '
reply+='contact support with your account email.","refusal":null},'
reply+='"logprobs":null,"finish_reason":"stop"}],'
reply+='"usage":{"prompt_tokens":71,"completion_tokens":45,'
reply+='"total_tokens":116},"system_fingerprint":"fp_bench0001"}'

# the same conversation for a Claude model, and both streamed
body_claude=${body/\"gpt-4o-mini\"/\"claude-3-5-haiku-latest\"}
body_stream=${body%\}},\"stream\":true}
body_claude_stream=${body/\"gpt-4o-mini\"/\"claude-bench-stream\"}
body_claude_stream=${body_claude_stream%\}},\"stream\":true}

# the same answer from Anthropic's Messages API
areply='{"id":"msg_bench0001","type":"message","role":"assistant",'
areply+='"model":"claude-3-5-haiku-20241022","content":[{"type":"text",'
areply+='"text":"Orders usually stay in processing while the warehouse '
areply+='confirms stock or the payment clears, which can take a few '
areply+='business days. If nothing changes within three more days, please '
areply+='contact support with your account email."}],"stop_reason":'
areply+='"end_turn","stop_sequence":null,"usage":{"input_tokens":71,'
areply+='"output_tokens":45}}'

# the answer streamed, in eight text pieces, by each provider
pieces=("Orders usually stay in processing " "while the warehouse confirms "
        "stock or the payment clears, " "which can take a few business days."
        " If nothing changes within " "three more days, please contact "
        "support with " "your account email.")

chunk() {
    # chunk DELTA [FINISH]: one chat.completion.chunk event
    printf 'data: {"id":"chatcmpl-bench0001","object":"chat.completion.chunk",'
    printf '"created":1732700000,"model":"gpt-4o-mini-2024-07-18",'
    printf '"system_fingerprint":"fp_bench0001","choices":[{"index":0,'
    printf '"delta":%s,"logprobs":null,"finish_reason":%s}]}\\n\\n' "$1" \
        "${2:-null}"
}

sreply=$(chunk '{"role":"assistant","content":""}')
for t in "${pieces[@]}"; do
    sreply+=$(chunk "{\"content\":\"$t\"}")
done
sreply+=$(chunk '{}' '"stop"')
sreply+='data: [DONE]\n\n'

sareply='event: message_start\ndata: {"type":"message_start","message":'
sareply+='{"id":"msg_bench0001","type":"message","role":"assistant",'
sareply+='"model":"claude-3-5-haiku-20241022","content":[],"stop_reason":'
sareply+='null,"stop_sequence":null,"usage":{"input_tokens":71,'
sareply+='"output_tokens":1}}}\n\n'
sareply+='event: content_block_start\ndata: {"type":"content_block_start",'
sareply+='"index":0,"content_block":{"type":"text","text":""}}\n\n'
sareply+='event: ping\ndata: {"type": "ping"}\n\n'
for t in "${pieces[@]}"; do
    sareply+='event: content_block_delta\ndata: {"type":"content_block_delta",'
    sareply+="\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"$t\"}}"
    sareply+='\n\n'
done
sareply+='event: content_block_stop\ndata: {"type":"content_block_stop",'
sareply+='"index":0}\n\n'
sareply+='event: message_delta\ndata: {"type":"message_delta","delta":'
sareply+='{"stop_reason":"end_turn","stop_sequence":null},"usage":'
sareply+='{"output_tokens":45}}\n\n'
sareply+='event: message_stop\ndata: {"type":"message_stop"}\n\n'

printf '%s' "$body" > "$state/body.json"

# one script per body, alike otherwise: same method and headers (the
# plain proxy passes the Authorization header on; the gateway checks and
# replaces it).  done() prints the figures in a line easy to parse.
lua() {
    cat > "$state/$1.lua" <<LUA
wrk.method = "POST"
wrk.body = [==[$2]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $master_key"

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        "BENCH requests=%.0f duration_us=%.0f bytes=%.0f "
        .. "p50_us=%.0f p90_us=%.0f p99_us=%.0f mean_us=%.1f max_us=%.0f "
        .. "non2xx=%.0f connect=%.0f read=%.0f write=%.0f timeout=%.0f\\n",
        summary.requests, summary.duration, summary.bytes,
        latency:percentile(50), latency:percentile(90),
        latency:percentile(99), latency.mean, latency.max,
        e.status, e.connect, e.read, e.write, e.timeout))
end
LUA
}

lua chat "$body"
lua claude "$body_claude"
lua stream "$body_stream"
lua claude_stream "$body_claude_stream"


# ---- the two nginx instances --------------------------------------------

cat > "$state/upstream/nginx.conf" <<CONF
# the mock provider: a static chat.completion, as fast as nginx goes
$user_line
worker_processes 1;
$up_affinity
daemon off;
master_process on;
pid $state/upstream/nginx.pid;
error_log $state/logs/upstream-error.log warn;

events {
    worker_connections 1024;
}

http {
    access_log off;
    client_body_temp_path $state/tmp/up-body;
    proxy_temp_path $state/tmp/up-proxy;
    fastcgi_temp_path $state/tmp/up-fastcgi;
    uwsgi_temp_path $state/tmp/up-uwsgi;
    scgi_temp_path $state/tmp/up-scgi;

    keepalive_requests 10000000;
    keepalive_timeout 120s;

    server {
        listen 127.0.0.1:$port_up backlog=4096;

        location = /__bench_status {
            stub_status;
        }

        location / {
            default_type application/json;
            return 200 '$reply';
        }

        location /anthropic/ {
            default_type application/json;
            return 200 '$areply';
        }

        location /stream/ {
            default_type text/event-stream;
            return 200 '$sreply';
        }

        location /stream/anthropic/ {
            default_type text/event-stream;
            return 200 '$sareply';
        }
    }
}
CONF

# under callgrind the front is one process, that callgrind_control reaches
front_master=on
[ "$ir" = 1 ] && front_master=off

cat > "$state/front/nginx.conf" <<CONF
# the front: plain proxy_pass on :$port_plain, the gateway on :$port_gw
load_module $state/modules/ngx_http_smartflow_proxy_module.so;
load_module $state/modules/ngx_http_smartflow_policy_module.so;
load_module $state/modules/ngx_http_smartflow_cache_module.so;
load_module $state/modules/ngx_http_smartflow_audit_module.so;

$user_line
worker_processes 1;
$front_affinity
daemon off;
master_process $front_master;
pid $state/front/nginx.pid;
error_log $state/logs/front-error.log warn;

events {
    worker_connections 1024;
}

http {
    default_type application/octet-stream;
    # no per-request log in either case: the same work apart from the
    # gateway's own
    access_log off;
    client_body_temp_path $state/tmp/body;
    proxy_temp_path $state/tmp/proxy;
    fastcgi_temp_path $state/tmp/fastcgi;
    uwsgi_temp_path $state/tmp/uwsgi;
    scgi_temp_path $state/tmp/scgi;

    keepalive_requests 10000000;
    keepalive_timeout 120s;

    # one keepalive pool per case, configured alike
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

    upstream sf_anthropic {
        server 127.0.0.1:$port_up;
        keepalive 64;
        keepalive_requests 10000000;
    }

    smartflow_master_key $master_key;
    smartflow_zone smartflow 1m;
    smartflow_provider openai type=openai upstream=http://sf_openai
        host=127.0.0.1 path=/v1 key=$provider_key;
    smartflow_provider anthropic type=anthropic upstream=http://sf_anthropic
        host=127.0.0.1 path=/anthropic/v1 key=$provider_key;
    smartflow_provider anthropic_stream type=anthropic
        upstream=http://sf_anthropic host=127.0.0.1 path=/stream/anthropic/v1
        key=$provider_key;
    smartflow_route gpt-* openai;
    smartflow_route claude-3-5-haiku-latest anthropic;
    # the streamed case's own upstream path, for the same model
    smartflow_route claude-bench-stream anthropic_stream
        model=claude-3-5-haiku-latest;
    smartflow_route o1* openai;
    smartflow_route chatgpt-* openai;
    smartflow_audit_log off;

    # (a) plain nginx
    server {
        listen 127.0.0.1:$port_plain backlog=4096;

        location = /v1/chat/completions {
            proxy_pass http://bench_plain;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }

        # the same for a streamed answer, which comes from /stream/
        location = /stream/v1/chat/completions {
            proxy_pass http://bench_plain;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }

    # (b) the gateway: the shipped server locations, whose relative
    # include finds the shipped conf/smartflow_proxy.conf next to this file
    server {
        listen 127.0.0.1:$port_gw backlog=4096;

        include $top/conf/smartflow_locations.conf;
    }
}
CONF

for f in smartflow_proxy.conf; do
    ln -s "$top/conf/$f" "$state/front/$f"
done

for inst in upstream front; do
    "$nginx" -t -q -p "$state/$inst" -c "$state/$inst/nginx.conf" \
        -e "$state/logs/$inst-error.log" \
        || die "nginx -t failed for the $inst configuration"
done

"$nginx" -p "$state/upstream" -c "$state/upstream/nginx.conf" \
    -e "$state/logs/upstream-error.log" &
pids+=($!)
front_cmd=("$nginx")
if [ "$ir" = 1 ]; then
    front_cmd=(valgrind --tool=callgrind --log-file="$state/logs/valgrind.log"
               --callgrind-out-file="$state/callgrind.out.%p" "$nginx")
fi
"${front_cmd[@]}" -p "$state/front" -c "$state/front/nginx.conf" \
    -e "$state/logs/front-error.log" &
pids+=($!)

url_plain=http://127.0.0.1:$port_plain/v1/chat/completions
url_gw=http://127.0.0.1:$port_gw/v1/chat/completions
url_plain_stream=http://127.0.0.1:$port_plain/stream/v1/chat/completions
url_status=http://127.0.0.1:$port_up/__bench_status

wait_port() {
    local i
    for ((i = 0; i < 100; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        for pid in "${pids[@]}"; do
            kill -0 "$pid" 2>/dev/null || die "nginx exited at startup" \
                "(see $state/logs)"
        done
        sleep 0.1
    done
    die "nothing listens on 127.0.0.1:$1"
}

wait_port "$port_up"
wait_port "$port_plain"
wait_port "$port_gw"


# ---- both paths answer as they should before anything is measured -------

# check NAME URL KEY EXPECTED_STATUS PATTERN [BODY]
check() {
    local out status
    out=$(curl -s --max-time $((ir ? 60 : 5)) -w '\n%{http_code}' -X POST "$2" \
              -H 'Content-Type: application/json' \
              -H "Authorization: Bearer $3" \
              --data-binary "${6:-@$state/body.json}") \
        || die "$1: request failed"
    status=${out##*$'\n'}
    out=${out%$'\n'*}
    [ "$status" = "$4" ] || die "$1: status $status, expected $4: $out"
    [[ $out == *"$5"* ]] || die "$1: unexpected body: $out"
}

check plain "$url_plain" "$master_key" 200 '"object":"chat.completion"'
check gateway "$url_gw" "$master_key" 200 '"object":"chat.completion"'
check "gateway, wrong key" "$url_gw" "sk-wrong-key-0000000000" 401 \
    '"code":"invalid_api_key"'
check translated "$url_gw" "$master_key" 200 \
    '"object":"chat.completion"' "$body_claude"
check "translated answer" "$url_gw" "$master_key" 200 \
    '"content":"Orders usually stay in processing while' "$body_claude"
check plain_stream "$url_plain_stream" "$master_key" 200 \
    'data: [DONE]' "$body_stream"
check translated_stream "$url_gw" "$master_key" 200 \
    '"content":"your account email."' "$body_claude_stream"
check "translated stream end" "$url_gw" "$master_key" 200 \
    '"finish_reason":"stop"' "$body_claude_stream"

# the refused key above is logged at error level, as it should be; only
# what the logs get from here on counts
declare -A log_mark
for f in "$state"/logs/*.log; do
    log_mark[$f]=$(stat -c %s "$f")
done

# case_target CASE: sets url and script (the wrk Lua file) for a case
case_target() {
    case $1 in
        plain) url=$url_plain script=chat ;;
        gateway) url=$url_gw script=chat ;;
        translated) url=$url_gw script=claude ;;
        plain_stream) url=$url_plain_stream script=stream ;;
        translated_stream) url=$url_gw script=claude_stream ;;
        *) die "unknown case $1" ;;
    esac
}


# ---- BENCH_IR: instructions per request instead of rounds ---------------

if [ "$ir" = 1 ]; then
    for name in "${cases[@]}"; do
        case_target "$name"
        # warm-up, then the counters zeroed, the requests, a dump
        wrk -t1 -c4 -d"${warmup}s" -s "$state/$script.lua" "$url" >/dev/null
        callgrind_control -z "${pids[1]}" >/dev/null 2>&1
        wrk -t1 -c4 -d"${duration}s" -s "$state/$script.lua" "$url" \
            > "$state/wrk-$name-ir.txt"
        callgrind_control -d "$name" "${pids[1]}" >/dev/null 2>&1
        n=$(sed -n 's/^ *\([0-9]*\) requests in .*/\1/p' \
                "$state/wrk-$name-ir.txt")
        total=$(ir_total "$state")
        [ -n "$n" ] && [ "$n" -gt 0 ] && [ -n "$total" ] \
            || die "$name: no requests or no count (see $state)"
        ! grep -q 'Non-2xx' "$state/wrk-$name-ir.txt" \
            || die "$name: answers that are not 2xx (see $state)"
        printf '%-18s %8d requests %10d instructions per request\n' \
            "$name" "$n" $((total / n))
    done
    ok=1
    exit 0
fi

# CPU accounting: clock ticks of one process, and of the whole machine
front_worker=$(ps -o pid= --ppid "${pids[1]}" | tr -d ' ')
up_worker=$(ps -o pid= --ppid "${pids[0]}" | tr -d ' ')
[[ $front_worker =~ ^[0-9]+$ && $up_worker =~ ^[0-9]+$ ]] \
    || die "expected exactly one worker per nginx"

proc_ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

# ticks of the reaped children of this shell: wrk, once it has finished
child_ticks() {
    awk '{ print $16 + $17 }' "/proc/$$/stat"
}

# busy and total ticks of all CPUs
sys_ticks() {
    awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i;
                   print t - $5 - $6, t }' /proc/stat
}


# ---- runs ---------------------------------------------------------------

upstream_requests() {
    curl -s --max-time 5 "$url_status" \
        | awk 'NR == 3 { print $3 }'
}

# field NAME LINE: the value of NAME=... in a "BENCH ..." line
field() {
    local re="(^| )$1=([^ ]+)"
    [[ $2 =~ $re ]] && echo "${BASH_REMATCH[2]}"
}

# run CASE LABEL SECONDS: one wrk run, checked; sets the globals r_*
run() {
    local name=$1 label=$2 secs=$3 url out line before after served
    local script
    case_target "$name"
    out=$state/wrk-$name-$label.txt

    local f0 f1 u0 u1 c0 c1 busy0 busy1 tot0 tot1
    before=$(upstream_requests)
    c0=$(child_ticks)
    f0=$(proc_ticks "$front_worker")
    u0=$(proc_ticks "$up_worker")
    read -r busy0 tot0 < <(sys_ticks)

    # in the background, so that a signal reaches the traps at once
    timeout $((secs + 30)) "${wrk_cmd[@]}" -t1 -c"$conns" -d"${secs}s" \
        --timeout 5s --latency -s "$state/$script.lua" "$url" > "$out" 2>&1 &
    wrk_pid=$!
    if ! wait "$wrk_pid"; then
        wrk_pid=""
        cat "$out" >&2
        die "wrk failed ($name, $label)"
    fi
    wrk_pid=""

    # a worker that died and was replaced spoils the run
    kill -0 "$front_worker" 2>/dev/null && kill -0 "$up_worker" 2>/dev/null \
        || die "$name ($label): an nginx worker died (see $state/logs)"

    f1=$(proc_ticks "$front_worker")
    u1=$(proc_ticks "$up_worker")
    read -r busy1 tot1 < <(sys_ticks)
    c1=$(child_ticks)
    after=$(upstream_requests)

    if grep -q 'Non-2xx or 3xx responses' "$out"; then
        cat "$out" >&2
        die "$name ($label): non-2xx answers; the run is not valid"
    fi
    if grep -q 'Socket errors' "$out"; then
        cat "$out" >&2
        die "$name ($label): socket errors; the run is not valid"
    fi

    line=$(grep '^BENCH ' "$out") \
        || { cat "$out" >&2; die "no summary from wrk ($name, $label)"; }

    r_requests=$(field requests "$line")
    r_duration=$(field duration_us "$line")
    r_p50=$(field p50_us "$line")
    r_p90=$(field p90_us "$line")
    r_p99=$(field p99_us "$line")
    r_mean=$(field mean_us "$line")
    r_max=$(field max_us "$line")
    local bad
    bad=$(( $(field non2xx "$line") + $(field connect "$line")
            + $(field read "$line") + $(field write "$line")
            + $(field timeout "$line") ))
    [ "$bad" = 0 ] || { cat "$out" >&2; die "$name ($label): $bad errors"; }
    [ "$r_requests" -gt 0 ] || die "$name ($label): no requests completed"

    # every answer counted must have come from the upstream (the status
    # request itself adds one)
    served=$((after - before - 1))
    [ "$served" -ge "$r_requests" ] \
        || die "$name ($label): wrk counted $r_requests answers but the" \
               "upstream served $served"

    r_rps=$(awk -v n="$r_requests" -v d="$r_duration" \
                'BEGIN { printf "%.1f", n / (d / 1e6) }')

    # CPU use as % of one CPU over the run (front worker, upstream
    # worker, wrk, whatever else ran on the machine); the front's CPU time
    # per answered request in microseconds
    read -r r_front_cpu r_up_cpu r_wrk_cpu r_other_cpu r_front_us < <(
        awk -v f="$((f1 - f0))" -v u="$((u1 - u0))" -v c="$((c1 - c0))" \
            -v b="$((busy1 - busy0))" -v t="$((tot1 - tot0))" \
            -v n="$sys_ncpu" -v hz="$clk_tck" -v req="$r_requests" 'BEGIN {
                w = t / n; if (w <= 0) w = 1
                o = b - f - u - c; if (o < 0) o = 0
                printf "%.0f %.0f %.0f %.0f %.1f\n", 100 * f / w,
                       100 * u / w, 100 * c / w, 100 * o / w,
                       f * 1e6 / hz / req
            }')
}

ms() {
    awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'
}

median() {
    printf '%s\n' "$@" | sort -g | awk '
        { v[NR] = $1 }
        END {
            if (NR % 2) { m = v[(NR + 1) / 2] }
            else { m = (v[NR / 2] + v[NR / 2 + 1]) / 2 }
            printf "%.1f", m
        }'
}

ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b / a }'
}

body_len=${#body}
reply_len=${#reply}

declare -A url_of=([plain]=$url_plain [gateway]=$url_gw [translated]=$url_gw
                   [plain_stream]=$url_plain_stream
                   [translated_stream]=$url_gw)
# each case against its baseline, the target and the figure it applies to
declare -A base_of=([gateway]=plain [translated]=plain
                    [translated_stream]=plain_stream)
declare -A target_of=([gateway]=$min_rps_ratio [translated]=$min_translated_ratio)

for name in "${cases[@]}"; do
    [ -n "${url_of[$name]:-}" ] || die "unknown case '$name'"
done

echo "Smartflow benchmark: nginx $("$nginx" -v 2>&1 | sed 's|.*/||')," \
     "$ncpu CPUs, $pin_note"
echo "  wrk -t1 -c$conns -d${duration}s --latency, POST $body_len-byte" \
     "chat body (gpt-4o-mini, 2 messages), $reply_len-byte reply"
for name in "${cases[@]}"; do
    printf '  %-18s %s\n' "$name" "${url_of[$name]}"
done
echo "  warm-up ${warmup}s each, then $rounds rounds alternating the cases"
echo

for name in "${cases[@]}"; do
    run "$name" warmup "$warmup"
done

declare -A rps p50 p99 fus
rounds_json=""
max_other=0
row() {
    printf '%-6s %-18s %10s %8s %8s %8s %7s %7s %6s %7s %9s\n' "$@"
}
row round case req/s p50_ms p99_ms max_ms front% upstr% wrk% other% \
    front_us
for ((i = 1; i <= rounds; i++)); do
    for name in "${cases[@]}"; do
        # a run during which other work took CPU is repeated, up to
        # BENCH_RETRIES times; the last attempt counts in any case
        for ((try = 0; ; try++)); do
            run "$name" "round$i" "$duration"
            if [ "$r_other_cpu" -le "$max_other_cpu" ] \
                || [ "$try" -ge "$retries" ]
            then
                break
            fi
            row "$i" "$name" "$r_rps" "$(ms "$r_p50")" "$(ms "$r_p99")" \
                "$(ms "$r_max")" "$r_front_cpu" "$r_up_cpu" "$r_wrk_cpu" \
                "$r_other_cpu" "(busy, repeated)"
        done
        rps[$name]+="$r_rps "
        p50[$name]+="$r_p50 "
        p99[$name]+="$r_p99 "
        fus[$name]+="$r_front_us "
        [ "$r_other_cpu" -gt "$max_other" ] && max_other=$r_other_cpu
        row "$i" "$name" "$r_rps" "$(ms "$r_p50")" "$(ms "$r_p99")" \
            "$(ms "$r_max")" "$r_front_cpu" "$r_up_cpu" "$r_wrk_cpu" \
            "$r_other_cpu" "$r_front_us"
        rounds_json+="${rounds_json:+,
    }{\"round\":$i,\"case\":\"$name\",\"requests\":$r_requests"
        rounds_json+=",\"duration_us\":$r_duration,\"rps\":$r_rps"
        rounds_json+=",\"p50_us\":$r_p50,\"p90_us\":$r_p90"
        rounds_json+=",\"p99_us\":$r_p99,\"mean_us\":$r_mean"
        rounds_json+=",\"max_us\":$r_max,\"front_cpu_pct\":$r_front_cpu"
        rounds_json+=",\"upstream_cpu_pct\":$r_up_cpu"
        rounds_json+=",\"wrk_cpu_pct\":$r_wrk_cpu"
        rounds_json+=",\"other_cpu_pct\":$r_other_cpu"
        rounds_json+=",\"front_cpu_us_per_request\":$r_front_us}"
    done
done
echo "(CPU as % of one CPU: front and upstream workers, wrk, and everything"
echo " else on the machine; front_us: front CPU time per request, µs)"

# the logs must be clean: anything at error level or worse spoils the run
for f in "$state"/logs/*.log; do
    if tail -c +$(( ${log_mark[$f]:-0} + 1 )) "$f" \
        | grep -E '\[(error|crit|alert|emerg)\]' >&2
    then
        die "errors in $f; the run is not valid"
    fi
done

verdict() {
    # verdict VALUE OP LIMIT -> PASS|FAIL
    awk -v v="$1" -v l="$3" -v op="$2" 'BEGIN {
        ok = (op == ">=") ? (v >= l) : (v <= l)
        print ok ? "PASS" : "FAIL"
    }'
}

b() { [ "$1" = PASS ] && echo true || echo false; }

declare -A m_rps m_p50 m_p99 m_fus
for name in "${cases[@]}"; do
    # shellcheck disable=SC2086
    {
        m_rps[$name]=$(median ${rps[$name]})
        m_p50[$name]=$(median ${p50[$name]})
        m_p99[$name]=$(median ${p99[$name]})
        m_fus[$name]=$(median ${fus[$name]})
    }
done

echo
echo "median of $rounds rounds"
summary_row() {
    printf '%-34s %12s %10s %10s %14s\n' "$@"
}
summary_row "" req/s p50_ms p99_ms front_us/req
for name in "${cases[@]}"; do
    summary_row "$name" "${m_rps[$name]}" "$(ms "${m_p50[$name]}")" \
        "$(ms "${m_p99[$name]}")" "${m_fus[$name]}"
done

echo
overall=PASS
median_json=""
ratio_json=""
pass_json=""
for name in "${cases[@]}"; do
    median_json+="${median_json:+,
    }\"$name\": {\"rps\": ${m_rps[$name]}, \"p50_us\": ${m_p50[$name]},"
    median_json+=" \"p99_us\": ${m_p99[$name]},"
    median_json+=" \"front_cpu_us_per_request\": ${m_fus[$name]}}"

    base=${base_of[$name]:-}
    if [ -z "$base" ] || [ -z "${m_rps[$base]:-}" ]; then
        continue
    fi

    r_rps=$(ratio "${m_rps[$base]}" "${m_rps[$name]}")
    r_p50=$(ratio "${m_p50[$base]}" "${m_p50[$name]}")
    r_p99=$(ratio "${m_p99[$base]}" "${m_p99[$name]}")
    r_fus=$(ratio "${m_fus[$base]}" "${m_fus[$name]}")
    ratio_json+="${ratio_json:+,
    }\"$name/$base\": {\"throughput\": $r_rps, \"p50\": $r_p50,"
    ratio_json+=" \"p99\": $r_p99, \"front_cpu_per_request\": $r_fus}"

    printf '%-34s throughput %s  p50 %s  p99 %s  front CPU %s\n' \
        "$name / $base" "$r_rps" "$r_p50" "$r_p99" "$r_fus"

    target=${target_of[$name]:-}
    [ -n "$target" ] || continue
    v=$(verdict "$r_rps" '>=' "$target")
    printf '  throughput %s >= %s  %s\n' "$r_rps" "$target" "$v"
    [ "$v" = PASS ] || overall=FAIL
    pass_json+="${pass_json:+, }\"$name/$base throughput >= $target\": $(b "$v")"
    if [ "$name" = gateway ]; then
        v=$(verdict "$r_p99" '<=' "$max_p99_ratio")
        printf '  p99 latency %s <= %s  %s\n' "$r_p99" "$max_p99_ratio" "$v"
        [ "$v" = PASS ] || overall=FAIL
        pass_json+=", \"$name/$base p99 <= $max_p99_ratio\": $(b "$v")"
    fi
done
echo "overall: $overall"

# other work on the machine takes CPU from one case or the other
quiet=true
if [ "$max_other" -gt "$max_other_cpu" ]; then
    quiet=false
    echo "warning: other processes used up to $max_other% of a CPU during" \
         "a measured run; the figures are unreliable, run again on an idle" \
         "machine"
fi

# what was measured: the commit, and whether the module sources or the
# shipped conf differ from it
commit=$(git -C "$top" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=false
if [ -n "$(git -C "$top" status --porcelain -- config conf \
               'ngx_smartflow_*' 2>/dev/null)" ]
then
    dirty=true
fi

cat > "$outdir/result.json.tmp" <<JSON
{
  "benchmark": "smartflow-gateway-overhead",
  "time": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "nginx": "$("$nginx" -v 2>&1 | sed 's|.*/||')",
  "commit": "$commit",
  "sources_modified": $dirty,
  "config": {
    "cpus": $ncpu,
    "pinned": $( [ "$pin" = 1 ] && echo true || echo false ),
    "pinning": "$pin_note",
    "front_workers": 1,
    "upstream_workers": 1,
    "wrk_threads": 1,
    "connections": $conns,
    "duration_s": $duration,
    "warmup_s": $warmup,
    "rounds": $rounds,
    "request_bytes": $body_len,
    "response_bytes": $reply_len,
    "model": "gpt-4o-mini"
  },
  "rounds": [
    $rounds_json
  ],
  "cases": "${cases[*]}",
  "median": {
    $median_json
  },
  "ratio": {
    $ratio_json
  },
  "quiet_machine": $quiet,
  "max_other_cpu_pct": $max_other,
  "pass": {$pass_json},
  "result": "$overall"
}
JSON
mv "$outdir/result.json.tmp" "$outdir/result.json"
echo "summary: $outdir/result.json"

# the virtual-key path, embedded and with Redis (BENCH_KEYS=0 skips it)
if [ "${BENCH_KEYS:-1}" = 1 ]; then
    echo
    "$top/bench/keys.sh" || die "the virtual-key scenario failed"
fi

# the MetaCache: hit and miss paths against plain proxy_pass, phase 4 at
# 100,000 entries (BENCH_CACHE=0 skips it)
if [ "${BENCH_CACHE:-1}" = 1 ]; then
    SMARTFLOW_MODULES=$modules "$top/bench/cache.sh"
fi

# the guardrails' path (default policy group, 4 KB prompt) against plain
# proxy_pass, in a run of its own (BENCH_POLICY=0 skips it)
if [ "${BENCH_POLICY:-1}" = 1 ]; then
    "$top/bench/policy.sh" || echo "bench: the policy benchmark failed" >&2
fi

# the audit trail on versus off, in its own script
if [ "${BENCH_AUDIT:-1}" = 1 ]; then
    "$top/bench/audit.sh" || echo "bench: bench/audit.sh failed" >&2
fi

ok=1
exit 0
