"""The equivalence on the real engine: what Docker really grants the
running parts of a sandbox (from `docker inspect`) is what its spec grants,
and what the rendered Kubernetes manifests and compose file grant; and the
compose file, run by `docker-compose`, gives the same containers and a UI
that answers."""
from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from launcher import access
from launcher.policy import load_policy
from launcher.render import compose, kubernetes, render
from tests.integration.conftest import write_policy
from tests.support import grants


def inspected(docker_client, name: str) -> list[dict]:
    return [c.attrs for c in docker_client.containers.list(filters={"label": f"io.sandbox.name={name}"})]


def test_docker_grants_what_the_spec_and_the_rendered_manifests_grant(docker_client, sandbox):
    result, path = sandbox
    spec = result.prepared.spec
    running = grants.from_docker(inspected(docker_client, result.name))
    assert running == grants.from_spec(spec)
    policy = load_policy(path, check_port=False, check_model_files=False)
    files = {f"/models/{m.alias}.gguf": m.path.name for m in policy.models}
    assert grants.from_kubernetes(kubernetes.render(spec, kubernetes.KubeOptions("models"), files)) == \
        grants.on_kubernetes(running)
    assert grants.from_compose(compose.render(spec)) == running


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="needs docker-compose; .ci/run installs it")
def test_the_compose_file_runs_the_same_sandbox(docker_client, tmp_path):
    path = write_policy(tmp_path)
    text, spec = render(path, "compose")
    compose_file = tmp_path / "compose.yaml"
    compose_file.write_text(text)
    project = ["docker-compose", "-p", f"sandbox-{spec.name}", "-f", str(compose_file)]
    run = subprocess.run([*project, "up", "-d"], capture_output=True, text=True, check=False, timeout=300)
    try:
        assert run.returncode == 0, run.stderr
        assert grants.from_docker(inspected(docker_client, spec.name)) == grants.from_spec(spec)
        token = spec.container("ingress").env_value(access.TOKEN_ENV)
        deadline = time.monotonic() + 120
        while True:
            try:
                with access.open_ui(spec.url + "health", token, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the UI of the compose sandbox did not answer"
            time.sleep(0.5)
    finally:
        subprocess.run([*project, "down", "-v"], capture_output=True, check=False, timeout=300)
