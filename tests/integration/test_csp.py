"""Each recipe's Content-Security-Policy (launcher/recipes.py), in a real
headless Chromium, through the real ingress: the UI works under it, with no
violation; an answer carrying `<img onerror>`, `<script>` and a markdown
image of another origin runs and fetches nothing; and, the control, a page
of ours that renders such an answer as HTML runs it under the policy every
UI had before (still a brought UI's) and not under either recipe's.

A hostile answer is an answer in the UI's own store (the chat's history, an
Open WebUI chat): the same code renders it as one being written, and the
tiny model cannot be made to write it word for word."""
from __future__ import annotations

import contextlib
import json
import shutil
import time
import uuid
from dataclasses import replace

import pytest

from launcher.recipes import CUSTOM_FRONTEND, FRONTEND_RECIPES, GENERIC_CSP, content_security_policy
from tests.integration.conftest import FIXTURES_BAD, ca_bundle, open_webui_page, write_policy
from tests.integration.test_browser import Canary, browser, serve  # noqa: F401 (browser: the fixture)

# Every violation the page's policy reports, as the page itself learns it.
VIOLATIONS = ("window.violations = []; document.addEventListener('securitypolicyviolation', e => "
              "window.violations.push({directive: e.effectiveDirective, blocked: e.blockedURI, "
              "source: e.sourceFile, sample: e.sample}))")
RAN = "() => [window.ranImg, window.ranScript]"


def hostile_answer(tag: str, canary: str) -> str:
    """What a prompt injection would have a model answer: HTML that runs
    script if rendered as it is, and markdown that fetches another origin."""
    return (f"HOSTILE-{tag}\n\n<img src=\"/missing-{tag}.png\" onerror=\"window.ranImg = true\">\n\n"
            "<script>window.ranScript = true</script>\n\n"
            f"![chart]({canary}/md-image-{tag})\n\n[details]({canary}/md-link-{tag})\n")


def csp_headers(response) -> list[str]:
    return [h["value"] for h in response.headers_array() if h["name"].lower() == "content-security-policy"]


def port_of(result) -> int:
    return int(result.url.rsplit(":", 1)[1].strip("/"))


def watched_page(browser):  # noqa: F811 (the fixture's value)
    context = browser.new_context()
    context.add_init_script(VIOLATIONS)
    return context, context.new_page()


@contextlib.contextmanager
def watched_beside_a_canary(browser):  # noqa: F811 (the fixture's value)
    """A watched page, a canary on this machine for a hostile answer to
    reach (its address), and a tag of the answer's own."""
    canary = serve(Canary)
    Canary.hits.clear()
    context, page = watched_page(browser)
    try:
        yield page, f"http://127.0.0.1:{canary.server_address[1]}", uuid.uuid4().hex[:8]
    finally:
        context.close()
        canary.shutdown()


def test_the_chat_page_works_under_its_policy_and_an_answer_carrying_html_runs_nothing(sandbox, browser, gateway):
    result, _ = sandbox
    with watched_beside_a_canary(browser) as (page, to, tag):
        response = page.goto(result.access_link)
        assert content_security_policy(FRONTEND_RECIPES["chat"], port_of(result)) in csp_headers(response)
        # (1) It works: a message typed is answered, and nothing on the way is refused.
        page.wait_for_selector("#model option[value='smollm2']", state="attached", timeout=30_000)
        page.fill("#input", "Say hello in one word.")
        page.click("#send")
        page.wait_for_function("() => !document.getElementById('send').disabled && "
                               "document.querySelectorAll('.msg.assistant').length > 0", timeout=120_000)
        assert page.locator(".msg.error").count() == 0
        assert page.locator(".msg.assistant").last.text_content().strip() not in ("", "…")
        assert page.evaluate("() => window.violations") == []

        # (2) A hostile answer, in the chat's history as the server keeps it, shown by the page.
        line = json.dumps({"role": "assistant", "content": hostile_answer(tag, to)})
        code, output = gateway.containers.exec_in(
            f"sandbox-{result.name}-frontend",
            ["python3", "-c", f"open('/data/history.jsonl', 'a').write({line!r} + '\\n')"], user="65534")
        assert code == 0, output
        page.reload()
        answer = page.locator(".msg.assistant", has_text=f"HOSTILE-{tag}")
        answer.wait_for(timeout=30_000)
        # The page shows it as text (textContent): no element was made of it, so nothing could run or load.
        assert f'<img src="/missing-{tag}.png" onerror=' in answer.text_content()
        assert page.evaluate("() => document.querySelectorAll('#log img, #log script, #log a').length") == 0
        assert page.evaluate(RAN) == [None, None]
        assert page.evaluate("() => window.violations") == [] and Canary.hits == []


@pytest.fixture(scope="module")
def unescaped_ui(gateway, tmp_path_factory):
    """A policy for our page that renders an answer as HTML, unescaped
    (tests/fixtures/unescaped-ui), brought as a UI is."""
    from launcher.commands.down import down
    directory = tmp_path_factory.mktemp("unescaped")
    shutil.copytree(FIXTURES_BAD.parent / "unescaped-ui", directory / "unescaped-ui")
    path = write_policy(directory, frontend={"build": {"context": "unescaped-ui"}, "health_path": "/health"})
    yield path
    down(gateway, path.stem, volumes=True)


@pytest.mark.parametrize("csp", ["chat", "open-webui", "generic"])
def test_html_rendered_unescaped_runs_only_under_the_permissive_policy(unescaped_ui, gateway, browser, csp,
                                                                      monkeypatch):
    """The control the recipes' own UIs cannot give (both escape the
    answer): the same page through the same ingress, under each policy. The
    ingress is given the policy under test as it gives a brought UI its own
    (launcher/spec.py); `up` recreates only the ingress."""
    from launcher.commands.up import up
    directives = GENERIC_CSP if csp == "generic" else FRONTEND_RECIPES[csp].csp
    monkeypatch.setattr("launcher.spec.CUSTOM_FRONTEND", replace(CUSTOM_FRONTEND, csp=directives))
    result = up(gateway, unescaped_ui, ca_bundle=ca_bundle())
    context, page = watched_page(browser)
    try:
        response = page.goto(result.access_link)
        assert csp_headers(response) == [content_security_policy(
            replace(CUSTOM_FRONTEND, csp=directives), port_of(result))]
        if csp == "generic":
            # 'unsafe-inline': the handler and the script run, as they did in every UI before.
            page.wait_for_function("() => window.ranImg && window.ranScript", timeout=30_000)
        else:
            # Held until the policy has refused both (each is reported as it is refused), then nothing ran.
            page.wait_for_function(
                "() => window.rendered && ['script-src-attr', 'script-src-elem'].every("
                "d => window.violations.some(v => v.directive === d))", timeout=30_000)
            assert page.evaluate(RAN) == [None, None]
    finally:
        context.close()


def _open_webui_signed_in(result) -> str:
    from tests.integration.test_open_webui import _webui
    return _webui(result, "", "/api/v1/auths/signin", json.dumps({"email": "", "password": ""}).encode())["token"]


def _open_webui_chat_with(result, session: str, content: str) -> str:
    """A chat in Open WebUI's store whose answer is `content`, made through
    its own API as its page saves one."""
    from tests.integration.test_open_webui import _webui
    now, question, reply = int(time.time()), str(uuid.uuid4()), str(uuid.uuid4())
    messages = {
        question: {"id": question, "parentId": None, "childrenIds": [reply], "role": "user", "content": "hello",
                   "timestamp": now, "models": ["smollm2"]},
        reply: {"id": reply, "parentId": question, "childrenIds": [], "role": "assistant", "content": content,
                "model": "smollm2", "modelName": "smollm2", "done": True, "timestamp": now}}
    chat = {"title": "hostile", "models": ["smollm2"], "messages": list(messages.values()),
            "history": {"messages": messages, "currentId": reply}}
    return _webui(result, session, "/api/v1/chats/new", json.dumps({"chat": chat}).encode())["id"]


@pytest.mark.slow
def test_open_webui_works_under_its_policy_and_an_answer_carrying_html_runs_nothing(gateway, browser, tmp_path):
    from launcher.commands.down import down
    from launcher.commands.up import up
    path = write_policy(tmp_path, frontend={"recipe": "open-webui", "env": {"WEBUI_AUTH": "False"}})
    result = up(gateway, path, ca_bundle=ca_bundle(), timeout=1800)
    try:
        with watched_beside_a_canary(browser) as (page, to, tag):
            # (1) It works: its page starts (its three inline scripts are the hashed ones), and a chat is answered.
            failed = []
            page.on("requestfailed", lambda r: failed.append(f"{r.url} {r.failure}"))
            # Where it does not start, say why: a violation, or a load the browser broke
            # off (ERR_NETWORK_CHANGED when another network comes or goes on a busy engine).
            response = open_webui_page(page, result.access_link, 120_000, lambda: (
                f"Open WebUI's page did not start: violations {page.evaluate('() => window.violations')}, "
                f"failed requests {failed}"))
            assert csp_headers(response) == [content_security_policy(FRONTEND_RECIPES["open-webui"], port_of(result))]
            page.locator("#chat-input").focus()
            page.keyboard.type("Say hello in one word.")
            page.keyboard.press("Enter")
            page.wait_for_function("() => { const e = [...document.querySelectorAll('#response-content-container')]"
                                   ".pop(); return e && e.textContent.trim().length > 0; }", timeout=180_000)
            assert page.evaluate("() => window.violations") == []

            # (2) A hostile answer, shown by the page: Open WebUI escapes the HTML
            # (the control above shows what its policy does where a UI does not);
            # the markdown image is refused by img-src and never fetched.
            chat = _open_webui_chat_with(result, _open_webui_signed_in(result), hostile_answer(tag, to))
            page.goto(f"{result.url}c/{chat}")
            page.wait_for_selector(f"text=HOSTILE-{tag}", timeout=60_000)
            page.wait_for_function(f"() => window.violations.some(v => v.blocked.endsWith('/md-image-{tag}'))",
                                   timeout=30_000)
            assert page.evaluate(RAN) == [None, None]
            container = "[...document.querySelectorAll('#response-content-container')].pop()"
            assert page.evaluate(f"() => {container}.querySelectorAll('script, [onerror]').length") == 0
            # What was refused: the image, and handlers the page's own code tried on the answer's HTML.
            refused = page.evaluate("() => window.violations")
            assert {v["directive"] for v in refused} <= {"img-src", "script-src-attr", "script-src-elem"}, refused
            assert Canary.hits == []
    finally:
        down(gateway, result.name, volumes=True)
