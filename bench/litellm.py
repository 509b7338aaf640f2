"""The `litellm` setup: a LiteLLM proxy in front of the bench's upstream, the issue 24 yardstick.

`litellm --config F --num_workers 1` as issue 24's author measured it: one worker, no database,
no master key, logging quiet; its one model is the bench's `gpt-4o-mini`, routed to the canned
upstream's OpenAI-compatible `api_base`, so the same wrk loads run against it (JSON and SSE;
the paced stream's header is not forwarded by LiteLLM, so no paced load).

LiteLLM is not a dependency of the project: it lives in a throw-away virtualenv under
`.cache/bench-litellm/` (git-ignored), created on first use with `uv venv` + `uv pip sync
--require-hashes` from the hash-pinned `bench/litellm.lock` (compiled from `bench/litellm.in`
by `make lock`), and made again only when the lock changes. `make test` never installs it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import yaml

from bench.procs import REPO, Procs
from bench.setups import Running
from gateway_extproc.stack import StackError, free_port, wait_for

LOCK = Path(__file__).resolve().parent / "litellm.lock"
CACHE = REPO / ".cache" / "bench-litellm"
MODEL = "gpt-4o-mini"  # what bench/load.py's request body asks for
STARTUP_S = 120  # LiteLLM imports a great deal before it listens
STAMP = ".lock-sha256"  # in the venv: the digest of the lock it was made from

# No network but the loopback: the model price map from the package, not fetched at start;
# no telemetry; no database, no master key, so no auth and no spend tracking.
QUIET_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_TELEMETRY": "False",
    "LITELLM_LOG": "ERROR",
    "LITELLM_MODE": "PRODUCTION",  # no .env loading
    "DISABLE_ADMIN_UI": "True",
}
_DROPPED_ENV = ("DATABASE_URL", "LITELLM_MASTER_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL")


def render_config(api_base: str, model: str = MODEL) -> dict[str, Any]:
    """LiteLLM's proxy config: `model` served by the OpenAI-compatible upstream at `api_base`
    (a placeholder key: the bench upstream checks none), callbacks and verbose logs off."""
    return {
        "model_list": [
            {
                "model_name": model,
                "litellm_params": {
                    "model": f"openai/{model}",
                    "api_base": api_base,
                    "api_key": "bench-upstream-needs-no-key",
                },
            }
        ],
        "litellm_settings": {"set_verbose": False, "json_logs": False, "callbacks": []},
        # No master key, as issue 24 measured it: releases since 1.10x refuse to start so on a
        # loopback-only bench proxy unless told that this is deliberate.
        "general_settings": {"dangerously_permit_weak_or_unset_master_key": True},
    }


def proxy_environ(environ: Mapping[str, str], venv: Path) -> dict[str, str]:
    """The proxy's environment: the caller's, without database or key settings, quiet."""
    env = {k: v for k, v in environ.items() if k not in _DROPPED_ENV}
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = f"{venv / 'bin'}:{environ.get('PATH', '')}"
    return env | QUIET_ENV


def lock_digest(lock: Path = LOCK) -> str:
    return hashlib.sha256(lock.read_bytes()).hexdigest()


def installed(venv: Path, lock: Path = LOCK) -> bool:
    """Whether `venv` was made, to the end, from this very lock (its digest is written last)."""
    stamp = venv / STAMP
    return stamp.exists() and stamp.read_text().strip() == lock_digest(lock)


def _uv() -> str:
    beside = Path(sys.executable).parent / "uv"  # the project's locked uv (make lock uses it)
    found = str(beside) if beside.exists() else shutil.which("uv")
    if found is None:
        raise StackError("uv not found: run `make` first (it installs the locked uv)")
    return found


def ensure_venv(progress: Callable[[str], None], cache: Path = CACHE, lock: Path = LOCK) -> Path:
    """The virtualenv with LiteLLM, made from `lock` when missing or made from another lock."""
    venv = cache / "venv"
    if installed(venv, lock):
        return venv
    progress(f"installing LiteLLM from {lock.name} into {venv} (once; hashes checked)")
    shutil.rmtree(venv, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    uv = _uv()
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    argv = [uv, "venv", "--quiet", "--python", sys.executable, str(venv)]
    subprocess.run(argv, check=True, env=env)
    sync = [uv, "pip", "sync", "--quiet", "--require-hashes", "--python", str(venv / "bin/python")]
    try:
        subprocess.run([*sync, str(lock)], check=True, env=env)
    except subprocess.CalledProcessError as exc:  # uv said why, above
        raise StackError(f"installing LiteLLM from {lock} failed ({exc.returncode})") from exc
    (venv / STAMP).write_text(lock_digest(lock) + "\n")
    return venv


def version(venv: Path) -> str:
    code = "import importlib.metadata as m; print(m.version('litellm'))"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            [str(venv / "bin/python"), "-c", code], capture_output=True, text=True, timeout=60
        )
        if done.returncode == 0:
            return done.stdout.strip()
    return "unknown"


def _alive(url: str) -> bool:
    with urllib.request.urlopen(url + "/health/liveliness", timeout=2) as response:
        return bool(response.status == 200)


@contextlib.contextmanager
def litellm(
    output: IO[bytes],
    run_dir: Path,
    upstream_port: int,
    environ: Mapping[str, str],
    progress: Callable[[str], None],
) -> Iterator[Running]:
    """The LiteLLM proxy on a free loopback port. No Envoy here: `envoy_pid` is LiteLLM's own
    process (its CPU per request shows as the row's envoy/req), and there is no admin URL."""
    venv = ensure_venv(progress)
    config = run_dir / "litellm.yaml"
    api_base = f"http://127.0.0.1:{upstream_port}/v1"
    config.write_text(yaml.safe_dump(render_config(api_base), sort_keys=False))
    port = free_port()
    argv = [str(venv / "bin/litellm"), "--config", str(config), "--num_workers", "1"]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    procs = Procs(output)
    try:
        proc = procs.spawn(argv, proxy_environ(environ, venv))
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _alive(url), "litellm", STARTUP_S, proc)
        yield Running("litellm", 0, url, "", proc.pid, (), "", proxy_version=version(venv))
    finally:
        procs.stop()
