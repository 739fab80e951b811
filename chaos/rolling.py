"""Fault scenario: a rolling restart (SIGTERM, replacement first) of each service and of
the gateway under steady load: not one failed request, nothing acknowledged lost, nothing
stored twice.

The supervisor starts the replacement on the same ports (SO_REUSEPORT), waits until it is
ready, then sends SIGTERM to the old process, which goes NOT_SERVING, stops accepting,
finishes its in-flight calls and exits; the gateway's channels move to the new process.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from chaos import load, scenario
from chaos.harness import SERVICES, Harness
from chaos.report import Report


async def run(
    h: Harness,
    targets: Sequence[str] = (*SERVICES, "gateway"),
    rate: float = 200.0,
    settle_seconds: float = 1.0,
    name: str = "rolling restart",
) -> Report:
    report = Report(name)
    async with h.session() as session:
        driver = load.Load(session, h.base, h.tokens, load.mixed(uuid.uuid4().hex[:8]), rate)
        async with driver:
            await driver.run_for(settle_seconds)
            for target in targets:
                driver.set_stage(target)
                began = time.monotonic()
                result = await h.rolling_restart(target)
                if result != "restarted":
                    report.problem(f"{target}: {result}")
                report.recovery_seconds[target] = round(time.monotonic() - began, 1)
                await driver.run_for(settle_seconds)
            driver.set_stage("after")
            await driver.run_for(settle_seconds)
        for stage in ("warm-up", *targets, "after"):
            outcomes = driver.since(stage)
            report.judge_no_failure(stage, outcomes)
            # Only the gateway's own restart may make clients reconnect.
            retried = sum(o.retried for o in outcomes)
            if stage != "gateway" and retried:
                report.problem(f"{stage}: {retried} requests needed a new connection")
        await scenario.finish(report, h, session, driver)
    report.notes.append("recovery = time to roll each process (no request failed meanwhile)")
    return report
