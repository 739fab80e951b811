"""Scheduled drift evaluation of every tracked series, and the ad hoc DetectDrift logic.

The tests themselves (scipy) run through `run`, which the server points at a process pool.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from prometheus_client import Counter, Gauge

from services.anomaly import domain, drift, scoring
from services.kit import errors, paging

log = logging.getLogger(__name__)
T = TypeVar("T")

EVALUATIONS = Counter(
    "aiops_anomaly_drift_evaluations_total",
    "Scheduled drift evaluations, by resulting state.",
    ["state"],
)
DRIFT_P_VALUE = Gauge(
    "aiops_anomaly_drift_p_value",
    "Combined p-value of the last drift test of a series (low: drifted).",
    ["series"],
)

Runner = Callable[..., Awaitable[Any]]


class DriftStore(Protocol):
    async def save_drift(self, items: Sequence[drift.Status]) -> None: ...

    async def list_drift(
        self, state: drift.DriftState | None, series: str, limit: int, after: str | None
    ) -> tuple[list[drift.Status], str | None]: ...


class DriftTracker:
    """Evaluates each series once enough new points arrived since its last evaluation.

    Args:
        monitor: where the recent points of each series are.
        store: where statuses are kept (so every replica and restart sees them).
        run: runs a CPU-bound function with arguments off the event loop.
        window: points per reference and current window.
        alpha: family-wise level of the Holm decision.
        clock: wall clock.
    """

    def __init__(
        self,
        monitor: scoring.Monitor,
        store: DriftStore,
        run: Runner,
        window: int,
        alpha: float,
        clock: Callable[[], float],
    ) -> None:
        self._monitor = monitor
        self._store = store
        self._run = run
        self._window = window
        self._alpha = alpha
        self._clock = clock
        self._drift_start: dict[str, float] = {}

    async def step(self) -> int:
        """Evaluates every due series; returns how many were evaluated."""
        due = self._monitor.due_for_drift(max(1, self._window // 10))
        out: list[drift.Status] = []
        for series in due:
            win = self._monitor.window(series)
            if win is None:
                continue
            times, values = win
            outcome, ref_range, cur_range = await self._run(
                drift.evaluate_windows, times, values, self._window, self._alpha
            )
            now = self._clock()
            if outcome is None:
                state = drift.DriftState.INSUFFICIENT_DATA
            elif outcome.decision.drifted:
                state = drift.DriftState.DRIFTING
            else:
                state = drift.DriftState.STABLE
            if state is drift.DriftState.DRIFTING:
                start = self._drift_start.setdefault(series, now)
            else:
                self._drift_start.pop(series, None)
                start = None
            EVALUATIONS.labels(state.value).inc()
            if outcome is not None and outcome.decision.combined_p_value is not None:
                DRIFT_P_VALUE.labels(series).set(outcome.decision.combined_p_value)
            out.append(drift.Status(series, state, ref_range, cur_range, outcome, now, start))
            self._monitor.mark_evaluated(series)
        if out:
            await self._store.save_drift(out)
            for s in out:
                if s.state is drift.DriftState.DRIFTING and s.drift_start_time == s.evaluate_time:
                    log.info("drift detected", extra={"series": s.series})
        return len(out)

    async def status(
        self, state: drift.DriftState | None, series: str, requested: int, token: str
    ) -> domain.Page:
        domain.check_text_filter("series", series)
        size = paging.page_size(requested)
        fp = f"{state.value if state else ''}\x1f{series}"
        raw = domain.decode_token(token, fp)
        after: str | None = None
        if raw is not None:
            if len(raw) != 1 or not isinstance(raw[0], str):
                raise errors.invalid(
                    [errors.FieldViolation("page_token", "is not a token this listing returned")],
                    "PAGE_TOKEN_INVALID",
                )
            after = raw[0]
        items, cursor = await self._store.list_drift(state, series, size, after)
        return domain.Page(items, domain.encode_token([cursor], fp) if cursor else "")

    async def detect_windows(
        self,
        series: str,
        reference: tuple[float, float],
        current: tuple[float, float],
        tests: Sequence[drift.Test],
        alpha: float,
        method: drift.Method,
    ) -> drift.Outcome:
        """DetectDrift over two time ranges (start inclusive, end exclusive) of the recent
        points this replica keeps for a series."""
        win = self._monitor.window(series)
        if win is None:
            raise errors.NotFound(
                "SERIES_NOT_FOUND",
                "This replica tracks no series with that key; send its points first.",
                metadata={"series": series},
            )
        times, values = win
        ref = [v for t, v in zip(times, values, strict=True) if reference[0] <= t < reference[1]]
        cur = [v for t, v in zip(times, values, strict=True) if current[0] <= t < current[1]]
        for name, sample in (("reference_range", ref), ("current_range", cur)):
            if not drift.MIN_SAMPLE <= len(sample) <= drift.MAX_SAMPLE:
                raise errors.FailedPrecondition(
                    "INSUFFICIENT_DATA",
                    f"The {name.split('_')[0]} window holds {len(sample)} points; it needs 8 "
                    "to 100,000 of the recent points kept.",
                    metadata={"field": f"windows.{name}"},
                )
        result: drift.Outcome = await self._run(drift.evaluate, ref, cur, tests, alpha, method)
        return result

    async def detect_samples(
        self,
        reference: Sequence[float],
        current: Sequence[float],
        tests: Sequence[drift.Test],
        alpha: float,
        method: drift.Method,
    ) -> drift.Outcome:
        result: drift.Outcome = await self._run(
            drift.evaluate, list(reference), list(current), tests, alpha, method
        )
        return result
