"""The Content-Security-Policy each UI's pages get (launcher/recipes.py), as
the spec carries it to the ingress and the ingress's own nginx configuration
sends it. tests/integration/test_csp.py tries them in Chromium."""
from __future__ import annotations

import re
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from launcher.recipes import (CUSTOM_FRONTEND, FRONTEND_RECIPES, GENERIC_CSP, OPEN_WEBUI_SCRIPT_HASHES,
                              content_security_policy)
from tests.unit.helpers import TOKEN, make_policy, make_spec
from tests.unit.test_health import start_sh
from tests.unit.real_ingress import RealIngress, nginx_with_njs

CHAT = Path(__file__).resolve().parents[2] / "images" / "chat"


def directives(policy: str) -> dict[str, list[str]]:
    return {name: sources for name, *sources in (part.split() for part in policy.split("; "))}


def ingress_csp(policy) -> str:
    return make_spec(policy).container("ingress").env_value("SANDBOX_CSP")


def test_the_chat_recipe_allows_only_its_own_files():
    assert ingress_csp(make_policy()) == (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def test_open_webui_runs_its_three_hashed_inline_scripts_and_no_other():
    policy = make_policy(frontend=replace(make_policy().frontend, recipe="open-webui"))
    csp = directives(ingress_csp(policy))
    assert csp["script-src"] == ["'self'", *OPEN_WEBUI_SCRIPT_HASHES] and len(OPEN_WEBUI_SCRIPT_HASHES) == 3
    # Its socket.io connection, to this sandbox's own address only.
    assert csp["connect-src"] == ["'self'", "ws://127.0.0.1:18080", "ws://localhost:18080"]
    assert csp["object-src"] == ["'none'"] and csp["base-uri"] == ["'none'"]
    assert csp["frame-ancestors"] == ["'none'"]


@pytest.mark.parametrize("recipe", sorted(FRONTEND_RECIPES))
def test_no_recipe_runs_inline_or_evald_script(recipe):
    csp = directives(content_security_policy(FRONTEND_RECIPES[recipe], 8080))
    scripts = csp.get("script-src", csp["default-src"])
    assert not {"'unsafe-inline'", "'unsafe-eval'", "'unsafe-hashes'", "blob:", "data:", "*"} & set(scripts), scripts
    # Every kind of request is named or falls back to default-src, which allows this origin at most.
    assert set(csp["default-src"]) <= {"'self'", "'none'"}


def test_a_brought_ui_keeps_the_generic_policy_and_an_api_only_sandbox_none():
    brought = make_policy(frontend=replace(make_policy().frontend, recipe=None, image="my-ui:1", data=None))
    assert ingress_csp(brought) == content_security_policy(CUSTOM_FRONTEND, 18080)
    assert CUSTOM_FRONTEND.csp == GENERIC_CSP and "'unsafe-inline'" in directives(ingress_csp(brought))["script-src"]
    assert ingress_csp(make_policy(frontend=None)) == "default-src 'none'; frame-ancestors 'none'"


def test_the_chat_page_has_no_inline_script_style_or_handler():
    page = (CHAT / "index.html").read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", page) == []
    assert "<style" not in page and not re.search(r"\sstyle\s*=", page)
    assert not re.search(r"\son[a-z]+\s*=", page)
    assert re.findall(r'<script src="([^"]+)"', page) == ["/app.js"]
    assert 'href="/app.css"' in page


def test_the_chat_server_sends_the_same_policy_as_the_ingress():
    """Served without the ingress too (a developer's run), the page is kept to its recipe's policy."""
    source = (CHAT / "server.py").read_text()
    namespace: dict = {}
    exec(re.search(r"^PAGE_CSP = \(.*?\)\n", source, re.S | re.M).group(0), namespace)
    assert namespace["PAGE_CSP"] == content_security_policy(FRONTEND_RECIPES["chat"], 8080)


@pytest.mark.skipif(not nginx_with_njs(), reason="nginx with njs (Debian's nginx and libnginx-mod-http-js)")
@pytest.mark.parametrize("recipe", ["chat", "open-webui", None])
def test_the_ingress_sends_the_policy_it_is_given_on_the_uis_pages(tmp_path, recipe):
    csp = content_security_policy(FRONTEND_RECIPES[recipe] if recipe else CUSTOM_FRONTEND, 8080)
    with RealIngress(tmp_path / "ingress", "demo", TOKEN, "k" * 43, csp=csp) as door:
        request = urllib.request.Request(door.url + "/", headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.headers.get_all("Content-Security-Policy") == [csp]


@pytest.mark.parametrize("csp", [None, "", "default-src 'self'\"; add_header X 1; \"", "default-src $host",
                                 "default-src 'self'\nX: 1", "default-src 'self'" + " a" * 2000])
def test_the_ingress_refuses_a_policy_that_would_change_its_configuration(csp):
    """Each recipe's policy passes the same check: tests/integration/test_csp.py starts the ingress with it."""
    run = start_sh(SANDBOX_HEALTH_PORT="8081", **({"SANDBOX_CSP": csp} if csp is not None else {}))
    assert run.returncode == 2 and "SANDBOX_CSP is missing or not a policy" in run.stderr, run.stderr


@pytest.mark.skipif(not nginx_with_njs(), reason="nginx with njs (Debian's nginx and libnginx-mod-http-js)")
@pytest.mark.parametrize("request_line", ["GET /?{} HTTP/1.1", "GET / HTTP/1.1\r\nX: {}"], ids=["414", "400"])
def test_nginxs_own_error_pages_carry_the_strictest_policy(tmp_path, request_line):
    """Tried as an attacker would: a request line (or a header) past nginx's
    buffers is answered by nginx itself, before any location's headers, so
    the sandbox's origin served a document with no policy at all. Now such
    an answer gets `default-src 'none'`; control: the page's own policy on
    an ordinary request."""
    import socket
    csp = content_security_policy(FRONTEND_RECIPES["chat"], 8080)
    with RealIngress(tmp_path / "ingress", "demo", TOKEN, "k" * 43, csp=csp) as door:
        host = door.url.removeprefix("http://")
        address, port = host.split(":")
        with socket.create_connection((address, int(port)), timeout=10) as connection:
            connection.sendall((request_line.format("a" * 40_000) + f"\r\nHost: {host}\r\n\r\n").encode())
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
        head = answer.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
        assert head[0].split()[1] in ("400", "414"), head
        assert "Content-Security-Policy: default-src 'none'" in head, head
        request = urllib.request.Request(door.url + "/", headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.headers.get_all("Content-Security-Policy") == [csp]


def answer_of(url: str, method: str = "GET", headers: dict | None = None, body: bytes | None = None):
    """The status and headers of the ingress's answer, whatever the status."""
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=body)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


@pytest.mark.skipif(not nginx_with_njs(), reason="nginx with njs (Debian's nginx and libnginx-mod-http-js)")
def test_every_answer_of_the_sandboxs_origin_carries_a_policy(tmp_path):
    """Tried as an attacker would: the page framed an answer of the
    ingress's own under /v1/ (a 401, a 405, nginx's 413 page) or its
    internal page, which carried no policy: from the frame, a fetch to any
    site left the page's policy behind (in a plain Chromium it arrived).
    Every answer of the sandbox's origin now carries one: the UI's on its
    pages, `default-src 'none'` on every other."""
    csp = content_security_policy(FRONTEND_RECIPES["chat"], 8080)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with RealIngress(tmp_path / "ingress", "demo", TOKEN, "k" * 43, csp=csp) as door:
        asked = {
            "no token on /v1/": answer_of(door.url + "/v1/models"),
            "the API's answer": answer_of(door.url + "/v1/models", headers=bearer),
            "a method the API has not": answer_of(door.url + "/v1/models", "PUT", bearer, b"{}"),
            "a body over 1 MiB": answer_of(door.url + "/v1/chat/completions", "POST",
                                           {**bearer, "Content-Type": "application/json"}, b"x" * (2 << 20)),
            "an internal page": answer_of(door.url + "/.sandbox-no-embeddings", headers=bearer),
            "the login page, asked directly": answer_of(door.url + "/.sandbox-login", headers=bearer),
        }
        policies = {what: (status, headers.get_all("Content-Security-Policy")) for what, (status, headers, _)
                    in asked.items()}
        assert all(found == ["default-src 'none'"] for _, found in policies.values()), policies
        assert policies["the API's answer"][0] == 200 and policies["a body over 1 MiB"][0] == 413, policies
        # Control: the UI's page, its own policy.
        assert answer_of(door.url + "/", headers=bearer)[1].get_all("Content-Security-Policy") == [csp]


@pytest.mark.skipif(not nginx_with_njs(), reason="nginx with njs (Debian's nginx and libnginx-mod-http-js)")
def test_the_ui_cannot_send_nginx_to_the_ingresss_own_pages(tmp_path):
    """Tried as an attacker would: the UI answers with `X-Accel-Redirect`,
    which nginx follows by default: to its internal login page, which gives
    the access cookie, or to any other of its locations. The header is now
    ignored: the UI's answer is what the browser gets."""
    def redirecting(seen):
        return 200, [("Content-Type", "text/plain"), ("X-Accel-Redirect", "/.sandbox-login")], b"the UI"
    with RealIngress(tmp_path / "ingress", "demo", TOKEN, "k" * 43, ui_answer=redirecting) as door:
        status, headers, body = answer_of(door.url + "/", headers={"Authorization": f"Bearer {TOKEN}"})
    assert (status, body) == (200, b"the UI") and not headers.get_all("Set-Cookie"), (status, dict(headers), body)


@pytest.mark.skipif(not nginx_with_njs(), reason="nginx with njs (Debian's nginx and libnginx-mod-http-js)")
@pytest.mark.parametrize("request_line", ["GET /.sandbox-login HTTP/1.1", "GET http://localhost:{port}/.sandbox-login HTTP/1.1",
                                          "GET http://evil.example/.sandbox-login HTTP/1.1"],
                         ids=["direct", "absolute-localhost", "absolute-elsewhere"])
def test_the_internal_login_page_asked_for_directly_gives_no_cookie(tmp_path, request_line):
    """Tried as an attacker would: any local program, with no token, asked
    for the ingress's internal login page; nginx answered 404, but with the
    page's Set-Cookie on it (`always`): the access token, in one GET."""
    import socket
    with RealIngress(tmp_path / "ingress", "demo", TOKEN, "k" * 43) as door:
        with socket.create_connection(("127.0.0.1", door.port), timeout=10) as connection:
            connection.sendall((request_line.format(port=door.port) + f"\r\nHost: 127.0.0.1:{door.port}\r\n"
                                "Connection: close\r\n\r\n").encode())
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
    assert TOKEN.encode() not in answer and b"set-cookie" not in answer.lower(), answer[:600]
