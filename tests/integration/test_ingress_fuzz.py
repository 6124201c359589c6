"""The ingress image alone, in front of a recording upstream, under a stream
of malformed, random and hostile requests (pipelined too). It never crashes,
never passes on a request its rules forbid, and keeps serving its owner.

The rules are restated here as a small model (`allowed`): every request the
upstream saw must be one the model allows, and the clean requests the model
allows must get through, so the test fails for a door that is simply shut."""
from __future__ import annotations

import json
import socket
import time
import uuid

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from launcher.images import recipe_image  # noqa: E402
from tests.integration.conftest import ca_bundle, free_port  # noqa: E402

NAME = "fuzz"
TOKEN = "F" * 20 + "uzz_token-" + "0" * 13
RECORDER = r"""
import http.server, json
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def any(self):
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        print(json.dumps({"method": self.command, "path": self.path,
                          "headers": [[k, v] for k, v in self.headers.items()]}), flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.send_header("Access-Control-Allow-Origin", "*")
        self.end_headers()
        self.wfile.write(b"ok")
    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_TRACE = any
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""
HARDENED = dict(read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges:true"], user="65534:65534",
                tmpfs={"/tmp": "rw,noexec,nosuid,nodev,size=16m"}, pids_limit=64, mem_limit="128m")


@pytest.fixture(scope="module")
def door(gateway, docker_client):
    ingress = recipe_image("ingress", ca_bundle=ca_bundle())
    chat = recipe_image("chat", ca_bundle=ca_bundle())
    for image in (ingress, chat):
        if not gateway.image_present(image.tag):
            gateway.build(image)
    run = uuid.uuid4().hex[:8]
    labels = {"io.sandbox.name": f"fuzz-{run}"}
    network = docker_client.networks.create(f"sandbox-fuzz-{run}", labels=labels)
    port = free_port()
    upstream = ingress_container = None
    try:
        upstream = docker_client.containers.run(
            chat.tag, entrypoint=["python3", "-c", RECORDER], name=f"sandbox-fuzz-{run}-up", detach=True,
            network=network.name, labels=labels, **HARDENED)
        network.disconnect(upstream)
        network.connect(upstream, aliases=["frontend"])
        ingress_container = docker_client.containers.run(
            ingress.tag, name=f"sandbox-fuzz-{run}-ingress", detach=True, network=network.name, labels=labels,
            environment={"SANDBOX_NAME": NAME, "SANDBOX_UPSTREAM": "frontend:8080", "SANDBOX_LISTEN_PORT": "8080",
                         "SANDBOX_PUBLIC_PORT": str(port), "SANDBOX_ACCESS_TOKEN": TOKEN},
            ports={"8080/tcp": ("127.0.0.1", port)}, **HARDENED)
        deadline = time.monotonic() + 30
        while exchange(port, request("GET", f"/ready-{run}", own(port), bearer=True))[:1] != [200]:
            assert time.monotonic() < deadline, ingress_container.logs().decode()[-2000:]
            time.sleep(0.2)
        yield port, upstream, ingress_container
    finally:
        for c in (ingress_container, upstream):
            if c is not None:
                c.remove(force=True)
        network.remove()


def own(port: int) -> str:
    return f"127.0.0.1:{port}"


def request(method: str, target: str, host: str | None, *, cookie: str | None = None, bearer: bool = False,
            origin: str | None = None, fetch_site: str | None = None, upgrade: bool = False,
            extra: tuple = (), body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    if cookie:
        lines.append(f"Cookie: {cookie}")
    if bearer:
        lines.append(f"Authorization: Bearer {TOKEN}")
    if origin:
        lines.append(f"Origin: {origin}")
    if fetch_site:
        lines.append(f"Sec-Fetch-Site: {fetch_site}")
    if upgrade:
        lines += ["Upgrade: websocket", "Connection: Upgrade"]
    lines += [f"{k}: {v}" for k, v in extra]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def exchange(port: int, raw: bytes, timeout: float = 3) -> list[int]:
    """The status of each response on one connection."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(raw)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        pass
    return [int(part[:3]) for part in data.split(b"HTTP/1.1 ")[1:] if part[:3].isdigit()]


STANDARD = ("GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD", "PATCH")


def allowed(case: dict, port: int) -> bool:
    """The ingress's rules, restated: may this request reach the upstream?"""
    hosts = (own(port), f"localhost:{port}")
    origins = (None, f"http://{own(port)}", f"http://localhost:{port}")
    if case["method"] not in STANDARD + ("TRACE",) or not case["target"].startswith("/"):
        return False
    # Host names are case-blind; everything else is compared exactly.
    if (case["host"] or "").lower() not in hosts or case["fetch_site"] not in (None, "none", "same-origin"):
        return False
    if case["origin"] not in origins or any(k.lower() == "host" for k, _ in case["extra"]):
        return False
    authed = case["credential"] in ("cookie", "bearer")
    if not authed or "sandbox_token=" in case["target"]:
        return False
    changes = case["method"] not in ("GET", "HEAD", "OPTIONS") or case["upgrade"]
    return not (changes and case["origin"] is None and case["credential"] != "bearer")


def clean(case: dict) -> bool:
    """A request no server would turn away on its own: no odd extra headers."""
    return case["method"] in STANDARD and not case["extra"] and not case["upgrade"] and case["method"] != "HEAD"


def cases(port: int):
    own_origin = f"http://{own(port)}"
    return st.fixed_dictionaries({
        "method": st.sampled_from(STANDARD + ("CONNECT", "TRACE", "get", "G ET", "PRI")),
        "target": st.one_of(st.sampled_from(["/", "/api/history", "/?sandbox_token=" + TOKEN,
                                             "/?sandbox_token=wrong", "*", "http://example.com/",
                                             "example.com:443", "//evil.example/", "/%2e%2e/x"]),
                            st.from_regex(r"/[a-z0-9/._~-]{0,20}", fullmatch=True)),
        "host": st.sampled_from([own(port), f"localhost:{port}", f"evil.example:{port}", "127.0.0.1",
                                 f"127.0.0.1:{port + 1}", None, "", f"LOCALHOST:{port}"]),
        "credential": st.sampled_from(["none", "cookie", "bearer", "wrong-cookie", "wrong-bearer",
                                       "other-sandbox-cookie"]),
        "origin": st.sampled_from([None, own_origin, f"http://localhost:{port}", "http://evil.example", "null",
                                   f"http://localhost:{port + 1}"]),
        "fetch_site": st.sampled_from([None, "none", "same-origin", "same-site", "cross-site", "bogus"]),
        "upgrade": st.booleans(),
        "extra": st.lists(st.sampled_from([
            ("Host", "evil.example"), ("Transfer-Encoding", "chunked"), ("Content-Length", "abc"),
            ("X-Forwarded-Host", "evil.example"), ("Authorization", "Basic Zm9vOmJhcg=="),
            ("Cookie", "sandbox-other=1"), ("Connection", "keep-alive"), ("X" * 9000, "y"),
        ]), max_size=2).map(tuple),
    })


def good_cases(port: int):
    """Requests as the owner's browser or scripts send them."""
    return st.fixed_dictionaries({
        "method": st.sampled_from(STANDARD),
        "target": st.from_regex(r"/[a-z0-9/._~-]{0,20}", fullmatch=True),
        "host": st.sampled_from([own(port), f"localhost:{port}"]),
        "credential": st.sampled_from(["cookie", "bearer"]),
        "origin": st.sampled_from([None, f"http://{own(port)}"]),
        "fetch_site": st.sampled_from([None, "none", "same-origin"]),
        "upgrade": st.just(False),
        "extra": st.just(()),
    })


def encode(case: dict, nonce: str, last: bool = False) -> bytes:
    target = case["target"]
    if target.startswith("/"):  # mark it, so the upstream's record can be matched to it
        target = f"/{nonce}{target}"
    cookie = {"cookie": f"a=1; sandbox-{NAME}={TOKEN}", "wrong-cookie": f"sandbox-{NAME}=nope",
              "other-sandbox-cookie": f"sandbox-other={TOKEN}"}.get(case["credential"])
    extra = case["extra"]
    if last and not case["upgrade"]:
        extra = extra + (("Connection", "close"),)  # so the exchange ends when the answers do
    if case["credential"] == "wrong-bearer":
        extra = (("Authorization", "Bearer " + "x" * len(TOKEN)),) + extra
    return request(case["method"], target, case["host"], cookie=cookie, bearer=case["credential"] == "bearer",
                   origin=case["origin"], fetch_site=case["fetch_site"], upgrade=case["upgrade"], extra=extra)


def seen_by_upstream(upstream) -> dict[str, dict]:
    seen = {}
    for line in upstream.logs(stdout=True, stderr=False).decode(errors="replace").splitlines():
        record = json.loads(line)
        seen[record["path"].split("/")[1]] = record
    return seen


def test_hostile_requests_never_get_past_the_rules(door):
    port, upstream, ingress = door
    sent: dict[str, dict] = {}

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.one_of(cases(port), good_cases(port)), min_size=1, max_size=3), st.binary(max_size=200),
           st.booleans())
    def throw(batch, garbage, with_garbage):
        raw = b""
        # A request is sure to be answered only when every request before it
        # on its connection was one the ingress serves.
        expected = True
        for i, case in enumerate(batch):
            nonce = f"n{uuid.uuid4().hex[:12]}"
            sent[nonce] = {**case, "expected": expected and allowed(case, port) and clean(case)}
            expected = sent[nonce]["expected"]
            raw += encode(case, nonce, last=i == len(batch) - 1 and not with_garbage)
        exchange(port, raw + (garbage if with_garbage else b""), timeout=1)

    throw()
    seen = seen_by_upstream(upstream)
    for nonce, record in seen.items():
        if nonce.startswith("ready-"):
            continue
        case = sent[nonce]
        assert allowed(case, port), (case, record)
        headers = {k.lower(): v for k, v in record["headers"]}
        assert TOKEN not in json.dumps(record), record  # neither cookie nor bearer is passed on
        assert headers.get("host", "").lower() in (own(port), f"localhost:{port}")
    # The control: the clean requests the rules allow did get through.
    expected = [n for n, c in sent.items() if c["expected"]]
    assert expected, "no clean allowed request was generated"
    assert [sent[n] for n in expected if n not in seen] == []
    ingress.reload()
    assert ingress.status == "running" and ingress.attrs["RestartCount"] == 0
    assert exchange(port, request("GET", "/after", own(port), bearer=True)) == [200]


def test_a_pipelined_proxy_request_is_refused_and_logged(door):
    port, upstream, ingress = door
    nonce = f"p{uuid.uuid4().hex[:12]}"
    raw = (request("GET", f"/{nonce}", own(port), bearer=True)
           + b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
           + request("GET", "http://example.com/", own(port), bearer=True))
    statuses = exchange(port, raw)
    assert statuses[0] == 200 and statuses[1:] and all(s in (400, 405) for s in statuses[1:]), statuses
    assert list(seen_by_upstream(upstream)).count(nonce) == 1
    log = ingress.logs().decode(errors="replace")
    assert "reason=proxy-request" in log and "CONNECT example.com:443" in log
