"""Apprise's ntfy plugin (`ntfy://host:port/topic`) publishing to a real herald.

Apprise posts JSON to the root URL (`POST /` with topic/title/message in the body) and
puts priority, tags, click, actions, delay, icon and markdown in `X-*` headers on the
same request, so herald has to merge both sources as ntfy does. Each test publishes
through `apprise.Apprise().add(url).notify(...)` and reads back with `?poll=1`.
"""

from __future__ import annotations

import time
from urllib.parse import quote

import apprise
import pytest

from conftest import assert_message_shape

APPRISE_ICON_PREFIX = "https://github.com/caronc/apprise/raw/master/apprise/assets/themes/default/"


def notify(url: str, **kwargs) -> tuple[bool, str]:
    """Sends one notification through Apprise; returns (ok, Apprise's log)."""
    apobj = apprise.Apprise()
    assert apobj.add(url), f"apprise rejected URL {url}"
    with apprise.LogCapture(level=apprise.logging.DEBUG) as log:
        ok = apobj.notify(**kwargs)
        return ok, log.getvalue()


def test_basic_publish_with_title(herald):
    ok, log = notify(f"ntfy://{herald.host}/apprise_basic", title="Backup", body="Backup successful 😀")
    assert ok, log
    [m] = herald.poll("apprise_basic")
    assert_message_shape(m, "apprise_basic")
    assert m["message"] == "Backup successful 😀"
    assert m["title"] == "Backup"
    # Apprise's default priority is "default", which it does not send at all.
    assert "priority" not in m
    # Apprise sends its theme image as X-Icon unless image=no.
    assert m["icon"].startswith(APPRISE_ICON_PREFIX), m


def test_priority_tags_click(herald):
    url = (
        f"ntfy://{herald.host}/apprise_prio"
        "?priority=max&tags=warning,skull&click=https://home.nest.com/&image=no"
    )
    ok, log = notify(url, title="Unauthorized access detected", body="Remote access detected.")
    assert ok, log
    [m] = herald.poll("apprise_prio")
    assert m["priority"] == 5
    assert sorted(m["tags"]) == ["skull", "warning"]  # Apprise sorts its tag list
    assert m["click"] == "https://home.nest.com/"
    assert m["title"] == "Unauthorized access detected"
    assert m["message"] == "Remote access detected."
    assert "icon" not in m


@pytest.mark.parametrize(
    ("apprise_priority", "wire"),
    [("min", 1), ("low", 2), ("high", 4), ("max", 5), ("5", 5), ("1", 1)],
)
def test_priority_names(herald, apprise_priority, wire):
    ok, log = notify(f"ntfy://{herald.host}/apprise_p?priority={apprise_priority}", body="p")
    assert ok, log
    [m] = herald.poll("apprise_p")
    assert m["priority"] == wire


def test_priority_filter_sees_apprise_messages(herald):
    for prio in ("low", "high", "max"):
        ok, log = notify(f"ntfy://{herald.host}/apprise_pf?priority={prio}", body=prio)
        assert ok, log
    msgs = herald.poll("apprise_pf", "priority=high,urgent")
    assert sorted(m["message"] for m in msgs) == ["high", "max"]


def test_several_topics_in_one_url(herald):
    ok, log = notify(f"ntfy://{herald.host}/apprise_t1/apprise_t2", title="T", body="to both")
    assert ok, log
    msgs = herald.poll("apprise_t1,apprise_t2")
    assert sorted(m["topic"] for m in msgs) == ["apprise_t1", "apprise_t2"]
    assert {m["message"] for m in msgs} == {"to both"}


def test_actions_header(herald):
    actions = "view, Open portal, https://home.nest.com/, clear=true; http, Turn down, https://api.nest.com/, method=PUT"
    ok, log = notify(f"ntfy://{herald.host}/apprise_act?actions={quote(actions)}", body="You left the house.")
    assert ok, log
    [m] = herald.poll("apprise_act")
    view, http = m["actions"]
    assert (view["action"], view["label"], view["url"], view["clear"]) == (
        "view",
        "Open portal",
        "https://home.nest.com/",
        True,
    )
    assert (http["action"], http["label"], http["url"], http["method"]) == (
        "http",
        "Turn down",
        "https://api.nest.com/",
        "PUT",
    )


def test_markdown_format(herald):
    ok, log = notify(f"ntfy://{herald.host}/apprise_md?format=markdown", body="**bold** _move_")
    assert ok, log
    [m] = herald.poll("apprise_md")
    assert m["content_type"] == "text/markdown"
    assert m["message"] == "**bold** _move_"


def test_delay_schedules_message(herald):
    before = int(time.time())
    ok, log = notify(f"ntfy://{herald.host}/apprise_delay?delay=30min", body="later")
    assert ok, log
    assert herald.poll("apprise_delay") == []
    [m] = herald.poll("apprise_delay", "scheduled=1")
    assert m["message"] == "later"
    assert m["time"] >= before + 29 * 60


def test_credentials_are_ignored_without_auth(herald):
    """ntfy without an auth database treats every request as anonymous and ignores
    `Authorization`; Apprise sends Basic auth for user:pass and Bearer for tk_ tokens."""
    ok, log = notify(f"ntfy://phil:secret@{herald.host}/apprise_auth", body="basic")
    assert ok, log
    ok, log = notify(f"ntfy://tk_abcdefghijklmnopqrstuvwxyz012@{herald.host}/apprise_auth", body="token")
    assert ok, log
    assert sorted(m["message"] for m in herald.poll("apprise_auth")) == ["basic", "token"]


def test_attachment_upload_gets_ntfys_no_attachments_answer(herald, tmp_path):
    """Apprise uploads attachments with `POST /<topic>?filename=...`; a server without
    attachment storage answers 400 40014, which Apprise logs and reports as failure."""
    f = tmp_path / "report.txt"
    f.write_text("nightly report\n")
    ok, log = notify(f"ntfy://{herald.host}/apprise_attach", body="see attached", attach=str(f))
    assert not ok
    assert "error=40014" in log, log
    assert herald.poll("apprise_attach") == []


@pytest.mark.parametrize("size", [5000, 9000])
def test_body_over_message_limit_is_an_attachment(herald, size):
    """ntfy's message limit is 4096 bytes; a longer message is treated as an attachment
    (400 40014 without attachment storage). At 5000 Apprise still sends JSON (the JSON
    `message` is the body, as ntfy re-dispatches it); past its 8000-byte JSON limit
    Apprise itself re-sends the text as a file upload. Both must fail the same way."""
    ok, log = notify(f"ntfy://{herald.host}/apprise_long", body="x" * size)
    assert not ok
    assert "error=40014" in log, log
    assert herald.poll("apprise_long") == []


def test_attachment_upload_is_stored_and_served(herald_files, tmp_path):
    """With attachment storage, Apprise's upload (`POST /<topic>?filename=...`, the
    file as the body, the text in `message=`) is stored and downloadable."""
    from conftest import file_path
    import urllib.request

    f = tmp_path / "report.txt"
    f.write_text("nightly report\n")
    ok, log = notify(f"ntfy://{herald_files.host}/apprise_files", body="see attached", attach=str(f))
    assert ok, log
    [m] = herald_files.poll("apprise_files")
    assert m["message"] == "see attached", m
    a = m["attachment"]
    assert a["name"] == "report.txt" and a["size"] == len("nightly report\n"), a
    assert a["type"].startswith("text/plain"), a
    with urllib.request.urlopen(herald_files.url + file_path(a["url"])) as resp:
        assert resp.read() == b"nightly report\n"
        assert 'filename="report.txt"' in resp.headers["Content-Disposition"]
