"""Clients that cancel ScorePoints streams mid-flight never take the server down.

Incident: grpc.aio leaves an async-generator handler open when the client cancels while the
server is sending; closing it later, after the call was torn down, made the access log's
`context.peer()` crash the process with SIGSEGV (OpenTelemetry logged "Failed to detach
context" just before). The server runs in a subprocess so a crash shows as its exit code.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from aiops.anomaly.v1 import anomaly_service_pb2 as an_svc

from services.kit import local_servers
from tests import helpers
from tests.anomaly.conftest import anomaly_env

ROOT = Path(__file__).resolve().parents[2]
T0_MICROS = 1_700_000_000_000_000
STEP_MICROS = 60_000_000
METHOD = "/aiops.anomaly.v1.AnomalyService/ScorePoints"
CHURN_SECONDS = 6.0
STREAMS_AT_ONCE = 8


def _batch(tag: str, index: int, series: int = 4, per: int = 50) -> an_svc.ScorePointsRequest:
    req = an_svc.ScorePointsRequest(batch_id=str(index))
    times = [T0_MICROS + STEP_MICROS * (index * per + i) for i in range(per)]
    for k in range(series):
        req.series_batches.add(
            series=f"cancel_{tag}_{k}",
            sample_time_micros=times,
            values=[100.0 + (i % 7) * 0.1 for i in range(per)],
        )
    return req


def _score_points(channel: grpc.aio.Channel) -> grpc.aio.StreamStreamMultiCallable[Any, Any]:
    return channel.stream_stream(
        METHOD,
        request_serializer=an_svc.ScorePointsRequest.SerializeToString,
        response_deserializer=an_svc.ScorePointsResponse.FromString,
    )


async def _cancelled_stream(channel: grpc.aio.Channel, rng: random.Random, n: int) -> None:
    """One stream that is abandoned at a random moment: after some writes, with or without
    reading the answers, sometimes after half-closing, always without awaiting the status."""
    call = _score_points(channel)(None, timeout=10)
    tag = f"{n}_{rng.randrange(1 << 30)}"
    try:
        for i in range(rng.randint(1, 5)):
            await call.write(_batch(tag, i))
            if rng.random() < 0.5:
                await call.read()
        if rng.random() < 0.3:
            await call.done_writing()
        await asyncio.sleep(rng.random() * 0.005)
    except grpc.aio.AioRpcError:
        pass
    finally:
        call.cancel()


async def _churn(port: int, proc: asyncio.subprocess.Process) -> int:
    """Opens and cancels streams until the time is up or the server dies; also closes whole
    channels under running streams. Returns how many streams were cancelled."""
    rng = random.Random(7)
    streams = 0
    end = time.monotonic() + CHURN_SECONDS
    while time.monotonic() < end and proc.returncode is None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            tasks = [
                asyncio.create_task(_cancelled_stream(channel, rng, streams + i))
                for i in range(STREAMS_AT_ONCE)
            ]
            if rng.random() < 0.3:
                # Leaving the block closes the channel while the streams are still running.
                await asyncio.sleep(rng.random() * 0.01)
                for task in tasks:
                    task.cancel()
            # A write on a call whose channel closed under it may never finish on the client.
            await asyncio.wait(tasks, timeout=5)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        streams += STREAMS_AT_ONCE
    return streams


async def test_server_survives_clients_cancelling_score_streams(
    postgres_url: str, pg_schema: str, tmp_path: Path
) -> None:
    port = local_servers.free_port()
    env = {
        **os.environ,
        # INFO: the access log reads the peer of every RPC, which is what crashed.
        **anomaly_env(postgres_url, pg_schema, AIOPS_LOG_LEVEL="INFO"),
        "AIOPS_ANOMALY_GRPC_PORT": str(port),
        "AIOPS_SHUTDOWN_DRAIN_SECONDS": "0",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "gen")]),
    }
    log_path = tmp_path / "anomaly.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.anomaly",
            env=env,
            cwd=ROOT,
            stdout=log_file,
            stderr=log_file,
        )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:

            async def serving() -> None:
                assert proc.returncode is None, f"server exited with {proc.returncode}"
                await helpers.assert_serving(channel, "aiops.anomaly.v1.AnomalyService")

            await helpers.eventually(serving, timeout=60)
            streams = await _churn(port, proc)
            assert proc.returncode is None, f"server exited with {proc.returncode}"
            assert streams >= 10 * STREAMS_AT_ONCE
            assert proc.returncode is None, f"server exited with {proc.returncode}"
            await serving()
            call = _score_points(channel)(None, timeout=10)
            await call.write(_batch("after", 0))
            await call.done_writing()
            responses = [r async for r in call]
            assert [r.batch_id for r in responses] == ["0"]
            assert await call.code() == grpc.StatusCode.OK
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
    log_text = log_path.read_text(errors="replace")
    assert "Failed to detach context" not in log_text
    assert proc.returncode == 0, log_text[-2000:]
