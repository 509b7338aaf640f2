"""SigV4 for Bedrock: credentials from the standard AWS chain, requests signed by botocore.

The signature covers the method, the final path, the `host` and the body, so a request is
signed last, after every rewrite (model, output cap, redaction, translation), over exactly the
bytes and host Envoy sends: the caller sets `:authority` to `host_header` and Envoy forwards the
body it is given. Only `host`, `content-type`, `x-amz-date` and (session credentials)
`x-amz-security-token` are signed: headers Envoy adds later (`x-forwarded-proto`,
`x-request-id`, `x-envoy-*`) are outside the signed set, and SigV4 allows unsigned headers.

Credentials: botocore's chain (environment variables, the shared credentials and config files
and `AWS_PROFILE`, web identity = IRSA on EKS, SSO, `credential_process`, the ECS/EKS Pod
Identity container endpoint when its variables are set), without the EC2 instance metadata
service unless the provider sets `instance_metadata: true` (a probe of 169.254.169.254 on every
start of a sidecar that has no credentials is not wanted). Temporary credentials are
`RefreshableCredentials`: `fresh()` refreshes them off the event loop when botocore says a
refresh is due (its advisory window, 15 minutes before expiry), and signing takes
`get_frozen_credentials()`, which refreshes itself when past the mandatory window: a request is
never signed with expired session credentials.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import botocore.session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, create_credential_resolver

__all__ = ["MOCK_ACCESS_KEY", "BedrockSigner", "chain_credentials", "host_header"]

SERVICE = "bedrock"
# What the built-in mock provider verifies signatures with (make run without AWS credentials).
# Not a secret: the mock spells the same pair (mock/bedrock_api.py).
MOCK_ACCESS_KEY = "AKIDGATEWAYMOCK00000"
MOCK_SECRET_KEY = "gateway-mock-bedrock-secret-key"
SIGNED_CONTENT_TYPE = "application/json"


def chain_credentials(*, instance_metadata: bool = False) -> Any | None:
    """The credentials botocore's default chain finds (None: none). May read files and, for
    web identity or SSO, call STS; never the instance metadata service unless allowed."""
    session = botocore.session.Session()
    resolver = create_credential_resolver(session)
    if not instance_metadata:
        resolver.remove("iam-role")
    return resolver.load_credentials()


def mock_credentials() -> Any:
    return Credentials(MOCK_ACCESS_KEY, MOCK_SECRET_KEY)


def host_header(host: str, port: int, *, tls: bool) -> str:
    """The `host` the request is signed for and sent with (the port only when not default)."""
    return host if port == (443 if tls else 80) else f"{host}:{port}"


class BedrockSigner:
    """Signs one provider's requests. `credentials`: botocore credentials (refreshable or not)."""

    __slots__ = ("credentials", "region")

    def __init__(self, credentials: Any, region: str) -> None:
        self.credentials = credentials
        self.region = region
        # botocore logs canonical requests (security token included) at debug level.
        logging.getLogger("botocore").setLevel(logging.WARNING)

    async def fresh(self) -> None:
        """Refresh temporary credentials off the event loop when a refresh is due."""
        needed = getattr(self.credentials, "refresh_needed", None)
        if needed is not None and needed():
            await asyncio.to_thread(self.credentials.get_frozen_credentials)

    def sign(self, *, host: str, path: str, body: bytes, scheme: str = "https") -> dict[str, str]:
        """The headers that authenticate `POST {path}` with `body` to `host` (lower-case names):
        `authorization`, `x-amz-date`, `content-type` and, for session credentials,
        `x-amz-security-token`."""
        frozen = self.credentials.get_frozen_credentials()
        request = AWSRequest(
            method="POST",
            url=f"{scheme}://{host}{path}",
            data=body,
            headers={"host": host, "content-type": SIGNED_CONTENT_TYPE},
        )
        SigV4Auth(frozen, SERVICE, self.region).add_auth(request)
        out = {name.lower(): str(value) for name, value in request.headers.items()}
        out.pop("host", None)  # sent as :authority by the caller
        return out
