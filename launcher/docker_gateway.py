"""The only module that imports `docker`. It observes the engine, builds
images, applies a Plan, and reads state and logs; Docker's exceptions are
translated here into errors a user can act on."""
from __future__ import annotations

import hashlib
import io
import ipaddress
import os
import secrets
import shutil
import socket
import tarfile
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import docker
import docker.errors
import urllib3.exceptions
from docker.types import DeviceRequest, IPAMConfig, IPAMPool, LogConfig, Mount as DockerMount, Ulimit

from launcher import build_records, build_sources
from launcher.build_context import context_files
from launcher.errors import (BuildFailure, DockerFailure, DockerUnavailable, NotFound, PolicyError, Problem,
                             SandboxError, SubnetTaken)
from launcher.hostnet import host_ipv4_addresses
from launcher.images import EXTRA_CA_NAME, ImageBuild
from launcher.plan import CREATE, RECREATE, REMOVE, Observed, ObservedContainer, Plan
from launcher.text import json_records, one_line
from launcher.spec import (LABEL_HASH, LABEL_PART, LABEL_POLICY, LABEL_SANDBOX, PARTS,
                           ContainerSpec, NetworkSpec, SandboxSpec, VolumeSpec, image_volume_tmpfs, labels_for,
                           memory_bytes, resource_name)

Say = Callable[[str], None]
NANO = 1_000_000_000
# Marks images the launcher built (not a sandbox's: images outlive sandboxes).
LABEL_IMAGE = "io.sandbox.built-image"
# Marks the network and proxy of one image build, removed when it ends.
LABEL_BUILD = "io.sandbox.build"
LABEL_BUILD_OWNER = "io.sandbox.build-owner"  # HOST/PID of the launcher running the build
BUILD_PROXY_PORT = 3128
MIN_ENGINE = (20, 10)
# What the probe of volume sizes asks for: any size will do, none is written.
PROBE_VOLUME_SIZE = "1m"


# What a call raises when the engine does not answer: the SDK's own errors,
# and the connection's, which the SDK lets through as they are (requests'
# are OSErrors; urllib3's, from a stream cut short, are not).
_NO_ANSWER = (docker.errors.DockerException, OSError, urllib3.exceptions.HTTPError)


@contextmanager
def _engine(what: str, missing_ok: bool = False):
    """The one translation of what the engine answers (or does not) into
    errors a user can act on; every call to the engine is made inside it.
    With `missing_ok`, a thing the engine does not have ends the block
    quietly, and the code after it says what that means."""
    try:
        yield
    except docker.errors.NotFound as e:
        if not missing_ok:
            raise NotFound(f"{what}: {e.explanation or e}") from None
    except docker.errors.APIError as e:
        raise DockerFailure(f"{what}: the Docker engine said: {e.explanation or e}") from None
    except _NO_ANSWER as e:
        raise DockerUnavailable(f"{what}: the engine does not answer: {_short(e)}") from None


def _quiet(say: Say | None) -> Say:
    return say or (lambda _message: None)


class DockerGateway:
    def __init__(self, client: docker.DockerClient | None = None):
        if client is None:
            with _engine("connecting to the engine"):
                client = docker.from_env(timeout=120)
                client.ping()
        self.client = client
        self.api = client.api
        self._volume_sizes: tuple[bool, str] | None = None

    # ---- the engine -------------------------------------------------------
    def engine(self) -> dict:
        with _engine("reading the engine's information"):
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
            with _engine("asking the engine whether it can bound a volume's size"):
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
        with _engine(f"reading the volumes of sandbox {name}"):
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
        with _engine(f"inspecting image {tag}", missing_ok=True):
            return self.api.inspect_image(tag)["Id"]
        return None

    def put_tag(self, tag: str, image_id: str | None) -> None:
        """Point `tag` at `image_id` again, or remove it (None)."""
        repository, _, name = tag.rpartition(":")
        if image_id is None:
            with _engine(f"removing the tag {tag}", missing_ok=True):
                self.api.remove_image(tag, noprune=True)
        else:
            with _engine(f"restoring the tag {tag}"):
                self.api.tag(image_id, repository, name, force=True)

    def save_images(self, tags: list[str]) -> Iterator[bytes]:
        """`docker save` of the tags, as a stream of tar bytes (layers shared
        between them come once)."""
        with _engine("saving images"):
            # The SDK saves one image at a time; the engine's API takes several.
            response = self.api._get(self.api._url("/images/get"), params={"names": tags}, stream=True)
            self.api._raise_for_status(response)
            yield from response.iter_content(4 * 2**20)

    def load_images(self, source) -> None:
        """`docker load` from an open file."""
        with _engine("loading images"):
            for item in self.api.load_image(_chunks(source)):
                if isinstance(item, dict) and item.get("error"):
                    raise DockerFailure(f"loading images: the Docker engine said: {item['error']}")

    # ---- observe ----------------------------------------------------------
    def observe(self, name: str, images: tuple[str, ...] = ()) -> Observed:
        label = f"{LABEL_SANDBOX}={name}"
        with _engine(f"reading the state of sandbox {name}"):
            networks = {n["Name"]: n["Labels"].get(LABEL_HASH, "")
                        for n in self.api.networks(filters={"label": label})}
            volumes = frozenset(v["Name"] for v in (self.api.volumes(filters={"label": label})["Volumes"] or []))
            containers = {}
            for c in self.api.containers(all=True, filters={"label": label}):
                containers[c["Names"][0].lstrip("/")] = ObservedContainer(
                    spec_hash=c["Labels"].get(LABEL_HASH, ""), state=c["State"])
        present = frozenset(tag for tag in images if self.image_present(tag))
        return Observed(networks=networks, volumes=volumes, containers=containers, images=present)

    def subnets(self) -> dict[str, list[str]]:
        """The IPv4 subnets of every network on the engine, by network name."""
        with _engine("listing networks"):
            return {n["Name"]: [c["Subnet"] for c in ((n.get("IPAM") or {}).get("Config") or []) if c.get("Subnet")]
                    for n in self.api.networks()}

    def running_env(self, name: str, part: str, variable: str) -> str | None:
        """A variable of a part of a running sandbox: how its secrets are kept,
        so that recreating one part never leaves another with a stale key."""
        env = []
        with _engine(f"reading sandbox {name}", missing_ok=True):
            env = self.api.inspect_container(resource_name(name, part))["Config"]["Env"] or []
        for item in env:
            key, _, value = item.partition("=")
            if key == variable:
                return value
        return None

    def sandboxes(self) -> dict[str, dict]:
        """Every sandbox on this engine, by name: its policy file and containers."""
        with _engine("listing sandboxes"):
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
        with _engine(f"inspecting {name}", missing_ok=True):
            attrs = self.api.inspect_container(name)
        if attrs is None:
            return None
        state = attrs["State"]
        ports = []
        for bindings in (attrs["HostConfig"].get("PortBindings") or {}).values():
            ports += [f"{b.get('HostIp') or '0.0.0.0'}:{b['HostPort']}" for b in bindings or []]
        return {
            "name": name,
            "state": state["Status"],
            "health": (state.get("Health") or {}).get("Status"),
            "exit_code": state.get("ExitCode"),
            "restarts": attrs.get("RestartCount", 0),
            "started_at": state.get("StartedAt"),
            "image": attrs["Config"]["Image"],
            "ports": ports,
            "pid": state.get("Pid"),
            "addresses": _addresses(attrs),
        }

    def bind_sources(self, name: str) -> list[str]:
        """The host paths bind-mounted into a container (a backend's models)."""
        mounts = []
        with _engine(f"inspecting {name}", missing_ok=True):
            mounts = self.api.inspect_container(name).get("Mounts") or []
        return [m["Source"] for m in mounts if m.get("Type") == "bind"]

    def read_file(self, container: str, path: str) -> bytes | None:
        """A file from a container (running or stopped, from its volumes too),
        or None when the container or the file is not there."""
        data = None
        with _engine(f"reading {path} from {container}", missing_ok=True):
            stream, _ = self.api.get_archive(container, path)
            data = b"".join(stream)
        if data is None:
            return None
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            member = next((m for m in tar if m.isfile()), None)
            return tar.extractfile(member).read() if member else None

    def write_file(self, container: str, path: str, data: bytes, uid: int = 65534) -> None:
        """Write a file into a container (running or stopped; into its volumes too)."""
        directory, _, filename = path.rpartition("/")
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            info = tarfile.TarInfo(filename)
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), 0o644, uid, uid, int(time.time())
            tar.addfile(info, io.BytesIO(data))
        with _engine(f"writing {path} in {container}"):
            self.api.put_archive(container, directory or "/", out.getvalue())

    def memory_usage(self, name: str) -> int | None:
        try:
            with _engine(f"reading the memory use of {name}"):
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

    def logs(self, name: str, tail: int | str = 100, follow: bool = False,
             timestamps: bool = False) -> Iterator[str]:
        """A container's log lines; with `timestamps`, each begins with the
        time the engine took it (RFC 3339, nanoseconds, fixed width) and a space."""
        with _engine(f"reading the log of {name}"):
            self.api.inspect_container(name)
            if follow:
                buffer = b""
                for chunk in self.api.logs(name, stream=True, follow=True, tail=tail):
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        yield line.decode(errors="replace")
                if buffer:
                    yield buffer.decode(errors="replace")
            else:
                yield from self.api.logs(name, tail=tail, timestamps=timestamps).decode(errors="replace").splitlines()

    def log_tail(self, name: str, lines: int = 20) -> list[str]:
        try:
            return list(self.logs(name, tail=lines))
        except (NotFound, DockerFailure):
            return []

    def addresses(self, container: str) -> dict[str, str]:
        """The container's IPv4 address on each of its networks."""
        with _engine(f"inspecting {container}"):
            attrs = self.api.inspect_container(container)
        return _addresses(attrs)

    def limits(self, container: str) -> dict:
        with _engine(f"inspecting {container}"):
            host = self.api.inspect_container(container)["HostConfig"]
        return {"pids": host.get("PidsLimit"), "memory": host.get("Memory")}

    def exec_in(self, container: str, command: list[str], user: str = "") -> tuple[int, str]:
        with _engine(f"running a command in {container}"):
            exec_id = self.api.exec_create(container, command, user=user)["Id"]
            output = self.api.exec_start(exec_id)
            code = self.api.exec_inspect(exec_id)["ExitCode"]
        return code, output.decode(errors="replace")

    def container_config(self, name: str) -> dict:
        """What the engine says a container may do: what `verify` checks
        from outside it, where the container has no say."""
        with _engine(f"inspecting {name}"):
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
        with _engine(f"listing the processes of {name}"):
            top = self.api.top(name)
        column = top["Titles"].index("PID")
        return [int(process[column]) for process in top.get("Processes") or []]

    def run_probe(self, sandbox: str, image: str, target: ContainerSpec, request: str,
                  timeout: float = 180) -> str:
        """Run the probe in `target`'s network namespace, with `target`'s own
        restrictions, and return what it printed on its standard output.

        It runs in a PID namespace of its own and as a user that is neither
        `target`'s nor root, so that `target` can neither see it, signal it,
        nor write to its output (/proc/PID/fd/1), and its output comes back
        through the engine, which `target` cannot reach."""
        name = resource_name(sandbox, "probe")
        self._remove_container(name)
        with _engine(f"running the probe in {target.name}"):
            host_config = self.api.create_host_config(
                network_mode=f"container:{target.name}",
                read_only=True, cap_drop=list(target.cap_drop), security_opt=list(target.security_opt),
                tmpfs={"/tmp": "rw,noexec,nosuid,nodev,size=8m"}, pids_limit=64, mem_limit="128m",
                log_config=_bounded_log(target.log_max_size, target.log_max_files),
            )
            created = self.api.create_container(
                image=image, command=[request], name=name, user=probe_user(target.user), host_config=host_config,
                labels={LABEL_SANDBOX: sandbox, LABEL_PART: "probe"})
            try:
                self.api.start(created["Id"])
                status = self.api.wait(created["Id"], timeout=timeout)
                output = self.api.logs(created["Id"], stdout=True, stderr=False).decode(errors="replace")
                errors = self.api.logs(created["Id"], stdout=False, stderr=True).decode(errors="replace")
            finally:
                self._remove_container(name)
        if status.get("StatusCode") != 0:
            raise DockerFailure(f"the probe failed (exit {status.get('StatusCode')}): {(output + errors)[-2000:]}")
        return output

    # ---- build ------------------------------------------------------------
    def build(self, image: ImageBuild, on_line: Say | None = None, egress: BuildEgress | None = None,
              say: Say | None = None) -> list[dict]:
        """Build an image. With `egress`, its RUN steps run on a network of
        their own whose only way out is the build proxy, and what they
        contacted through it is returned (docs/threats.md, "The build step").
        What the engine itself would fetch for it is checked first
        (launcher/build_sources.py), and the images it uses are recorded."""
        dockerfile, used = self._checked(image, egress, on_line)
        if egress is None:
            self._build(image, dockerfile, on_line)
            build_records.save_sources(image.tag, used)
            return []
        with self._build_proxy(egress, image.allow_hosts, say) as (proxy_url, network, proxy):
            try:
                self._build(image, dockerfile, on_line, network=network, proxy_url=proxy_url)
            except BuildFailure as e:
                contacts = self._proxy_record(proxy)
                raise BuildFailure(image.tag, e.reason + _egress_hint(e, contacts, proxy_url), e.log_tail) from None
            build_records.save_sources(image.tag, used)
            return self._proxy_record(proxy)

    @contextmanager
    def _build_proxy(self, egress: BuildEgress, allow_hosts: tuple[str, ...], say: Say | None):
        """An internal network with no route to the host (like a sandbox's)
        and the build proxy on it, with the engine's NAT network as its own
        way out. Both are removed when the build ends."""
        # It has a way out and sees every build's traffic: it runs only as the launcher built it.
        proxy_id = self.image_id(egress.proxy_image.tag)
        if proxy_id is None or not build_records.may_run(egress.proxy_image.tag, proxy_id):
            _quiet(say)(f"building image {egress.proxy_image.tag} (the build proxy; the one build not behind it)")
            self._build(egress.proxy_image, self._checked(egress.proxy_image, None, None)[0], None)
            build_records.save(egress.proxy_image.tag, [], self.image_id(egress.proxy_image.tag))
        self.sweep_stale_builds()
        run = secrets.token_hex(4)
        network, proxy = f"sandbox-build-{run}", f"sandbox-build-{run}-proxy"
        labels = {LABEL_BUILD: run, LABEL_BUILD_OWNER: _owner()}
        with _engine("preparing the build network"):
            self.api.create_network(network, driver="bridge", internal=True, labels=labels, enable_ipv6=False,
                                    options={"com.docker.network.bridge.inhibit_ipv4": "true"})
        try:
            with _engine("starting the build proxy"):
                host_config = self.api.create_host_config(
                    read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges:true"],
                    tmpfs={"/tmp": "rw,noexec,nosuid,nodev,size=8m"}, pids_limit=64, mem_limit="128m",
                    network_mode="bridge", log_config=_bounded_log("10m", 3), init=True)
                created = self.api.create_container(
                    egress.proxy_image.tag, name=proxy, labels=labels, host_config=host_config,
                    environment={"SANDBOX_ALLOW_HOSTS": ",".join(allow_hosts),
                                 "SANDBOX_HOST_ADDRESSES": ",".join(egress.host_addresses),
                                 "SANDBOX_ALLOW_NETWORKS": ",".join(egress.allow_networks),
                                 "SANDBOX_PROXY_PORT": str(BUILD_PROXY_PORT)})
                self.api.connect_container_to_network(created["Id"], network)
                self.api.start(created["Id"])
                address = self.addresses(proxy).get(network)
            deadline = time.monotonic() + 30
            while True:
                with _engine("starting the build proxy"):
                    log = self.api.logs(proxy).decode(errors="replace")
                if '"listening"' in log:
                    break
                if time.monotonic() > deadline or not address:
                    raise DockerFailure(f"the build proxy did not start: {log[-500:]}")
                time.sleep(0.1)
            yield f"http://{address}:{BUILD_PROXY_PORT}", network, proxy
        finally:
            self._remove_container(proxy)
            self._remove_network(network)

    def sweep_stale_builds(self) -> list[str]:
        """Remove the build proxies and networks of builds whose launcher is
        gone (killed mid-build, so its cleanup never ran). Only those started
        on this machine: a live build's owner is a running process here."""
        removed = []
        label = {"label": LABEL_BUILD}
        with _engine("looking for stale builds"):
            containers = self.api.containers(all=True, filters=label)
            networks = self.api.networks(filters=label)
        for item in containers:
            if _stale((item.get("Labels") or {}).get(LABEL_BUILD_OWNER)):
                name = item["Names"][0].lstrip("/")
                self._remove_container(name)
                removed.append(name)
        for item in networks:
            if _stale((item.get("Labels") or {}).get(LABEL_BUILD_OWNER)):
                self._remove_network(item["Name"])
                removed.append(item["Name"])
        return removed

    def _proxy_record(self, proxy: str) -> list[dict]:
        return list(json_records(self.log_tail(proxy, lines=10_000), "verdict"))

    def _checked(self, image: ImageBuild, egress: BuildEgress | None,
                 on_line: Say | None) -> tuple[bytes, list[dict]]:
        """The image's Dockerfile, read once (the bytes checked are the bytes
        the engine gets), and the images its build uses, once what the
        engine itself would fetch for it is checked."""
        dockerfile, problems = build_sources.read_dockerfile(image.context, image.dockerfile)
        if dockerfile is None:
            raise PolicyError(problems)
        return dockerfile, self._images_for_build(image, dockerfile, egress, _quiet(on_line))

    def _build(self, image: ImageBuild, dockerfile: bytes, on_line: Say | None, network: str | None = None,
               proxy_url: str | None = None) -> None:
        on_line = _quiet(on_line)
        tail: list[str] = []
        # Docker's predefined proxy arguments: no Dockerfile needs to declare
        # them, and they stay out of the image's history and cache key.
        proxy_args = {name: proxy_url for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")} \
            if proxy_url else {}
        with tempfile.TemporaryFile() as context:
            _write_context(image, context, dockerfile)
            context.seek(0)
            with _engine(f"building image {image.tag}"):
                try:
                    stream = self.api.build(fileobj=context, custom_context=True, tag=image.tag,
                                            dockerfile=image.dockerfile, rm=True, forcerm=True,
                                            pull=False, decode=True, labels={LABEL_IMAGE: "1"},
                                            network_mode=network, buildargs=proxy_args or None)
                    for chunk in stream:
                        if "error" in chunk:
                            reason = chunk["error"].strip()
                            raise BuildFailure(image.tag, reason + _tls_hint(tail) + self._disk_hint(reason, tail),
                                               tail[-20:])
                        text = chunk.get("stream") or chunk.get("status") or ""
                        for line in text.splitlines():
                            if line.strip():
                                tail.append(line)
                                del tail[:-50]
                                on_line(line)
                except docker.errors.APIError as e:
                    reason = str(e.explanation or e)
                    raise BuildFailure(image.tag, reason + self._disk_hint(reason, tail), tail[-20:]) from None

    def _images_for_build(self, image: ImageBuild, dockerfile: bytes, egress: BuildEgress | None,
                          on_line: Say) -> list[dict]:
        """Refuse what the engine itself would fetch for the build from where
        it must not (launcher/build_sources.py); pull each image the build
        uses that is missing here, once its registry is checked, so that the
        ONBUILD triggers of each base image are checked before they run; and
        return those images, by name and ID."""
        name = image.dockerfile
        host_addresses = egress.host_addresses if egress else tuple(host_ipv4_addresses())
        allow_networks = egress.allow_networks if egress else ()
        held: dict[str, build_sources.BaseImage] = {}

        def hold(uses: list[build_sources.ImageUse]) -> None:
            for use in uses:
                if use.pulled and use.image not in held:
                    held[use.image] = self._base_image(use, name, host_addresses, allow_networks, on_line)

        found = build_sources.examine(dockerfile, name)
        if found.problems:
            raise PolicyError(found.problems)
        hold(found.images)
        # Again, with what the base images hold: their environment, which
        # variables may come from, and their ONBUILD triggers.
        found = build_sources.examine(dockerfile, name, held.get)
        if found.problems:
            raise PolicyError(found.problems)
        hold(found.images)
        return [{"line": use.line, "instruction": use.instruction, "image": use.image,
                 "id": held[use.image].id, "pulled": held[use.image].pulled}
                for use in found.images if use.pulled]

    def _base_image(self, use: build_sources.ImageUse, name: str, host_addresses: tuple[str, ...],
                    allow_networks: tuple[str, ...], on_line: Say) -> build_sources.BaseImage:
        pulled = False
        if not self.image_present(use.image):
            why = build_sources.registry_refusal(use.image, host_addresses, allow_networks)
            if why:
                raise PolicyError([Problem(name, use.line, 0, "", f"{use}: {why}")])
            on_line(f"pulling {use.image} ({use} at line {use.line} of {name})")
            with _engine(f"pulling {use.image}"):
                for item in self.api.pull(use.image, stream=True, decode=True):
                    if isinstance(item, dict) and item.get("error"):
                        raise DockerFailure(f"pulling {use.image} ({name}, line {use.line}): the Docker engine "
                                            f"said: {item['error']}")
            pulled = True
        with _engine(f"inspecting image {use.image}"):
            info = self.api.inspect_image(use.image)
        config = info.get("Config") or {}
        return build_sources.BaseImage(id=info["Id"], env=tuple(config.get("Env") or ()),
                                       onbuild=tuple(config.get("OnBuild") or ()), pulled=pulled)

    def _disk_hint(self, reason: str, tail: list[str]) -> str:
        """A build that ran out of disk says which disk, and what to do. The
        engine tags an image only when its build succeeds, so nothing is
        left half-built under the tag (tests/integration/test_faults.py)."""
        if "no space left on device" not in "\n".join([reason, *tail]).lower():
            return ""
        root = "Docker's data root"
        try:
            with _engine("reading where the engine keeps its data"):
                root = self.api.info().get("DockerRootDir") or root
        except SandboxError:
            pass  # the hint names the disk less precisely
        free = f", {shutil.disk_usage(root).free // 2**20} MiB free now" if os.path.isdir(root) else ""
        return (f"\nthe disk that holds Docker's images ({root}{free}) filled up during the build; "
                f"the image was not tagged. Free space (`docker image prune`, `docker builder prune`) "
                f"or give Docker a bigger data-root, then run the command again")

    # ---- apply ------------------------------------------------------------
    def apply(self, spec: SandboxSpec, plan: Plan, say: Say | None = None,
              before_create: Callable[[ContainerSpec], None] | None = None) -> None:
        """Carry out a plan's removals and creations (its images are built
        before: launcher/builds.py) in an order that is always safe: removals,
        then creations in dependency order. `before_create` is called right
        before each container is created, and may refuse it by raising."""
        say = _quiet(say)

        for action in plan.actions:
            if action.kind == "container" and action.verb in (RECREATE, REMOVE):
                say(f"removing container {action.name} ({action.reason})")
                self._remove_container(action.name)
        for action in plan.actions:
            if action.kind == "network" and action.verb in (RECREATE, REMOVE):
                say(f"removing network {action.name} ({action.reason})")
                self._remove_network(action.name)
        for net in spec.networks:
            if plan.verb_of("network", net.name) in (CREATE, RECREATE):
                say(f"creating network {net.name}")
                self._create_network(spec, net)
        for volume in spec.volumes:
            if plan.verb_of("volume", volume.name) == CREATE:
                say(f"creating volume {volume.name}")
                self._create_volume(spec, volume)
        for container in sorted(spec.containers, key=lambda c: PARTS.index(c.part)):
            if plan.verb_of("container", container.name) in (CREATE, RECREATE):
                say(f"starting {container.part} ({container.name})")
                if before_create:
                    before_create(container)
                self._create_and_start(spec, container)

    def remove_sandbox(self, name: str, volumes: bool = False, say: Say | None = None) -> list[str]:
        """Remove everything labelled with the sandbox's name; the data volume
        only when asked. Returns what was removed."""
        say = _quiet(say)
        label = f"{LABEL_SANDBOX}={name}"
        removed = []
        with _engine(f"removing sandbox {name}"):
            containers = self.api.containers(all=True, filters={"label": label})
            # The ingress first, so the UI stops being reachable before it stops.
            order = {"ingress": 0, "frontend": 1, "backend": 2, "dns": 3}
            for c in sorted(containers, key=lambda c: order.get(c["Labels"].get(LABEL_PART), 3)):
                cname = c["Names"][0].lstrip("/")
                say(f"removing container {cname}")
                self._remove_container(cname)
                removed.append(f"container {cname}")
            for n in self.api.networks(filters={"label": label}):
                say(f"removing network {n['Name']}")
                self._remove_network(n["Name"])
                removed.append(f"network {n['Name']}")
            if volumes:
                for v in self.api.volumes(filters={"label": label})["Volumes"] or []:
                    say(f"removing volume {v['Name']}")
                    self.api.remove_volume(v["Name"], force=True)
                    removed.append(f"volume {v['Name']}")
        return removed

    def _remove_container(self, name: str) -> None:
        with _engine(f"removing container {name}", missing_ok=True):
            self.api.remove_container(name, force=True, v=False)

    def _remove_network(self, name: str) -> None:
        with _engine(f"removing network {name}", missing_ok=True):
            info = self.api.inspect_network(name)
            # Something else joined it (a debugging container, say): detach it.
            for cid in (info.get("Containers") or {}):
                self.api.disconnect_container_from_network(cid, name, force=True)
            self.api.remove_network(info["Id"])

    def _create_network(self, spec: SandboxSpec, net: NetworkSpec) -> None:
        with _engine(f"creating network {net.name}"):
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
        with _engine(f"creating volume {volume.name}"):
            self.api.create_volume(volume.name, driver="local", labels=labels_for(spec, volume),
                                   driver_opts={"size": volume.size} if volume.size else None)

    def _create_and_start(self, spec: SandboxSpec, c: ContainerSpec) -> None:
        device_requests = None
        if c.gpus:
            device_requests = [DeviceRequest(
                driver="nvidia", count=-1 if c.gpus == "all" else None,
                device_ids=None if c.gpus == "all" else list(c.gpus),
                capabilities=[["gpu", *c.gpu_capabilities]])]
        healthcheck = None
        if c.healthcheck:
            healthcheck = {"test": list(c.healthcheck), "interval": 2 * NANO, "timeout": 5 * NANO,
                           "retries": 3, "start_period": 600 * NANO}
        with _engine(f"creating container {c.name}"):
            host_config = self.api.create_host_config(
                mounts=[DockerMount(target=m.target, source=m.source, type=m.kind, read_only=m.read_only)
                        for m in c.mounts],
                tmpfs=self._tmpfs_with_image_volumes_covered(c),
                port_bindings={p.container_port: (p.host_ip, p.host_port) for p in c.ports},
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
                log_config=_bounded_log(c.log_max_size, c.log_max_files),
                shm_size=c.shm_size,
                ulimits=[Ulimit(name=name, soft=soft, hard=hard) for name, soft, hard in c.ulimits] or None,
            )
            first, *rest = c.networks
            networking = self.api.create_networking_config({first.network: self.api.create_endpoint_config(
                aliases=list(first.aliases) or None, ipv4_address=first.ipv4_address)})
            created = self.api.create_container(
                image=c.image, command=list(c.command) if c.command else None, name=c.name, user=c.user,
                environment=[f"{k}={v}" for k, v in c.env], labels=labels_for(spec, c),
                ports=[p.container_port for p in c.ports] or None,
                host_config=host_config, networking_config=networking, healthcheck=healthcheck,
            )
            for attachment in rest:
                self.api.connect_container_to_network(created["Id"], attachment.network,
                                                      aliases=list(attachment.aliases) or None,
                                                      ipv4_address=attachment.ipv4_address)
            self.api.start(created["Id"])

    def _tmpfs_with_image_volumes_covered(self, c: ContainerSpec) -> dict[str, str]:
        """The spec's tmpfs mounts, and a bounded one over each VOLUME the
        image declares where the spec mounts nothing (image_volume_tmpfs)."""
        with _engine(f"inspecting image {c.image}"):
            declared = (self.api.inspect_image(c.image).get("Config") or {}).get("Volumes") or {}
        tmpfs = dict(c.tmpfs)
        mounted = {m.target.rstrip("/") for m in c.mounts} | {t.rstrip("/") for t in tmpfs}
        for path in sorted(declared):
            if path.rstrip("/") not in mounted:
                tmpfs[path] = image_volume_tmpfs(c.user)
        return tmpfs


def _write_context(image: ImageBuild, out, dockerfile: bytes) -> None:
    """The build context as a tar: the recipe's files (minus .dockerignore'd
    ones), its Dockerfile as `dockerfile` (the bytes that were checked),
    plus extra-ca.crt, the extra CA bundle or an empty file. The bytes
    written are hashed as they are written, as the image's tag was
    (launcher/build_context.py): a file changed since the tag was worked out,
    and the lock checked, is refused rather than built."""
    context = image.context
    digest = hashlib.sha256(f"dockerfile={image.dockerfile}\n".encode())
    with tarfile.open(fileobj=out, mode="w") as tar:
        # The same list the image's tag was hashed from (launcher/build_context.py).
        for rel in context_files(context, image.dockerfile):
            path = context / rel
            info = tar.gettarinfo(str(path), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.issym() and rel != image.dockerfile:
                digest.update(f"link={rel}\n".encode() + info.linkname.encode() + b"\n")
            if rel == image.dockerfile:
                if not info.isfile():  # refused by the policy's checks (launcher/build_context.py)
                    raise BuildFailure(image.tag, f"{rel} is not a plain file", [])
                # The bytes that were checked, sent, and hashed as the tag was.
                digest.update(f"file={rel}\n".encode() + hashlib.sha256(dockerfile).digest())
                info.size = len(dockerfile)
                tar.addfile(info, io.BytesIO(dockerfile))
            elif info.isfile():
                with open(path, "rb") as f:
                    sent = _Hashing(f)
                    tar.addfile(info, sent)
                digest.update(f"file={rel}\n".encode() + sent.digest.digest())
            else:
                tar.addfile(info)
        ca = image.ca_bundle.read_bytes() if image.ca_bundle else b""
        info = tarfile.TarInfo(EXTRA_CA_NAME)
        info.size = len(ca)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(ca))
    if image.inputs and digest.hexdigest() != image.inputs:
        raise BuildFailure(image.tag, "a file of its build context changed after it was checked (and its lock "
                                      "compared); nothing was built: run the command again to check it afresh", [])


class _Hashing:
    """A file read through a sha256: what tarfile copies is what is hashed."""

    def __init__(self, source):
        self.source = source
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.digest.update(data)
        return data


@dataclass(frozen=True)
class BuildEgress:
    """How builds get out: through a proxy run from this image, which refuses
    these addresses of the host besides every non-public one."""

    proxy_image: ImageBuild
    host_addresses: tuple[str, ...]
    # Non-public networks the machine's owner trusts for package mirrors.
    allow_networks: tuple[str, ...] = ()


# What a build's own failure says when it tried to get out some other way.
_NETWORK_TROUBLE = ("temporary failure", "could not resolve", "name resolution", "name or service not known",
                    "network is unreachable", "no route to host", "connection refused",
                    "failed to establish a new connection", "could not connect", "403 forbidden", "timed out")


def _egress_hint(failure: BuildFailure, contacts: list[dict], proxy_url: str) -> str:
    refused = [c for c in contacts if c.get("verdict") != "allowed"]
    text = "\n".join([failure.reason, *failure.log_tail]).lower()
    if not refused and not any(t in text for t in _NETWORK_TROUBLE):
        return ""
    hint = ("\nthe build can reach the network only through the sandbox's build proxy, which it is given as "
            f"http_proxy and https_proxy ({proxy_url}); a step that ignores those variables reaches nothing")
    for c in refused[:10]:
        hint += f"\n  the proxy refused {c.get('host')}:{c.get('port')}: {c.get('reason')}"
    private = [c for c in refused if "private address" in str(c.get("reason")) or "not a public" in str(c.get("reason"))]
    if private:
        networks = ",".join(dict.fromkeys(_refused_network(c) for c in private))
        hint += ("\nif that is your package mirror, name its network for builds: "
                 f"SANDBOX_BUILD_ALLOW_NETWORKS={networks} (scripts/mirror-networks.sh prints your apt mirrors' "
                 "networks)")
    return hint


def _refused_network(contact: dict) -> str:
    """The one-address network of what the proxy refused: its reason begins
    with the address ("10.1.2.3 is a private address ..."), else the first
    address the name resolved to."""
    for word in [str(contact.get("reason")).split(" ", 1)[0], *(contact.get("addresses") or [])]:
        try:
            address = ipaddress.ip_address(word)
        except ValueError:
            continue
        return f"{address}/{address.max_prefixlen}"
    return "ADDRESS/32"


_TLS_TROUBLE = ("certificate verify failed", "certificate_verify_failed", "self-signed certificate",
                "unable to get local issuer certificate", "x509: certificate")


def _tls_hint(tail: list[str]) -> str:
    text = "\n".join(tail).lower()
    if not any(t in text for t in _TLS_TROUBLE):
        return ""
    return ("\nthe build could not verify a TLS certificate: this network may intercept TLS. Point --ca-bundle "
            "(or SANDBOX_CA_BUNDLE) at the CA bundle it uses; the host's own CAs are trusted unless SANDBOX_HOST_CA=0")


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


def _addresses(attrs: dict) -> dict[str, str]:
    """A container's IPv4 address on each of its networks, from its inspection."""
    networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    return {name: n["IPAddress"] for name, n in networks.items() if n.get("IPAddress")}


def _chunks(source, size: int = 4 * 2**20) -> Iterator[bytes]:
    while chunk := source.read(size):
        yield chunk


PROBE_UIDS = (65533, 65532)


def probe_user(target_user: str) -> str:
    """A user for the probe that is neither the target's nor root."""
    target_uid = target_user.split(":", 1)[0]
    uid = next(u for u in PROBE_UIDS if str(u) != target_uid)
    return f"{uid}:{uid}"


def _bounded_log(max_size: str, max_files: int) -> LogConfig:
    return LogConfig(type=LogConfig.types.JSON, config={"max-size": max_size, "max-file": str(max_files)})


def _short(e: Exception) -> str:
    return one_line(str(e), limit=300)
