"""The quick-start sandbox, up for real: a chat answered by the real model
through the ingress, the page in a real browser, and the promises of the spec
checked on the running containers."""
from __future__ import annotations

import hashlib
import json
import threading
import time

from launcher.commands.prepare import prepare
from launcher.commands.verify import WRITE_WEIGHTS
from launcher.commands.status import status
from tests.integration.conftest import MODEL, ca_bundle, ui, ui_json


def test_chat_through_the_ingress_is_answered_by_the_model(sandbox):
    result, _ = sandbox
    models = ui_json(result, "api/models", timeout=30)
    assert [m["id"] for m in models["data"]] == ["smollm2"]
    answer = ui_json(result, "api/chat", {
        "model": "smollm2", "max_tokens": 24,
        "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    assert answer["model"] == "smollm2"
    assert answer["reply"]["role"] == "assistant"
    assert answer["reply"]["content"].strip()
    assert answer["usage"]["completion_tokens"] > 0


def test_the_page_is_served_through_the_ingress(sandbox):
    result, _ = sandbox
    with ui(result, timeout=30) as response:
        assert response.status == 200
        assert b"<title>sandbox chat</title>" in response.read()


def test_second_up_plans_no_change(sandbox, gateway):
    _, path = sandbox
    assert prepare(gateway, path, ca_bundle()).plan.changes == ()


def test_status_reports_every_part_healthy_with_the_url(sandbox, gateway):
    result, _ = sandbox
    [report] = status(gateway, result.name)
    assert report["healthy"] and report["url"] == result.url
    assert [(p["part"], p["state"]) for p in report["parts"]] == [
        ("dns", "running"), ("backend", "running"), ("frontend", "running"), ("ingress", "running")]
    assert report["parts"][1]["health"] == "healthy"


def test_only_the_ingress_publishes_a_port_and_only_on_loopback(sandbox, docker_client):
    result, _ = sandbox
    for part in ("dns", "backend", "frontend", "ingress"):
        attrs = docker_client.api.inspect_container(f"sandbox-{result.name}-{part}")
        bindings = [b for bs in (attrs["NetworkSettings"]["Ports"] or {}).values() for b in bs or []]
        if part == "ingress":
            assert {b["HostIp"] for b in bindings} == {"127.0.0.1"}
        else:
            assert bindings == []


def test_running_containers_carry_the_hardening(sandbox, docker_client):
    result, _ = sandbox
    for part in ("dns", "backend", "frontend", "ingress"):
        attrs = docker_client.api.inspect_container(f"sandbox-{result.name}-{part}")
        host = attrs["HostConfig"]
        if part == "dns":  # the sink: see below
            assert host["CapDrop"] == ["ALL"] and host["CapAdd"] == ["NET_ADMIN", "SETUID", "SETGID"]
        else:
            assert host["CapDrop"] == ["ALL"] and not host["CapAdd"], part
            assert attrs["Config"]["User"] and not attrs["Config"]["User"].startswith("0"), part
        assert host["ReadonlyRootfs"] and not host["Privileged"], part
        assert "no-new-privileges:true" in host["SecurityOpt"], part
        assert host["PidsLimit"] and host["Memory"] and host["NanoCpus"], part
        assert not any("docker.sock" in (m.get("Source") or "") for m in attrs["Mounts"]), part
        assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}}, part


EVERY_PROCESS = """
import os
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
        if pid != str(os.getpid()):
            print(status["Name"].strip(), status["Uid"].split()[1], status["CapEff"].strip())
    except OSError:
        pass
"""


def test_the_sink_gave_up_root_and_every_capability(sandbox, docker_client):
    """The sink started as root with NET_ADMIN; nothing in its container is still either."""
    result, _ = sandbox
    run = docker_client.containers.get(f"sandbox-{result.name}-dns").exec_run(
        ["python3", "-c", EVERY_PROCESS], user="65534")
    processes = [line.split() for line in run.output.decode().splitlines()]
    assert processes == [["python3", "65534", "0000000000000000"]]


def test_the_weights_cannot_be_written_from_the_backend(sandbox, docker_client):
    result, _ = sandbox
    before = hashlib.sha256(MODEL.read_bytes()).hexdigest()
    run = docker_client.containers.get(f"sandbox-{result.name}-backend").exec_run(
        ["/opt/venv/bin/python", "-c", WRITE_WEIGHTS, "/models/smollm2.gguf"])
    output = run.output.decode()
    assert run.exit_code == 0, output
    assert len(output.split()) == 3 and set(output.split()) <= {"EROFS", "EACCES", "EPERM", "EBUSY"}, output
    assert hashlib.sha256(MODEL.read_bytes()).hexdigest() == before


def test_an_answer_streams_through_the_ingress_as_it_is_written(sandbox):
    result, _ = sandbox
    chunks = []
    # Greedy, so that the answer is the same each run: sampled, the tiny
    # model may end its answer at once, and the stream would not be shown.
    with ui(result, "api/chat", {"messages": [{"role": "user", "content": "Count from one to ten."}],
                                 "max_tokens": 32, "temperature": 0, "stream": True}) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        while chunk := response.read1(65536):
            chunks.append(chunk)
    events = [json.loads(part[6:]) for part in b"".join(chunks).decode().split("\n\n") if part.startswith("data: ")]
    deltas = [e["delta"] for e in events if "delta" in e]
    assert len(deltas) > 1 and events[-1].get("done"), events
    # Passed on piece by piece, not gathered by the ingress into one answer.
    assert len(chunks) > 1
    assert ui_json(result, "api/history", timeout=30)["messages"][-1]["content"] == "".join(deltas)


ASK_FOR_MODELS = """
import os, sys, time, urllib.request
request = urllib.request.Request("http://127.0.0.1:8000/v1/models",
                                 headers={"Authorization": "Bearer " + os.environ["SANDBOX_API_KEY"]})
print(time.time(), flush=True)
urllib.request.urlopen(request, timeout=120).read()
"""


def _streamed(result, on_first_delta=None) -> tuple[str, float]:
    """A long greedy answer streamed through the ingress: its text, and when its last piece came."""
    pieces, last = [], 0.0
    with ui(result, "api/chat", {"messages": [{"role": "user", "content": "Count from 1 to 300, with commas."}],
                                 "max_tokens": 400, "temperature": 0, "stream": True}) as response:
        for raw in iter(response.readline, b""):
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            assert "error" not in event, event
            if "delta" in event:
                pieces.append(event["delta"])
                last = time.time()
                if on_first_delta and len(pieces) == 1:
                    on_first_delta()
    return "".join(pieces), last


def test_a_request_while_an_answer_streams_waits_its_turn_and_does_not_cut_the_answer(sandbox, docker_client):
    """Another request for the model (the backend's own health check every
    2 s, the owner's API client) while an answer streams: the answer is the
    same, whole, as without it (the server used to end the stream)."""
    result, _ = sandbox
    alone, _ = _streamed(result)
    backend = docker_client.containers.get(f"sandbox-{result.name}-backend")
    asked = []
    asking = threading.Thread(target=lambda: asked.append(
        backend.exec_run(["/opt/venv/bin/python", "-c", ASK_FOR_MODELS]).output.decode()))
    with_another, last_piece = _streamed(result, on_first_delta=asking.start)
    asking.join(150)
    sent_at = float(asked[0].split()[0])
    assert sent_at < last_piece, "the other request came after the answer: nothing was held"
    assert with_another == alone and len(alone) > 100, (alone, with_another)
