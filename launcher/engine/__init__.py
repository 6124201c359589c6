"""The Docker engine, behind doors by role; the only package that speaks to
it (`docker`). Each door is one class of a single job, and every call it
makes to the engine goes through one translation (calls.engine_call) into
errors a user can act on, an engine that does not answer included:

- `state`: the engine itself, its images, and what it says of sandboxes;
- `containers`: files, commands, logs and the probe in running containers;
- `builder`: image builds, each through `build_proxy`;
- `build_proxy`: a build's only way out, and the sweep of stale ones;
- `applier`: a Plan carried out, a sandbox removed."""
from __future__ import annotations

import docker

from launcher.engine.applier import Applier
from launcher.engine.build_proxy import BuildProxy
from launcher.engine.builder import Builder
from launcher.engine.calls import engine_call
from launcher.engine.containers import Containers
from launcher.engine.state import EngineState


class DockerGateway:
    """The doors to one engine; with no client, it connects to the one the
    environment names and asks it to answer."""

    def __init__(self, client: docker.DockerClient | None = None):
        if client is None:
            with engine_call("connecting to the engine"):
                client = docker.from_env(timeout=120)
                client.ping()
        self.client = client
        self.state = EngineState(client)
        self.containers = Containers(client.api)
        self.applier = Applier(client.api)
        self.build_proxy = BuildProxy(client.api, self.state, self.containers)
        self.builder = Builder(client.api, self.state, self.build_proxy)
