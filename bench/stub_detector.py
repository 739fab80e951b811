"""Bench only: the anomaly service with a stand-in compiled detector kernel.

``python -m bench.stub_detector`` runs ``services.anomaly`` with
``SeriesDetector.score_arrays`` replaced by a tiny numba EWMA z-score (a few ns per point),
so `bench_anomaly --detector stub` measures everything on the ScorePoints path except the
detector itself: the ceiling the service reaches once the detector costs next to nothing.
Spawned scoring workers import this module as ``__mp_main__``, so they get the same patch.
Never used by the service itself.
"""

from __future__ import annotations

import math
import runpy

import numba
import numpy as np

from services.anomaly import detectors


@numba.njit(cache=False, nogil=True)  # type: ignore[misc]
def _kernel(xs: np.ndarray, state: np.ndarray, scores: np.ndarray, flags: np.ndarray) -> None:
    n, mean, var = state[0], state[1], state[2]
    for i in range(xs.shape[0]):
        x = xs[i]
        if n < 1.0:
            mean = x
        d = x - mean
        z = abs(d) / math.sqrt(var + 1e-12) if n > 30.0 else 0.0
        scores[i] = 1.0 - math.exp(-0.1 * z * z)
        flags[i] = 1 if z > 4.0 else 0
        mean += 0.01 * d
        var = 0.99 * (var + 0.01 * d * d)
        n += 1.0
    state[0], state[1], state[2] = n, mean, var


def _score_arrays(
    self: detectors.SeriesDetector, timestamps: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    state = self.__dict__.get("_stub_state")
    if state is None:
        state = self.__dict__["_stub_state"] = np.zeros(3)
    xs = np.ascontiguousarray(values, dtype=np.float64)
    scores = np.empty(xs.shape[0])
    flags = np.empty(xs.shape[0], dtype=np.int64)
    _kernel(xs, state, scores, flags)
    self._t_last = float(timestamps[-1]) if timestamps.shape[0] else self._t_last
    return scores, flags


detectors.SeriesDetector.score_arrays = _score_arrays  # type: ignore[method-assign]
# Compile now rather than on the first batch.
_kernel(np.zeros(1), np.zeros(3), np.zeros(1), np.zeros(1, dtype=np.int64))

if __name__ == "__main__":
    runpy.run_module("services.anomaly", run_name="__main__", alter_sys=True)
