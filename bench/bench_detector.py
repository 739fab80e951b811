"""Throughput of the streaming detector (one core): point-at-a-time, one call for the
whole series, and calls of `--chunk` points (the shape ScorePoints gives it: a 1,000-point
batch of 10 series is 10 calls of 100 points).

Run: ``python bench/bench_detector.py [--points N]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.anomaly import detectors, offline

NAB = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "nab" / "data"


def _series(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    t = 1_372_896_000.0 + 300.0 * np.arange(n)
    x = 50.0 + 10.0 * np.sin(2 * np.pi * t / 86400.0) + rng.normal(0.0, 1.0, n)
    x[rng.integers(0, n, n // 500)] += 25.0
    return t, x


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--points", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=100)
    ap.add_argument("--nab", type=Path, default=NAB, help="NAB data dir (the 29 DEV series)")
    a = ap.parse_args(argv)
    t, x = _series(a.points)
    tl, xl = t.tolist(), x.tolist()

    # Best of `repeat` runs, by wall clock and by this process's CPU time (the latter is
    # the fairer figure on a busy machine).
    wall = {"point": 0.0, "batch": 0.0, "chunk": 0.0}
    cpu = {"point": 0.0, "batch": 0.0, "chunk": 0.0}
    for _ in range(a.repeat):
        det = detectors.SeriesDetector()
        score = det.score
        w0, c0 = time.perf_counter(), time.process_time()
        for ti, xi in zip(tl, xl, strict=True):
            score(ti, xi)
        w1, c1 = time.perf_counter(), time.process_time()
        wall["point"] = max(wall["point"], a.points / (w1 - w0))
        cpu["point"] = max(cpu["point"], a.points / max(c1 - c0, 1e-9))

        det = detectors.SeriesDetector()
        w0, c0 = time.perf_counter(), time.process_time()
        det.score_arrays(t, x)
        w1, c1 = time.perf_counter(), time.process_time()
        wall["batch"] = max(wall["batch"], a.points / (w1 - w0))
        cpu["batch"] = max(cpu["batch"], a.points / max(c1 - c0, 1e-9))

        det = detectors.SeriesDetector()
        w0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, a.points, a.chunk):
            det.score_arrays(t[i : i + a.chunk], x[i : i + a.chunk])
        w1, c1 = time.perf_counter(), time.process_time()
        wall["chunk"] = max(wall["chunk"], a.points / (w1 - w0))
        cpu["chunk"] = max(cpu["chunk"], a.points / max(c1 - c0, 1e-9))

    print(f"points: {a.points}, one core")
    print(f"point-at-a-time: {wall['point']:>10,.0f} points/s wall  {cpu['point']:>10,.0f} cpu")
    print(f"batched:         {wall['batch']:>10,.0f} points/s wall  {cpu['batch']:>10,.0f} cpu")
    print(
        f"{a.chunk}-point calls: {wall['chunk']:>10,.0f} points/s wall  {cpu['chunk']:>10,.0f} cpu"
    )
    files = sorted(a.nab.glob("*/*.csv")) if a.nab.is_dir() else []
    if files:
        # What `aiops detect` does per file, minus process start: parse the CSV, then score.
        w0 = time.perf_counter()
        series = [offline.read_series(str(f)) for f in files]
        w1 = time.perf_counter()
        points = sum(detectors.SeriesDetector().score_batch(t, x).size for t, x in series)
        w2 = time.perf_counter()
        print(
            f"DEV series: {len(files)} files, {points:,} points: scored in {w2 - w1:.3f} s "
            f"(CSV parsing {w1 - w0:.3f} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
