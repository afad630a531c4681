#!/usr/bin/env python3
"""Web Push sends per second from herald's queue, next to a floor measured in the
same run: how fast the local push-service receiver itself takes the same requests
from a plain keep-alive Python client (so a herald figure close to the floor means the
receiver, not herald, is the limit).

    HERALD_BIN=target/release/herald python3 bench/webpush-sends.py [--subs 200] [--messages 10]

Needs only the Python standard library and a herald binary (`herald webpush keys`
makes the VAPID keys). The receiver answers 201 without decrypting (the tests do the
independent decryption; this measures the sending path).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    def __init__(self):
        self.count = 0
        self.lock = threading.Lock()
        self.last = 0.0
        rec = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as push services do

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()
                with rec.lock:
                    rec.count += 1
                    rec.last = time.monotonic()

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # the default 5 resets a burst of connects

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def floor(rec: Receiver, total: int, workers: int = 64) -> float:
    body = os.urandom(300)
    per = total // workers

    def client(_):
        c = http.client.HTTPConnection("127.0.0.1", rec.port)
        for _ in range(per):
            c.request("POST", "/floor", body, {"Content-Type": "application/octet-stream"})
            c.getresponse().read()
        c.close()

    start = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(client, range(workers)))
    return per * workers / (time.monotonic() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subs", type=int, default=200)
    ap.add_argument("--messages", type=int, default=10)
    args = ap.parse_args()
    binary = os.environ.get("HERALD_BIN", "target/release/herald")
    keys = subprocess.run([binary, "webpush", "keys"], capture_output=True, text=True, check=True).stdout
    public = re.search(r"web-push-public-key: (\S+)", keys).group(1)
    private = re.search(r"web-push-private-key: (\S+)", keys).group(1)
    rec = Receiver()
    total = args.subs * args.messages
    floor_rate = floor(rec, total)
    rec.count = 0

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tempfile.mkdtemp()
    env = dict(os.environ, HERALD_WEB_PUSH_PRIVATE_KEY=private, HERALD_VISITOR_REQUEST_LIMIT_EXEMPT_HOSTS="127.0.0.1")
    proc = subprocess.Popen(
        [binary, "serve", "--listen-http", f"127.0.0.1:{port}", "--data-dir", data,
         "--web-push-public-key", public, "--web-push-allowed-endpoints", f"http://127.0.0.1:{rec.port}/"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/v1/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        # A valid P-256 point and auth secret (herald encrypts for each subscription).
        from_point = base64.urlsafe_b64decode(public + "=" * (-len(public) % 4))
        p256dh = base64.urlsafe_b64encode(from_point).rstrip(b"=").decode()
        auth = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        for i in range(args.subs):
            body = json.dumps({"endpoint": f"http://127.0.0.1:{rec.port}/s{i}", "auth": auth, "p256dh": p256dh, "topics": ["bench"]})
            urllib.request.urlopen(urllib.request.Request(base + "/v1/webpush", body.encode(), method="POST"))
        start = time.monotonic()
        for m in range(args.messages):
            urllib.request.urlopen(urllib.request.Request(base + "/bench", f"message {m}".encode(), method="PUT"))
        deadline = start + 300
        while rec.count < total and time.monotonic() < deadline:
            time.sleep(0.05)
        elapsed = rec.last - start
        rate = rec.count / elapsed if elapsed > 0 else 0
        print(json.dumps({
            "subscriptions": args.subs, "messages": args.messages, "pushes": rec.count,
            "herald_sends_per_s": round(rate), "receiver_floor_per_s": round(floor_rate),
            "ratio": round(rate / floor_rate, 2) if floor_rate else None,
        }))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
