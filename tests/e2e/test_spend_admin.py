"""Spend reports and the admin API through the real stack (Envoy, two sidecar workers,
redis-server, the mock provider): a scripted mix of requests - users, groups, a service,
attributes, two providers, streams, a disconnect, a downgrade, a refusal, fail-open admissions
during a Redis outage - whose spend the API reports exactly as the audit records sum it, to the
micro-dollar; and `gatewayctl` changing a budget with an override and a top-up. One stack."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from hashlib import sha1
from typing import Any

import httpx
import openai
import pytest

from bench.load import RedisMonitor
from gateway_extproc.admin.settings import DEFAULT_ADMIN_AUDIENCE as ADMIN_AUDIENCE
from gateway_extproc.budgets.scripts import script_source
from gateway_extproc.budgets.store import SCRIPTS
from gateway_extproc.identity.devissuer import DevIssuer, ensure_dev_issuer
from gateway_extproc.stack import Stack, free_port
from tests.e2e.conftest import start_stack
from tests.e2e.harness import AuditLog, eventually, raw_catalog

pytestmark = pytest.mark.e2e
MESSAGES = [{"role": "user", "content": "Count the stars, please."}]
CONFIG = """
identity: {dev_issuer: true}
sidecar: {workers: 2}
admin_api: {enabled: true}
budget_store: {deadline_ms: 250, breaker_open_s: 1, reap_interval_s: 1}
budgets:
  - name: saver
    scope: {kind: user}
    match: {groups: [saver], models: [gpt-4o]}
    limit_usd: 0.003
    window: {type: calendar, period: day}
    action: downgrade
    downgrade_to: gpt-4o-mini
  - name: tight
    scope: {kind: user}
    match: {groups: [tight]}
    limit_usd: 0.00001
    window: {type: calendar, period: month}
    action: block
  - name: open
    scope: {kind: group, value: open}
    limit_usd: 5
    window: {type: calendar, period: month}
    action: block
    on_redis_error: fail_open
  - name: eng
    scope: {kind: group}
    match: {groups: [eng, ml]}
    limit_usd: 100
    window: {type: calendar, period: month}
    action: monitor
    on_redis_error: fail_open
cache:
  rules:
    - name: cached
      match: {groups: [cached]}
      ttl: 1h
rate_limits:
  - name: two-a-minute  # a hit counts too: the hit's reservation is released, not settled
    scope: {kind: user}
    match: {groups: [cached]}
    requests: 2
    window: 60s
    action: block
    count_cache_hits: true
guardrails:
  - name: no-secrets
    match: {groups: [guarded]}
    categories: {secrets: block}
policies:
  default: {allow: ["*"]}
  rules:
    - groups: [mini-only]
      allow: [gpt-4o-mini]
"""
SECRET = "deploy with AKIA6I8J76B2LAJLJ4H9 please"  # an AWS access key id: a secret
# The audit record's error code -> the spend report's refusal column.
REFUSED = {
    "guardrail_blocked": "refused_guardrail",
    "rate_limited": "refused_rate_limit",
    "budget_exceeded": "refused_budget",
    "model_not_allowed": "refused_policy",
}
# What audit_sums and api_sums compare, per row.
FIELDS = (
    "requests",
    "cost_micros",
    "estimated_cost_micros",
    "input_tokens",
    "output_tokens",
    "cache_hits",
    "cache_saved_micros",
    *REFUSED.values(),
)


class Gateway:
    def __init__(self, stack: Stack, issuer: DevIssuer, json_port: int) -> None:
        self.stack, self.issuer, self.json_port = stack, issuer, json_port
        self.audit = AuditLog(stack.run_dir / "audit.jsonl")

    def token(
        self, user: str | None, *groups: str, service: str | None = None, **attrs: str
    ) -> str:
        return self.issuer.mint(user, list(groups), service, 3600, dict(attrs), time.time())

    def admin_token(self, user: str, *groups: str) -> str:
        """A token for the admin API's own audience (a data-plane token is refused there)."""
        return self.issuer.mint(user, list(groups), None, 3600, {}, time.time(), ADMIN_AUDIENCE)

    def post(
        self, token: str, body: dict[str, Any], path: str = "/v1/chat/completions", **headers: str
    ) -> httpx.Response:
        return httpx.post(
            self.stack.gateway_url + path,
            json=body,
            headers={"authorization": f"Bearer {token}", **headers},
            timeout=60,
        )

    def cli(self, *argv: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        """gatewayctl as a user runs it against make run: no address or credential flags (the
        environment only says where this test's stack is and where its dev issuer lives)."""
        env = {**os.environ, "GATEWAY_RUN_DIR": str(self.stack.run_dir)}
        env["GATEWAY_ADMIN_ADDRESS"] = self.stack.admin_api_address
        env.pop("GATEWAY_ADMIN_TOKEN", None)
        if token is not None:
            env["GATEWAY_ADMIN_TOKEN"] = token
        return subprocess.run(
            [sys.executable, "-m", "gateway_extproc.cli", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def cli_json(self, *argv: str) -> Any:
        done = self.cli(*argv, "--format", "json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp_path = tmp_path_factory.mktemp("spend")
    run_dir = tmp_path / "run"
    issuer = ensure_dev_issuer(run_dir / "dev-issuer")  # the sidecar loads the same key
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG)
    json_port = free_port()
    stack = start_stack(
        run_dir, config_path=config, admin_api_port=0, admin_api_http_port=json_port
    )
    yield Gateway(stack, issuer, json_port)
    stack.stop()


# -- what the audit records say -----------------------------------------------------------------


def values(record: dict[str, Any], dim: str) -> list[str]:
    ident = record["identity"] or {}
    if dim == "group":
        return list(ident.get("groups") or []) or [""]
    if dim == "day":
        return [record["time"][:10]]
    if dim == "model":
        return [record["served_model"] or ""]
    if dim == "provider":  # a refusal's: the provider of the model asked for (none was called)
        provider = record["provider"]
        if provider is None and record["served_model"]:
            provider = raw_catalog()[record["served_model"]]["provider"]
        return [provider or ""]
    if dim.startswith("attribute:"):
        return [(ident.get("attributes") or {}).get(dim.split(":", 1)[1]) or ""]
    return [ident.get(dim) or ""]


def counted(rec: dict[str, Any]) -> dict[str, int]:
    """What one audit record adds to its spend row (empty: nothing is rolled up)."""
    if rec.get("type") != "gateway.audit.v1":
        return {}
    if rec["usage_source"] != "none":  # billed
        estimated = rec["usage_source"] in ("estimated", "bound")  # not the provider's report
        return {
            "requests": 1,
            "cost_micros": rec["cost_micros"],
            "estimated_cost_micros": rec["cost_micros"] if estimated else 0,
            "input_tokens": rec["tokens"]["input_tokens"],
            "output_tokens": rec["tokens"]["output_tokens"],
        }
    if rec["identity"] is None:  # refused before it was identified: not attributable
        return {}
    if rec["cache"] == "hit":
        return {"cache_hits": 1, "cache_saved_micros": rec["cost_saved_micros"]}
    kind = REFUSED.get(rec["error_code"] or "")
    return {kind: 1} if kind else {}  # other failures (upstream, bad input): audit log only


def audit_sums(
    records: list[dict[str, Any]], dims: list[str]
) -> dict[tuple[str, ...], tuple[int, ...]]:
    sums: dict[tuple[str, ...], dict[str, int]] = defaultdict(lambda: dict.fromkeys(FIELDS, 0))
    for rec in records:
        adds = counted(rec)
        if not adds:
            continue
        for key in itertools.product(*(values(rec, d) for d in dims)):
            for field, amount in adds.items():
                sums[key][field] += amount
    return {k: tuple(v[f] for f in FIELDS) for k, v in sums.items()}


def api_sums(
    gw: Gateway, dims: list[str], since: str, until: str, *where: str
) -> dict[tuple[str, ...], tuple[int, ...]]:
    argv = ["spend", "--since", since, "--until", until]
    for d in dims:
        argv += ["--by", d]
    for w in where:
        argv += ["--where", w]
    doc = gw.cli_json(*argv)
    if not dims:
        return {(): tuple(doc["total"][f] for f in FIELDS)} if doc["rows"] else {}
    return {tuple(row[d] for d in dims): tuple(row[f] for f in FIELDS) for row in doc["rows"]}


# -- the scripted mix ---------------------------------------------------------------------------


def disconnect_mid_stream(gw: Gateway, token: str) -> str:
    oai = openai.OpenAI(base_url=gw.stack.gateway_url + "/v1", api_key=token, max_retries=0)
    with (
        oai,
        oai.chat.completions.with_streaming_response.create(
            model="gpt-4o",
            messages=MESSAGES,  # type: ignore[arg-type]
            stream=True,
            max_tokens=2000,
            extra_headers={"x-mock-output-tokens": "2000", "x-mock-chunk-delay-ms": "10"},
        ) as response,
    ):
        rid = response.headers["x-gateway-request-id"]
        for n, _ in enumerate(response.parse()):
            if n == 20:
                break
    return rid


def run_mix(gw: Gateway) -> None:
    mini = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 50}
    alice = gw.token("alice@example.com", "eng", cost_center="42", team="search")
    bob = gw.token("bob@example.com", "eng", "ml", cost_center="7")
    for _ in range(3):
        assert gw.post(alice, mini).status_code == 200
    claude = {"model": "claude-haiku-4-5", "max_tokens": 40, "messages": MESSAGES}
    assert gw.post(alice, claude, "/v1/messages").status_code == 200
    for _ in range(2):
        body = {
            "model": "gpt-4o",
            "messages": MESSAGES,
            "max_tokens": 60,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        assert gw.post(bob, body).status_code == 200
    ci = gw.token(None, "bots", service="ci-bot")
    assert gw.post(ci, mini).status_code == 200
    sam = gw.token("sam@example.com", "saver")
    big = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 100}
    for _ in range(10):
        r = gw.post(sam, big, **{"x-mock-output-tokens": "100"})
        assert r.status_code == 200, r.text
        if "x-gateway-downgraded-from" in r.headers:
            break
    assert r.headers["x-gateway-downgraded-from"] == "gpt-4o"
    tina = gw.token("tina@example.com", "tight")
    for _ in range(10):
        if gw.post(tina, mini).status_code == 429:
            break
    else:
        raise AssertionError("tight never refused")
    cut = disconnect_mid_stream(gw, gw.token("dora@example.com", "ml"))
    # Observe mode: the cut stream is metered when Envoy closes its observer stream.
    gw.audit.wait_for(cut)
    # A Redis outage: fail-open admissions (and a request no budget applies to) are rolled up
    # once Redis is back, from the settle retries and the fail-open reconciliation.
    otto = gw.token("otto@example.com", "open")
    nora = gw.token("nora@example.com")
    gw.stack.process("redis-server").terminate()
    gw.stack.process("redis-server").wait(10)
    try:
        for token in (otto, otto, nora):
            r = gw.post(token, mini)
            assert r.status_code == 200, r.text
    finally:
        gw.stack.restart("redis-server")


def test_api_spend_equals_the_audit_records(gw: Gateway) -> None:
    run_mix(gw)
    records = gw.audit.records()
    billed = [r for r in records if r["usage_source"] != "none"]
    assert {r["budget"]["decision"] for r in billed if r["budget"]} >= {
        "fail_open",
        "downgraded",
        "admitted",
        "none",
    }
    assert any(r["usage_source"] == "bound" for r in billed)
    days = sorted({r["time"][:10] for r in records})
    since = days[0]
    until = (dt.date.fromisoformat(days[-1]) + dt.timedelta(days=1)).isoformat()

    def settled() -> bool:  # every settle and every answered request's rollup reached Redis
        return api_sums(gw, [], since, until) == audit_sums(gw.audit.records(), [])

    eventually(settled)
    records = gw.audit.records()
    for dims in (
        [],
        ["user"],
        ["group"],
        ["service"],
        ["model"],
        ["provider"],
        ["attribute:cost_center"],
        ["day", "model"],
        ["user", "attribute:team"],
    ):
        assert api_sums(gw, dims, since, until) == audit_sums(records, dims), dims
    # Filters: alice's spend on OpenAI models only.
    doc = gw.cli_json(
        "spend",
        "--by",
        "model",
        "--where",
        "user=alice@example.com",
        "--where",
        "provider=openai",
        "--since",
        since,
        "--until",
        until,
    )
    assert [row["model"] for row in doc["rows"]] == ["gpt-4o-mini"]
    assert doc["rows"][0]["requests"] == 3


def test_overrides_and_top_ups_through_gatewayctl(gw: Gateway) -> None:
    tina = gw.token("tina2@example.com", "tight")
    mini = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 50}
    # $0.00001 is below any request's worst case (50 output tokens alone cost $0.00003).
    refused = gw.post(tina, mini)
    assert refused.status_code == 429, refused.text
    done = gw.cli(
        "budgets",
        "override",
        "tight",
        "tina2@example.com",
        "--limit-usd",
        "2",
        "--expires",
        "1h",
        "--reason",
        "demo day",
    )
    assert done.returncode == 0, done.stderr
    r = gw.post(tina, mini)
    assert r.status_code == 200, r.text  # the very next reserve sees the override
    assert r.headers["x-gateway-budget-override"] == "true"
    assert r.headers["x-gateway-budget-limit-usd"] == "2.000000"
    [status] = gw.cli_json("budgets", "tight", "--scope-value", "tina2@example.com")
    assert status["limit_usd"] == "2.000000" and status["override_reason"] == "demo day"
    overrides = gw.cli_json("budgets", "overrides")
    assert [(o["budget"], o["scope_value"]) for o in overrides] == [("tight", "tina2@example.com")]
    # A stricter override: the 429 says a temporary limit is in force.
    done = gw.cli(
        "budgets",
        "override",
        "tight",
        "tina2@example.com",
        "--limit-usd",
        "0.000001",
        "--expires",
        "1h",
        "--reason",
        "freeze",
    )
    assert done.returncode == 0, done.stderr
    r = gw.post(tina, mini)
    assert r.status_code == 429
    assert "temporary limit set by an administrator" in r.json()["error"]["message"]
    assert (
        gw.cli(
            "budgets", "override", "tight", "tina2@example.com", "--remove", "--reason", "over"
        ).returncode
        == 0
    )
    assert gw.post(tina, mini).status_code == 429
    # A top-up for this month lets her through again, and is visible in the status.
    done = gw.cli(
        "budgets",
        "top-up",
        "tight",
        "tina2@example.com",
        "--amount-usd",
        "1",
        "--reason",
        "month end",
        "--format",
        "json",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["top_up_usd"] == "1.000000"
    assert gw.post(tina, mini).status_code == 200
    admin_lines = [r for r in gw.audit.records() if r.get("type") == "gateway.admin.v1"]
    assert [a["method"] for a in admin_lines] == [
        "SetOverride",
        "SetOverride",
        "RemoveOverride",
        "TopUp",
    ]
    assert {a["reason"] for a in admin_lines} == {"demo day", "freeze", "over", "month end"}


def test_bad_callers_and_bad_input(gw: Gateway) -> None:
    outsider = gw.admin_token("eve@example.com", "eng")
    done = gw.cli("spend", token=outsider)
    assert done.returncode == 1 and "PERMISSION_DENIED" in done.stderr
    # A data-plane token is no admin credential, whatever its groups.
    done = gw.cli("spend", token=gw.token("root@example.com", "gateway-admins"))
    assert done.returncode == 1 and "UNAUTHENTICATED" in done.stderr
    assert "token audience is not accepted" in done.stderr
    done = gw.cli("spend", "--by", "colour")
    assert done.returncode == 1 and "unknown dimension 'colour'" in done.stderr
    done = gw.cli("budgets", "top-up", "nope", "x", "--amount-usd", "1", "--reason", "r")
    assert done.returncode == 1 and "NOT_FOUND" in done.stderr
    done = gw.cli("budgets", "top-up", "tight", "x", "--amount-usd", "-1", "--reason", "r")
    assert done.returncode == 1 and "amount_micros must be positive" in done.stderr
    table = gw.cli("budgets")
    assert table.returncode == 0 and "tight" in table.stdout and "BUDGET" in table.stdout


def test_json_over_http_through_envoy(gw: Gateway) -> None:
    """The admin API as JSON over HTTP (Envoy's gRPC-JSON transcoder on its own listener)."""
    base = f"http://127.0.0.1:{gw.json_port}/gateway.admin.v1.AdminService"
    admin = gw.admin_token("root@example.com", "gateway-admins")
    r = httpx.post(
        base + "/GetSpend",
        json={"groupBy": ["provider"], "window": {"name": "month"}},
        headers={"authorization": f"Bearer {admin}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["groupBy"] == ["provider"] and doc["timezone"] == "UTC"
    assert {row["key"][0] for row in doc["rows"]} >= {"openai", "anthropic"}
    assert int(doc["total"]["costMicros"]) > 0  # int64 is a JSON string in proto3 JSON
    r = httpx.post(base + "/ListBudgets", json={}, timeout=30)
    assert r.status_code == 401, r.text
    assert "missing credential" in r.json()["message"]
    spender = gw.token("root@example.com", "gateway-admins")  # the data plane's audience
    r = httpx.post(
        base + "/ListBudgets", json={}, headers={"authorization": f"Bearer {spender}"}, timeout=30
    )
    assert r.status_code == 401 and "audience" in r.json()["message"], r.text
    outsider = gw.admin_token("eve@example.com", "eng")
    r = httpx.post(
        base + "/TopUp",
        json={"budget": "tight", "scopeValue": "x", "amountMicros": "1", "reason": "r"},
        headers={"authorization": f"Bearer {outsider}"},
        timeout=30,
    )
    assert r.status_code == 403 and "needs one of the groups" in r.json()["message"]


# -- requests the gateway answered itself -------------------------------------------------------


def test_hits_and_refusals_are_reported_as_the_audit_records_count_them(gw: Gateway) -> None:
    """A cache hit (and what it saved), and refusals by a guardrail, a rate limit, a budget and
    a policy, each in GetSpend on its caller's row - even a row with no spend - equal to what
    the audit records say; a caller refused before it was identified is in no row."""
    mini = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 50}
    hana = gw.token("hana@example.com", "cached", cost_center="11")
    miss = gw.post(hana, mini)
    hit = gw.post(hana, mini)
    over = gw.post(hana, mini)  # the limit counts hits: the third request is refused
    assert (miss.status_code, miss.headers["x-gateway-cache-status"]) == (200, "miss"), miss.text
    assert (hit.status_code, hit.headers["x-gateway-cache-status"]) == (200, "hit"), hit.text
    assert (over.status_code, over.json()["error"]["code"]) == (429, "rate_limited"), over.text
    gus = gw.token("gus@example.com", "guarded", cost_center="12")
    blocked = gw.post(gus, {**mini, "messages": [{"role": "user", "content": SECRET}]})
    assert blocked.json()["error"]["code"] == "guardrail_blocked", blocked.text
    tilda = gw.token("tilda@example.com", "tight")
    broke = gw.post(tilda, mini)
    assert broke.json()["error"]["code"] == "budget_exceeded", broke.text
    pia = gw.token("pia@example.com", "mini-only")
    forbidden = gw.post(pia, {**mini, "model": "claude-haiku-4-5"}, "/v1/messages")
    assert forbidden.status_code == 403, forbidden.text  # Anthropic's error format: no code
    nobody = gw.post("not-a-token", mini)
    assert nobody.status_code == 401, nobody.text
    ids = [r.headers["x-gateway-request-id"] for r in (miss, hit, over, blocked, broke, forbidden)]
    ids.append(nobody.headers["x-gateway-request-id"])
    mine = [gw.audit.wait_for(rid) for rid in ids]
    assert mine[1]["cost_saved_micros"] == mine[0]["cost_micros"] > 0  # the hit saved the miss
    assert mine[5]["error_code"] == "model_not_allowed"
    assert mine[-1]["identity"] is None and mine[-1]["error_code"] == "unauthenticated"
    day = mine[0]["time"][:10]
    until = (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()
    users = ["hana@example.com", "gus@example.com", "tilda@example.com", "pia@example.com"]
    where = [f"user={u}" for u in users]
    dims = ["user", "model", "provider", "attribute:cost_center"]
    expected = audit_sums(mine, dims)
    got: dict[tuple[str, ...], tuple[int, ...]] = {}

    def rolled_up() -> bool:  # hits and refusals are rolled up in the background
        nonlocal got
        got = api_sums(gw, dims, day, until, *where)
        return got == expected

    eventually(rolled_up)
    row = dict(zip(FIELDS, got[("hana@example.com", "gpt-4o-mini", "openai", "11")], strict=True))
    assert row["requests"] == 1 and row["cache_hits"] == 1 and row["refused_rate_limit"] == 1
    assert row["cache_saved_micros"] == row["cost_micros"]
    assert (
        got[("gus@example.com", "gpt-4o-mini", "openai", "12")]
        == expected[("gus@example.com", "gpt-4o-mini", "openai", "12")]
    )
    refusals_only = {k[0]: dict(zip(FIELDS, v, strict=True)) for k, v in got.items()}
    assert refusals_only["gus@example.com"]["refused_guardrail"] == 1
    assert refusals_only["tilda@example.com"]["refused_budget"] == 1
    assert refusals_only["pia@example.com"]["refused_policy"] == 1
    assert all(r["requests"] == 0 for u, r in refusals_only.items() if u != "hana@example.com")
    # The policy refusal is on the row of the model asked for, and its provider.
    assert ("pia@example.com", "claude-haiku-4-5", "anthropic", "") in got
    # Group-by and filters work on them as on spend.
    by_group = api_sums(gw, ["group"], day, until, *where)
    assert by_group == audit_sums(mine, ["group"])
    assert by_group[("guarded",)][FIELDS.index("refused_guardrail")] == 1
    # JSON over HTTP carries them too (proto3 JSON: int64 as strings).
    admin = gw.admin_token("root@example.com", "gateway-admins")
    r = httpx.post(
        f"http://127.0.0.1:{gw.json_port}/gateway.admin.v1.AdminService/GetSpend",
        json={
            "groupBy": ["user"],
            "filters": [{"dimension": "user", "value": "hana@example.com"}],
            "dates": {"since": day, "until": until},
        },
        headers={"authorization": f"Bearer {admin}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    [hana_row] = r.json()["rows"]
    assert hana_row["cacheHits"] == "1"
    assert hana_row["refused"] == {"guardrail": "0", "rateLimit": "1", "budget": "0", "policy": "0"}
    assert hana_row["cacheSavedMicros"] == str(row["cache_saved_micros"])


def test_a_billed_request_keeps_its_two_scripts_and_a_refusal_adds_one(gw: Gateway) -> None:
    """Under MONITOR, by script: a billed request with a budget still runs exactly its reserve
    and its settle (the rollup rides in the settle), one without a budget its `record` script;
    a refusal runs one `record` script, in the background, and nothing else."""
    names = {sha1(script_source(n).encode()).hexdigest(): n for n in SCRIPTS}
    mini = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 50}
    ray = gw.token("ray@example.com", "eng")  # the eng budget (monitor): reserve, settle
    nel = gw.token("nel@example.com")  # no budget applies: its rollup alone (record)
    ida = gw.token("ida@example.com", "guarded")
    monitor = RedisMonitor(gw.stack.redis_url)

    def scripts_since(before: Counter[str]) -> dict[str, int]:
        return {names.get(sha, sha): n for sha, n in (monitor.script_snapshot() - before).items()}

    try:
        start = monitor.script_snapshot()
        assert gw.post(ray, mini).status_code == 200
        eventually(lambda: "settle" in scripts_since(start))
        billed = scripts_since(start)
        start = monitor.script_snapshot()
        assert gw.post(nel, mini).status_code == 200
        eventually(lambda: "record" in scripts_since(start))
        unbudgeted = scripts_since(start)
        middle = monitor.script_snapshot()
        refused = gw.post(ida, {**mini, "messages": [{"role": "user", "content": SECRET}]})
        assert refused.status_code == 400, refused.text
        eventually(lambda: "record" in scripts_since(middle))
        answered = scripts_since(middle)
    finally:
        monitor.close()
    assert billed == {"reserve": 1, "settle": 1}
    assert unbudgeted == {"record": 1}
    assert answered == {"record": 1}
