"""The import contracts (pyproject.toml [tool.importlinter], run by `make test`) hold, cover the
whole package, and fail - naming the offending import - when a back-edge is added.

Each broken case runs `lint-imports` on a copy of the package with one import added, so the real
tree is never touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.paths import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
CONFIG = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
PACKAGE = REPO / "gateway_extproc"
TYPES_ONLY = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    "


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "400"}  # one import, one line
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _top_level() -> set[str]:
    names = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    names |= {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    return names


def _contract(kind: str, source: str | None = None) -> dict[str, object]:
    """The one contract of a kind (for forbidden ones, from `source`; for layers, the package's
    top-level one: the request package has layers of its own)."""
    found = [
        c
        for c in CONFIG["contracts"]
        if c["type"] == kind
        and (source is None or c.get("source_modules") == [source])
        and c.get("containers", ["gateway_extproc"]) == ["gateway_extproc"]
    ]
    assert len(found) == 1, (kind, source)
    return found[0]


def test_the_contracts_hold() -> None:
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_every_top_level_module_is_in_a_layer() -> None:
    layered = {name.strip() for layer in _contract("layers")["layers"] for name in layer.split("|")}
    assert _top_level() - layered == {"mock"}  # the mock has contracts of its own
    assert layered <= _top_level()


def test_the_mock_contracts_name_every_other_module() -> None:
    others = {f"gateway_extproc.{name}" for name in _top_level() - {"mock"}}
    assert set(_contract("forbidden", "gateway_extproc.mock")["forbidden_modules"]) == others
    into_mock = [
        c
        for c in CONFIG["contracts"]
        if c["type"] == "forbidden" and c["forbidden_modules"] == ["gateway_extproc.mock"]
    ]
    assert len(into_mock) == 1 and set(into_mock[0]["source_modules"]) == others


@pytest.mark.parametrize(
    ("module", "added", "broken", "named"),
    [
        # pure core importing a phase: an upward import
        (
            "catalog/pricing.py",
            "from gateway_extproc.request import processor",
            "Layers",
            "gateway_extproc.catalog.pricing -> gateway_extproc.request.processor",
        ),
        # a service importing the configuration that is assembled from the services
        (
            "budgets/store.py",
            "from gateway_extproc.config import gateway",
            "Layers",
            "gateway_extproc.budgets.store -> gateway_extproc.config.gateway",
        ),
        # inside the request phase, the stream's state importing the body phase's steps
        (
            "request/stream.py",
            "from gateway_extproc.request import admission",
            "The request phase",
            "gateway_extproc.request.stream -> gateway_extproc.request.admission",
        ),
        # one provider importing another
        (
            "providers/openai/metering.py",
            "from gateway_extproc.providers.anthropic import metering",
            "Providers are plug-ins",
            "gateway_extproc.providers.openai.metering"
            " -> gateway_extproc.providers.anthropic.metering",
        ),
        # the mock importing the gateway
        (
            "mock/wire.py",
            "from gateway_extproc import errors",
            "The mock provider stands apart",
            "gateway_extproc.mock.wire -> gateway_extproc.errors",
        ),
        # a cycle inside one package (store already imports windows), even for types only;
        # named relative to the package, which the line before names
        (
            "budgets/windows.py",
            TYPES_ONLY + "from gateway_extproc.budgets import store",
            "No import cycles",
            "No cycles are allowed in gateway_extproc.budgets.",
        ),
        (
            "budgets/windows.py",
            TYPES_ONLY + "from gateway_extproc.budgets import store",
            "No import cycles",
            "- .windows -> .store (1 import)",
        ),
    ],
)
def test_a_new_back_edge_fails_and_is_named(
    tmp_path: Path, module: str, added: str, broken: str, named: str
) -> None:
    shutil.copytree(
        PACKAGE, tmp_path / "gateway_extproc", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    assert _lint(tmp_path).returncode == 0  # the copy is the real tree: it passes as it is
    target = tmp_path / "gateway_extproc" / module
    target.write_text(target.read_text() + "\n" + added + "  # noqa\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    section = result.stdout.partition("Broken contracts")[2]
    assert broken in section and named in section, result.stdout
