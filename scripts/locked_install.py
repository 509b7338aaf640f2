"""Build a virtualenv from uv.lock, every file checked against the hashes the lock records.

The one install path of the project: `make run`, `make test` and `make bench` (the development
virtualenv, with the `dev` extra) and the Dockerfile's build stage (`--image`: the runtime
dependencies only, the package installed non-editable). Standard library only: it runs before
anything is installed.

1. uv itself comes first: pip installs the release uv.lock pins, with `--require-hashes` against
   every artifact hash the lock records for it (the lock is the only place a version is named).
2. `uv sync --locked` installs the rest; uv checks every download and every cached file against
   the lock's hashes, and `--locked` refuses a lock that no longer satisfies pyproject.toml.
3. opentelemetry-proto is reinstalled last: xds-protos (Envoy's API) ships older copies of the
   same opentelemetry/proto/*_pb2.py files, and whichever package is written last wins.

    python3 scripts/locked_install.py .venv --extra dev      # what make does
    python3 scripts/locked_install.py /opt/gateway --image   # what the Dockerfile does
    python3 scripts/locked_install.py .venv --uv-only        # uv alone (make lock)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "uv.lock"
# Written last so that its files win over xds-protos' copies (see the module docstring).
WRITTEN_LAST = "opentelemetry-proto"


def locked_package(lock: Path, name: str) -> dict[str, Any]:
    """The lock's entry for one package (a universal lock holds one version per package here)."""
    entries = [p for p in tomllib.loads(lock.read_text())["package"] if p["name"] == name]
    if len(entries) != 1:
        raise SystemExit(f"{lock}: expected one locked version of {name}, found {len(entries)}")
    return entries[0]


def pip_requirement(lock: Path, name: str) -> str:
    """`name==version --hash=... --hash=...` for pip's hash-checking mode: every wheel and the
    sdist the lock records, so pip accepts whichever artifact suits this platform and no other."""
    entry = locked_package(lock, name)
    artifacts = list(entry.get("wheels", []))
    if "sdist" in entry:
        artifacts.append(entry["sdist"])
    hashes = sorted({artifact["hash"] for artifact in artifacts})
    if not hashes:
        raise SystemExit(f"{lock}: {name} has no recorded hashes")
    return " ".join([f"{name}=={entry['version']}", *(f"--hash={h}" for h in hashes)])


def bin_dir(venv: Path) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin")


def installed_uv(venv: Path) -> str | None:
    uv = bin_dir(venv) / "uv"
    if not uv.exists():
        return None
    out = subprocess.run([str(uv), "--version"], capture_output=True, text=True, check=False)
    return out.stdout.split()[1] if out.returncode == 0 and out.stdout else None


def ensure_venv(venv: Path, *, pip: bool = True) -> None:
    if not (bin_dir(venv) / "python").exists():
        without = [] if pip else ["--without-pip"]
        subprocess.run([sys.executable, "-m", "venv", *without, str(venv)], check=True)


def bootstrap_uv(venv: Path, lock: Path) -> Path:
    """uv at the locked version in `venv`, installed by pip with every hash checked."""
    ensure_venv(venv)
    version = locked_package(lock, "uv")["version"]
    if installed_uv(venv) != version:
        python = str(bin_dir(venv) / "python")
        # `uv sync` removes pip from the virtualenv (pip is not in the lock): bring it back.
        probe = subprocess.run([python, "-m", "pip", "--version"], capture_output=True, check=False)
        if probe.returncode != 0:
            subprocess.run([python, "-m", "ensurepip", "--default-pip"], check=True)
        with tempfile.TemporaryDirectory() as tmp:
            requirement = Path(tmp) / "uv-requirement.txt"
            requirement.write_text(pip_requirement(lock, "uv") + "\n")
            subprocess.run(
                [
                    python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--require-hashes", "--no-deps", "--only-binary", ":all:",
                    "-r", str(requirement),
                ],
                check=True,
            )  # fmt: skip
    return bin_dir(venv) / "uv"


def sync(uv: Path, venv: Path, extras: list[str], image: bool) -> None:
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv.resolve())}
    env.pop("VIRTUAL_ENV", None)
    base = [str(uv), "sync", "--locked", "--quiet", "--project", str(ROOT)]
    base += [f"--extra={extra}" for extra in extras]
    # Bytecode compiled at install, not lazily at first import: where PYTHONDONTWRITEBYTECODE is
    # set (CI, these machines) lazily compiled bytecode is never kept, and every process - each
    # sidecar worker, the mock, gatewayctl, every stack a test starts - compiled every module it
    # imports again (~0.7 s of CPU for a sidecar worker's imports).
    base += ["--compile-bytecode"]
    if image:
        base += ["--no-editable"]
    subprocess.run(base, check=True, env=env)
    subprocess.run([*base, f"--reinstall-package={WRITTEN_LAST}"], check=True, env=env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("venv", type=Path, help="the virtualenv to build or bring up to date")
    parser.add_argument("--extra", action="append", default=[], help="an optional extra (dev)")
    parser.add_argument(
        "--image",
        action="store_true",
        help="the container image's virtualenv: no extras, not editable, no uv left in it",
    )
    parser.add_argument("--uv-only", action="store_true", help="install the locked uv and stop")
    args = parser.parse_args(argv)
    if not LOCK.exists():
        raise SystemExit(f"{LOCK} is missing: run `make lock`")
    if args.uv_only:
        bootstrap_uv(args.venv, LOCK)
        return 0
    if args.image:
        # uv is a build tool, not part of the runtime: it lives in a throw-away virtualenv, and
        # the image's virtualenv gets no pip either (nothing is installed into it at run time).
        ensure_venv(args.venv, pip=False)
        tools = Path(tempfile.mkdtemp(prefix="uv-bootstrap-"))
        try:
            sync(bootstrap_uv(tools / "venv", LOCK), args.venv, [], image=True)
        finally:
            shutil.rmtree(tools, ignore_errors=True)
        return 0
    sync(bootstrap_uv(args.venv, LOCK), args.venv, args.extra, image=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
