"""Telemetry fixtures: the production server on a test schema, a store on its own pool,
and local exposition endpoints whose text the test controls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
import grpc
import pytest
from aiohttp import web
from aiops.telemetry.v1 import telemetry_service_pb2_grpc as tel_grpc

from services.kit import pg, serve
from services.telemetry import server, storage
from services.telemetry.settings import TelemetrySettings


def telemetry_env(postgres_url: str, schema: str, **extra: str) -> dict[str, str]:
    return {
        "AIOPS_DATABASE_URL": postgres_url,
        "AIOPS_TELEMETRY_DATABASE_SCHEMA": schema,
        "AIOPS_TELEMETRY_GRPC_PORT": "0",
        "AIOPS_TELEMETRY_METRICS_PORT": "0",
        "AIOPS_BIND_HOST": "127.0.0.1",
        "AIOPS_SHUTDOWN_GRACE_SECONDS": "0.2",
        "AIOPS_HEALTH_PROBE_INTERVAL_SECONDS": "0.2",
        "AIOPS_TELEMETRY_COLLECTOR_ENABLED": "false",
        "AIOPS_TELEMETRY_FORWARD_ENABLED": "false",
        "AIOPS_TELEMETRY_SCRAPE_TARGETS": "none",
        **extra,
    }


@pytest.fixture
async def db(postgres_url: str, pg_schema: str) -> AsyncIterator[asyncpg.Pool]:
    async with pg.pool(postgres_url, schema=pg_schema, max_size=6) as pool:
        yield pool


@pytest.fixture
async def store(db: asyncpg.Pool) -> storage.PostgresTelemetryStore:
    s = storage.PostgresTelemetryStore(db)
    await s.migrate()
    return s


@pytest.fixture
async def telemetry_running(postgres_url: str, pg_schema: str) -> AsyncIterator[serve.Running]:
    settings = TelemetrySettings.from_env(telemetry_env(postgres_url, pg_schema))
    async with server.running(settings) as running:
        yield running


@pytest.fixture
async def telemetry_stub(
    telemetry_running: serve.Running,
) -> AsyncIterator[tel_grpc.TelemetryServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{telemetry_running.port}") as channel:
        yield tel_grpc.TelemetryServiceStub(channel)


@dataclass
class Endpoints:
    """Local HTTP endpoints: `/metrics/{name}` serves `texts[name]`, `/hang` never answers,
    `/status/{code}` answers that status."""

    base: str
    texts: dict[str, str] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return f"{self.base}/metrics/{name}"


@pytest.fixture
async def endpoints() -> AsyncIterator[Endpoints]:
    holder: list[Endpoints] = []
    release = asyncio.Event()

    async def metrics(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        eps = holder[0]
        eps.hits[name] = eps.hits.get(name, 0) + 1
        return web.Response(text=eps.texts.get(name, ""), content_type="text/plain")

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="")

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="no")

    app = web.Application()
    app.router.add_get("/metrics/{name}", metrics)
    app.router.add_get("/hang", hang)
    app.router.add_get("/status/{code}", status)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    holder.append(Endpoints(f"http://127.0.0.1:{runner.addresses[0][1]}"))
    try:
        yield holder[0]
    finally:
        release.set()
        await runner.cleanup()
