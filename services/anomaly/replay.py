"""Feedback replay on the NAB DEV series: do thresholds that learn from feedback cut false
alarms without costing detections?

`python -m services.anomaly.replay [--nab ../shared/datasets/nab] [--tools ../shared/tools]`

Starts real Redis and Postgres (or uses AIOPS_REDIS_URL / AIOPS_DATABASE_URL), and the
feedback and anomaly services in this process. Pass 1 streams every series through
ScorePoints with no feedback and picks the base threshold NAB's standard profile likes best.
Pass 2 streams them again (fresh series state) at that base while a simulated operator
marks every new anomaly true (its first point lies in a labelled window) or false, through
the feedback service (SubmitFeedback) and the anomaly service's ApplyFeedback, the same
path the scheduled feedback pull takes. Reports false alarms per 10,000 points and the NAB
standard score before and after, as a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import math
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
import grpc
import numpy as np
from aiops.anomaly.v1 import anomaly_service_pb2 as an_svc
from aiops.anomaly.v1 import anomaly_service_pb2_grpc as an_grpc
from aiops.feedback.v1 import feedback_pb2 as fb
from aiops.feedback.v1 import feedback_service_pb2 as fb_svc
from aiops.feedback.v1 import feedback_service_pb2_grpc as fb_grpc

from services.anomaly import server
from services.anomaly.settings import AnomalySettings
from services.feedback import server as feedback_server
from services.feedback.settings import FeedbackSettings
from services.kit import local_servers, settings

BATCH = 50


@dataclass
class Series:
    name: str
    times: list[float]
    values: list[float]
    in_window: np.ndarray  # bool per row
    layout: Any


@dataclass
class PassResult:
    detections: list[np.ndarray]
    scores: list[np.ndarray]
    feedback: int = 0
    false_feedback: int = 0


def _load_tools(tools: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("nab_score", tools / "nab_score.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {tools / 'nab_score.py'}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["nab_score"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _epoch(text: str) -> float:
    ts = datetime.fromisoformat(text.strip())
    return (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()


def load(nab: Path, tools: ModuleType) -> tuple[Any, list[Series]]:
    labels = tools.load_labels(str(nab / "labels" / "combined_windows.json"))
    corpus, values = tools.build_corpus(str(nab / "data"), labels)
    out = []
    for lay in corpus.layouts:
        times: list[float] = []
        for text in lay.timestamps:
            t = _epoch(text)
            # The service wants strictly increasing times; a repeated stamp (DST) moves on
            # by a millisecond.
            times.append(t if not times or t > times[-1] else times[-1] + 1e-3)
        out.append(Series(lay.name, times, values[lay.name].tolist(), lay.window_of_row >= 0, lay))
    return corpus, out


def _request(key: str, s: Series, a: int, b: int) -> an_svc.ScorePointsRequest:
    req = an_svc.ScorePointsRequest()
    for t, v in zip(s.times[a:b], s.values[a:b], strict=True):
        o = req.observations.add(series=key, value=v)
        o.sample_time.FromNanoseconds(round(t * 1e9))
    return req


async def run_pass(
    stub: an_grpc.AnomalyServiceStub,
    feedback: fb_grpc.FeedbackServiceStub | None,
    series: Sequence[Series],
    tag: str,
) -> PassResult:
    result = PassResult([], [])
    for s in series:
        key = f"{tag}:{s.name}"
        det = np.zeros(len(s.values), dtype=bool)
        sc = np.zeros(len(s.values))
        call: Any = stub.ScorePoints()  # type: ignore[call-arg]
        for a in range(0, len(s.values), BATCH):
            b = min(a + BATCH, len(s.values))
            await call.write(_request(key, s, a, b))
            resp = await call.read()
            assert isinstance(resp, an_svc.ScorePointsResponse)
            if resp.rejected_count:
                raise SystemExit(f"{s.name}: {resp.rejected_count} points rejected")
            opened_at: dict[str, int] = {}
            for i, p in enumerate(resp.scores):
                det[a + i] = p.anomalous
                sc[a + i] = p.score
                if p.anomaly and p.anomaly not in opened_at:
                    opened_at[p.anomaly] = a + i
            if feedback is None or not resp.opened_anomalies:
                continue
            stored = []
            for name in resp.opened_anomalies:
                truth = bool(s.in_window[opened_at[name]])
                result.feedback += 1
                result.false_feedback += not truth
                verdict = fb.VERDICT_CONFIRMED if truth else fb.VERDICT_FALSE_POSITIVE
                got = await feedback.SubmitFeedback(  # type: ignore[misc]
                    fb_svc.SubmitFeedbackRequest(
                        feedback=fb.Feedback(
                            target=fb.Target(kind=fb.TARGET_KIND_ANOMALY, id=name),
                            verdict=verdict,
                            series=key,
                            detector="ensemble",
                        )
                    ),
                    timeout=10,
                )
                stored.append(got.feedback)
            await stub.ApplyFeedback(  # type: ignore[misc]
                an_svc.ApplyFeedbackRequest(feedback=stored), timeout=10
            )
        await call.done_writing()
        result.detections.append(det)
        result.scores.append(sc)
    return result


def summarise(tools: ModuleType, corpus: Any, detections: Sequence[np.ndarray]) -> dict[str, float]:
    prof = tools.PROFILES["standard"]
    flat = corpus.gather_scores([d.astype(np.float64) for d in detections])
    raw, per_file = tools.score_at(corpus, flat, prof, 0.5)
    rows = sum(f["rows_scored"] for f in per_file)
    fp_rows = sum(f["fp_rows"] for f in per_file)
    return {
        "standard": tools.normalise(raw, corpus, prof),
        "false_alarms": fp_rows,
        "false_alarms_per_10k": 1e4 * fp_rows / rows,
        "alarms": int(flat.sum()),
        "windows_detected": sum(f["windows_detected"] for f in per_file),
        "rows": rows,
    }


@contextlib.asynccontextmanager
async def services(
    redis_url: str,
    db_url: str,
    threshold: float,
    step: float,
    confirm_step: float = 0.0,
    kind_signals: int = 0,
) -> AsyncIterator[tuple[an_grpc.AnomalyServiceStub, fb_grpc.FeedbackServiceStub]]:
    schema = f"replay_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    base = {"AIOPS_BIND_HOST": "127.0.0.1", "AIOPS_LOG_LEVEL": "WARNING"}
    fb_settings = FeedbackSettings.from_env(
        {
            **base,
            "AIOPS_REDIS_URL": redis_url,
            "AIOPS_FEEDBACK_KEY_PREFIX": f"{schema}:",
            "AIOPS_FEEDBACK_GRPC_PORT": "0",
            "AIOPS_FEEDBACK_METRICS_PORT": "0",
        }
    )
    try:
        async with feedback_server.running(fb_settings) as fb_running:
            an_settings = AnomalySettings.from_env(
                {
                    **base,
                    "AIOPS_DATABASE_URL": db_url,
                    "AIOPS_ANOMALY_DATABASE_SCHEMA": schema,
                    "AIOPS_ANOMALY_GRPC_PORT": "0",
                    "AIOPS_ANOMALY_METRICS_PORT": "0",
                    "AIOPS_FEEDBACK_ADDR": f"127.0.0.1:{fb_running.port}",
                    "AIOPS_REMEDIATION_ADDR": "127.0.0.1:1",
                    "AIOPS_ANOMALY_FEEDBACK_POLL_SECONDS": "0",
                    "AIOPS_ANOMALY_SCORING_WORKERS": "0",
                    "AIOPS_ANOMALY_DRIFT_WORKERS": "0",
                    "AIOPS_ANOMALY_DRIFT_INTERVAL_SECONDS": "3600",
                    "AIOPS_ANOMALY_THRESHOLD": repr(threshold),
                    "AIOPS_ANOMALY_THRESHOLD_MAX": "1",
                    "AIOPS_ANOMALY_OFFSET_STEP": repr(step),
                    "AIOPS_ANOMALY_OFFSET_CONFIRM_STEP": repr(confirm_step),
                    "AIOPS_ANOMALY_ALARM_KIND_SIGNALS": str(kind_signals),
                    "AIOPS_ANOMALY_CLOSE_AFTER_POINTS": "1",
                }
            )
            async with (
                server.running(an_settings) as an_running,
                grpc.aio.insecure_channel(f"127.0.0.1:{an_running.port}") as ach,
                grpc.aio.insecure_channel(f"127.0.0.1:{fb_running.port}") as fch,
            ):
                yield an_grpc.AnomalyServiceStub(ach), fb_grpc.FeedbackServiceStub(fch)
    finally:
        conn = await asyncpg.connect(db_url)
        try:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        finally:
            await conn.close()


async def replay(args: argparse.Namespace, redis_url: str, db_url: str) -> dict[str, Any]:
    tools = _load_tools(Path(args.tools))
    corpus, series = load(Path(args.nab), tools)
    started = time.perf_counter()
    threshold = args.threshold
    if threshold is None:
        async with services(redis_url, db_url, 0.99, 0.0) as (stub, _):
            first = await run_pass(stub, None, series, "pass1")
        flat = corpus.gather_scores(first.scores)
        t, r = tools.sweep(corpus, flat, tools.PROFILES["standard"])
        threshold, _ = tools.best_threshold(t, r)
        threshold = min(float(threshold), 1.0 - 1e-15)
    async with services(redis_url, db_url, threshold, 0.0) as (stub, _):
        before = await run_pass(stub, None, series, "before")
    async with services(
        redis_url, db_url, threshold, args.step, args.confirm_step, args.kind_signals
    ) as (
        stub,
        feedback,
    ):
        after = await run_pass(stub, feedback, series, "after")
    b = summarise(tools, corpus, before.detections)
    a = summarise(tools, corpus, after.detections)
    reduction = (
        1.0 - a["false_alarms_per_10k"] / b["false_alarms_per_10k"] if b["false_alarms"] else 0.0
    )
    return {
        "threshold": threshold,
        "offset_step": args.step,
        "offset_confirm_step": args.confirm_step,
        "alarm_kind_signals": args.kind_signals,
        "before": b,
        "after": a,
        "false_alarm_reduction": reduction,
        "feedback_given": after.feedback,
        "false_positive_feedback": after.false_feedback,
        "seconds": time.perf_counter() - started,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    root = Path(__file__).resolve().parents[2]
    ap.add_argument("--nab", default=str(root.parent / "shared" / "datasets" / "nab"))
    ap.add_argument("--tools", default=str(root.parent / "shared" / "tools"))
    ap.add_argument(
        "--threshold", type=float, default=None, help="base threshold; default: NAB-optimal"
    )
    ap.add_argument("--step", type=float, default=0.5, help="AIOPS_ANOMALY_OFFSET_STEP")
    ap.add_argument(
        "--confirm-step", type=float, default=1.0, help="AIOPS_ANOMALY_OFFSET_CONFIRM_STEP"
    )
    ap.add_argument("--kind-signals", type=int, default=2, help="AIOPS_ANOMALY_ALARM_KIND_SIGNALS")
    ap.add_argument("--json", default="", help="also write the result to this file")
    args = ap.parse_args(argv)
    env = settings.environ()
    with (
        tempfile.TemporaryDirectory(prefix="aiops-replay-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        redis_url, db_url = env.get("AIOPS_REDIS_URL", ""), env.get("AIOPS_DATABASE_URL", "")
        if not redis_url:
            redis = local_servers.LocalRedis(Path(tmp) / "redis")
            redis.start()
            stack.callback(redis.close)
            redis_url = redis.url
        if not db_url:
            postgres = local_servers.LocalPostgres(Path(tmp) / "pg", ephemeral=True)
            postgres.start()
            stack.callback(postgres.close)
            db_url = postgres.url
        result = asyncio.run(replay(args, redis_url, db_url))
    b, a = result["before"], result["after"]
    lines = [
        f"base threshold {result['threshold']!r}, offset step {result['offset_step']}",
        f"{'':8} {'standard':>9} {'FA/10k':>8} {'false alarms':>13} {'windows hit':>12}",
        f"{'before':8} {b['standard']:>9.2f} {b['false_alarms_per_10k']:>8.2f} "
        f"{b['false_alarms']:>13} {b['windows_detected']:>12}",
        f"{'after':8} {a['standard']:>9.2f} {a['false_alarms_per_10k']:>8.2f} "
        f"{a['false_alarms']:>13} {a['windows_detected']:>12}",
        f"false alarms {-100 * result['false_alarm_reduction']:+.1f} %, "
        f"{result['feedback_given']} feedback "
        f"({result['false_positive_feedback']} false positives)",
    ]
    sys.stdout.write("\n".join(lines) + "\n" + json.dumps(result) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    ok = math.isfinite(a["standard"]) and result["false_alarm_reduction"] >= 0.3
    return 0 if ok and a["standard"] >= b["standard"] else 1


if __name__ == "__main__":
    sys.exit(main())
