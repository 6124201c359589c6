"""`sandbox bundle`: one file that carries a locked policy to a machine with no
network: its images, the policy, its lock and signature, and optionally the
weights. `sandbox up BUNDLE` checks every hash before it uses anything, loads
the images and starts the sandbox without building or pulling (docs/teams.md).

The bundle is an uncompressed tar:

    sandbox-bundle.json     what is in it: each file's sha256 and size, the images
    policy/NAME.yaml        the policy, byte for byte, its .lock and .lock.sig,
    policy/CONTEXT/...      and the front-end's build context when it has one
    images.tar              `docker save` of the locked images
    models/SHA256.gguf      the weights, with --models

The lock is what vouches for the rest: the policy's sha256 is in it, each
image's ID (the sha256 of its configuration, which names the sha256 of each
layer; the engine checks those as it loads), and each model's sha256."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

from launcher import __version__
from launcher.build_context import context_files
from launcher.commands.lock import Bundle, check_lock
from launcher.docker_gateway import DockerGateway
from launcher.errors import SandboxError
from launcher.images import ImageBuild, PartImages, images_for
from launcher.lock import PART_ORDER, lock_path, read_lock
from launcher.policy import load_policy
from launcher.policy.files import sha256_of
from launcher.signing import signature_path

Say = Callable[[str], None]
MANIFEST = "sandbox-bundle.json"
BUNDLE_FORMAT = 1
CHUNK = 4 * 2**20
_SAFE_NAME = re.compile(r"[A-Za-z0-9._+-]+(/[A-Za-z0-9._+-]+)*")


class BundleError(SandboxError):
    exit_code = 2


def unpack_root() -> Path:
    """Where bundles are unpacked (the policy and the weights; images go to the
    engine): $XDG_DATA_HOME/sandbox/bundles, else ~/.local/share/sandbox/bundles.
    Each bundle gets a directory named by its manifest's hash."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "sandbox" / "bundles"


def is_bundle(path: str | Path) -> bool:
    """A tar whose first member is the bundle's manifest (a policy is YAML)."""
    try:
        with tarfile.open(path, "r:") as tar:
            first = tar.next()
            return first is not None and first.name == MANIFEST
    except (OSError, tarfile.TarError):
        return False


def make_bundle(gateway: DockerGateway, policy_file: str | Path, output: Path, *, models: bool = False,
                say: Say | None = None) -> dict:
    """Write the bundle of a locked policy. Returns its manifest."""
    say = say or (lambda _m: None)
    policy = load_policy(policy_file, check_port=False)
    lock_file = lock_path(policy.file)
    locked = read_lock(lock_file)
    # The images the lock pins, which must be the very ones on this machine.
    use_gpu = "-cuda:" in locked["images"]["backend"]["tag"]
    check_lock(gateway, policy, images_for(policy, use_gpu=use_gpu, ca_bundle=None), required=True,
               same_image_ids=True)

    files: list[tuple[str, Path]] = [(f"policy/{policy.file.name}", policy.file),
                                     (f"policy/{lock_file.name}", lock_file)]
    if signature_path(lock_file).exists():
        files.append((f"policy/{signature_path(lock_file).name}", signature_path(lock_file)))
    context = policy.frontend.build_context
    if context is not None:
        relative = context.relative_to(policy.file.parent)
        for rel in context_files(context, policy.frontend.build_dockerfile):
            files.append((f"policy/{(relative / rel).as_posix()}", context / rel))
    if models:
        files += [(f"models/{m.sha256}.gguf", m.path) for m in policy.models]

    output = output.resolve()
    try:
        return _write_bundle(gateway, policy, locked, files, output, say)
    except OSError as e:
        Path(str(output) + ".partial").unlink(missing_ok=True)
        raise BundleError(f"cannot write {output}: {e.strerror or e}") from None


def _write_bundle(gateway: DockerGateway, policy, locked: dict, files: list[tuple[str, Path]], output: Path,
                  say: Say) -> dict:
    with tempfile.NamedTemporaryFile(dir=output.parent, prefix=".images-", suffix=".tar") as images_tar:
        tags = [locked["images"][part]["tag"] for part in PART_ORDER]
        say(f"saving {len(tags)} images")
        digest = hashlib.sha256()
        for chunk in gateway.save_images(tags):
            images_tar.write(chunk)
            digest.update(chunk)
        images_tar.flush()
        # Weights are hashed once and remembered (launcher/policy/files.py).
        entries = {name: {"sha256": sha256_of(path), "size": path.stat().st_size} for name, path in files}
        entries["images.tar"] = {"sha256": digest.hexdigest(), "size": os.path.getsize(images_tar.name)}
        manifest = {"bundle": BUNDLE_FORMAT, "launcher": __version__, "name": policy.name,
                    "policy": f"policy/{policy.file.name}",
                    "images": {part: {"tag": locked["images"][part]["tag"], "id": locked["images"][part]["id"]}
                               for part in PART_ORDER},
                    "files": entries}
        partial = output.with_name(output.name + ".partial")
        say(f"writing {output}")
        with tarfile.open(partial, "w:", format=tarfile.PAX_FORMAT) as tar:
            data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
            tar.addfile(_info(MANIFEST, len(data)), io.BytesIO(data))
            for name, path in [*files, ("images.tar", Path(images_tar.name))]:
                with open(path, "rb") as f:
                    tar.addfile(_info(name, entries[name]["size"]), f)
        os.replace(partial, output)
    return manifest


def open_bundle(gateway: DockerGateway, path: Path, say: Say | None = None) -> tuple[Path, Bundle]:
    """Check a bundle whole, unpack its policy and weights, and load its images
    (unless the engine has them already). Returns the policy's path and what
    `up` takes from the bundle. Nothing is loaded unless every hash matched."""
    try:
        return _open_bundle(gateway, path.resolve(), say or (lambda _m: None))
    except (tarfile.TarError, EOFError) as e:
        raise BundleError(f"{path}: damaged or cut short ({e}); copy it again") from None
    except OSError as e:
        raise BundleError(f"{path}: cannot be read or unpacked ({e.strerror or e})") from None


def _open_bundle(gateway: DockerGateway, path: Path, say: Say) -> tuple[Path, Bundle]:
    with tarfile.open(path, "r:") as tar:
        first = tar.next()
        if first is None or first.name != MANIFEST:
            raise BundleError(f"{path}: not a sandbox bundle")
        raw = tar.extractfile(first).read(1024 * 1024)
        manifest = _manifest(path, raw)
        target = unpack_root() / f"{manifest['name']}-{hashlib.sha256(raw).hexdigest()[:16]}"
        members = {}
        for member in tar:
            if member is first:
                continue
            if member.name not in manifest["files"] or not member.isfile() or member.name in members:
                raise BundleError(f"{path}: holds {member.name!r}, which its manifest does not list")
            members[member.name] = member
        missing = set(manifest["files"]) - set(members)
        if missing:
            raise BundleError(f"{path}: lacks {sorted(missing)[0]}, which its manifest lists")

        say(f"checking the bundle {path.name}")
        unpacked = target.with_name(target.name + ".partial")
        shutil.rmtree(unpacked, ignore_errors=True)
        try:
            for name, member in members.items():
                if name == "images.tar":
                    _check_member(tar, member, manifest, path)
                else:
                    _unpack(tar, member, manifest, unpacked / name, path)
            locked = read_lock(lock_path(unpacked / manifest["policy"]))
            if locked["images"] != {part: {**locked["images"][part], **manifest["images"][part]}
                                    for part in PART_ORDER}:
                raise BundleError(f"{path}: its images are not the ones its lock pins")
        except BaseException:
            shutil.rmtree(unpacked, ignore_errors=True)
            raise
        policy_file = target / manifest["policy"]
        if target.exists():
            shutil.rmtree(unpacked)  # the same bytes were unpacked before (the name is their hash)
        else:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.replace(unpacked, target)

        ids = {locked["images"][p]["tag"]: locked["images"][p]["id"] for p in PART_ORDER}
        if all(gateway.image_id(tag) == image_id for tag, image_id in ids.items()):
            say("the bundle's images are on this engine already")
        else:
            inner = tar.extractfile(members["images.tar"])
            _check_saved_images(inner, ids, path)
            inner.seek(0)
            say(f"loading {len(ids)} images")
            started = time.monotonic()
            gateway.load_images(inner)
            say(f"loaded in {time.monotonic() - started:.1f} s")
            wrong = [tag for tag, image_id in ids.items() if gateway.image_id(tag) != image_id]
            if wrong:
                raise BundleError(f"{path}: after loading, {wrong[0]} is not the image its lock pins")

    images = PartImages(*(ImageBuild(tag=locked["images"][p]["tag"], inputs=locked["images"][p]["inputs"])
                          for p in PART_ORDER))
    model_paths = {}
    policy_text = load_policy_models(policy_file)
    for written, sha in policy_text:
        carried = target / "models" / f"{sha}.gguf"
        if carried.is_file():
            model_paths[written] = carried
        elif not os.path.isabs(os.path.expanduser(written)):
            # Weights not in the bundle are looked for beside it, as beside the policy.
            model_paths[written] = Path(os.path.realpath(path.parent / written))
    return policy_file, Bundle(images, model_paths)


def load_policy_models(policy_file: Path) -> list[tuple[str, str]]:
    """(path as written, sha256) of each model the policy names."""
    from launcher.policy.loader import load
    doc, _ = load(policy_file)
    data = doc.data if doc is not None and isinstance(doc.data, dict) else {}
    return [(m.get("path"), m.get("sha256")) for m in data.get("models", []) if isinstance(m, dict)
            and isinstance(m.get("path"), str) and isinstance(m.get("sha256"), str)]


def _manifest(path: Path, raw: bytes) -> dict:
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise BundleError(f"{path}: its manifest is not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("bundle") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: not a bundle this launcher reads (format {manifest.get('bundle')!r})"
                          if isinstance(manifest, dict) else f"{path}: not a sandbox bundle")
    files = manifest.get("files")
    if not isinstance(files, dict) or "images.tar" not in files or manifest.get("policy") not in files:
        raise BundleError(f"{path}: its manifest lacks the policy or the images")
    for name, entry in files.items():
        if not _SAFE_NAME.fullmatch(name) or ".." in name.split("/") or not isinstance(entry, dict):
            raise BundleError(f"{path}: its manifest names an unsafe file {name!r}")
    if not isinstance(manifest.get("name"), str) or not re.fullmatch(r"[a-z][a-z0-9-]{0,29}", manifest["name"]):
        raise BundleError(f"{path}: its manifest has no valid sandbox name")
    if not isinstance(manifest.get("images"), dict) or set(manifest["images"]) != set(PART_ORDER):
        raise BundleError(f"{path}: its manifest does not name the four images")
    return manifest


def _check_member(tar: tarfile.TarFile, member: tarfile.TarInfo, manifest: dict, bundle: Path) -> None:
    digest = hashlib.sha256()
    source = tar.extractfile(member)
    while chunk := source.read(CHUNK):
        digest.update(chunk)
    _compare(member, digest.hexdigest(), manifest, bundle)


def _unpack(tar: tarfile.TarFile, member: tarfile.TarInfo, manifest: dict, out: Path, bundle: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    digest = hashlib.sha256()
    source = tar.extractfile(member)
    with open(out, "wb") as f:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            f.write(chunk)
    _compare(member, digest.hexdigest(), manifest, bundle)


def _compare(member: tarfile.TarInfo, sha256: str, manifest: dict, bundle: Path) -> None:
    expected = manifest["files"][member.name]
    if sha256 != expected.get("sha256") or member.size != expected.get("size"):
        raise BundleError(f"{bundle}: {member.name} is not the file its manifest names (sha256 {sha256[:16]}, "
                          f"expected {str(expected.get('sha256'))[:16]}): the bundle was changed or damaged")


def _check_saved_images(source, ids: dict[str, str], bundle: Path) -> None:
    """Before the engine sees them: each image in `docker save`'s output has the
    ID (the sha256 of its configuration) the lock pins, and it names no other
    tag, so that loading cannot put a stranger under one of ours."""
    with tarfile.open(fileobj=source, mode="r:") as saved:
        try:
            index = json.load(saved.extractfile("manifest.json"))
        except (KeyError, ValueError, AttributeError):
            raise BundleError(f"{bundle}: images.tar is not `docker save` output") from None
        seen = set()
        for entry in index:
            config = saved.extractfile(entry["Config"]).read()
            image_id = "sha256:" + hashlib.sha256(config).hexdigest()
            for tag in entry.get("RepoTags") or []:
                if ids.get(tag) != image_id:
                    raise BundleError(f"{bundle}: images.tar holds {tag} as {image_id[:19]}, which its lock "
                                      f"does not pin")
                seen.add(tag)
        if seen != set(ids):
            raise BundleError(f"{bundle}: images.tar lacks {sorted(set(ids) - seen)[0]}")


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    return info
