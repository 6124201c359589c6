"""`sandbox logs PART`: the log of one part of a sandbox."""
from __future__ import annotations

from typing import Iterator

from launcher.commands.target import resolve_name
from launcher.docker_gateway import DockerGateway
from launcher.errors import NotFound
from launcher.spec import PARTS, resource_name


def logs(gateway: DockerGateway, part: str, sandbox: str | None = None, tail: int = 100,
         follow: bool = False) -> Iterator[str]:
    if part not in PARTS:
        raise NotFound(f"no part named {part}; the parts are {', '.join(PARTS)}")
    name = resolve_name(gateway, sandbox)
    return gateway.logs(resource_name(name, part), tail=tail, follow=follow)
