"""`gatewayctl spend`, `gatewayctl budgets` and `gatewayctl reconcile`: clients of the admin API.

Address: --admin-address, else $GATEWAY_ADMIN_ADDRESS, else 127.0.0.1:10090 (make run's);
plaintext unless a TLS option is given (--tls, --tls-ca, --tls-cert/--tls-key for mutual TLS).
Credential: --token, else $GATEWAY_ADMIN_TOKEN, else - against a local `make run` - a
short-lived token minted by the local development issuer for the group `gateway-admins`
($GATEWAY_ADMIN_GROUP) and the admin audience `llm-gateway-admin` ($GATEWAY_ADMIN_AUDIENCE).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import os
import sys
import time
from typing import Any

import grpc

from gateway_extproc.admin import output, recon_output
from gateway_extproc.admin._generated.gateway.admin.v1 import admin_pb2 as pb
from gateway_extproc.admin.api import AdminClient
from gateway_extproc.admin.budget_api import ts
from gateway_extproc.admin.settings import (
    DEFAULT_ADMIN_AUDIENCE,
    DEFAULT_ADMIN_GROUP,
    DEFAULT_ADMIN_PORT,
)
from gateway_extproc.admin.tls import channel_credentials
from gateway_extproc.budgets.settings import parse_duration
from gateway_extproc.catalog.pricing import usd_to_micros
from gateway_extproc.identity.devissuer import DevIssuerError, default_directory, ensure_dev_issuer

DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_ADMIN_PORT}"
SUBCOMMANDS = ("override", "top-up", "overrides")
OVERRIDE_COLUMNS = ("budget", "scope_value", "limit_usd", "expires_at", "set_by", "reason")


class CliError(Exception):
    pass


def _credential(args: argparse.Namespace) -> str:
    token = args.token or os.environ.get("GATEWAY_ADMIN_TOKEN")
    if token:
        return str(token)
    directory = default_directory(os.environ)
    if not (directory / "dev-issuer.key.pem").exists():
        raise CliError(
            "no admin credential: pass --token or set GATEWAY_ADMIN_TOKEN (a local make run "
            f"needs none: its development issuer in {directory} mints one)"
        )
    try:
        issuer = ensure_dev_issuer(directory)
    except (OSError, DevIssuerError) as exc:
        raise CliError(f"development issuer: {exc}") from exc
    group = os.environ.get("GATEWAY_ADMIN_GROUP", DEFAULT_ADMIN_GROUP)
    audience = os.environ.get("GATEWAY_ADMIN_AUDIENCE", DEFAULT_ADMIN_AUDIENCE)
    user = f"{getpass.getuser()}@localhost"
    return issuer.mint(user, [group], None, 300, {}, time.time(), audience=audience)


def _channel(args: argparse.Namespace, address: str) -> grpc.aio.Channel:
    """Plaintext, or TLS when any TLS option (or $GATEWAY_ADMIN_TLS_*) is given."""
    env = os.environ.get
    ca = args.tls_ca or env("GATEWAY_ADMIN_TLS_CA")
    cert = args.tls_cert or env("GATEWAY_ADMIN_TLS_CERT")
    key = args.tls_key or env("GATEWAY_ADMIN_TLS_KEY")
    name = args.tls_server_name or env("GATEWAY_ADMIN_TLS_SERVER_NAME")
    if not (args.tls or ca or cert or key or name):
        return grpc.aio.insecure_channel(address)
    try:
        credentials = channel_credentials(ca, cert, key)
    except (OSError, ValueError) as exc:
        raise CliError(f"TLS: {exc}") from None
    options = [("grpc.ssl_target_name_override", name)] if name else []
    return grpc.aio.secure_channel(address, credentials, options=options)


async def _call(args: argparse.Namespace, method: str, request: Any, timeout_s: float) -> Any:
    address = args.admin_address or os.environ.get("GATEWAY_ADMIN_ADDRESS") or DEFAULT_ADDRESS
    token = _credential(args)
    async with _channel(args, address) as channel:
        try:
            return await AdminClient(channel, token).call(method, request, timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise CliError(f"{exc.code().name}: {exc.details()} ({address})") from None


def _run(args: argparse.Namespace, method: str, request: Any, timeout_s: float = 30.0) -> Any:
    return asyncio.run(_call(args, method, request, timeout_s))


def _connection_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--admin-address", help=f"host:port (default {DEFAULT_ADDRESS})")
    parser.add_argument("--token", help="admin credential (default: $GATEWAY_ADMIN_TOKEN)")
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table")
    tls = parser.add_argument_group("TLS (admin_api.tls; each also from $GATEWAY_ADMIN_TLS_*)")
    tls.add_argument("--tls", action="store_true", help="TLS with gRPC's default root CAs")
    tls.add_argument("--tls-ca", help="PEM CA bundle to trust ($GATEWAY_ADMIN_TLS_CA)")
    tls.add_argument("--tls-cert", help="client certificate, mutual TLS ($GATEWAY_ADMIN_TLS_CERT)")
    tls.add_argument("--tls-key", help="its private key ($GATEWAY_ADMIN_TLS_KEY)")
    tls.add_argument(
        "--tls-server-name",
        help="the name the server certificate must carry when the address does not "
        "(a port-forward: the Service's DNS name; $GATEWAY_ADMIN_TLS_SERVER_NAME)",
    )


def _where(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE (got {text!r})")
    return key, value


def _instant(text: str) -> Any:
    """A date (YYYY-MM-DD) as itself, or an RFC 3339 instant as a Timestamp."""
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be YYYY-MM-DD or RFC 3339 (got {text!r})") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a time zone offset (got {text!r})")
    return ts(moment.timestamp())


def spend_request(args: argparse.Namespace) -> pb.GetSpendRequest:
    request = pb.GetSpendRequest(group_by=args.by or [])
    for key, value in args.where or []:
        request.filters.append(pb.Filter(dimension=key, value=value))
    if (args.since is None) != (args.until is None):
        raise CliError("give both --since and --until")
    if args.since is not None:
        if isinstance(args.since, str) and isinstance(args.until, str):
            request.dates.since, request.dates.until = args.since, args.until
        elif not isinstance(args.since, str) and not isinstance(args.until, str):
            request.time.since.CopyFrom(args.since)
            request.time.until.CopyFrom(args.until)
        else:
            raise CliError("--since and --until must both be dates or both be instants")
    else:
        request.window.name = args.window
        request.window.timezone = args.timezone or ""
    return request


def cmd_spend(args: argparse.Namespace) -> int:
    response = _run(args, "GetSpend", spend_request(args))
    print(output.render_spend(response, args.format))
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    providers = args.provider or []
    if args.show:
        request = pb.GetReconciliationRequest(providers=providers)
        if args.since or args.until:
            if not (args.since and args.until):
                raise CliError("give both --since and --until")
            request.dates.since, request.dates.until = args.since, args.until
        elif args.day:
            request.day = args.day
        found = _run(args, "GetReconciliation", request)
        days, missing = list(found.days), list(found.missing)
    else:
        if args.since or args.until:
            raise CliError("--since/--until read stored results: add --show")
        run = pb.RunReconciliationRequest(providers=providers, day=args.day or "")
        run.reason = args.reason
        # pulling both reports, paginated and retried with backoff, may take minutes
        days, missing = list(_run(args, "RunReconciliation", run, 300.0).days), []
    print(recon_output.render_reconciliation(days, missing, args.format))
    return 0


def _expiry(text: str) -> float:
    """A duration from now (2h, 7d) or an RFC 3339 instant."""
    try:
        return float(round(time.time()) + parse_duration(text))
    except ValueError:
        pass
    try:
        value = _instant(text)
    except argparse.ArgumentTypeError:
        value = text
    if isinstance(value, str):
        raise CliError(f"--expires: a duration like 2h or 7d, or an instant (got {text!r})")
    return float(value.seconds)


def _budgets_parser(sub: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"gatewayctl budgets {sub or ''}".strip())
    _connection_args(p)
    if sub is None:
        p.add_argument("name", nargs="?", help="one budget (default: all)")
        p.add_argument("--scope-value", default="", help="one scope value (default: all)")
    elif sub in ("override", "top-up"):
        p.add_argument("name")
        p.add_argument("scope_value")
        p.add_argument("--reason", required=True, help="why (recorded in the audit log)")
        if sub == "override":
            p.add_argument("--limit-usd", help="the temporary limit")
            p.add_argument("--expires", help="a duration (2h, 7d) or an RFC 3339 instant")
            p.add_argument("--remove", action="store_true", help="end the override now")
        else:
            p.add_argument("--amount-usd", required=True, help="credit for the current window")
    return p


def cmd_budgets(args: argparse.Namespace) -> int:
    rest: list[str] = args.rest
    sub = rest[0] if rest and rest[0] in SUBCOMMANDS else None
    a = _budgets_parser(sub).parse_args(rest[1:] if sub else rest)
    if sub is None:
        if a.name:
            request = pb.GetBudgetStatusRequest(budget=a.name, scope_value=a.scope_value)
            statuses = _run(a, "GetBudgetStatus", request).statuses
        else:
            statuses = _run(a, "ListBudgets", pb.ListBudgetsRequest()).budgets
        records = [output.budget_record(s) for s in statuses]
        print(output.render(records, output.BUDGET_COLUMNS, a.format))
    elif sub == "overrides":
        found = _run(a, "ListOverrides", pb.ListOverridesRequest()).overrides
        records = [output.override_record(o) for o in found]
        print(output.render(records, OVERRIDE_COLUMNS, a.format))
    elif sub == "override" and a.remove:
        request = pb.RemoveOverrideRequest(budget=a.name, scope_value=a.scope_value)
        request.reason = a.reason
        removed = _run(a, "RemoveOverride", request).removed
        print("removed" if removed else "no override was in force")
    elif sub == "override":
        if a.limit_usd is None or a.expires is None:
            raise CliError("an override needs --limit-usd and --expires (or --remove)")
        request = pb.SetOverrideRequest(
            budget=a.name,
            scope_value=a.scope_value,
            limit_micros=usd_to_micros(a.limit_usd),
            reason=a.reason,
        )
        request.expires_at.CopyFrom(ts(_expiry(a.expires)))
        found = _run(a, "SetOverride", request)
        print(output.render([output.override_record(found)], OVERRIDE_COLUMNS, a.format))
    else:
        request = pb.TopUpRequest(
            budget=a.name,
            scope_value=a.scope_value,
            amount_micros=usd_to_micros(a.amount_usd),
            reason=a.reason,
        )
        status = _run(a, "TopUp", request).status
        print(output.render([output.budget_record(status)], output.BUDGET_COLUMNS, a.format))
    return 0


def add_admin_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    spend = sub.add_parser("spend", help="spend report from the admin API")
    _connection_args(spend)
    spend.add_argument(
        "--by",
        action="append",
        metavar="DIMENSION",
        help="user, group, service, static_token, model, provider, day or attribute:NAME "
        "(repeat to group by several)",
    )
    spend.add_argument("--window", choices=("day", "week", "month"), default="month")
    spend.add_argument("--timezone", help="the window's timezone (must be spend.timezone)")
    spend.add_argument("--since", type=_instant, help="YYYY-MM-DD or RFC 3339 (midnight)")
    spend.add_argument("--until", type=_instant, help="exclusive; as --since")
    spend.add_argument("--where", action="append", type=_where, metavar="KEY=VALUE")
    spend.set_defaults(func=_guarded(cmd_spend))
    recon = sub.add_parser(
        "reconcile",
        help="reconcile a UTC day with the providers' bills now (--show: stored results only)",
    )
    _connection_args(recon)
    recon.add_argument("--day", help="YYYY-MM-DD, UTC (default: yesterday)")
    recon.add_argument(
        "--provider", action="append", help="openai or anthropic (repeat; default: all configured)"
    )
    recon.add_argument("--show", action="store_true", help="print stored results; call no provider")
    recon.add_argument("--since", help="with --show: first day, YYYY-MM-DD")
    recon.add_argument("--until", help="with --show: the day after the last, YYYY-MM-DD")
    recon.add_argument(
        "--reason", default="gatewayctl reconcile", help="recorded in the audit log (runs)"
    )
    recon.set_defaults(func=_guarded(cmd_reconcile))
    budgets = sub.add_parser(
        "budgets",
        help="budget status; `budgets override|top-up|overrides ...` change them",
        add_help=False,
    )
    budgets.add_argument("rest", nargs=argparse.REMAINDER)
    budgets.set_defaults(func=budgets_command)


def _guarded(command: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(command(args))
        except (CliError, ValueError) as exc:
            print(f"gatewayctl: {exc}", file=sys.stderr)
            return 1

    return run


# `gatewayctl budgets ...`: cli.main hands it every word after `budgets`, options first included.
budgets_command = _guarded(cmd_budgets)
