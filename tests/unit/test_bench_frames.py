"""bench/frames.py: py-spy stacks to issue 24's categories, on small synthetic stacks in py-spy's
raw format (short site-packages paths, absolute paths for the project and the stdlib)."""

from __future__ import annotations

import pytest

from bench import frames
from bench.frames import OTHER, TRANSPORT

REPO = "/work/repo/gateway_extproc"
STDLIB = "/usr/lib/python3.11"

# The common root of the main thread's stacks: the event loop and the servicer.
LOOP = [
    "<module> (gateway_extproc/server.py:330)",
    f"run ({STDLIB}/asyncio/runners.py:190)",
    f"Runner.run ({STDLIB}/asyncio/runners.py:118)",
]
SERVICER = [*LOOP, f"ExternalProcessor.Process ({REPO}/server.py:96)"]
PROCESSOR = [*SERVICER, f"StreamProcessor.handle ({REPO}/request/processor.py:120)"]
OBSERVER = [*SERVICER, f"StreamObserver.handle ({REPO}/response/stream_observer.py:30)"]


@pytest.mark.parametrize(
    ("stack", "category"),
    [
        # The event loop alone, and the servicer waiting on gRPC: transport.
        (LOOP, TRANSPORT),
        ([*SERVICER, "_AioCall.read (grpc/aio/_call.py:300)"], TRANSPORT),
        # The JWT library under the authenticator; the authenticator's own frames.
        (
            [
                *PROCESSOR,
                f"Authenticator.identify ({REPO}/identity/authenticator.py:80)",
                "decode (jwt/api_jwt.py:200)",
                "verify (cryptography/hazmat/primitives/asymmetric/rsa.py:50)",
            ],
            "JWT and identity",
        ),
        (
            [*SERVICER, f"CallerCheck.refusal ({REPO}/sidecar_auth/caller.py:30)"],
            "JWT and identity",
        ),
        # policy.py is listed before its package (identity/).
        ([*PROCESSOR, f"Policy.allows ({REPO}/identity/policy.py:200)"], "policy"),
        ([*PROCESSOR, f"parse ({REPO}/request/bodyparse.py:20)"], "body parse and bound"),
        ([*PROCESSOR, f"upper_bound ({REPO}/cost/bounds.py:60)"], "body parse and bound"),
        ([*PROCESSOR, f"scan ({REPO}/guardrails/scan.py:40)"], "guardrails"),
        # The event loop's frames under a redis-py read are Redis, not transport.
        (
            [
                *PROCESSOR,
                f"BudgetGate.admit ({REPO}/budgets/gate.py:100)",
                f"Store.reserve ({REPO}/budgets/store.py:200)",
                "Redis.execute_command (redis/asyncio/client.py:600)",
                "Connection.read_response (redis/asyncio/connection.py:500)",
                f"StreamReader.read ({STDLIB}/asyncio/streams.py:700)",
            ],
            "Redis calls (redis-py and the store)",
        ),
        # A redis-py callback run by the loop, with no gateway frame: still Redis.
        (
            [*LOOP, "_RESP2Parser._read (redis/_parsers/resp2.py:40)"],
            "Redis calls (redis-py and the store)",
        ),
        # The scripts' own pipelined connection is the Redis client too, not budget logic.
        (
            [
                *PROCESSOR,
                f"BudgetGate.admit ({REPO}/budgets/gate.py:100)",
                f"_Protocol.send ({REPO}/budgets/pipe.py:89)",
            ],
            "Redis calls (redis-py and the store)",
        ),
        (
            [*LOOP, f"_Protocol.data_received ({REPO}/budgets/pipe.py:57)"],
            "Redis calls (redis-py and the store)",
        ),
        (
            [*PROCESSOR, f"BudgetGate.admit ({REPO}/budgets/gate.py:100)"],
            "budget logic (matching, windows, settle)",
        ),
        (
            [
                *PROCESSOR,
                f"reply ({REPO}/extproc/messages.py:40)",
                "Message.CopyFrom (google/protobuf/message.py:1)",
            ],
            "state and ext_proc replies",
        ),
        ([*PROCESSOR], "state and ext_proc replies"),
        ([*OBSERVER, f"decode ({REPO}/handoff.py:100)"], "state and ext_proc replies"),
        (
            [*OBSERVER, f"SseDecoder.feed ({REPO}/providers/sse.py:50)"],
            "observer's per-message work (metering)",
        ),
        ([*OBSERVER], "observer's per-message work (metering)"),
        # The audit line: on the loop, and in its writer thread (waiting on the queue included).
        (
            [
                *OBSERVER,
                f"write_record ({REPO}/response/audit.py:30)",
                f"AuditSink.write ({REPO}/audit.py:200)",
            ],
            "audit",
        ),
        (
            [
                f"Thread._bootstrap ({STDLIB}/threading.py:1002)",
                f"Thread.run ({STDLIB}/threading.py:982)",
                f"_Writer._run ({REPO}/audit.py:240)",
                f"Queue.get ({STDLIB}/queue.py:171)",
                f"Condition.wait ({STDLIB}/threading.py:327)",
            ],
            "audit",
        ),
        (
            [
                *OBSERVER,
                f"Telemetry.record ({REPO}/observability/metrics.py:100)",
                "Histogram.record (opentelemetry/sdk/metrics/_internal/instrument.py:1)",
            ],
            "telemetry",
        ),
        (
            [
                f"Thread.run ({STDLIB}/threading.py:982)",
                "BatchProcessor.worker (opentelemetry/sdk/_shared_internal/__init__.py:1)",
            ],
            "telemetry",
        ),
        # A Python thread running native code: only threading's frames are seen.
        ([f"Thread.run ({STDLIB}/threading.py:982)"], TRANSPORT),
        # The no-op's servicer: all it costs is transport.
        ([*LOOP, "Noop.Process (/work/repo/bench/noop.py:90)"], TRANSPORT),
        # Native frames (py-spy --native) of grpc's Cython core and uvloop.
        (
            [*LOOP, "__pyx_f_4grpc_7_cython_6cygrpc_foo (cygrpc.cpython-311-x86_64-linux-gnu.so)"],
            TRANSPORT,
        ),
        # Nothing known at all, and an unparseable frame.
        (["main (/somewhere/else.py:1)"], OTHER),
        (["??"], OTHER),
        ([], OTHER),
    ],
)
def test_categorise(stack: list[str], category: str) -> None:
    assert frames.categorise(stack) == category


def test_frame_path() -> None:
    assert frames.frame_path("f (redis/client.py:10)") == "/redis/client.py"
    assert frames.frame_path(f"f ({REPO}/audit.py:1)") == f"{REPO}/audit.py"
    assert frames.frame_path("<lambda> (<string>:1)") == "/<string>"
    assert frames.frame_path("native_fn (libgrpc.so)") == "/libgrpc.so"
    assert frames.frame_path("no parentheses") == ""


def test_every_category_has_a_place_in_the_table() -> None:
    named = [name for name, _ in frames.CATEGORIES]
    assert len(set(named)) == len(named)
    assert sorted([*named, OTHER]) == sorted(frames.ORDER)


def test_parse_and_breakdown() -> None:
    raw = "\n".join(
        [
            ";".join([*PROCESSOR, f"parse ({REPO}/request/bodyparse.py:20)"]) + " 7",
            ";".join(LOOP) + " 3",
            ";".join([*OBSERVER, f"write_record ({REPO}/response/audit.py:30)"]) + " 2",
            ";".join(LOOP) + " 1",  # the same stack twice: summed
            "",
            "garbage-without-count",
        ]
    )
    parsed = list(frames.parse_raw(raw))
    assert [n for _, n in parsed] == [7, 3, 2, 1]
    counts = frames.breakdown(parsed)
    assert counts["body parse and bound"] == 7
    assert counts[TRANSPORT] == 4
    assert counts["audit"] == 2
    assert set(counts) == set(frames.ORDER)  # every category present, zero when unseen
    assert counts["guardrails"] == 0
    assert sum(counts.values()) == 13
