"""Schemathesis against the running suite's own `/openapi.json`, with a valid token: zero
server errors and zero responses that break the documented schema, over at least
`AIOPS_SCHEMATHESIS_EXAMPLES` (default 1,000) generated cases per operation, positive and
negative.

Where the time went with the `st` CLI (py-spy on the client): 45 % generating data, 40 %
in Hypothesis' target phase and Pareto front (schemathesis always calls
`hypothesis.target`; neither can be disabled from the CLI), under 20 % sending requests,
and the CLI's workers are threads sharing one GIL. So `schemathesis_run.py` drives the
same generators and checks through schemathesis' Python API with only the generate phase,
no example database and no shrinking, over one keep-alive session; operations are spread
over several processes; the suite runs with warnings-only logs (no access line per request).
The coverage phase stays off: it trips a CPython 3.11 ast bug inside Hypothesis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, Suite, start_suite

CASES = int(os.environ.get("AIOPS_SCHEMATHESIS_EXAMPLES", "1000"))
PROCESSES = int(os.environ.get("AIOPS_SCHEMATHESIS_PROCESSES", "3"))


@pytest.fixture(scope="module")
def quiet_suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    with start_suite(tmp_path_factory, AIOPS_LOG_LEVEL="WARNING") as suite:
        yield suite


@pytest.mark.timeout(1800)
def test_generated_requests_get_no_server_error_and_match_the_schema(
    quiet_suite: Suite, tmp_path: Path
) -> None:
    # Admin covers every route but the agent's; the agent role is added for those.
    token = quiet_suite.cli("token", "--role", "admin,agent", "--ttl", "3600")
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen'}",
        "ST_URL": f"{quiet_suite.base}/openapi.json",
        "ST_TOKEN": token,
        "ST_CASES": str(CASES),
        "ST_CLAIMS": str(tmp_path / "claims"),
        "ST_SEED": "20261126",
    }
    (tmp_path / "claims").mkdir()
    begin = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.schemathesis_run", str(tmp_path / f"{i}.json")],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(PROCESSES)
    ]
    outputs = [p.communicate(timeout=1700)[0].decode(errors="replace") for p in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-4000:]
    report: dict[str, dict[str, object]] = {}
    for i in range(PROCESSES):
        report.update(json.loads((tmp_path / f"{i}.json").read_text()))
    summary = {
        op: (r["cases"], f"{r['seconds']} s", r["statuses"]) for op, r in sorted(report.items())
    }
    print(f"schemathesis: {len(report)} operations in {time.monotonic() - begin:.0f} s")
    for op, line in summary.items():
        print(f"  {op}: {line}")
    failures = {op: r["failures"] for op, r in report.items() if r["failures"]}
    assert not failures, json.dumps(failures, indent=1)[:8000]
    # Every operation of the document, each with its full count of cases.
    status, doc = quiet_suite.http("GET", "/openapi.json")
    assert status == 200
    expected = {f"{m.upper()} {p}" for p, ops in doc["paths"].items() for m in ops}
    assert set(report) == expected
    short = {op: r["cases"] for op, r in report.items() if int(str(r["cases"])) < CASES}
    assert not short, short
