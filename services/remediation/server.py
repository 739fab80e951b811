"""Wiring of the remediation service.

The contract is served with health, reflection and metrics; every RPC answers
UNIMPLEMENTED until the service's own issue builds it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiops.remediation.v1 import remediation_service_pb2_grpc as remediation_grpc

from services.kit import serve
from services.remediation.settings import RemediationSettings

SERVICE_NAME = "aiops.remediation.v1.RemediationService"


@contextlib.asynccontextmanager
async def running(settings: RemediationSettings) -> AsyncIterator[serve.Running]:
    async with serve.grpc_server(
        settings.server,
        service_names=[SERVICE_NAME],
        register=lambda s: remediation_grpc.add_RemediationServiceServicer_to_server(
            remediation_grpc.RemediationServiceServicer(), s
        ),
    ) as srv:
        yield srv
