"""One summary format for every fault scenario: a line of counts and a verdict.

`sent`, `acknowledged` (2xx), `lost` (acknowledged, not stored), `duplicated` (stored more
than once), `5xx` by status and error reason, `collateral` (failures of routes that do not
depend on what the scenario disrupted), and the longest outage clients saw (`recovery`:
from the disruption to the last failed request it caused).
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from chaos import load


@dataclass
class Report:
    scenario: str
    sent: int = 0
    acknowledged: int = 0
    lost: int = 0
    duplicated: int = 0
    replayed_ok: int = 0
    errors_5xx: collections.Counter[str] = field(default_factory=collections.Counter)
    other_failures: collections.Counter[str] = field(default_factory=collections.Counter)
    collateral: int = 0
    client_retries: int = 0
    recovery_seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems and self.acknowledged > 0

    @property
    def slowest_recovery(self) -> float:
        return max(self.recovery_seconds.values(), default=0.0)

    def count(self, outcomes: Iterable[load.Outcome]) -> None:
        """Adds sent/acknowledged/failure counts of `outcomes` (before any replay)."""
        for o in outcomes:
            self.sent += 1
            self.client_retries += o.retried
            if o.ok:
                self.acknowledged += 1
            elif o.status >= 500:
                self.errors_5xx[f"{o.status} {o.reason}"] += 1
            else:
                self.other_failures[f"{o.status} {o.reason}"] += 1

    def judge_outage(
        self,
        target: str,
        outcomes: list[load.Outcome],
        began: float,
        max_seconds: float,
        label: str = "",
    ) -> None:
        """Failures while `target` was down: only the routes depending on it may fail, and
        only with 503, a reason and Retry-After; recovery within `max_seconds`. The
        recovery is kept under `label` (default `target`), the slowest when repeated."""
        last_failure = began
        for o in outcomes:
            if o.ok:
                continue
            if target not in o.probe.depends_on:
                self.collateral += 1
                self.problem(f"{target}: {o.probe.name} failed {o.status} {o.reason}")
                continue
            last_failure = max(last_failure, o.sent_at)
            if o.status != 503:
                self.problem(f"{target}: {o.probe.name} answered {o.status} {o.reason}, not 503")
            elif not o.retry_after or o.reason in ("", "NO_ENVELOPE"):
                self.problem(f"{target}: a 503 without Retry-After or reason")
        seconds = last_failure - began
        label = label or target
        self.recovery_seconds[label] = max(self.recovery_seconds.get(label, 0.0), round(seconds, 1))
        if seconds > max_seconds:
            self.problem(f"{target}: failures for {seconds:.1f} s (limit {max_seconds:g} s)")

    def judge_no_failure(self, target: str, outcomes: list[load.Outcome]) -> None:
        """Nothing disrupted (or a rolling restart): not one request may fail."""
        failed = [o for o in outcomes if not o.ok]
        for o in failed[:3]:
            self.problem(f"{target}: {o.probe.name} failed {o.status} {o.reason}")
        if len(failed) > 3:
            self.problem(f"{target}: {len(failed) - 3} more failures")

    def problem(self, text: str) -> None:
        # The first few of a kind are enough to read; the counts say the rest.
        if len(self.problems) < 20:
            self.problems.append(text)

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(self.errors_5xx.items())) or "none"
        other = ", ".join(f"{k}: {n}" for k, n in sorted(self.other_failures.items())) or "none"
        recovery = ", ".join(f"{k} {v:.1f}" for k, v in self.recovery_seconds.items())
        text = (
            f"{verdict} {self.scenario}: sent {self.sent}, acknowledged {self.acknowledged}, "
            f"lost {self.lost}, duplicated {self.duplicated}, 5xx {{{kinds}}}, "
            f"other failures {{{other}}}, collateral {self.collateral}, "
            f"client retries {self.client_retries}, "
            f"recovery max {self.slowest_recovery:.1f} s ({recovery})"
        )
        if self.notes:
            text += "; " + "; ".join(self.notes)
        if self.problems:
            text += " | problems: " + "; ".join(self.problems)
        return text

    def json(self) -> str:
        body = {k: v for k, v in self.__dict__.items()}
        body["passed"] = self.passed
        return "CHAOS_JSON " + json.dumps(body, default=dict)
