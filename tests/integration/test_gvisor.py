"""`runtime: gvisor`: the front-end and the CPU backend on gVisor's user-space
kernel. The sandbox answers as under runc, and every attack of the matrix is
stopped there too. Skipped when runsc is not registered with the engine."""
from __future__ import annotations

import pytest

from launcher.commands.down import down
from launcher.commands.up import up
from launcher.commands.verify import verify
from tests.integration.conftest import ca_bundle, ui_json, write_policy


@pytest.fixture(scope="module")
def gvisor_sandbox(gateway, docker_client, tmp_path_factory):
    if "runsc" not in (docker_client.info().get("Runtimes") or {}):
        pytest.skip("gVisor (runsc) is not registered with the engine; scripts/register-gvisor.sh does it")
    path = write_policy(tmp_path_factory.mktemp("gvisor"),
                        backend={"gpu": "none", "memory": "1g", "cpus": 2, "runtime": "gvisor"},
                        frontend={"recipe": "chat", "runtime": "gvisor"})
    result = up(gateway, path, ca_bundle=ca_bundle())
    yield result
    down(gateway, result.name, volumes=True)


def test_parts_run_on_gvisor(gvisor_sandbox, docker_client):
    for part in ("backend", "frontend"):
        attrs = docker_client.api.inspect_container(f"sandbox-{gvisor_sandbox.name}-{part}")
        assert attrs["HostConfig"]["Runtime"] == "runsc", part


def test_chat_is_answered_under_gvisor(gvisor_sandbox):
    answer = ui_json(gvisor_sandbox, "api/chat",
                     {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8})
    assert answer["reply"]["content"].strip()


def test_every_attack_is_stopped_under_gvisor(gvisor_sandbox, gateway):
    rows = verify(gateway, gvisor_sandbox.name, ca_bundle=ca_bundle()).rows
    assert [(r.attack, r.result) for r in rows if r.verdict in ("FAIL", "INCONCLUSIVE")] == []
    assert {r.attack for r in rows if r.verdict == "SKIP"} <= {"other sandboxes"}
    # The host cannot see the processes gVisor runs: what they are is the front-end's own word, and said so.
    [privileges] = [r for r in rows if r.attack == "privileges"]
    assert privileges.checked_by == ("engine", "front-end's word", "host")
