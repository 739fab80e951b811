"""Offline scoring of a CSV series: ``python -m services.anomaly.offline detect IN.csv OUT.csv``.

Reads ``timestamp,value`` rows (timestamps like ``2013-07-04 00:00:00``, taken as UTC), runs
the streaming detector causally over them and writes ``anomaly_score`` then one score per
row, the format the NAB scorer reads. The leading ``detect`` word may be omitted.
"""

from __future__ import annotations

import argparse
import csv
import sys
from datetime import UTC, datetime

import numpy as np

from services.anomaly import detectors


def _parse_timestamp(text: str) -> float:
    ts = datetime.fromisoformat(text.strip())
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.timestamp()


def read_series(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads a ``timestamp,value`` CSV with a header line.

    Returns:
        (epoch seconds, values). A timestamp earlier than the one before it (a clock reset,
        a DST repeat) is clamped to it, so the detector sees time standing still.

    Raises:
        ValueError: a malformed row, with its line number.
    """
    times: list[float] = []
    values: list[float] = []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return np.zeros(0), np.zeros(0)
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < 2:
                raise ValueError(f"{path}:{line_no}: expected timestamp,value")
            try:
                times.append(_parse_timestamp(row[0]))
                values.append(float(row[1]))
            except ValueError as exc:
                raise ValueError(f"{path}:{line_no}: {exc}") from exc
    t = np.maximum.accumulate(np.asarray(times, dtype=np.float64)) if times else np.zeros(0)
    return t, np.asarray(values, dtype=np.float64)


def detect(in_path: str, out_path: str, config: detectors.DetectorConfig | None = None) -> int:
    """Scores ``in_path`` into ``out_path``; returns the number of rows scored."""
    t, x = read_series(in_path)
    scores = detectors.SeriesDetector(config).score_batch(t, x)
    with open(out_path, "w") as f:
        f.write("anomaly_score\n")
        f.writelines(f"{s!r}\n" for s in scores.tolist())
    return int(scores.size)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "detect":
        args = args[1:]
    parser = argparse.ArgumentParser(
        prog="python -m services.anomaly.offline",
        description="Score a timestamp,value CSV with the streaming anomaly detector.",
    )
    parser.add_argument("input", help="CSV with a header and timestamp,value rows")
    parser.add_argument("output", help="where to write anomaly_score, one per row")
    ns = parser.parse_args(args)
    try:
        detect(ns.input, ns.output)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
