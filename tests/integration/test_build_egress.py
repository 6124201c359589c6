"""A shared policy's own front-end build, run for real: its RUN steps try the
host (a canary on every host address), directly and through the build proxy
they are given, and try cloud metadata and loopback through the proxy. None
of it arrives, every attempt is in the audit, and a `pip install` of a real
package through the proxy works (the control: the way out that is meant to
be open is open). What the engine itself would fetch for a build (ADD of a
URL, a base image from a registry on the host) is refused before anything
is built, and a request through the proxy reaches the host it asked for."""
from __future__ import annotations

import http.server
import json
import re
import threading
import uuid
from dataclasses import replace

import docker.errors
import pytest
import yaml

from launcher.builds import build_egress
from launcher.commands.audit import audit
from launcher.commands.down import down
from launcher.commands.up import up
from launcher.errors import PolicyError
from launcher.hostnet import Canary, host_ipv4_addresses
from launcher.images import _hashed, host_ca_bundle, recipe_image
from tests.integration.conftest import ca_bundle, labelled, write_policy

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
    if not gateway.state.image_present(image.tag):
        gateway.builder.build(image)
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
            hits = canary.hits_until_now()  # every connection the build made is counted by now
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


APT_UPDATE = "apt-get update --error-on=any -o Acquire::Retries=0"


def test_a_build_step_that_ignores_the_proxy_fails_saying_so(gateway, docker_client, tmp_path):
    """Control: the same fetch, through the proxy the build is given, works;
    so what stops the step below is going around the proxy, not the fetch."""
    from launcher.errors import BuildFailure
    from launcher.images import _hashed
    through = tmp_path / "through-the-proxy"
    through.mkdir()
    (through / "Dockerfile").write_text(f"FROM debian:bookworm-slim\nRUN {APT_UPDATE}\n")
    image = _hashed(f"sandbox-test-through-proxy-{uuid.uuid4().hex[:8]}", through, "Dockerfile", None)
    try:
        gateway.builder.build(image, egress=build_egress(ca_bundle()))
    finally:
        if gateway.state.image_present(image.tag):
            docker_client.images.remove(image.tag, force=True)

    around = tmp_path / "around-the-proxy"
    around.mkdir()
    (around / "Dockerfile").write_text(
        "FROM debian:bookworm-slim\n"
        f"RUN env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY {APT_UPDATE}\n")
    image = _hashed("sandbox-test-no-proxy", around, "Dockerfile", None)
    with pytest.raises(BuildFailure) as failed:
        gateway.builder.build(image, egress=build_egress(ca_bundle()))
    assert "only through the sandbox's build proxy" in str(failed.value)


def test_a_killed_builds_proxy_and_network_are_swept(gateway, docker_client):
    """A launcher killed mid-build never ran its cleanup: the next build
    removes what it left, and leaves a live build's alone."""
    import os
    import socket
    import subprocess
    import uuid

    from launcher.engine.build_proxy import LABEL_BUILD, LABEL_BUILD_OWNER
    from launcher.images import BASE_IMAGE
    gone = subprocess.Popen(["true"])
    gone.wait()
    host = socket.gethostname()
    # Names of this run's own: one a crashed run left behind is no part of this one.
    run = uuid.uuid4().hex[:8]
    stale_network, live_network = f"sandbox-build-stale-{run}", f"sandbox-build-live-{run}"
    stale_proxy = f"{stale_network}-proxy"
    stale = {LABEL_BUILD: f"stale-{run}", LABEL_BUILD_OWNER: f"{host}/{gone.pid}"}
    live = {LABEL_BUILD: f"live-{run}", LABEL_BUILD_OWNER: f"{host}/{os.getpid()}"}
    made = []
    try:
        made.append(docker_client.networks.create(stale_network, internal=True, labels=stale))
        made.append(docker_client.networks.create(live_network, internal=True, labels=live))
        made.append(docker_client.containers.create(BASE_IMAGE, ["true"], name=stale_proxy, labels=stale))
        removed = gateway.build_proxy.sweep_stale_builds()
        assert {stale_proxy, stale_network} <= set(removed)
        assert live_network not in removed
        left = {n.name for n in docker_client.networks.list(filters={"label": LABEL_BUILD})}
        assert live_network in left and stale_network not in left
    finally:
        for thing in made:
            try:
                thing.remove()
            except docker.errors.NotFound:  # the sweep removed it
                pass


# ---- what the engine fetches itself, outside the proxy ------------------

class HttpCanary:
    """An HTTP server on every address of the host: each path asked for is
    in `hits` (an ADD's download, a registry's /v2/ check)."""

    def __init__(self):
        hits = self.hits = []

        class Answer(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "7")
                self.end_headers()
                self.wfile.write(b"canary\n")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), Answer)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


# Each line the engine would fetch for itself, from the host's network: a
# service on the host's loopback, one on its own address, and a "registry"
# on loopback (the engine treats 127.0.0.0/8 as an insecure registry).
FETCHES = """FROM debian:bookworm-slim AS fetched
ADD http://127.0.0.1:{port}/loopback /loopback
ADD http://{host}:{port}/host-address /host-address
FROM 127.0.0.1:{port}/canary/base
COPY --from=fetched /loopback /host-address /
"""


def build_unchecked(docker_client, context) -> list[str]:
    """The Dockerfile built straight with the Docker SDK, as nothing of the
    launcher checks it; the layers it made are removed after."""
    before = {image.id for image in docker_client.images.list(all=True)}
    lines, made = [], []
    try:
        for chunk in docker_client.api.build(path=str(context), rm=True, forcerm=True, decode=True):
            text = chunk.get("stream") or chunk.get("error") or ""
            lines.append(text)
            made += re.findall(r"---> ([0-9a-f]{12})\b", text)
    finally:
        ids = {image.id.removeprefix("sha256:")[:12]: image.id for image in docker_client.images.list(all=True)
               if image.id not in before}
        # The last layer first: the engine keeps a layer that has children.
        for short in reversed(made):
            if short in ids:
                try:
                    docker_client.images.remove(ids[short], force=True)
                except docker.errors.ImageNotFound:
                    pass  # gone with the layer above it
    return lines


def test_what_the_engine_would_fetch_itself_is_refused_at_its_line_and_nothing_is_built(gateway, docker_client,
                                                                                       tmp_path):
    host = host_ipv4_addresses()[0]
    context = tmp_path / "ui"
    context.mkdir()
    with HttpCanary() as canary:
        (context / "Dockerfile").write_text(FETCHES.format(port=canary.port, host=host))
        path = write_policy(tmp_path, frontend={"build": {"context": "ui"}, "port": 8080, "health_path": "/health",
                                                "data": "/data"})
        name = yaml.safe_load(path.read_text())["name"]
        with pytest.raises(PolicyError) as refused:
            up(gateway, path, ca_bundle=ca_bundle(), timeout=60)
        # The build checks on its own too: `lock` and `verify` build without `up`'s reading of the policy.
        image = _hashed(f"sandbox-{name}-frontend", context, "Dockerfile", None)
        with pytest.raises(PolicyError) as refused_by_the_build:
            gateway.builder.build(image, egress=build_egress(ca_bundle()))
        seen_while_refused = list(canary.hits)
        made = labelled(docker_client, name)
        images = docker_client.images.list(name=f"sandbox-{name}-frontend")
        # The control: the same Dockerfile, built with nothing of ours in between, does reach the canaries.
        unchecked = build_unchecked(docker_client, context)
    for said in (str(refused.value), str(refused_by_the_build.value)):
        assert f"Dockerfile:2: ADD http://127.0.0.1:{canary.port}/loopback: a remote source" in said, said
        assert f"Dockerfile:3: ADD http://{host}:{canary.port}/host-address: a remote source" in said, said
        assert (f"Dockerfile:4: FROM 127.0.0.1:{canary.port}/canary/base: its registry 127.0.0.1 is an IP "
                f"address") in said, said
    assert seen_while_refused == []
    assert made == {"containers": [], "networks": [], "volumes": []} and images == []
    assert "/loopback" in canary.hits and "/host-address" in canary.hits, (canary.hits, unchecked)
    assert any(hit.startswith("/v2/") for hit in canary.hits), (canary.hits, unchecked)


def test_a_base_images_onbuild_trigger_is_checked_before_it_runs(gateway, docker_client, tmp_path):
    """A base image on this machine whose ONBUILD trigger would have the
    engine fetch from the host: the policy's Dockerfile alone cannot say so
    (`validate` passes it), the build refuses it before the trigger runs."""
    base, child = tmp_path / "base", tmp_path / "child"
    base.mkdir()
    child.mkdir()
    (child / "Dockerfile").write_text("FROM sandbox-test-onbuild-base:1\n")
    with HttpCanary() as canary:
        (base / "Dockerfile").write_text(f"FROM debian:bookworm-slim\n"
                                         f"ONBUILD ADD http://127.0.0.1:{canary.port}/onbuild /onbuild\n")
        docker_client.images.build(path=str(base), tag="sandbox-test-onbuild-base:1", rm=True)
        try:
            image = _hashed("sandbox-test-onbuild-child", child, "Dockerfile", None)
            with pytest.raises(PolicyError) as refused:
                gateway.builder.build(image, egress=build_egress(ca_bundle()))
            seen_while_refused = list(canary.hits)
            unchecked = build_unchecked(docker_client, child)  # the control: the trigger does fetch
        finally:
            for made in docker_client.images.list(name="sandbox-test-onbuild-child"):
                docker_client.images.remove(made.id, force=True)  # only if it was built, which it must not be
            docker_client.images.remove("sandbox-test-onbuild-base:1", force=True)
    assert str(refused.value).startswith(
        f"Dockerfile:1: FROM sandbox-test-onbuild-base:1: its trigger ONBUILD ADD "
        f"http://127.0.0.1:{canary.port}/onbuild: a remote source"), str(refused.value)
    assert seen_while_refused == []
    assert canary.hits == ["/onbuild"], unchecked


LEGITIMATE = """FROM debian:bookworm-slim AS fetched
RUN echo {name} > /built-for && apt-get update -qq && ls /var/lib/apt/lists > /lists
FROM {chat}
COPY --from=fetched /lists /opt/apt-lists
"""


def test_a_legitimate_build_runs_and_its_base_images_are_in_the_audit(gateway, docker_client, chat_image, tmp_path):
    context = tmp_path / "ui"
    context.mkdir()
    path = write_policy(tmp_path, frontend={"build": {"context": "ui"}, "port": 8080, "health_path": "/health",
                                            "data": "/data"})
    name = yaml.safe_load(path.read_text())["name"]
    # The sandbox's name makes the RUN step new to the engine's cache, so it runs, through the proxy.
    (context / "Dockerfile").write_text(LEGITIMATE.format(chat=chat_image, name=name))
    try:
        up(gateway, path, ca_bundle=ca_bundle() or host_ca_bundle(), timeout=300)
        report = audit(gateway, name)
    finally:
        down(gateway, name, volumes=True)
        for image in docker_client.images.list(name=f"sandbox-{name}-frontend"):
            docker_client.images.remove(image.id, force=True)
        # The first stage is no layer of the image: its layers go by the step that names this sandbox.
        for image in docker_client.images.list(all=True, filters={"dangling": True}):
            if any(name in (step.get("CreatedBy") or "") for step in image.history()):
                try:
                    docker_client.images.remove(image.id, force=True)
                except docker.errors.ImageNotFound:
                    pass  # gone with the layer above it
    [build] = [b for b in report["builds"] if "frontend" in b["parts"]]
    assert build["sources"] == [
        {"line": 1, "instruction": "FROM", "image": "debian:bookworm-slim",
         "id": docker_client.images.get("debian:bookworm-slim").id, "pulled": False},
        {"line": 3, "instruction": "FROM", "image": chat_image, "id": docker_client.images.get(chat_image).id,
         "pulled": False}]
    assert any(c["verdict"] == "allowed" and c["bytes_received"] > 0 for c in build["contacts"]), build


FRONTING = r"""
import os, socket, ssl
proxy = os.environ["https_proxy"].removeprefix("http://").rstrip("/").rsplit(":", 1)

def tunnel(host, server_name):
    with socket.create_connection((proxy[0], int(proxy[1])), timeout=20) as s:
        s.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
        assert s.recv(100).startswith(b"HTTP/1.1 200 ")
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname=server_name)
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        s.sendall(outgoing.read())
        print("tunnel", host, server_name, "ANSWERED" if s.recv(100) else "CLOSED", flush=True)

def plain(host, named):
    with socket.create_connection((proxy[0], int(proxy[1])), timeout=20) as s:
        s.sendall(f"GET http://{host}/ HTTP/1.1\r\nHost: {named}\r\n\r\n".encode())
        answer = s.recv(300)
        print("plain", host, named, "PROXY-REFUSED" if b"build proxy refused" in answer else "ANSWERED", flush=True)

tunnel("pypi.org", "example.org")
tunnel("pypi.org", "pypi.org")
plain("pypi.org", "example.org")
plain("pypi.org", "pypi.org")
"""


def test_a_build_cannot_front_another_host_through_an_allowed_one(gateway, docker_client, chat_image, tmp_path):
    """build.allow_hosts names pypi.org: a tunnel to it whose TLS asks for
    another server, and a plain request to it for another Host, are refused;
    the same requests for pypi.org itself go through (the control)."""
    (tmp_path / "front.py").write_text(FRONTING)
    (tmp_path / "Dockerfile").write_text(f"FROM {chat_image}\nCOPY front.py /front.py\nRUN python3 /front.py\n")
    image = replace(_hashed("sandbox-test-fronting", tmp_path, "Dockerfile", None), allow_hosts=("pypi.org",))
    lines = []
    try:
        contacts = gateway.builder.build(image, on_line=lines.append, egress=build_egress(ca_bundle()))
    finally:
        for built in docker_client.images.list(name="sandbox-test-fronting"):
            docker_client.images.remove(built.id, force=True)
    said = [line for line in lines if line.startswith(("tunnel ", "plain "))]
    assert said == ["tunnel pypi.org example.org CLOSED", "tunnel pypi.org pypi.org ANSWERED",
                    "plain pypi.org example.org PROXY-REFUSED", "plain pypi.org pypi.org ANSWERED"], lines[-20:]
    refused = [c for c in contacts if c["verdict"] == "refused"]
    assert [c.get("server_name") for c in refused if c["method"] == "CONNECT"] == ["example.org"], refused
    assert all("domain fronting" in c["reason"] for c in refused), refused
    assert any(c["verdict"] == "allowed" and c.get("server_name") == "pypi.org" for c in contacts), contacts
