"""`sandbox logs [SANDBOX] [PART]`: the log of one part of a sandbox."""
from __future__ import annotations

from typing import Iterator

from launcher.commands.target import resolve_name
from launcher.engine import DockerGateway
from launcher.errors import NotFound, SandboxError
from launcher.spec import PARTS, resource_name


def sandbox_and_part(first: str | None, second: str | None, sandbox: str | None) -> tuple[str | None, str]:
    """(the sandbox, or None for the only one; the part) from `logs SANDBOX
    PART`, `logs PART`, or the older `logs PART -s SANDBOX` that scripts use.
    A lone word that names a part is the part, as it always was."""
    if first is not None and second is not None:
        if sandbox is not None and sandbox != first:
            raise SandboxError(f"two sandboxes named ({first} and -s {sandbox}): name one, "
                               f"as `sandbox logs {first} {second}`")
        return first, second
    if first is None:
        raise NotFound(f"name a part: `sandbox logs {sandbox + ' ' if sandbox else ''}{PARTS[0]}` "
                       f"(the parts are {', '.join(PARTS)})")
    if first in PARTS or sandbox is not None:
        return sandbox, first
    raise NotFound(f"name a part of sandbox {first}: `sandbox logs {first} {PARTS[0]}` "
                   f"(the parts are {', '.join(PARTS)})")


def logs(gateway: DockerGateway, part: str, sandbox: str | None = None, tail: int = 100,
         follow: bool = False) -> Iterator[str]:
    if part not in PARTS:
        raise NotFound(f"no part named {part}; the parts are {', '.join(PARTS)}")
    name = resolve_name(gateway, sandbox, "logs", after=part)
    return gateway.containers.logs(resource_name(name, part), tail=tail, follow=follow)
