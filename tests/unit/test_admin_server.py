"""The admin API's gRPC server on an ephemeral port, over a real redis-server: authentication
with the admin API's own credentials (data-plane tokens refused), per-method authorisation,
every method, and bad input answered with a clear status and no change. The context is the
sidecar's own (`build_context`), with admin static tokens and JWTs as callers."""

from __future__ import annotations

import datetime as dt
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import orjson
import pytest

from gateway_extproc.admin import server as admin_server
from gateway_extproc.admin._generated.gateway.admin.v1 import admin_pb2 as pb
from gateway_extproc.admin.api import AdminClient
from gateway_extproc.admin.budget_api import MAX_OVERRIDE_S, ts
from gateway_extproc.budgets.results import Charge
from gateway_extproc.errors import Unauthenticated
from gateway_extproc.extproc.context import GatewayContext
from gateway_extproc.identity.devissuer import DEV_ISSUER, DevIssuer, ensure_dev_issuer
from gateway_extproc.runtime import build_context, close_context, start_context
from gateway_extproc.spend.outcome import Outcome
from gateway_extproc.spend.rollup import Dimensions, UsageRecord
from gateway_extproc.tokens import Usage
from tests.redis_servers import RedisEndpoint, redis_standalone_server  # noqa: F401
from tests.sidecar_secrets import ENV as SIDECAR_ENV

USD = 1_000_000
NOW = dt.datetime(2026, 11, 26, 15, tzinfo=dt.UTC).timestamp()
TOKENS = {"root": "admins", "finance": "finance", "bob": "eng", "dp": "admins"}
CI_SECRET = "c" * 32

CONFIG = """
identity:
  issuers:
    corp:
      issuer: {corp_iss}
      audiences: [llm-gateway]
      jwks_file: {jwks}
    ci:   # a shared secret: not an admin issuer unless admin_api.issuers names it
      issuer: https://ci.example.com
      audiences: [llm-gateway]
      hs_secret: {{env: CI_SECRET}}
      asserts: {{kinds: [user, service], user_domains: [example.com], groups: ["*"]}}
  static_tokens:
{tokens}
admin_api:
  enabled: true
  read_groups: [finance]
  write_groups: [admins]
  static_tokens: [root, finance, bob]   # dp is a data-plane token
budget_store:
  key_prefix: {prefix}
audit:
  stdout: false
  file: {audit}
budgets:
  - name: team-monthly
    scope: {{kind: group}}
    limit_usd: 100
    window: {{type: calendar, period: month}}
    action: block
  - name: user-rolling
    scope: {{kind: user}}
    limit_usd: 5
    window: {{type: rolling, duration: 24h}}
    action: block
"""


def static_tokens() -> str:
    lines = []
    for name, group in TOKENS.items():
        digest = hashlib.sha256(f"secret-{name}".encode()).hexdigest()
        lines.append(f'    {name}: {{sha256: "{digest}", groups: [{group}]}}')
    return "\n".join(lines)


class Admin:
    def __init__(
        self, ctx: GatewayContext, port: int, channel: grpc.aio.Channel, corp: DevIssuer
    ) -> None:
        self.ctx, self.port, self.channel, self.corp = ctx, port, channel, corp

    async def call(self, method: str, request: Any, who: str | None = "root") -> Any:
        """`who`: a static token's name, or a raw JWT (it has dots)."""
        token = who if who and "." in who else f"secret-{who}" if who else None
        return await AdminClient(self.channel, token).call(method, request)

    async def status(self, method: str, request: Any, who: str | None = "root") -> Any:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await self.call(method, request, who)
        return info.value.code(), info.value.details()

    def corp_token(self, audience: str, *groups: str) -> str:
        now = time.time()  # the authenticator checks exp against the wall clock
        return self.corp.mint("ann@example.com", list(groups), None, 600, {}, now, audience)


@pytest.fixture
async def admin(
    tmp_path: Path,
    redis_standalone_server: RedisEndpoint,  # noqa: F811
) -> AsyncIterator[Admin]:
    config = tmp_path / "gateway.yaml"
    audit = tmp_path / "audit.jsonl"
    prefix = f"t{uuid.uuid4().hex[:8]}"
    corp = ensure_dev_issuer(tmp_path / "corp")  # a JWKS-file issuer for JWT callers
    config.write_text(
        CONFIG.format(
            tokens=static_tokens(),
            prefix=prefix,
            audit=audit,
            corp_iss=DEV_ISSUER,
            jwks=corp.jwks_path,
        )
    )
    node = redis_standalone_server
    env = {
        "GATEWAY_REDIS_URL": f"redis://{node.host}:{node.port}/0",
        "CI_SECRET": CI_SECRET,
        **SIDECAR_ENV,
    }
    ctx = build_context(config, env, "http://127.0.0.1:9/v1")  # providers: the (unused) mock
    await start_context(ctx)
    await ctx.budgets.services.start()
    server, port = await admin_server.start(lambda: ctx, "127.0.0.1:0", clock=lambda: NOW)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Admin(ctx, port, channel, corp)
    await server.stop(None)
    await close_context(ctx)
    await ctx.budgets.services.close()
    ctx.audit.close()


def audit_lines(admin: Admin) -> list[dict[str, Any]]:
    admin.ctx.audit.flush(5)
    path = admin.ctx.config.audit_file
    assert path is not None
    return [orjson.loads(line) for line in Path(path).read_bytes().splitlines()]


async def test_callers_are_authenticated_and_authorised_per_method(admin: Admin) -> None:
    listing = pb.ListBudgetsRequest()
    code, message = await admin.status("ListBudgets", listing, who=None)
    assert code is grpc.StatusCode.UNAUTHENTICATED and "missing credential" in message
    code, message = await admin.status("ListBudgets", listing, who="bob")
    assert code is grpc.StatusCode.PERMISSION_DENIED and "admins, finance" in message
    await admin.call("ListBudgets", listing, who="finance")  # read group: reads
    top_up = pb.TopUpRequest(
        budget="team-monthly", scope_value="eng", amount_micros=USD, reason="x"
    )
    code, message = await admin.status("TopUp", top_up, who="finance")
    assert code is grpc.StatusCode.PERMISSION_DENIED and "needs one of the groups admins" in message
    assert audit_lines(admin) == []


async def test_data_plane_credentials_are_not_admin_credentials(admin: Admin) -> None:
    listing = pb.ListBudgetsRequest()
    refused = {
        "a data-plane static token, even in an admin group": "dp",
        "a data-plane JWT of an admin issuer": admin.corp_token("llm-gateway", "admins"),
        "an admin-audience JWT of a shared-secret issuer not named": jwt.encode(
            {
                "iss": "https://ci.example.com",
                "aud": "llm-gateway-admin",
                "email": "ann@example.com",
                "email_verified": True,
                "groups": ["admins"],
                "iat": int(time.time()),
                "exp": int(time.time()) + 600,
            },
            CI_SECRET,
            algorithm="HS256",
        ),
    }
    for what, who in refused.items():
        code, message = await admin.status("ListBudgets", listing, who=who)
        assert code is grpc.StatusCode.UNAUTHENTICATED, what
        assert message.endswith(
            "(the admin API accepts a token for audience llm-gateway-admin from every issuer "
            "with a JWKS, or an admin static token; data-plane tokens are refused)"
        ), what
    # An admin-audience token of an admin issuer: its groups decide.
    await admin.call("ListBudgets", listing, who=admin.corp_token("llm-gateway-admin", "admins"))
    code, _ = await admin.status(
        "ListBudgets", listing, who=admin.corp_token("llm-gateway-admin", "eng")
    )
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert audit_lines(admin) == []


async def test_admin_credentials_are_refused_on_the_data_plane(admin: Admin) -> None:
    data_plane = admin.ctx.authenticator
    for token in ("secret-root", admin.corp_token("llm-gateway-admin", "admins")):
        with pytest.raises(Unauthenticated):
            await data_plane.authenticate({"authorization": f"Bearer {token}"})
    ok = await data_plane.authenticate({"authorization": "Bearer secret-dp"})
    assert ok.static_token == "dp"


async def test_override_is_seen_by_status_and_audited(admin: Admin) -> None:
    request = pb.SetOverrideRequest(
        budget="team-monthly", scope_value="eng", limit_micros=250 * USD, reason="launch week"
    )
    request.expires_at.CopyFrom(ts(NOW + 3600))
    override = await admin.call("SetOverride", request)
    assert override.limit_micros == 250 * USD and override.set_by == "root"
    assert override.previous_limit_micros == -1
    status = (
        await admin.call(
            "GetBudgetStatus", pb.GetBudgetStatusRequest(budget="team-monthly", scope_value="eng")
        )
    ).statuses[0]
    assert status.limit_micros == 250 * USD and status.configured_limit_micros == 100 * USD
    assert status.override.reason == "launch week"
    assert status.window_id == "2026-11" and status.resets_at.ToJsonString().startswith(
        "2026-12-01"
    )
    listed = (await admin.call("ListOverrides", pb.ListOverridesRequest())).overrides
    assert [(o.budget, o.scope_value) for o in listed] == [("team-monthly", "eng")]
    # The reserve sees it in the same script.
    store = admin.ctx.budgets.store
    assert store is not None
    budget = admin.ctx.config.budgets[0]
    reserved = await store.reserve("r1", [Charge.of(budget, "eng", 200 * USD)], 60, NOW)
    assert reserved.admitted and reserved.budgets[0].overridden
    removed = await admin.call(
        "RemoveOverride",
        pb.RemoveOverrideRequest(budget="team-monthly", scope_value="eng", reason="done"),
    )
    assert removed.removed
    [line, gone] = audit_lines(admin)
    assert line["type"] == "gateway.admin.v1" and line["method"] == "SetOverride"
    assert line["caller"]["subject"] == "root" and line["reason"] == "launch week"
    assert line["change"]["limit_usd"] == "250.000000"
    assert gone["method"] == "RemoveOverride"


async def test_top_up_raises_the_limit_for_this_window(admin: Admin) -> None:
    request = pb.TopUpRequest(
        budget="team-monthly", scope_value="eng", amount_micros=20 * USD, reason="hackathon"
    )
    response = await admin.call("TopUp", request)
    assert response.top_up_micros == 20 * USD
    assert response.status.limit_micros == 120 * USD
    assert response.status.remaining_micros == 120 * USD


def override(expires: float, reason: str = "launch week") -> pb.SetOverrideRequest:
    request = pb.SetOverrideRequest(
        budget="team-monthly", scope_value="eng", limit_micros=USD, reason=reason
    )
    request.expires_at.CopyFrom(ts(expires))
    return request


@pytest.mark.parametrize("expires", [NOW + 1, NOW + MAX_OVERRIDE_S])
async def test_override_expiry_bounds_are_inclusive(admin: Admin, expires: float) -> None:
    """The edges docs/admin.md promises: any instant after now, up to 366 days away."""
    found = await admin.call("SetOverride", override(expires))
    assert found.expires_at == ts(expires)


@pytest.mark.parametrize(
    ("method", "request_", "code", "words"),
    [
        (
            "GetSpend",
            pb.GetSpendRequest(group_by=["colour"]),
            "INVALID_ARGUMENT",
            "unknown dimension",
        ),
        (
            "GetSpend",
            pb.GetSpendRequest(dates=pb.DateRange(since="2026-11-20", until="2026-11-10")),
            "INVALID_ARGUMENT",
            "inverted range",
        ),
        (
            "GetSpend",
            pb.GetSpendRequest(dates=pb.DateRange(since="2024-01-01", until="2024-02-01")),
            "OUT_OF_RANGE",
            "retention",
        ),
        (
            "GetSpend",
            pb.GetSpendRequest(window=pb.NamedWindow(name="month", timezone="Asia/Tokyo")),
            "INVALID_ARGUMENT",
            "kept per day in UTC",
        ),
        (
            "SetOverride",
            pb.SetOverrideRequest(budget="nope", scope_value="eng", limit_micros=1, reason="r"),
            "NOT_FOUND",
            "no budget named 'nope'",
        ),
        (
            "SetOverride",
            pb.SetOverrideRequest(budget="team-monthly", scope_value="eng", limit_micros=1),
            "INVALID_ARGUMENT",
            "expires_at is required",
        ),
        (
            "SetOverride",
            override(NOW - 1),
            "INVALID_ARGUMENT",
            "expires_at is in the past",
        ),
        (
            "SetOverride",
            override(NOW),
            "INVALID_ARGUMENT",
            "expires_at is in the past",
        ),
        (
            "SetOverride",
            override(NOW + MAX_OVERRIDE_S + 1),
            "INVALID_ARGUMENT",
            "expires_at is more than 366 days away",
        ),
        (
            "SetOverride",
            override(NOW + 3600, reason=""),
            "INVALID_ARGUMENT",
            "reason is required",
        ),
        (
            "SetOverride",
            override(NOW + 3600, reason=" \t "),
            "INVALID_ARGUMENT",
            "reason is required",
        ),
        (
            "TopUp",
            pb.TopUpRequest(budget="team-monthly", scope_value="eng", amount_micros=5),
            "INVALID_ARGUMENT",
            "reason is required",
        ),
        (
            "TopUp",
            pb.TopUpRequest(budget="team-monthly", scope_value="eng", amount_micros=-5, reason="r"),
            "INVALID_ARGUMENT",
            "amount_micros must be positive",
        ),
        (
            "TopUp",
            pb.TopUpRequest(budget="user-rolling", scope_value="bob", amount_micros=5, reason="r"),
            "FAILED_PRECONDITION",
            "rolling window",
        ),
        (
            "GetBudgetStatus",
            pb.GetBudgetStatusRequest(budget="missing"),
            "NOT_FOUND",
            "configured: team-monthly, user-rolling",
        ),
    ],
)
async def test_bad_input_is_refused_and_changes_nothing(
    admin: Admin, method: str, request_: Any, code: str, words: str
) -> None:
    got, message = await admin.status(method, request_)
    assert got is grpc.StatusCode[code]
    assert words in message
    store = admin.ctx.budgets.store
    assert store is not None
    assert await store.client.keys(f"{store.key_base}:*") == []
    assert audit_lines(admin) == []


async def test_get_spend_groups_rollups(admin: Admin) -> None:
    store = admin.ctx.budgets.store
    assert store is not None
    for i, (user, model, cost) in enumerate([("a", "m1", 10), ("a", "m2", 5), ("b", "m1", 1)]):
        dims = Dimensions(user=user, model=model, attributes=(("cc", user.upper()),))
        usage = UsageRecord(NOW - 86_400 * i, dims, Usage(output_tokens=2), cost, i == 2)
        await store.record_usage(f"s{i}", usage, NOW)
    spend = await admin.call(
        "GetSpend",
        pb.GetSpendRequest(group_by=["user", "attribute:cc"], window=pb.NamedWindow(name="week")),
    )
    assert spend.first_day == "2026-11-23" and spend.last_day == "2026-11-26"
    assert [(list(r.key), r.cost_micros) for r in spend.rows] == [
        (["a", "A"], 15),
        (["b", "B"], 1),
    ]
    assert spend.total.requests == 3 and spend.total.estimated_cost_micros == 1
    assert spend.total.reported_cost_micros == 15 and spend.total.tokens.output == 6
    only = await admin.call(
        "GetSpend",
        pb.GetSpendRequest(
            group_by=["day"],
            filters=[pb.Filter(dimension="model", value="m1")],
            dates=pb.DateRange(since="2026-11-24", until="2026-11-27"),
        ),
    )
    assert [(list(r.key), r.cost_micros) for r in only.rows] == [
        (["2026-11-26"], 10),
        (["2026-11-24"], 1),
    ]


async def test_get_spend_reports_hits_and_refusals(admin: Admin) -> None:
    store = admin.ctx.budgets.store
    assert store is not None
    a, c = Dimensions(user="a", model="m1"), Dimensions(user="c", model="m1")
    await store.record_usage("b", UsageRecord(NOW, a, Usage(output_tokens=2), 10, False), NOW)
    answered = [
        (a, Outcome.CACHE_HIT, 40),
        (a, Outcome.REFUSED_RATE_LIMIT, 0),
        (c, Outcome.REFUSED_GUARDRAIL, 0),
        (c, Outcome.REFUSED_BUDGET, 0),
        (c, Outcome.REFUSED_POLICY, 0),
        (c, Outcome.REFUSED_POLICY, 0),
    ]
    for i, (dims, outcome, saved) in enumerate(answered):
        record = UsageRecord.answered(NOW, dims, outcome, saved)
        await store.record_usage(f"x{i}:answered", record, NOW)
    spend = await admin.call(
        "GetSpend", pb.GetSpendRequest(group_by=["user"], window=pb.NamedWindow(name="day"))
    )
    rows = {r.key[0]: r for r in spend.rows}
    assert (rows["a"].requests, rows["a"].cost_micros, rows["a"].cache_hits) == (1, 10, 1)
    assert rows["a"].cache_saved_micros == 40 and rows["a"].refused.rate_limit == 1
    refused = rows["c"].refused  # a row with refusals only
    assert rows["c"].requests == 0 and rows["c"].cost_micros == 0
    assert (refused.guardrail, refused.rate_limit, refused.budget, refused.policy) == (1, 0, 1, 2)
    total = spend.total
    assert (total.requests, total.cache_hits, total.cache_saved_micros) == (1, 1, 40)
    assert (total.refused.guardrail, total.refused.rate_limit, total.refused.policy) == (1, 1, 2)
    only_c = await admin.call(
        "GetSpend",
        pb.GetSpendRequest(
            filters=[pb.Filter(dimension="user", value="c")], window=pb.NamedWindow(name="day")
        ),
    )
    assert only_c.total.refused.policy == 2 and only_c.total.cache_hits == 0
