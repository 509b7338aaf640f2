"""Trust scoped per issuer, through the real stack (Envoy, the sidecar, redis-server, the mock
provider, a JWKS server on loopback): a token with Alice's e-mail that its IdP has not verified
gets neither Alice's policy, nor her cached answers, nor her budget; the admin API takes only
admin-audience tokens, over mutual TLS on its gRPC port and on Envoy's JSON listener. One
stack for the file."""

from __future__ import annotations

import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from gateway_extproc.admin._generated.gateway.admin.v1 import admin_pb2 as pb
from gateway_extproc.stack import Stack, free_port
from tests.e2e.conftest import start_stack
from tests.e2e.harness import AuditLog
from tests.idp import ISSUER, JwksServer, SigningKey
from tests.selfsigned import CertAuthority

pytestmark = pytest.mark.e2e
ALICE = "alice@example.com"
CHAT = "/v1/chat/completions"
LIMIT_USD = 0.0015  # one 2,000-token gpt-4o-mini answer ($0.0012) nearly exhausts it


def config_text(jwks_url: str, run_dir: Path, pki: Pki) -> str:
    return f"""
identity:
  issuers:
    corp:
      issuer: {ISSUER}
      audiences: [llm-gateway]
      jwks_url: {jwks_url}
      claims: {{user: [email], groups: [groups]}}
policies:
  default: {{allow: [gpt-4o-mini]}}
  rules:
    - users: [{ALICE}]
      allow: ["*"]
budgets:
  - name: per-user
    scope: {{kind: user}}
    match: {{models: [gpt-4o-mini]}}
    limit_usd: {LIMIT_USD}
    window: {{type: calendar, period: day}}
    action: block
cache:
  rules:
    - name: mine
      match: {{groups: [cached]}}
      ttl: 1h
admin_api:
  enabled: true
  issuers: [corp]
  socket: {run_dir / "admin.sock"}
  tls:
    cert_file: {pki.cert}
    key_file: {pki.key}
    client_ca_file: {pki.client_ca_file}
"""


class Pki:
    def __init__(self, root: Path) -> None:
        server_ca = CertAuthority("admin-server-ca")
        self.ca_file = server_ca.write_ca(root / "server-ca.crt")
        self.cert, self.key = server_ca.issue(root / "tls.crt", root / "tls.key", "127.0.0.1")
        client_ca = CertAuthority("admin-client-ca")
        self.client_ca_file = client_ca.write_ca(root / "client-ca.crt")
        self.client = client_ca.issue(root / "ops.crt", root / "ops.key", "ops", client=True)

    def context(self, client: bool = True) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if client:
            context.load_cert_chain(str(self.client[0]), str(self.client[1]))
        return context


class Gateway:
    def __init__(self, stack: Stack, key: SigningKey, pki: Pki, json_port: int) -> None:
        self.stack, self.key, self.pki, self.json_port = stack, key, pki, json_port
        self.audit = AuditLog(stack.run_dir / "audit.jsonl")

    def token(self, sub: str, verified: Any, *groups: str, aud: str = "llm-gateway") -> str:
        claims = {"sub": sub, "email": ALICE, "groups": list(groups), "aud": aud}
        if verified is not None:
            claims["email_verified"] = verified
        return self.key.token(claims)

    def chat(
        self, token: str, content: str, model: str = "gpt-4o-mini", output_tokens: int = 12
    ) -> httpx.Response:
        body = {
            "model": model,
            "max_tokens": 2000,
            "messages": [{"role": "user", "content": content}],
        }
        return httpx.post(
            self.stack.gateway_url + CHAT,
            json=body,
            headers={
                "authorization": f"Bearer {token}",
                "x-mock-output-tokens": str(output_tokens),
            },
            timeout=30,
        )

    def user_of(self, response: httpx.Response) -> str:
        record = self.audit.wait_for(response.headers["x-gateway-request-id"])
        return str(record["identity"]["user"])


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp_path = tmp_path_factory.mktemp("issuer-trust")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    key = SigningKey("k1")
    idp = JwksServer(key)
    pki = Pki(tmp_path / "pki")
    config = tmp_path / "gateway.yaml"
    config.write_text(config_text(idp.url, run_dir, pki))
    json_port = free_port()
    stack = start_stack(
        run_dir, config_path=config, admin_api_port=0, admin_api_http_port=json_port
    )
    yield Gateway(stack, key, pki, json_port)
    stack.stop()
    idp.close()


# -- an unverified e-mail is not Alice ----------------------------------------------------------


@pytest.mark.parametrize("verified", [False, None, "false"], ids=["false", "absent", "string"])
def test_an_unverified_email_does_not_get_alices_policy(gw: Gateway, verified: Any) -> None:
    alice = gw.chat(gw.token("u-alice", True), "policy check", model="gpt-4o")
    assert alice.status_code == 200, alice.text
    assert gw.user_of(alice) == ALICE
    mallory = gw.chat(gw.token("u-mallory", verified), "policy check", model="gpt-4o")
    assert mallory.status_code == 403, mallory.text
    assert "u-mallory may not use model 'gpt-4o'" in mallory.json()["error"]["message"]


def test_an_unverified_email_does_not_get_alices_cached_answers(gw: Gateway) -> None:
    prompt = "What did Alice ask the model in private?"
    first = gw.chat(gw.token("u-alice", True, "cached"), prompt)
    assert first.headers["x-gateway-cache-status"] == "miss"
    again = gw.chat(gw.token("u-alice", True, "cached"), prompt)
    assert again.headers["x-gateway-cache-status"] == "hit"  # Alice's own entry is there
    mallory = gw.chat(gw.token("u-mallory", False, "cached"), prompt)
    assert mallory.status_code == 200, mallory.text
    assert mallory.headers["x-gateway-cache-status"] == "miss"
    assert gw.user_of(mallory) == "u-mallory"


def test_an_unverified_email_does_not_spend_alices_budget(gw: Gateway) -> None:
    # Alice spends most of her day's budget; her next request no longer fits.
    big = gw.chat(gw.token("u-alice", True), "a long answer, please", output_tokens=2000)
    assert big.status_code == 200, big.text
    refused = gw.chat(gw.token("u-alice", True), "and another")
    assert refused.status_code == 429, refused.text
    # Mallory's request is hers: her own budget, untouched.
    mallory = gw.chat(gw.token("u-mallory-2", False), "and another")
    assert mallory.status_code == 200, mallory.text
    assert mallory.headers["x-gateway-budget-name"] == "per-user"
    assert gw.user_of(mallory) == "u-mallory-2"


# -- the admin API: admin tokens only, over mutual TLS --------------------------------------------


def admin_json(gw: Gateway, token: str, context: ssl.SSLContext) -> httpx.Response:
    url = f"https://127.0.0.1:{gw.json_port}/gateway.admin.v1.AdminService/ListBudgets"
    with httpx.Client(verify=context, timeout=30) as client:
        return client.post(url, json={}, headers={"authorization": f"Bearer {token}"})


def test_admin_json_over_mutual_tls_takes_admin_tokens_only(gw: Gateway) -> None:
    admin = gw.token("u-ann", True, "gateway-admins", aud="llm-gateway-admin")
    ok = admin_json(gw, admin, gw.pki.context())
    assert ok.status_code == 200, ok.text
    assert [b["budget"] for b in ok.json()["budgets"]][:1] == ["per-user"]
    spender = gw.token("u-ann", True, "gateway-admins")  # the data plane's audience
    refused = admin_json(gw, spender, gw.pki.context())
    assert refused.status_code == 401 and "audience" in refused.json()["message"]
    with pytest.raises(httpx.TransportError):  # no client certificate: no TLS session
        admin_json(gw, admin, gw.pki.context(client=False))
    plain = f"http://127.0.0.1:{gw.json_port}/gateway.admin.v1.AdminService/ListBudgets"
    with pytest.raises(httpx.TransportError):
        httpx.post(plain, json={}, headers={"authorization": f"Bearer {admin}"}, timeout=10)


def test_admin_grpc_over_mutual_tls(gw: Gateway) -> None:
    admin = gw.token("u-ann", True, "gateway-admins", aud="llm-gateway-admin")
    address = gw.stack.admin_api_address
    with grpc.insecure_channel(address) as channel:  # plaintext: refused at the handshake
        stub = channel.unary_unary(
            "/gateway.admin.v1.AdminService/ListBudgets",
            request_serializer=pb.ListBudgetsRequest.SerializeToString,
            response_deserializer=pb.ListBudgetsResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as info:
            stub(pb.ListBudgetsRequest(), metadata=(("authorization", f"Bearer {admin}"),))
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    pki = gw.pki
    tls = ["--tls-ca", str(pki.ca_file), "--tls-cert", str(pki.client[0])]
    tls += ["--tls-key", str(pki.client[1])]
    flags = ["--admin-address", address, "--token", admin, "--format", "json", *tls]
    done = subprocess.run(
        [sys.executable, "-m", "gateway_extproc.cli", "budgets", *flags],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "per-user" in done.stdout
