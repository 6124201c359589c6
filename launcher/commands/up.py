"""`sandbox up`: build what is missing, apply the plan, and wait until the
backend lists its models and the UI answers through the ingress."""
from __future__ import annotations

import time
import urllib.error
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from launcher import access
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
from launcher.signing import allowed_signers_setting, remember_signer
from launcher.spec import (BACKEND_ALIAS, BACKEND_API_KEY_ENV, BACKEND_PORT, NOBODY, ContainerSpec, SandboxSpec,
                           memory_bytes, resource_name)

Say = Callable[[str], None]
POLL_SECONDS = 0.5
# How many times `up` plans again when the subnet it chose is taken before it is made.
SUBNET_TRIES = 3
# Run inside the sandbox (by the DNS sink's python3): what the UI asks first,
# with the UI's key. Exit 0: answered; 3: the key was refused; 4: not yet.
KEY_CHECK = f"""
import sys, urllib.error, urllib.request
request = urllib.request.Request("http://{BACKEND_ALIAS}:{BACKEND_PORT}/v1/models",
                                 headers={{"Authorization": "Bearer " + sys.argv[1]}})
try:
    urllib.request.urlopen(request, timeout=5).read()
except urllib.error.HTTPError as e:
    print(e)
    sys.exit(3 if e.code in (401, 403) else 4)
except Exception as e:
    print(e)
    sys.exit(4)
"""


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
        if prepared.plan.verb_of("container", spec.container("ingress").name) in (RECREATE, REMOVE):
            keep_ingress_refusals(gateway, spec.name)  # before its container, and its log, go
        try:
            # Builds first: a failed build leaves the running sandbox as it was.
            build_planned(gateway, spec.images, prepared.plan, build_egress(ca_bundle), say, on_build_line)
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
    # one that restarts while we wait is.
    restarts = {c.name: (gateway.state.container_state(c.name) or {}).get("restarts", 0) for c in spec.containers}

    seen: dict[str, dict] = {}

    def alive(part: str) -> dict:
        seen[part] = _alive(gateway, part, spec.container(part).name, restarts[spec.container(part).name])
        return seen[part]

    backend = spec.container("backend").name
    say("waiting for the backend to load the model")
    # Ready is a real request over the sandbox's network with the front-end's
    # key, asked as soon as the model may be loaded (Docker's healthcheck,
    # which `status` shows, first runs only after its interval).
    key = spec.container("backend").env_value(BACKEND_API_KEY_ENV)
    while True:
        alive("dns")
        alive("backend")
        # As the sink itself runs once it has given up root.
        code, output = gateway.containers.exec_in(spec.container("dns").name, ["python3", "-c", KEY_CHECK, key],
                                                  user=NOBODY)
        if code == 0:
            break
        if code == 3:
            raise NotReady("backend", f"it refused the front-end's API key: {output.strip()[-300:]}",
                           gateway.containers.log_tail(backend))
        _check_deadline(gateway, deadline, "backend", backend, f"it did not list its models ({output.strip()})")
        time.sleep(POLL_SECONDS)

    # Without a front-end (`frontend: none`), the API's model list through
    # the front door, as an API client asks it.
    waited = "ingress" if spec.api_only else "frontend"
    frontend = spec.container(waited).name
    url = spec.url.rstrip("/") + spec.health_path
    token = spec.container("ingress").env_value(access.TOKEN_ENV)
    say(f"waiting for the {'API' if spec.api_only else 'UI'} to answer at {url}")
    last_error = ""
    while True:
        alive(waited)
        alive("ingress")
        try:
            with access.open_ui(url, token, timeout=5) as response:
                if response.status == 200:
                    break
                last_error = f"it answered {response.status}"
        except urllib.error.HTTPError as e:
            last_error = f"it answered {e.code}"
        except (OSError, ValueError) as e:
            last_error = f"no answer ({getattr(e, 'reason', e)})"
        _check_deadline(gateway, deadline, "ingress" if spec.api_only else "front-end", frontend,
                        f"{url}: {last_error}")
        time.sleep(POLL_SECONDS)

    # Docker's own healthcheck, which `status` reports, runs on its interval:
    # wait for it too, so that `status` right after `up` agrees.
    while alive("backend")["health"] not in (None, "healthy"):
        _check_deadline(gateway, deadline, "backend", backend, "its healthcheck did not pass")
        time.sleep(POLL_SECONDS / 5)
    return seen


def _alive(gateway: DockerGateway, part: str, container: str, restarts_before: int) -> dict:
    state = gateway.state.container_state(container)
    if state is None:
        raise NotReady(part, f"its container {container} is gone", [])
    if state["state"] in ("exited", "dead") or state["restarts"] > restarts_before:
        raise NotReady(part, f"it stopped (exit code {state['exit_code']}, restarts {state['restarts']})",
                       gateway.containers.log_tail(container))
    return state


def _check_deadline(gateway: DockerGateway, deadline: float, part: str, container: str, why: str) -> None:
    if time.monotonic() > deadline:
        raise NotReady(part, f"timed out: {why}", gateway.containers.log_tail(container))
