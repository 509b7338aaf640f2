"""Make sure Debian's `chromium` is installed: the browser the Playwright tests drive.

`make test` runs this before pytest. It does nothing when `/usr/bin/chromium` exists; otherwise
it installs Debian's `chromium` package with apt-get, non-interactively, and runs
`apt-get update` only when the install fails without it (no package lists yet, or stale ones).
It never downloads a browser of its own (no `playwright install`): the tests launch the Debian
binary through Playwright's `executable_path`. Standard library only: it runs before anything
else is installed.

    python3 scripts/ensure_chromium.py           # what make test does
    python3 scripts/ensure_chromium.py --check   # exit 1 if missing, install nothing

Exit status: 0 when chromium is there (already, or now); 1 with a message saying what to do
when it is missing and cannot be installed here (not root, no apt-get, the install failed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
PACKAGE = "chromium"
# Wait for another apt-get or dpkg (a second helper, an unattended upgrade) instead of failing.
APT_OPTIONS = ("-o", "DPkg::Lock::Timeout=600")

Runner = Callable[[Sequence[str], Mapping[str, str]], int]


def _run(argv: Sequence[str], env: Mapping[str, str]) -> int:
    print("ensure_chromium: " + " ".join(argv), file=sys.stderr, flush=True)
    return subprocess.run(
        list(argv), env=dict(env), stdin=subprocess.DEVNULL, check=False
    ).returncode


def ensure(
    chromium: Path,
    apt_get: str | None,
    euid: int,
    run: Runner = _run,
    environ: Mapping[str, str] = os.environ,
) -> str | None:
    """Install `chromium` unless it exists. Returns None when it is there, else what went wrong."""
    if chromium.exists():
        return None
    if apt_get is None:
        return (
            f"{chromium} is missing and there is no apt-get here: install Chromium by hand and "
            "make it available at that path (the browser tests launch it from there)"
        )
    if euid != 0:
        return (
            f"{chromium} is missing and installing it needs root: run "
            f"`sudo apt-get install -y {PACKAGE}` once (or `sudo make test`)"
        )
    env = {**environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt_get, *APT_OPTIONS, "install", "-y", "--no-install-recommends", PACKAGE]
    if run(install, env) != 0:
        # No package lists yet, or lists older than the mirror's files: update, then once more.
        if run([apt_get, *APT_OPTIONS, "update"], env) != 0:
            return "apt-get update failed (see above); chromium is not installed"
        if run(install, env) != 0:
            return f"apt-get install {PACKAGE} failed (see above)"
    if not chromium.exists():
        return f"apt-get installed {PACKAGE} but {chromium} is still missing"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report; install nothing")
    args = parser.parse_args(argv)
    if args.check:
        if CHROMIUM.exists():
            return 0
        print(f"ensure_chromium: {CHROMIUM} is missing", file=sys.stderr)
        return 1
    problem = ensure(CHROMIUM, shutil.which("apt-get"), os.geteuid())
    if problem is not None:
        print(f"ensure_chromium: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
