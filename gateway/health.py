"""Backend health through `grpc.health.v1`, with a short deadline and a brief cache."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.settings import Backend


class BackendHealth:
    def __init__(
        self,
        backends: Sequence[Backend],
        channels: Mapping[str, grpc.aio.Channel],
        timeout_seconds: float,
        cache_seconds: float,
    ) -> None:
        self._backends = backends
        self._stubs = {b.name: health_pb2_grpc.HealthStub(channels[b.name]) for b in backends}
        self._timeout = timeout_seconds
        self._cache_seconds = cache_seconds
        self._cached: tuple[float, dict[str, str]] | None = None
        self._inflight: asyncio.Task[dict[str, str]] | None = None

    async def _check(self, backend: Backend) -> str:
        try:
            reply = await self._stubs[backend.name].Check(
                health_pb2.HealthCheckRequest(service=backend.service), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as err:
            return "UNREACHABLE" if err.code() is grpc.StatusCode.UNAVAILABLE else err.code().name
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    async def _check_all(self) -> dict[str, str]:
        results = await asyncio.gather(*(self._check(b) for b in self._backends))
        statuses = {b.name: r for b, r in zip(self._backends, results, strict=True)}
        self._cached = (time.monotonic(), statuses)
        return statuses

    async def statuses(self) -> dict[str, str]:
        """Each backend's status name (`SERVING`, `NOT_SERVING`, `UNREACHABLE`, ...)."""
        if self._cached and time.monotonic() - self._cached[0] < self._cache_seconds:
            return self._cached[1]
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self._check_all())
        return await asyncio.shield(self._inflight)
