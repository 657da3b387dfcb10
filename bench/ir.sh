# Sourced by the benchmark scripts that count the instructions a front
# nginx executes, running as one process under valgrind's callgrind with
# its dumps in a state folder as callgrind.out.*.

# ir_total STATE: the instructions counted in the newest dump
ir_total() {
    local f
    f=$(ls -t "$1"/callgrind.out.* | head -1)
    sed -n 's/^summary: *\([0-9]*\).*/\1/p; s/^totals: *\([0-9]*\).*/\1/p' \
        "$f" | head -1
}

# ir_case NAME FRONT STATE LUA URL SECONDS: a warm-up second, the
# counters zeroed, wrk for SECONDS with the Lua script (its done() prints
# "IR requests errors"), a dump named NAME; prints
# "NAME requests instructions-per-request errors=N"
ir_case() {
    local name=$1 front=$2 state=$3 lua=$4 url=$5 secs=$6 out total

    wrk -t1 -c4 -d1s -s "$lua" "$url" >/dev/null
    callgrind_control -z "$front" >/dev/null 2>&1
    out=$(wrk -t1 -c4 -d"${secs}s" -s "$lua" "$url" | sed -n 's/^IR //p')
    callgrind_control -d "$name" "$front" >/dev/null 2>&1
    total=$(ir_total "$state")
    set -- $out
    echo "$name $1 $(awk -v t="$total" -v n="$1" \
                         'BEGIN { printf "%.0f", t / n }') errors=$2"
}

# ir_front STATE CONF URL: the front nginx (prefix STATE, configuration
# CONF) under callgrind, its dumps STATE/callgrind.out.*, valgrind's log
# STATE/logs/valgrind.log; sets front to its pid, adds that to pids, and
# waits (up to 30 s) until URL answers
ir_front() {
    local state=$1 conf=$2 url=$3

    valgrind --tool=callgrind --callgrind-out-file="$state/callgrind.out.%p" \
        nginx -p "$state" -c "$conf" 2>"$state/logs/valgrind.log" &
    front=$!
    pids+=("$front")

    for _ in $(seq 150); do
        curl -s -o /dev/null "$url" && return 0
        sleep 0.2
    done
}
