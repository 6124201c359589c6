"""The sandbox's sink: where every way out of it ends.

DNS: Docker's embedded resolver answers the sandbox's own names (backend,
frontend, ...) itself and forwards every other query here. Each is answered
at once (no 10-second timeouts for a UI that tries to phone home) and logged
as one JSON line for `sandbox audit`. What the answer is depends on the
policy's `audit` setting ($SANDBOX_SINK_ANSWERS): "lookups", the default,
NXDOMAIN for every name; "connections", every name resolves to an address
of $SANDBOX_SINK_ANSWER_RANGE, one per name, which no network here has: the
part's connection to it goes the way of every outside address, to the sink,
which then knows the name it was meant for.

Connections: the sandbox's network routes everything that is not inside it
to a gateway address that only this container answers for
(launcher/spec.py). Given $SANDBOX_SINK_GATEWAY and started as root with
NET_ADMIN in its own network namespace, it takes that address and has the
kernel deliver every TCP connection and UDP datagram sent through it to
itself (TPROXY), then becomes uid 65534 with no capability left before it
reads a byte. Each connection is accepted, read for a moment (the TLS
server name from the ClientHello; or the HTTP method, Host, path, headers
and body size, and in "connections" mode the body itself, size-capped),
recorded and closed; each datagram recorded. Nothing is ever forwarded.

Records go to stdout and to the sandbox's audit volume ($SANDBOX_AUDIT_DIR),
which outlives the container until `sandbox down --volumes`: lookups.jsonl,
connections.jsonl (each with a .1 file, the previous 8 MiB), and counts.json."""
import hashlib
import ipaddress
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

PORT = 53  # DNS; the tests give another as the first argument
QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV",
          65: "HTTPS", 255: "ANY"}
AUDIT_DIR = os.environ.get("SANDBOX_AUDIT_DIR")
AUDIT_FILE_BYTES = 8 * 1024 * 1024
CONNECTION_PORT = 9999  # where the kernel delivers every caught connection and datagram (at or above 53:
# the port the sysctl lets it bind without a capability)
READ_SECONDS = 2  # how long a caught connection may talk before it is closed
READ_BYTES = 64 * 1024
BODY_KEPT_BYTES = 16 * 1024  # of a plain-HTTP body, in "connections" mode
ANSWERS = os.environ.get("SANDBOX_SINK_ANSWERS", "lookups")
ANSWER_RANGE = ipaddress.IPv4Network(os.environ.get("SANDBOX_SINK_ANSWER_RANGE", "198.18.0.0/15"))
ANSWER_TTL = 60
# Names remembered with their address (each about 0.2 KiB); past this the
# oldest is forgotten: a later connection to its address is recorded all the
# same, without the name.
MAX_NAMES = 20_000
NOBODY = 65534
IP_TRANSPARENT, IP_RECVORIGDSTADDR = 19, 20  # linux/in.h
# Threads that read connections at once: the container has 32 pids (launcher/
# spec.py), and a part that opens more connections than that must not stop
# the sink recording. Past these, a connection is recorded unread and closed.
READERS = threading.BoundedSemaphore(16)
DNS_TCP_READERS = threading.BoundedSemaphore(4)  # past these a TCP query is dropped; UDP still answers
log_lock = threading.Lock()
counts = {"lookups": 0, "connections": 0}


def parse_question(query: bytes):
    """The first question's name and type, or None for a malformed query."""
    labels, i = [], 12
    while i < len(query):
        length = query[i]
        if length == 0:
            qtype = struct.unpack("!H", query[i + 1:i + 3])[0] if i + 3 <= len(query) else 0
            return ".".join(labels) or ".", QTYPES.get(qtype, str(qtype)), i + 5
        if length & 0xC0 or i + 1 + length > len(query):
            return None
        labels.append(query[i + 1:i + 1 + length].decode("ascii", "replace"))
        i += 1 + length
    return None


class Answers:
    """In "connections" mode, the address each outside name resolves to: one
    per name, chosen by the name's hash (so a restarted sink gives the same
    one) from ANSWER_RANGE, and the name each address stands for."""

    def __init__(self, network):
        self.network = network
        self.by_name, self.by_address = {}, {}
        self.lock = threading.Lock()

    def address_for(self, name):
        name = name.lower().rstrip(".")
        with self.lock:
            if name not in self.by_name:
                size = self.network.num_addresses - 2  # neither the first nor the last address
                index = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % size
                while str(self.network[1 + index]) in self.by_address:  # taken by another name
                    index = (index + 1) % size
                self.remember(name, str(self.network[1 + index]))
            return self.by_name[name]

    def remember(self, name, address):
        if name in self.by_name:
            self.by_address.pop(self.by_name.pop(name), None)
        while len(self.by_name) >= MAX_NAMES:  # a part that asks for names without end costs bounded memory
            self.by_address.pop(self.by_name.pop(next(iter(self.by_name))), None)  # the oldest goes
        self.by_name[name], self.by_address[address] = address, name

    def name_of(self, address):
        return self.by_address.get(address)


answers = Answers(ANSWER_RANGE)


def answer(query: bytes):
    """The reply to a query, and its question (name, type) and the address
    given, if any."""
    if len(query) < 12:
        return None
    question = parse_question(query)
    flags = struct.unpack("!H", query[2:4])[0]
    opcode = (flags >> 11) & 0xF
    rcode = 3 if question and opcode == 0 else 5  # NXDOMAIN; REFUSED for anything odd
    records, given = b"", None
    if question and opcode == 0 and ANSWERS == "connections" and question[0] != ".":
        rcode = 0  # the name exists; for anything but an A query of class IN, with no record (NODATA)
        qclass = struct.unpack("!H", query[question[2] - 2:question[2]])[0]
        if question[1] == "A" and qclass == 1:
            given = answers.address_for(question[0])
            records = struct.pack("!HHHIH", 0xC00C, 1, 1, ANSWER_TTL, 4) + socket.inet_aton(given)
    header = query[:2] + struct.pack("!HHHHH", 0x8180 | (flags & 0x0100) | rcode,
                                     1 if question else 0, 1 if records else 0, 0, 0)
    return header + (query[12:question[2]] if question else b"") + records, question, given


def log(client, question, given=None):
    name, qtype = question[:2] if question else ("(malformed)", "-")
    entry = {"time": round(time.time(), 3), "client": client, "name": name, "type": qtype}
    if given:
        entry["answer"] = given
    record("lookups", entry)


def record(kind, entry):
    line = json.dumps(entry)
    with log_lock:
        print(line, flush=True)
        keep(kind, line)


def keep(kind, line):
    """Append to the audit volume; a full or missing volume costs the record
    there, never the answer."""
    if not AUDIT_DIR:
        return
    path = os.path.join(AUDIT_DIR, f"{kind}.jsonl")
    try:
        if os.path.exists(path) and os.path.getsize(path) > AUDIT_FILE_BYTES:
            os.replace(path, os.path.join(AUDIT_DIR, f"{kind}.1.jsonl"))
        with open(path, "a") as f:
            f.write(line + "\n")
        counts[kind] = counts.get(kind, 0) + 1
        temporary = os.path.join(AUDIT_DIR, "counts.json.tmp")
        with open(temporary, "w") as f:
            json.dump(counts, f)
        os.replace(temporary, os.path.join(AUDIT_DIR, "counts.json"))
    except OSError:
        pass


def load_counts():
    try:
        with open(os.path.join(AUDIT_DIR, "counts.json")) as f:
            counts.update(json.load(f))
    except (OSError, ValueError, TypeError):
        pass


def load_answers():
    """The names given addresses before a restart, so that a part that kept
    an answer is still known by its name when it connects."""
    for file in ("lookups.1.jsonl", "lookups.jsonl"):
        try:
            with open(os.path.join(AUDIT_DIR, file)) as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                        if entry.get("answer"):
                            answers.remember(entry["name"].lower().rstrip("."), entry["answer"])
                    except (ValueError, AttributeError, KeyError):
                        continue
        except OSError:
            continue


def serve_udp(sock):
    while True:
        query, peer = sock.recvfrom(4096)
        reply = answer(query)
        if reply:
            sock.sendto(reply[0], peer)
            log(peer[0], *reply[1:])


def serve_tcp_client(conn, peer):
    with conn:
        conn.settimeout(5)
        try:
            size = struct.unpack("!H", conn.recv(2))[0]
            query = b""
            while len(query) < size:
                chunk = conn.recv(size - len(query))
                if not chunk:
                    return
                query += chunk
        except (OSError, struct.error):
            return
        reply = answer(query)
        if reply:
            conn.sendall(struct.pack("!H", len(reply[0])) + reply[0])
            log(peer[0], *reply[1:])


def serve_tcp(sock):
    while True:
        conn, peer = sock.accept()
        if not in_a_thread(DNS_TCP_READERS, serve_tcp_client, conn, peer):
            conn.close()


def in_a_thread(readers, target, conn, peer):
    """Run target(conn, peer) in a thread of its own if one of `readers` is
    free (and a thread can be had); False if not."""
    if not readers.acquire(blocking=False):
        return False

    def run():
        try:
            target(conn, peer)
        finally:
            readers.release()
    try:
        threading.Thread(target=run, daemon=True).start()
        return True
    except RuntimeError:  # can't start new thread
        readers.release()
        return False


# ---- connections ---------------------------------------------------------

def server_name(data):
    """The server name (SNI) of a TLS ClientHello, or None."""
    try:
        if len(data) < 43 or data[0] != 0x16 or data[5] != 0x01:
            return None
        i = 43  # record header 5, handshake header 4, version 2, random 32
        i += 1 + data[i]  # session id
        i += 2 + struct.unpack("!H", data[i:i + 2])[0]  # cipher suites
        i += 1 + data[i]  # compression methods
        end = i + 2 + struct.unpack("!H", data[i:i + 2])[0]
        i += 2
        while i + 4 <= end:
            kind, length = struct.unpack("!HH", data[i:i + 4])
            if kind == 0:  # server_name: list length 2, type 1, name length 2, name
                size = struct.unpack("!H", data[i + 7:i + 9])[0]
                return data[i + 9:i + 9 + size].decode("ascii", "replace")
            i += 4 + length
    except (IndexError, struct.error):
        return None
    return None


def http_request(data, keep_body=False):
    """Method, Host, path, headers and body size of a plain HTTP request (and
    the start of its body, if asked), or None."""
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/") or not parts[0].isalpha():
        return None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length", "")
    out = {"method": parts[0], "host": headers.get("host"), "path": parts[1][:2048],
           "headers": {k: v[:256] for k, v in list(headers.items())[:64]},
           "body_bytes": int(length) if length.isdigit() else len(body)}
    if keep_body and body:
        out["body"] = body[:BODY_KEPT_BYTES].decode("utf-8", "backslashreplace")
        out["body_kept_bytes"] = min(len(body), BODY_KEPT_BYTES)
    return out


def describe(data):
    """What a caught connection said before it was closed."""
    out = {"bytes": len(data)}
    name = server_name(data)
    if name is not None:
        out["tls_server_name"] = name
        return out
    request = http_request(data, keep_body=ANSWERS == "connections") if data else None
    if request:
        out["http"] = request
    elif data:
        out["first_bytes"] = data[:32].hex()
    return out


def read_for_a_moment(conn):
    data = b""
    deadline = time.monotonic() + READ_SECONDS
    while len(data) < READ_BYTES and time.monotonic() < deadline:
        conn.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = conn.recv(READ_BYTES - len(data))
        except OSError:
            break
        if not chunk:
            break
        data += chunk
        request = http_request(data) if b"\r\n\r\n" in data else None
        if server_name(data) or (request and len(data.partition(b"\r\n\r\n")[2]) >= request["body_bytes"]):
            break  # it said what it wanted
    return data


def attempt(peer, protocol, address, port):
    """The record of one connection or datagram: who, where to, and the name
    the sink gave that address for, if it did."""
    entry = {"time": round(time.time(), 3), "client": peer[0], "protocol": protocol, "address": address,
             "port": port}
    name = answers.name_of(address)
    if name:
        entry["name"] = name
    return entry


def caught_tcp(conn, peer, read=True):
    with conn:
        entry = attempt(peer, "tcp", *conn.getsockname()[:2])  # where it meant to go
        if read:
            entry.update(describe(read_for_a_moment(conn)))
        else:
            entry["unread"] = "the sink was busy"
        record("connections", entry)


def serve_caught_tcp(sock):
    while True:
        conn, peer = sock.accept()
        if not in_a_thread(READERS, caught_tcp, conn, peer):
            caught_tcp(conn, peer, read=False)  # recorded all the same, where it was going


def serve_caught_udp(sock):
    while True:
        data, ancillary, _, peer = sock.recvmsg(65535, 1024)
        address, port = None, None
        for level, kind, value in ancillary:
            if level == socket.SOL_IP and kind == IP_RECVORIGDSTADDR:
                port = struct.unpack("!H", value[2:4])[0]
                address = socket.inet_ntoa(value[4:8])
        record("connections", {**attempt(peer, "udp", address, port), "bytes": len(data),
                               "first_bytes": data[:32].hex()})


def take_the_gateway(gateway, own_address):
    """Answer for the gateway address and have the kernel hand every TCP
    connection and UDP datagram routed through it to CONNECTION_PORT here.
    Packets for the sink's own address (DNS queries, the answers to its own
    connections) are left alone. Idempotent: a restarted container may find
    its namespace as it left it."""
    def run(*args, check=True):
        return subprocess.run(args, check=check, capture_output=True)
    device = next(line.split()[1] for line in run("ip", "-o", "-4", "addr", "show").stdout.decode().splitlines()
                  if f" {own_address}/" in line)
    run("ip", "addr", "replace", f"{gateway}/32", "dev", device)
    if run("iptables", "-t", "mangle", "-N", "SINK", check=False).returncode != 0:
        run("iptables", "-t", "mangle", "-F", "SINK")
    run("iptables", "-t", "mangle", "-A", "SINK", "-d", own_address, "-j", "RETURN")
    for protocol in ("tcp", "udp"):
        run("iptables", "-t", "mangle", "-A", "SINK", "-p", protocol, "-j", "TPROXY", "--on-port",
            str(CONNECTION_PORT), "--on-ip", "0.0.0.0", "--tproxy-mark", "0x1/0x1")
    if run("iptables", "-t", "mangle", "-C", "PREROUTING", "-i", device, "-j", "SINK", check=False).returncode:
        run("iptables", "-t", "mangle", "-A", "PREROUTING", "-i", device, "-j", "SINK")
    if b"lookup 100" not in run("ip", "rule", "show").stdout:
        run("ip", "rule", "add", "fwmark", "1", "lookup", "100")
    run("ip", "route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table", "100")
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    tcp.bind(("0.0.0.0", CONNECTION_PORT))
    tcp.listen(256)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    udp.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
    udp.bind(("0.0.0.0", CONNECTION_PORT))
    return tcp, udp


def become_nobody():
    """Give up root and every capability, for good (no-new-privileges holds)."""
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    with open("/proc/self/status") as f:
        effective = next(line.split()[1] for line in f if line.startswith("CapEff:"))
    if int(effective, 16) != 0 or os.getuid() != NOBODY:
        sys.exit("the sink could not give up its privileges")


if __name__ == "__main__":
    # PID 1 in its container (no init, which would stay root): stop on SIGTERM.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if len(sys.argv) > 1:
        PORT = int(sys.argv[1])
    if AUDIT_DIR:
        load_counts()
        load_answers()
    caught = None
    if os.environ.get("SANDBOX_SINK_GATEWAY") and os.geteuid() == 0:
        caught = take_the_gateway(os.environ["SANDBOX_SINK_GATEWAY"], os.environ["SANDBOX_SINK_ADDRESS"])
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", PORT))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("0.0.0.0", PORT))
    tcp.listen(16)
    if os.geteuid() == 0:
        become_nobody()
    threading.Thread(target=serve_tcp, args=(tcp,), daemon=True).start()
    if caught:
        threading.Thread(target=serve_caught_tcp, args=(caught[0],), daemon=True).start()
        threading.Thread(target=serve_caught_udp, args=(caught[1],), daemon=True).start()
    print(json.dumps({"time": round(time.time(), 3), "event": "listening", "port": PORT, "answers": ANSWERS,
                      "connections": bool(caught), "uid": os.getuid()}), flush=True)
    serve_udp(udp)
