"""Shared helpers of the deploy tests: repository paths, required tools, runbook anchors."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
RUNBOOK = ROOT / "docs" / "RUNBOOK.md"

FAULT_CODES = frozenset(
    {"UNKNOWN", "INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "DATA_LOSS", "UNIMPLEMENTED"}
)


def tool(name: str, install_hint: str) -> str:
    """The path of a required command-line tool; a missing one fails the test (never skips)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed; {install_hint}", pytrace=False)
    return path


def promtool() -> str:
    return tool("promtool", "install it with `apt-get install -y prometheus` (Debian)")


def run(args: list[str], cwd: Path | None = None, timeout: float = 90) -> str:
    """Runs a command; a non-zero exit fails the test with its output."""
    proc = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}",
            pytrace=False,
        )
    return proc.stdout


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def runbook_anchors() -> set[str]:
    anchors = set()
    for line in RUNBOOK.read_text().splitlines():
        match = re.match(r"^#{1,6}\s+(.*)$", line)
        if match:
            anchors.add(_slug(match.group(1)))
    return anchors


def kustomize_build(path: Path) -> list[dict[str, Any]]:
    """Renders a kustomization with `kubectl kustomize` (or a standalone `kustomize`)."""
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        out = run([kubectl, "kustomize", str(path)])
    else:
        kustomize = tool("kustomize", "install kubectl (it embeds kustomize) or kustomize")
        out = run([kustomize, "build", str(path)])
    return [doc for doc in yaml.safe_load_all(out) if doc]


def check_promql(exprs: dict[str, str], tmp_path: Path) -> None:
    """Fails unless every expression parses, using promtool's rule checker as the parser."""
    rules = [
        {"record": f"check:expr_{i}", "expr": expr, "labels": {"source": name[:200]}}
        for i, (name, expr) in enumerate(exprs.items())
    ]
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "exprs", "rules": rules}]}))
    run([promtool(), "check", "rules", str(path)])
