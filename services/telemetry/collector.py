"""The collector: reads every source, derives the critical metrics, stores and forwards
the points. Only the holder of the cluster-wide lease runs the periodic loop; every
replica can answer `Collect` on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from prometheus_client import Counter, Gauge

from services.kit import errors
from services.telemetry import critical, domain, ingest, sources

log = logging.getLogger(__name__)

LEASE_HOLDER = Gauge(
    "aiops_telemetry_lease_holder", "1 while this replica holds the collector lease, else 0."
)
ROUNDS = Counter(
    "aiops_telemetry_collect_rounds_total",
    "Collection rounds, by outcome (collected, skipped: another replica had the interval).",
    ["outcome"],
)
POINTS_WRITTEN = Counter(
    "aiops_telemetry_points_written_total",
    "Points stored, by origin (push, collector).",
    ["origin"],
)
POINTS_REJECTED = Counter(
    "aiops_telemetry_points_rejected_total",
    "Points not stored, by origin and reason.",
    ["origin", "reason"],
)
_BACKFILL_MAX_SECONDS = 3600.0


class Lease(Protocol):
    @property
    def held(self) -> bool: ...

    async def try_acquire(self) -> bool: ...

    async def release(self) -> None: ...


class RoundStore(Protocol):
    async def claim_round(self, slot: int, holder: str, when: float) -> bool: ...

    async def last_point_time(self, metric: str) -> float | None: ...


class Sink(Protocol):
    def offer(self, rows: Sequence[domain.Row]) -> None: ...


@dataclass(frozen=True, slots=True)
class Config:
    targets: tuple[str, ...]
    raw_metrics: frozenset[str]
    prometheus_url: str | None
    prometheus_queries: tuple[tuple[str, str], ...]
    interval: float
    timeout: float
    window: float


@dataclass(frozen=True, slots=True)
class Snapshot:
    values: Sequence[critical.Value]
    sources: Sequence[sources.Status]
    time: float
    window: float

    @property
    def within_slo(self) -> bool:
        return all(v.within_slo for v in self.values)


def count(result: domain.WriteResult, origin: str) -> None:
    """Records a write's outcome in the service's metrics."""
    if result.accepted:
        POINTS_WRITTEN.labels(origin).inc(result.accepted)
    for reason, n in result.rejections.items():
        POINTS_REJECTED.labels(origin, reason.value).inc(n)


class Collector:
    def __init__(
        self,
        config: Config,
        session: aiohttp.ClientSession,
        ingestor: ingest.Ingestor,
        rounds: RoundStore,
        lease: Lease,
        sink: Sink | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._session = session
        self._ingestor = ingestor
        self._rounds = rounds
        self._lease = lease
        self._sink = sink
        self._clock = clock
        self._histories = {url: critical.History(config.window) for url in config.targets}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.collected_slots: list[int] = []

    async def collect(self, *, store: bool, limit_seconds: float | None = None) -> Snapshot:
        """One round: reads every source concurrently (each under its own timeout, so a
        hanging one delays nobody) and derives the critical metrics. With `store`, the
        points are written and forwarded. `limit_seconds` shortens the per-source timeout
        (the caller's deadline)."""
        async with self._lock:
            now = self._clock()
            cfg = self._config
            limit = min(cfg.timeout, limit_seconds) if limit_seconds else cfg.timeout
            scrapes = [sources.scrape(self._session, url, limit) for url in cfg.targets]
            queries = [
                sources.prometheus_query(self._session, cfg.prometheus_url, q, limit, at=now)
                for _, q in cfg.prometheus_queries
                if cfg.prometheus_url
            ]
            results = await asyncio.gather(*scrapes)
            prom = await asyncio.gather(*queries)
            samples: list[domain.Incoming] = []
            views = []
            for url, (_, scrape) in zip(cfg.targets, results, strict=True):
                # On-demand rounds between the loop's keep at most one scrape per half
                # interval; the rest count for this round only.
                view = self._histories[url].add(now, scrape, cfg.interval / 2)
                views.append(view)
                samples += critical.raw_samples(view, cfg.raw_metrics, sources.instance(url), now)
            values = critical.compute(views, now, cfg.window)
            overrides: dict[str, float] = {}
            for (name, _), answer in zip(cfg.prometheus_queries, prom, strict=False):
                if any(s.metric == name for s in critical.SPECS):
                    if answer.samples:
                        overrides[name] = answer.samples[0].value
                    continue
                samples += [
                    domain.Incoming(name, s.labels, s.time, s.value) for s in answer.samples
                ]
            values = [
                critical.Value(v.spec, overrides[v.spec.metric])
                if v.spec.metric in overrides
                else v
                for v in values
            ]
            samples += critical.critical_samples(values, now)
            snapshot = Snapshot(
                values, [s for s, _ in results] + [p.status for p in prom], now, cfg.window
            )
            if store and samples:
                await self._write(samples)
            return snapshot

    async def _write(self, samples: Sequence[domain.Incoming]) -> None:
        result = await self._ingestor.write(samples, collector=True)
        count(result, "collector")
        if self._sink is not None and result.rows:
            self._sink.offer(result.rows)

    async def backfill(self, start: float, end: float) -> int:
        """Fills [start, end) of every Prometheus query's series with a range query, at the
        collect interval; returns how many points were stored."""
        cfg = self._config
        if not cfg.prometheus_url or end <= start:
            return 0
        stored = 0
        for name, promql in cfg.prometheus_queries:
            if any(s.metric == name for s in critical.SPECS):
                continue
            answer = await sources.prometheus_query(
                self._session,
                cfg.prometheus_url,
                promql,
                cfg.timeout,
                start=start,
                end=end,
                step=max(1.0, cfg.interval),
            )
            samples = [domain.Incoming(name, s.labels, s.time, s.value) for s in answer.samples]
            if samples:
                result = await self._ingestor.write(samples, collector=True)
                count(result, "backfill")
                stored += result.accepted
        return stored

    # -- the loop ------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="telemetry-collector")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._lease.release()
        LEASE_HOLDER.set(0)

    async def _loop(self) -> None:
        interval = self._config.interval
        holding = False
        while True:
            now = self._clock()
            slot = math.floor(now / interval) + 1
            await asyncio.sleep(max(0.0, slot * interval - now))
            try:
                held = await self._lease.try_acquire()
            except errors.AiopsError:
                held = False
            LEASE_HOLDER.set(1 if held else 0)
            if held != holding:
                log.info(
                    "collector lease " + ("acquired" if held else "not held"),
                    extra={"holder": self.holder},
                )
                holding = held
                if held:
                    await self._catch_up()
            if not held:
                continue
            try:
                if await self._rounds.claim_round(slot, self.holder, self._clock()):
                    await self.collect(store=True)
                    self.collected_slots.append(slot)
                    ROUNDS.labels("collected").inc()
                else:
                    ROUNDS.labels("skipped").inc()
            except errors.AiopsError as exc:
                log.warning("collection round failed", extra={"reason": exc.reason})
            except Exception:
                # The loop must outlive any one bad round; the next interval tries again.
                log.exception("collection round crashed", extra={"slot": slot})

    async def _catch_up(self) -> None:
        """After taking the lease, fills what the Prometheus queries missed meanwhile."""
        cfg = self._config
        if not cfg.prometheus_url or not cfg.prometheus_queries:
            return
        now = self._clock()
        try:
            lasts = [await self._rounds.last_point_time(n) for n, _ in cfg.prometheus_queries]
            known = [t for t in lasts if t is not None]
            if not known:
                return
            start = max(min(known) + cfg.interval, now - _BACKFILL_MAX_SECONDS)
            stored = await self.backfill(start, now - cfg.interval / 2)
            if stored:
                log.info("prometheus gap backfilled", extra={"points": stored})
        except errors.AiopsError as exc:
            log.warning("backfill failed", extra={"reason": exc.reason})
