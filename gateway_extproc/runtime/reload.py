"""The running context, swapped atomically on reload (runtime/context.py builds each one).

A reload (SIGHUP, or a change to a watched file such as a mounted secret) parses and validates
everything again; only a fully valid configuration replaces the running one. A bad reload keeps
the last good configuration and logs every problem. Streams already in flight finish with the
context they started with: each context counts its streams, and a replaced one is closed when
its last stream ends (or at shutdown), however long that stream runs. Provider token sources
(Vertex refreshers, Entra ID credentials with their cached tokens) belong to the runtime and
outlive a reload: a context holds the ones it uses, and one no context holds is closed with the
last context that held it; all are closed at shutdown. Envoy's own settings
(listener, clusters) are not reloaded: a change to the provider list needs a restart, and the
sidecar says so. Fallback chains and their policy variants are Envoy clusters too: a reloaded
configuration routes only to the chain clusters the start configuration generated (a request
whose cluster Envoy lacks takes the longest prefix Envoy holds, or the unchained route; never a
503 for a missing cluster; its attempts are counted with the key pools Envoy has), and each
reload names the clusters a restart would add or change (a resized key pool changes its).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

from gateway_extproc.config.gateway import GatewayConfig
from gateway_extproc.errors import ConfigError
from gateway_extproc.extproc.context import GatewayContext
from gateway_extproc.response import reaped_audit
from gateway_extproc.runtime.context import build_context, close_context, start_context

log = logging.getLogger("gateway.runtime")


def watched_files(config_path: Path | None, config: GatewayConfig) -> list[Path]:
    """Files whose change triggers a reload: the config, catalogs, secrets it names."""
    paths = [config_path] if config_path else []
    paths += [Path(f) for f in config.catalog_files]
    paths += [Path(p.auth.file) for p in config.providers.values() if p.auth and p.auth.file]
    paths += [Path(f) for f in config.identity_files]
    return paths


def _stamp(paths: list[Path]) -> tuple[tuple[str, bytes], ...]:
    """What the watched files hold (a digest of each): exact even when a file is rewritten
    within one mtime tick at the same size, as a rotated token or key usually is."""
    out = []
    for path in paths:
        try:
            out.append((str(path), hashlib.sha256(path.read_bytes()).digest()))
        except OSError:
            out.append((str(path), b""))
    return tuple(out)


class Runtime:
    """Holds the current context; `reload()` replaces it only with a valid one."""

    def __init__(
        self,
        ctx: GatewayContext,
        config_path: Path | None,
        environ: Mapping[str, str],
        mock_url: str | None,
    ) -> None:
        self.ctx = ctx
        # Budget store, settlement and fail-open spend: one set for the process, shared by
        # every configuration a reload brings in, closed only at shutdown.
        self.services = ctx.budgets.services
        # A reservation this process's reaper expired gets its one audit record, written with
        # whichever configuration (audit sink, telemetry) is current.
        self.services.on_reaped = lambda reaped, now: reaped_audit.write(self.ctx, reaped, now)
        self._config_path = config_path
        self._environ = environ
        self._mock_url = mock_url
        self._stamp = _stamp(watched_files(config_path, ctx.config))
        # The chain clusters Envoy was generated with: those of the start configuration, the one
        # `gatewayctl run`, the test stack and the chart's init container render envoy.yaml from.
        self.envoy_clusters = ctx.config.fallback.envoy_clusters(ctx.upstreams)
        self._lock = asyncio.Lock()
        # Streams in flight per context (by id: contexts are not hashable), and the contexts
        # a reload replaced while streams were still using them.
        self._streams: dict[int, int] = {}
        self._replaced: dict[int, GatewayContext] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self.accepting = True  # False once a drain stops taking new streams
        self._idle = asyncio.Event()  # set while no stream is in flight
        self._idle.set()
        self.reloads = 0
        self.failed_reloads = 0

    @property
    def mock_url(self) -> str | None:
        """The mock provider's URL (`make run`, tests), for `base_url: mock` settings."""
        return self._mock_url

    async def reload(self, reason: str) -> bool:
        async with self._lock:
            # Stamped before reading: a file that changes while it loads is seen at the next
            # poll and loaded again, so every worker converges on the last version.
            files = watched_files(self._config_path, self.ctx.config)
            stamp = _stamp(files)
            try:
                new = build_context(
                    self._config_path,
                    self._environ,
                    self._mock_url,
                    self.ctx.audit,
                    self.services,
                    self.ctx.telemetry,
                    self.ctx.sidecar_auth,
                    self.ctx.vertex_tokens,
                    self.ctx.entra_tokens,
                )
            except ConfigError as exc:
                self._stamp = stamp  # not retried until a file changes again
                self.failed_reloads += 1
                log.error(
                    "reload (%s) rejected; keeping the running configuration: %s", reason, exc
                )
                return False
            if set(new.upstreams) != set(self.ctx.upstreams):
                log.warning("the provider list changed: restart Envoy to apply its clusters")
            fallback = new.config.fallback.pinned(self.envoy_clusters)
            new = dataclasses.replace(
                new, config=dataclasses.replace(new.config, fallback=fallback)
            )
            if missing := fallback.missing(new.upstreams):
                log.warning(
                    "the fallback chains, their policy variants or key pools changed: Envoy has "
                    "no cluster %s; regenerate Envoy's config and restart Envoy to apply them "
                    "(until then their requests take the longest chain prefix Envoy has, or the "
                    "model's own route)",
                    ", ".join(missing),
                )
            await start_context(new)
            old, self.ctx = self.ctx, new
            new_files = watched_files(self._config_path, new.config)
            self._stamp = stamp if new_files == files else _stamp(new_files)
            self.reloads += 1
            log.info("configuration reloaded (%s)", reason)
            if id(old) in self._streams:
                self._replaced[id(old)] = old  # closed when its last stream ends
            else:
                self._retire(old)
            return True

    @contextlib.contextmanager
    def stream(self) -> Iterator[GatewayContext]:
        """The current context, for one ext_proc stream: it stays open until the stream ends,
        even if a reload replaces it meanwhile."""
        ctx = self.ctx
        key = id(ctx)
        self._streams[key] = self._streams.get(key, 0) + 1
        self._idle.clear()
        try:
            yield ctx
        finally:
            self._streams[key] -= 1
            if self._streams[key] == 0:
                del self._streams[key]
                if self._replaced.pop(key, None) is not None:
                    self._retire(ctx)
                if not self._streams:
                    self._idle.set()

    async def streams_ended(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for every stream in flight to end; True if they all did."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    @property
    def streams_in_flight(self) -> int:
        return sum(self._streams.values())

    def _retire(self, old: GatewayContext) -> None:
        task = asyncio.create_task(close_context(old))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def watch(self, interval_s: float) -> None:
        """Reload when a watched file changes (mounted secrets are updated in place). Each
        worker polls on its own, so a change (a revoked token) is in effect on every worker
        within `interval_s` plus the time one reload takes."""
        while True:
            await asyncio.sleep(interval_s)
            if _stamp(watched_files(self._config_path, self.ctx.config)) != self._stamp:
                await self.reload("a watched file changed")

    async def reap_forever(self) -> None:
        """Charge reservations of dead sidecars, with whichever configuration is current."""
        while True:
            await asyncio.sleep(self.ctx.budgets.settings.reap_interval_s)
            await self.ctx.budgets.reap_once()

    async def start(self) -> None:
        await self.services.start()
        await start_context(self.ctx)

    async def close(self, grace_s: float = 5.0) -> None:
        """At shutdown, after the server stopped: close every context, replaced ones included,
        then the provider token sources and the process-lifetime budget services (pending
        settles get up to `grace_s`, what is left is journaled)."""
        for old in self._replaced.values():
            self._retire(old)
        self._replaced.clear()
        if self._retiring:
            await asyncio.wait(list(self._retiring))
        self.ctx.vertex_tokens.stop()
        await close_context(self.ctx)
        await self.ctx.entra_tokens.close()  # any a context still held (none, normally)
        await self.services.close(grace_s)
