"""The attacks on a sandbox's front door, tried from the host as a web page, a
second local user or a hostile client would (docs/threats.md, "The front
door"). Each attack comes with a control: the same request as the owner
makes it, which must get through, so that a door that is simply shut (or an
ingress that is down) never passes for one that tells people apart.

What each try saw is returned as plain data; launcher/matrix.py judges it."""
from __future__ import annotations

import socket
import time

from launcher.access import LAUNCHER_AGENT, cookie_name, owner_headers

FOREIGN_ORIGIN = "http://evil.example"
FLOOD_CONNECTIONS = 300
OWNER_TRIES = 5


def _exchange(port: int, raw: bytes, timeout: float = 10, first_only: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        chunks = []
        try:
            while data := s.recv(65536):
                chunks.append(data)
                if first_only and b"\r\n\r\n" in b"".join(chunks):
                    break
        except socket.timeout:
            pass
        return b"".join(chunks)


def _request(method: str, host: str, headers: dict, body: bytes = b"") -> bytes:
    lines = [f"{method} / HTTP/1.1", f"Host: {host}", f"User-Agent: {LAUNCHER_AGENT}"] + [
        f"{k}: {v}" for k, v in headers.items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _responses(raw: bytes) -> list[dict]:
    """The status and refusal reason of each response in a byte stream, read
    head by head: a body is skipped by its length (Content-Length, chunks, or
    the rest of the stream), so that no text inside it is taken for a response."""
    found = []
    while raw:
        head, separator, raw = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        status_text = rest.partition(" ")[0]
        if not separator or not version.startswith("HTTP/1.") or not (status_text.isascii() and status_text.isdigit()):
            break
        headers = {}
        for line in header_lines:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        found.append({"status": int(status_text), "refused": headers.get("x-sandbox-refused")})
        raw = _after_body(raw, headers, int(status_text))
    return found


def _after_body(raw: bytes, headers: dict, status: int) -> bytes:
    """What follows a response's body in the stream."""
    if status in (101, 204, 304) or 100 <= status < 200:
        return b"" if status == 101 else raw  # after 101 the connection is no longer HTTP
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line, separator, raw = raw.partition(b"\r\n")
            size = size_line.split(b";")[0].strip()
            if not separator or not size or any(c not in b"0123456789abcdefABCDEF" for c in size):
                return b""
            if int(size, 16) == 0:
                return raw.partition(b"\r\n\r\n")[2] if not raw.startswith(b"\r\n") else raw[2:]
            raw = raw[int(size, 16) + 2:]
    length = headers.get("content-length", "")
    if length.isascii() and length.isdigit():
        return raw[int(length):]
    return b""  # the body runs to the end of the stream


def _one(port: int, raw: bytes) -> dict:
    try:
        answers = _responses(_exchange(port, raw, first_only=True))
    except OSError as e:
        return {"status": None, "refused": None, "error": str(e)}
    return answers[0] if answers else {"status": None, "refused": None, "error": "no answer"}


def try_front_door(port: int, sandbox: str, token: str, mark: str | None = None) -> dict:
    own = f"127.0.0.1:{port}"
    own_origin = f"http://{own}"
    cookie = f"{cookie_name(sandbox)}={token}"
    bearer = {**owner_headers(token, mark), "Connection": "close"}
    with_cookie = {"Cookie": cookie, "Connection": "close"}
    websocket = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                 "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Cookie": cookie}
    return {
        "owner": _one(port, _request("GET", own, bearer)),
        "owner_cookie": _one(port, _request("GET", own, with_cookie)),
        "foreign_host": _one(port, _request("GET", f"evil.example:{port}", bearer)),
        "rebound_host_with_cookie": _one(port, _request("GET", f"evil.example:{port}", with_cookie)),
        "no_token": _one(port, _request("GET", own, {"Connection": "close"})),
        "wrong_token": _one(port, _request("GET", own, {"Authorization": "Bearer " + "x" * 43,
                                                        "Connection": "close"})),
        "cross_site_post": _one(port, _request("POST", own, {
            **with_cookie, "Origin": FOREIGN_ORIGIN, "Sec-Fetch-Site": "cross-site",
            "Content-Type": "text/plain"}, b'{"messages": []}')),
        "same_site_post": _one(port, _request("POST", own, {
            **with_cookie, "Origin": "http://localhost:1", "Sec-Fetch-Site": "same-site",
            "Content-Type": "text/plain"}, b'{"messages": []}')),
        "no_origin_post": _one(port, _request("POST", own, {**with_cookie, "Content-Type": "text/plain"},
                                              b'{"messages": []}')),
        "own_post": _one(port, _request("POST", own, {
            **with_cookie, "Origin": own_origin, "Sec-Fetch-Site": "same-origin",
            "Content-Type": "application/json"}, b"{}")),
        "cross_site_websocket": _one(port, _request("GET", own, {**websocket, "Origin": FOREIGN_ORIGIN})),
        "own_websocket": _one(port, _request("GET", own, {**websocket, "Origin": own_origin})),
        "pipelined": pipelined_proxy_requests(port, token, mark),
        "flood": slow_client_flood(port, token, mark=mark),
    }


def pipelined_proxy_requests(port: int, token: str, mark: str | None = None) -> list[dict]:
    """A good request and, on the same connection, two proxy requests."""
    own = f"127.0.0.1:{port}"
    raw = (_request("GET", own, owner_headers(token, mark))
           + b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
           + f"GET http://example.com/ HTTP/1.1\r\nHost: {own}\r\n\r\n".encode())
    try:
        return _responses(_exchange(port, raw, timeout=5))
    except OSError as e:
        return [{"status": None, "refused": None, "error": str(e)}]


def slow_client_flood(port: int, token: str, connections: int = FLOOD_CONNECTIONS, mark: str | None = None) -> dict:
    """Hundreds of connections that each send half a request and wait, while
    the owner asks for the UI. Counts how many of the flood were still open
    when the owner was done: the control that the flood really happened."""
    flood: list[socket.socket] = []
    partial = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Slow: ".encode()
    try:
        for _ in range(connections):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(partial)
            flood.append(s)
    except OSError as e:
        opened_error = str(e)
    else:
        opened_error = ""
    owner = []
    for _ in range(OWNER_TRIES):
        started = time.monotonic()
        answer = _one(port, _request("GET", f"127.0.0.1:{port}", {**owner_headers(token, mark), "Connection": "close"}))
        owner.append({**answer, "seconds": round(time.monotonic() - started, 3)})
    still_open = 0
    for s in flood:
        s.setblocking(False)
        try:
            still_open += s.recv(1) != b""
        except BlockingIOError:
            still_open += 1
        except OSError:
            pass
        s.close()
    return {"opened": len(flood), "still_open": still_open, "owner": owner, "error": opened_error}
