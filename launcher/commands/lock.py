"""`sandbox lock`, `sign` and `verify-signature`, and the checks `up` and
`plan` make with them: a lock that no longer matches what its policy resolves
to is refused, and with allowed signers set, so is a lock no allowed signer
signed (docs/teams.md)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from launcher import build_records
from launcher.docker_gateway import DockerGateway
from launcher.errors import NotFound, Problem
from launcher.images import PartImages, images_for
from launcher.lock import LockError, current_policy_sha, drift, dump, lock_path, make_lock, read_lock
from launcher.policy import Policy, load_policy
from launcher.policy.files import HashProgress
from launcher.signing import SignatureError, Signer, allowed_signers_setting, sign, signature_path, verify
from launcher.spec import resolve_gpus

Say = Callable[[str], None]


@dataclass(frozen=True)
class Bundle:
    """What a bundle gives `up`: the images it loaded (never built) and the
    model files it carried, by the path the policy writes."""

    images: PartImages
    model_paths: dict[str, Path]


def resolved(policy_file: str | Path) -> Path:
    # The lock sits beside the file the policy really is (as Policy.file).
    return Path(os.path.realpath(policy_file))


def current_lock(gateway: DockerGateway, policy: Policy, images: PartImages) -> dict:
    return make_lock(policy, policy.file.read_bytes(), images, {i.tag: gateway.image_id(i.tag) for i in images.all()})


def check_lock(gateway: DockerGateway, policy: Policy, images: PartImages, *, required: bool,
               same_image_ids: bool = False) -> None:
    """Refuse a policy that no longer resolves to what its lock pins."""
    path = lock_path(policy.file)
    if not path.exists():
        if required:
            raise LockError(f"{path}: no lock; a policy run under allowed signers (or from a bundle) needs "
                            f"one: `sandbox lock {policy.file}`, then `sandbox sign`")
        return
    changes = drift(read_lock(path), current_lock(gateway, policy, images), same_image_ids=same_image_ids)
    if changes:
        listed = "\n".join(f"  - {c}" for c in changes)
        raise LockError(f"{policy.file} no longer resolves to what {path.name} pins:\n{listed}\n"
                        f"Review the change; then `sandbox lock {policy.file}` (or `sandbox up --relock`) pins "
                        f"the new state, and a signed lock must be signed again.")


def check_signature(policy_file: Path, allowed_signers: Path | None) -> Signer | None:
    """Who signed the policy's lock. With allowed signers set, an unsigned
    policy, an unknown signer or a changed byte is refused; without, a
    signature that is there must still be sound."""
    if not resolved(policy_file).is_file():
        return None  # loading the policy says what is wrong with the path
    lock_file = lock_path(resolved(policy_file))
    signature = signature_path(lock_file)
    if allowed_signers is None and not signature.exists():
        return None
    if not lock_file.exists():
        raise SignatureError(f"{policy_file}: not signed (no lock {lock_file.name}); allowed signers are set "
                             f"({allowed_signers}), so only signed policies run")
    if allowed_signers is not None and not signature.exists():
        raise SignatureError(f"{policy_file}: not signed (no {signature.name}); allowed signers are set "
                             f"({allowed_signers}), so only signed policies run")
    signer = verify(lock_file.read_bytes(), signature, allowed_signers)
    # The lock is what is signed; it holds the policy's sha256.
    locked = read_lock(lock_file).get("policy", {}).get("sha256")
    if locked != current_policy_sha(resolved(policy_file)):
        raise SignatureError(f"{policy_file}: the policy changed after its lock was signed by "
                             f"{signer.principal or signer.key}; it is not the file that was reviewed")
    return signer


def lock(gateway: DockerGateway, policy_file: str | Path, ca_bundle: Path | None = None, say: Say | None = None,
         on_build_line: Say | None = None, hash_progress: HashProgress | None = None) -> tuple[Path, dict, bool]:
    """Build what is missing and write POLICY.lock. Returns its path, the lock,
    and whether an old signature was removed (it no longer matched)."""
    say = say or (lambda _m: None)
    policy = load_policy(policy_file, check_port=False, hash_progress=hash_progress)
    gpus = resolve_gpus(policy, gateway.engine_has_gpu() if policy.backend.gpu == "auto" else False)
    images = images_for(policy, use_gpu=bool(gpus), ca_bundle=ca_bundle)
    build_missing(gateway, images, ca_bundle, say, on_build_line)
    new = current_lock(gateway, policy, images)
    missing = [part for part, image in new["images"].items() if image["id"] is None]
    if missing:
        raise NotFound(f"the front-end image {new['images'][missing[0]]['tag']} is not on this machine; "
                       f"`docker pull` or `docker load` it first")
    return write_lock(policy.file, new)


def write_lock(policy_file: Path, new: dict) -> tuple[Path, dict, bool]:
    path = lock_path(policy_file)
    data = dump(new)
    unsigned = False
    if not (path.exists() and path.read_bytes() == data):
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_bytes(data)
        os.replace(temporary, path)
        # A signature of the old lock says nothing of the new one.
        if signature_path(path).exists():
            signature_path(path).unlink()
            unsigned = True
    return path, new, unsigned


def build_missing(gateway: DockerGateway, images: PartImages, ca_bundle: Path | None, say: Say,
                  on_build_line: Say | None) -> None:
    from launcher.commands.up import build_egress  # up imports this module
    for image in images.all():
        if image.built_here and not gateway.image_present(image.tag):
            say(f"building image {image.tag}")
            contacts = gateway.build(image, on_build_line, egress=build_egress(ca_bundle), say=say)
            build_records.save(image.tag, contacts)


def sign_policy(policy_file: str | Path, key: Path) -> tuple[Path, Signer]:
    """Sign the policy's lock (and with it the policy). The lock must be the
    policy's: signing a stale lock would vouch for another file."""
    file = resolved(policy_file)
    lock_file = lock_path(file)
    if not lock_file.exists():
        raise LockError(f"{lock_file}: no lock to sign; `sandbox lock {policy_file}` writes it")
    if read_lock(lock_file).get("policy", {}).get("sha256") != current_policy_sha(file):
        raise LockError(f"{policy_file} changed since it was locked; `sandbox lock {policy_file}` first")
    signature = sign(lock_file, key)
    return signature, verify(lock_file.read_bytes(), signature, None)


def strict_problems(policy_file: str | Path, allowed_signers: Path | None) -> list[Problem]:
    """What `validate --strict` adds: a lock that pins this very policy, and a
    good signature of it (by an allowed signer, when they are set)."""
    name = str(policy_file)
    lock_file = lock_path(resolved(policy_file))
    try:
        locked = read_lock(lock_file)
    except LockError as e:
        return [Problem(name, 0, 0, "", f"--strict needs a lock: {e}")]
    if locked.get("policy", {}).get("sha256") != current_policy_sha(resolved(policy_file)):
        return [Problem(name, 0, 0, "", f"changed since {lock_file.name} was written; `sandbox lock` it again")]
    try:
        check_signature(Path(policy_file), allowed_signers)
    except SignatureError as e:
        return [Problem(name, 0, 0, "", str(e))]
    if not signature_path(lock_file).exists():
        return [Problem(name, 0, 0, "", f"--strict needs a signature: no {signature_path(lock_file).name}; "
                                        f"`sandbox sign {policy_file} --key KEY`")]
    return []


def verify_signature(policy_file: str | Path, allowed_signers: Path | None) -> Signer:
    trusted = allowed_signers_setting(allowed_signers)
    if trusted is None:
        raise SignatureError("name who may sign: --allowed-signers FILE (or $SANDBOX_ALLOWED_SIGNERS, or "
                             "allowed_signers: in the config file); see docs/teams.md")
    signer = check_signature(Path(policy_file), trusted)
    assert signer is not None  # with allowed signers set, an unsigned policy raised
    return signer
