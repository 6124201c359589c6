"""The build proxy's door to the engine (launcher/engine/build_proxy.py), on
the stand-in engine: each build gets its own internal network with the
hardened proxy as its only way out, both gone when the build ends, however
it ends; what the proxy let through is read back; builds whose launcher is
gone are swept, live ones are not."""
import json
import os
import socket
import subprocess

import pytest

from launcher.engine import DockerGateway
from launcher.engine.build_proxy import LABEL_BUILD, LABEL_BUILD_OWNER, BuildEgress
from launcher.errors import DockerFailure
from launcher.images import ImageBuild
from tests.unit.fake_engine import FakeApi, FakeClient

PROXY_IMAGE = ImageBuild(tag="sandbox-build-proxy:test")
EGRESS = BuildEgress(PROXY_IMAGE, host_addresses=("192.168.1.5",), allow_networks=("10.1.2.0/24",))


class ProxyEngine(FakeApi):
    """An engine on which a started build proxy says it listens, as the real
    one does once its port is open (or stays silent, `says_listening`)."""

    def __init__(self, says_listening: bool = True):
        super().__init__()
        self.says_listening = says_listening

    def start(self, container):
        super().start(container)
        if self.says_listening:
            self.add_log(container, json.dumps({"event": "listening", "port": 3128}))


def _build_parts(api: FakeApi) -> tuple[list, list]:
    label = {"label": LABEL_BUILD}
    return ([c["Name"].lstrip("/") for c in api.containers_held.values() if LABEL_BUILD in c["Config"]["Labels"]],
            [n for n in api.networks(filters=label)])


def test_a_build_gets_its_own_network_and_a_hardened_proxy_both_removed_after():
    api = ProxyEngine()
    proxy_door = DockerGateway(FakeClient(api)).build_proxy
    with proxy_door.running(EGRESS, ("deb.debian.org",)) as (url, network, proxy):
        held = api.containers_held[proxy]
        assert api.networks_held[network]["Labels"][LABEL_BUILD]
        address = held["NetworkSettings"]["Networks"][network]["IPAddress"]
        assert url == f"http://{address}:3128"
        config = held["HostConfig"]
        assert config["ReadonlyRootfs"] and config["CapDrop"] == ["ALL"] and config["PidsLimit"] == 64
        assert "no-new-privileges:true" in config["SecurityOpt"]
        env = dict(item.split("=", 1) for item in held["Config"]["Env"])
        assert env["SANDBOX_ALLOW_HOSTS"] == "deb.debian.org"
        assert env["SANDBOX_HOST_ADDRESSES"] == "192.168.1.5" and env["SANDBOX_ALLOW_NETWORKS"] == "10.1.2.0/24"
        assert held["State"]["Status"] == "running"
    assert _build_parts(api) == ([], [])
    create = next(kwargs for name, _, kwargs in api.calls if name == "create_network")
    assert create["internal"] and create["options"] == {"com.docker.network.bridge.inhibit_ipv4": "true"}


def test_the_network_and_proxy_go_when_the_build_fails():
    api = ProxyEngine()
    with pytest.raises(RuntimeError, match="the build broke"):
        with DockerGateway(FakeClient(api)).build_proxy.running(EGRESS, ()):
            raise RuntimeError("the build broke")
    assert _build_parts(api) == ([], [])


def test_a_proxy_with_no_address_on_the_build_network_is_an_error_and_nothing_is_left(monkeypatch):
    api = ProxyEngine(says_listening=False)
    monkeypatch.setattr(api, "connect_container_to_network", lambda *a, **k: None)  # it never joins
    with pytest.raises(DockerFailure, match="the build proxy did not start"):
        with DockerGateway(FakeClient(api)).build_proxy.running(EGRESS, ()):
            pytest.fail("a build ran with no proxy")
    assert _build_parts(api) == ([], [])


def test_what_the_proxy_let_through_or_refused_is_read_from_its_log():
    api = FakeApi()
    api.create_container("sandbox-build-proxy:test", name="p")
    allowed = {"verdict": "allowed", "host": "deb.debian.org", "port": 80}
    refused = {"verdict": "refused", "host": "10.0.0.1", "port": 22, "reason": "a private address"}
    for line in (json.dumps({"event": "listening"}), json.dumps(allowed), "not json at all", json.dumps(refused)):
        api.add_log("p", line)
    assert DockerGateway(FakeClient(api)).build_proxy.record("p") == [allowed, refused]


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_only_builds_whose_launcher_is_gone_from_this_machine_are_swept():
    api = FakeApi()
    here = socket.gethostname()
    owners = {"dead": f"{here}/{_dead_pid()}", "alive": f"{here}/{os.getpid()}",
              "elsewhere": "another-machine/1", "unreadable": "garbage"}
    for run, owner in owners.items():
        labels = {LABEL_BUILD: run, LABEL_BUILD_OWNER: owner}
        api.create_network(f"sandbox-build-{run}", labels=labels)
        api.create_container("sandbox-build-proxy:test", name=f"sandbox-build-{run}-proxy", labels=labels)
    removed = DockerGateway(FakeClient(api)).build_proxy.sweep_stale_builds()
    assert sorted(removed) == ["sandbox-build-dead", "sandbox-build-dead-proxy"]
    containers, networks = _build_parts(api)
    assert sorted(containers) == [f"sandbox-build-{run}-proxy" for run in ("alive", "elsewhere", "unreadable")]
    assert sorted(n["Name"] for n in networks) == [f"sandbox-build-{run}" for run in ("alive", "elsewhere",
                                                                                       "unreadable")]
