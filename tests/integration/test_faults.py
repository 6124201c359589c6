"""Faults a sandbox meets on real machines. Each test asserts that nothing is
lost (the chat history survives) and that `status` tells the truth."""
from __future__ import annotations

import socket
import threading
import time

import pytest
import yaml

from launcher.commands.down import down
from launcher.commands.prepare import prepare
from launcher.commands.status import status
from launcher.commands.up import up
from launcher.errors import NotReady, PolicyError
from tests.integration.conftest import ca_bundle, labelled, ui, ui_json, write_policy


def remember(result, text: str) -> None:
    ui_json(result, "api/chat", {"messages": [{"role": "user", "content": text}], "max_tokens": 4})


def history(result) -> list[str]:
    return [m["content"] for m in ui_json(result, "api/history", timeout=30)["messages"]]


def test_a_port_taken_between_plan_and_up_is_refused_and_nothing_starts(gateway, docker_client, tmp_path):
    path = write_policy(tmp_path)
    policy = yaml.safe_load(path.read_text())
    prepare(gateway, path, ca_bundle())  # the plan was made while the port was free
    with socket.socket() as other_program:
        other_program.bind(("127.0.0.1", policy["ingress"]["port"]))
        other_program.listen()
        with pytest.raises(PolicyError) as refused:
            up(gateway, path, ca_bundle=ca_bundle(), timeout=30)
    assert f"port {policy['ingress']['port']} on 127.0.0.1 is in use" in str(refused.value)
    assert labelled(docker_client, policy["name"]) == {"containers": [], "networks": [], "volumes": []}


def test_down_while_up_is_waiting_ends_the_wait_with_the_reason(gateway, docker_client, tmp_path):
    path = write_policy(tmp_path)
    name = yaml.safe_load(path.read_text())["name"]
    outcome = {}

    def run_up():
        try:
            outcome["result"] = up(gateway, path, ca_bundle=ca_bundle(), say=said.append, timeout=120)
        except Exception as e:  # noqa: BLE001 - the test looks at what it was
            outcome["error"] = e

    said: list[str] = []
    thread = threading.Thread(target=run_up)
    thread.start()
    deadline = time.monotonic() + 120
    while not any(m.startswith("waiting for the backend") for m in said) and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        down(gateway, name)  # not held up by the waiting `up`
        thread.join(60)
        assert not thread.is_alive()
        if "error" in outcome:  # usually: the wait notices the parts are gone
            assert isinstance(outcome["error"], NotReady) and "is gone" in str(outcome["error"])
        assert labelled(docker_client, name) == {"containers": [], "networks": [],
                                                 "volumes": [f"sandbox-{name}-data"]}
        [report] = status(gateway, name)  # the truth: its data is kept, nothing runs
        assert not report["healthy"] and {p["state"] for p in report["parts"]} == {"missing"}
    finally:
        down(gateway, name, volumes=True)


def test_a_model_deleted_while_the_sandbox_runs(gateway, own_model):
    path, model, _ = own_model
    result = up(gateway, path, ca_bundle=ca_bundle())
    try:
        remember(result, "keep this")
        model.unlink()
        [report] = status(gateway, result.name)
        assert not report["healthy"] and report["problems"] == [f"model file missing: {model}"]
        assert history(result)[0] == "keep this"  # the running backend still has the file open
        with pytest.raises(PolicyError) as refused:
            up(gateway, path, ca_bundle=ca_bundle())
        assert str(model) in str(refused.value) and "file not found" in str(refused.value)
    finally:
        down(gateway, result.name, volumes=True)


KILL_THE_SERVER = """
import os, signal
for pid in filter(str.isdigit, os.listdir("/proc")):
    if int(pid) == os.getpid():  # this script's own command line names the server too
        continue
    try:
        if b"llama_cpp.server" in open(f"/proc/{pid}/cmdline", "rb").read() or b"sandbox-backend" in open(
                f"/proc/{pid}/cmdline", "rb").read():
            os.kill(int(pid), signal.SIGKILL)
    except OSError:
        pass
"""


def test_the_backend_killed_mid_answer(gateway, docker_client, tmp_path):
    path = write_policy(tmp_path)
    result = up(gateway, path, ca_bundle=ca_bundle())
    backend = docker_client.containers.get(f"sandbox-{result.name}-backend")
    try:
        remember(result, "before the fault")
        with ui(result, "api/chat", {"messages": [{"role": "user", "content": "Tell a long story about the sea."}],
                                     "max_tokens": 1024, "stream": True}, timeout=120) as response:
            first = response.readline()  # the answer has begun
            assert first.startswith(b"data: ")
            backend.exec_run(["/opt/venv/bin/python", "-c", KILL_THE_SERVER])
            rest = response.read().decode()
        # The page is told, rather than left waiting.
        assert '"error"' in rest or '"done"' in rest, rest[-500:]
        # The backend comes back by itself (restart on failure) and status says so.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            [report] = status(gateway, result.name)
            backend_part = next(p for p in report["parts"] if p["part"] == "backend")
            if report["healthy"] and backend_part["restarts"] >= 1:
                break
            time.sleep(1)
        else:
            pytest.fail(f"the backend did not come back: {report}")
        assert history(result)[0] == "before the fault"
        remember(result, "after the fault")
        assert "after the fault" in history(result)
    finally:
        down(gateway, result.name, volumes=True)
