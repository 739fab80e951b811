"""One share of the schemathesis run, as its own process: `python -m tests.e2e.schemathesis_run
OUT_JSON` with the settings in the environment (see `main`).

Why not the `st` CLI: profiling a 1,000-case run showed the client, not the suite, to be the
bottleneck, and 40 % of its CPU in Hypothesis' *target* phase (hill-climbing the success
rate schemathesis always reports through `hypothesis.target`) plus the Pareto front that a
configured example database keeps; neither can be switched off from the CLI. Here each
operation runs with only the generate phase, no database, no shrinking, one keep-alive HTTP
session, and the same four checks; operations are split over several processes by the
caller (each process claims the next operation not yet taken), since generation is
CPU-bound and the CLI's workers are threads under one GIL.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import hypothesis
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis import checks as st_checks
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi import checks as openapi_checks

CHECKS = [
    st_checks.not_a_server_error,
    openapi_checks.response_schema_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_headers_conformance,
]
MAX_FAILURES_KEPT = 5


def _strategy(operation: Any, headers: dict[str, str]) -> Any:
    # The token is fixed, so negative cases test the operation's inputs, not the 401 path
    # (tests/gateway/test_security.py covers that).
    positive = operation.as_strategy(GenerationMode.POSITIVE, headers=headers)
    try:
        negative = operation.as_strategy(GenerationMode.NEGATIVE, headers=headers)
    except Exception:  # an operation without inputs has no invalid form
        return positive
    return st.one_of(positive, negative)


def run_operation(
    operation: Any, session: requests.Session, headers: dict[str, str], cases: int, seed: int
) -> dict[str, Any]:
    """Sends at least `cases` generated requests to one operation and checks each answer."""
    began = time.monotonic()
    done = 0
    failures: list[str] = []
    statuses: dict[str, int] = {}
    generated: list[Any] = []

    def send(case: Any) -> None:
        nonlocal done
        done += 1
        response = case.call(session=session, headers=headers, timeout=10)
        statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1
        try:
            case.validate_response(response, checks=CHECKS)
        except Exception as exc:  # Failure, or a FailureGroup of several
            if len(failures) < MAX_FAILURES_KEPT:
                failures.append(f"{case.method} {case.formatted_path}: {exc}"[:2000])
            else:
                failures.append("...")

    @hypothesis.settings(
        max_examples=cases,
        phases=[hypothesis.Phase.generate],
        database=None,
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        verbosity=hypothesis.Verbosity.quiet,
    )
    @hypothesis.seed(seed)
    @hypothesis.given(case=_strategy(operation, headers))
    def test(case: Any) -> None:
        if len(generated) < cases:
            generated.append(case)
        send(case)

    test()
    # An operation with a tiny input space (no parameters) exhausts Hypothesis after a few
    # cases: its distinct cases are sent again until the count is reached.
    while done < cases and generated:
        send(generated[done % len(generated)])
    return {
        "cases": done,
        "failures": failures,
        "statuses": statuses,
        "seconds": round(time.monotonic() - began, 1),
    }


def main() -> None:
    """Environment: ST_URL (the schema), ST_TOKEN, ST_CASES per operation, ST_CLAIMS (a
    directory the processes share: each takes the next operation nobody has claimed, so a
    process held up by a slow operation takes fewer), ST_SEED."""
    out_path = sys.argv[1]
    url = os.environ["ST_URL"]
    headers = {"Authorization": f"Bearer {os.environ['ST_TOKEN']}"}
    cases = int(os.environ.get("ST_CASES", "1000"))
    claims = os.environ["ST_CLAIMS"]
    seed = int(os.environ.get("ST_SEED", "20261126"))
    schema = schemathesis.openapi.from_url(url)
    operations = sorted(
        (result.ok() for result in schema.get_all_operations()),
        key=lambda op: (op.path, op.method),
    )
    report: dict[str, Any] = {}
    with requests.Session() as session:
        for index, operation in enumerate(operations):
            try:
                os.close(os.open(os.path.join(claims, str(index)), os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                continue  # another process has it
            label = f"{operation.method.upper()} {operation.path}"
            report[label] = run_operation(operation, session, headers, cases, seed + index)
    with open(out_path, "w", encoding="utf-8") as out:
        json.dump(report, out, indent=1)


if __name__ == "__main__":
    main()
