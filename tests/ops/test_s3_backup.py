"""Backups to an S3-compatible bucket: a real local S3 server (moto's), the same CLI path."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as redis

from services.kit import local_servers
from services.ops import commands
from tests.ops.test_backup import _fill


@pytest.fixture
def s3_env() -> Iterator[dict[str, str]]:
    port = local_servers.free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "local S3 server did not start"
                time.sleep(0.1)
        yield {
            "AIOPS_BACKUP_S3_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    finally:
        server.terminate()
        server.wait(timeout=10)


async def test_backup_to_a_bucket_lists_verifies_and_restores(
    s3_env: dict[str, str],
    restartable_redis: local_servers.LocalRedis,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import boto3  # type: ignore[import-untyped]

    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)  # boto3 reads credentials from the environment
    boto3.client("s3", endpoint_url=s3_env["AIOPS_BACKUP_S3_ENDPOINT_URL"]).create_bucket(
        Bucket="aiops"
    )
    await _fill(restartable_redis.url, database_url)
    env = {**s3_env, "AIOPS_REDIS_URL": restartable_redis.url, "AIOPS_DATABASE_URL": database_url}
    run = commands.backup_command
    assert await _in_thread(run, env, "create", None, "s3://aiops/nightly", False) == 0
    uploaded = capsys.readouterr().out.split("uploaded: ")[1].split()[0]
    assert await _in_thread(run, env, "list", None, "s3://aiops/nightly", False) == 0
    assert capsys.readouterr().out.split() == [uploaded]
    assert await _in_thread(run, env, "verify", uploaded, None, False) == 0
    assert capsys.readouterr().out.startswith("ok")
    client = redis.Redis.from_url(restartable_redis.url)
    try:
        keys = await client.dbsize()
        await client.flushdb()
        assert await _in_thread(run, env, "restore", uploaded, None, True) == 0
        assert await client.dbsize() == keys
    finally:
        await client.aclose()
    assert (
        await _in_thread(run, env, "verify", "s3://aiops/nightly/missing.tar.gz", None, False) == 1
    )


async def _in_thread(*args: object) -> int:
    import asyncio

    fn, *rest = args
    return await asyncio.to_thread(fn, *rest)  # type: ignore[arg-type, no-any-return]
