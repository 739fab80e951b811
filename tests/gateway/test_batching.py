"""The coalescer: one batch per caller in flight, the backlog goes out as the next batch,
every request gets its own outcome, and closing sends what waits."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from aiops.feedback.v1 import feedback_service_pb2 as fb_svc
from google.protobuf.message import Message

from gateway import batching


class _Stub:
    """A batch RPC that answers only when the test releases it."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.release = asyncio.Event()

    async def Batch(self, request: Any, **call_options: Any) -> Any:
        self.calls.append([r.idempotency_key for r in request.requests])
        await self.release.wait()
        return request


def _spec() -> batching.BatchSpec:
    def wrap(requests: Sequence[Message]) -> Message:
        return fb_svc.BatchSubmitFeedbackRequest(requests=list(requests))  # type: ignore[arg-type]

    def unwrap(reply: Message) -> list[batching.Outcome]:
        return list(reply.requests)  # type: ignore[attr-defined]

    return batching.BatchSpec("Batch", wrap, unwrap, max_in_flight=1)


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def _request(key: str) -> fb_svc.SubmitFeedbackRequest:
    return fb_svc.SubmitFeedbackRequest(idempotency_key=key)


async def test_requests_arriving_while_a_batch_is_in_flight_go_out_together_next() -> None:
    stub = _Stub()
    coalescer = batching.Coalescer(stub, _spec(), timeout_seconds=5)
    ident = (("x-aiops-subject", "op"),)
    first = asyncio.create_task(coalescer.submit(_request("a"), ident))
    await _settle()
    assert stub.calls == [["a"]]
    later = [asyncio.create_task(coalescer.submit(_request(k), ident)) for k in "bcd"]
    await _settle()
    assert stub.calls == [["a"]]  # the backlog waits for the batch in flight
    stub.release.set()
    results = await asyncio.gather(first, *later)
    assert [r.idempotency_key for r in results] == ["a", "b", "c", "d"]  # type: ignore[union-attr]
    assert stub.calls == [["a"], ["b", "c", "d"]]
    await coalescer.aclose()


async def test_callers_are_batched_apart_and_close_sends_what_waits() -> None:
    stub = _Stub()
    coalescer = batching.Coalescer(stub, _spec(), timeout_seconds=5)
    one, two = (("x-aiops-subject", "one"),), (("x-aiops-subject", "two"),)
    tasks = [
        asyncio.create_task(coalescer.submit(_request("1a"), one)),
        asyncio.create_task(coalescer.submit(_request("2a"), two)),
    ]
    await _settle()
    tasks.append(asyncio.create_task(coalescer.submit(_request("1b"), one)))
    await _settle()
    stub.release.set()
    await coalescer.aclose()
    assert sorted(map(tuple, stub.calls)) == [("1a",), ("1b",), ("2a",)]
    assert all(t.done() for t in tasks)
