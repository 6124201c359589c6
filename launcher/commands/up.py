"""`sandbox up`: build what is missing, apply the plan, and wait until the
backend lists its models and the UI answers through the ingress."""
from __future__ import annotations

import threading
import time
import urllib.error
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from launcher import access
from launcher.browser import close_locked_window
from launcher.builds import build_egress, build_planned
from launcher.commands.audit import keep_ingress_refusals, names_tried
from launcher.commands.bundle import Bundle, is_bundle, open_bundle
from launcher.commands.lock import current_lock, write_lock
from launcher.commands.model import policy_warnings
from launcher.commands.prepare import Prepared, on_another_subnet, prepare
from launcher.commands.target import name_of
from launcher.engine import DockerGateway
from launcher.mutex import one_command_at_a_time
from launcher.errors import ModelChanged, NotReady, SandboxError, SubnetTaken
from launcher.lockfile import LockError
from launcher.policy.source import PolicySource, read_source
from launcher.plan import RECREATE, REMOVE
from launcher.policy.files import HashProgress, model_file_problem
from launcher.policy.validate import embedding_warnings
from launcher.readiness import remember_ready, seen_ready
from launcher.signing import allowed_signers_setting, remember_signer
from launcher.spec import (BACKEND_ALIAS, BACKEND_API_KEY_ENV, BACKEND_PORT, NOBODY, PARTS, UPSTREAM_ENV, ContainerSpec,
                           SandboxSpec, memory_bytes, resource_name)

Say = Callable[[str], None]
# A readiness check is one local HTTP request: asked often, it costs little.
POLL_SECONDS = 0.1
# How many times `up` plans again when the subnet it chose is taken before it is made.
SUBNET_TRIES = 3
# Run inside the sandbox by the DNS sink's python3, as the sink runs once it
# has given up root: waits, asking every 50 ms, until the backend lists its
# models to the UI's key and then the UI answers its health path, both
# straight over the sandbox's network (through the ingress, each try that
# found nothing listening would be an error line in its log); an empty UI
# address (an API-only sandbox) asks the backend alone. Exit 0: both
# answered; 3: the key was refused; 4: not yet after the seconds it was given.
READY_CHECK = """
import sys, time, urllib.error, urllib.request
key, backend, ui, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
deadline = time.monotonic() + seconds
def ask(url, headers):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except Exception as e:
        return str(e)
for url, headers in ((backend, {"Authorization": "Bearer " + key}), *(((ui, {}),) if ui else ())):
    while True:
        answer = ask(url, headers)
        if answer == 200:
            break
        if url == backend and answer in (401, 403):
            print(f"{url}: {answer}")
            sys.exit(3)
        if time.monotonic() > deadline:
            print(f"{url}: {answer}")
            sys.exit(4)
        time.sleep(0.05)
"""
# The longest one readiness check runs before `up` starts another (the
# engine's API ends a call it waits on for longer than a minute).
READY_CHECK_SECONDS = 30


@dataclass
class UpResult:
    name: str
    url: str
    prepared: Prepared
    seconds: dict = field(default_factory=dict)  # phase -> seconds

    @property
    def token(self) -> str:
        return self.prepared.spec.container("ingress").env_value(access.TOKEN_ENV)

    @property
    def access_link(self) -> str:
        return access.access_link(self.url, self.token)

    def to_dict(self) -> dict:
        return {"name": self.name, "url": self.url, "access_link": self.access_link, "token": self.token,
                "api_only": self.prepared.spec.api_only,
                "actions": [a.to_dict() for a in self.prepared.plan.actions],
                "seconds": {k: round(v, 2) for k, v in self.seconds.items()}}


def up(gateway: DockerGateway, policy_file: str | Path, *, ca_bundle: Path | None = None,
       timeout: float = 600, say: Say | None = None, on_build_line: Say | None = None,
       hash_progress: HashProgress | None = None, new_token: bool = False, relock: bool = False,
       allowed_signers: Path | None = None) -> UpResult:
    """`policy_file` may be a bundle (`sandbox bundle`): its images are loaded,
    never built. `relock` writes the policy's lock anew instead of checking it;
    `allowed_signers` (else the user's setting) runs only signed policies."""
    say = say or (lambda _m: None)
    started, began = time.monotonic(), time.time()
    bundle = None
    if is_bundle(policy_file):
        if relock:
            raise LockError("a bundle carries the lock it was made with; --relock is for policy files")
        source, bundle = open_bundle(gateway, Path(policy_file), allowed_signers_setting(allowed_signers), say)
        started_after_load = time.monotonic()
    else:
        # Read once: the signature, the lock and the run all use these bytes.
        source = read_source(policy_file)
    trust = TrustOptions(relock, allowed_signers, bundle)
    name = name_of(source.document[0])  # None: loading the policy below says what is wrong
    # Changing the sandbox is one command at a time; waiting for it is not, so
    # that a `down` in another shell is not held up by an `up` that waits.
    with one_command_at_a_time(name, say) if name else nullcontext():
        result = _apply(gateway, source, ca_bundle, say, on_build_line, hash_progress, new_token, started, trust)
    if bundle:
        result.seconds["bundle"] = started_after_load - started

    mark = time.monotonic()
    seen = wait_until_ready(gateway, result.prepared.spec, timeout=timeout, say=say)
    result.seconds["ready"] = time.monotonic() - mark
    result.seconds["total"] = time.monotonic() - started
    try:
        _, tried = names_tried(gateway, result.name, since=began,
                               part_of_address=part_of_address_seen(result.prepared.spec, seen))
    except SandboxError:  # gone again already (a `down` in another shell): nothing to say of it
        tried = []
    if tried:
        names = ", ".join(f"{n['name']} ({'/'.join(n['parts'])})" for n in tried[:3])
        say(f"while starting, parts tried to reach {len(tried)} outside name(s), each ended at the sink: {names}"
            + (", ..." if len(tried) > 3 else "") + f"; `sandbox audit {result.name}` shows all")
    return result


@dataclass(frozen=True)
class TrustOptions:
    relock: bool = False
    allowed_signers: Path | None = None
    bundle: Bundle | None = None


def _apply(gateway: DockerGateway, source: PolicySource, ca_bundle: Path | None, say: Say,
           on_build_line: Say | None, hash_progress: HashProgress | None, new_token: bool,
           started: float, trust: TrustOptions) -> UpResult:
    prepared = prepare(gateway, source, ca_bundle, hash_progress, new_token=new_token,
                       relock=trust.relock, allowed_signers=trust.allowed_signers, bundle=trust.bundle)
    spec = prepared.spec
    result = UpResult(spec.name, spec.url, prepared)
    result.seconds["prepare"] = time.monotonic() - started
    # Kept before anything starts, so that the owner can always get in.
    access.save_token(spec.name, result.token)
    for warning in policy_warnings(prepared.policy, on_gpu=spec.container("backend").gpus is not None,
                                   doc=source.document[0]) + embedding_warnings(prepared.policy, source.document[0]):
        say(str(warning))
    for warning in kept_volume_sizes(gateway, spec):
        say(warning)
    mark = time.monotonic()
    for attempt in range(SUBNET_TRIES):
        replaces_ingress = prepared.plan.verb_of("container", spec.container("ingress").name) in (RECREATE, REMOVE)
        if replaces_ingress:
            keep_ingress_refusals(gateway, spec.name)  # before its container, and its log, go
        try:
            # Builds first: a failed build leaves the running sandbox as it was.
            build_planned(gateway, spec.images, prepared.plan, build_egress(ca_bundle), say, on_build_line)
            if replaces_ingress:
                # The window, just before its origin is free for anyone to
                # take (`open` waits for this command: none opens meanwhile).
                close_locked_window(spec.name, say)
            gateway.applier.apply(spec, prepared.plan, say=say, before_create=weights_unchanged)
            break
        except SubnetTaken as e:
            # Another sandbox started while this one's images were built:
            # plan again (the images are there now) with a subnet still free.
            if attempt == SUBNET_TRIES - 1:
                raise
            say(f"{e}; choosing another")
            prepared = result.prepared = on_another_subnet(gateway, prepared)
            spec = prepared.spec
    result.seconds["apply"] = time.monotonic() - mark
    if trust.relock:
        path, _, unsigned = write_lock(prepared.policy.file,
                                       current_lock(gateway, prepared.policy, source.policy, spec.images))
        say(f"wrote {path}" + ("; its old signature no longer matches and was removed: sign it again"
                               if unsigned else ""))
    # Who vouched for what runs, for `status`.
    remember_signer(spec.name, prepared.signer)
    return result


def kept_volume_sizes(gateway: DockerGateway, spec: SandboxSpec) -> list[str]:
    """A volume keeps the size it was made with (the engine cannot change
    it): one made before its policy's size, or unbounded before the engine
    could bound it, is said, with how to have it made anew."""
    kept = {v["name"]: v["limit_bytes"] for v in gateway.state.volume_usage(spec.name, count_bytes=False)}
    out = []
    for volume in spec.volumes:
        if volume.size and volume.name in kept and kept[volume.name] != memory_bytes(volume.size):
            now = "no size limit" if kept[volume.name] is None else f"a size of {kept[volume.name]} bytes"
            out.append(f"volume {volume.name} keeps {now}, not the {volume.size} it would be made with now: "
                       f"`sandbox down --volumes {spec.name}` and `up` make it anew (its data is lost)")
    return out


def weights_unchanged(container: ContainerSpec) -> None:
    """The bytes that were checked are the bytes that get mounted: minutes of
    image builds may pass between the policy's check and this moment, so each
    model is checked again (from the hash cache, unless the file changed)."""
    for mount in container.mounts:
        if mount.sha256:
            problem = model_file_problem(mount.source, Path(mount.source), mount.sha256)
            if problem:
                raise ModelChanged(f"refusing to start the {container.part}: the model changed since it was "
                                   f"checked: {problem}")


def part_of_address_seen(spec: SandboxSpec, seen: dict[str, dict]) -> dict[str, str]:
    """Each part's address on the sandbox's internal network, from its
    container as last seen (`seen`, by part), to name the client of a record."""
    internal = resource_name(spec.name, "internal")
    return {state["addresses"][internal]: part for part, state in seen.items()
            if internal in state.get("addresses", {})}


def wait_until_ready(gateway: DockerGateway, spec: SandboxSpec, timeout: float, say: Say) -> dict[str, dict]:
    """Each part's container state as last seen once all are ready, by part."""
    deadline = time.monotonic() + timeout
    # A part that restarted before this `up` (and was kept) is not failing now;
    # one that restarts while we wait is: the first look gives each count.
    restarts: dict[str, int] = {}
    seen: dict[str, dict] = {}

    def alive(part: str) -> dict:
        name = spec.container(part).name
        seen[part] = _alive(gateway, part, name, restarts.get(name))
        restarts.setdefault(name, seen[part]["restarts"])
        return seen[part]

    parts = [part for part in PARTS if any(c.part == part for c in spec.containers)]
    backend = spec.container("backend").name
    key = spec.container("backend").env_value(BACKEND_API_KEY_ENV)
    # Without a front-end (`frontend: none`) there is no UI to ask: the
    # backend, then the API through the front door.
    ui = "" if spec.api_only else f"http://{spec.container('ingress').env_value(UPSTREAM_ENV)}{spec.health_path}"
    waited_part, waited_as = ("ingress", "ingress") if spec.api_only else ("frontend", "front-end")
    waited = spec.container(waited_part).name
    # Ready is real requests over the sandbox's network, the UI's first one
    # with the UI's key, asked as soon as the model may be loaded (Docker's
    # healthcheck, which `status` shows, first runs only after its interval).
    # The check runs in the sink while this thread watches every part.
    for part in parts:
        alive(part)
    # Parts an earlier `up` saw ready, in the same run of each container (a
    # no-change `up`), are not asked again: only the front door is, below.
    before = seen_ready(spec.name)
    ready_before = all(before.get(state["name"]) == state["started_at"] for state in seen.values())
    if not ready_before:
        say("waiting for the backend to load the model" + ("" if spec.api_only else " and the UI to answer"))
    while not ready_before:
        seconds = max(1.0, min(READY_CHECK_SECONDS, deadline - time.monotonic()))
        sink = spec.container("dns").name
        code, output = _watched(gateway, lambda: [alive(part) for part in parts], deadline, sink,
                                lambda: gateway.containers.exec_in(
                                    sink, ["python3", "-c", READY_CHECK, key,
                                           f"http://{BACKEND_ALIAS}:{BACKEND_PORT}/v1/models", ui, str(seconds)],
                                    user=NOBODY))
        if code == 0:
            break
        if code == 3:
            raise NotReady("backend", f"it refused the front-end's API key: {output.strip()[-300:]}",
                           gateway.containers.log_tail(backend))
        waited_for = ("backend", backend) if f"{BACKEND_ALIAS}:" in output else (waited_as, waited)
        _check_deadline(gateway, deadline, *waited_for, f"no answer in time ({output.strip()[-300:]})")

    # And once through the front door, as the user (or, API only, an API
    # client) will come.
    url = spec.url.rstrip("/") + spec.health_path
    token = spec.container("ingress").env_value(access.TOKEN_ENV)
    mark = access.launcher_mark(token, spec.container("ingress").env_value(BACKEND_API_KEY_ENV))
    while True:
        try:
            with access.open_ui(url, token, timeout=5, mark=mark) as response:
                if response.status == 200:
                    break
                last_error = f"it answered {response.status}"
        except urllib.error.HTTPError as e:
            last_error = f"it answered {e.code}"
        except (OSError, ValueError) as e:
            last_error = f"no answer ({getattr(e, 'reason', e)})"
        alive("ingress")
        _check_deadline(gateway, deadline, waited_as, waited, f"{url}: {last_error}")
        time.sleep(POLL_SECONDS)

    # Docker's own healthcheck runs on its interval: `status` reads a part it
    # has not checked yet as this wait saw it (launcher/readiness.py).
    remember_ready(spec.name, seen)
    return seen


def _watched(gateway: DockerGateway, all_alive: Callable[[], object], deadline: float, sink: str,
             check: Callable[[], tuple[int, str]]) -> tuple[int, str]:
    """`check()`'s answer, while every part is watched: a part that stops
    or goes ends the wait at once, whatever the check is doing. The check
    runs in a thread of its own, left to end by itself (its own deadline)
    if the wait ends first."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["answer"] = check()
        except BaseException as e:  # noqa: BLE001 - given to the waiting thread, after it has looked at the parts
            outcome["error"] = e
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while True:
        thread.join(POLL_SECONDS)
        all_alive()  # NotReady if a part stopped or is gone
        if not thread.is_alive():
            break
        # The check ends on its own by the deadline; this is in case the engine does not answer.
        _check_deadline(gateway, deadline + 10, "DNS sink", sink, "the readiness check it runs did not end")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["answer"]


def _alive(gateway: DockerGateway, part: str, container: str, restarts_before: int | None) -> dict:
    state = gateway.state.container_state(container)
    if state is None:
        raise NotReady(part, f"its container {container} is gone", [])
    restarted = restarts_before is not None and state["restarts"] > restarts_before
    if state["state"] in ("exited", "dead") or restarted:
        raise NotReady(part, f"it stopped (exit code {state['exit_code']}, restarts {state['restarts']})",
                       gateway.containers.log_tail(container))
    return state


def _check_deadline(gateway: DockerGateway, deadline: float, part: str, container: str, why: str) -> None:
    if time.monotonic() > deadline:
        raise NotReady(part, f"timed out: {why}", gateway.containers.log_tail(container))
