"""Ingest: validates pushed and collected samples, resolves their series and stores the
points in batches.

Pure logic over `domain.TelemetryStore`.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Sequence

from services.telemetry import domain


class Ingestor:
    """Validates samples, resolves their series and stores their points.

    domain.Series already seen are cached (key, id, unit, kind), so a steady stream of points for
    known series costs one COPY per batch and no other query.
    """

    def __init__(
        self,
        store: domain.TelemetryStore,
        retention_seconds: float,
        max_series: int,
        clock: Callable[[], float] = time.time,
        cache_size: int = 200_000,
    ) -> None:
        self._store = store
        self._retention = retention_seconds
        self._max_series = max_series
        self._clock = clock
        self._cache_size = cache_size
        # (metric, label items) -> series; or the reason the identity is invalid.
        self._known: dict[domain.Ident, domain.Series | domain.Reject] = {}

    @property
    def retention_seconds(self) -> float:
        return self._retention

    def forget(self) -> None:
        """Drops the series cache (after retention deleted series)."""
        self._known.clear()

    async def write(
        self, samples: Sequence[domain.Incoming], *, collector: bool = False
    ) -> domain.WriteResult:
        """Stores the valid samples; every other one is counted under its reason.

        Args:
            samples: the batch.
            collector: True for points the collector derived (may use SERIES_KIND_CRITICAL).
        """
        now = self._clock()
        oldest, newest = now - self._retention, now + domain.FUTURE_SECONDS
        rejections: collections.Counter[domain.Reject] = collections.Counter()
        pending: list[tuple[domain.Incoming, domain.Ident, str]] = []
        specs: dict[str, domain.SeriesSpec] = {}
        rows: list[domain.Row] = []
        fresh: dict[domain.Ident, str] = {}  # series keys of idents new in this batch
        known_get = self._known.get
        isfinite = math.isfinite
        for s in samples:
            metric, labels, when, value, unit, kind = s
            # Unsorted on purpose: sorting costs more than an extra cache entry per order.
            ident = (metric, tuple([(k, labels[k]) for k in labels]))
            known = known_get(ident)
            if type(known) is domain.Series:
                # The hot path: a known series, checked inline (one call per point costs).
                if (
                    when is not None
                    and oldest <= when <= newest
                    and isfinite(value)
                    and (not unit or unit == known.unit)
                    and (kind is None or kind is known.kind)
                    and (collector or known.kind is not domain.SeriesKind.CRITICAL)
                ):
                    rows.append(domain.Row(known.id, known.key, known.labels, when, value))
                    continue
                why = _sample_problem(s, oldest, newest, collector) or domain.Reject.SERIES_MISMATCH
                rejections[why] += 1
                continue
            if isinstance(known, domain.Reject):
                rejections[known] += 1
                continue
            key = fresh.get(ident, "")
            if not key:  # the first sample of a series this batch has not seen yet
                bad = _identity_problem(s)
                if bad is not None:
                    self._remember(ident, bad)
                    rejections[bad] += 1
                    continue
                key = fresh[ident] = domain.series_key(metric, labels)
            reason = _sample_problem(s, oldest, newest, collector)
            if reason is not None:
                rejections[reason] += 1
                continue
            if key not in specs:
                specs[key] = domain.SeriesSpec(
                    domain.series_id(key),
                    key,
                    metric,
                    dict(labels),
                    unit,
                    kind or domain.SeriesKind.GAUGE,
                )
            pending.append((s, ident, key))
        created = 0
        if specs:
            resolved, created = await self._store.resolve(list(specs.values()), self._max_series)
            for s, ident, key in pending:
                series = resolved.get(key)
                if series is None:
                    rejections[domain.Reject.SERIES_LIMIT] += 1
                    continue
                self._remember(ident, series)
                if (
                    (s.unit and s.unit != series.unit)
                    or (s.kind is not None and s.kind != series.kind)
                    or (series.kind is domain.SeriesKind.CRITICAL and not collector)
                ):
                    rejections[domain.Reject.SERIES_MISMATCH] += 1
                    continue
                assert s.time is not None
                rows.append(domain.Row(series.id, series.key, series.labels, s.time, s.value))
        stored, missing = await self._store.write_points(rows) if rows else (0, False)
        if missing:
            # Another replica's retention removed an idle series this cache still knew;
            # the next batch creates it again (same id, so these points reappear with it).
            self.forget()
        if stored < len(rows):
            rejections[domain.Reject.DUPLICATE] += len(rows) - stored
        return domain.WriteResult(stored, dict(rejections), created, rows)

    def _remember(self, ident: domain.Ident, value: domain.Series | domain.Reject) -> None:
        if len(self._known) >= self._cache_size:
            self._known.clear()
        self._known[ident] = value


def _identity_problem(s: domain.Incoming) -> domain.Reject | None:
    if not domain.metric_ok(s.metric):
        return domain.Reject.INVALID_METRIC
    if domain.check_labels(s.labels) is not None:
        return domain.Reject.INVALID_LABELS
    if len(domain.series_key(s.metric, s.labels)) > domain.MAX_KEY:
        return domain.Reject.INVALID_LABELS
    return None


def _sample_problem(
    s: domain.Incoming, oldest: float, newest: float, collector: bool
) -> domain.Reject | None:
    if s.time is None:
        return domain.Reject.MISSING_TIME
    if s.time < oldest:
        return domain.Reject.TIME_TOO_OLD
    if s.time > newest:
        return domain.Reject.TIME_IN_FUTURE
    if not math.isfinite(s.value):
        return domain.Reject.NON_FINITE_VALUE
    if len(s.unit) > domain.MAX_UNIT:
        return domain.Reject.INVALID_METRIC
    if s.kind is domain.SeriesKind.CRITICAL and not collector:
        return domain.Reject.SERIES_MISMATCH
    return None
