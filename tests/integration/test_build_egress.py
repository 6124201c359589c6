"""A shared policy's own front-end build, run for real: its RUN steps try the
host (a canary on every host address), directly and through the build proxy
they are given, and try cloud metadata and loopback through the proxy. None
of it arrives, every attempt is in the audit, and a `pip install` of a real
package through the proxy works (the control: the way out that is meant to
be open is open)."""
from __future__ import annotations

import json

import pytest
import yaml

from launcher.commands.audit import audit
from launcher.commands.down import down
from launcher.commands.up import up
from launcher.hostnet import Canary, host_ipv4_addresses
from launcher.images import host_ca_bundle, recipe_image
from tests.integration.conftest import ca_bundle, write_policy

TRY_THE_HOST = r"""
import json, os, socket, sys
hosts, canary = json.loads(sys.argv[1]), int(sys.argv[2])
proxy = os.environ["http_proxy"].removeprefix("http://").rstrip("/").rsplit(":", 1)

def direct(host, port):
    try:
        socket.create_connection((host, port), timeout=3).close()
        return "REACHED"
    except OSError as e:
        return f"blocked ({e.__class__.__name__})"

def through_proxy(request):
    try:
        with socket.create_connection((proxy[0], int(proxy[1])), timeout=10) as s:
            s.sendall(request.encode() + b"\r\n\r\n")
            return s.recv(200).split(b"\r\n")[0].decode()
    except OSError as e:
        return f"error ({e})"

for host in hosts:
    print("direct", host, direct(host, canary), flush=True)
    print("proxy", host, through_proxy(f"CONNECT {host}:{canary} HTTP/1.1"), flush=True)
    print("proxy", host, through_proxy(f"CONNECT {host}:443 HTTP/1.1"), flush=True)
    print("proxy", host, through_proxy(f"GET http://{host}:80/ HTTP/1.1\r\nHost: {host}"), flush=True)
print("proxy metadata", through_proxy("GET http://169.254.169.254/latest/meta-data/ HTTP/1.1\r\nHost: x"))
print("proxy loopback", through_proxy("CONNECT localhost:443 HTTP/1.1"))
"""

DOCKERFILE = """FROM {chat}
USER root
COPY try_host.py ca.crt /build/
RUN python3 /build/try_host.py '{hosts}' {canary}
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-pip > /dev/null
RUN PIP_CERT=/build/ca.crt pip install --quiet --no-cache-dir --break-system-packages six
USER 65534:65534
"""


@pytest.fixture(scope="module")
def chat_image(gateway):
    image = recipe_image("chat", ca_bundle=ca_bundle())
    if not gateway.image_present(image.tag):
        gateway.build(image)
    return image.tag


def test_a_hostile_build_reaches_nothing_on_the_host_and_is_audited(gateway, docker_client, chat_image,
                                                                    tmp_path):
    hosts = host_ipv4_addresses()
    assert hosts, "the host has no IPv4 address to try"
    context = tmp_path / "ui"
    context.mkdir()
    (context / "try_host.py").write_text(TRY_THE_HOST)
    bundle = ca_bundle() or host_ca_bundle()  # what our own recipes trust
    (context / "ca.crt").write_bytes(bundle.read_bytes() if bundle else b"")
    lines = []
    with Canary() as canary:
        (context / "Dockerfile").write_text(DOCKERFILE.format(chat=chat_image, hosts=json.dumps(hosts),
                                                              canary=canary.port))
        path = write_policy(tmp_path, frontend={"build": {"context": "ui"}, "port": 8080, "health_path": "/health",
                                                "data": "/data"})
        name = yaml.safe_load(path.read_text())["name"]
        try:
            up(gateway, path, ca_bundle=bundle, on_build_line=lines.append, timeout=300)
            hits = list(canary.hits)
            report = audit(gateway, name)
            six = docker_client.containers.get(f"sandbox-{name}-frontend").exec_run(
                ["python3", "-c", "import six; print(six.__version__)"])
        finally:
            down(gateway, name, volumes=True)
            for image in docker_client.images.list(name=f"sandbox-{name}-frontend"):
                docker_client.images.remove(image.id, force=True)
    tried = [line for line in lines if line.startswith(("direct ", "proxy "))]
    assert hits == [], hits
    assert tried and not any("REACHED" in line or " 200 " in line for line in tried), tried
    assert all("403" in line for line in tried if line.startswith("proxy ")), tried
    # The control: the package index was reached through the proxy, and the package is in the image.
    assert six.exit_code == 0, six.output
    [build] = [b for b in report["builds"] if "frontend" in b["parts"]]
    refused = {(c["host"], c["port"]) for c in build["contacts"] if c["verdict"] == "refused"}
    for host in hosts:
        assert {(host, canary.port), (host, 443), (host, 80)} <= refused, (host, refused)
    assert ("169.254.169.254", 80) in refused and ("localhost", 443) in refused
    allowed = [c for c in build["contacts"] if c["verdict"] == "allowed"]
    assert any(c["port"] == 443 and c["bytes_received"] > 0 for c in allowed), allowed
    assert all(c["address"] not in hosts for c in allowed)


def test_a_build_step_that_ignores_the_proxy_fails_saying_so(gateway, tmp_path):
    from launcher.commands.up import build_egress
    from launcher.errors import BuildFailure
    from launcher.images import _hashed
    (tmp_path / "Dockerfile").write_text(
        "FROM debian:bookworm-slim\n"
        "RUN env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY apt-get update --error-on=any -o Acquire::Retries=0\n")
    image = _hashed("sandbox-test-no-proxy", tmp_path, "Dockerfile", None)
    with pytest.raises(BuildFailure) as failed:
        gateway.build(image, egress=build_egress(ca_bundle()))
    assert "only through the sandbox's build proxy" in str(failed.value)


def test_a_killed_builds_proxy_and_network_are_swept(gateway, docker_client):
    """A launcher killed mid-build never ran its cleanup: the next build
    removes what it left, and leaves a live build's alone."""
    import os
    import socket
    import subprocess

    from launcher.docker_gateway import LABEL_BUILD, LABEL_BUILD_OWNER
    from launcher.images import BASE_IMAGE
    gone = subprocess.Popen(["true"])
    gone.wait()
    host = socket.gethostname()
    stale = {LABEL_BUILD: "stale", LABEL_BUILD_OWNER: f"{host}/{gone.pid}"}
    live = {LABEL_BUILD: "live", LABEL_BUILD_OWNER: f"{host}/{os.getpid()}"}
    made = [docker_client.networks.create("sandbox-build-stale", internal=True, labels=stale),
            docker_client.networks.create("sandbox-build-live", internal=True, labels=live)]
    proxy = docker_client.containers.create(BASE_IMAGE, ["true"], name="sandbox-build-stale-proxy", labels=stale)
    try:
        removed = gateway.sweep_stale_builds()
        assert {"sandbox-build-stale-proxy", "sandbox-build-stale"} <= set(removed)
        assert "sandbox-build-live" not in removed
        left = {n.name for n in docker_client.networks.list(filters={"label": LABEL_BUILD})}
        assert "sandbox-build-live" in left and "sandbox-build-stale" not in left
    finally:
        for thing in [proxy, *made]:
            try:
                thing.remove()
            except Exception:  # noqa: BLE001 - already gone is fine
                pass
