"""Wiring of the anomaly service: the only place its parts are put together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiops.anomaly.v1 import anomaly_service_pb2_grpc as anomaly_grpc
from aiops.feedback.v1 import feedback_service_pb2_grpc as fb_grpc
from aiops.remediation.v1 import remediation_service_pb2_grpc as rem_grpc

from services.anomaly import (
    domain,
    drift_loop,
    learning,
    peers,
    scoring,
    servicer,
    storage,
    threshold_storage,
    workers,
)
from services.anomaly.settings import AnomalySettings
from services.kit import channels, errors, health, pg, serve, sharding

log = logging.getLogger(__name__)

SERVICE_NAME = "aiops.anomaly.v1.AnomalyService"


class Periodic:
    """Runs `step` every `interval` seconds until stopped; an outage is logged, not fatal."""

    def __init__(self, name: str, interval: float, step: Callable[[], Awaitable[object]]) -> None:
        self._name = name
        self._interval = interval
        self._step = step
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"anomaly-{self._name}")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._step()
            except errors.AiopsError as exc:
                log.warning(
                    "background step failed", extra={"step": self._name, "reason": exc.reason}
                )
            except Exception:
                # A bug must not stop the loop for good; it is logged with its traceback.
                log.exception("background step crashed", extra={"step": self._name})

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


@contextlib.asynccontextmanager
async def running(settings: AnomalySettings) -> AsyncIterator[serve.Running]:
    """Starts the anomaly server with its Postgres pool, detector workers and peers."""
    async with contextlib.AsyncExitStack() as stack:
        db = await stack.enter_async_context(
            pg.pool(settings.database_url, schema=settings.database_schema, min_size=0)
        )
        migrator = pg.Migrator(
            lambda: pg.migrate(db, "anomaly", storage.MIGRATIONS), "anomaly", timeout_seconds=5.0
        )
        await migrator.start()
        stack.push_async_callback(migrator.stop)
        store = storage.PostgresAnomalyStore(db)
        scorer: workers.InlineScorer | workers.PoolScorer = (
            workers.PoolScorer(settings.scoring_workers)
            if settings.scoring_workers
            else workers.InlineScorer()
        )
        stack.callback(scorer.close)
        await scorer.start()
        rem_channel = channels.open_channel(
            settings.remediation_addr,
            service="aiops.remediation.v1.RemediationService",
            tls_settings=settings.server.tls,
            default_timeout_seconds=settings.peer_timeout_seconds,
        )
        stack.push_async_callback(rem_channel.close, None)
        suggester = peers.RemediationSuggester(
            rem_grpc.RemediationServiceStub(rem_channel), settings.peer_timeout_seconds
        )
        fb_channel = channels.open_channel(
            settings.feedback_addr,
            service="aiops.feedback.v1.FeedbackService",
            idempotent_methods=("ListFeedback", "GetFeedbackStats"),
            default_timeout_seconds=settings.peer_timeout_seconds,
        )
        stack.push_async_callback(fb_channel.close, None)
        thresholds = learning.Thresholds(
            threshold_storage.PostgresThresholdStore(db),
            learning.Policy(
                settings.threshold,
                settings.threshold_min,
                settings.threshold_max,
                settings.offset_bound,
                settings.offset_step,
                settings.offset_half_life_seconds,
                settings.offset_confirm_step,
            ),
            time.time,
        )
        if migrator.done.is_set():
            try:
                await thresholds.load()
            except errors.Unavailable:
                log.warning("thresholds not loaded yet")
        puller = peers.FeedbackPuller(
            fb_grpc.FeedbackServiceStub(fb_channel),
            thresholds,
            settings.peer_timeout_seconds,
            time.time,
        )
        monitor = scoring.Monitor(
            scorer,
            store,
            suggester,
            thresholds,
            owns=sharding.owner_check(settings.replicas, settings.replica_self),
            max_series=settings.max_series,
            close_after=settings.close_after_points,
            recent_size=2 * settings.drift_window,
            kind_depth=settings.alarm_kind_signals,
            clock=time.time,
        )
        book = domain.AnomalyBook(store, time.time)
        runner = workers.CpuRunner(settings.drift_workers)
        stack.callback(runner.close)
        drifts = drift_loop.DriftTracker(
            monitor,
            storage.PostgresDriftStore(db),
            runner,
            settings.drift_window,
            settings.drift_alpha,
            time.time,
        )
        drift_loop_task = Periodic("drift", settings.drift_interval_seconds, drifts.step)

        async def checkpoint() -> None:
            if not thresholds.loaded and migrator.done.is_set():
                await thresholds.load()
            await monitor.flush()
            await monitor.checkpoint()

        checkpointer = Periodic("checkpoint", settings.checkpoint_interval_seconds, checkpoint)

        async def final_checkpoint() -> None:
            # Runs after the gRPC server stopped: nothing scores any more.
            await checkpointer.stop()
            try:
                await checkpoint()
            except errors.Unavailable:
                log.warning("final checkpoint failed")

        stack.push_async_callback(final_checkpoint)
        srv = await stack.enter_async_context(
            serve.grpc_server(
                settings.server,
                service_names=[SERVICE_NAME],
                register=lambda s: anomaly_grpc.add_AnomalyServiceServicer_to_server(
                    servicer.AnomalyServicer(monitor, book, drifts, thresholds, settings.max_batch),
                    s,
                ),
                checks=[
                    health.Check("postgres", store.ping),
                    health.Check("migrations", migrator.check),
                ],
            )
        )
        suggester.start()
        stack.push_async_callback(suggester.stop)
        checkpointer.start()
        drift_loop_task.start()
        stack.push_async_callback(drift_loop_task.stop)
        if settings.feedback_poll_seconds > 0:
            pull_task = Periodic("feedback", settings.feedback_poll_seconds, puller.step)
            pull_task.start()
            stack.push_async_callback(pull_task.stop)
        yield srv
