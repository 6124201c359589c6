"""The attack matrix of docs/threats.md, judged. `commands/verify.py` gathers the
facts (what the probe saw from the front-end's network, what the engine and
the host saw); the functions here turn them into one row per attack, each
naming where it was checked. Pure, so that each row is unit-tested on facts
where the attack succeeds: a check that cannot fail is a defect."""
from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field, replace

from launcher.spec import SINK_ANSWER_RANGE

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
# Neither stopped nor got through: what would have shown it did not happen
# (the owner's own request got no answer). `verify` is not ok with it.
INCONCLUSIVE = "INCONCLUSIVE"

# Where a row was checked. Only the front-end's word can be made up by the
# front-end: the probe runs in its network namespace but in a PID namespace
# and as a user of its own, and returns its result through the engine.
ENGINE, HOST, PROBE, SINK, BACKEND = "engine", "host", "probe", "sink", "backend"
FRONTEND_WORD = "front-end's word"


@dataclass(frozen=True)
class Row:
    attack: str
    how: str
    verdict: str  # PASS | FAIL | SKIP | INCONCLUSIVE
    result: str
    checked_by: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"attack": self.attack, "how": self.how, "verdict": self.verdict, "result": self.result,
                "checked_by": list(self.checked_by)}


@dataclass
class Facts:
    """Everything `verify` observed; each field is filled by one step."""

    probe: dict = field(default_factory=dict)  # images/probe/probe.py's JSON
    # The front-end's container as the engine describes it (EngineState.container_config).
    frontend_config: dict = field(default_factory=dict)
    internal_network: str = ""  # the sandbox's internal network: the front-end's only one
    # pid -> {"command", "uid", "cap_eff", "no_new_privs", "seccomp"} of every front-end process,
    # and who said so: HOST (the engine named the pids, the host's /proc told the rest) or,
    # under gVisor, where the host cannot see inside, FRONTEND_WORD.
    processes: dict = field(default_factory=dict)
    processes_by: str = HOST
    canary_port: int = 0
    canary_hits: list = field(default_factory=list)  # peers that reached the host canary
    host_targets: list = field(default_factory=list)  # host addresses tried
    other_sandbox_targets: list = field(default_factory=list)  # "ip:port" of other sandboxes
    unique_name: str = ""  # the external name the probe tried to resolve
    sink_names: list = field(default_factory=list)  # names the DNS sink logged
    ingress_from_host: dict = field(default_factory=dict)  # request line -> status line
    weights_write: str = ""  # what writing the weights from inside the backend gave
    weights_sha_before: str = ""
    weights_sha_after: str = ""
    expected_sha: str = ""
    limits: dict = field(default_factory=dict)  # part -> {"pids": n, "memory": bytes}
    ingress_bindings: list = field(default_factory=list)  # "ip:port" the ingress is published on
    route_localnet: dict = field(default_factory=dict)  # interface -> value; None when unreadable
    processes_note: str = ""  # under gVisor, why the front-end's processes could not be read
    # Under gVisor: /proc/PID/status of its user-space kernel on the host; None when not under gVisor
    # or unreadable. Inside gVisor, NoNewPrivs and Seccomp are not shown: the host's are the sentry's.
    gvisor_sentry: dict | None = None
    # What the front door (the ingress, from the host) answered to each try of
    # launcher/front_door.py; empty when not tried.
    front_door: dict = field(default_factory=dict)
    # [protocol, address, port, name] of every attempt the sandbox's sink recorded while the probe
    # ran; name: the one the sink had given that address for, or None.
    caught: list = field(default_factory=list)
    # The policy's `audit` setting: "lookups" (outside names do not resolve) or "connections"
    # (they resolve to addresses of answer_range, which only the sink takes).
    answers: str = "lookups"
    answer_range: str = SINK_ANSWER_RANGE
    # Attempts the sink counted but could not itemise (its summary was full):
    # a part that floods it first may leave the probe's own attempts unnamed.
    sink_not_itemised: int = 0


def checked_by(*where: str):
    """Marks a row function's rows with where they were checked, unless the row says so itself."""
    def mark(row_of):
        @functools.wraps(row_of)
        def marked(f: Facts) -> Row:
            row = row_of(f)
            return row if row.checked_by else replace(row, checked_by=where)
        return marked
    return mark


ADDRESS_TARGET = "203.0.113.77"  # an address off every network here; only the sink can take it


def _key(target: str) -> tuple[str, str, int]:
    """("tcp", "1.1.1.1", 443) from "tcp 1.1.1.1:443" (or "1.1.1.1:443", TCP)."""
    protocol, _, address = target.rpartition(" ")
    host, _, port = address.rpartition(":")
    return protocol or "tcp", host, int(port)


def _recorded(f: Facts) -> set[tuple[str, str, int]]:
    """(protocol, address, port) of every attempt the sink recorded."""
    return {tuple(c[:3]) for c in f.caught}


def _escaped(f: Facts, target: str, outcome: str) -> bool:
    """Whether an attempt's outcome means the way was open. A connection that
    was taken (or a datagram answered) escaped unless the sandbox's sink
    recorded it: then it was the sink that took it, and nothing went on."""
    if outcome.removeprefix("via-sink:") in ("connected", "answered"):
        return _key(target) not in _recorded(f)
    return outcome.startswith(("route-via-live-gateway", "on-link"))


# What the probe's system says (it runs Debian: glibc's words) when an
# attempt failed on the probe's own side, before any packet left: no local
# port or address was free, no descriptor, buffer or memory. A part sharing
# the probe's network namespace can cause these (it binds every ephemeral
# port); such an attempt shows nothing of the way out, either way.
LOCAL_FAILURES = ("Cannot assign requested address", "Address already in use", "Too many open files",
                  "Too many open files in system", "No buffer space available", "Cannot allocate memory",
                  "Resource temporarily unavailable")


def _never_left(outcomes: dict) -> dict:
    """The attempts among `outcomes` that failed on the probe's own side."""
    return {k: v for k, v in outcomes.items()
            if any(f"error:{failure}" in str(v) for failure in LOCAL_FAILURES)}


def _tried_row(attack: str, how: str, tried: dict, bad: dict, text: str | None = None) -> Row:
    """FAIL when an attempt got out (or nothing was tried); INCONCLUSIVE when
    an attempt never left the probe: it cannot show the way was shut."""
    text = text if text is not None else _summary(bad or tried)
    if bad or not tried:
        return Row(attack, how, FAIL, text)
    if stuck := _never_left(tried):
        return Row(attack, how, INCONCLUSIVE,
                   f"{text} ({', '.join(stuck)}: failed inside the probe, nothing was sent: "
                   "the check proves nothing)")
    return Row(attack, how, PASS, text)


def _as_said(f: Facts, outcomes: dict) -> dict:
    """The outcomes, with a connection the sink took said so: a bare
    "connected" reads as a breach. One the sink did not record stays
    "connected", as the breach it is."""
    return {k: "taken by the sink" if v == "connected" and not _escaped(f, k, v) else v for k, v in outcomes.items()}


def _summary(outcomes: dict) -> str:
    return "; ".join(f"{target} {outcome}" for target, outcome in outcomes.items()) or "nothing tried"


@checked_by(PROBE, SINK)
def external_dns(f: Facts) -> Row:
    answer = f.probe.get("dns", {}).get(f.unique_name)
    resolved = isinstance(answer, list)
    seen = f.unique_name in f.sink_names
    logged = 'logged by the sandbox DNS sink' if seen else 'NOT seen by the sandbox DNS sink'
    if f.answers == "connections":
        return _answered_dns(f, answer if resolved else [], logged)
    ok = not resolved and seen
    result = f"{f.unique_name}: {'RESOLVED to ' + ', '.join(answer) if resolved else 'no answer'}; {logged}"
    return Row("external DNS", "resolve a unique external name via the container's resolver",
               PASS if ok else FAIL, result)


def _answered_dns(f: Facts, answer: list, logged: str) -> Row:
    """With `audit: connections` the name must resolve, to an address only
    the sink takes, and the connection to it must end at the sink, which
    records it under that name."""
    sink_range = ipaddress.ip_network(f.answer_range)
    ours = bool(answer) and all(ipaddress.ip_address(a) in sink_range for a in answer)
    tried = f.probe.get("by_name", {})
    recorded = any(len(c) > 3 and c[3] == f.unique_name for c in f.caught)
    ok = ours and f.unique_name in f.sink_names and recorded
    said = (f"answered with {', '.join(answer)} ({'the sink' if ours else 'NOT the sink'}'s range {sink_range})"
            if answer else "no answer")
    text = (f"{f.unique_name}: {said}; {logged}; connection {_summary(tried)}: "
            f"{'recorded by the sink under that name' if recorded else 'NOT recorded under that name'}")
    how = "resolve a unique external name and connect to it (audit: connections)"
    if not ok and ours and f.unique_name in f.sink_names and _never_left(tried):
        return _tried_row("external DNS", how, tried, {}, text)
    return Row("external DNS", how, PASS if ok else FAIL, text)


@checked_by(PROBE, SINK)
def dns_leak(f: Facts) -> Row:
    # The query must have ended at the sink, the only server the sandbox's
    # resolver forwards to, and never at the host's resolvers.
    direct = {k: v for k, v in f.probe.get("outside", {}).items() if k.startswith("udp ") and ":53" in k}
    leaked = {k: v for k, v in direct.items() if _escaped(f, k, v)}
    seen = f.unique_name in f.sink_names
    text = f"lookup {'ended at the sink' if seen else 'did NOT reach the sink'}; {_summary(direct)}"
    how = "the same lookup, and UDP 53 straight to the host's resolvers"
    if not seen or leaked:
        return Row("DNS leak via host resolver", how, FAIL, text)
    if not direct:
        # No host resolver was read, so none was tried: the way straight to them is not shown shut.
        return Row("DNS leak via host resolver", how, INCONCLUSIVE,
                   text + " (no resolver of the host was found to try: the check proves nothing)")
    return _tried_row("DNS leak via host resolver", how, direct, leaked, text)


@checked_by(PROBE, SINK)
def raw_egress(f: Facts) -> Row:
    tried = {k: v for k, v in f.probe.get("outside", {}).items()
             if "169.254.169.254" not in k and ADDRESS_TARGET not in k}
    bad = {k: v for k, v in tried.items() if _escaped(f, k, v)}
    return _tried_row("raw IP egress", "TCP to a public address and the host's resolver, UDP 53", tried, bad)


@checked_by(PROBE, SINK)
def attempt_by_address(f: Facts) -> Row:
    tried = {k: v for k, v in f.probe.get("outside", {}).items() if f" {ADDRESS_TARGET}:" in k}
    recorded = [k for k in tried if _key(k) in _recorded(f)]
    escaped = {k: v for k, v in tried.items() if _escaped(f, k, v)}
    unrecorded = {k: v for k, v in tried.items() if k not in recorded and k not in _never_left(tried)}
    return _tried_row("attempt by address", f"TCP and UDP to {ADDRESS_TARGET}, by address, no name looked up",
                      tried, {**escaped, **unrecorded},
                      f"{_summary(tried)}; recorded by the sink: {', '.join(recorded) or 'NOTHING'}")


@checked_by(PROBE, SINK)
def metadata(f: Facts) -> Row:
    tried = {k: v for k, v in f.probe.get("outside", {}).items() if "169.254.169.254" in k}
    bad = {k: v for k, v in tried.items() if _escaped(f, k, v)}
    return _tried_row("metadata", "TCP 169.254.169.254:80", tried, bad, _summary(tried))


@checked_by(PROBE, HOST)
def host_services(f: Facts) -> Row:
    tried = {k: v for k, v in f.probe.get("tcp", {}).items()
             if k.rsplit(":", 1)[0] in f.host_targets and k.endswith(f":{f.canary_port}")}
    bad = {k: v for k, v in tried.items() if _escaped(f, k, v)}
    hits = f", and the canary saw {f.canary_hits}" if f.canary_hits else ""
    if f.canary_hits:
        bad = {**bad, "canary": "reached"}
    return _tried_row("host services", f"a canary on 0.0.0.0:{f.canary_port}; connect via every host address",
                      tried, bad, _summary(bad or _as_said(f, tried)) + hits)


@checked_by(PROBE)
def other_sandboxes(f: Facts) -> Row:
    if not f.other_sandbox_targets:
        return Row("other sandboxes", "connect to the containers of another sandbox", SKIP,
                   "no other sandbox is running")
    tried = {k: v for k, v in f.probe.get("tcp", {}).items() if k in f.other_sandbox_targets}
    bad = {k: v for k, v in tried.items() if _escaped(f, k, v)}
    return _tried_row("other sandboxes", "connect to the containers of another sandbox", tried, bad,
                      _summary(bad or _as_said(f, tried)))


@checked_by(PROBE)
def ipv6(f: Facts) -> Row:
    tried = f.probe.get("ipv6", {})
    # disabled: None when the probe could not read disable_ipv6 (images/probe/probe.py).
    bad = {k: v for k, v in tried.items()
           if v["result"] == "connected" or v["result"] == "has-default-route" or v["disabled"] is False}
    shown = {True: "1", False: "0", None: "unreadable"}
    text = "; ".join(f"{k} {v['result']} (disable_ipv6={shown[v['disabled']]})" for k, v in tried.items())
    how = "connect to an IPv6 address; read disable_ipv6"
    if not bad and any(v["disabled"] is None for v in tried.values()):
        return Row("IPv6", how, INCONCLUSIVE, text + " (whether IPv6 is disabled could not be read)")
    return Row("IPv6", how, FAIL if bad or not tried else PASS, text or "nothing tried")


@checked_by(PROBE, HOST)
def ingress_proxy(f: Facts) -> Row:
    answers = {f"inside {k}": v for k, v in f.probe.get("http", {}).items()}
    answers.update({f"host {k}": v for k, v in f.ingress_from_host.items()})
    # A refusal is the ingress's 400 or 405 and, from inside, where it listens
    # on no address (images/ingress/start.sh), a refused connection; anything
    # else means it went somewhere.
    bad = {k: v for k, v in answers.items() if v.split()[1:2] not in (["400"], ["405"])
           and not (k.startswith("inside ") and v == "error:Connection refused")
           and not (k.startswith("inside ") and k in _never_left(answers))}
    return _tried_row("use the ingress as proxy", "CONNECT and absolute-URI requests, from inside and from the host",
                      answers, bad)


def _capabilities(names: list) -> set[str]:
    return {n.upper().removeprefix("CAP_") for n in names or []}


@checked_by(PROBE, ENGINE)
def raw_sockets(f: Facts) -> Row:
    # The probe is never root, so its own try shows little: whether any
    # process of the front-end could hold NET_RAW is the engine's to say.
    outcome = f.probe.get("self", {}).get("raw_socket", "not tried")
    config = f.frontend_config
    added, dropped = _capabilities(config.get("cap_add")), _capabilities(config.get("cap_drop"))
    grantable = (not config or config.get("privileged") or added & {"ALL", "NET_RAW"}
                 or not dropped & {"ALL", "NET_RAW"})
    ok = outcome.startswith("error:") and ("not permitted" in outcome or "denied" in outcome) and not grantable
    engine = ("not read from the engine" if not config
              else "NET_RAW can be held in the front-end" if grantable else "NET_RAW dropped")
    return Row("raw sockets", "open SOCK_RAW with the front-end's restrictions; its capabilities",
               PASS if ok else FAIL, f"probe: {outcome}; engine: {engine}")


def _config_problems(config: dict) -> list[str]:
    """What in the front-end's HostConfig would let a process in it gain privileges."""
    problems = []
    if config.get("privileged"):
        problems.append("privileged")
    if config.get("cap_add"):
        problems.append(f"CapAdd {', '.join(config['cap_add'])}")
    if "ALL" not in _capabilities(config.get("cap_drop")):
        problems.append(f"CapDrop {', '.join(config.get('cap_drop') or []) or 'nothing'}, not ALL")
    options = [o.replace("=", ":") for o in config.get("security_opt") or []]
    if not any(o in ("no-new-privileges", "no-new-privileges:true") for o in options):
        problems.append("no no-new-privileges")
    problems += [f"security_opt {o}" for o in options if o in ("seccomp:unconfined", "apparmor:unconfined")]
    return problems


def privileges(f: Facts) -> Row:
    how = "uid, CapEff, NoNewPrivs, seccomp of the front-end's processes; its HostConfig"
    config_by = (ENGINE,) if f.frontend_config else ()
    processes, sentry = f.processes, f.gvisor_sentry
    where = config_by + (f.processes_by,) + ((HOST,) if sentry is not None and f.processes_by != HOST else ())
    bad = [f"HostConfig: {p}" for p in _config_problems(f.frontend_config)] if f.frontend_config \
        else ["HostConfig: not read from the engine"]
    if sentry is not None and (sentry.get("NoNewPrivs") != "1" or sentry.get("Seccomp") != "2"):
        bad.append(f"gVisor's kernel on the host: NoNewPrivs {sentry.get('NoNewPrivs')}, "
                   f"Seccomp {sentry.get('Seccomp')}")
    for pid, p in processes.items():
        problems = []
        if p["cap_eff"] != "0000000000000000":
            problems.append(f"CapEff {p['cap_eff']}")
        if sentry is None and p["no_new_privs"] != "1":
            problems.append(f"NoNewPrivs {p['no_new_privs']}")
        if "0" in p["uid"]:
            problems.append("uid 0")
        if sentry is None and p["seccomp"] != "2":
            problems.append(f"Seccomp {p['seccomp']}")
        if problems:
            bad.append(f"pid {pid} ({p['command']}): {', '.join(problems)}")
    if bad:
        return Row("privileges", how, FAIL, "; ".join(bad), where)
    if not processes and f.processes_note:
        return Row("privileges", how, SKIP, f.processes_note, where)
    if not processes:
        return Row("privileges", how, INCONCLUSIVE, "no process of the front-end could be read"
                   + (" from this machine's /proc (is the engine on another machine?)" if f.processes_by == HOST
                      else ""), where)
    uids = sorted({p["uid"][0] for p in processes.values()})
    said = " (the front-end's word, read inside it)" if f.processes_by == FRONTEND_WORD else ""
    if sentry is not None:
        good = (f"{len(processes)} processes in gVisor{said}: CapEff 0, uids {uids}; gVisor's kernel on the "
                "host: NoNewPrivs 1, Seccomp 2 (filter)")
    else:
        good = f"{len(processes)} processes{said}: CapEff 0, NoNewPrivs 1, uids {uids}, Seccomp 2 (filter)"
    return Row("privileges", how, PASS, good + "; HostConfig: not privileged, no capability added, "
               "CapDrop ALL, no-new-privileges", where)


def network_attachments(f: Facts) -> Row:
    networks = f.frontend_config.get("networks")
    how = "the networks the engine attached the front-end to"
    if networks is None:
        return Row("network attachments", how, FAIL, "not read from the engine", (ENGINE,))
    others = [n for n in networks if n != f.internal_network]
    ok = networks == [f.internal_network] and bool(f.internal_network)
    text = f"on {', '.join(networks) or 'no network'}"
    if others:
        text += f": {', '.join(others)} is not the sandbox's internal network {f.internal_network}"
    return Row("network attachments", how, PASS if ok else FAIL, text, (ENGINE,))


@checked_by(BACKEND, HOST)
def write_weights(f: Facts) -> Row:
    outcomes = f.weights_write.split()
    denied = bool(outcomes) and all(o in ("EROFS", "EACCES", "EPERM", "EBUSY") for o in outcomes)
    same = f.weights_sha_before == f.weights_sha_after == f.expected_sha and bool(f.expected_sha)
    return Row("write the weights", "write, truncate, delete the mounted model from inside the backend",
               PASS if denied and same else FAIL,
               f"{' '.join(outcomes) or 'not tried'}; sha256 {'unchanged' if same else 'CHANGED or unknown'}")


@checked_by(PROBE, ENGINE)
def write_root(f: Facts) -> Row:
    own = f.probe.get("self", {}).get("write_root", "not tried")
    read_only = f.frontend_config.get("read_only")
    shown = {True: "read-only", False: "WRITABLE", None: "unknown"}[read_only]
    return Row("write the root fs", "touch a file in /; the front-end's ReadonlyRootfs",
               PASS if "Read-only" in own and read_only is True else FAIL,
               f"probe: {own}; front-end's root fs {shown}")


# A mount of one of these hands over the engine's socket, or a directory that holds it.
SOCKET_DIRECTORIES = ("/", "/run", "/var/run", "/var", "/run/docker", "/var/run/docker")


@checked_by(PROBE, ENGINE)
def docker_socket(f: Facts) -> Row:
    own = f.probe.get("self", {}).get("docker_socket", None)
    mounts = f.frontend_config.get("mounts")
    if mounts is None:
        return Row("Docker socket", "look for /var/run/docker.sock; the front-end's mounts", FAIL,
                   f"probe: {own}; the front-end's mounts not read from the engine")
    mounted = [f"{m['source']} on {m['destination']}" for m in mounts
               if "docker.sock" in f"{m['source']} {m['destination']}"
               or (m["type"] == "bind" and (m["source"].rstrip("/") or "/") in SOCKET_DIRECTORIES)]
    ok = own == [] and not mounted
    return Row("Docker socket", "look for /var/run/docker.sock; the front-end's mounts", PASS if ok else FAIL,
               "absent" if ok else f"found: {(own or []) + mounted}")


@checked_by(ENGINE)
def bombs(f: Facts) -> Row:
    # 0, -1 or none: no limit (the engine's -1 is "unlimited", which is no more a limit than none).
    missing = [part for part, l in f.limits.items() if not (l.get("pids") or 0) > 0 or not (l.get("memory") or 0) > 0]
    text = ", ".join(f"{part}: pids {l.get('pids')}, memory {l.get('memory', 0) // 2**20} MiB"
                     for part, l in f.limits.items())
    return Row("fork bomb / memory bomb", "pids and memory limits on every part",
               FAIL if missing or not f.limits else PASS, text or "no limits read")


@checked_by(ENGINE, HOST)
def lan_reach(f: Facts) -> Row:
    wide = [b for b in f.ingress_bindings if not b.startswith("127.0.0.1:")]
    localnet = {k: v for k, v in f.route_localnet.items() if v not in ("0", None)}
    # An interface whose value could not be read may be the one where it is 1.
    unread = sorted(k for k, v in f.route_localnet.items() if v is None)
    how = "the UI's host port bound to anything but 127.0.0.1; route_localnet"
    text = f"published on {', '.join(f.ingress_bindings) or 'nothing'}"
    if localnet:
        text += f"; route_localnet=1 on {', '.join(sorted(localnet))}: the LAN can reach 127.0.0.1 ports"
    if wide or localnet or not f.ingress_bindings:
        return Row("LAN reach of the UI", how, FAIL, text)
    if not f.route_localnet or unread:
        return Row("LAN reach of the UI", how, INCONCLUSIVE,
                   text + f"; route_localnet not readable here{' on ' + ', '.join(unread) if unread else ''}"
                   " (the check proves nothing)")
    return Row("LAN reach of the UI", how, PASS, text)


# What nginx answers itself when the UI did not answer it (refused, reset, timed out).
GATEWAY_ERRORS = (502, 504)


def forwarded(answer: dict | None) -> bool:
    """The ingress passed the request on and the UI answered it, whatever it
    answered: a UI may well answer 404 or 501 to the owner's own request."""
    return bool(answer) and answer.get("status") is not None and not answer.get("refused") \
        and answer["status"] not in GATEWAY_ERRORS


def _shown(answer: dict | None) -> str:
    if not answer:
        return "not tried"
    if answer.get("status") is None:
        return f"no answer ({answer.get('error', '')})"
    if answer["status"] in GATEWAY_ERRORS and not answer.get("refused"):
        return f"{answer['status']} (the UI did not answer the ingress)"
    return f"{answer['status']}" + (f" {answer['refused']}" if answer.get("refused") else "")


def _front_door_row(f: Facts, attack: str, how: str, tries: dict[str, tuple[int, ...]],
                    controls: tuple[str, ...]) -> Row:
    """PASS when every try got one of its refusal statuses and every control
    (the owner's own request) was passed on to the UI. An attack that was
    passed on, or refused the wrong way, is FAIL; a control that was not
    passed on, or a try with no answer, leaves the row INCONCLUSIVE: nothing
    shows the door tells the owner apart, and nothing got through."""
    door = f.front_door
    if not door:
        return Row(attack, how, INCONCLUSIVE, "the front door was not tried: the check proves nothing")
    answers = {k: door.get(k) or {} for k in tries}
    wrong = [k for k, a in answers.items() if a.get("status") is not None and a["status"] not in tries[k]]
    unanswered = [k for k, a in answers.items() if a.get("status") is None]
    shut = [k for k in controls if not forwarded(door.get(k))]
    text = "; ".join(f"{k.replace('_', ' ')} {_shown(door.get(k))}" for k in tries)
    text += "; control: " + ", ".join(f"{k.replace('_', ' ')} {_shown(door.get(k))}" for k in controls)
    if wrong:
        return Row(attack, how, FAIL, text)
    if shut:
        return Row(attack, how, INCONCLUSIVE,
                   text + " (the owner's own request was not passed on to the UI: the check proves nothing)")
    if unanswered:
        return Row(attack, how, INCONCLUSIVE, text + " (no answer at all: the check proves nothing)")
    return Row(attack, how, PASS, text)


@checked_by(HOST)
def dns_rebinding(f: Facts) -> Row:
    return _front_door_row(f, "DNS rebinding", "a foreign Host, with the owner's token and with the cookie",
                           {"foreign_host": (421,), "rebound_host_with_cookie": (421,)}, ("owner",))


@checked_by(HOST)
def no_credential(f: Facts) -> Row:
    return _front_door_row(f, "no credential", "a request without the token, and one with a wrong token",
                           {"no_token": (401,), "wrong_token": (401,)}, ("owner", "owner_cookie"))


@checked_by(HOST)
def cross_site_request(f: Facts) -> Row:
    return _front_door_row(f, "cross-site request",
                           "POST with the cookie, text/plain, from another site, another port, no Origin",
                           {"cross_site_post": (403,), "same_site_post": (403,), "no_origin_post": (403,)},
                           ("own_post",))


@checked_by(HOST)
def cross_site_websocket(f: Facts) -> Row:
    return _front_door_row(f, "cross-site WebSocket", "a WebSocket upgrade with the cookie from another origin",
                           {"cross_site_websocket": (403,)}, ("own_websocket",))


@checked_by(HOST)
def smuggled_proxy_request(f: Facts) -> Row:
    how = "CONNECT and an absolute URI pipelined after a good request on one connection"
    answers = f.front_door.get("pipelined")
    if not answers:
        return Row("smuggled proxy request", how, INCONCLUSIVE,
                   "no answer on the connection: the check proves nothing")
    first, later = answers[0], answers[1:]
    refused = [a for a in later if a.get("status") in (400, 405)]
    text = ", ".join(_shown(a) for a in answers)
    if len(refused) < len([a for a in later if a.get("status") is not None]):
        return Row("smuggled proxy request", how, FAIL, text)
    if not forwarded(first):
        return Row("smuggled proxy request", how, INCONCLUSIVE,
                   text + " (the good request was not answered: the check proves nothing)")
    ok = refused and len(refused) == len(later)
    return Row("smuggled proxy request", how, PASS if ok else FAIL, text)


@checked_by(HOST)
def slow_clients(f: Facts) -> Row:
    flood = f.front_door.get("flood")
    how = "hundreds of connections sending half a request while the owner uses the UI"
    if not flood:
        return Row("slow clients", how, FAIL, "not tried")
    answered = [a for a in flood["owner"] if forwarded(a)]
    held = flood["still_open"] >= 0.9 * max(flood["opened"], 1) and flood["opened"] > 0
    slowest = max((a.get("seconds", 0) for a in flood["owner"]), default=0)
    text = (f"{flood['opened']} slow connections ({flood['still_open']} still open after), "
            f"owner answered {len(answered)}/{len(flood['owner'])}, slowest {slowest:.2f} s")
    if flood.get("error"):
        text += f"; opening the flood: {flood['error']}"
    if not held:
        text += " (the flood did not hold its connections: the check proves nothing)"
    if not flood["owner"] or any(a.get("status") is None for a in flood["owner"]):
        return Row("slow clients", how, FAIL, text)  # the owner got no answer at all: the flood shut them out
    if not held or len(answered) < len(flood["owner"]):
        # An answer that was not the UI's (a refusal, a 502) says the door
        # answered, not that the owner got through: neither way is shown.
        return Row("slow clients", how, INCONCLUSIVE, text + (
            "" if not held else " (the owner's own request was not passed on to the UI: the check proves nothing)"))
    return Row("slow clients", how, PASS, text)


MATRIX = (external_dns, dns_leak, raw_egress, attempt_by_address, metadata, host_services, other_sandboxes, ipv6,
          ingress_proxy, raw_sockets, privileges, network_attachments, write_weights, write_root, docker_socket,
          bombs, lan_reach,
          dns_rebinding, no_credential, cross_site_request, cross_site_websocket, smuggled_proxy_request,
          slow_clients)


def judge(facts: Facts) -> list[Row]:
    rows = [row(facts) for row in MATRIX]
    if not facts.sink_not_itemised:
        return rows
    # A front-end that flooded the sink may have left the probe's attempts
    # uncounted by name. A row that failed only for want of the sink's record
    # proves neither way then; one that fails even with every attempt taken as
    # recorded (a live gateway, an answer from outside) stays FAIL.
    everything_recorded = _as_if_all_recorded(facts)
    note = (f"; the sink's summary was full ({facts.sink_not_itemised} attempt(s) at destinations it could not "
            "itemise, as after a flood from a part): whether the sink took these cannot be told")
    return [replace(r, verdict=INCONCLUSIVE, result=r.result + note)
            if r.verdict == FAIL and SINK in r.checked_by and row(everything_recorded).verdict != FAIL else r
            for r, row in zip(rows, MATRIX)]


def _as_if_all_recorded(f: Facts) -> Facts:
    targets = [_key(k) for k in [*f.probe.get("tcp", {}), *f.probe.get("outside", {})]]
    for key, outcome in f.probe.get("by_name", {}).items():
        port = int(key.rpartition(":")[2])
        targets += [("tcp", part.split(" ", 1)[0], port) for part in str(outcome).split("; ")]
    return replace(f, caught=f.caught + [[p, a, port, f.unique_name] for p, a, port in targets],
                   sink_names=f.sink_names + [f.unique_name])
