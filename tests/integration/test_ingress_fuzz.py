"""The ingress image alone, in front of a recording upstream, under a stream
of malformed, random and hostile requests (pipelined too). It never crashes,
never passes on a request its rules forbid, never lets a sandbox's token or
cookie through either way or into its log, and keeps serving its owner.

The rules are restated here as a small model (`allowed`): every request the
upstream saw must be one the model allows, and the clean requests the model
allows must get through, so the test fails for a door that is simply shut."""
from __future__ import annotations

import json
import socket
import time
import uuid
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from launcher.images import recipe_image  # noqa: E402
from launcher.recipes import CUSTOM_FRONTEND, content_security_policy  # noqa: E402
from tests.integration.conftest import ca_bundle, free_port  # noqa: E402

NAME = "fuzz"
TOKEN = "F" * 20 + "uzz_token-" + "0" * 13
BACKEND_KEY = "B" * 32  # the ingress asks the backend with it for /v1/; no backend here
OTHER_TOKEN = "O" * 20 + "ther_token-" + "0" * 12  # another sandbox's, whose cookie the browser sends too
# The recorder's answer to a path with SET_COOKIES_MARK in it (a mark the
# fuzzed paths cannot have), and to an upgrade to a WebSocket there: the UI's
# own cookies, among cookies that would plant or overwrite sandboxes' own.
SET_COOKIES_MARK = "Set-Cookies"
UI_SET_COOKIES = ("ui-session=abc; Path=/; HttpOnly", "ui-theme=dark, blue; Max-Age=60")
SET_COOKIES = (f"sandbox-other={OTHER_TOKEN}; Path=/", UI_SET_COOKIES[0], f"sandbox-{NAME}=planted; Path=/",
               "SANDBOX-OTHER=planted", "=sandbox-other=planted", "sandbox-other", UI_SET_COOKIES[1])
# What a browser sends every sandbox on 127.0.0.1, since cookies ignore ports:
# other sandboxes' tokens, and cookies a page may have planted.
SANDBOX_COOKIES = (f"sandbox-other={OTHER_TOKEN}", f"sandbox-b={OTHER_TOKEN}", f"SANDBOX-C={OTHER_TOKEN}",
                   f"=sandbox-d={OTHER_TOKEN}", f"sandbox-{NAME}=stale", "sandbox-e")
UI_COOKIES = ("ui-a=1", "ui-b=2")
RECORDER = r"""
import http.server, json, sys
MARK, SET_COOKIES = sys.argv[1], json.loads(sys.argv[2])
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def any(self):
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        print(json.dumps({"method": self.command, "path": self.path,
                          "headers": [[k, v] for k, v in self.headers.items()]}), flush=True)
        marked = MARK in self.path
        upgrade = marked and bool(self.headers.get("Upgrade"))
        self.send_response(101 if upgrade else 200)
        if marked:
            for cookie in SET_COOKIES:
                self.send_header("Set-Cookie", cookie)
        if upgrade:
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.close_connection = True
            return
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
        if not gateway.state.image_present(image.tag):
            gateway.builder.build(image)
    run = uuid.uuid4().hex[:8]
    labels = {"io.sandbox.name": f"fuzz-{run}"}
    network = docker_client.networks.create(f"sandbox-fuzz-{run}", labels=labels)
    port = free_port()
    upstream = ingress_container = None
    try:
        upstream = docker_client.containers.run(
            chat.tag, entrypoint=["python3", "-c", RECORDER],
            command=[SET_COOKIES_MARK, json.dumps(SET_COOKIES)], name=f"sandbox-fuzz-{run}-up", detach=True,
            network=network.name, labels=labels, **HARDENED)
        network.disconnect(upstream)
        network.connect(upstream, aliases=["frontend"])
        ingress_container = docker_client.containers.run(
            ingress.tag, name=f"sandbox-fuzz-{run}-ingress", detach=True, network=network.name, labels=labels,
            environment={"SANDBOX_NAME": NAME, "SANDBOX_UPSTREAM": "frontend:8080", "SANDBOX_LISTEN_PORT": "8080",
                         "SANDBOX_API_UPSTREAM": "backend:8000", "SANDBOX_API_KEY": BACKEND_KEY,
                         "SANDBOX_HEALTH_PORT": "8081",
                         "SANDBOX_CSP": content_security_policy(CUSTOM_FRONTEND, port),
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
    data = b""  # what came before the connection failed, if it did
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(raw)
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
    if not authed or "sandbox_token=" in case["target"].lower():
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
                                             "/?sandbox_token=wrong", "/?SANDBOX_TOKEN=" + TOKEN,
                                             f"/?sandbox_token=&sandbox_token={TOKEN}&x=1",
                                             "*", "http://example.com/",
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
        "jar": jars(),
        "cookie_headers": st.integers(min_value=1, max_value=3),
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
        "jar": jars(),
        "cookie_headers": st.integers(min_value=1, max_value=3),
        "extra": st.just(()),
    })


def jars():
    """Other sandboxes' cookies, as many as a browser may hold."""
    return st.lists(st.sampled_from(SANDBOX_COOKIES), max_size=8)


def cookie_pairs(case: dict) -> list[str]:
    """The cookies a case sends: the UI's own around the sandboxes', the
    credential's among them."""
    credential = {"cookie": f"sandbox-{NAME}={TOKEN}", "wrong-cookie": f"sandbox-{NAME}=nope",
                  "other-sandbox-cookie": f"sandbox-other={TOKEN}"}.get(case["credential"])
    jar = case["jar"]
    sandboxes = jar[:len(jar) // 2] + ([credential] if credential else []) + jar[len(jar) // 2:]
    return [UI_COOKIES[0], *sandboxes, UI_COOKIES[1]] if sandboxes else []


def encode(case: dict, nonce: str, last: bool = False) -> bytes:
    target = case["target"]
    if target.startswith("/"):  # mark it, so the upstream's record can be matched to it
        target = f"/{nonce}{target}"
    pairs = cookie_pairs(case)
    per_header = max(1, -(-len(pairs) // case["cookie_headers"]))
    cookies = tuple(("Cookie", "; ".join(pairs[i:i + per_header])) for i in range(0, len(pairs), per_header))
    extra = cookies + case["extra"]
    if last and not case["upgrade"]:
        extra = extra + (("Connection", "close"),)  # so the exchange ends when the answers do
    if case["credential"] == "wrong-bearer":
        extra = (("Authorization", "Bearer " + "x" * len(TOKEN)),) + extra
    return request(case["method"], target, case["host"], bearer=case["credential"] == "bearer",
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
        assert OTHER_TOKEN not in json.dumps(record), record
        # Every sandbox-* cookie is gone; the UI's own pass, in order.
        cookies = [v for k, v in record["headers"] if k.lower() == "cookie"]
        assert cookies == (["; ".join(UI_COOKIES)] if cookie_pairs(case) else []), (case, record)
        assert headers.get("host", "").lower() in (own(port), f"localhost:{port}")
    # The control: the clean requests the rules allow did get through.
    expected = [n for n, c in sent.items() if c["expected"]]
    assert expected, "no clean allowed request was generated"
    assert [sent[n] for n in expected if n not in seen] == []
    ingress.reload()
    assert ingress.status == "running" and ingress.attrs["RestartCount"] == 0
    assert exchange(port, request("GET", "/after", own(port), bearer=True)) == [200]
    log = ingress.logs().decode(errors="replace")
    # sandbox.js failing on a request would leave what it computes empty.
    assert TOKEN not in log and "js exception" not in log, log[-2000:]


@pytest.mark.parametrize("form", ["CONNECT", "absolute-URI"])
def test_a_pipelined_proxy_request_is_refused_and_logged(door, form):
    """Each form on its own connection: nginx closes a connection after a
    400, so a third request pipelined behind the first refusal is never read."""
    port, upstream, ingress = door
    nonce = f"p{uuid.uuid4().hex[:12]}"
    target = f"{nonce}.example.com:443" if form == "CONNECT" else f"http://{nonce}.example.com/"
    proxied = (f"CONNECT {target} HTTP/1.1\r\nHost: {nonce}.example.com:443\r\n\r\n".encode()
               if form == "CONNECT" else request("GET", target, own(port), bearer=True))
    statuses = exchange(port, request("GET", f"/{nonce}", own(port), bearer=True) + proxied)
    assert statuses[0] == 200 and statuses[1:] and all(s in (400, 405) for s in statuses[1:]), statuses
    recorded(upstream, nonce)
    assert list(seen_by_upstream(upstream)).count(nonce) == 1
    # This test's own line (the fuzzing logs other proxy requests, for
    # other reasons): its target names this test's nonce.
    line = next(line for line in log_line(ingress, f"{nonce}.example.com").splitlines()
                if f"{nonce}.example.com" in line and "refused" in line)
    assert "reason=proxy-request" in line, line


def answer_head(port: int, raw: bytes) -> tuple[int, list[tuple[str, str]]]:
    """The status and header lines of the first answer on a connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data and (chunk := s.recv(65536)):
            data += chunk
    status_line, *lines = data.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    return int(status_line.split()[1]), [tuple(part.strip() for part in line.split(":", 1)) for line in lines]


def log_line(container, needle: str) -> str:
    """The container's whole log, once a line with `needle` is in it: the
    line is written after the answer is sent, so the test waits for it."""
    deadline = time.monotonic() + 20
    while needle not in (log := container.logs().decode(errors="replace")):
        assert time.monotonic() < deadline, f"{needle!r} never reached the log:\n{log[-2000:]}"
        time.sleep(0.1)
    return log


def recorded(upstream, nonce: str) -> dict:
    log_line(upstream, f'"/{nonce}')
    return seen_by_upstream(upstream)[nonce]


def test_no_sandbox_cookie_reaches_the_ui(door):
    """The browser sends every sandbox on 127.0.0.1 the cookies of all of
    them: the UI gets none, however many, in however many Cookie headers."""
    port, upstream, _ = door
    nonce = f"c{uuid.uuid4().hex[:12]}"
    first = [UI_COOKIES[0], *SANDBOX_COOKIES[:3], f"sandbox-{NAME}={TOKEN}", "sandbox-f=6"]
    second = ["sandbox-g=7", *SANDBOX_COOKIES[3:], UI_COOKIES[1], "Sandbox-H=8"]
    raw = request("GET", f"/{nonce}", own(port),
                  extra=(("Cookie", "; ".join(first)), ("Cookie", "; ".join(second)), ("Connection", "close")))
    # The control: this sandbox's cookie, among nine others, still lets its owner in.
    assert exchange(port, raw) == [200]
    record = recorded(upstream, nonce)
    assert [v for k, v in record["headers"] if k.lower() == "cookie"] == ["; ".join(UI_COOKIES)], record
    assert TOKEN not in json.dumps(record) and OTHER_TOKEN not in json.dumps(record), record


@pytest.mark.parametrize("upgrade", [False, True], ids=["answer", "websocket-upgrade"])
def test_the_ui_cannot_set_a_sandbox_cookie(door, upgrade):
    """A UI's Set-Cookie for a sandbox-* name would plant or overwrite the
    access cookie of this sandbox or another (cookies ignore ports)."""
    port, _, _ = door
    target = f"/{uuid.uuid4().hex[:12]}/{SET_COOKIES_MARK}"
    raw = request("GET", target, own(port), bearer=True, origin=f"http://{own(port)}", upgrade=upgrade)
    status, headers = answer_head(port, raw)
    assert status == (101 if upgrade else 200)
    # The UI's own cookies pass, each as its own header, in its order.
    assert [v for k, v in headers if k.lower() == "set-cookie"] == list(UI_SET_COOKIES), headers
    # The control: the access link still sets this sandbox's cookie.
    status, headers = answer_head(port, request("GET", f"/?sandbox_token={TOKEN}", own(port)))
    assert status == 302
    assert [v for k, v in headers if k.lower() == "set-cookie"] == [
        f"sandbox-{NAME}={TOKEN}; Path=/; HttpOnly; SameSite=Strict"], headers


def test_the_token_never_reaches_the_log(door):
    """Every way a token can come in a request that the ingress logs: its own
    log lines, and nginx's error lines, which quote the request line and Host."""
    port, _, ingress = door
    encoded = "".join(f"%{ord(c):02X}" for c in TOKEN[:3]) + TOKEN[3:]
    ours = f"sandbox-{NAME}={TOKEN}"

    def get(target, host=own(port), **headers):
        return request("GET", target, host, extra=(("Connection", "close"),), **headers)

    # Each is marked with a nonce in a field that is logged.
    attacks = {
        "name in capitals": (302, lambda n: get(f"/{n}/?SANDBOX_TOKEN={TOKEN}")),
        "name in mixed case": (302, lambda n: get(f"/{n}/?Sandbox_Token={TOKEN}&x=1")),
        "doubled": (401, lambda n: get(f"/{n}/?sandbox_token={TOKEN}&sandbox_token={TOKEN}")),
        "an empty one first": (401, lambda n: get(f"/{n}/?sandbox_token=&SANDBOX_TOKEN={TOKEN}", cookie=ours)),
        "another sandbox's": (401, lambda n: get(f"/{n}/?sandbox_token={OTHER_TOKEN}")),
        "in the path": (401, lambda n: get(f"/{n}/{TOKEN}")),
        "in another parameter": (401, lambda n: get(f"/{n}/?next={TOKEN}")),
        "percent-encoded": (403, lambda n: get(f"/{encoded}", fetch_site=n)),
        "in a foreign Host": (421, lambda n: get(f"/{n}/", f"{TOKEN}.example:{port}", cookie=ours)),
        "in an Origin": (403, lambda n: get(f"/{n}/", origin=f"http://{TOKEN}.example")),
        "as Sec-Fetch-Site": (403, lambda n: get(f"/{n}/", fetch_site=TOKEN)),
        # nginx refuses it before any rule, and writes an error line.
        "in a body too large": (413, lambda n: (f"POST /{n}/{TOKEN} HTTP/1.1\r\nHost: {TOKEN}:{port}\r\n"
                                                f"Content-Length: {10 ** 11}\r\n\r\n").encode()),
    }
    nonces = {}
    for what, (status, make) in attacks.items():
        nonces[what] = nonce = f"t{uuid.uuid4().hex[:12]}"
        assert exchange(port, make(nonce)) == [status], what
        log = log_line(ingress, nonce)
        assert TOKEN not in log and OTHER_TOKEN not in log and encoded not in log, (what, log[-2000:])
    # The controls: the log still says what it is for, less the token.
    assert f'access link used: status=302 reason=login request="GET /{nonces["name in capitals"]}/' \
           f'?SANDBOX_TOKEN=... HTTP/1.1"' in log
    assert f'request: "POST /{nonces["in a body too large"]}/... HTTP/1.1"' in log


def test_the_token_never_reaches_the_ui_in_any_form(door):
    """Tried as an attacker would: with the cookie, these passed the token on
    to the UI: `/?a=1;sandbox_token=T` (frameworks that split parameters on
    ";"), `sandbox_token[]=T`, `%3Fsandbox_token=T` in the path, and
    `Authorization: BEARER T`, `Bearer<TAB>T`, `Bearer T, Bearer x`. Each is
    now refused or passed on without it."""
    port, upstream, _ = door
    ours = f"sandbox-{NAME}={TOKEN}"
    forms = {
        "after a semicolon": (f"/?a=1;sandbox_token={TOKEN}", ()),
        "as sandbox_token[]": (f"/?sandbox_token%5B%5D={TOKEN}", ()),
        "encoded in the path": (f"/%3Fsandbox_token={TOKEN}", ()),
        "doubly encoded": ("/?next=" + "".join(f"%25{ord(c):02X}" for c in TOKEN), ()),
        "bearer in capitals": ("/", (("Authorization", f"BEARER {TOKEN}"),)),
        "bearer after a tab": ("/", (("Authorization", f"Bearer\t{TOKEN}"),)),
        "two bearers": ("/", (("Authorization", f"Bearer {TOKEN}, Bearer x"),)),
        "in another header": ("/", (("X-Next", f"http://127.0.0.1:{port}/?sandbox_token={TOKEN}"),)),
    }
    for what, (target, extra) in forms.items():
        nonce = f"u{uuid.uuid4().hex[:12]}"
        marked = target.replace("/", f"/{nonce}/", 1)
        statuses = exchange(port, request("GET", marked, own(port), cookie=ours,
                                          extra=(*extra, ("Connection", "close"))))
        assert statuses in ([401], [200]), (what, statuses)
        if statuses == [200]:
            assert TOKEN not in json.dumps(recorded(upstream, nonce)), what
    # Nothing the UI ever saw carries the token; the control: a plain request of the owner gets through.
    nonce = f"u{uuid.uuid4().hex[:12]}"
    assert exchange(port, request("GET", f"/{nonce}", own(port), cookie=ours, extra=(("Connection", "close"),))) \
        == [200]
    recorded(upstream, nonce)
    assert TOKEN not in upstream.logs().decode(errors="replace")


def test_no_process_carries_the_token_on_its_command_line(door):
    """Tried as an attacker would: the ingress filtered its log with
    `sed s/TOKEN/.../`, a process whose command line every local user of the
    host reads in /proc; a plain user read each sandbox's token there and got
    in with it."""
    port, _, ingress = door
    lines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            lines.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            pass  # a process that ended meanwhile
    # The control: the ingress's own processes are among those read.
    assert any("/tmp/nginx/nginx.conf" in line for line in lines), "the container's processes were not seen"
    assert not [line for line in lines if TOKEN in line]


def test_a_token_encoded_in_nginx_error_lines_is_left_out(door):
    """Tried as an attacker would: the token written as %XX escapes, in the
    request line, the Host and the Referer of a request nginx refuses itself
    (a body too large), reached its error line, which quotes them."""
    port, _, ingress = door
    encoded = "".join(f"%{ord(c):02X}" for c in TOKEN)
    nonce = f"e{uuid.uuid4().hex[:12]}"
    raw = (f"POST /{nonce}?q={encoded} HTTP/1.1\r\nHost: {encoded}\r\nReferer: http://a/{encoded}\r\n"
           f"Content-Length: {10 ** 11}\r\n\r\n").encode()
    assert exchange(port, raw) == [413]
    marker = f"m{uuid.uuid4().hex[:12]}"
    exchange(port, (f"POST /{marker} HTTP/1.1\r\nHost: {own(port)}\r\nContent-Length: {10 ** 11}\r\n\r\n").encode())
    log = log_line(ingress, marker)  # written after the line of the attack
    assert encoded not in log and encoded.lower() not in log and TOKEN not in log
    assert "a line of nginx's log left out: it carries the access token" in log  # the control: it was written


def cpu_seconds(container) -> float:
    return container.stats(stream=False)["cpu_stats"]["cpu_usage"]["total_usage"] / 1e9


def test_large_headers_cost_the_ingress_little(door):
    """Tried as an attacker would: sandbox.js reads the target and every
    header of every request, and read each a character at a time (time and
    memory that grow with the square of the length) and unwrapped
    percent-encoding one layer per round. One such request, with no
    credential, held the ingress's one worker for 1.7 s, and in the 128 MiB
    a sandbox's ingress has, got it killed for memory, dropping every
    connection it served; the test's ingress answered nothing."""
    port, _, ingress = door
    layers = "%" + "25" * 7000 + "41"
    raw = request("GET", "/?" + "x" * 3000, own(port), origin="http://" + layers,
                  extra=(("X-Big-0", "a" * 15000), ("X-Big-1", layers), ("X-Big-2", "a" * 15000),
                         ("Connection", "close")))
    before = cpu_seconds(ingress)
    for _ in range(3):
        assert exchange(port, raw, timeout=60) == [403]
    spent = (cpu_seconds(ingress) - before) / 3
    assert spent < 0.1, f"{spent:.3f} s of the ingress's CPU per request"
    # The control: such a request is still read whole, and the owner answered.
    assert exchange(port, request("GET", "/after-large", own(port), bearer=True,
                                  extra=(("Connection", "close"),))) == [200]
