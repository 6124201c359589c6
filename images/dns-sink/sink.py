"""A DNS server that resolves nothing. Docker's embedded resolver answers the
sandbox's own names (backend, frontend, ...) itself and forwards every other
query here; each gets NXDOMAIN at once (no 10-second timeouts for a UI that
tries to phone home) and is logged as one JSON line for `sandbox audit`.

The lines also go to the sandbox's audit volume ($SANDBOX_AUDIT_DIR), which
outlives the container until `sandbox down --volumes`: lookups.jsonl (and
lookups.1.jsonl, the previous 8 MiB), and counts.json, the number so far."""
import json
import os
import socket
import struct
import sys
import threading
import time

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 53
QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV",
          65: "HTTPS", 255: "ANY"}
AUDIT_DIR = os.environ.get("SANDBOX_AUDIT_DIR")
AUDIT_FILE_BYTES = 8 * 1024 * 1024
log_lock = threading.Lock()
counts = {"lookups": 0}


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


def answer(query: bytes):
    if len(query) < 12:
        return None
    question = parse_question(query)
    flags = struct.unpack("!H", query[2:4])[0]
    opcode = (flags >> 11) & 0xF
    rcode = 3 if question and opcode == 0 else 5  # NXDOMAIN; REFUSED for anything odd
    header = query[:2] + struct.pack("!HHHHH", 0x8180 | (flags & 0x0100) | rcode,
                                     1 if question else 0, 0, 0, 0)
    return header + (query[12:question[2]] if question else b""), question


def log(client, question):
    name, qtype = question if question else ("(malformed)", "-")
    line = json.dumps({"time": round(time.time(), 3), "client": client, "name": name, "type": qtype})
    with log_lock:
        print(line, flush=True)
        keep(line)


def keep(line):
    """Append to the audit volume; a full or missing volume costs the record
    there, never the answer."""
    if not AUDIT_DIR:
        return
    path = os.path.join(AUDIT_DIR, "lookups.jsonl")
    try:
        if os.path.exists(path) and os.path.getsize(path) > AUDIT_FILE_BYTES:
            os.replace(path, os.path.join(AUDIT_DIR, "lookups.1.jsonl"))
        with open(path, "a") as f:
            f.write(line + "\n")
        counts["lookups"] += 1
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


def serve_udp(sock):
    while True:
        query, peer = sock.recvfrom(4096)
        reply = answer(query)
        if reply:
            sock.sendto(reply[0], peer)
            q = reply[1]
            log(peer[0], q[:2] if q else None)


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
            q = reply[1]
            log(peer[0], q[:2] if q else None)


def serve_tcp(sock):
    while True:
        conn, peer = sock.accept()
        threading.Thread(target=serve_tcp_client, args=(conn, peer), daemon=True).start()


if __name__ == "__main__":
    if AUDIT_DIR:
        load_counts()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", PORT))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("0.0.0.0", PORT))
    tcp.listen(16)
    threading.Thread(target=serve_tcp, args=(tcp,), daemon=True).start()
    print(json.dumps({"time": round(time.time(), 3), "event": "listening", "port": PORT}), flush=True)
    serve_udp(udp)
