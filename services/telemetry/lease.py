"""The collector lease: which replica collects. A PostgreSQL session-level advisory lock."""

from __future__ import annotations

import contextlib
import hashlib
import logging

import asyncpg

log = logging.getLogger(__name__)


def lease_key(schema: str, name: str) -> int:
    """The advisory lock id of a lease: per schema, so test schemas never share one."""
    digest = hashlib.blake2b(f"aiops-telemetry:{schema}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class AdvisoryLease:
    """The collector lease: a session-level advisory lock held on a dedicated connection.

    Postgres releases it the moment the holder's session ends, so a dead holder (process
    killed, connection lost) frees it at once; TCP keepalives bound a silent network loss.
    """

    def __init__(
        self, url: str, schema: str | None, name: str, timeout_seconds: float = 2.0
    ) -> None:
        self._url = url
        self._schema = schema
        self._name = name
        self._timeout = timeout_seconds
        self._conn: asyncpg.Connection | None = None
        self._key: int | None = None
        self._unreachable = False

    @property
    def held(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def try_acquire(self) -> bool:
        """Takes the lease if it is free; True while this process holds it."""
        if self.held:
            return await self.check()
        try:
            conn = await asyncpg.connect(
                self._url,
                timeout=self._timeout,
                server_settings={
                    **({"search_path": self._schema} if self._schema else {}),
                    "tcp_keepalives_idle": "5",
                    "tcp_keepalives_interval": "2",
                    "tcp_keepalives_count": "3",
                    "application_name": "aiops-telemetry-lease",
                },
            )
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            if not self._unreachable:
                log.warning("lease: database unreachable", extra={"error": type(exc).__name__})
            self._unreachable = True
            return False
        self._unreachable = False
        try:
            if self._key is None:
                schema = await conn.fetchval("SELECT current_schema()")
                self._key = lease_key(str(schema), self._name)
            got = await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._key, timeout=2)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            got = False
        if not got:
            await conn.close()
            return False
        self._conn = conn
        return True

    async def check(self) -> bool:
        """True if the lease is still held (its session answers)."""
        if self._conn is None:
            return False
        try:
            await self._conn.fetchval("SELECT 1", timeout=self._timeout)
            return True
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("lease lost", extra={"error": type(exc).__name__})
            await self.release()
            return False

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=1)
            if not conn.is_closed():
                conn.terminate()
