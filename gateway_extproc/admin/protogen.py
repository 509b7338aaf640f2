"""Generate the admin API's protobuf module from `proto/` (`make proto`; needs grpcio-tools).

The output, `gateway_extproc/admin/_generated/`, is committed and never edited by hand: a unit
test regenerates it and compares. Only messages are generated: the server and the client bind
the methods themselves (`api.py`), so no `*_pb2_grpc` module with its absolute imports is needed.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
OUT_DIR = Path(__file__).resolve().parent / "_generated"
SOURCES = ("gateway/admin/v1/admin.proto",)


def generate(out_dir: Path) -> None:
    import grpc_tools  # type: ignore[import-untyped]
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    argv = ["protoc", f"-I{PROTO_DIR}", f"-I{include}"]
    argv += [f"--python_out={out_dir}", f"--pyi_out={out_dir}", *SOURCES]
    if protoc.main(argv) != 0:
        raise RuntimeError("protoc failed")
    for package in (out_dir, *sorted(p for p in out_dir.rglob("*") if p.is_dir())):
        (package / "__init__.py").touch()


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        for path in Path(tmp).rglob("*"):
            if path.is_file():
                target = OUT_DIR / path.relative_to(tmp)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(path.read_bytes())
    print(f"generated {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
