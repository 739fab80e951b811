"""ScorePoints end to end over gRPC: 1,000-point batches streamed to a real anomaly server
process (its own Postgres), reporting points/s, per-batch latency (p50/p99/max) and the
CPU each process used.

Every combination of:
- form: `observations` (one message per point, the original form) or `columns` (one
  `SeriesBatch` per series with packed times and values);
- scoring workers: 0 (inline on the event loop, in slices) or N (a process pool);
- detector: `real` (services/anomaly/detectors.py as it is) or `stub` (a stand-in
  compiled kernel of a few ns per point, bench/stub_detector.py: the ceiling of
  everything else on the path);
- replicas: 1, or N anomaly replicas sharing the series by the consistent-hash ring (as
  deployed to scale out), each stream sending the series one replica owns to it.

The client sends pre-serialised requests through a generic stream call with bytes in and
out, several batches in flight per stream, so the client is not what is measured.

Run: ``python bench/bench_anomaly.py [--batches N] [--series K] [--workers 0 2]
[--forms observations columns] [--detectors real stub] [--replicas 1 2]``.
Prints a table and one ``BENCH_JSON`` line. Uses AIOPS_DATABASE_URL when set, else
starts a local Postgres in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
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
import psutil  # noqa: E402
from aiops.anomaly.v1 import anomaly_service_pb2 as an_svc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from services.kit import local_servers, sharding  # noqa: E402

METHOD = "/aiops.anomaly.v1.AnomalyService/ScorePoints"
T0_MICROS = 1_700_000_000_000_000
STEP_MICROS = 60_000_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keys(series: int, tag: str, ring: sharding.Ring, owner: str) -> list[str]:
    """`series` series keys that `owner` owns on `ring`."""
    keys: list[str] = []
    k = 0
    while len(keys) < series:
        key = f"bench_metric_{k}_{tag}"
        if ring.owner(key) == owner:
            keys.append(key)
        k += 1
    return keys


def _payloads(form: str, batches: int, keys: list[str], size: int) -> list[bytes]:
    """`batches` serialised requests of `size` points, spread over the series `keys`."""
    rng = np.random.default_rng(0)
    per = size // len(keys)
    out = []
    for b in range(batches):
        req = an_svc.ScorePointsRequest(batch_id=str(b))
        times = T0_MICROS + STEP_MICROS * (b * per + np.arange(per, dtype=np.int64))
        for key in keys:
            values = 100.0 + rng.normal(0.0, 1.0, per)
            if form == "columns":
                req.series_batches.add(
                    series=key, sample_time_micros=times.tolist(), values=values.tolist()
                )
                continue
            for t, v in zip(times.tolist(), values.tolist(), strict=True):
                o = req.observations.add(series=key, value=v)
                o.sample_time.seconds, micros = divmod(t, 1_000_000)
                o.sample_time.nanos = micros * 1000
        out.append(req.SerializeToString())
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


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


async def _stream(
    method: grpc.aio.StreamStreamMultiCallable,
    payloads: list[bytes],
    window: int,
    latencies: list[float],
) -> int:
    """Sends `payloads` on one stream with at most `window` in flight; returns points."""
    call = method(timeout=600)
    room = asyncio.Semaphore(window)
    sent: collections.deque[float] = collections.deque()

    async def write() -> None:
        for p in payloads:
            await room.acquire()
            sent.append(time.perf_counter())
            await call.write(p)
        await call.done_writing()

    async def read() -> int:
        points = 0
        for _ in payloads:
            raw = await call.read()
            if not isinstance(raw, bytes):
                raise RuntimeError(f"stream ended early: {await call.code()}")
            latencies.append(time.perf_counter() - sent.popleft())
            room.release()
            resp = an_svc.ScorePointsResponse.FromString(raw)
            if resp.rejected_count:
                raise RuntimeError(f"points rejected: {resp.rejections}")
            points += len(resp.scores) + sum(len(s.scores) for s in resp.series_scores)
        # Wait for the status: closing the channel first would cancel the call.
        if await call.code() != grpc.StatusCode.OK:
            raise RuntimeError(f"stream failed: {await call.code()}")
        return points

    writer = asyncio.create_task(write())
    try:
        return await read()
    finally:
        if not writer.done():
            writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)


async def _run(
    ports: list[int],
    warm: list[list[bytes]],
    payloads: list[list[bytes]],
    window: int,
    mains: list[psutil.Process],
    workers: list[psutil.Process],
) -> dict[str, float]:
    """Runs one stream per entry of `payloads` (each on its own series, so no two streams
    race on one series' time order; stream i to replica i mod len(ports)) after a warm-up
    on other series."""
    options = [
        ("grpc.max_send_message_length", 64 << 20),
        ("grpc.max_receive_message_length", 64 << 20),
    ]
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{p}", options=options) for p in ports]
    try:
        methods = [ch.stream_stream(METHOD) for ch in channels]
        pick = [methods[i % len(methods)] for i in range(len(payloads))]
        # Warm-up on other series (imports, worker start-up, first allocations).
        await asyncio.gather(*(_stream(m, w, 1, []) for m, w in zip(pick, warm, strict=True)))
        latencies: list[float] = []
        me = psutil.Process()
        before = [_cpu(mains), _cpu(workers), _cpu([me])]
        start = time.perf_counter()
        counts = await asyncio.gather(
            *(_stream(m, p, window, latencies) for m, p in zip(pick, payloads, strict=True))
        )
        elapsed = time.perf_counter() - start
        main_cpu, worker_cpu, client_cpu = (
            _cpu(g) - b for g, b in zip((mains, workers, [me]), before, strict=True)
        )
    finally:
        for ch in channels:
            await ch.close()
    points = sum(counts)
    lat = np.asarray(latencies) * 1000.0
    return {
        "points": points,
        "seconds": elapsed,
        "points_per_second": points / elapsed,
        "batch_p50_ms": float(np.percentile(lat, 50)),
        "batch_p99_ms": float(np.percentile(lat, 99)),
        "batch_max_ms": float(lat.max()),
        # CPU as a share of one core over the run (summed over replicas), and per point.
        "server_main_cpu": main_cpu / elapsed,
        "server_workers_cpu": worker_cpu / elapsed,
        "client_cpu": client_cpu / elapsed,
        "server_cpu_us_per_point": (main_cpu + worker_cpu) / points * 1e6,
    }


def _serve(
    detector: str, workers: int, port: int, db_url: str, replicas: list[str]
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "gen")]),
        "AIOPS_DATABASE_URL": db_url,
        "AIOPS_ANOMALY_DATABASE_SCHEMA": "",
        "AIOPS_ANOMALY_GRPC_PORT": str(port),
        "AIOPS_ANOMALY_METRICS_PORT": "0",
        "AIOPS_BIND_HOST": "127.0.0.1",
        "AIOPS_ANOMALY_SCORING_WORKERS": str(workers),
        "AIOPS_LOG_LEVEL": "ERROR",
        "AIOPS_REMEDIATION_ADDR": "127.0.0.1:1",
        "AIOPS_FEEDBACK_ADDR": "127.0.0.1:1",
        "AIOPS_GRPC_MAX_MESSAGE_BYTES": str(64 << 20),
        "AIOPS_ANOMALY_REPLICAS": ",".join(replicas) if len(replicas) > 1 else "",
        "AIOPS_ANOMALY_REPLICA_SELF": f"127.0.0.1:{port}" if len(replicas) > 1 else "",
    }
    module = "bench.stub_detector" if detector == "stub" else "services.anomaly"
    return subprocess.Popen([sys.executable, "-m", module], env=env, cwd=ROOT)


def _runs(
    a: argparse.Namespace, detector: str, workers: int, replicas: int, db_url: str
) -> list[dict[str, object]]:
    """Every form against `replicas` fresh server processes of one configuration."""
    ports = [_free_port() for _ in range(replicas)]
    names = [f"127.0.0.1:{p}" for p in ports]
    ring = sharding.Ring(names)
    procs = [_serve(detector, workers, p, db_url, names) for p in ports]
    results: list[dict[str, object]] = []
    try:
        for p in ports:
            asyncio.run(_wait_ready(p))
        mains = [psutil.Process(proc.pid) for proc in procs]
        pool = [c for m in mains for c in m.children(recursive=True)]
        streams = max(a.streams, replicas)
        for form in a.forms:
            if replicas > 1 and form != "columns":
                continue
            n = a.batches if form == "columns" else a.observation_batches
            # Fresh series keys per run so each starts from an empty detector.
            tag = f"{detector}_{workers}_{replicas}_{form}"

            def load(pre: str, count: int, form: str = form, tag: str = tag) -> list[list[bytes]]:
                return [
                    _payloads(
                        form,
                        count,
                        _keys(a.series, f"{pre}{tag}_{i}", ring, names[i % replicas]),
                        a.batch_size,
                    )
                    for i in range(streams)
                ]

            warm, payloads = load("warm_", 4), load("", n // streams)
            try:
                res = asyncio.run(_run(ports, warm, payloads, a.window, mains, pool))
            except (grpc.aio.AioRpcError, RuntimeError) as exc:
                sys.stderr.write(f"{tag}: failed: {exc!r}\n")
                continue
            results.append(
                {
                    "detector": detector,
                    "scoring_workers": workers,
                    "replicas": replicas,
                    "form": form,
                    "batch_size": a.batch_size,
                    "series_per_batch": a.series,
                    "streams": streams,
                    "window": a.window,
                    **res,
                }
            )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", type=int, default=2000, help="batches per columnar run")
    ap.add_argument(
        "--observation-batches", type=int, default=200, help="batches per observations run"
    )
    ap.add_argument("--series", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--streams", type=int, default=2)
    ap.add_argument("--window", type=int, default=2, help="batches in flight per stream")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--forms", nargs="+", default=["observations", "columns"])
    ap.add_argument("--detectors", nargs="+", default=["real", "stub"])
    ap.add_argument(
        "--replicas",
        type=int,
        nargs="+",
        default=[1, 2],
        help="anomaly replicas (runs with more than one: real detector, no scoring workers, "
        "columnar form only)",
    )
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
        for detector in a.detectors:
            for workers in a.workers:
                for replicas in a.replicas:
                    # More replicas: the real detector, on the event loop, columnar form.
                    if replicas > 1 and (workers or detector != "real"):
                        continue
                    results.extend(_runs(a, detector, workers, replicas, db_url))
    finally:
        if pg is not None:
            pg.close()
        tmp.cleanup()
    header = (
        f"{'detector':>8} {'workers':>7} {'replicas':>8} {'form':>12} {'points':>8} "
        f"{'points/s':>11} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'srv cpu':>7} {'wrk cpu':>7} "
        f"{'cli cpu':>7} {'srv us/pt':>9}"
    )
    lines = [header]
    for r in results:
        lines.append(
            f"{r['detector']:>8} {r['scoring_workers']:>7} {r['replicas']:>8} {r['form']:>12} "
            f"{r['points']:>8} "
            f"{r['points_per_second']:>11,.0f} {r['batch_p50_ms']:>7.2f} "
            f"{r['batch_p99_ms']:>7.2f} {r['batch_max_ms']:>7.2f} "
            f"{r['server_main_cpu']:>7.0%} {r['server_workers_cpu']:>7.0%} "
            f"{r['client_cpu']:>7.0%} {r['server_cpu_us_per_point']:>9.2f}"
        )
    sys.stdout.write(
        f"ScorePoints over gRPC, {a.batch_size}-point batches of {a.series} series, "
        f"at least {a.streams} streams x {a.window} in flight "
        "(target: >= 1,000,000 points/s, p99 < 10 ms)\n"
        "cpu columns: share of one core (server main processes summed over replicas, their "
        "scoring workers, client)\n"
    )
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.write("BENCH_JSON " + json.dumps({"results": results}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
