"""herald's outgoing webhooks, verified by the Python Standard Webhooks library.

A receiver (stdlib `http.server` on an ephemeral port) records each POST; the
`standardwebhooks` package (the reference implementation, as a receiver's service
would use it) must accept every signature with the secret herald returned, and must
reject a tampered body.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from conftest import start_herald, stop_herald


class _Recorder(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        type(self).received.append((headers, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def receiver():
    handler = type("Recorder", (_Recorder,), {"received": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler.received
    server.shutdown()


def test_python_standardwebhooks_verifies_herald_signatures(tmp_path, receiver):
    url, received = receiver
    server = start_herald(tmp_path / "data", ["--webhook-allow-private", "true"])
    try:
        status, _, body = server.request(
            "POST", "/v1/webhooks", json.dumps({"topic": "py-hooks", "url": url})
        )
        assert status == 201, body
        created = json.loads(body)
        secret = created["secret"]
        # The management token, shown once: the only way an anonymous client
        # manages its webhook on an open server.
        assert created["token"].startswith("whm_")
        status, _, body = server.request(
            "POST", "/py-hooks", "from python", headers={"Title": "Hello"}
        )
        assert status == 200, body
        published = json.loads(body)

        deadline = time.monotonic() + 20
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert received, "no webhook arrived"
        headers, payload = received[0]

        verified = Webhook(secret).verify(payload, headers)
        assert verified["type"] == "message"
        assert verified["data"]["id"] == published["id"]
        assert verified["data"]["message"] == "from python"
        assert verified["data"]["title"] == "Hello"
        assert headers["webhook-id"] == published["id"]

        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(payload.replace(b"python", b"pyth0n"), headers)
    finally:
        stop_herald(server.proc)
