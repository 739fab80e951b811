"""`make chaos`: the fault scenarios, bounded, on loopback only, against one suite started
as `aiops run` starts it (with its own Redis and Postgres); prints one summary line per
scenario and exits non-zero when any scenario failed."""

from __future__ import annotations

import asyncio
import sys

from chaos import redis_kills, rolling, service_kills
from chaos.harness import Harness
from chaos.report import Report


async def _all(h: Harness) -> list[Report]:
    reports = []
    for scenario in (redis_kills.run, service_kills.run, rolling.run):
        report = await scenario(h)
        print(report.line(), flush=True)
        print(report.json(), flush=True)
        reports.append(report)
    return reports


def main() -> int:
    with Harness() as h:
        reports = asyncio.run(_all(h))
    return 0 if all(r.passed for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
