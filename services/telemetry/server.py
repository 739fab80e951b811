"""Wiring of the telemetry service: the only place its parts are put together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
import grpc
from aiops.anomaly.v1 import anomaly_service_pb2_grpc as anomaly_grpc
from aiops.telemetry.v1 import telemetry_service_pb2_grpc as telemetry_grpc

from services.kit import channels, errors, health, pg, serve
from services.telemetry import (
    alerts,
    collector,
    domain,
    forwarder,
    ingest,
    lease,
    servicer,
    storage,
)
from services.telemetry.settings import TelemetrySettings

log = logging.getLogger(__name__)

SERVICE_NAME = "aiops.telemetry.v1.TelemetryService"
ANOMALY_SERVICE = "aiops.anomaly.v1.AnomalyService"


class Retention:
    """Deletes points (and empty series, resolved alerts) older than the retention."""

    def __init__(
        self,
        store: storage.PostgresTelemetryStore,
        ingestor: ingest.Ingestor,
        interval_seconds: float,
    ) -> None:
        self._store = store
        self._ingestor = ingestor
        self._interval = interval_seconds
        self._task: asyncio.Task[None] | None = None

    async def run_once(self, now: float | None = None) -> int:
        cutoff = (now if now is not None else time.time()) - self._ingestor.retention_seconds
        deleted = await self._store.delete_before(cutoff)
        if deleted:
            self._ingestor.forget()
            log.info("retention applied", extra={"points_deleted": deleted})
        return deleted

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="telemetry-retention")

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except errors.AiopsError:
                pass  # already logged; the next round tries again
            except Exception:
                log.exception("retention round crashed")
            await asyncio.sleep(self._interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def _anomaly_channel(
    stack: contextlib.AsyncExitStack[bool | None], settings: TelemetrySettings, addr: str
) -> grpc.aio.Channel:
    channel = channels.open_channel(
        addr,
        service=ANOMALY_SERVICE,
        tls_settings=settings.server.tls,
        default_timeout_seconds=settings.anomaly_timeout_seconds,
    )
    stack.push_async_callback(channel.close, None)
    return channel


@contextlib.asynccontextmanager
async def running(settings: TelemetrySettings) -> AsyncIterator[serve.Running]:
    """Starts the telemetry server with its pool, collector, forwarder and retention."""
    async with contextlib.AsyncExitStack() as stack:
        db = await stack.enter_async_context(
            pg.pool(
                settings.database_url,
                schema=settings.database_schema,
                min_size=0,  # start (not ready) even while the database is unreachable
                max_size=settings.database_pool_size,
                command_timeout=settings.database_timeout_seconds,
            )
        )
        store = storage.PostgresTelemetryStore(db, settings.database_timeout_seconds)
        migrator = pg.Migrator(store.migrate, "telemetry", timeout_seconds=30.0)
        await migrator.start()
        stack.push_async_callback(migrator.stop)
        ingestor = ingest.Ingestor(store, settings.retention_seconds, settings.max_series)
        reader = domain.Reader(store)
        book = alerts.AlertBook(store)
        session = await stack.enter_async_context(
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        )
        sink: forwarder.Router | None = None
        if settings.forward_enabled:
            sink = forwarder.Router(
                {
                    addr: forwarder.Forwarder(
                        anomaly_grpc.AnomalyServiceStub(_anomaly_channel(stack, settings, addr)),
                        capacity=settings.forward_buffer_points,
                        batch_size=settings.forward_batch_points,
                        timeout_seconds=settings.anomaly_timeout_seconds,
                        target=addr,
                    )
                    for addr in settings.anomaly_replicas or (settings.anomaly_addr,)
                }
            )
            sink.start()
            stack.push_async_callback(sink.stop)
        collector_lease = lease.AdvisoryLease(
            settings.database_url, settings.database_schema, settings.lease_name
        )
        collect = collector.Collector(
            collector.Config(
                targets=settings.scrape_targets,
                raw_metrics=frozenset(settings.raw_metrics),
                prometheus_url=settings.prometheus_url,
                prometheus_queries=settings.prometheus_queries,
                interval=settings.collect_interval_seconds,
                timeout=settings.scrape_timeout_seconds,
                window=settings.window_seconds,
            ),
            session,
            ingestor,
            store,
            collector_lease,
            sink,
        )
        stack.push_async_callback(collector_lease.release)
        retention = Retention(store, ingestor, settings.retention_interval_seconds)
        srv = await stack.enter_async_context(
            serve.grpc_server(
                settings.server,
                service_names=[SERVICE_NAME],
                register=lambda s: telemetry_grpc.add_TelemetryServiceServicer_to_server(
                    servicer.TelemetryServicer(ingestor, reader, book, collect, sink), s
                ),
                checks=[
                    health.Check("postgres", store.ping, 1.0),
                    health.Check("migrations", migrator.check, 1.0),
                ],
            )
        )
        retention.start()
        stack.push_async_callback(retention.stop)
        if settings.collector_enabled:
            collect.start()
            stack.push_async_callback(collect.stop)
        yield srv
