"""down / up: nothing labelled stays behind but the front-end's data, the chat
history survives, and a changed policy recreates only what changed."""
from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import urllib.error

import pytest
import yaml

from launcher.commands.down import down
from launcher.commands.prepare import prepare
from launcher.commands.up import up
from tests.integration.conftest import HELD_UP, answered, ca_bundle, labelled, ui, ui_json, write_policy


def chat(result, text: str) -> dict:
    return ui_json(result, "api/chat", {"messages": [{"role": "user", "content": text}], "max_tokens": 8})


def history(result) -> list[dict]:
    return ui_json(result, "api/history", timeout=30)["messages"]


def test_down_keeps_only_the_data_and_up_brings_the_history_back(gateway, docker_client, tmp_path):
    path = write_policy(tmp_path)
    first = up(gateway, path, ca_bundle=ca_bundle())
    name = first.name
    try:
        chat(first, "remember the word pelican")
        assert history(first)[0] == {"role": "user", "content": "remember the word pelican"}

        down(gateway, name)
        assert labelled(docker_client, name) == {"containers": [], "networks": [],
                                                 "volumes": [f"sandbox-{name}-audit", f"sandbox-{name}-data"]}

        second = up(gateway, path, ca_bundle=ca_bundle())
        assert history(second)[0]["content"] == "remember the word pelican"
    finally:
        down(gateway, name, volumes=True)
    assert labelled(docker_client, name) == {"containers": [], "networks": [], "volumes": []}


def test_down_closes_the_front_door_before_the_ui_begins_to_stop(gateway, docker_client, tmp_path):
    """Held where `down` begins to remove the UI (its line is said right
    before): the ingress has ended, so a request at the front door gets no
    answer, while the UI still runs. Then nothing labelled is left but the
    volumes."""
    result = up(gateway, write_policy(tmp_path), ca_bundle=ca_bundle())
    name = result.name
    seen = {}

    def at(line: str) -> None:
        if line == f"removing container sandbox-{name}-frontend":
            seen["ui"] = docker_client.api.inspect_container(f"sandbox-{name}-frontend")["State"]["Status"]
            try:
                with ui(result, timeout=60) as response:
                    seen["front door"] = f"answered {response.status}"
            except urllib.error.HTTPError as e:  # an answer all the same: the ingress's refusal
                seen["front door"] = f"answered {e.code}"
            except (OSError, http.client.HTTPException):  # refused, or closed with no answer
                seen["front door"] = "no answer"
    try:
        with ui(result) as response:
            assert response.status == 200  # the control: it answers until `down`
        down(gateway, name, say=at)
        assert seen == {"ui": "running", "front door": "no answer"}
        assert labelled(docker_client, name) == {"containers": [], "networks": [],
                                                 "volumes": [f"sandbox-{name}-audit", f"sandbox-{name}-data"]}
    finally:
        down(gateway, name, volumes=True)


def test_changed_policy_recreates_only_what_changed(gateway, docker_client, tmp_path):
    path = write_policy(tmp_path)
    result = up(gateway, path, ca_bundle=ca_bundle())
    try:
        ids = {c.name: c.id for c in docker_client.containers.list(filters={"label": f"io.sandbox.name={result.name}"})}
        policy = yaml.safe_load(path.read_text())
        policy["backend"]["cpus"] = 1
        path.write_text(yaml.safe_dump(policy, sort_keys=False))
        changes = [(a.verb, a.name) for a in prepare(gateway, path, ca_bundle()).plan.changes]
        assert changes == [("recreate", f"sandbox-{result.name}-backend")]
        up(gateway, path, ca_bundle=ca_bundle())
        after = {c.name: c.id for c in docker_client.containers.list(filters={"label": f"io.sandbox.name={result.name}"})}
        assert after[f"sandbox-{result.name}-frontend"] == ids[f"sandbox-{result.name}-frontend"]
        assert after[f"sandbox-{result.name}-ingress"] == ids[f"sandbox-{result.name}-ingress"]
        assert after[f"sandbox-{result.name}-backend"] != ids[f"sandbox-{result.name}-backend"]
        # The kept front-end still holds the key the new backend takes.
        answered(chat(result, "hello"))
    finally:
        down(gateway, result.name, volumes=True)


def test_a_backend_that_cannot_start_is_named_with_its_last_log_lines(gateway, tmp_path):
    from launcher.errors import NotReady
    from tests.conftest import FIXTURES
    # llama metadata and one tensor: it passes the checks, and llama.cpp cannot load it.
    path = write_policy(tmp_path)
    policy = yaml.safe_load(path.read_text())
    policy["models"][0].update(path=str(FIXTURES / "models" / "tiny.gguf"),
                               sha256="a72e6bbd78ef78a366bec092d08c37f0fac9e649d452a61eed6434409d2ecb46")
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    try:
        with pytest.raises(NotReady) as failure:
            up(gateway, path, ca_bundle=ca_bundle(), timeout=120)
        assert failure.value.part == "backend"
        assert failure.value.log_tail, "the error carries the backend's last log lines"
        assert "did not become ready" in str(failure.value)
    finally:
        down(gateway, policy["name"], volumes=True)


def test_two_ups_of_one_policy_at_once_wait_for_each_other(gateway, tmp_path):
    """Tried as a new user would: two `up` of one policy at once, and one failed
    with the engine's "Pool overlaps with other one on this address space"."""
    import threading
    path = write_policy(tmp_path)
    name = yaml.safe_load(path.read_text())["name"]
    results, errors = [], []

    def run():
        try:
            results.append(up(gateway, path, ca_bundle=ca_bundle()))
        except Exception as e:  # noqa: BLE001 - the test reports whatever went wrong
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert errors == [] and len(results) == 2
        assert sorted(len(r.prepared.plan.changes) == 0 for r in results) == [False, True]
    finally:
        down(gateway, name, volumes=True)


def test_an_interrupted_up_says_what_it_left_and_up_finishes_the_job(gateway, tmp_path):
    """Tried as a new user would: Ctrl-C during `up` left parts running, exit
    130, and no word of the sandbox's state."""
    path = write_policy(tmp_path)
    name = yaml.safe_load(path.read_text())["name"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Held in its wait for the backend: the interrupt lands there, however fast the model loads.
    # Ctrl-C as at a terminal: a run started in the background inherits SIGINT ignored.
    process = subprocess.Popen([sys.executable, "-c", HELD_UP, "up", str(path)], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        seen = []
        for line in process.stderr:
            seen.append(line)
            if line.startswith("held by the test"):
                break
        else:
            pytest.fail(f"`up` ended before it waited for the backend: {''.join(seen)}")
        assert "waiting for the backend to load the model" in "".join(seen)
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=60)
        assert process.returncode == 130, rest
        assert f"interrupted: sandbox {name} may be partly up" in rest
        assert f"`sandbox up {path}` finishes the job" in rest and f"`sandbox down {name}`" in rest
        finished = up(gateway, path, ca_bundle=ca_bundle())
        assert history(finished) == []
    finally:
        if process.poll() is None:
            process.kill()
        down(gateway, name, volumes=True)


def test_a_lost_backend_comes_back_with_the_key_the_front_end_holds(gateway, docker_client, tmp_path):
    """Tried as a new user would: with the backend container gone and the
    front-end kept, `up` made the backend a new key, left the front-end with
    the old one, and still reported ready."""
    path = write_policy(tmp_path)
    first = up(gateway, path, ca_bundle=ca_bundle())
    try:
        docker_client.containers.get(f"sandbox-{first.name}-backend").remove(force=True)
        second = up(gateway, path, ca_bundle=ca_bundle())
        answered(chat(second, "hello"))
    finally:
        down(gateway, first.name, volumes=True)


def test_a_subnet_taken_between_plan_and_apply_is_chosen_again(gateway, docker_client, tmp_path, monkeypatch):
    """Tried as a new user would: two different sandboxes started at once,
    one with a UI to build; the other took the subnet chosen for the first
    while it built, and the first failed with the engine's "Pool overlaps
    with other one on this address space"."""
    import docker.types

    from launcher.commands import up as up_module
    path = write_policy(tmp_path)
    name = yaml.safe_load(path.read_text())["name"]
    taken = []

    def prepare_then_take(*args, **kwargs):
        prepared = prepare(*args, **kwargs)
        if not taken:  # the other sandbox, made right after this plan
            subnet = prepared.spec.networks[0].subnet
            taken.append(docker_client.networks.create(
                f"sandbox-it-taker-{name}", driver="bridge", labels={"io.sandbox.name": "taker"},
                ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)])))
        return prepared
    monkeypatch.setattr(up_module, "prepare", prepare_then_take)
    said: list[str] = []
    try:
        result = up(gateway, path, ca_bundle=ca_bundle(), say=said.append)
        assert any("was taken meanwhile by another network; choosing another" in m for m in said), said
        assert result.prepared.spec.networks[0].subnet != taken[0].attrs["IPAM"]["Config"][0]["Subnet"]
        answered(chat(result, "hi"))
    finally:
        down(gateway, name, volumes=True)
        for network in taken:
            network.remove()
