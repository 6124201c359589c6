"""The UI's own page, in a real headless Chromium, through the ingress: a
message typed there is answered by the local model."""
from __future__ import annotations

import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not CHROMIUM:
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield browser
        browser.close()


def test_a_message_typed_in_the_page_is_answered(sandbox, browser, tmp_path):
    result, _ = sandbox
    page = browser.new_page()
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(result.url)
    page.wait_for_selector("#model option[value='smollm2']", state="attached", timeout=30_000)
    page.fill("#input", "Say hello in one word.")
    page.click("#send")
    answer = page.locator(".msg.assistant").last
    page.wait_for_function(
        "() => { const m = [...document.querySelectorAll('.msg')].pop(); return m && m.textContent !== '…'; }",
        timeout=120_000)
    page.screenshot(path=str(tmp_path / "chat.png"))
    assert page.locator(".msg.error").count() == 0
    assert answer.text_content().strip()
    # The page talked to its own origin only.
    assert requests and all(url.startswith(result.url) for url in requests), requests
