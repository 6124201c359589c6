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
import threading
from dataclasses import dataclass, field

from tests.support.hostile_source import Certificate, server_context


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
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.answer(send_body=False)

            def do_GET(self):
                self.answer(send_body=True)

            def answer(self, send_body: bool):
                hub.requests.append({"method": self.command, "host": self.headers.get("Host"), "path": self.path,
                                     "range": self.headers.get("Range"),
                                     "authorization": self.headers.get("Authorization")})
                path = self.path.split("?")[0]
                if "/resolve/" in path:
                    repo, rest = path.lstrip("/").split("/resolve/", 1)
                    revision, filename = rest.split("/", 1)
                    found = hub.files.get(f"{repo}@{revision}/{filename}")
                    if found is None:
                        self.send_response(404)
                        self.send_header("X-Error-Code", "EntryNotFound")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(302)
                    self.send_header("X-Repo-Commit", found.commit)
                    self.send_header("X-Linked-Etag", f'"{found.sha256}"')
                    self.send_header("ETag", '"git-blob-id"')
                    self.send_header("X-Linked-Size", str(len(found.data)))
                    # The hub sends the bytes from a CDN host, by a signed link.
                    cdn = hub.cdn or hub.endpoint.replace("127.0.0.1", "localhost")
                    self.send_header("Location", f"{cdn}/cdn/{found.sha256}?signature=secret")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path.startswith("/cdn/"):
                    found = next((f for f in hub.files.values() if f.sha256 == path[5:]), None)
                elif path.startswith("/plain/"):
                    found = hub.files.get(path[len("/plain/"):])
                else:
                    found = None
                if found is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_data(found.data, send_body)

            def send_data(self, data: bytes, send_body: bool):
                start = 0
                wanted = self.headers.get("Range")
                if wanted and wanted.startswith("bytes=") and wanted.endswith("-"):
                    start = int(wanted[6:-1])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if not send_body:
                    return
                body = data[start:]
                if hub.break_after is not None:
                    body, hub.break_after = body[:hub.break_after], None
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if self.certificate:
            self.server.socket = server_context(self.certificate).wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
