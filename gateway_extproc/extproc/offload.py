"""The process's one body-parsing thread: large bodies are parsed (and scanned) off the event loop
that serves every other stream. Shared by both phases: the request body's parse and guardrails
scan (request/bodyparse.py, request/prompt_checks.py), a large response's parse (the observer).

Why one thread and where the threshold comes from: request/bodyparse.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from asyncio import Future
from collections.abc import Callable
from typing import Any, TypeVar

OFFLOAD_BYTES = 64 * 1024
T = TypeVar("T")


@functools.cache
def _parser_thread() -> concurrent.futures.ThreadPoolExecutor:
    """The process's one body-parsing thread (started on first use; joined at interpreter exit)."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="body-parse")


async def off_loop_if_large(size: int, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` inline for a small body, else in the body-parsing thread (the guardrails'
    scan of a large prompt goes there too: ~50 ms per MB of prose, README "Guardrails")."""
    if size < OFFLOAD_BYTES:
        return fn(*args)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_parser_thread(), fn, *args)


def run_off_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., T], *args: Any) -> Future[T]:
    """`fn(*args)` in the body-parsing thread, as a future of `loop` (the observer hands a
    large response's parse there and ends the request when it is done)."""
    return loop.run_in_executor(_parser_thread(), fn, *args)
