"""aiontfy (the async ntfy client used by Home Assistant) against a real herald.

aiontfy publishes with JSON to the root URL (`POST /` with every model field, `null`s
included), subscribes over WebSocket (`GET /<topics>/auth`, then `/<topics>/ws`), and
parses every answer into its own dataclass models. A model that fails to parse raises,
so each test here is also a check that herald's JSON has the shape ntfy clients expect.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from contextlib import asynccontextmanager

import pytest

aiontfy = pytest.importorskip("aiontfy", reason="aiontfy needs Python >= 3.12")

from aiontfy import (  # noqa: E402
    Account,
    BroadcastAction,
    Event,
    HttpAction,
    Message,
    Notification,
    Ntfy,
    Priority,
    Stats,
    ViewAction,
)
from aiontfy.exceptions import (  # noqa: E402
    NtfyBadRequestAttachmentsDisallowedError,
    NtfyBadRequestTopicDisallowedError,
    NtfyBadRequestTopicInvalidError,
)
from yarl import URL  # noqa: E402

from conftest import ID_RE, assert_message_shape  # noqa: E402

WAIT = 10  # seconds to wait for anything that should arrive at once


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


@asynccontextmanager
async def subscription(ntfy: Ntfy, topics: list[str], **filters):
    """Runs aiontfy's `subscribe()` in a task; yields the list it appends to and a
    `wait_for(predicate)` helper. Returns once herald's `open` event has arrived."""
    received: list[Notification] = []
    changed = asyncio.Event()

    def callback(n: Notification) -> None:
        received.append(n)
        changed.set()

    async def wait_for(pred: Callable[[list[Notification]], bool]) -> list[Notification]:
        async def loop():
            while not pred(received):
                changed.clear()
                await changed.wait()
            return received

        try:
            return await asyncio.wait_for(loop(), WAIT)
        except TimeoutError:
            raise AssertionError(f"condition not met; received so far: {received!r}") from None

    task = asyncio.create_task(ntfy.subscribe(topics, callback, **filters))
    try:
        done = asyncio.create_task(wait_for(lambda r: any(n.event == Event.OPEN for n in r)))
        await asyncio.wait({task, done}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises the subscribe error
            raise AssertionError("subscribe() returned before the open event")
        await done
        yield received, wait_for
    finally:
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):
            pass


def messages(received: list[Notification]) -> list[Notification]:
    return [n for n in received if n.event == Event.MESSAGE]


def test_publish_full_message_and_parse_response(herald):
    async def main():
        async with Ntfy(herald.url) as ntfy:
            sent = Message(
                topic="aiontfy_full",
                message="Remote access to phils-laptop detected. Act right away.",
                title="Unauthorized access detected",
                priority=Priority.MAX,
                tags=["warning", "skull"],
                click=URL("https://home.nest.com/"),
                icon=URL("https://example.com/icon.png"),
                markdown=True,
                actions=[
                    ViewAction(label="Open portal", url=URL("https://home.nest.com/"), clear=True),
                    HttpAction(
                        label="Turn down",
                        url=URL("https://api.nest.com/"),
                        method="PUT",
                        headers={"Authorization": "Bearer zAzsx1sk.."},
                        body='{"temperature": 65}',
                    ),
                    BroadcastAction(label="Take picture", extras={"cmd": "pic", "camera": "front"}),
                ],
            )
            return await ntfy.publish(sent)

    n = run(main())
    # The publish response parsed into aiontfy's Notification model.
    assert isinstance(n, Notification)
    assert ID_RE.match(n.id)
    assert n.event == Event.MESSAGE
    assert n.topic == "aiontfy_full"
    assert n.title == "Unauthorized access detected"
    assert n.message == "Remote access to phils-laptop detected. Act right away."
    assert n.priority == Priority.MAX
    assert n.tags == ["warning", "skull"]
    assert n.click == URL("https://home.nest.com/")
    assert n.icon == URL("https://example.com/icon.png")
    assert n.content_type == "text/markdown"
    assert n.expires is not None and n.expires > n.time
    assert [a.label for a in n.actions] == ["Open portal", "Turn down", "Take picture"]

    # What a poller sees: the same message, every line parseable by aiontfy.
    polled = herald.poll("aiontfy_full")
    assert len(polled) == 1
    raw = polled[0]
    assert_message_shape(raw, "aiontfy_full")
    assert raw["id"] == n.id
    assert Notification.from_json(json.dumps(raw)) == n
    view, http, broadcast = raw["actions"]
    assert view["action"] == "view" and view["url"] == "https://home.nest.com/"
    assert view["clear"] is True
    assert http["action"] == "http" and http["method"] == "PUT"
    assert http["headers"] == {"Authorization": "Bearer zAzsx1sk.."}
    assert http["body"] == '{"temperature": 65}'
    assert broadcast["action"] == "broadcast"
    assert broadcast["extras"] == {"cmd": "pic", "camera": "front"}
    for a in raw["actions"]:
        assert isinstance(a.get("id"), str) and a["id"], a


def test_publish_minimal_message_defaults(herald):
    """aiontfy sends `null` for every unset field; herald must treat null as unset."""

    async def main():
        async with Ntfy(herald.url) as ntfy:
            return await ntfy.publish(Message(topic="aiontfy_min", message="hello"))

    n = run(main())
    assert n.message == "hello"
    assert n.title is None and n.priority is None and n.tags == [] and n.actions == []
    assert n.click is None and n.icon is None and n.content_type is None
    raw = herald.poll("aiontfy_min")[0]
    for key in ("title", "priority", "tags", "click", "icon", "actions", "attachment", "content_type"):
        assert key not in raw, raw


def test_publish_without_message_is_triggered(herald):
    async def main():
        async with Ntfy(herald.url) as ntfy:
            return await ntfy.publish(Message(topic="aiontfy_trig", title="only a title"))

    n = run(main())
    assert n.message == "triggered"
    assert n.title == "only a title"


def test_subscribe_websocket_receives_published_message(herald):
    async def main():
        async with Ntfy(herald.url) as ntfy:
            async with subscription(ntfy, ["aiontfy_ws"]) as (received, wait_for):
                opened = received[0]
                assert opened.event == Event.OPEN
                assert opened.topic == "aiontfy_ws"
                published = await ntfy.publish(
                    Message(
                        topic="aiontfy_ws",
                        message="Disk full",
                        title="Alert",
                        priority=Priority.HIGH,
                        tags=["floppy_disk"],
                    )
                )
                await wait_for(lambda r: len(messages(r)) >= 1)
                return published, messages(received)[0]

    published, got = run(main())
    assert got.id == published.id
    assert got.topic == "aiontfy_ws"
    assert got.message == "Disk full"
    assert got.title == "Alert"
    assert got.priority == Priority.HIGH
    assert got.tags == ["floppy_disk"]


def test_subscribe_multiple_topics(herald):
    async def main():
        async with Ntfy(herald.url) as ntfy:
            async with subscription(ntfy, ["aio_t1", "aio_t2"]) as (received, wait_for):
                assert received[0].topic == "aio_t1,aio_t2"
                await ntfy.publish(Message(topic="aio_t1", message="for topic 1"))
                await ntfy.publish(Message(topic="aio_t2", message="for topic 2"))
                await ntfy.publish(Message(topic="aio_other", message="not subscribed"))
                await wait_for(lambda r: len(messages(r)) >= 2)
                await asyncio.sleep(0.3)
                return messages(received)

    got = run(main())
    assert sorted((n.topic, n.message) for n in got) == [
        ("aio_t1", "for topic 1"),
        ("aio_t2", "for topic 2"),
    ]


def test_subscribe_with_filters(herald):
    """aiontfy passes filters as query parameters on the WebSocket URL."""

    async def main():
        async with Ntfy(herald.url) as ntfy:
            async with subscription(
                ntfy, ["aiontfy_filter"], tags=["zfs-error"], priority=[4, 5]
            ) as (received, wait_for):
                await ntfy.publish(Message(topic="aiontfy_filter", message="low", priority=2, tags=["zfs-error"]))
                await ntfy.publish(Message(topic="aiontfy_filter", message="untagged", priority=5))
                await ntfy.publish(
                    Message(topic="aiontfy_filter", message="match", priority=4, tags=["error", "zfs-error"])
                )
                await wait_for(lambda r: len(messages(r)) >= 1)
                await asyncio.sleep(0.3)
                return messages(received)

    got = run(main())
    assert [n.message for n in got] == ["match"]


def test_sequence_id_update_clear_delete(herald):
    async def main():
        async with Ntfy(herald.url) as ntfy:
            async with subscription(ntfy, ["aiontfy_seq"]) as (received, wait_for):
                first = await ntfy.publish(
                    Message(topic="aiontfy_seq", message="Downloading 10%", sequence_id="dl-1")
                )
                second = await ntfy.publish(
                    Message(topic="aiontfy_seq", message="Downloading 90%", sequence_id="dl-1")
                )
                cleared = await ntfy.clear("aiontfy_seq", "dl-1")
                deleted = await ntfy.delete("aiontfy_seq", "dl-1")
                await wait_for(lambda r: sum(n.event != Event.OPEN for n in r) >= 4)
                return first, second, cleared, deleted, [n for n in received if n.event != Event.OPEN]

    first, second, cleared, deleted, live = run(main())
    assert first.sequence_id == "dl-1" and second.sequence_id == "dl-1"
    assert first.id != second.id
    assert cleared.event == Event.MESSAGE_CLEAR and cleared.sequence_id == "dl-1"
    assert deleted.event == Event.MESSAGE_DELETE and deleted.sequence_id == "dl-1"
    assert [n.event for n in live] == [
        Event.MESSAGE,
        Event.MESSAGE,
        Event.MESSAGE_CLEAR,
        Event.MESSAGE_DELETE,
    ]
    assert all(n.sequence_id == "dl-1" for n in live)
    # since=all replays the whole sequence, and aiontfy parses all of it.
    polled = herald.poll("aiontfy_seq")
    assert [p["event"] for p in polled] == ["message", "message", "message_clear", "message_delete"]
    for p in polled:
        Notification.from_json(json.dumps(p))


def test_delayed_message(herald):
    async def main():
        async with Ntfy(herald.url) as ntfy:
            return await ntfy.publish(Message(topic="aiontfy_later", message="later", delay="30min"))

    before = time.time()
    n = run(main())
    assert n.time.timestamp() >= before + 29 * 60
    assert herald.poll("aiontfy_later") == []
    scheduled = herald.poll("aiontfy_later", "scheduled=1")
    assert [m["id"] for m in scheduled] == [n.id]


def test_can_subscribe_and_stats(herald):
    async def main():
        async with Ntfy(herald.url) as ntfy:
            ok = await ntfy.can_subscribe(["aio_a", "aio_b"])
            await ntfy.publish(Message(topic="aio_a", message="one"))
            stats = await ntfy.stats()
            return ok, stats

    ok, stats = run(main())
    assert ok is True
    assert isinstance(stats, Stats)
    assert stats.messages >= 0
    assert stats.messages_rate >= 0


def test_errors_map_to_aiontfy_exceptions(herald):
    """herald's error JSON (`code`, `http`, `error`, `link`) feeds aiontfy's error map."""

    async def main():
        async with Ntfy(herald.url) as ntfy:
            with pytest.raises(NtfyBadRequestAttachmentsDisallowedError) as att:
                await ntfy.publish(
                    Message(topic="aiontfy_att", filename="flower.jpg", title="A flower"),
                    attachment=b"\xff\xd8\xff\xe0 not really a jpeg",
                )
            with pytest.raises(NtfyBadRequestTopicDisallowedError):
                await ntfy.publish(Message(topic="docs", message="reserved name"))
            with pytest.raises(NtfyBadRequestTopicInvalidError):
                await ntfy.publish(Message(topic="bad topic!", message="x"))
            return att.value

    err = run(main())
    assert err.code == 40014 and err.http == 400
    assert err.error == "invalid request: attachments not allowed"
    assert herald.poll("aiontfy_att") == []


def test_account_anonymous(herald):
    async def main():
        async with Ntfy(herald.url) as ntfy:
            return await ntfy.account()

    account = run(main())
    assert isinstance(account, Account)
    assert account.username == "*"
    assert account.stats.messages >= 0


def test_attachment_upload_round_trip(herald_files):
    """aiontfy's `publish(..., attachment=bytes)` uploads the file (`PUT` with
    `Filename`); the answer and the history carry ntfy's attachment object."""
    from conftest import file_path
    import urllib.request

    jpeg = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 40

    async def main():
        async with Ntfy(herald_files.url) as ntfy:
            return await ntfy.publish(
                Message(topic="aiontfy_files", filename="flower.jpg", title="A flower"),
                attachment=jpeg,
            )

    n = run(main())
    assert n.attachment is not None, n
    assert n.attachment.name == "flower.jpg"
    assert n.attachment.type == "image/jpeg"
    assert n.attachment.size == len(jpeg)
    assert n.message == "You received a file: flower.jpg"
    [m] = herald_files.poll("aiontfy_files")
    assert m["attachment"]["url"] == str(n.attachment.url)
    with urllib.request.urlopen(herald_files.url + file_path(m["attachment"]["url"])) as resp:
        assert resp.read() == jpeg
        assert resp.headers["Content-Type"] == "image/jpeg"
