"""`python -m services.telemetry`: runs the telemetry service until SIGTERM."""

import gc

from services.kit import bootstrap
from services.telemetry import server
from services.telemetry.settings import TelemetrySettings

# Ingest allocates a few short-lived objects per point; the default generation-0 threshold
# (700) runs the cyclic collector thousands of times per second at 50,000 points/s.
gc.set_threshold(50_000, 20, 20)
bootstrap.main("telemetry", TelemetrySettings.from_env, lambda s: s.server, server.running)
