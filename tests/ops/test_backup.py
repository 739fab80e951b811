"""Backup round trip on real Redis and Postgres: fill, back up, wipe, restore, compare."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as redis

from services.feedback import domain, storage
from services.kit import local_servers
from services.ops import backup

WEEK = 7 * 24 * 3600.0


async def _fill(redis_url: str, database_url: str) -> list[str]:
    client = storage.connect(redis_url, 1.0, 4)
    try:
        book = domain.FeedbackBook(storage.RedisFeedbackStore(client, "aiops:feedback:", 1.0), WEEK)
        ids = []
        for i in range(25):
            draft = domain.Draft(domain.TargetKind.ANOMALY, f"a-{i}", domain.Verdict.CONFIRMED)
            ids.append((await book.submit(draft, "ops", f"idem-{i}")).feedback.id)
        await client.set("aiops:persistent", "no ttl")
    finally:
        await client.aclose()
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "CREATE TABLE points (series text, ts timestamptz, value double precision);"
            "CREATE TABLE audit (id bigserial PRIMARY KEY, who text, what text);"
            "CREATE TABLE thresholds (series text PRIMARY KEY, offset_value double precision)"
        )
        await conn.executemany(
            "INSERT INTO points VALUES ($1, now() - $2 * interval '1 minute', $3)",
            [("latency_p95", i, float(i)) for i in range(500)],
        )
        await conn.execute("INSERT INTO audit (who, what) VALUES ('alice', 'scale_up')")
        await conn.execute("INSERT INTO thresholds VALUES ('latency_p95', 0.05)")
    finally:
        await conn.close()
    return ids


async def _wipe(redis_url: str, database_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("DROP TABLE points, audit, thresholds")
    finally:
        await conn.close()


async def test_round_trip_restores_every_key_ttl_and_row(
    restartable_redis: local_servers.LocalRedis, database_url: str, tmp_path: Path
) -> None:
    url = restartable_redis.url
    ids = await _fill(url, database_url)
    client = redis.Redis.from_url(url)
    try:
        ttl_before = {i: await client.pttl(f"aiops:feedback:item:{i}") for i in ids}
        keys_before = sorted(await client.keys("*"))
        made = await backup.create(url, database_url, tmp_path / "backups", {"AIOPS_X": "1"})
        assert backup.list_archives(tmp_path / "backups") == [made.archive]
        assert backup.verify(made.archive).redis_keys == len(keys_before)
        await _wipe(url, database_url)
        await client.set("stray", "1")
        with pytest.raises(backup.BackupError, match="non-empty"):
            await backup.restore(made.archive, url, database_url)
        await client.delete("stray")
        report = await backup.restore(made.archive, url, database_url)
        assert sorted(await client.keys("*")) == keys_before
        for i in ids:
            after = await client.pttl(f"aiops:feedback:item:{i}")
            assert 0 < ttl_before[i] - after < 5_000
        assert await client.pttl("aiops:persistent") == -1
    finally:
        await client.aclose()
    assert report.postgres_tables["public.points"] == 500
    assert report.postgres_tables["public.audit"] == 1
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT offset_value FROM thresholds") == 0.05
    finally:
        await conn.close()
    reader = storage.connect(url, 1.0, 2)
    try:
        book = domain.FeedbackBook(storage.RedisFeedbackStore(reader, "aiops:feedback:", 1.0), WEEK)
        page = await book.list(domain.Filter(), 500, "")
    finally:
        await reader.aclose()
    assert {i.id for i in page.items} == set(ids)


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "not_gzip"])
async def test_corrupted_archives_are_refused(
    restartable_redis: local_servers.LocalRedis, database_url: str, tmp_path: Path, damage: str
) -> None:
    await _fill(restartable_redis.url, database_url)
    made = await backup.create(restartable_redis.url, database_url, tmp_path, {})
    raw = made.archive.read_bytes()
    bad = tmp_path / "aiops-backup-bad.tar.gz"
    if damage == "truncate":
        bad.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":
        # rebuild with one member altered, so gzip and tar are fine but a checksum is not
        import io
        import tarfile

        out = io.BytesIO()
        with (
            tarfile.open(made.archive, "r:gz") as src,
            tarfile.open(fileobj=out, mode="w:gz") as dst,
        ):
            for member in src.getmembers():
                data = src.extractfile(member).read()  # type: ignore[union-attr]
                if member.name == "redis.jsonl":
                    data = data.replace(b"a", b"b", 1)
                member.size = len(data)
                dst.addfile(member, io.BytesIO(data))
        bad.write_bytes(out.getvalue())
    elif damage == "empty":
        bad.write_bytes(b"")
    else:
        bad.write_bytes(b"hello, not an archive")
    with pytest.raises(backup.BackupError) as caught:
        backup.verify(bad)
    assert bad.name in str(caught.value)
    with pytest.raises(backup.BackupError):
        await backup.restore(bad, restartable_redis.url, database_url, force=True)
