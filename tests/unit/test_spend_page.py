"""The spend page's pure parts: a view's query, the own view's forced filter, drill-down links,
the forecast, the CSV columns, who gets the admin view, which budgets cover a person, and the
`spend_page:` section's problems, and the attributes the "Group by" menu offers (under `make run`'s
configuration too)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway_extproc.admin._generated.gateway.admin.v1 import admin_pb2 as pb
from gateway_extproc.admin.output import SPEND_COLUMNS
from gateway_extproc.admin.settings import AdminApiConfig
from gateway_extproc.budgets.model import (
    Action,
    BudgetConfig,
    CalendarWindow,
    Match,
    Period,
    Scope,
    ScopeKind,
)
from gateway_extproc.identity.model import (
    AuthMethod,
    ClaimMapping,
    Identity,
    IdentityConfig,
    IssuerConfig,
    Kind,
    StaticToken,
)
from gateway_extproc.runtime import DEV_ATTRIBUTES, build_context, close_context
from gateway_extproc.spend.query import QueryError
from gateway_extproc.ui import views
from gateway_extproc.ui.access import Source, may_admin, own_scope_values, viewer
from gateway_extproc.ui.settings import page_problems, parse_spend_page
from gateway_extproc.ui.views import SpendQuery
from tests.sidecar_secrets import ENV as SIDECAR_ENV

ADA = Identity(
    kind=Kind.USER,
    auth_method=AuthMethod.JWT,
    user="ada@example.com",
    service=None,
    groups=frozenset({"eng", "ml"}),
    issuer="corp",
    attributes={"cost_center": "cc-7"},
    expires_at=None,
)
ADMIN = AdminApiConfig(enabled=True)


# -- queries ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ([], SpendQuery()),
        ([("by", "model"), ("window", "week")], SpendQuery(by="model", window="week")),
        (  # the page's own form, its date fields left empty (found by the browser test)
            [("by", "group"), ("window", "week"), ("since", ""), ("until", "")],
            SpendQuery(by="group", window="week"),
        ),
        (
            [("since", "2026-11-01"), ("until", "2026-12-01"), ("user", "a"), ("user", "b")],
            SpendQuery(
                window=None,
                since="2026-11-01",
                until="2026-12-01",
                filters=(("user", "a"), ("user", "b")),
            ),
        ),
        (
            [
                ("by", "attribute:cost_center"),
                ("attribute:team", "x"),
                ("user", "a"),
                ("user", "a"),
            ],
            SpendQuery(
                by="attribute:cost_center", filters=(("attribute:team", "x"), ("user", "a"))
            ),
        ),
    ],
)
def test_parse_query(params: list[tuple[str, str]], expected: SpendQuery) -> None:
    assert views.parse_query(params) == expected
    assert views.parse_query(expected.params()) == expected  # a view is its link


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ([("by", "colour")], "unknown dimension"),
        ([("window", "year")], "window"),
        ([("since", "2026-11-01")], "together"),
        ([("since", "yesterday"), ("until", "2026-12-01")], "since: a date"),
        ([("day", "2026-11-01")], "since and until"),
        ([("nonsense", "1")], "unknown dimension"),
    ],
)
def test_bad_queries_name_the_parameter(params: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(QueryError, match=message):
        views.parse_query(params)


def test_the_own_view_cannot_be_widened_by_parameters() -> None:
    me = viewer(ADA, Source.SESSION, dataclasses.replace(ADMIN, read_groups=frozenset({"x"})))
    assert not me.admin
    asked = views.parse_query(
        [
            ("by", "user"),
            ("user", "grace@example.com"),
            ("user", "ada@example.com"),
            ("group", "ml"),
        ]
    )
    held = views.held_to(asked, me.own_filter)
    assert held.filters == (("user", "ada@example.com"), ("group", "ml"))
    request = views.request(held)
    assert [(f.dimension, f.value) for f in request.filters] == [
        ("user", "ada@example.com"),
        ("group", "ml"),
    ]
    # no filter at all is held to the person too; an admin's query is left as asked
    assert views.held_to(SpendQuery(), me.own_filter).filters == (("user", "ada@example.com"),)
    boss = viewer(
        dataclasses.replace(ADA, groups=frozenset({"gateway-admins"})), Source.SESSION, ADMIN
    )
    assert views.held_to(asked, boss.own_filter) == asked


def test_group_by_offers_the_attributes_the_configuration_produces() -> None:
    def issuer(name: str, **attributes: str) -> IssuerConfig:
        claims = ClaimMapping(attributes=attributes)
        return IssuerConfig(name, f"https://{name}", ("gw",), ("RS256",), claims=claims)

    identity = IdentityConfig(
        issuers=(issuer("corp", team="org.team", cost_center="cc"), issuer("ci")),
        static_tokens=(
            StaticToken("bot", b"x" * 32, attributes={"cost_center": "42", "env": "prod"}),
            StaticToken("plain", b"y" * 32),
        ),
    )
    names = views.attribute_names(identity)
    assert names == ["cost_center", "env", "team"]  # each once, sorted
    assert views.attribute_names(IdentityConfig()) == []
    fixed = ["user", "group", "service", "static_token", "model", "provider"]
    assert views.dimensions(names, "user") == [
        *fixed,
        "attribute:cost_center",
        "attribute:env",
        "attribute:team",
        "day",
    ]
    assert views.dimensions([], "day") == [*fixed, "day"]
    # an attribute only the link names (a past configuration's) stays in the menu, selected
    assert views.dimensions(names[:1], "attribute:region") == [
        *fixed,
        "attribute:cost_center",
        "attribute:region",
        "day",
    ]
    # every option is a dimension GetSpend takes
    for dim in views.dimensions(names, "user"):
        assert views.parse_query([("by", dim)]).by == dim


async def test_make_runs_menu_offers_the_dev_issuers_attributes(tmp_path: Path) -> None:
    """What the page reads (the data-plane authenticator's configuration) under config/local.yaml
    holds the development issuer's attributes (`gatewayctl token --attr`)."""
    env = {"GATEWAY_RUN_DIR": str(tmp_path), "GATEWAY_ALLOW_DEV_ISSUER": "1", **SIDECAR_ENV}
    local = Path(__file__).parents[2] / "config" / "local.yaml"
    ctx = build_context(local, env, "http://127.0.0.1:9/v1")
    try:
        names = views.attribute_names(ctx.authenticator.config)
        assert names == sorted(DEV_ATTRIBUTES)
        assert "attribute:cost_center" in views.dimensions(names, "user")  # the demo's attribute
    finally:
        await close_context(ctx)


def test_request_carries_the_range() -> None:
    dates = views.request(
        SpendQuery(by="model", window=None, since="2026-11-01", until="2026-11-08")
    )
    assert dates.WhichOneof("period") == "dates" and dates.dates.until == "2026-11-08"
    assert list(dates.group_by) == ["model"]
    window = views.request(SpendQuery(window="week"), ["day"])
    assert window.window.name == "week" and list(window.group_by) == ["day"]


def test_drill_down_filters_the_row_and_groups_by_the_next_dimension() -> None:
    q = SpendQuery(by="group", window="week")
    step = views.drill(q, "eng")
    assert step == SpendQuery(by="user", window="week", filters=(("group", "eng"),))
    step = views.drill(step, "ada@example.com")
    assert step is not None and step.by == "service"
    assert step.filters == (("group", "eng"), ("user", "ada@example.com"))
    assert step.link() == "/ui/?by=service&window=week&group=eng&user=ada%40example.com"
    # from model the next not yet filtered is provider; from provider the first left over
    assert views.drill(SpendQuery(by="model"), "gpt-4o") == SpendQuery(
        by="provider", filters=(("model", "gpt-4o"),)
    )
    left = views.drill(SpendQuery(by="provider", filters=(("group", "g"),)), "openai")
    assert left is not None and left.by == "user"
    # a day opens that day's spend by model
    day = views.drill(SpendQuery(by="day"), "2026-11-30")
    assert day == SpendQuery(by="model", window=None, since="2026-11-30", until="2026-12-01")


def test_forecast_is_linear_on_the_elapsed_fraction() -> None:
    assert views.forecast(1_000_000, 0.0, 100.0, 25.0) == 4_000_000
    assert views.forecast(999, 0.0, 3.0, 1.0) == 2997
    assert views.forecast(5, 0.0, 100.0, 150.0) == 5  # the window is over: what was spent
    assert views.forecast(5, 10.0, 100.0, 10.0) is None  # not yet begun
    assert views.forecast(5, 0.0, 0.0, 1.0) is None


def test_csv_has_gatewayctls_columns_and_any_further_totals() -> None:
    response = pb.GetSpendResponse(group_by=["model"])
    response.rows.add(
        key=["gpt-4o"],
        requests=3,
        tokens=pb.Tokens(input=10, output=5),
        cost_micros=1_500_000,
        estimated_cost_micros=500_000,
        reported_cost_micros=1_000_000,
    )
    lines = views.spend_csv(response).splitlines()
    assert lines[0].split(",") == ["model", *SPEND_COLUMNS]
    assert len(set(lines[0].split(","))) == len(lines[0].split(","))  # no column twice
    assert lines[1] == "gpt-4o,3,10,0,0,0,5,0,1.500000,0.500000,1.000000,0,0.000000,0,0,0,0"
    # the HTML table shows the rollups' further totals (hits, savings, refusals) as columns
    assert [name for name, _ in views.extra_fields(response.rows[0])] == [
        "cache_hits",
        "cache_saved_micros",
        "refused_guardrail",
        "refused_rate_limit",
        "refused_budget",
        "refused_policy",
    ]


def test_further_integer_totals_are_found_by_name() -> None:
    """What h-rollups adds to SpendRow (cache hits, savings, refusals) shows without a page
    change: any integer field without a column, nested messages flattened."""
    assert views.extra_fields(pb.Tokens(input=4, reasoning=2)) == [
        ("input", 4),
        ("cached_input", 0),
        ("cache_write", 0),
        ("cache_write_1h", 0),
        ("output", 0),
        ("reasoning", 2),
    ]
    assert views.label("cache_saved_micros") == "cache saved"
    assert views.cell("cache_saved_micros", 1_250_000) == "$1.250000"
    assert views.cell("refused_guardrail", 1234) == "1,234"


# -- who sees what ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("groups", "source", "issuers", "admin"),
    [
        ({"gateway-admins"}, Source.ADMIN_TOKEN, None, True),
        ({"gateway-admins"}, Source.SESSION, None, True),
        ({"gateway-admins"}, Source.SESSION, ("corp",), True),
        ({"gateway-admins"}, Source.SESSION, ("other",), False),  # issuer not admitted
        ({"gateway-admins"}, Source.DATA_TOKEN, None, False),  # never, as on the admin API
        ({"eng"}, Source.ADMIN_TOKEN, None, False),
        ({"eng"}, Source.SESSION, None, False),
    ],
)
def test_admin_view_is_the_admin_apis_read_authorisation(
    groups: set[str], source: Source, issuers: tuple[str, ...] | None, admin: bool
) -> None:
    identity = dataclasses.replace(ADA, groups=frozenset(groups))
    settings = dataclasses.replace(ADMIN, issuers=issuers)
    assert may_admin(identity, source, settings) is admin
    assert viewer(identity, source, settings).own_filter == (None if admin else ("user", ADA.user))


def _budget(kind: ScopeKind, match: Match | None = None, **scope: str) -> BudgetConfig:
    return BudgetConfig(
        name="b",
        scope=Scope(kind, **scope),  # type: ignore[arg-type]
        limit_micros=1,
        window=CalendarWindow(Period.MONTH),
        action=Action.BLOCK,
        match=match or Match(),
    )


@pytest.mark.parametrize(
    ("budget", "values"),
    [
        (_budget(ScopeKind.USER), ["ada@example.com"]),
        (_budget(ScopeKind.GROUP), ["eng", "ml"]),
        (_budget(ScopeKind.GROUP, value="ml"), ["ml"]),
        (_budget(ScopeKind.GROUP, value="interns"), []),
        (_budget(ScopeKind.GLOBAL), ["*"]),
        (_budget(ScopeKind.ATTRIBUTE, attribute="cost_center"), ["cc-7"]),
        (_budget(ScopeKind.MODEL), []),  # everyone's spend on a model: not a person's budget
        (_budget(ScopeKind.SERVICE), []),
        (_budget(ScopeKind.USER, Match(groups=frozenset({"interns"}))), []),
        (_budget(ScopeKind.USER, Match(groups=frozenset({"ml"}))), ["ada@example.com"]),
    ],
)
def test_own_budgets_are_those_whose_scope_covers_the_person(
    budget: BudgetConfig, values: list[str]
) -> None:
    assert own_scope_values(budget, ADA) == values


# -- configuration ----------------------------------------------------------------------------


def test_settings_report_every_problem_with_its_path() -> None:
    problems: list[str] = []
    page = parse_spend_page(
        {
            "enabled": "yes",
            "port": 70000,
            "public_url": "ftp://x/y",
            "colour": 1,
            "oidc": {"client_id": "", "scopes": ["email"], "extra": 1},
        },
        problems,
    )
    assert problems == [
        "spend_page.colour: unknown key",
        "spend_page.enabled: must be true or false (got 'yes')",
        "spend_page.public_url: must be an http(s) origin like https://spend.example.com "
        "(got 'ftp://x/y')",
        "spend_page.oidc.extra: unknown key",
        "spend_page.oidc.client_id: must be a non-empty string (got '')",
        "spend_page.oidc.issuer: required",
        "spend_page.oidc.scopes: must include openid (the id_token signs in)",
        "spend_page.public_url: required with oidc (the IdP redirects to <public_url>/ui/callback)",
        "spend_page.port: must be an integer in [0, 65535] (got 70000)",
    ]
    assert page.enabled is False


def test_settings_and_what_they_need_of_the_rest() -> None:
    problems: list[str] = []
    page = parse_spend_page(
        {
            "enabled": True,
            "public_url": "https://spend.example.com/",
            "oidc": {"issuer": "corp", "client_id": "page"},
        },
        problems,
    )
    assert problems == []
    assert page.redirect_uri == "https://spend.example.com/ui/callback" and page.secure_cookies
    corp = IssuerConfig("corp", "https://idp", ("llm-gateway",), ("RS256",), jwks_url="https://k")
    shared = dataclasses.replace(corp, name="hs", jwks_url=None, hs_secret=b"s" * 32)
    assert page_problems(page, IdentityConfig(issuers=(corp,)), True) == []
    assert page_problems(page, IdentityConfig(issuers=(shared,)), False) == [
        "spend_page.enabled: needs admin_api.enabled (the page is served through the admin "
        "API's JSON listener, with its authorisation)",
        "spend_page.oidc.issuer: no issuer named 'corp' in identity.issuers (configured: hs)",
    ]
