"""The latest points of one series, kept for drift tests: a fixed-size ring of times and
values, so appending a batch is two slice copies rather than a Python object per point."""

from __future__ import annotations

from collections.abc import Sequence

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
        size = self._times.shape[0]
        n = values.shape[0]
        if n >= size:
            times, values, n = times[-size:], values[-size:], size
        start = self._next
        first = min(n, size - start)
        self._times[start : start + first] = times[:first]
        self._values[start : start + first] = values[:first]
        if first < n:
            self._times[: n - first] = times[first:]
            self._values[: n - first] = values[first:]
        self._next = (start + n) % size
        self._count = min(size, self._count + n)

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
