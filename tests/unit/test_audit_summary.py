"""`sandbox audit` reads the sink's summary (launcher/commands/audit.py):
names and destinations with exact counts whatever the detail files kept,
the last second's detail records not summed up yet, and a summary it cannot
read passed over."""
import json

from launcher.commands import audit

PARTS = {"10.0.0.2": "frontend"}
SUMMARY = {"destinations": [
    {"client": "10.0.0.2", "kind": "lookup", "where": "first.example", "port": None, "count": 1, "first": 1.0,
     "last": 1.0, "address": "198.18.0.9", "said": {"type": "A"}},
    {"client": "10.0.0.2", "kind": "tcp", "where": "first.example", "port": 80, "count": 1, "first": 2.0, "last": 2.0,
     "address": "198.18.0.9", "said": {"http": {"method": "POST", "host": "first.example", "path": "/steal",
                                              "body_bytes": 6}}, "body": "secret"},
    {"client": "10.0.0.2", "kind": "lookup", "where": "flood.example", "port": None, "count": 60000, "first": 3.0,
     "last": 9.0, "said": {"type": "A"}}],
    "more": {"10.0.0.2": 12}, "dropped": {"10.0.0.2": 59000}}


class Sink:
    def __init__(self, summary: bytes, lookups: list[dict] = (), connections: list[dict] = ()):
        self.files = {"summary.json": summary, "lookups.jsonl": "".join(json.dumps(e) + "\n" for e in lookups).encode(),
                      "connections.jsonl": "".join(json.dumps(e) + "\n" for e in connections).encode()}
        self.containers = self  # the one door of the gateway the audit reads through

    def read_file(self, container: str, path: str) -> bytes | None:
        return self.files.get(path.rpartition("/")[2])


def test_names_and_destinations_come_from_the_summary_with_exact_counts():
    sink = Sink(json.dumps(SUMMARY).encode(), lookups=[{"time": 9.0, "client": "10.0.0.2", "name": "flood.example",
                                                         "type": "A"}])
    summary = audit.summary_kept(sink, "demo")
    _, names = audit.names_tried(sink, "demo", None, PARTS, summary)
    assert [(n["name"], n["count"], n["parts"]) for n in names] == [("flood.example", 60000, ["frontend"]),
                                                                    ("first.example", 1, ["frontend"])]
    [post] = audit.destinations(summary, PARTS)
    assert (post["name"], post["count"], post["said"], post["bodies"]) == (
        "first.example", 1, ["POST http://first.example/steal (6 B body)"], ["secret"])
    assert audit._by_part(summary["dropped"], PARTS) == {"frontend": 59000}
    # Since a time: what was seen since, counted from the detail records where the summary began earlier.
    _, since = audit.names_tried(sink, "demo", 5.0, PARTS, summary)
    assert [(n["name"], n["count"]) for n in since] == [("flood.example", 1)]


def test_the_last_seconds_detail_records_are_shown_before_the_sink_sums_them_up():
    late = {"time": 10.0, "client": "10.0.0.2", "protocol": "udp", "address": "203.0.113.1", "port": 9, "bytes": 4}
    sink = Sink(json.dumps(SUMMARY).encode(), lookups=[{"time": 10.0, "client": "10.0.0.2", "name": "late.example",
                                                         "type": "A"}], connections=[late])
    summary = audit.summary_kept(sink, "demo")
    _, names = audit.names_tried(sink, "demo", None, PARTS, summary)
    assert ("late.example", 1) in [(n["name"], n["count"]) for n in names]
    assert [(d["address"], d["count"], d["said"]) for d in audit.destinations(summary, PARTS, None, [late])
            if d["protocol"] == "udp"] == [("203.0.113.1", 1, ["4 B"])]


def test_a_summary_it_cannot_read_is_passed_over():
    for data in (b"not json", b'{"destinations": 1}', json.dumps({**SUMMARY, "destinations": [
            {"client": "10.0.0.2", "kind": "lookup", "where": "x", "port": None, "count": "many", "first": 1,
             "last": 1}]}).encode(), b"[" * 100_000, None):
        summary = audit.summary_kept(Sink(data), "demo")
        assert summary["destinations"] == []


def test_a_count_rebuilt_from_detail_records_is_shown_as_a_lower_bound(capsys):
    """Tried as an attacker would: what was left of a destination in the
    detail files (898 of 1,396 connections taken) was shown as "898x" under
    "the counts above are exact". A destination the summary does not hold
    is counted from detail records, which are rate-bound and rotate: "at
    least", and in --json a field that says so; the summary's own count
    (the control) stays exact."""
    from launcher import views
    past_its_table = [{"time": 10.0 + n, "client": "10.0.0.2", "protocol": "tcp", "address": "198.51.100.7",
                       "port": 80, "bytes": 4} for n in range(898)]
    sink = Sink(json.dumps(SUMMARY).encode(), connections=past_its_table)
    summary = audit.summary_kept(sink, "demo")
    by_address = {d["address"]: d for d in audit.destinations(summary, PARTS, None, past_its_table)}
    assert (by_address["198.51.100.7"]["count"], by_address["198.51.100.7"]["count_is_lower_bound"]) == (898, True)
    assert (by_address["198.18.0.9"]["count"], by_address["198.18.0.9"]["count_is_lower_bound"]) == (1, False)
    late = [{"time": 10.0, "client": "10.0.0.2", "name": "late.example", "type": "A"}]
    _, names = audit.names_tried(Sink(json.dumps(SUMMARY).encode(), lookups=late), "demo", None, PARTS, summary)
    assert {n["name"]: n["count_is_lower_bound"] for n in names} == {
        "late.example": True, "flood.example": False, "first.example": False}
    views.render_audit({"name": "demo", "builds": [], "names": names, "ingress_refused": [],
                       "ingress_refused_from_parts": [], "destinations": list(by_address.values()),
                       "not_itemised": {"frontend": 12}, "dropped": {"frontend": 59000},
                       "not_counted": audit.NOT_COUNTED})
    text = capsys.readouterr().out
    assert "at least 898x  tcp 198.51.100.7:80" in text and "at least 1x  late.example" in text
    assert "    1x  tcp first.example:80" in text and "60000x  flood.example" in text
    assert "exact" not in text.replace('exact ones, except those marked "at least"', "")
    assert "dropped by the kernel" in text
