"""`gatewayctl`: run the local stack, render the Envoy config, check a config file."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from gateway_extproc.errors import ConfigError


def _register_login(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from gateway_extproc.identity.devissuer import add_token_command
    from gateway_extproc.login.commands import add_login_commands, print_mode

    add_login_commands(sub, add_token_command(sub, modes=print_mode))


def _register_admin(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from gateway_extproc.admin.cli import add_admin_commands

    add_admin_commands(sub)


# Subcommands whose modules are slow to import (the admin clients: grpc, the protobufs, redis;
# tokens and login: httpx, authlib, cryptography), by group: a group's modules are imported and
# its commands registered only when the command line names one of them, so `gatewayctl token
# --print` (Claude Code's apiKeyHelper, run again and again) never imports the admin client.
# Any other group's commands get a parser with their one-line help alone: what `gatewayctl
# --help` lists (tests/unit/test_cli_lazy.py holds these lines equal to the real parsers').
LAZY_GROUPS = (
    (
        _register_login,
        {
            "token": "print a development JWT signed by the local dev issuer",
            "login": "sign in with the gateway's IdP (device code) and store the tokens",
            "logout": "revoke the stored refresh token at the IdP and forget the tokens",
            "env": "print the OpenAI/Anthropic SDK variables for the gateway, with a fresh token",
        },
    ),
    (
        _register_admin,
        {
            "spend": "spend report from the admin API",
            "reconcile": "reconcile a UTC day with the providers' bills now (--show: stored "
            "results only)",
            "budgets": "budget status; `budgets override|top-up|overrides ...` change them",
        },
    ),
)


def register_lazy(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], argv: Sequence[str]
) -> None:
    """Every group in LAZY_GROUPS: registered for real when `argv` names one of its commands,
    else by name and help only."""
    named = argv[0] if argv else None
    for register, commands in LAZY_GROUPS:
        if named in commands:
            register(sub)
        else:
            for name, line in commands.items():
                sub.add_parser(name, help=line, add_help=False)


def _config_path(value: str | None) -> Path | None:
    value = value or os.environ.get("GATEWAY_CONFIG")
    return Path(value) if value else None


def cmd_run(args: argparse.Namespace) -> int:
    from gateway_extproc.launch import StackError
    from gateway_extproc.stack import Stack

    stack = Stack(
        run_dir=Path(args.run_dir), config_path=_config_path(args.config), start_dev_idp=True
    )
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    # SIGHUP reloads the configuration of every sidecar worker.
    signal.signal(signal.SIGHUP, lambda _s, _f: stack.signal_sidecars(signal.SIGHUP))
    try:
        stack.start()
    except StackError as exc:
        print(f"gatewayctl: {exc}", file=sys.stderr)
        return 1
    mocked = [u.provider for u in stack.upstreams.values() if u.mocked]
    left_out = sorted(stack.config.providers.keys() - stack.upstreams.keys())
    print(
        f"\n  gateway   {stack.gateway_url}  (OpenAI SDK: base_url={stack.gateway_url}/v1, "
        f"Anthropic SDK: base_url={stack.gateway_url})\n"
        f"  admin     {stack.admin_url}\n"
        + (
            f"  admin API {stack.admin_api_address}  (gatewayctl spend, budgets, reconcile)\n"
            if stack.admin_api_address
            else ""
        )
        + (
            f"  spend     {stack.spend_page_url}  (the spend page, in a browser)\n"
            if stack.spend_page_url
            else ""
        )
        + f"  redis     {stack.redis_url}\n"
        + _dev_idp_lines(stack.dev_idp_url)
        + (f"  mock      {stack.mock_url}  serving: {', '.join(mocked)}\n" if mocked else "")
        + (
            f"  left out  {', '.join(left_out)}  (no key; not named in the config)\n"
            if left_out
            else ""
        )
        + "".join(f"  metrics   {url}\n" for url in stack.metrics_urls)
        + _traces_line(stack.environ)
        + "  audit     one JSON line per request on stdout"
        + (f" and in {stack.config.audit_file}" if stack.config.audit_file else "")
        + "\n  Ctrl-C stops everything.\n",
        file=sys.stderr,
        flush=True,
    )
    try:
        while not stopping:
            for name, proc in stack.procs:
                if proc.poll() is not None:
                    print(
                        f"gatewayctl: {name} exited ({proc.returncode}); stopping", file=sys.stderr
                    )
                    stopping = True
            time.sleep(0.2)
    finally:
        stack.stop()
    return 0


def _dev_idp_lines(url: str) -> str:
    if not url:
        return ""
    return (
        f"  dev IdP   {url}  (OIDC discovery: {url}/.well-known/openid-configuration;\n"
        "            local development only: sign in as anyone, no password)\n"
    )


def _traces_line(environ: Mapping[str, str]) -> str:
    from gateway_extproc.observability.settings import otlp_protocol

    protocol = otlp_protocol(environ, "traces")
    if protocol is None:
        return "  traces    off (set OTEL_EXPORTER_OTLP_ENDPOINT to export)\n"
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT", "the exporter's default endpoint"
    )
    return f"  traces    OTLP ({protocol.value}) to {endpoint}\n"


def cmd_envoy_config(args: argparse.Namespace) -> int:
    from gateway_extproc.config.gateway import load_config
    from gateway_extproc.config.upstreams import resolve_upstreams
    from gateway_extproc.envoy import bootstrap as envoy_config
    from gateway_extproc.envoy.filters import ClientTls, sidecar_access
    from gateway_extproc.envoy.ops import with_downstream_tls
    from gateway_extproc.launch import ca_bundle

    config = load_config(_config_path(args.config), os.environ)
    upstreams = resolve_upstreams(
        config, os.environ, args.mock_url, assume_credentials=args.mock_url is None
    )
    ports = envoy_config.EnvoyPorts(
        listen_host=config.listen_host,
        listen_port=config.listen_port,
        admin_port=config.admin_port,
        # Where Envoy reaches the workers: a sidecar bound to 0.0.0.0 (for the kubelet's gRPC
        # probe) is still reached over loopback.
        sidecar_host=args.sidecar_host or config.sidecar_host,
        sidecar_ports=tuple(
            args.sidecar_port + i for i in range(args.workers or config.sidecar_workers)
        ),
        ops_port=args.ops_port,
        admin_api_port=config.admin_api.port,
        admin_api_http_port=config.admin_api.http_port,
        spend_page_port=config.spend_page.port,
    )
    sidecar_tls = (args.sidecar_tls_cert, args.sidecar_tls_key, args.sidecar_tls_ca)
    client_tls = None
    if any(sidecar_tls):
        if not all(sidecar_tls):
            print(
                "gatewayctl: --sidecar-tls-cert, --sidecar-tls-key and --sidecar-tls-ca go "
                "together",
                file=sys.stderr,
            )
            return 2
        server_name = args.sidecar_tls_server_name or args.sidecar_host or config.sidecar_host
        client_tls = ClientTls(*sidecar_tls, server_name=server_name)
    # The token from where the sidecar reads it (sidecar.caller_token): missing is an error.
    access = sidecar_access(config, os.environ, client_tls)
    bootstrap = envoy_config.build(
        config, ports, upstreams.values(), args.ca_file or ca_bundle(), access
    )
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            print("gatewayctl: --tls-cert and --tls-key go together", file=sys.stderr)
            return 2
        with_downstream_tls(bootstrap, args.tls_cert, args.tls_key)
    text = envoy_config.render(bootstrap)
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from gateway_extproc.config.gateway import load_config

    config = load_config(_config_path(args.config), os.environ)
    if args.require_credentials:
        from gateway_extproc.config.upstreams import resolve_upstreams
        from gateway_extproc.sidecar_auth.settings import load_secrets

        problems: list[str] = []
        # Every provider key and the sidecar's caller token and state keys: each missing one named.
        try:
            served = resolve_upstreams(config, os.environ, None)
        except ConfigError as exc:
            problems += exc.problems
        try:
            load_secrets(config.sidecar_auth, os.environ)
        except ConfigError as exc:
            problems += exc.problems
        if problems:
            raise ConfigError(problems)
        for name in sorted(config.providers.keys() - served.keys()):
            print(f"note: provider {name} left out: no credential, and the config does not name it")
    print(f"ok: {len(config.providers)} providers, {len(config.catalog.models())} models")
    if not args.redis:
        return 0
    store = config.budget_store
    uses_redis = config.uses_store
    return _check_redis(store.redis_url, store.cluster, uses_redis, store.redis_password)


def _check_redis(url: str, cluster: bool, uses_redis: bool, password: str | None = None) -> int:
    """Exit status: 0 safe for budget state, 1 warnings, 2 unreachable."""
    import redis

    from gateway_extproc.budgets.redis_check import check, display_url

    if not uses_redis:
        print(
            "note: no budgets are configured and the admin API is off, so the gateway does not "
            "use Redis yet"
        )
    try:
        found = check(url, cluster=cluster, password=password)
    except redis.RedisError as exc:
        print(f"gatewayctl: cannot check Redis at {display_url(url)}: {exc}", file=sys.stderr)
        return 2
    warned = False
    for server, warnings in found.items():
        for warning in warnings:
            warned = True
            print(f"warning: redis {server}: {warning}")
        if not warnings:
            print(f"ok: redis {server}: noeviction and persistent")
    return 1 if warned else 0


def cmd_drain_envoy(args: argparse.Namespace) -> int:
    from gateway_extproc.envoy.drain import drain_envoy

    def log(line: str) -> None:
        print(f"gatewayctl drain-envoy: {line}", file=sys.stderr, flush=True)

    done = Path(args.done_file) if args.done_file else None
    drain_envoy(f"http://127.0.0.1:{args.admin_port}", args.timeout, args.min_wait, done, log)
    return 0


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The command line's parser, with the lazy group `argv` names (if any) registered for real."""
    parser = argparse.ArgumentParser(prog="gatewayctl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="start redis, the mock provider (if needed), sidecar and Envoy"
    )
    run.add_argument("--config", help="operator config file (default: $GATEWAY_CONFIG or built-in)")
    run.add_argument("--run-dir", default=".run", help="where generated files and pids go")
    run.set_defaults(func=cmd_run)
    env = sub.add_parser("envoy-config", help="print the Envoy bootstrap for a config")
    env.add_argument("--config")
    env.add_argument("--out")
    env.add_argument("--sidecar-port", type=int, default=50051, help="first worker's port")
    env.add_argument("--workers", type=int, default=0, help="sidecar workers (default: config)")
    env.add_argument("--mock-url", default=None)
    env.add_argument("--ca-file", default=None)
    env.add_argument(
        "--sidecar-host", default=None, help="address Envoy dials the workers on (default: config)"
    )
    env.add_argument(
        "--ops-port",
        type=int,
        default=None,
        help="add a listener on listener.host with /ready (503 unless a sidecar worker is "
        "healthy, or while draining) and /stats/prometheus, for Kubernetes probes and scraping",
    )
    env.add_argument("--tls-cert", default=None, help="serve the listener over TLS: PEM chain")
    env.add_argument("--tls-key", default=None, help="and its PEM private key")
    env.add_argument(
        "--sidecar-tls-cert",
        default=None,
        help="a sidecar apart from Envoy (sidecar.tls): Envoy's client certificate (PEM)",
    )
    env.add_argument("--sidecar-tls-key", default=None, help="and its PEM private key")
    env.add_argument(
        "--sidecar-tls-ca", default=None, help="the CA that signed the sidecar's certificate"
    )
    env.add_argument(
        "--sidecar-tls-server-name",
        default=None,
        help="the DNS name the sidecar's certificate carries (default: the sidecar host)",
    )
    env.set_defaults(func=cmd_envoy_config)
    drain = sub.add_parser(
        "drain-envoy",
        help="preStop: fail Envoy's health, drain its listeners, wait for its requests to end",
    )
    drain.add_argument("--admin-port", type=int, default=9901)
    drain.add_argument("--timeout", type=float, default=600, help="longest wait, seconds")
    drain.add_argument(
        "--min-wait", type=float, default=5, help="serve stragglers at least this long, seconds"
    )
    drain.add_argument("--done-file", default=None, help="written when done (Envoy's preStop)")
    drain.set_defaults(func=cmd_drain_envoy)
    check = sub.add_parser("check-config", help="validate a config and report every problem")
    check.add_argument("--config")
    check.add_argument(
        "--redis",
        action="store_true",
        help="also connect to budget_store.redis_url and warn if it may evict or lose budget "
        "state (exit status 1 on warnings, 2 if unreachable)",
    )
    check.add_argument(
        "--require-credentials",
        action="store_true",
        help="also require every provider's key (its env variable or file) to be present, as "
        "the sidecar does when no mock provider runs, and the sidecar's caller token and state "
        "keys (exit status 2 naming each missing one)",
    )
    check.set_defaults(func=cmd_check)
    register_lazy(sub, argv)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    if argv[:1] == ["budgets"]:
        from gateway_extproc.admin.cli import budgets_command

        # Its own parser takes everything after the word, options first included (argparse's
        # REMAINDER leaves a leading -h or --format to the top-level parser, which refuses it).
        args = argparse.Namespace(rest=argv[1:], func=budgets_command)
    else:
        args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"gatewayctl: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
