"""On a machine whose engine has the NVIDIA runtime: the CUDA backend runs and
offloads its layers, and only the backend gets a GPU. Skipped elsewhere (the
container specs are checked without a GPU in tests/unit/test_spec.py)."""
from __future__ import annotations

import pytest

from launcher.commands.down import down
from launcher.commands.up import up
from tests.integration.conftest import ca_bundle, write_policy


@pytest.mark.gpu
def test_cuda_backend_offloads_its_layers(gateway, docker_client, tmp_path):
    if "nvidia" not in (docker_client.info().get("Runtimes") or {}):
        pytest.skip("the engine has no NVIDIA runtime")
    path = write_policy(tmp_path, backend={"gpu": "all", "gpu_layers": -1, "memory": "4g", "cpus": 4})
    result = up(gateway, path, ca_bundle=ca_bundle(), timeout=3600)
    try:
        backend = docker_client.api.inspect_container(f"sandbox-{result.name}-backend")
        requests = backend["HostConfig"]["DeviceRequests"]
        assert requests and requests[0]["Capabilities"] == [["gpu", "compute", "utility"]]
        for part in ("dns", "frontend", "ingress"):
            other = docker_client.api.inspect_container(f"sandbox-{result.name}-{part}")
            assert not other["HostConfig"]["DeviceRequests"], part
        log = "\n".join(gateway.containers.logs(f"sandbox-{result.name}-backend", tail="all"))
        assert "offloaded" in log and "CUDA" in log, log[-3000:]
    finally:
        down(gateway, result.name, volumes=True)
