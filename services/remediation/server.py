"""Wiring of the remediation service: the only place its parts are put together."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
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
        migrator = pg.Migrator(
            lambda: pg.migrate(db, "remediation", storage.MIGRATIONS),
            "remediation",
            timeout_seconds=settings.storage_timeout_seconds * 5,
            ping=lambda: pg.ping(db),
        )
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
                tls_settings=settings.server.tls,
                default_timeout_seconds=settings.peer_timeout_seconds,
            )
        )
        an_channel = await stack.enter_async_context(
            channels.open_channel(
                settings.anomaly_addr,
                service=clients.ANOMALY_SERVICE,
                idempotent_methods=["GetAnomaly"],
                tls_settings=settings.server.tls,
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
