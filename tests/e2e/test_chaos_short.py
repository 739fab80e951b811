"""The short version of `make chaos`: Redis killed twice under steady writes through the
gateway of a suite started as `make run` starts it."""

from __future__ import annotations

from chaos import redis_kills


async def test_redis_kill9_under_load_loses_and_duplicates_nothing() -> None:
    report = await redis_kills.run(
        kills=2, rate=150.0, up_seconds=1.5, down_seconds=1.0, scenario="redis kill -9 (short)"
    )
    assert report.passed, report.line()
    assert report.refused_503 > 0, "the outages were not noticed: the test proves nothing"
