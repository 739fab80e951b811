"""Feedback in Redis.

Layout under a key prefix `p`:
- `p item:{id}`            the feedback as JSON, with the TTL (PX) set in the same script;
- `p idx:all`, `p idx:kind:{kind}`, `p idx:verdict:{verdict}`, `p idx:target:{kind}:{id}`
                           sorted sets of `{create_ms:013d}:{id}` at score 0, read in reverse
                           lexical order (newest first, exact keyset pagination);
- `p exp`                  sorted set scored by expiry (ms) of `member|kind|verdict|group|target`
                           so a sweep can remove the index entries of what has expired;
- `p grp:{group}:{verdict}` sorted sets of ids scored by expiry; `p groups` maps group -> JSON;
- `p idem:{key}`           the first stored JSON for an idempotency key, same TTL.
Each write is one Lua script, so an item and its index entries appear atomically, and a
batch of writes is one pipeline. Reads skip index entries whose item has expired, and the
sweeper removes them, so indexes do not outgrow the live data.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import redis.asyncio as redis
from prometheus_client import Counter, Gauge
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from services.feedback import domain
from services.kit import errors, tracing

log = logging.getLogger(__name__)
T = TypeVar("T")

REDIS_FAILURES = Counter(
    "aiops_redis_connection_failures_total",
    "Redis commands that failed because Redis could not be reached or timed out.",
)
STORAGE_FAILURES = Counter(
    "aiops_feedback_storage_failures_total",
    "Feedback writes that were not stored, by reason.",
    ["reason"],
)
# Exported at 0 from the start, so "any failure" alerts see the first one.
for _reason in ("redis_unavailable", "redis_error"):
    STORAGE_FAILURES.labels(_reason)
REDIS_UP = Gauge("aiops_redis_up", "1 when the last Redis command succeeded, else 0.")

_PUT = """
if KEYS[9] ~= nil then
  local first = redis.call('GET', KEYS[9])
  if first then return {1, first} end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
for i = 3, 6 do redis.call('ZADD', KEYS[i], 0, ARGV[3]) end
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[7], ARGV[4], ARGV[8])
redis.call('HSET', KEYS[8], ARGV[6], ARGV[7])
if KEYS[9] ~= nil then redis.call('SET', KEYS[9], ARGV[1], 'PX', ARGV[2]) end
return {0, ''}
"""

# Removes the index entries of up to ARGV[3] items that expired before ARGV[2].
_SWEEP = """
local p = ARGV[1]
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
for _, m in ipairs(gone) do
  local member, kind, verdict, grp, target =
    string.match(m, '^([^|]+)|([^|]+)|([^|]+)|([^|]+)|(.*)$')
  if member then
    local id = string.sub(member, 15)
    redis.call('ZREM', p .. 'idx:all', member)
    redis.call('ZREM', p .. 'idx:kind:' .. kind, member)
    redis.call('ZREM', p .. 'idx:verdict:' .. verdict, member)
    redis.call('ZREM', p .. 'idx:target:' .. kind .. ':' .. target, member)
    redis.call('ZREM', p .. 'grp:' .. grp .. ':' .. verdict, id)
  end
  redis.call('ZREM', KEYS[1], m)
end
return #gone
"""

# Scanning stops after this many index entries per call, so a filter that matches little
# cannot make one request walk the whole index; the caller gets a cursor to continue.
_SCAN_BUDGET = 5000


class RedisFeedbackStore:
    """`domain.FeedbackStore` on Redis."""

    def __init__(self, client: redis.Redis, prefix: str, timeout_seconds: float) -> None:
        self._r = client
        self._p = prefix
        self._timeout = timeout_seconds
        self._put = client.register_script(_PUT)
        self._sweep = client.register_script(_SWEEP)

    # -- plumbing ------------------------------------------------------------------------
    async def _call(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """Runs one Redis operation under a timeout; unreachable Redis -> UNAVAILABLE."""
        try:
            async with asyncio.timeout(self._timeout):
                result = await op()
        except (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError) as exc:
            REDIS_FAILURES.inc()
            REDIS_UP.set(0)
            log.warning("redis unavailable", extra={"op": what, "error": type(exc).__name__})
            if isinstance(exc, RedisConnectionError):
                # The idle pooled connections went down with Redis too: drop them all now
                # rather than failing one more call on each of them after Redis is back.
                await self._r.connection_pool.disconnect(inuse_connections=False)
            raise errors.Unavailable(
                "REDIS_UNAVAILABLE",
                "Feedback storage is unreachable; nothing was changed, retry shortly.",
                retry_after_seconds=1.0,
            ) from exc
        except RedisError as exc:
            log.error("redis error", extra={"op": what, "error": str(exc)[:200]})
            raise errors.Unavailable(
                "REDIS_ERROR",
                "Feedback storage refused the operation; retry shortly.",
                retry_after_seconds=1.0,
            ) from exc
        REDIS_UP.set(1)
        return result

    async def ping(self) -> None:
        await self._call("ping", self._r.ping)

    def _item(self, fid: str) -> str:
        return f"{self._p}item:{fid}"

    def _member(self, item: domain.Feedback) -> str:
        return f"{item.create_ms:013d}:{item.id}"

    def _index_keys(self, item: domain.Feedback) -> list[str]:
        kind = item.target_kind.value
        return [
            f"{self._p}idx:all",
            f"{self._p}idx:kind:{kind}",
            f"{self._p}idx:target:{kind}:{item.target_id}",
            f"{self._p}idx:verdict:{item.verdict.value}",
        ]

    # -- writes --------------------------------------------------------------------------
    async def put_many(
        self, items: Sequence[tuple[domain.Feedback, str]], ttl_seconds: float
    ) -> list[domain.Stored | errors.AiopsError]:
        ttl_ms = int(ttl_seconds * 1000)

        calls = [self._put_args(item, idem, ttl_ms) for item, idem in items]

        async def run() -> list[Any]:
            # EVALSHA straight away: redis-py's Script in a pipeline would first ask
            # SCRIPT EXISTS, one more round trip per batch. A NOSCRIPT reply (a restarted
            # Redis has an empty script cache) means nothing ran, so loading the script and
            # sending the same batch again is safe.
            for _ in range(2):
                async with self._r.pipeline(transaction=False) as pipe:
                    for keys, args in calls:
                        pipe.evalsha(self._put.sha, len(keys), *keys, *args)
                    replies: list[Any] = await pipe.execute(raise_on_error=False)
                if not any(isinstance(r, NoScriptError) for r in replies):
                    return replies
                await self._r.script_load(_PUT)
            return replies

        try:
            replies = await self._call("put", run)
        except errors.AiopsError:
            STORAGE_FAILURES.labels("redis_unavailable").inc(len(items))
            raise
        out: list[domain.Stored | errors.AiopsError] = []
        for (item, _), reply in zip(items, replies, strict=True):
            if isinstance(reply, ResponseError | Exception):
                STORAGE_FAILURES.labels("redis_error").inc()
                log.error("feedback write failed", extra={"error": str(reply)[:200]})
                out.append(
                    errors.Unavailable(
                        "REDIS_ERROR",
                        "Feedback storage refused the write; retry shortly.",
                        retry_after_seconds=1.0,
                    )
                )
            elif int(reply[0]) == 1:
                out.append(domain.Stored(_decode(reply[1]), replayed=True))
            else:
                out.append(domain.Stored(item, replayed=False))
        return out

    def _put_args(
        self, item: domain.Feedback, idem: str, ttl_ms: int
    ) -> tuple[list[str], list[str | int]]:
        p = self._p
        member = self._member(item)
        group_key, group_json = _group(item.group())
        kind, verdict = item.target_kind.value, item.verdict.value
        keys = [
            f"{p}item:{item.id}",
            f"{p}exp",
            f"{p}idx:all",
            f"{p}idx:kind:{kind}",
            f"{p}idx:target:{kind}:{item.target_id}",
            f"{p}idx:verdict:{verdict}",
            f"{p}grp:{group_key}:{verdict}",
            f"{p}groups",
        ]
        if idem:
            keys.append(f"{p}idem:{idem}")
        args: list[str | int] = [
            _encode(item),
            ttl_ms,
            member,
            int(item.expire_time * 1000),
            f"{member}|{kind}|{verdict}|{group_key}|{item.target_id}",
            group_key,
            group_json,
            item.id,
        ]
        return keys, args

    async def sweep(self, now: float, limit: int = 1000) -> int:
        """Removes index entries of expired feedback; returns how many were removed."""
        removed: int = await self._call(
            "sweep",
            lambda: self._sweep(keys=[f"{self._p}exp"], args=[self._p, int(now * 1000), limit]),
        )
        return int(removed)

    async def delete(self, feedback_ids: Sequence[str]) -> int:
        if not feedback_ids:
            return 0
        raw = await self._call("mget", lambda: self._r.mget([self._item(i) for i in feedback_ids]))
        items = [_decode(r) for r in raw if r is not None]
        if not items:
            return 0

        async def run() -> list[Any]:
            async with self._r.pipeline(transaction=True) as pipe:
                for item in items:
                    member = self._member(item)
                    pipe.delete(self._item(item.id))
                    for key in self._index_keys(item):
                        pipe.zrem(key, member)
                    pipe.zrem(
                        f"{self._p}exp",
                        f"{member}|{item.target_kind.value}|{item.verdict.value}"
                        f"|{item.group().key()}|{item.target_id}",
                    )
                    pipe.zrem(f"{self._p}grp:{item.group().key()}:{item.verdict.value}", item.id)
                return await pipe.execute()

        replies = await self._call("delete", run)
        per_item = len(replies) // len(items)
        return sum(int(replies[i * per_item]) for i in range(len(items)))

    async def delete_all(self) -> int:
        async def run() -> int:
            deleted = 0
            batch: list[str] = []
            async for key in self._r.scan_iter(match=f"{_glob(self._p)}*", count=1000):
                batch.append(key)
                if key.startswith(f"{self._p}item:"):
                    deleted += 1
                if len(batch) >= 1000:
                    await self._r.unlink(*batch)
                    batch.clear()
            if batch:
                await self._r.unlink(*batch)
            return deleted

        return await self._call("delete_all", run)

    # -- reads ---------------------------------------------------------------------------
    async def get(self, feedback_id: str) -> domain.Feedback | None:
        raw = await self._call("get", lambda: self._r.get(self._item(feedback_id)))
        return _decode(raw) if raw is not None else None

    def _scan_index(self, flt: domain.Filter) -> str:
        if flt.target_kind is not None and flt.target_id:
            return f"{self._p}idx:target:{flt.target_kind.value}:{flt.target_id}"
        if flt.verdict is not None:
            return f"{self._p}idx:verdict:{flt.verdict.value}"
        if flt.target_kind is not None:
            return f"{self._p}idx:kind:{flt.target_kind.value}"
        return f"{self._p}idx:all"

    async def scan(
        self, flt: domain.Filter, limit: int, after: str | None
    ) -> tuple[list[domain.Feedback], str | None]:
        index = self._scan_index(flt)
        high = f"({after}" if after else "+"
        if flt.end_time is not None:
            end = f"({int(flt.end_time * 1000):013d}"
            if high == "+" or end < high:
                high = end
        low = f"[{int(flt.start_time * 1000):013d}" if flt.start_time is not None else "-"
        found: list[domain.Feedback] = []
        budget = _SCAN_BUDGET
        chunk = min(max(limit + 1, 50), 1000)
        while budget > 0:
            # The client decodes responses, so members are str.
            members = cast(
                list[str],
                await self._call(
                    "zrange",
                    functools.partial(
                        self._r.zrange, index, high, low, desc=True, bylex=True, offset=0, num=chunk
                    ),
                ),
            )
            if not members:
                return found, None
            budget -= len(members)
            keys = [self._item(m[14:]) for m in members]
            raws = await self._call("mget", functools.partial(self._r.mget, keys))
            for member, raw in zip(members, raws, strict=True):
                if raw is None:
                    continue  # expired; the sweeper removes its index entries
                item = _decode(raw)
                if not flt.matches(item):
                    continue
                if len(found) == limit:
                    # One more match exists: the page is full and the next one starts here.
                    return found, self._member(found[-1])
                found.append(item)
                high = f"({member}"
            high = f"({members[-1]}"
            if len(members) < chunk:
                return found, None
        return found, high[1:] if found or high != "+" else None

    async def stats(
        self, target_kind: domain.TargetKind | None, now: float
    ) -> list[domain.GroupCounts]:
        now_ms = int(now * 1000)
        # The client decodes responses, so keys and values are str.
        groups = cast(
            dict[str, str],
            await self._call("hgetall", lambda: self._r.hgetall(f"{self._p}groups")),
        )
        chosen: list[tuple[str, domain.Group]] = []
        for key, raw in groups.items():
            fields = json.loads(raw)
            group = domain.Group(domain.TargetKind(fields[0]), *fields[1:])
            if target_kind is None or group.target_kind is target_kind:
                chosen.append((key, group))
        verdicts = list(domain.Verdict)

        async def run() -> list[Any]:
            async with self._r.pipeline(transaction=False) as pipe:
                for key, _ in chosen:
                    for v in verdicts:
                        zkey = f"{self._p}grp:{key}:{v.value}"
                        pipe.zremrangebyscore(zkey, "-inf", now_ms)
                        pipe.zcard(zkey)
                return await pipe.execute()

        replies = await self._call("stats", run) if chosen else []
        out: list[domain.GroupCounts] = []
        empty: list[str] = []
        for g, (key, group) in enumerate(chosen):
            counts = {
                v: int(replies[(g * len(verdicts) + i) * 2 + 1]) for i, v in enumerate(verdicts)
            }
            if any(counts.values()):
                out.append(domain.GroupCounts(group, counts))
            else:
                empty.append(key)
        if empty:
            await self._call("hdel", lambda: self._r.hdel(f"{self._p}groups", *empty))
        return out


def _glob(prefix: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]\\" else c for c in prefix)


@functools.lru_cache(maxsize=4096)
def _group(group: domain.Group) -> tuple[str, str]:
    """A group's storage key and JSON (hashing is the costly part, and a few groups take
    most of the writes)."""
    return group.key(), json.dumps(
        [group.target_kind.value, group.series, group.detector, group.action, group.signature]
    )


def _encode(item: domain.Feedback) -> str:
    return json.dumps(
        {
            "id": item.id,
            "k": item.target_kind.value,
            "t": item.target_id,
            "v": item.verdict.value,
            "r": item.rating,
            "c": item.comment,
            "s": item.series,
            "d": item.detector,
            "a": item.action,
            "g": item.signature,
            "l": dict(item.labels),
            "u": item.author,
            "ct": item.create_time,
            "et": item.expire_time,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def _decode(raw: str | bytes) -> domain.Feedback:
    d = json.loads(raw)
    return domain.Feedback(
        id=d["id"],
        target_kind=domain.TargetKind(d["k"]),
        target_id=d["t"],
        verdict=domain.Verdict(d["v"]),
        rating=d["r"],
        comment=d["c"],
        series=d["s"],
        detector=d["d"],
        action=d["a"],
        signature=d["g"],
        labels=d["l"],
        author=d["u"],
        create_time=d["ct"],
        expire_time=d["et"],
    )


def connect(url: str, timeout_seconds: float, max_connections: int) -> redis.Redis:
    """One client (connection pool) per process. Retries are off: a Redis that is down
    must fail the call fast so the caller gets UNAVAILABLE within its deadline."""
    return tracing.instrument_redis(
        redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=timeout_seconds,
            socket_timeout=timeout_seconds,
            retry=Retry(NoBackoff(), 0),
            max_connections=max_connections,
            health_check_interval=30,
        )
    )
