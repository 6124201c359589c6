"""A DNS server that resolves nothing. Docker's embedded resolver answers the
sandbox's own names (backend, frontend, ...) itself and forwards every other
query here; each gets NXDOMAIN at once (no 10-second timeouts for a UI that
tries to phone home) and is logged as one JSON line for `sandbox audit`."""
import json
import socket
import struct
import sys
import threading
import time

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 53
QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV",
          65: "HTTPS", 255: "ANY"}
log_lock = threading.Lock()


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
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", PORT))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("0.0.0.0", PORT))
    tcp.listen(16)
    threading.Thread(target=serve_tcp, args=(tcp,), daemon=True).start()
    print(json.dumps({"time": round(time.time(), 3), "event": "listening", "port": PORT}), flush=True)
    serve_udp(udp)
