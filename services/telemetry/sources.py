"""Reading sources over HTTP: Prometheus exposition endpoints and a Prometheus server's
HTTP API. Each read runs under its own timeout and reports its outcome; nothing raises.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from prometheus_client import Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families

from services.telemetry import critical

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024

SCRAPE_DURATION = Histogram(
    "aiops_telemetry_scrape_duration_seconds",
    "Time to read one source, in seconds, by source kind and URL.",
    ["kind", "source"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SCRAPE_ERRORS = Counter(
    "aiops_telemetry_scrape_errors_total",
    "Failed reads of a source, by source kind, URL and result.",
    ["kind", "source", "result"],
)


class SourceKind(enum.Enum):
    EXPOSITION = "exposition"
    PROMETHEUS_API = "prometheus_api"


class Result(enum.Enum):
    OK = "ok"
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    HTTP_ERROR = "http_error"
    PARSE_ERROR = "parse_error"


@dataclass(frozen=True, slots=True)
class Status:
    url: str
    kind: SourceKind
    result: Result
    error: str
    start: float
    duration: float
    samples: int


@dataclass(frozen=True, slots=True)
class PromSample:
    labels: Mapping[str, str]
    time: float
    value: float


@dataclass(frozen=True, slots=True)
class PromResult:
    status: Status
    samples: tuple[PromSample, ...] = field(default_factory=tuple)


class _Failure(Exception):
    def __init__(self, result: Result, message: str) -> None:
        super().__init__(message)
        self.result = result
        self.message = message


def safe_url(url: str) -> str:
    """The URL without credentials."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return parts._replace(netloc=netloc).geturl()
    return url


def instance(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


async def _get(
    session: aiohttp.ClientSession, url: str, params: Mapping[str, str] | None = None
) -> bytes:
    try:
        async with session.get(url, params=params) as resp:
            body = await resp.content.read(MAX_BODY_BYTES + 1)
            if resp.status // 100 != 2:
                raise _Failure(Result.HTTP_ERROR, f"The source answered HTTP {resp.status}.")
            if len(body) > MAX_BODY_BYTES:
                raise _Failure(Result.PARSE_ERROR, "The answer is larger than 16 MiB.")
            return body
    except aiohttp.ClientResponseError as exc:
        raise _Failure(Result.HTTP_ERROR, f"The source answered HTTP {exc.status}.") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise _Failure(Result.UNREACHABLE, "The source could not be reached.") from exc


def parse_exposition(text: str, when: float) -> critical.Scrape:
    samples: dict[critical.SampleKey, float] = {}
    families: set[str] = set()
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        types[family.name] = family.type
        for s in family.samples:
            if s.name.endswith("_created") or not isinstance(s.value, int | float):
                continue
            samples[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return critical.Scrape(when, samples, frozenset(families), types)


async def scrape(
    session: aiohttp.ClientSession, url: str, limit_seconds: float
) -> tuple[Status, critical.Scrape | None]:
    """Reads and parses one exposition endpoint within `limit_seconds`."""
    timeout = limit_seconds
    start, begin = time.time(), time.perf_counter()
    shown = safe_url(url)
    parsed: critical.Scrape | None = None
    try:
        async with asyncio.timeout(timeout):
            body = await _get(session, url)
        try:
            text = body.decode("utf-8")
            parsed = await asyncio.to_thread(parse_exposition, text, start)
        except (ValueError, UnicodeDecodeError, IndexError, KeyError, TypeError) as exc:
            raise _Failure(
                Result.PARSE_ERROR, "The answer is not a Prometheus exposition."
            ) from exc
        result, message = Result.OK, ""
    except TimeoutError:
        result, message = Result.TIMEOUT, f"No answer within {timeout:g} s."
    except _Failure as exc:
        result, message = exc.result, exc.message
    return _finish(
        shown,
        SourceKind.EXPOSITION,
        result,
        message,
        start,
        begin,
        len(parsed.samples) if parsed else 0,
    ), parsed


def _finish(
    url: str, kind: SourceKind, result: Result, message: str, start: float, begin: float, n: int
) -> Status:
    duration = time.perf_counter() - begin
    SCRAPE_DURATION.labels(kind.value, url).observe(duration)
    if result is not Result.OK:
        SCRAPE_ERRORS.labels(kind.value, url, result.value).inc()
        log.info(
            "source read failed",
            extra={"source": url, "kind": kind.value, "result": result.value, "error": message},
        )
    return Status(url, kind, result, message, start, duration, n)


def _prom_value(raw: Any) -> tuple[float, float]:
    when, value = raw
    return float(when), float(value)


def parse_prometheus(body: bytes) -> list[PromSample]:
    """Samples of a `/api/v1/query` or `/api/v1/query_range` answer (vector, matrix or
    scalar); non-finite values are dropped."""
    data = _json(body)
    if data.get("status") != "success" or not isinstance(data.get("data"), dict):
        raise ValueError("not a successful Prometheus API answer")
    kind = data["data"].get("resultType")
    result = data["data"].get("result")
    out: list[PromSample] = []
    if kind == "scalar":
        when, value = _prom_value(result)
        out.append(PromSample({}, when, value))
    elif kind == "vector":
        for item in result:
            labels = {k: str(v) for k, v in item.get("metric", {}).items() if k != "__name__"}
            when, value = _prom_value(item["value"])
            out.append(PromSample(labels, when, value))
    elif kind == "matrix":
        for item in result:
            labels = {k: str(v) for k, v in item.get("metric", {}).items() if k != "__name__"}
            for raw in item["values"]:
                when, value = _prom_value(raw)
                out.append(PromSample(labels, when, value))
    else:
        raise ValueError(f"unsupported result type {kind!r}")
    return [s for s in out if math.isfinite(s.value)]


def _json(body: bytes) -> dict[str, Any]:
    import json

    parsed = json.loads(body)
    if not isinstance(parsed, dict):
        raise ValueError("not a JSON object")
    return parsed


async def prometheus_query(
    session: aiohttp.ClientSession,
    base_url: str,
    promql: str,
    limit_seconds: float,
    *,
    at: float | None = None,
    start: float | None = None,
    end: float | None = None,
    step: float | None = None,
) -> PromResult:
    """An instant query (`at`) or, with start/end/step, a range query."""
    timeout = limit_seconds
    begin_wall, begin = time.time(), time.perf_counter()
    if start is not None and end is not None and step is not None:
        url = f"{base_url}/api/v1/query_range"
        params = {
            "query": promql,
            "start": f"{start:.3f}",
            "end": f"{end:.3f}",
            "step": f"{step:g}",
        }
    else:
        url = f"{base_url}/api/v1/query"
        params = {"query": promql, "time": f"{at if at is not None else time.time():.3f}"}
    params["timeout"] = f"{max(100, int(timeout * 1000))}ms"
    samples: list[PromSample] = []
    try:
        async with asyncio.timeout(timeout):
            body = await _get(session, url, params)
        try:
            samples = parse_prometheus(body)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise _Failure(
                Result.PARSE_ERROR, "The answer is not a Prometheus API result."
            ) from exc
        result, message = Result.OK, ""
    except TimeoutError:
        result, message = Result.TIMEOUT, f"No answer within {timeout:g} s."
    except _Failure as exc:
        result, message = exc.result, exc.message
    status = _finish(
        safe_url(base_url),
        SourceKind.PROMETHEUS_API,
        result,
        message,
        begin_wall,
        begin,
        len(samples),
    )
    return PromResult(status, tuple(samples))
