"""Azure OpenAI paths: where a request goes upstream, and what a client's Azure path says. Pure.

Upstream (the `Api` the gateway parsed, the deployment serving it):
* v1 API: `/openai/v1/chat/completions` (`responses`, `embeddings`, `completions`); the
  deployment is the body's `model`. An `api_version`, if configured, is sent as the query.
* deployment paths: `/openai/deployments/{d}/chat/completions?api-version=V` (and
  `embeddings`, `completions`); the Responses API has no deployment path:
  `/openai/responses?api-version=V` with the deployment as the body's `model`.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse

from gateway_extproc.apis import Api
from gateway_extproc.providers.azure.settings import AzureSettings

_DEPLOYMENT_APIS = {
    Api.OPENAI_CHAT: "chat/completions",
    Api.OPENAI_EMBEDDINGS: "embeddings",
    Api.OPENAI_COMPLETIONS: "completions",
}


def upstream_path(settings: AzureSettings, api: Api, deployment: str) -> str:
    """The path (and query) of `api` served by `deployment` on the resource's endpoint."""
    version = settings.api_version
    if settings.api == "v1":
        query = f"?api-version={urllib.parse.quote(version)}" if version else ""
        return f"/openai/v1{api.value}{query}"
    assert version is not None  # settings.parse_azure requires one for deployment paths
    query = f"?api-version={urllib.parse.quote(version)}"
    method = _DEPLOYMENT_APIS.get(api)
    if method is None:  # the Responses API
        return f"/openai{api.value}{query}"
    return f"/openai/deployments/{urllib.parse.quote(deployment, safe='')}/{method}{query}"


# --- inbound: a client of the AzureOpenAI SDK calls the gateway at Azure's paths ---------------

_INBOUND_DEPLOYMENT = re.compile(
    r"/openai/deployments/(?P<d>[^/?]+)/(?P<m>chat/completions|embeddings|completions)"
)
_INBOUND_V1 = re.compile(r"/openai/v1/(?P<m>chat/completions|responses|embeddings|completions)")
_BY_METHOD = {
    "chat/completions": Api.OPENAI_CHAT,
    "embeddings": Api.OPENAI_EMBEDDINGS,
    "completions": Api.OPENAI_COMPLETIONS,
    "responses": Api.OPENAI_RESPONSES,
}


@dataclasses.dataclass(frozen=True, slots=True)
class InboundPath:
    """A client's Azure path: the API, and the deployment it names (None: the body's model)."""

    api: Api
    deployment: str | None

    @property
    def gateway_path(self) -> str:
        """The gateway's own path for the same API (`/v1/chat/completions`)."""
        return "/v1" + self.api.value


def parse_inbound(path: str) -> InboundPath | None:
    """`/openai/deployments/{d}/chat/completions?api-version=...` or `/openai/v1/...` (query
    ignored) as an `InboundPath`, None for any other path. The deployment is URL-decoded."""
    bare = path.split("?", 1)[0].rstrip("/")
    match = _INBOUND_DEPLOYMENT.fullmatch(bare)
    if match is not None:
        deployment = urllib.parse.unquote(match["d"])
        return InboundPath(_BY_METHOD[match["m"]], deployment) if deployment else None
    match = _INBOUND_V1.fullmatch(bare)
    if match is not None:
        return InboundPath(_BY_METHOD[match["m"]], None)
    return None
