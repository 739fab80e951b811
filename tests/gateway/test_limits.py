"""Limits, over real sockets: body, header, page, batch, label and comment sizes; concurrent
gRPC streams per connection; and slow clients (slowloris) that trickle a request head or
body byte by byte are disconnected by the gateway while other clients are served."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiops.feedback.v1 import feedback_pb2 as fb
from aiops.feedback.v1 import feedback_service_pb2 as fb_svc
from aiops.feedback.v1 import feedback_service_pb2_grpc as fb_grpc
from aiops.telemetry.v1 import telemetry_pb2 as tel
from aiops.telemetry.v1 import telemetry_service_pb2 as tel_svc
from aiops.telemetry.v1 import telemetry_service_pb2_grpc as tel_grpc

from services.kit import serve
from services.telemetry import server as telemetry_server
from services.telemetry.settings import TelemetrySettings
from tests.conftest import Deps, Gateway, other_services, serve_gateway

FEEDBACK = "/api/v1/aiops/feedback"
ANOMALY = {"target": {"kind": "TARGET_KIND_ANOMALY", "id": "a-1"}, "verdict": "VERDICT_CONFIRMED"}
HEAD_TIMEOUT = 0.5
# Upper bound on waiting for a disconnect, so a missing guard fails instead of hanging.
GIVE_UP = 15.0


@pytest.fixture
async def stack(
    deps: Deps, feedback_running: serve.Running, tmp_path: Path, redis_url: str
) -> AsyncIterator[tuple[Gateway, dict[str, serve.Running]]]:
    async with (
        other_services(deps, feedback_running) as others,
        serve_gateway({"feedback": feedback_running, **others}, tmp_path / "keys", redis_url) as gw,
    ):
        yield gw, {"feedback": feedback_running, **others}


async def _call(
    gw: Gateway, method: str, path: str, role: str | None = "admin", **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    headers = dict(kwargs.pop("headers", {}))
    if role:
        headers["Authorization"] = f"Bearer {gw.token(role)}"
    async with gw.session.request(method, gw.url(path), headers=headers, **kwargs) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, {"text": text}


def _reasons_and_fields(body: dict[str, Any]) -> set[str]:
    out = set()
    for detail in body["error"]["details"]:
        out.add(detail.get("reason", ""))
        out.update(v["field"] for v in detail.get("fieldViolations", []))
    return out


# -- sizes at the HTTP edge -----------------------------------------------------------


async def test_body_over_the_limit_is_400_and_within_it_is_read(
    stack: tuple[Gateway, Any],
) -> None:
    gw, _ = stack
    limit = gw.settings.max_body_bytes
    big = json.dumps({**ANOMALY, "comment": "x" * limit}).encode()
    status, body = await _call(gw, "POST", FEEDBACK, data=big)
    assert status == 400 and "BODY_TOO_LARGE" in _reasons_and_fields(body), body
    padded = json.dumps(ANOMALY).encode().ljust(limit - 1, b" ")
    assert (await _call(gw, "POST", FEEDBACK, data=padded))[0] == 201


async def test_oversized_headers_are_refused_and_the_gateway_goes_on(
    stack: tuple[Gateway, Any],
) -> None:
    gw, _ = stack
    # A token over 8 KiB reaches the verifier and gets the JSON envelope, never echoed.
    status, body = await _call(
        gw, "GET", FEEDBACK, role=None, headers={"Authorization": "Bearer " + "a" * 10_000}
    )
    assert status == 401 and "TOKEN_TOO_LARGE" in _reasons_and_fields(body)
    assert "a" * 100 not in json.dumps(body)
    # A header line over the 16 KiB limit is refused by the HTTP parser itself.
    async with (
        aiohttp.ClientSession() as fresh,
        fresh.get(gw.url(FEEDBACK), headers={"X-Big": "b" * 20_000}) as resp,
    ):
        assert resp.status in (400, 431)
    assert (await _call(gw, "GET", FEEDBACK))[0] == 200


@pytest.mark.parametrize(
    ("page_size", "status"),
    [("-1", 400), ("2147483648", 400), ("abc", 400), ("0", 200), ("500", 200), ("100000", 200)],
)
async def test_page_size_is_bounded(
    stack: tuple[Gateway, Any], page_size: str, status: int
) -> None:
    gw, _ = stack
    for path in (FEEDBACK, "/api/v1/aiops/anomalies", "/api/v1/aiops/remediations"):
        got, body = await _call(gw, "GET", f"{path}?pageSize={page_size}")
        assert got == status, (path, body)


async def test_comment_length_and_label_count_limits(stack: tuple[Gateway, Any]) -> None:
    gw, _ = stack
    ok = {**ANOMALY, "comment": "c" * 2000, "labels": {f"k{i}": "v" for i in range(16)}}
    assert (await _call(gw, "POST", FEEDBACK, json=ok))[0] == 201
    status, body = await _call(gw, "POST", FEEDBACK, json={**ANOMALY, "comment": "c" * 2001})
    assert status == 400 and "feedback.comment" in _reasons_and_fields(body), body
    labels = {f"k{i}": "v" for i in range(17)}
    status, body = await _call(gw, "POST", FEEDBACK, json={**ANOMALY, "labels": labels})
    assert status == 400 and "feedback.labels" in _reasons_and_fields(body), body


async def test_year_one_with_an_offset_is_a_400_not_a_500(stack: tuple[Gateway, Any]) -> None:
    # Found by schemathesis: the time is before year 1 once converted to UTC.
    gw, _ = stack
    for path in (FEEDBACK, "/api/v1/aiops/anomalies", "/api/v1/aiops/remediations"):
        status, body = await _call(gw, "GET", f"{path}?startTime=0001-01-01T00:00:00%2B01:00")
        assert status == 400 and "startTime" in _reasons_and_fields(body), (path, body)


# -- batch and label limits at the services --------------------------------------------


async def test_batches_over_the_limit_are_refused(stack: tuple[Gateway, Any]) -> None:
    _, running = stack
    item = fb_svc.SubmitFeedbackRequest(
        feedback=fb.Feedback(
            target=fb.Target(kind=fb.TARGET_KIND_ANOMALY, id="a"), verdict=fb.VERDICT_CONFIRMED
        )
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running['feedback'].port}") as channel:
        stub = fb_grpc.FeedbackServiceStub(channel)
        reply = await stub.BatchSubmitFeedback(
            fb_svc.BatchSubmitFeedbackRequest(requests=[item] * 500), timeout=30
        )
        assert len(reply.results) == 500
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.BatchSubmitFeedback(
                fb_svc.BatchSubmitFeedbackRequest(requests=[item] * 501), timeout=30
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    sample = tel.Sample(metric="limits_test", value=1.0)
    sample.sample_time.GetCurrentTime()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running['telemetry'].port}") as channel:
        tstub = tel_grpc.TelemetryServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await tstub.WritePoints(
                tel_svc.WritePointsRequest(samples=[sample] * 10_001), timeout=30
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        too_many = tel.Sample(
            metric="limits_test", value=1.0, labels={f"k{i}": "v" for i in range(17)}
        )
        too_many.sample_time.GetCurrentTime()
        reply = await tstub.WritePoints(tel_svc.WritePointsRequest(samples=[too_many]), timeout=30)
        assert reply.accepted_count == 0 and reply.rejected_count == 1
        assert [r.reason for r in reply.rejections] == [tel.POINT_REJECT_REASON_INVALID_LABELS]


async def test_concurrent_streams_per_connection_are_capped(
    deps: Deps, feedback_running: serve.Running
) -> None:
    settings = TelemetrySettings.from_env(
        {
            "AIOPS_BIND_HOST": "127.0.0.1",
            "AIOPS_TELEMETRY_GRPC_PORT": "0",
            "AIOPS_TELEMETRY_METRICS_PORT": "0",
            "AIOPS_SHUTDOWN_GRACE_SECONDS": "0.2",
            "AIOPS_DATABASE_URL": deps.postgres_url,
            "AIOPS_TELEMETRY_DATABASE_SCHEMA": deps.schema,
            "AIOPS_TELEMETRY_COLLECTOR_ENABLED": "false",
            "AIOPS_TELEMETRY_SCRAPE_TARGETS": "none",
            "AIOPS_ANOMALY_ADDR": "127.0.0.1:1",
            "AIOPS_GRPC_MAX_CONCURRENT_STREAMS": "2",
        }
    )
    release = asyncio.Event()

    async def held_stream() -> AsyncIterator[tel_svc.PushPointsRequest]:
        await release.wait()
        return
        yield  # an async generator that sends nothing until released

    async with (
        telemetry_server.running(settings) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        stub = tel_grpc.TelemetryServiceStub(channel)
        await stub.ListSeries(tel_svc.ListSeriesRequest(), timeout=10)  # connected
        held = [stub.PushPoints(held_stream(), timeout=60) for _ in range(2)]
        # Two streams are open on the connection: a third call waits for a free one.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListSeries(tel_svc.ListSeriesRequest(), timeout=1.0)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        release.set()
        for call in held:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await call
        await stub.ListSeries(tel_svc.ListSeriesRequest(), timeout=10)


# -- slow clients ------------------------------------------------------------------------


@pytest.fixture
async def guarded(
    feedback_running: serve.Running, tmp_path: Path
) -> AsyncIterator[tuple[int, Gateway]]:
    async with serve_gateway(
        {"feedback": feedback_running},
        tmp_path / "keys",
        AIOPS_GATEWAY_HEADER_TIMEOUT_SECONDS=str(HEAD_TIMEOUT),
        AIOPS_GATEWAY_BODY_TIMEOUT_SECONDS=str(HEAD_TIMEOUT),
    ) as gw:
        yield int(gw.base_url.rsplit(":", 1)[1]), gw


async def _trickle(port: int, head: bytes, drip: bytes) -> float:
    """Sends `head`, then `drip` one byte every 50 ms, forever; returns how long it took the
    server to hang up (fails after GIVE_UP seconds)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    begin = time.monotonic()
    try:
        writer.write(head)
        i = 0
        while time.monotonic() - begin < GIVE_UP:
            try:
                data = await asyncio.wait_for(reader.read(1024), timeout=0.05)
            except TimeoutError:
                data = None
            if data == b"":
                return time.monotonic() - begin
            assert not data, f"the server answered instead of waiting: {data!r}"
            writer.write(drip[i % len(drip) : i % len(drip) + 1])
            await writer.drain()
            i += 1
    except (ConnectionResetError, BrokenPipeError):
        return time.monotonic() - begin
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    raise AssertionError(f"a slow client held its connection for {GIVE_UP} s")


async def _served_meanwhile(gw: Gateway, until: asyncio.Task[float]) -> int:
    served = 0
    while not until.done():
        async with gw.session.get(gw.url("/openapi.json")) as resp:
            assert resp.status == 200
            served += 1
    return served


@pytest.mark.parametrize(
    ("head", "drip"),
    [
        # Headers byte by byte, never ending them.
        (b"GET /health HTTP/1.1\r\nHost: x\r\n", b"X-Slow: yes\r\n"),
        # A complete head, then the body byte by byte.
        (
            b"POST /api/v1/aiops/feedback HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000\r\nAUTH\r\n\r\n",
            b'{"comment": "' + b"z" * 50,
        ),
        # Chunked: one chunk header, then its data byte by byte.
        (
            b"POST /api/v1/aiops/feedback HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\nAUTH\r\n\r\nffff\r\n",
            b"z",
        ),
        # A connection that sends nothing at all.
        (b"", b""),
    ],
    ids=["slow_headers", "slow_body", "slow_chunked_body", "silent"],
)
async def test_slow_clients_are_disconnected_while_others_are_served(
    guarded: tuple[int, Gateway], head: bytes, drip: bytes
) -> None:
    port, gw = guarded
    if not drip:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert await asyncio.wait_for(reader.read(), timeout=GIVE_UP) == b""
        finally:
            writer.close()
        return
    # With a valid token, so the handler waits for the body instead of answering 401.
    head = head.replace(b"AUTH", f"Authorization: Bearer {gw.token('operator')}".encode())
    slow = [asyncio.create_task(_trickle(port, head, drip)) for _ in range(20)]
    served = await _served_meanwhile(gw, slow[-1])
    held = await asyncio.gather(*slow)
    assert served > 0
    assert all(seconds >= HEAD_TIMEOUT * 0.9 for seconds in held), held


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    writer.write(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=GIVE_UP)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await asyncio.wait_for(reader.readexactly(length), timeout=GIVE_UP)
    return int(head.split(b" ", 2)[1])


async def test_prompt_clients_keep_their_connection_between_requests(
    guarded: tuple[int, Gateway],
) -> None:
    port, _ = guarded
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert await _request(reader, writer) == 200
        # Idle between requests is the keep-alive timeout's business, not the guard's.
        await asyncio.sleep(HEAD_TIMEOUT * 3)
        assert await _request(reader, writer) == 200
        # A head in pieces, each well within the time, is served.
        for piece in (b"GET /openapi.json HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"):
            writer.write(piece)
            await asyncio.sleep(HEAD_TIMEOUT / 10)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=GIVE_UP)
        assert head.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()


async def test_a_body_sent_in_time_is_accepted(guarded: tuple[int, Gateway]) -> None:
    port, gw = guarded
    body = json.dumps(ANOMALY).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /api/v1/aiops/feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {gw.token('operator')}\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        for i in range(0, len(body), 16):
            writer.write(body[i : i + 16])
            await asyncio.sleep(0.01)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=GIVE_UP)
        assert head.startswith(b"HTTP/1.1 201"), head
    finally:
        writer.close()
