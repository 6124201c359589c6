"""What each part of a sandbox is granted, in one description that every
engine's output reduces to: the spec (what the launcher means), the
containers Docker actually runs, the Kubernetes manifests and the compose
file `sandbox render` writes. tests/integration/test_render.py checks that
they are all equal, so that the targets cannot drift apart.

A grant is what a process in the part could use against the wall: its user,
a writable root, capabilities, privilege escalation, every mount and whether
it is writable, GPUs, the runtime, its memory and CPU, and which other parts
it can open connections to."""
from __future__ import annotations

from dataclasses import dataclass, replace

from launcher.spec import LABEL_PART, SandboxSpec, memory_bytes


@dataclass(frozen=True)
class Grants:
    user: str  # uid:gid
    writable_root: bool
    capabilities: frozenset[str]  # what is kept of the default set (none: everything dropped)
    can_escalate: bool  # no no-new-privileges
    mounts: frozenset[tuple[str, bool]]  # (path in the container, writable)
    gpus: bool
    runtime: str  # "runc" or "runsc"
    memory: int  # bytes
    millicpus: int
    peers: frozenset[str]  # parts it can connect to


def _kept(dropped: list[str], added: list[str] | None = None) -> frozenset[str]:
    if "ALL" in [d.upper() for d in dropped]:
        return frozenset(added or ())
    return frozenset({"DEFAULT"} | set(added or ()))


def _peers_by_networks(memberships: dict[str, set[str]]) -> dict[str, frozenset[str]]:
    """Parts that share a network reach each other (Docker's bridge semantics)."""
    return {part: frozenset(other for other, theirs in memberships.items() if other != part and nets & theirs)
            for part, nets in memberships.items()}


def from_spec(spec: SandboxSpec) -> dict[str, Grants]:
    peers = _peers_by_networks({c.part: {a.network for a in c.networks} for c in spec.containers})
    return {c.part: Grants(
        user=c.user, writable_root=not c.read_only, capabilities=_kept(list(c.cap_drop), list(c.cap_add)),
        can_escalate="no-new-privileges:true" not in c.security_opt or c.privileged,
        mounts=frozenset({(m.target, not m.read_only) for m in c.mounts} | {(t, True) for t, _ in c.tmpfs}),
        gpus=bool(c.gpus), runtime=c.runtime or "runc", memory=memory_bytes(c.memory), millicpus=int(c.cpus * 1000),
        peers=peers[c.part]) for c in spec.containers}


def on_kubernetes(intended: dict[str, Grants]) -> dict[str, Grants]:
    """The one difference a cluster makes, and the only one allowed: Pod
    Security `restricted` lets no container add a capability, so the sink
    runs as 65534 with none, answering DNS only (launcher/render/kubernetes.py)."""
    return {**intended, "dns": replace(intended["dns"], user="65534:65534", capabilities=frozenset())}


def from_docker(containers: list[dict]) -> dict[str, Grants]:
    """From `docker inspect` of a sandbox's running containers."""
    parts = {c["Config"]["Labels"][LABEL_PART]: c for c in containers}
    peers = _peers_by_networks({part: set(c["NetworkSettings"]["Networks"]) for part, c in parts.items()})
    out = {}
    for part, c in parts.items():
        host = c["HostConfig"]
        out[part] = Grants(
            user=c["Config"]["User"], writable_root=not host["ReadonlyRootfs"],
            capabilities=_kept(host.get("CapDrop") or [], host.get("CapAdd")),
            can_escalate="no-new-privileges:true" not in (host.get("SecurityOpt") or []) or host["Privileged"],
            mounts=frozenset({(m["Destination"], m["RW"]) for m in c["Mounts"]} |
                             {(t, True) for t in (host.get("Tmpfs") or {})}),
            gpus=bool(host.get("DeviceRequests")), runtime=host.get("Runtime") or "runc",
            memory=host["Memory"], millicpus=host["NanoCpus"] // 1_000_000, peers=peers[part])
    return out


def from_compose(document: dict) -> dict[str, Grants]:
    services = document["services"]
    peers = _peers_by_networks({part: set(s.get("networks") or {}) for part, s in services.items()})
    out = {}
    for part, s in services.items():
        devices = (((s.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices")
        out[part] = Grants(
            user=s["user"], writable_root=not s.get("read_only", False), capabilities=_kept(s.get("cap_drop") or [],
                                                                                           s.get("cap_add")),
            can_escalate="no-new-privileges:true" not in (s.get("security_opt") or []) or s.get("privileged", False),
            mounts=frozenset({(v["target"], not v.get("read_only", False)) for v in s.get("volumes") or []} |
                             {(t.split(":", 1)[0], True) for t in s.get("tmpfs") or []}),
            gpus=bool(devices), runtime=s.get("runtime", "runc"), memory=memory_bytes(s["mem_limit"]),
            millicpus=int(float(s["cpus"]) * 1000), peers=peers[part])
    return out


def from_kubernetes(objects: list[dict]) -> dict[str, Grants]:
    """From rendered manifests. The DNS sink rides in each pod as a sidecar:
    its grants are the sidecar's, and every pod reaches it on 127.0.0.1.
    Which pods reach which follows the NetworkPolicies (matchLabels only, as
    rendered): A reaches B when a policy selecting A allows egress to B and
    one selecting B allows ingress from A."""
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    policies = [o["spec"] for o in objects if o["kind"] == "NetworkPolicy"]
    pods = {d["metadata"]["name"]: d["spec"]["template"] for d in deployments}

    def selects(selector: dict, labels: dict) -> bool:
        return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())

    def allowed(source: dict, target: dict) -> bool:
        out = any(selects(p["podSelector"], source) and any(
            any(selects(peer.get("podSelector", {}), target) for peer in rule.get("to", []))
            for rule in p.get("egress", [])) for p in policies if "Egress" in p["policyTypes"])
        inward = any(selects(p["podSelector"], target) and any(
            any(selects(peer.get("podSelector", {}), source) for peer in rule.get("from", []))
            for rule in p.get("ingress", [])) for p in policies if "Ingress" in p["policyTypes"])
        return out and inward

    labels = {name: pod["metadata"]["labels"] for name, pod in pods.items()}
    reach = {name: {other for other in pods if other != name and allowed(labels[name], labels[other])}
             for name in pods}
    out = {}
    for name, pod in pods.items():
        spec = pod["spec"]
        main, sink = spec["containers"][0], next(c for c in spec["containers"] if c["name"] == "dns")
        out[name] = _container_grants(main, spec, frozenset(reach[name] | {"dns"}))
        out["dns"] = _container_grants(sink, spec, frozenset(pods))
    return out


def _container_grants(c: dict, pod: dict, peers: frozenset[str]) -> Grants:
    context = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    caps = context.get("capabilities") or {}
    limits = c["resources"]["limits"]
    return Grants(
        user=f"{context['runAsUser']}:{context['runAsGroup']}", writable_root=not context.get("readOnlyRootFilesystem"),
        capabilities=_kept(caps.get("drop") or [], caps.get("add")),
        can_escalate=context.get("allowPrivilegeEscalation", True) or context.get("privileged", False),
        mounts=frozenset((m["mountPath"], not m.get("readOnly", False)) for m in c.get("volumeMounts", [])
                         if m["name"] in volumes),
        gpus="nvidia.com/gpu" in limits, runtime="runsc" if pod.get("runtimeClassName") == "gvisor" else "runc",
        memory=memory_bytes(limits["memory"]), millicpus=int(limits["cpu"].rstrip("m")), peers=peers)
