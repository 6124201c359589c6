"""A lock pins what a policy resolves to, so that a team runs what one person
reviewed: the policy's own sha256, each image's build inputs (and its image
ID), each model's sha256 and size, the schema and the launcher version.

It sits beside the policy as POLICY.lock (`quickstart.yaml.lock`), JSON with
sorted keys so that a review sees a small diff. Its signature, when there is
one, is POLICY.lock.sig (launcher/signing.py): signing the lock signs the
policy too, since the lock holds the policy's sha256 (docs/teams.md)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from launcher import __version__
from launcher.errors import SandboxError
from launcher.images import PartImages
from launcher.policy.model import Policy
from launcher.policy.schema import schema

LOCK_FORMAT = 1
MAX_LOCK_BYTES = 2**20  # a lock is a few KiB
MAX_SIGNATURE_BYTES = 64 * 2**10  # an SSH signature, a few hundred bytes
POLICY_VERSION = 1  # the only policy language version (schemas/policy.schema.json)
PART_ORDER = ("dns", "backend", "frontend", "ingress")  # as PartImages.all() gives them


class LockError(SandboxError):
    """A lock is missing, unreadable, or no longer matches what the policy resolves to."""

    exit_code = 2


def lock_path(policy_file: Path) -> Path:
    return policy_file.with_name(policy_file.name + ".lock")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_small(path: Path, limit: int, error: type[SandboxError]) -> bytes | None:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror or e})") from None
    if len(data) > limit:
        raise error(f"{path}: larger than {limit // 1024} KiB, which no such file is")
    return data


def make_lock(policy: Policy, policy_bytes: bytes, images: PartImages, image_ids: dict[str, str | None]) -> dict:
    """The lock of `policy` as it resolves now. `image_ids` maps tags to the
    engine's image IDs (None for an image not on this machine)."""
    return {
        "lock": LOCK_FORMAT,
        "launcher": __version__,
        "schema": {"id": schema().get("$id"), "policy_version": POLICY_VERSION},
        "policy": {"file": policy.file.name, "sha256": sha256_bytes(policy_bytes)},
        # An API-only policy's has no frontend image.
        "images": {part: {"tag": image.tag, "inputs": image.inputs, "id": image_ids.get(image.tag)}
                   for part, image in images.by_part()},
        "models": [{"alias": m.alias, "sha256": m.sha256, "size": m.path.stat().st_size} for m in policy.models],
    }


def dump(lock: dict) -> bytes:
    return (json.dumps(lock, indent=2, sort_keys=True) + "\n").encode()


def read_lock(path: Path) -> dict:
    data = read_small(path, MAX_LOCK_BYTES, LockError)
    if data is None:
        raise LockError(f"{path}: no such lock; `sandbox lock` writes it")
    return parse_lock(data, path)


def parse_lock(raw: bytes, path: Path) -> dict:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise LockError(f"{path}: not a readable lock ({str(e)[:200]})") from None
    if not isinstance(data, dict) or data.get("lock") != LOCK_FORMAT:
        raise LockError(f"{path}: not a lock this launcher reads (format {data.get('lock')!r}, "
                        f"expected {LOCK_FORMAT})" if isinstance(data, dict) else f"{path}: not a lock")
    return data


def drift(locked: dict, current: dict, *, same_image_ids: bool = False) -> list[str]:
    """What differs between a lock and the policy as it resolves now, one line
    per change, in words a reviewer can act on. An image built here is named
    by its build inputs: a rebuild from the same inputs is the same image to
    the lock, as its bytes differ from build to build (timestamps); with
    `same_image_ids` (images from a bundle) its ID must match too. An image
    not built here (a front-end `image:`) is named by its ID."""
    changes = []
    if locked.get("launcher") != current["launcher"]:
        changes.append(f"the launcher: locked with sandbox {locked.get('launcher')}, this is {current['launcher']}")
    if locked.get("schema") != current["schema"]:
        changes.append(f"the policy schema: locked {locked.get('schema')}, now {current['schema']}")
    was, now = locked.get("policy", {}), current["policy"]
    if was.get("sha256") != now["sha256"]:
        changes.append(f"the policy {now['file']}: its sha256 was {_short(was.get('sha256'))}, "
                       f"now {_short(now['sha256'])}")
    for part in PART_ORDER:
        was, now = locked.get("images", {}).get(part, {}), current["images"].get(part)
        if now is None:
            if was:
                changes.append(f"the {part} image: locked {was.get('tag')}, and the policy now has no {part}")
            continue
        if was.get("tag") != now["tag"] or was.get("inputs") != now["inputs"]:
            what = "its build inputs (Dockerfile, build context or recipe)" if now["inputs"] else "its image"
            changes.append(f"the {part} image: {what} changed: locked {was.get('tag')}, now {now['tag']}")
        elif (not now["inputs"] or same_image_ids) and was.get("id") != now["id"]:
            changes.append(f"the {part} image {now['tag']}: locked ID {_short(was.get('id'))}, "
                           f"this machine has {_short(now['id']) if now['id'] else 'no such image'}")
    was_models = {m.get("alias"): m for m in locked.get("models", [])}
    now_models = {m["alias"]: m for m in current["models"]}
    for alias in sorted(set(was_models) | set(now_models)):
        was, now = was_models.get(alias), now_models.get(alias)
        if was is None:
            changes.append(f"model {alias}: not in the lock")
        elif now is None:
            changes.append(f"model {alias}: in the lock, no longer in the policy")
        elif (was.get("sha256"), was.get("size")) != (now["sha256"], now["size"]):
            changes.append(f"model {alias}: locked sha256 {_short(was.get('sha256'))} ({was.get('size')} bytes), "
                           f"now {_short(now['sha256'])} ({now['size']} bytes)")
    return changes


def _short(digest: str | None) -> str:
    if not digest:
        return "(none)"
    return digest.removeprefix("sha256:")[:16]
