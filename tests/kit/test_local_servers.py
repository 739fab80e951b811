"""Real Redis and PostgreSQL servers from services.kit.local_servers."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from services.kit import local_servers


async def test_redis_set_get_roundtrip_on_loopback(redis_url: str, redis_prefix: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await client.set(f"{redis_prefix}greeting", "hello")
        assert await client.get(f"{redis_prefix}greeting") == "hello"
        if "127.0.0.1" in redis_url:
            assert (await client.config_get("bind"))["bind"] == "127.0.0.1"
    finally:
        await client.aclose()


async def test_redis_kill_then_start_keeps_port_and_aof_data(
    restartable_redis: local_servers.LocalRedis,
) -> None:
    port, url = restartable_redis.port, restartable_redis.url
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        assert (await client.config_get("appendonly"))["appendonly"] == "yes"
        await client.set("survivor", "still here")
    finally:
        await client.aclose()

    await asyncio.to_thread(restartable_redis.kill)
    assert not restartable_redis.running
    await asyncio.to_thread(restartable_redis.start)

    assert restartable_redis.running
    assert restartable_redis.port == port
    client = aioredis.Redis.from_url(restartable_redis.url, decode_responses=True)
    try:
        assert await client.get("survivor") == "still here"
    finally:
        await client.aclose()


def test_redis_start_on_taken_port_fails_with_server_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = local_servers.LocalRedis(tmp_path, port=taken.getsockname()[1])
        with pytest.raises(local_servers.LocalServerError, match="Address already in use"):
            server.start()
    assert not server.running


def test_url_before_first_start_raises(tmp_path: Path) -> None:
    with pytest.raises(local_servers.LocalServerError, match="start"):
        _ = local_servers.LocalRedis(tmp_path).url


async def test_postgres_create_insert_select_in_own_schema(
    postgres_url: str, pg_schema: str
) -> None:
    conn = await asyncpg.connect(postgres_url, server_settings={"search_path": pg_schema})
    try:
        await conn.execute("CREATE TABLE item (id int PRIMARY KEY, name text NOT NULL)")
        await conn.execute("INSERT INTO item VALUES (1, 'disk'), (2, 'cpu')")
        rows = await conn.fetch("SELECT name FROM item ORDER BY id")
        assert [r["name"] for r in rows] == ["disk", "cpu"]
        schemas = await conn.fetch("SELECT schemaname FROM pg_tables WHERE tablename = 'item'")
        assert [r["schemaname"] for r in schemas] == [pg_schema]
    finally:
        await conn.close()


async def _count_rows(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM kept"))
    finally:
        await conn.close()


async def test_postgres_stop_or_kill_then_start_keeps_port_and_data(tmp_path: Path) -> None:
    server = local_servers.LocalPostgres(tmp_path / "pg", ephemeral=True)
    try:
        await asyncio.to_thread(server.start)
        port = server.port
        conn = await asyncpg.connect(server.url)
        try:
            assert await conn.fetchval("SHOW fsync") == "off"
            assert await conn.fetchval("SHOW listen_addresses") == "127.0.0.1"
            assert await conn.fetchval("SELECT current_user") == local_servers.PG_USER
            assert await conn.fetchval("SELECT current_database()") == local_servers.PG_DATABASE
            await conn.execute("CREATE TABLE kept (n int)")
            await conn.execute("INSERT INTO kept SELECT generate_series(1, 100)")
        finally:
            await conn.close()

        await asyncio.to_thread(server.stop)
        assert not server.running
        await asyncio.to_thread(server.start)
        assert server.port == port
        assert await _count_rows(server.url) == 100

        await asyncio.to_thread(server.kill)
        await asyncio.to_thread(server.start)
        assert server.port == port
        assert await _count_rows(server.url) == 100
    finally:
        cluster = server.cluster_dir
        await asyncio.to_thread(server.close)
    assert not server.running
    if os.geteuid() == 0 and cluster is not None and not cluster.is_relative_to(tmp_path):
        assert not cluster.exists()  # root's scratch copy outside tmp_path is removed
