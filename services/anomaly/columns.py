"""The columnar form of a scoring batch: one entry per series with its points as arrays,
validated in one compiled pass, and its outcome as arrays plus details of the few points
that need more than a score.

Pure logic over numpy and numba; no grpc or generated code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numba
import numpy as np

from services.anomaly import domain

# Codes of per-point rejections in the `reasons` arrays (0: accepted).
ACCEPTED = 0
_CODES: tuple[domain.Reject, ...] = (
    domain.Reject.MISSING_TIME,
    domain.Reject.NON_FINITE_VALUE,
    domain.Reject.NON_MONOTONIC_TIME,
)
MISSING_TIME, NON_FINITE_VALUE, NON_MONOTONIC_TIME = 1, 2, 3


def reject_of(code: int) -> domain.Reject:
    """The domain reason of a non-zero code of a `reasons` array."""
    return _CODES[code - 1]


@dataclass(frozen=True, slots=True)
class SeriesColumns:
    """Points of one series: sample times in microseconds since the epoch (int64, 0 means
    not set) and values (float64), of the same length, plus the series' labels."""

    series: str
    times_micros: np.ndarray
    values: np.ndarray
    labels: Mapping[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.values.shape[0])


@dataclass(frozen=True, slots=True)
class PointDetail:
    """A point that needs more than its score: anomalous or rejected."""

    index: int
    anomalous: bool = False
    flags: int = 0
    threshold: float = 0.0
    anomaly: str = ""
    reject: domain.Reject | None = None


@dataclass(frozen=True, slots=True)
class SeriesOutcome:
    """Scores of one entry (0 for rejected points), the series' threshold, the indexes of
    anomalous points, the details of anomalous and rejected points (ascending), and the
    reason when the whole entry was rejected."""

    series: str
    scores: np.ndarray
    threshold: float
    anomalous: np.ndarray
    details: Sequence[PointDetail]
    reject: domain.Reject | None = None


@dataclass(frozen=True, slots=True)
class ColumnsResult:
    """Outcomes in entry order, rejected points counted by reason, anomalies opened."""

    outcomes: list[SeriesOutcome]
    rejections: Mapping[domain.Reject, int]
    opened: list[str]


@numba.njit(cache=True, nogil=True)
def _check_points(
    micros: np.ndarray, values: np.ndarray, last_time: float, reasons: np.ndarray,
    times: np.ndarray,
) -> int:  # fmt: skip
    # One pass: fills times (epoch seconds) and reasons, returns how many were rejected.
    bound = last_time
    rejected = 0
    for i in range(values.shape[0]):
        t = micros[i] / 1_000_000.0
        times[i] = t
        if micros[i] == 0:
            reasons[i] = MISSING_TIME
        elif not math.isfinite(values[i]):
            reasons[i] = NON_FINITE_VALUE
        elif t <= bound:
            reasons[i] = NON_MONOTONIC_TIME
        else:
            reasons[i] = ACCEPTED
            bound = t
            continue
        rejected += 1
    return rejected


def point_reasons(
    micros: np.ndarray, values: np.ndarray, last_time: float
) -> tuple[np.ndarray | None, np.ndarray]:
    """Per-point rejection codes (int8, 0 = accepted) of one series' points, or None when
    every point is accepted, and the sample times in epoch seconds (float64).

    A point is accepted when its time is set, its value finite and its time after that of
    every accepted point before it (and after `last_time`, the series' latest): exactly
    what checking the points one by one gives, in one compiled pass.
    """
    n = values.shape[0]
    reasons = np.empty(n, dtype=np.int8)
    times = np.empty(n)
    if _check_points(micros, values, float(last_time), reasons, times) or not n:
        return reasons, times
    return None, times


@numba.njit(cache=True, nogil=True)
def peak(values: np.ndarray) -> float:
    """The largest of a non-empty array (a compiled call costs less than numpy's max)."""
    top = values[0]
    for i in range(1, values.shape[0]):
        if values[i] > top:
            top = values[i]
    return float(top)
