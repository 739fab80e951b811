"""Wiring of the remediation service: the only place its parts are put together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import redis.asyncio as redis
from aiops.anomaly.v1 import anomaly_service_pb2_grpc as an_grpc
from aiops.feedback.v1 import feedback_service_pb2_grpc as fb_grpc
from aiops.remediation.v1 import remediation_service_pb2_grpc as remediation_grpc

from services.kit import channels, health, pg, serve, tracing
from services.remediation import (
    automation,
    clients,
    domain,
    executors,
    ranking,
    remediator,
    servicer,
    storage,
)
from services.remediation.settings import RemediationSettings

log = logging.getLogger(__name__)

SERVICE_NAME = "aiops.remediation.v1.RemediationService"


class Migrator:
    """Applies the migrations at start, retrying in the background while Postgres is down,
    so the service starts (not ready) before its database is back."""

    def __init__(self, db: asyncpg.Pool, timeout_seconds: float) -> None:
        self._db = db
        self._timeout = timeout_seconds
        self.done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _once(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                await pg.migrate(self._db, "remediation", storage.MIGRATIONS)
        except (OSError, TimeoutError, asyncpg.exceptions.CannotConnectNowError) as exc:
            log.warning("migrations pending", extra={"error": type(exc).__name__})
            return False
        self.done.set()
        return True

    async def start(self) -> None:
        if not await self._once():
            self._task = asyncio.create_task(self._retry(), name="remediation-migrate")

    async def _retry(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if await self._once():
                return

    async def check(self) -> None:
        if not self.done.is_set():
            raise RuntimeError("migrations not applied")
        await pg.ping(self._db)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _executor(
    settings: RemediationSettings, session: aiohttp.ClientSession, secret: bytes
) -> domain.Executor:
    if settings.executor == "kubernetes":
        return executors.KubernetesExecutor(
            session,
            secret,
            settings.command_timeout_seconds,
            {"PATH": settings.kubectl_path},
            settings.maintenance_token_file,
        )
    if settings.executor == "webhook":
        return executors.WebhookExecutor(
            session, settings.webhook_url, secret, settings.command_timeout_seconds
        )
    return executors.DryRunExecutor()


def config(settings: RemediationSettings) -> remediator.Config:
    return remediator.Config(
        policy=domain.Policy(
            settings.allowed_namespaces, settings.default_namespace, settings.max_replicas
        ),
        prior=ranking.Prior(settings.prior_strength, settings.max_evidence),
        kube_context=settings.kube_context,
        maintenance_url=settings.maintenance_url,
        rate_limit=settings.rate_limit,
        rate_window_seconds=settings.rate_window_seconds,
        lock_ttl_seconds=settings.lock_ttl_seconds,
        auto_enabled=settings.auto_enabled,
        verify_window_seconds=settings.verify_window_seconds,
    )


@contextlib.asynccontextmanager
async def running(settings: RemediationSettings) -> AsyncIterator[serve.Running]:
    """Starts the remediation server with its pool, Redis client, peer channels and HTTP
    session; a bad playbook stops it before any port opens."""
    book = remediator.PlaybookHolder(settings.playbook_path)
    secret = (
        settings.webhook_secret_file.read_bytes().strip() if settings.webhook_secret_file else b""
    )
    async with contextlib.AsyncExitStack() as stack:
        db = await stack.enter_async_context(
            pg.pool(settings.database_url, schema=settings.database_schema, min_size=0)
        )
        migrator = Migrator(db, settings.storage_timeout_seconds * 5)
        await migrator.start()
        stack.push_async_callback(migrator.stop)
        client = tracing.instrument_redis(
            redis.Redis.from_url(
                settings.redis_url,
                socket_timeout=settings.storage_timeout_seconds,
                socket_connect_timeout=settings.storage_timeout_seconds,
            )
        )
        stack.push_async_callback(client.aclose)
        session = await stack.enter_async_context(aiohttp.ClientSession())
        fb_channel = await stack.enter_async_context(
            channels.open_channel(
                settings.feedback_addr,
                service=clients.FEEDBACK_SERVICE,
                idempotent_methods=["GetFeedbackStats", "SubmitFeedback"],
                default_timeout_seconds=settings.peer_timeout_seconds,
            )
        )
        an_channel = await stack.enter_async_context(
            channels.open_channel(
                settings.anomaly_addr,
                service=clients.ANOMALY_SERVICE,
                idempotent_methods=["GetAnomaly"],
                default_timeout_seconds=settings.peer_timeout_seconds,
            )
        )
        store = storage.PostgresAuditStore(db, settings.storage_timeout_seconds, migrator.done)
        guard = storage.RedisGuard(
            client, settings.key_prefix, settings.storage_timeout_seconds, 86400.0
        )
        engine = remediator.Remediator(
            book,
            store,
            guard,
            clients.FeedbackClient(
                fb_grpc.FeedbackServiceStub(fb_channel), settings.peer_timeout_seconds
            ),
            clients.AnomalyClient(
                an_grpc.AnomalyServiceStub(an_channel), settings.peer_timeout_seconds
            ),
            _executor(settings, session, secret),
            config(settings),
        )
        stack.push_async_callback(engine.stop)
        log.info(
            "playbook loaded",
            extra={
                "digest": book.current.digest,
                "actions": len(book.current.actions),
                "executor": settings.executor,
            },
        )
        async with serve.grpc_server(
            settings.server,
            service_names=[SERVICE_NAME],
            register=lambda s: remediation_grpc.add_RemediationServiceServicer_to_server(
                servicer.RemediationServicer(
                    engine, automation.Automation(engine, guard, settings.auto_enabled)
                ),
                s,
            ),
            checks=[
                health.Check("postgres", migrator.check, settings.storage_timeout_seconds),
                health.Check("redis", guard.ping, settings.storage_timeout_seconds),
            ],
        ) as srv:
            yield srv
