"""Feedback through the gateway (wrk, closed loop, concurrency 1/16/64/256, plus an
open-loop run at a fixed rate) and straight to the gRPC service, with the server CPU
time per request read from the processes' own counters.

Run: `make bench` (all benchmarks) or `python bench/bench_feedback.py [--seconds N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [
    str(Path(__file__).resolve().parents[1]),
    str(Path(__file__).resolve().parents[1] / "gen"),
]

import aiohttp  # noqa: E402
import grpc  # noqa: E402
from aiops.feedback.v1 import feedback_pb2 as fb  # noqa: E402
from aiops.feedback.v1 import feedback_service_pb2 as fb_svc  # noqa: E402
from aiops.feedback.v1 import feedback_service_pb2_grpc as fb_grpc  # noqa: E402

from bench.suite import Suite  # noqa: E402

HERE = Path(__file__).resolve().parent
SERVER = ("gateway", "services.feedback", "redis-server")


def _top_frames(raw: Path, limit: int = 25) -> list[tuple[float, str]]:
    """The frames with the most samples of their own in a py-spy `raw` (collapsed) file."""
    own: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        leaf = stack.split(";")[-1]
        own[leaf] = own.get(leaf, 0) + int(count)
    ranked = sorted(own.items(), key=lambda kv: -kv[1])[:limit]
    return [(100 * n / max(1, total), frame) for frame, n in ranked]


def _profile(suite: Suite, token: str, seconds: float, out: Path) -> dict[str, Any]:
    """POST at concurrency 64 while py-spy samples each server process: a flame graph (SVG)
    and the collapsed stacks per process, plus a text summary of the top frames."""
    out.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    duration = str(max(1, round(seconds)))
    runs = []
    # With several gateway workers this also samples the idle parent; its file stays small.
    procs = [
        (name, proc)
        for name, pattern in (("gateway", "-m gateway"), ("feedback", "services.feedback"))
        for proc in suite.processes(pattern)
    ]
    for name, proc in procs:
        for fmt, ext in (("flamegraph", "svg"), ("raw", "txt")):
            path = out / f"{name}-{proc.pid}.{ext}"
            argv = [spy, "record", "-r", "200", "-d", duration, "--nonblocking", "-f", fmt]
            runs.append(
                (
                    name,
                    path,
                    subprocess.Popen(
                        [*argv, "-o", str(path), "--pid", str(proc.pid)],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    ),
                )
            )
    time.sleep(0.5)
    load = _wrk(suite, "POST", 64, seconds, token)
    summary: dict[str, Any] = {"load": load, "top": {}}
    lines = []
    for _, path, run in runs:
        run.wait(timeout=60)
        if path.suffix == ".txt" and path.exists():
            top = _top_frames(path)
            summary["top"][path.stem] = top
            lines.append(f"== {path.stem} (own samples, POST c=64 at {load['rps']:.0f} req/s)")
            lines += [f"{share:5.1f}%  {frame}" for share, frame in top]
    (out / "top-frames.txt").write_text("\n".join(lines) + "\n")
    return summary


def _wrk(suite: Suite, method: str, connections: int, seconds: float, token: str) -> dict[str, Any]:
    threads = max(1, min(2, connections))
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "-s",
        str(HERE / "feedback.lua"),
        suite.base,
    ]
    env = {**os.environ, "BENCH_TOKEN": token, "BENCH_METHOD": method}
    groups = {name: suite.processes(name) for name in SERVER}
    cpu0 = {name: suite.cpu_seconds(procs) for name, procs in groups.items()}
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
    cpu = {name: suite.cpu_seconds(procs) - cpu0[name] for name, procs in groups.items()}
    line = next(x for x in out.splitlines() if x.startswith("BENCH_JSON "))
    r: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["cpu_us_per_request"] = sum(cpu.values()) / max(1, r["requests"]) * 1e6
    # Per process: "gateway" (all its workers), "services.feedback", "redis-server".
    r["cpu_us_per_request_by_process"] = {
        name: used / max(1, r["requests"]) * 1e6 for name, used in cpu.items()
    }
    r["errors"] += r.pop("non2xx")
    return r


async def _open_loop(suite: Suite, token: str, rate: float, seconds: float) -> dict[str, Any]:
    """Sends at a fixed rate whatever the answers; latency counts from the intended send
    time, so stalls are not hidden (closed-loop generators under-count them)."""
    body = {"target": {"kind": "TARGET_KIND_ANOMALY", "id": "open"}, "verdict": "VERDICT_CONFIRMED"}
    headers = {"Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    errors = 0
    total = int(rate * seconds)
    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()

        async def one(i: int) -> None:
            nonlocal errors
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            try:
                async with session.post(
                    f"{suite.base}/api/v1/aiops/feedback", json=body, headers=headers
                ) as resp:
                    await resp.read()
                    ok = resp.status == 201
            except aiohttp.ClientError:
                ok = False
            latencies.append(time.perf_counter() - due)
            errors += not ok

        await asyncio.gather(*(one(i) for i in range(total)))
        elapsed = time.perf_counter() - start
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000

    return {
        "requests": total,
        "rate": rate,
        "achieved_rps": total / elapsed,
        "errors": errors,
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "max_ms": latencies[-1] * 1000,
    }


async def _grpc_direct(suite: Suite, concurrency: int, seconds: float) -> dict[str, Any]:
    procs = suite.processes("services.feedback", "redis-server")
    cpu0 = suite.cpu_seconds(procs)
    request = fb_svc.SubmitFeedbackRequest(
        feedback=fb.Feedback(
            target=fb.Target(kind=fb.TARGET_KIND_ANOMALY, id="direct"), verdict=fb.VERDICT_CONFIRMED
        )
    )
    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(suite.feedback_addr) as channel:
        stub = fb_grpc.FeedbackServiceStub(channel)
        end = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                try:
                    await stub.SubmitFeedback(request, timeout=5)
                except grpc.aio.AioRpcError:
                    errors += 1  # counted, not fatal: the figure says how many
                latencies.append(time.perf_counter() - t0)

        begin = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - begin
    cpu = suite.cpu_seconds(procs) - cpu0
    latencies.sort()
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "cpu_us_per_request": cpu / len(latencies) * 1e6,
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rate", type=float, default=2000.0, help="open-loop requests per second")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument(
        "--profile",
        type=Path,
        help="also profile gateway and feedback with py-spy under POST c=64, into this folder",
    )
    ap.add_argument("--no-levers", action="store_true", help="skip the lever comparison")
    args = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench_feedback: wrk not found (Debian package `wrk`)", file=sys.stderr)
        return 2
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}, "closed_loop": []}
    with Suite() as suite:
        token = suite.token("operator")
        _wrk(suite, "POST", 16, 2, token)  # warm-up: connections, caches, JIT-free paths
        for method in ("POST", "GET"):
            for c in (1, 16, 64, 256):
                r = _wrk(suite, method, c, args.seconds, token)
                results["closed_loop"].append({"method": method, "concurrency": c, **r})
        results["open_loop"] = asyncio.run(_open_loop(suite, token, args.rate, args.seconds))
        results["grpc_direct"] = asyncio.run(_grpc_direct(suite, 64, args.seconds))
        if args.profile:
            results["profile"] = _profile(suite, token, args.seconds, args.profile)
    print("Feedback through the gateway (wrk closed loop)")
    print(
        f"{'method':6} {'conc':>5} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'errors':>7} {'cpu us/req':>10}  (gateway / feedback / redis)"
    )
    for r in results["closed_loop"]:
        per = r["cpu_us_per_request_by_process"]
        print(
            f"{r['method']:6} {r['concurrency']:>5} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} "
            f"{r['p95_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['max_ms']:>8.1f} {r['errors']:>7} "
            f"{r['cpu_us_per_request']:>10.0f}  ({per['gateway']:.0f} / "
            f"{per['services.feedback']:.0f} / {per['redis-server']:.0f})"
        )
    o = results["open_loop"]
    print(
        f"open loop POST at {o['rate']:.0f}/s: achieved {o['achieved_rps']:.0f}/s, p50 "
        f"{o['p50_ms']:.2f} ms, p95 {o['p95_ms']:.2f} ms, p99 {o['p99_ms']:.2f} ms, "
        f"max {o['max_ms']:.1f} ms, errors {o['errors']}"
    )
    g = results["grpc_direct"]
    print(
        f"gRPC SubmitFeedback direct, concurrency 64 (Python client): {g['rps']:.0f} req/s, "
        f"p50 {g['p50_ms']:.2f} ms, p99 {g['p99_ms']:.2f} ms, "
        f"server cpu {g['cpu_us_per_request']:.0f} us/req, errors {g['errors']}"
    )
    if args.profile:
        print(f"profiles (SVG flame graphs, collapsed stacks, top frames): {args.profile}")
    # The levers, each against the default in the same run: POST at concurrency 64.
    results["levers"] = []
    levers: tuple[tuple[str, dict[str, str]], ...] = (
        ("default (1 worker, coalescing)", {}),
        ("2 gateway workers", {"AIOPS_GATEWAY_WORKERS": "2"}),
        ("no coalescing", {"AIOPS_GATEWAY_COALESCE": "false"}),
        ("every request traced", {"AIOPS_TRACE_SAMPLE_RATIO": "1"}),
        ("access log on (INFO)", {"AIOPS_LOG_LEVEL": "INFO"}),
    )
    for label, extra in () if args.no_levers else levers:
        with Suite(**extra) as suite:
            token = suite.token("operator")
            _wrk(suite, "POST", 16, 2, token)
            results["levers"].append(
                {"config": label, **_wrk(suite, "POST", 64, args.seconds, token)}
            )
    print("POST at concurrency 64, each lever against the default in the same run")
    for r in results["levers"]:
        per = r["cpu_us_per_request_by_process"]
        print(
            f"  {r['config']:32} {r['rps']:>7.0f} req/s  p99 {r['p99_ms']:>7.2f} ms  "
            f"cpu {r['cpu_us_per_request']:>5.0f} us/req ({per['gateway']:.0f} / "
            f"{per['services.feedback']:.0f} / {per['redis-server']:.0f})  errors {r['errors']}"
        )
    print("BENCH_JSON " + json.dumps(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
