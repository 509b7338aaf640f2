"""What guardrails look for and what they do about it: category and action names. Values only."""

from __future__ import annotations

import enum


class Category(enum.StrEnum):
    """One kind of sensitive text. The value is the name used in configuration, the audit record
    and the redaction marker `[REDACTED:<category>]`."""

    EMAIL = "email"
    PHONE = "phone"
    PAYMENT_CARD = "payment_card"
    IBAN = "iban"
    US_SSN = "us_ssn"
    OPENAI_KEY = "openai_key"
    ANTHROPIC_KEY = "anthropic_key"
    AWS_ACCESS_KEY = "aws_access_key"
    AWS_SECRET_KEY = "aws_secret_key"
    GITHUB_TOKEN = "github_token"
    GITLAB_TOKEN = "gitlab_token"
    SLACK_TOKEN = "slack_token"
    PRIVATE_KEY = "private_key"
    JWT = "jwt"
    GENERIC_SECRET = "generic_secret"


PII = frozenset(
    {Category.EMAIL, Category.PHONE, Category.PAYMENT_CARD, Category.IBAN, Category.US_SSN}
)
SECRETS = frozenset(Category) - PII
# Configuration shorthands: `secrets: block` sets every secret category (a category named on
# its own wins over a shorthand, wherever it appears), `pii: redact` every PII category.
SHORTHANDS: dict[str, frozenset[Category]] = {"secrets": SECRETS, "pii": PII}


class GuardAction(enum.IntEnum):
    """Ordered by strictness: when several guardrails see the same finding the strictest wins."""

    MONITOR = 1  # recorded in the audit record only
    REDACT = 2  # replaced by [REDACTED:<category>] in the body sent to the provider
    BLOCK = 3  # 400 guardrail_blocked; nothing reaches the provider

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: object) -> GuardAction | None:
        if isinstance(value, str) and value.upper() in cls.__members__:
            return cls[value.upper()]
        return None
