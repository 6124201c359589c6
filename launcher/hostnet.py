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


def container_process(pid: int, container_id: str) -> dict | None:
    """The credentials of a container's process as the host's /proc shows
    them: {"command", "uid", "cap_eff", "no_new_privs", "seccomp"}, with uids
    as the container sees them (through its uid_map, where the engine remaps
    users). None when the PID is gone or is no longer the container's."""
    try:
        cgroups = Path(f"/proc/{pid}/cgroup").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
        uid_map = Path(f"/proc/{pid}/uid_map").read_text()
    except OSError:
        return None
    status = process_status(pid)
    # Read after the status too: a PID reused meanwhile by another process is not taken for the container's.
    if status is None or container_id not in cgroups or container_id not in _read(f"/proc/{pid}/cgroup"):
        return None
    return {"command": command.replace(b"\0", b" ").decode(errors="replace").strip()[:80],
            "uid": [str(_inside(int(u), uid_map)) for u in status.get("Uid", "").split()],
            "cap_eff": status.get("CapEff"), "no_new_privs": status.get("NoNewPrivs"),
            "seccomp": status.get("Seccomp")}


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _inside(host_uid: int, uid_map: str) -> int | str:
    """A host uid as the process's user namespace sees it (uid_map lines: inside, outside, count)."""
    for line in uid_map.splitlines():
        inside, outside, count = (int(x) for x in line.split())
        if outside <= host_uid < outside + count:
            return inside + host_uid - outside
    return f"unmapped {host_uid}"


class Canary:
    """A TCP listener on 0.0.0.0 that records every peer that connects."""

    def __init__(self):
        self.hits: list[str] = []
        self._accepted = threading.Condition()
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
            with self._accepted:
                self.hits.append(f"{peer[0]}:{peer[1]}")
                self._accepted.notify_all()
            conn.close()

    def hits_until_now(self, timeout: float = 30) -> list[str]:
        """Every peer whose connection was made before this call. A connection
        is accepted only after those queued before it: one of our own, made
        now and seen accepted, is behind every earlier one, whatever the
        accepting thread's pace."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as marker:
            mine = f"127.0.0.1:{marker.getsockname()[1]}"
            with self._accepted:
                if not self._accepted.wait_for(lambda: mine in self.hits, timeout):
                    raise TimeoutError(f"the canary on port {self.port} accepted nothing for {timeout} s")
                return [hit for hit in self.hits if hit != mine]

    def close(self) -> None:
        self._server.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
