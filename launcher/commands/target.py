"""Which sandbox a command is about: named by its name, by its policy file,
or (with only one on this engine) not at all."""
from __future__ import annotations

from pathlib import Path

from launcher.docker_gateway import DockerGateway
from launcher.errors import NotFound
from launcher.policy.loader import load


def resolve_name(gateway: DockerGateway, target: str | None) -> str:
    """A sandbox named by its name, by its policy file, or (with only one on
    this engine) not at all."""
    if target and (target.endswith((".yaml", ".yml")) or Path(target).is_file()):
        doc, problems = load(Path(target))
        if doc is None or not isinstance(doc.data, dict) or not isinstance(doc.data.get("name"), str):
            raise NotFound(f"cannot read a sandbox name from {target}")
        return doc.data["name"]
    if target:
        return target
    found = sorted(gateway.sandboxes())
    if len(found) == 1:
        return found[0]
    if not found:
        raise NotFound("no sandbox is running on this engine")
    raise NotFound(f"several sandboxes exist ({', '.join(found)}); name one")
