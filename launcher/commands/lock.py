"""`sandbox lock`, `sign` and `verify-signature`, and the checks `up` and
`plan` make with them: a lock that no longer matches what its policy resolves
to is refused, and with allowed signers set, so is a lock no allowed signer
signed (docs/teams.md)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from launcher.builds import build_and_record, build_egress, image_ids_of, images_not_ours
from launcher.engine import DockerGateway
from launcher.errors import NotFound, Problem
from launcher.images import PartImages, images_for
from launcher.lockfile import LockError, drift, dump, lock_path, make_lock
from launcher.policy.source import PolicySource, read_source
from launcher.policy import Policy, load_policy
from launcher.policy.files import HashProgress
from launcher.private import replace_file
from launcher.signing import SignatureError, Signer, allowed_signers_setting, sign, signature_path, verify
from launcher.spec import resolve_gpus

Say = Callable[[str], None]


def current_lock(gateway: DockerGateway, policy: Policy, policy_bytes: bytes, images: PartImages,
                 image_ids: dict[str, str | None] | None = None) -> dict:
    """`image_ids`: each tag's image ID as the command already asked the engine."""
    return make_lock(policy, policy_bytes, images, image_ids if image_ids is not None
                     else image_ids_of(gateway, images))


def check_lock(gateway: DockerGateway, policy: Policy, source: PolicySource, images: PartImages, *,
               required: bool, same_image_ids: bool = False,
               image_ids: dict[str, str | None] | None = None) -> None:
    """Refuse a policy that no longer resolves to what its lock pins."""
    path = source.lock_file
    locked = source.locked()
    if locked is None:
        if required:
            raise LockError(f"{path}: no lock; a policy run under allowed signers (or from a bundle) needs "
                            f"one: `sandbox lock {source.display}`, then `sandbox sign`")
        return
    changes = drift(locked, current_lock(gateway, policy, source.policy, images, image_ids),
                    same_image_ids=same_image_ids)
    if changes:
        listed = "\n".join(f"  - {c}" for c in changes)
        raise LockError(f"{source.display} no longer resolves to what {path.name} pins:\n{listed}\n"
                        f"Review the change; then `sandbox lock {source.display}` (or `sandbox up --relock`) pins "
                        f"the new state, and a signed lock must be signed again.")


def check_signature(source: PolicySource, allowed_signers: Path | None) -> Signer | None:
    """Who signed the policy's lock. With allowed signers set, an unsigned
    policy, an unknown signer or a changed byte is refused; without, a
    signature that is there must still be sound. Every check is on the bytes
    `source` holds, which are the bytes that run."""
    if allowed_signers is None and source.signature is None:
        return None
    if source.lock is None:
        raise SignatureError(f"{source.display}: not signed (no lock {source.lock_file.name}); allowed signers "
                             f"are set ({allowed_signers}), so only signed policies run")
    if allowed_signers is not None and source.signature is None:
        raise SignatureError(f"{source.display}: not signed (no {source.signature_file.name}); allowed signers "
                             f"are set ({allowed_signers}), so only signed policies run")
    signer = verify(source.lock, source.signature, source.signature_file, allowed_signers)
    # The lock is what is signed; it holds the policy's sha256.
    if source.locked().get("policy", {}).get("sha256") != source.policy_sha256:
        raise SignatureError(f"{source.display}: the policy changed after its lock was signed by "
                             f"{signer.principal or signer.key}; it is not the file that was reviewed")
    return signer


def lock(gateway: DockerGateway, policy_file: str | Path, ca_bundle: Path | None = None, say: Say | None = None,
         on_build_line: Say | None = None, hash_progress: HashProgress | None = None) -> tuple[Path, dict, bool]:
    """Build what is missing and write POLICY.lock. Returns its path, the lock,
    and whether an old signature was removed (it no longer matched)."""
    say = say or (lambda _m: None)
    source = read_source(policy_file)
    policy = load_policy(source.file, display=source.display, check_port=False, hash_progress=hash_progress,
                         raw=source.policy)
    gpus = resolve_gpus(policy, gateway.state.engine_has_gpu() if policy.backend.gpu == "auto" else False)
    images = images_for(policy, use_gpu=bool(gpus), ca_bundle=ca_bundle)
    # What the lock pins must be what the launcher built (or loaded checked).
    again = images_not_ours(gateway, images, None)
    to_build = [i for i in images.all() if i.built_here and (i.tag in again or not gateway.state.image_present(i.tag))]
    if to_build:
        build_and_record(gateway, to_build, build_egress(ca_bundle), say, on_build_line)
    new = current_lock(gateway, policy, source.policy, images)
    missing = [part for part, image in new["images"].items() if image["id"] is None]
    if missing:
        raise NotFound(f"the front-end image {new['images'][missing[0]]['tag']} is not on this machine; "
                       f"`docker pull` or `docker load` it first")
    return write_lock(policy.file, new)


def write_lock(policy_file: Path, new: dict) -> tuple[Path, dict, bool]:
    path = lock_path(policy_file)
    data = dump(new)
    unsigned = False
    try:
        same = path.read_bytes() == data
    except FileNotFoundError:
        same = False
    if not same:
        replace_file(path, data)
        # A signature of the old lock says nothing of the new one.
        if signature_path(path).exists():
            signature_path(path).unlink()
            unsigned = True
    return path, new, unsigned


def sign_policy(policy_file: str | Path, key: Path) -> tuple[Path, Signer]:
    """Sign the policy's lock (and with it the policy). The lock must be the
    policy's: signing a stale lock would vouch for another file. The bytes
    signed are the bytes checked."""
    source = read_source(policy_file)
    locked = source.locked()
    if locked is None:
        raise LockError(f"{source.lock_file}: no lock to sign; `sandbox lock {policy_file}` writes it")
    if locked.get("policy", {}).get("sha256") != source.policy_sha256:
        raise LockError(f"{policy_file} changed since it was locked; `sandbox lock {policy_file}` first")
    signature = sign(source.lock, source.lock_file, key)
    signer = verify(source.lock, signature, source.signature_file, None)
    replace_file(source.signature_file, signature)
    return source.signature_file, signer


def strict_problems(policy: str | Path | PolicySource, allowed_signers: Path | None) -> list[Problem]:
    """What `validate --strict` adds: a lock that pins this very policy, and a
    good signature of it (by an allowed signer, when they are set). `policy`
    is a policy file, or one read before with its lock and signature."""
    name = policy.display if isinstance(policy, PolicySource) else str(policy)
    try:
        source = policy if isinstance(policy, PolicySource) else read_source(policy)
        locked = source.locked()
        if locked is None:
            raise LockError(f"{source.lock_file}: no such lock; `sandbox lock` writes it")
    except (LockError, SignatureError) as e:
        return [Problem(name, 0, 0, "", f"--strict needs a lock: {e}")]
    if locked.get("policy", {}).get("sha256") != source.policy_sha256:
        return [Problem(name, 0, 0, "", f"changed since {source.lock_file.name} was written; `sandbox lock` it again")]
    try:
        check_signature(source, allowed_signers)
    except SignatureError as e:
        return [Problem(name, 0, 0, "", str(e))]
    if source.signature is None:
        return [Problem(name, 0, 0, "", f"--strict needs a signature: no {source.signature_file.name}; "
                                        f"`sandbox sign {name} --key KEY`")]
    return []


def verify_signature(policy_file: str | Path, allowed_signers: Path | None) -> Signer:
    trusted = allowed_signers_setting(allowed_signers)
    if trusted is None:
        raise SignatureError("name who may sign: --allowed-signers FILE (or $SANDBOX_ALLOWED_SIGNERS, or "
                             "allowed_signers: in the config file); see docs/teams.md")
    signer = check_signature(read_source(policy_file), trusted)
    assert signer is not None  # with allowed signers set, an unsigned policy raised
    return signer
