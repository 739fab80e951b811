"""What every scenario does once its load has stopped: count, replay, audit."""

from __future__ import annotations

import aiohttp

from chaos import load
from chaos.harness import Harness
from chaos.report import Report


async def finish(
    report: Report, h: Harness, session: aiohttp.ClientSession, driver: load.Load
) -> None:
    """Counts every outcome, replays refused feedback writes with their idempotency keys,
    then audits what was stored: lost and duplicated writes become problems."""
    report.count(driver.outcomes)
    report.replayed_ok = await load.replay(session, h.base, h.tokens, driver.outcomes)
    for target in sorted({p.target for p in driver.probes if p.writes_feedback}):
        lost, duplicated, _ = await load.audit_feedback(
            session, h.base, h.tokens["viewer"], target, driver.outcomes
        )
        report.lost += lost
        report.duplicated += duplicated
    if report.lost:
        report.problem(f"{report.lost} acknowledged feedback writes not stored")
    if report.duplicated:
        report.problem(f"{report.duplicated} feedback writes stored twice")
    still_refused = sum(1 for o in driver.outcomes if o.probe.writes_feedback and not o.ok)
    if still_refused:
        report.problem(f"{still_refused} feedback writes refused again on replay")
