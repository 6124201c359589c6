"""What `verify` needs to know about the host's own network: its addresses, its
resolvers, whether loopback is routable from outside, and a canary listener.
Linux only; each reader degrades to "unknown" rather than failing."""
from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
import threading
from pathlib import Path

SIOCGIFADDR = 0x8915


def host_ipv4_addresses() -> list[str]:
    """The primary IPv4 address of each of the host's interfaces, loopback aside."""
    found = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name[:15].encode()))
            except OSError:
                continue  # no IPv4 address on this interface
            address = socket.inet_ntoa(packed[20:24])
            if not ipaddress.ip_address(address).is_loopback:
                found.add(address)
    return sorted(found)


def host_resolvers(path: str = "/etc/resolv.conf") -> list[str]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                if ipaddress.ip_address(fields[1]).version == 4:
                    out.append(fields[1])
            except ValueError:
                continue
    return out


def route_localnet() -> dict[str, str | None]:
    """net.ipv4.conf.*.route_localnet: where it is 1, packets from the LAN to
    127.0.0.1 are routed, and Docker's DNAT rules can expose loopback ports."""
    base = Path("/proc/sys/net/ipv4/conf")
    values: dict[str, str | None] = {}
    try:
        for entry in sorted(base.iterdir()):
            try:
                values[entry.name] = (entry / "route_localnet").read_text().strip()
            except OSError:
                values[entry.name] = None
    except OSError:
        pass
    return values


def process_status(pid: int) -> dict[str, str] | None:
    """/proc/PID/status of a host process as a mapping, or None if unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except OSError:
        return None


class Canary:
    """A TCP listener on 0.0.0.0 that records every peer that connects."""

    def __init__(self):
        self.hits: list[str] = []
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("0.0.0.0", 0))
        self._server.listen(64)
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self._server.accept()
            except OSError:
                return
            self.hits.append(f"{peer[0]}:{peer[1]}")
            conn.close()

    def close(self) -> None:
        self._server.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
