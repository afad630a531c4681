#!/usr/bin/env python3
"""A flood of password logins with made-up user names (issue #11, finding 3).

Starts `herald serve` (access control on, one user, one token) in a temporary data
dir, then runs N flooders, each from its own loopback address (127.3.x.y: one
visitor each), that send `PUT /open` with Basic credentials for an unknown user
back to back for D seconds (a new connection per request, as a naive attacker
would). During the flood it measures:

- a valid password login (first login of that user, so argon2 must run) from a
  fresh address: time until `200`, retrying after `Retry-After` on `429 42901`
  (as a well-behaved client would; the tries are reported);
- the same login repeated (remembered: no argon2) and a token login;
- the server's peak RSS (VmHWM) and its RSS a few seconds after the flood.

  bench/auth-flood.py [--herald target/release/herald] [-n 300] [-d 10]

The server's own visitor request limiter is off for loopback (exempt hosts), as in
the tests, so only the login path is measured. Loopback only; the loops are bounded.
"""
import argparse
import asyncio
import base64
import collections
import os
import re
import subprocess
import sys
import tempfile
import time

USER, PASSWORD = "phil", "phil-secret-password"


def rss_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def put(port, src, auth, timeout=60.0):
    """One `PUT /open` from address `src`: (status, ntfy code, Retry-After)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0)), timeout
    )
    try:
        writer.write(
            (
                f"PUT /open HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\n"
                "Content-Length: 1\r\nConnection: close\r\n\r\nx"
            ).encode()
        )
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode(errors="replace").split("\r\n")
    status = int(lines[0].split()[1])
    retry = next(
        (l.split(":", 1)[1].strip() for l in lines if l.lower().startswith("retry-after:")),
        None,
    )
    m = re.search(rb'"code":(\d+)', body)
    return status, int(m.group(1)) if m else 0, retry


async def flooder(port, i, until, answers):
    src = f"127.3.{i // 250}.{i % 250 + 1}"
    auth = basic(f"nobody{i}", "guess")
    while time.monotonic() < until:
        try:
            status, code, _ = await put(port, src, auth)
        except (OSError, asyncio.TimeoutError, IndexError, ValueError):
            answers["error"] += 1
            await asyncio.sleep(0.05)
            continue
        answers[(status, code)] += 1
        if code == 42909:
            # This address is throttled for a minute; a flooder would move on.
            await asyncio.sleep(1)


async def valid_login(port, src, auth):
    """Time until `200`, following `Retry-After` on 429 42901; (seconds, tries, last)."""
    start = time.monotonic()
    tries = 0
    while True:
        tries += 1
        status, code, retry = await put(port, src, auth)
        if status != 429 or code != 42901 or time.monotonic() - start > 60:
            return time.monotonic() - start, tries, (status, code)
        await asyncio.sleep(float(retry or 1))


async def main(args):
    data = tempfile.mkdtemp(prefix="herald-auth-flood-")
    env = dict(os.environ, HERALD_VISITOR_REQUEST_LIMIT_EXEMPT_HOSTS="127.0.0.0/8,::1")
    cli = lambda *a, **kw: subprocess.run(
        [args.herald, *a, "--data-dir", data], check=True, capture_output=True, text=True, **kw
    )
    cli("user", "add", USER, env=dict(env, HERALD_PASSWORD=PASSWORD))
    cli("access", "*", "open", "rw")
    token = re.search(r"tk_[a-z0-9]+", cli("token", "add", USER).stdout).group(0)
    server = subprocess.Popen(
        [args.herald, "serve", "--listen-http", "127.0.0.1:0", "--data-dir", data,
         "--auth-default-access", "deny-all"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        port = None
        for line in server.stdout:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
                break
        if port is None:
            sys.exit("server did not start")
        asyncio.get_running_loop().run_in_executor(None, lambda: [_ for _ in server.stdout])
        print(f"herald pid {server.pid} port {port}; RSS at start {rss_kb(server.pid, 'VmRSS') // 1024} MB")

        answers = collections.Counter()
        until = time.monotonic() + args.duration
        flood = [asyncio.create_task(flooder(port, i, until, answers)) for i in range(args.flooders)]
        await asyncio.sleep(args.valid_after)
        secs, tries, last = await valid_login(port, "127.4.0.1", basic(USER, PASSWORD))
        print(f"valid password login during the flood: {secs:.2f} s, {tries} tries, answer {last}")
        t = time.monotonic()
        again = await put(port, "127.4.0.1", basic(USER, PASSWORD))
        print(f"same login repeated (remembered): {time.monotonic() - t:.3f} s, answer {again[:2]}")
        t = time.monotonic()
        by_token = await put(port, "127.4.0.2", f"Bearer {token}")
        print(f"token login during the flood: {time.monotonic() - t:.3f} s, answer {by_token[:2]}")
        await asyncio.gather(*flood)
        total = sum(answers.values())
        print(f"flood: {args.flooders} addresses x {args.duration:.0f} s, {total} requests: "
              + ", ".join(f"{k}: {v}" for k, v in sorted(answers.items(), key=str)))
        print(f"peak RSS (VmHWM) {rss_kb(server.pid, 'VmHWM') // 1024} MB")
        await asyncio.sleep(5)
        print(f"RSS 5 s after the flood {rss_kb(server.pid, 'VmRSS') // 1024} MB")
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--herald", default="target/release/herald")
    p.add_argument("-n", "--flooders", type=int, default=300)
    p.add_argument("-d", "--duration", type=float, default=10.0)
    p.add_argument("--valid-after", type=float, default=2.0, help="seconds into the flood")
    asyncio.run(main(p.parse_args()))
