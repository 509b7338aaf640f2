"""Every ending is charged at least what the provider bills (docs/budgets.md, "How each ending is
charged"), through real Envoy, the sidecar, redis-server and the mock provider - an upstream that
bills what it says: what it generated until it noticed a client had gone, hidden reasoning
included (`GET /_mock/bills`, gateway_extproc/mock/billing.py). A client that leaves mid-stream,
a reasoning model cut before its answer, Anthropic's reported input, a worker killed mid-stream
(the reaper charges its checkpoint), and background responses, which are refused."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway_extproc.identity.devissuer import ensure_dev_issuer
from gateway_extproc.stack import Stack
from tests.e2e.conftest import Metered, start_stack
from tests.e2e.harness import MockLog, eventually, expected_cost_micros
from tests.e2e.test_budgets import Budgeted
from tests.e2e.worst_case import GPT4O, estimate_micros, input_bound

pytestmark = pytest.mark.e2e
CHAT, RESPONSES, MESSAGES_PATH = "/v1/chat/completions", "/v1/responses", "/v1/messages"
STORY = [{"role": "user", "content": "Tell me a very long story."}]
MARGIN = 256  # metering.unseen_output_tokens below
AFTER_CUT = 200  # what the mock generates after the client left, before it notices (<= MARGIN)

CONFIG = f"""
identity: {{dev_issuer: true}}
sidecar: {{workers: 1}}  # the SIGKILL test kills the one sidecar the stream is on
metering: {{unseen_output_tokens: {MARGIN}}}
budget_store: {{lease_s: 6, reap_interval_s: 1}}
budgets:
  - name: each
    scope: {{kind: user}}
    limit_usd: 50
    window: {{type: calendar, period: month}}
    action: block
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Budgeted]:
    tmp_path = tmp_path_factory.mktemp("endings")
    run_dir = tmp_path / "run"
    issuer = ensure_dev_issuer(run_dir / "dev-issuer")  # the sidecar loads the same key
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG)
    b = Budgeted(start_stack(run_dir, config_path=config), issuer)
    yield b
    b.close()
    b.stack.stop()


def bill_of(mock: MockLog, request_id: str) -> dict[str, Any]:
    """What the mock billed the request (it records that when it noticed the cut)."""
    eventually(lambda: any(b["request_id"] == request_id for b in mock.bills()), what="a bill")
    (bill,) = [b for b in mock.bills() if b["request_id"] == request_id]
    return bill


def spent_once_settled(gw: Budgeted, user: str) -> int:
    """The budget ledger of `user`'s own scope, once nothing is held any more."""
    eventually(lambda: gw.counters("each", user)[1] == 0, what="the hold settled")
    return gw.counters("each", user)[0]


def leave_after(
    gw: Budgeted, user: str, path: str, body: dict[str, Any], events: int, **mock: str
) -> str:
    """Stream `body`, read `events` SSE events, then leave (the connection is closed). Returns the
    request id."""
    headers = {"authorization": f"Bearer {gw.token(user, 'users')}", **mock}
    with httpx.stream(
        "POST", gw.stack.gateway_url + path, json=body, headers=headers, timeout=60
    ) as response:
        assert response.status_code == 200, response.read()
        request_id = response.headers["x-gateway-request-id"]
        seen = 0
        for line in response.iter_lines():
            seen += line.startswith("data: ")
            if seen == events:
                break
    return request_id


def test_a_client_that_leaves_mid_stream_is_charged_at_least_the_bill(gw: Budgeted) -> None:
    """The provider generated until it noticed: what passed, then AFTER_CUT more. The chars / 4
    of what passed, charged before, was below that bill."""
    user = "lea@example.com"
    body = {"model": "gpt-4o-mini", "messages": STORY, "stream": True}
    rid = leave_after(
        gw,
        user,
        CHAT,
        body,
        20,
        **{
            "x-mock-output-tokens": "3000",
            "x-mock-chunk-delay-ms": "10",
            "x-mock-generates-after-cut": str(AFTER_CUT),
        },
    )
    rec = gw.audit.wait_for(rid)
    bill = bill_of(gw.mock, rid)
    assert bill["cut"] is True and AFTER_CUT < bill["tokens"]["output_tokens"] < 3000
    assert (rec["completed"], rec["usage_source"]) == (False, "bound")
    billed = expected_cost_micros("gpt-4o-mini", bill["tokens"])
    spent = spent_once_settled(gw, user)
    assert spent == rec["cost_micros"] >= billed  # the ledger is never below the bill
    assert spent <= rec["budget"]["estimate_micros"]  # nor above the reservation's worst case
    assert rec["tokens"]["output_tokens"] < 8192  # not the whole injected cap: what was seen


def test_a_reasoning_model_cut_before_its_answer_is_charged_its_whole_output_limit(
    gw: Budgeted,
) -> None:
    """gpt-5-mini reasons in tokens no stream shows (catalog: hidden_reasoning). The client
    reads `response.created` and leaves; the provider had reasoned 3,000 tokens by then."""
    user = "rea@example.com"
    body = {"model": "gpt-5-mini", "input": "Prove it.", "stream": True, "max_output_tokens": 4000}
    rid = leave_after(
        gw,
        user,
        RESPONSES,
        body,
        1,
        **{
            "x-mock-output-tokens": "500",
            "x-mock-reasoning-tokens": "3000",
            "x-mock-chunk-delay-ms": "50",
            "x-mock-generates-after-cut": str(AFTER_CUT),
        },
    )
    rec = gw.audit.wait_for(rid)
    bill = bill_of(gw.mock, rid)
    assert bill["tokens"]["reasoning_tokens"] == 3000
    assert rec["usage_source"] == "bound" and rec["tokens"]["output_tokens"] == 4000
    spent = spent_once_settled(gw, user)
    assert spent == rec["cost_micros"] >= expected_cost_micros("gpt-5-mini", bill["tokens"])
    assert spent <= rec["budget"]["estimate_micros"]


def test_anthropic_input_is_charged_as_reported_and_its_output_bounded(gw: Budgeted) -> None:
    """`message_start` reported the input, cache reads and writes: charged exactly those; the
    output the stream never finished, bounded."""
    user = "ana@example.com"
    body = {"model": "claude-haiku-4-5", "max_tokens": 2000, "messages": STORY, "stream": True}
    rid = leave_after(
        gw,
        user,
        MESSAGES_PATH,
        body,
        12,
        **{
            "x-mock-output-tokens": "1500",
            "x-mock-cached-tokens": "3000",
            "x-mock-cache-write-tokens": "700",
            "x-mock-chunk-delay-ms": "10",
            "x-mock-generates-after-cut": str(AFTER_CUT),
        },
    )
    rec = gw.audit.wait_for(rid)
    bill = bill_of(gw.mock, rid)
    kinds = ("input_tokens", "cached_input_tokens", "cache_write_input_tokens")
    assert [rec["tokens"][k] for k in kinds] == [bill["tokens"][k] for k in kinds]
    assert rec["usage_source"] == "bound"
    assert bill["tokens"]["output_tokens"] <= rec["tokens"]["output_tokens"] < 2000
    spent = spent_once_settled(gw, user)
    assert spent == rec["cost_micros"] >= expected_cost_micros("claude-haiku-4-5", bill["tokens"])


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "json"])
def test_background_responses_are_refused_and_never_reach_the_provider(
    gw: Budgeted, stream: bool
) -> None:
    """Streamed background was admitted before: read `response.created`, leave, and the
    provider finished (and billed) the whole response while the budget recorded ~$0."""
    user = f"bg-{'stream' if stream else 'json'}@example.com"
    gw.mock.clear()
    body = {"model": "gpt-4o-mini", "input": "later", "background": True, "stream": stream}
    r = httpx.post(
        gw.stack.gateway_url + RESPONSES,
        json=body,
        headers={"authorization": f"Bearer {gw.token(user, 'users')}"},
        timeout=30,
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]  # OpenAI's format
    assert error["code"] == "unsupported_option" and "`background: true`" in error["message"]
    assert error["type"] == "invalid_request_error"
    assert gw.mock.requests() == []  # never sent
    assert gw.counters("each", user) == (0, 0)  # nothing reserved


def test_a_worker_killed_mid_stream_is_charged_at_least_the_bill_by_the_reaper(
    gw: Budgeted,
) -> None:
    """The reaper charges the last checkpoint. The stream ran on past it until the worker died,
    then the provider generated AFTER_CUT more before it noticed Envoy's reset: a checkpoint of
    what had been seen (chars / 4, before) was below that bill."""
    user = "kim@example.com"
    received = bytearray()
    request_ids: list[str] = []
    errors: list[BaseException] = []
    body = {"model": "gpt-4o", "messages": STORY, "stream": True, "max_tokens": 3000}

    def stream() -> None:
        try:
            with httpx.stream(
                "POST",
                gw.stack.gateway_url + CHAT,
                timeout=60,
                json=body,
                headers={
                    "authorization": f"Bearer {gw.token(user, 'users')}",
                    "x-mock-output-tokens": "3000",
                    "x-mock-chunk-delay-ms": "25",
                    "x-mock-generates-after-cut": str(AFTER_CUT),
                },
            ) as r:
                request_ids.append(r.headers["x-gateway-request-id"])
                for data in r.iter_raw():
                    received.extend(data)
        except BaseException as exc:  # the cut is expected, and asserted below
            errors.append(exc)

    thread = threading.Thread(target=stream)
    thread.start()
    eventually(lambda: len(gw.reservations_for("each", user)) == 1)
    (rid,) = gw.reservations_for("each", user)
    eventually(lambda: int(gw.reservation(rid).get("partial", 0)) > 0, what="a checkpoint")
    # The stream runs on past the checkpoint (40 words a second) before the worker dies.
    past = len(received) + 2_000
    eventually(lambda: len(received) > past, what="the stream past its checkpoint")
    gw.stack.process("sidecar").kill()  # SIGKILL: no finally, no settle
    gw.stack.process("sidecar").wait(10)  # gone before restart() looks (it refuses a live one)
    thread.join(30)
    assert not thread.is_alive(), "the client's stream outlived the sidecar"
    gw.stack.restart("sidecar")
    assert len(errors) == 1 and isinstance(errors[0], httpx.TransportError), errors
    eventually(lambda: gw.reservation(rid).get("state") == "EXPIRED", timeout=30)
    partial = int(gw.reservation(rid)["partial"])
    bill = bill_of(gw.mock, request_ids[0])
    assert bill["cut"] is True and AFTER_CUT < bill["tokens"]["output_tokens"] < 3000
    assert gw.counters("each", user) == (partial, 0)
    assert partial >= expected_cost_micros("gpt-4o", bill["tokens"])  # never below the bill
    assert partial <= estimate_micros(input_bound(body), 3000, GPT4O)  # nor the worst case


def test_a_client_that_leaves_is_charged_at_least_the_bill_in_both_metering_modes(
    metered: Metered, request: pytest.FixtureRequest
) -> None:
    """Unbudgeted too (the audit and spend reports): the same bound, observe and synchronous."""
    s: Stack = request.getfixturevalue("sync_stack" if metered.synchronous else "stack")
    assert s.mock_url is not None
    mock = MockLog(s.mock_url.removesuffix("/v1"))
    headers = {
        "x-mock-output-tokens": "3000",
        "x-mock-chunk-delay-ms": "10",
        "x-mock-generates-after-cut": "500",
    }
    with metered.oai.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        messages=STORY,
        stream=True,
        extra_headers=headers,
    ) as response:
        rid = response.headers["x-gateway-request-id"]
        events = response.parse()
        for n, _chunk in enumerate(events):
            if n == 15:
                break
        events.close()
    rec = metered.audit.wait_for(rid)
    bill = bill_of(mock, rid)
    assert bill["cut"] is True and 500 < bill["tokens"]["output_tokens"] < 3000
    assert rec["usage_source"] == "bound"
    assert rec["cost_micros"] >= expected_cost_micros("gpt-4o-mini", bill["tokens"])
    assert rec["tokens"]["output_tokens"] < 16_384  # not the model's whole limit
