"""ScorePoints end to end over gRPC: 1,000-point batches streamed to a real anomaly server
process (its own Postgres), reporting points/s and per-batch latency (p50/p99).

Run: ``python bench/bench_anomaly.py [--batches N] [--series K] [--workers 0 2]``.
Prints a table and one JSON line. Uses AIOPS_DATABASE_URL when set, else starts a local
Postgres in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from aiops.anomaly.v1 import anomaly_pb2 as an  # noqa: E402
from aiops.anomaly.v1 import anomaly_service_pb2 as an_svc  # noqa: E402
from aiops.anomaly.v1 import anomaly_service_pb2_grpc as an_grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from services.kit import local_servers  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _requests(batches: int, series: int, size: int) -> list[an_svc.ScorePointsRequest]:
    """`batches` requests of `size` points, each batch covering `series` series in turn."""
    rng = np.random.default_rng(0)
    per = size // series
    out = []
    for b in range(batches):
        req = an_svc.ScorePointsRequest(batch_id=str(b))
        for k in range(series):
            t0 = 1_700_000_000 + 60 * b * per
            values = 100.0 + rng.normal(0.0, 1.0, per)
            for i in range(per):
                o = req.observations.add(series=f"bench_metric_{k}", value=float(values[i]))
                o.sample_time.seconds = t0 + 60 * i
        out.append(req)
    return out


async def _wait_ready(port: int, limit_seconds: float = 90.0) -> None:
    deadline = time.monotonic() + limit_seconds
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            try:
                r = await stub.Check(
                    health_pb2.HealthCheckRequest(service="aiops.anomaly.v1.AnomalyService"),
                    timeout=1.0,
                )
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("anomaly server did not become ready")
            await asyncio.sleep(0.2)


async def _run(
    port: int, requests: list[an_svc.ScorePointsRequest], streams: int
) -> dict[str, float]:
    latencies: list[float] = []
    points = 0
    parts = [requests[i::streams] for i in range(streams)]

    async def one(stub: an_grpc.AnomalyServiceStub, reqs: list[an_svc.ScorePointsRequest]) -> None:
        nonlocal points
        call = stub.ScorePoints()
        for req in reqs:
            start = time.perf_counter()
            await call.write(req)
            resp = await call.read()
            latencies.append(time.perf_counter() - start)
            assert isinstance(resp, an_svc.ScorePointsResponse) and resp.rejected_count == 0
            points += len(resp.scores)
        await call.done_writing()

    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 << 20)]
    ) as ch:
        stub = an_grpc.AnomalyServiceStub(ch)
        # Warm-up batch per stream (series creation, imports, worker start-up).
        warm = [
            an_svc.ScorePointsRequest(observations=[an.Observation(series=f"w{i}", value=1.0)])
            for i in range(streams)
        ]
        for w in warm:
            w.observations[0].sample_time.seconds = 1
            c = stub.ScorePoints()
            await c.write(w)
            await c.read()
            await c.done_writing()
        start = time.perf_counter()
        await asyncio.gather(*(one(stub, p) for p in parts))
        elapsed = time.perf_counter() - start
    lat = np.asarray(latencies) * 1000.0
    return {
        "points": points,
        "seconds": elapsed,
        "points_per_second": points / elapsed,
        "batch_p50_ms": float(np.percentile(lat, 50)),
        "batch_p99_ms": float(np.percentile(lat, 99)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--series", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--streams", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    a = ap.parse_args(argv)
    tmp = tempfile.TemporaryDirectory(prefix="bench-anomaly-")
    db_url = os.environ.get("AIOPS_DATABASE_URL", "")
    pg: local_servers.LocalPostgres | None = None
    if not db_url:
        pg = local_servers.LocalPostgres(Path(tmp.name) / "pg", ephemeral=True)
        pg.start()
        db_url = pg.url
    results = []
    try:
        for workers in a.workers:
            port = _free_port()
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "gen")]),
                "AIOPS_DATABASE_URL": db_url,
                "AIOPS_ANOMALY_DATABASE_SCHEMA": "",
                "AIOPS_ANOMALY_GRPC_PORT": str(port),
                "AIOPS_ANOMALY_METRICS_PORT": "0",
                "AIOPS_BIND_HOST": "127.0.0.1",
                "AIOPS_ANOMALY_SCORING_WORKERS": str(workers),
                "AIOPS_LOG_LEVEL": "WARNING",
                "AIOPS_REMEDIATION_ADDR": "127.0.0.1:1",
                "AIOPS_GRPC_MAX_MESSAGE_BYTES": str(64 << 20),
            }
            proc = subprocess.Popen([sys.executable, "-m", "services.anomaly"], env=env, cwd=ROOT)
            try:
                asyncio.run(_wait_ready(port))
                # Fresh series keys per run so each starts from an empty detector.
                reqs = _requests(a.batches, a.series, a.batch_size)
                for r in reqs:
                    for o in r.observations:
                        o.series = f"{o.series}_w{workers}"
                res = asyncio.run(_run(port, reqs, a.streams))
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            results.append({"scoring_workers": workers, "batch_size": a.batch_size, **res})
    finally:
        if pg is not None:
            pg.close()
        tmp.cleanup()
    header = (
        f"{'workers':>7} {'batch':>6} {'points':>9} {'points/s':>11} {'p50 ms':>8} {'p99 ms':>8}"
    )
    lines = [header]
    for r in results:
        lines.append(
            f"{r['scoring_workers']:>7} {r['batch_size']:>6} {r['points']:>9} "
            f"{r['points_per_second']:>11,.0f} {r['batch_p50_ms']:>8.2f} {r['batch_p99_ms']:>8.2f}"
        )
    sys.stdout.write("ScorePoints over gRPC (target: >= 1,000,000 points/s, p99 < 10 ms)\n")
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.write(json.dumps({"bench": "anomaly_score_points", "results": results}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
