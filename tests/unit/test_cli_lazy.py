"""`gatewayctl` imports a subcommand's module only when that subcommand runs: `token --print`
(Claude Code's apiKeyHelper) never imports the admin client (grpc, the protobufs, redis), while
`gatewayctl --help` and every subcommand's --help read as when everything was registered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway_extproc.cli import LAZY_GROUPS, build_parser, main
from tests.paths import REPO

# Top-level packages (and this package's admin client) `token --print` has no use for.
HEAVY = ("grpc", "redis", "google.protobuf", "gateway_extproc.admin")
PROBE = f"""
import json, sys
from gateway_extproc.cli import main
status = main(sys.argv[1:])
heavy = sorted({{h for h in {HEAVY!r} for m in sys.modules if m == h or m.startswith(h + ".")}})
print(json.dumps({{"status": status, "heavy": heavy}}), file=sys.stderr)
"""


def imported(argv: list[str], home: Path) -> dict[str, object]:
    """Run gatewayctl in a fresh interpreter: its exit status and which of HEAVY it loaded."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env |= {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found: dict[str, object] = json.loads(done.stderr.strip().splitlines()[-1])
    return found


def test_token_print_imports_no_admin_client(tmp_path: Path) -> None:
    # Not logged in: it exits 1 after its imports, as an apiKeyHelper does before `login`.
    found = imported(["token", "--print"], tmp_path)
    assert found == {"status": 1, "heavy": []}
    # the admin commands still get what they need
    spend = imported(["spend", "--admin-address", "127.0.0.1:9", "--token", "x"], tmp_path)
    assert spend["status"] == 1 and "grpc" in spend["heavy"]  # type: ignore[operator]


def test_help_lists_every_command_as_its_real_parser_does() -> None:
    """`gatewayctl --help` (every lazy group by name and help only) equals the help printed with
    each group registered for real: the lines in LAZY_GROUPS are the real parsers'."""
    listed = build_parser([]).format_help()
    for _, commands in LAZY_GROUPS:
        real = build_parser([next(iter(commands))]).format_help()
        assert real == listed


@pytest.mark.parametrize(
    "command",
    [
        "run",
        "envoy-config",
        "drain-envoy",
        "check-config",
        *(name for _, commands in LAZY_GROUPS for name in commands),
    ],
)
def test_every_subcommand_has_its_own_help(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: gatewayctl {command} ") and "--" in out
