"""The project installs uv.lock, not pyproject.toml's ranges: the lock must still satisfy every
range (edit one without `make lock` and this fails, saying what to run), and every install path
goes through scripts/locked_install.py, which checks each file against the lock's hashes."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from tests.paths import REPO

UV = Path(sys.executable).parent / "uv"


def lock_check(project: Path) -> subprocess.CompletedProcess[str]:
    """`uv lock --check`: does uv.lock still satisfy pyproject.toml? Offline: nothing resolves."""
    return subprocess.run(
        [str(UV), "lock", "--check", "--offline", "--project", str(project)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def locked_install() -> ModuleType:
    path = REPO / "scripts" / "locked_install.py"
    spec = importlib.util.spec_from_file_location("locked_install", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_lock_satisfies_pyproject() -> None:
    result = lock_check(REPO)
    assert result.returncode == 0, (
        "uv.lock no longer satisfies pyproject.toml: run `make lock` and commit uv.lock with the "
        f"change.\n{result.stderr}"
    )


def test_a_range_edited_without_make_lock_fails_the_check(tmp_path: Path) -> None:
    for name in ("pyproject.toml", "uv.lock"):
        shutil.copy(REPO / name, tmp_path / name)
    assert lock_check(tmp_path).returncode == 0
    pyproject = tmp_path / "pyproject.toml"
    text = pyproject.read_text()
    assert '"orjson>=3.10,<4"' in text
    # Widened: the locked orjson still fits, but the lock no longer records what was asked for.
    pyproject.write_text(text.replace('"orjson>=3.10,<4"', '"orjson>=3.10,<5"'))
    result = lock_check(tmp_path)
    assert result.returncode != 0
    assert "needs to be updated" in result.stderr


def test_the_lock_pins_the_uv_that_make_runs() -> None:
    version = subprocess.run([str(UV), "--version"], capture_output=True, text=True, check=True)
    locked = locked_install().locked_package(REPO / "uv.lock", "uv")
    assert version.stdout.split()[1] == locked["version"]


def test_pip_installs_uv_only_with_every_hash_the_lock_records() -> None:
    lock = REPO / "uv.lock"
    line = locked_install().pip_requirement(lock, "uv")
    (entry,) = [p for p in tomllib.loads(lock.read_text())["package"] if p["name"] == "uv"]
    name, *hashes = line.split()
    assert name == f"uv=={entry['version']}"
    recorded = {w["hash"] for w in entry["wheels"]} | {entry["sdist"]["hash"]}
    assert {h.removeprefix("--hash=") for h in hashes} == recorded
    assert all(re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", h) for h in hashes)


def test_an_unlocked_package_is_refused(tmp_path: Path) -> None:
    lock = tmp_path / "uv.lock"
    lock.write_text('version = 1\n[[package]]\nname = "uv"\nversion = "0.1.0"\n')
    with pytest.raises(SystemExit, match="has no recorded hashes"):
        locked_install().pip_requirement(lock, "uv")
    with pytest.raises(SystemExit, match="expected one locked version of redis, found 0"):
        locked_install().pip_requirement(lock, "redis")


def test_every_install_path_goes_through_the_lock() -> None:
    makefile = (REPO / "Makefile").read_text()
    stamp = re.search(r"^\$\(STAMP\):(.*)\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert stamp, "the Makefile builds .venv in one rule"
    assert "uv.lock" in stamp.group(1).split()  # a new lock rebuilds the virtualenv
    assert "scripts/locked_install.py $(VENV) --extra dev" in stamp.group(2)
    # The one unlocked install is deps-latest's, into its own throw-away virtualenv.
    unlocked = [line for line in makefile.splitlines() if "pip install" in line]
    assert unlocked and all("--python $(LATEST)/bin/python" in line for line in unlocked)
    for target in ("run", "test", "bench"):
        assert re.search(rf"^{target}: \$\(STAMP\)", makefile, re.MULTILINE), target
    assert "--locked" in (REPO / "scripts" / "locked_install.py").read_text()
