"""docs/RUNBOOK.md: the seed runbook's sections, one section per alert, and commands that are
true for this suite (every gateway path it calls is served, every CLI command exists)."""

from __future__ import annotations

import re
from pathlib import Path

from gateway import app as gateway_app
from gateway import settings as gateway_settings
from services import cli
from tests.deploy import tools


def _text() -> str:
    return tools.RUNBOOK.read_text()


def _served(tmp_path: Path) -> list[re.Pattern[str]]:
    settings = gateway_settings.GatewaySettings.from_env({"AIOPS_STATE_DIR": str(tmp_path)})
    app = gateway_app.create_app(settings)
    patterns = []
    for route in app.router.routes():
        canonical = route.resource.canonical if route.resource else ""
        if canonical:
            patterns.append(
                re.compile(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(canonical)) + "$")
            )
    return patterns


def test_runbook_has_the_seed_sections() -> None:
    anchors = tools.runbook_anchors()
    for section in (
        "monitoring",
        "alerts",
        "troubleshooting",
        "emergency-procedures",
        "api-endpoints",
        "security",
        "maintenance",
        "rollback",
        "scale-up",
        "maintenance-mode",
        "backups",
    ):
        assert section in anchors, section


def test_runbook_links_resolve() -> None:
    anchors = tools.runbook_anchors()
    for target in re.findall(r"\]\(#([^)]+)\)", _text()):
        assert target in anchors, target


def test_every_gateway_path_in_the_runbook_is_served(tmp_path: Path) -> None:
    served = _served(tmp_path)
    paths = set(re.findall(r"localhost:3000(/[^\s\"'?`)]*)", _text()))
    assert "/api/v1/aiops/feedback" in paths and "/health" in paths
    for path in paths:
        assert any(p.match(path) for p in served), f"the runbook calls {path}, not served"


def test_every_aiops_command_in_the_runbook_exists() -> None:
    commands = set(re.findall(r"\.venv/bin/aiops (\w+)", _text()))
    assert {"token", "keys", "backup", "maintenance"} <= commands
    source = Path(cli.__file__).read_text()
    for command in commands:
        assert f'add_parser("{command}"' in source, command


def test_runbook_points_at_files_that_exist() -> None:
    for path in set(re.findall(r"`((?:deploy|docs|services)/[\w./-]+)`", _text())):
        if "*" not in path and "<" not in path:
            assert (tools.ROOT / path).exists(), path
