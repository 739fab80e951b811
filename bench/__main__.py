"""`make bench`: runs every benchmark script in this folder, one after another, and prints
their tables, then one JSON document with everything they reported (`BENCH_JSON` lines).

Each script can also be run on its own; see its docstring.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Feedback first: it is the runbook's hot path and the one the targets are set for.
ORDER = ("bench_feedback", "bench_telemetry", "bench_anomaly", "bench_detector")


def main() -> int:
    scripts = sorted(
        HERE.glob("bench_*.py"),
        key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else len(ORDER), p.stem),
    )
    env = {**os.environ, "PYTHONPATH": f"{HERE.parent}{os.pathsep}{HERE.parent / 'gen'}"}
    report: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    }
    failed = []
    for script in scripts:
        print(f"\n=== {script.stem} ===", flush=True)
        begin = time.monotonic()
        done = subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, text=True, check=False
        )
        for line in done.stdout.splitlines():
            if line.startswith("BENCH_JSON "):
                report[script.stem] = json.loads(line.removeprefix("BENCH_JSON "))
            else:
                print(line)
        if done.returncode != 0:
            failed.append(script.stem)
            print(done.stderr[-2000:], file=sys.stderr)
        print(f"({script.stem}: {time.monotonic() - begin:.0f} s)", flush=True)
    out = HERE.parent / "artifacts" / "bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nall figures: {out}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
