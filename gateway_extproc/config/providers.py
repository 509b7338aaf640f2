"""The providers section of the gateway config: each provider's API schema, base URL, the
credential it is called with, and the client headers forwarded to it."""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from collections.abc import Mapping

from gateway_extproc.apis import Schema
from gateway_extproc.config.keys import PoolKey, parse_keys
from gateway_extproc.config.reader import Reader
from gateway_extproc.providers.azure.settings import AzureSettings, parse_azure
from gateway_extproc.providers.forwarding import forward_header_problems
from gateway_extproc.providers.vertex.settings import VertexSettings, parse_vertex

VERTEX = "vertex"  # `schema: vertex`: Google Vertex AI, serving Gemini and Claude models


@dataclasses.dataclass(frozen=True)
class Credential:
    """Where a provider key comes from and which header carries it upstream."""

    header: str
    prefix: str = ""
    env: str | None = None
    file: str | None = None


@dataclasses.dataclass(frozen=True)
class ProviderConfig:
    name: str
    schema: Schema
    base_url: str
    auth: Credential | None  # None: the provider needs no key (local vLLM, Ollama)
    forward_headers: tuple[str, ...] = ()  # client headers forwarded beyond the defaults
    # The tier a request that names none (or `auto`) is served and reserved at: the OpenAI
    # project's own default (a project whose default is priority). None: standard.
    default_service_tier: str | None = None
    # Azure OpenAI (`schema: openai` at Azure's paths, deployments, Entra ID): providers/azure/.
    azure: AzureSettings | None = None
    # `schema: vertex`: its project, location and Google credentials (`schema` is then gemini,
    # Google's error family, and the provider speaks both the gemini and anthropic APIs).
    vertex: VertexSettings | None = None
    # schema: bedrock only - the AWS region (SigV4 scope, default endpoint) and whether the EC2
    # instance metadata service may supply credentials (providers/bedrock/signing.py).
    region: str = ""
    instance_metadata: bool = False
    # A key pool (config/keys.py): each key's secret replaces auth.env / auth.file.
    keys: tuple[PoolKey, ...] = ()

    @property
    def speaks(self) -> frozenset[Schema]:
        """The APIs of the models it serves (a catalog entry's `schema` is one of them)."""
        if self.vertex is not None:
            return frozenset({Schema.GEMINI, Schema.ANTHROPIC})
        return frozenset({self.schema})

    @property
    def cluster(self) -> str:
        return f"provider_{self.name}"


_PROVIDER_KEYS = {
    "schema",
    "base_url",
    "auth",
    "keys",
    "forward_headers",
    "default_service_tier",
    "azure",
    VERTEX,
}
_BEDROCK_KEYS = {"region", "instance_metadata"}
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]+")


def bedrock_endpoint(region: str) -> str:
    """Bedrock Runtime's public endpoint in `region` (`base_url` overrides it: a VPC endpoint,
    a FIPS endpoint, a proxy)."""
    return f"https://bedrock-runtime.{region}.amazonaws.com"


# OpenAI `service_tier` values a project can default to (`default` is the standard price).
SERVICE_TIERS = ("default", "priority", "flex", "scale")
_AUTH_KEYS = {"header", "prefix", "env", "file"}


def parse_providers(
    r: Reader, doc: object, environ: Mapping[str, str]
) -> dict[str, ProviderConfig]:
    """The value of the `providers` key: at least one provider, each validated."""
    providers: dict[str, ProviderConfig] = {}
    if not isinstance(doc, Mapping) or not doc:
        r.problems.append("providers: must name at least one provider")
        return providers
    for name, pdoc in doc.items():
        if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
            r.problems.append(f"providers.{name}: name must be letters, digits, - and _")
            continue
        provider = parse_provider(r, name, pdoc, environ)
        if provider is not None:
            providers[name] = provider
    return providers


def parse_provider(
    r: Reader, name: str, doc: object, environ: Mapping[str, str] | None = None
) -> ProviderConfig | None:
    path = f"providers.{name}"
    if not isinstance(doc, Mapping):
        r.problems.append(f"{path}: must be a mapping")
        return None
    schema_value = doc.get("schema")
    bedrock = schema_value == Schema.BEDROCK.value
    for extra in sorted(set(doc) - _PROVIDER_KEYS - (_BEDROCK_KEYS if bedrock else set())):
        r.problems.append(f"{path}.{extra}: unknown key")
    vertex: VertexSettings | None = None
    if schema_value == VERTEX:
        schema = Schema.GEMINI
        vertex = parse_vertex(doc.get(VERTEX), f"{path}.{VERTEX}", r.problems)
        if doc.get("auth") is not None:
            r.problems.append(f"{path}.auth: a vertex provider takes vertex.credentials instead")
    else:
        try:
            schema = Schema(str(schema_value))
        except ValueError:
            choices = ", ".join([*(s.value for s in Schema), VERTEX])
            r.problems.append(f"{path}.schema: must be one of {choices} (got {schema_value!r})")
            schema = Schema.OPENAI
        if doc.get(VERTEX) is not None:
            r.problems.append(f"{path}.{VERTEX}: for schema: vertex only")
    region, instance_metadata = "", False
    if bedrock:
        region = r.string(doc, path, "region")
        if region and not _REGION.fullmatch(region):
            r.problems.append(f"{path}.region: must be an AWS region name (got {region!r})")
        instance_metadata = r.boolean(doc, path, "instance_metadata", False)
        if doc.get("auth") is not None:
            r.problems.append(
                f"{path}.auth: not used by schema: bedrock (credentials come from the AWS chain)"
            )
    azure = parse_azure(doc.get("azure"), f"{path}.azure", r.problems)
    if azure is not None and schema is not Schema.OPENAI:
        r.problems.append(f"{path}.azure: for schema: openai only (Azure OpenAI)")
    endpoint = (environ or {}).get(azure.endpoint_env or "") if azure is not None else None
    if vertex is not None and doc.get("base_url") is None:
        base_url = f"https://{vertex.host}"  # the location's endpoint
    elif doc.get("base_url") is None and endpoint:  # AZURE_OPENAI_ENDPOINT, when the file has none
        base_url = endpoint
    elif doc.get("base_url") is None and azure is not None and azure.endpoint_env:
        base_url = ""  # no endpoint yet: an error only if the provider is served (upstreams.py)
    else:
        base_url = r.string(doc, path, "base_url", optional=bedrock) or (
            bedrock_endpoint(region) if bedrock and region else ""
        )
    if base_url:
        try:
            parts = urllib.parse.urlsplit(base_url)
            parts.port  # noqa: B018 - ValueError for port :99999 or :x (urlsplit: for host [::1)
        except ValueError:
            parts = urllib.parse.urlsplit("")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            r.problems.append(f"{path}.base_url: must be an http(s) URL (got {base_url!r})")
        elif parts.query or parts.fragment:
            r.problems.append(f"{path}.base_url: must not carry a query or fragment")
    auth: Credential | None = None
    auth_doc = doc.get("auth")
    if isinstance(auth_doc, Mapping):
        for extra in sorted(set(auth_doc) - _AUTH_KEYS):
            r.problems.append(f"{path}.auth.{extra}: unknown key")
        header = r.string(auth_doc, f"{path}.auth", "header").lower()
        prefix = auth_doc.get("prefix", "")
        env, file = auth_doc.get("env"), auth_doc.get("file")
        if (env is None) == (file is None):
            r.problems.append(f"{path}.auth: set exactly one of env, file")
        for key, value in (("env", env), ("file", file)):
            if value is not None and (not isinstance(value, str) or not value):
                r.problems.append(f"{path}.auth.{key}: must be a non-empty string (got {value!r})")
        if not isinstance(prefix, str):
            r.problems.append(f"{path}.auth.prefix: must be a string")
            prefix = ""
        auth = Credential(header=header, prefix=prefix, env=env, file=file)
    elif auth_doc is not None:
        r.problems.append(f"{path}.auth: must be a mapping or null")
    if azure is not None and azure.entra_id and auth is not None:
        r.problems.append(f"{path}.auth: must be null with azure.entra_id: true (Entra ID tokens)")
    keys = parse_keys(doc.get("keys"), f"{path}.keys", r.problems)
    if keys and auth is None:
        r.problems.append(f"{path}.keys: needs auth (its header and prefix carry every key)")
    forward, problems = forward_header_problems(
        doc.get("forward_headers"), f"{path}.forward_headers"
    )
    r.problems.extend(problems)
    tier = doc.get("default_service_tier")
    if tier is not None and (schema is not Schema.OPENAI or tier not in SERVICE_TIERS):
        r.problems.append(
            f"{path}.default_service_tier: must be one of {', '.join(SERVICE_TIERS)}, for "
            f"schema: openai only (got {tier!r})"
        )
        tier = None
    return ProviderConfig(
        name=name,
        schema=schema,
        base_url=base_url,
        auth=auth,
        forward_headers=forward,
        default_service_tier=tier,
        azure=azure,
        vertex=vertex,
        region=region,
        instance_metadata=instance_metadata,
        keys=keys,
    )
