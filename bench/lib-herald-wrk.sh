# Sourced by the bench scripts that drive herald (and nginx) with `wrk -t1 -c64` POSTs of
# 64-byte bodies to one topic (publish-sustained.sh, sqlite-wal-frames.sh,
# publish-nginx.sh, publish-ratio.sh): the work directory, its clean-up, the wrk script,
# a server started with the limits lifted, nginx's configuration, and a run's requests
# per second of server CPU time.
#
#   source "$(dirname "$0")/lib-herald-wrk.sh"
#   bench_setup [SIGNAL]      # $work, $work/post.lua; at exit the server gets SIGNAL (TERM)
#   herald_start BIN PORT CPU [serve args...]   # sets $pid once /healthz answers; at
#                             # LOG_LEVEL (default warn), data in HERALD_DATA (default
#                             # $work/data), output in HERALD_LOG ($work/server.log)
#   wait_http URL             # until URL answers with a success (10 s at most)
#   nginx_conf PORT           # $work/nginx.conf: the HTTP floor, nginx's `return 200`
#   ticks PID...              # their CPU time so far (utime + stime, clock ticks)
#   wrk_run PORT PID...       # one wrk run: "requests/s requests-per-CPU-second of PIDs"

bench_setup() {
    command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
    work=$(mktemp -d)
    pid=""
    stop_signal=${1:-TERM}
    trap '[[ -n "$pid" ]] && kill -"$stop_signal" "$pid" 2>/dev/null; rm -rf "$work"' EXIT
    cat >"$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("x", 64)
LUA
}

herald_start() {
    local bin=$1 port=$2 cpu=$3
    shift 3
    local log=${HERALD_LOG:-$work/server.log}
    taskset -c "$cpu" "$bin" serve --listen-http "127.0.0.1:$port" \
        --data-dir "${HERALD_DATA:-$work/data}" --log-level "${LOG_LEVEL:-warn}" \
        --visitor-request-limit-burst 1000000000 \
        --visitor-message-daily-limit 4000000000 --visitor-topic-creation-limit-burst 0 \
        "$@" >"$log" 2>&1 &
    pid=$!
    wait_http "http://127.0.0.1:$port/healthz" && return 0
    echo "herald did not come up (log: $log)" >&2
    return 1
}

# Waits up to 10 s for URL to answer with a success; fails if it never does.
wait_http() {
    for _ in $(seq 100); do
        curl -fs -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# nginx's `return 200` with a small JSON body, one worker, access log off (issue #19's
# HTTP floor; the temp paths only point into $work). Run as `nginx -c $work/nginx.conf`.
nginx_conf() {
    command -v nginx >/dev/null || { echo "nginx not found: apt-get install nginx-light" >&2; exit 1; }
    cat >"$work/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/nginx-body;
    proxy_temp_path $work/nginx-proxy;
    fastcgi_temp_path $work/nginx-fastcgi;
    uwsgi_temp_path $work/nginx-uwsgi;
    scgi_temp_path $work/nginx-scgi;
    server {
        listen 127.0.0.1:$1;
        location / { return 200 "{}\n"; }
    }
}
EOF
}

# The CPU time (utime + stime, clock ticks) of the given processes, their threads included.
ticks() {
    local total=0 p
    for p in "$@"; do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$total"
}

# One run of `wrk -t1 -c$CONNS` (default 64) for SECS seconds from LOADGEN_CPU (default
# 1) against PORT; prints "requests/s requests-per-server-CPU-second", the second counted
# from the CPU time of the processes PID... (read SETTLE seconds after the run, default
# 0, so that work the run left to a server's threads counts). The second is what a
# server answers per second of its own CPU time, which other processes on a shared host
# disturb much less than the wall-clock rate.
wrk_run() {
    local port=$1 t0 t1 out
    shift
    t0=$(ticks "$@")
    out=$(taskset -c "${LOADGEN_CPU:-1}" wrk -t1 -c"${CONNS:-64}" -d"${SECS}s" \
        -s "$work/post.lua" "http://127.0.0.1:$port/bench")
    sleep "${SETTLE:-0}"
    t1=$(ticks "$@")
    python3 - "$out" "$t0" "$t1" "$(getconf CLK_TCK)" <<'PY'
import re, sys
out, t0, t1, hz = sys.argv[1], *map(float, sys.argv[2:])
total = int(re.search(r"(\d+) requests in", out).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
print(f"{rps:.0f} {total / max((t1 - t0) / hz, 1e-9):.0f}")
PY
}
