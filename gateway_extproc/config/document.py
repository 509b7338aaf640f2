"""The configuration document: the built-in defaults (`default_config.yaml`) with the operator's
file merged over them, before anything is validated (config/gateway.py parses the result)."""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from gateway_extproc.errors import ConfigError


def default_document() -> dict[str, Any]:
    """The built-in document (a fresh copy on every call)."""
    text = (
        importlib.resources.files("gateway_extproc.config")
        .joinpath("default_config.yaml")
        .read_text()
    )
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


# Mappings that an operator file replaces whole: merging `auth: {file: ...}` into a built-in
# `auth: {env: ...}` would leave both set.
_REPLACED_WHOLE = frozenset({"auth", "credentials"})  # a provider's key, Vertex's credentials


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key (except `auth` and `credentials`, replaced whole); anything
    else in `override` replaces; None deletes a mapping."""
    out = dict(base)
    for key, value in override.items():
        if value is None and key in out and isinstance(out[key], Mapping):
            del out[key]
        elif (
            key not in _REPLACED_WHOLE
            and isinstance(value, Mapping)
            and isinstance(out.get(key), Mapping)
        ):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def operator_document(path: Path | None) -> Mapping[str, Any]:
    """The operator's file as it is written ({} without one); ConfigError if it is not YAML or
    not a mapping."""
    if path is None:
        return {}
    try:
        user = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError([f"{path}: {exc}"]) from exc
    if user is None:
        return {}
    if not isinstance(user, Mapping):
        raise ConfigError([f"{path}: must be a mapping at the top level"])
    return user


def load_document(path: Path | None) -> dict[str, Any]:
    """The built-in document with the operator file (if any) merged over it."""
    return merge(default_document(), operator_document(path))
