"""A model source that lies, on loopback, for tests of `sandbox model pull`:
each path answers as it is told (a status, headers, a body, or a body that
never ends), over HTTP or over HTTPS with a certificate made for the test.
Every request is recorded with the Authorization header it carried."""
from __future__ import annotations

import http.server
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    # Zeros after the body, with no Content-Length, until the client hangs up.
    endless: bool = False
    # A source that stalls: after this many bytes of the body it sets `held`
    # and sends nothing more until the test sets `release`, or, with `drip`,
    # one byte of the rest every `drip` seconds until the client hangs up.
    hold_after: int | None = None
    drip: float | None = None
    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path


def make_certificate(directory: Path) -> Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost: trusted by a
    client given it as SSL_CERT_FILE, which both urllib and the hub client read."""
    cert, key = directory / "loopback.crt", directory / "loopback.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert),
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    return Certificate(cert, key)


def server_context(certificate: Certificate) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate.cert, certificate.key)
    return context


def serve_on_loopback(answer: Callable[[http.server.BaseHTTPRequestHandler, bool], None],
                      certificate: Certificate | None) -> http.server.ThreadingHTTPServer:
    """A threaded HTTP/1.1 server on 127.0.0.1, over TLS with `certificate`,
    whose HEAD and GET are answer(handler, send_body), serving until stopped."""
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_HEAD(self):
            answer(self, False)

        def do_GET(self):
            answer(self, True)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if certificate:
        server.socket = server_context(certificate).wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop_serving(server: http.server.ThreadingHTTPServer) -> None:
    server.shutdown()
    server.server_close()


@dataclass
class HostileSource:
    answers: dict[str, Answer] = field(default_factory=dict)  # path -> answer
    certificate: Certificate | None = None
    requests: list[dict] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{'https' if self.certificate else 'http'}://{host}:{self.port}{path}"

    def start(self) -> HostileSource:
        self.server = serve_on_loopback(self.answer, self.certificate)
        return self

    def answer(self, handler: http.server.BaseHTTPRequestHandler, send_body: bool) -> None:
        self.requests.append({"method": handler.command, "port": self.port, "path": handler.path,
                              "authorization": handler.headers.get("Authorization"),
                              "range": handler.headers.get("Range")})
        answer = self.answers.get(handler.path.split("?")[0], Answer(404))
        handler.send_response(answer.status)
        for name, value in answer.headers.items():
            handler.send_header(name, value)
        if answer.endless:
            handler.send_header("Connection", "close")
            handler.close_connection = True
        elif "Content-Length" not in answer.headers:
            handler.send_header("Content-Length", str(len(answer.body)))
        handler.end_headers()
        if not send_body:
            return
        try:
            body = answer.body
            if answer.hold_after is not None:
                handler.wfile.write(body[:answer.hold_after])
                handler.wfile.flush()
                body = body[answer.hold_after:]
                answer.held.set()
                if answer.drip is None:
                    answer.release.wait()
                else:
                    for at in range(len(body)):
                        handler.wfile.write(body[at:at + 1])
                        handler.wfile.flush()
                        time.sleep(answer.drip)
                    body = b""
            handler.wfile.write(body)
            while answer.endless:
                handler.wfile.write(bytes(1 << 16))
        except OSError:  # the client hung up: what a refusal looks like from here
            handler.close_connection = True

    def stop(self) -> None:
        stop_serving(self.server)
