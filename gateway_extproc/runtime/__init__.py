"""The sidecar's runtime: the context every stream shares, built from configuration (`context`,
over the process's budget `services`), and swapped atomically on reload (`reload`: `Runtime`).
"""

from gateway_extproc.runtime.context import (
    DEV_ATTRIBUTES,
    build_context,
    close_context,
    start_context,
)
from gateway_extproc.runtime.reload import Runtime, watched_files
from gateway_extproc.runtime.services import (
    build_gate,
    build_services,
    connect_store,
    gate_settings,
)

__all__ = [
    "DEV_ATTRIBUTES",
    "Runtime",
    "build_context",
    "build_gate",
    "build_services",
    "close_context",
    "connect_store",
    "gate_settings",
    "start_context",
    "watched_files",
]
