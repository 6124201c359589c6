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


def locked_browser(kind: str | None = None) -> browser.Browser:
    if kind is not None and kind not in browser.KINDS:
        raise SandboxError(f"--browser is one of {', '.join(browser.KINDS)}, not {kind!r}")
    found = browser.find_browser(kind=kind)
    if not found:
        wanted = kind.capitalize() if kind else "Chromium, Chrome or Firefox"
        raise SandboxError(f"no {wanted} found on PATH to open a locked window in; "
                           "`sandbox open --system-browser` opens your usual browser (which the UI's page can lead "
                           "elsewhere), `sandbox open --print` prints the link")
    return found


def open_locked(name: str, link: str, kind: str | None = None) -> tuple[browser.Browser, str]:
    """The sandbox's UI in a window of its own browser profile, which can
    reach the sandbox's origin and nothing else (launcher/browser.py): the
    browser used, and its profile's directory."""
    found = locked_browser(kind)
    profile = access.browser_profile(name)
    browser.start(found, profile, origin(link), access.write_open_page(name, link))
    return found, str(profile)


def open_headless(gateway: DockerGateway, name: str, link: str, seconds: float,
                  kind: str | None = None) -> tuple[browser.Browser, bool]:
    """The same locked window, headless, kept open `seconds` once the page has
    loaded (Chromium) or the access link was used (Firefox, which has no
    remote protocol but on a TCP port: the ingress's log says so): the
    browser used, and whether it got so far."""
    found = locked_browser(kind)
    profile, page = access.browser_profile(name), access.write_open_page(name, link)
    if found.kind == "firefox":
        since = time.time()
        loaded = browser.run_firefox_headless(found, profile, origin(link), page,
                                              lambda: access_link_used_since(gateway, name, since), seconds)
    else:
        loaded = browser.run_driven(found, profile, origin(link), page, lambda window: time.sleep(seconds))
    return found, loaded


# The ingress's line for each use of the access link (images/ingress/
# nginx.conf.template: every one is logged, sandbox.js), answered with the
# cookie: a redirect (302), or, for a link opened from elsewhere (a file
# page, as here), the page that goes on (200).
ACCESS_LINK_USED = "ingress: access link used: "
# Its log's last lines read for it: refusals are logged a few dozen lines at
# most however many there are, so a flood cannot push this one out.
LOG_LINES_READ = 1000


def access_link_used_since(gateway: DockerGateway, name: str, since: float) -> bool:
    """Whether the ingress answered the access link with its cookie (302)
    at `since` or later: a browser came to the sandbox with the token and
    was let in. It says nothing of the page after."""
    from launcher.commands.audit import _when
    lines = gateway.containers.logs(resource_name(name, "ingress"), tail=LOG_LINES_READ, timestamps=True)
    return any(text.startswith(ACCESS_LINK_USED) and " reason=login " in text and _when(stamp) >= since
               for stamp, _, text in (line.partition(" ") for line in lines))


def origin(link: str) -> str:
    """http://127.0.0.1:PORT of an access link."""
    return link.split("/?", 1)[0]
