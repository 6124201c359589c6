"""docs/threats.md's attack matrix against a live sandbox, one test per row: each
fails when its attack gets through. `sandbox verify` does the attacking; a
negative control shows the same probe does see a way out where there is one."""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from launcher.commands.down import down
from launcher.commands.up import up
from launcher.commands.verify import _processes_from_host, probe_image_built, probe_result, verify
from launcher.errors import PolicyError
from launcher.images import recipe_image
from launcher.spec import ContainerSpec
from launcher.matrix import Facts
from tests.integration.conftest import FIXTURES_BAD, ca_bundle, free_port, labelled, ui, write_policy

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


# Serves one connection at a time, with no timeout: a front door without the ingress's limits.
ONE_AT_A_TIME = ("import functools, http.server as h; h.HTTPServer(('', 8081), functools.partial("
                 "h.SimpleHTTPRequestHandler, directory='/tmp')).serve_forever()")


def _answers(port: int, deadline: float = 60) -> None:
    """Waits until the server published on `port` answers (the engine's proxy accepts before it does)."""
    from launcher.front_door import _one
    give_up = time.monotonic() + deadline
    while _one(port, b"GET / HTTP/1.0\r\n\r\n")["status"] is None:
        assert time.monotonic() < give_up, f"nothing answered on 127.0.0.1:{port}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def unsafe_verdicts(gateway, docker_client, tmp_path_factory):
    """Negative control for every row: the same probe, the same host-side
    tries and the same engine reads as `verify`'s, against a front-end set up
    without any of the sandbox's protections: on an ordinary bridge network
    with IPv6 and a live gateway, beside a container that answers (for "other
    sandboxes") under the name the probe will look up, Docker's default
    capabilities and root fs, the engine's socket and a model mounted, no
    pids limit (-1, "unlimited") nor memory limit, the UI published on
    0.0.0.0 with no ingress before it, and a front door that serves one
    connection at a time. Each row must see its breach: FAIL. Also returns
    the same facts judged as if the sink had recorded every attempt (it
    would have, had there been one): a row the sink takes part in must fail
    on what the probe saw, not merely for want of the sink."""
    from docker.types import IPAMConfig, IPAMPool
    from launcher.commands.verify import (IPV6_TARGET, METADATA_TARGET, PROXY_REQUESTS, PUBLIC_TARGET, WRITE_WEIGHTS,
                                          _status_line)
    from launcher.front_door import try_front_door
    from launcher.hostnet import Canary, host_ipv4_addresses, host_resolvers, route_localnet
    from launcher.policy.files import sha256_of
    from launcher.spec import resource_name
    from launcher.matrix import ADDRESS_TARGET, _as_if_all_recorded, judge
    image = probe_image_built(gateway, ca_bundle(), lambda _line: None)
    chat = recipe_image("chat", ca_bundle=ca_bundle()).tag
    name = f"control-{uuid.uuid4().hex[:8]}"
    unique = f"sandbox-verify-{uuid.uuid4().hex[:12]}.example.com"
    weights = tmp_path_factory.mktemp("weights") / "control.gguf"
    weights.write_bytes(b"GGUF" + bytes(1020))
    weights.chmod(0o666)
    ui_port, door_port = free_port(), free_port()
    label = {"io.sandbox.name": name}
    v6 = uuid.uuid4().hex
    network = docker_client.networks.create(
        f"sandbox-{name}-bridge", driver="bridge", enable_ipv6=True, labels=label,
        ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=f"fd{v6[:2]}:{v6[2:6]}:{v6[6:10]}::/64")]))
    containers = []
    try:
        neighbour = docker_client.containers.create(chat, name=f"sandbox-{name}-neighbour", labels=label)
        containers.append(neighbour)
        network.connect(neighbour, aliases=[unique])
        unsafe = docker_client.containers.create(
            chat, name=f"sandbox-{name}-frontend", labels=label, network=network.name, pids_limit=-1,
            ports={"8080/tcp": ("0.0.0.0", ui_port), "8081/tcp": ("127.0.0.1", door_port)},
            volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "ro"},
                     str(weights): {"bind": "/models/control.gguf", "mode": "rw"}})
        containers.append(unsafe)
        # Each started inside the try: a container that fails to start is removed too.
        neighbour.start()
        unsafe.start()
        unsafe.exec_run(["python3", "-c", ONE_AT_A_TIME], detach=True)
        _answers(ui_port)
        _answers(door_port)
        neighbour_ip = gateway.state.addresses(neighbour.name)[network.name]
        target = ContainerSpec(part="frontend", name=unsafe.name, image=chat, user="0:0", networks=(),
                               cap_drop=(), security_opt=())
        facts = Facts(unique_name=unique, host_targets=host_ipv4_addresses(),
                      other_sandbox_targets=[f"{neighbour_ip}:8080"], internal_network=resource_name(name, "internal"))
        with Canary() as canary:
            facts.canary_port = canary.port
            request = {
                "tcp": [[h, canary.port] for h in facts.host_targets] + [[neighbour_ip, 8080]],
                "outside": [[*PUBLIC_TARGET, "tcp"], [*METADATA_TARGET, "tcp"], [ADDRESS_TARGET, 40001, "tcp"],
                            [ADDRESS_TARGET, 40002, "udp"]]
                           + [[r, 53, proto] for r in host_resolvers() for proto in ("udp", "tcp")],
                "dns": [unique], "ipv6": [list(IPV6_TARGET)],
                "http": [[neighbour_ip, 8080, line] for line in PROXY_REQUESTS], "self": True}
            output = gateway.containers.run_probe(name, image.tag, target, json.dumps(request))
            # The probe's connections to the canary were made before it printed: all are in.
            facts.canary_hits = canary.hits_until_now()
        facts.probe = probe_result(output)
        facts.frontend_config = gateway.state.container_config(unsafe.name)
        facts.processes = _processes_from_host(gateway, unsafe.name, facts.frontend_config["id"])
        assert facts.processes, "the control container's processes were not read from the host"
        facts.ingress_from_host = {line: _status_line("127.0.0.1", ui_port, line) for line in PROXY_REQUESTS}
        facts.front_door = try_front_door(door_port, name, "x" * 43)
        facts.expected_sha = facts.weights_sha_before = sha256_of(weights)
        facts.weights_write = gateway.containers.exec_in(unsafe.name, ["python3", "-c", WRITE_WEIGHTS,
                                                                       "/models/control.gguf"])[1].strip()
        facts.weights_sha_after = sha256_of(weights)
        facts.limits = {"frontend": gateway.state.limits(unsafe.name)}
        facts.ingress_bindings = gateway.state.container_state(unsafe.name)["ports"]
        facts.route_localnet = route_localnet()
        return ({row.attack: row for row in judge(facts)},
                {row.attack: row for row in judge(_as_if_all_recorded(facts))}, facts)
    finally:
        for container in containers:
            container.remove(force=True)
        network.remove()


@pytest.mark.parametrize("attack", ROWS)
def test_the_probe_sees_each_way_out_where_there_is_one(attack, unsafe_verdicts):
    verdicts, as_if_recorded, _ = unsafe_verdicts
    row = verdicts[attack]
    assert row.verdict == "FAIL", f"{attack}: {row.verdict} {row.result}"
    if "sink" in row.checked_by:
        assert as_if_recorded[attack].verdict == "FAIL", f"{attack}: {as_if_recorded[attack].result}"


def test_the_control_saw_its_breaches_itself(unsafe_verdicts):
    """What the probe and the host saw, not only what the judge made of it."""
    _, _, facts = unsafe_verdicts
    probe = facts.probe
    assert isinstance(probe["dns"][facts.unique_name], list)  # the name resolved
    assert all(o.startswith("route-via-live-gateway") for o in probe["outside"].values()), probe["outside"]
    assert probe["tcp"][facts.other_sandbox_targets[0]] == "connected"
    assert facts.canary_hits and all(probe["tcp"][f"{h}:{facts.canary_port}"] == "connected"
                                     for h in facts.host_targets)
    assert [v["result"] for v in probe["ipv6"].values()] == ["has-default-route"]
    assert "WROTE" in facts.weights_write and facts.weights_sha_after != facts.weights_sha_before
    assert facts.front_door["flood"]["owner"] and all(a["status"] is None for a in facts.front_door["flood"]["owner"])


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
