"""Per-series detector state and the CPU-bound scoring loop, over plain data.

`Engine` holds one `detectors.SeriesDetector` per series. The service uses it either on the
event loop (in slices) or inside worker processes, one engine per worker, each owning the
series hashed to it; the module-level `worker_*` functions are what those workers run.
Nothing here does I/O.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.anomaly import detectors

# One group: a series key, its timestamps (float64 epoch seconds, increasing) and values
# (float64), both 1-d arrays of the same length.
Group = tuple[str, np.ndarray, np.ndarray]


@dataclass(frozen=True, slots=True)
class Scored:
    """Scores of one group: one value in [0, 1] (float64) and one signal bitmask (int64)
    per point."""

    values: np.ndarray
    flags: np.ndarray

    @classmethod
    def empty(cls) -> Scored:
        return cls(np.empty(0, dtype=np.float64), np.empty(0, dtype=np.int64))


_NAMES: dict[int, tuple[str, ...]] = {}


def signal_names(flags: int) -> tuple[str, ...]:
    """The sorted signal names set in a bitmask of `detectors.SIGNALS`."""
    names = _NAMES.get(flags)
    if names is None:
        names = tuple(sorted(s for i, s in enumerate(detectors.SIGNALS) if flags >> i & 1))
        _NAMES[flags] = names
    return names


def _score_points(det: detectors.SeriesDetector, ts: np.ndarray, xs: np.ndarray) -> Scored:
    values, flags = det.score_arrays(ts, xs)
    return Scored(values, flags)


class Engine:
    """Detectors of many series; one series' input never touches another's state."""

    def __init__(self, config: detectors.DetectorConfig | None = None) -> None:
        self._config = config
        self._dets: dict[str, detectors.SeriesDetector] = {}

    def __len__(self) -> int:
        return len(self._dets)

    def score(self, groups: Sequence[Group]) -> list[Scored]:
        """Scores each group with its series' detector (created on first use)."""
        results: list[Scored] = []
        for series, ts, xs in groups:
            det = self._dets.get(series)
            if det is None:
                det = self._dets[series] = detectors.SeriesDetector(self._config)
            results.append(_score_points(det, ts, xs))
        return results

    def snapshot(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """`to_state()` of the named series that have a detector."""
        return {k: self._dets[k].to_state() for k in keys if k in self._dets}

    def restore(self, states: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """Replaces detectors from checkpoints; returns the keys whose state was unusable."""
        bad: list[str] = []
        for key, state in states.items():
            try:
                self._dets[key] = detectors.SeriesDetector.from_state(dict(state))
            except ValueError:
                bad.append(key)
        return bad

    def drop(self, keys: Sequence[str]) -> None:
        for k in keys:
            self._dets.pop(k, None)


def shard_of(series: str, shards: int) -> int:
    """The worker that owns a series (stable across processes and restarts)."""
    return zlib.crc32(series.encode()) % shards if shards > 1 else 0


def finite(value: float) -> bool:
    return math.isfinite(value)


# Worker-process side: one engine per worker process, owned by that process alone.
_WORKER: Engine | None = None


def _worker() -> Engine:
    global _WORKER
    if _WORKER is None:
        _WORKER = Engine()
    return _WORKER


def worker_score(groups: Sequence[Group]) -> list[Scored]:
    return _worker().score(groups)


def worker_snapshot(keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    return _worker().snapshot(keys)


def worker_restore(states: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return _worker().restore(states)


def worker_drop(keys: Sequence[str]) -> None:
    _worker().drop(keys)
