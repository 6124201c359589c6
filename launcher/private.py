"""Files and directories for the user's eyes only: the access token, the
signer, `render -o`'s manifests (which hold the sandbox's secrets), build
records, the sha256 cache, the model store and unpacked bundles.

Other local users of the machine are strangers (docs/threats.md). A file one
of them made beforehand keeps its mode and owner when it is opened and
written, and a link they left leads wherever they chose, so secrets only
ever go into a file made new, owner-only, and renamed into place. And
`mkdir(parents=True, mode=0o700)` gives that mode to the last directory
only; the parents it makes get the umask's, 0755 as a rule."""
from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

from launcher.errors import SandboxError


def private_directory(path: Path) -> Path:
    """`path` as a directory, every directory made for it owner-only (0700).
    One that was there already must be the user's own and not writable by
    everyone: whoever can write to it can swap what is kept in it."""
    path = Path(path)
    missing = []
    directory = path
    while not os.path.lexists(directory):
        missing.append(directory)
        directory = directory.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:  # made meanwhile: checked below, as one that was there
            pass
    try:
        st = os.stat(path)
    except OSError as e:
        raise SandboxError(f"{path}: cannot be used as a directory ({e.strerror})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SandboxError(f"{path} is not a directory")
    if st.st_uid != os.geteuid():
        raise SandboxError(f"{path} belongs to another user (uid {st.st_uid}), who could read or swap what "
                           f"the sandbox keeps there; remove it or choose another directory")
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise SandboxError(f"{path} can be written by every user of this machine (mode "
                           f"{stat.S_IMODE(st.st_mode):o}), who could swap what the sandbox keeps there; "
                           f"`chmod 700 {path}`")
    return path


def write_private(path: Path, data: bytes | str) -> None:
    """Put `data` at `path`, readable and writable by its owner only: written
    into a new file beside it (O_EXCL, O_NOFOLLOW, 0600) that is then renamed
    over `path`. A file someone else made at `path` is replaced, not written
    into, so its mode, owner and other names (hard links) do not carry over;
    where it may not be replaced (another user's, in /tmp) the write fails.
    A symbolic link at `path` is refused, whoever made it."""
    path = Path(path)
    if path.is_symlink():
        raise SandboxError(f"{path} is a symbolic link; refusing to write through it (it holds secrets): "
                           f"remove the link or choose another path")
    if isinstance(data, str):
        data = data.encode()
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            # A link made at `path` since the check is replaced, not followed.
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    except OSError as e:
        raise SandboxError(f"cannot write {path}: {e.strerror}" + (
            " (a file there that another user made may not be replaced in this directory)"
            if e.errno == errno.EPERM else "")) from None


def replace_file(path: Path, data: bytes | str, mode: int | None = None) -> None:
    """Put `data` at `path` (a file meant to be shared: a lock, its
    signature, a policy) through a new file of a name no one can guess
    (O_EXCL, O_NOFOLLOW) renamed over it: a link someone left at a fixed
    temporary name is never followed, and a reader sees the old file or the
    new one, whole. `mode` as given, else as a new file gets (the umask's)."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), 0o666 & ~_umask() if mode is None else mode)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
