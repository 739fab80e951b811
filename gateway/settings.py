"""Settings of the REST gateway."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.kit import settings as kit_settings
from services.kit import tls as kit_tls

# Each backend: (name, full service name, default gRPC address, default metrics address).
BACKENDS = (
    ("feedback", "aiops.feedback.v1.FeedbackService", "127.0.0.1:50051", "127.0.0.1:9151"),
    ("telemetry", "aiops.telemetry.v1.TelemetryService", "127.0.0.1:50052", "127.0.0.1:9152"),
    ("anomaly", "aiops.anomaly.v1.AnomalyService", "127.0.0.1:50053", "127.0.0.1:9153"),
    (
        "remediation",
        "aiops.remediation.v1.RemediationService",
        "127.0.0.1:50054",
        "127.0.0.1:9154",
    ),
)


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    service: str
    address: str
    metrics_address: str


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    host: str
    port: int
    log_level: str
    backends: tuple[Backend, ...]
    keyring_dir: Path
    jwks_url: str | None
    issuer: str
    audience: str
    leeway_seconds: float
    max_token_ttl_seconds: float
    max_body_bytes: int
    request_timeout_seconds: float
    health_timeout_seconds: float
    health_cache_seconds: float
    shutdown_timeout_seconds: float
    coalesce: bool
    tls: kit_tls.TLSSettings
    https: kit_tls.TLSSettings
    workers: int
    redis_url: str = field(repr=False)
    maintenance_key: str
    maintenance_cache_seconds: float
    header_timeout_seconds: float
    body_timeout_seconds: float

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewaySettings:
        env = kit_settings.environ() if env is None else env
        r = kit_settings.Reader(env)
        backends = tuple(
            Backend(
                name,
                service,
                r.address(f"AIOPS_{name.upper()}_ADDR", addr),
                r.address(f"AIOPS_{name.upper()}_METRICS_ADDR", metrics),
            )
            for name, service, addr, metrics in BACKENDS
        )
        state = kit_settings.default_state_dir(env)
        return r.build(
            cls,
            host=r.str("AIOPS_GATEWAY_HOST", "0.0.0.0"),
            port=r.port("AIOPS_GATEWAY_PORT", 3000),
            log_level=r.str(
                "AIOPS_LOG_LEVEL", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")
            ),
            backends=backends,
            keyring_dir=r.path("AIOPS_GATEWAY_JWT_KEYRING_DIR", state / "keys"),
            jwks_url=r.optional_str("AIOPS_GATEWAY_JWKS_URL"),
            issuer=r.str("AIOPS_GATEWAY_JWT_ISSUER", "aiops"),
            audience=r.str("AIOPS_GATEWAY_JWT_AUDIENCE", "aiops-api"),
            leeway_seconds=r.float("AIOPS_GATEWAY_JWT_LEEWAY_SECONDS", 60.0, min=0, max=300),
            max_token_ttl_seconds=r.float(
                "AIOPS_GATEWAY_MAX_TOKEN_TTL_SECONDS", 24 * 3600.0, min=60, max=30 * 86400
            ),
            max_body_bytes=r.int("AIOPS_GATEWAY_MAX_BODY_BYTES", 64 * 1024, min=1024),
            request_timeout_seconds=r.float(
                "AIOPS_GATEWAY_REQUEST_TIMEOUT_SECONDS", 5.0, min=0.05, max=120
            ),
            health_timeout_seconds=r.float(
                "AIOPS_GATEWAY_HEALTH_TIMEOUT_SECONDS", 0.5, min=0.01, max=10
            ),
            health_cache_seconds=r.float("AIOPS_GATEWAY_HEALTH_CACHE_SECONDS", 1.0, min=0, max=60),
            coalesce=r.bool("AIOPS_GATEWAY_COALESCE", True),
            # Mutual TLS towards the services, and HTTPS for the public listener.
            tls=kit_tls.read(r),
            https=kit_tls.read(r, "AIOPS_GATEWAY_TLS"),
            workers=r.int("AIOPS_GATEWAY_WORKERS", 1, min=1, max=64),
            redis_url=r.str("AIOPS_REDIS_URL", "redis://127.0.0.1:6379/0"),
            maintenance_key=r.str("AIOPS_GATEWAY_MAINTENANCE_KEY", "aiops:maintenance"),
            maintenance_cache_seconds=r.float(
                "AIOPS_GATEWAY_MAINTENANCE_CACHE_SECONDS", 1.0, min=0, max=60
            ),
            shutdown_timeout_seconds=r.float(
                "AIOPS_GATEWAY_SHUTDOWN_TIMEOUT_SECONDS", 10.0, min=0, max=300
            ),
            # Slow clients (gateway/slowclient.py): time to send a request head, then its body.
            header_timeout_seconds=r.float(
                "AIOPS_GATEWAY_HEADER_TIMEOUT_SECONDS", 10.0, min=0.05, max=300
            ),
            body_timeout_seconds=r.float(
                "AIOPS_GATEWAY_BODY_TIMEOUT_SECONDS", 30.0, min=0.05, max=600
            ),
        )

    def backend(self, name: str) -> Backend:
        return next(b for b in self.backends if b.name == name)
