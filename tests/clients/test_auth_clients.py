"""Apprise and aiontfy with credentials against a private herald
(`auth-default-access: deny-all`, user and token made with `herald user|access|token`).

Apprise sends Basic auth for `ntfy://user:pass@host/topic` and a Bearer token for
`?token=tk_...`; aiontfy takes `username`/`password` or `token` and sends them on every
request, its WebSocket subscription included.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
from pathlib import Path

import apprise
import pytest

from conftest import HERALD_BIN, start_herald, stop_herald

USER, PASSWORD = "phil", "phil-secret"


def herald_cli(data_dir: Path, *args: str, password: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    if password is not None:
        env["HERALD_PASSWORD"] = password
    out = subprocess.run(
        [str(HERALD_BIN), *args, "--data-dir", str(data_dir)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, (args, out.stderr)
    return out.stdout


@pytest.fixture
def private_herald(tmp_path: Path):
    data_dir = tmp_path / "herald-data"
    server = start_herald(data_dir, ["--auth-default-access", "deny-all"])
    herald_cli(data_dir, "user", "add", USER, password=PASSWORD)
    herald_cli(data_dir, "access", USER, "private*", "rw")
    token = re.search(r"tk_[a-z0-9]{29}", herald_cli(data_dir, "token", "add", USER)).group(0)
    yield server, token
    stop_herald(server.proc)


def basic() -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}


def poll(server, topic: str) -> list[str]:
    status, _, body = server.request("GET", f"/{topic}/json?poll=1", headers=basic())
    assert status == 200, body
    return [json.loads(line)["message"] for line in body.decode().splitlines() if line.strip()]


def notify(url: str, body: str) -> bool:
    apobj = apprise.Apprise()
    assert apobj.add(url), url
    return apobj.notify(body=body)


def test_apprise_with_password_and_token(private_herald):
    server, token = private_herald
    assert notify(f"ntfy://{USER}:{PASSWORD}@{server.host}/private_apprise", "with a password")
    assert notify(f"ntfy://{server.host}/private_apprise?token={token}", "with a token")
    assert poll(server, "private_apprise") == ["with a password", "with a token"]
    # Without credentials, or on a topic phil has no entry for, herald refuses.
    assert not notify(f"ntfy://{server.host}/private_apprise", "anonymous")
    assert not notify(f"ntfy://{USER}:{PASSWORD}@{server.host}/elsewhere", "no entry")
    assert not notify(f"ntfy://{USER}:wrong@{server.host}/private_apprise", "wrong password")
    assert poll(server, "private_apprise") == ["with a password", "with a token"]


aiontfy = pytest.importorskip("aiontfy", reason="aiontfy needs Python >= 3.12")
from aiontfy import Event, Message, Ntfy  # noqa: E402
from aiontfy.exceptions import (  # noqa: E402
    NtfyForbiddenAccessError,
    NtfyUnauthorizedAuthenticationError,
)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


def test_aiontfy_subscribes_and_publishes_with_credentials(private_herald):
    server, token = private_herald

    async def scenario():
        received = []
        opened, got = asyncio.Event(), asyncio.Event()

        def callback(n):
            received.append(n)
            if n.event == Event.OPEN:
                opened.set()
            if n.event == Event.MESSAGE:
                got.set()

        async with Ntfy(server.url, username=USER, password=PASSWORD) as sub:
            task = asyncio.create_task(sub.subscribe(["private_aio"], callback))
            try:
                await asyncio.wait_for(opened.wait(), 10)
                async with Ntfy(server.url, token=token) as pub:
                    await pub.publish(Message(topic="private_aio", message="over a token"))
                await asyncio.wait_for(got.wait(), 10)
            finally:
                task.cancel()
        assert [n.message for n in received if n.event == Event.MESSAGE] == ["over a token"]

        async with Ntfy(server.url, username=USER, password=PASSWORD) as ntfy:
            account = await ntfy.account()
            assert account.username == USER
            assert account.role == "user"
            made = await ntfy.generate_token(label="aiontfy")
            assert made.token.startswith("tk_") and made.label == "aiontfy"
        async with Ntfy(server.url, token=made.token) as ntfy:
            await ntfy.publish(Message(topic="private_aio", message="new token"))

        async with Ntfy(server.url) as anonymous:
            with pytest.raises(NtfyForbiddenAccessError):
                await anonymous.publish(Message(topic="private_aio", message="nope"))
        async with Ntfy(server.url, username=USER, password="wrong") as wrong:
            with pytest.raises(NtfyUnauthorizedAuthenticationError):
                await wrong.publish(Message(topic="private_aio", message="nope"))

    run(scenario())
    assert poll(server, "private_aio") == ["over a token", "new token"]
