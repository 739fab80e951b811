"""Where the detectors run: `InlineScorer` on the event loop in short slices, or
`PoolScorer` in worker processes that each own the series hashed to them.

A worker keeps its series' detector state in its own memory, so a batch ships only points
and scores (no state) between processes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from services.anomaly import engine

T = TypeVar("T")

# Longest piece of one series scored without a chance to yield, and the detector time
# after which the event loop gets a turn (so health checks and other streams stay served
# while a big batch is scored).
SLICE_POINTS = 1000
SLICE_SECONDS = 0.005


def _pieces(groups: Sequence[engine.Group], size: int) -> list[tuple[int, engine.Group]]:
    """The groups, long ones cut in order into pieces of at most `size` points."""
    out: list[tuple[int, engine.Group]] = []
    for gi, g in enumerate(groups):
        key, ts, xs = g
        if len(ts) <= size:
            out.append((gi, g))
            continue
        for start in range(0, len(ts), size):
            out.append((gi, (key, ts[start : start + size], xs[start : start + size])))
    return out


class InlineScorer:
    """Runs the detectors on the event loop, yielding to it after every `slice_seconds` of
    detector time; a batch of short series pays no yield at all."""

    def __init__(
        self, slice_points: int = SLICE_POINTS, slice_seconds: float = SLICE_SECONDS
    ) -> None:
        self._engine = engine.Engine()
        self._slice = slice_points
        self._seconds = slice_seconds

    async def score(self, groups: Sequence[engine.Group]) -> list[engine.Scored]:
        pieces = _pieces(groups, self._slice)
        if len(pieces) == len(groups):
            # Nothing was cut: one engine call per turn of the loop, in order.
            out: list[engine.Scored] = []
            began = time.perf_counter()
            for g in groups:
                if time.perf_counter() - began > self._seconds:
                    await asyncio.sleep(0)
                    began = time.perf_counter()
                out.extend(self._engine.score((g,)))
            return out
        parts: list[list[engine.Scored]] = [[] for _ in groups]
        began = time.perf_counter()
        for gi, g in pieces:
            if time.perf_counter() - began > self._seconds:
                await asyncio.sleep(0)
                began = time.perf_counter()
            parts[gi].extend(self._engine.score((g,)))
        return [
            p[0]
            if len(p) == 1
            else engine.Scored(
                np.concatenate([x.values for x in p]), np.concatenate([x.flags for x in p])
            )
            for p in parts
        ]

    async def snapshot(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        return self._engine.snapshot(keys)

    async def restore(self, states: Mapping[str, Mapping[str, Any]]) -> list[str]:
        return self._engine.restore(states)

    async def drop(self, keys: Sequence[str]) -> None:
        self._engine.drop(keys)

    async def start(self) -> None:
        pass

    def close(self) -> None:
        pass


class PoolScorer:
    """Runs the detectors in `workers` processes (spawned: forking a process with gRPC
    threads is unsafe); series `k` lives in worker `shard_of(k)`."""

    def __init__(self, workers: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._pools = [
            concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx)
            for _ in range(workers)
        ]

    async def start(self) -> None:
        """Starts every worker now (spawn and imports take a second) rather than on the
        first batch."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(p, engine.worker_drop, []) for p in self._pools)
        )

    def _by_shard(self, keys: Sequence[str]) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for i, k in enumerate(keys):
            out.setdefault(engine.shard_of(k, len(self._pools)), []).append(i)
        return out

    async def score(self, groups: Sequence[engine.Group]) -> list[engine.Scored]:
        loop = asyncio.get_running_loop()
        shards = self._by_shard([g[0] for g in groups])
        futures = {
            shard: loop.run_in_executor(
                self._pools[shard],
                engine.worker_score,
                [groups[i] for i in idx],
            )
            for shard, idx in shards.items()
        }
        results: list[engine.Scored | None] = [None] * len(groups)
        for shard, fut in futures.items():
            for i, scored in zip(shards[shard], await fut, strict=True):
                results[i] = scored
        return [r if r is not None else engine.Scored.empty() for r in results]

    async def snapshot(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        out: dict[str, dict[str, Any]] = {}
        for shard, idx in self._by_shard(keys).items():
            out.update(
                await loop.run_in_executor(
                    self._pools[shard], engine.worker_snapshot, [keys[i] for i in idx]
                )
            )
        return out

    async def restore(self, states: Mapping[str, Mapping[str, Any]]) -> list[str]:
        loop = asyncio.get_running_loop()
        keys = list(states)
        bad: list[str] = []
        for shard, idx in self._by_shard(keys).items():
            part = {keys[i]: dict(states[keys[i]]) for i in idx}
            bad += await loop.run_in_executor(self._pools[shard], engine.worker_restore, part)
        return bad

    async def drop(self, keys: Sequence[str]) -> None:
        loop = asyncio.get_running_loop()
        for shard, idx in self._by_shard(keys).items():
            await loop.run_in_executor(
                self._pools[shard], engine.worker_drop, [keys[i] for i in idx]
            )

    def close(self) -> None:
        for p in self._pools:
            p.shutdown(wait=True, cancel_futures=True)


class CpuRunner:
    """Runs pure CPU-bound functions (drift tests) in a spawned process pool, or in a
    thread when `workers` is 0; at most `max_pending` at a time so queued work stays short."""

    def __init__(self, workers: int, max_pending: int = 32) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._pool = (
            concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
            if workers
            else None
        )
        self._pending = asyncio.Semaphore(max_pending)

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        async with self._pending:
            if self._pool is None:
                return await asyncio.to_thread(fn, *args)
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
