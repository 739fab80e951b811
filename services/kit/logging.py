"""Structured logs: one JSON object per line on stdout, carrying the trace and span ids."""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import sys
from typing import Any

from opentelemetry import trace

# Attributes every LogRecord has; anything else came from `extra` and is logged as a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


@functools.lru_cache(maxsize=8)
def _second(second: int) -> str:
    """RFC 3339 UTC up to the seconds; lines of one second share it (an access line per
    request made the datetime formatting show up in profiles)."""
    return dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


class JsonFormatter(logging.Formatter):
    """Formats records as JSON with `ts`, `level`, `logger`, `message`, `service`,
    `trace_id`/`span_id` (when a span is active) and the record's own fields."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        second, micros = divmod(round(record.created * 1e6), 1_000_000)
        millis = micros // 1000
        out: dict[str, Any] = {
            "ts": f"{_second(second)}.{millis:03d}+00:00",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": self._service,
        }
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            out["trace_id"] = format(ctx.trace_id, "032x")
            out["span_id"] = format(ctx.span_id, "016x")
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def configure(service: str, level: str = "INFO") -> None:
    """Sends every log record of the process to stdout as JSON lines."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The JSON lines carry no source location, thread or process, so the logging module
    # need not look them up for every record (its documented switches for this).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Libraries that log every request or connection at INFO would drown our access log.
    for noisy in ("aiohttp.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
