"""The response cache through real Envoy, the sidecar, redis-server and the mock provider, with the
official SDKs as clients: tenant isolation, JSON after stream and stream after JSON in every API
(Gemini's generateContent and its stream share an entry),
TTL expiry, the entry size cap, the skip / refresh / ttl headers, budgets untouched by a hit."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
import redis
from google import genai
from google.genai import types as genai_types

from gateway_extproc.identity.devissuer import DevIssuer, ensure_dev_issuer
from gateway_extproc.stack import Stack
from tests.e2e.conftest import start_stack
from tests.e2e.harness import AuditLog, MockLog, eventually, expected_cost_micros, extproc_hosts

pytestmark = pytest.mark.e2e

MAX_ENTRY = 4096
# A model of the operator catalog whose injected output cap is short enough to cut an answer.
CAPPED_MODEL = "gpt-capped-test"
CAP = 8
CATALOG = f"""
models:
  {CAPPED_MODEL}:
    provider: openai
    schema: openai
    max_output_tokens: 1000
    default_max_output_tokens: {CAP}
    input: 0.15
    output: 0.60
"""
CONFIG = """
identity: {{dev_issuer: true}}
sidecar: {{workers: 1}}
catalog: {{files: [{catalog}]}}
cache:
  max_entry_bytes: {max_entry}
  rules:
    - name: short
      match: {{groups: [short]}}
      ttl: 2s
    - name: team
      match: {{groups: [team]}}
      ttl: 1h
      scope: group
    - name: lookalikes  # a group named "x,y" and the pair x, y are two tenants
      match: {{groups: ["x,y", x, y]}}
      ttl: 1h
      scope: group
    - name: shared  # one tenant: callers with and without a budget (an injected cap)
      match: {{groups: [shared]}}
      ttl: 1h
      scope: global
    - name: everyone
      match: {{groups: [cached]}}
      ttl: 1h
budgets:
  - name: cached-users
    scope: {{kind: user}}
    match: {{groups: [cached]}}
    limit_usd: 5
    window: {{type: calendar, period: month}}
    action: block
  - name: capped-users
    scope: {{kind: user}}
    match: {{groups: [capped]}}
    limit_usd: 5
    window: {{type: calendar, period: month}}
    action: block
  - name: shrunk-users  # any gpt-4o request is over it: served by gpt-4o-mini instead
    scope: {{kind: user}}
    match: {{groups: [shrunk], models: [gpt-4o]}}
    limit_usd: 0.000001
    window: {{type: calendar, period: month}}
    action: downgrade
    downgrade_to: gpt-4o-mini
rate_limits:
  - name: hit-counting
    scope: {{kind: user}}
    match: {{groups: [hit-counted]}}
    requests: 2
    window: 1h
    action: block
    count_cache_hits: true
"""
ENTRIES = "llmgw:{gwc}:e:*"
STATUS = "x-gateway-cache-status"


class Cached:
    def __init__(self, stack: Stack, issuer: DevIssuer) -> None:
        self.stack = stack
        self.issuer = issuer
        self.audit = AuditLog(stack.run_dir / "audit.jsonl")
        assert stack.mock_url is not None
        self.mock = MockLog(stack.mock_url.removesuffix("/v1"))
        self.redis = redis.Redis.from_url(stack.redis_url)
        self.clients: list[openai.OpenAI | anthropic.Anthropic] = []  # closed at the end

    def token(self, user: str, *groups: str) -> str:
        return self.issuer.mint(user, list(groups), None, 3600, {}, time.time())

    def openai(self, user: str, *groups: str) -> openai.OpenAI:
        base = self.stack.gateway_url + "/v1"
        client = openai.OpenAI(base_url=base, api_key=self.token(user, *groups), max_retries=0)
        self.clients.append(client)
        return client

    def anthropic(self, user: str, *groups: str) -> anthropic.Anthropic:
        token = self.token(user, *groups)
        client = anthropic.Anthropic(
            base_url=self.stack.gateway_url, auth_token=token, max_retries=0
        )
        self.clients.append(client)
        return client

    def gemini(self, user: str, *groups: str) -> genai.Client:
        """Keep it in a variable while it is used: a collected Client closes its connection."""
        options = genai_types.HttpOptions(base_url=self.stack.gateway_url)
        return genai.Client(api_key=self.token(user, *groups), http_options=options)

    def upstream_calls(self, marker: str) -> int:
        """Requests the mock provider received since the test began whose body mentions
        `marker` (`_settled` clears its log: a full log could have dropped one)."""
        return sum(marker in str(r.get("body")) for r in self.mock.received())

    def entries(self) -> set[bytes]:
        return set(self.redis.scan_iter(ENTRIES))

    def settled(self) -> None:
        """Every earlier response metered and its answer stored. In observe mode a miss is
        stored by the observer just after the client has the response, so a test's `before`
        could otherwise miss the previous test's last entry: wait until Envoy has no ext_proc
        stream open (each observer stream closes once its request is finished, store
        scheduled), then until the entries stay the same for a quiet period."""
        eventually(
            lambda: all(h["rq_active"] == "0" for h in extproc_hosts(self.stack.admin_url).values())
        )
        seen = self.entries()
        deadline = time.monotonic() + 30
        quiet_until = time.monotonic() + 0.2
        while time.monotonic() < quiet_until:
            assert time.monotonic() < deadline, "cache entries never stopped changing"
            time.sleep(0.05)
            now = self.entries()
            if now != seen:
                seen, quiet_until = now, time.monotonic() + 0.2

    def new_entry(self, before: set[bytes]) -> bytes:
        """Wait for one entry that was not there `before` (the store runs after the response)."""
        found: list[bytes] = []

        def appeared() -> bool:
            found[:] = sorted(self.entries() - before)
            return bool(found)

        eventually(appeared)
        assert len(found) == 1, found
        return found[0]


@pytest.fixture(autouse=True)
def _settled(gw: Cached) -> None:
    gw.settled()
    gw.mock.clear()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cached]:
    tmp_path = tmp_path_factory.mktemp("cache")
    run_dir = tmp_path / "run"
    issuer = ensure_dev_issuer(run_dir / "dev-issuer")
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG)
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(catalog=catalog, max_entry=MAX_ENTRY))
    c = Cached(start_stack(run_dir, config_path=config), issuer)
    yield c
    for client in c.clients:
        client.close()
    c.redis.close()
    c.stack.stop()


def question(marker: str) -> list[Any]:
    return [{"role": "user", "content": f"What is {marker}?"}]


def chat_json(client: openai.OpenAI, marker: str, **headers: str) -> tuple[Any, Any]:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=question(marker), extra_headers=headers
    )
    return raw.headers, raw.parse()


def chat_stream(
    client: openai.OpenAI, marker: str, include_usage: bool
) -> tuple[Any, str, list[Any]]:
    """(headers, text, usage of every chunk) of a streamed chat completion."""
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=question(marker),
        stream=True,
        stream_options={"include_usage": include_usage},
    )
    text, usages = "", []
    for chunk in raw.parse():
        usages.append(chunk.usage)
        for choice in chunk.choices:
            text += choice.delta.content or ""
    return raw.headers, text, usages


def test_two_users_never_share_an_entry(gw: Cached) -> None:
    marker = uuid.uuid4().hex
    alice, bob = gw.openai("alice@example.com", "cached"), gw.openai("bob@example.com", "cached")
    before = gw.entries()
    headers, first = chat_json(alice, marker)
    assert headers[STATUS] == "miss"
    alice_entry = gw.new_entry(before)
    headers, again = chat_json(alice, marker)
    assert headers[STATUS] == "hit"
    assert again.choices[0].message.content == first.choices[0].message.content
    assert gw.upstream_calls(marker) == 1

    headers, _ = chat_json(bob, marker)  # the same request, another tenant: a miss
    assert headers[STATUS] == "miss"
    assert gw.upstream_calls(marker) == 2
    bob_entry = gw.new_entry(before | {alice_entry})
    assert bob_entry != alice_entry
    headers, _ = chat_json(bob, marker)
    assert headers[STATUS] == "hit"
    assert gw.upstream_calls(marker) == 2


def test_group_scope_shares_within_the_group_only(gw: Cached) -> None:
    marker = uuid.uuid4().hex
    before = gw.entries()
    headers, _ = chat_json(gw.openai("carol@example.com", "team"), marker)
    assert headers[STATUS] == "miss"
    gw.new_entry(before)
    headers, _ = chat_json(gw.openai("dave@example.com", "team"), marker)
    assert headers[STATUS] == "hit"  # the same group: shared, as configured
    assert gw.upstream_calls(marker) == 1


def test_a_group_named_with_a_comma_is_not_the_pair_of_groups(gw: Cached) -> None:
    marker = uuid.uuid4().hex
    before = gw.entries()
    headers, _ = chat_json(gw.openai("rita@example.com", "x,y"), marker)
    assert headers[STATUS] == "miss"
    one = gw.new_entry(before)
    headers, _ = chat_json(gw.openai("sam@example.com", "x", "y"), marker)
    assert headers[STATUS] == "miss"  # another tenant, whatever the names joined read
    other = gw.new_entry(before | {one})
    assert other != one
    headers, _ = chat_json(gw.openai("tom@example.com", "y", "x"), marker)
    assert headers[STATUS] == "hit"  # the same pair of groups: shared, as configured
    assert gw.upstream_calls(marker) == 2


def capped_ask(client: openai.OpenAI, marker: str, **body: Any) -> tuple[Any, Any]:
    raw = client.chat.completions.with_raw_response.create(
        model=CAPPED_MODEL,
        messages=question(marker),
        extra_headers={"x-mock-output-tokens": str(CAP * 4)},  # more than the cap lets through
        **body,
    )
    return raw.headers, raw.parse()


def test_an_answer_cut_by_the_injected_cap_is_never_replayed_to_a_caller_without_it(
    gw: Cached,
) -> None:
    """Uma's budget makes the gateway cap her request's output (the model's
    default_max_output_tokens); Vic has no budget, so his identical request goes out uncapped.
    They share one cache tenant (scope: global), yet never each other's answer."""
    marker = uuid.uuid4().hex
    uma = gw.openai("uma@example.com", "shared", "capped")
    vic = gw.openai("vic@example.com", "shared")
    before = gw.entries()
    headers, cut = capped_ask(uma, marker)
    assert headers[STATUS] == "miss"
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == CAP
    assert gw.mock.last()["body"]["max_completion_tokens"] == CAP
    capped_entry = gw.new_entry(before)

    headers, whole = capped_ask(vic, marker)
    assert headers[STATUS] == "miss"  # the cut answer is not his
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage.completion_tokens == CAP * 4
    assert "max_completion_tokens" not in gw.mock.last()["body"]
    gw.new_entry(before | {capped_entry})

    headers, again = capped_ask(vic, marker)
    assert headers[STATUS] == "hit"
    assert again.choices[0].message.content == whole.choices[0].message.content
    # Uma's request and one that sets the same cap itself reach the provider as one body.
    headers, again = capped_ask(uma, marker)
    assert headers[STATUS] == "hit"
    assert again.choices[0].message.content == cut.choices[0].message.content
    headers, again = capped_ask(vic, marker, max_completion_tokens=CAP)
    assert headers[STATUS] == "hit"
    assert again.choices[0].message.content == cut.choices[0].message.content
    assert gw.upstream_calls(marker) == 2


def test_a_downgraded_answer_is_never_stored(gw: Cached) -> None:
    """Wes's gpt-4o request is served by gpt-4o-mini (his budget downgrades it): that answer is
    not gpt-4o's and is never stored. Uma asks gpt-4o the same thing in the same tenant, with the
    same output cap (a budget applies to both): a miss, answered by gpt-4o, then stored."""
    marker = uuid.uuid4().hex
    wes = gw.openai("wes@example.com", "shared", "shrunk")
    uma = gw.openai("uma@example.com", "shared", "capped")
    before = gw.entries()

    def ask(client: openai.OpenAI) -> tuple[Any, Any]:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=question(marker)
        )
        return raw.headers, raw.parse()

    headers, _ = ask(wes)
    assert headers["x-gateway-downgraded-from"] == "gpt-4o" and headers[STATUS] == "miss"
    assert gw.mock.last()["body"]["model"] == "gpt-4o-mini"
    gw.settled()  # its response metered and done with: nothing was stored
    assert gw.entries() == before
    headers, large = ask(uma)
    assert headers[STATUS] == "miss" and "x-gateway-downgraded-from" not in headers
    assert gw.mock.last()["body"]["model"] == "gpt-4o"
    gw.new_entry(before)
    headers, again = ask(uma)
    assert headers[STATUS] == "hit"
    assert again.choices[0].message.content == large.choices[0].message.content
    assert gw.upstream_calls(marker) == 2


def test_openai_stream_after_json(gw: Cached) -> None:
    marker = uuid.uuid4().hex
    client = gw.openai("erin@example.com", "cached")
    before = gw.entries()
    _, answer = chat_json(client, marker)
    gw.new_entry(before)
    headers, text, usages = chat_stream(client, marker, include_usage=True)
    assert headers[STATUS] == "hit"
    assert headers["content-type"].startswith("text/event-stream")
    assert text == answer.choices[0].message.content
    assert usages[-1] is not None and usages[-1] == answer.usage  # the usage chunk, last
    assert all(u is None for u in usages[:-1])
    _, text, usages = chat_stream(client, marker, include_usage=False)  # not asked: no usage
    assert text == answer.choices[0].message.content
    assert all(u is None for u in usages)
    assert gw.upstream_calls(marker) == 1


def test_openai_json_after_stream(gw: Cached) -> None:
    marker = uuid.uuid4().hex
    client = gw.openai("frank@example.com", "cached")
    before = gw.entries()
    headers, text, _ = chat_stream(client, marker, include_usage=False)
    assert headers[STATUS] == "miss"
    gw.new_entry(before)
    headers, answer = chat_json(client, marker)
    assert headers[STATUS] == "hit"
    assert answer.choices[0].message.content == text
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    assert gw.upstream_calls(marker) == 1


def anthropic_ask(client: anthropic.Anthropic, marker: str) -> tuple[Any, Any]:
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-5", max_tokens=200, messages=question(marker)
    )
    return raw.headers, raw.parse()


def anthropic_stream(client: anthropic.Anthropic, marker: str) -> tuple[Any, str, Any]:
    with client.messages.stream(
        model="claude-sonnet-5", max_tokens=200, messages=question(marker)
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        return stream.response.headers, text, final


def test_anthropic_stream_after_json(gw: Cached) -> None:
    marker = uuid.uuid4().hex
    client = gw.anthropic("gina@example.com", "cached")
    before = gw.entries()
    headers, message = anthropic_ask(client, marker)
    assert headers[STATUS] == "miss"
    gw.new_entry(before)
    headers, text, final = anthropic_stream(client, marker)
    assert headers[STATUS] == "hit"
    assert text == message.content[0].text
    assert [b.text for b in final.content] == [b.text for b in message.content]
    assert final.stop_reason == message.stop_reason
    assert final.usage.output_tokens == message.usage.output_tokens
    assert final.usage.input_tokens == message.usage.input_tokens
    assert gw.upstream_calls(marker) == 1


def test_anthropic_json_after_stream(gw: Cached) -> None:
    marker = uuid.uuid4().hex
    client = gw.anthropic("hank@example.com", "cached")
    before = gw.entries()
    headers, text, final = anthropic_stream(client, marker)
    assert headers[STATUS] == "miss"
    gw.new_entry(before)
    headers, message = anthropic_ask(client, marker)
    assert headers[STATUS] == "hit"
    assert message.content[0].text == text
    assert message.usage.output_tokens == final.usage.output_tokens > 0
    assert message.stop_reason == "end_turn"
    assert gw.upstream_calls(marker) == 1


def gemini_ask(client: genai.Client, marker: str) -> tuple[Any, Any]:
    response = client.models.generate_content(
        model="gemini-2.5-flash", contents=f"What is {marker}?"
    )
    raw = response.sdk_http_response
    assert raw is not None and raw.headers is not None
    return raw.headers, response


def gemini_stream(client: genai.Client, marker: str) -> tuple[Any, str, Any]:
    """(headers, text, the last chunk's usage) of a streamed generateContent."""
    chunks = list(
        client.models.generate_content_stream(
            model="gemini-2.5-flash", contents=f"What is {marker}?"
        )
    )
    raw = chunks[0].sdk_http_response
    assert raw is not None and raw.headers is not None
    return raw.headers, "".join(c.text or "" for c in chunks), chunks[-1].usage_metadata


def test_gemini_stream_after_json(gw: Cached) -> None:
    marker = uuid.uuid4().hex
    client = gw.gemini("gemma@example.com", "cached")
    before = gw.entries()
    headers, response = gemini_ask(client, marker)
    assert headers[STATUS] == "miss"
    miss = gw.audit.wait_for(headers["x-gateway-request-id"])
    gw.new_entry(before)
    headers, again = gemini_ask(client, marker)
    assert headers[STATUS] == "hit"
    assert again.text == response.text and again.usage_metadata == response.usage_metadata
    headers, text, usage = gemini_stream(client, marker)  # the stream path: the same entry
    assert headers[STATUS] == "hit"
    assert headers["content-type"].startswith("text/event-stream")
    assert text == response.text and usage == response.usage_metadata
    hit = gw.audit.wait_for(headers["x-gateway-request-id"])
    assert hit["cache"] == "hit" and hit["cost_micros"] == 0 and hit["api"] == "gemini_stream"
    assert hit["cost_saved_micros"] == miss["cost_micros"] > 0
    assert gw.upstream_calls(marker) == 1


def test_gemini_json_after_stream(gw: Cached) -> None:
    marker = uuid.uuid4().hex
    client = gw.gemini("gordon@example.com", "cached")
    before = gw.entries()
    headers, text, usage = gemini_stream(client, marker)
    assert headers[STATUS] == "miss"
    gw.new_entry(before)
    headers, response = gemini_ask(client, marker)
    assert headers[STATUS] == "hit"
    assert response.text == text and response.usage_metadata == usage
    assert response.candidates and response.candidates[0].finish_reason == "STOP"
    assert usage is not None and (usage.candidates_token_count or 0) > 0
    # Another tenant asking the same is a miss.
    other = gw.gemini("gustav@example.com", "cached")
    headers, _ = gemini_ask(other, marker)
    assert headers[STATUS] == "miss"
    assert gw.upstream_calls(marker) == 2


def test_ttl_expiry(gw: Cached) -> None:
    marker = uuid.uuid4().hex
    client = gw.openai("ivan@example.com", "short")  # rule ttl: 2s
    before = gw.entries()
    chat_json(client, marker)
    entry = gw.new_entry(before)
    assert 0 < gw.redis.pttl(entry) <= 2000
    headers, _ = chat_json(client, marker)
    assert headers[STATUS] == "hit"
    eventually(lambda: not gw.redis.exists(entry))
    headers, _ = chat_json(client, marker)
    assert headers[STATUS] == "miss"
    assert gw.upstream_calls(marker) == 2


def test_client_ttl_shortens_the_rule(gw: Cached) -> None:
    marker = uuid.uuid4().hex
    client = gw.openai("judy@example.com", "cached")  # rule ttl: 1h
    before = gw.entries()
    chat_json(client, marker, **{"x-gateway-cache-ttl": "5"})
    entry = gw.new_entry(before)
    assert 0 < gw.redis.pttl(entry) <= 5000
    assert gw.mock.last()["headers"].get("x-gateway-cache-ttl") is None  # never forwarded
    chat_json(client, marker + "-longer", **{"x-gateway-cache-ttl": "86400"})  # a day asked
    longer = gw.new_entry(before | {entry})
    assert 3_000_000 < gw.redis.pttl(longer) <= 3_600_000  # the rule's hour: never lengthened


def test_entry_over_the_size_cap_is_not_stored(gw: Cached) -> None:
    marker = uuid.uuid4().hex
    client = gw.openai("karl@example.com", "cached")
    big = {"x-mock-output-tokens": str(MAX_ENTRY)}  # words: well over MAX_ENTRY bytes
    before = gw.entries()
    headers, _ = chat_json(client, marker, **big)
    assert headers[STATUS] == "miss"
    # A small answer stored after it: the sidecar has dealt with the big one by then.
    chat_json(client, marker + "-small")
    gw.new_entry(before)
    headers, _ = chat_json(client, marker, **big)
    assert headers[STATUS] == "miss"
    assert gw.upstream_calls(marker + "?") == 2


def test_a_redis_that_hangs_is_a_miss_within_the_deadline(gw: Cached) -> None:
    """Redis accepts the lookup and never answers (CLIENT PAUSE ALL, as a stalled server does):
    the request goes to the provider after budget_store.deadline_ms (250 ms), not the client's
    2 s socket timeout. Carol's group rule has no budget, so nothing else waits on Redis."""
    marker = uuid.uuid4().hex
    client = gw.openai("carol@example.com", "team")
    pause_ms = 3000  # CLIENT UNPAUSE would wait too: the pause ends on its own
    gw.redis.client_pause(pause_ms, all=True)
    paused = time.monotonic()
    headers, _ = chat_json(client, marker)
    took = time.monotonic() - paused
    assert headers[STATUS] == "miss"
    assert took < 2.0 < pause_ms / 1000  # answered while Redis was still paused
    assert gw.upstream_calls(marker) == 1
    eventually(lambda: gw.redis.ping(), what="redis paused")  # the next tests need it


def test_skip_and_refresh(gw: Cached) -> None:
    marker = uuid.uuid4().hex
    client = gw.openai("lena@example.com", "cached")
    before = gw.entries()
    headers, _ = chat_json(client, marker, **{"x-gateway-cache": "skip"})
    assert headers[STATUS] == "skip"
    headers, _ = chat_json(client, marker)  # skip stored nothing
    assert headers[STATUS] == "miss"
    entry = gw.new_entry(before)
    headers, _ = chat_json(client, marker, **{"x-gateway-cache": "skip"})
    assert headers[STATUS] == "skip"  # skip does not read either
    assert gw.upstream_calls(marker) == 3
    # Shorten the entry's life to a minute, so a fresh TTL (the rule's hour) stands out for as
    # long as the test looks (comparing against the old TTL left a window of a few ms).
    assert gw.redis.pexpire(entry, 60_000)
    headers, _ = chat_json(client, marker, **{"x-gateway-cache": "refresh"})
    assert headers[STATUS] == "refresh"
    assert gw.upstream_calls(marker) == 4
    eventually(lambda: gw.redis.pttl(entry) > 3_000_000)  # stored again, with a fresh TTL
    headers, _ = chat_json(client, marker)
    assert headers[STATUS] == "hit"
    assert gw.upstream_calls(marker) == 4


def test_hit_costs_nothing_and_is_audited_with_the_cost_saved(gw: Cached) -> None:
    marker = uuid.uuid4().hex
    client = gw.openai("mona@example.com", "cached")
    before = gw.entries()
    headers, _ = chat_json(client, marker)
    miss = gw.audit.wait_for(headers["x-gateway-request-id"])
    gw.new_entry(before)
    eventually(lambda: counters(gw, "mona@example.com")[1] == 0)  # the miss settled
    held_spent = counters(gw, "mona@example.com")
    assert held_spent[0] > 0
    headers, _ = chat_json(client, marker)
    assert headers[STATUS] == "hit"
    assert headers["x-gateway-cost-usd"] == "0.000000"
    hit = gw.audit.wait_for(headers["x-gateway-request-id"])
    assert miss["cache"] == "miss" and miss["cost_micros"] > 0
    assert miss["cost_micros"] == expected_cost_micros("gpt-4o-mini", miss["tokens"])
    assert hit["cache"] == "hit"
    assert hit["cost_micros"] == 0 and hit["usage_source"] == "none"
    assert hit["cost_saved_micros"] == miss["cost_micros"]
    assert hit["budget"] is None  # no reservation, no settle
    assert hit["status"] == 200 and hit["served_model"] == "gpt-4o-mini"
    assert counters(gw, "mona@example.com") == held_spent


def counters(gw: Cached, user: str) -> tuple[int, int]:
    """(spent, held) of the user's budget counters."""
    spent = held = 0
    for key in gw.redis.scan_iter(f"llmgw:{{gwb}}:[cr]:cached-users:{user}:*"):
        record = gw.redis.hgetall(key).items()
        fields = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in record}
        spent += fields.get("spent", 0) + sum(v for k, v in fields.items() if k.startswith("b:"))
        held += fields.get("held", 0)
    return spent, held


def test_requests_with_tools_are_not_cached_by_default(gw: Cached) -> None:
    marker = uuid.uuid4().hex
    client = gw.openai("nina@example.com", "cached")
    tools: Any = [{"type": "function", "function": {"name": "send_mail", "parameters": {}}}]
    for _ in range(2):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=question(marker), tools=tools
        )
        assert raw.headers[STATUS] == "skip"
    assert gw.upstream_calls(marker) == 2


def test_invalid_cache_headers_are_a_400_in_the_clients_format(gw: Cached) -> None:
    client = gw.anthropic("olga@example.com", "cached")
    with pytest.raises(anthropic.BadRequestError) as exc:
        client.messages.create(
            model="claude-sonnet-5",
            max_tokens=10,
            messages=question("x"),
            extra_headers={"x-gateway-cache-ttl": "soon"},
        )
    assert "x-gateway-cache-ttl" in str(exc.value)


def test_responses_api_stream_after_json_and_json_after_stream(gw: Cached) -> None:
    client = gw.openai("pia@example.com", "cached")
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    before = gw.entries()
    raw = client.responses.with_raw_response.create(model="gpt-5-mini", input=f"What is {first}?")
    assert raw.headers[STATUS] == "miss"
    answer = raw.parse()
    before.add(gw.new_entry(before))
    raw_stream = client.responses.with_raw_response.create(
        model="gpt-5-mini", input=f"What is {first}?", stream=True
    )
    assert raw_stream.headers[STATUS] == "hit"
    events = list(raw_stream.parse())
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    (final,) = [e.response for e in events if e.type == "response.completed"]
    assert text == final.output_text == answer.output_text
    assert final.usage is not None and answer.usage is not None
    assert final.usage.output_tokens == answer.usage.output_tokens
    assert gw.upstream_calls(first) == 1

    with client.responses.stream(model="gpt-5-mini", input=f"What is {second}?") as stream:
        streamed = stream.get_final_response()
    gw.new_entry(before)
    raw = client.responses.with_raw_response.create(model="gpt-5-mini", input=f"What is {second}?")
    assert raw.headers[STATUS] == "hit"
    assert raw.parse().output_text == streamed.output_text
    assert gw.upstream_calls(second) == 1


def test_responses_in_a_conversation_are_not_cached(gw: Cached) -> None:
    client = gw.openai("quin@example.com", "cached")
    marker = uuid.uuid4().hex
    for _ in range(2):
        raw = client.responses.with_raw_response.create(
            model="gpt-5-mini", input=f"What is {marker}?", conversation="conv_1"
        )
        assert raw.headers[STATUS] == "skip"
    assert gw.upstream_calls(marker) == 2


def test_a_rate_limit_set_to_count_hits_counts_them_and_refuses_past_its_limit(gw: Cached) -> None:
    marker = uuid.uuid4().hex
    client = gw.openai("hank@example.com", "cached", "hit-counted")
    before = gw.entries()
    headers, _ = chat_json(client, marker)  # a miss: request 1 of 2
    assert headers[STATUS] == "miss" and headers["x-ratelimit-remaining-requests"] == "1"
    gw.new_entry(before)
    headers, _ = chat_json(client, marker)  # a hit: request 2 of 2
    assert headers[STATUS] == "hit" and headers["x-ratelimit-remaining-requests"] == "0"
    hit = gw.audit.wait_for(headers["x-gateway-request-id"])
    assert hit["cache"] == "hit" and hit["cost_micros"] == 0
    counted = [(r["name"], r["remaining_requests"]) for r in hit["rate_limits"]]
    assert counted == [("hit-counting", 0)]
    with pytest.raises(openai.RateLimitError) as refused:
        chat_json(client, marker)  # cached, but the limit counts hits: 429
    assert refused.value.code == "rate_limited"
    assert refused.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    record = gw.audit.wait_for(refused.value.response.headers["x-gateway-request-id"])
    assert record["status"] == 429 and record["error_code"] == "rate_limited"
    assert record["cache"] is None  # not answered from the cache
    assert gw.upstream_calls(marker) == 1
