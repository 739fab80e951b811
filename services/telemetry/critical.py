"""The runbook's five critical metrics, derived from scraped expositions.

Pure arithmetic over parsed scrapes. Counters (and histogram buckets, which are counters)
are turned into increases over the look-back window the way Prometheus' `increase()`
does: consecutive scrapes are compared pairwise and a drop means the counter restarted
from zero, so a reset never yields a negative rate. p95 comes from the bucket increases
over the window, interpolated linearly inside the bucket like `histogram_quantile()`.
"""

from __future__ import annotations

import collections
import enum
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from services.telemetry import domain

Labels = tuple[tuple[str, str], ...]
SampleKey = tuple[str, Labels]

LATENCY_HISTOGRAM = "aiops_gateway_request_duration_seconds"
REQUESTS_COUNTER = "aiops_gateway_requests_total"
DEPENDENCY_UP = "aiops_dependency_up"
FEEDBACK_COUNTER = "aiops_feedback_total"
FEEDBACK_OK = frozenset({"stored", "replayed"})
FEEDBACK_FAILED = frozenset({"unavailable", "error"})


class Comparison(enum.Enum):
    LESS_THAN = "<"
    GREATER_THAN = ">"


@dataclass(frozen=True, slots=True)
class Spec:
    metric: str
    display_name: str
    unit: str
    target: float
    comparison: Comparison

    def within(self, value: float) -> bool:
        if self.comparison is Comparison.LESS_THAN:
            return value < self.target
        return value > self.target


# The runbook's order and targets.
SPECS = (
    Spec("latency_p95", "p95 latency", "ms", 150.0, Comparison.LESS_THAN),
    Spec("error_rate", "error rate", "%", 0.5, Comparison.LESS_THAN),
    Spec("availability", "availability", "%", 99.9, Comparison.GREATER_THAN),
    Spec("redis_uptime", "Redis uptime", "%", 99.9, Comparison.GREATER_THAN),
    Spec("feedback_success_rate", "feedback success rate", "%", 99.5, Comparison.GREATER_THAN),
)


@dataclass(frozen=True, slots=True)
class Scrape:
    """One successful read of an exposition: every sample, and the family names seen."""

    time: float
    samples: Mapping[SampleKey, float]
    families: frozenset[str]
    types: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Value:
    """A critical metric's value; `value` None means nothing was observed this round."""

    spec: Spec
    value: float | None

    @property
    def observed(self) -> bool:
        return self.value is not None

    @property
    def within_slo(self) -> bool:
        return self.value is not None and self.spec.within(self.value)


class History:
    """The scrapes and attempts of one source inside the look-back window."""

    def __init__(self, window_seconds: float) -> None:
        self.window = window_seconds
        self.scrapes: collections.deque[Scrape] = collections.deque()
        self.attempts: collections.deque[tuple[float, bool]] = collections.deque()

    def add(self, when: float, scrape: Scrape | None, min_spacing: float = 0.0) -> History:
        """Records an attempt and its scrape, and returns the history to derive from.

        A scrape less than `min_spacing` seconds after the newest one kept is not kept, but
        the returned view ends with it: however often callers ask for a round, the window
        holds at most one scrape per `min_spacing`, so deriving the metrics (a pass over
        every sample of every scrape kept) stays bounded instead of growing with the rate
        of calls. Increases stay exact between the scrapes kept, like a coarser scrape
        interval."""
        self.attempts.append((when, scrape is not None))
        self.trim(when)
        if scrape is None:
            return self
        if not self.scrapes or scrape.time - self.scrapes[-1].time >= min_spacing:
            self.scrapes.append(scrape)
            self.trim(when)
            return self
        view = History(self.window)
        view.scrapes = collections.deque(self.scrapes)
        view.scrapes.append(scrape)
        view.attempts = self.attempts
        return view

    def trim(self, now: float) -> None:
        # Keep one scrape older than the window as the baseline of the first increase.
        while len(self.scrapes) > 1 and self.scrapes[1].time <= now - self.window:
            self.scrapes.popleft()
        while self.attempts and self.attempts[0][0] <= now - self.window:
            self.attempts.popleft()


def increases(
    scrapes: Sequence[Scrape], select: Callable[[SampleKey], bool]
) -> dict[SampleKey, float]:
    """Reset-safe increase of every selected counter sample across consecutive scrapes.

    With a single scrape the baseline is the counter's start (zero), i.e. the increase
    since the source process started.
    """
    out: dict[SampleKey, float] = {}
    if not scrapes:
        return out
    if len(scrapes) == 1:
        return {k: max(0.0, v) for k, v in scrapes[0].samples.items() if select(k)}
    for prev, cur in zip(scrapes, list(scrapes)[1:], strict=False):
        for key, value in cur.samples.items():
            if not select(key):
                continue
            before = prev.samples.get(key)
            # A new child, or a drop (the counter restarted from zero), counts from zero.
            step = value if before is None or value < before else value - before
            out[key] = out.get(key, 0.0) + max(0.0, step)
    return out


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The q-quantile of cumulative bucket counts `{upper bound: count}` (with +Inf)."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    counts: list[float] = []
    running = 0.0
    for b in bounds:
        running = max(running, buckets[b])  # cumulative counts never decrease
        counts.append(running)
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            if math.isinf(bound):
                return prev_bound  # the highest finite bound, as Prometheus does
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def _label(key: SampleKey, name: str) -> str:
    for k, v in key[1]:
        if k == name:
            return v
    return ""


def _seen(histories: Iterable[History], family: str) -> bool:
    return any(family in s.families for h in histories for s in h.scrapes)


def latency_p95_ms(histories: Sequence[History]) -> float | None:
    bucket = f"{LATENCY_HISTOGRAM}_bucket"
    totals: dict[float, float] = collections.defaultdict(float)
    for h in histories:
        for key, inc in increases(list(h.scrapes), lambda k: k[0] == bucket).items():
            le = _label(key, "le")
            try:
                totals[float(le)] += inc
            except ValueError:
                continue
    p95 = histogram_quantile(0.95, totals)
    return None if p95 is None else p95 * 1000.0


def error_rate_percent(histories: Sequence[History]) -> float | None:
    if not _seen(histories, REQUESTS_COUNTER.removesuffix("_total")):
        return None
    total = failed = 0.0
    for h in histories:
        for key, inc in increases(list(h.scrapes), lambda k: k[0] == REQUESTS_COUNTER).items():
            total += inc
            if _label(key, "status").startswith("5"):
                failed += inc
    return 100.0 * failed / total if total > 0 else 0.0


def availability_percent(histories: Sequence[History]) -> float | None:
    """Share of successful scrapes of the sources over the window (Prometheus' `up`)."""
    attempts = [ok for h in histories for _, ok in h.attempts]
    return 100.0 * sum(attempts) / len(attempts) if attempts else None


def redis_uptime_percent(histories: Sequence[History], since: float) -> float | None:
    values = [
        v
        for h in histories
        for s in h.scrapes
        if s.time > since
        for k, v in s.samples.items()
        if k[0] == DEPENDENCY_UP and _label(k, "dependency") == "redis"
    ]
    return 100.0 * sum(values) / len(values) if values else None


def feedback_success_percent(histories: Sequence[History]) -> float | None:
    if not _seen(histories, FEEDBACK_COUNTER.removesuffix("_total")):
        return None
    ok = failed = 0.0
    for h in histories:
        for key, inc in increases(list(h.scrapes), lambda k: k[0] == FEEDBACK_COUNTER).items():
            result = _label(key, "result")
            if result in FEEDBACK_OK:
                ok += inc
            elif result in FEEDBACK_FAILED:
                failed += inc
    # No attempt in the window means no failure either.
    return 100.0 * ok / (ok + failed) if ok + failed > 0 else 100.0


def compute(histories: Sequence[History], now: float, window: float) -> list[Value]:
    """The five critical metrics over the window ending `now`, in the runbook's order."""
    values = {
        "latency_p95": latency_p95_ms(histories),
        "error_rate": error_rate_percent(histories),
        "availability": availability_percent(histories),
        "redis_uptime": redis_uptime_percent(histories, now - window),
        "feedback_success_rate": feedback_success_percent(histories),
    }
    return [Value(spec, values[spec.metric]) for spec in SPECS]


def critical_samples(values: Sequence[Value], now: float) -> list[domain.Incoming]:
    """The observed values as points of their critical series (key = metric id)."""
    return [
        domain.Incoming(v.spec.metric, {}, now, v.value, v.spec.unit, domain.SeriesKind.CRITICAL)
        for v in values
        if v.value is not None
    ]


def raw_samples(
    history: History, names: frozenset[str], instance: str, now: float
) -> list[domain.Incoming]:
    """Configured raw series from the latest scrape: gauges as they are, counters as
    per-second rates between the last two scrapes (reset-safe)."""
    if not names or not history.scrapes:
        return []
    latest = history.scrapes[-1]
    prev = history.scrapes[-2] if len(history.scrapes) > 1 else None
    out: list[domain.Incoming] = []
    for key, value in latest.samples.items():
        name, labels = key
        family = _family(name, latest.types)
        if name not in names and family not in names:
            continue
        kind = latest.types.get(family, "unknown")
        tagged = {**dict(labels), "instance": instance}
        if kind == "counter":
            if prev is None or not name.endswith("_total"):
                continue
            before = prev.samples.get(key)
            elapsed = latest.time - prev.time
            if before is None or elapsed <= 0:
                continue
            inc = value if value < before else value - before
            out.append(
                domain.Incoming(
                    name, tagged, now, inc / elapsed, "1/s", domain.SeriesKind.COUNTER_RATE
                )
            )
        elif kind in ("gauge", "unknown", "untyped"):
            out.append(domain.Incoming(name, tagged, now, value, "", domain.SeriesKind.GAUGE))
    return out


def _family(sample_name: str, types: Mapping[str, str]) -> str:
    if sample_name in types:
        return sample_name
    for suffix in ("_total", "_bucket", "_count", "_sum", "_created"):
        if sample_name.endswith(suffix) and sample_name.removesuffix(suffix) in types:
            return sample_name.removesuffix(suffix)
    return sample_name
