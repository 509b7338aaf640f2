"""`gatewayctl login`, `logout`, `token --print` and `env`. Problems go to stderr with what to do
next, exit status 1; `token --print` and `env` write nothing else to stdout."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping

import httpx
from authlib.integrations.base_client.errors import OAuthError

from gateway_extproc.identity import devissuer
from gateway_extproc.login import device
from gateway_extproc.login.credential import (
    DEFAULT_MARGIN_S,
    credential_expiry,
    fresh_credential,
    oauth_client,
)
from gateway_extproc.login.document import (
    HTTP_TIMEOUT_S,
    LoginError,
    fetch_document,
    fetch_idp,
    gateway_url,
)
from gateway_extproc.login.store import CredentialStore, StoredLogin, credentials_path

SHELLS = ("sh", "fish", "powershell")


def _store(environ: Mapping[str, str]) -> CredentialStore:
    return CredentialStore(credentials_path(environ))


def login(
    gateway_arg: str | None,
    environ: Mapping[str, str],
    *,
    out: Callable[[str], None],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    wall: Callable[[], float] = time.time,
) -> StoredLogin:
    """The whole sign-in: the gateway's document, the IdP's discovery, the device grant, the
    tokens stored. Raises LoginError (nothing stored) on any refusal."""
    gateway = gateway_url(gateway_arg, environ)
    with httpx.Client(timeout=HTTP_TIMEOUT_S) as http:
        document = fetch_document(http, gateway)
        settings = document.login
        if settings is None:
            raise LoginError(
                f"{gateway} has no login configured (its config has no login: section)"
            )
        endpoints = fetch_idp(http, settings)
    if endpoints.device_authorization is None:
        raise LoginError(f"the IdP at {settings.issuer} offers no device authorization endpoint")
    client = oauth_client(settings.client_id, settings.client_secret_env, environ)
    try:
        code = device.start(
            client, endpoints.device_authorization, settings.scopes, settings.audience
        )
        out(device.describe(code))
        out("Waiting for approval (Ctrl-C to stop)...")
        token = device.poll(client, endpoints.token, code, clock=clock, sleep=sleep)
    finally:
        client.close()
    blank = StoredLogin(
        gateway=gateway,
        issuer=settings.issuer,
        client_id=settings.client_id,
        token_kind=settings.token,
        access_token="",
        refresh_token=None,
        id_token=None,
        expires_at=None,
        token_endpoint=endpoints.token,
        revocation_endpoint=endpoints.revocation,
        client_secret_env=settings.client_secret_env,
    )
    if settings.token == "id_token" and not token.get("id_token"):
        raise LoginError("the IdP sent no id token (is openid among login.scopes?)")
    entry = StoredLogin(
        **{
            **blank.as_json(),
            "access_token": str(token.get("access_token") or ""),
            "refresh_token": token.get("refresh_token"),
            "id_token": token.get("id_token"),
            "expires_at": credential_expiry(token, settings.token, wall()),
        }
    )
    store = _store(environ)
    with store.locked():
        store.put(entry)
    return entry


def cmd_login(args: argparse.Namespace) -> int:
    def out(line: str) -> None:
        print(line, flush=True)

    try:
        entry = login(args.gateway, os.environ, out=out)
    except LoginError as exc:
        print(f"gatewayctl login: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ngatewayctl login: stopped; nothing was stored", file=sys.stderr)
        return 130
    refresh = "; refreshed by gatewayctl token --print" if entry.refresh_token else ""
    print(
        f"Logged in to {entry.gateway}. Tokens stored in {credentials_path(os.environ)}{refresh}."
    )
    return 0


def cmd_token_print(args: argparse.Namespace) -> int:
    """A credential helper: a fresh token on stdout and nothing else."""
    try:
        gateway = gateway_url(args.gateway, os.environ)
        token = fresh_credential(
            _store(os.environ), gateway, now=time.time, environ=os.environ, margin_s=args.margin
        )
    except LoginError as exc:
        print(f"gatewayctl token: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(token + "\n")
    return 0


def logout(gateway_arg: str | None, environ: Mapping[str, str]) -> tuple[bool, str | None]:
    """Revoke the refresh token at the IdP (when it has a revocation endpoint) and forget the
    gateway's tokens. (whether anything was stored, the revocation's problem or None)"""
    gateway = gateway_url(gateway_arg, environ)
    store = _store(environ)
    with store.locked():
        entry = store.get(gateway)
        if entry is None:
            return False, None
        problem = None
        token = entry.refresh_token or entry.access_token
        if entry.revocation_endpoint and token:
            hint = "refresh_token" if entry.refresh_token else "access_token"
            try:
                client = oauth_client(entry.client_id, entry.client_secret_env, environ)
                with client:
                    answer = client.revoke_token(
                        entry.revocation_endpoint, token=token, token_type_hint=hint
                    )
                if answer.status_code != 200:
                    problem = f"the IdP answered HTTP {answer.status_code} to the revocation"
            except (LoginError, OAuthError, httpx.HTTPError) as exc:
                problem = f"the revocation failed: {exc}"
        store.remove(gateway)
    return True, problem


def cmd_logout(args: argparse.Namespace) -> int:
    try:
        found, problem = logout(args.gateway, os.environ)
    except LoginError as exc:
        print(f"gatewayctl logout: {exc}", file=sys.stderr)
        return 1
    if not found:
        print("Not logged in: nothing to forget.")
        return 0
    if problem:
        print(
            f"gatewayctl logout: tokens forgotten here, but {problem}: the refresh token may "
            "stay valid at the IdP until it expires",
            file=sys.stderr,
        )
        return 1
    print("Logged out: the refresh token was revoked and the tokens forgotten.")
    return 0


def _quote(shell: str, value: str) -> str:
    if shell == "fish":
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if shell == "powershell":
        return "'" + value.replace("'", "''") + "'"
    return "'" + value.replace("'", "'\\''") + "'"


def env_lines(shell: str, variables: Mapping[str, str], unset: tuple[str, ...]) -> list[str]:
    """Pure: the lines that set `variables` and unset `unset` in `shell`."""
    lines = []
    for name, value in variables.items():
        quoted = _quote(shell, value)
        if shell == "fish":
            lines.append(f"set -gx {name} {quoted};")
        elif shell == "powershell":
            lines.append(f"$env:{name} = {quoted}")
        else:
            lines.append(f"export {name}={quoted}")
    for name in unset:
        if shell == "fish":
            lines.append(f"set -e {name};")
        elif shell == "powershell":
            lines.append(f"Remove-Item Env:{name} -ErrorAction SilentlyContinue")
        else:
            lines.append(f"unset {name}")
    return lines


def sdk_variables(openai_base: str, anthropic_base: str, token: str) -> dict[str, str]:
    """What the OpenAI and Anthropic SDKs (and Claude Code, Codex) read. The OpenAI SDK sends
    OPENAI_API_KEY as `Authorization: Bearer`; the Anthropic SDK sends ANTHROPIC_AUTH_TOKEN as
    `Authorization: Bearer` (ANTHROPIC_API_KEY would be `x-api-key`; the gateway takes either)."""
    return {
        "OPENAI_BASE_URL": openai_base,
        "OPENAI_API_KEY": token,
        "ANTHROPIC_BASE_URL": anthropic_base,
        "ANTHROPIC_AUTH_TOKEN": token,
    }


# A provider key left in the environment would also be sent (x-api-key) to the gateway.
UNSET = ("ANTHROPIC_API_KEY",)


def cmd_env(args: argparse.Namespace) -> int:
    try:
        gateway = gateway_url(args.gateway, os.environ)
        with httpx.Client(timeout=HTTP_TIMEOUT_S) as http:
            document = fetch_document(http, gateway)
        token = fresh_credential(_store(os.environ), gateway, now=time.time, environ=os.environ)
    except LoginError as exc:
        print(f"gatewayctl env: {exc}", file=sys.stderr)
        return 1
    variables = sdk_variables(document.openai_base_url, document.anthropic_base_url, token)
    sys.stdout.write("\n".join(env_lines(args.shell, variables, UNSET)) + "\n")
    return 0


def print_mode(who: argparse._MutuallyExclusiveGroup) -> None:
    """`token --print`, beside `--user` and `--service` in the token command's one-of group."""
    who.add_argument(
        "--print",
        action="store_true",
        dest="print_login",
        help="print a fresh token from gatewayctl login (refreshed when it expires within "
        "--margin seconds): a credential helper for Claude Code's apiKeyHelper and Codex",
    )


def cmd_token(args: argparse.Namespace) -> int:
    """`token --print` (this module), else the development issuer's `token --user/--service`."""
    if getattr(args, "print_login", False):
        return cmd_token_print(args)
    return devissuer.cmd_token(args)


def add_login_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], token: argparse.ArgumentParser
) -> None:
    """`login`, `logout`, `env`, and the `--print` mode's options on the `token` command (made
    with `print_mode`)."""
    gateway_help = "the gateway's URL (default: $GATEWAY_URL, else http://127.0.0.1:10000)"
    p = sub.add_parser(
        "login",
        help="sign in with the gateway's IdP (device code) and store the tokens",
        description="Sign in with the IdP the gateway names at /.well-known/llm-gateway (OAuth "
        "2.0 device authorization grant): open the URL shown, enter the code, approve.",
    )
    p.add_argument("--gateway", default=None, help=gateway_help)
    p.set_defaults(func=cmd_login)
    p = sub.add_parser(
        "logout", help="revoke the stored refresh token at the IdP and forget the tokens"
    )
    p.add_argument("--gateway", default=None, help=gateway_help)
    p.set_defaults(func=cmd_logout)
    p = sub.add_parser(
        "env",
        help="print the OpenAI/Anthropic SDK variables for the gateway, with a fresh token",
        description='Usage: eval "$(gatewayctl env)" (fish: gatewayctl env --shell fish | '
        "source; PowerShell: gatewayctl env --shell powershell | Invoke-Expression)",
    )
    p.add_argument("--gateway", default=None, help=gateway_help)
    p.add_argument("--shell", choices=SHELLS, default="sh")
    p.set_defaults(func=cmd_env)
    token.add_argument("--gateway", default=None, help=f"with --print: {gateway_help}")
    token.add_argument(
        "--margin",
        type=float,
        default=DEFAULT_MARGIN_S,
        help=f"with --print: refresh a token that expires within this many seconds "
        f"(default {DEFAULT_MARGIN_S:g})",
    )
    token.set_defaults(func=cmd_token)
