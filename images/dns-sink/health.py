"""The sink container's healthcheck: one DNS query over TCP to the sink's own
127.0.0.1, for the one name (sink.py's HEALTH_NAME) that the sink answers
there without recording it; healthy when the answer comes (NXDOMAIN, with the
query's id). The standard library only: a Python start is most of its cost,
with the sink's quarter of a CPU (launcher/spec.py says how often)."""
import os
import random
import socket
import struct
import sys

HEALTH_NAME = "sink-health.sandbox.invalid"  # as in sink.py
# Docker runs a healthcheck as the container's user, which for the sink is
# root with the capabilities it needs to set up its namespace: this one gives
# them all up, as sink.py does, before it reads a byte.
if os.geteuid() == 0:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
port = int(sys.argv[1]) if len(sys.argv) > 1 else 53
qid = random.randrange(65536)
question = b"".join(bytes([len(label)]) + label.encode() for label in HEALTH_NAME.split(".")) + b"\0"
query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question + struct.pack("!HH", 1, 1)
with socket.socket() as s:
    s.settimeout(4)
    s.connect(("127.0.0.1", port))
    s.sendall(struct.pack("!H", len(query)) + query)
    reply = b""
    while len(reply) < 2 or len(reply) < 2 + struct.unpack("!H", reply[:2])[0]:
        chunk = s.recv(512)
        if not chunk:
            break
        reply += chunk
reply = reply[2:]
ok = len(reply) >= 12 and struct.unpack("!H", reply[:2])[0] == qid and reply[2] & 0x80 and reply[3] & 0xF == 3
sys.exit(0 if ok else 1)
