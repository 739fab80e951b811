"""Readiness from dependency pings: the service is SERVING while every check passes.

`""` (liveness) stays SERVING while the process runs; the full service name (readiness)
follows the checks, which run with a timeout on an interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from grpc_health.v1 import health_pb2
from prometheus_client import Gauge

from services.kit import tracing

log = logging.getLogger(__name__)

DEPENDENCY_UP = Gauge(
    "aiops_dependency_up",
    "1 when the last ping of a dependency succeeded, else 0.",
    ["service", "dependency"],
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class AsyncHealthServicer(Protocol):
    """What the services use of `grpc_health.v1.health.aio.HealthServicer` (grpc-stubs does
    not describe the `aio` module)."""

    async def set(self, service: str, status: int) -> None: ...

    async def enter_graceful_shutdown(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Check:
    """A named dependency ping that raises when the dependency is not usable."""

    name: str
    ping: Callable[[], Awaitable[object]]
    timeout_seconds: float = 0.5


class Readiness:
    """Runs the checks in the background and publishes the result to the health servicer."""

    def __init__(
        self,
        servicer: AsyncHealthServicer,
        service: str,
        names: Sequence[str],
        checks: Sequence[Check],
        interval_seconds: float,
    ) -> None:
        self._servicer = servicer
        self._service = service
        self._names = tuple(names)
        self._checks = tuple(checks)
        self._interval = interval_seconds
        self._task: asyncio.Task[None] | None = None
        self._failing: dict[str, bool] = {}
        self.ready = asyncio.Event()
        """Set the first time every check passed."""

    async def check_once(self) -> bool:
        results = await asyncio.gather(*(self._run(c) for c in self._checks))
        ok = all(results)
        status = SERVING if ok else NOT_SERVING
        for name in self._names:
            await self._servicer.set(name, status)
        if ok:
            self.ready.set()
        return ok

    async def _run(self, check: Check) -> bool:
        try:
            # Pings every second would otherwise each become a trace of their own.
            with tracing.untraced():
                async with asyncio.timeout(check.timeout_seconds):
                    await check.ping()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            DEPENDENCY_UP.labels(self._service, check.name).set(0)
            if not self._failing.get(check.name):
                log.warning(
                    "dependency down", extra={"dependency": check.name, "error": type(exc).__name__}
                )
            self._failing[check.name] = True
            return False
        DEPENDENCY_UP.labels(self._service, check.name).set(1)
        if self._failing.get(check.name):
            log.info("dependency back", extra={"dependency": check.name})
        self._failing[check.name] = False
        return True

    async def start(self) -> None:
        await self.check_once()
        self._task = asyncio.create_task(self._loop(), name=f"readiness-{self._service}")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.check_once()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
