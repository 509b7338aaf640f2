"""The small error hierarchy. Only `ClientError`s reach clients, rendered in their API's format
(each provider's `error_body`, providers/registry.py).

Anything else that escapes the processor becomes a generic 500 carrying the request id; the
details go to the log only.
"""

from __future__ import annotations


class ConfigError(Exception):
    """Configuration is invalid. Carries every problem found, each prefixed by its path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n  " + "\n  ".join(self.problems))


class ClientError(Exception):
    """An error the client may see. `code` is stable and documented in the README."""

    status = 400
    code = "invalid_request"
    openai_type = "invalid_request_error"
    anthropic_type = "invalid_request_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})


class BadRequest(ClientError):
    pass


class CostUnbounded(ClientError):
    """A budgeted request whose worst-case cost has no upper bound (see bounds.py)."""

    code = "cost_unbounded"


class HeaderNotAllowed(ClientError):
    """A client header that changes price or billing, which the provider may not receive."""

    code = "header_not_allowed"


class UnsupportedOption(ClientError):
    """A request option the catalog cannot price (a service tier, a long-context beta)."""

    code = "unsupported_option"


class Untranslatable(ClientError):
    """A request option that has no faithful mapping to the API of the provider serving the
    model (translate/: `n > 1`, `logprobs`, audio, ... on a chat request to a Claude model)."""

    code = "untranslatable"


class GuardrailBlocked(ClientError):
    """A guardrail blocks a category the prompt contains (the message names the categories,
    never the matched text)."""

    code = "guardrail_blocked"


class UnknownModel(ClientError):
    code = "model_not_found"
    anthropic_type = "not_found_error"


class Unauthenticated(ClientError):
    """No credential, or one that does not verify. Carries a WWW-Authenticate challenge."""

    status = 401
    code = "unauthenticated"
    anthropic_type = "authentication_error"

    def __init__(self, message: str, *, error: str = "invalid_token") -> None:
        description = message.replace('"', "'")
        challenge = (
            f'Bearer realm="llm-gateway", error="{error}", error_description="{description}"'
        )
        if error == "missing_token":  # RFC 6750: no error code when no credential was sent
            challenge = 'Bearer realm="llm-gateway"'
        super().__init__(message, headers={"www-authenticate": challenge})


class Forbidden(ClientError):
    """A verified identity asked for something its policy does not allow."""

    status = 403
    code = "model_not_allowed"
    anthropic_type = "permission_error"


class NotFound(ClientError):
    status = 404
    code = "not_found"
    anthropic_type = "not_found_error"


class PayloadTooLarge(ClientError):
    status = 413
    code = "request_too_large"
    anthropic_type = "request_too_large"


class ProviderUnavailable(ClientError):
    status = 503
    code = "provider_unavailable"
    openai_type = "server_error"
    anthropic_type = "api_error"


class InternalError(ClientError):
    status = 500
    code = "internal_error"
    openai_type = "server_error"
    anthropic_type = "api_error"
