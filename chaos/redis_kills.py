"""Fault scenario: `kill -9` Redis again and again while clients write feedback through the
gateway at a steady rate, then account for every request.

Checks: every feedback that got a 2xx is readable afterwards (zero lost); every write during
an outage got 503 with Retry-After (never a 2xx for what was not stored, never another 5xx);
replaying the failed writes with their idempotency keys after recovery stores each once
(zero duplicates); and the error rate is back under 0.5 % within 10 s of Redis returning.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.suite import Suite
from services.kit import local_servers

FEEDBACK = "/api/v1/aiops/feedback"


@dataclass
class Outcome:
    key: str
    sent_at: float
    status: int = 0
    retry_after: str | None = None
    name: str = ""


@dataclass
class Report:
    scenario: str
    sent: int = 0
    acknowledged: int = 0
    refused_503: int = 0
    refused_503_without_retry_after: int = 0
    other_errors: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    duplicated: int = 0
    replayed_ok: int = 0
    slowest_recovery_seconds: float = 0.0
    kills: int = 0

    @property
    def passed(self) -> bool:
        return (
            self.lost == 0
            and self.duplicated == 0
            and not self.other_errors
            and self.refused_503_without_retry_after == 0
            and self.slowest_recovery_seconds <= 10.0
            and self.acknowledged > 0
        )

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"{verdict} {self.scenario}: sent {self.sent}, acknowledged {self.acknowledged}, "
            f"503 {self.refused_503}, lost {self.lost}, duplicated {self.duplicated}, "
            f"other errors {self.other_errors or 0}, kills {self.kills}, "
            f"slowest recovery {self.slowest_recovery_seconds:.1f} s"
        )


async def _post(session: aiohttp.ClientSession, base: str, token: str, out: Outcome) -> None:
    body = {
        "target": {"kind": "TARGET_KIND_ANOMALY", "id": "chaos"},
        "verdict": "VERDICT_CONFIRMED",
        "comment": out.key,
    }
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": out.key}
    try:
        async with session.post(base + FEEDBACK, json=body, headers=headers) as resp:
            out.status = resp.status
            out.retry_after = resp.headers.get("Retry-After")
            data = await resp.json(content_type=None)
            if resp.status in (200, 201):
                out.name = data["feedback"]["name"]
    except (TimeoutError, aiohttp.ClientError, ValueError):
        out.status = -1


def _recovery(outcomes: list[Outcome], restarts: list[float], kills: list[float]) -> float:
    """For each Redis restart, seconds until the error rate of the 1-second windows that
    follow stays under 0.5 % up to the next kill (or the end of the run)."""
    slowest = 0.0
    for n, restart in enumerate(restarts):
        until = kills[n + 1] if n + 1 < len(kills) else math.inf
        later = [o for o in outcomes if restart <= o.sent_at < until]
        windows: dict[int, list[int]] = collections.defaultdict(list)
        for o in later:
            windows[int(o.sent_at - restart)].append(o.status)
        recovered_at: int | None = None
        for second in sorted(windows):
            statuses = windows[second]
            errors = sum(1 for s in statuses if s not in (200, 201))
            if errors / len(statuses) < 0.005:
                recovered_at = recovered_at if recovered_at is not None else second
            else:
                recovered_at = None
        # Never recovered before the next kill: count the whole stretch.
        seconds = recovered_at if recovered_at is not None else len(windows)
        slowest = max(slowest, float(seconds))
    return slowest


async def run(
    kills: int = 10,
    rate: float = 250.0,
    up_seconds: float = 3.0,
    down_seconds: float = 1.5,
    scenario: str = "redis kill -9",
) -> Report:
    redis = local_servers.LocalRedis(Path(Suite.scratch("chaos-redis")), appendonly=True)
    await asyncio.to_thread(redis.start)
    report = Report(scenario)
    try:
        with Suite(AIOPS_REDIS_URL=redis.url) as suite:
            token = suite.token("operator")
            outcomes: list[Outcome] = []
            restarts: list[float] = []
            kill_times: list[float] = []
            stop = asyncio.Event()
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256),
                timeout=aiohttp.ClientTimeout(total=10),
            ) as session:

                async def load() -> None:
                    tasks: set[asyncio.Task[None]] = set()
                    begin = time.monotonic()
                    i = 0
                    while not stop.is_set():
                        due = begin + i / rate
                        await asyncio.sleep(max(0.0, due - time.monotonic()))
                        out = Outcome(uuid.uuid4().hex, time.monotonic())
                        outcomes.append(out)
                        task = asyncio.create_task(_post(session, suite.base, token, out))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                        i += 1
                    await asyncio.gather(*tasks)

                async def chaos() -> None:
                    await asyncio.sleep(up_seconds)
                    for _ in range(kills):
                        kill_times.append(time.monotonic())
                        await asyncio.to_thread(redis.kill)
                        report.kills += 1
                        await asyncio.sleep(down_seconds)
                        await asyncio.to_thread(redis.start)
                        restarts.append(time.monotonic())
                        await asyncio.sleep(up_seconds)
                    await asyncio.sleep(10.0)  # a long last stretch: recovery seen in full
                    stop.set()

                await asyncio.gather(load(), chaos())
                report.sent = len(outcomes)
                for o in outcomes:
                    if o.status in (200, 201):
                        report.acknowledged += 1
                    elif o.status == 503:
                        report.refused_503 += 1
                        report.refused_503_without_retry_after += o.retry_after is None
                    else:
                        key = str(o.status)
                        report.other_errors[key] = report.other_errors.get(key, 0) + 1
                report.slowest_recovery_seconds = _recovery(outcomes, restarts, kill_times)
                # Replay what was refused, with the same idempotency keys.
                refused = [o for o in outcomes if o.status not in (200, 201)]
                for chunk in range(0, len(refused), 100):
                    batch = refused[chunk : chunk + 100]
                    await asyncio.gather(*(_post(session, suite.base, token, o) for o in batch))
                report.replayed_ok = sum(1 for o in refused if o.status in (200, 201))
                report.lost, report.duplicated = await _audit(session, suite, token, outcomes)
    finally:
        await asyncio.to_thread(redis.close)
    return report


async def _audit(
    session: aiohttp.ClientSession, suite: Suite, token: str, outcomes: list[Outcome]
) -> tuple[int, int]:
    """Reads back everything stored: acknowledged-but-missing and stored-twice counts."""
    by_key: dict[str, int] = collections.Counter()
    page_token = ""
    headers = {"Authorization": f"Bearer {token}"}
    while True:
        url = f"{suite.base}{FEEDBACK}?targetKind=anomaly&targetId=chaos&pageSize=500"
        if page_token:
            url += f"&pageToken={page_token}"
        async with session.get(url, headers=headers) as resp:
            page: dict[str, Any] = await resp.json()
        for item in page.get("feedback", []):
            by_key[item.get("comment", "")] += 1
        page_token = page.get("nextPageToken", "")
        if not page_token:
            break
    lost = sum(1 for o in outcomes if o.name and by_key.get(o.key, 0) == 0)
    duplicated = sum(1 for n in by_key.values() if n > 1)
    return lost, duplicated


def main() -> int:
    report = asyncio.run(run())
    print(report.line())
    print("CHAOS_JSON " + json.dumps(report.__dict__ | {"passed": report.passed}))
    return 0 if report.passed else 1
