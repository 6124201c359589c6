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
which outlives the container until `sandbox down --volumes`: lookups.jsonl
and connections.jsonl, each record in detail (each with a .1 file, the
previous 8 MiB, and at most RATE_PER_SECOND records a second from one
client past a burst of RATE_BURST: past that "N more dropped"); summary.json,
one entry per client and destination with its exact count, first and last
sighting and what was said first, which no flood rotates away; and
counts.json. The sink is the volume's only writer, and every file it
writes has a fixed bound (docs/security.md adds them up).

No bytes stop it: DNS is read by dnspython, HTTP by h11, the TLS
ClientHello by a reader that returns None for anything it cannot follow;
each packet and connection is handled under a guard that records it as
malformed, whatever goes wrong, and serves the next."""
import hashlib
import ipaddress
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import h11

PORT = 53  # DNS; the tests give another as the first argument
AUDIT_DIR = os.environ.get("SANDBOX_AUDIT_DIR")
# Each detail file's bound (and its .1's). Only the integration test that
# floods the sink shrinks it, so that a flood turns the files over in seconds
# rather than many minutes at the sink's quarter of a CPU; the launcher never
# sets it, and it can only shrink.
AUDIT_FILE_BYTES = min(8 * 1024 * 1024, int(os.environ.get("SANDBOX_SINK_AUDIT_FILE_BYTES") or 8 * 1024 * 1024))
CONNECTION_PORT = 9999  # where the kernel delivers every caught connection and datagram (at or above 53:
# the port the sysctl lets it bind without a capability)
READ_SECONDS = 2  # how long a caught connection may talk before it is closed
READ_BYTES = 64 * 1024
BODY_KEPT_BYTES = 16 * 1024  # of a plain-HTTP body, in "connections" mode
FIRST_BYTES = 32  # of anything the sink cannot read, kept as hex
ANSWERS = os.environ.get("SANDBOX_SINK_ANSWERS", "lookups")
ANSWER_RANGE = ipaddress.IPv4Network(os.environ.get("SANDBOX_SINK_ANSWER_RANGE", "198.18.0.0/15"))
ANSWER_TTL = 60
# Names remembered with their address (each about 0.2 KiB); past this the
# oldest is forgotten: a later connection to its address is recorded all the
# same, without the name.
MAX_NAMES = 20_000
# Detail records a client may have written: a burst, then this many a second.
# Past it, its records are counted in the summary and not written in detail.
RATE_PER_SECOND, RATE_BURST = 20, 300
# The summary: each part (client address) has a table of its own, so that
# one part's new destinations can neither displace nor crowd out another's:
# this many destinations itemised per part (past that, the part's further
# new destinations are only counted), for at most as many clients as the
# sandbox has parts (launcher/spec.py's PARTS; an address past those has its
# attempts counted, not itemised); the characters kept of a name and of what
# was said; and the bytes of first bodies kept per part.
MAX_DESTINATIONS_PER_PART = 500
MAX_PARTS_ITEMISED = 4
MAX_CLIENTS = 256  # the internal network is a /24: each address one client
TEXT_KEPT = 256
SUMMARY_BODIES_BYTES = 512 * 1024
# What summary.json can reach: each destination's entry, its strings JSON-escaped
# at worst (6 bytes a character), stays under 6 KiB; then each part's bodies,
# and two counts for each client (tests/unit/test_sink_connections.py fills it).
SUMMARY_BYTES = (MAX_PARTS_ITEMISED * (MAX_DESTINATIONS_PER_PART * 6 * 1024 + SUMMARY_BODIES_BYTES)
                 + MAX_CLIENTS * 1024)
SUMMARY_SECONDS = 1  # how often the summary and counts are written, when they changed
NOBODY = 65534
IP_TRANSPARENT, IP_RECVORIGDSTADDR = 19, 20  # linux/in.h
# Threads that read connections at once: the container has 32 pids (launcher/
# spec.py), and a part that opens more connections than that must not stop
# the sink recording. Past these, a connection is recorded unread and closed.
READERS = threading.BoundedSemaphore(16)
DNS_TCP_READERS = threading.BoundedSemaphore(4)  # past these a TCP query is dropped; UDP still answers
# The container's own healthcheck (images/dns-sink/health.py) asks this name,
# over TCP from 127.0.0.1 to 127.0.0.1: answered, and not recorded, since it
# is no part's attempt to reach outside and the audit is evidence. Only a
# process inside the sink's own network namespace can be both ends of such a
# connection (the kernel drops a loopback source or destination arriving on
# any other interface, and a spoofed one could not complete TCP's handshake);
# the parts cannot run anything there. Asked any other way (over UDP, or
# from any other address), the name is recorded like every other.
HEALTH_NAME = "sink-health.sandbox.invalid"
LOOPBACK = "127.0.0.1"
log_lock = threading.Lock()
counts = {"lookups": 0, "connections": 0}
stopping = threading.Event()


# ---- DNS -----------------------------------------------------------------

def answer(query: bytes):
    """The reply to a query (None when it is too short to have an id), and
    what to record of it: the first question's name and type, and the
    address given, if any; for a query dnspython cannot read, that it was
    malformed. REFUSED for anything odd, NXDOMAIN for every name, or in
    "connections" mode an address of the sink's own for an A query."""
    try:
        message = dns.message.from_wire(query)
    except Exception as error:  # every way a query can be malformed, and whatever dnspython raises for it
        return refused(query), malformed(query, error)
    if len(message.question) != 1 or message.opcode() != dns.opcode.QUERY:
        return refused(query), {"name": "(not one question)", "type": "-"}
    question = message.question[0]
    name = question.name.to_text(omit_final_dot=True)
    said = {"name": name, "type": dns.rdatatype.to_text(question.rdtype)}
    response = dns.message.make_response(message, recursion_available=True)
    response.set_rcode(dns.rcode.NXDOMAIN)
    if ANSWERS == "connections" and name != ".":
        response.set_rcode(dns.rcode.NOERROR)  # the name exists; for anything but an A query of class IN, with
        # no record (NODATA)
        if question.rdtype == dns.rdatatype.A and question.rdclass == dns.rdataclass.IN:
            said["answer"] = answers.address_for(name)
            response.answer.append(dns.rrset.from_text(question.name, ANSWER_TTL, "IN", "A", said["answer"]))
    return response.to_wire(), said


def refused(query: bytes):
    """REFUSED, with the query's id and no question, for a query that has
    at least a header; None for one that has not."""
    if len(query) < 12:
        return None
    flags = struct.unpack("!H", query[2:4])[0]
    return query[:2] + struct.pack("!HHHHH", 0x8180 | (flags & 0x0100) | dns.rcode.REFUSED, 0, 0, 0, 0)


def malformed(data: bytes, error: BaseException) -> dict:
    """What is kept of something the sink could not read: bounded."""
    return {"name": "(malformed)", "type": "-", "bytes": len(data), "first_bytes": bytes(data[:FIRST_BYTES]).hex(),
            "error": type(error).__name__[:64]}


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


# ---- what is kept ----------------------------------------------------------

class Rate:
    """A token bucket per client: RATE_BURST records at once, then
    RATE_PER_SECOND a second. What it holds back is counted, per client and
    kind, until a record of "N more dropped" can be written."""

    def __init__(self, per_second=RATE_PER_SECOND, burst=RATE_BURST):
        self.per_second, self.burst = per_second, burst
        self.buckets = {}  # client -> (tokens, when)
        self.held = {}  # (client, kind) -> records not written since the last "dropped" record

    def allow(self, client, now):
        tokens, when = self.buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - when) * self.per_second)
        allowed = tokens >= 1
        self.buckets[client] = (tokens - 1 if allowed else tokens, now)
        return allowed

    def hold(self, client, kind):
        self.held[client, kind] = self.held.get((client, kind), 0) + 1

    def due(self, client, kind, now):
        """How many records of this client and kind were held back, now that
        its bucket lets one through (0 if none were, or it does not)."""
        if not self.held.get((client, kind)) or not self.allow(client, now):
            return 0
        return self.held.pop((client, kind))


class Summary:
    """One entry per client and destination (a name looked up; a protocol,
    a name or address, and a port), with its exact count, first and last
    sighting, what was said the first time and the first body kept. Each
    client fills a table of its own: past MAX_DESTINATIONS_PER_PART, its
    new destinations are only counted, and another's table is untouched."""

    def __init__(self):
        self.destinations = {}  # (client, kind, where, port) -> entry
        self.itemised = {}  # client -> destinations in its table
        self.body_bytes = {}  # client -> bytes of first bodies kept in its table
        self.more = {}  # client -> attempts at destinations not itemised
        self.dropped = {}  # client -> detail records not written (the rate bound)
        self.changed = False

    def has_room(self, client):
        if client in self.itemised:
            return self.itemised[client] < MAX_DESTINATIONS_PER_PART
        return len(self.itemised) < MAX_PARTS_ITEMISED

    def itemise(self, key, entry):
        client = key[0]
        self.destinations[key] = entry
        self.itemised[client] = self.itemised.get(client, 0) + 1
        if "body" in entry:
            self.body_bytes[client] = self.body_bytes.get(client, 0) + len(json.dumps(entry["body"]))

    def add(self, client, kind, where, port, when, first=None, body=None, address=None):
        self.changed = True
        key = (client, kind, where, port)
        entry = self.destinations.get(key)
        if entry is None:
            if not self.has_room(client):
                self.more[client] = self.more.get(client, 0) + 1
                return
            entry = {"client": client, "kind": kind, "where": where, "port": port, "count": 0, "first": when,
                     "last": when, "said": first or {}}
            self.itemise(key, entry)
        # A name's first lookup may have been one the sink gave no address
        # for (AAAA, asked beside A): the address comes with a later one.
        if address and "address" not in entry:
            entry["address"] = address
        entry["count"] += 1
        entry["last"] = when
        if body and "body" not in entry:
            size = len(json.dumps(body))
            if self.body_bytes.get(client, 0) + size <= SUMMARY_BODIES_BYTES:
                entry["body"] = body
                self.body_bytes[client] = self.body_bytes.get(client, 0) + size

    def note_dropped(self, client):
        self.changed = True
        self.dropped[client] = self.dropped.get(client, 0) + 1

    def to_json(self):
        return json.dumps({"destinations": list(self.destinations.values()), "more": self.more,
                           "dropped": self.dropped})

    def load(self, data):
        """A summary this sink wrote before a restart; one it cannot read (a
        torn disk) is started anew rather than trusted."""
        try:
            kept = json.loads(data)
            for entry in kept["destinations"]:
                key = (entry["client"], entry["kind"], entry["where"], entry["port"])
                if key not in self.destinations and self.has_room(entry["client"]):
                    self.itemise(key, entry)
            self.more = {str(k): int(v) for k, v in kept["more"].items()}
            self.dropped = {str(k): int(v) for k, v in kept["dropped"].items()}
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
            self.__init__()


rate = Rate()
summary = Summary()


def short(text, limit=TEXT_KEPT):
    return text if text is None or len(text) <= limit else text[:limit]


def client_of(peer):
    """The client's address; past MAX_CLIENTS of them (which the sandbox's
    /24 cannot have), one name for the rest, so the per-client maps stay
    bounded."""
    client = str(peer[0])[:64]
    if client not in rate.buckets and len(rate.buckets) >= MAX_CLIENTS:
        return "(other)"
    return client


def record_lookup(client, said):
    entry = {"time": round(time.time(), 3), "client": client, **said}
    where = short(said["name"])
    first = {"type": said["type"], **({"first_bytes": said["first_bytes"]} if "first_bytes" in said else {})}
    record("lookups", entry, (client, "lookup", where, None), first, address=said.get("answer"))


def record_connection(entry):
    where = short(entry.get("name") or entry.get("address") or "(unknown)")
    first = said_first(entry)
    body = (entry.get("http") or {}).get("body")
    record("connections", entry, (entry["client"], entry["protocol"], where, entry.get("port")), first, body,
           entry.get("address"))


def said_first(entry):
    """What a connection said, in the summary: bounded."""
    if entry.get("tls_server_name") is not None:
        return {"tls_server_name": short(entry["tls_server_name"])}
    if entry.get("http"):
        http = entry["http"]
        return {"http": {"method": short(http["method"], 32), "host": short(http.get("host")),
                         "path": short(http["path"]), "body_bytes": http["body_bytes"]}}
    if entry.get("malformed"):
        return {"malformed": short(entry["malformed"]), "first_line": short(entry.get("first_line"))}
    if entry.get("unread"):
        return {"unread": entry["unread"]}
    return {"bytes": entry.get("bytes", 0)}


def record(kind, entry, key, first, body=None, address=None):
    """Count the attempt and note it in the summary, always; write it in
    detail if its client's rate allows, after a record of what was held back."""
    client = key[0]
    now = time.monotonic()
    with log_lock:
        counts[kind] = counts.get(kind, 0) + 1
        summary.add(*key, entry["time"], first, body, address)
        held = rate.due(client, kind, now)
        if held:
            write(kind, {"time": entry["time"], "client": client, "dropped": held})
        if rate.allow(client, now):
            write(kind, entry)
        else:
            rate.hold(client, kind)
            summary.note_dropped(client)


def write(kind, entry):
    line = json.dumps(entry)
    print(line, flush=True)
    keep(kind, line)


def keep(kind, line):
    """Append to the audit volume, turning the file over before it would
    pass AUDIT_FILE_BYTES; a full or missing volume costs the record there,
    never the answer."""
    if not AUDIT_DIR:
        return
    path = os.path.join(AUDIT_DIR, f"{kind}.jsonl")
    data = (line + "\n").encode()
    try:
        if os.path.exists(path) and os.path.getsize(path) + len(data) > AUDIT_FILE_BYTES:
            os.replace(path, os.path.join(AUDIT_DIR, f"{kind}.1.jsonl"))
        with open(path, "ab") as f:
            f.write(data)
    except OSError:
        pass


def write_atomically(name, data):
    temporary = os.path.join(AUDIT_DIR, f"{name}.tmp")
    with open(temporary, "w") as f:
        f.write(data)
    os.replace(temporary, os.path.join(AUDIT_DIR, name))


def keep_summary():
    """Write the summary and counts if they changed, and the "dropped"
    records of clients whose bucket has refilled since."""
    with log_lock:
        now = time.monotonic()
        for client, kind in list(rate.held):
            held = rate.due(client, kind, now)
            if held:
                write(kind, {"time": round(time.time(), 3), "client": client, "dropped": held})
        if not summary.changed:
            return
        summary.changed = False
        kept, counted = summary.to_json(), json.dumps(counts)
    if AUDIT_DIR:
        try:
            write_atomically("counts.json", counted)  # first: what the summary shows, `status` has counted
            write_atomically("summary.json", kept)
        except OSError:
            pass


def keep_summary_until_stopped():
    """The main thread's work: the summary once a second, and once more on
    SIGTERM, before the sink exits."""
    while not stopping.wait(SUMMARY_SECONDS):
        try:
            keep_summary()
        except Exception:  # noqa: BLE001 - the next second tries again
            pass
    keep_summary()
    os._exit(0)


def load_counts():
    try:
        with open(os.path.join(AUDIT_DIR, "counts.json")) as f:
            counts.update({k: int(v) for k, v in json.load(f).items() if k in counts})
    except (OSError, ValueError, TypeError, AttributeError, RecursionError):
        pass


def load_summary():
    try:
        with open(os.path.join(AUDIT_DIR, "summary.json"), "rb") as f:
            data = f.read(SUMMARY_BYTES + 1)
    except OSError:
        return
    summary.load(data)
    for entry in summary.destinations.values():
        if entry.get("kind") == "lookup" and isinstance(entry.get("address"), str):
            answers.remember(str(entry["where"]).lower().rstrip("."), entry["address"])


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


# ---- serving ---------------------------------------------------------------

def forever(serve_one, *args):
    """Serve one packet or connection after another, whatever happens to
    any one of them. Only the socket's own errors (no file descriptors left)
    get a moment's pause, so that they do not spin."""
    while True:
        try:
            serve_one(*args)
        except OSError:
            time.sleep(0.01)
        except Exception:  # noqa: BLE001 - serving goes on; each handler has recorded what it could
            pass


def serve_udp(sock):
    query, peer = sock.recvfrom(4096)
    try:
        reply, said = answer(query)
    except Exception as error:  # noqa: BLE001 - recorded as malformed, and the next query served
        reply, said = refused(query), malformed(query, error)
    # Recorded before it is answered: whatever a part has been told, the audit holds.
    record_lookup(client_of(peer), said)
    if reply:
        try:
            sock.sendto(reply, peer)
        except OSError:
            pass


def own_health_check(query: bytes, peer, local):
    """The reply to the container's own healthcheck (NXDOMAIN, with no side
    effect: nothing recorded, no address given), or None for any other query."""
    if str(peer[0]) != LOOPBACK or str(local[0]) != LOOPBACK:
        return None
    try:
        message = dns.message.from_wire(query)
    except Exception:  # noqa: BLE001 - not the healthcheck's query: served, and recorded, as any other
        return None
    if (len(message.question) != 1 or message.opcode() != dns.opcode.QUERY
            or message.question[0].name.to_text(omit_final_dot=True).lower() != HEALTH_NAME):
        return None
    response = dns.message.make_response(message, recursion_available=True)
    response.set_rcode(dns.rcode.NXDOMAIN)
    return response.to_wire()


def serve_tcp_client(conn, peer):
    with conn:
        conn.settimeout(5)
        query = b""
        try:
            size = struct.unpack("!H", conn.recv(2))[0]
            while len(query) < size:
                chunk = conn.recv(size - len(query))
                if not chunk:
                    break
                query += chunk
        except (OSError, struct.error):
            pass
        if not query:
            return  # nothing asked: a connection opened and closed
        try:
            local = conn.getsockname()
        except OSError:
            local = (None,)
        health = own_health_check(query, peer, local)
        if health is not None:
            try:
                conn.sendall(struct.pack("!H", len(health)) + health)
            except OSError:
                pass
            return
        try:
            reply, said = answer(query)
        except Exception as error:  # noqa: BLE001 - recorded as malformed
            reply, said = refused(query), malformed(query, error)
        record_lookup(client_of(peer), said)  # before the answer, as over UDP
        if reply:
            try:
                conn.sendall(struct.pack("!H", len(reply)) + reply)
            except OSError:
                pass


def serve_tcp(sock):
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
        except Exception:  # noqa: BLE001 - the thread ends; the sink serves on
            pass
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
    """The server name (SNI) of a TLS ClientHello, or None: for any bytes,
    every length is checked against what is there before it is followed."""
    if len(data) < 43 or data[0] != 0x16 or data[5] != 0x01:
        return None
    i = 43  # record header 5, handshake header 4, version 2, random 32
    for width in (1, 2, 1):  # session id, cipher suites, compression methods: a length, then that many bytes
        if i + width > len(data):
            return None
        i += width + int.from_bytes(data[i:i + width], "big")
    if i + 2 > len(data):
        return None
    end = min(len(data), i + 2 + int.from_bytes(data[i:i + 2], "big"))
    i += 2
    while i + 4 <= end:
        kind, length = int.from_bytes(data[i:i + 2], "big"), int.from_bytes(data[i + 2:i + 4], "big")
        if kind == 0:  # server_name: list length 2, type 1, name length 2, name
            if i + 9 > len(data):
                return None
            size = min(int.from_bytes(data[i + 7:i + 9], "big"), 255)
            return bytes(data[i + 9:i + 9 + size]).decode("ascii", "replace")
        i += 4 + length
    return None


def tls_record_complete(data):
    """Whether the first TLS record (the ClientHello) has all arrived."""
    return len(data) >= 5 and len(data) >= 5 + int.from_bytes(data[3:5], "big")


REQUEST_LINE = re.compile(rb"[!-~]+ [!-~]+ HTTP/")


class Listener:
    """What a caught connection says, fed as it arrives: a TLS ClientHello,
    or an HTTP/1.x request read by h11 (its body, in "connections" mode, up
    to BODY_KEPT_BYTES), or anything else."""

    def __init__(self, keep_body=False):
        self.data = bytearray()
        self.keep_body = keep_body
        self.http = h11.Connection(h11.SERVER, max_incomplete_event_size=READ_BYTES)
        self.request, self.body, self.body_seen = None, bytearray(), 0
        self.complete, self.error = False, None

    def feed(self, chunk):
        """Take what arrived; True once it has said what it wanted (or
        cannot be read further)."""
        self.data += chunk
        if self.data[:1] == b"\x16":
            return tls_record_complete(self.data)
        if self.complete or self.error:
            return True
        try:
            self.http.receive_data(bytes(chunk))
            while not self.complete:
                event = self.http.next_event()
                if event is h11.NEED_DATA:
                    return False
                if isinstance(event, h11.Request):
                    self.request = event
                elif isinstance(event, h11.Data):
                    self.body_seen += len(event.data)
                    if self.keep_body:
                        self.body += event.data[:BODY_KEPT_BYTES - len(self.body)]
                else:  # the end of the request, or anything after it
                    self.complete = True
        except Exception as error:  # noqa: BLE001 - h11's RemoteProtocolError, and whatever else bad bytes raise
            self.error = f"{type(error).__name__}: {error}"[:200]
        return True

    def describe(self):
        data = bytes(self.data)
        out = {"bytes": len(data)}
        name = server_name(data)
        if name is not None:
            out["tls_server_name"] = name
        elif self.request is not None:
            out["http"] = self.described_request()
            if self.error:
                out["malformed"] = self.error
        elif REQUEST_LINE.match(data):
            out["malformed"] = self.error or "an HTTP request that did not end"
            out["first_line"] = data.partition(b"\r\n")[0][:256].decode("latin-1")
        elif data:
            out["first_bytes"] = data[:FIRST_BYTES].hex()
        return out

    def described_request(self):
        request = self.request
        headers = {}
        for name, value in request.headers:
            if len(headers) < 64:
                headers.setdefault(name.decode("latin-1")[:64], value[:256].decode("latin-1"))
        declared = headers.get("content-length", "")
        out = {"method": request.method.decode("latin-1")[:32], "host": headers.get("host"),
               "path": request.target[:2048].decode("latin-1"), "headers": headers,
               "body_bytes": int(declared) if declared.isdigit() and len(declared) <= 18 else self.body_seen}
        if self.body:
            out["body"] = bytes(self.body).decode("utf-8", "backslashreplace")
            out["body_kept_bytes"] = len(self.body)
        return out


def describe(data):
    """What a caught connection said before it was closed."""
    listener = Listener(keep_body=ANSWERS == "connections")
    if data:
        listener.feed(data)
    return listener.describe()


def http_request(data, keep_body=False):
    """Method, Host, path, headers and body size of a plain HTTP request (and
    the start of its body, if asked), or None."""
    listener = Listener(keep_body)
    listener.feed(data)
    return listener.described_request() if listener.request is not None and not listener.error else None


def read_for_a_moment(conn):
    """Read a caught connection until it has said what it wanted, or for
    READ_SECONDS, or READ_BYTES; what it said."""
    listener = Listener(keep_body=ANSWERS == "connections")
    deadline = time.monotonic() + READ_SECONDS
    while len(listener.data) < READ_BYTES and time.monotonic() < deadline:
        conn.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = conn.recv(READ_BYTES - len(listener.data))
        except OSError:
            break
        if not chunk or listener.feed(chunk):
            break
    return listener.describe()


def attempt(peer, protocol, address, port):
    """The record of one connection or datagram: who, where to, and the name
    the sink gave that address for, if it did."""
    entry = {"time": round(time.time(), 3), "client": client_of(peer), "protocol": protocol, "address": address,
             "port": port}
    name = answers.name_of(address)
    if name:
        entry["name"] = name
    return entry


def caught_tcp(conn, peer, read=True):
    with conn:
        try:
            address, port = conn.getsockname()[:2]  # where it meant to go
        except OSError:
            address, port = None, None
        entry = attempt(peer, "tcp", address, port)
        try:
            if read:
                entry.update(read_for_a_moment(conn))
            else:
                entry["unread"] = "the sink was busy"
        except Exception as error:  # noqa: BLE001 - recorded, with what it was, and the next one read
            entry["malformed"] = f"{type(error).__name__}"
        record_connection(entry)


def serve_caught_tcp(sock):
    conn, peer = sock.accept()
    if not in_a_thread(READERS, caught_tcp, conn, peer):
        caught_tcp(conn, peer, read=False)  # recorded all the same, where it was going


def serve_caught_udp(sock):
    data, ancillary, _, peer = sock.recvmsg(65535, 1024)
    address, port = None, None
    try:
        for level, kind, value in ancillary:
            if level == socket.SOL_IP and kind == IP_RECVORIGDSTADDR and len(value) >= 8:
                port = struct.unpack("!H", value[2:4])[0]
                address = socket.inet_ntoa(value[4:8])
    finally:
        record_connection({**attempt(peer, "udp", address, port), "bytes": len(data),
                           "first_bytes": data[:FIRST_BYTES].hex()})


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
    # PID 1 in its container (no init, which would stay root): on SIGTERM the
    # main thread writes the summary a last time and exits.
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    if len(sys.argv) > 1:
        PORT = int(sys.argv[1])
    if AUDIT_DIR:
        load_counts()
        load_answers()
        load_summary()
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
    serving = [(serve_udp, udp), (serve_tcp, tcp)]
    if caught:
        serving += [(serve_caught_tcp, caught[0]), (serve_caught_udp, caught[1])]
    for serve_one, sock in serving:
        threading.Thread(target=forever, args=(serve_one, sock), daemon=True).start()
    print(json.dumps({"time": round(time.time(), 3), "event": "listening", "port": PORT, "answers": ANSWERS,
                      "connections": bool(caught), "uid": os.getuid()}), flush=True)
    keep_summary_until_stopped()
