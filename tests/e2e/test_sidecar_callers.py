"""Only Envoy may talk to the sidecar, through the real stack (Envoy, the sidecar, redis-server, a
mock provider that demands the gateway's own key): a client on the sidecar's port with a valid
user JWT gets no provider key; a forged observer stream - without the caller token, or with it
but a state the workers did not sign - books no spend, writes no cache entry and no audit record;
the SDK path still works; and a sidecar apart from its Envoy speaks mutual TLS with it."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
import redis
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from gateway_extproc.apis import Api
from gateway_extproc.budgets.admission import Decision
from gateway_extproc.config.gateway import load_config
from gateway_extproc.envoy.filters import ClientTls
from gateway_extproc.handoff import MAC_KEY, NAMESPACE, STATE_KEY, BudgetHandoff, RequestState
from gateway_extproc.identity.model import ANONYMOUS, AuthMethod, Kind
from gateway_extproc.sidecar_auth.seal import StateSeal
from gateway_extproc.sidecar_auth.settings import DEFAULT_STATE_KEYS_ENV
from gateway_extproc.stack import Stack
from tests.e2e.conftest import stack_environ, start_stack
from tests.e2e.harness import AuditLog, caller_metadata, eventually, running_mock
from tests.idp import ISSUER, JwksServer, SigningKey
from tests.selfsigned import write_pki

pytestmark = pytest.mark.e2e

OPENAI_KEY = "sk-gateway-owned-openai-key-4d2c"
MODEL = "gpt-4o-mini"
BUDGET = "users-monthly"
VICTIM = "victim@example.com"
ALICE = "alice@example.com"
CONFIG = """
identity:
  issuers:
    corp:
      issuer: {issuer}
      audiences: [llm-gateway]
      jwks_url: {jwks_url}
      claims: {{user: [email], groups: [groups]}}
providers:
  openai:
    base_url: {mock}/v1
    auth: {{header: authorization, prefix: "Bearer ", env: TEST_OPENAI_KEY}}
  anthropic: null
sidecar: {{workers: 1}}
budgets:
  - name: {budget}
    scope: {{kind: user}}
    limit_usd: 100
    window: {{type: calendar, period: month}}
    action: block
cache:
  rules:
    - name: everyone
      match: {{groups: [eng]}}
      ttl: 1h
"""


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey("callers")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, key: SigningKey) -> Iterator[Stack]:
    """One worker (a forged stream and its barrier land on the same one), a provider that
    answers only with the gateway's key, a user budget, a cache rule, an audit file."""
    run_dir = tmp_path_factory.mktemp("callers")
    idp = JwksServer(key)
    with running_mock(run_dir, "--openai-key", OPENAI_KEY) as mock:
        config = run_dir / "gateway.yaml"
        config.write_text(CONFIG.format(issuer=ISSUER, jwks_url=idp.url, mock=mock, budget=BUDGET))
        env = stack_environ(run_dir, TEST_OPENAI_KEY=OPENAI_KEY)
        s = start_stack(run_dir, config_path=config, environ=env)
        yield s
        s.stop()
    idp.close()


@pytest.fixture(scope="module")
def store(stack: Stack) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stack.redis_url)
    yield client
    client.close()


def jwt_for(key: SigningKey, user: str) -> str:
    return key.token({"email": user, "email_verified": True, "groups": ["eng"]})


def _headers(headers: dict[str, str]) -> pb.HttpHeaders:
    return pb.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
        )
    )


def _process(
    stack: Stack, messages: list[pb.ProcessingRequest], metadata: Any
) -> list[pb.ProcessingResponse]:
    """One ext_proc stream on worker 0's own port, as any pod that reaches it could open."""
    with grpc.insecure_channel(f"127.0.0.1:{stack.sidecar_ports[0]}") as channel:
        stub = pb_grpc.ExternalProcessorStub(channel)
        return list(stub.Process(iter(messages), timeout=10, metadata=metadata))


def spent(store: redis.Redis, user: str) -> int:
    return sum(
        int(store.hget(k, "spent") or 0) for k in store.scan_iter(f"llmgw:*:c:{BUDGET}:{user}:*")
    )


# -- the request phase: the provider key ----------------------------------------------------------


def _chat_request(key: SigningKey) -> list[pb.ProcessingRequest]:
    headers = {
        ":method": "POST",
        ":path": "/v1/chat/completions",
        ":authority": "gateway",
        "x-request-id": f"direct-{uuid.uuid4()}",
        "authorization": f"Bearer {jwt_for(key, ALICE)}",
        "content-type": "application/json",
    }
    body = {"model": MODEL, "messages": [{"role": "user", "content": "the key, please"}]}
    return [
        pb.ProcessingRequest(request_headers=_headers(headers)),
        pb.ProcessingRequest(
            request_body=pb.HttpBody(body=json.dumps(body).encode(), end_of_stream=True)
        ),
    ]


@pytest.mark.parametrize(
    "metadata",
    [None, (("x-gateway-sidecar-token", "a-guessed-token-0123456789abcdefghijklmnopq"),)],
    ids=["no caller token", "a wrong caller token"],
)
def test_a_client_with_a_valid_jwt_on_the_sidecar_port_gets_no_provider_key(
    stack: Stack, key: SigningKey, metadata: Any
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        _process(stack, _chat_request(key), metadata)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert OPENAI_KEY not in str(refused.value.details()) + str(refused.value.trailing_metadata())


def test_envoy_with_the_caller_token_is_served_as_before(stack: Stack, key: SigningKey) -> None:
    """The same request with the run's caller token (what Envoy sends): the reply injects the
    provider key toward the provider - what the refused callers above did not get."""
    replies = _process(stack, _chat_request(key), caller_metadata(stack))
    assert [r.WhichOneof("response") for r in replies] == ["request_headers", "request_body"]
    mutation = replies[1].request_body.response.header_mutation
    injected = {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}
    assert injected["authorization"] == f"Bearer {OPENAI_KEY}"


# -- the response phase: forged observer streams ---------------------------------------------------


def forged_state(request_id: str, cache_key: str) -> RequestState:
    """What a forger would hand the observer: another user's identity and budget, a fail-open
    admission (settled straight into the budget's counter), a cache ticket for an entry of its
    choosing."""
    config = load_config(None, {})
    entry = config.catalog.lookup(MODEL)
    assert entry is not None
    victim = dataclasses.replace(
        ANONYMOUS,
        kind=Kind.USER,
        auth_method=AuthMethod.JWT,
        user=VICTIM,
        groups=frozenset({"eng"}),
        issuer="corp",
    )
    budget = BudgetHandoff(
        decision=Decision.FAIL_OPEN.value,
        reservation_id=request_id,
        reserved=False,
        charges=((BUDGET, VICTIM, 1_000, 100_000_000),),
        arrived=time.time(),
        audit=None,
    )
    return RequestState(
        request_id=request_id,
        arrived=time.time(),
        method="POST",
        path="/v1/chat/completions",
        api=Api.OPENAI_CHAT,
        requested_model=MODEL,
        served_model=MODEL,
        price=entry.price,
        provider="openai",
        stream=False,
        input_tokens_estimate=10,
        max_tokens=None,
        cap_injected=False,
        identity=victim,
        metadata={},
        budget=budget,
        cache=f"miss:3600:{cache_key}",
    )


ANSWER = {
    "id": "chatcmpl-forged",
    "object": "chat.completion",
    "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "planted"}}],
    "usage": {"prompt_tokens": 100_000, "completion_tokens": 100_000, "total_tokens": 200_000},
}


def observer_messages(fields: dict[str, str]) -> list[pb.ProcessingRequest]:
    """A whole JSON response as Envoy's observability-mode filter sends it."""
    messages = [
        pb.ProcessingRequest(
            response_headers=_headers({":status": "200", "content-type": "application/json"})
        ),
        pb.ProcessingRequest(
            response_body=pb.HttpBody(body=json.dumps(ANSWER).encode(), end_of_stream=True)
        ),
    ]
    for message in messages:
        message.observability_mode = True
        message.metadata_context.filter_metadata[NAMESPACE].update(fields)
    return messages


def test_forged_observer_streams_book_no_spend_cache_nothing_and_audit_nothing(
    stack: Stack, store: redis.Redis
) -> None:
    audit = AuditLog(stack.run_dir / "audit.jsonl")
    worker_key = stack.sidecar_environ[DEFAULT_STATE_KEYS_ENV].encode()
    stranger = StateSeal((b"a-key-the-workers-do-not-hold-0123456789",))
    assert spent(store, VICTIM) == 0
    forgeries = {}
    for name in ("no-token", "no-mac", "foreign-mac", "stolen-mac"):
        rid = f"forged-{name}-{uuid.uuid4()}"
        forgeries[name] = (rid, forged_state(rid, cache_key=uuid.uuid4().hex * 2).encode())
    # Without the caller token the stream is refused before its first message is read, whatever
    # it carries (here a state even signed with the workers' own key).
    rid, text = forgeries["no-token"]
    signed = {STATE_KEY: text, MAC_KEY: StateSeal((worker_key,)).sign(text)}
    with pytest.raises(grpc.RpcError) as refused:
        _process(stack, observer_messages(signed), None)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # With the caller token (a stolen bootstrap, a compromised Envoy), a state the workers did
    # not sign is closed at its first message.
    other_text = forgeries["foreign-mac"][1]
    unsigned = {
        "no-mac": {STATE_KEY: forgeries["no-mac"][1]},
        "foreign-mac": {STATE_KEY: other_text, MAC_KEY: stranger.sign(other_text)},
        # A real MAC of another state: the request's own signed text cannot be changed.
        "stolen-mac": {
            STATE_KEY: forgeries["stolen-mac"][1],
            MAC_KEY: StateSeal((worker_key,)).sign(other_text),
        },
    }
    for fields in unsigned.values():
        assert _process(stack, observer_messages(fields), caller_metadata(stack)) == []
    # The barrier: the same forgery signed with the workers' key, on the same worker after the
    # others. Once its spend, entry and record are there, the forged ones would be too.
    barrier_rid = f"signed-{uuid.uuid4()}"
    barrier_key = uuid.uuid4().hex * 2
    barrier_text = forged_state(barrier_rid, barrier_key).encode()
    barrier = {STATE_KEY: barrier_text, MAC_KEY: StateSeal((worker_key,)).sign(barrier_text)}
    assert _process(stack, observer_messages(barrier), caller_metadata(stack)) == []
    record = audit.wait_for(barrier_rid)
    eventually(lambda: spent(store, VICTIM) == record["cost_micros"], what="barrier's spend")
    eventually(lambda: store.exists(f"llmgw:{{gwc}}:e:{barrier_key}") == 1, what="its entry")

    assert record["cost_micros"] > 0
    assert spent(store, VICTIM) == record["cost_micros"]  # the barrier's spend alone
    ids = {r["request_id"] for r in audit.records()}
    for rid, text in forgeries.values():
        assert rid not in ids
        cache_key = RequestState.decode(text).cache
        assert cache_key is not None
        assert store.exists(f"llmgw:{{gwc}}:e:{cache_key.rsplit(':', 1)[1]}") == 0
    log = (stack.run_dir / "stack.log").read_text(errors="replace")
    assert log.count("observer stream refused: its request state is") == 3
    assert "refused 1 ext_proc stream(s) without the caller token" in log
    for rid, _text in forgeries.values():  # logged without the state's contents
        assert rid not in log


def test_the_sdk_path_still_works(stack: Stack, key: SigningKey, store: redis.Redis) -> None:
    audit = AuditLog(stack.run_dir / "audit.jsonl")
    before = spent(store, ALICE)
    client = openai.OpenAI(
        base_url=stack.gateway_url + "/v1", api_key=jwt_for(key, ALICE), max_retries=0
    )
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}]
        )
    finally:
        client.close()
    assert raw.parse().choices[0].message.content
    record = audit.wait_for(raw.headers["x-gateway-request-id"])
    assert (record["usage_source"], record["identity"]["user"]) == ("provider", ALICE)
    eventually(lambda: spent(store, ALICE) == before + record["cost_micros"], what="settled")


# -- mutual TLS: a sidecar apart from its Envoy ---------------------------------------------------


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path]]:
    run_dir = tmp_path_factory.mktemp("callers-tls")
    pki = write_pki(run_dir / "pki", server_name="localhost")
    config = run_dir / "gateway.yaml"
    tls = {"cert_file": pki.file("server.crt"), "key_file": pki.file("server.key")}
    doc = {
        "identity": {"allow_anonymous": True},
        "sidecar": {"workers": 1, "tls": {**tls, "client_ca_file": pki.ca}},
    }
    config.write_text(yaml.safe_dump(doc))
    client = ClientTls(pki.file("client.crt"), pki.file("client.key"), pki.ca, "localhost")
    s = start_stack(run_dir, config_path=config, sidecar_client_tls=client)
    yield s, pki.directory
    s.stop()


def test_envoy_with_its_client_certificate_works_and_others_are_refused(
    tls_stack: tuple[Stack, Path],
) -> None:
    stack, pki = tls_stack
    # An anonymous caller (allowed here): the request went Envoy -> sidecar over mutual TLS.
    body = {"model": MODEL, "messages": [{"role": "user", "content": "over mutual TLS"}]}
    answer = httpx.post(stack.gateway_url + "/v1/chat/completions", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"]
    target = f"localhost:{stack.sidecar_ports[0]}"
    message = pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[
                    base_pb2.HeaderValue(key=":method", raw_value=b"GET"),
                    base_pb2.HeaderValue(key=":path", raw_value=b"/v1/models"),
                ]
            ),
            end_of_stream=True,
        )
    )
    ca = (pki / "ca.crt").read_bytes()
    no_cert = grpc.ssl_channel_credentials(ca)  # trusts the sidecar, presents nothing
    for channel in (grpc.secure_channel(target, no_cert), grpc.insecure_channel(target)):
        with channel, pytest.raises(grpc.RpcError) as refused:
            stub = pb_grpc.ExternalProcessorStub(channel)
            list(stub.Process(iter([message]), timeout=10, metadata=caller_metadata(stack)))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
