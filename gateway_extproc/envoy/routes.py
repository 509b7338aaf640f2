"""The gateway listener's routes: every request goes to the cluster the request phase chose
(its routing header), with no overall timeout; in observe mode a second route for the requests
whose response the request filter meters itself.

Pure: the gateway config in, the route list out.
"""

from __future__ import annotations

from typing import Any

from gateway_extproc import handoff
from gateway_extproc.config.fallback import ChainCluster, FallbackConfig, Trigger
from gateway_extproc.config.gateway import GatewayConfig
from gateway_extproc.config.keys import repicks
from gateway_extproc.envoy.filters import observer_disabled
from gateway_extproc.request.forward import (
    METADATA_RESPONSE_HEADERS,
    RESPONSE_METERED_HERE,
    RESPONSE_METERED_KEY,
)
from gateway_extproc.request.route import CLUSTER_HEADER


def _response_headers_from_metadata(config: GatewayConfig) -> list[dict[str, Any]]:
    """Observe mode: the response headers the request phase decided (request id, budget
    report), copied by Envoy from dynamic metadata; an absent key adds nothing."""
    if config.metering.synchronous:
        return []
    names = METADATA_RESPONSE_HEADERS
    return [
        {
            "header": {"key": name, "value": f"%DYNAMIC_METADATA({handoff.NAMESPACE}:{name})%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }
        for name in names
    ]


# Envoy's retry conditions for each trigger (a per-try timeout is retried whenever it is set).
_RETRY_ON = {
    Trigger.CONNECT_FAILURE: "connect-failure",
    Trigger.RESET: "reset",
    Trigger.SERVER_ERROR: "5xx",
    Trigger.RATE_LIMITED: "retriable-status-codes",
}


# Re-picks never below the count measured with mild weights (fact 8), whatever `keys.repicks` says.
MIN_REPICKS = 5


def retry_policy(
    fallback: FallbackConfig, num_retries: int, per_target: int = 1, host_repicks: int = 0
) -> dict[str, Any]:
    """A chained request's retry policy: each retry moves to the next priority level, i.e. the
    next target of the chain (`previous_priorities`, docs/fallback.md fact 3). With key pools
    (`per_target` > 1) a level is left after `per_target` attempts, each retry avoiding the keys
    already tried (`previous_hosts`, re-picking up to `host_repicks` times; fact 8)."""
    policy: dict[str, Any] = {
        "retry_on": ",".join(v for k, v in _RETRY_ON.items() if k in fallback.on) or "reset",
        "num_retries": num_retries,
        "retry_priority": {
            "name": "envoy.retry_priorities.previous_priorities",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.priority."
                "previous_priorities.v3.PreviousPrioritiesConfig",
                "update_frequency": per_target,
            },
        },
        "retry_back_off": {"base_interval": "0.01s", "max_interval": "0.1s"},
    }
    if per_target > 1:
        policy["retry_host_predicate"] = [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3."
                    "PreviousHostsPredicate"
                },
            }
        ]
        policy["host_selection_retry_max_attempts"] = max(MIN_REPICKS, host_repicks)
    if Trigger.RATE_LIMITED in fallback.on:
        policy["retriable_status_codes"] = [429]
    if Trigger.FIRST_BYTE_TIMEOUT in fallback.on:  # nothing before the first byte: next target
        policy["per_try_timeout"] = f"{fallback.first_byte_timeout_s:g}s"
    return policy


def _repicks(config: GatewayConfig, cluster: ChainCluster) -> int:
    """The re-picks a retry of `cluster` needs to reach a key not tried yet in the level of
    each target it tries (`keys.repicks`), the largest: one number per route."""
    weights = (
        tuple(k.weight for k in p.keys) if (p := config.providers.get(t.provider)) else ()
        for t in cluster.targets
    )
    return max((repicks(w) for w in weights), default=0)


def _chained(config: GatewayConfig, route: dict[str, Any]) -> list[dict[str, Any]]:
    """The route for the requests the request phase sent to a chain cluster (one per chain and
    policy variant: `num_retries` follows its length), with the retry policy; before `route`."""
    out = []
    fallback = config.fallback
    for name, chain in fallback.clusters():
        # The targets the route tries and their pools: what the request phase counts with.
        cluster = fallback.envoy_cluster(name, chain[0].model, chain)
        header = {"name": CLUSTER_HEADER, "string_match": {"exact": name}}
        match = {**route["match"], "headers": [header]}
        action = {
            **route["route"],
            "retry_policy": retry_policy(
                fallback, cluster.tries() - 1, cluster.per_target, _repicks(config, cluster)
            ),
        }
        chained = {**route, "match": match, "route": action}
        chained.pop("name", None)
        out.append(chained)
    return out


def routes(config: GatewayConfig, idle: str) -> list[dict[str, Any]]:
    """The provider route (cluster from the request phase's routing header). Observe mode adds
    the same route for a request whose response the request filter meters (its body reply sets
    `RESPONSE_METERED_KEY` in dynamic metadata and clears the route cache, so Envoy re-matches):
    the observer is off there, and the processor sets the response headers itself."""
    match = {"prefix": "/", "headers": [{"name": CLUSTER_HEADER, "present_match": True}]}
    action = {
        "cluster_header": CLUSTER_HEADER,
        # LLM responses stream for minutes: no overall timeout; an idle stream is still cut.
        "timeout": "0s",
        "idle_timeout": idle,
        "auto_host_rewrite": True,
    }
    route: dict[str, Any] = {
        "match": match,
        "route": action,
        # The routing header is the gateway's own: never sent upstream.
        "request_headers_to_remove": [CLUSTER_HEADER],
        "response_headers_to_add": _response_headers_from_metadata(config),
    }
    if config.metering.synchronous:
        return [*_chained(config, route), route]
    metered_here = {
        "filter": handoff.NAMESPACE,
        "path": [{"key": RESPONSE_METERED_KEY}],
        "value": {"string_match": {"exact": RESPONSE_METERED_HERE}},
    }
    one_stream = {
        "name": "response_on_request_stream",
        "match": {**match, "dynamic_metadata": [metered_here]},
        "route": action,
        "request_headers_to_remove": [CLUSTER_HEADER],
        "typed_per_filter_config": observer_disabled(),
    }
    return [*_chained(config, one_stream), one_stream, *_chained(config, route), route]
