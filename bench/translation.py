"""`python -m bench.translation`: the sidecar's CPU per streamed chunk for a translated stream
(an OpenAI client on a Claude model) beside a native one, on this machine.

What it times is the per-chunk work that differs between the two, in one process, with the
real code: a native chat stream in `synchronous` mode meters the chunk (`StreamMeter`) and
answers "continue" (a serialised `ProcessingResponse`); a translated stream meters the
Anthropic chunk, translates it (`MessagesToChatStream`) and answers with the rewritten body.
Observe mode's native stream costs the sidecar the metering only (Envoy never waits), shown
for reference. gRPC transport, Envoy and the client are not included: the end-to-end rows of
`python -m bench --setups translated` measure those (docs/performance.md), and print this
figure after them. Streams of CHUNKS events, one event per
ext_proc message, as a paced stream arrives.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

from bench.upstream import CHUNKS
from gateway_extproc.apis import Api
from gateway_extproc.extproc import messages as msgs
from gateway_extproc.providers.metering import StreamMeter
from gateway_extproc.translate.stream import MessagesToChatStream

REPEATS = 200  # streams timed per variant
WORDS = ("alpha", "beta", "gamma", "delta", "echo", "fox", "golf", "hotel")


def _sse(obj: dict[str, object], event: str | None = None) -> bytes:
    head = b"" if event is None else b"event: " + event.encode() + b"\n"
    return head + b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def anthropic_events() -> list[bytes]:
    usage = {"input_tokens": 12, "output_tokens": 1}
    start = {"id": "msg_bench", "type": "message", "role": "assistant", "model": "claude-x"}
    out = [_sse({"type": "message_start", "message": {**start, "usage": usage}}, "message_start")]
    block = {"type": "text", "text": ""}
    out.append(_sse({"type": "content_block_start", "index": 0, "content_block": block}))
    for i in range(CHUNKS):
        delta = {"type": "text_delta", "text": " " + WORDS[i % len(WORDS)]}
        out.append(_sse({"type": "content_block_delta", "index": 0, "delta": delta}))
    out.append(_sse({"type": "content_block_stop", "index": 0}))
    end = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}
    out.append(_sse({**end, "usage": {"output_tokens": CHUNKS}}))
    out.append(_sse({"type": "message_stop"}))
    return out


def openai_events() -> list[bytes]:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "m"}

    def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse({**base, "choices": [choice]})

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": " " + WORDS[i % len(WORDS)]}) for i in range(CHUNKS)]
    out.append(chunk({}, "stop"))
    usage = {"prompt_tokens": 12, "completion_tokens": CHUNKS, "total_tokens": 12 + CHUNKS}
    out.append(_sse({**base, "choices": [], "usage": usage}))
    return [*out, b"data: [DONE]\n\n"]


def native_observe(events: list[bytes]) -> None:
    meter = StreamMeter(Api.OPENAI_CHAT)
    for event in events:
        meter.feed(event)
    meter.flush()


def native_synchronous(events: list[bytes]) -> None:
    meter = StreamMeter(Api.OPENAI_CHAT)
    for event in events:
        meter.feed(event)
        msgs.response_body_reply().SerializeToString()
    meter.flush()


def translated(events: list[bytes]) -> None:
    meter = StreamMeter(Api.ANTHROPIC_MESSAGES)
    stream = MessagesToChatStream(created=0, include_usage=True)
    last = len(events) - 1
    for i, event in enumerate(events):
        meter.feed(event)
        out = stream.feed(event)
        if i == last:
            out += stream.flush()
        msgs.response_body_reply(msgs.common(body=out)).SerializeToString()
    meter.flush()


def per_chunk_us(run: Callable[[list[bytes]], None], events: list[bytes], repeats: int) -> float:
    """Median over `repeats` streams of process CPU time per event, in microseconds."""
    samples = []
    for _ in range(repeats):
        start = time.process_time_ns()
        run(events)
        samples.append((time.process_time_ns() - start) / len(events) / 1000)
    return statistics.median(samples)


def measure(repeats: int) -> dict[str, float]:
    native, claude = openai_events(), anthropic_events()
    for run, events in ((native_synchronous, native), (translated, claude)):  # warm up
        per_chunk_us(run, events, 3)
    return {
        "native_observe_us_per_chunk": per_chunk_us(native_observe, native, repeats),
        "native_synchronous_us_per_chunk": per_chunk_us(native_synchronous, native, repeats),
        "translated_us_per_chunk": per_chunk_us(translated, claude, repeats),
    }


def render(result: dict[str, float]) -> str:
    lines = [f"translated stream, sidecar CPU per chunk ({CHUNKS}-event streams, in process):"]
    for name, value in result.items():
        lines.append(f"  {name.removesuffix('_us_per_chunk'):<20} {value:6.1f} us")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=REPEATS, help="streams timed per variant")
    args = parser.parse_args()
    print(render(measure(args.repeats)))


if __name__ == "__main__":
    main()
