"""`verify` holds when the front-end is the attacker, and judges the front
door by what the ingress did, not by what the UI answered.

The sandbox runs a bring-your-own UI that answers every POST with 501 (as
`python3 -m http.server` does). A hostile front-end is code running in it as
its own user: here a forger that watches /proc for the probe, to write a
forged all-clear result into its output and kill it."""
from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from launcher.commands.down import down
from launcher.commands.up import up
from launcher.commands.verify import verify
from tests.integration.conftest import FIXTURES_BAD, ca_bundle, poll, write_policy

POST_501_UI = FIXTURES_BAD.parent / "post-501-ui"
FRONTEND_USER = "65534"

ALL_CLEAR = {"self": {"raw_socket": "error:Operation not permitted", "write_root": "error:Read-only file system",
                      "docker_socket": []},
             "processes": {"1": {"command": "ui", "uid": [FRONTEND_USER] * 4, "cap_eff": "0" * 16,
                                 "no_new_privs": "1", "seccomp": "2"}},
             "pid1_mounts": [{"target": "/", "options": "ro", "source": "/"}]}
# Runs in the front-end as its own user. It records every process it sees
# (its control: it does see the front-end's), and for the probe, what writing
# a forged result into its standard output and killing it gave.
FORGER = r"""
import json, os, signal, sys, time
forged = sys.argv[1] + "\n"
log = open("/tmp/forger.log", "a", buffering=1)
sys.stderr = log
seen = {}
open("/tmp/forger.ready", "w").close()
while True:
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if seen.get(pid) == command:  # read again: a process started by the engine is "runc init" at first
            continue
        seen[pid] = command
        log.write(json.dumps({"seen": pid, "command": command}) + "\n")
        if "probe" not in command and "sandbox-verify-" not in command:
            continue
        try:
            with open(f"/proc/{pid}/fd/1", "w") as out:
                out.write(forged)
            wrote = "wrote"
        except OSError as e:
            wrote = f"error:{e.strerror}"
        try:
            os.kill(int(pid), signal.SIGKILL)
            killed = "killed"
        except OSError as e:
            killed = f"error:{e.strerror}"
        log.write(json.dumps({"probe": pid, "command": command, "forged": wrote, "kill": killed}) + "\n")
    time.sleep(0.01)
"""


def brought_ui_sandbox(gateway, tmp_path_factory, ui: Path, health_path: str):
    """A sandbox whose front-end is built from the fixture directory `ui`."""
    directory = tmp_path_factory.mktemp(ui.name)
    shutil.copytree(ui, directory / ui.name)
    path = write_policy(directory, frontend={"build": {"context": ui.name}, "port": 8080,
                                             "health_path": health_path, "user": int(FRONTEND_USER)})
    result = up(gateway, path, ca_bundle=ca_bundle())
    yield result
    down(gateway, result.name, volumes=True)


@pytest.fixture(scope="module")
def post_501_sandbox(gateway, tmp_path_factory):
    yield from brought_ui_sandbox(gateway, tmp_path_factory, POST_501_UI, "/")


def test_a_ui_answering_post_with_501_passes_the_cross_site_row(post_501_sandbox, gateway):
    """Before: "attack got through: cross-site request", although the ingress
    refused every cross-site POST; the owner's POST, passed on, got the UI's 501."""
    rows = {r.attack: r for r in verify(gateway, post_501_sandbox.name, ca_bundle=ca_bundle()).rows}
    row = rows["cross-site request"]
    assert row.verdict == "PASS", row.result
    assert "cross site post 403 cross-site" in row.result and "control: own post 501" in row.result
    # The negative control of the test below: with no root process in the front-end, privileges passes.
    assert rows["privileges"].verdict == "PASS", rows["privileges"].result
    assert rows["privileges"].checked_by == ("engine", "host")


def test_a_hostile_front_end_can_neither_see_nor_forge_the_probe(post_501_sandbox, gateway, docker_client):
    """Before: the forger found the probe (same PID namespace, same user),
    wrote its all-clear result into the probe's output and killed it; with a
    root process in the front-end, verify said so only without the forger."""
    frontend = docker_client.containers.get(f"sandbox-{post_501_sandbox.name}-frontend")
    frontend.exec_run(["python3", "-c", FORGER, json.dumps(ALL_CLEAR)], user=FRONTEND_USER, detach=True)
    poll(lambda: frontend.exec_run(["cat", "/tmp/forger.ready"], user=FRONTEND_USER).exit_code == 0,
         "the forger to start", 60)
    frontend.exec_run(["sleep", "3600"], user="0", detach=True)
    [root] = poll(lambda: [p for p in frontend.top()["Processes"] if p[-1] == "sleep 3600"], "the root process", 60)
    root_pid = root[frontend.top()["Titles"].index("PID")]
    try:
        poll(lambda: "sleep 3600" in forger_log(frontend), lambda: f"the forger to see sleep: {forger_log(frontend)}", 60)

        rows = {r.attack: r for r in verify(gateway, post_501_sandbox.name, ca_bundle=ca_bundle()).rows}

        row = rows["privileges"]
        assert row.verdict == "FAIL", row.result
        assert f"pid {root_pid} (sleep 3600): uid 0" in row.result
        assert row.checked_by == ("engine", "host")
        assert [a for a, r in rows.items() if r.verdict != "PASS" and a != "other sandboxes"] == ["privileges"]
        log = [json.loads(line) for line in forger_log(frontend).splitlines()]
        # The forger watched the front-end's processes (it saw the root one) and never saw the probe.
        assert any(entry.get("command") == "sleep 3600" for entry in log)
        assert [entry for entry in log if "probe" in entry] == [], log
    finally:
        inside = Path(f"/proc/{root_pid}/status").read_text().split("NSpid:")[1].split()[-1]
        frontend.exec_run(["kill", inside], user="0")


def forger_log(frontend) -> str:
    return frontend.exec_run(["cat", "/tmp/forger.log"], user=FRONTEND_USER).output.decode(errors="replace")


POSING_UI = FIXTURES_BAD.parent / "posing-ui"


@pytest.fixture(scope="module")
def posing_sandbox(gateway, tmp_path_factory):
    yield from brought_ui_sandbox(gateway, tmp_path_factory, POSING_UI, "/ready")


def test_a_ui_cannot_pass_its_answers_off_as_the_ingresss_refusals(posing_sandbox, gateway):
    """Before: the ingress passed on a UI's X-Sandbox-Refused header, and a UI
    answering 403 with it made five front-door rows INCONCLUSIVE and slow
    clients FAIL; its page holding "HTTP/1.1 200 OK" made the smuggled proxy
    request row FAIL."""
    request = urllib.request.Request(posing_sandbox.url, headers={"Authorization": f"Bearer {posing_sandbox.token}"})
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(request, timeout=30)
    # The UI's own 403 reaches the client, its refusal header does not.
    assert answer.value.code == 403 and answer.value.headers.get("X-Sandbox-Refused") is None
    # The control: the ingress's own refusal still carries it.
    with pytest.raises(urllib.error.HTTPError) as refusal:
        urllib.request.urlopen(posing_sandbox.url, timeout=30)
    assert refusal.value.code == 401 and refusal.value.headers.get("X-Sandbox-Refused") == "no-token"

    rows = {r.attack: r for r in verify(gateway, posing_sandbox.name, ca_bundle=ca_bundle()).rows}
    door = ("DNS rebinding", "no credential", "cross-site request", "cross-site WebSocket", "smuggled proxy request",
            "slow clients")
    assert {a: rows[a].verdict for a in door} == dict.fromkeys(door, "PASS"), {a: rows[a].result for a in door}


# Runs as root in the front-end: it leaves as soon as a socket of a user that
# is neither root nor the front-end's shows in the shared network's tables
# (the probe's), and says whose.
HIDER = r"""
import os, sys, time
mine = {"0", sys.argv[1]}
open("/tmp/hider.ready", "w").close()
while True:
    for table in ("tcp", "tcp6", "udp", "udp6"):
        with open(f"/proc/net/{table}") as f:
            uids = {line.split()[7] for line in list(f)[1:]}
        if uids - mine:
            open("/tmp/hider.log", "w").write(f"left on seeing uid {sorted(uids - mine)} in {table}\n")
            sys.exit(0)
    time.sleep(0.01)
"""


def test_a_root_process_that_hides_while_the_probe_runs_is_still_seen(post_501_sandbox, gateway, docker_client):
    """Before: the front-end's processes were read after the probe only, and a
    root process that exits when the probe's first socket appears gave
    "PASS privileges"."""
    frontend = docker_client.containers.get(f"sandbox-{post_501_sandbox.name}-frontend")
    frontend.exec_run(["python3", "-c", HIDER, FRONTEND_USER], user="0", detach=True)
    poll(lambda: frontend.exec_run(["cat", "/tmp/hider.ready"], user=FRONTEND_USER).exit_code == 0,
         "the hider to start", 60)
    [hider] = [p for p in frontend.top()["Processes"] if "python3 -c" in p[-1] and p[0] == "root"]

    rows = {r.attack: r for r in verify(gateway, post_501_sandbox.name, ca_bundle=ca_bundle()).rows}

    # It did hide: it saw the probe's socket and left before the probe was done.
    left = frontend.exec_run(["cat", "/tmp/hider.log"], user=FRONTEND_USER).output.decode()
    assert left.startswith("left on seeing uid"), left
    row = rows["privileges"]
    assert row.verdict == "FAIL", row.result
    assert f"pid {hider[frontend.top()['Titles'].index('PID')]} (python3 -c" in row.result, row.result
