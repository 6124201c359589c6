"""A locked browser window for one sandbox's UI (`sandbox open`).

The UI's page runs in a browser on the host, with the internet around it.
The ingress's Content-Security-Policy keeps its fetches, images and sockets
home, but no header stops a page from navigating the window elsewhere,
opening a popup, or sending WebRTC's STUN datagrams (docs/security.md, "The
page in a window of its own"). So `sandbox open` starts Chromium (or Chrome)
on a profile of the sandbox's own, under its state directory, owner-only:

- every request that is not for the sandbox's origin goes to the sandbox's
  own ingress as to a proxy, which refuses it (proxy_address): navigation,
  popups, forms, links, prefetch, a service worker's fetch, beacons and the
  browser's own pings get no further than a refusal on this machine; other
  ports of 127.0.0.1 (other sandboxes, local services) are proxied too;
- names are never resolved (the host resolver maps every one to nothing);
- the profile's preferences turn off WebRTC's non-proxied UDP (the command
  line switch for it did not stop STUN datagrams in Chromium 156; the
  preference did), prediction (prefetch and preconnect), safe browsing,
  suggestions and metrics; the flags turn off extensions, sync, component
  update and background networking;
- what is no request: an address handed to the desktop (`mailto:`) finds
  no program to start (HANDOFF_PROGRAMS), downloads are saved in the
  profile, and printing is off, with no print service to ask;
- a page's WebTransport (HTTP/3 over UDP) to the sandbox's own host and port,
  which the proxy exception lets by whatever the scheme, finds nothing
  there: the sandbox holds that UDP port itself (launcher/spec.py), and
  Chromium has no switch that turns WebTransport off.

Where no Chromium is found (or `--browser firefox`), Firefox, its profile
locked by a user.js to the same effect (below, "Firefox").

The token never goes on the browser's command line: the window is started
on the owner-only page that leads on to the access link (access.py)."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from launcher import access
from launcher.errors import SandboxError
from launcher.private import private_directory, write_private

# Where the window sends every request that is not for the sandbox: to the
# sandbox's own ingress, at its origin, as to a proxy, which it refuses (a
# request for another site, or CONNECT: 400, logged `proxy-request`, so the
# audit shows what the page tried). That address is the sandbox's own while
# it runs, and the window is closed before the sandbox goes: no other
# program can be there to receive what the window sends. (It was the discard
# port, 127.0.0.1:9, on which a program allowed to bind low ports, or any
# where the machine lowers that bound, could listen.) SANDBOX_OPEN_PROXY names
# another (the tests put a recording proxy there, to see that the browser
# sends nothing of its own).
PROXY_ENV = "SANDBOX_OPEN_PROXY"
# The discard port, which Chromium refuses to connect to (an unsafe port):
# where the addresses of its own services that no switch turns off go.
UNSAFE = "127.0.0.1:9"
# The programs a browser starts to hand an address to the desktop: for a
# page's `mailto:` (and `news:`, `snews:`) Chromium runs xdg-email or
# xdg-open, found on PATH, with no question and no click, and the whole
# address, whatever the page put in it, on their command lines (readable by
# every local user), on to the user's usual browser or mail program, which
# reached the internet. The window's PATH starts with a directory where
# each of these names is a link to itself: the search for the program ends
# there (execvp gives up on ELOOP, where it would go on past a name that is
# missing or not executable), and no process is started, so the address is
# on no command line, not even for a moment (a review read it from a
# stand-in script's in the milliseconds it ran). Firefox is told to hand
# nothing off (firefox_preferences).
HANDOFF_PROGRAMS = ("xdg-open", "xdg-email", "xdg-settings", "xdg-mime", "gio", "gvfs-open", "gnome-open",
                    "kde-open", "kde-open5", "kfmclient", "exo-open", "x-www-browser", "www-browser",
                    "sensible-browser")
# The browsers that can be locked so, by the names they go by.
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
FIREFOX_NAMES = ("firefox", "firefox-esr")
KINDS = {"chromium": CHROMIUM_NAMES, "firefox": FIREFOX_NAMES}
# How long a headless window may take to load the page before it counts as failed.
LOAD_LIMIT = 60.0


@dataclass(frozen=True)
class Browser:
    kind: str
    path: str


def find_browser(which=shutil.which, kind: str | None = None) -> Browser | None:
    """The first Chromium or Chrome on PATH, else the first Firefox; with
    `kind` ("chromium", "firefox"), only that kind. None where there is none."""
    for each in [kind] if kind else list(KINDS):
        for name in KINDS[each]:
            path = which(name)
            if path:
                return Browser(each, path)
    return None


# The profile's preferences (Default/Preferences): what the command line
# cannot set, or sets less surely.
PREFERENCES = {
    "webrtc": {"ip_handling_policy": "disable_non_proxied_udp", "nonproxied_udp_enabled": False,
               "multiple_routes_enabled": False},
    "net": {"network_prediction_options": 2},  # never: no prefetch, preconnect or DNS prefetch
    "dns_prefetching": {"enabled": False},
    "safebrowsing": {"enabled": False, "enhanced": False},
    "search": {"suggest_enabled": False},
    "alternate_error_pages": {"enabled": False},
    "translate": {"enabled": False},
    "signin": {"allowed": False},
    "credentials_enable_service": False,
    "browser": {"check_default_browser": False},
    "printing": {"enabled": False},  # a page's print() opens nothing (and asks no print service)
}
# The browser's own state (Local State): no usage statistics or crash reports.
LOCAL_STATE = {"user_experience_metrics": {"reporting_enabled": False}}


def chromium_flags(profile: Path, origin: str, proxy: str, headless: bool) -> list[str]:
    """The command line of the locked window for `origin` (http://127.0.0.1:PORT)."""
    host = origin.removeprefix("http://").rstrip("/")
    flags = [
        f"--user-data-dir={profile}",
        f"--proxy-server=http://{proxy}",
        # `<-loopback>` takes away the bypass every loopback address has by
        # default: only the sandbox's own origin is reached directly.
        f"--proxy-bypass-list=<-loopback>;{host}",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-extensions", "--disable-default-apps", "--disable-breakpad",
        "--disable-client-side-phishing-detection", "--disable-domain-reliability",
        "--safebrowsing-disable-auto-update", "--metrics-recording-only", "--no-pings",
        "--disable-component-extensions-with-background-pages", "--disable-field-trial-config",
        "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,Translate,MediaRouter,"
        "DialMediaRouteProvider,AutofillServerCommunication,CertificateTransparencyComponentUpdater,"
        "InterestFeedContentSuggestions,PreconnectToSearch,Prerender2,LensOverlay,"
        "HappinessTrackingSurveysForDesktop,"
        # On a session bus, a page that plays audio had Chromium publish its
        # media session (title, artist: any text of the page's) as an MPRIS
        # player, to every program of the user's and the desktop's media
        # controls, which may pass it on to a paired phone.
        "HardwareMediaKeyHandling",
        # Even with the switches above, Chromium 156 still asked the proxy for
        # update.googleapis.com (component updates) and accounts.google.com
        # (sign-in) on every start: their addresses are moved to the discard
        # port, which Chromium itself refuses to connect to (an unsafe port).
        f"--component-updater=url-source=http://{UNSAFE}",
        f"--gaia-url=http://{UNSAFE}",
        "--no-first-run", "--no-default-browser-check", "--password-store=basic",
    ]
    if headless:
        flags += ["--headless", "--remote-debugging-pipe"]
    else:
        flags += ["--new-window"]
    if os.geteuid() == 0:  # Chromium refuses to start as root with its own sandbox on
        flags.append("--no-sandbox")
    return flags


def prepare_profile(profile: Path) -> Path:
    """The profile directory, owner-only, with the locked preferences written
    over whatever the browser last kept there."""
    private_directory(profile)
    saved = str(downloads(profile))
    preferences = {**PREFERENCES, "download": {"default_directory": saved, "prompt_for_download": False,
                                               "directory_upgrade": True},
                   "savefile": {"default_directory": saved}}
    write_private(private_directory(profile / "Default") / "Preferences", json.dumps(preferences))
    write_private(profile / "Local State", json.dumps(LOCAL_STATE))
    return profile


def window_environment(profile: Path, kind: str) -> dict:
    """The environment the window's browser runs in: this one, with PATH
    led by the profile's dead ends for the hand-off programs, no BROWSER
    (which xdg-open would run), no print service (a page's print() had the
    browser ask the machine's, CUPS on 127.0.0.1:631, for its printers;
    CUPS_SERVER names a socket in the profile that is not there), the
    user's config, cache and data directories in the profile and, for
    Firefox (`kind`), no session bus and its temporary files in the
    profile."""
    dead_ends = private_directory(profile / "no-handoff")
    for name in HANDOFF_PROGRAMS:
        link = dead_ends / name
        if not (link.is_symlink() and os.readlink(link) == name):
            link.unlink(missing_ok=True)
            link.symlink_to(name)
    environment = {name: value for name, value in os.environ.items() if name != "BROWSER"}
    environment["PATH"] = os.pathsep.join([str(dead_ends), environment.get("PATH") or os.defpath])
    environment["CUPS_SERVER"] = str(profile / "no-printing")
    # What the browser and its libraries keep of their own goes into the
    # profile, not the user's home, where it outlived `down --volumes`: a
    # review found Firefox's crash helper's log, its pending pings, the
    # desktop's record of recent files (a download's name, the page's
    # choice), dconf's and PulseAudio's files; Chromium's crash handler kept
    # its database in ~/.config/chromium whatever the profile
    # (CHROME_CONFIG_HOME, where set, comes before XDG_CONFIG_HOME there).
    homes = {"XDG_CONFIG_HOME": "config", "CHROME_CONFIG_HOME": "config", "XDG_CACHE_HOME": "cache",
             "XDG_DATA_HOME": "data"}
    made = {directory: private_directory(profile / directory) for directory in set(homes.values())}
    for variable, directory in homes.items():
        environment[variable] = str(made[directory])
    if kind == "firefox":
        # No session bus: on one, Firefox offers its windows to other programs
        # (org.mozilla.firefox.<profile>, whose OpenURL took any address and
        # loaded it with the cookie, --no-remote and MOZ_NO_REMOTE=1 or not).
        environment["DBUS_SESSION_BUS_ADDRESS"] = "disabled:"
        # Firefox takes a startup lock in $TMPDIR/firefox-esr (or firefox),
        # a name anyone can make first: a review's other user made it, and
        # the owner's Firefox used that user's directory (its mkdir refused,
        # it opened the lock file there to write, truncating, through
        # whatever the directory's owner put at that name).
        environment["TMPDIR"] = str(private_directory(profile / "tmp"))
    return environment


def downloads(profile: Path) -> Path:
    """Where the window saves what a page downloads: in the profile
    (owner-only), not the user's Downloads, which other users of the
    machine may read (a page saved files holding what was typed there,
    with no click)."""
    return private_directory(profile / "downloads")


def proxy_address(origin: str) -> str:
    """The window's proxy: the sandbox's own origin (http://127.0.0.1:PORT), as host:port."""
    return os.environ.get(PROXY_ENV) or origin.removeprefix("http://").rstrip("/")


def start(browser: Browser, profile: Path, origin: str, page: Path) -> None:
    """The locked window, on `page` (the owner-only file that leads on to the
    access link), left running for the user."""
    if browser.kind == "firefox":
        prepare_firefox_profile(profile, origin, proxy_address(origin))
        command = firefox_command(browser, profile, page, headless=False)
    else:
        prepare_profile(profile)
        command = [browser.path, *chromium_flags(profile, origin, proxy_address(origin), headless=False), page.as_uri()]
    try:
        subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True,
                         env=window_environment(profile, browser.kind))
    except OSError as e:
        raise SandboxError(f"{browser.path} could not be started ({e.strerror}); "
                           f"`sandbox open --system-browser` or `--print`") from None


# Polled in the page until it is the sandbox's page, loaded, answered 200
# ("loaded"), or the browser's page for a failed load ("failed").
LOADED = """(() => { if (location.protocol === "chrome-error:") return "failed";
  const n = performance.getEntriesByType("navigation")[0];
  return location.origin === ORIGIN && document.readyState === "complete" && !!n && n.responseStatus === 200
    ? "loaded" : "waiting"; })()"""


class DevTools:
    """Chromium's DevTools protocol over the pipe --remote-debugging-pipe
    opens (fds 3 and 4: messages of JSON ended by a NUL byte)."""

    def __init__(self, to_browser: int, from_browser: int):
        self.writer, self.reader = os.fdopen(to_browser, "wb"), os.fdopen(from_browser, "rb")
        self.next_id = 0

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.writer.write(json.dumps(message).encode() + b"\0")
        self.writer.flush()
        while True:  # events come between; only this call's answer is wanted
            answer = self.read()
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise SandboxError(f"the browser refused {method}: {answer['error'].get('message')}")
                return answer.get("result", {})

    def read(self) -> dict:
        data = bytearray()
        while not data.endswith(b"\0"):
            byte = self.reader.read(1)
            if not byte:
                raise SandboxError("the browser closed before the page loaded")
            data += byte
        return json.loads(data[:-1])


class Window:
    """The headless window's page, through DevTools: what `hold` is given."""

    def __init__(self, devtools: DevTools, session: str):
        self.devtools, self.session = devtools, session

    def evaluate(self, expression: str, gesture: bool = False):
        """The value of `expression` in the page (awaited if a promise);
        with `gesture`, run as if the user had just clicked."""
        result = self.devtools.call("Runtime.evaluate", self.session, expression=expression, returnByValue=True,
                                    awaitPromise=True, userGesture=gesture)
        return result.get("result", {}).get("value")

    def navigate(self, url: str) -> None:
        self.devtools.call("Page.navigate", self.session, url=url)


def run_driven(browser: Browser, profile: Path, origin: str, page: Path, hold, headless: bool = True) -> bool:
    """The locked window on `page`, driven through DevTools (headless, as
    `sandbox open --headless` runs it; or, for the tests, on the display
    with the same pipe added): once the sandbox's page has loaded (answered
    200), `hold(window)` is called and the window closed when it returns.
    True when the page loaded, False when it failed to, did not within
    LOAD_LIMIT, or the browser closed first."""
    prepare_profile(profile)
    to_read, to_browser = os.pipe()
    from_browser, to_write = os.pipe()
    # The child's fds 3 and 4 are the pipe's ends, as --remote-debugging-pipe expects.
    try:
        process = subprocess.Popen(
            [browser.path, *chromium_flags(profile, origin, proxy_address(origin), headless=headless),
             *([] if headless else ["--remote-debugging-pipe"]), page.as_uri()],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(3, 4), preexec_fn=lambda: pipe_ends_at_3_and_4(to_read, to_write),
            env=window_environment(profile, browser.kind))
    except OSError as e:
        raise SandboxError(f"{browser.path} could not be started ({e.strerror})") from None
    finally:
        os.close(to_read)
        os.close(to_write)
    devtools = DevTools(to_browser, from_browser)
    window = None
    try:
        window = wait_until_loaded(devtools, origin.rstrip("/"))
        if window:
            hold(window)
    except SandboxError:
        if window is not None:  # it loaded, and went away in the time asked for
            raise
    finally:
        try:
            devtools.call("Browser.close")
        except (SandboxError, OSError):
            pass  # closed already
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return window is not None


def pipe_ends_at_3_and_4(to_read: int, to_write: int) -> None:
    # Moved above 4 first: either end may itself be fd 3 or 4.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_read, to_write)]
    os.dup2(high[0], 3)
    os.dup2(high[1], 4)


def wait_until_loaded(devtools: DevTools, origin: str) -> Window | None:
    deadline = time.monotonic() + LOAD_LIMIT
    check = LOADED.replace("ORIGIN", json.dumps(origin))
    window = None
    while time.monotonic() < deadline:
        if window is None:  # the window's page, once the browser has made it
            pages = [t for t in devtools.call("Target.getTargets")["targetInfos"] if t["type"] == "page"]
            if not pages:
                time.sleep(0.2)
                continue
            window = Window(devtools, devtools.call("Target.attachToTarget", targetId=pages[0]["targetId"],
                                                    flatten=True)["sessionId"])
        state = window.evaluate(check)
        if state != "waiting":
            return window if state == "loaded" else None
        time.sleep(0.2)
    return None


# Firefox. Its remote protocols (Marionette, WebDriver BiDi) listen on a TCP
# port, which any local process could connect to and drive the window, cookie
# and all: the launcher opens none. The window is started on the same
# owner-only page that leads on to the access link; a headless one is known
# to have got to the sandbox by the ingress's log of the access link's use
# (launcher/commands/open.py), and is ended when its time is up.

# The schemes Firefox, as shipped, hands to the desktop by name (besides any
# other, which `external-default` covers).
EXTERNAL_SCHEMES = ("mailto", "news", "snews", "nntp", "irc", "ircs", "webcal", "tel", "sms", "callto", "sip",
                    "magnet")


def firefox_preferences(origin: str, proxy: str) -> dict:
    """The profile's user.js, which Firefox reads at every start over what
    it kept (prefs.js): every request but those for `origin`
    (http://127.0.0.1:PORT) goes to `proxy`, and the browser's own
    services, each of which would ask somewhere of its own, are off."""
    host = origin.removeprefix("http://").rstrip("/")
    proxy_host, _, proxy_port = proxy.rpartition(":")
    return {
        # Every protocol through the proxy that answers nothing; loopback
        # too (by default Firefox never proxies it), but the sandbox's origin.
        "network.proxy.type": 1,
        "network.proxy.http": proxy_host, "network.proxy.http_port": int(proxy_port),
        "network.proxy.ssl": proxy_host, "network.proxy.ssl_port": int(proxy_port),
        "network.proxy.share_proxy_settings": True,
        "network.proxy.socks": "", "network.proxy.socks_remote_dns": True,
        "network.proxy.no_proxies_on": host,
        "network.proxy.allow_hijacking_localhost": True,
        # Where the proxy fails, a few of Firefox's own requests go direct.
        "network.proxy.failover_direct": False,
        "network.trr.mode": 5,  # no DNS over HTTPS
        # Nor any name looked up by Firefox itself: its own services asked
        # the host's resolver for their names (remote settings, telemetry)
        # although their requests went to the proxy. The sandbox's origin
        # and the proxy are addresses, which need no lookup.
        "network.dns.disabled": True,
        # WebRTC sends its datagrams around any proxy: it is taken away.
        "media.peerconnection.enabled": False,
        "media.peerconnection.ice.default_address_only": True,
        # So do WebTransport and HTTP/3 (QUIC, over UDP), to the sandbox's own
        # host and port too, which the proxy exception above names whatever
        # the scheme: taken away (the sandbox also holds that UDP port).
        "network.webtransport.enabled": False, "network.webtransport.datagrams.enabled": False,
        "network.http.http3.enable": False,
        # Nothing fetched or connected to ahead of a click.
        "network.dns.disablePrefetch": True, "network.dns.disablePrefetchFromHTTPS": True,
        "network.prefetch-next": False, "network.predictor.enabled": False,
        "network.predictor.enable-prefetch": False, "network.http.speculative-parallel-limit": 0,
        "network.early-hints.enabled": False, "network.early-hints.preconnect.enabled": False,
        "browser.urlbar.speculativeConnect.enabled": False, "browser.places.speculativeConnect.enabled": False,
        "browser.search.suggest.enabled": False, "browser.urlbar.suggest.searches": False,
        "browser.urlbar.quicksuggest.enabled": False, "browser.topsites.contile.enabled": False,
        # No captive-portal or connectivity checks.
        "network.captive-portal-service.enabled": False, "network.connectivity-service.enabled": False,
        "captivedetect.canonicalURL": "",
        # No updates, of the browser, its add-ons, system add-ons and plugins (OpenH264).
        "app.update.enabled": False, "app.update.auto": False, "app.update.service.enabled": False,
        "app.update.background.enabled": False,
        "extensions.update.enabled": False, "extensions.update.autoUpdateDefault": False,
        "extensions.systemAddon.update.enabled": False, "extensions.getAddons.cache.enabled": False,
        "extensions.blocklist.enabled": False,
        "media.gmp-manager.url": "", "media.gmp-manager.updateEnabled": False, "media.gmp-provider.enabled": False,
        "media.gmp-manager.chromiumUpdateUrl": "", "media.eme.enabled": False,
        "media.gmp-gmpopenh264.enabled": False, "media.gmp-widevinecdm.enabled": False,
        # No telemetry, data reporting or crash reports.
        "toolkit.telemetry.enabled": False, "toolkit.telemetry.unified": False,
        "toolkit.telemetry.archive.enabled": False, "toolkit.telemetry.server": "",
        "toolkit.coverage.opt-out": True, "toolkit.coverage.endpoint.base": "",
        "datareporting.healthreport.uploadEnabled": False, "datareporting.policy.dataSubmissionEnabled": False,
        "datareporting.usage.uploadEnabled": False,
        "browser.ping-centre.telemetry": False, "browser.crashReports.unsubmittedCheck.autoSubmit2": False,
        "breakpad.reportURL": "",
        # No safe browsing or tracking-protection lists.
        "browser.safebrowsing.malware.enabled": False, "browser.safebrowsing.phishing.enabled": False,
        "browser.safebrowsing.downloads.enabled": False, "browser.safebrowsing.downloads.remote.enabled": False,
        "browser.safebrowsing.blockedURIs.enabled": False, "browser.safebrowsing.update.enabled": False,
        "browser.safebrowsing.provider.google4.updateURL": "", "browser.safebrowsing.provider.google.updateURL": "",
        "browser.safebrowsing.provider.mozilla.updateURL": "",
        "privacy.trackingprotection.enabled": False, "privacy.trackingprotection.pbmode.enabled": False,
        # Nothing that reads remote settings (certificate revocation
        # lists, intermediates, translations, MITM priming, breach alerts).
        # (Release builds ignore services.settings.server: remote settings
        # still ask for their server, of the dead proxy; docs/security.md.)
        "security.remote_settings.crlite_filters.enabled": False,
        "security.remote_settings.intermediates.enabled": False, "security.pki.crlite_mode": 0,
        "security.certerrors.mitm.priming.enabled": False, "browser.translations.enable": False,
        "signon.management.page.breach-alerts.enabled": False, "signon.rememberSignons": False,
        "browser.ml.enable": False,
        # No OCSP or CRL fetches.
        "security.OCSP.enabled": 0, "security.OCSP.require": False,
        # No studies or experiments (Normandy, Nimbus).
        "app.normandy.enabled": False, "app.normandy.api_url": "", "app.shield.optoutstudies.enabled": False,
        "messaging-system.rsexperimentloader.enabled": False, "nimbus.enabled": False,
        # No push, Firefox accounts or sync.
        "dom.push.enabled": False, "dom.push.connection.enabled": False, "dom.push.serverURL": "",
        "identity.fxaccounts.enabled": False, "services.sync.engine.addons": False,
        # No Pocket, new-tab page or its fetches, geolocation or region lookups.
        "extensions.pocket.enabled": False, "browser.newtabpage.enabled": False, "browser.newtab.preload": False,
        "browser.newtabpage.activity-stream.feeds.section.topstories": False,
        "browser.newtabpage.activity-stream.feeds.topsites": False,
        "browser.newtabpage.activity-stream.feeds.telemetry": False,
        "browser.newtabpage.activity-stream.telemetry": False,
        "browser.newtabpage.activity-stream.default.sites": "",
        "browser.newtabpage.activity-stream.asrouter.userprefs.cfr.addons": False,
        "browser.newtabpage.activity-stream.asrouter.userprefs.cfr.features": False,
        "geo.enabled": False, "geo.provider.network.url": "", "browser.region.update.enabled": False,
        "browser.region.network.url": "", "browser.search.update": False, "browser.search.geoip.url": "",
        "browser.discovery.enabled": False, "browser.uitour.enabled": False, "doh-rollout.disable-heuristics": True,
        # No first-run, welcome or what's-new pages; no default-browser check.
        "browser.aboutwelcome.enabled": False, "trailhead.firstrun.didSeeAboutWelcome": True,
        "browser.startup.homepage_override.mstone": "ignore", "startup.homepage_welcome_url": "",
        "startup.homepage_welcome_url.additional": "", "datareporting.policy.firstRunURL": "",
        "browser.startup.page": 0, "browser.startup.homepage": "about:blank",
        "browser.shell.checkDefaultBrowser": False, "browser.sessionstore.resume_from_crash": False,
        # No address handed to another program: a scheme Firefox does not
        # serve itself (`mailto:` first) goes to the desktop's handler, the
        # address and whatever the page put in it on its command line,
        # without a question where one is set up (as on most desktops).
        "network.protocol-handler.external-default": False,
        **{f"network.protocol-handler.external.{scheme}": False for scheme in EXTERNAL_SCHEMES},
        "network.protocol-handler.warn-external-default": True,
        # Firefox counts every start as a crash until it has run a while, and
        # the launcher's own closing ends some early: past three, it started
        # itself again, with the profile named in its environment only,
        # where the closing did not look (it does now), asking about
        # Troubleshoot Mode. It never asks, nor starts itself again.
        "toolkit.startup.max_resumed_crashes": -1,
        # A page's print() opens nothing, and asks no print service.
        "print.enabled": False,
    }


def user_js(preferences: dict) -> str:
    return "".join(f"user_pref({json.dumps(name)}, {json.dumps(value)});\n" for name, value in preferences.items())


def prepare_firefox_profile(profile: Path, origin: str, proxy: str) -> Path:
    """The profile directory, owner-only, with user.js written anew."""
    private_directory(profile)
    # Nor is a download added to the desktop's recent files (a review found
    # a page's file name, of its own choosing, in ~/.local/share/recently-used.xbel).
    saved = {"browser.download.dir": str(downloads(profile)), "browser.download.folderList": 2,
             "browser.download.useDownloadDir": True, "browser.download.start_downloads_in_tmp_dir": False,
             "browser.download.manager.addToRecentDocs": False}
    write_private(profile / "user.js", user_js({**firefox_preferences(origin, proxy), **saved}))
    return profile


def firefox_command(found: Browser, profile: Path, page: Path, headless: bool) -> list[str]:
    # --no-remote/--new-instance: a Firefox already running with another
    # profile must not take the page over into its own unlocked windows.
    return [found.path, "--profile", str(profile), "--no-remote", "--new-instance",
            *(["--headless"] if headless else []), page.as_uri()]


def run_firefox_headless(found: Browser, profile: Path, origin: str, page: Path, reached, seconds: float,
                         limit: float = LOAD_LIMIT) -> bool:
    """The locked Firefox window, headless, on `page`; True once `reached()`
    says the window got to the sandbox (polled, within `limit`), and then
    kept `seconds` more; False if it did not, or Firefox ended first."""
    prepare_firefox_profile(profile, origin, proxy_address(origin))
    try:
        process = subprocess.Popen(firefox_command(found, profile, page, headless=True), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   env=window_environment(profile, found.kind))
    except OSError as e:
        raise SandboxError(f"{found.path} could not be started ({e.strerror})") from None
    try:
        deadline = time.monotonic() + limit
        while not reached():
            if process.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        time.sleep(seconds)  # the time asked for, with the page open
        return True
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# Closing. While a locked window is open, its page may ask for the sandbox's
# origin at any time, with the cookie (the token) and whatever the user
# types; once the ingress is gone, whoever takes 127.0.0.1:PORT would get
# those. So `down`, and an `up` that replaces the ingress, close the window
# first: the browser processes started on the sandbox's profile.

CLOSE_SECONDS = 10


def window_processes(profile: Path) -> list[int]:
    """This user's browser processes on `profile`, from /proc: started on it
    (Chromium's --user-data-dir, Firefox's --profile, in any spelling of
    its path), or with it in their environment (XRE_PROFILE_PATH: a Firefox
    that started itself again drops --profile from its command line)."""
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    names = {str(profile), os.path.realpath(profile)}

    def names_it(path: str) -> bool:
        return path in names or os.path.realpath(path) in names
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != os.getuid():
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                arguments = f.read().decode("utf-8", "replace").split("\0")
            with open(f"/proc/{entry}/environ", "rb") as f:
                environment = f.read().decode("utf-8", "replace").split("\0")
        except OSError:  # ended meanwhile
            continue
        started_on = [argument.removeprefix("--user-data-dir=") for argument in arguments
                      if argument.startswith("--user-data-dir=")]
        started_on += [following for argument, following in zip(arguments, arguments[1:]) if argument == "--profile"]
        started_on += [variable.removeprefix("XRE_PROFILE_PATH=") for variable in environment
                       if variable.startswith("XRE_PROFILE_PATH=")]
        if any(names_it(path) for path in started_on):
            found.append(int(entry))
    return found


def close_windows(profile: Path) -> int:
    """Ends the browser processes of the locked window on `profile` and
    waits until they are gone (told to end, then killed); how many there were."""
    started = window_processes(profile)
    for signal_number in (signal.SIGTERM, signal.SIGKILL):
        for pid in window_processes(profile):
            try:
                os.kill(pid, signal_number)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + CLOSE_SECONDS
        while window_processes(profile) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not window_processes(profile):
            break
    if window_processes(profile):
        raise SandboxError(f"the locked window on {profile} did not end")
    return len(started)


def close_locked_window(sandbox: str, say=None) -> None:
    """The sandbox's locked window closed, said where there was one."""
    if closed := close_windows(access.browser_profile(sandbox)):
        if say:
            say(f"closed the locked window of sandbox {sandbox} ({closed} browser processes): "
                f"`sandbox open {sandbox}` opens it again")
