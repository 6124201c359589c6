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
        source = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.answer(send_body=False)

            def do_GET(self):
                self.answer(send_body=True)

            def answer(self, send_body: bool):
                source.requests.append({"method": self.command, "port": source.port, "path": self.path,
                                        "authorization": self.headers.get("Authorization"),
                                        "range": self.headers.get("Range")})
                answer = source.answers.get(self.path.split("?")[0], Answer(404))
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                if answer.endless:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                elif "Content-Length" not in answer.headers:
                    self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                if not send_body:
                    return
                try:
                    body = answer.body
                    if answer.hold_after is not None:
                        self.wfile.write(body[:answer.hold_after])
                        self.wfile.flush()
                        body = body[answer.hold_after:]
                        answer.held.set()
                        if answer.drip is None:
                            answer.release.wait()
                        else:
                            for at in range(len(body)):
                                self.wfile.write(body[at:at + 1])
                                self.wfile.flush()
                                time.sleep(answer.drip)
                            body = b""
                    self.wfile.write(body)
                    while answer.endless:
                        self.wfile.write(bytes(1 << 16))
                except OSError:  # the client hung up: what a refusal looks like from here
                    self.close_connection = True

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if self.certificate:
            self.server.socket = server_context(self.certificate).wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
