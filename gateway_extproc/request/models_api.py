"""`GET /v1/models` answered from the catalog, in the format of the SDK that asks. Pure."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson

from gateway_extproc.apis import MODELS_PATH, Schema
from gateway_extproc.catalog.models import Catalog, ModelEntry
from gateway_extproc.errors import NotFound

# A fixed creation time: the catalog does not know release dates, and clients only display it.
_CREATED = 1_700_000_000
_CREATED_ISO = "2023-11-14T22:13:20Z"


def _openai(entry: ModelEntry) -> dict[str, Any]:
    return {"id": entry.name, "object": "model", "created": _CREATED, "owned_by": entry.provider}


def _anthropic(entry: ModelEntry) -> dict[str, Any]:
    return {
        "type": "model",
        "id": entry.name,
        "display_name": entry.name,
        "created_at": _CREATED_ISO,
    }


def list_models(schema: Schema, entries: Sequence[ModelEntry]) -> bytes:
    if schema is Schema.ANTHROPIC:
        data = [_anthropic(e) for e in entries]
        return orjson.dumps(
            {
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )
    return orjson.dumps({"object": "list", "data": [_openai(e) for e in entries]})


def one_model(schema: Schema, entry: ModelEntry) -> bytes:
    return orjson.dumps(_anthropic(entry) if schema is Schema.ANTHROPIC else _openai(entry))


def models_response(
    schema: Schema, bare_path: str, catalog: Catalog, visible: Callable[[ModelEntry], bool]
) -> bytes:
    """`GET /v1/models` (the models `visible` to this caller) or `GET /v1/models/{id}`.
    Raises NotFound for a model the caller cannot see."""
    entries = [e for e in catalog.models() if visible(e)]
    if bare_path == MODELS_PATH:
        return list_models(schema, entries)
    wanted = bare_path[len(MODELS_PATH) + 1 :]
    entry = catalog.lookup(wanted)
    if entry is None or entry not in entries:
        raise NotFound(f"model {wanted!r} is not available to you at this gateway")
    return one_model(schema, entry)
