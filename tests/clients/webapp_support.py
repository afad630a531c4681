"""Browser plumbing shared by the web app tests: the Debian Chromium driven by
Playwright (never `playwright install`: the package's own browser download is not
used), axe-core checks, and screenshots kept as artifacts."""

from __future__ import annotations

import json
import time
import threading
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} missing: install Debian's `chromium` (.ci/run's ensure_chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def new_page(browser, base_url: str, **context_args):
    context = browser.new_context(base_url=base_url, **context_args)
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.js_errors = errors  # checked by tests: the app must not throw
    return context, page


def open_app(page, path: str = "/") -> None:
    page.goto(path)
    page.wait_for_selector("body[data-ready=true]")


def shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path


def axe_serious(page) -> list[dict]:
    """axe-core's violations of impact serious or critical on the current page."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    violations = results.response["violations"]
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in violations
        if v["impact"] in ("serious", "critical")
    ]


class JsonStream:
    """A `GET /<topic>/json` subscriber on a thread: collects message events."""

    def __init__(self, url: str, headers: dict[str, str] | None = None):
        self.messages: list[dict] = []
        self.opened = threading.Event()
        req = urllib.request.Request(url, headers=headers or {})
        self.resp = urllib.request.urlopen(req, timeout=30)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self.resp:
                ev = json.loads(line)
                if ev["event"] == "open":
                    self.opened.set()
                elif ev["event"] == "message":
                    self.messages.append(ev)
        except Exception:  # noqa: BLE001 (the stream is closed at the end of the test)
            pass

    def only_message(self, timeout: float = 10) -> dict:
        """Waits for the first message, closes the stream and returns that message,
        checking it was the only one."""
        deadline = time.monotonic() + timeout
        while not self.messages and time.monotonic() < deadline:
            time.sleep(0.05)
        self.close()
        assert len(self.messages) == 1, self.messages
        return self.messages[0]

    def close(self) -> None:
        self.resp.close()
