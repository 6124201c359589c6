"""What the sink reads from a connection it took: the TLS server name from a
real ClientHello (made by Python's ssl), and an HTTP request's method, Host,
path, headers and body size. Pure functions of images/dns-sink/sink.py."""
import importlib.util
import ipaddress
import json
import ssl
from pathlib import Path

SINK = Path(__file__).resolve().parents[2] / "images" / "dns-sink" / "sink.py"
spec = importlib.util.spec_from_file_location("sink", SINK)
sink = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sink)


def client_hello(name: str) -> bytes:
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def test_the_tls_server_name_is_read_from_the_client_hello():
    hello = client_hello("telemetry.ui.example")
    assert sink.server_name(hello) == "telemetry.ui.example"
    assert sink.describe(hello) == {"bytes": len(hello), "tls_server_name": "telemetry.ui.example"}
    assert sink.server_name(hello[:40]) is None and sink.server_name(b"GET / HTTP/1.1\r\n\r\n") is None


def test_an_http_request_is_read_as_a_user_would_want_it():
    request = (b"POST /v1/collect?id=7 HTTP/1.1\r\nHost: collector.ui.example\r\nContent-Type: application/json\r\n"
               b"Content-Length: 31\r\n\r\n{\"chat\": \"what the user typed\"}")
    said = sink.describe(request)
    assert said["http"]["method"] == "POST" and said["http"]["host"] == "collector.ui.example"
    assert said["http"]["path"] == "/v1/collect?id=7" and said["http"]["body_bytes"] == 31
    assert said["http"]["headers"]["content-type"] == "application/json"


def test_anything_else_is_counted_and_its_first_bytes_kept():
    assert sink.describe(b"\x00\x01binary") == {"bytes": 8, "first_bytes": "000162696e617279"}
    assert sink.describe(b"") == {"bytes": 0}
    assert sink.http_request(b"NOT A REQUEST\r\n\r\n") is None


def test_bodies_are_kept_only_in_connections_mode_and_only_up_to_the_cap(monkeypatch):
    body = b'{"chat": "what the user typed"}' + b"x" * (sink.BODY_KEPT_BYTES * 2)
    request = (b"POST /upload HTTP/1.1\r\nHost: collector.ui.example\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    assert "body" not in sink.describe(request)["http"]
    monkeypatch.setattr(sink, "ANSWERS", "connections")
    said = sink.describe(request)["http"]
    assert said["body"].startswith('{"chat": "what the user typed"}')
    assert said["body_kept_bytes"] == len(said["body"]) == sink.BODY_KEPT_BYTES
    assert said["body_bytes"] == len(body)
    binary = sink.describe(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n\xff\x00a")["http"]["body"]
    assert binary == "\\xff\x00a"


def test_each_name_gets_its_own_address_even_when_their_hashes_meet():
    answers = sink.Answers(ipaddress.IPv4Network("198.18.0.0/30"))  # room for two names only
    first, second = answers.address_for("a.example"), answers.address_for("b.example")
    assert first != second and {first, second} == {"198.18.0.1", "198.18.0.2"}
    assert answers.address_for("A.example.") == first
    assert (answers.name_of(first), answers.name_of(second)) == ("a.example", "b.example")


def test_a_restarted_sink_knows_the_names_it_gave_addresses(tmp_path, monkeypatch):
    (tmp_path / "lookups.jsonl").write_text(
        json.dumps({"name": "api.ui.example", "answer": "198.18.7.7", "type": "A"}) + "\n"
        + json.dumps({"name": "other.example", "type": "AAAA"}) + "\nnot json\n")
    monkeypatch.setattr(sink, "AUDIT_DIR", str(tmp_path))
    monkeypatch.setattr(sink, "answers", sink.Answers(sink.ANSWER_RANGE))
    sink.load_answers()
    assert sink.answers.name_of("198.18.7.7") == "api.ui.example"
    assert sink.answers.address_for("api.ui.example") == "198.18.7.7"


def test_the_records_cannot_fill_the_disk(tmp_path, monkeypatch):
    """Each kind of record turns over before it would pass its size, one
    old file kept: a part that tries endlessly costs at most twice the
    limit on the audit volume."""
    monkeypatch.setattr(sink, "AUDIT_DIR", str(tmp_path))
    monkeypatch.setattr(sink, "AUDIT_FILE_BYTES", 10_000)
    line = json.dumps({"protocol": "tcp", "http": {"body": "x" * 1000}})
    for _ in range(500):
        sink.keep("connections", line)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["connections.1.jsonl", "connections.jsonl"]
    assert all(p.stat().st_size <= 10_000 for p in tmp_path.glob("*.jsonl"))


def test_a_part_asking_for_names_without_end_costs_bounded_memory(monkeypatch):
    monkeypatch.setattr(sink, "MAX_NAMES", 100)
    answers = sink.Answers(ipaddress.IPv4Network("198.18.0.0/15"))
    given = [answers.address_for(f"n{i}.example") for i in range(1000)]
    assert len(answers.by_name) == len(answers.by_address) == 100
    assert answers.name_of(given[-1]) == "n999.example" and answers.name_of(given[0]) is None
    answers.remember("n999.example", "198.18.9.9")  # a name remembered again moves, leaving no stale address
    assert answers.name_of(given[-1]) is None and answers.name_of("198.18.9.9") == "n999.example"


# ---- hostile input: no bytes stop the sink, every attempt is recorded -------

import socket  # noqa: E402
import struct  # noqa: E402

import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """The sink's records from nothing, kept in a directory as on the audit volume."""
    monkeypatch.setattr(sink, "AUDIT_DIR", str(tmp_path))
    monkeypatch.setattr(sink, "summary", sink.Summary())
    monkeypatch.setattr(sink, "rate", sink.Rate())
    monkeypatch.setattr(sink, "counts", {"lookups": 0, "connections": 0})
    return tmp_path


def kept(directory, kind: str) -> list[dict]:
    return [json.loads(line) for file in (f"{kind}.1.jsonl", f"{kind}.jsonl") if (directory / file).exists()
            for line in (directory / file).read_text().splitlines()]


def dns_query(name: str, qtype: int = 1) -> bytes:
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"
    return struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + question + struct.pack("!HH", qtype, 1)


def caught(data: bytes) -> dict:
    """One connection through the sink's own handler, on loopback: what it recorded."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        conn, peer = server.accept()
        sink.caught_tcp(conn, peer)
        client.close()


def test_a_content_length_that_is_a_digit_but_no_number_is_recorded(fresh, monkeypatch):
    """Tried as an attacker would: `Content-Length: ²` (a digit to isdigit,
    not to int) left the connection unrecorded."""
    monkeypatch.setattr(sink, "ANSWERS", "connections")
    caught(b"POST /hidden HTTP/1.1\r\nHost: collector.ui.example\r\nContent-Length: \xb2\r\n\r\nsecret")
    caught(b"POST /plain HTTP/1.1\r\nHost: collector.ui.example\r\nContent-Length: 6\r\n\r\nsecret")  # control
    hidden, plain = kept(fresh, "connections")
    assert hidden["first_line"] == "POST /hidden HTTP/1.1" and "Content-Length" in hidden["malformed"]
    assert (plain["http"]["path"], plain["http"]["body"]) == ("/plain", "secret")


def test_a_dns_query_without_a_class_is_answered_and_recorded(fresh, monkeypatch):
    """Tried as an attacker would: a query without its class field raised
    struct.error in "connections" mode, and the sink restarted in a loop
    (tests/unit/test_dns_sink.py holds the running sink to it too)."""
    monkeypatch.setattr(sink, "ANSWERS", "connections")
    reply, said = sink.answer(dns_query("no-class.example")[:-2])
    assert reply[3] & 0xF == 5 and said["name"] == "(malformed)"  # REFUSED
    reply, said = sink.answer(dns_query("with-class.example"))  # control: a whole query is answered
    assert reply[3] & 0xF == 0 and said["answer"].startswith("198.1")


def test_a_names_address_is_kept_though_its_first_lookup_got_none(fresh, monkeypatch):
    """A part's resolver asks AAAA beside A, in either order: when AAAA came
    first, the summary kept the name with no address, and `audit` showed none."""
    monkeypatch.setattr(sink, "ANSWERS", "connections")
    for qtype in (28, 1):  # AAAA (no address given), then A
        _, said = sink.answer(dns_query("both.example", qtype))
        sink.record_lookup("10.1.2.3", said)
    [entry] = [d for d in sink.summary.destinations.values() if d["where"] == "both.example"]
    assert entry["count"] == 2 and entry["address"].startswith("198.1")


class Peer:
    """A socket that hands the sink given bytes, in given pieces, and takes its answers."""

    def __init__(self, pieces, peer=("10.1.2.3", 5353)):
        self.pieces, self.sent, self.peer = list(pieces), [], peer

    def recvfrom(self, size):
        return b"".join(self.pieces)[:size], self.peer

    def recv(self, size):
        return self.pieces.pop(0)[:size] if self.pieces else b""

    def sendto(self, data, peer):
        self.sent.append(data)

    def settimeout(self, seconds):
        pass

    def getsockname(self):
        return ("203.0.113.9", 443)

    def __enter__(self):
        return self

    def __exit__(self, *_):
        pass


def mutations(whole: bytes):
    """A well-formed message cut short anywhere, or with a byte changed anywhere."""
    return st.one_of(
        st.integers(0, len(whole)).map(lambda n: whole[:n]),
        st.tuples(st.integers(0, len(whole) - 1), st.integers(0, 255)).map(
            lambda c: whole[:c[0]] + bytes([c[1]]) + whole[c[0] + 1:]),
        st.binary(max_size=600).map(lambda tail: whole + tail))


QUERIES = st.one_of(st.binary(max_size=600), mutations(dns_query("telemetry.ui.example")),
                    mutations(dns_query("x.example", 65)))
HELLO = client_hello("telemetry.ui.example")
REQUEST = (b"POST /v1/collect HTTP/1.1\r\nHost: collector.ui.example\r\nContent-Length: 31\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
SAID = st.one_of(st.binary(max_size=2000), mutations(HELLO), mutations(REQUEST),
                 st.text(max_size=40).map(lambda v: b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: "
                                          + v.encode("utf-8", "surrogatepass") + b"\r\n\r\n"))


@settings(max_examples=500, deadline=None)
@given(QUERIES, st.sampled_from(["lookups", "connections"]))
def test_no_query_stops_the_sink_and_each_is_recorded(query, answers):
    sink.ANSWERS, before = answers, sink.counts["lookups"]
    try:
        peer = Peer([query])
        sink.serve_udp(peer)
    finally:
        sink.ANSWERS = "lookups"
    assert sink.counts["lookups"] == before + 1
    assert len(peer.sent) == (len(query) >= 12)  # every query with a header has its answer


@settings(max_examples=500, deadline=None)
@given(SAID, st.integers(1, 64), st.booleans())
def test_no_bytes_stop_the_reading_of_a_connection_and_each_is_recorded(data, piece, keep_body):
    assert isinstance(sink.server_name(data), (str, type(None)))
    listener = sink.Listener(keep_body)
    for start in range(0, len(data), piece):
        listener.feed(data[start:start + piece])
    said = listener.describe()
    assert said["bytes"] == len(data) and json.dumps(said)
    if keep_body == (sink.ANSWERS == "connections"):  # read in pieces or at once, it said the same kind of thing
        assert said.keys() == sink.describe(data).keys()
    before = sink.counts["connections"]
    sink.caught_tcp(Peer([data[i:i + piece] for i in range(0, len(data), piece)]), ("10.1.2.3", 40000))
    assert sink.counts["connections"] == before + 1


def test_a_handler_that_fails_costs_that_attempt_its_detail_never_the_serving(fresh, monkeypatch):
    """Whatever a reader raises, the connection is recorded, and the loop that
    accepts connections goes on: before, an exception ended the loop."""
    def broken(conn):
        raise RuntimeError("a reader's bug")
    monkeypatch.setattr(sink, "read_for_a_moment", broken)
    sink.caught_tcp(Peer([b"anything"]), ("10.1.2.3", 40000))
    [entry] = kept(fresh, "connections")
    assert (entry["address"], entry["port"], entry["malformed"]) == ("203.0.113.9", 443, "RuntimeError")
    served = []

    def serve_one(_):
        served.append(1)
        if len(served) == 3:
            raise SystemExit  # the test's way out of `forever`
        raise ValueError("any packet's trouble")
    with pytest.raises(SystemExit):
        sink.forever(serve_one, None)
    assert len(served) == 3


# ---- a flood cannot erase what came before it --------------------------------

class Clock:
    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now

    def time(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_a_client_past_its_rate_has_its_detail_dropped_and_counted(fresh, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(sink, "time", clock)
    for n in range(sink.RATE_BURST + 50):
        sink.record_lookup("10.1.2.3", {"name": f"n{n}.example", "type": "A"})
    sink.record_lookup("10.1.2.4", {"name": "other-part.example", "type": "A"})  # another client: its own rate
    written = kept(fresh, "lookups")
    assert len(written) == sink.RATE_BURST + 1 and written[-1]["client"] == "10.1.2.4"
    assert sink.summary.dropped == {"10.1.2.3": 50}
    assert sink.counts["lookups"] == sink.RATE_BURST + 51  # the count is exact, dropped or not
    clock.sleep(1)  # its bucket refills: what was held back is said, then the next is written
    sink.record_lookup("10.1.2.3", {"name": "later.example", "type": "A"})
    assert [e.get("dropped") or e["name"] for e in kept(fresh, "lookups")[-2:]] == [50, "later.example"]
    for n in range(100):  # dropped again, and this client goes quiet: the summary's writer says so
        sink.record_lookup("10.1.2.3", {"name": f"again{n}.example", "type": "A"})
    clock.sleep(1)
    sink.keep_summary()
    # Of the second's tokens, "dropped 50" and later.example took two.
    assert kept(fresh, "lookups")[-1]["dropped"] == 100 - (sink.RATE_PER_SECOND - 2)


def test_a_flood_cannot_push_out_the_first_lookup_or_post(fresh, monkeypatch):
    """Tried as an attacker would (the sink's side of it): a lookup and a
    POST, then thousands of oversized requests and long names; the detail
    files turned over and the lookup and the POST were gone."""
    monkeypatch.setattr(sink, "ANSWERS", "connections")
    monkeypatch.setattr(sink, "AUDIT_FILE_BYTES", 64 * 1024)
    monkeypatch.setattr(sink, "rate", sink.Rate(burst=10**9))  # only the summary stands in the flood's way
    client = ("10.1.2.3", 40000)
    sink.serve_udp(Peer([dns_query("telemetry.ui.example")]))
    post = b"POST /upload HTTP/1.1\r\nHost: collector.ui.example\r\nContent-Length: 8\r\n\r\nsecret!!"
    sink.caught_tcp(Peer([post]), client)
    for n in range(3000):
        sink.serve_udp(Peer([dns_query(f"{n:06}" + ".x" * 60)]))
        if n % 10 == 0:
            sink.caught_tcp(Peer([b"POST /flood HTTP/1.1\r\nHost: f\r\nX: " + b"y" * 8000 + b"\r\n\r\n"]), client)
    sink.keep_summary()
    names = {e["name"] for e in kept(fresh, "lookups")}
    assert "telemetry.ui.example" not in names  # the flood did turn the files over
    summary = json.loads((fresh / "summary.json").read_text())
    by_where = {(d["kind"], d["where"]): d for d in summary["destinations"]}
    lookup = by_where["lookup", "telemetry.ui.example"]
    assert lookup["count"] == 1 and lookup["address"].startswith("198.1")
    upload = by_where["tcp", "203.0.113.9"]  # Peer's destination
    assert upload["said"]["http"]["path"] == "/upload" and upload["body"] == "secret!!"
    assert upload["count"] == 301
    assert sum(p.stat().st_size for p in fresh.iterdir()) < 4 * 64 * 1024 + sink.SUMMARY_BYTES


def test_the_summary_is_bounded_whatever_a_part_sends(fresh, monkeypatch):
    """Every destination new, every string as long as kept and JSON-escaped
    at worst, every body as long as kept, from more clients than there are
    parts: summary.json stays under SUMMARY_BYTES, each part's table under
    its cap, and past it (or past MAX_PARTS_ITEMISED clients) the rest is
    counted."""
    import tracemalloc
    tracemalloc.start()
    worst = "\x01" * 5000  # six bytes a character in JSON
    clients = [f"{n}{worst}"[:64] for n in range(sink.MAX_PARTS_ITEMISED + 2)]
    for n in range(sink.MAX_DESTINATIONS_PER_PART + 100):
        for client in clients:
            sink.summary.add(client, "tcp", sink.short(f"{n}{worst}"), 65535, 1e12 + n,
                             {"http": {"method": sink.short(worst, 32), "host": sink.short(worst),
                                       "path": sink.short(worst), "body_bytes": 10**18}},
                             body=worst[:sink.BODY_KEPT_BYTES], address="255.255.255.255")
            sink.summary.note_dropped(client)
    for client in range(sink.MAX_CLIENTS):
        sink.summary.add(f"{client}{worst}"[:64], "udp", "x", 1, 1.0)
        sink.summary.note_dropped(f"{client}{worst}"[:64])
    assert len(sink.summary.destinations) == sink.MAX_PARTS_ITEMISED * sink.MAX_DESTINATIONS_PER_PART
    assert sink.summary.more[clients[0]] == 100 + 1
    assert sink.summary.more[clients[-1]] == sink.MAX_DESTINATIONS_PER_PART + 100 + 1
    assert len(sink.summary.to_json()) <= sink.SUMMARY_BYTES
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 32 * 1024 * 1024  # with the interpreter's own, under the sink's 64 MiB (launcher/spec.py)


def test_one_part_filling_its_table_neither_displaces_nor_crowds_out_anothers(fresh, monkeypatch):
    """Tried as an attacker would: the front-end filled the summary's one
    table for all parts with new names; the backend's lookup and POST made
    after that existed only in the detail files, which the front-end's junk
    POSTs turned over, leaving the audit "5x more attempts by backend". Now
    each part has its own table: the backend's attempts are itemised, with
    the body, and stay so through the flood; the front-end's own attempts
    past its cap are counted (the control: the cap holds)."""
    monkeypatch.setattr(sink, "ANSWERS", "connections")
    monkeypatch.setattr(sink, "AUDIT_FILE_BYTES", 64 * 1024)
    monkeypatch.setattr(sink, "rate", sink.Rate(burst=10**9))
    frontend, backend = ("10.1.2.3", 40000), ("10.1.2.4", 40000)
    for n in range(sink.MAX_DESTINATIONS_PER_PART + 1):
        sink.serve_udp(Peer([dns_query(f"fill{n}.example")], peer=frontend))
    sink.serve_udp(Peer([dns_query("exfil.backend.example")], peer=backend))
    post = b"POST /up HTTP/1.1\r\nHost: exfil.backend.example\r\nContent-Length: 16\r\n\r\nSECRET-of-the-be"
    sink.caught_tcp(Peer([post]), backend)
    junk = b"POST /junk HTTP/1.1\r\nHost: j\r\nContent-Length: 16384\r\n\r\n" + b"z" * 16384
    for n in range(300):  # turns the detail files over many times
        sink.caught_tcp(Peer([junk]), frontend)
    sink.keep_summary()
    assert not any(e.get("client") == "10.1.2.4" for e in kept(fresh, "connections"))  # the detail is gone
    summary = json.loads((fresh / "summary.json").read_text())
    by_key = {(d["client"], d["kind"], d["where"]): d for d in summary["destinations"]}
    assert by_key["10.1.2.4", "lookup", "exfil.backend.example"]["count"] == 1
    upload = by_key["10.1.2.4", "tcp", "203.0.113.9"]
    assert upload["body"] == "SECRET-of-the-be" and upload["count"] == 1
    assert summary["more"] == {"10.1.2.3": 1 + 300}  # its last name, then the junk: counted, not itemised
    assert sum(d["client"] == "10.1.2.3" for d in summary["destinations"]) == sink.MAX_DESTINATIONS_PER_PART


def test_a_restarted_sink_goes_on_from_its_summary(fresh):
    sink.summary.add("10.1.2.3", "lookup", "api.ui.example", None, 1.0, {"type": "A"}, address="198.18.7.8")
    sink.summary.note_dropped("10.1.2.3")
    sink.keep_summary()
    restarted = sink.Summary()
    restarted.load((fresh / "summary.json").read_bytes())
    restarted.add("10.1.2.3", "lookup", "api.ui.example", None, 2.0)
    [entry] = restarted.destinations.values()
    assert (entry["count"], entry["first"], entry["last"], restarted.dropped) == (2, 1.0, 2.0, {"10.1.2.3": 1})
    torn = sink.Summary()
    torn.load(b'{"destinations": [{"client": 1}]')
    assert torn.destinations == {}
