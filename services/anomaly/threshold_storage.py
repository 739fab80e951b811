"""PostgreSQL storage of learned thresholds: offsets, their audit trail and the names of
feedback already applied (tables created by `storage.MIGRATIONS`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import asyncpg

from services.anomaly import learning
from services.kit import pg


def _row(r: asyncpg.Record) -> learning.Row:
    return learning.Row(
        r["series"],
        r["detector"],
        r["learned_offset"],
        r["confirmed_count"],
        r["false_positive_count"],
        r["update_time"],
        r["signature"],
    )


_ROW = (
    "series, detector, learned_offset, confirmed_count, false_positive_count, update_time,"
    " signature"
)
_AUDIT = (
    "INSERT INTO anomaly_threshold_audit (series, detector, old_offset, new_offset, cause,"
    " feedback, actor, reason, at, signature)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
)
_UPSERT = (
    f"INSERT INTO anomaly_thresholds ({_ROW}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
    " ON CONFLICT (series, detector, signature) DO UPDATE SET"
    " learned_offset = excluded.learned_offset,"
    " confirmed_count = excluded.confirmed_count,"
    " false_positive_count = excluded.false_positive_count, update_time = excluded.update_time"
)


class PostgresThresholdStore:
    """Learned offsets, their audit trail and the names of feedback already applied."""

    def __init__(self, db: asyncpg.Pool, timeout_seconds: float = 5.0) -> None:
        self._db = db
        self._timeout = timeout_seconds

    async def load(self) -> list[learning.Row]:
        rows = await pg.call(
            "load thresholds",
            lambda: self._db.fetch(f"SELECT {_ROW} FROM anomaly_thresholds"),
            self._timeout,
        )
        return [_row(r) for r in rows]

    async def apply(
        self,
        lessons: Sequence[learning.Lesson],
        update: Callable[[learning.Row | None, learning.Lesson], learning.Row],
    ) -> tuple[list[learning.Row], list[learning.Change], int]:
        async def op() -> tuple[list[learning.Row], list[learning.Change], int]:
            changed: dict[tuple[str, str], learning.Row] = {}
            changes: list[learning.Change] = []
            duplicates = 0
            async with self._db.acquire() as conn, conn.transaction():
                for lesson in sorted(lessons, key=lambda x: x.create_time):
                    fresh = await conn.fetchval(
                        "INSERT INTO anomaly_applied_feedback (name, applied_at)"
                        " VALUES ($1, extract(epoch FROM now())) ON CONFLICT DO NOTHING"
                        " RETURNING name",
                        lesson.name,
                    )
                    if fresh is None:
                        duplicates += 1
                        continue
                    found = await conn.fetchrow(
                        f"SELECT {_ROW} FROM anomaly_thresholds WHERE series = $1"
                        " AND detector = $2 AND signature = $3 FOR UPDATE",
                        lesson.series,
                        lesson.detector,
                        lesson.signature,
                    )
                    old = _row(found) if found is not None else None
                    new = update(old, lesson)
                    await conn.execute(
                        _UPSERT, new.series, new.detector, new.learned_offset,
                        new.confirmed_count, new.false_positive_count, new.update_time,
                        new.signature,
                    )  # fmt: skip
                    change = learning.Change(
                        new.series, new.detector, old.learned_offset if old else 0.0,
                        new.learned_offset, lesson.verdict.value, lesson.name, "", "",
                        new.update_time, new.signature,
                    )  # fmt: skip
                    await conn.execute(
                        _AUDIT, change.series, change.detector, change.old_offset,
                        change.new_offset, change.cause, change.feedback, change.actor,
                        change.reason, change.at, change.signature,
                    )  # fmt: skip
                    changes.append(change)
                    changed[(new.series, new.detector)] = new
            return list(changed.values()), changes, duplicates

        return await pg.call("apply feedback", op, self._timeout)

    async def reset(
        self,
        key: learning.Key,
        row: Callable[[learning.Row], learning.Row],
        actor: str,
        reason: str,
        now: float,
    ) -> learning.Row | None:
        async def op() -> learning.Row | None:
            async with self._db.acquire() as conn, conn.transaction():
                found = await conn.fetchrow(
                    f"SELECT {_ROW} FROM anomaly_thresholds WHERE series = $1"
                    " AND detector = $2 AND signature = $3 FOR UPDATE",
                    *key,
                )
                if found is None:
                    return None
                old = _row(found)
                new = row(old)
                await conn.execute(
                    _UPSERT, new.series, new.detector, new.learned_offset,
                    new.confirmed_count, new.false_positive_count, new.update_time,
                    new.signature,
                )  # fmt: skip
                await conn.execute(
                    _AUDIT, key[0], key[1], old.learned_offset, new.learned_offset, "reset",
                    "", actor, reason, now, key[2],
                )  # fmt: skip
                return new

        return await pg.call("reset threshold", op, self._timeout)

    async def lookup_series(self, anomaly_ids: Sequence[str]) -> Mapping[str, tuple[str, str, str]]:
        rows = await pg.call(
            "lookup anomalies",
            lambda: self._db.fetch(
                "SELECT id, series, detector, signature FROM anomaly_events"
                " WHERE id = ANY($1::text[])",
                list(anomaly_ids),
            ),
            self._timeout,
        )
        return {
            r["id"]: (r["series"], r["detector"], learning.alarm_kind(r["signature"])) for r in rows
        }

    async def audit(self, series: str) -> list[learning.Change]:
        rows = await pg.call(
            "read audit",
            lambda: self._db.fetch(
                "SELECT series, detector, old_offset, new_offset, cause, feedback, actor,"
                " reason, at, signature FROM anomaly_threshold_audit WHERE series = $1"
                " ORDER BY id",
                series,
            ),
            self._timeout,
        )
        return [
            learning.Change(
                r["series"],
                r["detector"],
                r["old_offset"],
                r["new_offset"],
                r["cause"],
                r["feedback"],
                r["actor"],
                r["reason"],
                r["at"],
                r["signature"],
            )
            for r in rows
        ]
