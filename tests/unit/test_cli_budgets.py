"""`gatewayctl budgets` takes its own options first (argparse's REMAINDER used to refuse them)."""

from __future__ import annotations

import pytest

from gateway_extproc.cli import main


@pytest.mark.parametrize("argv", [["budgets", "-h"], ["budgets", "overrides", "-h"]])
def test_budgets_help_is_its_own(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: gatewayctl {' '.join(argv[:-1])}")


def test_a_leading_option_reaches_the_budgets_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["budgets", "--format", "yaml"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "gatewayctl budgets" in err and "--format" in err and "yaml" in err
