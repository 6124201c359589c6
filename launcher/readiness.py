"""What `up` saw ready, kept for `status` until the engine's own healthchecks
have run. `up` knows a sandbox is ready from its own requests (the UI's first
request to the backend, with the UI's key; the UI through the ingress), as
soon as it is; the engine's healthcheck first runs only after its interval.
So that `status` right after `up` agrees with it without `up` waiting for the
engine, `status` reads a part whose healthcheck has not yet run as `up` saw
it, for as long as it is the same run of the same container."""
from __future__ import annotations

import json

from launcher.access import token_file
from launcher.errors import NotFound
from launcher.private import private_directory, write_private


def _record(sandbox: str):
    return token_file(sandbox).with_name("ready.json")


def remember_ready(sandbox: str, seen: dict[str, dict]) -> None:
    """`seen`: each part's container state as `up` last saw it, once ready.
    A container is known by its name and the moment it started: started
    again, it is another run, which `up` did not see."""
    path = _record(sandbox)
    write_private(private_directory(path.parent) / path.name,
                  json.dumps({state["name"]: state.get("started_at") for state in seen.values()}) + "\n")


def seen_ready(sandbox: str) -> dict[str, str]:
    """Container name -> the start `up` saw ready; nothing if unreadable."""
    try:
        data = json.loads(_record(sandbox).read_text())
    except (OSError, ValueError, RecursionError, NotFound):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)} \
        if isinstance(data, dict) else {}


def health_of(state: dict, ready: dict[str, str]) -> tuple[str | None, str]:
    """A part's health, and who says so ("engine" or "up")."""
    if state["health"] == "starting" and state.get("started_at") and ready.get(state["name"]) == state["started_at"]:
        return "healthy", "up"
    return state["health"], "engine"


def forget_ready(sandbox: str) -> None:
    try:
        _record(sandbox).unlink(missing_ok=True)
    except NotFound:
        pass
