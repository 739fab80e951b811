"""Streams stored points to the anomaly service's `ScorePoints`, in its columnar form.

When anomaly is sharded (several replicas, each owning the series the consistent-hash ring
gives it) a `Router` keeps one stream per replica and sends each point to the replica that
owns its series; with one address everything goes there.

Points wait in a bounded buffer (one per replica) while anomaly is slow or away. When the
buffer is full the oldest points are dropped; every drop is counted in a metric and logged
(at most once per `log_every` seconds, with the count), never lost silently. The stream
reconnects by itself with backoff, and a batch that was in flight when the stream broke is
sent again first (anomaly refuses points that are not newer than the last it scored, so a
repeat is harmless).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from aiops.anomaly.v1 import anomaly_service_pb2
from aiops.anomaly.v1 import anomaly_service_pb2_grpc as anomaly_grpc
from prometheus_client import Counter, Gauge

from services.kit import sharding
from services.telemetry import domain

log = logging.getLogger(__name__)

BUFFER_DEPTH = Gauge(
    "aiops_telemetry_forward_buffer_points",
    "Points waiting to be sent to the anomaly service (all replicas).",
)
DROPPED = Counter(
    "aiops_telemetry_forward_dropped_points_total",
    "Points dropped because the buffer for the anomaly service was full.",
)
SENT = Counter(
    "aiops_telemetry_forward_sent_points_total", "Points the anomaly service acknowledged."
)
REFUSED = Counter(
    "aiops_telemetry_forward_refused_points_total",
    "Points the anomaly service acknowledged but refused to score.",
)
CONNECTED = Gauge(
    "aiops_telemetry_forward_connected",
    "1 while the stream to every anomaly replica works.",
)

Item = tuple[str, float, float, tuple[tuple[str, str], ...]]

# Forwarders not stopped yet; the two gauges are read from them at scrape time.
_LIVE: weakref.WeakSet[Forwarder] = weakref.WeakSet()
BUFFER_DEPTH.set_function(lambda: float(sum(f.depth for f in list(_LIVE))))
CONNECTED.set_function(lambda: float(bool(_LIVE) and all(f.connected for f in list(_LIVE))))


class Forwarder:
    """The bounded buffer and the background stream to one anomaly address (`target`)."""

    def __init__(
        self,
        stub: anomaly_grpc.AnomalyServiceStub,
        *,
        capacity: int,
        batch_size: int,
        timeout_seconds: float,
        stream_seconds: float = 60.0,
        log_every: float = 10.0,
        target: str = "",
    ) -> None:
        self._stub = stub
        self.target = target
        self._capacity = capacity
        self._batch = batch_size
        self._timeout = timeout_seconds
        self._stream_seconds = stream_seconds
        self._log_every = log_every
        self._buffer: collections.deque[Item] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._dropped_unlogged = 0
        self._last_drop_log = 0.0
        self._connected = False
        self.dropped = 0
        self.sent = 0
        _LIVE.add(self)

    @property
    def depth(self) -> int:
        return len(self._buffer)

    @property
    def connected(self) -> bool:
        return self._connected

    def offer(self, rows: Sequence[domain.Row]) -> None:
        """Queues points; drops (and counts) the oldest ones when the buffer is full."""
        for r in rows:
            self._buffer.append((r.key, r.time, r.value, tuple(r.labels.items())))
        self._shrink()
        self._wake.set()

    def _shrink(self) -> None:
        over = len(self._buffer) - self._capacity
        if over <= 0:
            return
        for _ in range(over):
            self._buffer.popleft()
        self.dropped += over
        DROPPED.inc(over)
        self._dropped_unlogged += over
        now = time.monotonic()
        if now - self._last_drop_log >= self._log_every:
            log.warning(
                "anomaly buffer full; oldest points dropped",
                extra={
                    "target": self.target,
                    "dropped": self._dropped_unlogged,
                    "dropped_total": self.dropped,
                    "capacity": self._capacity,
                },
            )
            self._dropped_unlogged = 0
            self._last_drop_log = now

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="telemetry-forwarder")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._dropped_unlogged:
            log.warning(
                "anomaly points dropped",
                extra={"target": self.target, "dropped": self._dropped_unlogged},
            )
        self._connected = False
        _LIVE.discard(self)

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            if not self._buffer:
                self._wake.clear()
                await self._wake.wait()
            try:
                await self._session()
                backoff = 0.1
            # InvalidStateError: anomaly ended the stream (a restart) before our next write.
            except (
                grpc.aio.AioRpcError,
                TimeoutError,
                ConnectionError,
                asyncio.InvalidStateError,
            ) as exc:
                if isinstance(exc, grpc.aio.AioRpcError):
                    code = exc.code().name
                else:
                    code = "ENDED" if isinstance(exc, asyncio.InvalidStateError) else "TIMEOUT"
                self._set_connected(False, code)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception:
                # Never let the stream die for good; the points stay buffered.
                log.exception("anomaly stream failed")
                self._set_connected(False, "INTERNAL")
                await asyncio.sleep(2.0)

    def _set_connected(self, up: bool, code: str = "") -> None:
        if up != self._connected:
            if up:
                log.info(
                    "anomaly stream connected",
                    extra={"target": self.target, "buffered": len(self._buffer)},
                )
            else:
                log.warning(
                    "anomaly stream down; buffering",
                    extra={"target": self.target, "code": code, "buffered": len(self._buffer)},
                )
        self._connected = up

    async def _session(self) -> None:
        loop = asyncio.get_running_loop()
        # grpc-stubs types the aio stream call as the sync one; it is a StreamStreamCall.
        call: Any = self._stub.ScorePoints(timeout=self._stream_seconds)  # type: ignore[call-arg]
        ends = loop.time() + self._stream_seconds - 2 * self._timeout
        seq = 0
        try:
            while loop.time() < ends:
                if not self._buffer:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(min(1.0, max(0.01, ends - loop.time()))):
                            await self._wake.wait()
                    continue
                batch = [self._buffer.popleft() for _ in range(min(self._batch, len(self._buffer)))]
                try:
                    seq += 1
                    async with asyncio.timeout(self._timeout):
                        await call.write(_request(batch, str(seq)))
                        reply = await call.read()
                    if reply is grpc.aio.EOF:  # type: ignore[attr-defined]
                        raise ConnectionError("anomaly closed the stream")
                except BaseException:
                    # Not acknowledged: back to the front, oldest first.
                    self._buffer.extendleft(reversed(batch))
                    self._shrink()
                    raise
                self._set_connected(True)
                self.sent += len(batch)
                SENT.inc(len(batch))
                if reply.rejected_count:
                    REFUSED.inc(reply.rejected_count)
            with contextlib.suppress(grpc.aio.AioRpcError):
                await call.done_writing()
        finally:
            call.cancel()


def _request(batch: Sequence[Item], batch_id: str) -> anomaly_service_pb2.ScorePointsRequest:
    """The columnar request of a batch: one entry per run of a series' points with the same
    labels, each series' points in the order they came."""
    runs: dict[str, list[list[Item]]] = {}
    for item in batch:
        series_runs = runs.get(item[0])
        if series_runs is None:
            runs[item[0]] = [[item]]
        elif series_runs[-1][-1][3] != item[3]:
            series_runs.append([item])
        else:
            series_runs[-1].append(item)
    request = anomaly_service_pb2.ScorePointsRequest(batch_id=batch_id)
    add = request.series_batches.add
    for key, series_runs in runs.items():
        for run in series_runs:
            add(
                series=key,
                labels=dict(run[0][3]),
                sample_time_micros=[round(when * 1_000_000) for _, when, _, _ in run],
                values=[value for _, _, value, _ in run],
            )
    return request


class Router:
    """One `Forwarder` per anomaly address; each point goes to the replica that owns its
    series on the consistent-hash ring of those addresses (the same ring the replicas use
    to refuse series they do not own)."""

    def __init__(self, forwarders: Mapping[str, Forwarder]) -> None:
        if not forwarders:
            raise ValueError("at least one forwarder is needed")
        self._forwarders = dict(forwarders)
        self._ring = sharding.Ring(list(self._forwarders))
        self._owners: dict[str, Forwarder] = {}

    @property
    def forwarders(self) -> list[Forwarder]:
        return list(self._forwarders.values())

    @property
    def depth(self) -> int:
        return sum(f.depth for f in self._forwarders.values())

    @property
    def dropped(self) -> int:
        return sum(f.dropped for f in self._forwarders.values())

    @property
    def sent(self) -> int:
        return sum(f.sent for f in self._forwarders.values())

    def owner(self, series: str) -> Forwarder:
        f = self._owners.get(series)
        if f is None:
            if len(self._owners) >= _OWNER_CACHE:
                self._owners.clear()
            f = self._owners[series] = self._forwarders[self._ring.owner(series)]
        return f

    def offer(self, rows: Sequence[domain.Row]) -> None:
        """Queues each point on the buffer of the replica owning its series."""
        if len(self._forwarders) == 1:
            next(iter(self._forwarders.values())).offer(rows)
            return
        parts: dict[int, tuple[Forwarder, list[domain.Row]]] = {}
        for r in rows:
            f = self.owner(r.key)
            part = parts.get(id(f))
            if part is None:
                parts[id(f)] = (f, [r])
            else:
                part[1].append(r)
        for f, part_rows in parts.values():
            f.offer(part_rows)

    def start(self) -> None:
        for f in self._forwarders.values():
            f.start()

    async def stop(self) -> None:
        await asyncio.gather(*(f.stop() for f in self._forwarders.values()))


_OWNER_CACHE = 100_000
