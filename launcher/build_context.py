"""A front-end's build context, as the policy's author cannot bend it: what
is sent to the engine is exactly what is hashed into the image's tag (the
files `.dockerignore` leaves in, the Dockerfile always), and nothing in it
leads outside the context (docs/threats.md, "The build step")."""
from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

# Docker's own .dockerignore matcher, so that the launcher and the engine never
# disagree on what is in a context. It is pure path matching; the engine itself
# is only ever spoken to by launcher/engine/.
from docker.utils.build import exclude_paths

CHUNK = 1024 * 1024


def context_files(context: Path, dockerfile: str = "Dockerfile") -> list[str]:
    """The relative paths that make up the context, sorted. Python's bytecode
    caches are never part of it: an installed launcher's recipes get them
    (pip compiles what it installs), and they must not change an image's tag."""
    ignore = context / ".dockerignore"
    patterns = []
    if ignore.is_file() and not ignore.is_symlink():
        patterns = [p.strip() for p in ignore.read_text(errors="replace").splitlines()
                    if p.strip() and not p.startswith("#")]
    return sorted(rel for rel in exclude_paths(str(context), patterns, dockerfile=dockerfile)
                  if "__pycache__" not in Path(rel).parts)


def context_problems(context: Path, dockerfile: str = "Dockerfile") -> list[str]:
    """What makes a context unsafe to hash or send: a symlink that leads out of
    it or nowhere, a file that is not a plain file (a device, a pipe), or a
    file with more than one name (a hard link)."""
    problems = []
    root = os.path.realpath(context)
    for rel in context_files(context, dockerfile):
        path = context / rel
        try:
            st = os.lstat(path)
        except OSError as e:
            problems.append(f"{rel}: cannot be read ({e.strerror})")
            continue
        mode = st.st_mode
        if rel == dockerfile and not stat.S_ISREG(mode):
            # The Dockerfile's bytes are read, checked and sent as one: a link
            # would have its tag name the link and the build send the target.
            problems.append(f"{rel} is not a plain file (a link?); put the Dockerfile itself in the context")
        elif stat.S_ISLNK(mode):
            target = os.path.realpath(path)
            if not _inside(target, root):
                problems.append(f"{rel} is a symlink to {os.readlink(path)}, outside the build context")
            elif not os.path.exists(target):
                problems.append(f"{rel} is a symlink to {os.readlink(path)}, which does not exist")
        elif not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            problems.append(f"{rel} is not a regular file")
        elif stat.S_ISREG(mode) and st.st_nlink > 1:
            # Its other names may be anywhere on the disk (/etc/shadow, another
            # user's file), and nothing says where: the bytes it would send are
            # not the context's to send.
            problems.append(f"{rel} is a hard link: the same file has {st.st_nlink} names, which may be "
                            f"outside the build context; put a copy in instead")
    return problems


def context_digest(context: Path, dockerfile: str, digest) -> None:
    """Feed the context into `digest`: each file's path and bytes, each
    symlink's path and target (never what it points at)."""
    for rel in context_files(context, dockerfile):
        path = context / rel
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            digest.update(f"link={rel}\n".encode() + os.readlink(path).encode() + b"\n")
        elif stat.S_ISREG(mode):
            digest.update(f"file={rel}\n".encode())
            file_digest = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    file_digest.update(chunk)
            digest.update(file_digest.digest())


def inside(path: str | Path, directory: str | Path) -> bool:
    return _inside(os.path.realpath(path), os.path.realpath(directory))


def _inside(real_path: str, real_directory: str) -> bool:
    return real_path == real_directory or real_path.startswith(real_directory.rstrip("/") + "/")
