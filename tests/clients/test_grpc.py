"""herald's gRPC API (docs/GRPC.md) from Python with the official client, `grpcio`.

The client code is generated in the test setup from the repository's own
`crates/herald/proto/herald/v1/herald.proto` with `grpcio-tools`, as a user of the
API would; health checks use `grpcio-health-checking`, reflection
`grpcio-reflection`, and error details `grpcio-status` (google.rpc.Status).
"""

from __future__ import annotations

import base64
import importlib
import re
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from grpc_tools import protoc

from conftest import REPO_ROOT, _free_port, start_herald, stop_herald
from test_auth_clients import herald_cli

PROTO_ROOT = REPO_ROOT / "crates" / "herald" / "proto"
TIMEOUT = 10


@pytest.fixture(scope="module")
def pb(tmp_path_factory: pytest.TempPathFactory):
    """`herald_pb2` and `herald_pb2_grpc`, generated from the repository's .proto."""
    out = tmp_path_factory.mktemp("generated")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(PROTO_ROOT / "herald" / "v1" / "herald.proto"),
        ]
    )
    assert rc == 0, "protoc failed on herald.proto"
    sys.path.insert(0, str(out))
    try:
        messages = importlib.import_module("herald.v1.herald_pb2")
        services = importlib.import_module("herald.v1.herald_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    return messages, services


class GrpcHerald:
    """A herald with a gRPC listener, and a channel to it."""

    def __init__(self, tmp_path: Path, extra: list[str] | None = None):
        self.data_dir = tmp_path / "herald-data"
        self.grpc_port = _free_port()
        self.server = start_herald(
            self.data_dir, ["--listen-grpc", f"127.0.0.1:{self.grpc_port}", *(extra or [])]
        )
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        grpc.channel_ready_future(self.channel).result(timeout=TIMEOUT)

    def close(self):
        self.channel.close()
        stop_herald(self.server.proc)


@pytest.fixture
def server(tmp_path: Path):
    s = GrpcHerald(tmp_path)
    yield s
    s.close()


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(err)
    assert status is not None, f"no status details in {err}"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError(f"no ErrorInfo in {status}")


def test_publish_over_grpc_subscribe_over_http_and_back(server, pb):
    messages, services = pb
    stub = services.HeraldStub(server.channel)
    sent = stub.Publish(
        messages.PublishRequest(topic="mytopic", message="Backup done", title="Nightly", priority=4, tags=["ok"]),
        timeout=TIMEOUT,
    )
    assert re.match(r"^[0-9A-Za-z]{12}$", sent.id)
    assert sent.event == messages.EVENT_KIND_MESSAGE
    polled = server.server.poll("mytopic")
    assert [(m["id"], m["message"], m["title"], m["priority"], m["tags"]) for m in polled] == [
        (sent.id, "Backup done", "Nightly", 4, ["ok"])
    ]

    stream = stub.Subscribe(messages.SubscribeRequest(topics=["mytopic"]), timeout=TIMEOUT)
    first = next(stream)
    assert first.event == messages.EVENT_KIND_OPEN
    status, _, body = server.server.request("PUT", "/mytopic", "from curl")
    assert status == 200, body
    got = next(stream)
    assert (got.message, got.topic, got.event) == ("from curl", "mytopic", messages.EVENT_KIND_MESSAGE)
    stream.cancel()

    # Poll: the cached messages, then the end of the stream.
    assert [m.message for m in stub.Poll(messages.SubscribeRequest(topics=["mytopic"]), timeout=TIMEOUT)] == [
        "Backup done",
        "from curl",
    ]


def test_subscribe_since_and_filters_live(server, pb):
    messages, services = pb
    stub = services.HeraldStub(server.channel)
    stub.Publish(messages.PublishRequest(topic="alerts", message="low", priority=2), timeout=TIMEOUT)
    high = stub.Publish(messages.PublishRequest(topic="alerts", message="high", priority=5), timeout=TIMEOUT)
    stream = stub.Subscribe(
        messages.SubscribeRequest(topics=["alerts"], since="all", priorities=[5]), timeout=TIMEOUT
    )
    received = []
    done = threading.Event()

    def read():
        for m in stream:
            received.append(m)
            if len(received) == 3:
                break
        done.set()

    threading.Thread(target=read, daemon=True).start()
    server.server.request("PUT", "/alerts", "skipped", headers={"Priority": "1"})
    server.server.request("PUT", "/alerts", "live high", headers={"Priority": "urgent"})
    assert done.wait(TIMEOUT), received
    stream.cancel()
    assert [m.event for m in received] == [messages.EVENT_KIND_OPEN, messages.EVENT_KIND_MESSAGE, messages.EVENT_KIND_MESSAGE]
    assert [m.message for m in received[1:]] == ["high", "live high"]
    assert received[1].id == high.id


def test_errors_have_ntfy_codes(server, pb):
    messages, services = pb
    stub = services.HeraldStub(server.channel)
    with pytest.raises(grpc.RpcError) as e:
        stub.Publish(messages.PublishRequest(topic="t", message="x", priority=9), timeout=TIMEOUT)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(e.value)
    assert (info.domain, info.reason, info.metadata["code"], info.metadata["http"]) == (
        "herald",
        "NTFY_40007",
        "40007",
        "400",
    )
    with pytest.raises(grpc.RpcError) as e:
        stub.Publish(messages.PublishRequest(topic="t", message="x", delay="5s"), timeout=TIMEOUT)
    assert error_info(e.value).metadata["code"] == "40005"


def test_batch_delete_and_clear(server, pb):
    messages, services = pb
    stub = services.HeraldStub(server.channel)
    reply = stub.PublishBatch(
        messages.PublishBatchRequest(
            messages=[
                messages.PublishRequest(topic="jobs", message="one"),
                messages.PublishRequest(topic="jobs", message="two", icon="not a url"),
                messages.PublishRequest(topic="jobs", message="three", sequence_id="job-7"),
            ]
        ),
        timeout=TIMEOUT,
    )
    kinds = [r.WhichOneof("result") for r in reply.results]
    assert kinds == ["message", "error", "message"]
    assert (reply.results[1].error.code, reply.results[1].error.http) == (40021, 400)
    assert reply.results[1].error.grpc_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    deleted = stub.Delete(messages.SequenceRequest(topic="jobs", sequence_id="job-7"), timeout=TIMEOUT)
    assert deleted.event == messages.EVENT_KIND_MESSAGE_DELETE
    events = [m["event"] for m in server.server.poll("jobs")]
    assert events == ["message", "message", "message_delete"]


def test_credentials_in_metadata(tmp_path: Path, pb):
    messages, services = pb
    s = GrpcHerald(tmp_path, ["--auth-default-access", "deny-all"])
    try:
        herald_cli(s.data_dir, "user", "add", "phil", password="phil-secret")
        herald_cli(s.data_dir, "access", "phil", "private*", "rw")
        token = re.search(r"tk_[a-z0-9]{29}", herald_cli(s.data_dir, "token", "add", "phil")).group(0)
        stub = services.HeraldStub(s.channel)
        req = messages.PublishRequest(topic="private1", message="hi")
        with pytest.raises(grpc.RpcError) as e:
            stub.Publish(req, timeout=TIMEOUT)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_info(e.value).metadata["code"] == "40301"
        basic = "Basic " + base64.b64encode(b"phil:phil-secret").decode()
        assert stub.Publish(req, metadata=[("authorization", basic)], timeout=TIMEOUT).message == "hi"
        assert stub.Publish(req, metadata=[("authorization", f"Bearer {token}")], timeout=TIMEOUT).topic == "private1"
        wrong = "Basic " + base64.b64encode(b"phil:nope").decode()
        with pytest.raises(grpc.RpcError) as e:
            stub.Publish(req, metadata=[("authorization", wrong)], timeout=TIMEOUT)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        s.close()


def test_health_and_reflection(tmp_path: Path, pb):
    s = GrpcHerald(tmp_path, ["--grpc-reflection", "true"])
    try:
        health = health_pb2_grpc.HealthStub(s.channel)
        for service in ("", "herald.v1.Herald"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(s.channel)
        replies = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT
        )
        names = {svc.name for r in replies for svc in r.list_services_response.service}
        assert {"herald.v1.Herald", "grpc.health.v1.Health"} <= names
    finally:
        s.close()


def test_reflection_is_off_by_default(server):
    reflection = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    with pytest.raises(grpc.RpcError) as e:
        list(
            reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT
            )
        )
    assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_email_and_idempotency_key(tmp_path: Path, pb):
    """`email` sends the message to a real SMTP server (aiosmtpd) as `X-Email` does,
    with HTTP's checks; `idempotency_key` publishes (and mails) once."""
    from test_email import parse, sender_args, start_relay

    messages, services = pb
    relay_port = _free_port()
    controller, recorder = start_relay(relay_port)
    s = GrpcHerald(tmp_path, sender_args(relay_port, "--smtp-sender-tls", "none"))
    try:
        stub = services.HeraldStub(s.channel)
        req = messages.PublishRequest(
            topic="mailed", message="Backup done", title="Backups",
            email="ops@example.com", idempotency_key="backup-1",
        )
        first = stub.Publish(req, timeout=TIMEOUT)
        again = stub.Publish(req, timeout=TIMEOUT)
        assert again.id == first.id
        mails = recorder.wait(1)
        assert len(mails) == 1, mails
        _, rcpt, raw = mails[0]
        assert rcpt == ["ops@example.com"]
        msg = parse(raw)
        assert msg["Subject"] == "Backups"
        assert msg.get_content().startswith("Backup done")
        assert "sent by 127.0.0.1" in msg.get_content()
        for bad, code in (
            (messages.PublishRequest(topic="mailed", message="x", email="not-an-address"), "40050"),
            (messages.PublishRequest(topic="mailed", message="x", email="a@example.com", delay="1h"), "40003"),
            (messages.PublishRequest(topic="mailed", message="other", idempotency_key="backup-1"), "42201"),
        ):
            with pytest.raises(grpc.RpcError) as e:
                stub.Publish(bad, timeout=TIMEOUT)
            assert error_info(e.value).metadata["code"] == code, bad
        # Nothing more was mailed or published.
        time.sleep(0.5)
        assert len(recorder.wait(1, timeout=0.1)) == 1
        assert [m["message"] for m in s.server.poll("mailed")] == ["Backup done"]
    finally:
        s.close()
        controller.stop()


def test_email_without_relay_is_refused(server, pb):
    messages, services = pb
    stub = services.HeraldStub(server.channel)
    with pytest.raises(grpc.RpcError) as e:
        stub.Publish(messages.PublishRequest(topic="t", message="x", email="a@example.com"), timeout=TIMEOUT)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(e.value).metadata["code"] == "40001"
