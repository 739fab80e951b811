"""Migrations on a real PostgreSQL: idempotent and safe from several replicas at once."""

from __future__ import annotations

import asyncio

from services.kit import pg

MIGRATIONS = [
    pg.Migration(1, "CREATE TABLE widgets (id bigserial PRIMARY KEY, name text NOT NULL)"),
    pg.Migration(2, "ALTER TABLE widgets ADD COLUMN size integer NOT NULL DEFAULT 0"),
]


async def test_migrations_apply_once_even_when_run_concurrently(
    postgres_url: str, pg_schema: str
) -> None:
    async with pg.pool(postgres_url, schema=pg_schema, max_size=4) as db:
        results = await asyncio.gather(*(pg.migrate(db, "test", MIGRATIONS) for _ in range(4)))
        assert sorted(v for r in results for v in r) == [1, 2]
        assert await pg.migrate(db, "test", MIGRATIONS) == []
        await db.execute("INSERT INTO widgets (name, size) VALUES ('a', 3)")
        assert await db.fetchval("SELECT size FROM widgets") == 3
