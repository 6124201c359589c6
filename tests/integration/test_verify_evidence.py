"""`verify` holds when the front-end is the attacker, and judges the front
door by what the ingress did, not by what the UI answered.

The sandbox runs a bring-your-own UI that answers every POST with 501 (as
`python3 -m http.server` does). A hostile front-end is code running in it as
its own user: here a forger that watches /proc for the probe, to write a
forged all-clear result into its output and kill it."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from launcher.commands.down import down
from launcher.commands.up import up
from launcher.commands.verify import verify
from tests.integration.conftest import FIXTURES_BAD, ca_bundle, write_policy

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


@pytest.fixture(scope="module")
def post_501_sandbox(gateway, tmp_path_factory):
    directory = tmp_path_factory.mktemp("post-501")
    shutil.copytree(POST_501_UI, directory / "post-501-ui")
    path = write_policy(directory, frontend={"build": {"context": "post-501-ui"}, "port": 8080,
                                             "health_path": "/", "user": int(FRONTEND_USER)})
    result = up(gateway, path, ca_bundle=ca_bundle())
    yield result
    down(gateway, result.name, volumes=True)


def poll(check, what, seconds: float = 60):
    """`what`: what is awaited, or a function saying what was seen instead."""
    deadline = time.monotonic() + seconds
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what if isinstance(what, str) else what()}"
        time.sleep(0.2)
    return found


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
         "the forger to start")
    frontend.exec_run(["sleep", "3600"], user="0", detach=True)
    [root] = poll(lambda: [p for p in frontend.top()["Processes"] if p[-1] == "sleep 3600"], "the root process")
    root_pid = root[frontend.top()["Titles"].index("PID")]
    try:
        poll(lambda: "sleep 3600" in forger_log(frontend), lambda: f"the forger to see sleep: {forger_log(frontend)}")

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
