"""`sandbox open`: the access link of a running sandbox, for its owner's browser."""
from __future__ import annotations

import webbrowser

from launcher import access
from launcher.commands.prepare import current_token
from launcher.commands.target import resolve_name
from launcher.engine import DockerGateway
from launcher.errors import NotFound
from launcher.spec import resource_name


def front_door(gateway: DockerGateway, target: str | None, command: str) -> tuple[str, str, str]:
    """The sandbox's name, its front door's address (host:port) and the
    owner's access token; NotFound when it is not running or the token is
    not this user's to read."""
    name = resolve_name(gateway, target, command)
    state = gateway.state.container_state(resource_name(name, "ingress"))
    if not state or state["state"] != "running" or not state["ports"]:
        raise NotFound(f"sandbox {name} is not running; `sandbox up` it first")
    token = current_token(gateway, name)
    if not token:
        raise NotFound(f"no access token of sandbox {name} is readable here: it is kept in "
                       f"{access.token_file(name)} of the user who started it")
    return name, state["ports"][0], token


def access_link(gateway: DockerGateway, target: str | None) -> tuple[str, str]:
    """The sandbox's name and its access link."""
    name, address, token = front_door(gateway, target, "open")
    return name, access.access_link(f"http://{address}/", token)


def open_in_browser(name: str, link: str) -> bool:
    """Start the user's browser on a page only they can read, which leads it
    on to the link: the link itself is never on the browser's command line,
    where every local user can read it (launcher/access.py, write_open_page)."""
    return webbrowser.open(access.write_open_page(name, link).as_uri())
