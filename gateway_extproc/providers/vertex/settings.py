"""A Vertex provider's settings (`providers.NAME` with `schema: vertex`): the project, the
location and where its Google credentials come from. Parsed once, every problem reported."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

# The OAuth2 scope Vertex AI's generateContent and rawPredict accept.
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# The project a mocked Vertex provider names in its paths when none is configured.
MOCK_PROJECT = "mock-project"
_PROJECT = re.compile(r"[a-z0-9][a-z0-9.:-]{0,99}")  # ids, and domain-scoped `example.com:p`
_LOCATION = re.compile(r"global|[a-z]+-[a-z]+[0-9]+")
_KEYS = {"project", "location", "credentials", "models"}
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
_CREDENTIAL_KEYS = {"file", "env", "workload_identity"}


@dataclasses.dataclass(frozen=True, slots=True)
class VertexSettings:
    project: str | None  # None: the credentials' own project (a service-account file's)
    location: str  # a region (us-east5) or `global`
    credentials_file: str | None = None  # a google-auth JSON file (service account, ...)
    credentials_env: str | None = None  # an environment variable naming such a file
    workload_identity: bool = False  # google.auth.default(): GKE's metadata server
    # Gateway model name -> Vertex model id (`claude-haiku-4-5@20251001`); a name not listed is
    # sent as it is.
    models: tuple[tuple[str, str], ...] = ()

    def model_id(self, name: str) -> str:
        """The Vertex model id a request for catalog entry `name` is sent to."""
        return dict(self.models).get(name, name)

    @property
    def host(self) -> str:
        """Vertex's endpoint for the location: the global one, or the region's own."""
        if self.location == "global":
            return "aiplatform.googleapis.com"
        return f"{self.location}-aiplatform.googleapis.com"

    def credential_source(self, environ: Mapping[str, str]) -> str | None:
        """Where the credentials are read from (a file path, or `workload_identity`); None when
        nothing is configured or the environment variable is unset: the provider is then
        mocked or left out like a provider without its key."""
        if self.workload_identity:
            return "workload_identity"
        if self.credentials_file is not None:
            return self.credentials_file
        if self.credentials_env is not None:
            return environ.get(self.credentials_env) or None
        return None

    def describe(self) -> str:
        if self.credentials_env is not None:
            return f"environment variable {self.credentials_env}"
        return f"file {self.credentials_file}"


def parse_vertex(doc: object, path: str, problems: list[str]) -> VertexSettings:
    """`providers.NAME.vertex`: project, location, credentials (file, env or
    workload_identity)."""
    if not isinstance(doc, Mapping):
        problems.append(f"{path}: must be a mapping with project, location and credentials")
        return VertexSettings(project=None, location="global")
    for extra in sorted(set(doc) - _KEYS):
        problems.append(f"{path}.{extra}: unknown key")
    project = doc.get("project")
    if project is not None and (not isinstance(project, str) or not _PROJECT.fullmatch(project)):
        problems.append(f"{path}.project: must be a Google Cloud project id (got {project!r})")
        project = None
    location = doc.get("location", "global")
    if not isinstance(location, str) or not _LOCATION.fullmatch(location):
        problems.append(
            f"{path}.location: must be `global` or a region such as us-east5 (got {location!r})"
        )
        location = "global"
    models: list[tuple[str, str]] = []
    raw_models = doc.get("models") or {}
    if not isinstance(raw_models, Mapping):
        problems.append(f"{path}.models: must map gateway model names to Vertex model ids")
        raw_models = {}
    for name, model_id in raw_models.items():
        if not isinstance(model_id, str) or not _MODEL_ID.fullmatch(model_id):
            problems.append(
                f"{path}.models.{name}: must be a Vertex model id of letters, digits, '.', '_', "
                f"'-' and '@' (got {model_id!r})"
            )
        else:
            models.append((str(name), model_id))
    creds = doc.get("credentials")
    if not isinstance(creds, Mapping):
        problems.append(
            f"{path}.credentials: must be a mapping with one of file, env, workload_identity"
        )
        return VertexSettings(project=project, location=location, models=tuple(models))
    for extra in sorted(set(creds) - _CREDENTIAL_KEYS):
        problems.append(f"{path}.credentials.{extra}: unknown key")
    file, env = creds.get("file"), creds.get("env")
    workload = creds.get("workload_identity", False)
    if not isinstance(workload, bool):
        problems.append(f"{path}.credentials.workload_identity: must be true or false")
        workload = False
    if sum((file is not None, env is not None, workload)) != 1:
        problems.append(f"{path}.credentials: set exactly one of file, env, workload_identity")
    for key, value in (("file", file), ("env", env)):
        if value is not None and (not isinstance(value, str) or not value):
            problems.append(f"{path}.credentials.{key}: must be a non-empty string")
    return VertexSettings(
        project=project,
        location=location,
        credentials_file=file if isinstance(file, str) and file else None,
        credentials_env=env if isinstance(env, str) and env else None,
        workload_identity=workload,
        models=tuple(models),
    )
