"""scripts/ensure_chromium.py, which `make test` runs before pytest: nothing when Debian's
chromium is there, apt-get (update only when the install needs it) when it is not, and a clear
error where it cannot install. The apt-get calls are recorded, not run."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType

import pytest

from tests.paths import REPO


def ensure_chromium() -> ModuleType:
    path = REPO / "scripts" / "ensure_chromium.py"
    spec = importlib.util.spec_from_file_location("ensure_chromium", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Apt:
    """apt-get as recorded calls; `fail` names the calls (by verb) that fail, in order."""

    def __init__(self, binary: Path, fail: Sequence[str] = ()) -> None:
        self.binary, self.fail = binary, list(fail)
        self.calls: list[tuple[str, ...]] = []
        self.envs: list[Mapping[str, str]] = []

    def __call__(self, argv: Sequence[str], env: Mapping[str, str]) -> int:
        verb = "update" if "update" in argv else "install"
        self.calls.append(tuple(argv))
        self.envs.append(env)
        if self.fail and self.fail[0] == verb:
            self.fail.pop(0)
            return 100
        if verb == "install":
            self.binary.write_text("#!/bin/sh\n")
        return 0

    @property
    def verbs(self) -> list[str]:
        return ["update" if "update" in c else "install" for c in self.calls]


def test_nothing_happens_when_chromium_is_there(tmp_path: Path) -> None:
    binary = tmp_path / "chromium"
    binary.write_text("")
    apt = Apt(binary)
    assert ensure_chromium().ensure(binary, None, 1000, apt) is None  # not even root needed
    assert apt.calls == []


def test_installs_debians_package_without_an_update_when_the_lists_serve(tmp_path: Path) -> None:
    apt = Apt(tmp_path / "chromium")
    assert ensure_chromium().ensure(apt.binary, "/usr/bin/apt-get", 0, apt) is None
    assert apt.verbs == ["install"]
    (install,) = apt.calls
    assert install[0] == "/usr/bin/apt-get" and install[-1] == "chromium"
    assert "-y" in install and "DPkg::Lock::Timeout=600" in install
    assert apt.envs[0]["DEBIAN_FRONTEND"] == "noninteractive"


def test_updates_the_lists_only_after_an_install_failed(tmp_path: Path) -> None:
    apt = Apt(tmp_path / "chromium", fail=["install"])
    assert ensure_chromium().ensure(apt.binary, "apt-get", 0, apt) is None
    assert apt.verbs == ["install", "update", "install"]


@pytest.mark.parametrize(
    ("apt_get", "euid", "fail", "said"),
    [
        (None, 0, [], "no apt-get here"),
        ("apt-get", 1000, [], "needs root: run `sudo apt-get install -y chromium`"),
        ("apt-get", 0, ["install", "update"], "apt-get update failed"),
        ("apt-get", 0, ["install", "install"], "apt-get install chromium failed"),
    ],
)
def test_says_why_when_it_cannot_install(
    tmp_path: Path, apt_get: str | None, euid: int, fail: list[str], said: str
) -> None:
    apt = Apt(tmp_path / "chromium", fail=fail)
    problem = ensure_chromium().ensure(apt.binary, apt_get, euid, apt)
    assert problem is not None and said in problem
    assert not apt.binary.exists()


def test_an_install_that_leaves_no_binary_is_an_error(tmp_path: Path) -> None:
    def installs_nothing(argv: Sequence[str], env: Mapping[str, str]) -> int:
        return 0

    problem = ensure_chromium().ensure(tmp_path / "chromium", "apt-get", 0, installs_nothing)
    assert problem is not None and "still missing" in problem


def test_make_test_runs_it_before_pytest() -> None:
    makefile = (REPO / "Makefile").read_text()
    (test_rule,) = [line for line in makefile.splitlines() if line.startswith("test:")]
    assert "browser" in test_rule.split()
    assert "\tplaywright install" not in makefile and "playwright install" not in makefile
