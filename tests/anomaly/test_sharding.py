"""Scale-out: consistent hashing of series over replicas, and a killed replica's series
resuming from the Postgres checkpoint."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import asyncpg
import grpc
import numpy as np
from aiops.anomaly.v1 import anomaly_pb2 as an
from aiops.anomaly.v1 import anomaly_service_pb2 as an_svc
from aiops.anomaly.v1 import anomaly_service_pb2_grpc as an_grpc

from services.anomaly import detectors
from services.kit import sharding
from tests import helpers
from tests.anomaly.conftest import StartAnomaly, anomaly_env
from tests.anomaly.test_scoring import STEP, T0, obs, score_all

ROOT = Path(__file__).resolve().parents[2]


def test_ring_is_stable_and_moves_few_keys_when_a_replica_joins() -> None:
    keys = [f"metric_{i}" for i in range(3000)]
    two = sharding.Ring(["a:1", "b:1"])
    three = sharding.Ring(["a:1", "b:1", "c:1"])
    owners2 = [two.owner(k) for k in keys]
    assert owners2 == [sharding.Ring(["b:1", "a:1"]).owner(k) for k in keys]
    share = owners2.count("a:1") / len(keys)
    assert 0.4 < share < 0.6
    moved = sum(o2 != three.owner(k) for k, o2 in zip(keys, owners2, strict=True))
    assert moved / len(keys) < 0.45  # about a third move, all of them to the new replica
    assert all(
        three.owner(k) == "c:1" for k, o2 in zip(keys, owners2, strict=True) if three.owner(k) != o2
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _values(key: str, n: int) -> list[float]:
    seed = sum(key.encode())
    return (100.0 + np.random.default_rng(seed).normal(0.0, 1.0, n)).tolist()


def _request(keys: list[str], start: int, n: int) -> an_svc.ScorePointsRequest:
    req = an_svc.ScorePointsRequest()
    for k in keys:
        for i, v in enumerate(_values(k, start + n)[start:]):
            req.observations.append(obs(k, T0 + STEP * (start + i), v))
    return req


async def test_two_replicas_split_series_and_a_killed_one_resumes_from_checkpoint(
    start_anomaly: StartAnomaly, postgres_url: str, pg_schema: str
) -> None:
    port_a = _free_port()
    replicas = {"AIOPS_ANOMALY_REPLICAS": "a,b", "AIOPS_ANOMALY_CHECKPOINT_INTERVAL_SECONDS": "0.1"}
    keys = [f"svc_{i}" for i in range(12)]
    ring = sharding.Ring(["a", "b"])
    mine = {r: [k for k in keys if ring.owner(k) == r] for r in ("a", "b")}
    assert mine["a"] and mine["b"]
    env = {
        **os.environ,
        **anomaly_env(postgres_url, pg_schema, **replicas),
        "AIOPS_ANOMALY_REPLICA_SELF": "a",
        "AIOPS_ANOMALY_GRPC_PORT": str(port_a),
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "gen")]),
        "AIOPS_LOG_LEVEL": "WARNING",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.anomaly", env=env, cwd=ROOT
    )
    try:
        async with (
            start_anomaly(**replicas, AIOPS_ANOMALY_REPLICA_SELF="b") as b,
            grpc.aio.insecure_channel(f"127.0.0.1:{port_a}") as cha,
            grpc.aio.insecure_channel(f"127.0.0.1:{b.port}") as chb,
        ):
            await helpers.eventually(
                lambda: helpers.assert_serving(cha, "aiops.anomaly.v1.AnomalyService"), timeout=90
            )
            stubs = {"a": an_grpc.AnomalyServiceStub(cha), "b": an_grpc.AnomalyServiceStub(chb)}
            # Each replica scores its own series and turns the others' away.
            for r in ("a", "b"):
                (resp,) = await score_all(stubs[r], [_request(keys, 0, 300)])
                owned = [
                    o.series
                    for o, s in zip(_request(keys, 0, 300).observations, resp.scores, strict=True)
                    if s.reject_reason == 0
                ]
                assert set(owned) == set(mine[r])
                assert {c.reason for c in resp.rejections} == {an.SCORE_REJECT_REASON_NOT_OWNER}

            async def checkpointed() -> None:
                conn = await asyncpg.connect(
                    postgres_url, server_settings={"search_path": pg_schema}
                )
                try:
                    rows = await conn.fetch("SELECT series, state FROM anomaly_checkpoints")
                finally:
                    await conn.close()
                got = {r["series"]: json.loads(r["state"]) for r in rows}
                assert set(mine["a"]) <= set(got)
                assert all(
                    got[k]["detector"]["scalars"] and got[k]["last_time"] == T0 + STEP * 299
                    for k in mine["a"]
                )

            await helpers.eventually(checkpointed)
            proc.send_signal(signal.SIGKILL)  # no final checkpoint: only the periodic ones
            await proc.wait()
        # Replica a comes back (in-process this time) and resumes from the checkpoint.
        async with (
            start_anomaly(**replicas, AIOPS_ANOMALY_REPLICA_SELF="a") as a2,
            grpc.aio.insecure_channel(f"127.0.0.1:{a2.port}") as ch,
        ):
            stub = an_grpc.AnomalyServiceStub(ch)
            (resp,) = await score_all(stub, [_request(mine["a"], 300, 100)])
            assert resp.rejected_count == 0
            key = mine["a"][0]
            ref = detectors.SeriesDetector()
            ref.score_batch(T0 + STEP * np.arange(300.0), np.asarray(_values(key, 300)))
            ref = detectors.SeriesDetector.from_state(json.loads(json.dumps(ref.to_state())))
            expected = ref.score_batch(
                T0 + STEP * np.arange(300.0, 400.0), np.asarray(_values(key, 400)[300:])
            )
            got = [s.score for s in resp.scores[:100]]
            np.testing.assert_array_equal(np.asarray(got), expected)
            fresh = detectors.SeriesDetector().score_batch(
                T0 + STEP * np.arange(300.0, 400.0), np.asarray(_values(key, 400)[300:])
            )
            assert not np.array_equal(np.asarray(got), fresh)
            # The resumed series remembers its last time: an old point is refused.
            stale = an_svc.ScorePointsRequest(observations=[obs(key, T0, 1.0)])
            (resp,) = await score_all(stub, [stale])
            assert resp.scores[0].reject_reason == an.SCORE_REJECT_REASON_NON_MONOTONIC_TIME
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
