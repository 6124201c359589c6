"""The DNS sink (images/dns-sink/sink.py) on loopback: every name gets
NXDOMAIN at once, and each query is logged with the name and type."""
import json
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

SINK = Path(__file__).resolve().parents[2] / "images" / "dns-sink" / "sink.py"


def query(name: str, qtype: int = 1, qid: int = 0x1234) -> bytes:
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question + struct.pack("!HH", qtype, 1)


@pytest.fixture(scope="module")
def sink():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(SINK), str(port)], stdout=subprocess.PIPE, text=True)
    assert json.loads(proc.stdout.readline())["event"] == "listening"
    yield port, proc
    proc.terminate()
    proc.wait(5)


def test_every_name_is_nxdomain_and_logged(sink):
    port, proc = sink
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(query("telemetry.example.com", 28), ("127.0.0.1", port))
        reply, _ = s.recvfrom(512)
    qid, flags, qd, an = struct.unpack("!HHHH", reply[:8])
    assert (qid, flags & 0x8000, flags & 0xF, qd, an) == (0x1234, 0x8000, 3, 1, 0)
    assert json.loads(proc.stdout.readline())["name"] == "telemetry.example.com"


def test_tcp_queries_too(sink):
    port, proc = sink
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        q = query("update.example.org")
        s.sendall(struct.pack("!H", len(q)) + q)
        size = struct.unpack("!H", s.recv(2))[0]
        reply = s.recv(size)
    assert reply[3] & 0xF == 3
    entry = json.loads(proc.stdout.readline())
    assert (entry["name"], entry["type"]) == ("update.example.org", "A")


def test_garbage_gets_no_crash(sink):
    port, proc = sink
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(b"\x00\x01\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c", ("127.0.0.1", port))
        reply, _ = s.recvfrom(512)
        assert reply[3] & 0xF == 5  # REFUSED
        s.sendto(query("still-alive.example"), ("127.0.0.1", port))
        assert s.recvfrom(512)[0][3] & 0xF == 3
