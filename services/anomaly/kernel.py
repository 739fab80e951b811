"""The detector's per-point loop, compiled with numba (see detectors.py for the method).

State and constants are flat float64 arrays so that one compiled loop serves both one point
at a time and whole batches, with bit-identical results. Integers (counts, flags, sizes) are
stored as floats; they stay exact far beyond any series length. The state layout:

``[SCALARS..., profile[nb], profile_counts[nb], calibrators[N_CAL * 5], top[k], bot[k],
pattern[N_PM * nb]]``

where ``top`` holds the highest values seen (ascending, ``S_NTOP`` of them used) and ``bot``
the negated lowest values (ascending). ``pattern`` is the phase-excursion memory, N_PM arrays
of nb (see PM_*): per phase bin the period it was last brought to, and for upward and
downward excursions the largest one in this period and in each of the two before, and the
recurring size (the smallest of three consecutive periods' largest, decaying per period).
With ``NUMBA_DISABLE_JIT=1`` the same code runs as plain Python.
"""

from __future__ import annotations

import math

import numba
import numpy as np

N_SIGNALS = 5  # detectors.SIGNALS: spike, level_shift, rare_value, variance_change, new_extreme
N_CAL = 4  # statistics with a tail calibrator
N_CAL_POINT = 4  # of which the point statistics (spike, level shift, rare value, variance)
NEW_EXTREME = 4
LEVEL_SHIFT_BIT = 1 << 1
CAL_WIDTH = 5  # [exceedance weight, threshold, sum of log excesses, updates, positive share]
# Smallest reported tail probability: 1 - 1e-15 is still distinct from 1.0 in float64.
MIN_LOG_P = -34.0

# Scalar slots of the state array.
FLOAT_STATE: tuple[str, ...] = (
    "t0", "x_last", "lvl", "sc", "off", "sc2", "mae0", "mae1", "maerw", "scrw", "scs",
    "base", "sbase", "cp", "cm", "vf", "vs", "absdiff", "ref", "xa",
)  # fmt: skip
INT_STATE: tuple[str, ...] = ("n", "run_len", "xa_dir")
(
    S_T0, S_XLAST, S_LVL, S_SC, S_OFF, S_SC2, S_MAE0, S_MAE1, S_MAERW, S_SCRW, S_SCS, S_BASE,
    S_SBASE, S_CP, S_CM, S_VF, S_VS, S_ABSDIFF, S_REF, S_XA, S_N, S_RUN, S_XADIR, S_TLAST,
    S_NTOP,
) = range(25)  # fmt: skip
N_SCALARS = 25

# Slots of the constants array.
(
    C_AL, C_AS, C_AP, C_WMAX, C_LAM, C_K, C_ALARM, C_WARM, C_PERIOD, C_NB, C_Q, C_DECAY,
    C_KTOP, C_XFAC, C_WARM_CUSUM, C_M_STEADY, C_STEADY_UP, C_STEADY_DOWN, C_RATE_MIN,
) = range(19)  # fmt: skip
C_PM_W, C_PM_DECAY, C_PM_FACTOR = range(19, 22)
N_CONSTS = 22
# Phase-excursion memory: N_PM arrays of nb (one value per phase bin).
N_PM = 9
(
    PM_STAMP, PM_CUR_UP, PM_LAST_UP, PM_LAST2_UP, PM_REC_UP,
    PM_CUR_DN, PM_LAST_DN, PM_LAST2_DN, PM_REC_DN,
) = range(N_PM)  # fmt: skip
# Weighted Bonferroni over the calibrated signals; a variance change alone is weaker evidence.
INV_WEIGHTS = np.array([4.0, 4.0, 4.0, 40.0])


def layout(nb: int, k: int) -> tuple[int, int, int, int, int, int, int]:
    """Offsets of (profile, counts, calibrators, top, bot, pattern) and the state's size."""
    prof = N_SCALARS
    cnt = prof + nb
    cal = cnt + nb
    top = cal + N_CAL * CAL_WIDTH
    bot = top + k
    pm = bot + k
    return prof, cnt, cal, top, bot, pm, pm + N_PM * nb


def new_state(nb: int, k: int) -> np.ndarray:
    """The state of a detector that has seen nothing."""
    cal, size = layout(nb, k)[2], layout(nb, k)[6]
    st = np.zeros(size)
    st[S_TLAST] = -math.inf
    for j in range(N_CAL):
        # The prior is worth 5 exceedances with tail index 4; all values positive so far.
        st[cal + j * CAL_WIDTH : cal + (j + 1) * CAL_WIDTH] = (5.0, 0.0, 1.25, 0.0, 1.0)
    return st


@numba.njit(cache=True, nogil=True)
def check(t_last: float, ts: np.ndarray, xs: np.ndarray) -> int:
    """Why the points ts/xs cannot be scored after a point at `t_last`: 0 they can, 1 a
    time or value is not finite, 2 a time is earlier than the one before it."""
    prev = t_last
    for i in range(ts.shape[0]):
        t = ts[i]
        if not (math.isfinite(t) and math.isfinite(xs[i])):
            return 1
        if t < prev:
            return 2
        prev = t
    return 0


@numba.njit(cache=True, nogil=True)
def _insort(a: np.ndarray, lo: int, size: int, x: float) -> None:
    # Insert x into the ascending a[lo:lo+size] (room for one more), after equal values.
    i = lo + size
    while i > lo and a[i - 1] > x:
        a[i] = a[i - 1]
        i -= 1
    a[i] = x


@numba.njit(cache=True, nogil=True)
def _replace_min(a: np.ndarray, lo: int, size: int, x: float) -> None:
    # Drop a[lo] (the smallest) and insert x into the ascending a[lo:lo+size].
    i = lo
    while i + 1 < lo + size and a[i + 1] <= x:
        a[i] = a[i + 1]
        i += 1
    a[i] = x


@numba.njit(cache=True, nogil=True)
def _count_at_least(a: np.ndarray, lo: int, size: int, x: float) -> int:
    # How many of the ascending a[lo:lo+size] are >= x.
    c = 0
    for i in range(lo + size - 1, lo - 1, -1):
        if a[i] < x:
            break
        c += 1
    return c


@numba.njit(cache=True, nogil=True)
def _tail_p(st: np.ndarray, o: int, z: float, q0: float) -> float:
    # Tail probability of statistic z from the calibrator at st[o:o+CAL_WIDTH], without
    # updating it: 1 at or below its threshold.
    w, u, h, m, pos = st[o], st[o + 1], st[o + 2], st[o + 3], st[o + 4]
    if z <= 0.0 or m == 0.0 or z <= u:
        return 1.0
    return float(pos * q0 * math.exp(-math.log(z / u) * w / h))


@numba.njit(cache=True, nogil=True)
def _calibrate(st: np.ndarray, o: int, z: float, rate_pos: float, c: np.ndarray) -> float:
    # Tail probability of statistic z (`_tail_p`), then the calibrator's update with z: a
    # Pareto tail above a running (1 - q) quantile (Hill index w / h). Zero-inflated
    # statistics (a CUSUM at rest) are fitted on their positive values and scaled by how
    # often the statistic is positive.
    q0 = c[C_Q]
    p = _tail_p(st, o, z, q0)
    w, u, h, m, pos = st[o], st[o + 1], st[o + 2], st[o + 3], st[o + 4]
    st[o + 4] = pos + rate_pos * ((1.0 if z > 0.0 else 0.0) - pos)
    if z <= 0.0:
        return p
    if m == 0.0:
        st[o + 1] = z
        st[o + 3] = 1.0
        return p
    st[o + 3] = m + 1.0
    if m < c[C_M_STEADY]:
        step = 1.0 / math.sqrt(m)
        f_up, f_down = math.exp(step * (1.0 - q0)), math.exp(-step * q0)
    else:
        f_up, f_down = c[C_STEADY_UP], c[C_STEADY_DOWN]
    if z <= u:
        st[o + 1] = u * f_down
        return p
    e = math.log(z / u)
    lam = c[C_LAM]
    if w < c[C_WMAX]:
        st[o] = w + 1.0
        st[o + 2] = h + e
    else:
        st[o] = w * lam + 1.0
        st[o + 2] = h * lam + e
    st[o + 1] = u * f_up
    return p


@numba.njit(cache=True, nogil=True)
def _pm_roll(st: np.ndarray, o: int, nb: int, j: int, kp: float, decay: float) -> None:
    # Brings phase bin j's memory forward to period kp (nothing to do if it is there).
    # Each period that closes recurred as large as the smallest of its and the two previous
    # periods' largest excursions; the recurring size keeps the larger of that and its
    # decayed self.
    last_k = st[o + PM_STAMP * nb + j]
    if last_k >= kp:
        return
    gap = kp - last_k
    for first in (PM_CUR_UP, PM_CUR_DN):
        i_cur = o + first * nb + j
        i_last, i_last2, i_rec = i_cur + nb, i_cur + 2 * nb, i_cur + 3 * nb
        cur, last, last2 = st[i_cur], st[i_last], st[i_last2]
        rec = st[i_rec] * decay
        recurred = min(cur, last, last2)
        if recurred > rec:
            rec = recurred
        if gap > 1.0:
            # Periods without any excursion since.
            rec *= decay ** min(gap - 1.0, 1000.0)
        st[i_rec] = rec
        st[i_last2] = last if gap == 1.0 else (cur if gap == 2.0 else 0.0)
        st[i_last] = cur if gap == 1.0 else 0.0
        st[i_cur] = 0.0
    st[o + PM_STAMP * nb + j] = kp


@numba.njit(cache=True, nogil=True)
def run(
    c: np.ndarray,
    st: np.ndarray,
    ts: np.ndarray,
    xs: np.ndarray,
    out: np.ndarray,
    flags: np.ndarray,
) -> None:
    """Scores ``xs`` (at times ``ts``) into ``out``/``flags`` and advances ``st``."""
    a_l0, a_s0, a_p, k, alarm_p = c[C_AL], c[C_AS], c[C_AP], c[C_K], c[C_ALARM]
    warm, period, nb, decay = c[C_WARM], c[C_PERIOD], int(c[C_NB]), c[C_DECAY]
    ktop, xfac, warm_cusum, rate_min = int(c[C_KTOP]), c[C_XFAC], c[C_WARM_CUSUM], c[C_RATE_MIN]
    pm_w, pm_decay, pm_factor = int(c[C_PM_W]), c[C_PM_DECAY], c[C_PM_FACTOR]
    o_prof = N_SCALARS
    o_cnt = o_prof + nb
    o_cal = o_cnt + nb
    o_top = o_cal + N_CAL * CAL_WIDTH
    o_bot = o_top + ktop
    o_pm = o_bot + ktop
    inf = math.inf

    t0, x_last, lvl, sc, off, sc2 = st[S_T0], st[S_XLAST], st[S_LVL], st[S_SC], st[S_OFF], st[S_SC2]
    mae0, mae1, maerw, scrw, scs = st[S_MAE0], st[S_MAE1], st[S_MAERW], st[S_SCRW], st[S_SCS]
    base, sbase, cp, cm, vf, vs = st[S_BASE], st[S_SBASE], st[S_CP], st[S_CM], st[S_VF], st[S_VS]
    absdiff, ref, xa = st[S_ABSDIFF], st[S_REF], st[S_XA]
    n, run_len, xa_dir, kt = st[S_N], int(st[S_RUN]), int(st[S_XADIR]), int(st[S_NTOP])
    zs = np.empty(N_CAL)
    pj = np.empty(N_SIGNALS)

    for i in range(xs.shape[0]):
        x = xs[i]
        t = ts[i]
        if n == 0:
            lvl = base = x
            t0 = t
        floor = 0.1 * absdiff + 1e-9 * (abs(lvl) + 1.0)
        b = int((t % period) / period * nb) % nb
        kp = round((t - t % period) / period)  # the period's index
        # Residuals of the three predictors, from the state before this point.
        r0 = x - lvl
        seasonal_ok = st[o_cnt + b] > 0
        r1 = x - st[o_prof + b] - off if seasonal_ok else 0.0
        rw = x - x_last
        if seasonal_ok and t - t0 >= period and mae1 < mae0:
            r, s_fast, best = r1, sc2, mae1
        else:
            r, s_fast, best = r0, sc, mae0
        if n > 1 and maerw < best:
            r, s_fast = rw, scrw
        ar = abs(r)
        # Pattern memory: the part of the excursion that recurs at this phase in earlier
        # periods (up to pm_factor times its recurring size) is ordinary, not evidence.
        _pm_roll(st, o_pm, nb, b, float(kp), pm_decay)
        rec = st[o_pm + (PM_REC_UP if r > 0.0 else PM_REC_DN) * nb + b]
        expl = pm_factor * rec
        if expl > ar:
            expl = ar
        ar_e = ar - expl
        if n >= warm_cusum:
            dv = x - base
            if dv * r > 0.0:
                dv = dv - expl if dv > 0.0 else dv + expl
                if dv * r < 0.0:
                    dv = 0.0
            us = dv / (sbase + floor)
            cp = max(0.0, cp + us - k)
            cm = max(0.0, cm - us - k)
        vf_new = vf + a_l0 * (ar_e - vf)
        fl = 0
        p = 1.0
        p_spike_raw = 1.0
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
            for j in range(N_CAL_POINT):
                o = o_cal + j * CAL_WIDTH
                if expl > 0.0 and (j == 0 or j == 2):
                    # The calibrator learns the raw statistic; only the surplus over the
                    # size that recurs at this phase counts as evidence.
                    pz = _tail_p(st, o, zs[j] * ar_e / ar, c[C_Q])
                    p_raw = _calibrate(st, o, zs[j], rate_pos, c)
                else:
                    pz = p_raw = _calibrate(st, o, zs[j], rate_pos, c)
                if j == 0:
                    p_spike_raw = p_raw
                pj[j] = pz
                pz *= INV_WEIGHTS[j]
                if pz < p_point:
                    p_point = pz
            # Rank of the value among all seen so far: (k + 1) / (n + 1) among the top
            # extreme_k, with an exponential tail beyond the current extreme.
            p_ext = 1.0
            top0, topk = st[o_top], st[o_top + kt - 1]
            if x > top0:
                kk = _count_at_least(st, o_top, kt, x)
                p_ext = (kk + 1.0) / (n + 1.0)
                me = topk - top0
                if x > topk and me > 0.0:
                    p_ext *= math.exp(-(x - topk) * (kt - 1) / (kt * me))
            bot0, botk = st[o_bot], st[o_bot + kt - 1]
            if -x > bot0:
                kk = _count_at_least(st, o_bot, kt, -x)
                pe = (kk + 1.0) / (n + 1.0)
                me = botk - bot0
                if -x > botk and me > 0.0:
                    pe *= math.exp((x + botk) * (kt - 1) / (kt * me))
                if pe < p_ext:
                    p_ext = pe
            pj[NEW_EXTREME] = p_ext
            for j in range(N_SIGNALS):
                if pj[j] < alarm_p:
                    fl |= 1 << j
            # Fisher's method on the point evidence and the rank evidence.
            pp = (p_point if p_point < 1.0 else 1.0) * min(1.0, p_ext * xfac)
            p = pp * (1.0 - math.log(pp)) if pp > 0.0 else 0.0
        if 0.0 < p < 1.0:
            lp = math.log(p)
        elif p >= 1.0:
            lp = 0.0
        else:
            lp = -inf
        # Novelty filter: only the surprise beyond the last alarm (forgotten over
        # `refractory` points) counts, unless the value moves past the alarm's value.
        beyond = (xa_dir > 0 and x > xa) or (xa_dir < 0 and x < xa)
        lq = lp if beyond else lp - ref
        if lq > 0.0:
            lq = 0.0
        elif lq < MIN_LOG_P:
            lq = MIN_LOG_P
        if lp < ref or (beyond and lp < 0.5 * ref):
            ref = lp if lp > -700.0 else -700.0
            xa = x
            xa_dir = 1 if r > 0 else -1
        ref *= decay
        out[i] = 1.0 - math.exp(lq)
        flags[i] = fl
        # Remember a spike (one the spike signal names, before any discount) at this phase,
        # spread over +-pm_w bins for timing jitter between periods.
        if p_spike_raw < alarm_p:
            cur_i = PM_CUR_UP if r > 0.0 else PM_CUR_DN
            a0 = kp * nb + b
            for aa in range(a0 - pm_w, a0 + pm_w + 1):
                j = aa % nb
                kj = (aa - j) // nb
                if st[o_pm + PM_STAMP * nb + j] > kj:
                    continue
                _pm_roll(st, o_pm, nb, j, float(kj), pm_decay)
                if ar > st[o_pm + cur_i * nb + j]:
                    st[o_pm + cur_i * nb + j] = ar
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
            run_len = run_len + 1 if run_len > 0 else 1
            rc = lim
        elif r0 < -lim:
            run_len = run_len - 1 if run_len < 0 else -1
            rc = -lim
        else:
            run_len = 0
            rc = r0
        if run_len >= 2 or run_len <= -2:
            # The excursion persists: a new regime, not a spike; re-anchor the level.
            lvl = x
            run_len = 0
        else:
            lvl += a_l * rc
        sc += a_l * (abs(rc) - sc)
        if seasonal_ok:
            mae1 += a_s * (abs(r1) - mae1)
            lim2 = 4.0 * (sc2 + floor) if n >= warm else inf
            if abs(r1) < lim2:
                off += a_l * (r1 - off)
            sc2 += a_l * (min(abs(r1), lim2) - sc2)
            st[o_prof + b] += a_p * (x - st[o_prof + b])
        else:
            mae1 += a_s * (abs(r0) - mae1)
            st[o_prof + b] = x
        st[o_cnt + b] += 1.0
        if kt < ktop:
            _insort(st, o_top, kt, x)
            _insort(st, o_bot, kt, -x)
            kt += 1
        else:
            if x > st[o_top]:
                _replace_min(st, o_top, kt, x)
            if -x > st[o_bot]:
                _replace_min(st, o_bot, kt, -x)
        if fl & LEVEL_SHIFT_BIT:
            cp = cm = 0.0
            base = x
        x_last = x
        n += 1

    st[S_T0], st[S_XLAST], st[S_LVL], st[S_SC], st[S_OFF], st[S_SC2] = t0, x_last, lvl, sc, off, sc2
    st[S_MAE0], st[S_MAE1], st[S_MAERW], st[S_SCRW], st[S_SCS] = mae0, mae1, maerw, scrw, scs
    st[S_BASE], st[S_SBASE], st[S_CP], st[S_CM], st[S_VF], st[S_VS] = base, sbase, cp, cm, vf, vs
    st[S_ABSDIFF], st[S_REF], st[S_XA] = absdiff, ref, xa
    st[S_N], st[S_RUN], st[S_XADIR], st[S_NTOP] = n, run_len, xa_dir, kt
    if xs.shape[0] > 0:
        st[S_TLAST] = ts[xs.shape[0] - 1]
