"""Series and points on a real PostgreSQL: migrations, COPY writes, downsampling, label
filters, paging and retention."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import pytest

from services.kit import errors, pg
from services.telemetry import domain, ingest, server, storage

NOW = float(int(dt.datetime.now(dt.UTC).timestamp()) // 60 * 60)


def ingestor(store: storage.PostgresTelemetryStore, now: float = NOW, **kw: int) -> ingest.Ingestor:
    return ingest.Ingestor(store, 30 * 86400, kw.get("max_series", 1000), clock=lambda: now)


async def test_migrations_run_twice_concurrently_without_error(
    postgres_url: str, pg_schema: str
) -> None:
    async with (
        pg.pool(postgres_url, schema=pg_schema, max_size=3) as a,
        pg.pool(postgres_url, schema=pg_schema, max_size=3) as b,
    ):
        results = await asyncio.gather(
            storage.PostgresTelemetryStore(a).migrate(), storage.PostgresTelemetryStore(b).migrate()
        )
        assert sorted(v for r in results for v in r) == [1]
        assert await storage.PostgresTelemetryStore(a).migrate() == []


async def test_points_are_written_with_copy_and_duplicates_are_counted(
    store: storage.PostgresTelemetryStore, db: asyncpg.Pool
) -> None:
    ing = ingestor(store)
    samples = [domain.Incoming("cpu", {"host": "a"}, NOW - 60 + i, float(i)) for i in range(60)]
    first = await ing.write(samples)
    assert (first.accepted, first.created_series, first.rejections) == (60, 1, {})
    again = await ing.write([*samples[:10], domain.Incoming("cpu", {"host": "a"}, NOW, 1.0)])
    assert again.accepted == 1
    assert again.rejections == {domain.Reject.DUPLICATE: 10}
    assert await db.fetchval("SELECT count(*) FROM telemetry_points") == 61
    last = await db.fetchval("SELECT last_point_time FROM telemetry_series")
    assert last.timestamp() == NOW


async def test_query_downsamples_per_step_with_each_aggregation(
    store: storage.PostgresTelemetryStore,
) -> None:
    ing = ingestor(store)
    start = NOW - 3600
    # Two points per minute: values 2k and 2k+1 at +0 s and +30 s of minute k.
    await ing.write([domain.Incoming("lat", {}, start + 30 * i, float(i)) for i in range(120)])
    reader = domain.Reader(store)

    async def run(agg: domain.Aggregation) -> list[tuple[float, float]]:
        q = domain.make_query(
            name="",
            metric="lat",
            labels={},
            start=start,
            end=start + 600,
            step=60.0,
            aggregation=agg,
        )
        (found,) = await reader.query(q)
        return [(p.time - start, p.value) for p in found.points]

    assert (await run(domain.Aggregation.AVG))[:3] == [(0, 0.5), (60, 2.5), (120, 4.5)]
    assert (await run(domain.Aggregation.MIN))[:2] == [(0, 0.0), (60, 2.0)]
    assert (await run(domain.Aggregation.MAX))[:2] == [(0, 1.0), (60, 3.0)]
    assert (await run(domain.Aggregation.LAST))[:2] == [(0, 1.0), (60, 3.0)]
    assert len(await run(domain.Aggregation.AVG)) == 10
    raw = domain.make_query(
        name="", metric="lat", labels={}, start=start, end=start + 90, step=None, aggregation=None
    )
    (found,) = await reader.query(raw)
    assert [p.value for p in found.points] == [0.0, 1.0, 2.0]


async def test_query_of_an_unknown_series_is_not_found(
    store: storage.PostgresTelemetryStore,
) -> None:
    q = domain.make_query(
        name="", metric="nothing", labels={}, start=NOW - 60, end=NOW, step=None, aggregation=None
    )
    with pytest.raises(errors.NotFound) as exc:
        await domain.Reader(store).query(q)
    assert exc.value.reason == "SERIES_NOT_FOUND"


async def test_list_series_filters_by_labels_and_pages_by_key(
    store: storage.PostgresTelemetryStore,
) -> None:
    ing = ingestor(store)
    await ing.write(
        [
            domain.Incoming(
                "req", {"route": f"/r{i:02d}", "env": "prod" if i % 2 else "dev"}, NOW, 1.0
            )
            for i in range(25)
        ]
        + [domain.Incoming("other", {"env": "prod"}, NOW, 1.0)]
    )
    reader = domain.Reader(store)
    flt = domain.SeriesFilter("req", {"env": "prod"})
    seen: list[str] = []
    token = ""
    while True:
        page = await reader.list(flt, 5, token)
        seen += [s.key for s in page.items]
        token = page.next_token
        if not token:
            break
    assert len(seen) == 12 and seen == sorted(seen)
    assert all('env="prod"' in k for k in seen)
    everything = await reader.list(domain.SeriesFilter(labels={"env": "prod"}), 100, "")
    assert len(everything.items) == 13
    with pytest.raises(errors.InvalidArgument) as exc:
        await reader.list(domain.SeriesFilter("other"), 5, token or page.next_token or "x")
    assert exc.value.reason in ("PAGE_TOKEN_INVALID", "PAGE_TOKEN_FILTER_MISMATCH")


async def test_series_limit_and_mismatched_unit_are_rejected(
    store: storage.PostgresTelemetryStore,
) -> None:
    ing = ingestor(store, max_series=2)
    result = await ing.write(
        [domain.Incoming("m", {"i": str(i)}, NOW, 1.0, "ms") for i in range(3)]
    )
    assert result.accepted == 2
    assert result.rejections == {domain.Reject.SERIES_LIMIT: 1}
    mismatch = await ing.write([domain.Incoming("m", {"i": "0"}, NOW - 1, 1.0, "s")])
    assert mismatch.rejections == {domain.Reject.SERIES_MISMATCH: 1}


async def test_retention_deletes_points_older_than_thirty_days(
    store: storage.PostgresTelemetryStore, db: asyncpg.Pool
) -> None:
    old_now = NOW - 40 * 86400
    await ingestor(store, now=old_now).write(
        [domain.Incoming("gone", {}, old_now - i, 1.0) for i in range(100)]
        + [domain.Incoming("kept", {}, old_now, 1.0)]
    )
    ing = ingestor(store)
    await ing.write(
        [domain.Incoming("kept", {}, NOW - 86400 * 29, 2.0), domain.Incoming("kept", {}, NOW, 3.0)]
    )
    deleted = await server.Retention(store, ing, 60).run_once(now=NOW)
    assert deleted == 101
    rows = await db.fetch("SELECT value FROM telemetry_points ORDER BY sample_time")
    assert [r["value"] for r in rows] == [2.0, 3.0]
    keys = [r["key"] for r in await db.fetch("SELECT key FROM telemetry_series")]
    assert keys == ["kept"]


async def test_pushes_cannot_write_into_the_collectors_critical_series(
    store: storage.PostgresTelemetryStore,
) -> None:
    ing = ingestor(store)
    own = await ing.write(
        [domain.Incoming("latency_p95", {}, NOW - 1, 12.0, "ms", domain.SeriesKind.CRITICAL)],
        collector=True,
    )
    assert own.accepted == 1
    for attempt in range(2):  # uncached, then cached
        pushed = await ing.write([domain.Incoming("latency_p95", {}, NOW - attempt - 5, 1.0)])
        assert pushed.rejections == {domain.Reject.SERIES_MISMATCH: 1}


async def test_retention_runs_in_the_background(
    postgres_url: str, pg_schema: str, store: storage.PostgresTelemetryStore, db: asyncpg.Pool
) -> None:
    from services.telemetry.settings import TelemetrySettings
    from tests.helpers import eventually
    from tests.telemetry.conftest import telemetry_env

    # The wall clock now, not the module's NOW: the server's retention runs on real time, and
    # a slow run would otherwise find "new" older than the 120 s retention too.
    now = float(int(dt.datetime.now(dt.UTC).timestamp()))
    old_now = now - 600
    await ingestor(store, now=old_now).write([domain.Incoming("old", {}, old_now, 1.0)])
    await ingestor(store, now=now).write([domain.Incoming("new", {}, now, 1.0)])
    env = telemetry_env(
        postgres_url,
        pg_schema,
        AIOPS_TELEMETRY_RETENTION_SECONDS="120",
        AIOPS_TELEMETRY_RETENTION_INTERVAL_SECONDS="0.1",
    )
    async with server.running(TelemetrySettings.from_env(env)):

        async def swept() -> None:
            keys = [r["key"] for r in await db.fetch("SELECT key FROM telemetry_series")]
            assert keys == ["new"]
            assert await db.fetchval("SELECT count(*) FROM telemetry_points") == 1

        await eventually(swept)


async def test_a_series_removed_by_another_replica_is_created_again(
    store: storage.PostgresTelemetryStore, db: asyncpg.Pool
) -> None:
    ing = ingestor(store)
    await ing.write([domain.Incoming("idle", {"a": "b"}, NOW - 10, 1.0)])
    await db.execute("DELETE FROM telemetry_series")  # as another replica's retention would
    await ing.write([domain.Incoming("idle", {"a": "b"}, NOW - 5, 2.0)])
    again = await ing.write([domain.Incoming("idle", {"a": "b"}, NOW, 3.0)])
    assert again.created_series == 1
    q = domain.make_query(
        name="",
        metric="idle",
        labels={},
        start=NOW - 60,
        end=NOW + 1,
        step=None,
        aggregation=None,
    )
    (found,) = await domain.Reader(store).query(q)
    assert [p.value for p in found.points] == [1.0, 2.0, 3.0]
