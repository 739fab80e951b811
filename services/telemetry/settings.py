"""Settings of the telemetry service."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.kit import settings as kit_settings

DAY_SECONDS = 86400.0

# By default the suite watches itself: the gateway and every service's metrics port, at
# the addresses the rest of the suite is configured with (`aiops run` passes them on).
_SUITE_METRICS = (("feedback", 9151), ("telemetry", 9152), ("anomaly", 9153), ("remediation", 9154))


def default_scrape_targets(env: Mapping[str, str]) -> tuple[str, ...]:
    """`/metrics` of the gateway (`AIOPS_GATEWAY_PORT`, 3000) and of each service
    (`AIOPS_<SVC>_METRICS_ADDR`, else 127.0.0.1 and `AIOPS_<SVC>_METRICS_PORT`)."""
    gateway = (env.get("AIOPS_GATEWAY_PORT") or "3000").strip()
    targets = [f"http://127.0.0.1:{gateway}/metrics"] if gateway != "0" else []
    for name, port in _SUITE_METRICS:
        addr = (env.get(f"AIOPS_{name.upper()}_METRICS_ADDR") or "").strip()
        if not addr:
            own = (env.get(f"AIOPS_{name.upper()}_METRICS_PORT") or str(port)).strip()
            if own == "0":
                continue  # a random port (tests): nothing to dial
            addr = f"127.0.0.1:{own}"
        targets.append(f"http://{addr}/metrics")
    return tuple(targets)


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    server: kit_settings.ServerSettings
    database_url: str = field(repr=False)
    database_schema: str | None
    database_timeout_seconds: float
    database_pool_size: int
    retention_seconds: float
    retention_interval_seconds: float
    max_series: int
    collector_enabled: bool
    collect_interval_seconds: float
    scrape_timeout_seconds: float
    window_seconds: float
    scrape_targets: tuple[str, ...]
    raw_metrics: tuple[str, ...]
    prometheus_url: str | None
    prometheus_queries: tuple[tuple[str, str], ...]
    lease_name: str
    anomaly_addr: str
    anomaly_replicas: tuple[str, ...]
    forward_enabled: bool
    forward_buffer_points: int
    forward_batch_points: int
    anomaly_timeout_seconds: float

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TelemetrySettings:
        env = kit_settings.environ() if env is None else env
        r = kit_settings.Reader(env)
        interval = r.float("AIOPS_TELEMETRY_COLLECT_INTERVAL_SECONDS", 15.0, min=0.05, max=3600)
        timeout = r.float("AIOPS_TELEMETRY_SCRAPE_TIMEOUT_SECONDS", 0.0, min=0, max=3600)
        if timeout > interval:
            r.problems.append(
                f"AIOPS_TELEMETRY_SCRAPE_TIMEOUT_SECONDS={timeout}: must not exceed the "
                "collect interval"
            )
        return r.build(
            cls,
            server=kit_settings.read_server(r, "telemetry", 50052, 9152),
            database_url=r.str("AIOPS_DATABASE_URL", "postgresql://127.0.0.1:5432/aiops"),
            database_schema=r.optional_str("AIOPS_TELEMETRY_DATABASE_SCHEMA"),
            database_timeout_seconds=r.float(
                "AIOPS_TELEMETRY_DATABASE_TIMEOUT_SECONDS", 10.0, min=0.1, max=300
            ),
            database_pool_size=r.int("AIOPS_TELEMETRY_DATABASE_POOL_SIZE", 8, min=2, max=200),
            retention_seconds=r.float(
                "AIOPS_TELEMETRY_RETENTION_SECONDS",
                30 * DAY_SECONDS,
                min=60,
                max=3660 * DAY_SECONDS,
            ),
            retention_interval_seconds=r.float(
                "AIOPS_TELEMETRY_RETENTION_INTERVAL_SECONDS", 300.0, min=0.05, max=DAY_SECONDS
            ),
            max_series=r.int("AIOPS_TELEMETRY_MAX_SERIES", 100_000, min=10),
            collector_enabled=r.bool("AIOPS_TELEMETRY_COLLECTOR_ENABLED", True),
            collect_interval_seconds=interval,
            # 0 means "a third of the interval, at most 5 s".
            scrape_timeout_seconds=timeout or min(5.0, interval / 3),
            window_seconds=r.float("AIOPS_TELEMETRY_WINDOW_SECONDS", 300.0, min=1, max=DAY_SECONDS),
            scrape_targets=_urls(r, "AIOPS_TELEMETRY_SCRAPE_TARGETS", default_scrape_targets(env)),
            raw_metrics=_names(r, "AIOPS_TELEMETRY_RAW_METRICS"),
            prometheus_url=_optional_url(r, "AIOPS_TELEMETRY_PROMETHEUS_URL"),
            prometheus_queries=_queries(r, "AIOPS_TELEMETRY_PROMETHEUS_QUERIES"),
            lease_name=r.str("AIOPS_TELEMETRY_LEASE_NAME", "collector"),
            anomaly_addr=r.address("AIOPS_ANOMALY_ADDR", "127.0.0.1:50053"),
            # The anomaly replicas' own addresses when it is sharded: each point goes to
            # the replica owning its series. Empty: everything to AIOPS_ANOMALY_ADDR.
            anomaly_replicas=r.addresses("AIOPS_ANOMALY_REPLICAS"),
            forward_enabled=r.bool("AIOPS_TELEMETRY_FORWARD_ENABLED", True),
            forward_buffer_points=r.int(
                "AIOPS_TELEMETRY_FORWARD_BUFFER_POINTS", 100_000, min=10, max=10_000_000
            ),
            forward_batch_points=r.int(
                "AIOPS_TELEMETRY_FORWARD_BATCH_POINTS", 1000, min=1, max=10_000
            ),
            anomaly_timeout_seconds=r.float(
                "AIOPS_TELEMETRY_ANOMALY_TIMEOUT_SECONDS", 5.0, min=0.05, max=300
            ),
        )


def _split(raw: str | None) -> list[str]:
    return [part.strip() for part in (raw or "").split(",") if part.strip()]


def _urls(r: kit_settings.Reader, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = r.optional_str(name)
    if raw is None:
        return default
    if raw.lower() == "none":
        return ()
    urls = _split(raw)
    for url in urls:
        if not url.startswith(("http://", "https://")):
            r.problems.append(f"{name}: {url!r} must be an http:// or https:// URL")
    return tuple(urls)


def _optional_url(r: kit_settings.Reader, name: str) -> str | None:
    url = r.optional_str(name)
    if url is not None and not url.startswith(("http://", "https://")):
        r.problems.append(f"{name}={url!r}: expected an http:// or https:// URL")
        return None
    return url.rstrip("/") if url else None


def _names(r: kit_settings.Reader, name: str) -> tuple[str, ...]:
    return tuple(_split(r.optional_str(name)))


def _queries(r: kit_settings.Reader, name: str) -> tuple[tuple[str, str], ...]:
    """A JSON object mapping a series metric name to the PromQL query that feeds it."""
    raw = r.optional_str(name)
    if raw is None:
        return ()
    try:
        parsed = json.loads(raw)
    except ValueError:
        r.problems.append(f"{name}: expected a JSON object of name -> PromQL query")
        return ()
    if not isinstance(parsed, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and v for k, v in parsed.items()
    ):
        r.problems.append(f"{name}: expected a JSON object of non-empty strings")
        return ()
    return tuple(parsed.items())
