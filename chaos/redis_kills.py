"""Fault scenario: `kill -9` Redis again and again under steady load through the gateway,
then account for every request.

Checks: only the routes that need Redis (feedback writes) fail while it is down, and only
with 503 + Retry-After + a reason; every feedback that got a 2xx is readable afterwards
(zero lost); replaying the refused writes with their idempotency keys stores each once
(zero duplicates); and the feedback route is back within 10 s of Redis returning.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from chaos import load, scenario
from chaos.harness import Harness
from chaos.report import Report


async def run(
    h: Harness,
    kills: int = 10,
    rate: float = 250.0,
    up_seconds: float = 3.0,
    down_seconds: float = 1.5,
    name: str = "redis kill -9",
) -> Report:
    report = Report(name)
    async with h.session() as session:
        driver = load.Load(session, h.base, h.tokens, load.mixed(uuid.uuid4().hex[:8]), rate)
        async with driver:
            await driver.run_for(up_seconds)
            began: list[float] = []
            for n in range(kills):
                driver.set_stage(f"redis-{n}")
                began.append(time.monotonic())
                await asyncio.to_thread(h.redis.kill)
                await driver.run_for(down_seconds)
                await asyncio.to_thread(h.redis.start)
                await driver.run_for(up_seconds)
            driver.set_stage("after")
            await driver.run_for(up_seconds)
        report.notes.append(f"kills {kills}")
        report.judge_no_failure("warm-up", driver.since("warm-up"))
        for n, start in enumerate(began):
            report.judge_outage(
                "redis", driver.since(f"redis-{n}"), start, down_seconds + 10.0, label="redis"
            )
        report.judge_no_failure("after", driver.since("after"))
        await scenario.finish(report, h, session, driver)
    return report
