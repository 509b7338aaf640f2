"""The skip policy run on a throwaway suite in a pytest subprocess: an unexpected skip, xfail or
xpass fails the run and is listed; an allowed one passes with its reason; the count is printed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.paths import REPO

SUITE = """
import pytest

def test_passes():
    pass

def test_skips():
    pytest.skip("no frobnicator here")

@pytest.mark.skipif(True, reason="marked away")
def test_marked():
    pass

@pytest.mark.xfail(reason="known broken")
def test_xfails():
    assert False

@pytest.mark.xfail(reason="thought broken")
def test_xpasses():
    pass

@pytest.mark.parametrize("n", [])
def test_empty(n):
    pass
"""
NOT_RUN = ["test_skips", "test_marked", "test_xfails", "test_xpasses", "test_empty"]


def run_suite(tmp_path: Path, allowed: dict[str, str], suite: str = SUITE) -> tuple[int, str]:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_suite.py").write_text(suite)
    (tmp_path / "conftest.py").write_text(
        "from tests.skip_policy import SkipPolicy\n\n"
        "def pytest_configure(config):\n"
        f"    config.pluginmanager.register(SkipPolicy({allowed!r}), 'skip-policy')\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(tmp_path)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.returncode, result.stdout


def test_unexpected_skips_and_xfails_fail_the_run(tmp_path: Path) -> None:
    status, out = run_suite(tmp_path, {})
    assert status == 1, out
    assert "1 tests ran; 0 skipped as allowed; 5 did not run and are not allowed to skip" in out
    for name in NOT_RUN:
        assert f"NOT RUN test_suite.py::{name}" in out, out
    assert "no frobnicator here" in out and "xfailed: known broken" in out
    assert "xpassed: thought broken" in out


def test_allowed_skips_pass_and_say_why(tmp_path: Path) -> None:
    allowed = {f"test_suite.py::{name}": f"{name} is fine" for name in NOT_RUN}
    status, out = run_suite(tmp_path, allowed)
    assert status == 0, out
    assert "1 tests ran; 5 skipped as allowed; 0 did not run" in out
    assert "allowed skip test_suite.py::test_marked: test_marked is fine" in out
    assert "NOT RUN" not in out


def test_a_suite_that_all_runs_passes_and_counts(tmp_path: Path) -> None:
    status, out = run_suite(tmp_path, {}, "def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    assert status == 0, out
    assert "2 tests ran; 0 skipped as allowed; 0 did not run" in out


def test_failures_keep_their_status(tmp_path: Path) -> None:
    status, out = run_suite(tmp_path, {}, "def test_a():\n    assert False\n")
    assert status == 1, out
    assert "1 tests ran;" in out
