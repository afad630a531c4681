# Sourced by the bench scripts that drive herald with `wrk -t1 -c64` POSTs of 64-byte
# bodies to one topic (publish-sustained.sh, sqlite-wal-frames.sh, publish-ratio.sh; and
# publish-nginx.sh, for nginx_conf and ticks): the work directory, its clean-up, the wrk
# script, a server started with the limits lifted, and nginx's configuration.
#
#   source "$(dirname "$0")/lib-herald-wrk.sh"
#   bench_setup [SIGNAL]      # $work, $work/post.lua; at exit the server gets SIGNAL (TERM)
#   herald_start BIN PORT CPU [serve args...]   # sets $pid once /healthz answers
#   nginx_conf PORT           # $work/nginx.conf: the HTTP floor, nginx's `return 200`
#   ticks PID...              # their CPU time so far (utime + stime, clock ticks)

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
    taskset -c "$cpu" "$bin" serve --listen-http "127.0.0.1:$port" --data-dir "$work/data" \
        --log-level warn --visitor-request-limit-burst 1000000000 \
        --visitor-message-daily-limit 4000000000 --visitor-topic-creation-limit-burst 0 \
        "$@" >"$work/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "herald did not come up (log: $work/server.log)" >&2
    return 1
}

# nginx's `return 200` with a small JSON body, one worker, access log off (issue #19's
# HTTP floor; the temp paths only point into $work). Run as `nginx -c $work/nginx.conf`.
nginx_conf() {
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
