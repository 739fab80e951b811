"""The latest points of one series, kept for drift tests: a fixed-size ring of times and
values, so appending a batch is two slice copies rather than a Python object per point."""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np


class RecentPoints:
    """The latest `size` (time, value) pairs of a series, oldest dropped first."""

    __slots__ = ("_count", "_next", "_times", "_values")

    def __init__(
        self, size: int, times: Sequence[float] = (), values: Sequence[float] = ()
    ) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self._times = np.empty(size)
        self._values = np.empty(size)
        self._next = 0  # where the next point goes
        self._count = 0
        n = min(len(times), len(values))
        if n:
            self.extend(
                np.asarray(times[len(times) - n :], dtype=np.float64),
                np.asarray(values[len(values) - n :], dtype=np.float64),
            )

    def __len__(self) -> int:
        return self._count

    def extend(self, times: np.ndarray, values: np.ndarray) -> None:
        """Appends points (oldest first); arrays of the same length."""
        self._next, self._count = _put(
            self._times, self._values, self._next, self._count, times, values
        )

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the (times, values) held, oldest first."""
        if self._count < self._times.shape[0]:
            return self._times[: self._count].copy(), self._values[: self._count].copy()
        order = np.r_[self._next : self._count, 0 : self._next]
        return self._times[order], self._values[order]

    def lists(self) -> tuple[list[float], list[float]]:
        """As `arrays`, as lists of floats."""
        times, values = self.arrays()
        return times.tolist(), values.tolist()


@numba.njit(cache=True, nogil=True)
def _put(
    ring_t: np.ndarray, ring_x: np.ndarray, at: int, count: int, ts: np.ndarray, xs: np.ndarray
) -> tuple[int, int]:
    # Writes the newest min(len, size) points from `at` on, wrapping; returns the new
    # (next, count).
    size = ring_t.shape[0]
    n = xs.shape[0]
    first = max(0, n - size)
    for i in range(first, n):
        ring_t[at] = ts[i]
        ring_x[at] = xs[i]
        at += 1
        if at == size:
            at = 0
    return at, min(size, count + n - first)
