"""Telemetry: ingest throughput into PostgreSQL through `PushPoints`, and the latency of a
one-day `QuerySeries` at a 1-minute step.

The service runs as its own process (`python -m services.telemetry`) against a local
PostgreSQL (or `AIOPS_DATABASE_URL`), on a fresh schema. Requests are built before the
clock starts, so the numbers are the server's and the database's, not the client's.

Run: `python bench/bench_telemetry.py [--points N] [--streams N] [--queries N] [--json F]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

import asyncpg  # noqa: E402
import grpc  # noqa: E402
import psutil  # noqa: E402
from aiops.common.v1 import common_pb2  # noqa: E402
from aiops.telemetry.v1 import telemetry_pb2 as tel  # noqa: E402
from aiops.telemetry.v1 import telemetry_service_pb2 as tel_svc  # noqa: E402
from aiops.telemetry.v1 import telemetry_service_pb2_grpc as tel_grpc  # noqa: E402
from google.protobuf import duration_pb2, timestamp_pb2  # noqa: E402

from services.kit import local_servers  # noqa: E402

BATCH = 5000
TARGET_POINTS_PER_SECOND = 50_000


def _ts(ns: int) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromNanoseconds(ns)
    return out


def _batches(points: int, series: int, end_ns: int, stream: int) -> list[tel_svc.PushPointsRequest]:
    """`points` samples spread over `series` series, one per second going back from the end."""
    out: list[tel_svc.PushPointsRequest] = []
    per_series = points // series
    batch = tel_svc.PushPointsRequest()
    for i in range(per_series):
        when = _ts(end_ns - (per_series - i) * 1_000_000_000)
        for s in range(series):
            batch.samples.append(
                tel.Sample(
                    metric="bench_requests",
                    labels={"stream": str(stream), "series": str(s), "env": "bench"},
                    sample_time=when,
                    value=float(i % 100),
                    unit="1/s",
                )
            )
            if len(batch.samples) == BATCH:
                out.append(batch)
                batch = tel_svc.PushPointsRequest()
    if batch.samples:
        out.append(batch)
    return out


async def _push(stub: tel_grpc.TelemetryServiceStub, batches: list[Any]) -> int:
    async def gen() -> Any:
        for b in batches:
            yield b

    reply = await stub.PushPoints(gen(), timeout=600)
    return int(reply.accepted_count)


def _cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def _server_processes(pid: int, pg_port: int) -> list[psutil.Process]:
    """The telemetry process, and the PostgreSQL postmaster listening on `pg_port` with
    its backends."""
    procs = [psutil.Process(pid)]
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if cmd and cmd[0].endswith("postgres") and str(pg_port) in cmd:
            procs += [proc, *proc.children(recursive=True)]
    return procs


async def _ingest(
    stub: tel_grpc.TelemetryServiceStub, points: int, streams: int, procs: list[psutil.Process]
) -> dict[str, Any]:
    end_ns = time.time_ns() - 60 * 1_000_000_000
    work = [_batches(points // streams, 20, end_ns, s) for s in range(streams)]
    cpu = _cpu_seconds(procs)
    begin = time.perf_counter()
    accepted = sum(await asyncio.gather(*(_push(stub, w) for w in work)))
    elapsed = time.perf_counter() - begin
    cpu = _cpu_seconds(procs) - cpu
    return {
        "points": accepted,
        "seconds": round(elapsed, 3),
        "points_per_second": round(accepted / elapsed),
        "server_cpu_seconds": round(cpu, 3),
        # What two otherwise idle cores could sustain, from the CPU the server used.
        "points_per_cpu_second": round(accepted / cpu) if cpu > 0 else None,
        "load_average_1m": os.getloadavg()[0],
        "streams": streams,
        "batch_size": BATCH,
    }


async def _day_of_data(stub: tel_grpc.TelemetryServiceStub) -> tuple[int, int]:
    """One series with a point every 15 s over the last 24 h (the collector's cadence)."""
    end_ns = time.time_ns()
    start_ns = end_ns - 86400 * 1_000_000_000
    samples = [
        tel.Sample(
            metric="bench_latency_ms",
            labels={"route": "/api/v1/aiops/feedback"},
            sample_time=_ts(start_ns + i * 15 * 1_000_000_000),
            value=100.0 + (i % 50),
        )
        for i in range(86400 // 15)
    ]
    await _push(stub, [tel_svc.PushPointsRequest(samples=samples)])
    return start_ns, end_ns


async def _queries(stub: tel_grpc.TelemetryServiceStub, n: int) -> dict[str, Any]:
    start_ns, end_ns = await _day_of_data(stub)
    request = tel_svc.QuerySeriesRequest(
        metric="bench_latency_ms",
        time_range=common_pb2.TimeRange(start_time=_ts(start_ns), end_time=_ts(end_ns)),
        step=duration_pb2.Duration(seconds=60),
        aggregation=tel.AGGREGATION_AVG,
    )
    latencies: list[float] = []
    points = 0
    for _ in range(n):
        begin = time.perf_counter()
        reply = await stub.QuerySeries(request, timeout=30)
        latencies.append(time.perf_counter() - begin)
        points = len(reply.series[0].points)
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2)

    return {"queries": n, "points_per_answer": points, "p50_ms": pct(0.5), "p99_ms": pct(0.99)}


async def _run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(url)
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    port, metrics = local_servers.free_port(), local_servers.free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIOPS_")},
        "AIOPS_DATABASE_URL": url,
        "AIOPS_TELEMETRY_DATABASE_SCHEMA": schema,
        "AIOPS_TELEMETRY_GRPC_PORT": str(port),
        "AIOPS_TELEMETRY_METRICS_PORT": str(metrics),
        "AIOPS_TELEMETRY_COLLECTOR_ENABLED": "false",
        "AIOPS_TELEMETRY_FORWARD_ENABLED": "false",
        "AIOPS_LOG_LEVEL": "WARNING",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen'}",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.telemetry", env=env, cwd=ROOT
    )
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}",
            options=[("grpc.max_send_message_length", 64 << 20)],
        ) as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            stub = tel_grpc.TelemetryServiceStub(channel)
            procs = _server_processes(proc.pid, urlsplit(url).port or 5432)
            await _ingest(stub, 20_000, 1, procs)  # warm-up: series created, caches filled
            procs = _server_processes(proc.pid, urlsplit(url).port or 5432)
            ingest = await _ingest(stub, args.points, args.streams, procs)
            query = await _queries(stub, args.queries)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()
    return {"ingest": ingest, "query_one_day_1m_step": query}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--points", type=int, default=400_000)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    url = os.environ.get("AIOPS_DATABASE_URL")
    server: local_servers.LocalPostgres | None = None
    if not url:
        server = local_servers.LocalPostgres(
            Path(tempfile.mkdtemp(prefix="aiops-bench-pg-")), ephemeral=True
        )
        server.start()
        url = server.url
    try:
        results = asyncio.run(_run(url, args))
    finally:
        if server is not None:
            server.close()
    ingest, query = results["ingest"], results["query_one_day_1m_step"]
    rows = [
        ("PushPoints ingest", f"{ingest['points_per_second']:,} points/s",
         f"target >= {TARGET_POINTS_PER_SECOND:,}"),
        ("  points / streams", f"{ingest['points']:,} / {ingest['streams']}",
         f"{ingest['seconds']} s, load average {ingest['load_average_1m']:.1f}"),
        ("  per CPU-second (server+postgres)", f"{ingest['points_per_cpu_second'] or 0:,}",
         f"{ingest['server_cpu_seconds']} CPU-s"),
        ("QuerySeries 1 day @ 1 min p50", f"{query['p50_ms']} ms",
         f"{query['points_per_answer']} points"),
        ("QuerySeries 1 day @ 1 min p99", f"{query['p99_ms']} ms", f"{query['queries']} queries"),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    print(f"{'telemetry':<{width}}  {'result':>22}  note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>22}  {note}")
    results["target_met"] = ingest["points_per_second"] >= TARGET_POINTS_PER_SECOND
    print("BENCH_JSON " + json.dumps({"telemetry": results}))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
