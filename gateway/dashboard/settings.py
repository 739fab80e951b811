"""Settings of the `/aiops` dashboard served by the gateway."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.kit import settings as kit_settings


@dataclass(frozen=True, slots=True)
class DashboardSettings:
    """What the dashboard needs beyond the gateway's own settings.

    Attributes:
        dev_signin: Enables `POST /aiops/dev-token` (local mode only; `aiops run` sets it).
        dev_token_ttl_seconds: Lifetime of a dev sign-in token.
        events_interval_seconds: How often the gateway polls the backends for the live stream.
        events_keepalive_seconds: Comment lines that keep idle streams (and proxies) open.
        series_window_seconds: The span of each live chart.
        max_series: Charts on the page, at most.
    """

    dev_signin: bool
    dev_token_ttl_seconds: float
    events_interval_seconds: float
    events_keepalive_seconds: float
    series_window_seconds: float
    max_series: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DashboardSettings:
        env = kit_settings.environ() if env is None else env
        r = kit_settings.Reader(env)
        return r.build(
            cls,
            dev_signin=r.bool("AIOPS_GATEWAY_DEV_SIGNIN", False),
            dev_token_ttl_seconds=r.float(
                "AIOPS_GATEWAY_DEV_TOKEN_TTL_SECONDS", 900.0, min=60, max=12 * 3600
            ),
            events_interval_seconds=r.float(
                "AIOPS_GATEWAY_EVENTS_INTERVAL_SECONDS", 2.0, min=0.2, max=60
            ),
            events_keepalive_seconds=r.float(
                "AIOPS_GATEWAY_EVENTS_KEEPALIVE_SECONDS", 15.0, min=1, max=300
            ),
            series_window_seconds=r.float(
                "AIOPS_GATEWAY_DASHBOARD_WINDOW_SECONDS", 900.0, min=60, max=86400
            ),
            max_series=r.int("AIOPS_GATEWAY_DASHBOARD_MAX_SERIES", 12, min=1, max=100),
        )
