"""A Plan carried out on the engine: its networks, volumes and containers
removed and created in an order that is always safe, and a whole sandbox
removed."""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import docker.errors
from docker.types import DeviceRequest, IPAMConfig, IPAMPool, Mount as DockerMount, Ulimit

from launcher.engine.calls import Say, bounded_log, engine_call, quiet, remove_container, remove_network
from launcher.errors import SubnetTaken
from launcher.plan import CREATE, RECREATE, REMOVE, Plan
from launcher.spec import (LABEL_PART, LABEL_SANDBOX, PARTS, ContainerSpec, NetworkSpec, SandboxSpec, VolumeSpec,
                           image_volume_tmpfs, labels_for)

NANO = 1_000_000_000
# Parts whose first moments go through the DNS sink: started once it has.
AFTER_THE_SINK = frozenset({"frontend"})


def at_once(call: Callable, items: list) -> None:
    """`call(item)` for every item at once (the engine does each in its own
    time); the first failure is raised once every call has ended."""
    if len(items) <= 1:
        for item in items:
            call(item)
        return
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        calls = [pool.submit(call, item) for item in items]
    for done in calls:
        done.result()


class Applier:
    def __init__(self, api):
        self.api = api

    def apply(self, spec: SandboxSpec, plan: Plan, say: Say | None = None,
              before_create: Callable[[ContainerSpec], None] | None = None) -> None:
        """Carry out a plan's removals and creations (its images are built
        before: launcher/builds.py) in an order that is always safe: removals,
        then creations in dependency order. `before_create` is called right
        before each container is created, and may refuse it by raising."""
        say = quiet(say)

        for action in plan.actions:
            if action.kind == "container" and action.verb in (RECREATE, REMOVE):
                say(f"removing container {action.name} ({action.reason})")
                remove_container(self.api, action.name)
        for action in plan.actions:
            if action.kind == "network" and action.verb in (RECREATE, REMOVE):
                say(f"removing network {action.name} ({action.reason})")
                remove_network(self.api, action.name)
        networks = [net for net in spec.networks if plan.verb_of("network", net.name) in (CREATE, RECREATE)]
        for net in networks:
            say(f"creating network {net.name}")
        at_once(lambda net: self._create_network(spec, net), networks)
        for volume in spec.volumes:
            if plan.verb_of("volume", volume.name) == CREATE:
                say(f"creating volume {volume.name}")
                self._create_volume(spec, volume)
        created = []
        for container in sorted(spec.containers, key=lambda c: PARTS.index(c.part)):
            if plan.verb_of("container", container.name) in (CREATE, RECREATE):
                if before_create:
                    before_create(container)
                created.append((container, self._create(spec, container)))
        self._start(created, say)

    def _start(self, created: list[tuple[ContainerSpec, str]], say: Say) -> None:
        """Start the created containers, each as soon as what it needs runs:
        the front-end once the DNS sink has started, since its first lookups
        go to the sink and must be answered and recorded; the sink, the
        backend (whose model load is the longest wait of `up`) and the ingress
        (which finds the front-end by name at request time) at once."""
        def start(container: ContainerSpec, container_id: str) -> None:
            with engine_call(f"starting container {container.name}"):
                self.api.start(container_id)

        def submit(pool: ThreadPoolExecutor, container: ContainerSpec, container_id: str) -> Future:
            say(f"starting {container.part} ({container.name})")  # said here, so that lines never interleave
            return pool.submit(start, container, container_id)
        later = [(c, cid) for c, cid in created if c.part in AFTER_THE_SINK]
        with ThreadPoolExecutor(max_workers=max(len(created), 1)) as pool:
            now = {c.part: submit(pool, c, cid) for c, cid in created if c.part not in AFTER_THE_SINK}
            if "dns" in now:
                now["dns"].result()
            started = [*now.values(), *(submit(pool, c, cid) for c, cid in later)]
        for future in started:
            future.result()  # the first failure, once every start has ended

    def remove_sandbox(self, name: str, volumes: bool = False, say: Say | None = None) -> list[str]:
        """Remove everything labelled with the sandbox's name; the data volume
        only when asked. Returns what was removed."""
        say = quiet(say)
        label = f"{LABEL_SANDBOX}={name}"
        removed = []
        with engine_call(f"removing sandbox {name}"):
            containers = self.api.containers(all=True, filters={"label": label})
            # The ingress first, so the UI stops being reachable before it
            # stops; then the others at once.
            order = {"ingress": 0, "frontend": 1, "backend": 2, "dns": 3}
            parts = sorted(((c["Labels"].get(LABEL_PART), c["Names"][0].lstrip("/")) for c in containers),
                           key=lambda part_name: order.get(part_name[0], 3))
            first = [cname for part, cname in parts if part == "ingress"]
            rest = [cname for part, cname in parts if part != "ingress"]
            # A network none of the rest is on (the ingress's own, with the
            # published port) goes while they do: the engine removes
            # networks one after the other, each taking as long as a container.
            networks = [n["Name"] for n in self.api.networks(filters={"label": label})]
            kept_on = {network for c in containers if c["Labels"].get(LABEL_PART) != "ingress"
                       for network in ((c.get("NetworkSettings") or {}).get("Networks") or {})}
            groups = ([("container", cname) for cname in first],
                      [("container", cname) for cname in rest]
                      + [("network", network) for network in networks if network not in kept_on],
                      [("network", network) for network in networks if network in kept_on])
            removers = {"container": remove_container, "network": remove_network}
            for group in groups:
                for kind, item in group:
                    say(f"removing {kind} {item}")
                at_once(lambda kind_item: removers[kind_item[0]](self.api, kind_item[1]), group)
                removed.extend(f"{kind} {item}" for kind, item in group)
            if volumes:
                for v in self.api.volumes(filters={"label": label})["Volumes"] or []:
                    say(f"removing volume {v['Name']}")
                    self.api.remove_volume(v["Name"], force=True)
                    removed.append(f"volume {v['Name']}")
        return removed

    def _create_network(self, spec: SandboxSpec, net: NetworkSpec) -> None:
        with engine_call(f"creating network {net.name}"):
            ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=net.subnet, gateway=net.gateway)]) if net.subnet else None
            try:
                self.api.create_network(net.name, driver="bridge", internal=net.internal,
                                        options=dict(net.options), labels=labels_for(spec, net), ipam=ipam,
                                        enable_ipv6=False, check_duplicate=True)
            except docker.errors.APIError as e:
                if net.subnet and "overlaps" in str(e.explanation or e).lower():
                    raise SubnetTaken(f"creating network {net.name}: its subnet {net.subnet} was taken "
                                      f"meanwhile by another network") from None
                raise

    def _create_volume(self, spec: SandboxSpec, volume: VolumeSpec) -> None:
        with engine_call(f"creating volume {volume.name}"):
            self.api.create_volume(volume.name, driver="local", labels=labels_for(spec, volume),
                                   driver_opts={"size": volume.size} if volume.size else None)

    def _create(self, spec: SandboxSpec, c: ContainerSpec) -> str:
        """Create a container on its networks, not started; its ID."""
        device_requests = None
        if c.gpus:
            device_requests = [DeviceRequest(
                driver="nvidia", count=-1 if c.gpus == "all" else None,
                device_ids=None if c.gpus == "all" else list(c.gpus),
                capabilities=[["gpu", *c.gpu_capabilities]])]
        healthcheck = None
        if c.healthcheck:
            healthcheck = {"test": list(c.healthcheck), "interval": (c.health_interval_s or 2) * NANO, "timeout": 5 * NANO,
                           "retries": 3, "start_period": 600 * NANO}
        with engine_call(f"creating container {c.name}"):
            host_config = self.api.create_host_config(
                mounts=[DockerMount(target=m.target, source=m.source, type=m.kind, read_only=m.read_only)
                        for m in c.mounts],
                tmpfs=self._tmpfs_with_image_volumes_covered(c),
                port_bindings={f"{p.container_port}/{p.protocol}": (p.host_ip, p.host_port) for p in c.ports},
                read_only=c.read_only,
                cap_drop=list(c.cap_drop),
                cap_add=list(c.cap_add) or None,
                security_opt=list(c.security_opt),
                privileged=c.privileged,
                pids_limit=c.pids_limit,
                mem_limit=c.memory,
                memswap_limit=c.memory,  # no swap beyond the limit
                nano_cpus=int(c.cpus * NANO),
                restart_policy={"Name": c.restart[0], "MaximumRetryCount": c.restart[1]},
                device_requests=device_requests,
                dns=list(c.dns) or None,
                sysctls=dict(c.sysctls) or None,
                runtime=c.runtime,
                init=c.init,
                log_config=bounded_log(c.log_max_size, c.log_max_files),
                shm_size=c.shm_size,
                ulimits=[Ulimit(name=name, soft=soft, hard=hard) for name, soft, hard in c.ulimits] or None,
            )
            first, *rest = c.networks
            networking = self.api.create_networking_config({first.network: self.api.create_endpoint_config(
                aliases=list(first.aliases) or None, ipv4_address=first.ipv4_address)})
            created = self.api.create_container(
                image=c.image, command=list(c.command) if c.command else None, name=c.name, user=c.user,
                environment=[f"{k}={v}" for k, v in c.env], labels=labels_for(spec, c),
                ports=[(p.container_port, p.protocol) for p in c.ports] or None,
                host_config=host_config, networking_config=networking, healthcheck=healthcheck,
            )
            for attachment in rest:
                self.api.connect_container_to_network(created["Id"], attachment.network,
                                                      aliases=list(attachment.aliases) or None,
                                                      ipv4_address=attachment.ipv4_address)
        return created["Id"]

    def _tmpfs_with_image_volumes_covered(self, c: ContainerSpec) -> dict[str, str]:
        """The spec's tmpfs mounts, and a bounded one over each VOLUME the
        image declares where the spec mounts nothing (image_volume_tmpfs)."""
        with engine_call(f"inspecting image {c.image}"):
            declared = (self.api.inspect_image(c.image).get("Config") or {}).get("Volumes") or {}
        tmpfs = dict(c.tmpfs)
        mounted = {m.target.rstrip("/") for m in c.mounts} | {t.rstrip("/") for t in tmpfs}
        for path in sorted(declared):
            if path.rstrip("/") not in mounted:
                tmpfs[path] = image_volume_tmpfs(c.user)
        return tmpfs
