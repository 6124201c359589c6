"""The engine as it is: its information, what its storage can bound, the
images it holds, and what it says of each sandbox and container."""
from __future__ import annotations

import secrets
from typing import Iterator

import docker
import docker.errors

from launcher.engine.calls import engine_call
from launcher.errors import DockerFailure, NotFound
from launcher.plan import Observed, ObservedContainer
from launcher.spec import LABEL_HASH, LABEL_PART, LABEL_POLICY, LABEL_SANDBOX, memory_bytes, resource_name

MIN_ENGINE = (20, 10)
# What the probe of volume sizes asks for: any size will do, none is written.
PROBE_VOLUME_SIZE = "1m"


class EngineState:
    def __init__(self, client: docker.DockerClient):
        self.client = client
        self.api = client.api
        self._volume_sizes: tuple[bool, str] | None = None

    # ---- the engine and its images ---------------------------------------
    def engine(self) -> dict:
        with engine_call("reading the engine's information"):
            info = self.client.info()
            version = self.client.version()
        runtimes = sorted((info.get("Runtimes") or {}).keys())
        return {
            "version": version.get("Version", "?"),
            "api_version": version.get("ApiVersion", "?"),
            "runtimes": runtimes,
            "cdi_spec_dirs": info.get("CDISpecDirs") or [],
        }

    def volume_sizes(self) -> tuple[bool, str]:
        """Whether the engine's local volume driver bounds a volume's size, and
        in the engine's words why not. It does only where its volumes
        directory is on XFS with project quotas, which no setting reports: a
        throwaway volume with a size is made (the driver refuses one it
        cannot enforce) and removed. Asked once per gateway."""
        if self._volume_sizes is None:
            name = f"sandbox-size-probe-{secrets.token_hex(6)}"
            with engine_call("asking the engine whether it can bound a volume's size"):
                try:
                    self.api.create_volume(name, driver="local", driver_opts={"size": PROBE_VOLUME_SIZE})
                except docker.errors.APIError as e:
                    self._volume_sizes = (False, str(e.explanation or e).replace(name, "a test volume"))
                else:
                    self.api.remove_volume(name, force=True)
                    self._volume_sizes = (True, "")
        return self._volume_sizes

    def volume_usage(self, name: str, count_bytes: bool = True) -> list[dict]:
        """The sandbox's volumes: each one's bytes in use (as the engine's
        `system df` counts them, which walks every volume: not asked with
        `count_bytes` off; None where it was not counted) and its size limit (None:
        unbounded)."""
        label = f"{LABEL_SANDBOX}={name}"
        with engine_call(f"reading the volumes of sandbox {name}"):
            volumes = self.api.volumes(filters={"label": label})["Volumes"] or []
            if not volumes:
                return []
            used = {v["Name"]: (v.get("UsageData") or {}).get("Size")
                    for v in (self.api.df().get("Volumes") or [] if count_bytes else [])}
        out = []
        for v in sorted(volumes, key=lambda v: v["Name"]):
            size = (v.get("Options") or {}).get("size")
            used_bytes = used.get(v["Name"])
            out.append({"name": v["Name"], "part": (v.get("Labels") or {}).get(LABEL_PART, ""),
                        "used_bytes": used_bytes if isinstance(used_bytes, int) and used_bytes >= 0 else None,
                        "limit_bytes": memory_bytes(size) if size else None})
        return out

    def engine_has_gpu(self) -> bool:
        # GPUs are requested from the "nvidia" device driver, which the NVIDIA
        # Container Toolkit provides together with its runtime.
        return "nvidia" in self.engine()["runtimes"]

    def image_present(self, tag: str) -> bool:
        return self.image_id(tag) is not None

    def image_id(self, tag: str) -> str | None:
        with engine_call(f"inspecting image {tag}", missing_ok=True):
            return self.api.inspect_image(tag)["Id"]
        return None

    def put_tag(self, tag: str, image_id: str | None) -> None:
        """Point `tag` at `image_id` again, or remove it (None)."""
        repository, _, name = tag.rpartition(":")
        if image_id is None:
            with engine_call(f"removing the tag {tag}", missing_ok=True):
                self.api.remove_image(tag, noprune=True)
        else:
            with engine_call(f"restoring the tag {tag}"):
                self.api.tag(image_id, repository, name, force=True)

    def save_images(self, tags: list[str]) -> Iterator[bytes]:
        """`docker save` of the tags, as a stream of tar bytes (layers shared
        between them come once)."""
        with engine_call("saving images"):
            # The SDK saves one image at a time; the engine's API takes several.
            response = self.api._get(self.api._url("/images/get"), params={"names": tags}, stream=True)
            self.api._raise_for_status(response)
            yield from response.iter_content(4 * 2**20)

    def load_images(self, source) -> None:
        """`docker load` from an open file."""
        with engine_call("loading images"):
            for item in self.api.load_image(_chunks(source)):
                if isinstance(item, dict) and item.get("error"):
                    raise DockerFailure(f"loading images: the Docker engine said: {item['error']}")

    # ---- sandboxes and their containers -----------------------------------
    def observe(self, name: str) -> Observed:
        """What the engine has for sandbox `name`, in one look: its networks,
        volumes and containers, each container with its environment (where
        the parts' shared keys are kept) and the host ports it publishes."""
        label = f"{LABEL_SANDBOX}={name}"
        with engine_call(f"reading the state of sandbox {name}"):
            networks = {n["Name"]: n["Labels"].get(LABEL_HASH, "")
                        for n in self.api.networks(filters={"label": label})}
            volumes = frozenset(v["Name"] for v in (self.api.volumes(filters={"label": label})["Volumes"] or []))
            listed = self.api.containers(all=True, filters={"label": label})
        containers = {}
        for c in listed:
            container, attrs = c["Names"][0].lstrip("/"), None
            with engine_call(f"inspecting {container}", missing_ok=True):
                attrs = self.api.inspect_container(container)
            if attrs is None:  # removed since it was listed
                continue
            containers[container] = ObservedContainer(
                spec_hash=c["Labels"].get(LABEL_HASH, ""), state=attrs["State"]["Status"],
                env=dict(item.partition("=")[::2] for item in attrs["Config"]["Env"] or []),
                ports=tuple(_published(attrs)))
        return Observed(networks=networks, volumes=volumes, containers=containers)

    def subnets(self) -> dict[str, list[str]]:
        """The IPv4 subnets of every network on the engine, by network name."""
        with engine_call("listing networks"):
            return {n["Name"]: [c["Subnet"] for c in ((n.get("IPAM") or {}).get("Config") or []) if c.get("Subnet")]
                    for n in self.api.networks()}

    def running_env(self, name: str, part: str, variable: str) -> str | None:
        """A variable of a part of a running sandbox: how its secrets are kept,
        so that recreating one part never leaves another with a stale key."""
        env = []
        with engine_call(f"reading sandbox {name}", missing_ok=True):
            env = self.api.inspect_container(resource_name(name, part))["Config"]["Env"] or []
        for item in env:
            key, _, value = item.partition("=")
            if key == variable:
                return value
        return None

    def sandboxes(self) -> dict[str, dict]:
        """Every sandbox on this engine, by name: its policy file and containers."""
        with engine_call("listing sandboxes"):
            found: dict[str, dict] = {}
            for c in self.api.containers(all=True, filters={"label": LABEL_SANDBOX}):
                name = c["Labels"][LABEL_SANDBOX]
                entry = found.setdefault(name, {"policy": c["Labels"].get(LABEL_POLICY, ""), "containers": {}})
                entry["containers"][c["Labels"].get(LABEL_PART, "?")] = c["Names"][0].lstrip("/")
            # A sandbox whose containers are gone still has its networks or its data.
            for listing in (self.api.networks(filters={"label": LABEL_SANDBOX}),
                            self.api.volumes(filters={"label": LABEL_SANDBOX})["Volumes"] or []):
                for item in listing:
                    name = (item.get("Labels") or {}).get(LABEL_SANDBOX)
                    if name:
                        found.setdefault(name, {"policy": (item.get("Labels") or {}).get(LABEL_POLICY, ""),
                                                "containers": {}})
            return found

    def container_state(self, name: str) -> dict | None:
        attrs = None
        with engine_call(f"inspecting {name}", missing_ok=True):
            attrs = self.api.inspect_container(name)
        if attrs is None:
            return None
        state = attrs["State"]
        return {
            "name": name,
            "state": state["Status"],
            "health": (state.get("Health") or {}).get("Status"),
            "exit_code": state.get("ExitCode"),
            "restarts": attrs.get("RestartCount", 0),
            "started_at": state.get("StartedAt"),
            "image": attrs["Config"]["Image"],
            "ports": _published(attrs),
            "pid": state.get("Pid"),
            "addresses": _addresses(attrs),
        }

    def bind_sources(self, name: str) -> list[str]:
        """The host paths bind-mounted into a container (a backend's models)."""
        mounts = []
        with engine_call(f"inspecting {name}", missing_ok=True):
            mounts = self.api.inspect_container(name).get("Mounts") or []
        return [m["Source"] for m in mounts if m.get("Type") == "bind"]

    def memory_usage(self, name: str) -> int | None:
        try:
            with engine_call(f"reading the memory use of {name}"):
                stats = self.api.stats(name, stream=False)
        except (NotFound, DockerFailure):  # stopped meanwhile: nothing in use to say
            return None
        # As `docker stats` shows it: without the page cache the kernel may
        # drop (inactive file pages), which a memory limit never kills for.
        memory = stats.get("memory_stats") or {}
        usage = memory.get("usage")
        if usage is None:
            return None
        detail = memory.get("stats") or {}
        return usage - detail.get("inactive_file", detail.get("total_inactive_file", 0))

    def addresses(self, container: str) -> dict[str, str]:
        """The container's IPv4 address on each of its networks."""
        with engine_call(f"inspecting {container}"):
            attrs = self.api.inspect_container(container)
        return _addresses(attrs)

    def limits(self, container: str) -> dict:
        with engine_call(f"inspecting {container}"):
            host = self.api.inspect_container(container)["HostConfig"]
        return {"pids": host.get("PidsLimit"), "memory": host.get("Memory")}

    def container_config(self, name: str) -> dict:
        """What the engine says a container may do: what `verify` checks
        from outside it, where the container has no say."""
        with engine_call(f"inspecting {name}"):
            attrs = self.api.inspect_container(name)
        host = attrs["HostConfig"]
        return {
            "id": attrs["Id"],
            "privileged": bool(host.get("Privileged")),
            "cap_add": list(host.get("CapAdd") or []),
            "cap_drop": list(host.get("CapDrop") or []),
            "security_opt": list(host.get("SecurityOpt") or []),
            "read_only": bool(host.get("ReadonlyRootfs")),
            "mounts": [{"type": m.get("Type"), "source": m.get("Source") or "", "destination": m.get("Destination"),
                        "rw": bool(m.get("RW"))} for m in attrs.get("Mounts") or []],
            "networks": sorted((attrs["NetworkSettings"].get("Networks") or {}).keys()),
            "runtime": host.get("Runtime"),
            "pids_limit": host.get("PidsLimit"),
            "memory": host.get("Memory"),
        }

    def container_pids(self, name: str) -> list[int]:
        """The host's PIDs of a container's processes, as the engine lists
        them (`docker top`). Under gVisor they are its own kernel's, not the host's."""
        with engine_call(f"listing the processes of {name}"):
            top = self.api.top(name)
        column = top["Titles"].index("PID")
        return [int(process[column]) for process in top.get("Processes") or []]


def _addresses(attrs: dict) -> dict[str, str]:
    """A container's IPv4 address on each of its networks, from its inspection."""
    networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    return {name: n["IPAddress"] for name, n in networks.items() if n.get("IPAddress")}


def _chunks(source, size: int = 4 * 2**20) -> Iterator[bytes]:
    while chunk := source.read(size):
        yield chunk


def _published(attrs: dict) -> list[str]:
    """The host ports a container publishes: TCP as "IP:PORT", first; others
    as "IP:PORT/udp"."""
    published = [((port.partition("/")[2] or "tcp"), f"{b.get('HostIp') or '0.0.0.0'}:{b['HostPort']}")
                 for port, bindings in (attrs["HostConfig"].get("PortBindings") or {}).items()
                 for b in bindings or []]
    return ([address for protocol, address in published if protocol == "tcp"]
            + [f"{address}/{protocol}" for protocol, address in published if protocol != "tcp"])
