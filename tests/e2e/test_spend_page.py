"""The spend page through the real stack (Envoy's admin JSON listener, the sidecar's worker 0,
redis-server, the mock provider) and a real OIDC provider (tests/idp.py): sign-in by the IdP's
form (authorization code + PKCE), the own view against the admin view, filters, drill-down, CSV
equal to GetSpend (through the admin API) and to the audit log's sums after real SDK requests,
logout, forged and expired cookies, and sign-ins that go wrong - with httpx, and in a real browser
(Debian's chromium through Playwright: sign-in at the IdP's form, the filter form, drill-down, the
CSV download against the audit sums, the reconciliation view, sign-out, a phone-sized own view;
screenshots saved as test artefacts). The reconciliation view (admins only) after a real
RunReconciliation against the mock's reports: its CSV equals GetReconciliation's answer through
the admin API's JSON route, a day over the alert thresholds is highlighted, a person gets 403.
One stack for the file."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import html
import io
import re
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
import redis.asyncio
from google.protobuf import json_format
from playwright.sync_api import Page as PwPage

from gateway_extproc.admin._generated.gateway.admin.v1 import admin_pb2 as pb
from gateway_extproc.admin.recon_output import render_reconciliation
from gateway_extproc.budgets.store import BudgetStore
from gateway_extproc.catalog.pricing import format_usd
from gateway_extproc.identity.model import AuthMethod, Identity, Kind
from gateway_extproc.stack import Stack, free_port
from gateway_extproc.ui.sessions import Sessions
from tests.browser import shot
from tests.e2e.conftest import start_stack
from tests.e2e.harness import AuditLog, eventually
from tests.idp import IdpClient, IdpUser, OidcProvider

pytestmark = pytest.mark.e2e
ADA = IdpUser("ada@example.com", "pw-ada", ("eng",))
GRACE = IdpUser("grace@example.com", "pw-grace", ("eng", "ml"))
ROOT = IdpUser("root@example.com", "pw-root", ("gateway-admins",))
CONFIG = """
identity:
  issuers:
    corp:
      issuer: {issuer}
      audiences: [llm-gateway]
      jwks_url: {jwks}
      claims: {{attributes: {{cost_center: org.cost_center}}}}
admin_api: {{enabled: true}}
spend_page:
  enabled: true
  public_url: {public}
  oidc: {{issuer: corp, client_id: page, scopes: [openid, email]}}
budgets:
  - name: eng-monthly
    scope: {{kind: group}}
    match: {{groups: [eng]}}
    limit_usd: 100
    window: {{type: calendar, period: month}}
    action: monitor
  - name: per-user
    scope: {{kind: user}}
    limit_usd: 10
    window: {{type: calendar, period: month}}
    action: block
reconcile:
  providers:
    openai: {{base_url: mock, projects: [proj_default]}}
    anthropic: {{base_url: mock, workspaces: [default]}}
  alert: {{outside_usd_per_day: 0}}
"""


class Site:
    def __init__(self, stack: Stack, idp: OidcProvider, base: str) -> None:
        self.stack, self.idp, self.base = stack, idp, base
        self.audit = AuditLog(stack.run_dir / "audit.jsonl")

    def browser(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=30)

    def start_sign_in(self, client: httpx.Client, path: str = "/ui/") -> str:
        """Open a page signed out: redirected to /ui/login, then to the IdP. Returns the
        IdP's authorization URL."""
        first = client.get(path)
        assert first.status_code == 302, first.text
        assert first.headers["location"].startswith("/ui/login?next=")
        login = client.get(first.headers["location"])
        assert login.status_code == 302, login.text
        target = login.headers["location"]
        assert target.startswith(self.idp.issuer + "/authorize?")
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
        assert query["code_challenge_method"] == ["S256"] and query["nonce"][0]
        return target

    def idp_form(self, authorize_url: str, user: IdpUser, action: str = "allow") -> str:
        """Fill in the IdP's sign-in form as a person would; returns where it redirects."""
        form_page = httpx.get(authorize_url, timeout=10)
        assert form_page.status_code == 200, form_page.text
        fields = {
            html.unescape(k): html.unescape(v)
            for k, v in re.findall(r'type="hidden" name="([^"]+)" value="([^"]*)"', form_page.text)
        }
        fields |= {"username": user.email, "password": user.password, "action": action}
        answer = httpx.post(f"{self.idp.issuer}/authorize", data=fields, timeout=10)
        assert answer.status_code == 302, answer.text
        return answer.headers["location"]

    def sign_in(self, client: httpx.Client, user: IdpUser) -> None:
        callback = self.idp_form(self.start_sign_in(client), user)
        assert callback.startswith(self.base + "/ui/callback?")
        back = client.get(callback)
        assert back.status_code == 303, back.text
        assert back.headers["location"] == "/ui/"
        cookie = back.headers["set-cookie"]
        assert "gw_session=" in cookie and "HttpOnly" in cookie and "Path=/ui" in cookie
        assert "SameSite=Lax" in cookie and "Secure" not in cookie  # public URL is http

    def admin_token(self) -> str:
        claims = {"sub": "root", "email": ROOT.email, "email_verified": True}
        claims |= {"groups": list(ROOT.groups), "iss": self.idp.issuer, "aud": "llm-gateway-admin"}
        return self.idp.key.token(claims)

    def bearer(self, token: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.base, timeout=30, headers={"authorization": f"Bearer {token}"}
        )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp_path = tmp_path_factory.mktemp("spend-page")
    json_port = free_port()
    base = f"http://127.0.0.1:{json_port}"
    idp = OidcProvider([ADA, GRACE, ROOT], [IdpClient("page", (f"{base}/ui/callback",))])
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(issuer=idp.issuer, jwks=idp.jwks_url, public=base))
    stack = start_stack(
        tmp_path / "run",
        config_path=config,
        admin_api_port=0,
        admin_api_http_port=json_port,
        spend_page_port=0,
    )
    try:
        yield Site(stack, idp, base)
    finally:
        stack.stop()
        idp.close()


@pytest.fixture(scope="module")
def traffic(site: Site) -> list[str]:
    """Real SDK requests by ada and grace (tokens from the IdP, as `gatewayctl login` gets)."""
    ids: list[str] = []
    for user, n in ((ADA, 2), (GRACE, 1)):
        token = site.idp.access_token(site.idp.users[user.email], "cli")
        oai = openai.OpenAI(base_url=site.stack.gateway_url + "/v1", api_key=token, max_retries=0)
        for _ in range(n):
            raw = oai.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=20
            )
            ids.append(raw.headers["x-gateway-request-id"])
        claude = anthropic.Anthropic(base_url=site.stack.gateway_url, api_key=token, max_retries=0)
        raw_a = claude.messages.with_raw_response.create(
            model="claude-haiku-4-5", messages=[{"role": "user", "content": "hi"}], max_tokens=20
        )
        ids.append(raw_a.headers["x-gateway-request-id"])
    for rid in ids:
        site.audit.wait_for(rid)
    return ids


@pytest.fixture(scope="module")
def reconciled(site: Site, traffic: list[str]) -> str:
    """Today (UTC) reconciled by RunReconciliation through the admin API's JSON route, after the
    rollups hold the traffic and the mock's reports carry a leaked key's Anthropic spend outside
    the gateway's workspace (over `outside_usd_per_day: 0`). Returns the day."""
    day = dt.datetime.now(dt.UTC).date().isoformat()
    with site.bearer(site.admin_token()) as admin:
        expected = audit_sums(site, traffic, "model")
        eventually(
            lambda: csv_sums(admin.get("/ui/spend.csv?by=model").text, "model") == expected,
            what="the rollups to hold the traffic before reconciling",
        )
        assert site.stack.mock_url is not None
        leaked = httpx.post(
            site.stack.mock_url.removesuffix("/v1") + "/_mock/reports/served",
            json={
                "provider": "anthropic",
                "day": day,
                "model": "claude-haiku-4-5-20251001",
                "api_key": "sk-ant-api03-leaked",
                "project": "wrkspc_shadow",
                "tokens": {"input_tokens": 1000, "output_tokens": 100},
            },
            timeout=10,
        )
        assert leaked.status_code == 200, leaked.text
        run = admin.post(
            "/gateway.admin.v1.ReconciliationService/RunReconciliation",
            json={"day": day, "reason": "spend page test"},
            timeout=120,
        )
        assert run.status_code == 200, run.text
        assert {d["provider"] for d in run.json()["days"]} == {"openai", "anthropic"}
    return day


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def audit_sums(site: Site, ids: list[str], dim: str) -> dict[str, tuple[int, str]]:
    sums: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for rec in site.audit.records():
        if rec.get("request_id") in ids and rec["usage_source"] != "none":
            key = rec["served_model"] if dim == "model" else rec["identity"]["user"]
            sums[key][0] += 1
            sums[key][1] += rec["cost_micros"]
    return {k: (n, format_usd(c)) for k, (n, c) in sums.items()}


def csv_sums(text: str, dim: str) -> dict[str, tuple[int, str]]:
    return {r[dim]: (int(r["requests"]), r["cost_usd"]) for r in rows(text)}


# -- one source of truth ----------------------------------------------------------------------


def test_csv_equals_getspend_and_the_audit_sums(site: Site, traffic: list[str]) -> None:
    with site.bearer(site.admin_token()) as admin:
        compare_with_getspend_and_audit(site, admin, traffic)


def compare_with_getspend_and_audit(site: Site, admin: httpx.Client, traffic: list[str]) -> None:
    for dim in ("user", "model"):
        expected = audit_sums(site, traffic, dim)
        eventually(
            lambda dim=dim, expected=expected: (
                csv_sums(  # type: ignore[misc]
                    admin.get(f"/ui/spend.csv?by={dim}").text, dim
                )
                == expected
            ),
            what=f"the page's CSV by {dim} to reach the audit sums",
        )
        answer = admin.get(f"/ui/spend.csv?by={dim}")
        assert answer.headers["content-type"].startswith("text/csv")
        api = admin.post("/gateway.admin.v1.AdminService/GetSpend", json={"groupBy": [dim]})
        assert api.status_code == 200, api.text
        from_api = {
            r["key"][0]: (int(r["requests"]), format_usd(int(r["costMicros"])))
            for r in api.json()["rows"]
        }
        assert csv_sums(answer.text, dim) == from_api == expected
    header = rows(admin.get("/ui/spend.csv?by=model").text)[0].keys()
    assert list(header)[:3] == ["model", "requests", "input_tokens"]


def test_a_data_plane_token_sees_only_its_own_spend(site: Site, traffic: list[str]) -> None:
    token = site.idp.access_token(site.idp.users[ADA.email], "cli")
    with site.bearer(token) as curl:
        widened = curl.get("/ui/spend.csv?by=user&user=grace@example.com")
        assert widened.status_code == 200
        assert [r["user"] for r in rows(widened.text)] == [ADA.email]
        assert "your own view" in curl.get("/ui/").text


# -- reconciliation (admins only) -------------------------------------------------------------


def test_reconciliation_csv_equals_getreconciliation(
    site: Site, traffic: list[str], reconciled: str
) -> None:
    day = dt.date.fromisoformat(reconciled)
    # Today only: worker 0's schedule reconciles yesterday and the days before it meanwhile.
    since, until = reconciled, (day + dt.timedelta(days=1)).isoformat()
    with site.bearer(site.admin_token()) as admin:
        exported = admin.get(f"/ui/reconciliation.csv?since={since}&until={until}")
        assert exported.status_code == 200, exported.text
        assert exported.headers["content-type"].startswith("text/csv")
        api = admin.post(
            "/gateway.admin.v1.ReconciliationService/GetReconciliation",
            json={"dates": {"since": since, "until": until}},
        )
        assert api.status_code == 200, api.text
        answer = json_format.ParseDict(api.json(), pb.GetReconciliationResponse())
        assert exported.text == render_reconciliation(answer.days, answer.missing, "csv") + "\n"
        totals = {r["provider"]: r for r in rows(exported.text) if r["model"] == "*"}
        assert set(totals) == {"openai", "anthropic"}
        by_provider: dict[str, int] = defaultdict(int)  # what the audit log says was charged
        for rec in site.audit.records():
            if rec.get("request_id") in traffic and rec["usage_source"] != "none":
                by_provider[rec["provider"]] += rec["cost_micros"]
        assert {p: int(r["gateway_cost_micros"]) for p, r in totals.items()} == by_provider
        assert int(totals["anthropic"]["outside_cost_micros"]) > 0  # the leaked key's spend
        assert int(totals["openai"]["outside_cost_micros"]) == 0

        page = admin.get(f"/ui/reconciliation?since={since}&until={until}")
        assert page.status_code == 200 and "root@example.com · admin view" in page.text
        over = re.search(
            rf'<tbody class="day over" data-provider="anthropic" data-day="{reconciled}">',
            page.text,
        )
        assert over is not None, page.text  # over outside_usd_per_day: highlighted
        assert f'<tbody class="day" data-provider="openai" data-day="{reconciled}">' in page.text
        old = day - dt.timedelta(days=20)  # before any day the schedule reconciles
        never = admin.get(f"/ui/reconciliation?since={old}&until={old + dt.timedelta(days=1)}")
        assert f'data-day="{old}"' in never.text and "never reconciled" in never.text


def test_a_person_cannot_see_the_reconciliation(site: Site, reconciled: str) -> None:
    token = site.idp.access_token(site.idp.users[ADA.email], "cli")
    with site.bearer(token) as curl:
        assert "/ui/reconciliation" not in curl.get("/ui/").text  # no nav link
        for path in ("/ui/reconciliation", "/ui/reconciliation.csv"):
            answer = curl.get(f"{path}?since={reconciled}&until=2999-01-01")
            assert answer.status_code == 403, answer.text
            assert "claude" not in answer.text and "gpt" not in answer.text
    with site.browser() as me:
        site.sign_in(me, GRACE)
        assert me.get("/ui/reconciliation").status_code == 403


# -- sign-in, views, logout --------------------------------------------------------------------


def test_signed_in_person_sees_own_view_and_budgets_then_signs_out(
    site: Site, traffic: list[str]
) -> None:
    with site.browser() as me:
        site.sign_in(me, ADA)
        view = me.get("/ui/?by=model&user=grace@example.com")
        assert view.status_code == 200
        assert "ada@example.com · your own view" in view.text
        assert "grace" not in view.text  # the forced filter is not even shown as removable
        csp = view.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert '<meta name="viewport"' in view.text
        own = rows(me.get("/ui/spend.csv?by=user&user=grace@example.com").text)
        assert [r["user"] for r in own] == [ADA.email]
        budgets = rows(me.get("/ui/budgets.csv").text)
        assert {(b["budget"], b["scope_value"]) for b in budgets} == {
            ("eng-monthly", "eng"),
            ("per-user", ADA.email),
        }
        assert all(b["forecast_usd"] for b in budgets)
        token = re.search(r'name="csrf" value="([^"]+)"', view.text)
        assert token is not None
        refused = me.post("/ui/logout", data={"csrf": "forged"})
        assert refused.status_code == 403
        cross = me.post(
            "/ui/logout", data={"csrf": token[1]}, headers={"origin": "https://evil.example"}
        )
        assert cross.status_code == 403
        old = me.cookies.get("gw_session")
        out = me.post("/ui/logout", data={"csrf": token[1]}, headers={"origin": site.base})
        assert out.status_code == 200 and "signed out" in out.text
    with site.browser() as later:  # the deleted session's cookie opens nothing
        later.cookies.set("gw_session", old or "", path="/ui")
        again = later.get("/ui/")
        assert again.status_code == 302 and again.headers["location"].startswith("/ui/login")


def test_admin_sees_everyone_filters_and_drills_down(site: Site, traffic: list[str]) -> None:
    with site.browser() as boss:
        site.sign_in(boss, ROOT)
        view = boss.get("/ui/?by=group")
        assert view.status_code == 200 and "root@example.com · admin view" in view.text
        assert "Top spenders" in view.text
        # the "Group by" menu offers the attribute the issuer's claim mapping produces
        assert "<option>attribute:cost_center</option>" in view.text
        drill = re.search(r'<a href="(/ui/\?by=user[^"]*group=eng[^"]*)">eng</a>', view.text)
        assert drill is not None, view.text
        link = html.unescape(drill[1])
        users = boss.get(link.replace("/ui/?", "/ui/spend.csv?"))
        assert {r["user"] for r in rows(users.text)} == {ADA.email, GRACE.email}
        filtered = rows(boss.get("/ui/spend.csv?by=user&group=ml").text)
        assert [r["user"] for r in filtered] == [GRACE.email]
        budgets = rows(boss.get("/ui/budgets.csv").text)
        assert ("per-user", GRACE.email) in {(b["budget"], b["scope_value"]) for b in budgets}


# -- what must not let anyone in -----------------------------------------------------------------


def test_forged_and_expired_session_cookies_open_nothing(site: Site) -> None:
    with site.browser() as forged:
        forged.cookies.set("gw_session", "x" * 43, path="/ui")
        assert forged.get("/ui/").status_code == 302
        assert forged.get("/ui/spend.csv").status_code == 401

    async def expired_session() -> str:
        client = redis.asyncio.Redis.from_url(site.stack.redis_url)
        try:
            store = BudgetStore(client, site.stack.config.budget_store.key_prefix)
            sessions = Sessions(client, store.key_base)  # where the page keeps them
            ada = Identity(
                kind=Kind.USER,
                auth_method=AuthMethod.JWT,
                user=ADA.email,
                service=None,
                groups=frozenset(ADA.groups),
                issuer="corp",
                attributes={},
                expires_at=None,
            )
            session_id, _ = await sessions.create(ada, 60, time.time() - 120)  # ended 60 s ago
            return session_id
        finally:
            await client.aclose()

    session_id = asyncio.run(expired_session())
    with site.browser() as late:
        late.cookies.set("gw_session", session_id, path="/ui")
        assert late.get("/ui/spend.csv").status_code == 401


def test_sign_ins_that_go_wrong_get_a_clear_page(site: Site) -> None:
    with site.browser() as client:  # a state that is not the one this browser started
        callback = site.idp_form(site.start_sign_in(client), ADA)
        forged = re.sub(r"state=[^&]+", "state=forged", callback)
        answer = client.get(forged)
        assert answer.status_code == 400 and "state does not match" in answer.text
    with site.browser() as client:  # the person declines at the IdP
        callback = site.idp_form(site.start_sign_in(client), ADA, action="deny")
        answer = client.get(callback)
        assert answer.status_code == 403 and "you declined the sign-in" in answer.text
    with site.browser() as client:  # the same callback twice: the sign-in is used up
        callback = site.idp_form(site.start_sign_in(client), ADA)
        assert client.get(callback).status_code == 303
        replay = client.get(callback)
        assert replay.status_code == 400 and "already used" in replay.text
    with site.browser() as other, site.browser() as stranger:  # not the browser that began it
        callback = site.idp_form(site.start_sign_in(other), ADA)
        answer = stranger.get(callback)
        assert answer.status_code == 400 and "Traceback" not in answer.text


def test_root_redirects_and_static_files_are_cached(site: Site) -> None:
    root = httpx.get(site.base + "/", timeout=10)
    # a 302: a 301 would be cached by browsers for good
    assert root.status_code == 302 and root.headers["location"].endswith("/ui/")
    script = httpx.get(site.base + "/ui/static/uplot/uPlot.iife.min.js", timeout=10)
    assert script.status_code == 200 and "immutable" in script.headers["cache-control"]
    assert script.headers["content-type"].startswith("text/javascript")
    # the public listener never serves the page
    public = httpx.get(site.stack.gateway_url + "/ui/", timeout=10)
    assert public.status_code != 200 or "LLM gateway" not in public.text


# -- in a real browser (Debian's chromium through Playwright: tests/browser.py) -----------------


def browser_sign_in(site: Site, page: PwPage, user: IdpUser) -> None:
    """Open the page signed out and sign in at the IdP's form, as a person does."""
    page.goto(site.base + "/")  # Envoy redirects to /ui/, which sends the browser to the IdP
    assert page.url.startswith(site.idp.issuer + "/authorize?"), page.url
    page.fill("input[name=username]", user.email)
    page.fill("input[name=password]", user.password)
    page.click("button[value=allow]")
    page.wait_for_url(site.base + "/ui/")


def test_in_a_browser_sign_in_filter_drill_down_and_export_csv(
    site: Site, traffic: list[str], reconciled: str, page: PwPage
) -> None:
    browser_sign_in(site, page, ROOT)
    assert "root@example.com · admin view" in page.inner_text("header")
    page.wait_for_selector("#chart canvas")  # the vendored uPlot drew the cost-per-day chart
    shot(page, "signed-in")

    page.select_option("select[name=by]", "group")  # filter form: group by group
    page.click("form.controls button")
    page.wait_for_url("**/ui/?by=group*")
    page.click("table.rows a:text-is('eng')")  # drill down: eng's users
    page.wait_for_url("**group=eng*")
    shown = {
        c.strip() for c in page.locator("table.rows tbody tr td:first-child").all_inner_texts()
    }
    assert shown == {ADA.email, GRACE.email}
    shot(page, "drilled-down")

    with page.expect_download() as download:
        page.click("text=CSV")
    exported = Path(download.value.path()).read_text()
    assert download.value.suggested_filename.endswith(".csv")
    expected = audit_sums(site, traffic, "user")
    assert csv_sums(exported, "user") == expected  # eng is all of ada's and grace's spend

    page.click("text=Budgets")
    page.wait_for_url("**/ui/budgets")
    assert "per-user" in page.inner_text("main")
    shot(page, "budgets")

    page.click("header nav a:text-is('Reconciliation')")  # admins only: the nav link
    page.wait_for_url("**/ui/reconciliation")
    page.fill("input[name=since]", reconciled)  # the form: today, which the run reconciled
    next_day = dt.date.fromisoformat(reconciled) + dt.timedelta(days=1)
    page.fill("input[name=until]", next_day.isoformat())
    page.click("form.controls button")
    page.wait_for_url(f"**/ui/reconciliation?since={reconciled}*")
    flagged = page.locator("table.recon tbody.over .alert").all_inner_texts()
    assert [t.split(" $")[0] for t in flagged] == ["outside"], flagged  # anthropic's leaked key
    totals = page.locator("table.recon tr.total td:first-child").all_inner_texts()
    assert [t.strip() for t in totals] == ["*", "*"]  # anthropic's day and openai's
    shot(page, "reconciliation")
    with page.expect_navigation():
        page.click("header button:text-is('Sign out')")
    assert "you are signed out" in page.inner_text("main"), page.inner_text("main")
    page.goto(site.base + "/ui/")
    assert page.url.startswith(site.idp.issuer + "/authorize?")  # signed out: back to the IdP


def test_in_a_browser_a_person_sees_their_own_spend_on_a_phone(
    site: Site, traffic: list[str], page: PwPage
) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    browser_sign_in(site, page, GRACE)
    assert "grace@example.com · your own view" in page.inner_text("header")
    page.goto(site.base + "/ui/?by=user&user=ada@example.com")  # cannot widen the own view
    shown = page.locator("table.rows tbody tr td:first-child").all_inner_texts()
    assert [s.strip() for s in shown] == [GRACE.email]
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width}px wide on a 390px phone: it must not scroll sideways"
    shot(page, "phone")
