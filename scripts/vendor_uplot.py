"""Re-download the spend page's chart library, uPlot, from the npm registry and check it.

The page vendors uPlot (MIT) under gateway_extproc/ui/static/uplot/: no CDN at run time, no
build step. This script fetches the pinned version's tarball from registry.npmjs.org, checks it
against the registry's `integrity` (sha512, pinned here too, so a changed registry answer fails),
and writes the three files the page serves: the minified IIFE build, its CSS and the licence.
Run it to reproduce (or, after changing VERSION and INTEGRITY, to update) the vendored files:

    .venv/bin/python scripts/vendor_uplot.py           # write the files
    .venv/bin/python scripts/vendor_uplot.py --check   # compare with the committed ones
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path

PACKAGE = "uplot"
VERSION = "1.6.31"
INTEGRITY = (
    "sha512-"
    "sQZqSwVCbJGnFB4IQjQYopzj5CoTZJ4Br1fG/xdONimqgHmsacvCjNesdGDypNKFbrhLGIeshYhy89FxPF+H+w=="
)
FILES = {  # path in the tarball -> file name under the page's static directory
    "package/dist/uPlot.iife.min.js": "uPlot.iife.min.js",
    "package/dist/uPlot.min.css": "uPlot.min.css",
    "package/LICENSE": "LICENSE",
}
TARGET = Path(__file__).resolve().parent.parent / "gateway_extproc" / "ui" / "static" / "uplot"


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as r:
        return bytes(r.read())


def integrity_of(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def vendored_files() -> dict[str, bytes]:
    meta = json.loads(fetch(f"https://registry.npmjs.org/{PACKAGE}/{VERSION}"))
    if meta["dist"]["integrity"] != INTEGRITY:
        raise SystemExit(f"the registry's integrity for {PACKAGE}@{VERSION} is not the pinned one")
    tarball = fetch(meta["dist"]["tarball"])
    if integrity_of(tarball) != INTEGRITY:
        raise SystemExit(f"{PACKAGE}-{VERSION}.tgz does not match its integrity {INTEGRITY}")
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        for member, name in FILES.items():
            handle = tar.extractfile(member)
            if handle is None:
                raise SystemExit(f"{member} is not a file in the tarball")
            out[name] = handle.read()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args(argv)
    files = vendored_files()
    if args.check:
        differ = [n for n, data in files.items() if (TARGET / n).read_bytes() != data]
        for name in differ:
            print(f"{TARGET / name} differs from {PACKAGE}@{VERSION}", file=sys.stderr)
        return 1 if differ else 0
    TARGET.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (TARGET / name).write_bytes(data)
    (TARGET / "VERSION").write_text(f"{PACKAGE}@{VERSION} {INTEGRITY}\n")
    print(f"wrote {', '.join(files)} of {PACKAGE}@{VERSION} to {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
