"""The key check each provider's endpoints make, with the provider's own 401/403/400 (the mock's
Bedrock and Vertex routes check their own credentials: bedrock_routes.py, vertex_api.py)."""

from __future__ import annotations

from collections.abc import Mapping

from gateway_extproc.mock.errors import ApiError, Family
from gateway_extproc.mock.settings import MockConfig


def _redact(key: str) -> str:
    return f"{key[:3]}...{key[-4:]}" if len(key) > 8 else "***"


def _bearer(headers: Mapping[str, str]) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def auth_error(family: Family, headers: Mapping[str, str], config: MockConfig) -> ApiError | None:
    """The 401 to answer when a configured provider key is missing or wrong."""
    if family is Family.AZURE:  # either credential Azure takes, when the mock was given one
        if config.azure_key is None and config.azure_token is None:
            return None
        key, token = headers.get("api-key"), _bearer(headers)
        if (key is not None and key == config.azure_key) or (
            token is not None and token == config.azure_token
        ):
            return None
        return ApiError(
            401,
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
            "provide a valid key for an active subscription and use a correct regional API "
            "endpoint for your resource.",
        )
    if family is Family.GEMINI:
        key = config.gemini_key
        presented = headers.get("x-goog-api-key")
        if key is None or presented == key:
            return None
        if presented is None:
            return ApiError(
                403,
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API.",
            )
        return ApiError(400, "API key not valid. Please pass a valid API key.")
    if family is Family.ANTHROPIC:
        # The API takes `x-api-key`; anthropic SDK v2 sends `Authorization: Bearer` instead.
        key = config.anthropic_key
        if key is None or key in (headers.get("x-api-key"), _bearer(headers)):
            return None
        return ApiError(401, "invalid x-api-key")
    if config.openai_key is None:
        return None
    authorization = headers.get("authorization", "")
    if _bearer(headers) == config.openai_key:
        return None
    if not authorization:
        message = (
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    else:
        presented = authorization.removeprefix("Bearer ").strip()
        message = (
            f"Incorrect API key provided: {_redact(presented)}. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        )
    return ApiError(401, message, code="invalid_api_key")
