"""Maintenance mode: while it is on, the gateway answers mutating requests with 503, a
`Retry-After` and the reason; reads, health, metrics and JWKS keep working.

The state lives in Redis so every gateway replica obeys it; the key expires at the end
time, so maintenance ends by itself. Each replica caches the state briefly.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import redis.asyncio as redis
from prometheus_client import Gauge
from redis.exceptions import RedisError

from services.kit import errors

log = logging.getLogger(__name__)

MAINTENANCE = Gauge(
    "aiops_gateway_maintenance_mode",
    "1 while maintenance mode is on, else 0.",
    multiprocess_mode="max",
)

MAX_REASON = 500
MAX_DURATION_SECONDS = 7 * 24 * 3600.0
# Without an end time, maintenance still ends after this long, so a forgotten switch
# cannot keep the suite read-only for ever.
DEFAULT_DURATION_SECONDS = 24 * 3600.0
_RETRY_WITHOUT_END = 60


@dataclass(frozen=True, slots=True)
class State:
    enabled: bool
    reason: str = ""
    start_time: float = 0.0
    end_time: float = 0.0
    set_by: str = ""

    def retry_after(self, now: float) -> int:
        if not self.end_time:
            return _RETRY_WITHOUT_END
        return max(1, min(_RETRY_WITHOUT_END * 60, math.ceil(self.end_time - now)))


OFF = State(enabled=False)


class Maintenance:
    """Reads and writes the maintenance state in Redis, with a short per-replica cache."""

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        cache_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._r = client
        self._key = key
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._cached: State = OFF
        self._cached_at = -math.inf
        self._lock = asyncio.Lock()

    async def current(self) -> State:
        """The state, at most `cache_seconds` old. If Redis cannot be read, the last known
        state is kept (a Redis outage must not switch maintenance on or off)."""
        now = time.monotonic()
        if now - self._cached_at < self._cache_seconds:
            return self._expire(self._cached)
        async with self._lock:
            if time.monotonic() - self._cached_at < self._cache_seconds:
                return self._expire(self._cached)
            try:
                async with asyncio.timeout(0.5):
                    raw = await self._r.get(self._key)
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("maintenance state unreadable", extra={"error": type(exc).__name__})
                self._cached_at = time.monotonic()
                return self._expire(self._cached)
            self._cached = _decode(raw) if raw else OFF
            self._cached_at = time.monotonic()
        return self._expire(self._cached)

    def _expire(self, state: State) -> State:
        if state.enabled and state.end_time and state.end_time <= self._clock():
            state = OFF
        MAINTENANCE.set(1 if state.enabled else 0)
        return state

    async def set(self, enabled: bool, reason: str, end_time: float | None, who: str) -> State:
        now = self._clock()
        if enabled:
            problems = []
            if not reason.strip() or len(reason) > MAX_REASON:
                problems.append(
                    errors.FieldViolation("reason", f"is required, at most {MAX_REASON} characters")
                )
            end = end_time if end_time else now + DEFAULT_DURATION_SECONDS
            if end <= now or end - now > MAX_DURATION_SECONDS:
                problems.append(errors.FieldViolation("endTime", "must be in the next 7 days"))
            if problems:
                raise errors.invalid(problems, "MAINTENANCE_INVALID")
            state = State(True, reason.strip(), now, end, who)
        else:
            state = OFF
        try:
            async with asyncio.timeout(1.0):
                if state.enabled:
                    ttl_ms = max(1, int((state.end_time - now) * 1000))
                    await self._r.set(self._key, json.dumps(asdict(state)), px=ttl_ms)
                else:
                    await self._r.delete(self._key)
        except (RedisError, OSError, TimeoutError) as exc:
            raise errors.Unavailable(
                "MAINTENANCE_STORE_UNAVAILABLE",
                "Maintenance state could not be saved (Redis unreachable); retry shortly.",
                retry_after_seconds=1.0,
            ) from exc
        log.warning(
            "maintenance mode changed",
            extra={
                "enabled": state.enabled,
                "reason": state.reason,
                "by": who,
                "end_time": state.end_time,
            },
        )
        self._cached, self._cached_at = state, time.monotonic()
        return self._expire(state)

    def refusal(self, state: State) -> errors.Unavailable:
        return errors.Unavailable(
            "MAINTENANCE",
            f"The suite is in maintenance ({state.reason}); changes are refused until it ends.",
            metadata={"reason": state.reason[:200], "end_time": _rfc3339(state.end_time)},
            retry_after_seconds=state.retry_after(self._clock()),
        )


def to_json(state: State) -> dict[str, object]:
    if not state.enabled:
        return {"enabled": False}
    return {
        "enabled": True,
        "reason": state.reason,
        "startTime": _rfc3339(state.start_time),
        "endTime": _rfc3339(state.end_time),
        "setBy": state.set_by,
    }


def _rfc3339(seconds: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat().replace("+00:00", "Z")


def _decode(raw: str | bytes) -> State:
    try:
        data = json.loads(raw)
        return State(
            enabled=bool(data["enabled"]),
            reason=str(data.get("reason", "")),
            start_time=float(data.get("start_time", 0)),
            end_time=float(data.get("end_time", 0)),
            set_by=str(data.get("set_by", "")),
        )
    except (ValueError, KeyError, TypeError):
        log.error("maintenance state unreadable; treating as off")
        return OFF
