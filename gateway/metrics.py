"""Gateway metrics, and `/metrics/aiops`: the suite's `aiops_*` metrics gathered from every
service's metrics port, so the runbook's `curl .../metrics/aiops | grep aiops_...` works."""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import aiohttp
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

log = logging.getLogger(__name__)

REQUESTS = Counter(
    "aiops_gateway_requests_total",
    "HTTP requests answered by the gateway, by route template, method and status.",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "aiops_gateway_request_duration_seconds",
    "Time to answer an HTTP request at the gateway, in seconds.",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10),
)


_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe(route: str, method: str, status: int, seconds: float) -> None:
    """Counts one answered request and its duration; the labelled children are looked up
    once per (route, method, status) rather than on every request."""
    key = (route, method, status)
    pair = _children.get(key)
    if pair is None:
        # Route templates and methods are bounded by the route table (unmatched paths are
        # one template), so this stays small.
        pair = _children[key] = (
            REQUESTS.labels(route, method, str(status)),
            LATENCY.labels(route, method),
        )
    pair[0].inc()
    pair[1].observe(seconds)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if value != int(value) or abs(value) > 1e15 else str(int(value))


def render(texts: Iterable[str], prefix: str = "aiops_") -> str:
    """Merges expositions, keeping families named `prefix*` and the first copy of each
    sample (in-process test suites expose one registry on several ports)."""
    families: dict[str, tuple[str, str, list[Sample]]] = {}
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for text in texts:
        try:
            parsed = list(text_string_to_metric_families(text))
        except ValueError:
            log.warning("unparsable metrics exposition skipped")
            continue
        for family in parsed:
            if not family.name.startswith(prefix):
                continue
            entry = families.setdefault(family.name, (family.type, family.documentation, []))
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if key not in seen:
                    seen.add(key)
                    entry[2].append(sample)
    lines: list[str] = []
    for name in sorted(families):
        kind, doc, samples = families[name]
        lines.append(f"# HELP {name} {doc}")
        lines.append(f"# TYPE {name} {kind}")
        for s in samples:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(s.labels.items()))
            lines.append(
                f"{s.name}{{{labels}}} {_format_value(s.value)}"
                if labels
                else f"{s.name} {_format_value(s.value)}"
            )
    return "\n".join(lines) + "\n"


async def gather(
    session: aiohttp.ClientSession, addresses: Sequence[str], timeout_seconds: float
) -> list[str]:
    """Every reachable service's exposition text; an unreachable one is skipped."""

    async def fetch(address: str) -> str:
        try:
            async with session.get(
                f"http://{address}/metrics", timeout=aiohttp.ClientTimeout(total=timeout_seconds)
            ) as resp:
                return await resp.text() if resp.status == 200 else ""
        except (aiohttp.ClientError, TimeoutError):
            log.info("metrics endpoint unreachable", extra={"address": address})
            return ""

    return list(await asyncio.gather(*(fetch(a) for a in addresses)))


def local_text() -> str:
    """This gateway's metrics: of every worker when several share the port."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry).decode()
    return generate_latest(REGISTRY).decode()
