"""Coalescing: concurrent requests for the same RPC from the same caller become one batched
gRPC call, so the per-call cost (a gRPC round trip, interceptors, a Redis pipeline) is paid
once per batch instead of once per request. Each request still gets its own result: an item
that failed gets its own status, and nothing is answered before the batch call returned.
"""

from __future__ import annotations

import asyncio
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


class Coalescer:
    """Collects calls until the event loop has run everything that was ready, then sends
    them as one batch per caller identity (subject and roles travel as call metadata)."""

    def __init__(self, stub: Any, spec: BatchSpec, timeout_seconds: float) -> None:
        self._call = getattr(stub, spec.rpc)
        self._spec = spec
        self._timeout = timeout_seconds
        self._pending: dict[Metadata, list[tuple[Message, asyncio.Future[Outcome]]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, request: Message, metadata: Metadata) -> Outcome:
        """The backend's response for this request, or its error status.

        Raises:
            grpc.aio.AioRpcError: the batch call as a whole failed (e.g. UNAVAILABLE).
        """
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        queue = self._pending.get(metadata)
        if queue is None:
            queue = self._pending[metadata] = []
            asyncio.get_running_loop().call_soon(self._flush, metadata)
        queue.append((request, future))
        if len(queue) >= self._spec.max_items:
            self._flush(metadata)
        return await future

    def _flush(self, metadata: Metadata) -> None:
        queue = self._pending.pop(metadata, None)
        if not queue:
            return
        task = asyncio.get_running_loop().create_task(self._send(metadata, queue))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(
        self, metadata: Metadata, queue: list[tuple[Message, asyncio.Future[Outcome]]]
    ) -> None:
        BATCH_SIZE.labels(self._spec.rpc).observe(len(queue))
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
        """Waits for batches in flight, so nothing acknowledged by the backend is dropped."""
        for metadata in list(self._pending):
            self._flush(metadata)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
