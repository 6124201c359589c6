"""SandboxSpec -> a compose file with what the Docker gateway creates: the
same images, networks (the internal one with no route out and no address
on the host; the ingress one without NAT), read-only mounts and hardening.
For people who run compose by hand. The backend checks the weights' sha256
each time it starts, here too; `sandbox up` also checks them before it
creates the backend, naming the policy's file and line (docs/kubernetes.md)."""
from __future__ import annotations

from launcher.spec import LABEL_HASH, LABEL_PART, LABEL_POLICY, LABEL_SANDBOX, ContainerSpec, SandboxSpec, spec_hash


def render(spec: SandboxSpec) -> dict:
    networks = {}
    for net in spec.networks:
        entry: dict = {"name": net.name, "driver": "bridge", "internal": net.internal,
                       "driver_opts": dict(net.options),
                       "labels": {LABEL_SANDBOX: spec.name, LABEL_PART: net.part, LABEL_HASH: spec_hash(net)}}
        if net.subnet:
            entry["ipam"] = {"config": [{"subnet": net.subnet, **({"gateway": net.gateway} if net.gateway else {})}]}
        networks[net.part] = entry
    by_name = {net.name: net.part for net in spec.networks}
    volumes = {v.part: {"name": v.name, "labels": {LABEL_SANDBOX: spec.name, LABEL_PART: v.part}}
               for v in spec.volumes}
    volume_keys = {v.name: v.part for v in spec.volumes}
    services = {c.part: _service(spec, c, by_name, volume_keys) for c in spec.containers}
    return {"services": services, "networks": networks, "volumes": volumes}


def _service(spec: SandboxSpec, c: ContainerSpec, networks: dict[str, str], volumes: dict[str, str]) -> dict:
    service: dict = {
        "image": c.image,
        "container_name": c.name,
        "user": c.user,
        "read_only": c.read_only,
        "cap_drop": list(c.cap_drop),
        "security_opt": list(c.security_opt),
        "privileged": c.privileged,
        "init": c.init,
        "restart": c.restart[0],
        "mem_limit": c.memory,
        "memswap_limit": c.memory,  # no swap beyond the limit
        "cpus": c.cpus,
        "pids_limit": c.pids_limit,
        "tmpfs": [f"{target}:{options}" for target, options in c.tmpfs],
        "environment": dict(c.env),
        "labels": {LABEL_SANDBOX: spec.name, LABEL_PART: c.part, LABEL_HASH: spec_hash(c),
                   LABEL_POLICY: spec.policy_file},
        "logging": {"driver": "json-file", "options": {"max-size": c.log_max_size,
                                                       "max-file": str(c.log_max_files)}},
        "networks": {networks[a.network]: {k: v for k, v in (("aliases", list(a.aliases)),
                                                               ("ipv4_address", a.ipv4_address)) if v}
                     for a in c.networks},
    }
    if c.cap_add:
        service["cap_add"] = list(c.cap_add)
    if c.dns:
        service["dns"] = list(c.dns)
    if c.sysctls:
        service["sysctls"] = dict(c.sysctls)
    if c.ulimits:
        service["ulimits"] = {name: {"soft": soft, "hard": hard} for name, soft, hard in c.ulimits}
    if c.runtime:
        service["runtime"] = c.runtime
    if c.command:
        service["command"] = list(c.command)
    if c.ports:
        service["ports"] = [f"{p.host_ip}:{p.host_port}:{p.container_port}" + ("/udp" if p.protocol == "udp" else "")
                            for p in c.ports]
    if c.mounts:
        service["volumes"] = [
            {"type": m.kind, "source": volumes.get(m.source, m.source), "target": m.target,
             "read_only": m.read_only} for m in c.mounts]
    if c.healthcheck:
        # Compose reads $NAME in the file as its own variables: the ingress's
        # check names a shell variable ($status), passed on as $$.
        service["healthcheck"] = {"test": [part.replace("$", "$$") for part in c.healthcheck], "interval": f"{c.health_interval_s or 2}s", "timeout": "5s", "retries": 3,
                                  "start_period": "600s"}
    if c.gpus:
        device = {"driver": "nvidia", "capabilities": ["gpu", *c.gpu_capabilities]}
        if c.gpus == "all":
            device["count"] = "all"
        else:
            device["device_ids"] = list(c.gpus)
        service["deploy"] = {"resources": {"reservations": {"devices": [device]}}}
    return service
