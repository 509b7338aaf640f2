"""`GET /.well-known/llm-gateway` on the gateway listener: the public, secret-free document
`gatewayctl login` and `gatewayctl env` read (config/login.py `discovery_document`), answered by
Envoy itself. The route turns every ext_proc filter off, so the request never reaches the
sidecar: no identity is needed to read it, and it costs no sidecar work.

Pure: the gateway config in, the route out.
"""

from __future__ import annotations

import json
from typing import Any

from gateway_extproc.config.gateway import GatewayConfig
from gateway_extproc.config.login import WELL_KNOWN_PATH, discovery_document
from gateway_extproc.envoy.filters import ext_proc_disabled

DETAILS = "direct_response"  # Envoy's response code details for a route's direct response


def well_known_route(config: GatewayConfig) -> dict[str, Any]:
    body = json.dumps(discovery_document(config.login), separators=(",", ":"), sort_keys=True)
    return {
        "name": "well_known_llm_gateway",
        "match": {"path": WELL_KNOWN_PATH},
        "direct_response": {"status": 200, "body": {"inline_string": body}},
        "response_headers_to_add": [
            {
                "header": {"key": "content-type", "value": "application/json"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            },
            {
                "header": {"key": "cache-control", "value": "public, max-age=300"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            },
        ],
        "typed_per_filter_config": ext_proc_disabled(config),
    }
