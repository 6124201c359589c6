"""The DNS sink (images/dns-sink/sink.py) on loopback: every name gets
NXDOMAIN at once, and each query is logged with the name and type."""
import ipaddress
import json
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

SINK = Path(__file__).resolve().parents[2] / "images" / "dns-sink" / "sink.py"


def query(name: str, qtype: int = 1, qid: int = 0x1234) -> bytes:
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question + struct.pack("!HH", qtype, 1)


# Each test gets a sink of its own: the log is read line by line, and lines
# one test left unread would be the next test's first.
@pytest.fixture
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


@pytest.fixture
def answering_sink():
    """The sink in "connections" mode (policy `audit: connections`), keeping
    its records in a directory as it does on the audit volume."""
    # Started as root, the sink goes on as 65534, as it does on the volume:
    # a directory that user can reach and write.
    audit = Path(tempfile.mkdtemp(prefix="sink-audit-"))
    audit.chmod(0o777)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"SANDBOX_SINK_ANSWERS": "connections", "SANDBOX_SINK_ANSWER_RANGE": "198.18.0.0/15",
           "SANDBOX_AUDIT_DIR": str(audit), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, str(SINK), str(port)], stdout=subprocess.PIPE, text=True, env=env)
    assert json.loads(proc.stdout.readline())["answers"] == "connections"
    yield port, proc, audit
    proc.terminate()
    proc.wait(5)
    shutil.rmtree(audit)


def ask(port: int, name: str, qtype: int = 1) -> tuple[int, int, bytes]:
    """rcode, answer count and the answer's data of one UDP query."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        q = query(name, qtype)
        s.sendto(q, ("127.0.0.1", port))
        reply, _ = s.recvfrom(512)
    flags, qd, an = struct.unpack("!HHH", reply[2:8])
    assert reply[12:len(q)] == q[12:]  # the question, echoed
    return flags & 0xF, an, reply[len(q):]


def test_in_connections_mode_every_name_resolves_to_an_address_of_its_own(answering_sink):
    port, proc, audit = answering_sink
    rcode, count, record = ask(port, "telemetry.ui.example")
    assert (rcode, count) == (0, 1)
    pointer, qtype, qclass, ttl, size = struct.unpack("!HHHIH", record[:12])
    assert (pointer, qtype, qclass, size) == (0xC00C, 1, 1, 4) and ttl > 0
    address = socket.inet_ntoa(record[12:16])
    assert ipaddress.IPv4Address(address) in ipaddress.IPv4Network("198.18.0.0/15")
    logged = json.loads(proc.stdout.readline())
    assert (logged["name"], logged["answer"]) == ("telemetry.ui.example", address)
    # The same name (in any case) gets the same address; another name another one.
    assert socket.inet_ntoa(ask(port, "Telemetry.UI.example")[2][12:16]) == address
    assert socket.inet_ntoa(ask(port, "updates.ui.example")[2][12:16]) != address
    # AAAA and the rest: the name exists, with no record of that type (NODATA), so clients use the A record.
    assert ask(port, "telemetry.ui.example", 28)[:2] == (0, 0)
    assert ask(port, "telemetry.ui.example", 65)[:2] == (0, 0)
    kept = [json.loads(line) for line in (audit / "lookups.jsonl").read_text().splitlines()]
    assert kept[0]["answer"] == address and "answer" not in kept[-1]


def test_the_default_mode_still_resolves_nothing(sink):
    port, _ = sink
    assert ask(port, "telemetry.ui.example")[:2] == (3, 0)


def test_a_query_without_a_class_neither_stops_the_sink_nor_goes_unrecorded(answering_sink):
    """Tried as an attacker would: in "connections" mode a query cut short
    before its class field raised struct.error, the sink exited (Docker
    restarted it, again and again) and attempts meanwhile went unrecorded."""
    port, proc, audit = answering_sink
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(query("no-class.example")[:-2], ("127.0.0.1", port))
        assert s.recvfrom(512)[0][3] & 0xF == 5  # REFUSED
    assert ask(port, "after-it.example")[:2] == (0, 1)  # still answering, and recording
    logged = [json.loads(proc.stdout.readline())["name"] for _ in range(2)]
    assert logged == ["(malformed)", "after-it.example"]
    assert proc.poll() is None


def test_sigterm_keeps_the_summary_before_the_sink_exits():
    audit = Path(tempfile.mkdtemp(prefix="sink-audit-"))  # as answering_sink's: reachable by 65534
    audit.chmod(0o777)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"SANDBOX_AUDIT_DIR": str(audit), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, str(SINK), str(port)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert json.loads(proc.stdout.readline())["event"] == "listening"
        ask(port, "just-before-the-end.example")
        assert json.loads(proc.stdout.readline())["name"] == "just-before-the-end.example"
        proc.terminate()
        assert proc.wait(10) == 0
        summary = json.loads((audit / "summary.json").read_text())
        assert [(d["where"], d["count"]) for d in summary["destinations"]] == [("just-before-the-end.example", 1)]
        assert json.loads((audit / "counts.json").read_text())["lookups"] == 1
    finally:
        proc.kill()
        shutil.rmtree(audit)


def test_a_lookup_is_recorded_before_it_is_answered():
    """Whatever a part has been told, the audit already holds: with the sink
    held in writing its record (its log pipe full), no answer comes; once the
    record is written, it does."""
    import fcntl
    import os
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    proc = subprocess.Popen([sys.executable, str(SINK), str(port)], stdout=write_end)
    try:
        log = os.fdopen(read_end, "rb", buffering=0)
        assert b'"listening"' in log.read(4096)
        # Filled through a file description of its own: the sink's stays blocking.
        filler = os.open(f"/proc/self/fd/{write_end}", os.O_WRONLY | os.O_NONBLOCK)
        for size in (512, 1):  # to the last byte: the sink's next log line waits
            try:
                while True:
                    os.write(filler, b"x" * size)
            except BlockingIOError:
                pass
        os.close(filler)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(query("held.example"), ("127.0.0.1", port))
            client.settimeout(2)
            with pytest.raises(socket.timeout):
                client.recvfrom(512)  # the sink is held in its record: no answer may have gone out
            drained = b""
            while b"held.example" not in drained:
                drained += log.read(65536)
            client.settimeout(10)
            assert client.recvfrom(512)[0][:2] == b"\x12\x34"
    finally:
        proc.kill()
        proc.wait(5)
        os.close(write_end)


HEALTH = Path(__file__).resolve().parents[2] / "images" / "dns-sink" / "health.py"
HEALTH_NAME = "sink-health.sandbox.invalid"


def tcp_ask(port: int, name: str, source: str = "127.0.0.1", to: str = "127.0.0.1") -> bytes:
    with socket.socket() as s:
        s.settimeout(3)
        s.bind((source, 0))
        s.connect((to, port))
        q = query(name)
        s.sendall(struct.pack("!H", len(q)) + q)
        size = struct.unpack("!H", s.recv(2))[0]
        return s.recv(size)


def next_name(proc) -> str:
    """The name of the next lookup the sink recorded: a marker asked after the
    query under test shows whether that query was recorded before it."""
    return json.loads(proc.stdout.readline())["name"]


def test_its_own_healthcheck_is_answered_and_not_recorded(sink):
    port, proc = sink
    # The healthcheck as the image runs it: healthy, and nothing recorded.
    assert subprocess.run([sys.executable, str(HEALTH), str(port)], timeout=10).returncode == 0
    reply = tcp_ask(port, HEALTH_NAME)
    assert reply[3] & 0xF == 3  # NXDOMAIN
    tcp_ask(port, "marker.example")
    assert next_name(proc) == "marker.example"


def test_the_health_name_from_any_other_address_or_over_udp_is_recorded(sink):
    port, proc = sink
    # Another source address (a part's would be on the internal network;
    # 127.0.0.2 is the one a test can send from), and another destination.
    tcp_ask(port, HEALTH_NAME, source="127.0.0.2")
    assert next_name(proc) == HEALTH_NAME
    tcp_ask(port, HEALTH_NAME, to="127.0.0.3")
    assert next_name(proc) == HEALTH_NAME
    # Over UDP, whose source address is the sender's word: recorded even from 127.0.0.1.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(query(HEALTH_NAME), ("127.0.0.1", port))
        assert s.recvfrom(512)[0][3] & 0xF == 3
    assert next_name(proc) == HEALTH_NAME
    # Any other name from 127.0.0.1 over TCP: recorded.
    tcp_ask(port, "sink-health.sandbox.invalid.example")
    assert next_name(proc) == "sink-health.sandbox.invalid.example"


def test_the_health_name_in_connections_mode_gets_no_address_and_no_record(answering_sink):
    port, proc, *_ = answering_sink
    reply = tcp_ask(port, HEALTH_NAME)
    assert reply[3] & 0xF == 3 and struct.unpack("!H", reply[6:8])[0] == 0  # NXDOMAIN, no answer
    tcp_ask(port, "marker.example")
    assert next_name(proc) == "marker.example"


def test_the_healthcheck_fails_where_nothing_answers():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert subprocess.run([sys.executable, str(HEALTH), str(port)], timeout=10,
                          capture_output=True).returncode != 0
