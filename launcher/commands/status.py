"""`sandbox status`: each sandbox's parts, their state and health, its URL,
and what its volumes hold."""
from __future__ import annotations

import os

from launcher import access
from launcher.commands.audit import api_calls, attempts
from launcher.commands.prepare import current_token
from launcher.commands.target import resolve_name
from launcher.engine import DockerGateway
from launcher.errors import NotFound
from launcher.readiness import health_of, seen_ready
from launcher.signing import remembered_signer
from launcher.spec import PARTS, resource_name


def status(gateway: DockerGateway, target: str | None = None, memory: bool = False) -> list[dict]:
    known = gateway.state.sandboxes()
    names = sorted(known)
    if target:
        name = resolve_name(gateway, target)
        if name not in known:
            raise NotFound(f"no sandbox named {name} on this engine")
        names = [name]
    out = []
    for name in names:
        parts = []
        url = None
        ready = seen_ready(name)
        for part in PARTS:
            state = gateway.state.container_state(resource_name(name, part))
            if state is None:
                parts.append({"part": part, "state": "missing", "health": None})
                continue
            health, health_by = health_of(state, ready)
            entry = {"part": part, "container": state["name"], "state": state["state"],
                     "health": health, "health_by": health_by, "restarts": state["restarts"],
                     "image": state["image"]}
            if memory and state["state"] == "running":
                entry["memory_bytes"] = gateway.state.memory_usage(state["name"])
            parts.append(entry)
            if part == "ingress" and state["ports"]:
                url = f"http://{state['ports'][0]}/"
        # A sandbox with no front-end (`frontend: none`): its ingress has no
        # upstream for pages, and no front-end is missing.
        api_only = is_api_only(gateway, name, parts)
        if api_only:
            parts = [p for p in parts if p["part"] != "frontend"]
        # A model deleted or moved while the sandbox runs: the backend still
        # reads the file it opened, but the next start cannot.
        problems = [f"model file missing: {path}" for path in gateway.state.bind_sources(resource_name(name, "backend"))
                    if not os.path.exists(path)]
        healthy = not problems and all(p["state"] == "running" and p["health"] in (None, "healthy") for p in parts)
        token = current_token(gateway, name)
        out.append({"name": name, "url": url, "healthy": healthy, "api_only": api_only, "parts": parts,
                    "policy": known[name]["policy"], "token": token, "problems": problems,
                    "signed_by": remembered_signer(name),
                    # Names looked up outside the sandbox, as its DNS sink counted them.
                    "attempts": attempts(gateway, name),
                    # The owner's calls to the API at the front door, by kind
                    # of client and model: counts, never contents.
                    "api_calls": api_calls(gateway, name),
                    # What each volume holds, and its bound (none: unbounded).
                    "volumes": gateway.state.volume_usage(name),
                    "access_link": access.access_link(url, token) if url and token else None})
    return out


def is_api_only(gateway: DockerGateway, name: str, parts: list[dict]) -> bool:
    """Whether a sandbox was started with no front-end: none is there, and
    its ingress was given the API's upstream and none for its pages."""
    state = {p["part"]: p["state"] for p in parts}
    if state.get("frontend") != "missing" or state.get("ingress") == "missing":
        return False
    return (gateway.state.running_env(name, "ingress", "SANDBOX_API_UPSTREAM") is not None
            and gateway.state.running_env(name, "ingress", "SANDBOX_UPSTREAM") is None)
