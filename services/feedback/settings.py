"""Settings of the feedback service."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from services.kit import settings as kit_settings

WEEK_SECONDS = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class FeedbackSettings:
    server: kit_settings.ServerSettings
    redis_url: str = field(repr=False)
    key_prefix: str
    ttl_seconds: float
    redis_timeout_seconds: float
    redis_max_connections: int
    sweep_interval_seconds: float

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FeedbackSettings:
        r = kit_settings.Reader(kit_settings.environ() if env is None else env)
        return r.build(
            cls,
            server=kit_settings.read_server(r, "feedback", 50051, 9151),
            redis_url=r.str("AIOPS_REDIS_URL", "redis://127.0.0.1:6379/0"),
            key_prefix=r.str("AIOPS_FEEDBACK_KEY_PREFIX", "aiops:feedback:"),
            ttl_seconds=r.float("AIOPS_FEEDBACK_TTL_SECONDS", WEEK_SECONDS, min=1, max=366 * 86400),
            redis_timeout_seconds=r.float(
                "AIOPS_FEEDBACK_REDIS_TIMEOUT_SECONDS", 0.5, min=0.01, max=30
            ),
            redis_max_connections=r.int("AIOPS_FEEDBACK_REDIS_MAX_CONNECTIONS", 64, min=1),
            sweep_interval_seconds=r.float(
                "AIOPS_FEEDBACK_SWEEP_INTERVAL_SECONDS", 30.0, min=0.05, max=86400
            ),
        )
