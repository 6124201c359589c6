"""The build proxy: a build's only way out (docs/threats.md, "The build
step"), on a network of the build's own; what it let through or refused;
and the proxies and networks of builds whose launcher is gone."""
from __future__ import annotations

import os
import secrets
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass

from launcher.engine.calls import bounded_log, engine_call, remove_container, remove_network
from launcher.engine.containers import Containers
from launcher.engine.state import EngineState
from launcher.errors import DockerFailure
from launcher.images import ImageBuild
from launcher.text import json_records

# Marks the network and proxy of one image build, removed when it ends.
LABEL_BUILD = "io.sandbox.build"
LABEL_BUILD_OWNER = "io.sandbox.build-owner"  # HOST/PID of the launcher running the build
BUILD_PROXY_PORT = 3128


@dataclass(frozen=True)
class BuildEgress:
    """How builds get out: through a proxy run from this image, which refuses
    these addresses of the host besides every non-public one."""

    proxy_image: ImageBuild
    host_addresses: tuple[str, ...]
    # Non-public networks the machine's owner trusts for package mirrors.
    allow_networks: tuple[str, ...] = ()


class BuildProxy:
    def __init__(self, api, state: EngineState, containers: Containers):
        self.api = api
        self.state = state
        self.containers = containers

    @contextmanager
    def running(self, egress: BuildEgress, allow_hosts: tuple[str, ...]):
        """An internal network with no route to the host (like a sandbox's)
        and the build proxy on it, with the engine's NAT network as its own
        way out: yields the proxy's URL, the network and the proxy's name.
        Both are removed when the build ends. The proxy's image is built
        before (launcher/engine/builder.py)."""
        self.sweep_stale_builds()
        run = secrets.token_hex(4)
        network, proxy = f"sandbox-build-{run}", f"sandbox-build-{run}-proxy"
        labels = {LABEL_BUILD: run, LABEL_BUILD_OWNER: _owner()}
        with engine_call("preparing the build network"):
            self.api.create_network(network, driver="bridge", internal=True, labels=labels, enable_ipv6=False,
                                    options={"com.docker.network.bridge.inhibit_ipv4": "true"})
        try:
            with engine_call("starting the build proxy"):
                host_config = self.api.create_host_config(
                    read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges:true"],
                    tmpfs={"/tmp": "rw,noexec,nosuid,nodev,size=8m"}, pids_limit=64, mem_limit="128m",
                    network_mode="bridge", log_config=bounded_log("10m", 3), init=True)
                created = self.api.create_container(
                    egress.proxy_image.tag, name=proxy, labels=labels, host_config=host_config,
                    environment={"SANDBOX_ALLOW_HOSTS": ",".join(allow_hosts),
                                 "SANDBOX_HOST_ADDRESSES": ",".join(egress.host_addresses),
                                 "SANDBOX_ALLOW_NETWORKS": ",".join(egress.allow_networks),
                                 "SANDBOX_PROXY_PORT": str(BUILD_PROXY_PORT)})
                self.api.connect_container_to_network(created["Id"], network)
                self.api.start(created["Id"])
                address = self.state.addresses(proxy).get(network)
            deadline = time.monotonic() + 30
            while True:
                with engine_call("starting the build proxy"):
                    log = self.api.logs(proxy).decode(errors="replace")
                if '"listening"' in log:
                    break
                if time.monotonic() > deadline or not address:
                    raise DockerFailure(f"the build proxy did not start: {log[-500:]}")
                time.sleep(0.1)
            yield f"http://{address}:{BUILD_PROXY_PORT}", network, proxy
        finally:
            remove_container(self.api, proxy)
            remove_network(self.api, network)

    def record(self, proxy: str) -> list[dict]:
        """What the proxy let through or refused, one record per contact."""
        return list(json_records(self.containers.log_tail(proxy, lines=10_000), "verdict"))

    def sweep_stale_builds(self) -> list[str]:
        """Remove the build proxies and networks of builds whose launcher is
        gone (killed mid-build, so its cleanup never ran). Only those started
        on this machine: a live build's owner is a running process here."""
        removed = []
        label = {"label": LABEL_BUILD}
        with engine_call("looking for stale builds"):
            containers = self.api.containers(all=True, filters=label)
            networks = self.api.networks(filters=label)
        for item in containers:
            if _stale((item.get("Labels") or {}).get(LABEL_BUILD_OWNER)):
                name = item["Names"][0].lstrip("/")
                remove_container(self.api, name)
                removed.append(name)
        for item in networks:
            if _stale((item.get("Labels") or {}).get(LABEL_BUILD_OWNER)):
                remove_network(self.api, item["Name"])
                removed.append(item["Name"])
        return removed


def _owner() -> str:
    return f"{socket.gethostname()}/{os.getpid()}"


def _stale(owner: str | None) -> bool:
    """A build's owner that is a process of this machine that is gone."""
    host, _, pid = (owner or "").rpartition("/")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False
