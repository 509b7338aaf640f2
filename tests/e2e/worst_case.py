"""Budget arithmetic for end-to-end tests, written independently of the gateway's code: the
documented bound (docs/budgets.md, "What is reserved") from literal prices, and a burst that keeps
every admitted response open until every decision is made, so admission counts are exact."""

from __future__ import annotations

import asyncio
import json
import math
import time
import urllib.request
from fractions import Fraction
from typing import Any

import httpx

# The documented margins (docs/budgets.md): per request, per message, and when tools are declared.
PER_REQUEST, PER_MESSAGE, TOOLS = 16, 8, 512

# Literal list prices, USD per 1M tokens = micro-dollars per token (tests/e2e checks them against
# the catalog in test_budget_bounds.py::test_the_literal_prices_are_the_catalogs).
GPT4O = {"input": Fraction("2.50"), "output": Fraction("10.00")}
GPT4O_MINI = {"input": Fraction("0.15"), "output": Fraction("0.60")}
GPT4O_PRIORITY = {"input": Fraction("4.25"), "output": Fraction("17.00")}
EMBEDDING_3_SMALL = {"input": Fraction("0.02"), "output": Fraction(0)}


def text_bytes(value: Any) -> int:
    """UTF-8 bytes of every key and string, and the text of every number."""
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    if isinstance(value, dict):
        return sum(len(k.encode("utf-8")) + text_bytes(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(text_bytes(v) for v in value)
    if value is None:
        return 0
    return len(json.dumps(value))


def input_bound(body: dict[str, Any]) -> int:
    """The documented input bound for a text-only body."""
    items = [
        item
        for key in ("messages", "input")
        if isinstance(body.get(key), list)
        for item in body[key]
        if isinstance(item, dict)
    ]
    margin = PER_REQUEST + PER_MESSAGE * len(items) + (TOOLS if body.get("tools") else 0)
    return text_bytes(body) + margin


def estimate_micros(input_tokens: int, output_tokens: int, price: dict[str, Fraction]) -> int:
    """Every input token at the input price, every output token at the output price, rounded up."""
    return math.ceil(input_tokens * price["input"] + output_tokens * price["output"])


def cost_micros(input_tokens: int, output_tokens: int, price: dict[str, Fraction]) -> int:
    """A request's cost as the catalog prices it, rounded half up once."""
    exact = input_tokens * price["input"] + output_tokens * price["output"]
    return int(exact + Fraction(1, 2))


def mock_input_tokens(field: Any) -> int:
    """The mock provider's input count for a text field: ceil(compact UTF-8 JSON / 4)."""
    compact = json.dumps(field, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return max(1, math.ceil(len(compact) / 4))


def held(mock_base: str, name: str) -> int:
    with urllib.request.urlopen(f"{mock_base}/_mock/held/{name}", timeout=5) as r:
        return int(json.load(r)["held"])


def release(mock_base: str, name: str) -> None:
    req = urllib.request.Request(f"{mock_base}/_mock/release/{name}", method="POST")
    with urllib.request.urlopen(req, timeout=5):
        pass


def held_burst(
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    count: int,
    mock_base: str,
    hold: str,
    timeout: float = 120,
) -> list[httpx.Response]:
    """`count` concurrent POSTs whose admitted responses the mock holds (x-mock-hold) until every
    request has been decided - answered by the gateway, or held at the mock - then released."""

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
            calls = [
                asyncio.ensure_future(
                    client.post(url, json=body, headers={**headers, "x-mock-hold": hold})
                )
                for _ in range(count)
            ]
            deadline = time.monotonic() + timeout
            while True:
                answered = sum(1 for c in calls if c.done())
                waiting = await asyncio.to_thread(held, mock_base, hold)
                if answered + waiting == count:
                    break
                assert time.monotonic() < deadline, f"{answered} answered, {waiting} held"
                await asyncio.sleep(0.1)
            await asyncio.to_thread(release, mock_base, hold)
            return list(await asyncio.gather(*calls))

    return asyncio.run(run())
