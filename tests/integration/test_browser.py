"""The UI's own page, in a real headless Chromium, through the ingress: the
access link logs the browser in and a message typed there is answered by
the local model. Then the browser is turned against the sandbox as a web page
would: a page on another port of this machine, and a rebound name."""
from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import sys
import threading

import pytest

from tests.integration.conftest import ui_json
from tests.support import recording_browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Chromium resolves this name to 127.0.0.1, as a DNS-rebinding page's name would
# once it has been rebound.
REBOUND = "rebound.example"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not CHROMIUM:
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            f"--host-resolver-rules=MAP {REBOUND} 127.0.0.1"])
        yield browser
        browser.close()


@pytest.fixture
def owner_page(sandbox, browser):
    """A browser the owner logged in with the access link."""
    result, _ = sandbox
    context = browser.new_context()
    page = context.new_page()
    page.goto(result.access_link)
    yield page
    context.close()


def test_a_message_typed_in_the_page_is_answered(sandbox, browser, tmp_path):
    result, _ = sandbox
    context = browser.new_context()
    page = context.new_page()
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(result.access_link)
    # The link was traded for a cookie and left the address bar.
    assert page.url == result.url
    cookies = {c["name"]: c for c in context.cookies()}
    assert cookies[f"sandbox-{result.name}"]["httpOnly"] and cookies[f"sandbox-{result.name}"]["sameSite"] == "Strict"
    page.wait_for_selector("#model option[value='smollm2']", state="attached", timeout=30_000)
    page.fill("#input", "Say hello in one word.")
    page.click("#send")
    answer = page.locator(".msg.assistant").last
    page.wait_for_function(
        "() => { const m = [...document.querySelectorAll('.msg')].pop(); return m && m.textContent !== '…'; }",
        timeout=120_000)
    # The answer streams in; the button comes back when it is whole (and kept).
    page.wait_for_function("() => !document.getElementById('send').disabled", timeout=120_000)
    page.screenshot(path=str(tmp_path / "chat.png"))
    assert page.locator(".msg.error").count() == 0
    assert answer.text_content().strip()
    # The page talked to its own origin only.
    assert requests and all(url.startswith(result.url) for url in requests), requests
    context.close()


def test_sandbox_open_logs_the_browser_in_without_the_token_on_its_command_line(sandbox, browser, tmp_path):
    """`sandbox open` starts the browser on a page only its owner can read,
    which leads on to the access link: opened in Chromium, that page lands on
    the UI, logged in. The unit tests hold the control (the link given as the
    argument is on the command line for every local user to read)."""
    result, _ = sandbox
    environment, record = recording_browser.install(tmp_path)
    run = subprocess.run([sys.executable, "-m", "launcher", "open", result.name], capture_output=True, text=True,
                         env={**os.environ, **environment}, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    assert result.token not in run.stdout + run.stderr
    seen = recording_browser.recorded(record)
    assert not any(result.token in arg for arg in seen["cmdline"]) and seen["mode"] == 0o600
    context = browser.new_context()
    page = context.new_page()
    page.goto(seen["cmdline"][-1])  # the file:// page, as the browser was given it
    page.wait_for_url(result.url, timeout=30_000)
    cookie = {c["name"]: c for c in context.cookies()}.get(f"sandbox-{result.name}")
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict", context.cookies()
    page.wait_for_selector("#model option[value='smollm2']", state="attached", timeout=30_000)
    context.close()


def test_without_the_link_the_page_says_how_to_get_in(sandbox, browser):
    result, _ = sandbox
    context = browser.new_context()
    page = context.new_page()
    response = page.goto(result.url + "api/history")
    assert response.status == 401
    assert f"sandbox open {result.name}" in page.content()
    assert "messages" not in page.content()
    context.close()


def test_a_rebound_name_gets_nothing_even_from_the_logged_in_browser(sandbox, owner_page):
    result, _ = sandbox
    port = result.url.rsplit(":", 1)[1].strip("/")
    response = owner_page.goto(f"http://{REBOUND}:{port}/api/history")
    assert response.status == 421
    assert "messages" not in owner_page.content()


def serve(handler) -> http.server.ThreadingHTTPServer:
    """A server on a free port of 127.0.0.1, running until shut down."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def serve_page(html: bytes) -> http.server.ThreadingHTTPServer:
    """A page on another port of this machine, served plainly (no headers of ours)."""
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, *args):
            pass
    return serve(Page)


HOSTILE_PAGE = """<!doctype html><title>a page on another port</title>
<iframe name="sink" style="display:none"></iframe>
<form id="form" method="POST" action="SANDBOX/api/chat" enctype="text/plain" target="sink">
<input name='{"messages":[{"role":"user","content":"FORM"}],"x":"' value='"}'></form>
<script>
window.results = {};
fetch("SANDBOX/api/history", {credentials: "include"})
  .then(r => r.text()).then(t => results.read = t).catch(e => results.read = "blocked: " + e);
fetch("SANDBOX/api/chat", {method: "POST", mode: "no-cors", credentials: "include",
  headers: {"Content-Type": "text/plain"}, body: '{"messages":[{"role":"user","content":"FETCH"}]}'})
  .then(r => results.post = "sent").catch(e => results.post = "blocked: " + e);
const ws = new WebSocket("SANDBOX_WS/");
ws.onopen = () => results.ws = "open";
ws.onerror = () => results.ws = "refused";
document.getElementById("form").submit();
</script>"""


def test_a_page_on_another_port_cannot_read_post_or_open_a_websocket(sandbox, owner_page, gateway):
    """Another port of 127.0.0.1 is the same *site*: the SameSite cookie goes
    along, so the ingress itself must refuse."""
    result, _ = sandbox
    before = ui_json(result, "api/history", timeout=30)["messages"]
    sandbox_origin = result.url.rstrip("/")
    page_html = (HOSTILE_PAGE.replace("SANDBOX_WS", sandbox_origin.replace("http://", "ws://"))
                 .replace("SANDBOX", sandbox_origin)).encode()

    server = serve_page(page_html)
    try:
        owner_page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        owner_page.wait_for_function("() => results.read && results.post && results.ws", timeout=30_000)
        results = owner_page.evaluate("() => results")
    finally:
        server.shutdown()
    assert results["read"].startswith("blocked"), results
    assert results["ws"] == "refused", results
    owner_page.wait_for_timeout(1000)
    after = ui_json(result, "api/history", timeout=30)["messages"]
    assert not any(word in m["content"] for m in after for word in ("FORM", "FETCH")), after
    assert after[:len(before)] == before
    log = "\n".join(gateway.logs(f"sandbox-{result.name}-ingress", tail=200))
    assert "reason=cross-site" in log


class Canary(http.server.BaseHTTPRequestHandler):
    """A server on another port of this machine: what a page's requests to
    elsewhere would reach. `hits` holds the paths asked for."""
    hits: list[str] = []

    def do_GET(self):
        Canary.hits.append(self.path)
        self.send_response(204)
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def leaky_sandbox(gateway, tmp_path):
    """The noisy test UI, whose page /leaky tries to reach another origin."""
    from launcher.commands.down import down
    from launcher.commands.up import up
    from tests.integration.conftest import FIXTURES_BAD, ca_bundle, write_policy
    shutil.copytree(FIXTURES_BAD.parent / "noisy-ui", tmp_path / "noisy-ui")
    result = up(gateway, write_policy(tmp_path, frontend={"build": {"context": "noisy-ui"}, "health_path": "/health"}),
                ca_bundle=ca_bundle())
    yield result
    down(gateway, result.name, volumes=True)


def test_the_page_cannot_make_the_browser_reach_elsewhere(leaky_sandbox, browser):
    """The UI's page runs in the user's browser, outside the sandbox: what it
    asks the browser to fetch from elsewhere (analytics, fonts, a CDN, a
    beacon with what the user typed) the browser would fetch. The ingress's
    Content-Security-Policy keeps the page to its own origin. Control: the
    same page, served without it, reaches the canary every way it tries."""
    from tests.integration.conftest import ui
    result = leaky_sandbox
    with ui(result, "leaky") as response:
        page_html = response.read()

    canary, plain = serve(Canary), serve_page(page_html)
    to = f"http://127.0.0.1:{canary.server_address[1]}"
    try:
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{plain.server_address[1]}/leaky?to={to}")
        page.wait_for_function("() => window.own !== undefined", timeout=30_000)
        page.wait_for_timeout(2000)
        reached = {path.split("?")[0] for path in Canary.hits}
        assert {"/image", "/stylesheet", "/script", "/fetch", "/beacon"} <= reached, reached  # the control
        Canary.hits.clear()
        page.goto(result.access_link)
        page.goto(f"{result.url}leaky?to={to}")
        page.wait_for_function("() => window.own !== undefined", timeout=30_000)
        page.wait_for_timeout(2000)
        assert page.evaluate("() => window.own") == 200  # its own origin still works
        assert Canary.hits == []
        context.close()
    finally:
        canary.shutdown()
        plain.shutdown()
