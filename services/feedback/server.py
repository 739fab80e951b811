"""Wiring of the feedback service: the only place its parts are put together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiops.feedback.v1 import feedback_service_pb2_grpc as fb_grpc

from services.feedback import domain, servicer, storage
from services.feedback.settings import FeedbackSettings
from services.kit import errors, health, serve

log = logging.getLogger(__name__)

SERVICE_NAME = "aiops.feedback.v1.FeedbackService"


class Sweeper:
    """Removes index entries of expired feedback in the background."""

    def __init__(self, store: storage.RedisFeedbackStore, interval_seconds: float) -> None:
        self._store = store
        self._interval = interval_seconds
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="feedback-sweeper")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                while await self._store.sweep(time.time()) > 0:
                    pass
            except errors.Unavailable:
                pass  # already logged and counted; the next round tries again

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@contextlib.asynccontextmanager
async def running(settings: FeedbackSettings) -> AsyncIterator[serve.Running]:
    """Starts the feedback server with its Redis client; stops both on exit."""
    client = storage.connect(
        settings.redis_url, settings.redis_timeout_seconds, settings.redis_max_connections
    )
    store = storage.RedisFeedbackStore(client, settings.key_prefix, settings.redis_timeout_seconds)
    book = domain.FeedbackBook(store, settings.ttl_seconds)
    sweeper = Sweeper(store, settings.sweep_interval_seconds)
    try:
        async with serve.grpc_server(
            settings.server,
            service_names=[SERVICE_NAME],
            register=lambda s: fb_grpc.add_FeedbackServiceServicer_to_server(
                servicer.FeedbackServicer(book), s
            ),
            checks=[health.Check("redis", store.ping, settings.redis_timeout_seconds)],
        ) as srv:
            sweeper.start()
            try:
                yield srv
            finally:
                await sweeper.stop()
    finally:
        await client.aclose()
