"""Policy -> SandboxSpec: everything that must exist for a sandbox, with all
hardening applied. This is the one place the sandbox's guarantees are written
down; the Docker gateway applies the spec as it is, and tests read it.

Pure: no Docker, no files. What needs the machine (image tags, whether a GPU
is there, the secrets of a running sandbox) comes in as arguments."""
from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from dataclasses import asdict, dataclass

from launcher.access import TOKEN_ENV, token_id
from launcher.images import PartImages
from launcher.policy.model import Policy
from launcher.recipes import CUSTOM_FRONTEND, FRONTEND_RECIPES, content_security_policy

LABEL_SANDBOX = "io.sandbox.name"
LABEL_PART = "io.sandbox.part"
LABEL_HASH = "io.sandbox.spec-hash"
LABEL_POLICY = "io.sandbox.policy"

BACKEND_PORT = 8000
# The embedding model's own server, in the backend's container: llama-cpp-
# python's server keeps one model loaded, so with the chat model behind the
# same server every document would make it reload.
EMBEDDINGS_PORT = 8001
INGRESS_PORT = 8080
# The ingress's healthcheck listener: 127.0.0.1 inside its own container only
# (images/ingress/nginx.conf.template), never published, never on a network.
INGRESS_HEALTH_PORT = 8081
# How often Docker runs each new healthcheck. Each run is a process started in
# the part's container, taken from the part's own CPU share (the sink has a
# quarter of a CPU; the quick start runs on 2 cores). The backend keeps its
# 2 s (`up` and the UI want to know at once when its model is loaded); the
# others answer from their first second and seldom fail alone, so a Python
# start every 30 s (the sink, the front-end: tens of milliseconds of CPU,
# about 0.1% of a core) and a shell builtin every 15 s (the ingress, which
# starts no interpreter, though its request reaches the UI) are enough to see
# a part that stopped answering within a minute or two (3 failures in a row).
# `up` never waits for them: it asks each part itself (launcher/readiness.py).
SINK_HEALTH_INTERVAL_S = 30
FRONTEND_HEALTH_INTERVAL_S = 30
INGRESS_HEALTH_INTERVAL_S = 15
# The one name the sink answers without recording it, and only when its own
# healthcheck asks it over TCP from 127.0.0.1 inside the sink's container
# (images/dns-sink/sink.py says why no part can).
SINK_HEALTH_NAME = "sink-health.sandbox.invalid"
# What `up` waits for in a sandbox with no front-end (`frontend: none`): the
# backend's model list, through the front door, as an API client asks it.
API_HEALTH_PATH = "/v1/models"
# The ingress's: the aliases of the chat and the embedding model that a call
# to the API naming none gets.
CHAT_MODEL_ENV = "SANDBOX_CHAT_MODEL"
EMBEDDING_MODEL_ENV = "SANDBOX_EMBEDDING_MODEL"
BACKEND_ALIAS = "backend"
FRONTEND_ALIAS = "frontend"
NOBODY = "65534:65534"
# Policy runtime names -> the names the engine knows them by.
RUNTIMES = {"runc": None, "gvisor": "runsc"}
BACKEND_API_KEY_ENV = "SANDBOX_API_KEY"
# The ingress's: where the front-end listens (host:port on the internal network).
UPSTREAM_ENV = "SANDBOX_UPSTREAM"
CSP_ENV = "SANDBOX_CSP"
BACKEND_CONFIG_ENV = "SANDBOX_BACKEND_CONFIG"  # the backend's models, by alias (images/llama-cpp/backend.py)
API_KEY_ID_ENV = "SANDBOX_API_KEY_ID"
FRONTEND_SESSION_KEY_ENV = "SANDBOX_SESSION_KEY"
# Where every front-end finds the embedding server and the model's name, when
# the policy has an embedding model (its key is the backend's).
EMBEDDINGS_URL_ENV = "SANDBOX_EMBEDDINGS_BASE_URL"
EMBEDDINGS_MODEL_ENV = "SANDBOX_EMBEDDINGS_MODEL"

# Parts in the order they start: each depends only on those before it.
PARTS = ("dns", "backend", "frontend", "ingress")

# Internal networks get a /24 from here, so the DNS sink can have a fixed
# address. The bridge has no address on the host (inhibit_ipv4), so the host
# gets no route for it and a LAN using the same range is not shadowed.
SUBNET_POOL = ipaddress.IPv4Network("10.213.0.0/16")
DNS_SINK_HOST = 53  # the sink's address: .53 of the internal subnet
SINK_GATEWAY_HOST = 1  # the internal network's gateway, .1: an address the sink answers for
INTERNAL_SUBNET_ENV = "SANDBOX_INTERNAL_SUBNET"  # the ingress listens outside it (images/ingress/start.sh)
AUDIT_DIR = "/audit"  # in the DNS sink: its records, on the sandbox's audit volume
# With `audit: connections`, the sink answers each outside name with an
# address of its own from here: the range set aside for benchmarking
# (RFC 2544), which no network here or on the internet uses.
SINK_ANSWER_RANGE = "198.18.0.0/15"
# The audit volume's bound, where the engine can enforce one: the sink bounds
# what it writes itself, well below this; the bound holds should it not.
AUDIT_VOLUME_SIZE = "256m"




@dataclass(frozen=True)
class Secrets:
    """Made per sandbox and kept while it runs; never part of a spec hash."""

    api_key: str  # the backend requires it; only the front-end and the ingress (for /v1/) are given it
    session_key: str  # for front-ends that sign sessions (recipe.session_key_env)
    access_token: str  # the ingress lets only its holder in (launcher/access.py)


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    part: str  # "internal" or "ingress"
    internal: bool
    options: tuple[tuple[str, str], ...]
    subnet: str | None = None  # None: the engine picks one
    gateway: str | None = None  # the address parts route through; None: the engine's choice


@dataclass(frozen=True)
class VolumeSpec:
    name: str
    part: str
    size: str | None = None  # the most it may hold (the local driver's `size`); None: unbounded


@dataclass(frozen=True)
class Mount:
    source: str  # host path (bind) or volume name
    target: str
    kind: str  # "bind" or "volume"
    read_only: bool
    # For model weights: the sha256 the file must still have when the
    # container that mounts it is created (checked again right then).
    sha256: str | None = None


@dataclass(frozen=True)
class Attachment:
    network: str
    aliases: tuple[str, ...]
    ipv4_address: str | None = None


@dataclass(frozen=True)
class PortBinding:
    container_port: int
    host_ip: str
    host_port: int
    protocol: str = "tcp"


@dataclass(frozen=True)
class ContainerSpec:
    part: str
    name: str
    image: str
    user: str
    networks: tuple[Attachment, ...]  # the first at creation, the rest before start
    env: tuple[tuple[str, str], ...] = ()
    secret_env: tuple[str, ...] = ()  # names in env whose values stay out of the hash
    command: tuple[str, ...] | None = None
    ports: tuple[PortBinding, ...] = ()
    mounts: tuple[Mount, ...] = ()
    tmpfs: tuple[tuple[str, str], ...] = ()
    memory: str = "1g"
    cpus: float = 1.0
    pids_limit: int = 256
    gpus: str | tuple[str, ...] | None = None  # None: no GPU; "all"; or device ids
    gpu_capabilities: tuple[str, ...] = ()
    healthcheck: tuple[str, ...] | None = None
    # Seconds between runs of the healthcheck; None: every 2 s (the backend's,
    # whose hash this field, added later, leaves alone: see spec_hash).
    health_interval_s: int | None = None
    dns: tuple[str, ...] = ()  # the sandbox's DNS sink: no name resolves outside
    sysctls: tuple[tuple[str, str], ...] = ()
    runtime: str | None = None  # None: the engine's default (runc); "runsc": gVisor
    # Hardening. Defaults are the only values a spec ever has: a policy cannot
    # reach these fields (docs/threats.md, "Hardening every container gets").
    read_only: bool = True
    cap_drop: tuple[str, ...] = ("ALL",)
    cap_add: tuple[str, ...] = ()  # the sink only, to set up its own network namespace (build_spec says why)
    init: bool = True  # a small init as PID 1 that reaps zombies
    security_opt: tuple[str, ...] = ("no-new-privileges:true",)
    privileged: bool = False
    # A part that crashes comes back (Docker backs off up to a minute between
    # tries), and a sandbox that was up when the engine stopped (a reboot, an
    # engine upgrade) is up again when it starts; `down` is how one stops.
    restart: tuple[str, int] = ("unless-stopped", 0)
    # A chatty or hostile part cannot fill the disk with its log.
    log_max_size: str = "10m"
    log_max_files: int = 3
    # /dev/shm, a tmpfs every container gets: its size set here, not left to
    # the engine's default-shm-size, which the engine's owner may raise.
    shm_size: str = "64m"
    # No core dumps: where the host's core_pattern pipes them to a handler
    # (systemd-coredump, apport), a crash-looping part would write dumps as
    # large as its memory onto the host's disk.
    ulimits: tuple[tuple[str, int, int], ...] = (("core", 0, 0),)

    def env_value(self, name: str) -> str | None:
        return dict(self.env).get(name)


@dataclass(frozen=True)
class SandboxSpec:
    name: str
    policy_file: str
    networks: tuple[NetworkSpec, ...]
    volumes: tuple[VolumeSpec, ...]
    images: PartImages
    containers: tuple[ContainerSpec, ...]
    url: str
    health_path: str

    def container(self, part: str) -> ContainerSpec:
        return next(c for c in self.containers if c.part == part)

    @property
    def api_only(self) -> bool:
        """No front-end (`frontend: none`): the ingress serves the API alone."""
        return not any(c.part == "frontend" for c in self.containers)


def resource_name(sandbox: str, part: str) -> str:
    return f"sandbox-{sandbox}-{part}"


def spec_hash(resource) -> str:
    """What a resource was made from, as a short hash. Secret values are left
    out, so a kept secret never forces a recreate and never shows in a label."""
    data = asdict(resource)
    if isinstance(resource, ContainerSpec):
        if data["health_interval_s"] is None:
            del data["health_interval_s"]  # as before the field was added: no needless recreate
        data["env"] = [[k, "<secret>" if k in resource.secret_env else v] for k, v in resource.env]
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def labels_for(spec: SandboxSpec, resource) -> dict[str, str]:
    return {LABEL_SANDBOX: spec.name, LABEL_PART: resource.part,
            LABEL_HASH: spec_hash(resource), LABEL_POLICY: spec.policy_file}


def image_volume_tmpfs(user: str) -> str:
    """The tmpfs over each VOLUME an image declares that the spec does not
    mount: Docker would otherwise make it an anonymous volume on the host's
    disk, writable and unbounded despite the read-only root. The part's user
    owns it, as it might the volume it stands for (a mode is not enough:
    where the image has the directory, the engine keeps its mode); it is
    bounded and goes with the container: `frontend.data` is the place for
    what must be kept."""
    uid, _, gid = user.partition(":")
    return f"rw,noexec,nosuid,nodev,size=64m,uid={uid},gid={gid or uid}"


def resolve_gpus(policy: Policy, engine_has_gpu: bool) -> str | tuple[str, ...] | None:
    """What the backend gets: None (CPU), "all", or device ids. `auto` means all
    GPUs when the engine can hand them out, else the CPU."""
    gpu = policy.backend.gpu
    if gpu == "none" or (gpu == "auto" and not engine_has_gpu):
        return None
    return "all" if gpu in ("auto", "all") else gpu


def choose_subnet(sandbox: str, taken: list[str], current: str | None) -> str:
    """The internal network's subnet: the one it has, or the first /24 of the
    pool, starting at a place given by the sandbox's name, that overlaps no
    network the engine already has."""
    if current:
        return current
    subnets = list(SUBNET_POOL.subnets(new_prefix=24))
    start = int(hashlib.sha256(sandbox.encode()).hexdigest()[:8], 16) % len(subnets)
    used = [ipaddress.ip_network(t, strict=False) for t in taken if ":" not in t]
    for i in range(len(subnets)):
        candidate = subnets[(start + i) % len(subnets)]
        if not any(candidate.overlaps(u) for u in used):
            return str(candidate)
    raise ValueError(f"no free /24 left in {SUBNET_POOL} for the sandbox's network")


def memory_bytes(text: str) -> int:
    """A memory size in bytes: Docker's (512m, 8g, 1.5g) or a Kubernetes
    quantity (512Mi, 8Gi)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(b|k|m|g|ki|mi|gi)?", str(text).strip().lower())
    if not match:
        raise ValueError(text)
    factor = {None: 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "ki": 2**10, "mi": 2**20, "gi": 2**30}
    return int(float(match[1]) * factor[match[2]])


def dns_sink_address(subnet: str) -> str:
    return str(ipaddress.ip_network(subnet)[DNS_SINK_HOST])


def sink_gateway_address(subnet: str) -> str:
    return str(ipaddress.ip_network(subnet)[SINK_GATEWAY_HOST])


def build_spec(policy: Policy, images: PartImages, secrets: Secrets,
               gpus: str | tuple[str, ...] | None, internal_subnet: str,
               volume_sizes_enforced: bool = False) -> SandboxSpec:
    """`volume_sizes_enforced`: the engine's storage can bound a volume's
    size; then every volume gets one. Where it cannot, the policy was checked
    to accept an unbounded data volume (launcher/policy/validate.py)."""
    name = policy.name
    sink_ip, sink_gateway = dns_sink_address(internal_subnet), sink_gateway_address(internal_subnet)
    internal = NetworkSpec(
        name=resource_name(name, "internal"), part="internal",
        # Not "internal" to Docker, so that each part gets a default route; its
        # gateway is an address the host does not have (no address for the
        # bridge on the host: no path to the host or its services) and no NAT:
        # the sink answers for the gateway, so every attempt to reach an
        # address outside the sandbox ends at the sink, which records it and
        # forwards nothing (docs/threats.md, "The wall").
        internal=False,
        options=(("com.docker.network.bridge.inhibit_ipv4", "true"),
                 ("com.docker.network.bridge.enable_ip_masquerade", "false")),
        subnet=internal_subnet, gateway=sink_gateway)
    dns = (sink_ip,)
    ingress_net = NetworkSpec(
        name=resource_name(name, "ingress"), part="ingress", internal=False,
        # No NAT: the ingress can be reached from the host but has no way out.
        options=(("com.docker.network.bridge.enable_ip_masquerade", "false"),))

    # What the parts tried to reach outlives their containers, like the chat
    # history: until `down --volumes`.
    audit = VolumeSpec(name=resource_name(name, "audit"), part="audit",
                       size=AUDIT_VOLUME_SIZE if volume_sizes_enforced else None)
    volumes: tuple[VolumeSpec, ...] = (audit,)
    frontend_mounts: tuple[Mount, ...] = ()
    f = policy.frontend
    if f and f.data:
        data = VolumeSpec(name=resource_name(name, "data"), part="data",
                          size=f.data_size if volume_sizes_enforced else None)
        volumes = (audit, data)
        frontend_mounts = (Mount(source=data.name, target=f.data, kind="volume", read_only=False),)

    sink = ContainerSpec(
        # The one part that starts as root: with NET_ADMIN in its own network
        # namespace only, it takes the gateway's address and sends every
        # connection there to itself; it then becomes 65534 with no
        # capability left before it reads a byte from the sandbox
        # (images/dns-sink/sink.py; `verify` checks).
        part="dns", name=resource_name(name, "dns"), image=images.dns.tag, user="0:0",
        cap_add=("NET_ADMIN", "SETUID", "SETGID"),
        # No init: an init would stay root, with those capabilities, for the
        # container's life. The sink is PID 1 and starts no lasting children.
        init=False,
        networks=(Attachment(internal.name, ("dns",), ipv4_address=sink_ip),),
        env=(("SANDBOX_AUDIT_DIR", AUDIT_DIR), ("SANDBOX_SINK_ADDRESS", sink_ip),
             ("SANDBOX_SINK_ANSWERS", policy.audit), ("SANDBOX_SINK_ANSWER_RANGE", SINK_ANSWER_RANGE),
             ("SANDBOX_SINK_GATEWAY", sink_gateway)),
        mounts=(Mount(source=audit.name, target=AUDIT_DIR, kind="volume", read_only=False),),
        # Port 53 without any capability: only this container's own namespace.
        sysctls=(("net.ipv4.ip_unprivileged_port_start", "53"),),
        tmpfs=(("/tmp", "rw,noexec,nosuid,nodev,size=4m"),),
        memory="64m", cpus=0.25, pids_limit=32,
        # One lookup over TCP from 127.0.0.1 for the one name the sink leaves
        # unrecorded there: its own check is no part's attempt to reach out.
        healthcheck=("CMD", "python3", "-I", "/opt/dns-sink/health.py"),
        health_interval_s=SINK_HEALTH_INTERVAL_S,
    )
    backend = _backend(policy, images, secrets, gpus, internal, dns)
    embedding_model = policy.embedding_model
    # `frontend: none`: no front-end; the ingress serves the API alone.
    frontend = _frontend(policy, images, secrets, internal, dns, frontend_mounts) if f else None
    signed_in_as = FRONTEND_RECIPES[f.recipe].signed_in_as if f and f.recipe else None
    ingress = ContainerSpec(
        part="ingress", name=resource_name(name, "ingress"), image=images.ingress.tag, user=NOBODY,
        networks=(Attachment(ingress_net.name, ()), Attachment(internal.name, ("ingress",))),
        env=(("SANDBOX_NAME", name),
             # None for an API-only sandbox: its page routes say that it
             # serves only the API (images/ingress/nginx.conf.template).
             *(((UPSTREAM_ENV, f"{FRONTEND_ALIAS}:{f.port}"),) if f else ()),
             # The owner's scripts and editors reach the backend's API through
             # the ingress (/v1/), which asks it with the front-end's key: the
             # access token is never passed on.
             ("SANDBOX_API_UPSTREAM", f"{BACKEND_ALIAS}:{BACKEND_PORT}"),
             # /v1/embeddings goes to the embedding model's own server; without
             # one, the ingress answers that there is none.
             *((("SANDBOX_EMBEDDINGS_UPSTREAM", f"{BACKEND_ALIAS}:{EMBEDDINGS_PORT}"),) if embedding_model else ()),
             # The aliases a call that names no model is given (the backend's
             # default models): its answer names the alias, not a file.
             *(((CHAT_MODEL_ENV, policy.chat_models[0].alias),) if policy.chat_models else ()),
             *(((EMBEDDING_MODEL_ENV, embedding_model.alias),) if embedding_model else ()),
             (BACKEND_API_KEY_ENV, secrets.api_key),
             (API_KEY_ID_ENV, token_id(secrets.api_key)),
             ("SANDBOX_LISTEN_PORT", str(INGRESS_PORT)),
             # Its healthcheck's listener, on 127.0.0.1 only, and the UI's path it asks.
             ("SANDBOX_HEALTH_PORT", str(INGRESS_HEALTH_PORT)),
             *((("SANDBOX_UPSTREAM_HEALTH_PATH", f.health_path),) if f else ()),
             # It listens on none of its addresses in this network: no part can reach it.
             (INTERNAL_SUBNET_ENV, internal_subnet),
             # The Host and Origin it answers to: the sandbox's own, on the host.
             ("SANDBOX_PUBLIC_PORT", str(policy.ingress_port)),
             # The Content-Security-Policy of the UI's pages: its recipe's
             # (launcher/recipes.py), the generic one for a UI the user brings.
             (CSP_ENV, content_security_policy(
                 (FRONTEND_RECIPES[f.recipe] if f.recipe else CUSTOM_FRONTEND) if f else None,
                 policy.ingress_port)),
             # Who the owner is, to a UI whose recipe takes its user from the
             # ingress's headers (launcher/recipes.py, signed_in_as).
             *((("SANDBOX_UI_USER", signed_in_as[0]), ("SANDBOX_UI_ROLE", signed_in_as[1]))
               if signed_in_as else ()),
             (TOKEN_ENV, secrets.access_token),
             # In the spec hash where the token is not: a new token recreates the ingress.
             ("SANDBOX_ACCESS_TOKEN_ID", token_id(secrets.access_token))),
        secret_env=(BACKEND_API_KEY_ENV, TOKEN_ENV),
        # UDP too, where nothing listens: while the sandbox runs, no other
        # program can take UDP 127.0.0.1:PORT, where a page's WebTransport
        # (HTTP/3) to its own origin's host and port would go, around the
        # locked window's proxy and the Content-Security-Policy's 'self'
        # alike; Chromium has no switch that turns WebTransport off.
        ports=(PortBinding(INGRESS_PORT, "127.0.0.1", policy.ingress_port),
               PortBinding(INGRESS_PORT, "127.0.0.1", policy.ingress_port, "udp")),
        tmpfs=(("/tmp", "rw,noexec,nosuid,nodev,size=16m"),),
        memory="128m", cpus=0.5, pids_limit=64, dns=dns,
        # Through to the UI (or, API only, to the backend's /v1/models by the
        # API's route), asked of nginx's listener on 127.0.0.1 only. The image
        # has no curl or wget; bash's /dev/tcp is a builtin: no process but bash.
        healthcheck=ingress_healthcheck(INGRESS_HEALTH_PORT),
        health_interval_s=INGRESS_HEALTH_INTERVAL_S,
    )
    return SandboxSpec(
        name=name, policy_file=str(policy.file), networks=(internal, ingress_net), volumes=volumes,
        images=images, containers=tuple(c for c in (sink, backend, frontend, ingress) if c is not None),
        url=f"http://127.0.0.1:{policy.ingress_port}/", health_path=f.health_path if f else API_HEALTH_PATH,
    )


def ingress_healthcheck(port: int) -> tuple[str, ...]:
    """The ingress's healthcheck: one request to its health listener, healthy
    on a 200 (nginx answers 502 or 504 while the UI or backend does not)."""
    script = (f"exec 3<>/dev/tcp/127.0.0.1/{port} || exit 1; "
              "printf 'GET /.sandbox-health HTTP/1.0\\r\\nHost: health\\r\\n\\r\\n' >&3; "
              "IFS= read -r -t 5 status <&3 || exit 1; "
              'case "$status" in "HTTP/1.1 200 "*) exit 0;; *) exit 1;; esac')
    return ("CMD", "/bin/bash", "-c", script)


def frontend_healthcheck(f) -> tuple[str, ...] | None:
    """A recipe's front-end: its own health path, asked by the image's
    python3 (both recipes' images have Debian's) on 127.0.0.1, with no proxy
    and nothing but the standard library. A front-end the user brings has no
    tool we know of in its image: no healthcheck (docs/policy.md)."""
    if not f.recipe:
        return None
    script = ("import http.client,sys\n"
              f"c=http.client.HTTPConnection('127.0.0.1',{f.port},timeout=4)\n"
              f"c.request('GET',{f.health_path!r})\n"
              "sys.exit(0 if c.getresponse().status==200 else 1)")
    return ("CMD", "python3", "-I", "-c", script)


def _frontend(policy: Policy, images: PartImages, secrets: Secrets, internal: NetworkSpec, dns: tuple[str, ...],
              frontend_mounts: tuple[Mount, ...]) -> ContainerSpec:
    name, f, embedding_model = policy.name, policy.frontend, policy.embedding_model
    recipe = FRONTEND_RECIPES[f.recipe] if f.recipe else None
    frontend_env = {**(recipe.default_env if recipe else {}), **dict(f.env)}
    secret_env = [f.backend_key_env, FRONTEND_SESSION_KEY_ENV]
    backend_url = f"http://{BACKEND_ALIAS}:{BACKEND_PORT}/v1"
    embeddings_url = f"http://{BACKEND_ALIAS}:{EMBEDDINGS_PORT}/v1"
    if embedding_model:
        frontend_env.update({EMBEDDINGS_URL_ENV: embeddings_url, EMBEDDINGS_MODEL_ENV: embedding_model.alias})
    if recipe:
        frontend_env.update(recipe.locked_env)
        if recipe.session_key_env:
            frontend_env[recipe.session_key_env] = secrets.session_key
            secret_env.append(recipe.session_key_env)
        if recipe.embeddings_env:
            embeddings = recipe.embeddings_env
            frontend_env[embeddings.url] = embeddings_url if embedding_model else backend_url
            frontend_env[embeddings.key] = secrets.api_key
            secret_env.append(embeddings.key)
            if embedding_model:
                frontend_env[embeddings.model] = embedding_model.alias
    frontend_env.update({
        "HOME": "/tmp",
        f.backend_url_env: backend_url,
        f.backend_key_env: secrets.api_key,
        # In the spec hash where the key is not: the backend and the front-end
        # are recreated whenever their key is not the one they share.
        API_KEY_ID_ENV: token_id(secrets.api_key),
        # Kept here so that `up` can give a recreated front-end the same key.
        FRONTEND_SESSION_KEY_ENV: secrets.session_key,
    })
    return ContainerSpec(
        part="frontend", name=resource_name(name, "frontend"), image=images.frontend.tag,
        user=f"{f.user}:{f.user}",
        networks=(Attachment(internal.name, (FRONTEND_ALIAS,)),),
        env=tuple(sorted(frontend_env.items())), secret_env=tuple(sorted(secret_env)),
        mounts=frontend_mounts, tmpfs=(("/tmp", "rw,nosuid,nodev,size=512m"),),
        memory=f.memory, cpus=f.cpus, pids_limit=512, dns=dns, runtime=RUNTIMES[f.runtime],
        healthcheck=frontend_healthcheck(f),
        health_interval_s=FRONTEND_HEALTH_INTERVAL_S if f.recipe else None,
    )


def _backend(policy: Policy, images: PartImages, secrets: Secrets, gpus, internal: NetworkSpec,
             dns: tuple[str, ...]) -> ContainerSpec:
    b = policy.backend
    threads = max(1, int(b.cpus))

    def served(m) -> dict:
        return {
            "model": f"/models/{m.alias}.gguf",
            # The backend checks the file against it at every start: Docker
            # restarts it by itself, with whatever the host's file holds then.
            "sha256": m.sha256,
            "model_alias": m.alias,
            "n_ctx": m.context_length,
            # Not the logits of every position of the context (the server's
            # default), only the last: kept, they are the context times the
            # vocabulary (2,048 x 49,152 floats for the quick-start model),
            # and a call that asked for logprobs over a long prompt had the
            # backend killed for its memory. Logprobs are not served (backend.py).
            "logits_all": False,
            "n_gpu_layers": b.gpu_layers if gpus else 0,
            "n_threads": threads,
            **({"chat_format": m.chat_format} if m.chat_format else {}),
        }
    config: dict = {
        "host": "0.0.0.0",
        "port": BACKEND_PORT,
        # By default the server ends a streamed answer whenever another
        # request waits for the model, its own health check every 2 s
        # included: a stream to the UI or an API client longer than that was
        # cut short. Requests take turns instead (the ingress bounds how many
        # of the API's wait).
        "interrupt_requests": False,
        "models": [served(m) for m in policy.chat_models],
    }
    if policy.embedding_model:
        # A second server in the same container, with the same key, mounts and
        # checks (images/llama-cpp/backend.py).
        config["embeddings"] = {"port": EMBEDDINGS_PORT,
                                "model": {**served(policy.embedding_model), "embedding": True}}
    return ContainerSpec(
        part="backend", name=resource_name(policy.name, "backend"), image=images.backend.tag, user=NOBODY,
        networks=(Attachment(internal.name, (BACKEND_ALIAS,)),),
        env=((BACKEND_CONFIG_ENV, json.dumps(config, sort_keys=True)),
             (BACKEND_API_KEY_ENV, secrets.api_key),
             (API_KEY_ID_ENV, token_id(secrets.api_key))),
        secret_env=(BACKEND_API_KEY_ENV,),
        mounts=tuple(Mount(source=str(m.path), target=f"/models/{m.alias}.gguf", kind="bind", read_only=True,
                           sha256=m.sha256)
                     for m in policy.models),
        tmpfs=(("/tmp", "rw,noexec,nosuid,nodev,size=64m"),),
        memory=b.memory, cpus=b.cpus, pids_limit=256,
        gpus=gpus, gpu_capabilities=("compute", "utility") if gpus else (),
        healthcheck=("CMD", "/opt/venv/bin/python", "/usr/local/bin/sandbox-backend", "health"),
        dns=dns, runtime=RUNTIMES[b.runtime],
    )
