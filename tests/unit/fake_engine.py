"""A stand-in for the Docker engine in unit tests: a plain-Python client with
the calls DockerGateway makes (on the client and on `client.api`), holding
containers, networks, volumes and images in dicts, and recording every call.
Enough for a quick-start sandbox to be observed, applied and waited for."""
from __future__ import annotations

import itertools

import docker.errors

# The SDK's helpers that build a request's body on this side: no request is made.
NOT_REQUESTS = frozenset({"create_host_config", "create_networking_config", "create_endpoint_config"})


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
        self._ids = itertools.count(1)

    def __getattribute__(self, name):
        value = object.__getattribute__(self, name)
        if name.startswith("_") or not callable(value) or name in ("requests", "add_image"):
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
        bindings = {f"{port}/tcp": [{"HostIp": ip, "HostPort": str(host_port)}]
                    for port, (ip, host_port) in ((host_config or {}).get("port_bindings") or {}).items()}
        networks = {network: {"IPAddress": (endpoint or {}).get("ipv4_address") or self._next_address()}
                    for network, endpoint in (networking_config or {}).items()}
        self.containers_held[name] = {
            "Id": name, "Name": f"/{name}", "RestartCount": 0, "Mounts": [],
            "Config": {"Image": image, "Env": list(environment or []), "Labels": dict(labels or {})},
            "State": {"Status": "created", "ExitCode": 0, "StartedAt": "", "Pid": 0},
            "HostConfig": {"PortBindings": bindings}, "NetworkSettings": {"Networks": networks}}
        return {"Id": name}

    def start(self, container):
        self.containers_held[container]["State"]["Status"] = "running"

    def remove_container(self, container, force=False, v=False):
        if self.containers_held.pop(container, None) is None:
            raise _missing(f"container: {container}")

    def containers(self, all=False, filters=None):
        return [{"Names": [c["Name"]], "Labels": c["Config"]["Labels"], "State": c["State"]["Status"]}
                for c in self.containers_held.values()
                if _matches(c["Config"]["Labels"], filters) and (all or c["State"]["Status"] == "running")]

    def inspect_container(self, container):
        if container not in self.containers_held:
            raise _missing(f"container: {container}")
        return self.containers_held[container]

    def get_archive(self, container, path):
        raise _missing(f"file: {path}")  # nothing written in a container here

    def logs(self, container, stream=False, follow=False, tail=100, timestamps=False):
        return b""

    # What is run in a container answers at once, and well.
    def exec_create(self, container, command, user=""):
        self.inspect_container(container)
        return {"Id": f"exec-{next(self._ids)}"}

    def exec_start(self, exec_id):
        return b""

    def exec_inspect(self, exec_id):
        return {"ExitCode": 0}


class FakeClient:
    """`docker.DockerClient` as DockerGateway uses it: `api`, and its own few
    calls (ping, info, version), which are the api's here."""

    def __init__(self, api=None):
        self.api = api if api is not None else FakeApi()

    def __getattr__(self, name):
        return getattr(self.api, name)
