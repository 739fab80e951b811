"""Remediation storage: the append-only audit trail in Postgres, safety state in Redis.

`remediation_audit` gets one row per request, decision and result; a trigger rejects
UPDATE and DELETE, so the trail cannot be rewritten. A remediation is its latest row.
Redis keys under a prefix `p`: `p lock:{target}` (SET NX PX, released by token),
`p cooldown:{target}:{action}` (PX = cooldown), `p rate:{window}` (fixed-window counter),
`p req:{request_id}` (first remediation id), `p kill` (kill switch).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import redis.asyncio as redis
from redis.exceptions import RedisError

from services.kit import errors, pg
from services.remediation import domain
from services.remediation import playbook as pb

log = logging.getLogger(__name__)
T = TypeVar("T")

MIGRATIONS = [
    pg.Migration(
        1,
        """
        CREATE TABLE remediation_audit (
          seq bigserial PRIMARY KEY,
          id text NOT NULL,
          event text NOT NULL,
          actor text NOT NULL,
          recorded_at timestamptz NOT NULL DEFAULT now(),
          state text NOT NULL,
          action text NOT NULL,
          target_kind text NOT NULL,
          target_namespace text NOT NULL,
          target_name text NOT NULL,
          parameters jsonb NOT NULL,
          execute boolean NOT NULL,
          automatic boolean NOT NULL,
          anomaly text NOT NULL,
          signature text NOT NULL,
          series text NOT NULL,
          reason text NOT NULL,
          requester text NOT NULL,
          request_id text NOT NULL,
          approver text NOT NULL,
          approval_comment text NOT NULL,
          commands jsonb NOT NULL,
          output text NOT NULL,
          outcome text NOT NULL,
          rolled_back boolean NOT NULL,
          refusal_reason text NOT NULL,
          duration_ms double precision NOT NULL,
          captures jsonb NOT NULL,
          create_time timestamptz NOT NULL,
          update_time timestamptz NOT NULL
        );
        CREATE INDEX remediation_audit_id ON remediation_audit (id, seq DESC);
        CREATE INDEX remediation_audit_created ON remediation_audit (create_time DESC, id DESC);
        CREATE FUNCTION remediation_audit_append_only() RETURNS trigger
          LANGUAGE plpgsql AS $$
          BEGIN RAISE EXCEPTION 'remediation_audit is append-only'; END $$;
        CREATE TRIGGER remediation_audit_no_rewrite BEFORE UPDATE OR DELETE
          ON remediation_audit FOR EACH ROW EXECUTE FUNCTION remediation_audit_append_only();
        """,
    )
]

_COLUMNS = (
    "id, event, actor, state, action, target_kind, target_namespace, target_name, parameters,"
    " execute, automatic, anomaly, signature, series, reason, requester, request_id, approver,"
    " approval_comment, commands, output, outcome, rolled_back, refusal_reason, duration_ms,"
    " captures, create_time, update_time"
)
_LATEST = "SELECT DISTINCT ON (id) * FROM remediation_audit"


def _ts(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


class PostgresAuditStore:
    def __init__(
        self, db: asyncpg.Pool, timeout_seconds: float, migrated: asyncio.Event | None = None
    ) -> None:
        self._db = db
        self._timeout = timeout_seconds
        self._migrated = migrated

    async def _call(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        if self._migrated is not None and not self._migrated.is_set():
            raise errors.Unavailable(
                "DATABASE_UNAVAILABLE",
                "The audit database is not ready; nothing was changed, retry shortly.",
                retry_after_seconds=1.0,
            )
        return await pg.call(what, op, self._timeout)

    async def append(self, rem: domain.Remediation, event: str, actor: str) -> None:
        values = (
            rem.id,
            event,
            actor,
            rem.state.value,
            rem.action,
            rem.target.kind.value,
            rem.target.namespace,
            rem.target.name,
            json.dumps(dict(rem.parameters)),
            rem.execute,
            rem.automatic,
            rem.anomaly,
            rem.signature,
            rem.series,
            rem.reason,
            rem.requester,
            rem.request_id,
            rem.approver,
            rem.approval_comment,
            json.dumps(list(rem.commands)),
            rem.output,
            rem.outcome.value,
            rem.rolled_back,
            rem.refusal_reason,
            rem.duration_seconds * 1000,
            json.dumps(dict(rem.captures)),
            _ts(rem.create_time),
            _ts(rem.update_time),
        )
        marks = ", ".join(f"${i}" for i in range(1, len(values) + 1))
        sql = f"INSERT INTO remediation_audit ({_COLUMNS}) VALUES ({marks})"
        await self._call("audit append", lambda: self._db.execute(sql, *values))

    async def get(self, remediation_id: str) -> domain.Remediation | None:
        sql = f"{_LATEST} WHERE id = $1 ORDER BY id, seq DESC"
        row = await self._call("audit get", lambda: self._db.fetchrow(sql, remediation_id))
        return _from_row(row) if row else None

    async def events(self, remediation_id: str) -> list[tuple[str, str, str]]:
        """(event, state, actor) of every audit row of one remediation, oldest first."""
        rows = await self._call(
            "audit events",
            lambda: self._db.fetch(
                "SELECT event, state, actor FROM remediation_audit WHERE id = $1 ORDER BY seq",
                remediation_id,
            ),
        )
        return [(r["event"], r["state"], r["actor"]) for r in rows]

    async def list(
        self, flt: domain.Filter, limit: int, after: tuple[float, str] | None
    ) -> list[domain.Remediation]:
        where: list[str] = []
        args: list[Any] = []

        def add(cond: str, value: Any) -> None:
            args.append(value)
            where.append(cond.replace("?", f"${len(args)}"))

        if flt.state is not None:
            add("state = ?", flt.state.value)
        if flt.action:
            add("action = ?", flt.action)
        if flt.target_kind is not None:
            add("target_kind = ?", flt.target_kind.value)
        if flt.target_namespace:
            add("target_namespace = ?", flt.target_namespace)
        if flt.target_name:
            add("target_name = ?", flt.target_name)
        if flt.anomaly:
            add("anomaly = ?", flt.anomaly)
        if flt.start_time is not None:
            add("create_time >= ?", _ts(flt.start_time))
        if flt.end_time is not None:
            add("create_time < ?", _ts(flt.end_time))
        if after is not None:
            args += [_ts(after[0]), after[1]]
            where.append(f"(create_time, id) < (${len(args) - 1}, ${len(args)})")
        args.append(limit)
        cond = f"WHERE {' AND '.join(where)}" if where else ""
        sql = (
            f"SELECT * FROM ({_LATEST} ORDER BY id, seq DESC) latest {cond}"
            f" ORDER BY create_time DESC, id DESC LIMIT ${len(args)}"
        )
        rows = await self._call("audit list", lambda: self._db.fetch(sql, *args))
        return [_from_row(r) for r in rows]


def _from_row(row: asyncpg.Record) -> domain.Remediation:
    return domain.Remediation(
        id=row["id"],
        action=row["action"],
        target=pb.Target(
            pb.TargetKind(row["target_kind"]), row["target_namespace"], row["target_name"]
        ),
        parameters=json.loads(row["parameters"]),
        state=domain.State(row["state"]),
        execute=row["execute"],
        anomaly=row["anomaly"],
        signature=row["signature"],
        series=row["series"],
        reason=row["reason"],
        requester=row["requester"],
        request_id=row["request_id"],
        create_time=row["create_time"].timestamp(),
        update_time=row["update_time"].timestamp(),
        automatic=row["automatic"],
        approver=row["approver"],
        approval_comment=row["approval_comment"],
        commands=tuple(json.loads(row["commands"])),
        output=row["output"],
        outcome=domain.Outcome(row["outcome"]),
        rolled_back=row["rolled_back"],
        refusal_reason=row["refusal_reason"],
        duration_seconds=row["duration_ms"] / 1000,
        captures=json.loads(row["captures"]),
    )


_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisGuard:
    def __init__(
        self, client: redis.Redis, prefix: str, timeout_seconds: float, idempotency_ttl: float
    ) -> None:
        self._r = client
        self._p = prefix
        self._timeout = timeout_seconds
        self._idem_ttl_ms = int(idempotency_ttl * 1000)

    async def _call(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        try:
            return await op()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("redis unavailable", extra={"op": what, "error": type(exc).__name__})
            raise errors.Unavailable(
                "REDIS_UNAVAILABLE",
                "The remediation safety store is unreachable; nothing was run, retry shortly.",
                retry_after_seconds=1.0,
            ) from exc

    async def claim_request(
        self, request_id: str, remediation_id: str, ttl_seconds: float
    ) -> str | None:
        key = f"{self._p}req:{request_id}"

        async def op() -> str | None:
            if await self._r.set(key, remediation_id, nx=True, px=int(ttl_seconds * 1000)):
                return None
            first = await self._r.get(key)
            return first.decode() if isinstance(first, bytes) else first

        return await self._call("claim", op)

    async def confirm_request(self, request_id: str) -> None:
        await self._call(
            "claim", lambda: self._r.pexpire(f"{self._p}req:{request_id}", self._idem_ttl_ms)
        )

    async def release_request(self, request_id: str) -> None:
        await self._call("claim", lambda: self._r.delete(f"{self._p}req:{request_id}"))

    async def lock(self, target: str, ttl_seconds: float) -> str | None:
        token = secrets.token_hex(16)
        ok = await self._call(
            "lock",
            lambda: self._r.set(
                f"{self._p}lock:{target}", token, nx=True, px=int(ttl_seconds * 1000)
            ),
        )
        return token if ok else None

    async def unlock(self, target: str, token: str) -> None:
        await self._call(
            "unlock",
            lambda: self._r.eval(_UNLOCK, 1, f"{self._p}lock:{target}", token),
        )

    async def cooldown_remaining(self, target: str, action: str) -> float:
        ms = await self._call(
            "cooldown", lambda: self._r.pttl(f"{self._p}cooldown:{target}:{action}")
        )
        return max(0, int(ms)) / 1000

    async def start_cooldown(self, target: str, action: str, seconds: float) -> None:
        if seconds <= 0:
            return
        await self._call(
            "cooldown",
            lambda: self._r.set(
                f"{self._p}cooldown:{target}:{action}", "1", px=int(seconds * 1000)
            ),
        )

    async def take_rate(self, limit: int, window_seconds: float) -> float:
        now = time.time()
        window = int(now // window_seconds)
        key = f"{self._p}rate:{window}"

        async def op() -> int:
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, int(window_seconds) + 1)
                count, _ = await pipe.execute()
                return int(count)

        count = await self._call("rate", op)
        if count <= limit:
            return 0.0
        return max(0.05, (window + 1) * window_seconds - now)

    async def kill_switch(self) -> bool:
        return bool(await self._call("kill", lambda: self._r.exists(f"{self._p}kill")))

    async def set_kill_switch(self, engaged: bool) -> None:
        key = f"{self._p}kill"
        if engaged:
            await self._call("kill", lambda: self._r.set(key, "1"))
        else:
            await self._call("kill", lambda: self._r.delete(key))

    async def ping(self) -> Any:
        return await self._r.ping()
