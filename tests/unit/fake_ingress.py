"""A stand-in for a sandbox's ingress in unit tests: a real HTTP/1.1 server on
127.0.0.1 that tells people apart as images/ingress's nginx does (Host,
token, Origin, no proxy requests) and answers what it passes on as a UI
would; or, `open_door`, one that passes everything on."""
from __future__ import annotations

import socket
import threading

from launcher.access import cookie_name


class StandInIngress:
    def __init__(self, sandbox: str, token: str, port: int = 0, open_door: bool = False):
        self.sandbox, self.token, self.open_door = sandbox, token, open_door
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", port))
        self._server.listen(512)
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def answer(self, method: str, target: str, headers: dict) -> tuple[int, str | None]:
        """The status, and the refusal's reason (X-Sandbox-Refused), for one request."""
        if self.open_door:
            return 200, None
        own = f"127.0.0.1:{self.port}"
        if method == "CONNECT" or not target.startswith("/"):
            return 400, None
        if headers.get("host") != own:
            return 421, "foreign-host"
        cookies = [c.strip() for c in headers.get("cookie", "").split(";")]
        if headers.get("authorization") != f"Bearer {self.token}" \
                and f"{cookie_name(self.sandbox)}={self.token}" not in cookies:
            return 401, "no-token"
        origin = headers.get("origin")
        if headers.get("upgrade", "").lower() == "websocket":
            return (101, None) if origin == f"http://{own}" else (403, "foreign-origin")
        if method == "POST":
            if origin is None:
                return 403, "no-origin"
            return (404, None) if origin == f"http://{own}" else (403, "cross-site")
        return 200, None

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(15)
            pending = b""
            try:
                while True:
                    while b"\r\n\r\n" not in pending:
                        data = conn.recv(65536)
                        if not data:
                            return
                        pending += data
                    head, _, pending = pending.partition(b"\r\n\r\n")
                    request_line, *lines = head.decode("latin-1").split("\r\n")
                    method, target, _ = (request_line.split(" ", 2) + ["", ""])[:3]
                    headers = {}
                    for line in lines:
                        key, _, value = line.partition(":")
                        headers[key.strip().lower()] = value.strip()
                    length = int(headers.get("content-length") or 0)
                    while len(pending) < length:
                        pending += conn.recv(65536)
                    pending = pending[length:]
                    status, refused = self.answer(method, target, headers)
                    close = status in (101, 400) or headers.get("connection", "").lower() == "close"
                    body = b"" if status == 101 else b"<html>chat</html>"
                    response = [f"HTTP/1.1 {status} Answered", f"Content-Length: {len(body)}"]
                    response += [f"X-Sandbox-Refused: {refused}"] if refused else []
                    response += ["Connection: close"] if close else []
                    conn.sendall(("\r\n".join(response) + "\r\n\r\n").encode() + body)
                    if close:
                        return
            except OSError:
                return
