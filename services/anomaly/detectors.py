"""Streaming per-series anomaly detector and distribution-drift tests.

Pure CPU code over plain data (no I/O): the service runs it in a process pool.

Per point, the detector predicts the value three ways (a robust EWMA level, a daily profile
from the timestamps plus a local offset, and the previous value) and uses the predictor with
the lowest long-run error. Four statistics of that residual (spike, CUSUM level shift,
deviation from the long-run scale, variance ratio) are each calibrated on the series' own
history (a Pareto tail above a running high quantile, Hill tail index), so their tail
probabilities mean the same on every series; a weighted Bonferroni takes the smallest. The
value's rank among all values seen so far (how close it is to a new extreme) is combined
with it by Fisher's method. A novelty filter then keeps only the surprise beyond the last
alarm unless the series moves past that alarm's value, so a new behaviour scores high on its
first point rather than while it lasts.
"""

from __future__ import annotations

import bisect
import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

SIGNALS: tuple[str, ...] = (
    "spike", "level_shift", "rare_value", "variance_change", "new_extreme",
)  # fmt: skip
_N_CAL = 4  # signals with a tail calibrator (all but new_extreme)
# Weighted Bonferroni over the calibrated signals; a variance change alone is weaker evidence.
_INV_WEIGHTS: tuple[float, ...] = (4.0, 4.0, 4.0, 40.0)
_NEW_EXTREME = SIGNALS.index("new_extreme")
_LEVEL_SHIFT = 1 << SIGNALS.index("level_shift")
_STATE_VERSION = 1
# Smallest reported tail probability: 1 - 1e-15 is still distinct from 1.0 in float64.
_MIN_LOG_P = -34.0
_FLOAT_STATE: tuple[str, ...] = (
    "t0", "x_last", "lvl", "sc", "off", "sc2", "mae0", "mae1", "maerw", "scrw", "scs",
    "base", "sbase", "cp", "cm", "vf", "vs", "absdiff", "ref", "xa",
)  # fmt: skip
_INT_STATE: tuple[str, ...] = ("n", "run_len", "xa_dir")


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


@dataclass(frozen=True)
class Score:
    """One point's score.

    Attributes:
        value: in [0, 1]; 1 minus the combined, novelty-filtered tail probability.
        signals: names of the signals whose own tail probability fell below alarm_p.
    """

    value: float
    signals: tuple[str, ...]


def _new_cal() -> list[float]:
    # [exceedance weight, threshold, weighted sum of log excesses, positive updates,
    # fraction of positive values]; the prior is worth 5 exceedances with tail index 4.
    return [5.0, 0.0, 1.25, 0.0, 1.0]


class SeriesDetector:
    """Causal streaming detector for one series.

    A point's score depends only on it and the points before it. ``score_batch`` runs the
    same loop as ``score`` and gives bit-identical results.
    """

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        c = self.config
        # Per-call constants, unpacked in one step by _run.
        self._consts = (
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
        )  # fmt: skip
        # Scalar state as two flat lists (names in _FLOAT_STATE / _INT_STATE order).
        self._f = [0.0] * len(_FLOAT_STATE)
        self._zs = [0.0] * _N_CAL  # scratch
        self._pj = [1.0] * len(SIGNALS)  # scratch
        self._i = [0] * len(_INT_STATE)
        self._t_last = -math.inf
        self._prof = [0.0] * self.config.season_bins
        self._pcnt = [0] * self.config.season_bins
        self._cal = [_new_cal() for _ in range(_N_CAL)]
        self._top: list[float] = []  # highest values, ascending
        self._bot: list[float] = []  # negated lowest values, ascending

    @property
    def count(self) -> int:
        """Points scored so far."""
        return self._i[0]

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
        if t < self._t_last:
            raise ValueError("timestamps must be non-decreasing")
        out = [0.0]
        flags = [0]
        self._run([t], [x], out, flags)
        f = flags[0]
        if not f:
            return Score(out[0], ())
        return Score(out[0], tuple(s for i, s in enumerate(SIGNALS) if f >> i & 1))

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
        ts = np.asarray(timestamps, dtype=np.float64).ravel()
        xs = np.asarray(values, dtype=np.float64).ravel()
        if ts.shape != xs.shape:
            raise ValueError("timestamps and values must have the same length")
        if not (np.all(np.isfinite(ts)) and np.all(np.isfinite(xs))):
            raise ValueError("timestamp and value must be finite")
        if ts.size and (ts[0] < self._t_last or np.any(np.diff(ts) < 0)):
            raise ValueError("timestamps must be non-decreasing")
        out = [0.0] * ts.size
        flags = [0] * ts.size
        self._run(ts.tolist(), xs.tolist(), out, flags)
        return np.asarray(out, dtype=np.float64), np.asarray(flags, dtype=np.int64)

    def _run(self, ts: list[float], xs: list[float], out: list[float], flags: list[int]) -> None:
        # One loop for both entry points, on locals and scalar math: that is what makes
        # batch == streaming exact and keeps the per-point cost low.
        (
            a_l0, a_s0, a_p, wmax, lam0, k, alarm_p, warm, period, nb, q0, decay, ktop,
            xfac, warm_cusum, m_steady, steady_up, steady_down, rate_min,
        ) = self._consts  # fmt: skip
        exp, log, sqrt, inf = math.exp, math.log, math.sqrt, math.inf
        insort, bisect_left = bisect.insort, bisect.bisect_left
        inv_w = _INV_WEIGHTS
        n, run, xa_dir = self._i
        (
            t0, x_last, lvl, sc, off, sc2, mae0, mae1, maerw, scrw, scs, base, sbase, cp, cm,
            vf, vs, absdiff, ref, xa,
        ) = self._f  # fmt: skip
        prof, pcnt, cal, top, bot = self._prof, self._pcnt, self._cal, self._top, self._bot
        zs, pj = self._zs, self._pj
        for i in range(len(xs)):
            x = xs[i]
            t = ts[i]
            if n == 0:
                lvl = base = x
                t0 = t
            floor = 0.1 * absdiff + 1e-9 * (abs(lvl) + 1.0)
            b = int((t % period) / period * nb) % nb
            # Residuals of the three predictors, from the state before this point.
            r0 = x - lvl
            seasonal_ok = pcnt[b] > 0
            r1 = x - prof[b] - off if seasonal_ok else 0.0
            rw = x - x_last
            if seasonal_ok and t - t0 >= period and mae1 < mae0:
                r, s_fast, best = r1, sc2, mae1
            else:
                r, s_fast, best = r0, sc, mae0
            if n > 1 and maerw < best:
                r, s_fast = rw, scrw
            ar = abs(r)
            if n >= warm_cusum:
                us = (x - base) / (sbase + floor)
                cp = max(0.0, cp + us - k)
                cm = max(0.0, cm - us - k)
            vf_new = vf + a_l0 * (ar - vf)
            fl = 0
            p = 1.0
            if n >= warm:
                zs[0] = ar / (s_fast + floor)
                zs[1] = cp if cp > cm else cm
                zs[2] = ar / (scs + floor)
                zs[3] = (vf_new + floor) / (vs + floor)
                # Calibrated tail probability of each statistic, then update its calibrator.
                p_point = 1.0
                rate_pos = 1.0 / (n - warm + 2.0)
                if rate_pos < rate_min:
                    rate_pos = rate_min
                for j in range(_N_CAL):
                    pj[j] = 1.0
                    z = zs[j]
                    cj = cal[j]
                    w, u, h, m, pos = cj
                    # Zero-inflated statistics (a CUSUM at rest): the tail is fitted to the
                    # positive values and scaled by how often the statistic is positive.
                    cj[4] = pos + rate_pos * ((1.0 if z > 0.0 else 0.0) - pos)
                    if z <= 0.0:
                        continue
                    if m == 0.0:
                        cj[1] = z
                        cj[3] = 1.0
                        continue
                    cj[3] = m + 1.0
                    if m < m_steady:
                        st = 1.0 / sqrt(m)
                        f_up, f_down = exp(st * (1.0 - q0)), exp(-st * q0)
                    else:
                        f_up, f_down = steady_up, steady_down
                    if z > u:
                        e = log(z / u)
                        # Pareto tail above the running (1 - q0) quantile, Hill index w / h.
                        pz = pos * q0 * exp(-e * w / h)
                        pj[j] = pz
                        pz *= inv_w[j]
                        if pz < p_point:
                            p_point = pz
                        if w < wmax:
                            cj[0] = w + 1.0
                            cj[2] = h + e
                        else:
                            cj[0] = w * lam0 + 1.0
                            cj[2] = h * lam0 + e
                        cj[1] = u * f_up
                    else:
                        cj[1] = u * f_down
                # Rank of the value among all seen so far: (k + 1) / (n + 1) among the top
                # extreme_k, with an exponential tail beyond the current extreme.
                p_ext = 1.0
                kt = len(top)
                if x > top[0]:
                    kk = kt - bisect_left(top, x)
                    p_ext = (kk + 1.0) / (n + 1.0)
                    me = top[-1] - top[0]
                    if x > top[-1] and me > 0.0:
                        p_ext *= exp(-(x - top[-1]) * (kt - 1) / (kt * me))
                if -x > bot[0]:
                    kk = kt - bisect_left(bot, -x)
                    pe = (kk + 1.0) / (n + 1.0)
                    me = bot[-1] - bot[0]
                    if -x > bot[-1] and me > 0.0:
                        pe *= exp((x + bot[-1]) * (kt - 1) / (kt * me))
                    if pe < p_ext:
                        p_ext = pe
                pj[_NEW_EXTREME] = p_ext
                for j in range(len(SIGNALS)):
                    if pj[j] < alarm_p:
                        fl |= 1 << j
                # Fisher's method on the point evidence and the rank evidence.
                pp = (p_point if p_point < 1.0 else 1.0) * min(1.0, p_ext * xfac)
                p = pp * (1.0 - log(pp)) if pp > 0.0 else 0.0
            lp = log(p) if 0.0 < p < 1.0 else (0.0 if p >= 1.0 else -inf)
            # Novelty filter: only the surprise beyond the last alarm (forgotten over
            # `refractory` points) counts, unless the value moves past the alarm's value.
            beyond = (xa_dir > 0 and x > xa) or (xa_dir < 0 and x < xa)
            lq = lp if beyond else lp - ref
            if lq > 0.0:
                lq = 0.0
            elif lq < _MIN_LOG_P:
                lq = _MIN_LOG_P
            if lp < ref or (beyond and lp < 0.5 * ref):
                ref = lp if lp > -700.0 else -700.0
                xa = x
                xa_dir = 1 if r > 0 else -1
            ref *= decay
            out[i] = 1.0 - exp(lq)
            flags[i] = fl
            # State update; count-based rates while warming up.
            a_l = 1.0 / (n + 1) if n * a_l0 < 1.0 else a_l0
            a_s = 1.0 / (n + 1) if n * a_s0 < 1.0 else a_s0
            if n > 0:
                absdiff += (1.0 / n if n * a_s0 < 1.0 else a_s0) * (abs(rw) - absdiff)
                maerw += a_s * (abs(rw) - maerw)
                limw = 4.0 * (scrw + floor) if n >= warm else inf
                scrw += a_l * (min(abs(rw), limw) - scrw)
                sbase += a_s * (abs(x - base) - sbase)
                base += a_s * (x - base)
            vf = vf_new
            vs += a_s * (ar - vs)
            scs += a_s * (ar - scs)
            mae0 += a_s * (abs(r0) - mae0)
            lim = 4.0 * (sc + floor) if n >= warm else inf
            if r0 > lim:
                run = run + 1 if run > 0 else 1
                rc = lim
            elif r0 < -lim:
                run = run - 1 if run < 0 else -1
                rc = -lim
            else:
                run = 0
                rc = r0
            if run >= 2 or run <= -2:
                # The excursion persists: a new regime, not a spike; re-anchor the level.
                lvl = x
                run = 0
            else:
                lvl += a_l * rc
            sc += a_l * (abs(rc) - sc)
            if seasonal_ok:
                mae1 += a_s * (abs(r1) - mae1)
                lim2 = 4.0 * (sc2 + floor) if n >= warm else inf
                if abs(r1) < lim2:
                    off += a_l * (r1 - off)
                sc2 += a_l * (min(abs(r1), lim2) - sc2)
                prof[b] += a_p * (x - prof[b])
            else:
                mae1 += a_s * (abs(r0) - mae1)
                prof[b] = x
            pcnt[b] += 1
            if len(top) < ktop:
                insort(top, x)
                insort(bot, -x)
            else:
                if x > top[0]:
                    insort(top, x)
                    del top[0]
                if -x > bot[0]:
                    insort(bot, -x)
                    del bot[0]
            if fl & _LEVEL_SHIFT:
                cp = cm = 0.0
                base = x
            x_last = x
            n += 1
        self._i = [n, run, xa_dir]
        self._f = [
            t0, x_last, lvl, sc, off, sc2, mae0, mae1, maerw, scrw, scs, base, sbase, cp, cm,
            vf, vs, absdiff, ref, xa,
        ]  # fmt: skip
        if ts:
            self._t_last = ts[-1]

    def to_state(self) -> dict[str, object]:
        """Returns a JSON-serialisable snapshot; ``from_state`` continues it exactly."""
        scalars: dict[str, float | int] = dict(zip(_INT_STATE, self._i, strict=True))
        scalars.update(zip(_FLOAT_STATE, self._f, strict=True))
        return {
            "version": _STATE_VERSION,
            "config": asdict(self.config),
            "t_last": self._t_last if math.isfinite(self._t_last) else None,
            "scalars": scalars,
            "profile": list(self._prof),
            "profile_counts": list(self._pcnt),
            "calibrators": [list(cj) for cj in self._cal],
            "highest": list(self._top),
            "lowest": [-v for v in self._bot],
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
            t_last = d["t_last"]
            det._t_last = -math.inf if t_last is None else float(t_last)
            det._i = [int(d["scalars"][name]) for name in _INT_STATE]
            det._f = [float(d["scalars"][name]) for name in _FLOAT_STATE]
            prof = [float(v) for v in d["profile"]]
            pcnt = [int(v) for v in d["profile_counts"]]
            cal = [[float(v) for v in cj] for cj in d["calibrators"]]
            top = sorted(float(v) for v in d["highest"])
            bot = sorted(-float(v) for v in d["lowest"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed detector state: {exc}") from exc
        nb = det.config.season_bins
        if len(prof) != nb or len(pcnt) != nb or len(cal) != _N_CAL or len(top) != len(bot):
            raise ValueError("malformed detector state: wrong sizes")
        det._prof, det._pcnt, det._cal, det._top, det._bot = prof, pcnt, cal, top, bot
        return det


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
