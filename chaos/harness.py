"""The suite every fault scenario runs against: `aiops run` (bench.suite.Suite) on free
loopback ports, with its own Redis and Postgres so that a scenario can kill them.

One harness serves every scenario of a `make chaos` run (and of the short e2e versions),
so the suite starts once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from types import TracebackType

import aiohttp
import psutil  # type: ignore[import-untyped]

from bench.suite import Suite
from services import supervisor
from services.kit import local_servers

SERVICES = ("feedback", "telemetry", "anomaly", "remediation")

# Short drains keep the scenarios quick; a checkpoint every half second and a collector
# every second give the anomaly and telemetry checks something to resume.
CHAOS_ENV = {
    "AIOPS_SHUTDOWN_DRAIN_SECONDS": "0.5",
    "AIOPS_SHUTDOWN_GRACE_SECONDS": "5",
    "AIOPS_GATEWAY_WORKERS": "2",
    "AIOPS_ANOMALY_CHECKPOINT_INTERVAL_SECONDS": "0.5",
    "AIOPS_TELEMETRY_COLLECT_INTERVAL_SECONDS": "1",
    "AIOPS_GATEWAY_HEALTH_CACHE_SECONDS": "0.2",
}


class Harness:
    """Redis, Postgres and the suite; tokens for the roles the scenarios use."""

    def __init__(self) -> None:
        self.redis = local_servers.LocalRedis(Path(Suite.scratch("chaos-redis")), appendonly=True)
        self.postgres = local_servers.LocalPostgres(
            Path(Suite.scratch("chaos-postgres")), ephemeral=True
        )
        self._suite: Suite | None = None
        self.tokens: dict[str, str] = {}

    @property
    def suite(self) -> Suite:
        assert self._suite is not None, "harness not started"
        return self._suite

    @property
    def base(self) -> str:
        return self.suite.base

    def __enter__(self) -> Harness:
        try:
            self.redis.start()
            self.postgres.start()
            suite = Suite(
                AIOPS_REDIS_URL=self.redis.url, AIOPS_DATABASE_URL=self.postgres.url, **CHAOS_ENV
            )
            self._suite = suite.__enter__()
            for role in ("operator", "viewer", "agent"):
                self.tokens[role] = suite.token(role)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._suite is not None:
            self._suite.__exit__(None, None, None)
            self._suite = None
        self.postgres.close()
        self.redis.close()

    def session(self) -> aiohttp.ClientSession:
        """A client for the load: keep-alive connections, as real clients use."""
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256),
            timeout=aiohttp.ClientTimeout(total=15),
        )

    def service_pid(self, name: str) -> int:
        """The pid of the one running process of service `name`."""
        module = f"services.{name}"
        found = []
        for proc in psutil.Process(self.suite.process.pid).children():
            try:
                argv = proc.cmdline()
            except psutil.Error:
                continue
            if argv[-2:] == ["-m", module] and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        if len(found) != 1:
            raise RuntimeError(f"expected one {name} process, found {found}")
        pid: int = found[0]
        return pid

    def kill9(self, name: str) -> int:
        """SIGKILLs service `name` (the supervisor restarts it); returns the old pid."""
        pid = self.service_pid(name)
        os.kill(pid, signal.SIGKILL)
        return pid

    async def rolling_restart(self, name: str) -> str:
        """Asks the suite's supervisor to replace `name` without a gap; its answer."""
        results = await asyncio.to_thread(
            supervisor.request_restart, self.suite.state, [name], 120.0
        )
        return results.get(name, "no answer")

    async def backend_status(self, session: aiohttp.ClientSession, name: str) -> str:
        try:
            async with session.get(self.base + "/health") as resp:
                body = await resp.json(content_type=None)
            return str(body.get("backends", {}).get(name, "UNKNOWN"))
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return "GATEWAY_UNREACHABLE"

    async def wait_serving(
        self, session: aiohttp.ClientSession, names: tuple[str, ...], within: float = 60.0
    ) -> float:
        """Polls the gateway's /health until every backend in `names` is SERVING; returns
        the time it became so (monotonic)."""
        deadline = time.monotonic() + within
        while True:
            statuses = [await self.backend_status(session, n) for n in names]
            if all(s == "SERVING" for s in statuses):
                return time.monotonic()
            if time.monotonic() > deadline:
                raise TimeoutError(f"backends {names} not SERVING: {statuses}")
            await asyncio.sleep(0.1)

    async def metric(self, session: aiohttp.ClientSession, service: str, name: str) -> float:
        """The value of an unlabelled metric on a service's own metrics port (0 if absent)."""
        addr = self.suite.env[f"AIOPS_{service.upper()}_METRICS_ADDR"]
        async with session.get(f"http://{addr}/metrics") as resp:
            text = await resp.text()
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{}"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0
