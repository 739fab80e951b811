"""The mechanism behind a rolling restart, in one process: a replacement gRPC server binds
the port of a running one (SO_REUSEPORT), says when it is ready, and the old one drains as
on SIGTERM while a client channel (services.kit.channels) keeps calling: no call fails."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.kit import channels, local_servers, serve
from services.kit.settings import ServerSettings
from tests import helpers

SERVICE = "aiops.test.v1.TestService"


def _settings(port: int, ready_file: Path) -> ServerSettings:
    return ServerSettings(
        service="handover",
        grpc_port=port,
        metrics_port=0,
        host="127.0.0.1",
        log_level="INFO",
        reflection=False,
        shutdown_drain_seconds=0.2,
        shutdown_grace_seconds=5.0,
        health_probe_interval_seconds=0.1,
        max_message_bytes=1024 * 1024,
        ready_file=ready_file,
    )


@contextlib.asynccontextmanager
async def _server(port: int, ready_file: Path) -> AsyncIterator[serve.Running]:
    async with serve.grpc_server(
        _settings(port, ready_file), service_names=[SERVICE], register=lambda s: None
    ) as running:
        yield running


async def _ready(path: Path) -> dict[str, int]:
    text = await asyncio.to_thread(lambda: path.read_text() if path.exists() else "")
    assert text, f"{path.name} not written"
    body: dict[str, int] = json.loads(text)
    return body


async def test_replacement_on_the_same_port_takes_over_without_a_failed_call(
    tmp_path: Path,
) -> None:
    port = local_servers.free_port()
    ok, failed = 0, []
    stop = asyncio.Event()
    channel = channels.open_channel(f"127.0.0.1:{port}", service="grpc.health.v1.Health")
    stub = health_pb2_grpc.HealthStub(channel)

    async def client() -> None:
        nonlocal ok
        while not stop.is_set():
            try:
                # The old server answers NOT_SERVING while it drains: still an answer.
                await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                ok += 1
            except grpc.aio.AioRpcError as err:
                failed.append(err.code().name + ":" + (err.details() or "")[:200])

    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(channel.close, None)
        old = await stack.enter_async_context(_server(port, tmp_path / "old.ready"))
        assert (await helpers.eventually(lambda: _ready(tmp_path / "old.ready")))["port"] == port
        clients = [asyncio.create_task(client()) for _ in range(16)]
        try:
            await helpers.eventually(_served(lambda: ok, 200), timeout=10)
            async with _server(port, tmp_path / "new.ready") as new:
                await helpers.eventually(lambda: _ready(tmp_path / "new.ready"))
                assert new.port == port
                await old.drain()  # what SIGTERM does
                served_by_old = ok
                await helpers.eventually(_served(lambda: ok, served_by_old + 500), timeout=10)
                stop.set()
                await asyncio.gather(*clients)
        finally:
            stop.set()
            await asyncio.gather(*clients, return_exceptions=True)
    # grpc.aio's server can strand a call that reaches it in the instant its shutdown
    # starts; the call ends only when the grace period runs out ("Cancelling all calls").
    # Rare (none in 20,000 requests of `make chaos`), not ours to fix: at most one.
    stranded = [f for f in failed if f.endswith("Cancelling all calls")]
    others = [f for f in failed if f not in stranded]
    assert not others, f"{len(others)} calls failed during the handover: {set(others)}"
    assert len(stranded) <= 1, f"{len(stranded)} calls stranded by the old server"


def _served(count: Callable[[], int], at_least: int) -> Callable[[], Awaitable[None]]:
    async def check() -> None:
        assert count() >= at_least, f"{count()} calls served, waiting for {at_least}"

    return check
