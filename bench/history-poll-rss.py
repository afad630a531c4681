#!/usr/bin/env python3
"""Memory of history answers that are not read (issue #11, finding 4).

Publishes a history of about --size bytes (as JSON lines) on one topic, then opens
--polls concurrent `GET /<topic>/json?poll=1&since=all` requests on sockets with
small receive buffers that read only the first bytes of the answer and then stall.
Reports the server's RSS (VmRSS) before the polls, at its highest while they are
open (sampled, and VmHWM), and after they are closed; then reads one poll fully
and checks that it is complete and in order. A refused poll (429, over
`history-read-limit`) is counted, not retried.

  bench/history-poll-rss.py --url http://127.0.0.1:18096 --pid PID [--polls 40] [--size 11.6e6]

Start the server with a fresh data directory and limits that let the publishes in:
  target/release/herald serve --listen-http 127.0.0.1:18096 --data-dir /tmp/hp \\
      --message-size-limit 4k --visitor-request-limit-burst 1000000000 \\
      --visitor-message-daily-limit 4000000000
Only for loopback targets; the loops are bounded.
"""
import argparse
import json
import socket
import time
import urllib.request


def status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def publish(url, topic, body):
    req = urllib.request.Request(f"{url}/{topic}", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()


def poll_fully(url, topic):
    with urllib.request.urlopen(f"{url}/{topic}/json?poll=1&since=all", timeout=120) as resp:
        return resp.read()


def stalled_poll(host, port, topic):
    """Sends the poll, reads the first bytes of the answer, and stops reading."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(60)
    sock.connect((host, port))
    sock.sendall(
        f"GET /{topic}/json?poll=1&since=all HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    )
    first = sock.recv(1024)
    return sock, first


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--polls", type=int, default=40)
    ap.add_argument("--size", type=float, default=11.6e6, help="answer size in bytes")
    ap.add_argument("--text", type=int, default=3500, help="bytes of text per message")
    ap.add_argument("--topic", default="histprobe")
    args = ap.parse_args()
    host, port = args.url.split("//", 1)[1].rsplit(":", 1)
    port = int(port)
    pid = args.pid

    # Publish until the answer reaches --size (each JSON line is text + ~150 bytes).
    count = 0
    answer = 0
    while answer < args.size and count < 1_000_000:
        publish(args.url, args.topic, f"{count:07d}-".encode() + b"x" * (args.text - 8))
        count += 1
        answer += args.text + 150
    answer = len(poll_fully(args.url, args.topic))
    time.sleep(1)
    before = status_kb(pid, "VmRSS")
    hwm_before = status_kb(pid, "VmHWM")

    socks = []
    refused = 0
    t0 = time.time()
    for _ in range(args.polls):
        sock, first = stalled_poll(host, port, args.topic)
        if b" 429 " in first.split(b"\r\n", 1)[0]:
            refused += 1
            sock.close()
        else:
            socks.append(sock)
    opened = time.time() - t0
    peak = before
    for _ in range(20):
        peak = max(peak, status_kb(pid, "VmRSS"))
        time.sleep(0.1)
    hwm = status_kb(pid, "VmHWM")
    for sock in socks:
        sock.close()
    time.sleep(2)
    after = status_kb(pid, "VmRSS")

    body = poll_fully(args.url, args.topic)
    texts = [json.loads(l)["message"] for l in body.splitlines() if l]
    in_order = [t[:7] for t in texts] == [f"{i:07d}" for i in range(count)]

    mb = lambda kb: f"{kb / 1024:.1f} MB"
    print(f"history: {count} messages, poll answer {answer / 1e6:.1f} MB")
    print(f"{args.polls} unread polls ({len(socks)} answered, {refused} refused 429), opened in {opened:.1f}s")
    print(f"RSS before {mb(before)}, peak {mb(peak)} (+{mb(peak - before)}; VmHWM {mb(hwm)}, was {mb(hwm_before)}), after close {mb(after)}")
    print(f"one full poll afterwards: {len(texts)} messages, complete and in order: {in_order and len(texts) == count}")


if __name__ == "__main__":
    main()
