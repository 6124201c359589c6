"""The Policy: what the user asked for, frozen and typed, every default filled in."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Model:
    alias: str
    path: Path  # absolute, symlinks resolved
    sha256: str
    context_length: int
    chat_format: str | None
    # "chat", or "embeddings": the model a front-end's documents are turned
    # into vectors with, served by a server of its own (launcher/spec.py).
    role: str = "chat"


@dataclass(frozen=True)
class Backend:
    gpu: str | tuple[str, ...]  # "auto" | "all" | "none" | device ids
    gpu_layers: int
    memory: str
    cpus: float
    runtime: str = "runc"  # "runc" | "gvisor"


@dataclass(frozen=True)
class Frontend:
    # Exactly one of these three says where the UI image comes from.
    recipe: str | None
    build_context: Path | None
    build_dockerfile: str
    image: str | None
    port: int
    backend_url_env: str
    backend_key_env: str
    env: tuple[tuple[str, str], ...]  # the policy's extra variables, sorted
    data: str | None
    user: int
    health_path: str
    memory: str
    cpus: float
    runtime: str = "runc"
    # The hosts a `build` may reach through the build proxy; empty: any public host.
    build_allow_hosts: tuple[str, ...] = ()
    data_size: str = "4g"  # the most the data volume may hold, where the engine can enforce it


@dataclass(frozen=True)
class Policy:
    file: Path
    name: str
    models: tuple[Model, ...]
    backend: Backend
    # None: `frontend: none`, a sandbox that serves only the API (/v1/) at
    # its front door, with no UI and no front-end container.
    frontend: Frontend | None
    ingress_port: int
    # What outside names resolve to (schemas/policy.schema.json, "audit"):
    # "lookups", no such name; "connections", an address only the sink answers.
    audit: str = "lookups"
    # Volumes that may run without a size limit where the engine cannot
    # enforce one (only "data"); elsewhere `up` refuses to start them.
    accept_unbounded_volumes: tuple[str, ...] = ()

    @property
    def api_only(self) -> bool:
        return self.frontend is None

    @property
    def chat_models(self) -> tuple[Model, ...]:
        """The models offered for chat, the default first."""
        return tuple(m for m in self.models if m.role == "chat")

    @property
    def embedding_model(self) -> Model | None:
        return next((m for m in self.models if m.role == "embeddings"), None)
