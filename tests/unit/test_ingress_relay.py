"""The ingress relay (images/ingress/relay.py) run as a process on loopback:
it forwards requests to its one upstream and refuses to act as a proxy."""
import http.server
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

RELAY = Path(__file__).resolve().parents[2] / "images" / "ingress" / "relay.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Upstream(http.server.BaseHTTPRequestHandler):
    seen: list = []

    def do_GET(self):
        Upstream.seen.append(self.requestline)
        body = b"hello from the UI"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def relay():
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = free_port()
    env = {"SANDBOX_UPSTREAM": f"127.0.0.1:{upstream.server_address[1]}", "SANDBOX_LISTEN_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, str(RELAY)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(5)
    upstream.shutdown()


def exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
        return b"".join(chunks)


def test_forwards_requests_for_the_ui(relay):
    answer = exchange(relay, b"GET /page HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(b"hello from the UI")


@pytest.mark.parametrize("request_line, status", [
    (b"CONNECT example.com:443 HTTP/1.1", b"405"),
    (b"GET http://example.com/ HTTP/1.1", b"400"),
    (b"GET http://169.254.169.254/latest/meta-data/ HTTP/1.1", b"400"),
    (b"NOT-HTTP", b"400"),
])
def test_refuses_to_be_a_proxy(relay, request_line, status):
    Upstream.seen.clear()
    answer = exchange(relay, request_line + b"\r\nHost: example.com\r\n\r\n")
    assert answer.split(b" ")[1] == status
    assert Upstream.seen == []  # nothing reached the upstream either
