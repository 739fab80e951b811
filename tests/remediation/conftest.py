"""Fixtures: the remediation server entered through `server.running`, on real Postgres and
Redis, talking to a real feedback server; a stand-in anomaly service for GetAnomaly."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiops.anomaly.v1 import anomaly_pb2 as an
from aiops.anomaly.v1 import anomaly_service_pb2 as an_svc
from aiops.anomaly.v1 import anomaly_service_pb2_grpc as an_grpc
from aiops.remediation.v1 import remediation_service_pb2_grpc as rem_grpc

from services.kit import serve
from services.remediation import server
from services.remediation.settings import RemediationSettings

OPERATOR = (("x-aiops-subject", "olga"), ("x-aiops-roles", "operator"))
ADMIN = (("x-aiops-subject", "ada"), ("x-aiops-roles", "admin"))
VIEWER = (("x-aiops-subject", "vic"), ("x-aiops-roles", "viewer"))


class FakeAnomalies(an_grpc.AnomalyServiceServicer):
    """Stand-in for the anomaly service's GetAnomaly (built in parallel)."""

    def __init__(self) -> None:
        self.items: dict[str, an.Anomaly] = {}

    async def GetAnomaly(self, request: an_svc.GetAnomalyRequest, context: Any) -> Any:
        if request.name not in self.items:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such anomaly")
        return an_svc.GetAnomalyResponse(anomaly=self.items[request.name])


@pytest.fixture
async def anomalies() -> AsyncIterator[tuple[FakeAnomalies, int]]:
    fake = FakeAnomalies()
    srv = grpc.aio.server()
    an_grpc.add_AnomalyServiceServicer_to_server(fake, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    try:
        yield fake, port
    finally:
        await srv.stop(0)


@dataclass
class Kubectl:
    """A recording stand-in for `kubectl` (and `redis-cli`) on a PATH of its own."""

    bin_dir: Path
    log: Path
    outputs: dict[str, str] = field(default_factory=dict)

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def kubectl(tmp_path: Path) -> Kubectl:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "kubectl.log"
    script = f"""#!{sys.executable}
import json, os, sys
with open({str(log)!r}, "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + "\\n")
if "get" in sys.argv[1:3]:
    print("3", end="")
elif os.path.basename(sys.argv[0]) == "redis-cli":
    print("PONG")
else:
    print("ok")
if os.environ.get("FAIL_ON") and os.environ["FAIL_ON"] in sys.argv:
    sys.exit(1)
"""
    for name in ("kubectl", "redis-cli"):
        path = bin_dir / name
        path.write_text(script)
        path.chmod(0o755)
    return Kubectl(bin_dir, log)


@pytest.fixture
def base_env(
    postgres_url: str,
    pg_schema: str,
    redis_url: str,
    redis_prefix: str,
    feedback_running: serve.Running,
) -> dict[str, str]:
    return {
        "AIOPS_DATABASE_URL": postgres_url,
        "AIOPS_REMEDIATION_DATABASE_SCHEMA": pg_schema,
        "AIOPS_REDIS_URL": redis_url,
        "AIOPS_REMEDIATION_KEY_PREFIX": f"{redis_prefix}rem:",
        "AIOPS_FEEDBACK_ADDR": f"127.0.0.1:{feedback_running.port}",
        "AIOPS_ANOMALY_ADDR": "127.0.0.1:9",
        "AIOPS_REMEDIATION_GRPC_PORT": "0",
        "AIOPS_REMEDIATION_METRICS_PORT": "0",
        "AIOPS_BIND_HOST": "127.0.0.1",
        "AIOPS_SHUTDOWN_GRACE_SECONDS": "0.2",
        "AIOPS_REMEDIATION_ALLOWED_NAMESPACES": "aiops,staging",
        "AIOPS_REMEDIATION_PEER_TIMEOUT_SECONDS": "1",
    }


Starter = Callable[..., contextlib.AbstractAsyncContextManager[tuple[serve.Running, Any]]]


@pytest.fixture
def start_remediation(base_env: dict[str, str]) -> Starter:
    @contextlib.asynccontextmanager
    async def start(**extra: str) -> AsyncIterator[tuple[serve.Running, Any]]:
        settings = RemediationSettings.from_env({**base_env, **extra})
        async with server.running(settings) as running:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
            try:
                yield running, rem_grpc.RemediationServiceStub(channel)
            finally:
                await channel.close()

    return start


@pytest.fixture
async def remediation(start_remediation: Starter) -> AsyncIterator[Any]:
    async with start_remediation() as (_, stub):
        yield stub
