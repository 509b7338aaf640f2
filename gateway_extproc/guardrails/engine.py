"""Apply the configured guardrails to one parsed request. Pure: no I/O, no clock, no logging.

Every guardrail whose `match` holds for the request applies. The request's texts are scanned
once for every category any of them looks for; each finding then gets, from each applicable
guardrail that looks for its category and does not allow-list it, that guardrail's action, and
the strictest wins (block > redact > monitor). Any block refuses the request; otherwise redacted
findings are replaced in a copy of the body (the client's request is otherwise unchanged).
The result holds categories, counts and actions - never the matched text.

A scan that runs past its deadline (`limits.guardrail_scan_timeout_ms`) is `incomplete`: text
was left unscanned. If an applicable guardrail blocks or redacts anything, the request must
then not go out (`refuse_unscanned`: the processor answers 413), else padding a prompt would be
a way past them; a guardrail that only monitors forwards it with what the scan found so far.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter
from collections.abc import Mapping
from typing import Any

from gateway_extproc.budgets.matching import matches
from gateway_extproc.catalog.models import ModelEntry
from gateway_extproc.guardrails.categories import Category, GuardAction
from gateway_extproc.guardrails.deadline import NEVER, Deadline, ScanTimeout
from gateway_extproc.guardrails.pii import domain_allowed
from gateway_extproc.guardrails.scan import Finding, redact, scan
from gateway_extproc.guardrails.settings import GuardrailConfig
from gateway_extproc.guardrails.texts import text_slots
from gateway_extproc.identity.model import Identity
from gateway_extproc.providers.inbound import ParsedRequest


@dataclasses.dataclass(frozen=True, slots=True)
class GuardResult:
    """What the guardrails decided for one request."""

    rules: tuple[str, ...]  # the guardrails that applied
    counts: Mapping[Category, int]  # findings acted on, by category
    actions: Mapping[Category, GuardAction]  # the strictest action taken, by category
    body: dict[str, Any] | None = None  # the redacted body, when something was redacted
    incomplete: bool = False  # the scan ran past its deadline: some text was not scanned
    refuse_unscanned: bool = False  # incomplete, and an applicable guardrail blocks or redacts

    @property
    def blocked(self) -> tuple[Category, ...]:
        return tuple(c for c, a in self.actions.items() if a is GuardAction.BLOCK)

    @property
    def action(self) -> GuardAction | None:
        return max(self.actions.values(), default=None)

    def block_message(self) -> str:
        names = ", ".join(sorted(c.value for c in self.blocked))
        return (
            f"the request was blocked by the gateway's guardrails: it contains {names} "
            f"(guardrail {', '.join(self.rules)}); remove it and retry"
        )

    def audit_fields(self) -> dict[str, Any]:
        """Categories, counts and actions for the audit record; never a matched value."""
        action = self.action
        return {
            "rules": list(self.rules),
            "action": action.label if action is not None else None,
            "categories": {
                c.value: {"count": self.counts[c], "action": self.actions[c].label}
                for c in sorted(self.actions)
            },
        }


@dataclasses.dataclass(frozen=True)
class Guardrails:
    """The configured guardrails; `check` is the whole request-path API."""

    rules: tuple[GuardrailConfig, ...] = ()

    def check(
        self,
        identity: Identity,
        entry: ModelEntry,
        request: ParsedRequest,
        deadline: Deadline = NEVER,
    ) -> GuardResult | None:
        """None when no guardrail applies to this request."""
        applicable = [
            r
            for r in self.rules
            if matches(r.match, identity=identity, model=entry.name, provider=entry.provider)
        ]
        if not applicable:
            return None
        wanted = frozenset(c for r in applicable for c in r.actions)
        per_slot: list[list[tuple[Finding, GuardAction]]] = []
        counts: Counter[Category] = Counter()
        actions: dict[Category, GuardAction] = {}
        try:
            for container, key in text_slots(request.api, request.body):
                text: str = container[key]
                acted: list[tuple[Finding, GuardAction]] = []
                for finding in scan(text, wanted, deadline):
                    action = finding_action(finding, text, applicable)
                    if action is None:
                        continue
                    acted.append((finding, action))
                    counts[finding.category] += 1
                    actions[finding.category] = max(action, actions.get(finding.category, action))
                per_slot.append(acted)
        except ScanTimeout:
            enforcing = any(
                a is not GuardAction.MONITOR for r in applicable for a in r.actions.values()
            )
            return GuardResult(
                tuple(r.name for r in applicable),
                dict(counts),
                actions,
                incomplete=True,
                refuse_unscanned=enforcing,
            )
        names = tuple(r.name for r in applicable)
        body = None
        if GuardAction.BLOCK not in actions.values() and GuardAction.REDACT in actions.values():
            body = _redacted(request, per_slot)
        return GuardResult(names, dict(counts), actions, body)


def finding_action(finding: Finding, text: str, rules: list[GuardrailConfig]) -> GuardAction | None:
    """The strictest action any applicable guardrail takes on this finding. The allow-lists
    compare the match as the detector read it (`finding.value`, folded: `ops` U+FF20
    `example.com` is at example.com), not as written in `text`."""
    value = finding.value
    best: GuardAction | None = None
    for rule in rules:
        action = rule.actions.get(finding.category)
        if action is None or value in rule.allow_values:
            continue
        if finding.category is Category.EMAIL and rule.allow_email_domains:
            domain = value.rsplit("@", 1)[1].lower()
            if domain_allowed(domain, rule.allow_email_domains):
                continue
        best = action if best is None else max(best, action)
    return best


def _redacted(
    request: ParsedRequest, per_slot: list[list[tuple[Finding, GuardAction]]]
) -> dict[str, Any]:
    """A copy of the body with every redact finding replaced (strings are shared, not copied)."""
    body: dict[str, Any] = copy.deepcopy(request.body)
    for (container, key), acted in zip(text_slots(request.api, body), per_slot, strict=True):
        doomed = [f for f, a in acted if a is GuardAction.REDACT]
        if doomed:
            container[key] = redact(container[key], doomed)
    return body
