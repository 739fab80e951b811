"""The operator commands behind `aiops backup ...` and `aiops maintenance ...`."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from services.kit import settings as kit_settings
from services.ops import backup, s3

ENDPOINTS_FILE = "endpoints.json"


def endpoints(env: Mapping[str, str]) -> tuple[str, str]:
    """Redis and Postgres URLs: from the environment, else from the file `aiops run` writes
    for the servers it started."""
    redis_url, database_url = env.get("AIOPS_REDIS_URL", ""), env.get("AIOPS_DATABASE_URL", "")
    path = kit_settings.default_state_dir(env) / ENDPOINTS_FILE
    if (not redis_url or not database_url) and path.is_file():
        saved = json.loads(path.read_text())
        redis_url = redis_url or saved.get("redis_url", "")
        database_url = database_url or saved.get("database_url", "")
    if not redis_url or not database_url:
        raise SystemExit(
            "aiops: set AIOPS_REDIS_URL and AIOPS_DATABASE_URL, or start the suite with "
            "`make run` so its local servers are known"
        )
    return redis_url, database_url


def _backup_dir(env: Mapping[str, str], given: str | None) -> Path:
    if given:
        return Path(given)
    return Path(env.get("AIOPS_BACKUP_DIR") or kit_settings.default_state_dir(env) / "backups")


def backup_command(
    env: Mapping[str, str], action: str, archive: str | None, dest: str | None, force: bool
) -> int:
    """`dest` and `archive` may be local paths or `s3://bucket/prefix` locations."""
    location = dest or env.get("AIOPS_BACKUP_DIR")
    try:
        with tempfile.TemporaryDirectory(prefix="aiops-backup-") as scratch:
            if action == "list":
                found = (
                    s3.list_archives(str(location), env)
                    if s3.is_s3(location)
                    else [str(p) for p in backup.list_archives(_backup_dir(env, dest))]
                )
                print("\n".join(found))
                return 0
            if action == "verify":
                local = _local_archive(archive, Path(scratch), env)
                print("\n".join(["ok", *backup.verify(local).lines()]))
                return 0
            redis_url, database_url = endpoints(env)
            if action == "create":
                target = Path(scratch) if s3.is_s3(location) else _backup_dir(env, dest)
                report = asyncio.run(backup.create(redis_url, database_url, target, env))
                if s3.is_s3(location):
                    print(f"uploaded: {s3.upload(report.archive, str(location), env)}")
            else:
                local = _local_archive(archive, Path(scratch), env)
                report = asyncio.run(backup.restore(local, redis_url, database_url, force=force))
            print("\n".join(report.lines()))
            return 0
    except backup.BackupError as exc:
        print(f"aiops backup {action}: {exc}")
        return 1


def _local_archive(archive: str | None, scratch: Path, env: Mapping[str, str]) -> Path:
    name = _required(archive)
    return s3.download(name, scratch, env) if s3.is_s3(name) else Path(name)


def _required(archive: str | None) -> str:
    if not archive:
        raise SystemExit("aiops: name the archive (see `aiops backup list`)")
    return archive


def maintenance_command(
    env: Mapping[str, str], action: str, reason: str, minutes: float | None, url: str, token: str
) -> int:
    """Switches maintenance mode through the gateway's admin API."""
    body: dict[str, object] | None = None
    if action == "on":
        body = {"enabled": True, "reason": reason}
        if minutes:
            end = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=minutes)
            body["endTime"] = end.isoformat().replace("+00:00", "Z")
    elif action == "off":
        body = {"enabled": False}
    request = urllib.request.Request(
        f"{url.rstrip('/')}/api/v1/aiops/maintenance",
        data=json.dumps(body).encode() if body is not None else None,
        method="POST" if body is not None else "GET",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            print(resp.read().decode())
            return 0
    except urllib.error.HTTPError as err:
        print(err.read().decode())
    except urllib.error.URLError as err:
        print(f"aiops maintenance: gateway unreachable at {url}: {err.reason}")
    return 1
