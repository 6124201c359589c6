"""What `plan` and `up` share: read the policy and the engine, and work out
the SandboxSpec and the Plan."""
from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from pathlib import Path

from launcher import access
from launcher.builds import image_ids_of, images_not_ours
from launcher.commands.bundle import Bundle
from launcher.commands.lock import check_lock, check_signature
from launcher.commands.target import holds_port, name_of, sandbox_holding
from launcher.engine import DockerGateway
from launcher.errors import NotFound
from launcher.images import PartImages, images_for
from launcher.lockfile import LockError
from launcher.policy.source import PolicySource, read_source
from launcher.plan import Observed, Plan, make_plan
from launcher.policy import Policy, load_policy
from launcher.policy.files import HashProgress
from launcher.signing import Signer, allowed_signers_setting
from launcher.spec import (BACKEND_API_KEY_ENV, FRONTEND_SESSION_KEY_ENV, SandboxSpec, Secrets, build_spec,
                           choose_subnet, resolve_gpus, resource_name)


@dataclass(frozen=True)
class Prepared:
    policy: Policy
    spec: SandboxSpec
    plan: Plan
    signer: Signer | None = None  # who signed the policy's lock, when it is signed
    locked: dict | None = None  # the lock the images were checked against (None: none, or --relock)
    made_with: SpecInputs | None = None  # what the spec was made of besides the policy


@dataclass(frozen=True)
class SpecInputs:
    """What a spec is made of besides the policy, each asked of the engine or
    made once: the same images and keys on another subnet are the same sandbox."""
    images: PartImages
    keys: Secrets
    gpus: str | tuple[str, ...] | None
    volume_sizes_enforced: bool


def port_holder(gateway: DockerGateway, seen: Observed | None = None):
    """Which sandbox's ingress holds a busy host port: the named sandbox's
    own (then `up` may run again without complaint) is asked first, from
    what was `seen` of it when it was observed, each other one only when
    it is not."""
    def holder(name: str, port: int) -> str | None:
        if seen is not None:
            ingress = seen.containers.get(resource_name(name, "ingress"))
            if ingress and f"127.0.0.1:{port}" in ingress.ports:
                return name
        elif name and holds_port(gateway, name, port):
            return name
        return sandbox_holding(gateway, port)
    return holder


def prepare(gateway: DockerGateway, policy: str | Path | PolicySource, ca_bundle: Path | None = None,
            hash_progress: HashProgress | None = None, new_token: bool = False, *,
            relock: bool = False, allowed_signers: Path | None = None,
            bundle: Bundle | None = None) -> Prepared:
    """`policy` is a policy file, or one read before (with its lock and
    signature): those bytes are checked and run. `allowed_signers` (else the
    user's setting) requires a signed lock; `relock` skips the lock's check
    (`up` then writes a new lock); a `bundle` gives the images (never built)
    and may give the models."""
    source = policy if isinstance(policy, PolicySource) else read_source(policy)
    trusted = allowed_signers_setting(allowed_signers)
    if trusted and relock:
        raise LockError("--relock writes a new lock, which no allowed signer has signed: relock with "
                        "`sandbox lock`, have it signed, and run `up` again")
    signer = check_signature(source, trusted)
    # The sandbox as the engine has it, looked at once: the port check, the
    # keys its parts share and the plan all read this one observation.
    name = name_of(source.document[0])
    seen = gateway.state.observe(name) if name else Observed()
    sizes_enforced, _ = gateway.state.volume_sizes()
    # Where the engine cannot bound a volume, a policy that does not accept an
    # unbounded one is refused here, before anything is made or started.
    policy = load_policy(source.file, display=source.display, raw=source.policy, document=source.document,
                         port_holder=port_holder(gateway, seen),
                         hash_progress=hash_progress, model_paths=bundle.model_paths if bundle else None,
                         volume_sizes_enforced=sizes_enforced)
    gpus = resolve_gpus(policy, gateway.state.engine_has_gpu() if policy.backend.gpu == "auto" else False)
    if "gvisor" in (policy.backend.runtime, policy.frontend.runtime if policy.frontend else None) and (
            "runsc" not in gateway.state.engine()["runtimes"]):
        raise NotFound("the policy asks for runtime: gvisor, but gVisor (runsc) is not registered with the "
                       "Docker engine; `sandbox doctor` says how")
    if bundle and "-cuda:" not in bundle.images.backend.tag:
        gpus = None  # the bundle carries the CPU backend
    images = bundle.images if bundle else images_for(policy, use_gpu=bool(gpus), ca_bundle=ca_bundle)
    # Asked once: the lock's check, whether each may run, and the plan use the same answer.
    image_ids = image_ids_of(gateway, images)
    if not relock:
        check_lock(gateway, policy, source, images, required=trusted is not None or bundle is not None,
                   same_image_ids=bundle is not None, image_ids=image_ids)
    def running(part: str, variable: str) -> str | None:
        return seen.env(resource_name(policy.name, part), variable)
    keys = Secrets(
        # The key the parts already share; if one part is gone, the other's.
        api_key=running("backend", BACKEND_API_KEY_ENV)
        or (running("frontend", policy.frontend.backend_key_env) if policy.frontend else None)
        or secrets.token_urlsafe(32),
        session_key=running("frontend", FRONTEND_SESSION_KEY_ENV) or secrets.token_urlsafe(32),
        access_token=(None if new_token else running("ingress", access.TOKEN_ENV) or access.saved_token(policy.name))
        or access.new_token())
    made_with = SpecInputs(images, keys, gpus, sizes_enforced)
    spec = _spec(gateway, policy, made_with)
    locked = None if relock else source.locked()
    return Prepared(policy, spec, _plan(gateway, spec, locked, image_ids, seen), signer, locked, made_with)


def on_another_subnet(gateway: DockerGateway, prepared: Prepared) -> Prepared:
    """The sandbox prepared before, on a subnet free now (the one chosen was
    taken meanwhile by another network): the policy's checks stand, since
    its bytes are the ones checked; only the engine is looked at again."""
    return replan(gateway, replace(prepared, spec=_spec(gateway, prepared.policy, prepared.made_with)))


def _spec(gateway: DockerGateway, policy: Policy, made_with: SpecInputs) -> SandboxSpec:
    subnets = gateway.state.subnets()
    current = (subnets.pop(resource_name(policy.name, "internal"), None) or [None])[0]
    subnet = choose_subnet(policy.name, [s for found in subnets.values() for s in found], current)
    return build_spec(policy, made_with.images, made_with.keys, made_with.gpus, subnet,
                      volume_sizes_enforced=made_with.volume_sizes_enforced)


def replan(gateway: DockerGateway, prepared: Prepared) -> Prepared:
    """What `up` would change now for a sandbox prepared before in the same
    command (`up --verify`): the engine is looked at again, the policy is not."""
    return replace(prepared, plan=_plan(gateway, prepared.spec, prepared.locked,
                                        image_ids_of(gateway, prepared.spec.images)))


def _plan(gateway: DockerGateway, spec: SandboxSpec, locked: dict | None, image_ids: dict[str, str | None],
          seen: Observed | None = None) -> Plan:
    """The plan against what was `seen` of the sandbox (else the engine is looked at now)."""
    again = images_not_ours(gateway, spec.images, locked, image_ids)
    present = frozenset(tag for tag, image_id in image_ids.items() if image_id is not None)
    seen = seen if seen is not None else gateway.state.observe(spec.name)
    return make_plan(spec, replace(seen, images=present, build_again=again))


def current_token(gateway: DockerGateway, name: str) -> str | None:
    """The sandbox's access token: the one its ingress runs with, else the one
    its owner kept from before (after a `down`)."""
    return gateway.state.running_env(name, "ingress", access.TOKEN_ENV) or access.saved_token(name)

