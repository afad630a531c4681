"""`herald publish` / `herald subscribe` where they meet other ntfy clients.

What herald's CLI publishes must parse in aiontfy's models (the shape Home
Assistant expects) exactly as the server's answer it prints; what Apprise and
aiontfy publish must come out of `herald subscribe` as ntfy's JSON lines, and in
command mode as ntfy's environment variables.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

import apprise
import pytest

from conftest import HERALD_BIN, assert_message_shape


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> str:
    """Runs `herald <args>` (no NTFY_/HERALD_ variables of ours) and returns stdout."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("NTFY_", "HERALD_"))}
    clean.update(env or {})
    out = subprocess.run(
        [str(HERALD_BIN), *args], env=clean, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_cli_publish_parses_in_aiontfy(herald):
    aiontfy = pytest.importorskip("aiontfy", reason="aiontfy needs Python >= 3.12")
    printed = cli(
        "pub",
        "--title", "Unauthorized access detected",
        "--priority", "urgent",
        "--tags", "warning,skull",
        "--click", "https://home.nest.com/",
        "--actions", "view, Open portal, https://home.nest.com/, clear=true",
        "--markdown",
        f"{herald.host}/cli_aiontfy",
        "Remote access detected.",
    )
    answer = aiontfy.Notification.from_json(printed.strip())
    assert answer.priority == aiontfy.Priority.MAX
    assert answer.tags == ["warning", "skull"]
    assert answer.content_type == "text/markdown"
    assert [a.label for a in answer.actions] == ["Open portal"]
    [raw] = herald.poll("cli_aiontfy")
    assert_message_shape(raw, "cli_aiontfy")
    assert aiontfy.Notification.from_json(json.dumps(raw)) == answer


def test_apprise_publish_reaches_cli_subscribe(herald):
    apobj = apprise.Apprise()
    assert apobj.add(f"ntfy://{herald.host}/cli_apprise?priority=high&tags=tada&image=no")
    assert apobj.notify(title="Deployed", body="v1.2.3 is live")
    [line] = cli("sub", "--poll", f"{herald.host}/cli_apprise").splitlines()
    m = json.loads(line)
    assert_message_shape(m, "cli_apprise")
    assert (m["title"], m["message"], m["priority"], m["tags"]) == ("Deployed", "v1.2.3 is live", 4, ["tada"])
    # Command mode: ntfy's variables (and herald's) for the same message.
    out = cli(
        "sub", "--poll", f"{herald.host}/cli_apprise",
        'printf "%s|%s|%s|%s|%s" "$NTFY_TITLE" "$m" "$p" "$ta" "$HERALD_ID"',
    )
    assert out == f"Deployed|v1.2.3 is live|4|tada|{m['id']}"


def test_aiontfy_websocket_sees_cli_publish(herald):
    aiontfy = pytest.importorskip("aiontfy", reason="aiontfy needs Python >= 3.12")

    async def main():
        got: list = []
        opened = asyncio.Event()
        arrived = asyncio.Event()

        def callback(n):
            if n.event == aiontfy.Event.OPEN:
                opened.set()
            elif n.event == aiontfy.Event.MESSAGE:
                got.append(n)
                arrived.set()

        async with aiontfy.Ntfy(herald.url) as ntfy:
            task = asyncio.create_task(ntfy.subscribe(["cli_ws"], callback))
            try:
                await asyncio.wait_for(opened.wait(), 10)
                printed = await asyncio.to_thread(
                    cli, "pub", "-t", "From the CLI", "-p", "2", f"{herald.host}/cli_ws", "hello"
                )
                await asyncio.wait_for(arrived.wait(), 10)
            finally:
                task.cancel()
        return json.loads(printed), got[0]

    answer, n = asyncio.run(asyncio.wait_for(main(), 60))
    assert n.id == answer["id"]
    assert (n.title, n.message, n.priority) == ("From the CLI", "hello", aiontfy.Priority.LOW)
