"""What the bench's helper processes (`upstream`, `noop`) share: the command line and the loop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any


def run_service(
    prog: str,
    description: str | None,
    serve: Callable[[Path | None], Coroutine[Any, Any, None]],
    argv: list[str] | None = None,
) -> None:
    """`python -m PROG --port-file F`: run `serve(port_file)` on uvloop when it is installed."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--port-file", type=Path, default=None)
    args = parser.parse_args(argv)
    run: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        run = uvloop.run
    run(serve(args.port_file))
