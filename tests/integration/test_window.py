"""`sandbox open`'s locked window (launcher/browser.py), in real Chromium,
against a hostile UI of ours (tests/fixtures/hostile-ui: the `chat` UI whose
page tries every way out of the browser a page has, each to a canary on this
machine, with a secret in it). In the sandbox's window nothing arrives at the
canary and the chat still answers; the browser's own background requests,
recorded by a proxy that answers nothing, are none. Control: the same page in
a plain profile reaches the canary each way."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
import urllib.error
import uuid
from pathlib import Path

import pytest

from launcher import access, browser
from launcher.errors import SandboxError
from tests.integration.conftest import FIXTURES_BAD, QUICKSTART_ALIAS, ROOT, ca_bundle, poll, ui, \
    write_policy
from tests.integration.test_browser import serve
from tests.support.canary import Canary, Recorder, hosts_asked

CHROMIUM = browser.find_browser(kind="chromium")
FIREFOX = browser.find_browser(kind="firefox")
# The locked window's tests run in each browser found (CI installs both).
BROWSERS = [pytest.param(found, id=found.kind) for found in (CHROMIUM, FIREFOX) if found]
# Firefox's own requests that no preference stops: remote settings, whose
# server a release build takes from no preference (docs/security.md). They
# end at the dead proxy like the page's.
FIREFOX_OWN = {"CONNECT firefox.settings.services.mozilla.com:443 HTTP/1.1"}
# The ways the page tries, in order. The navigating ones leave the page (in
# the locked window, for the browser's error page): it is loaded anew for each.
WAYS = ("prefetch", "webrtc", "window.open", "form", "service worker", "beacon", "navigate", "refresh", "click",
        "webtransport")
# What each way, where it gets through, asks the canary for ("webrtc": a STUN
# datagram; "webtransport": a QUIC datagram to UDP on the page's own origin's
# port, where the canary listens beside it). The page's preconnect and dns-prefetch are tried with its
# prefetch, but showed nothing even in a plain profile: only the prefetch is awaited.
ARRIVES_AS = {"prefetch": {"prefetch"}, "webrtc": {"webrtc"}, "window.open": {"popup"},
              "form": {"form"}, "service worker": {"worker"}, "beacon": {"beacon"}, "navigate": {"navigate"},
              "refresh": {"refresh"}, "click": {"click"}, "webtransport": {"webtransport"}}
EVERY_WAY = set().union(*ARRIVES_AS.values())

pytestmark = pytest.mark.skipif(not BROWSERS, reason="no chromium or firefox on this machine "
                                                     "(apt-get install chromium firefox-esr)")


def start_hostile(gateway, directory: Path):
    """A real sandbox whose UI is the hostile one, served through the real ingress."""
    from launcher.commands.up import up
    shutil.copytree(FIXTURES_BAD.parent / "hostile-ui", directory / "hostile-ui")
    for name in ("server.py", "index.html", "app.js", "app.css"):  # the chat UI as shipped, under the hostile page
        shutil.copy(ROOT / "images" / "chat" / name, directory / "hostile-ui" / name)
    return up(gateway, write_policy(directory, frontend={"build": {"context": "hostile-ui"},
                                                        "health_path": "/health"}), ca_bundle=ca_bundle())


@pytest.fixture(scope="module")
def hostile(gateway, tmp_path_factory):
    from launcher.commands.down import down
    result = start_hostile(gateway, tmp_path_factory.mktemp("hostile"))
    yield result
    down(gateway, result.name, volumes=True)


@pytest.fixture(scope="module")
def display():
    """A display of its own (Xvfb), for the window as the user gets it: on a
    screen, not headless (which differs in what it starts)."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.skip("no Xvfb on this machine (apt-get install xvfb)")
    read, write = os.pipe()
    # -displayfd: Xvfb picks a free display and writes its number once it is ready.
    server = subprocess.Popen([xvfb, "-displayfd", str(write), "-nolisten", "tcp", "-screen", "0", "1280x800x24"],
                              pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as ready:
        number = ready.readline().strip()
    assert number, "Xvfb did not start"
    yield f":{number}"
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture
def canary():
    listening = Canary(uuid.uuid4().hex)
    yield listening
    listening.close()


@pytest.fixture
def proxy(monkeypatch):
    """The locked window's proxy, recording what the browser asks it for."""
    recorder = Recorder()
    monkeypatch.setenv(browser.PROXY_ENV, recorder.address)
    yield recorder
    recorder.close()


def plain_copy(result):
    """The hostile UI as a server on another port: each path fetched from the
    sandbox, served without the ingress's headers (its Content-Security-Policy
    stops some ways on its own; here only the window may)."""
    import http.server

    class Plain(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            try:
                with ui(result, self.path.lstrip("/"), timeout=30) as answer:
                    status, body, kind = answer.status, answer.read(), answer.headers["Content-Type"]
            except urllib.error.HTTPError as e:  # the UI's own answer (a favicon it has not)
                status, body, kind = e.code, e.read(), e.headers["Content-Type"] or "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except OSError:
                pass  # the browser went on without it

        def log_message(self, *args):
            pass
    return serve(Plain)


def try_every_way(window, origin: str, canary: Canary, seen, shown: set[str]) -> None:
    """Each way, on the page loaded anew, as if the user had clicked; held
    until `seen()` (the ways that arrived where they are looked for) has it,
    for the ways in `shown` (those that show there)."""
    for way in WAYS:
        load_anew(window, origin)
        answer = window.evaluate(f"tryWay({json.dumps(way)}, {json.dumps(canary.for_the_page())})", gesture=True)
        if way == "webrtc" and getattr(window, "awaits", True):
            # Gathering is over: every STUN datagram is sent; or (the locked
            # Firefox) the page has no WebRTC at all.
            assert answer == "complete" or window.evaluate("typeof RTCPeerConnection === 'undefined'"), answer
        if way == "webtransport" and getattr(window, "awaits", True):
            # Its first datagram is sent; or (the locked Firefox) the page has no WebTransport.
            assert answer in ("sent", "failed", "absent"), answer
        shows = (ARRIVES_AS[way] - {"webrtc"}) & shown
        if shows:
            poll(lambda: shows <= seen(), what=lambda: f"{way} as {shows}; seen: {seen()}")


# On the document it leaves, the test marks it stale; on the browser's error
# page for a way's failed navigation (Chromium's chrome-error:, Firefox's
# about:neterror), it says so.
FRESH = """["chrome-error:", "about:"].includes(location.protocol) ? "error"
  : !window.stale && typeof tryWay === "function" && document.readyState === "complete" """


def load_anew(window, origin: str) -> None:
    """The page, loaded anew: a new document, not the one before still there
    while the navigation is under way."""
    def go():
        window.evaluate("window.stale = true")
        window.navigate(origin + "/")

    def fresh():
        try:
            state = window.evaluate(FRESH)
        except SandboxError:  # evaluated while the document was being replaced
            return False
        if state == "error":  # the last way's failed navigation landed after ours: again
            go()
        return state is True
    go()
    poll(fresh, what="the page loaded anew")


class Playwright:
    """A plain profile's page, as try_every_way drives a window (no gesture
    needed: Playwright's Chromium blocks no popups)."""

    def __init__(self, page):
        self.page = page

    def navigate(self, url):
        try:
            self.page.goto(url)
        except Exception as e:  # noqa: BLE001 - its own error type: interrupted, load_anew goes again
            if "interrupted" not in str(e):
                raise

    def evaluate(self, expression, gesture=False):
        try:
            return self.page.evaluate(expression)
        except Exception as e:  # noqa: BLE001
            if "context was destroyed" in str(e):
                raise SandboxError(str(e)) from None  # as the window says it
            raise


def locked_window(found, profile, origin: str, page, hold, trace: Path | None = None, headless: bool = True) -> bool:
    """The locked window of `found` on `page`, `hold(window)` once the
    sandbox's page has loaded: Chromium's through its DevTools pipe, as
    `sandbox open --headless` runs it; Firefox's on the profile the launcher
    writes, with Marionette added for the test to drive it, and, with
    `trace`, under strace, which writes there every connection it opens.
    Not `headless`: the window the user gets, on $DISPLAY."""
    if found.kind == "chromium":
        return browser.run_driven(found, profile, origin, page, hold, headless)
    from tests.support.marionette import Marionette
    browser.prepare_firefox_profile(profile, origin, browser.proxy_address(origin))
    window = Marionette(traced(browser.firefox_command(found, profile, page, headless=headless), trace), profile,
                        env=browser.window_environment(profile, found.kind))
    try:
        poll(lambda: window.evaluate(f"location.origin === {json.dumps(origin.rstrip('/'))} "
                                     "&& document.readyState === 'complete'"), what="the sandbox's page")
        hold(window)
    finally:
        window.close()
    return True


def traced(command: list[str], trace: Path | None) -> list[str]:
    """`command` under strace, which writes each process's every connect()
    and send to `trace` (none: the command as it is)."""
    if trace is None:
        return command
    strace = shutil.which("strace")
    assert strace, "strace is not installed (apt-get install strace)"
    return [strace, "-f", "-qq", "-e", "trace=connect,sendto,sendmsg,sendmmsg", "-o", str(trace), *command]


def name_lookups(trace: Path) -> list[str]:
    """The DNS queries in a trace: to port 53, or to systemd-resolved's socket."""
    return [line for line in trace.read_text().splitlines()
            if "htons(53)" in line or "/run/systemd/resolve/" in line]


def own_requests(found, proxy, canary) -> list[str]:
    """What the browser asked the proxy for of its own, but what it always asks."""
    return [line for line in canary.through(proxy)[1] if not (found.kind == "firefox" and line in FIREFOX_OWN)]


# A plain Firefox profile: its defaults but one. Firefox sends no STUN to a
# loopback address by default, and the canary listens on one (a page's real
# STUN server is anywhere): the control lets it.
FIREFOX_PLAIN = 'user_pref("media.peerconnection.ice.loopback", true);\n'



@pytest.mark.skipif(FIREFOX is None, reason="no firefox on this machine (apt-get install firefox-esr)")
def test_a_plain_firefox_profile_reaches_the_canary(hostile, canary, tmp_path):
    """Firefox's control: the same page in a plain Firefox profile reaches
    the canary every way, with the secret, and Firefox looks names up at the
    host's resolver itself."""
    from tests.support.marionette import Marionette
    server = plain_copy(hostile)
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    assert canary.listen_beside(origin)
    page = tmp_path / "open.html"
    page.write_text(access.OPEN_PAGE.format(link=origin + "/", name="copy"))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "user.js").write_text(FIREFOX_PLAIN)
    trace = tmp_path / "strace"
    window = Marionette(traced(browser.firefox_command(FIREFOX, tmp_path / "plain", page, headless=True), trace),
                        tmp_path / "plain", awaits=False)
    try:
        try_every_way(window, origin, canary, canary.reached, EVERY_WAY)
        poll(lambda: EVERY_WAY <= canary.reached(), what=lambda: f"every way; seen {canary.reached()}")
        poll(lambda: name_lookups(trace), what="a name looked up by Firefox itself")
    finally:
        window.close()
        server.shutdown()
    assert all(canary.secret in line for line in canary.tcp.lines if line), canary.tcp.lines


def test_a_plain_profile_reaches_the_canary_every_way(hostile, canary):
    """The control: the page, served without the ingress's headers, in a
    plain Chromium profile: every way arrives, with the secret."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    server = plain_copy(hostile)
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    assert canary.listen_beside(origin)
    try:
        with sync_api.sync_playwright() as p:
            if CHROMIUM is None:
                pytest.skip("no chromium on this machine (apt-get install chromium)")
            plain = p.chromium.launch(executable_path=CHROMIUM.path, args=["--no-sandbox"])
            page = plain.new_context().new_page()
            try_every_way(Playwright(page), origin, canary, canary.reached, EVERY_WAY)
            poll(lambda: EVERY_WAY <= canary.reached(), what=lambda: f"every way; seen {canary.reached()}")
            plain.close()
    finally:
        server.shutdown()
    assert all(canary.secret in line for line in canary.tcp.lines if line), canary.tcp.lines


@pytest.mark.parametrize("found", BROWSERS)
def test_the_locked_window_alone_stops_every_way_and_sends_nothing_of_its_own(found, hostile, canary, proxy,
                                                                                   tmp_path):
    """The same page without the ingress's headers, in the locked window (its
    origin that of the copy): nothing reaches the canary. Each way that leaves
    the page is held until the proxy has it, so it was tried and stopped
    there; the proxy was asked for nothing else. Chromium has no switch that
    turns WebTransport off: what stops it there is the sandbox's hold on UDP
    at its origin's port (the test below), so here only Firefox's is watched."""
    server = plain_copy(hostile)
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    if found.kind == "firefox":
        assert canary.listen_beside(origin)
    page = tmp_path / "open.html"
    page.write_text(access.OPEN_PAGE.format(link=origin + "/", name="copy"))

    def arrived():  # at the proxy, or, where the window let it through, at the canary
        return canary.through(proxy)[0] | canary.reached()
    try:
        # Firefox's locked profile sends no prefetch at all: it shows nowhere.
        shown = EVERY_WAY - {"webrtc", "webtransport"} - ({"prefetch"} if found.kind == "firefox" else set())
        def hold(window):
            if found.kind == "firefox":
                # The canary, on loopback, would not get Firefox's STUN even
                # with WebRTC on (it sends none to loopback by default): what
                # stops a real STUN server's is that the page has no WebRTC.
                assert window.evaluate("typeof RTCPeerConnection") == "undefined"
            try_every_way(window, origin, canary, arrived, shown)
        loaded = locked_window(found, tmp_path / "profile", origin, page, hold)
    finally:
        server.shutdown()
    assert loaded
    assert canary.reached() == set() and canary.tcp.lines == [], canary.tcp.lines
    assert own_requests(found, proxy, canary) == [], "the browser's own requests"


@pytest.mark.parametrize("found", BROWSERS)
def test_in_the_sandboxs_window_nothing_arrives_and_the_chat_answers(found, hostile, canary, proxy, display,
                                                                     monkeypatch):
    """Through the real ingress, in the window `sandbox open` opens (its
    profile in the sandbox's state directory, started on the owner-only page
    that leads on to the access link), on a display as the user gets it, not
    headless: nothing reaches the canary, the navigations were tried (at the
    proxy), the browser asks nothing of its own, and the chat answers.
    Tried as an attacker would: a local program listened on UDP at the
    sandbox's own address and port (the ingress published TCP only) and the
    page's WebTransport to its own origin reached it, around the window's
    proxy and the CSP's 'self', in both browsers. Now the sandbox holds that
    UDP port: the canary cannot take it, even with SO_REUSEADDR and
    SO_REUSEPORT. Tried as an attacker would: the locked Firefox looked
    names of its own services up at the host's resolver (strace); now it
    looks up none."""
    name, link = hostile.name, hostile.access_link
    origin = hostile.url.rstrip("/")
    assert not canary.listen_beside(origin), "UDP at the sandbox's own address and port was free"
    chats = []
    trace = access.browser_profile(name).parent / "strace" if found.kind == "firefox" else None

    def hold(window):
        # The ingress's CSP stops the others in the page: only these leave it.
        try_every_way(window, origin, canary, lambda: canary.through(proxy)[0] | canary.reached(),
                      {"popup", "navigate", "refresh", "click"})
        window.navigate(origin + "/")
        poll(lambda: window.evaluate("document.readyState === 'complete'"), what="the page, once more")
        # The page's own fetch (in Firefox, not that of Marionette's script
        # sandbox, which is not the page's origin), its answer as text.
        chats.append(json.loads(window.evaluate(f"""(window.wrappedJSObject || window).fetch("/api/chat", {{
          method: "POST", headers: {{"Content-Type": "application/json"}}, body: JSON.stringify({{
          model: "{QUICKSTART_ALIAS}", max_tokens: 8, messages: [{{role: "user", content: "Say hello."}}]}})}})
          .then(r => r.text())""")))
    monkeypatch.setenv("DISPLAY", display)
    assert locked_window(found, access.browser_profile(name), origin, access.write_open_page(name, link), hold, trace,
                         headless=False)
    if trace:
        assert name_lookups(trace) == [], name_lookups(trace)[:5]
    [chat] = chats  # the model's answer, as the chat server gives it (test_quickstart.py)
    assert chat["model"] == QUICKSTART_ALIAS and chat["reply"]["role"] == "assistant", chat
    assert chat["reply"]["content"].strip() and chat["usage"]["completion_tokens"] > 0, chat
    assert canary.reached() == set() and canary.tcp.lines == [], canary.tcp.lines
    assert own_requests(found, proxy, canary) == [], "the browser's own requests"
    # What the scorecard's window column reads from the same proxy
    # (scripts/scorecard.py): the page's tries, by host; for our own UIs it
    # read nothing, and here it does.
    to_canary = [line for line in proxy.lines if canary.tcp.address in line]
    assert to_canary and {"host": canary.tcp.address, "count": len(to_canary)} in hosts_asked(proxy.lines), \
        proxy.lines


@pytest.mark.parametrize("found", BROWSERS)
def test_the_windows_proxy_is_the_sandboxs_own_ingress_which_refuses_and_logs_each_try(found, gateway, hostile,
                                                                                     canary, monkeypatch):
    """Tried as an attacker would: a program allowed to bind low ports (or
    any, where the machine lowers that bound) listened on 127.0.0.1:9, the
    discard port the window used as its proxy, and got the page's
    navigation, the secret in it, in both browsers (Chromium sent the
    sandbox's cookie too). Now the window's proxy is the sandbox's own
    ingress, at the address the sandbox holds: the try is refused there and
    logged (`proxy-request`), and what listens on port 9 gets nothing."""
    monkeypatch.delenv(browser.PROXY_ENV, raising=False)
    name, origin = hostile.name, hostile.url.rstrip("/")
    discard = Recorder(port=9)  # as that program would (the tests run as root, who may bind it)
    tried = f"{canary.tcp.address}/navigate?{canary.secret}"

    def refused_at_the_ingress():
        return [line for line in gateway.containers.logs(f"sandbox-{name}-ingress", tail=1000)
                if "reason=proxy-request" in line and tried in line]

    def hold(window):
        load_anew(window, origin)
        window.evaluate(f"tryWay('navigate', {json.dumps(canary.for_the_page())})", gesture=True)
        poll(refused_at_the_ingress, what="the navigation, refused at the ingress as a proxy request")
    try:
        assert locked_window(found, access.browser_profile(name), origin, access.write_open_page(name, hostile.access_link),
                             hold)
    finally:
        discard.close()
    assert discard.lines == [] and canary.reached() == set(), (discard.lines, canary.reached())


def mail_program(directory: Path, monkeypatch) -> None:
    """The user's mail program, set up as a desktop sets one up: on PATH as
    xdg-email and xdg-open (which Chromium runs), and as the handler of
    `mailto:` in the XDG settings (which Firefox reads). It asks for the
    address that the mail's body names, as a mail with the page's secret
    in it would leave the machine."""
    program = directory / "mail-program"
    program.write_text(f"#!{sys.executable}\nimport sys, urllib.parse, urllib.request\n"
                       "body = urllib.parse.parse_qs(urllib.parse.urlsplit(sys.argv[-1]).query)['body'][0]\n"
                       "urllib.request.build_opener(urllib.request.ProxyHandler({})).open(body, timeout=10)\n")
    program.chmod(0o755)
    (directory / "bin").mkdir()
    for name in ("xdg-email", "xdg-open"):
        (directory / "bin" / name).symlink_to(program)
    monkeypatch.setenv("PATH", f"{directory / 'bin'}{os.pathsep}{os.environ['PATH']}")
    (directory / "data" / "applications").mkdir(parents=True)
    (directory / "data" / "applications" / "mail-program.desktop").write_text(
        f"[Desktop Entry]\nType=Application\nName=Mail\nExec={program} %u\nMimeType=x-scheme-handler/mailto;\n")
    (directory / "config").mkdir()
    (directory / "config" / "mimeapps.list").write_text(
        "[Default Applications]\nx-scheme-handler/mailto=mail-program.desktop\n")
    monkeypatch.setenv("XDG_DATA_HOME", str(directory / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(directory / "config"))


def without_the_handoff_locks(monkeypatch) -> None:
    """The locked window as it was before it handed nothing off: the
    browser's own environment, Firefox's handler preferences its own."""
    monkeypatch.setattr(browser, "window_environment", lambda profile, kind: dict(os.environ))
    preferences = browser.firefox_preferences
    monkeypatch.setattr(browser, "firefox_preferences", lambda origin, proxy: {
        name: value for name, value in preferences(origin, proxy).items()
        if not name.startswith("network.protocol-handler.")})


@pytest.mark.parametrize("locked", [True, False], ids=["locked", "control-without-the-locks"])
@pytest.mark.parametrize("found", BROWSERS)
def test_a_pages_mailto_starts_no_other_program(found, locked, hostile, canary, proxy, monkeypatch, tmp_path):
    """Tried as an attacker would: the page set `location.href` to a
    `mailto:` address carrying what the user typed. Chromium ran xdg-email,
    xdg-open and then the user's usual browser (which looked mail.google.com,
    its mail handler, up at the host's resolver), each with the address on
    its command line, readable by every local user, with no question and no
    click; Firefox ran the desktop's mail program. Here a mail program of
    the test's, set up as a desktop does, asks for the address the mail
    names: in the locked window it is never started (Chromium's search for
    xdg-email ends at the launcher's dead end: no process is started). Control: the same window
    without those locks starts it, and the secret arrives."""
    mail_program(tmp_path, monkeypatch)
    if not locked:
        without_the_handoff_locks(monkeypatch)
    # A profile of its own: Firefox keeps the locked preferences it was last
    # given (prefs.js), which would still hold in the control.
    origin, profile = hostile.url.rstrip("/"), tmp_path / "profile"

    def hold(window):
        load_anew(window, origin)
        evaluated_in_the_page(window, "mailto", canary)
        if not locked:
            poll(lambda: "mailto" in canary.reached(), what="the mail program, given the page's address")
        else:
            # Locked, nothing starts: no sign to await. Without the locks the
            # mail program asked within a second or two.
            time.sleep(5)
    assert locked_window(found, profile, origin, access.write_open_page(hostile.name, hostile.access_link), hold)
    if locked:
        assert canary.reached() == set() and canary.tcp.lines == [], canary.tcp.lines
    else:
        assert all(canary.secret in line for line in canary.tcp.lines if line), canary.tcp.lines


def evaluated_in_the_page(window, way: str, canary: Canary):
    """The page's own tryWay, on an object of its own (in Firefox, not from
    Marionette's script sandbox, whose requests Firefox treats as its own)."""
    page = "(window.wrappedJSObject || window)"
    return window.evaluate(f"{page}.tryWay({json.dumps(way)}, "
                           f"{page}.JSON.parse({json.dumps(json.dumps(canary.for_the_page()))}))", gesture=True)


def holds(file: Path, text: str) -> bool:
    """Whether `file` holds `text`; a browser writes a download under a name
    of its own (Chromium's .crdownload) and renames it when done, so a file
    seen in the folder may be gone by the time it is read."""
    try:
        return file.read_bytes() == text.encode()
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("found", BROWSERS)
def test_a_pages_download_lands_in_the_windows_profile_not_the_users_home(found, hostile, canary, proxy, display,
                                                                          monkeypatch, tmp_path):
    """Tried as an attacker would: the page saved a file holding what was
    typed to ~/Downloads (0644), in both browsers, with no click; where the
    home directory is 0755, as on many machines, another user read it. Now
    the window saves downloads in its profile (0700). A later review: on a
    display, Firefox added the download, its name the page's choice, to the
    desktop's recent files (~/.local/share/recently-used.xbel), and both
    browsers kept files of their own in the home (crash reports, caches),
    which outlived `down --volumes`: now nothing of the window is in the
    home at all."""
    home = tmp_path / "home"
    (home / "Downloads").mkdir(parents=True)
    home.chmod(0o755)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("DISPLAY", display)
    origin, profile = hostile.url.rstrip("/"), tmp_path / "profile"

    def saved() -> list[Path]:
        folder = profile / "downloads"
        return [f for f in folder.iterdir() if holds(f, canary.secret)] if folder.is_dir() else []

    def hold(window):
        load_anew(window, origin)
        evaluated_in_the_page(window, "download", canary)
        poll(saved, what="the page's download, in the window's profile")
    assert locked_window(found, profile, origin, access.write_open_page(hostile.name, hostile.access_link), hold,
                         headless=False)
    assert list((home / "Downloads").iterdir()) == []
    assert [str(f.relative_to(home)) for f in home.rglob("*") if not f.is_dir()] == []
    assert stat.S_IMODE((profile / "downloads").stat().st_mode) == 0o700


@pytest.mark.parametrize("found", BROWSERS)
def test_a_pages_print_asks_no_print_service(found, hostile, canary, proxy, display, monkeypatch, tmp_path):
    """Tried as an attacker would: the page's `window.print()`, with no
    click, had the window connect to the machine's print service (CUPS,
    127.0.0.1:631) for its printers, in both browsers, headed: outside the
    sandbox's origin. Now printing is off in the window, and its print
    service is a socket that is not there."""
    service = Recorder(port=631)  # where CUPS listens (the tests run as root, who may bind it)
    monkeypatch.setenv("DISPLAY", display)
    origin = hostile.url.rstrip("/")

    def hold(window):
        load_anew(window, origin)
        evaluated_in_the_page(window, "print", canary)
        time.sleep(5)  # no sign to await: nothing is asked; unlocked, the window asked within a second
    try:
        assert locked_window(found, tmp_path / "profile", origin,
                             access.write_open_page(hostile.name, hostile.access_link), hold, headless=False)
    finally:
        service.close()
    assert service.lines == [], service.lines


@pytest.mark.parametrize("found", BROWSERS)
def test_down_closes_the_window_before_its_origin_is_free_for_another_program(found, gateway, display, monkeypatch,
                                                                               proxy, tmp_path):
    """Tried as an attacker would: with the locked window open on a sandbox,
    `sandbox down`; a local program waiting for 127.0.0.1:PORT took it
    within a second of the ingress's removal, and the still-open window
    sent it the page's requests (every second, the secret in them) with the
    cookie, which is the access token, in both browsers. Now `down` closes
    the window first: its processes are gone before the port is free, and
    what then listens there gets nothing."""
    from launcher.commands.down import down
    result = start_hostile(gateway, tmp_path)
    origin, profile = result.url.rstrip("/"), access.browser_profile(result.name)
    listened = []

    def hold(window):
        # The hostile page itself, its script run: the window's first load
        # may be answered before the page's own script is there to ask.
        load_anew(window, origin)
        assert window.evaluate(f"tryWay('keep sending', {json.dumps({'secret': 'SECRET'})})") == "sending"
        down(gateway, result.name, volumes=True)
        assert browser.window_processes(profile) == []
        # The port is free now: as the other program would, listen there.
        listener = Recorder(port=int(origin.rsplit(":", 1)[1]))
        try:
            time.sleep(3)  # the page asked five times a second while it was open
        finally:
            listener.close()
        listened.extend(listener.lines)
    monkeypatch.setenv("DISPLAY", display)
    try:
        locked_window(found, profile, origin, access.write_open_page(result.name, result.access_link), hold,
                      headless=False)
    finally:
        if gateway.state.container_state(f"sandbox-{result.name}-ingress"):  # the test ended before its down
            down(gateway, result.name, volumes=True)
    assert listened == [], listened[:3]


@pytest.mark.parametrize("found", BROWSERS)
def test_sandbox_open_headless_says_it_loaded_and_keeps_the_token_off_the_command_line(found, hostile, proxy):
    run = subprocess.run([sys.executable, "-m", "launcher", "open", hostile.name, "--headless", "--for", "0",
                          "--browser", found.kind],
                         capture_output=True, text=True, timeout=180, check=False, env=dict(os.environ))
    assert run.returncode == 0, run.stderr
    assert f"opened sandbox {hostile.name} in a locked headless {found.kind} window ({found.path})" in run.stderr
    assert hostile.token not in run.stdout + run.stderr
    profile = access.browser_profile(hostile.name)
    assert profile.stat().st_mode & 0o777 == 0o700 and profile.parent == access.token_file(hostile.name).parent


@pytest.mark.skipif(FIREFOX is None, reason="no firefox on this machine (apt-get install firefox-esr)")
def test_headless_firefox_fails_when_the_ingress_does_not_let_it_in(gateway, hostile, proxy):
    """Firefox's window is known to have got in by the ingress's log of the
    access link's use: a link with a token not the sandbox's is refused, not
    logged so, and the window counts as failed."""
    from launcher.commands.open import open_headless
    wrong = access.access_link(hostile.url, access.new_token())
    found, loaded = open_headless(gateway, hostile.name, wrong, 0, "firefox")
    assert found == FIREFOX and loaded is False


def test_headless_fails_when_the_page_does_not_load(tmp_path, proxy):
    """Exit 0 means the page loaded: a window whose page cannot load (nothing
    listens at its origin) is a failure, said as one."""
    from tests.integration.conftest import free_port
    origin = f"http://127.0.0.1:{free_port()}"
    page = tmp_path / "open.html"
    page.write_text(access.OPEN_PAGE.format(link=origin + "/", name="none"))
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    assert not browser.run_driven(CHROMIUM, tmp_path / "profile", origin, page, lambda window: None)
