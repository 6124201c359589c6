"""Who may use a sandbox's UI: the holder of its access token.

The ingress answers only requests that carry the token, as the cookie it sets
when the access link (`URL?sandbox_token=TOKEN`) is opened, or as
`Authorization: Bearer TOKEN` from scripts (docs/threats.md, "The front door");
its API (/v1/) also takes the API token made of it (api_token).
The token is kept in a file only its owner can read, so it outlives `down`
and `up`; `down --volumes` forgets it and `up --new-token` replaces it."""
from __future__ import annotations

import hashlib
import html
import os
import re
import secrets
import shutil
import urllib.request
from pathlib import Path

from launcher.errors import NotFound
from launcher.private import private_directory, write_private

TOKEN_ENV = "SANDBOX_ACCESS_TOKEN"
LINK_PARAMETER = "sandbox_token"
# The launcher's own requests through the front door (`up`'s check,
# `verify`'s controls) say so with this User-Agent, for people reading, and
# prove it with LAUNCHER_HEADER: the ingress counts only those as not the
# owner's API calls (images/ingress/nginx.conf.template), so a client cannot
# hide its calls from `status` by its User-Agent.
LAUNCHER_AGENT = "sandbox-launcher"
LAUNCHER_HEADER = "X-Sandbox-Launcher"


def cookie_name(sandbox: str) -> str:
    # Cookies are not kept apart by port: each sandbox needs a name of its own.
    return f"sandbox-{sandbox}"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_id(token: str) -> str:
    """A short fingerprint of the token: it changes when the token does (so a
    new token recreates the ingress) and says nothing about the token."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def launcher_mark(token: str, api_key: str) -> str:
    """LAUNCHER_HEADER's value: made of the access token and the backend's
    key, which only the launcher and the ingress hold both of. An API client
    holds the token, the front-end the key: neither can make it
    (images/ingress/start.sh makes the same)."""
    return hashlib.sha256(f"sandbox-launcher:{api_key}:{token}".encode()).hexdigest()[:32]


def api_token(token: str) -> str:
    """The API token: what `sandbox env` gives scripts and editors as their
    key. Made of the access token (images/ingress/start.sh makes the same),
    it opens the API (/v1/) only: its holder cannot make the access token of
    it, so can neither trade it for the cookie, pass for the browser, nor
    use the UI's routes, where the API's bound on calls does not hold."""
    return hashlib.sha256(f"sandbox-api-token:{token}".encode()).hexdigest()


def access_link(url: str, token: str) -> str:
    return f"{url}?{LINK_PARAMETER}={token}"


def state_dir() -> Path:
    """Per-user state: $SANDBOX_STATE_DIR, else $XDG_STATE_HOME/sandbox, else
    ~/.local/state/sandbox."""
    if os.environ.get("SANDBOX_STATE_DIR"):
        return Path(os.environ["SANDBOX_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "sandbox"


def is_sandbox_name(name: str) -> bool:
    """The schema's pattern for names: safe as a file name, too."""
    return re.fullmatch(r"[a-z][a-z0-9-]{0,29}", name) is not None


def token_file(sandbox: str) -> Path:
    if not is_sandbox_name(sandbox):
        raise NotFound(f"{sandbox!r} is not a sandbox name")
    return state_dir() / sandbox / "access-token"


def open_page(sandbox: str) -> Path:
    return token_file(sandbox).with_name("open.html")


def browser_profile(sandbox: str) -> Path:
    """The locked window's browser profile (launcher/browser.py): it keeps
    the sandbox's cookie, which is the token, so it lives and goes with it."""
    return token_file(sandbox).with_name("browser")


def saved_token(sandbox: str) -> str | None:
    try:
        token = token_file(sandbox).read_text().strip()
    except (OSError, NotFound):
        return None
    return token or None


def save_token(sandbox: str, token: str) -> None:
    """Write the token readable by its owner only, replacing any old one whole."""
    path = token_file(sandbox)
    write_private(private_directory(path.parent) / path.name, token + "\n")


def forget_token(sandbox: str) -> None:
    path = token_file(sandbox)
    path.unlink(missing_ok=True)
    open_page(sandbox).unlink(missing_ok=True)
    shutil.rmtree(browser_profile(sandbox), ignore_errors=True)
    try:
        path.parent.rmdir()
    except OSError:
        pass


OPEN_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8">
<meta http-equiv="refresh" content="0;url={link}">
<title>Opening sandbox {name}</title></head>
<body><p>Opening sandbox {name}: if nothing happens, <a href="{link}">follow this link</a>.</p></body></html>
"""


def write_open_page(sandbox: str, link: str) -> Path:
    """A page that sends the browser on to the access link, for the browser
    to be started on by its path: every local user can read a process's
    command line (/proc/PID/cmdline), and a browser keeps its own for its
    life, so the link itself is never put there (Jupyter's redirect file).
    Like the token it leads to, it is made new, owner-only, beside it."""
    page = open_page(sandbox)
    write_private(private_directory(page.parent) / page.name,
                  OPEN_PAGE.format(link=html.escape(link), name=html.escape(sandbox)))
    return page


def owner_headers(token: str | None, mark: str | None) -> dict:
    """The bearer token (where given), and the launcher's mark where it is
    known: the owner's requests the launcher makes itself (its checks and
    controls), which are not counted as the owner's API calls."""
    return {**({"Authorization": f"Bearer {token}"} if token else {}), **({LAUNCHER_HEADER: mark} if mark else {})}


def open_ui(url: str, token: str | None = None, data: bytes | None = None,
            headers: dict | None = None, timeout: float = 30, mark: str | None = None):
    """A request to a sandbox's UI as its owner, by the launcher itself: with
    the bearer token, its launcher_mark, and never through a proxy from the
    environment (127.0.0.1 is this machine)."""
    headers = {"User-Agent": LAUNCHER_AGENT, **(headers or {}), **owner_headers(token, mark)}
    request = urllib.request.Request(url, data=data, headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return opener.open(request, timeout=timeout)
