"""Series, points, alerts, collection rounds and the collector lease in PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import asyncpg

from services.kit import errors, pg
from services.telemetry import alerts, domain

log = logging.getLogger(__name__)
T = TypeVar("T")
UTC = dt.UTC

MIGRATIONS = [
    pg.Migration(
        1,
        """
        CREATE TABLE telemetry_series (
            id bigint PRIMARY KEY,
            key text COLLATE "C" NOT NULL UNIQUE,
            metric text COLLATE "C" NOT NULL,
            labels jsonb NOT NULL DEFAULT '{}',
            unit text NOT NULL DEFAULT '',
            kind text NOT NULL,
            description text NOT NULL DEFAULT '',
            create_time timestamptz NOT NULL DEFAULT now(),
            last_point_time timestamptz
        );
        CREATE INDEX telemetry_series_metric ON telemetry_series (metric, key);
        CREATE INDEX telemetry_series_labels ON telemetry_series USING gin (labels jsonb_path_ops);
        -- One row per point; the primary key serves time-range reads of one series and
        -- refuses duplicates, the BRIN index serves retention deletes at little write cost.
        CREATE TABLE telemetry_points (
            series_id bigint NOT NULL,
            sample_time timestamptz NOT NULL,
            value double precision NOT NULL,
            PRIMARY KEY (series_id, sample_time)
        );
        CREATE INDEX telemetry_points_time ON telemetry_points USING brin (sample_time);
        -- One row per collection interval: a second replica can never collect it again.
        CREATE TABLE telemetry_rounds (
            slot bigint PRIMARY KEY,
            holder text NOT NULL,
            collect_time timestamptz NOT NULL
        );
        CREATE TABLE telemetry_alerts (
            fingerprint text COLLATE "C" PRIMARY KEY,
            state text NOT NULL,
            labels jsonb NOT NULL,
            annotations jsonb NOT NULL,
            start_time timestamptz NOT NULL,
            end_time timestamptz,
            generator_url text NOT NULL DEFAULT '',
            receiver text NOT NULL DEFAULT '',
            notifications integer NOT NULL DEFAULT 1,
            first_seen timestamptz NOT NULL DEFAULT now(),
            last_seen timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX telemetry_alerts_state ON telemetry_alerts (state, fingerprint);
        """,
    ),
]

_SERIES_COLUMNS = (
    "id, key, metric, labels::text AS labels, unit, kind, description, create_time, last_point_time"
)
_STAGE = "telemetry_points_stage"
_POINT_COLUMNS = ("series_id", "sample_time", "value")


def _ts(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, UTC)


def _series(row: Mapping[str, Any]) -> domain.Series:
    last = row["last_point_time"]
    return domain.Series(
        id=row["id"],
        key=row["key"],
        metric=row["metric"],
        labels=json.loads(row["labels"]),
        unit=row["unit"],
        kind=domain.SeriesKind(row["kind"]),
        description=row["description"],
        create_time=row["create_time"].timestamp(),
        last_point_time=last.timestamp() if last is not None else None,
    )


class PostgresTelemetryStore:
    """`domain.TelemetryStore` (and the alert, round and retention queries) on PostgreSQL."""

    def __init__(self, db: asyncpg.Pool, timeout_seconds: float = 10.0) -> None:
        self._db = db
        self._timeout = timeout_seconds
        self.migrated = False

    async def _call(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        if not self.migrated:
            raise errors.Unavailable(
                "DATABASE_NOT_READY",
                "Telemetry storage is not ready yet; retry shortly.",
                retry_after_seconds=1.0,
            )
        return await pg.call(what, op, self._timeout)

    async def migrate(self) -> list[int]:
        applied = await pg.migrate(self._db, "telemetry", MIGRATIONS)
        self.migrated = True
        return applied

    async def ping(self) -> None:
        await pg.ping(self._db)

    # -- series ----------------------------------------------------------------------------
    async def resolve(
        self, specs: Sequence[domain.SeriesSpec], max_series: int
    ) -> tuple[dict[str, domain.Series], int]:
        keys = [s.key for s in specs]

        async def run() -> tuple[dict[str, domain.Series], int]:
            async with self._db.acquire() as conn:
                sql = f"SELECT {_SERIES_COLUMNS} FROM telemetry_series WHERE key = ANY($1)"
                found = {r["key"]: _series(r) for r in await conn.fetch(sql, keys)}
                missing = [s for s in specs if s.key not in found]
                if not missing:
                    return found, 0
                count = await conn.fetchval("SELECT count(*) FROM telemetry_series")
                allowed = missing[: max(0, max_series - int(count))]
                if not allowed:
                    return found, 0
                created = await conn.fetch(
                    "INSERT INTO telemetry_series (id, key, metric, labels, unit, kind)"
                    " SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[],"
                    " $4::jsonb[], $5::text[], $6::text[])"
                    f" ON CONFLICT DO NOTHING RETURNING {_SERIES_COLUMNS}",
                    [s.id for s in allowed],
                    [s.key for s in allowed],
                    [s.metric for s in allowed],
                    [json.dumps(dict(s.labels), sort_keys=True) for s in allowed],
                    [s.unit for s in allowed],
                    [s.kind.value for s in allowed],
                )
                for r in created:
                    found[r["key"]] = _series(r)
                still = [s.key for s in allowed if s.key not in found]
                if still:  # created by another replica at the same moment
                    for r in await conn.fetch(sql, still):
                        found[r["key"]] = _series(r)
                return found, len(created)

        return await self._call("resolve", run)

    async def write_points(self, rows: Sequence[domain.Row]) -> tuple[int, bool]:
        """COPY straight into the points table; when a batch holds a point already stored,
        the COPY is rolled back to its savepoint and the batch goes through a staging
        table and one INSERT ... ON CONFLICT DO NOTHING, so duplicates are skipped and
        counted instead of failing the batch."""
        stamp = dt.datetime.fromtimestamp
        records = [(sid, stamp(t, UTC), v) for sid, _, _, t, v in rows]
        latest: dict[int, float] = {}
        for sid, _, _, t, _ in rows:
            if t > latest.get(sid, -math.inf):
                latest[sid] = t

        async def run() -> tuple[int, bool]:
            async with self._db.acquire() as conn, conn.transaction():
                try:
                    async with conn.transaction():
                        await conn.copy_records_to_table(
                            "telemetry_points", records=records, columns=_POINT_COLUMNS
                        )
                    stored = len(records)
                except asyncpg.UniqueViolationError:
                    stored = await self._insert_new(conn, records)
                status = await conn.execute(
                    "UPDATE telemetry_series s SET last_point_time ="
                    " greatest(s.last_point_time, v.t)"
                    " FROM unnest($1::bigint[], $2::timestamptz[]) AS v(id, t) WHERE s.id = v.id",
                    list(latest),
                    [_ts(t) for t in latest.values()],
                )
                return stored, int(status.rsplit(" ", 1)[-1]) < len(latest)

        return await self._call("write_points", run)

    async def _insert_new(self, conn: asyncpg.Connection, records: list[tuple[Any, ...]]) -> int:
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (series_id bigint,"
            " sample_time timestamptz, value double precision) ON COMMIT DELETE ROWS"
        )
        await conn.copy_records_to_table(_STAGE, records=records, columns=_POINT_COLUMNS)
        status = await conn.execute(
            f"INSERT INTO telemetry_points SELECT * FROM {_STAGE} ON CONFLICT DO NOTHING"
        )
        return int(status.rsplit(" ", 1)[-1])

    async def find_series(self, query: domain.Query, limit: int) -> list[domain.Series]:
        if query.series_id is not None:
            sql = f"SELECT {_SERIES_COLUMNS} FROM telemetry_series WHERE id = $1"
            args: tuple[Any, ...] = (query.series_id,)
        else:
            sql = (
                f"SELECT {_SERIES_COLUMNS} FROM telemetry_series"
                " WHERE metric = $1 AND labels @> $2::jsonb ORDER BY key LIMIT $3"
            )
            args = (query.metric, json.dumps(dict(query.labels)), limit)
        rows = await self._call("find_series", lambda: self._db.fetch(sql, *args))
        return [_series(r) for r in rows]

    async def read_points(
        self, series: domain.Series, query: domain.Query, limit: int
    ) -> list[domain.Point]:
        start, end = _ts(query.start), _ts(query.end)
        if query.step is None:
            sql = (
                "SELECT sample_time AS t, value FROM telemetry_points"
                " WHERE series_id = $1 AND sample_time >= $2 AND sample_time < $3"
                " ORDER BY sample_time LIMIT $4"
            )
            args: tuple[Any, ...] = (series.id, start, end, limit)
        else:
            assert query.aggregation is not None
            agg = {
                domain.Aggregation.AVG: "avg(value)",
                domain.Aggregation.MIN: "min(value)",
                domain.Aggregation.MAX: "max(value)",
                domain.Aggregation.LAST: "(array_agg(value ORDER BY sample_time DESC))[1]",
            }[query.aggregation]
            # Steps are aligned to the start of the range; each point is stamped with the
            # start of its step.
            sql = (
                "SELECT date_bin(make_interval(secs => $4), sample_time, $2) AS t,"
                f" {agg} AS value FROM telemetry_points"
                " WHERE series_id = $1 AND sample_time >= $2 AND sample_time < $3"
                " GROUP BY 1 ORDER BY 1 LIMIT $5"
            )
            args = (series.id, start, end, query.step, limit)
        rows = await self._call("read_points", lambda: self._db.fetch(sql, *args))
        return [domain.Point(r["t"].timestamp(), r["value"]) for r in rows]

    async def list_series(
        self, flt: domain.SeriesFilter, limit: int, after: str | None
    ) -> list[domain.Series]:
        sql = (
            f"SELECT {_SERIES_COLUMNS} FROM telemetry_series"
            " WHERE ($1 = '' OR metric = $1) AND labels @> $2::jsonb"
            " AND ($3::text IS NULL OR kind = $3) AND ($4::text IS NULL OR key > $4)"
            " ORDER BY key LIMIT $5"
        )
        rows = await self._call(
            "list_series",
            lambda: self._db.fetch(
                sql,
                flt.metric,
                json.dumps(dict(flt.labels)),
                flt.kind.value if flt.kind else None,
                after,
                limit,
            ),
        )
        return [_series(r) for r in rows]

    # -- retention -------------------------------------------------------------------------
    async def delete_before(self, cutoff: float, batch: int = 20_000) -> int:
        """Deletes points, empty series and resolved alerts older than `cutoff`, in batches
        so no statement holds locks for long. Returns the number of points deleted."""
        when = _ts(cutoff)
        deleted = 0
        while True:
            status = await self._call(
                "retention",
                lambda: self._db.execute(
                    "DELETE FROM telemetry_points WHERE ctid = ANY(ARRAY("
                    " SELECT ctid FROM telemetry_points WHERE sample_time < $1 LIMIT $2))",
                    when,
                    batch,
                ),
            )
            n = int(status.rsplit(" ", 1)[-1])
            deleted += n
            if n < batch:
                break
        await self._call(
            "retention_series",
            lambda: self._db.execute(
                "DELETE FROM telemetry_series WHERE coalesce(last_point_time, create_time) < $1",
                when,
            ),
        )
        await self._call(
            "retention_alerts",
            lambda: self._db.execute(
                "DELETE FROM telemetry_alerts WHERE state = 'resolved' AND end_time < $1", when
            ),
        )
        await self._call(
            "retention_rounds",
            lambda: self._db.execute("DELETE FROM telemetry_rounds WHERE collect_time < $1", when),
        )
        return deleted

    # -- collection rounds -----------------------------------------------------------------
    async def claim_round(self, slot: int, holder: str, when: float) -> bool:
        """Records that `holder` collects interval `slot`; False if someone already did."""
        status = await self._call(
            "claim_round",
            lambda: self._db.execute(
                "INSERT INTO telemetry_rounds (slot, holder, collect_time) VALUES ($1, $2, $3)"
                " ON CONFLICT DO NOTHING",
                slot,
                holder,
                _ts(when),
            ),
        )
        return bool(status.endswith(" 1"))

    async def last_point_time(self, metric: str) -> float | None:
        value = await self._call(
            "last_point_time",
            lambda: self._db.fetchval(
                "SELECT max(last_point_time) FROM telemetry_series WHERE metric = $1", metric
            ),
        )
        return value.timestamp() if value is not None else None

    # -- alerts ----------------------------------------------------------------------------
    async def upsert_alerts(self, items: Sequence[alerts.Alert], receiver: str) -> None:
        """Stores alerts by fingerprint. A late `firing` notification of an episode that
        already resolved does not reopen it; a new episode (a later start) does."""
        sql = """
            INSERT INTO telemetry_alerts AS a (fingerprint, state, labels, annotations,
                start_time, end_time, generator_url, receiver)
            SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::jsonb[],
                $5::timestamptz[], $6::timestamptz[], $7::text[], $8::text[])
            ON CONFLICT (fingerprint) DO UPDATE SET
                state = excluded.state, labels = excluded.labels,
                annotations = excluded.annotations, start_time = excluded.start_time,
                end_time = excluded.end_time, generator_url = excluded.generator_url,
                receiver = excluded.receiver, notifications = a.notifications + 1,
                last_seen = now()
            WHERE NOT (a.state = 'resolved' AND excluded.state = 'firing'
                       AND excluded.start_time <= a.end_time)
        """
        # One row per fingerprint per statement (ON CONFLICT cannot touch a row twice).
        latest = {a.fingerprint: a for a in items}
        rows = list(latest.values())
        await self._call(
            "upsert_alerts",
            lambda: self._db.execute(
                sql,
                [a.fingerprint for a in rows],
                [a.state.value for a in rows],
                [json.dumps(dict(a.labels), sort_keys=True) for a in rows],
                [json.dumps(dict(a.annotations), sort_keys=True) for a in rows],
                [_ts(a.start_time) for a in rows],
                [_ts(a.end_time) if a.end_time is not None else None for a in rows],
                [a.generator_url for a in rows],
                [receiver] * len(rows),
            ),
        )

    async def list_alerts(
        self, state: alerts.AlertState | None, limit: int, after: str | None
    ) -> list[alerts.Alert]:
        rows = await self._call(
            "list_alerts",
            lambda: self._db.fetch(
                "SELECT fingerprint, state, labels::text AS labels,"
                " annotations::text AS annotations, start_time, end_time, generator_url"
                " FROM telemetry_alerts WHERE ($1::text IS NULL OR state = $1)"
                " AND ($2::text IS NULL OR fingerprint > $2) ORDER BY fingerprint LIMIT $3",
                state.value if state else None,
                after,
                limit,
            ),
        )
        return [
            alerts.Alert(
                fingerprint=r["fingerprint"],
                state=alerts.AlertState(r["state"]),
                labels=json.loads(r["labels"]),
                annotations=json.loads(r["annotations"]),
                start_time=r["start_time"].timestamp(),
                end_time=r["end_time"].timestamp() if r["end_time"] is not None else None,
                generator_url=r["generator_url"],
            )
            for r in rows
        ]
