"""The UI's own page, in a real headless Chromium, through the ingress: the
access link logs the browser in and a message typed there is answered by
the local model. Then the browser is turned against the sandbox as a web page
would: a page on another port of this machine, and a rebound name."""
from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid

import pytest

from tests.integration.conftest import QUICKSTART_ALIAS, poll, ui, ui_json
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


def logged_in(sandbox, browser, **options):
    result, _ = sandbox
    context = browser.new_context(**options)
    page = context.new_page()
    page.goto(result.access_link)
    yield page
    context.close()


@pytest.fixture
def owner_page(sandbox, browser):
    """A browser the owner logged in with the access link."""
    yield from logged_in(sandbox, browser)


@pytest.fixture
def owner_page_past_csp(sandbox, browser):
    """The same, told to set pages' Content-Security-Policy aside: the
    chat page's own allows no frame (its frame-src falls back to
    default-src 'none'), so a form sent into a frame from it would be
    stopped in the browser, never reaching the ingress whose rules a
    test's control is about."""
    yield from logged_in(sandbox, browser, bypass_csp=True)


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
    # The user's usual browser ($BROWSER), as --system-browser opens it; the
    # locked window starts on the same page (test_window.py).
    run = subprocess.run([sys.executable, "-m", "launcher", "open", result.name, "--system-browser"],
                         capture_output=True, text=True, env={**os.environ, **environment}, timeout=60, check=False)
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


def ui_log(gateway, result) -> str:
    """What reached the UI: the chat server logs every request it answers."""
    return "\n".join(gateway.containers.logs(f"sandbox-{result.name}-frontend", tail="all"))


def ingress_log(gateway, result) -> str:
    """What the ingress did not pass on: it logs only those."""
    return "\n".join(gateway.containers.logs(f"sandbox-{result.name}-ingress", tail="all"))


def reached_the_ui(gateway, result, target: str) -> bool:
    return f'"GET {target} HTTP/1.1"' in ui_log(gateway, result) or f'"POST {target} HTTP/1.1"' in ui_log(
        gateway, result)


def until_the_ui_has_seen_a_later_request(gateway, result, tag: str) -> None:
    """Hold until a request made after the attack has reached the UI: one
    the ingress had passed on before it would be in the UI's log by then."""
    marker = f"/api/history?probe={tag}-marker"
    try:
        ui(result, marker.lstrip("/"), timeout=30).close()
    except urllib.error.HTTPError as e:  # the chat server knows no such path: it answered, that is enough
        assert e.code == 404, e
    poll(lambda: reached_the_ui(gateway, result, marker))


def test_a_rebound_name_gets_nothing_even_with_the_owners_cookie(sandbox, browser, gateway):
    """A DNS-rebinding page's requests carry its own name as Host. Such a
    page has no cookie of the sandbox's, so the token check alone would
    refuse it: to see that the Host check refuses, the browser holds the
    owner's cookie under the rebound name too, and sends it. Control: the
    same request under the sandbox's own name reaches the UI."""
    result, _ = sandbox
    port = result.url.rsplit(":", 1)[1].strip("/")
    tag = uuid.uuid4().hex[:8]
    context = browser.new_context()
    page = context.new_page()
    page.goto(result.access_link)
    cookie = {c["name"]: c for c in context.cookies()}[f"sandbox-{result.name}"]
    context.add_cookies([{**cookie, "domain": REBOUND}])

    rebound = f"/api/history?probe={tag}-rebound"
    response = page.goto(f"http://{REBOUND}:{port}{rebound}")
    assert f"sandbox-{result.name}={result.token}" in response.request.all_headers().get("cookie", "")
    assert response.status == 421 and "messages" not in page.content()
    # The control: the same request, the same cookie, under the sandbox's own
    # name, made after it: it reaches the UI, and the rebound one would have first.
    control = f"/api/history?probe={tag}-control"
    response = page.goto(result.url.rstrip("/") + control)
    assert f"sandbox-{result.name}={result.token}" in response.request.all_headers().get("cookie", "")
    assert response.status == 404  # the UI's own answer: it knows no such path
    poll(lambda: reached_the_ui(gateway, result, control), what="the control at the UI")
    assert not reached_the_ui(gateway, result, rebound), ui_log(gateway, result)[-2000:]
    assert any(rebound in line and "reason=foreign-host" in line for line in ingress_log(gateway, result).splitlines())
    context.close()


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


# What a page does to the sandbox's origin: read its history, POST to its
# chat (a form and `fetch`, both text/plain: no preflight), open a WebSocket.
# Each request carries `probe=TAG-what`, for the logs of the ingress and the UI.
TRY_THE_SANDBOX = """([origin, tag]) => new Promise(done => {
  const results = {};
  const finish = () => { if (results.read && results.post && results.ws) done(results); };
  fetch(`${origin}/api/history?probe=${tag}-read`, {credentials: "include"})
    .then(r => r.text()).then(t => results.read = "read: " + t).catch(e => results.read = "blocked: " + e)
    .finally(finish);
  fetch(`${origin}/api/chat?probe=${tag}-fetch`, {method: "POST", mode: "no-cors", credentials: "include",
    headers: {"Content-Type": "text/plain"}, body: '{"messages":[{"role":"user","content":"FETCH"}]}'})
    .then(() => results.post = "sent").catch(e => results.post = "blocked: " + e).finally(finish);
  const ws = new WebSocket(`${origin.replace("http://", "ws://")}/ws?probe=${tag}-ws`);
  ws.onopen = () => { results.ws = "open"; finish(); };
  ws.onerror = () => { results.ws = "refused"; finish(); };
  const frame = Object.assign(document.createElement("iframe"), {name: "sink"});
  const form = Object.assign(document.createElement("form"), {method: "POST", target: "sink",
    action: `${origin}/api/chat?probe=${tag}-form`, enctype: "text/plain"});
  form.appendChild(Object.assign(document.createElement("input"),
    {name: '{"messages":[{"role":"user","content":"FORM"}],"x":"', value: '"}'}));
  document.body.append(frame, form);
  form.submit();
})"""
def probe_targets(tag: str) -> dict[str, str]:
    return {"read": f"/api/history?probe={tag}-read", "fetch": f"/api/chat?probe={tag}-fetch",
            "ws": f"/ws?probe={tag}-ws", "form": f"/api/chat?probe={tag}-form"}


def test_a_page_on_another_port_cannot_read_post_or_open_a_websocket(sandbox, owner_page_past_csp, gateway):
    """Another port of 127.0.0.1 is the same *site*: the SameSite cookie goes
    along, so the ingress itself must refuse. The browser's own rules keep a
    cross-origin read from the page whatever the ingress does, so what counts
    is what reached the UI. Control: the same requests, made by a page of the
    sandbox's own origin, do reach it."""
    result, _ = sandbox
    before = ui_json(result, "api/history", timeout=30)["messages"]
    origin = result.url.rstrip("/")

    own = uuid.uuid4().hex[:8]
    owner_page_past_csp.goto(result.url)
    results = owner_page_past_csp.evaluate(TRY_THE_SANDBOX, [origin, own])
    assert results["read"].startswith("read: "), results  # the UI's answer (it knows no such path)
    for target in probe_targets(own).values():
        poll(lambda target=target: reached_the_ui(gateway, result, target), what=f"{target} at the UI")

    tag = uuid.uuid4().hex[:8]
    server = serve_page(b"<!doctype html><title>a page on another port</title><body>")
    try:
        owner_page_past_csp.goto(f"http://127.0.0.1:{server.server_address[1]}/")
        results = owner_page_past_csp.evaluate(TRY_THE_SANDBOX, [origin, tag])
    finally:
        server.shutdown()
    assert results["read"].startswith("blocked"), results
    assert results["ws"] == "refused", results
    # The ingress refused each (the form's POST is sent after the page's script ran: held on its record)...
    refused = {what: poll(lambda target=target: [line for line in ingress_log(gateway, result).splitlines()
                                                     if f" {target} " in line], what=f"{target} refused at the ingress")
               for what, target in probe_targets(tag).items()}
    assert all(re.search(r"ingress: refused status=403 reason=(cross-site|foreign-origin) ", line)
               for lines in refused.values() for line in lines), refused
    # ...and none of them reached the UI, by the time a later request did.
    until_the_ui_has_seen_a_later_request(gateway, result, tag)
    assert not any(reached_the_ui(gateway, result, target) for target in probe_targets(tag).values()), \
        ui_log(gateway, result)[-3000:]
    after = ui_json(result, "api/history", timeout=30)["messages"]
    assert after == before and not any(word in m["content"] for m in after for word in ("FORM", "FETCH")), after


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
    tried = {"/image", "/stylesheet", "/script", "/fetch", "/beacon"}
    try:
        context = browser.new_context()
        # What the page's CSP stopped, as the page itself learns it.
        context.add_init_script("window.stopped = []; document.addEventListener('securitypolicyviolation', "
                                "e => window.stopped.push(new URL(e.blockedURI).pathname))")
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{plain.server_address[1]}/leaky?to={to}")
        # The control: served without the ingress's CSP, the page reaches the canary every way it tries.
        poll(lambda: tried <= {path.split("?")[0] for path in Canary.hits})
        Canary.hits.clear()
        page.goto(result.access_link)
        page.goto(f"{result.url}leaky?to={to}")
        page.wait_for_function("() => window.own !== undefined", timeout=30_000)
        assert page.evaluate("() => window.own") == 200  # its own origin still works
        # Held until the CSP has stopped each way out: one it let through never shows here, and the wait fails.
        page.wait_for_function(f"() => {sorted(tried)}.every(p => window.stopped.includes(p))", timeout=30_000)
        assert Canary.hits == []
        context.close()
    finally:
        canary.shutdown()
        plain.shutdown()


# What a page does to the sandbox's API with the browser's cookie: read the
# model list and ask for a chat. The chat's body is text/plain, a "simple"
# request that the browser sends without a preflight, so that the ingress
# itself must refuse it (a JSON body would be stopped by the refused
# preflight before the request left the browser). The page reports what it
# could read of each answer.
TRY_THE_API = """async ([origin, model]) => {
  const tried = async (path, init) => {
    try {
      const r = await fetch(origin + path, {credentials: "include", ...init});
      return {status: r.status, refused: r.headers.get("x-sandbox-refused"), body: await r.text()};
    } catch (e) {
      return {blocked: String(e)};
    }
  };
  return {
    models: await tried("/v1/models", {}),
    chat: await tried("/v1/chat/completions", {method: "POST", headers: {"Content-Type": "text/plain"},
      body: JSON.stringify({model, messages: [{role: "user", content: "PAGE"}], max_tokens: 2})}),
  };
}"""


def test_a_page_on_another_origin_cannot_use_the_api_with_the_owners_cookie(sandbox, owner_page, gateway):
    """docs/threats.md, "API from a web page (CORS)": the browser holds the
    owner's cookie and a page on another port of this machine (the same
    site, so the SameSite cookie goes along) calls /v1/ with it. Both calls
    are refused by the ingress, the page reads neither answer, and nothing
    reaches the backend. Controls: the same calls from the sandbox's own
    origin, with the cookie alone, are refused too (the cookie is never
    enough for /v1/), and the same request with the bearer token, made by
    the test, is answered."""
    from launcher.commands.audit import audit
    from launcher.commands.env import api_env
    from launcher.commands.status import status

    result, _ = sandbox
    origin = result.url.rstrip("/")
    assert f"sandbox-{result.name}" in {c["name"] for c in owner_page.context.cookies()}

    def calls() -> dict:
        [shown] = status(gateway, result.name)
        return {(c["client"], c["model"]): c["calls"] for c in shown["api_calls"]}
    before = calls()

    server = serve_page(b"<!doctype html><title>a page on another port</title><body>")
    foreign = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        owner_page.goto(foreign + "/")
        tried = owner_page.evaluate(TRY_THE_API, [origin, QUICKSTART_ALIAS])
    finally:
        server.shutdown()
    # No CORS answer: the browser keeps every answer from the page.
    assert set(tried["models"]) == {"blocked"} and set(tried["chat"]) == {"blocked"}, tried
    # The ingress refused both, from that origin, and says so in the audit.
    def refused_from_the_page() -> dict:
        lines = [line for line in audit(gateway, result.name)["ingress_refused"] if f'origin="{foreign}"' in line]
        found = {route: [line for line in lines if f" /v1/{route} " in line]
                 for route in ("models", "chat/completions")}
        return found if all(found.values()) else None
    refused = poll(refused_from_the_page, what="the page's two API calls in the audit")
    assert all(re.search(r"status=403 reason=(cross-site|foreign-origin) ", line)
               for lines in refused.values() for line in lines), refused

    # Control: the sandbox's own page, the same cookie, the same calls: the
    # page reads the answer, and it is the refusal.
    owner_page.goto(result.url)
    own = owner_page.evaluate(TRY_THE_API, [origin, QUICKSTART_ALIAS])
    assert (own["models"]["status"], own["models"]["refused"]) == (401, "no-token"), own
    assert (own["chat"]["status"], own["chat"]["refused"]) == (401, "no-token"), own
    assert QUICKSTART_ALIAS not in own["models"]["body"], own

    # Control: the bearer token, from the test (never the page), is answered.
    env = api_env(gateway, result.name)["env"]
    request = urllib.request.Request(env["OPENAI_BASE_URL"] + "/models",
                                     headers={"Authorization": f"Bearer {env['OPENAI_API_KEY']}"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        assert answer.status == 200 and json.load(answer)["data"][0]["id"] == QUICKSTART_ALIAS

    # The backend got only the control: the ingress counts every call it
    # passes on, and the count grew by that one alone (it is logged after
    # the page's, so once it shows, theirs would have).
    def grown_since_before() -> dict | None:
        now = calls()
        return now if sum(now.values()) > sum(before.values()) else None
    after = poll(grown_since_before, what="the bearer call counted")
    grown = {key: n - before.get(key, 0) for key, n in after.items() if n != before.get(key, 0)}
    assert grown == {("python", "-"): 1}, (before, after)
