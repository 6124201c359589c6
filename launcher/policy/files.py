"""Checks of the files a policy names: model weights (GGUF, sha256) and build
contexts. Hashing a multi-GB model takes a while, so results are cached by
path, device, inode, size, mtime and ctime. A file changed in any way is hashed
again: even with its mtime set back, its ctime moved. That holds where only the
kernel sets ctime, on local filesystems; a file server (NFS, SMB, FUSE) reports
whatever metadata it likes, so there SANDBOX_HASH_ALWAYS=1 turns the cache off."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

from launcher.errors import SandboxError
from launcher.private import private_directory, write_private

GGUF_MAGIC = b"GGUF"
CHUNK = 4 * 1024 * 1024
HASH_ALWAYS_ENV = "SANDBOX_HASH_ALWAYS"

# progress(done_bytes, total_bytes, file_name)
HashProgress = Callable[[int, int, str], None]


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sandbox" / "sha256.json"


def hash_always() -> bool:
    """The machine owner's choice to trust no file metadata (any value but 0):
    a switch that is misspelt on must not leave the cache on."""
    return os.environ.get(HASH_ALWAYS_ENV, "0") not in ("", "0")


def sha256_of(path: Path, progress: HashProgress | None = None) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        return sha256_of_open(fd, path, progress)
    finally:
        os.close(fd)


def sha256_of_open(fd: int, path: Path, progress: HashProgress | None = None) -> str:
    """sha256_of the file open at `fd` (`path` names it in the cache): the
    digest of the very bytes a caller goes on to read through the same fd,
    whatever the path names by then."""
    st = os.fstat(fd)
    stamp = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    cache = _read_cache()
    entry = cache.get(str(path))
    if entry and entry.get("stamp") == stamp and not hash_always():
        return entry["sha256"]
    digest, at = hashlib.sha256(), 0
    while chunk := os.pread(fd, CHUNK, at):
        digest.update(chunk)
        at += len(chunk)
        if progress:
            progress(at, st.st_size, path.name)
    result = digest.hexdigest()
    cache[str(path)] = {"stamp": stamp, "sha256": result}
    _write_cache(cache)
    return result


def remember_sha256(path: Path, sha256: str) -> None:
    """Record a sha256 computed elsewhere (while the file was written), so
    the next check of the same, unchanged file does not hash it again."""
    st = path.stat()
    cache = _read_cache()
    cache[str(path)] = {"stamp": [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns],
                        "sha256": sha256}
    _write_cache(cache)


def _read_cache() -> dict:
    try:
        with open(cache_path()) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError, RecursionError):
        return {}


def _write_cache(cache: dict) -> None:
    # A cache that cannot be written only costs time, never correctness.
    path = cache_path()
    try:
        write_private(private_directory(path.parent) / path.name, json.dumps(cache))
    except (OSError, SandboxError):
        pass


def model_file_problem(written: str, path: Path, expected_sha256: str,
                       progress: HashProgress | None = None) -> str | None:
    """None when `path` (resolved from `written`, as the policy gives it) is a
    readable GGUF file with the expected sha256; otherwise what is wrong."""
    where = f"{written} (which is {path})" if Path(written) != path else written
    if not path.exists():
        return f"{where}: file not found"
    if not path.is_file():
        return f"{where}: not a regular file"
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        return f"{where}: cannot be read ({e.strerror})"
    if magic != GGUF_MAGIC:
        return f"{where}: not a GGUF model file (it does not start with 'GGUF')"
    actual = sha256_of(path, progress)
    if actual != expected_sha256:
        return f"{where}: sha256 mismatch; the file's is {actual}"
    return None
