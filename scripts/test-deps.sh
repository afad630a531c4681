#!/usr/bin/env bash
# What the test suite needs on the machine, installed or started when missing: sourced
# by ./test (so that `./test` alone sets up a fresh machine) and by .ci/run.
# Installs come from Debian (apt-get, as root) and PyPI (a venv in the checkout);
# services are started on loopback. Each function says what needs it.
#
#   ensure_test_deps    all of them, in order

# Redis on 127.0.0.1:6379 (the machine starts it; restart it with the machine doc's
# command if it is down). The cluster tests (tests/it/cluster.rs) and the Redis run of
# the suite below use it, each under its own key prefix.
ensure_redis() {
    if ! command -v redis-cli >/dev/null || ! command -v redis-server >/dev/null; then
        echo "redis not installed; installing from Debian"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq redis-server redis-tools >/dev/null
    fi
    if [[ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" == "PONG" ]]; then
        echo "redis: up on 127.0.0.1:6379"
        return
    fi
    echo "redis: down, starting it"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
    for _ in $(seq 1 50); do
        if [[ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" == "PONG" ]]; then
            echo "redis: started"
            return
        fi
        sleep 0.2
    done
    echo "error: redis did not answer PING on 127.0.0.1:6379" >&2
    tail -n 20 /var/log/redis/ci.log >&2 || true
    return 1
}

# promtool (Debian package `prometheus`): the metrics test runs `promtool check metrics`
# on herald's real /metrics output and fails, rather than skips, without it.
ensure_promtool() {
    if command -v promtool >/dev/null; then
        echo "promtool: $(promtool --version 2>&1 | head -n 1)"
        return
    fi
    echo "promtool not installed; installing prometheus from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # The package's service is not wanted (and there is no init system to run it).
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    command -v promtool >/dev/null || { echo "error: promtool still missing" >&2; return 1; }
    echo "promtool: $(promtool --version 2>&1 | head -n 1)"
}

# nats-server on 127.0.0.1:4222 (JetStream on): `herald bench`'s NATS test
# (tests/it/bench.rs) runs against it and fails, rather than skips, when it is down;
# another test starts the same binary with a WebSocket listener of its own.
ensure_nats() {
    if ! command -v nats-server >/dev/null && [[ ! -x /usr/sbin/nats-server ]]; then
        echo "nats-server not installed; installing it from Debian"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends nats-server >/dev/null
    fi
    if (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
        echo "nats-server: up on 127.0.0.1:4222"
        return
    fi
    echo "nats-server: down, starting it"
    mkdir -p /var/lib/nats-server
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
        -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
    for _ in $(seq 1 50); do
        if (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
            echo "nats-server: started"
            return
        fi
        sleep 0.2
    done
    echo "error: nats-server did not open 127.0.0.1:4222" >&2
    tail -n 20 /var/log/nats-server.log >&2 || true
    return 1
}

# An S3-compatible server for the attachment tests (tests/it/attachments.rs `s3_*`):
# moto's server (PyPI `moto[server]`, pinned), in its own venv `.venv-s3`; each test
# starts it on a loopback port of its own and fails, rather than skips, without it.
# Chosen over `s3s-fs` (crates.io: minutes of compiling on this 2-core machine) and
# MinIO (not packaged in Debian or PyPI): a pip install of under a minute when the
# index is quick, a Python process that starts in about a second.
ensure_moto() {
    local venv=.venv-s3 want="moto[server]==5.2.5"
    local have=""
    # Read whole before matching: `grep -q` closing the pipe early would fail it
    # under pipefail and reinstall every time.
    if [[ -x "$venv/bin/moto_server" ]]; then
        have="$("$venv/bin/python" -m pip show moto 2>/dev/null || true)"
    fi
    if [[ "$have" == *$'\nVersion: 5.2.5\n'* ]]; then
        echo "moto: 5.2.5 (in $venv)"
        return
    fi
    echo "moto not installed; installing $want into $venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "$want"
    [[ -x "$venv/bin/moto_server" ]] || { echo "error: moto_server still missing" >&2; return 1; }
}

# Chromium (Debian package `chromium`): the web app's browser tests
# (tests/clients/test_webapp.py) drive it through Playwright (PyPI) with
# executable_path=/usr/bin/chromium (never `playwright install`), and fail, rather
# than skip, without it.
ensure_chromium() {
    if [[ -x /usr/bin/chromium ]]; then
        echo "chromium: $(/usr/bin/chromium --version 2>/dev/null | head -n 1)"
        return
    fi
    echo "chromium not installed; installing it from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core fonts-noto-color-emoji >/dev/null
    [[ -x /usr/bin/chromium ]] || { echo "error: chromium still missing" >&2; return 1; }
    echo "chromium: $(/usr/bin/chromium --version 2>/dev/null | head -n 1)"
}

# tests/it/failover.rs makes its TLS certificates with the openssl CLI (tests only:
# herald itself links no OpenSSL) and runs Sentinels as `redis-server --sentinel`.
ensure_openssl() {
    if ! command -v openssl >/dev/null; then
        echo "openssl CLI not installed; installing from Debian"
        apt-get update -qq >/dev/null
        apt-get install -y -qq openssl >/dev/null
    fi
    echo "openssl: $(openssl version)"
}

ensure_test_deps() {
    ensure_redis
    ensure_openssl
    ensure_promtool
    ensure_nats
    ensure_moto
    ensure_chromium
}
