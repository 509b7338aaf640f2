"""A green run means every collected test ran: a pytest plugin that fails the session on any
skip or xfail that is not on an explicit allow-list, and says how many tests ran.

A test that skips itself (a missing tool, missing data, an empty parameter set) or is marked
xfail proves nothing, yet pytest reports it beside the passes with exit status 0. Here each one
is either allowed by node id, with the reason it is fine, or it turns the exit status into
"tests failed" and is listed at the end of the run.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest


def _why(report: pytest.TestReport) -> str:
    if hasattr(report, "wasxfail"):
        outcome = "xfailed" if report.skipped else "xpassed"
        return f"{outcome}: {report.wasxfail or 'no reason given'}"
    if isinstance(report.longrepr, tuple):  # (file, line, "Skipped: reason")
        return str(report.longrepr[2])
    return str(report.longrepr)


class SkipPolicy:
    """Registered once per session by tests/conftest.py (`allowed`: node id -> reason; a key
    also allows every parametrization of that test)."""

    def __init__(self, allowed: Mapping[str, str]) -> None:
        self.allowed = dict(allowed)
        self.ran = 0  # tests whose body ran (passed or failed)
        self.allowed_skips: list[tuple[str, str]] = []  # (node id, why it is allowed)
        self.unexpected: list[tuple[str, str]] = []  # (node id, what pytest said)

    def _allowance(self, nodeid: str) -> str | None:
        for key, reason in self.allowed.items():
            if nodeid == key or nodeid.startswith(key + "["):
                return reason
        return None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        did_not_count = report.skipped or hasattr(report, "wasxfail")  # xfail or xpass
        if report.when == "call" and not did_not_count:
            self.ran += 1
        if not did_not_count:
            return
        allowance = self._allowance(report.nodeid)
        if allowance is None:
            self.unexpected.append((report.nodeid, _why(report)))
        else:
            self.allowed_skips.append((report.nodeid, allowance))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.unexpected and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        tr = terminalreporter
        tr.write_sep("=", "skip policy")
        tr.write_line(
            f"{self.ran} tests ran; {len(self.allowed_skips)} skipped as allowed; "
            f"{len(self.unexpected)} did not run and are not allowed to skip"
        )
        for nodeid, reason in self.allowed_skips:
            tr.write_line(f"allowed skip {nodeid}: {reason}")
        for nodeid, what in self.unexpected:
            tr.write_line(f"NOT RUN {nodeid}: {what}", red=True, bold=True)
        if self.unexpected:
            tr.write_line(
                "the run fails: make the test run, or add it to ALLOWED_SKIPS in "
                "tests/conftest.py with the reason skipping it is fine",
                red=True,
            )
