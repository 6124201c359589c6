"""What the launcher knows of each image it runs, kept by its tag (which
names its build inputs) in the owner's state directory: what its build
contacted through the build proxy, for `sandbox audit`, and the image IDs
this launcher put under that tag: built here from the tag's inputs, or
loaded from a bundle that passed its checks. `up` runs an image only if it
built that ID here or the policy's lock pins it; an image a bundle loaded is
built again for any other policy; a tag that now points anywhere else (a
`docker load` or `docker tag` by something else) is refused."""
from __future__ import annotations

import json
import time
from pathlib import Path

from launcher.access import state_dir
from launcher.errors import ImageSwapped
from launcher.private import private_directory, write_private

MAX_IDS = 16  # IDs kept per tag (a tag is rebuilt from the same inputs now and then)


def record_path(tag: str) -> Path:
    return state_dir() / "builds" / (tag.replace("/", "_").replace(":", "_") + ".json")


def save(tag: str, contacts: list[dict], image_id: str | None = None) -> None:
    """After a build of `tag`: what it contacted, and the ID it gave."""
    old = load(tag) or {}
    _write(tag, {**old, "image": tag, "built": round(time.time()), "contacts": contacts,
                 "ids": _with(old, image_id, "built here")})


def save_sources(tag: str, sources: list[dict]) -> None:
    """During a build of `tag`: the images it used (its base images, by name
    and ID, and whether they were pulled for it), kept by `save` after."""
    old = load(tag) or {"image": tag}
    _write(tag, {**old, "sources": sources})


def loaded(tag: str, image_id: str, bundle: str) -> None:
    """`image_id` came under `tag` from `bundle`, which passed its checks.
    An ID built here stays built here: a bundle made on this machine carries
    the very images its builds made."""
    old = load(tag) or {"image": tag}
    if (known_ids(tag) or {}).get(image_id) != "built here":
        _write(tag, {**old, "ids": _with(old, image_id, f"loaded from the bundle {bundle}")})


def known_ids(tag: str) -> dict[str, str] | None:
    """The IDs the launcher put under `tag`, each with how ("built here", or
    "loaded from the bundle NAME"); None when it has no record of the tag at
    all (an image from before records were kept, or another state directory)."""
    record = load(tag)
    if record is None or not isinstance(record.get("ids"), list):
        return None
    return {entry["id"]: str(entry.get("how")) for entry in record["ids"]
            if isinstance(entry, dict) and isinstance(entry.get("id"), str)}


def may_run(tag: str, image_id: str, pinned: str | None = None) -> bool:
    """Whether the image `image_id`, found under `tag`, is one the launcher
    built here (or `pinned`, the ID a lock pins): only then does it run.
    False, to be built again from its inputs: loaded by a bundle (it runs
    for that bundle's policy only, whose lock pins it), or no record at all
    (built before records were kept). A tag that now points at an image the
    launcher never made (a `docker tag`, a `docker load` by something else)
    is refused."""
    if image_id == pinned:
        return True
    known = known_ids(tag)
    if known is None or known.get(image_id, "").startswith("loaded"):
        return False
    if image_id not in known:
        raise ImageSwapped(
            f"the image {tag} is now {image_id[:19]}, which this launcher neither built nor loaded, and no "
            f"lock pins it: something retagged it (a `docker load` or `docker tag`). Nothing was started. "
            f"If that was not you, look at it (`docker image inspect {tag}`); `docker rmi {tag}` and "
            f"`sandbox up` build it again from its inputs.")
    return True


def _with(old: dict, image_id: str | None, how: str) -> list[dict]:
    ids = [e for e in old.get("ids", []) if isinstance(e, dict) and e.get("id") != image_id]
    if image_id:
        ids.append({"id": image_id, "how": how, "at": round(time.time())})
    return ids[-MAX_IDS:]


def _write(tag: str, record: dict) -> None:
    path = record_path(tag)
    write_private(private_directory(path.parent) / path.name, json.dumps(record))


def load(tag: str) -> dict | None:
    try:
        data = json.loads(record_path(tag).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None
