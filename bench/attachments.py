#!/usr/bin/env python3
"""Attachment upload throughput, server memory and download time-to-first-byte.

Starts a herald (release build) with attachments in a fresh temporary directory,
then:

1. N concurrent uploads of SIZE bytes each (`PUT /bench` with `Filename`, as
   `curl -T` sends them), timing the whole batch and sampling the server's RSS
   every 20 ms (VmRSS, and VmHWM at the end);
2. the floor for the same bytes on the same disk in the same run: N threads each
   writing SIZE bytes to a file of its own and fsyncing it (what the store must do
   at least);
3. the time to the first byte of `GET /file/<id>` for one of the uploaded files,
   against `GET /v1/health` (the server's floor), median of REPEAT requests each.

With `--s3-endpoint http://127.0.0.1:PORT` (an S3-compatible server, e.g.
`.venv-s3/bin/moto_server -p PORT`) the files go to bucket `herald-bench` there, and
the floor is the same N objects PUT straight to that server by N threads.

Usage: bench/attachments.py [--uploads 100] [--size-mb 15] [--repeat 50]
       [--herald target/release/herald] [--s3-endpoint URL]
Only the standard library; prints one JSON line and a Markdown table.
"""

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def start_herald(binary, data_dir, files_dir):
    """`files_dir`: a directory or an s3:// URL."""
    proc = subprocess.Popen(
        [binary, "serve", "--listen-http", "127.0.0.1:0", "--data-dir", data_dir,
         "--base-url", "http://bench.test", "--attachment-cache-dir", files_dir,
         "--attachment-total-size-limit", "50G",
         "--visitor-attachment-total-size-limit", "50G",
         "--visitor-attachment-daily-bandwidth-limit", "500G",
         "--visitor-request-limit-exempt-hosts", "127.0.0.1",
         "--body-read-timeout", "600s", "--log-level", "info"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # The address is in the "herald listening" line (log level info).
    deadline = time.time() + 30
    while time.time() < deadline:
        line = proc.stderr.readline()
        m = re.search(r"herald listening on http://([0-9.]+):(\d+)", line)
        if m:
            threading.Thread(target=lambda: proc.stderr.read(), daemon=True).start()
            return proc, m.group(1), int(m.group(2))
    proc.kill()
    sys.exit("herald did not start")


def upload(host, port, body, results, i):
    conn = http.client.HTTPConnection(host, port, timeout=600)
    conn.request("PUT", "/bench", body=body,
                 headers={"Filename": f"f{i}.bin", "Content-Length": str(len(body))})
    resp = conn.getresponse()
    data = resp.read()
    results[i] = (resp.status, json.loads(data) if resp.status == 200 else data)
    conn.close()


def run_all(threads):
    """Starts `threads`, waits for all; returns the seconds it took."""
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def ttfb(host, port, path, repeat):
    times = []
    for _ in range(repeat):
        conn = http.client.HTTPConnection(host, port, timeout=30)
        t0 = time.perf_counter()
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read(1)
        times.append(time.perf_counter() - t0)
        resp.read()
        conn.close()
    return statistics.median(times) * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--uploads", type=int, default=100)
    ap.add_argument("--size-mb", type=int, default=15)
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--herald", default="target/release/herald")
    ap.add_argument("--s3-endpoint", default=None)
    args = ap.parse_args()
    size = args.size_mb * 1000 * 1000  # 15 MB: under the 15M (MiB) default limit
    body = os.urandom(size)
    tmp = tempfile.mkdtemp(prefix="herald-bench-att-")
    files_dir = os.path.join(tmp, "files")
    s3 = None
    if args.s3_endpoint:
        s3 = args.s3_endpoint.removeprefix("http://")
        s3_host, s3_port = s3.split(":")
        conn = http.client.HTTPConnection(s3_host, int(s3_port), timeout=30)
        conn.request("PUT", "/herald-bench")
        conn.getresponse().read()
        files_dir = f"s3://AKIDBENCH:secret@herald-bench/att?region=us-east-1&endpoint={args.s3_endpoint}"
    proc, host, port = start_herald(args.herald, os.path.join(tmp, "data"), files_dir)
    try:
        idle_rss = rss_kib(proc.pid)
        samples = []
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                samples.append(rss_kib(proc.pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        results = [None] * args.uploads
        upload_s = run_all([threading.Thread(target=upload, args=(host, port, body, results, i))
                            for i in range(args.uploads)])
        stop.set()
        sampler.join()
        ok = [r for r in results if r and r[0] == 200]
        if len(ok) != args.uploads:
            sys.exit(f"only {len(ok)} of {args.uploads} uploads succeeded: {results[:3]}")
        hwm = rss_kib(proc.pid, "VmHWM")

        # Floor: the same bytes written and fsynced by N threads in the same directory,
        # or PUT straight to the same S3 server.
        floor_dir = os.path.join(tmp, "floor")
        os.makedirs(floor_dir)

        def write(i):
            if s3:
                conn = http.client.HTTPConnection(s3_host, int(s3_port), timeout=600)
                conn.request("PUT", f"/herald-bench/floor/f{i}", body=body)
                conn.getresponse().read()
                conn.close()
                return
            with open(os.path.join(floor_dir, f"f{i}"), "wb") as f:
                for off in range(0, size, 64 * 1024):
                    f.write(body[off:off + 64 * 1024])
                f.flush()
                os.fsync(f.fileno())

        floor_s = run_all([threading.Thread(target=write, args=(i,)) for i in range(args.uploads)])

        url = ok[0][1]["attachment"]["url"]
        path = url[len("http://bench.test"):]
        file_ttfb = ttfb(host, port, path, args.repeat)
        health_ttfb = ttfb(host, port, "/v1/health", args.repeat)
        total_mb = args.uploads * size / 1e6
        result = {
            "store": "s3" if s3 else "dir",
            "uploads": args.uploads, "size_mb": args.size_mb,
            "upload_s": round(upload_s, 2),
            "upload_mb_s": round(total_mb / upload_s, 1),
            "floor_mb_s": round(total_mb / floor_s, 1),
            "rss_idle_mib": round(idle_rss / 1024, 1),
            "rss_peak_sampled_mib": round(max(samples) / 1024, 1),
            "rss_hwm_mib": round(hwm / 1024, 1),
            "download_ttfb_ms": round(file_ttfb, 2),
            "health_ttfb_ms": round(health_ttfb, 2),
        }
        print(json.dumps(result))
        print()
        print("| store | uploads | herald MB/s | floor MB/s (same disk: write+fsync; S3: direct PUT) | RSS idle → peak (HWM) | download TTFB | /v1/health TTFB |")
        print("|---|---|---|---|---|---|---|")
        print(f"| {result['store']} | {args.uploads} × {args.size_mb} MB | {result['upload_mb_s']} | {result['floor_mb_s']} "
              f"| {result['rss_idle_mib']} → {result['rss_hwm_mib']} MiB | {result['download_ttfb_ms']} ms "
              f"| {result['health_ttfb_ms']} ms |")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
