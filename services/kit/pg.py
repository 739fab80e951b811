"""PostgreSQL for the services that need it: one asyncpg pool per process, versioned
migrations applied on start, and errors mapped to UNAVAILABLE.

Migrations are `(version, sql)` pairs per service, applied in order inside one transaction
each, under a transaction-scoped advisory lock, so several replicas starting at once apply
each migration exactly once. Applied versions are recorded in `aiops_migrations`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg

from services.kit import errors, tracing

log = logging.getLogger(__name__)
T = TypeVar("T")


_TABLE_LOCK = zlib.crc32(b"aiops-migrations")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    sql: str


@asynccontextmanager
async def pool(
    url: str,
    *,
    schema: str | None = None,
    min_size: int = 1,
    max_size: int = 10,
    command_timeout: float = 5.0,
) -> AsyncIterator[asyncpg.Pool]:
    """Opens a pool; `schema` sets the search_path (tests give each test its own schema)."""
    settings = {"search_path": schema} if schema else None
    opened = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        command_timeout=command_timeout,
        server_settings=settings,
        connection_class=tracing.TracedConnection,
    )
    try:
        yield opened
    finally:
        await opened.close()


async def migrate(db: asyncpg.Pool, service: str, migrations: Sequence[Migration]) -> list[int]:
    """Applies the migrations of `service` that are not applied yet; returns their versions."""
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)):
        raise ValueError(f"{service}: migration versions must be unique and increasing")
    lock = zlib.crc32(f"aiops-migrations:{service}".encode())
    applied: list[int] = []
    async with db.acquire() as conn:
        async with conn.transaction():
            # Concurrent CREATE TABLE IF NOT EXISTS can still collide; the lock serialises it.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _TABLE_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS aiops_migrations ("
                " service text NOT NULL, version integer NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (service, version))"
            )
        for migration in migrations:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", lock)
                done = await conn.fetchval(
                    "SELECT 1 FROM aiops_migrations WHERE service = $1 AND version = $2",
                    service,
                    migration.version,
                )
                if done:
                    continue
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO aiops_migrations (service, version) VALUES ($1, $2)",
                    service,
                    migration.version,
                )
                applied.append(migration.version)
    if applied:
        log.info("migrations applied", extra={"service": service, "versions": applied})
    return applied


# `timeout` is applied inside, where it also maps to UNAVAILABLE; callers pass it in.
async def call(what: str, op: Callable[[], Awaitable[T]], timeout: float = 5.0) -> T:  # noqa: ASYNC109
    """Runs one database operation under a timeout; an unreachable database or a timeout
    becomes UNAVAILABLE with a reason, never a raw driver error."""
    try:
        async with asyncio.timeout(timeout):
            return await op()
    except (
        OSError,
        TimeoutError,
        asyncpg.exceptions.ConnectionDoesNotExistError,
        asyncpg.exceptions.CannotConnectNowError,
        asyncpg.exceptions.InterfaceError,
        # Postgres going away mid-operation: shut down by an operator, or killed while a
        # pooled connection was busy (asyncpg then refuses it: "another operation is in
        # progress"). Nothing was done; the pool replaces the connection.
        asyncpg.exceptions.AdminShutdownError,
        asyncpg.exceptions.PostgresConnectionError,
        asyncpg.exceptions.InternalClientError,
    ) as exc:
        log.warning("postgres unavailable", extra={"op": what, "error": type(exc).__name__})
        raise errors.Unavailable(
            "DATABASE_UNAVAILABLE",
            "The database is unreachable; nothing was changed, retry shortly.",
            retry_after_seconds=1.0,
        ) from exc


async def ping(db: asyncpg.Pool) -> Any:
    """A readiness check: one trivial query."""
    return await db.fetchval("SELECT 1")


class Migrator:
    """Applies a service's migrations at start, or keeps retrying in the background while
    Postgres is unreachable, so the service starts (not ready) before its database is back.

    Args:
        apply: runs the migrations (e.g. `lambda: migrate(db, "anomaly", MIGRATIONS)`).
        service: for logs and the task name.
        timeout_seconds: limit of one attempt.
        retry_seconds: pause between attempts.
        ping: optional readiness ping once the migrations are in (e.g. `lambda: ping(db)`).
    """

    def __init__(
        self,
        apply: Callable[[], Awaitable[object]],
        service: str,
        *,
        timeout_seconds: float = 5.0,
        retry_seconds: float = 1.0,
        ping: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self._apply = apply
        self._service = service
        self._timeout = timeout_seconds
        self._retry = retry_seconds
        self._ping = ping
        self._task: asyncio.Task[None] | None = None
        self.done = asyncio.Event()

    async def _once(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                await self._apply()
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning(
                "migrations pending: database unreachable",
                extra={"service": self._service, "error": type(exc).__name__},
            )
            return False
        self.done.set()
        return True

    async def start(self) -> None:
        if not await self._once():
            self._task = asyncio.create_task(self._loop(), name=f"{self._service}-migrator")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._retry)
            if await self._once():
                return

    async def check(self) -> None:
        """A readiness check: fails until the migrations are applied."""
        if not self.done.is_set():
            raise RuntimeError("migrations not applied")
        if self._ping is not None:
            await self._ping()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
