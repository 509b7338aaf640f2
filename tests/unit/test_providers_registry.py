"""The provider interface (providers/base.py `Provider`) and its registry: every API the gateway
meters belongs to exactly one provider of its schema, and each provider renders the gateway's
errors in its own SDKs' format."""

from __future__ import annotations

import orjson
import pytest

from gateway_extproc.apis import Api, Schema
from gateway_extproc.errors import ClientError, Forbidden, PayloadTooLarge
from gateway_extproc.providers.registry import BY_API, PROVIDERS, error_body


def test_every_schema_has_a_provider_of_that_schema() -> None:
    assert set(PROVIDERS) == set(Schema)
    for schema, provider in PROVIDERS.items():
        assert provider.schema is schema


def test_every_api_belongs_to_exactly_one_provider_of_its_schema() -> None:
    served = [api for provider in PROVIDERS.values() for api in provider.apis]
    assert sorted(served) == sorted(Api)  # each once: none missing, none served twice
    for api in Api:
        assert BY_API[api].schema is api.schema


@pytest.mark.parametrize("api", list(Api))
def test_each_stream_gets_its_own_handler(api: Api) -> None:
    provider = BY_API[api]
    first, second = provider.stream_handler(api), provider.stream_handler(api)
    assert first is not second
    assert first.usage() is None and first.output_bytes == 0 and not first.completed


@pytest.mark.parametrize("err", [Forbidden("no"), PayloadTooLarge("too big")])
def test_openai_error_body(err: ClientError) -> None:
    assert orjson.loads(error_body(Schema.OPENAI, err, "req-1")) == {
        "error": {"message": err.message, "type": err.openai_type, "param": None, "code": err.code},
        "request_id": "req-1",
    }


@pytest.mark.parametrize("err", [Forbidden("no"), PayloadTooLarge("too big")])
def test_anthropic_error_body(err: ClientError) -> None:
    assert orjson.loads(error_body(Schema.ANTHROPIC, err, "req-1")) == {
        "type": "error",
        "error": {"type": err.anthropic_type, "message": err.message},
        "request_id": "req-1",
    }
