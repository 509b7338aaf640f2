"""The provider APIs the gateway understands, and how a request path maps to one.

Pure: no I/O. Everything the rest of the code needs to know about "which API is this" lives here.
"""

from __future__ import annotations

import enum
import re


class Schema(enum.StrEnum):
    """Wire family of a provider: decides error format, auth header and usage fields."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    GEMINI = "gemini"
    # AWS Bedrock's InvokeModel for Anthropic models: Messages bodies, SigV4, event-stream
    # framing (providers/bedrock/). Clients reach it through /v1/messages (translate/).
    BEDROCK = "bedrock"


class Api(enum.StrEnum):
    """One metered endpoint. The value is the path under the gateway's `/v1` prefix."""

    OPENAI_CHAT = "/chat/completions"
    OPENAI_RESPONSES = "/responses"
    OPENAI_EMBEDDINGS = "/embeddings"
    OPENAI_COMPLETIONS = "/completions"
    ANTHROPIC_MESSAGES = "/messages"
    # Gemini: the model is in the path, `/v1beta/models/{model}:generateContent` (or `/v1/...`);
    # these values are the method, the part after the model.
    GEMINI_GENERATE = ":generateContent"
    GEMINI_STREAM = ":streamGenerateContent"
    # A provider-side API only: `POST /model/{id}/invoke[-with-response-stream]`, never a
    # gateway path (not in `api_for_path`).
    BEDROCK_INVOKE = "/model/invoke"
    # Bedrock's native Converse API, inbound and outbound: `POST /model/{id}/converse` and
    # `/model/{id}/converse-stream` (providers/bedrock/converse.py); the model is in the path.
    BEDROCK_CONVERSE = "/converse"
    BEDROCK_CONVERSE_STREAM = "/converse-stream"

    @property
    def schema(self) -> Schema:
        if self is Api.ANTHROPIC_MESSAGES:
            return Schema.ANTHROPIC
        if self in (Api.GEMINI_GENERATE, Api.GEMINI_STREAM):
            return Schema.GEMINI
        if self in (Api.BEDROCK_INVOKE, Api.BEDROCK_CONVERSE, Api.BEDROCK_CONVERSE_STREAM):
            return Schema.BEDROCK
        return Schema.OPENAI


API_PREFIX = "/v1"
MODELS_PATH = "/v1/models"
GEMINI_VERSIONS = ("v1beta", "v1")
# The APIs clients call on the gateway (the others are spoken to providers only).
CLIENT_APIS = tuple(api for api in Api if api is not Api.BEDROCK_INVOKE)
_BY_PATH = {
    API_PREFIX + api.value: api
    for api in CLIENT_APIS
    if api.schema not in (Schema.GEMINI, Schema.BEDROCK)
}
# `/{version}/{resource}:{method}`: which resource names a model is providers/gemini/paths.py's
# to say (a bad one is a Gemini-format 400, not a 404).
_GEMINI_PATH = re.compile(r"/(?:v1beta|v1)/[^?]*(:generateContent|:streamGenerateContent)")
_GEMINI_METHODS = {api.value: api for api in (Api.GEMINI_GENERATE, Api.GEMINI_STREAM)}
_CONVERSE_PATH = re.compile(r"/model/[^/?]+(/converse|/converse-stream)")
_CONVERSE_METHODS = {api.value: api for api in (Api.BEDROCK_CONVERSE, Api.BEDROCK_CONVERSE_STREAM)}


def api_for_path(path: str) -> Api | None:
    """The API a request path addresses (query string ignored), or None if it is not metered."""
    bare = path.split("?", 1)[0].rstrip("/")
    api = _BY_PATH.get(bare)
    if api is not None:
        return api
    match = _GEMINI_PATH.fullmatch(bare)
    if match is not None:
        return _GEMINI_METHODS[match.group(1)]
    match = _CONVERSE_PATH.fullmatch(bare)
    return _CONVERSE_METHODS[match.group(1)] if match else None


def looks_gemini(path: str) -> bool:
    """A path of Google's API family (`/v1beta/...`, `/v1/models/...:method`), metered or not:
    its errors are answered in Gemini's format."""
    bare = path.split("?", 1)[0]
    return bare.startswith("/v1beta/") or (bare.startswith("/v1/models/") and ":" in bare)


def looks_azure(path: str) -> bool:
    """A path of Azure OpenAI's family (`/openai/deployments/...`, `/openai/v1/...`): a client
    of the `AzureOpenAI` SDK, whose credential is the `api-key` header."""
    return path.startswith("/openai/")


def schema_for_path(path: str) -> Schema:
    """Best guess at the client's API family, used to format errors for unknown paths too."""
    api = api_for_path(path)
    if api is not None:
        return api.schema
    if looks_gemini(path):
        return Schema.GEMINI
    if path.startswith("/model/"):  # boto3's bedrock-runtime client: Bedrock's error format
        return Schema.BEDROCK
    return Schema.ANTHROPIC if path.startswith(API_PREFIX + "/messages") else Schema.OPENAI
