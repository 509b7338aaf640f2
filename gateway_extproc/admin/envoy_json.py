"""JSON over HTTP for the admin API: an Envoy listener with the gRPC-JSON transcoder in front of
sidecar worker 0's admin gRPC port, so `curl` and dashboards work. Pure (dicts for the bootstrap).

`POST /gateway.admin.v1.AdminService/<Method>` (and `.../ReconciliationService/<Method>`) with
the request message as JSON (proto3 JSON names: `groupBy`, `scopeValue`, ...) and
`authorization: Bearer <token>`, which Envoy passes on as gRPC metadata; gRPC errors come back
as HTTP statuses with a JSON `{code, message}` body. With `admin_api.tls` the listener serves
the same certificate (and asks for client certificates when the gRPC port does) and reaches
worker 0 over `admin_api.socket`.

With the spend page on, the same listener routes `/ui/` to worker 0's page (plain HTTP/1.1 on
a loopback port, or a unix socket with TLS) and redirects `/` there; the public listener never
routes to either.
"""

from __future__ import annotations

import base64
from typing import Any

from google.protobuf import descriptor_pb2, timestamp_pb2

from gateway_extproc.admin._generated.gateway.admin.v1 import admin_pb2 as pb
from gateway_extproc.admin.api import SERVICES
from gateway_extproc.admin.tls import AdminTls

CLUSTER = "gateway_admin_api"
PAGE_CLUSTER = "gateway_spend_page"
_T = "type.googleapis.com/envoy."
# RunReconciliation pulls two reports per provider, paginated, with backoff: minutes at worst.
_TIMEOUTS = {SERVICES[0]: "60s", SERVICES[1]: "300s"}


def descriptor_set() -> bytes:
    """The admin API's protos and their imports, as the transcoder needs them."""
    files = descriptor_pb2.FileDescriptorSet()
    for module in (timestamp_pb2, pb):
        module.DESCRIPTOR.CopyToProto(files.file.add())
    return bytes(files.SerializeToString())


def _socket(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _downstream_tls(tls: AdminTls) -> dict[str, Any]:
    """The listener's TLS: the admin API's own certificate; with a client CA, a client
    certificate signed by it is required (as on the gRPC port). Read at start."""
    common: dict[str, Any] = {
        "tls_certificates": [
            {
                "certificate_chain": {"filename": tls.cert_file},
                "private_key": {"filename": tls.key_file},
            }
        ],
        "alpn_protocols": ["h2", "http/1.1"],
    }
    context: dict[str, Any] = {
        "@type": _T + "extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": common,
    }
    if tls.client_ca_file is not None:
        common["validation_context"] = {"trusted_ca": {"filename": tls.client_ca_file}}
        context["require_client_certificate"] = True
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def page_routes() -> list[dict[str, Any]]:
    """`/ui/...` to the spend page (streamed CSVs: no route timeout cut below a minute), and
    `/` to `/ui/` with a 302 (Envoy's default 301 is cached by browsers for good, so `/` would
    stay a redirect after the page is turned off or moved)."""
    return [
        {"match": {"prefix": "/ui"}, "route": {"cluster": PAGE_CLUSTER, "timeout": "60s"}},
        {"match": {"path": "/"}, "redirect": {"path_redirect": "/ui/", "response_code": "FOUND"}},
    ]


def listener(
    host: str, port: int, tls: AdminTls | None = None, page: bool = False
) -> dict[str, Any]:
    transcoder = {
        "name": "envoy.filters.http.grpc_json_transcoder",
        "typed_config": {
            "@type": _T + "extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
            "proto_descriptor_bin": base64.b64encode(descriptor_set()).decode(),
            "services": list(SERVICES),
            # POST /gateway.admin.v1.AdminService/<Method> (and ReconciliationService), JSON body
            "auto_mapping": True,
            "convert_grpc_status": True,
            "print_options": {"add_whitespace": True, "always_print_primitive_fields": True},
        },
    }
    manager = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": _T + "extensions.filters.network.http_connection_manager.v3."
            "HttpConnectionManager",
            "stat_prefix": "admin_api_json",
            "codec_type": "AUTO",
            "route_config": {
                "name": "admin_api",
                "virtual_hosts": [
                    {
                        "name": "admin_api",
                        "domains": ["*"],
                        "routes": [
                            *(
                                {
                                    "match": {"prefix": f"/{service}/"},
                                    "route": {"cluster": CLUSTER, "timeout": _TIMEOUTS[service]},
                                }
                                for service in SERVICES
                            ),
                            *(page_routes() if page else ()),
                        ],
                    }
                ],
            },
            "http_filters": [
                transcoder,
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": _T + "extensions.filters.http.router.v3.Router"},
                },
            ],
        },
    }
    chain: dict[str, Any] = {"filters": [manager]}
    if tls is not None:
        chain["transport_socket"] = _downstream_tls(tls)
    return {"name": "admin_api_json", "address": _socket(host, port), "filter_chains": [chain]}


def cluster(host: str, port: int, unix_socket: str | None = None) -> dict[str, Any]:
    """Worker 0's admin port, or its plaintext unix socket (`admin_api.socket`: with TLS on the
    port, Envoy - which holds no client certificate - goes through the pod-local socket)."""
    options = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    address = _socket(host, port) if unix_socket is None else {"pipe": {"path": unix_socket}}
    return {
        "name": CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            options: {
                "@type": "type.googleapis.com/" + options,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }


def page_cluster(host: str, port: int, unix_socket: str | None = None) -> dict[str, Any]:
    """Worker 0's spend page: HTTP/1.1 on a loopback port, or its unix socket (admin TLS)."""
    address = _socket(host, port) if unix_socket is None else {"pipe": {"path": unix_socket}}
    return {
        "name": PAGE_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": PAGE_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }
