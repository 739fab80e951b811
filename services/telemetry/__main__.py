"""`python -m services.telemetry`: runs the telemetry service until SIGTERM."""

from services.kit import bootstrap
from services.telemetry import server
from services.telemetry.settings import TelemetrySettings

bootstrap.main("telemetry", TelemetrySettings.from_env, lambda s: s.server, server.running)
