"""`gatewayctl env`'s output (login/commands.py): each shell's syntax, values quoted so any
token survives; the sh lines run through a real sh."""

from __future__ import annotations

import subprocess

from gateway_extproc.login.commands import env_lines, sdk_variables

AWKWARD = "a'b\"c$d`e\\f g"


def test_sh_lines_survive_a_real_shell() -> None:
    variables = sdk_variables("http://gw:1/v1", "http://gw:1", AWKWARD)
    script = "\n".join(env_lines("sh", variables, ("ANTHROPIC_API_KEY",)))
    out = subprocess.run(
        [
            "sh",
            "-c",
            script + '\nprintf "%s|%s|%s|${ANTHROPIC_API_KEY-unset}" '
            '"$OPENAI_API_KEY" "$ANTHROPIC_AUTH_TOKEN" "$OPENAI_BASE_URL"',
        ],
        env={"ANTHROPIC_API_KEY": "sk-ant-real", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == f"{AWKWARD}|{AWKWARD}|http://gw:1/v1|unset"


def test_fish_and_powershell_syntax() -> None:
    variables = {"OPENAI_API_KEY": "it's"}
    assert env_lines("fish", variables, ("ANTHROPIC_API_KEY",)) == [
        "set -gx OPENAI_API_KEY 'it\\'s';",
        "set -e ANTHROPIC_API_KEY;",
    ]
    assert env_lines("powershell", variables, ("ANTHROPIC_API_KEY",)) == [
        "$env:OPENAI_API_KEY = 'it''s'",
        "Remove-Item Env:ANTHROPIC_API_KEY -ErrorAction SilentlyContinue",
    ]


def test_the_variables_the_sdks_read() -> None:
    assert sdk_variables("o", "a", "t") == {
        "OPENAI_BASE_URL": "o",
        "OPENAI_API_KEY": "t",
        "ANTHROPIC_BASE_URL": "a",
        "ANTHROPIC_AUTH_TOKEN": "t",
    }
