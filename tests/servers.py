"""Pytest plugin: real Redis and PostgreSQL servers for the whole session.

Loaded by the root conftest with `pytest_plugins = ["tests.servers"]`. `AIOPS_REDIS_URL` and
`AIOPS_DATABASE_URL` point the tests at existing servers instead. A server that cannot start
fails every test that needs it, with the reason; nothing is skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from services.kit import local_servers


@pytest.fixture(scope="session")
def redis_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[local_servers.LocalRedis | None]:
    """The session's LocalRedis, or None when AIOPS_REDIS_URL names an existing server."""
    if os.environ.get("AIOPS_REDIS_URL"):
        yield None
        return
    server = local_servers.LocalRedis(tmp_path_factory.mktemp("redis"))
    try:
        server.start()
    except local_servers.LocalServerError as exc:
        pytest.fail(f"redis could not start: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_url(redis_server: local_servers.LocalRedis | None) -> str:
    """`redis://...` for the session's server; share it through `redis_prefix`."""
    return redis_server.url if redis_server else os.environ["AIOPS_REDIS_URL"]


@pytest.fixture(scope="session")
def postgres_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[local_servers.LocalPostgres | None]:
    """The session's LocalPostgres, or None when AIOPS_DATABASE_URL names an existing server."""
    if os.environ.get("AIOPS_DATABASE_URL"):
        yield None
        return
    server = local_servers.LocalPostgres(tmp_path_factory.mktemp("postgres"), ephemeral=True)
    try:
        server.start()
    except local_servers.LocalServerError as exc:
        server.close()
        pytest.fail(f"postgres could not start: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: local_servers.LocalPostgres | None) -> str:
    """`postgresql://...` for the session's server; share it through `pg_schema`."""
    return postgres_server.url if postgres_server else os.environ["AIOPS_DATABASE_URL"]


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of this test's own (`t:<hex>:`); its keys are deleted afterwards."""
    prefix = f"t:{uuid.uuid4().hex}:"
    yield prefix
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def pg_schema(postgres_url: str) -> AsyncIterator[str]:
    """A schema of this test's own, dropped with its contents afterwards.

    Use it with `server_settings={"search_path": pg_schema}` on the connection or pool.
    """
    schema = f"t_{uuid.uuid4().hex}"
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        yield schema
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[local_servers.LocalRedis]:
    """A started LocalRedis of this test's own, free to kill() and start() again."""
    server = local_servers.LocalRedis(tmp_path / "redis")
    try:
        server.start()
    except local_servers.LocalServerError as exc:
        pytest.fail(f"redis could not start: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.close()
