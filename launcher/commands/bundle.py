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
import posixpath
import re
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from launcher import __version__, build_records
from launcher.build_context import context_files
from launcher.commands.lock import check_lock, check_signature
from launcher.engine import DockerGateway
from launcher.errors import SandboxError
from launcher.images import ImageBuild, PartImages, images_for
from launcher.lockfile import MAX_LOCK_BYTES, MAX_SIGNATURE_BYTES, PART_ORDER
from launcher.policy.source import PolicySource, read_source
from launcher.policy import load_policy
from launcher.policy.files import sha256_of
from launcher.policy.loader import MAX_POLICY_BYTES
from launcher.private import private_directory

Say = Callable[[str], None]
MANIFEST = "sandbox-bundle.json"
BUNDLE_FORMAT = 1
CHUNK = 4 * 2**20
MAX_MANIFEST_BYTES = 2**20
SPARE_BYTES = 256 * 2**20  # left free on the disk after unpacking
_SAFE_NAME = re.compile(r"[A-Za-z0-9._+-]+(/[A-Za-z0-9._+-]+)*")
# The one link `docker save` writes: a layer saved already, under another image's directory.
_SAVED_LAYER_LINK = re.compile(r"[0-9a-f]{64}/layer\.tar -> \.\./[0-9a-f]{64}/layer\.tar")


@dataclass(frozen=True)
class Bundle:
    """What a bundle gives `up`: the images it loaded (never built) and the
    model files it carried, by the path the policy writes."""

    images: PartImages
    model_paths: dict[str, Path]


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
    source = read_source(policy_file)
    policy = load_policy(source.file, display=source.display, check_port=False, raw=source.policy)
    locked = source.locked()
    if locked is None:
        raise BundleError(f"{source.lock_file}: no lock; `sandbox lock {policy_file}` writes it")
    # The images the lock pins, which must be the very ones on this machine.
    use_gpu = "-cuda:" in str(locked.get("images", {}).get("backend", {}).get("tag"))
    check_lock(gateway, policy, source, images_for(policy, use_gpu=use_gpu, ca_bundle=None), required=True,
               same_image_ids=True)

    # The policy, its lock and signature go in as read (and checked) above.
    files: list[tuple[str, Path | bytes]] = [(f"policy/{policy.file.name}", source.policy),
                                             (f"policy/{source.lock_file.name}", source.lock)]
    if source.signature is not None:
        files.append((f"policy/{source.signature_file.name}", source.signature))
    context = policy.frontend.build_context if policy.frontend else None
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


def parts_of(images: dict) -> list[str]:
    """The parts a lock or manifest names images for, in order: all four,
    or all but the front-end for an API-only policy (`frontend: none`)."""
    return [part for part in PART_ORDER if part in images]


def _write_bundle(gateway: DockerGateway, policy, locked: dict, files: list[tuple[str, Path | bytes]], output: Path,
                  say: Say) -> dict:
    with tempfile.NamedTemporaryFile(dir=output.parent, prefix=".images-", suffix=".tar") as images_tar:
        tags = [locked["images"][part]["tag"] for part in parts_of(locked["images"])]
        say(f"saving {len(tags)} images")
        digest = hashlib.sha256()
        for chunk in gateway.state.save_images(tags):
            images_tar.write(chunk)
            digest.update(chunk)
        images_tar.flush()
        # Weights are hashed once and remembered (launcher/policy/files.py).
        entries = {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                   if isinstance(data, bytes) else {"sha256": sha256_of(data), "size": data.stat().st_size}
                   for name, data in files}
        entries["images.tar"] = {"sha256": digest.hexdigest(), "size": os.path.getsize(images_tar.name)}
        manifest = {"bundle": BUNDLE_FORMAT, "launcher": __version__, "name": policy.name,
                    "policy": f"policy/{policy.file.name}",
                    "images": {part: {"tag": locked["images"][part]["tag"], "id": locked["images"][part]["id"]}
                               for part in parts_of(locked["images"])},
                    "files": entries}
        partial = output.with_name(output.name + ".partial")
        say(f"writing {output}")
        with tarfile.open(partial, "w:", format=tarfile.PAX_FORMAT) as tar:
            data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
            tar.addfile(_info(MANIFEST, len(data)), io.BytesIO(data))
            for name, data in [*files, ("images.tar", Path(images_tar.name))]:
                if isinstance(data, bytes):
                    tar.addfile(_info(name, len(data)), io.BytesIO(data))
                    continue
                with open(data, "rb") as f:
                    tar.addfile(_info(name, entries[name]["size"]), f)
        os.replace(partial, output)
    return manifest


def open_bundle(gateway: DockerGateway, path: Path, allowed_signers: Path | None,
                say: Say | None = None) -> tuple[PolicySource, Bundle]:
    """Check a bundle, unpack its policy and weights, and load its images
    (unless the engine has them already). Returns the policy as read from the
    bundle, and what `up` takes from the bundle.

    In this order, so that a refused bundle changes nothing: the manifest and
    the size of every member (extraction is bounded by the bundle's own size);
    the policy, its lock and signature, read into memory and checked against
    the manifest and `allowed_signers`; the lock's images against the
    manifest's; every other file, unpacked to a private scratch directory and
    hashed as it is written; images.tar, read as the engine reads it, each
    image's configuration against the lock's IDs. Only then does the engine
    see anything: the very images.tar that was checked."""
    say = say or (lambda _m: None)
    try:
        with open(path, "rb") as f:
            return _open_bundle(gateway, path.resolve(), f, allowed_signers, say)
    except (tarfile.TarError, EOFError) as e:
        raise BundleError(f"{path}: damaged or cut short ({e}); copy it again") from None
    except OSError as e:
        raise BundleError(f"{path}: cannot be read or unpacked ({e.strerror or e})") from None


def _open_bundle(gateway: DockerGateway, path: Path, file, allowed_signers: Path | None,
                 say: Say) -> tuple[PolicySource, Bundle]:
    bundle_size = os.fstat(file.fileno()).st_size
    with tarfile.open(fileobj=file, mode="r:") as tar:
        first = tar.next()
        if first is None or first.name != MANIFEST or not first.isreg() or first.size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{path}: not a sandbox bundle")
        raw = tar.extractfile(first).read(MAX_MANIFEST_BYTES)
        manifest = _manifest(path, raw)
        members = _members(tar, first, manifest, bundle_size, path)

        say(f"checking the bundle {path.name}")
        # What vouches for the rest is read into memory and checked first.
        policy_name = manifest["policy"]
        trust_files = {policy_name: MAX_POLICY_BYTES, policy_name + ".lock": MAX_LOCK_BYTES,
                       policy_name + ".lock.sig": MAX_SIGNATURE_BYTES}
        read = {name: _read_member(tar, members[name], manifest, limit, path)
                for name, limit in trust_files.items() if name in members}
        if policy_name + ".lock" not in read:
            raise BundleError(f"{path}: carries no lock for {policy_name}; `sandbox bundle` puts one in")
        target = unpack_root() / f"{manifest['name']}-{hashlib.sha256(raw).hexdigest()[:16]}"
        source = PolicySource(file=target / policy_name, display=f"{path.name}:{policy_name}",
                              policy=read[policy_name], lock=read[policy_name + ".lock"],
                              signature=read.get(policy_name + ".lock.sig"))
        check_signature(source, allowed_signers)
        locked = source.locked()
        if locked.get("policy", {}).get("sha256") != source.policy_sha256:
            raise BundleError(f"{path}: its policy is not the one its lock pins")
        if not isinstance(locked.get("images"), dict) or set(locked["images"]) != set(manifest["images"]) or any(
                not isinstance(locked["images"].get(part), dict)
                or {k: locked["images"][part].get(k) for k in ("tag", "id")} != manifest["images"][part]
                for part in parts_of(manifest["images"])):
            raise BundleError(f"{path}: its images are not the ones its lock pins")
        ids = {locked["images"][p]["tag"]: locked["images"][p]["id"] for p in parts_of(locked["images"])}

        needed = sum(m.size for m in members.values())
        root = unpack_root()
        private_directory(root)
        if shutil.disk_usage(root).free < needed + SPARE_BYTES:
            raise BundleError(f"{path}: unpacking it needs {needed // 2**20} MiB; {root} has "
                              f"{shutil.disk_usage(root).free // 2**20} MiB free")
        unpacked = Path(tempfile.mkdtemp(prefix=f".{manifest['name']}-", dir=root))
        try:
            for name, member in members.items():
                if name in read:
                    _write_new(unpacked / name, read[name])
                else:
                    _unpack(tar, member, manifest, unpacked / name, path)
            images_tar = unpacked / "images.tar"
            with open(images_tar, "rb") as saved:
                _check_saved_images(saved, ids, path)
                if all(gateway.state.image_id(tag) == image_id for tag, image_id in ids.items()):
                    say("the bundle's images are on this engine already")
                else:
                    saved.seek(0)
                    say(f"loading {len(ids)} images")
                    started = time.monotonic()
                    before = {tag: gateway.state.image_id(tag) for tag in ids}
                    gateway.state.load_images(saved)
                    say(f"loaded in {time.monotonic() - started:.1f} s")
                    wrong = [tag for tag, image_id in ids.items() if gateway.state.image_id(tag) != image_id]
                    if wrong:
                        # Never reached when the checks above read images.tar as the
                        # engine does; should they not, the tags go back as they were.
                        for tag in wrong:
                            gateway.state.put_tag(tag, before[tag])
                        raise BundleError(f"{path}: after loading, {wrong[0]} was not the image its lock pins; "
                                          f"its tag was put back")
            images_tar.unlink()
            for tag, image_id in ids.items():
                build_records.loaded(tag, image_id, path.name)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(unpacked, target)
        except BaseException:
            shutil.rmtree(unpacked, ignore_errors=True)
            raise

    images = PartImages(**{p: ImageBuild(tag=locked["images"][p]["tag"], inputs=locked["images"][p]["inputs"])
                           if p in locked["images"] else None for p in PART_ORDER})
    model_paths = {}
    for written, sha in policy_models(source):
        carried = target / "models" / f"{sha}.gguf"
        if carried.is_file():
            model_paths[written] = carried
        elif not os.path.isabs(os.path.expanduser(written)):
            # Weights not in the bundle are looked for beside it, as beside the policy.
            model_paths[written] = Path(os.path.realpath(path.parent / written))
    return source, Bundle(images, model_paths)


def policy_models(source: PolicySource) -> list[tuple[str, str]]:
    """(path as written, sha256) of each model the policy names."""
    doc, _ = source.document
    data = doc.data if doc is not None and isinstance(doc.data, dict) else {}
    return [(m.get("path"), m.get("sha256")) for m in data.get("models", []) if isinstance(m, dict)
            and isinstance(m.get("path"), str) and isinstance(m.get("sha256"), str)]


def _manifest(path: Path, raw: bytes) -> dict:
    try:
        manifest = json.loads(raw)
    except (ValueError, RecursionError):
        raise BundleError(f"{path}: its manifest is not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("bundle") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: not a bundle this launcher reads (format {manifest.get('bundle')!r})"
                          if isinstance(manifest, dict) else f"{path}: not a sandbox bundle")
    files = manifest.get("files")
    if not isinstance(files, dict) or "images.tar" not in files or manifest.get("policy") not in files:
        raise BundleError(f"{path}: its manifest lacks the policy or the images")
    for name, entry in files.items():
        if not _SAFE_NAME.fullmatch(name) or ".." in name.split("/") or not isinstance(entry, dict) \
                or not isinstance(entry.get("size"), int) or not isinstance(entry.get("sha256"), str):
            raise BundleError(f"{path}: its manifest names an unsafe file {name!r}")
    if not isinstance(manifest.get("name"), str) or not re.fullmatch(r"[a-z][a-z0-9-]{0,29}", manifest["name"]):
        raise BundleError(f"{path}: its manifest has no valid sandbox name")
    images = manifest.get("images")
    if not isinstance(images, dict) or set(images) not in (set(PART_ORDER), set(PART_ORDER) - {"frontend"}) or any(
            not isinstance(i, dict) or set(i) != {"tag", "id"} for i in images.values()):
        raise BundleError(f"{path}: its manifest does not name the four images (three, without a front-end)")
    return manifest


def _members(tar: tarfile.TarFile, first: tarfile.TarInfo, manifest: dict, bundle_size: int,
             path: Path) -> dict[str, tarfile.TarInfo]:
    """Every member of the bundle, each a plain file its manifest lists, once,
    with the size the manifest gives. A plain member's bytes are in the
    bundle, so unpacking writes no more than the bundle's own size (a sparse
    member could make a small file unpack to gigabytes)."""
    members = {}
    for member in tar:
        if member is first:
            continue
        if member.name not in manifest["files"] or member.name in members:
            raise BundleError(f"{path}: holds {member.name!r}, which its manifest does not list"
                              + (" (twice)" if member.name in members else ""))
        if not member.isreg() or member.issparse():
            raise BundleError(f"{path}: holds {member.name!r} as something other than a plain file")
        if member.size != manifest["files"][member.name]["size"]:
            raise BundleError(f"{path}: {member.name} is not the file its manifest names (size {member.size}, "
                              f"expected {manifest['files'][member.name]['size']}): the bundle was changed or "
                              f"damaged")
        members[member.name] = member
    missing = set(manifest["files"]) - set(members)
    if missing:
        raise BundleError(f"{path}: lacks {sorted(missing)[0]}, which its manifest lists")
    if sum(m.size for m in members.values()) > bundle_size:
        raise BundleError(f"{path}: its members add up to more than the bundle itself: damaged")
    return members


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, manifest: dict, limit: int, bundle: Path) -> bytes:
    if member.size > limit:
        raise BundleError(f"{bundle}: {member.name} is larger than {limit // 1024} KiB, which no such file is")
    data = tar.extractfile(member).read()
    _compare(member, hashlib.sha256(data).hexdigest(), manifest, bundle)
    return data


def _unpack(tar: tarfile.TarFile, member: tarfile.TarInfo, manifest: dict, out: Path, bundle: Path) -> None:
    private_directory(out.parent)
    digest = hashlib.sha256()
    source = tar.extractfile(member)
    with _create_new(out) as f:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            f.write(chunk)
    _compare(member, digest.hexdigest(), manifest, bundle)


def _write_new(out: Path, data: bytes) -> None:
    private_directory(out.parent)
    with _create_new(out) as f:
        f.write(data)


def _create_new(path: Path):
    """A new file in the owner-only scratch directory (which keeps other users
    out). Readable by all itself: the backend reads the weights through their
    mount, as uid 65534."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    os.fchmod(fd, 0o644)  # whatever the umask
    return os.fdopen(fd, "wb")


def _compare(member: tarfile.TarInfo, sha256: str, manifest: dict, bundle: Path) -> None:
    expected = manifest["files"][member.name]
    if sha256 != expected.get("sha256") or member.size != expected.get("size"):
        raise BundleError(f"{bundle}: {member.name} is not the file its manifest names (sha256 {sha256[:16]}, "
                          f"expected {str(expected.get('sha256'))[:16]}): the bundle was changed or damaged")


def _check_saved_images(source, ids: dict[str, str], bundle: Path) -> None:
    """Before the engine sees them: each image in `docker save`'s output has the
    ID (the sha256 of its configuration, which names each layer's sha256, and
    the engine checks those as it loads) the lock pins, and it names no other
    tag, so that loading cannot put a stranger under one of ours.

    Read as the engine reads it: it unpacks the whole tar and follows links
    on the disk, so a later member of the same (cleaned) name wins, and a
    path through a linked directory leads where the link does. Any name
    given twice is refused outright, and so is every link but the one kind
    `docker save` writes (`ID/layer.tar` to another layer's `../ID/layer.tar`,
    a plain file): what is read here is then what the engine reads."""
    with tarfile.open(fileobj=source, mode="r:") as saved:
        members = {}
        for member in saved:
            name = posixpath.normpath(member.name.lstrip("/"))
            if name in members:
                raise BundleError(f"{bundle}: images.tar names {name!r} twice (the engine would use the last, "
                                  f"{member.name!r}); `docker save` never does")
            if name.startswith("../") or name == "..":
                raise BundleError(f"{bundle}: images.tar names {member.name!r}, outside itself")
            if not (member.isreg() or member.isdir() or member.issym()) or member.issparse():
                raise BundleError(f"{bundle}: images.tar holds {member.name!r}, which is not a plain file, "
                                  f"directory or link")
            members[name] = member
        for name, member in members.items():
            parents = [posixpath.dirname(name)]
            while parents[-1] not in ("", "/"):
                parents.append(posixpath.dirname(parents[-1]))
            if any(members.get(parent) is not None and members[parent].issym() for parent in parents[:-1]):
                raise BundleError(f"{bundle}: images.tar holds {member.name!r} under a link")
            if member.issym() and not (_SAVED_LAYER_LINK.fullmatch(name + " -> " + member.linkname) and (
                    target := members.get(posixpath.normpath(posixpath.join(posixpath.dirname(name),
                                                                            member.linkname)))) is not None
                    and target.isreg()):
                raise BundleError(f"{bundle}: images.tar holds the link {member.name!r} -> {member.linkname!r}, "
                                  f"which `docker save` never writes")
        if members.get("manifest.json") is None or not members["manifest.json"].isreg():
            raise BundleError(f"{bundle}: images.tar is not `docker save` output")
        try:
            index = json.load(saved.extractfile(members["manifest.json"]))
        except (KeyError, ValueError, RecursionError, AttributeError, tarfile.TarError):
            raise BundleError(f"{bundle}: images.tar is not `docker save` output") from None
        if not isinstance(index, list):
            raise BundleError(f"{bundle}: images.tar is not `docker save` output")
        seen = set()
        for entry in index:
            if not isinstance(entry, dict) or entry.get("LayerSources") or not isinstance(entry.get("Config"), str):
                raise BundleError(f"{bundle}: images.tar names an image this launcher does not load")
            config_member = members.get(posixpath.normpath(entry["Config"]))
            config = saved.extractfile(config_member).read() \
                if config_member is not None and config_member.isreg() else b""
            image_id = "sha256:" + hashlib.sha256(config).hexdigest()
            tags = entry.get("RepoTags") or []
            if not tags:
                raise BundleError(f"{bundle}: images.tar holds {image_id[:19]} under no tag; `sandbox bundle` "
                                  f"saves each image under its tag")
            for tag in tags:
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
