"""`gatewayctl drain-envoy`: the Kubernetes preStop step that stops Envoy taking traffic first.

Runs in the sidecar container (the official Envoy image has no HTTP client) and talks to
Envoy's admin interface on loopback in the same pod: fail Envoy's health (its `/ready` on the
ops listener turns 503, so the Service drops the pod), drain the listeners gracefully (clients
get `Connection: close` / GOAWAY), then wait until no request is active on the gateway
listener, at most `timeout_s`, and write `done_file`. Envoy's own preStop waits for that file,
so Envoy gets its SIGTERM only when its streams have ended; the sidecar gets its SIGTERM when
this returns and drains as usual. Never raises: an Envoy that is gone has nothing to drain.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ACTIVE_STAT = "http.gateway.downstream_rq_active"


def _post(admin_url: str, path: str) -> None:
    request = urllib.request.Request(admin_url + path, method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=2):
        pass


def active_requests(admin_url: str) -> int:
    """Requests in flight on the gateway listener. Raises OSError when Envoy cannot be asked,
    ValueError when it has no such stat (not the gateway's bootstrap)."""
    url = f"{admin_url}/stats?filter=^{ACTIVE_STAT.replace('.', '[.]')}$"
    with urllib.request.urlopen(url, timeout=2) as response:
        text = response.read().decode()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == ACTIVE_STAT:
            return int(value.strip())
    raise ValueError(f"envoy has no stat {ACTIVE_STAT}")


def drain_envoy(
    admin_url: str,
    timeout_s: float,
    min_wait_s: float,
    done_file: Path | None,
    log: Callable[[str], None],
    *,
    poll_s: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    start = clock()
    try:
        _post(admin_url, "/healthcheck/fail")
        _post(admin_url, "/drain_listeners?graceful")
        log("envoy: health failed, listeners draining")
        # Endpoint removal reaches kube-proxy and ingress controllers asynchronously: keep
        # serving what still arrives for at least min_wait_s.
        told = False
        while True:
            waited = clock() - start
            active = active_requests(admin_url)
            if (active == 0 and waited >= min_wait_s) or waited >= timeout_s:
                log(f"envoy: {active} requests active after {waited:.0f}s")
                break
            if active and not told:  # once: why the pod is still terminating
                log(f"envoy: waiting for {active} requests in flight (at most {timeout_s:g}s)")
                told = True
            sleep(poll_s)
    except (OSError, ValueError) as exc:  # urllib.error.URLError is an OSError
        log(f"envoy: cannot drain ({exc}); going on with the shutdown")
    if done_file is not None:
        done_file.parent.mkdir(parents=True, exist_ok=True)
        done_file.write_text("drained\n")
