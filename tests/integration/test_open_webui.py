"""Open WebUI from its recipe, offline, behind the ingress. Its image is large
(about 2.5 GB, long to build), so this test is marked slow: `pytest -m slow`."""
from __future__ import annotations

import json
import time
import urllib.error
import uuid

import pytest
import yaml

from launcher.commands.audit import audit
from launcher.commands.down import down
from launcher.commands.up import up
from launcher.front_door import try_front_door
from launcher.matrix import forwarded
from tests.integration.test_browser import browser  # noqa: F401 (the fixture)
from tests.integration.conftest import MODEL, QUICKSTART, QUICKSTART_ALIAS, ca_bundle, open_webui_page, poll, ui, \
    write_policy


@pytest.mark.slow
def test_open_webui_comes_up_offline_and_lists_the_local_model(gateway, tmp_path):
    path = write_policy(tmp_path, frontend={"recipe": "open-webui", "env": {"WEBUI_AUTH": "False"}})
    policy = yaml.safe_load(path.read_text())
    result = up(gateway, path, ca_bundle=ca_bundle(), timeout=1800)
    try:
        with ui(result, "health", timeout=30) as response:
            assert response.status == 200
        # The front door holds for Open WebUI too, whose own login is off here.
        port = result.url.rsplit(":", 1)[1].strip("/")
        door = try_front_door(int(port), result.name, result.token)
        assert door["foreign_host"]["status"] == 421 and door["no_token"]["status"] == 401, door
        assert door["cross_site_post"]["status"] == 403 and door["cross_site_websocket"]["status"] == 403, door
        assert forwarded(door["owner"]) and forwarded(door["own_websocket"]), door
        with ui(result, timeout=30) as response:
            assert b"<html" in response.read().lower()
        backend_log = "\n".join(gateway.containers.logs(f"sandbox-{policy['name']}-backend", tail=200))
        assert "GET /v1/models" in backend_log
    finally:
        down(gateway, result.name, volumes=True)


# A fact only the document holds, and a question the tiny model answers by
# repeating what the retrieved text says.
CODE_WORD = "PELICAN-7431"
DOCUMENT = (f"Notes of the harbour office.\nThe secret code word is {CODE_WORD}.\n"
            f"Remember: the secret code word is {CODE_WORD}.\n").encode()
QUESTION = "What is the secret code word? Answer with the code word only."


def _webui(result, session: str, path: str, data: bytes | None = None, content_type: str = "application/json",
           timeout: float = 300) -> dict:
    """Open WebUI's API through the ingress as its page calls it: the
    sandbox's cookie and the UI's own Origin let the request in, Open
    WebUI's own session token (Authorization) signs it."""
    from launcher.access import cookie_name, open_ui
    headers = {"Cookie": f"{cookie_name(result.name)}={result.token}", "Origin": result.url.rstrip("/"),
               "Content-Type": content_type}
    if session:
        headers["Authorization"] = f"Bearer {session}"
    with open_ui(result.url.rstrip("/") + path, None, data=data, headers=headers, timeout=timeout) as response:
        return json.load(response)


def _multipart(name: str, content: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: text/plain\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def documents_policy(tmp_path):
    """Open WebUI (its login off) with the quick-start model for chat and
    again as the embedding model."""
    models = yaml.safe_load(QUICKSTART.read_text())["models"]
    models[0]["path"] = str(MODEL)
    embedder = {**models[0], "alias": "smollm2-embed", "role": "embeddings"}
    return write_policy(tmp_path, models=models + [embedder], backend={"gpu": "none", "memory": "2g", "cpus": 2},
                        frontend={"recipe": "open-webui", "env": {"WEBUI_AUTH": "False"}})


@pytest.mark.slow
def test_a_document_is_embedded_by_the_backend_and_answers_inside_the_sandbox(gateway, tmp_path):
    path = documents_policy(tmp_path)
    name = yaml.safe_load(path.read_text())["name"]
    result = up(gateway, path, ca_bundle=ca_bundle(), timeout=1800)
    try:
        session = _webui(result, "", "/api/v1/auths/signin",
                         json.dumps({"email": "", "password": ""}).encode())["token"]
        started = time.time()
        body, content_type = _multipart("harbour-notes.txt", DOCUMENT)
        file_id = _webui(result, session, "/api/v1/files/", body, content_type)["id"]
        status = poll(lambda: (s := _webui(result, session, f"/api/v1/files/{file_id}/process/status")["status"])
                      in ("completed", "failed") and s, "the document's processing to end", seconds=300)
        processed = time.time() - started
        assert status == "completed", _webui(result, session, f"/api/v1/files/{file_id}")
        reply = _webui(result, session, "/api/chat/completions", json.dumps({
            "model": QUICKSTART_ALIAS, "stream": False, "params": {"temperature": 0},
            "messages": [{"role": "user", "content": QUESTION}],
            "files": [{"type": "file", "id": file_id}]}).encode())
        answer = reply["choices"][0]["message"]["content"]
        print(f"processed in {processed:.1f} s; answer: {answer!r}")
        assert CODE_WORD in answer, reply
        time.sleep(2)  # the sink writes its summary about once a second
        report = audit(gateway, result.name, since=started - 1)
        assert report["names"] == [] and report["destinations"] == [], report
        backend_log = "\n".join(gateway.containers.logs(f"sandbox-{name}-backend", tail=400))
        assert "POST /v1/embeddings" in backend_log and "POST /v1/chat/completions" in backend_log
    finally:
        down(gateway, result.name, volumes=True)


def ask_in_the_page(page, question: str) -> tuple[str, list[dict]]:
    """Type a question into Open WebUI's chat input and send it, as a user
    does; the answer as the page shows it once whole (its Regenerate button
    comes with the finished answer), and the sources Open WebUI retrieved for
    it, from the chat it saved (read by the page, with its own session)."""
    page.click("#chat-input")
    page.keyboard.type(question)
    page.click("#send-message-button")
    page.wait_for_selector("button[aria-label='Regenerate']", timeout=600_000)
    answer = page.locator("#response-content-container").last.inner_text()
    chat_id = page.url.rsplit("/c/", 1)[1]
    chat = page.evaluate("""async id => (await fetch(`/api/v1/chats/${id}`,
        {headers: {Authorization: `Bearer ${localStorage.token}`}})).json()""", chat_id)
    messages = chat["chat"]["history"]["messages"].values()
    [reply] = [m for m in messages if m["role"] == "assistant"]
    return answer, reply.get("sources") or []


def sources_text(sources: list[dict]) -> str:
    return "\n".join(document for source in sources for document in source.get("document") or [])


@pytest.mark.slow
def test_a_document_uploaded_in_the_page_answers_a_question_inside_the_sandbox(gateway, tmp_path, browser):
    """In Chromium through the access link: the user attaches a file with the
    chat input's own "+" menu (Upload Files) and asks what only the file says.
    Control: the same question in a new chat without the file."""
    path = documents_policy(tmp_path)
    name = yaml.safe_load(path.read_text())["name"]
    document = tmp_path / "harbour-notes.txt"
    document.write_bytes(DOCUMENT)
    result = up(gateway, path, ca_bundle=ca_bundle(), timeout=1800)
    context = browser.new_context()
    try:
        started = time.time()
        page = context.new_page()
        open_webui_page(page, result.access_link)

        answer_alone, sources_alone = ask_in_the_page(page, QUESTION)
        assert sources_alone == [] and CODE_WORD not in answer_alone, (answer_alone, sources_alone)
        embedded_before = backend_log(gateway, name).count("POST /v1/embeddings")

        page.goto(result.url)  # a new chat
        page.wait_for_selector("#chat-input", timeout=120_000)
        page.click("#input-menu-button")
        # The page follows the file's processing on a stream that ends with it.
        with page.expect_response(lambda r: "/process/status" in r.url, timeout=120_000) as processing:
            with page.expect_file_chooser() as chooser:
                page.get_by_role("menuitem", name="Upload Files").click()
            chooser.value.set_files(str(document))
        assert '"completed"' in processing.value.body().decode(), processing.value.body()
        answer, sources = ask_in_the_page(page, QUESTION)
        print(f"without the document: {answer_alone!r}; with it: {answer!r}")
        # Retrieved: the chunk Open WebUI put before the question holds the fact...
        assert CODE_WORD in sources_text(sources), sources
        # ...and the model answered from it.
        assert CODE_WORD in answer, answer
        # The document's chunk and the question were embedded by the backend.
        assert backend_log(gateway, name).count("POST /v1/embeddings") >= embedded_before + 2
        time.sleep(2)  # the sink writes its summary about once a second
        report = audit(gateway, result.name, since=started - 1)
        assert report["names"] == [] and report["destinations"] == [], report
    finally:
        context.close()
        down(gateway, result.name, volumes=True)


def backend_log(gateway, name: str) -> str:
    return "\n".join(gateway.containers.logs(f"sandbox-{name}-backend", tail=2000))


# What Open WebUI 0.12.4's GET /api/config says of each feature the recipe
# switches off (main.py, get_app_config: `features` and, for a signed-in
# user, `audio`, `oauth` and the users' default `permissions`).
FEATURES_OFF = ("enable_web_search", "enable_image_generation", "enable_code_execution",
                "enable_code_interpreter", "enable_direct_connections", "enable_direct_integrations",
                "enable_tool_servers", "enable_terminal_servers", "enable_google_drive_integration",
                "enable_onedrive_integration", "enable_user_webhooks", "enable_community_sharing",
                "enable_version_update_check", "enable_ldap")
PERMISSIONS_OFF = {"features": ("web_search", "image_generation", "code_interpreter", "direct_tool_servers",
                                "webhooks"),
                   "chat": ("web_upload", "stt", "tts", "call")}


@pytest.mark.slow
def test_open_webui_shows_every_feature_that_would_reach_out_as_off(gateway, tmp_path):
    path = write_policy(tmp_path, frontend={"recipe": "open-webui", "env": {"WEBUI_AUTH": "False"}})
    result = up(gateway, path, ca_bundle=ca_bundle(), timeout=1800)
    try:
        started = time.time()
        session = _webui(result, "", "/api/v1/auths/signin",
                         json.dumps({"email": "", "password": ""}).encode())["token"]
        # Signed in, as the page asks it: the features a signed-in user sees.
        config = _webui(result, session, "/api/config")
        features = config["features"]
        assert {name: features.get(name, "missing") for name in FEATURES_OFF} == dict.fromkeys(FEATURES_OFF, False)
        assert config["oauth"]["providers"] == {}
        # Speech: no server engine for either (no Whisper model named, no voice
        # service); realtime voice calls off.
        audio = config["audio"]
        assert (audio["stt"]["engine"], audio["tts"]["engine"], audio["realtime"]["enabled"]) == ("", "", False)
        # "Attach Webpage" out of a user's menu, as the owner is (signed in by the ingress as a user).
        assert config["ui"]["visibility"] == {"chat.attach_webpage": False}, config["ui"]
        permissions = config["permissions"]
        for group, names in PERMISSIONS_OFF.items():
            assert {n: permissions[group].get(n, "missing") for n in names} == dict.fromkeys(names, False), group
        time.sleep(2)  # the sink writes its summary about once a second
        report = audit(gateway, result.name, since=started - 1)
        assert report["names"] == [] and report["destinations"] == [], report
    finally:
        down(gateway, result.name, volumes=True)


@pytest.mark.slow
def test_the_owner_is_a_user_whose_page_offers_no_attach_webpage_and_no_microphone(gateway, tmp_path, browser):
    """Tried as a new user would: with `WEBUI_AUTH` off the one user was an
    admin, and Open WebUI 0.12.4 shows an admin "Attach Webpage" and the
    microphone whatever the recipe's switches say (its page decides), and
    its settings pages, which can switch a feature back on; used, both
    failed inside the sandbox. Now the ingress signs the owner in as a user
    (its headers): in Chromium through the access link, the + menu offers
    Upload Files and no Attach Webpage, there is no microphone, the admin
    pages are not theirs, and a chat with the policy's model answers."""
    path = write_policy(tmp_path, frontend={"recipe": "open-webui", "env": {"WEBUI_AUTH": "False"}})
    result = up(gateway, path, ca_bundle=ca_bundle(), timeout=1800)
    context = browser.new_context()
    try:
        started = time.time()
        session = _webui(result, "", "/api/v1/auths/signin",
                         json.dumps({"email": "", "password": ""}).encode())["token"]
        me = _webui(result, session, "/api/v1/auths/")
        assert (me["email"], me["role"]) == ("admin@localhost", "user"), me
        with pytest.raises(urllib.error.HTTPError) as refused:  # an admin's route
            _webui(result, session, "/api/v1/users/")
        assert refused.value.code == 401, refused.value
        page = context.new_page()
        open_webui_page(page, result.access_link)
        assert page.locator("#voice-input-button").count() == 0  # no microphone
        page.click("#input-menu-button")
        page.wait_for_selector("[role=menuitem]")
        offered = page.locator("[role=menuitem]").all_inner_texts()
        assert "Upload Files" in offered and "Attach Webpage" not in offered, offered
        page.keyboard.press("Escape")
        answer, _ = ask_in_the_page(page, "Say hello.")
        assert answer.strip(), answer
        time.sleep(2)  # the sink writes its summary about once a second
        report = audit(gateway, result.name, since=started - 1)
        assert report["names"] == [] and report["destinations"] == [], report
    finally:
        context.close()
        down(gateway, result.name, volumes=True)
