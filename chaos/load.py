"""The one load driver of the fault scenarios: requests through the gateway at a steady
rate, spread over probes (one per route family), each outcome recorded for the summary.

Feedback writes carry an `Idempotency-Key` and a unique comment, so an audit can tell what
was stored, lost or stored twice. A request that fails at the connection level before any
response (a keep-alive connection the old gateway closes as it restarts, or a connection
still queued on its listening socket when it closes) is sent again on a fresh connection
when that is safe (reads, feedback writes with an idempotency key, points whose storage
ignores repeats), as an HTTP client should; such retries are counted in the summary.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import itertools
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

FEEDBACK = "/api/v1/aiops/feedback"
# The connection closed or was refused before any answer.
_NO_ANSWER = (
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientConnectionResetError,
    aiohttp.ClientOSError,
)
_CONNECTION_RETRIES = 2


@dataclass(frozen=True)
class Probe:
    """One kind of request and what it depends on."""

    name: str
    method: str
    path: str
    role: str
    depends_on: frozenset[str]
    body: Callable[[str, float], dict[str, Any]] | None = None
    target: str = ""  # the anomaly id feedback writes are about

    @property
    def writes_feedback(self) -> bool:
        return self.method == "POST" and self.path == FEEDBACK

    @property
    def retry_safe(self) -> bool:
        """Reads; keyed feedback writes; points (stored once per series and time)."""
        return self.method == "GET" or self.writes_feedback or self.name == "points"


def feedback_write(target: str) -> Probe:
    """Feedback on anomaly `target`; its comment is the idempotency key."""

    def body(key: str, now: float) -> dict[str, Any]:
        return {
            "target": {"kind": "TARGET_KIND_ANOMALY", "id": target},
            "verdict": "VERDICT_CONFIRMED",
            "comment": key,
        }

    deps = frozenset({"feedback", "redis"})
    return Probe("feedback", "POST", FEEDBACK, "operator", deps, body, target)


def points_write(series: str) -> Probe:
    """One sample of a gauge per request, pushed as an agent (stored, then scored)."""

    def body(key: str, now: float) -> dict[str, Any]:
        when = dt.datetime.fromtimestamp(now, dt.UTC).isoformat().replace("+00:00", "Z")
        return {"samples": [{"metric": series, "sampleTime": when, "value": now % 7}]}

    return Probe(
        "points",
        "POST",
        "/api/v1/aiops/points",
        "agent",
        frozenset({"telemetry", "postgres"}),
        body,
    )


SERIES_READ = Probe(
    "series",
    "GET",
    "/api/v1/aiops/series?pageSize=1",
    "viewer",
    frozenset({"telemetry", "postgres"}),
)
ANOMALIES_READ = Probe(
    "anomalies",
    "GET",
    "/api/v1/aiops/anomalies?pageSize=1",
    "viewer",
    frozenset({"anomaly", "postgres"}),
)
ACTIONS_READ = Probe(
    "actions", "GET", "/api/v1/aiops/actions?pageSize=1", "viewer", frozenset({"remediation"})
)


def mixed(run: str) -> tuple[Probe, ...]:
    """Every route family, feedback writes twice as often as each other probe."""
    write = feedback_write(f"chaos-{run}")
    return (
        write,
        points_write(f"chaos_load_{run}"),
        write,
        SERIES_READ,
        ANOMALIES_READ,
        ACTIONS_READ,
    )


@dataclass
class Outcome:
    probe: Probe
    key: str
    sent_at: float
    stage: str
    status: int = 0
    reason: str = ""
    retry_after: str | None = None
    name: str = ""
    retried: bool = False
    answered_at: float = 0.0

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class Load:
    """Sends `probes` round-robin at `rate` requests/s until stopped; `stage` labels each
    outcome with what the scenario was doing when it was sent."""

    session: aiohttp.ClientSession
    base: str
    tokens: dict[str, str]
    probes: Sequence[Probe]
    rate: float
    stage: str = "warm-up"
    outcomes: list[Outcome] = field(default_factory=list)
    _stages: list[tuple[str, float]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Load:
        self.set_stage(self.stage)
        self._task = asyncio.create_task(self._run(), name="chaos-load")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        begin = time.monotonic()
        for i, probe in enumerate(itertools.cycle(self.probes)):
            if self._stop.is_set():
                break
            delay = begin + i / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            out = Outcome(probe, uuid.uuid4().hex, time.monotonic(), self.stage)
            self.outcomes.append(out)
            task = asyncio.create_task(send(self.session, self.base, self.tokens, out))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)

    async def run_for(self, seconds: float) -> None:
        """Lets the load run `seconds` more (the load itself is what is being waited for)."""
        await asyncio.sleep(seconds)

    def set_stage(self, stage: str) -> None:
        """Labels the requests sent from now on."""
        self.stage = stage
        self._stages.append((stage, time.monotonic()))

    def since(self, stage: str) -> list[Outcome]:
        """The requests of `stage`: those sent during it, except failures answered after
        the next stage began (a disruption starting then caused them), plus such failures
        of the stage before."""
        starts = dict(self._stages)
        names = [name for name, _ in self._stages]
        index = names.index(stage)
        begins = starts[stage]
        ends = self._stages[index + 1][1] if index + 1 < len(self._stages) else float("inf")
        previous = names[index - 1] if index > 0 else None
        picked = []
        for o in self.outcomes:
            late = not o.ok and o.answered_at >= ends
            moved_in = o.stage == previous and not o.ok and begins <= o.answered_at < ends
            if (o.stage == stage and not late) or moved_in:
                picked.append(o)
        return picked


async def send(
    session: aiohttp.ClientSession, base: str, tokens: dict[str, str], out: Outcome
) -> None:
    """Sends one request; records status, error reason, Retry-After and feedback name."""
    probe = out.probe
    headers = {"Authorization": f"Bearer {tokens[probe.role]}"}
    if probe.writes_feedback:
        headers["Idempotency-Key"] = out.key
    body = probe.body(out.key, time.time()) if probe.body else None
    try:
        await _send(session, base, probe, headers, body, out)
    finally:
        out.answered_at = time.monotonic()


async def _send(
    session: aiohttp.ClientSession,
    base: str,
    probe: Probe,
    headers: dict[str, str],
    body: dict[str, Any] | None,
    out: Outcome,
) -> None:
    for attempt in range(_CONNECTION_RETRIES + 1):
        try:
            async with session.request(
                probe.method, base + probe.path, json=body, headers=headers
            ) as resp:
                out.status = resp.status
                out.retry_after = resp.headers.get("Retry-After")
                data = await resp.json(content_type=None)
            break
        except _NO_ANSWER as exc:
            if attempt < _CONNECTION_RETRIES and probe.retry_safe:
                out.retried = True
                continue
            out.status, out.reason = -1, type(exc).__name__
            return
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            out.status, out.reason = -1, type(exc).__name__
            return
    if out.ok:
        if probe.writes_feedback:
            out.name = data["feedback"]["name"]
        return
    out.reason = _reason(data)


def _reason(data: Any) -> str:
    try:
        error = data["error"]
        for detail in error.get("details", []):
            if detail.get("@type", "").endswith("google.rpc.ErrorInfo"):
                return str(detail.get("reason", error["code"]))
        return str(error["code"])
    except (KeyError, TypeError, AttributeError):
        return "NO_ENVELOPE"


async def audit_feedback(
    session: aiohttp.ClientSession, base: str, token: str, target: str, outcomes: list[Outcome]
) -> tuple[int, int, int]:
    """Reads back every feedback on `target`: (lost, duplicated, stored). Lost is a write
    acknowledged (2xx) but not stored; duplicated a key stored more than once."""
    by_key: collections.Counter[str] = collections.Counter()
    page_token = ""
    headers = {"Authorization": f"Bearer {token}"}
    while True:
        url = f"{base}{FEEDBACK}?targetKind=anomaly&targetId={target}&pageSize=500"
        if page_token:
            url += f"&pageToken={page_token}"
        async with session.get(url, headers=headers) as resp:
            page: dict[str, Any] = await resp.json()
        for item in page.get("feedback", []):
            by_key[item.get("comment", "")] += 1
        page_token = page.get("nextPageToken", "")
        if not page_token:
            break
    writes = [o for o in outcomes if o.probe.writes_feedback]
    lost = sum(1 for o in writes if o.name and by_key.get(o.key, 0) == 0)
    duplicated = sum(1 for n in by_key.values() if n > 1)
    return lost, duplicated, sum(by_key.values())


async def replay(
    session: aiohttp.ClientSession, base: str, tokens: dict[str, str], outcomes: list[Outcome]
) -> int:
    """Sends the refused feedback writes again with the same keys; how many got a 2xx."""
    refused = [o for o in outcomes if o.probe.writes_feedback and not o.ok]
    for chunk in range(0, len(refused), 100):
        batch = refused[chunk : chunk + 100]
        await asyncio.gather(*(send(session, base, tokens, o) for o in batch))
    return sum(1 for o in refused if o.ok)
