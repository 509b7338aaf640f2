"""The committed generated admin API module is exactly what `make proto` produces."""

from __future__ import annotations

from pathlib import Path

from gateway_extproc.admin import protogen


def sources(root: Path) -> dict[Path, bytes]:
    return {
        p.relative_to(root): p.read_bytes()
        for p in root.rglob("*")
        if p.suffix in (".py", ".pyi") and "__pycache__" not in p.parts
    }


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    protogen.generate(tmp_path)
    generated, committed = sources(tmp_path), sources(protogen.OUT_DIR)
    assert generated.keys() == committed.keys()
    for path, text in generated.items():
        assert committed[path] == text, f"{path} differs from proto/: run make proto"
