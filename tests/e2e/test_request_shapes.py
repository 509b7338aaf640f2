"""Request shapes whose bound was too low (issue 22, items 1-4), through real Envoy, sidecar
workers, redis-server and the mock provider, which bills what it says: its usage report is the
bill (`x-mock-input-tokens` for input the request's text does not show - tool definitions, the
providers' hidden tool prompts; `x-mock-cache-write*-tokens`; `x-mock-service-tier`, the tier a
project's default serves). Each test checks the reservation against that bill: the audit
record's cost is the bill at catalog prices, never above the reserved worst case (no overrun).

Every expected cost is computed here from catalog.yaml or literal prices (tests/e2e/harness.py,
worst_case.py), never from the gateway's own pricing code."""

from __future__ import annotations

import time
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import httpx
import pytest

from gateway_extproc.identity.devissuer import DevIssuer, ensure_dev_issuer
from gateway_extproc.stack import Stack
from tests.e2e.conftest import start_stack
from tests.e2e.harness import AuditLog, MockLog, expected_cost_micros, tokens
from tests.e2e.worst_case import GPT4O_PRIORITY, cost_micros, mock_input_tokens

pytestmark = pytest.mark.e2e
CHAT, RESPONSES, MESSAGES = "/v1/chat/completions", "/v1/responses", "/v1/messages"
ANTHROPIC = {"anthropic-version": "2023-06-01"}
GPT41_PRIORITY = {"input": Fraction("3.50"), "output": Fraction("14.00")}  # catalog.yaml

OPERATOR_CATALOG = """
models:
  gpt-4o: {context_window: 128000, image_input_tokens: 1445}
"""
BUDGETS = """
budgets:
  - name: shapes
    scope: {kind: user}
    match: {groups: [shapes]}
    limit_usd: 100
    window: {type: calendar, period: month}
    action: block
"""


class Gateway:
    def __init__(self, stack: Stack, issuer: DevIssuer) -> None:
        self.stack = stack
        self.issuer = issuer
        self.audit = AuditLog(stack.run_dir / "audit.jsonl")
        assert stack.mock_url is not None
        self.mock = MockLog(stack.mock_url.removesuffix("/v1"))
        self.token = issuer.mint("shaper@example.com", ["shapes"], None, 3600, {}, time.time())

    def post(self, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
        return httpx.post(
            self.stack.gateway_url + path,
            json=body,
            headers={"authorization": f"Bearer {self.token}", **headers},
            timeout=60,
        )

    def record(self, response: httpx.Response) -> dict[str, Any]:
        assert response.status_code == 200, response.text
        return self.audit.wait_for(response.headers["x-gateway-request-id"])

    def refused(self, path: str, body: dict[str, Any], **headers: str) -> dict[str, Any]:
        """A 400 for a body the provider must never see (the mock's log cleared first)."""
        self.mock.clear()
        response = self.post(path, body, **headers)
        assert response.status_code == 400, response.text
        assert self.mock.requests() == []
        error = response.json()["error"]
        assert isinstance(error, dict)
        return error


def _gateway(tmp: Any, config: str, models: str = OPERATOR_CATALOG) -> Iterator[Gateway]:
    run_dir = tmp / "run"
    issuer = ensure_dev_issuer(run_dir / "dev-issuer")
    catalog = tmp / "catalog.yaml"
    catalog.write_text(models)
    path = tmp / "gateway.yaml"
    path.write_text(
        "identity: {dev_issuer: true}\n"
        f"catalog: {{files: [{catalog}]}}\n"
        "sidecar: {workers: 2}\n" + config + BUDGETS
    )
    gw = Gateway(start_stack(run_dir, config_path=path), issuer)
    yield gw
    gw.stack.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Unseen input refused, as the issue's reproduction had it."""
    yield from _gateway(tmp_path_factory.mktemp("shapes"), "budget_store: {unseen_input: refuse}\n")


def no_overrun(rec: dict[str, Any]) -> dict[str, Any]:
    budget = rec["budget"]
    assert budget["overrun_micros"] == 0, rec
    assert rec["cost_micros"] <= budget["estimate_micros"], rec
    return budget


# -- 1. text beside an `image_url` key is text -------------------------------------------------

DESCRIPTION = "Where the picture is stored, and what it shows. " * 2_300  # 110 KB
SCHEMA = {
    "type": "object",
    "properties": {
        "image_url": {"type": "string", "description": DESCRIPTION},
        "caption": {"type": "string"},
    },
}
STORY = [{"role": "user", "content": "Describe the picture I uploaded yesterday."}]


def test_a_tool_schemas_text_beside_an_image_url_property_is_reserved(gw: Gateway) -> None:
    """The issue's case: the provider bills the tool definition's ~27k tokens; the gateway took
    the `properties` object for an image part and reserved ~2,100 input tokens (an overrun)."""
    tools = [{"type": "function", "function": {"name": "store", "parameters": SCHEMA}}]
    body = {"model": "gpt-4o", "messages": STORY, "tools": tools, "max_tokens": 10}
    billed = mock_input_tokens(STORY) + mock_input_tokens(tools)  # the definition is input too
    assert billed > 27_000
    r = gw.post(CHAT, body, **{"x-mock-input-tokens": str(billed), "x-mock-output-tokens": "10"})
    rec = gw.record(r)
    assert rec["tokens"]["input_tokens"] == billed
    assert rec["cost_micros"] == expected_cost_micros("gpt-4o", tokens(billed, output=10))
    assert no_overrun(rec)["bound"]["input_tokens"] >= billed


def test_an_anthropic_tool_use_inputs_text_beside_an_image_url_key_is_reserved(
    gw: Gateway,
) -> None:
    """A tool call's `input` is the tool's JSON, whatever its keys are called: the mock bills it
    as text (ceil(JSON / 4)), and so must the bound."""
    call = {"type": "tool_use", "id": "toolu_1", "name": "store"}
    call["input"] = {"image_url": {"url": "https://x/y.png", "alt": DESCRIPTION}}
    messages = [
        *STORY,
        {"role": "assistant", "content": [call]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1"}]},
    ]
    body = {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": messages}
    r = gw.post(MESSAGES, body, **ANTHROPIC, **{"x-mock-output-tokens": "10"})
    rec = gw.record(r)
    billed = mock_input_tokens(messages)
    assert rec["tokens"]["input_tokens"] == billed > 27_000
    assert rec["cost_micros"] == expected_cost_micros("claude-haiku-4-5", tokens(billed, output=10))
    assert no_overrun(rec)["bound"]["input_tokens"] >= billed


# -- 2. item references load input the gateway cannot see --------------------------------------


def test_item_references_are_refused_as_unseen_input(gw: Gateway) -> None:
    """20 stored items loaded by id reserved ~1,500 tokens, even with `unseen_input: refuse`."""
    items = [{"type": "item_reference", "id": f"msg_{i:03d}"} for i in range(20)]
    body = {"model": "gpt-4o", "input": [*items, {"role": "user", "content": "go on"}]}
    error = gw.refused(RESPONSES, {**body, "max_output_tokens": 10})
    assert error["code"] == "cost_unbounded"
    assert "input[0].type=item_reference (20 items)" in error["message"]


# -- 3. a 1-hour cache TTL on a document block ---------------------------------------------------


def test_a_one_hour_ttl_on_a_document_is_reserved_at_the_one_hour_rate(gw: Gateway) -> None:
    """The issue's case: a 900k-token document written to the 1-hour cache is billed at 2x input
    ($10/M on Opus 4.8: $9.00); the gateway reserved it at the 5-minute rate ($6.25/M)."""
    document = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "The report."},
        "cache_control": {"type": "ephemeral", "ttl": "1h"},
    }
    messages = [{"role": "user", "content": [document, {"type": "text", "text": "Summarise."}]}]
    body = {"model": "claude-opus-4-8", "max_tokens": 10, "messages": messages}
    headers = {"x-mock-cache-write-1h-tokens": "900000", "x-mock-output-tokens": "10"}
    rec = gw.record(gw.post(MESSAGES, body, **ANTHROPIC, **headers))
    billed = tokens(mock_input_tokens(messages), cache_write_1h=900_000, output=10)
    assert rec["tokens"] == billed
    assert rec["cost_micros"] == expected_cost_micros("claude-opus-4-8", billed) > 9_000_000
    no_overrun(rec)


# -- 4a. OpenAI prompt-cache retention ------------------------------------------------------------


def test_twelve_hour_cache_writes_are_charged_and_reserved_at_their_price(gw: Gateway) -> None:
    """gpt-6.2-sol: "A 12-hour cache write costs $5 per million tokens". OpenAI reports cache
    writes (`cache_write_tokens`) without their TTL, so a request asking for 12 hours has all
    its writes charged at $5/M; before, writes were not read at all (charged as $2/M input)."""
    handbook = "Chapter one: how the office works, and who to ask. " * 4_000  # ~50k tokens
    body = {
        "model": "gpt-6.2-sol",
        "input": handbook,
        "prompt_cache_options": {"ttl": "12h"},
        "max_output_tokens": 10,
    }
    prompt = mock_input_tokens(handbook)  # of which the provider wrote 40,000 to the cache
    headers = {
        "x-mock-input-tokens": str(prompt - 40_000),
        "x-mock-cache-write-tokens": "40000",
        "x-mock-output-tokens": "10",
    }
    rec = gw.record(gw.post(RESPONSES, body, **headers))
    written = tokens(prompt - 40_000, cache_write=40_000, output=10)
    assert rec["tokens"] == written
    at_30m = expected_cost_micros("gpt-6.2-sol", written)
    assert rec["cost_micros"] == at_30m + 40_000 * (5 - Fraction("2.5"))  # the 12-hour rate
    no_overrun(rec)


def test_24h_retention_is_refused_where_cache_writes_carry_an_unpublished_price(
    gw: Gateway,
) -> None:
    body = {"model": "gpt-6.2-sol", "input": "hi", "prompt_cache_retention": "24h"}
    error = gw.refused(RESPONSES, {**body, "max_output_tokens": 10})
    assert error["code"] == "unsupported_option"
    assert "prompt_cache_retention='24h'" in error["message"]
    # Before GPT-5.6 cache writes carry no fee, whatever the retention: served as it is.
    older = {"model": "gpt-4o", "messages": STORY, "prompt_cache_retention": "24h"}
    rec = gw.record(gw.post(CHAT, {**older, "max_tokens": 10}))
    assert gw.mock.last()["body"]["prompt_cache_retention"] == "24h"
    no_overrun(rec)


# -- 4b. the service tier the provider reports ---------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_the_tier_the_provider_reports_is_charged(gw: Gateway, stream: bool) -> None:
    """A project whose default tier is priority: the request names no tier, the provider serves
    and bills priority and says so. Before, the response's tier was never read: charged at
    standard prices. (Without `default_service_tier` the reservation was standard: an overrun,
    audited - the next test configures it.)"""
    body = {"model": "gpt-4o", "messages": STORY, "max_tokens": 50, "stream": stream}
    headers = {"x-mock-service-tier": "priority", "x-mock-output-tokens": "50"}
    r = gw.post(CHAT, body, **headers)
    if stream:
        assert '"service_tier":"priority"' in r.text.replace(" ", "")
    rec = gw.record(r)
    assert rec["cost_micros"] == cost_micros(mock_input_tokens(STORY), 50, GPT4O_PRIORITY)
    assert rec["budget"]["overrun_micros"] == rec["cost_micros"] - rec["budget"]["estimate_micros"]


@pytest.fixture(scope="module")
def priority_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """gpt-4.1 served by a provider (an OpenAI project) whose default tier is priority."""
    config = (
        "providers:\n"
        "  openai_priority:\n"
        "    schema: openai\n"
        "    base_url: https://api.openai.com/v1\n"
        "    auth: {header: authorization, prefix: 'Bearer ', env: OPENAI_PRIORITY_KEY}\n"
        "    default_service_tier: priority\n"
    )
    models = "models:\n  gpt-4.1: {provider: openai_priority}\n"
    yield from _gateway(tmp_path_factory.mktemp("priority"), config, models)


def test_a_providers_default_tier_is_reserved_and_charged(priority_gw: Gateway) -> None:
    body = {"model": "gpt-4.1", "messages": STORY, "max_tokens": 50}
    headers = {"x-mock-service-tier": "priority", "x-mock-output-tokens": "50"}
    rec = priority_gw.record(priority_gw.post(CHAT, body, **headers))
    assert rec["provider"] == "openai_priority"
    assert rec["cost_micros"] == cost_micros(mock_input_tokens(STORY), 50, GPT41_PRIORITY)
    no_overrun(rec)


# -- 4c. Anthropic client tools carry hidden prompt tokens --------------------------------------

CLIENT_TOOLS = [
    {"type": "computer_20250124", "name": "computer", "display_width_px": 1280,
     "display_height_px": 800},
    {"type": "bash_20250124", "name": "bash"},
    {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
]  # fmt: skip
# Anthropic's published figures: the tool-use system prompt (346), computer use's own system
# prompt (up to 499) and definition (735), bash (245), the text editor (700).
HIDDEN = 346 + 499 + 735 + 245 + 700


def test_computer_use_bash_and_text_editor_hidden_tokens_are_reserved(gw: Gateway) -> None:
    """Before: 512 tokens of tool margin against ~2.5k the provider bills for these three."""
    messages = [{"role": "user", "content": "Open the settings and list the files."}]
    body = {"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": messages}
    body["tools"] = CLIENT_TOOLS
    billed = mock_input_tokens(messages) + mock_input_tokens(CLIENT_TOOLS) + HIDDEN
    headers = {"x-mock-input-tokens": str(billed), "x-mock-output-tokens": "10"}
    rec = gw.record(gw.post(MESSAGES, body, **ANTHROPIC, **headers))
    assert rec["tokens"]["input_tokens"] == billed
    assert rec["cost_micros"] == expected_cost_micros(
        "claude-sonnet-4-6", tokens(billed, output=10)
    )
    assert no_overrun(rec)["bound"]["input_tokens"] >= billed
