"""Vertex AI's pure parts: settings, paths and bodies, the forwarded request (path, token, body),
the access token refreshed ahead of expiry (fake clock, fake credentials: no sleep, no network),
the sidecar attaching token sources, and the mock's Vertex replies."""

from __future__ import annotations

import dataclasses
import datetime
import threading
from typing import Any

import orjson
import pytest

from gateway_extproc.apis import Api, Schema
from gateway_extproc.budgets.admission import Admission, Decision
from gateway_extproc.config.gateway import load_config
from gateway_extproc.config.upstreams import resolve_upstreams
from gateway_extproc.errors import ProviderUnavailable
from gateway_extproc.mock import vertex_api
from gateway_extproc.mock.controls import Controls
from gateway_extproc.mock.errors import ApiError
from gateway_extproc.mock.wire import JsonReply, ReplyContext, StreamReply
from gateway_extproc.providers.inbound import parse_request
from gateway_extproc.providers.vertex.paths import anthropic_body, vertex_path
from gateway_extproc.providers.vertex.settings import VertexSettings, parse_vertex
from gateway_extproc.providers.vertex.tokens import (
    MOCK_TOKEN,
    REFRESH_MARGIN_S,
    RETRY_S,
    TokenSource,
    TokenSources,
)
from gateway_extproc.request import route
from gateway_extproc.runtime.context import _attach_vertex_tokens

T0 = 1_900_000_000.0  # a fixed "now"
HOUR = 3600.0


class FakeCredentials:
    """google-auth's credentials as the gateway uses them: each refresh a new token valid for an
    hour from the fake clock's now (naive UTC, as google-auth keeps `expiry`)."""

    def __init__(self, clock: list[float], fail: bool = False) -> None:
        self.clock = clock
        self.fail = fail
        self.token: str | None = None
        self.expiry: datetime.datetime | None = None
        self.calls = 0
        self.refreshed = threading.Event()

    def refresh(self, request: Any) -> None:
        self.calls += 1
        if self.fail:
            raise OSError("metadata server unreachable")
        self.token = f"ya29.token-{self.calls}"
        expiry = datetime.datetime.fromtimestamp(self.clock[0] + HOUR, datetime.UTC)
        self.expiry = expiry.replace(tzinfo=None)
        self.refreshed.set()


def source(fail: bool = False) -> tuple[TokenSource, FakeCredentials, list[float]]:
    clock = [T0]
    creds = FakeCredentials(clock, fail)
    return TokenSource(creds, object(), clock=lambda: clock[0]), creds, clock


def test_the_first_token_is_fetched_then_reused_until_the_margin() -> None:
    tokens, creds, clock = source()
    assert tokens.bearer() is None and tokens.due(T0)
    assert tokens.refresh_if_due(T0) and tokens.bearer() == "Bearer ya29.token-1"
    # Right up to the margin before expiry nothing is fetched (no I/O on this path).
    just_before = T0 + HOUR - REFRESH_MARGIN_S - 1
    clock[0] = just_before
    assert not tokens.due(just_before) and not tokens.refresh_if_due(just_before)
    assert creds.calls == 1 and tokens.bearer() == "Bearer ya29.token-1"
    assert tokens.wait_s(just_before) == 1.0
    # At the margin - still well before expiry - the token is refreshed.
    at_margin = T0 + HOUR - REFRESH_MARGIN_S
    clock[0] = at_margin
    assert tokens.due(at_margin) and tokens.refresh_if_due(at_margin)
    assert creds.calls == 2 and tokens.bearer() == "Bearer ya29.token-2"
    assert tokens.refreshes == 2 and not tokens.due(at_margin)


def test_a_failed_refresh_keeps_the_valid_token_and_retries_later() -> None:
    tokens, creds, clock = source()
    tokens.refresh_if_due(T0)
    creds.fail = True
    at_margin = T0 + HOUR - REFRESH_MARGIN_S
    clock[0] = at_margin
    assert not tokens.refresh_if_due(at_margin)
    assert tokens.failures == 1 and tokens.bearer() == "Bearer ya29.token-1"  # still valid
    assert not tokens.due(at_margin + RETRY_S - 1)  # no hammering the token endpoint
    assert tokens.due(at_margin + RETRY_S)
    clock[0] = T0 + HOUR  # refreshes kept failing until it expired: no token is sent
    assert tokens.bearer() is None
    creds.fail = False
    assert tokens.refresh_if_due(T0 + HOUR) and tokens.bearer() == "Bearer ya29.token-3"


def test_the_refresher_thread_fetches_the_first_token() -> None:
    tokens, creds, _ = source()
    tokens.start()
    try:
        assert creds.refreshed.wait(10)  # bounded: set by the thread's first refresh
    finally:
        tokens.stop()
    assert tokens.bearer() == "Bearer ya29.token-1"


def test_token_sources_are_shared_by_credential_source() -> None:
    loads: list[str | None] = []
    made: list[TokenSource] = []

    def load(settings: VertexSettings, environ: Any) -> tuple[Any, Any]:
        loads.append(settings.credential_source(environ))
        return FakeCredentials([T0]), "from-credentials"

    def make(credentials: Any) -> TokenSource:
        tokens = TokenSource(credentials, object(), clock=lambda: T0)
        tokens.start = lambda: None  # type: ignore[method-assign]  # no thread in this test
        made.append(tokens)
        return tokens

    sources = TokenSources(load, make)
    settings = VertexSettings(project=None, location="global", credentials_file="/sa.json")
    first = sources.get(settings, {})
    again = sources.get(dataclasses.replace(settings, location="us-east5"), {})
    assert first == again == (made[0], "from-credentials") and loads == ["/sa.json"]


def test_the_sidecar_attaches_tokens_and_the_credentials_project() -> None:
    config = load_config(None, {})
    ups = resolve_upstreams(config, {"GOOGLE_APPLICATION_CREDENTIALS": "/sa.json"}, None)
    tokens, _, _ = source()

    class Sources(TokenSources):
        def get(self, settings: VertexSettings, environ: Any) -> tuple[TokenSource, str | None]:
            return tokens, "sa-project"

    assert _attach_vertex_tokens(ups, Sources(), {}) == []
    assert ups["vertex"].tokens is tokens and ups["vertex"].project == "sa-project"

    class Broken(TokenSources):
        def get(self, settings: VertexSettings, environ: Any) -> tuple[TokenSource, str | None]:
            raise ValueError("not a credentials file: secret-looking-content")

    ups = resolve_upstreams(config, {"GOOGLE_APPLICATION_CREDENTIALS": "/sa.json"}, None)
    assert _attach_vertex_tokens(ups, Broken(), {}) == [
        "providers.vertex.vertex.credentials: cannot read the Google credentials (ValueError)"
    ]


def test_settings_parse_and_report_every_problem() -> None:
    problems: list[str] = []
    settings = parse_vertex(
        {
            "project": "acme-ml",
            "location": "us-east5",
            "credentials": {"workload_identity": True},
            "models": {"sonnet": "claude-sonnet-4-5@20250929"},
        },
        "providers.v.vertex",
        problems,
    )
    assert problems == []
    assert settings.host == "us-east5-aiplatform.googleapis.com"
    assert settings.credential_source({}) == "workload_identity"
    assert settings.model_id("sonnet") == "claude-sonnet-4-5@20250929"
    assert settings.model_id("gemini-2.5-flash") == "gemini-2.5-flash"  # unlisted: as it is
    assert VertexSettings(project=None, location="global").host == "aiplatform.googleapis.com"
    parse_vertex(
        {
            "project": "Bad Project",
            "location": "mars",
            "credentials": {"file": "/a", "env": "B"},
            "models": {"x": "has/slash"},
            "zone": 1,
        },
        "p",
        problems,
    )
    assert problems == [
        "p.zone: unknown key",
        "p.project: must be a Google Cloud project id (got 'Bad Project')",
        "p.location: must be `global` or a region such as us-east5 (got 'mars')",
        "p.models.x: must be a Vertex model id of letters, digits, '.', '_', '-' and '@' "
        "(got 'has/slash')",
        "p.credentials: set exactly one of file, env, workload_identity",
    ]


def test_paths_and_the_raw_predict_body() -> None:
    where = {"project": "p1", "location": "global"}
    base = "/v1/projects/p1/locations/global/publishers"
    assert vertex_path(**where, schema=Schema.GEMINI, model="gemini-2.5-flash", stream=False) == (
        base + "/google/models/gemini-2.5-flash:generateContent"
    )
    assert vertex_path(**where, schema=Schema.GEMINI, model="g", stream=True) == (
        base + "/google/models/g:streamGenerateContent?alt=sse"
    )
    assert vertex_path(**where, schema=Schema.ANTHROPIC, model="c@1", stream=False) == (
        base + "/anthropic/models/c@1:rawPredict"
    )
    assert vertex_path(**where, schema=Schema.ANTHROPIC, model="c@1", stream=True) == (
        base + "/anthropic/models/c@1:streamRawPredict"
    )
    body = orjson.loads(anthropic_body({"model": "m", "max_tokens": 5, "stream": True}))
    assert body == {"max_tokens": 5, "stream": True, "anthropic_version": "vertex-2023-10-16"}


def _headers(common: Any) -> dict[str, str]:
    return {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}


def test_forward_to_vertex_claude_with_the_current_token() -> None:
    config = load_config(None, {})
    up = resolve_upstreams(config, {"GOOGLE_APPLICATION_CREDENTIALS": "/sa.json"}, None)["vertex"]
    tokens, _, _ = source()
    up = dataclasses.replace(up, tokens=tokens, project="acme")
    raw = b'{"model":"vertex-claude-haiku-4-5","max_tokens":9,"stream":true,"messages":[]}'
    request = parse_request(Api.ANTHROPIC_MESSAGES, raw)
    entry = config.catalog.lookup("vertex-claude-haiku-4-5")
    assert entry is not None
    admission = Admission(Decision.NONE, entry)

    def forward() -> Any:
        return route.forward(
            up,
            request,
            route.output_cap(admission.bound),
            served_model="vertex-claude-haiku-4-5",
            path="/v1/messages",
            client_headers=("authorization", "anthropic-version", "content-type"),
            redacted=None,
            cluster=up.cluster,
        )

    with pytest.raises(ProviderUnavailable):  # no token yet: 503, never an unauthenticated call
        forward()
    tokens.refresh_if_due(T0)
    common = forward()
    headers = _headers(common)
    assert headers[":path"] == (
        "/v1/projects/acme/locations/global/publishers/anthropic/models/"
        "claude-haiku-4-5@20251001:streamRawPredict"
    )
    assert headers["authorization"] == "Bearer ya29.token-1"
    body = orjson.loads(common.body_mutation.body)
    assert "model" not in body and body["anthropic_version"] == "vertex-2023-10-16"
    assert headers["content-length"] == str(len(common.body_mutation.body))
    # anthropic-version goes in the body on Vertex: the client's header is dropped.
    assert "anthropic-version" in common.header_mutation.remove_headers


def test_a_mocked_vertex_gets_the_mocks_fixed_token() -> None:
    up = resolve_upstreams(load_config(None, {}), {}, "http://127.0.0.1:9/v1")["vertex"]
    assert up.mocked and up.credential() == ("authorization", "Bearer " + MOCK_TOKEN)
    assert MOCK_TOKEN == vertex_api.VERTEX_TOKEN  # the two sides spell the same token
    assert up.upstream_path("/v1/projects/p/x") == "/v1/projects/p/x"  # the mock's root


CTX = ReplyContext(Controls(), "abc", 0)
CLAUDE = {"anthropic_version": "vertex-2023-10-16", "max_tokens": 8, "messages": []}


def test_mock_vertex_claude_replies_and_refusals() -> None:
    messages = [{"role": "user", "content": "hi"}]
    reply = vertex_api.claude_reply({**CLAUDE, "messages": messages}, CTX, model="c", stream=False)
    assert isinstance(reply, JsonReply) and orjson.loads(reply.body)["model"] == "c"
    streamed = {**CLAUDE, "messages": messages, "stream": True}
    assert isinstance(vertex_api.claude_reply(streamed, CTX, model="c", stream=True), StreamReply)
    for body, stream in (
        ({**CLAUDE, "model": "c"}, False),  # the model is the path's
        ({**CLAUDE, "anthropic_version": "2023-06-01"}, False),
        (CLAUDE, True),  # streamRawPredict without stream: true
    ):
        with pytest.raises(ApiError) as caught:
            vertex_api.claude_reply(body, CTX, model="c", stream=stream)
        assert caught.value.status == 400
    assert vertex_api.token_error({"authorization": "Bearer " + MOCK_TOKEN}, MOCK_TOKEN) is None
    for headers in ({}, {"authorization": "Bearer other"}, {"x-goog-api-key": MOCK_TOKEN}):
        err = vertex_api.token_error(headers, MOCK_TOKEN)
        assert err is not None and err.status == 401
