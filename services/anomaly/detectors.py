"""Streaming per-series anomaly detector and distribution-drift tests.

Pure CPU code over plain data (no I/O): the service runs it in a process pool.

Per point, the detector predicts the value three ways (a robust EWMA level, a daily profile
from the timestamps plus a local offset, and the previous value) and uses the predictor with
the lowest long-run error. Four statistics of that residual (spike, CUSUM level shift,
deviation from the long-run scale, variance ratio) are each calibrated on the series' own
history (a Pareto tail above a running high quantile, Hill tail index), so their tail
probabilities mean the same on every series; a weighted Bonferroni takes the smallest.
A pattern memory keeps, per phase of the day, the spikes the spike signal named: a spike
that recurred at about the same phase (within pattern_jitter) in three consecutive periods
is ordinary there, so a daily job's spike up to pattern_factor times its recurring size is
no evidence (the calibrators still learn it, and any surplus counts). The value's rank
among all values seen so far (how close it is to a new extreme) is combined with it by
Fisher's method. A novelty filter then keeps only the surprise beyond the last
alarm unless the series moves past that alarm's value, so a new behaviour scores high on its
first point rather than while it lasts.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from services.anomaly import kernel

SIGNALS: tuple[str, ...] = (
    "spike", "level_shift", "rare_value", "variance_change", "new_extreme",
)  # fmt: skip
_STATE_VERSION = 1


@dataclass(frozen=True)
class DetectorConfig:
    """Generic defaults shared by every series (nothing here is per series).

    Attributes:
        alpha_level: EWMA rate of the fast level and scales.
        alpha_slow: EWMA rate of the long-run baseline, scale and predictor errors.
        alpha_season: per-day EWMA rate of the daily profile.
        memory: points of history the tail calibrators remember.
        cusum_k: CUSUM allowance, in long-run mean-absolute-deviation units.
        alarm_p: per-signal tail probability below which a signal is named.
        season_seconds: seasonal period (one day).
        season_bins: profile bins per period.
        warmup: points before any non-zero score.
        refractory: points over which the novelty filter forgets the last alarm.
        tail_q: exceedance fraction above which a tail is fitted.
        tail_eta: step of the running-quantile tracker (log units).
        extreme_k: how many of the highest and lowest values are kept to rank new ones.
        extreme_factor: a value's rank probability counts as evidence only below
            1 / extreme_factor (only the top few percent of values are "rare").
        pattern_jitter: seconds either side of a phase over which an excursion in an
            earlier period counts as the same recurring one.
        pattern_decay: per-period decay of a recurring excursion's remembered size.
        pattern_factor: an excursion up to this multiple of the size that recurred at its
            phase in the previous periods is ordinary (only the surplus is evidence).
    """

    alpha_level: float = 0.1
    alpha_slow: float = 0.01
    alpha_season: float = 0.25
    memory: float = 3000.0
    cusum_k: float = 2.0
    alarm_p: float = 1e-3
    season_seconds: float = 86400.0
    season_bins: int = 288
    warmup: int = 30
    refractory: float = 200.0
    tail_q: float = 0.05
    tail_eta: float = 0.05
    extreme_k: int = 5
    extreme_factor: float = 30.0
    pattern_jitter: float = 1800.0
    pattern_decay: float = 0.9
    pattern_factor: float = 1.5

    def __post_init__(self) -> None:
        rates = (self.alpha_level, self.alpha_slow, self.alpha_season, self.tail_q, self.tail_eta)
        if not all(0.0 < r < 1.0 for r in rates):
            raise ValueError("alpha_*, tail_q and tail_eta must be in (0, 1)")
        if self.memory * self.tail_q <= 1.0 or self.refractory <= 1.0:
            raise ValueError("memory * tail_q and refractory must exceed 1")
        if not (0.0 < self.alarm_p < 1.0 and self.cusum_k >= 0.0 and self.season_seconds > 0.0):
            raise ValueError("alarm_p must be in (0, 1), cusum_k >= 0, season_seconds > 0")
        if self.season_bins < 1 or self.warmup < 1 or self.extreme_k < 2:
            raise ValueError("season_bins and warmup must be >= 1, extreme_k >= 2")
        if self.extreme_factor < 1.0:
            raise ValueError("extreme_factor must be >= 1")
        if not (
            self.pattern_jitter >= 0.0
            and 0.0 <= self.pattern_decay < 1.0
            and self.pattern_factor >= 0.0
        ):
            raise ValueError(
                "pattern_jitter and pattern_factor must be >= 0, pattern_decay in [0, 1)"
            )


@dataclass(frozen=True)
class Score:
    """One point's score.

    Attributes:
        value: in [0, 1]; 1 minus the combined, novelty-filtered tail probability.
        signals: names of the signals whose own tail probability fell below alarm_p.
    """

    value: float
    signals: tuple[str, ...]


class SeriesDetector:
    """Causal streaming detector for one series.

    A point's score depends only on it and the points before it. ``score``, ``score_batch``
    and ``score_arrays`` run the same compiled loop (services.anomaly.kernel) and give
    bit-identical results.
    """

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        c = self.config
        nb = c.season_bins
        consts = np.zeros(kernel.N_CONSTS)
        consts[
            [
                kernel.C_AL, kernel.C_AS, kernel.C_AP, kernel.C_WMAX, kernel.C_LAM, kernel.C_K,
                kernel.C_ALARM, kernel.C_WARM, kernel.C_PERIOD, kernel.C_NB, kernel.C_Q,
                kernel.C_DECAY, kernel.C_KTOP, kernel.C_XFAC, kernel.C_WARM_CUSUM,
                kernel.C_M_STEADY, kernel.C_STEADY_UP, kernel.C_STEADY_DOWN, kernel.C_RATE_MIN,
                kernel.C_PM_W, kernel.C_PM_DECAY, kernel.C_PM_FACTOR,
            ]
        ] = (
            c.alpha_level, c.alpha_slow, c.alpha_season, c.memory * c.tail_q,
            1.0 - 1.0 / (c.memory * c.tail_q), c.cusum_k, c.alarm_p, c.warmup,
            c.season_seconds, c.season_bins, c.tail_q, 1.0 - 1.0 / c.refractory,
            c.extreme_k, c.extreme_factor,
            # The CUSUM starts once the long-run baseline has its full memory.
            max(c.warmup, math.ceil(1.0 / c.alpha_slow)),
            # The quantile trackers step 1/sqrt(updates) in log units until tail_eta.
            1.0 / (c.tail_eta * c.tail_eta),
            math.exp(c.tail_eta * (1.0 - c.tail_q)),
            math.exp(-c.tail_eta * c.tail_q),
            1.0 / c.memory,
            # Phase bins either side that count as the same phase (up to half a period).
            min(c.season_bins // 2, math.floor(c.pattern_jitter / c.season_seconds * nb)),
            c.pattern_decay, c.pattern_factor,
        )  # fmt: skip
        self._consts = consts
        self._st = kernel.new_state(c.season_bins, c.extreme_k)
        # One-point buffers, reused by score().
        self._t1, self._x1 = np.zeros(1), np.zeros(1)
        self._o1, self._f1 = np.zeros(1), np.zeros(1, dtype=np.int64)

    @property
    def count(self) -> int:
        """Points scored so far."""
        return int(self._st[kernel.S_N])

    def score(self, timestamp_seconds: float, value: float) -> Score:
        """Scores one point and updates the state.

        Args:
            timestamp_seconds: epoch seconds, non-decreasing.
            value: the observation.

        Returns:
            The point's Score.

        Raises:
            ValueError: non-finite input or a timestamp earlier than the last one; the
                state is left unchanged.
        """
        t = float(timestamp_seconds)
        x = float(value)
        if not (math.isfinite(t) and math.isfinite(x)):
            raise ValueError("timestamp and value must be finite")
        if t < self._st[kernel.S_TLAST]:
            raise ValueError("timestamps must be non-decreasing")
        self._t1[0] = t
        self._x1[0] = x
        kernel.run(self._consts, self._st, self._t1, self._x1, self._o1, self._f1)
        f = int(self._f1[0])
        return Score(float(self._o1[0]), _names(f) if f else ())

    def score_batch(self, timestamps: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Scores many points; identical to calling score() on each in order.

        Raises:
            ValueError: as score(), checked for the whole batch before any state changes.
        """
        return self.score_arrays(timestamps, values)[0]

    def score_arrays(
        self, timestamps: np.ndarray, values: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores many points and returns (scores float64, signal bitmasks int64).

        Bit ``i`` of a bitmask is ``SIGNALS[i]``. Identical to score() on each point in
        order; validated as score_batch.
        """
        ts = np.ascontiguousarray(timestamps, dtype=np.float64).ravel()
        xs = np.ascontiguousarray(values, dtype=np.float64).ravel()
        if ts.shape != xs.shape:
            raise ValueError("timestamps and values must have the same length")
        bad = kernel.check(self._st[kernel.S_TLAST], ts, xs)
        if bad:
            raise ValueError(
                "timestamp and value must be finite"
                if bad == 1
                else "timestamps must be non-decreasing"
            )
        out = np.empty(ts.size)
        flags = np.empty(ts.size, dtype=np.int64)
        kernel.run(self._consts, self._st, ts, xs, out, flags)
        return out, flags

    def to_state(self) -> dict[str, object]:
        """Returns a JSON-serialisable snapshot; ``from_state`` continues it exactly."""
        st = self._st
        c = self.config
        prof, cnt, cal, top, bot, pm, _ = kernel.layout(c.season_bins, c.extreme_k)
        kt = int(st[kernel.S_NTOP])
        scalars: dict[str, float | int] = {
            name: int(st[kernel.S_N + i]) for i, name in enumerate(kernel.INT_STATE)
        }
        scalars.update((name, float(st[i])) for i, name in enumerate(kernel.FLOAT_STATE))
        t_last = float(st[kernel.S_TLAST])
        return {
            "version": _STATE_VERSION,
            "config": asdict(c),
            "t_last": t_last if math.isfinite(t_last) else None,
            "scalars": scalars,
            "profile": st[prof:cnt].tolist(),
            "profile_counts": [int(v) for v in st[cnt:cal]],
            "calibrators": st[cal:top].reshape(kernel.N_CAL, kernel.CAL_WIDTH).tolist(),
            "highest": st[top : top + kt].tolist(),
            "lowest": (-st[bot : bot + kt]).tolist(),
            "pattern": st[pm:].reshape(kernel.N_PM, c.season_bins).tolist(),
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> SeriesDetector:
        """Rebuilds a detector from ``to_state()`` output.

        Raises:
            ValueError: unknown version or malformed state.
        """
        if d.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported detector state version {d.get('version')!r}")
        try:
            det = cls(DetectorConfig(**d["config"]))
            nb, k = det.config.season_bins, det.config.extreme_k
            t_last = d["t_last"]
            ints = [int(d["scalars"][name]) for name in kernel.INT_STATE]
            floats = [float(d["scalars"][name]) for name in kernel.FLOAT_STATE]
            prof = [float(v) for v in d["profile"]]
            pcnt = [int(v) for v in d["profile_counts"]]
            cal = [[float(v) for v in cj] for cj in d["calibrators"]]
            top = sorted(float(v) for v in d["highest"])
            bot = sorted(-float(v) for v in d["lowest"])
            # States from before the pattern memory start with an empty one.
            pattern = [[float(v) for v in row] for row in d.get("pattern", [])]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed detector state: {exc}") from exc
        if (
            len(prof) != nb
            or len(pcnt) != nb
            or len(cal) != kernel.N_CAL
            or any(len(cj) != kernel.CAL_WIDTH for cj in cal)
            or len(top) != len(bot)
            or len(top) > k
            or (pattern and (len(pattern) != kernel.N_PM or any(len(r) != nb for r in pattern)))
        ):
            raise ValueError("malformed detector state: wrong sizes")
        o_prof, o_cnt, o_cal, o_top, o_bot, o_pm, _ = kernel.layout(nb, k)
        st = det._st
        st[: len(floats)] = floats
        st[kernel.S_N : kernel.S_N + len(ints)] = ints
        st[kernel.S_TLAST] = -math.inf if t_last is None else float(t_last)
        st[kernel.S_NTOP] = len(top)
        st[o_prof:o_cnt] = prof
        st[o_cnt:o_cal] = pcnt
        st[o_cal:o_top] = np.asarray(cal).ravel()
        st[o_top : o_top + len(top)] = top
        st[o_bot : o_bot + len(bot)] = bot
        if pattern:
            st[o_pm:] = np.asarray(pattern).ravel()
        return det


_NAMES: dict[int, tuple[str, ...]] = {}


def _names(flags: int) -> tuple[str, ...]:
    # Signal names of a bitmask, in SIGNALS order (memoised: there are 32 masks).
    names = _NAMES.get(flags)
    if names is None:
        names = _NAMES[flags] = tuple(s for i, s in enumerate(SIGNALS) if flags >> i & 1)
    return names


@dataclass(frozen=True)
class DriftResult:
    """Outcome of ``drift_test``.

    Attributes:
        ks_statistic, ks_pvalue: two-sample Kolmogorov-Smirnov.
        ad_statistic, ad_pvalue: Anderson-Darling k-sample (scipy caps p to [0.001, 0.25]).
        psi, psi_pvalue: population stability index over reference deciles; p from its
            chi-square approximation.
        pvalue: smallest Holm-adjusted p-value of the three tests.
        drifted: whether any test is rejected by Holm's procedure at ``alpha``.
        alpha: family-wise error rate used.
    """

    ks_statistic: float
    ks_pvalue: float
    ad_statistic: float
    ad_pvalue: float
    psi: float
    psi_pvalue: float
    pvalue: float
    drifted: bool
    alpha: float


def population_stability_index(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """PSI of ``current`` against ``reference`` over the reference's quantile bins."""
    ref = np.asarray(reference, dtype=np.float64).ravel()
    cur = np.asarray(current, dtype=np.float64).ravel()
    edges = np.unique(np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    e = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=edges.size + 1)
    a = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=edges.size + 1)
    # Half a count in every bin keeps empty bins finite.
    pe = (e + 0.5) / (ref.size + 0.5 * e.size)
    pa = (a + 0.5) / (cur.size + 0.5 * a.size)
    return float(np.sum((pa - pe) * np.log(pa / pe)))


def _holm(pvalues: list[float]) -> list[float]:
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = [1.0] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def drift_test(reference: np.ndarray, current: np.ndarray, alpha: float = 0.01) -> DriftResult:
    """Tests whether ``current`` comes from a different distribution than ``reference``.

    Runs KS, Anderson-Darling k-sample and PSI, and decides with Holm's step-down procedure
    over the three p-values so the family-wise false-positive rate stays at most ``alpha``.

    Raises:
        ValueError: fewer than 2 points in a sample, non-finite values, or alpha not in (0, 1).
    """
    ref = np.asarray(reference, dtype=np.float64).ravel()
    cur = np.asarray(current, dtype=np.float64).ravel()
    if ref.size < 2 or cur.size < 2:
        raise ValueError("each sample needs at least 2 points")
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(cur))):
        raise ValueError("samples must be finite")
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must be in (0, 1)")
    ks = stats.ks_2samp(ref, cur)
    ks_stat, ks_p = float(ks.statistic), float(ks.pvalue)
    if np.unique(np.concatenate([ref, cur])).size < 2:
        ad_stat, ad_p = 0.0, 1.0
    else:
        with warnings.catch_warnings():
            # scipy warns when it caps the p-value to its table's range; the cap is documented.
            warnings.simplefilter("ignore", UserWarning)
            ad = stats.anderson_ksamp([ref, cur])
        ad_stat, ad_p = float(ad.statistic), float(ad.pvalue)
    psi = population_stability_index(ref, cur)
    dof = max(1, np.unique(np.quantile(ref, np.linspace(0.0, 1.0, 11)[1:-1])).size)
    # For close distributions PSI ~ chi-square divergence; scaled by the effective sample
    # size it is approximately chi2(bins - 1) under no drift.
    n_eff = ref.size * cur.size / (ref.size + cur.size)
    psi_p = float(stats.chi2.sf(psi * n_eff, dof))
    adjusted = _holm([ks_p, ad_p, psi_p])
    p = min(adjusted)
    return DriftResult(ks_stat, ks_p, ad_stat, ad_p, psi, psi_p, p, p <= alpha, alpha)
