"""Which sandbox a command is about: named by its name, by its policy file,
or (with only one on this engine) not at all."""
from __future__ import annotations

from pathlib import Path

from launcher.engine import DockerGateway
from launcher.errors import NotFound
from launcher.policy.loader import Document, load
from launcher.spec import resource_name


def name_in(raw: bytes | None, file: Path) -> str | None:
    """The sandbox name a policy gives (its bytes `raw`, else the file's), if any."""
    return name_of(load(file, raw=raw)[0])


def name_of(doc: Document | None) -> str | None:
    """The sandbox name a parsed policy gives, if any."""
    name = doc.data.get("name") if doc is not None and isinstance(doc.data, dict) else None
    return name if isinstance(name, str) else None


def resolve_name(gateway: DockerGateway, target: str | None, command: str = "status", after: str = "") -> str:
    """A sandbox named by its name, by its policy file, or (with only one on
    this engine) not at all. `command` and `after` are the words around the
    name in the command line that names it, so an error can show that line."""
    if target and (target.endswith((".yaml", ".yml")) or Path(target).is_file()):
        name = name_in(None, Path(target))
        if name is None:
            raise NotFound(f"cannot read a sandbox name from {target}")
        return name
    if target:
        return target
    found = sorted(gateway.state.sandboxes())
    if len(found) == 1:
        return found[0]
    if not found:
        raise NotFound("no sandbox is running on this engine: `sandbox up POLICY` starts one")
    example = " ".join(word for word in ("sandbox", command, found[0], after) if word)
    raise NotFound(f"several sandboxes exist ({', '.join(found)}); name one: `{example}`")


def holds_port(gateway: DockerGateway, name: str, port: int) -> bool:
    """Whether sandbox `name`'s ingress publishes 127.0.0.1:`port`."""
    state = gateway.state.container_state(resource_name(name, "ingress"))
    return bool(state) and f"127.0.0.1:{port}" in state["ports"]


def sandbox_holding(gateway: DockerGateway, port: int) -> str | None:
    """The sandbox whose ingress publishes 127.0.0.1:`port`, if one does."""
    return next((name for name in sorted(gateway.state.sandboxes()) if holds_port(gateway, name, port)), None)
