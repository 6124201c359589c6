"""`sandbox open`: the access link of a running sandbox, for its owner's browser."""
from __future__ import annotations

import time
import webbrowser

from launcher import access, browser
from launcher.commands.prepare import current_token
from launcher.commands.target import resolve_name
from launcher.engine import DockerGateway
from launcher.errors import NotFound, SandboxError
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


# What the user's usual browser cannot stop, said when it is asked for.
SYSTEM_BROWSER_CAVEAT = ("your usual browser: the UI's page can still navigate it, open popups and send WebRTC "
                         "datagrams to anywhere (docs/security.md); plain `sandbox open` locks a window to the sandbox")


def locked_browser() -> browser.Browser:
    found = browser.find_browser()
    if not found:
        raise SandboxError("no Chromium or Chrome found on PATH to open a locked window in; "
                           "`sandbox open --system-browser` opens your usual browser (which the UI's page can lead "
                           "elsewhere), `sandbox open --print` prints the link")
    return found


def open_locked(name: str, link: str) -> tuple[browser.Browser, str]:
    """The sandbox's UI in a window of its own browser profile, which can
    reach the sandbox's origin and nothing else (launcher/browser.py): the
    browser used, and its profile's directory."""
    found = locked_browser()
    profile = access.browser_profile(name)
    browser.start(found, profile, origin(link), access.write_open_page(name, link))
    return found, str(profile)


def open_headless(name: str, link: str, seconds: float) -> tuple[browser.Browser, bool]:
    """The same locked window, headless, kept open `seconds` once the page has
    loaded: the browser used, and whether the page loaded."""
    found = locked_browser()
    loaded = browser.run_headless(found, access.browser_profile(name), origin(link),
                                  access.write_open_page(name, link), lambda window: time.sleep(seconds))
    return found, loaded


def origin(link: str) -> str:
    """http://127.0.0.1:PORT of an access link."""
    return link.split("/?", 1)[0]
