"""The local development IdP for `make run`: the rules of identity/dev_oidc.py over HTTP.

`gatewayctl run` starts it as its own process when `identity.dev_issuer` is on:

    python -m gateway_extproc.devidp --dir .run/dev-issuer --port 10094 --port-file F

It listens on 127.0.0.1 only (there is no option for another address) and serves:
  GET  /.well-known/openid-configuration   discovery (issuer = the dev issuer's `iss`)
  GET  /jwks.json                          the dev issuer's public key
  GET  /authorize, POST /authorize         authorization code + PKCE: the dev sign-in form
  POST /device_authorization               RFC 8628
  GET  /device, POST /device               the device verification page
  POST /token                              authorization_code, device_code, refresh_token
  POST /revoke                             RFC 7009
It refuses to start without GATEWAY_ALLOW_DEV_ISSUER=1. It logs each request's method, path
(never its query or body: codes and tokens travel there) and status.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import html
import json
import logging
import os
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

from gateway_extproc.identity.dev_oidc import DevProvider
from gateway_extproc.identity.dev_oidc_requests import (
    AuthorizeError,
    OAuthError,
    dev_gate,
    parse_authorization_request,
    parse_user,
    redirect_to,
)
from gateway_extproc.identity.devissuer import DevIssuerError, ensure_dev_issuer

log = logging.getLogger("gateway.devidp")
MAX_FORM_BYTES = 64 * 1024

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:28rem;margin:2rem auto;padding:0 1rem}"
    ".dev{background:#fff3cd;border:1px solid #d4a106;padding:.6rem;border-radius:4px}"
    "label{display:block;margin:.8rem 0}input{display:block;width:100%;padding:.4rem;"
    "box-sizing:border-box}button{margin:.8rem .5rem 0 0;padding:.5rem 1rem}"
)
_WARNING = (
    '<p class="dev"><strong>Local development only.</strong> No password: whoever reaches '
    "this port signs in as anyone. <code>gatewayctl run</code> serves it when "
    "<code>identity.dev_issuer</code> is on; a deployment uses the company's IdP.</p>"
)


def _page(title: str, body: str) -> bytes:
    return (
        f'<!doctype html><html lang="en"><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style>"
        f"<h1>{html.escape(title)}</h1>{_WARNING}{body}</html>"
    ).encode()


def _sign_in_form(
    action: str, hidden: Mapping[str, str], error: str = "", code: str | None = None
) -> bytes:
    fields = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in hidden.items()
    )
    if code is not None:
        fields += (
            '<label>Code shown by the device <input name="user_code" '
            f'value="{html.escape(code)}" autocomplete="off" required></label>'
        )
    problem = f'<p role="alert">{html.escape(error)}</p>' if error else ""
    title = "Connect a device" if code is not None else "Local development sign-in"
    return _page(
        title,
        f'{problem}<form method="post" action="{action}">{fields}'
        '<label>Email <input name="email" type="email" autocomplete="email" required '
        'placeholder="alice@example.com"></label>'
        '<label>Groups (comma separated) <input name="groups" placeholder="eng, gateway-admins">'
        '</label><button name="action" value="allow">Sign in</button>'
        '<button name="action" value="deny" formnovalidate>Deny</button></form>',
    )


class DevIdpServer:
    """A threaded HTTP server over one DevProvider, its calls serialised by a lock."""

    def __init__(self, issuer_dir: Path, port: int, **provider_options: int) -> None:
        issuer = ensure_dev_issuer(issuer_dir)
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.handle(self, "GET")

            def do_POST(self) -> None:
                server.handle(self, "POST")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # handle() logs without the query

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.provider = DevProvider(issuer, self.url, **provider_options)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- HTTP ------------------------------------------------------------------------------

    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urllib.parse.urlsplit(h.path)
        try:
            if method == "GET":
                self._get(h, url.path, dict(urllib.parse.parse_qsl(url.query)))
            else:
                self._post(h, url.path, self._form(h))
        except OAuthError as exc:
            self._send(h, exc.status, json.dumps(exc.body()).encode(), "application/json")

    @staticmethod
    def _send(
        h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str, location: str = ""
    ) -> None:
        # Logged before the answer leaves (a client that got it finds the line), without the
        # query or body: codes, verifiers and tokens travel there.
        log.info("%s %s %d", h.command, urllib.parse.urlsplit(h.path).path, status)
        h.send_response(status)
        h.send_header("content-type", ctype)
        h.send_header("content-length", str(len(body)))
        h.send_header("cache-control", "no-store")
        h.send_header("x-frame-options", "DENY")
        if location:
            h.send_header("location", location)
        h.end_headers()
        h.wfile.write(body)

    def _json(self, h: BaseHTTPRequestHandler, doc: Mapping[str, Any]) -> int:
        self._send(h, 200, json.dumps(doc).encode(), "application/json")
        return 200

    def _html(self, h: BaseHTTPRequestHandler, status: int, body: bytes) -> int:
        self._send(h, status, body, "text/html; charset=utf-8")
        return status

    @staticmethod
    def _form(h: BaseHTTPRequestHandler) -> dict[str, str]:
        length = int(h.headers.get("content-length") or 0)
        if length > MAX_FORM_BYTES:
            raise OAuthError("invalid_request", "request body too large", 413)
        raw = h.rfile.read(length).decode("utf-8", "replace") if length else ""
        return dict(urllib.parse.parse_qsl(raw, keep_blank_values=True))

    def _get(self, h: BaseHTTPRequestHandler, path: str, query: dict[str, str]) -> int:
        if path == "/.well-known/openid-configuration":
            return self._json(h, self.provider.discovery())
        if path == "/jwks.json":
            return self._json(h, self.provider.issuer.jwks())
        if path == "/authorize":
            return self._authorize_page(h, query)
        if path == "/device":
            return self._html(h, 200, _sign_in_form("/device", {}, code=query.get("user_code", "")))
        return self._html(h, 404, _page("Not found", ""))

    def _post(self, h: BaseHTTPRequestHandler, path: str, form: dict[str, str]) -> int:
        now = time.time()
        if path == "/authorize":
            return self._authorize(h, form, now)
        if path == "/device":
            return self._verify_device(h, form, now)
        with self.lock:
            if path == "/device_authorization":
                client_id = self._client_id(h, form)
                return self._json(
                    h, self.provider.start_device(client_id, form.get("scope", ""), now)
                )
            if path == "/token":
                return self._json(h, self.provider.token(form, self._client_id(h, form), now))
            if path == "/revoke":
                self.provider.revoke(form.get("token", ""))
                return self._json(h, {})
        return self._html(h, 404, _page("Not found", ""))

    @staticmethod
    def _client_id(h: BaseHTTPRequestHandler, form: Mapping[str, str]) -> str:
        """The client, from HTTP basic auth or the form. Every client is public here: a secret
        is accepted and ignored (dev only)."""
        basic = h.headers.get("authorization", "")
        if basic[:6].lower() == "basic ":
            try:
                raw = base64.b64decode(basic[6:], validate=True).decode()
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise OAuthError("invalid_client", "malformed basic credentials", 401) from exc
            return urllib.parse.unquote(raw.partition(":")[0])
        return form.get("client_id", "")

    def _authorize_page(self, h: BaseHTTPRequestHandler, query: Mapping[str, str]) -> int:
        try:
            request = parse_authorization_request(query)
        except AuthorizeError as exc:
            return self._refuse(h, query, exc)
        return self._html(h, 200, _sign_in_form("/authorize", request.fields()))

    def _refuse(
        self, h: BaseHTTPRequestHandler, params: Mapping[str, str], exc: AuthorizeError
    ) -> int:
        if not exc.redirect:
            return self._html(
                h, 400, _page("Sign-in refused", f"<p>{html.escape(exc.description)}</p>")
            )
        back = {**exc.body(), "state": params.get("state", "")}
        self._send(h, 302, b"", "text/plain", location=redirect_to(params["redirect_uri"], back))
        return 302

    def _authorize(self, h: BaseHTTPRequestHandler, form: Mapping[str, str], now: float) -> int:
        try:
            request = parse_authorization_request(form)
        except AuthorizeError as exc:
            return self._refuse(h, form, exc)
        if form.get("action") == "deny":
            back = {"error": "access_denied", "state": request.state}
        else:
            try:
                user = parse_user(form.get("email", ""), form.get("groups", ""))
            except ValueError as exc:
                return self._html(h, 400, _sign_in_form("/authorize", request.fields(), str(exc)))
            with self.lock:
                back = {"code": self.provider.authorize(request, user, now), "state": request.state}
        self._send(h, 302, b"", "text/plain", location=redirect_to(request.redirect_uri, back))
        return 302

    def _verify_device(self, h: BaseHTTPRequestHandler, form: Mapping[str, str], now: float) -> int:
        code = form.get("user_code", "")
        user = None
        if form.get("action") != "deny":
            try:
                user = parse_user(form.get("email", ""), form.get("groups", ""))
            except ValueError as exc:
                return self._html(h, 400, _sign_in_form("/device", {}, str(exc), code))
        try:
            with self.lock:
                device = self.provider.decide_device(code, user, now)
        except OAuthError as exc:
            return self._html(h, 400, _sign_in_form("/device", {}, exc.description, code))
        said = "approved: return to your terminal" if user else "denied"
        return self._html(h, 200, _page("Device " + device.state, f"<p>Request {said}.</p>"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the local development IdP (make run only)")
    parser.add_argument("--dir", required=True, help="the dev issuer's key directory")
    parser.add_argument("--port", type=int, default=0, help="loopback port (0: any free)")
    parser.add_argument("--port-file", default=None, help="write the bound port here when ready")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="devidp: %(message)s", stream=sys.stderr)
    problem = dev_gate(os.environ)
    if problem is not None:
        print(f"devidp: {problem}", file=sys.stderr)
        return 2
    try:
        server = DevIdpServer(Path(args.dir), args.port)
    except (OSError, DevIssuerError) as exc:
        print(f"devidp: {exc}", file=sys.stderr)
        return 1

    def stop(_signum: int, _frame: FrameType | None) -> None:
        threading.Thread(target=server.httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.port_file:  # atomically: a reader never sees part of the number
        port_file = Path(args.port_file)
        temporary = port_file.with_name(f".{port_file.name}.{os.getpid()}.tmp")
        temporary.write_text(str(server.httpd.server_address[1]), encoding="ascii")
        os.replace(temporary, port_file)
    log.info("serving %s (discovery: %s/.well-known/openid-configuration)", server.url, server.url)
    server.serve_forever()
    server.httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
