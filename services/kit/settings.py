"""Typed settings read from `AIOPS_*` environment variables.

Every process has one frozen settings dataclass built by its `from_env(env)`. The `Reader`
collects every problem it meets, and `build()` raises them together, so a misconfigured
process reports all its mistakes at once and exits before it opens a port.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from services.kit import tls as kit_tls

T = TypeVar("T")
N = TypeVar("N", int, float)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SettingsError(Exception):
    """Raised with every configuration problem found, one per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))
        self.problems = problems


class Reader:
    """Reads typed values from an environment mapping and collects the problems."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.problems: list[str] = []

    def _raw(self, name: str) -> str | None:
        value = self._env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def str(
        self, name: str, default: builtins.str, *, choices: tuple[builtins.str, ...] = ()
    ) -> builtins.str:
        value = self._raw(name)
        if value is None:
            return default
        if choices and value not in choices:
            self.problems.append(f"{name}={value!r}: expected one of {', '.join(choices)}")
            return default
        return value

    def optional_str(self, name: builtins.str) -> builtins.str | None:
        return self._raw(name)

    def int(
        self,
        name: builtins.str,
        default: builtins.int,
        *,
        min: builtins.int | None = None,
        max: builtins.int | None = None,
    ) -> builtins.int:
        value = self._raw(name)
        if value is None:
            return default
        try:
            parsed = builtins.int(value)
        except ValueError:
            self.problems.append(f"{name}={value!r}: expected an integer")
            return default
        return self._bounded(name, parsed, default, min, max)

    def float(
        self,
        name: builtins.str,
        default: builtins.float,
        *,
        min: builtins.float | None = None,
        max: builtins.float | None = None,
    ) -> builtins.float:
        value = self._raw(name)
        if value is None:
            return default
        try:
            parsed = builtins.float(value)
        except ValueError:
            self.problems.append(f"{name}={value!r}: expected a number")
            return default
        if parsed != parsed or parsed in (builtins.float("inf"), builtins.float("-inf")):
            self.problems.append(f"{name}={value!r}: expected a finite number")
            return default
        return self._bounded(name, parsed, default, min, max)

    def _bounded(
        self, name: builtins.str, value: N, default: N, low: N | None, high: N | None
    ) -> N:
        if low is not None and value < low:
            self.problems.append(f"{name}={value}: must be at least {low}")
            return default
        if high is not None and value > high:
            self.problems.append(f"{name}={value}: must be at most {high}")
            return default
        return value

    def port(self, name: builtins.str, default: builtins.int) -> builtins.int:
        """A TCP port; 0 means "pick a free one" (tests)."""
        return self.int(name, default, min=0, max=65535)

    def bool(self, name: builtins.str, default: builtins.bool) -> builtins.bool:
        value = self._raw(name)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        self.problems.append(f"{name}={value!r}: expected true or false")
        return default

    def path(self, name: builtins.str, default: Path) -> Path:
        value = self._raw(name)
        return Path(value).expanduser() if value is not None else default

    def address(self, name: builtins.str, default: builtins.str) -> builtins.str:
        """A `host:port` to dial."""
        value = self.str(name, default)
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < builtins.int(port) < 65536:
            self.problems.append(f"{name}={value!r}: expected host:port")
            return default
        return value

    def addresses(self, name: builtins.str) -> tuple[builtins.str, ...]:
        """A comma-separated list of `host:port` entries (empty when unset)."""
        out = []
        for part in self.str(name, "").split(","):
            value = part.strip()
            if not value:
                continue
            host, sep, port = value.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < builtins.int(port) < 65536:
                self.problems.append(f"{name}: {value!r} is not host:port")
                continue
            out.append(value)
        return tuple(out)

    def build(self, cls: type[T], **values: Any) -> T:
        """Creates the settings object, or raises every problem collected so far."""
        if self.problems:
            raise SettingsError(self.problems)
        return cls(**values)


def default_state_dir(env: Mapping[str, str]) -> Path:
    """Where local data (keys, Redis and Postgres files) lives when nothing else is set."""
    return Path(env.get("AIOPS_STATE_DIR") or Path.cwd() / ".state").expanduser()


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What every gRPC server shares: ports, logging, shutdown and tracing."""

    service: str
    grpc_port: int
    metrics_port: int
    host: str
    log_level: str
    reflection: bool
    shutdown_drain_seconds: float
    shutdown_grace_seconds: float
    health_probe_interval_seconds: float
    max_message_bytes: int
    tls: kit_tls.TLSSettings = field(default_factory=kit_tls.TLSSettings)
    # Written once the server is SERVING: how a supervisor knows a replacement is ready.
    ready_file: Path | None = None
    # HTTP/2 streams (calls) one client connection may have open at once; more wait.
    max_concurrent_streams: int = 256


def read_server(r: Reader, service: str, grpc_port: int, metrics_port: int) -> ServerSettings:
    """Reads the shared server variables for `service` (e.g. `feedback`)."""
    upper = service.upper()
    return ServerSettings(
        service=service,
        grpc_port=r.port(f"AIOPS_{upper}_GRPC_PORT", grpc_port),
        metrics_port=r.port(f"AIOPS_{upper}_METRICS_PORT", metrics_port),
        host=r.str("AIOPS_BIND_HOST", "[::]"),
        log_level=r.str("AIOPS_LOG_LEVEL", "INFO", choices=_LOG_LEVELS),
        reflection=r.bool("AIOPS_GRPC_REFLECTION", True),
        shutdown_drain_seconds=r.float("AIOPS_SHUTDOWN_DRAIN_SECONDS", 2.0, min=0, max=300),
        shutdown_grace_seconds=r.float("AIOPS_SHUTDOWN_GRACE_SECONDS", 10.0, min=0, max=300),
        health_probe_interval_seconds=r.float(
            "AIOPS_HEALTH_PROBE_INTERVAL_SECONDS", 1.0, min=0.05, max=60
        ),
        max_message_bytes=r.int("AIOPS_GRPC_MAX_MESSAGE_BYTES", 4 * 1024 * 1024, min=1024),
        tls=kit_tls.read(r),
        ready_file=Path(f) if (f := r.optional_str("AIOPS_READY_FILE")) else None,
        max_concurrent_streams=r.int("AIOPS_GRPC_MAX_CONCURRENT_STREAMS", 256, min=1, max=65536),
    )


def environ() -> Mapping[str, str]:
    """The process environment; the only place that reads `os.environ`."""
    return os.environ
