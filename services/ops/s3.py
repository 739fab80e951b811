"""Backups in an S3-compatible bucket (optional: needs `pip install 'aiops-suite[s3]'`).

Locations are `s3://bucket/prefix`. The endpoint comes from `AIOPS_BACKUP_S3_ENDPOINT_URL`
(unset: AWS); credentials from the standard AWS variables or files.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from services.ops.backup import BackupError

SCHEME = "s3://"


def is_s3(location: str | None) -> bool:
    return bool(location) and str(location).startswith(SCHEME)


def _split(url: str) -> tuple[str, str]:
    bucket, _, key = url[len(SCHEME) :].partition("/")
    if not bucket:
        raise BackupError(f"{url}: expected s3://bucket/prefix")
    return bucket, key


def _client(env: Mapping[str, str]) -> Any:
    try:
        import boto3  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError as exc:
        raise BackupError("S3 backups need boto3: pip install 'aiops-suite[s3]'") from exc
    return boto3.client("s3", endpoint_url=env.get("AIOPS_BACKUP_S3_ENDPOINT_URL") or None)


def upload(path: Path, location: str, env: Mapping[str, str]) -> str:
    """Uploads an archive under the prefix; returns its s3:// URL."""
    bucket, prefix = _split(location)
    key = f"{prefix.rstrip('/')}/{path.name}" if prefix else path.name
    try:
        _client(env).upload_file(str(path), bucket, key)
    except Exception as exc:  # botocore raises many unrelated types; report them all alike
        raise BackupError(f"upload to {location} failed: {type(exc).__name__}: {exc}") from exc
    return f"{SCHEME}{bucket}/{key}"


def download(url: str, dest_dir: Path, env: Mapping[str, str]) -> Path:
    bucket, key = _split(url)
    target = dest_dir / Path(key).name
    try:
        _client(env).download_file(bucket, key, str(target))
    except Exception as exc:  # see upload
        raise BackupError(f"download of {url} failed: {type(exc).__name__}: {exc}") from exc
    return target


def list_archives(location: str, env: Mapping[str, str]) -> list[str]:
    bucket, prefix = _split(location)
    try:
        pages = _client(env).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    except Exception as exc:  # see upload
        raise BackupError(f"listing {location} failed: {type(exc).__name__}: {exc}") from exc
    return sorted(f"{SCHEME}{bucket}/{k}" for k in keys if Path(k).name.startswith("aiops-backup-"))
