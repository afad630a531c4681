"""Shared fixtures: a real `herald serve` process per test, and small HTTP helpers.

Every test gets its own server (own port, own temporary data dir), so tests can use
the literal topic names of ntfy's docs without seeing each other's messages.
The binary comes from `HERALD_BIN` (default: `target/debug/herald` at the repo root).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HERALD_BIN = Path(os.environ.get("HERALD_BIN", REPO_ROOT / "target" / "debug" / "herald"))
READY_RE = re.compile(r"listening on http://(\S+?)(?:\x1b|\s|$)")
# ntfy's message ID shape (12 characters of [0-9A-Za-z]).
ID_RE = re.compile(r"^[0-9A-Za-z]{12}$")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Herald:
    """A running herald server."""

    proc: subprocess.Popen
    host: str  # "127.0.0.1:PORT", as curl examples write "ntfy.sh"
    data_dir: Path
    log_lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def port(self) -> int:
        return int(self.host.rsplit(":", 1)[1])

    def log(self) -> str:
        return "".join(self.log_lines)

    # --- plain HTTP helpers (stdlib only, so they cannot mask a client's behaviour) ---

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10,
    ) -> tuple[int, dict[str, str], bytes]:
        if isinstance(body, str):
            body = body.encode()
        req = urllib.request.Request(
            self.url + path, data=body, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def poll(self, topics: str, query: str = "") -> list[dict]:
        """`GET /<topics>/json?poll=1[&query]` → the parsed message objects."""
        path = f"/{topics}/json?poll=1" + (f"&{query}" if query else "")
        status, headers, body = self.request("GET", path)
        assert status == 200, (path, status, body)
        return [json.loads(line) for line in body.decode().splitlines() if line.strip()]

    def poll_until(self, topics: str, count: int, query: str = "", timeout: float = 10) -> list[dict]:
        """Polls until at least `count` messages are there (publishes are synchronous
        in herald, but clients may send asynchronously)."""
        deadline = time.monotonic() + timeout
        while True:
            msgs = self.poll(topics, query)
            if len(msgs) >= count or time.monotonic() > deadline:
                return msgs
            time.sleep(0.1)


def start_herald(data_dir: Path, extra_args: list[str] | None = None, attempts: int = 3) -> Herald:
    if not HERALD_BIN.exists():
        pytest.fail(f"herald binary not found at {HERALD_BIN}; run `cargo build` or set HERALD_BIN")
    last_log = ""
    for _ in range(attempts):
        port = _free_port()
        env = dict(os.environ, NO_COLOR="1")
        # The tests publish and subscribe from loopback in bursts: exempt it from
        # the visitor rate limits (ntfy's defaults: 60 requests, then one per 5 s).
        env.setdefault("HERALD_VISITOR_REQUEST_LIMIT_EXEMPT_HOSTS", "127.0.0.0/8,::1")
        env.pop("RUST_LOG", None)
        proc = subprocess.Popen(
            [
                str(HERALD_BIN),
                "serve",
                "--listen-http",
                f"127.0.0.1:{port}",
                "--data-dir",
                str(data_dir),
                "--shutdown-timeout",
                "2s",
                *(extra_args or []),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        lines: list[str] = []
        ready = threading.Event()
        found: list[str] = []

        def drain(stream=proc.stderr, lines=lines, ready=ready, found=found) -> None:
            for line in stream:
                lines.append(line)
                if not ready.is_set():
                    m = READY_RE.search(line)
                    if m:
                        found.append(m.group(1))
                        ready.set()
            ready.set()  # EOF: the process ended

        threading.Thread(target=drain, daemon=True).start()
        ready.wait(timeout=30)
        if found and proc.poll() is None:
            return Herald(proc=proc, host=found[0], data_dir=data_dir, log_lines=lines)
        stop_herald(proc)
        last_log = "".join(lines)
    pytest.fail(f"herald did not report `listening on` (last attempt's log):\n{last_log}")


def stop_herald(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture
def herald(tmp_path: Path, request: pytest.FixtureRequest):
    server = start_herald(tmp_path / "herald-data")
    yield server
    stop_herald(server.proc)
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(f"\n--- herald log ({server.url}) ---\n{server.log()}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    if rep.when == "call":
        item.rep_call = rep
    return rep


def assert_message_shape(m: dict, topic: str | None = None) -> None:
    """The fields every stored `message` event has on ntfy's wire."""
    assert m["event"] == "message", m
    assert ID_RE.match(m["id"]), m
    assert isinstance(m["time"], int), m
    assert isinstance(m.get("expires"), int) and m["expires"] > m["time"], m
    if topic is not None:
        assert m["topic"] == topic, m
    assert isinstance(m["message"], str) and m["message"], m


FILES_BASE_URL = "http://herald.test"


@pytest.fixture
def herald_files(tmp_path: Path, request: pytest.FixtureRequest):
    """A herald that stores attachments (`attachment-cache-dir`, `base-url`); a file's
    `url` is under FILES_BASE_URL, fetch it with `herald_files.url + file_path(url)`."""
    server = start_herald(
        tmp_path / "herald-data",
        ["--base-url", FILES_BASE_URL, "--attachment-cache-dir", str(tmp_path / "files")],
    )
    yield server
    stop_herald(server.proc)
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(f"\n--- herald log ({server.url}) ---\n{server.log()}")


def file_path(url: str) -> str:
    assert url.startswith(FILES_BASE_URL + "/file/"), url
    return url[len(FILES_BASE_URL):]

# The web app tests' Chromium (one per session, shared by test_webapp.py and
# test_webpush.py): defined in webapp_support.
from webapp_support import browser  # noqa: E402,F401
