"""`sandbox verify`: run docs/threats.md's attack matrix against a live sandbox.

A probe container of ours joins the front-end's network namespace with the
front-end's own restrictions (so the UI image needs no tools) and tries every
way out; it has a PID namespace and a user of its own, out of the front-end's
reach. The host runs a canary listener and tries the ingress itself; what
the front-end may do (its processes' credentials, its HostConfig, its
networks) is read from the engine and the host's /proc, not from inside it.
launcher/matrix.py judges what was seen."""
from __future__ import annotations

import json
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

from launcher.commands.audit import connections_kept, summary_kept
from launcher.commands.target import resolve_name
from launcher import access
from launcher.builds import build_and_record, build_egress, image_is_ours
from launcher.commands.prepare import Prepared, prepare, replan
from launcher.front_door import try_front_door
from launcher.engine import DockerGateway
from launcher.errors import DockerFailure, NotFound
from launcher.hostnet import (Canary, container_process, host_ipv4_addresses, host_resolvers, process_status,
                              route_localnet)
from launcher.images import recipe_image
from launcher.resources import IMAGES_DIR
from launcher.policy.files import sha256_of
from launcher.spec import BACKEND_API_KEY_ENV, BACKEND_PORT, INGRESS_PORT, resource_name
from launcher.text import json_records
from launcher.matrix import ADDRESS_TARGET, FAIL, FRONTEND_WORD, INCONCLUSIVE, Facts, Row, judge

Say = Callable[[str], None]
T = TypeVar("T")
# How often the front-end's processes are read while the probe runs.
PROCESS_READ_INTERVAL = 0.5
# The sink writes its summary about once a second: how long to wait for the
# probe's attempts to be in it before judging without them.
SUMMARY_WAIT = 15
PUBLIC_TARGET = ("1.1.1.1", 443)
METADATA_TARGET = ("169.254.169.254", 80)
IPV6_TARGET = ("2606:4700:4700::1111", 443)
PROXY_REQUESTS = ("CONNECT example.com:443 HTTP/1.1", "GET http://example.com/ HTTP/1.1")

# Run inside the backend: every way to change the weights, and what each gave.
WRITE_WEIGHTS = """
import errno, os, sys
outcomes = []
for path in sys.argv[1:]:
    for attempt in (lambda: open(path, "ab").write(b"x"), lambda: os.truncate(path, 0), lambda: os.remove(path)):
        try:
            attempt()
            outcomes.append("WROTE")
        except OSError as e:
            outcomes.append(errno.errorcode.get(e.errno, str(e.errno)))
print(" ".join(outcomes))
"""


@dataclass
class VerifyResult:
    name: str
    rows: list[Row]
    # What `up` would change: the running sandbox is not quite what its policy says.
    drift: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.verdict not in (FAIL, INCONCLUSIVE) for r in self.rows)

    def to_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "rows": [r.to_dict() for r in self.rows], "drift": self.drift}


def verify(gateway: DockerGateway, target: str | None = None, ca_bundle: Path | None = None,
           say: Say | None = None, prepared: Prepared | None = None) -> VerifyResult:
    """`prepared`: the sandbox as the same command's `up` prepared it, so
    that its policy is not read and checked (and its models hashed) again."""
    say = say or (lambda _m: None)
    name = resolve_name(gateway, target, "verify")
    sandboxes = gateway.state.sandboxes()
    if name not in sandboxes:
        raise NotFound(f"no sandbox named {name} on this engine")
    if prepared is not None and prepared.spec.name == name:
        prepared = replan(gateway, prepared)
    else:
        prepared = prepare(gateway, sandboxes[name]["policy"], ca_bundle)
    spec, policy = prepared.spec, prepared.policy
    for part in (c.part for c in spec.containers):  # an API-only sandbox has no front-end
        state = gateway.state.container_state(resource_name(name, part))
        if not state or state["state"] != "running":
            raise NotFound(f"the {part} of sandbox {name} is not running; `sandbox up` it first")

    probe_image = probe_image_built(gateway, ca_bundle, say)

    facts = Facts(unique_name=f"sandbox-verify-{uuid.uuid4().hex[:12]}.example.com")
    facts.host_targets = host_ipv4_addresses()
    resolvers = host_resolvers()
    others = _other_sandbox_targets(gateway, name, sandboxes)
    facts.other_sandbox_targets = [f"{ip}:{port}" for ip, port in others]
    internal = resource_name(name, "internal")
    ingress_ip = gateway.state.addresses(spec.container("ingress").name).get(internal)

    # A sandbox with no front-end (`frontend: none`) is probed from its
    # backend's network, the one other part that runs code of a stranger's.
    probed = spec.container("backend" if spec.api_only else "frontend")
    in_gvisor = probed.runtime == "runsc"
    # Ports of our own choosing, so that the sink's records of this run are told apart.
    by_address = [[ADDRESS_TARGET, random.randint(20000, 60000), "tcp"],
                  [ADDRESS_TARGET, random.randint(20000, 60000), "udp"]]
    sink = spec.container("dns")
    facts.answers = sink.env_value("SANDBOX_SINK_ANSWERS") or "lookups"
    facts.answer_range = sink.env_value("SANDBOX_SINK_ANSWER_RANGE") or facts.answer_range
    started = time.time()
    with Canary() as canary:
        facts.canary_port = canary.port
        request = {
            "tcp": [[h, canary.port] for h in facts.host_targets] + [[ip, port] for ip, port in others],
            "outside": [[*PUBLIC_TARGET, "tcp"], [*METADATA_TARGET, "tcp"]]
                       + [[r, 53, proto] for r in resolvers for proto in ("udp", "tcp")] + by_address,
            "sink_gateway": sink.env_value("SANDBOX_SINK_GATEWAY"),
            "dns": [facts.unique_name],
            # With `audit: connections` the name resolves to the sink: the next step must end there too.
            "by_name": [[facts.unique_name, random.randint(20000, 60000)]] if facts.answers == "connections" else [],
            "ipv6": [list(IPV6_TARGET)],
            "http": [[ingress_ip, INGRESS_PORT, line] for line in PROXY_REQUESTS] if ingress_ip else [],
            "self": True,
        }
        say("probing from the backend's network (there is no front-end)" if spec.api_only
            else "probing from the front-end's network")
        frontend = probed.name
        facts.frontend_config = gateway.state.container_config(frontend)

        def probe() -> str:
            return gateway.containers.run_probe(name, probe_image.tag, probed, json.dumps(request))
        if in_gvisor:
            output = probe()
        else:
            output, facts.processes = watching_processes(
                lambda: _processes_from_host(gateway, frontend, facts.frontend_config["id"]), probe)
        facts.canary_hits = canary.hits_until_now()
    facts.probe = probe_result(output)

    facts.internal_network = internal
    if in_gvisor:
        # The host sees gVisor's kernel, not the processes it runs: those are read from inside.
        _read_processes_inside(gateway, frontend, facts)
        # gVisor's kernel runs on the host as the sandbox process Docker knows
        # as the container's: its own restrictions are read there.
        pid = gateway.state.container_state(frontend)["pid"]
        facts.gvisor_sentry = process_status(pid) if pid else None
    _read_sink(gateway, name, spec.container("dns").name, started - 1, facts)
    facts.ingress_from_host = {line: _status_line("127.0.0.1", policy.ingress_port, line) for line in PROXY_REQUESTS}
    say("trying the front door from this machine: foreign Host, no token, cross-site, pipelined, slow clients")
    token = spec.container("ingress").env_value(access.TOKEN_ENV)
    facts.front_door = try_front_door(policy.ingress_port, name, token, access.launcher_mark(
        token, spec.container("ingress").env_value(BACKEND_API_KEY_ENV)))

    say("trying to write the weights from inside the backend")
    model = policy.models[0]
    facts.expected_sha = model.sha256
    facts.weights_sha_before = sha256_of(model.path)
    _, written = gateway.containers.exec_in(
        spec.container("backend").name, ["/opt/venv/bin/python", "-c", WRITE_WEIGHTS, f"/models/{model.alias}.gguf"])
    facts.weights_write = written.strip()
    facts.weights_sha_after = sha256_of(model.path)

    facts.limits = {c.part: gateway.state.limits(c.name) for c in spec.containers}
    facts.ingress_bindings = gateway.state.container_state(spec.container("ingress").name)["ports"]
    facts.route_localnet = route_localnet()
    drift = [f"{a.verb} {a.kind} {a.name}: {a.reason}" for a in prepared.plan.changes]
    return VerifyResult(name, judge(facts), drift)


def probe_image_built(gateway: DockerGateway, ca_bundle: Path | None, say: Say):
    """The probe's image, built here unless the launcher built it already."""
    probe_image = recipe_image("probe", ca_bundle=ca_bundle)
    # It joins the front-end's namespaces and gives the verdicts: it runs only as the launcher built it.
    if not image_is_ours(gateway, probe_image):
        build_and_record(gateway, [probe_image], build_egress(ca_bundle), say)
    return probe_image


def probe_result(output: str) -> dict:
    """The probe's one JSON object. Anything else (no line, more than one,
    not an object) is an error: a verdict is never picked out of a stream."""
    lines = output.splitlines()
    try:
        result = json.loads(lines[0]) if len(lines) == 1 else None
    except (ValueError, RecursionError):
        result = None
    if not isinstance(result, dict):
        raise DockerFailure(f"the probe did not print exactly one JSON result ({len(lines)} line(s)): "
                            f"{output[-2000:]}")
    return result


def _processes_from_host(gateway: DockerGateway, container: str, container_id: str) -> dict:
    """The container's processes, listed by the engine and read in the host's /proc."""
    found = {}
    for pid in gateway.state.container_pids(container):
        seen = container_process(pid, container_id)
        if seen is not None:  # None: gone since the engine listed it
            found[str(pid)] = seen
    return found


def watching_processes(read: Callable[[], dict], run: Callable[[], T]) -> tuple[T, dict]:
    """`run()`, with the front-end's processes read before it, while it runs
    and after. The front-end shares the probe's network and can see its
    sockets: a process that hides while the probe runs is still seen before.
    Each PID keeps its first reading: under no-new-privileges a process can
    only lose privileges, never gain them."""
    seen: dict = {}
    done = threading.Event()

    def merge(reading: dict) -> None:
        for pid, process in reading.items():
            seen.setdefault(pid, process)

    def watch() -> None:
        while not done.wait(PROCESS_READ_INTERVAL):
            merge(read())
    merge(read())
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = run()
    finally:
        done.set()
        watcher.join()
    merge(read())
    return result, seen


def _read_processes_inside(gateway: DockerGateway, container: str, facts: Facts) -> None:
    probe = (IMAGES_DIR / "probe" / "probe.py").read_text()
    code, output = gateway.containers.exec_in(container, ["python3", "-c", probe, json.dumps({"processes": True})])
    try:
        # The front-end image's own python3 printed this: anything at all.
        seen = json.loads(output.strip().splitlines()[-1]) if code == 0 else None
    except (ValueError, IndexError, RecursionError):
        seen = None
    if not isinstance(seen, dict) or not isinstance(seen.get("processes"), dict):
        facts.processes_note = "gVisor: the front-end image has no python3 to read its own processes with"
        return
    facts.processes_by = FRONTEND_WORD
    fields = ("command", "uid", "cap_eff", "no_new_privs", "seccomp")
    facts.processes = {str(pid): p for pid, p in seen["processes"].items()
                       if isinstance(p, dict) and all(k in p for k in fields) and isinstance(p["uid"], list)}


def _other_sandbox_targets(gateway: DockerGateway, name: str, sandboxes: dict) -> list[tuple[str, int]]:
    targets = []
    for other in sorted(sandboxes):
        if other == name:
            continue
        for part, port in (("backend", BACKEND_PORT), ("frontend", 8080), ("ingress", INGRESS_PORT), ("dns", 53)):
            try:
                addresses = gateway.state.addresses(resource_name(other, part))
            except NotFound:
                continue
            targets += [(ip, port) for ip in addresses.values()]
    return targets


def _read_sink(gateway: DockerGateway, name: str, sink: str, since: float, facts: Facts) -> None:
    """What the sink recorded since the probe started: its detail records,
    which a part's flood may thin out (they are rate-bound), and its summary,
    which counts every attempt but is written about once a second: waited
    for until it holds the probe's lookup, or for SUMMARY_WAIT seconds."""
    deadline = time.monotonic() + SUMMARY_WAIT
    while True:
        summary = summary_kept(gateway, name)
        recent = [d for d in summary["destinations"] if d["last"] >= since]
        if time.monotonic() > deadline or any(d["kind"] == "lookup" and d["where"] == facts.unique_name
                                              for d in recent):
            break
        time.sleep(0.25)
    facts.sink_names = _sink_names(gateway, sink) + [d["where"] for d in recent if d["kind"] == "lookup"]
    facts.caught = [[c.get("protocol"), c.get("address"), c.get("port"), c.get("name")]
                    for c in connections_kept(gateway, name) if c.get("time", 0) >= since]
    facts.caught += [[d["kind"], d.get("address") or d["where"], d["port"],
                      d["where"] if d.get("address") and d["where"] != d["address"] else None]
                     for d in recent if d["kind"] in ("tcp", "udp")]
    facts.sink_not_itemised = sum(summary["more"].values())


def _sink_names(gateway: DockerGateway, container: str) -> list[str]:
    """The names the sink was asked for (its connection records carry a name too, and no "type")."""
    return [entry["name"] for entry in json_records(gateway.containers.logs(container, tail=5000), "type")]


def _status_line(host: str, port: int, request_line: str) -> str:
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(request_line.encode() + b"\r\nHost: example.com\r\nConnection: close\r\n\r\n")
            return s.recv(4096).split(b"\r\n", 1)[0].decode(errors="replace")
    except OSError as e:
        return f"error:{e}"
