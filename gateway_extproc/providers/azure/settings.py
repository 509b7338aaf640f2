"""A provider's `azure:` block: how the gateway addresses an Azure OpenAI resource. Pure.

    providers:
      azure:
        schema: openai
        base_url: https://RESOURCE.openai.azure.com   # or azure.endpoint_env
        auth: {header: api-key, env: AZURE_OPENAI_API_KEY}   # null with entra_id: true
        azure:
          api: v1                 # /openai/v1/...; `deployments`: /openai/deployments/{d}/...
          api_version: null       # required for `deployments` (e.g. 2024-10-21)
          deployments: {gpt-4o: prod-gpt-4o}   # gateway model -> deployment; default below
          entra_id: false         # Authorization: Bearer <Entra ID token> instead of `auth`
          endpoint_env: null      # a variable holding the endpoint (AZURE_OPENAI_ENDPOINT)

A model without an entry in `deployments` is served by the deployment named like the model
after its last `/` (`azure/gpt-4o` -> `gpt-4o`): the catalog's provider prefix is not part of a
deployment name, and most resources name deployments after their model.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
from collections.abc import Mapping

KEYS = frozenset({"api", "api_version", "deployments", "entra_id", "endpoint_env"})
APIS = ("v1", "deployments")
# Azure's own rule for deployment names (letters, digits, `-`, `_`, `.`), bounded.
_DEPLOYMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_API_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}(?:-preview)?|preview|latest")


@dataclasses.dataclass(frozen=True)
class AzureSettings:
    api: str = "v1"
    api_version: str | None = None
    deployments: Mapping[str, str] = dataclasses.field(default_factory=dict)
    entra_id: bool = False
    endpoint_env: str | None = None

    def deployment(self, model: str) -> str:
        """The deployment that serves the gateway's `model`."""
        return self.deployments.get(model) or model.rsplit("/", 1)[-1]


def parse_azure(doc: object, path: str, problems: list[str]) -> AzureSettings | None:
    """`doc` (a provider's `azure:` value) validated; every problem appended with its path."""
    if doc is None:
        return None
    if not isinstance(doc, Mapping):
        problems.append(f"{path}: must be a mapping")
        return None
    for extra in sorted(set(doc) - KEYS):
        problems.append(f"{path}.{extra}: unknown key")
    api = doc.get("api", "v1")
    if api not in APIS:
        problems.append(f"{path}.api: must be one of {', '.join(APIS)} (got {api!r})")
        api = "v1"
    version = doc.get("api_version")
    if isinstance(version, datetime.date):  # YAML reads an unquoted 2024-10-21 as a date
        version = version.isoformat()
    valid = isinstance(version, str) and _API_VERSION.fullmatch(version) is not None
    if version is not None and not valid:
        problems.append(
            f"{path}.api_version: must be a date YYYY-MM-DD[-preview], preview or latest "
            f"(got {version!r})"
        )
        version = None
    elif version is None and api == "deployments":
        problems.append(f"{path}.api_version: required with api: deployments (e.g. 2024-10-21)")
    deployments: dict[str, str] = {}
    raw = doc.get("deployments") or {}
    if not isinstance(raw, Mapping):
        problems.append(f"{path}.deployments: must map gateway model names to deployment names")
    else:
        for model, name in raw.items():
            if not isinstance(model, str) or not isinstance(name, str):
                problems.append(f"{path}.deployments.{model}: must be a deployment name")
            elif not _DEPLOYMENT.fullmatch(name):
                problems.append(
                    f"{path}.deployments.{model}: {name!r} is not an Azure deployment name "
                    "(letters, digits, '-', '_', '.'; at most 64)"
                )
            else:
                deployments[model] = name
    entra = doc.get("entra_id", False)
    if not isinstance(entra, bool):
        problems.append(f"{path}.entra_id: must be true or false (got {entra!r})")
        entra = False
    env = doc.get("endpoint_env")
    if env is not None and (not isinstance(env, str) or not env):
        problems.append(f"{path}.endpoint_env: must be a variable name (got {env!r})")
        env = None
    return AzureSettings(
        api=api, api_version=version, deployments=deployments, entra_id=entra, endpoint_env=env
    )
