"""Validate a policy: YAML, then the schema, then what the schema cannot say
(files on disk, sha256, the host port, names that must not collide). Every
problem is collected and reported at once; a Policy is made only from a file
that has none."""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Callable

from launcher.errors import PolicyError, Problem
from launcher.build_context import context_problems, inside
from launcher.build_sources import dockerfile_problems
from launcher.policy.files import HashProgress, model_file_problem
from launcher.policy.loader import Document, load
from launcher.policy.model import Backend, Frontend, Model, Policy
from launcher.policy.schema import schema_problems
from launcher.recipes import CUSTOM_FRONTEND, FRONTEND_RECIPES

BACKEND_DEFAULTS = {"gpu": "auto", "gpu_layers": -1, "memory": "4g", "cpus": 2, "runtime": "runc"}
DEFAULT_CONTEXT_LENGTH = 4096
DEFAULT_DATA_SIZE = "4g"


# port_holder(sandbox_name, port): the sandbox whose ingress holds a busy host
# port, if one does. The policy's own sandbox holding it is no problem; another
# one is named, with the command that frees the port.
PortHolder = Callable[[str, int], "str | None"]


def check_policy_file(path: str | Path, *, check_port: bool = True, port_holder: PortHolder | None = None,
                      hash_progress: HashProgress | None = None, check_model_files: bool = True,
                      model_paths: dict[str, Path] | None = None,
                      raw: bytes | None = None, display: str | None = None,
                      volume_sizes_enforced: bool | None = None,
                      document: tuple[Document | None, list[Problem]] | None = None
                      ) -> tuple[Policy | None, list[Problem]]:
    """All the problems of one policy file, and the Policy when there are none.
    `raw` is the file's bytes when they were read before (to check a signature
    of them): those bytes, not the file read again, become the Policy;
    `display` is then the path as the user wrote it, for messages.
    `model_paths` puts a model, by the path the policy writes, at another
    file (a bundle's copy); `check_model_files` off skips the model files
    (a repository of policies holds no weights). `volume_sizes_enforced`
    says whether the engine that is to run the policy can bound a volume's
    size (None: no engine in question, not checked). `document` is `raw`
    as parsed before (PolicySource.document), then not parsed again."""
    path = Path(path)
    doc, problems = document or load(path, display_name=display or str(path), raw=raw)
    if doc is None:
        return None, problems
    if not isinstance(doc.data, dict):
        return None, [doc.problem((), "must be a mapping of fields (version, name, models, ...)")]
    problems = schema_problems(doc)
    base = path.resolve().parent
    problems += _semantic_problems(doc, base, check_port, port_holder, hash_progress,
                                   (model_paths or {}) if check_model_files else None)
    if volume_sizes_enforced is False:
        problems += _unbounded_volume_problems(doc)
    problems.sort(key=lambda p: (p.line, p.column, p.field))
    if problems:
        return None, problems
    return _to_policy(doc.data, path.resolve(), base, model_paths or {}), []


def load_policy(path: str | Path, **kwargs) -> Policy:
    policy, problems = check_policy_file(path, **kwargs)
    if problems:
        raise PolicyError(problems)
    return policy


def _semantic_problems(doc: Document, base: Path, check_port: bool, port_holder: PortHolder | None,
                       hash_progress: HashProgress | None, model_paths: dict[str, Path] | None) -> list[Problem]:
    """`model_paths` None: the model files are not looked at."""
    data = doc.data
    problems: list[Problem] = []

    models = data.get("models")
    if isinstance(models, list):
        problems += _role_problems(doc, models)
        seen: dict[str, int] = {}
        for i, m in enumerate(models):
            if not isinstance(m, dict):
                continue
            alias = m.get("alias")
            if isinstance(alias, str):
                if alias in seen:
                    problems.append(doc.problem(("models", i, "alias"),
                                                f"'{alias}' is already the alias of models[{seen[alias]}]"))
                seen.setdefault(alias, i)
            mpath, sha = m.get("path"), m.get("sha256")
            if isinstance(mpath, str) and mpath and isinstance(sha, str) and len(sha) == 64:
                if "\x00" in mpath:
                    problems.append(doc.problem(("models", i, "path"), "must not contain NUL"))
                    continue
                if model_paths is None:
                    continue
                why = model_file_problem(mpath, model_paths.get(mpath) or _resolve(base, mpath), sha, hash_progress)
                if why:
                    problems.append(doc.problem(("models", i, "path"), why))

    backend = data.get("backend")
    if isinstance(backend, dict) and backend.get("runtime") == "gvisor" and backend.get("gpu", "auto") != "none":
        problems.append(doc.problem(("backend", "gpu"), "must be none with runtime: gvisor "
                                                          "(gVisor runs the backend on the CPU only)"))

    frontend = data.get("frontend")
    if isinstance(frontend, dict):
        sources = [k for k in ("recipe", "build", "image") if k in frontend]
        if len(sources) != 1:
            said = f"it gives {', '.join(sources)}" if sources else "it gives none"
            problems.append(doc.problem(("frontend",), f"must give exactly one of recipe, build or image; {said}"))
        build = frontend.get("build")
        if isinstance(build, dict) and isinstance(build.get("context"), str) and build["context"]:
            written = build["context"]
            context = _resolve(base, written)
            dockerfile = build.get("dockerfile", "Dockerfile")
            where = ("frontend", "build", "context")
            # A shared policy's build sees only what sits beside it: never the
            # user's home, /etc, or a device behind a symlink.
            if os.path.isabs(written) or written.startswith("~"):
                problems.append(doc.problem(where, "must be a path relative to the policy's directory"))
            elif not inside(context, base):
                problems.append(doc.problem(where, f"leads out of the policy's directory (to {context})"))
            elif not context.is_dir():
                problems.append(doc.problem(where, f"not a directory: {context}"))
            elif isinstance(dockerfile, str) and "/" not in dockerfile and not (context / dockerfile).is_file():
                problems.append(doc.problem(("frontend", "build", "dockerfile"),
                                            f"no file {dockerfile} in {context}"))
            elif isinstance(dockerfile, str) and "/" not in dockerfile:
                unsafe = [doc.problem(where, why) for why in context_problems(context, dockerfile)]
                # What the engine itself would fetch for the build, outside the
                # build proxy: at the Dockerfile's line (relative to the context).
                problems += unsafe or dockerfile_problems(context, dockerfile)
        recipe = FRONTEND_RECIPES.get(frontend.get("recipe")) if isinstance(frontend.get("recipe"), str) else None
        defaults = recipe or CUSTOM_FRONTEND
        url_env = frontend.get("backend_url_env", defaults.backend_url_env)
        key_env = frontend.get("backend_key_env", defaults.backend_key_env)
        if url_env == key_env and isinstance(url_env, str):
            problems.append(doc.problem(("frontend", "backend_key_env"),
                                        "must differ from backend_url_env"))
        env = frontend.get("env")
        if isinstance(env, dict):
            for name in env:
                if name in (url_env, key_env):
                    problems.append(doc.problem(("frontend", "env", name),
                                                "is set by the launcher (the backend's URL and key); remove it",
                                                prefer_key=True))
                elif recipe and name in recipe.locked_names:
                    problems.append(doc.problem(
                        ("frontend", "env", name),
                        f"is fixed by the {frontend['recipe']} recipe to keep it offline; remove it",
                        prefer_key=True))
                elif name.startswith("SANDBOX_"):
                    problems.append(doc.problem(("frontend", "env", name),
                                                "names starting with SANDBOX_ are the launcher's", prefer_key=True))

    ingress = data.get("ingress")
    if check_port and isinstance(ingress, dict) and _is_int(ingress.get("port")):
        port = ingress["port"]
        name = data.get("name") if isinstance(data.get("name"), str) else ""
        holder = port_holder(name, port) if 1 <= port <= 65535 and port_holder and not port_is_free(port) else None
        if holder and holder != name:
            problems.append(doc.problem(("ingress", "port"),
                                        f"port {port} on 127.0.0.1 is used by sandbox {holder}: `sandbox down "
                                        f"{holder}` frees it, or pick another port here"))
        elif 1 <= port <= 65535 and not holder and not port_is_free(port):
            problems.append(doc.problem(("ingress", "port"),
                                        f"port {port} on 127.0.0.1 is in use (TCP or UDP, both of which the sandbox "
                                        "holds); stop what holds it or pick another"))
    return problems


def _role_problems(doc: Document, models: list) -> list[Problem]:
    """One server serves the embedding model, and at least one chat model is
    left to chat with."""
    problems = []
    roles = [m.get("role", "chat") if isinstance(m, dict) else None for m in models]
    embedding = [i for i, role in enumerate(roles) if role == "embeddings"]
    for i in embedding[1:]:
        problems.append(doc.problem(("models", i, "role"), f"only one model may have role: embeddings, and "
                                                           f"models[{embedding[0]}] has it"))
    if embedding and all(role == "embeddings" for role in roles):
        problems.append(doc.problem(("models", embedding[0], "role"),
                                    "no model is left to chat with: give another model (role: chat, the default)"))
    for i in embedding:
        if "chat_format" in models[i]:
            problems.append(doc.problem(("models", i, "chat_format"),
                                        "has no use for a model with role: embeddings; remove it", prefer_key=True))
    return problems


def embedding_warnings(policy: Policy, doc: Document | None, display: str | None = None) -> list[Problem]:
    """What `validate` and `up` warn of: a front-end that reads documents
    through an embedding model, with none in the policy. Not a problem: the
    sandbox runs and chats; only the documents fail, inside it (the recipe
    points them at the backend, never at a cloud)."""
    recipe = FRONTEND_RECIPES.get(policy.frontend.recipe) if policy.frontend and policy.frontend.recipe else None
    if not recipe or not recipe.embeddings_env or policy.embedding_model:
        return []
    line, column = doc.mark(("frontend", "recipe")) if doc else (0, 0)
    return [Problem(display or str(policy.file), line, column, "frontend.recipe",
                    f"warning: {policy.frontend.recipe} turns uploaded documents into vectors with an embedding "
                    f"model, and no model here has role: embeddings, so their processing will fail. Add one "
                    f"under models with `role: embeddings` (docs/models.md names some)")]


def _unbounded_volume_problems(doc: Document) -> list[Problem]:
    """On an engine that cannot bound a volume's size, the front-end's data
    volume is refused unless the policy accepts it unbounded by name: a
    front-end could otherwise fill the host's disk through it."""
    data = doc.data
    frontend = data.get("frontend")
    accepted = data.get("accept_unbounded_volumes")
    if not isinstance(frontend, dict) or (isinstance(accepted, list) and "data" in accepted):
        return []
    recipe = FRONTEND_RECIPES.get(frontend.get("recipe")) if isinstance(frontend.get("recipe"), str) else None
    if not frontend.get("data", (recipe or CUSTOM_FRONTEND).data):
        return []
    size = frontend.get("data_size", DEFAULT_DATA_SIZE)
    # At the line that makes the volume: its size, its path, or the recipe that gives it one.
    where = next((("frontend", key) for key in ("data_size", "data", "recipe") if key in frontend), ("frontend",))
    line, column = doc.mark(where)
    return [Problem(doc.file, line, column, "frontend.data_size",
                    f"the front-end's data volume cannot be bounded ({size}) on this Docker engine: its storage "
                    "does not enforce volume sizes (`sandbox doctor` says why), so the front-end could fill the "
                    "host's disk. Give the engine a data-root on XFS with project quotas, or accept an unbounded "
                    "volume by adding `accept_unbounded_volumes: [data]` to the policy")]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _resolve(base: Path, relative: str) -> Path:
    # Symlinks are resolved so the file checked is the file that gets mounted.
    return Path(os.path.realpath(base / os.path.expanduser(relative)))


def port_is_free(port: int) -> bool:
    """Whether 127.0.0.1:port is free for TCP and for UDP: the ingress holds both
    (launcher/spec.py says why)."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            if kind == socket.SOCK_STREAM:
                # As a server binds: closed connections lingering in TIME_WAIT (say,
                # from a sandbox just taken down) do not make a port busy; a listener does.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _to_policy(data: dict, file: Path, base: Path, model_paths: dict[str, Path]) -> Policy:
    models = tuple(
        Model(alias=m["alias"], path=model_paths.get(m["path"]) or _resolve(base, m["path"]), sha256=m["sha256"],
              context_length=m.get("context_length", DEFAULT_CONTEXT_LENGTH),
              chat_format=m.get("chat_format"), role=m.get("role", "chat"))
        for m in data["models"])
    b = {**BACKEND_DEFAULTS, **data.get("backend", {})}
    gpu = b["gpu"] if isinstance(b["gpu"], str) else tuple(str(d) for d in b["gpu"])
    backend = Backend(gpu=gpu, gpu_layers=b["gpu_layers"], memory=b["memory"], cpus=float(b["cpus"]),
                      runtime=b["runtime"])
    f = data["frontend"]
    return Policy(file=file, name=data["name"], models=models, backend=backend,
                  frontend=None if f == "none" else _frontend(f, base), ingress_port=data["ingress"]["port"],
                  audit=data.get("audit", "lookups"),
                  accept_unbounded_volumes=tuple(data.get("accept_unbounded_volumes", ())))


def _frontend(f: dict, base: Path) -> Frontend:
    defaults = FRONTEND_RECIPES.get(f.get("recipe"), CUSTOM_FRONTEND)
    build = f.get("build")
    return Frontend(
        recipe=f.get("recipe"),
        build_context=_resolve(base, build["context"]) if build else None,
        build_dockerfile=build.get("dockerfile", "Dockerfile") if build else "Dockerfile",
        image=f.get("image"),
        port=f.get("port", defaults.port),
        backend_url_env=f.get("backend_url_env", defaults.backend_url_env),
        backend_key_env=f.get("backend_key_env", defaults.backend_key_env),
        env=tuple(sorted((k, _text(v)) for k, v in f.get("env", {}).items())),
        data=f.get("data", defaults.data),
        user=f.get("user", defaults.user),
        health_path=f.get("health_path", defaults.health_path),
        memory=f.get("memory", defaults.memory),
        cpus=float(f.get("cpus", defaults.cpus)),
        runtime=f.get("runtime", "runc"),
        build_allow_hosts=tuple(build.get("allow_hosts", ())) if build else (),
        data_size=f.get("data_size", DEFAULT_DATA_SIZE),
    )
