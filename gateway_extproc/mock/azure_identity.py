"""A managed-identity token endpoint, as Azure App Service (and Functions) serve one: what
azure-identity's `ManagedIdentityCredential` calls when `IDENTITY_ENDPOINT` and `IDENTITY_HEADER`
are set (azure/identity/_credentials/app_service.py):

    GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=https://cognitiveservices.azure.com
    X-IDENTITY-HEADER: {IDENTITY_HEADER}

answered with `{"access_token", "expires_on" (epoch seconds, a string), "resource",
"token_type": "Bearer", "client_id"}`. The token issued is the mock's `--azure-token`, the one its
Azure routes then require as `Authorization: Bearer`. The endpoint exists only when the mock is
started with `--identity-header SECRET`; a request without that secret is refused (401), as the
real endpoint refuses a caller outside the app. `GET /_mock/identity` lists what it was asked
(the header's presence, never its value).
"""

from __future__ import annotations

import collections
import time
from typing import Any

from aiohttp import web

PATH = "/msi/token"
API_VERSION = "2019-08-01"
LIFETIME_S = 3600  # Entra ID's tokens live 60-90 minutes
CLIENT_ID = "00000000-0000-0000-0000-00000000a2e0"  # the mock identity's (fake) client id
MAX_RECORDED = 100

ASKED = web.AppKey("mock_identity_asked", collections.deque[dict[str, Any]])


def _json(status: int, doc: dict[str, Any]) -> web.Response:
    return web.json_response(doc, status=status)


def install(app: web.Application, token: str | None, secret: str | None) -> None:
    """Serve the token endpoint on `app` when both the token to issue and the secret are set.
    Call before any catch-all route is added."""
    app[ASKED] = collections.deque(maxlen=MAX_RECORDED)

    async def asked(request: web.Request) -> web.Response:
        records = request.app[ASKED]
        return web.json_response(list(records))

    app.router.add_get("/_mock/identity", asked)
    if token is None or secret is None:
        return

    async def issue(request: web.Request) -> web.Response:
        presented = request.headers.get("x-identity-header")
        query = dict(request.query)
        request.app[ASKED].append({"query": query, "identity_header": presented is not None})
        if presented != secret:
            return _json(401, {"error": "unauthorized", "error_description": "bad identity header"})
        if query.get("api-version") != API_VERSION or not query.get("resource"):
            return _json(400, {"error": "invalid_request", "error_description": "bad query"})
        return _json(
            200,
            {
                "access_token": token,
                "expires_on": str(int(time.time()) + LIFETIME_S),
                "resource": query["resource"],
                "token_type": "Bearer",
                "client_id": CLIENT_ID,
            },
        )

    app.router.add_get(PATH, issue)
