"""Feedback storage on a real Redis: TTLs, indexes that shrink with expiry, idempotency,
pagination, deletes, stats, and a Redis that dies and comes back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from services.feedback import domain, storage
from services.kit import errors, local_servers

K, V = domain.TargetKind, domain.Verdict
WEEK = 7 * 24 * 3600.0


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.Redis]:
    c = storage.connect(redis_url, 0.5, 8)
    yield c
    await c.aclose()


@pytest.fixture
def store(client: redis.Redis, redis_prefix: str) -> storage.RedisFeedbackStore:
    return storage.RedisFeedbackStore(client, redis_prefix, 0.5)


def draft(i: int = 0, **overrides: object) -> domain.Draft:
    base: dict[str, object] = {
        "target_kind": K.ANOMALY,
        "target_id": f"a-{i % 3}",
        "verdict": V.CONFIRMED if i % 2 else V.FALSE_POSITIVE,
        "series": "latency_p95",
    }
    base.update(overrides)
    return domain.Draft(**base)  # type: ignore[arg-type]


async def test_submit_sets_the_week_ttl_on_the_stored_key(
    store: storage.RedisFeedbackStore, client: redis.Redis, redis_prefix: str
) -> None:
    book = domain.FeedbackBook(store, WEEK)
    stored = await book.submit(draft(), "alice")
    ttl = await client.ttl(f"{redis_prefix}item:{stored.feedback.id}")
    assert 604_790 <= ttl <= 604_800
    assert stored.feedback.expire_time - stored.feedback.create_time == WEEK
    assert (await book.get(f"feedback/{stored.feedback.id}")) == stored.feedback


async def test_idempotency_key_stores_one_feedback_and_returns_the_first(
    store: storage.RedisFeedbackStore,
) -> None:
    book = domain.FeedbackBook(store, WEEK)
    first = await book.submit(draft(), "alice", "key-1")
    again = await book.submit(draft(comment="different"), "alice", "key-1")
    assert not first.replayed and again.replayed
    assert again.feedback == first.feedback
    page = await book.list(domain.Filter(), 50, "")
    assert [i.id for i in page.items] == [first.feedback.id]


async def test_list_is_newest_first_and_pages_cover_everything_once(
    store: storage.RedisFeedbackStore,
) -> None:
    clock = [1_800_000_000.0]
    book = domain.FeedbackBook(store, WEEK, clock=lambda: clock[0])
    ids = []
    for i in range(23):
        clock[0] += 1
        ids.append((await book.submit(draft(i), "bob")).feedback.id)
    seen: list[str] = []
    token = ""
    while True:
        page = await book.list(domain.Filter(), 5, token)
        seen += [i.id for i in page.items]
        token = page.next_token
        if not token:
            break
    assert seen == list(reversed(ids))


async def test_list_filters_by_target_verdict_and_time(
    store: storage.RedisFeedbackStore,
) -> None:
    clock = [1_800_000_000.0]
    book = domain.FeedbackBook(store, WEEK, clock=lambda: clock[0])
    items = []
    for i in range(12):
        clock[0] += 10
        items.append((await book.submit(draft(i), "bob")).feedback)
    flt = domain.Filter(target_kind=K.ANOMALY, target_id="a-1", verdict=V.CONFIRMED)
    page = await book.list(flt, 50, "")
    expected = [i for i in reversed(items) if i.target_id == "a-1" and i.verdict is V.CONFIRMED]
    assert page.items == expected and expected
    window = domain.Filter(start_time=items[3].create_time, end_time=items[6].create_time)
    page = await book.list(window, 50, "")
    assert [i.id for i in page.items] == [items[5].id, items[4].id, items[3].id]
    two = await book.list(domain.Filter(verdict=V.FALSE_POSITIVE), 2, "")
    rest = await book.list(domain.Filter(verdict=V.FALSE_POSITIVE), 50, two.next_token)
    assert len(two.items) == 2 and len(rest.items) == 4


async def test_indexes_shrink_when_feedback_expires(
    store: storage.RedisFeedbackStore, client: redis.Redis, redis_prefix: str
) -> None:
    book = domain.FeedbackBook(store, ttl_seconds=0.3)
    for i in range(10):
        await book.submit(draft(i, action="restart", signature="sig"), "carol", f"k{i}")
    assert len(await client.keys(f"{redis_prefix}*")) > 10
    assert (await book.stats(None))[0].counts[V.CONFIRMED] == 5
    await asyncio.sleep(0.4)
    assert (await book.list(domain.Filter(), 50, "")).items == []
    removed = await store.sweep(time.time())
    assert removed == 10
    assert await book.stats(None) == []
    assert await client.keys(f"{redis_prefix}*") == []


async def test_delete_by_name_filter_and_all(store: storage.RedisFeedbackStore) -> None:
    book = domain.FeedbackBook(store, WEEK)
    items = [(await book.submit(draft(i), "dan")).feedback for i in range(9)]
    assert await book.delete(f"feedback/{items[0].id}", None, False) == 1
    assert await book.delete(f"feedback/{items[0].id}", None, False) == 0
    assert await book.delete("", domain.Filter(target_kind=K.ANOMALY, target_id="a-1"), False) == 3
    remaining = (await book.list(domain.Filter(), 50, "")).items
    assert len(remaining) == 5 and all(i.target_id != "a-1" for i in remaining)
    assert await book.delete("", None, True) == 5
    assert (await book.list(domain.Filter(), 50, "")).items == []


async def test_delete_needs_exactly_one_scope(store: storage.RedisFeedbackStore) -> None:
    book = domain.FeedbackBook(store, WEEK)
    for name, flt, everything in (
        ("", None, False),
        ("feedback/x", None, True),
        ("", domain.Filter(), False),
    ):
        with pytest.raises(errors.InvalidArgument) as caught:
            await book.delete(name, flt, everything)
        assert caught.value.reason == "DELETE_SCOPE_INVALID"


async def test_stats_count_verdicts_per_group(store: storage.RedisFeedbackStore) -> None:
    book = domain.FeedbackBook(store, WEEK)
    for verdict in (V.HELPFUL, V.HELPFUL, V.NOT_HELPFUL):
        await book.submit(
            draft(target_kind=K.SUGGESTION, verdict=verdict, action="scale_up", signature="s1"),
            "erin",
        )
    await book.submit(draft(1), "erin")
    suggestion = await book.stats(K.SUGGESTION)
    assert len(suggestion) == 1
    assert suggestion[0].group.action == "scale_up"
    assert suggestion[0].counts[V.HELPFUL] == 2 and suggestion[0].counts[V.NOT_HELPFUL] == 1
    assert len(await book.stats(None)) == 2


async def test_unreachable_redis_fails_fast_and_recovers_without_losing_data(
    restartable_redis: local_servers.LocalRedis,
) -> None:
    client = storage.connect(restartable_redis.url, 0.3, 4)
    try:
        store = storage.RedisFeedbackStore(client, "chaos:", 0.3)
        book = domain.FeedbackBook(store, WEEK)
        acked = [(await book.submit(draft(i), "frank")).feedback for i in range(20)]
        await asyncio.to_thread(restartable_redis.kill)
        begin = time.monotonic()
        with pytest.raises(errors.Unavailable) as caught:
            await book.submit(draft(), "frank")
        assert time.monotonic() - begin < 1.0
        assert caught.value.reason == "REDIS_UNAVAILABLE"
        assert caught.value.retry_after_seconds
        await asyncio.to_thread(restartable_redis.start)
        after = await book.submit(draft(), "frank")
        listed = (await book.list(domain.Filter(), 500, "")).items
        assert {i.id for i in acked} | {after.feedback.id} == {i.id for i in listed}
    finally:
        await client.aclose()
