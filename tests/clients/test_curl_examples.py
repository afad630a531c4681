"""The curl examples of ntfy's own docs, run literally against herald.

Sources: binwiederhier/ntfy `docs/publish.md` and `docs/subscribe/api.md`. Each snippet
below is copied from those pages as written there (marked "derived" where the docs only
describe the form in prose or a table). The only change is the server: `https://ntfy.sh`
becomes `http://127.0.0.1:PORT` and `ntfy.sh` becomes `127.0.0.1:PORT`. The snippets run
through `bash -c`, so quoting, line continuations and shell variables behave exactly as
for a user pasting them into a terminal.

The HTTP status of every curl call is captured without touching the command: a private
`.curlrc` (via `CURL_HOME`) adds `--silent --show-error --max-time` and a `--write-out`
line with `%{http_code}`.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import pytest

from conftest import ID_RE, Herald, assert_message_shape

STATUS_MARK = "__HTTP_STATUS__"


@pytest.fixture
def curl_env(tmp_path: Path) -> dict[str, str]:
    """Environment whose `.curlrc` reports each call's status after its body."""
    home = tmp_path / "curlhome"
    home.mkdir()
    (home / ".curlrc").write_text(
        "silent\nshow-error\nmax-time = 15\n"
        f'write-out = "\\n{STATUS_MARK} %{{http_code}}\\n"\n'
    )
    env = dict(os.environ, CURL_HOME=str(home))
    env.pop("http_proxy", None)
    env.pop("HTTP_PROXY", None)
    env.pop("all_proxy", None)
    return env


@pytest.fixture
def stream_env(tmp_path: Path) -> dict[str, str]:
    """Environment for long-lived subscriptions: no write-out, a safety timeout."""
    home = tmp_path / "curlstream"
    home.mkdir()
    (home / ".curlrc").write_text("silent\nshow-error\nno-buffer\nmax-time = 30\n")
    return dict(os.environ, CURL_HOME=str(home))


def localize(snippet: str, herald: Herald) -> str:
    """Points a snippet at herald. Snippets are kept indented as in the docs' Markdown
    code blocks; dedent gives what a reader copies from the rendered page."""
    snippet = textwrap.dedent(snippet).strip("\n")
    return snippet.replace("https://ntfy.sh", herald.url).replace("ntfy.sh", herald.host)


def sh(herald: Herald, env: dict[str, str], snippet: str, cwd: Path | None = None) -> list[tuple[int, str]]:
    """Runs a docs snippet; returns (status, body) for each curl call in it."""
    proc = subprocess.run(
        ["bash", "-c", localize(snippet, herald)],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, (snippet, proc.returncode, proc.stdout, proc.stderr)
    results = []
    body_lines: list[str] = []
    for line in proc.stdout.split("\n"):
        if line.startswith(STATUS_MARK):
            results.append((int(line.split()[1]), "\n".join(body_lines).strip("\n")))
            body_lines = []
        else:
            body_lines.append(line)
    return results


def ok_json(result: tuple[int, str]) -> dict:
    status, body = result
    assert status == 200, result
    return json.loads(body)


def error_json(result: tuple[int, str], status: int, code: int) -> dict:
    got_status, body = result
    assert got_status == status, result
    err = json.loads(body)
    assert err["code"] == code and err["http"] == status, err
    assert isinstance(err["error"], str) and err["error"], err
    return err


class Stream:
    """A long-lived `curl` subscription from the docs, read line by line."""

    def __init__(self, herald: Herald, env: dict[str, str], snippet: str) -> None:
        self.proc = subprocess.Popen(
            ["bash", "-c", "exec " + localize(snippet, herald)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next_lines(self, n: int, timeout: float = 10) -> list[str]:
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"stream gave {out!r} after {timeout}s; before: {self.seen!r}") from None
            if line is None:
                raise AssertionError(f"stream ended; got {self.seen + out!r}; stderr: {self.proc.stderr.read()}")
            out.append(line)
        self.seen += out
        return out

    def json_events(self, n: int, timeout: float = 10) -> list[dict]:
        return [json.loads(line) for line in self.next_lines(n, timeout)]

    def quiet_for(self, seconds: float) -> list[str]:
        """Lines that arrive within `seconds` (expected: none)."""
        out = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            out.append(line)
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=5)


@pytest.fixture
def stream(herald, stream_env):
    opened: list[Stream] = []

    def start(snippet: str) -> Stream:
        s = Stream(herald, stream_env, snippet)
        opened.append(s)
        return s

    yield start
    for s in opened:
        s.close()


# ---------------------------------------------------------------------------------
# Publishing (docs/publish.md)
# ---------------------------------------------------------------------------------


def test_simple_publish(herald, curl_env):
    [res] = sh(herald, curl_env, 'curl -d "Backup successful 😀" ntfy.sh/mytopic')
    m = ok_json(res)
    assert_message_shape(m, "mytopic")
    assert m["message"] == "Backup successful 😀"
    assert "sequence_id" not in m  # omitted when equal to id
    assert herald.poll("mytopic") == [m]


def test_publish_title_priority_tags(herald, curl_env):
    snippet = """
    curl \\
      -H "Title: Unauthorized access detected" \\
      -H "Priority: urgent" \\
      -H "Tags: warning,skull" \\
      -d "Remote access to phils-laptop detected. Act right away." \\
      ntfy.sh/phil_alerts
    """
    m = ok_json(sh(herald, curl_env, snippet)[0])
    assert_message_shape(m, "phil_alerts")
    assert m["title"] == "Unauthorized access detected"
    assert m["priority"] == 5
    assert m["tags"] == ["warning", "skull"]
    assert m["message"] == "Remote access to phils-laptop detected. Act right away."
    # Key order of ntfy's struct (docs example: id, time, expires, event, topic, title, message, priority, tags).
    keys = list(m)
    assert keys[:5] == ["id", "time", "expires", "event", "topic"], keys


def test_multiline_doorbell_with_email_is_refused_without_smtp(herald, curl_env):
    """The docs' doorbell example asks for an e-mail copy; ntfy without SMTP answers
    400 40001 'e-mail notifications are not enabled' and stores nothing."""
    snippet = """
    curl \\
      -H "Click: https://home.nest.com/" \\
      -H "Attach: https://nest.com/view/yAxkasd.jpg" \\
      -H "Actions: http, Open door, https://api.nest.com/open/yAxkasd, clear=true" \\
      -H "Email: phil@example.com" \\
      -d "There's someone at the door. 🐶
   
    Please check if it's a good boy or a hooman. 
    Doggies have been known to ring the doorbell." \\
      ntfy.sh/mydoorbell
    """
    error_json(sh(herald, curl_env, snippet)[0], 400, 40001)
    assert herald.poll("mydoorbell") == []


def test_multiline_doorbell_without_email(herald, curl_env):
    """Same example minus the e-mail header: multi-line body, click, external attachment, action."""
    snippet = """
    curl \\
      -H "Click: https://home.nest.com/" \\
      -H "Attach: https://nest.com/view/yAxkasd.jpg" \\
      -H "Actions: http, Open door, https://api.nest.com/open/yAxkasd, clear=true" \\
      -d "There's someone at the door. 🐶
   
    Please check if it's a good boy or a hooman. 
    Doggies have been known to ring the doorbell." \\
      ntfy.sh/mydoorbell
    """
    m = ok_json(sh(herald, curl_env, snippet)[0])
    # ntfy trims the body as a whole (the trailing space after 'hooman.' stays).
    assert m["message"] == (
        "There's someone at the door. 🐶\n\nPlease check if it's a good boy or a hooman. \n"
        "Doggies have been known to ring the doorbell."
    )
    assert m["click"] == "https://home.nest.com/"
    assert m["attachment"]["url"] == "https://nest.com/view/yAxkasd.jpg"
    assert m["attachment"]["name"] == "yAxkasd.jpg"
    [a] = m["actions"]
    assert (a["action"], a["label"], a["url"], a["method"], a["clear"]) == (
        "http",
        "Open door",
        "https://api.nest.com/open/yAxkasd",
        "POST",
        True,
    )
    assert herald.poll("mydoorbell") == [m]


def test_title_header_aliases(herald, curl_env):
    snippet = """
    curl -H "X-Title: Dogs are better than cats" -d "Oh my ..." ntfy.sh/controversial
    curl -H "Title: Dogs are better than cats" -d "Oh my ..." ntfy.sh/controversial
    curl -H "t: Dogs are better than cats" -d "Oh my ..." ntfy.sh/controversial
    """
    results = sh(herald, curl_env, snippet)
    assert len(results) == 3
    for r in results:
        m = ok_json(r)
        assert (m["title"], m["message"]) == ("Dogs are better than cats", "Oh my ...")
    assert len(herald.poll("controversial")) == 3


def test_title_as_query_parameter(herald, curl_env):
    """Derived: docs' parameter list ("must be lowercase when used as query parameters")."""
    snippet = 'curl -d "Oh my ..." "ntfy.sh/controversial?title=Dogs+are+better+than+cats&priority=high&tags=dog,cat"'
    m = ok_json(sh(herald, curl_env, snippet)[0])
    assert (m["title"], m["priority"], m["tags"]) == ("Dogs are better than cats", 4, ["dog", "cat"])


def test_rfc2047_encoded_title(herald, curl_env):
    """The docs' info box: any header may be RFC 2047 encoded (base64 or quoted-printable)."""
    snippet = """
    curl -H "Title: =?UTF-8?B?8J+HqfCfh6o=?=" -d "base64" ntfy.sh/encoded
    curl -H "Title: =?UTF-8?Q?=C3=84pfel?=" -d "quoted-printable" ntfy.sh/encoded
    """
    b64, qp = (ok_json(r) for r in sh(herald, curl_env, snippet))
    assert b64["title"] == "🇩🇪"
    assert qp["title"] == "Äpfel"


def test_priority_aliases(herald, curl_env):
    snippet = """
    curl -H "X-Priority: 5" -d "An urgent message" ntfy.sh/phil_alerts
    curl -H "Priority: low" -d "Low priority message" ntfy.sh/phil_alerts
    curl -H p:4 -d "A high priority message" ntfy.sh/phil_alerts
    """
    assert [ok_json(r)["priority"] for r in sh(herald, curl_env, snippet)] == [5, 2, 4]
    assert [m["priority"] for m in herald.poll("phil_alerts")] == [5, 2, 4]


def test_invalid_priority(herald, curl_env):
    """Derived: an unknown priority name is ntfy's 400 40007."""
    [res] = sh(herald, curl_env, 'curl -H "Priority: extreme" -d "x" ntfy.sh/phil_alerts')
    error_json(res, 400, 40007)


def test_tags_aliases(herald, curl_env):
    snippet = """
    curl -H "X-Tags: warning,mailsrv13,daily-backup" -d "Backup of mailsrv13 failed" ntfy.sh/backups
    curl -H "Tags: horse,unicorn" -d "Unicorns are just horses with unique horns" ntfy.sh/backups
    curl -H ta:dog -d "Dogs are awesome" ntfy.sh/backups
    """
    tags = [ok_json(r)["tags"] for r in sh(herald, curl_env, snippet)]
    assert tags == [["warning", "mailsrv13", "daily-backup"], ["horse", "unicorn"], ["dog"]]


def test_markdown(herald, curl_env):
    snippet = 'curl -H "Markdown: yes" -d "Look ma, **bold text**, *italics*, ..." ntfy.sh/mytopic'
    m = ok_json(sh(herald, curl_env, snippet)[0])
    assert m["content_type"] == "text/markdown"


def test_click_action(herald, curl_env):
    snippet = """
    curl \\
        -d "New messages on Reddit" \\
        -H "Click: https://www.reddit.com/message/messages" \\
        ntfy.sh/reddit_alerts
    """
    m = ok_json(sh(herald, curl_env, snippet)[0])
    assert m["click"] == "https://www.reddit.com/message/messages"


def test_scheduled_delivery(herald, curl_env):
    snippet = """
    curl -H "At: tomorrow, 10am" -d "Good morning" ntfy.sh/hello
    curl -H "In: 30min" -d "It's 30 minutes later now" ntfy.sh/reminder
    curl -H "Delay: 1639194738" -d "Unix timestamps are awesome" ntfy.sh/itsaunixsystem
    """
    now = time.time()
    at, in_, past = sh(herald, curl_env, snippet)

    good_morning = ok_json(at)
    local = time.localtime(good_morning["time"])
    assert (local.tm_hour, local.tm_min) == (10, 0), local
    assert now + 10 * 3600 - 60 <= good_morning["time"] <= now + 34 * 3600 + 60
    assert good_morning["expires"] > good_morning["time"]

    later = ok_json(in_)
    assert abs(later["time"] - (now + 1800)) <= 5, later

    # 1639194738 is December 2021: in the past, so ntfy refuses it (can't parse / too small).
    status, body = past
    assert status == 400, past
    assert json.loads(body)["code"] in (40004, 40005), past

    # Scheduled messages are hidden from subscribers unless they ask for them.
    assert herald.poll("hello") == []
    assert herald.poll("reminder") == []
    assert [m["id"] for m in herald.poll("hello", "sched=1")] == [good_morning["id"]]
    assert [m["id"] for m in herald.poll("reminder", "scheduled=1")] == [later["id"]]


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("30m", 1800), ("2 hours", 7200), ("1 day", 86400), ("1h", 3600), ("2 days", 2 * 86400)],
)
def test_delay_forms_from_docs_table(herald, curl_env, header, seconds):
    """Derived: the docs' table of Delay/At/In values (`30m`, `2 hours`, `1 day`, ...)."""
    now = time.time()
    m = ok_json(sh(herald, curl_env, f'curl -H "Delay: {header}" -d "later" ntfy.sh/delayed')[0])
    assert abs(m["time"] - (now + seconds)) <= 5, m


@pytest.mark.parametrize(("header", "code"), [("5s", 40005), ("4 days", 40006), ("whenever", 40004)])
def test_delay_limits(herald, curl_env, header, code):
    """Derived: docs say the minimum delay is 10 seconds and the maximum 3 days."""
    [res] = sh(herald, curl_env, f'curl -H "Delay: {header}" -d "x" ntfy.sh/delayed')
    error_json(res, 400, code)


def test_no_cache(herald, curl_env):
    snippet = """
    curl -H "X-Cache: no" -d "This message won't be stored server-side" ntfy.sh/mytopic
    curl -H "Cache: no" -d "This message won't be stored server-side" ntfy.sh/mytopic
    """
    for r in sh(herald, curl_env, snippet):
        m = ok_json(r)
        assert "expires" not in m, m
        assert m["message"] == "This message won't be stored server-side"
    assert herald.poll("mytopic") == []


def test_no_firebase(herald, curl_env):
    snippet = """
    curl -H "X-Firebase: no" -d "This message won't be forwarded to FCM" ntfy.sh/mytopic
    curl -H "Firebase: no" -d "This message won't be forwarded to FCM" ntfy.sh/mytopic
    """
    for r in sh(herald, curl_env, snippet):
        assert ok_json(r)["message"] == "This message won't be forwarded to FCM"
    assert len(herald.poll("mytopic")) == 2


def test_webhook_trigger(herald, curl_env):
    [res] = sh(herald, curl_env, "curl ntfy.sh/mywebhook/trigger")
    m = ok_json(res)
    assert_message_shape(m, "mywebhook")
    assert m["message"] == "triggered"


def test_webhook_publish_with_params(herald, curl_env):
    snippet = 'curl "ntfy.sh/mywebhook/publish?message=Webhook+triggered&priority=high&tags=warning,skull"'
    m = ok_json(sh(herald, curl_env, snippet)[0])
    assert (m["message"], m["priority"], m["tags"]) == ("Webhook triggered", 4, ["warning", "skull"])
    assert herald.poll("mywebhook") == [m]


def test_publish_as_json(herald, curl_env):
    snippet = """
    curl ntfy.sh \\
      -d '{
        "topic": "mytopic",
        "message": "Disk space is low at 5.1 GB",
        "title": "Low disk space alert",
        "tags": ["warning","cd"],
        "priority": 4,
        "attach": "https://filesrv.lan/space.jpg",
        "filename": "diskspace.jpg",
        "click": "https://homecamera.lan/xasds1h2xsSsa/",
        "actions": [{ "action": "view", "label": "Admin panel", "url": "https://filesrv.lan/admin" }]
      }'
    """
    m = ok_json(sh(herald, curl_env, snippet)[0])
    assert_message_shape(m, "mytopic")
    assert m["message"] == "Disk space is low at 5.1 GB"
    assert m["title"] == "Low disk space alert"
    assert m["tags"] == ["warning", "cd"]
    assert m["priority"] == 4
    assert m["click"] == "https://homecamera.lan/xasds1h2xsSsa/"
    assert m["attachment"]["name"] == "diskspace.jpg"
    assert m["attachment"]["url"] == "https://filesrv.lan/space.jpg"
    [a] = m["actions"]
    assert (a["action"], a["label"], a["url"], a["clear"]) == ("view", "Admin panel", "https://filesrv.lan/admin", False)
    assert isinstance(a["id"], str) and a["id"], a
    assert herald.poll("mytopic") == [m]


def test_publish_as_json_to_topic_url_is_plain_text(herald, curl_env):
    """The docs warn: JSON must go to the root URL; POSTed to the topic it is just text."""
    body = '{"topic":"mytopic","message":"hi"}'
    m = ok_json(sh(herald, curl_env, f"curl ntfy.sh/mytopic -d '{body}'")[0])
    assert m["message"] == body


def test_publish_as_json_errors(herald, curl_env):
    """Derived: bad JSON is 40024, a missing/invalid topic 40009."""
    bad, no_topic = sh(
        herald,
        curl_env,
        """
        curl ntfy.sh -d '{"topic": "mytopic", "message": '
        curl ntfy.sh -d '{"message": "no topic"}'
        """,
    )
    error_json(bad, 400, 40024)
    error_json(no_topic, 400, 40009)


def test_actions_header_view_and_http(herald, curl_env):
    snippet = """
    body='{"temperature": 65}'
    curl \\
        -d "You left the house. Turn down the A/C?" \\
        -H "Actions: view, Open portal, https://home.nest.com/, clear=true; \\
                     http, Turn down, https://api.nest.com/, body='$body'" \\
        ntfy.sh/myhome
    """
    m = ok_json(sh(herald, curl_env, snippet)[0])
    view, http = m["actions"]
    assert (view["action"], view["label"], view["url"], view["clear"]) == (
        "view",
        "Open portal",
        "https://home.nest.com/",
        True,
    )
    assert (http["action"], http["label"], http["url"], http["method"], http["body"], http["clear"]) == (
        "http",
        "Turn down",
        "https://api.nest.com/",
        "POST",
        '{"temperature": 65}',
        False,
    )
    assert view["id"] != http["id"]


def test_actions_json_array(herald, curl_env):
    snippet = """
    curl ntfy.sh \\
      -d '{
        "topic": "myhome",
        "message": "You left the house. Turn down the A/C?",
        "actions": [
          {
            "action": "view",
            "label": "Open portal",
            "url": "https://home.nest.com/",
            "clear": true
          },
          {
            "action": "http",
            "label": "Turn down",
            "url": "https://api.nest.com/",
            "body": "{\\"temperature\\": 65}"
          }
        ]
      }'
    """
    m = ok_json(sh(herald, curl_env, snippet)[0])
    view, http = m["actions"]
    assert (view["action"], view["clear"]) == ("view", True)
    assert (http["action"], http["method"], http["body"]) == ("http", "POST", '{"temperature": 65}')


def test_view_action_twitter(herald, curl_env):
    snippet = """
    curl \\
        -d "Somebody retweeted your tweet." \\
        -H "Actions: view, Open Twitter, https://twitter.com/binwiederhier/status/1467633927951163392" \\
    ntfy.sh/myhome
    """
    [a] = ok_json(sh(herald, curl_env, snippet)[0])["actions"]
    assert (a["action"], a["label"], a["url"]) == (
        "view",
        "Open Twitter",
        "https://twitter.com/binwiederhier/status/1467633927951163392",
    )


def test_broadcast_action(herald, curl_env):
    snippet = """
    curl \\
        -d "Your wife requested you send a picture of yourself." \\
        -H "Actions: broadcast, Take picture, extras.cmd=pic, extras.camera=front" \\
    ntfy.sh/wifey
    """
    [a] = ok_json(sh(herald, curl_env, snippet)[0])["actions"]
    assert (a["action"], a["label"], a["extras"]) == ("broadcast", "Take picture", {"cmd": "pic", "camera": "front"})


def test_too_many_actions(herald, curl_env):
    """Derived: at most three actions; a fourth is ntfy's 400 40018."""
    actions = "; ".join(f"view, Button {i}, https://example.com/{i}" for i in range(4))
    [res] = sh(herald, curl_env, f'curl -H "Actions: {actions}" -d "x" ntfy.sh/myhome')
    error_json(res, 400, 40018)


def test_attachment_upload_not_allowed(herald, curl_env, tmp_path):
    """herald stores no attachments, which is ntfy without `attachment-cache-dir`:
    the docs' upload example gets ntfy's own 400 40014 'attachments not allowed'."""
    (tmp_path / "flower.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 8)
    snippet = """
    curl \\
        -T flower.jpg \\
        -H "Filename: flower.jpg" \\
        ntfy.sh/flowers
    """
    err = error_json(sh(herald, curl_env, snippet, cwd=tmp_path)[0], 400, 40014)
    assert err["error"] == "invalid request: attachments not allowed"
    assert herald.poll("flowers") == []


def test_large_text_body_is_an_attachment(herald, curl_env, tmp_path):
    """Derived: a body over the 4096-byte message limit is an attachment (ntfy: 40014 without storage)."""
    (tmp_path / "big.txt").write_text("a" * 5000)
    [res] = sh(herald, curl_env, "curl --data-binary @big.txt -X PUT ntfy.sh/mytopic", cwd=tmp_path)
    error_json(res, 400, 40014)


def test_disallowed_and_invalid_topics(herald, curl_env):
    """Derived: reserved names are 40010; an invalid name is not a topic route (404 40401)."""
    docs, bad = sh(
        herald,
        curl_env,
        """
        curl -d "hi" ntfy.sh/docs
        curl -d "hi" "ntfy.sh/bad.topic"
        """,
    )
    error_json(docs, 400, 40010)
    error_json(bad, 404, 40401)


def test_health(herald, curl_env):
    """docs/config.md "Health checks": `curl https://ntfy.sh/v1/health`."""
    [res] = sh(herald, curl_env, "curl https://ntfy.sh/v1/health")
    assert ok_json(res)["healthy"] is True


# ---------------------------------------------------------------------------------
# Subscribing (docs/subscribe/api.md)
# ---------------------------------------------------------------------------------


def test_subscribe_json_stream(herald, curl_env, stream):
    s = stream("curl -s ntfy.sh/disk-alerts/json")
    [opened] = s.json_events(1)
    assert opened["event"] == "open" and opened["topic"] == "disk-alerts"
    assert ID_RE.match(opened["id"]) and isinstance(opened["time"], int)
    assert "expires" not in opened

    sent = ok_json(sh(herald, curl_env, 'curl -d "Disk full" ntfy.sh/disk-alerts')[0])
    [got] = s.json_events(1)
    assert got == sent


def test_subscribe_sse_stream(herald, curl_env, stream):
    s = stream("curl -s ntfy.sh/mytopic/sse")
    event, data, blank = s.next_lines(3)
    assert event == "event: open"
    assert data.startswith("data: ")
    opened = json.loads(data.removeprefix("data: "))
    assert (opened["event"], opened["topic"]) == ("open", "mytopic")
    assert blank == ""

    sent = ok_json(sh(herald, curl_env, 'curl -d "Hi!" ntfy.sh/mytopic')[0])
    data, blank = s.next_lines(2)
    # `message` events have no `event:` line in ntfy's SSE framing.
    assert data.startswith("data: "), data
    assert json.loads(data.removeprefix("data: ")) == sent
    assert blank == ""


def test_subscribe_raw_stream(herald, curl_env, stream):
    s = stream("curl -s ntfy.sh/disk-alerts/raw")
    assert s.next_lines(1) == [""]  # the open event is an empty line
    sh(herald, curl_env, 'curl -H "Title: ignored" -d "Disk full" ntfy.sh/disk-alerts')
    assert s.next_lines(1) == ["Disk full"]
    # Multi-line messages are one line on /raw.
    sh(herald, curl_env, "curl -d $'line one\\nline two' ntfy.sh/disk-alerts")
    assert s.next_lines(1) == ["line one line two"]


def test_subscribe_multiple_topics(herald, curl_env, stream):
    s = stream("curl -s ntfy.sh/mytopic1,mytopic2/json")
    [opened] = s.json_events(1)
    assert (opened["event"], opened["topic"]) == ("open", "mytopic1,mytopic2")
    sh(
        herald,
        curl_env,
        """
        curl -d "for topic 1" ntfy.sh/mytopic1
        curl -d "for topic 2" ntfy.sh/mytopic2
        curl -d "for topic 3" ntfy.sh/mytopic3
        """,
    )
    got = s.json_events(2)
    assert sorted((m["topic"], m["message"]) for m in got) == [
        ("mytopic1", "for topic 1"),
        ("mytopic2", "for topic 2"),
    ]
    assert s.quiet_for(0.5) == []


def test_stream_with_since_replays_then_follows(herald, curl_env, stream):
    earlier = ok_json(sh(herald, curl_env, 'curl -d "before" ntfy.sh/mytopic')[0])
    s = stream('curl -s "ntfy.sh/mytopic/json?since=10m"')
    opened, replayed = s.json_events(2)
    assert opened["event"] == "open"
    assert replayed == earlier
    live = ok_json(sh(herald, curl_env, 'curl -d "after" ntfy.sh/mytopic')[0])
    assert s.json_events(1) == [live]


def test_stream_without_since_has_no_backlog(herald, curl_env, stream):
    sh(herald, curl_env, 'curl -d "old news" ntfy.sh/mytopic')
    s = stream("curl -s ntfy.sh/mytopic/json")
    assert s.json_events(1)[0]["event"] == "open"
    assert s.quiet_for(0.5) == []


def test_poll(herald, curl_env):
    sent = [ok_json(r) for r in sh(herald, curl_env, 'curl -d "one" ntfy.sh/mytopic\ncurl -d "two" ntfy.sh/mytopic')]
    [res] = sh(herald, curl_env, 'curl -s "ntfy.sh/mytopic/json?poll=1"')
    status, body = res
    assert status == 200
    # poll=1: no open event, the cached messages, then the response ends.
    assert [json.loads(line) for line in body.splitlines()] == sent


def test_poll_since_forms(herald, curl_env):
    first, second = (
        ok_json(r)
        for r in sh(herald, curl_env, 'curl -d "first" ntfy.sh/mytopic\ncurl -d "second" ntfy.sh/mytopic')
    )

    def poll(q: str) -> list[str]:
        [(status, body)] = sh(herald, curl_env, f'curl -s "ntfy.sh/mytopic/json?poll=1&{q}"')
        assert status == 200, (q, status, body)
        return [json.loads(line)["message"] for line in body.splitlines()]

    assert poll("since=all") == ["first", "second"]
    assert poll("since=10m") == ["first", "second"]
    assert poll("since=1645970742") == ["first", "second"]
    assert poll(f"since={first['id']}") == ["second"]
    assert poll(f"since={second['id']}") == []
    assert poll("since=none") == []
    assert poll("since=latest") == ["second"]
    [(status, body)] = sh(herald, curl_env, 'curl -s "ntfy.sh/mytopic/json?poll=1&since=1d"')
    error_json((status, body), 400, 40008)


def test_since_unknown_message_id_returns_all(herald, curl_env):
    """docs: `curl -s "ntfy.sh/mytopic/json?since=nFS3knfcQ1xe"`. nFS3knfcQ1xe is not a
    message of this server; ntfy then returns every cached message (its test
    TestServer_PollSinceID_IDDoesNotMatch)."""
    sh(herald, curl_env, 'curl -d "first" ntfy.sh/mytopic\ncurl -d "second" ntfy.sh/mytopic')
    [(status, body)] = sh(herald, curl_env, 'curl -s "ntfy.sh/mytopic/json?poll=1&since=nFS3knfcQ1xe"')
    assert status == 200
    assert [json.loads(line)["message"] for line in body.splitlines()] == ["first", "second"]


def test_poll_scheduled(herald, curl_env):
    sh(herald, curl_env, 'curl -H "In: 30min" -d "later" ntfy.sh/mytopic\ncurl -d "now" ntfy.sh/mytopic')
    [(_, plain)] = sh(herald, curl_env, 'curl -s "ntfy.sh/mytopic/json?poll=1"')
    [(_, sched)] = sh(herald, curl_env, 'curl -s "ntfy.sh/mytopic/json?poll=1&sched=1"')
    assert [json.loads(line)["message"] for line in plain.splitlines()] == ["now"]
    assert sorted(json.loads(line)["message"] for line in sched.splitlines()) == ["later", "now"]


def test_filter_stream_priority_and_tags(herald, curl_env, stream):
    s = stream('curl "ntfy.sh/alerts/json?priority=high&tags=zfs-error"')
    assert s.json_events(1)[0]["event"] == "open"
    sh(
        herald,
        curl_env,
        """
        curl -H "Priority: low" -H "Tags: zfs-error" -d "low prio" ntfy.sh/alerts
        curl -H "Priority: high" -H "Tags: error" -d "wrong tag" ntfy.sh/alerts
        curl -H "Priority: high" -H "Tags: error,zfs-error" -d "ZFS pool corruption detected" ntfy.sh/alerts
        """,
    )
    [m] = s.json_events(1)
    assert (m["priority"], m["tags"], m["message"]) == (4, ["error", "zfs-error"], "ZFS pool corruption detected")
    assert s.quiet_for(0.5) == []


def test_filter_table_examples(herald, curl_env):
    sent = [
        ok_json(r)
        for r in sh(
            herald,
            curl_env,
            """
            curl -d "lalala" ntfy.sh/mytopic
            curl -H "Title: some title" -d "titled" ntfy.sh/mytopic
            curl -H "Priority: urgent" -H "Tags: error,alert,disk" -d "urgent" ntfy.sh/mytopic
            curl -H "Priority: high" -H "Tags: error" -d "high" ntfy.sh/mytopic
            curl -d "default" ntfy.sh/mytopic
            """,
        )
    ]

    def poll(q: str) -> list[str]:
        [(status, body)] = sh(herald, curl_env, f'curl -s "ntfy.sh/mytopic/json?poll=1&{q}"')
        assert status == 200, (q, status, body)
        return [json.loads(line)["message"] for line in body.splitlines()]

    assert poll(f"id={sent[1]['id']}") == ["titled"]
    assert poll("message=lalala") == ["lalala"]
    assert poll("title=some+title") == ["titled"]
    assert poll("p=high,urgent") == ["urgent", "high"]
    assert poll("tags=error,alert") == ["urgent"]
    # A message without priority counts as priority 3.
    assert poll("priority=3") == ["lalala", "titled", "default"]


def test_subscribe_bad_since_and_priority(herald, curl_env):
    bad_since, bad_prio = sh(
        herald,
        curl_env,
        """
        curl -s "ntfy.sh/mytopic/json?poll=1&since=yesterday"
        curl -s "ntfy.sh/mytopic/json?poll=1&priority=extreme"
        """,
    )
    error_json(bad_since, 400, 40008)
    error_json(bad_prio, 400, 40007)
