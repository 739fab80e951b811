"""The ring of recent points keeps exactly what a bounded deque of the same points keeps."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from services.anomaly import recent


@pytest.mark.parametrize("seed", range(30))
def test_ring_matches_a_bounded_deque(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = int(rng.integers(1, 40))
    ring = recent.RecentPoints(size)
    want_t: collections.deque[float] = collections.deque(maxlen=size)
    want_x: collections.deque[float] = collections.deque(maxlen=size)
    t = 0.0
    for _ in range(int(rng.integers(1, 25))):
        n = int(rng.integers(0, 2 * size + 2))
        ts = t + np.arange(n, dtype=np.float64)
        t += n
        xs = rng.normal(size=n)
        ring.extend(ts, xs)
        want_t.extend(ts.tolist())
        want_x.extend(xs.tolist())
        assert len(ring) == len(want_x)
        assert ring.lists() == (list(want_t), list(want_x))


def test_restored_ring_keeps_the_latest_of_each_list() -> None:
    ring = recent.RecentPoints(3, [1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0])
    assert ring.lists() == ([2.0, 3.0, 4.0], [20.0, 30.0, 40.0])
    # Lists of different lengths (a damaged checkpoint) pair up from the newest end.
    uneven = recent.RecentPoints(5, [1.0, 2.0, 3.0], [20.0, 30.0])
    assert uneven.lists() == ([2.0, 3.0], [20.0, 30.0])


def test_arrays_are_copies() -> None:
    ring = recent.RecentPoints(2, [1.0, 2.0], [5.0, 6.0])
    _, values = ring.arrays()
    values[0] = 99.0
    assert ring.lists() == ([1.0, 2.0], [5.0, 6.0])


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="size"):
        recent.RecentPoints(0)
