"""The stack of the Envoy facts for fallback (test_envoy_upstream_extproc.py): one pip Envoy 1.40
whose route retries over priority levels, with the downstream ext_proc in its HTTP filters and
the upstream ext_proc among the UPSTREAM http_filters of cluster `pair` (`a` at priority 0, `b` at
priority 1) and cluster `refused` (a closed port at priority 0, `b` at priority 1); the parties
are upstream_parties.py's. `running` starts it all on ephemeral ports and stops every part;
`Facts` sends requests and holds every party's records."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway_extproc.config.keys import repicks
from gateway_extproc.launch import free_port, launch_envoy
from tests.e2e.upstream_parties import (
    ATTEMPT_NS,
    KEY_ATTR,
    STALL_S,
    STATE_NS,
    TARGET_ATTR,
    TARGET_NS,
    DownstreamProcessor,
    Target,
    UpstreamProcessor,
    grpc_server,
)

HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
PER_TRY_TIMEOUT_S = 0.5


def _ext_proc(port: int, mode: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": {"envoy_grpc": {"cluster_name": f"extproc_{port}"}},
        "failure_mode_allow": False,
        "message_timeout": "5s",
        "processing_mode": {
            "request_trailer_mode": "SKIP",
            "response_trailer_mode": "SKIP",
            **mode,
        },
        **extra,
    }


def _grpc_cluster(port: int) -> dict[str, Any]:
    return {
        "name": f"extproc_{port}",
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            HTTP_OPTIONS: {
                "@type": "type.googleapis.com/" + HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": f"extproc_{port}",
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _addr(port)}}]},
            ],
        },
    }


def _addr(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _target_cluster(
    name: str,
    upstream_port: int,
    by_priority: list[tuple[str, int]],
    outlier: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A cluster with one endpoint per priority, each naming its target in endpoint metadata,
    and the upstream ext_proc as a per-attempt filter (before the mandatory upstream_codec);
    with `outlier`, Envoy's outlier detection on it."""
    upstream_filter = _ext_proc(
        upstream_port,
        {
            "request_header_mode": "SEND",
            "request_body_mode": "BUFFERED",
            "response_header_mode": "SEND",
            "response_body_mode": "NONE",
        },
        request_attributes=[TARGET_ATTR, KEY_ATTR, "xds.cluster_name", "upstream.address"],
        # Without this, Envoy silently drops a mutation of :authority / host (measured).
        mutation_rules={"allow_all_routing": True},
        metadata_options={
            "forwarding_namespaces": {"untyped": [STATE_NS]},
            "receiving_namespaces": {"untyped": [ATTEMPT_NS]},
        },
    )
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "0.25s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "priority": priority,
                    "lb_endpoints": [
                        {
                            "endpoint": {"address": _addr(port)},
                            "metadata": {"filter_metadata": {TARGET_NS: {"name": target}}},
                        }
                    ],
                }
                for priority, (target, port) in enumerate(by_priority)
            ],
        },
        "typed_extension_protocol_options": {
            HTTP_OPTIONS: {
                "@type": "type.googleapis.com/" + HTTP_OPTIONS,
                "explicit_http_config": {"http_protocol_options": {}},
                "http_filters": [
                    {"name": "upstream.ext_proc", "typed_config": upstream_filter},
                    {
                        "name": "envoy.filters.http.upstream_codec",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http."
                            "upstream_codec.v3.UpstreamCodec"
                        },
                    },
                ],
            }
        },
    }
    if outlier is not None:
        cluster["outlier_detection"] = outlier
    return cluster


# Outlier detection as a chain cluster would have it, its times short for the tests: a host is
# ejected after EJECT_AFTER consecutive 5xx (or, split from those, refused connections) and
# comes back EJECTION_S later (checked every `interval`). max_ejection_percent 100: a priority
# level's only host may go (Envoy's default, 10%, still ejects one host of one).
EJECT_AFTER = 2
EJECTION_S = 0.5
OUTLIER = {
    "consecutive_5xx": EJECT_AFTER,
    "interval": "0.1s",
    "base_ejection_time": f"{EJECTION_S}s",
    "max_ejection_percent": 100,
    "split_external_local_origin_errors": True,
    "consecutive_local_origin_failure": EJECT_AFTER,
}
# Each outlier fact has its own cluster (ejections are per cluster: no fact sees another's).
OUTLIER_CLUSTERS = ("eject_5xx", "eject_429", "eject_429_as_503", "eject_refused")


def _pool_cluster(
    name: str, upstream_port: int, a: int, b: int, weights: tuple[int, int] = (3, 1)
) -> dict[str, Any]:
    """A key pool: priority 0 holds two endpoints of target `a` (one address, by hostname, as
    every key of a real provider), keys `k1` and `k2` (`weights`, 3:1 by default) named in
    their metadata; priority 1 is `b`. STRICT_DNS like a generated chain cluster of named
    hosts."""
    cluster = _target_cluster(name, upstream_port, [])
    cluster.update(type="STRICT_DNS", dns_lookup_family="V4_ONLY")

    def endpoint(target: str, key: str, port: int, weight: int) -> dict[str, Any]:
        address = {"socket_address": {"address": "localhost", "port_value": port}}
        return {
            "endpoint": {"address": address},
            "load_balancing_weight": weight,
            "metadata": {"filter_metadata": {TARGET_NS: {"name": target, "key": key}}},
        }

    cluster["load_assignment"]["endpoints"] = [
        {
            "priority": 0,
            "lb_endpoints": [
                endpoint("a", "k1", a, weights[0]),
                endpoint("a", "k2", a, weights[1]),
            ],
        },
        {"priority": 1, "lb_endpoints": [endpoint("b", "b", b, 1)]},
    ]
    return cluster


RETRY_POLICY = {
    # 5xx and 429 answers, a reset before the response started, a refused connection, and a
    # per-try timeout (always retried when a retry policy is in place).
    "retry_on": "5xx,reset,connect-failure,retriable-status-codes",
    "retriable_status_codes": [429],
    "num_retries": 1,
    "per_try_timeout": f"{PER_TRY_TIMEOUT_S}s",
    # Each retry moves to the next priority level: the fallback chain.
    "retry_priority": {
        "name": "envoy.retry_priorities.previous_priorities",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3."
            "PreviousPrioritiesConfig",
            "update_frequency": 1,
        },
    },
    "retry_back_off": {"base_interval": "0.005s", "max_interval": "0.01s"},
}


def pool_retry_policy(update_frequency: int, repicks: int = 5) -> dict[str, Any]:
    """RETRY_POLICY for a level of two keys: a retry avoids the hosts already tried
    (`previous_hosts`, re-picking up to `repicks` times) and the priority load is updated every
    `update_frequency` attempts; three attempts in all."""
    policy = {**RETRY_POLICY, "num_retries": 2}
    policy["retry_priority"] = {
        **RETRY_POLICY["retry_priority"],
        "typed_config": {
            **RETRY_POLICY["retry_priority"]["typed_config"],
            "update_frequency": update_frequency,
        },
    }
    policy["retry_host_predicate"] = [
        {
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3."
                "PreviousHostsPredicate"
            },
        }
    ]
    policy["host_selection_retry_max_attempts"] = repicks
    return policy


# A skewed pool (`pool20`: k1 weighs 20, k2 1), retried with the re-picks the gateway computes for
# it (config/keys.py `repicks`) and with the 5 it used before.
SKEWED = (20, 1)


# x-fact-cluster -> (cluster, retry policy); without the header: `pair`, RETRY_POLICY.
ROUTES = {
    "refused": ("refused", RETRY_POLICY),
    "pool": ("pool", pool_retry_policy(2)),
    "pool-uf1": ("pool", pool_retry_policy(1)),
    "pool20": ("pool20", pool_retry_policy(2, repicks(SKEWED))),
    "pool20-5": ("pool20", pool_retry_policy(2, 5)),
    **{name: (name, RETRY_POLICY) for name in OUTLIER_CLUSTERS},
}


def _bootstrap(down_port: int, up_port: int, a: int, b: int, closed: int) -> dict[str, Any]:
    downstream_filter = _ext_proc(
        down_port,
        {
            "request_header_mode": "SEND",
            "request_body_mode": "BUFFERED",
            "response_header_mode": "SEND",
            "response_body_mode": "NONE",
        },
        metadata_options={
            "receiving_namespaces": {"untyped": [STATE_NS]},
            "forwarding_namespaces": {"untyped": [STATE_NS, ATTEMPT_NS]},
        },
    )
    routes = [
        {
            "match": {
                "prefix": "/",
                "headers": [{"name": "x-fact-cluster", "string_match": {"exact": value}}],
            },
            "route": {"timeout": "0s", "retry_policy": policy, "cluster": cluster},
        }
        for value, (cluster, policy) in ROUTES.items()
    ]
    routes.append(
        {
            "match": {"prefix": "/"},
            "route": {"timeout": "0s", "retry_policy": RETRY_POLICY, "cluster": "pair"},
        }
    )
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager."
        "v3.HttpConnectionManager",
        "stat_prefix": "facts",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "facts",
                    "domains": ["*"],
                    "include_request_attempt_count": True,
                    "include_attempt_count_in_response": True,
                    "routes": routes,
                }
            ]
        },
        "http_filters": [
            {"name": "downstream.ext_proc", "typed_config": downstream_filter},
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
    }
    return {
        "admin": {"address": _addr(0)},
        "static_resources": {
            "listeners": [
                {
                    "name": "facts",
                    "address": _addr(0),
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                _grpc_cluster(down_port),
                _grpc_cluster(up_port),
                _target_cluster("pair", up_port, [("a", a), ("b", b)]),
                _target_cluster("refused", up_port, [("dead", closed), ("b", b)]),
                _pool_cluster("pool", up_port, a, b),
                _pool_cluster("pool20", up_port, a, b, SKEWED),
                *(
                    _target_cluster(
                        name,
                        up_port,
                        [("dead", closed) if name == "eject_refused" else ("a", a), ("b", b)],
                        OUTLIER,
                    )
                    for name in OUTLIER_CLUSTERS
                ),
            ],
        },
    }


REQUEST_BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


@dataclass
class Answer:
    fact_id: str
    status: int
    body: bytes
    headers: dict[str, str]

    def served_by(self) -> str:
        return str(json.loads(self.body)["served_by"])


@dataclass
class Facts:
    url: str
    upstream: UpstreamProcessor
    downstream: DownstreamProcessor
    a: Target
    b: Target
    admin: str  # Envoy's admin URL

    def stat(self, name: str) -> int:
        """One of Envoy's counters or gauges (0 when it has none yet)."""
        url = f"{self.admin}/stats?format=json&filter=^{re.escape(name)}$"
        with urllib.request.urlopen(url, timeout=5) as r:
            found = json.load(r)["stats"]
        return int(found[0]["value"]) if found else 0

    def until_stat(self, name: str, value: int, within_s: float = 5.0) -> None:
        """Wait (bounded) until Envoy's main thread reports `name` == `value`: an ejection is
        decided there, after the attempt that caused it has answered the client."""
        deadline = time.monotonic() + within_s
        while (now := self.stat(name)) != value:
            assert time.monotonic() < deadline, f"{name} stayed {now}, not {value}"
            time.sleep(0.01)

    @contextlib.contextmanager
    def send(
        self,
        fact_id: str,
        acts: dict[str, str],
        cluster: str = "pair",
        extra: dict[str, str] | None = None,
    ) -> Iterator[http.client.HTTPResponse]:
        """Send one request; yields the response once its headers arrived."""
        extra = extra or {}
        headers = {"content-type": "application/json", "x-fact-id": fact_id}
        headers.update({f"x-{k}": v for k, v in extra.items()})
        headers.update({f"x-act-{t}": a for t, a in acts.items()})
        if cluster != "pair":
            headers["x-fact-cluster"] = cluster
        host, port = self.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request("POST", "/v1/chat/completions", body=REQUEST_BODY, headers=headers)
            yield conn.getresponse()
        finally:
            conn.close()

    def post(
        self, acts: dict[str, str], cluster: str = "pair", extra: dict[str, str] | None = None
    ) -> Answer:
        fact_id = uuid.uuid4().hex
        with self.send(fact_id, acts, cluster, extra) as resp:
            try:
                body = resp.read()
            except http.client.IncompleteRead as e:
                body = e.partial
            headers = {k.lower(): v for k, v in resp.getheaders()}
            return Answer(fact_id, resp.status, body, headers)


@contextlib.contextmanager
def running(run_dir: Path) -> Iterator[Facts]:
    """Start the stack, its files in `run_dir`; yield it; stop every part."""
    a, b = Target("a"), Target("b")

    def at_upstream_filter(fact_id: str, request: dict[str, str]) -> None:
        """`midbody-at-upstream-filter`: the upstream filter has `a`'s response headers and
        holds them until `a` has dropped the connection."""
        if request.get("x-act-a") == "midbody-at-upstream-filter":
            a.event(f"upstream filter has {fact_id}").set()
            a.event(f"dropped {fact_id}").wait(STALL_S)

    def at_downstream_filter(fact_id: str, request: dict[str, str]) -> None:
        """`midbody-at-router`: the router has passed `a`'s response headers on to the
        downstream filter, which holds them until `a` has dropped the connection."""
        if request.get("x-act-a") == "midbody-at-router":
            a.event(f"router passed {fact_id}").set()
            a.event(f"dropped {fact_id}").wait(STALL_S)

    upstream = UpstreamProcessor(at_upstream_filter)
    downstream = DownstreamProcessor(at_downstream_filter)
    up_server, up_port = grpc_server(upstream)
    down_server, down_port = grpc_server(downstream)
    config = run_dir / "envoy.yaml"
    config.write_text(yaml.safe_dump(_bootstrap(down_port, up_port, a.port, b.port, free_port())))
    log = (run_dir / "envoy.log").open("wb")
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(argv: list[str]) -> subprocess.Popen[bytes]:
        procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
        return procs[-1]

    try:
        url, admin, _pid = launch_envoy(config, spawn, 1)
        yield Facts(url, upstream, downstream, a, b, admin)
    finally:
        for proc in procs:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.close()
        a.close()
        b.close()
        up_server.stop(0)
        down_server.stop(0)
