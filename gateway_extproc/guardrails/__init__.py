"""Guardrails: PII and secrets in prompts, blocked, redacted or monitored per policy match.

`settings.parse_guardrails` reads the `guardrails:` section; `engine.Guardrails.check` is the
request path's one call. Detectors: `pii` and `secret_patterns`; `scan` combines them, `texts`
knows where each API keeps the text the model reads.
"""

from gateway_extproc.guardrails.categories import Category, GuardAction
from gateway_extproc.guardrails.engine import Guardrails, GuardResult
from gateway_extproc.guardrails.settings import GuardrailConfig, parse_guardrails

__all__ = [
    "Category",
    "GuardAction",
    "GuardResult",
    "GuardrailConfig",
    "Guardrails",
    "parse_guardrails",
]
