#!/usr/bin/env bash
# Start-up time and idle footprint of `herald serve` on the embedded store.
#
#   bench/startup.sh [BINARY] [RUNS]
#
# Each run starts the binary twice on a free port: first on a fresh, empty data
# directory (the store file is created: schema, WAL, their fsyncs), then again on
# the same directory (the usual restart). Each time it measures the time from exec
# to the first `GET /readyz` answered 200 (polled every 0.5 ms over a raw socket, so
# the poller adds no process start-up of its own). After the second start it lets
# the server idle for a second and reads its resident memory (VmRSS from
# /proc/PID/status). Each start is stopped with SIGTERM (exit status must be 0).
# Prints every run and then the median and maximum of each figure.
#
# BINARY defaults to target/release/herald (build it with `cargo build --release`;
# CARGO_TARGET_DIR is honoured); RUNS defaults to 20.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${1:-${CARGO_TARGET_DIR:-$ROOT/target}/release/herald}"
RUNS="${2:-20}"
[[ -x "$BIN" ]] || { echo "no binary at $BIN (cargo build --release)" >&2; exit 1; }

exec python3 - "$BIN" "$RUNS" <<'PY'
import os, signal, socket, statistics, subprocess, sys, tempfile, time

binary, runs = sys.argv[1], int(sys.argv[2])

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def readyz(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            head = s.recv(64)
            return head.startswith(b"HTTP/1.1 200")
    except OSError:
        return False

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")

env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_") and k != "RUST_LOG"}

def start(data, idle):
    """Starts herald on `data`; returns (ms to ready, idle RSS KiB or None)."""
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [binary, "serve", "--listen-http", f"127.0.0.1:{port}", "--data-dir", data],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    while not readyz(port):
        if proc.poll() is not None:
            sys.exit(f"herald exited with {proc.returncode} before it was ready")
        if time.perf_counter() - t0 > 10:
            proc.kill()
            sys.exit("not ready within 10 s")
        time.sleep(0.0005)
    ms = (time.perf_counter() - t0) * 1000
    kib = None
    if idle:
        time.sleep(1.0)
        kib = rss_kib(proc.pid)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    if code != 0:
        sys.exit(f"exit status {code} after SIGTERM")
    return ms, kib

fresh_ms, again_ms, rss = [], [], []
for run in range(runs):
    with tempfile.TemporaryDirectory() as data:
        fresh, _ = start(data, idle=False)
        again, kib = start(data, idle=True)
    fresh_ms.append(fresh)
    again_ms.append(again)
    rss.append(kib)
    print(f"run {run + 1:2}: ready in {fresh:6.2f} ms (new store), {again:6.2f} ms "
          f"(existing store); idle RSS {kib / 1024:5.2f} MiB")

def summary(name, values, unit, scale=1.0):
    print(f"{name}: median {statistics.median(values) / scale:.2f} {unit}, "
          f"max {max(values) / scale:.2f} {unit} ({runs} runs)")

summary("start-up to /readyz 200, new store", fresh_ms, "ms")
summary("start-up to /readyz 200, existing store", again_ms, "ms")
summary("idle RSS", rss, "MiB", 1024)
PY
