"""The front-end cannot fill the host's disk through its data volume: where
the engine's storage bounds volumes, the volume has the policy's size; where
it cannot, `up` refuses unless the policy accepts an unbounded volume by name,
and `status` shows what each volume holds."""
from __future__ import annotations

import json
import time
import uuid

import docker.errors
import pytest
import yaml
from typer.testing import CliRunner

from launcher.cli import app
from tests.integration.conftest import ca_bundle, labelled, write_policy

MIB = 2**20
runner = CliRunner()


def engine_bounds_volumes(docker_client) -> bool:
    """Asked of the engine directly, not through the launcher: its local
    driver refuses a size it has no quota support for."""
    name = f"it-size-{uuid.uuid4().hex[:8]}"
    try:
        docker_client.volumes.create(name, driver="local", driver_opts={"size": "1m"})
    except docker.errors.APIError:
        return False
    docker_client.volumes.get(name).remove(force=True)
    return True


def unaccepted_policy(directory, **frontend):
    """The quick start without its acceptance of an unbounded data volume."""
    path = write_policy(directory)
    policy = yaml.safe_load(path.read_text())
    policy.pop("accept_unbounded_volumes", None)
    policy["frontend"].update(frontend)
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path, policy["name"]


def volume_of(gateway, name: str, part: str) -> dict:
    from launcher.commands.status import status
    [report] = status(gateway, name)
    return next(v for v in report["volumes"] if v["part"] == part)


def test_up_refuses_a_data_volume_the_engine_cannot_bound_unless_accepted(gateway, docker_client, tmp_path):
    if engine_bounds_volumes(docker_client):
        pytest.skip("this engine's storage bounds volume sizes: nothing to refuse "
                    "(test_the_front_end_cannot_write_past_its_volumes_size runs instead)")
    path, name = unaccepted_policy(tmp_path)
    try:
        run = runner.invoke(app, ["up", str(path)])
        assert run.exit_code == 2, run.output
        size_line = next(i for i, line in enumerate(path.read_text().splitlines(), 1) if "data_size:" in line)
        lines = [line for line in run.output.splitlines() if "frontend.data_size" in line]
        assert lines and lines[0].startswith(f"{path}:{size_line}:"), run.output
        assert "accept_unbounded_volumes: [data]" in run.output and "Traceback" not in run.output
        # Refused before anything was made.
        assert labelled(docker_client, name) == {"containers": [], "networks": [], "volumes": []}
    finally:
        from launcher.commands.down import down
        if any(labelled(docker_client, name).values()):
            down(gateway, name, volumes=True)


def test_an_accepted_unbounded_volume_starts_and_status_shows_it_grow(sandbox, gateway, docker_client):
    result, path = sandbox
    assert yaml.safe_load(path.read_text())["accept_unbounded_volumes"] == ["data"]
    data = volume_of(gateway, result.name, "data")
    bounded = engine_bounds_volumes(docker_client)
    assert (data["limit_bytes"] is not None) == bounded
    before = data["used_bytes"]
    assert before is not None
    frontend = result.prepared.spec.container("frontend")
    code, output = gateway.containers.exec_in(
        frontend.name, ["sh", "-c", "head -c 5242880 /dev/zero > /data/filler && sync"], user=frontend.user)
    assert code == 0, output
    deadline = time.monotonic() + 120
    while (used := volume_of(gateway, result.name, "data")["used_bytes"]) < before + 5 * MIB:
        assert time.monotonic() < deadline, f"status still shows {used} bytes in the data volume"
        time.sleep(0.5)
    run = runner.invoke(app, ["status", result.name])
    line = next(line for line in run.stdout.splitlines() if f"volume sandbox-{result.name}-data:" in line)
    assert "MiB used" in line and ("of at most" in line if bounded else "no size limit" in line)
    [report] = json.loads(runner.invoke(app, ["status", result.name, "--json"]).stdout)["sandboxes"]
    assert {v["part"] for v in report["volumes"]} == {"audit", "data"}


def test_the_front_end_cannot_write_past_its_volumes_size(gateway, docker_client, tmp_path):
    """As the front-end's own user, `dd` into the data volume: where the
    engine bounds volumes, it stops at the policy's size."""
    if not engine_bounds_volumes(docker_client):
        pytest.skip("this engine's storage cannot bound volume sizes (`sandbox doctor`); "
                    "test_up_refuses_a_data_volume_the_engine_cannot_bound_unless_accepted runs instead")
    from launcher.commands.down import down
    from launcher.commands.up import up
    path, name = unaccepted_policy(tmp_path, data_size="64m")
    result = up(gateway, path, ca_bundle=ca_bundle())
    try:
        frontend = result.prepared.spec.container("frontend")
        code, output = gateway.containers.exec_in(
            frontend.name, ["sh", "-c", "head -c 134217728 /dev/zero > /data/filler"], user=frontend.user)
        assert code != 0 and "space" in output.lower(), output
        data = volume_of(gateway, name, "data")
        assert data["limit_bytes"] == 64 * MIB and data["used_bytes"] <= 64 * MIB
    finally:
        down(gateway, name, volumes=True)


def test_doctor_says_what_the_engines_storage_can_enforce(docker_client):
    run = runner.invoke(app, ["doctor", "--json"])
    [check] = [c for c in json.loads(run.stdout)["checks"] if c["check"] == "volume sizes"]
    if engine_bounds_volumes(docker_client):
        assert check["result"] == "ok", check
    else:
        assert check["result"] == "warn" and "no quota support" in check["detail"], check
        assert "accept_unbounded_volumes: [data]" in check["detail"] and "project quotas" in check["fix"]
    assert not [v.name for v in docker_client.volumes.list() if v.name.startswith("sandbox-size-probe-")]


def test_a_volume_the_front_ends_image_declares_is_bounded_and_never_reaches_the_hosts_disk(
        sandbox, gateway, docker_client, tmp_path):
    """Tried as an attacker would: a brought image declares `VOLUME /scratch`
    owned by its user. Docker makes such a path an anonymous volume on the
    host's disk, writable despite the read-only root and bounded by nothing."""
    from launcher.commands.down import down
    from launcher.commands.up import up
    result, _ = sandbox
    tag = f"it-image-volume:{uuid.uuid4().hex[:8]}"
    dockerfile = (f"FROM {result.prepared.spec.images.frontend.tag}\nUSER 0:0\n"
                  "RUN mkdir /scratch && chown 65534:65534 /scratch\nVOLUME /scratch\nUSER 65534:65534\n")
    (tmp_path / "Dockerfile").write_text(dockerfile)
    docker_client.images.build(path=str(tmp_path), tag=tag, rm=True)
    path = write_policy(tmp_path)
    policy = yaml.safe_load(path.read_text())
    policy["frontend"] = {"image": tag, "health_path": "/health"}  # no frontend.data: nothing kept
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    try:
        started = up(gateway, path, ca_bundle=ca_bundle())
        frontend = started.prepared.spec.container("frontend")
        code, output = gateway.containers.exec_in(
            frontend.name, ["sh", "-c", "head -c 134217728 /dev/zero > /scratch/filler"], user=frontend.user)
        assert code != 0 and "space" in output.lower(), output
        code, output = gateway.containers.exec_in(
            frontend.name, ["sh", "-c", "rm /scratch/filler && head -c 1048576 /dev/zero > /scratch/small"],
            user=frontend.user)
        assert code == 0, output  # control: it stays writable, within its bound
        mounts = docker_client.api.inspect_container(frontend.name)["Mounts"]
        assert not [m for m in mounts if m["Type"] == "volume"], mounts
    finally:
        down(gateway, policy["name"], volumes=True)
        docker_client.images.remove(tag, force=True)


def test_no_part_can_dump_core(sandbox, docker_client):
    """Tried as an attacker would: the parts inherited the engine's core
    limit (hard: unlimited) and the front-end raised its own to unlimited;
    where the host's core_pattern pipes dumps to a handler, a crash-looping
    part writes dumps as large as its memory onto the host's disk."""
    result, _ = sandbox
    for part in ("frontend", "backend", "ingress", "dns"):
        container = docker_client.containers.get(f"sandbox-{result.name}-{part}")
        code, output = container.exec_run(["sh", "-c", "ulimit -Hc; ulimit -c unlimited 2>/dev/null && echo raised"])
        assert output.decode().split() == ["0"], (part, output)
    # The control: the same command where the engine's default applies.
    control = docker_client.containers.run(container.image, entrypoint=["sh", "-c", "ulimit -Hc"],
                                           remove=True, network_disabled=True)
    assert control.decode().strip() != "0"
