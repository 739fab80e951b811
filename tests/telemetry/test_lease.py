"""The collector runs once per cluster: two real replica processes share one lease; when
the holder is killed the other collects within two intervals, and no interval is
collected twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.helpers import eventually
from tests.telemetry.conftest import Endpoints, telemetry_env
from tests.telemetry.test_collector import exposition

INTERVAL = 0.5
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def replicas(
    postgres_url: str, pg_schema: str, endpoints: Endpoints, tmp_path: Path
) -> Iterator[list[subprocess.Popen[bytes]]]:
    endpoints.texts["suite"] = exposition({"0.05": 10}, {"200": 10}, 1, {"stored": 1})
    env = {
        **os.environ,
        **telemetry_env(
            postgres_url,
            pg_schema,
            AIOPS_TELEMETRY_COLLECTOR_ENABLED="true",
            AIOPS_TELEMETRY_COLLECT_INTERVAL_SECONDS=str(INTERVAL),
            AIOPS_TELEMETRY_SCRAPE_TARGETS=endpoints.url("suite"),
            AIOPS_TELEMETRY_RETENTION_INTERVAL_SECONDS="3600",
            AIOPS_LOG_LEVEL="WARNING",
        ),
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen'}",
    }
    procs = []
    for i in range(2):
        with (tmp_path / f"replica{i}.log").open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "services.telemetry"],
                    env=env,
                    cwd=ROOT,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait(timeout=10)


async def test_killing_the_lease_holder_hands_collection_over_within_two_intervals(
    replicas: list[subprocess.Popen[bytes]], postgres_url: str, pg_schema: str
) -> None:
    conn = await asyncpg.connect(postgres_url, server_settings={"search_path": pg_schema})
    try:

        async def rounds() -> list[asyncpg.Record]:
            try:
                return await conn.fetch(
                    "SELECT slot, holder, collect_time FROM telemetry_rounds ORDER BY slot"
                )
            except asyncpg.UndefinedTableError:
                return []

        async def some_rounds() -> list[asyncpg.Record]:
            got = await rounds()
            assert len(got) >= 3
            return got

        before = await eventually(some_rounds, timeout=30)
        holders = {r["holder"] for r in before}
        assert len(holders) == 1, holders  # one replica collects, the other waits
        (holder,) = holders
        pid = int(holder.split(":")[1])
        victim = next(p for p in replicas if p.pid == pid)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        killed_slot = max(r["slot"] for r in await rounds())

        async def taken_over() -> list[asyncpg.Record]:
            got = [r for r in await rounds() if r["holder"] != holder]
            assert got
            return got

        after = await eventually(taken_over, timeout=10)
        first = min(r["slot"] for r in after)
        # The survivor collected the first or second interval after the kill.
        assert first - killed_slot <= 2, (first, killed_slot)
        everything = await rounds()
        slots = [r["slot"] for r in everything]
        assert len(slots) == len(set(slots))
        # Every collected interval wrote its critical points exactly once.
        per_slot = await conn.fetch(
            "SELECT floor(extract(epoch FROM p.sample_time) / $1)::bigint AS slot, count(*) AS n"
            " FROM telemetry_points p JOIN telemetry_series s ON s.id = p.series_id"
            " WHERE s.key = 'latency_p95' GROUP BY 1",
            INTERVAL,
        )
        assert per_slot and all(r["n"] == 1 for r in per_slot)
    finally:
        await conn.close()
