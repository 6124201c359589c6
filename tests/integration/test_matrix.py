"""docs/threats.md's attack matrix against a live sandbox, one test per row: each
fails when its attack gets through. `sandbox verify` does the attacking; a
negative control shows the same probe does see a way out where there is one."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from launcher.commands.down import down
from launcher.commands.up import up
from launcher.commands.verify import _processes_from_host, probe_result, verify
from launcher.errors import PolicyError
from launcher.images import recipe_image
from launcher.spec import ContainerSpec
from launcher.verify import (Facts, host_services, network_attachments, privileges, raw_egress, raw_sockets,
                             write_root)
from tests.integration.conftest import FIXTURES_BAD, ca_bundle, labelled, ui, write_policy

ROWS = ["external DNS", "DNS leak via host resolver", "raw IP egress", "attempt by address", "metadata",
        "host services", "other sandboxes", "IPv6", "use the ingress as proxy", "raw sockets", "privileges",
        "network attachments", "write the weights", "write the root fs", "Docker socket", "fork bomb / memory bomb", "LAN reach of the UI",
        "DNS rebinding", "no credential", "cross-site request", "cross-site WebSocket", "smuggled proxy request",
        "slow clients"]


@pytest.fixture(scope="module")
def other_sandbox(gateway, tmp_path_factory):
    result = up(gateway, write_policy(tmp_path_factory.mktemp("other")), ca_bundle=ca_bundle())
    yield result
    down(gateway, result.name, volumes=True)


@pytest.fixture(scope="module")
def verdicts(sandbox, other_sandbox, gateway):
    result, _ = sandbox
    return {row.attack: row for row in verify(gateway, result.name, ca_bundle=ca_bundle()).rows}


@pytest.fixture(scope="module")
def answering_verdicts(other_sandbox, gateway, tmp_path_factory):
    """The same matrix against a sandbox with `audit: connections`, whose
    sink answers every outside name with an address of its own."""
    result = up(gateway, write_policy(tmp_path_factory.mktemp("answering"), audit="connections"),
                ca_bundle=ca_bundle())
    try:
        return {row.attack: row for row in verify(gateway, result.name, ca_bundle=ca_bundle()).rows}
    finally:
        down(gateway, result.name, volumes=True)


@pytest.mark.parametrize("attack", ROWS)
def test_attack_is_stopped(attack, verdicts):
    row = verdicts[attack]
    assert row.verdict == "PASS", f"{attack}: {row.result}"


@pytest.mark.parametrize("attack", ROWS)
def test_attack_is_stopped_when_names_resolve_to_the_sink(attack, answering_verdicts):
    row = answering_verdicts[attack]
    assert row.verdict == "PASS", f"{attack}: {row.result}"
    if attack == "external DNS":  # this row is judged the connections mode's way
        assert "recorded by the sink under that name" in row.result


def test_the_probe_sees_a_way_out_where_there_is_one(gateway, docker_client):
    """Negative control: a container with Docker's defaults (bridge network,
    root, default capabilities, writable root) must fail the same checks,
    those of the probe and those read from the engine and the host."""
    from launcher.hostnet import Canary, host_ipv4_addresses
    image = recipe_image("probe", ca_bundle=ca_bundle())
    if not gateway.image_present(image.tag):
        gateway.build(image)
    chat = recipe_image("chat", ca_bundle=ca_bundle()).tag
    unsafe = docker_client.containers.create(chat, name=f"sandbox-control-{int(time.time())}",
                                             labels={"io.sandbox.name": "control"})
    try:
        unsafe.start()  # inside the try: a container that fails to start is removed too
        target = ContainerSpec(part="frontend", name=unsafe.name, image=chat, user="0:0", networks=(),
                               cap_drop=(), security_opt=())
        with Canary() as canary:
            hosts = host_ipv4_addresses()
            request = {"tcp": [[h, canary.port] for h in hosts], "outside": [["1.1.1.1", 443, "tcp"]],
                       "self": True}
            output = gateway.run_probe("control", image.tag, target, json.dumps(request))
            time.sleep(0.5)
            hits = list(canary.hits)
        facts = Facts(probe=probe_result(output), canary_port=canary.port, canary_hits=hits, host_targets=hosts,
                      frontend_config=gateway.container_config(unsafe.name), internal_network="sandbox-x-internal")
        facts.processes = _processes_from_host(gateway, unsafe.name, facts.frontend_config["id"])
        assert facts.processes, "the control container's processes were not read from the host"
        for check in (host_services, raw_egress, raw_sockets, privileges, write_root, network_attachments):
            assert check(facts).verdict == "FAIL", (check.__name__, check(facts).result)
        # The probe never sent a packet out: it found the live gateway and stopped.
        assert facts.probe["outside"]["tcp 1.1.1.1:443"].startswith("route-via-live-gateway")
    finally:
        unsafe.remove(force=True)


def test_fork_bomb_and_memory_bomb_are_contained(sandbox, docker_client):
    result, _ = sandbox
    frontend = docker_client.containers.get(f"sandbox-{result.name}-frontend")
    fork_bomb = """
import os
held, release = os.pipe()
children = 0
try:
    while children < 1000:
        if os.fork() == 0:  # each child lives until the parent is done, however slow forking is
            os.close(release)
            os.read(held, 1)
            os._exit(0)
        children += 1
except OSError as e:
    print("stopped", children, e.strerror)
else:
    print("unbounded", children)
"""
    output = frontend.exec_run(["python3", "-c", fork_bomb]).output.decode()
    assert output.startswith("stopped"), output
    assert int(output.split()[1]) < 512
    # The control: the same bomb in a container of the same image without the sandbox's limits is not stopped.
    unbounded = docker_client.containers.run(frontend.image.id, entrypoint=["python3", "-c", fork_bomb],
                                             remove=True, network_mode="none", labels={"io.sandbox.name": "control"})
    assert unbounded.decode().startswith("unbounded 1000"), unbounded
    memory_bomb = "blocks = []\nwhile True:\n    blocks.append(bytearray(16 * 2**20))\n"
    code = frontend.exec_run(["python3", "-c", memory_bomb]).exit_code
    assert code != 0  # killed (137) or MemoryError, never unbounded
    # The backend never noticed; the host's answer comes through the UI as before.
    for _ in range(60):  # the UI itself may have been the OOM killer's choice: it restarts
        try:
            with ui(result, "api/chat", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
                    timeout=60) as response:
                assert response.status == 200
                break
        except OSError:
            time.sleep(1)
    else:
        pytest.fail("the sandbox did not recover from the bombs")


@pytest.mark.parametrize("case", sorted(p.stem for p in FIXTURES_BAD.glob("*.yaml")))
def test_hostile_policy_starts_nothing(case, gateway, docker_client, monkeypatch):
    monkeypatch.chdir(FIXTURES_BAD)
    before = labelled(docker_client, "bad")
    with pytest.raises(PolicyError):
        up(gateway, Path(f"{case}.yaml"), ca_bundle=ca_bundle(), timeout=5)
    assert labelled(docker_client, "bad") == before == {"containers": [], "networks": [], "volumes": []}


def test_huge_policy_starts_nothing(gateway, docker_client, tmp_path):
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as f:
        f.write(b"version: 1\nname: bad\n# " + b"x" * (50 * 1024 * 1024) + b"\n")
    with pytest.raises(PolicyError):
        up(gateway, huge, ca_bundle=ca_bundle(), timeout=5)
    assert labelled(docker_client, "bad") == {"containers": [], "networks": [], "volumes": []}
