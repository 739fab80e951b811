"""Wiring of the telemetry service.

The contract is served with health, reflection and metrics; every RPC answers
UNIMPLEMENTED until the service's own issue builds it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiops.telemetry.v1 import telemetry_service_pb2_grpc as telemetry_grpc

from services.kit import serve
from services.telemetry.settings import TelemetrySettings

SERVICE_NAME = "aiops.telemetry.v1.TelemetryService"


@contextlib.asynccontextmanager
async def running(settings: TelemetrySettings) -> AsyncIterator[serve.Running]:
    async with serve.grpc_server(
        settings.server,
        service_names=[SERVICE_NAME],
        register=lambda s: telemetry_grpc.add_TelemetryServiceServicer_to_server(
            telemetry_grpc.TelemetryServiceServicer(), s
        ),
    ) as srv:
        yield srv
