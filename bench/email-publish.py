#!/usr/bin/env python3
"""What `X-Email` costs a publisher, and how fast queued mail drains.

    .venv/bin/python bench/email-publish.py [HERALD_BIN] [N]

Starts herald (default target/release/herald) with an SMTP relay (aiosmtpd, in this
process) and publishes N messages (default 300) one after another over one
keep-alive connection, alternating rounds of 50 without and with `X-Email`, so both
see the same machine load. Prints the mean and p50/p99 publish latency of each kind,
their ratio, and how long after the last publish the relay had every mail. The
e-mail publish also commits the mail to `mail.db` (synchronous) before answering.
"""

from __future__ import annotations

import http.client
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Count:
    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.n += 1
        return "250 OK"


def main() -> None:
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/herald"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    relay_port, http_port = free_port(), free_port()
    count = Count()
    relay = Controller(count, hostname="127.0.0.1", port=relay_port)
    relay.start()
    with tempfile.TemporaryDirectory() as data:
        proc = subprocess.Popen(
            [binary, "serve", "--listen-http", f"127.0.0.1:{http_port}", "--data-dir", data,
             "--base-url", "http://bench.example", "--smtp-sender-addr", f"127.0.0.1:{relay_port}",
             "--smtp-sender-from", "bench@bench.example", "--visitor-request-limit-exempt-hosts",
             "127.0.0.0/8", "--log-level", "warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
                    conn.request("GET", "/v1/health")
                    conn.getresponse().read()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            plain: list[float] = []
            mail: list[float] = []
            for i in range(n):
                with_mail = (i // 50) % 2 == 1
                headers = {"X-Email": f"u{i}@bench.example"} if with_mail else {}
                t = time.perf_counter()
                conn.request("POST", "/bench", body=f"message {i}", headers=headers)
                resp = conn.getresponse()
                resp.read()
                (mail if with_mail else plain).append(time.perf_counter() - t)
                assert resp.status == 200, resp.status
            last = time.perf_counter()
            want = len(mail)
            while count.n < want and time.perf_counter() - last < 60:
                time.sleep(0.005)
            drained = time.perf_counter() - last

            def show(name: str, xs: list[float]) -> None:
                xs = sorted(xs)
                print(f"{name:12} n={len(xs):4} mean={statistics.mean(xs) * 1e3:7.3f} ms "
                      f"p50={xs[len(xs) // 2] * 1e3:7.3f} ms p99={xs[int(len(xs) * 0.99)] * 1e3:7.3f} ms")

            show("no e-mail", plain)
            show("X-Email", mail)
            print(f"ratio (mean) X-Email / no e-mail: {statistics.mean(mail) / statistics.mean(plain):.2f}")
            print(f"all {want} mails at the relay {drained * 1e3:.0f} ms after the last publish "
                  f"(relay has {count.n})")
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            relay.stop()


if __name__ == "__main__":
    main()
