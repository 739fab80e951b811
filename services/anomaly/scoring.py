"""Scoring of observation batches: validation with counted rejections, per-series detector
state, anomaly events opened and closed from consecutive anomalous points, checkpoints.

Pure logic over the `Scorer` (where detectors run) and `domain.AnomalyStore` protocols.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from prometheus_client import Gauge

from services.anomaly import columns, domain, engine, recent
from services.kit import errors, ids

SCORE = Gauge(
    "aiops_anomaly_score",
    "Anomaly score in [0, 1] of the latest point of a series.",
    ["series"],
)

log = logging.getLogger(__name__)

# Event changes kept in memory while Postgres is unreachable.
MAX_PENDING_EVENTS = 50_000


@dataclass(frozen=True, slots=True)
class Observation:
    series: str
    time: float | None
    value: float
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Batch:
    """Observations as columns (cheaper than one object per point): a missing time is
    None, and `labels` maps a point's index to its labels when it has any."""

    series: Sequence[str]
    times: Sequence[float | None]
    values: Sequence[float]
    labels: Mapping[int, Mapping[str, str]] = field(default_factory=dict)

    @classmethod
    def of(cls, points: Sequence[Observation]) -> Batch:
        return cls(
            [p.series for p in points],
            [p.time for p in points],
            [p.value for p in points],
            {i: p.labels for i, p in enumerate(points) if p.labels},
        )

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True, slots=True)
class PointResult:
    score: float = 0.0
    anomalous: bool = False
    signals: tuple[str, ...] = ()
    threshold: float = 0.0
    anomaly: str = ""
    reject: domain.Reject | None = None


@dataclass(frozen=True, slots=True)
class BatchResult:
    """Per point (as columns): score, signal bitmask, threshold, anomaly name, reject."""

    scores: list[float]
    flags: list[int]
    thresholds: list[float]
    anomalies: list[str]
    rejects: list[domain.Reject | None]
    rejections: Mapping[domain.Reject, int]
    opened: list[str]

    def point(self, i: int) -> PointResult:
        if self.rejects[i] is not None:
            return PointResult(reject=self.rejects[i])
        return PointResult(
            self.scores[i],
            self.scores[i] >= self.thresholds[i],
            engine.signal_names(self.flags[i]),
            self.thresholds[i],
            self.anomalies[i],
        )


@dataclass(frozen=True, slots=True)
class _Applied:
    """One series' points compared with their thresholds: the series' threshold, which
    points crossed theirs, the thresholds of points held to a learned kind of alarm and
    the anomaly names of points that opened or extended one (both by index)."""

    threshold: float
    anomalous: np.ndarray  # indexes, ascending
    thresholds: Mapping[int, float]
    names: Mapping[int, str]


_NO_INDEXES = np.empty(0, dtype=np.int64)


class ThresholdSource(Protocol):
    """The effective thresholds of each series and kind of alarm (learned from feedback)."""

    def effective(self, series: str, signature: str = "") -> float: ...

    def lowest(self, series: str) -> float: ...

    def learned(self, series: str) -> bool: ...


class Scorer(Protocol):
    """Where the detectors live: on the event loop or in worker processes."""

    async def score(self, groups: Sequence[engine.Group]) -> list[engine.Scored]: ...

    async def snapshot(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]: ...

    async def restore(self, states: Mapping[str, Mapping[str, Any]]) -> list[str]: ...

    async def drop(self, keys: Sequence[str]) -> None: ...


@dataclass(slots=True)
class _Series:
    last_time: float = -math.inf
    last_value: float = math.nan
    labels: Mapping[str, str] = field(default_factory=dict)
    event: domain.Anomaly | None = None
    normal_run: int = 0
    last_anomalous_time: float = 0.0
    recent: recent.RecentPoints = field(default_factory=lambda: recent.RecentPoints(1))
    dirty: bool = False
    evaluated: int = 0  # points seen at the latest drift evaluation
    seen: int = 0
    gauge: Any = None  # the series' child of SCORE, looked up once


class Monitor:
    """Keeps the per-series state of one replica and turns batches into scores and events.

    Args:
        scorer: runs the detectors.
        store: durable events and checkpoints.
        suggester: receives each newly stored event.
        thresholds: the effective threshold of each series and kind of alarm.
        owns: whether this replica owns a series (sharding); others are rejected.
        max_series: most series tracked.
        close_after: consecutive normal points that close an event.
        recent_size: values kept per series for drift tests.
        kind_depth: signal names in an alarm kind (the key of learned offsets); 0 means all.
        clock: wall clock (epoch seconds).
    """

    def __init__(
        self,
        scorer: Scorer,
        store: domain.AnomalyStore,
        suggester: domain.Suggester,
        thresholds: ThresholdSource,
        *,
        owns: Callable[[str], bool] = lambda _: True,
        max_series: int = 100_000,
        close_after: int = 5,
        recent_size: int = 1000,
        kind_depth: int = 0,
        clock: Callable[[], float],
    ) -> None:
        self._scorer = scorer
        self._store = store
        self._suggester = suggester
        self._thresholds = thresholds
        self._owns = owns
        self._max_series = max_series
        self._close_after = close_after
        self._recent_size = recent_size
        self._kind_depth = kind_depth
        self._clock = clock
        self._series: dict[str, _Series] = {}
        self._lock = asyncio.Lock()
        self._flush_lock = asyncio.Lock()
        # Latest version of each event not yet stored, and events whose opening is unstored.
        self._pending: dict[str, domain.Anomaly] = {}
        self._unsuggested: set[str] = set()

    @property
    def series_count(self) -> int:
        return len(self._series)

    def series_keys(self) -> list[str]:
        return sorted(self._series)

    def window(self, series: str) -> tuple[list[float], list[float]] | None:
        """The recent (times, values) of a series this replica tracks, oldest first."""
        s = self._series.get(series)
        return None if s is None else s.recent.lists()

    def due_for_drift(self, min_new: int) -> list[str]:
        """Series with at least `min_new` points since their latest drift evaluation."""
        return [k for k, s in self._series.items() if s.seen - s.evaluated >= min_new]

    def mark_evaluated(self, series: str) -> None:
        s = self._series.get(series)
        if s is not None:
            s.evaluated = s.seen

    def labels(self, series: str) -> Mapping[str, str]:
        s = self._series.get(series)
        return {} if s is None else s.labels

    async def score(self, batch: Batch | Sequence[Observation]) -> BatchResult:
        """Scores observations one by one (the per-observation request form)."""
        cols = batch if isinstance(batch, Batch) else Batch.of(batch)
        async with self._lock:
            result = await self._score_locked(cols)
        await self.flush()
        return result

    async def score_columns(
        self, entries: Sequence[columns.SeriesColumns]
    ) -> columns.ColumnsResult:
        """Scores the columnar form: per entry, compiled checks, one detector call and
        the event logic only for anomalous points and while an event is open."""
        async with self._lock:
            result = await self._score_columns_locked(entries)
        await self.flush()
        return result

    def _admit(self, key: str, new_series: int) -> domain.Reject | None:
        """Why points of an untracked series cannot be scored here, if they cannot."""
        if not domain.series_key_ok(key):
            return domain.Reject.INVALID_SERIES
        if not self._owns(key):
            return domain.Reject.NOT_OWNER
        if len(self._series) + new_series >= self._max_series:
            return domain.Reject.SERIES_LIMIT
        return None

    async def _resume_unknown(self, keys: Iterable[str]) -> None:
        # Before validation: a series resumed from a checkpoint brings its latest time.
        unknown = [
            k
            for k in dict.fromkeys(keys)
            if k not in self._series and domain.series_key_ok(k) and self._owns(k)
        ]
        if unknown:
            await self._resume(unknown)

    def _validate(self, b: Batch, rejects: list[domain.Reject | None]) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = {}
        last: dict[str, float] = {}
        known = self._series
        isfinite = math.isfinite
        new_series = 0
        for i, (key, t, x) in enumerate(zip(b.series, b.times, b.values, strict=True)):
            reason: domain.Reject | None = None
            prev = last.get(key)
            if prev is None:
                s = known.get(key)
                if s is None:
                    reason = self._admit(key, new_series)
                    prev = -math.inf
                else:
                    prev = s.last_time
            if reason is not None:
                pass
            elif t is None or not isfinite(t):
                reason = domain.Reject.MISSING_TIME
            elif not isfinite(x):
                reason = domain.Reject.NON_FINITE_VALUE
            elif i in b.labels and not domain.labels_valid(b.labels[i]):
                reason = domain.Reject.INVALID_LABELS
            elif t <= prev:
                reason = domain.Reject.NON_MONOTONIC_TIME
            if reason is not None:
                rejects[i] = reason
                continue
            assert t is not None
            if key not in last and key not in known:
                new_series += 1
            last[key] = t
            g = groups.get(key)
            if g is None:
                groups[key] = [i]
            else:
                g.append(i)
        return groups

    async def _score_locked(self, b: Batch) -> BatchResult:
        n = len(b)
        rejects: list[domain.Reject | None] = [None] * n
        await self._resume_unknown(b.series)
        groups = self._validate(b, rejects)
        keys = list(groups)
        times, values = b.times, b.values
        arrays = [
            (
                np.fromiter((times[i] for i in groups[k]), np.float64, len(groups[k])),
                np.fromiter((values[i] for i in groups[k]), np.float64, len(groups[k])),
            )
            for k in keys
        ]
        scored = await self._scorer.score(
            [(k, ts, xs) for k, (ts, xs) in zip(keys, arrays, strict=True)]
        )
        scores = [0.0] * n
        flags = [0] * n
        thresholds = [0.0] * n
        names = [""] * n
        opened: list[tuple[float, str]] = []
        for key, (ts, xs), out in zip(keys, arrays, scored, strict=True):
            idx = groups[key]
            point_labels = {j: b.labels[i] for j, i in enumerate(idx) if i in b.labels}
            applied = self._apply(key, ts, xs, out, {}, point_labels, opened)
            for j, (i, v, f) in enumerate(
                zip(idx, out.values.tolist(), out.flags.tolist(), strict=True)
            ):
                scores[i] = v
                flags[i] = f
                thresholds[i] = applied.thresholds.get(j, applied.threshold)
                names[i] = applied.names.get(j, "")
        counts: dict[domain.Reject, int] = collections.Counter(r for r in rejects if r is not None)
        opened.sort()
        return BatchResult(
            scores, flags, thresholds, names, rejects, counts,
            [f"anomalies/{aid}" for _, aid in opened],
        )  # fmt: skip

    async def _score_columns_locked(
        self, entries: Sequence[columns.SeriesColumns]
    ) -> columns.ColumnsResult:
        await self._resume_unknown(e.series for e in entries)
        known = self._series
        last: dict[str, float] = {}
        new_keys: set[str] = set()
        counts: collections.Counter[domain.Reject] = collections.Counter()
        # Per entry: a whole-entry reject, or the per-point codes and accepted indexes
        # (None when every point was accepted).
        checked: list[tuple[domain.Reject | None, np.ndarray | None, np.ndarray | None]] = []
        groups: list[engine.Group] = []
        for e in entries:
            key = e.series
            prev = last.get(key)
            reject: domain.Reject | None = None
            if prev is None:
                s = known.get(key)
                if s is None:
                    reject = self._admit(key, len(new_keys))
                    prev = -math.inf
                else:
                    prev = s.last_time
            if reject is None and e.labels and not domain.labels_valid(e.labels):
                reject = domain.Reject.INVALID_LABELS
            if reject is not None:
                counts[reject] += len(e)
                checked.append((reject, None, None))
                continue
            reasons, times = columns.point_reasons(e.times_micros, e.values, prev)
            if reasons is None:
                ts, xs, idx = times, e.values, None
            else:
                for code, count in enumerate(np.bincount(reasons).tolist()):
                    if code and count:
                        counts[columns.reject_of(code)] += count
                idx = np.flatnonzero(reasons == columns.ACCEPTED)
                ts, xs = times[idx], e.values[idx]
            checked.append((None, reasons, idx))
            if ts.shape[0]:
                if key not in known:
                    new_keys.add(key)
                last[key] = float(ts[-1])
                groups.append((key, ts, xs))
        scored = iter(await self._scorer.score(groups))
        pending = iter(groups)
        opened: list[tuple[float, str]] = []
        outcomes: list[columns.SeriesOutcome] = []
        for e, (reject, codes, kept) in zip(entries, checked, strict=True):
            n = len(e)
            if reject is not None:
                outcomes.append(
                    columns.SeriesOutcome(
                        e.series, np.zeros(n), self._thresholds.effective(e.series),
                        _NO_INDEXES, (), reject,
                    )
                )  # fmt: skip
                continue
            details: list[columns.PointDetail] = []
            if codes is not None:
                details = [
                    columns.PointDetail(int(i), reject=columns.reject_of(int(codes[i])))
                    for i in np.flatnonzero(codes).tolist()
                ]
            if kept is not None and not kept.shape[0]:
                outcomes.append(
                    columns.SeriesOutcome(
                        e.series, np.zeros(n), self._thresholds.effective(e.series),
                        _NO_INDEXES, details,
                    )
                )  # fmt: skip
                continue
            key, ts, xs = next(pending)
            out = next(scored)
            applied = self._apply(key, ts, xs, out, e.labels, {}, opened)
            local = applied.anomalous
            anomalous = local if kept is None or not local.shape[0] else kept[local]
            flags = out.flags
            for j, i in zip(local.tolist(), anomalous.tolist(), strict=True):
                details.append(
                    columns.PointDetail(
                        i, True, int(flags[j]), applied.thresholds.get(j, applied.threshold),
                        applied.names.get(j, ""),
                    )
                )  # fmt: skip
            if kept is None:
                scores = out.values
            else:
                scores = np.zeros(n)
                scores[kept] = out.values
                details.sort(key=lambda d: d.index)
            outcomes.append(
                columns.SeriesOutcome(e.series, scores, applied.threshold, anomalous, details)
            )
        opened.sort()
        return columns.ColumnsResult(outcomes, counts, [f"anomalies/{aid}" for _, aid in opened])

    def _apply(
        self,
        key: str,
        ts: np.ndarray,
        xs: np.ndarray,
        out: engine.Scored,
        labels: Mapping[str, str],
        point_labels: Mapping[int, Mapping[str, str]],
        opened: list[tuple[float, str]],
    ) -> _Applied:
        """Compares one series' scored points with their thresholds, runs the event logic
        where it is needed and updates the series' state."""
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = _Series(recent=recent.RecentPoints(self._recent_size))
        th = self._thresholds
        thr = th.effective(key)
        vals = out.values
        learned = th.learned(key)
        special: dict[int, float] = {}
        names: dict[int, str] = {}
        if not learned and s.event is None and columns.peak(vals) < thr:
            # The common case: nothing crossed, no event open, nothing more to do.
            hot = _NO_INDEXES
        else:
            anomalous = vals >= thr
            start_last = s.last_value
            if learned:
                # Learned offsets depend on the kind of alarm, known only once a point is
                # scored; points below the lowest threshold of the series skip that lookup.
                for j in np.flatnonzero(vals >= th.lowest(key)).tolist():
                    prev = float(xs[j - 1]) if j else start_last
                    kind = domain.alarm_kind(
                        float(xs[j]), prev, engine.signal_names(int(out.flags[j])),
                        self._kind_depth,
                    )  # fmt: skip
                    special[j] = th.effective(key, kind)
                    anomalous[j] = vals[j] >= special[j]
            hot = np.flatnonzero(anomalous)
            if hot.shape[0] or s.event is not None:
                self._events(s, key, ts, xs, out, anomalous, hot.tolist(), thr, special,
                             labels, point_labels, names, opened)  # fmt: skip
        if s.gauge is None:
            s.gauge = SCORE.labels(key)
        s.gauge.set(float(vals[-1]))
        s.last_time = float(ts[-1])
        s.last_value = float(xs[-1])
        s.recent.extend(ts, xs)
        s.seen += vals.shape[0]
        final = point_labels.get(vals.shape[0] - 1) or labels
        if final:
            s.labels = dict(final)
        s.dirty = True
        return _Applied(thr, hot, special, names)

    def _events(
        self,
        s: _Series,
        key: str,
        ts: np.ndarray,
        xs: np.ndarray,
        out: engine.Scored,
        anomalous: np.ndarray,
        hot: list[int],
        thr: float,
        special: Mapping[int, float],
        labels: Mapping[str, str],
        point_labels: Mapping[int, Mapping[str, str]],
        names: dict[int, str],
        opened: list[tuple[float, str]],
    ) -> None:
        """The event logic over one series' points: only anomalous points and points of a
        series with an open event need it; it jumps from one anomalous point to the next
        while no event is open."""
        vals = out.values
        start_last = s.last_value
        n = vals.shape[0]
        k = 0
        j = 0 if s.event is not None else hot[0]
        while j < n:
            if s.event is None:
                while k < len(hot) and hot[k] < j:
                    k += 1
                if k == len(hot):
                    break
                j = hot[k]
            s.last_value = float(xs[j - 1]) if j else start_last
            name = self._track(
                s, key, float(ts[j]), float(xs[j]), point_labels.get(j) or labels,
                float(vals[j]), engine.signal_names(int(out.flags[j])), bool(anomalous[j]),
                special.get(j, thr), opened,
            )  # fmt: skip
            if name:
                names[j] = name
            j += 1

    def _track(
        self,
        s: _Series,
        key: str,
        t: float,
        value: float,
        labels: Mapping[str, str],
        score: float,
        signals: tuple[str, ...],
        anomalous: bool,
        thr: float,
        opened: list[tuple[float, str]],
    ) -> str:
        ev = s.event
        now = self._clock()
        if anomalous:
            s.normal_run = 0
            s.last_anomalous_time = t
            if ev is None:
                before = s.last_value if math.isfinite(s.last_value) else value
                kind = domain.alarm_kind(value, before, signals, self._kind_depth)
                ev = domain.Anomaly(
                    id=ids.new_id(now),
                    series=key,
                    labels=dict(labels or s.labels),
                    state=domain.State.OPEN,
                    severity=domain.severity_for(score, thr),
                    start_time=t,
                    end_time=None,
                    peak_score=score,
                    peak_time=t,
                    peak_value=value,
                    signals=signals,
                    explanation=domain.explain(key, value, before, signals, score, thr),
                    signature=f"{domain.metric_of(key)}:{kind}",
                    detector=domain.DETECTOR,
                    threshold=thr,
                    create_time=now,
                    update_time=now,
                )
                opened.append((t, ev.id))
                self._unsuggested.add(ev.id)
            else:
                merged = tuple(sorted(set(ev.signals) | set(signals)))
                if score > ev.peak_score:
                    ev = dataclasses.replace(
                        ev,
                        peak_score=score,
                        peak_time=t,
                        peak_value=value,
                        severity=max(ev.severity, domain.severity_for(score, thr)),
                        signals=merged,
                        update_time=now,
                    )
                elif merged != ev.signals:
                    ev = dataclasses.replace(ev, signals=merged, update_time=now)
            s.event = ev
            self._pending[ev.id] = ev
            return ev.name
        if ev is None:
            return ""
        s.normal_run += 1
        if s.normal_run >= self._close_after:
            closed = dataclasses.replace(
                ev, state=domain.State.CLOSED, end_time=s.last_anomalous_time, update_time=now
            )
            self._pending[ev.id] = closed
            s.event = None
            s.normal_run = 0
        return ""

    async def flush(self) -> bool:
        """Stores pending event changes; on a database outage they wait for the next try."""
        async with self._flush_lock:
            if not self._pending:
                return True
            items = list(self._pending.values())
            try:
                await self._store.upsert_anomalies(items)
            except errors.Unavailable:
                log.warning("anomaly events not stored yet", extra={"pending": len(items)})
                # A long outage must not grow memory without end: the oldest changes go.
                while len(self._pending) > MAX_PENDING_EVENTS:
                    dropped = next(iter(self._pending))
                    del self._pending[dropped]
                    self._unsuggested.discard(dropped)
                    log.error("anomaly event change dropped", extra={"anomaly": dropped})
                return False
            for item in items:
                if self._pending.get(item.id) is item:
                    del self._pending[item.id]
                if item.id in self._unsuggested:
                    self._unsuggested.discard(item.id)
                    self._suggester.submit(item)
            return True

    async def _resume(self, keys: Sequence[str]) -> None:
        try:
            found = await self._store.load_checkpoints(keys)
        except errors.Unavailable:
            log.warning("checkpoints unavailable; series start fresh", extra={"count": len(keys)})
            return
        if not found:
            return
        bad = set(await self._scorer.restore({c.series: c.detector_state for c in found}))
        for c in found:
            if c.series in bad:
                continue
            event = None
            if c.open_anomaly:
                try:
                    stored = await self._store.get_anomaly(c.open_anomaly)
                except errors.Unavailable:
                    stored = None
                if stored is not None and stored.state is not domain.State.CLOSED:
                    event = stored
            kept = recent.RecentPoints(self._recent_size, c.recent_times, c.recent)
            self._series[c.series] = _Series(
                last_time=c.last_time,
                last_value=c.last_value,
                labels=dict(c.labels),
                event=event,
                normal_run=c.normal_run,
                last_anomalous_time=c.last_anomalous_time,
                recent=kept,
                seen=len(kept),
            )
        log.info("series resumed from checkpoints", extra={"count": len(found) - len(bad)})

    async def checkpoint(self, everything: bool = False) -> int:
        """Saves the state of every series that changed since its last checkpoint."""
        async with self._lock:
            keys = [k for k, s in self._series.items() if everything or s.dirty]
            if not keys:
                return 0
            states = await self._scorer.snapshot(keys)
            items = []
            for k in keys:
                s = self._series[k]
                if k not in states:
                    continue
                kept_times, kept_values = s.recent.lists()
                items.append(
                    domain.Checkpoint(
                        series=k,
                        detector_state=states[k],
                        last_time=s.last_time,
                        last_value=s.last_value,
                        labels=dict(s.labels),
                        open_anomaly=s.event.id if s.event else "",
                        normal_run=s.normal_run,
                        last_anomalous_time=s.last_anomalous_time,
                        recent=kept_values,
                        recent_times=kept_times,
                    )
                )
                s.dirty = False
        try:
            await self._store.save_checkpoints(items)
        except errors.Unavailable:
            async with self._lock:
                for item in items:
                    if item.series in self._series:
                        self._series[item.series].dirty = True
            raise
        return len(items)

    async def release(self, keys: Sequence[str]) -> None:
        """Forgets series this replica no longer owns (after checkpointing them)."""
        async with self._lock:
            for k in keys:
                self._series.pop(k, None)
                with contextlib.suppress(KeyError):
                    SCORE.remove(k)
            await self._scorer.drop(keys)
