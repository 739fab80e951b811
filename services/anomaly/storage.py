"""PostgreSQL storage of the anomaly service: schema, events, checkpoints and drift states
(learned thresholds are in `threshold_storage`)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from services.anomaly import domain, drift
from services.kit import pg

MIGRATIONS = [
    pg.Migration(
        1,
        """
        CREATE TABLE anomaly_events (
            id text PRIMARY KEY,
            series text NOT NULL,
            labels jsonb NOT NULL DEFAULT '{}',
            state text NOT NULL,
            severity smallint NOT NULL,
            start_time double precision NOT NULL,
            end_time double precision,
            peak_score double precision NOT NULL,
            peak_time double precision NOT NULL,
            peak_value double precision NOT NULL,
            signals text[] NOT NULL,
            explanation text NOT NULL,
            signature text NOT NULL,
            detector text NOT NULL,
            threshold double precision NOT NULL,
            acknowledger text NOT NULL DEFAULT '',
            acknowledge_comment text NOT NULL DEFAULT '',
            acknowledge_time double precision,
            create_time double precision NOT NULL,
            update_time double precision NOT NULL
        );
        CREATE INDEX anomaly_events_start ON anomaly_events (start_time DESC, id DESC);
        CREATE INDEX anomaly_events_series ON anomaly_events (series, start_time DESC);
        CREATE TABLE anomaly_checkpoints (
            series text PRIMARY KEY,
            state text NOT NULL,
            update_time timestamptz NOT NULL DEFAULT now()
        );
        """,
    ),
    pg.Migration(
        2,
        """
        CREATE TABLE anomaly_thresholds (
            series text NOT NULL,
            detector text NOT NULL,
            learned_offset double precision NOT NULL,
            confirmed_count bigint NOT NULL DEFAULT 0,
            false_positive_count bigint NOT NULL DEFAULT 0,
            update_time double precision NOT NULL,
            PRIMARY KEY (series, detector)
        );
        CREATE TABLE anomaly_threshold_audit (
            id bigserial PRIMARY KEY,
            series text NOT NULL,
            detector text NOT NULL,
            old_offset double precision NOT NULL,
            new_offset double precision NOT NULL,
            cause text NOT NULL,
            feedback text NOT NULL DEFAULT '',
            actor text NOT NULL DEFAULT '',
            reason text NOT NULL DEFAULT '',
            at double precision NOT NULL
        );
        CREATE TABLE anomaly_applied_feedback (
            name text PRIMARY KEY,
            applied_at double precision NOT NULL
        );
        CREATE TABLE anomaly_drift (
            series text PRIMARY KEY,
            state text NOT NULL,
            status text NOT NULL,
            update_time double precision NOT NULL
        );
        """,
    ),
    pg.Migration(
        3,
        """
        ALTER TABLE anomaly_thresholds ADD COLUMN signature text NOT NULL DEFAULT '';
        ALTER TABLE anomaly_thresholds DROP CONSTRAINT anomaly_thresholds_pkey;
        ALTER TABLE anomaly_thresholds ADD PRIMARY KEY (series, detector, signature);
        ALTER TABLE anomaly_threshold_audit ADD COLUMN signature text NOT NULL DEFAULT '';
        """,
    ),
]

_COLUMNS = (
    "id, series, labels, state, severity, start_time, end_time, peak_score, peak_time,"
    " peak_value, signals, explanation, signature, detector, threshold, acknowledger,"
    " acknowledge_comment, acknowledge_time, create_time, update_time"
)


def _anomaly(row: asyncpg.Record) -> domain.Anomaly:
    return domain.Anomaly(
        id=row["id"],
        series=row["series"],
        labels=json.loads(row["labels"]),
        state=domain.State(row["state"]),
        severity=domain.Severity(row["severity"]),
        start_time=row["start_time"],
        end_time=row["end_time"],
        peak_score=row["peak_score"],
        peak_time=row["peak_time"],
        peak_value=row["peak_value"],
        signals=tuple(row["signals"]),
        explanation=row["explanation"],
        signature=row["signature"],
        detector=row["detector"],
        threshold=row["threshold"],
        acknowledger=row["acknowledger"],
        acknowledge_comment=row["acknowledge_comment"],
        acknowledge_time=row["acknowledge_time"],
        create_time=row["create_time"],
        update_time=row["update_time"],
    )


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


class PostgresAnomalyStore:
    """`domain.AnomalyStore` (and thresholds and drift states) over one asyncpg pool."""

    def __init__(self, db: asyncpg.Pool, timeout_seconds: float = 5.0) -> None:
        self._db = db
        self._timeout = timeout_seconds

    async def ping(self) -> object:
        return await pg.ping(self._db)

    async def upsert_anomalies(self, items: Sequence[domain.Anomaly]) -> None:
        rows = [
            (
                a.id, a.series, json.dumps(dict(a.labels)), a.state.value, int(a.severity),
                a.start_time, a.end_time, a.peak_score, a.peak_time, a.peak_value,
                list(a.signals), a.explanation, a.signature, a.detector, a.threshold,
                a.create_time, a.update_time,
            )
            for a in items
        ]  # fmt: skip
        sql = (
            "INSERT INTO anomaly_events (id, series, labels, state, severity, start_time,"
            " end_time, peak_score, peak_time, peak_value, signals, explanation, signature,"
            " detector, threshold, create_time, update_time) VALUES ($1, $2, $3::jsonb, $4, $5,"
            " $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
            " ON CONFLICT (id) DO UPDATE SET"
            " state = CASE WHEN excluded.state = 'closed' THEN 'closed'"
            " ELSE anomaly_events.state END,"
            " severity = excluded.severity, end_time = excluded.end_time,"
            " peak_score = excluded.peak_score, peak_time = excluded.peak_time,"
            " peak_value = excluded.peak_value, signals = excluded.signals,"
            " update_time = excluded.update_time"
        )

        async def op() -> None:
            async with self._db.acquire() as conn, conn.transaction():
                await conn.executemany(sql, rows)

        await pg.call("upsert anomalies", op, self._timeout)

    async def get_anomaly(self, anomaly_id: str) -> domain.Anomaly | None:
        row = await pg.call(
            "get anomaly",
            lambda: self._db.fetchrow(
                f"SELECT {_COLUMNS} FROM anomaly_events WHERE id = $1", anomaly_id
            ),
            self._timeout,
        )
        return None if row is None else _anomaly(row)

    async def list_anomalies(
        self, flt: domain.AnomalyFilter, limit: int, after: tuple[float, str] | None
    ) -> tuple[list[domain.Anomaly], tuple[float, str] | None]:
        where: list[str] = []
        args: list[Any] = []

        def arg(v: Any) -> str:
            args.append(v)
            return f"${len(args)}"

        if flt.series:
            where.append(f"series = {arg(flt.series)}")
        if flt.state is not None:
            where.append(f"state = {arg(flt.state.value)}")
        if flt.min_severity is not None:
            where.append(f"severity >= {arg(int(flt.min_severity))}")
        if flt.start_after is not None:
            where.append(f"start_time >= {arg(flt.start_after)}")
        if flt.start_before is not None:
            where.append(f"start_time < {arg(flt.start_before)}")
        if flt.detector:
            where.append(f"detector = {arg(flt.detector)}")
        if after is not None:
            where.append(f"(start_time, id) < ({arg(after[0])}, {arg(after[1])})")
        sql = (
            f"SELECT {_COLUMNS} FROM anomaly_events"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY start_time DESC, id DESC LIMIT {arg(limit + 1)}"
        )
        rows = await pg.call("list anomalies", lambda: self._db.fetch(sql, *args), self._timeout)
        items = [_anomaly(r) for r in rows[:limit]]
        cursor = (items[-1].start_time, items[-1].id) if len(rows) > limit else None
        return items, cursor

    async def acknowledge(
        self, anomaly_id: str, who: str, comment: str, now: float
    ) -> domain.Anomaly | None:
        row = await pg.call(
            "acknowledge anomaly",
            lambda: self._db.fetchrow(
                "UPDATE anomaly_events SET state = 'acknowledged', acknowledger = $2,"
                " acknowledge_comment = $3, acknowledge_time = $4, update_time = $4"
                f" WHERE id = $1 AND state = 'open' RETURNING {_COLUMNS}",
                anomaly_id,
                who,
                comment,
                now,
            ),
            self._timeout,
        )
        if row is not None:
            return _anomaly(row)
        return await self.get_anomaly(anomaly_id)

    async def save_checkpoints(self, items: Sequence[domain.Checkpoint]) -> None:
        rows = [
            (
                c.series,
                json.dumps(
                    {
                        "detector": c.detector_state,
                        "last_time": _finite_or_none(c.last_time),
                        "last_value": _finite_or_none(c.last_value),
                        "labels": dict(c.labels),
                        "open_anomaly": c.open_anomaly,
                        "normal_run": c.normal_run,
                        "last_anomalous_time": c.last_anomalous_time,
                        "recent": list(c.recent),
                        "recent_times": list(c.recent_times),
                    }
                ),
            )
            for c in items
        ]

        async def op() -> None:
            async with self._db.acquire() as conn:
                await conn.executemany(
                    "INSERT INTO anomaly_checkpoints (series, state) VALUES ($1, $2)"
                    " ON CONFLICT (series) DO UPDATE SET state = excluded.state,"
                    " update_time = now()",
                    rows,
                )

        await pg.call("save checkpoints", op, self._timeout)

    async def load_checkpoints(self, series: Sequence[str]) -> list[domain.Checkpoint]:
        rows = await pg.call(
            "load checkpoints",
            lambda: self._db.fetch(
                "SELECT series, state FROM anomaly_checkpoints WHERE series = ANY($1::text[])",
                list(series),
            ),
            self._timeout,
        )
        out = []
        for r in rows:
            d = json.loads(r["state"])
            lt, lv = d.get("last_time"), d.get("last_value")
            out.append(
                domain.Checkpoint(
                    series=r["series"],
                    detector_state=d["detector"],
                    last_time=-math.inf if lt is None else float(lt),
                    last_value=math.nan if lv is None else float(lv),
                    labels=d.get("labels", {}),
                    open_anomaly=d.get("open_anomaly", ""),
                    normal_run=int(d.get("normal_run", 0)),
                    last_anomalous_time=float(d.get("last_anomalous_time", 0.0)),
                    recent=[float(v) for v in d.get("recent", [])],
                    recent_times=[float(v) for v in d.get("recent_times", [])],
                )
            )
        return out


def _status_json(st: drift.Status) -> str:
    o = st.outcome
    return json.dumps(
        {
            "state": st.state.value,
            "ref": st.reference_range,
            "cur": st.current_range,
            "eval": st.evaluate_time,
            "start": st.drift_start_time,
            "outcome": None
            if o is None
            else {
                "results": [
                    [int(r.test), r.statistic, r.p_value, r.critical_value, r.drifted]
                    for r in o.results
                ],
                "decision": [
                    o.decision.drifted,
                    o.decision.method.value,
                    o.decision.alpha,
                    o.decision.combined_p_value,
                    o.decision.drifted_test_count,
                ],
                "counts": [o.reference_count, o.current_count],
            },
        }
    )


def _status(series: str, text: str) -> drift.Status:
    d = json.loads(text)
    o = d["outcome"]
    outcome = None
    if o is not None:
        dd = o["decision"]
        outcome = drift.Outcome(
            tuple(drift.TestResult(drift.Test(r[0]), r[1], r[2], r[3], r[4]) for r in o["results"]),
            drift.Decision(dd[0], drift.Method(dd[1]), dd[2], dd[3], dd[4]),
            o["counts"][0],
            o["counts"][1],
        )
    return drift.Status(
        series,
        drift.DriftState(d["state"]),
        (d["ref"][0], d["ref"][1]) if d["ref"] else None,
        (d["cur"][0], d["cur"][1]) if d["cur"] else None,
        outcome,
        d["eval"],
        d["start"],
    )


class PostgresDriftStore:
    """Latest drift status of each series."""

    def __init__(self, db: asyncpg.Pool, timeout_seconds: float = 5.0) -> None:
        self._db = db
        self._timeout = timeout_seconds

    async def save_drift(self, items: Sequence[drift.Status]) -> None:
        rows = [(s.series, s.state.value, _status_json(s), s.evaluate_time or 0.0) for s in items]

        async def op() -> None:
            async with self._db.acquire() as conn:
                await conn.executemany(
                    "INSERT INTO anomaly_drift (series, status, update_time, state)"
                    " VALUES ($1, $3, $4, $2) ON CONFLICT (series) DO UPDATE SET"
                    " status = excluded.status, update_time = excluded.update_time,"
                    " state = excluded.state",
                    rows,
                )

        await pg.call("save drift", op, self._timeout)

    async def list_drift(
        self, state: drift.DriftState | None, series: str, limit: int, after: str | None
    ) -> tuple[list[drift.Status], str | None]:
        where: list[str] = []
        args: list[Any] = []
        if state is not None:
            args.append(state.value)
            where.append(f"state = ${len(args)}")
        if series:
            args.append(series)
            where.append(f"series = ${len(args)}")
        if after is not None:
            args.append(after)
            where.append(f"series > ${len(args)}")
        args.append(limit + 1)
        sql = (
            "SELECT series, status FROM anomaly_drift"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY series LIMIT ${len(args)}"
        )
        rows = await pg.call("list drift", lambda: self._db.fetch(sql, *args), self._timeout)
        items = [_status(r["series"], r["status"]) for r in rows[:limit]]
        return items, (items[-1].series if len(rows) > limit else None)


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
