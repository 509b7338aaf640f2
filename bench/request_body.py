"""Repeated JSON keys: the cost of refusing them versus always re-serialising the parsed body,
pure CPU, no processes (part of `make bench`; alone: `python -m bench.request_body`).

For each body, CPU time (`time.thread_time`, median of the runs) of:
- the parse as it stands: the structural pass, `orjson.loads` and the field checks;
- refuse: what the request path adds to find a repeated key, `jsonshape.count_values` (the
  structural pass already returns its count); and, for a body that is refused, naming the key
  (`jsonshape.repeated_key`, the standard library's parser);
- re-serialise: `orjson.dumps` of the parsed body, plus serialising the body mutation that would
  carry it back to Envoy on every request (grpc serialises replies on the event loop).
Bodies under `bodyparse.OFFLOAD_BYTES` are parsed on the event loop, larger ones in the parsing
thread; the reply is serialised on the loop either way.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from gateway_extproc.apis import Api
from gateway_extproc.extproc import messages as msgs
from gateway_extproc.providers.inbound import load_body, request_of
from gateway_extproc.request.bodyparse import OFFLOAD_BYTES
from gateway_extproc.request.jsonshape import check_shape, count_values, repeated_key

MIB = 1024 * 1024


def _transcript(size: int) -> dict[str, Any]:
    """An agent's chat transcript: a user turn, a tool call, its result, repeated."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a coding agent. " * 8}]
    turn = 0
    while len(orjson.dumps(messages)) < size:
        call = f"call_{turn}"
        path = f"src/module_{turn}.py"
        messages += [
            {"role": "user", "content": f"Look at {path} and fix the failing test, please. " * 3},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call,
                        "type": "function",
                        "function": {"name": "read_file", "arguments": f'{{"path": "{path}"}}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call, "content": "def f(x):\n    return x + 1\n" * 12},
        ]
        turn += 1
    return {"model": "gpt-4o", "messages": messages, "max_completion_tokens": 4096}


def bodies() -> dict[str, tuple[Api, bytes]]:
    small = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Summarise these notes in three bullet points. " * 4},
        ],
        "temperature": 0.2,
        "max_completion_tokens": 300,
    }
    prose = 'The quarterly report covers revenue, churn and the migration, "quoted" é ✓.\n'
    text = {"model": "gpt-4o", "messages": [{"role": "user", "content": prose * (32 * MIB // 80)}]}
    # The most values the default caps allow (limits.max_json_values 200,000): token-id inputs.
    ids = {"model": "text-embedding-3-small", "input": [list(range(96)) for _ in range(2040)]}
    return {
        "small chat (~0.4 KB)": (Api.OPENAI_CHAT, orjson.dumps(small)),
        "agent transcript, 100 KB": (Api.OPENAI_CHAT, orjson.dumps(_transcript(100_000))),
        "agent transcript, 1 MB": (Api.OPENAI_CHAT, orjson.dumps(_transcript(1_000_000))),
        "32 MiB of prose in one message": (Api.OPENAI_CHAT, orjson.dumps(text)),
        "200,000 values (token ids)": (Api.OPENAI_EMBEDDINGS, orjson.dumps(ids)),
    }


def _cpu_us(fn: Callable[[], object], runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.thread_time()
        fn()
        samples.append((time.thread_time() - start) * 1e6)
    return statistics.median(samples)


def _reply(body: dict[str, Any]) -> bytes:
    new = orjson.dumps(body)
    common = msgs.common(set_headers={"content-length": str(len(new))}, body=new)
    return msgs.request_body_reply(common).SerializeToString()


def measure() -> dict[str, object]:
    out: dict[str, object] = {}
    for name, (api, raw) in bodies().items():
        runs = 200 if len(raw) < 200_000 else 10 if len(raw) < 4 * MIB else 3
        body = load_body(raw)

        def parse(api: Api = api, raw: bytes = raw) -> object:
            check_shape(raw, max_depth=128, max_values=200_000)
            return request_of(api, load_body(raw))

        repeated = raw[:-1] + b', "model": "x"}'
        out[name] = {
            "bytes": len(raw),
            "where": "event loop" if len(raw) < OFFLOAD_BYTES else "parsing thread",
            "parse_us": round(_cpu_us(parse, runs), 1),
            "refuse_us": round(_cpu_us(lambda b=body: count_values(b), runs), 1),
            "name_the_key_us": round(_cpu_us(lambda r=repeated: repeated_key(r), runs), 1),
            "dumps_us": round(_cpu_us(lambda b=body: orjson.dumps(b), runs), 1),
            "dumps_and_reply_us": round(_cpu_us(lambda b=body: _reply(b), runs), 1),
        }
    return {"runs": "median", "bodies": out}


def render(result: dict[str, object]) -> str:
    bodies_ = result["bodies"]
    assert isinstance(bodies_, dict)
    lines = [
        "Repeated keys: CPU per request (µs), refuse (count the parsed values) vs re-serialise",
        f"  {'body':<32} {'bytes':>11} {'parsed on':<15} {'parse':>9} {'refuse':>9} "
        f"{'name key':>9} {'dumps':>9} {'+reply':>9}",
    ]
    for name, r in bodies_.items():
        lines.append(
            f"  {name:<32} {r['bytes']:>11,} {r['where']:<15} {r['parse_us']:>9.1f} "
            f"{r['refuse_us']:>9.1f} {r['name_the_key_us']:>9.1f} {r['dumps_us']:>9.1f} "
            f"{r['dumps_and_reply_us']:>9.1f}"
        )
    return "\n".join(lines)


def main() -> int:
    print(render(measure()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
