"""`gatewayctl`: run the local stack, render the Envoy config, check a config file."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from gateway_extproc.errors import ConfigError
from gateway_extproc.identity.devissuer import add_token_command


def _config_path(value: str | None) -> Path | None:
    value = value or os.environ.get("GATEWAY_CONFIG")
    return Path(value) if value else None


def cmd_run(args: argparse.Namespace) -> int:
    from gateway_extproc.stack import Stack, StackError

    stack = Stack(run_dir=Path(args.run_dir), config_path=_config_path(args.config))
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
    print(
        f"\n  gateway   {stack.gateway_url}  (OpenAI SDK: base_url={stack.gateway_url}/v1, "
        f"Anthropic SDK: base_url={stack.gateway_url})\n"
        f"  admin     {stack.admin_url}\n"
        f"  redis     {stack.redis_url}\n"
        + (f"  mock      {stack.mock_url}  serving: {', '.join(mocked)}\n" if mocked else "")
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
    from gateway_extproc import envoy_config
    from gateway_extproc.config import load_config
    from gateway_extproc.stack import ca_bundle
    from gateway_extproc.upstreams import resolve_upstreams

    config = load_config(_config_path(args.config), os.environ)
    upstreams = resolve_upstreams(
        config, os.environ, args.mock_url, assume_credentials=args.mock_url is None
    )
    ports = envoy_config.EnvoyPorts(
        listen_host=config.listen_host,
        listen_port=config.listen_port,
        admin_port=config.admin_port,
        sidecar_host=config.sidecar_host,
        sidecar_ports=tuple(
            args.sidecar_port + i for i in range(args.workers or config.sidecar_workers)
        ),
    )
    text = envoy_config.render(
        envoy_config.build(config, ports, upstreams.values(), args.ca_file or ca_bundle())
    )
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from gateway_extproc.config import load_config

    config = load_config(_config_path(args.config), os.environ)
    print(f"ok: {len(config.providers)} providers, {len(config.catalog.models())} models")
    if not args.redis:
        return 0
    return _check_redis(config.budget_store.redis_url, config.budget_store.cluster, config.budgets)


def _check_redis(url: str, cluster: bool, budgets: tuple[object, ...]) -> int:
    """Exit status: 0 safe for budget state, 1 warnings, 2 unreachable."""
    import redis

    from gateway_extproc.budgets.redis_check import check, display_url

    if not budgets:
        print("note: no budgets are configured, so the gateway does not use Redis yet")
    try:
        found = check(url, cluster=cluster)
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


def main(argv: list[str] | None = None) -> int:
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
    env.set_defaults(func=cmd_envoy_config)
    check = sub.add_parser("check-config", help="validate a config and report every problem")
    check.add_argument("--config")
    check.add_argument(
        "--redis",
        action="store_true",
        help="also connect to budget_store.redis_url and warn if it may evict or lose budget "
        "state (exit status 1 on warnings, 2 if unreachable)",
    )
    check.set_defaults(func=cmd_check)
    add_token_command(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"gatewayctl: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
