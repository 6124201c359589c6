"""A local stand-in for the Hugging Face hub's download routes, for tests
that must not touch the real hub: HEAD and GET on
/OWNER/REPO/resolve/REVISION/FILE answer as the hub does for an LFS file (the
commit, the sha256 as the linked ETag, the size, and a redirect to a
signed link on another host), and /cdn/... serves the bytes with Range
support. /plain/FILE is a plain download. Every request is recorded. Over
HTTPS when given a certificate (tests/support/hostile_source.py); `cdn`
moves the signed links elsewhere (a hostile server's base URL)."""
from __future__ import annotations

import hashlib
import http.server
from dataclasses import dataclass, field

from tests.support.hostile_source import Certificate, serve_on_loopback, stop_serving


@dataclass
class HubFile:
    data: bytes
    commit: str = "c0ffee" * 6 + "c0ff"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class FakeHub:
    files: dict[str, HubFile] = field(default_factory=dict)  # "OWNER/REPO@REVISION/FILE" -> file
    requests: list[dict] = field(default_factory=list)
    break_after: int | None = None  # the next download stops after this many bytes
    certificate: Certificate | None = None
    cdn: str | None = None  # where signed links point; this server's /cdn/ on "localhost" if None
    server: http.server.ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.certificate else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> FakeHub:
        self.server = serve_on_loopback(self.answer, self.certificate)
        return self

    def answer(self, handler: http.server.BaseHTTPRequestHandler, send_body: bool) -> None:
        self.requests.append({"method": handler.command, "host": handler.headers.get("Host"), "path": handler.path,
                              "range": handler.headers.get("Range"),
                              "authorization": handler.headers.get("Authorization")})
        path = handler.path.split("?")[0]
        if "/resolve/" in path:
            repo, rest = path.lstrip("/").split("/resolve/", 1)
            revision, filename = rest.split("/", 1)
            found = self.files.get(f"{repo}@{revision}/{filename}")
            if found is None:
                handler.send_response(404)
                handler.send_header("X-Error-Code", "EntryNotFound")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            handler.send_response(302)
            handler.send_header("X-Repo-Commit", found.commit)
            handler.send_header("X-Linked-Etag", f'"{found.sha256}"')
            handler.send_header("ETag", '"git-blob-id"')
            handler.send_header("X-Linked-Size", str(len(found.data)))
            # The hub sends the bytes from a CDN host, by a signed link.
            cdn = self.cdn or self.endpoint.replace("127.0.0.1", "localhost")
            handler.send_header("Location", f"{cdn}/cdn/{found.sha256}?signature=secret")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        if path.startswith("/cdn/"):
            found = next((f for f in self.files.values() if f.sha256 == path[5:]), None)
        elif path.startswith("/plain/"):
            found = self.files.get(path[len("/plain/"):])
        else:
            found = None
        if found is None:
            handler.send_response(404)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        self.send_data(handler, found.data, send_body)

    def send_data(self, handler: http.server.BaseHTTPRequestHandler, data: bytes, send_body: bool) -> None:
        start = 0
        wanted = handler.headers.get("Range")
        if wanted and wanted.startswith("bytes=") and wanted.endswith("-"):
            start = int(wanted[6:-1])
            if start >= len(data):
                handler.send_response(416)
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return
            handler.send_response(206)
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            handler.send_response(200)
        handler.send_header("Content-Length", str(len(data) - start))
        handler.end_headers()
        if not send_body:
            return
        body = data[start:]
        if self.break_after is not None:
            body, self.break_after = body[:self.break_after], None
            handler.wfile.write(body)
            handler.wfile.flush()
            handler.close_connection = True
            return
        handler.wfile.write(body)

    def stop(self) -> None:
        stop_serving(self.server)
