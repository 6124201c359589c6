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
    binary = sink.describe(b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n\xff\x00a")["http"]["body"]
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
    """Each kind of record rotates past its size, one old file kept: a part
    that tries endlessly costs at most twice the limit on the audit volume."""
    monkeypatch.setattr(sink, "AUDIT_DIR", str(tmp_path))
    monkeypatch.setattr(sink, "AUDIT_FILE_BYTES", 10_000)
    line = json.dumps({"protocol": "tcp", "http": {"body": "x" * 1000}})
    for _ in range(500):
        sink.keep("connections", line)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["connections.1.jsonl", "connections.jsonl", "counts.json"]
    assert sum(p.stat().st_size for p in tmp_path.glob("*.jsonl")) < 2 * (10_000 + len(line) + 1)
    assert json.loads((tmp_path / "counts.json").read_text())["connections"] >= 500


def test_a_part_asking_for_names_without_end_costs_bounded_memory(monkeypatch):
    monkeypatch.setattr(sink, "MAX_NAMES", 100)
    answers = sink.Answers(ipaddress.IPv4Network("198.18.0.0/15"))
    given = [answers.address_for(f"n{i}.example") for i in range(1000)]
    assert len(answers.by_name) == len(answers.by_address) == 100
    assert answers.name_of(given[-1]) == "n999.example" and answers.name_of(given[0]) is None
    answers.remember("n999.example", "198.18.9.9")  # a name remembered again moves, leaving no stale address
    assert answers.name_of(given[-1]) is None and answers.name_of("198.18.9.9") == "n999.example"
