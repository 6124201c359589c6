"""`sandbox down`: remove every resource labelled with the sandbox's name.
The front-end's data volume and the access token stay unless `volumes` is set."""
from __future__ import annotations

from typing import Callable

from launcher import access
from launcher.browser import close_locked_window
from launcher.commands.audit import keep_ingress_refusals
from launcher.commands.target import resolve_name
from launcher.engine import DockerGateway
from launcher.errors import SandboxError
from launcher.mutex import one_command_at_a_time
from launcher.readiness import forget_ready
from launcher.signing import forget_signer


def down(gateway: DockerGateway, target: str | None, volumes: bool = False,
         say: Callable[[str], None] | None = None) -> dict:
    name = resolve_name(gateway, target, "down")
    with one_command_at_a_time(name, say):
        # Before the ingress goes: whoever took its port would get what the window sends.
        close_locked_window(name, say)
        if not volumes:  # the audit volume stays, and with it what the ingress refused
            try:
                keep_ingress_refusals(gateway, name)
            except SandboxError as e:  # a sandbox half gone must still go
                if say:
                    say(f"the ingress's refusals could not be kept: {e}")
        removed = gateway.applier.remove_sandbox(name, volumes=volumes, say=say)
        forget_signer(name)  # nothing runs that anyone signed
        forget_ready(name)
        if volumes and access.saved_token(name):
            access.forget_token(name)
            removed.append(f"access token {access.token_file(name)}")
    return {"name": name, "removed": removed}
