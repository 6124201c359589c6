"""The model store: one per-user directory of GGUF files, each with a small
sidecar saying where it came from. Partial downloads live in `.partial/`
and never under a model's final name.

A store another user can write to is refused: they could plant links where
the pull is about to write, or swap its files. And links planted while it
was open to them are never followed: the pull writes only into files it
created itself (O_EXCL, O_NOFOLLOW), and a model takes its name by a hard
link that fails if anything at all is there.

Where: $SANDBOX_MODEL_DIR, else `model_dir:` in the config file
(launcher/config.py), else $XDG_DATA_HOME/sandbox/models, else
~/.local/share/sandbox/models. The backend mounts a model file from here
read-only, as from anywhere else."""
from __future__ import annotations

import errno
import grp
import json
import os
import pwd
import stat
from pathlib import Path
from typing import Callable

from launcher.config import config_file_path
from launcher.errors import SandboxError
from launcher.private import private_directory, write_private

MODEL_DIR_ENV = "SANDBOX_MODEL_DIR"
PROVENANCE_SUFFIX = ".provenance.json"
PARTIAL_SUFFIX = ".part"
MAX_SIDECAR_BYTES = 1 << 20


class StoreError(SandboxError):
    exit_code = 2


def store_dir() -> Path:
    if os.environ.get(MODEL_DIR_ENV):
        return Path(os.environ[MODEL_DIR_ENV]).expanduser()
    configured = config_file_path("model_dir")
    if configured:
        return configured
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "sandbox" / "models"


def partial_dir(store: Path) -> Path:
    return store / ".partial"


def open_store(store: Path) -> Path:
    """The store and its `.partial/`, made owner-only if missing; refused
    when someone else can write to either, or to a directory above it."""
    _parents_only_mine(store)
    private_directory(store)
    _only_mine(store)
    partial = partial_dir(store)
    if os.path.islink(partial):
        raise StoreError(f"{partial} is a symbolic link; remove it (the pull makes the directory itself)")
    private_directory(partial)
    _only_mine(partial)
    return store


def _only_mine(directory: Path) -> None:
    st = os.stat(directory)  # a store named through a link of the user's is where the link leads
    others = st.st_mode & stat.S_IWOTH or (st.st_mode & stat.S_IWGRP and _group_has_others(st.st_gid))
    if others:
        raise StoreError(f"{directory} can be written by other users (mode {stat.S_IMODE(st.st_mode):o}, group "
                         f"{_group_name(st.st_gid)}): one could plant links where a pull writes or swap the "
                         f"files it keeps; `chmod go-w {directory}`, or choose a store of your own")


def _parents_only_mine(store: Path) -> None:
    """Each directory above the store, as ssh's StrictModes checks those
    above authorized_keys: whoever can rename entries in one (its owner, or
    anyone who may write to it, unless it is sticky) can move the store
    away and put a directory of their own in its place between the steps
    of a pull. Checked are the directories the path names, as it is written
    (where its own links are kept) and as it resolves (where they lead), before
    any missing one is made."""
    store = Path(os.path.abspath(store))
    above = {*store.parents, *Path(os.path.realpath(store)).parents}
    for directory in sorted(above, key=lambda p: (len(p.parts), str(p))):
        try:
            st = os.stat(directory)
        except FileNotFoundError:
            continue  # made by private_directory, owner-only
        fault = parent_fault(st)
        if fault:
            raise StoreError(f"{directory}, above the model store {store}, {fault}: one could move the store "
                             f"away and put a directory of their own in its place; `chmod go-w {directory}` "
                             f"(or +t), or choose a store elsewhere")


def parent_fault(st: os.stat_result, group_has_others: Callable[[int], bool] | None = None) -> str | None:
    """Why a directory above the store is not safe, or None: it must be the
    user's or root's, and writable by no one else unless sticky."""
    group_has_others = group_has_others or _group_has_others
    if st.st_uid not in (os.geteuid(), 0):
        return f"belongs to another user (uid {st.st_uid})"
    if st.st_mode & stat.S_ISVTX:
        return None
    if st.st_mode & stat.S_IWOTH or (st.st_mode & stat.S_IWGRP and group_has_others(st.st_gid)):
        return (f"can be written by other users (mode {stat.S_IMODE(st.st_mode):o}, group "
                f"{_group_name(st.st_gid)})")
    return None


def _group_has_others(gid: int) -> bool:
    """Whether anyone but this user is in the group: with user private
    groups, a group-writable directory is writable by its owner only."""
    me = pwd.getpwuid(os.geteuid()).pw_name if _known_uid(os.geteuid()) else None
    try:
        members = set(grp.getgrgid(gid).gr_mem)
    except KeyError:
        return True  # a group this machine cannot name: assume strangers
    members |= {p.pw_name for p in pwd.getpwall() if p.pw_gid == gid}
    return bool(members - {me})


def _known_uid(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def open_partial(store: Path, name: str) -> int:
    """The partial file for model `name`, open for reading and writing: the
    one a previous pull of ours left (a plain file of this user's, with no
    other name), else a new one. Anything else at its name (a link, another
    user's file, a hard link to some other file) is removed, never followed."""
    path = partial_dir(store) / (name + PARTIAL_SUFFIX)
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = None
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.EACCES, errno.ENXIO):
            raise
        fd = None
        os.unlink(path)
    if fd is not None:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
            os.close(fd)
            os.unlink(path)
            fd = None
    if fd is None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    os.set_blocking(fd, True)
    return fd


def partial_path(store: Path, name: str) -> Path:
    return partial_dir(store) / (name + PARTIAL_SUFFIX)


def remove_partial(store: Path, name: str) -> None:
    part = partial_path(store, name)
    for path in (part, provenance_path(part)):
        try:
            os.unlink(path)  # a link is removed, not what it leads to
        except FileNotFoundError:
            pass


def partial_source(store: Path, name: str) -> str | None:
    """The source the partial file of `name` was downloading, from its
    sidecar: read only if it is a plain file of this user's."""
    data = _read_own(provenance_path(partial_path(store, name)))
    try:
        found = json.loads(data) if data is not None else None
    except (ValueError, RecursionError):
        return None
    return found.get("source") if isinstance(found, dict) else None


def mark_partial(store: Path, name: str, source: str) -> None:
    sidecar = provenance_path(partial_path(store, name))
    try:
        os.unlink(sidecar)  # whatever is there, a link included, is replaced, not written through
    except FileNotFoundError:
        pass
    write_private(sidecar, json.dumps({"source": source}) + "\n")


def _read_own(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            return None
        return f.read(MAX_SIDECAR_BYTES)


def take_name(store: Path, name: str) -> Path:
    """Give the finished partial file its name in the store: a hard link
    made only if nothing at all (not even a dangling link) is at that name."""
    part, final = partial_path(store, name), store / name
    try:
        os.link(part, final, follow_symlinks=False)
    except FileExistsError:
        raise StoreError(f"{final} holds something else now; pull this one under another name: "
                         f"--name NAME.gguf") from None
    except OSError:
        # A filesystem without hard links: the store is the user's alone
        # (open_store), so nothing can come between this look and the rename.
        if os.path.lexists(final):
            raise StoreError(f"{final} holds something else now; pull this one under another name: "
                             f"--name NAME.gguf") from None
        os.rename(part, final)
        return final
    os.unlink(part)
    return final


def provenance_path(model: Path) -> Path:
    return model.with_name(model.name + PROVENANCE_SUFFIX)


def read_provenance(model: Path) -> dict | None:
    try:
        data = json.loads(provenance_path(model).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def write_provenance(model: Path, provenance: dict) -> None:
    """Beside a model the pull has just given its name: whatever was at the
    sidecar's name (a link left while the store was open to others) goes."""
    sidecar = provenance_path(model)
    try:
        os.unlink(sidecar)
    except FileNotFoundError:
        pass
    write_private(sidecar, json.dumps(provenance, indent=2, sort_keys=True) + "\n")


def models_in(store: Path) -> list[Path]:
    if not store.is_dir():
        return []
    return sorted(p for p in store.iterdir() if p.is_file() and p.suffix == ".gguf")


def find_by_sha256(store: Path, sha256: str) -> Path | None:
    """A model in the store that its sidecar says has these bytes."""
    for model in models_in(store):
        if (read_provenance(model) or {}).get("sha256") == sha256:
            return model
    return None


def find_by_source(store: Path, source: str) -> Path | None:
    for model in models_in(store):
        if (read_provenance(model) or {}).get("source") == source:
            return model
    return None


def policy_path_text(model: Path) -> str:
    """How a policy should name a model in the store: under the home
    directory as ~/..., so that one policy works for every teammate."""
    home = Path.home()
    try:
        return "~/" + model.relative_to(home).as_posix()
    except ValueError:
        return str(model)
