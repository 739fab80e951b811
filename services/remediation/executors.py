"""Executors: how a remediation's commands run.

- `dry-run` runs nothing and says so (the default);
- `kubernetes` runs each `kubectl` / `redis-cli` argument list as a subprocess (no shell)
  with a timeout, and POSTs HTTP steps (maintenance mode) as signed JSON;
- `webhook` POSTs the whole remediation as signed JSON to one URL, for an external runner.

Signatures: header `X-Aiops-Signature: sha256=<hex HMAC-SHA256 of the raw body>`, plus
`X-Aiops-Timestamp` (epoch seconds; the webhook payload also carries it inside the signed
body, so a receiver can reject replays). HTTP steps also send `X-Aiops-Remediation` and,
when a token file is configured, `Authorization: Bearer <token>` (the gateway's
maintenance API needs an admin token).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from services.remediation import domain
from services.remediation import playbook as pb

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Aiops-Signature"
TIMESTAMP_HEADER = "X-Aiops-Timestamp"
REMEDIATION_HEADER = "X-Aiops-Remediation"


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class DryRunExecutor:
    name = "dry-run"

    async def run(self, steps: Sequence[pb.Rendered], rem: domain.Remediation) -> domain.ExecResult:
        return domain.ExecResult(ran=False, ok=True, output="executor dry-run: nothing was run")


async def _post(
    session: aiohttp.ClientSession,
    url: str,
    payload: Mapping[str, Any],
    secret: bytes,
    timeout_seconds: float,
    headers: Mapping[str, str] | None = None,
) -> tuple[bool, str]:
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    sent = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(secret, body),
        TIMESTAMP_HEADER: str(int(time.time())),
        **(headers or {}),
    }
    try:
        async with session.post(
            url, data=body, headers=sent, timeout=aiohttp.ClientTimeout(total=timeout_seconds)
        ) as resp:
            text = (await resp.text())[:4096]
            return 200 <= resp.status < 300, f"HTTP {resp.status} {text}".rstrip()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return False, f"POST failed: {type(exc).__name__}"


class KubernetesExecutor:
    name = "kubernetes"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        secret: bytes,
        timeout_seconds: float,
        path_env: Mapping[str, str],
        bearer_file: Path | None = None,
    ) -> None:
        self._session = session
        self._secret = secret
        self._timeout = timeout_seconds
        self._env = dict(path_env)
        self._bearer_file = bearer_file

    async def _http_headers(self, rem: domain.Remediation) -> dict[str, str]:
        headers = {REMEDIATION_HEADER: rem.name}
        if self._bearer_file is not None:
            # Read at every call: the token file is rotated by whoever mints it.
            token = (await asyncio.to_thread(self._bearer_file.read_text)).strip()
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def run(self, steps: Sequence[pb.Rendered], rem: domain.Remediation) -> domain.ExecResult:
        output: list[str] = []
        captures: dict[str, str] = {}
        for step in steps:
            output.append(f"$ {step.text}")
            if step.argv:
                ok, text = await self._exec(step.argv)
            else:
                headers = await self._http_headers(rem)
                ok, text = await _post(
                    self._session, step.http, step.body, self._secret, self._timeout, headers
                )
            output.append(text)
            if not ok:
                return domain.ExecResult(True, False, "\n".join(output), captures)
            if step.capture:
                captures[step.capture] = text.strip()
        return domain.ExecResult(True, True, "\n".join(output), captures)

    async def _exec(self, argv: Sequence[str]) -> tuple[bool, str]:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                env=self._env,
            )
        except OSError as exc:
            return False, f"cannot start {argv[0]}: {exc.strerror}"
        try:
            async with asyncio.timeout(self._timeout):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return False, f"timed out after {self._timeout:g} s"
        text = out.decode(errors="replace")
        if proc.returncode != 0:
            return False, f"{text}exit status {proc.returncode}".strip()
        return True, text


class WebhookExecutor:
    name = "webhook"

    def __init__(
        self, session: aiohttp.ClientSession, url: str, secret: bytes, timeout_seconds: float
    ) -> None:
        self._session = session
        self._url = url
        self._secret = secret
        self._timeout = timeout_seconds

    async def run(self, steps: Sequence[pb.Rendered], rem: domain.Remediation) -> domain.ExecResult:
        payload = {
            "remediation": rem.name,
            "action": rem.action,
            "target": {
                "kind": rem.target.kind.value,
                "namespace": rem.target.namespace,
                "name": rem.target.name,
            },
            "parameters": dict(rem.parameters),
            "commands": [s.text for s in steps],
            "argv": [list(s.argv) for s in steps if s.argv],
            "anomaly": rem.anomaly,
            "requester": rem.requester,
            "reason": rem.reason,
            "timestamp": int(time.time()),
        }
        ok, text = await _post(self._session, self._url, payload, self._secret, self._timeout)
        return domain.ExecResult(True, ok, text)
