"""`aiops backup create|list|verify|restore`: one archive holding a Redis snapshot (every key
with its absolute expiry, so feedback keeps its remaining TTL), a PostgreSQL dump and the
suite's (non-secret) configuration, with a manifest of SHA-256 checksums.

Archive layout (`aiops-backup-<UTC time>.tar.gz`):
  manifest.json   format, creation time, sha256 and size of every other member, counts
  redis.jsonl     one {"key", "dump" (base64 DUMP payload), "expire_at_ms" or null} per key
  postgres.dump   `pg_dump --format=custom` of the database
  config.json     AIOPS_* settings in force, credentials masked
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import io
import json
import logging
import re
import subprocess
import tarfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as redis

from services.kit import local_servers

log = logging.getLogger(__name__)

FORMAT = 1
MEMBERS = ("redis.jsonl", "postgres.dump", "config.json")
_SECRET = re.compile(r"(PASSWORD|SECRET|TOKEN|KEY)$")
_CREDENTIALS = re.compile(r"(://[^:/@]+:)[^@]+@")


class BackupError(Exception):
    """A backup cannot be made, verified or restored; the message says why."""


@dataclass(frozen=True, slots=True)
class Report:
    archive: Path
    redis_keys: int
    postgres_tables: Mapping[str, int] = field(default_factory=dict)
    skipped_expired: int = 0

    def lines(self) -> list[str]:
        out = [f"archive: {self.archive}", f"redis keys: {self.redis_keys}"]
        if self.skipped_expired:
            out.append(f"redis keys skipped (expired since the backup): {self.skipped_expired}")
        out += [
            f"postgres {name}: {rows} rows" for name, rows in sorted(self.postgres_tables.items())
        ]
        return out


def _pg_tool(name: str) -> str:
    return str(local_servers.find_postgres_bin_dir() / name)


def _run(argv: list[str], what: str, stdin: bytes | None = None) -> bytes:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackupError(f"{what} could not run: {exc}") from exc
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise BackupError(f"{what} failed: {' | '.join(tail)}")
    return done.stdout


def _masked_config(env: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for key, value in sorted(env.items()):
        if not key.startswith("AIOPS_"):
            continue
        out[key] = "***" if _SECRET.search(key) else _CREDENTIALS.sub(r"\1***@", value)
    return out


async def _table_counts(database_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_type = 'BASE TABLE'"
            " AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
        counts = {}
        for r in rows:
            name = f"{r['table_schema']}.{r['table_name']}"
            ident = f'"{r["table_schema"]}"."{r["table_name"]}"'
            counts[name] = int(await conn.fetchval(f"SELECT count(*) FROM {ident}"))
        return counts
    finally:
        await conn.close()


async def _redis_snapshot(redis_url: str) -> tuple[bytes, int]:
    """Every key with its DUMP payload and absolute expiry, read in one MULTI/EXEC so the
    snapshot is consistent."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(count=1000)]
        async with client.pipeline(transaction=True) as pipe:
            pipe.time()
            for key in keys:
                pipe.dump(key)
                pipe.pttl(key)
            replies = await pipe.execute()
    finally:
        await client.aclose()
    seconds, micros = replies[0]
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    out = io.BytesIO()
    count = 0
    for i, key in enumerate(keys):
        payload, pttl = replies[1 + 2 * i], replies[2 + 2 * i]
        if payload is None:
            continue  # expired or deleted between the scan and the snapshot
        entry = {
            "key": base64.b64encode(key).decode(),
            "dump": base64.b64encode(payload).decode(),
            "expire_at_ms": now_ms + int(pttl) if int(pttl) >= 0 else None,
        }
        out.write(json.dumps(entry, separators=(",", ":")).encode() + b"\n")
        count += 1
    return out.getvalue(), count


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


async def create(redis_url: str, database_url: str, dest: Path, env: Mapping[str, str]) -> Report:
    """Writes one archive into `dest` and returns what it holds."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    redis_data, redis_keys = await _redis_snapshot(redis_url)
    pg_data = await asyncio.to_thread(
        _run, [_pg_tool("pg_dump"), "--format=custom", "--no-owner", database_url], "pg_dump"
    )
    tables = await _table_counts(database_url)
    config = json.dumps(_masked_config(env), indent=2).encode()
    members = {"redis.jsonl": redis_data, "postgres.dump": pg_data, "config.json": config}
    manifest = {
        "format": FORMAT,
        "created_at": stamp,
        "files": {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            for name, data in members.items()
        },
        "counts": {"redis_keys": redis_keys, "postgres_tables": tables},
    }
    final = await asyncio.to_thread(_write_archive, dest, stamp, manifest, members)
    log.info("backup created", extra={"archive": str(final), "redis_keys": redis_keys})
    return Report(final, redis_keys, tables)


def _write_archive(
    dest: Path, stamp: str, manifest: Mapping[str, Any], members: Mapping[str, bytes]
) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / f"aiops-backup-{stamp}.tar.gz"
    partial = final.with_suffix(".partial")
    with tarfile.open(partial, "w:gz") as tar:
        _add(tar, "manifest.json", json.dumps(manifest, indent=2).encode())
        for name, data in members.items():
            _add(tar, name, data)
    partial.rename(final)  # an archive is either complete or absent
    return final


def list_archives(dest: Path) -> list[Path]:
    return sorted(dest.glob("aiops-backup-*.tar.gz")) if dest.is_dir() else []


def _read(archive: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Reads and checks an archive; BackupError when anything does not match."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            data: dict[str, bytes] = {}
            for member in tar.getmembers():
                if not member.isfile() or member.name not in ("manifest.json", *MEMBERS):
                    raise BackupError(f"{archive.name}: unexpected member {member.name!r}")
                extracted = tar.extractfile(member)
                assert extracted is not None
                data[member.name] = extracted.read()
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise BackupError(f"{archive.name}: not a readable backup archive ({exc})") from exc
    try:
        manifest = json.loads(data["manifest.json"])
        files = manifest["files"]
    except (KeyError, ValueError, TypeError) as exc:
        raise BackupError(f"{archive.name}: manifest missing or unreadable") from exc
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{archive.name}: unknown format {manifest.get('format')!r}")
    for name in MEMBERS:
        if name not in data or name not in files:
            raise BackupError(f"{archive.name}: {name} is missing")
        if hashlib.sha256(data[name]).hexdigest() != files[name]["sha256"]:
            raise BackupError(
                f"{archive.name}: checksum mismatch in {name}; the archive is corrupt"
            )
    return manifest, data


def verify(archive: Path) -> Report:
    """Checks an archive without restoring it."""
    manifest, data = _read(archive)
    lines = [line for line in data["redis.jsonl"].splitlines() if line]
    for line in lines:
        entry = json.loads(line)
        base64.b64decode(entry["key"], validate=True)
        base64.b64decode(entry["dump"], validate=True)
    _run([_pg_tool("pg_restore"), "--list"], "pg_restore --list", stdin=data["postgres.dump"])
    counts = manifest["counts"]
    return Report(archive, len(lines), counts.get("postgres_tables", {}))


async def restore(
    archive: Path, redis_url: str, database_url: str, *, force: bool = False
) -> Report:
    """Restores an archive; refuses non-empty stores unless `force`."""
    manifest, data = await asyncio.to_thread(_read, archive)
    client = redis.Redis.from_url(redis_url)
    try:
        existing_keys = await client.dbsize()
        tables = await _table_counts(database_url)
        non_empty = {t: n for t, n in tables.items() if n and not t.endswith("aiops_migrations")}
        if (existing_keys or non_empty) and not force:
            raise BackupError(
                f"refusing to overwrite non-empty stores (redis keys: {existing_keys}, "
                f"postgres tables with rows: {len(non_empty)}); pass --force to replace them"
            )
        pg_dump = data["postgres.dump"]
        await asyncio.to_thread(
            _run,
            [
                _pg_tool("pg_restore"),
                "--clean",
                "--if-exists",
                "--no-owner",
                "--single-transaction",
                f"--dbname={database_url}",
            ],
            "pg_restore",
            pg_dump,
        )
        restored = skipped = 0
        now_ms = int(time.time() * 1000)
        async with client.pipeline(transaction=False) as pipe:
            for line in data["redis.jsonl"].splitlines():
                if not line:
                    continue
                entry = json.loads(line)
                expire_at = entry["expire_at_ms"]
                ttl = 0 if expire_at is None else expire_at - now_ms
                if expire_at is not None and ttl <= 0:
                    skipped += 1
                    continue
                pipe.restore(
                    base64.b64decode(entry["key"]),
                    ttl,
                    base64.b64decode(entry["dump"]),
                    replace=True,
                )
                restored += 1
            await pipe.execute()
        tables_after = await _table_counts(database_url)
    finally:
        await client.aclose()
    log.info("backup restored", extra={"archive": str(archive), "redis_keys": restored})
    del manifest
    return Report(archive, restored, tables_after, skipped)
