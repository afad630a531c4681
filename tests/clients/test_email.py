"""E-mail both ways against real mail software.

Outgoing: herald sends `X-Email` notifications through a real SMTP server, Python's
`aiosmtpd` (the asyncio SMTP server from the aio-libs project), which records every
message it accepts; the tests assert on the delivered RFC 5322 message, on the relay
being down and coming back (every mail delivered, none twice), on a crash with mail
in the queue, and on two cluster nodes sharing one queue in Redis.

Incoming: Python's own `smtplib` (a complete SMTP client) sends plain, multipart,
HTML-only, non-UTF-8 and malformed mails to herald's SMTP server; the tests assert
on the published notifications and on the SMTP reply codes.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
import signal
import smtplib
import socket
import threading
import time
import uuid
from email.message import EmailMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from conftest import start_herald, stop_herald

FROM = "ntfy@herald.example"
BASE_URL = "https://ntfy.example.com"
DOMAIN = "ntfy.example.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Recorder:
    """aiosmtpd handler: keeps every accepted envelope; can refuse recipients."""

    def __init__(self, refuse: str | None = None):
        self.mails: list[tuple[str, list[str], bytes]] = []
        self.refuse = refuse
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.refuse and address == self.refuse:
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.mails.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 Message accepted for delivery"

    def wait(self, count: int, timeout: float = 20) -> list[tuple[str, list[str], bytes]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.mails) >= count:
                    return list(self.mails)
            time.sleep(0.05)
        with self.lock:
            return list(self.mails)


def start_relay(port: int, refuse: str | None = None) -> tuple[Controller, Recorder]:
    recorder = Recorder(refuse)
    controller = Controller(recorder, hostname="127.0.0.1", port=port)
    controller.start()
    return controller, recorder


def sender_args(port: int, *extra: str) -> list[str]:
    return [
        "--smtp-sender-addr", f"127.0.0.1:{port}",
        "--smtp-sender-from", FROM,
        "--base-url", BASE_URL,
        *extra,
    ]


def publish(server, topic: str, body: str = "hi", **headers: str) -> tuple[int, dict]:
    status, _, raw = server.request("POST", f"/{topic}", body, headers=headers)
    return status, json.loads(raw)


def parse(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def metric(server, name: str) -> float:
    _, _, body = server.request("GET", "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not found")


@pytest.fixture
def relay():
    port = free_port()
    controller, recorder = start_relay(port)
    yield port, recorder
    controller.stop()


# --- outgoing ---------------------------------------------------------------------


def test_mail_is_delivered_as_ntfy_writes_it(tmp_path, relay):
    port, recorder = relay
    server = start_herald(tmp_path / "d", sender_args(port, "--smtp-sender-tls", "none"))
    try:
        status, m = publish(
            server, "alerts", "Disk /data is at 99%",
            **{"X-Email": "phil@example.com", "Title": "Disk full", "Tags": "warning,db",
               "Priority": "high", "Click": "https://grafana.example.com/d/1"},
        )
        assert status == 200, m
        mails = recorder.wait(1)
        assert len(mails) == 1
        mail_from, rcpt, raw = mails[0]
        assert mail_from == FROM and rcpt == ["phil@example.com"]
        msg = parse(raw)
        assert msg["Subject"] == "⚠️ Disk full"
        assert msg["To"] == "phil@example.com"
        assert msg["From"].addresses[0].addr_spec == FROM
        assert msg["From"].addresses[0].display_name == "ntfy.example.com/alerts"
        assert msg["Auto-Submitted"] == "auto-generated"
        assert re.fullmatch(r"<[0-9a-z]+@herald\.example>", msg["Message-ID"])
        assert msg["Date"].datetime.timestamp() == m["time"]
        assert msg["List-Unsubscribe"] is None
        assert msg.get_content_type() == "text/plain"
        body = msg.get_content().replace("\r\n", "\n")  # CRLF on the wire
        assert body.startswith("Disk /data is at 99%\n\nTags: db\nPriority: high\n"), body
        assert "Click: https://grafana.example.com/d/1" in body
        assert f"via {BASE_URL}/alerts" in body and "sent by 127.0.0.1" in body
        # The message itself is published as usual, without the address.
        assert [x["message"] for x in server.poll("alerts")] == ["Disk /data is at 99%"]
        assert "email" not in server.poll("alerts")[0]
        assert metric(server, "herald_emails_sent_total") == 1
    finally:
        stop_herald(server.proc)


def test_json_publish_and_aliases_send_mail(tmp_path, relay):
    port, recorder = relay
    server = start_herald(tmp_path / "d", sender_args(port))
    try:
        status, _, raw = server.request(
            "POST", "/", json.dumps({"topic": "t", "message": "über JSON", "email": "a@example.com"}))
        assert status == 200, raw
        status, _, _ = server.request("GET", "/t/publish?message=via+get&e=b@example.com")
        assert status == 200
        mails = recorder.wait(2)
        assert sorted(r[1][0] for r in mails) == ["a@example.com", "b@example.com"]
        bodies = {r[1][0]: parse(r[2]).get_content() for r in mails}
        assert bodies["a@example.com"].startswith("über JSON")
        assert parse([r for r in mails if r[1][0] == "a@example.com"][0][2])["Subject"] == "über JSON"
    finally:
        stop_herald(server.proc)


def test_error_codes_as_ntfy(tmp_path, relay):
    # No relay configured: 40001.
    plain = start_herald(tmp_path / "plain")
    try:
        status, body = publish(plain, "t", **{"X-Email": "phil@example.com"})
        assert (status, body["code"]) == (400, 40001)
        _, _, cfg = plain.request("GET", "/v1/config")
        assert json.loads(cfg)["enable_emails"] is False
    finally:
        stop_herald(plain.proc)
    port, recorder = relay
    server = start_herald(
        tmp_path / "d",
        sender_args(port, "--visitor-email-limit-burst", "2",
                    "--visitor-request-limit-exempt-hosts", ""),
    )
    try:
        _, _, cfg = server.request("GET", "/v1/config")
        assert json.loads(cfg)["enable_emails"] is True
        for bad in ["phil", "phil@", "a b@example.com", "a@b,c@d", "yes"]:
            status, body = publish(server, "t", **{"X-Email": bad})
            assert (status, body["code"]) == (400, 40050), bad
        status, body = publish(server, "t", **{"X-Email": "p@example.com", "X-Delay": "1h"})
        assert (status, body["code"]) == (400, 40003)
        for i in range(2):
            status, body = publish(server, "t", f"m{i}", **{"X-Email": "p@example.com"})
            assert status == 200, body
        status, body = publish(server, "t", "m3", **{"X-Email": "p@example.com"})
        assert (status, body["code"]) == (429, 42902)
        # Without e-mail the visitor may still publish.
        assert publish(server, "t", "no mail")[0] == 200
        assert len(recorder.wait(2)) == 2
        time.sleep(0.5)
        assert len(recorder.mails) == 2
        assert metric(server, 'herald_limit_refusals_total{limit="emails"}') == 1
    finally:
        stop_herald(server.proc)


def test_relay_down_then_up_delivers_each_mail_once(tmp_path):
    port = free_port()
    server = start_herald(
        tmp_path / "d", sender_args(port, "--smtp-sender-retry-schedule", "1s,1s,1s,1s,1s,1s,1s,1s,1s,1s"))
    try:
        for i in range(5):
            status, body = publish(server, "outage", f"mail {i}", **{"X-Email": f"u{i}@example.com"})
            assert status == 200, body  # publishing never waits for the relay
        time.sleep(2.5)
        assert metric(server, "herald_email_send_retries_total") >= 5
        assert metric(server, "herald_email_queue_depth") == 5
        controller, recorder = start_relay(port)
        try:
            mails = recorder.wait(5)
            time.sleep(3)  # any duplicate would arrive within the next retries
            ids = [parse(r[2])["Message-ID"] for r in recorder.mails]
            assert len(ids) == 5 and len(set(ids)) == 5, ids
            assert sorted(r[1][0] for r in mails) == [f"u{i}@example.com" for i in range(5)]
            assert metric(server, "herald_emails_sent_total") == 5
            assert metric(server, "herald_email_queue_depth") == 0
        finally:
            controller.stop()
    finally:
        stop_herald(server.proc)


def test_queued_mail_survives_kill_9(tmp_path):
    port = free_port()
    data = tmp_path / "d"
    args = sender_args(port, "--smtp-sender-retry-schedule", "1s,1s,1s,1s,1s,1s")
    server = start_herald(data, args)
    status, _ = publish(server, "crash", "before the crash", **{"X-Email": "c@example.com"})
    assert status == 200
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(timeout=10)
    controller, recorder = start_relay(port)
    server = start_herald(data, args)
    try:
        mails = recorder.wait(1)
        assert len(mails) == 1 and parse(mails[0][2]).get_content().startswith("before the crash")
        time.sleep(1.5)
        assert len(recorder.mails) == 1
    finally:
        stop_herald(server.proc)
        controller.stop()


def test_permanent_refusal_is_given_up_and_counted(tmp_path):
    port = free_port()
    controller, recorder = start_relay(port, refuse="nobody@example.com")
    server = start_herald(tmp_path / "d", sender_args(port))
    try:
        publish(server, "t", "x", **{"X-Email": "nobody@example.com"})
        publish(server, "t", "y", **{"X-Email": "somebody@example.com"})
        assert len(recorder.wait(1)) == 1
        deadline = time.monotonic() + 10
        while metric(server, "herald_emails_sent_failed_total") < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert metric(server, "herald_emails_sent_failed_total") == 1
        assert metric(server, "herald_email_send_retries_total") == 0
    finally:
        stop_herald(server.proc)
        controller.stop()


def test_cluster_sends_each_mail_once(tmp_path, relay):
    port, recorder = relay
    # Under .ci/run's test prefix (removed after the suite), and removed here too.
    prefix = f"herald-test:suite:email-{uuid.uuid4().hex[:8]}:"
    cluster = ["--redis-url", "redis://127.0.0.1:6379/0", "--redis-key-prefix", prefix]
    a = start_herald(tmp_path / "a", sender_args(port, *cluster))
    b = start_herald(tmp_path / "b", sender_args(port, *cluster))
    try:
        for i in range(10):
            node = a if i % 2 == 0 else b
            status, body = publish(node, "clustered", f"m{i}", **{"X-Email": f"n{i}@example.com"})
            assert status == 200, body
        mails = recorder.wait(10)
        time.sleep(2.5)  # both senders poll the shared queue meanwhile
        assert len(recorder.mails) == 10, [r[1] for r in recorder.mails]
        assert sorted(r[1][0] for r in mails) == sorted(f"n{i}@example.com" for i in range(10))
        assert metric(a, "herald_emails_sent_total") + metric(b, "herald_emails_sent_total") == 10
    finally:
        stop_herald(a.proc)
        stop_herald(b.proc)
        delete_redis_keys(prefix)


def delete_redis_keys(prefix: str) -> None:
    """Deletes the test's keys (one EVAL over RESP, no client library needed)."""
    script = "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end"
    args = [b"EVAL", script.encode(), b"0", (prefix + "*").encode()]
    cmd = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
    with socket.create_connection(("127.0.0.1", 6379), timeout=5) as r:
        r.sendall(cmd)
        assert r.recv(100).startswith(b"$-1"), "cleanup failed"


# --- incoming ---------------------------------------------------------------------


def smtp_herald(tmp_path: Path, *extra: str):
    port = free_port()
    server = start_herald(tmp_path / "d", [
        "--smtp-server-listen", f"127.0.0.1:{port}",
        "--smtp-server-domain", DOMAIN,
        "--smtp-server-addr-prefix", "ntfy-",
        *extra,
    ])
    return server, port


@pytest.fixture
def inbound(tmp_path):
    server, port = smtp_herald(tmp_path)
    yield server, port
    stop_herald(server.proc)


def text_mail(subject: str, text: str) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = subject
    msg.set_content(text)
    return msg


def send(port: int, to: str, msg) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.send_message(msg, from_addr="printer@office.example", to_addrs=[to])


def test_plain_multipart_html_and_charsets_are_published(inbound):
    server, port = inbound
    send(port, f"ntfy-office@{DOMAIN}", text_mail("Toner low", "Printer 3 needs toner.\nSoon."))

    multi = MIMEMultipart("alternative")
    multi["Subject"] = "Grüße aus Köln"
    multi.attach(MIMEText("Schöner Text", "plain", "iso-8859-1"))
    multi.attach(MIMEText("<p>ignored</p>", "html", "utf-8"))
    send(port, f"ntfy-office@{DOMAIN}", multi)

    html = MIMEText("<html><body><p>Backup <b>failed</b></p></body></html>", "html", "utf-8")
    html["Subject"] = "NAS"
    send(port, f"NTFY-office@{DOMAIN.upper()}", html)

    latin = MIMEText("Prüfung bestanden", "plain", "iso-8859-1")
    latin["Subject"] = "=?iso-8859-1?q?Pr=FCfung?="
    send(port, f"ntfy-office@{DOMAIN}", latin)

    msgs = server.poll_until("office", 4)
    assert [(m.get("title"), m["message"]) for m in msgs] == [
        ("Toner low", "Printer 3 needs toner.\nSoon."),
        ("Grüße aus Köln", "Schöner Text"),
        ("NAS", "Backup failed"),
        ("Prüfung", "Prüfung bestanden"),
    ]
    assert metric(server, "herald_emails_received_total") == 4


def test_refusals_are_smtp_codes(inbound):
    server, port = inbound
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        code, text = s.ehlo("client.example")
        assert code == 250 and b"SIZE" in text
        assert s.mail("a@b.example")[0] == 250
        assert s.rcpt(f"ntfy-x@other.example")[0] == 550  # no relaying
        assert s.rcpt(f"ntfy-bad.topic@{DOMAIN}")[0] == 550
        assert s.rcpt(f"someone@{DOMAIN}")[0] == 550  # no prefix
        assert s.rcpt(f"ntfy-ok@{DOMAIN}")[0] == 250
        assert s.rcpt(f"ntfy-second@{DOMAIN}")[0] == 452
        # Malformed mail (no header at all): refused, the session goes on.
        code, _ = s.data(b"\x00\x01 just bytes, no headers")
        assert code == 554
        assert s.docmd("FOO")[0] == 500
        assert s.docmd("NOOP")[0] == 250
        assert s.docmd("X" * 5000)[0] == 500  # line too long
        assert s.docmd("DATA")[0] == 503  # no MAIL yet
        assert s.mail("a@b.example", ["SIZE=99999999"])[0] == 552
        # A mail over the size limit is read to its end and refused.
        s.mail("a@b.example")
        s.rcpt(f"ntfy-ok@{DOMAIN}")
        code, _ = s.data(b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 1100)
        assert code == 552
        assert s.noop()[0] == 250
    assert server.poll("ok") == []
    assert server.proc.poll() is None


def test_idle_client_does_not_hold_up_others(tmp_path):
    server, port = smtp_herald(tmp_path)
    try:
        idle = socket.create_connection(("127.0.0.1", port))
        assert idle.recv(100).startswith(b"220 ")
        send(port, f"ntfy-alive@{DOMAIN}", text_mail("still here", "yes"))  # another session
        assert server.poll_until("alive", 1)[0]["title"] == "still here"
        idle.close()
    finally:
        stop_herald(server.proc)


def test_token_in_address_authorizes(tmp_path):
    server, port = smtp_herald(tmp_path, "--auth-default-access", "deny-all")
    data = tmp_path / "d"
    try:
        from test_auth_clients import herald_cli
        herald_cli(data, "user", "add", "printer", password="printer-secret")
        herald_cli(data, "access", "printer", "office", "wo")
        token = re.search(r"tk_[a-z0-9]{29}", herald_cli(data, "token", "add", "printer")).group(0)
        msg = text_mail("authorized", "by token")
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
            s.ehlo()
            s.mail("p@office.example")
            assert s.rcpt(f"ntfy-office@{DOMAIN}")[0] == 550  # anonymous: deny-all
            assert s.rcpt(f"ntfy-office+tk_{'0' * 29}@{DOMAIN}")[0] == 535
            assert s.rcpt(f"ntfy-other+{token}@{DOMAIN}")[0] == 550
            assert s.rcpt(f"ntfy-office+{token}@{DOMAIN}")[0] == 250
            assert s.data(msg.as_bytes())[0] == 250
        status, _, body = server.request(
            "GET", "/office/json?poll=1", headers={"Authorization": f"Bearer {token}"})
        assert status == 403  # write-only: published, but not readable by this user
        herald_cli(data, "access", "printer", "office", "rw")
        time.sleep(0.5)
        status, _, body = server.request(
            "GET", "/office/json?poll=1", headers={"Authorization": f"Bearer {token}"})
        assert status == 200, body
        assert [json.loads(l)["title"] for l in body.decode().splitlines()] == ["authorized"]
    finally:
        stop_herald(server.proc)


def test_mail_rate_limit_per_sender(tmp_path):
    server, port = smtp_herald(
        tmp_path, "--visitor-request-limit-exempt-hosts", "", "--visitor-request-limit-burst", "2")
    try:
        codes = []
        for i in range(3):
            msg = text_mail(f"n{i}", "x")
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                s.ehlo()
                s.mail("a@b.example")
                s.rcpt(f"ntfy-limited@{DOMAIN}")
                codes.append(s.data(msg.as_bytes())[0])
        assert codes == [250, 250, 451]
    finally:
        stop_herald(server.proc)
