"""Render the Helm chart without a cluster, and play the kubelet for one pod on loopback.

`render` uses the Helm v4 SDK from pip (`helm_python`, no helm binary). `Pod` lays the rendered
pod's volumes out under a temporary directory — ConfigMap keys and Secret items as files,
emptyDirs as directories — and maps every mount path onto it, so the containers' own commands
(init containers, Envoy, the sidecar, their preStop hooks) run unchanged apart from those paths.
Secrets come from a dictionary standing in for the cluster's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

from gateway_extproc.stack import find_binary
from tests.paths import REPO

CHART = REPO / "helm" / "llm-gateway"
RELEASE = "gw"
NAMESPACE = "llm"


def render(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every manifest the chart renders for `values`, `helm test` hooks included (raises
    helm_python.HelmError)."""
    chart = helm.Chart.load(CHART)
    out = chart.render(dict(values), name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[dict[str, Any]] = []
    for template, text in sorted(out.items()):
        if template.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def notes(values: Mapping[str, Any]) -> str:
    out = helm.Chart.load(CHART).render(dict(values), name=RELEASE, namespace=NAMESPACE)
    return next(text for template, text in out.items() if template.endswith("NOTES.txt"))


def one(docs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, (kind, name_suffix, [d["metadata"]["name"] for d in found])
    return found[0]


def image_entrypoint() -> list[str]:
    """The sidecar image's ENTRYPOINT, read from the Dockerfile."""
    text = (REPO / "Dockerfile").read_text()
    match = re.search(r"^ENTRYPOINT (\[.*\])$", text, re.MULTILINE)
    assert match, "Dockerfile has no exec-form ENTRYPOINT"
    return list(json.loads(match[1]))


class Pod:
    """One rendered pod's files under `root`; `secrets` is {name: {key: value}}."""

    def __init__(
        self, docs: list[dict[str, Any]], root: Path, secrets: Mapping[str, Mapping[str, str]]
    ) -> None:
        self.docs = docs
        self.root = root
        self.secrets = secrets
        self.spec: dict[str, Any] = one(docs, "Deployment")["spec"]["template"]["spec"]
        self.mounts: dict[str, Path] = {}
        for container in self.spec["initContainers"] + self.spec["containers"]:
            for m in container.get("volumeMounts", []):
                host = root / "volumes" / m["name"]
                assert self.mounts.get(m["mountPath"], host) == host, m
                self.mounts[m["mountPath"]] = host
        for volume in self.spec["volumes"]:
            self._lay_out(volume, root / "volumes" / volume["name"])

    def path(self, text: str) -> str:
        """`text` with every mount path replaced by its directory under root."""
        mounts = sorted(self.mounts, key=len, reverse=True)
        pattern = "(?<![\\w/.-])(" + "|".join(map(re.escape, mounts)) + ')(?=/|$|\\s|"|,)'
        return re.sub(pattern, lambda m: str(self.mounts[m[1]]), text, flags=re.MULTILINE)

    def _lay_out(self, volume: dict[str, Any], where: Path) -> None:
        where.mkdir(parents=True, exist_ok=True)
        if "configMap" in volume:
            cm = next(
                d
                for d in self.docs
                if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"]
            )
            for key, value in cm["data"].items():
                (where / key).write_text(self.path(value))
        elif "secret" in volume:
            data = self.secrets[volume["secret"]["secretName"]]
            items = volume["secret"].get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                (where / item["path"]).write_text(data[item["key"]])

    def container(self, name: str) -> dict[str, Any]:
        """A container of the Deployment's pod, or of a `helm test` Pod."""
        tests = [c for d in self.docs if d["kind"] == "Pod" for c in d["spec"]["containers"]]
        (found,) = (
            c
            for c in self.spec["initContainers"] + self.spec["containers"] + tests
            if c["name"] == name
        )
        return found

    def env(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
        env = {k: v for k, v in env.items() if not k.startswith("GATEWAY_")}
        pod = {"metadata.name": "gw-llm-gateway-0", "metadata.namespace": NAMESPACE}  # downward API
        defined: dict[str, str] = {}
        for var in self.container(name).get("env", []):
            if "value" in var:
                # `$(NAME)` of a variable defined earlier in the list, as the kubelet expands it.
                value = re.sub(
                    r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                    lambda m: defined.get(m.group(1), m.group(0)),
                    var["value"],
                )
                defined[var["name"]] = env[var["name"]] = self.path(value)
            elif "fieldRef" in var["valueFrom"]:
                field = var["valueFrom"]["fieldRef"]["fieldPath"]
                defined[var["name"]] = env[var["name"]] = pod[field]
            else:
                ref = var["valueFrom"]["secretKeyRef"]
                defined[var["name"]] = env[var["name"]] = self.secrets[ref["name"]][ref["key"]]
        return env

    def argv(self, name: str) -> list[str]:
        """The container's command line, run with this machine's binaries."""
        c = self.container(name)
        env = self.env(name)  # `$(NAME)` in args is the container's variable, as the kubelet does
        args = [
            re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), a)
            for a in c.get("args", [])
        ]
        return self.command(c.get("command") or image_entrypoint(), args)

    def command(self, command: Sequence[str], args: Sequence[str] = ()) -> list[str]:
        argv = [self.path(a) for a in [*command, *args]]
        binaries = {
            "gatewayctl": str(Path(sys.executable).parent / "gatewayctl"),
            "python": sys.executable,
            "envoy": find_binary("envoy"),
        }
        return [binaries.get(argv[0], argv[0]), *argv[1:]]

    def run(self, name: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(name),
            env=self.env(name),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    @staticmethod
    def python_module(module: str) -> list[str]:
        return [sys.executable, "-m", module]

    def pre_stop(self, name: str) -> list[str]:
        return self.command(self.container(name)["lifecycle"]["preStop"]["exec"]["command"])
