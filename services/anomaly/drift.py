"""Distribution drift between a reference and a current sample: per-test results and one
multiple-testing-aware decision. Pure functions over plain data (they run in a worker).

KS, Anderson-Darling and PSI come from `detectors.drift_test`; Mann-Whitney is added here.
"""

from __future__ import annotations

import enum
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from services.anomaly import detectors

MIN_SAMPLE = 8
MAX_SAMPLE = 100_000
PSI_CRITICAL = 0.2


class Test(enum.IntEnum):
    """In DriftTest order."""

    KS = 1
    ANDERSON_DARLING = 2
    MANN_WHITNEY = 3
    PSI = 4


class Method(enum.Enum):
    HOLM = "holm"
    BONFERRONI = "bonferroni"
    FISHER = "fisher"
    MAJORITY = "majority"


class DriftState(enum.Enum):
    INSUFFICIENT_DATA = "insufficient_data"
    STABLE = "stable"
    DRIFTING = "drifting"


@dataclass(frozen=True, slots=True)
class TestResult:
    test: Test
    statistic: float
    p_value: float | None
    critical_value: float
    drifted: bool


@dataclass(frozen=True, slots=True)
class Decision:
    drifted: bool
    method: Method
    alpha: float
    combined_p_value: float | None
    drifted_test_count: int


@dataclass(frozen=True, slots=True)
class Outcome:
    results: tuple[TestResult, ...]
    decision: Decision
    reference_count: int
    current_count: int


@dataclass(frozen=True, slots=True)
class Status:
    """The drift state of one series as of its latest evaluation (times in epoch seconds)."""

    series: str
    state: DriftState
    reference_range: tuple[float, float] | None
    current_range: tuple[float, float] | None
    outcome: Outcome | None
    evaluate_time: float | None
    drift_start_time: float | None


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in input order."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = [1.0] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def evaluate(
    reference: Sequence[float],
    current: Sequence[float],
    tests: Sequence[Test] = tuple(Test),
    alpha: float = 0.05,
    method: Method = Method.HOLM,
) -> Outcome:
    """Runs `tests` on the two samples and combines them with `method` at level `alpha`.

    Raises:
        ValueError: a sample outside 8..100,000 values or not finite, or alpha not in (0, 0.5].
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    for sample in (ref, cur):
        if not MIN_SAMPLE <= sample.size <= MAX_SAMPLE:
            raise ValueError("each sample needs 8 to 100,000 values")
    if not 0.0 < alpha <= 0.5:
        raise ValueError("alpha must be in (0, 0.5]")
    base = detectors.drift_test(ref, cur, alpha)
    chosen = sorted(set(tests))
    raw: list[tuple[Test, float, float | None]] = []
    for test in chosen:
        if test is Test.KS:
            raw.append((test, base.ks_statistic, base.ks_pvalue))
        elif test is Test.ANDERSON_DARLING:
            raw.append((test, base.ad_statistic, base.ad_pvalue))
        elif test is Test.MANN_WHITNEY:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mw = stats.mannwhitneyu(ref, cur, alternative="two-sided")
            p = float(mw.pvalue)
            raw.append((test, float(mw.statistic), 1.0 if math.isnan(p) else p))
        else:
            raw.append((test, base.psi, None))
    results = tuple(
        TestResult(
            t,
            s,
            p,
            PSI_CRITICAL if p is None else 0.0,
            (s > PSI_CRITICAL) if p is None else p <= alpha,
        )
        for t, s, p in raw
    )
    return Outcome(results, combine(results, alpha, method), int(ref.size), int(cur.size))


def combine(results: Sequence[TestResult], alpha: float, method: Method) -> Decision:
    """One decision from per-test results; PSI (no p-value) votes by its critical value."""
    ps = [r.p_value for r in results if r.p_value is not None]
    psi_drift = any(r.drifted for r in results if r.p_value is None)
    count = sum(r.drifted for r in results)
    combined: float | None = None
    if method is Method.MAJORITY:
        drifted = count * 2 > len(results)
    elif method is Method.FISHER:
        if ps:
            combined = float(stats.combine_pvalues(np.maximum(ps, 1e-300), "fisher").pvalue)
        drifted = combined is not None and combined <= alpha
    elif method is Method.BONFERRONI:
        combined = min(1.0, min(ps) * len(ps)) if ps else None
        drifted = (combined is not None and combined <= alpha) or psi_drift
    else:
        combined = min(holm(ps)) if ps else None
        drifted = (combined is not None and combined <= alpha) or psi_drift
    return Decision(drifted, method, alpha, combined, count)


def evaluate_windows(
    times: Sequence[float], values: Sequence[float], window: int, alpha: float
) -> tuple[Outcome | None, tuple[float, float] | None, tuple[float, float] | None]:
    """Scheduled evaluation of one series: its latest `window` points against the `window`
    before them, all four tests, Holm at `alpha`. None when there are too few points."""
    n = len(values)
    if n < 2 * window:
        return None, None, None
    ref = values[n - 2 * window : n - window]
    cur = values[n - window :]
    outcome = evaluate(ref, cur, tuple(Test), alpha, Method.HOLM)
    return (
        outcome,
        (times[n - 2 * window], times[n - window - 1]),
        (times[n - window], times[n - 1]),
    )
