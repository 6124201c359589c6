"""`sandbox doctor`: is this machine ready to run sandboxes, and if not, how
to fix it. Each check is ok, warn (works, with less) or fail (cannot run)."""
from __future__ import annotations

from dataclasses import dataclass

from launcher.commands.target import sandbox_holding
from launcher.engine.state import MIN_ENGINE
from launcher.errors import SandboxError
from launcher.hostnet import route_localnet
from launcher.images import BASE_IMAGE
from launcher.policy.validate import port_is_free

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True)
class Check:
    name: str
    result: str
    detail: str
    fix: str = ""

    def to_dict(self) -> dict:
        return {"check": self.name, "result": self.result, "detail": self.detail, "fix": self.fix}


def doctor(connect, ports: tuple[int, ...] = (8080,)) -> list[Check]:
    """`connect` makes the gateway; failing to is itself a finding."""
    checks: list[Check] = []
    try:
        gateway = connect()
    except SandboxError as e:
        checks.append(Check("engine", FAIL, str(e),
                            "start the Docker daemon (`sudo systemctl start docker`, or `dockerd &`)"))
        return checks + _port_checks(ports)

    engine = gateway.state.engine()
    version = engine["version"]
    try:
        major, minor = (int(x) for x in version.split(".")[:2])
        recent = (major, minor) >= MIN_ENGINE
    except ValueError:
        recent = True
    checks.append(Check("engine", OK if recent else FAIL, f"Docker Engine {version} (API {engine['api_version']})",
                        "" if recent else f"install Docker Engine {MIN_ENGINE[0]}.{MIN_ENGINE[1]} or newer"))

    if gateway.state.image_present(BASE_IMAGE):
        checks.append(Check("base image", OK, f"{BASE_IMAGE} is present"))
    else:
        checks.append(Check("base image", FAIL, f"{BASE_IMAGE} is missing; the images are built FROM it",
                            f"`docker pull {BASE_IMAGE}`, or without a registry: `bash scripts/make-base-image.sh`"))

    runtimes = engine["runtimes"]
    if "nvidia" in runtimes:
        checks.append(Check("gpu", OK, "the NVIDIA runtime is registered: `gpu: auto` uses the GPUs"))
    elif engine["cdi_spec_dirs"]:
        checks.append(Check("gpu", WARN, f"CDI is enabled ({', '.join(engine['cdi_spec_dirs'])}) but no "
                            "nvidia runtime: the backend runs on the CPU",
                            "install the NVIDIA Container Toolkit and run `nvidia-ctk runtime configure`"))
    else:
        checks.append(Check("gpu", WARN, "no NVIDIA runtime: the backend runs on the CPU",
                            "for a GPU, install the NVIDIA Container Toolkit and run "
                            "`sudo nvidia-ctk runtime configure --runtime=docker`, then restart Docker"))

    if "runsc" in runtimes:
        checks.append(Check("gvisor", OK, "runsc (gVisor) is registered"))
    else:
        checks.append(Check("gvisor", WARN, "runsc (gVisor) is not registered: optional, for extra isolation",
                            "install runsc (Debian: apt-get install runsc), then `sudo bash scripts/register-gvisor.sh`"))

    checks.append(volume_size_check(gateway))

    values = route_localnet()
    localnet = sorted(name for name, value in values.items() if value == "1")
    unread = sorted(name for name, value in values.items() if value is None)
    if localnet:
        checks.append(Check("loopback ports", FAIL,
                            f"route_localnet=1 on {', '.join(localnet)}: hosts on your LAN can reach ports "
                            "published on 127.0.0.1 (moby/moby#45610), the UI's included",
                            "set `\"userland-proxy\": true` in /etc/docker/daemon.json (the default) and "
                            "`sysctl -w net.ipv4.conf.all.route_localnet=0`"))
    elif not values or unread:
        # Unread is not 0: the interface not read may be the one where it is 1.
        checks.append(Check("loopback ports", WARN,
                            f"route_localnet could not be read{' on ' + ', '.join(unread) if unread else ''}: "
                            "whether hosts on your LAN can reach ports published on 127.0.0.1 is not known",
                            "check `sysctl net.ipv4.conf.all.route_localnet` (and each interface's) is 0"))
    else:
        checks.append(Check("loopback ports", OK, "route_localnet is 0: ports on 127.0.0.1 stay on this machine"))
    return checks + _port_checks(ports, gateway) + model_checks()


def volume_size_check(gateway) -> Check:
    """Whether a front-end's data volume can be bounded here; `up` refuses
    an unbounded one unless its policy accepts it."""
    enforced, why_not = gateway.state.volume_sizes()
    if enforced:
        return Check("volume sizes", OK, "the engine's storage enforces volume sizes: each data volume holds "
                                         "at most its policy's frontend.data_size, the audit volume a bound "
                                         "of its own")
    return Check("volume sizes", WARN,
                 f"the engine's storage cannot enforce volume sizes (it said: {why_not}): a front-end could fill "
                 "the disk that holds Docker's volumes, so `up` refuses a policy with a data volume unless it "
                 "has `accept_unbounded_volumes: [data]`",
                 "put Docker's data-root (its volumes directory) on XFS mounted with project quotas (prjquota), "
                 "or accept unbounded data volumes by name in each policy")


def model_checks() -> list[Check]:
    """What this machine can run: each model in the store, at its trained
    context (capped at 8192 tokens), against the free memory and the GPUs."""
    from launcher.models import store
    from launcher.models.facts import GgufError, estimate, fit_warnings, gib, read_facts, this_machine
    from launcher.text import one_line
    machine = this_machine()
    out = []
    for model in store.models_in(store.store_dir()):
        try:
            facts = read_facts(model)
        except GgufError as e:
            out.append(Check(f"model {model.name}", WARN, str(e), "`sandbox model verify` it, or pull it again"))
            continue
        need = estimate(facts, min(facts.context_length or 4096, 8192))
        problems = fit_warnings(need, None, machine, on_gpu=False)
        gpus = [name for name, _, free in machine.gpus if need.weights + need.kv_cache <= free]
        where = "fits in free memory" if not problems else problems[0]
        if machine.gpus:
            where += f"; on the GPU: {', '.join(gpus) if gpus else 'fits none (keep some layers on the CPU)'}"
        out.append(Check(f"model {model.name}", OK if not problems else WARN,
                         f"{one_line(facts.architecture)}, {facts.parameters / 1e6:.0f} M parameters, "
                         f"{one_line(facts.quantization)}: "
                         f"needs {gib(need.total)} at context {need.context}: {where}",
                         "" if not problems else "pick a smaller quantization, or a shorter context_length"))
    return out


def _port_checks(ports: tuple[int, ...], gateway=None) -> list[Check]:
    """Without an engine (`gateway` None) a busy port's holder is not known."""
    out = []
    for port in ports:
        free = port_is_free(port)
        holder = None if free or gateway is None else sandbox_holding(gateway, port)
        if free:
            out.append(Check(f"port {port}", OK, f"127.0.0.1:{port} is free"))
        elif holder:
            out.append(Check(f"port {port}", WARN, f"port {port} is used by sandbox {holder} "
                                                   f"(`sandbox down {holder}` frees it)",
                             f"`sandbox down {holder}`, or set ingress.port in the policy to a free port"))
        else:
            out.append(Check(f"port {port}", WARN, f"127.0.0.1:{port} is in use (by a running sandbox?)",
                             "set ingress.port in the policy to a free port"))
    return out
