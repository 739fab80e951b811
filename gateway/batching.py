"""Coalescing: concurrent requests for the same RPC from the same caller become one batched
gRPC call, so the per-call cost (a gRPC round trip, interceptors, a Redis pipeline) is paid
once per batch instead of once per request. Each request still gets its own result: an item
that failed gets its own status, and nothing is answered before the batch call returned.

At most `max_in_flight` batches per caller are on the wire at once; requests that arrive
meanwhile wait for the next one. Under load that makes batches grow with the backlog instead
of many small batches each paying the full per-call cost (the way Nagle's algorithm does for
TCP segments), and without load a request still leaves on the next loop iteration.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import Message
from google.rpc import status_pb2
from prometheus_client import Histogram

BATCH_SIZE = Histogram(
    "aiops_gateway_batch_size",
    "Requests coalesced into one batched backend call.",
    ["rpc"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)

Metadata: TypeAlias = tuple[tuple[str, str], ...]
Outcome: TypeAlias = Message | status_pb2.Status


@dataclass(frozen=True, slots=True)
class BatchSpec:
    """How one RPC is batched: the batch RPC's name, how requests are wrapped into its
    request, and how its response is split into one outcome per request."""

    rpc: str
    wrap: Callable[[Sequence[Message]], Message]
    unwrap: Callable[[Message], list[Outcome]]
    max_items: int = 256
    max_in_flight: int = 1


_Queue: TypeAlias = list[tuple[Message, "asyncio.Future[Outcome]"]]


class Coalescer:
    """Collects calls until the event loop has run everything that was ready, then sends
    them as one batch per caller identity (subject and roles travel as call metadata), with
    at most `spec.max_in_flight` batches of one caller in flight."""

    def __init__(self, stub: Any, spec: BatchSpec, timeout_seconds: float) -> None:
        self._call = getattr(stub, spec.rpc)
        self._spec = spec
        self._timeout = timeout_seconds
        self._size = BATCH_SIZE.labels(spec.rpc)
        # Per caller: the requests waiting, and the context of the first of them (the batch
        # call runs in it, so its trace continues that request's trace).
        self._pending: dict[Metadata, tuple[_Queue, contextvars.Context]] = {}
        self._scheduled: set[Metadata] = set()
        self._in_flight: dict[Metadata, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, request: Message, metadata: Metadata) -> Outcome:
        """The backend's response for this request, or its error status.

        Raises:
            grpc.aio.AioRpcError: the batch call as a whole failed (e.g. UNAVAILABLE).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        entry = self._pending.get(metadata)
        if entry is None:
            entry = self._pending[metadata] = ([], contextvars.copy_context())
        queue = entry[0]
        queue.append((request, future))
        if len(queue) >= self._spec.max_items:
            self._flush(metadata, force=True)
        elif (
            metadata not in self._scheduled
            and self._in_flight.get(metadata, 0) < self._spec.max_in_flight
        ):
            self._scheduled.add(metadata)
            loop.call_soon(self._flush, metadata)
        return await future

    def _flush(self, metadata: Metadata, force: bool = False) -> None:
        self._scheduled.discard(metadata)
        in_flight = self._in_flight.get(metadata, 0)
        if not force and in_flight >= self._spec.max_in_flight:
            return  # the batch in flight sends this queue when it completes
        entry = self._pending.pop(metadata, None)
        if entry is None or not entry[0]:
            return
        queue, context = entry
        self._in_flight[metadata] = in_flight + 1
        task = asyncio.get_running_loop().create_task(self._send(metadata, queue), context=context)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._sent(t, metadata))

    def _sent(self, task: asyncio.Task[None], metadata: Metadata) -> None:
        self._tasks.discard(task)
        left = self._in_flight.get(metadata, 1) - 1
        if left > 0:
            self._in_flight[metadata] = left
        else:
            self._in_flight.pop(metadata, None)
        if metadata in self._pending and metadata not in self._scheduled:
            self._flush(metadata)

    async def _send(self, metadata: Metadata, queue: _Queue) -> None:
        self._size.observe(len(queue))
        try:
            reply = await self._call(
                self._spec.wrap([r for r, _ in queue]), timeout=self._timeout, metadata=metadata
            )
            outcomes = self._spec.unwrap(reply)
            if len(outcomes) != len(queue):
                raise RuntimeError("batch response does not match its request")
        except (grpc.aio.AioRpcError, RuntimeError) as exc:
            for _, future in queue:
                if not future.done():
                    future.set_exception(exc)
            return
        except asyncio.CancelledError:
            for _, future in queue:
                future.cancel()
            raise
        for (_, future), outcome in zip(queue, outcomes, strict=True):
            if not future.done():  # its client may have gone away
                future.set_result(outcome)

    async def aclose(self) -> None:
        """Sends what waits and waits for batches in flight, so nothing acknowledged by the
        backend is dropped."""
        while self._pending or self._tasks:
            for metadata in list(self._pending):
                self._flush(metadata, force=True)
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
