#!/usr/bin/env python3
"""Memory with subscribers that never read (docs/BENCHMARKS.md, issue 3).

Opens N WebSocket subscribers on one topic that complete the handshake and then
never read again (small receive buffers, so the kernel cannot absorb much), plus one
subscriber that reads everything. Publishes M messages of S bytes, then reports:
the server's RSS before and after (VmRSS), its peak (VmHWM), how many of the slow
subscribers the server cut off (their sockets see EOF/reset once we look), and
whether the reading subscriber received every message in order.

  bench/slow-subscribers.py --url http://127.0.0.1:18095 --pid PID [-n 1000] [-m 3000] [-s 3000]

Start the server with a message size limit that fits -s, e.g.
  taskset -c 0 target/release/herald serve --listen-http 127.0.0.1:18095 \\
      --message-size-limit 8k --visitor-subscription-limit 100000 --data-dir /tmp/h \\
      --visitor-request-limit-burst 1000000000 --visitor-message-daily-limit 4000000000
Only for loopback targets; the loops are bounded.
"""
import argparse
import asyncio
import base64
import json
import os
import socket
import time
import urllib.request


def rss_kb(pid, key="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


async def open_ws(host, port, topic, rcvbuf=None):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET /{topic}/ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n")[0]:
        raise RuntimeError(head.decode(errors="replace"))
    return reader, writer


async def read_frames(reader, want, out):
    """Reads text frames until `want` messages (after `open`) arrived."""
    while len(out) < want:
        b0, b1 = await reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(await reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await reader.readexactly(8), "big")
        payload = await reader.readexactly(n)
        if b0 & 0x0F != 0x1:
            continue
        event = json.loads(payload)
        if event.get("event") == "message":
            out.append(event["message"])


def publish(url, topic, body):
    req = urllib.request.Request(f"{url}/{topic}", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:18095")
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("-n", type=int, default=1000, help="subscribers that never read")
    ap.add_argument("-m", type=int, default=3000, help="messages to publish")
    ap.add_argument("-s", type=int, default=3000, help="message size in bytes")
    args = ap.parse_args()
    host, port = args.url.split("//")[1].split(":")
    port = int(port)
    topic = f"slow{int(time.time())}"

    rss0 = rss_kb(args.pid)
    slow = []
    for i in range(args.n):
        slow.append(await open_ws(host, port, topic, rcvbuf=4096))
    fast_reader, fast_writer = await open_ws(host, port, topic)
    received = []
    reading = asyncio.create_task(read_frames(fast_reader, args.m, received))
    rss_open = rss_kb(args.pid)

    loop = asyncio.get_running_loop()
    started = time.time()
    for k in range(args.m):
        body = (f"{k:08d}-" + "x" * args.s)[: args.s].encode()
        await loop.run_in_executor(None, publish, args.url, topic, body)
    try:
        await asyncio.wait_for(reading, timeout=60)
    except asyncio.TimeoutError:
        pass
    elapsed = time.time() - started
    rss_end = rss_kb(args.pid)
    hwm = rss_kb(args.pid, "VmHWM")

    # A slow subscriber the server cut off sees EOF once its buffered bytes are read.
    cut = 0
    for reader, writer in slow:
        try:
            while True:
                chunk = await asyncio.wait_for(reader.read(1 << 16), timeout=0.5)
                if not chunk:
                    cut += 1
                    break
        except (asyncio.TimeoutError, ConnectionError):
            if reader.at_eof():
                cut += 1
        writer.close()
    fast_writer.close()
    in_order = received == sorted(received)
    report = {
        "slow_subscribers": args.n,
        "messages": args.m,
        "message_bytes": args.s,
        "publish_secs": round(elapsed, 2),
        "rss_before_kb": rss0,
        "rss_with_subscribers_kb": rss_open,
        "rss_after_publish_kb": rss_end,
        "rss_peak_kb": hwm,
        "peak_growth_per_slow_subscriber_bytes": round((hwm - rss_open) * 1024 / max(args.n, 1)),
        "slow_subscribers_cut_off": cut,
        "reader_received": len(received),
        "reader_in_order": in_order,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    asyncio.run(main())
