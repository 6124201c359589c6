"""The front-end of a live sandbox cannot reach the host, the internet or DNS,
tried from inside its container."""
from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

PROBE = (Path(__file__).parent / "probe.py").read_text()


@pytest.fixture(scope="module")
def canary():
    """A listener on every address of the host; records who connects."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 0))
    server.listen()
    seen = []

    def accept():
        while True:
            try:
                conn, peer = server.accept()
            except OSError:
                return
            seen.append(peer)
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1], seen
    server.close()


def host_addresses(docker_client) -> set[str]:
    """docker0's gateway and every IPv4 address of the host's interfaces."""
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    addresses = {line.split()[3].split("/")[0] for line in out.splitlines()}
    for network in docker_client.networks.list():
        for config in (network.attrs.get("IPAM") or {}).get("Config") or []:
            if config.get("Gateway"):
                addresses.add(config["Gateway"])
    return addresses - {"127.0.0.1"}


def probe(docker_client, container: str, request: dict) -> dict:
    result = docker_client.containers.get(container).exec_run(["python3", "-c", PROBE, json.dumps(request)])
    assert result.exit_code == 0, result.output.decode()
    return json.loads(result.output)


def test_frontend_cannot_reach_host_services(sandbox, docker_client, canary):
    result, _ = sandbox
    port, seen = canary
    targets = sorted(host_addresses(docker_client))
    assert targets, "the host has no address to try"
    # The canary answers from outside a sandbox, so a refusal here is the sandbox's doing.
    socket.create_connection((targets[0], port), timeout=3).close()
    for _ in range(100):
        if seen:
            break
        time.sleep(0.05)
    assert seen, "the canary saw its own control connection"
    seen.clear()
    report = probe(docker_client, f"sandbox-{result.name}-frontend", {"tcp": [[a, port] for a in targets]})
    assert all(outcome != "connected" for outcome in report["tcp"].values()), report
    assert seen == []


def test_frontend_has_no_route_out(sandbox, docker_client):
    result, _ = sandbox
    report = probe(docker_client, f"sandbox-{result.name}-frontend",
                   {"outside": [["1.1.1.1", 443], ["169.254.169.254", 80], ["192.168.1.1", 80]]})
    for target, outcome in report["outside"].items():
        assert outcome.startswith("refused-or-unreachable") or outcome == "timeout", (target, report)


def test_frontend_cannot_resolve_external_names(sandbox, docker_client):
    result, _ = sandbox
    name = f"{uuid.uuid4().hex}.example.com"
    report = probe(docker_client, f"sandbox-{result.name}-frontend", {"dns": [name, "example.com"]})
    for lookup, outcome in report["dns"].items():
        assert isinstance(outcome, str) and outcome.startswith("no-answer"), (lookup, report)


def test_frontend_reaches_the_backend_by_name(sandbox, docker_client):
    """The probe's own control: what must work does."""
    result, _ = sandbox
    report = probe(docker_client, f"sandbox-{result.name}-frontend", {"tcp": [["backend", 8000]]})
    assert report["tcp"] == {"backend:8000": "connected"}


def test_ipv6_is_off_inside(sandbox, docker_client):
    result, _ = sandbox
    report = probe(docker_client, f"sandbox-{result.name}-frontend", {})
    assert report["ipv6_disabled"] is True
