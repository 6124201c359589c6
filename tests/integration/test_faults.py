"""Faults a sandbox meets on real machines. Each test asserts that nothing is
lost (the chat history survives) and that `status` tells the truth."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

import docker
import pytest
import yaml

from launcher.commands.down import down
from launcher.commands.prepare import prepare
from launcher.commands.status import status
from launcher.commands.up import up
from launcher.engine import DockerGateway
from launcher.errors import BuildFailure, DockerUnavailable, NotReady, PolicyError
from launcher.images import ImageBuild
from tests.integration.conftest import (backend_server_pids, ca_bundle, held_gateway, labelled, poll, ui, ui_json,
                                       write_policy)


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


def test_down_while_up_is_waiting_ends_the_wait_with_the_reason(docker_client, tmp_path):
    path = write_policy(tmp_path)
    name = yaml.safe_load(path.read_text())["name"]
    held = held_gateway(docker_client)  # `up` waits for the backend until the test has run `down`
    outcome = {}

    def run_up():
        try:
            outcome["result"] = up(held, path, ca_bundle=ca_bundle(), timeout=120)
        except Exception as e:  # noqa: BLE001 - the test looks at what it was
            outcome["error"] = e

    thread = threading.Thread(target=run_up)
    thread.start()
    try:
        assert held.waiting.wait(300), "`up` never came to wait for the backend"
        down(held, name)  # not held up by the waiting `up`
        held.release.set()
        thread.join(60)
        assert not thread.is_alive()
        assert isinstance(outcome.get("error"), NotReady) and "is gone" in str(outcome["error"]), outcome
        assert labelled(docker_client, name) == {"containers": [], "networks": [],
                                                 "volumes": [f"sandbox-{name}-audit", f"sandbox-{name}-data"]}
        [report] = status(held, name)  # the truth: its data is kept, nothing runs
        assert not report["healthy"] and {p["state"] for p in report["parts"]} == {"missing"}
    finally:
        held.release.set()
        thread.join(60)
        down(held, name, volumes=True)


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


@pytest.mark.skipif(os.geteuid() != 0, reason="stopping the backend's server from the host takes root")
def test_the_backend_killed_mid_answer(gateway, docker_client, tmp_path):
    path = write_policy(tmp_path)
    result = up(gateway, path, ca_bundle=ca_bundle())
    backend = docker_client.containers.get(f"sandbox-{result.name}-backend")
    try:
        remember(result, "before the fault")
        servers = backend_server_pids(backend)
        assert servers, backend.top()
        with ui(result, "api/chat", {"messages": [{"role": "user", "content": "Tell a long story about the sea."}],
                                     "max_tokens": 1024, "stream": True}, timeout=120) as response:
            first = response.readline()  # the answer has begun
            # Held there: stopped, the server writes no more, so the kill lands mid-answer.
            for pid in servers:
                os.kill(pid, signal.SIGSTOP)
            assert first.startswith(b"data: ") and b'"delta"' in first, first
            for pid in servers:
                os.kill(pid, signal.SIGKILL)
            rest = response.read().decode()
        # The page is told, rather than left waiting or shown a finished answer.
        assert '"error": "the backend stopped answering' in rest and '"done"' not in rest, rest[-500:]
        # The backend comes back by itself (restart on failure) and status says so.
        poll(lambda: (report := status(gateway, result.name)[0])["healthy"] and next(
            p for p in report["parts"] if p["part"] == "backend")["restarts"] >= 1,
            lambda: f"the backend to come back: {status(gateway, result.name)}")
        assert history(result)[0] == "before the fault"
        remember(result, "after the fault")
        assert "after the fault" in history(result)
    finally:
        down(gateway, result.name, volumes=True)


def _dockerd() -> tuple[int, list[str], dict[str, str], str] | None:
    """The running engine's pid, command line, environment and log file, when
    this process may stop and start it again (root, no systemd unit)."""
    if os.geteuid() != 0:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() != "dockerd":
                continue
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
            env = dict(e.split("=", 1) for e in environ if "=" in e)
            log = os.readlink(f"/proc/{pid}/fd/1")
            return int(pid), argv, env, log if log.startswith("/") and "(deleted)" not in log else os.devnull
        except OSError:
            continue
    return None


def _answers(client) -> bool:
    try:
        return client.ping()
    except Exception:  # noqa: BLE001 - not answering yet, whatever the reason
        return False


def test_the_docker_engine_restarted_under_a_running_sandbox(gateway, docker_client, tmp_path):
    engine = _dockerd()
    systemd = shutil.which("systemctl") and subprocess.run(
        ["systemctl", "is-active", "--quiet", "docker"], check=False).returncode == 0
    if engine is None and not systemd:
        pytest.skip("this test cannot restart the Docker engine here (needs root, or systemd's docker unit)")
    path = write_policy(tmp_path)
    result = up(gateway, path, ca_bundle=ca_bundle())
    try:
        remember(result, "before the restart")
        if systemd:
            subprocess.run(["systemctl", "restart", "docker"], check=True)
        else:
            pid, argv, env, log = engine
            os.kill(pid, signal.SIGTERM)
            poll(lambda: not Path(f"/proc/{pid}").exists(), "the engine to stop", 60)
            with pytest.raises(DockerUnavailable):  # the truth while it is away
                status(gateway, result.name)
            with open(log, "ab") as out:
                subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
        poll(lambda: _answers(docker_client), "the engine to answer again", 60)

        # Every part comes back by itself (restart unless stopped), whatever
        # exit code the engine's stop gave it, and status says when it is whole.
        def whole() -> bool:
            [report] = status(gateway, result.name)
            return report["healthy"] and all(p["state"] == "running" for p in report["parts"])
        poll(whole, "the sandbox to come back whole", 120)
        poll(lambda: _chat_answers(result), "the UI to answer again", 60)
        assert history(result)[0] == "before the restart"
        remember(result, "after the restart")
        assert "after the restart" in history(result)
    finally:
        down(gateway, result.name, volumes=True)


def _chat_answers(result) -> bool:
    try:
        history(result)
        return True
    except Exception:  # noqa: BLE001 - not answering yet
        return False


BASE = "debian:bookworm-slim"


@pytest.fixture
def small_engine(docker_client, tmp_path):
    """A second Docker engine whose data root is a 300 MiB tmpfs, holding
    only the base image: a disk that a build can fill."""
    if os.geteuid() != 0 or not shutil.which("dockerd") or not shutil.which("unshare"):
        pytest.skip("a second Docker engine needs root, dockerd and unshare")
    root = Path(f"/tmp/sandbox-small-engine-{os.getpid()}")  # short: a socket path has a length limit
    root.mkdir(exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300m", "tmpfs", str(root)],
                      check=False, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    log = open(tmp_path / "small-engine.log", "wb")
    # In a network namespace of its own: its bridge, routes and firewall rules
    # never touch the host's engine (which owns docker0 out here).
    engine = subprocess.Popen(
        ["unshare", "--net", "dockerd", "--data-root", f"{root}/data", "--exec-root", f"{root}/exec",
         "--pidfile", f"{root}/pid", "-H", f"unix://{root}/docker.sock"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        poll(lambda: (root / "docker.sock").exists(), "the second engine to start", 60)
        client = docker.DockerClient(base_url=f"unix://{root}/docker.sock", timeout=120)
        poll(lambda: _answers(client), "the second engine to answer", 60)
        client.images.load(docker_client.images.get(BASE).save(named=True))
        yield client, root / "data"
    finally:
        engine.terminate()
        engine.wait(60)
        log.close()
        subprocess.run(["umount", "-l", str(root)], check=False)
        root.rmdir()


def test_the_disk_filling_during_an_image_build(small_engine, tmp_path):
    client, data_root = small_engine
    context = tmp_path / "filler"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {BASE}\nRUN echo kept > /kept\nRUN head -c 1G /dev/zero > /filler\n")
    gateway = DockerGateway(client)
    image = ImageBuild("sandbox-filler:1", context)
    lines: list[str] = []
    with pytest.raises(BuildFailure) as failed:
        gateway.builder.build(image, on_line=lines.append)
    message = str(failed.value)
    # A clear error: which disk, that nothing was tagged, what to do.
    assert "No space left on device" in message or "no space left on device" in message
    assert f"the disk that holds Docker's images ({data_root}" in message
    assert "the image was not tagged" in message and "docker image prune" in message
    # No half-tagged image, no build container left holding the space.
    assert not gateway.state.image_present(image.tag)
    assert client.containers.list(all=True) == []
    assert shutil.disk_usage(data_root).free > 100 * 2**20
    # The engine is fine afterwards: a build that fits succeeds and is tagged.
    (context / "Dockerfile").write_text(f"FROM {BASE}\nRUN echo kept > /kept\n")
    gateway.builder.build(image)
    assert gateway.state.image_present(image.tag)
