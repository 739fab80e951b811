"""The short versions of `make chaos`, against one suite started as `aiops run` starts it
(with its own Redis and Postgres, so they can be killed): Redis killed twice, a service
and Postgres killed once each, and a rolling restart of a service, all under steady load
through the gateway."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chaos import redis_kills, rolling, service_kills
from chaos.harness import Harness

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def harness() -> Iterator[Harness]:
    with Harness() as h:
        yield h


async def test_redis_kill9_under_load_loses_and_duplicates_nothing(harness: Harness) -> None:
    report = await redis_kills.run(
        harness, kills=2, rate=150.0, up_seconds=1.5, down_seconds=1.0, name="redis (short)"
    )
    assert report.passed, report.line()
    assert report.errors_5xx, "the outages were not noticed: the test proves nothing"


async def test_killed_service_and_postgres_fail_only_their_routes_then_recover(
    harness: Harness,
) -> None:
    report = await service_kills.run(
        harness, targets=("anomaly", "postgres"), rate=150.0, up_seconds=1.0,
        postgres_down_seconds=1.0, name="service kill -9 (short)",
    )  # fmt: skip
    assert report.passed, report.line()
    assert set(report.recovery_seconds) == {"anomaly", "postgres"}
    refused = {kind.split()[1] for kind in report.errors_5xx}
    assert refused, "no route noticed the outages: the test proves nothing"
    assert refused <= {"BACKEND_UNAVAILABLE", "DATABASE_UNAVAILABLE"}, report.line()
    assert "anomaly resumed from checkpoint" in report.notes


async def test_rolling_restart_of_a_service_fails_no_request(harness: Harness) -> None:
    # The gateway's own roll (15 s more) runs in `make chaos` only.
    before = harness.service_pid("feedback")
    report = await rolling.run(
        harness, targets=("feedback",), rate=150.0, settle_seconds=1.0,
        name="rolling restart (short)",
    )  # fmt: skip
    assert report.passed, report.line()
    assert report.sent == report.acknowledged
    assert harness.service_pid("feedback") != before, "feedback was not replaced"
