"""The `catalog:` section: the shipped catalog plus the operator's files, narrowed to the
configured providers and checked against them (each model's provider configured and speaking
its API schema). Every problem is appended with its path."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway_extproc.catalog.models import Catalog
from gateway_extproc.config.providers import ProviderConfig
from gateway_extproc.config.reader import Reader
from gateway_extproc.errors import ConfigError


def parse_catalog(
    r: Reader, doc: Mapping[str, Any], providers: Mapping[str, ProviderConfig]
) -> tuple[Catalog | None, tuple[str, ...]]:
    """The catalog (None when it cannot be loaded) and the operator's catalog files (a reload
    watches them). `doc`: the `catalog` section, its unknown keys already reported."""
    files = doc.get("files") or []
    catalog: Catalog | None = None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        r.problems.append("catalog.files: must be a list of paths")
    else:
        try:
            catalog = Catalog.load([Path(f) for f in files])
        except ConfigError as exc:
            r.problems.extend(exc.problems)
        except OSError as exc:
            r.problems.append(f"catalog.files: {exc}")
    if catalog is not None and providers:
        # Shipped models of a provider the config does not have (removed, or opt-in such as
        # bedrock) are dropped; an operator file's models must name a configured provider.
        unconfigured = {e.provider for e in catalog.models()} - set(providers)
        catalog = catalog.without_shipped_models_of(unconfigured)
        r.problems.extend(catalog.validate_providers(providers))
        for entry in catalog.models():
            provider = providers.get(entry.provider)
            if provider is not None and entry.schema not in provider.speaks:
                speaks = " and ".join(sorted(s.value for s in provider.speaks))
                r.problems.append(
                    f"catalog: models.{entry.name}: schema {entry.schema.value} but provider "
                    f"{entry.provider} speaks {speaks}"
                )
    return catalog, tuple(files) if isinstance(files, list) else ()
