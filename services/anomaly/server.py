"""Wiring of the anomaly service.

The contract is served with health, reflection and metrics; every RPC answers
UNIMPLEMENTED until the service's own issue builds it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiops.anomaly.v1 import anomaly_service_pb2_grpc as anomaly_grpc

from services.anomaly.settings import AnomalySettings
from services.kit import serve

SERVICE_NAME = "aiops.anomaly.v1.AnomalyService"


@contextlib.asynccontextmanager
async def running(settings: AnomalySettings) -> AsyncIterator[serve.Running]:
    async with serve.grpc_server(
        settings.server,
        service_names=[SERVICE_NAME],
        register=lambda s: anomaly_grpc.add_AnomalyServiceServicer_to_server(
            anomaly_grpc.AnomalyServiceServicer(), s
        ),
    ) as srv:
        yield srv
