"""Start and stop the whole local stack: redis-server, mock provider, sidecar, Envoy (and, for
`gatewayctl run` with the dev issuer, the development IdP: gateway_extproc/devidp.py).

Used by `gatewayctl run` (what `make run` calls) and by the end-to-end tests, so the tests run
exactly what a user runs. Every process gets an ephemeral loopback port unless told otherwise,
and `stop()` ends every process that `start()` began, in reverse order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from gateway_extproc.config.gateway import GatewayConfig, load_config
from gateway_extproc.config.upstreams import Upstream, needs_mock, resolve_upstreams
from gateway_extproc.envoy import bootstrap as envoy_config
from gateway_extproc.envoy.filters import ClientTls, sidecar_access
from gateway_extproc.identity.devissuer import ALLOW_ENV as DEV_ISSUER_ALLOW_ENV
from gateway_extproc.launch import (
    StackError,
    ca_bundle,
    find_binary,
    free_port,
    launch_envoy,
    port_written,
    validate_envoy_config,
    wait_for,
    write_private,
)
from gateway_extproc.reconcile.settings import MOCK as MOCK_REPORTS
from gateway_extproc.sidecar_auth.settings import fresh_secrets

# The admin keys a local stack gives the mock's usage and cost report APIs (and its sidecars,
# unless the environment names others): local, never a real provider's.
MOCK_ADMIN_KEYS = {"openai": "sk-admin-mock-openai", "anthropic": "sk-ant-admin01-mock"}

# Importers of the stack (bench, tests) find these here as they always did.
__all__ = [
    "Stack",
    "StackError",
    "ca_bundle",
    "find_binary",
    "free_port",
    "launch_envoy",
    "validate_envoy_config",
    "wait_for",
]


def _sidecar_name(worker: int) -> str:
    return "sidecar" if worker == 0 else f"sidecar-{worker}"


def _is_sidecar(name: str) -> bool:
    return name == "sidecar" or name.startswith("sidecar-")


def _stop_rank(name: str) -> int:
    """Stop order: Envoy, the sidecar workers, the mock provider and dev IdP, then Redis."""
    if name == "envoy":
        return 0
    if _is_sidecar(name):
        return 1
    return 3 if name == "redis-server" else 2


@dataclasses.dataclass
class Stack:
    run_dir: Path
    config_path: Path | None = None
    environ: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(os.environ))
    listen_port: int | None = None  # None: from config (GATEWAY_PORT); 0: ephemeral
    admin_port: int | None = None
    admin_api_port: int | None = None  # None: from config (admin_api.port); 0: ephemeral
    admin_api_http_port: int | None = None  # None: from config (admin_api.http_port)
    spend_page_port: int | None = None  # None: from config (spend_page.port); 0: ephemeral
    log_path: Path | None = None  # where children write; None: inherit the terminal
    mock_args: tuple[str, ...] = ()
    start_sidecar: bool = True
    envoy_concurrency: int = 2  # Envoy worker threads
    sidecar_client_tls: ClientTls | None = None  # Envoy's certificate for a sidecar with tls
    # Each worker journals spend owed to Redis in journal_dir/<journal_prefix><worker name>.jsonl
    # (None: run_dir/journal); adopt_journals: take over the gone workers' journals there.
    journal_dir: Path | None = None
    journal_prefix: str = ""
    adopt_journals: Path | None = None
    redis_url: str = ""  # a Redis this stack does not own (tests of outages); "": start one
    # The development IdP (gateway_extproc/devidp.py) beside the dev issuer: gatewayctl run
    # starts it when identity.dev_issuer is on; port None: from config (identity.dev_idp_port).
    start_dev_idp: bool = False
    dev_idp_port: int | None = None

    def __post_init__(self) -> None:
        # A local run: its configuration may trust the development issuer (config/local.yaml).
        self.environ = {**self.environ, DEV_ISSUER_ALLOW_ENV: "1"}
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.output: IO[bytes] | None = None
        self.config: GatewayConfig = load_config(self.config_path, self.environ)
        self._own_redis = not self.redis_url
        self.mock_url: str | None = None
        self.dev_idp_url = ""  # http://127.0.0.1:<port> when the dev IdP runs
        self.gateway_url = ""
        self.admin_url = ""
        self.admin_api_address = ""  # host:port of the admin API, when admin_api.enabled
        self.page_port = 0  # worker 0's spend page port, when spend_page.enabled
        self.sidecar_ports: dict[int, int] = {}  # worker -> bound port
        self.metrics_ports: dict[int, int] = {}  # worker -> its /metrics port
        self.upstreams: dict[str, Upstream] = {}
        # This run's caller token and state key: in the sidecar workers' environment only (and
        # the token in Envoy's bootstrap, a file only its owner reads), never on a command line.
        self.sidecar_secrets = fresh_secrets(self.config.sidecar_auth)
        # `reconcile` against the mock (`base_url: mock`): the mock's report APIs take these
        # admin keys, and the sidecar reads them where its settings say (unless already set).
        self.reports_admin_env = {
            p.admin_key_env: self.environ.get(p.admin_key_env) or MOCK_ADMIN_KEYS[p.provider]
            for p in self.config.reconcile.providers
            if p.base_url == MOCK_REPORTS
        }

    # -- processes --------------------------------------------------------------------------

    def _spawn(
        self, name: str, argv: list[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            argv,
            stdout=self.output,
            stderr=self.output,
            stdin=subprocess.DEVNULL,
            env=dict(env if env is not None else self.environ),
            start_new_session=True,  # Ctrl-C reaches us; we stop children in order
        )
        self.procs.append((name, proc))
        return proc

    def start_redis(self, port: int = 0) -> None:
        port = port or free_port()
        proc = self._spawn(
            "redis-server",
            [
                find_binary("redis-server"),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                # Budget state as production should keep it (README, Redis requirements): never
                # evicted, and an append-only file so a restart loses at most a second.
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--maxmemory-policy",
                "noeviction",
                "--dir",
                str(self.run_dir),
            ],
        )

        def ping() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        wait_for(ping, "redis-server", 15, proc)
        self.redis_url = f"redis://127.0.0.1:{port}/0"

    def start_mock(self) -> None:
        port_file = self.run_dir / "mock.port"
        port_file.unlink(missing_ok=True)
        proc = self._spawn(
            "mock-provider",
            [
                sys.executable,
                "-m",
                "gateway_extproc.mock",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--port-file",
                str(port_file),
                *self.mock_admin_args(),
                *self.mock_args,
            ],
        )
        wait_for(lambda: port_written(port_file), "mock provider", 20, proc)
        self.mock_url = f"http://127.0.0.1:{port_file.read_text().strip()}/v1"

    def start_dev_idp_process(self) -> None:
        """The development IdP on loopback, signing with this run's dev issuer key."""
        port_file = self.run_dir / "dev-idp.port"
        port_file.unlink(missing_ok=True)
        port = self.config.dev_idp_port if self.dev_idp_port is None else self.dev_idp_port
        argv = [sys.executable, "-m", "gateway_extproc.devidp", "--port", str(port)]
        argv += ["--dir", str(self.run_dir / "dev-issuer"), "--port-file", str(port_file)]
        proc = self._spawn("dev-idp", argv)
        wait_for(lambda: port_written(port_file), "dev IdP", 20, proc)
        self.dev_idp_url = f"http://127.0.0.1:{port_file.read_text().strip()}"

    def start_sidecar_process(self, worker: int = 0, port: int | None = None) -> None:
        """Start sidecar worker `worker` (process name "sidecar" for worker 0, else
        "sidecar-N"); `port` None: the configured port + worker, or any free port."""
        name = _sidecar_name(worker)
        port_file = self.run_dir / f"{name}.port"
        port_file.unlink(missing_ok=True)
        if port is None:
            base = self.config.sidecar_port
            port = base + worker if base else 0
        metrics_file = self.run_dir / f"{name}-metrics.port"
        metrics_file.unlink(missing_ok=True)
        argv = [
            sys.executable,
            "-m",
            "gateway_extproc.server",
            "--address",
            f"{self.config.sidecar_host}:{port}",
            "--port-file",
            str(port_file),
            "--worker",
            str(worker),
            "--metrics-port-file",
            str(metrics_file),
            # Spend owed to Redis survives a restart of this worker (replayed at start).
            "--journal",
            str(self.journal_path(worker)),
        ]
        if self.adopt_journals is not None:
            argv += ["--adopt-journals", str(self.adopt_journals)]
        if self.config_path is not None:
            argv += ["--config", str(self.config_path)]
        if worker in self.metrics_ports:  # a restart keeps the port Prometheus scrapes
            argv += ["--metrics-port", str(self.metrics_ports[worker])]
        if self.mock_url:
            argv += ["--mock-url", self.mock_url]
        admin = self.config.admin_api
        admin_port_file = self.run_dir / "admin-api.port"
        if worker == 0 and admin.enabled:
            admin_port = admin.port if self.admin_api_port is None else self.admin_api_port
            admin_port_file.unlink(missing_ok=True)
            argv += ["--admin-address", f"{admin.host}:{admin_port}"]
            argv += ["--admin-port-file", str(admin_port_file)]
        page = self.config.spend_page
        page_port_file = self.run_dir / "spend-page.port"
        serves_page = worker == 0 and admin.enabled and page.enabled
        if serves_page:
            page_port = page.port if self.spend_page_port is None else self.spend_page_port
            page_port_file.unlink(missing_ok=True)
            argv += ["--spend-page-address", f"{self.config.sidecar_host}:{page_port}"]
            argv += ["--spend-page-port-file", str(page_port_file)]
        env = {
            **self.sidecar_environ,
            "GATEWAY_REDIS_URL": self.redis_url,
            "GATEWAY_RUN_DIR": str(self.run_dir),
        }
        proc = self._spawn(name, argv, env)
        wait_for(lambda: port_written(port_file), f"ext_proc {name}", 30, proc)
        bound = int(port_file.read_text().strip())
        self.sidecar_ports = {**self.sidecar_ports, worker: bound}
        if worker == 0 and admin.enabled:
            self.admin_api_address = f"{admin.host}:{admin_port_file.read_text().strip()}"
        if serves_page:
            self.page_port = int(page_port_file.read_text().strip())
        if port_written(metrics_file):  # written before the port file, when metrics are on
            self.metrics_ports = {**self.metrics_ports, worker: int(metrics_file.read_text())}

    @property
    def spend_page_url(self) -> str:
        """Where a person opens the spend page: its public URL, else the admin JSON listener."""
        page, admin = self.config.spend_page, self.config.admin_api
        if not (page.enabled and admin.enabled and self.admin_api_address):
            return ""
        if page.public_url:
            return f"{page.public_url}/ui/"
        port = admin.http_port if self.admin_api_http_port is None else self.admin_api_http_port
        host = "127.0.0.1" if admin.host in ("0.0.0.0", "::", "") else admin.host
        scheme = "https" if admin.tls is not None else "http"
        return f"{scheme}://{host}:{port}/ui/" if port else ""

    def journal_path(self, worker: int = 0) -> Path:
        directory = self.journal_dir or self.run_dir / "journal"
        return directory / f"{self.journal_prefix}{_sidecar_name(worker)}.jsonl"

    @property
    def metrics_urls(self) -> list[str]:
        """Every worker's /metrics URL (Prometheus scrapes each: they are separate processes)."""
        host = self.config.observability.metrics_host
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        ports = [self.metrics_ports[w] for w in sorted(self.metrics_ports)]
        return [f"http://{host}:{port}/metrics" for port in ports]

    def start_sidecars(self) -> None:
        for worker in range(self.config.sidecar_workers):
            self.start_sidecar_process(worker)

    def envoy_yaml(self) -> str:
        self.upstreams = upstreams = resolve_upstreams(self.config, self.environ, self.mock_url)
        ports = envoy_config.EnvoyPorts(
            listen_host=self.config.listen_host,
            listen_port=self.config.listen_port if self.listen_port is None else self.listen_port,
            admin_port=self.config.admin_port if self.admin_port is None else self.admin_port,
            sidecar_host=self.config.sidecar_host,
            sidecar_ports=tuple(self.sidecar_ports[w] for w in sorted(self.sidecar_ports))
            or tuple(free_port() for _ in range(self.config.sidecar_workers)),
            admin_api_port=int(self.admin_api_address.rsplit(":", 1)[1])
            if self.admin_api_address
            else 0,
            admin_api_http_port=self.config.admin_api.http_port
            if self.admin_api_http_port is None
            else self.admin_api_http_port,
            spend_page_port=self.page_port,
        )
        access = sidecar_access(self.config, self.sidecar_environ, self.sidecar_client_tls)
        bootstrap = envoy_config.build(self.config, ports, upstreams.values(), ca_bundle(), access)
        return envoy_config.render(bootstrap)

    def mock_admin_args(self) -> list[str]:
        """The admin keys the mock's report APIs take: those the sidecar reconciles with."""
        args = []
        for p in self.config.reconcile.providers:
            if p.base_url == MOCK_REPORTS:
                args += [f"--{p.provider}-admin-key", self.reports_admin_env[p.admin_key_env]]
        return args

    @property
    def sidecar_environ(self) -> dict[str, str]:
        """The environment the sidecar workers read their caller secrets (and, reconciling
        against the mock, its admin keys) from."""
        return {**self.environ, **self.reports_admin_env, **self.sidecar_secrets}

    def start_envoy(self) -> None:
        path = self.run_dir / "envoy.yaml"
        write_private(path, self.envoy_yaml())
        self.gateway_url, self.admin_url, _ = launch_envoy(
            path, lambda argv: self._spawn("envoy", argv), self.envoy_concurrency
        )

    def start(self) -> Stack:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.log_path is not None:
            self.output = self.log_path.open("ab")
        try:
            if self._own_redis:
                self.start_redis()
            if needs_mock(self.config, self.environ) or self.reports_admin_env:
                self.start_mock()
            if self.start_dev_idp and self.config.dev_issuer:
                self.start_dev_idp_process()
            if self.start_sidecar:
                self.start_sidecars()
            self.start_envoy()
        except BaseException:
            self.stop()
            raise
        return self

    def process(self, name: str) -> subprocess.Popen[bytes]:
        return next(p for n, p in self.procs if n == name)

    def sidecar(self, worker: int) -> tuple[subprocess.Popen[bytes], int]:
        """Sidecar worker `worker`'s process and the port it listens on."""
        return self.process(_sidecar_name(worker)), self.sidecar_ports[worker]

    def signal_sidecars(self, sig: int) -> None:
        """Send a signal to every sidecar worker (SIGHUP: reload the configuration)."""
        for name, proc in self.procs:
            if _is_sidecar(name) and proc.poll() is None:
                proc.send_signal(sig)

    def restart(self, name: str) -> None:
        """Start a stopped (or killed) redis-server or sidecar again on the port it had, so the
        rest of the stack finds it where it was (tests of crashes and outages)."""
        proc = self.process(name)
        if proc.poll() is None:
            raise StackError(f"{name} is still running")
        self.procs = [(n, p) for n, p in self.procs if p is not proc]
        if name == "redis-server":
            self.start_redis(int(self.redis_url.rsplit(":", 1)[1].split("/")[0]))
        elif _is_sidecar(name):
            worker = 0 if name == "sidecar" else int(name.split("-", 1)[1])
            self.start_sidecar_process(worker, self.sidecar_ports[worker])
        else:
            raise StackError(f"cannot restart {name}")

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM in dependency order, whatever was restarted meanwhile: Envoy stops taking
        requests first, then the sidecar workers drain (together), then the mock, and Redis
        goes last, after the workers' final settles."""
        while self.procs:
            rank = min(_stop_rank(n) for n, _ in self.procs)
            batch = [p for n, p in self.procs if _stop_rank(n) == rank]
            self.procs = [(n, p) for n, p in self.procs if _stop_rank(n) != rank]
            for member in batch:
                if member.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        member.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            for member in batch:
                try:
                    member.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    member.kill()
                    member.wait()
        if self.output is not None:
            self.output.close()
            self.output = None
