"""A stand-in for the Docker engine in unit tests: a plain-Python client with
the calls DockerGateway makes (on the client and on `client.api`), holding
containers, networks, volumes and images in dicts, and recording every call.
Enough for a quick-start sandbox to be observed, applied and waited for, and
for what `verify`, `status`, `audit` and `down` read of it: containers'
HostConfig and mounts as the engine reports them, files in containers, logs,
processes, memory use, and what a container or an exec prints (`programs`,
`execs`: plain functions a test gives)."""
from __future__ import annotations

import io
import itertools
import tarfile
from typing import Callable

import docker.errors
import docker.utils

# The SDK's helpers that build a request's body on this side: no request is made.
NOT_REQUESTS = frozenset({"create_host_config", "create_networking_config", "create_endpoint_config"})
# What a test calls to set the engine up: not the gateway's calls, so not recorded.
SETTING_UP = frozenset({"requests", "add_image", "add_file", "add_log", "file"})
# What a container run from an image prints: (exit code, stdout, stderr), from its command.
Program = Callable[[list], "tuple[int, str, str]"]
# What a command run in a container prints: (exit code, output), from the command.
Exec = Callable[[list], "tuple[int, str]"]


def _missing(what: str) -> docker.errors.NotFound:
    return docker.errors.NotFound(f"No such {what}", explanation=f"No such {what}")


def _matches(labels: dict, filters: dict | None) -> bool:
    wanted = (filters or {}).get("label") or []
    for label in [wanted] if isinstance(wanted, str) else wanted:
        key, has_value, value = label.partition("=")
        if key not in labels or (has_value and labels[key] != value):
            return False
    return True


class FakeApi:
    """The low-level client (`client.api`): what the engine holds, and `calls`,
    each (method, args, kwargs) in the order made."""

    def __init__(self, runtimes: tuple[str, ...] = ("runc",)):
        self.calls: list[tuple[str, tuple, dict]] = []
        self.runtimes = runtimes
        self.containers_held: dict[str, dict] = {}
        self.networks_held: dict[str, dict] = {}
        self.volumes_held: dict[str, dict] = {}
        self.images_held: dict[str, str] = {}  # tag -> image id
        self.build_outputs: dict[str, list[dict]] = {}  # tag -> what its build prints
        self.contexts_built: dict[str, dict[str, bytes]] = {}  # tag -> the files of its build context
        self.files_held: dict[str, dict[str, bytes]] = {}  # container name -> path -> bytes
        self.logs_held: dict[str, list[tuple[str, str]]] = {}  # container -> (timestamp, line)
        self.processes_held: dict[str, list[int]] = {}  # container -> the host's PIDs of its processes
        self.memory_held: dict[str, tuple[int, int]] = {}  # container -> (usage, inactive file pages)
        self.programs: dict[str, Program] = {}  # image tag -> what a container of it prints
        self.execs: dict[str, Exec] = {}  # container -> what a command run in it prints
        self._execs_made: dict[str, tuple] = {}  # exec id -> (container, command[, exit code])
        self._ids = itertools.count(1)

    def __getattribute__(self, name):
        value = object.__getattribute__(self, name)
        if name.startswith("_") or not callable(value) or name in SETTING_UP:
            return value
        calls = object.__getattribute__(self, "calls")

        def recorded(*args, **kwargs):
            calls.append((name, args, kwargs))
            return value(*args, **kwargs)
        return recorded

    def requests(self) -> list[str]:
        """The calls that are requests to the engine, by method name."""
        return [name for name, _, _ in self.calls if name not in NOT_REQUESTS]

    def _next_address(self) -> str:
        return f"172.31.0.{next(self._ids) % 250 + 2}"  # as the engine gives one where none is asked for

    def add_image(self, tag: str) -> str:
        image_id = f"sha256:{next(self._ids):064x}"
        self.images_held[tag] = image_id
        return image_id

    def add_file(self, container: str, path: str, data: bytes) -> None:
        self.files_held.setdefault(container, {})[path] = data

    def file(self, container: str, path: str) -> bytes | None:
        return self.files_held.get(container, {}).get(path)

    def add_log(self, container: str, line: str, timestamp: str = "2026-11-29T20:55:01.000000000Z") -> None:
        self.logs_held.setdefault(container, []).append((timestamp, line))

    # ---- the engine ----
    def ping(self):
        return True

    def info(self):
        return {"Runtimes": {r: {} for r in self.runtimes}, "CDISpecDirs": []}

    def version(self):
        return {"Version": "27.1.0", "ApiVersion": "1.46"}

    # ---- images ----
    def inspect_image(self, tag):
        if tag not in self.images_held:
            raise _missing(f"image: {tag}")
        return {"Id": self.images_held[tag], "Config": {"Volumes": None}}

    def build(self, fileobj=None, custom_context=False, tag=None, dockerfile="Dockerfile", decode=False, **kwargs):
        """A build: the context is read as the engine reads it; its output is
        what `build_outputs[tag]` says (a list of chunks), and the image is
        tagged only when no chunk is an error, as the engine does."""
        with tarfile.open(fileobj=fileobj) as tar:
            self.contexts_built[tag] = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        chunks = self.build_outputs.get(tag, [{"stream": "Step 1/1 : FROM scratch\n"}])

        def output():
            for chunk in chunks:
                yield chunk
                if "error" in chunk:
                    return
            self.add_image(tag)
        return output()

    def pull(self, image, stream=False, decode=False):
        self.add_image(image)
        return iter([{"status": f"Pulling from {image}"}, {"status": "Download complete"}])

    # ---- volumes ----
    def create_volume(self, name, driver="local", driver_opts=None, labels=None):
        self.volumes_held[name] = {"Name": name, "Labels": dict(labels or {}), "Options": dict(driver_opts or {})}
        return self.volumes_held[name]

    def remove_volume(self, name, force=False):
        if self.volumes_held.pop(name, None) is None:
            raise _missing(f"volume: {name}")

    def volumes(self, filters=None):
        return {"Volumes": [v for v in self.volumes_held.values() if _matches(v["Labels"], filters)]}

    def df(self):
        return {"Volumes": [{"Name": n, "UsageData": {"Size": 0}} for n in self.volumes_held]}

    # ---- networks ----
    def networks(self, filters=None):
        return [n for n in self.networks_held.values() if _matches(n["Labels"], filters)]

    def create_network(self, name, driver="bridge", internal=False, options=None, labels=None, ipam=None,
                       enable_ipv6=False, check_duplicate=True):
        config = [{"Subnet": pool.get("Subnet")} for pool in (ipam or {}).get("Config", [])]
        self.networks_held[name] = {"Name": name, "Id": name, "Labels": dict(labels or {}),
                                    "IPAM": {"Config": config}, "Containers": {}}
        return {"Id": name}

    def inspect_network(self, name):
        if name not in self.networks_held:
            raise _missing(f"network: {name}")
        return self.networks_held[name]

    def remove_network(self, network_id):
        self.networks_held.pop(network_id, None)

    def disconnect_container_from_network(self, container, network, force=False):
        pass

    def connect_container_to_network(self, container, network, aliases=None, ipv4_address=None):
        self.containers_held[container]["NetworkSettings"]["Networks"][network] = {
            "IPAddress": ipv4_address or self._next_address()}

    # ---- containers ----
    def create_host_config(self, **kwargs):
        return kwargs

    def create_networking_config(self, endpoints):
        return endpoints

    def create_endpoint_config(self, **kwargs):
        return kwargs

    def create_container(self, image, command=None, name=None, user=None, environment=None, labels=None,
                         ports=None, host_config=None, networking_config=None, healthcheck=None):
        host_config = host_config or {}
        # As the SDK names them: "8080/udp" as given, a bare port as TCP.
        bindings = {(port if "/" in str(port) else f"{port}/tcp"): [{"HostIp": ip, "HostPort": str(host_port)}]
                    for port, (ip, host_port) in (host_config.get("port_bindings") or {}).items()}
        networks = {network: {"IPAddress": (endpoint or {}).get("ipv4_address") or self._next_address()}
                    for network, endpoint in (networking_config or {}).items()}
        memory = host_config.get("mem_limit")
        self.containers_held[name] = {
            "Id": name, "Name": f"/{name}", "RestartCount": 0,
            "Mounts": [_mount_seen(m) for m in host_config.get("mounts") or []],
            "Config": {"Image": image, "Cmd": list(command or []), "User": user or "",
                       # As the SDK sends it: a mapping becomes KEY=VALUE items.
                       "Env": [f"{k}={v}" for k, v in environment.items()] if isinstance(environment, dict)
                       else list(environment or []), "Labels": dict(labels or {})},
            "State": {"Status": "created", "ExitCode": 0, "StartedAt": "", "Pid": 0},
            # As the engine reports the HostConfig it was given.
            "HostConfig": {"PortBindings": bindings, "Privileged": bool(host_config.get("privileged")),
                           "CapAdd": host_config.get("cap_add"), "CapDrop": host_config.get("cap_drop"),
                           "SecurityOpt": host_config.get("security_opt"),
                           "ReadonlyRootfs": bool(host_config.get("read_only")),
                           "PidsLimit": host_config.get("pids_limit"),
                           "Memory": docker.utils.parse_bytes(memory) if isinstance(memory, str) else memory or 0,
                           "Runtime": host_config.get("runtime") or "runc"},
            "NetworkSettings": {"Networks": networks}}
        return {"Id": name}

    def start(self, container):
        self.containers_held[container]["State"].update(
            Status="running", StartedAt=f"2026-01-01T00:00:{next(self._ids) % 60:02}.000000001Z")

    def wait(self, container, timeout=None):
        """The container's program run to its end: its output becomes its log."""
        held = self._held(container)
        program = self.programs.get(held["Config"]["Image"])
        code, stdout, stderr = program(held["Config"]["Cmd"]) if program else (0, "", "")
        held["State"].update(Status="exited", ExitCode=code)
        held["Output"] = (stdout, stderr)
        return {"StatusCode": code}

    def remove_container(self, container, force=False, v=False):
        if self.containers_held.pop(container, None) is None:
            raise _missing(f"container: {container}")
        self.logs_held.pop(container, None)  # its files stay: those a test reads are on its volumes

    def containers(self, all=False, filters=None):
        # The engine's listing says which networks each container is on, as here.
        return [{"Names": [c["Name"]], "Labels": c["Config"]["Labels"], "State": c["State"]["Status"],
                 "NetworkSettings": {"Networks": dict(c["NetworkSettings"]["Networks"])}}
                for c in self.containers_held.values()
                if _matches(c["Config"]["Labels"], filters) and (all or c["State"]["Status"] == "running")]

    def inspect_container(self, container):
        return self._held(container)

    def _held(self, container) -> dict:
        """A container, looked up here: no request of the gateway's."""
        if container not in self.containers_held:
            raise _missing(f"container: {container}")
        return self.containers_held[container]

    def get_archive(self, container, path):
        self._held(container)
        data = self.file(container, path)
        if data is None:
            raise _missing(f"file: {path}")
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            info = tarfile.TarInfo(path.rpartition("/")[2])
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        return iter([out.getvalue()]), {"name": path.rpartition("/")[2], "size": len(data)}

    def put_archive(self, container, path, data):
        self._held(container)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar:
                self.add_file(container, f"{path.rstrip('/')}/{member.name}", tar.extractfile(member).read())
        return True

    def logs(self, container, stream=False, follow=False, tail=100, timestamps=False, stdout=True, stderr=True):
        held = self._held(container)
        if "Output" in held:  # a program that ran to its end
            out, err = held["Output"]
            return ((out if stdout else "") + (err if stderr else "")).encode()
        lines = self.logs_held.get(container, [])
        if not follow:  # followed, the lines held are those that come while following
            lines = lines[-tail:] if isinstance(tail, int) and tail > 0 else [] if tail == 0 else lines
        text = "".join(f"{stamp} {line}\n" if timestamps else f"{line}\n" for stamp, line in lines)
        return iter([text.encode()]) if stream else text.encode()

    def top(self, container):
        self._held(container)
        return {"Titles": ["UID", "PID", "PPID", "CMD"],
                "Processes": [["65534", str(pid), "0", "server"] for pid in self.processes_held.get(container, [])]}

    def stats(self, container, stream=False):
        self._held(container)
        usage, inactive = self.memory_held.get(container, (0, 0))
        return {"memory_stats": {"usage": usage, "stats": {"inactive_file": inactive}}}

    # What is run in a container answers at once: as `execs` says, else well and with nothing.
    def exec_create(self, container, command, user=""):
        self.inspect_container(container)
        exec_id = f"exec-{next(self._ids)}"
        self._execs_made[exec_id] = (container, list(command))
        return {"Id": exec_id}

    def exec_start(self, exec_id):
        container, command = self._execs_made[exec_id]
        answer = self.execs.get(container)
        code, output = answer(command) if answer else (0, "")
        self._execs_made[exec_id] = (container, command, code)
        return output.encode()

    def exec_inspect(self, exec_id):
        return {"ExitCode": self._execs_made[exec_id][2]}


def _mount_seen(mount: dict) -> dict:
    """A mount as the engine reports it on a container (docker.types.Mount in)."""
    source = mount.get("Source") or ""
    if mount.get("Type") == "volume":
        source = f"/var/lib/docker/volumes/{source}/_data"
    return {"Type": mount.get("Type"), "Source": source, "Destination": mount.get("Target"),
            "RW": not mount.get("ReadOnly")}


class FakeClient:
    """`docker.DockerClient` as DockerGateway uses it: `api`, and its own few
    calls (ping, info, version), which are the api's here."""

    def __init__(self, api=None):
        self.api = api if api is not None else FakeApi()

    def __getattr__(self, name):
        return getattr(self.api, name)
