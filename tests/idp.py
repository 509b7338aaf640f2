"""Identity providers for tests: signing keys, token minting, a JWKS endpoint on a loopback port
that a test can rotate, take down and bring back, and a whole OpenID Connect provider
(`OidcProvider`: discovery, authorization code + PKCE, device authorization, refresh, revocation)
for the sign-ins people use."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import json
import secrets
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER = "https://idp.test/realms/corp"
AUDIENCE = "llm-gateway"


class SigningKey:
    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(
            jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key())
        )
        return {**doc, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def token(self, claims: dict[str, Any], ttl: int = 600, **header: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "nbf": now, "exp": now + ttl, **claims}
        return jwt.encode(
            body, self.private, algorithm="RS256", headers={"kid": self.kid, **header}
        )


class JwksServer:
    """Serves {"keys": [...]} for the current keys; `down = True` answers 503."""

    def __init__(self, *keys: SigningKey) -> None:
        self.keys = list(keys)
        self.down = False
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                if outer.down:
                    self.send_response(503)
                    self.end_headers()
                    return
                body = json.dumps({"keys": [k.jwk() for k in outer.keys]}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


# --- A whole OpenID Connect provider: what a company's IdP offers people signing in ----------
#
# `OidcProvider` serves, on a loopback port, the endpoints the gateway's sign-ins use:
#   GET  /.well-known/openid-configuration   discovery (issuer = the provider's base URL)
#   GET  /jwks.json                          its signing keys
#   GET  /authorize, POST /authorize         authorization code + PKCE (S256 only): an HTML form
#                                            with username and password, or "deny"
#   POST /device_authorization               RFC 8628: device_code, user_code, verification URIs
#   GET  /device, POST /device               the verification page: user code + credentials
#   POST /token                              authorization_code, device_code, refresh_token grants
#   POST /revoke                             RFC 7009 (refresh tokens)
# Access tokens are RS256 JWTs for `audience` (the gateway's data-plane audience by default) with
# the user's `email` (verified) and `groups`; id tokens are for the client. Test switches: `deny`,
# `expire` and `approve` a pending device code, `slow_down_polls` (answer slow_down to that many
# polls whatever their pace), `access_ttl`, `refresh_ttl`. Every token-endpoint call is recorded
# (`calls`) with its grant and time, so a test can check a client's polling pace and refreshes.

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@dataclasses.dataclass
class IdpUser:
    email: str
    password: str
    groups: tuple[str, ...] = ()
    sub: str = ""


@dataclasses.dataclass
class IdpClient:
    client_id: str
    redirect_uris: tuple[str, ...] = ()
    secret: str | None = None  # None: a public client (PKCE, or the device grant)


@dataclasses.dataclass
class DeviceCode:
    device_code: str
    user_code: str
    client_id: str
    scope: str
    expires_at: float
    interval: int
    state: str = "pending"  # pending | approved | denied
    user: IdpUser | None = None
    last_poll: float | None = None


@dataclasses.dataclass
class TokenCall:
    at: float
    grant_type: str
    client_id: str | None
    outcome: str  # "ok" or the OAuth error code


class OidcProvider:
    def __init__(
        self,
        users: Sequence[IdpUser],
        clients: Sequence[IdpClient],
        *,
        audience: str = AUDIENCE,
        access_ttl: int = 600,
        refresh_ttl: int = 3600,
        device_interval: int = 1,
        device_ttl: int = 600,
    ) -> None:
        self.key = SigningKey("oidc-1")
        self.users = {u.email: dataclasses.replace(u, sub=u.sub or f"sub-{u.email}") for u in users}
        self.clients = {c.client_id: c for c in clients}
        self.audience = audience
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self.device_interval = device_interval
        self.device_ttl = device_ttl
        self.slow_down_polls = 0
        self.calls: list[TokenCall] = []
        self.devices: dict[str, DeviceCode] = {}
        self._codes: dict[str, dict[str, Any]] = {}
        self._refresh: dict[
            str, tuple[IdpUser, str, str, float]
        ] = {}  # -> user, client, scope, exp
        self.revoked: list[str] = []
        self._lock = threading.Lock()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider._get(self)

            def do_POST(self) -> None:
                provider._post(self)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    # -- addresses -------------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/jwks.json"

    def discovery(self) -> dict[str, Any]:
        base = self.issuer
        return {
            "issuer": base,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token",
            "device_authorization_endpoint": f"{base}/device_authorization",
            "revocation_endpoint": f"{base}/revoke",
            "jwks_uri": self.jwks_url,
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token", DEVICE_GRANT],
            "code_challenge_methods_supported": ["S256"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": [
                "none",
                "client_secret_basic",
                "client_secret_post",
            ],
        }

    # -- test switches ---------------------------------------------------------------------

    def pending(self) -> DeviceCode:
        """The one device code waiting for its user (fails the test if not exactly one)."""
        with self._lock:
            waiting = [d for d in self.devices.values() if d.state == "pending"]
        assert len(waiting) == 1, f"{len(waiting)} pending device codes"
        return waiting[0]

    def approve(self, user_code: str, email: str) -> None:
        with self._lock:
            device = self._by_user_code(user_code)
            device.state, device.user = "approved", self.users[email]

    def deny(self, user_code: str) -> None:
        with self._lock:
            self._by_user_code(user_code).state = "denied"

    def expire(self, user_code: str) -> None:
        with self._lock:
            self._by_user_code(user_code).expires_at = time.time() - 1

    def grants(self, grant_type: str) -> list[TokenCall]:
        with self._lock:
            return [c for c in self.calls if c.grant_type == grant_type]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    # -- tokens ----------------------------------------------------------------------------

    def access_token(self, user: IdpUser, client_id: str, scope: str = "openid") -> str:
        claims = {
            "sub": user.sub,
            "email": user.email,
            "email_verified": True,
            "groups": list(user.groups),
            "client_id": client_id,
            "scope": scope,
            "iss": self.issuer,
            "aud": self.audience,
        }
        return self.key.token(claims, ttl=self.access_ttl)

    def id_token(self, user: IdpUser, client_id: str, nonce: str | None) -> str:
        claims: dict[str, Any] = {
            "sub": user.sub,
            "email": user.email,
            "email_verified": True,
            "groups": list(user.groups),
            "iss": self.issuer,
            "aud": client_id,
        }
        if nonce:
            claims["nonce"] = nonce
        return self.key.token(claims, ttl=self.access_ttl)

    def _issue(
        self, user: IdpUser, client_id: str, scope: str, nonce: str | None = None
    ) -> dict[str, Any]:
        refresh = secrets.token_urlsafe(24)
        self._refresh[refresh] = (user, client_id, scope, time.time() + self.refresh_ttl)
        doc: dict[str, Any] = {
            "access_token": self.access_token(user, client_id, scope),
            "token_type": "Bearer",
            "expires_in": self.access_ttl,
            "refresh_token": refresh,
            "scope": scope,
        }
        if "openid" in scope.split():
            doc["id_token"] = self.id_token(user, client_id, nonce)
        return doc

    # -- HTTP ------------------------------------------------------------------------------

    def _by_user_code(self, user_code: str) -> DeviceCode:
        wanted = user_code.replace("-", "").upper()
        for device in self.devices.values():
            if device.user_code.replace("-", "") == wanted:
                return device
        raise KeyError(user_code)

    @staticmethod
    def _send(
        h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str, **headers: str
    ) -> None:
        h.send_response(status)
        h.send_header("content-type", ctype)
        h.send_header("content-length", str(len(body)))
        h.send_header("cache-control", "no-store")
        for name, value in headers.items():
            h.send_header(name.replace("_", "-"), value)
        h.end_headers()
        h.wfile.write(body)

    def _json(self, h: BaseHTTPRequestHandler, status: int, doc: dict[str, Any]) -> None:
        self._send(h, status, json.dumps(doc).encode(), "application/json")

    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str, text: str = "") -> None:
        self._json(h, status, {"error": code, "error_description": text or code})

    def _form(self, h: BaseHTTPRequestHandler) -> dict[str, str]:
        length = int(h.headers.get("content-length") or 0)
        raw = h.rfile.read(length).decode() if length else ""
        return {k: v[-1] for k, v in urllib.parse.parse_qs(raw, keep_blank_values=True).items()}

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(h.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        if url.path == "/.well-known/openid-configuration":
            self._json(h, 200, self.discovery())
        elif url.path == "/jwks.json":
            self._json(h, 200, {"keys": [self.key.jwk()]})
        elif url.path == "/authorize":
            problem = self._check_authorize(query)
            if problem:
                self._send(h, 400, html.escape(problem).encode(), "text/plain")
                return
            self._send(h, 200, _page("Sign in to Corp IdP", query, "/authorize"), "text/html")
        elif url.path == "/device":
            self._send(h, 200, _page("Connect a device", query, "/device", code=True), "text/html")
        else:
            self._send(h, 404, b"not found", "text/plain")

    def _post(self, h: BaseHTTPRequestHandler) -> None:
        path = urllib.parse.urlsplit(h.path).path
        form = self._form(h)
        with self._lock:
            if path == "/authorize":
                self._authorize(h, form)
            elif path == "/device_authorization":
                self._device_authorization(h, form)
            elif path == "/device":
                self._verify_device(h, form)
            elif path == "/token":
                self._token(h, form)
            elif path == "/revoke":
                self.revoked.append(form.get("token", ""))
                self._refresh.pop(form.get("token", ""), None)
                self._send(h, 200, b"", "text/plain")
            else:
                self._send(h, 404, b"not found", "text/plain")

    def _check_authorize(self, q: Mapping[str, str]) -> str | None:
        client = self.clients.get(q.get("client_id", ""))
        if client is None:
            return "unknown client_id"
        if q.get("redirect_uri") not in client.redirect_uris:
            return "redirect_uri is not registered for this client"
        if q.get("response_type") != "code":
            return "response_type must be code"
        if q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return "PKCE (S256) is required"
        return None

    def _authorize(self, h: BaseHTTPRequestHandler, form: Mapping[str, str]) -> None:
        problem = self._check_authorize(form)
        if problem:
            self._send(h, 400, html.escape(problem).encode(), "text/plain")
            return
        back: dict[str, str] = {"state": form.get("state", "")}
        if form.get("action") == "deny":
            back["error"] = "access_denied"
        else:
            user = self.users.get(form.get("username", ""))
            if user is None or not secrets.compare_digest(user.password, form.get("password", "")):
                self._send(h, 401, b"wrong username or password", "text/plain")
                return
            code = secrets.token_urlsafe(18)
            self._codes[code] = {
                "user": user,
                "client_id": form["client_id"],
                "redirect_uri": form["redirect_uri"],
                "challenge": form["code_challenge"],
                "nonce": form.get("nonce"),
                "scope": form.get("scope", "openid"),
                "expires_at": time.time() + 60,
            }
            back["code"] = code
        location = form["redirect_uri"] + ("&" if "?" in form["redirect_uri"] else "?")
        self._send(h, 302, b"", "text/plain", location=location + urllib.parse.urlencode(back))

    def _device_authorization(self, h: BaseHTTPRequestHandler, form: Mapping[str, str]) -> None:
        client_id = form.get("client_id", "")
        if client_id not in self.clients:
            self._error(h, 401, "invalid_client")
            return
        letters = "BCDFGHJKLMNPQRSTVWXZ"
        user_code = "".join(secrets.choice(letters) for _ in range(8))
        user_code = f"{user_code[:4]}-{user_code[4:]}"
        device = DeviceCode(
            device_code=secrets.token_urlsafe(24),
            user_code=user_code,
            client_id=client_id,
            scope=form.get("scope", "openid"),
            expires_at=time.time() + self.device_ttl,
            interval=self.device_interval,
        )
        self.devices[device.device_code] = device
        self._json(
            h,
            200,
            {
                "device_code": device.device_code,
                "user_code": user_code,
                "verification_uri": f"{self.issuer}/device",
                "verification_uri_complete": f"{self.issuer}/device?user_code={user_code}",
                "expires_in": self.device_ttl,
                "interval": self.device_interval,
            },
        )

    def _verify_device(self, h: BaseHTTPRequestHandler, form: Mapping[str, str]) -> None:
        try:
            device = self._by_user_code(form.get("user_code", ""))
        except KeyError:
            self._send(h, 400, b"unknown code", "text/plain")
            return
        if form.get("action") == "deny":
            device.state = "denied"
        else:
            user = self.users.get(form.get("username", ""))
            if user is None or not secrets.compare_digest(user.password, form.get("password", "")):
                self._send(h, 401, b"wrong username or password", "text/plain")
                return
            device.state, device.user = "approved", user
        self._send(h, 200, f"<p>Device {device.state}.</p>".encode(), "text/html")

    def _client(self, h: BaseHTTPRequestHandler, form: Mapping[str, str]) -> IdpClient | None:
        client_id, secret = form.get("client_id"), form.get("client_secret")
        basic = h.headers.get("authorization", "")
        if basic.lower().startswith("basic "):
            raw = base64.b64decode(basic[6:]).decode()
            client_id, _, secret = raw.partition(":")
            client_id, secret = urllib.parse.unquote(client_id), urllib.parse.unquote(secret)
        client = self.clients.get(client_id or "")
        if client is None:
            return None
        if client.secret is not None and not secrets.compare_digest(client.secret, secret or ""):
            return None
        return client

    def _token(self, h: BaseHTTPRequestHandler, form: Mapping[str, str]) -> None:
        grant = form.get("grant_type", "")
        client = self._client(h, form)
        outcome = "ok"
        try:
            if client is None:
                outcome = "invalid_client"
                self._error(h, 401, outcome)
                return
            if grant == "authorization_code":
                outcome = self._code_grant(h, client, form)
            elif grant == DEVICE_GRANT:
                outcome = self._device_grant(h, client, form)
            elif grant == "refresh_token":
                outcome = self._refresh_grant(h, client, form)
            else:
                outcome = "unsupported_grant_type"
                self._error(h, 400, outcome)
        finally:
            self.calls.append(TokenCall(time.time(), grant, client and client.client_id, outcome))

    def _code_grant(
        self, h: BaseHTTPRequestHandler, client: IdpClient, form: Mapping[str, str]
    ) -> str:
        code = self._codes.pop(form.get("code", ""), None)  # one use only
        verifier = form.get("code_verifier", "")
        if (
            code is None
            or code["expires_at"] < time.time()
            or code["client_id"] != client.client_id
            or code["redirect_uri"] != form.get("redirect_uri")
        ):
            self._error(h, 400, "invalid_grant", "unknown, used or expired code")
            return "invalid_grant"
        digest = hashlib.sha256(verifier.encode()).digest()
        if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != code["challenge"]:
            self._error(h, 400, "invalid_grant", "PKCE verification failed")
            return "invalid_grant"
        self._json(
            h, 200, self._issue(code["user"], client.client_id, code["scope"], code["nonce"])
        )
        return "ok"

    def _device_grant(
        self, h: BaseHTTPRequestHandler, client: IdpClient, form: Mapping[str, str]
    ) -> str:
        device = self.devices.get(form.get("device_code", ""))
        if device is None or device.client_id != client.client_id:
            self._error(h, 400, "invalid_grant")
            return "invalid_grant"
        now = time.time()
        too_fast = device.last_poll is not None and now - device.last_poll < device.interval
        device.last_poll = now
        if device.expires_at < now:
            outcome = "expired_token"
        elif device.state == "denied":
            outcome = "access_denied"
        elif self.slow_down_polls > 0 or too_fast:
            self.slow_down_polls = max(0, self.slow_down_polls - 1)
            device.interval += 5  # RFC 8628 3.5: the client must add 5 s to its interval too
            outcome = "slow_down"
        elif device.state == "pending":
            outcome = "authorization_pending"
        else:
            assert device.user is not None
            del self.devices[device.device_code]
            self._json(h, 200, self._issue(device.user, client.client_id, device.scope))
            return "ok"
        self._error(h, 400, outcome)
        return outcome

    def _refresh_grant(
        self, h: BaseHTTPRequestHandler, client: IdpClient, form: Mapping[str, str]
    ) -> str:
        held = self._refresh.pop(form.get("refresh_token", ""), None)  # rotated: one use only
        if held is None or held[1] != client.client_id or held[3] < time.time():
            self._error(h, 400, "invalid_grant", "unknown, used, revoked or expired refresh token")
            return "invalid_grant"
        user, _, scope, _ = held
        self._json(h, 200, self._issue(user, client.client_id, scope))
        return "ok"


def _page(title: str, query: Mapping[str, str], action: str, code: bool = False) -> bytes:
    """The IdP's sign-in form: the authorization request's parameters ride along hidden."""
    hidden = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in query.items()
        if k != "user_code"
    )
    code_field = (
        f'<label>Code <input name="user_code" value="{html.escape(query.get("user_code", ""))}">'
        "</label>"
        if code
        else ""
    )
    return (
        f"<!doctype html><title>{title}</title><h1>{title}</h1>"
        f'<form method="post" action="{action}">{hidden}{code_field}'
        '<label>Username <input name="username" autocomplete="username"></label>'
        '<label>Password <input name="password" type="password"></label>'
        '<button name="action" value="allow">Sign in</button>'
        '<button name="action" value="deny">Deny</button></form>'
    ).encode()
