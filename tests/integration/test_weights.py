"""The bytes that were checked are the bytes that are mounted: a model edited
in place with its mtime set back is refused, and so is one changed after the
policy was checked but before the backend that mounts it was created, and
one changed while the sandbox runs, when Docker restarts the backend."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from launcher.commands.down import down
from launcher.commands.status import status
from launcher.commands.up import up
from launcher.errors import ModelChanged, NotReady, PolicyError
from launcher.policy import check_policy_file
from tests.integration.conftest import KILL_THE_SERVER, ca_bundle, labelled, poll


def tamper(model: Path, offset: int = 4096) -> None:
    """Change one byte in place and put the mtime back: size, inode and
    mtime are as they were."""
    before = model.stat()
    with open(model, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(model, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_a_model_edited_in_place_with_its_mtime_restored_is_refused(gateway, docker_client, own_model):
    path, model, name = own_model
    assert check_policy_file(path)[1] == []  # checked once: the hash is cached
    tamper(model)
    with pytest.raises(PolicyError) as refused:
        up(gateway, path, ca_bundle=ca_bundle(), timeout=30)
    assert "sha256 mismatch" in str(refused.value) and str(model) in str(refused.value)
    assert labelled(docker_client, name) == {"containers": [], "networks": [], "volumes": []}


def swap_after_the_check(model: Path):
    """A `say` for `up` that changes the model once the policy was checked,
    before the backend that mounts it is created."""
    def say(message: str) -> None:
        if message.startswith("creating network") and not said:  # the plan is being carried out: no container yet
            said.append(message)
            tamper(model)
    said: list[str] = []
    return say


def test_a_model_changed_between_check_and_mount_is_refused(gateway, docker_client, own_model):
    path, model, name = own_model
    try:
        with pytest.raises(ModelChanged) as refused:
            up(gateway, path, ca_bundle=ca_bundle(), timeout=30, say=swap_after_the_check(model))
        assert "refusing to start the backend" in str(refused.value) and str(model) in str(refused.value)
        assert f"sandbox-{name}-backend" not in labelled(docker_client, name)["containers"]
    finally:
        down(gateway, name, volumes=True)


def test_without_the_check_before_mount_the_swapped_model_is_mounted(gateway, docker_client, own_model,
                                                                      monkeypatch):
    """The control of the test above: with the check before the backend is
    created taken away, the same swap goes through: the backend is made,
    with the other bytes mounted (its own check at start reads their sha256)."""
    import launcher.commands.up
    path, model, name = own_model
    monkeypatch.setattr(launcher.commands.up, "weights_unchanged", lambda container: None)
    try:
        with pytest.raises(NotReady):
            up(gateway, path, ca_bundle=ca_bundle(), timeout=30, say=swap_after_the_check(model))
        assert f"sandbox-{name}-backend" in labelled(docker_client, name)["containers"]
        swapped = hashlib.sha256(model.read_bytes()).hexdigest()
        backend = docker_client.containers.get(f"sandbox-{name}-backend")
        poll(lambda: f"its sha256 is {swapped}" in backend.logs().decode(errors="replace"),
                 what="the backend to read the swapped model")
    finally:
        down(gateway, name, volumes=True)


def crash_and_wait_for(docker_client, container, event: str) -> dict:
    """Kill the backend's server as a crash would, and return once Docker has
    restarted the container and `event` followed the restart (the engine's
    own events, in order: no guessing how long a restart takes)."""
    now = int(time.time())
    # Listening before the kill: the restart can follow it within a second.
    events = docker_client.events(until=now + 300, decode=True, filters={"container": container.id})
    container.exec_run(["/opt/venv/bin/python", "-c", KILL_THE_SERVER])
    expected = ["die", "start", event]
    for record in events:
        if record.get("status") == expected[0]:
            expected.pop(0)
            if not expected:
                return record
    pytest.fail(f"the backend was not restarted with {event} within 300 s; still waiting for {expected}")


def test_a_backend_restarted_by_docker_refuses_a_model_changed_on_the_host(gateway, docker_client, own_model):
    path, model, name = own_model
    result = up(gateway, path, ca_bundle=ca_bundle())
    backend = docker_client.containers.get(f"sandbox-{name}-backend")
    try:
        # Control: the file unchanged, the restarted backend loads it and is healthy again.
        crash_and_wait_for(docker_client, backend, "health_status: healthy")
        [report] = status(gateway, name)
        assert report["healthy"], report
        # Same path, inode, size and mtime; one byte of the weights themselves
        # (the tensors are at the end), so a server that loaded it would serve.
        tamper(model, offset=model.stat().st_size - 4096)
        restarted = crash_and_wait_for(docker_client, backend, "start")
        # Its log, followed from the restart: the refusal comes before any server would start.
        lines = []
        for line in backend.logs(stream=True, follow=True, since=restarted["time"]):
            lines.append(line.decode(errors="replace"))
            if "refusing to start" in lines[-1] or "Uvicorn running" in lines[-1]:
                break
        refusal = lines[-1]
        mounted = "/models/smollm2.gguf"
        assert f"backend: refusing to start: {mounted}: its sha256 is {hashlib.sha256(model.read_bytes()).hexdigest()}" \
            f", the policy's is {result.prepared.spec.container('backend').mounts[0].sha256}" in refusal, lines
        assert "the file changed on the host" in refusal
        [report] = status(gateway, name)
        backend_part = next(p for p in report["parts"] if p["part"] == "backend")
        assert not report["healthy"] and backend_part["health"] != "healthy", report
    finally:
        down(gateway, name, volumes=True)
