"""Fixtures: real Redis/Postgres (tests.servers), in-process gRPC servers entered through
the production `server.running(settings)`, and the gateway over real HTTP."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from aiops.feedback.v1 import feedback_service_pb2_grpc as fb_grpc

from gateway import app as gateway_app
from gateway import keyring, slowclient
from gateway.settings import GatewaySettings
from services.anomaly import server as anomaly_server
from services.anomaly.settings import AnomalySettings
from services.feedback import server as feedback_server
from services.feedback.settings import FeedbackSettings
from services.kit import channels, local_servers, serve
from services.remediation import server as remediation_server
from services.remediation.settings import RemediationSettings
from services.telemetry import server as telemetry_server
from services.telemetry.settings import TelemetrySettings

pytest_plugins = ["tests.servers"]


@pytest.fixture(scope="session", autouse=True)
def every_outgoing_call_has_a_deadline() -> Iterator[None]:
    """Across the whole run, no call leaves our channels without a deadline (the channel's
    interceptor counts any it had to give one)."""
    yield
    missing = {
        s.labels["grpc_method"]: s.value
        for metric in channels.CALLS_WITHOUT_DEADLINE.collect()
        for s in metric.samples
        if s.name.endswith("_total") and s.value
    }
    assert not missing, f"outgoing calls without a deadline: {missing}"


ISSUER = "aiops"
AUDIENCE = "aiops-api"


def feedback_env(redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    return {
        "AIOPS_REDIS_URL": redis_url,
        "AIOPS_FEEDBACK_KEY_PREFIX": prefix,
        "AIOPS_FEEDBACK_GRPC_PORT": "0",
        "AIOPS_FEEDBACK_METRICS_PORT": "0",
        "AIOPS_BIND_HOST": "127.0.0.1",
        "AIOPS_SHUTDOWN_GRACE_SECONDS": "0.5",
        "AIOPS_HEALTH_PROBE_INTERVAL_SECONDS": "0.1",
        **extra,
    }


@pytest.fixture
async def feedback_running(redis_url: str, redis_prefix: str) -> AsyncIterator[serve.Running]:
    settings = FeedbackSettings.from_env(feedback_env(redis_url, redis_prefix))
    async with feedback_server.running(settings) as running:
        yield running


@pytest.fixture
async def feedback_stub(
    feedback_running: serve.Running,
) -> AsyncIterator[fb_grpc.FeedbackServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{feedback_running.port}") as channel:
        yield fb_grpc.FeedbackServiceStub(channel)


@dataclasses.dataclass(frozen=True)
class Deps:
    """Where a test's services keep their state: real Postgres (one schema per test; the
    services' tables carry their own prefixes) and real Redis (one key prefix per test)."""

    postgres_url: str
    schema: str
    redis_url: str
    redis_prefix: str


@pytest.fixture
def deps(postgres_url: str, pg_schema: str, redis_url: str, redis_prefix: str) -> Deps:
    return Deps(postgres_url, pg_schema, redis_url, redis_prefix)


@contextlib.asynccontextmanager
async def other_services(
    deps: Deps, feedback: serve.Running
) -> AsyncIterator[dict[str, serve.Running]]:
    """Telemetry, anomaly and remediation through their production `server.running`, on
    free ports, wired to each other and to `feedback`. Background loops that would only
    add noise to a test (the scrape loop, scoring process pools) are off."""
    for attempt in range(3):
        # The peers dial each other, so their ports are chosen before any starts; another
        # process may grab one in between, so a failed bind is retried with new ports.
        ports = {n: local_servers.free_port() for n in ("telemetry", "anomaly", "remediation")}
        stack = contextlib.AsyncExitStack()
        try:
            out = await _start_others(stack, deps, feedback, ports)
        except RuntimeError as exc:
            await stack.aclose()
            if "Failed to bind" not in str(exc) or attempt == 2:
                raise
            continue
        async with stack:
            yield out
        return


async def _start_others(
    stack: contextlib.AsyncExitStack,
    deps: Deps,
    feedback: serve.Running,
    ports: Mapping[str, int],
) -> dict[str, serve.Running]:
    env = {
        "AIOPS_BIND_HOST": "127.0.0.1",
        "AIOPS_SHUTDOWN_GRACE_SECONDS": "0.2",
        "AIOPS_HEALTH_PROBE_INTERVAL_SECONDS": "0.1",
        "AIOPS_DATABASE_URL": deps.postgres_url,
        "AIOPS_REDIS_URL": deps.redis_url,
        "AIOPS_FEEDBACK_ADDR": f"127.0.0.1:{feedback.port}",
        "AIOPS_TELEMETRY_DATABASE_SCHEMA": deps.schema,
        "AIOPS_TELEMETRY_COLLECTOR_ENABLED": "false",
        "AIOPS_TELEMETRY_SCRAPE_TARGETS": "none",
        "AIOPS_ANOMALY_DATABASE_SCHEMA": deps.schema,
        "AIOPS_ANOMALY_SCORING_WORKERS": "0",
        "AIOPS_ANOMALY_DRIFT_WORKERS": "0",
        "AIOPS_REMEDIATION_DATABASE_SCHEMA": deps.schema,
        "AIOPS_REMEDIATION_KEY_PREFIX": f"{deps.redis_prefix}rem:",
    }
    for name, port in ports.items():
        env[f"AIOPS_{name.upper()}_GRPC_PORT"] = str(port)
        env[f"AIOPS_{name.upper()}_METRICS_PORT"] = "0"
        env[f"AIOPS_{name.upper()}_ADDR"] = f"127.0.0.1:{port}"
    out: dict[str, serve.Running] = {}
    for name, settings_cls, module in (
        ("anomaly", AnomalySettings, anomaly_server),
        ("remediation", RemediationSettings, remediation_server),
        ("telemetry", TelemetrySettings, telemetry_server),
    ):
        out[name] = await stack.enter_async_context(
            module.running(settings_cls.from_env(env))  # type: ignore[attr-defined]
        )
    return out


class Gateway:
    """A gateway served over real HTTP on a free loopback port, with its keyring."""

    def __init__(
        self,
        base_url: str,
        ring: keyring.Keyring,
        session: aiohttp.ClientSession,
        settings: GatewaySettings,
    ) -> None:
        self.base_url = base_url
        self.ring = ring
        self.session = session
        self.settings = settings

    def token(
        self,
        *roles: str,
        ttl: float = 600,
        now: float | None = None,
        subject: str = "tester",
        **claims: Any,
    ) -> str:
        return keyring.mint_token(
            self.ring,
            subject=subject,
            roles=list(roles),
            issuer=ISSUER,
            audience=AUDIENCE,
            ttl_seconds=ttl,
            now=now,
        )

    def auth(self, *roles: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(*roles)}"}

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"


@contextlib.asynccontextmanager
async def serve_gateway(
    backends: Mapping[str, serve.Running],
    keyring_dir: Path,
    redis_url: str = "redis://127.0.0.1:1/0",
    **extra: str,
) -> AsyncIterator[Gateway]:
    """`redis_url` holds the maintenance state; the default (nothing listens there) means
    maintenance is never on."""
    env = {
        "AIOPS_REDIS_URL": redis_url,
        "AIOPS_GATEWAY_MAINTENANCE_KEY": f"maint:{keyring_dir}",
        "AIOPS_GATEWAY_JWT_KEYRING_DIR": str(keyring_dir),
        "AIOPS_GATEWAY_PORT": "0",
        "AIOPS_GATEWAY_HEALTH_CACHE_SECONDS": "0",
        **extra,
    }
    for name, running in backends.items():
        env[f"AIOPS_{name.upper()}_ADDR"] = f"127.0.0.1:{running.port}"
        env[f"AIOPS_{name.upper()}_METRICS_ADDR"] = f"127.0.0.1:{running.metrics_port}"
    settings = GatewaySettings.from_env(env)
    ring = keyring.Keyring.load_or_create(
        keyring_dir, max_token_ttl_seconds=settings.max_token_ttl_seconds
    )
    # The runner gateway/worker.py serves with: slow clients are cut off here too.
    runner = slowclient.GuardedAppRunner(
        gateway_app.create_app(settings, ring),
        slowclient.Limits(settings.header_timeout_seconds, settings.body_timeout_seconds),
        access_log=None,
        **gateway_app.HANDLER_ARGS,
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            yield Gateway(f"http://127.0.0.1:{port}", ring, session, settings)
    finally:
        await runner.cleanup()


@pytest.fixture
async def gateway(
    feedback_running: serve.Running, tmp_path: Path, redis_url: str, deps: Deps
) -> AsyncIterator[Gateway]:
    async with (
        other_services(deps, feedback_running) as others,
        serve_gateway({"feedback": feedback_running, **others}, tmp_path / "keys", redis_url) as gw,
    ):
        yield gw


@pytest.fixture
def make_token(gateway: Gateway) -> Callable[..., str]:
    return gateway.token
