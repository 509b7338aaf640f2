"""The providers the gateway speaks, by schema and by API: the one place that lists them.

Adding a provider: its package under `providers/` (a `Provider`), one line here, a `Schema` and
its `Api`s in apis.py, and its models in the catalog.
"""

from __future__ import annotations

from gateway_extproc.apis import Api, Schema
from gateway_extproc.errors import ClientError
from gateway_extproc.providers.anthropic.provider import PROVIDER as ANTHROPIC
from gateway_extproc.providers.base import Provider
from gateway_extproc.providers.bedrock.provider import PROVIDER as BEDROCK
from gateway_extproc.providers.gemini.provider import PROVIDER as GEMINI
from gateway_extproc.providers.openai.provider import PROVIDER as OPENAI

PROVIDERS: dict[Schema, Provider] = {
    Schema.OPENAI: OPENAI,
    Schema.ANTHROPIC: ANTHROPIC,
    Schema.GEMINI: GEMINI,
    Schema.BEDROCK: BEDROCK,
}
# Each API's provider, looked up once per response (every Api belongs to exactly one).
BY_API: dict[Api, Provider] = {api: p for p in PROVIDERS.values() for api in p.apis}


def error_body(schema: Schema, err: ClientError, request_id: str) -> bytes:
    """The JSON error body in the format the client's SDK parses."""
    return PROVIDERS[schema].error_body(err, request_id)
