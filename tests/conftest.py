"""Session-wide test policy: every collected test must run (see tests/skip_policy.py)."""

from __future__ import annotations

import compileall

import pytest

from tests.paths import REPO
from tests.skip_policy import SkipPolicy

# Playwright fixtures (`browser`, `page`) and the screenshot-on-failure hook: tests/browser.py.
pytest_plugins = ["tests.browser"]

# Tests allowed not to run, by node id, each with the reason that is fine. Empty: everything the
# suite collects runs on the machine `make test` is meant for (data beside the repo included).
ALLOWED_SKIPS: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(SkipPolicy(ALLOWED_SKIPS), "skip-policy")
    if not hasattr(config, "workerinput"):  # once a run, before the xdist workers start
        # The gateway's bytecode, written now: with PYTHONDONTWRITEBYTECODE set (CI, these
        # machines) Python never keeps what it compiles, and the suite starts over a hundred
        # processes that import the package (sidecar workers, the mock, gatewayctl). Up-to-date
        # files are skipped; the dependencies' bytecode is compiled at install
        # (scripts/locked_install.py).
        compileall.compile_dir(REPO / "gateway_extproc", quiet=1)
