"""Listeners on this machine for what a page tries to reach: a canary (TCP,
recording the first line of each connection, or that one was opened; and
UDP, recording each datagram) and a proxy that records what a browser asks
it for and answers nothing."""
from __future__ import annotations

import collections
import socket
import socketserver
import threading
import urllib.parse


class Recorder(socketserver.ThreadingTCPServer):
    """A TCP listener on 127.0.0.1 (a free port, by default): `lines` holds the first
    line of each connection ("" for one that sent nothing before closing);
    it answers `answer` (nothing, by default) and closes."""
    daemon_threads = True
    # As a server takes a port that connections just closed linger on (TIME_WAIT).
    allow_reuse_address = True

    def __init__(self, answer: bytes = b"", port: int = 0):
        self.lines: list[str] = []

        class Handler(socketserver.BaseRequestHandler):
            def handle(handler):
                handler.request.settimeout(10)
                try:
                    line = handler.request.makefile("rb").readline(4096)
                except OSError:
                    line = b""
                self.lines.append(line.decode("latin-1").strip())
                try:
                    handler.request.sendall(answer)
                except OSError:
                    pass
        super().__init__(("127.0.0.1", port), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class Datagrams:
    """A UDP listener on 127.0.0.1 (a free port, by default): `received`
    counts datagrams. OSError where the port is taken."""

    def __init__(self, port: int = 0):
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # As a program that would share a port with another bound there
        # would (Linux lets it where both ask, as the same user).
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            self.socket.bind(("127.0.0.1", port))
        except OSError:
            self.socket.close()
            raise
        self.port = self.socket.getsockname()[1]
        self.received = 0
        threading.Thread(target=self._receive, daemon=True).start()

    def _receive(self) -> None:
        while True:
            try:
                self.socket.recvfrom(65536)
            except OSError:
                return
            self.received += 1

    def close(self) -> None:
        self.socket.close()


def way_of(request_line: str) -> str:
    """"GET /popup?SECRET HTTP/1.1", or the same through a proxy with the
    whole URL: "popup"."""
    target = request_line.split()[1]
    return urllib.parse.urlsplit(target).path.lstrip("/")


def hosts_asked(lines: list[str]) -> list[dict]:
    """The hosts a proxy was asked for (its Recorder's lines: "CONNECT
    host:443 HTTP/1.1", "GET http://host/path HTTP/1.1"; "" for a connection
    that asked nothing), counted, most asked first."""
    hosts = collections.Counter()
    for line in lines:
        parts = line.split()
        if len(parts) < 2:
            hosts["(a connection that asked nothing)"] += 1
        elif parts[0] == "CONNECT":
            hosts[parts[1]] += 1
        else:
            hosts[urllib.parse.urlsplit(parts[1]).netloc or parts[1]] += 1
    return [{"host": h, "count": c} for h, c in sorted(hosts.items(), key=lambda hc: (-hc[1], hc[0]))]


class Canary:
    """Where a page's tries would arrive: `tcp` (paths asked for, and
    connections that asked nothing, as ""), `udp` (STUN datagrams) and, once
    `listen_beside` has taken it, UDP on the page's own origin's port
    (WebTransport's datagrams)."""

    def __init__(self, secret: str):
        self.secret = secret
        # 204: a navigation that gets it stays on the page, which goes on.
        self.tcp, self.udp = Recorder(b"HTTP/1.1 204 No Content\r\n\r\n"), Datagrams()
        self.beside: Datagrams | None = None

    def listen_beside(self, origin: str) -> bool:
        """Listens on UDP at the host port of `origin` (http://127.0.0.1:PORT),
        as any local program could; False where that port is taken."""
        try:
            self.beside = Datagrams(int(origin.rsplit(":", 1)[1].rstrip("/")))
        except OSError:
            return False
        return True

    def for_the_page(self) -> dict:
        return {"tcp": f"http://{self.tcp.address}", "udp": self.udp.port, "secret": self.secret}

    def reached(self) -> set[str]:
        """The ways that arrived: each TCP path, "webrtc" and "webtransport"."""
        ways = {way_of(line) for line in self.tcp.lines if len(line.split()) > 1}
        if self.udp.received:
            ways.add("webrtc")
        if self.beside and self.beside.received:
            ways.add("webtransport")
        return ways

    def close(self) -> None:
        self.tcp.close()
        self.udp.close()
        if self.beside:
            self.beside.close()

    def through(self, proxy: Recorder) -> tuple[set[str], list[str]]:
        """What `proxy` was asked for: the ways to this canary, and every
        other request (the browser's own)."""
        to_me = [line for line in proxy.lines if f"http://{self.tcp.address}/" in line]
        return {way_of(line) for line in to_me}, [line for line in proxy.lines if line and line not in to_me]
