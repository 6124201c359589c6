"""The OpenAI-compatible API at the front door (/v1/), for the owner's bearer
token only: the ingress's real configuration run by nginx with njs in front
of a stand-in backend (tests/unit/real_ingress.py). Each refusal is shown
with its control: the same request as the owner makes it reaches the
backend, so a door that is simply shut passes none of these."""
from __future__ import annotations

import http.client
import json
import os
import subprocess
import threading

import pytest

from launcher.access import LAUNCHER_AGENT, LAUNCHER_HEADER, api_token, launcher_mark
from tests.support.api_bodies import flood_body
from tests.unit.real_ingress import INGRESS, RealIngress, nginx_with_njs

TOKEN = "t" * 43
API_KEY = "k" * 43

pytestmark = pytest.mark.skipif(not nginx_with_njs(), reason="nginx with njs (Debian's nginx and "
                                "libnginx-mod-http-js, as in the ingress's image) is not installed")


@pytest.fixture
def ingress(tmp_path):
    with RealIngress(tmp_path / "ingress", "demo", TOKEN, API_KEY) as door:
        yield door


def ask(ingress, method: str, path: str, headers: dict | None = None, body: bytes | None = None,
        host: str | None = None) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", ingress.port, timeout=30)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", host or f"127.0.0.1:{ingress.port}")
        for key, value in (headers or {}).items():
            connection.putheader(key, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


OWNER = {"Authorization": f"Bearer {TOKEN}"}
# `sandbox env`'s key: the API token, made of the access token.
API_TOKEN = api_token(TOKEN)
SCRIPT = {"Authorization": f"Bearer {API_TOKEN}"}
JSON = {"Content-Type": "application/json"}


def chat(ingress, payload: dict, headers: dict | None = None, path: str = "/v1/chat/completions"):
    return ask(ingress, "POST", path, {**OWNER, **JSON, **(headers or {})}, json.dumps(payload).encode())


def test_the_owners_bearer_reaches_the_backend_with_the_backends_own_key_and_nothing_else(ingress):
    status, headers, _ = ask(ingress, "GET", "/v1/models", {**OWNER, "Cookie": "sandbox-other=x; ui=1",
                                                          "Origin": f"http://127.0.0.1:{ingress.port}",
                                                          "X-Other": "kept out"})
    assert status == 200 and "x-sandbox-refused" not in headers
    [seen] = ingress.backend.seen
    assert seen["method"] == "GET" and seen["path"] == "/v1/models"
    assert seen["headers"]["Authorization"] == f"Bearer {API_KEY}"
    assert {k.lower() for k in seen["headers"]} <= {"host", "authorization", "accept", "content-length",
                                                   "content-type"}
    assert TOKEN not in json.dumps(seen["headers"])
    for route in ("chat/completions", "completions", "embeddings"):
        status, _, _ = chat(ingress, {"model": "tiny", "input": "x"}, path=f"/v1/{route}")
        assert status == 200
    assert [s["path"] for s in ingress.backend.seen] == ["/v1/models", "/v1/chat/completions", "/v1/completions"]
    assert [s["path"] for s in ingress.embeddings.seen] == ["/v1/embeddings"]
    assert ingress.ui.seen == []


def test_embeddings_are_asked_of_the_embedding_models_own_server_with_the_backends_key(ingress):
    status, headers, _ = chat(ingress, {"model": "embed", "input": ["a", "b"]}, path="/v1/embeddings")
    assert status == 200 and "x-sandbox-refused" not in headers
    [seen] = ingress.embeddings.seen
    assert seen["path"] == "/v1/embeddings" and seen["headers"]["Authorization"] == f"Bearer {API_KEY}"
    assert seen["headers"]["Host"] == ingress.embeddings.address
    assert json.loads(seen["body"]) == {"model": "embed", "input": ["a", "b"]}
    assert TOKEN not in json.dumps(seen["headers"])
    # The chat server is never asked for them.
    assert ingress.backend.seen == []
    # Strangers are refused there as on every route.
    status, headers, _ = ask(ingress, "POST", "/v1/embeddings", JSON, b'{"input": "x"}')
    assert (status, headers["x-sandbox-refused"]) == (401, "no-token")
    assert len(ingress.embeddings.seen) == 1


@pytest.fixture
def no_embeddings(tmp_path):
    with RealIngress(tmp_path / "ingress", "demo", TOKEN, API_KEY, embeddings=False) as door:
        yield door


def test_without_an_embedding_model_the_ingress_answers_embeddings_with_a_404_that_says_so(no_embeddings):
    status, headers, body = chat(no_embeddings, {"model": "tiny", "input": "x"}, path="/v1/embeddings")
    assert status == 404 and headers["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert "no embedding model" in error["message"] and error["code"] == "no_embedding_model"
    assert "x-sandbox-refused" not in headers
    # Neither the chat server nor the UI is asked.
    assert no_embeddings.backend.seen == [] and no_embeddings.ui.seen == []
    # The other routes still reach the chat server.
    assert chat(no_embeddings, {"messages": []})[0] == 200
    assert [s["path"] for s in no_embeddings.backend.seen] == ["/v1/chat/completions"]


def test_without_an_embedding_model_strangers_are_refused_before_they_learn_so(no_embeddings):
    for headers in ({}, {"Authorization": "Bearer " + "x" * 43}, {"Cookie": f"sandbox-demo={TOKEN}"}):
        status, answer, body = ask(no_embeddings, "POST", "/v1/embeddings", {**JSON, **headers}, b'{"input": "x"}')
        assert status == 401 and answer["x-sandbox-refused"] in ("no-token", "bad-token"), headers
        assert b"embedding" not in body
    status, answer, _ = ask(no_embeddings, "GET", "/v1/embeddings", OWNER)
    assert (status, answer["x-sandbox-refused"]) == (405, "method")
    # The owner's answer is not a refusal: the log of refusals holds only the strangers'.
    chat(no_embeddings, {"input": "x"}, path="/v1/embeddings")
    ask(no_embeddings, "GET", "/v1/models")  # one more refusal, logged after the owner's answer
    lines = no_embeddings.log(waiting_for="GET /v1/models").splitlines()
    assert [line.split(" reason=")[1].split(" ")[0] for line in lines] == ["no-token", "bad-token", "no-token",
                                                                          "method", "no-token"]
    assert all(line.startswith("ingress: refused ") for line in lines)


def test_no_token_and_a_wrong_one_are_refused(ingress):
    assert ask(ingress, "GET", "/v1/models")[0] == 401
    status, headers, body = ask(ingress, "GET", "/v1/models", {"Authorization": "Bearer " + "x" * 43})
    assert (status, headers["x-sandbox-refused"]) == (401, "bad-token")
    status, headers, _ = chat(ingress, {"messages": []}, {"Authorization": ""})
    assert (status, headers["x-sandbox-refused"]) == (401, "no-token")
    assert ingress.backend.seen == []
    # The control: the owner's token gets through.
    assert ask(ingress, "GET", "/v1/models", OWNER)[0] == 200


def test_the_browsers_cookie_alone_is_never_enough(ingress):
    cookie = {"Cookie": f"sandbox-demo={TOKEN}"}
    own_page = {**cookie, "Origin": f"http://127.0.0.1:{ingress.port}", "Sec-Fetch-Site": "same-origin"}
    status, headers, body = ask(ingress, "GET", "/v1/models", cookie)
    assert (status, headers["x-sandbox-refused"]) == (401, "no-token") and b"cookie is not enough" in body
    status, headers, _ = ask(ingress, "POST", "/v1/chat/completions", {**own_page, **JSON}, b'{"messages": []}')
    assert (status, headers["x-sandbox-refused"]) == (401, "no-token")
    assert ingress.backend.seen == []
    # The control: the same cookie opens the UI.
    assert ask(ingress, "GET", "/", cookie)[0] == 200 and len(ingress.ui.seen) == 1


def test_a_foreign_host_is_refused_even_with_the_token(ingress):
    status, headers, _ = ask(ingress, "GET", "/v1/models", OWNER, host=f"evil.example:{ingress.port}")
    assert (status, headers["x-sandbox-refused"]) == (421, "foreign-host")
    assert ingress.backend.seen == []
    assert ask(ingress, "GET", "/v1/models", OWNER, host=f"localhost:{ingress.port}")[0] == 200


@pytest.mark.parametrize("path", [f"/v1/models?sandbox_token={TOKEN}", f"/v1/models?api_key={TOKEN}",
                                  f"/v1/models?key=%{ord(TOKEN[0]):02X}{TOKEN[1:]}", "/v1/models?sandbox_token=x"])
@pytest.mark.parametrize("with_bearer", [False, True])
def test_the_token_is_never_taken_from_the_address(ingress, path, with_bearer):
    status, headers, _ = ask(ingress, "GET", path, OWNER if with_bearer else {})
    assert (status, headers["x-sandbox-refused"]) == (401, "token-elsewhere")
    assert ingress.backend.seen == []
    assert TOKEN not in ingress.log()
    # The control: the bearer alone, and a query with no token in it, which
    # the backend never sees.
    assert ask(ingress, "GET", "/v1/models?limit=1", OWNER)[0] == 200
    assert ingress.backend.seen[0]["path"] == "/v1/models"


def test_the_token_in_another_header_is_refused(ingress):
    status, headers, _ = ask(ingress, "GET", "/v1/models", {"X-Api-Key": TOKEN})
    assert (status, headers["x-sandbox-refused"]) == (401, "token-elsewhere")
    assert ingress.backend.seen == []


@pytest.mark.parametrize("where", [
    {"Cookie": f"sandbox-demo={TOKEN}"},  # as the browser keeps it
    {"Cookie": f"ui=1; session={TOKEN}"},
    {TOKEN: "1"},  # a header's name
    {f"X-{TOKEN}": "1"},
])
def test_the_token_anywhere_but_the_bearer_is_refused_next_to_a_valid_bearer(ingress, where):
    status, headers, _ = ask(ingress, "GET", "/v1/models", {**OWNER, **where})
    assert (status, headers["x-sandbox-refused"]) == (401, "token-elsewhere")
    assert ingress.backend.seen == []
    assert TOKEN not in ingress.log(waiting_for="token-elsewhere")


def test_a_second_authorization_header_with_the_token_is_refused(ingress):
    connection = http.client.HTTPConnection("127.0.0.1", ingress.port, timeout=30)
    connection.putrequest("GET", "/v1/models", skip_host=True)
    connection.putheader("Host", f"127.0.0.1:{ingress.port}")
    connection.putheader("Authorization", f"Bearer {TOKEN}")
    connection.putheader("Authorization", f"Bearer {TOKEN}")
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 400  # nginx's own refusal of a repeated Authorization header
    connection.close()
    assert ingress.backend.seen == []


def test_the_bearer_with_cookies_of_its_own_gets_through_and_the_cookie_alone_is_no_token(ingress):
    """The controls of the two above: a cookie without the token beside the
    bearer, and the browser's cookie alone (the cookie is not enough)."""
    assert ask(ingress, "GET", "/v1/models", {**OWNER, "Cookie": "ui=1; sandbox-other=x"})[0] == 200
    status, headers, _ = ask(ingress, "GET", "/v1/models", {"Cookie": f"sandbox-demo={TOKEN}"})
    assert (status, headers["x-sandbox-refused"]) == (401, "no-token")


def test_no_cors_a_preflight_is_refused_and_the_backends_cors_headers_never_reach_the_client(ingress):
    preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    status, headers, _ = ask(ingress, "OPTIONS", "/v1/chat/completions", preflight)
    assert status in (403, 405) and not any(k.startswith("access-control-") for k in headers)
    status, headers, _ = ask(ingress, "OPTIONS", "/v1/chat/completions", {**OWNER, **preflight, "Origin": ""})
    assert (status, headers["x-sandbox-refused"]) == (405, "method")
    assert ingress.backend.seen == []
    # A page of another origin that somehow holds the token is refused too.
    status, headers, _ = chat(ingress, {"messages": []}, {"Origin": "http://evil.example"})
    assert (status, headers["x-sandbox-refused"]) == (403, "foreign-origin")
    status, headers, _ = chat(ingress, {"messages": []}, {"Sec-Fetch-Site": "cross-site"})
    assert (status, headers["x-sandbox-refused"]) == (403, "cross-site")
    assert ingress.backend.seen == []
    # The control: the owner's request reaches the backend, which answers
    # with CORS headers and a cookie (as llama-cpp-python's server does);
    # neither reaches the client.
    status, headers, _ = chat(ingress, {"messages": []})
    assert status == 200 and len(ingress.backend.seen) == 1
    assert not any(k.startswith("access-control-") for k in headers) and "set-cookie" not in headers


def test_a_body_over_one_mib_is_refused_before_the_backend(ingress):
    padding = "x" * (1024 * 1024)
    status, _, _ = chat(ingress, {"messages": [{"role": "user", "content": padding}]})
    assert status == 413 and ingress.backend.seen == []
    assert "status=413 reason=too-large" in ingress.log(waiting_for="status=413")
    # The control: nearly as much gets through, whole.
    status, _, _ = chat(ingress, {"messages": [{"role": "user", "content": padding[:1000 * 1024]}]})
    assert status == 200
    assert json.loads(ingress.backend.seen[0]["body"])["messages"][0]["content"] == padding[:1000 * 1024]


@pytest.mark.parametrize("route, sent, gets", [
    ("chat/completions", {"max_tokens": 99999}, 2048),
    ("chat/completions", {"max_tokens": 100}, 100),
    ("chat/completions", {}, 2048),  # absent: the backend would write up to the context's end
    ("chat/completions", {"max_tokens": None}, 2048),
    ("chat/completions", {"max_tokens": 0}, 2048),  # 0 and under: "no limit" to the backend
    ("chat/completions", {"max_tokens": -1}, 2048),
    ("chat/completions", {"max_tokens": "99999"}, 2048),  # the backend would read the string as a number
    ("chat/completions", {"max_tokens": 1e300}, 2048),
    ("completions", {"max_tokens": 99999}, 2048),
    ("completions", {}, None),  # absent: the backend's own default, 16
])
def test_max_tokens_is_bounded(ingress, route, sent, gets):
    status, _, _ = chat(ingress, {"model": "tiny", "prompt": "hi", **sent}, path=f"/v1/{route}")
    assert status == 200
    assert json.loads(ingress.backend.seen[0]["body"]).get("max_tokens") == gets


@pytest.mark.parametrize("route", ["chat/completions", "completions"])
def test_logit_bias_keys_reach_the_backend_as_token_ids_only(ingress, route):
    """Tried as an attacker would: `"logit_bias_type": "tokens"` with one key
    of `a<|im_end|>` 95,000 times (under 1 MiB) had the backend's server turn
    it into tokens on its event loop, before the call's budget: the whole
    server froze for 50-73 s a call, health checks and the UI's chats too.
    The ingress takes the type out: the keys are token ids, as OpenAI has
    them (the backend refuses any other key)."""
    chat(ingress, {"model": "tiny", "prompt": "hi", "logit_bias_type": "tokens", "logit_bias": {"50256": -100}},
         path=f"/v1/{route}")
    seen = json.loads(ingress.backend.seen[0]["body"])
    assert "logit_bias_type" not in seen and seen["logit_bias"] == {"50256": -100}


def test_a_call_that_names_no_model_is_given_the_policys_alias(ingress):
    """Else the backend answers with its default model's file path."""
    chat(ingress, {"messages": []})
    chat(ingress, {"prompt": "x", "model": None}, path="/v1/completions")
    chat(ingress, {"input": "x"}, path="/v1/embeddings")
    chat(ingress, {"messages": [], "model": "other"})  # the control: a model named is kept
    assert [json.loads(s["body"])["model"] for s in ingress.backend.seen] == ["tiny", "tiny", "other"]
    assert json.loads(ingress.embeddings.seen[0]["body"])["model"] == "embed"


def test_max_completion_tokens_is_bounded_where_sent(ingress):
    chat(ingress, {"messages": [], "max_completion_tokens": 10 ** 6})
    chat(ingress, {"messages": [], "max_completion_tokens": 50, "max_tokens": 50})
    first, second = (json.loads(s["body"]) for s in ingress.backend.seen)
    assert first["max_completion_tokens"] == 2048
    assert second["max_completion_tokens"] == second["max_tokens"] == 50


def test_the_backend_reads_the_body_as_the_ingress_read_it(ingress):
    """A body the ingress cannot read as a JSON object is refused there (the
    backend's parser takes some that njs's does not, NaN among them); a key
    written with escapes or twice is read as the backend's parser reads it,
    so no max_tokens slips past."""
    deep = b'{"messages": ' + b"[" * 40 + b"]" * 40 + b"}"  # njs reads 32 levels at most
    not_utf8 = b'{"messages": [{"role": "user", "content": "' + b"\xff" * 1000 + b'"}]}'  # 3,000 bytes as U+FFFD
    for raw in (b'{"messages": [', b"[1, 2]", b'"text"', b"\xef\xbb\xbf{}", b"{\"max_tokens\": NaN}", b"", deep, not_utf8):
        status, headers, answer = ask(ingress, "POST", "/v1/chat/completions", {**OWNER, **JSON}, raw)
        assert (status, headers["x-sandbox-refused"]) == (400, "not-json"), raw
        assert json.loads(answer)["error"]["code"] == "not-json"
    assert ingress.backend.seen == []
    for raw in (b'{"max\\u005ftokens": 99999}', b'{"max_tokens": 5, "max_tokens": 99999}'):
        ask(ingress, "POST", "/v1/chat/completions", {**OWNER, **JSON}, raw)
    assert [json.loads(s["body"])["max_tokens"] for s in ingress.backend.seen] == [2048, 2048]
    # Text outside ASCII arrives as it was sent.
    chat(ingress, {"messages": [{"role": "user", "content": "café 日本 \U0001F600"}], "max_tokens": 5})
    assert json.loads(ingress.backend.seen[-1]["body"])["messages"][0]["content"] == "café 日本 \U0001F600"


def reckoned(value) -> int:
    """A JSON value's values as the ingress reckons them: each object and
    array, and the commas between their items."""
    if isinstance(value, dict):
        return 1 + max(len(value) - 1, 0) + sum(reckoned(v) for v in value.values())
    if isinstance(value, list):
        return 1 + max(len(value) - 1, 0) + sum(reckoned(v) for v in value)
    return 0


def values(count: int) -> dict:
    """A chat body of `count` values by the ingress's reckoning: the object
    (1), its messages (3 for each, but 1 less for the first, with the array)
    and a key or two to make up the rest."""
    messages, rest = divmod(count - 1, 3)
    body = {"messages": [{"role": "user", "content": "{[,"}] * messages, **[{}, {"s": 0}, {"n": []}][rest]}
    assert reckoned(body) == count
    return body


def flood(ingress, route: str):
    """The attacker's body of too many values, to `route`."""
    return ask(ingress, "POST", f"/v1/{route}", {**OWNER, **JSON}, flood_body())


@pytest.mark.parametrize("route", ["chat/completions", "completions", "embeddings"])
def test_a_body_of_too_many_values_is_refused_before_it_is_parsed_and_the_api_goes_on(ingress, route):
    """Tried as an attacker would: 4 bodies at once of `{"a":[{},{},...]}`
    (349,000 empty objects, 1 MiB) took the ingress's one worker some 30 MB
    each to parse; it was killed for its memory (every request in flight
    with it) and nginx kept the dead worker's API slots: every later call
    was 429, until the sandbox was restarted. Now a body's values are
    counted before it is parsed: over 16,384, the ingress refuses it (400,
    in the API's form), the slots are given back, and the next call goes
    through. Text in strings is not counted, however many brackets it holds."""
    status, headers, answer = flood(ingress, route)
    assert (status, headers["x-sandbox-refused"]) == (400, "too-many-values")
    assert json.loads(answer)["error"]["code"] == "too-many-values"
    # Just over the bound, counted exactly: values(16385) has 16,385.
    assert chat(ingress, values(16385), path=f"/v1/{route}")[0] == 400
    assert ingress.backend.seen == [] and ingress.embeddings.seen == []
    threads = [threading.Thread(target=flood, args=(ingress, route)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # The control: at the bound, and brackets in text, go through, body whole.
    for body in (values(16384), {"messages": [{"role": "user", "content": '{[,"\\' * 100000}]}):
        status, headers, _ = chat(ingress, body, path=f"/v1/{route}")
        assert status == 200 and "x-sandbox-refused" not in headers
        seen = (ingress.embeddings if route == "embeddings" else ingress.backend).seen[-1]
        assert json.loads(seen["body"])["messages"] == body["messages"]
    assert "status=400 reason=too-many-values" in ingress.log(waiting_for="reason=too-many-values")


def test_strings_are_told_from_what_is_outside_them_as_a_parser_tells_them(ingress):
    """A quote after an odd number of backslashes is text; after an even
    number it ends its string, and what follows is counted again."""
    for body, status in (({"c": 'a"' + "{" * 20000}, 200),  # a"{{{... is one string
                         ({"c": '\\"' + "[" * 20000}, 200),  # \\" too
                         ({"c": "a\\", "d": [{}] * 9000}, 400)):  # a\ ends where its quote is
        raw = json.dumps(body).encode()
        assert ask(ingress, "POST", "/v1/chat/completions", {**OWNER, **JSON}, raw)[0] == status, raw[:12]


def test_only_the_four_routes_reach_the_backend(ingress):
    for method, path in (("GET", "/v1/chat/completions"), ("POST", "/v1/models"), ("DELETE", "/v1/models")):
        status, headers, _ = ask(ingress, method, path, {**OWNER, **JSON}, b"{}" if method == "POST" else None)
        assert (status, headers["x-sandbox-refused"]) == (405, "method"), (method, path)
    # Other paths, under /v1/ too, are the UI's (with its own checks); none
    # of the backend's other routes (/extras/tokenize, /docs) is reachable.
    for path in ("/v1/other", "/v1/models/x", "/v1/models/../../extras/tokenize", "/extras/tokenize"):
        ask(ingress, "GET", path, OWNER)
    assert ingress.backend.seen == []
    assert [s["path"] for s in ingress.ui.seen] == ["/v1/other", "/v1/models/x", "/v1/models/../../extras/tokenize",
                                                    "/extras/tokenize"]


def test_requests_in_progress_on_the_api_are_bounded_and_the_ui_still_answers(ingress):
    release = threading.Event()
    answer = ingress.backend.answer

    def held(seen):
        if b"hold" in seen["body"]:
            release.wait(30)
        return answer(seen)
    ingress.backend.answer = held
    results = []
    # The access token's calls and the API token's share the bound.
    threads = [threading.Thread(target=lambda i=i: results.append(
        chat(ingress, {"messages": [], "hold": 1}, SCRIPT if i % 2 else None)[0])) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        deadline = 100
        while len(ingress.backend.seen) < 4 and deadline:
            threading.Event().wait(0.05)
            deadline -= 1
        for credential in (OWNER, SCRIPT):
            status, _, _ = chat(ingress, {"messages": []}, credential)
            assert status == 429
        assert "status=429 reason=too-many" in ingress.log(waiting_for="status=429")
        # The bearer on the UI's routes is bounded with the API: a script
        # cannot go round the bound through the UI's own chat.
        status, headers, _ = ask(ingress, "POST", "/api/chat/completions", {**OWNER, **JSON}, b"{}")
        assert status == 429 and ingress.ui.seen == []
        # The browser's UI is another door: still answered.
        assert ask(ingress, "GET", "/", {"Cookie": f"sandbox-demo={TOKEN}"})[0] == 200
    finally:
        release.set()
        for thread in threads:
            thread.join(30)
    assert results == [200] * 4
    # Once they are done, the next is served.
    assert chat(ingress, {"messages": []})[0] == 200


def test_the_bearer_on_the_uis_routes_is_bounded_with_the_api(ingress):
    """Requests held at the UI with the bearer fill the API's bound too."""
    release = threading.Event()

    def held(seen):
        release.wait(30)
        return 200, [], b"the UI"
    ingress.ui.answer = held
    results = []
    threads = [threading.Thread(target=lambda: results.append(ask(ingress, "GET", "/api/chats", OWNER)[0]))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        deadline = 100
        while len(ingress.ui.seen) < 4 and deadline:
            threading.Event().wait(0.05)
            deadline -= 1
        status, headers, _ = ask(ingress, "GET", "/v1/models", OWNER)
        assert status == 429 and ingress.backend.seen == []
    finally:
        release.set()
        for thread in threads:
            thread.join(30)
    assert results == [200] * 4
    assert ask(ingress, "GET", "/v1/models", OWNER)[0] == 200


@pytest.mark.parametrize("signed_in_as", [("admin@localhost", "user"), None], ids=["recipe", "none"])
def test_the_ui_learns_who_the_owner_is_from_the_ingress_alone(tmp_path, signed_in_as):
    """A UI that takes its user from headers (Open WebUI's recipe) gets the
    ingress's: the client's own, in any case, never reach it, and a UI that
    takes none gets none. Were they passed on, a client could sign in as the
    admin the recipe keeps the owner from being."""
    claims = {"X-Sandbox-User": "someone@else", "x-sandbox-role": "admin", "X-SANDBOX-ROLE": "admin"}
    with RealIngress(tmp_path / "ingress", "demo", TOKEN, API_KEY, signed_in_as=signed_in_as) as door:
        for credential in ({"Cookie": f"sandbox-demo={TOKEN}"}, OWNER):
            assert ask(door, "GET", "/", {**credential, **claims})[0] == 200
        assert ask(door, "GET", "/v1/models", {**OWNER, **claims})[0] == 200
    expected = [("x-sandbox-user", signed_in_as[0]), ("x-sandbox-role", signed_in_as[1])] if signed_in_as else []
    for seen in door.ui.seen:
        assert [(k.lower(), v) for k, v in seen["header_list"] if k.lower().startswith("x-sandbox-")] == expected
    # The backend's API is no UI: it gets none.
    assert not [k for k, _ in door.backend.seen[0]["header_list"] if k.lower().startswith("x-sandbox-")]


@pytest.mark.parametrize("env, says", [
    ({"SANDBOX_UI_USER": 'a@b"; proxy_pass http://x; "'}, "SANDBOX_UI_USER is not a user's address"),
    ({"SANDBOX_UI_USER": "a@b\nX: 1"}, "SANDBOX_UI_USER is not a user's address"),
    ({"SANDBOX_UI_USER": "admin"}, "SANDBOX_UI_USER is not a user's address"),
    ({"SANDBOX_UI_ROLE": "user; add_header X 1"}, "SANDBOX_UI_ROLE is not a role"),
])
def test_the_ingress_refuses_a_user_or_role_that_would_change_its_configuration(env, says):
    from tests.unit.test_health import start_sh
    run = start_sh(SANDBOX_HEALTH_PORT="8081", SANDBOX_CSP="default-src 'self'", **env)
    assert run.returncode == 2 and says in run.stderr, run.stderr


def test_the_bearers_requests_on_the_uis_routes_are_counted_as_calls_the_cookies_and_the_launchers_are_not(ingress):
    launcher = {**OWNER, "User-Agent": LAUNCHER_AGENT, LAUNCHER_HEADER: launcher_mark(TOKEN, API_KEY)}
    ask(ingress, "GET", "/", {"Cookie": f"sandbox-demo={TOKEN}", "User-Agent": "Mozilla/5.0"})  # the browser's
    ask(ingress, "GET", "/api/models", launcher)  # `up`'s own check
    ask(ingress, "GET", "/v1/models", launcher)
    ask(ingress, "POST", "/api/chat/completions", {**OWNER, **JSON, "User-Agent": "curl/8.5.0"}, b"{}")
    ask(ingress, "GET", "/v1/models", {**OWNER, "User-Agent": "curl/8.5.0"})
    lines = ingress.api_log(waiting_for="route=models").splitlines()
    assert lines == ["ingress: api call route=ui client=curl model=- status=200",
                     "ingress: api call route=models client=curl model=- status=200"]
    assert len(ingress.ui.seen) == 3  # all of them reached it: counted or not, none was refused
    # The mark is the ingress's to read: the UI never sees it.
    assert all(LAUNCHER_HEADER.lower() not in {k.lower() for k in seen["headers"]} for seen in ingress.ui.seen)


@pytest.mark.parametrize("posing", [
    {"User-Agent": LAUNCHER_AGENT},  # the launcher's User-Agent, which once was all it took
    {"User-Agent": LAUNCHER_AGENT, LAUNCHER_HEADER: launcher_mark(TOKEN, "another key")},
    {"User-Agent": LAUNCHER_AGENT, LAUNCHER_HEADER: launcher_mark(TOKEN, API_KEY) + "0"},
], ids=["user-agent", "mark-of-another-key", "mark-and-more"])
def test_a_client_posing_as_the_launcher_is_still_counted(ingress, posing):
    """Tried as an attacker would: a client holding the token sends
    `User-Agent: sandbox-launcher` and its calls vanish from `status`. Only
    the launcher's mark, made of the token and the backend's key (which no
    API client holds), keeps a call out of the count."""
    ask(ingress, "GET", "/v1/models", {**OWNER, **posing})
    ask(ingress, "POST", "/api/chat/completions", {**OWNER, **JSON, **posing}, b"{}")
    lines = ingress.api_log(waiting_for="route=ui").splitlines()
    assert lines == ["ingress: api call route=models client=other model=- status=200",
                     "ingress: api call route=ui client=other model=- status=200"]


def test_the_api_token_opens_the_api_and_nothing_else(ingress):
    """Tried as an attacker would: a client given the key for the API (the
    access token, then) sent it as the browser's cookie with the UI's
    Origin to the UI's chat route, where the API's bound on calls in
    progress does not hold, and held the model from the UI. The API token
    `sandbox env` gives now opens /v1/ only: not as the cookie, not as the
    bearer on the UI's routes (where the owner's chats are read), not as
    the access link; it never reaches the UI or the backend, nor the log."""
    origin = f"http://127.0.0.1:{ingress.port}"
    status, _, _ = ask(ingress, "GET", "/v1/models", SCRIPT)
    assert status == 200 and ingress.backend.seen[0]["headers"]["Authorization"] == f"Bearer {API_KEY}"
    as_the_browser = {"Origin": origin, "Sec-Fetch-Site": "same-origin", **JSON}
    refused = [ask(ingress, "POST", "/api/chat", {"Cookie": f"sandbox-demo={API_TOKEN}", **as_the_browser}, b"{}"),
               ask(ingress, "POST", "/api/chat", {**SCRIPT, **as_the_browser}, b"{}"),
               ask(ingress, "GET", "/api/history", SCRIPT),
               ask(ingress, "GET", f"/?sandbox_token={API_TOKEN}"),
               # Next to the owner's own credentials, in the address or a header, it is not passed on either.
               ask(ingress, "GET", f"/?q={API_TOKEN}", {"Cookie": f"sandbox-demo={TOKEN}"}),
               ask(ingress, "GET", "/", {"Cookie": f"sandbox-demo={TOKEN}", "X-Other": API_TOKEN}),
               ask(ingress, "GET", f"/v1/models?key={API_TOKEN}", SCRIPT),
               ask(ingress, "GET", "/v1/models", {**SCRIPT, "X-Api-Key": API_TOKEN})]
    assert [(status, headers.get("x-sandbox-refused"), "set-cookie" in headers)
            for status, headers, _ in refused] == [(401, "no-token", False)] * 3 + [(401, "bad-token", False)] * 3 \
        + [(401, "token-elsewhere", False)] * 2
    assert ingress.ui.seen == [] and len(ingress.backend.seen) == 1
    # The control: the access token as the browser's cookie is the owner's, and the UI gets the chat.
    assert ask(ingress, "POST", "/api/chat", {"Cookie": f"sandbox-demo={TOKEN}", **as_the_browser}, b"{}")[0] == 200
    assert len(ingress.ui.seen) == 1 and API_TOKEN not in json.dumps(ingress.ui.seen[0]["headers"])
    log = ingress.log(waiting_for='request="GET /v1/models HTTP/1.1"')  # the last one's line
    assert log.count("ingress: refused") >= 8 and API_TOKEN not in log and TOKEN not in log


def test_the_ingress_makes_the_api_token_as_the_launcher_does():
    """start.sh makes the API token with sh and sha256sum, the launcher
    (`sandbox env`) in Python: the same, or the key `sandbox env` gives
    would be refused."""
    line = next(line for line in (INGRESS / "start.sh").read_text().splitlines()
                if line.startswith("SANDBOX_API_TOKEN="))
    made = subprocess.run(["sh", "-c", f'{line}; printf %s "$SANDBOX_API_TOKEN"'], capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"], "SANDBOX_ACCESS_TOKEN": TOKEN}, check=True).stdout
    assert made == API_TOKEN and len(made) == 64 and TOKEN not in made


def test_the_ingress_makes_the_launchers_mark_as_the_launcher_does():
    """start.sh makes the mark the ingress expects with sh and sha256sum;
    the launcher makes it in Python: the same, or `up`'s and `verify`'s own
    requests would be counted as the owner's."""
    line = next(line for line in (INGRESS / "start.sh").read_text().splitlines()
                if line.startswith("SANDBOX_LAUNCHER_MARK="))
    made = subprocess.run(["sh", "-c", f'{line}; printf %s "$SANDBOX_LAUNCHER_MARK"'], capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"], "SANDBOX_API_KEY": API_KEY, "SANDBOX_ACCESS_TOKEN": TOKEN},
                          check=True).stdout
    assert made == launcher_mark(TOKEN, API_KEY) and len(made) == 32


def test_refusals_are_logged_as_the_front_doors_are_without_the_token(ingress):
    ask(ingress, "GET", "/v1/models", {"Cookie": f"sandbox-demo={TOKEN}"})
    ask(ingress, "GET", f"/v1/models?sandbox_token={TOKEN}")
    ask(ingress, "OPTIONS", "/v1/models")
    ask(ingress, "GET", "/v1/models", OWNER)  # passed on: not logged
    ask(ingress, "GET", "/v1/completions", OWNER)
    lines = ingress.log(waiting_for="GET /v1/completions").splitlines()
    assert [line.split(" reason=")[1].split(" ")[0] for line in lines] == ["no-token", "token-elsewhere", "method",
                                                                                 "method"]
    assert all(line.startswith("ingress: refused ") for line in lines)
    assert TOKEN not in ingress.log() and 'request="GET /v1/models?sandbox_token=... HTTP/1.1"' in lines[1]


def test_each_of_the_owners_calls_is_logged_with_its_route_client_kind_model_and_status_and_nothing_more(ingress):
    chat(ingress, {"model": "tiny", "messages": [{"role": "user", "content": "a secret prompt"}]},
         {"User-Agent": "OpenAI/Python 1.99.1"})
    chat(ingress, {"model": "embed", "input": "a secret text"}, {"User-Agent": "AsyncOpenAI/Python 1.2"},
         path="/v1/embeddings")
    ask(ingress, "GET", "/v1/models", {**OWNER, "User-Agent": "curl/8.5.0"})
    chat(ingress, {"prompt": "x"}, {"User-Agent": "llm/0.19 (and more)"}, path="/v1/completions")
    chat(ingress, {"model": "tiny", "messages": []}, {"User-Agent": "python-httpx/0.27"})
    chat(ingress, {"model": "tiny", "messages": []}, {"User-Agent": "Mozilla/5.0 (X11)"})
    chat(ingress, {"model": "tiny", "messages": []}, {"User-Agent": "my-own-tool status=999 model=x"})
    chat(ingress, {"model": "tiny", "messages": []}, {"User-Agent": ""})
    lines = ingress.api_log(waiting_for="client=none").splitlines()
    assert lines == [
        "ingress: api call route=chat/completions client=openai-python model=tiny status=200",
        "ingress: api call route=embeddings client=openai-python model=embed status=200",
        "ingress: api call route=models client=curl model=- status=200",
        "ingress: api call route=completions client=llm model=- status=200",
        "ingress: api call route=chat/completions client=python model=tiny status=200",
        "ingress: api call route=chat/completions client=browser model=tiny status=200",
        "ingress: api call route=chat/completions client=other model=tiny status=200",
        "ingress: api call route=chat/completions client=none model=tiny status=200",
    ]
    # Passed on, none of them is a refusal.
    assert ingress.log(seconds=0) == ""


@pytest.mark.parametrize("model", ["tiny status=500", "a" * 65, "", 7, None, ["tiny"], "caf\u00e9", "x\ny",
                                   TOKEN[:10] + " route=models"])
def test_a_model_name_that_is_not_a_plain_name_is_logged_as_other(ingress, model):
    chat(ingress, {"model": model, "messages": []})
    assert ingress.api_log(waiting_for="status=").splitlines() == [
        "ingress: api call route=chat/completions client=none model=(other) status=200"]


def test_a_model_name_as_it_came_is_logged_when_plain(ingress):
    chat(ingress, {"model": "Qwen2.5-7B-Instruct:q4_k_m/v1.5+x_y", "messages": []}, {"User-Agent": "OpenAI/JS 4.0"})
    assert ingress.api_log(waiting_for="status=").splitlines() == [
        "ingress: api call route=chat/completions client=openai-node model=Qwen2.5-7B-Instruct:q4_k_m/v1.5+x_y "
        "status=200"]


def test_refused_calls_are_refusals_and_not_calls(ingress):
    ask(ingress, "GET", "/v1/models", {"User-Agent": "curl/8"})
    chat(ingress, {"model": "tiny", "messages": [{"role": "user", "content": "x" * (1024 * 1024)}]})
    ask(ingress, "GET", "/v1/models", {**OWNER, "User-Agent": "curl/8"})  # the control
    assert ingress.api_log(waiting_for="status=").splitlines() == [
        "ingress: api call route=models client=curl model=- status=200"]
    assert [line.split(" reason=")[1].split(" ")[0] for line in ingress.log(waiting_for="too-large").splitlines()] == [
        "no-token", "too-large"]


def test_the_owners_embeddings_without_an_embedding_model_are_logged_as_calls_answered_404(no_embeddings):
    chat(no_embeddings, {"model": "embed", "input": "x"}, {"User-Agent": "OpenAI/Python 1"}, path="/v1/embeddings")
    assert no_embeddings.api_log(waiting_for="status=").splitlines() == [
        "ingress: api call route=embeddings client=openai-python model=- status=404"]


@pytest.fixture
def api_only(tmp_path):
    with RealIngress(tmp_path / "ingress", "demo", TOKEN, API_KEY, ui=False) as door:
        yield door


def test_an_api_only_sandbox_serves_the_api_and_its_pages_say_so(api_only):
    assert ask(api_only, "GET", "/v1/models", OWNER)[0] == 200
    assert chat(api_only, {"model": "tiny", "messages": []})[0] == 200
    assert [s["path"] for s in api_only.backend.seen] == ["/v1/models", "/v1/chat/completions"]
    for method, path in (("GET", "/"), ("GET", "/index.html"), ("POST", "/api/chat"), ("GET", "/v1/other")):
        status, headers, body = ask(api_only, method, path, {**OWNER, **JSON} if method == "POST" else OWNER,
                                    b"{}" if method == "POST" else None)
        assert status == 404 and "x-sandbox-refused" not in headers, (method, path)
        assert b"serves only the OpenAI-compatible API" in body and b"sandbox env demo" in body
        assert TOKEN.encode() not in body
    assert api_only.ui.seen == []
    # The owner's page answers are no refusals; the log of refusals stays empty.
    ask(api_only, "GET", "/", host=f"evil.example:{api_only.port}")
    log = api_only.log(waiting_for="foreign-host")
    assert log.count("ingress: refused ") == 1 and "reason=foreign-host" in log


def test_an_api_only_sandboxs_pages_refuse_strangers_as_any_sandboxs_do(api_only):
    status, headers, body = ask(api_only, "GET", "/")
    assert (status, headers["x-sandbox-refused"]) == (401, "no-token") and b"only the OpenAI" not in body
    status, headers, _ = ask(api_only, "GET", "/", OWNER, host=f"evil.example:{api_only.port}")
    assert (status, headers["x-sandbox-refused"]) == (421, "foreign-host")
    status, headers, _ = ask(api_only, "POST", "/", {**OWNER, "Origin": "http://evil.example"}, b"{}")
    assert (status, headers["x-sandbox-refused"]) == (403, "foreign-origin")
    # The access link still trades the token for the cookie, which then shows the page.
    status, headers, _ = ask(api_only, "GET", f"/?sandbox_token={TOKEN}")
    assert status == 302 and f"sandbox-demo={TOKEN}" in headers["set-cookie"]
    status, _, body = ask(api_only, "GET", "/", {"Cookie": f"sandbox-demo={TOKEN}"})
    assert status == 404 and b"serves only" in body
    # The cookie is never enough for the API itself.
    assert ask(api_only, "GET", "/v1/models", {"Cookie": f"sandbox-demo={TOKEN}"})[0] == 401
    assert api_only.ui.seen == [] and api_only.backend.seen == []


@pytest.mark.parametrize("path", ["/.sandbox-no-embeddings", "/.sandbox-api-only"])
def test_the_pages_the_ingress_answers_itself_cannot_be_asked_for_directly_nor_escape_the_log(api_only, path):
    status, _, body = ask(api_only, "GET", path, OWNER)
    assert status == 404 and b"serves only" not in body and b"embedding" not in body
    ask(api_only, "GET", path)
    ask(api_only, "GET", "/v1/models")  # a refusal logged after both
    lines = api_only.log(waiting_for="GET /v1/models").splitlines()
    assert [line.split(" reason=")[0] for line in lines] == ["ingress: refused status=404"] * 2 + [
        "ingress: refused status=401"]
    assert api_only.api_log(seconds=0) == ""


@pytest.mark.parametrize("route", ["chat/completions", "completions"])
def test_a_grammar_never_reaches_the_backend(ingress, route):
    """Tried as an attacker would: one call with `"grammar": "root ::= ("`
    ended the backend's server (llama-cpp-python cannot parse it), and a
    loop of them kept the UI's chat down. The rest of the body is passed on."""
    status, _, _ = chat(ingress, {"prompt": "hi", "messages": [], "grammar": "root ::= (", "temperature": 0},
                        path=f"/v1/{route}")
    assert status == 200
    passed = json.loads(ingress.backend.seen[0]["body"])
    assert "grammar" not in passed and passed["temperature"] == 0
